//! The frame codec, sans IO: bytes in, frames out; frames in, bytes out.
//!
//! A frame is `varint length ‖ op (u8) ‖ request id (u32 LE) ‖ payload`; the length (LEB128,
//! minimal, at most [`FRAME_MAX_LEN`]) counts everything after itself. Decoding takes two
//! passes: [`split_frame`] says whether a whole frame is buffered (and refuses an oversized
//! length before a byte of the body arrives), then [`Request::decode`] or
//! [`Response::decode`] parses that one body. Nothing here panics or allocates more than the
//! frame's own bounded length, whatever the input. Byte layouts: `docs/FORMAT.md` §9.

use bytes::BufMut;

use crate::code::{CodeBytes, CodeError, CodeFormat, MAX_LEN as CODE_MAX_LEN};
use crate::histogram::{Histogram, BUCKETS as HISTOGRAM_BUCKETS};
use crate::outcome::{Outcome, OutcomeKind};

/// The ALPN protocol id of stile's wire protocol.
pub const ALPN: &[u8] = b"stile/1";
/// Largest frame body (op, request id and payload) in bytes.
pub const FRAME_MAX_LEN: usize = 32 * 1024;
/// Most bytes the length prefix takes (LEB128 of [`FRAME_MAX_LEN`]).
pub const LEN_PREFIX_MAX: usize = 3;
/// Bytes of op and request id that start every body.
pub const BODY_HEADER_LEN: usize = 5;
/// Most codes one mint request asks for (and one codes frame carries); larger batches are
/// several requests.
pub const MINT_FRAME_MAX: u32 = 1024;
/// Most events one events frame carries.
pub const EVENTS_FRAME_MAX: usize = 1024;
/// Longest error message, bytes of UTF-8.
pub const ERROR_MESSAGE_MAX: usize = 512;
/// Bytes of a frame carrying one check-in of a static code: the common case.
pub const CHECKIN_FRAME_LEN: usize = 1 + BODY_HEADER_LEN + 8 + crate::code::STATIC_LEN;

/// Declares the request ops once: each op's constant, byte and name, and from them the
/// table ([`op::REQUESTS`]) and look-ups ([`op::name`], [`op::by_name`]) that the codec, the
/// node's metrics and `stile stat` use.
macro_rules! request_ops {
    ($( $(#[$doc:meta])* $konst:ident = $byte:literal, $name:literal; )*) => {
        $( $(#[$doc])* pub const $konst: u8 = $byte; )*

        /// Every request op and its name, in byte order.
        pub const REQUESTS: &[(u8, &str)] = &[$(($byte, $name)),*];

        /// A request op's name for metrics and logs (`checkin`, `checkin_as`, …); `unknown`
        /// for a byte that is no request.
        pub fn name(op: u8) -> &'static str {
            match op {
                $($byte => $name,)*
                _ => "unknown",
            }
        }

        /// The request op with this name.
        pub fn by_name(name: &str) -> Option<u8> {
            REQUESTS.iter().find(|(_, n)| *n == name).map(|(op, _)| *op)
        }
    };
}

/// Op bytes.
pub mod op {
    request_ops! {
        /// Check in (entry).
        CHECKIN = 0x01, "checkin";
        /// Check out (exit).
        EXIT = 0x02, "exit";
        /// Annul this gate's last admit.
        UNDO = 0x03, "undo";
        /// A ticket's state.
        STATUS = 0x04, "status";
        /// Mint a batch (admin).
        MINT = 0x05, "mint";
        /// Revoke a ticket (admin).
        REVOKE = 0x06, "revoke";
        /// Transfer a ticket: void it, mint its successor (admin).
        TRANSFER = 0x07, "transfer";
        /// Liveness.
        PING = 0x08, "ping";
        /// Node counters.
        STATS = 0x09, "stats";
        /// Check in on behalf of a gate (admin, audited).
        CHECKIN_AS = 0x0A, "checkin_as";
        /// Stream ticket events from a log position (admin).
        SUBSCRIBE = 0x0B, "subscribe";
        /// A rotating ticket's per-ticket key, to redraw its code (admin, audited).
        TICKET_KEY = 0x0C, "ticket_key";
        /// Outcome counts and latency histograms (what `stile stat` shows).
        METRICS = 0x0D, "metrics";
        /// Stop a subscription started on the same stream.
        UNSUBSCRIBE = 0x0E, "unsubscribe";
        /// Drop every ticket of a partition for good (admin, audited).
        PURGE = 0x0F, "purge";
        /// A page of the gate's provider's tickets, for its offline replica (gate).
        REPLICA_PAGE = 0x10, "replica_page";
        /// Stream the replica's changes from a log position (gate; many frames per request).
        REPLICA_FOLLOW = 0x11, "replica_follow";
        /// Upload a scan the gate decided while offline (gate).
        CHECKIN_OFFLINE = 0x12, "checkin_offline";
        /// The conflicts offline scans caused, a page at a time (admin).
        CONFLICTS = 0x13, "conflicts";
        /// Follow the log as a standby (node role; the stream then carries
        /// [`crate::replication`] frames).
        REPLICATE = 0x14, "replicate";
    }

    /// Largest request op.
    pub const REQUEST_MAX: u8 = REPLICATE;
    /// An outcome (check-in, exit, undo, revoke, `checkin_as`).
    pub const OUTCOME: u8 = 0x81;
    /// A ticket's state.
    pub const TICKET: u8 = 0x82;
    /// Minted codes (mint, transfer).
    pub const CODES: u8 = 0x83;
    /// Answer to ping.
    pub const PONG: u8 = 0x84;
    /// Node counters.
    pub const STATS_REPLY: u8 = 0x85;
    /// Ticket events (subscribe; many frames per request).
    pub const EVENTS: u8 = 0x86;
    /// A rotating ticket's key and the node's time step (`ticket_key`).
    pub const TICKET_KEY_REPLY: u8 = 0x87;
    /// Outcome counts and latency histograms.
    pub const METRICS_REPLY: u8 = 0x88;
    /// What a purge dropped.
    pub const PURGED: u8 = 0x89;
    /// A batch of replica changes (`replica_page`; `replica_follow`, many frames per request).
    pub const REPLICA: u8 = 0x8A;
    /// A page of conflicts.
    pub const CONFLICTS_REPLY: u8 = 0x8B;
    /// The request failed; nothing changed.
    pub const ERROR: u8 = 0x8F;
}

/// Application error codes a node closes a connection with (QUIC `CONNECTION_CLOSE`).
pub mod close {
    /// Normal end.
    pub const DONE: u32 = 0;
    /// A frame did not parse.
    pub const MALFORMED: u32 = 1;
    /// A length above [`super::FRAME_MAX_LEN`].
    pub const TOO_LARGE: u32 = 2;
    /// An op this node does not know.
    pub const UNKNOWN_OP: u32 = 3;
    /// The peer's certificate was revoked.
    pub const REVOKED: u32 = 4;
    /// The node is shutting down (reconnect elsewhere or later).
    pub const SHUTTING_DOWN: u32 = 5;
    /// The certificate names no gate or admin role.
    pub const NO_ROLE: u32 = 6;
    /// The node serves its maximum number of connections.
    pub const TOO_MANY_CONNECTIONS: u32 = 7;

    /// A name for logs and error messages.
    pub fn name(code: u32) -> &'static str {
        match code {
            DONE => "done",
            MALFORMED => "malformed frame",
            TOO_LARGE => "frame too large",
            UNKNOWN_OP => "unknown op",
            REVOKED => "certificate revoked",
            SHUTTING_DOWN => "node shutting down",
            NO_ROLE => "certificate names no gate or admin role",
            TOO_MANY_CONNECTIONS => "too many connections",
            _ => "unknown close code",
        }
    }
}

/// Why bytes are not a frame. Any of these closes the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The length prefix exceeds [`FRAME_MAX_LEN`] (or takes more than 3 bytes).
    #[error("frame length {0} exceeds the maximum {FRAME_MAX_LEN}")]
    TooLarge(u64),
    /// The bytes do not parse.
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
    /// An op this side does not know (or one only the other side sends).
    #[error("unknown op 0x{0:02x}")]
    UnknownOp(u8),
}

impl FrameError {
    /// The connection close code for this error.
    pub fn close_code(&self) -> u32 {
        match self {
            FrameError::TooLarge(_) => close::TOO_LARGE,
            FrameError::Malformed(_) => close::MALFORMED,
            FrameError::UnknownOp(_) => close::UNKNOWN_OP,
        }
    }
}

/// Pass one: if `buf` starts with a whole frame, its total length (prefix included) and its
/// body. `Ok(None)`: more bytes needed.
#[inline]
pub fn split_frame(buf: &[u8]) -> Result<Option<(usize, &[u8])>, FrameError> {
    let mut len: u64 = 0;
    for i in 0..LEN_PREFIX_MAX {
        let Some(&b) = buf.get(i) else {
            return Ok(None);
        };
        len |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            if b == 0 && i > 0 {
                return Err(FrameError::Malformed("non-minimal length prefix"));
            }
            let len = len as usize;
            if len > FRAME_MAX_LEN {
                return Err(FrameError::TooLarge(len as u64));
            }
            if len < BODY_HEADER_LEN {
                return Err(FrameError::Malformed(
                    "frame shorter than op and request id",
                ));
            }
            let total = i + 1 + len;
            return Ok(buf.get(i + 1..total).map(|body| (total, body)));
        }
    }
    Err(FrameError::TooLarge(len))
}

/// Splits `data` frame after frame, decodes each body as a request and as a response, and
/// panics unless whatever decodes re-encodes to exactly its frame's bytes (the codec is
/// canonical: one encoding per message; a metrics answer, which may grow, re-encodes to the
/// start of its body). Stops at the first incomplete or bad frame. The
/// fuzz target (`fuzz/`) and the mutation tests drive it; it is not for production use.
#[doc(hidden)]
pub fn assert_canonical_stream(data: &[u8]) {
    let mut rest = data;
    let mut out = Vec::new();
    while let Ok(Some((n, body))) = split_frame(rest) {
        assert!(
            n <= rest.len(),
            "frame of {n} bytes with {} buffered",
            rest.len()
        );
        assert!(
            body.len() < n,
            "body of {} bytes in a frame of {n}",
            body.len()
        );
        let frame = &rest[..n];
        assert_eq!(
            &frame[n - body.len()..],
            body,
            "body is not the frame's tail"
        );
        if let Ok((id, req)) = Request::decode(body) {
            out.clear();
            req.encode(id, &mut out);
            assert_eq!(
                out, frame,
                "request {req:?} (id {id}) re-encodes differently"
            );
        }
        if let Ok((id, resp)) = Response::decode(body) {
            out.clear();
            resp.encode(id, &mut out);
            if let Response::Metrics(_) = resp {
                // A metrics answer may grow: a decoder keeps the fields it knows, which start
                // the body, and skips the rest (docs/FORMAT.md).
                let (_, known) = split_frame(&out)
                    .ok()
                    .flatten()
                    .expect("an encoded frame splits");
                assert!(
                    body.starts_with(known),
                    "response {resp:?} (id {id}) re-encodes to other leading fields"
                );
            } else {
                assert_eq!(
                    out, frame,
                    "response {resp:?} (id {id}) re-encodes differently"
                );
            }
        }
        rest = &rest[n..];
    }
}

/// Appends a frame header for a body of `len` bytes (op and id included).
#[inline]
fn put_header(out: &mut impl BufMut, op: u8, id: u32, payload_len: usize) {
    let mut len = (BODY_HEADER_LEN + payload_len) as u32;
    debug_assert!(len as usize <= FRAME_MAX_LEN, "frame over the maximum");
    while len >= 0x80 {
        out.put_u8((len as u8) | 0x80);
        len >>= 7;
    }
    out.put_u8(len as u8);
    out.put_u8(op);
    out.put_u32_le(id);
}

/// A code as it came over the wire: 1 to 21 bytes, not yet checked. A check-in of bytes that
/// are no code is answered `forged`, not refused, since scanners read garbage too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RawCode {
    len: u8,
    bytes: [u8; CODE_MAX_LEN],
}

impl RawCode {
    /// Wraps 1 to 21 bytes.
    pub fn new(raw: &[u8]) -> Option<Self> {
        if raw.is_empty() || raw.len() > CODE_MAX_LEN {
            return None;
        }
        let mut bytes = [0u8; CODE_MAX_LEN];
        bytes[..raw.len()].copy_from_slice(raw);
        Some(RawCode {
            len: raw.len() as u8,
            bytes,
        })
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }

    /// Parses the layout (length and format byte; the tag is the engine's business).
    #[inline]
    pub fn code(&self) -> Result<CodeBytes, CodeError> {
        CodeBytes::from_slice(self.as_bytes())
    }
}

impl From<CodeBytes> for RawCode {
    fn from(code: CodeBytes) -> Self {
        RawCode::new(code.as_bytes()).expect("codes are 20 or 21 bytes")
    }
}

/// What to mint: the tickets' rules and how many. Zero means "not set" for the optional
/// times.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MintSpec {
    /// Provider that sells them.
    pub provider: u16,
    /// Partition to mint into.
    pub partition: u16,
    /// How many, 1 to [`MINT_FRAME_MAX`].
    pub count: u32,
    /// Static or rotating codes.
    pub format: CodeFormat,
    /// Entries allowed (0: unlimited).
    pub max_entries: u8,
    /// Entry and exit alternate.
    pub records_exits: bool,
    /// Undo window, seconds.
    pub undo_window_s: u32,
    /// Not valid before this Unix second (0: no bound).
    pub not_before_unix_s: u64,
    /// Not valid after this Unix second (0: no bound).
    pub not_after_unix_s: u64,
    /// Valid this long from the first scan, seconds (0: no bound).
    pub duration_from_first_scan_s: u32,
    /// Rotating codes only: gates may verify them offline (their replicas then hold each
    /// ticket's rotation key). Sent as bit 1 of the exits byte.
    pub offline_rotating: bool,
    /// Gates may not admit these tickets offline. Sent as bit 2 of the exits byte.
    pub online_only: bool,
}

