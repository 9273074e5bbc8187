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

use std::sync::Arc;

use crossbeam_utils::CachePadded;
use switchboard_matcher::Pattern;

use crate::event::Event;
use crate::loom::Mutex;

#[derive(Debug, Default)]
struct Slot {
    /// The publish sequence number of `event`, plus one (0: never written).
    stamp: u64,
    event: Option<Arc<Event>>,
}

#[derive(Debug)]
pub(crate) struct History {
    slots: Box<[CachePadded<Mutex<Slot>>]>,
}

impl History {
    pub(crate) fn new(size: usize) -> History {
        History {
            slots: (0..size).map(|_| CachePadded::new(Mutex::new(Slot::default()))).collect(),
        }
    }

    /// Records an accepted event, numbered `seq` by the bus's publish
    /// sequence, as the newest.
    ///
    /// Returns the event it evicted, for the caller to let go of outside
    /// the lock (the publisher recycles its block; a payload whose `Drop`
    /// panics must not make an unrelated publish panic).
    #[must_use]
    pub(crate) fn record(&self, event: &Arc<Event>, seq: u64) -> Option<Arc<Event>> {
        let slot = &self.slots[(seq % self.slots.len() as u64) as usize];
        let mut slot = slot.lock();
        if slot.stamp > seq {
            // A full lap of newer events went by while we were getting
            // here: ours is already out of the window.
            return None;
        }
        slot.stamp = seq + 1;
        slot.event.replace(event.clone())
    }

    /// The events numbered in `[start, end)` whose name matches `pattern`,
    /// most recent first, where `start` is as far back as the ring and
    /// `limit` allow with no hole: *settled*, it walks back from `end` (the
    /// bus's next sequence number, read by the caller after it subscribed),
    /// waits at each slot until the event numbered for it has been written
    /// (a publisher between taking its number and writing its slot takes
    /// nanoseconds, unless it is descheduled), and stops at the first slot a
    /// newer lap has overwritten. Newest first, so a flood that laps the
    /// ring meanwhile costs the oldest events of the window, never a block
    /// in its middle: the window is contiguous whatever the number of
    /// publishers. Returns the events and `start`. For replaying history
    /// before live events (`end` is the seam).
    pub(crate) fn read_settled(
        &self,
        end: u64,
        limit: usize,
        pattern: Option<&Pattern>,
    ) -> (Vec<Arc<Event>>, u64) {
        let len = self.slots.len() as u64;
        let oldest = end.saturating_sub(len);
        let mut out = Vec::new();
        let mut start = end;
        while start > oldest && out.len() < limit {
            let seq = start - 1;
            let slot = &self.slots[(seq % len) as usize];
            let mut round = 0;
            let event = loop {
                let slot = slot.lock();
                match slot.stamp.cmp(&(seq + 1)) {
                    std::cmp::Ordering::Equal => break slot.event.clone(),
                    // A newer lap overwrote it (or its publisher, finding
                    // that lap there already, never wrote).
                    std::cmp::Ordering::Greater => break None,
                    std::cmp::Ordering::Less => {}
                }
                drop(slot);
                crate::loom::backoff(&mut round);
            };
            let Some(event) = event else { break };
            start = seq;
            if pattern.is_none_or(|p| p.is_match(event.name())) {
                out.push(event);
            }
        }
        (out, start)
    }

    /// Up to `limit` events numbered below `end` that `keep` keeps, most
    /// recent first; and whether a newer lap had overwritten a slot of the
    /// window meanwhile (a flood of a ring's length went by while this
    /// read: the caller may read again from a newer `end`). `keep` runs
    /// outside the slots' locks.
    pub(crate) fn read(
        &self,
        end: u64,
        limit: usize,
        keep: impl Fn(&Event) -> bool,
    ) -> (Vec<Arc<Event>>, bool) {
        let start = end.saturating_sub(self.slots.len() as u64);
        let mut out = Vec::new();
        let mut lapped = false;
        for seq in (start..end).rev() {
            if out.len() == limit {
                break;
            }
            let event = {
                let slot = self.slots[(seq % self.slots.len() as u64) as usize].lock();
                // A stamp below ours: that publish has not written yet (it
                // has not returned). Above ours: overwritten meanwhile.
                if slot.stamp != seq + 1 {
                    lapped |= slot.stamp > seq + 1;
                    continue;
                }
                slot.event.clone()
            };
            if let Some(event) = event {
                if keep(&event) {
                    out.push(event);
                }
            }
        }
        (out, lapped)
    }
}
