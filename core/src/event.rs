//! Events: a name, a payload, where it came from, and when.

use std::any::Any;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use serde::Serialize;
use serde_json::Value;

/// How urgently an event is dispatched, or in which order a subscription's
/// handler runs among the handlers of one event. `Low < Normal < High`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    /// Served after the others, but never starved (see [`BusBuilder::starvation_limit`](crate::BusBuilder::starvation_limit)).
    Low = 0,
    /// The default.
    #[default]
    Normal = 1,
    /// Served first.
    High = 2,
}

impl Priority {
    /// All priorities, lowest first.
    pub const ALL: [Priority; 3] = [Priority::Low, Priority::Normal, Priority::High];

    /// `0` for `Low`, `1` for `Normal`, `2` for `High`.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// A process-unique, and with overwhelming likelihood globally unique, event
/// identifier: 64 bits chosen once per process, then a 64-bit counter.
///
/// Ids from one process increase in creation order. The process part lets a
/// bridge between processes drop duplicates by id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventId(u128);

impl EventId {
    fn next() -> EventId {
        static COUNTER: AtomicU64 = AtomicU64::new(1);
        static PROCESS: OnceLock<u64> = OnceLock::new();
        let process = *PROCESS.get_or_init(|| {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u32(std::process::id());
            h.write_u128(
                SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos()),
            );
            h.finish()
        });
        // Relaxed: uniqueness needs only the atomicity of the increment.
        let seq = COUNTER.fetch_add(1, Ordering::Relaxed);
        EventId(((process as u128) << 64) | seq as u128)
    }

    /// The id as one 128-bit number.
    pub fn as_u128(self) -> u128 {
        self.0
    }

    /// Rebuilds an id from [`as_u128`](EventId::as_u128) (for example after
    /// it crossed a process boundary).
    pub fn from_u128(id: u128) -> EventId {
        EventId(id)
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// What caused an event: the event that was being handled when it was
/// published (see [`Event::parent`]).
///
/// It names the parent by its [`EventId`] and, when known, by the publish
/// it came from: the [instance](crate::Bus::instance) of the bus that
/// numbered it and its [sequence number](Event::sequence) there. The id is
/// what a cascade walk goes by
/// ([`HistoryQuery::caused_by`](crate::HistoryQuery::caused_by)); the
/// publish tells two publishes of one id (a republished clone) apart, and
/// stays meaningful after the event crossed to another bus.
///
/// # Examples
///
/// ```
/// use switchboard::{Cause, Event};
///
/// let line = Event::new("chat.line", serde_json::json!("hi"), "gateway");
/// let cause = Cause::new(line.id()).with_sequence(7, 42);
/// let reply = Event::new("chat.reply", serde_json::json!("hello"), "bot").with_parent(cause);
/// assert_eq!(reply.parent().map(Cause::id), Some(line.id()));
/// assert_eq!(reply.parent().and_then(Cause::sequence), Some(42));
/// assert_eq!(reply.parent().and_then(Cause::bus), Some(7));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cause {
    id: EventId,
    /// The bus instance and the sequence number of the parent's publish.
    publish: Option<(u64, u64)>,
}

impl Cause {
    /// A cause known by its event id only.
    pub fn new(id: EventId) -> Cause {
        Cause { id, publish: None }
    }

    /// The same cause, with the publish it came from: sequence number
    /// `sequence` on the bus whose [instance](crate::Bus::instance) is
    /// `bus`.
    pub fn with_sequence(mut self, bus: u64, sequence: u64) -> Cause {
        self.publish = Some((bus, sequence));
        self
    }

    /// The parent's event id.
    pub fn id(&self) -> EventId {
        self.id
    }

    /// The parent's sequence number on the bus that numbered it (see
    /// [`bus`](Cause::bus)), if known.
    pub fn sequence(&self) -> Option<u64> {
        self.publish.map(|(_, sequence)| sequence)
    }

    /// The [instance](crate::Bus::instance) of the bus that numbered the
    /// parent, if known.
    pub fn bus(&self) -> Option<u64> {
        self.publish.map(|(bus, _)| bus)
    }
}

impl From<EventId> for Cause {
    fn from(id: EventId) -> Cause {
        Cause::new(id)
    }
}

/// What an event carries: JSON, or a Rust value.
#[derive(Clone)]
#[non_exhaustive]
pub enum Payload {
    /// Dynamic data, as plugins written against JSON expect.
    Json(Value),
    /// A typed Rust value; see [`Event::typed`].
    Typed(TypedPayload),
}

/// A Rust value carried by an event, with its JSON form made on first demand.
#[derive(Clone)]
pub struct TypedPayload {
    value: Arc<dyn Any + Send + Sync>,
    type_name: &'static str,
    to_json: fn(&(dyn Any + Send + Sync)) -> Value,
    json: Arc<OnceLock<Value>>,
}

impl TypedPayload {
    /// The Rust type's name, as `std::any::type_name` gives it.
    pub fn type_name(&self) -> &'static str {
        self.type_name
    }

