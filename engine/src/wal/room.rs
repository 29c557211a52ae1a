//! Room in the log for records not yet written: how a log on a full disk refuses a change
//! before it is made, instead of failing to write its record after.
//!
//! **Credit.** Records written over zeros prepared ahead of need (the current segment's, up
//! to the segment limit, and each whole spare's) take no new disk space. The log counts
//! those bytes, less what reservations have claimed and not yet written: its credit.
//!
//! **Roomy and tight.** While spares get made and the filesystem keeps room for a runway,
//! nothing is checked: a reservation claims nothing, and the log may grow a file. Once a
//! spare cannot be made for lack of space (`ENOSPC`, `EDQUOT`, `EFBIG`), or the filesystem
//! keeps less than a runway's room free, the log is *tight*: every reservation claims room
//! for its records before its changes are made, and a claim the credit does not cover is
//! refused, so nothing is changed and the caller answers `disk_full`. A claim is twice the
//! bytes its records can take: when a submission does not fit the rest of a segment, the
//! rest (smaller than that submission) stays unused, so records that claims cover always
//! fit the zeros counted. A claim is given back once its records are written.
//!
//! **Refusing.** From the first refused claim until the next spare is whole, the log says
//! its disk is full ([`Room::refusing`], the node's `stile_node_disk_full`); that spare's
//! room lets changes in again. The log turns roomy again once a spare is made with room for
//! a runway beside it.
//!
//! **Turning tight in time.** The preparing thread looks at the filesystem before each
//! spare, and the writer at each segment switch and each eighth of a segment a file grows
//! past its zeros, so a log on a filling disk turns tight while its prepared segments still
//! hold room. A reservation that found the log roomy just before claims nothing: its
//! records use those zeros like any other, and only if they ran out under it would the log
//! grow a file, whose failure stops the process as every write failure after a change does.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use super::{spare_len, Reservation, Wal, Writer, FREE_SEGMENTS_KEPT};
use crate::storage::Storage;

/// Room a reservation claims per record of fixed size (every record but an import): twice
/// the largest such frame (58 bytes).
pub const RECORD_CLAIM_BYTES: u64 = 128;

/// The log's disk is full: its prepared segments are used up and no new one can be made.
/// Nothing was changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the log's disk is full: its prepared segments are used up and no new one can be made")]
pub struct LogFull;

/// The log's credit and whether it is checked (see the module's doc).
#[derive(Debug)]
pub(crate) struct Room {
    /// Bytes of prepared zeros ahead of the log, less claims not yet written (below zero
    /// when records written unclaimed took zeros that claims had counted on).
    credit: AtomicI64,
    /// Claims are checked.
    tight: AtomicBool,
    /// A claim was refused since the last spare was made.
    refusing: AtomicBool,
    /// The room a spare counts for: its records, up to the segment limit.
    spare_room: u64,
    /// The log's directory, named in log lines.
    dir: PathBuf,
}

impl Room {
    /// The room of a log in `dir` starting roomy with `spares` whole spares, each counting
    /// for `spare_room` bytes.
    pub(crate) fn new(dir: &Path, spares: u64, spare_room: u64) -> Self {
        let credit = spares.saturating_mul(spare_room);
        Room {
            credit: AtomicI64::new(i64::try_from(credit).unwrap_or(i64::MAX)),
            tight: AtomicBool::new(false),
            refusing: AtomicBool::new(false),
            spare_room,
            dir: dir.to_path_buf(),
        }
    }

    /// Claims `bytes` of room for records about to be made: nothing while the log is roomy;
    /// while it is tight, `bytes` if the credit covers them. Returns the bytes claimed.
    #[inline]
    pub(crate) fn claim(&self, bytes: u64) -> Result<u64, LogFull> {
        if !self.tight.load(Ordering::Acquire) {
            return Ok(0);
        }
        let b = i64::try_from(bytes).unwrap_or(i64::MAX);
        if self.credit.fetch_sub(b, Ordering::AcqRel) >= b {
            return Ok(bytes);
        }
        self.credit.fetch_add(b, Ordering::AcqRel);
        if !self.refusing.swap(true, Ordering::AcqRel) {
            tracing::error!(
                path = %self.dir.display(),
                "the log's disk is full: its prepared segments are used up and no new one can \
                 be made, so the node refuses changes (disk_full) until space is freed there"
            );
        }
        Err(LogFull)
    }

