//! The index: per partition, a dense array of 16-byte slots indexed by serial.
//!
//! The array is split into chunks of [`CHUNK_SLOTS`] slots (2 MiB), mapped zeroed on first
//! mint into them and installed with one compare-and-swap, so lookups and growth never take a
//! lock. A zeroed slot is an unminted ticket. Chunks stay mapped while the partition lives: a
//! purge zeroes its slots and hands the memory of every chunk wholly below the purge back to
//! the system (`MADV_DONTNEED`: the mapping stays, reads see zeros), so a reader that found a
//! slot just before never touches freed memory.
//!
//! Each chunk is one 2 MiB-aligned anonymous mapping advised for transparent huge pages:
//! check-ins touch random slots of a large index, and with 4 KiB pages nearly every one would
//! also miss the TLB. Memory is committed as slots are first written (page by page, or huge
//! page by huge page), so an index costs 16 bytes per minted ticket plus at most one partly
//! filled chunk per partition.

use std::ptr;
use std::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, Ordering};

use crate::policy::{PolicyId, SlotPolicy};
use crate::word::Word;

/// Serial bits that index inside a chunk.
pub const CHUNK_BITS: u32 = 17;
/// Slots per chunk.
pub const CHUNK_SLOTS: usize = 1 << CHUNK_BITS;
/// Bytes per chunk: one huge page.
pub const CHUNK_BYTES: usize = CHUNK_SLOTS * std::mem::size_of::<Slot>();
/// Chunks per partition: enough for every `u32` serial.
pub const CHUNKS_MAX: usize = 1 << (32 - CHUNK_BITS);

/// One ticket's state: 16 bytes, one cache line access.
#[derive(Debug)]
#[repr(C, align(16))]
pub struct Slot {
    /// The state word (see [`crate::word`]); 0 means unminted.
    pub word: AtomicU64,
    /// The ticket's policy and signing key, a [`SlotPolicy`]; written before the word is
    /// published.
    pub policy: AtomicU32,
    /// First scan, seconds from the engine epoch; 0 until the first admit, then set once.
    pub first_scan_e: AtomicU32,
}

const _: () = assert!(std::mem::size_of::<Slot>() == 16);

impl Slot {
    /// The ticket's policy id.
    #[inline]
    pub fn policy_id(&self) -> PolicyId {
        SlotPolicy(self.policy.load(Ordering::Relaxed)).policy()
    }

    /// The id of the key that signed the ticket's code (0: not recorded).
    #[inline]
    pub fn key_id(&self) -> u8 {
        SlotPolicy(self.policy.load(Ordering::Relaxed)).key()
    }
}

/// One partition's slots.
#[derive(Debug)]
pub struct Partition {
    /// The partition id (bytes 4–5 of the code).
    id: u16,
    /// Chunk pointers; null until a mint reaches the chunk.
    chunks: Box<[AtomicPtr<Slot>]>,
    /// Serials handed out so far (the next serial to mint).
    next_serial: AtomicU64,
    /// Most serials this partition hands out (a configured cap, at most 2^32).
    serials_max: u64,
    /// Chunks holding memory, for memory accounting: mapped, less those a purge released.
    chunks_allocated: AtomicU32,
    /// Serials below this were purged: their slots are zero and no record may restore them
    /// (0: nothing purged). Never above `next_serial`; only rises.
    purged_below: AtomicU64,
}

