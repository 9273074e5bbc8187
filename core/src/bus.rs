//! The public handle: subscribing, publishing, waiting, shutting down.

use std::fmt;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use switchboard_matcher::Pattern;

use crate::builder::BusBuilder;
use crate::error::{
    BuildError, FlushTimeout, HistoryError, NameError, PublishError, ShutdownTimeout,
    SubscribeError, WaitTimeout,
};
use crate::event::Priority;
use crate::event::{Event, EventId};
use crate::handler::{Handler, HandlerResult, Kind};
use crate::loom::Ordering;
use crate::mailbox::{self, Mailbox, Room, Runner, Work};
use crate::queue::{Offer, Overflow};
use crate::shared::Shared;
use crate::stats::SubscriptionStats;
use crate::stats::{Count, Stats};
use crate::subscription::{SubscribeOptions, Subscription, SubscriptionId};
use crate::worker::{in_handler_of, mailbox_call, parent_of, worker_index, CONTEXT};
use smallvec::SmallVec;

/// The owner of the workers: dropping the last one shuts the bus down.
pub(crate) struct Handle {
    shared: Arc<Shared>,
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

/// An event bus: a cheap, cloneable handle (`Clone + Send + Sync`).
///
/// Publishing queues the event and returns at once; worker threads match it
/// against the subscriptions and call the handlers. Dropping the last handle
/// shuts the bus down, like [`shutdown`](Bus::shutdown).
///
/// A handler that captures a `Bus` keeps the bus alive until
/// [`shutdown`](Bus::shutdown) is called; capture a [`WeakBus`]
/// ([`Bus::downgrade`]) to let dropping the last outside handle stop it.
///
/// # Examples
///
/// ```
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use std::sync::Arc;
/// use serde_json::json;
/// use switchboard::{Bus, Event, Handler};
///
/// let bus = Bus::builder().workers(2).build()?;
/// let seen = Arc::new(AtomicUsize::new(0));
/// let counter = seen.clone();
/// let count = Handler::sync(move |_event| {
///     counter.fetch_add(1, Ordering::SeqCst);
///     Ok(())
/// });
/// bus.subscribe("trivia.*", count, "stats")?;
/// bus.publish(Event::new("trivia.started", json!({"question": "2+2?"}), "trivia"))?;
/// bus.publish(Event::new("quote.added", json!({}), "quotes"))?;
/// bus.flush();
/// assert_eq!(seen.load(Ordering::SeqCst), 1);
/// bus.shutdown();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Bus {
    handle: Arc<Handle>,
}

/// A handle that does not keep the bus alive; see [`Bus::downgrade`].
#[derive(Clone)]
pub struct WeakBus {
    handle: Weak<Handle>,
}

impl WeakBus {
    /// The bus, if a [`Bus`] handle still exists.
    pub fn upgrade(&self) -> Option<Bus> {
        self.handle.upgrade().map(|handle| Bus { handle })
    }
}

/// A subscription that lasts as long as this guard: dropping it
/// unsubscribes (as [`Bus::unsubscribe`] of its id). From
/// [`Bus::subscribe_scoped`].
///
/// The guard does not keep the bus alive; once the bus is gone, dropping it
/// does nothing.
#[must_use = "dropping the guard unsubscribes at once"]
pub struct SubscriptionGuard {
    /// `None` once unsubscribed or detached.
    bus: Option<WeakBus>,
    id: SubscriptionId,
}

impl SubscriptionGuard {
    /// The subscription's id.
    pub fn id(&self) -> SubscriptionId {
        self.id
    }

    /// Unsubscribes now and waits for its running calls, as
    /// [`Unsubscribed::wait`]; `false` when it was no longer live.
    pub fn unsubscribe_and_wait(mut self) -> bool {
        let bus = self.bus.take().and_then(|b| b.upgrade());
        bus.is_some_and(|bus| bus.unsubscribe(self.id).wait() == 1)
    }

    /// Keeps the subscription for the bus's lifetime, dropping the guard
    /// without unsubscribing; returns its id.
    pub fn detach(mut self) -> SubscriptionId {
        self.bus = None;
        self.id
    }
}

impl Drop for SubscriptionGuard {
    fn drop(&mut self) {
        if let Some(bus) = self.bus.take().and_then(|b| b.upgrade()) {
            drop(bus.unsubscribe(self.id));
        }
    }
}

impl fmt::Debug for SubscriptionGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubscriptionGuard").field("id", &self.id).finish_non_exhaustive()
    }
}

impl fmt::Debug for WeakBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WeakBus").finish_non_exhaustive()
    }
}

impl fmt::Debug for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bus")
            .field("name", &self.shared().config.name)
            .field("workers", &self.shared().config.workers)
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

impl Bus {
    /// A bus with the default configuration (2 workers, capacity 65,536,
    /// blocking overflow, history of 100, depth 16).
    ///
    /// # Errors
    ///
    /// [`BuildError::Spawn`] when a worker thread cannot be started.
    pub fn new() -> Result<Bus, BuildError> {
        BusBuilder::default().build()
    }

    /// A builder to configure a bus.
    pub fn builder() -> BusBuilder {
        BusBuilder::default()
    }

    pub(crate) fn from_shared(shared: Arc<Shared>) -> Bus {
        let handle = Arc::new(Handle { shared });
        let _ = handle.shared.handle.set(Arc::downgrade(&handle));
        Bus { handle }
    }

