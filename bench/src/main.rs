//! The comparison bench: Switchboard against what users would pick instead,
//! on the same events with the same deliveries, measured in one run.
//!
//! Contenders (every one calls the same handlers, each counting in its own
//! counter, and every run checks every count):
//!
//! * **channel**: a bounded crossbeam channel, 1 producer → 1 consumer thread
//!   that calls the matching handlers, known ahead of time. The floor cost of
//!   crossing threads; it does no matching.
//! * **disruptor**: the `disruptor` crate's ring buffer, 1 producer → 1
//!   consumer (2 when the machine has 3 cores or more, each calling half of
//!   the handlers), busy-spinning, handlers known ahead of time. The
//!   lowest-latency hand-off in the field; no matching either.
//! * **broadcast**: `tokio::sync::broadcast`, one receiver task per
//!   subscription, filtering by its pattern with Switchboard's own matcher,
//!   on a 1-thread tokio runtime. What a Rust developer writes by hand. It has
//!   no back-pressure, so the channel is sized to never lag (and a lag fails
//!   the run).
//! * **seed**: the naive bus of the seed design, a map of pattern → handlers
//!   tested pattern by pattern on every publish, handlers called on the
//!   publishing thread.
//! * **switchboard**: the bus with its defaults and 1 worker (the same thread
//!   count as the channel), so the publisher and the dispatcher each get a
//!   core.
//!
//! `cargo run --release -p switchboard-bench -- [--quick] [--json PATH] [--chart PATH]`

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::{json, Value};
use switchboard::{Bus, Event, HandlerResult, Overflow, Priority};
use switchboard_bench::alloc::{resident_bytes, CountingAlloc};
use switchboard_bench::chart::{throughput_chart, Series};
use switchboard_bench::seed::SeedBus;
use switchboard_bench::workload::matcher_workload;
use switchboard_bench::{median_spread, Machine};
use switchboard_matcher::Pattern;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// The event every throughput scenario publishes.
const NAME: &str = "bench.tick";
/// The three subscriptions that match it, one of each kind.
const MATCHING: [&str; 3] = ["bench.tick", "bench.*", "b?nch.t[a-z]ck"];

#[derive(Parser, Debug)]
#[command(
    about = "Switchboard against a bare channel, tokio broadcast, a disruptor and the seed's algorithm"
)]
struct Args {
    /// A short run (about a minute) that checks every count; its numbers are rough.
    #[arg(long)]
    quick: bool,
    /// Write every result as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write an SVG chart of throughput against subscription count to this
    /// file (its name must end in `.svg`).
    #[arg(long)]
    chart: Option<PathBuf>,
    /// Run only these scenarios (memory, subscriptions, fanout, priority, workers, scaling, churn, nats, metrics).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Rounds per scenario (default 7, or 3 with --quick).
    #[arg(long)]
    rounds: Option<usize>,
    /// Publish this many events through a 1-subscription bus and exit: a
    /// steady load to run under a profiler.
    #[arg(long)]
    profile: Option<usize>,
    /// With --profile: the fan-out workload with this many handlers
    /// instead of one subscription.
    #[arg(long, requires = "profile")]
    fanout: Option<usize>,
    /// With --profile: the bus built with switchboard-metrics' observer
    /// (to compare instruction counts under callgrind).
    #[arg(long, requires = "profile")]
    observed: bool,
    /// With --profile: the scaling sweep's bus instead (10,000
    /// subscriptions, 3 matching each event), events cycling over this many
    /// names.
    #[arg(long, requires = "profile", conflicts_with = "fanout")]
    names: Option<usize>,
    /// With --profile: the scaling sweep's bus instead, events carrying a
    /// JSON string of this many bytes (at least 2).
    #[arg(long, requires = "profile", conflicts_with = "fanout", value_parser = clap::value_parser!(u64).range(2..))]
    payload: Option<u64>,
}

/// How big a run is.
struct Plan {
    rounds: usize,
    /// Events per run for contenders whose cost per event does not grow
    /// with the subscriptions.
    events: usize,
    /// For the contenders whose cost per event is linear in the
    /// subscriptions: events × subscriptions per run at most.
    linear_budget: usize,
    sizes: Vec<usize>,
    fanouts: Vec<usize>,
    priority_run: Duration,
    /// Events per run of the `workers` scenario (its handlers spin).
    worker_events: usize,
    churn_events: usize,
    nats_events: usize,
}

impl Plan {
    fn new(args: &Args) -> Plan {
        let quick = args.quick;
        Plan {
            rounds: args.rounds.unwrap_or(if quick { 3 } else { 7 }).max(1),
            events: if quick { 40_000 } else { 300_000 },
            linear_budget: if quick { 2_000_000 } else { 30_000_000 },
            sizes: vec![1, 100, 1_000, 10_000, 100_000],
            fanouts: vec![1, 10, 100],
            priority_run: Duration::from_millis(if quick { 400 } else { 2_000 }),
            worker_events: if quick { 20_000 } else { 100_000 },
            churn_events: if quick { 100_000 } else { 1_000_000 },
            nats_events: if quick { 20_000 } else { 200_000 },
        }
    }

    /// Events per run for a contender that tests every subscription.
    fn linear_events(&self, subscriptions: usize) -> usize {
        (self.linear_budget / subscriptions.max(1)).clamp(20, self.events)
    }
}

type SharedHandler = Arc<dyn Fn(&Event) -> HandlerResult + Send + Sync>;

/// A set of subscriptions: the first `matching` patterns match [`NAME`], the
/// rest (the filler) match nothing that is published.
struct Subs {
    patterns: Vec<String>,
    matching: usize,
    counters: Vec<Arc<AtomicU64>>,
    misfires: Arc<AtomicU64>,
}

impl Subs {
    /// `n` subscriptions of the mixed workload, `min(n, 3)` of them matching.
    fn mixed(n: usize) -> Subs {
        Subs::mixed_around(n, &MATCHING, NAME)
    }

    /// `n` subscriptions: the first `min(n, matches.len())` of `matches`,
    /// then patterns of the mixed workload that do not match `probe` (one
    /// name stands for all that are published: the workload's patterns
    /// never match a `bench.` name unless they match every name; the runs'
    /// misfire count checks it).
    fn mixed_around(n: usize, matches: &[&str], probe: &str) -> Subs {
        let matching = n.min(matches.len());
        let mut patterns: Vec<String> = matches[..matching].iter().map(|p| p.to_string()).collect();
        let mut seed = 1;
        while patterns.len() < n {
            let workload = matcher_workload((n - patterns.len()) * 11 / 10 + 16, 0, seed);
            seed += 1;
            for p in workload.patterns {
                if patterns.len() < n && !Pattern::new(&p).expect("valid").is_match(probe) {
                    patterns.push(p);
                }
            }
        }
        Subs::new(patterns, matching)
    }

    /// `k` subscriptions to [`NAME`] itself.
    fn fan_out(k: usize) -> Subs {
        Subs::new(vec![NAME.to_owned(); k], k)
    }

    fn new(patterns: Vec<String>, matching: usize) -> Subs {
        let counters = (0..matching).map(|_| Arc::new(AtomicU64::new(0))).collect();
        Subs { patterns, matching, counters, misfires: Arc::new(AtomicU64::new(0)) }
    }

