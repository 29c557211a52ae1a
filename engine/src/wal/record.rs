//! Log records and their framing, sans IO: bytes in, records out; records in, bytes out.
//!
//! Frame (all integers little endian):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | payload length `n` (1 ..= [`RECORD_MAX_LEN`]) |
//! | 4 | 8 | xxh3-64 of (sequence number ‖ payload) |
//! | 12 | 8 | sequence number (strictly increasing through the log; gaps allowed) |
//! | 20 | n | payload: record type (1 byte) and body |
//!
//! State records carry a ticket's new absolute state word, whose version orders a ticket's
//! records, so replay is idempotent and order-independent per ticket.
//!
//! Besides records, a segment of format 3 holds **durability marks** (payload type 9, then
//! a `u64`): the writer's statement, written at the start of the first write after a sync,
//! that every byte of the segment below that offset was synced. A mark is not a record: it
//! takes no number of its own (its sequence number field holds the next number to be
//! written, which the record after it may carry too), and replay and tails skip it.
//! Recovery uses marks to tell a power cut from corruption (see `segment.rs`).

use stile_protocol::CodeFormat;
use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::policy::{EntryRule, Policy, Validity};

/// Bytes of frame header before the payload.
pub const FRAME_HEADER_LEN: usize = 20;
/// Largest payload a record may have.
pub const RECORD_MAX_LEN: usize = 4 << 20;

/// One state change, as logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A policy added under id `id`.
    Policy {
        /// Its id (ids are dense and logged in order).
        id: u32,
        /// The rules.
        policy: Policy,
    },
    /// `count` tickets minted from serial `first` of `partition`, all with `policy`, `word`.
    Mint {
        /// Partition.
        partition: u16,
        /// First serial.
        first: u32,
        /// Number of tickets.
        count: u32,
        /// Their policy id.
        policy: u32,
        /// Their initial state word.
        word: u64,
    },
    /// A ticket's new state (check-in, exit, undo, revoke).
    State {
        /// Partition.
        partition: u16,
        /// Serial.
        serial: u32,
        /// New absolute state word (its version orders the ticket's records).
        word: u64,
        /// First-scan time (engine-epoch seconds; 0: not scanned).
        first_scan_e: u32,
        /// The gate scan that made the change, so a retry after a restart gets its answer.
        scan: Option<ScanTrace>,
    },
    /// Old ticket voided and its successor minted, in one record.
    Transfer {
        /// Partition of both tickets.
        partition: u16,
        /// Old ticket's serial.
        old_serial: u32,
        /// Old ticket's new (revoked) word.
        old_word: u64,
        /// New ticket's serial.
        new_serial: u32,
        /// New ticket's policy id.
        policy: u32,
        /// New ticket's word.
        new_word: u64,
        /// First-scan time carried over.
        first_scan_e: u32,
    },
    /// Imported codes minted from serial `first`, one per code, in order.
    Import {
        /// Partition.
        partition: u16,
        /// First serial.
        first: u32,
        /// Policy id.
        policy: u32,
        /// Initial word.
        word: u64,
        /// The codes.
        codes: Vec<String>,
    },
    /// Key ring change: key `id` now has status `status` (secrets live in the ring file).
    Key {
        /// Key id.
        id: u8,
        /// New status byte (see `KeyStatus`).
        status: u8,
    },
    /// An offline admit that met a ticket already used, revoked or transferred: both scans,
    /// for disputes. Its scan id raises the gate's upload mark.
    Conflict(ConflictRecord),
    /// Every ticket of `partition` with a serial below `below` dropped for good (`stile
    /// purge`); those serials are never minted again.
    Purge {
        /// Partition.
        partition: u16,
        /// Serials below this are purged (the partition's serials handed out at the time,
        /// or a step towards them).
        below: u64,
    },
}

const T_POLICY: u8 = 1;
const T_MINT: u8 = 2;
const T_STATE: u8 = 3;
const T_STATE_SCAN: u8 = 7;

