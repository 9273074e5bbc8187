//! Async handlers on tokio (`--features tokio`).
#![cfg(feature = "tokio")]

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use switchboard::{
    Bus, Event, Handler, HandlerTimeout, Overflow, SubscribeError, SubscribeOptions, Target,
};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

#[test]
fn async_handlers_run_on_the_runtime_and_flush_waits_for_them() {
    support::watchdog(30, || {
        runtime().block_on(async {
            let bus = Bus::builder().workers(2).build().unwrap();
            let done = Arc::new(AtomicU64::new(0));
            let d = done.clone();
            bus.subscribe(
                "quote.*",
                Handler::future(move |event: Arc<Event>| {
                    let d = d.clone();
                    async move {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        assert!(event.name().starts_with("quote."));
                        d.fetch_add(1, Ordering::SeqCst);
                        Ok(())
                    }
                }),
                "search",
            )
            .unwrap();
            for i in 0..100 {
                bus.publish_async(Event::new("quote.added", json!(i), "quotes")).await.unwrap();
            }
            bus.flush_async().await;
            assert_eq!(
                done.load(Ordering::SeqCst),
                100,
                "flush returned before the async calls ended"
            );
            assert_eq!(bus.stats().dispatched, 100);
            bus.shutdown();
        });
    });
}

#[test]
fn a_slow_async_handler_never_holds_a_dispatch_worker() {
    support::watchdog(30, || {
        let rt = runtime();
        // One worker: if the sleeping handler held it, nothing else would run.
        let bus = Bus::builder().workers(1).runtime(rt.handle().clone()).build().unwrap();
        let slow = bus
            .subscribe(
                "tick",
                Handler::future(|_e: Arc<Event>| async {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Ok(())
                }),
                SubscribeOptions::new().plugin("slow").backlog(10_000),
            )
            .unwrap();
        let fast = Arc::new(AtomicU64::new(0));
        let f = fast.clone();
        bus.subscribe(
            "tick",
            Handler::sync(move |_| {
                f.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }),
            "fast",
        )
        .unwrap();
        for _ in 0..1_000 {
            bus.publish(support::ev("tick")).unwrap();
        }
        support::eventually(5, "the fast handler's events", || {
            fast.load(Ordering::SeqCst) == 1_000
        });
        let stats = bus.subscriptions(slow).first().map(|s| s.stats.clone()).unwrap();
        assert!(stats.backlog > 900, "the slow one works through its backlog meanwhile");
        bus.unsubscribe(Target::Plugin("slow")).wait();
        bus.shutdown();
    });
}

