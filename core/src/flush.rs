//! Flush epochs: knowing when every event accepted before a moment has been
//! dispatched, without a counter per event that workers would fight over.
//!
//! Each accepted event is counted in one of two buckets, chosen by the parity
//! of the current epoch. `flush` advances the epoch (so new events go to the
//! other bucket) and waits for the old bucket to empty. A publisher re-reads
//! the epoch after counting itself and retries if it moved, so its count is
//! always in the bucket of an epoch that was current *after* the count: any
//! flush that starts after the publish returned waits for it. Flushes are
//! serialised so that a bucket is never reused while a flush waits on it.
//!
//! A flush with a deadline may give up and leave its bucket non-empty. So
//! before advancing, a flush first waits for the bucket new events are
//! about to go to: whatever is still in it was published before this flush
//! (by the earlier flush that gave up), and once it is empty every event
//! counted into it from then on is newer than this flush.
//!
//! An event published by a handler is counted in its parent's bucket, so a
//! flush waits for the cascades of the events it waits for.
//! Modelled in `loom_tests.rs`.

use std::time::Instant;

use crossbeam_utils::CachePadded;

use crate::loom::{backoff, fence, AtomicUsize, Mutex, Ordering};

#[derive(Debug)]
pub(crate) struct Epochs {
    epoch: AtomicUsize,
    inflight: [CachePadded<AtomicUsize>; 2],
    flushing: Mutex<()>,
}

impl Epochs {
    pub(crate) fn new() -> Epochs {
        Epochs {
            epoch: AtomicUsize::new(0),
            inflight: [
                CachePadded::new(AtomicUsize::new(0)),
                CachePadded::new(AtomicUsize::new(0)),
            ],
            flushing: Mutex::new(()),
        }
    }

    /// Counts one event in; returns its bucket, to hand back to [`end`](Epochs::end).
    #[inline]
    pub(crate) fn begin(&self) -> usize {
        loop {
            // SeqCst: the count must be ordered against a flusher's epoch
            // advance and its read of the bucket (see the module docs).
            let epoch = self.epoch.load(Ordering::SeqCst);
            let bucket = epoch & 1;
            self.inflight[bucket].fetch_add(1, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            if self.epoch.load(Ordering::SeqCst) == epoch {
                return bucket;
            }
            self.inflight[bucket].fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Counts one event in, in the same bucket as an event still in flight
    /// (its parent): that bucket cannot be waited out, or reused, while the
    /// parent is counted in it, so no epoch check is needed.
    #[inline]
    pub(crate) fn begin_in(&self, bucket: usize) -> usize {
        // Relaxed is enough: the parent's own count keeps any flusher of
        // this bucket waiting until after the parent ends (a Release that
        // follows this increment in program order).
        self.inflight[bucket].fetch_add(1, Ordering::Relaxed);
        bucket
    }

    /// [`begin_in`](Epochs::begin_in) for `n` events at once.
    #[inline]
    pub(crate) fn begin_in_n(&self, bucket: usize, n: usize) {
        // Relaxed: as `begin_in`.
        self.inflight[bucket].fetch_add(n, Ordering::Relaxed);
    }

    /// Counts `n` events of `bucket` out (dispatched, or never accepted).
    #[inline]
    pub(crate) fn end(&self, bucket: usize, n: usize) {
        if n > 0 {
            // Release: the dispatch's effects happen-before a flusher that
            // reads the bucket empty.
            self.inflight[bucket].fetch_sub(n, Ordering::Release);
        }
    }

    /// Events counted in and not yet out, in both buckets.
    pub(crate) fn pending(&self) -> u64 {
        (self.inflight[0].load(Ordering::SeqCst) + self.inflight[1].load(Ordering::SeqCst)) as u64
    }

    /// Returns once every event counted in before the call is counted out;
    /// with a deadline, `Err(pending)` when it passed first.
    pub(crate) fn flush(&self, deadline: Option<Instant>) -> Result<(), u64> {
        let Some(_serial) = self.flushing.lock_until(deadline) else { return Err(0) };
        let current = self.epoch.load(Ordering::SeqCst) & 1;
        // Leftovers of a flush that gave up (see the module docs).
        self.wait_empty(current ^ 1, deadline)?;
        let old = self.epoch.fetch_add(1, Ordering::SeqCst) & 1;
        fence(Ordering::SeqCst);
        self.wait_empty(old, deadline)
    }

    fn wait_empty(&self, bucket: usize, deadline: Option<Instant>) -> Result<(), u64> {
        let mut round = 0;
        loop {
            let pending = self.inflight[bucket].load(Ordering::SeqCst);
            if pending == 0 {
                return Ok(());
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(pending as u64);
            }
            backoff(&mut round);
        }
    }
}
