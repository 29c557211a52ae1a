//! The key ring: which keys sign and verify codes, and the tag checks themselves.
//!
//! Each key has a one-byte id (1–255; 0 is never a key, so an all-zero code cannot verify).
//! Exactly one key is active and signs new codes; older keys verify until retired; a retired
//! key's codes read as `forged`. The ring lives in `DATA/keys/ring` (directory 0700, file
//! 0600), rewritten atomically on every change.

use std::fmt;
use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Mutex, OnceLock};

use sha2::digest::generic_array::GenericArray;
use sha2::{Digest, Sha256};
use stile_protocol::code::TAG_LEN;
use stile_protocol::{CodeBytes, CodeFormat, CodeHeader};
use subtle::ConstantTimeEq;

/// HMAC-SHA256 with the key's inner and outer pads absorbed once (RFC 2104). A message of at
/// most [`PrekeyedHmac::MSG_MAX`] bytes then costs exactly two SHA-256 compressions and no
/// buffering: this is the check-in's floor, so it is computed directly on `compress256`.
#[derive(Clone, Copy)]
pub struct PrekeyedHmac {
    /// SHA-256 state after the block `key ^ ipad`.
    inner: [u32; 8],
    /// SHA-256 state after the block `key ^ opad`.
    outer: [u32; 8],
}

/// SHA-256's initial state (FIPS 180-4, 5.3.3).
const SHA256_IV: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];
/// SHA-256 block size in bytes.
const BLOCK_LEN: usize = 64;

impl PrekeyedHmac {
    /// Longest message that fits one padded block with the inner pad already absorbed.
    pub const MSG_MAX: usize = BLOCK_LEN - 9;

    /// Absorbs `key`'s pads.
    pub fn new(key: &[u8]) -> Self {
        let mut k = [0u8; BLOCK_LEN];
        if key.len() > BLOCK_LEN {
            k[..32].copy_from_slice(&Sha256::digest(key));
        } else {
            k[..key.len()].copy_from_slice(key);
        }
        let pad = |byte: u8| {
            let mut block = [0u8; BLOCK_LEN];
            for (b, k) in block.iter_mut().zip(k) {
                *b = k ^ byte;
            }
            let mut state = SHA256_IV;
            compress(&mut state, &block);
            state
        };
        PrekeyedHmac {
            inner: pad(0x36),
            outer: pad(0x5c),
        }
    }

    /// The full 32-byte HMAC of `msg` (at most [`Self::MSG_MAX`] bytes), as SHA-256 state
    /// words.
    #[inline]
    fn mac_words(&self, msg: &[u8]) -> [u32; 8] {
        assert!(msg.len() <= Self::MSG_MAX, "message fits one block");
        let mut block = [0u8; BLOCK_LEN];
        block[..msg.len()].copy_from_slice(msg);
        block[msg.len()] = 0x80;
        block[56..].copy_from_slice(&(((BLOCK_LEN + msg.len()) * 8) as u64).to_be_bytes());
        let mut inner = self.inner;
        compress(&mut inner, &block);
        let mut block = [0u8; BLOCK_LEN];
        for (out, word) in block.chunks_exact_mut(4).zip(inner) {
            out.copy_from_slice(&word.to_be_bytes());
        }
        block[32] = 0x80;
        block[56..].copy_from_slice(&(((BLOCK_LEN + 32) * 8) as u64).to_be_bytes());
        let mut outer = self.outer;
        compress(&mut outer, &block);
        outer
    }

    /// The full 32-byte HMAC of `msg`.
    pub fn mac(&self, msg: &[u8]) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (o, word) in out.chunks_exact_mut(4).zip(self.mac_words(msg)) {
            o.copy_from_slice(&word.to_be_bytes());
        }
        out
    }

    /// The first 80 bits of the HMAC of `msg`: a code's tag.
    #[inline]
    pub fn tag(&self, msg: &[u8]) -> [u8; TAG_LEN] {
        let words = self.mac_words(msg);
        let mut tag = [0u8; TAG_LEN];
        tag[0..4].copy_from_slice(&words[0].to_be_bytes());
        tag[4..8].copy_from_slice(&words[1].to_be_bytes());
        tag[8..10].copy_from_slice(&words[2].to_be_bytes()[..2]);
        tag
    }
}

