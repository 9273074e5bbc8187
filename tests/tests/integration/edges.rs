//! The engine's edges: history order, shutdown from several threads, order
//! past the capacity, wake-ups, waits that cannot deadlock, stray panics,
//! and the errors users match on. Each test is named after what it
//! guarantees; most failed before the fix they guard.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

use serde_json::Value;
use switchboard::{
    Bus, Event, Handler, HandlerResult, HistoryError, HistoryQuery, NameError, Overflow, Priority,
    PublishError, SubscribeError, Target,
};

mod support;

use support::{ev, eventually, hold_worker, recorder, watchdog, OnDrop};

fn names(events: &[Arc<Event>]) -> Vec<String> {
    events.iter().map(|e| e.name().to_owned()).collect()
}

// 1. History is in publish order.

#[test]
fn history_is_in_publish_order_with_several_workers_and_mixed_priorities() {
    for workers in [1, 2, 4] {
        let bus = Bus::builder().workers(workers).history_size(100).build().unwrap();
        bus.subscribe(
            "e.*",
            Handler::sync(|_| {
                std::thread::sleep(Duration::from_micros(20));
                Ok(())
            }),
            "slow",
        )
        .unwrap();
        for i in 0..150 {
            let priority = Priority::ALL[i % 3];
            bus.publish(ev(&format!("e.{i}")).with_priority(priority)).unwrap();
        }
        bus.flush();
        let expected: Vec<String> = (50..150).rev().map(|i| format!("e.{i}")).collect();
        assert_eq!(
            names(&bus.history(HistoryQuery::new()).unwrap()),
            expected,
            "{workers} workers"
        );
        let odd: Vec<String> =
            (50..150).rev().filter(|i| i % 2 == 1).map(|i| format!("e.{i}")).take(5).collect();
        assert_eq!(
            names(&bus.history(HistoryQuery::new().last(5).matching("e.*[13579]")).unwrap()),
            odd
        );
    }
}

#[test]
fn history_agrees_with_each_publishing_threads_order() {
    let bus = Bus::builder().workers(2).history_size(4096).build().unwrap();
    let publishers: Vec<_> = (0..3)
        .map(|t| {
            let bus = bus.clone();
            std::thread::spawn(move || {
                for i in 0..1000u64 {
                    let priority = Priority::ALL[(i % 3) as usize];
                    bus.publish(
                        Event::new(format!("t{t}"), Value::from(i), "p").with_priority(priority),
                    )
                    .unwrap();
                }
            })
        })
        .collect();
    for p in publishers {
        p.join().unwrap();
    }
    bus.flush();
    let history = bus.history(HistoryQuery::new()).unwrap();
    assert_eq!(history.len(), 3000);
    for t in 0..3 {
        let seq: Vec<u64> = history
            .iter()
            .filter(|e| e.name() == format!("t{t}"))
            .map(|e| e.data().as_u64().unwrap())
            .collect();
        let expected: Vec<u64> = (0..1000).rev().collect();
        assert_eq!(seq, expected, "thread {t}'s events out of order in history");
    }
}

#[test]
fn an_event_is_in_history_when_publish_returns_and_before_its_handlers_run() {
    let bus = Bus::builder().workers(1).history_size(100).build().unwrap();
    let weak = bus.downgrade();
    let saw_itself = Arc::new(AtomicUsize::new(0));
    let s = saw_itself.clone();
    bus.subscribe(
        "look",
        Handler::sync(move |event| {
            let bus = weak.upgrade().unwrap();
            if bus.history(HistoryQuery::new()).unwrap().iter().any(|e| e.id() == event.id()) {
                s.fetch_add(1, Ordering::SeqCst);
            }
            Ok(())
        }),
        "t",
    )
    .unwrap();
    let release = hold_worker(&bus);
    bus.publish(ev("queued")).unwrap();
    // Not dispatched yet (the only worker is held), already in history.
    assert_eq!(names(&bus.history(HistoryQuery::new().last(1)).unwrap()), ["queued"]);
    release.send(()).unwrap();
    for _ in 0..20 {
        bus.publish(ev("look")).unwrap();
    }
    bus.flush();
    assert_eq!(saw_itself.load(Ordering::SeqCst), 20);
}

