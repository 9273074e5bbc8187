//! The plugin host: plugins that know each other only through events.
//!
//! A [`Plugin`] subscribes and publishes through its [`PluginContext`],
//! which carries its name (as subscriber and as event source) and remembers
//! its subscriptions. A [`PluginManager`] owns the [`Bus`] and the plugins:
//! it loads them (a failed `setup` leaves nothing behind), unloads them
//! (every subscription removed, running calls waited for, handlers dropped,
//! `teardown` called whatever it does) and reloads them from a factory
//! without losing or duplicating an event.
//!
//! # Reload
//!
//! `reload` builds a fresh instance and runs its `setup` while the old
//! instance is still subscribed, then removes the old one. During that
//! window both may be called for the same event, so every handler made
//! through a context is wrapped: while a reload is in progress, a call
//! first *claims* `(event, role)` in a set the two instances share, and only
//! the first claim runs. A role is a pattern and its ordinal among the
//! instance's subscriptions to that pattern, so the old instance's second
//! `trivia.*` subscription hands over to the new one's second `trivia.*`.
//!
//! The union rule: while the reload runs, events matching the old
//! instance's subscriptions go to the old instance, events matching the new
//! one's go to the new one, and an event a role of both would receive goes
//! to exactly one of them. Once `reload` returns, only the new instance's
//! subscriptions exist. Before removing the old instance, `reload` flushes
//! the bus, so every event published before the new instance subscribed
//! has reached the old one; after, it flushes again before it stops
//! claiming. Events are neither lost nor duplicated (tested under a flood
//! from several threads with sequence numbers).
//!
//! Claims are keyed by the event's publish sequence number: each accepted
//! publish is one delivery (a republished clone of an event is another).
//! A call whose claim is refused counts nothing in `Stats::dispatched`. A
//! new instance that subscribes with `subscribe_replay` catches up from
//! history like any late joiner; its replayed calls go through the claims
//! like live ones, so an event the old instance handled during the reload
//! is not replayed to the new one, while one it handled before the reload
//! began is (that is the catch-up).
//!
//! Outside a reload, the wrapper costs one relaxed load per call.
//!
//! # Cargo features
//!
//! | Feature | Default | What it adds |
//! |---------|---------|--------------|
//! | `tokio` | off | `AsyncPlugin` (async `setup` and `teardown`), and the `_async` forms of the manager's methods, which wait without blocking a runtime thread; turns on `switchboard/tokio` |

#![cfg_attr(docsrs, feature(doc_cfg))]

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use parking_lot::Mutex;
use serde_json::Value;

use switchboard::{
    BuildError, Bus, BusBuilder, Event, EventId, Handler, HandlerPanic, PublishError, Replayed,
    SubscribeError, SubscribeOptions, SubscriptionId, Target, WeakBus,
};

/// A plugin: a named piece of a bot that subscribes to events and publishes
/// others, through its [`PluginContext`].
///
/// # Examples
///
/// ```
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use std::sync::Arc;
/// use switchboard::{Bus, Event, Handler};
/// use switchboard_host::{Plugin, PluginContext, PluginError, PluginManager};
///
/// #[derive(Default)]
/// struct Greeter { greeted: Arc<AtomicU64> }
///
/// impl Plugin for Greeter {
///     fn name(&self) -> &str { "greeter" }
///     fn setup(&mut self, ctx: &PluginContext) -> Result<(), PluginError> {
///         let (greeted, me) = (self.greeted.clone(), ctx.clone());
///         ctx.subscribe("user.joined", Handler::sync(move |event| {
///             greeted.fetch_add(1, Ordering::Relaxed);
///             me.publish("greeter.said", event.data().clone())?;
///             Ok(())
///         }), ())?;
///         Ok(())
///     }
/// }
///
/// let manager = PluginManager::new(Bus::new()?);
/// manager.register(Greeter::default)?; // named once, by `name`
/// manager.bus().publish(Event::new("user.joined", serde_json::json!("ada"), "chat"))?;
/// manager.bus().flush();
/// assert_eq!(manager.list()[0].subscriptions, ["user.joined"]);
/// manager.shutdown();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait Plugin: Send + 'static {
    /// The plugin's name: unique in its manager, its subscriber name and
    /// its events' source.
    fn name(&self) -> &str;

    /// The plugin's version, for [`PluginManager::list`].
    fn version(&self) -> &str {
        "0.0.0"
    }

    /// Subscribes and prepares. An `Err` or a panic means the plugin is not
    /// loaded, and whatever it subscribed is removed.
    ///
    /// # Errors
    ///
    /// Whatever keeps the plugin from running.
    fn setup(&mut self, ctx: &PluginContext) -> Result<(), PluginError>;

    /// Called when the plugin is unloaded (or replaced by a reload), after
    /// its subscriptions are removed and their running calls have ended.
    ///
    /// # Errors
    ///
    /// Reported by `unload`; the plugin is unloaded all the same.
    fn teardown(&mut self, _ctx: &PluginContext) -> Result<(), PluginError> {
        Ok(())
    }
}

/// Why a plugin operation failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum PluginError {
    /// A plugin of that name is loaded (or being loaded) already.
    AlreadyLoaded {
        /// The name.
        name: String,
    },
    /// No plugin of that name is loaded.
    NotLoaded {
        /// The name.
        name: String,
    },
    /// The plugin was loaded without a factory ([`PluginManager::load`]),
    /// so there is nothing to build a new instance from.
    NotReloadable {
        /// The name.
        name: String,
    },
    /// A reload's factory built a plugin whose `name()` is not the one its
    /// first instance gave.
    NameMismatch {
        /// The name the plugin was registered under (its first instance's).
        registered: String,
        /// The name the instance gave.
        instance: String,
    },
    /// The plugin is being loaded, unloaded or reloaded by another call.
    Busy {
        /// The name.
        name: String,
    },
    /// `reload` was called from inside a handler, where it cannot wait for
    /// the events it must hand over.
    InHandler,
    /// The plugin is an `AsyncPlugin`: unload and reload it with the
    /// `_async` methods.
    NeedsAsync {
        /// The name.
        name: String,
    },
    /// A blocking form (`unload`, `reload`) was called on a current-thread
    /// tokio runtime's thread while async handlers run on a current-thread
    /// runtime: waiting for their calls there would starve them. Use the
    /// `_async` form. Nothing was changed.
    WouldBlock,
    /// `setup` failed or panicked; the plugin is not loaded (or, for a
    /// reload, the old instance keeps running).
    Setup {
        /// The plugin.
        name: String,
        /// What went wrong.
        reason: String,
    },
    /// `teardown` failed or panicked; the plugin is unloaded all the same.
    Teardown {
        /// The plugin.
        name: String,
        /// What went wrong.
        reason: String,
    },
    /// A subscription was refused (`?` on [`PluginContext::subscribe`]).
    Subscribe(SubscribeError),
    /// A publish was refused (`?` on [`PluginContext::publish`]).
    Publish(PublishError),
    /// A plugin's own error, from [`PluginError::other`].
    Other(String),
}