/// The gate scan behind a state change: who asked, with which scan id, and what they were
/// told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanTrace {
    /// Gate id.
    pub gate: u16,
    /// The gate's scan id.
    pub scan_id: u64,
    /// The operation (`Op` as a byte).
    pub op: u8,
    /// The answer, packed as the scan memory packs it.
    pub answer: u64,
}
/// [`ScanTrace::op`] bit of a scan a gate decided offline and uploaded: its scan id raises
/// that gate's upload mark at replay.
pub const OP_OFFLINE: u8 = 0x80;

/// A conflict, as logged (see `crate::offline`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConflictRecord {
    /// `ConflictKind` as a byte.
    pub kind: u8,
    /// The ticket's provider.
    pub provider: u16,
    /// Partition.
    pub partition: u16,
    /// Serial.
    pub serial: u32,
    /// The earlier event's gate (0: an operator).
    pub first_gate: u16,
    /// The earlier event's time, engine-epoch seconds.
    pub first_at_e: u32,
    /// The offline admit's gate.
    pub second_gate: u16,
    /// The offline admit's time (as uploaded, clamped), engine-epoch seconds.
    pub second_at_e: u32,
    /// The offline admit's scan id.
    pub scan_id: u64,
}
const T_TRANSFER: u8 = 4;
const T_IMPORT: u8 = 5;
const T_KEY: u8 = 6;
const T_PURGE: u8 = 8;
const T_MARK: u8 = 9;
const T_CONFLICT: u8 = 10;

/// Bytes of a durability mark's frame: the header, the type byte and the offset.
pub const MARK_FRAME_LEN: usize = FRAME_HEADER_LEN + 9;

/// A frame's content: a record, or a durability mark.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A state change.
    Record(Record),
    /// Every byte of the segment below `synced_to` was synced when this was written.
    Mark {
        /// The segment's synced length, in bytes from its start.
        synced_to: u64,
    },
}

/// Appends a durability mark's frame to `out`: `seq` is the next number to be written,
/// `synced_to` the segment's synced length.
pub fn encode_mark(seq: u64, synced_to: u64, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME_HEADER_LEN]);
    out.push(T_MARK);
    out.extend_from_slice(&synced_to.to_le_bytes());
    let sum = checksum(seq, &out[start + FRAME_HEADER_LEN..]);
    out[start..start + 4].copy_from_slice(&9u32.to_le_bytes());
    out[start + 4..start + 12].copy_from_slice(&sum.to_le_bytes());
    out[start + 12..start + 20].copy_from_slice(&seq.to_le_bytes());
}

/// Decodes one frame from the front of `buf`, a record or a mark: what it holds, its
/// sequence number and its length. Checks the whole frame is present before parsing.
pub fn decode_frame(buf: &[u8]) -> Result<(Frame, u64, usize), DecodeError> {
    let (payload, seq, frame_len) = check_frame(buf)?;
    if payload[0] == T_MARK {
        let body: [u8; 8] = payload[1..]
            .try_into()
            .map_err(|_| DecodeError::BadPayload("a durability mark of the wrong length"))?;
        let synced_to = u64::from_le_bytes(body);
        return Ok((Frame::Mark { synced_to }, seq, frame_len));
    }
    let record = Reader(payload).record()?;
    Ok((Frame::Record(record), seq, frame_len))
}

/// The payload, sequence number and length of the whole frame at the front of `buf`, its
/// length and checksum checked.
fn check_frame(buf: &[u8]) -> Result<(&[u8], u64, usize), DecodeError> {
    if buf.len() < FRAME_HEADER_LEN {
        return Err(DecodeError::Incomplete);
    }
    let len = u32::from_le_bytes(buf[0..4].try_into().expect("4 bytes"));
    if len == 0 || len as usize > RECORD_MAX_LEN {
        return Err(DecodeError::BadLength(len));
    }
    let frame_len = FRAME_HEADER_LEN + len as usize;
    if buf.len() < frame_len {
        return Err(DecodeError::Incomplete);
    }
    let sum = u64::from_le_bytes(buf[4..12].try_into().expect("8 bytes"));
    let seq = u64::from_le_bytes(buf[12..20].try_into().expect("8 bytes"));
    let payload = &buf[FRAME_HEADER_LEN..frame_len];
    if checksum(seq, payload) != sum {
        return Err(DecodeError::BadChecksum);
    }
    Ok((payload, seq, frame_len))
}

