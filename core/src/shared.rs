//! The state every handle and worker shares: the subscription registry, the
//! queues, and the bus's lifecycle.
//!
//! # Shutdown from any thread
//!
//! The first `shutdown` closes the queues. Workers drain what was accepted
//! and leave; the last one to leave drops every handler and the error hook
//! (outside every lock: a handler may hold the last `Bus`), then marks the
//! bus *finished*. Every caller of `shutdown` outside a handler waits for
//! that mark; the first to see it joins the worker threads and marks the bus
//! *joined*, and every other caller waits for that, so no caller returns
//! before the drain and the join are done. A caller inside a handler cannot
//! wait for its own worker: it closes the bus and returns.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Instant;

use rustc_hash::FxHashMap;

use crate::config::{Config, ErrorHook};
use crate::context::in_handler_of;
use crate::error::ShutdownTimeout;
use crate::event::Event;
use crate::flush::Epochs;
use crate::gate::Gate;
use crate::history::History;
use crate::loom::{
    ArcCell, AtomicBool, AtomicU64, AtomicUsize, BoundedQueue, Condvar, JoinHandle, Mutex,
    Ordering, UnboundedQueue,
};
use crate::mailbox::Env;
use crate::panic::discard_panic;
use crate::queue::Queues;
use crate::reclaim::Calls;
use crate::snapshot::Snapshot;
use crate::stats::{Counters, LossLog, WorkerCounters};
use crate::subscription::{Subscription, SubscriptionId};
use crate::wait::WaitGraph;

/// The owner of the workers: dropping the last one shuts the bus down.
/// Every `Bus` holds it; the bus's state holds it weakly, for
/// `Bus::current`.
pub(crate) struct Handle {
    pub(crate) shared: Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        let shared = &self.shared;
        if in_handler_of(shared.id) {
            shared.close();
            return;
        }
        if shared.wait_here(|| shared.shutdown(None)).is_none() {
            // Dropped on a current-thread runtime whose async handlers this
            // thread would starve: close, and let the workers drain.
            shared.close();
            tracing::warn!(
                "the last Bus handle was dropped on a current-thread tokio runtime that runs async \
                 handlers: the bus is closed without waiting for its drain (call shutdown_async \
                 first to wait for it)"
            );
        }
    }
}

#[derive(Default)]
pub(crate) struct Registry {
    pub(crate) next_id: u64,
    /// Each plugin's live subscriptions, in subscription order.
    pub(crate) plugins: BTreeMap<Arc<str>, Vec<Arc<Subscription>>>,
    /// The plugin of each live subscription.
    pub(crate) by_id: FxHashMap<SubscriptionId, Arc<str>>,
    pub(crate) live: usize,
}

#[derive(Default)]
struct Life {
    handles: Vec<JoinHandle<()>>,
    /// The last worker has left and dropped the handlers.
    finished: bool,
    /// A caller is joining the worker threads.
    joining: bool,
    /// The worker threads are joined.
    joined: bool,
}

pub(crate) struct Shared {
    pub(crate) id: usize,
    pub(crate) config: Config,
    pub(crate) snapshot: ArcCell<Snapshot>,
    pub(crate) registry: Mutex<Registry>,
    pub(crate) queues: Queues<Arc<Event>>,
    pub(crate) epochs: Epochs,
    pub(crate) counters: Counters,
    pub(crate) history: Option<History>,
    pub(crate) waits: WaitGraph,
    pub(crate) calls: Calls,
    /// Ordered subscriptions whose mailboxes have events, for the workers.
    pub(crate) ready: UnboundedQueue<Arc<Subscription>>,
    /// Event blocks the workers were done with, for publishers to fill
    /// again (see [`Shared::recycle`]).
    spare: BoundedQueue<Arc<Event>>,
    /// Whether any ordered subscription is live (publishers route to them).
    pub(crate) ordered_live: AtomicUsize,
    /// Live async subscriptions on current-thread runtimes: a blocking
    /// wait on such a runtime's thread could starve them (see
    /// [`Shared::wait_mode`]).
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) async_on_current_thread: AtomicUsize,
    /// The publish sequence: every accepted event takes the next number.
    /// On a line of its own: publishers write it per event, workers read
    /// the fields around it.
    sequence: crossbeam_utils::CachePadded<AtomicU64>,
    /// Distinguishes this bus from every other (in any process), for keys
    /// made of it and a sequence number.
    pub(crate) instance: u64,
    pub(crate) loss_log: LossLog,
    /// Held while a worker-fed backlog is full under `Block`: outside
    /// publishers wait at it (see `gate.rs`).
    pub(crate) gate: crossbeam_utils::CachePadded<Gate>,
    /// The bus's handle, for [`Bus::current`](crate::Bus::current).
    pub(crate) handle: OnceLock<Weak<Handle>>,
    error_hook: Mutex<Option<Arc<ErrorHook>>>,
    shut: AtomicBool,
    live_workers: AtomicUsize,
    life: Mutex<Life>,
    life_changed: Condvar,
}

