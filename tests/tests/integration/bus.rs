//! The seed's test list, ported and made meaningful, plus the bus's
//! guarantees under real threads.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use switchboard::{
    BuildError, Bus, Event, Handler, HistoryError, HistoryQuery, NameError, Overflow, Priority,
    PublishError, SubscribeError, SubscribeOptions, Target,
};

mod support;

use support::{by_pattern, ev, hold_worker, recorder, watchdog};

#[test]
fn publish_reaches_exact_and_wildcard_subscribers() {
    let bus = Bus::builder().workers(2).build().unwrap();
    let (exact, h1) = recorder();
    let (wild, h2) = recorder();
    let (all, h3) = recorder();
    bus.subscribe("trivia.started", Handler::sync(h1), "a").unwrap();
    bus.subscribe("trivia.*", Handler::sync(h2), "b").unwrap();
    bus.subscribe("*", Handler::sync(h3), "c").unwrap();
    for name in ["trivia.started", "trivia.round.won", "quote.added", "trivia."] {
        bus.publish(ev(name)).unwrap();
    }
    bus.flush();
    assert_eq!(*exact.lock().unwrap(), vec!["trivia.started"]);
    let mut w = wild.lock().unwrap().clone();
    w.sort();
    assert_eq!(w, vec!["trivia.", "trivia.round.won", "trivia.started"]);
    assert_eq!(all.lock().unwrap().len(), 4);
    let stats = bus.stats();
    assert_eq!(stats.published, 4);
    assert_eq!(stats.dispatched, 1 + 3 + 4);
    assert_eq!(stats.events_dispatched, 4);
}

#[test]
fn high_priority_runs_first_when_the_worker_is_busy() {
    let bus = Bus::builder().workers(1).build().unwrap();
    let (log, h) = recorder();
    bus.subscribe("p.*", Handler::sync(h), "t").unwrap();
    let gate_tx = hold_worker(&bus);
    bus.publish(ev("p.low").with_priority(Priority::Low)).unwrap();
    bus.publish(ev("p.normal").with_priority(Priority::Normal)).unwrap();
    bus.publish(ev("p.high").with_priority(Priority::High)).unwrap();
    gate_tx.send(()).unwrap();
    bus.flush();
    assert_eq!(*log.lock().unwrap(), vec!["p.high", "p.normal", "p.low"]);
}

#[test]
fn low_priority_is_not_starved() {
    // One worker, batches of one, limit 2: a LOW event waits at most two
    // HIGH batches while HIGH events keep coming.
    let bus = Bus::builder().workers(1).batch_size(1).starvation_limit(2).build().unwrap();
    let (log, h) = recorder();
    bus.subscribe("p.*", Handler::sync(h), "t").unwrap();
    let gate_tx = hold_worker(&bus);
    bus.publish(ev("p.low").with_priority(Priority::Low)).unwrap();
    for i in 0..10 {
        bus.publish(ev(&format!("p.high{i}")).with_priority(Priority::High)).unwrap();
    }
    gate_tx.send(()).unwrap();
    bus.flush();
    let log = log.lock().unwrap();
    let low_at = log.iter().position(|n| n == "p.low").unwrap();
    assert_eq!(low_at, 2, "LOW should run after exactly two HIGH batches: {log:?}");
    assert_eq!(log.len(), 11);
}

#[test]
fn subscriber_priority_orders_handlers_of_one_event() {
    let bus = Bus::builder().workers(1).build().unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    for (plugin, prio) in [
        ("logging", Priority::Low),
        ("stats", Priority::Normal),
        ("validation", Priority::High),
        ("stats2", Priority::Normal),
    ] {
        let o = order.clone();
        bus.subscribe(
            "quote.*",
            Handler::sync(move |_| {
                o.lock().unwrap().push(plugin);
                Ok(())
            }),
            SubscribeOptions::new().plugin(plugin).priority(prio),
        )
        .unwrap();
    }
    bus.publish(ev("quote.added")).unwrap();
    bus.flush();
    assert_eq!(*order.lock().unwrap(), vec!["validation", "stats", "stats2", "logging"]);
}

