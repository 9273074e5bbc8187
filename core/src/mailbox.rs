//! Subscriptions whose handlers do not run inline on the dispatch workers:
//! ordered ones, blocking (slow) ones, and async ones.
//!
//! Such a subscription has a *mailbox*: a bounded backlog of events and a
//! runner that takes them in order.
//!
//! * **Where events come from.** An *ordered* subscription's events are put
//!   in its mailbox by the publisher itself, inside `publish` (after the
//!   event is in history, before it is queued): one publishing thread puts
//!   its events in, one after the other, so they are in its publish order
//!   whatever the workers do. Other mailbox subscriptions get their events
//!   from the worker that dispatches the event, in place of a call.
//! * **Who runs them.** A synchronous ordered subscription is run by the
//!   worker pool: a mailbox with events is on a ready queue at most once,
//!   and a worker takes it and runs a batch of its events, so its handler
//!   never runs concurrently with itself. A *blocking* subscription has
//!   threads of its own (`concurrency`, one when ordered), so a slow
//!   handler never holds a dispatch worker. An async subscription is run by
//!   a task on its tokio runtime (see `asynchronous.rs`).
//! * **Backlog.** It holds up to `capacity` events, and what happens when
//!   it is full is the subscription's overflow policy (by default the
//!   bus's). Under `Block` nothing is lost. An outside publisher of an
//!   ordered subscription's event waits for room in its backlog before it
//!   reserves anything; a handler never waits (it might wait on itself):
//!   its event may go past the capacity by as much again, and past that its
//!   publish is refused with `PublishError::Full`. A worker never waits
//!   either (the request a blocking handler waits for may be queued behind
//!   it): it hands the event to a blocking or async backlog past its
//!   capacity (bounded by what the queues hold), and the full backlog holds
//!   the bus's [`Gate`], at which outside publishers wait until its runner
//!   has made room. Under `Shed` the oldest waiting event is dropped to
//!   make room; under `Error` an ordered subscription's publisher gets
//!   `PublishError::BacklogFull` (a refused publish, counted in
//!   `Stats::rejected`) and the others' events are refused for that
//!   subscription and reported to the error hook. Every event lost for a
//!   subscription is counted in its `backlog_dropped` and in
//!   `Stats::backlog_dropped`, and logged at `warn`.
//! * **Unsubscribe.** The handler lives in the mailbox state, under its
//!   lock; a runner checks and clones it under the lock and counts the call
//!   as running before it lets go. Retiring takes it out under the same
//!   lock and discards the backlog, so once that returns no call starts; the
//!   closure is dropped by whoever holds its last clone (the last running
//!   call), outside every lock, after its event is counted out of its flush
//!   bucket and before the call stops counting as running: its `Drop` may
//!   flush or shut the bus down, and a waiter for the call returns with the
//!   handler dropped. Waiting is waiting for `running` to drop.
//! * **Flush.** Every event in a mailbox is counted in its flush bucket
//!   until its call has returned (or it is discarded), so `flush` waits for
//!   mailbox calls, async ones included.
//! * **Shutdown.** Once the workers have drained the queues, no event can
//!   reach a mailbox; the mailboxes are *sealed*, and the last worker waits
//!   (up to the bus's drain timeout) for their backlogs to run out before it
//!   drops the handlers.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Instant;

use crate::error::BacklogFull;
use crate::event::Event;
use crate::handler::HandlerResult;
use crate::loom::{backoff, fence, AtomicU64, AtomicUsize, Condvar, Mutex, Ordering};
use crate::queue::Overflow;
use crate::shared::Shared;
use crate::subscription::Subscription;
use crate::worker::{report_failure, HandlerScope};

/// A synchronous handler run from a mailbox.
pub(crate) type SyncFn = dyn Fn(&Event) -> HandlerResult + Send + Sync;

/// What a mailbox calls.
#[derive(Clone)]
pub(crate) enum Work {
    Sync(Arc<SyncFn>),
    #[cfg(feature = "tokio")]
    Async(Arc<crate::handler::AsyncFn>),
}

impl Work {
    /// The synchronous handler, if it is one.
    pub(crate) fn sync(&self) -> Option<&SyncFn> {
        match self {
            Work::Sync(f) => Some(&**f),
            #[cfg(feature = "tokio")]
            Work::Async(_) => None,
        }
    }
}

/// Who takes the events out of a mailbox.
pub(crate) enum Runner {
    /// The dispatch workers, through the ready queue (ordered sync).
    Pool,
    /// Threads of the subscription's own (blocking sync).
    Threads,
    /// Tasks on a tokio runtime.
    #[cfg(feature = "tokio")]
    Tokio(crate::asynchronous::TokioRunner),
}

