//! The replication stream, sans IO. A standby sends `replicate` as the first frame of a
//! stream; from then on both directions carry these frames instead of requests and answers:
//! `u32 LE length ‖ kind (u8) ‖ payload`, the length counting kind and payload, at most
//! [`REPL_FRAME_MAX`] (a log record may be 4 MiB, far past a request frame's 32 KiB).
//! Layouts: `docs/FORMAT.md` §9.
//!
//! Primary to standby: the key ring and a snapshot when the standby needs one, then the log
//! in batches of numbers `[from, upto)` with the primary's epoch, whose records travel as
//! the log frames the primary wrote (checksummed, decoded by the engine). Standby to
//! primary: acknowledgements, each "every number below this is synced here".

use bytes::BufMut;

use crate::frame::FrameError;

/// Largest replication frame (kind and payload), bytes: a batch of records of at most
/// [`RECORDS_BATCH_BYTES`] plus one record of up to 4 MiB, with room to spare.
pub const REPL_FRAME_MAX: usize = 12 << 20;
/// Bytes of log frames a primary gathers into one batch before it sends it.
pub const RECORDS_BATCH_BYTES: usize = 1 << 20;
/// Bytes of a snapshot one frame carries.
pub const SNAPSHOT_CHUNK: usize = 1 << 20;
/// Longest refusal message, bytes.
pub const REFUSE_MESSAGE_MAX: usize = 512;

/// Frame kinds.
pub mod kind {
    /// The primary's key ring file.
    pub const RING: u8 = 1;
    /// A snapshot follows: its start position and length.
    pub const SNAPSHOT_BEGIN: u8 = 2;
    /// A piece of the snapshot.
    pub const SNAPSHOT_CHUNK: u8 = 3;
    /// Log records of a span of numbers.
    pub const RECORDS: u8 = 4;
    /// The standby's acknowledgement.
    pub const ACK: u8 = 5;
    /// The session ends, with an error code and why.
    pub const REFUSE: u8 = 6;
}

/// One replication frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplFrame {
    /// The primary's key ring file, as written (sent first, and again before records that
    /// change the ring).
    Ring(Vec<u8>),
    /// A snapshot of `len` bytes follows in chunks; the log goes on at `start_seq`, in the
    /// primary's epoch `epoch`.
    SnapshotBegin {
        /// The snapshot's log position.
        start_seq: u64,
        /// Its length in bytes.
        len: u64,
        /// The primary's epoch.
        epoch: u64,
    },
    /// The next piece of the snapshot.
    SnapshotChunk(Vec<u8>),
    /// The primary's numbers `[from, upto)`: `frames` holds the log frames of those that
    /// hold a record (the rest were reserved and never used).
    Records {
        /// The primary's epoch (0 for a node without a cluster).
        epoch: u64,
        /// First number covered.
        from: u64,
        /// Every number below this is covered.
        upto: u64,
        /// The records' log frames, in order.
        frames: Vec<u8>,
    },
    /// Every number below `seq` is synced on the standby.
    Ack {
        /// The standby's synced position.
        seq: u64,
    },
    /// The session ends: an error code ([`crate::frame::error_code`]) and why.
    Refuse {
        /// Why, as a code.
        code: u16,
        /// Why, for people (for `not_leader`: the leader's address, or empty).
        message: String,
    },
}

/// Pass one: if `buf` starts with a whole replication frame, its total length and its body
/// (kind and payload). `Ok(None)`: more bytes needed.
pub fn split(buf: &[u8]) -> Result<Option<(usize, &[u8])>, FrameError> {
    let Some(head) = buf.get(..4) else {
        return Ok(None);
    };
    let len = u32::from_le_bytes(head.try_into().expect("4 bytes")) as usize;
    if len > REPL_FRAME_MAX {
        return Err(FrameError::TooLarge(len as u64));
    }
    if len == 0 {
        return Err(FrameError::Malformed("empty replication frame"));
    }
    Ok(buf.get(4..4 + len).map(|body| (4 + len, body)))
}

impl ReplFrame {
    /// Appends this frame to `out`.
    pub fn encode(&self, out: &mut impl BufMut) {
        let (kind, len) = match self {
            ReplFrame::Ring(text) => (kind::RING, text.len()),
            ReplFrame::SnapshotBegin { .. } => (kind::SNAPSHOT_BEGIN, 24),
            ReplFrame::SnapshotChunk(bytes) => (kind::SNAPSHOT_CHUNK, bytes.len()),
            ReplFrame::Records { frames, .. } => (kind::RECORDS, 24 + frames.len()),
            ReplFrame::Ack { .. } => (kind::ACK, 8),
            ReplFrame::Refuse { message, .. } => {
                (kind::REFUSE, 2 + message.len().min(REFUSE_MESSAGE_MAX))
            }
        };
        debug_assert!(len < REPL_FRAME_MAX, "replication frame too large");
        out.put_u32_le((1 + len) as u32);
        out.put_u8(kind);
        match self {
            ReplFrame::Ring(bytes) | ReplFrame::SnapshotChunk(bytes) => out.put_slice(bytes),
            ReplFrame::SnapshotBegin {
                start_seq,
                len,
                epoch,
            } => {
                out.put_u64_le(*start_seq);
                out.put_u64_le(*len);
                out.put_u64_le(*epoch);
            }
            ReplFrame::Records {
                epoch,
                from,
                upto,
                frames,
            } => {
                out.put_u64_le(*epoch);
                out.put_u64_le(*from);
                out.put_u64_le(*upto);
                out.put_slice(frames);
            }
            ReplFrame::Ack { seq } => out.put_u64_le(*seq),
            ReplFrame::Refuse { code, message } => {
                out.put_u16_le(*code);
                out.put_slice(truncated(message).as_bytes());
            }
        }
    }