impl PluginError {
    /// A plugin's own error, with a message.
    pub fn other(message: impl fmt::Display) -> PluginError {
        PluginError::Other(message.to_string())
    }
}

impl fmt::Display for PluginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PluginError::AlreadyLoaded { name } => {
                write!(f, "a plugin named {name:?} is loaded already")
            }
            PluginError::NotLoaded { name } => write!(f, "no plugin named {name:?} is loaded"),
            PluginError::NotReloadable { name } => {
                write!(f, "plugin {name:?} was loaded without a factory and cannot be reloaded")
            }
            PluginError::NameMismatch { registered, instance } => {
                write!(f, "the factory of plugin {registered:?} built a plugin named {instance:?}")
            }
            PluginError::Busy { name } => {
                write!(f, "plugin {name:?} is being loaded, unloaded or reloaded")
            }
            PluginError::InHandler => f.write_str("reload cannot be called from inside a handler"),
            PluginError::NeedsAsync { name } => {
                write!(f, "plugin {name:?} is async: use unload_async and reload_async")
            }
            PluginError::WouldBlock => f.write_str(
                "a blocking plugin operation on a current-thread tokio runtime that runs async \
                 handlers would wait forever; use the _async form",
            ),
            PluginError::Setup { name, reason } => {
                write!(f, "plugin {name:?} failed to set up: {reason}")
            }
            PluginError::Teardown { name, reason } => {
                write!(f, "plugin {name:?} failed to tear down: {reason}")
            }
            PluginError::Subscribe(e) => write!(f, "subscription refused: {e}"),
            PluginError::Publish(e) => write!(f, "publish refused: {e}"),
            PluginError::Other(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for PluginError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PluginError::Subscribe(e) => Some(e),
            PluginError::Publish(e) => Some(e),
            _ => None,
        }
    }
}

impl From<SubscribeError> for PluginError {
    fn from(e: SubscribeError) -> PluginError {
        PluginError::Subscribe(e)
    }
}

impl From<PublishError> for PluginError {
    fn from(e: PublishError) -> PluginError {
        PluginError::Publish(e)
    }
}

/// The claims of a reload in progress, shared by the old and new instances.
///
/// A claim is keyed by the event's sequence number, which is unique to one
/// accepted publish (a republished clone of an event is a new publish, and
/// reaches each role once more), and by the role.
#[derive(Debug, Default)]
struct Handover {
    active: std::sync::atomic::AtomicBool,
    claims: Mutex<HashSet<(u64, Arc<str>)>>,
    counters: Arc<HostCounters>,
    /// Events the plugin published through its contexts (the hand-over is
    /// the plugin's across reloads, so this counts on through them).
    published: AtomicU64,
}

/// What the manager counts; see [`HostStats`].
#[derive(Debug, Default)]
struct HostCounters {
    loads: AtomicU64,
    unloads: AtomicU64,
    reloads: AtomicU64,
    failed_reloads: AtomicU64,
    reload_nanos: AtomicU64,
    last_reload_nanos: AtomicU64,
    claims_won: AtomicU64,
    claims_refused: AtomicU64,
}

/// A plugin manager's counters: see [`PluginManager::stats`].
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct HostStats {
    /// Plugins loaded now.
    pub loaded: u64,
    /// Loads that succeeded (a reload's new instance is not counted here).
    pub loads: u64,
    /// Unloads (a teardown that failed still unloads, and counts).
    pub unloads: u64,
    /// Reloads that swapped in a new instance.
    pub reloads: u64,
    /// Reloads that kept the old instance: the factory failed or panicked,
    /// or the new instance's `setup` did.
    pub failed_reloads: u64,
    /// Time spent in the reloads that succeeded, from the start to the end
    /// of the hand-over.
    pub reload_time: std::time::Duration,
    /// The last successful reload's time.
    pub last_reload_time: std::time::Duration,
    /// Calls run during a reload's hand-over because they claimed their
    /// event first (the old and the new instance claim; one of them runs).
    pub handover_claims: u64,
    /// Calls skipped during a hand-over: the other instance had claimed the
    /// event (the bus counts them out of `Stats::dispatched`).
    pub handover_skips: u64,
}

impl Handover {
    /// Whether this call of `role` for `event` should run (a refused call
    /// is counted by the bus as skipped: see [`Handler::filtered`]).
    #[inline]
    fn admits(&self, event: &Event, role: &Arc<str>) -> bool {
        use std::sync::atomic::Ordering;
        // A reload sets `active` before the new instance subscribes, and a
        // call that may race the new instance reached its worker through
        // that subscribe's snapshot swap, so it sees `active` set.
        if !self.active.load(Ordering::Acquire) {
            return true;
        }
        // Every event a handler is called with was accepted, so it has a
        // sequence number.
        let key = event.sequence().unwrap_or(u64::MAX);
        let won = self.claims.lock().insert((key, role.clone()));
        let counter = if won { &self.counters.claims_won } else { &self.counters.claims_refused };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        won
    }
}