/// Why bytes are not a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// Fewer bytes than the frame claims: a torn tail, or more bytes to come.
    Incomplete,
    /// Length field zero or above the maximum.
    BadLength(u32),
    /// Checksum mismatch.
    BadChecksum,
    /// Checksum fine but the payload does not parse (a bug or a forged log).
    BadPayload(&'static str),
}

/// The checksum field of the frame at the start of `frame` (a whole frame's header).
pub fn frame_checksum(frame: &[u8]) -> u64 {
    u64::from_le_bytes(frame[4..12].try_into().expect("a frame header"))
}

fn checksum(seq: u64, payload: &[u8]) -> u64 {
    xxh3_64_with_seed(payload, seq)
}

impl Record {
    /// Appends this record's frame, with sequence number `seq`, to `out`.
    pub fn encode(&self, seq: u64, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0u8; FRAME_HEADER_LEN]);
        self.encode_payload(out);
        let payload_len = out.len() - start - FRAME_HEADER_LEN;
        assert!(
            (1..=RECORD_MAX_LEN).contains(&payload_len),
            "record of {payload_len} bytes"
        );
        let sum = checksum(seq, &out[start + FRAME_HEADER_LEN..]);
        out[start..start + 4].copy_from_slice(&(payload_len as u32).to_le_bytes());
        out[start + 4..start + 12].copy_from_slice(&sum.to_le_bytes());
        out[start + 12..start + 20].copy_from_slice(&seq.to_le_bytes());
    }

    fn encode_payload(&self, out: &mut Vec<u8>) {
        match self {
            Record::Policy { id, policy } => {
                out.push(T_POLICY);
                out.extend_from_slice(&id.to_le_bytes());
                out.extend_from_slice(&policy.provider.to_le_bytes());
                out.push(policy.format as u8);
                let v = &policy.validity;
                let flags = u8::from(v.not_before_unix_s.is_some())
                    | u8::from(v.not_after_unix_s.is_some()) << 1
                    | u8::from(v.duration_from_first_scan_s.is_some()) << 2
                    | u8::from(policy.entry.records_exits) << 3
                    | u8::from(policy.offline_rotating) << 4
                    | u8::from(policy.online_only) << 5;
                out.push(flags);
                out.extend_from_slice(&v.not_before_unix_s.unwrap_or(0).to_le_bytes());
                out.extend_from_slice(&v.not_after_unix_s.unwrap_or(0).to_le_bytes());
                out.extend_from_slice(&v.duration_from_first_scan_s.unwrap_or(0).to_le_bytes());
                out.push(policy.entry.max_entries);
                out.extend_from_slice(&policy.undo_window_s.to_le_bytes());
            }
            Record::Mint {
                partition,
                first,
                count,
                policy,
                word,
            } => {
                out.push(T_MINT);
                out.extend_from_slice(&partition.to_le_bytes());
                out.extend_from_slice(&first.to_le_bytes());
                out.extend_from_slice(&count.to_le_bytes());
                out.extend_from_slice(&policy.to_le_bytes());
                out.extend_from_slice(&word.to_le_bytes());
            }
            Record::State {
                partition,
                serial,
                word,
                first_scan_e,
                scan,
            } => {
                out.push(if scan.is_some() {
                    T_STATE_SCAN
                } else {
                    T_STATE
                });
                out.extend_from_slice(&partition.to_le_bytes());
                out.extend_from_slice(&serial.to_le_bytes());
                out.extend_from_slice(&word.to_le_bytes());
                out.extend_from_slice(&first_scan_e.to_le_bytes());
                if let Some(t) = scan {
                    out.extend_from_slice(&t.gate.to_le_bytes());
                    out.extend_from_slice(&t.scan_id.to_le_bytes());
                    out.push(t.op);
                    out.extend_from_slice(&t.answer.to_le_bytes());
                }
            }
            Record::Transfer {
                partition,
                old_serial,
                old_word,
                new_serial,
                policy,
                new_word,
                first_scan_e,
            } => {
                out.push(T_TRANSFER);
                out.extend_from_slice(&partition.to_le_bytes());
                out.extend_from_slice(&old_serial.to_le_bytes());
                out.extend_from_slice(&old_word.to_le_bytes());
                out.extend_from_slice(&new_serial.to_le_bytes());
                out.extend_from_slice(&policy.to_le_bytes());
                out.extend_from_slice(&new_word.to_le_bytes());
                out.extend_from_slice(&first_scan_e.to_le_bytes());
            }
            Record::Import {
                partition,
                first,
                policy,
                word,
                codes,
            } => {
                out.push(T_IMPORT);
                out.extend_from_slice(&partition.to_le_bytes());
                out.extend_from_slice(&first.to_le_bytes());
                out.extend_from_slice(&policy.to_le_bytes());
                out.extend_from_slice(&word.to_le_bytes());
                out.extend_from_slice(&(codes.len() as u32).to_le_bytes());
                for c in codes {
                    out.extend_from_slice(&(c.len() as u16).to_le_bytes());
                    out.extend_from_slice(c.as_bytes());
                }
            }
            Record::Key { id, status } => {
                out.extend_from_slice(&[T_KEY, *id, *status]);
            }
            Record::Conflict(c) => {
                out.push(T_CONFLICT);
                out.push(c.kind);
                out.extend_from_slice(&c.provider.to_le_bytes());
                out.extend_from_slice(&c.partition.to_le_bytes());
                out.extend_from_slice(&c.serial.to_le_bytes());
                out.extend_from_slice(&c.first_gate.to_le_bytes());
                out.extend_from_slice(&c.first_at_e.to_le_bytes());
                out.extend_from_slice(&c.second_gate.to_le_bytes());
                out.extend_from_slice(&c.second_at_e.to_le_bytes());
                out.extend_from_slice(&c.scan_id.to_le_bytes());
            }
            Record::Purge { partition, below } => {
                out.push(T_PURGE);
                out.extend_from_slice(&partition.to_le_bytes());
                out.extend_from_slice(&below.to_le_bytes());
            }
        }
    }

    /// Decodes one frame from the front of `buf`: the record, its sequence number and the
    /// frame's length. Checks the whole frame is present before parsing anything.
    /// A durability mark is not a record: `BadPayload` (see [`decode_frame`]).
    pub fn decode(buf: &[u8]) -> Result<(Record, u64, usize), DecodeError> {
        match decode_frame(buf)? {
            (Frame::Record(record), seq, len) => Ok((record, seq, len)),
            (Frame::Mark { .. }, ..) => Err(DecodeError::BadPayload("a durability mark")),
        }
    }
}