#[test]
fn history_filter_errors_are_history_errors() {
    let bus = Bus::new().unwrap();
    let err = bus.history(HistoryQuery::new().matching("")).unwrap_err();
    assert_eq!(
        err,
        HistoryError::InvalidPattern { pattern: String::new(), reason: NameError::Empty }
    );
    assert_eq!(err.to_string(), "invalid history filter \"\": it is empty");
    let source = std::error::Error::source(&err).expect("the name error is the source");
    assert_eq!(source.to_string(), "it is empty");
}

// 2. Every caller of shutdown waits for the drain and the join.

#[test]
fn concurrent_shutdowns_each_return_after_the_drain() {
    watchdog(60, || {
        let bus = Bus::builder().workers(1).build().unwrap();
        let count = Arc::new(AtomicUsize::new(0));
        let c = count.clone();
        bus.subscribe(
            "work",
            Handler::sync(move |_| {
                std::thread::sleep(Duration::from_millis(1));
                c.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }),
            "t",
        )
        .unwrap();
        let release = hold_worker(&bus);
        for _ in 0..200 {
            bus.publish(ev("work")).unwrap();
        }
        let start = Arc::new(Barrier::new(3));
        let callers: Vec<_> = (0..2)
            .map(|_| {
                let (bus, count, start) = (bus.clone(), count.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    bus.shutdown();
                    count.load(Ordering::SeqCst)
                })
            })
            .collect();
        start.wait();
        std::thread::sleep(Duration::from_millis(20));
        release.send(()).unwrap();
        for caller in callers {
            assert_eq!(caller.join().unwrap(), 200, "a shutdown returned before the drain");
        }
    });
}

#[test]
fn shutdown_timeout_reports_what_it_did_not_wait_for() {
    watchdog(30, || {
        let bus = Bus::builder().workers(1).build().unwrap();
        let release = hold_worker(&bus);
        for _ in 0..5 {
            bus.publish(ev("queued")).unwrap();
        }
        let err = bus.shutdown_timeout(Duration::from_millis(50)).unwrap_err();
        assert_eq!(err.pending, 6, "the held event and the five queued ones");
        assert_eq!(err.running_workers, 1);
        assert!(!err.from_handler);
        assert!(bus.is_closed());
        release.send(()).unwrap();
        bus.shutdown_timeout(Duration::from_secs(20)).expect("drains once released");
        assert_eq!(bus.stats().events_dispatched, 6);
    });
}

#[test]
fn a_publisher_blocked_on_a_full_queue_is_released_by_shutdown() {
    watchdog(30, || {
        let bus = Bus::builder().workers(1).capacity(1).build().unwrap();
        let release = hold_worker(&bus);
        bus.publish(ev("fills")).unwrap();
        let publisher = {
            let bus = bus.clone();
            std::thread::spawn(move || bus.publish(ev("blocked")))
        };
        std::thread::sleep(Duration::from_millis(20));
        let closer = {
            let bus = bus.clone();
            std::thread::spawn(move || bus.shutdown())
        };
        // Released with Closed while the worker is still held.
        let outcome = publisher.join().unwrap();
        assert!(matches!(&outcome, Err(e) if e.is_closed()), "{outcome:?}");
        release.send(()).unwrap();
        closer.join().unwrap();
    });
}

// 3. Past the capacity, publish order and priority hold.

/// One worker, `capacity`: a `go` handler runs `children`; returns the
/// names of the `c.*` events in the order they were dispatched.
fn children_dispatch_order(
    capacity: usize,
    children: impl Fn(&Bus) -> HandlerResult + Send + Sync + 'static,
) -> Vec<String> {
    let bus = Bus::builder().workers(1).capacity(capacity).build().unwrap();
    let weak = bus.downgrade();
    bus.subscribe("go", Handler::sync(move |_| children(&weak.upgrade().unwrap())), "t").unwrap();
    let (log, h) = recorder();
    bus.subscribe("c.*", Handler::sync(h), "t").unwrap();
    bus.publish(ev("go")).unwrap();
    bus.flush();
    let order = log.lock().unwrap().clone();
    order
}