/// What a plugin subscribes and publishes through: its name goes with every
/// subscription (as the subscriber) and every event (as the source), and its
/// subscriptions are remembered so that unloading removes them all.
///
/// Cheap to clone, and meant to be: a handler that publishes keeps a clone
/// (it does not keep the bus alive), so it needs neither `Bus::current` nor
/// the plugin's name typed again.
///
/// # Examples
///
/// ```
/// use switchboard::{Event, Handler};
/// use switchboard_host::{Plugin, PluginContext, PluginError, PluginManager};
///
/// struct Echo;
///
/// impl Plugin for Echo {
///     fn name(&self) -> &str { "echo" }
///     fn setup(&mut self, ctx: &PluginContext) -> Result<(), PluginError> {
///         let me = ctx.clone();
///         ctx.subscribe("chat.said", Handler::sync(move |event: &Event| {
///             me.publish("echo.said", event.data().clone())?; // source "echo"
///             Ok(())
///         }), ())?;
///         Ok(())
///     }
/// }
///
/// let manager = PluginManager::new(switchboard::Bus::new()?);
/// manager.load(Echo)?;
/// manager.bus().publish(Event::new("chat.said", serde_json::json!("hi"), "chat"))?;
/// manager.bus().flush();
/// let echoed = manager.bus().history(switchboard::HistoryQuery::new().matching("echo.*"))?;
/// assert_eq!(echoed[0].source(), "echo");
/// manager.shutdown();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct PluginContext {
    inner: Arc<ContextInner>,
}

struct ContextInner {
    bus: WeakBus,
    name: Arc<str>,
    subs: Mutex<Vec<(SubscriptionId, String)>>,
    handover: Arc<Handover>,
}

impl fmt::Debug for PluginContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PluginContext").field("name", &self.inner.name).finish_non_exhaustive()
    }
}

/// What [`PluginContext::subscribe`] takes as options: a
/// [`SubscribeOptions`] (its plugin name, if any, is replaced by the
/// plugin's own), or `()` for the defaults.
#[derive(Clone, Debug, Default)]
pub struct ContextOptions(SubscribeOptions);

impl From<SubscribeOptions> for ContextOptions {
    fn from(options: SubscribeOptions) -> ContextOptions {
        ContextOptions(options)
    }
}

impl From<()> for ContextOptions {
    fn from((): ()) -> ContextOptions {
        ContextOptions::default()
    }
}

impl PluginContext {
    fn new(bus: &Bus, name: Arc<str>, handover: Arc<Handover>) -> PluginContext {
        PluginContext {
            inner: Arc::new(ContextInner {
                bus: bus.downgrade(),
                name,
                subs: Mutex::new(Vec::new()),
                handover,
            }),
        }
    }

    /// The plugin's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The bus, for everything the context does not wrap; `None` once its
    /// last handle is gone (it is shutting down). Keep it for a call, not in
    /// a handler (a `Bus` there keeps the bus alive).
    pub fn bus(&self) -> Option<Bus> {
        self.inner.bus.upgrade()
    }

    /// Subscribes `handler` (of any kind) to `pattern` on behalf of the
    /// plugin, with `options` (`()` for the defaults; see [`ContextOptions`]).
    /// Unloading the plugin removes it; during a reload, each event a role
    /// of both instances would handle is handled by one of them.
    ///
    /// # Errors
    ///
    /// As [`Bus::subscribe`], and [`SubscribeError::Closed`] once the bus is
    /// gone.
    pub fn subscribe(
        &self,
        pattern: &str,
        handler: Handler,
        options: impl Into<ContextOptions>,
    ) -> Result<SubscriptionId, SubscribeError> {
        let bus = self.bus().ok_or(SubscribeError::Closed)?;
        let options = options.into().0.plugin(&self.inner.name);
        let id = bus.subscribe(pattern, self.gated(pattern, handler), options)?;
        Ok(self.remember(id, pattern))
    }

    /// Subscribes `handler` after replaying up to `last` of the latest
    /// matching events from history to it (see [`Bus::subscribe_replay`]):
    /// a late joiner catches up with no gap and no duplicate at the seam.
    ///
    /// # Errors
    ///
    /// As [`Bus::subscribe_replay`].
    pub fn subscribe_replay(
        &self,
        pattern: &str,
        handler: Handler,
        options: impl Into<ContextOptions>,
        last: usize,
    ) -> Result<Replayed, SubscribeError> {
        let bus = self.bus().ok_or(SubscribeError::Closed)?;
        let options = options.into().0.plugin(&self.inner.name);
        let replay = bus.subscribe_replay(pattern, self.gated(pattern, handler), options, last)?;
        self.remember(replay.id, pattern);
        Ok(replay)
    }

    /// Publishes `name` with JSON `data`, from this plugin. From one of
    /// the plugin's handlers (of any kind), the event's
    /// [parent](Event::parent) is the event being handled, as for any
    /// publish from a handler.
    ///
    /// # Errors
    ///
    /// As [`Bus::publish`]; [`PublishError::Closed`] once the bus is gone.
    pub fn publish(&self, name: &str, data: Value) -> Result<EventId, PublishError> {
        self.publish_event(Event::new(name, data, ""))
    }

    /// Publishes `name` carrying `value` as a typed payload (see
    /// [`Event::typed`]), from this plugin.
    ///
    /// # Errors
    ///
    /// As [`publish`](PluginContext::publish).
    pub fn publish_typed<T>(&self, name: &str, value: T) -> Result<EventId, PublishError>
    where
        T: serde::Serialize + std::any::Any + Send + Sync,
    {
        self.publish_event(Event::typed(name, value, ""))
    }

    /// Publishes `event` (any payload, any priority) with this plugin as its
    /// source.
    ///
    /// # Errors
    ///
    /// As [`publish`](PluginContext::publish).
    pub fn publish_event(&self, event: Event) -> Result<EventId, PublishError> {
        let event = event.with_source(&*self.inner.name);
        let published = match self.bus() {
            Some(bus) => bus.publish(event),
            None => Err(PublishError::Closed(Box::new(event))),
        };
        if published.is_ok() {
            self.inner.handover.published.fetch_add(1, Relaxed);
        }
        published
    }

