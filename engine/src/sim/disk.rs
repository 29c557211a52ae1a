//! A simulated disk: [`Storage`] in memory, keeping what was written apart from what was
//! synced, so that a power cut can be played out exactly as the disk assumptions of
//! FORMAT.md §0 allow, driven by a seed.
//!
//! - A file's bytes live in 512-byte sectors. A write changes the page cache (`data`) and
//!   marks its sectors dirty; `fdatasync`/`fsync` copies the dirty sectors and the length to
//!   the disk (`synced`).
//! - A directory's entries are live at once and durable once the directory is synced: a
//!   create, rename or unlink that no directory sync followed may be undone by a power cut.
//!   Directories themselves are made durable at once (the data dir's are made before the
//!   engine starts).
//! - A **power cut** keeps, for each file, the synced length or the written one, and for each
//!   dirty sector the new content or the synced one, each chosen by the seed (holes
//!   included); directories go back to their synced entries, and files no durable entry
//!   names are gone. A **kill** (the process alone dies) loses nothing the kernel holds: the
//!   next process sees the page cache, and a later power cut can still take back what was
//!   never synced.
//! - A **failed write** changes nothing; a **failed sync** drops some of the file's dirty
//!   pages (the kernel may: that is why the log stops on it) and syncs none.
//! - A **bit flip** changes one bit of a synced sector on the disk.
//!
//! Faults are scheduled by operation count: the `n`th call into the storage strikes.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::Rng;
use crate::storage::{Create, Storage, StorageFile};

/// Bytes of a sector: the unit a power cut keeps or loses.
pub const SECTOR: usize = 512;

/// A fault the disk strikes with at a set operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The power goes: this operation and every later one fail, until [`SimDisk::restart`].
    PowerCut,
    /// The process dies (SIGKILL): as a power cut for the process, but the kernel keeps
    /// everything written.
    Kill,
    /// The first write from the set operation on fails.
    FailWrite,
    /// The first sync (of a file or a directory) from the set operation on fails.
    FailSync,
}

/// How a process ended, as [`SimDisk::restart`] plays it out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Crash {
    /// The power was cut: unsynced sectors and directory changes may be lost.
    PowerCut,
    /// Only the process died.
    Kill,
}

/// One file's bytes: as the page cache holds them, and as the disk does.
#[derive(Debug, Default, Clone)]
struct Inode {
    /// What reads see (the page cache).
    data: Vec<u8>,
    /// What the disk holds: its length is the synced length.
    synced: Vec<u8>,
    /// Sectors written since the last sync.
    dirty: BTreeSet<usize>,
}

impl Inode {
    fn write(&mut self, buf: &[u8], offset: usize) {
        let end = offset + buf.len();
        if self.data.len() < end {
            self.data.resize(end, 0);
        }
        self.data[offset..end].copy_from_slice(buf);
        if !buf.is_empty() {
            self.dirty.extend(offset / SECTOR..=(end - 1) / SECTOR);
        }
    }

    fn set_len(&mut self, len: usize) {
        if len < self.data.len() {
            // The sector the new end falls in changes (its tail becomes zeros past the end).
            if !len.is_multiple_of(SECTOR) {
                self.dirty.insert(len / SECTOR);
            }
        }
        self.data.resize(len, 0);
    }

    fn sync(&mut self) {
        let len = self.data.len();
        self.synced.resize(len, 0);
        for &s in &self.dirty {
            let (a, b) = (s * SECTOR, ((s + 1) * SECTOR).min(len));
            if a < b {
                self.synced[a..b].copy_from_slice(&self.data[a..b]);
            }
        }
        self.dirty.clear();
    }

    /// Whether sector `s` holds on the disk what reads see.
    fn is_synced(&self, s: usize) -> bool {
        !self.dirty.contains(&s) && self.data.len() == self.synced.len()
    }

    /// What the disk holds after a power cut: the synced or the written length, and each
    /// dirty sector new or old, as `rng` picks (`keep` of 256: the odds a sector is kept).
    fn cut(&mut self, rng: &mut Rng, keep: u64) {
        let len = if self.data.len() != self.synced.len() && rng.below(2) == 0 {
            self.data.len()
        } else {
            self.synced.len()
        };
        let mut out = self.synced.clone();
        out.resize(len, 0);
        for &s in &self.dirty {
            let (a, b) = (s * SECTOR, ((s + 1) * SECTOR).min(len));
            if a < b && rng.below(256) < keep {
                let from = b.min(self.data.len());
                if a < from {
                    out[a..from].copy_from_slice(&self.data[a..from]);
                }
                // Past the written length the sector holds zeros.
                out[from.max(a)..b].fill(0);
            }
        }
        self.data = out.clone();
        self.synced = out;
        self.dirty.clear();
    }