#[test]
fn errors_and_panics_are_isolated_counted_and_reported() {
    let reported = Arc::new(Mutex::new(Vec::new()));
    let r = reported.clone();
    let bus = Bus::builder()
        .workers(1)
        .error_hook(move |event, plugin, error| {
            r.lock().unwrap().push(format!("{} {} {}", event.name(), plugin, error));
        })
        .build()
        .unwrap();
    let bad = bus.subscribe("x", Handler::sync(|_| Err("boom".into())), "bad").unwrap();
    bus.subscribe("x", Handler::sync(|_| panic!("kaboom")), "panicky").unwrap();
    let (log, h) = recorder();
    bus.subscribe("x", Handler::sync(h), "good").unwrap();
    for _ in 0..3 {
        bus.publish(ev("x")).unwrap();
    }
    bus.flush();
    assert_eq!(log.lock().unwrap().len(), 3, "the good handler ran for every event");
    let stats = bus.stats();
    assert_eq!(stats.handler_errors, 6);
    assert_eq!(stats.handler_panics, 3);
    assert_eq!(stats.dispatched, 9);
    assert_eq!(bus.subscriptions(bad).first().map(|s| s.stats.errors), Some(3));
    {
        let reported = reported.lock().unwrap();
        assert_eq!(reported.len(), 6);
        assert!(reported.contains(&"x bad boom".to_owned()));
        assert!(reported.contains(&"x panicky handler panicked: kaboom".to_owned()));
    }
    // The worker survived: the bus still works.
    bus.publish(ev("x")).unwrap();
    bus.flush();
    assert_eq!(log.lock().unwrap().len(), 4);
}

#[test]
fn unsubscribe_stops_delivery_and_reports_counts() {
    let bus = Bus::new().unwrap();
    let (log, h) = recorder();
    bus.subscribe("a.*", Handler::sync(h.clone()), "p").unwrap();
    bus.subscribe("b", Handler::sync(h.clone()), "p").unwrap();
    bus.subscribe("a.*", Handler::sync(h), "q").unwrap();
    assert_eq!(
        by_pattern(bus.subscriptions(Target::All)).get("a.*").unwrap(),
        &vec!["p".to_owned(), "q".to_owned()]
    );
    assert_eq!(bus.unsubscribe(Target::Pattern { pattern: "a.*", plugin: "p" }).count(), 1);
    assert_eq!(bus.unsubscribe(Target::Pattern { pattern: "a.*", plugin: "p" }).count(), 0);
    bus.publish(ev("a.x")).unwrap();
    bus.flush();
    assert_eq!(log.lock().unwrap().len(), 1, "only q's subscription is left");
    assert_eq!(bus.unsubscribe(Target::Plugin("p")).count(), 1);
    assert_eq!(by_pattern(bus.subscriptions(Target::Plugin("p"))).len(), 0);
    assert_eq!(bus.stats().subscriptions, 1);
}

#[test]
fn history_is_bounded_filtered_and_most_recent_first() {
    let bus = Bus::builder().workers(1).history_size(5).build().unwrap();
    for i in 0..8 {
        bus.publish(ev(&format!("{}.{i}", if i % 2 == 0 { "even" } else { "odd" }))).unwrap();
    }
    bus.flush();
    let all: Vec<String> =
        bus.history(HistoryQuery::new()).unwrap().iter().map(|e| e.name().to_owned()).collect();
    assert_eq!(all, vec!["odd.7", "even.6", "odd.5", "even.4", "odd.3"]);
    let odd: Vec<String> = bus
        .history(HistoryQuery::new().last(2).matching("odd.*"))
        .unwrap()
        .iter()
        .map(|e| e.name().to_owned())
        .collect();
    assert_eq!(odd, vec!["odd.7", "odd.5"]);
    assert!(matches!(
        bus.history(HistoryQuery::new().matching("")),
        Err(HistoryError::InvalidPattern { .. })
    ));
    let off = Bus::builder().history_size(0).build().unwrap();
    off.publish(ev("x")).unwrap();
    off.flush();
    assert!(off.history(HistoryQuery::new()).unwrap().is_empty());
}

