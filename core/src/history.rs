//! The last N events, in a ring of individually locked slots: publishers
//! claim a slot with one atomic increment and contend only when they wrap
//! onto the same slot at the same moment.

use std::sync::Arc;

use switchboard_matcher::Pattern;

use crate::event::Event;
use crate::loom::{AtomicU64, Mutex, Ordering};

/// A sequence number and the event recorded under it.
type Slot = Option<(u64, Arc<Event>)>;

#[derive(Debug)]
pub(crate) struct History {
    slots: Box<[Mutex<Slot>]>,
    head: AtomicU64,
}

impl History {
    pub(crate) fn new(size: usize) -> History {
        History { slots: (0..size).map(|_| Mutex::new(None)).collect(), head: AtomicU64::new(0) }
    }

    #[inline]
    pub(crate) fn record(&self, event: &Arc<Event>) {
        // Relaxed: the slot's mutex orders the write; the sequence only
        // needs to be unique.
        let seq = self.head.fetch_add(1, Ordering::Relaxed);
        let slot = &self.slots[(seq % self.slots.len() as u64) as usize];
        let old = slot.lock().replace((seq, event.clone()));
        drop(old);
    }

    /// Up to `limit` events whose name matches `pattern`, most recent first.
    pub(crate) fn read(&self, limit: usize, pattern: Option<&Pattern>) -> Vec<Arc<Event>> {
        let head = self.head.load(Ordering::Relaxed);
        let len = self.slots.len() as u64;
        let mut out = Vec::new();
        for seq in (head.saturating_sub(len)..head).rev() {
            if out.len() >= limit {
                break;
            }
            let slot = self.slots[(seq % len) as usize].lock();
            if let Some((s, event)) = slot.as_ref() {
                if *s == seq && pattern.map_or(true, |p| p.is_match(event.name())) {
                    out.push(event.clone());
                }
            }
        }
        out
    }
}