/// Maps one zeroed, 2 MiB-aligned chunk advised for huge pages.
fn map_chunk() -> *mut Slot {
    let len = 2 * CHUNK_BYTES;
    // SAFETY: an anonymous private mapping with no address hint touches no existing memory.
    let raw = unsafe {
        libc::mmap(
            ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert!(
        raw != libc::MAP_FAILED,
        "out of memory: cannot map a {CHUNK_BYTES}-byte index chunk"
    );
    let start = raw as usize;
    let aligned = (start + CHUNK_BYTES - 1) & !(CHUNK_BYTES - 1);
    let (head, tail) = (aligned - start, start + len - (aligned + CHUNK_BYTES));
    // SAFETY: head and tail are the parts of our own mapping outside the aligned chunk; the
    // advice only concerns the chunk, and failing advice is harmless (4 KiB pages then).
    unsafe {
        if head > 0 {
            libc::munmap(raw, head);
        }
        if tail > 0 {
            libc::munmap((aligned + CHUNK_BYTES) as *mut libc::c_void, tail);
        }
        libc::madvise(
            aligned as *mut libc::c_void,
            CHUNK_BYTES,
            libc::MADV_HUGEPAGE,
        );
    }
    aligned as *mut Slot
}

/// Unmaps a chunk from [`map_chunk`].
///
/// # Safety
/// `chunk` came from [`map_chunk`] and nothing refers into it any more.
unsafe fn unmap_chunk(chunk: *mut Slot) {
    // SAFETY: per the contract, the whole mapping is ours and unused.
    unsafe { libc::munmap(chunk.cast(), CHUNK_BYTES) };
}

impl Partition {
    /// An empty partition that hands out at most `serials_max` serials.
    pub fn new(id: u16, serials_max: u64) -> Self {
        assert!(serials_max <= 1 << 32, "serials are u32");
        Partition {
            id,
            chunks: (0..CHUNKS_MAX)
                .map(|_| AtomicPtr::new(ptr::null_mut()))
                .collect(),
            next_serial: AtomicU64::new(0),
            serials_max,
            chunks_allocated: AtomicU32::new(0),
            purged_below: AtomicU64::new(0),
        }
    }

    /// The partition id.
    pub fn id(&self) -> u16 {
        self.id
    }

    /// Reserves `count` consecutive serials and makes sure their slots exist. Returns the first,
    /// or `None` when the partition is full (nothing is reserved then).
    pub fn reserve(&self, count: u32) -> Option<u32> {
        let count = u64::from(count);
        let first = self
            .next_serial
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |next| {
                (next + count <= self.serials_max).then_some(next + count)
            })
            .ok()?;
        if count > 0 {
            let first_chunk = (first >> CHUNK_BITS) as usize;
            let last_chunk = ((first + count - 1) >> CHUNK_BITS) as usize;
            for c in first_chunk..=last_chunk {
                self.ensure_chunk(c);
            }
        }
        Some(first as u32)
    }

    /// Marks serials `[first, first + count)` as handed out while recovering (they were
    /// reserved before the crash) and makes sure the slots of those not purged exist.
    pub fn restore_reserved(&self, first: u32, count: u32) -> Result<(), String> {
        let end = u64::from(first) + u64::from(count);
        if end > self.serials_max {
            return Err(format!(
                "serials up to {end} exceed this partition's maximum"
            ));
        }
        self.next_serial.fetch_max(end, Ordering::AcqRel);
        let from = u64::from(first).max(self.purged_below());
        if from < end {
            for c in (from >> CHUNK_BITS) as usize..=((end - 1) >> CHUNK_BITS) as usize {
                self.ensure_chunk(c);
            }
        }
        Ok(())
    }

    /// Serials handed out so far, purged ones included (none is handed out again).
    pub fn minted_serials(&self) -> u64 {
        self.next_serial.load(Ordering::Acquire)
    }

    /// Most serials this partition hands out.
    pub fn serials_max(&self) -> u64 {
        self.serials_max
    }

    /// Serials below this were purged (0: none).
    pub fn purged_below(&self) -> u64 {
        self.purged_below.load(Ordering::Acquire)
    }

    /// Whether `serial` was purged: no record may restore it.
    #[inline]
    pub fn is_purged(&self, serial: u32) -> bool {
        u64::from(serial) < self.purged_below()
    }

    /// Tickets held: serials handed out and not purged.
    pub fn held_serials(&self) -> u64 {
        // The floor first: a purge raises the serials handed out before the floor.
        let floor = self.purged_below();
        self.minted_serials().saturating_sub(floor)
    }

    /// Purges every serial below `end` (at most [`Self::minted_serials`] after it; a
    /// recovering partition's count is raised to it): each slot is swapped to zero, so a
    /// compare-and-swap that read it before fails and reads an unminted slot, and the memory
    /// of every chunk wholly below `end` is released. Returns how many of those slots held a
    /// ticket. Idempotent: serials purged before are skipped. The caller excludes mints.
    pub(crate) fn purge_below(&self, end: u64) -> u64 {
        assert!(
            end <= self.serials_max,
            "a purge past the partition's serials"
        );
        self.next_serial.fetch_max(end, Ordering::AcqRel);
        let old = self.purged_below.fetch_max(end, Ordering::AcqRel);
        if end <= old {
            return 0;
        }
        let mut dropped = 0;
        let mut serial = old;
        while serial < end {
            let c = (serial >> CHUNK_BITS) as usize;
            let chunk_end = ((c as u64 + 1) << CHUNK_BITS).min(end);
            let chunk = self.chunks[c].load(Ordering::Acquire);
            if !chunk.is_null() {
                for s in serial..chunk_end {
                    // SAFETY: an installed chunk holds CHUNK_SLOTS slots for as long as the
                    // partition lives; the index is masked into range.
                    let slot = unsafe { &*chunk.add(s as usize & (CHUNK_SLOTS - 1)) };
                    dropped += u64::from(slot.word.swap(0, Ordering::AcqRel) != 0);
                    slot.policy.store(0, Ordering::Relaxed);
                    slot.first_scan_e.store(0, Ordering::Relaxed);
                }
            }
            serial = chunk_end;
        }
        for c in (old >> CHUNK_BITS) as usize..(end >> CHUNK_BITS) as usize {
            self.release_chunk(c);
        }
        dropped
    }

    /// Marks serials below `below` as purged while recovering from a snapshot that says so,
    /// before any slot of the partition is made.
    pub(crate) fn restore_purged(&self, below: u64) -> Result<(), String> {
        if below > self.serials_max {
            return Err(format!(
                "purged serials up to {below} exceed this partition's maximum"
            ));
        }
        self.next_serial.fetch_max(below, Ordering::AcqRel);
        self.purged_below.fetch_max(below, Ordering::AcqRel);
        Ok(())
    }

    /// Hands the memory of chunk `c`, all of whose slots are zero and purged, back to the
    /// system. The mapping stays, so a reader still holding one of its slots reads zeros.
    fn release_chunk(&self, c: usize) {
        let chunk = self.chunks[c].load(Ordering::Acquire);
        if chunk.is_null() {
            return;
        }
        // SAFETY: the chunk is our own mapping of CHUNK_BYTES; every byte of it is already
        // zero, so dropping its pages (which read as zeros afterwards) changes no value.
        unsafe {
            libc::madvise(chunk.cast(), CHUNK_BYTES, libc::MADV_DONTNEED);
        }
        self.chunks_allocated.fetch_sub(1, Ordering::Relaxed);
    }

    fn ensure_chunk(&self, c: usize) {
        debug_assert!(
            ((c as u64 + 1) << CHUNK_BITS) > self.purged_below(),
            "no slot below a purge is made again"
        );
        if !self.chunks[c].load(Ordering::Acquire).is_null() {
            return;
        }
        let fresh = map_chunk();
        match self.chunks[c].compare_exchange(
            ptr::null_mut(),
            fresh,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => {
                self.chunks_allocated.fetch_add(1, Ordering::Relaxed);
            }
            // SAFETY: `fresh` came from `map_chunk` and was never shared.
            Err(_) => unsafe { unmap_chunk(fresh) },
        }
    }

    /// Writes a ticket's slot: policy and first scan first, then the word with `Release`, so
    /// a reader that sees the word sees the rest.
    pub(crate) fn publish(&self, serial: u32, policy: SlotPolicy, word: Word, first_scan_e: u32) {
        let slot = self.slot(serial).expect("reserved serials have slots");
        debug_assert_eq!(
            slot.word.load(Ordering::Relaxed),
            0,
            "a serial is published once"
        );
        slot.policy.store(policy.0, Ordering::Relaxed);
        slot.first_scan_e.store(first_scan_e, Ordering::Relaxed);
        slot.word.store(word.pack(), Ordering::Release);
    }

    /// The slot of `serial`, if its chunk exists (the slot may still be unminted).
    #[inline]
    pub fn slot(&self, serial: u32) -> Option<&Slot> {
        let chunk = self.chunks[(serial >> CHUNK_BITS) as usize].load(Ordering::Acquire);
        if chunk.is_null() {
            return None;
        }
        // SAFETY: a non-null chunk pointer points to CHUNK_SLOTS zero-initialised or written
        // slots that live as long as `self`; the index is masked into range.
        Some(unsafe { &*chunk.add(serial as usize & (CHUNK_SLOTS - 1)) })
    }

    /// Bytes of memory the partition holds: allocated chunks (less those a purge released)
    /// plus the chunk pointer table.
    pub fn memory_bytes(&self) -> usize {
        self.chunks_allocated.load(Ordering::Relaxed) as usize * CHUNK_BYTES
            + self.chunks.len() * std::mem::size_of::<AtomicPtr<Slot>>()
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        for chunk in self.chunks.iter() {
            let p = chunk.load(Ordering::Acquire);
            if !p.is_null() {
                // SAFETY: every installed chunk came from `map_chunk`, and `&mut self` means
                // no reference into it remains.
                unsafe { unmap_chunk(p) };
            }
        }
    }
}

/// Hints the CPU to fetch `slot`'s cache line; a no-op where there is no such hint.
#[inline(always)]
pub fn prefetch(slot: &Slot) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetching is a hint that never faults; the pointer is a valid reference.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
            (slot as *const Slot).cast(),
        );
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = slot;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserve_spans_chunks_and_refuses_past_cap() {
        let p = Partition::new(3, CHUNK_SLOTS as u64 * 2 + 10);
        assert!(p.slot(0).is_none());
        assert_eq!(p.reserve(CHUNK_SLOTS as u32 - 1), Some(0));
        assert_eq!(p.reserve(2), Some(CHUNK_SLOTS as u32 - 1));
        assert!(p.slot(CHUNK_SLOTS as u32).is_some());
        assert!(p.slot(2 * CHUNK_SLOTS as u32).is_none());
        assert_eq!(p.reserve(CHUNK_SLOTS as u32 + 10), None);
        assert_eq!(p.minted_serials(), CHUNK_SLOTS as u64 + 1);
        assert_eq!(
            p.reserve(CHUNK_SLOTS as u32 - 1),
            Some(CHUNK_SLOTS as u32 + 1)
        );
        assert_eq!(p.slot(5).unwrap().word.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn concurrent_reserves_hand_out_disjoint_ranges() {
        let p = Partition::new(0, 1 << 32);
        let firsts: Vec<u32> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        (0..100)
                            .map(|_| p.reserve(1000).unwrap())
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
        });
        let mut sorted = firsts.clone();
        sorted.sort_unstable();
        for w in sorted.windows(2) {
            assert_eq!(w[1] - w[0], 1000);
        }
        let chunks = 400_000usize.div_ceil(CHUNK_SLOTS);
        assert_eq!(p.memory_bytes(), chunks * CHUNK_BYTES + CHUNKS_MAX * 8);
    }
}
