//! Subscribing: checking the names and options, building the mailbox of a
//! subscription that does not run inline and starting its runner, adding
//! it to the registry and the snapshot; the scoped and replayed forms.

use std::fmt;
use std::sync::Arc;

use switchboard_matcher::Pattern;

use super::{Bus, WeakBus};
use crate::context::{parent_of, HandlerScope, Owner};
use crate::dispatch;
use crate::error::{NameError, SubscribeError};
use crate::event::Event;
use crate::handler::{Handler, HandlerResult, Kind};
use crate::loom::Ordering;
use crate::mailbox::{Mailbox, Runner, Work};
use crate::observe::Observed;
use crate::shared::Shared;
use crate::subscription::{SubscribeOptions, Subscription, SubscriptionId};

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
    /// [`Unsubscribed::wait`](crate::Unsubscribed::wait); `false` when it was no longer live.
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

impl Bus {
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
    /// `BusBuilder::runtime`, else the one
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
    /// replay wait for it (buffered; no worker waits), then are called on
    /// this thread too. (An inline subscription on a bus with more than one
    /// worker, whose calls run on many workers at once anyway, takes live
    /// calls again as soon as this thread has taken what was buffered, so a
    /// flood cannot keep it here; the others (one call at a time, in order,
    /// or inline on a one-worker bus, whose calls then come in publish
    /// order) drain the buffer first, and keep that order across the seam.)
    /// (On a bus without history there is nothing to replay.)
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
    /// [`SubscribeError::CannotReplay`](crate::SubscribeError::CannotReplay)
    /// for an async handler (a replay calls the handler on this thread,
    /// which async code cannot be).
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
                return Err(SubscribeError::CannotReplay {
                    reason: "an async handler's calls cannot run on the subscribing thread",
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
                    let bucket = parent_of(sh.id).map_or(0, |parent| parent.bucket);
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
        let trace = shared.config.trace_dispatch;
        let call = |event: &Event, bucket: usize| {
            let outcome = {
                let _scope = HandlerScope::enter(
                    shared.id,
                    || shared.clone() as Owner,
                    crate::reclaim::key(&sub),
                    event,
                    bucket,
                );
                let call = || {
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        crate::trace::call(trace, event, &sub.plugin, sub.pattern.as_str(), || {
                            handler(event)
                        })
                    }))
                };
                match &sub.observed {
                    None => call(),
                    Some(o) => o.call(event.timestamp(), call),
                }
            };
            dispatch::report(shared, &sub, event, outcome);
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
        // under the lock and called outside it. An inline subscription's
        // calls run on every worker at once anyway: on a bus with more than
        // one, its buffer ends with the first batch taken, so live calls
        // start at once and a flood cannot keep this thread draining for as
        // long as it lasts. The others (one call at a time, in order, or
        // inline with one worker, whose live calls come in publish order)
        // end it once it is found empty, so no live call overtakes a
        // buffered one.
        let inline = sub.mailbox.is_none() && shared.config.workers > 1;
        loop {
            let batch = {
                let mut replay = state.lock();
                match &mut replay.buffer {
                    Some(buffer) if !buffer.is_empty() && !inline => std::mem::take(buffer),
                    Some(buffer) if !buffer.is_empty() => {
                        let batch = std::mem::take(buffer);
                        replay.buffer = None;
                        batch
                    }
                    _ => {
                        replay.buffer = None;
                        break;
                    }
                }
            };
            for (event, bucket) in &batch {
                if event.sequence().is_none_or(|seq| seq >= seam) && sub.is_active() {
                    call(event, *bucket);
                }
                shared.epochs.end(*bucket, 1);
            }
            shared.drop_caught(batch);
            if inline {
                break;
            }
        }
        // The replay's clone of the handler goes before the waiters are
        // let go, so they return with the handler dropped.
        shared.drop_caught(handler);
        drop(in_progress);
        Ok(Replayed { id: sub.id, replayed: count, seam })
    }

    pub(super) fn add_subscription(
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
                    if let Err(reason) =
                        dispatch::threads::spawn(&self.handle.shared, &sub, threads)
                    {
                        drop(self.unsubscribe(sub.id));
                        return Err(SubscribeError::Spawn(reason));
                    }
                }
                Ok(sub)
            }
            #[cfg(feature = "tokio")]
            Kind::Async(work) => {
                use crate::mailbox::TokioRunner;
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
    pub(super) fn register(
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
        // Before the lock: the observer is user code, and may call the bus.
        let observed = shared.config.observer.0.as_ref().map(|observer| {
            let sink = observer.subscribed(&crate::observe::Subscribed {
                pattern,
                plugin,
                bus: &shared.config.name,
            });
            Observed::new(shared.config.workers, sink, observer.sample_every())
        });
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
        let sub = Arc::new(
            Subscription::new(
                id,
                compiled,
                plugin_name.clone(),
                options.priority,
                handler,
                mailbox,
            )
            .with_observed(observed),
        );
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
}