    /// The bus whose handler this thread is running, as
    /// [`tokio::runtime::Handle::current`] gives the runtime: `None` outside
    /// a handler, or once the bus's last handle is gone (it is shutting
    /// down).
    ///
    /// A handler that publishes or subscribes through it needs no `Bus` of
    /// its own, and so does not keep the bus alive (a handler that captures
    /// a `Bus` does, until [`shutdown`](Bus::shutdown)). Keep the returned
    /// handle for the call, not beyond.
    ///
    /// [`tokio::runtime::Handle::current`]: https://docs.rs/tokio/latest/tokio/runtime/struct.Handle.html#method.current
    ///
    /// # Examples
    ///
    /// ```
    /// use serde_json::Value;
    /// use switchboard::{Bus, Event, Handler, HistoryQuery};
    ///
    /// let bus = Bus::new()?;
    /// let index = Handler::sync(|event| {
    ///     let bus = Bus::current().expect("called by a worker of a live bus");
    ///     bus.publish(Event::new("search.indexed", event.data().clone(), "search"))?;
    ///     Ok(())
    /// });
    /// bus.subscribe("quote.added", index, "search")?;
    /// assert!(Bus::current().is_none(), "not inside a handler");
    /// bus.publish(Event::new("quote.added", Value::from(7), "quotes"))?;
    /// bus.flush();
    /// assert_eq!(bus.history(HistoryQuery::new().matching("search.*"))?.len(), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn current() -> Option<Bus> {
        CONTEXT.with(|c| {
            let c = c.borrow();
            let handle = c.shared.as_ref()?.handle.get()?.upgrade()?;
            Some(Bus { handle })
        })
    }

    fn shared(&self) -> &Shared {
        &self.handle.shared
    }

    /// Whether `self` and `other` are handles of one bus.
    pub fn same_bus(&self, other: &Bus) -> bool {
        Arc::ptr_eq(&self.handle, &other.handle)
    }

    /// A number that tells this bus apart from every other one, in this
    /// process or any other (drawn at random when it was built). With an
    /// event's [`sequence`](Event::sequence) it makes a key unique to one
    /// accepted publish, for de-duplicating across buses: a republished
    /// clone of an event is a new publish with a new key.
    pub fn instance(&self) -> u64 {
        self.shared().instance
    }

    /// Whether this thread is running a handler of this bus (as one of its
    /// workers, in a blocking or async subscription's call, or in a
    /// replayed call): code that may run in a handler or outside one (a
    /// plugin's unload) can tell which. In a handler the bus never waits for
    /// its own work: `flush` returns at once, `publish` does not wait for
    /// room.
    pub fn in_handler(&self) -> bool {
        in_handler_of(self.shared().id)
    }

    /// Whether this thread may wait for the bus's work: `false` on a
    /// current-thread tokio runtime's thread while async handlers run on a
    /// current-thread runtime (a wait there would starve them; `publish`
    /// returns [`PublishError::WouldBlock`] instead of waiting, and
    /// [`Unsubscribed::wait`] panics). Elsewhere `true`.
    pub fn can_wait_here(&self) -> bool {
        self.shared().wait_mode() != crate::shared::WaitMode::Refused
    }

    /// Runs `f` on tokio's blocking pool, where waiting for the bus is
    /// allowed on any runtime flavour, and returns its result (a panic of
    /// `f` resumes here). Called from an async handler of this bus, `f`
    /// runs in that handler's context: a [`Unsubscribed::wait`] in it
    /// excuses the call it is part of (a plugin unloading itself), and
    /// [`in_handler`](Bus::in_handler) is `true` there, as they would be on
    /// the handler's own thread.
    ///
    /// # Examples
    ///
    /// ```
    /// use switchboard::{Bus, Handler, Target};
    ///
    /// # let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    /// # runtime.block_on(async {
    /// let bus = Bus::new()?;
    /// bus.subscribe("quote.*", Handler::future(|_e| async { Ok(()) }), "search")?;
    /// let waiter = bus.clone();
    /// let removed = bus.run_blocking(move || waiter.unsubscribe(Target::Plugin("search")).wait()).await;
    /// assert_eq!(removed, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[cfg(feature = "tokio")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
    pub async fn run_blocking<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> R {
        let carried = crate::worker::CarriedContext::capture(self.shared().id);
        crate::asynchronous::on_blocking_pool(move || {
            let _scope = carried.map(crate::worker::CarriedContext::enter);
            f()
        })
        .await
    }

    /// A handle that does not keep the bus alive.
    pub fn downgrade(&self) -> WeakBus {
        WeakBus { handle: Arc::downgrade(&self.handle) }
    }

    /// Calls `handler` for every event whose name matches `pattern` (an
    /// fnmatch glob: `trivia.*`, `*`), on behalf of the plugin `options`
    /// names; the handler's kind ([`Handler::sync`], [`Handler::typed`], or
    /// with the feature `tokio` `Handler::future`) and the `options` say
    /// where and how it runs. A plugin name alone stands for the default
    /// options: `bus.subscribe(pattern, handler, "stats")`.
    ///
    /// Within one event, handlers run by subscription
    /// [priority](SubscribeOptions::priority) (`High` first), then in
    /// subscription order. An event published after this returns (on this
    /// thread, or ordered after it) is seen by the subscription.
    ///
    /// An async handler runs on the runtime of
    /// [`BusBuilder::runtime`](crate::BusBuilder::runtime), else the one
    /// current here.
    ///
    /// # Errors
    ///
    /// [`SubscribeError`] for an empty pattern or plugin name (or none
    /// given), one longer than [`MAX_NAME_LEN`](crate::MAX_NAME_LEN), one
    /// with a NUL, an option out of its range, an async handler with no
    /// runtime to run on ([`SubscribeError::NoRuntime`]), or a closed bus.
    ///
    /// # Examples
    ///
    /// ```
    /// use switchboard::{Bus, Event, Handler, Priority, SubscribeOptions};
    ///
    /// let bus = Bus::new()?;
    /// bus.subscribe("trivia.*", Handler::sync(|_event| Ok(())), "stats")?;
    /// let audit = SubscribeOptions::new().plugin("audit").ordered().priority(Priority::High);
    /// bus.subscribe("*", Handler::sync(|event: &Event| {
    ///     println!("{} from {}", event.name(), event.source());
    ///     Ok(())
    /// }), audit)?;
    /// assert_eq!(bus.stats().subscriptions, 2);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn subscribe(
        &self,
        pattern: &str,
        handler: Handler,
        options: impl Into<SubscribeOptions>,
    ) -> Result<SubscriptionId, SubscribeError> {
        Ok(self.add_subscription(pattern, handler, options.into())?.id)
    }

    /// [`subscribe`](Bus::subscribe), returning a guard that unsubscribes
    /// when dropped: the subscription lives as long as the scope (or the
    /// struct) holding the guard. Any kind of handler, any options.
    ///
    /// # Errors
    ///
    /// As [`subscribe`](Bus::subscribe).
    ///
    /// # Examples
    ///
    /// ```
    /// use switchboard::{Bus, Handler};
    ///
    /// let bus = Bus::new()?;
    /// {
    ///     let _guard = bus.subscribe_scoped("trivia.*", Handler::sync(|_event| Ok(())), "stats")?;
    ///     assert_eq!(bus.stats().subscriptions, 1);
    /// }
    /// assert_eq!(bus.stats().subscriptions, 0, "dropping the guard unsubscribed");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn subscribe_scoped(
        &self,
        pattern: &str,
        handler: Handler,
        options: impl Into<SubscribeOptions>,
    ) -> Result<SubscriptionGuard, SubscribeError> {
        let id = self.subscribe(pattern, handler, options)?;
        Ok(SubscriptionGuard { bus: Some(self.downgrade()), id })
    }

    /// [`subscribe`](Bus::subscribe), and catches the handler up: it is
    /// first called, on this thread and before this returns, with up to
    /// `last` of the latest events in [`history`](Bus::history) matching
    /// `pattern`, in publish order; then with live events, as the options
    /// say. At the seam nothing is missed and nothing comes twice, whatever
    /// the number of publishers: the replayed events are a contiguous run of
    /// the publish sequence ending just below the seam, live events numbered
    /// below the seam are skipped, and live events that arrive during the
    /// replay wait for it (buffered; no worker waits). (On a bus without
    /// history there is nothing to replay.)
    ///
    /// Replayed calls are handler calls: they run inside the handler's
    /// context (so [`Bus::current`] works, a publish from them is one level
    /// deeper, a `flush` from them returns at once), under no lock, and a
    /// replayed call's error or panic is counted and reported like any
    /// handler's. The replay stops early if the subscription is removed
    /// meanwhile.
    ///
    /// # Errors
    ///
    /// As [`subscribe`](Bus::subscribe), and
    /// [`SubscribeError::InvalidOption`] for an async handler (a replay
    /// calls the handler on this thread, which async code cannot be).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use switchboard::{Bus, Event, Handler};
    ///
    /// let bus = Bus::builder().history_size(100).build()?;
    /// for i in 0..5 {
    ///     bus.publish(Event::new("score.changed", serde_json::json!(i), "trivia"))?;
    /// }
    /// let seen = Arc::new(Mutex::new(Vec::new()));
    /// let s = seen.clone();
    /// let board = Handler::sync(move |e: &Event| {
    ///     s.lock().unwrap().push(e.data().as_u64().unwrap());
    ///     Ok(())
    /// });
    /// let replay = bus.subscribe_replay("score.*", board, "board", 3)?;
    /// assert_eq!((replay.replayed, replay.seam), (3, 5));
    /// bus.publish(Event::new("score.changed", serde_json::json!(5), "trivia"))?;
    /// bus.flush();
    /// assert_eq!(*seen.lock().unwrap(), [2, 3, 4, 5]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn subscribe_replay(
        &self,
        pattern: &str,
        handler: Handler,
        options: impl Into<SubscribeOptions>,
        last: usize,
    ) -> Result<Replayed, SubscribeError> {
        struct Replay {
            /// Live events that came during the replay, each still counted
            /// in the flush bucket of its dispatch (so a flush waits for
            /// its real call); `None` once the replay is over.
            buffer: Option<Vec<(Event, usize)>>,
            /// Live events numbered below it were covered by the replay.
            seam: u64,
        }
        let shared = &self.handle.shared;
        let handler = match handler.into_kind(shared.counters.skipped.clone()) {
            Kind::Sync(f) => Arc::<crate::handler::SyncFn>::from(f),
            #[cfg(feature = "tokio")]
            Kind::Async(_) => {
                return Err(SubscribeError::InvalidOption {
                    what: "replay of an async handler",
                    value: last,
                    max: 0,
                })
            }
        };
        let state = Arc::new(crate::loom::Mutex::new(Replay { buffer: Some(Vec::new()), seam: 0 }));
        let (h, st, sh) = (handler.clone(), state.clone(), shared.clone());
        let live = move |event: &Event| -> HandlerResult {
            let seam = {
                let mut replay = st.lock();
                if let Some(buffer) = &mut replay.buffer {
                    // Called in a handler scope, which is in the event's
                    // bucket.
                    let bucket = parent_of(sh.id).map_or(0, |(_, bucket)| bucket);
                    sh.epochs.begin_in(bucket);
                    buffer.push((event.clone(), bucket));
                    // The replay counts the real call.
                    sh.counters.skipped.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    return Ok(());
                }
                replay.seam
            };
            if event.sequence().is_some_and(|seq| seq < seam) {
                sh.counters.skipped.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Ok(());
            }
            h(event)
        };
        let sub = self.add_subscription(pattern, Handler::sync(live), options.into())?;
        // Until this is dropped, the waiting forms of unsubscribe wait for
        // the replay; dropped on unwind too, when it also ends the buffer
        // (so live calls go on) and counts its events out of flush.
        struct InProgress<'a> {
            sub: &'a Subscription,
            shared: &'a Shared,
            state: &'a crate::loom::Mutex<Replay>,
        }
        impl Drop for InProgress<'_> {
            fn drop(&mut self) {
                let left = self.state.lock().buffer.take().unwrap_or_default();
                for (_, bucket) in &left {
                    self.shared.epochs.end(*bucket, 1);
                }
                self.shared.drop_caught(left);
                self.sub.replay_done();
            }
        }
        sub.replay_started();
        let in_progress = InProgress { sub: &sub, shared, state: &state };
        // Read after the subscribe: every event numbered at or above it is
        // matched against a snapshot that holds the subscription.
        let seam = shared.sequence_end();
        state.lock().seam = seam;
        let (mut replayed, _start) = match &shared.history {
            Some(history) => history.read_settled(seam, last, Some(&sub.pattern)),
            None => (Vec::new(), seam),
        };
        replayed.reverse();
        let call = |event: &Event, bucket: usize| {
            let outcome = {
                let _scope = crate::worker::HandlerScope::enter(shared, &sub, event, bucket);
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handler(event)))
            };
            mailbox::report(shared, &sub, event, outcome);
        };
        let mut count = 0;
        for event in &replayed {
            if !sub.is_active() {
                break;
            }
            let bucket = shared.epochs.begin();
            call(event, bucket);
            shared.epochs.end(bucket, 1);
            count += 1;
        }
        shared.drop_caught(replayed);
        // The live events that came meanwhile, a batch at a time, each taken
        // under the lock and called outside it; the buffer ends, and live
        // calls start, once it is found empty.
        loop {
            let batch = {
                let mut replay = state.lock();
                match &mut replay.buffer {
                    Some(buffer) if !buffer.is_empty() => std::mem::take(buffer),
                    _ => {
                        replay.buffer = None;
                        break;
                    }
                }
            };
            for (event, bucket) in &batch {
                if !event.sequence().is_some_and(|seq| seq < seam) && sub.is_active() {
                    call(event, *bucket);
                }
                shared.epochs.end(*bucket, 1);
            }
            shared.drop_caught(batch);
        }
        // The replay's clone of the handler goes before the waiters are
        // let go, so they return with the handler dropped.
        shared.drop_caught(handler);
        drop(in_progress);
        Ok(Replayed { id: sub.id, replayed: count, seam })
    }

    /// [`publish`](Bus::publish) for async code: where `publish` would wait
    /// for room (under [`Overflow::Block`], the queues or an ordered
    /// subscription's backlog full), it waits without blocking a runtime
    /// thread (on tokio's blocking pool), on any runtime flavour. From
    /// inside a handler, which never waits, it is `publish`.
    ///
    /// # Errors
    ///
    /// As [`publish`](Bus::publish), but never [`PublishError::WouldBlock`].
    #[cfg(feature = "tokio")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
    pub async fn publish_async(&self, event: Event) -> Result<EventId, PublishError> {
        match self.attempt(event) {
            Attempt::Done(result) => result,
            Attempt::Wait(event, _) => {
                let bus = self.clone();
                crate::asynchronous::on_blocking_pool(move || bus.publish(*event)).await
            }
        }
    }

    /// [`flush`](Bus::flush) for async code: waits, without blocking a
    /// runtime thread, until every event published before the call has been
    /// dispatched and its handlers (async ones included) have finished.
    /// From inside a handler it returns at once.
    #[cfg(feature = "tokio")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
    pub async fn flush_async(&self) {
        if in_handler_of(self.shared().id) {
            return;
        }
        let bus = self.clone();
        crate::asynchronous::on_blocking_pool(move || {
            let _ = bus.shared().epochs.flush(None);
        })
        .await;
    }

    /// [`shutdown`](Bus::shutdown) for async code: waits for the drain, the
    /// handlers' drop and the join without blocking a runtime thread, so
    /// async handlers on this very runtime (a current-thread one included)
    /// work through their backlogs meanwhile. From inside a handler it only
    /// closes the bus, as `shutdown` does.
    #[cfg(feature = "tokio")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
    pub async fn shutdown_async(&self) {
        let shared = self.shared();
        if in_handler_of(shared.id) {
            shared.close();
            return;
        }
        let bus = self.clone();
        crate::asynchronous::on_blocking_pool(move || {
            let _ = bus.shared().shutdown(None);
        })
        .await;
    }

    fn add_subscription(
        &self,
        pattern: &str,
        handler: Handler,
        options: SubscribeOptions,
    ) -> Result<Arc<Subscription>, SubscribeError> {
        let shared = self.shared();
        options.check()?;
        let overflow = options.overflow.unwrap_or(shared.config.overflow);
        match handler.into_kind(shared.counters.skipped.clone()) {
            Kind::Sync(f) if !options.has_mailbox() => {
                self.register(pattern, &options, Some(f), None)
            }
            Kind::Sync(f) => {
                let runner = if options.blocking { Runner::Threads } else { Runner::Pool };
                let mailbox = Mailbox::new(
                    Work::Sync(Arc::from(f)),
                    runner,
                    options.ordered,
                    options.backlog,
                    overflow,
                );
                let sub = self.register(pattern, &options, None, Some(mailbox))?;
                if options.blocking {
                    let threads = if options.ordered { 1 } else { options.concurrency };
                    for n in 0..threads {
                        let (shared, s) = (self.handle.shared.clone(), sub.clone());
                        let name = format!("{}-{}-{}.{n}", shared.config.name, sub.plugin, sub.id);
                        if let Err(e) =
                            crate::loom::spawn(name, move || mailbox::run_thread(shared, s))
                        {
                            drop(self.unsubscribe(sub.id));
                            return Err(SubscribeError::Spawn(e.to_string()));
                        }
                    }
                }
                Ok(sub)
            }
            #[cfg(feature = "tokio")]
            Kind::Async(work) => {
                use crate::asynchronous::TokioRunner;
                let runtime = match &shared.config.runtime {
                    Some(handle) => handle.clone(),
                    None => tokio::runtime::Handle::try_current()
                        .map_err(|_| SubscribeError::NoRuntime)?,
                };
                let concurrency = if options.ordered { 1 } else { options.concurrency };
                let runner = Runner::Tokio(TokioRunner::new(runtime, concurrency, options.timeout));
                let mailbox = Mailbox::new(
                    Work::Async(work),
                    runner,
                    options.ordered,
                    options.backlog,
                    overflow,
                );
                self.register(pattern, &options, None, Some(mailbox))
            }
        }
    }

    /// Checks the names, then adds a subscription to the registry and the
    /// snapshot.
    fn register(
        &self,
        pattern: &str,
        options: &SubscribeOptions,
        handler: Option<crate::handler::SyncFn>,
        mailbox: Option<Mailbox>,
    ) -> Result<Arc<Subscription>, SubscribeError> {
        let plugin = options.plugin.as_deref().unwrap_or("");
        NameError::check(pattern).map_err(|reason| SubscribeError::InvalidPattern {
            pattern: crate::error::truncate(pattern),
            reason,
        })?;
        NameError::check(plugin).map_err(|reason| SubscribeError::InvalidPlugin { reason })?;
        let compiled = Pattern::new(pattern).map_err(|_| SubscribeError::InvalidPattern {
            pattern: crate::error::truncate(pattern),
            reason: NameError::TooLong { len: pattern.len(), max: crate::MAX_NAME_LEN },
        })?;
        let shared = self.shared();
        let mut reg = shared.registry.lock();
        if shared.is_shut() {
            return Err(SubscribeError::Closed);
        }
        reg.next_id += 1;
        let id = SubscriptionId::new(reg.next_id);
        let plugin_name: Arc<str> = match reg.plugins.get_key_value(plugin) {
            Some((name, _)) => name.clone(),
            None => Arc::from(plugin),
        };
        let sub = Arc::new(Subscription::new(
            id,
            compiled,
            plugin_name.clone(),
            options.priority,
            handler,
            mailbox,
        ));
        reg.plugins.entry(plugin_name.clone()).or_default().push(sub.clone());
        reg.by_id.insert(id, plugin_name);
        reg.live += 1;
        if sub.mailbox.as_ref().is_some_and(|m| m.ordered) {
            shared.ordered_live.fetch_add(1, Ordering::SeqCst);
        }
        if sub.runs_on_current_thread() {
            shared.async_on_current_thread.fetch_add(1, Ordering::SeqCst);
        }
        let next = shared.snapshot.load_full().with(sub.clone());
        shared.snapshot.store(Arc::new(next));
        Ok(sub)
    }

    /// Removes the subscriptions `target` names: one by its id
    /// ([`SubscriptionId`] converts into a target), a plugin's, a plugin's to
    /// exactly one pattern, or all. Once this returns, their handlers are
    /// never started again (a call already running may finish).
    ///
    /// The returned [`Unsubscribed`] says how many were removed
    /// ([`count`](Unsubscribed::count)), and can wait until no call of them
    /// is running ([`wait`](Unsubscribed::wait),
    /// [`wait_timeout`](Unsubscribed::wait_timeout)), so a plugin can be torn
    /// down safely. Dropped without waiting, it drops at once the handlers
    /// no call is running; one whose call is running goes as soon as the
    /// worker running it finishes its batch. Either way a handler is dropped
    /// outside every lock of the bus, so its `Drop` may use the bus.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use switchboard::{Bus, Handler, Target};
    ///
    /// let bus = Bus::new()?;
    /// let first = bus.subscribe("quote.*", Handler::sync(|_event| Ok(())), "search")?;
    /// bus.subscribe("quote.*", Handler::sync(|_event| Ok(())), "search")?;
    /// bus.subscribe("user.*", Handler::sync(|_event| Ok(())), "search")?;
    /// assert_eq!(bus.unsubscribe(first).count(), 1);
    /// assert_eq!(bus.unsubscribe(first).count(), 0, "already removed");
    /// let removed = bus.unsubscribe(Target::Pattern { pattern: "quote.*", plugin: "search" });
    /// assert_eq!(removed.wait_timeout(Duration::from_secs(1))?, 1);
    /// assert_eq!(bus.unsubscribe(Target::Plugin("search")).wait(), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn unsubscribe<'t>(&self, target: impl Into<Target<'t>>) -> Unsubscribed<'_> {
        Unsubscribed { bus: self, removed: self.take(target.into()) }
    }

    /// Hands removed subscriptions to reclamation, dropping at once the
    /// handlers no worker is calling. Returns how many were removed.
    fn retire(&self, removed: Vec<Arc<Subscription>>) -> usize {
        if !removed.is_empty() {
            self.retire_mailboxes(&removed);
            self.shared().reclaim();
        }
        removed.len()
    }

    /// Takes the handlers out of removed mailbox subscriptions and drops
    /// the backlogs; the closures go with their last running call.
    fn retire_mailboxes(&self, removed: &[Arc<Subscription>]) {
        let shared = self.shared();
        for sub in removed {
            if let Some(work) = sub.mailbox.as_ref().and_then(|m| m.retire(shared)) {
                shared.drop_caught(work);
            }
        }
    }

    /// [`retire`](Bus::retire), after waiting for the running calls.
    fn retire_and_wait(
        &self,
        removed: Vec<Arc<Subscription>>,
        deadline: Option<Instant>,
    ) -> Result<usize, WaitTimeout> {
        let shared = self.shared();
        let me = worker_index(shared.id);
        self.retire_mailboxes(&removed);
        // The call this thread is in, if it is in a handler of this bus.
        let running = match (mailbox_call(), me) {
            (0, Some(worker)) => shared.calls.calling(worker),
            (call, _) => call,
        };
        let keys = removed.iter().map(|s| crate::reclaim::key(s)).collect();
        let registered = shared.waits.register(me, running, keys);
        let (inline, boxed): (Vec<_>, Vec<_>) =
            removed.iter().cloned().partition(|s| s.mailbox.is_none());
        // Mailbox calls may run on a tokio runtime: minding this thread's
        // own (see `Shared::wait_mode`), waiting for them may be refused.
        let on_current_thread = boxed.iter().filter(|s| s.runs_on_current_thread()).count();
        let mode = shared.wait_mode_with(on_current_thread);
        let wait = || {
            let waited =
                shared.waits.wait_idle(&shared.calls, &inline, me, registered.as_ref(), deadline);
            for handler in shared.calls.reclaim_seen_idle(&inline, &waited.held) {
                shared.drop_caught(handler);
            }
            // The ones still held go with a later reclaim; this one clears
            // the list of those taken here.
            shared.reclaim();
            let mut still_running = waited.still_running;
            for sub in &inline {
                // A replay in progress (`subscribe_replay`) stops at its next
                // event; its own calls excuse it.
                let own = usize::from(running == crate::reclaim::key(sub));
                if !sub.wait_replays(own, deadline) {
                    still_running.push(sub.id);
                }
            }
            for sub in &boxed {
                let key = crate::reclaim::key(sub);
                let own = usize::from(running == key);
                let excused = || own + shared.waits.held_by_dependents(registered.as_ref(), key);
                let Some(mailbox) = &sub.mailbox else { continue };
                let idle = if mode == crate::shared::WaitMode::Refused {
                    let now = mailbox.running();
                    now == 0 || now <= excused()
                } else {
                    mailbox.wait_idle(excused, deadline)
                };
                if !idle {
                    still_running.push(sub.id);
                }
            }
            still_running
        };
        let still_running = match mode {
            #[cfg(feature = "tokio")]
            crate::shared::WaitMode::InPlace => tokio::task::block_in_place(wait),
            _ => wait(),
        };
        drop(registered);
        let n = removed.len();
        if still_running.is_empty() {
            Ok(n)
        } else {
            Err(WaitTimeout { removed: n, still_running })
        }
    }

    /// Removes the subscriptions `target` names from the registry and the
    /// snapshot, closes them and puts them on the retired list.
    fn take(&self, target: Target<'_>) -> Vec<Arc<Subscription>> {
        let shared = self.shared();
        let mut reg = shared.registry.lock();
        let mut removed = Vec::new();
        let plugin: Arc<str> = match target {
            Target::All => {
                let mut all: Vec<_> =
                    std::mem::take(&mut reg.plugins).into_values().flatten().collect();
                all.sort_by_key(|s| s.id);
                removed = all;
                Arc::from("")
            }
            Target::Pattern { plugin, .. } | Target::Plugin(plugin) => Arc::from(plugin),
            Target::Id(id) => match reg.by_id.get(&id) {
                Some(plugin) => plugin.clone(),
                None => return Vec::new(),
            },
        };
        if target != Target::All {
            let Some(subs) = reg.plugins.get_mut(&*plugin) else { return Vec::new() };
            subs.retain(|s| {
                let hit = target.selects(s);
                if hit {
                    removed.push(s.clone());
                }
                !hit
            });
            if subs.is_empty() {
                reg.plugins.remove(&*plugin);
            }
        }
        if removed.is_empty() {
            return removed;
        }
        for sub in &removed {
            sub.close();
            reg.by_id.remove(&sub.id);
            if sub.mailbox.as_ref().is_some_and(|m| m.ordered) {
                shared.ordered_live.fetch_sub(1, Ordering::SeqCst);
            }
            if sub.runs_on_current_thread() {
                shared.async_on_current_thread.fetch_sub(1, Ordering::SeqCst);
            }
        }
        reg.live -= removed.len();
        if let Some(next) = shared.snapshot.load_full().without(&removed) {
            shared.snapshot.store(Arc::new(next));
        }
        shared.calls.retire(&removed);
        removed
    }

    /// Queues `event` and returns without waiting for any handler.
    ///
    /// Under [`Overflow::Block`](crate::Overflow::Block) (the default) it
    /// waits while the queues are full, and while the backlog of an ordered
    /// subscription the event matches is full (its
    /// [policy](SubscribeOptions::overflow) is the bus's unless it chose
    /// another), so nothing accepted is ever dropped. On a multi-thread
    /// tokio runtime's thread it waits in `block_in_place`; on a
    /// current-thread runtime's thread, while async handlers run on a
    /// current-thread runtime, it does not wait but returns
    /// [`PublishError::WouldBlock`] (use `publish_async`
    /// there).
    ///
    /// From inside a handler the event is one level deeper than the event
    /// being handled, and it is queued like any other (handlers never run
    /// nested). A handler never waits for room (it would wait on its own
    /// worker, or on itself): under `Block` its event may go past the
    /// capacity of the queues, or of an ordered subscription's backlog, by
    /// as many events again, keeping its place in publish order and its
    /// priority; past that, or under [`Overflow::Error`](crate::Overflow::Error),
    /// it gets [`PublishError::Full`].
    ///
    /// Once this returns `Ok`, the event is in [`history`](Bus::history) and
    /// has its [sequence number](Event::sequence).
    ///
    /// # Errors
    ///
    /// [`PublishError`], which gives the event back: the bus is closed, the
    /// queues are full (policy `Error`), an ordered subscription's backlog is
    /// full (its policy `Error`), waiting would block a current-thread
    /// runtime, the name is empty, too long or holds a NUL, or the handler
    /// chain is deeper than the bus's `max_depth`.
    pub fn publish(&self, mut event: Event) -> Result<EventId, PublishError> {
        let shared = self.shared();
        loop {
            let (back, wait_for) = match self.attempt(event) {
                Attempt::Done(result) => return result,
                Attempt::Wait(back, wait_for) => (back, wait_for),
            };
            let waited = shared.wait_here(|| match &wait_for {
                WaitFor::Queue(priority) => shared.queues.wait_for_room_at(*priority),
                WaitFor::Gate => shared.gate.wait_open(|| shared.is_shut()),
                WaitFor::Backlog(sub) => {
                    if let Some(mailbox) = &sub.mailbox {
                        // Released when the bus closes: the next try then
                        // says `Closed`.
                        mailbox.wait_for_room(|| shared.is_shut());
                    }
                }
            });
            if waited.is_none() {
                shared.counters.bump(Count::Rejected);
                return Err(PublishError::WouldBlock(back));
            }
            event = *back;
        }
    }

    /// One try at publishing `event` that never waits: what would wait comes
    /// back, for the caller to wait as its context allows and try again.
    fn attempt(&self, mut event: Event) -> Attempt {
        let shared = self.shared();
        if let Err(reason) = NameError::check(event.name()) {
            shared.counters.bump(Count::Rejected);
            return Attempt::Done(Err(PublishError::InvalidName {
                event: Box::new(event),
                reason,
            }));
        }
        // From a handler: one level deeper, and in the flush bucket of the
        // event being handled, so a flush also waits for the cascade.
        let parent = parent_of(shared.id);
        let depth = parent.map_or(0, |(depth, _)| depth);
        if depth > shared.config.max_depth {
            shared.counters.bump(Count::DepthRefused);
            return Attempt::Done(Err(PublishError::DepthExceeded {
                event: Box::new(event),
                depth,
                max: shared.config.max_depth,
            }));
        }
        let from_handler = parent.is_some();
        // A blocking or async subscription's backlog is full under `Block`:
        // outside publishers wait until its runner has made room (workers
        // never wait for a backlog; handlers never wait at all).
        if !from_handler && shared.gate.is_held() {
            if shared.is_shut() {
                shared.counters.bump(Count::Rejected);
                return Attempt::Done(Err(PublishError::Closed(Box::new(event))));
            }
            return Attempt::Wait(Box::new(event), WaitFor::Gate);
        }
        // Counted in flush before the snapshot is loaded: a flush that starts
        // after this (a reload's, once the new instance subscribed) waits
        // for this publish, so whichever subscriptions the snapshot holds
        // are still live when it pushes (a retired one skips the push).
        let bucket = match parent {
            Some((_, bucket)) => shared.epochs.begin_in(bucket),
            None => shared.epochs.begin(),
        };
        // Ordered subscriptions get the event from this thread, in its
        // publish order (see `mailbox.rs`); their backlogs are checked for
        // room before anything is reserved, so a wait holds nothing.
        let mut ordered: SmallVec<[Arc<Subscription>; 4]> = SmallVec::new();
        if shared.ordered_live.load(Ordering::SeqCst) > 0 {
            shared
                .snapshot
                .load_full()
                .route_ordered(event.name(), |sub| ordered.push(sub.clone()));
            for sub in &ordered {
                let Some(mailbox) = &sub.mailbox else { continue };
                let refusal = match mailbox.room_for(from_handler) {
                    Room::Free => continue,
                    // A closed bus refuses as closed, full or not.
                    Room::Wait if shared.is_shut() => PublishError::Closed(Box::new(event)),
                    Room::Wait => {
                        shared.epochs.end(bucket, 1);
                        return Attempt::Wait(Box::new(event), WaitFor::Backlog(sub.clone()));
                    }
                    // Never accepted: counted in `rejected`, not as a loss.
                    Room::Refused if mailbox.overflow == Overflow::Error => {
                        PublishError::BacklogFull { event: Box::new(event), subscription: sub.id }
                    }
                    Room::Refused => PublishError::Full(Box::new(event)),
                };
                shared.epochs.end(bucket, 1);
                shared.counters.bump(Count::Rejected);
                return Attempt::Done(Err(refusal));
            }
        }
        event.set_depth(depth);
        event.clear_sequence();
        let id = event.id();
        let priority = event.priority();
        let event = Arc::new(event);
        // Numbered and in history once it is sure to be accepted, before any
        // worker can take it.
        let record = |event: &Arc<Event>| {
            let seq = shared.next_sequence();
            event.set_sequence(seq);
            if let Some(history) = &shared.history {
                history.record(event, seq);
            }
        };
        let route = |event: &Arc<Event>| {
            record(event);
            for sub in &ordered {
                Mailbox::push(&self.handle.shared, sub, event, bucket);
            }
        };
        let overflow = shared.config.overflow;
        let offer = shared.queues.offer(event, priority, bucket, overflow, from_handler, route);
        let refused = match offer {
            Offer::Accepted { dropped } => {
                if let Some(victim) = dropped {
                    shared.epochs.end(victim.epoch, 1);
                    shared.counters.bump(Count::Dropped);
                    shared.log_shed(&victim.item);
                    // The victim was counted as published when it was accepted.
                    shared.drop_caught(victim);
                }
                shared.counters.bump(Count::Published);
                return Attempt::Done(Ok(id));
            }
            Offer::Shed(event) => {
                // Accepted and dropped at once: published, in history, and
                // counted as dropped.
                record(&event);
                shared.epochs.end(bucket, 1);
                shared.counters.bump(Count::Published);
                shared.counters.bump(Count::Dropped);
                shared.log_shed(&event);
                shared.drop_caught(event);
                return Attempt::Done(Ok(id));
            }
            Offer::Wait(event) => {
                shared.epochs.end(bucket, 1);
                return Attempt::Wait(unwrap_event(event), WaitFor::Queue(priority));
            }
            Offer::Full(event) => PublishError::Full(unwrap_event(event)),
            Offer::Closed(event) => PublishError::Closed(unwrap_event(event)),
        };
        shared.epochs.end(bucket, 1);
        shared.counters.bump(Count::Rejected);
        Attempt::Done(Err(refused))
    }

    /// Returns once every event published before the call has been
    /// dispatched (all its handlers have returned), and so have the events
    /// those handlers published, transitively: a flush waits for whole
    /// cascades (bounded by `max_depth`).
    ///
    /// Called from inside a handler it returns at once: the event being
    /// handled was published before the call and cannot finish while its
    /// handler waits. On a multi-thread tokio runtime's thread it waits in
    /// `block_in_place`.
    ///
    /// # Panics
    ///
    /// On a current-thread tokio runtime's thread while async handlers run
    /// on a current-thread runtime: waiting there could starve them forever
    /// (use `flush_async`).
    pub fn flush(&self) {
        let shared = self.shared();
        if in_handler_of(shared.id) {
            return;
        }
        shared.blocking_wait("flush", || {
            let _ = shared.epochs.flush(None);
        });
    }

    /// [`flush`](Bus::flush) that waits at most `timeout`.
    ///
    /// # Errors
    ///
    /// [`FlushTimeout`] when events published before the call were still
    /// being dispatched at the deadline, with how many. From inside a handler
    /// it returns `Ok` at once, as `flush` does.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use switchboard::{Bus, Event};
    ///
    /// let bus = Bus::new()?;
    /// bus.publish(Event::new("trivia.started", serde_json::Value::Null, "trivia"))?;
    /// bus.flush_timeout(Duration::from_secs(5))?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn flush_timeout(&self, timeout: Duration) -> Result<(), FlushTimeout> {
        let shared = self.shared();
        if in_handler_of(shared.id) {
            return Ok(());
        }
        shared.blocking_wait("flush", || {
            shared.epochs.flush(deadline(timeout)).map_err(|pending| FlushTimeout { pending })
        })
    }

    /// The last accepted events the `query` asks for, most recent first:
    /// at most [`last`](HistoryQuery::last) of them, those
    /// [`matching`](HistoryQuery::matching) its pattern. Empty when history
    /// is off.
    ///
    /// History is in publish order: one total order of all accepted events
    /// that agrees with each publishing thread's own order, whatever the
    /// number of workers, the priorities, or the events handlers published.
    /// An event is in it as soon as its `publish` returns `Ok`, and before
    /// any handler sees it: a late joiner that subscribes first and reads
    /// history second misses nothing in between (it may see an event in both).
    ///
    /// # Errors
    ///
    /// [`HistoryError::InvalidPattern`] when the query's pattern is not
    /// acceptable.
    ///
    /// # Examples
    ///
    /// ```
    /// use switchboard::{Bus, Event, HistoryQuery, Priority};
    ///
    /// let bus = Bus::builder().history_size(2).build()?;
    /// for (name, priority) in [("a.1", Priority::Low), ("a.2", Priority::High), ("b.3", Priority::Normal)] {
    ///     bus.publish(Event::new(name, serde_json::Value::Null, "t").with_priority(priority))?;
    /// }
    /// let names: Vec<String> =
    ///     bus.history(HistoryQuery::new())?.iter().map(|e| e.name().to_owned()).collect();
    /// assert_eq!(names, ["b.3", "a.2"]); // the last two published, newest first
    /// assert_eq!(bus.history(HistoryQuery::new().last(5).matching("a.*"))?.len(), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn history(&self, query: HistoryQuery) -> Result<Vec<Arc<Event>>, HistoryError> {
        let limit = query.last;
        let pattern = match query.pattern.as_deref() {
            None => None,
            Some(p) => {
                let invalid = |reason| HistoryError::InvalidPattern {
                    pattern: crate::error::truncate(p),
                    reason,
                };
                NameError::check(p).map_err(invalid)?;
                Some(Pattern::new(p).map_err(|_| {
                    invalid(NameError::TooLong { len: p.len(), max: crate::MAX_NAME_LEN })
                })?)
            }
        };
        Ok(match &self.shared().history {
            Some(h) => {
                h.read(self.shared().sequence_end(), limit.unwrap_or(usize::MAX), pattern.as_ref())
            }
            None => Vec::new(),
        })
    }

    /// The bus's counters.
    pub fn stats(&self) -> Stats {
        let shared = self.shared();
        let mut stats = shared.counters.read();
        stats.queue_depth = shared.queues.depths().map(|d| d as u64);
        stats.subscriptions = shared.registry.lock().live as u64;
        stats
    }

    /// The live subscriptions `target` selects, in subscription order, each
    /// with its id, pattern, plugin and counters (handler errors, events
    /// dropped for it and waiting in its backlog, calls running).
    ///
    /// # Examples
    ///
    /// ```
    /// use switchboard::{Bus, Handler, SubscribeOptions, Target};
    ///
    /// let bus = Bus::new()?;
    /// let slow = SubscribeOptions::new().plugin("thumbs").blocking();
    /// let id = bus.subscribe("image.*", Handler::sync(|_e| Ok(())), slow)?;
    /// bus.subscribe("user.*", Handler::sync(|_e| Ok(())), "greeter")?;
    /// let thumbs = bus.subscriptions(Target::Plugin("thumbs"));
    /// assert_eq!(thumbs.len(), 1);
    /// assert_eq!((thumbs[0].id, thumbs[0].pattern.as_str()), (id, "image.*"));
    /// assert_eq!((thumbs[0].stats.errors, thumbs[0].stats.backlog_dropped), (0, 0));
    /// assert_eq!(bus.subscriptions(Target::All).len(), 2);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn subscriptions<'t>(&self, target: impl Into<Target<'t>>) -> Vec<SubscriptionInfo> {
        let target = target.into();
        let mut subs: Vec<Arc<Subscription>> = {
            let reg = self.shared().registry.lock();
            let plugin = match target {
                Target::All => None,
                Target::Plugin(plugin) | Target::Pattern { plugin, .. } => Some(plugin),
                Target::Id(id) => match reg.by_id.get(&id) {
                    Some(plugin) => Some(&**plugin),
                    None => return Vec::new(),
                },
            };
            match plugin {
                Some(p) => reg
                    .plugins
                    .get(p)
                    .map(|v| v.iter().filter(|s| target.selects(s)).cloned().collect())
                    .unwrap_or_default(),
                None => reg.plugins.values().flatten().cloned().collect(),
            }
        };
        subs.sort_by_key(|s| s.id);
        subs.iter()
            .map(|sub| {
                // Relaxed: statistics.
                let mut stats = SubscriptionStats {
                    errors: sub.errors.load(Ordering::Relaxed),
                    ..Default::default()
                };
                if let Some(mailbox) = &sub.mailbox {
                    stats.backlog_dropped = mailbox.backlog_dropped.load(Ordering::Relaxed);
                    stats.backlog = mailbox.backlog() as u64;
                    stats.running = mailbox.running() as u64;
                }
                SubscriptionInfo {
                    id: sub.id,
                    pattern: sub.pattern.as_str().to_owned(),
                    plugin: sub.plugin.to_string(),
                    stats,
                }
            })
            .collect()
    }

    /// Stops accepting events, dispatches everything already accepted, joins
    /// the workers and drops every handler and the error hook. Idempotent.
    /// Later publishes get [`PublishError::Closed`], and publishers waiting
    /// for room are released with it.
    ///
    /// Any number of threads may call it at once: each returns only after
    /// the drain and the join. Called from inside a handler it cannot wait
    /// for its own thread: it closes the bus and returns, and the workers
    /// finish draining by themselves.
    ///
    /// # Panics
    ///
    /// On a current-thread tokio runtime's thread while async handlers run
    /// on a current-thread runtime, where waiting would starve them (as
    /// `flush` does): use `shutdown_async` there. The
    /// bus is closed all the same. On a multi-thread runtime's thread it
    /// waits in `block_in_place`.
    pub fn shutdown(&self) {
        let _ = self.shutdown_until(None);
    }

    fn shutdown_until(&self, deadline: Option<Instant>) -> Result<(), ShutdownTimeout> {
        let shared = self.shared();
        if in_handler_of(shared.id) {
            return shared.shutdown(deadline);
        }
        match shared.wait_here(|| shared.shutdown(deadline)) {
            Some(result) => result,
            None => {
                shared.close();
                panic!(
                    "Bus::shutdown called on a current-thread tokio runtime that runs async \
                     handlers would wait forever; use shutdown_async"
                );
            }
        }
    }

    /// [`shutdown`](Bus::shutdown) that waits at most `timeout` for the drain
    /// and the join.
    ///
    /// # Errors
    ///
    /// [`ShutdownTimeout`] when the deadline passed first (or when called
    /// from a handler, which cannot wait): the bus is closed all the same and
    /// the workers go on draining; it says how many events were still
    /// pending and how many workers still running.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use switchboard::Bus;
    ///
    /// let bus = Bus::new()?;
    /// bus.shutdown_timeout(Duration::from_secs(5))?;
    /// assert!(bus.is_closed());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Panics
    ///
    /// As [`shutdown`](Bus::shutdown).
    pub fn shutdown_timeout(&self, timeout: Duration) -> Result<(), ShutdownTimeout> {
        self.shutdown_until(deadline(timeout))
    }

    /// Whether [`shutdown`](Bus::shutdown) has been called.
    pub fn is_closed(&self) -> bool {
        self.shared().is_shut()
    }
}

