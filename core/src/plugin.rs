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
//! Outside a reload, the wrapper costs one relaxed load per call.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::builder::BusBuilder;
use crate::bus::Bus;
use crate::error::{BuildError, HandlerPanic, PublishError, SubscribeError};
use crate::event::{Event, EventId, Priority};
use crate::subscription::{HandlerResult, SubscribeOptions, SubscriptionId};

/// A plugin: a named piece of a bot that subscribes to events and publishes
/// others, through its [`PluginContext`].
///
/// # Examples
///
/// ```
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use std::sync::Arc;
/// use switchboard::plugin::{Plugin, PluginContext, PluginError, PluginManager};
/// use switchboard::Bus;
///
/// #[derive(Default)]
/// struct Greeter { greeted: Arc<AtomicU64> }
///
/// impl Plugin for Greeter {
///     fn name(&self) -> &str { "greeter" }
///     fn setup(&mut self, ctx: &PluginContext) -> Result<(), PluginError> {
///         let greeted = self.greeted.clone();
///         ctx.subscribe("user.joined", move |event| {
///             greeted.fetch_add(1, Ordering::Relaxed);
///             let bus = Bus::current().expect("inside a handler");
///             bus.publish(switchboard::Event::new("greeter.said", event.data().clone(), "greeter"))?;
///             Ok(())
///         })?;
///         Ok(())
///     }
/// }
///
/// let manager = PluginManager::new(Bus::new()?);
/// manager.register("greeter", Greeter::default)?;
/// manager.bus().publish(switchboard::Event::new("user.joined", serde_json::json!("ada"), "chat"))?;
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
    /// The factory built a plugin whose `name()` is not the registered name.
    NameMismatch {
        /// The registered name.
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
    /// A subscription was refused.
    Subscribe(SubscribeError),
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
                write!(
                    f,
                    "the factory registered as {registered:?} built a plugin named {instance:?}"
                )
            }
            PluginError::Busy { name } => {
                write!(f, "plugin {name:?} is being loaded, unloaded or reloaded")
            }
            PluginError::InHandler => f.write_str("reload cannot be called from inside a handler"),
            PluginError::Setup { name, reason } => {
                write!(f, "plugin {name:?} failed to set up: {reason}")
            }
            PluginError::Teardown { name, reason } => {
                write!(f, "plugin {name:?} failed to tear down: {reason}")
            }
            PluginError::Subscribe(e) => write!(f, "subscription refused: {e}"),
            PluginError::Other(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for PluginError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PluginError::Subscribe(e) => Some(e),
            _ => None,
        }
    }
}

impl From<SubscribeError> for PluginError {
    fn from(e: SubscribeError) -> PluginError {
        PluginError::Subscribe(e)
    }
}

/// The claims of a reload in progress, shared by the old and new instances.
#[derive(Debug, Default)]
struct Handover {
    active: std::sync::atomic::AtomicBool,
    claims: Mutex<HashSet<(EventId, Arc<str>)>>,
}

impl Handover {
    /// Whether this call of `role` for `event` should run.
    #[inline]
    fn admits(&self, event: &Event, role: &Arc<str>) -> bool {
        use std::sync::atomic::Ordering;
        // A reload sets `active` before the new instance subscribes, and a
        // call that may race the new instance reached its worker through
        // that subscribe's snapshot swap, so it sees `active` set.
        if !self.active.load(Ordering::Acquire) {
            return true;
        }
        self.claims.lock().insert((event.id(), role.clone()))
    }
}

/// What a plugin subscribes and publishes through: its name goes with every
/// subscription (as the subscriber) and every event (as the source), and its
/// subscriptions are remembered so that unloading removes them all.
pub struct PluginContext {
    bus: Bus,
    name: Arc<str>,
    subs: Mutex<Vec<(SubscriptionId, String)>>,
    handover: Arc<Handover>,
}

impl fmt::Debug for PluginContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PluginContext").field("name", &self.name).finish_non_exhaustive()
    }
}