/// Compares two tags in constant time: the bytes are folded into two integers, compared
/// without branching on where they differ.
#[inline]
fn tags_equal(a: &[u8; TAG_LEN], b: &[u8; TAG_LEN]) -> bool {
    let hi = |t: &[u8; TAG_LEN]| u64::from_le_bytes(t[..8].try_into().expect("8 bytes"));
    let lo = |t: &[u8; TAG_LEN]| u16::from_le_bytes([t[8], t[9]]);
    (hi(a).ct_eq(&hi(b)) & lo(a).ct_eq(&lo(b))).into()
}

#[inline(always)]
fn compress(state: &mut [u32; 8], block: &[u8; BLOCK_LEN]) {
    sha2::compress256(state, std::slice::from_ref(GenericArray::from_slice(block)));
}

/// Bytes of secret per key.
pub const KEY_LEN: usize = 32;
/// Key ids run 1..=KEY_ID_MAX.
pub const KEY_ID_MAX: u8 = 255;
/// Domain separation for the per-ticket keys of rotating codes.
const ROTATING_KEY_LABEL: &[u8] = b"stile/rotating-ticket-key/v1";
/// First line of the ring file.
const RING_HEADER: &str = "# stile key ring v2: id status secret-hex; keep this file secret";
/// The last line's start in a v2 ring: then the SHA-256 of every line before it, in hex. A
/// flipped digit in a secret (the file's lines are plain text an operator may open) would
/// otherwise turn every ticket of that key into `forged` without a word.
const RING_CHECKSUM_PREFIX: &str = "# sha256 ";

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum KeyStatus {
    /// No key with this id.
    Absent = 0,
    /// Signs new codes and verifies (exactly one key).
    Active = 1,
    /// Verifies codes it signed before; signs nothing new.
    VerifyOnly = 2,
    /// Verifies nothing: its codes are `forged`.
    Retired = 3,
}

impl KeyStatus {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => KeyStatus::Active,
            2 => KeyStatus::VerifyOnly,
            3 => KeyStatus::Retired,
            _ => KeyStatus::Absent,
        }
    }

    /// The word used in the ring file and the CLI.
    pub fn name(self) -> &'static str {
        match self {
            KeyStatus::Absent => "absent",
            KeyStatus::Active => "active",
            KeyStatus::VerifyOnly => "verify",
            KeyStatus::Retired => "retired",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(KeyStatus::Active),
            "verify" => Some(KeyStatus::VerifyOnly),
            "retired" => Some(KeyStatus::Retired),
            _ => None,
        }
    }
}

/// Why the ring could not be read, written or changed.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// Key material readable by other users.
    #[error("{path} is open to other users (mode {mode:o}); run: chmod {want:o} {path}")]
    Permissions {
        /// The file or directory.
        path: PathBuf,
        /// Its mode bits.
        mode: u32,
        /// The mode it should have.
        want: u32,
    },
    /// The ring file does not parse.
    #[error("{path}{}: {reason}", if *line > 0 { format!(", line {line}") } else { String::new() })]
    Malformed {
        /// The ring file.
        path: PathBuf,
        /// 1-based line number (0: the file as a whole).
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// The data dir holds state (log, snapshots or a keys directory) but no key ring.
    #[error(
        "data dir {dir} holds tickets but no key ring at {ring}: restore it from backup. \
         stile will not make new keys here, since every existing ticket would then read as forged"
    )]
    NoKeys {
        /// The data dir.
        dir: PathBuf,
        /// Where the ring should be.
        ring: PathBuf,
    },
    /// All 255 ids are taken.
    #[error("the key ring is full (255 keys); keys are never reused, so start a new deployment")]
    RingFull,
    /// No key with this id.
    #[error("no key with id {0}")]
    UnknownKey(u8),
    /// Retiring the key that signs new codes.
    #[error("key {0} is the active key; rotate to a new key before retiring it")]
    RetireActive(u8),
}

impl fmt::Debug for PrekeyedHmac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrekeyedHmac(..)")
    }
}

/// One key: its secret and the HMAC state keyed with it.
struct KeyEntry {
    /// The secret (persisted).
    secret: [u8; KEY_LEN],
    /// HMAC-SHA256 keyed with `secret`, pads absorbed.
    mac: PrekeyedHmac,
}

