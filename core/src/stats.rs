//! Counters that never become a contention point: publisher-side counters
//! are striped over cache lines by thread, worker-side counters belong to one
//! worker each. Reading sums them (a slightly stale but consistent-enough
//! view: each counter is exact once the bus is quiet).

use crossbeam_utils::CachePadded;

use crate::loom::{thread_local, AtomicU64, Ordering};

const STRIPES: usize = 16;

/// A snapshot of a bus's counters.
///
/// Where loss shows: under the default policies (`Overflow::Block` for the
/// queues and, unless a subscription asks otherwise, for its backlog)
/// nothing accepted is ever dropped, and `dropped`, `backlog_dropped` and
/// `drain_dropped` stay 0. Each counts the losses of one lossy choice:
/// `Overflow::Shed` on the bus, a lossy policy on a subscription's backlog,
/// and a shutdown whose drain timeout passed. Each loss is also logged at
/// `warn` (rate-limited) through `tracing`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct Stats {
    /// Events accepted by `publish` (each once, however many handlers it
    /// reaches; those later dropped included).
    pub published: u64,
    /// `published` by priority (`[low, normal, high]`).
    pub published_by_priority: [u64; 3],
    /// Handler calls that ran (one event reaching three handlers counts
    /// three; a replayed call counts too). A call a plugin's reload
    /// hand-over skipped, because the other instance handles that event,
    /// counts nothing.
    pub dispatched: u64,
    /// Events taken off the queues and matched (whether or not any handler matched).
    pub events_dispatched: u64,
    /// Handler invocations that returned `Err` or panicked.
    pub handler_errors: u64,
    /// Of `handler_errors`, those that panicked.
    pub handler_panics: u64,
    /// Events dropped by the `Shed` overflow policy.
    pub dropped: u64,
    /// Events given back to the publisher with an error (`Full`, `Closed`,
    /// invalid name).
    pub rejected: u64,
    /// Events refused because they were published too deep in a handler chain.
    pub depth_refused: u64,
    /// Panics raised on a worker outside any handler call and caught there:
    /// a payload's `Drop`, or an error's `Display` or `Drop`, or the
    /// dropping of a handler. Each is logged; the worker goes on.
    pub stray_panics: u64,
    /// Events waiting in the queues, per priority (`[low, normal, high]`),
    /// including those handlers published past the capacity.
    pub queue_depth: [u64; 3],
    /// Live subscriptions.
    pub subscriptions: u64,
    /// Events lost for one ordered, blocking or async subscription because
    /// its backlog was full and its policy is lossy (`Shed` drops the oldest
    /// waiting event, `Error` refuses a worker's hand-over), or because its
    /// tokio runtime stopped running it. The event still reached the
    /// others. 0 under `Block`.
    pub backlog_dropped: u64,
    /// Accepted events discarded at shutdown, still in a backlog when the
    /// [drain timeout](crate::BusBuilder::drain_timeout) passed.
    pub drain_dropped: u64,
}

/// One subscription's counters; see [`Bus::subscriptions`](crate::Bus::subscriptions).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct SubscriptionStats {
    /// Its handler's calls that ran, replayed ones included (as
    /// [`Stats::dispatched`] counts them), on a bus built with an
    /// [`Observer`](crate::Observer); 0 on others, which do not count calls
    /// per subscription.
    pub calls: u64,
    /// Its handler's errors and panics (and async timeouts).
    pub errors: u64,
    /// Of `errors`, panics.
    pub panics: u64,
    /// Of `errors`, async calls that ran past their
    /// [timeout](crate::SubscribeOptions::timeout).
    pub timeouts: u64,
    /// Events lost for it because its backlog was full under a lossy
    /// policy, or its runtime stopped (ordered, blocking and async
    /// subscriptions only; see [`Stats::backlog_dropped`]).
    pub backlog_dropped: u64,
    /// Events waiting in its backlog now.
    pub backlog: u64,
    /// Calls of it running now (ordered, blocking and async subscriptions;
    /// 0 for inline ones).
    pub running: u64,
}

#[derive(Debug, Default)]
struct Stripe {
    /// By priority.
    published: [AtomicU64; 3],
    dropped: AtomicU64,
    rejected: AtomicU64,
    depth_refused: AtomicU64,
}

