//! User code that re-enters the bus around the backlogs and the replay:
//! each test was written by an adversarial review of the lossless change
//! and failed (or hung) on its first version; they guard what was fixed.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use support::{ev, eventually, watchdog, Latch};
use switchboard::{Bus, Event, Handler, Overflow, PublishError, SubscribeOptions, Target};

/// Sets its flag when dropped.
struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Starts `subscribe_replay("r.*", "late", 10, ..)` on its own thread with a
/// handler that blocks in its first call until `latch` opens; returns once
/// that first (replayed) call is running. The handler records what it sees
/// and holds a `DropFlag`.
#[allow(clippy::type_complexity)]
fn replay_stuck_in_first_call(
    bus: &Bus,
    latch: &Latch,
) -> (
    thread::JoinHandle<switchboard::Replayed>,
    Arc<Mutex<Vec<String>>>,
    Arc<AtomicBool>, // in a call now
    Arc<AtomicBool>, // handler dropped
) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let in_call = Arc::new(AtomicBool::new(false));
    let dropped = Arc::new(AtomicBool::new(false));
    let (s, c, l, flag) = (seen.clone(), in_call.clone(), latch.clone(), DropFlag(dropped.clone()));
    let first = Arc::new(AtomicBool::new(true));
    let replaying = {
        let bus = bus.clone();
        thread::spawn(move || {
            bus.subscribe_replay(
                "r.*",
                Handler::sync(move |e: &Event| {
                    let _keep = &flag;
                    c.store(true, Ordering::SeqCst);
                    if first.swap(false, Ordering::SeqCst) {
                        l.wait();
                    }
                    s.lock().unwrap().push(e.name().to_owned());
                    c.store(false, Ordering::SeqCst);
                    Ok(())
                }),
                "late",
                10,
            )
            .unwrap()
        })
    };
    eventually(10, "the first replayed call to start", || in_call.load(Ordering::SeqCst));
    (replaying, seen, in_call, dropped)
}

/// `unsubscribe_*_and_wait` promises that once it returns
/// no call of the removed handler runs and the handler is dropped. A
/// replayed call of `subscribe_replay` is not announced anywhere the wait
/// looks (no call slot, no mailbox `running`), so the wait returns while the
/// replayed call is still running, and the handler is not dropped (the
/// replay holds its own clone).
#[test]
fn unsubscribe_and_wait_waits_for_a_running_replayed_call() {
    watchdog(30, || {
        let bus = Bus::builder().workers(2).history_size(100).build().unwrap();
        bus.publish(ev("r.1")).unwrap();
        bus.publish(ev("r.2")).unwrap();
        bus.flush();
        let latch = Latch::default();
        let (replaying, _seen, in_call, dropped) = replay_stuck_in_first_call(&bus, &latch);
        let waiter = {
            let bus = bus.clone();
            thread::spawn(move || bus.unsubscribe(Target::Plugin("late")).wait())
        };
        thread::sleep(Duration::from_millis(300));
        let returned_early = waiter.is_finished();
        let (running_after, dropped_after) =
            (in_call.load(Ordering::SeqCst), dropped.load(Ordering::SeqCst));
        latch.open();
        assert_eq!(waiter.join().unwrap(), 1);
        replaying.join().unwrap();
        bus.shutdown();
        assert!(
            !returned_early || (!running_after && dropped_after),
            "unsubscribe_all_and_wait returned while a replayed call was running \
             (running: {running_after}, handler dropped: {dropped_after})"
        );
    });
}

/// `flush` is documented to return once every event
/// published before it has been dispatched and all its handlers returned.
/// A live event that reaches a `subscribe_replay` subscription during the
/// replay is buffered by the worker's call, which then counts the event out
/// of its flush bucket; the real call happens later on the replaying thread
/// in a new bucket. So `flush` returns before the handler has seen it. (The
/// flush does wait for the replayed call in progress when it starts, which
/// is counted; the next replayed call is in the new bucket, and is made slow
/// here so that the window is wide.)
#[test]
fn flush_waits_for_a_live_event_buffered_during_a_replay() {
    watchdog(30, || {
        let bus = Bus::builder().workers(2).history_size(100).build().unwrap();
        bus.publish(ev("r.1")).unwrap();
        bus.publish(ev("r.2")).unwrap();
        bus.flush();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let started = Arc::new(AtomicBool::new(false));
        let (s, st) = (seen.clone(), started.clone());
        let replaying = {
            let bus = bus.clone();
            thread::spawn(move || {
                bus.subscribe_replay(
                    "r.*",
                    Handler::sync(move |e: &Event| {
                        match e.name() {
                            "r.1" => {
                                st.store(true, Ordering::SeqCst);
                                thread::sleep(Duration::from_millis(200));
                            }
                            "r.2" => thread::sleep(Duration::from_millis(600)),
                            _ => {}
                        }
                        s.lock().unwrap().push(e.name().to_owned());
                        Ok(())
                    }),
                    "late",
                    10,
                )
                .unwrap()
            })
        };
        eventually(10, "the replay to start", || started.load(Ordering::SeqCst));
        bus.publish(ev("r.live")).unwrap();
        bus.flush();
        let seen_at_flush = seen.lock().unwrap().clone();
        replaying.join().unwrap();
        bus.shutdown();
        assert!(
            seen_at_flush.iter().any(|n| n == "r.live"),
            "flush returned before the handler saw r.live: it had seen {seen_at_flush:?}"
        );
    });
}