/// Which subscriptions [`Bus::unsubscribe`] removes and
/// [`Bus::subscriptions`] lists. A [`SubscriptionId`] converts into
/// [`Target::Id`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Target<'a> {
    /// Every subscription.
    All,
    /// The one subscription with this id (of those made with the same
    /// pattern and plugin, only this one).
    Id(SubscriptionId),
    /// Every subscription of this plugin.
    Plugin(&'a str),
    /// The plugin's subscriptions to exactly this pattern (compared as
    /// written, not matched).
    Pattern {
        /// The pattern, as subscribed.
        pattern: &'a str,
        /// The subscriber.
        plugin: &'a str,
    },
}

impl Target<'_> {
    /// Whether `sub` is one of the target's (its plugin aside).
    fn selects(&self, sub: &Subscription) -> bool {
        match *self {
            Target::All | Target::Plugin(_) => true,
            Target::Id(id) => sub.id == id,
            Target::Pattern { pattern, .. } => sub.pattern.as_str() == pattern,
        }
    }
}

impl From<SubscriptionId> for Target<'_> {
    fn from(id: SubscriptionId) -> Self {
        Target::Id(id)
    }
}

/// Subscriptions [`Bus::unsubscribe`] removed: their handlers are never
/// started again. Wait for their running calls with [`wait`](Unsubscribed::wait)
/// or [`wait_timeout`](Unsubscribed::wait_timeout); dropped, it does not
/// wait (the handlers no call is running are dropped then, the others when
/// their calls end).
pub struct Unsubscribed<'a> {
    bus: &'a Bus,
    removed: Vec<Arc<Subscription>>,
}

