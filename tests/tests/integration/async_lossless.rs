//! Async handlers and tokio runtimes at the edges: lossless backlogs,
//! shutting down from a runtime's thread, a handler's `Drop` and a
//! cancelled future using the bus, async plugins unloading themselves and
//! each other, and the blocking forms on a current-thread runtime
//! (`--features tokio`).
#![cfg(feature = "tokio")]

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::{ev, eventually, watchdog, FlushOnDrop};
use switchboard::{Bus, Event, Handler, PublishError, SubscribeOptions};
use switchboard_host::{
    AsyncPlugin, PluginContext, PluginError, PluginFuture, PluginManager, WeakPluginManager,
};

fn multi_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// The reported case: an async handler that sleeps 1 ms and a burst larger
/// than its backlog. It used to handle about one event in five.
#[test]
fn an_async_subscriber_under_the_default_policy_loses_nothing() {
    watchdog(60, || {
        let runtime = multi_thread();
        let bus = Bus::builder().workers(2).runtime(runtime.handle().clone()).build().unwrap();
        let handled = Arc::new(AtomicU64::new(0));
        let h = handled.clone();
        let id = bus
            .subscribe(
                "img.*",
                Handler::future(move |_event: Arc<Event>| {
                    let h = h.clone();
                    async move {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        h.fetch_add(1, Ordering::SeqCst);
                        Ok(())
                    }
                }),
                "thumbs",
            )
            .unwrap();
        const BURST: u64 = 2_500;
        for _ in 0..BURST {
            bus.publish(ev("img.uploaded")).unwrap();
        }
        bus.flush();
        assert_eq!(handled.load(Ordering::SeqCst), BURST);
        assert_eq!(
            bus.subscriptions(id).first().map(|s| s.stats.clone()).unwrap().backlog_dropped,
            0
        );
        assert_eq!(bus.stats().backlog_dropped, 0);
        bus.shutdown();
    });
}

fn counting_async_sub(bus: &Bus, handled: &Arc<AtomicU64>) {
    let h = handled.clone();
    bus.subscribe(
        "job.*",
        Handler::future(move |_event: Arc<Event>| {
            let h = h.clone();
            async move {
                tokio::task::yield_now().await;
                h.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        }),
        "worker",
    )
    .unwrap();
}

/// The reported case: `shutdown` on a current-thread runtime's thread with
/// 100 events for an async handler stalled for the drain timeout, then
/// discarded them uncounted. Now it fails at once, saying what to use, and
/// `shutdown_async` drains them.
#[test]
fn shutdown_on_a_current_thread_runtime_fails_loudly_and_shutdown_async_drains() {
    watchdog(30, || {
        current_thread().block_on(async {
            let bus =
                Bus::builder().workers(2).drain_timeout(Duration::from_secs(20)).build().unwrap();
            let handled = Arc::new(AtomicU64::new(0));
            counting_async_sub(&bus, &handled);
            for _ in 0..100 {
                bus.publish(ev("job.done")).unwrap();
            }
            let b = bus.clone();
            let refused =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || b.shutdown()));
            let message = refused.expect_err("shutdown must not wait here");
            let message = message
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| message.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            assert!(message.contains("shutdown_async"), "{message}");
            assert!(bus.is_closed(), "it closed the bus all the same");
            bus.shutdown_async().await;
            assert_eq!(handled.load(Ordering::SeqCst), 100);
            let stats = bus.stats();
            assert_eq!((stats.published, stats.dispatched), (100, 100));
            assert_eq!((stats.backlog_dropped, stats.drain_dropped), (0, 0));
        });
    });
}

/// Dropping the last `Bus` at the end of an async `main` (a multi-thread
/// runtime) drains it: the async handlers run meanwhile.
#[test]
fn dropping_the_last_bus_at_the_end_of_an_async_main_drains_it() {
    watchdog(30, || {
        let handled = Arc::new(AtomicU64::new(0));
        let h = handled.clone();
        multi_thread().block_on(async move {
            let bus = Bus::builder().workers(2).build().unwrap();
            counting_async_sub(&bus, &h);
            for _ in 0..100 {
                bus.publish(ev("job.done")).unwrap();
            }
            drop(bus);
        });
        assert_eq!(handled.load(Ordering::SeqCst), 100);
    });
}

/// On a current-thread runtime it cannot wait without starving its own
/// handlers: it closes the bus and returns, rather than stalling for the
/// whole drain timeout.
#[test]
fn dropping_the_last_bus_on_a_current_thread_runtime_does_not_stall() {
    watchdog(15, || {
        current_thread().block_on(async {
            let bus =
                Bus::builder().workers(2).drain_timeout(Duration::from_secs(60)).build().unwrap();
            let handled = Arc::new(AtomicU64::new(0));
            counting_async_sub(&bus, &handled);
            for _ in 0..100 {
                bus.publish(ev("job.done")).unwrap();
            }
            drop(bus);
        });
    });
}