    fn handler(&self, i: usize) -> SharedHandler {
        let counter =
            if i < self.matching { self.counters[i].clone() } else { self.misfires.clone() };
        Arc::new(move |_e: &Event| {
            counter.fetch_add(1, Ordering::Relaxed);
            Ok(())
        })
    }

    /// The handlers of the matching subscriptions, for the contenders that
    /// do not match.
    fn matching_handlers(&self) -> Vec<SharedHandler> {
        (0..self.matching).map(|i| self.handler(i)).collect()
    }

    fn reset(&self) {
        for c in &self.counters {
            c.store(0, Ordering::Relaxed);
        }
        self.misfires.store(0, Ordering::Relaxed);
    }

    /// Fails loudly unless every matching handler saw exactly `events`
    /// events and no other handler saw any.
    fn check(&self, contender: &str, events: usize) {
        for (i, c) in self.counters.iter().enumerate() {
            let got = c.load(Ordering::Relaxed);
            assert_eq!(
                got, events as u64,
                "{contender}: subscription {i} ({}) got {got} of {events} events",
                self.patterns[i]
            );
        }
        let misfires = self.misfires.load(Ordering::Relaxed);
        assert_eq!(misfires, 0, "{contender}: {misfires} calls of handlers that match nothing");
    }
}

fn events(n: usize) -> Vec<Event> {
    (0..n).map(|i| Event::new(NAME, Value::from(i as u64), "bench")).collect()
}

fn rate(events: usize, took: Duration) -> f64 {
    events as f64 / took.as_secs_f64()
}

// ---------------------------------------------------------------------------
// The contenders. Each runs `n` events through, checks the counts, and
// returns events per second.

fn run_channel(subs: &Subs, n: usize) -> f64 {
    run_channel_events(subs, events(n), 1, 1)
}

/// [`run_channel`] on events made by the caller, sent by `producers`
/// threads (see [`publish_from`]) to `consumers` threads that share the
/// channel.
fn run_channel_events(subs: &Subs, events: Vec<Event>, producers: usize, consumers: usize) -> f64 {
    subs.reset();
    let n = events.len();
    let handlers = subs.matching_handlers();
    let (tx, rx) = crossbeam_channel::bounded::<Arc<Event>>(65_536);
    let start = Instant::now();
    let consumers: Vec<_> = (0..consumers)
        .map(|_| {
            let (rx, handlers) = (rx.clone(), handlers.clone());
            std::thread::spawn(move || {
                for event in rx {
                    for h in &handlers {
                        h(&event).expect("counting handler");
                    }
                }
            })
        })
        .collect();
    drop(rx);
    let start = publish_from(events, producers, |event| {
        tx.send(Arc::new(event)).expect("consumer alive");
    })
    .unwrap_or(start);
    drop(tx);
    for consumer in consumers {
        consumer.join().expect("consumer");
    }
    let took = start.elapsed();
    subs.check("channel", n);
    rate(n, took)
}

/// Publishes `events` with `publish` from `producers` threads, event `i`
/// from thread `i % producers`: this thread takes the first share, and the
/// threads it spawns wait on a barrier with it so that all start together.
/// Returns when every event is published, with the instant the others
/// were released (`None` with one producer: nothing was waited for).
fn publish_from(
    events: Vec<Event>,
    producers: usize,
    publish: impl Fn(Event) + Sync,
) -> Option<Instant> {
    if producers <= 1 {
        events.into_iter().for_each(&publish);
        return None;
    }
    let mut shares: Vec<Vec<Event>> = (0..producers).map(|_| Vec::new()).collect();
    for (i, event) in events.into_iter().enumerate() {
        shares[i % producers].push(event);
    }
    let barrier = std::sync::Barrier::new(producers);
    let mut shares = shares.into_iter();
    let mine = shares.next().expect("one share at least");
    std::thread::scope(|scope| {
        for share in shares {
            let (barrier, publish) = (&barrier, &publish);
            scope.spawn(move || {
                barrier.wait();
                share.into_iter().for_each(publish);
            });
        }
        barrier.wait();
        let start = Instant::now();
        mine.into_iter().for_each(&publish);
        Some(start)
    })
}

fn run_disruptor(subs: &Subs, n: usize, cores: usize) -> f64 {
    use disruptor::{build_single_producer, BusySpin, Producer, Sequence};
    subs.reset();
    let handlers = subs.matching_handlers();
    let events = events(n);
    let consumer = |mine: Vec<SharedHandler>| {
        move |slot: &Option<Arc<Event>>, _: Sequence, _: bool| {
            if let Some(event) = slot {
                for h in &mine {
                    h(event).expect("counting handler");
                }
            }
        }
    };
    let start;
    if cores >= 3 && handlers.len() >= 2 {
        let (a, b): (Vec<_>, Vec<_>) =
            handlers.into_iter().enumerate().partition(|(i, _)| i % 2 == 0);
        let a = a.into_iter().map(|(_, h)| h).collect();
        let b = b.into_iter().map(|(_, h)| h).collect();
        let mut producer = build_single_producer(65_536, || None, BusySpin)
            .handle_events_with(consumer(a))
            .handle_events_with(consumer(b))
            .build();
        start = Instant::now();
        for event in events {
            let event = Arc::new(event);
            producer.publish(move |slot| *slot = Some(event));
        }
        drop(producer); // Waits for the consumers to finish.
    } else {
        let mut producer = build_single_producer(65_536, || None, BusySpin)
            .handle_events_with(consumer(handlers))
            .build();
        start = Instant::now();
        for event in events {
            let event = Arc::new(event);
            producer.publish(move |slot| *slot = Some(event));
        }
        drop(producer);
    }
    let took = start.elapsed();
    subs.check("disruptor", n);
    rate(n, took)
}

