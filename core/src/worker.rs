//! The worker loop: take a batch from the lane the fairness rule picks,
//! load the snapshot once, dispatch every event of the batch, repeat; spin
//! briefly when there is nothing, then park.
//!
//! Every piece of user code a worker runs is inside `catch_unwind`: the
//! handler call, the reporting of its failure (an error's `Display`, the
//! error hook, dropping the error or the panic payload) and the drop of the
//! event (a payload's `Drop`). A panic there is counted and logged, the
//! event still counts as dispatched for `flush`, and the worker goes on.

use std::cell::RefCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use crate::error::HandlerPanic;
use crate::event::Event;
use crate::loom::{idle_turn, thread_local};
use crate::queue::Queued;
use crate::shared::Shared;
use crate::snapshot::{Scratch, Snapshot};
use crate::stats::WorkerCounters;

/// What a thread knows about the bus it works for.
#[derive(Default)]
pub(crate) struct Context {
    /// The id of the bus this thread is a worker of (0: none).
    pub(crate) bus: usize,
    /// This worker's index (its call slot).
    pub(crate) worker: usize,
    /// The bus, for [`Bus::current`](crate::Bus::current).
    pub(crate) shared: Option<Arc<Shared>>,
    /// The depth of the event being handled.
    pub(crate) depth: u32,
    /// The flush bucket of the event being handled: events its handlers
    /// publish are counted in the same one, so a flush waits for cascades.
    pub(crate) bucket: usize,
    /// The bus whose mailbox handler this thread is running, when it is not
    /// one of its workers (a blocking subscription's thread, a tokio task).
    pub(crate) handler_bus: usize,
    /// The mailbox subscription whose handler this thread is running.
    pub(crate) mailbox_call: usize,
}

/// Marks this thread as running a mailbox subscription's handler for the
/// guard's lifetime: publishes from it are one level deeper and in the
/// event's flush bucket, `flush` and `shutdown` from it do not wait on it,
/// and `Bus::current` finds the bus. The previous context comes back on drop
/// (a tokio thread runs tasks of many buses).
pub(crate) struct HandlerScope {
    saved: Option<Saved>,
}

/// What a [`HandlerScope`] changes: handler bus, shared, depth, bucket,
/// mailbox call.
type Saved = (usize, Option<Arc<Shared>>, u32, usize, usize);

impl HandlerScope {
    pub(crate) fn enter(
        shared: &Arc<Shared>,
        sub: &crate::subscription::Subscription,
        event: &Event,
        bucket: usize,
    ) -> HandlerScope {
        let saved = CONTEXT.with(|c| {
            let mut c = c.borrow_mut();
            let saved = (c.handler_bus, c.shared.clone(), c.depth, c.bucket, c.mailbox_call);
            if c.bus != shared.id {
                c.handler_bus = shared.id;
                c.shared = Some(shared.clone());
            }
            c.depth = event.depth();
            c.bucket = bucket;
            c.mailbox_call = crate::reclaim::key(sub);
            saved
        });
        HandlerScope { saved: Some(saved) }
    }
}

impl Drop for HandlerScope {
    fn drop(&mut self) {
        if let Some(saved) = self.saved.take() {
            CONTEXT.with(|c| restore(&mut c.borrow_mut(), saved));
        }
    }
}

/// Puts back what a [`HandlerScope`] changed (the shared bus only on a
/// thread that is not a worker: a worker's stays its own bus).
fn restore(c: &mut Context, saved: Saved) {
    let (handler_bus, shared, depth, bucket, mailbox_call) = saved;
    c.handler_bus = handler_bus;
    if c.bus == 0 {
        c.shared = shared;
    }
    c.depth = depth;
    c.bucket = bucket;
    c.mailbox_call = mailbox_call;
}

/// The handler context of this thread, to carry into work it hands to
/// another thread on its behalf (an `_async` form's blocking step): there,
/// waiting excuses the call it is part of, as it would here.
#[cfg(feature = "tokio")]
pub(crate) struct CarriedContext {
    saved: Saved,
}

#[cfg(feature = "tokio")]
impl CarriedContext {
    /// This thread's context, if it is running a mailbox handler of bus
    /// `id` (the calls that can hand work to another thread and wait).
    pub(crate) fn capture(id: usize) -> Option<CarriedContext> {
        CONTEXT.with(|c| {
            let c = c.borrow();
            (c.handler_bus == id && c.mailbox_call != 0).then(|| CarriedContext {
                saved: (c.handler_bus, c.shared.clone(), c.depth, c.bucket, c.mailbox_call),
            })
        })
    }

