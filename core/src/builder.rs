//! Configuring and starting a bus.

use std::fmt;
use std::sync::Arc;

use crate::bus::Bus;
use crate::config::{Config, ErrorHook};
use crate::dispatch;
use crate::error::BuildError;
use crate::event::Event;
use crate::loom::spawn;
use crate::queue::Overflow;
use crate::shared::Shared;

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
                priority_reserve: None,
                batch_size: 32,
                history_size: 100,
                max_depth: 16,
                overflow: Overflow::Block,
                starvation_limit: 8,
                name: "switchboard".to_owned(),
                drain_timeout: std::time::Duration::from_secs(30),
                trace_dispatch: false,
                #[cfg(feature = "tokio")]
                runtime: None,
                observer: crate::config::ObserverSlot::default(),
            },
            error_hook: None,
        }
    }
}

impl BusBuilder {
    /// The most worker threads a bus takes.
    pub const MAX_WORKERS: usize = 1024;
    /// The largest queue capacity: each priority's queue is allocated up
    /// front to hold twice the capacity (room for handlers' overshoot), so
    /// this is about 600 MiB of queue slots.
    pub const MAX_CAPACITY: usize = 1 << 22;
    /// The largest history: each slot is allocated up front (a cache line
    /// and a lock), so this is about 128 MiB.
    pub const MAX_HISTORY: usize = 1 << 20;
    /// The largest batch a worker takes (its buffer is allocated up front).
    pub const MAX_BATCH: usize = 1 << 16;

    /// Worker threads that dispatch events. Default 2; at most
    /// [`MAX_WORKERS`](BusBuilder::MAX_WORKERS).
    ///
    /// Sizing: inline handlers run on the workers, so count how many
    /// handler calls per second the bot needs and how long an inline call
    /// takes, and leave the publishing threads their cores; one or two
    /// workers per core that is free for dispatch. A handler that blocks
    /// (sleeps, waits on I/O, takes more than a few hundred microseconds)
    /// should not run inline: subscribe it with
    /// [`SubscribeOptions::blocking`](crate::SubscribeOptions::blocking)
    /// (threads of its own) or as an async handler, so it never holds a
    /// worker and the pool can stay at the core count.
    pub fn workers(mut self, n: usize) -> BusBuilder {
        self.config.workers = n;
        self
    }

    /// How many events may wait in the queues, all priorities together.
    /// Default 65,536; at most [`MAX_CAPACITY`](BusBuilder::MAX_CAPACITY). `High` events may fill all of it; `Normal` and `Low`
    /// stop short of it (see [`priority_reserve`](BusBuilder::priority_reserve)).
    /// Handlers may publish past it by as many again (see
    /// [`Bus::publish`]); each priority's queue is allocated to hold that
    /// much.
    pub fn capacity(mut self, n: usize) -> BusBuilder {
        self.config.capacity = n;
        self
    }

    /// Room in the capacity kept for higher priorities, so that a flood of
    /// lower-priority events never makes a higher-priority publisher wait
    /// (under [`Overflow::Block`]) or fail (under [`Overflow::Error`]):
    /// `Low` events fill the queues up to `capacity - 2 * n`, `Normal` up to
    /// `capacity - n`, `High` all of it. Default a sixteenth of the
    /// capacity (4,096 of 65,536; 0 below 16). `0` turns it off: every
    /// priority competes for the whole capacity.
    pub fn priority_reserve(mut self, n: usize) -> BusBuilder {
        self.config.priority_reserve = Some(n);
        self
    }

    /// The most events a worker takes from one queue in one look. Default
    /// 32. A `High` event waits behind at most one batch per worker.
    pub fn batch_size(mut self, n: usize) -> BusBuilder {
        self.config.batch_size = n;
        self
    }

    /// How many recent events [`Bus::history`] keeps. Default 100; 0 turns
    /// history off; at most [`MAX_HISTORY`](BusBuilder::MAX_HISTORY).
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

    /// How long shutdown waits for blocking and async handlers to work
    /// through their backlogs once the queues are drained. Default 30 s;
    /// past it their remaining events are dropped (and the handlers are
    /// dropped when their running calls end).
    pub fn drain_timeout(mut self, timeout: std::time::Duration) -> BusBuilder {
        self.config.drain_timeout = timeout;
        self
    }