impl MintSpec {
    /// `count` static single-entry tickets of `provider` in partition 0, valid any time,
    /// with the usual 60 s undo window: the plainest ticket there is.
    pub fn single_entry(provider: u16, count: u32) -> MintSpec {
        MintSpec {
            provider,
            partition: 0,
            count,
            format: CodeFormat::Static,
            max_entries: 1,
            records_exits: false,
            undo_window_s: 60,
            not_before_unix_s: 0,
            not_after_unix_s: 0,
            duration_from_first_scan_s: 0,
            offline_rotating: false,
            online_only: false,
        }
    }
}

const MINT_SPEC_LEN: usize = 2 + 2 + 4 + 1 + 1 + 1 + 4 + 8 + 8 + 4;

/// A ticket's state as the node reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TicketInfo {
    /// `valid`, `used`, `revoked`, `expired`.
    pub state: TicketStateName,
    /// Inside (entry/exit tickets).
    pub inside: bool,
    /// Entries counted.
    pub entries: u8,
    /// Entries allowed (0: unlimited).
    pub max_entries: u8,
    /// Provider.
    pub provider: u16,
    /// Partition.
    pub partition: u16,
    /// Serial.
    pub serial: u32,
    /// Gate of the last event (0: none).
    pub gate: u16,
    /// Static or rotating.
    pub format: CodeFormat,
    /// Unix seconds of the last event (mint, scan, revoke).
    pub last_event_unix_s: u64,
    /// First scan (0: never).
    pub first_scan_unix_s: u64,
    /// Start of validity (0: unbounded).
    pub valid_from_unix_s: u64,
    /// End of validity (0: unbounded).
    pub valid_until_unix_s: u64,
}

const TICKET_INFO_LEN: usize = 4 + 2 + 2 + 4 + 2 + 1 + 1 + 8 * 4;

/// What a holder is shown of a ticket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum TicketStateName {
    /// Usable (within its window).
    Valid = 0,
    /// Spent.
    Used = 1,
    /// Revoked or transferred away.
    Revoked = 2,
    /// Past its validity, never spent.
    Expired = 3,
}

impl TicketStateName {
    /// `valid`, `used`, `revoked`, `expired`.
    pub fn name(self) -> &'static str {
        match self {
            TicketStateName::Valid => "valid",
            TicketStateName::Used => "used",
            TicketStateName::Revoked => "revoked",
            TicketStateName::Expired => "expired",
        }
    }

    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0 => TicketStateName::Valid,
            1 => TicketStateName::Used,
            2 => TicketStateName::Revoked,
            3 => TicketStateName::Expired,
            _ => return None,
        })
    }
}

/// Node counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct NodeStats {
    /// Tickets held: serials handed out, less those purged.
    pub tickets: u64,
    /// Gate requests answered (check-in, exit, undo, `checkin_as`).
    pub scans: u64,
    /// Of those, admitted.
    pub admitted: u64,
    /// Log records written.
    pub wal_records: u64,
    /// Group commits (fsyncs) done.
    pub wal_syncs: u64,
    /// fsync latency, median, microseconds.
    pub fsync_p50_us: u64,
    /// fsync latency, 99th percentile, microseconds.
    pub fsync_p99_us: u64,
    /// Open connections.
    pub connections: u64,
    /// Log position: every record below it is durable.
    pub durable_seq: u64,
    /// When the log syncs: [`sync_mode`] values.
    pub sync_mode: u8,
}

/// Values of [`NodeStats::sync_mode`].
pub mod sync_mode {
    /// The node keeps no log.
    pub const NO_LOG: u8 = 0;
    /// Answers after fdatasync.
    pub const ALWAYS: u8 = 1;
    /// fsync on a timer, answers at once.
    pub const BATCH: u8 = 2;
    /// No fsync.
    pub const NONE: u8 = 3;

    /// The mode's name as `--sync` spells it (`unknown` for a value this side does not know).
    pub fn name(v: u8) -> &'static str {
        match v {
            ALWAYS => "always",
            BATCH => "batch",
            NONE => "none",
            NO_LOG => "no log",
            _ => "unknown",
        }
    }
}

const STATS_LEN: usize = 9 * 8 + 1;

/// Most outcome counts one metrics frame carries.
pub const METRICS_OUTCOMES_MAX: usize = 32;

/// A node's outcome counts and latency histograms since it started (`metrics`). Rates and
/// recent percentiles come from two readings: see [`Histogram::since`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct NodeMetrics {
    /// Microseconds since the node started (its own monotonic clock: rates divide by this).
    pub uptime_us: u64,
    /// Requests read and not yet answered.
    pub inflight: u64,
    /// Answers to gate requests (check-in, exit, undo, `checkin_as`) by outcome: index =
    /// wire value (`OutcomeKind`), at most [`METRICS_OUTCOMES_MAX`].
    pub outcomes: Vec<u64>,
    /// The op whose latency follows (0: the node keeps none for the op asked).
    pub latency_op: u8,
    /// That op's latency, microseconds from the read that brought a request in to the
    /// write that carried its answer out (durability wait included).
    pub latency_us: Histogram,
    /// `fdatasync` latency of the log, microseconds (empty without a log).
    pub fsync_us: Histogram,
    /// Whether the node refuses changes because its log's disk is full (`disk_full`);
    /// `None` from a node older than this field.
    pub disk_full: Option<bool>,
    /// CPU time the node's process has used (user and system), microseconds; `None` from a
    /// node older than this field. Sent only after `disk_full`.
    pub cpu_us: Option<u64>,
    /// The node process's resident memory, bytes; `None` from a node older than this field.
    /// Sent only after `cpu_us`.
    pub rss_bytes: Option<u64>,
}

/// Fixed bytes of a metrics frame before its outcome counts.
const METRICS_HEAD_LEN: usize = 8 + 8 + 1;

/// What kind of change an event reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum EventKind {
    /// A scan, undo or revoke changed the ticket's state.
    State = 0,
    /// The ticket was minted as the successor of a transferred one.
    TransferredIn = 1,
    /// A gate's uploaded offline admit met the ticket already used, revoked or transferred:
    /// `gate` and `at_unix_s` are the offline admit's, `state` the ticket's (details from
    /// `conflicts`).
    Conflict = 2,
}

/// One ticket event from the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Event {
    /// Log position of the change.
    pub seq: u64,
    /// What kind of change.
    pub kind: EventKind,
    /// Partition of the ticket.
    pub partition: u16,
    /// Serial of the ticket.
    pub serial: u32,
    /// New state: `valid`, `used`, `revoked` (expiry is not an event).
    pub state: TicketStateName,
    /// Inside after the change.
    pub inside: bool,
    /// Entries counted.
    pub entries: u8,
    /// Gate of the change (0: an operator).
    pub gate: u16,
    /// Unix seconds of the change.
    pub at_unix_s: u64,
}

const EVENT_LEN: usize = 8 + 1 + 2 + 4 + 1 + 1 + 1 + 2 + 8;

/// Bytes of a rotating ticket's per-ticket key (an HMAC-SHA256 output).
pub const TICKET_KEY_LEN: usize = 32;

const TICKET_KEY_REPLY_LEN: usize = TICKET_KEY_LEN + 4;

/// One scan a gate decided offline, as it uploads it once its node is back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OfflineScan {
    /// The gate's scan id (a retry reuses it, so an upload is counted once).
    pub scan_id: u64,
    /// When the gate scanned the code, Unix milliseconds by the gate's clock.
    pub scanned_at_unix_ms: u64,
    /// When the gate last heard from its node before the scan, Unix seconds: how stale the
    /// replica it decided by was.
    pub last_online_unix_s: u64,
    /// An exit (true) or an entry (false).
    pub exit: bool,
    /// What the gate decided from its replica.
    pub decision: OutcomeKind,
    /// The code scanned.
    pub code: RawCode,
}

impl OfflineScan {
    /// The upload of a scan of `code`, with the gate's scan id, times and decision.
    pub fn new(
        code: &CodeBytes,
        scan_id: u64,
        scanned_at_unix_ms: u64,
        last_online_unix_s: u64,
        exit: bool,
        decision: OutcomeKind,
    ) -> Self {
        OfflineScan {
            scan_id,
            scanned_at_unix_ms,
            last_online_unix_s,
            exit,
            decision,
            code: RawCode::from(*code),
        }
    }
}

/// Bytes of an offline scan's fixed fields, before its code.
const OFFLINE_SCAN_HEAD_LEN: usize = 8 + 8 + 8 + 1 + 1;

/// A policy as a gate's replica needs it to decide a scan. Zero means "not set" for the
/// optional bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReplicaPolicy {
    /// The node's id of the policy (tickets name it).
    pub id: u32,
    /// Not valid before this Unix second (0: no bound).
    pub valid_from_unix_s: u64,
    /// Not valid after this Unix second (0: no bound).
    pub valid_until_unix_s: u64,
    /// Valid this long from the first scan, seconds (0: no bound).
    pub valid_for_s: u32,
    /// Entries allowed (0: unlimited).
    pub max_entries: u8,
    /// Entry and exit alternate.
    pub exits: bool,
    /// Its tickets' codes rotate.
    pub rotating: bool,
    /// Gates verify its rotating codes offline: each ticket's key comes as a
    /// [`ReplicaItem::RotatingKey`]. Sent as bit 1 of the rotating byte.
    pub offline_rotating: bool,
    /// Gates may not admit its tickets offline. Sent as bit 2 of the rotating byte.
    pub online_only: bool,
}

/// Bytes of a policy item after its tag.
const REPLICA_POLICY_LEN: usize = 4 + 8 + 8 + 4 + 1 + 1 + 1;

/// A ticket's state as the replica holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReplicaState {
    /// Partition of the ticket.
    pub partition: u16,
    /// Serial of the ticket.
    pub serial: u32,
    /// `valid`, `used`, `revoked`, `expired`.
    pub state: TicketStateName,
    /// Inside (entry/exit tickets).
    pub inside: bool,
    /// Entries counted.
    pub entries: u8,
    /// Gate of the last event (0: none, or an operator).
    pub gate: u16,
    /// Unix seconds of the last event.
    pub at_unix_s: u64,
    /// Unix seconds of the first scan (0: never).
    pub first_scan_unix_s: u64,
}

/// Bytes of a ticket's state on the wire.
const REPLICA_STATE_LEN: usize = 2 + 4 + 1 + 1 + 1 + 2 + 8 + 8;

/// One change a replica applies, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReplicaItem {
    /// A ticket new to the replica (minted, or a transfer's successor), or reloaded.
    Ticket {
        /// The ticket's fingerprint, as the node computes it.
        fingerprint: u64,
        /// The id of its policy (sent before, as a [`ReplicaItem::Policy`]).
        policy: u32,
        /// Its state.
        state: ReplicaState,
    },
    /// A known ticket's new state.
    State(ReplicaState),
    /// A policy (sent before any ticket that names it).
    Policy(ReplicaPolicy),
    /// Key `id` was retired: codes it signed are forged from now on.
    KeyRetired(u8),
    /// The per-ticket key of a rotating ticket whose policy lets gates verify its codes
    /// offline (sent after its ticket item): a secret that draws that ticket's codes.
    RotatingKey {
        /// Partition of the ticket.
        partition: u16,
        /// Serial of the ticket.
        serial: u32,
        /// The key (see [`Response::TicketKey`]).
        key: [u8; TICKET_KEY_LEN],
    },
    /// The node's rotation time step, seconds (in a first page).
    Rotation {
        /// Seconds per step.
        step_s: u32,
    },
}

/// Wire tags of [`ReplicaItem`]s.
mod replica_tag {
    /// [`super::ReplicaItem::Ticket`].
    pub const TICKET: u8 = 1;
    /// [`super::ReplicaItem::State`].
    pub const STATE: u8 = 2;
    /// [`super::ReplicaItem::Policy`].
    pub const POLICY: u8 = 3;
    /// [`super::ReplicaItem::KeyRetired`].
    pub const KEY_RETIRED: u8 = 4;
    /// [`super::ReplicaItem::RotatingKey`].
    pub const ROTATING_KEY: u8 = 5;
    /// [`super::ReplicaItem::Rotation`].
    pub const ROTATION: u8 = 6;
}

impl ReplicaItem {
    /// Bytes of the item on the wire, tag included.
    fn wire_len(&self) -> usize {
        1 + match self {
            ReplicaItem::Ticket { .. } => 8 + 4 + REPLICA_STATE_LEN,
            ReplicaItem::State(_) => REPLICA_STATE_LEN,
            ReplicaItem::Policy(_) => REPLICA_POLICY_LEN,
            ReplicaItem::KeyRetired(_) => 1,
            ReplicaItem::RotatingKey { .. } => 2 + 4 + TICKET_KEY_LEN,
            ReplicaItem::Rotation { .. } => 4,
        }
    }
}

/// Bytes of the largest replica item (a ticket).
pub const REPLICA_ITEM_MAX_LEN: usize = 1 + 8 + 4 + REPLICA_STATE_LEN;
/// Fixed bytes of a replica frame's payload before its items.
const REPLICA_HEAD_LEN: usize = 8 + 8 + 1 + 2 + 4 + 2;
/// Most items one replica frame carries: that many of the largest always fit in
/// [`FRAME_MAX_LEN`].
pub const REPLICA_FRAME_ITEMS_MAX: usize =
    (FRAME_MAX_LEN - BODY_HEADER_LEN - REPLICA_HEAD_LEN) / REPLICA_ITEM_MAX_LEN;

/// Replica changes: a page of tickets (`replica_page`) or a batch of the log's changes
/// (`replica_follow`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ReplicaBatch {
    /// The node's log position: every change below it is in the replica once this batch is
    /// applied, and following goes on from it.
    pub seq: u64,
    /// The node's clock, Unix seconds, when it sent the batch.
    pub now_unix_s: u64,
    /// Page cursor: more tickets follow this (partition, serial); `None` on the last page
    /// and in a stream.
    pub next: Option<(u16, u32)>,
    /// The changes, in order (at most [`REPLICA_FRAME_ITEMS_MAX`]).
    pub items: Vec<ReplicaItem>,
}

