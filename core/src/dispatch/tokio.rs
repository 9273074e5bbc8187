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

use crate::error::HandlerTimeout;
use crate::handler::{AsyncFn, HandlerFuture, HandlerResult};
use crate::mailbox::{Entry, Mailbox, Runner, Work};
use crate::shared::Shared;
use crate::subscription::Subscription;

/// Runs `f` on tokio's blocking pool, marked as off the runtime (see
/// `context::off_runtime`), and resumes its panic, if any, here.
pub(crate) async fn on_blocking_pool<R: Send + 'static>(
    f: impl FnOnce() -> R + Send + 'static,
) -> R {
    let ran = tokio::task::spawn_blocking(move || {
        let _mark = crate::context::enter_off_runtime();
        f()
    })
    .await;
    match ran {
        Ok(r) => r,
        Err(join) => std::panic::resume_unwind(join.into_panic()),
    }
}

/// Starts a runner task for `sub`'s backlog (it is scheduled).
pub(crate) fn spawn_runner(shared: &Arc<Shared>, sub: &Arc<Subscription>) {
    let Some(Mailbox { runner: Runner::Tokio(runner), .. }) = sub.mailbox.as_deref() else {
        return;
    };
    // Made here and moved into the task, so that it is dropped with the
    // task even if the task never runs (its runtime has shut down).
    let guard = CallGuard {
        shared: shared.clone(),
        sub: sub.clone(),
        bucket: None,
        batch: None,
        rest: std::collections::VecDeque::new(),
        finished: Vec::new(),
        abandon: true,
    };
    runner.handle.spawn(run(guard));
}

