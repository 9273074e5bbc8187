//! Reading the bus: history, and the live subscriptions with their
//! counters.

use std::sync::Arc;

use rustc_hash::FxHashSet;
use switchboard_matcher::Pattern;

use super::{Bus, Target};
use crate::error::{HistoryError, NameError};
use crate::event::{Event, EventId};
use crate::history::History;
use crate::loom::Ordering;
use crate::stats::SubscriptionStats;
use crate::subscription::{Subscription, SubscriptionId};

/// What [`Bus::history`] returns: the latest events, newest first, at most
/// [`last`](HistoryQuery::last) of them, only those
/// [`matching`](HistoryQuery::matching) a pattern when one is given, and
/// only those [`caused_by`](HistoryQuery::caused_by) an event when one is
/// given.
///
/// # Examples
///
/// ```
/// use switchboard::HistoryQuery;
///
/// let everything = HistoryQuery::new();
/// let recent_trivia = HistoryQuery::new().last(10).matching("trivia.*");
/// # let _ = (everything, recent_trivia);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HistoryQuery {
    last: Option<usize>,
    pattern: Option<String>,
    cause: Option<EventId>,
}

impl HistoryQuery {
    /// Every event history holds.
    pub fn new() -> HistoryQuery {
        HistoryQuery::default()
    }

    /// At most the `n` latest (of those matching, if a pattern is given);
    /// `None`: all.
    pub fn last(mut self, n: impl Into<Option<usize>>) -> HistoryQuery {
        self.last = n.into();
        self
    }

    /// Only the events whose name matches the glob `pattern`; `None`: any
    /// name.
    pub fn matching<'p>(mut self, pattern: impl Into<Option<&'p str>>) -> HistoryQuery {
        self.pattern = pattern.into().map(str::to_owned);
        self
    }

    /// Only the events of the cascade the event `id` started: those whose
    /// [parent](Event::parent) is `id`, and those whose parent is one of
    /// those, and so on, through every link history still holds; `None`:
    /// no such condition. The event `id` itself is not one (it need not
    /// still be in history). [`matching`](HistoryQuery::matching) and
    /// [`last`](HistoryQuery::last) then pick among the cascade: a link
    /// whose name does not match is walked through, not returned.
    ///
    /// Links go by [`EventId`]: a republished clone keeps its id, so the
    /// cascades of all its publishes are one. The walk is in publish order,
    /// so a parent given by hand ([`Event::with_parent`]) to an event
    /// published *before* its parent does not link it. It reads the whole
    /// history window.
    ///
    /// # Examples
    ///
    /// ```
    /// use switchboard::{Bus, Event, Handler, HistoryQuery};
    ///
    /// let bus = Bus::builder().history_size(100).build()?;
    /// // chat.line → trivia.round → score.changed
    /// for (on, next) in [("chat.line", "trivia.round"), ("trivia.round", "score.changed")] {
    ///     let publish = Handler::sync(move |_event: &Event| {
    ///         Bus::current().expect("in a handler")
    ///             .publish(Event::new(next, serde_json::Value::Null, "bot"))?;
    ///         Ok(())
    ///     });
    ///     bus.subscribe(on, publish, "bot")?;
    /// }
    /// let line = bus.publish(Event::new("chat.line", serde_json::json!("hi"), "gateway"))?;
    /// bus.publish(Event::new("chat.line", serde_json::json!("hi again"), "gateway"))?;
    /// bus.flush();
    /// let cascade = bus.history(HistoryQuery::new().caused_by(line))?;
    /// let names: Vec<&str> = cascade.iter().map(|e| e.name()).collect();
    /// assert_eq!(names, ["score.changed", "trivia.round"]); // newest first
    /// let scores = bus.history(HistoryQuery::new().caused_by(line).matching("score.*"))?;
    /// assert_eq!(scores.len(), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn caused_by(mut self, id: impl Into<Option<EventId>>) -> HistoryQuery {
        self.cause = id.into();
        self
    }
}

/// One live subscription, as [`Bus::subscriptions`] lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SubscriptionInfo {
    /// Its id.
    pub id: SubscriptionId,
    /// Its pattern, as subscribed.
    pub pattern: String,
    /// Its subscriber.
    pub plugin: String,
    /// Its counters now.
    pub stats: SubscriptionStats,
}

