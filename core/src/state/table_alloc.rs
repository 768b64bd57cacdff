//! Where the store caches' hash tables live: a big table in pages of its own, mapped from the
//! kernel and unmapped when the table is freed.
//!
//! The caches' tables are most of the heap (up to `statestore.cache.max.bytes`), and they come and
//! go whole: a table that grows or shrinks is rehashed into a new one and the old one freed. A
//! general allocator serves blocks of 64–512 KiB from pages of several megabytes shared by blocks
//! of the same size class, so with 192 tables (64 tasks × 3 stores) of a few sizes, the blocks
//! the tables left behind when they grew held pages that were neither used nor returned: the
//! count bench's peak at 64 × 3 was ~13 MiB higher under mimalloc than with this allocator
//! (BENCHMARKS.md). A table with pages of its own costs its size, rounded up to a page, for as
//! long as it lives, and nothing after.
//!
//! Small tables stay with the global allocator: mapping a few kilobytes would cost a system call
//! and a mapping each for no gain.

use std::alloc::Layout;
use std::ptr::NonNull;

use allocator_api2::alloc::{AllocError, Allocator, Global};

/// Tables of at least this many bytes get pages of their own; smaller ones come from the global
/// allocator. mimalloc serves blocks up to ~64 KiB from pages of 512 KiB, bigger ones from pages
/// of 4 MiB (or pages of their own past 512 KiB).
const MAPPED_MIN_BYTES: usize = 64 * 1024;

/// The alignment a mapping is sure to have: it starts on a page, and pages are at least 4 KiB.
const MAPPED_ALIGN: usize = 4096;

/// The allocator of the store caches' tables (see the module's documentation).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct TableAlloc;

impl TableAlloc {
    /// True when a block of `layout` is mapped rather than taken from the global allocator. The
    /// same test on the same layout decides where it goes back.
    fn mapped(layout: Layout) -> bool {
        cfg!(unix) && layout.size() >= MAPPED_MIN_BYTES && layout.align() <= MAPPED_ALIGN
    }
}

// SAFETY: a mapped block is a fresh private anonymous mapping of at least `layout.size()` bytes,
// page-aligned (so aligned for any `layout.align()` up to 4 KiB, which `mapped` requires), valid
// until it is unmapped in `deallocate`; every other block is the global allocator's, allocated and
// freed through it. Both kinds are returned with a length of exactly `layout.size()`, so the
// caller may give back only that size (the `Allocator` contract allows any size between the one
// asked for and the length returned, and hashbrown uses a longer length when it gets one): then
// `mapped`, which depends only on the layout, decides the way back as it decided the way in, and
// `unmap` gets the length that was mapped. Copies of the allocator share nothing, so a block may
// be freed through any of them.
unsafe impl Allocator for TableAlloc {
    fn allocate(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        let ptr = if Self::mapped(layout) {
            map(layout.size()).ok_or(AllocError)?
        } else {
            Global.allocate(layout)?.cast::<u8>()
        };
        // Exactly the size asked for, whatever the global allocator could give: see above.
        Ok(NonNull::slice_from_raw_parts(ptr, layout.size()))
    }

    unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
        if Self::mapped(layout) {
            // SAFETY: `ptr` came from `map(layout.size())` (the caller's contract, and `mapped`
            // decided the same way for the same layout).
            unsafe { unmap(ptr, layout.size()) }
        } else {
            // SAFETY: the global allocator gave `ptr` for this `layout`.
            unsafe { Global.deallocate(ptr, layout) }
        }
    }
}

/// A private anonymous mapping of `len` bytes (rounded up to pages by the kernel), zeroed; `None`
/// when the kernel refuses it.
#[cfg(unix)]
fn map(len: usize) -> Option<NonNull<u8>> {
    // SAFETY: an anonymous private mapping at an address of the kernel's choosing aliases nothing;
    // the result is checked before use.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return None;
    }
    #[cfg(test)]
    tests::LIVE_MAPPINGS.with(|n| n.set(n.get() + 1));
    NonNull::new(ptr.cast::<u8>())
}

#[cfg(not(unix))]
fn map(_len: usize) -> Option<NonNull<u8>> {
    None
}