fn run_broadcast(subs: &Subs, n: usize, rt: &tokio::runtime::Runtime) -> f64 {
    use tokio::sync::broadcast::{self, error::RecvError};
    subs.reset();
    let events = events(n);
    let (tx, _) = broadcast::channel::<Arc<Event>>(n.next_power_of_two());
    let lagged = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = subs
        .patterns
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut rx = tx.subscribe();
            let pattern = Pattern::new(p).expect("valid");
            let handler = subs.handler(i);
            let lagged = lagged.clone();
            rt.spawn(async move {
                loop {
                    match rx.recv().await {
                        Ok(event) => {
                            if pattern.is_match(event.name()) {
                                handler(&event).expect("counting handler");
                            }
                        }
                        Err(RecvError::Closed) => break,
                        Err(RecvError::Lagged(k)) => {
                            lagged.fetch_add(k, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    let start = Instant::now();
    for event in events {
        tx.send(Arc::new(event)).expect("receivers alive");
    }
    drop(tx);
    rt.block_on(async {
        for task in tasks {
            task.await.expect("receiver task");
        }
    });
    let took = start.elapsed();
    assert_eq!(lagged.load(Ordering::Relaxed), 0, "broadcast: receivers lagged");
    subs.check("broadcast", n);
    rate(n, took)
}

fn seed_bus(subs: &Subs) -> SeedBus {
    let mut bus = SeedBus::new();
    for (i, p) in subs.patterns.iter().enumerate() {
        let h = subs.handler(i);
        bus.subscribe(p, Box::new(move |e| h(e))).expect("valid pattern");
    }
    bus
}

fn run_seed(bus: &SeedBus, subs: &Subs, n: usize) -> f64 {
    subs.reset();
    let events = events(n);
    let start = Instant::now();
    let mut called = 0;
    for event in &events {
        called += bus.publish(event).0;
    }
    let took = start.elapsed();
    assert_eq!(called, n * subs.matching);
    subs.check("seed", n);
    rate(n, took)
}

fn switchboard_bus(subs: &Subs, workers: usize) -> Bus {
    subscribed(Bus::builder().workers(workers).build().expect("bus"), subs)
}

/// `bus` with `subs`' handlers subscribed.
fn subscribed(bus: Bus, subs: &Subs) -> Bus {
    for (i, p) in subs.patterns.iter().enumerate() {
        let h = subs.handler(i);
        bus.subscribe(
            p,
            switchboard::Handler::sync(move |e: &Event| h(e)),
            &format!("plugin{}", i % 1000),
        )
        .expect("subscribe");
    }
    bus
}

fn run_switchboard(bus: &Bus, subs: &Subs, n: usize) -> f64 {
    run_switchboard_events(bus, subs, events(n), 1)
}

/// [`run_switchboard`] on events made by the caller, published by
/// `publishers` threads (see [`publish_from`]).
fn run_switchboard_events(bus: &Bus, subs: &Subs, events: Vec<Event>, publishers: usize) -> f64 {
    subs.reset();
    let n = events.len();
    let before = bus.stats();
    let start = Instant::now();
    let start = publish_from(events, publishers, |event| {
        bus.publish(event).expect("publish");
    })
    .unwrap_or(start);
    bus.flush();
    let took = start.elapsed();
    let after = bus.stats();
    assert_eq!(
        after.events_dispatched - before.events_dispatched,
        n as u64,
        "switchboard: events not dispatched"
    );
    assert_eq!(
        after.dispatched - before.dispatched,
        (n * subs.matching) as u64,
        "switchboard: calls missing"
    );
    assert_eq!(after.handler_errors, 0);
    subs.check("switchboard", n);
    rate(n, took)
}

// ---------------------------------------------------------------------------
// Results.

/// One measured number.
struct Row {
    scenario: &'static str,
    case: String,
    contender: String,
    median: f64,
    spread: f64,
    unit: &'static str,
    /// Over the bare channel's median in the same case, where there is one.
    vs_channel: Option<f64>,
}

#[derive(Default)]
struct Report {
    rows: Vec<Row>,
}

impl Report {
    fn add(
        &mut self,
        scenario: &'static str,
        case: &str,
        contender: &str,
        values: &[f64],
        unit: &'static str,
    ) {
        let (median, spread) = median_spread(values);
        self.rows.push(Row {
            scenario,
            case: case.to_owned(),
            contender: contender.to_owned(),
            median,
            spread,
            unit,
            vs_channel: None,
        });
    }

    fn value(&self, scenario: &str, case: &str, contender: &str) -> Option<f64> {
        self.rows
            .iter()
            .find(|r| r.scenario == scenario && r.case == case && r.contender == contender)
            .map(|r| r.median)
    }

    /// Fills in the ratios to the channel and prints the rows of `scenario`.
    fn print(&mut self, scenario: &str) {
        let channel: BTreeMap<String, f64> = self
            .rows
            .iter()
            .filter(|r| r.scenario == scenario && r.contender == "channel")
            .map(|r| (r.case.clone(), r.median))
            .collect();
        println!(
            "{:<40} {:<32} {:>16} {:>8} {:>11}",
            "case", "contender", "median", "spread", "vs channel"
        );
        for row in self.rows.iter_mut().filter(|r| r.scenario == scenario) {
            row.vs_channel = channel.get(&row.case).map(|c| row.median / c);
            let ratio = row.vs_channel.map_or(String::new(), |r| format!("{r:.2}x"));
            println!(
                "{:<40} {:<32} {:>16} {:>7.1}% {:>11}",
                row.case,
                row.contender,
                format!("{} {}", human(row.median), row.unit),
                row.spread * 100.0,
                ratio
            );
        }
        println!();
    }

    fn to_json(&self) -> Value {
        self.rows
            .iter()
            .map(|r| {
                json!({
                    "scenario": r.scenario,
                    "case": r.case,
                    "contender": r.contender,
                    "median": r.median,
                    "spread": r.spread,
                    "unit": r.unit,
                    "vs_channel": r.vs_channel,
                })
            })
            .collect()
    }
}

fn human(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

// ---------------------------------------------------------------------------
// Scenarios.

/// Throughput against subscription count (and fan-out, which is the same
/// run with `k` subscriptions to the published name).
fn throughput(
    report: &mut Report,
    plan: &Plan,
    scenario: &'static str,
    cases: Vec<(String, Subs)>,
) {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).build().expect("runtime");
    for (case, subs) in cases {
        let n = subs.patterns.len();
        let linear = plan.linear_events(n);
        let bus = switchboard_bus(&subs, 1);
        let seed = seed_bus(&subs);
        let mut results: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
        for _ in 0..plan.rounds {
            results.entry("channel").or_default().push(run_channel(&subs, plan.events));
            results.entry("switchboard").or_default().push(run_switchboard(
                &bus,
                &subs,
                plan.events,
            ));
            results.entry("disruptor").or_default().push(run_disruptor(&subs, plan.events, cores));
            results.entry("broadcast").or_default().push(run_broadcast(&subs, linear, &rt));
            results.entry("seed").or_default().push(run_seed(&seed, &subs, linear));
        }
        bus.shutdown();
        for contender in ["channel", "switchboard", "disruptor", "broadcast", "seed"] {
            report.add(scenario, &case, contender, &results[contender], "events/s");
        }
        eprintln!("  {scenario}: {case} done");
    }
    report.print(scenario);
}

/// What metrics cost: the bus with its defaults against the same bus built
/// with `switchboard-metrics`' observer (per-subscription call counts, one
/// call in 64 timed into histograms) and watched by its polling thread
/// (every 100 ms here, ten times its default), on the throughput and
/// fan-out workloads, rounds interleaved. No exporter is installed: the
/// facade's no-op recorder takes the samples, so what is measured is the
/// bus's side (the exporter's own cost is per sample, one call in 64).
fn metrics_cost(report: &mut Report, plan: &Plan) {
    println!("== metrics: the bus observed and watched, against the bus alone ==");
    let metrics =
        switchboard_metrics::Metrics::builder().interval(Duration::from_millis(100)).build();
    for (case, subs) in [
        ("1,000 subscriptions, 3 matching".to_owned(), Subs::mixed(1_000)),
        ("fan-out 100".to_owned(), Subs::fan_out(100)),
    ] {
        let plain = switchboard_bus(&subs, 1);
        let observed = subscribed(
            Bus::builder().workers(1).observer(metrics.observer()).build().expect("bus"),
            &subs,
        );
        metrics.watch(&observed);
        let (mut off, mut on) = (Vec::new(), Vec::new());
        for _ in 0..plan.rounds {
            off.push(run_switchboard(&plain, &subs, plan.events));
            on.push(run_switchboard(&observed, &subs, plan.events));
        }
        let calls: u64 =
            observed.subscriptions(switchboard::Target::All).iter().map(|s| s.stats.calls).sum();
        assert_eq!(
            calls,
            observed.stats().dispatched,
            "metrics: the per-subscription counts must add up to the bus's"
        );
        plain.shutdown();
        observed.shutdown();
        report.add("metrics", &case, "switchboard", &off, "events/s");
        report.add("metrics", &case, "switchboard+metrics", &on, "events/s");
        let ratio: Vec<f64> = on.iter().zip(&off).map(|(a, b)| a / b).collect();
        report.add("metrics", &case, "ratio on/off", &ratio, "x");
        eprintln!("  metrics: {case} done");
    }
    report.print("metrics");
}

/// `High` publish → handler latency while `Low` floods the bus, against the
/// same probe at the flood's own priority, and against a FIFO channel.
fn priority(report: &mut Report, plan: &Plan) {
    const FLOOD_WORK: Duration = Duration::from_micros(1);
    const PROBE_EVERY: Duration = Duration::from_millis(1);
    let origin = Instant::now();
    let spin = move |d: Duration| {
        let until = Instant::now() + d;
        while Instant::now() < until {
            std::hint::spin_loop();
        }
    };
    // (contender, case) -> latency in µs per round.
    let mut lat: BTreeMap<(&str, &str), Vec<f64>> = BTreeMap::new();
    const P50: &str = "p50 latency under Low flood";
    const P99: &str = "p99 latency under Low flood";
    for _ in 0..plan.rounds {
        // (name, probe priority, policy, priority reserve: None = default)
        let variants = [
            ("switchboard High probe, Block", Priority::High, Overflow::Block, None),
            ("switchboard High probe, Block, no reserve", Priority::High, Overflow::Block, Some(0)),
            ("switchboard High probe, Shed", Priority::High, Overflow::Shed, None),
            ("switchboard Low probe, Block", Priority::Low, Overflow::Block, None),
        ];
        for (contender, probe_priority, overflow, reserve) in variants {
            let mut builder = Bus::builder().workers(1).capacity(16_384).overflow(overflow);
            if let Some(reserve) = reserve {
                builder = builder.priority_reserve(reserve);
            }
            let bus = builder.build().expect("bus");
            let flooded = Arc::new(AtomicU64::new(0));
            let f = flooded.clone();
            bus.subscribe(
                "flood",
                switchboard::Handler::sync(move |_e: &Event| {
                    spin(FLOOD_WORK);
                    f.fetch_add(1, Ordering::Relaxed);
                    Ok(())
                }),
                "bench",
            )
            .expect("subscribe");
            let hist = latency_probe(&bus, "probe", origin);
            let stop = Arc::new(AtomicBool::new(false));
            let flooder = {
                let (bus, stop) = (bus.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut sent = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        bus.publish(
                            Event::new("flood", Value::Null, "bench").with_priority(Priority::Low),
                        )
                        .expect("publish");
                        sent += 1;
                    }
                    sent
                })
            };
            std::thread::sleep(Duration::from_millis(50)); // Let the queue fill.
            let start = Instant::now();
            let mut probes = 0u64;
            while start.elapsed() < plan.priority_run {
                let sent = origin.elapsed().as_nanos() as u64;
                bus.publish(
                    Event::new("probe", Value::from(sent), "bench").with_priority(probe_priority),
                )
                .expect("publish");
                probes += 1;
                std::thread::sleep(PROBE_EVERY);
            }
            stop.store(true, Ordering::Relaxed);
            let flood_sent = flooder.join().expect("flooder");
            bus.flush();
            let hist = hist.lock().expect("histogram").clone();
            assert_eq!(hist.len(), probes, "{contender}: probes lost");
            // Under Shed the flood makes room for the probes: every flood
            // event is either handled or counted as dropped.
            let shed = bus.stats().dropped;
            assert_eq!(
                flooded.load(Ordering::Relaxed) + shed,
                flood_sent,
                "{contender}: flood events lost"
            );
            if overflow == Overflow::Block {
                assert_eq!(shed, 0, "{contender}: Block dropped events");
            }
            bus.shutdown();
            lat.entry((contender, P50)).or_default().push(hist.value_at_quantile(0.5) as f64 / 1e3);
            lat.entry((contender, P99))
                .or_default()
                .push(hist.value_at_quantile(0.99) as f64 / 1e3);
        }
        // The FIFO baseline: the probe waits behind the flood in one channel.
        let (tx, rx) = crossbeam_channel::bounded::<Option<u64>>(16_384);
        let consumer = std::thread::spawn(move || {
            let mut hist = hdrhistogram::Histogram::<u64>::new(3).expect("histogram");
            let mut flood = 0u64;
            for item in rx {
                match item {
                    None => {
                        spin(FLOOD_WORK);
                        flood += 1;
                    }
                    Some(sent) => {
                        let now = origin.elapsed().as_nanos() as u64;
                        hist.record(now.saturating_sub(sent).max(1)).expect("in range");
                    }
                }
            }
            (hist, flood)
        });
        let stop = Arc::new(AtomicBool::new(false));
        let flooder = {
            let (tx, stop) = (tx.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut sent = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    tx.send(None).expect("consumer");
                    sent += 1;
                }
                sent
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        let start = Instant::now();
        let mut probes = 0u64;
        while start.elapsed() < plan.priority_run {
            tx.send(Some(origin.elapsed().as_nanos() as u64)).expect("consumer");
            probes += 1;
            std::thread::sleep(PROBE_EVERY);
        }
        stop.store(true, Ordering::Relaxed);
        let flood_sent = flooder.join().expect("flooder");
        drop(tx);
        let (hist, flood) = consumer.join().expect("consumer");
        assert_eq!(hist.len(), probes, "channel: probes lost");
        assert_eq!(flood, flood_sent, "channel: flood lost");
        let fifo = "channel (FIFO) probe";
        lat.entry((fifo, P50)).or_default().push(hist.value_at_quantile(0.5) as f64 / 1e3);
        lat.entry((fifo, P99)).or_default().push(hist.value_at_quantile(0.99) as f64 / 1e3);
    }
    for ((contender, case), values) in &lat {
        report.add("priority", case, contender, values, "us");
    }
    println!("== priority: probe publish -> handler latency, one probe per ms, while a Low flood keeps the queue (16k) full; 1 us handlers ==");
    println!("   Block: a publisher waits for room below its priority's limit; Low stops 2/16 short of the capacity and Normal 1/16 (the priority reserve), so High finds room. No reserve: every priority competes for the whole capacity. Shed: a High publish displaces the oldest Low event.");
    report.print("priority");
}

/// Subscribes a handler that records, for each event, the time since the
/// send time its payload carries (nanoseconds since `origin`).
fn latency_probe(
    bus: &Bus,
    pattern: &str,
    origin: Instant,
) -> Arc<Mutex<hdrhistogram::Histogram<u64>>> {
    let hist = Arc::new(Mutex::new(hdrhistogram::Histogram::<u64>::new(3).expect("histogram")));
    let h = hist.clone();
    bus.subscribe(
        pattern,
        switchboard::Handler::sync(move |e: &Event| {
            let sent = e.data().as_u64().unwrap_or(0);
            let now = origin.elapsed().as_nanos() as u64;
            h.lock().expect("histogram").record(now.saturating_sub(sent).max(1)).expect("in range");
            Ok(())
        }),
        "latency",
    )
    .expect("subscribe");
    hist
}

/// Events per second with 1..=cores workers, 4 handlers per event that each
/// spin for 1 µs.
fn workers(report: &mut Report, plan: &Plan) {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let subs = Subs::fan_out(4);
    let work = |h: SharedHandler| -> SharedHandler {
        Arc::new(move |e: &Event| {
            let until = Instant::now() + Duration::from_micros(1);
            while Instant::now() < until {
                std::hint::spin_loop();
            }
            h(e)
        })
    };
    let buses: Vec<(usize, Bus)> = (1..=cores.max(2))
        .map(|w| {
            let bus = Bus::builder().workers(w).build().expect("bus");
            for i in 0..subs.patterns.len() {
                let h = work(subs.handler(i));
                bus.subscribe(
                    NAME,
                    switchboard::Handler::sync(move |e: &Event| h(e)),
                    &format!("plugin{i}"),
                )
                .expect("subscribe");
            }
            (w, bus)
        })
        .collect();
    let mut results: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    for _ in 0..plan.rounds {
        for (w, bus) in &buses {
            results.entry(*w).or_default().push(run_switchboard(bus, &subs, plan.worker_events));
        }
    }
    for (w, values) in &results {
        report.add(
            "workers",
            &format!("{w} worker(s), 4 x 1 us handlers"),
            "switchboard",
            values,
            "events/s",
        );
    }
    for (_, bus) in buses {
        bus.shutdown();
    }
    println!("== worker scaling: 4 handlers per event, each spinning 1 us ({cores} cores) ==");
    report.print("workers");
}

/// Subscriptions on the buses of the scaling sweep: the `subscriptions`
/// scenario's 10k case, so its base lines up with that row.
const SWEEP_SUBSCRIPTIONS: usize = 10_000;
/// The three subscriptions that match every name of the names axis
/// (`bench.tick.0`, `bench.tick.1`, ...): a prefix, a wider prefix, a glob.
const SWEEP_MATCHING: [&str; 3] = ["bench.tick.*", "bench.*", "b?nch.t[a-z]ck.*"];

/// One point of the scaling sweep: the base (1 publisher, 1 worker, the
/// event's number as payload, [`NAME`] alone) with one axis moved.
struct Point {
    axis: &'static str,
    case: String,
    publishers: usize,
    workers: usize,
    /// The payload's size as JSON (a string of that many bytes, quotes
    /// included), or `None` for the event's number.
    payload: Option<usize>,
    /// How many names the events cycle over, or `None` for [`NAME`] alone.
    names: Option<usize>,
}

impl Point {
    fn base(axis: &'static str, case: String) -> Point {
        Point { axis, case, publishers: 1, workers: 1, payload: None, names: None }
    }
}

/// The events of one run at `point`: `n` of them, made before the clock
/// starts.
///
/// Each name is formatted for its event, not cloned from a table of names:
/// a table of 100k names freed before the clock starts left the heap
/// holes that the timed run's allocations filled, and made that point
/// cheaper for the channel too (0.74x-0.77x the 10 names' cost in three
/// runs), though the channel never reads a name.
fn sweep_events(point: &Point, n: usize) -> Vec<Event> {
    let payload = point.payload.map(|size| Value::String("x".repeat(size - 2)));
    (0..n)
        .map(|i| {
            let data = payload.clone().unwrap_or_else(|| Value::from(i as u64));
            let name = match point.names {
                Some(k) => format!("bench.tick.{}", i % k),
                None => NAME.to_owned(),
            };
            Event::new(name, data, "bench")
        })
        .collect()
}

/// How the cost per event grows, one axis at a time, for the bus and for a
/// bare channel carrying the same events to the same handlers: publishers
/// 1 and 2 (the channel gets as many producers), workers 1 and 2 (the
/// channel as many consumers), payloads of 16 B, 256 B and 4 KB, and 10,
/// 1k and 100k distinct names (past the 256 slots of a worker's match
/// cache, names go to the matcher). The subscriptions axis is the
/// `subscriptions` scenario.
fn scaling(report: &mut Report, plan: &Plan) {
    let base = Subs::mixed(SWEEP_SUBSCRIPTIONS);
    let named = Subs::mixed_around(SWEEP_SUBSCRIPTIONS, &SWEEP_MATCHING, "bench.tick.0");
    let point = Point::base;
    let mut points = Vec::new();
    for p in [1, 2] {
        points.push(Point { publishers: p, ..point("publishers", format!("{p} publisher(s)")) });
    }
    for w in [1, 2] {
        points.push(Point { workers: w, ..point("workers", format!("{w} worker(s)")) });
    }
    for size in [16, 256, 4096] {
        points.push(Point { payload: Some(size), ..point("payload", format!("payload {size} B")) });
    }
    for k in [10, 1_000, 100_000] {
        points.push(Point { names: Some(k), ..point("names", format!("{k} names")) });
    }
    // Every point's bus is built first and every round visits every point,
    // so that the points of an axis, not only the contenders at one point,
    // are measured close together in time: the machine's load drifts.
    let buses: Vec<Bus> = points
        .iter()
        .map(|point| {
            switchboard_bus(if point.names.is_some() { &named } else { &base }, point.workers)
        })
        .collect();
    // (switchboard rates, channel rates) at each point, in order.
    let mut measured: Vec<(Vec<f64>, Vec<f64>)> = vec![(Vec::new(), Vec::new()); points.len()];
    for round in 0..plan.rounds {
        for ((point, bus), (sb, ch)) in points.iter().zip(&buses).zip(&mut measured) {
            let subs = if point.names.is_some() { &named } else { &base };
            // Every name published at least once.
            let n = plan.events.max(point.names.unwrap_or(0));
            let events = sweep_events(point, n);
            ch.push(run_channel_events(subs, events, point.publishers, point.workers));
            let events = sweep_events(point, n);
            sb.push(run_switchboard_events(bus, subs, events, point.publishers));
        }
        eprintln!("  scaling: round {} of {} done", round + 1, plan.rounds);
    }
    for bus in buses {
        bus.shutdown();
    }
    for (point, (sb, ch)) in points.iter().zip(&measured) {
        report.add("scaling", &point.case, "channel", ch, "events/s");
        report.add("scaling", &point.case, "switchboard", sb, "events/s");
    }
    println!(
        "== scaling: one axis at a time from 1 publisher, 1 worker, {SWEEP_SUBSCRIPTIONS} subscriptions (3 matching), a number as payload, one name; {} events per run; the channel gets as many producers and consumers ==",
        plan.events
    );
    report.print("scaling");
    // Cost per event at each axis's high end over its low end, round by
    // round (one point's round i against the other's).
    for (axis, case) in [
        ("publishers", "publishers 1 -> 2"),
        ("workers", "workers 1 -> 2"),
        ("payload", "payload 16 B -> 4096 B"),
        ("names", "names 10 -> 100000"),
    ] {
        let on: Vec<_> =
            points.iter().zip(&measured).filter(|(p, _)| p.axis == axis).map(|(_, m)| m).collect();
        let (low, high) = (on[0], on[on.len() - 1]);
        let grows =
            |l: &[f64], h: &[f64]| -> Vec<f64> { l.iter().zip(h).map(|(l, h)| l / h).collect() };
        report.add("scaling-growth", case, "channel", &grows(&low.1, &high.1), "x");
        report.add("scaling-growth", case, "switchboard", &grows(&low.0, &high.0), "x");
    }
    println!("== scaling: cost per event at the high end over the low end (vs channel: the bus's growth over the channel's) ==");
    report.print("scaling-growth");
}

/// Subscribes and unsubscribes as fast as one thread can while a publisher
/// runs at full rate, against the same publishing without churn.
fn churn(report: &mut Report, plan: &Plan) {
    let subs = Subs::mixed(10_000);
    let spare: Vec<String> = Subs::mixed(11_000).patterns.split_off(10_000);
    let bus = switchboard_bus(&subs, 1);
    let mut quiet = Vec::new();
    let mut churning = Vec::new();
    let mut ops = Vec::new();
    for _ in 0..plan.rounds {
        quiet.push(run_switchboard(&bus, &subs, plan.churn_events));
        let stop = Arc::new(AtomicBool::new(false));
        let churner = {
            let (bus, stop, spare) = (bus.clone(), stop.clone(), spare.clone());
            std::thread::spawn(move || {
                let start = Instant::now();
                let mut pairs = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let pattern = &spare[pairs as usize % spare.len()];
                    let id = bus
                        .subscribe(
                            pattern,
                            switchboard::Handler::sync(|_e: &Event| Ok(())),
                            "churn",
                        )
                        .expect("subscribe");
                    assert!(bus.unsubscribe(id).count() == 1);
                    pairs += 1;
                }
                pairs as f64 / start.elapsed().as_secs_f64()
            })
        };
        churning.push(run_switchboard(&bus, &subs, plan.churn_events));
        stop.store(true, Ordering::Relaxed);
        ops.push(churner.join().expect("churner"));
        assert_eq!(bus.stats().subscriptions, 10_000, "churn left subscriptions behind");
    }
    bus.shutdown();
    report.add("churn", "10k subscriptions, publishing alone", "switchboard", &quiet, "events/s");
    report.add("churn", "10k subscriptions, while churning", "switchboard", &churning, "events/s");
    report.add("churn", "subscribe+unsubscribe pairs meanwhile", "switchboard", &ops, "pairs/s");
    println!(
        "== churn: one thread subscribing and unsubscribing while one publishes at full rate =="
    );
    report.print("churn");
    let (q, c) = (median_spread(&quiet).0, median_spread(&churning).0);
    println!("throughput while churning: {:.2}x of publishing alone\n", c / q);
}

/// Bytes per subscription and resident memory at 100k subscriptions, and
/// allocations per published event.
fn memory(report: &mut Report, plan: &Plan) {
    let subs = Subs::mixed(100_000);
    let handlers: Vec<SharedHandler> = (0..subs.patterns.len()).map(|i| subs.handler(i)).collect();
    let rss_before = resident_bytes();
    let bus = Bus::builder().workers(1).build().expect("bus");
    CountingAlloc::start();
    for (i, (p, h)) in subs.patterns.iter().zip(&handlers).enumerate() {
        let h = h.clone();
        bus.subscribe(
            p,
            switchboard::Handler::sync(move |e: &Event| h(e)),
            &format!("plugin{}", i % 1000),
        )
        .expect("subscribe");
    }
    let counted = CountingAlloc::stop();
    let rss_after = resident_bytes();
    let per_sub = counted.live_bytes as f64 / subs.patterns.len() as f64;
    report.add("memory", "bytes per subscription at 100k", "switchboard", &[per_sub], "B");
    if let (Some(before), Some(after)) = (rss_before, rss_after) {
        report.add(
            "memory",
            "resident growth for 100k subscriptions",
            "switchboard",
            &[(after - before) as f64 / 1048576.0],
            "MiB",
        );
        report.add(
            "memory",
            "resident total with 100k subscriptions",
            "switchboard",
            &[after as f64 / 1048576.0],
            "MiB",
        );
    }
    // Allocations per event: events made ahead, so only the bus counts.
    let n = plan.events.min(100_000);
    let mut per_event = Vec::new();
    for _ in 0..plan.rounds {
        subs.reset();
        let events = events(n);
        CountingAlloc::start();
        for event in events {
            bus.publish(event).expect("publish");
        }
        bus.flush();
        let counted = CountingAlloc::stop();
        subs.check("switchboard", n);
        per_event.push(counted.allocations as f64 / n as f64);
    }
    report.add(
        "memory",
        "allocations per event (100k subs, 3 matching)",
        "switchboard",
        &per_event,
        "allocs",
    );
    bus.shutdown();
    drop(handlers);
    queued_bytes(report);
    println!(
        "== memory (live heap bytes counted by the bench's allocator; resident from the OS) =="
    );
    report.print("memory");
}

/// Heap bytes per event waiting in the queue under a flood: the one worker
/// is held in a handler while 50,000 events are made and published, for
/// three small payloads. What the event holds (its block, name, source and
/// payload) and its queue slot's share, as the allocator was asked for them
/// (malloc's own overhead not counted).
fn queued_bytes(report: &mut Report) {
    const N: usize = 50_000;
    type Make = fn(usize) -> Event;
    let kinds: [(&str, Make); 3] = [
        ("a number", |i| Event::new(NAME, Value::from(i as u64), "bench")),
        ("a one-key JSON object", |i| Event::new(NAME, json!({ "n": i }), "bench")),
        ("a typed u64", |i| Event::typed(NAME, i as u64, "bench")),
    ];
    for (what, make) in kinds {
        let bus = Bus::builder().workers(1).build().expect("bus");
        let delivered = Arc::new(AtomicU64::new(0));
        let d = delivered.clone();
        bus.subscribe(
            NAME,
            switchboard::Handler::sync(move |_| {
                d.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }),
            "counter",
        )
        .expect("subscribe");
        let (release, held) = std::sync::mpsc::channel::<()>();
        let held = Mutex::new(held);
        let holding = Arc::new(AtomicBool::new(false));
        let h = holding.clone();
        bus.subscribe(
            "hold",
            switchboard::Handler::sync(move |_| {
                h.store(true, Ordering::SeqCst);
                let _ = held.lock().expect("lock").recv();
                Ok(())
            }),
            "holder",
        )
        .expect("subscribe");
        bus.publish(Event::new("hold", Value::Null, "bench")).expect("publish");
        while !holding.load(Ordering::SeqCst) {
            std::thread::yield_now();
        }
        CountingAlloc::start();
        for i in 0..N {
            bus.publish(make(i)).expect("publish");
        }
        let counted = CountingAlloc::stop();
        release.send(()).expect("release");
        bus.flush();
        assert_eq!(delivered.load(Ordering::Relaxed), N as u64, "queued events lost");
        bus.shutdown();
        report.add(
            "memory",
            &format!("bytes per queued event, {what}"),
            "switchboard",
            &[counted.live_bytes as f64 / N as f64],
            "B",
        );
    }
}

/// The NATS server for the bridge scenario, or `None` (after saying why)
/// when none answers and `SWITCHBOARD_REQUIRE_NATS=1` is not set.
fn nats_server() -> Option<String> {
    let url =
        std::env::var("SWITCHBOARD_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let addr = url.trim_start_matches("nats://");
    let up = addr
        .parse()
        .ok()
        .is_some_and(|a| std::net::TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok());
    if up {
        return Some(url);
    }
    let why = format!("no NATS server answers at {url} (start one with `nats-server -js`, or set SWITCHBOARD_NATS_URL)");
    assert!(std::env::var("SWITCHBOARD_REQUIRE_NATS").as_deref() != Ok("1"), "{why}");
    println!("== nats: skipped: {why} ==\n");
    None
}

/// Two buses bridged through NATS on this machine: events/s from a publish
/// on one to the handler on the other, core and JetStream, and publish →
/// handler latency, against the same events dispatched locally.
fn nats(report: &mut Report, plan: &Plan) {
    use switchboard_nats::{Bridge, BridgeConfig, JetStreamConfig, Mode};
    let Some(url) = nats_server() else { return };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let run = |mode: &str, n: usize| -> (f64, f64) {
        rt.block_on(async {
            let prefix = format!("bench.p{}.{mode}.{}", std::process::id(), rand_suffix());
            let (a, b) = (
                Bus::builder().workers(1).build().expect("bus"),
                Bus::builder().workers(1).build().expect("bus"),
            );
            let stream = format!("SWITCHBOARD_BENCH_{}", prefix.replace('.', "_"));
            let with_mode = |c: BridgeConfig, durable: &str| match mode {
                "jetstream" => {
                    c.mode(Mode::JetStream(JetStreamConfig::new(durable).stream(stream.clone())))
                }
                _ => c,
            };
            let ea = Bridge::start(
                &a,
                with_mode(
                    // Room for the whole burst: the publisher outruns the
                    // exporter, and a full outbox would drop (and count).
                    BridgeConfig::new(&url).prefix(&prefix).export("bench.*").queue_capacity(n),
                    "bench_a",
                ),
            )
            .await
            .expect("bridge");
            let ib = Bridge::start(
                &b,
                with_mode(
                    // Core NATS has no flow control: an importer that falls
                    // behind by more than its buffer loses messages.
                    BridgeConfig::new(&url)
                        .prefix(&prefix)
                        .import("bench.*")
                        .subscription_capacity(n),
                    "bench_b",
                ),
            )
            .await
            .expect("bridge");
            let (local, remote) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
            let l = local.clone();
            a.subscribe(
                "bench.*",
                switchboard::Handler::sync(move |_e: &Event| {
                    l.fetch_add(1, Ordering::Relaxed);
                    Ok(())
                }),
                "local",
            )
            .expect("subscribe");
            let r = remote.clone();
            b.subscribe(
                "bench.*",
                switchboard::Handler::sync(move |_e: &Event| {
                    r.fetch_add(1, Ordering::Relaxed);
                    Ok(())
                }),
                "remote",
            )
            .expect("subscribe");
            let events: Vec<Event> =
                (0..n).map(|i| Event::new("bench.tick", Value::from(i as u64), "bench")).collect();
            let start = Instant::now();
            for event in events {
                a.publish_async(event).await.expect("publish");
            }
            a.flush_async().await;
            let local_took = start.elapsed();
            while remote.load(Ordering::Relaxed) < n as u64 {
                let (sa, sb) = (ea.stats(), ib.stats());
                assert!(
                    start.elapsed() < Duration::from_secs(120)
                        && sa.dropped == 0
                        && sb.slow_consumer == 0,
                    "bridge: {} of {n} arrived: {sa:?} {sb:?}",
                    remote.load(Ordering::Relaxed),
                );
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            let remote_took = start.elapsed();
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert_eq!(local.load(Ordering::Relaxed), n as u64, "local deliveries");
            assert_eq!(
                remote.load(Ordering::Relaxed),
                n as u64,
                "bridged deliveries (duplicates?)"
            );
            assert_eq!(ea.stats().dropped, 0, "the bridge dropped events");
            ea.shutdown(Duration::from_secs(5)).await;
            ib.shutdown(Duration::from_secs(5)).await;
            a.shutdown();
            b.shutdown();
            if mode == "jetstream" {
                // Leave the shared server as it was.
                let client =
                    switchboard_nats::async_nats::connect(url.as_str()).await.expect("connect");
                switchboard_nats::async_nats::jetstream::new(client)
                    .delete_stream(&stream)
                    .await
                    .expect("delete the bench stream");
            }
            (rate(n, local_took), rate(n, remote_took))
        })
    };
    let rounds = plan.rounds.min(3);
    let (mut local, mut core, mut js) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        let (l, c) = run("core", plan.nats_events);
        local.push(l);
        core.push(c);
        js.push(run("jetstream", plan.nats_events / 10).1);
    }
    let case = "A -> NATS -> B, 1 handler";
    report.add("nats", case, "local dispatch on A", &local, "events/s");
    report.add("nats", case, "bridged, core NATS", &core, "events/s");
    report.add("nats", case, "bridged, JetStream", &js, "events/s");

    // Latency at a paced 5,000 events/s for a second, core mode.
    let (local_h, remote_h) = rt.block_on(async {
        let prefix = format!("bench.p{}.latency.{}", std::process::id(), rand_suffix());
        let (a, b) = (
            Bus::builder().workers(1).build().expect("bus"),
            Bus::builder().workers(1).build().expect("bus"),
        );
        let ea = Bridge::start(&a, BridgeConfig::new(&url).prefix(&prefix).export("bench.*"))
            .await
            .expect("bridge");
        let ib = Bridge::start(&b, BridgeConfig::new(&url).prefix(&prefix).import("bench.*"))
            .await
            .expect("bridge");
        let origin = Instant::now();
        let (hl, hr) = (latency_probe(&a, "bench.*", origin), latency_probe(&b, "bench.*", origin));
        let n = 5_000u64;
        let mut tick = tokio::time::interval(Duration::from_micros(200));
        for _ in 0..n {
            tick.tick().await;
            let sent = origin.elapsed().as_nanos() as u64;
            a.publish(Event::new("bench.tick", Value::from(sent), "bench")).expect("publish");
        }
        a.flush_async().await;
        let deadline = Instant::now() + Duration::from_secs(30);
        while hr.lock().expect("histogram").len() < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(
            hr.lock().expect("histogram").len(),
            n,
            "bridged latency probes lost: {:?}",
            ib.stats()
        );
        ea.shutdown(Duration::from_secs(5)).await;
        ib.shutdown(Duration::from_secs(5)).await;
        let out = (hl.lock().expect("histogram").clone(), hr.lock().expect("histogram").clone());
        out
    });
    for (name, h) in [("local dispatch on A", &local_h), ("bridged, core NATS", &remote_h)] {
        report.add(
            "nats",
            "p50 latency at 5k events/s",
            name,
            &[h.value_at_quantile(0.5) as f64 / 1e3],
            "us",
        );
        report.add(
            "nats",
            "p99 latency at 5k events/s",
            name,
            &[h.value_at_quantile(0.99) as f64 / 1e3],
            "us",
        );
    }
    println!("== nats: two buses bridged through the NATS server at {url} (same machine); {} events per core run, a tenth per JetStream run ==", plan.nats_events);
    report.print("nats");
    let (l, c, j) = (median_spread(&local).0, median_spread(&core).0, median_spread(&js).0);
    println!("bridged over local: core {:.2}x, JetStream {:.3}x\n", c / l, j / l);
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        % 1_000_000_007
}

fn profile(args: &Args, events: usize) {
    if args.names.is_some() || args.payload.is_some() {
        let point = Point {
            names: args.names,
            payload: args.payload.map(|b| b as usize),
            ..Point::base("profile", String::new())
        };
        let subs = if point.names.is_some() {
            Subs::mixed_around(SWEEP_SUBSCRIPTIONS, &SWEEP_MATCHING, "bench.tick.0")
        } else {
            Subs::mixed(SWEEP_SUBSCRIPTIONS)
        };
        let bus = switchboard_bus(&subs, 1);
        let per_second = run_switchboard_events(&bus, &subs, sweep_events(&point, events), 1);
        bus.shutdown();
        println!(
            "{events} events over {} name(s), payload {}, 3 of {SWEEP_SUBSCRIPTIONS} subscriptions matching, {per_second:.0} events/s",
            point.names.unwrap_or(1),
            point.payload.map_or("a number".to_owned(), |b| format!("{b} B")),
        );
        return;
    }
    let (fanout, observed) = (args.fanout, args.observed);
    let subs = fanout.map_or_else(|| Subs::mixed(1), Subs::fan_out);
    let metrics = switchboard_metrics::Metrics::new();
    let mut builder = Bus::builder().workers(1);
    if observed {
        builder = builder.observer(metrics.observer());
    }
    let bus = subscribed(builder.build().expect("bus"), &subs);
    let per_second = run_switchboard(&bus, &subs, events);
    bus.shutdown();
    println!("{events} events through {} subscriptions, {per_second:.0} events/s", subs.matching);
}

fn main() {
    let args = Args::parse();
    if let Some(path) = &args.chart {
        // Refused before the run, not after it: the chart is SVG, whatever
        // the name says.
        if path.extension().is_none_or(|e| !e.eq_ignore_ascii_case("svg")) {
            eprintln!("--chart {}: the chart is SVG, name the file *.svg", path.display());
            std::process::exit(2);
        }
    }
    if let Some(events) = args.profile {
        profile(&args, events);
        return;
    }
    let plan = Plan::new(&args);
    let machine = Machine::detect();
    let wants = |s: &str| args.only.is_empty() || args.only.iter().any(|o| o == s);
    let started = Instant::now();
    println!(
        "Switchboard comparison bench{}: {} cores, {}, {}, {}",
        if args.quick { " (quick: rough numbers, checked counts)" } else { "" },
        machine.cores,
        machine.cpu,
        machine.rustc,
        machine.os
    );
    println!(
        "{} rounds interleaved per case, medians; spread = (max - min) / 2 / median\n",
        plan.rounds
    );
    let mut report = Report::default();
    // Memory first, while the heap and the resident set are fresh.
    if wants("memory") {
        memory(&mut report, &plan);
    }
    if wants("subscriptions") {
        println!(
            "== throughput against subscriptions: each event matches min(n, 3) of them; {} events per run ({} per run for broadcast and seed, at most) ==",
            plan.events,
            plan.events
        );
        let cases =
            plan.sizes.iter().map(|&n| (format!("{n} subscriptions"), Subs::mixed(n))).collect();
        throughput(&mut report, &plan, "subscriptions", cases);
    }
    if wants("fanout") {
        println!("== fan-out: one event to k handlers of the same name ==");
        let cases =
            plan.fanouts.iter().map(|&k| (format!("fan-out {k}"), Subs::fan_out(k))).collect();
        throughput(&mut report, &plan, "fanout", cases);
    }
    if wants("priority") {
        priority(&mut report, &plan);
    }
    if wants("workers") {
        workers(&mut report, &plan);
    }
    if wants("scaling") {
        scaling(&mut report, &plan);
    }
    if wants("churn") {
        churn(&mut report, &plan);
    }
    if wants("nats") {
        nats(&mut report, &plan);
    }
    if wants("metrics") {
        metrics_cost(&mut report, &plan);
    }
    let headline = headline(&report);
    println!("finished in {:.0} s", started.elapsed().as_secs_f64());
    if let Some(path) = &args.json {
        let out = json!({
            "machine": {"cores": machine.cores, "cpu": machine.cpu, "rustc": machine.rustc, "os": machine.os},
            "quick": args.quick,
            "rounds": plan.rounds,
            "headline": headline,
            "results": report.to_json(),
        });
        std::fs::write(path, serde_json::to_string_pretty(&out).expect("json") + "\n")
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        println!("wrote {}", path.display());
    }
    if let Some(path) = &args.chart {
        let series: Vec<Series> = ["switchboard", "channel", "disruptor", "broadcast", "seed"]
            .iter()
            .map(|c| Series {
                name: chart_label(c).to_owned(),
                points: plan
                    .sizes
                    .iter()
                    .filter_map(|&n| {
                        report
                            .value("subscriptions", &format!("{n} subscriptions"), c)
                            .map(|v| (n as f64, v))
                    })
                    .collect(),
            })
            .filter(|s| !s.points.is_empty())
            .collect();
        let title = format!(
            "Events/s against subscriptions, 3 deliveries per event (1 at n = 1) ({} cores, {})",
            machine.cores, machine.cpu
        );
        match throughput_chart(path, &title, &series) {
            Ok(()) => println!("wrote {}", path.display()),
            Err(e) => {
                eprintln!("cannot draw {}: {e}", path.display());
                std::process::exit(1);
            }
        }
    }
}

fn chart_label(contender: &str) -> &'static str {
    match contender {
        "switchboard" => "switchboard (1 worker)",
        "channel" => "crossbeam channel (hand-off only, no matching)",
        "disruptor" => "disruptor (hand-off only, no matching)",
        "broadcast" => "tokio broadcast, a receiver task per subscription filtering",
        _ => "seed algorithm (every pattern tested, on the publisher)",
    }
}

/// Switchboard over each contender at 10k subscriptions.
fn headline(report: &Report) -> Value {
    let case = "10000 subscriptions";
    let Some(sb) = report.value("subscriptions", case, "switchboard") else { return Value::Null };
    let mut out = serde_json::Map::new();
    println!("== headline: switchboard at 10k subscriptions over each contender, same run ==");
    for contender in ["channel", "broadcast", "disruptor", "seed"] {
        if let Some(v) = report.value("subscriptions", case, contender) {
            println!("  over {contender:<10} {:>8.2}x", sb / v);
            out.insert(contender.to_owned(), json!(sb / v));
        }
    }
    println!();
    Value::Object(out)
}
