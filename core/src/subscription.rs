//! Subscriptions: what a subscriber asked for, and the handler it owns.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use switchboard_matcher::Pattern;

use crate::event::{Event, Priority};
use crate::loom::{AtomicBool, AtomicU64, Ordering, UnsafeCell};

use crate::handler::{HandlerResult, SyncFn as Handler};

/// Identifies one subscription for the lifetime of its bus.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SubscriptionId(u64);

impl SubscriptionId {
    pub(crate) fn new(seq: u64) -> SubscriptionId {
        SubscriptionId(seq)
    }

    /// The id as a number (ids increase in subscription order).
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Display for SubscriptionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sub-{}", self.0)
    }
}

/// Everything a subscription is asked to be, but its pattern and handler:
/// the one options value of [`Bus::subscribe`](crate::Bus::subscribe) and
/// its scoped and replayed forms.
///
/// The subscriber's [`plugin`](SubscribeOptions::plugin) name is the one
/// option a bus subscription must have; a plugin name converts into the
/// options that hold only it, so `"stats"` may stand for
/// `SubscribeOptions::new().plugin("stats")`. (A plugin's context, in the
/// crate `switchboard-host`, fills it in itself.)
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use switchboard::{Priority, SubscribeOptions};
///
/// let validation_first = SubscribeOptions::new().plugin("checks").priority(Priority::High);
/// // One call at a time, in each publishing thread's order.
/// let audit_log = SubscribeOptions::new().plugin("audit").ordered();
/// // A slow handler on two threads of its own, 10,000 events of backlog.
/// let thumbnails = SubscribeOptions::from("thumbs").blocking().concurrency(2).backlog(10_000);
/// # let _ = (validation_first, audit_log, thumbnails, Duration::ZERO);
/// ```
#[derive(Clone, Debug)]
pub struct SubscribeOptions {
    /// `None` until given: a subscription on the bus itself needs one.
    pub(crate) plugin: Option<Arc<str>>,
    pub(crate) priority: Priority,
    pub(crate) ordered: bool,
    pub(crate) blocking: bool,
    pub(crate) concurrency: usize,
    pub(crate) timeout: Option<Duration>,
    pub(crate) backlog: usize,
    /// `None`: the bus's policy.
    pub(crate) overflow: Option<crate::Overflow>,
}

impl Default for SubscribeOptions {
    fn default() -> SubscribeOptions {
        SubscribeOptions {
            plugin: None,
            priority: Priority::Normal,
            ordered: false,
            blocking: false,
            concurrency: 1,
            timeout: None,
            backlog: SubscribeOptions::DEFAULT_BACKLOG,
            overflow: None,
        }
    }
}

impl SubscribeOptions {
    /// The default backlog of a subscription that does not run inline.
    pub const DEFAULT_BACKLOG: usize = 1024;

    /// The most calls of one subscription that may run at once
    /// ([`concurrency`](SubscribeOptions::concurrency)).
    pub const MAX_CONCURRENCY: usize = 1024;

    /// The defaults: no plugin name yet, [`Priority::Normal`], inline,
    /// unordered.
    pub fn new() -> SubscribeOptions {
        SubscribeOptions::default()
    }

    /// The subscriber: the plugin on whose behalf the handler is called, by
    /// which [`Target::Plugin`](crate::Target::Plugin) and
    /// [`Target::Pattern`](crate::Target::Pattern) find the subscription.
    /// Checked as event names are (not empty, at most
    /// [`MAX_NAME_LEN`](crate::MAX_NAME_LEN) bytes, no NUL).
    pub fn plugin(mut self, name: &str) -> SubscribeOptions {
        self.plugin = Some(Arc::from(name));
        self
    }

    /// The plugin name given, if any.
    pub fn plugin_name(&self) -> Option<&str> {
        self.plugin.as_deref()
    }

    /// Within one event, handlers run by subscription priority (`High`
    /// first), then in subscription order.
    pub fn priority(mut self, priority: Priority) -> SubscribeOptions {
        self.priority = priority;
        self
    }