#[test]
fn concurrency_timeout_errors_and_panics_are_counted_like_sync_ones() {
    support::watchdog(30, || {
        let rt = runtime();
        let seen: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
        let timeouts = Arc::new(AtomicU64::new(0));
        let (s, t) = (seen.clone(), timeouts.clone());
        let bus = Bus::builder()
            .workers(2)
            .runtime(rt.handle().clone())
            .error_hook(move |_e, plugin, error| {
                if error.downcast_ref::<HandlerTimeout>().is_some() {
                    t.fetch_add(1, Ordering::SeqCst);
                }
                s.lock().unwrap().push(format!("{plugin}: {error}"));
            })
            .build()
            .unwrap();

        // At most 3 calls at once, and they do overlap.
        let (now, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (n, p) = (now.clone(), peak.clone());
        bus.subscribe(
            "work",
            Handler::future(move |_e| {
                let (n, p) = (n.clone(), p.clone());
                async move {
                    let running = n.fetch_add(1, Ordering::SeqCst) + 1;
                    p.fetch_max(running, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    n.fetch_sub(1, Ordering::SeqCst);
                    Ok(())
                }
            }),
            SubscribeOptions::new().plugin("pool").concurrency(3),
        )
        .unwrap();
        let timed = SubscribeOptions::new().timeout(Duration::from_millis(10));
        let slow_id = bus
            .subscribe(
                "work",
                Handler::future(|_e| async {
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    Ok(())
                }),
                timed.plugin("slowpoke"),
            )
            .unwrap();
        bus.subscribe("work", Handler::future(|_e| async { Err("no database".into()) }), "failing")
            .unwrap();
        bus.subscribe("work", Handler::future(|_e| async { panic!("boom") }), "panicking").unwrap();

        for _ in 0..12 {
            bus.publish(support::ev("work")).unwrap();
        }
        bus.flush();
        assert_eq!(
            peak.load(Ordering::SeqCst),
            3,
            "concurrency(3): at most three at once, and three did run"
        );
        let stats = bus.stats();
        assert_eq!(stats.handler_errors, 36, "12 timeouts + 12 errors + 12 panics");
        assert_eq!(stats.handler_panics, 12);
        assert_eq!(timeouts.load(Ordering::SeqCst), 12, "the hook tells timeouts apart");
        assert_eq!(bus.subscriptions(slow_id).first().map(|s| s.stats.clone()).unwrap().errors, 12);
        let seen = seen.lock().unwrap();
        assert!(seen.iter().any(|s| s.starts_with("failing: no database")));
        assert!(seen.iter().any(|s| s.starts_with("panicking: handler panicked: boom")));
        drop(seen);
        bus.shutdown();
    });
}

#[test]
fn an_ordered_async_subscription_keeps_each_threads_order_with_many_workers() {
    support::watchdog(60, || {
        let rt = runtime();
        let bus = Bus::builder().workers(4).runtime(rt.handle().clone()).build().unwrap();
        let last: Arc<Mutex<[Option<u64>; 2]>> = Arc::new(Mutex::new([None, None]));
        let inside = Arc::new(AtomicBool::new(false));
        let (calls, bad) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (l, i, c, b) = (last.clone(), inside.clone(), calls.clone(), bad.clone());
        bus.subscribe(
            "tick",
            Handler::future(move |e: Arc<Event>| {
                let (l, i, c, b) = (l.clone(), i.clone(), c.clone(), b.clone());
                async move {
                    if i.swap(true, Ordering::SeqCst) {
                        b.fetch_add(1, Ordering::SeqCst);
                    }
                    tokio::task::yield_now().await;
                    let (t, seq) = (
                        e.data()["t"].as_u64().unwrap() as usize,
                        e.data()["seq"].as_u64().unwrap(),
                    );
                    {
                        let mut last = l.lock().unwrap();
                        if last[t].is_some_and(|prev| prev >= seq) {
                            b.fetch_add(1, Ordering::SeqCst);
                        }
                        last[t] = Some(seq);
                    }
                    c.fetch_add(1, Ordering::SeqCst);
                    i.store(false, Ordering::SeqCst);
                    Ok(())
                }
            }),
            SubscribeOptions::new().plugin("audit").ordered().backlog(100_000),
        )
        .unwrap();
        let publishers: Vec<_> = (0..2u64)
            .map(|t| {
                let bus = bus.clone();
                std::thread::spawn(move || {
                    for seq in 0..3_000u64 {
                        bus.publish(Event::new("tick", json!({"t": t, "seq": seq}), "test"))
                            .unwrap();
                    }
                })
            })
            .collect();
        for p in publishers {
            p.join().unwrap();
        }
        bus.flush();
        assert_eq!(bad.load(Ordering::SeqCst), 0, "concurrent entry or inversion");
        assert_eq!(calls.load(Ordering::SeqCst), 6_000);
        bus.shutdown();
    });
}

#[test]
fn unsubscribe_and_wait_lets_the_running_task_finish_and_then_drops_the_closure() {
    support::watchdog(30, || {
        let rt = runtime();
        let bus = Bus::builder().workers(2).runtime(rt.handle().clone()).build().unwrap();
        let token = Arc::new(());
        let t = token.clone();
        let (started, finished) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (s, f) = (started.clone(), finished.clone());
        bus.subscribe(
            "job",
            Handler::future(move |_e| {
                let (_held, s, f) = (t.clone(), s.clone(), f.clone());
                async move {
                    s.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    f.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                }
            }),
            "p",
        )
        .unwrap();
        for _ in 0..10 {
            bus.publish(support::ev("job")).unwrap();
        }
        support::eventually(5, "a call to start", || started.load(Ordering::SeqCst) > 0);
        assert_eq!(bus.unsubscribe(Target::Pattern { pattern: "job", plugin: "p" }).wait(), 1);
        assert_eq!(
            started.load(Ordering::SeqCst),
            finished.load(Ordering::SeqCst),
            "a call was still running"
        );
        let n = started.load(Ordering::SeqCst);
        assert!(n < 10, "the backlog was dropped");
        support::eventually(5, "the closure's drop", || Arc::strong_count(&token) == 1);
        bus.flush();
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(started.load(Ordering::SeqCst), n, "a call started after unsubscribe_and_wait");
        bus.shutdown();
    });
}

#[test]
fn events_an_async_handler_publishes_count_in_the_flush_and_shutdown_drains() {
    support::watchdog(30, || {
        let rt = runtime();
        let bus = Bus::builder().workers(2).runtime(rt.handle().clone()).build().unwrap();
        let (questions, answers) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (q, a) = (questions.clone(), answers.clone());
        bus.subscribe(
            "question",
            Handler::future(move |e: Arc<Event>| {
                let q = q.clone();
                async move {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    q.fetch_add(1, Ordering::SeqCst);
                    let bus = Bus::current().expect("inside an async handler");
                    bus.flush(); // returns at once inside a handler
                    bus.publish(Event::new("answer", e.data().clone(), "trivia"))?;
                    Ok(())
                }
            }),
            "trivia",
        )
        .unwrap();
        bus.subscribe(
            "answer",
            Handler::future(move |e: Arc<Event>| {
                let a = a.clone();
                async move {
                    assert_eq!(e.depth(), 1);
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    a.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                }
            }),
            "stats",
        )
        .unwrap();
        for i in 0..20 {
            bus.publish(Event::new("question", json!(i), "test")).unwrap();
        }
        bus.flush();
        assert_eq!(answers.load(Ordering::SeqCst), 20, "flush returned before the cascade ended");
        for i in 0..20 {
            bus.publish(Event::new("question", json!(i), "test")).unwrap();
        }
        bus.shutdown();
        // Every question was handled before shutdown returned; an answer
        // published after the bus closed is refused, and that refusal is
        // the handler's error.
        assert_eq!(questions.load(Ordering::SeqCst), 40, "shutdown drained the async backlogs");
        let refused = bus.stats().handler_errors;
        assert_eq!(answers.load(Ordering::SeqCst) + refused, 40);
    });
}

#[test]
fn publish_async_waits_for_room_without_blocking_the_runtime() {
    support::watchdog(30, || {
        // A current-thread runtime: a blocking wait would stall everything.
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let bus =
                Bus::builder().workers(1).capacity(4).overflow(Overflow::Block).build().unwrap();
            let hold = support::hold_worker(&bus);
            for _ in 0..4 {
                bus.publish(support::ev("x")).unwrap();
            }
            let ticks = Arc::new(AtomicU64::new(0));
            let t = ticks.clone();
            let ticker = tokio::spawn(async move {
                for _ in 0..5 {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    t.fetch_add(1, Ordering::SeqCst);
                }
                drop(hold); // frees the worker, hence room
            });
            bus.publish_async(support::ev("x")).await.unwrap();
            assert_eq!(ticks.load(Ordering::SeqCst), 5, "the runtime ran other tasks meanwhile");
            ticker.await.unwrap();
            bus.flush_async().await;
            assert_eq!(bus.stats().published, 6);
            assert_eq!(bus.stats().rejected, 0, "the wait for room is not a rejection");
            bus.shutdown();
        });
    });
}

