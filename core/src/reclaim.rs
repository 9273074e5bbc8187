//! When a handler may be called, and when it is dropped.
//!
//! # The protocol
//!
//! Each worker has one slot, on its own cache line, naming the subscription
//! whose handler it is calling (0: none). A handler call is:
//!
//! 1. store the subscription's key in the slot;
//! 2. the light barrier (`barrier.rs`: a compiler fence where the kernel
//!    offers `membarrier`, else a full fence);
//! 3. load the subscription's `active` flag; if it is clear, empty the slot
//!    and skip the call;
//! 4. call the handler, then empty the slot (Release: the call's effects
//!    happen-before whoever sees the slot change).
//!
//! Unsubscribing clears `active` (under the registry lock, with the
//! snapshot swap), then runs the heavy barrier. After it, every worker's
//! next load of `active` sees it clear (so no new call starts), and every
//! worker that loaded it set before the barrier has its slot store visible
//! (the store came first). So a waiter that then sees no slot naming the
//! subscription knows no call is running and none will start, and the
//! handler can be dropped.
//!
//! On the hot path that is two plain stores and a plain load on the
//! worker's own line: no read-modify-write, no line shared between cores.
//! The per-batch cost is the snapshot load.
//!
//! # Reclamation
//!
//! This is epoch-based reclamation specialised to a fixed set of readers:
//! the workers are the only threads that call handlers, each reader has one
//! hazard slot, and a grace period is one heavy barrier plus a look at the
//! slots. A removed subscription is *retired*: it joins a list, and whoever
//! next reclaims (the unsubscriber at once, then every worker at the end of
//! each batch while the list is not empty) fences once for the entries not
//! yet fenced, looks at the slots, and drops the handlers no worker is
//! calling, outside every lock. On an idle bus the handler is dropped before
//! `unsubscribe` returns; one whose call was running goes at the end of that
//! worker's batch. The subscription's index entry (its id and pattern, no
//! handler) may stay in a large snapshot level until the level is rebuilt;
//! workers skip it after a plain load.
//!
//! crossbeam-epoch would do the grace periods, but not where and when the
//! destructors run: it batches garbage 64 objects per thread and collects
//! on later pins, on whichever thread, so a handler could outlive its
//! unsubscribe indefinitely on a quiet bus, and its `Drop` (user code)
//! would run inside the collector.

use std::sync::Arc;

use crossbeam_utils::CachePadded;

use crate::barrier::Barrier;
use crate::handler::SyncFn as Handler;
use crate::loom::{spin_hint, AtomicUsize, Mutex, Ordering};
use crate::subscription::Subscription;

/// How many times a reclaimer looks at a slot that names a retired
/// subscription before leaving it to a later reclaim.
const LOOKS: usize = if cfg!(loom) { 2 } else { 32 };

/// A subscription's identity in the worker slots and the wait graph.
pub(crate) fn key(sub: &Subscription) -> usize {
    sub as *const Subscription as usize
}

#[derive(Debug)]
struct Retired {
    sub: Arc<Subscription>,
    /// A heavy barrier has run since it was closed.
    fenced: bool,
}

/// The workers' call slots and the retired subscriptions.
#[derive(Debug)]
pub(crate) struct Calls {
    slots: Box<[CachePadded<AtomicUsize>]>,
    barrier: Barrier,
    retired: Mutex<Vec<Retired>>,
    /// How many subscriptions are retired: a hint, read after each batch.
    pending: AtomicUsize,
}

impl Calls {
    pub(crate) fn new(workers: usize) -> Calls {
        Calls {
            slots: (0..workers).map(|_| CachePadded::new(AtomicUsize::new(0))).collect(),
            barrier: Barrier::new(),
            retired: Mutex::new(Vec::new()),
            pending: AtomicUsize::new(0),
        }
    }

    /// Announces a call of `sub` by `worker`; `false` when it is closed and
    /// must not be called.
    #[inline]
    pub(crate) fn enter(&self, worker: usize, sub: &Subscription) -> bool {
        let slot = &self.slots[worker];
        slot.store(key(sub), Ordering::Release);
        self.barrier.light();
        if sub.is_active() {
            true
        } else {
            slot.store(0, Ordering::Release);
            false
        }
    }