    /// Runs each handler call inside a `tracing` span, `dispatch` (level
    /// `INFO`; fields `event`, `sequence`, `plugin`, `pattern`, `parent.id`,
    /// `parent.sequence`), whose parent is the span that was current where
    /// the event was published. A handler publishes inside its own call's
    /// span, so a trace shows which event's handling caused which: the
    /// dispatch span of a chat line's handler is the parent of the dispatch
    /// spans of the trivia round it published. Default off: then it costs
    /// a branch per publish and per call, no more.
    ///
    /// A call that a filter turns down has its span too (a reload's
    /// hand-over, a replay buffering a live event it calls later, in a span
    /// of its own).
    ///
    /// On, each published event holds a clone of its publisher's span for
    /// as long as the event lives (in [history](BusBuilder::history_size)
    /// too), so a subscriber sees that span close only once its events are
    /// gone.
    ///
    /// # Examples
    ///
    /// ```
    /// use switchboard::{Bus, Event};
    ///
    /// let bus = Bus::builder().trace_dispatch(true).build()?;
    /// let span = tracing::info_span!("chat message", user = "ada");
    /// // Handlers of this event run in spans that are children of `span`.
    /// span.in_scope(|| bus.publish(Event::new("chat.line", serde_json::json!("hi"), "gateway")))?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn trace_dispatch(mut self, on: bool) -> BusBuilder {
        self.config.trace_dispatch = on;
        self
    }

    /// The tokio runtime async handlers run on. Default: the runtime
    /// current where an async handler ([`Handler::future`](crate::Handler::future)) subscribes.
    #[cfg(feature = "tokio")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
    pub fn runtime(mut self, handle: tokio::runtime::Handle) -> BusBuilder {
        self.config.runtime = Some(handle);
        self
    }

    /// The bus's name: the prefix of its worker threads' names, and what an
    /// [`Observer`](crate::Observer) hears it called (a metrics label).
    /// Default `switchboard`.
    pub fn name(mut self, name: impl Into<String>) -> BusBuilder {
        self.config.name = name.into();
        self
    }

    /// Observes the bus: each subscription's calls are counted
    /// ([`SubscriptionStats::calls`](crate::SubscriptionStats::calls)) and
    /// one call in [`Observer::sample_every`](crate::Observer::sample_every)
    /// is timed and reported to the `observer` (see [`Observer`](crate::Observer)).
    /// Default: none, and then a handler call costs one branch more.
    pub fn observer(mut self, observer: std::sync::Arc<dyn crate::Observer>) -> BusBuilder {
        self.config.observer = crate::config::ObserverSlot(Some(observer));
        self
    }

    /// Called for every handler `Err` and panic, after it is counted and
    /// logged. A panicking hook is caught and logged. The hook is dropped
    /// when the bus shuts down, so a hook may hold a [`Bus`].
    pub fn error_hook<F>(mut self, hook: F) -> BusBuilder
    where
        F: Fn(&Event, &str, &(dyn std::error::Error + 'static)) + Send + Sync + 'static,
    {
        self.error_hook = Some(Box::new(hook));
        self
    }

    /// The configuration, for models that build a bus's parts without
    /// starting it.
    #[cfg(all(test, loom))]
    pub(crate) fn into_config(self) -> Config {
        self.config
    }

    /// Starts the workers.
    ///
    /// # Errors
    ///
    /// [`BuildError`] for zero workers, capacity or batch size, a size past
    /// its limit ([`BuildError::TooLarge`]), or when a thread cannot be
    /// started.
    pub fn build(self) -> Result<Bus, BuildError> {
        let config = self.config;
        for (what, value, max) in [
            ("workers", config.workers, BusBuilder::MAX_WORKERS),
            ("capacity", config.capacity, BusBuilder::MAX_CAPACITY),
            ("history_size", config.history_size, BusBuilder::MAX_HISTORY),
            ("batch_size", config.batch_size, BusBuilder::MAX_BATCH),
        ] {
            if value > max {
                return Err(BuildError::TooLarge { what, value, max });
            }
        }
        if config.workers == 0 {
            return Err(BuildError::ZeroWorkers);
        }
        if config.capacity == 0 {
            return Err(BuildError::ZeroCapacity);
        }
        if config.batch_size == 0 {
            return Err(BuildError::ZeroBatchSize);
        }
        if let Some(reserve) = config.priority_reserve {
            if reserve.saturating_mul(2) >= config.capacity {
                return Err(BuildError::ReserveTooLarge { reserve, capacity: config.capacity });
            }
        }
        let shared = Arc::new(Shared::new(config, self.error_hook));
        let workers = shared.config.workers;
        let mut handles = Vec::with_capacity(workers);
        for index in 0..workers {
            let worker_shared = shared.clone();
            let name = format!("{}-{index}", shared.config.name);
            match spawn(name, move || dispatch::run(worker_shared, index)) {
                Ok(handle) => handles.push(handle),
                Err(e) => {
                    // Stop the ones already started; the rest never ran.
                    shared.set_workers(handles);
                    shared.worker_exited(workers - index);
                    let _ = shared.shutdown(None);
                    return Err(BuildError::Spawn(e));
                }
            }
        }
        shared.set_workers(handles);
        Ok(Bus::from_shared(shared))
    }
}