#[test]
fn events_a_handler_publishes_past_the_capacity_keep_publish_order() {
    watchdog(30, || {
        let order = children_dispatch_order(4, |bus| {
            for i in 0..20 {
                let _ = bus.publish(ev(&format!("c.{i}"))); // refusals ignored
            }
            Ok(())
        });
        let expected: Vec<String> = (0..8).map(|i| format!("c.{i}")).collect();
        assert_eq!(order, expected);
    });
}

#[test]
fn a_low_event_past_the_capacity_does_not_overtake_queued_high_ones() {
    watchdog(30, || {
        let order = children_dispatch_order(2, |bus| {
            bus.publish(ev("c.high1").with_priority(Priority::High))?;
            bus.publish(ev("c.high2").with_priority(Priority::High))?;
            bus.publish(ev("c.low").with_priority(Priority::Low))?; // past the capacity
            Ok(())
        });
        assert_eq!(order, ["c.high1", "c.high2", "c.low"]);
    });
}

// 4. A blocked publisher is never left asleep (see also the loom model).

#[test]
fn blocked_publishers_are_woken_while_handlers_hit_a_full_queue() {
    watchdog(120, || {
        // Capacity 1 and two workers whose handlers keep trying to publish
        // into the full queue: before reservations were a compare-and-swap,
        // their failed attempts could leave a blocked publisher asleep on an
        // empty queue.
        let bus = Bus::builder().workers(2).capacity(1).overflow(Overflow::Error).build().unwrap();
        let weak = bus.downgrade();
        let seen = Arc::new(AtomicUsize::new(0));
        let s = seen.clone();
        bus.subscribe(
            "x",
            Handler::sync(move |_| {
                s.fetch_add(1, Ordering::Relaxed);
                let bus = weak.upgrade().unwrap();
                let _ = bus.publish(ev("child")); // mostly refused: the queue is full
                Ok(())
            }),
            "t",
        )
        .unwrap();
        let blocking = Bus::builder().workers(2).capacity(1).build().unwrap();
        let c = seen.clone();
        blocking
            .subscribe(
                "y",
                Handler::sync(move |_| {
                    c.fetch_add(1, Ordering::Relaxed);
                    Ok(())
                }),
                "t",
            )
            .unwrap();
        for _ in 0..20_000 {
            bus.publish(ev("x")).ok();
            blocking.publish(ev("y")).unwrap();
        }
        blocking.flush();
        bus.flush();
        assert!(seen.load(Ordering::Relaxed) >= 20_000);
    });
}

// 5. Waiting calls cannot deadlock, and have bounded forms.

#[test]
fn two_handlers_unloading_each_other_and_waiting_do_not_deadlock() {
    watchdog(30, || {
        let bus = Bus::builder().workers(2).build().unwrap();
        let both_inside = Arc::new(Barrier::new(2));
        let calls = Arc::new(AtomicUsize::new(0));
        for (me, other) in [("a", "b"), ("b", "a")] {
            let (weak, barrier, calls) = (bus.downgrade(), both_inside.clone(), calls.clone());
            bus.subscribe(
                &format!("go.{me}"),
                Handler::sync(move |_| {
                    calls.fetch_add(1, Ordering::SeqCst);
                    barrier.wait();
                    weak.upgrade().unwrap().unsubscribe(Target::Plugin(other)).wait();
                    Ok(())
                }),
                me,
            )
            .unwrap();
        }
        // One at a time, so that each worker takes one (a worker takes a
        // whole batch, and both handlers must be inside at once).
        bus.publish(ev("go.a")).unwrap();
        eventually(10, "the first handler to start", || calls.load(Ordering::SeqCst) == 1);
        bus.publish(ev("go.b")).unwrap();
        bus.flush();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert!(bus.subscriptions(Target::All).is_empty(), "each removed the other");
        bus.publish(ev("go.a")).unwrap();
        bus.publish(ev("go.b")).unwrap();
        bus.flush();
        assert_eq!(calls.load(Ordering::SeqCst), 2, "no call after the unsubscribe returned");
    });
}