    /// The role of the next subscription to `pattern`: the pattern and its
    /// ordinal among this instance's subscriptions to it.
    fn role(&self, pattern: &str) -> Arc<str> {
        let n = self.inner.subs.lock().iter().filter(|(_, p)| p == pattern).count();
        Arc::from(format!("{pattern}#{n}"))
    }

    /// `handler`, running only for the calls a reload's handover admits.
    fn gated(&self, pattern: &str, handler: Handler) -> Handler {
        let (handover, role) = (self.inner.handover.clone(), self.role(pattern));
        handler.filtered(move |event: &Event| handover.admits(event, &role))
    }

    fn remember(&self, id: SubscriptionId, pattern: &str) -> SubscriptionId {
        self.inner.subs.lock().push((id, pattern.to_owned()));
        id
    }

    /// The instance's subscriptions, in subscription order.
    fn subscriptions(&self) -> Vec<(SubscriptionId, String)> {
        self.inner.subs.lock().clone()
    }

    /// Removes every subscription of this instance, waiting for running
    /// calls (its own excepted, when called from one of its handlers) where
    /// this thread may wait; elsewhere (a current-thread tokio runtime that
    /// runs async handlers) without waiting.
    fn unsubscribe_all(&self, bus: &Bus) {
        let wait = bus.can_wait_here();
        for (id, _) in std::mem::take(&mut *self.inner.subs.lock()) {
            let removed = bus.unsubscribe(id);
            if wait {
                removed.wait();
            }
        }
    }
}

/// A plugin's state, as [`PluginManager::list`] reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PluginState {
    /// Loaded and subscribed.
    Running,
    /// Being replaced by a new instance.
    Reloading,
}

/// One loaded plugin, as [`PluginManager::list`] reports it.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct PluginInfo {
    /// Its name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// Its state.
    pub state: PluginState,
    /// Its subscriptions' patterns, in subscription order.
    pub subscriptions: Vec<String>,
    /// Errors and panics of its live subscriptions' handlers.
    pub handler_errors: u64,
    /// Events it published through its context (and its earlier instances',
    /// since it was loaded).
    pub published: u64,
    /// Whether it was registered with a factory (and so can be reloaded).
    pub reloadable: bool,
}

/// A plugin whose `setup` and `teardown` are async (feature `tokio`):
/// load it with [`PluginManager::load_async`] or
/// [`PluginManager::register_async`], and unload or reload it with the
/// `_async` methods.
///
/// # Examples
///
/// ```
/// use switchboard::{Bus, Handler};
/// use switchboard_host::{AsyncPlugin, PluginContext, PluginError, PluginFuture, PluginManager};
///
/// struct Feeds;
///
/// impl AsyncPlugin for Feeds {
///     fn name(&self) -> &str { "feeds" }
///     fn setup<'a>(&'a mut self, ctx: &'a PluginContext) -> PluginFuture<'a> {
///         Box::pin(async move {
///             tokio::task::yield_now().await; // connect to the feed server...
///             ctx.subscribe("feed.*", Handler::future(|_event| async { Ok(()) }), ())?;
///             Ok(())
///         })
///     }
/// }
///
/// # tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(async {
/// let manager = PluginManager::new(Bus::new()?);
/// manager.register_async(|| Feeds).await?;
/// manager.reload_async("feeds").await?;
/// manager.shutdown_async().await;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # })?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[cfg(feature = "tokio")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
pub trait AsyncPlugin: Send + 'static {
    /// As [`Plugin::name`].
    fn name(&self) -> &str;

    /// As [`Plugin::version`].
    fn version(&self) -> &str {
        "0.0.0"
    }

    /// As [`Plugin::setup`], async.
    fn setup<'a>(&'a mut self, ctx: &'a PluginContext) -> PluginFuture<'a>;

    /// As [`Plugin::teardown`], async.
    fn teardown<'a>(&'a mut self, _ctx: &'a PluginContext) -> PluginFuture<'a> {
        Box::pin(async { Ok(()) })
    }
}

/// What an [`AsyncPlugin`]'s `setup` and `teardown` return.
#[cfg(feature = "tokio")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
pub type PluginFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), PluginError>> + Send + 'a>>;

/// A loaded instance, of either kind.
enum Instance {
    Sync(Box<dyn Plugin>),
    #[cfg(feature = "tokio")]
    Async(Box<dyn AsyncPlugin>),
}

impl Instance {
    fn name(&self) -> &str {
        match self {
            Instance::Sync(p) => p.name(),
            #[cfg(feature = "tokio")]
            Instance::Async(p) => p.name(),
        }
    }

    fn version(&self) -> &str {
        match self {
            Instance::Sync(p) => p.version(),
            #[cfg(feature = "tokio")]
            Instance::Async(p) => p.version(),
        }
    }

    fn is_async(&self) -> bool {
        !matches!(self, Instance::Sync(_))
    }

    /// `version()`, called outside every lock; a panic gives `"?"`.
    fn version_guarded(&self) -> String {
        match catch_unwind(AssertUnwindSafe(|| self.version().to_owned())) {
            Ok(version) => version,
            Err(panic) => {
                tracing::warn!(plugin = self.name(), "version() panicked");
                discard_panic(panic);
                "?".to_owned()
            }
        }
    }

    /// Runs a sync instance's `setup` or `teardown` (an async one is an
    /// error here: the caller checked).
    fn run_sync(&mut self, ctx: &PluginContext, setup: bool) -> Result<(), String> {
        match self {
            Instance::Sync(p) => guarded(|| if setup { p.setup(ctx) } else { p.teardown(ctx) }),
            #[cfg(feature = "tokio")]
            Instance::Async(_) => Err("an async plugin needs the _async methods".to_owned()),
        }
    }

    /// Runs `setup` or `teardown` of either kind.
    #[cfg(feature = "tokio")]
    async fn run(&mut self, ctx: &PluginContext, setup: bool) -> Result<(), String> {
        match self {
            Instance::Sync(_) => self.run_sync(ctx, setup),
            Instance::Async(p) => {
                // `once` makes the closure `FnOnce`, so that the future may
                // borrow the plugin for as long as it lives.
                fn once<R, F: FnOnce() -> R>(f: F) -> F {
                    f
                }
                let future = match catch_unwind(AssertUnwindSafe(once(move || {
                    if setup {
                        p.setup(ctx)
                    } else {
                        p.teardown(ctx)
                    }
                }))) {
                    Ok(future) => future,
                    Err(panic) => return Err(panic_message(panic)),
                };
                match CatchUnwind(future).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(panic) => Err(panic_message(panic)),
                }
            }
        }
    }
}

