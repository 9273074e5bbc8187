//! Unsubscribing: taking subscriptions out of the registry and the
//! snapshot, retiring their mailboxes, and reclaiming their handlers (at
//! once, or after waiting for their running calls).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{deadline, Bus};
use crate::context::{mailbox_call, worker_index};
use crate::error::WaitTimeout;
use crate::loom::Ordering;
use crate::shared::WaitMode;
use crate::subscription::{Subscription, SubscriptionId};

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
    pub(super) fn selects(&self, sub: &Subscription) -> bool {
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
/// started again, and those no call was running were dropped before it
/// returned. Wait for the running calls with [`wait`](Unsubscribed::wait)
/// or [`wait_timeout`](Unsubscribed::wait_timeout); dropping it (or never
/// asking) is the form that does not wait: the other handlers go when
/// their calls end. Keeping it holds nothing alive.
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

    fn finish(self, deadline: Option<Instant>) -> Result<usize, WaitTimeout> {
        self.bus.retire_and_wait(self.removed, deadline)
    }
}

impl fmt::Debug for Unsubscribed<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Unsubscribed").field("ids", &self.ids()).finish()
    }
}

impl Bus {
    /// Removes the subscriptions `target` names: one by its id
    /// ([`SubscriptionId`] converts into a target), a plugin's, a plugin's to
    /// exactly one pattern, or all. Once this returns, their handlers are
    /// never started again (a call already running may finish).
    ///
    /// The returned [`Unsubscribed`] says how many were removed
    /// ([`count`](Unsubscribed::count)), and can wait until no call of them
    /// is running ([`wait`](Unsubscribed::wait),
    /// [`wait_timeout`](Unsubscribed::wait_timeout)), so a plugin can be torn
    /// down safely. Before this returns, the handlers no call is running are
    /// dropped; one whose call is running goes as soon as the worker running
    /// it finishes its batch (or before `wait` returns). Either way a handler
    /// is dropped outside every lock of the bus, so its `Drop` may use the
    /// bus.
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
        let removed = self.take(target.into());
        self.retire(&removed);
        Unsubscribed { bus: self, removed }
    }

    /// Hands removed subscriptions to reclamation, dropping at once the
    /// handlers no worker is calling. Returns how many were removed.
    pub(super) fn retire(&self, removed: &[Arc<Subscription>]) {
        if !removed.is_empty() {
            self.retire_mailboxes(removed);
            self.shared().reclaim();
        }
    }

    /// Takes the handlers out of removed mailbox subscriptions and drops
    /// the backlogs; the closures go with their last running call.
    pub(super) fn retire_mailboxes(&self, removed: &[Arc<Subscription>]) {
        let shared = self.shared();
        for sub in removed {
            if let Some(work) = sub.mailbox.as_ref().and_then(|m| m.retire(&shared.env()).0) {
                shared.drop_caught(work);
            }
        }
    }

    /// [`retire`](Bus::retire), after waiting for the running calls.
    pub(super) fn retire_and_wait(
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
            for sub in inline.iter().chain(&boxed) {
                // A replay in progress (`subscribe_replay`, of any kind of
                // subscription: its calls run on the subscribing thread, not
                // in a worker slot or a mailbox) stops at its next event; its
                // own calls excuse it.
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
                let idle = if mode == WaitMode::Refused {
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
            WaitMode::InPlace => tokio::task::block_in_place(wait),
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
    pub(super) fn take(&self, target: Target<'_>) -> Vec<Arc<Subscription>> {
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
}
