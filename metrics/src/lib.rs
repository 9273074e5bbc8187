//! Metrics for Switchboard on the [`metrics`] facade, and a Prometheus
//! exporter: what a bot operator scrapes to see which plugin is slow, which
//! subscription sheds, how deep each queue is.
//!
//! ```no_run
//! use std::sync::Arc;
//! use switchboard::Bus;
//! use switchboard_metrics::{install_prometheus, Metrics};
//!
//! install_prometheus("127.0.0.1:9187".parse()?)?;          // the exporter, on loopback
//! let metrics = Metrics::new();                              // polls once a second
//! let bus = Bus::builder().observer(metrics.observer()).build()?;
//! metrics.watch(&bus);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # What is recorded, and how it costs
//!
//! Counters and gauges are read from the bus's own counters
//! ([`Bus::stats`], [`Bus::subscriptions`]), and from
//! [`PluginManager::stats`](switchboard_host::PluginManager::stats) and
//! [`Bridge::stats`](switchboard_nats::Bridge::stats) when watched, by a
//! thread of this crate every [`interval`](MetricsBuilder::interval)
//! (default 1 s) or on [`Metrics::collect`]: nothing is added to the
//! publish or dispatch path for them, and a scrape is at most one interval
//! behind. A subscription's counters are kept when it goes (added to its
//! plugin and pattern's totals), so counters never go down.
//!
//! Latency histograms come from the bus's [`Observer`] hook: a bus built
//! with [`Metrics::observer`] counts each subscription's calls (a slot per
//! worker, no shared cache line) and times a sample of them on each thread
//! (about one call every 200 µs while busy, every call while quiet; see
//! [`sample_every`](MetricsBuilder::sample_every)), recorded into histogram
//! handles made once per subscription.
//! Without the observer, the per-subscription `calls` stay 0 and there are
//! no histograms; the rest is there.
//!
//! Every series is named in [`names`], with its labels. Labels stay
//! low-cardinality: the bus's [name](switchboard::BusBuilder::name), the
//! plugin, the subscription's pattern (the template, never an event name),
//! the priority, the reason of a loss, the bridge's instance.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
#[cfg(feature = "nats")]
use std::sync::Weak;
use std::time::Duration;

use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};
use parking_lot::Mutex;
use switchboard::{Bus, CallObserver, Observer, Subscribed, SubscriptionId, Target, WeakBus};

pub use metrics_exporter_prometheus::PrometheusHandle;