type Factory = Arc<dyn Fn() -> Instance + Send + Sync>;

struct Loaded {
    plugin: Instance,
    /// `plugin.version()`, asked once outside the manager's lock.
    version: String,
    ctx: PluginContext,
    factory: Option<Factory>,
    state: PluginState,
}

enum Slot {
    /// Reserved by a `load` whose setup is running.
    Loading,
    Loaded(Box<Loaded>),
    /// Taken out by an `unload` in progress.
    Unloading,
}

struct Host {
    bus: Bus,
    plugins: Mutex<BTreeMap<String, Slot>>,
    counters: Arc<HostCounters>,
}

/// Owns the [`Bus`] and the plugins: loads, unloads and reloads them.
/// Cheap to clone; handlers may hold one (a [`WeakPluginManager`] does not
/// keep the bus alive).
#[derive(Clone)]
pub struct PluginManager {
    host: Arc<Host>,
}

/// A [`PluginManager`] that does not keep the plugins and the bus alive.
#[derive(Clone)]
pub struct WeakPluginManager {
    host: std::sync::Weak<Host>,
}

impl WeakPluginManager {
    /// The manager, if it still exists.
    pub fn upgrade(&self) -> Option<PluginManager> {
        self.host.upgrade().map(|host| PluginManager { host })
    }
}

impl fmt::Debug for WeakPluginManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WeakPluginManager").finish_non_exhaustive()
    }
}

impl fmt::Debug for PluginManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self.host.plugins.lock().keys().cloned().collect();
        f.debug_struct("PluginManager").field("plugins", &names).finish_non_exhaustive()
    }
}

fn panic_message(panic: Box<dyn std::any::Any + Send>) -> String {
    let message = HandlerPanic::new(&*panic).to_string();
    discard_panic(panic);
    message
}

/// Runs user code (setup, teardown), turning a panic into an error message.
fn guarded(f: impl FnOnce() -> Result<(), PluginError>) -> Result<(), String> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(panic) => Err(panic_message(panic)),
    }
}

/// What a reload carries from its start to its end.
struct Reloading {
    factory: Factory,
    handover: Arc<Handover>,
    started: std::time::Instant,
}

// The steps of load, unload and reload, shared by the blocking and the
// async forms; each runs under the manager's lock and never calls user code.
impl PluginManager {
    fn reserve(&self, name: &str) -> Result<PluginContext, PluginError> {
        let mut plugins = self.host.plugins.lock();
        if plugins.contains_key(name) {
            return Err(PluginError::AlreadyLoaded { name: name.to_owned() });
        }
        plugins.insert(name.to_owned(), Slot::Loading);
        let handover =
            Arc::new(Handover { counters: self.host.counters.clone(), ..Default::default() });
        Ok(PluginContext::new(&self.host.bus, Arc::from(name), handover))
    }

    fn settle_load(&self, name: &str, loaded: Option<Loaded>) {
        if loaded.is_some() {
            self.host.counters.loads.fetch_add(1, Relaxed);
        }
        let mut plugins = self.host.plugins.lock();
        match loaded {
            Some(loaded) => plugins.insert(name.to_owned(), Slot::Loaded(Box::new(loaded))),
            None => plugins.remove(name),
        };
    }

    fn take_for_unload(&self, name: &str, allow_async: bool) -> Result<Box<Loaded>, PluginError> {
        let mut plugins = self.host.plugins.lock();
        match plugins.get(name) {
            None => return Err(PluginError::NotLoaded { name: name.to_owned() }),
            Some(Slot::Loaded(l)) if l.state == PluginState::Running => {
                if l.plugin.is_async() && !allow_async {
                    return Err(PluginError::NeedsAsync { name: name.to_owned() });
                }
            }
            Some(_) => return Err(PluginError::Busy { name: name.to_owned() }),
        }
        match plugins.insert(name.to_owned(), Slot::Unloading) {
            Some(Slot::Loaded(loaded)) => Ok(loaded),
            _ => unreachable!("checked above under the same lock"),
        }
    }

    fn begin_reload(&self, name: &str, allow_async: bool) -> Result<Reloading, PluginError> {
        if self.host.bus.in_handler() {
            return Err(PluginError::InHandler);
        }
        let mut plugins = self.host.plugins.lock();
        let loaded = match plugins.get_mut(name) {
            Some(Slot::Loaded(l)) => l,
            Some(_) => return Err(PluginError::Busy { name: name.to_owned() }),
            None => return Err(PluginError::NotLoaded { name: name.to_owned() }),
        };
        if loaded.state != PluginState::Running {
            return Err(PluginError::Busy { name: name.to_owned() });
        }
        if loaded.plugin.is_async() && !allow_async {
            return Err(PluginError::NeedsAsync { name: name.to_owned() });
        }
        let Some(factory) = loaded.factory.clone() else {
            return Err(PluginError::NotReloadable { name: name.to_owned() });
        };
        loaded.state = PluginState::Reloading;
        let handover = loaded.ctx.inner.handover.clone();
        // From here the old instance's calls claim, so that whatever the new
        // one is called for as well runs once.
        handover.active.store(true, std::sync::atomic::Ordering::SeqCst);
        Ok(Reloading { factory, handover, started: std::time::Instant::now() })
    }

    /// Puts the set-up fresh instance in the slot; returns the old one.
    fn swap_in(
        &self,
        name: &str,
        fresh: Instance,
        version: String,
        ctx: PluginContext,
        r: &Reloading,
    ) -> Box<Loaded> {
        let mut plugins = self.host.plugins.lock();
        let Some(Slot::Loaded(old)) = plugins.remove(name) else {
            unreachable!("a reloading plugin stays in its slot")
        };
        let loaded = Loaded {
            plugin: fresh,
            version,
            ctx,
            factory: Some(r.factory.clone()),
            state: PluginState::Reloading,
        };
        plugins.insert(name.to_owned(), Slot::Loaded(Box::new(loaded)));
        old
    }