#[test]
fn without_a_runtime_an_async_subscribe_is_a_typed_error() {
    let bus = Bus::new().unwrap();
    let refused = bus.subscribe("x", Handler::future(|_e| async { Ok(()) }), "p");
    assert_eq!(refused, Err(SubscribeError::NoRuntime));
    bus.shutdown();
}

#[test]
fn a_runtime_that_shuts_down_under_its_handlers_leaves_nothing_to_wait_for() {
    support::watchdog(30, || {
        let rt = runtime();
        let bus = Bus::builder().workers(2).runtime(rt.handle().clone()).build().unwrap();
        let started = Arc::new(AtomicU64::new(0));
        let s = started.clone();
        let id = bus
            .subscribe(
                "job",
                Handler::future(move |_e| {
                    let s = s.clone();
                    async move {
                        s.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_secs(60)).await;
                        Ok(())
                    }
                }),
                "p",
            )
            .unwrap();
        for _ in 0..10 {
            bus.publish(support::ev("job")).unwrap();
        }
        support::eventually(5, "a call to start", || started.load(Ordering::SeqCst) == 1);
        rt.shutdown_background();
        // The running call and the backlog are given up, not waited for.
        bus.flush();
        let stats = bus.subscriptions(id).first().map(|s| s.stats.clone()).unwrap();
        assert_eq!(stats.running, 0);
        assert_eq!(stats.backlog_dropped, 9, "the backlog is counted as dropped");
        // Later events find no runtime either: dropped and counted.
        bus.publish(support::ev("job")).unwrap();
        bus.flush();
        assert_eq!(
            bus.subscriptions(id).first().map(|s| s.stats.clone()).unwrap().backlog_dropped,
            10
        );
        assert_eq!(bus.unsubscribe(Target::Pattern { pattern: "job", plugin: "p" }).wait(), 1);
        bus.shutdown();
    });
}