    /// The handler never runs concurrently with itself, and sees the events
    /// of one publishing thread in that thread's publish order, whatever
    /// the number of workers. The publisher puts the event in the
    /// subscription's backlog itself; a worker (or, with
    /// [`blocking`](SubscribeOptions::blocking), its own thread; for an
    /// async handler, one task) takes them in order.
    ///
    /// Not ordered: events of different publishing threads (they come in
    /// the order the publishes happened to reach the backlog), and an
    /// ordered handler runs in no fixed order relative to other handlers
    /// of the same event.
    pub fn ordered(mut self) -> SubscribeOptions {
        self.ordered = true;
        self
    }

    /// Runs the handler on threads of its own ([`concurrency`] of them; one
    /// when [`ordered`]), never on a dispatch worker: for a handler that
    /// sleeps, waits on I/O or computes for long. Events wait in its
    /// [`backlog`]; when that is full, its [`overflow`] policy decides
    /// (by default the bus's: under `Block` outside publishers wait for
    /// room, and nothing is lost).
    ///
    /// [`overflow`]: SubscribeOptions::overflow
    ///
    /// [`concurrency`]: SubscribeOptions::concurrency
    /// [`ordered`]: SubscribeOptions::ordered
    /// [`backlog`]: SubscribeOptions::backlog
    pub fn blocking(mut self) -> SubscribeOptions {
        self.blocking = true;
        self
    }

    /// How many calls of a blocking or async subscription may run at once
    /// (default 1; at least 1, at most [`MAX_CONCURRENCY`](SubscribeOptions::MAX_CONCURRENCY),
    /// past which subscribing fails with [`SubscribeError::InvalidOption`](crate::SubscribeError::InvalidOption);
    /// ignored when ordered, which is one at a time). Inline handlers run on
    /// as many workers as there are.
    pub fn concurrency(mut self, n: usize) -> SubscribeOptions {
        self.concurrency = n.max(1);
        self
    }

    /// An async call that runs longer is cancelled and counted as a handler
    /// error, a [`HandlerTimeout`](crate::HandlerTimeout). Applies to async
    /// handlers only (synchronous code cannot be cancelled).
    pub fn timeout(mut self, limit: Duration) -> SubscribeOptions {
        self.timeout = Some(limit);
        self
    }

    /// How many events may wait for an ordered, blocking or async
    /// subscription (default [`DEFAULT_BACKLOG`](SubscribeOptions::DEFAULT_BACKLOG));
    /// what happens past that is its [`overflow`](SubscribeOptions::overflow)
    /// policy's choice.
    pub fn backlog(mut self, events: usize) -> SubscribeOptions {
        self.backlog = events.max(1);
        self
    }

    /// What happens when the [`backlog`](SubscribeOptions::backlog) of an
    /// ordered, blocking or async subscription is full. Default: the bus's
    /// [`overflow`](crate::BusBuilder::overflow) policy, so that under the
    /// default `Block` no event is ever lost for any subscription.
    ///
    /// * [`Overflow::Block`](crate::Overflow::Block): outside publishers
    ///   wait for room. For an ordered subscription, a publisher of an
    ///   event it matches waits (before it reserves anything). For a
    ///   blocking or async one, the dispatching worker never waits: it hands
    ///   the event over past the capacity, and while the backlog is full
    ///   every outside publisher waits, whatever it publishes, until the
    ///   runner has made room. A slow subscriber slows the bus down to its
    ///   pace, but never holds a worker. A handler never waits: its publish
    ///   may overshoot an ordered backlog by as much again, and past that
    ///   gets [`PublishError::Full`](crate::PublishError::Full).
    /// * [`Overflow::Shed`](crate::Overflow::Shed): the oldest waiting event
    ///   is dropped to make room. A slow subscriber falls behind alone: the
    ///   isolation to ask for when a subscriber may lag (a thumbnailer, a
    ///   logger that may skip lines).
    /// * [`Overflow::Error`](crate::Overflow::Error): an ordered
    ///   subscription's publisher gets
    ///   [`PublishError::BacklogFull`](crate::PublishError::BacklogFull)
    ///   and nothing is accepted (counted in
    ///   [`Stats::rejected`](crate::Stats::rejected)); for the others, the
    ///   event is refused for this subscription only and reported to the
    ///   error hook as a [`BacklogFull`](crate::BacklogFull).
    ///
    /// Every accepted event shed or refused for the subscription is counted in the subscription's
    /// [`SubscriptionStats::backlog_dropped`](crate::SubscriptionStats::backlog_dropped)
    /// and in [`Stats::backlog_dropped`](crate::Stats::backlog_dropped),
    /// and logged at `warn` (at most a line a second).
    ///
    /// # Examples
    ///
    /// ```
    /// use switchboard::{Overflow, SubscribeOptions};
    ///
    /// // A thumbnailer that may skip images when it falls behind.
    /// let thumbnails = SubscribeOptions::new().blocking().backlog(100).overflow(Overflow::Shed);
    /// # let _ = thumbnails;
    /// ```
    pub fn overflow(mut self, policy: crate::Overflow) -> SubscribeOptions {
        self.overflow = Some(policy);
        self
    }