/// The series this crate records, and their labels.
pub mod names {
    /// Counter `{bus, priority}`: events accepted by `publish`.
    pub const PUBLISHED: &str = "switchboard_events_published_total";
    /// Counter `{bus}`: events taken off the queues and matched.
    pub const EVENTS_DISPATCHED: &str = "switchboard_events_dispatched_total";
    /// Counter `{bus}`: handler calls that ran.
    pub const CALLS: &str = "switchboard_handler_calls_total";
    /// Counter `{bus}`: handler errors and panics (async timeouts included).
    pub const ERRORS: &str = "switchboard_handler_errors_total";
    /// Counter `{bus}`: of the errors, panics.
    pub const PANICS: &str = "switchboard_handler_panics_total";
    /// Counter `{bus, reason}`: events lost or refused, by reason: `shed`
    /// (the bus's `Overflow::Shed`), `backlog` (a subscription's lossy
    /// backlog), `drain_timeout` (left at shutdown), `rejected` (given back
    /// to the publisher: full, closed, bad name), `too_deep` (the handler
    /// chain was too deep).
    pub const DROPPED: &str = "switchboard_events_dropped_total";
    /// Gauge `{bus, priority}`: events waiting in each queue lane.
    pub const QUEUE_DEPTH: &str = "switchboard_queue_depth";
    /// Gauge `{bus}`: live subscriptions.
    pub const SUBSCRIPTIONS: &str = "switchboard_subscriptions";
    /// Counter `{bus, plugin, pattern}`: a subscription's handler calls (on
    /// an observed bus).
    pub const SUBSCRIPTION_CALLS: &str = "switchboard_subscription_calls_total";
    /// Counter `{bus, plugin, pattern}`: its errors.
    pub const SUBSCRIPTION_ERRORS: &str = "switchboard_subscription_errors_total";
    /// Counter `{bus, plugin, pattern}`: of its errors, panics.
    pub const SUBSCRIPTION_PANICS: &str = "switchboard_subscription_panics_total";
    /// Counter `{bus, plugin, pattern}`: of its errors, async timeouts.
    pub const SUBSCRIPTION_TIMEOUTS: &str = "switchboard_subscription_timeouts_total";
    /// Counter `{bus, plugin, pattern}`: events lost for it (lossy backlog).
    pub const SUBSCRIPTION_DROPPED: &str = "switchboard_subscription_backlog_dropped_total";
    /// Gauge `{bus, plugin, pattern}`: events waiting in its backlog.
    pub const BACKLOG: &str = "switchboard_subscription_backlog";
    /// Gauge `{bus, plugin, pattern}`: its calls running now.
    pub const RUNNING: &str = "switchboard_subscription_running";
    /// Histogram `{bus, plugin}`, seconds: from an event's timestamp to the
    /// start of a (sampled) handler call.
    pub const LATENCY: &str = "switchboard_handler_latency_seconds";
    /// Histogram `{bus, plugin}`, seconds: a (sampled) handler call's run.
    pub const DURATION: &str = "switchboard_handler_duration_seconds";
    /// Gauge `{bus}`: plugins loaded.
    pub const PLUGINS_LOADED: &str = "switchboard_plugins_loaded";
    /// Counter `{bus, plugin}`: events a plugin published through its
    /// context (since it was loaded; across its reloads).
    pub const PLUGIN_PUBLISHED: &str = "switchboard_plugin_events_published_total";
    /// Counter `{bus}`: plugin loads.
    pub const PLUGIN_LOADS: &str = "switchboard_plugin_loads_total";
    /// Counter `{bus}`: plugin unloads.
    pub const PLUGIN_UNLOADS: &str = "switchboard_plugin_unloads_total";
    /// Counter `{bus, outcome}`: reloads, `outcome` `ok` or `failed`.
    pub const PLUGIN_RELOADS: &str = "switchboard_plugin_reloads_total";
    /// Histogram `{bus}`, seconds: successful reloads' durations (each the
    /// mean of the reloads since the last poll).
    pub const PLUGIN_RELOAD_SECONDS: &str = "switchboard_plugin_reload_seconds";
    /// Counter `{bus, result}`: calls during a reload's hand-over, `result`
    /// `claimed` (ran) or `skipped` (the other instance had the event).
    pub const HANDOVER: &str = "switchboard_plugin_handover_calls_total";
    /// Counter `{bridge, what}`: a NATS bridge's counters, `what` one of
    /// `exported`, `deduplicated`, `imported`, `dropped`, `retried`,
    /// `redelivered` (duplicates of one publish dropped on import),
    /// `echoes`, `invalid`, `refused`, `undeliverable`, `slow_consumer`,
    /// `reconnects`, `client_side_reconnects`, `task_restarts`.
    pub const BRIDGE: &str = "switchboard_bridge_events_total";
    /// Gauge `{bridge}`: 1 while connected.
    pub const BRIDGE_CONNECTED: &str = "switchboard_bridge_connected";
    /// Gauge `{bridge}`: messages waiting in its queue.
    pub const BRIDGE_QUEUED: &str = "switchboard_bridge_queued";
    /// Gauge `{bridge}`: its tasks running now.
    pub const BRIDGE_TASKS_ALIVE: &str = "switchboard_bridge_tasks_alive";

