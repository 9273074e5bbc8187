//! Ordered delivery and slow (blocking) subscribers.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use serde_json::json;
use support::{ev, watchdog};
use switchboard::{
    Bus, Event, Handler, HandlerResult, Overflow, Priority, SubscribeOptions, Target,
};

const THREADS: u64 = 2;
const PER_THREAD: u64 = 5_000;

/// What an ordered handler saw: per publishing thread the last sequence
/// number, and every violation.
#[derive(Default)]
struct Witness {
    inside: AtomicBool,
    last: Mutex<Vec<Option<u64>>>,
    calls: AtomicU64,
    concurrent: AtomicU64,
    inversions: AtomicU64,
}

impl Witness {
    fn new() -> Arc<Witness> {
        Arc::new(Witness { last: Mutex::new(vec![None; THREADS as usize]), ..Default::default() })
    }

    fn see(&self, event: &Event) {
        if self.inside.swap(true, Ordering::SeqCst) {
            self.concurrent.fetch_add(1, Ordering::SeqCst);
        }
        let (t, seq) = (event.data()["t"].as_u64().unwrap(), event.data()["seq"].as_u64().unwrap());
        {
            let mut last = self.last.lock().unwrap();
            if last[t as usize].is_some_and(|prev| prev >= seq) {
                self.inversions.fetch_add(1, Ordering::SeqCst);
            }
            last[t as usize] = Some(seq);
        }
        // Long enough for another worker to come in if it could.
        std::hint::spin_loop();
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inside.store(false, Ordering::SeqCst);
    }

    fn check(&self, what: &str) {
        assert_eq!(
            self.concurrent.load(Ordering::SeqCst),
            0,
            "{what}: ran concurrently with itself"
        );
        assert_eq!(
            self.inversions.load(Ordering::SeqCst),
            0,
            "{what}: saw a thread's events out of order"
        );
        assert_eq!(self.calls.load(Ordering::SeqCst), THREADS * PER_THREAD, "{what}: lost events");
    }
}

/// Two threads publishing `tick` events stamped with their sequence
/// numbers, all at one priority each.
fn publish_stamped(bus: &Bus) {
    let publishers: Vec<_> = (0..THREADS)
        .map(|t| {
            let bus = bus.clone();
            thread::spawn(move || {
                let priority = if t == 0 { Priority::Normal } else { Priority::High };
                for seq in 0..PER_THREAD {
                    let e = Event::new("tick", json!({"t": t, "seq": seq}), "test")
                        .with_priority(priority);
                    bus.publish(e).unwrap();
                }
            })
        })
        .collect();
    for p in publishers {
        p.join().unwrap();
    }
}

fn witness_handler(w: &Arc<Witness>) -> impl Fn(&Event) -> HandlerResult + Send + Sync + 'static {
    let w = w.clone();
    move |e| {
        w.see(e);
        Ok(())
    }
}

#[test]
fn an_ordered_subscription_sees_each_threads_events_in_order_one_at_a_time() {
    watchdog(60, || {
        let bus = Bus::builder().workers(4).build().unwrap();
        let on_workers = Witness::new();
        let on_own_thread = Witness::new();
        bus.subscribe(
            "tick",
            Handler::sync(witness_handler(&on_workers)),
            SubscribeOptions::new().plugin("audit").ordered().backlog(100_000),
        )
        .unwrap();
        bus.subscribe(
            "tick",
            Handler::sync(witness_handler(&on_own_thread)),
            SubscribeOptions::new()
                .plugin("archive")
                .ordered()
                .blocking()
                .concurrency(4)
                .backlog(100_000),
        )
        .unwrap();
        // An unordered one, to keep the workers busy meanwhile.
        let plain = Arc::new(AtomicU64::new(0));
        let p = plain.clone();
        bus.subscribe(
            "*",
            Handler::sync(move |_| {
                p.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }),
            "stats",
        )
        .unwrap();
        publish_stamped(&bus);
        bus.flush();
        on_workers.check("ordered on the workers");
        on_own_thread.check("ordered and blocking");
        assert_eq!(plain.load(Ordering::Relaxed), THREADS * PER_THREAD);
        assert_eq!(bus.stats().backlog_dropped, 0);
        bus.shutdown();
    });
}