    fn end_reload(&self, name: &str, r: &Reloading, succeeded: bool) {
        let counters = &self.host.counters;
        if succeeded {
            counters.reloads.fetch_add(1, Relaxed);
            let nanos = u64::try_from(r.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
            counters.reload_nanos.fetch_add(nanos, Relaxed);
            counters.last_reload_nanos.store(nanos, Relaxed);
        } else {
            counters.failed_reloads.fetch_add(1, Relaxed);
        }
        r.handover.active.store(false, std::sync::atomic::Ordering::SeqCst);
        r.handover.claims.lock().clear();
        if let Some(Slot::Loaded(l)) = self.host.plugins.lock().get_mut(name) {
            l.state = PluginState::Running;
        }
    }

    fn fresh_context(&self, name: &str, r: &Reloading) -> PluginContext {
        PluginContext::new(&self.host.bus, Arc::from(name), r.handover.clone())
    }

    /// A reload's fresh instance from its factory; a factory that panics or
    /// builds another name ends the reload, leaving the old instance
    /// running.
    fn build_fresh(&self, name: &str, r: &Reloading) -> Result<Instance, PluginError> {
        let built = build(Some(name), &*r.factory);
        if built.is_err() {
            self.end_reload(name, r, false);
        }
        built
    }

    fn teardown_failed(name: &str, reason: String) -> PluginError {
        tracing::warn!(plugin = name, %reason, "teardown failed; the plugin is unloaded all the same");
        PluginError::Teardown { name: name.to_owned(), reason }
    }
}

impl PluginManager {
    /// A manager owning `bus`.
    pub fn new(bus: Bus) -> PluginManager {
        let host = Host { bus, plugins: Mutex::new(BTreeMap::new()), counters: Arc::default() };
        PluginManager { host: Arc::new(host) }
    }

    /// A manager owning a bus built by `builder`.
    ///
    /// # Errors
    ///
    /// As [`BusBuilder::build`].
    pub fn from_builder(builder: BusBuilder) -> Result<PluginManager, BuildError> {
        Ok(PluginManager::new(builder.build()?))
    }

    /// The bus.
    pub fn bus(&self) -> &Bus {
        &self.host.bus
    }

    /// A handle that does not keep the manager alive.
    pub fn downgrade(&self) -> WeakPluginManager {
        WeakPluginManager { host: Arc::downgrade(&self.host) }
    }

    /// Builds an instance with `factory` and loads it under the name the
    /// instance gives ([`Plugin::name`]: the name is given once, there);
    /// [`reload`](PluginManager::reload) builds its new instances with the
    /// factory, and refuses one that gives another name.
    ///
    /// # Errors
    ///
    /// As [`load`](PluginManager::load), and [`PluginError::Setup`] when the
    /// factory panics.
    pub fn register<P, F>(&self, factory: F) -> Result<(), PluginError>
    where
        P: Plugin,
        F: Fn() -> P + Send + Sync + 'static,
    {
        let factory: Factory = Arc::new(move || Instance::Sync(Box::new(factory())));
        self.load_instance(build(None, &*factory)?, Some(factory))
    }

    /// Loads `plugin` (it cannot be reloaded: use
    /// [`register`](PluginManager::register) for that).
    ///
    /// # Errors
    ///
    /// [`PluginError::AlreadyLoaded`] when the name is taken;
    /// [`PluginError::Setup`] when `setup` fails or panics (then nothing it
    /// subscribed is left behind).
    pub fn load<P: Plugin>(&self, plugin: P) -> Result<(), PluginError> {
        self.load_instance(Instance::Sync(Box::new(plugin)), None)
    }

    fn load_instance(
        &self,
        mut plugin: Instance,
        factory: Option<Factory>,
    ) -> Result<(), PluginError> {
        let name = plugin.name().to_owned();
        let ctx = self.reserve(&name)?;
        if let Err(reason) = plugin.run_sync(&ctx, true) {
            ctx.unsubscribe_all(&self.host.bus);
            self.settle_load(&name, None);
            return Err(PluginError::Setup { name, reason });
        }
        let version = plugin.version_guarded();
        self.settle_load(
            &name,
            Some(Loaded { plugin, version, ctx, factory, state: PluginState::Running }),
        );
        Ok(())
    }

    /// Unloads `name`: removes every subscription it made, waits for their
    /// running calls (but its own, when a plugin unloads itself from its
    /// handler), drops its handlers, and calls `teardown`; whatever
    /// `teardown` subscribed through its context is removed too.
    ///
    /// On a current-thread tokio runtime (what `#[tokio::test]` uses) it
    /// works while no async handler runs on such a runtime; while one does,
    /// waiting there could starve it, and it returns
    /// [`PluginError::WouldBlock`]: use `unload_async`.
    ///
    /// # Errors
    ///
    /// [`PluginError::NotLoaded`], [`PluginError::Busy`],
    /// [`PluginError::NeedsAsync`] for an async plugin (`AsyncPlugin`),
    /// [`PluginError::WouldBlock`], or [`PluginError::Teardown`] when
    /// `teardown` failed or panicked (the plugin is unloaded all the same).
    pub fn unload(&self, name: &str) -> Result<(), PluginError> {
        if !self.host.bus.can_wait_here() {
            return Err(PluginError::WouldBlock);
        }
        let mut loaded = self.take_for_unload(name, false)?;
        loaded.ctx.unsubscribe_all(&self.host.bus);
        let torn = loaded.plugin.run_sync(&loaded.ctx, false);
        // What teardown subscribed would outlive the plugin.
        loaded.ctx.unsubscribe_all(&self.host.bus);
        self.host.plugins.lock().remove(name);
        self.host.counters.unloads.fetch_add(1, Relaxed);
        drop(loaded);
        torn.map_err(|reason| PluginManager::teardown_failed(name, reason))
    }

