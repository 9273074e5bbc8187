//! Dispatch: the worker loop, and the runners of the subscriptions that do
//! not run inline.
//!
//! The worker loop (here) takes a batch from the lane the fairness rule
//! picks, loads the snapshot once, dispatches every event of the batch,
//! repeats; it spins briefly when there is nothing, then parks. An inline
//! subscription's handler is called right there; a mailbox subscription's
//! event is handed to its mailbox (`mailbox.rs`, a state machine), and
//! whatever the hand-over says to wake is woken here. Each runner is one
//! file:
//!
//! * [`pool`]: ordered synchronous subscriptions, run by the workers
//!   themselves through the ready queue;
//! * [`threads`]: blocking subscriptions, on threads of their own;
//! * `tokio`: async subscriptions, as tasks on a tokio runtime (feature
//!   `tokio`).
//!
//! Adding a runner is one file here and one variant of `mailbox::Runner`.
//!
//! Every piece of user code a worker runs is inside `catch_unwind`: the
//! handler call, the reporting of its failure (an error's `Display`, the
//! error hook, dropping the error or the panic payload) and the drop of the
//! event (a payload's `Drop`). A panic there is counted and logged, the
//! event still counts as dispatched for `flush`, and the worker goes on.

pub(crate) mod pool;
pub(crate) mod threads;
#[cfg(feature = "tokio")]
pub(crate) mod tokio;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use crate::context::{self, HandlerScope, Owner};
use crate::error::{BacklogFull, HandlerPanic};
use crate::event::{Event, Priority};
use crate::handler::HandlerResult;
use crate::loom::{idle_turn, Ordering};
use crate::mailbox::{Entry, Mailbox, SyncFn, Wake};
use crate::observe::Sampler;
use crate::panic::discard_panic;
use crate::queue::{Overflow, Queued};
use crate::shared::Shared;
use crate::snapshot::{Scratch, Snapshot};
use crate::stats::WorkerCounters;
use crate::subscription::Subscription;

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

