//! Subscriptions and the gate that makes unsubscribe final.

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use switchboard_matcher::Pattern;

use crate::event::{Event, Priority};
use crate::loom::{backoff, fence, AtomicBool, AtomicU64, AtomicUsize, Ordering};

/// What a handler returns: `Err` is counted, logged and reported to the error
/// hook; it never stops the other handlers of the event.
pub type HandlerResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

pub(crate) type Handler = Box<dyn Fn(&Event) -> HandlerResult + Send + Sync>;

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

/// Options for [`Bus::subscribe_with`](crate::Bus::subscribe_with).
///
/// # Examples
///
/// ```
/// use switchboard::{Priority, SubscribeOptions};
///
/// let validation_first = SubscribeOptions::new().priority(Priority::High);
/// # let _ = validation_first;
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct SubscribeOptions {
    pub(crate) priority: Priority,
}

impl SubscribeOptions {
    /// The defaults: [`Priority::Normal`].
    pub fn new() -> SubscribeOptions {
        SubscribeOptions::default()
    }

    /// Within one event, handlers run by subscription priority (`High`
    /// first), then in subscription order.
    pub fn priority(mut self, priority: Priority) -> SubscribeOptions {
        self.priority = priority;
        self
    }
}

/// Whether a subscription may still be called, and how many calls of it are
/// running.
///
/// The protocol (a Dekker-style handshake, modelled in `loom_tests.rs`):
/// a worker announces a call (`running += 1`) *then* checks `active`; the
/// unsubscriber clears `active` *then* reads `running`, each side with a
/// `SeqCst` fence between its write and its read. The fences are totally
/// ordered, so at least one side sees the other's write: either the worker
/// sees `active == false` and backs out, or the unsubscriber sees the call
/// and (in the waiting form) waits for it.
#[derive(Debug)]
pub(crate) struct Gate {
    active: AtomicBool,
    running: AtomicUsize,
}

impl Gate {
    pub(crate) fn new() -> Gate {
        Gate { active: AtomicBool::new(true), running: AtomicUsize::new(0) }
    }

    /// Announces a call; `false` means the subscription is closed and the
    /// handler must not be started.
    #[inline]
    pub(crate) fn enter(&self) -> bool {
        // The SeqCst fences on both sides order "announce, then check"
        // against "close, then count": see the protocol above.
        self.running.fetch_add(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if self.active.load(Ordering::SeqCst) {
            true
        } else {
            self.exit();
            false
        }
    }

    /// Ends a call begun by a successful [`enter`](Gate::enter).
    #[inline]
    pub(crate) fn exit(&self) {
        // Release: the handler's effects happen-before a waiter's Acquire load
        // that sees the count drop.
        self.running.fetch_sub(1, Ordering::Release);
    }

    /// Stops new calls. Returns `true` the first time.
    pub(crate) fn close(&self) -> bool {
        let was = self.active.swap(false, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        was
    }

    #[inline]
    pub(crate) fn is_active(&self) -> bool {
        // Relaxed: only a filter; `enter` is the real check.
        self.active.load(Ordering::Relaxed)
    }

    /// How many calls are running.
    pub(crate) fn running(&self) -> usize {
        // SeqCst: read after `close`'s fence (see the protocol above); it
        // also acquires the handlers' effects from `exit`'s Release.
        self.running.load(Ordering::SeqCst)
    }

    /// Waits until no call is running but the `excused()` ones (calls that
    /// cannot end while the caller waits: its own, and those waiting for
    /// it), or until `deadline`. `false` when the deadline passed first.
    pub(crate) fn wait_idle(
        &self,
        mut excused: impl FnMut() -> usize,
        deadline: Option<Instant>,
    ) -> bool {
        let mut round = 0;
        loop {
            let running = self.running();
            if running == 0 || running <= excused() {
                return true;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return false;
            }
            backoff(&mut round);
        }
    }
}

/// One subscription: its pattern, plugin, handler and gate.
pub(crate) struct Subscription {
    pub(crate) id: SubscriptionId,
    pub(crate) pattern: Pattern,
    pub(crate) plugin: Arc<str>,
    pub(crate) priority: Priority,
    pub(crate) handler: Handler,
    pub(crate) gate: Gate,
    pub(crate) errors: AtomicU64,
}

impl Subscription {
    /// The order in which handlers of one event run: priority, then age.
    pub(crate) fn dispatch_key(&self) -> (std::cmp::Reverse<Priority>, SubscriptionId) {
        (std::cmp::Reverse(self.priority), self.id)
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
