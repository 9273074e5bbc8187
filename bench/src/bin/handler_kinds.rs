//! The kinds of handler against each other, measured in the same run:
//!
//! * **async against sync**: the same 10 trivial handlers per event, as
//!   async handlers on a 2-thread tokio runtime against inline sync ones;
//! * **ordered against unordered**: the same, with every subscription
//!   `ordered()` (sync, run by the worker pool one batch at a time);
//! * **slow subscriber**: 10 fast handlers' throughput while an 11th,
//!   `blocking()` with `overflow(Overflow::Shed)` (it asks to fall behind
//!   alone; under the default `Block` it would slow the bus to its pace),
//!   sleeps 50 ms per event, against the same 10 alone (target: at least
//!   0.9x).
//!
//! Handler calls per second, medians over alternating rounds; every run
//! checks its delivery counts (the slow one's: delivered plus counted as
//! dropped from its backlog is every event).
//!
//! `cargo run --release -p switchboard-bench --bin handler_kinds -- [--rounds N]
//! [--profile sync|async|ordered|slow]` (the last runs one kind alone, for
//! a profiler; `slow`: sync beside the blocking subscriber)

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use switchboard::{Bus, Event, Handler, Overflow, SubscribeOptions, Target};

const HANDLERS: usize = 10;
const EVENTS: u64 = 200_000;

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Sync,
    Async,
    Ordered,
}

/// Handler calls per second of `HANDLERS` subscriptions of `kind` to one
/// name, with a blocking subscription sleeping 50 ms per event beside them
/// when `slow`.
fn run(kind: Kind, slow: bool, runtime: &tokio::runtime::Runtime) -> f64 {
    let bus = Bus::builder()
        .workers(2)
        .history_size(0)
        .runtime(runtime.handle().clone())
        .build()
        .expect("bus");
    let counters: Vec<Arc<AtomicU64>> =
        (0..HANDLERS).map(|_| Arc::new(AtomicU64::new(0))).collect();
    for (i, c) in counters.iter().enumerate() {
        let c = c.clone();
        let plugin = format!("plugin{i}");
        match kind {
            Kind::Sync => {
                bus.subscribe(
                    "tick",
                    Handler::sync(move |_| {
                        c.fetch_add(1, Ordering::Relaxed);
                        Ok(())
                    }),
                    &plugin,
                )
                .expect("subscribe");
            }
            Kind::Ordered => {
                let options = SubscribeOptions::new().ordered().backlog(EVENTS as usize);
                bus.subscribe(
                    "tick",
                    Handler::sync(move |_| {
                        c.fetch_add(1, Ordering::Relaxed);
                        Ok(())
                    }),
                    options.plugin(&plugin),
                )
                .expect("subscribe");
            }
            Kind::Async => {
                let options = SubscribeOptions::new().backlog(EVENTS as usize);
                bus.subscribe(
                    "tick",
                    Handler::future(move |_e| {
                        c.fetch_add(1, Ordering::Relaxed);
                        std::future::ready(Ok(()))
                    }),
                    options.plugin(&plugin),
                )
                .expect("subscribe");
            }
        }
    }
    let slow_calls = Arc::new(AtomicU64::new(0));
    let slow_id = slow.then(|| {
        let s = slow_calls.clone();
        let options = SubscribeOptions::new().blocking().overflow(Overflow::Shed);
        bus.subscribe(
            "tick",
            Handler::sync(move |_| {
                std::thread::sleep(Duration::from_millis(50));
                s.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }),
            options.plugin("slow"),
        )
        .expect("subscribe")
    });
    let events: Vec<Event> =
        (0..EVENTS).map(|i| Event::new("tick", Value::from(i), "bench")).collect();
    let start = Instant::now();
    for e in events {
        bus.publish(e).expect("publish");
    }
    // The fast handlers' time: wait for their counts, not for the slow one.
    // Sleeping, not spinning: on two cores a spinning waiter took one from
    // the handlers it waited for (a profile of the async run found it at
    // 15% of the samples).
    while counters.iter().any(|c| c.load(Ordering::Relaxed) < EVENTS) {
        std::thread::sleep(Duration::from_micros(100));
    }
    let took = start.elapsed();
    for c in &counters {
        assert_eq!(c.load(Ordering::Relaxed), EVENTS, "a handler lost events");
    }
    if let Some(id) = slow_id {
        let dropped =
            bus.subscriptions(id).first().map(|s| s.stats.clone()).expect("live").backlog_dropped;
        bus.unsubscribe(Target::Plugin("slow")).wait();
        // Removing it drops its backlog; what it did not run is either
        // counted as dropped or was still waiting in the backlog.
        assert!(slow_calls.load(Ordering::Relaxed) + dropped <= EVENTS);
        assert!(dropped > 0, "the slow one's overflow is counted");
    }
    bus.flush();
    bus.shutdown();
    (EVENTS * HANDLERS as u64) as f64 / took.as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rounds = args
        .iter()
        .position(|a| a == "--rounds")
        .and_then(|i| args.get(i + 1))
        .map_or(5, |v| v.parse().expect("a number"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    // `--profile sync|async|ordered|slow`: that kind alone, for a profiler.
    if let Some(kind) = args.iter().position(|a| a == "--profile").and_then(|i| args.get(i + 1)) {
        let (kind, slow) = match kind.as_str() {
            "sync" => (Kind::Sync, false),
            "async" => (Kind::Async, false),
            "ordered" => (Kind::Ordered, false),
            "slow" => (Kind::Sync, true),
            other => panic!("--profile sync|async|ordered|slow, not {other}"),
        };
        for _ in 0..rounds {
            println!("{:.1}M calls/s", run(kind, slow, &runtime) / 1e6);
        }
        return;
    }
    let (mut sync, mut asynch, mut ordered, mut with_slow) = (vec![], vec![], vec![], vec![]);
    let (mut r_async, mut r_ordered, mut r_slow) = (vec![], vec![], vec![]);
    for _ in 0..rounds {
        let s = run(Kind::Sync, false, &runtime);
        let a = run(Kind::Async, false, &runtime);
        let o = run(Kind::Ordered, false, &runtime);
        let w = run(Kind::Sync, true, &runtime);
        r_async.push(a / s);
        r_ordered.push(o / s);
        r_slow.push(w / s);
        sync.push(s);
        asynch.push(a);
        ordered.push(o);
        with_slow.push(w);
    }
    println!("{HANDLERS} handlers per event, {EVENTS} events, 2 workers; handler calls/s, medians of {rounds} alternating rounds");
    println!("sync inline                         {:>8.1}M   1.00x", median(sync) / 1e6);
    println!(
        "async (2-thread tokio runtime)      {:>8.1}M   {:.2}x",
        median(asynch) / 1e6,
        median(r_async)
    );
    println!(
        "ordered sync (worker pool)          {:>8.1}M   {:.2}x",
        median(ordered) / 1e6,
        median(r_ordered)
    );
    println!(
        "sync + a blocking 50 ms subscriber  {:>8.1}M   {:.2}x (target >= 0.9x)",
        median(with_slow) / 1e6,
        median(r_slow)
    );
}