impl Unsubscribed<'_> {
    /// How many subscriptions were removed.
    pub fn count(&self) -> usize {
        self.removed.len()
    }

    /// The ids of the subscriptions removed, in subscription order.
    pub fn ids(&self) -> Vec<SubscriptionId> {
        let mut ids: Vec<_> = self.removed.iter().map(|s| s.id).collect();
        ids.sort();
        ids
    }

    /// Waits until no call of the removed handlers is running, and drops
    /// them; returns how many were removed. (A handler whose call is this
    /// very thread's, when called from a handler, goes when the call ends.)
    ///
    /// Called from inside a handler, it does not wait for the calls that
    /// cannot end while it waits: its own, and those of handlers that are
    /// themselves waiting, directly or through others, for a call it is
    /// inside (two plugins unloading each other from their handlers). Those
    /// calls are stuck in the same kind of wait and end right after it
    /// returns; no new call of the removed subscriptions starts either way.
    ///
    /// # Panics
    ///
    /// On a current-thread tokio runtime's thread while async handlers run
    /// on a current-thread runtime (the wait would starve them); wait with
    /// `Bus::run_blocking` there, or use
    /// [`wait_timeout`](Unsubscribed::wait_timeout), which reports it.
    pub fn wait(self) -> usize {
        match self.finish(None) {
            Ok(n) => n,
            Err(e) => panic!(
                "Unsubscribed::wait called on a current-thread tokio runtime that runs async \
                 handlers would starve them ({e}); wait from tokio's blocking pool \
                 (Bus::run_blocking) instead"
            ),
        }
    }

    /// [`wait`](Unsubscribed::wait), at most `timeout`.
    ///
    /// # Errors
    ///
    /// [`WaitTimeout`] when calls were still running at the deadline (or,
    /// on a current-thread runtime's thread that runs async handlers, could
    /// not be waited for): it says how many subscriptions were removed (they
    /// are, all the same) and which still had calls running. Their handlers
    /// are dropped when those calls end.
    pub fn wait_timeout(self, timeout: Duration) -> Result<usize, WaitTimeout> {
        self.finish(deadline(timeout))
    }

    fn finish(mut self, deadline: Option<Instant>) -> Result<usize, WaitTimeout> {
        let removed = std::mem::take(&mut self.removed);
        self.bus.retire_and_wait(removed, deadline)
    }
}