    /// Every series, for dashboards and their tests.
    pub const ALL: &[&str] = &[
        PUBLISHED,
        EVENTS_DISPATCHED,
        CALLS,
        ERRORS,
        PANICS,
        DROPPED,
        QUEUE_DEPTH,
        SUBSCRIPTIONS,
        SUBSCRIPTION_CALLS,
        SUBSCRIPTION_ERRORS,
        SUBSCRIPTION_PANICS,
        SUBSCRIPTION_TIMEOUTS,
        SUBSCRIPTION_DROPPED,
        BACKLOG,
        RUNNING,
        LATENCY,
        DURATION,
        PLUGINS_LOADED,
        PLUGIN_PUBLISHED,
        PLUGIN_LOADS,
        PLUGIN_UNLOADS,
        PLUGIN_RELOADS,
        PLUGIN_RELOAD_SECONDS,
        HANDOVER,
        BRIDGE,
        BRIDGE_CONNECTED,
        BRIDGE_QUEUED,
        BRIDGE_TASKS_ALIVE,
    ];
}

/// The histogram buckets, in seconds: 1 µs to 10 s.
pub const BUCKETS: &[f64] = &[
    1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Why the exporter could not start.
#[derive(Debug)]
#[non_exhaustive]
pub enum ExporterError {
    /// The address could not be bound (in use, or not this host's).
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        reason: std::io::Error,
    },
    /// The exporter refused its settings, or a recorder is installed already.
    Install(String),
}

impl std::fmt::Display for ExporterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExporterError::Bind { addr, reason } => {
                write!(f, "cannot serve metrics on {addr}: {reason}")
            }
            ExporterError::Install(e) => write!(f, "cannot install the Prometheus exporter: {e}"),
        }
    }
}

impl std::error::Error for ExporterError {}

/// Installs the Prometheus exporter as the process's recorder, serving
/// `http://ADDR/metrics` (any path answers) on its own thread. Histograms
/// export as histograms with [`BUCKETS`]. Bind it to loopback
/// (`127.0.0.1:9187`) unless a scraper on another host must reach it.
///
/// # Errors
///
/// [`ExporterError::Bind`] when `addr` cannot be bound;
/// [`ExporterError::Install`] when a recorder is installed already.
pub fn install_prometheus(addr: SocketAddr) -> Result<(), ExporterError> {
    // The exporter binds on its own thread and reports a failure only in
    // its log: try the address here first, for a typed error.
    drop(std::net::TcpListener::bind(addr).map_err(|reason| ExporterError::Bind { addr, reason })?);
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets(BUCKETS)
        .map_err(|e| ExporterError::Install(e.to_string()))?
        .install()
        .map_err(|e| ExporterError::Install(e.to_string()))
}

/// The loopback address the demos serve metrics on by default.
pub const DEFAULT_ADDR: &str = "127.0.0.1:9187";

/// Records what the watched buses, plugin hosts and bridges count. Cheap to
/// clone; the polling thread stops when the last clone is dropped.
#[derive(Clone, Debug)]
pub struct Metrics {
    inner: Arc<Inner>,
}

/// Settings of a [`Metrics`]. Start from [`Metrics::builder`].
#[derive(Clone, Debug)]
pub struct MetricsBuilder {
    interval: Duration,
    sample_every: u32,
}

impl MetricsBuilder {
    /// How often the counters are read (default 1 s). A scrape is at most
    /// this far behind; [`Metrics::collect`] reads them at once.
    pub fn interval(mut self, interval: Duration) -> MetricsBuilder {
        self.interval = interval.max(Duration::from_millis(1));
        self
    }

    /// At least one handler call in `n` is timed on each thread (default
    /// 65,536; at least 1); within that, a busy thread times about one call
    /// every 200 µs and a quiet one every call
    /// ([`Observer::sample_every`]). 1 times every call.
    pub fn sample_every(mut self, n: u32) -> MetricsBuilder {
        self.sample_every = n.max(1);
        self
    }