impl PluginContext {
    fn new(bus: Bus, name: Arc<str>, handover: Arc<Handover>) -> PluginContext {
        PluginContext { bus, name, subs: Mutex::new(Vec::new()), handover }
    }

    /// The plugin's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bus, for everything the context does not wrap. Do not keep it in
    /// a handler (that keeps the bus alive); use
    /// [`Bus::current`] there.
    pub fn bus(&self) -> &Bus {
        &self.bus
    }

    /// The role of the next subscription to `pattern`: the pattern and its
    /// ordinal among this instance's subscriptions to it.
    fn role(&self, pattern: &str) -> Arc<str> {
        let n = self.subs.lock().iter().filter(|(_, p)| p == pattern).count();
        Arc::from(format!("{pattern}#{n}"))
    }

    fn remember(&self, id: SubscriptionId, pattern: &str) -> SubscriptionId {
        self.subs.lock().push((id, pattern.to_owned()));
        id
    }

    /// Subscribes `handler` to `pattern` on behalf of the plugin.
    ///
    /// # Errors
    ///
    /// As [`Bus::subscribe`].
    pub fn subscribe<F>(&self, pattern: &str, handler: F) -> Result<SubscriptionId, SubscribeError>
    where
        F: Fn(&Event) -> HandlerResult + Send + Sync + 'static,
    {
        self.subscribe_with(pattern, SubscribeOptions::new(), handler)
    }

    /// [`subscribe`](PluginContext::subscribe) with options.
    ///
    /// # Errors
    ///
    /// As [`Bus::subscribe`].
    pub fn subscribe_with<F>(
        &self,
        pattern: &str,
        options: SubscribeOptions,
        handler: F,
    ) -> Result<SubscriptionId, SubscribeError>
    where
        F: Fn(&Event) -> HandlerResult + Send + Sync + 'static,
    {
        let (handover, role) = (self.handover.clone(), self.role(pattern));
        let id = self.bus.subscribe_with(pattern, &self.name, options, move |event: &Event| {
            if handover.admits(event, &role) {
                handler(event)
            } else {
                Ok(())
            }
        })?;
        Ok(self.remember(id, pattern))
    }

    /// Subscribes `handler` after replaying up to `n` of the latest
    /// matching events from history to it (see [`Bus::subscribe_replay`]):
    /// a late joiner catches up with no gap and no duplicate at the seam.
    ///
    /// # Errors
    ///
    /// As [`Bus::subscribe`].
    pub fn subscribe_replay<F>(
        &self,
        pattern: &str,
        n: usize,
        handler: F,
    ) -> Result<SubscriptionId, SubscribeError>
    where
        F: Fn(&Event) -> HandlerResult + Send + Sync + 'static,
    {
        let (handover, role) = (self.handover.clone(), self.role(pattern));
        let id = self.bus.subscribe_replay(pattern, &self.name, n, move |event: &Event| {
            if handover.admits(event, &role) {
                handler(event)
            } else {
                Ok(())
            }
        })?;
        Ok(self.remember(id, pattern))
    }

    /// Subscribes a handler that receives the payload as a `T` (see
    /// [`Bus::subscribe_typed`]).
    ///
    /// # Errors
    ///
    /// As [`Bus::subscribe`].
    pub fn subscribe_typed<T, F>(
        &self,
        pattern: &str,
        handler: F,
    ) -> Result<SubscriptionId, SubscribeError>
    where
        T: DeserializeOwned + Send + Sync + 'static,
        F: Fn(&Event, &T) -> HandlerResult + Send + Sync + 'static,
    {
        let (handover, role) = (self.handover.clone(), self.role(pattern));
        let id = self.bus.subscribe_typed_with(
            pattern,
            &self.name,
            SubscribeOptions::new(),
            move |event: &Event, value: &T| {
                if handover.admits(event, &role) {
                    handler(event, value)
                } else {
                    Ok(())
                }
            },
        )?;
        Ok(self.remember(id, pattern))
    }

