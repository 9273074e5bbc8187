//! The subscription lifecycle: when a handler (and what it captured) is
//! released, unsubscribe by id, the scoped guard, and `Bus::current`.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::Duration;

use support::{by_pattern, ev, eventually, watchdog};
use switchboard::{Bus, Event, Handler, Target, WeakBus};

/// Fifty live subscriptions that match everything `flood.*` and `target`
/// events, so the target never sits alone in a level.
fn crowd(bus: &Bus) -> Arc<AtomicU64> {
    let calls = Arc::new(AtomicU64::new(0));
    for i in 0..50 {
        let c = calls.clone();
        let pattern = if i % 2 == 0 { "*" } else { "flood.*" };
        bus.subscribe(
            pattern,
            Handler::sync(move |_| {
                c.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }),
            &format!("crowd{i}"),
        )
        .unwrap();
    }
    calls
}

/// Publishes `flood.N` events until told to stop; returns how many.
fn flood(bus: &Bus, stop: &Arc<AtomicBool>) -> thread::JoinHandle<u64> {
    let (bus, stop) = (bus.clone(), stop.clone());
    thread::spawn(move || {
        let mut sent = 0;
        while !stop.load(Ordering::Relaxed) {
            bus.publish(ev("flood.tick")).unwrap();
            sent += 1;
            if sent % 256 == 0 {
                thread::yield_now();
            }
        }
        sent
    })
}