    /// Starts the polling thread.
    pub fn build(self) -> Metrics {
        let inner = Arc::new(Inner {
            sample_every: self.sample_every,
            watched: Mutex::new(Watched::default()),
            stop: AtomicBool::new(false),
        });
        let weak = Arc::downgrade(&inner);
        let interval = self.interval;
        let spawned =
            std::thread::Builder::new().name("switchboard-metrics".into()).spawn(move || loop {
                std::thread::park_timeout(interval);
                let Some(inner) = weak.upgrade() else { return };
                if inner.stop.load(Ordering::SeqCst) {
                    return;
                }
                inner.collect();
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the metrics thread: metrics are read only on collect()");
        }
        Metrics { inner }
    }
}

#[derive(Debug)]
struct Inner {
    sample_every: u32,
    watched: Mutex<Watched>,
    stop: AtomicBool,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

#[derive(Debug, Default)]
struct Watched {
    buses: Vec<BusWatch>,
    #[cfg(feature = "host")]
    hosts: Vec<HostWatch>,
    #[cfg(feature = "nats")]
    bridges: Vec<BridgeWatch>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    /// Default settings: read every second, calls timed as
    /// [`Observer::sample_every`] says.
    pub fn new() -> Metrics {
        Metrics::builder().build()
    }

    /// Settings to start from.
    pub fn builder() -> MetricsBuilder {
        MetricsBuilder { interval: Duration::from_secs(1), sample_every: 65_536 }
    }

    /// The observer to build buses with
    /// ([`BusBuilder::observer`](switchboard::BusBuilder::observer)): their
    /// per-subscription call counts and latency histograms.
    pub fn observer(&self) -> Arc<dyn Observer> {
        Arc::new(Timings { sample_every: self.inner.sample_every })
    }

    /// Records `bus`'s counters from now on (until it is dropped). Name
    /// each watched bus ([`BusBuilder::name`](switchboard::BusBuilder::name)):
    /// the name is every series' `bus` label.
    pub fn watch(&self, bus: &Bus) {
        self.inner.watched.lock().buses.push(BusWatch::new(bus));
        self.inner.collect();
    }

    /// Records a plugin manager's counters (until it is dropped).
    #[cfg(feature = "host")]
    pub fn watch_host(&self, manager: &switchboard_host::PluginManager) {
        self.inner.watched.lock().hosts.push(HostWatch::new(manager));
        self.inner.collect();
    }

    /// Records a NATS bridge's counters (until it is dropped), labelled with
    /// its instance id.
    #[cfg(feature = "nats")]
    pub fn watch_bridge(&self, bridge: &Arc<switchboard_nats::Bridge>) {
        self.inner.watched.lock().bridges.push(BridgeWatch::new(bridge));
        self.inner.collect();
    }

    /// Reads every watched counter now.
    pub fn collect(&self) {
        self.inner.collect();
    }
}

impl Inner {
    fn collect(&self) {
        // The strong handles the reads took are dropped after the lock is
        // released: one may be the last, and its shutdown drops handlers,
        // whose `Drop` may call back into these metrics.
        let mut held = Held::new();
        {
            let mut watched = self.watched.lock();
            watched.buses.retain_mut(|w| w.collect(&mut held));
            #[cfg(feature = "host")]
            watched.hosts.retain_mut(|w| w.collect(&mut held));
            #[cfg(feature = "nats")]
            watched.bridges.retain_mut(|w| w.collect(&mut held));
        }
        drop(held);
    }
}

/// Strong handles a poll took, dropped once it is done.
type Held = Vec<Box<dyn std::any::Any + Send>>;

/// The bus's observer: latency and duration histograms per plugin.
#[derive(Debug)]
struct Timings {
    sample_every: u32,
}

struct PluginTimings {
    latency: Histogram,
    duration: Histogram,
}

impl CallObserver for PluginTimings {
    fn sampled(&self, waited: Duration, ran: Duration) {
        self.latency.record(waited.as_secs_f64());
        self.duration.record(ran.as_secs_f64());
    }
}

impl Observer for Timings {
    fn subscribed(&self, s: &Subscribed<'_>) -> Arc<dyn CallObserver> {
        let labels = [("bus", s.bus.to_owned()), ("plugin", s.plugin.to_owned())];
        Arc::new(PluginTimings {
            latency: histogram!(names::LATENCY, &labels),
            duration: histogram!(names::DURATION, &labels),
        })
    }