/// An async plugin: its setup awaits, subscribes an async handler that
/// records (thread, seq) per instance, and its teardown awaits too.
struct AsyncRecorder {
    seen: Arc<Mutex<std::collections::HashMap<(u64, u64), u64>>>,
    torn_down: Arc<AtomicU64>,
    fail_setup: bool,
}

impl switchboard_host::AsyncPlugin for AsyncRecorder {
    fn name(&self) -> &str {
        "recorder"
    }

    fn setup<'a>(
        &'a mut self,
        ctx: &'a switchboard_host::PluginContext,
    ) -> switchboard_host::PluginFuture<'a> {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(1)).await;
            let seen = self.seen.clone();
            // A backlog for the whole flood: this test is about the reload.
            let options = SubscribeOptions::new().backlog(100_000);
            ctx.subscribe(
                "flood.*",
                Handler::future(move |e: Arc<Event>| {
                    let seen = seen.clone();
                    async move {
                        let key =
                            (e.data()["t"].as_u64().unwrap(), e.data()["seq"].as_u64().unwrap());
                        *seen.lock().unwrap().entry(key).or_default() += 1;
                        Ok(())
                    }
                }),
                options,
            )?;
            if self.fail_setup {
                panic!("async setup exploded");
            }
            Ok(())
        })
    }

    fn teardown<'a>(
        &'a mut self,
        _ctx: &'a switchboard_host::PluginContext,
    ) -> switchboard_host::PluginFuture<'a> {
        Box::pin(async move {
            tokio::task::yield_now().await;
            self.torn_down.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
    }
}

