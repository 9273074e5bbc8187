//! Fan-out: the bus calling many handlers per event, against one thread
//! calling the same handlers in a plain loop (no bus, no threads, the
//! matching done ahead of time), measured in the same run.
//!
//! * **plugins**: 10,000 subscriptions, each its own plugin with a handler
//!   counting in its own state: 90% literal names (`pluginN.actionM`), 9%
//!   `pluginN.*`, 1% `*`. Every event matches 110 of them (1 literal, 9
//!   prefixes, 100 stars).
//! * **fan-out 1, 10, 100**: that many subscriptions to one literal name.
//!
//! Handler calls per second, bus over loop; medians over rounds that
//! alternate between the two. Every run checks every handler's count.
//!
//! `cargo run --release -p switchboard-bench --bin fan_out -- [--workers N] [--rounds N] [--only K]`

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;
use switchboard::{Bus, Event, HandlerResult};
use switchboard_bench::workload::Rng;
use switchboard_matcher::PatternSet;

type LoopHandler = Box<dyn Fn(&Event) -> HandlerResult + Send + Sync>;

/// One subscription of a scenario: its pattern and its own counter.
struct Sub {
    pattern: String,
    /// How many events of the scenario it matches.
    expected: u64,
    count: Arc<AtomicU64>,
}

impl Sub {
    fn handler(&self) -> LoopHandler {
        let count = self.count.clone();
        Box::new(move |_e: &Event| {
            count.fetch_add(1, Ordering::Relaxed);
            Ok(())
        })
    }
}

struct Scenario {
    label: String,
    set: PatternSet,
    subs: Vec<Sub>,
    names: Vec<String>,
    /// For each name, how many subscriptions match it.
    matches: Vec<usize>,
}

impl Scenario {
    fn plugins(events: usize) -> Scenario {
        const PLUGINS: usize = 100;
        const ACTIONS: usize = 90;
        let mut patterns = Vec::with_capacity(10_000);
        for i in 0..9_000 {
            patterns.push(format!("plugin{}.action{}", i % PLUGINS, (i / PLUGINS) % ACTIONS));
        }
        for i in 0..900 {
            patterns.push(format!("plugin{}.*", i % PLUGINS));
        }
        patterns.extend((0..100).map(|_| "*".to_owned()));
        let mut rng = Rng::new(7);
        let names = (0..events)
            .map(|_| {
                format!("plugin{}.action{}", rng.below(PLUGINS as u64), rng.below(ACTIONS as u64))
            })
            .collect();
        Scenario::new("10k plugins (110 matches/event)".into(), patterns, names)
    }

    fn fan_out(n: usize, events: usize) -> Scenario {
        let patterns = vec!["fan.out".to_owned(); n];
        let names = vec!["fan.out".to_owned(); events];
        Scenario::new(format!("fan-out {n} (one literal name)"), patterns, names)
    }

    fn new(label: String, patterns: Vec<String>, names: Vec<String>) -> Scenario {
        let set = PatternSet::new(&patterns).expect("valid patterns");
        let mut expected = vec![0u64; patterns.len()];
        let mut cache = HashMap::<&str, Vec<usize>>::new();
        let matches = names
            .iter()
            .map(|n| {
                let hits = cache.entry(n.as_str()).or_insert_with(|| set.matches(n));
                hits.iter().for_each(|&i| expected[i] += 1);
                hits.len()
            })
            .collect();
        let subs = patterns
            .into_iter()
            .zip(expected)
            .map(|(pattern, expected)| Sub {
                pattern,
                expected,
                count: Arc::new(AtomicU64::new(0)),
            })
            .collect();
        Scenario { label, set, subs, names, matches }
    }

    fn events(&self) -> Vec<Event> {
        self.names.iter().map(|n| Event::new(n.as_str(), Value::Null, "bench")).collect()
    }

    fn calls(&self) -> u64 {
        self.matches.iter().sum::<usize>() as u64
    }

    fn reset(&self) {
        self.subs.iter().for_each(|s| s.count.store(0, Ordering::Relaxed));
    }