    /// The value, if it is a `T`.
    pub fn downcast_ref<T: Any>(&self) -> Option<&T> {
        self.value.downcast_ref()
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Payload::Json(v) => f.debug_tuple("Json").field(v).finish(),
            Payload::Typed(t) => f.debug_tuple("Typed").field(&t.type_name).finish(),
        }
    }
}

impl fmt::Debug for TypedPayload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TypedPayload").field("type_name", &self.type_name).finish_non_exhaustive()
    }
}

/// A named event with its payload.
///
/// Build one with [`Event::new`] (JSON data) or [`Event::typed`] (a Rust
/// value), then hand it to [`Bus::publish`](crate::Bus::publish). Handlers
/// receive `&Event`; the bus keeps events in `Arc`s, so keeping one (as the
/// history does) costs a reference count.
///
/// # Examples
///
/// ```
/// use serde_json::json;
/// use switchboard::{Event, Priority};
///
/// let event = Event::new("trivia.started", json!({"question": "2+2?"}), "trivia")
///     .with_priority(Priority::High);
/// assert_eq!(event.name(), "trivia.started");
/// assert_eq!(event.data()["question"], "2+2?");
/// assert_eq!(event.source(), "trivia");
/// ```
#[derive(Clone)]
pub struct Event {
    id: EventId,
    name: Box<str>,
    payload: Payload,
    source: Box<str>,
    priority: Priority,
    timestamp: SystemTime,
    depth: u32,
    /// The bus's publish sequence number, once accepted.
    seq: Sequence,
    /// Where a bridge imported it from; `None` for a local event.
    origin: Option<Arc<str>>,
    /// Its parent and, with dispatch tracing on, its publisher's span;
    /// `None` (no allocation) for an event published outside any handler.
    lineage: Option<Box<Lineage>>,
}

/// What an event knows of what caused it. Boxed: most events have none,
/// and a pointer keeps [`Event`] small.
#[derive(Clone, Debug)]
struct Lineage {
    cause: Option<Cause>,
    /// Given with [`Event::with_parent`]: publishing keeps it.
    explicit: bool,
    /// The span current when it was published (dispatch tracing on): the
    /// parent of its dispatch spans, kept open as long as the event lives.
    span: Option<tracing::Span>,
}

impl Event {
    /// An event carrying JSON data, at [`Priority::Normal`].
    pub fn new(name: impl Into<String>, data: Value, source: impl Into<String>) -> Event {
        Event::with_payload(name.into(), Payload::Json(data), source.into())
    }

    /// An event carrying a Rust value. Typed handlers
    /// ([`Handler::typed`](crate::Handler::typed)) receive it as
    /// `&T` without any conversion; JSON handlers see it serialised, made
    /// once, on the first call to [`data`](Event::data).
    ///
    /// # Examples
    ///
    /// ```
    /// use switchboard::Event;
    ///
    /// #[derive(serde::Serialize)]
    /// struct Quote { id: u32, text: String }
    ///
    /// let event = Event::typed("quote.added", Quote { id: 7, text: "hi".into() }, "quotes");
    /// assert_eq!(event.downcast_ref::<Quote>().unwrap().id, 7);
    /// assert_eq!(event.data()["text"], "hi");
    /// ```
    pub fn typed<T>(name: impl Into<String>, value: T, source: impl Into<String>) -> Event
    where
        T: Serialize + Any + Send + Sync,
    {
        fn to_json<T: Serialize + Any>(value: &(dyn Any + Send + Sync)) -> Value {
            value
                .downcast_ref::<T>()
                .and_then(|v| serde_json::to_value(v).ok())
                .unwrap_or(Value::Null)
        }
        let payload = TypedPayload {
            value: Arc::new(value),
            type_name: std::any::type_name::<T>(),
            to_json: to_json::<T>,
            json: Arc::new(OnceLock::new()),
        };
        Event::with_payload(name.into(), Payload::Typed(payload), source.into())
    }

    fn with_payload(name: String, payload: Payload, source: String) -> Event {
        Event {
            id: EventId::next(),
            name: name.into_boxed_str(),
            payload,
            source: source.into_boxed_str(),
            priority: Priority::Normal,
            timestamp: SystemTime::now(),
            depth: 0,
            seq: Sequence::default(),
            origin: None,
            lineage: None,
        }
    }

