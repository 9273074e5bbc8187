//! Waiting for the running calls of removed subscriptions, without ever
//! waiting for a call that cannot end while we wait.
//!
//! A caller outside every handler can simply wait. A handler that waits is
//! itself a running call, and two kinds of calls cannot end while it waits:
//! its own (the same thread), and the calls of handlers that are themselves
//! waiting, directly or through others, for one of the calls it is inside.
//! Waiting for those would deadlock (two plugins each unloading the other
//! from a handler). So handlers that wait register in a small wait-for
//! graph; each round of the wait looks at the workers' call slots
//! (`reclaim.rs`) and does not wait for the workers of waiters that depend
//! on this thread.
//! Those calls are never left half-done: they are blocked in this same kind
//! of wait and end after it returns. The guarantee that matters still holds
//! for them: their subscription is closed, so no new call starts.

use std::sync::Arc;
use std::time::Instant;

use crate::loom::{backoff, AtomicUsize, Mutex, Ordering};
use crate::reclaim::{key, Calls};
use crate::subscription::{Subscription, SubscriptionId};

/// What [`WaitGraph::wait_idle`] saw.
#[derive(Debug, Default)]
pub(crate) struct Waited {
    /// The subscriptions with calls still running at the deadline.
    pub(crate) still_running: Vec<SubscriptionId>,
    /// The keys some worker's slot named at the last look (calls that
    /// could not be waited for, or still running at the deadline). Every
    /// other subscription was seen idle since the barrier.
    pub(crate) held: Vec<usize>,
}

#[derive(Debug)]
struct Waiter {
    token: usize,
    /// The worker this waiter is, if it is one (else a blocking
    /// subscription's thread or a tokio task in a handler).
    worker: Option<usize>,
    /// The subscription whose call it is in.
    running: usize,
    /// The subscriptions it waits for.
    waiting_for: Vec<usize>,
}

/// The handlers currently waiting for other handlers, per bus.
#[derive(Debug, Default)]
pub(crate) struct WaitGraph {
    waiters: Mutex<Vec<Waiter>>,
    next_token: AtomicUsize,
}

/// A waiter's place in the graph, removed when dropped.
pub(crate) struct Registration<'a> {
    graph: &'a WaitGraph,
    token: usize,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.graph.waiters.lock().retain(|w| w.token != self.token);
    }
}

impl WaitGraph {
    pub(crate) fn new() -> WaitGraph {
        WaitGraph::default()
    }

    /// Registers this thread as waiting for `waiting_for` while inside the
    /// call of subscription `running` (0: not inside a handler of this bus,
    /// then nothing can wait for it and it does not register).
    pub(crate) fn register(
        &self,
        worker: Option<usize>,
        running: usize,
        waiting_for: Vec<usize>,
    ) -> Option<Registration<'_>> {
        if running == 0 {
            return None;
        }
        // Relaxed: a unique number is all that is needed.
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        self.waiters.lock().push(Waiter { token, worker, running, waiting_for });
        Some(Registration { graph: self, token })
    }

    /// Waits until no inline call of `subs` (closed by the caller) runs but
    /// the ones that cannot end while this thread waits, or until
    /// `deadline`. `me` is this thread's worker index when it is a worker of
    /// this bus; `registered`, its place in the graph when it is in a
    /// handler.
    pub(crate) fn wait_idle(
        &self,
        calls: &Calls,
        subs: &[Arc<Subscription>],
        me: Option<usize>,
        registered: Option<&Registration<'_>>,
        deadline: Option<Instant>,
    ) -> Waited {
        if subs.is_empty() {
            return Waited::default();
        }
        // From here no call of `subs` starts, and the running ones are in
        // the slots (`reclaim.rs`).
        calls.fence();
        let keys: Vec<usize> = subs.iter().map(|s| key(s)).collect();
        let mut round = 0;
        loop {
            // (worker, key) of the workers calling one of `subs`.
            let named: Vec<(usize, usize)> = (0..calls.workers())
                .map(|w| (w, calls.calling(w)))
                .filter(|(_, k)| keys.contains(k))
                .collect();
            // This thread's own call cannot end while it waits, nor can
            // those of the waiters that depend on it.
            let excused: Vec<usize> = match registered {
                Some(r) if named.iter().any(|&(w, _)| Some(w) != me) => {
                    self.dependents(r.token).into_iter().filter_map(|(w, _)| w).collect()
                }
                _ => Vec::new(),
            };
            let busy = named.iter().filter(|&&(w, _)| Some(w) != me && !excused.contains(&w));
            let timed_out = deadline.is_some_and(|d| Instant::now() >= d);
            if busy.clone().next().is_none() || timed_out {
                let still_running = if timed_out {
                    subs.iter()
                        .filter(|s| busy.clone().any(|&(_, k)| k == key(s)))
                        .map(|s| s.id)
                        .collect()
                } else {
                    Vec::new()
                };
                let held = named.iter().map(|&(_, k)| k).collect();
                return Waited { still_running, held };
            }
            backoff(&mut round);
        }
    }

    /// How many calls of subscription `key` are held by waiters that
    /// depend on `registered` (they cannot end while it waits).
    pub(crate) fn held_by_dependents(
        &self,
        registered: Option<&Registration<'_>>,
        key: usize,
    ) -> usize {
        registered
            .map_or(0, |r| self.dependents(r.token).iter().filter(|&&(_, k)| k == key).count())
    }

    /// The waiters that wait, directly or through other waiters, for the
    /// call `token` is in: (worker, running call) of each.
    fn dependents(&self, token: usize) -> Vec<(Option<usize>, usize)> {
        let waiters = self.waiters.lock();
        let Some(me) = waiters.iter().find(|w| w.token == token) else { return Vec::new() };
        // Calls that cannot end while `me` waits, grown to a fixed point.
        let mut blocked: Vec<usize> = vec![me.running];
        let mut dependent = vec![false; waiters.len()];
        loop {
            let mut grew = false;
            for (i, w) in waiters.iter().enumerate() {
                if w.token == token || dependent[i] {
                    continue;
                }
                if w.waiting_for.iter().any(|k| blocked.contains(k)) {
                    dependent[i] = true;
                    blocked.push(w.running);
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
            .map(|(w, _)| (w.worker, w.running))
            .collect()
    }
}
