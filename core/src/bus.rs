//! The public handle, its builder, and the state the workers share.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Weak};

use serde::de::DeserializeOwned;
use switchboard_matcher::Pattern;

use crate::error::{BuildError, NameError, PayloadError, PublishError, SubscribeError};
use crate::event::{Event, EventId, Payload};
use crate::flush::Epochs;
use crate::history::History;
use crate::loom::{spawn, ArcCell, AtomicBool, AtomicUsize, JoinHandle, Mutex, Ordering};
use crate::queue::{Offer, Overflow, Queued, Queues};
use crate::snapshot::Snapshot;
use crate::stats::{Count, Counters, Stats, WorkerCounters};
use crate::subscription::{
    Gate, Handler, HandlerResult, SubscribeOptions, Subscription, SubscriptionId,
};
use crate::worker::{self, is_worker_of, own_calls, CONTEXT};

/// The hook called for every handler error and panic: the event, the
/// plugin whose handler failed, and the error.
pub type ErrorHook = Box<dyn Fn(&Event, &str, &(dyn std::error::Error + 'static)) + Send + Sync>;

#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) workers: usize,
    pub(crate) capacity: usize,
    pub(crate) batch_size: usize,
    pub(crate) history_size: usize,
    pub(crate) max_depth: u32,
    pub(crate) overflow: Overflow,
    pub(crate) starvation_limit: u32,
    pub(crate) name: String,
}

/// Configures a [`Bus`]. Start from [`Bus::builder`].
///
/// # Examples
///
/// ```
/// use switchboard::{Bus, Overflow};
///
/// let bus = Bus::builder()
///     .workers(2)
///     .capacity(4096)
///     .overflow(Overflow::Block)
///     .history_size(100)
///     .build()?;
/// # Ok::<(), switchboard::BuildError>(())
/// ```
pub struct BusBuilder {
    config: Config,
    error_hook: Option<ErrorHook>,
}

impl fmt::Debug for BusBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BusBuilder")
            .field("config", &self.config)
            .field("error_hook", &self.error_hook.is_some())
            .finish()
    }
}

impl Default for BusBuilder {
    fn default() -> BusBuilder {
        BusBuilder {
            config: Config {
                workers: 2,
                capacity: 65_536,
                batch_size: 32,
                history_size: 100,
                max_depth: 16,
                overflow: Overflow::Block,
                starvation_limit: 8,
                name: "switchboard".to_owned(),
            },
            error_hook: None,
        }
    }
}

impl BusBuilder {
    /// Worker threads that dispatch events. Default 2.
    pub fn workers(mut self, n: usize) -> BusBuilder {
        self.config.workers = n;
        self
    }

    /// How many events may wait in the queues, all priorities together.
    /// Default 65,536.
    pub fn capacity(mut self, n: usize) -> BusBuilder {
        self.config.capacity = n;
        self
    }

    /// The most events a worker takes from one queue in one look. Default
    /// 32. A `High` event waits behind at most one batch per worker.
    pub fn batch_size(mut self, n: usize) -> BusBuilder {
        self.config.batch_size = n;
        self
    }

    /// How many recent events [`Bus::history`] keeps. Default 100; 0 turns
    /// history off.
    pub fn history_size(mut self, n: usize) -> BusBuilder {
        self.config.history_size = n;
        self
    }

    /// How deep handler-published events may nest. Default 16.
    pub fn max_depth(mut self, depth: u32) -> BusBuilder {
        self.config.max_depth = depth;
        self
    }

    /// What publish does when the queues are full. Default [`Overflow::Block`].
    pub fn overflow(mut self, policy: Overflow) -> BusBuilder {
        self.config.overflow = policy;
        self
    }

    /// Anti-starvation: a non-empty queue passed over this many looks in a
    /// row (for higher ones) is served next. Default 8; 0 means plain
    /// round-robin among non-empty queues.
    pub fn starvation_limit(mut self, looks: u32) -> BusBuilder {
        self.config.starvation_limit = looks;
        self
    }

    /// The prefix of the worker threads' names. Default `switchboard`.
    pub fn name(mut self, name: impl Into<String>) -> BusBuilder {
        self.config.name = name.into();
        self
    }

