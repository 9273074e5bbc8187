//! A global allocator that counts, for the memory scenarios.
//!
//! Counting is off until [`CountingAlloc::start`]: a relaxed load of one
//! read-mostly flag is all it adds to the other scenarios' allocations.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static LIVE_BYTES: AtomicI64 = AtomicI64::new(0);

/// The system allocator, counting allocations and live bytes while enabled.
/// Install it with `#[global_allocator]` in the binary that measures.
#[derive(Debug)]
pub struct CountingAlloc;

/// What was counted between [`CountingAlloc::start`] and [`CountingAlloc::stop`].
#[derive(Clone, Copy, Debug)]
pub struct Counted {
    /// Allocations (including reallocations) made.
    pub allocations: u64,
    /// Bytes allocated and not yet freed (negative when more was freed than allocated).
    pub live_bytes: i64,
}

impl CountingAlloc {
    /// Resets the counters and starts counting, on every thread.
    pub fn start() {
        ALLOCATIONS.store(0, Ordering::SeqCst);
        LIVE_BYTES.store(0, Ordering::SeqCst);
        COUNTING.store(true, Ordering::SeqCst);
    }

    /// Stops counting and returns the counts.
    pub fn stop() -> Counted {
        COUNTING.store(false, Ordering::SeqCst);
        Counted {
            allocations: ALLOCATIONS.load(Ordering::SeqCst),
            live_bytes: LIVE_BYTES.load(Ordering::SeqCst),
        }
    }
}

// SAFETY: every call is forwarded unchanged to the system allocator; the
// counters are side effects only.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
            LIVE_BYTES.fetch_add(layout.size() as i64, Ordering::Relaxed);
        }
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if COUNTING.load(Ordering::Relaxed) {
            LIVE_BYTES.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        }
        // SAFETY: `ptr` came from this allocator with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
            LIVE_BYTES.fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
        }
        // SAFETY: `ptr` came from this allocator with `layout`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// The resident set size of this process in bytes, where the platform tells
/// it (`/proc/self/statm` on Linux).
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}
