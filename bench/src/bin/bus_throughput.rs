//! The bus against a bare crossbeam channel, measured in the same run.
//!
//! * one publisher, one literal subscription, a trivial handler: bus
//!   events/s over the events/s of a bounded crossbeam channel carrying the
//!   same `Arc<Event>`s from one producer thread to one consumer thread that
//!   calls the same handler;
//! * the same with 10,000 mixed subscriptions present (none of them matching);
//! * history on (100) against off;
//! * publish → handler latency at a moderate, paced load (HDR histogram).
//!
//! Every scenario checks its delivery counts. Ratios are medians over rounds
//! that alternate between the contenders, to ride out a noisy machine.
//!
//! `cargo run --release -p switchboard-bench --bin bus_throughput`

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use switchboard::{Bus, Event, Handler, HandlerResult, Target};
use switchboard_bench::workload::matcher_workload;
use switchboard_matcher::Pattern;

const EVENTS: usize = 400_000;
const ROUNDS: usize = 5;
const NAME: &str = "bench.tick";

fn events() -> Vec<Event> {
    (0..EVENTS).map(|i| Event::new(NAME, Value::from(i as u64), "bench")).collect()
}

fn handler(counter: &Arc<AtomicU64>) -> impl Fn(&Event) -> HandlerResult + Send + Sync + 'static {
    let counter = counter.clone();
    move |_e: &Event| {
        counter.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Events per second through a bounded crossbeam channel, 1 producer → 1 consumer.
fn bare_channel() -> f64 {
    let events = events();
    let counter = Arc::new(AtomicU64::new(0));
    let h = handler(&counter);
    let (tx, rx) = crossbeam_channel::bounded::<Arc<Event>>(65_536);
    let start = Instant::now();
    let consumer = std::thread::spawn(move || {
        for event in rx {
            h(&event).expect("trivial handler");
        }
    });
    for event in events {
        tx.send(Arc::new(event)).expect("consumer alive");
    }
    drop(tx);
    consumer.join().expect("consumer");
    let took = start.elapsed();
    assert_eq!(counter.load(Ordering::Relaxed), EVENTS as u64);
    EVENTS as f64 / took.as_secs_f64()
}

/// Events per second through the bus with one worker.
fn bus(workers: usize, history: usize, extra_patterns: &[String]) -> f64 {
    let bus = Bus::builder().workers(workers).history_size(history).build().expect("bus");
    let counter = Arc::new(AtomicU64::new(0));
    bus.subscribe(NAME, Handler::sync(handler(&counter)), "bench").expect("subscribe");
    let others = Arc::new(AtomicU64::new(0));
    for (i, p) in extra_patterns.iter().enumerate() {
        bus.subscribe(p, Handler::sync(handler(&others)), &format!("plugin{}", i % 64))
            .expect("subscribe");
    }
    let events = events();
    let start = Instant::now();
    for event in events {
        bus.publish(event).expect("publish");
    }
    bus.flush();
    let took = start.elapsed();
    assert_eq!(counter.load(Ordering::Relaxed), EVENTS as u64, "the bus lost events");
    assert_eq!(others.load(Ordering::Relaxed), 0, "a non-matching subscription was called");
    let stats = bus.stats();
    assert_eq!(stats.dispatched, EVENTS as u64);
    bus.shutdown();
    EVENTS as f64 / took.as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    v[v.len() / 2]
}

fn latency() -> hdrhistogram::Histogram<u64> {
    // One worker: with the pacing publisher spinning, that fills two cores.
    let bus = Bus::builder().workers(1).build().expect("bus");
    let hist = Arc::new(Mutex::new(hdrhistogram::Histogram::<u64>::new(3).expect("histogram")));
    let origin = Instant::now();
    let h = hist.clone();
    let seen = Arc::new(AtomicU64::new(0));
    let s = seen.clone();
    bus.subscribe(
        NAME,
        Handler::sync(move |e: &Event| {
            let sent = e.data().as_u64().unwrap_or(0);
            let now = origin.elapsed().as_nanos() as u64;
            h.lock().expect("histogram lock").record(now.saturating_sub(sent)).expect("in range");
            s.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }),
        "bench",
    )
    .expect("subscribe");
    // 50,000 events/s for one second: a moderate load with idle gaps, so
    // workers park and wake as they would in a chat bot.
    let n = 50_000u64;
    let gap = Duration::from_secs(1) / n as u32;
    let start = Instant::now();
    for i in 0..n {
        let due = start + gap * i as u32;
        while Instant::now() < due {
            std::hint::spin_loop();
        }
        let sent = origin.elapsed().as_nanos() as u64;
        bus.publish(Event::new(NAME, Value::from(sent), "bench")).expect("publish");
    }
    bus.flush();
    assert_eq!(seen.load(Ordering::Relaxed), n);
    let out = hist.lock().expect("histogram lock").clone();
    out
}

/// 100k subscribes one at a time, then 1,000 unsubscribes among them, while a
/// publisher keeps events flowing. Returns (subscribe time, unsubscribe time,
/// events delivered meanwhile).
fn churn() -> (Duration, Duration, u64) {
    let workload = matcher_workload(100_000, 0, 9);
    let bus = Bus::builder().workers(1).build().expect("bus");
    let flowing = Arc::new(AtomicU64::new(0));
    bus.subscribe(NAME, Handler::sync(handler(&flowing)), "bench").expect("subscribe");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publisher = {
        let (bus, stop) = (bus.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                bus.publish(Event::new(NAME, Value::Null, "bench")).expect("publish");
                sent += 1;
                if sent.is_multiple_of(64) {
                    std::thread::yield_now();
                }
            }
            sent
        })
    };
    let sink = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    for (i, p) in workload.patterns.iter().enumerate() {
        bus.subscribe(p, Handler::sync(handler(&sink)), &format!("plugin{i}")).expect("subscribe");
    }
    let subscribing = start.elapsed();
    let start = Instant::now();
    let mut removed = 0;
    for i in (0..workload.patterns.len()).step_by(100) {
        removed += bus
            .unsubscribe(Target::Pattern {
                pattern: &workload.patterns[i],
                plugin: &format!("plugin{i}"),
            })
            .count();
    }
    let unsubscribing = start.elapsed();
    assert_eq!(removed, 1_000);
    stop.store(true, Ordering::Relaxed);
    let sent = publisher.join().expect("publisher");
    bus.flush();
    assert_eq!(flowing.load(Ordering::Relaxed), sent, "events were lost during churn");
    assert_eq!(bus.stats().subscriptions, 100_001 - 1_000);
    bus.shutdown();
    (subscribing, unsubscribing, sent)
}