/// `Stats::dispatched` counts "handler calls that ran".
/// A live event buffered during a replay is counted twice: once for the
/// worker's call of the buffering wrapper, once for the replaying thread's
/// call of the handler.
#[test]
fn a_live_event_buffered_during_a_replay_is_dispatched_once() {
    watchdog(30, || {
        let bus = Bus::builder().workers(2).history_size(100).build().unwrap();
        bus.publish(ev("r.1")).unwrap();
        bus.flush();
        let latch = Latch::default();
        let (replaying, seen, _in_call, _dropped) = replay_stuck_in_first_call(&bus, &latch);
        const LIVE: u64 = 5;
        for _ in 0..LIVE {
            bus.publish(ev("r.live")).unwrap();
        }
        // The workers take the live events (and buffer them for the replay).
        eventually(10, "the live events to be buffered", || {
            bus.stats().events_dispatched > LIVE // r.1, then the live ones
        });
        latch.open();
        let replay = replaying.join().unwrap();
        bus.flush();
        let calls = seen.lock().unwrap().len() as u64;
        assert_eq!(calls, replay.replayed as u64 + LIVE);
        let dispatched = bus.stats().dispatched;
        bus.shutdown();
        assert_eq!(
            dispatched, calls,
            "handler calls that ran: {calls}; dispatched says {dispatched}"
        );
    });
}

/// claim 2 says a stuck subscriber cannot hold shutdown
/// past `drain_timeout`, and the builder says the timeout is how long
/// shutdown waits "once the queues are drained". With a blocking
/// subscriber stuck and its backlog full, the dispatching worker waits
/// `drain_timeout` counted from the close, and then the last worker waits
/// `drain_timeout` again (counted from the drain) for the backlogs: shutdown
/// takes twice the timeout.
#[test]
fn a_stuck_subscriber_holds_shutdown_for_at_most_the_drain_timeout() {
    watchdog(30, || {
        let timeout = Duration::from_millis(600);
        let bus = Bus::builder().workers(1).drain_timeout(timeout).build().unwrap();
        let latch = Latch::default();
        let l = latch.clone();
        let started = Arc::new(AtomicBool::new(false));
        let s = started.clone();
        bus.subscribe(
            "job.*",
            Handler::sync(move |_| {
                s.store(true, Ordering::SeqCst);
                l.wait();
                Ok(())
            }),
            SubscribeOptions::new().plugin("stuck").blocking().backlog(1),
        )
        .unwrap();
        // From a thread of its own: once the backlog is full, an outside
        // publisher waits at the gate until shutdown releases it.
        let publisher = {
            let bus = bus.clone();
            thread::spawn(move || {
                for _ in 0..5 {
                    let _ = bus.publish(ev("job.done"));
                }
            })
        };
        eventually(10, "the stuck call", || started.load(Ordering::SeqCst));
        let t0 = Instant::now();
        bus.shutdown();
        let took = t0.elapsed();
        publisher.join().unwrap();
        latch.open();
        assert!(took < timeout * 2, "shutdown took {took:?} with a drain timeout of {timeout:?}");
    });
}

