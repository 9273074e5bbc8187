//! The mailbox runners' edges, found by review of the batching, the flush
//! counts taken once per event, the recycling of event blocks and the async
//! first poll: a payload's `Drop` on a runner re-entering the bus, a drain
//! timeout with a batch taken, a panic between two hand-overs, a future
//! that panics twice. Each failed before its fix.

mod support;

#[cfg(feature = "tokio")]
use std::future::Future;
#[cfg(feature = "tokio")]
use std::pin::Pin;
#[cfg(feature = "tokio")]
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
#[cfg(feature = "tokio")]
use std::task::{Context, Poll};
use std::thread;
use std::time::Duration;

use support::{ev, eventually, watchdog, OnDrop};
#[cfg(feature = "tokio")]
use switchboard::HandlerResult;
use switchboard::{Bus, CallObserver, Event, Handler, Observer, SubscribeOptions, Subscribed};

/// A mailbox runner lets go of its event (recycling its block, dropping
/// the payload) once the call is counted out of its flush bucket: a
/// payload whose `Drop` flushes the bus must not wait for its own event.
/// (Let go of before, outside any handler scope, on a blocking runner's
/// thread, the flush waited forever.)
#[test]
fn a_payload_dropped_on_a_blocking_runner_may_flush() {
    watchdog(30, || {
        let bus = Bus::builder().workers(2).history_size(0).build().unwrap();
        bus.subscribe(
            "job",
            Handler::sync(|_| {
                // Long enough for the worker to let go of its reference:
                // the runner holds the last one.
                thread::sleep(Duration::from_millis(30));
                Ok(())
            }),
            SubscribeOptions::new().plugin("slow").blocking(),
        )
        .unwrap();
        let outcome: Arc<Mutex<Option<Result<(), String>>>> = Arc::default();
        let (o, weak) = (outcome.clone(), bus.downgrade());
        let payload = OnDrop::new(move || {
            let bus = weak.upgrade().expect("bus alive");
            let on = thread::current().name().unwrap_or("?").to_owned();
            let r = bus.flush_timeout(Duration::from_secs(3)).map_err(|e| format!("{e} (on {on})"));
            *o.lock().unwrap() = Some(r);
        });
        bus.publish(Event::typed("job", payload, "t")).unwrap();
        eventually(10, "the payload's drop", || outcome.lock().unwrap().is_some());
        let got = outcome.lock().unwrap().take().unwrap();
        assert_eq!(got, Ok(()), "a flush from a payload's Drop waited for its own event");
        bus.shutdown();
    });
}

/// The same with a payload holding the last `Bus`: its drop shuts the bus
/// down from the runner's thread, without waiting out the drain timeout
/// for that very event.
#[test]
fn a_payload_holding_the_last_bus_shuts_it_down_without_waiting_for_itself() {
    watchdog(30, || {
        let bus = Bus::builder()
            .workers(2)
            .history_size(0)
            .drain_timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        bus.subscribe(
            "job",
            Handler::sync(|_| {
                thread::sleep(Duration::from_millis(30));
                Ok(())
            }),
            SubscribeOptions::new().plugin("slow").blocking(),
        )
        .unwrap();
        let took: Arc<Mutex<Option<Duration>>> = Arc::default();
        let (t, held) = (took.clone(), Mutex::new(Some(bus.clone())));
        let payload = OnDrop::new(move || {
            let at = std::time::Instant::now();
            drop(held.lock().unwrap().take());
            *t.lock().unwrap() = Some(at.elapsed());
        });
        bus.publish(Event::typed("job", payload, "t")).unwrap();
        drop(bus);
        eventually(20, "the payload's drop", || took.lock().unwrap().is_some());
        let took = took.lock().unwrap().unwrap();
        assert!(took < Duration::from_secs(2), "the last Bus's shutdown took {took:?}");
    });
}

/// At shutdown past the drain timeout, the events an async runner had
/// taken as a batch (out of the backlog) and not called are lost, and
/// counted in `drain_dropped` as the backlog's are: every event is called
/// or counted. (Dropping a retired batch's rest as discarded lost them
/// uncounted.)
#[cfg(feature = "tokio")]
#[test]
fn a_drain_timeout_counts_an_async_batchs_uncalled_events() {
    watchdog(60, || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let bus = Bus::builder()
            .workers(1)
            .history_size(0)
            .drain_timeout(Duration::from_millis(200))
            .runtime(rt.handle().clone())
            .build()
            .unwrap();
        let calls = Arc::new(AtomicU64::new(0));
        let c = calls.clone();
        let id = bus
            .subscribe(
                "x",
                Handler::future(move |_| {
                    let c = c.clone();
                    async move {
                        c.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(150)).await;
                        Ok(())
                    }
                }),
                "p",
            )
            .unwrap();
        const N: u64 = 10;
        for _ in 0..N {
            bus.publish(ev("x")).unwrap();
        }
        eventually(5, "the first call", || calls.load(Ordering::SeqCst) >= 1);
        let backlog = bus.subscriptions(id).first().map(|s| s.stats.backlog);
        bus.shutdown();
        // Let the call in progress end and the runner see the retire.
        thread::sleep(Duration::from_millis(500));
        let stats = bus.stats();
        let called = calls.load(Ordering::SeqCst);
        assert_eq!(
            called + stats.drain_dropped + stats.backlog_dropped,
            N,
            "events lost without a count (called {called}, drain_dropped {}, backlog_dropped {}, \
             backlog before shutdown {backlog:?})",
            stats.drain_dropped,
            stats.backlog_dropped
        );
        drop(rt);
    });
}