#[test]
fn bad_input_gets_typed_errors() {
    assert!(matches!(Bus::builder().workers(0).build(), Err(BuildError::ZeroWorkers)));
    assert!(matches!(Bus::builder().capacity(0).build(), Err(BuildError::ZeroCapacity)));
    assert_eq!(
        Bus::builder().batch_size(0).build().unwrap_err().to_string(),
        "batch size must be at least 1"
    );
    let bus = Bus::new().unwrap();
    let noop = |_: &Event| Ok(());
    assert_eq!(
        bus.subscribe("", Handler::sync(noop), "p").unwrap_err(),
        SubscribeError::InvalidPattern { pattern: String::new(), reason: NameError::Empty }
    );
    assert!(matches!(
        bus.subscribe("a\0", Handler::sync(noop), "p"),
        Err(SubscribeError::InvalidPattern { reason: NameError::Nul, .. })
    ));
    assert!(matches!(
        bus.subscribe(&"a".repeat(5000), Handler::sync(noop), "p"),
        Err(SubscribeError::InvalidPattern { reason: NameError::TooLong { .. }, .. })
    ));
    assert!(matches!(
        bus.subscribe("a", Handler::sync(noop), ""),
        Err(SubscribeError::InvalidPlugin { reason: NameError::Empty })
    ));
    let err = bus.publish(ev("")).unwrap_err();
    assert_eq!(err.to_string(), "invalid event name \"\": it is empty");
    assert!(matches!(
        bus.publish(ev("a\0b")),
        Err(PublishError::InvalidName { reason: NameError::Nul, .. })
    ));
    let long = "n".repeat(1 << 20);
    let back = bus.publish(ev(&long)).unwrap_err().into_event();
    assert_eq!(back.name().len(), 1 << 20, "the event is given back");
    assert_eq!(bus.stats().rejected, 3);
}