    /// Gives back `claimed` bytes: their records are written, or were never made.
    #[inline]
    pub(crate) fn release(&self, claimed: u64) {
        if claimed > 0 {
            let b = i64::try_from(claimed).unwrap_or(i64::MAX);
            self.credit.fetch_add(b, Ordering::AcqRel);
        }
    }

    /// `bytes` of prepared zeros are written over, or given up (a segment's unused rest).
    #[inline]
    pub(crate) fn consume(&self, bytes: u64) {
        if bytes > 0 {
            let b = i64::try_from(bytes).unwrap_or(i64::MAX);
            self.credit.fetch_sub(b, Ordering::AcqRel);
        }
    }

    /// A spare is whole: refusals end, and with room for a runway beside it (`roomy`) claims
    /// are no longer checked.
    pub(crate) fn spare_made(&self, roomy: bool) {
        self.release(self.spare_room);
        if roomy {
            self.tight.store(false, Ordering::Release);
        }
        if self.refusing.swap(false, Ordering::AcqRel) {
            tracing::info!(
                path = %self.dir.display(),
                "log space is back: a new log segment is prepared, and the node takes changes \
                 again"
            );
        }
    }

    /// Claims are checked from now on. Whether the log was roomy until now.
    pub(crate) fn tighten(&self) -> bool {
        !self.tight.swap(true, Ordering::AcqRel)
    }

    /// Whether claims are checked.
    pub(crate) fn is_tight(&self) -> bool {
        self.tight.load(Ordering::Acquire)
    }

    /// Whether a claim was refused since the last spare was made: the log's disk is full.
    pub(crate) fn refusing(&self) -> bool {
        self.refusing.load(Ordering::Acquire)
    }

    /// Bytes of prepared zeros that no claim holds (0 if claims hold more).
    pub(crate) fn credit(&self) -> u64 {
        self.credit.load(Ordering::Acquire).max(0) as u64
    }
}

/// Whether `e` says there is no room for more data: the filesystem is full (`ENOSPC`), the
/// quota is spent (`EDQUOT`) or the file size limit is reached (`EFBIG`, when `SIGXFSZ` is
/// ignored).
pub(crate) fn out_of_space(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOSPC | libc::EDQUOT | libc::EFBIG)
    ) || matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::FileTooLarge
    )
}

impl Wal {
    /// Claims room for up to `bytes` of records about to be made, before the changes they
    /// record: refused when the log's disk is full (see the module's doc; [`RECORD_CLAIM_BYTES`]
    /// a record of fixed size). Given back when dropped, or once written if a reservation
    /// takes it ([`Self::reserve_with`]).
    pub fn claim(&self, bytes: u64) -> Result<Claim<'_>, LogFull> {
        Ok(Claim {
            room: &self.shared.space,
            bytes: self.shared.space.claim(bytes)?,
        })
    }

    /// [`Self::reserve`], holding `claim` until the records are written.
    pub fn reserve_with(&self, count: u64, mut claim: Claim<'_>) -> Reservation<'_> {
        let mut r = self.reserve(count);
        if count > 0 {
            r.claim = std::mem::take(&mut claim.bytes);
        }
        r
    }

    /// [`Self::reserve`] of `count` numbers for records of fixed size, once their room is
    /// claimed ([`Self::claim`]): refused, before anything is reserved, when the log's disk
    /// is full.
    #[inline]
    pub fn try_reserve(&self, count: u64) -> Result<Reservation<'_>, LogFull> {
        let claim = self.claim(count.saturating_mul(RECORD_CLAIM_BYTES))?;
        Ok(self.reserve_with(count, claim))
    }

    /// Whether the log refuses changes because its disk is full: from the first change
    /// refused for lack of room until a new segment is prepared.
    pub fn disk_full(&self) -> bool {
        self.shared.space.refusing()
    }

    /// Bytes of records the prepared segments can still take, less room claimed for records
    /// not yet written (see the module's doc).
    pub fn runway_bytes(&self) -> u64 {
        self.shared.space.credit()
    }
}

/// Room claimed in the log for records about to be made ([`Wal::claim`]): given back when
/// dropped, unless a reservation took it.
#[derive(Debug)]
#[must_use = "room is claimed before the change it is for"]
pub struct Claim<'w> {
    /// The log's room.
    room: &'w Room,
    /// Bytes claimed (0 while the log is roomy).
    bytes: u64,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.room.release(self.bytes);
    }
}

