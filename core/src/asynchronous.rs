//! Async handlers on a tokio runtime (cargo feature `tokio`).
//!
//! An async subscription is a mailbox subscription (`mailbox.rs`) whose
//! runner is a task on the subscription's runtime: when its backlog goes
//! from empty to not empty, a runner task is spawned; it takes the events in
//! order and runs the handler's future, one at a time (`concurrency` 1, the
//! default, or ordered) or up to `concurrency` at once (each in its own task,
//! holding a semaphore permit taken *before* the event is taken, so that no
//! call starts after an unsubscribe). A dispatch worker only puts the event
//! in the backlog: it never waits for, or runs, async code.
//!
//! Each poll of a handler's future runs inside a handler scope (publishing
//! from it is one level deeper and counts in the event's flush bucket;
//! `Bus::current` works) and inside `catch_unwind`, so a panic is counted
//! like a sync handler's. A `timeout` cancels the future (drops it) and
//! reports a [`HandlerTimeout`].

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::Semaphore;

use crate::error::HandlerTimeout;
use crate::handler::{AsyncFn, HandlerFuture, HandlerResult};
use crate::mailbox::{report, Entry, Mailbox, Runner, Work};
use crate::shared::Shared;
use crate::subscription::Subscription;
use crate::worker::HandlerScope;

thread_local! {
    static OFF_RUNTIME: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether this thread runs one of the bus's own `spawn_blocking` closures
/// (the `_async` forms'), where waiting is what it is there for, whatever
/// the runtime's flavour.
pub(crate) fn off_runtime() -> bool {
    OFF_RUNTIME.with(|c| c.get())
}

/// Runs `f` on tokio's blocking pool, marked as [`off_runtime`], and
/// resumes its panic, if any, here.
pub(crate) async fn on_blocking_pool<R: Send + 'static>(
    f: impl FnOnce() -> R + Send + 'static,
) -> R {
    struct Mark;
    impl Drop for Mark {
        fn drop(&mut self) {
            OFF_RUNTIME.with(|c| c.set(false));
        }
    }
    let ran = tokio::task::spawn_blocking(move || {
        OFF_RUNTIME.with(|c| c.set(true));
        let _mark = Mark;
        f()
    })
    .await;
    match ran {
        Ok(r) => r,
        Err(join) => std::panic::resume_unwind(join.into_panic()),
    }
}

/// Where and how an async subscription runs.
pub(crate) struct TokioRunner {
    handle: Handle,
    timeout: Option<Duration>,
    /// `None` when calls run one at a time in the runner task itself.
    permits: Option<Arc<Semaphore>>,
}

impl TokioRunner {
    pub(crate) fn new(
        handle: Handle,
        concurrency: usize,
        timeout: Option<Duration>,
    ) -> TokioRunner {
        let permits = (concurrency > 1).then(|| Arc::new(Semaphore::new(concurrency)));
        TokioRunner { handle, timeout, permits }
    }

    /// Whether its runtime is a current-thread one.
    pub(crate) fn on_current_thread(&self) -> bool {
        self.handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread
    }
}

/// Starts a runner task for `sub`'s backlog (it is scheduled).
pub(crate) fn spawn_runner(shared: &Arc<Shared>, sub: &Arc<Subscription>) {
    let Some(Mailbox { runner: Runner::Tokio(runner), .. }) = &sub.mailbox else { return };
    // Made here and moved into the task, so that it is dropped with the
    // task even if the task never runs (its runtime has shut down).
    let guard = CallGuard { shared: shared.clone(), sub: sub.clone(), bucket: None, abandon: true };
    runner.handle.spawn(run(guard));
}

async fn run(mut guard: CallGuard) {
    let (shared, sub) = (guard.shared.clone(), guard.sub.clone());
    let Some(mailbox) = &sub.mailbox else { return };
    let Runner::Tokio(runner) = &mailbox.runner else { return };
    loop {
        let permit = match &runner.permits {
            // The semaphore is never closed.
            Some(permits) => permits.clone().acquire_owned().await.ok(),
            None => None,
        };
        let Some((entry, work)) = mailbox.next(&shared) else {
            guard.abandon = false;
            return;
        };
        let Work::Async(f) = work else {
            mailbox.done(&shared, entry.bucket, Some(work));
            continue;
        };
        match permit {
            None => {
                guard.bucket = Some(entry.bucket);
                call(&shared, &sub, &entry, &f, runner.timeout).await;
                guard.end_call(Some(Work::Async(f)));
            }
            Some(permit) => {
                let mut call_guard = CallGuard {
                    shared: shared.clone(),
                    sub: sub.clone(),
                    bucket: Some(entry.bucket),
                    abandon: false,
                };
                let timeout = runner.timeout;
                runner.handle.spawn(async move {
                    let (shared, sub) = (call_guard.shared.clone(), call_guard.sub.clone());
                    call(&shared, &sub, &entry, &f, timeout).await;
                    call_guard.end_call(Some(Work::Async(f)));
                    drop(permit);
                });
            }
        }
    }
}

