//! Waiting for the bus: flush, and shutdown.

use std::time::{Duration, Instant};

use super::{deadline, Bus};
use crate::context::in_handler_of;
use crate::error::{FlushTimeout, ShutdownTimeout};

impl Bus {
    /// Returns once every event published before the call has been
    /// dispatched (all its handlers have returned), and so have the events
    /// those handlers published, transitively: a flush waits for whole
    /// cascades (bounded by `max_depth`).
    ///
    /// Called from inside a handler it returns at once: the event being
    /// handled was published before the call and cannot finish while its
    /// handler waits. On a multi-thread tokio runtime's thread it waits in
    /// `block_in_place`.
    ///
    /// # Panics
    ///
    /// On a current-thread tokio runtime's thread while async handlers run
    /// on a current-thread runtime: waiting there could starve them forever
    /// (use `flush_async`).
    pub fn flush(&self) {
        let shared = self.shared();
        if in_handler_of(shared.id) {
            return;
        }
        shared.blocking_wait("flush", || {
            let _ = shared.epochs.flush(None);
        });
    }

    /// [`flush`](Bus::flush) that waits at most `timeout`.
    ///
    /// # Errors
    ///
    /// [`FlushTimeout`] when events published before the call were still
    /// being dispatched at the deadline, with how many. From inside a handler
    /// it returns `Ok` at once, as `flush` does.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use switchboard::{Bus, Event};
    ///
    /// let bus = Bus::new()?;
    /// bus.publish(Event::new("trivia.started", serde_json::Value::Null, "trivia"))?;
    /// bus.flush_timeout(Duration::from_secs(5))?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn flush_timeout(&self, timeout: Duration) -> Result<(), FlushTimeout> {
        let shared = self.shared();
        if in_handler_of(shared.id) {
            return Ok(());
        }
        shared.blocking_wait("flush", || {
            shared.epochs.flush(deadline(timeout)).map_err(|pending| FlushTimeout { pending })
        })
    }

    /// [`flush`](Bus::flush) for async code: waits, without blocking a
    /// runtime thread, until every event published before the call has been
    /// dispatched and its handlers (async ones included) have finished.
    /// From inside a handler it returns at once.
    #[cfg(feature = "tokio")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
    pub async fn flush_async(&self) {
        if in_handler_of(self.shared().id) {
            return;
        }
        let bus = self.clone();
        crate::dispatch::tokio::on_blocking_pool(move || {
            let _ = bus.shared().epochs.flush(None);
        })
        .await;
    }

    /// Stops accepting events, dispatches everything already accepted, joins
    /// the workers and drops every handler and the error hook. Idempotent.
    /// Later publishes get [`PublishError::Closed`](crate::PublishError::Closed), and publishers waiting
    /// for room are released with it.
    ///
    /// Any number of threads may call it at once: each returns only after
    /// the drain and the join. Called from inside a handler it cannot wait
    /// for its own thread: it closes the bus and returns, and the workers
    /// finish draining by themselves.
    ///
    /// # Panics
    ///
    /// On a current-thread tokio runtime's thread while async handlers run
    /// on a current-thread runtime, where waiting would starve them (as
    /// `flush` does): use `shutdown_async` there. The
    /// bus is closed all the same. On a multi-thread runtime's thread it
    /// waits in `block_in_place`.
    pub fn shutdown(&self) {
        let _ = self.shutdown_until(None);
    }

    /// [`shutdown`](Bus::shutdown) that waits at most `timeout` for the drain
    /// and the join.
    ///
    /// # Errors
    ///
    /// [`ShutdownTimeout`] when the deadline passed first (or when called
    /// from a handler, which cannot wait): the bus is closed all the same and
    /// the workers go on draining; it says how many events were still
    /// pending and how many workers still running.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use switchboard::Bus;
    ///
    /// let bus = Bus::new()?;
    /// bus.shutdown_timeout(Duration::from_secs(5))?;
    /// assert!(bus.is_closed());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Panics
    ///
    /// As [`shutdown`](Bus::shutdown).
    pub fn shutdown_timeout(&self, timeout: Duration) -> Result<(), ShutdownTimeout> {
        self.shutdown_until(deadline(timeout))
    }

    pub(super) fn shutdown_until(&self, deadline: Option<Instant>) -> Result<(), ShutdownTimeout> {
        let shared = self.shared();
        if in_handler_of(shared.id) {
            return shared.shutdown(deadline);
        }
        match shared.wait_here(|| shared.shutdown(deadline)) {
            Some(result) => result,
            None => {
                shared.close();
                panic!(
                    "Bus::shutdown called on a current-thread tokio runtime that runs async \
                     handlers would wait forever; use shutdown_async"
                );
            }
        }
    }

    /// [`shutdown`](Bus::shutdown) for async code: waits for the drain, the
    /// handlers' drop and the join without blocking a runtime thread, so
    /// async handlers on this very runtime (a current-thread one included)
    /// work through their backlogs meanwhile. From inside a handler it only
    /// closes the bus, as `shutdown` does.
    #[cfg(feature = "tokio")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
    pub async fn shutdown_async(&self) {
        let shared = self.shared();
        if in_handler_of(shared.id) {
            shared.close();
            return;
        }
        let bus = self.clone();
        crate::dispatch::tokio::on_blocking_pool(move || {
            let _ = bus.shared().shutdown(None);
        })
        .await;
    }
}