    /// Replaces `name` with a fresh instance from its factory, losing and
    /// duplicating no event (see the module documentation). If the factory
    /// panics or builds a plugin of another name, or the new instance's
    /// `setup` fails, the old instance keeps running and the plugin can be
    /// reloaded or unloaded again.
    ///
    /// It waits for the bus twice ([`Bus::flush`]): on a current-thread
    /// tokio runtime it works while no async handler runs on such a runtime,
    /// and returns [`PluginError::WouldBlock`] while one does (use
    /// `reload_async`).
    ///
    /// # Errors
    ///
    /// [`PluginError::NotLoaded`], [`PluginError::NotReloadable`],
    /// [`PluginError::Busy`], [`PluginError::InHandler`],
    /// [`PluginError::NeedsAsync`], [`PluginError::WouldBlock`],
    /// [`PluginError::NameMismatch`], or [`PluginError::Setup`] (the old
    /// instance is still loaded).
    pub fn reload(&self, name: &str) -> Result<(), PluginError> {
        if !self.host.bus.can_wait_here() {
            return Err(PluginError::WouldBlock);
        }
        let r = self.begin_reload(name, false)?;
        let ctx = self.fresh_context(name, &r);
        let mut fresh = self.build_fresh(name, &r)?;
        if let Err(reason) = fresh.run_sync(&ctx, true) {
            ctx.unsubscribe_all(&self.host.bus);
            // Calls of the new instance that ran have claimed; the old
            // instance skipped those events, which were handled once.
            self.host.bus.flush();
            self.end_reload(name, &r, false);
            return Err(PluginError::Setup { name: name.to_owned(), reason });
        }
        let version = fresh.version_guarded();
        // Every event published before the new instance subscribed reaches
        // the old one (or, if the new one saw it too, one of them).
        self.host.bus.flush();
        let mut old = self.swap_in(name, fresh, version, ctx, &r);
        old.ctx.unsubscribe_all(&self.host.bus);
        if let Err(reason) = old.plugin.run_sync(&old.ctx, false) {
            tracing::warn!(plugin = name, %reason, "the replaced instance's teardown failed");
        }
        old.ctx.unsubscribe_all(&self.host.bus);
        drop(old);
        // Calls the new instance was dispatched while the old one was still
        // subscribed may still need the claims: let them end first.
        self.host.bus.flush();
        self.end_reload(name, &r, true);
        Ok(())
    }

    /// The counters: loads, unloads, reloads and their time, hand-over
    /// claims.
    pub fn stats(&self) -> HostStats {
        let c = &self.host.counters;
        let loaded =
            self.host.plugins.lock().values().filter(|s| matches!(s, Slot::Loaded(_))).count();
        HostStats {
            loaded: loaded as u64,
            loads: c.loads.load(Relaxed),
            unloads: c.unloads.load(Relaxed),
            reloads: c.reloads.load(Relaxed),
            failed_reloads: c.failed_reloads.load(Relaxed),
            reload_time: std::time::Duration::from_nanos(c.reload_nanos.load(Relaxed)),
            last_reload_time: std::time::Duration::from_nanos(c.last_reload_nanos.load(Relaxed)),
            handover_claims: c.claims_won.load(Relaxed),
            handover_skips: c.claims_refused.load(Relaxed),
        }
    }

    /// The loaded plugins, by name.
    pub fn list(&self) -> Vec<PluginInfo> {
        let plugins = self.host.plugins.lock();
        plugins
            .iter()
            .filter_map(|(name, slot)| match slot {
                Slot::Loaded(l) => Some((name, l)),
                _ => None,
            })
            .map(|(name, l)| {
                let subs = l.ctx.subscriptions();
                let live = self.host.bus.subscriptions(Target::Plugin(name));
                PluginInfo {
                    name: name.clone(),
                    version: l.version.clone(),
                    state: l.state,
                    handler_errors: live
                        .iter()
                        .filter(|info| subs.iter().any(|(id, _)| *id == info.id))
                        .map(|info| info.stats.errors)
                        .sum(),
                    subscriptions: subs.into_iter().map(|(_, p)| p).collect(),
                    published: l.ctx.inner.handover.published.load(Relaxed),
                    reloadable: l.factory.is_some(),
                }
            })
            .collect()
    }

    /// Unloads every plugin (errors are logged), then shuts the bus down.
    /// An async plugin's (`AsyncPlugin`, feature `tokio`) subscriptions are
    /// removed but its async `teardown` is not run (that needs
    /// `shutdown_async`).
    ///
    /// # Panics
    ///
    /// As [`Bus::shutdown`]: on a current-thread tokio runtime that runs
    /// async handlers, use `shutdown_async`.
    pub fn shutdown(&self) {
        if !self.host.bus.can_wait_here() {
            self.host.bus.shutdown(); // closes the bus, and panics saying why
        }
        let names: Vec<String> = self.host.plugins.lock().keys().cloned().collect();
        for name in names {
            match self.unload(&name) {
                Err(PluginError::NeedsAsync { .. }) => {
                    if let Ok(loaded) = self.take_for_unload(&name, true) {
                        loaded.ctx.unsubscribe_all(&self.host.bus);
                        self.host.plugins.lock().remove(&name);
                        tracing::warn!(plugin = %name, "shutdown: an async plugin's teardown was not run");
                    }
                }
                Err(e) => tracing::warn!(plugin = %name, error = %e, "unloading at shutdown"),
                Ok(()) => {}
            }
        }
        self.host.bus.shutdown();
    }
}

/// Builds an instance with `factory`, checking it is named as registered;
/// a panicking factory is an error, not an unwind through the manager.
/// An instance from `factory`; for a reload (`name` given), one of that
/// name.
fn build(
    name: Option<&str>,
    factory: &(dyn Fn() -> Instance + Send + Sync),
) -> Result<Instance, PluginError> {
    let plugin = match catch_unwind(AssertUnwindSafe(factory)) {
        Ok(plugin) => plugin,
        Err(panic) => {
            let reason = format!("the factory panicked: {}", panic_message(panic));
            let name = name.unwrap_or("(unnamed: its factory panicked)").to_owned();
            return Err(PluginError::Setup { name, reason });
        }
    };
    let Some(name) = name else { return Ok(plugin) };
    if plugin.name() == name {
        Ok(plugin)
    } else {
        Err(PluginError::NameMismatch {
            registered: name.to_owned(),
            instance: plugin.name().to_owned(),
        })
    }
}

#[cfg(feature = "tokio")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
impl PluginManager {
    /// Removes an instance's subscriptions on tokio's blocking pool, so no
    /// runtime thread waits. Called from a handler of this bus, the
    /// blocking step runs in that handler's context: its wait excuses the
    /// call it is part of (a plugin unloading itself) and registers in the
    /// wait-for graph (plugins unloading each other), as it would on the
    /// handler's own thread.
    async fn unsubscribe_all_async(&self, ctx: PluginContext) -> PluginContext {
        let bus = self.host.bus.clone();
        self.host
            .bus
            .run_blocking(move || {
                ctx.unsubscribe_all(&bus);
                ctx
            })
            .await
    }