/// How many finished event blocks wait for a publisher to fill them again.
const SPARE_EVENTS: usize = 512;

/// A finished block whose name and source are longer than this together is
/// freed, not kept: what spare blocks hold stays under
/// `SPARE_EVENTS * (block + KEPT_MAX)` (about 220 KiB).
const KEPT_MAX: usize = 256;

impl Shared {
    /// `event` in a block of its own: a spare one when a worker left one,
    /// else a new allocation. A spare block's old name and source are
    /// dropped here (its payload and everything else already were, on the
    /// worker: see [`recycle`](Shared::recycle)).
    pub(crate) fn event_block(&self, event: Event) -> Arc<Event> {
        if let Some(mut spare) = self.spare.pop() {
            if let Some(slot) = Arc::get_mut(&mut spare) {
                *slot = event;
                return spare;
            }
        }
        Arc::new(event)
    }

    /// A worker is done with `event`. If that was its last reference, what
    /// the user may see dropped (the payload, whose `Drop` may be user code,
    /// its lineage and origin) is dropped now, as the event itself would
    /// be, and the block goes back to the publishers: the block's allocation
    /// and its free, and those of its name and source, then happen on
    /// publishers' threads, not one allocating what another frees, which
    /// made both contend on the allocator's arena lock for every event.
    /// (What the payload, lineage and origin allocated is still freed here.)
    /// A block with a long name or source is freed at once instead.
    pub(crate) fn recycle(&self, mut event: Arc<Event>) {
        if let Some(finished) = Arc::get_mut(&mut event) {
            if finished.kept_bytes() > KEPT_MAX {
                return;
            }
            finished.release();
            // A full stock: the block is freed here, as before.
            let _ = self.spare.push(event);
        }
    }