    /// Makes this thread run in the carried context until the guard drops.
    pub(crate) fn enter(self) -> HandlerScope {
        let saved = CONTEXT.with(|c| {
            let mut c = c.borrow_mut();
            let saved = (c.handler_bus, c.shared.clone(), c.depth, c.bucket, c.mailbox_call);
            restore(&mut c, self.saved);
            saved
        });
        HandlerScope { saved: Some(saved) }
    }
}

/// Whether this thread is running a handler of the bus `id` (as one of its
/// workers, or in a mailbox call): it must not wait for that bus's work.
pub(crate) fn in_handler_of(id: usize) -> bool {
    CONTEXT.with(|c| {
        let c = c.borrow();
        c.bus == id || c.handler_bus == id
    })
}

/// The handler context of this thread for bus `id`: the depth and flush
/// bucket of the event being handled.
pub(crate) fn parent_of(id: usize) -> Option<(u32, usize)> {
    CONTEXT.with(|c| {
        let c = c.borrow();
        (c.bus == id || c.handler_bus == id).then_some((c.depth + 1, c.bucket))
    })
}

/// The mailbox subscription whose handler this thread is running (0: none).
pub(crate) fn mailbox_call() -> usize {
    CONTEXT.with(|c| c.borrow().mailbox_call)
}

thread_local! {
    pub(crate) static CONTEXT: RefCell<Context> = RefCell::new(Context::default());
}

/// This thread's worker index, if it is a worker of the bus `id`.
pub(crate) fn worker_index(id: usize) -> Option<usize> {
    CONTEXT.with(|c| {
        let c = c.borrow();
        (c.bus == id).then_some(c.worker)
    })
}

/// Drops a caught panic's payload; a payload whose own `Drop` panics is
/// leaked rather than allowed to unwind further.
pub(crate) fn discard_panic(payload: Box<dyn std::any::Any + Send>) {
    if let Err(again) = catch_unwind(AssertUnwindSafe(move || drop(payload))) {
        std::mem::forget(again);
    }
}

/// Picks which lane to serve: the highest non-empty one, unless a lane has
/// been passed over `limit` times in a row while non-empty.
#[derive(Debug, Default)]
pub(crate) struct Fairness {
    skipped: [u32; 3],
}

impl Fairness {
    pub(crate) fn pick(&mut self, nonempty: [bool; 3], limit: u32) -> Option<usize> {
        let starving = (0..3)
            .filter(|&l| nonempty[l] && self.skipped[l] >= limit)
            .max_by_key(|&l| self.skipped[l]);
        let lane = starving.or_else(|| (0..3).rev().find(|&l| nonempty[l]))?;
        for (l, skipped) in self.skipped.iter_mut().enumerate() {
            if l == lane || !nonempty[l] {
                *skipped = 0;
            } else {
                *skipped += 1;
            }
        }
        Some(lane)
    }
}

pub(crate) fn run(shared: Arc<Shared>, index: usize) {
    CONTEXT.with(|c| {
        let mut c = c.borrow_mut();
        c.bus = shared.id;
        c.worker = index;
        c.shared = Some(shared.clone());
    });
    let counters = &shared.counters.workers[index];
    let mut fairness = Fairness::default();
    let mut batch: Vec<Queued<Arc<Event>>> = Vec::with_capacity(shared.config.batch_size);
    let mut scratch = Scratch::default();
    let mut idle = 0u32;
    loop {
        // Ordered subscriptions' mailboxes first: their events were
        // published before anything still in the lanes.
        if let Some(sub) = shared.ready.pop() {
            idle = 0;
            crate::mailbox::run_on_worker(&shared, &sub, shared.config.batch_size);
            continue;
        }
        if let Some(lane) = fairness.pick(shared.queues.nonempty(), shared.config.starvation_limit)
        {
            shared.queues.take(lane, shared.config.batch_size, &mut batch);
        }
        if !batch.is_empty() {
            idle = 0;
            // Load after taking the batch: an event published after a
            // subscribe returned is matched against a snapshot holding it.
            let snapshot = shared.snapshot.load_full();
            let mut ended = [0usize; 2];
            for queued in batch.drain(..) {
                let epoch = queued.epoch;
                let handled = catch_unwind(AssertUnwindSafe(|| {
                    dispatch(&shared, &snapshot, queued, index, &mut scratch)
                }));
                if let Err(panic) = handled {
                    // A payload's `Drop`, or a panic while reporting one.
                    WorkerCounters::add(&counters.stray_panics, 1);
                    discard_panic(panic);
                    tracing::error!(
                        "a panic outside any handler call was caught; the worker goes on"
                    );
                }
                ended[epoch] += 1;
            }
            drop(snapshot);
            if shared.calls.has_retired() {
                // Handlers unsubscribed while this batch ran: drop the ones
                // no worker is calling any more.
                shared.reclaim();
            }
            shared.epochs.end(0, ended[0]);
            shared.epochs.end(1, ended[1]);
            continue;
        }
        if shared.queues.is_closed() && shared.queues.is_drained() && shared.ready.is_empty() {
            break;
        }
        idle += 1;
        if idle_turn(idle) {
            continue;
        }
        shared.queues.park(|| !shared.ready.is_empty());
        idle = 0;
    }
    // Still marked as this bus's worker: if dropping the handlers drops the
    // last `Bus`, its shutdown must not try to join this very thread.
    shared.worker_exited(1);
    CONTEXT.with(|c| *c.borrow_mut() = Context::default());
}