fn main() {
    let workload = matcher_workload(10_000, 0, 42);
    let extra: Vec<String> = workload
        .patterns
        .into_iter()
        .filter(|p| !Pattern::new(p).expect("valid").is_match(NAME))
        .collect();
    println!("{} events per run, {ROUNDS} alternating rounds, medians", EVENTS);

    let mut channel = Vec::new();
    let mut bus1 = Vec::new();
    let mut bus2 = Vec::new();
    let mut bus10k = Vec::new();
    let mut hist_on = Vec::new();
    let mut hist_off = Vec::new();
    for _ in 0..ROUNDS {
        channel.push(bare_channel());
        bus1.push(bus(1, 0, &[]));
        bus2.push(bus(2, 0, &[]));
        bus10k.push(bus(1, 0, &extra));
        hist_on.push(bus(1, 100, &[]));
        hist_off.push(bus(1, 0, &[]));
    }
    let (channel, bus1, bus2, bus10k) =
        (median(channel), median(bus1), median(bus2), median(bus10k));
    let (hist_on, hist_off) = (median(hist_on), median(hist_off));
    println!("scenario                                   events/s     vs channel");
    println!("bare crossbeam channel (1P -> 1C)      {channel:>12.0}         1.00x");
    println!(
        "bus, 1 worker, 1 literal subscription  {bus1:>12.0}   {:>10.2}x (target >= 0.5x)",
        bus1 / channel
    );
    println!("bus, 2 workers, 1 literal subscription {bus2:>12.0}   {:>10.2}x", bus2 / channel);
    println!(
        "bus, 1 worker, + {} other patterns  {bus10k:>12.0}   {:>10.2}x (target >= 0.3x)",
        extra.len(),
        bus10k / channel
    );
    println!(
        "history on (100) vs off, 1 worker: {:.0} vs {:.0} events/s, cost {:.1}% (target < 15%)",
        hist_on,
        hist_off,
        (1.0 - hist_on / hist_off) * 100.0
    );
    let (subscribing, unsubscribing, sent) = churn();
    println!(
        "churn: 100k subscribes one at a time {:.2} s, then 1,000 unsubscribes {:.1} ms, {} events delivered meanwhile (target: a few s / well under 1 s)",
        subscribing.as_secs_f64(),
        unsubscribing.as_secs_f64() * 1e3,
        sent
    );
    let h = latency();
    println!(
        "latency publish -> handler at 50k events/s, 1 worker: p50 {:.1} us, p99 {:.1} us, p99.9 {:.1} us, max {:.1} us",
        h.value_at_quantile(0.50) as f64 / 1e3,
        h.value_at_quantile(0.99) as f64 / 1e3,
        h.value_at_quantile(0.999) as f64 / 1e3,
        h.max() as f64 / 1e3
    );
}