    /// [`recycle`](Shared::recycle) off the workers' dispatch loop (a
    /// mailbox's runner, the publisher evicting from history, a shed):
    /// a panic of the payload's `Drop` is caught, counted and logged, as
    /// [`drop_caught`](Shared::drop_caught) does. The block goes back to
    /// the publishers instead of being freed on a thread that did not
    /// allocate it (with a blocking subscriber beside ten inline ones, the
    /// publisher's `malloc` and the worker's `free` of every event met on
    /// glibc's arena lock, a futex each time).
    pub(crate) fn recycle_caught(&self, event: Arc<Event>) {
        let recycled =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.recycle(event)));
        if let Err(panic) = recycled {
            crate::panic::discard_panic(panic);
            // Relaxed: a statistic.
            self.counters.stray.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::error!("an event's payload panicked while it was dropped");
        }
    }

    pub(crate) fn new(config: Config, error_hook: Option<ErrorHook>) -> Shared {
        static NEXT_BUS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(1);
        Shared {
            // Relaxed: a unique number is all that is needed.
            id: NEXT_BUS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            snapshot: ArcCell::from_pointee(Snapshot::default()),
            registry: Mutex::new(Registry::default()),
            queues: Queues::new(
                config.capacity,
                config.priority_reserve.unwrap_or(config.capacity / 16),
            ),
            epochs: Epochs::new(),
            counters: Counters::new(config.workers),
            history: (config.history_size > 0).then(|| History::new(config.history_size)),
            waits: WaitGraph::new(),
            calls: Calls::new(config.workers),
            ready: UnboundedQueue::new(),
            spare: BoundedQueue::new(SPARE_EVENTS),
            ordered_live: AtomicUsize::new(0),
            async_on_current_thread: AtomicUsize::new(0),
            sequence: crossbeam_utils::CachePadded::new(AtomicU64::new(0)),
            instance: random_instance(),
            loss_log: LossLog::new(),
            gate: crossbeam_utils::CachePadded::new(Gate::new()),
            handle: OnceLock::new(),
            error_hook: Mutex::new(error_hook.map(Arc::new)),
            shut: AtomicBool::new(false),
            live_workers: AtomicUsize::new(config.workers),
            life: Mutex::new(Life::default()),
            life_changed: Condvar::new(),
            config,
        }
    }

    /// What the mailboxes need of the bus.
    #[inline]
    pub(crate) fn env(&self) -> Env<'_> {
        Env { epochs: &self.epochs, gate: &self.gate, stray: &self.counters.stray }
    }

    pub(crate) fn set_workers(&self, handles: Vec<JoinHandle<()>>) {
        self.life.lock().handles = handles;
    }

    pub(crate) fn is_shut(&self) -> bool {
        self.shut.load(Ordering::SeqCst)
    }

    /// The next number of the publish sequence, for an event sure to be
    /// accepted.
    #[inline]
    pub(crate) fn next_sequence(&self) -> u64 {
        // SeqCst: `subscribe_replay` reads the end after its subscribe; an
        // event numbered at or above it took its number later, and so is
        // matched against a snapshot holding the subscription.
        self.sequence.fetch_add(1, Ordering::SeqCst)
    }

    /// The number the next accepted event will take.
    pub(crate) fn sequence_end(&self) -> u64 {
        self.sequence.load(Ordering::SeqCst)
    }

    /// Logs, rate-limited, an event the bus's `Shed` policy dropped.
    pub(crate) fn log_shed(&self, event: &Event) {
        if let Some(suppressed) = self.loss_log.admit(1) {
            tracing::warn!(
                event = event.name(),
                suppressed,
                "the queues were full under Overflow::Shed: an event was dropped (counted in \
                 Stats::dropped)"
            );
        }
    }

    /// Reports to the error hook an event a backlog refused under
    /// `Overflow::Error` (it is counted already).
    pub(crate) fn report_backlog_refusal(
        &self,
        event: &Event,
        sub: &Subscription,
        error: &crate::error::BacklogFull,
    ) {
        self.call_hook(event, sub, error);
    }

    /// Calls the error hook, if any, outside the lock: the hook may do
    /// anything, even shut down. A panicking hook is caught and logged.
    fn call_hook(
        &self,
        event: &Event,
        sub: &Subscription,
        error: &(dyn std::error::Error + 'static),
    ) {
        let hook = self.error_hook.lock().clone();
        if let Some(hook) = hook {
            let hook_run = catch_unwind(AssertUnwindSafe(|| hook(event, &sub.plugin, error)));
            if let Err(panic) = hook_run {
                discard_panic(panic);
                tracing::error!(event = event.name(), "the error hook panicked");
            }
        }
    }

    pub(crate) fn handler_failed(
        &self,
        event: &Event,
        sub: &Subscription,
        error: &(dyn std::error::Error + 'static),
        counters: &WorkerCounters,
        panicked: bool,
    ) {
        WorkerCounters::add(&counters.errors, 1);
        if panicked {
            WorkerCounters::add(&counters.panics, 1);
        }
        // Relaxed: per-subscription statistics.
        sub.errors.fetch_add(1, Ordering::Relaxed);
        if panicked {
            sub.panics.fetch_add(1, Ordering::Relaxed);
        } else if error.is::<crate::error::HandlerTimeout>() {
            sub.timeouts.fetch_add(1, Ordering::Relaxed);
        }
        tracing::warn!(
            event = event.name(),
            event_id = %event.id(),
            plugin = &*sub.plugin,
            pattern = sub.pattern.as_str(),
            %error,
            "handler failed"
        );
        self.call_hook(event, sub, error);
    }

    /// `n` events of a batch `sub`'s runner took before shutdown retired
    /// it past the drain timeout: lost, counted and logged as the backlog's.
    pub(crate) fn drain_lost(&self, sub: &Subscription, n: usize) {
        if n == 0 {
            return;
        }
        // Relaxed: a statistic.
        self.counters.drain_dropped.fetch_add(n as u64, Ordering::Relaxed);
        tracing::warn!(
            plugin = &*sub.plugin,
            pattern = sub.pattern.as_str(),
            lost = n,
            "shutdown: the drain timeout passed with events in a subscription's batch; they \
             are dropped (counted in Stats::drain_dropped)"
        );
    }

    /// Called as `n` workers leave (or, when a spawn fails, never start).
    /// The last one drops every handler and the error hook, which breaks
    /// the cycles of those that hold a `Bus`, then marks the bus finished.
    pub(crate) fn worker_exited(&self, n: usize) {
        if n == 0 || self.live_workers.fetch_sub(n, Ordering::SeqCst) != n {
            return;
        }
        self.drain_mailboxes();
        self.clear_subscriptions();
        let hook = self.error_hook.lock().take();
        self.drop_caught(hook);
        self.life.lock().finished = true;
        self.life_changed.notify_all();
    }

    /// How this thread may wait for the bus's work, minding the tokio
    /// runtime it may belong to: on a multi-thread runtime's thread, in
    /// `block_in_place`, so the runtime moves its other tasks (async
    /// handlers among them) elsewhere; on a current-thread runtime's thread
    /// while async handlers run on a current-thread runtime, not at all
    /// (waiting could starve them forever: the `_async` forms are for
    /// that); elsewhere, plainly.
    pub(crate) fn wait_mode(&self) -> WaitMode {
        self.wait_mode_with(0)
    }

    /// [`wait_mode`](Shared::wait_mode), counting `removed` more async
    /// subscriptions on current-thread runtimes (ones just unsubscribed,
    /// whose calls may still run).
    pub(crate) fn wait_mode_with(&self, removed: usize) -> WaitMode {
        #[cfg(feature = "tokio")]
        if !crate::context::off_runtime() {
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                return match handle.runtime_flavor() {
                    tokio::runtime::RuntimeFlavor::CurrentThread => {
                        if self.async_on_current_thread.load(Ordering::SeqCst) + removed > 0 {
                            WaitMode::Refused
                        } else {
                            WaitMode::Plain
                        }
                    }
                    _ => WaitMode::InPlace,
                };
            }
        }
        let _ = removed;
        WaitMode::Plain
    }

    /// Runs `wait` as [`wait_mode`](Shared::wait_mode) says; `None` when
    /// this thread must not wait.
    pub(crate) fn wait_here<R>(&self, wait: impl FnOnce() -> R) -> Option<R> {
        match self.wait_mode() {
            WaitMode::Plain => Some(wait()),
            #[cfg(feature = "tokio")]
            WaitMode::InPlace => Some(tokio::task::block_in_place(wait)),
            #[cfg(not(feature = "tokio"))]
            WaitMode::InPlace => Some(wait()),
            WaitMode::Refused => None,
        }
    }

    /// Runs `wait` (a flush) as [`wait_here`](Shared::wait_here) does; where
    /// it must not wait, panics with a message naming the `_async` form, as
    /// tokio's own blocking calls do.
    pub(crate) fn blocking_wait<R>(&self, what: &str, wait: impl FnOnce() -> R) -> R {
        match self.wait_here(wait) {
            Some(r) => r,
            None => panic!(
                "Bus::{what} called on a current-thread tokio runtime that runs async handlers \
                 would wait forever; use {what}_async"
            ),
        }
    }

    /// Puts an ordered subscription with events on the ready queue, and
    /// wakes a worker for it.
    pub(crate) fn make_ready(&self, sub: Arc<Subscription>) {
        self.ready.push(sub);
        self.queues.notify_worker();
    }

    /// Drops the handlers of retired subscriptions that no worker is
    /// calling any more, here and now, outside every lock.
    pub(crate) fn reclaim(&self) {
        for handler in self.calls.reclaim() {
            self.drop_caught(handler);
        }
    }

    /// Called as the last worker leaves: the queues are drained, so no
    /// event can reach a mailbox any more. Seals the mailboxes and waits, up
    /// to the drain timeout, for the blocking threads and async tasks to
    /// finish their backlogs.
    fn drain_mailboxes(&self) {
        let subs: Vec<Arc<Subscription>> = {
            let reg = self.registry.lock();
            reg.plugins.values().flatten().filter(|s| s.mailbox.is_some()).cloned().collect()
        };
        if subs.is_empty() {
            return;
        }
        for sub in &subs {
            if let Some(mailbox) = &sub.mailbox {
                mailbox.seal(&self.env());
            }
        }
        let deadline = Instant::now().checked_add(self.config.drain_timeout);
        if self.epochs.flush(deadline).is_err() {
            tracing::warn!(
                pending = self.epochs.pending(),
                timeout = ?self.config.drain_timeout,
                "shutdown: blocking and async handlers still had events at the drain timeout; \
                 what is left in their backlogs is dropped (counted in Stats::drain_dropped)"
            );
        }
    }

    /// Called once every worker has left: no inline handler can run any
    /// more; mailbox handlers still running keep their own clone.
    fn clear_subscriptions(&self) {
        let plugins = {
            let mut reg = self.registry.lock();
            reg.live = 0;
            reg.by_id.clear();
            // Nothing is left to route to or to wait for.
            self.ordered_live.store(0, Ordering::SeqCst);
            self.async_on_current_thread.store(0, Ordering::SeqCst);
            std::mem::take(&mut reg.plugins)
        };
        let mut subs: Vec<Arc<Subscription>> = plugins.into_values().flatten().collect();
        subs.extend(self.calls.take_all());
        for sub in &subs {
            sub.close();
        }
        let mut works = Vec::new();
        for sub in &subs {
            let Some(mailbox) = &sub.mailbox else { continue };
            // Past the drain timeout: the discarded events were accepted and
            // are lost, so they are counted and logged.
            let (work, lost) = mailbox.retire_losing(&self.env());
            works.extend(work);
            if lost.count > 0 {
                // Relaxed: a statistic.
                self.counters.drain_dropped.fetch_add(lost.count, Ordering::Relaxed);
                tracing::warn!(
                    plugin = &*sub.plugin,
                    pattern = sub.pattern.as_str(),
                    lost = lost.count,
                    "shutdown: the drain timeout passed with events in a subscription's backlog; \
                     they are dropped (counted in Stats::drain_dropped)"
                );
            }
        }
        for work in works {
            self.drop_caught(work);
        }
        let old = self.snapshot.swap(Arc::new(Snapshot::default()));
        // Handlers are dropped here, outside every lock, one at a time so
        // that one whose `Drop` panics does not keep the others alive.
        for sub in &subs {
            // SAFETY: every worker has exited, so no call runs or starts,
            // and the subscriptions have left the registry and the retired
            // list, so nothing else takes their handlers.
            let handler = unsafe { sub.take_handler() };
            self.drop_caught(handler);
        }
        self.drop_caught(old);
        drop(subs);
    }

    /// Drops `value`, catching and counting a panic of its `Drop`.
    pub(crate) fn drop_caught<T>(&self, value: T) {
        crate::panic::drop_caught(value, &self.counters.stray);
    }

    /// Closes the bus: no event is accepted from now on.
    pub(crate) fn close(&self) {
        if !self.shut.swap(true, Ordering::SeqCst) {
            self.queues.close();
        }
    }

    /// Closes the bus, then (outside a handler) waits until the workers have
    /// drained, dropped the handlers and been joined, or until `deadline`.
    /// The caller has made sure this thread may wait (see
    /// [`wait_mode`](Shared::wait_mode)).
    pub(crate) fn shutdown(&self, deadline: Option<Instant>) -> Result<(), ShutdownTimeout> {
        self.close();
        if in_handler_of(self.id) {
            // A handler cannot wait for its own thread; the workers finish
            // draining on their own.
            return Err(self.unfinished(true));
        }
        let mut life = self.life.lock();
        loop {
            if life.joined {
                return Ok(());
            }
            if life.finished && !life.joining {
                life.joining = true;
                let handles = std::mem::take(&mut life.handles);
                drop(life);
                for handle in handles {
                    // A worker never unwinds: it catches every user panic.
                    let _ = handle.join();
                }
                self.life.lock().joined = true;
                self.life_changed.notify_all();
                return Ok(());
            }
            let (guard, timed_out) = self.life_changed.wait_until(life, deadline);
            life = guard;
            if timed_out && !life.joined {
                drop(life);
                return Err(self.unfinished(false));
            }
        }
    }

    fn unfinished(&self, from_handler: bool) -> ShutdownTimeout {
        ShutdownTimeout {
            pending: self.epochs.pending(),
            running_workers: self.live_workers.load(Ordering::SeqCst),
            from_handler,
        }
    }
}

/// How a thread may wait; see [`Shared::wait_mode`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WaitMode {
    Plain,
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    InPlace,
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    Refused,
}

/// A number no other bus is likely to have drawn, in this process or any
/// other: the clock, the process id and a per-process count, hashed with
/// the process's random hash keys.
fn random_instance() -> u64 {
    use std::hash::{BuildHasher, Hash, Hasher};
    static COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    std::time::SystemTime::now().hash(&mut hasher);
    std::process::id().hash(&mut hasher);
    // Relaxed: only uniqueness matters.
    COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed).hash(&mut hasher);
    hasher.finish()
}