/// the docs (mailbox.rs: "a slow handler never holds a
/// dispatch worker"; asynchronous.rs: a worker "never waits for ... async
/// code") no longer hold under the default `Block`: once a blocking
/// subscription's backlog is full, the dispatching worker waits for it. A
/// blocking handler that asks an inline handler for an answer (request and
/// reply over the bus) then deadlocks the bus: the request sits in the
/// queue behind the worker that waits for the requester's backlog. (Here the
/// wait for the reply has a timeout, so the test ends.)
#[test]
fn a_blocking_handler_waiting_for_an_inline_reply_is_not_starved_by_its_own_backlog() {
    watchdog(60, || {
        let bus = Bus::builder().workers(1).build().unwrap();
        let (reply_tx, reply_rx) = mpsc::channel::<()>();
        let reply_tx = Mutex::new(reply_tx);
        bus.subscribe(
            "req",
            Handler::sync(move |_| {
                let _ = reply_tx.lock().unwrap().send(());
                Ok(())
            }),
            "answerer",
        )
        .unwrap();
        let reply_rx = Mutex::new(reply_rx);
        let (answered, timed_out) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (a, t) = (answered.clone(), timed_out.clone());
        bus.subscribe(
            "job",
            Handler::sync(move |_| {
                Bus::current().unwrap().publish(ev("req"))?;
                match reply_rx.lock().unwrap().recv_timeout(Duration::from_secs(2)) {
                    Ok(()) => a.fetch_add(1, Ordering::SeqCst),
                    Err(_) => t.fetch_add(1, Ordering::SeqCst),
                };
                Ok(())
            }),
            SubscribeOptions::new().plugin("asker").blocking().backlog(1),
        )
        .unwrap();
        // The jobs queue up behind a held worker, so that it takes them in
        // one batch.
        let hold = support::hold_worker(&bus);
        for _ in 0..3 {
            bus.publish(ev("job")).unwrap();
        }
        drop(hold);
        bus.flush();
        let (answered, timed_out) =
            (answered.load(Ordering::SeqCst), timed_out.load(Ordering::SeqCst));
        bus.shutdown();
        assert_eq!((answered, timed_out), (3, 0), "requests starved behind the worker's wait");
    });
}

/// An ordered subscription's `Error` refusal is a refused publish, never
/// accepted: counted in `Stats::rejected` (as the docs say), not as a loss.
#[test]
fn an_ordered_refusal_is_counted_as_rejected_not_as_a_loss() {
    watchdog(30, || {
        let bus = Bus::builder().workers(1).build().unwrap();
        let latch = Latch::default();
        let l = latch.clone();
        let options = SubscribeOptions::new().ordered().backlog(1).overflow(Overflow::Error);
        let id = bus
            .subscribe(
                "audit.*",
                Handler::sync(move |_| {
                    l.wait();
                    Ok(())
                }),
                options.plugin("audit"),
            )
            .unwrap();
        let mut refused = 0;
        for _ in 0..10 {
            if let Err(PublishError::BacklogFull { .. }) = bus.publish(ev("audit.line")) {
                refused += 1;
            }
        }
        assert!(refused > 0);
        let per_sub =
            bus.subscriptions(id).first().map(|s| s.stats.clone()).unwrap().backlog_dropped;
        let stats = bus.stats();
        latch.open();
        bus.shutdown();
        assert_eq!((per_sub, stats.backlog_dropped), (0, 0), "nothing accepted was lost");
        assert_eq!(stats.rejected, refused);
    });
}

/// a handler never waits on a full ordered backlog. A
/// blocking handler that publishes into a full ordered pool subscription
/// while the only worker waits for room in the blocking handler's own
/// backlog: the handler's publish overshoots (or gets `Full`), its call
/// ends, the worker gets room, and everything accepted is delivered.
#[test]
fn a_blocking_handler_publishing_into_a_full_ordered_backlog_while_the_worker_waits_on_it() {
    watchdog(30, || {
        let bus = Bus::builder().workers(1).build().unwrap();
        let ordered_seen = Arc::new(AtomicU64::new(0));
        let o = ordered_seen.clone();
        bus.subscribe(
            "o",
            Handler::sync(move |_| {
                o.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }),
            SubscribeOptions::new().plugin("ordered").ordered().backlog(1),
        )
        .unwrap();
        let (accepted, refused) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (a, r) = (accepted.clone(), refused.clone());
        bus.subscribe(
            "b",
            Handler::sync(move |_| {
                for _ in 0..4 {
                    match Bus::current().unwrap().publish(ev("o")) {
                        Ok(_) => a.fetch_add(1, Ordering::SeqCst),
                        Err(PublishError::Full(_)) => r.fetch_add(1, Ordering::SeqCst),
                        Err(e) => panic!("{e}"),
                    };
                }
                thread::sleep(Duration::from_millis(5));
                Ok(())
            }),
            SubscribeOptions::new().plugin("slow").blocking().backlog(1),
        )
        .unwrap();
        for _ in 0..20 {
            bus.publish(ev("b")).unwrap();
        }
        bus.flush();
        assert_eq!(ordered_seen.load(Ordering::SeqCst), accepted.load(Ordering::SeqCst));
        assert_eq!(accepted.load(Ordering::SeqCst) + refused.load(Ordering::SeqCst), 80);
        assert_eq!(bus.stats().backlog_dropped + bus.stats().drain_dropped, 0);
        bus.shutdown();
    });
}