    /// Called for every handler `Err` and panic, after it is counted and
    /// logged. A panicking hook is caught and logged.
    pub fn error_hook<F>(mut self, hook: F) -> BusBuilder
    where
        F: Fn(&Event, &str, &(dyn std::error::Error + 'static)) + Send + Sync + 'static,
    {
        self.error_hook = Some(Box::new(hook));
        self
    }

    /// Starts the workers.
    ///
    /// # Errors
    ///
    /// [`BuildError`] for zero workers, capacity or batch size, or when a
    /// thread cannot be started.
    pub fn build(self) -> Result<Bus, BuildError> {
        let config = self.config;
        if config.workers == 0 {
            return Err(BuildError::ZeroWorkers);
        }
        if config.capacity == 0 {
            return Err(BuildError::ZeroCapacity);
        }
        if config.batch_size == 0 {
            return Err(BuildError::ZeroBatchSize);
        }
        static NEXT_BUS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(1);
        let shared = Arc::new(Shared {
            id: NEXT_BUS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            snapshot: ArcCell::from_pointee(Snapshot::default()),
            registry: Mutex::new(Registry::default()),
            queues: Queues::new(config.capacity),
            epochs: Epochs::new(),
            counters: Counters::new(config.workers),
            history: (config.history_size > 0).then(|| History::new(config.history_size)),
            workers: Mutex::new(Vec::new()),
            live_workers: AtomicUsize::new(config.workers),
            shut: AtomicBool::new(false),
            error_hook: self.error_hook,
            config,
        });
        let mut handles = Vec::with_capacity(shared.config.workers);
        for index in 0..shared.config.workers {
            let worker_shared = shared.clone();
            let name = format!("{}-{index}", shared.config.name);
            match spawn(name, move || worker::run(worker_shared, index)) {
                Ok(handle) => handles.push(handle),
                Err(e) => {
                    // Stop the ones already started; the rest never ran.
                    let missing = shared.config.workers - index;
                    shared.live_workers.fetch_sub(missing, Ordering::SeqCst);
                    *shared.workers.lock() = handles;
                    shared.shutdown();
                    return Err(BuildError::Spawn(e));
                }
            }
        }
        *shared.workers.lock() = handles;
        Ok(Bus { handle: Arc::new(Handle { shared }) })
    }
}

#[derive(Default)]
struct Registry {
    next_id: u64,
    plugins: BTreeMap<Arc<str>, Vec<Arc<Subscription>>>,
    live: usize,
    dead: usize,
}

pub(crate) struct Shared {
    pub(crate) id: usize,
    pub(crate) config: Config,
    pub(crate) snapshot: ArcCell<Snapshot>,
    registry: Mutex<Registry>,
    pub(crate) queues: Queues<Arc<Event>>,
    pub(crate) epochs: Epochs,
    pub(crate) counters: Counters,
    pub(crate) history: Option<History>,
    workers: Mutex<Vec<JoinHandle<()>>>,
    live_workers: AtomicUsize,
    shut: AtomicBool,
    error_hook: Option<ErrorHook>,
}

impl Shared {
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
        // Relaxed: a per-subscription statistic.
        sub.errors.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            event = event.name(),
            event_id = %event.id(),
            plugin = &*sub.plugin,
            pattern = sub.pattern.as_str(),
            %error,
            "handler failed"
        );
        if let Some(hook) = &self.error_hook {
            let hook_run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                hook(event, &sub.plugin, error)
            }));
            if hook_run.is_err() {
                tracing::error!(event = event.name(), "the error hook panicked");
            }
        }
    }

    /// Called by each worker as it leaves. The last one drops every handler,
    /// which breaks the cycles of handlers that hold a `Bus`.
    pub(crate) fn worker_exited(&self) {
        if self.live_workers.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.clear_subscriptions();
        }
    }

    fn clear_subscriptions(&self) {
        let plugins = {
            let mut reg = self.registry.lock();
            reg.live = 0;
            reg.dead = 0;
            std::mem::take(&mut reg.plugins)
        };
        for sub in plugins.values().flatten() {
            sub.gate.close();
        }
        self.snapshot.store(Arc::new(Snapshot::default()));
        // Handlers are dropped here, outside every lock.
        drop(plugins);
    }

    fn shutdown(&self) {
        if !self.shut.swap(true, Ordering::SeqCst) {
            self.queues.close();
        }
        if is_worker_of(self.id) {
            // A handler cannot wait for its own thread; the workers finish
            // draining on their own.
            return;
        }
        let handles = std::mem::take(&mut *self.workers.lock());
        for handle in handles {
            let _ = handle.join();
        }
        if self.live_workers.load(Ordering::SeqCst) == 0 {
            self.clear_subscriptions();
        }
    }
}