/// The ring: lock-free reads (one atomic status byte and a once-set entry per id).
pub struct KeyRing {
    /// Keys by id; set once, never changed.
    entries: Box<[OnceLock<KeyEntry>]>,
    /// [`KeyStatus`] by id.
    status: Box<[AtomicU8]>,
    /// Id of the active key.
    active: AtomicU8,
    /// The ring file, when persisted.
    path: Option<PathBuf>,
    /// Serialises rotations and retirements.
    admin: Mutex<()>,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing")
            .field("active", &self.active.load(Ordering::Relaxed))
            .field("keys", &self.list())
            .field("path", &self.path)
            .finish()
    }
}

impl KeyRing {
    fn empty(path: Option<PathBuf>) -> Self {
        KeyRing {
            entries: (0..=KEY_ID_MAX as usize).map(|_| OnceLock::new()).collect(),
            status: (0..=KEY_ID_MAX as usize)
                .map(|_| AtomicU8::new(0))
                .collect(),
            active: AtomicU8::new(0),
            path,
            admin: Mutex::new(()),
        }
    }

    fn insert(&self, id: u8, status: KeyStatus, secret: [u8; KEY_LEN]) {
        assert!(id != 0, "key id 0 is reserved");
        let mac = PrekeyedHmac::new(&secret);
        assert!(
            self.entries[id as usize]
                .set(KeyEntry { secret, mac })
                .is_ok(),
            "key {id} set twice"
        );
        self.status[id as usize].store(status as u8, Ordering::Release);
        if status == KeyStatus::Active {
            self.active.store(id, Ordering::Release);
        }
    }

    /// A ring held only in memory with one fresh random active key (id 1): tests, benches.
    pub fn ephemeral() -> Self {
        let ring = KeyRing::empty(None);
        ring.insert(1, KeyStatus::Active, random_secret());
        ring
    }

    /// A ring in memory from given keys (tests that need fixed secrets).
    pub fn from_keys(keys: &[(u8, KeyStatus, [u8; KEY_LEN])]) -> Result<Self, KeyError> {
        let ring = KeyRing::empty(None);
        for &(id, status, secret) in keys {
            if id == 0 || ring.status_of(id) != KeyStatus::Absent || status == KeyStatus::Absent {
                return Err(KeyError::UnknownKey(id));
            }
            ring.insert(id, status, secret);
        }
        ring.check_one_active(Path::new("<memory>"))?;
        Ok(ring)
    }

    /// Opens the ring of data dir `dir`: loads `dir/keys/ring`, or makes a new ring with one
    /// key if the data dir is new. `has_state` says whether the dir holds a log or snapshots.
    pub fn open(dir: &Path, has_state: bool) -> Result<Self, KeyError> {
        let keys_dir = dir.join(crate::datadir::KEYS_DIR);
        let ring_path = keys_dir.join(crate::datadir::RING_FILE);
        if ring_path.exists() {
            return Self::load(&keys_dir, &ring_path);
        }
        if has_state || keys_dir.exists() {
            return Err(KeyError::NoKeys {
                dir: dir.to_path_buf(),
                ring: ring_path,
            });
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&keys_dir)
            .map_err(|source| KeyError::Io {
                path: keys_dir.clone(),
                source,
            })?;
        let ring = KeyRing::empty(Some(ring_path));
        ring.insert(1, KeyStatus::Active, random_secret());
        ring.persist()?;
        Ok(ring)
    }