    fn sample_every(&self) -> u32 {
        self.sample_every
    }
}

const PRIORITIES: [&str; 3] = ["low", "normal", "high"];

/// Reads one counter out of a stats struct.
type Read<S> = fn(&S) -> u64;

/// A subscription's counters, as totals of a plugin and pattern.
#[derive(Clone, Copy, Debug, Default)]
struct Totals {
    calls: u64,
    errors: u64,
    panics: u64,
    timeouts: u64,
    dropped: u64,
}

impl std::ops::AddAssign for Totals {
    fn add_assign(&mut self, t: Totals) {
        self.calls += t.calls;
        self.errors += t.errors;
        self.panics += t.panics;
        self.timeouts += t.timeouts;
        self.dropped += t.dropped;
    }
}

#[derive(Debug)]
struct SubHandles {
    calls: Counter,
    errors: Counter,
    panics: Counter,
    timeouts: Counter,
    dropped: Counter,
    backlog: Gauge,
    running: Gauge,
}

#[derive(Debug)]
struct BusWatch {
    bus: WeakBus,
    name: String,
    published: [Counter; 3],
    queue: [Gauge; 3],
    events: Counter,
    calls: Counter,
    errors: Counter,
    panics: Counter,
    dropped: [(Counter, Read<switchboard::Stats>); 5],
    subscriptions: Gauge,
    /// By (plugin, pattern).
    subs: HashMap<(String, String), SubHandles>,
    /// What each live subscription counted at the last poll.
    last: HashMap<SubscriptionId, ((String, String), Totals)>,
    /// What the subscriptions gone counted, by (plugin, pattern).
    retired: HashMap<(String, String), Totals>,
}

impl BusWatch {
    fn new(bus: &Bus) -> BusWatch {
        let name = bus.name().to_owned();
        let b = || ("bus", name.clone());
        let reason = |r: &'static str| counter!(names::DROPPED, &[b(), ("reason", r.to_owned())]);
        BusWatch {
            bus: bus.downgrade(),
            published: PRIORITIES
                .map(|p| counter!(names::PUBLISHED, &[b(), ("priority", p.to_owned())])),
            queue: PRIORITIES
                .map(|p| gauge!(names::QUEUE_DEPTH, &[b(), ("priority", p.to_owned())])),
            events: counter!(names::EVENTS_DISPATCHED, &[b()]),
            calls: counter!(names::CALLS, &[b()]),
            errors: counter!(names::ERRORS, &[b()]),
            panics: counter!(names::PANICS, &[b()]),
            dropped: [
                (reason("shed"), |s| s.dropped),
                (reason("backlog"), |s| s.backlog_dropped),
                (reason("drain_timeout"), |s| s.drain_dropped),
                (reason("rejected"), |s| s.rejected),
                (reason("too_deep"), |s| s.depth_refused),
            ],
            subscriptions: gauge!(names::SUBSCRIPTIONS, &[b()]),
            subs: HashMap::new(),
            last: HashMap::new(),
            retired: HashMap::new(),
            name,
        }
    }

