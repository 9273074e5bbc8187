//! The bounded queue in front of the NATS client: local dispatch never
//! waits for the network, and what does not fit is dropped lowest priority
//! first, and counted.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use parking_lot::Mutex;
use switchboard::Priority;
use tokio::sync::Notify;

/// A message ready to publish.
#[derive(Clone, Debug)]
pub(crate) struct Outgoing {
    pub(crate) subject: String,
    pub(crate) headers: async_nats::HeaderMap,
    pub(crate) payload: Bytes,
    pub(crate) priority: Priority,
}

#[derive(Debug, Default)]
struct Lanes {
    lanes: [VecDeque<Outgoing>; 3],
    len: usize,
}

/// Three lanes sharing one capacity, served highest priority first.
#[derive(Debug)]
pub(crate) struct Outbox {
    lanes: Mutex<Lanes>,
    capacity: usize,
    ready: Notify,
    /// Taken and not yet settled (sent, or put back).
    in_flight: AtomicU64,
    settled: Notify,
    pub(crate) dropped: AtomicU64,
}

impl Outbox {
    pub(crate) fn new(capacity: usize) -> Outbox {
        Outbox {
            lanes: Mutex::new(Lanes::default()),
            capacity: capacity.max(1),
            ready: Notify::new(),
            in_flight: AtomicU64::new(0),
            settled: Notify::new(),
            dropped: AtomicU64::new(0),
        }
    }

    /// Queues `item` at the back of its lane (`front`: at the front, for a
    /// message put back to be retried). When full, the oldest message of
    /// the lowest lane below `item`'s makes room; with none, `item` is the
    /// one dropped. Every drop is counted.
    pub(crate) fn push(&self, item: Outgoing, front: bool) {
        {
            let mut lanes = self.lanes.lock();
            if lanes.len >= self.capacity {
                let below = item.priority as usize;
                let victim = lanes.lanes[..below].iter_mut().find_map(VecDeque::pop_front);
                self.dropped.fetch_add(1, Ordering::Relaxed);
                match victim {
                    Some(victim) => {
                        tracing::debug!(subject = %victim.subject, "bridge outbox full: dropped a lower-priority message");
                        lanes.len -= 1;
                    }
                    None => {
                        tracing::debug!(subject = %item.subject, "bridge outbox full: message dropped");
                        return;
                    }
                }
            }
            let lane = &mut lanes.lanes[item.priority as usize];
            if front {
                lane.push_front(item);
            } else {
                lane.push_back(item);
            }
            lanes.len += 1;
        }
        self.ready.notify_one();
    }

    /// The next message, highest priority first; counts it in flight until
    /// [`settle`](Outbox::settle).
    pub(crate) fn pop(&self) -> Option<Outgoing> {
        let mut lanes = self.lanes.lock();
        let item = lanes.lanes.iter_mut().rev().find_map(VecDeque::pop_front)?;
        lanes.len -= 1;
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        Some(item)
    }

    /// A message taken by `pop` was sent, dropped or put back.
    pub(crate) fn settle(&self) {
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.settled.notify_waiters();
    }

    /// Waits until a message may be ready.
    pub(crate) async fn ready(&self) {
        self.ready.notified().await;
    }

    pub(crate) fn len(&self) -> usize {
        self.lanes.lock().len
    }

    /// Waits until nothing is queued or in flight.
    pub(crate) async fn drained(&self) {
        loop {
            let settled = self.settled.notified();
            if self.len() == 0 && self.in_flight.load(Ordering::SeqCst) == 0 {
                return;
            }
            // A settle can race the check above; wake up now and then anyway.
            let _ = tokio::time::timeout(std::time::Duration::from_millis(20), settled).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(n: u32, priority: Priority) -> Outgoing {
        Outgoing {
            subject: n.to_string(),
            headers: async_nats::HeaderMap::new(),
            payload: Bytes::new(),
            priority,
        }
    }

    fn drain(outbox: &Outbox) -> Vec<String> {
        std::iter::from_fn(|| {
            let m = outbox.pop()?;
            outbox.settle();
            Some(m.subject)
        })
        .collect()
    }

    #[test]
    fn full_outbox_drops_the_lowest_priority_first_and_counts() {
        let outbox = Outbox::new(3);
        outbox.push(msg(1, Priority::Low), false);
        outbox.push(msg(2, Priority::Normal), false);
        outbox.push(msg(3, Priority::Low), false);
        // Full: a High message evicts the oldest Low one.
        outbox.push(msg(4, Priority::High), false);
        assert_eq!(outbox.dropped.load(Ordering::Relaxed), 1);
        // A Low message has nothing lower to evict: it is dropped itself.
        outbox.push(msg(5, Priority::Low), false);
        assert_eq!(outbox.dropped.load(Ordering::Relaxed), 2);
        // Normal evicts the remaining Low.
        outbox.push(msg(6, Priority::Normal), false);
        assert_eq!(outbox.dropped.load(Ordering::Relaxed), 3);
        assert_eq!(drain(&outbox), ["4", "2", "6"]);
    }

    #[test]
    fn put_back_messages_go_first_in_their_lane() {
        let outbox = Outbox::new(10);
        outbox.push(msg(1, Priority::Normal), false);
        outbox.push(msg(2, Priority::Normal), false);
        let first = outbox.pop().expect("queued");
        outbox.push(first, true);
        outbox.settle();
        assert_eq!(drain(&outbox), ["1", "2"]);
    }
}