/// The body of worker `index`'s thread.
pub(crate) fn run(shared: Arc<Shared>, index: usize) {
    context::enter_worker(shared.id, index, shared.clone());
    let counters = &shared.counters.workers[index];
    let mut fairness = Fairness::default();
    let mut batch: Vec<Queued<Arc<Event>>> = Vec::with_capacity(shared.config.batch_size);
    let mut scratch = Scratch::default();
    // When this worker times its next inline call (on an observed bus).
    let mut sampler = Sampler::new();
    let mut idle = 0u32;
    loop {
        // Ordered subscriptions' mailboxes first: their events were
        // published before anything still in the lanes.
        if let Some(sub) = shared.ready.pop() {
            idle = 0;
            pool::run_on_worker(&shared, &sub, shared.config.batch_size);
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
                    dispatch(&shared, &snapshot, queued, index, &mut scratch, &mut sampler)
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
            if ended[0] + ended[1] < shared.config.batch_size {
                // A short batch: let the next one fill, unless a High event,
                // a ready mailbox or the close comes first (see `linger`).
                let full = shared.config.batch_size;
                crate::loom::linger(|| {
                    let depths = shared.queues.depths();
                    depths[Priority::High as usize] > 0
                        || depths.iter().any(|&d| d >= full)
                        || !shared.ready.is_empty()
                        || shared.queues.is_closed()
                });
            }
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
    context::leave_worker();
}

/// Calls every live handler matching the event, then lets it go (the last
/// reference may be this one: its block then goes back to the publishers).
fn dispatch(
    shared: &Arc<Shared>,
    snapshot: &Snapshot,
    queued: Queued<Arc<Event>>,
    worker: usize,
    scratch: &mut Scratch,
    sampler: &mut Sampler,
) {
    call_all(shared, snapshot, &queued, worker, scratch, sampler);
    shared.recycle(queued.item);
}

fn call_all(
    shared: &Arc<Shared>,
    snapshot: &Snapshot,
    queued: &Queued<Arc<Event>>,
    worker: usize,
    scratch: &mut Scratch,
    sampler: &mut Sampler,
) {
    let counters = &shared.counters.workers[worker];
    let event = &queued.item;
    // Set even with no match: the payload's `Drop`, which runs after this
    // on this thread, is user code that may publish (its events are the
    // children of this one, counted in its flush bucket).
    context::set_event(event, queued.epoch);
    snapshot.matching(event.name(), scratch);
    WorkerCounters::add(&counters.events, 1);
    if scratch.matched.is_empty() {
        return;
    }
    let mut calls = 0;
    // Read once: a bus neither traced nor observed (the default) makes each
    // call as it always did.
    let trace = shared.config.trace_dispatch;
    let plain = !trace && shared.config.observer.0.is_none();
    // Hand-overs to mailboxes counted in flush and not yet made: counted
    // all at once at the first (one add on a line every runner's end
    // contends for, where one per hand-over cost as much as the rest).
    // Whatever is still counted when this unwinds (a panic that escapes a
    // call's `catch_unwind`, such as an observer's) is counted out again.
    let mut counted = Unmade { epochs: &shared.epochs, bucket: queued.epoch, left: 0 };
    for (i, &at) in scratch.matched.iter().enumerate() {
        let sub = snapshot.get(at);
        if sub.mailbox.is_some() {
            if counted.left == 0 {
                let rest = &scratch.matched[i..];
                counted.left =
                    rest.iter().filter(|&&at| snapshot.get(at).mailbox.is_some()).count();
                shared.epochs.begin_in_n(queued.epoch, counted.left);
            }
            counted.left -= 1;
            // Runs elsewhere: hand the event over (never waiting: its
            // runner never waits for a worker).
            deliver(shared, snapshot.get_arc(at), event, queued.epoch);
            continue;
        }
        if !shared.calls.enter(worker, sub) {
            continue;
        }
        if plain {
            // SAFETY: the call is announced and the subscription was seen
            // active after it (`reclaim.rs`).
            let outcome = catch_unwind(AssertUnwindSafe(|| unsafe { sub.call(event) }));
            shared.calls.exit(worker);
            calls += 1;
            if !matches!(outcome, Ok(Ok(()))) {
                report_failure(shared, event, sub, outcome, counters);
            }
            continue;
        }
        let pattern = sub.pattern.as_str();
        let call = || {
            catch_unwind(AssertUnwindSafe(|| {
                // SAFETY: the call is announced and the subscription was seen
                // active after it (`reclaim.rs`).
                crate::trace::call(trace, event, &sub.plugin, pattern, || unsafe {
                    sub.call(event)
                })
            }))
        };
        let outcome = match &sub.observed {
            None => call(),
            Some(observed) => {
                observed.count(worker);
                if sampler.due() {
                    observed.timed(event.timestamp(), sampler, call)
                } else {
                    call()
                }
            }
        };
        shared.calls.exit(worker);
        calls += 1;
        if !matches!(outcome, Ok(Ok(()))) {
            report_failure(shared, event, sub, outcome, counters);
        }
    }
    WorkerCounters::add(&counters.dispatched, calls);
}

/// Hand-overs (or a publisher's ordered pushes) counted in flush and not
/// made yet: counted out on drop, so a panic between two of them leaves
/// no count behind.
pub(crate) struct Unmade<'a> {
    pub(crate) epochs: &'a crate::flush::Epochs,
    pub(crate) bucket: usize,
    pub(crate) left: usize,
}

impl Drop for Unmade<'_> {
    fn drop(&mut self) {
        if self.left > 0 {
            self.epochs.end(self.bucket, self.left);
        }
    }
}

/// A dispatching worker's hand-over of `event` to `sub`'s mailbox, under
/// the subscription's policy. The caller counted it in flush bucket
/// `bucket` (a worker counts an event's hand-overs at once); one that does
/// not put it in counts it out. It never waits: under `Block` a full backlog takes the event anyway and holds the
/// bus's gate until it has room again, so outside publishers wait instead;
/// `Shed` drops the oldest waiting event; `Error` refuses the event for this
/// subscription and reports it to the error hook.
pub(crate) fn deliver(
    shared: &Arc<Shared>,
    sub: &Arc<Subscription>,
    event: &Arc<Event>,
    bucket: usize,
) {
    let Some(mailbox) = &sub.mailbox else {
        shared.epochs.end(bucket, 1);
        return;
    };
    if mailbox.overflow == Overflow::Error
        && mailbox.room_for(false) == crate::mailbox::Room::Refused
    {
        count_lost(shared, sub, mailbox, event.name(), 1, "refused");
        let refused = BacklogFull { capacity: mailbox.capacity() };
        shared.report_backlog_refusal(event, sub, &refused);
        shared.epochs.end(bucket, 1);
        return;
    }
    push_counted(shared, sub, event, bucket);
}

/// Puts `event` in `sub`'s mailbox (see [`Mailbox::push`]), then counts
/// what it shed and wakes its runner as the push says.
pub(crate) fn push(
    shared: &Arc<Shared>,
    sub: &Arc<Subscription>,
    event: &Arc<Event>,
    bucket: usize,
) {
    let Some(mailbox) = &sub.mailbox else { return };
    let Some(pushed) = mailbox.push(&shared.env(), event, bucket) else { return };
    after_push(shared, sub, mailbox, pushed);
}