/// One event waiting in a mailbox, with the flush bucket it is counted in.
pub(crate) struct Entry {
    pub(crate) event: Arc<Event>,
    pub(crate) bucket: usize,
}

struct State {
    entries: VecDeque<Entry>,
    /// `None` once the subscription is retired.
    work: Option<Work>,
    /// Calls running now.
    running: usize,
    /// On the ready queue or being run (pool and tokio runners).
    scheduled: bool,
    /// No event will come any more (the bus has drained).
    sealed: bool,
    /// Threads waiting in [`Mailbox::wait_for_room`].
    room_waiters: usize,
    /// Holding the bus's [`Gate`] shut: full under `Block`, fed by workers.
    holding: bool,
}

pub(crate) struct Mailbox {
    pub(crate) ordered: bool,
    capacity: usize,
    pub(crate) overflow: Overflow,
    pub(crate) runner: Runner,
    state: Mutex<State>,
    /// Wakes thread runners: an event came, or the subscription retired.
    changed: Condvar,
    /// Wakes those waiting for room: an event left, or the mailbox retired
    /// or was sealed or abandoned.
    room: Condvar,
    pub(crate) backlog_dropped: AtomicU64,
}

/// Whether an event may go into a backlog now, for a publisher that checks
/// before it reserves its queue slot.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Room {
    /// Yes (or the subscription is gone, or sheds to make room).
    Free,
    /// Full under `Block`: an outside publisher waits for room.
    Wait,
    /// Full under `Error`, or a handler's overshoot is used up.
    Refused,
}

/// What a push asks the caller to do once the lock is released.
enum Wake {
    None,
    /// Put the subscription on the ready queue.
    Ready,
    /// Start a runner task.
    #[cfg(feature = "tokio")]
    Spawn,
}

impl Mailbox {
    pub(crate) fn new(
        work: Work,
        runner: Runner,
        ordered: bool,
        capacity: usize,
        overflow: Overflow,
    ) -> Mailbox {
        Mailbox {
            ordered,
            capacity: capacity.max(1),
            overflow,
            runner,
            state: Mutex::new(State {
                entries: VecDeque::new(),
                work: Some(work),
                running: 0,
                scheduled: false,
                sealed: false,
                room_waiters: 0,
                holding: false,
            }),
            changed: Condvar::new(),
            room: Condvar::new(),
            backlog_dropped: AtomicU64::new(0),
        }
    }

    /// Whether an event may go in now (see [`Room`]). A handler never
    /// waits: under `Block` it may overshoot the capacity by as much again.
    pub(crate) fn room_for(&self, from_handler: bool) -> Room {
        let state = self.state.lock();
        if state.work.is_none() || state.sealed || state.entries.len() < self.capacity {
            return Room::Free;
        }
        match self.overflow {
            Overflow::Shed => Room::Free,
            Overflow::Error => Room::Refused,
            Overflow::Block if !from_handler => Room::Wait,
            Overflow::Block if state.entries.len() < self.capacity.saturating_mul(2) => Room::Free,
            Overflow::Block => Room::Refused,
        }
    }

    /// Waits until the backlog has room, or the subscription retired, or
    /// the mailbox is sealed or abandoned (`true`: a push now goes in or is
    /// skipped), or until `give_up()` says so (`false`), which is asked
    /// every 50 ms while it waits (a closing bus releases its waiters). Its
    /// runner makes room without ever waiting for a pusher, so this ends as
    /// long as the runner runs.
    pub(crate) fn wait_for_room(&self, mut give_up: impl FnMut() -> bool) -> bool {
        let mut state = self.state.lock();
        loop {
            if state.work.is_none() || state.sealed || state.entries.len() < self.capacity {
                return true;
            }
            if give_up() {
                return false;
            }
            state.room_waiters += 1;
            let slice = Instant::now().checked_add(std::time::Duration::from_millis(50));
            state = self.room.wait_until(state, slice).0;
            state.room_waiters -= 1;
        }
    }