/// What two scans of one ticket, one of them decided offline, got wrong together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum ConflictKind {
    /// Two scans admitted a ticket that allowed only one of them.
    DoubleEntry = 1,
    /// A scan admitted a ticket revoked before it.
    AfterRevoke = 2,
    /// A scan admitted a ticket transferred to someone else before it.
    AfterTransfer = 3,
}

impl ConflictKind {
    /// `double_entry`, `after_revoke`, `after_transfer`.
    pub fn name(self) -> &'static str {
        match self {
            ConflictKind::DoubleEntry => "double_entry",
            ConflictKind::AfterRevoke => "after_revoke",
            ConflictKind::AfterTransfer => "after_transfer",
        }
    }

    /// The wire value back to a kind.
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => ConflictKind::DoubleEntry,
            2 => ConflictKind::AfterRevoke,
            3 => ConflictKind::AfterTransfer,
            _ => return None,
        })
    }
}

/// Where and when a scan happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ScanRef {
    /// The gate that scanned.
    pub gate: u16,
    /// Unix seconds of the scan.
    pub at_unix_s: u64,
}

/// Two scans of one ticket that cannot both have been right, found when offline scans came
/// in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Conflict {
    /// Its position in the node's conflict list.
    pub index: u64,
    /// What went wrong.
    pub kind: ConflictKind,
    /// The ticket's provider.
    pub provider: u16,
    /// The ticket's code.
    pub code: CodeBytes,
    /// The earlier scan (or the revoke or transfer).
    pub first: ScanRef,
    /// The later scan.
    pub second: ScanRef,
}

/// Bytes of a conflict's fixed fields, before its code.
const CONFLICT_HEAD_LEN: usize = 8 + 1 + 2 + (2 + 8) * 2 + 1;
/// Fixed bytes of a conflicts frame's payload before its items.
const CONFLICTS_HEAD_LEN: usize = 1 + 8 + 2;
/// Most conflicts one conflicts frame carries: that many, each with a code of the largest
/// length, always fit in [`FRAME_MAX_LEN`].
pub const CONFLICTS_FRAME_MAX: usize =
    (FRAME_MAX_LEN - BODY_HEADER_LEN - CONFLICTS_HEAD_LEN) / (CONFLICT_HEAD_LEN + CODE_MAX_LEN);

/// Per-request error codes (a request failed; the connection stays).
pub mod error_code {
    /// The certificate's role may not do this.
    pub const FORBIDDEN: u16 = 1;
    /// The request's values make no sense (a mint count of 0, say).
    pub const BAD_REQUEST: u16 = 2;
    /// No such ticket on this node.
    pub const NOT_FOUND: u16 = 3;
    /// The code is not genuine.
    pub const FORGED: u16 = 4;
    /// The ticket's state forbids it (transfer of a used ticket).
    pub const CONFLICT: u16 = 5;
    /// The node cannot now (partition full, shutting down).
    pub const UNAVAILABLE: u16 = 6;
    /// The log position asked for is no longer kept.
    pub const TRIMMED: u16 = 7;
    /// The gate spent its budget of forged and unknown codes: nothing is looked up for it
    /// until its cooldown ends (the error form of the `rate_limited` outcome).
    pub const RATE_LIMITED: u16 = 8;
    /// The node's disk is full: it makes no change it cannot log, until the operator frees
    /// space; nothing changed, so the same request succeeds then (the error form of the
    /// `disk_full` outcome).
    pub const DISK_FULL: u16 = 9;
    /// This node does not lead its shard (a standby, or a primary that lost its lease): the
    /// message is the leader's address when it is known, else empty.
    pub const NOT_LEADER: u16 = 10;

    /// The snake_case name of error code `code` (`disk_full`), or `error` for one this side
    /// does not know.
    pub const fn name(code: u16) -> &'static str {
        match code {
            FORBIDDEN => "forbidden",
            BAD_REQUEST => "bad_request",
            NOT_FOUND => "not_found",
            FORGED => "forged",
            CONFLICT => "conflict",
            UNAVAILABLE => "unavailable",
            TRIMMED => "trimmed",
            RATE_LIMITED => "rate_limited",
            DISK_FULL => "disk_full",
            NOT_LEADER => "not_leader",
            _ => "error",
        }
    }
}

/// The `from_seq` of a `replicate` request from a standby that holds nothing yet.
pub const SNAPSHOT_WANTED: u64 = u64::MAX;

/// The `from_seq` of a `replicate` request from a node that rejoins after a failover with
/// changes its old log held past the leader's: it sends them as `Records` frames, and the
/// leader applies the gate admits among them as offline admits and acknowledges each frame.
pub const SUFFIX_OFFERED: u64 = u64::MAX - 1;

/// A request, as a gate, the gateway or the CLI sends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Request {
    /// Check in a code with the gate's scan id.
    Checkin {
        /// The gate's scan id (a retry reuses it).
        scan_id: u64,
        /// The code.
        code: RawCode,
    },
    /// Check out.
    Exit {
        /// The gate's scan id.
        scan_id: u64,
        /// The code.
        code: RawCode,
    },
    /// Annul this gate's last admit.
    Undo {
        /// The gate's scan id.
        scan_id: u64,
        /// The code.
        code: RawCode,
    },
    /// A ticket's state.
    Status {
        /// The code.
        code: RawCode,
    },
    /// Mint tickets.
    Mint(MintSpec),
    /// Revoke a ticket.
    Revoke {
        /// The code.
        code: RawCode,
    },
    /// Transfer a ticket.
    Transfer {
        /// The code.
        code: RawCode,
    },
    /// Liveness.
    Ping,
    /// Node counters.
    Stats,
    /// Check in on behalf of gate `gate` of provider `provider`.
    CheckinAs {
        /// Gate id.
        gate: u16,
        /// The gate's provider.
        provider: u16,
        /// The gate's scan id.
        scan_id: u64,
        /// The code.
        code: RawCode,
    },
    /// Stream ticket events from log position `from_seq`.
    Subscribe {
        /// First log position wanted.
        from_seq: u64,
    },
    /// The per-ticket key of a rotating ticket, so the gateway can redraw its code each step.
    TicketKey {
        /// A rotating code of the ticket (any step).
        code: RawCode,
    },
    /// Outcome counts, and the latency histogram of request op `op`.
    Metrics {
        /// The request op whose latency is wanted (`op::CHECKIN`, say).
        op: u8,
    },
    /// Stops the subscription this stream started with request id `id`.
    Unsubscribe {
        /// The subscribe request's id.
        id: u32,
    },
    /// Drops every ticket of `partition` minted so far, of every provider, for good.
    Purge {
        /// The partition.
        partition: u16,
    },
    /// A page of the gate's provider's tickets after `after`, for its offline replica.
    ReplicaPage {
        /// Page cursor: tickets after this (partition, serial); `None`: from the first.
        after: Option<(u16, u32)>,
        /// Most tickets wanted (the node sends at most what fits one frame).
        limit: u32,
    },
    /// Stream the replica's changes from log position `from_seq` on, then live.
    ReplicaFollow {
        /// First log position wanted.
        from_seq: u64,
    },
    /// Upload a scan the gate decided offline; answered with an outcome.
    CheckinOffline(OfflineScan),
    /// A page of the node's conflict list.
    Conflicts {
        /// Only this provider's conflicts (`None`: every provider's).
        provider: Option<u16>,
        /// The list index to start from.
        after: u64,
    },
    /// Follow the log as a standby, from `from_seq` ([`SNAPSHOT_WANTED`]: a snapshot
    /// first); the stream then carries replication frames both ways.
    Replicate {
        /// First log position wanted ([`SNAPSHOT_WANTED`]: none held, a snapshot first).
        from_seq: u64,
        /// The newest epoch the standby has seen.
        epoch: u64,
    },
}

/// A response: it carries the request id of what it answers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Response {
    /// An outcome.
    Outcome(Outcome),
    /// A ticket's state.
    Ticket(TicketInfo),
    /// Codes (mint, transfer).
    Codes(Vec<CodeBytes>),
    /// Answer to ping.
    Pong,
    /// Node counters.
    Stats(NodeStats),
    /// Ticket events, in log order.
    Events(Vec<Event>),
    /// A rotating ticket's key: tag of step `s` = first 10 bytes of
    /// HMAC-SHA256(`key`, code bytes 0–9 ‖ low byte of `s`), `s = floor(unix_s / step_s)`.
    TicketKey {
        /// The per-ticket key (secret: it draws that ticket's codes).
        key: [u8; TICKET_KEY_LEN],
        /// The node's rotation time step, seconds.
        step_s: u32,
    },
    /// Outcome counts and latency histograms.
    Metrics(NodeMetrics),
    /// What a purge dropped.
    Purged {
        /// Tickets dropped.
        tickets: u64,
        /// Every serial of the partition below this is purged; its next ticket gets this
        /// serial or a later one.
        below: u64,
    },
    /// Replica changes: a page of tickets, or one batch of a `replica_follow` stream.
    Replica(ReplicaBatch),
    /// A page of conflicts.
    Conflicts {
        /// The conflicts, in list order (at most [`CONFLICTS_FRAME_MAX`]).
        items: Vec<Conflict>,
        /// The list index to ask from for the next page; `None`: this is the last.
        next: Option<u64>,
    },
    /// The request failed; nothing changed.
    Error {
        /// One of [`error_code`].
        code: u16,
        /// What went wrong, for people (at most [`ERROR_MESSAGE_MAX`] bytes).
        message: String,
    },
}

/// Reads fixed-size fields off a body, refusing to run past its end.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    #[inline]
    fn take(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        if self.buf.len() < n {
            return Err(FrameError::Malformed("payload shorter than its op needs"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    #[inline]
    fn u8(&mut self) -> Result<u8, FrameError> {
        Ok(self.take(1)?[0])
    }

    #[inline]
    fn u16(&mut self) -> Result<u16, FrameError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2")))
    }

    #[inline]
    fn u32(&mut self) -> Result<u32, FrameError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }

    #[inline]
    fn u64(&mut self) -> Result<u64, FrameError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }

    fn bool(&mut self) -> Result<bool, FrameError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(FrameError::Malformed("flag byte not 0 or 1")),
        }
    }

    /// The rest of the body as a code.
    #[inline]
    fn code_rest(&mut self) -> Result<RawCode, FrameError> {
        let rest = std::mem::take(&mut self.buf);
        RawCode::new(rest).ok_or(FrameError::Malformed("code must be 1 to 21 bytes"))
    }

    /// A histogram: sum u64, bucket count u16, then (bucket u16, count u64) ascending.
    fn histogram(&mut self) -> Result<Histogram, FrameError> {
        let sum = self.u64()?;
        let n = self.u16()? as usize;
        if n > HISTOGRAM_BUCKETS {
            return Err(FrameError::Malformed("too many histogram buckets"));
        }
        let mut buckets = Vec::with_capacity(n.min(self.buf.len() / 10));
        let mut next = 0usize;
        for _ in 0..n {
            let (i, count) = (self.u16()?, self.u64()?);
            if (i as usize) < next || i as usize >= HISTOGRAM_BUCKETS {
                return Err(FrameError::Malformed(
                    "histogram buckets out of order or range",
                ));
            }
            next = i as usize + 1;
            buckets.push((i, count));
        }
        Ok(Histogram { sum, buckets })
    }

    /// An optional value: a flag byte, then the value, all zero when absent (so that each
    /// value has one encoding).
    fn optional<T: Default + PartialEq>(
        &mut self,
        read: impl FnOnce(&mut Self) -> Result<T, FrameError>,
    ) -> Result<Option<T>, FrameError> {
        let present = self.bool()?;
        let value = read(self)?;
        match present {
            true => Ok(Some(value)),
            false if value == T::default() => Ok(None),
            false => Err(FrameError::Malformed("absent value not zero")),
        }
    }

    /// A page cursor: flag u8, partition u16, serial u32.
    fn cursor(&mut self) -> Result<Option<(u16, u32)>, FrameError> {
        self.optional(|r| Ok((r.u16()?, r.u32()?)))
    }

    fn outcome_kind(&mut self) -> Result<OutcomeKind, FrameError> {
        OutcomeKind::from_u8(self.u8()?).ok_or(FrameError::Malformed("unknown outcome kind"))
    }

    fn ticket_state(&mut self) -> Result<TicketStateName, FrameError> {
        TicketStateName::from_u8(self.u8()?).ok_or(FrameError::Malformed("unknown ticket state"))
    }

    /// An offline scan: its fixed fields, then its code as the rest of the body.
    fn offline_scan(&mut self) -> Result<OfflineScan, FrameError> {
        Ok(OfflineScan {
            scan_id: self.u64()?,
            scanned_at_unix_ms: self.u64()?,
            last_online_unix_s: self.u64()?,
            exit: self.bool()?,
            decision: self.outcome_kind()?,
            code: self.code_rest()?,
        })
    }

    fn replica_state(&mut self) -> Result<ReplicaState, FrameError> {
        Ok(ReplicaState {
            partition: self.u16()?,
            serial: self.u32()?,
            state: self.ticket_state()?,
            inside: self.bool()?,
            entries: self.u8()?,
            gate: self.u16()?,
            at_unix_s: self.u64()?,
            first_scan_unix_s: self.u64()?,
        })
    }

    fn replica_policy(&mut self) -> Result<ReplicaPolicy, FrameError> {
        Ok(ReplicaPolicy {
            id: self.u32()?,
            valid_from_unix_s: self.u64()?,
            valid_until_unix_s: self.u64()?,
            valid_for_s: self.u32()?,
            max_entries: self.u8()?,
            exits: self.bool()?,
            rotating: false,
            offline_rotating: false,
            online_only: false,
        })
        .and_then(|mut p| {
            let b = self.u8()?;
            // Offline verification of rotating codes needs rotating codes.
            if b > 7 || b & 3 == 2 {
                return Err(FrameError::Malformed("replica policy's rotating byte"));
            }
            (p.rotating, p.offline_rotating, p.online_only) = (b & 1 != 0, b & 2 != 0, b & 4 != 0);
            Ok(p)
        })
    }

    fn replica_item(&mut self) -> Result<ReplicaItem, FrameError> {
        Ok(match self.u8()? {
            replica_tag::TICKET => ReplicaItem::Ticket {
                fingerprint: self.u64()?,
                policy: self.u32()?,
                state: self.replica_state()?,
            },
            replica_tag::STATE => ReplicaItem::State(self.replica_state()?),
            replica_tag::POLICY => ReplicaItem::Policy(self.replica_policy()?),
            replica_tag::KEY_RETIRED => ReplicaItem::KeyRetired(self.u8()?),
            replica_tag::ROTATING_KEY => ReplicaItem::RotatingKey {
                partition: self.u16()?,
                serial: self.u32()?,
                key: self.take(TICKET_KEY_LEN)?.try_into().expect("32 bytes"),
            },
            replica_tag::ROTATION => ReplicaItem::Rotation {
                step_s: self.u32()?,
            },
            _ => return Err(FrameError::Malformed("unknown replica item")),
        })
    }

    /// A replica batch: at most [`REPLICA_FRAME_ITEMS_MAX`] items, each read off the body
    /// (so the count cannot make it allocate more than the body holds).
    fn replica_batch(&mut self) -> Result<ReplicaBatch, FrameError> {
        let (seq, now_unix_s, next) = (self.u64()?, self.u64()?, self.cursor()?);
        let n = self.u16()? as usize;
        if n > REPLICA_FRAME_ITEMS_MAX {
            return Err(FrameError::Malformed("too many replica items"));
        }
        // The smallest item (a retired key) takes 2 bytes.
        let mut items = Vec::with_capacity(n.min(self.buf.len() / 2));
        for _ in 0..n {
            items.push(self.replica_item()?);
        }
        Ok(ReplicaBatch {
            seq,
            now_unix_s,
            next,
            items,
        })
    }

    fn scan_ref(&mut self) -> Result<ScanRef, FrameError> {
        Ok(ScanRef {
            gate: self.u16()?,
            at_unix_s: self.u64()?,
        })
    }

    fn conflict(&mut self) -> Result<Conflict, FrameError> {
        let index = self.u64()?;
        let kind = ConflictKind::from_u8(self.u8()?)
            .ok_or(FrameError::Malformed("unknown conflict kind"))?;
        let (provider, first, second) = (self.u16()?, self.scan_ref()?, self.scan_ref()?);
        let len = self.u8()? as usize;
        let code = CodeBytes::from_slice(self.take(len)?)
            .map_err(|_| FrameError::Malformed("not a code"))?;
        Ok(Conflict {
            index,
            kind,
            provider,
            code,
            first,
            second,
        })
    }

    /// A page of conflicts: at most [`CONFLICTS_FRAME_MAX`], and the next page's index.
    fn conflicts(&mut self) -> Result<Response, FrameError> {
        let next = self.optional(Reader::u64)?;
        let n = self.u16()? as usize;
        if n > CONFLICTS_FRAME_MAX {
            return Err(FrameError::Malformed("too many conflicts"));
        }
        let mut items = Vec::with_capacity(n.min(self.buf.len() / CONFLICT_HEAD_LEN));
        for _ in 0..n {
            items.push(self.conflict()?);
        }
        Ok(Response::Conflicts { items, next })
    }

    fn end(&self) -> Result<(), FrameError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(FrameError::Malformed("bytes after the payload"))
        }
    }
}