/// [`push`], for a publisher that counted the event in `bucket` for every
/// ordered subscription it pushes to at once (one atomic add for all, on a
/// line the workers' ends contend for): a push that does not take it
/// counts it out.
pub(crate) fn push_counted(
    shared: &Arc<Shared>,
    sub: &Arc<Subscription>,
    event: &Arc<Event>,
    bucket: usize,
) {
    let env = shared.env();
    match sub.mailbox.as_ref().map(|m| (m, m.push_counted(&env, event, bucket))) {
        Some((mailbox, Some(pushed))) => after_push(shared, sub, mailbox, pushed),
        _ => shared.epochs.end(bucket, 1),
    }
}

/// Counts what a push shed and wakes the runner as it says.
fn after_push(
    shared: &Arc<Shared>,
    sub: &Arc<Subscription>,
    mailbox: &Mailbox,
    pushed: crate::mailbox::Pushed,
) {
    if let Some(victim) = pushed.shed {
        count_lost(shared, sub, mailbox, victim.event.name(), 1, "shed");
        shared.epochs.end(victim.bucket, 1);
        shared.recycle_caught(victim.event);
    }
    match pushed.wake {
        Wake::None => {}
        Wake::Ready => shared.make_ready(sub.clone()),
        #[cfg(feature = "tokio")]
        Wake::Spawn => tokio::spawn_runner(shared, sub),
    }
}

/// Counts `n` events lost for `sub` (`how`: shed, refused, abandoned) and
/// logs it at `warn`, at most once a second per bus.
pub(crate) fn count_lost(
    shared: &Shared,
    sub: &Subscription,
    mailbox: &Mailbox,
    event: &str,
    n: u64,
    how: &str,
) {
    mailbox.count_lost(n);
    // Relaxed: statistics.
    shared.counters.backlog_dropped.fetch_add(n, Ordering::Relaxed);
    log_lost(shared, sub, event, n, how);
}

/// Logs `n` events lost for `sub` (already counted), rate-limited.
pub(crate) fn log_lost(shared: &Shared, sub: &Subscription, event: &str, n: u64, how: &str) {
    if let Some(suppressed) = shared.loss_log.admit(n) {
        tracing::warn!(
            event,
            plugin = &*sub.plugin,
            pattern = sub.pattern.as_str(),
            how,
            lost = n,
            suppressed,
            total = shared.counters.backlog_dropped.load(Ordering::Relaxed),
            "a subscription's backlog was full under a lossy overflow policy: events lost for it \
             (counted in Stats::backlog_dropped)"
        );
    }
}

/// Enters the handler scope of a call of `sub` for `entry`, on a thread
/// that runs mailbox calls.
pub(crate) fn scope(shared: &Arc<Shared>, sub: &Subscription, entry: &Entry) -> HandlerScope {
    HandlerScope::enter(
        shared.id,
        || shared.clone() as Owner,
        crate::reclaim::key(sub),
        &entry.event,
        entry.bucket,
    )
}

/// Runs one synchronous call from a mailbox on this thread, reporting a
/// failure as an inline call would.
pub(crate) fn call_sync(shared: &Arc<Shared>, sub: &Arc<Subscription>, entry: &Entry, f: &SyncFn) {
    let outcome = {
        let _scope = scope(shared, sub, entry);
        let (trace, event, pattern) =
            (shared.config.trace_dispatch, &entry.event, sub.pattern.as_str());
        let call = || {
            catch_unwind(AssertUnwindSafe(|| {
                crate::trace::call(trace, event, &sub.plugin, pattern, || f(event))
            }))
        };
        match &sub.observed {
            None => call(),
            Some(observed) => observed.call(entry.event.timestamp(), call),
        }
    };
    report(shared, sub, &entry.event, outcome);
}

/// Counts a mailbox call (or a replayed one) and reports its failure, if
/// any.
pub(crate) fn report(
    shared: &Shared,
    sub: &Subscription,
    event: &Event,
    outcome: std::thread::Result<HandlerResult>,
) {
    let counters = shared.counters.runner();
    // Relaxed: a statistic.
    counters.dispatched.fetch_add(1, Ordering::Relaxed);
    report_failure(shared, event, sub, outcome, counters);
}

/// Counts and reports a handler's `Err` or panic. Reporting runs user code
/// too (the error's `Display` and `Drop`, the hook): a panic there is
/// caught and counted, so it never skips the handlers still to come.
pub(crate) fn report_failure(
    shared: &Shared,
    event: &Event,
    sub: &Subscription,
    outcome: std::thread::Result<HandlerResult>,
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