#[test]
fn a_slow_blocking_subscriber_that_asked_to_shed_neither_stalls_the_others_nor_loses_silently() {
    watchdog(60, || {
        let bus = Bus::builder().workers(2).build().unwrap();
        let slow_calls = Arc::new(AtomicU64::new(0));
        let s = slow_calls.clone();
        let slow = bus
            .subscribe(
                "job.*",
                Handler::sync(move |_| {
                    thread::sleep(Duration::from_millis(50));
                    s.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                }),
                (
                    // Isolation from a slow subscriber is asked for: under the
                    // default (`Block`) it would slow the bus to its pace.
                    SubscribeOptions::new().blocking().backlog(4).overflow(Overflow::Shed)
                )
                .plugin("thumbs"),
            )
            .unwrap();
        let fast: Vec<Arc<AtomicU64>> = (0..10).map(|_| Arc::new(AtomicU64::new(0))).collect();
        for (i, counter) in fast.iter().enumerate() {
            let c = counter.clone();
            bus.subscribe(
                "job.*",
                Handler::sync(move |_| {
                    c.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                }),
                &format!("fast{i}"),
            )
            .unwrap();
        }
        const EVENTS: u64 = 2_000;
        for _ in 0..EVENTS {
            bus.publish(ev("job.done")).unwrap();
        }
        // The fast ones have everything long before the slow one could
        // have handled even its backlog.
        support::eventually(10, "the fast subscribers' events", || {
            fast.iter().all(|c| c.load(Ordering::SeqCst) == EVENTS)
        });
        assert!(slow_calls.load(Ordering::SeqCst) < 10, "the fast ones waited for the slow one");
        bus.flush();
        let stats = bus.subscriptions(slow).first().map(|s| s.stats.clone()).unwrap();
        let delivered = slow_calls.load(Ordering::SeqCst);
        assert!(stats.backlog_dropped > 0);
        assert_eq!(
            delivered + stats.backlog_dropped,
            EVENTS,
            "every event is delivered or counted"
        );
        assert_eq!(bus.stats().backlog_dropped, stats.backlog_dropped);
        assert_eq!((stats.backlog, stats.running), (0, 0));
        bus.shutdown();
    });
}

#[test]
fn a_blocking_handler_is_released_by_unsubscribe_and_wait_and_never_called_after() {
    watchdog(30, || {
        let bus = Bus::builder().workers(2).build().unwrap();
        let token = Arc::new(());
        let t = token.clone();
        let calls = Arc::new(AtomicU64::new(0));
        let c = calls.clone();
        bus.subscribe(
            "slow",
            Handler::sync(move |_| {
                let _held = &t;
                thread::sleep(Duration::from_millis(5));
                c.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }),
            SubscribeOptions::new().plugin("p").blocking().concurrency(2),
        )
        .unwrap();
        for _ in 0..50 {
            bus.publish(ev("slow")).unwrap();
        }
        thread::sleep(Duration::from_millis(12));
        assert_eq!(bus.unsubscribe(Target::Pattern { pattern: "slow", plugin: "p" }).wait(), 1);
        assert_eq!(Arc::strong_count(&token), 1, "the closure outlived its last call");
        let after = calls.load(Ordering::SeqCst);
        assert!(after < 50, "the backlog was dropped, not run");
        bus.flush();
        thread::sleep(Duration::from_millis(20));
        assert_eq!(calls.load(Ordering::SeqCst), after, "called after unsubscribe_and_wait");
        bus.shutdown();
    });
}