    /// [`register`](PluginManager::register) for an [`AsyncPlugin`].
    ///
    /// # Errors
    ///
    /// As [`register`](PluginManager::register).
    pub async fn register_async<P, F>(&self, factory: F) -> Result<(), PluginError>
    where
        P: AsyncPlugin,
        F: Fn() -> P + Send + Sync + 'static,
    {
        let factory: Factory = Arc::new(move || Instance::Async(Box::new(factory())));
        self.load_instance_async(build(None, &*factory)?, Some(factory)).await
    }

    /// [`load`](PluginManager::load) for an [`AsyncPlugin`].
    ///
    /// # Errors
    ///
    /// As [`load`](PluginManager::load).
    pub async fn load_async<P: AsyncPlugin>(&self, plugin: P) -> Result<(), PluginError> {
        self.load_instance_async(Instance::Async(Box::new(plugin)), None).await
    }

    async fn load_instance_async(
        &self,
        mut plugin: Instance,
        factory: Option<Factory>,
    ) -> Result<(), PluginError> {
        let name = plugin.name().to_owned();
        let ctx = self.reserve(&name)?;
        if let Err(reason) = plugin.run(&ctx, true).await {
            self.unsubscribe_all_async(ctx).await;
            self.settle_load(&name, None);
            return Err(PluginError::Setup { name, reason });
        }
        let version = plugin.version_guarded();
        self.settle_load(
            &name,
            Some(Loaded { plugin, version, ctx, factory, state: PluginState::Running }),
        );
        Ok(())
    }

    /// [`unload`](PluginManager::unload) for any plugin, without blocking a
    /// runtime thread; an [`AsyncPlugin`]'s `teardown` is awaited.
    ///
    /// # Errors
    ///
    /// As [`unload`](PluginManager::unload).
    pub async fn unload_async(&self, name: &str) -> Result<(), PluginError> {
        let Loaded { mut plugin, ctx, .. } = *self.take_for_unload(name, true)?;
        let ctx = self.unsubscribe_all_async(ctx).await;
        let torn = plugin.run(&ctx, false).await;
        // What teardown subscribed would outlive the plugin.
        let ctx = self.unsubscribe_all_async(ctx).await;
        self.host.plugins.lock().remove(name);
        self.host.counters.unloads.fetch_add(1, Relaxed);
        drop((plugin, ctx));
        torn.map_err(|reason| PluginManager::teardown_failed(name, reason))
    }

    /// [`reload`](PluginManager::reload) for any plugin, without blocking a
    /// runtime thread; an [`AsyncPlugin`]'s `setup` and `teardown` are
    /// awaited. Same guarantees.
    ///
    /// # Errors
    ///
    /// As [`reload`](PluginManager::reload).
    pub async fn reload_async(&self, name: &str) -> Result<(), PluginError> {
        let r = self.begin_reload(name, true)?;
        let ctx = self.fresh_context(name, &r);
        let mut fresh = self.build_fresh(name, &r)?;
        if let Err(reason) = fresh.run(&ctx, true).await {
            self.unsubscribe_all_async(ctx).await;
            self.host.bus.flush_async().await;
            self.end_reload(name, &r, false);
            return Err(PluginError::Setup { name: name.to_owned(), reason });
        }
        let version = fresh.version_guarded();
        self.host.bus.flush_async().await;
        let Loaded { plugin: mut old, ctx: old_ctx, .. } =
            *self.swap_in(name, fresh, version, ctx, &r);
        let old_ctx = self.unsubscribe_all_async(old_ctx).await;
        if let Err(reason) = old.run(&old_ctx, false).await {
            tracing::warn!(plugin = name, %reason, "the replaced instance's teardown failed");
        }
        let old_ctx = self.unsubscribe_all_async(old_ctx).await;
        drop((old, old_ctx));
        self.host.bus.flush_async().await;
        self.end_reload(name, &r, true);
        Ok(())
    }

    /// [`shutdown`](PluginManager::shutdown) without blocking a runtime
    /// thread, awaiting every plugin's teardown.
    pub async fn shutdown_async(&self) {
        let names: Vec<String> = self.host.plugins.lock().keys().cloned().collect();
        for name in names {
            if let Err(e) = self.unload_async(&name).await {
                tracing::warn!(plugin = %name, error = %e, "unloading at shutdown");
            }
        }
        self.host.bus.shutdown_async().await;
    }
}

/// Drops a caught panic's payload; a payload whose own `Drop` panics is
/// leaked rather than allowed to unwind further.
fn discard_panic(payload: Box<dyn std::any::Any + Send>) {
    if let Err(again) = catch_unwind(AssertUnwindSafe(move || drop(payload))) {
        std::mem::forget(again);
    }
}

/// A future whose panics, in any poll, are caught and returned.
#[cfg(feature = "tokio")]
struct CatchUnwind<F>(F);

#[cfg(feature = "tokio")]
impl<F: std::future::Future + Unpin> std::future::Future for CatchUnwind<F> {
    type Output = std::thread::Result<F::Output>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        use std::task::Poll;
        let this = self.get_mut();
        match catch_unwind(AssertUnwindSafe(|| std::pin::Pin::new(&mut this.0).poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(value)) => Poll::Ready(Ok(value)),
            Err(panic) => Poll::Ready(Err(panic)),
        }
    }
}