/// An async handler's closure whose `Drop` flushes, unsubscribed while its
/// call runs: its last clone goes when the call ends, and that flush must
/// return.
#[test]
fn an_async_handlers_drop_may_flush() {
    watchdog(30, || {
        let runtime = multi_thread();
        let bus = Bus::builder().workers(2).runtime(runtime.handle().clone()).build().unwrap();
        let (release, started, dropped) = (
            Arc::new(tokio::sync::Notify::new()),
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        let guard = Arc::new(FlushOnDrop { bus: bus.downgrade(), dropped: dropped.clone() });
        let (r, s) = (release.clone(), started.clone());
        let id = bus
            .subscribe(
                "job.*",
                Handler::future(move |_event: Arc<Event>| {
                    let (r, s, _held) = (r.clone(), s.clone(), guard.clone());
                    async move {
                        s.store(true, Ordering::SeqCst);
                        r.notified().await;
                        Ok(())
                    }
                }),
                "worker",
            )
            .unwrap();
        bus.publish(ev("job.done")).unwrap();
        eventually(10, "the call to start", || started.load(Ordering::SeqCst));
        assert!(bus.unsubscribe(id).count() == 1);
        release.notify_one();
        eventually(10, "the handler's drop", || dropped.load(Ordering::SeqCst));
        bus.flush_timeout(Duration::from_secs(5)).expect("no flush is left holding the bus");
        bus.shutdown();
    });
}

/// A future cancelled by its timeout is dropped inside its call: what it
/// holds may flush from its `Drop`.
#[test]
fn a_future_cancelled_by_its_timeout_may_flush_from_its_drop() {
    watchdog(30, || {
        let runtime = multi_thread();
        let bus = Bus::builder().workers(2).runtime(runtime.handle().clone()).build().unwrap();
        let dropped = Arc::new(AtomicBool::new(false));
        let (weak, d) = (bus.downgrade(), dropped.clone());
        let options = SubscribeOptions::new().timeout(Duration::from_millis(50));
        bus.subscribe(
            "job.*",
            Handler::future(move |_event: Arc<Event>| {
                let guard = FlushOnDrop { bus: weak.clone(), dropped: d.clone() };
                async move {
                    let _held = guard;
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    Ok(())
                }
            }),
            options.plugin("worker"),
        )
        .unwrap();
        bus.publish(ev("job.done")).unwrap();
        bus.flush_timeout(Duration::from_secs(10)).expect("the cancelled call ended");
        assert!(dropped.load(Ordering::SeqCst));
        assert_eq!(bus.stats().handler_errors, 1, "the timeout is counted");
        bus.flush_timeout(Duration::from_secs(5)).expect("no flush is left holding the bus");
        bus.shutdown();
    });
}

/// An async plugin that unloads itself (or another plugin, named in
/// `other`) from its async handler for `trigger`.
struct Unloader {
    name: &'static str,
    trigger: &'static str,
    other: &'static str,
    manager: WeakPluginManager,
    meet: Arc<tokio::sync::Barrier>,
    done: Arc<AtomicU64>,
}

impl AsyncPlugin for Unloader {
    fn name(&self) -> &str {
        self.name
    }

    fn setup<'a>(&'a mut self, ctx: &'a PluginContext) -> PluginFuture<'a> {
        let (manager, meet, done, other) =
            (self.manager.clone(), self.meet.clone(), self.done.clone(), self.other);
        Box::pin(async move {
            ctx.subscribe(
                self.trigger,
                Handler::future(move |_event: Arc<Event>| {
                    let (manager, meet, done) = (manager.clone(), meet.clone(), done.clone());
                    async move {
                        meet.wait().await;
                        let manager = manager.upgrade().expect("the manager is alive");
                        manager.unload_async(other).await.map_err(|e| e.to_string())?;
                        done.fetch_add(1, Ordering::SeqCst);
                        Ok(())
                    }
                }),
                (),
            )?;
            Ok(())
        })
    }
}

/// The README promises a plugin may unload itself from its handler; from an
/// async handler `unload_async` used to wait for its own call forever.
#[test]
fn an_async_plugin_unloads_itself_from_its_own_handler() {
    watchdog(30, || {
        multi_thread().block_on(async {
            let manager = PluginManager::new(Bus::builder().workers(2).build().unwrap());
            let done = Arc::new(AtomicU64::new(0));
            let plugin = Unloader {
                name: "quitter",
                trigger: "quit",
                other: "quitter",
                manager: manager.downgrade(),
                meet: Arc::new(tokio::sync::Barrier::new(1)),
                done: done.clone(),
            };
            manager.load_async(plugin).await.unwrap();
            manager.bus().publish_async(ev("quit")).await.unwrap();
            manager.bus().flush_async().await;
            assert_eq!(done.load(Ordering::SeqCst), 1, "unload_async returned in the handler");
            assert!(manager.list().is_empty());
            assert_eq!(manager.bus().stats().handler_errors, 0);
            manager.shutdown_async().await;
        });
    });
}

/// Two async plugins, each unloading the other from its handler while both
/// calls run: each wait excuses the call that waits for it.
#[test]
fn two_async_plugins_unloading_each_other_do_not_deadlock() {
    watchdog(30, || {
        multi_thread().block_on(async {
            let manager = PluginManager::new(Bus::builder().workers(2).build().unwrap());
            let (meet, done) =
                (Arc::new(tokio::sync::Barrier::new(2)), Arc::new(AtomicU64::new(0)));
            for (name, trigger, other) in [("a", "go.a", "b"), ("b", "go.b", "a")] {
                let plugin = Unloader {
                    name,
                    trigger,
                    other,
                    manager: manager.downgrade(),
                    meet: meet.clone(),
                    done: done.clone(),
                };
                manager.load_async(plugin).await.unwrap();
            }
            manager.bus().publish_async(ev("go.a")).await.unwrap();
            manager.bus().publish_async(ev("go.b")).await.unwrap();
            manager.bus().flush_async().await;
            assert_eq!(done.load(Ordering::SeqCst), 2, "both unloads returned");
            assert!(manager.list().is_empty());
            manager.shutdown_async().await;
        });
    });
}

/// A plain plugin for the current-thread runtime case.
struct Counter;

impl switchboard_host::Plugin for Counter {
    fn name(&self) -> &str {
        "counter"
    }

    fn setup(&mut self, ctx: &PluginContext) -> Result<(), PluginError> {
        ctx.subscribe("tick", Handler::sync(|_| Ok(())), ())?;
        Ok(())
    }
}

/// On a current-thread runtime (`#[tokio::test]`), `reload` used to panic
/// with "use flush_async" although the user never called `flush`. Without
/// async handlers on such a runtime it works; with one it is a typed error,
/// and the `_async` forms work.
#[test]
fn the_blocking_plugin_forms_on_a_current_thread_runtime_work_or_say_why_not() {
    watchdog(30, || {
        current_thread().block_on(async {
            let manager = PluginManager::new(Bus::builder().workers(2).build().unwrap());
            manager.register(|| Counter).unwrap();
            manager.reload("counter").expect("no async handler here: it works");
            let handled = Arc::new(AtomicU64::new(0));
            counting_async_sub(manager.bus(), &handled);
            assert!(matches!(manager.reload("counter"), Err(PluginError::WouldBlock)));
            assert!(matches!(manager.unload("counter"), Err(PluginError::WouldBlock)));
            manager.reload_async("counter").await.unwrap();
            manager.unload_async("counter").await.unwrap();
            manager.shutdown_async().await;
        });
    });
}

/// Publishing into full queues on a current-thread runtime that runs async
/// handlers would starve them: `WouldBlock`, with the event given back;
/// `publish_async` waits instead.
#[test]
fn a_blocking_publish_on_a_current_thread_runtime_says_would_block() {
    watchdog(30, || {
        current_thread().block_on(async {
            let bus = Bus::builder().workers(1).capacity(16).priority_reserve(0).build().unwrap();
            let handled = Arc::new(AtomicU64::new(0));
            counting_async_sub(&bus, &handled);
            let hold = support::hold_worker(&bus);
            let mut accepted = 0;
            let refused = loop {
                match bus.publish(ev("job.done")) {
                    Ok(_) => accepted += 1,
                    Err(e) => break e,
                }
                assert!(accepted < 1_000, "the queues never filled");
            };
            assert!(matches!(refused, PublishError::WouldBlock(_)), "{refused:?}");
            assert!(refused.is_full());
            let event = refused.into_event();
            let waiting = {
                let bus = bus.clone();
                tokio::spawn(async move { bus.publish_async(event).await })
            };
            drop(hold);
            waiting.await.unwrap().expect("publish_async waited for room");
            bus.flush_async().await;
            assert_eq!(handled.load(Ordering::SeqCst), accepted + 1);
            bus.shutdown_async().await;
        });
    });
}
