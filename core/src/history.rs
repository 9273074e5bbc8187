//! The last N accepted events, in publish order.
//!
//! A publisher takes the next number of a per-bus publish sequence once its
//! event is sure to be accepted (its queue slot is reserved) and before the
//! event can reach a worker, and writes the event into slot `seq % N` of a
//! ring. The sequence is one atomic counter, so its order is total and
//! agrees with each publishing thread's own order; each slot has its own
//! small lock, so publishers write different slots without meeting. A reader
//! walks back from the newest number and keeps each slot that still holds
//! the number it expects.
//!
//! Because the event is in the ring before any worker can take it, a reader
//! that subscribes first and reads history second misses nothing: an event
//! not yet in the history it read is matched against a snapshot that holds
//! the new subscription.
//!
//! The event a slot pushes out is dropped by the publisher, outside the
//! slot's lock.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use crossbeam_utils::CachePadded;
use switchboard_matcher::Pattern;

use crate::event::Event;
use crate::loom::{AtomicU64, Mutex, Ordering};

#[derive(Debug, Default)]
struct Slot {
    /// The publish sequence number of `event`, plus one (0: never written).
    stamp: u64,
    event: Option<Arc<Event>>,
}

#[derive(Debug)]
pub(crate) struct History {
    slots: Box<[CachePadded<Mutex<Slot>>]>,
    next: AtomicU64,
}

impl History {
    pub(crate) fn new(size: usize) -> History {
        History {
            slots: (0..size).map(|_| CachePadded::new(Mutex::new(Slot::default()))).collect(),
            next: AtomicU64::new(0),
        }
    }

    /// Records an accepted event as the newest.
    pub(crate) fn record(&self, event: &Arc<Event>) {
        // Relaxed: the counter's modification order alone is the total
        // order, and it agrees with each thread's program order (coherence).
        // Readers synchronise through the slot's lock.
        let seq = self.next.fetch_add(1, Ordering::Relaxed);
        event.set_sequence(seq);
        let slot = &self.slots[(seq % self.slots.len() as u64) as usize];
        let evicted = {
            let mut slot = slot.lock();
            if slot.stamp > seq {
                // A full lap of newer events went by while we were getting
                // here: ours is already out of the window.
                return;
            }
            slot.stamp = seq + 1;
            slot.event.replace(event.clone())
        };
        if let Some(old) = evicted {
            // Outside the lock. A payload whose `Drop` panics must not make
            // an unrelated publish panic.
            if let Err(panic) = catch_unwind(AssertUnwindSafe(move || drop(old))) {
                crate::worker::discard_panic(panic);
                tracing::error!("an event's payload panicked while it was dropped from history");
            }
        }
    }

    /// Up to `limit` events whose name matches `pattern`, most recent
    /// first, *settled*: it first waits until every event numbered below
    /// the current end has been written (a publisher between taking its
    /// number and writing its slot takes nanoseconds), so the result holds
    /// every matching event numbered below the returned end, as far back as
    /// the ring and `limit` go, with no hole. For replaying history before
    /// live events (the returned end is the seam).
    pub(crate) fn read_settled(
        &self,
        limit: usize,
        pattern: Option<&Pattern>,
    ) -> (Vec<Arc<Event>>, u64) {
        // SeqCst: the end is read after the caller's subscribe; every event
        // numbered at or above it is then matched against a snapshot
        // holding the subscription.
        let end = self.next.load(Ordering::SeqCst);
        let start = end.saturating_sub(self.slots.len() as u64);
        for seq in start..end {
            let slot = &self.slots[(seq % self.slots.len() as u64) as usize];
            let mut round = 0;
            while slot.lock().stamp < seq + 1 {
                crate::loom::backoff(&mut round);
            }
        }
        (self.read_from(end, limit, pattern), end)
    }

    /// Up to `limit` events whose name matches `pattern`, most recent first.
    pub(crate) fn read(&self, limit: usize, pattern: Option<&Pattern>) -> Vec<Arc<Event>> {
        // Relaxed: see `record`; an event whose publish returned before this
        // call is seen through the happens-before that ordered the calls.
        let end = self.next.load(Ordering::Relaxed);
        self.read_from(end, limit, pattern)
    }

    fn read_from(&self, end: u64, limit: usize, pattern: Option<&Pattern>) -> Vec<Arc<Event>> {
        let start = end.saturating_sub(self.slots.len() as u64);
        let mut out = Vec::new();
        for seq in (start..end).rev() {
            if out.len() == limit {
                break;
            }
            let event = {
                let slot = self.slots[(seq % self.slots.len() as u64) as usize].lock();
                // A stamp below ours: that publish has not written yet (it
                // has not returned). Above ours: overwritten meanwhile.
                if slot.stamp != seq + 1 {
                    continue;
                }
                slot.event.clone()
            };
            if let Some(event) = event {
                if pattern.map_or(true, |p| p.is_match(event.name())) {
                    out.push(event);
                }
            }
        }
        out
    }
}