#[test]
fn handler_chains_end_at_the_maximum_depth() {
    watchdog(30, || {
        let bus = Bus::builder().workers(2).max_depth(5).build().unwrap();
        let depths = Arc::new(Mutex::new(Vec::new()));
        let refused = Arc::new(AtomicUsize::new(0));
        for (from, to) in [("ping", "pong"), ("pong", "ping")] {
            let weak = bus.downgrade();
            let (d, r) = (depths.clone(), refused.clone());
            bus.subscribe(
                from,
                Handler::sync(move |e| {
                    d.lock().unwrap().push(e.depth());
                    let bus = weak.upgrade().expect("bus alive");
                    match bus.publish(ev(to)) {
                        Ok(_) => {}
                        Err(PublishError::DepthExceeded { depth, max, .. }) => {
                            assert_eq!((depth, max), (6, 5));
                            r.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(other) => panic!("{other}"),
                    }
                    Ok(())
                }),
                "loop",
            )
            .unwrap();
        }
        bus.publish(ev("ping")).unwrap();
        // flush waits for the whole cascade: each link is counted with its parent.
        bus.flush();
        assert_eq!(*depths.lock().unwrap(), vec![0, 1, 2, 3, 4, 5]);
        assert_eq!(refused.load(Ordering::SeqCst), 1);
        assert_eq!(bus.stats().depth_refused, 1);
        // Still usable.
        bus.publish(ev("other")).unwrap();
        bus.flush();
    });
}

#[test]
fn handlers_may_subscribe_unsubscribe_and_publish_without_deadlock() {
    watchdog(30, || {
        let bus = Bus::builder().workers(2).build().unwrap();
        let weak = bus.downgrade();
        let (log, h) = recorder();
        bus.subscribe(
            "start",
            Handler::sync(move |_| {
                let bus = weak.upgrade().unwrap();
                bus.subscribe("next", Handler::sync(h.clone()), "p")?;
                bus.unsubscribe(Target::Pattern { pattern: "start", plugin: "p" });
                bus.publish(ev("next"))?;
                bus.flush(); // returns at once inside a handler
                Ok(())
            }),
            "p",
        )
        .unwrap();
        bus.publish(ev("start")).unwrap();
        bus.flush();
        assert_eq!(*log.lock().unwrap(), vec!["next"]);
        assert!(by_pattern(bus.subscriptions(Target::Plugin("p"))).contains_key("next"));
        assert!(!by_pattern(bus.subscriptions(Target::Plugin("p"))).contains_key("start"));
    });
}

#[test]
fn unsubscribe_and_wait_from_inside_its_own_handler_does_not_deadlock() {
    watchdog(30, || {
        let bus = Bus::builder().workers(2).build().unwrap();
        let weak = bus.downgrade();
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        bus.subscribe(
            "x",
            Handler::sync(move |_| {
                c.fetch_add(1, Ordering::SeqCst);
                weak.upgrade()
                    .unwrap()
                    .unsubscribe(Target::Pattern { pattern: "x", plugin: "self" })
                    .wait();
                Ok(())
            }),
            "self",
        )
        .unwrap();
        bus.publish(ev("x")).unwrap();
        bus.flush();
        bus.publish(ev("x")).unwrap();
        bus.flush();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    });
}

#[test]
fn typed_payloads_reach_typed_handlers_and_mismatches_are_errors() {
    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct Quote {
        id: u32,
        text: String,
    }
    let bus = Bus::builder().workers(1).build().unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    bus.subscribe(
        "quote.added",
        Handler::typed(move |_e, q: &Quote| {
            g.lock().unwrap().push(q.id);
            Ok(())
        }),
        "search",
    )
    .unwrap();
    let (json_seen, h) = recorder();
    bus.subscribe("quote.added", Handler::sync(h), "dynamic").unwrap();
    bus.publish(Event::typed("quote.added", Quote { id: 1, text: "a".into() }, "q")).unwrap();
    bus.publish(Event::new("quote.added", json!({"id": 2, "text": "b"}), "q")).unwrap();
    bus.publish(Event::typed("quote.added", 42u64, "q")).unwrap();
    bus.publish(Event::new("quote.added", json!({"nope": true}), "q")).unwrap();
    bus.flush();
    assert_eq!(*got.lock().unwrap(), vec![1, 2]);
    assert_eq!(json_seen.lock().unwrap().len(), 4);
    let stats = bus.stats();
    assert_eq!(stats.handler_errors, 2, "a u64 and bad JSON are handler errors, not panics");
    assert_eq!(stats.handler_panics, 0);
}

#[test]
fn overflow_error_gives_the_event_back_and_shed_drops_lowest_first() {
    let bus = Bus::builder().workers(1).capacity(2).overflow(Overflow::Error).build().unwrap();
    let release = hold_worker(&bus);
    bus.publish(ev("a")).unwrap();
    bus.publish(ev("b")).unwrap();
    match bus.publish(ev("c")) {
        Err(PublishError::Full(e)) => assert_eq!(e.name(), "c"),
        other => panic!("expected Full, got {other:?}"),
    }
    release.send(()).unwrap();
    bus.flush();
    assert_eq!(bus.stats().rejected, 1);

    let bus = Bus::builder().workers(1).capacity(2).overflow(Overflow::Shed).build().unwrap();
    let (log, h) = recorder();
    bus.subscribe("e.*", Handler::sync(h), "t").unwrap();
    let release = hold_worker(&bus);
    bus.publish(ev("e.low").with_priority(Priority::Low)).unwrap();
    bus.publish(ev("e.normal")).unwrap();
    bus.publish(ev("e.high").with_priority(Priority::High)).unwrap(); // sheds e.low
    bus.publish(ev("e.low2").with_priority(Priority::Low)).unwrap(); // is itself shed
    release.send(()).unwrap();
    bus.flush();
    assert_eq!(*log.lock().unwrap(), vec!["e.high", "e.normal"]);
    let stats = bus.stats();
    assert_eq!(stats.dropped, 2);
    assert_eq!(stats.published, 5);
}

/// A flood of Low events fills the queues only to Low's limit: with the
/// worker held, Normal and then High events still get in, under `Error`
/// (no refusal) and under `Block` (no wait: nothing drains while the worker
/// is held, so a waiting publish would never return).
#[test]
fn the_priority_reserve_keeps_room_for_higher_priorities() {
    watchdog(30, || {
        // Capacity 32: the default reserve is 2.
        let bus = Bus::builder().workers(1).capacity(32).overflow(Overflow::Error).build().unwrap();
        let release = hold_worker(&bus);
        let low = (0..40)
            .filter(|i| bus.publish(ev(&format!("l{i}")).with_priority(Priority::Low)).is_ok())
            .count();
        assert_eq!(
            low, 28,
            "Low stops at capacity - 2 * reserve (the held event is taken: not queued)"
        );
        let normal = (0..5).filter(|i| bus.publish(ev(&format!("n{i}"))).is_ok()).count();
        assert_eq!(normal, 2);
        let high = (0..5)
            .filter(|i| bus.publish(ev(&format!("h{i}")).with_priority(Priority::High)).is_ok())
            .count();
        assert_eq!(high, 2);
        release.send(()).unwrap();
        bus.flush();
        assert_eq!(bus.stats().rejected, 12 + 3 + 3);

        let bus = Bus::builder().workers(1).capacity(32).build().unwrap();
        let release = hold_worker(&bus);
        for i in 0..28 {
            bus.publish(ev(&format!("l{i}")).with_priority(Priority::Low)).unwrap();
        }
        // Low is at its limit; a Low publisher now waits, High does not.
        let waiting = {
            let bus = bus.clone();
            std::thread::spawn(move || bus.publish(ev("late").with_priority(Priority::Low)).is_ok())
        };
        for i in 0..4 {
            bus.publish(ev(&format!("h{i}")).with_priority(Priority::High)).unwrap();
        }
        assert!(!waiting.is_finished(), "a Low publish past Low's limit did not wait");
        release.send(()).unwrap();
        assert!(waiting.join().unwrap());
        bus.flush();
        assert_eq!(bus.stats().published, 1 + 28 + 1 + 4);
    });
}

#[test]
fn a_priority_reserve_that_leaves_low_no_room_is_refused() {
    match Bus::builder().capacity(8).priority_reserve(4).build() {
        Err(BuildError::ReserveTooLarge { reserve: 4, capacity: 8 }) => {}
        other => panic!("expected ReserveTooLarge, got {other:?}"),
    }
    assert!(Bus::builder().capacity(8).priority_reserve(3).build().is_ok());
}

#[test]
fn blocking_publish_waits_for_room_and_loses_nothing() {
    watchdog(30, || {
        let bus = Bus::builder().workers(1).capacity(4).build().unwrap();
        let count = Arc::new(AtomicUsize::new(0));
        let c = count.clone();
        bus.subscribe(
            "*",
            Handler::sync(move |_| {
                c.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }),
            "t",
        )
        .unwrap();
        for i in 0..10_000 {
            bus.publish(ev(&format!("e{i}"))).unwrap();
        }
        bus.flush();
        assert_eq!(count.load(Ordering::SeqCst), 10_000);
    });
}

#[test]
fn shutdown_drains_and_refuses_later_publishes() {
    watchdog(30, || {
        let bus = Bus::builder().workers(2).build().unwrap();
        let count = Arc::new(AtomicUsize::new(0));
        let c = count.clone();
        bus.subscribe(
            "*",
            Handler::sync(move |_| {
                std::thread::sleep(Duration::from_micros(10));
                c.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }),
            "t",
        )
        .unwrap();
        for _ in 0..500 {
            bus.publish(ev("x")).unwrap();
        }
        bus.shutdown();
        assert_eq!(count.load(Ordering::SeqCst), 500, "shutdown dispatched everything accepted");
        assert!(bus.is_closed());
        assert!(matches!(bus.publish(ev("late")), Err(PublishError::Closed(_))));
        assert!(matches!(
            bus.subscribe("x", Handler::sync(|_| Ok(())), "p"),
            Err(SubscribeError::Closed)
        ));
        bus.shutdown(); // idempotent
    });
}

#[test]
fn a_handler_holding_the_bus_does_not_outlive_shutdown() {
    let bus = Bus::builder().workers(2).build().unwrap();
    let inner = bus.clone();
    let probe = Arc::new(());
    let p = probe.clone();
    bus.subscribe(
        "x",
        Handler::sync(move |_| {
            let _ = (&inner, &p);
            Ok(())
        }),
        "t",
    )
    .unwrap();
    bus.shutdown();
    // The handler (and the Bus and probe it held) was dropped.
    assert_eq!(Arc::strong_count(&probe), 1);
}

#[test]
fn dropping_the_last_handle_shuts_down_and_drains() {
    let count = Arc::new(AtomicUsize::new(0));
    {
        let bus = Bus::builder().workers(1).build().unwrap();
        let weak = bus.downgrade();
        let c = count.clone();
        bus.subscribe(
            "*",
            Handler::sync(move |_| {
                let _ = &weak;
                c.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }),
            "t",
        )
        .unwrap();
        for _ in 0..100 {
            bus.publish(ev("x")).unwrap();
        }
    }
    assert_eq!(count.load(Ordering::SeqCst), 100);
}

#[test]
fn a_handler_holding_the_only_handle_can_shut_the_bus_down() {
    watchdog(30, || {
        let probe = Arc::new(());
        let (done_tx, done_rx) = mpsc::channel::<()>();
        {
            let bus = Bus::builder().workers(2).build().unwrap();
            let inner = Mutex::new(Some(bus.clone()));
            let p = probe.clone();
            let done = Mutex::new(done_tx);
            bus.subscribe(
                "stop",
                Handler::sync(move |_| {
                    let _ = &p;
                    if let Some(bus) = inner.lock().unwrap().as_ref() {
                        bus.shutdown(); // from a worker: closes, does not join itself
                        done.lock().unwrap().send(()).unwrap();
                    }
                    Ok(())
                }),
                "t",
            )
            .unwrap();
            bus.publish(ev("stop")).unwrap();
            // Our handle goes; the handler's clone is now the only one.
        }
        done_rx.recv_timeout(Duration::from_secs(10)).expect("the handler ran");
        // The workers drain, the last drops the handlers (and the last Bus)
        // without deadlocking on itself.
        for _ in 0..1000 {
            if Arc::strong_count(&probe) == 1 {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("the handlers were never dropped");
    });
}

#[test]
fn public_types_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Bus>();
    check::<switchboard::WeakBus>();
    check::<Event>();
    check::<PublishError>();
    check::<SubscribeError>();
    check::<switchboard::Stats>();
}

/// CPU time (user + system, in clock ticks) of this process's threads whose
/// name starts with `prefix`.
#[cfg(target_os = "linux")]
fn cpu_ticks_of_threads(prefix: &str) -> u64 {
    let mut total = 0;
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let path = task.unwrap().path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if !comm.starts_with(prefix) {
            continue;
        }
        let stat = std::fs::read_to_string(path.join("stat")).unwrap_or_default();
        // Fields after the parenthesised name: state is field 3, utime 14, stime 15.
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = after.split_whitespace().collect();
        total += fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    }
    total
}

#[cfg(target_os = "linux")]
#[test]
fn an_idle_bus_parks_its_workers() {
    let bus = Bus::builder().workers(2).name("idlepark").build().unwrap();
    bus.subscribe("x", Handler::sync(|_| Ok(())), "t").unwrap();
    bus.publish(ev("x")).unwrap();
    bus.flush();
    std::thread::sleep(Duration::from_millis(50)); // past the brief spin
    let before = cpu_ticks_of_threads("idlepark");
    std::thread::sleep(Duration::from_millis(500));
    let used = cpu_ticks_of_threads("idlepark") - before;
    // Spinning workers would burn ~100 ticks (2 threads x 0.5 s); parked ones none.
    assert!(used <= 2, "idle workers used {used} clock ticks in 0.5 s");
}

#[test]
fn a_handler_publishing_into_a_full_queue_overshoots_then_gets_full_back() {
    watchdog(30, || {
        // One worker, capacity 2: while the handler runs nothing drains, so two
        // children fill the queue, two more go past the capacity (a handler may
        // overshoot it by as much again) and the rest come back as Full.
        let bus = Bus::builder().workers(1).capacity(2).build().unwrap();
        let weak = bus.downgrade();
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let o = outcomes.clone();
        bus.subscribe(
            "parent",
            Handler::sync(move |_| {
                let bus = weak.upgrade().unwrap();
                for i in 0..6 {
                    let outcome = match bus.publish(ev(&format!("child{i}"))) {
                        Ok(_) => "ok",
                        Err(PublishError::Full(e)) => {
                            assert_eq!(e.name(), format!("child{i}"), "the event is given back");
                            "full"
                        }
                        Err(other) => panic!("{other}"),
                    };
                    o.lock().unwrap().push(outcome);
                }
                Ok(())
            }),
            "t",
        )
        .unwrap();
        let (log, h) = recorder();
        bus.subscribe("child*", Handler::sync(h), "t").unwrap();
        bus.publish(ev("parent")).unwrap();
        bus.flush();
        assert_eq!(*outcomes.lock().unwrap(), vec!["ok", "ok", "ok", "ok", "full", "full"]);
        // In publish order: the events past the capacity queue behind the others.
        assert_eq!(*log.lock().unwrap(), vec!["child0", "child1", "child2", "child3"]);
        let stats = bus.stats();
        assert_eq!(stats.rejected, 2);
        assert_eq!(stats.published, 5);
    });
}