    /// The same event at another priority.
    pub fn with_priority(mut self, priority: Priority) -> Event {
        self.priority = priority;
        self
    }

    /// The id given when the event was created.
    pub fn id(&self) -> EventId {
        self.id
    }

    /// The event's name, such as `trivia.started`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The payload as JSON. For a typed payload this is its serialisation
    /// (`null` if it cannot be serialised), made on first use.
    pub fn data(&self) -> &Value {
        match &self.payload {
            Payload::Json(v) => v,
            Payload::Typed(t) => t.json.get_or_init(|| (t.to_json)(&*t.value)),
        }
    }

    /// The payload as it was given.
    pub fn payload(&self) -> &Payload {
        &self.payload
    }

    /// The typed payload, if the event carries a `T`.
    pub fn downcast_ref<T: Any>(&self) -> Option<&T> {
        match &self.payload {
            Payload::Typed(t) => t.downcast_ref(),
            Payload::Json(_) => None,
        }
    }

    /// Who published it (a plugin name, by convention).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// How urgently it is dispatched.
    pub fn priority(&self) -> Priority {
        self.priority
    }

    /// When it was created.
    pub fn timestamp(&self) -> SystemTime {
        self.timestamp
    }

    /// How deep in a chain of handler-published events it was published: 0
    /// from outside any handler, `n + 1` from a handler of a depth-`n` event.
    pub fn depth(&self) -> u32 {
        self.depth
    }

    pub(crate) fn set_depth(&mut self, depth: u32) {
        self.depth = depth;
    }

    /// Its place in its bus's publish order: a number the bus gave it when
    /// it accepted it, one total order of all accepted events that agrees
    /// with each publishing thread's order (the order of
    /// [`Bus::history`](crate::Bus::history)). `None` before it is
    /// published. Every accepted publish takes a new number, with or
    /// without history: a republished clone keeps its [`id`](Event::id) but
    /// gets another sequence number, so `(bus instance, sequence)` names one
    /// publish (see [`Bus::instance`](crate::Bus::instance)).
    pub fn sequence(&self) -> Option<u64> {
        self.seq.0.load(Ordering::Acquire).checked_sub(1)
    }

    /// Sets the sequence number; the first call wins.
    pub(crate) fn set_sequence(&self, seq: u64) {
        let _ = self.seq.0.compare_exchange(0, seq + 1, Ordering::Release, Ordering::Relaxed);
    }

    /// Drops what a finished event holds that the user may see dropped
    /// (its payload, lineage and origin), keeping the block, its name and
    /// source for a publisher to overwrite (see `Shared::recycle`).
    pub(crate) fn release(&mut self) {
        self.payload = Payload::Json(Value::Null);
        self.lineage = None;
        self.origin = None;
    }

    /// The bytes a finished block keeps until a publisher fills it again.
    pub(crate) fn kept_bytes(&self) -> usize {
        self.name.len() + self.source.len()
    }

    /// Forgets the sequence number of an earlier publish (a republished
    /// clone gets a new one).
    pub(crate) fn clear_sequence(&mut self) {
        *self.seq.0.get_mut() = 0;
    }