/// The owner of the workers: dropping the last one shuts the bus down.
struct Handle {
    shared: Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.shutdown();
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
/// use switchboard::{Bus, Event};
///
/// let bus = Bus::builder().workers(2).build()?;
/// let seen = Arc::new(AtomicUsize::new(0));
/// let counter = seen.clone();
/// bus.subscribe("trivia.*", "stats", move |_event: &Event| {
///     counter.fetch_add(1, Ordering::SeqCst);
///     Ok(())
/// })?;
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

    fn shared(&self) -> &Shared {
        &self.handle.shared
    }

    /// A handle that does not keep the bus alive.
    pub fn downgrade(&self) -> WeakBus {
        WeakBus { handle: Arc::downgrade(&self.handle) }
    }

    /// Calls `handler` for every event whose name matches `pattern` (an
    /// fnmatch glob: `trivia.*`, `*`), on behalf of `plugin`.
    ///
    /// An event published after this returns (on this thread, or ordered
    /// after it) is seen by the subscription.
    ///
    /// # Errors
    ///
    /// [`SubscribeError`] for an empty pattern or plugin name, one longer
    /// than [`MAX_NAME_LEN`](crate::MAX_NAME_LEN), one with a NUL, or a
    /// closed bus.
    pub fn subscribe<F>(
        &self,
        pattern: &str,
        plugin: &str,
        handler: F,
    ) -> Result<SubscriptionId, SubscribeError>
    where
        F: Fn(&Event) -> HandlerResult + Send + Sync + 'static,
    {
        self.subscribe_with(pattern, plugin, SubscribeOptions::new(), handler)
    }

    /// Like [`subscribe`](Bus::subscribe), with options such as the
    /// subscription's priority: within one event, handlers run by
    /// subscription priority (`High` first), then in subscription order.
    ///
    /// # Errors
    ///
    /// As [`subscribe`](Bus::subscribe).
    pub fn subscribe_with<F>(
        &self,
        pattern: &str,
        plugin: &str,
        options: SubscribeOptions,
        handler: F,
    ) -> Result<SubscriptionId, SubscribeError>
    where
        F: Fn(&Event) -> HandlerResult + Send + Sync + 'static,
    {
        self.add_subscription(pattern, plugin, options, Box::new(handler))
    }