/// Panics in the sink of the subscription whose plugin is "boom".
struct Bomb;
struct PanickingSink;
struct QuietSink;

impl CallObserver for PanickingSink {
    fn sampled(&self, _: Duration, _: Duration) {
        panic!("an observer panicked");
    }
}

impl CallObserver for QuietSink {
    fn sampled(&self, _: Duration, _: Duration) {}
}

impl Observer for Bomb {
    fn subscribed(&self, s: &Subscribed<'_>) -> Arc<dyn CallObserver> {
        if s.plugin == "boom" {
            Arc::new(PanickingSink)
        } else {
            Arc::new(QuietSink)
        }
    }
    fn sample_every(&self) -> u32 {
        1
    }
}

/// A worker counts all of an event's mailbox hand-overs in flush at the
/// first one; a panic that leaves the dispatch between two hand-overs
/// (here a user `CallObserver`, called outside the call's `catch_unwind`)
/// is caught by the worker loop, and the hand-overs not made are counted
/// out again, so flush returns.
#[test]
fn a_panic_between_mailbox_hand_overs_does_not_leak_flush_counts() {
    watchdog(30, || {
        let bus =
            Bus::builder().workers(1).history_size(0).observer(Arc::new(Bomb)).build().unwrap();
        let blocking = || SubscribeOptions::new().blocking();
        bus.subscribe("x", Handler::sync(|_| Ok(())), blocking().plugin("a")).unwrap();
        bus.subscribe("x", Handler::sync(|_| Ok(())), "boom").unwrap();
        bus.subscribe("x", Handler::sync(|_| Ok(())), blocking().plugin("c")).unwrap();
        bus.publish(ev("x")).unwrap();
        let flushed = bus.flush_timeout(Duration::from_secs(3));
        assert!(flushed.is_ok(), "flush hangs: {flushed:?}; stats {:?}", bus.stats());
        bus.shutdown();
    });
}

/// A hand-written future whose poll panics and whose `Drop` panics too.
#[cfg(feature = "tokio")]
struct PanicsTwice;

#[cfg(feature = "tokio")]
impl Future for PanicsTwice {
    type Output = HandlerResult;
    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<HandlerResult> {
        panic!("the handler's future panicked in poll");
    }
}

#[cfg(feature = "tokio")]
impl Drop for PanicsTwice {
    fn drop(&mut self) {
        panic!("the handler's future panicked in Drop");
    }
}

/// An async call's first poll, made with the future: a panic in `poll`
/// is the call's (a handler panic), and the future is dropped afterwards,
/// outside the unwinding frames, so a `Drop` that panics as well is a
/// stray panic, counted, not a panic while panicking.
#[cfg(feature = "tokio")]
#[test]
// Before its fix this aborted the whole test process (a panic in the
// future's `Drop` while its `poll`'s panic unwound).
fn a_future_panicking_in_poll_and_drop_is_counted_not_fatal() {
    watchdog(30, || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let bus = Bus::builder().workers(1).runtime(rt.handle().clone()).build().unwrap();
        bus.subscribe("x", Handler::future(|_| PanicsTwice), "p").unwrap();
        bus.publish(ev("x")).unwrap();
        bus.flush_timeout(Duration::from_secs(5)).unwrap();
        let stats = bus.stats();
        assert_eq!(stats.handler_panics, 1);
        assert!(stats.stray_panics >= 1);
        bus.shutdown();
        drop(rt);
    });
}

/// The first test's case on the async runner of one call at a time: a
/// payload's `Drop` that flushes, on a multi-thread runtime's thread, does
/// not wait for its own batch.
#[cfg(feature = "tokio")]
#[test]
fn a_payload_dropped_on_an_async_runner_may_flush() {
    watchdog(30, || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let bus =
            Bus::builder().workers(1).history_size(0).runtime(rt.handle().clone()).build().unwrap();
        bus.subscribe(
            "job",
            Handler::future(|_| async {
                tokio::time::sleep(Duration::from_millis(30)).await;
                Ok(())
            }),
            "p",
        )
        .unwrap();
        let outcome: Arc<Mutex<Option<Result<(), String>>>> = Arc::default();
        let (o, weak) = (outcome.clone(), bus.downgrade());
        let payload = OnDrop::new(move || {
            let bus = weak.upgrade().expect("bus alive");
            let r = bus.flush_timeout(Duration::from_secs(3)).map_err(|e| e.to_string());
            *o.lock().unwrap() = Some(r);
        });
        bus.publish(Event::typed("job", payload, "t")).unwrap();
        eventually(10, "the payload's drop", || outcome.lock().unwrap().is_some());
        let got = outcome.lock().unwrap().take().unwrap();
        assert_eq!(got, Ok(()), "a flush from a payload's Drop waited for its own event");
        bus.shutdown();
        drop(rt);
    });
}
