//! Real threads, real contention: the guarantees that matter under load.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use serde_json::Value;
use switchboard::{Bus, Event, Handler, Target};

mod support;

use support::watchdog;

/// Publishers that flood the bus with `name` until dropped (or stopped).
struct Flood {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Flood {
    fn start(bus: &Bus, name: &'static str, publishers: usize) -> Flood {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..publishers)
            .map(|_| {
                let (bus, stop) = (bus.clone(), stop.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        bus.publish(Event::new(name, Value::Null, "p")).unwrap();
                    }
                })
            })
            .collect();
        Flood { stop, threads }
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
    }
}

#[test]
fn a_million_events_from_two_threads_then_shutdown_loses_none() {
    watchdog(120, || {
        let bus = Bus::builder().workers(2).capacity(8192).history_size(0).build().unwrap();
        let count = Arc::new(AtomicU64::new(0));
        let sum = Arc::new(AtomicU64::new(0));
        let (c, s) = (count.clone(), sum.clone());
        bus.subscribe(
            "load.*",
            Handler::sync(move |e| {
                c.fetch_add(1, Ordering::Relaxed);
                s.fetch_add(e.data().as_u64().unwrap_or(0), Ordering::Relaxed);
                Ok(())
            }),
            "counter",
        )
        .unwrap();
        const PER_THREAD: u64 = 500_000;
        let publishers: Vec<_> = (0..2)
            .map(|t| {
                let bus = bus.clone();
                std::thread::spawn(move || {
                    for i in 0..PER_THREAD {
                        bus.publish(Event::new(format!("load.{t}"), Value::from(i), "stress"))
                            .unwrap();
                    }
                })
            })
            .collect();
        for p in publishers {
            p.join().unwrap();
        }
        bus.shutdown();
        assert_eq!(count.load(Ordering::Relaxed), 2 * PER_THREAD);
        assert_eq!(sum.load(Ordering::Relaxed), 2 * (PER_THREAD * (PER_THREAD - 1) / 2));
        let stats = bus.stats();
        assert_eq!(stats.published, 2 * PER_THREAD);
        assert_eq!(stats.dispatched, 2 * PER_THREAD);
        assert_eq!(stats.dropped + stats.rejected, 0);
    });
}

#[test]
fn unsubscribe_is_final_under_a_flood_from_two_publishers() {
    watchdog(120, || {
        for _round in 0..20 {
            let bus = Bus::builder().workers(2).build().unwrap();
            let calls = Arc::new(AtomicUsize::new(0));
            let c = calls.clone();
            bus.subscribe(
                "flood.*",
                Handler::sync(move |_| {
                    c.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                }),
                "victim",
            )
            .unwrap();
            let flood = Flood::start(&bus, "flood.x", 2);
            while calls.load(Ordering::SeqCst) < 1_000 {
                std::thread::yield_now();
            }
            // The waiting form: once it returns, the count must never move again.
            assert_eq!(
                bus.unsubscribe(Target::Pattern { pattern: "flood.*", plugin: "victim" }).wait(),
                1
            );
            let at_return = calls.load(Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(5));
            flood.stop();
            bus.flush();
            assert_eq!(
                calls.load(Ordering::SeqCst),
                at_return,
                "a handler ran after unsubscribe_and_wait returned"
            );
        }
    });
}

#[test]
fn plain_unsubscribe_lets_at_most_the_running_calls_finish() {
    let bus = Bus::builder().workers(2).build().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    bus.subscribe(
        "flood",
        Handler::sync(move |_| {
            c.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }),
        "victim",
    )
    .unwrap();
    let flood = Flood::start(&bus, "flood", 1);
    while calls.load(Ordering::SeqCst) < 1_000 {
        std::thread::yield_now();
    }
    assert_eq!(bus.unsubscribe(Target::Pattern { pattern: "flood", plugin: "victim" }).count(), 1);
    let at_return = calls.load(Ordering::SeqCst);
    flood.stop();
    bus.flush();
    // Each of the two workers may have been inside one call at that moment.
    assert!(calls.load(Ordering::SeqCst) <= at_return + 2);
}