    /// Subscribes an async handler (see [`Bus::subscribe_async`]).
    ///
    /// # Errors
    ///
    /// As [`Bus::subscribe_async`].
    #[cfg(feature = "tokio")]
    pub fn subscribe_async<F, Fut>(
        &self,
        pattern: &str,
        handler: F,
    ) -> Result<SubscriptionId, SubscribeError>
    where
        F: Fn(Arc<Event>) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = HandlerResult> + Send + 'static,
    {
        self.subscribe_async_with(pattern, SubscribeOptions::new(), handler)
    }

    /// [`subscribe_async`](PluginContext::subscribe_async) with options.
    ///
    /// # Errors
    ///
    /// As [`Bus::subscribe_async`].
    #[cfg(feature = "tokio")]
    pub fn subscribe_async_with<F, Fut>(
        &self,
        pattern: &str,
        options: SubscribeOptions,
        handler: F,
    ) -> Result<SubscriptionId, SubscribeError>
    where
        F: Fn(Arc<Event>) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = HandlerResult> + Send + 'static,
    {
        let (handover, role) = (self.handover.clone(), self.role(pattern));
        let handler = Arc::new(handler);
        let id = self.bus.subscribe_async_with(
            pattern,
            &self.name,
            options,
            move |event: Arc<Event>| {
                let run = handover.admits(&event, &role).then(|| handler(event));
                async move {
                    match run {
                        Some(future) => future.await,
                        None => Ok(()),
                    }
                }
            },
        )?;
        Ok(self.remember(id, pattern))
    }

    /// Publishes `name` with JSON `data`, from this plugin.
    ///
    /// # Errors
    ///
    /// As [`Bus::publish`].
    pub fn publish(&self, name: &str, data: Value) -> Result<EventId, PublishError> {
        self.bus.publish(Event::new(name, data, &*self.name))
    }

    /// [`publish`](PluginContext::publish) at `priority`.
    ///
    /// # Errors
    ///
    /// As [`Bus::publish`].
    pub fn publish_with(
        &self,
        name: &str,
        data: Value,
        priority: Priority,
    ) -> Result<EventId, PublishError> {
        self.bus.publish(Event::new(name, data, &*self.name).with_priority(priority))
    }

    /// Publishes `name` carrying `value` as a typed payload (see
    /// [`Event::typed`]), from this plugin.
    ///
    /// # Errors
    ///
    /// As [`Bus::publish`].
    pub fn publish_typed<T>(&self, name: &str, value: T) -> Result<EventId, PublishError>
    where
        T: Serialize + std::any::Any + Send + Sync,
    {
        self.bus.publish(Event::typed(name, value, &*self.name))
    }

    /// Publishes `event` with this plugin as its source.
    ///
    /// # Errors
    ///
    /// As [`Bus::publish`].
    pub fn publish_event(&self, event: Event) -> Result<EventId, PublishError> {
        self.bus.publish(event.with_source(&*self.name))
    }

    /// The instance's subscriptions, in subscription order.
    fn subscriptions(&self) -> Vec<(SubscriptionId, String)> {
        self.subs.lock().clone()
    }