    /// Checks the options that have limits.
    pub(crate) fn check(&self) -> Result<(), crate::SubscribeError> {
        if self.concurrency > SubscribeOptions::MAX_CONCURRENCY {
            return Err(crate::SubscribeError::InvalidOption {
                what: "concurrency",
                value: self.concurrency,
                max: SubscribeOptions::MAX_CONCURRENCY,
            });
        }
        Ok(())
    }

    /// Whether the subscription needs a mailbox (it does not run inline).
    pub(crate) fn has_mailbox(&self) -> bool {
        self.ordered || self.blocking
    }
}

impl From<&str> for SubscribeOptions {
    /// The default options, for the plugin `name`.
    fn from(name: &str) -> SubscribeOptions {
        SubscribeOptions::new().plugin(name)
    }
}

impl From<&String> for SubscribeOptions {
    fn from(name: &String) -> SubscribeOptions {
        SubscribeOptions::new().plugin(name)
    }
}

impl From<&SubscribeOptions> for SubscribeOptions {
    fn from(options: &SubscribeOptions) -> SubscribeOptions {
        options.clone()
    }
}

/// One subscription: its pattern, plugin, and the handler it owns.
///
/// Snapshots share it by `Arc`, but only the handler is worth reclaiming
/// promptly (it holds what the plugin captured), so the handler is taken
/// out and dropped on its own once no worker can call it any more (see
/// `reclaim.rs`); the rest (id, pattern, plugin name) goes with the last
/// `Arc`.
// `repr(C)`, hot fields first: a call reads `mailbox`, `active`, then
// `handler` (and `observed` on an observed bus), and they share a cache
// line.
#[repr(C)]
pub(crate) struct Subscription {
    /// Cleared once, by the unsubscribe that removes it.
    active: AtomicBool,
    /// Set by whoever takes the handler, so it is taken once.
    claimed: AtomicBool,
    pub(crate) priority: Priority,
    /// `Some` until reclaimed. Read only by a worker that has announced the
    /// call and seen `active` (the protocol in `reclaim.rs`); taken only by
    /// the one owner of the retired subscription once no worker can.
    handler: UnsafeCell<Option<Handler>>,
    /// For ordered, blocking and async subscriptions, which do not run
    /// inline (their handler lives there, not in `handler`). Boxed, as
    /// `observed` is: an inline subscription (the most common kind) then
    /// takes two pointers for them, not 208 bytes, and a call's look at
    /// the pointer stays on the line of `active` and `handler`.
    pub(crate) mailbox: Option<Box<crate::mailbox::Mailbox>>,
    /// Its call counts and sampled timings, on an observed bus.
    pub(crate) observed: Option<Box<crate::observe::Observed>>,
    /// Where the subscription's handlers sort among one event's: priority
    /// (`High` first), then id.
    pub(crate) rank: u64,
    pub(crate) id: SubscriptionId,
    pub(crate) pattern: Pattern,
    pub(crate) plugin: Arc<str>,
    pub(crate) errors: AtomicU64,
    /// Of `errors`: panics, and async calls past their timeout.
    pub(crate) panics: AtomicU64,
    pub(crate) timeouts: AtomicU64,
    /// Replays of `subscribe_replay` in progress (one at most): its calls
    /// are in no worker slot, so the waiting forms of unsubscribe wait for
    /// this instead.
    replaying: crate::loom::AtomicUsize,
}

// SAFETY: the handler is `Send + Sync`; the cell is read concurrently by
// workers and written once, by the reclaimer, after every worker that could
// read it is known to be done (see `reclaim.rs`, checked by the loom models).
unsafe impl Sync for Subscription {}
unsafe impl Send for Subscription {}