    /// Parses a ring file's text (`path` names it in errors and is where the ring persists):
    /// the ring, and whether it had no checksum (a ring to rewrite with one). Pure: the
    /// fuzz target `key_ring` feeds it arbitrary text.
    pub fn parse(text: &str, ring_path: &Path) -> Result<(KeyRing, bool), KeyError> {
        let legacy = check_ring_sum(text).map_err(|reason| KeyError::Malformed {
            path: ring_path.to_path_buf(),
            line: 0,
            reason,
        })?;
        let ring = KeyRing::empty(Some(ring_path.to_path_buf()));
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |reason: &str| KeyError::Malformed {
                path: ring_path.to_path_buf(),
                line: i + 1,
                reason: reason.to_string(),
            };
            let mut parts = line.split_whitespace();
            let (Some(id), Some(status), Some(hex), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err(bad("expected three fields: id status secret-hex"));
            };
            let id: u8 = id
                .parse()
                .ok()
                .filter(|&id| id != 0)
                .ok_or_else(|| bad("id must be 1-255"))?;
            let status = KeyStatus::parse(status)
                .ok_or_else(|| bad("status must be active, verify or retired"))?;
            let secret = parse_hex(hex).ok_or_else(|| bad("secret must be 64 hex digits"))?;
            if ring.status_of(id) != KeyStatus::Absent {
                return Err(bad("key id appears twice"));
            }
            ring.insert(id, status, secret);
        }
        ring.check_one_active(ring_path)?;
        Ok((ring, legacy))
    }

    fn load(keys_dir: &Path, ring_path: &Path) -> Result<Self, KeyError> {
        check_mode(keys_dir, 0o700)?;
        check_mode(ring_path, 0o600)?;
        let text = fs::read_to_string(ring_path).map_err(|source| KeyError::Io {
            path: ring_path.to_path_buf(),
            source,
        })?;
        let (ring, legacy) = Self::parse(&text, ring_path)?;
        if legacy {
            // From now on the ring carries its checksum.
            ring.persist()?;
        }
        Ok(ring)
    }

    /// The ring file, when persisted.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Whether key `id` is in the ring with exactly `secret`.
    pub(crate) fn holds_secret(&self, id: u8, secret: &[u8; KEY_LEN]) -> bool {
        self.entries[id as usize]
            .get()
            .is_some_and(|e| bool::from(e.secret.ct_eq(secret)))
    }

    fn check_one_active(&self, path: &Path) -> Result<(), KeyError> {
        let active = self
            .list()
            .iter()
            .filter(|(_, s)| *s == KeyStatus::Active)
            .count();
        if active != 1 {
            return Err(KeyError::Malformed {
                path: path.to_path_buf(),
                line: 0,
                reason: format!("exactly one key must be active, found {active}"),
            });
        }
        Ok(())
    }

    /// Status of key `id`.
    #[inline]
    pub fn status_of(&self, id: u8) -> KeyStatus {
        KeyStatus::from_u8(self.status[id as usize].load(Ordering::Acquire))
    }

    /// Id of the key that signs new codes.
    pub fn active_id(&self) -> u8 {
        self.active.load(Ordering::Acquire)
    }

    /// Every key id present, with its status, in id order.
    pub fn list(&self) -> Vec<(u8, KeyStatus)> {
        (1..=KEY_ID_MAX)
            .map(|id| (id, self.status_of(id)))
            .filter(|(_, s)| *s != KeyStatus::Absent)
            .collect()
    }

    /// Every key with its status and secret (for snapshots, which are written 0600).
    pub(crate) fn export(&self) -> Vec<(u8, KeyStatus, [u8; KEY_LEN])> {
        self.list()
            .into_iter()
            .map(|(id, status)| {
                (
                    id,
                    status,
                    self.entries[id as usize]
                        .get()
                        .expect("listed key is set")
                        .secret,
                )
            })
            .collect()
    }

    /// The HMAC state of a key that may verify (active or verify-only).
    #[inline]
    fn verifier(&self, id: u8) -> Option<&PrekeyedHmac> {
        match self.status_of(id) {
            KeyStatus::Active | KeyStatus::VerifyOnly => {
                self.entries[id as usize].get().map(|e| &e.mac)
            }
            KeyStatus::Absent | KeyStatus::Retired => None,
        }
    }

    /// Adds a fresh key and makes it active; the previous active key becomes verify-only.
    /// Returns the new key's id.
    pub fn rotate(&self) -> Result<u8, KeyError> {
        let _guard = self.admin.lock().expect("key ring mutex poisoned");
        let next = self.list().last().map(|(id, _)| *id).unwrap_or(0);
        let id = next.checked_add(1).ok_or(KeyError::RingFull)?;
        let previous = self.active_id();
        self.insert(id, KeyStatus::Active, random_secret());
        if previous != 0 {
            self.status[previous as usize].store(KeyStatus::VerifyOnly as u8, Ordering::Release);
        }
        self.persist()?;
        Ok(id)
    }

    /// Takes on the keys and statuses of `text`, a primary's ring file: keys it lacks are
    /// added, statuses follow the primary's, and the ring is persisted. A standby's ring only
    /// ever changes this way. A key whose secret differs from the one held here is refused:
    /// the text is another deployment's.
    pub fn adopt(&self, text: &str) -> Result<(), KeyError> {
        let _guard = self.admin.lock().expect("key ring mutex poisoned");
        let from = Path::new("<primary's key ring>");
        let (theirs, _) = Self::parse(text, from)?;
        for (id, status, secret) in theirs.export() {
            if self.status_of(id) == KeyStatus::Absent {
                self.insert(id, status, secret);
            } else if !self.holds_secret(id, &secret) {
                return Err(KeyError::Malformed {
                    path: from.to_path_buf(),
                    line: 0,
                    reason: format!("key {id} differs from this node's: another deployment"),
                });
            }
            self.status[id as usize].store(status as u8, Ordering::Release);
        }
        self.active.store(theirs.active_id(), Ordering::Release);
        self.persist()
    }

    /// The ring file's text as [`Self::adopt`] takes it (its checksum included).
    pub fn to_text(&self) -> String {
        let mut text = format!("{RING_HEADER}\n");
        for (id, status) in self.list() {
            let secret = &self.entries[id as usize]
                .get()
                .expect("listed key is set")
                .secret;
            text.push_str(&format!("{id} {} {}\n", status.name(), to_hex(secret)));
        }
        let sum = to_hex(&Sha256::digest(text.as_bytes()));
        text.push_str(&format!("{RING_CHECKSUM_PREFIX}{sum}\n"));
        text
    }

    /// Retires key `id`: its codes read as `forged` from now on.
    pub fn retire(&self, id: u8) -> Result<(), KeyError> {
        let _guard = self.admin.lock().expect("key ring mutex poisoned");
        match self.status_of(id) {
            KeyStatus::Absent => return Err(KeyError::UnknownKey(id)),
            KeyStatus::Active => return Err(KeyError::RetireActive(id)),
            KeyStatus::VerifyOnly | KeyStatus::Retired => {}
        }
        self.status[id as usize].store(KeyStatus::Retired as u8, Ordering::Release);
        self.persist()
    }

    /// Writes the ring file: temp file (0600), fsync, rename, fsync the directory.
    fn persist(&self) -> Result<(), KeyError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let text = self.to_text();
        let tmp = path.with_extension("tmp");
        crate::datadir::write_private_synced(&tmp, &[text.as_bytes()]).map_err(io(&tmp))?;
        crate::datadir::rename_synced(&tmp, path).map_err(io(path))
    }

    /// Signs a static code for `header` with the active key.
    pub fn sign_static(&self, header: &CodeHeader) -> CodeBytes {
        debug_assert_eq!(header.format, CodeFormat::Static);
        let header = CodeHeader {
            key_id: self.active_id(),
            ..*header
        };
        let mut code = CodeBytes::unsigned(&header, 0);
        let mac = self.verifier(header.key_id).expect("active key verifies");
        code.set_tag(&mac.tag(code.signed_part()));
        code
    }

    /// Signs a static code with the key its header names (to redraw an existing ticket's
    /// code); `None` if that key may not verify.
    pub fn sign_static_with(&self, header: &CodeHeader) -> Option<CodeBytes> {
        debug_assert_eq!(header.format, CodeFormat::Static);
        let mac = self.verifier(header.key_id)?;
        let mut code = CodeBytes::unsigned(header, 0);
        code.set_tag(&mac.tag(code.signed_part()));
        Some(code)
    }

    /// Checks a static code's tag in constant time. False for unknown or retired keys.
    #[inline]
    pub fn verify_static(&self, code: &CodeBytes) -> bool {
        debug_assert_eq!(code.format(), CodeFormat::Static);
        match self.verifier(code.key_id()) {
            Some(mac) => tags_equal(&mac.tag(code.signed_part()), code.tag()),
            None => false,
        }
    }

    /// The per-ticket key of a rotating ticket: HMAC-SHA256(ring key `key_id`, label ‖
    /// partition ‖ serial), `docs/FORMAT.md` §1. `None` if the key may not verify (absent or
    /// retired). It draws and verifies that one ticket's codes and nothing else.
    pub fn ticket_key(&self, key_id: u8, partition: u16, serial: u32) -> Option<[u8; KEY_LEN]> {
        const LABEL_LEN: usize = ROTATING_KEY_LABEL.len();
        let mut msg = [0u8; LABEL_LEN + 6];
        msg[..LABEL_LEN].copy_from_slice(ROTATING_KEY_LABEL);
        msg[LABEL_LEN..LABEL_LEN + 2].copy_from_slice(&partition.to_be_bytes());
        msg[LABEL_LEN + 2..].copy_from_slice(&serial.to_be_bytes());
        Some(self.verifier(key_id)?.mac(&msg))
    }

    /// Signs a rotating code for `header` at time step `step` with the active key.
    pub fn sign_rotating(&self, header: &CodeHeader, step: u64) -> CodeBytes {
        debug_assert_eq!(header.format, CodeFormat::Rotating);
        let header = CodeHeader {
            key_id: self.active_id(),
            ..*header
        };
        self.sign_rotating_with(&header, step)
            .expect("active key verifies")
    }

    /// Signs a rotating code with the key the header names (to redraw an existing ticket).
    pub fn sign_rotating_with(&self, header: &CodeHeader, step: u64) -> Option<CodeBytes> {
        let key = self.ticket_key(header.key_id, header.partition, header.serial)?;
        Some(stile_protocol::rotating::draw(header, &key, step))
    }

    /// Checks a rotating code's tag for the step its low byte names, accepting only steps
    /// `current_step - 1 ..= current_step + 1`; `None` accepts any step (operator look-ups).
    pub fn verify_rotating(&self, code: &CodeBytes, current_step: Option<u64>) -> bool {
        let Some(low) = code.step_low() else {
            return false;
        };
        if let Some(now) = current_step {
            let near = [now.wrapping_sub(1), now, now.wrapping_add(1)];
            if !near.iter().any(|s| *s as u8 == low) {
                return false;
            }
        }
        match self.sign_rotating_with(&code.header(), u64::from(low)) {
            Some(drawn) => tags_equal(drawn.tag(), code.tag()),
            None => false,
        }
    }
}