    /// Removes every subscription of this instance, waiting for running
    /// calls (its own excepted, when called from one of its handlers).
    fn unsubscribe_all(&self) {
        for (id, _) in std::mem::take(&mut *self.subs.lock()) {
            self.bus.unsubscribe_id_and_wait(id);
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
    /// Whether it was registered with a factory (and so can be reloaded).
    pub reloadable: bool,
}

type Factory = Arc<dyn Fn() -> Box<dyn Plugin> + Send + Sync>;

struct Loaded {
    plugin: Box<dyn Plugin>,
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

/// Runs user code (setup, teardown), turning a panic into an error message.
fn guarded(f: impl FnOnce() -> Result<(), PluginError>) -> Result<(), String> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(panic) => {
            let message = HandlerPanic::new(&*panic).to_string();
            crate::worker::discard_panic(panic);
            Err(message)
        }
    }
}

impl PluginManager {
    /// A manager owning `bus`.
    pub fn new(bus: Bus) -> PluginManager {
        PluginManager { host: Arc::new(Host { bus, plugins: Mutex::new(BTreeMap::new()) }) }
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

    /// Registers `factory` under `name` and loads an instance of it.
    /// [`reload`](PluginManager::reload) builds its new instances with it.
    ///
    /// # Errors
    ///
    /// As [`load`](PluginManager::load), and
    /// [`PluginError::NameMismatch`] when the instance is not named `name`.
    pub fn register<P, F>(&self, name: &str, factory: F) -> Result<(), PluginError>
    where
        P: Plugin,
        F: Fn() -> P + Send + Sync + 'static,
    {
        let factory: Factory = Arc::new(move || Box::new(factory()) as Box<dyn Plugin>);
        let plugin = factory();
        if plugin.name() != name {
            return Err(PluginError::NameMismatch {
                registered: name.to_owned(),
                instance: plugin.name().to_owned(),
            });
        }
        self.load_boxed(plugin, Some(factory))
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
        self.load_boxed(Box::new(plugin), None)
    }

    fn load_boxed(
        &self,
        mut plugin: Box<dyn Plugin>,
        factory: Option<Factory>,
    ) -> Result<(), PluginError> {
        let name = plugin.name().to_owned();
        {
            let mut plugins = self.host.plugins.lock();
            if plugins.contains_key(&name) {
                return Err(PluginError::AlreadyLoaded { name });
            }
            plugins.insert(name.clone(), Slot::Loading);
        }
        let ctx =
            PluginContext::new(self.host.bus.clone(), Arc::from(name.as_str()), Arc::default());
        if let Err(reason) = guarded(|| plugin.setup(&ctx)) {
            ctx.unsubscribe_all();
            self.host.plugins.lock().remove(&name);
            return Err(PluginError::Setup { name, reason });
        }
        let loaded = Loaded { plugin, ctx, factory, state: PluginState::Running };
        self.host.plugins.lock().insert(name, Slot::Loaded(Box::new(loaded)));
        Ok(())
    }

    /// Unloads `name`: removes every subscription it made, waits for their
    /// running calls (but its own, when a plugin unloads itself from its
    /// handler), drops its handlers, and calls `teardown`.
    ///
    /// # Errors
    ///
    /// [`PluginError::NotLoaded`], [`PluginError::Busy`], or
    /// [`PluginError::Teardown`] when `teardown` failed or panicked (the
    /// plugin is unloaded all the same).
    pub fn unload(&self, name: &str) -> Result<(), PluginError> {
        let mut loaded = {
            let mut plugins = self.host.plugins.lock();
            match plugins.get(name) {
                None => return Err(PluginError::NotLoaded { name: name.to_owned() }),
                Some(Slot::Loaded(l)) if l.state == PluginState::Running => {}
                Some(_) => return Err(PluginError::Busy { name: name.to_owned() }),
            }
            match plugins.insert(name.to_owned(), Slot::Unloading) {
                Some(Slot::Loaded(loaded)) => loaded,
                _ => unreachable!("checked above under the same lock"),
            }
        };
        loaded.ctx.unsubscribe_all();
        let torn = guarded(|| loaded.plugin.teardown(&loaded.ctx));
        self.host.plugins.lock().remove(name);
        drop(loaded);
        torn.map_err(|reason| {
            tracing::warn!(plugin = name, %reason, "teardown failed; the plugin is unloaded all the same");
            PluginError::Teardown { name: name.to_owned(), reason }
        })
    }

    /// Replaces `name` with a fresh instance from its factory, losing and
    /// duplicating no event (see the module documentation). If the new
    /// instance's `setup` fails, the old instance keeps running.
    ///
    /// # Errors
    ///
    /// [`PluginError::NotLoaded`], [`PluginError::NotReloadable`],
    /// [`PluginError::Busy`], [`PluginError::InHandler`], or
    /// [`PluginError::Setup`] (the old instance is still loaded).
    pub fn reload(&self, name: &str) -> Result<(), PluginError> {
        use std::sync::atomic::Ordering;
        if crate::worker::in_handler_of(self.host.bus.shared_id()) {
            return Err(PluginError::InHandler);
        }
        let (factory, handover) = {
            let mut plugins = self.host.plugins.lock();
            let loaded = match plugins.get_mut(name) {
                Some(Slot::Loaded(l)) => l,
                Some(_) => return Err(PluginError::Busy { name: name.to_owned() }),
                None => return Err(PluginError::NotLoaded { name: name.to_owned() }),
            };
            if loaded.state != PluginState::Running {
                return Err(PluginError::Busy { name: name.to_owned() });
            }
            let Some(factory) = loaded.factory.clone() else {
                return Err(PluginError::NotReloadable { name: name.to_owned() });
            };
            loaded.state = PluginState::Reloading;
            (factory, loaded.ctx.handover.clone())
        };
        // From here the old instance's calls claim, so that whatever the new
        // one is called for as well runs once.
        handover.active.store(true, Ordering::SeqCst);
        let finish = |plugins: &mut BTreeMap<String, Slot>| {
            handover.active.store(false, Ordering::SeqCst);
            handover.claims.lock().clear();
            if let Some(Slot::Loaded(l)) = plugins.get_mut(name) {
                l.state = PluginState::Running;
            }
        };
        let mut fresh = factory();
        let ctx = PluginContext::new(self.host.bus.clone(), Arc::from(name), handover.clone());
        let set_up = if fresh.name() == name {
            guarded(|| fresh.setup(&ctx))
        } else {
            Err(format!("the factory built a plugin named {:?}", fresh.name()))
        };
        if let Err(reason) = set_up {
            ctx.unsubscribe_all();
            // Calls of the new instance that ran have claimed; the old
            // instance skipped those events, which were handled once.
            self.host.bus.flush();
            finish(&mut self.host.plugins.lock());
            return Err(PluginError::Setup { name: name.to_owned(), reason });
        }
        // Every event published before the new instance subscribed reaches
        // the old one (or, if the new one saw it too, one of them).
        self.host.bus.flush();
        let mut old = {
            let mut plugins = self.host.plugins.lock();
            let Some(Slot::Loaded(old)) = plugins.remove(name) else {
                unreachable!("a reloading plugin stays in its slot")
            };
            plugins.insert(
                name.to_owned(),
                Slot::Loaded(Box::new(Loaded {
                    plugin: fresh,
                    ctx,
                    factory: Some(factory.clone()),
                    state: PluginState::Reloading,
                })),
            );
            old
        };
        old.ctx.unsubscribe_all();
        if let Err(reason) = guarded(|| old.plugin.teardown(&old.ctx)) {
            tracing::warn!(plugin = name, %reason, "the replaced instance's teardown failed");
        }
        drop(old);
        // Calls the new instance was dispatched while the old one was still
        // subscribed may still need the claims: let them end first.
        self.host.bus.flush();
        finish(&mut self.host.plugins.lock());
        Ok(())
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
                PluginInfo {
                    name: name.clone(),
                    version: l.plugin.version().to_owned(),
                    state: l.state,
                    handler_errors: subs
                        .iter()
                        .filter_map(|(id, _)| self.host.bus.subscription_errors(*id))
                        .sum(),
                    subscriptions: subs.into_iter().map(|(_, p)| p).collect(),
                    reloadable: l.factory.is_some(),
                }
            })
            .collect()
    }

    /// Unloads every plugin (errors are logged), then shuts the bus down.
    pub fn shutdown(&self) {
        let names: Vec<String> = self.host.plugins.lock().keys().cloned().collect();
        for name in names {
            if let Err(e) = self.unload(&name) {
                tracing::warn!(plugin = %name, error = %e, "unloading at shutdown");
            }
        }
        self.host.bus.shutdown();
    }
}