impl Bus {
    /// The last accepted events the `query` asks for, most recent first:
    /// at most [`last`](HistoryQuery::last) of them, those
    /// [`matching`](HistoryQuery::matching) its pattern. Empty when history
    /// is off.
    ///
    /// History is in publish order: one total order of all accepted events
    /// that agrees with each publishing thread's own order, whatever the
    /// number of workers, the priorities, or the events handlers published.
    /// An event is in it as soon as its `publish` returns `Ok`, and before
    /// any handler sees it: a late joiner that subscribes first and reads
    /// history second misses nothing in between (it may see an event in both).
    ///
    /// # Errors
    ///
    /// [`HistoryError::InvalidPattern`] when the query's pattern is not
    /// acceptable.
    ///
    /// # Examples
    ///
    /// ```
    /// use switchboard::{Bus, Event, HistoryQuery, Priority};
    ///
    /// let bus = Bus::builder().history_size(2).build()?;
    /// for (name, priority) in [("a.1", Priority::Low), ("a.2", Priority::High), ("b.3", Priority::Normal)] {
    ///     bus.publish(Event::new(name, serde_json::Value::Null, "t").with_priority(priority))?;
    /// }
    /// let names: Vec<String> =
    ///     bus.history(HistoryQuery::new())?.iter().map(|e| e.name().to_owned()).collect();
    /// assert_eq!(names, ["b.3", "a.2"]); // the last two published, newest first
    /// assert_eq!(bus.history(HistoryQuery::new().last(5).matching("a.*"))?.len(), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn history(&self, query: HistoryQuery) -> Result<Vec<Arc<Event>>, HistoryError> {
        let (limit, cause) = (query.last, query.cause);
        let pattern = match query.pattern.as_deref() {
            None => None,
            Some(p) => {
                let invalid = |reason| HistoryError::InvalidPattern {
                    pattern: crate::error::truncate(p),
                    reason,
                };
                NameError::check(p).map_err(invalid)?;
                Some(Pattern::new(p).map_err(|_| {
                    invalid(NameError::TooLong { len: p.len(), max: crate::MAX_NAME_LEN })
                })?)
            }
        };
        let Some(history) = &self.shared().history else { return Ok(Vec::new()) };
        let limit = limit.unwrap_or(usize::MAX);
        let matches = |event: &Event| pattern.as_ref().is_none_or(|p| p.is_match(event.name()));
        if let Some(root) = cause {
            return Ok(cascade(history, self.shared().sequence_end(), root, limit, matches));
        }
        // A reader held up while a flood of a ring's length went by finds
        // the window it set out to read overwritten by newer events: it
        // reads again, from the newer end, a few times at most.
        let mut tries = 0;
        loop {
            let (events, lapped) = history.read(self.shared().sequence_end(), limit, matches);
            tries += 1;
            if !lapped || events.len() >= limit || tries == 4 {
                return Ok(events);
            }
        }
    }

    /// The live subscriptions `target` selects, in subscription order, each
    /// with its id, pattern, plugin and counters (handler errors, events
    /// dropped for it and waiting in its backlog, calls running).
    ///
    /// # Examples
    ///
    /// ```
    /// use switchboard::{Bus, Handler, SubscribeOptions, Target};
    ///
    /// let bus = Bus::new()?;
    /// let slow = SubscribeOptions::new().plugin("thumbs").blocking();
    /// let id = bus.subscribe("image.*", Handler::sync(|_e| Ok(())), slow)?;
    /// bus.subscribe("user.*", Handler::sync(|_e| Ok(())), "greeter")?;
    /// let thumbs = bus.subscriptions(Target::Plugin("thumbs"));
    /// assert_eq!(thumbs.len(), 1);
    /// assert_eq!((thumbs[0].id, thumbs[0].pattern.as_str()), (id, "image.*"));
    /// assert_eq!((thumbs[0].stats.errors, thumbs[0].stats.backlog_dropped), (0, 0));
    /// assert_eq!(bus.subscriptions(Target::All).len(), 2);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn subscriptions<'t>(&self, target: impl Into<Target<'t>>) -> Vec<SubscriptionInfo> {
        let target = target.into();
        let mut subs: Vec<Arc<Subscription>> = {
            let reg = self.shared().registry.lock();
            let plugin = match target {
                Target::All => None,
                Target::Plugin(plugin) | Target::Pattern { plugin, .. } => Some(plugin),
                Target::Id(id) => match reg.by_id.get(&id) {
                    Some(plugin) => Some(&**plugin),
                    None => return Vec::new(),
                },
            };
            match plugin {
                Some(p) => reg
                    .plugins
                    .get(p)
                    .map(|v| v.iter().filter(|s| target.selects(s)).cloned().collect())
                    .unwrap_or_default(),
                None => reg.plugins.values().flatten().cloned().collect(),
            }
        };
        subs.sort_by_key(|s| s.id);
        subs.iter()
            .map(|sub| {
                // Relaxed: statistics.
                let mut stats = SubscriptionStats {
                    errors: sub.errors.load(Ordering::Relaxed),
                    panics: sub.panics.load(Ordering::Relaxed),
                    timeouts: sub.timeouts.load(Ordering::Relaxed),
                    calls: sub.observed.as_ref().map_or(0, |o| o.calls()),
                    ..Default::default()
                };
                if let Some(mailbox) = &sub.mailbox {
                    stats.backlog_dropped = mailbox.backlog_dropped.load(Ordering::Relaxed);
                    stats.backlog = mailbox.backlog() as u64;
                    stats.running = mailbox.running() as u64;
                }
                SubscriptionInfo {
                    id: sub.id,
                    pattern: sub.pattern.as_str().to_owned(),
                    plugin: sub.plugin.to_string(),
                    stats,
                }
            })
            .collect()
    }
}

/// The events below `end` in the cascade of `root` that `matches` keeps,
/// at most `limit` of them, newest first. Walked oldest first: an event's
/// parent was numbered before it (a handler runs after its event is in
/// history), so one pass finds every link. Only events with a parent can
/// be links, so only they are read.
fn cascade(
    history: &History,
    end: u64,
    root: EventId,
    limit: usize,
    matches: impl Fn(&Event) -> bool,
) -> Vec<Arc<Event>> {
    let (linked, _lapped) = history.read(end, usize::MAX, |event| event.parent().is_some());
    let mut in_cascade = FxHashSet::from_iter([root]);
    let mut out = Vec::new();
    for event in linked.into_iter().rev() {
        if event.parent().is_some_and(|cause| in_cascade.contains(&cause.id())) {
            in_cascade.insert(event.id());
            if matches(&event) {
                out.push(event);
            }
        }
    }
    out.reverse();
    out.truncate(limit);
    out
}
