//! The native half of the Python package `switchboard_bus`.
//!
//! Python sees two classes, both private to the package (`_native`):
//!
//! * `Core` (`core.rs`): the subscription registry (patterns in first-seen order, as
//!   the seed's dict of lists keeps them), the matcher index built from it
//!   (`switchboard_matcher::PatternSet`), the publish sequence, the history
//!   of Python events, and a `switchboard::Bus` whose queues and worker
//!   carry the events published without waiting.
//! * `Inbox` (`inbox.rs`): one per event loop: the calls the bus's worker matched for
//!   that loop, handed over in batches with one wake-up (a byte on a pipe
//!   the loop watches) per batch, and the bound on what may wait there.
//!
//! No Rust thread ever takes the GIL: the worker matches names and queues
//! calls holding only Rust data and `Py` references, and every Python call
//! happens on the event loop's thread, in Python code.

mod core;
mod inbox;

use pyo3::prelude::*;

/// The module `switchboard_bus._native`.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<core::Core>()?;
    m.add_class::<inbox::Inbox>()?;
    m.add("MAX_PATTERN_LEN", switchboard_matcher::MAX_PATTERN_LEN)?;
    Ok(())
}