#[test]
fn async_plugins_set_up_reload_and_tear_down_without_losing_events() {
    use switchboard_host::{PluginError, PluginManager};
    support::watchdog(120, || {
        runtime().block_on(async {
            let manager = PluginManager::new(Bus::builder().workers(2).build().unwrap());
            let seen: Arc<Mutex<std::collections::HashMap<(u64, u64), u64>>> = Arc::default();
            let torn_down = Arc::new(AtomicU64::new(0));

            // A failing async setup leaves nothing behind.
            let failing = AsyncRecorder { seen: seen.clone(), torn_down: torn_down.clone(), fail_setup: true };
            let err = manager.load_async(failing).await.unwrap_err();
            assert!(matches!(&err, PluginError::Setup { reason, .. } if reason.contains("async setup exploded")), "{err}");
            assert_eq!(manager.bus().stats().subscriptions, 0);

            let n = Arc::new(AtomicU64::new(0));
            let (s, t, n2) = (seen.clone(), torn_down.clone(), n.clone());
            manager
                .register_async(move || {
                    n2.fetch_add(1, Ordering::SeqCst);
                    AsyncRecorder {
                    seen: s.clone(),
                    torn_down: t.clone(),
                    fail_setup: false,
                    }
                })
                .await
                .unwrap();
            assert!(matches!(manager.unload("recorder"), Err(PluginError::NeedsAsync { .. })));
            assert!(matches!(manager.reload("recorder"), Err(PluginError::NeedsAsync { .. })));

            const PER_THREAD: u64 = 5_000;
            let publishers: Vec<_> = (0..2u64)
                .map(|t| {
                    let bus = manager.bus().clone();
                    std::thread::spawn(move || {
                        for seq in 0..PER_THREAD {
                            bus.publish(Event::new("flood.tick", json!({"t": t, "seq": seq}), "test")).unwrap();
                        }
                    })
                })
                .collect();
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_millis(3)).await;
                manager.reload_async("recorder").await.unwrap();
            }
            for p in publishers {
                p.join().unwrap();
            }
            manager.bus().flush_async().await;
            {
                let seen = seen.lock().unwrap();
                let (mut lost, mut duplicated) = (0, 0);
                for t in 0..2 {
                    for seq in 0..PER_THREAD {
                        match seen.get(&(t, seq)).copied().unwrap_or(0) {
                            0 => lost += 1,
                            1 => {}
                            _ => duplicated += 1,
                        }
                    }
                }
                assert_eq!((lost, duplicated), (0, 0), "lost, duplicated");
            }
            assert_eq!(manager.bus().stats().backlog_dropped, 0);
            assert_eq!(n.load(Ordering::SeqCst), 4, "one instance, then one per reload");
            assert_eq!(torn_down.load(Ordering::SeqCst), 3, "each replaced instance was torn down");
            manager.unload_async("recorder").await.unwrap();
            assert_eq!(torn_down.load(Ordering::SeqCst), 4);
            assert!(manager.list().is_empty());
            manager.shutdown_async().await;
            assert!(manager.bus().is_closed());
        });
    });
}

/// An async subscription whose calls run one at a time takes its events a
/// batch at a time: an unsubscribe that returns while the batch's first
/// call runs starts none of the rest, and flush does not wait for them.
/// (The runtime is a current-thread one not yet driven, so the runner
/// finds all ten events waiting when it first runs.)
#[test]
fn an_unsubscribe_during_an_async_batch_starts_none_of_its_remaining_events() {
    support::watchdog(30, || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let bus = Bus::builder().workers(1).history_size(0).runtime(rt.handle().clone()).build();
        let bus = bus.unwrap();
        let calls = Arc::new(AtomicU64::new(0));
        let started = Arc::new(tokio::sync::Notify::new());
        let go = Arc::new(tokio::sync::Notify::new());
        let (c, s, g) = (calls.clone(), started.clone(), go.clone());
        let id = bus
            .subscribe(
                "x",
                Handler::future(move |e| {
                    let (c, s, g) = (c.clone(), s.clone(), g.clone());
                    async move {
                        c.fetch_add(1, Ordering::SeqCst);
                        if e.data() == &json!(0) {
                            s.notify_one();
                            g.notified().await;
                        }
                        Ok(())
                    }
                }),
                "p",
            )
            .unwrap();
        for i in 0..10 {
            bus.publish(Event::new("x", json!(i), "t")).unwrap();
        }
        let backlog = || bus.subscriptions(id).first().map(|s| s.stats.backlog);
        support::eventually(5, "the worker to hand all ten over", || backlog() == Some(10));
        rt.block_on(async {
            started.notified().await;
            assert_eq!(backlog(), Some(0), "taken as one batch");
            assert_eq!(bus.unsubscribe(id).count(), 1);
            go.notify_one();
            bus.flush_async().await;
        });
        assert_eq!(calls.load(Ordering::SeqCst), 1, "a call started after unsubscribe returned");
        bus.shutdown();
    });
}