#[test]
fn unsubscribe_all_and_wait_waits_for_running_calls() {
    watchdog(30, || {
        let bus = Bus::builder().workers(2).build().unwrap();
        let inside = Arc::new(AtomicBool::new(false));
        let finished = Arc::new(AtomicBool::new(false));
        let (i, f) = (inside.clone(), finished.clone());
        bus.subscribe(
            "slow",
            Handler::sync(move |_| {
                i.store(true, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(100));
                f.store(true, Ordering::SeqCst);
                Ok(())
            }),
            "plugin",
        )
        .unwrap();
        bus.subscribe("other", Handler::sync(|_| Ok(())), "plugin").unwrap();
        bus.publish(ev("slow")).unwrap();
        eventually(10, "the handler to start", || inside.load(Ordering::SeqCst));
        assert_eq!(bus.unsubscribe(Target::Plugin("plugin")).wait(), 2);
        assert!(finished.load(Ordering::SeqCst), "returned while a call was running");
    });
}

#[test]
fn timed_waits_report_what_is_still_running() {
    watchdog(30, || {
        let bus = Bus::builder().workers(1).build().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let rx = Mutex::new(rx);
        let inside = Arc::new(AtomicBool::new(false));
        let i = inside.clone();
        let id = bus
            .subscribe(
                "held",
                Handler::sync(move |_| {
                    i.store(true, Ordering::SeqCst);
                    let _ = rx.lock().unwrap().recv();
                    Ok(())
                }),
                "plugin",
            )
            .unwrap();
        bus.publish(ev("held")).unwrap();
        eventually(10, "the handler to start", || inside.load(Ordering::SeqCst));
        let flush = bus.flush_timeout(Duration::from_millis(30)).unwrap_err();
        assert_eq!(flush.pending, 1);
        let err = bus
            .unsubscribe(Target::Plugin("plugin"))
            .wait_timeout(Duration::from_millis(30))
            .unwrap_err();
        assert_eq!(err.removed, 1);
        assert_eq!(err.still_running, [id]);
        tx.send(()).unwrap();
        bus.flush_timeout(Duration::from_secs(10)).expect("done once released");
        // A flush that gave up leaves nothing behind for the next one.
        bus.publish(ev("held")).unwrap();
        bus.flush();
        assert_eq!(
            bus.unsubscribe(Target::Pattern { pattern: "held", plugin: "plugin" })
                .wait_timeout(Duration::ZERO),
            Ok(0)
        );
    });
}

// 6. The error hook is dropped at shutdown.

#[test]
fn an_error_hook_holding_the_bus_is_dropped_by_shutdown() {
    let probe = Arc::new(());
    let hooked: Arc<Mutex<Option<Bus>>> = Arc::new(Mutex::new(None));
    let bus = {
        let (p, h) = (probe.clone(), hooked.clone());
        Bus::builder()
            .error_hook(move |_, _, _| {
                let _ = (&p, &h);
            })
            .build()
            .unwrap()
    };
    // The hook reaches the bus: a cycle only shutdown can break.
    *hooked.lock().unwrap() = Some(bus.clone());
    assert_eq!(Arc::strong_count(&probe), 2);
    bus.shutdown();
    assert_eq!(Arc::strong_count(&probe), 1, "the hook outlived shutdown");
    hooked.lock().unwrap().take();
}