/// A handler that counts its calls and holds `token`.
fn holding(
    token: &Arc<()>,
    calls: &Arc<AtomicU64>,
) -> impl Fn(&Event) -> switchboard::HandlerResult + Send + Sync + 'static {
    let (token, calls) = (token.clone(), calls.clone());
    move |_| {
        let _still_here = &token;
        calls.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Subscribes a `holding` handler to `flood.*` as plugin `target` and waits
/// for its first call; returns the token, the call count and the id.
fn subscribe_target(bus: &Bus) -> (Arc<()>, Arc<AtomicU64>, switchboard::SubscriptionId) {
    let token = Arc::new(());
    let calls = Arc::new(AtomicU64::new(0));
    let id = bus.subscribe("flood.*", Handler::sync(holding(&token, &calls)), "target").unwrap();
    eventually(10, "a call of the new subscription", || calls.load(Ordering::Relaxed) > 0);
    (token, calls, id)
}

#[test]
fn an_unsubscribed_handler_is_released_before_unsubscribe_returns_on_an_idle_bus() {
    watchdog(30, || {
        let bus = Bus::builder().workers(2).build().unwrap();
        let crowd_calls = crowd(&bus);
        for round in 0..20 {
            let token = Arc::new(());
            let calls = Arc::new(AtomicU64::new(0));
            bus.subscribe("flood.*", Handler::sync(holding(&token, &calls)), "target").unwrap();
            bus.publish(ev("flood.tick")).unwrap();
            bus.flush();
            assert_eq!(calls.load(Ordering::Relaxed), 1);
            assert_eq!(Arc::strong_count(&token), 2);
            assert_eq!(
                bus.unsubscribe(Target::Pattern { pattern: "flood.*", plugin: "target" }).count(),
                1
            );
            assert_eq!(
                Arc::strong_count(&token),
                1,
                "round {round}: the handler outlived unsubscribe"
            );
        }
        assert_eq!(crowd_calls.load(Ordering::Relaxed), 20 * 50);
        bus.shutdown();
    });
}

#[test]
fn unsubscribe_and_wait_releases_the_handler_before_it_returns_under_traffic() {
    watchdog(60, || {
        let bus = Bus::builder().workers(2).build().unwrap();
        let _crowd = crowd(&bus);
        let stop = Arc::new(AtomicBool::new(false));
        let publisher = flood(&bus, &stop);
        for round in 0..50 {
            let (token, calls, id) = subscribe_target(&bus);
            let released = match round % 3 {
                0 => {
                    bus.unsubscribe(Target::Pattern { pattern: "flood.*", plugin: "target" }).wait()
                        == 1
                }
                1 => bus.unsubscribe(Target::Plugin("target")).wait() == 1,
                _ => bus.unsubscribe(id).wait() == 1,
            };
            assert!(released);
            assert_eq!(
                Arc::strong_count(&token),
                1,
                "round {round}: the handler outlived the wait"
            );
            let after = calls.load(Ordering::Relaxed);
            thread::sleep(Duration::from_millis(2));
            assert_eq!(calls.load(Ordering::Relaxed), after, "called after unsubscribe_and_wait");
        }
        stop.store(true, Ordering::Relaxed);
        publisher.join().unwrap();
        bus.shutdown();
    });
}

#[test]
fn a_plain_unsubscribe_releases_the_handler_soon_under_traffic_and_after_a_running_call() {
    watchdog(60, || {
        let bus = Bus::builder().workers(2).build().unwrap();
        let _crowd = crowd(&bus);

        // Under traffic: released within a batch or two.
        let stop = Arc::new(AtomicBool::new(false));
        let publisher = flood(&bus, &stop);
        for _ in 0..20 {
            let (token, _calls, _id) = subscribe_target(&bus);
            assert_eq!(
                bus.unsubscribe(Target::Pattern { pattern: "flood.*", plugin: "target" }).count(),
                1
            );
            eventually(5, "the handler's release", || Arc::strong_count(&token) == 1);
        }
        stop.store(true, Ordering::Relaxed);
        publisher.join().unwrap();
        bus.flush();

        // A call running when it is unsubscribed keeps the handler until it
        // returns; then it goes, on an otherwise idle bus.
        let token = Arc::new(());
        let (entered_tx, entered_rx) = mpsc::channel::<()>();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let (entered_tx, release_rx) = (Mutex::new(entered_tx), Mutex::new(release_rx));
        let t = token.clone();
        bus.subscribe(
            "slow",
            Handler::sync(move |_| {
                let _still_here = &t;
                entered_tx.lock().unwrap().send(()).unwrap();
                release_rx.lock().unwrap().recv().unwrap();
                Ok(())
            }),
            "target",
        )
        .unwrap();
        bus.publish(ev("slow")).unwrap();
        entered_rx.recv().unwrap();
        assert_eq!(
            bus.unsubscribe(Target::Pattern { pattern: "slow", plugin: "target" }).count(),
            1
        );
        assert_eq!(Arc::strong_count(&token), 2, "dropped while its call was running");
        release_tx.send(()).unwrap();
        eventually(5, "the handler's release after its call", || Arc::strong_count(&token) == 1);
        bus.shutdown();
    });
}

/// Holds a `WeakBus` and uses the bus from its `Drop`.
struct UsesBusOnDrop {
    bus: WeakBus,
    log: Arc<Mutex<Vec<String>>>,
}

impl Drop for UsesBusOnDrop {
    fn drop(&mut self) {
        let Some(bus) = self.bus.upgrade() else {
            self.log.lock().unwrap().push("bus gone".into());
            return;
        };
        let removed = bus.unsubscribe(Target::Plugin("other")).count();
        let subscribed = bus.subscribe("late.*", Handler::sync(|_| Ok(())), "late").is_ok();
        let live = bus.stats().subscriptions;
        self.log
            .lock()
            .unwrap()
            .push(format!("removed {removed}, subscribed {subscribed}, live {live}"));
    }
}

#[test]
fn a_handler_whose_drop_uses_the_bus_does_not_deadlock() {
    watchdog(30, || {
        let bus = Bus::builder().workers(2).build().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let handler = |bus: &Bus| {
            let guard = UsesBusOnDrop { bus: bus.downgrade(), log: log.clone() };
            move |_: &Event| {
                let _held = &guard;
                Ok(())
            }
        };

        // Dropped by a plain unsubscribe, on this thread.
        bus.subscribe("x", Handler::sync(|_| Ok(())), "other").unwrap();
        bus.subscribe("x", Handler::sync(handler(&bus)), "p").unwrap();
        bus.unsubscribe(Target::Pattern { pattern: "x", plugin: "p" });
        // Dropped by unsubscribe_and_wait.
        bus.subscribe("x", Handler::sync(|_| Ok(())), "other").unwrap();
        bus.subscribe("x", Handler::sync(handler(&bus)), "p").unwrap();
        bus.unsubscribe(Target::Pattern { pattern: "x", plugin: "p" }).wait();
        // Dropped on a worker: the handler unsubscribes itself mid-call.
        bus.subscribe("x", Handler::sync(|_| Ok(())), "other").unwrap();
        let held = UsesBusOnDrop { bus: bus.downgrade(), log: log.clone() };
        bus.subscribe(
            "self.stop",
            Handler::sync(move |_| {
                let _held = &held;
                Bus::current().unwrap().unsubscribe(Target::Plugin("p")).wait();
                Ok(())
            }),
            "p",
        )
        .unwrap();
        bus.publish(ev("self.stop")).unwrap();
        bus.flush();
        eventually(5, "the self-unsubscribed handler's drop", || log.lock().unwrap().len() == 3);
        // Dropped by shutdown, on the last worker.
        bus.subscribe("x", Handler::sync(|_| Ok(())), "other").unwrap();
        bus.subscribe("x", Handler::sync(handler(&bus)), "p").unwrap();
        let before = bus.stats().subscriptions;
        assert_eq!(before, 5, "three late.* (one per drop so far), x/other and x/p");
        bus.shutdown();

        let log = log.lock().unwrap().clone();
        assert_eq!(log.len(), 4, "{log:?}");
        for entry in &log[..3] {
            assert!(entry.starts_with("removed 1, subscribed true"), "{entry}");
        }
        // At shutdown the bus is closed: nothing can subscribe any more.
        assert!(log[3].contains("subscribed false"), "{}", log[3]);
    });
}

/// What a churn handler shares with the test: whether it was dropped, and
/// whether it was called after.
#[derive(Default)]
struct Life {
    dropped: AtomicBool,
    called_after_drop: AtomicBool,
}

struct Tracker {
    life: Arc<Life>,
    drops: Arc<AtomicUsize>,
    double_drops: Arc<AtomicUsize>,
}

impl Drop for Tracker {
    fn drop(&mut self) {
        if self.life.dropped.swap(true, Ordering::SeqCst) {
            self.double_drops.fetch_add(1, Ordering::SeqCst);
        }
        self.drops.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn every_handler_is_dropped_exactly_once_and_never_called_after_under_churn() {
    watchdog(120, || {
        let bus = Bus::builder().workers(2).capacity(4096).build().unwrap();
        let _crowd = crowd(&bus);
        let stop = Arc::new(AtomicBool::new(false));
        let publishers: Vec<_> = (0..3).map(|_| flood(&bus, &stop)).collect();
        let created = Arc::new(AtomicUsize::new(0));
        let drops = Arc::new(AtomicUsize::new(0));
        let double_drops = Arc::new(AtomicUsize::new(0));
        let lives = Arc::new(Mutex::new(Vec::<Arc<Life>>::new()));
        let churners: Vec<_> = (0..2)
            .map(|c| {
                let (bus, created, drops, double_drops, lives) = (
                    bus.clone(),
                    created.clone(),
                    drops.clone(),
                    double_drops.clone(),
                    lives.clone(),
                );
                thread::spawn(move || {
                    for i in 0..300 {
                        let life = Arc::new(Life::default());
                        lives.lock().unwrap().push(life.clone());
                        let tracker = Tracker {
                            life: life.clone(),
                            drops: drops.clone(),
                            double_drops: double_drops.clone(),
                        };
                        created.fetch_add(1, Ordering::SeqCst);
                        let handler = move |_: &Event| {
                            if tracker.life.dropped.load(Ordering::SeqCst) {
                                tracker.life.called_after_drop.store(true, Ordering::SeqCst);
                            }
                            Ok(())
                        };
                        let plugin = format!("churn{c}");
                        match i % 5 {
                            0 => {
                                bus.subscribe("flood.*", Handler::sync(handler), &plugin).unwrap();
                                thread::yield_now();
                                assert_eq!(
                                    bus.unsubscribe(Target::Pattern {
                                        pattern: "flood.*",
                                        plugin: &plugin
                                    })
                                    .count(),
                                    1
                                );
                            }
                            1 => {
                                bus.subscribe("*", Handler::sync(handler), &plugin).unwrap();
                                thread::yield_now();
                                assert_eq!(bus.unsubscribe(Target::Plugin(&plugin)).wait(), 1);
                            }
                            2 => {
                                let id = bus
                                    .subscribe("flood.tick", Handler::sync(handler), &plugin)
                                    .unwrap();
                                thread::yield_now();
                                assert!(bus.unsubscribe(id).count() == 1);
                            }
                            3 => {
                                let guard = bus
                                    .subscribe_scoped("flood.*", Handler::sync(handler), &plugin)
                                    .unwrap();
                                thread::yield_now();
                                drop(guard);
                            }
                            _ => {
                                // Left for shutdown to drop.
                                bus.subscribe(
                                    "flood.*",
                                    Handler::sync(handler),
                                    &format!("kept{c}.{i}"),
                                )
                                .unwrap();
                            }
                        }
                    }
                })
            })
            .collect();
        for c in churners {
            c.join().unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        for p in publishers {
            p.join().unwrap();
        }
        bus.shutdown();
        assert_eq!(created.load(Ordering::SeqCst), 600);
        assert_eq!(double_drops.load(Ordering::SeqCst), 0, "a handler was dropped twice");
        assert_eq!(drops.load(Ordering::SeqCst), 600, "a handler leaked");
        let lives = lives.lock().unwrap();
        assert!(lives.iter().all(|l| !l.called_after_drop.load(Ordering::SeqCst)));
    });
}

#[test]
fn unsubscribe_id_removes_exactly_one_of_identical_subscriptions() {
    let bus = Bus::builder().workers(2).build().unwrap();
    let (first_calls, second_calls) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (first_token, second_token) = (Arc::new(()), Arc::new(()));
    let first = bus
        .subscribe("quote.*", Handler::sync(holding(&first_token, &first_calls)), "search")
        .unwrap();
    let second = bus
        .subscribe("quote.*", Handler::sync(holding(&second_token, &second_calls)), "search")
        .unwrap();

    assert!(bus.unsubscribe(first).count() == 1);
    assert_eq!(Arc::strong_count(&first_token), 1);
    assert_eq!(Arc::strong_count(&second_token), 2);
    assert!(bus.unsubscribe(first).count() != 1, "already removed");
    assert_eq!(bus.subscriptions(first).first().map(|s| s.stats.errors), None);
    assert_eq!(bus.subscriptions(second).first().map(|s| s.stats.errors), Some(0));
    bus.publish(ev("quote.added")).unwrap();
    bus.flush();
    assert_eq!((first_calls.load(Ordering::Relaxed), second_calls.load(Ordering::Relaxed)), (0, 1));
    assert_eq!(by_pattern(bus.subscriptions(Target::Plugin("search")))["quote.*"], ["search"]);

    assert!(bus.unsubscribe(second).wait() == 1);
    assert_eq!(Arc::strong_count(&second_token), 1);
    assert!(bus.unsubscribe(second).wait() != 1);
    assert!(!bus.unsubscribe(second).wait_timeout(Duration::from_secs(1)).map(|n| n == 1).unwrap());
    assert_eq!(bus.stats().subscriptions, 0);
    assert!(bus.subscriptions(Target::All).is_empty());
    bus.shutdown();
}

#[test]
fn a_scoped_subscription_lasts_as_long_as_its_guard() {
    let bus = Bus::builder().workers(2).build().unwrap();
    let calls = Arc::new(AtomicU64::new(0));
    let token = Arc::new(());
    {
        let guard = bus
            .subscribe_scoped("trivia.*", Handler::sync(holding(&token, &calls)), "stats")
            .unwrap();
        assert_eq!(bus.subscriptions(guard.id()).first().map(|s| s.stats.errors), Some(0));
        bus.publish(ev("trivia.started")).unwrap();
        bus.flush();
    }
    assert_eq!(Arc::strong_count(&token), 1, "dropping the guard released the handler");
    bus.publish(ev("trivia.ended")).unwrap();
    bus.flush();
    assert_eq!(calls.load(Ordering::Relaxed), 1);

    let guard =
        bus.subscribe_scoped("trivia.*", Handler::sync(holding(&token, &calls)), "stats").unwrap();
    assert!(guard.unsubscribe_and_wait());
    assert_eq!(Arc::strong_count(&token), 1);

    let kept = bus
        .subscribe_scoped("trivia.*", Handler::sync(holding(&token, &calls)), "stats")
        .unwrap()
        .detach();
    bus.publish(ev("trivia.won")).unwrap();
    bus.flush();
    assert_eq!(calls.load(Ordering::Relaxed), 2, "a detached subscription stays");
    assert!(bus.unsubscribe(kept).count() == 1);

    // A guard that outlives its bus does nothing when dropped.
    let late = bus.subscribe_scoped("trivia.*", Handler::sync(|_| Ok(())), "stats").unwrap();
    bus.shutdown();
    drop(bus);
    drop(late);
}

#[test]
fn handlers_reach_their_bus_through_current_without_keeping_it_alive() {
    let bus = Bus::builder().workers(2).build().unwrap();
    let weak = bus.downgrade();
    let token = Arc::new(());
    let t = token.clone();
    let answered = Arc::new(AtomicU64::new(0));
    let a = answered.clone();
    bus.subscribe(
        "trivia.question",
        Handler::sync(move |event: &Event| {
            let _still_here = &t;
            let bus = Bus::current().expect("inside a handler of a live bus");
            bus.publish(Event::new("trivia.answer", event.data().clone(), "trivia"))?;
            Ok(())
        }),
        "trivia",
    )
    .unwrap();
    bus.subscribe(
        "trivia.answer",
        Handler::sync(move |_| {
            a.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }),
        "stats",
    )
    .unwrap();
    assert!(Bus::current().is_none(), "not inside a handler");
    bus.publish(ev("trivia.question")).unwrap();
    bus.flush();
    assert_eq!(answered.load(Ordering::SeqCst), 1);

    // Nothing but this handle holds the bus: dropping it shuts the bus down
    // and drops the handlers.
    drop(bus);
    assert!(weak.upgrade().is_none());
    assert_eq!(Arc::strong_count(&token), 1, "the handlers were dropped with the bus");
}

#[test]
fn mailbox_handlers_are_dropped_exactly_once_and_never_called_after_the_wait_under_churn() {
    watchdog(120, || {
        let bus = Bus::builder().workers(2).capacity(4096).build().unwrap();
        let _crowd = crowd(&bus);
        let stop = Arc::new(AtomicBool::new(false));
        let publishers: Vec<_> = (0..2).map(|_| flood(&bus, &stop)).collect();
        let drops = Arc::new(AtomicUsize::new(0));
        let double_drops = Arc::new(AtomicUsize::new(0));
        let lives = Arc::new(Mutex::new(Vec::<Arc<Life>>::new()));
        let calls = Arc::new(AtomicU64::new(0));
        let churners: Vec<_> = (0..2)
            .map(|c| {
                let (bus, drops, double_drops, lives, calls) = (
                    bus.clone(),
                    drops.clone(),
                    double_drops.clone(),
                    lives.clone(),
                    calls.clone(),
                );
                thread::spawn(move || {
                    for i in 0..150 {
                        let life = Arc::new(Life::default());
                        lives.lock().unwrap().push(life.clone());
                        let tracker = Tracker {
                            life: life.clone(),
                            drops: drops.clone(),
                            double_drops: double_drops.clone(),
                        };
                        let waited = Arc::new(AtomicBool::new(false));
                        let (w, calls) = (waited.clone(), calls.clone());
                        let handler = move |_: &Event| {
                            calls.fetch_add(1, Ordering::Relaxed);
                            if tracker.life.dropped.load(Ordering::SeqCst)
                                || w.load(Ordering::SeqCst)
                            {
                                tracker.life.called_after_drop.store(true, Ordering::SeqCst);
                            }
                            Ok(())
                        };
                        let options = match i % 3 {
                            0 => switchboard::SubscribeOptions::new().ordered(),
                            1 => switchboard::SubscribeOptions::new().blocking().concurrency(2),
                            _ => switchboard::SubscribeOptions::new().blocking().ordered(),
                        };
                        let plugin = format!("mailbox{c}");
                        let id = bus
                            .subscribe("flood.*", Handler::sync(handler), options.plugin(&plugin))
                            .unwrap();
                        thread::sleep(Duration::from_micros(200));
                        if i % 2 == 0 {
                            assert!(bus.unsubscribe(id).wait() == 1);
                            waited.store(true, Ordering::SeqCst);
                        } else {
                            assert!(bus.unsubscribe(id).count() == 1);
                        }
                    }
                })
            })
            .collect();
        for c in churners {
            c.join().unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        for p in publishers {
            p.join().unwrap();
        }
        bus.flush();
        eventually(10, "every mailbox handler's drop", || drops.load(Ordering::SeqCst) == 300);
        bus.shutdown();
        assert_eq!(double_drops.load(Ordering::SeqCst), 0, "a handler was dropped twice");
        assert_eq!(drops.load(Ordering::SeqCst), 300);
        assert!(calls.load(Ordering::Relaxed) > 300, "the mailbox handlers did run");
        let lives = lives.lock().unwrap();
        assert!(
            lives.iter().all(|l| !l.called_after_drop.load(Ordering::SeqCst)),
            "a mailbox handler ran after it was dropped or after unsubscribe_and_wait returned"
        );
    });
}
