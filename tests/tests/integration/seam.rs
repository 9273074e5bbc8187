//! The seam of `subscribe_replay` for every kind of subscription, and the
//! waits of unsubscribe on a replay in progress (found by review when
//! replay began to take options): under a flood from four publishers,
//! every event numbered at or above the seam reaches the handler once, and
//! `Unsubscribed::wait` waits for a replayed call whatever the options.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use switchboard::{Bus, Event, Handler, SubscribeOptions, Target};

mod support;

struct OnDrop(Arc<AtomicBool>);
impl Drop for OnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// The number of the latest event in history. (A read held up while a
/// flood laps the ring may come back empty: it is asked again.)
fn latest_sequence(bus: &Bus) -> u64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let last = bus.history(switchboard::HistoryQuery::new().last(1)).unwrap();
        if let Some(event) = last.first() {
            return event.sequence().unwrap();
        }
        assert!(std::time::Instant::now() < deadline, "history stayed empty");
    }
}

/// Four threads publishing `e.x` as fast as they can, counting.
struct Flood {
    stop: Arc<AtomicBool>,
    published: Arc<AtomicUsize>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Flood {
    fn start(bus: &Bus) -> Flood {
        let stop = Arc::new(AtomicBool::new(false));
        let published = Arc::new(AtomicUsize::new(0));
        let threads = (0..4)
            .map(|_| {
                let (bus, stop, published) = (bus.clone(), stop.clone(), published.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        bus.publish(Event::new("e.x", Value::Null, "p")).unwrap();
                        published.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        Flood { stop, published, threads }
    }

    /// Waits until `n` more events are published (a watchdog fails the
    /// test after 30 s: the publishers are stuck).
    fn more(&self, n: usize) {
        let target = self.published.load(Ordering::Relaxed) + n;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while self.published.load(Ordering::Relaxed) < target {
            assert!(std::time::Instant::now() < deadline, "the publishers are stuck");
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
    }
}

/// `Unsubscribed::wait` must wait for a replayed call that is running and
/// return with the handler dropped, whatever the options.
fn wait_during_replay(options: SubscribeOptions) {
    let bus = Bus::builder().history_size(100).build().unwrap();
    for _ in 0..3 {
        bus.publish(Event::new("e.x", Value::Null, "p")).unwrap();
    }
    bus.flush();
    let in_call = Arc::new(AtomicBool::new(false));
    let dropped = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel::<()>();
    let tx = Mutex::new(tx);
    let guard = OnDrop(dropped.clone());
    let ic = in_call.clone();
    let handler = Handler::sync(move |_e| {
        let _ = &guard;
        ic.store(true, Ordering::SeqCst);
        let _ = tx.lock().unwrap().send(());
        std::thread::sleep(Duration::from_millis(300));
        ic.store(false, Ordering::SeqCst);
        Ok(())
    });
    let b = bus.clone();
    let t = std::thread::spawn(move || b.subscribe_replay("e.*", handler, options, 3).unwrap());
    rx.recv().unwrap(); // the first replayed call is running
    let n = bus.unsubscribe(Target::Plugin("r")).wait();
    assert_eq!(n, 1);
    let running = in_call.load(Ordering::SeqCst);
    let was_dropped = dropped.load(Ordering::SeqCst);
    t.join().unwrap();
    assert!(!running, "Unsubscribed::wait returned while a replayed call was running");
    assert!(was_dropped, "Unsubscribed::wait returned before the handler was dropped");
}

#[test]
fn wait_during_replay_inline() {
    wait_during_replay(SubscribeOptions::new().plugin("r"));
}

#[test]
fn wait_during_replay_blocking() {
    wait_during_replay(SubscribeOptions::new().plugin("r").blocking());
}

#[test]
fn wait_during_replay_ordered() {
    wait_during_replay(SubscribeOptions::new().plugin("r").ordered());
}

/// An ordered replay must get every event numbered at or above its seam:
/// ordered subscriptions are routed by the publisher, from a snapshot it
/// loads before it takes its sequence number.
#[test]
fn ordered_replay_misses_nothing_at_the_seam() {
    replay_misses_nothing_at_the_seam(SubscribeOptions::new().plugin("r").ordered());
}

#[test]
fn blocking_replay_misses_nothing_at_the_seam() {
    replay_misses_nothing_at_the_seam(SubscribeOptions::new().plugin("r").blocking());
}

#[test]
fn inline_replay_misses_nothing_at_the_seam() {
    replay_misses_nothing_at_the_seam(SubscribeOptions::new().plugin("r"));
}

fn replay_misses_nothing_at_the_seam(options: SubscribeOptions) {
    let bus = Bus::builder().workers(2).history_size(1 << 14).build().unwrap();
    let mut failures = Vec::new();
    for round in 0..150 {
        let flood = Flood::start(&bus);
        flood.more(100); // the flood runs as the subscription is made
        let seen = Arc::new(Mutex::new(Vec::<u64>::new()));
        let s = seen.clone();
        let handler = Handler::sync(move |e: &Event| {
            s.lock().unwrap().push(e.sequence().unwrap());
            Ok(())
        });
        let r = bus.subscribe_replay("e.*", handler, options.clone(), 2).unwrap();
        flood.more(1_000); // and goes on well past it
        flood.stop();
        bus.flush();
        let end = latest_sequence(&bus);
        let got: std::collections::BTreeSet<u64> = seen.lock().unwrap().iter().copied().collect();
        let missing: Vec<u64> = (r.seam..=end).filter(|q| !got.contains(q)).collect();
        let extra = seen.lock().unwrap().len() - got.len();
        if !missing.is_empty() || extra > 0 {
            failures.push((round, r.seam, end, extra, missing));
        }
        bus.unsubscribe(r.id).wait();
    }
    assert!(failures.is_empty(), "(round, seam, end, duplicates, lost): {failures:?}");
}

/// A filtered handler that refuses everything makes no call, for replayed
/// calls too, whatever the options.
#[test]
fn refused_calls_are_not_dispatched() {
    for options in [
        SubscribeOptions::new().plugin("f"),
        SubscribeOptions::new().plugin("f").ordered(),
        SubscribeOptions::new().plugin("f").blocking(),
    ] {
        let bus = Bus::builder().history_size(100).build().unwrap();
        for _ in 0..3 {
            bus.publish(Event::new("e.x", Value::Null, "p")).unwrap();
        }
        bus.flush();
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let h = Handler::sync(move |_| {
            c.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
        .filtered(|_| false);
        let r = bus.subscribe_replay("e.*", h, options.clone(), 3).unwrap();
        assert_eq!(r.replayed, 3);
        let h2 = Handler::sync(|_| Ok(())).filtered(|_| false);
        bus.subscribe("e.*", h2, options.clone()).unwrap();
        for _ in 0..2 {
            bus.publish(Event::new("e.x", Value::Null, "p")).unwrap();
        }
        bus.flush();
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        assert_eq!(bus.stats().dispatched, 0, "{options:?}");
    }
}

/// A plain ordered subscription (no replay) under the same flood: every
/// event numbered after subscribe returned reaches it. (Ordered
/// subscriptions are routed by the publisher; one that routed from an older
/// snapshot but took its number later used to miss it.)
#[test]
fn ordered_subscription_under_flood_misses_nothing() {
    let bus = Bus::builder().workers(2).history_size(1 << 14).build().unwrap();
    let mut failures = Vec::new();
    for round in 0..150 {
        let flood = Flood::start(&bus);
        flood.more(100); // the flood runs as the subscription is made
        let seen = Arc::new(Mutex::new(Vec::<u64>::new()));
        let s = seen.clone();
        let handler = Handler::sync(move |e: &Event| {
            s.lock().unwrap().push(e.sequence().unwrap());
            Ok(())
        });
        let id =
            bus.subscribe("e.*", handler, SubscribeOptions::new().plugin("r").ordered()).unwrap();
        let from = latest_sequence(&bus) + 1;
        flood.more(1_000); // and goes on well past it
        flood.stop();
        bus.flush();
        let end = latest_sequence(&bus);
        let got: std::collections::BTreeSet<u64> = seen.lock().unwrap().iter().copied().collect();
        let missing: Vec<u64> = (from..=end).filter(|q| !got.contains(q)).collect();
        if !missing.is_empty() {
            std::thread::sleep(Duration::from_millis(300));
            let later: std::collections::BTreeSet<u64> =
                seen.lock().unwrap().iter().copied().collect();
            let still: Vec<u64> = missing.iter().copied().filter(|q| !later.contains(q)).collect();
            failures.push((
                round,
                missing,
                still,
                bus.stats().handler_errors,
                bus.stats().backlog_dropped,
                bus.stats().dropped,
            ));
        }
        bus.unsubscribe(id).wait();
    }
    assert!(failures.is_empty(), "(round, from, end, lost): {failures:?}");
}

/// A replay calls the handler on the subscribing thread, which an async
/// handler's calls cannot run on: refused, with a reason, and nothing is
/// subscribed.
#[cfg(feature = "tokio")]
#[test]
fn an_async_handler_cannot_be_replayed_to() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let _entered = runtime.enter();
    let bus = Bus::builder().history_size(10).build().unwrap();
    let handler = Handler::future(|_event| async { Ok(()) });
    match bus.subscribe_replay("e.*", handler, "r", 5) {
        Err(switchboard::SubscribeError::CannotReplay { reason }) => {
            assert!(reason.contains("async"), "{reason}");
        }
        other => panic!("expected CannotReplay, got {other:?}"),
    }
    assert!(bus.subscriptions(Target::All).is_empty());
}

/// On a one-worker bus an inline subscription's calls come in publish
/// order, and a replay keeps that order across the seam: a live event that
/// arrives while the subscribing thread is still calling the buffered ones
/// waits behind them. (The replay used to end the buffer with the first
/// batch it took, so the worker called later live events while that batch
/// was still being called: a reordering at the seam that a late joiner in
/// the plugin tests hit once under load.) Deterministic: the replayed call
/// of the first buffered event holds the subscribing thread while 200 more
/// events are published and the worker has time to run them.
#[test]
fn a_one_worker_inline_replay_keeps_publish_order_across_the_seam() {
    support::watchdog(60, || {
        let bus = Bus::builder().workers(1).history_size(100).build().unwrap();
        let ev = |i: u64| Event::new("e.x", serde_json::json!(i), "p");
        for i in 0..5 {
            bus.publish(ev(i)).unwrap();
        }
        bus.flush();
        let (started_tx, started_rx) = mpsc::channel::<()>(); // history's first call runs
        let (history_tx, history_rx) = mpsc::channel::<()>(); // live events 5..8 are in
        let (seam_tx, seam_rx) = mpsc::channel::<()>(); // the first buffered call runs
        let (go_tx, go_rx) = mpsc::channel::<()>(); // 200 more were published
        let waits = Mutex::new((started_tx, history_rx, seam_tx, go_rx));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let handler = Handler::sync(move |e: &Event| {
            let i = e.data().as_u64().unwrap();
            s.lock().unwrap().push(i);
            let waits = waits.lock().unwrap();
            match i {
                0 => {
                    waits.0.send(()).unwrap();
                    waits.1.recv().unwrap();
                }
                5 => {
                    waits.2.send(()).unwrap();
                    waits.3.recv().unwrap();
                }
                _ => {}
            }
            Ok(())
        });
        let b = bus.clone();
        let replay =
            std::thread::spawn(move || b.subscribe_replay("e.*", handler, "r", 5).unwrap());
        started_rx.recv().unwrap(); // past the seam: what comes now is live
        for i in 5..8 {
            bus.publish(ev(i)).unwrap();
        }
        std::thread::sleep(Duration::from_millis(100)); // the worker buffers them
        history_tx.send(()).unwrap();
        seam_rx.recv().unwrap();
        for i in 8..208 {
            bus.publish(ev(i)).unwrap();
        }
        std::thread::sleep(Duration::from_millis(200)); // the worker has had time to call them
        go_tx.send(()).unwrap();
        let r = replay.join().unwrap();
        assert_eq!((r.replayed, r.seam), (5, 5));
        bus.flush();
        let seen = seen.lock().unwrap();
        assert_eq!(*seen, (0..208).collect::<Vec<u64>>(), "every event once, in publish order");
        bus.shutdown();
    });
}