#[test]
fn shutdown_lets_blocking_handlers_finish_their_backlog() {
    watchdog(30, || {
        let bus = Bus::builder().workers(1).build().unwrap();
        let calls = Arc::new(AtomicU64::new(0));
        let c = calls.clone();
        bus.subscribe(
            "slow",
            Handler::sync(move |_| {
                thread::sleep(Duration::from_millis(2));
                c.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }),
            SubscribeOptions::new().plugin("p").blocking().ordered(),
        )
        .unwrap();
        for _ in 0..100 {
            bus.publish(ev("slow")).unwrap();
        }
        bus.shutdown();
        assert_eq!(calls.load(Ordering::SeqCst), 100);
    });
}

#[test]
fn blocking_handlers_unsubscribing_each_other_and_waiting_do_not_deadlock() {
    watchdog(30, || {
        let bus = Bus::builder().workers(2).build().unwrap();
        // Both handlers start, then each removes the other and waits for
        // its running call: each waits for a call that waits for it.
        let both_in = Arc::new(std::sync::Barrier::new(2));
        let ids: Arc<Mutex<Vec<switchboard::SubscriptionId>>> = Arc::default();
        let all_ids = ids;
        let removed = Arc::new(AtomicU64::new(0));
        for me in 0..2usize {
            let (both_in, ids, removed) = (both_in.clone(), all_ids.clone(), removed.clone());
            let id = bus
                .subscribe(
                    "go",
                    Handler::sync(move |_| {
                        both_in.wait();
                        let other = ids.lock().unwrap()[1 - me];
                        let bus = Bus::current().expect("in a handler");
                        if bus.unsubscribe(other).wait() == 1 {
                            removed.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(())
                    }),
                    SubscribeOptions::new().plugin(&format!("p{me}")).blocking(),
                )
                .unwrap();
            all_ids.lock().unwrap().push(id);
        }
        bus.publish(ev("go")).unwrap();
        bus.flush();
        assert_eq!(removed.load(Ordering::SeqCst), 2, "each removed the other");
        assert_eq!(bus.stats().subscriptions, 0);
        bus.shutdown();
    });
}

/// A worker takes an ordered subscription's events a batch at a time; an
/// unsubscribe that returns while the batch is being called starts none of
/// its remaining events (as it started none of a backlog it discarded),
/// and they are counted out of flush.
#[test]
fn an_unsubscribe_during_a_batch_starts_none_of_its_remaining_events() {
    watchdog(30, || {
        let bus = Bus::builder().workers(1).history_size(0).build().unwrap();
        let hold = support::hold_worker(&bus);
        let calls = Arc::new(AtomicU64::new(0));
        let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let waits = Mutex::new((started_tx, go_rx));
        let c = calls.clone();
        let id = bus
            .subscribe(
                "x",
                Handler::sync(move |e: &Event| {
                    c.fetch_add(1, Ordering::SeqCst);
                    if e.data() == &json!(0) {
                        let waits = waits.lock().unwrap();
                        waits.0.send(()).unwrap();
                        waits.1.recv().unwrap();
                    }
                    Ok(())
                }),
                SubscribeOptions::new().plugin("p").ordered(),
            )
            .unwrap();
        for i in 0..10 {
            bus.publish(Event::new("x", json!(i), "t")).unwrap();
        }
        let backlog = || bus.subscriptions(id).first().map(|s| s.stats.backlog);
        assert_eq!(backlog(), Some(10), "the held worker took none yet");
        hold.send(()).unwrap(); // the worker takes all ten at once
        started_rx.recv().unwrap();
        assert_eq!(backlog(), Some(0), "taken as one batch");
        assert_eq!(bus.unsubscribe(id).count(), 1);
        go_tx.send(()).unwrap();
        bus.flush();
        assert_eq!(calls.load(Ordering::SeqCst), 1, "a call started after unsubscribe returned");
        bus.shutdown();
    });
}
