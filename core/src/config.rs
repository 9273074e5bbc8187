//! A bus's configuration, as its builder checked it, and the error hook's
//! type.

use crate::event::Event;
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
    #[cfg(feature = "tokio")]
    pub(crate) runtime: Option<tokio::runtime::Handle>,
}
