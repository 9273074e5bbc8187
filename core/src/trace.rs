//! Dispatch tracing (`BusBuilder::trace_dispatch`, off by default): each
//! handler call runs inside a `tracing` span whose parent is the span that
//! was current when its event was published.
//!
//! A publish (on a bus with the option on) keeps a clone of the current
//! span in the event (`Event::publisher_span`); every call of a handler
//! on that event, on whatever thread (a worker, a blocking subscription's
//! thread, a tokio task, a replay), enters a `dispatch` span made a child
//! of it, explicitly rather than of whatever the calling thread has
//! current. A handler publishing from its call publishes inside its
//! dispatch span, so the chain runs on: the dispatch span of a chat line's
//! handler is the parent of the dispatch span of the trivia round it
//! published.
//!
//! Cost: off, one branch per publish and per call. On, a span clone per
//! publish (kept as long as the event lives: in history too, so a
//! publisher's span closes only once its events have all gone), and a span
//! per call, made inside the call's `catch_unwind`, so a subscriber that
//! panics is counted as the call's panic and never leaves a worker's call
//! slot set.

use tracing::Span;

use crate::event::{Cause, Event};

/// The span current on this thread, to hold with an event published now
/// (`None` when there is none, or it is disabled).
pub(crate) fn publisher() -> Option<Span> {
    let span = Span::current();
    (!span.is_none()).then_some(span)
}

/// The span of one call of the handler `plugin` subscribed with `pattern`,
/// for `event`: a child of its publisher's span (a root without one).
#[cold]
pub(crate) fn span(event: &Event, plugin: &str, pattern: &str) -> Span {
    let parent = event.parent();
    tracing::info_span!(
        parent: event.publisher_span().and_then(Span::id),
        "dispatch",
        event = event.name(),
        sequence = event.sequence(),
        plugin,
        pattern,
        parent.id = parent.map(|cause| tracing::field::display(cause.id())),
        parent.sequence = parent.and_then(Cause::sequence),
    )
}

/// Runs `call` (a handler call of `plugin`'s subscription to `pattern`, for
/// `event`) inside its dispatch span when `on`; when not, just runs it.
#[inline]
pub(crate) fn call<R>(
    on: bool,
    event: &Event,
    plugin: &str,
    pattern: &str,
    call: impl FnOnce() -> R,
) -> R {
    if !on {
        return call();
    }
    let span = span(event, plugin, pattern);
    let _entered = span.enter();
    call()
}

/// As [`call`], for the start of an async call: the span comes back too,
/// for the future to be polled (and dropped) in, with [`instrument`].
#[cfg(feature = "tokio")]
#[inline]
pub(crate) fn start<R>(
    on: bool,
    event: &Event,
    plugin: &str,
    pattern: &str,
    start: impl FnOnce() -> R,
) -> (R, Option<Span>) {
    if !on {
        return (start(), None);
    }
    let span = span(event, plugin, pattern);
    let started = span.in_scope(start);
    (started, Some(span))
}

/// `future`, polled and dropped inside `span` when there is one
/// (`tracing::Instrument`).
#[cfg(feature = "tokio")]
pub(crate) fn instrument<'a, T: 'a>(
    future: std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>,
    span: Option<Span>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>> {
    match span {
        None => future,
        Some(span) => Box::pin(tracing::Instrument::instrument(future, span)),
    }
}