    /// A dispatching worker's hand-over of `event` to `sub`'s mailbox
    /// (counted in flush bucket `bucket`), under the subscription's policy.
    /// It never waits: under `Block` a full backlog takes the event anyway
    /// and holds the bus's [`Gate`] until it has room again, so outside
    /// publishers wait instead; `Shed` drops the oldest waiting event;
    /// `Error` refuses the event for this subscription and reports it to
    /// the error hook.
    pub(crate) fn deliver(
        shared: &Arc<Shared>,
        sub: &Arc<Subscription>,
        event: &Arc<Event>,
        bucket: usize,
    ) {
        let Some(mailbox) = &sub.mailbox else { return };
        match mailbox.overflow {
            Overflow::Error if mailbox.room_for(false) == Room::Refused => {
                mailbox.count_lost(shared, sub, event, 1, "refused");
                let refused = BacklogFull { capacity: mailbox.capacity };
                shared.report_backlog_refusal(event, sub, &refused);
                return;
            }
            _ => {}
        }
        Mailbox::push(shared, sub, event, bucket);
    }

    /// Puts `event` in `sub`'s mailbox (counted in flush bucket `bucket`).
    /// Room was checked (or waited for) by the caller, so a full backlog
    /// only sheds its oldest event under `Shed`; under the other policies
    /// it takes the event anyway (publishers that checked at once may
    /// overshoot an ordered backlog by one event each; workers a blocking or
    /// async one by what the queues hold, holding the gate meanwhile).
    pub(crate) fn push(
        shared: &Arc<Shared>,
        sub: &Arc<Subscription>,
        event: &Arc<Event>,
        bucket: usize,
    ) {
        let Some(mailbox) = &sub.mailbox else { return };
        let (wake, shed) = {
            let mut state = mailbox.state.lock();
            if state.work.is_none() || state.sealed {
                return;
            }
            let shed = (mailbox.overflow == Overflow::Shed
                && state.entries.len() >= mailbox.capacity)
                .then(|| state.entries.pop_front())
                .flatten();
            shared.epochs.begin_in(bucket);
            state.entries.push_back(Entry { event: event.clone(), bucket });
            if !mailbox.ordered
                && mailbox.overflow == Overflow::Block
                && !state.holding
                && state.entries.len() >= mailbox.capacity
            {
                state.holding = true;
                shared.gate.hold();
            }
            let wake = match mailbox.runner {
                Runner::Threads => {
                    mailbox.changed.notify_one();
                    Wake::None
                }
                Runner::Pool if !state.scheduled => {
                    state.scheduled = true;
                    Wake::Ready
                }
                #[cfg(feature = "tokio")]
                Runner::Tokio(_) if !state.scheduled => {
                    state.scheduled = true;
                    Wake::Spawn
                }
                _ => Wake::None,
            };
            (wake, shed)
        };
        if let Some(victim) = shed {
            mailbox.count_lost(shared, sub, &victim.event, 1, "shed");
            shared.epochs.end(victim.bucket, 1);
            shared.drop_caught(victim);
        }
        match wake {
            Wake::None => {}
            Wake::Ready => shared.make_ready(sub.clone()),
            #[cfg(feature = "tokio")]
            Wake::Spawn => crate::asynchronous::spawn_runner(shared, sub),
        }
    }

