//! Observing a bus: per-subscription call counts and sampled timings, for a
//! metrics exporter (the `switchboard-metrics` crate is one).
//!
//! Off by default, and then it costs one branch per handler call. A bus
//! built with an [`Observer`] counts each subscription's calls (in a slot
//! of each worker's own, so `*` subscribers' counts never bounce between
//! cores) and times one call in [`Observer::sample_every`] on each thread:
//! how long the event waited (from its [timestamp](crate::Event::timestamp)
//! to the start of the call) and how long the call ran. The observer hears
//! of each sample through the [`CallObserver`] it made for that
//! subscription when it was subscribed, so a sample reaches pre-made
//! handles (histograms, say) without looking anything up.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_utils::CachePadded;

use crate::loom::{AtomicU64, Ordering};

/// Told of each subscription as it is made; see
/// [`BusBuilder::observer`](crate::BusBuilder::observer).
pub trait Observer: Send + Sync + 'static {
    /// A subscription was made: what to tell of its sampled calls. Called
    /// on the subscribing thread, before `subscribe` returns; it must not
    /// wait for the bus.
    fn subscribed(&self, subscription: &Subscribed<'_>) -> Arc<dyn CallObserver>;

    /// One call in how many is timed, on each thread (at least 1; default
    /// 64). Sampling keeps the cost of timing (two clock reads and a
    /// dynamic call) to a few nanoseconds per call on average.
    fn sample_every(&self) -> u32 {
        64
    }
}

/// A subscription as an [`Observer`] hears of it.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct Subscribed<'a> {
    /// Its pattern, as subscribed.
    pub pattern: &'a str,
    /// Its subscriber.
    pub plugin: &'a str,
    /// The bus's name ([`BusBuilder::name`](crate::BusBuilder::name)).
    pub bus: &'a str,
}

/// Hears one subscription's sampled calls.
pub trait CallObserver: Send + Sync + 'static {
    /// A timed call: the event `waited` from its timestamp to the start of
    /// the call (zero when its timestamp is in the future: an imported
    /// event from a clock ahead), and the call `ran` this long. Called on
    /// the thread that made the call, right after it; it must not wait for
    /// the bus.
    fn sampled(&self, waited: Duration, ran: Duration);
}

/// A subscription's share of observation: its call counts, a slot per
/// worker and one for the runners (mailbox calls: ordered, blocking, async
/// and replayed), and its sink.
pub(crate) struct Observed {
    calls: Box<[CachePadded<AtomicU64>]>,
    sink: Arc<dyn CallObserver>,
    every: u32,
}

impl std::fmt::Debug for Observed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observed").field("calls", &self.calls()).finish()
    }
}

std::thread_local! {
    /// Calls left on this thread before the next timed one.
    static COUNTDOWN: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Whether this thread's next timed call is this one (one in `every`).
#[inline]
fn due(every: u32) -> bool {
    COUNTDOWN.with(|c| match c.get() {
        0 => {
            c.set(every - 1);
            true
        }
        n => {
            c.set(n - 1);
            false
        }
    })
}

/// How long ago `timestamp` was (zero for a time in the future).
pub(crate) fn since(timestamp: SystemTime) -> Duration {
    SystemTime::now().duration_since(timestamp).unwrap_or_default()
}

impl Observed {
    /// For a bus of `workers` workers.
    pub(crate) fn new(workers: usize, sink: Arc<dyn CallObserver>, every: u32) -> Observed {
        Observed {
            calls: (0..=workers).map(|_| CachePadded::new(AtomicU64::new(0))).collect(),
            sink,
            every: every.max(1),
        }
    }

    /// The slot of mailbox calls.
    pub(crate) fn runner_slot(&self) -> usize {
        self.calls.len() - 1
    }

    /// Counts a call in `slot` (a worker's own index: only it writes there;
    /// the runners' slot is shared) and runs it, timed when its turn has
    /// come on this thread.
    #[inline]
    pub(crate) fn call<R>(&self, slot: usize, timestamp: SystemTime, f: impl FnOnce() -> R) -> R {
        let counter = &self.calls[slot];
        if slot == self.runner_slot() {
            // Relaxed: a statistic.
            counter.fetch_add(1, Ordering::Relaxed);
        } else {
            // One writer: a load and a store, no locked instruction.
            counter.store(counter.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        }
        if !due(self.every) {
            return f();
        }
        let waited = since(timestamp);
        let started = Instant::now();
        let result = f();
        self.sink.sampled(waited, started.elapsed());
        result
    }

    /// Counts an async call that `started` (after its event `waited`) and
    /// has just ended, and reports its timing when its turn has come on
    /// this thread.
    #[cfg(feature = "tokio")]
    pub(crate) fn finished(&self, waited: Duration, started: Instant) {
        // Relaxed: a statistic.
        self.calls[self.runner_slot()].fetch_add(1, Ordering::Relaxed);
        if due(self.every) {
            self.sink.sampled(waited, started.elapsed());
        }
    }

    /// Calls so far.
    pub(crate) fn calls(&self) -> u64 {
        // Relaxed: a statistic.
        self.calls.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }
}