/// Splits a body into op, request id and payload.
#[inline]
fn body_parts(body: &[u8]) -> Result<(u8, u32, Reader<'_>), FrameError> {
    if body.len() < BODY_HEADER_LEN {
        return Err(FrameError::Malformed(
            "frame shorter than op and request id",
        ));
    }
    let op = body[0];
    let id = u32::from_le_bytes(body[1..5].try_into().expect("4"));
    Ok((op, id, Reader { buf: &body[5..] }))
}

fn format_from_u8(v: u8) -> Result<CodeFormat, FrameError> {
    match v {
        1 => Ok(CodeFormat::Static),
        2 => Ok(CodeFormat::Rotating),
        _ => Err(FrameError::Malformed("code format not 1 or 2")),
    }
}

impl Request {
    /// The op byte.
    pub fn op(&self) -> u8 {
        match self {
            Request::Checkin { .. } => op::CHECKIN,
            Request::Exit { .. } => op::EXIT,
            Request::Undo { .. } => op::UNDO,
            Request::Status { .. } => op::STATUS,
            Request::Mint(_) => op::MINT,
            Request::Revoke { .. } => op::REVOKE,
            Request::Transfer { .. } => op::TRANSFER,
            Request::Ping => op::PING,
            Request::Stats => op::STATS,
            Request::CheckinAs { .. } => op::CHECKIN_AS,
            Request::Subscribe { .. } => op::SUBSCRIBE,
            Request::TicketKey { .. } => op::TICKET_KEY,
            Request::Metrics { .. } => op::METRICS,
            Request::Unsubscribe { .. } => op::UNSUBSCRIBE,
            Request::Purge { .. } => op::PURGE,
            Request::ReplicaPage { .. } => op::REPLICA_PAGE,
            Request::ReplicaFollow { .. } => op::REPLICA_FOLLOW,
            Request::CheckinOffline(_) => op::CHECKIN_OFFLINE,
            Request::Conflicts { .. } => op::CONFLICTS,
            Request::Replicate { .. } => op::REPLICATE,
        }
    }

    /// Whether only the admin role may send it.
    pub fn needs_admin(&self) -> bool {
        matches!(
            self,
            Request::Mint(_)
                | Request::Revoke { .. }
                | Request::Transfer { .. }
                | Request::CheckinAs { .. }
                | Request::Subscribe { .. }
                | Request::TicketKey { .. }
                | Request::Purge { .. }
                | Request::Conflicts { .. }
        )
    }

    /// Whether resending it after a lost connection is safe: gate scans carry scan ids (the
    /// node answers a retry with the original outcome), reads change nothing, revoking twice
    /// is revoking once (`ticket_key` is a read), and a repeated transfer is answered with the
    /// successor the first one made. Mint is not: a resend could make tickets twice. Nor is
    /// purge: a resend would drop the tickets minted in between, and answer with their count
    /// instead of the first one's.
    pub fn is_retry_safe(&self) -> bool {
        // A transfer is: the node answers a repeated one with the successor it made first.
        !matches!(self, Request::Mint(_) | Request::Purge { .. })
    }

    fn payload_len(&self) -> usize {
        match self {
            Request::Checkin { code, .. }
            | Request::Exit { code, .. }
            | Request::Undo { code, .. } => 8 + code.len as usize,
            Request::Status { code }
            | Request::Revoke { code }
            | Request::Transfer { code }
            | Request::TicketKey { code } => code.len as usize,
            Request::Mint(_) => MINT_SPEC_LEN,
            Request::Ping | Request::Stats => 0,
            Request::CheckinAs { code, .. } => 2 + 2 + 8 + code.len as usize,
            Request::Subscribe { .. } => 8,
            Request::Metrics { .. } => 1,
            Request::Unsubscribe { .. } => 4,
            Request::Purge { .. } => 2,
            Request::ReplicaPage { .. } => CURSOR_LEN + 4,
            Request::ReplicaFollow { .. } => 8,
            Request::CheckinOffline(scan) => OFFLINE_SCAN_HEAD_LEN + scan.code.len as usize,
            Request::Conflicts { .. } => 1 + 2 + 8,
            Request::Replicate { .. } => 16,
        }
    }

    /// Appends the frame of this request, with id `id`, to `out`.
    #[inline]
    pub fn encode(&self, id: u32, out: &mut impl BufMut) {
        put_header(out, self.op(), id, self.payload_len());
        match self {
            Request::Checkin { scan_id, code }
            | Request::Exit { scan_id, code }
            | Request::Undo { scan_id, code } => {
                out.put_u64_le(*scan_id);
                out.put_slice(code.as_bytes());
            }
            Request::Status { code }
            | Request::Revoke { code }
            | Request::Transfer { code }
            | Request::TicketKey { code } => {
                out.put_slice(code.as_bytes());
            }
            Request::Mint(m) => {
                out.put_u16_le(m.provider);
                out.put_u16_le(m.partition);
                out.put_u32_le(m.count);
                out.put_u8(m.format as u8);
                out.put_u8(m.max_entries);
                out.put_u8(
                    u8::from(m.records_exits)
                        | u8::from(m.offline_rotating) << 1
                        | u8::from(m.online_only) << 2,
                );
                out.put_u32_le(m.undo_window_s);
                out.put_u64_le(m.not_before_unix_s);
                out.put_u64_le(m.not_after_unix_s);
                out.put_u32_le(m.duration_from_first_scan_s);
            }
            Request::Ping | Request::Stats => {}
            Request::CheckinAs {
                gate,
                provider,
                scan_id,
                code,
            } => {
                out.put_u16_le(*gate);
                out.put_u16_le(*provider);
                out.put_u64_le(*scan_id);
                out.put_slice(code.as_bytes());
            }
            Request::Subscribe { from_seq } => out.put_u64_le(*from_seq),
            Request::Metrics { op } => out.put_u8(*op),
            Request::Unsubscribe { id } => out.put_u32_le(*id),
            Request::Purge { partition } => out.put_u16_le(*partition),
            Request::ReplicaPage { after, limit } => {
                put_cursor(out, *after);
                out.put_u32_le(*limit);
            }
            Request::ReplicaFollow { from_seq } => out.put_u64_le(*from_seq),
            Request::CheckinOffline(scan) => put_offline_scan(out, scan),
            Request::Conflicts { provider, after } => {
                out.put_u8(u8::from(provider.is_some()));
                out.put_u16_le(provider.unwrap_or(0));
                out.put_u64_le(*after);
            }
            Request::Replicate { from_seq, epoch } => {
                out.put_u64_le(*from_seq);
                out.put_u64_le(*epoch);
            }
        }
    }

    /// Pass two: parses one frame body (as returned by [`split_frame`]) into its request id
    /// and request.
    #[inline]
    pub fn decode(body: &[u8]) -> Result<(u32, Request), FrameError> {
        let (op, id, mut r) = body_parts(body)?;
        let req = match op {
            op::CHECKIN => Request::Checkin {
                scan_id: r.u64()?,
                code: r.code_rest()?,
            },
            op::EXIT => Request::Exit {
                scan_id: r.u64()?,
                code: r.code_rest()?,
            },
            op::UNDO => Request::Undo {
                scan_id: r.u64()?,
                code: r.code_rest()?,
            },
            op::STATUS => Request::Status {
                code: r.code_rest()?,
            },
            op::MINT => {
                let (provider, partition, count) = (r.u16()?, r.u16()?, r.u32()?);
                let (format, max_entries) = (format_from_u8(r.u8()?)?, r.u8()?);
                let flags = r.u8()?;
                if flags > 7 {
                    return Err(FrameError::Malformed("mint flags past bit 2"));
                }
                Request::Mint(MintSpec {
                    provider,
                    partition,
                    count,
                    format,
                    max_entries,
                    records_exits: flags & 1 != 0,
                    offline_rotating: flags & 2 != 0,
                    online_only: flags & 4 != 0,
                    undo_window_s: r.u32()?,
                    not_before_unix_s: r.u64()?,
                    not_after_unix_s: r.u64()?,
                    duration_from_first_scan_s: r.u32()?,
                })
            }
            op::REVOKE => Request::Revoke {
                code: r.code_rest()?,
            },
            op::TRANSFER => Request::Transfer {
                code: r.code_rest()?,
            },
            op::PING => Request::Ping,
            op::STATS => Request::Stats,
            op::CHECKIN_AS => Request::CheckinAs {
                gate: r.u16()?,
                provider: r.u16()?,
                scan_id: r.u64()?,
                code: r.code_rest()?,
            },
            op::SUBSCRIBE => Request::Subscribe { from_seq: r.u64()? },
            op::TICKET_KEY => Request::TicketKey {
                code: r.code_rest()?,
            },
            op::METRICS => Request::Metrics { op: r.u8()? },
            op::UNSUBSCRIBE => Request::Unsubscribe { id: r.u32()? },
            op::PURGE => Request::Purge {
                partition: r.u16()?,
            },
            op::REPLICA_PAGE => Request::ReplicaPage {
                after: r.cursor()?,
                limit: r.u32()?,
            },
            op::REPLICA_FOLLOW => Request::ReplicaFollow { from_seq: r.u64()? },
            op::CHECKIN_OFFLINE => Request::CheckinOffline(r.offline_scan()?),
            op::CONFLICTS => Request::Conflicts {
                provider: r.optional(Reader::u16)?,
                after: r.u64()?,
            },
            op::REPLICATE => Request::Replicate {
                from_seq: r.u64()?,
                epoch: r.u64()?,
            },
            other => return Err(FrameError::UnknownOp(other)),
        };
        r.end()?;
        Ok((id, req))
    }
}

/// Encodes an outcome frame straight from its parts: the node's hot path.
#[inline]
pub fn encode_outcome(id: u32, outcome: &Outcome, out: &mut impl BufMut) {
    put_header(out, op::OUTCOME, id, OUTCOME_LEN);
    out.put_u8(outcome.kind as u8);
    out.put_u8(outcome.entries);
    out.put_u16_le(outcome.gate);
    out.put_u64_le(outcome.at_unix_s);
}

const OUTCOME_LEN: usize = 12;
const PURGED_LEN: usize = 16;

