//! Handlers: what a subscription calls, of one of three kinds.
//!
//! A [`Handler`] is built by the kind's constructor and handed to
//! [`Bus::subscribe`](crate::Bus::subscribe): the kind is a value, not a
//! method name, so every form of subscribe (scoped, replayed, with any
//! options) takes every kind.

use std::fmt;
use std::sync::Arc;

use serde::de::DeserializeOwned;

use crate::error::PayloadError;
use crate::event::{Event, Payload};

/// What a handler returns: `Err` is counted, logged and reported to the error
/// hook; it never stops the other handlers of the event.
pub type HandlerResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// A synchronous handler, as the bus stores it.
pub(crate) type SyncFn = Box<dyn Fn(&Event) -> HandlerResult + Send + Sync>;

/// The future an async handler's call returns, boxed.
#[cfg(feature = "tokio")]
pub(crate) type HandlerFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = HandlerResult> + Send>>;

/// An async handler, as the bus stores it.
#[cfg(feature = "tokio")]
pub(crate) type AsyncFn = dyn Fn(Arc<Event>) -> HandlerFuture + Send + Sync;

/// Which calls a [`Handler::filtered`] handler makes.
pub(crate) type Admit = Arc<dyn Fn(&Event) -> bool + Send + Sync>;

/// A subscription's handler: [`sync`](Handler::sync) (a closure of the
/// event), [`typed`](Handler::typed) (of the event and its payload as a
/// `T`) or, with the cargo feature `tokio`, `future` (an async closure run
/// as a task on a tokio runtime).
///
/// # Examples
///
/// ```
/// use serde::Deserialize;
/// use switchboard::{Bus, Event, Handler, SubscribeOptions};
///
/// #[derive(Deserialize)]
/// struct Added { id: u32 }
///
/// let bus = Bus::new()?;
/// bus.subscribe("trivia.*", Handler::sync(|event| {
///     println!("{}", event.name());
///     Ok(())
/// }), "stats")?;
/// bus.subscribe("quote.added", Handler::typed(|_event, added: &Added| {
///     assert_eq!(added.id, 7);
///     Ok(())
/// }), SubscribeOptions::new().plugin("search").ordered())?;
/// bus.publish(Event::new("quote.added", serde_json::json!({"id": 7}), "quotes"))?;
/// bus.flush();
/// assert_eq!(bus.stats().handler_errors, 0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Handler {
    pub(crate) kind: Kind,
    /// `Some` for a [`filtered`](Handler::filtered) handler.
    pub(crate) admit: Option<Admit>,
}

pub(crate) enum Kind {
    Sync(SyncFn),
    #[cfg(feature = "tokio")]
    Async(Arc<AsyncFn>),
}

impl Handler {
    /// A handler that is called with each event, on a dispatch worker (or,
    /// as the [options](crate::SubscribeOptions) say, on threads of its
    /// own).
    pub fn sync<F>(handler: F) -> Handler
    where
        F: Fn(&Event) -> HandlerResult + Send + Sync + 'static,
    {
        Handler { kind: Kind::Sync(Box::new(handler)), admit: None }
    }

    /// A handler that receives the payload as a `T`, as well as the event.
    ///
    /// An event built with [`Event::typed`] carrying a `T` is handed over as
    /// is; a JSON event is deserialised into a `T`. Any other payload makes
    /// the call fail with a [`PayloadError`], counted like any handler error.
    pub fn typed<T, F>(handler: F) -> Handler
    where
        T: DeserializeOwned + Send + Sync + 'static,
        F: Fn(&Event, &T) -> HandlerResult + Send + Sync + 'static,
    {
        let expected = std::any::type_name::<T>();
        Handler::sync(move |event: &Event| -> HandlerResult {
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
        })
    }

    /// An async handler: it gets the event and returns a future, run as a
    /// task on the bus's tokio runtime
    /// ([`BusBuilder::runtime`](crate::BusBuilder::runtime), else the one
    /// current where it subscribes). A dispatch worker only hands the event
    /// over; the handler never blocks one. Calls run one at a time unless
    /// [`concurrency`](crate::SubscribeOptions::concurrency) says more;
    /// errors, panics and [timeouts](crate::SubscribeOptions::timeout) are
    /// counted and reported like a sync handler's; `flush` waits for the
    /// calls.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// use switchboard::{Bus, Event, Handler};
    ///
    /// # let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    /// # runtime.block_on(async {
    /// let bus = Bus::new()?;
    /// let index = Handler::future(|event: Arc<Event>| async move {
    ///     tokio::task::yield_now().await; // index the quote...
    ///     let _ = event.data();
    ///     Ok(())
    /// });
    /// bus.subscribe("quote.added", index, "search")?;
    /// bus.publish_async(Event::new("quote.added", serde_json::json!({"id": 7}), "quotes")).await?;
    /// bus.flush_async().await; // the async call has finished
    /// assert_eq!(bus.stats().dispatched, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[cfg(feature = "tokio")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
    pub fn future<F, Fut>(handler: F) -> Handler
    where
        F: Fn(Arc<Event>) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = HandlerResult> + Send + 'static,
    {
        let work: Arc<AsyncFn> =
            Arc::new(move |event: Arc<Event>| -> HandlerFuture { Box::pin(handler(event)) });
        Handler { kind: Kind::Async(work), admit: None }
    }

    /// This handler, called only for the events `admit` returns `true` for.
    /// A refused event is no call: it is not counted in
    /// [`Stats::dispatched`](crate::Stats::dispatched). (The plugin host
    /// uses it for a reload's hand-over, where each event is handled by the
    /// old or the new instance, never both.) Filters compose: both must
    /// admit.
    pub fn filtered<P>(mut self, admit: P) -> Handler
    where
        P: Fn(&Event) -> bool + Send + Sync + 'static,
    {
        self.admit = Some(match self.admit.take() {
            None => Arc::new(admit),
            Some(first) => Arc::new(move |event: &Event| first(event) && admit(event)),
        });
        self
    }

    /// Whether it is an async handler.
    pub fn is_async(&self) -> bool {
        match self.kind {
            Kind::Sync(_) => false,
            #[cfg(feature = "tokio")]
            Kind::Async(_) => true,
        }
    }

    /// The handler with its filter applied, each refusal counted by
    /// `refused` (the bus's count of skipped calls).
    pub(crate) fn into_kind(self, refused: Arc<std::sync::atomic::AtomicU64>) -> Kind {
        use std::sync::atomic::Ordering::Relaxed;
        let Some(admit) = self.admit else { return self.kind };
        match self.kind {
            Kind::Sync(f) => Kind::Sync(Box::new(move |event: &Event| {
                if admit(event) {
                    f(event)
                } else {
                    // Relaxed: a statistic.
                    refused.fetch_add(1, Relaxed);
                    Ok(())
                }
            })),
            #[cfg(feature = "tokio")]
            Kind::Async(f) => Kind::Async(Arc::new(move |event: Arc<Event>| -> HandlerFuture {
                if admit(&event) {
                    f(event)
                } else {
                    refused.fetch_add(1, Relaxed);
                    Box::pin(std::future::ready(Ok(())))
                }
            })),
        }
    }
}

impl fmt::Debug for Handler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.is_async() { "async" } else { "sync" };
        f.debug_struct("Handler")
            .field("kind", &kind)
            .field("filtered", &self.admit.is_some())
            .finish()
    }
}