/// Ends what a runner or call task leaves behind when it is dropped before
/// it finishes (its runtime shut down): the call it was in is ended, and
/// (for a runner) the backlog is given up, counted as dropped, so `flush`
/// and `Unsubscribed::wait` never wait for a task that will not run.
struct CallGuard {
    shared: Arc<Shared>,
    sub: Arc<Subscription>,
    /// The flush bucket of the call in progress.
    bucket: Option<usize>,
    /// Give up the backlog when dropped.
    abandon: bool,
}

impl CallGuard {
    /// Ends the call in progress, dropping `work` as
    /// [`Mailbox::done`] says.
    fn end_call(&mut self, work: Option<Work>) {
        if let (Some(bucket), Some(mailbox)) = (self.bucket.take(), &self.sub.mailbox) {
            mailbox.done(&self.shared, bucket, work);
        }
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        self.end_call(None);
        let Some(mailbox) = &self.sub.mailbox else { return };
        if self.abandon {
            let lost = mailbox.abandon(&self.shared, &self.sub);
            if lost > 0 {
                tracing::warn!(
                    plugin = &*self.sub.plugin,
                    lost,
                    "an async subscription's runtime stopped running it: its backlog is dropped"
                );
            }
        }
    }
}

/// Runs one call to its end, reporting it as a sync call would.
async fn call(
    shared: &Arc<Shared>,
    sub: &Arc<Subscription>,
    entry: &Entry,
    f: &Arc<AsyncFn>,
    timeout: Option<Duration>,
) {
    let started = {
        let _scope = HandlerScope::enter(shared, sub, &entry.event, entry.bucket);
        catch_unwind(AssertUnwindSafe(|| f(entry.event.clone())))
    };
    let outcome = match started {
        Err(panic) => Err(panic),
        Ok(future) => {
            let scoped =
                Scoped { future: Some(future), shared: shared.clone(), sub: sub.clone(), entry };
            let limited: Pin<Box<dyn Future<Output = HandlerResult> + Send + '_>> = match timeout {
                None => Box::pin(scoped),
                Some(limit) => Box::pin(async move {
                    match tokio::time::timeout(limit, scoped).await {
                        Ok(result) => result,
                        Err(_elapsed) => Err(Box::new(HandlerTimeout { limit }) as _),
                    }
                }),
            };
            CatchUnwind(limited).await
        }
    };
    report(shared, sub, &entry.event, outcome);
}

/// Polls a handler's future inside its handler scope, and drops it there
/// too (when it finished, or when a timeout cancels it): what the future
/// holds is part of the call, so its `Drop` may use the bus as the call
/// may (a `flush` from it returns at once).
struct Scoped<'a> {
    future: Option<HandlerFuture>,
    shared: Arc<Shared>,
    sub: Arc<Subscription>,
    entry: &'a Entry,
}

impl Future for Scoped<'_> {
    type Output = HandlerResult;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<HandlerResult> {
        let this = self.get_mut();
        let _scope =
            HandlerScope::enter(&this.shared, &this.sub, &this.entry.event, this.entry.bucket);
        match &mut this.future {
            Some(future) => future.as_mut().poll(cx),
            // Never polled again after `Ready`.
            None => Poll::Pending,
        }
    }
}

impl Drop for Scoped<'_> {
    fn drop(&mut self) {
        let Some(future) = self.future.take() else { return };
        let _scope =
            HandlerScope::enter(&self.shared, &self.sub, &self.entry.event, self.entry.bucket);
        // A panicking `Drop` is caught and counted, as any stray panic.
        self.shared.drop_caught(future);
    }
}

/// `catch_unwind` for a future: each poll runs inside it, so a panic while
/// polling (a handler's, or the timer's when the runtime has no time
/// driver) becomes an outcome.
pub(crate) struct CatchUnwind<F>(pub(crate) F);

impl<F: Future + Unpin> Future for CatchUnwind<F> {
    type Output = std::thread::Result<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        match catch_unwind(AssertUnwindSafe(|| Pin::new(&mut this.0).poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(value)) => Poll::Ready(Ok(value)),
            Err(panic) => Poll::Ready(Err(panic)),
        }
    }
}
