//! One error type per operation. `Display` says what was wrong; errors from
//! `publish` give the event back.

use std::fmt;

use crate::event::Event;

/// The longest event name or subscription pattern the bus accepts, in bytes.
pub const MAX_NAME_LEN: usize = 1024;

/// What is wrong with an event name or a subscription pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum NameError {
    /// It is the empty string.
    Empty,
    /// It is longer than [`MAX_NAME_LEN`] bytes.
    TooLong {
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// It contains a NUL character.
    Nul,
}

impl NameError {
    pub(crate) fn check(text: &str) -> Result<(), NameError> {
        if text.is_empty() {
            Err(NameError::Empty)
        } else if text.len() > MAX_NAME_LEN {
            Err(NameError::TooLong { len: text.len(), max: MAX_NAME_LEN })
        } else if text.contains('\0') {
            Err(NameError::Nul)
        } else {
            Ok(())
        }
    }
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameError::Empty => f.write_str("it is empty"),
            NameError::TooLong { len, max } => write!(f, "it is {len} bytes long, more than {max}"),
            NameError::Nul => f.write_str("it contains a NUL character"),
        }
    }
}

impl std::error::Error for NameError {}

/// Why [`BusBuilder::build`](crate::BusBuilder::build) failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum BuildError {
    /// `workers(0)`: nothing would ever dispatch.
    ZeroWorkers,
    /// `capacity(0)`: no event could ever be queued.
    ZeroCapacity,
    /// `batch_size(0)`: workers could take nothing.
    ZeroBatchSize,
    /// `priority_reserve(n)` with `2 * n >= capacity`: `Low` events could
    /// never be queued.
    ReserveTooLarge {
        /// The reserve asked for.
        reserve: usize,
        /// The capacity.
        capacity: usize,
    },
    /// A size the bus would have to allocate up front is past what it
    /// accepts (queue slots and history slots are allocated at build).
    TooLarge {
        /// Which setting: `workers`, `capacity`, `history_size`,
        /// `batch_size` or `priority_reserve`.
        what: &'static str,
        /// The value asked for.
        value: usize,
        /// The largest accepted.
        max: usize,
    },
    /// The operating system refused to start a worker thread.
    Spawn(std::io::Error),
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildError::ZeroWorkers => f.write_str("a bus needs at least one worker"),
            BuildError::ZeroCapacity => f.write_str("queue capacity must be at least 1"),
            BuildError::ZeroBatchSize => f.write_str("batch size must be at least 1"),
            BuildError::ReserveTooLarge { reserve, capacity } => write!(
                f,
                "a priority reserve of {reserve} leaves no room for Low events in a capacity of {capacity}"
            ),
            BuildError::TooLarge { what, value, max } => {
                write!(f, "{what} of {value} is too large: at most {max}")
            }
            BuildError::Spawn(e) => write!(f, "could not start a worker thread: {e}"),
        }
    }
}

impl std::error::Error for BuildError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BuildError::Spawn(e) => Some(e),
            _ => None,
        }
    }
}

/// Why a subscribe call failed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SubscribeError {
    /// The pattern is not acceptable.
    InvalidPattern {
        /// The pattern as given (cut to 64 characters).
        pattern: String,
        /// What is wrong with it.
        reason: NameError,
    },
    /// The plugin name is not acceptable.
    InvalidPlugin {
        /// What is wrong with it.
        reason: NameError,
    },
    /// The bus has been shut down.
    Closed,
    /// A blocking subscription's thread could not be started (the message
    /// of the system's error).
    Spawn(String),
    /// An async handler was subscribed with no tokio runtime to run it:
    /// none given to the builder, and none current.
    NoRuntime,
    /// An option is out of its range.
    InvalidOption {
        /// Which option: `concurrency`.
        what: &'static str,
        /// The value asked for.
        value: usize,
        /// The largest accepted.
        max: usize,
    },
    /// `subscribe_replay` with a handler it cannot call on the subscribing
    /// thread: an async one.
    CannotReplay {
        /// Why.
        reason: &'static str,
    },
}

impl fmt::Display for SubscribeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubscribeError::InvalidPattern { pattern, reason } => {
                write!(f, "invalid pattern {pattern:?}: {reason}")
            }
            SubscribeError::InvalidPlugin { reason } => write!(f, "invalid plugin name: {reason}"),
            SubscribeError::Closed => f.write_str("the bus is shut down"),
            SubscribeError::Spawn(reason) => {
                write!(f, "cannot start a blocking subscription's thread: {reason}")
            }
            SubscribeError::NoRuntime => f.write_str(
                "no tokio runtime for an async handler: give one to BusBuilder::runtime or \
                 subscribe from inside a runtime",
            ),
            SubscribeError::InvalidOption { what, value, max } => {
                write!(f, "{what} of {value} is too large: at most {max}")
            }
            SubscribeError::CannotReplay { reason } => {
                write!(f, "cannot replay history to this handler: {reason}")
            }
        }
    }
}