impl Subscription {
    pub(crate) fn new(
        id: SubscriptionId,
        pattern: Pattern,
        plugin: Arc<str>,
        priority: Priority,
        handler: Option<Handler>,
        mailbox: Option<crate::mailbox::Mailbox>,
    ) -> Subscription {
        let rank = ((Priority::High as u64 - priority as u64) << 62) | (id.0 & ((1 << 62) - 1));
        Subscription {
            id,
            pattern,
            plugin,
            priority,
            rank,
            active: AtomicBool::new(true),
            handler: UnsafeCell::new(handler),
            claimed: AtomicBool::new(false),
            errors: AtomicU64::new(0),
            panics: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            replaying: crate::loom::AtomicUsize::new(0),
            mailbox: mailbox.map(Box::new),
            observed: None,
        }
    }

    /// The same, observed.
    pub(crate) fn with_observed(mut self, observed: Option<crate::observe::Observed>) -> Self {
        self.observed = observed.map(Box::new);
        self
    }

    /// Whether the subscription may still be called. Relaxed: the ordering
    /// comes from the barriers of the protocol in `reclaim.rs`.
    #[inline]
    pub(crate) fn is_active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    /// Stops new calls (they see it after the next heavy barrier). `true`
    /// the first time.
    pub(crate) fn close(&self) -> bool {
        self.active.swap(false, Ordering::SeqCst)
    }

    /// Calls the handler.
    ///
    /// # Safety
    ///
    /// The caller has announced the call in its worker slot, then seen the
    /// subscription active (the protocol in `reclaim.rs`), so the handler
    /// is not taken before the call returns.
    #[inline]
    pub(crate) unsafe fn call(&self, event: &Event) -> HandlerResult {
        self.handler.with(|handler| {
            // SAFETY: per this function's contract, no `take` runs while
            // the call does.
            match unsafe { &*handler } {
                Some(handler) => handler(event),
                None => Ok(()),
            }
        })
    }

    /// Takes the handler out, to drop it; `None` when it was taken already
    /// (by another reclaimer: the first one wins).
    ///
    /// # Safety
    ///
    /// No worker calls the handler now or later: the subscription is closed
    /// and, since a heavy barrier that followed, every worker's slot has
    /// been seen not naming it (or the workers have all exited).
    pub(crate) unsafe fn take_handler(&self) -> Option<Handler> {
        // AcqRel: two reclaimers agree on one winner; nothing else reads
        // the cell any more.
        if self.claimed.swap(true, Ordering::AcqRel) {
            return None;
        }
        // SAFETY: per this function's contract, no worker reads the cell,
        // and the claim above makes this the only writer.
        self.handler.with_mut(|handler| unsafe { (*handler).take() })
    }

    /// Whether it is an async subscription on a current-thread runtime.
    pub(crate) fn runs_on_current_thread(&self) -> bool {
        #[cfg(feature = "tokio")]
        if let Some(crate::mailbox::Mailbox {
            runner: crate::mailbox::Runner::Tokio(runner), ..
        }) = self.mailbox.as_deref()
        {
            return runner.on_current_thread();
        }
        false
    }

    /// Marks a replay as in progress until [`replay_done`](Subscription::replay_done).
    pub(crate) fn replay_started(&self) {
        self.replaying.fetch_add(1, Ordering::SeqCst);
    }

    /// The replay is over and has dropped its clone of the handler.
    pub(crate) fn replay_done(&self) {
        self.replaying.fetch_sub(1, Ordering::SeqCst);
    }

    /// Waits until no replay is in progress but `own` (the caller's), or
    /// `deadline`; `false` when the deadline passed first.
    pub(crate) fn wait_replays(&self, own: usize, deadline: Option<std::time::Instant>) -> bool {
        let mut round = 0;
        while self.replaying.load(Ordering::SeqCst) > own {
            if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
                return false;
            }
            crate::loom::backoff(&mut round);
        }
        true
    }

    /// Whether the handler has been taken (or is being taken).
    pub(crate) fn is_claimed(&self) -> bool {
        self.claimed.load(Ordering::Acquire)
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("id", &self.id)
            .field("pattern", &self.pattern)
            .field("plugin", &self.plugin)
            .field("priority", &self.priority)
            .finish_non_exhaustive()
    }
}