impl Response {
    fn payload_len(&self) -> usize {
        match self {
            Response::Outcome(_) => OUTCOME_LEN,
            Response::Ticket(_) => TICKET_INFO_LEN,
            Response::Codes(codes) => {
                2 + codes.iter().map(|c| 1 + c.as_bytes().len()).sum::<usize>()
            }
            Response::Pong => 0,
            Response::Stats(_) => STATS_LEN,
            Response::Events(events) => 2 + events.len() * EVENT_LEN,
            Response::TicketKey { .. } => TICKET_KEY_REPLY_LEN,
            Response::Metrics(m) => {
                METRICS_HEAD_LEN
                    + 8 * m.outcomes.len()
                    + 1
                    + histogram_len(&m.latency_us)
                    + histogram_len(&m.fsync_us)
                    + usize::from(m.disk_full.is_some())
                    + match (m.disk_full, m.cpu_us, m.rss_bytes) {
                        (Some(_), Some(_), Some(_)) => 16,
                        (Some(_), Some(_), None) => 8,
                        _ => 0,
                    }
            }
            Response::Purged { .. } => PURGED_LEN,
            Response::Replica(b) => {
                REPLICA_HEAD_LEN + b.items.iter().map(ReplicaItem::wire_len).sum::<usize>()
            }
            Response::Conflicts { items, .. } => {
                CONFLICTS_HEAD_LEN
                    + items
                        .iter()
                        .map(|c| CONFLICT_HEAD_LEN + c.code.as_bytes().len())
                        .sum::<usize>()
            }
            Response::Error { message, .. } => 2 + 2 + error_message(message).len(),
        }
    }

    /// Appends the frame of this response, answering request `id`, to `out`. Panics if the
    /// response breaks a bound ([`MINT_FRAME_MAX`] codes, [`EVENTS_FRAME_MAX`] events,
    /// [`REPLICA_FRAME_ITEMS_MAX`] replica items, [`CONFLICTS_FRAME_MAX`] conflicts): the node
    /// splits before it encodes.
    pub fn encode(&self, id: u32, out: &mut impl BufMut) {
        let op = match self {
            Response::Outcome(o) => return encode_outcome(id, o, out),
            Response::Ticket(_) => op::TICKET,
            Response::Codes(codes) => {
                assert!(codes.len() <= MINT_FRAME_MAX as usize, "too many codes");
                op::CODES
            }
            Response::Pong => op::PONG,
            Response::Stats(_) => op::STATS_REPLY,
            Response::Events(events) => {
                assert!(events.len() <= EVENTS_FRAME_MAX, "too many events");
                op::EVENTS
            }
            Response::TicketKey { .. } => op::TICKET_KEY_REPLY,
            Response::Metrics(m) => {
                assert!(
                    m.outcomes.len() <= METRICS_OUTCOMES_MAX,
                    "too many outcome counts"
                );
                for h in [&m.latency_us, &m.fsync_us] {
                    assert!(h.buckets.len() <= HISTOGRAM_BUCKETS, "too many buckets");
                }
                op::METRICS_REPLY
            }
            Response::Purged { .. } => op::PURGED,
            Response::Replica(b) => {
                assert!(
                    b.items.len() <= REPLICA_FRAME_ITEMS_MAX,
                    "too many replica items"
                );
                op::REPLICA
            }
            Response::Conflicts { items, .. } => {
                assert!(items.len() <= CONFLICTS_FRAME_MAX, "too many conflicts");
                op::CONFLICTS_REPLY
            }
            Response::Error { .. } => op::ERROR,
        };
        put_header(out, op, id, self.payload_len());
        match self {
            Response::Outcome(_) | Response::Pong => {}
            Response::Ticket(t) => {
                out.put_u8(t.state as u8);
                out.put_u8(u8::from(t.inside));
                out.put_u8(t.entries);
                out.put_u8(t.max_entries);
                out.put_u16_le(t.provider);
                out.put_u16_le(t.partition);
                out.put_u32_le(t.serial);
                out.put_u16_le(t.gate);
                out.put_u8(t.format as u8);
                out.put_u8(0);
                out.put_u64_le(t.last_event_unix_s);
                out.put_u64_le(t.first_scan_unix_s);
                out.put_u64_le(t.valid_from_unix_s);
                out.put_u64_le(t.valid_until_unix_s);
            }
            Response::Codes(codes) => {
                out.put_u16_le(codes.len() as u16);
                for c in codes {
                    out.put_u8(c.as_bytes().len() as u8);
                    out.put_slice(c.as_bytes());
                }
            }
            Response::Stats(s) => {
                for v in [
                    s.tickets,
                    s.scans,
                    s.admitted,
                    s.wal_records,
                    s.wal_syncs,
                    s.fsync_p50_us,
                    s.fsync_p99_us,
                    s.connections,
                    s.durable_seq,
                ] {
                    out.put_u64_le(v);
                }
                out.put_u8(s.sync_mode);
            }
            Response::Events(events) => {
                out.put_u16_le(events.len() as u16);
                for e in events {
                    out.put_u64_le(e.seq);
                    out.put_u8(e.kind as u8);
                    out.put_u16_le(e.partition);
                    out.put_u32_le(e.serial);
                    out.put_u8(e.state as u8);
                    out.put_u8(u8::from(e.inside));
                    out.put_u8(e.entries);
                    out.put_u16_le(e.gate);
                    out.put_u64_le(e.at_unix_s);
                }
            }
            Response::TicketKey { key, step_s } => {
                out.put_slice(key);
                out.put_u32_le(*step_s);
            }
            Response::Metrics(m) => {
                out.put_u64_le(m.uptime_us);
                out.put_u64_le(m.inflight);
                out.put_u8(m.outcomes.len() as u8);
                for n in &m.outcomes {
                    out.put_u64_le(*n);
                }
                out.put_u8(m.latency_op);
                put_histogram(out, &m.latency_us);
                put_histogram(out, &m.fsync_us);
                if let Some(full) = m.disk_full {
                    out.put_u8(u8::from(full));
                    if let Some(cpu) = m.cpu_us {
                        out.put_u64_le(cpu);
                        if let Some(rss) = m.rss_bytes {
                            out.put_u64_le(rss);
                        }
                    }
                }
            }
            Response::Purged { tickets, below } => {
                out.put_u64_le(*tickets);
                out.put_u64_le(*below);
            }
            Response::Replica(b) => put_replica_batch(out, b),
            Response::Conflicts { items, next } => {
                out.put_u8(u8::from(next.is_some()));
                out.put_u64_le(next.unwrap_or(0));
                out.put_u16_le(items.len() as u16);
                for c in items {
                    put_conflict(out, c);
                }
            }
            Response::Error { code, message } => {
                let m = error_message(message);
                out.put_u16_le(*code);
                out.put_u16_le(m.len() as u16);
                out.put_slice(m.as_bytes());
            }
        }
    }

    /// Pass two: parses one frame body into its request id and response.
    pub fn decode(body: &[u8]) -> Result<(u32, Response), FrameError> {
        let (op, id, mut r) = body_parts(body)?;
        let resp = match op {
            op::OUTCOME => {
                let kind = OutcomeKind::from_u8(r.u8()?)
                    .ok_or(FrameError::Malformed("unknown outcome kind"))?;
                Response::Outcome(Outcome {
                    kind,
                    entries: r.u8()?,
                    gate: r.u16()?,
                    at_unix_s: r.u64()?,
                })
            }
            op::TICKET => {
                let state = TicketStateName::from_u8(r.u8()?)
                    .ok_or(FrameError::Malformed("unknown ticket state"))?;
                let (inside, entries, max_entries) = (r.bool()?, r.u8()?, r.u8()?);
                let (provider, partition, serial, gate) = (r.u16()?, r.u16()?, r.u32()?, r.u16()?);
                let format = format_from_u8(r.u8()?)?;
                if r.u8()? != 0 {
                    return Err(FrameError::Malformed("padding byte not 0"));
                }
                let t = TicketInfo {
                    state,
                    inside,
                    entries,
                    max_entries,
                    provider,
                    partition,
                    serial,
                    gate,
                    format,
                    last_event_unix_s: r.u64()?,
                    first_scan_unix_s: r.u64()?,
                    valid_from_unix_s: r.u64()?,
                    valid_until_unix_s: r.u64()?,
                };
                Response::Ticket(t)
            }
            op::CODES => {
                let n = r.u16()? as usize;
                if n > MINT_FRAME_MAX as usize {
                    return Err(FrameError::Malformed("too many codes"));
                }
                let mut codes = Vec::with_capacity(n);
                for _ in 0..n {
                    let len = r.u8()? as usize;
                    let code = CodeBytes::from_slice(r.take(len)?)
                        .map_err(|_| FrameError::Malformed("not a code"))?;
                    codes.push(code);
                }
                Response::Codes(codes)
            }
            op::PONG => Response::Pong,
            op::STATS_REPLY => Response::Stats(NodeStats {
                tickets: r.u64()?,
                scans: r.u64()?,
                admitted: r.u64()?,
                wal_records: r.u64()?,
                wal_syncs: r.u64()?,
                fsync_p50_us: r.u64()?,
                fsync_p99_us: r.u64()?,
                connections: r.u64()?,
                durable_seq: r.u64()?,
                sync_mode: r.u8()?,
            }),
            op::EVENTS => {
                let n = r.u16()? as usize;
                if n > EVENTS_FRAME_MAX {
                    return Err(FrameError::Malformed("too many events"));
                }
                let mut events = Vec::with_capacity(n);
                for _ in 0..n {
                    let seq = r.u64()?;
                    let kind = match r.u8()? {
                        0 => EventKind::State,
                        1 => EventKind::TransferredIn,
                        2 => EventKind::Conflict,
                        _ => return Err(FrameError::Malformed("unknown event kind")),
                    };
                    events.push(Event {
                        seq,
                        kind,
                        partition: r.u16()?,
                        serial: r.u32()?,
                        state: TicketStateName::from_u8(r.u8()?)
                            .ok_or(FrameError::Malformed("unknown ticket state"))?,
                        inside: r.bool()?,
                        entries: r.u8()?,
                        gate: r.u16()?,
                        at_unix_s: r.u64()?,
                    });
                }
                Response::Events(events)
            }
            op::TICKET_KEY_REPLY => Response::TicketKey {
                key: r.take(TICKET_KEY_LEN)?.try_into().expect("32"),
                step_s: r.u32()?,
            },
            op::METRICS_REPLY => {
                let (uptime_us, inflight) = (r.u64()?, r.u64()?);
                let n = r.u8()? as usize;
                if n > METRICS_OUTCOMES_MAX {
                    return Err(FrameError::Malformed("too many outcome counts"));
                }
                let mut outcomes = Vec::with_capacity(n);
                for _ in 0..n {
                    outcomes.push(r.u64()?);
                }
                let m = NodeMetrics {
                    uptime_us,
                    inflight,
                    outcomes,
                    latency_op: r.u8()?,
                    latency_us: r.histogram()?,
                    fsync_us: r.histogram()?,
                    // Appended later: absent from older nodes' answers.
                    disk_full: match r.buf.is_empty() {
                        true => None,
                        false => Some(r.bool()?),
                    },
                    cpu_us: match r.buf.len() >= 8 {
                        true => Some(r.u64()?),
                        false => None,
                    },
                    rss_bytes: match r.buf.len() >= 8 {
                        true => Some(r.u64()?),
                        false => None,
                    },
                };
                // Later nodes may append fields: what this side does not know, it skips.
                r.buf = &[];
                Response::Metrics(m)
            }
            op::PURGED => Response::Purged {
                tickets: r.u64()?,
                below: r.u64()?,
            },
            op::REPLICA => Response::Replica(r.replica_batch()?),
            op::CONFLICTS_REPLY => r.conflicts()?,
            op::ERROR => {
                let code = r.u16()?;
                let len = r.u16()? as usize;
                if len > ERROR_MESSAGE_MAX {
                    return Err(FrameError::Malformed("error message too long"));
                }
                let message = std::str::from_utf8(r.take(len)?)
                    .map_err(|_| FrameError::Malformed("error message not UTF-8"))?
                    .to_owned();
                Response::Error { code, message }
            }
            other => return Err(FrameError::UnknownOp(other)),
        };
        r.end()?;
        Ok((id, resp))
    }
}

/// A page cursor: flag u8, partition u16, serial u32 (zeros when absent).
fn put_cursor(out: &mut impl BufMut, cursor: Option<(u16, u32)>) {
    let (partition, serial) = cursor.unwrap_or_default();
    out.put_u8(u8::from(cursor.is_some()));
    out.put_u16_le(partition);
    out.put_u32_le(serial);
}

/// Bytes of a page cursor.
const CURSOR_LEN: usize = 1 + 2 + 4;

fn put_offline_scan(out: &mut impl BufMut, scan: &OfflineScan) {
    out.put_u64_le(scan.scan_id);
    out.put_u64_le(scan.scanned_at_unix_ms);
    out.put_u64_le(scan.last_online_unix_s);
    out.put_u8(u8::from(scan.exit));
    out.put_u8(scan.decision as u8);
    out.put_slice(scan.code.as_bytes());
}

fn put_replica_state(out: &mut impl BufMut, s: &ReplicaState) {
    out.put_u16_le(s.partition);
    out.put_u32_le(s.serial);
    out.put_u8(s.state as u8);
    out.put_u8(u8::from(s.inside));
    out.put_u8(s.entries);
    out.put_u16_le(s.gate);
    out.put_u64_le(s.at_unix_s);
    out.put_u64_le(s.first_scan_unix_s);
}

fn put_replica_policy(out: &mut impl BufMut, p: &ReplicaPolicy) {
    out.put_u32_le(p.id);
    out.put_u64_le(p.valid_from_unix_s);
    out.put_u64_le(p.valid_until_unix_s);
    out.put_u32_le(p.valid_for_s);
    out.put_u8(p.max_entries);
    out.put_u8(u8::from(p.exits));
    out.put_u8(
        u8::from(p.rotating)
            | u8::from(p.rotating && p.offline_rotating) << 1
            | u8::from(p.online_only) << 2,
    );
}