impl SubscribeError {
    /// Whether the bus was shut down.
    pub fn is_closed(&self) -> bool {
        matches!(self, SubscribeError::Closed)
    }
}

impl std::error::Error for SubscribeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SubscribeError::InvalidPattern { reason, .. }
            | SubscribeError::InvalidPlugin { reason } => Some(reason),
            SubscribeError::Closed
            | SubscribeError::Spawn(_)
            | SubscribeError::NoRuntime
            | SubscribeError::InvalidOption { .. }
            | SubscribeError::CannotReplay { .. } => None,
        }
    }
}

/// Why a publish call did not accept the event. Every variant gives the
/// event back, so nothing is lost silently.
#[derive(Debug)]
#[non_exhaustive]
pub enum PublishError {
    /// The bus has been shut down.
    Closed(Box<Event>),
    /// The queue was full and the overflow policy is
    /// [`Overflow::Error`](crate::Overflow::Error), or a handler published
    /// into a full queue and the room handlers may overshoot by was used up
    /// too.
    Full(Box<Event>),
    /// An ordered subscription's backlog was full and its overflow policy is
    /// [`Overflow::Error`](crate::Overflow::Error).
    BacklogFull {
        /// The event.
        event: Box<Event>,
        /// The subscription whose backlog was full.
        subscription: crate::SubscriptionId,
    },
    /// The queues, or an ordered subscription's backlog, were full under
    /// [`Overflow::Block`](crate::Overflow::Block), and waiting for room on
    /// this thread (a current-thread tokio runtime's, while async handlers
    /// run on a current-thread runtime) could starve the handlers that make
    /// room: use `Bus::publish_async` (feature `tokio`) there.
    WouldBlock(Box<Event>),
    /// The event's name is not acceptable.
    InvalidName {
        /// The event.
        event: Box<Event>,
        /// What is wrong with its name.
        reason: NameError,
    },
    /// Published from a handler chain deeper than the bus allows (a loop
    /// such as A → B → A ends here).
    DepthExceeded {
        /// The event.
        event: Box<Event>,
        /// The depth it would have had.
        depth: u32,
        /// The bus's maximum.
        max: u32,
    },
}

impl PublishError {
    /// Whether the queue or a backlog was full ([`PublishError::Full`],
    /// [`PublishError::BacklogFull`], [`PublishError::WouldBlock`]): trying
    /// again later may succeed.
    pub fn is_full(&self) -> bool {
        matches!(
            self,
            PublishError::Full(_) | PublishError::BacklogFull { .. } | PublishError::WouldBlock(_)
        )
    }

    /// Whether the bus was shut down.
    pub fn is_closed(&self) -> bool {
        matches!(self, PublishError::Closed(_))
    }

    /// The event that was not accepted, by reference.
    pub fn event(&self) -> &Event {
        match self {
            PublishError::Closed(e) | PublishError::Full(e) | PublishError::WouldBlock(e) => e,
            PublishError::InvalidName { event, .. }
            | PublishError::DepthExceeded { event, .. }
            | PublishError::BacklogFull { event, .. } => event,
        }
    }

    /// The event that was not accepted.
    pub fn into_event(self) -> Event {
        match self {
            PublishError::Closed(e) | PublishError::Full(e) | PublishError::WouldBlock(e) => *e,
            PublishError::InvalidName { event, .. }
            | PublishError::DepthExceeded { event, .. }
            | PublishError::BacklogFull { event, .. } => *event,
        }
    }
}

impl fmt::Display for PublishError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PublishError::Closed(_) => f.write_str("the bus is shut down"),
            PublishError::Full(_) => f.write_str("the queue is full"),
            PublishError::BacklogFull { subscription, .. } => {
                write!(f, "the backlog of subscription {subscription} is full")
            }
            PublishError::WouldBlock(_) => f.write_str(
                "the queue or a backlog is full, and waiting on a current-thread tokio runtime \
                 that runs async handlers could wait forever; use publish_async",
            ),
            PublishError::InvalidName { event, reason } => {
                write!(f, "invalid event name {:?}: {reason}", truncate(event.name()))
            }
            PublishError::DepthExceeded { depth, max, .. } => {
                write!(f, "dispatch depth {depth} exceeds the maximum of {max}")
            }
        }
    }
}

impl std::error::Error for PublishError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PublishError::InvalidName { reason, .. } => Some(reason),
            _ => None,
        }
    }
}

/// Why [`Bus::history`](crate::Bus::history) failed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HistoryError {
    /// The filter pattern is not acceptable.
    InvalidPattern {
        /// The pattern as given (cut to 64 characters).
        pattern: String,
        /// What is wrong with it.
        reason: NameError,
    },
}

impl fmt::Display for HistoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HistoryError::InvalidPattern { pattern, reason } => {
                write!(f, "invalid history filter {pattern:?}: {reason}")
            }
        }
    }
}