async fn run(mut guard: CallGuard) {
    let (shared, sub) = (guard.shared.clone(), guard.sub.clone());
    let Some(mailbox) = &sub.mailbox else { return };
    let Runner::Tokio(runner) = &mailbox.runner else { return };
    if runner.permits.is_none() {
        run_in_batches(guard).await;
        return;
    }
    loop {
        let permit = match &runner.permits {
            // The semaphore is never closed.
            Some(permits) => permits.clone().acquire_owned().await.ok(),
            None => None,
        };
        let Some((entry, work)) = mailbox.next(&shared.env()) else {
            guard.abandon = false;
            return;
        };
        let Work::Async(f) = work else {
            mailbox.done(&shared.env(), entry.bucket, Some(work));
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
                    batch: None,
                    rest: std::collections::VecDeque::new(),
                    finished: Vec::new(),
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

/// The runner of a subscription whose calls run one at a time, in this
/// task: a batch of events taken at once (one lock, where an event at a
/// time contended with the workers pushing each one), called in order, and
/// ended together. A retire meanwhile stops the batch; a runtime that drops
/// the task mid-batch has the guard end the whole batch.
async fn run_in_batches(mut guard: CallGuard) {
    let (shared, sub) = (guard.shared.clone(), guard.sub.clone());
    let Some(mailbox) = &sub.mailbox else { return };
    let Runner::Tokio(runner) = &mailbox.runner else { return };
    loop {
        let env = shared.env();
        let Some(work) = mailbox.next_batch(&env, shared.config.batch_size, &mut guard.rest) else {
            guard.abandon = false;
            return;
        };
        let mut open = [0usize; 2];
        for entry in &guard.rest {
            open[entry.bucket] += 1;
        }
        guard.batch = Some(open);
        if let Work::Async(f) = &work {
            while let Some(entry) = guard.rest.pop_front() {
                if mailbox.is_retired() {
                    guard.rest.push_front(entry);
                    break;
                }
                call(&shared, &sub, &entry, f, runner.timeout).await;
                guard.finished.push(entry.event);
            }
        }
        // The retired rest, dropped before their flush count ends (lost if
        // shutdown retired it).
        if !guard.rest.is_empty() && mailbox.retired_losing() {
            shared.drain_lost(&sub, guard.rest.len());
        }
        shared.drop_caught(std::mem::take(&mut guard.rest));
        guard.end_batch(Some(work));
        guard.let_go();
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
    /// The batch in progress ([`run_in_batches`]): how many of its events
    /// are in each flush bucket.
    batch: Option<[usize; 2]>,
    /// Its events not yet called: lost if the task is dropped.
    rest: std::collections::VecDeque<Entry>,
    /// Its events called, let go of once the batch is counted out (see
    /// `threads::run`).
    finished: Vec<Arc<crate::event::Event>>,
    /// Give up the backlog when dropped.
    abandon: bool,
}

impl CallGuard {
    /// Ends the call in progress, dropping `work` as
    /// [`Mailbox::done`] says.
    fn end_call(&mut self, work: Option<Work>) {
        if let (Some(bucket), Some(mailbox)) = (self.bucket.take(), &self.sub.mailbox) {
            mailbox.done(&self.shared.env(), bucket, work);
        }
    }

    /// Lets go of the batch's called events (recycling their blocks), once
    /// the batch is counted out.
    fn let_go(&mut self) {
        for event in self.finished.drain(..) {
            self.shared.recycle_caught(event);
        }
    }

    /// Ends the batch in progress, dropping `work` as
    /// [`Mailbox::done_batch`] says.
    fn end_batch(&mut self, work: Option<Work>) {
        if let (Some(open), Some(mailbox)) = (self.batch.take(), &self.sub.mailbox) {
            mailbox.done_batch(&self.shared.env(), open, work);
        }
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        let sub = self.sub.clone();
        let Some(mailbox) = &sub.mailbox else { return };
        // A batch's events not yet called are lost as the backlog is (unless
        // the subscription retired: they were discarded), and counted so
        // before they leave their flush count.
        let rest = std::mem::take(&mut self.rest);
        if let Some(first) = rest.front().filter(|_| !mailbox.is_retired()) {
            let n = rest.len() as u64;
            super::count_lost(&self.shared, &self.sub, mailbox, first.event.name(), n, "abandoned");
        } else if !rest.is_empty() && mailbox.retired_losing() {
            self.shared.drain_lost(&self.sub, rest.len());
        }
        self.shared.drop_caught(rest);
        self.end_call(None);
        self.end_batch(None);
        self.let_go();
        if self.abandon {
            let lost = mailbox.abandon(&self.shared.env());
            if let Some(first) = &lost.first {
                // Relaxed: a statistic.
                let counted = &self.shared.counters.backlog_dropped;
                counted.fetch_add(lost.count, crate::loom::Ordering::Relaxed);
                super::log_lost(&self.shared, &self.sub, first, lost.count, "abandoned");
                tracing::warn!(
                    plugin = &*self.sub.plugin,
                    lost = lost.count,
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
    let timing = sub
        .observed
        .as_ref()
        .map(|_| (crate::observe::since(entry.event.timestamp()), std::time::Instant::now()));
    // The future is made, and (with no span or time limit to poll it in)
    // polled the first time, in one handler scope: most handlers' futures
    // are ready at once, and then that is the whole call, with no boxing
    // and no scope entered again to poll or drop it.
    let started = std::future::poll_fn(|cx| {
        let _scope = super::scope(shared, sub, entry);
        let (trace, event, pattern) =
            (shared.config.trace_dispatch, &entry.event, sub.pattern.as_str());
        let made = catch_unwind(AssertUnwindSafe(|| {
            crate::trace::start(trace, event, &sub.plugin, pattern, || f(event.clone()))
        }));
        let (mut future, span) = match made {
            Ok(made) => made,
            Err(panic) => return Poll::Ready(Err(panic)),
        };
        if span.is_some() || timeout.is_some() {
            return Poll::Ready(Ok(First::Pending(future, span)));
        }
        // The future stays out of the unwinding frames: a panic in `poll`
        // must not drop it mid-unwind (a panicking `Drop` would abort).
        let polled = catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(cx)));
        Poll::Ready(match polled {
            Ok(Poll::Pending) => Ok(First::Pending(future, None)),
            Ok(Poll::Ready(result)) => {
                // As `Scoped`'s `Drop`: a panicking `Drop` is a stray
                // panic, not the call's.
                shared.drop_caught(future);
                Ok(First::Ready(result))
            }
            Err(panic) => {
                shared.drop_caught(future);
                Err(panic)
            }
        })
    })
    .await;
    let outcome = match started {
        Err(panic) => Err(panic),
        Ok(First::Ready(result)) => Ok(result),
        Ok(First::Pending(future, span)) => {
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
            CatchUnwind(crate::trace::instrument(limited, span)).await
        }
    };
    if let (Some(observed), Some((waited, at))) = (&sub.observed, timing) {
        observed.finished(waited, at);
    }
    super::report(shared, sub, &entry.event, outcome);
}

/// What the first poll of a call left: its result, or the future to poll
/// on (with the span to poll it in).
enum First {
    Ready(HandlerResult),
    Pending(HandlerFuture, Option<tracing::Span>),
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
        let _scope = super::scope(&this.shared, &this.sub, this.entry);
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
        let _scope = super::scope(&self.shared, &self.sub, self.entry);
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
