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
//!   a task on its tokio runtime (see `dispatch/tokio.rs`).
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
//!   as running before it lets go (a batch of calls, see `next_batch`,
//!   counts as one, and asks `is_retired` before each). Retiring takes it
//!   out under the same lock and discards the backlog, so once that returns
//!   no call starts; the
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
use std::sync::Arc;
use std::time::Instant;

use crate::event::Event;
use crate::flush::Epochs;
use crate::gate::Gate;
use crate::handler::HandlerResult;
use crate::loom::{backoff, AtomicBool, AtomicU64, AtomicUsize, Condvar, Mutex, Ordering};
use crate::queue::Overflow;

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
    Tokio(TokioRunner),
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
    /// Set once the subscription is retired (its work taken out).
    retired: AtomicBool,
    /// Set (before `retired`) when the retire was the drain timeout's at
    /// shutdown: a batch's events its runner no longer calls are lost.
    losing: AtomicBool,
    /// The backlog's length as of the last change, for
    /// [`room_for`](Mailbox::room_for)'s look without the lock.
    queued: AtomicUsize,
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
pub(crate) enum Wake {
    None,
    /// Put the subscription on the ready queue.
    Ready,
    /// Start a runner task.
    #[cfg(feature = "tokio")]
    Spawn,
}

/// What a mailbox needs from its bus: the flush epochs its events are
/// counted in, the gate a full worker-fed backlog holds, and the count of
/// stray panics (a discarded event's `Drop`).
pub(crate) struct Env<'a> {
    pub(crate) epochs: &'a Epochs,
    pub(crate) gate: &'a Gate,
    pub(crate) stray: &'a AtomicU64,
}

impl Env<'_> {
    /// Drops `value` outside every lock, catching a panic of its `Drop`.
    fn drop_caught<T>(&self, value: T) {
        crate::panic::drop_caught(value, self.stray);
    }
}

/// What a [`push`](Mailbox::push) did.
pub(crate) struct Pushed {
    /// What the caller must do, now that the lock is released.
    pub(crate) wake: Wake,
    /// The oldest event, shed to make room (`Overflow::Shed`), still counted
    /// in its flush bucket: the caller counts it as lost, then counts it out
    /// of the bucket (so a flush that returns has seen the loss counted),
    /// then drops it.
    pub(crate) shed: Option<Entry>,
}

/// Events a mailbox gave up (retired at shutdown, or abandoned), counted
/// out of their flush buckets and dropped: how many, and the name of the
/// first, for the caller's count and log.
pub(crate) struct Lost {
    pub(crate) count: u64,
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) first: Option<String>,
}

/// Where and how an async subscription runs: the runtime, the time limit
/// of a call, and the permits of concurrent calls (`None` when calls run
/// one at a time, in the runner task itself).
#[cfg(feature = "tokio")]
pub(crate) struct TokioRunner {
    pub(crate) handle: tokio::runtime::Handle,
    pub(crate) timeout: Option<std::time::Duration>,
    pub(crate) permits: Option<Arc<tokio::sync::Semaphore>>,
}

#[cfg(feature = "tokio")]
impl TokioRunner {
    pub(crate) fn new(
        handle: tokio::runtime::Handle,
        concurrency: usize,
        timeout: Option<std::time::Duration>,
    ) -> TokioRunner {
        let permits = (concurrency > 1).then(|| Arc::new(tokio::sync::Semaphore::new(concurrency)));
        TokioRunner { handle, timeout, permits }
    }