    /// The event that caused this one: the event whose handler published
    /// it, or the one given to [`with_parent`](Event::with_parent). `None`
    /// for an event published outside any handler (and never given one).
    ///
    /// A publish from inside a handler of a bus, on that bus, records the
    /// event being handled, whatever the handler's kind: inline, ordered,
    /// blocking, async (across its `.await`s, in the handler's own task),
    /// and replayed calls; each publish records it afresh, as it does the
    /// [depth](Event::depth). A parent given with `with_parent` is kept.
    ///
    /// # Examples
    ///
    /// ```
    /// use switchboard::{Bus, Event, Handler, HistoryQuery};
    ///
    /// let bus = Bus::builder().history_size(10).build()?;
    /// bus.subscribe("chat.line", Handler::sync(|_line: &Event| {
    ///     let bus = Bus::current().expect("in a handler");
    ///     bus.publish(Event::new("trivia.round", serde_json::Value::Null, "trivia"))?;
    ///     Ok(())
    /// }), "trivia")?;
    /// let line = bus.publish(Event::new("chat.line", serde_json::json!("hi"), "gateway"))?;
    /// bus.flush();
    /// let round = &bus.history(HistoryQuery::new().matching("trivia.*"))?[0];
    /// let parent = round.parent().expect("published from a handler");
    /// assert_eq!(parent.id(), line);
    /// assert_eq!(parent.sequence(), Some(0)); // the chat line was the bus's first event
    /// assert_eq!(parent.bus(), Some(bus.instance()));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn parent(&self) -> Option<&Cause> {
        self.lineage.as_ref().and_then(|lineage| lineage.cause.as_ref())
    }

    /// The same event, caused by `parent` (an [`EventId`] or a [`Cause`]).
    /// Publishing keeps it, from inside a handler too: for a bridge that
    /// carries an event's parent from another bus, or a handler that
    /// publishes on behalf of another event.
    pub fn with_parent(mut self, parent: impl Into<Cause>) -> Event {
        let cause = Some(parent.into());
        match &mut self.lineage {
            Some(lineage) => {
                lineage.cause = cause;
                lineage.explicit = true;
            }
            None => self.lineage = Some(Box::new(Lineage { cause, explicit: true, span: None })),
        }
        self
    }

    /// Records what a publish from this thread gives the event: the cause
    /// (the event being handled, if any; a parent given with
    /// [`with_parent`](Event::with_parent) is kept instead) and the
    /// publisher's span (dispatch tracing on). Outside a handler with
    /// tracing off, on an event that never had a parent, it is one branch.
    #[inline]
    pub(crate) fn inherit(&mut self, cause: Option<Cause>, span: Option<tracing::Span>) {
        match &mut self.lineage {
            Some(lineage) if lineage.explicit => lineage.span = span,
            lineage => {
                *lineage = (cause.is_some() || span.is_some())
                    .then(|| Box::new(Lineage { cause, explicit: false, span }));
            }
        }
    }

    /// The span that was current when the event was published, with
    /// dispatch tracing on.
    pub(crate) fn publisher_span(&self) -> Option<&tracing::Span> {
        self.lineage.as_ref().and_then(|lineage| lineage.span.as_ref())
    }

    /// The same event from another source.
    pub fn with_source(mut self, source: impl Into<String>) -> Event {
        self.source = source.into().into_boxed_str();
        self
    }

    /// The same event under another id. For bridges that carry an event
    /// from one bus to another and keep its identity (so duplicates can be
    /// dropped by id); ids made by [`Event::new`] are unique, and a bus
    /// does not check that ids given here are.
    pub fn with_id(mut self, id: EventId) -> Event {
        self.id = id;
        self
    }

    /// The same event with another creation time (a bridge keeps the
    /// original publisher's).
    pub fn with_timestamp(mut self, timestamp: SystemTime) -> Event {
        self.timestamp = timestamp;
        self
    }

    /// The same event, marked as imported from `origin` (a bridge's name
    /// for the bus it came from). Bridges never export an event that has an
    /// origin, which is what keeps two buses that bridge each other from
    /// echoing events back and forth. Clones keep the mark.
    pub fn with_origin(mut self, origin: impl Into<Arc<str>>) -> Event {
        self.origin = Some(origin.into());
        self
    }

    /// Where a bridge imported this event from, or `None` for an event
    /// published on this side.
    pub fn origin(&self) -> Option<&str> {
        self.origin.as_deref()
    }
}

/// An event's sequence number plus one, 0 while it has none. Set once per
/// publish, once it is sure to be accepted (a `OnceLock` cost about 90 instructions
/// per event there; this is one compare-and-swap).
#[derive(Default)]
struct Sequence(AtomicU64);

impl Clone for Sequence {
    fn clone(&self) -> Sequence {
        Sequence(AtomicU64::new(self.0.load(Ordering::Acquire)))
    }
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("payload", &self.payload)
            .field("source", &self.source)
            .field("priority", &self.priority)
            .field("depth", &self.depth)
            .field("origin", &self.origin)
            .field("parent", &self.parent())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_types_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Event>();
        check::<Cause>();
    }

    /// The parent costs a pointer, not its size: `Event` was 144 bytes on
    /// 64-bit targets before it had one.
    #[cfg(target_pointer_width = "64")]
    #[test]
    fn the_lineage_keeps_an_event_small() {
        assert!(std::mem::size_of::<Event>() <= 160, "{}", std::mem::size_of::<Event>());
    }

    #[test]
    fn a_given_parent_survives_what_a_publish_inherits_and_an_automatic_one_does_not() {
        let given = Cause::new(EventId::from_u128(1));
        let automatic = Cause::new(EventId::from_u128(2)).with_sequence(9, 3);
        let mut event = Event::new("a", Value::Null, "t").with_parent(given);
        event.inherit(Some(automatic), None);
        assert_eq!(event.parent(), Some(&given));
        let mut event = Event::new("a", Value::Null, "t");
        event.inherit(Some(automatic), None);
        assert_eq!(event.parent(), Some(&automatic));
        event.inherit(None, None);
        assert_eq!((event.parent(), event.lineage.is_none()), (None, true));
    }
}