/// A full blocking backlog never holds a worker: the worker hands its
/// events over past the capacity and goes on dispatching (an inline
/// subscriber gets its event at once), while outside publishers wait at the
/// gate until the backlog's runner has made room; unsubscribing the stuck
/// subscription opens the gate, and nothing is counted lost.
#[test]
fn a_full_blocking_backlog_holds_outside_publishers_not_the_workers() {
    watchdog(30, || {
        let bus = Bus::builder().workers(1).build().unwrap();
        let latch = Latch::default();
        let l = latch.clone();
        let id = bus
            .subscribe(
                "job",
                Handler::sync(move |_| {
                    l.wait();
                    Ok(())
                }),
                SubscribeOptions::new().plugin("stuck").blocking().backlog(1),
            )
            .unwrap();
        let inline = Arc::new(AtomicU64::new(0));
        let i = inline.clone();
        bus.subscribe(
            "after",
            Handler::sync(move |_| {
                i.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }),
            "inline",
        )
        .unwrap();
        for _ in 0..2 {
            bus.publish(ev("job")).unwrap();
        }
        // One call runs, one event waits: the backlog is full, the gate shut.
        eventually(10, "the backlog to fill", || {
            let stats = bus.subscriptions(id).first().map(|s| s.stats.clone()).unwrap();
            stats.running + stats.backlog == 2
        });
        let outside = {
            let bus = bus.clone();
            thread::spawn(move || bus.publish(ev("after")))
        };
        thread::sleep(Duration::from_millis(100));
        assert!(!outside.is_finished(), "an outside publisher waits at the gate");
        assert!(bus.unsubscribe(id).count() == 1);
        outside.join().unwrap().unwrap();
        eventually(10, "the inline subscriber", || inline.load(Ordering::SeqCst) == 1);
        latch.open();
        bus.flush();
        assert_eq!(bus.stats().backlog_dropped, 0);
        bus.shutdown();
    });
}

#[cfg(feature = "tokio")]
mod on_tokio {
    use super::*;

    fn current_thread() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    }

    fn sleeping_async_sub(
        bus: &Bus,
        started: &Arc<AtomicBool>,
        done: &Arc<AtomicBool>,
    ) -> switchboard::SubscriptionId {
        let (s, d) = (started.clone(), done.clone());
        bus.subscribe(
            "job.*",
            Handler::future(move |_event: Arc<Event>| {
                let (s, d) = (s.clone(), d.clone());
                async move {
                    s.store(true, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    d.store(true, Ordering::SeqCst);
                    Ok(())
                }
            }),
            "worker",
        )
        .unwrap()
    }

    /// On a current-thread runtime's thread that runs async handlers,
    /// waiting for a running async call would starve it: the timed form
    /// says so at once (the call still running) instead of spinning out its
    /// whole timeout, the untimed form panics naming the problem, and the
    /// call then finishes as soon as the runtime runs again.
    #[test]
    fn unsubscribe_and_wait_on_a_current_thread_runtime_does_not_starve_the_call() {
        watchdog(30, || {
            current_thread().block_on(async {
                let bus = Bus::builder().workers(1).build().unwrap();
                let (started, done) =
                    (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
                let id = sleeping_async_sub(&bus, &started, &done);
                bus.publish(ev("job.1")).unwrap();
                while !started.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                let t0 = Instant::now();
                let waited =
                    bus.unsubscribe(id).wait_timeout(Duration::from_secs(20)).map(|n| n == 1);
                assert!(t0.elapsed() < Duration::from_secs(5), "it spun instead of refusing");
                match waited {
                    Err(timeout) => assert_eq!(timeout.still_running, [id]),
                    other => panic!("expected the running call reported, got {other:?}"),
                }
                let second = sleeping_async_sub(&bus, &started, &done);
                started.store(false, Ordering::SeqCst);
                bus.publish(ev("job.2")).unwrap();
                while !started.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                let b = bus.clone();
                let untimed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
                    b.unsubscribe(second).wait() == 1
                }));
                assert!(untimed.is_err(), "the untimed form fails loudly");
                bus.flush_async().await;
                assert!(done.load(Ordering::SeqCst), "the calls finished once the runtime ran");
                bus.shutdown_async().await;
            });
        });
    }

    /// `async_on_current_thread` is decremented
    /// only by unsubscribe, not when shutdown clears the subscriptions, so
    /// after `shutdown_async` a `flush` on the runtime's thread (nothing left
    /// to wait for) still panics as if async handlers ran there.
    #[test]
    fn flush_after_shutdown_on_a_current_thread_runtime_does_not_panic() {
        watchdog(30, || {
            current_thread().block_on(async {
                let bus = Bus::builder().workers(1).build().unwrap();
                let (started, done) =
                    (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
                sleeping_async_sub(&bus, &started, &done);
                bus.shutdown_async().await;
                assert_eq!(bus.stats().subscriptions, 0);
                let flushed =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| bus.flush()));
                assert!(flushed.is_ok(), "flush on a shut-down bus panicked");
            });
        });
    }
}