#[test]
fn a_panicking_error_hook_is_contained() {
    let bus = Bus::builder()
        .workers(1)
        .error_hook(|_, _, _| panic!("the hook itself fails"))
        .build()
        .unwrap();
    bus.subscribe("x", Handler::sync(|_| Err("boom".into())), "bad").unwrap();
    let (log, h) = recorder();
    bus.subscribe("x", Handler::sync(h), "good").unwrap();
    for _ in 0..3 {
        bus.publish(ev("x")).unwrap();
    }
    bus.flush();
    assert_eq!(log.lock().unwrap().len(), 3, "the next handler still ran every time");
    assert_eq!(bus.stats().handler_errors, 3);
}

// 7. A closed bus says so.

#[test]
fn publishing_to_a_closed_full_bus_is_closed_not_full() {
    watchdog(30, || {
        for policy in [Overflow::Error, Overflow::Block, Overflow::Shed] {
            let bus = Bus::builder().workers(1).capacity(2).overflow(policy).build().unwrap();
            let weak = bus.downgrade();
            let from_handler = Arc::new(Mutex::new(Vec::new()));
            let f = from_handler.clone();
            bus.subscribe(
                "late",
                Handler::sync(move |_| {
                    let outcome = weak.upgrade().unwrap().publish(ev("child"));
                    f.lock().unwrap().push(outcome.map_err(|e| e.is_closed()));
                    Ok(())
                }),
                "t",
            )
            .unwrap();
            let release = hold_worker(&bus);
            bus.publish(ev("late")).unwrap();
            bus.publish(ev("late")).unwrap(); // the queue is full now
            let closer = {
                let bus = bus.clone();
                std::thread::spawn(move || bus.shutdown())
            };
            eventually(10, "shutdown to begin", || bus.is_closed());
            let err = bus.publish(ev("after")).unwrap_err();
            assert!(err.is_closed() && !err.is_full(), "{policy:?}: {err}");
            release.send(()).unwrap();
            closer.join().unwrap();
            assert_eq!(*from_handler.lock().unwrap(), [Err(true), Err(true)], "{policy:?}");
        }
    });
}

// 8. Panics outside handler calls never stop a worker.

#[derive(serde::Serialize)]
struct Bomb;

impl Drop for Bomb {
    fn drop(&mut self) {
        panic!("a payload's Drop panicked");
    }
}

#[derive(Debug)]
struct BadError;

impl std::fmt::Display for BadError {
    fn fmt(&self, _f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        panic!("an error's Display panicked")
    }
}

impl std::error::Error for BadError {}

#[test]
fn a_payload_whose_drop_panics_does_not_kill_the_worker() {
    watchdog(30, || {
        let bus = Bus::builder().workers(1).history_size(0).build().unwrap();
        let (log, h) = recorder();
        bus.subscribe("*", Handler::sync(h), "t").unwrap();
        bus.publish(Event::typed("bomb", Bomb, "t")).unwrap();
        bus.flush();
        bus.publish(ev("after")).unwrap();
        bus.flush();
        assert_eq!(*log.lock().unwrap(), ["bomb", "after"], "the one worker survived");
        assert_eq!(bus.stats().stray_panics, 1);
        bus.shutdown();
    });
}

#[test]
fn an_error_whose_display_panics_skips_no_handler() {
    watchdog(30, || {
        let bus = Bus::builder()
            .workers(1)
            .error_hook(|_, _, error| {
                let _ = error.to_string(); // panics, inside the hook
            })
            .build()
            .unwrap();
        bus.subscribe("x", Handler::sync(|_| Err(Box::new(BadError))), "bad").unwrap();
        let (log, h) = recorder();
        bus.subscribe("x", Handler::sync(h), "good").unwrap();
        bus.publish(ev("x")).unwrap();
        bus.flush();
        assert_eq!(log.lock().unwrap().len(), 1);
        assert_eq!(bus.stats().handler_errors, 1);
    });
}

