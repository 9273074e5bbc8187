//! loom models of the bus's protocols. Run with
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p switchboard --release --lib loom_`.

use std::sync::atomic::{AtomicUsize as StdUsize, Ordering as Std};
use std::sync::Arc;

use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use loom::thread;

use crate::event::{Event, Priority};
use crate::flush::Epochs;
use crate::queue::{Offer, Overflow, Queues};
use crate::subscription::Gate;
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

/// Unsubscribe-and-wait: once `wait_idle` returns, no call is running and
/// none starts.
#[test]
fn loom_gate_unsubscribe_and_wait() {
    model(|| {
        let gate = Arc::new(Gate::new());
        let done = Arc::new(AtomicBool::new(false));
        let worker = {
            let (gate, done) = (gate.clone(), done.clone());
            thread::spawn(move || {
                if gate.enter() {
                    assert!(
                        !done.load(Ordering::SeqCst),
                        "a call ran after unsubscribe-and-wait returned"
                    );
                    gate.exit();
                }
            })
        };
        gate.close();
        gate.wait_idle(0);
        done.store(true, Ordering::SeqCst);
        worker.join().unwrap();
        assert!(!gate.enter(), "a closed gate let a call in");
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
            thread::spawn(move || epochs.flush())
        };
        while !published.load(Ordering::SeqCst) {
            thread::yield_now();
        }
        epochs.flush();
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
        let queues: Arc<Queues<u32>> = Arc::new(Queues::new(2));
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
                    queues.park();
                }
            })
        };
        match queues.offer(7, Priority::Normal, 0, Overflow::Block, true) {
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
        let queues: Arc<Queues<u32>> = Arc::new(Queues::new(2));
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
                    queues.park();
                }
            })
        };
        let publisher = {
            let queues = queues.clone();
            thread::spawn(move || {
                matches!(
                    queues.offer(1, Priority::Normal, 0, Overflow::Block, true),
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
        bus.subscribe("a.*", "p", move |_e: &Event| {
            counter.fetch_add(1, Std::SeqCst);
            Ok(())
        })
        .unwrap();
        bus.publish(Event::new("a.b", serde_json::Value::Null, "t")).unwrap();
        bus.flush();
        assert_eq!(calls.load(Std::SeqCst), 1);
        assert_eq!(bus.unsubscribe("a.*", "p"), 1);
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
                    bus.subscribe("x", plugin, move |_e: &Event| {
                        calls.fetch_add(1, Std::SeqCst);
                        Ok(())
                    })
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
        assert_eq!(bus.subscriptions(None)["x"].len(), 2);
        bus.shutdown();
    });
}