    /// Whether its runtime is a current-thread one.
    pub(crate) fn on_current_thread(&self) -> bool {
        self.handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread
    }
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
            retired: AtomicBool::new(false),
            losing: AtomicBool::new(false),
            queued: AtomicUsize::new(0),
        }
    }

    /// How many events may wait.
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Whether an event may go in now (see [`Room`]). A handler never
    /// waits: under `Block` it may overshoot the capacity by as much again.
    pub(crate) fn room_for(&self, from_handler: bool) -> Room {
        // Without the lock while there is room, which is nearly always: the
        // publisher of an ordered subscription's event asks this for every
        // event, and the lock is the one the runner takes. Relaxed: the
        // answer is a snapshot either way (publishers checking at once may
        // overshoot by one each, see `push`), and a thread's own pushes are
        // in its own reads.
        if self.queued.load(Ordering::Relaxed) < self.capacity {
            return Room::Free;
        }
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

    /// Puts `event` in the backlog (counted in flush bucket `bucket`).
    /// Room was checked (or waited for) by the caller, so a full backlog
    /// only sheds its oldest event under `Shed`; under the other policies
    /// it takes the event anyway (publishers that checked at once may
    /// overshoot an ordered backlog by one event each; workers a blocking or
    /// async one by what the queues hold, holding the gate meanwhile).
    /// `None` when the subscription is retired or the mailbox sealed (the
    /// event is skipped).
    pub(crate) fn push(&self, env: &Env<'_>, event: &Arc<Event>, bucket: usize) -> Option<Pushed> {
        env.epochs.begin_in(bucket);
        let pushed = self.push_counted(env, event, bucket);
        if pushed.is_none() {
            env.epochs.end(bucket, 1);
        }
        pushed
    }

    /// [`push`](Mailbox::push), for a caller that counted the event in
    /// `bucket` already (a publisher counts its pushes to every ordered
    /// subscription at once): on `None` it counts it out again.
    pub(crate) fn push_counted(
        &self,
        env: &Env<'_>,
        event: &Arc<Event>,
        bucket: usize,
    ) -> Option<Pushed> {
        let (wake, shed) = {
            let mut state = self.state.lock();
            if state.work.is_none() || state.sealed {
                return None;
            }
            let shed = (self.overflow == Overflow::Shed && state.entries.len() >= self.capacity)
                .then(|| state.entries.pop_front())
                .flatten();
            state.entries.push_back(Entry { event: event.clone(), bucket });
            self.queued.store(state.entries.len(), Ordering::Relaxed);
            if !self.ordered
                && self.overflow == Overflow::Block
                && !state.holding
                && state.entries.len() >= self.capacity
            {
                state.holding = true;
                env.gate.hold();
            }
            let wake = match self.runner {
                Runner::Threads => {
                    self.changed.notify_one();
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
        Some(Pushed { wake, shed })
    }

    /// Counts `n` events lost for this subscription.
    pub(crate) fn count_lost(&self, n: u64) {
        // Relaxed: a statistic.
        self.backlog_dropped.fetch_add(n, Ordering::Relaxed);
    }

    /// Up to `max` of the next events, in order, into `batch`, and the work
    /// to do with them, counted as one running call until
    /// [`done_batch`](Mailbox::done_batch); or `None` when the backlog is
    /// empty (then the mailbox is no longer scheduled) or the subscription
    /// retired. One lock for the batch, where [`next`](Mailbox::next) takes
    /// it per event and contends with the publisher pushing each one. The
    /// caller asks [`is_retired`](Mailbox::is_retired) before each call, so
    /// a retire that returns while it still holds events starts none of
    /// them (as `next` then finds the backlog discarded).
    pub(crate) fn next_batch(
        &self,
        env: &Env<'_>,
        max: usize,
        batch: &mut impl Extend<Entry>,
    ) -> Option<Work> {
        let mut state = self.state.lock();
        let work = state.work.clone();
        match work {
            Some(work) if !state.entries.is_empty() => {
                let n = max.min(state.entries.len());
                batch.extend(state.entries.drain(..n));
                state.running += 1;
                self.made_room(&mut state, env);
                Some(work)
            }
            _ => {
                state.scheduled = false;
                None
            }
        }
    }

    /// Whether the subscription is retired: a batch taken before stops
    /// there.
    pub(crate) fn is_retired(&self) -> bool {
        // Acquire: pairs with the Release in `retire`, under whose lock the
        // work was taken out.
        self.retired.load(Ordering::Acquire)
    }

    /// Whether the retire was shutdown's, past the drain timeout: the
    /// events of a batch taken before it and not called are lost, not
    /// discarded (asked once `is_retired` said so).
    pub(crate) fn retired_losing(&self) -> bool {
        // Relaxed: stored before the Release of `retired`, read after an
        // Acquire of it.
        self.losing.load(Ordering::Relaxed)
    }

    /// [`retire`](Mailbox::retire) at shutdown: what it discards, and what
    /// batches taken before it leave uncalled, is lost.
    pub(crate) fn retire_losing(&self, env: &Env<'_>) -> (Option<Work>, Lost) {
        self.losing.store(true, Ordering::Relaxed);
        self.retire(env)
    }

    /// Ends a batch begun by [`next_batch`](Mailbox::next_batch), as
    /// [`done`](Mailbox::done) ends one call: `ended[b]` events counted out
    /// of flush bucket `b`, then `work` dropped outside every lock, then the
    /// batch stops counting as running.
    pub(crate) fn done_batch(&self, env: &Env<'_>, ended: [usize; 2], work: Option<Work>) {
        env.epochs.end(0, ended[0]);
        env.epochs.end(1, ended[1]);
        env.drop_caught(work);
        let mut state = self.state.lock();
        state.running -= 1;
        if state.running == 0 {
            self.changed.notify_all();
        }
    }

    /// The next event and the work to do with it, counted as running; or
    /// `None` when the backlog is empty (then the mailbox is no longer
    /// scheduled) or the subscription retired.
    // The async runner of concurrent calls takes one event per permit; the
    // others take batches.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn next(&self, env: &Env<'_>) -> Option<(Entry, Work)> {
        let mut state = self.state.lock();
        let work = state.work.clone();
        match (work, state.entries.pop_front()) {
            (Some(work), Some(entry)) => {
                state.running += 1;
                self.made_room(&mut state, env);
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
    pub(crate) fn next_blocking(&self, env: &Env<'_>) -> Option<(Entry, Work)> {
        let mut state = self.state.lock();
        loop {
            let work = state.work.clone()?;
            if let Some(entry) = state.entries.pop_front() {
                state.running += 1;
                self.made_room(&mut state, env);
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
    fn made_room(&self, state: &mut State, env: &Env<'_>) {
        self.queued.store(state.entries.len(), Ordering::Relaxed);
        if state.room_waiters > 0 {
            self.room.notify_all();
        }
        if state.holding
            && (state.entries.len() < self.capacity || state.work.is_none() || state.sealed)
        {
            state.holding = false;
            env.gate.release();
        }
    }

    /// Ends a call begun by [`next`](Mailbox::next): its event is counted
    /// out of its flush bucket, then `work` (maybe the handler's last clone,
    /// when the subscription retired meanwhile) is dropped outside every
    /// lock and scope, then the call stops counting as running. So a
    /// handler's `Drop` may flush or shut the bus down, and whoever waits for
    /// the call returns with the handler dropped.
    pub(crate) fn done(&self, env: &Env<'_>, bucket: usize, work: Option<Work>) {
        env.epochs.end(bucket, 1);
        env.drop_caught(work);
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
    /// backlog (counted out of its flush buckets, and dropped). Once this
    /// returns, no call starts. The work is returned to be dropped outside
    /// the lock, with what was discarded (events lost, if the bus meant
    /// to run them: at shutdown).
    pub(crate) fn retire(&self, env: &Env<'_>) -> (Option<Work>, Lost) {
        let (work, discarded) = {
            let mut state = self.state.lock();
            let work = state.work.take();
            // Release: see `is_retired`.
            self.retired.store(true, Ordering::Release);
            let discarded = std::mem::take(&mut state.entries);
            self.changed.notify_all();
            self.made_room(&mut state, env);
            (work, discarded)
        };
        (work, self.discard(env, discarded))
    }

    /// Gives up the backlog (its runner can no longer run): the events are
    /// counted as dropped for this subscription and out of their flush
    /// buckets, and the mailbox is no longer scheduled, so the next event
    /// starts a runner again.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn abandon(&self, env: &Env<'_>) -> Lost {
        let lost = {
            let mut state = self.state.lock();
            state.scheduled = false;
            let lost = std::mem::take(&mut state.entries);
            self.made_room(&mut state, env);
            lost
        };
        let lost = self.discard(env, lost);
        self.count_lost(lost.count);
        lost
    }

    /// Counts `entries` out of their flush buckets and drops them.
    fn discard(&self, env: &Env<'_>, entries: VecDeque<Entry>) -> Lost {
        for entry in &entries {
            env.epochs.end(entry.bucket, 1);
        }
        let lost = Lost {
            count: entries.len() as u64,
            first: entries.front().map(|e| e.event.name().to_owned()),
        };
        env.drop_caught(entries);
        lost
    }

    /// No event will come any more: thread runners leave once empty.
    pub(crate) fn seal(&self, env: &Env<'_>) {
        let mut state = self.state.lock();
        state.sealed = true;
        self.changed.notify_all();
        self.made_room(&mut state, env);
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