/// Counters owned by one worker (only it writes them), or a stripe of the
/// mailbox runners' (written by the threads dealt it).
#[derive(Debug, Default)]
pub(crate) struct WorkerCounters {
    pub(crate) dispatched: AtomicU64,
    pub(crate) events: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) panics: AtomicU64,
    pub(crate) stray_panics: AtomicU64,
}

impl WorkerCounters {
    #[inline]
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        // Relaxed: a statistic (a worker's own, or a stripe of the runners').
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

#[derive(Debug)]
pub(crate) struct Counters {
    stripes: Box<[CachePadded<Stripe>]>,
    pub(crate) workers: Box<[CachePadded<WorkerCounters>]>,
    /// Stray panics caught off the workers (dropping handlers at shutdown).
    pub(crate) stray: AtomicU64,
    /// The counters of mailbox calls (blocking threads, async tasks,
    /// ordered handlers on workers), written per call: striped as the
    /// publishers' are, by thread (one shared line, written by every runtime
    /// thread per async call, was a third of the async runner's own cost).
    runners: Box<[CachePadded<WorkerCounters>]>,
    pub(crate) backlog_dropped: AtomicU64,
    pub(crate) drain_dropped: AtomicU64,
    /// Calls that ran but did nothing because a reload's hand-over gave the
    /// event to the other instance: taken out of `dispatched`. Shared with
    /// the plugin host's handler wrappers, which count them.
    pub(crate) skipped: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Display for Stats {
    /// One line: what was published and dispatched, what failed, what waits
    /// and what was lost.
    ///
    /// ```
    /// let bus = switchboard::Bus::new()?;
    /// assert_eq!(
    ///     bus.stats().to_string(),
    ///     "published 0 (low 0, normal 0, high 0), 0 events dispatched in 0 handler calls, \
    ///      0 errors (0 panics), queued 0/0/0 (low/normal/high), 0 subscriptions, \
    ///      lost 0 (shed 0, backlog 0, drain 0), rejected 0, too deep 0"
    /// );
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [low, normal, high] = self.published_by_priority;
        let [ql, qn, qh] = self.queue_depth;
        write!(
            f,
            "published {} (low {low}, normal {normal}, high {high}), {} events dispatched in {} \
             handler calls, {} errors ({} panics), queued {ql}/{qn}/{qh} (low/normal/high), {} \
             subscriptions, lost {} (shed {}, backlog {}, drain {}), rejected {}, too deep {}",
            self.published,
            self.events_dispatched,
            self.dispatched,
            self.handler_errors,
            self.handler_panics,
            self.subscriptions,
            self.dropped + self.backlog_dropped + self.drain_dropped,
            self.dropped,
            self.backlog_dropped,
            self.drain_dropped,
            self.rejected,
            self.depth_refused,
        )?;
        if self.stray_panics > 0 {
            write!(f, ", {} stray panics", self.stray_panics)?;
        }
        Ok(())
    }
}

/// Rate-limits the `warn` lines that report losses: at most one a second
/// per bus, saying how many losses the lines it held back covered.
#[derive(Debug)]
pub(crate) struct LossLog {
    start: std::time::Instant,
    /// Milliseconds since `start` of the last line, plus one (0: none yet).
    last: std::sync::atomic::AtomicU64,
    suppressed: std::sync::atomic::AtomicU64,
}

impl LossLog {
    pub(crate) fn new() -> LossLog {
        LossLog {
            start: std::time::Instant::now(),
            last: std::sync::atomic::AtomicU64::new(0),
            suppressed: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Whether to log a loss of `n` now; `Some(losses held back since the
    /// last line)` when so.
    pub(crate) fn admit(&self, n: u64) -> Option<u64> {
        use std::sync::atomic::Ordering::Relaxed;
        // Relaxed: only which thread logs is decided here.
        let now = self.start.elapsed().as_millis() as u64 + 1;
        let last = self.last.load(Relaxed);
        if last != 0 && now < last + 1000
            || self.last.compare_exchange(last, now, Relaxed, Relaxed).is_err()
        {
            self.suppressed.fetch_add(n, Relaxed);
            return None;
        }
        Some(self.suppressed.swap(0, Relaxed))
    }
}

/// Which publisher-side counter to bump.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Count {
    /// At this priority (its index).
    Published(usize),
    Dropped,
    Rejected,
    DepthRefused,
}

thread_local! {
    // Not `const`-initialised: loom's thread_local! does not take that form.
    #[allow(clippy::missing_const_for_thread_local)]
    static STRIPE: usize = next_stripe();
}

/// Stripes are dealt out round-robin to threads as they first publish, so
/// up to `STRIPES` publisher threads each get a cache line of their own.
/// (Bits of a thread-local's address do not spread: glibc places a
/// thread's static TLS block at the same offset in every thread.)
fn next_stripe() -> usize {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    // Relaxed: only the spread matters.
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % STRIPES
}

fn stripe_index() -> usize {
    STRIPE.with(|s| *s)
}

impl Counters {
    pub(crate) fn new(workers: usize) -> Counters {
        Counters {
            stripes: (0..STRIPES).map(|_| CachePadded::new(Stripe::default())).collect(),
            workers: (0..workers).map(|_| CachePadded::new(WorkerCounters::default())).collect(),
            stray: AtomicU64::new(0),
            runners: (0..STRIPES).map(|_| CachePadded::new(WorkerCounters::default())).collect(),
            backlog_dropped: AtomicU64::new(0),
            drain_dropped: AtomicU64::new(0),
            skipped: std::sync::Arc::default(),
        }
    }