impl std::error::Error for HistoryError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            HistoryError::InvalidPattern { reason, .. } => Some(reason),
        }
    }
}

/// [`Bus::flush_timeout`](crate::Bus::flush_timeout) gave up before every
/// earlier event was dispatched.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct FlushTimeout {
    /// How many events (handler-published ones included) the flush was
    /// still waiting for when it gave up. Zero when it could not wait at
    /// all: another flush held the turn until the deadline.
    pub pending: u64,
}

impl fmt::Display for FlushTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "flush timed out with {} events still being dispatched", self.pending)
    }
}

impl std::error::Error for FlushTimeout {}

/// An unsubscribe-and-wait call with a timeout gave up waiting. The
/// subscriptions are removed all the same: no new call of them starts.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct WaitTimeout {
    /// How many subscriptions were removed.
    pub removed: usize,
    /// The removed subscriptions that still had a call running at the
    /// deadline.
    pub still_running: Vec<crate::SubscriptionId>,
}

impl fmt::Display for WaitTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "removed {} subscriptions, but {} still had calls running at the deadline",
            self.removed,
            self.still_running.len()
        )
    }
}

impl std::error::Error for WaitTimeout {}

/// [`Bus::shutdown_timeout`](crate::Bus::shutdown_timeout) returned before
/// the drain and the join were done. The bus is closed all the same, and
/// the workers go on draining.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShutdownTimeout {
    /// Events still queued or being dispatched when it gave up.
    pub pending: u64,
    /// Worker threads still running.
    pub running_workers: usize,
    /// Whether it was called from one of the bus's own handlers, which
    /// cannot wait for their own worker.
    pub from_handler: bool,
}

impl fmt::Display for ShutdownTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.from_handler {
            write!(f, "shutdown called from a handler cannot wait for its own worker")?;
        } else {
            write!(f, "shutdown timed out")?;
        }
        write!(f, " ({} events pending, {} workers running)", self.pending, self.running_workers)
    }
}

impl std::error::Error for ShutdownTimeout {}

/// What the error hook is given for an event a blocking or async
/// subscription's backlog refused under
/// [`Overflow::Error`](crate::Overflow::Error) (counted in
/// [`Stats::backlog_dropped`](crate::Stats::backlog_dropped)).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct BacklogFull {
    /// The backlog's capacity.
    pub capacity: usize,
}

impl fmt::Display for BacklogFull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the subscription's backlog of {} events is full: the event is refused for it",
            self.capacity
        )
    }
}

impl std::error::Error for BacklogFull {}

/// The error a typed handler reports when an event's payload is not the type
/// it expects.
#[derive(Debug)]
#[non_exhaustive]
pub enum PayloadError {
    /// The event carries a Rust value of another type.
    WrongType {
        /// The type the handler expects.
        expected: &'static str,
        /// The type the event carries.
        found: &'static str,
    },
    /// The event carries JSON that does not deserialise into the expected type.
    Json {
        /// The type the handler expects.
        expected: &'static str,
        /// Why deserialising failed.
        error: serde_json::Error,
    },
}

impl fmt::Display for PayloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PayloadError::WrongType { expected, found } => {
                write!(f, "payload is a {found}, not a {expected}")
            }
            PayloadError::Json { expected, error } => {
                write!(f, "payload does not deserialise into a {expected}: {error}")
            }
        }
    }
}

impl std::error::Error for PayloadError {}

/// An async handler call that ran past its subscription's
/// [`timeout`](crate::SubscribeOptions::timeout): it was cancelled, and is
/// reported to the error hook like an `Err` (downcast the hook's error to
/// tell it apart).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandlerTimeout {
    /// The subscription's time limit.
    pub limit: std::time::Duration,
}

impl fmt::Display for HandlerTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "handler timed out after {:?} and was cancelled", self.limit)
    }
}

impl std::error::Error for HandlerTimeout {}

/// A handler that panicked, reported to the error hook like an `Err`.
#[derive(Debug)]
pub struct HandlerPanic {
    message: String,
}

impl HandlerPanic {
    /// The panic a caught payload (from `catch_unwind`) stands for: its
    /// message when it is a string, else a note saying it is not.
    pub fn new(payload: &(dyn std::any::Any + Send)) -> HandlerPanic {
        let message = if let Some(s) = payload.downcast_ref::<&str>() {
            (*s).to_owned()
        } else if let Some(s) = payload.downcast_ref::<String>() {
            s.clone()
        } else {
            "a non-string panic payload".to_owned()
        };
        HandlerPanic { message }
    }

    /// The panic's message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for HandlerPanic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "handler panicked: {}", self.message)
    }
}

impl std::error::Error for HandlerPanic {}

pub(crate) fn truncate(text: &str) -> String {
    match text.char_indices().nth(64) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_owned(),
    }
}