    /// A failed sync: the kernel may drop any of the dirty pages (what reads see goes back
    /// to the disk's bytes) and syncs none.
    fn drop_pages(&mut self, rng: &mut Rng) {
        let dirty: Vec<usize> = self.dirty.iter().copied().collect();
        for s in dirty {
            if rng.below(2) == 0 {
                let (a, b) = (s * SECTOR, ((s + 1) * SECTOR).min(self.data.len()));
                for i in a..b {
                    self.data[i] = self.synced.get(i).copied().unwrap_or(0);
                }
                self.dirty.remove(&s);
            }
        }
    }
}

/// A directory: its entries as seen, and as the disk holds them.
#[derive(Debug, Default, Clone)]
struct Dir {
    live: BTreeMap<String, u64>,
    durable: BTreeMap<String, u64>,
}

/// Counts of what a disk did, for a run's report.
#[derive(Debug, Default, Clone, Copy)]
pub struct DiskStats {
    /// Calls into the storage.
    pub ops: u64,
    /// Faults that struck.
    pub faults: u64,
}

#[derive(Debug)]
struct State {
    inodes: BTreeMap<u64, Inode>,
    dirs: BTreeMap<PathBuf, Dir>,
    next_ino: u64,
    /// Operations so far.
    ops: u64,
    /// The fault to strike and the operation from which it strikes.
    scheduled: Option<(u64, Fault)>,
    /// The power is cut, or the process killed: every operation fails.
    down: Option<Crash>,
    /// The process was told to stop ([`Storage::fail_stop`]): every operation fails.
    dead: bool,
    /// The process's life: files opened in an earlier one fail.
    life: u64,
    /// Faults that struck.
    faults: u64,
    /// A failed sync dropped pages in this life: what was written may be gone even without
    /// a power cut.
    dropped_pages: bool,
    /// For the pages a failed sync drops.
    rng: Rng,
}

/// The simulated disk (see the module's doc).
#[derive(Debug, Clone)]
pub struct SimDisk {
    state: Arc<Mutex<State>>,
}

/// What a failing operation of a stopped process says.
fn gone() -> io::Error {
    io::Error::other("simulated: the process is gone (power cut, kill or failed sync)")
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("simulated: {} not found", path.display()),
    )
}

/// Which kind of operation a call is, for the faults aimed at writes or syncs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpKind {
    Read,
    Write,
    Sync,
    Meta,
}