    /// Reads the bus; false once it is gone (or shut down: read one last
    /// time).
    fn collect(&mut self, held: &mut Held) -> bool {
        let Some(bus) = self.bus.upgrade() else { return false };
        let closed = bus.is_closed();
        let stats = bus.stats();
        for (counter, n) in self.published.iter().zip(stats.published_by_priority) {
            counter.absolute(n);
        }
        for (gauge, n) in self.queue.iter().zip(stats.queue_depth) {
            gauge.set(n as f64);
        }
        self.events.absolute(stats.events_dispatched);
        self.calls.absolute(stats.dispatched);
        self.errors.absolute(stats.handler_errors);
        self.panics.absolute(stats.handler_panics);
        for (counter, read) in &self.dropped {
            counter.absolute(read(&stats));
        }
        self.subscriptions.set(stats.subscriptions as f64);

        let infos = bus.subscriptions(Target::All);
        held.push(Box::new(bus));
        let live: HashSet<SubscriptionId> = infos.iter().map(|i| i.id).collect();
        // What the subscriptions that went counted stays in their totals.
        let gone: Vec<SubscriptionId> =
            self.last.keys().filter(|id| !live.contains(id)).copied().collect();
        for id in gone {
            if let Some((key, t)) = self.last.remove(&id) {
                *self.retired.entry(key).or_default() += t;
            }
        }
        let mut totals: HashMap<(String, String), (Totals, u64, u64)> = HashMap::new();
        for (key, r) in &self.retired {
            totals.entry(key.clone()).or_default().0 = *r;
        }
        for info in infos {
            let key = (info.plugin, info.pattern);
            let t = Totals {
                calls: info.stats.calls,
                errors: info.stats.errors,
                panics: info.stats.panics,
                timeouts: info.stats.timeouts,
                dropped: info.stats.backlog_dropped,
            };
            let entry = totals.entry(key.clone()).or_default();
            entry.0 += t;
            entry.1 += info.stats.backlog;
            entry.2 += info.stats.running;
            self.last.insert(info.id, (key, t));
        }
        for (key, (t, backlog, running)) in totals {
            let name = &self.name;
            let handles = self.subs.entry(key).or_insert_with_key(|(plugin, pattern)| {
                let labels = [
                    ("bus", name.clone()),
                    ("plugin", plugin.clone()),
                    ("pattern", pattern.clone()),
                ];
                SubHandles {
                    calls: counter!(names::SUBSCRIPTION_CALLS, &labels),
                    errors: counter!(names::SUBSCRIPTION_ERRORS, &labels),
                    panics: counter!(names::SUBSCRIPTION_PANICS, &labels),
                    timeouts: counter!(names::SUBSCRIPTION_TIMEOUTS, &labels),
                    dropped: counter!(names::SUBSCRIPTION_DROPPED, &labels),
                    backlog: gauge!(names::BACKLOG, &labels),
                    running: gauge!(names::RUNNING, &labels),
                }
            });
            handles.calls.absolute(t.calls);
            handles.errors.absolute(t.errors);
            handles.panics.absolute(t.panics);
            handles.timeouts.absolute(t.timeouts);
            handles.dropped.absolute(t.dropped);
            handles.backlog.set(backlog as f64);
            handles.running.set(running as f64);
        }
        !closed
    }
}

#[cfg(feature = "host")]
#[derive(Debug)]
struct HostWatch {
    manager: switchboard_host::WeakPluginManager,
    loaded: Gauge,
    loads: Counter,
    unloads: Counter,
    reloads: Counter,
    failed: Counter,
    reload_seconds: Histogram,
    claimed: Counter,
    skipped: Counter,
    /// By plugin.
    published: HashMap<String, Counter>,
    bus: String,
    seen_reloads: u64,
    seen_reload_time: Duration,
}

#[cfg(feature = "host")]
impl HostWatch {
    fn new(manager: &switchboard_host::PluginManager) -> HostWatch {
        let bus = manager.bus().name().to_owned();
        let b = || ("bus", bus.clone());
        HostWatch {
            manager: manager.downgrade(),
            loaded: gauge!(names::PLUGINS_LOADED, &[b()]),
            loads: counter!(names::PLUGIN_LOADS, &[b()]),
            unloads: counter!(names::PLUGIN_UNLOADS, &[b()]),
            reloads: counter!(names::PLUGIN_RELOADS, &[b(), ("outcome", "ok".to_owned())]),
            failed: counter!(names::PLUGIN_RELOADS, &[b(), ("outcome", "failed".to_owned())]),
            reload_seconds: histogram!(names::PLUGIN_RELOAD_SECONDS, &[b()]),
            claimed: counter!(names::HANDOVER, &[b(), ("result", "claimed".to_owned())]),
            skipped: counter!(names::HANDOVER, &[b(), ("result", "skipped".to_owned())]),
            published: HashMap::new(),
            bus: bus.clone(),
            seen_reloads: 0,
            seen_reload_time: Duration::ZERO,
        }
    }