fn put_replica_item(out: &mut impl BufMut, item: &ReplicaItem) {
    match item {
        ReplicaItem::Ticket {
            fingerprint,
            policy,
            state,
        } => {
            out.put_u8(replica_tag::TICKET);
            out.put_u64_le(*fingerprint);
            out.put_u32_le(*policy);
            put_replica_state(out, state);
        }
        ReplicaItem::State(state) => {
            out.put_u8(replica_tag::STATE);
            put_replica_state(out, state);
        }
        ReplicaItem::Policy(policy) => {
            out.put_u8(replica_tag::POLICY);
            put_replica_policy(out, policy);
        }
        ReplicaItem::KeyRetired(id) => {
            out.put_u8(replica_tag::KEY_RETIRED);
            out.put_u8(*id);
        }
        ReplicaItem::RotatingKey {
            partition,
            serial,
            key,
        } => {
            out.put_u8(replica_tag::ROTATING_KEY);
            out.put_u16_le(*partition);
            out.put_u32_le(*serial);
            out.put_slice(key);
        }
        ReplicaItem::Rotation { step_s } => {
            out.put_u8(replica_tag::ROTATION);
            out.put_u32_le(*step_s);
        }
    }
}

fn put_replica_batch(out: &mut impl BufMut, b: &ReplicaBatch) {
    out.put_u64_le(b.seq);
    out.put_u64_le(b.now_unix_s);
    put_cursor(out, b.next);
    out.put_u16_le(b.items.len() as u16);
    for item in &b.items {
        put_replica_item(out, item);
    }
}

fn put_conflict(out: &mut impl BufMut, c: &Conflict) {
    out.put_u64_le(c.index);
    out.put_u8(c.kind as u8);
    out.put_u16_le(c.provider);
    for scan in [c.first, c.second] {
        out.put_u16_le(scan.gate);
        out.put_u64_le(scan.at_unix_s);
    }
    out.put_u8(c.code.as_bytes().len() as u8);
    out.put_slice(c.code.as_bytes());
}

// The largest replica and conflicts frames fit the frame bound, and their counts fit u16.
const _: () = assert!(
    BODY_HEADER_LEN + REPLICA_HEAD_LEN + REPLICA_FRAME_ITEMS_MAX * REPLICA_ITEM_MAX_LEN
        <= FRAME_MAX_LEN
);
const _: () = assert!(
    BODY_HEADER_LEN + CONFLICTS_HEAD_LEN + CONFLICTS_FRAME_MAX * (CONFLICT_HEAD_LEN + CODE_MAX_LEN)
        <= FRAME_MAX_LEN
);
const _: () = assert!(REPLICA_FRAME_ITEMS_MAX <= u16::MAX as usize);
const _: () = assert!(CONFLICTS_FRAME_MAX <= u16::MAX as usize);

fn histogram_len(h: &Histogram) -> usize {
    8 + 2 + 10 * h.buckets.len()
}

fn put_histogram(out: &mut impl BufMut, h: &Histogram) {
    out.put_u64_le(h.sum);
    out.put_u16_le(h.buckets.len() as u16);
    for &(i, n) in &h.buckets {
        out.put_u16_le(i);
        out.put_u64_le(n);
    }
}

// The largest metrics frame fits the frame bound.
const _: () = assert!(
    BODY_HEADER_LEN
        + METRICS_HEAD_LEN
        + 8 * METRICS_OUTCOMES_MAX
        + 1
        + 2 * (8 + 2 + 10 * HISTOGRAM_BUCKETS)
        <= FRAME_MAX_LEN
);