#[test]
fn a_handler_whose_drop_panics_does_not_stop_shutdown() {
    struct Guard;
    impl Drop for Guard {
        fn drop(&mut self) {
            panic!("a handler's Drop panicked");
        }
    }
    watchdog(30, || {
        let bus = Bus::builder().workers(2).build().unwrap();
        let probe = Arc::new(());
        let guard = Guard;
        bus.subscribe(
            "x",
            Handler::sync(move |_| {
                let _ = &guard;
                Ok(())
            }),
            "bad",
        )
        .unwrap();
        let p = probe.clone();
        bus.subscribe(
            "x",
            Handler::sync(move |_| {
                let _ = &p;
                Ok(())
            }),
            "good",
        )
        .unwrap();
        bus.publish(ev("x")).unwrap();
        bus.shutdown();
        assert_eq!(Arc::strong_count(&probe), 1, "the other handlers were still dropped");
        assert_eq!(bus.stats().stray_panics, 1);
    });
}

// Errors users match on.

#[test]
fn errors_say_what_they_are_and_where_they_come_from() {
    fn is_error<E: std::error::Error + Send + Sync + 'static>(_: &E) {}
    is_error(&NameError::Empty);
    let bus = Bus::new().unwrap();
    let err = bus.subscribe("", Handler::sync(|_| Ok(())), "p").unwrap_err();
    assert!(!err.is_closed());
    assert_eq!(std::error::Error::source(&err).unwrap().to_string(), "it is empty");
    let err = bus.publish(ev("a\0")).unwrap_err();
    assert!(!err.is_full() && !err.is_closed());
    assert_eq!(err.event().name(), "a\0");
    assert_eq!(std::error::Error::source(&err).unwrap().to_string(), "it contains a NUL character");
    bus.shutdown();
    assert!(bus.subscribe("x", Handler::sync(|_| Ok(())), "p").unwrap_err().is_closed());
    assert_eq!(
        bus.subscribe("x", Handler::sync(|_| Ok(())), "p").unwrap_err(),
        SubscribeError::Closed
    );
    let err = bus.publish(ev("x")).unwrap_err();
    assert!(matches!(err, PublishError::Closed(_)) && err.is_closed());
}

// 9. Event blocks go back to the publishers, and nothing of an old event
// comes with them.