impl Drop for Unsubscribed<'_> {
    fn drop(&mut self) {
        let removed = std::mem::take(&mut self.removed);
        self.bus.retire(removed);
    }
}

impl fmt::Debug for Unsubscribed<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Unsubscribed").field("ids", &self.ids()).finish()
    }
}

/// What [`Bus::history`] returns: the latest events, newest first, at most
/// [`last`](HistoryQuery::last) of them, only those
/// [`matching`](HistoryQuery::matching) a pattern when one is given.
///
/// # Examples
///
/// ```
/// use switchboard::HistoryQuery;
///
/// let everything = HistoryQuery::new();
/// let recent_trivia = HistoryQuery::new().last(10).matching("trivia.*");
/// # let _ = (everything, recent_trivia);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HistoryQuery {
    last: Option<usize>,
    pattern: Option<String>,
}

impl HistoryQuery {
    /// Every event history holds.
    pub fn new() -> HistoryQuery {
        HistoryQuery::default()
    }

    /// At most the `n` latest (of those matching, if a pattern is given).
    pub fn last(mut self, n: usize) -> HistoryQuery {
        self.last = Some(n);
        self
    }

    /// Only the events whose name matches the glob `pattern`.
    pub fn matching(mut self, pattern: &str) -> HistoryQuery {
        self.pattern = Some(pattern.to_owned());
        self
    }
}