impl Writer {
    /// Counts a write of `len` bytes about to be made at the end of the segment: the zeros
    /// it takes (before the write, so the room never looks larger than it is), and what it
    /// grows the file by.
    pub(super) fn count_write(&mut self, len: u64) {
        let (prepared, end) = (self.prepared_end(), self.file_len + len);
        self.shared.space.consume(
            end.min(prepared)
                .saturating_sub(self.file_len.min(prepared)),
        );
        self.grown_unlooked += end.saturating_sub(self.file_len.max(self.file_zeroed));
        if self.grown_unlooked >= self.segment_max_bytes / 8 {
            self.look_at_room();
        }
    }

    /// Counts the room left in the segment as given up: it is being closed.
    pub(super) fn count_cut(&self) {
        self.shared
            .space
            .consume(self.prepared_end().saturating_sub(self.file_len));
    }

    /// Gives back the room claimed by the submissions just written: their records took
    /// what they needed of it.
    pub(super) fn release_written_claims(&mut self) {
        self.shared
            .space
            .release(std::mem::take(&mut self.claims_written));
    }

    /// Turns the log tight once its filesystem is nearly full, without waiting for the
    /// preparing thread's next look: at each segment switch, and each eighth of a segment
    /// that files grow past their prepared zeros.
    pub(super) fn look_at_room(&mut self) {
        self.grown_unlooked = 0;
        if self.spares.is_some() && !self.shared.space.is_tight() {
            tighten_if_nearly_full(
                &self.shared.space,
                &*self.storage,
                &self.dir,
                spare_len(self.segment_max_bytes),
            );
        }
    }

    /// Where the room the log counts in this segment ends: its prepared zeros, up to the
    /// segment limit (a submission that would pass it goes to the next segment).
    fn prepared_end(&self) -> u64 {
        self.file_zeroed.min(self.segment_max_bytes)
    }
}

/// Whether the filesystem holding `dir` has less room than a spare of `len` bytes and
/// [`FREE_SEGMENTS_KEPT`] more segments beside it (no answer counts as room).
fn nearly_full(storage: &dyn Storage, dir: &Path, len: u64) -> bool {
    storage
        .free_bytes(dir)
        .is_some_and(|free| free < len.saturating_mul(1 + FREE_SEGMENTS_KEPT))
}

/// Turns `room` tight (saying so once) if the filesystem holding `dir` is nearly full for
/// spares of `len` bytes; whether it is.
pub(super) fn tighten_if_nearly_full(
    room: &Room,
    storage: &dyn Storage,
    dir: &Path,
    len: u64,
) -> bool {
    if !nearly_full(storage, dir, len) {
        return false;
    }
    if room.tighten() {
        tracing::warn!(
            path = %dir.display(),
            free_bytes = storage.free_bytes(dir).unwrap_or(0),
            "the log's filesystem is nearly full: one log segment is prepared at a time, and \
             changes will be refused once the prepared ones are used and no more can be made"
        );
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Roomy, nothing is claimed or refused; tight, claims come out of the credit and are
    /// refused past it (the credit left untouched), until a spare is made.
    #[test]
    fn claims_are_checked_only_while_tight_and_a_spare_ends_refusals() {
        let room = Room::new(Path::new("wal"), 1, 1000);
        assert_eq!(room.claim(5000), Ok(0));
        assert!(room.tighten());
        assert!(!room.tighten(), "tight already");
        assert_eq!(room.claim(600), Ok(600));
        assert_eq!(room.claim(600), Err(LogFull));
        assert!(room.refusing());
        assert_eq!(room.credit(), 400);
        // The first claim's records written (50 bytes of zeros), its claim given back.
        room.consume(50);
        room.release(600);
        assert_eq!(room.credit(), 950);
        assert_eq!(room.claim(600), Ok(600));
        assert!(room.refusing(), "until a spare is made");
        room.spare_made(false);
        assert!(!room.refusing());
        assert!(room.is_tight(), "no room for a runway yet");
        room.spare_made(true);
        assert!(!room.is_tight());
        assert_eq!(room.credit(), 950 - 600 + 2000);
    }

    #[test]
    fn full_disks_quotas_and_size_limits_are_out_of_space() {
        for errno in [libc::ENOSPC, libc::EDQUOT, libc::EFBIG] {
            assert!(out_of_space(&io::Error::from_raw_os_error(errno)));
        }
        assert!(!out_of_space(&io::Error::from_raw_os_error(libc::EIO)));
    }
}