    /// Pass two: the frame of `body` (from [`split`]).
    pub fn decode(body: &[u8]) -> Result<ReplFrame, FrameError> {
        let (&kind, payload) = body
            .split_first()
            .ok_or(FrameError::Malformed("empty replication frame"))?;
        let u64_at = |at: usize| -> Result<u64, FrameError> {
            payload
                .get(at..at + 8)
                .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
                .ok_or(FrameError::Malformed("short replication frame"))
        };
        let exact = |len: usize| match payload.len() == len {
            true => Ok(()),
            false => Err(FrameError::Malformed(
                "replication frame of the wrong length",
            )),
        };
        Ok(match kind {
            kind::RING => ReplFrame::Ring(payload.to_vec()),
            kind::SNAPSHOT_BEGIN => {
                exact(24)?;
                ReplFrame::SnapshotBegin {
                    start_seq: u64_at(0)?,
                    len: u64_at(8)?,
                    epoch: u64_at(16)?,
                }
            }
            kind::SNAPSHOT_CHUNK => ReplFrame::SnapshotChunk(payload.to_vec()),
            kind::RECORDS => {
                let (from, upto) = (u64_at(8)?, u64_at(16)?);
                if upto < from {
                    return Err(FrameError::Malformed("records span ends before it starts"));
                }
                ReplFrame::Records {
                    epoch: u64_at(0)?,
                    from,
                    upto,
                    frames: payload[24..].to_vec(),
                }
            }
            kind::ACK => {
                exact(8)?;
                ReplFrame::Ack { seq: u64_at(0)? }
            }
            kind::REFUSE => {
                let code = payload
                    .get(..2)
                    .map(|b| u16::from_le_bytes([b[0], b[1]]))
                    .ok_or(FrameError::Malformed("short replication frame"))?;
                let message = std::str::from_utf8(&payload[2..])
                    .map_err(|_| FrameError::Malformed("refusal message is not UTF-8"))?;
                if message.len() > REFUSE_MESSAGE_MAX {
                    return Err(FrameError::Malformed("refusal message too long"));
                }
                ReplFrame::Refuse {
                    code,
                    message: message.to_string(),
                }
            }
            other => return Err(FrameError::UnknownOp(other)),
        })
    }
}

/// `message` cut at a character boundary to [`REFUSE_MESSAGE_MAX`] bytes.
fn truncated(message: &str) -> &str {
    let mut end = message.len().min(REFUSE_MESSAGE_MAX);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    &message[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round_trip(frame: &ReplFrame) {
        let mut out = Vec::new();
        frame.encode(&mut out);
        let (n, body) = split(&out).unwrap().unwrap();
        assert_eq!(n, out.len());
        assert_eq!(&ReplFrame::decode(body).unwrap(), frame);
        // Every prefix asks for more bytes.
        for cut in 0..out.len() {
            assert!(split(&out[..cut]).unwrap().is_none());
        }
    }

    /// Every kind survives its bytes, and a cut frame is never a frame.
    #[test]
    fn every_frame_round_trips() {
        for frame in [
            ReplFrame::Ring(b"# ring\n1 active 00\n".to_vec()),
            ReplFrame::SnapshotBegin {
                start_seq: 7,
                len: 1 << 33,
                epoch: 5,
            },
            ReplFrame::SnapshotChunk(vec![9; 100]),
            ReplFrame::Records {
                epoch: 3,
                from: 10,
                upto: 20,
                frames: vec![1, 2, 3],
            },
            ReplFrame::Ack { seq: 42 },
            ReplFrame::Refuse {
                code: crate::frame::error_code::NOT_LEADER,
                message: "10.0.0.2:7000".into(),
            },
        ] {
            round_trip(&frame);
        }
    }

    /// Oversized, empty and inside-out frames are refused before their bodies arrive.
    #[test]
    fn bad_lengths_and_spans_are_refused() {
        let big = ((REPL_FRAME_MAX + 1) as u32).to_le_bytes();
        assert!(matches!(split(&big), Err(FrameError::TooLarge(_))));
        assert!(split(&0u32.to_le_bytes()).is_err());
        let mut out = Vec::new();
        ReplFrame::Records {
            epoch: 0,
            from: 5,
            upto: 5,
            frames: vec![],
        }
        .encode(&mut out);
        out[4 + 1 + 16] = 4; // upto = 4 < from = 5
        let (_, body) = split(&out).unwrap().unwrap();
        assert!(ReplFrame::decode(body).is_err());
    }

    proptest! {
        /// Whatever bytes arrive, decoding neither panics nor accepts what it would not
        /// write again.
        #[test]
        fn any_bytes_decode_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(Some((_, body))) = split(&bytes) {
                if let Ok(frame) = ReplFrame::decode(body) {
                    let mut out = Vec::new();
                    frame.encode(&mut out);
                    prop_assert_eq!(&out[4..], body);
                }
            }
        }
    }
}