    /// Ends a call begun by a successful [`enter`](Calls::enter).
    #[inline]
    pub(crate) fn exit(&self, worker: usize) {
        self.slots[worker].store(0, Ordering::Release);
    }

    /// The key of the subscription `worker` is calling (0: none).
    pub(crate) fn calling(&self, worker: usize) -> usize {
        self.slots[worker].load(Ordering::Acquire)
    }

    pub(crate) fn workers(&self) -> usize {
        self.slots.len()
    }

    /// Run after closing subscriptions: from its return, no worker starts a
    /// call of them, and every running call is visible in the slots.
    pub(crate) fn fence(&self) {
        self.barrier.heavy();
    }

    /// Hands closed subscriptions over to be reclaimed.
    pub(crate) fn retire(&self, subs: &[Arc<Subscription>]) {
        if subs.is_empty() {
            return;
        }
        let mut retired = self.retired.lock();
        retired.extend(subs.iter().map(|sub| Retired { sub: sub.clone(), fenced: false }));
        self.pending.store(retired.len(), Ordering::Relaxed);
    }

    /// Whether any subscription waits to be reclaimed.
    #[inline]
    pub(crate) fn has_retired(&self) -> bool {
        // Relaxed: a hint; a stale zero only delays reclaiming to a later
        // batch or to the unsubscriber's own attempt.
        self.pending.load(Ordering::Relaxed) != 0
    }

    /// Takes the handlers of the retired subscriptions that no worker can
    /// call any more, for the caller to drop outside every lock.
    pub(crate) fn reclaim(&self) -> Vec<Handler> {
        let mut list = std::mem::take(&mut *self.retired.lock());
        // Those a waiter has reclaimed itself need nothing more.
        list.retain(|r| !r.sub.is_claimed());
        if list.is_empty() {
            self.settle(list);
            return Vec::new();
        }
        if list.iter().any(|r| !r.fenced) {
            self.barrier.heavy();
            list.iter_mut().for_each(|r| r.fenced = true);
        }
        let mut handlers = Vec::new();
        list.retain(|r| {
            let k = key(&r.sub);
            if (0..self.slots.len()).any(|w| !self.seen_not_calling(w, k)) {
                return true;
            }
            // SAFETY: closed, fenced since, and no slot names it: no worker
            // calls it now or later.
            if let Some(handler) = unsafe { r.sub.take_handler() } {
                handlers.push(handler);
            }
            false
        });
        self.settle(list);
        handlers
    }

    /// Whether `worker`'s slot, looked at a few times, was once not naming
    /// `key`. After the heavy barrier that is proof that no call of it runs
    /// there or will: a slot names a subscription it will not call only for
    /// the instant a worker takes to see it closed and back out.
    fn seen_not_calling(&self, worker: usize, key: usize) -> bool {
        for _ in 0..LOOKS {
            if self.calling(worker) != key {
                return true;
            }
            spin_hint();
        }
        false
    }

    /// Puts back the entries a reclaim kept.
    fn settle(&self, mut kept: Vec<Retired>) {
        let mut retired = self.retired.lock();
        retired.append(&mut kept);
        self.pending.store(retired.len(), Ordering::Relaxed);
    }

    /// Takes the handlers of `subs` but those whose keys are in `held`, for
    /// a waiter that has seen, since a heavy barrier that followed their
    /// close, every other worker's slot not naming them (`wait.rs`). A slot
    /// may still name one for an instant after that: a worker that
    /// announces a call, sees the subscription closed and backs out. Such
    /// an announcement never calls the handler, so it does not hold it back.
    pub(crate) fn reclaim_seen_idle(
        &self,
        subs: &[Arc<Subscription>],
        held: &[usize],
    ) -> Vec<Handler> {
        subs.iter()
            .filter(|s| !held.contains(&key(s)))
            // SAFETY: see above; the claim makes the take happen once.
            .filter_map(|s| unsafe { s.take_handler() })
            .collect()
    }

    /// Takes every retired subscription, once the workers have all exited.
    pub(crate) fn take_all(&self) -> Vec<Arc<Subscription>> {
        let list = std::mem::take(&mut *self.retired.lock());
        self.pending.store(0, Ordering::Relaxed);
        list.into_iter().map(|r| r.sub).collect()
    }
}