    fn collect(&mut self, held: &mut Held) -> bool {
        let Some(manager) = self.manager.upgrade() else { return false };
        let s = manager.stats();
        let closed = manager.bus().is_closed();
        let plugins = manager.list();
        held.push(Box::new(manager));
        for plugin in plugins {
            let bus = &self.bus;
            let counter = self.published.entry(plugin.name).or_insert_with_key(|name| {
                counter!(names::PLUGIN_PUBLISHED, &[("bus", bus.clone()), ("plugin", name.clone())])
            });
            counter.absolute(plugin.published);
        }
        self.loaded.set(s.loaded as f64);
        self.loads.absolute(s.loads);
        self.unloads.absolute(s.unloads);
        self.reloads.absolute(s.reloads);
        self.failed.absolute(s.failed_reloads);
        self.claimed.absolute(s.handover_claims);
        self.skipped.absolute(s.handover_skips);
        let new = s.reloads.saturating_sub(self.seen_reloads);
        if new > 0 {
            let time = s.reload_time.saturating_sub(self.seen_reload_time);
            let each = time.as_secs_f64() / new as f64;
            for _ in 0..new.min(1000) {
                self.reload_seconds.record(each);
            }
        }
        self.seen_reloads = s.reloads;
        self.seen_reload_time = s.reload_time;
        !closed
    }
}

#[cfg(feature = "nats")]
#[derive(Debug)]
struct BridgeWatch {
    bridge: Weak<switchboard_nats::Bridge>,
    counters: Vec<(Counter, Read<switchboard_nats::BridgeStats>)>,
    connected: Gauge,
    queued: Gauge,
    alive: Gauge,
}

#[cfg(feature = "nats")]
impl BridgeWatch {
    fn new(bridge: &Arc<switchboard_nats::Bridge>) -> BridgeWatch {
        use switchboard_nats::BridgeStats as S;
        let name = bridge.instance().to_owned();
        let b = || ("bridge", name.clone());
        let what = |w: &'static str| counter!(names::BRIDGE, &[b(), ("what", w.to_owned())]);
        let counters: Vec<(Counter, Read<S>)> = vec![
            (what("exported"), |s| s.exported),
            (what("deduplicated"), |s| s.deduplicated),
            (what("imported"), |s| s.imported),
            (what("dropped"), |s| s.dropped),
            (what("retried"), |s| s.retried),
            (what("redelivered"), |s| s.duplicates_dropped),
            (what("echoes"), |s| s.echoes_skipped),
            (what("invalid"), |s| s.invalid),
            (what("refused"), |s| s.refused),
            (what("undeliverable"), |s| s.undeliverable),
            (what("slow_consumer"), |s| s.slow_consumer),
            (what("reconnects"), |s| s.reconnects),
            (what("client_side_reconnects"), |s| s.client_side_reconnects),
            (what("task_restarts"), |s| s.tasks.iter().map(|t| t.restarts).sum()),
        ];
        BridgeWatch {
            bridge: Arc::downgrade(bridge),
            counters,
            connected: gauge!(names::BRIDGE_CONNECTED, &[b()]),
            queued: gauge!(names::BRIDGE_QUEUED, &[b()]),
            alive: gauge!(names::BRIDGE_TASKS_ALIVE, &[b()]),
        }
    }

    fn collect(&mut self, held: &mut Held) -> bool {
        let Some(bridge) = self.bridge.upgrade() else {
            self.connected.set(0.0);
            self.alive.set(0.0);
            return false;
        };
        let s = bridge.stats();
        held.push(Box::new(bridge));
        for (counter, read) in &self.counters {
            counter.absolute(read(&s));
        }
        self.connected.set(if s.connected { 1.0 } else { 0.0 });
        self.queued.set(s.queued as f64);
        self.alive.set(s.tasks.iter().filter(|t| t.alive).count() as f64);
        true
    }
}
