//! The last N events, recorded by the workers as they take them.
//!
//! Recording on the worker, one lock per batch, keeps history off the
//! publisher's path: the publisher neither clones the event's `Arc` nor, a
//! hundred events later, frees the event the ring pushes out (freeing
//! happens on the worker, which would free it anyway).

use std::collections::VecDeque;
use std::sync::Arc;

use switchboard_matcher::Pattern;

use crate::event::Event;
use crate::loom::Mutex;
use crate::queue::Queued;

#[derive(Debug)]
pub(crate) struct History {
    ring: Mutex<VecDeque<Arc<Event>>>,
    size: usize,
}

impl History {
    pub(crate) fn new(size: usize) -> History {
        History { ring: Mutex::new(VecDeque::with_capacity(size)), size }
    }

    /// Records a batch a worker has just taken, oldest first.
    pub(crate) fn record(&self, batch: &[Queued<Arc<Event>>]) {
        let fresh = &batch[batch.len().saturating_sub(self.size)..];
        let mut ring = self.ring.lock();
        for queued in fresh {
            if ring.len() == self.size {
                ring.pop_front();
            }
            ring.push_back(queued.item.clone());
        }
    }

    /// Up to `limit` events whose name matches `pattern`, most recent first.
    pub(crate) fn read(&self, limit: usize, pattern: Option<&Pattern>) -> Vec<Arc<Event>> {
        let ring = self.ring.lock();
        ring.iter()
            .rev()
            .filter(|e| pattern.map_or(true, |p| p.is_match(e.name())))
            .take(limit)
            .cloned()
            .collect()
    }
}