    /// Checks every handler was called exactly as often as its pattern
    /// matched an event.
    fn check(&self, who: &str) {
        let mut total = 0;
        for s in &self.subs {
            let got = s.count.load(Ordering::Relaxed);
            assert_eq!(
                got, s.expected,
                "{who}: `{}` was called {got} times, not {}",
                s.pattern, s.expected
            );
            total += got;
        }
        assert_eq!(total, self.calls(), "{who}: wrong number of calls");
    }

    /// Calls per second of one thread calling the matched handlers in turn.
    fn plain_loop(&self) -> f64 {
        self.reset();
        let handlers: Vec<LoopHandler> = self.subs.iter().map(Sub::handler).collect();
        // The matching is done ahead of time: the loop only calls.
        let mut table = HashMap::<&str, Vec<&LoopHandler>>::new();
        for n in &self.names {
            table
                .entry(n.as_str())
                .or_insert_with(|| self.set.matches(n).into_iter().map(|i| &handlers[i]).collect());
        }
        let plan: Vec<&Vec<&LoopHandler>> = self.names.iter().map(|n| &table[n.as_str()]).collect();
        let events = self.events();
        let start = Instant::now();
        for (event, handlers) in events.iter().zip(&plan) {
            for h in handlers.iter() {
                h(event).expect("trivial handler");
            }
        }
        let took = start.elapsed();
        drop(events);
        self.check("loop");
        self.calls() as f64 / took.as_secs_f64()
    }

    /// Calls per second of the bus with `workers` workers.
    fn bus(&self, workers: usize) -> f64 {
        self.reset();
        let bus = Bus::builder().workers(workers).history_size(0).build().expect("bus");
        for (i, s) in self.subs.iter().enumerate() {
            let count = s.count.clone();
            bus.subscribe(
                &s.pattern,
                switchboard::Handler::sync(move |_e: &Event| {
                    count.fetch_add(1, Ordering::Relaxed);
                    Ok(())
                }),
                &format!("plugin{i}"),
            )
            .expect("subscribe");
        }
        let events = self.events();
        let start = Instant::now();
        for event in events {
            bus.publish(event).expect("publish");
        }
        bus.flush();
        let took = start.elapsed();
        assert_eq!(bus.stats().dispatched, self.calls(), "bus: stats disagree");
        bus.shutdown();
        self.check("bus");
        self.calls() as f64 / took.as_secs_f64()
    }
}

fn median(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().expect("a number"))
        .unwrap_or(default)
}

fn main() {
    let workers = arg("--workers", 2);
    let rounds = arg("--rounds", 5);
    // `--only K`: run scenario K alone (0: plugins, 1-3: fan-out 1/10/100).
    let only = arg("--only", usize::MAX);
    let scenarios = [
        Scenario::plugins(100_000),
        Scenario::fan_out(1, 1_000_000),
        Scenario::fan_out(10, 400_000),
        Scenario::fan_out(100, 100_000),
    ];
    println!(
        "handler calls/s, bus with {workers} workers against one thread calling the same handlers \
         in a plain loop; {rounds} alternating rounds, median [min, max]"
    );
    println!("{:<36} {:>26} {:>26} {:>8}", "scenario", "loop", "bus", "bus/loop");
    for (k, s) in scenarios.iter().enumerate() {
        if only != usize::MAX && only != k {
            continue;
        }
        let mut looped = Vec::new();
        let mut bused = Vec::new();
        let mut ratios = Vec::new();
        for _ in 0..rounds {
            let l = s.plain_loop();
            let b = s.bus(workers);
            looped.push(l);
            bused.push(b);
            ratios.push(b / l);
        }
        let (l, lmin, lmax) = median(looped);
        let (b, bmin, bmax) = median(bused);
        let (r, _, _) = median(ratios);
        println!(
            "{:<36} {:>8.1}M [{:>5.1}, {:>5.1}] {:>8.1}M [{:>5.1}, {:>5.1}] {:>7.2}x",
            s.label,
            l / 1e6,
            lmin / 1e6,
            lmax / 1e6,
            b / 1e6,
            bmin / 1e6,
            bmax / 1e6,
            r
        );
    }
    println!("target for the 10k-plugin workload: bus/loop >= 0.25x (aim 0.5x)");
}
