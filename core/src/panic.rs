//! Containing panics of user code that runs outside a handler call: a
//! payload's or a handler's `Drop`, the error hook, a panic payload's own
//! `Drop`. Each is caught, counted where the caller says, and logged; none
//! unwinds into the bus.

use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::loom::{AtomicU64, Ordering};

/// Drops a caught panic's payload; a payload whose own `Drop` panics is
/// leaked rather than allowed to unwind further.
pub(crate) fn discard_panic(payload: Box<dyn std::any::Any + Send>) {
    if let Err(again) = catch_unwind(AssertUnwindSafe(move || drop(payload))) {
        std::mem::forget(again);
    }
}

/// Drops `value`, catching a panic of its `Drop`, counting it in `stray`
/// and logging it.
pub(crate) fn drop_caught<T>(value: T, stray: &AtomicU64) {
    if let Err(panic) = catch_unwind(AssertUnwindSafe(move || drop(value))) {
        discard_panic(panic);
        // Relaxed: a statistic.
        stray.fetch_add(1, Ordering::Relaxed);
        tracing::error!("a handler or error hook panicked while it was dropped");
    }
}
