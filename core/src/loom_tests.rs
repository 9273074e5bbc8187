//! loom models of the bus's protocols. Run with
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p switchboard --release --lib loom_`.

use std::sync::atomic::{AtomicUsize as StdUsize, Ordering as Std};
use std::sync::Arc;

use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use loom::thread;

use switchboard_matcher::Pattern;

use crate::event::{Event, Priority};
use crate::flush::Epochs;
use crate::queue::{Offer, Overflow, Queues};
use crate::reclaim::Calls;
use crate::subscription::{Subscription, SubscriptionId};
use crate::wait::WaitGraph;
use crate::Bus;

/// Runs `f` under loom, with room for the bounded spin-and-yield loops.
fn model<F: Fn() + Sync + Send + 'static>(f: F) {
    let mut builder = loom::model::Builder::new();
    builder.max_branches = 100_000;
    builder.check(f);
}

/// Like [`model`], exploring schedules with at most one preemption: for the
/// models with three or four threads and spin-waits, which are otherwise
/// intractable.
fn model_one_preemption<F: Fn() + Sync + Send + 'static>(f: F) {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(1);
    builder.max_branches = 100_000;
    builder.check(f);
}

/// A subscription whose handler counts its calls, checks it is not called
/// after `done`, and counts its own drop.
fn probe_sub(
    calls: &Arc<StdUsize>,
    drops: &Arc<StdUsize>,
    done: &Arc<AtomicBool>,
) -> Arc<Subscription> {
    struct DropCount(Arc<StdUsize>);
    impl Drop for DropCount {
        fn drop(&mut self) {
            self.0.fetch_add(1, Std::SeqCst);
        }
    }
    let (calls, dropped, done) = (calls.clone(), DropCount(drops.clone()), done.clone());
    let handler = move |_e: &Event| {
        let _held = &dropped;
        assert!(!done.load(Ordering::SeqCst), "a call started after unsubscribe-and-wait returned");
        calls.fetch_add(1, Std::SeqCst);
        Ok(())
    };
    Arc::new(Subscription::new(
        SubscriptionId::new(1),
        Pattern::new("x").unwrap(),
        Arc::from("p"),
        Priority::Normal,
        Some(Box::new(handler)),
        None,
    ))
}

/// A worker's batch of `events` events for `sub`, then its end-of-batch
/// reclaim, as `dispatch/mod.rs` does it.
fn worker_batch(calls: &Calls, sub: &Subscription, events: usize) {
    let event = Event::new("x", serde_json::Value::Null, "t");
    for _ in 0..events {
        if calls.enter(0, sub) {
            // SAFETY: announced, then seen active: the protocol under test.
            let _ = unsafe { sub.call(&event) };
            calls.exit(0);
        }
    }
    if calls.has_retired() {
        drop(calls.reclaim());
    }
}

/// A probe subscription, a one-worker call table, and a worker thread
/// running a batch of `events` events for it.
struct Race {
    calls_made: Arc<StdUsize>,
    drops: Arc<StdUsize>,
    done: Arc<AtomicBool>,
    sub: Arc<Subscription>,
    calls: Arc<Calls>,
    worker: thread::JoinHandle<()>,
}

impl Race {
    fn start(events: usize) -> Race {
        let (calls_made, drops) = (Arc::new(StdUsize::new(0)), Arc::new(StdUsize::new(0)));
        let done = Arc::new(AtomicBool::new(false));
        let sub = probe_sub(&calls_made, &drops, &done);
        let calls = Arc::new(Calls::new(1));
        let worker = {
            let (calls, sub) = (calls.clone(), sub.clone());
            thread::spawn(move || worker_batch(&calls, &sub, events))
        };
        // The unsubscriber's first steps, racing the worker.
        assert!(sub.close());
        calls.retire(std::slice::from_ref(&sub));
        Race { calls_made, drops, done, sub, calls, worker }
    }
}

/// Retire against a worker mid-batch: the handler is dropped exactly once,
/// never while a call runs (loom's cell tracking would report the race),
/// by whichever side reclaims last.
#[test]
fn loom_retire_vs_a_worker_mid_batch() {
    model(|| {
        let race = Race::start(2);
        drop(race.calls.reclaim());
        race.worker.join().unwrap();
        // Whoever reclaimed last found no call running.
        drop(race.calls.reclaim());
        assert_eq!(race.drops.load(Std::SeqCst), 1, "the handler was not dropped exactly once");
        assert!(race.calls_made.load(Std::SeqCst) <= 2);
    });
}

/// Unsubscribe-and-wait against a call that is starting: once the wait
/// returns, no call runs or starts, and the handler is already dropped,
/// exactly once even though the worker's reclaim races the waiter's.
#[test]
fn loom_wait_vs_a_call_that_is_starting() {
    model(|| {
        let race = Race::start(1);
        let subs = [race.sub.clone()];
        let waited = WaitGraph::new().wait_idle(&race.calls, &subs, None, None, None);
        assert!(waited.still_running.is_empty());
        drop(race.calls.reclaim_seen_idle(&subs, &waited.held));
        race.done.store(true, Ordering::SeqCst);
        assert_eq!(race.drops.load(Std::SeqCst), 1, "the handler outlived unsubscribe-and-wait");
        race.worker.join().unwrap();
        drop(race.calls.reclaim());
        assert_eq!(race.drops.load(Std::SeqCst), 1, "the handler was dropped twice");
    });
}

/// Flush: an event counted in before `flush` starts is counted out before it
/// returns, even with another flush racing the publish.
#[test]
fn loom_flush_waits_for_earlier_events() {
    model_one_preemption(|| {
        let epochs = Arc::new(Epochs::new());
        let published = Arc::new(AtomicBool::new(false));
        let dispatched = Arc::new(AtomicBool::new(false));
        // Publishes (counts in), says so, then plays the worker (counts out).
        let publisher = {
            let (epochs, published, dispatched) =
                (epochs.clone(), published.clone(), dispatched.clone());
            thread::spawn(move || {
                let bucket = epochs.begin();
                published.store(true, Ordering::SeqCst);
                dispatched.store(true, Ordering::SeqCst);
                epochs.end(bucket, 1);
            })
        };
        let racing_flush = {
            let epochs = epochs.clone();
            thread::spawn(move || epochs.flush(None).unwrap())
        };
        while !published.load(Ordering::SeqCst) {
            thread::yield_now();
        }
        epochs.flush(None).unwrap();
        assert!(
            dispatched.load(Ordering::SeqCst),
            "flush returned before an earlier event was dispatched"
        );
        racing_flush.join().unwrap();
        publisher.join().unwrap();
    });
}

/// Parking: a worker that parks while an event is being offered is woken.
#[test]
fn loom_park_has_no_lost_wakeup() {
    model(|| {
        let queues: Arc<Queues<u32>> = Arc::new(Queues::new(2, 0));
        let got = Arc::new(AtomicUsize::new(0));
        let worker = {
            let (queues, got) = (queues.clone(), got.clone());
            thread::spawn(move || {
                let mut batch = Vec::new();
                loop {
                    if queues.take(Priority::Normal.index(), 4, &mut batch) > 0 {
                        got.fetch_add(batch.len(), Ordering::SeqCst);
                        return;
                    }
                    queues.park(|| false);
                }
            })
        };
        match queues.offer_waiting(7, Priority::Normal, 0, Overflow::Block, false, |_| {}) {
            Offer::Accepted { .. } => {}
            other => panic!("offer failed: {other:?}"),
        }
        worker.join().unwrap();
        assert_eq!(got.load(Ordering::SeqCst), 1);
    });
}

/// Shutdown: an event either is refused as closed or is drained.
#[test]
fn loom_shutdown_strands_nothing() {
    model(|| {
        let queues: Arc<Queues<u32>> = Arc::new(Queues::new(2, 0));
        let drained = Arc::new(AtomicUsize::new(0));
        let worker = {
            let (queues, drained) = (queues.clone(), drained.clone());
            thread::spawn(move || {
                let mut batch = Vec::new();
                loop {
                    let lane = Priority::Normal.index();
                    if queues.take(lane, 4, &mut batch) > 0 {
                        drained.fetch_add(batch.len(), Ordering::SeqCst);
                        batch.clear();
                        continue;
                    }
                    if queues.is_closed() && queues.is_drained() {
                        return;
                    }
                    queues.park(|| false);
                }
            })
        };
        let publisher = {
            let queues = queues.clone();
            thread::spawn(move || {
                matches!(
                    queues.offer_waiting(1, Priority::Normal, 0, Overflow::Block, false, |_| {}),
                    Offer::Accepted { .. }
                )
            })
        };
        queues.close();
        let accepted = publisher.join().unwrap();
        worker.join().unwrap();
        assert_eq!(
            drained.load(Ordering::SeqCst),
            usize::from(accepted),
            "an accepted event was stranded"
        );
    });
}

/// The whole bus with one worker: subscribe, publish, flush sees the call;
/// unsubscribe stops it; shutdown joins the worker.
#[test]
fn loom_bus_publish_flush_shutdown() {
    model_one_preemption(|| {
        let calls = Arc::new(StdUsize::new(0));
        let bus = Bus::builder().workers(1).history_size(0).capacity(4).build().unwrap();
        let counter = calls.clone();
        bus.subscribe(
            "a.*",
            crate::Handler::sync(move |_e: &Event| {
                counter.fetch_add(1, Std::SeqCst);
                Ok(())
            }),
            "p",
        )
        .unwrap();
        bus.publish(Event::new("a.b", serde_json::Value::Null, "t")).unwrap();
        bus.flush();
        assert_eq!(calls.load(Std::SeqCst), 1);
        assert_eq!(
            bus.unsubscribe(crate::Target::Pattern { pattern: "a.*", plugin: "p" }).count(),
            1
        );
        bus.publish(Event::new("a.c", serde_json::Value::Null, "t")).unwrap();
        bus.shutdown();
        assert_eq!(calls.load(Std::SeqCst), 1);
    });
}

/// Concurrent writers never lose each other's changes, and a worker
/// dispatching meanwhile sees a consistent snapshot.
#[test]
fn loom_concurrent_subscribes_are_both_kept() {
    model_one_preemption(|| {
        let calls = Arc::new(StdUsize::new(0));
        let bus = Bus::builder().workers(1).history_size(0).capacity(4).build().unwrap();
        let writers: Vec<_> = ["a", "b"]
            .into_iter()
            .map(|plugin| {
                let (bus, calls) = (bus.clone(), calls.clone());
                thread::spawn(move || {
                    bus.subscribe(
                        "x",
                        crate::Handler::sync(move |_e: &Event| {
                            calls.fetch_add(1, Std::SeqCst);
                            Ok(())
                        }),
                        plugin,
                    )
                    .unwrap();
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        bus.publish(Event::new("x", serde_json::Value::Null, "t")).unwrap();
        bus.flush();
        assert_eq!(calls.load(Std::SeqCst), 2, "a concurrent subscribe was lost");
        assert_eq!(bus.subscriptions(crate::Target::All).len(), 2);
        bus.shutdown();
    });
}

/// A worker's loop for the queue models: takes everything until the queues
/// are closed and drained, and returns what it took, in order.
fn drain_until_closed(queues: &Queues<u32>) -> Vec<u32> {
    let mut taken = Vec::new();
    let mut batch = Vec::new();
    loop {
        let mut any = false;
        for lane in (0..3).rev() {
            if queues.take(lane, 4, &mut batch) > 0 {
                taken.extend(batch.drain(..).map(|q| q.item));
                any = true;
            }
        }
        if any {
            continue;
        }
        if queues.is_closed() && queues.is_drained() {
            return taken;
        }
        queues.park(|| false);
    }
}

/// Room: a publisher blocked on a full queue is woken when a worker makes
/// room, even while another publisher's reservation fails at the same time
/// (a failed reservation must not make the queue look full after the
/// worker's wake-up went out).
#[test]
fn loom_blocked_publisher_is_woken_despite_failed_reservations() {
    model_one_preemption(|| {
        let queues: Arc<Queues<u32>> = Arc::new(Queues::new(1, 0));
        assert!(matches!(
            queues.offer(0, Priority::Normal, 0, Overflow::Error, false, |_| {}),
            Offer::Accepted { .. }
        ));
        let worker = {
            let queues = queues.clone();
            thread::spawn(move || drain_until_closed(&queues))
        };
        // A publisher that may not wait: its reservation fails while full.
        let refused = {
            let queues = queues.clone();
            thread::spawn(move || {
                matches!(
                    queues.offer(1, Priority::Normal, 0, Overflow::Error, false, |_| {}),
                    Offer::Accepted { .. }
                )
            })
        };
        // A publisher that waits for room.
        let blocked = matches!(
            queues.offer_waiting(2, Priority::Normal, 0, Overflow::Block, false, |_| {}),
            Offer::Accepted { .. }
        );
        assert!(blocked, "a blocking publish on an open bus is accepted");
        let refused_accepted = refused.join().unwrap();
        queues.close();
        let mut taken = worker.join().unwrap();
        taken.sort_unstable();
        let mut expected = vec![0, 2];
        if refused_accepted {
            expected.insert(1, 1);
        }
        assert_eq!(taken, expected, "an accepted event was lost or doubled");
    });
}

/// Headroom: a Low publisher blocked at its limit and a High publisher
/// arriving while the queue is past Low's limit: the High event gets in
/// without waiting for the worker, the Low one is woken when room appears
/// below its own limit, and nothing is lost or doubled.
#[test]
fn loom_low_waits_at_its_limit_while_high_gets_in() {
    model_one_preemption(|| {
        // Capacity 3, reserve 1: Low fills to 1, Normal to 2, High to 3.
        let queues: Arc<Queues<u32>> = Arc::new(Queues::new(3, 1));
        let offer = |q: &Queues<u32>, item, priority| {
            matches!(
                q.offer_waiting(item, priority, 0, Overflow::Block, false, |_| {}),
                Offer::Accepted { .. }
            )
        };
        assert!(offer(&queues, 0, Priority::Low));
        assert!(offer(&queues, 1, Priority::Normal));
        let low = {
            let queues = queues.clone();
            thread::spawn(move || assert!(offer(&queues, 2, Priority::Low)))
        };
        // No worker yet: if High had to wait for room, this would deadlock.
        assert!(offer(&queues, 3, Priority::High));
        let worker = {
            let queues = queues.clone();
            thread::spawn(move || drain_until_closed(&queues))
        };
        low.join().unwrap();
        queues.close();
        let mut taken = worker.join().unwrap();
        taken.sort_unstable();
        assert_eq!(taken, vec![0, 1, 2, 3], "an accepted event was lost or doubled");
    });
}

/// Overshoot: a handler's publishes into a full queue go past the capacity
/// (up to as much again) into the same lane, in publish order, while an
/// outside publisher waits for real room.
#[test]
fn loom_handler_overshoot_keeps_order_and_outsiders_wait() {
    model(|| {
        let queues: Arc<Queues<u32>> = Arc::new(Queues::new(1, 0));
        let offer = |q: &Queues<u32>, item, from_handler| {
            matches!(
                q.offer_waiting(item, Priority::Normal, 0, Overflow::Block, from_handler, |_| {}),
                Offer::Accepted { .. }
            )
        };
        assert!(offer(&queues, 10, false));
        // The handler: one past the capacity is accepted, a second is not.
        let handler = {
            let queues = queues.clone();
            thread::spawn(move || {
                let first = offer(&queues, 11, true);
                let second = offer(&queues, 12, true);
                (first, second)
            })
        };
        let outsider = {
            let queues = queues.clone();
            thread::spawn(move || assert!(offer(&queues, 20, false)))
        };
        let (first, second) = handler.join().unwrap();
        // Before the worker runs the queue holds 10 and maybe 20; the
        // handler may add one or two, never more than the overshoot limit.
        assert!(first, "the first event past the capacity is accepted");
        let mut taken = Vec::new();
        let mut batch = Vec::new();
        let lane = Priority::Normal.index();
        // Play the worker until the outsider got in.
        loop {
            if queues.take(lane, 4, &mut batch) > 0 {
                taken.extend(batch.drain(..).map(|q| q.item));
            }
            if taken.contains(&20) {
                break;
            }
            thread::yield_now();
        }
        outsider.join().unwrap();
        queues.close();
        while queues.take(lane, 4, &mut batch) > 0 {
            taken.extend(batch.drain(..).map(|q| q.item));
        }
        let handler_items: Vec<u32> =
            taken.iter().copied().filter(|i| (11..20).contains(i)).collect();
        let expected: Vec<u32> = if second { vec![11, 12] } else { vec![11] };
        assert_eq!(handler_items, expected, "the handler's events out of order or lost");
        assert_eq!(taken.len(), 2 + expected.len());
        assert_eq!(taken[0], 10, "the queued event stays first");
    });
}

/// Dispatch racing a snapshot swap: an event published after `subscribe`
/// returned reaches the new handler (workers load the snapshot after they
/// take the batch).
#[test]
fn loom_dispatch_sees_a_subscription_that_returned_before_the_publish() {
    model(|| {
        let calls = Arc::new(StdUsize::new(0));
        let subscribed = Arc::new(AtomicBool::new(false));
        let bus = Bus::builder().workers(1).history_size(0).capacity(4).build().unwrap();
        let subscriber = {
            let (bus, calls, subscribed) = (bus.clone(), calls.clone(), subscribed.clone());
            thread::spawn(move || {
                bus.subscribe(
                    "x",
                    crate::Handler::sync(move |_e: &Event| {
                        calls.fetch_add(1, Std::SeqCst);
                        Ok(())
                    }),
                    "late",
                )
                .unwrap();
                subscribed.store(true, Ordering::SeqCst);
            })
        };
        // Wait for the subscribe to return, while the worker runs its loop.
        while !subscribed.load(Ordering::SeqCst) {
            thread::yield_now();
        }
        bus.publish(Event::new("x", serde_json::Value::Null, "t")).unwrap();
        bus.flush();
        assert_eq!(calls.load(Std::SeqCst), 1, "published after subscribe, not delivered");
        subscriber.join().unwrap();
        bus.shutdown();
    });
}

/// Two threads shut down a bus holding an event: neither returns before
/// the event is dispatched.
#[test]
fn loom_concurrent_shutdowns_both_wait_for_the_drain() {
    model_one_preemption(|| {
        let calls = Arc::new(StdUsize::new(0));
        let bus = Bus::builder().workers(1).history_size(0).capacity(4).build().unwrap();
        let counter = calls.clone();
        bus.subscribe(
            "x",
            crate::Handler::sync(move |_e: &Event| {
                counter.fetch_add(1, Std::SeqCst);
                Ok(())
            }),
            "p",
        )
        .unwrap();
        bus.publish(Event::new("x", serde_json::Value::Null, "t")).unwrap();
        let other = {
            let (bus, calls) = (bus.clone(), calls.clone());
            thread::spawn(move || {
                bus.shutdown();
                assert_eq!(calls.load(Std::SeqCst), 1, "a shutdown returned before the drain");
            })
        };
        bus.shutdown();
        assert_eq!(calls.load(Std::SeqCst), 1, "a shutdown returned before the drain");
        other.join().unwrap();
    });
}

/// The ordered hand-off: one thread publishes two events to an ordered
/// subscription on a bus with two workers. The mailbox is on the ready
/// queue at most once and a worker runs it, so the handler never runs
/// concurrently with itself, sees the events in publish order, and misses
/// none, whichever worker takes what.
#[test]
fn loom_ordered_handoff_keeps_order_and_never_overlaps() {
    model_one_preemption(|| {
        let seen = Arc::new(loom::sync::Mutex::new(Vec::new()));
        let inside = Arc::new(AtomicBool::new(false));
        let bus = Bus::builder().workers(2).history_size(0).capacity(4).build().unwrap();
        let (s, i) = (seen.clone(), inside.clone());
        bus.subscribe(
            "x",
            crate::Handler::sync(move |e: &Event| {
                assert!(!i.swap(true, Ordering::SeqCst), "ran concurrently with itself");
                s.lock().unwrap().push(e.data().as_u64().unwrap());
                i.store(false, Ordering::SeqCst);
                Ok(())
            }),
            crate::SubscribeOptions::new().ordered().plugin("p"),
        )
        .unwrap();
        for n in 0..2u64 {
            bus.publish(Event::new("x", serde_json::Value::from(n), "t")).unwrap();
        }
        bus.flush();
        assert_eq!(*seen.lock().unwrap(), vec![0, 1], "lost or out of order");
        bus.shutdown();
    });
}

/// The parts of a bus a backlog needs, and a subscription with a backlog
/// of one under `Overflow::Block`, run by `runner`.
fn backlog_of_one(
    runner: crate::mailbox::Runner,
    ordered: bool,
) -> (Arc<crate::shared::Shared>, Arc<Subscription>) {
    let work = crate::mailbox::Work::Sync(Arc::new(|_e: &Event| Ok(())));
    backlog_of(work, runner, ordered, 1)
}

/// The parts of a bus a backlog needs, and a subscription doing `work`
/// with a backlog of `capacity` under `Overflow::Block`, run by `runner`.
fn backlog_of(
    work: crate::mailbox::Work,
    runner: crate::mailbox::Runner,
    ordered: bool,
    capacity: usize,
) -> (Arc<crate::shared::Shared>, Arc<Subscription>) {
    use crate::mailbox::Mailbox;
    let config = crate::BusBuilder::default().workers(1).history_size(0).into_config();
    let shared = Arc::new(crate::shared::Shared::new(config, None));
    let mailbox = Mailbox::new(work, runner, ordered, capacity, Overflow::Block);
    let sub = Arc::new(Subscription::new(
        SubscriptionId::new(1),
        Pattern::new("x").unwrap(),
        Arc::from("p"),
        Priority::Normal,
        None,
        Some(mailbox),
    ));
    (shared, sub)
}

/// The backlog wait under `Overflow::Block`: an ordered subscription's
/// backlog of one is full; its runner takes the event, and its handler
/// publishes another into the same backlog (a handler never waits: it
/// overshoots); meanwhile an outside publisher waits for room. Everyone
/// finishes and all three events are handled: the runner's take wakes the
/// waiting publisher. (Removing that wake-up in `Mailbox::next` makes this
/// model fail: the publisher sleeps forever.)
#[test]
fn loom_a_full_backlog_wakes_its_waiting_publisher_while_its_handler_publishes() {
    use crate::mailbox::{Room, Runner};
    model(|| {
        let (shared, sub) = backlog_of_one(Runner::Pool, true);
        let event = |n: u64| Arc::new(Event::new("x", serde_json::Value::from(n), "t"));
        let backlog = || sub.mailbox.as_ref().unwrap();
        crate::dispatch::push(&shared, &sub, &event(0), 0);
        assert_eq!(backlog().room_for(false), Room::Wait, "full for an outsider");
        let publisher = {
            let (shared, sub) = (shared.clone(), sub.clone());
            thread::spawn(move || {
                let backlog = sub.mailbox.as_ref().unwrap();
                loop {
                    match backlog.room_for(false) {
                        Room::Free => break,
                        Room::Wait => {
                            backlog.wait_for_room(|| false);
                        }
                        Room::Refused => panic!("Block never refuses an outsider"),
                    }
                }
                crate::dispatch::push(&shared, &sub, &event(1), 0);
            })
        };
        // The runner: a worker's turns at the mailbox.
        let mut handled = Vec::new();
        while handled.len() < 3 {
            let Some((entry, work)) = backlog().next(&shared.env()) else {
                thread::yield_now();
                continue;
            };
            let n = entry.event.data().as_u64().unwrap();
            if n == 0 {
                // The handler publishes into its own backlog: never waits.
                assert_ne!(backlog().room_for(true), Room::Wait);
                crate::dispatch::push(&shared, &sub, &event(2), 0);
            }
            handled.push(n);
            backlog().done(&shared.env(), entry.bucket, Some(work));
        }
        publisher.join().unwrap();
        handled.sort_unstable();
        assert_eq!(handled, [0, 1, 2], "lost an event");
        assert_eq!(backlog().backlog(), 0);
    });
}

/// The gate: a blocking subscription's backlog of one, fed by a worker
/// that never waits, fills and holds the bus's gate; an outside publisher
/// waits at it; the runner takes the event and opens the gate, waking the
/// publisher. (Removing the wake-up in `Gate::release` makes this model
/// fail: the publisher sleeps forever.)
#[test]
fn loom_a_full_worker_fed_backlog_holds_publishers_at_the_gate_until_its_runner_takes() {
    use crate::mailbox::Runner;
    model(|| {
        let (shared, sub) = backlog_of_one(Runner::Threads, false);
        let event = Arc::new(Event::new("x", serde_json::Value::Null, "t"));
        // The worker's hand-over: it never waits.
        shared.epochs.begin_in(0);
        crate::dispatch::deliver(&shared, &sub, &event, 0);
        assert!(shared.gate.is_held(), "a full backlog holds the gate");
        let published = Arc::new(AtomicBool::new(false));
        let publisher = {
            let (shared, published) = (shared.clone(), published.clone());
            thread::spawn(move || {
                while shared.gate.is_held() {
                    shared.gate.wait_open(|| false);
                }
                published.store(true, Ordering::SeqCst);
            })
        };
        // The runner.
        let backlog = sub.mailbox.as_ref().unwrap();
        let (entry, work) = loop {
            match backlog.next(&shared.env()) {
                Some(taken) => break taken,
                None => thread::yield_now(),
            }
        };
        backlog.done(&shared.env(), entry.bucket, Some(work));
        publisher.join().unwrap();
        assert!(published.load(Ordering::SeqCst));
        assert!(!shared.gate.is_held());
    });
}

/// A worker's batch of an ordered subscription's events (taken at once)
/// against an unsubscribe-and-wait: once the wait returns no call of the
/// batch runs or starts, the batch's events are all counted out of flush,
/// and the mailbox is idle. (Not counting the batch as running in
/// `Mailbox::next_batch` makes this model fail: a call runs after the wait.
/// Removing the retire check before each call does not, the wait still
/// waits for the whole batch;
/// `an_unsubscribe_during_a_batch_starts_none_of_its_remaining_events`
/// checks that one.)
#[test]
fn loom_a_wait_on_a_retired_mailbox_outlasts_the_batch_a_worker_took() {
    use crate::mailbox::{Runner, Work};
    model(|| {
        let waited = Arc::new(AtomicBool::new(false));
        let late = Arc::new(AtomicBool::new(false));
        let (w, l) = (waited.clone(), late.clone());
        let work = Work::Sync(Arc::new(move |_e: &Event| {
            if w.load(Ordering::SeqCst) {
                l.store(true, Ordering::SeqCst);
            }
            Ok(())
        }));
        let (shared, sub) = backlog_of(work, Runner::Pool, true, 2);
        for n in 0..2u64 {
            let event = Arc::new(Event::new("x", serde_json::Value::from(n), "t"));
            crate::dispatch::push(&shared, &sub, &event, 0);
        }
        let worker = {
            let (shared, sub) = (shared.clone(), sub.clone());
            thread::spawn(move || crate::dispatch::pool::run_on_worker(&shared, &sub, 2))
        };
        let backlog = sub.mailbox.as_ref().unwrap();
        let (work, _discarded) = backlog.retire(&shared.env());
        drop(work);
        assert!(backlog.wait_idle(|| 0, None));
        waited.store(true, Ordering::SeqCst);
        worker.join().unwrap();
        assert!(!late.load(Ordering::SeqCst), "a call ran after the wait returned");
        assert_eq!(shared.epochs.pending(), 0, "an event of the batch stayed counted in flush");
        assert_eq!(backlog.running(), 0);
    });
}
