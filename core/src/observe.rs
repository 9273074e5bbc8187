//! Observing a bus: per-subscription call counts and sampled timings, for a
//! metrics exporter (the `switchboard-metrics` crate is one).
//!
//! Off by default, and then it costs one branch per handler call. A bus
//! built with an [`Observer`] counts each subscription's calls (in a slot
//! of each worker's own, on a cache line of its own, so `*` subscribers'
//! counts never bounce between cores) and times a sample of the calls on each thread (about one every
//! 200 µs while busy, every call while quiet; see [`Observer::sample_every`]):
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

    /// The fewest calls timed: at least one in this many on each thread
    /// (at least 1; default 65,536). Within that, timing adapts: a thread
    /// busy with calls times about one every 200 µs (a few thousand a
    /// second, whatever the call rate), a quiet one times every call. So
    /// timing (three clock reads and a dynamic call) costs a fraction of a
    /// nanosecond per call on average, and a rarely called plugin still has
    /// its latency measured.
    fn sample_every(&self) -> u32 {
        65_536
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

/// About how often a busy thread times a call.
const SAMPLE_GAP: Duration = Duration::from_micros(200);

/// When a thread times its next call: one in `every`, where `every` adapts
/// between 1 and the observer's [`Observer::sample_every`] so that a busy
/// thread times about one call every [`SAMPLE_GAP`] (a few thousand a
/// second, whatever the call rate), and a quiet one times every call.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sampler {
    countdown: u32,
    every: u32,
    last: Option<Instant>,
}

impl Default for Sampler {
    fn default() -> Sampler {
        Sampler::new()
    }
}

impl Sampler {
    pub(crate) const fn new() -> Sampler {
        Sampler { countdown: 0, every: 1, last: None }
    }

    /// Whether this call is the one to time.
    #[inline]
    pub(crate) fn due(&mut self) -> bool {
        match self.countdown {
            0 => true,
            _ => {
                self.countdown -= 1;
                false
            }
        }
    }

    /// A timed call starts `now`: adapt, and count down to the next one.
    fn started(&mut self, now: Instant, max: u32) {
        if let Some(last) = self.last {
            let gap = now.saturating_duration_since(last);
            if gap < SAMPLE_GAP / 2 {
                self.every = self.every.saturating_mul(2).min(max);
            } else if gap > SAMPLE_GAP * 2 {
                self.every = (self.every / 2).max(1);
            }
        }
        self.every = self.every.clamp(1, max.max(1));
        self.last = Some(now);
        self.countdown = self.every - 1;
    }
}

std::thread_local! {
    /// The sampler of the calls this thread makes outside a worker's batch
    /// (mailbox calls, replays, async calls).
    static SAMPLER: std::cell::Cell<Sampler> = const { std::cell::Cell::new(Sampler::new()) };
}

/// Whether this thread's next mailbox call is to be timed.
#[inline]
fn due() -> bool {
    SAMPLER.with(|s| {
        let mut sampler = s.get();
        let due = sampler.due();
        s.set(sampler);
        due
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

    /// Counts a mailbox call (in the runners' shared slot) and runs it,
    /// timed when its turn has come on this thread.
    #[inline]
    pub(crate) fn call<R>(&self, timestamp: SystemTime, f: impl FnOnce() -> R) -> R {
        // Relaxed: a statistic.
        self.calls[self.runner_slot()].fetch_add(1, Ordering::Relaxed);
        if !due() {
            return f();
        }
        let mut sampler = SAMPLER.with(std::cell::Cell::get);
        let result = self.timed(timestamp, &mut sampler, f);
        SAMPLER.with(|s| s.set(sampler));
        result
    }

    /// Runs a call and reports its timing (the caller counted it, and its
    /// `sampler` said it is due).
    #[inline(never)]
    pub(crate) fn timed<R>(
        &self,
        timestamp: SystemTime,
        sampler: &mut Sampler,
        f: impl FnOnce() -> R,
    ) -> R {
        let started = Instant::now();
        sampler.started(started, self.every);
        let waited = since(timestamp);
        let result = f();
        self.sink.sampled(waited, started.elapsed());
        result
    }

    /// Counts a call in `worker`'s own slot (only it writes there: a load
    /// and a store, no locked instruction, on a cache line of its own).
    #[inline]
    pub(crate) fn count(&self, worker: usize) {
        if let Some(counter) = self.calls.get(worker) {
            // Relaxed: a statistic.
            counter.store(counter.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        }
    }

    /// Counts an async call that `started` (after its event `waited`) and
    /// has just ended, and reports its timing when its turn has come on
    /// this thread.
    #[cfg(feature = "tokio")]
    pub(crate) fn finished(&self, waited: Duration, started: Instant) {
        // Relaxed: a statistic.
        self.calls[self.runner_slot()].fetch_add(1, Ordering::Relaxed);
        if due() {
            let now = Instant::now();
            SAMPLER.with(|s| {
                let mut sampler = s.get();
                sampler.started(now, self.every);
                s.set(sampler);
            });
            self.sink.sampled(waited, now.saturating_duration_since(started));
        }
    }

    /// Calls so far.
    pub(crate) fn calls(&self) -> u64 {
        // Relaxed: a statistic.
        self.calls.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }
}