    /// This thread's stripe of the mailbox calls' counters.
    #[inline]
    pub(crate) fn runner(&self) -> &WorkerCounters {
        &self.runners[stripe_index()]
    }

    #[inline]
    pub(crate) fn bump(&self, which: Count) {
        let s = &self.stripes[stripe_index()];
        let c = match which {
            Count::Published(priority) => &s.published[priority],
            Count::Dropped => &s.dropped,
            Count::Rejected => &s.rejected,
            Count::DepthRefused => &s.depth_refused,
        };
        // Relaxed: a statistic, read as a sum.
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn read(&self) -> Stats {
        let sum = |f: fn(&Stripe) -> &AtomicU64| -> u64 {
            self.stripes.iter().map(|s| f(s).load(Ordering::Relaxed)).sum()
        };
        let wsum = |f: fn(&WorkerCounters) -> &AtomicU64| -> u64 {
            self.workers
                .iter()
                .chain(self.runners.iter())
                .map(|w| f(w).load(Ordering::Relaxed))
                .sum()
        };
        let by_priority = [0, 1, 2].map(|p| {
            self.stripes.iter().map(|s| s.published[p].load(Ordering::Relaxed)).sum::<u64>()
        });
        Stats {
            published: by_priority.iter().sum(),
            published_by_priority: by_priority,
            dropped: sum(|s| &s.dropped),
            rejected: sum(|s| &s.rejected),
            depth_refused: sum(|s| &s.depth_refused),
            // Relaxed: a statistic. A skip is counted after its call, so the
            // difference never goes below zero for long; saturate meanwhile.
            dispatched: wsum(|w| &w.dispatched)
                .saturating_sub(self.skipped.load(std::sync::atomic::Ordering::Relaxed)),
            events_dispatched: wsum(|w| &w.events),
            handler_errors: wsum(|w| &w.errors),
            handler_panics: wsum(|w| &w.panics),
            stray_panics: wsum(|w| &w.stray_panics) + self.stray.load(Ordering::Relaxed),
            queue_depth: [0; 3],
            subscriptions: 0,
            backlog_dropped: self.backlog_dropped.load(Ordering::Relaxed),
            drain_dropped: self.drain_dropped.load(Ordering::Relaxed),
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::{stripe_index, STRIPES};

    /// Regression: stripes were picked from a thread-local's address, which
    /// is the same in every thread, so all publishers shared one stripe.
    #[test]
    fn publisher_threads_get_different_stripes() {
        let stripes: std::collections::HashSet<usize> = (0..STRIPES)
            .map(|_| std::thread::spawn(stripe_index))
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();
        // Round-robin: any STRIPES consecutive new threads cover every stripe
        // unless other tests' threads interleave; half is a safe floor that
        // the old scheme (one stripe for all) could not reach.
        assert!(stripes.len() >= STRIPES / 2, "only {} stripes used", stripes.len());
    }
}
