//! Waiting for the running calls of removed subscriptions, without ever
//! waiting for a call that cannot end while we wait.
//!
//! A caller outside every handler can simply wait. A handler that waits is
//! itself a running call, and two kinds of calls cannot end while it waits:
//! its own (the same thread), and the calls of handlers that are themselves
//! waiting, directly or through others, for one of the calls it is inside.
//! Waiting for those would deadlock (two plugins each unloading the other
//! from a handler). So handlers that wait register in a small wait-for
//! graph; each round of the wait counts, for each subscription, the calls
//! held by waiters that depend on this thread, and does not wait for them.
//! Those calls are never left half-done: they are blocked in this same kind
//! of wait and end after it returns. The guarantee that matters still holds
//! for them: their subscription is closed, so no new call starts.

use std::sync::Arc;
use std::time::Instant;

use crate::loom::{AtomicUsize, Mutex, Ordering};
use crate::subscription::{Subscription, SubscriptionId};
use crate::worker::{own_calls, running_keys, sub_key};

#[derive(Debug)]
struct Waiter {
    token: usize,
    /// The subscriptions whose calls this thread is inside.
    running: Vec<usize>,
    /// The subscriptions it waits for.
    waiting_for: Vec<usize>,
}

/// The handlers currently waiting for other handlers, per bus.
#[derive(Debug, Default)]
pub(crate) struct WaitGraph {
    waiters: Mutex<Vec<Waiter>>,
    next_token: AtomicUsize,
}

impl WaitGraph {
    pub(crate) fn new() -> WaitGraph {
        WaitGraph::default()
    }

    /// Waits until no call of `subs` runs but the ones that cannot end while
    /// this thread waits, or until `deadline`. Returns the subscriptions
    /// still running at the deadline (empty when it did not pass).
    pub(crate) fn wait_idle(
        &self,
        subs: &[Arc<Subscription>],
        deadline: Option<Instant>,
    ) -> Vec<SubscriptionId> {
        let running = running_keys();
        let mut still_running = Vec::new();
        if running.is_empty() {
            // Not inside a handler: nothing can be waiting for us.
            for sub in subs {
                if !sub.gate.wait_idle(|| 0, deadline) {
                    still_running.push(sub.id);
                }
            }
            return still_running;
        }
        // Relaxed: a unique number is all that is needed.
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let waiter =
            Waiter { token, running, waiting_for: subs.iter().map(|s| sub_key(s)).collect() };
        self.waiters.lock().push(waiter);
        let _registered = Deregister { graph: self, token };
        for sub in subs {
            let own = own_calls(sub);
            let key = sub_key(sub);
            if !sub.gate.wait_idle(|| own + self.calls_waiting_on(token, key), deadline) {
                still_running.push(sub.id);
            }
        }
        still_running
    }

    /// How many calls of subscription `key` are held by waiters that wait,
    /// directly or through other waiters, for a call `token` is inside.
    fn calls_waiting_on(&self, token: usize, key: usize) -> usize {
        let waiters = self.waiters.lock();
        let Some(me) = waiters.iter().find(|w| w.token == token) else { return 0 };
        // Calls that cannot end while `me` waits, grown to a fixed point.
        let mut blocked: Vec<usize> = me.running.clone();
        let mut dependent = vec![false; waiters.len()];
        loop {
            let mut grew = false;
            for (i, w) in waiters.iter().enumerate() {
                if w.token == token || dependent[i] {
                    continue;
                }
                if w.waiting_for.iter().any(|k| blocked.contains(k)) {
                    dependent[i] = true;
                    blocked.extend_from_slice(&w.running);
                    grew = true;
                }
            }
            if !grew {
                break;
            }
        }
        waiters
            .iter()
            .zip(&dependent)
            .filter(|(_, &d)| d)
            .map(|(w, _)| w.running.iter().filter(|&&k| k == key).count())
            .sum()
    }
}

struct Deregister<'a> {
    graph: &'a WaitGraph,
    token: usize,
}

impl Drop for Deregister<'_> {
    fn drop(&mut self) {
        self.graph.waiters.lock().retain(|w| w.token != self.token);
    }
}
