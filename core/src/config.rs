//! A bus's configuration, as its builder checked it, and the error hook's
//! type.

use crate::event::Event;
use crate::observe::Observer;
use crate::queue::Overflow;

/// The hook called for every handler error and panic: the event, the
/// plugin whose handler failed, and the error.
pub type ErrorHook = Box<dyn Fn(&Event, &str, &(dyn std::error::Error + 'static)) + Send + Sync>;

#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) workers: usize,
    pub(crate) capacity: usize,
    /// `None`: a sixteenth of the capacity.
    pub(crate) priority_reserve: Option<usize>,
    pub(crate) batch_size: usize,
    pub(crate) history_size: usize,
    pub(crate) max_depth: u32,
    pub(crate) overflow: Overflow,
    pub(crate) starvation_limit: u32,
    pub(crate) name: String,
    pub(crate) drain_timeout: std::time::Duration,
    /// Each handler call in a `tracing` span (`trace.rs`).
    pub(crate) trace_dispatch: bool,
    #[cfg(feature = "tokio")]
    pub(crate) runtime: Option<tokio::runtime::Handle>,
    pub(crate) observer: ObserverSlot,
}

/// The bus's observer, if any (a type of its own for `Debug`).
#[derive(Clone, Default)]
pub(crate) struct ObserverSlot(pub(crate) Option<std::sync::Arc<dyn Observer>>);

impl std::fmt::Debug for ObserverSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "Some(<observer>)" } else { "None" })
    }
}