    /// Counts `n` events lost for this subscription (`how`: shed, refused,
    /// abandoned) and logs it at `warn`, at most once a second per bus.
    fn count_lost(&self, shared: &Shared, sub: &Subscription, event: &Event, n: u64, how: &str) {
        // Relaxed: statistics.
        self.backlog_dropped.fetch_add(n, Ordering::Relaxed);
        shared.counters.backlog_dropped.fetch_add(n, Ordering::Relaxed);
        if let Some(suppressed) = shared.loss_log.admit(n) {
            tracing::warn!(
                event = event.name(),
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

    /// The next event and the work to do with it, counted as running; or
    /// `None` when the backlog is empty (then the mailbox is no longer
    /// scheduled) or the subscription retired.
    pub(crate) fn next(&self, shared: &Shared) -> Option<(Entry, Work)> {
        let mut state = self.state.lock();
        let work = state.work.clone();
        match (work, state.entries.pop_front()) {
            (Some(work), Some(entry)) => {
                state.running += 1;
                self.made_room(&mut state, shared);
                Some((entry, work))
            }
            _ => {
                state.scheduled = false;
                None
            }
        }
    }

    /// For a thread runner: waits for the next event; `None` once the
    /// subscription is retired, or sealed and empty.
    fn next_blocking(&self, shared: &Shared) -> Option<(Entry, Work)> {
        let mut state = self.state.lock();
        loop {
            let work = state.work.clone()?;
            if let Some(entry) = state.entries.pop_front() {
                state.running += 1;
                self.made_room(&mut state, shared);
                return Some((entry, work));
            }
            if state.sealed {
                return None;
            }
            state = self.changed.wait(state);
        }
    }

    /// An event left (or all did): wakes those waiting for room, and lets go
    /// of the gate once there is room.
    fn made_room(&self, state: &mut State, shared: &Shared) {
        if state.room_waiters > 0 {
            self.room.notify_all();
        }
        if state.holding
            && (state.entries.len() < self.capacity || state.work.is_none() || state.sealed)
        {
            state.holding = false;
            shared.gate.release();
        }
    }

    /// Ends a call begun by [`next`](Mailbox::next): its event is counted
    /// out of its flush bucket, then `work` (maybe the handler's last clone,
    /// when the subscription retired meanwhile) is dropped outside every
    /// lock and scope, then the call stops counting as running. So a
    /// handler's `Drop` may flush or shut the bus down, and whoever waits for
    /// the call returns with the handler dropped.
    pub(crate) fn done(&self, shared: &Shared, bucket: usize, work: Option<Work>) {
        shared.epochs.end(bucket, 1);
        shared.drop_caught(work);
        let mut state = self.state.lock();
        state.running -= 1;
        if state.running == 0 {
            self.changed.notify_all();
        }
    }

    /// Events waiting.
    pub(crate) fn backlog(&self) -> usize {
        self.state.lock().entries.len()
    }

    /// Retires the subscription: takes the handler out and discards the
    /// backlog (counted out of its flush buckets). Once this returns, no
    /// call starts. The work is returned to be dropped outside the lock.
    pub(crate) fn retire(&self, shared: &Shared) -> Option<Work> {
        self.retire_counted(shared).0
    }

    /// [`retire`](Mailbox::retire), also returning how many events it
    /// discarded.
    fn retire_counted(&self, shared: &Shared) -> (Option<Work>, u64) {
        let (work, discarded) = {
            let mut state = self.state.lock();
            let work = state.work.take();
            let discarded = std::mem::take(&mut state.entries);
            self.changed.notify_all();
            self.made_room(&mut state, shared);
            (work, discarded)
        };
        for entry in &discarded {
            shared.epochs.end(entry.bucket, 1);
        }
        let n = discarded.len() as u64;
        shared.drop_caught(discarded);
        (work, n)
    }

    /// [`retire`](Mailbox::retire) at shutdown, past the drain timeout:
    /// the discarded events were accepted and are lost, so they are counted
    /// (in `Stats::drain_dropped`) and logged.
    pub(crate) fn retire_at_shutdown(&self, shared: &Shared, sub: &Subscription) -> Option<Work> {
        let (work, lost) = self.retire_counted(shared);
        if lost > 0 {
            // Relaxed: a statistic.
            shared.counters.drain_dropped.fetch_add(lost, Ordering::Relaxed);
            tracing::warn!(
                plugin = &*sub.plugin,
                pattern = sub.pattern.as_str(),
                lost,
                "shutdown: the drain timeout passed with events in a subscription's backlog; they \
                 are dropped (counted in Stats::drain_dropped)"
            );
        }
        work
    }

    /// Gives up the backlog (its runner can no longer run): the events are
    /// counted as dropped for this subscription and out of their flush
    /// buckets, and the mailbox is no longer scheduled, so the next event
    /// starts a runner again. Returns how many were dropped.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn abandon(&self, shared: &Shared, sub: &Subscription) -> usize {
        let lost = {
            let mut state = self.state.lock();
            state.scheduled = false;
            let lost = std::mem::take(&mut state.entries);
            self.made_room(&mut state, shared);
            lost
        };
        for entry in &lost {
            shared.epochs.end(entry.bucket, 1);
        }
        let n = lost.len();
        if let Some(first) = lost.front() {
            self.count_lost(shared, sub, &first.event, n as u64, "abandoned");
        }
        shared.drop_caught(lost);
        n
    }

    /// No event will come any more: thread runners leave once empty.
    pub(crate) fn seal(&self, shared: &Shared) {
        let mut state = self.state.lock();
        state.sealed = true;
        self.changed.notify_all();
        self.made_room(&mut state, shared);
    }

    /// Calls running now.
    pub(crate) fn running(&self) -> usize {
        self.state.lock().running
    }

    /// Waits until no more calls run than `excused()` says cannot end while
    /// the caller waits (its own, and those of waiters waiting for it), or
    /// until `deadline`; `false` when the deadline passed first.
    pub(crate) fn wait_idle(
        &self,
        mut excused: impl FnMut() -> usize,
        deadline: Option<Instant>,
    ) -> bool {
        let mut round = 0;
        loop {
            let running = self.running();
            if running == 0 || running <= excused() {
                return true;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return false;
            }
            backoff(&mut round);
        }
    }
}

/// Runs one synchronous call from a mailbox on this thread, reporting a
/// failure as an inline call would.
pub(crate) fn call_sync(shared: &Arc<Shared>, sub: &Arc<Subscription>, entry: &Entry, f: &SyncFn) {
    let outcome = {
        let _scope = HandlerScope::enter(shared, sub, &entry.event, entry.bucket);
        catch_unwind(AssertUnwindSafe(|| f(&entry.event)))
    };
    report(shared, sub, &entry.event, outcome);
}

/// Counts a mailbox call and reports its failure, if any.
pub(crate) fn report(
    shared: &Shared,
    sub: &Subscription,
    event: &Event,
    outcome: std::thread::Result<HandlerResult>,
) {
    let counters = &shared.counters.runners;
    // Relaxed: a statistic.
    counters.dispatched.fetch_add(1, Ordering::Relaxed);
    report_failure(shared, event, sub, outcome, counters);
}

/// A worker's turn at a ready mailbox: up to `max` of its events, then
/// back on the ready queue (whoever next finds it empty unschedules it).
pub(crate) fn run_on_worker(shared: &Arc<Shared>, sub: &Arc<Subscription>, max: usize) {
    let Some(mailbox) = &sub.mailbox else { return };
    for _ in 0..max {
        let Some((entry, work)) = mailbox.next(shared) else { return };
        if let Some(f) = work.sync() {
            call_sync(shared, sub, &entry, f);
        }
        mailbox.done(shared, entry.bucket, Some(work));
    }
    shared.make_ready(sub.clone());
}

/// The body of a blocking subscription's thread.
pub(crate) fn run_thread(shared: Arc<Shared>, sub: Arc<Subscription>) {
    let Some(mailbox) = &sub.mailbox else { return };
    while let Some((entry, work)) = mailbox.next_blocking(&shared) {
        if let Some(f) = work.sync() {
            call_sync(&shared, &sub, &entry, f);
        }
        mailbox.done(&shared, entry.bucket, Some(work));
    }
}

/// Back-pressure from the backlogs workers feed: while a blocking or async
/// subscription's backlog is full under `Overflow::Block`, the gate is held,
/// and outside publishers wait at it before they reserve anything. A worker
/// never waits for a backlog (the request it would wait behind may be in
/// its own queue): it hands the event over past the capacity, which is
/// bounded by what the queues hold, and holds the gate until the backlog's
/// runner has made room.
///
/// The handshake is the queue's *Room* one: a waiter registers, then
/// re-checks `held`, then waits under the lock; whatever lowers `held` to
/// zero reads `waiters` after it and notifies under the lock.
#[derive(Debug)]
pub(crate) struct Gate {
    /// Backlogs holding it.
    held: AtomicUsize,
    waiters: AtomicUsize,
    lock: Mutex<()>,
    opened: Condvar,
}

impl Gate {
    pub(crate) fn new() -> Gate {
        Gate {
            held: AtomicUsize::new(0),
            waiters: AtomicUsize::new(0),
            lock: Mutex::new(()),
            opened: Condvar::new(),
        }
    }

    fn hold(&self) {
        self.held.fetch_add(1, Ordering::SeqCst);
    }

    fn release(&self) {
        if self.held.fetch_sub(1, Ordering::SeqCst) == 1 {
            fence(Ordering::SeqCst);
            if self.waiters.load(Ordering::SeqCst) > 0 {
                let _guard = self.lock.lock();
                self.opened.notify_all();
            }
        }
    }

    /// Whether some backlog holds it.
    #[inline]
    pub(crate) fn is_held(&self) -> bool {
        self.held.load(Ordering::SeqCst) > 0
    }

    /// Waits until no backlog holds it, or `give_up()` (asked every 50 ms).
    pub(crate) fn wait_open(&self, mut give_up: impl FnMut() -> bool) {
        let mut guard = self.lock.lock();
        loop {
            self.waiters.fetch_add(1, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            if self.held.load(Ordering::SeqCst) == 0 || give_up() {
                self.waiters.fetch_sub(1, Ordering::SeqCst);
                return;
            }
            let slice = Instant::now().checked_add(std::time::Duration::from_millis(50));
            guard = self.opened.wait_until(guard, slice).0;
            self.waiters.fetch_sub(1, Ordering::SeqCst);
        }
    }
}