/// Calls every live handler matching the event, then drops the event (the
/// last reference may be this one).
fn dispatch(
    shared: &Arc<Shared>,
    snapshot: &Snapshot,
    queued: Queued<Arc<Event>>,
    worker: usize,
    scratch: &mut Scratch,
) {
    let counters = &shared.counters.workers[worker];
    let event = &queued.item;
    snapshot.matching(event.name(), scratch);
    WorkerCounters::add(&counters.events, 1);
    if scratch.matched.is_empty() {
        return;
    }
    CONTEXT.with(|c| {
        let mut c = c.borrow_mut();
        c.depth = event.depth();
        c.bucket = queued.epoch;
    });
    let mut calls = 0;
    for &at in &scratch.matched {
        let sub = snapshot.get(at);
        if sub.mailbox.is_some() {
            // Runs elsewhere: hand the event over (under `Block`, waiting
            // for room: its runner never waits for a worker).
            crate::mailbox::Mailbox::deliver(shared, snapshot.get_arc(at), event, queued.epoch);
            continue;
        }
        if !shared.calls.enter(worker, sub) {
            continue;
        }
        // SAFETY: the call is announced and the subscription was seen
        // active after it (`reclaim.rs`).
        let outcome = catch_unwind(AssertUnwindSafe(|| unsafe { sub.call(event) }));
        shared.calls.exit(worker);
        calls += 1;
        if !matches!(outcome, Ok(Ok(()))) {
            report_failure(shared, event, sub, outcome, counters);
        }
    }
    WorkerCounters::add(&counters.dispatched, calls);
}

/// Counts and reports a handler's `Err` or panic. Reporting runs user code
/// too (the error's `Display` and `Drop`, the hook): a panic there is
/// caught and counted, so it never skips the handlers still to come.
pub(crate) fn report_failure(
    shared: &Shared,
    event: &Event,
    sub: &crate::subscription::Subscription,
    outcome: std::thread::Result<crate::handler::HandlerResult>,
    counters: &WorkerCounters,
) {
    let reported = catch_unwind(AssertUnwindSafe(|| match outcome {
        Ok(Ok(())) => {}
        Ok(Err(error)) => shared.handler_failed(event, sub, &*error, counters, false),
        Err(panic) => {
            let error = HandlerPanic::new(&*panic);
            discard_panic(panic);
            shared.handler_failed(event, sub, &error, counters, true);
        }
    }));
    if let Err(panic) = reported {
        WorkerCounters::add(&counters.stray_panics, 1);
        discard_panic(panic);
        tracing::error!(
            event = event.name(),
            "reporting a handler's failure panicked; the caller goes on"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::Fairness;

    #[test]
    fn highest_lane_first() {
        let mut f = Fairness::default();
        assert_eq!(f.pick([true, true, true], 8), Some(2));
        assert_eq!(f.pick([true, false, false], 8), Some(0));
        assert_eq!(f.pick([false, false, false], 8), None);
    }

    #[test]
    fn a_passed_over_lane_is_served_after_the_limit() {
        let mut f = Fairness::default();
        let picks: Vec<usize> = (0..10).map(|_| f.pick([true, false, true], 3).unwrap()).collect();
        assert_eq!(picks, vec![2, 2, 2, 0, 2, 2, 2, 0, 2, 2]);
    }
}