impl SimDisk {
    /// An empty disk with directory `root` and its subdirectories `subdirs`; `seed` drives
    /// what failed syncs drop.
    pub fn new(root: &Path, subdirs: &[&str], seed: u64) -> Self {
        let mut dirs = BTreeMap::new();
        dirs.insert(root.to_path_buf(), Dir::default());
        for d in subdirs {
            dirs.insert(root.join(d), Dir::default());
        }
        SimDisk {
            state: Arc::new(Mutex::new(State {
                inodes: BTreeMap::new(),
                dirs,
                next_ino: 1,
                ops: 0,
                scheduled: None,
                down: None,
                dead: false,
                life: 0,
                faults: 0,
                dropped_pages: false,
                rng: Rng::new(seed ^ 0xD15C_D15C_D15C_D15C),
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("sim disk poisoned")
    }

    /// Schedules `fault` to strike at operation `at` (counting from the disk's start).
    pub fn schedule(&self, at: u64, fault: Fault) {
        self.lock().scheduled = Some((at, fault));
    }

    /// Whether a fault is scheduled and has not struck yet.
    pub fn fault_pending(&self) -> bool {
        self.lock().scheduled.is_some()
    }

    /// Whether a failed sync dropped written pages in this life.
    pub fn dropped_pages(&self) -> bool {
        self.lock().dropped_pages
    }

    /// Operations so far.
    pub fn ops(&self) -> u64 {
        self.lock().ops
    }

    /// What the disk did so far.
    pub fn stats(&self) -> DiskStats {
        let s = self.lock();
        DiskStats {
            ops: s.ops,
            faults: s.faults,
        }
    }

    /// How the process ended, if it did: cut off by a fault, or stopped after a failure.
    pub fn down(&self) -> Option<Crash> {
        let s = self.lock();
        match (s.down, s.dead) {
            (Some(c), _) => Some(c),
            (None, true) => Some(Crash::Kill),
            (None, false) => None,
        }
    }

    /// Ends the process's life as `crash` says and starts the next: what a power cut takes
    /// is lost (`keep` of 256: the odds an unsynced sector survives), faults are cleared,
    /// and files opened before fail from now on.
    pub fn restart(&self, crash: Crash, keep: u64, rng: &mut Rng) {
        let mut s = self.lock();
        s.life += 1;
        s.dropped_pages = false;
        s.down = None;
        s.dead = false;
        s.scheduled = None;
        if crash == Crash::Kill {
            return;
        }
        let mut named = BTreeSet::new();
        for dir in s.dirs.values_mut() {
            dir.live = dir.durable.clone();
            named.extend(dir.durable.values().copied());
        }
        s.inodes.retain(|ino, _| named.contains(ino));
        for inode in s.inodes.values_mut() {
            inode.cut(rng, keep);
        }
    }

    /// Every file by path, with its length and which of its sectors are synced.
    pub fn files(&self) -> Vec<(PathBuf, u64, Vec<usize>)> {
        let s = self.lock();
        let mut out = Vec::new();
        for (dir, d) in &s.dirs {
            for (name, ino) in &d.live {
                let inode = &s.inodes[ino];
                let synced = (0..inode.data.len().div_ceil(SECTOR))
                    .filter(|&sec| inode.is_synced(sec))
                    .collect();
                out.push((dir.join(name), inode.data.len() as u64, synced));
            }
        }
        out
    }

    /// Flips bit `bit` of byte `offset` of the file at `path`, on the disk and in the cache.
    /// Does nothing if the file or that byte is gone (recovery removed or cut it).
    pub fn flip(&self, path: &Path, offset: u64, bit: u8) {
        let mut s = self.lock();
        let Some(ino) = lookup(&s, path) else {
            return;
        };
        let inode = s.inodes.get_mut(&ino).expect("its inode");
        let i = offset as usize;
        if let Some(b) = inode.data.get_mut(i) {
            *b ^= 1 << bit;
        }
        if let Some(b) = inode.synced.get_mut(i) {
            *b ^= 1 << bit;
        }
    }

    /// The inode the name `path` stands for now, if any.
    pub fn inode_of(&self, path: &Path) -> Option<u64> {
        lookup(&self.lock(), path)
    }

    /// The file's bytes as reads see them (tests).
    pub fn contents(&self, path: &Path) -> Option<Vec<u8>> {
        let s = self.lock();
        lookup(&s, path).map(|ino| s.inodes[&ino].data.clone())
    }

    /// Counts an operation and strikes the scheduled fault if it is due: `Err` if this
    /// operation fails.
    fn op(&self, kind: OpKind) -> io::Result<MutexGuard<'_, State>> {
        let mut s = self.lock();
        match strike(&mut s, kind) {
            Ok(()) => Ok(s),
            Err(None) => Err(gone()),
            Err(Some(fault)) => Err(io::Error::other(format!("simulated {fault:?}"))),
        }
    }
}

/// Counts an operation of `kind` and strikes the scheduled fault if it is due: `Err(None)`
/// if the process is gone, `Err(Some(fault))` if the fault struck this operation.
fn strike(s: &mut State, kind: OpKind) -> Result<(), Option<Fault>> {
    s.ops += 1;
    if s.down.is_some() || s.dead {
        return Err(None);
    }
    let Some((at, fault)) = s.scheduled else {
        return Ok(());
    };
    let strikes = s.ops >= at
        && match fault {
            Fault::PowerCut | Fault::Kill => true,
            Fault::FailWrite => kind == OpKind::Write,
            Fault::FailSync => kind == OpKind::Sync,
        };
    if !strikes {
        return Ok(());
    }
    s.scheduled = None;
    s.faults += 1;
    match fault {
        Fault::PowerCut => s.down = Some(Crash::PowerCut),
        Fault::Kill => s.down = Some(Crash::Kill),
        Fault::FailWrite | Fault::FailSync => {}
    }
    Err(Some(fault))
}

fn split(path: &Path) -> (PathBuf, String) {
    let dir = path
        .parent()
        .expect("files live in a directory")
        .to_path_buf();
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .expect("a file name")
        .to_owned();
    (dir, name)
}

fn lookup(s: &State, path: &Path) -> Option<u64> {
    let (dir, name) = split(path);
    s.dirs.get(&dir)?.live.get(&name).copied()
}

/// A file of a [`SimDisk`], by inode, valid for the life it was opened in.
#[derive(Debug)]
struct SimFile {
    disk: SimDisk,
    ino: u64,
    life: u64,
    writable: bool,
}

impl SimFile {
    /// The file's inode, if this handle may still use it.
    fn with<T>(&self, kind: OpKind, f: impl FnOnce(&mut Inode, &mut Rng) -> T) -> io::Result<T> {
        let mut s = self.disk.op(kind)?;
        if s.life != self.life {
            return Err(gone());
        }
        if kind == OpKind::Write && !self.writable {
            return Err(io::Error::other("simulated: not open for writing"));
        }
        let State { inodes, rng, .. } = &mut *s;
        let inode = inodes.get_mut(&self.ino).expect("an open file's inode");
        Ok(f(inode, rng))
    }
}

impl StorageFile for SimFile {
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.with(OpKind::Write, |i, _| i.write(buf, offset as usize))
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.with(OpKind::Read, |i, _| {
            let at = (offset as usize).min(i.data.len());
            let n = buf.len().min(i.data.len() - at);
            buf[..n].copy_from_slice(&i.data[at..at + n]);
            n
        })
    }
    fn size(&self) -> io::Result<u64> {
        self.with(OpKind::Read, |i, _| i.data.len() as u64)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.with(OpKind::Write, |i, _| i.set_len(len as usize))
    }
    fn sync_data(&self) -> io::Result<()> {
        self.sync()
    }
    fn sync_all(&self) -> io::Result<()> {
        self.sync()
    }
}

impl SimFile {
    fn sync(&self) -> io::Result<()> {
        let mut s = self.disk.lock();
        let struck = strike(&mut s, OpKind::Sync);
        if s.life != self.life {
            return Err(gone());
        }
        if struck == Err(Some(Fault::FailSync)) {
            s.dropped_pages = true;
        }
        let State { inodes, rng, .. } = &mut *s;
        let inode = inodes.get_mut(&self.ino).expect("an open file's inode");
        match struck {
            Ok(()) => {
                inode.sync();
                Ok(())
            }
            Err(None) => Err(gone()),
            Err(Some(Fault::FailSync)) => {
                // The kernel may have dropped some of the dirty pages; none is synced.
                inode.drop_pages(rng);
                Err(io::Error::other("simulated FailSync"))
            }
            Err(Some(fault)) => Err(io::Error::other(format!("simulated {fault:?}"))),
        }
    }
}

impl Storage for SimDisk {
    fn create(&self, path: &Path, how: Create) -> io::Result<Box<dyn StorageFile>> {
        let mut s = self.op(OpKind::Meta)?;
        let (dir, name) = split(path);
        let existing = s
            .dirs
            .get(&dir)
            .ok_or_else(|| not_found(&dir))?
            .live
            .get(&name)
            .copied();
        let ino = match (existing, how) {
            (Some(_), Create::New) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("simulated: {} exists", path.display()),
                ))
            }
            (Some(ino), Create::Truncate) => {
                s.inodes.get_mut(&ino).expect("inode").set_len(0);
                ino
            }
            (None, _) => {
                let ino = s.next_ino;
                s.next_ino += 1;
                s.inodes.insert(ino, Inode::default());
                s.dirs.get_mut(&dir).expect("dir").live.insert(name, ino);
                ino
            }
        };
        let life = s.life;
        Ok(Box::new(SimFile {
            disk: self.clone(),
            ino,
            life,
            writable: true,
        }))
    }

    fn open(&self, path: &Path, write: bool) -> io::Result<Box<dyn StorageFile>> {
        let s = self.op(OpKind::Meta)?;
        let ino = lookup(&s, path).ok_or_else(|| not_found(path))?;
        Ok(Box::new(SimFile {
            disk: self.clone(),
            ino,
            life: s.life,
            writable: write,
        }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut s = self.op(OpKind::Meta)?;
        let ((dir, a), (dir_b, b)) = (split(from), split(to));
        assert_eq!(dir, dir_b, "renames stay in their directory");
        let d = s.dirs.get_mut(&dir).ok_or_else(|| not_found(&dir))?;
        let ino = d.live.remove(&a).ok_or_else(|| not_found(from))?;
        d.live.insert(b, ino);
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut s = self.op(OpKind::Meta)?;
        let (dir, name) = split(path);
        let d = s.dirs.get_mut(&dir).ok_or_else(|| not_found(&dir))?;
        d.live.remove(&name).ok_or_else(|| not_found(path))?;
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let s = self.op(OpKind::Read)?;
        let d = s.dirs.get(dir).ok_or_else(|| not_found(dir))?;
        Ok(d.live.keys().cloned().collect())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut s = self.op(OpKind::Sync)?;
        let d = s.dirs.get_mut(dir).ok_or_else(|| not_found(dir))?;
        d.durable = d.live.clone();
        Ok(())
    }

    fn ensure_dir(&self, dir: &Path) -> io::Result<()> {
        let mut s = self.op(OpKind::Meta)?;
        s.dirs.entry(dir.to_path_buf()).or_default();
        Ok(())
    }

    fn dir_id(&self, dir: &Path) -> io::Result<(u64, u64)> {
        let s = self.lock();
        match s.dirs.keys().position(|d| d == dir) {
            Some(i) => Ok((0, i as u64)),
            None => Err(not_found(dir)),
        }
    }

    fn free_bytes(&self, _dir: &Path) -> Option<u64> {
        None
    }

    fn exists(&self, path: &Path) -> bool {
        let s = self.lock();
        s.dirs.contains_key(path) || lookup(&s, path).is_some()
    }

    fn pause(&self, _d: std::time::Duration) {}

    fn fail_stop(&self, _what: &str, _path: &Path, _e: &io::Error) {
        self.lock().dead = true;
    }
}