    /// Subscribes a handler that receives the payload as a `T`.
    ///
    /// An event built with [`Event::typed`] carrying a `T` is handed over as
    /// is; a JSON event is deserialised into a `T`. Any other payload makes
    /// the call fail with a [`PayloadError`], counted like any handler error.
    ///
    /// # Errors
    ///
    /// As [`subscribe`](Bus::subscribe).
    ///
    /// # Examples
    ///
    /// ```
    /// use serde::{Deserialize, Serialize};
    /// use switchboard::{Bus, Event};
    ///
    /// #[derive(Serialize, Deserialize)]
    /// struct Added { id: u32 }
    ///
    /// let bus = Bus::new()?;
    /// bus.subscribe_typed("quote.added", "search", |_event: &Event, added: &Added| {
    ///     assert_eq!(added.id, 7);
    ///     Ok(())
    /// })?;
    /// bus.publish(Event::typed("quote.added", Added { id: 7 }, "quotes"))?;
    /// bus.flush();
    /// assert_eq!(bus.stats().handler_errors, 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn subscribe_typed<T, F>(
        &self,
        pattern: &str,
        plugin: &str,
        handler: F,
    ) -> Result<SubscriptionId, SubscribeError>
    where
        T: DeserializeOwned + Send + Sync + 'static,
        F: Fn(&Event, &T) -> HandlerResult + Send + Sync + 'static,
    {
        self.subscribe_typed_with(pattern, plugin, SubscribeOptions::new(), handler)
    }

    /// [`subscribe_typed`](Bus::subscribe_typed) with options.
    ///
    /// # Errors
    ///
    /// As [`subscribe`](Bus::subscribe).
    pub fn subscribe_typed_with<T, F>(
        &self,
        pattern: &str,
        plugin: &str,
        options: SubscribeOptions,
        handler: F,
    ) -> Result<SubscriptionId, SubscribeError>
    where
        T: DeserializeOwned + Send + Sync + 'static,
        F: Fn(&Event, &T) -> HandlerResult + Send + Sync + 'static,
    {
        let expected = std::any::type_name::<T>();
        let adapter = move |event: &Event| -> HandlerResult {
            match event.payload() {
                Payload::Typed(typed) => match typed.downcast_ref::<T>() {
                    Some(value) => handler(event, value),
                    None => Err(Box::new(PayloadError::WrongType {
                        expected,
                        found: typed.type_name(),
                    })),
                },
                Payload::Json(json) => match T::deserialize(json) {
                    Ok(value) => handler(event, &value),
                    Err(error) => Err(Box::new(PayloadError::Json { expected, error })),
                },
            }
        };
        self.add_subscription(pattern, plugin, options, Box::new(adapter))
    }

    fn add_subscription(
        &self,
        pattern: &str,
        plugin: &str,
        options: SubscribeOptions,
        handler: Handler,
    ) -> Result<SubscriptionId, SubscribeError> {
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
        if shared.shut.load(Ordering::SeqCst) {
            return Err(SubscribeError::Closed);
        }
        reg.next_id += 1;
        let id = SubscriptionId::new(reg.next_id);
        let plugin_name: Arc<str> = match reg.plugins.get_key_value(plugin) {
            Some((name, _)) => name.clone(),
            None => Arc::from(plugin),
        };
        let sub = Arc::new(Subscription {
            id,
            pattern: compiled,
            plugin: plugin_name.clone(),
            priority: options.priority,
            handler,
            gate: Gate::new(),
            errors: Default::default(),
        });
        reg.plugins.entry(plugin_name).or_default().push(sub.clone());
        reg.live += 1;
        let next = shared.snapshot.load_full().with(sub);
        shared.snapshot.store(Arc::new(next));
        Ok(id)
    }

    /// Removes `plugin`'s subscriptions to exactly `pattern`; returns how
    /// many. Once this returns, their handlers are never started again (a
    /// call already running may finish; see
    /// [`unsubscribe_and_wait`](Bus::unsubscribe_and_wait)).
    pub fn unsubscribe(&self, pattern: &str, plugin: &str) -> usize {
        self.remove(plugin, Some(pattern)).len()
    }

    /// Removes every subscription of `plugin`; returns how many.
    pub fn unsubscribe_all(&self, plugin: &str) -> usize {
        self.remove(plugin, None).len()
    }

    /// Like [`unsubscribe`](Bus::unsubscribe), and also waits until no call
    /// of those handlers is running, so the plugin can be torn down safely.
    /// Called from inside one of those handlers, it waits for every call but
    /// its own (it does not deadlock).
    pub fn unsubscribe_and_wait(&self, pattern: &str, plugin: &str) -> usize {
        let removed = self.remove(plugin, Some(pattern));
        wait_idle(&removed);
        removed.len()
    }

    /// Like [`unsubscribe_all`](Bus::unsubscribe_all), and waits as
    /// [`unsubscribe_and_wait`](Bus::unsubscribe_and_wait) does.
    pub fn unsubscribe_all_and_wait(&self, plugin: &str) -> usize {
        let removed = self.remove(plugin, None);
        wait_idle(&removed);
        removed.len()
    }

    fn remove(&self, plugin: &str, pattern: Option<&str>) -> Vec<Arc<Subscription>> {
        let shared = self.shared();
        let mut reg = shared.registry.lock();
        let Some(subs) = reg.plugins.get_mut(plugin) else { return Vec::new() };
        let mut removed = Vec::new();
        subs.retain(|s| {
            let hit = pattern.map_or(true, |p| s.pattern.as_str() == p);
            if hit {
                removed.push(s.clone());
            }
            !hit
        });
        if subs.is_empty() {
            reg.plugins.remove(plugin);
        }
        for sub in &removed {
            sub.gate.close();
        }
        reg.live -= removed.len();
        reg.dead += removed.len();
        // Rebuild the levels that are mostly dead once the dead are a third
        // of all entries: skipping them costs little until then.
        if reg.dead * 3 > reg.live + reg.dead {
            if let Some(compacted) = shared.snapshot.load_full().compacted() {
                shared.snapshot.store(Arc::new(compacted));
            }
            reg.dead = 0;
        }
        removed
    }

    /// Queues `event` and returns without waiting for any handler.
    ///
    /// From inside a handler the event is one level deeper than the event
    /// being handled, and it is queued like any other (handlers never run
    /// nested). If the queues are full there, a handler does not block (it
    /// would wait on its own worker): under [`Overflow::Block`] the event goes
    /// to its worker's spill buffer (at most `capacity` events), dispatched
    /// before the worker's next batch; when that is full too, or under
    /// [`Overflow::Error`], it gets [`PublishError::Full`].
    ///
    /// # Errors
    ///
    /// [`PublishError`], which gives the event back: the bus is closed, the
    /// queues are full (policy `Error`), the name is empty, too long or holds
    /// a NUL, or the handler chain is deeper than the bus's `max_depth`.
    pub fn publish(&self, mut event: Event) -> Result<EventId, PublishError> {
        let shared = self.shared();
        if let Err(reason) = NameError::check(event.name()) {
            shared.counters.bump(Count::Rejected);
            return Err(PublishError::InvalidName { event: Box::new(event), reason });
        }
        // On a worker: one level deeper, and in the flush bucket of the
        // event being handled, so a flush also waits for the cascade.
        let parent = CONTEXT.with(|c| {
            let c = c.borrow();
            (c.bus == shared.id).then_some((c.depth + 1, c.bucket))
        });
        let on_worker = parent.is_some();
        let depth = parent.map_or(0, |(depth, _)| depth);
        if depth > shared.config.max_depth {
            shared.counters.bump(Count::DepthRefused);
            return Err(PublishError::DepthExceeded {
                event: Box::new(event),
                depth,
                max: shared.config.max_depth,
            });
        }
        event.set_depth(depth);
        let id = event.id();
        let priority = event.priority();
        let event = Arc::new(event);
        let bucket = match parent {
            Some((_, bucket)) => shared.epochs.begin_in(bucket),
            None => shared.epochs.begin(),
        };
        let offer =
            shared.queues.offer(event, priority, bucket, shared.config.overflow, !on_worker);
        match offer {
            Offer::Accepted { dropped } => {
                if let Some(victim) = dropped {
                    shared.epochs.end(victim.epoch, 1);
                    shared.counters.bump(Count::Dropped);
                    tracing::debug!(
                        event = victim.item.name(),
                        "dropped by the shed overflow policy"
                    );
                    // The victim was counted as published when it was accepted.
                }
                Ok(self.accepted(id))
            }
            Offer::Full(event) if on_worker && shared.config.overflow == Overflow::Block => {
                // A handler must not wait on its own worker: spill instead.
                let refused = CONTEXT.with(|c| {
                    let mut c = c.borrow_mut();
                    if c.spill.len() < shared.config.capacity {
                        c.spill.push(Queued { item: event, epoch: bucket });
                        None
                    } else {
                        Some(event)
                    }
                });
                match refused {
                    None => Ok(self.accepted(id)),
                    Some(event) => {
                        shared.epochs.end(bucket, 1);
                        shared.counters.bump(Count::Rejected);
                        Err(PublishError::Full(unwrap_event(event)))
                    }
                }
            }
            Offer::Full(event) => {
                shared.epochs.end(bucket, 1);
                shared.counters.bump(Count::Rejected);
                Err(PublishError::Full(unwrap_event(event)))
            }
            Offer::Closed(event) => {
                shared.epochs.end(bucket, 1);
                shared.counters.bump(Count::Rejected);
                Err(PublishError::Closed(unwrap_event(event)))
            }
            Offer::Shed(event) => {
                shared.epochs.end(bucket, 1);
                shared.counters.bump(Count::Published);
                shared.counters.bump(Count::Dropped);
                tracing::debug!(event = event.name(), "dropped by the shed overflow policy");
                Ok(id)
            }
        }
    }

    fn accepted(&self, id: EventId) -> EventId {
        self.shared().counters.bump(Count::Published);
        id
    }

    /// Returns once every event published before the call has been
    /// dispatched (all its handlers have returned), and so have the events
    /// those handlers published, transitively: a flush waits for whole
    /// cascades (bounded by `max_depth`).
    ///
    /// Called from inside a handler it returns at once: the event being
    /// handled was published before the call and cannot finish while its
    /// handler waits.
    pub fn flush(&self) {
        let shared = self.shared();
        if is_worker_of(shared.id) {
            return;
        }
        shared.epochs.flush();
    }

    /// Up to `limit` (all if `None`) recent events whose name matches
    /// `pattern` (all if `None`), most recent first. Empty when history is
    /// off.
    ///
    /// Events enter the history when a worker takes them off the queues (so
    /// after [`flush`](Bus::flush), every earlier event is there), in the
    /// order workers take them.
    ///
    /// # Errors
    ///
    /// [`SubscribeError::InvalidPattern`] when `pattern` is not acceptable.
    pub fn history(
        &self,
        limit: Option<usize>,
        pattern: Option<&str>,
    ) -> Result<Vec<Arc<Event>>, SubscribeError> {
        let pattern = match pattern {
            None => None,
            Some(p) => {
                NameError::check(p).map_err(|reason| SubscribeError::InvalidPattern {
                    pattern: crate::error::truncate(p),
                    reason,
                })?;
                Some(Pattern::new(p).map_err(|_| SubscribeError::InvalidPattern {
                    pattern: crate::error::truncate(p),
                    reason: NameError::TooLong { len: p.len(), max: crate::MAX_NAME_LEN },
                })?)
            }
        };
        Ok(match &self.shared().history {
            Some(h) => h.read(limit.unwrap_or(usize::MAX), pattern.as_ref()),
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

    /// The live subscriptions, as pattern → plugins (in subscription order);
    /// only `plugin`'s when given.
    pub fn subscriptions(&self, plugin: Option<&str>) -> BTreeMap<String, Vec<String>> {
        let reg = self.shared().registry.lock();
        let mut subs: Vec<&Arc<Subscription>> = match plugin {
            Some(p) => reg.plugins.get(p).map(|v| v.iter().collect()).unwrap_or_default(),
            None => reg.plugins.values().flatten().collect(),
        };
        subs.sort_by_key(|s| s.id);
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for s in subs {
            out.entry(s.pattern.as_str().to_owned()).or_default().push(s.plugin.to_string());
        }
        out
    }

    /// Handler errors (and panics) of subscription `id` so far, if it is live.
    pub fn subscription_errors(&self, id: SubscriptionId) -> Option<u64> {
        let reg = self.shared().registry.lock();
        reg.plugins
            .values()
            .flatten()
            .find(|s| s.id == id)
            .map(|s| s.errors.load(Ordering::Relaxed))
    }

    /// Stops accepting events, dispatches everything already accepted, joins
    /// the workers and drops every handler. Idempotent. Later publishes get
    /// [`PublishError::Closed`].
    ///
    /// Called from inside a handler it cannot wait for its own thread: it
    /// closes the bus and returns, and the workers finish draining by
    /// themselves.
    pub fn shutdown(&self) {
        self.shared().shutdown();
    }

    /// Whether [`shutdown`](Bus::shutdown) has been called.
    pub fn is_closed(&self) -> bool {
        self.shared().shut.load(Ordering::SeqCst)
    }
}

fn wait_idle(removed: &[Arc<Subscription>]) {
    for sub in removed {
        sub.gate.wait_idle(own_calls(sub));
    }
}

fn unwrap_event(event: Arc<Event>) -> Box<Event> {
    Box::new(Arc::try_unwrap(event).unwrap_or_else(|shared| (*shared).clone()))
}