#[test]
fn handlers_that_publish_and_subscribe_under_load() {
    watchdog(120, || {
        let bus = Bus::builder().workers(2).capacity(64).build().unwrap();
        let weak = bus.downgrade();
        let echoes = Arc::new(AtomicUsize::new(0));
        let e = echoes.clone();
        bus.subscribe(
            "echo",
            Handler::sync(move |_| {
                e.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }),
            "sink",
        )
        .unwrap();
        let subscribed = Arc::new(AtomicUsize::new(0));
        let s = subscribed.clone();
        bus.subscribe(
            "ping.*",
            Handler::sync(move |event| {
                let bus = weak.upgrade().expect("alive");
                // Publishing into a possibly full queue from a handler must not deadlock.
                bus.publish(Event::new("echo", Value::Null, "relay"))?;
                if event.name() == "ping.sub" {
                    bus.subscribe("never.*", Handler::sync(|_| Ok(())), "relay")?;
                    s.fetch_add(1, Ordering::SeqCst);
                }
                Ok(())
            }),
            "relay",
        )
        .unwrap();
        for i in 0..20_000 {
            let name = if i % 1000 == 0 { "ping.sub" } else { "ping.x" };
            bus.publish(Event::new(name, Value::Null, "main")).unwrap();
        }
        bus.flush(); // waits for the echoes too: they are counted with their parents
        assert_eq!(echoes.load(Ordering::SeqCst), 20_000);
        assert_eq!(subscribed.load(Ordering::SeqCst), 20);
        assert_eq!(bus.stats().rejected, 0);
    });
}

#[test]
fn many_subscribes_and_unsubscribes_while_events_flow() {
    watchdog(120, || {
        let bus = Bus::builder().workers(2).build().unwrap();
        // One counter per subscription, so a lost or doubled subscription
        // shows as a wrong count, not just a wrong total.
        const SUBS: usize = 20_000;
        let hits: Arc<Vec<AtomicUsize>> =
            Arc::new((0..SUBS).map(|_| AtomicUsize::new(0)).collect());
        let flood = Flood::start(&bus, "plugin7.action1", 1);
        let mut ids = Vec::with_capacity(SUBS);
        for i in 0..SUBS {
            let h = hits.clone();
            let id = bus
                .subscribe(
                    &format!("plugin{}.action{}", i % 100, i % 7),
                    Handler::sync(move |_| {
                        h[i].fetch_add(1, Ordering::Relaxed);
                        Ok(())
                    }),
                    &format!("plugin{}", i % 50),
                )
                .unwrap();
            ids.push(id);
        }
        flood.stop();
        bus.flush();
        assert_eq!(bus.stats().subscriptions, SUBS as u64);
        // Every subscription is there exactly once: each matching one sees
        // each new event exactly once, the others none.
        let before: Vec<usize> = hits.iter().map(|h| h.load(Ordering::Relaxed)).collect();
        for _ in 0..3 {
            bus.publish(Event::new("plugin7.action1", Value::Null, "p")).unwrap();
            bus.publish(Event::new("plugin42.action0", Value::Null, "p")).unwrap();
        }
        bus.flush();
        for i in 0..SUBS {
            let matches = (i % 100 == 7 && i % 7 == 1) || (i % 100 == 42 && i % 7 == 0);
            let got = hits[i].load(Ordering::Relaxed) - before[i];
            assert_eq!(got, if matches { 3 } else { 0 }, "subscription {i} ({:?})", ids[i]);
        }
        // Half the plugins go while events flow; the rest stay exact.
        let flood = Flood::start(&bus, "plugin7.action1", 1);
        let removed: usize =
            (0..25).map(|p| bus.unsubscribe(Target::Plugin(&format!("plugin{p}"))).count()).sum();
        assert_eq!(removed, SUBS / 2);
        flood.stop();
        bus.flush();
        let before: Vec<usize> = hits.iter().map(|h| h.load(Ordering::Relaxed)).collect();
        for _ in 0..3 {
            bus.publish(Event::new("plugin7.action1", Value::Null, "p")).unwrap();
        }
        bus.flush();
        for i in 0..SUBS {
            let live = i % 50 >= 25;
            let matches = i % 100 == 7 && i % 7 == 1;
            let got = hits[i].load(Ordering::Relaxed) - before[i];
            assert_eq!(got, if matches && live { 3 } else { 0 }, "subscription {i}");
        }
        let removed: usize =
            (25..50).map(|p| bus.unsubscribe(Target::Plugin(&format!("plugin{p}"))).count()).sum();
        assert_eq!(removed, SUBS / 2);
        assert_eq!(bus.stats().subscriptions, 0);
    });
}