/// One live subscription, as [`Bus::subscriptions`] lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SubscriptionInfo {
    /// Its id.
    pub id: SubscriptionId,
    /// Its pattern, as subscribed.
    pub pattern: String,
    /// Its subscriber.
    pub plugin: String,
    /// Its counters now.
    pub stats: SubscriptionStats,
}

/// What [`Bus::subscribe_replay`] did: the subscription, how many events
/// it replayed from history, and where the replay ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Replayed {
    /// The new subscription.
    pub id: SubscriptionId,
    /// Events replayed from history (at most the `n` asked for).
    pub replayed: usize,
    /// The seam: the [sequence number](Event::sequence) of the first event
    /// the handler gets live. Replayed events are numbered below it, the
    /// last of them just below it.
    pub seam: u64,
}

/// What one try at publishing came back with.
enum Attempt {
    Done(Result<EventId, PublishError>),
    /// It would have had to wait for room: the event, and what to wait for.
    Wait(Box<Event>, WaitFor),
}

enum WaitFor {
    /// Room in the queues at this priority.
    Queue(Priority),
    /// Room in this ordered subscription's backlog.
    Backlog(Arc<Subscription>),
    /// Room in every blocking or async subscription's backlog (the gate).
    Gate,
}

/// `now + timeout`, or no deadline when that is past the end of time.
fn deadline(timeout: Duration) -> Option<Instant> {
    Instant::now().checked_add(timeout)
}

fn unwrap_event(event: Arc<Event>) -> Box<Event> {
    Box::new(Arc::try_unwrap(event).unwrap_or_else(|shared| (*shared).clone()))
}