/// Gives a mapping from [`map`] back to the kernel.
///
/// # Safety
/// `ptr` and `len` are those of a live mapping from [`map`], not used after.
#[cfg(unix)]
unsafe fn unmap(ptr: NonNull<u8>, len: usize) {
    // SAFETY: the caller's contract. munmap fails only for arguments that do not name a mapping,
    // which the contract rules out; were it to fail, the pages would stay mapped (a leak, not a
    // fault), so there is nothing more to do.
    let _ = unsafe { libc::munmap(ptr.as_ptr().cast(), len) };
    #[cfg(test)]
    tests::LIVE_MAPPINGS.with(|n| n.set(n.get() - 1));
}

#[cfg(not(unix))]
unsafe fn unmap(_ptr: NonNull<u8>, _len: usize) {}

#[cfg(test)]
mod tests {
    use super::*;
    use hashbrown::HashTable;
    use std::cell::Cell;

    thread_local! {
        /// Mappings made and not yet unmapped by this thread (each test runs on its own).
        pub(super) static LIVE_MAPPINGS: Cell<isize> = const { Cell::new(0) };
    }

    #[test]
    fn a_big_block_is_mapped_writable_zeroed_and_unmapped() {
        let layout = Layout::from_size_align(MAPPED_MIN_BYTES * 3 + 5, 16).unwrap();
        assert!(cfg!(not(unix)) || TableAlloc::mapped(layout));
        let block = TableAlloc.allocate(layout).unwrap();
        assert!(block.len() >= layout.size());
        let ptr = block.cast::<u8>();
        assert_eq!(ptr.as_ptr() as usize % layout.align(), 0);
        // SAFETY: the block holds `layout.size()` bytes, ours until deallocated below.
        let bytes = unsafe { std::slice::from_raw_parts_mut(ptr.as_ptr(), layout.size()) };
        assert!(bytes.iter().all(|&b| b == 0), "a fresh mapping is zeroed");
        bytes.fill(0xab);
        assert!(bytes.iter().all(|&b| b == 0xab));
        assert_eq!(LIVE_MAPPINGS.with(Cell::get), if cfg!(unix) { 1 } else { 0 });
        // SAFETY: allocated above with this layout, not used after.
        unsafe { TableAlloc.deallocate(ptr, layout) };
        assert_eq!(LIVE_MAPPINGS.with(Cell::get), 0);
    }

    #[test]
    fn a_small_block_comes_from_the_global_allocator() {
        let layout = Layout::from_size_align(MAPPED_MIN_BYTES - 1, 8).unwrap();
        assert!(!TableAlloc::mapped(layout));
        let block = TableAlloc.allocate(layout).unwrap();
        assert_eq!(block.len(), layout.size(), "exactly the size asked for");
        assert_eq!(LIVE_MAPPINGS.with(Cell::get), 0);
        // SAFETY: allocated above with this layout, not used after.
        unsafe { TableAlloc.deallocate(block.cast(), layout) };
    }

    #[test]
    fn a_table_grows_through_mapped_blocks_and_shrinks_back_keeping_every_entry() {
        let hash = |v: &u64| v.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let mut table: HashTable<u64, TableAlloc> = HashTable::new_in(TableAlloc);
        for v in 0..200_000u64 {
            table.insert_unique(hash(&v), v, hash);
        }
        assert!(table.capacity() * 8 >= MAPPED_MIN_BYTES, "the table outgrew the global allocator");
        for v in (0..200_000u64).filter(|v| v % 10 != 0) {
            table.find_entry(hash(&v), |&e| e == v).ok().unwrap().remove();
        }
        table.shrink_to(0, hash);
        assert_eq!(table.len(), 20_000);
        assert!((0..200_000u64).step_by(10).all(|v| table.find(hash(&v), |&e| e == v).is_some()));
        assert_eq!(LIVE_MAPPINGS.with(Cell::get), if cfg!(unix) { 1 } else { 0 }, "the old tables were unmapped");
        drop(table);
        assert_eq!(LIVE_MAPPINGS.with(Cell::get), 0);
    }
}