/// `message` cut to at most [`ERROR_MESSAGE_MAX`] bytes on a character boundary.
fn error_message(message: &str) -> &str {
    if message.len() <= ERROR_MESSAGE_MAX {
        return message;
    }
    let mut end = ERROR_MESSAGE_MAX;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    &message[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_frame(req: &Request) -> Vec<u8> {
        let mut out = Vec::new();
        req.encode(7, &mut out);
        out
    }

    #[test]
    fn checkin_frame_is_the_documented_size_and_roundtrips() {
        let code = RawCode::new(&[1; 20]).unwrap();
        let req = Request::Checkin { scan_id: 9, code };
        let bytes = one_frame(&req);
        assert_eq!(bytes.len(), CHECKIN_FRAME_LEN);
        let (n, body) = split_frame(&bytes).unwrap().unwrap();
        assert_eq!(n, bytes.len());
        assert_eq!(Request::decode(body).unwrap(), (7, req));
    }

    #[test]
    fn every_prefix_of_a_frame_asks_for_more() {
        let bytes = one_frame(&Request::Subscribe { from_seq: 1 << 40 });
        for cut in 0..bytes.len() {
            assert_eq!(split_frame(&bytes[..cut]).unwrap(), None, "cut at {cut}");
        }
    }

    #[test]
    fn oversized_and_non_minimal_lengths_are_refused_before_the_body() {
        // 32 KiB + 1 in three bytes.
        let len = FRAME_MAX_LEN + 1;
        let prefix = [
            (len as u8) | 0x80,
            ((len >> 7) as u8) | 0x80,
            (len >> 14) as u8,
        ];
        assert_eq!(split_frame(&prefix), Err(FrameError::TooLarge(len as u64)));
        assert!(matches!(
            split_frame(&[0xff, 0xff, 0xff, 0x7f]),
            Err(FrameError::TooLarge(_))
        ));
        assert!(matches!(
            split_frame(&[0x85, 0x00]),
            Err(FrameError::Malformed(_))
        ));
        assert!(matches!(
            split_frame(&[2, 1, 0]),
            Err(FrameError::Malformed(_))
        ));
    }

    #[test]
    fn trailing_bytes_unknown_ops_and_bad_flags_are_malformed() {
        let mut bytes = one_frame(&Request::Ping);
        bytes[0] += 1;
        bytes.push(0);
        let (_, body) = split_frame(&bytes).unwrap().unwrap();
        assert!(matches!(
            Request::decode(body),
            Err(FrameError::Malformed(_))
        ));
        let body = [0x7e, 0, 0, 0, 0];
        assert_eq!(Request::decode(&body), Err(FrameError::UnknownOp(0x7e)));
        // A response op sent as a request is unknown to the node.
        assert_eq!(
            Request::decode(&[op::PONG, 0, 0, 0, 0]),
            Err(FrameError::UnknownOp(op::PONG))
        );
    }

    #[test]
    fn ticket_key_is_an_admin_read_of_the_documented_size() {
        let req = Request::TicketKey {
            code: RawCode::new(&[2; 21]).unwrap(),
        };
        assert!(req.needs_admin() && req.is_retry_safe());
        assert_eq!(one_frame(&req).len(), 1 + BODY_HEADER_LEN + 21);
        let resp = Response::TicketKey {
            key: [7; TICKET_KEY_LEN],
            step_s: 30,
        };
        let mut out = Vec::new();
        resp.encode(3, &mut out);
        // Length, op, id, 32 key bytes, step u32.
        assert_eq!(out.len(), 1 + BODY_HEADER_LEN + 36);
        assert_eq!(out[1], op::TICKET_KEY_REPLY);
        assert_eq!(&out[out.len() - 4..], &30u32.to_le_bytes());
        let (_, body) = split_frame(&out).unwrap().unwrap();
        assert_eq!(Response::decode(body).unwrap(), (3, resp));
        // One byte short of the key and step is malformed.
        let mut short = out[..out.len() - 1].to_vec();
        short[0] -= 1;
        let (_, body) = split_frame(&short).unwrap().unwrap();
        assert!(matches!(
            Response::decode(body),
            Err(FrameError::Malformed(_))
        ));
    }

    /// A purge is an admin request that is never resent, 8 bytes with its partition, and
    /// its answer carries two counts (docs/FORMAT.md §9).
    #[test]
    fn purge_is_an_admin_request_never_resent_of_the_documented_size() {
        let req = Request::Purge { partition: 0xFFFF };
        assert!(req.needs_admin() && !req.is_retry_safe());
        assert_eq!(op::name(op::PURGE), "purge");
        let bytes = one_frame(&req);
        assert_eq!(bytes, [7, op::PURGE, 7, 0, 0, 0, 0xFF, 0xFF]);
        let resp = Response::Purged {
            tickets: 3,
            below: 1 << 32,
        };
        let mut out = Vec::new();
        resp.encode(7, &mut out);
        assert_eq!(out.len(), 1 + BODY_HEADER_LEN + 16);
        assert_eq!(out[1], op::PURGED);
        let (_, body) = split_frame(&out).unwrap().unwrap();
        assert_eq!(Response::decode(body).unwrap(), (7, resp));
    }

    #[test]
    fn metrics_skip_appended_fields_but_refuse_bad_buckets() {
        let m = NodeMetrics {
            uptime_us: 5,
            inflight: 1,
            outcomes: vec![3, 2, 0, 0, 0, 1],
            latency_op: op::CHECKIN,
            latency_us: Histogram {
                sum: 900,
                buckets: vec![(40, 2), (100, 1)],
            },
            fsync_us: Histogram::default(),
            disk_full: Some(false),
            cpu_us: None,
            rss_bytes: None,
        };
        let mut out = Vec::new();
        Response::Metrics(m.clone()).encode(9, &mut out);
        // An older node's answer ends before the disk-full flag: read as not said.
        let mut older = out.clone();
        older[0] -= 1;
        older.pop();
        let (_, body) = split_frame(&older).unwrap().unwrap();
        let said = |full| {
            Response::Metrics(NodeMetrics {
                disk_full: full,
                ..m.clone()
            })
        };
        // The CPU time follows the flag, and is read when there.
        let with_cpu = NodeMetrics {
            cpu_us: Some(123_456),
            rss_bytes: Some(9 << 20),
            ..m.clone()
        };
        let mut newer = Vec::new();
        Response::Metrics(with_cpu.clone()).encode(9, &mut newer);
        // Two u64 more (the frame's length prefix may grow a byte with them).
        assert!((out.len() + 16..=out.len() + 17).contains(&newer.len()));
        let (_, body_cpu) = split_frame(&newer).unwrap().unwrap();
        assert_eq!(
            Response::decode(body_cpu).unwrap(),
            (9, Response::Metrics(with_cpu))
        );
        assert_eq!(Response::decode(body).unwrap(), (9, said(None)));
        // A flag byte other than 0 or 1 is malformed.
        let mut bad = out.clone();
        *bad.last_mut().unwrap() = 2;
        let (_, body) = split_frame(&bad).unwrap().unwrap();
        assert!(matches!(
            Response::decode(body),
            Err(FrameError::Malformed(_))
        ));
        // A later node appends 3 bytes: this side still reads what it knows.
        let mut longer = out.clone();
        longer[0] += 3;
        longer.extend_from_slice(&[1, 2, 3]);
        let (_, body) = split_frame(&longer).unwrap().unwrap();
        assert_eq!(Response::decode(body).unwrap(), (9, Response::Metrics(m)));
        // Buckets out of order are malformed. The first latency bucket index sits after
        // head (17), outcomes (1 + 48), op (1) and sum and count (10).
        let at = 1 + BODY_HEADER_LEN + 17 + 48 + 1 + 10;
        assert_eq!(u16::from_le_bytes([out[at], out[at + 1]]), 40);
        out[at] = 200;
        let (_, body) = split_frame(&out).unwrap().unwrap();
        assert!(matches!(
            Response::decode(body),
            Err(FrameError::Malformed(_))
        ));
    }

    #[test]
    fn long_error_messages_are_cut_on_a_character_boundary() {
        let message = "é".repeat(ERROR_MESSAGE_MAX);
        let mut out = Vec::new();
        Response::Error { code: 2, message }.encode(1, &mut out);
        let (_, body) = split_frame(&out).unwrap().unwrap();
        let (_, Response::Error { message, .. }) = Response::decode(body).unwrap() else {
            panic!("not an error");
        };
        assert_eq!(message.len(), ERROR_MESSAGE_MAX);
    }

    /// A sample of every new replica item kind, for the size and truncation tests.
    fn sample_batch() -> ReplicaBatch {
        let state = ReplicaState {
            partition: 1,
            serial: 77,
            state: TicketStateName::Used,
            inside: true,
            entries: 2,
            gate: 9,
            at_unix_s: 1_750_000_000,
            first_scan_unix_s: 1_749_999_000,
        };
        ReplicaBatch {
            seq: 1 << 33,
            now_unix_s: 1_750_000_001,
            next: Some((1, 78)),
            items: vec![
                ReplicaItem::Policy(ReplicaPolicy {
                    id: 4,
                    valid_from_unix_s: 0,
                    valid_until_unix_s: 1_760_000_000,
                    valid_for_s: 86_400,
                    max_entries: 3,
                    exits: true,
                    rotating: false,
                    offline_rotating: false,
                    online_only: true,
                }),
                ReplicaItem::Ticket {
                    fingerprint: 0xDEAD_BEEF,
                    policy: 4,
                    state,
                },
                ReplicaItem::State(state),
                ReplicaItem::KeyRetired(2),
            ],
        }
    }

    fn sample_conflict(index: u64) -> Conflict {
        let mut code = [3u8; 21];
        code[0] = 2;
        Conflict {
            index,
            kind: ConflictKind::AfterTransfer,
            provider: 5,
            code: CodeBytes::from_slice(&code).unwrap(),
            first: ScanRef {
                gate: 1,
                at_unix_s: 1_750_000_000,
            },
            second: ScanRef {
                gate: 2,
                at_unix_s: 1_750_000_060,
            },
        }
    }

    fn response_frame(resp: &Response) -> Vec<u8> {
        let mut out = Vec::new();
        resp.encode(7, &mut out);
        out
    }

    /// The body of a frame, whose length prefix `split_frame` checks.
    fn body_of(frame: &[u8]) -> &[u8] {
        split_frame(frame).unwrap().unwrap().1
    }

    fn malformed(r: Result<impl std::fmt::Debug, FrameError>) -> bool {
        matches!(r, Err(FrameError::Malformed(_)))
    }

    /// The four replica and conflict ops follow purge, in the table `stile stat` reads; the
    /// gate's three are not admin-only (the node checks the gate role), conflicts is, and
    /// all four are resent after a lost connection.
    #[test]
    fn replica_ops_are_gate_requests_and_conflicts_an_admin_one() {
        let scan = OfflineScan::new(
            &CodeBytes::from_slice(&[1; 20]).unwrap(),
            1,
            2,
            3,
            false,
            OutcomeKind::Admitted,
        );
        let gate_ops = [
            (
                Request::ReplicaPage {
                    after: None,
                    limit: 10,
                },
                0x10,
                "replica_page",
            ),
            (
                Request::ReplicaFollow { from_seq: 1 },
                0x11,
                "replica_follow",
            ),
            (Request::CheckinOffline(scan), 0x12, "checkin_offline"),
        ];
        for (req, byte, name) in gate_ops {
            assert_eq!((req.op(), op::name(byte)), (byte, name));
            assert!(!req.needs_admin() && req.is_retry_safe(), "{name}");
        }
        let conflicts = Request::Conflicts {
            provider: Some(5),
            after: 0,
        };
        assert_eq!(conflicts.op(), 0x13);
        assert_eq!(op::by_name("conflicts"), Some(0x13));
        assert!(conflicts.needs_admin() && conflicts.is_retry_safe());
        let replicate = Request::Replicate {
            from_seq: SNAPSHOT_WANTED,
            epoch: 3,
        };
        assert_eq!(replicate.op(), 0x14);
        assert_eq!(op::by_name("replicate"), Some(0x14));
        assert_eq!(op::REQUEST_MAX, 0x14);
        assert_eq!(op::REQUESTS.last(), Some(&(0x14, "replicate")));
    }

    /// An offline check-in is its 26 fixed bytes and the code, like a check-in's; a flag
    /// other than 0/1, an outcome kind this side does not know, or no code is malformed.
    #[test]
    fn offline_checkin_is_the_documented_size_and_refuses_bad_fields() {
        let code = CodeBytes::from_slice(&[1; 20]).unwrap();
        let at_ms = 1_750_000_000_123;
        let scan = OfflineScan::new(&code, 9, at_ms, 1_749_999_000, true, OutcomeKind::Exited);
        let bytes = one_frame(&Request::CheckinOffline(scan));
        assert_eq!(bytes.len(), 1 + BODY_HEADER_LEN + 26 + 20);
        assert_eq!(scan.code.as_bytes(), code.as_bytes());
        assert_eq!(
            Request::decode(body_of(&bytes)).unwrap(),
            (7, Request::CheckinOffline(scan))
        );
        // Exit flag, then the decision, then the code.
        let exit_at = 1 + BODY_HEADER_LEN + 24;
        for (at, value) in [(exit_at, 2), (exit_at + 1, 14), (exit_at + 1, 0xFF)] {
            let mut bad = bytes.clone();
            bad[at] = value;
            assert!(malformed(Request::decode(body_of(&bad))), "{at} = {value}");
        }
        // Every cut that leaves no code byte is malformed.
        let body = body_of(&bytes);
        for cut in BODY_HEADER_LEN..=BODY_HEADER_LEN + 26 {
            assert!(malformed(Request::decode(&body[..cut])), "cut at {cut}");
        }
    }

    /// A cursor, provider or next index that is absent is all zeros on the wire, so each
    /// request and answer has one encoding: anything else is malformed.
    #[test]
    fn absent_cursors_providers_and_next_indexes_must_be_zero() {
        let page = one_frame(&Request::ReplicaPage {
            after: None,
            limit: 100,
        });
        assert_eq!(page.len(), 1 + BODY_HEADER_LEN + 11);
        let payload = 1 + BODY_HEADER_LEN;
        for (at, value) in [(payload, 2), (payload + 1, 1), (payload + 6, 1)] {
            let mut bad = page.clone();
            bad[at] = value;
            assert!(malformed(Request::decode(body_of(&bad))), "{at} = {value}");
        }
        let conflicts = one_frame(&Request::Conflicts {
            provider: None,
            after: 3,
        });
        assert_eq!(conflicts.len(), 1 + BODY_HEADER_LEN + 11);
        let mut bad = conflicts.clone();
        bad[payload + 2] = 1;
        assert!(malformed(Request::decode(body_of(&bad))));

        let mut batch = sample_batch();
        batch.next = None;
        let mut bad = response_frame(&Response::Replica(batch));
        // A 2-byte length prefix, the header, seq and now; then the cursor's flag,
        // partition and serial.
        bad[2 + BODY_HEADER_LEN + 16 + 3] = 1;
        assert!(malformed(Response::decode(body_of(&bad))));
        let mut bad = response_frame(&Response::Conflicts {
            items: vec![],
            next: None,
        });
        bad[payload + 1] = 1;
        assert!(malformed(Response::decode(body_of(&bad))));
    }

    /// Every prefix of a replica or conflicts body runs out before its count of items does:
    /// malformed, never a panic or a short answer.
    #[test]
    fn truncated_replica_and_conflicts_bodies_are_malformed() {
        let frames = [
            response_frame(&Response::Replica(sample_batch())),
            response_frame(&Response::Conflicts {
                items: vec![sample_conflict(0), sample_conflict(1)],
                next: Some(2),
            }),
        ];
        for frame in &frames {
            let body = body_of(frame);
            assert!(Response::decode(body).is_ok());
            for cut in 0..body.len() {
                assert!(malformed(Response::decode(&body[..cut])), "cut at {cut}");
            }
        }
        for req in [
            Request::ReplicaPage {
                after: Some((1, 2)),
                limit: 3,
            },
            Request::ReplicaFollow { from_seq: 4 },
            Request::Conflicts {
                provider: Some(5),
                after: 6,
            },
        ] {
            let frame = one_frame(&req);
            let body = body_of(&frame);
            for cut in 0..body.len() {
                assert!(
                    malformed(Request::decode(&body[..cut])),
                    "{req:?} cut at {cut}"
                );
            }
        }
    }

    /// An item tag, ticket state, flag, conflict kind or code this side does not know is
    /// malformed.
    #[test]
    fn garbage_replica_items_and_conflicts_are_malformed() {
        let replica = response_frame(&Response::Replica(sample_batch()));
        // Payload starts after the 2-byte length prefix and the header; items after 25 bytes.
        let items = 2 + BODY_HEADER_LEN + REPLICA_HEAD_LEN;
        let policy = items + 1;
        let ticket = policy + REPLICA_POLICY_LEN;
        let ticket_state = ticket + 1 + 8 + 4;
        for (at, value) in [
            (items, 0),            // policy tag → none
            (items, 5),            // policy tag → none
            (policy + 24 + 1, 2),  // policy's exits flag
            (policy + 24 + 2, 8),  // policy's rotating flags: past bit 2
            (policy + 24 + 2, 2),  // verified offline, yet not rotating
            (ticket_state + 6, 4), // the ticket's state
            (ticket_state + 7, 2), // its inside flag
        ] {
            let mut bad = replica.clone();
            bad[at] = value;
            assert!(malformed(Response::decode(body_of(&bad))), "{at} = {value}");
        }

        let conflicts = response_frame(&Response::Conflicts {
            items: vec![sample_conflict(0)],
            next: None,
        });
        let item = 1 + BODY_HEADER_LEN + CONFLICTS_HEAD_LEN;
        let code_len = item + CONFLICT_HEAD_LEN - 1;
        for (at, value) in [
            (item + 8, 0),     // kind
            (item + 8, 4),     // kind
            (code_len + 1, 1), // a rotating code's format byte says static
            (code_len + 1, 9), // no format
        ] {
            let mut bad = conflicts.clone();
            bad[at] = value;
            assert!(malformed(Response::decode(body_of(&bad))), "{at} = {value}");
        }
        // A code length that leaves bytes over, or runs past the end.
        for len in [20, 22, 0] {
            let mut bad = conflicts.clone();
            bad[code_len] = len;
            assert!(malformed(Response::decode(body_of(&bad))), "length {len}");
        }
    }

    /// The bounds hold: a frame of the most items, each of the largest kind, fits; a count
    /// above the bound is refused before any item is read, whatever the body holds.
    #[test]
    fn largest_replica_and_conflicts_frames_fit_and_larger_counts_are_refused() {
        // The bounds docs/FORMAT.md §9 gives.
        assert_eq!((REPLICA_FRAME_ITEMS_MAX, CONFLICTS_FRAME_MAX), (818, 617));
        let ticket = sample_batch().items[1];
        assert_eq!(ticket.wire_len(), REPLICA_ITEM_MAX_LEN);
        let batch = ReplicaBatch {
            items: vec![ticket; REPLICA_FRAME_ITEMS_MAX],
            ..sample_batch()
        };
        let frame = response_frame(&Response::Replica(batch.clone()));
        let (n, body) = split_frame(&frame).unwrap().unwrap();
        assert_eq!(n, frame.len());
        assert_eq!(
            Response::decode(body).unwrap(),
            (7, Response::Replica(batch))
        );

        let items = vec![sample_conflict(1); CONFLICTS_FRAME_MAX];
        let conflicts = Response::Conflicts { items, next: None };
        let frame = response_frame(&conflicts);
        assert_eq!(Response::decode(body_of(&frame)).unwrap(), (7, conflicts));

        let mut replica = vec![op::REPLICA, 7, 0, 0, 0];
        replica.extend_from_slice(&[0; 8 + 8 + 7]);
        replica.extend_from_slice(&(REPLICA_FRAME_ITEMS_MAX as u16 + 1).to_le_bytes());
        replica.extend_from_slice(&[4, 1].repeat(REPLICA_FRAME_ITEMS_MAX + 1));
        assert_eq!(
            Response::decode(&replica),
            Err(FrameError::Malformed("too many replica items"))
        );
        let mut conflicts = vec![op::CONFLICTS_REPLY, 7, 0, 0, 0];
        conflicts.extend_from_slice(&[0; 9]);
        conflicts.extend_from_slice(&u16::MAX.to_le_bytes());
        assert_eq!(
            Response::decode(&conflicts),
            Err(FrameError::Malformed("too many conflicts"))
        );
    }

    #[test]
    #[should_panic(expected = "too many replica items")]
    fn encoding_more_replica_items_than_a_frame_holds_panics() {
        let batch = ReplicaBatch {
            items: vec![ReplicaItem::KeyRetired(1); REPLICA_FRAME_ITEMS_MAX + 1],
            ..sample_batch()
        };
        response_frame(&Response::Replica(batch));
    }

    #[test]
    #[should_panic(expected = "too many conflicts")]
    fn encoding_more_conflicts_than_a_frame_holds_panics() {
        let items = vec![sample_conflict(0); CONFLICTS_FRAME_MAX + 1];
        response_frame(&Response::Conflicts { items, next: None });
    }

    #[test]
    fn conflict_kinds_have_wire_values_and_names() {
        for (v, name) in [
            (1, "double_entry"),
            (2, "after_revoke"),
            (3, "after_transfer"),
        ] {
            let kind = ConflictKind::from_u8(v).unwrap();
            assert_eq!((kind as u8, kind.name()), (v, name));
        }
        assert_eq!(ConflictKind::from_u8(0), None);
        assert_eq!(ConflictKind::from_u8(4), None);
    }

    mod roundtrip {
        use proptest::prelude::*;

        use super::super::*;

        fn raw_code() -> impl Strategy<Value = RawCode> {
            proptest::collection::vec(any::<u8>(), 1..=21).prop_map(|v| RawCode::new(&v).unwrap())
        }

        fn code() -> impl Strategy<Value = CodeBytes> {
            (any::<bool>(), any::<[u8; 21]>()).prop_map(|(rotating, mut b)| {
                let len = if rotating { 21 } else { 20 };
                b[0] = if rotating { 2 } else { 1 };
                CodeBytes::from_slice(&b[..len]).unwrap()
            })
        }

        fn format() -> impl Strategy<Value = CodeFormat> {
            prop_oneof![Just(CodeFormat::Static), Just(CodeFormat::Rotating)]
        }

        fn state() -> impl Strategy<Value = TicketStateName> {
            prop_oneof![
                Just(TicketStateName::Valid),
                Just(TicketStateName::Used),
                Just(TicketStateName::Revoked),
                Just(TicketStateName::Expired),
            ]
        }

        fn outcome_kind() -> impl Strategy<Value = OutcomeKind> {
            (0..OutcomeKind::ALL.len()).prop_map(|i| OutcomeKind::ALL[i])
        }

        fn offline_scan() -> impl Strategy<Value = OfflineScan> {
            (any::<[u64; 3]>(), any::<bool>(), outcome_kind(), raw_code()).prop_map(
                |(t, exit, decision, code)| OfflineScan {
                    scan_id: t[0],
                    scanned_at_unix_ms: t[1],
                    last_online_unix_s: t[2],
                    exit,
                    decision,
                    code,
                },
            )
        }

        fn request() -> impl Strategy<Value = Request> {
            prop_oneof![
                (any::<Option<(u16, u32)>>(), any::<u32>())
                    .prop_map(|(after, limit)| Request::ReplicaPage { after, limit }),
                any::<u64>().prop_map(|from_seq| Request::ReplicaFollow { from_seq }),
                (any::<u64>(), any::<u64>())
                    .prop_map(|(from_seq, epoch)| Request::Replicate { from_seq, epoch }),
                offline_scan().prop_map(Request::CheckinOffline),
                (any::<Option<u16>>(), any::<u64>())
                    .prop_map(|(provider, after)| Request::Conflicts { provider, after }),
                (any::<u64>(), raw_code())
                    .prop_map(|(scan_id, code)| Request::Checkin { scan_id, code }),
                (any::<u64>(), raw_code())
                    .prop_map(|(scan_id, code)| Request::Exit { scan_id, code }),
                (any::<u64>(), raw_code())
                    .prop_map(|(scan_id, code)| Request::Undo { scan_id, code }),
                raw_code().prop_map(|code| Request::Status { code }),
                raw_code().prop_map(|code| Request::Revoke { code }),
                raw_code().prop_map(|code| Request::Transfer { code }),
                Just(Request::Ping),
                Just(Request::Stats),
                (any::<u16>(), any::<u16>(), any::<u64>(), raw_code()).prop_map(
                    |(gate, provider, scan_id, code)| Request::CheckinAs {
                        gate,
                        provider,
                        scan_id,
                        code
                    }
                ),
                any::<u64>().prop_map(|from_seq| Request::Subscribe { from_seq }),
                raw_code().prop_map(|code| Request::TicketKey { code }),
                any::<u8>().prop_map(|op| Request::Metrics { op }),
                any::<u32>().prop_map(|id| Request::Unsubscribe { id }),
                any::<u16>().prop_map(|partition| Request::Purge { partition }),
                (
                    (
                        any::<u16>(),
                        any::<u16>(),
                        any::<u32>(),
                        format(),
                        any::<u8>(),
                        any::<bool>()
                    ),
                    (any::<u32>(), any::<u64>(), any::<u64>(), any::<u32>()),
                )
                    .prop_map(
                        |(
                            (provider, partition, count, format, max_entries, records_exits),
                            (
                                undo_window_s,
                                not_before_unix_s,
                                not_after_unix_s,
                                duration_from_first_scan_s,
                            ),
                        )| {
                            Request::Mint(MintSpec {
                                provider,
                                partition,
                                count,
                                format,
                                max_entries,
                                records_exits,
                                undo_window_s,
                                not_before_unix_s,
                                not_after_unix_s,
                                duration_from_first_scan_s,
                                offline_rotating: count % 2 == 1,
                                online_only: count % 3 == 1,
                            })
                        }
                    ),
            ]
        }

        fn event() -> impl Strategy<Value = Event> {
            (
                (
                    any::<u64>(),
                    any::<bool>(),
                    any::<u16>(),
                    any::<u32>(),
                    state(),
                ),
                (any::<bool>(), any::<u8>(), any::<u16>(), any::<u64>()),
            )
                .prop_map(
                    |((seq, t, partition, serial, state), (inside, entries, gate, at_unix_s))| {
                        Event {
                            seq,
                            kind: match (t, seq % 3) {
                                (true, 0) => EventKind::Conflict,
                                (true, _) => EventKind::TransferredIn,
                                (false, _) => EventKind::State,
                            },
                            partition,
                            serial,
                            state,
                            inside,
                            entries,
                            gate,
                            at_unix_s,
                        }
                    },
                )
        }

        fn replica_state() -> impl Strategy<Value = ReplicaState> {
            (
                (any::<u16>(), any::<u32>(), state(), any::<bool>()),
                (any::<u8>(), any::<u16>(), any::<u64>(), any::<u64>()),
            )
                .prop_map(
                    |(
                        (partition, serial, state, inside),
                        (entries, gate, at_unix_s, first_scan_unix_s),
                    )| ReplicaState {
                        partition,
                        serial,
                        state,
                        inside,
                        entries,
                        gate,
                        at_unix_s,
                        first_scan_unix_s,
                    },
                )
        }

        fn replica_policy() -> impl Strategy<Value = ReplicaPolicy> {
            (
                (any::<u32>(), any::<u64>(), any::<u64>(), any::<u32>()),
                (any::<u8>(), any::<bool>(), any::<bool>()),
            )
                .prop_map(
                    |((id, valid_from_unix_s, valid_until_unix_s, valid_for_s), (m, e, r))| {
                        ReplicaPolicy {
                            id,
                            valid_from_unix_s,
                            valid_until_unix_s,
                            valid_for_s,
                            max_entries: m,
                            exits: e,
                            rotating: r,
                            // Only a rotating policy can have it (its byte has one encoding).
                            offline_rotating: r && id % 2 == 1,
                            online_only: id % 3 == 1,
                        }
                    },
                )
        }

        fn replica_item() -> impl Strategy<Value = ReplicaItem> {
            prop_oneof![
                (any::<u64>(), any::<u32>(), replica_state()).prop_map(
                    |(fingerprint, policy, state)| ReplicaItem::Ticket {
                        fingerprint,
                        policy,
                        state
                    }
                ),
                replica_state().prop_map(ReplicaItem::State),
                (any::<u16>(), any::<u32>(), any::<[u8; 32]>()).prop_map(
                    |(partition, serial, key)| ReplicaItem::RotatingKey {
                        partition,
                        serial,
                        key
                    }
                ),
                any::<u32>().prop_map(|step_s| ReplicaItem::Rotation { step_s }),
                replica_policy().prop_map(ReplicaItem::Policy),
                any::<u8>().prop_map(ReplicaItem::KeyRetired),
            ]
        }

        fn replica_batch() -> impl Strategy<Value = ReplicaBatch> {
            (
                any::<u64>(),
                any::<u64>(),
                any::<Option<(u16, u32)>>(),
                proptest::collection::vec(replica_item(), 0..100),
            )
                .prop_map(|(seq, now_unix_s, next, items)| ReplicaBatch {
                    seq,
                    now_unix_s,
                    next,
                    items,
                })
        }

        fn conflict() -> impl Strategy<Value = Conflict> {
            (
                (any::<u64>(), 1u8..=3, any::<u16>(), code()),
                any::<[(u16, u64); 2]>(),
            )
                .prop_map(|((index, kind, provider, code), scans)| Conflict {
                    index,
                    kind: ConflictKind::from_u8(kind).unwrap(),
                    provider,
                    code,
                    first: ScanRef {
                        gate: scans[0].0,
                        at_unix_s: scans[0].1,
                    },
                    second: ScanRef {
                        gate: scans[1].0,
                        at_unix_s: scans[1].1,
                    },
                })
        }

        fn response() -> impl Strategy<Value = Response> {
            let outcome = (0u8..13, any::<u8>(), any::<u16>(), any::<u64>()).prop_map(
                |(k, entries, gate, at_unix_s)| {
                    Response::Outcome(Outcome {
                        kind: OutcomeKind::from_u8(k).unwrap(),
                        entries,
                        gate,
                        at_unix_s,
                    })
                },
            );
            let ticket = (
                (
                    state(),
                    any::<bool>(),
                    any::<u8>(),
                    any::<u8>(),
                    any::<u16>(),
                    any::<u16>(),
                ),
                (any::<u32>(), any::<u16>(), format(), any::<[u64; 4]>()),
            )
                .prop_map(
                    |(
                        (state, inside, entries, max_entries, provider, partition),
                        (serial, gate, format, t),
                    )| {
                        Response::Ticket(TicketInfo {
                            state,
                            inside,
                            entries,
                            max_entries,
                            provider,
                            partition,
                            serial,
                            gate,
                            format,
                            last_event_unix_s: t[0],
                            first_scan_unix_s: t[1],
                            valid_from_unix_s: t[2],
                            valid_until_unix_s: t[3],
                        })
                    },
                );
            let stats = (any::<[u64; 9]>(), any::<u8>()).prop_map(|(v, mode)| {
                Response::Stats(NodeStats {
                    tickets: v[0],
                    scans: v[1],
                    admitted: v[2],
                    wal_records: v[3],
                    wal_syncs: v[4],
                    fsync_p50_us: v[5],
                    fsync_p99_us: v[6],
                    connections: v[7],
                    durable_seq: v[8],
                    sync_mode: mode,
                })
            });
            let histogram = || {
                (
                    any::<u64>(),
                    proptest::collection::btree_map(
                        0..HISTOGRAM_BUCKETS as u16,
                        any::<u64>(),
                        0..40,
                    ),
                )
                    .prop_map(|(sum, b)| Histogram {
                        sum,
                        buckets: b.into_iter().collect(),
                    })
            };
            let metrics = (
                (any::<u64>(), any::<u64>(), any::<u8>()),
                proptest::collection::vec(any::<u64>(), 0..=METRICS_OUTCOMES_MAX),
                histogram(),
                histogram(),
                any::<Option<bool>>(),
                (any::<Option<u64>>(), any::<Option<u64>>()),
            )
                .prop_map(
                    |((uptime_us, inflight, latency_op), outcomes, l, f, disk_full, (cpu, rss))| {
                        Response::Metrics(NodeMetrics {
                            uptime_us,
                            inflight,
                            outcomes,
                            latency_op,
                            latency_us: l,
                            fsync_us: f,
                            disk_full,
                            // Sent only after the flag.
                            cpu_us: cpu.filter(|_| disk_full.is_some()),
                            rss_bytes: rss.filter(|_| disk_full.is_some() && cpu.is_some()),
                        })
                    },
                );
            prop_oneof![
                replica_batch().prop_map(Response::Replica),
                (
                    proptest::collection::vec(conflict(), 0..50),
                    any::<Option<u64>>()
                )
                    .prop_map(|(items, next)| Response::Conflicts { items, next }),
                outcome,
                ticket,
                metrics,
                proptest::collection::vec(code(), 0..200).prop_map(Response::Codes),
                Just(Response::Pong),
                stats,
                proptest::collection::vec(event(), 0..100).prop_map(Response::Events),
                (any::<[u8; TICKET_KEY_LEN]>(), any::<u32>())
                    .prop_map(|(key, step_s)| Response::TicketKey { key, step_s }),
                (any::<u64>(), any::<u64>())
                    .prop_map(|(tickets, below)| Response::Purged { tickets, below }),
                (any::<u16>(), ".{0,80}")
                    .prop_map(|(code, message)| Response::Error { code, message }),
            ]
        }

        /// The fuzz target's seed corpus, `fuzz/seeds/decode_frames/`.
        fn seeds() -> &'static [Vec<u8>] {
            static SEEDS: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
            SEEDS.get_or_init(|| {
                let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/seeds/decode_frames");
                let mut paths: Vec<_> = std::fs::read_dir(dir)
                    .expect("the fuzz seeds")
                    .map(|e| e.expect("a seed").path())
                    .collect();
                paths.sort();
                paths
                    .iter()
                    .map(|p| std::fs::read(p).expect("a seed"))
                    .collect()
            })
        }

        /// A frame around `body` (op, id and payload).
        fn frame_of(body: &[u8]) -> Vec<u8> {
            let mut len = body.len();
            let mut out = Vec::with_capacity(LEN_PREFIX_MAX + len);
            while len >= 0x80 {
                out.push((len as u8) | 0x80);
                len >>= 7;
            }
            out.push(len as u8);
            out.extend_from_slice(body);
            out
        }

        /// Every seed is a valid frame stream that decodes and re-encodes exactly, so the
        /// mutations start from messages of every kind.
        #[test]
        fn the_seeds_are_valid_frames() {
            assert!(seeds().len() >= 20, "{} seeds", seeds().len());
            for seed in seeds() {
                let (n, body) = split_frame(seed).unwrap().unwrap();
                assert!(n <= seed.len());
                assert!(
                    Request::decode(body).is_ok() || Response::decode(body).is_ok(),
                    "seed {seed:?} decodes as neither"
                );
                assert_canonical_stream(seed);
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(20_000))]

            /// The fuzz target's seeds (one valid frame of every op), mutated: bits flipped,
            /// bytes set, inserted and removed, the end cut, two seeds joined. Whatever still
            /// decodes must re-encode to its exact bytes, as the fuzz target checks; this runs
            /// the same check on stable Rust in every test run.
            #[test]
            fn mutated_seed_frames_decode_canonically(
                (first, second) in (0..seeds().len(), 0..seeds().len()),
                join in any::<bool>(),
                edits in proptest::collection::vec((any::<u16>(), 0u8..5, any::<u8>()), 1..6),
            ) {
                let mut bytes = seeds()[first].clone();
                if join {
                    bytes.extend_from_slice(&seeds()[second]);
                }
                for (at, kind, value) in edits {
                    let at = usize::from(at) % (bytes.len() + 1);
                    match kind {
                        0 if at < bytes.len() => bytes[at] ^= 1 << (value % 8),
                        1 if at < bytes.len() => bytes[at] = value,
                        2 => bytes.insert(at, value),
                        3 if at < bytes.len() => {
                            bytes.remove(at);
                        }
                        _ => bytes.truncate(at),
                    }
                }
                assert_canonical_stream(&bytes);
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            #[test]
            fn every_request_roundtrips(reqs in proptest::collection::vec((any::<u32>(), request()), 1..8)) {
                let mut bytes = Vec::new();
                for (id, r) in &reqs {
                    r.encode(*id, &mut bytes);
                }
                let mut at = 0;
                for want in &reqs {
                    let (n, body) = split_frame(&bytes[at..]).unwrap().unwrap();
                    prop_assert_eq!(&Request::decode(body).unwrap(), want);
                    at += n;
                }
                prop_assert_eq!(at, bytes.len());
            }

            #[test]
            fn every_response_roundtrips(id in any::<u32>(), resp in response()) {
                let mut bytes = Vec::new();
                resp.encode(id, &mut bytes);
                let (n, body) = split_frame(&bytes).unwrap().unwrap();
                prop_assert_eq!(n, bytes.len());
                prop_assert_eq!(Response::decode(body).unwrap(), (id, resp));
            }


            /// Any payload after a replica or conflict op decodes without a panic, and what
            /// decodes re-encodes to its bytes.
            #[test]
            fn any_payload_of_a_replica_op_decodes_canonically(
                op in proptest::sample::select(vec![
                    op::REPLICA_PAGE,
                    op::REPLICA_FOLLOW,
                    op::CHECKIN_OFFLINE,
                    op::CONFLICTS,
                    op::REPLICATE,
                    op::REPLICA,
                    op::CONFLICTS_REPLY,
                ]),
                payload in proptest::collection::vec(any::<u8>(), 0..64),
            ) {
                let mut body = vec![op, 1, 2, 3, 4];
                body.extend_from_slice(&payload);
                assert_canonical_stream(&frame_of(&body));
            }

            #[test]
            fn any_bytes_decode_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
                if let Ok(Some((_, body))) = split_frame(&bytes) {
                    let _ = Request::decode(body);
                    let _ = Response::decode(body);
                }
            }
        }
    }
}