/// A payload that counts its drops.
#[derive(serde::Serialize)]
struct Tracked {
    id: u64,
    #[serde(skip)]
    drops: Arc<AtomicUsize>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.drops.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn a_finished_events_payload_is_dropped_when_the_worker_is_done_and_its_block_carries_nothing_over()
{
    watchdog(30, || {
        let bus = Bus::builder().workers(1).history_size(0).build().unwrap();
        let drops = Arc::new(AtomicUsize::new(0));
        let seen: Arc<Mutex<Vec<(String, u64, bool)>>> = Arc::default();
        let s = seen.clone();
        bus.subscribe(
            "*",
            Handler::sync(move |e: &Event| {
                let id = e.downcast_ref::<Tracked>().map_or(u64::MAX, |t| t.id);
                s.lock().unwrap().push((e.name().to_owned(), id, e.parent().is_some()));
                Ok(())
            }),
            "watch",
        )
        .unwrap();
        // Cascades give some events a parent; the blocks they leave are
        // filled again with top-level ones.
        let b = bus.clone();
        bus.subscribe(
            "n0",
            Handler::sync(move |e: &Event| {
                b.publish(Event::new(
                    "child",
                    Value::from(e.downcast_ref::<Tracked>().map(|t| t.id)),
                    "c",
                ))?;
                Ok(())
            }),
            "cascade",
        )
        .unwrap();
        for round in 0..20u64 {
            for i in 0..100u64 {
                let id = round * 100 + i;
                let event =
                    Event::typed(format!("n{}", id % 7), Tracked { id, drops: drops.clone() }, "t");
                bus.publish(event).unwrap();
            }
            bus.flush();
            // Every payload went when the worker was done with its event, not
            // when a publisher later filled its block again.
            assert_eq!(drops.load(Ordering::SeqCst), ((round + 1) * 100) as usize);
        }
        let seen = seen.lock().unwrap();
        let top: Vec<&(String, u64, bool)> = seen.iter().filter(|(n, _, _)| n != "child").collect();
        assert_eq!(top.len(), 2_000);
        for (k, (name, id, has_parent)) in top.iter().enumerate() {
            assert_eq!((*id, name.as_str()), (k as u64, format!("n{}", k % 7).as_str()));
            assert!(!has_parent, "a top-level event {k} came with a parent");
        }
        let children = seen.iter().filter(|(n, _, p)| n == "child" && *p).count();
        assert_eq!(children, seen.iter().filter(|(n, _, _)| n == "child").count());
        assert_eq!(children, (0..2_000).filter(|k| k % 7 == 0).count());
        bus.shutdown();
    });
}

#[test]
fn a_publish_from_the_drop_of_an_unmatched_events_payload_is_that_events_child() {
    watchdog(30, || {
        let bus = Bus::builder().workers(1).history_size(0).build().unwrap();
        let parents: Arc<Mutex<Vec<Option<switchboard::EventId>>>> = Arc::default();
        let p = parents.clone();
        bus.subscribe(
            "child",
            Handler::sync(move |e: &Event| {
                p.lock().unwrap().push(e.parent().map(|c| c.id()));
                Ok(())
            }),
            "watch",
        )
        .unwrap();
        bus.subscribe("handled", Handler::sync(|_| Ok(())), "h").unwrap();
        // The worker handled another event just before.
        bus.publish(ev("handled")).unwrap();
        bus.flush();
        let unmatched = Event::typed(
            "nobody.listens",
            OnDrop::new(|| {
                Bus::current().expect("on the worker").publish(ev("child")).unwrap();
            }),
            "t",
        );
        let id = unmatched.id();
        bus.publish(unmatched).unwrap();
        // The child counts in its parent's flush bucket: this waits for it.
        bus.flush();
        assert_eq!(*parents.lock().unwrap(), vec![Some(id)]);
        bus.shutdown();
    });
}

#[test]
fn nested_replays_of_two_buses_on_a_worker_each_see_their_own_bus() {
    watchdog(30, || {
        let a = Bus::builder().name("a").workers(1).history_size(10).build().unwrap();
        let b = Bus::builder().name("b").workers(1).history_size(10).build().unwrap();
        b.publish(ev("x")).unwrap();
        a.publish(ev("y")).unwrap();
        a.flush();
        b.flush();
        let seen: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
        let (s, a2, b2) = (seen.clone(), a.clone(), b.clone());
        a.subscribe(
            "go",
            Handler::sync(move |_| {
                let (outer, a3) = (s.clone(), a2.clone());
                // On a's worker: a replay of b, and in its replayed call, a
                // replay of a.
                b2.subscribe_replay(
                    "x",
                    Handler::sync(move |_| {
                        let s = outer.clone();
                        s.lock().unwrap().push(Bus::current().map(|bus| bus.name().to_owned()));
                        let inner = s.clone();
                        a3.subscribe_replay(
                            "y",
                            Handler::sync(move |_| {
                                inner
                                    .lock()
                                    .unwrap()
                                    .push(Bus::current().map(|bus| bus.name().to_owned()));
                                Ok(())
                            }),
                            "inner",
                            1,
                        )
                        .unwrap();
                        s.lock().unwrap().push(Bus::current().map(|bus| bus.name().to_owned()));
                        Ok(())
                    }),
                    "outer",
                    1,
                )
                .unwrap();
                s.lock().unwrap().push(Bus::current().map(|bus| bus.name().to_owned()));
                Ok(())
            }),
            "p",
        )
        .unwrap();
        a.publish(ev("go")).unwrap();
        a.flush();
        let names = |v: &[&str]| v.iter().map(|n| Some(n.to_string())).collect::<Vec<_>>();
        // b's replayed call, a's inside it, b's again, and a's handler after.
        assert_eq!(*seen.lock().unwrap(), names(&["b", "a", "b", "a"]));
        a.shutdown();
        b.shutdown();
    });
}