/// A cursor over a payload.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        if self.0.len() < N {
            return Err(DecodeError::BadPayload("record body too short"));
        }
        let (head, rest) = self.0.split_at(N);
        self.0 = rest;
        Ok(head.try_into().expect("N bytes"))
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.take()?))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.take()?))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.take()?))
    }

    fn record(mut self) -> Result<Record, DecodeError> {
        let kind = self.u8()?;
        let record = match kind {
            T_POLICY => {
                let id = self.u32()?;
                let provider = self.u16()?;
                let format = match self.u8()? {
                    1 => CodeFormat::Static,
                    2 => CodeFormat::Rotating,
                    _ => return Err(DecodeError::BadPayload("unknown code format")),
                };
                let flags = self.u8()?;
                let (nb, na, dur) = (self.u64()?, self.u64()?, self.u32()?);
                let max_entries = self.u8()?;
                let undo_window_s = self.u32()?;
                let validity = Validity {
                    not_before_unix_s: (flags & 1 != 0).then_some(nb),
                    not_after_unix_s: (flags & 2 != 0).then_some(na),
                    duration_from_first_scan_s: (flags & 4 != 0).then_some(dur),
                };
                let entry = EntryRule {
                    max_entries,
                    records_exits: flags & 8 != 0,
                };
                Record::Policy {
                    id,
                    policy: Policy {
                        provider,
                        format,
                        validity,
                        entry,
                        undo_window_s,
                        offline_rotating: flags & 16 != 0,
                        online_only: flags & 32 != 0,
                    },
                }
            }
            T_MINT => Record::Mint {
                partition: self.u16()?,
                first: self.u32()?,
                count: self.u32()?,
                policy: self.u32()?,
                word: self.u64()?,
            },
            T_STATE | T_STATE_SCAN => Record::State {
                partition: self.u16()?,
                serial: self.u32()?,
                word: self.u64()?,
                first_scan_e: self.u32()?,
                scan: if kind == T_STATE_SCAN {
                    Some(ScanTrace {
                        gate: self.u16()?,
                        scan_id: self.u64()?,
                        op: self.u8()?,
                        answer: self.u64()?,
                    })
                } else {
                    None
                },
            },
            T_TRANSFER => Record::Transfer {
                partition: self.u16()?,
                old_serial: self.u32()?,
                old_word: self.u64()?,
                new_serial: self.u32()?,
                policy: self.u32()?,
                new_word: self.u64()?,
                first_scan_e: self.u32()?,
            },
            T_IMPORT => {
                let (partition, first, policy, word) =
                    (self.u16()?, self.u32()?, self.u32()?, self.u64()?);
                let n = self.u32()? as usize;
                let mut codes = Vec::with_capacity(n.min(self.0.len() / 2));
                for _ in 0..n {
                    let len = self.u16()? as usize;
                    if self.0.len() < len {
                        return Err(DecodeError::BadPayload(
                            "imported code runs past the record",
                        ));
                    }
                    let (code, rest) = self.0.split_at(len);
                    self.0 = rest;
                    let code = std::str::from_utf8(code)
                        .map_err(|_| DecodeError::BadPayload("imported code is not UTF-8"))?;
                    codes.push(code.to_string());
                }
                Record::Import {
                    partition,
                    first,
                    policy,
                    word,
                    codes,
                }
            }
            T_KEY => Record::Key {
                id: self.u8()?,
                status: self.u8()?,
            },
            T_PURGE => Record::Purge {
                partition: self.u16()?,
                below: self.u64()?,
            },
            T_CONFLICT => Record::Conflict(ConflictRecord {
                kind: self.u8()?,
                provider: self.u16()?,
                partition: self.u16()?,
                serial: self.u32()?,
                first_gate: self.u16()?,
                first_at_e: self.u32()?,
                second_gate: self.u16()?,
                second_at_e: self.u32()?,
                scan_id: self.u64()?,
            }),
            _ => return Err(DecodeError::BadPayload("unknown record type")),
        };
        if !self.0.is_empty() {
            return Err(DecodeError::BadPayload("trailing bytes after the record"));
        }
        Ok(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn samples() -> Vec<Record> {
        let policy = Policy {
            provider: 7,
            format: CodeFormat::Rotating,
            validity: Validity {
                not_before_unix_s: Some(5),
                not_after_unix_s: None,
                duration_from_first_scan_s: Some(86_400),
            },
            entry: EntryRule::pairs(3),
            undo_window_s: 30,
            offline_rotating: true,
            online_only: false,
        };
        vec![
            Record::Policy { id: 3, policy },
            Record::Mint {
                partition: 1,
                first: 10,
                count: 1000,
                policy: 3,
                word: 0x1234,
            },
            Record::State {
                partition: 1,
                serial: 99,
                word: u64::MAX,
                first_scan_e: 17,
                scan: None,
            },
            Record::State {
                partition: 1,
                serial: 100,
                word: 5,
                first_scan_e: 18,
                scan: Some(ScanTrace {
                    gate: 7,
                    scan_id: u64::MAX - 1,
                    op: 2,
                    answer: 0x0102_0304_0506,
                }),
            },
            Record::Transfer {
                partition: 0,
                old_serial: 1,
                old_word: 2,
                new_serial: 3,
                policy: 4,
                new_word: 5,
                first_scan_e: 6,
            },
            Record::Import {
                partition: 2,
                first: 0,
                policy: 1,
                word: 9,
                codes: vec!["EXT-1".into(), "ünïcode".into(), String::new()],
            },
            Record::Key { id: 2, status: 1 },
            Record::Purge {
                partition: u16::MAX,
                below: 1 << 32,
            },
            Record::Conflict(ConflictRecord {
                kind: 3,
                provider: 9,
                partition: 1,
                serial: u32::MAX,
                first_gate: 4,
                first_at_e: 5,
                second_gate: u16::MAX,
                second_at_e: u32::MAX,
                scan_id: u64::MAX,
            }),
        ]
    }

    #[test]
    fn every_record_roundtrips_with_its_sequence() {
        let mut buf = Vec::new();
        for (i, r) in samples().iter().enumerate() {
            r.encode(100 + i as u64, &mut buf);
        }
        let mut at = 0;
        for (i, want) in samples().iter().enumerate() {
            let (got, seq, len) = Record::decode(&buf[at..]).unwrap();
            assert_eq!((&got, seq), (want, 100 + i as u64));
            at += len;
        }
        assert_eq!(at, buf.len());
    }

    /// A purge record is the documented 11 bytes of payload: type 8, partition, then the
    /// serial below which everything is purged (docs/FORMAT.md §7).
    #[test]
    fn a_purge_record_has_the_documented_layout() {
        let mut buf = Vec::new();
        Record::Purge {
            partition: 0x0102,
            below: 0x0304_0506,
        }
        .encode(9, &mut buf);
        assert_eq!(&buf[0..4], &11u32.to_le_bytes());
        assert_eq!(
            &buf[FRAME_HEADER_LEN..],
            &[8, 0x02, 0x01, 0x06, 0x05, 0x04, 0x03, 0, 0, 0, 0]
        );
        // One byte short, or one more, is no record.
        for bad in [
            &buf[FRAME_HEADER_LEN..buf.len() - 1],
            &[&buf[FRAME_HEADER_LEN..], &[0][..]].concat()[..],
        ] {
            let mut frame = Vec::new();
            frame.extend_from_slice(&(bad.len() as u32).to_le_bytes());
            frame.extend_from_slice(&checksum(9, bad).to_le_bytes());
            frame.extend_from_slice(&9u64.to_le_bytes());
            frame.extend_from_slice(bad);
            assert!(matches!(
                Record::decode(&frame),
                Err(DecodeError::BadPayload(_))
            ));
        }
    }

    #[test]
    fn partial_frames_are_incomplete_and_flips_are_caught() {
        let mut buf = Vec::new();
        Record::State {
            partition: 0,
            serial: 1,
            word: 2,
            first_scan_e: 3,
            scan: None,
        }
        .encode(1, &mut buf);
        for cut in 0..buf.len() {
            assert_eq!(
                Record::decode(&buf[..cut]).unwrap_err(),
                DecodeError::Incomplete,
                "cut {cut}"
            );
        }
        for i in 4..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x20;
            assert!(Record::decode(&bad).is_err(), "flip at {i} went unnoticed");
        }
        let mut huge = buf.clone();
        huge[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            Record::decode(&huge).unwrap_err(),
            DecodeError::BadLength(u32::MAX)
        );
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Record::decode(&bytes);
        }
    }
}