fn random_secret() -> [u8; KEY_LEN] {
    let mut secret = [0u8; KEY_LEN];
    getrandom::getrandom(&mut secret).expect("the OS random source works");
    secret
}

/// Maps an I/O error on `path` to a [`KeyError`].
fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError + '_ {
    move |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn check_mode(path: &Path, want: u32) -> Result<(), KeyError> {
    let meta = fs::metadata(path).map_err(|source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyError::Permissions {
            path: path.to_path_buf(),
            mode,
            want,
        });
    }
    Ok(())
}

/// Checks a ring file's checksum line (its last): `Ok(true)` for a ring with neither this
/// version's first line nor a checksum line (one of the first version, or written by hand);
/// an error saying what is wrong otherwise. A ring that has either must have both right, so
/// that removing the first line does not turn the check off.
fn check_ring_sum(text: &str) -> Result<bool, String> {
    let has_sum = text
        .lines()
        .any(|l| l.trim_start().starts_with(RING_CHECKSUM_PREFIX.trim_end()));
    if text.lines().next().map(str::trim) != Some(RING_HEADER) && !has_sum {
        return Ok(true);
    }
    let body_end = text.trim_end_matches('\n').rfind('\n').map_or(0, |i| i + 1);
    let last = text[body_end..].trim();
    let Some(want) = last.strip_prefix(RING_CHECKSUM_PREFIX) else {
        return Err(format!(
            "the ring's last line must be its checksum ({RING_CHECKSUM_PREFIX}…): the file \
             is cut short or was edited; restore it from a backup"
        ));
    };
    let have = to_hex(&Sha256::digest(&text.as_bytes()[..body_end]));
    if !bool::from(have.as_bytes().ct_eq(want.trim().as_bytes())) {
        return Err(
            "the ring does not match its checksum: a secret or status was changed or damaged; \
             restore the file from a backup (stile will not guess which key is right)"
                .into(),
        );
    }
    Ok(false)
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_hex(s: &str) -> Option<[u8; KEY_LEN]> {
    if s.len() != KEY_LEN * 2 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; KEY_LEN];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(format: CodeFormat) -> CodeHeader {
        CodeHeader {
            format,
            key_id: 0,
            provider: 1,
            partition: 0,
            serial: 42,
        }
    }

    #[test]
    fn prekeyed_hmac_matches_rfc4231() {
        // Test case 2: key "Jefe", data "what do ya want for nothing?".
        let mac = PrekeyedHmac::new(b"Jefe").mac(b"what do ya want for nothing?");
        assert_eq!(
            to_hex(&mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // Test case 6: a 131-byte key (longer than a block), hashed first.
        let key = [0xaau8; 131];
        let mac =
            PrekeyedHmac::new(&key).mac(b"Test Using Larger Than Block-Size Key - Hash Key First");
        assert_eq!(
            to_hex(&mac),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    proptest::proptest! {
        #[test]
        fn prekeyed_hmac_matches_hmac_crate(key in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..100),
                                            msg in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..=PrekeyedHmac::MSG_MAX)) {
            use hmac::Mac;
            let mut reference = hmac::Hmac::<Sha256>::new_from_slice(&key).unwrap();
            reference.update(&msg);
            let want = reference.finalize().into_bytes();
            let ours = PrekeyedHmac::new(&key);
            proptest::prop_assert_eq!(&ours.mac(&msg)[..], &want[..]);
            proptest::prop_assert_eq!(&ours.tag(&msg)[..], &want[..TAG_LEN]);
        }
    }

    #[test]
    fn signs_and_verifies_and_rejects_tampering() {
        let ring = KeyRing::ephemeral();
        let code = ring.sign_static(&header(CodeFormat::Static));
        assert_eq!(code.key_id(), 1);
        assert!(ring.verify_static(&code));
        let mut raw = code.as_bytes().to_vec();
        raw[9] ^= 1;
        assert!(!ring.verify_static(&CodeBytes::from_slice(&raw).unwrap()));
    }

    #[test]
    fn rotation_keeps_old_codes_until_retired() {
        let ring = KeyRing::ephemeral();
        let old = ring.sign_static(&header(CodeFormat::Static));
        assert_eq!(ring.rotate().unwrap(), 2);
        let new = ring.sign_static(&header(CodeFormat::Static));
        assert_eq!(new.key_id(), 2);
        assert!(ring.verify_static(&old) && ring.verify_static(&new));
        assert!(matches!(ring.retire(2), Err(KeyError::RetireActive(2))));
        ring.retire(1).unwrap();
        assert!(!ring.verify_static(&old));
        assert!(ring.verify_static(&new));
        assert!(matches!(ring.retire(9), Err(KeyError::UnknownKey(9))));
    }

    #[test]
    fn rotating_codes_accept_only_neighbouring_steps() {
        let ring = KeyRing::ephemeral();
        let code = ring.sign_rotating(&header(CodeFormat::Rotating), 1000);
        assert!(ring.verify_rotating(&code, Some(999)));
        assert!(ring.verify_rotating(&code, Some(1000)));
        assert!(ring.verify_rotating(&code, Some(1001)));
        assert!(!ring.verify_rotating(&code, Some(1002)));
        assert!(!ring.verify_rotating(&code, Some(998)));
        assert!(ring.verify_rotating(&code, None));
        // A step byte moved by hand fails the tag even inside the window.
        let mut raw = code.as_bytes().to_vec();
        raw[10] = raw[10].wrapping_add(1);
        assert!(!ring.verify_rotating(&CodeBytes::from_slice(&raw).unwrap(), Some(1001)));
    }

    #[test]
    fn ticket_key_alone_draws_codes_the_ring_accepts() {
        let ring = KeyRing::ephemeral();
        let h = CodeHeader {
            key_id: 1,
            ..header(CodeFormat::Rotating)
        };
        let key = ring.ticket_key(1, h.partition, h.serial).unwrap();
        let mut code = CodeBytes::unsigned(&h, 77);
        code.set_tag(&PrekeyedHmac::new(&key).tag(code.signed_part()));
        assert_eq!(code, ring.sign_rotating_with(&h, 77).unwrap());
        assert!(ring.verify_rotating(&code, Some(77)));
        // Another ticket's key draws nothing this ticket accepts.
        let other = ring.ticket_key(1, h.partition, h.serial + 1).unwrap();
        code.set_tag(&PrekeyedHmac::new(&other).tag(code.signed_part()));
        assert!(!ring.verify_rotating(&code, Some(77)));
        assert_eq!(ring.ticket_key(2, h.partition, h.serial), None);
    }

    #[test]
    fn new_data_dir_gets_private_key_files_and_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let ring = KeyRing::open(dir.path(), false).unwrap();
        let code = ring.sign_static(&header(CodeFormat::Static));
        ring.rotate().unwrap();
        let keys = dir.path().join("keys");
        assert_eq!(
            fs::metadata(&keys).unwrap().permissions().mode() & 0o777,
            0o700
        );
        assert_eq!(
            fs::metadata(keys.join("ring"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        let again = KeyRing::open(dir.path(), true).unwrap();
        assert!(again.verify_static(&code));
        assert_eq!(again.active_id(), 2);
    }

    #[test]
    fn state_without_keys_is_an_error_not_a_new_key() {
        let dir = tempfile::tempdir().unwrap();
        let err = KeyRing::open(dir.path(), true).unwrap_err();
        assert!(matches!(err, KeyError::NoKeys { .. }));
        assert!(err.to_string().contains("restore it from backup"), "{err}");
        assert!(!dir.path().join("keys").exists());
        fs::create_dir(dir.path().join("keys")).unwrap();
        assert!(matches!(
            KeyRing::open(dir.path(), false),
            Err(KeyError::NoKeys { .. })
        ));
    }

    #[test]
    fn open_ring_file_and_garbage_are_refused_with_reasons() {
        let dir = tempfile::tempdir().unwrap();
        KeyRing::open(dir.path(), false).unwrap();
        let ring = dir.path().join("keys/ring");
        fs::set_permissions(&ring, fs::Permissions::from_mode(0o644)).unwrap();
        let err = KeyRing::open(dir.path(), true).unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
        fs::set_permissions(&ring, fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(&ring, "1 active nothex\n").unwrap();
        let err = KeyRing::open(dir.path(), true).unwrap_err();
        assert!(err.to_string().contains("line 1"), "{err}");
        fs::write(&ring, format!("1 verify {}\n", "ab".repeat(32))).unwrap();
        let err = KeyRing::open(dir.path(), true).unwrap_err();
        assert!(
            err.to_string().contains("exactly one key must be active"),
            "{err}"
        );
    }

    /// Regression: one changed hex digit of a secret was accepted silently, and every
    /// ticket of that key then answered `forged`. The ring's checksum refuses it, naming
    /// the file; the line format operators read stays `id status secret-hex`.
    #[test]
    fn a_changed_digit_in_the_ring_is_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        KeyRing::open(dir.path(), false).unwrap();
        let ring = dir.path().join("keys/ring");
        let text = fs::read_to_string(&ring).unwrap();
        let key_line = text.lines().find(|l| !l.starts_with('#')).unwrap();
        let fields: Vec<&str> = key_line.split(' ').collect();
        assert_eq!(fields[..2], ["1", "active"]);
        assert_eq!(fields[2].len(), 64);
        let first = fields[2].as_bytes()[0];
        let changed = if first == b'0' { '1' } else { '0' };
        let bad = text.replacen(fields[2], &format!("{changed}{}", &fields[2][1..]), 1);
        fs::write(&ring, &bad).unwrap();
        let err = KeyRing::open(dir.path(), true).unwrap_err().to_string();
        assert!(err.contains("checksum"), "{err}");
        assert!(err.contains(ring.to_str().unwrap()), "{err}");
        // Cut short (the checksum line lost): refused too.
        let cut: String = text.lines().take(2).map(|l| format!("{l}\n")).collect();
        fs::write(&ring, cut).unwrap();
        assert!(KeyRing::open(dir.path(), true).is_err());
        // The first line removed, then a digit changed: still checked.
        let headless: String = bad.lines().skip(1).map(|l| format!("{l}\n")).collect();
        fs::write(&ring, headless).unwrap();
        let err = KeyRing::open(dir.path(), true).unwrap_err().to_string();
        assert!(err.contains("checksum"), "{err}");
        // Put back: opens.
        fs::write(&ring, &text).unwrap();
        KeyRing::open(dir.path(), true).unwrap();
    }

    /// A ring without a checksum (the first version's, or one written by hand) is read and
    /// rewritten with one.
    #[test]
    fn a_ring_without_a_checksum_gets_one() {
        let dir = tempfile::tempdir().unwrap();
        KeyRing::open(dir.path(), false).unwrap();
        let ring = dir.path().join("keys/ring");
        let secret = "ab".repeat(32);
        fs::write(&ring, format!("# stile key ring v1\n1 active {secret}\n")).unwrap();
        let keys = KeyRing::open(dir.path(), true).unwrap();
        assert_eq!(keys.list(), vec![(1, KeyStatus::Active)]);
        let text = fs::read_to_string(&ring).unwrap();
        assert!(text.contains(&format!("1 active {secret}\n")), "{text}");
        assert!(
            text.lines()
                .last()
                .unwrap()
                .starts_with(RING_CHECKSUM_PREFIX),
            "{text}"
        );
        KeyRing::open(dir.path(), true).unwrap();
    }
}
