//! The public handle, [`Bus`]: one file per job below it (subscribe,
//! unsubscribe, publish, queries, flush and shutdown). Nothing below
//! `bus/` imports it; only the builder, which starts a bus, and this pair
//! point at each other.

mod lifecycle;
mod publish;
mod query;
mod subscribe;
mod unsubscribe;

use std::fmt;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use crate::builder::BusBuilder;
use crate::context::in_handler_of;
use crate::error::BuildError;
use crate::shared::{Handle, Shared};
use crate::stats::Stats;

pub use self::query::{HistoryQuery, SubscriptionInfo};
pub use self::subscribe::{Replayed, SubscriptionGuard};
pub use self::unsubscribe::{Target, Unsubscribed};

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
        let owner = crate::context::owner()?;
        let shared = owner.downcast_ref::<Shared>()?;
        let handle = shared.handle.get()?.upgrade()?;
        Some(Bus { handle })
    }

    pub(super) fn shared(&self) -> &Shared {
        &self.handle.shared
    }

    /// Whether `self` and `other` are handles of one bus.
    pub fn same_bus(&self, other: &Bus) -> bool {
        Arc::ptr_eq(&self.handle, &other.handle)
    }

    /// A number that tells this bus apart from every other one, in this
    /// process or any other (drawn at random when it was built). With an
    /// event's [`sequence`](crate::Event::sequence) it makes a key unique to one
    /// accepted publish, for de-duplicating across buses: a republished
    /// clone of an event is a new publish with a new key.
    pub fn instance(&self) -> u64 {
        self.shared().instance
    }

    /// Its name, as [`BusBuilder::name`](crate::BusBuilder::name) gave it.
    pub fn name(&self) -> &str {
        &self.shared().config.name
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
    /// returns [`PublishError::WouldBlock`](crate::PublishError::WouldBlock) instead of waiting, and
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
        let carried = crate::context::CarriedContext::capture(self.shared().id);
        crate::dispatch::tokio::on_blocking_pool(move || {
            let _scope = carried.map(crate::context::CarriedContext::enter);
            f()
        })
        .await
    }

    /// A handle that does not keep the bus alive.
    pub fn downgrade(&self) -> WeakBus {
        WeakBus { handle: Arc::downgrade(&self.handle) }
    }

    /// The bus's counters.
    pub fn stats(&self) -> Stats {
        let shared = self.shared();
        let mut stats = shared.counters.read();
        stats.queue_depth = shared.queues.depths().map(|d| d as u64);
        stats.subscriptions = shared.registry.lock().live as u64;
        stats
    }

    /// Whether [`shutdown`](Bus::shutdown) has been called.
    pub fn is_closed(&self) -> bool {
        self.shared().is_shut()
    }
}

/// `now + timeout`, or no deadline when that is past the end of time.
fn deadline(timeout: Duration) -> Option<Instant> {
    Instant::now().checked_add(timeout)
}
