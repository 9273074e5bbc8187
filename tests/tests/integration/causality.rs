//! Causality: an event published from a handler names the event being
//! handled as its parent, through every kind of handler, the plugin host and
//! replayed calls; history walks a cascade.
//!
//! (The dispatch spans of `BusBuilder::trace_dispatch` are tested in
//! `tests/dispatch_spans.rs`, a binary of its own: it installs a
//! process-wide `tracing` subscriber.)

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::json;
use support::{ev, watchdog};
use switchboard::{Bus, Cause, Event, EventId, Handler, HistoryQuery, SubscribeOptions};
use switchboard_host::{Plugin, PluginContext, PluginError, PluginManager};

/// Every `child.*` event the bus dispatched, in the order seen.
#[derive(Clone, Default)]
struct Children(Arc<Mutex<Vec<Event>>>);

impl Children {
    fn on(bus: &Bus) -> Children {
        let children = Children::default();
        let c = children.clone();
        bus.subscribe(
            "child.*",
            Handler::sync(move |e: &Event| {
                c.0.lock().unwrap().push(e.clone());
                Ok(())
            }),
            "recorder",
        )
        .unwrap();
        children
    }

    fn take(&self) -> Vec<Event> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

/// The cause a publish from a handler of `parent` (numbered on `bus`)
/// records.
fn cause_of(bus: &Bus, parent: &Event) -> Cause {
    Cause::new(parent.id()).with_sequence(bus.instance(), parent.sequence().expect("published"))
}

/// A sync handler that publishes `child.<name>` from its call.
fn publishing(name: &'static str) -> Handler {
    Handler::sync(move |_parent: &Event| {
        Bus::current().expect("in a handler").publish(ev(&format!("child.{name}")))?;
        Ok(())
    })
}

/// Subscribes a handler publishing `child.<kind>` to `parent.*` as `kind`
/// says, publishes one `parent.<kind>` (a few earlier ones for a replay to
/// find) and checks that the child names it as its parent, one level
/// deeper.
fn check(kind: &'static str) {
    watchdog(30, move || {
        let bus = Bus::builder().workers(2).history_size(100).build().unwrap();
        let children = Children::on(&bus);
        let options = match kind {
            "inline" => SubscribeOptions::new(),
            "ordered" => SubscribeOptions::new().ordered(),
            "blocking" => SubscribeOptions::new().blocking(),
            "blocking ordered" => SubscribeOptions::new().blocking().ordered(),
            "blocking concurrent" => SubscribeOptions::new().blocking().concurrency(3),
            "replay" => SubscribeOptions::new(),
            other => panic!("no kind {other}"),
        };
        let options = options.plugin(kind);
        let parent = if kind == "replay" {
            // Replayed from history on this thread: the last one is the
            // parent of the child the replayed call publishes.
            bus.publish(ev("other.before")).unwrap();
            bus.publish(ev("parent.replay")).unwrap();
            let replay = bus.subscribe_replay("parent.*", publishing(kind), options, 1).unwrap();
            assert_eq!(replay.replayed, 1);
            bus.flush();
            bus.history(HistoryQuery::new().matching("parent.*")).unwrap()[0].clone()
        } else {
            bus.subscribe("parent.*", publishing(kind), options).unwrap();
            bus.publish(ev("other.before")).unwrap();
            bus.publish(ev(&format!("parent.{kind}"))).unwrap();
            bus.flush();
            bus.history(HistoryQuery::new().matching("parent.*")).unwrap()[0].clone()
        };
        let seen = children.take();
        assert_eq!(seen.len(), 1, "{kind}: {seen:?}");
        let child = &seen[0];
        assert_eq!(child.parent(), Some(&cause_of(&bus, &parent)), "{kind}");
        assert_eq!(child.parent().map(Cause::id), Some(parent.id()), "{kind}");
        assert_eq!(child.depth(), parent.depth() + 1, "{kind}");
        // What history holds is the same event.
        let in_history = &bus.history(HistoryQuery::new().matching("child.*")).unwrap()[0];
        assert_eq!(in_history.parent(), child.parent(), "{kind}");
        // An event published outside a handler has none.
        assert_eq!(parent.parent(), None, "{kind}");
        bus.shutdown();
    });
}

#[test]
fn a_child_of_an_inline_handler_names_its_parent() {
    check("inline");
}

#[test]
fn a_child_of_an_ordered_handler_names_its_parent() {
    check("ordered");
}

#[test]
fn a_child_of_a_blocking_handler_names_its_parent() {
    check("blocking");
    check("blocking ordered");
    check("blocking concurrent");
}

#[test]
fn a_child_of_a_replayed_call_names_the_replayed_event() {
    check("replay");
}

#[test]
fn the_parent_is_the_event_being_handled_not_the_last_one_the_worker_saw() {
    // One worker, a flood of parents of two kinds: every child names the
    // very event whose handler published it (its payload says which).
    watchdog(30, || {
        let bus = Bus::builder().workers(1).history_size(10_000).build().unwrap();
        let children = Children::on(&bus);
        for (pattern, options) in [
            ("parent.inline", SubscribeOptions::new()),
            ("parent.ordered", SubscribeOptions::new().ordered()),
            ("parent.blocking", SubscribeOptions::new().blocking()),
        ] {
            let echo = Handler::sync(|parent: &Event| {
                let child = Event::new("child.echo", json!(parent.id().as_u128().to_string()), "t");
                Bus::current().unwrap().publish(child)?;
                Ok(())
            });
            bus.subscribe(pattern, echo, options.plugin(pattern)).unwrap();
        }
        for i in 0..300 {
            let name = ["parent.inline", "parent.ordered", "parent.blocking", "other"][i % 4];
            bus.publish(ev(name)).unwrap();
        }
        bus.flush();
        let seen = children.take();
        assert_eq!(seen.len(), 225);
        for child in &seen {
            let named = child.data().as_str().unwrap().parse::<u128>().unwrap();
            assert_eq!(child.parent().map(|c| c.id().as_u128()), Some(named));
        }
        bus.shutdown();
    });
}

#[test]
fn each_publish_records_its_parent_afresh_and_a_given_parent_is_kept() {
    watchdog(30, || {
        let bus = Bus::builder().workers(2).history_size(100).build().unwrap();
        let children = Children::on(&bus);
        let given = EventId::from_u128(0xfeed);
        // A handler republishing the child it was handed, from outside a
        // handler: the clone has no parent (as its depth is 0 again).
        let kept = Arc::new(Mutex::new(Vec::<Event>::new()));
        let k = kept.clone();
        bus.subscribe(
            "parent.*",
            Handler::sync(move |parent: &Event| {
                let bus = Bus::current().unwrap();
                bus.publish(ev("child.auto"))?;
                // Given by hand: kept, though published from a handler.
                bus.publish(ev("child.given").with_parent(given))?;
                k.lock().unwrap().push(parent.clone());
                Ok(())
            }),
            "t",
        )
        .unwrap();
        bus.publish(ev("parent.one")).unwrap();
        bus.flush();
        let seen = children.take();
        let parent = kept.lock().unwrap()[0].clone();
        let auto = seen.iter().find(|e| e.name() == "child.auto").unwrap();
        let by_hand = seen.iter().find(|e| e.name() == "child.given").unwrap();
        assert_eq!(auto.parent(), Some(&cause_of(&bus, &parent)));
        assert_eq!(by_hand.parent(), Some(&Cause::new(given)));
        // Republished from outside: the automatic parent goes, the given
        // one stays.
        bus.publish(auto.clone()).unwrap();
        bus.publish(by_hand.clone()).unwrap();
        bus.flush();
        let again = children.take();
        assert_eq!(again.len(), 2);
        assert_eq!(again.iter().find(|e| e.name() == "child.auto").unwrap().parent(), None);
        assert_eq!(
            again.iter().find(|e| e.name() == "child.given").unwrap().parent(),
            Some(&Cause::new(given))
        );
        // A handler of another bus publishing here is not a handler of
        // this bus: no parent, as no depth.
        let other = Bus::builder().workers(1).build().unwrap();
        let here = bus.clone();
        other
            .subscribe(
                "relay",
                Handler::sync(move |_| {
                    here.publish(ev("child.relayed"))?;
                    Ok(())
                }),
                "relay",
            )
            .unwrap();
        other.publish(ev("relay")).unwrap();
        other.flush();
        bus.flush();
        let relayed = children.take();
        assert_eq!(relayed.len(), 1);
        assert_eq!((relayed[0].parent(), relayed[0].depth()), (None, 0));
        other.shutdown();
        bus.shutdown();
    });
}

/// Publishes `child.<how>` through its context from its `parent.*` handler,
/// one way per publish method.
struct Publisher;

impl Plugin for Publisher {
    fn name(&self) -> &str {
        "publisher"
    }

    fn setup(&mut self, ctx: &PluginContext) -> Result<(), PluginError> {
        let me = ctx.clone();
        ctx.subscribe(
            "parent.*",
            Handler::sync(move |_| {
                me.publish("child.publish", json!(1))?;
                me.publish_typed("child.typed", 2u32)?;
                me.publish_event(ev("child.event"))?;
                Ok(())
            }),
            SubscribeOptions::new().ordered(),
        )?;
        Ok(())
    }
}

#[test]
fn a_plugin_publishing_through_its_context_names_its_parent() {
    watchdog(30, || {
        let manager =
            PluginManager::new(Bus::builder().workers(2).history_size(100).build().unwrap());
        let bus = manager.bus().clone();
        let children = Children::on(&bus);
        manager.register(|| Publisher).unwrap();
        bus.publish(ev("parent.one")).unwrap();
        // Through a reload too: the hand-over's filter is still a handler call.
        manager.reload("publisher").unwrap();
        bus.publish(ev("parent.two")).unwrap();
        bus.flush();
        let parents = bus.history(HistoryQuery::new().matching("parent.*")).unwrap();
        let seen = children.take();
        assert_eq!(seen.len(), 6, "{seen:?}");
        for child in &seen {
            assert_eq!(child.source(), "publisher");
            let parent = parents
                .iter()
                .find(|p| child.parent() == Some(&cause_of(&bus, p)))
                .unwrap_or_else(|| panic!("{child:?} names no parent"));
            assert_eq!(child.depth(), parent.depth() + 1);
        }
        manager.shutdown();
    });
}

/// `chat.line → trivia.round → score.changed`, and `trivia.round →
/// trivia.hint` (inline), each hop published from a handler.
fn cascading_bus(history: usize) -> Bus {
    let bus = Bus::builder().workers(2).history_size(history).build().unwrap();
    for (on, next, options) in [
        ("chat.line", &["trivia.round"][..], SubscribeOptions::new()),
        ("trivia.round", &["score.changed", "trivia.hint"][..], SubscribeOptions::new().ordered()),
    ] {
        let publish = Handler::sync(move |_| {
            for name in next {
                Bus::current().unwrap().publish(ev(name))?;
            }
            Ok(())
        });
        bus.subscribe(on, publish, options.plugin(on)).unwrap();
    }
    bus
}

fn names(events: &[Arc<Event>]) -> Vec<&str> {
    events.iter().map(|e| e.name()).collect()
}

#[test]
fn history_walks_a_cascade_through_every_link_newest_first() {
    watchdog(30, || {
        let bus = cascading_bus(100);
        let first = bus.publish(ev("chat.line")).unwrap();
        bus.flush();
        let second = bus.publish(ev("chat.line")).unwrap();
        bus.publish(ev("unrelated")).unwrap();
        bus.flush();
        let cascade = bus.history(HistoryQuery::new().caused_by(first)).unwrap();
        let mut got = names(&cascade);
        assert_eq!(got.len(), 3, "{got:?}");
        // Newest first: the round before what its handler published.
        assert_eq!(got.pop(), Some("trivia.round"));
        got.sort();
        assert_eq!(got, ["score.changed", "trivia.hint"]);
        // Every event returned is of this cascade, and none of the other's.
        let round = cascade.iter().find(|e| e.name() == "trivia.round").unwrap();
        assert_eq!(round.parent().map(Cause::id), Some(first));
        for e in &cascade {
            let parent = e.parent().unwrap().id();
            assert!(parent == first || parent == round.id(), "{e:?}");
        }
        let other = bus.history(HistoryQuery::new().caused_by(second)).unwrap();
        assert_eq!(other.len(), 3);
        assert!(other.iter().all(|e| !cascade.iter().any(|c| c.id() == e.id())));
        // The filters pick among the cascade; a link that does not match
        // is walked through.
        let scores = bus.history(HistoryQuery::new().caused_by(first).matching("score.*")).unwrap();
        assert_eq!(names(&scores), ["score.changed"]);
        let newest = bus.history(HistoryQuery::new().caused_by(first).last(1)).unwrap();
        assert_eq!(newest.len(), 1);
        assert_eq!(newest[0].id(), cascade[0].id());
        // A leaf starts no cascade; `None` asks for no cascade at all.
        let leaf = scores[0].id();
        assert!(bus.history(HistoryQuery::new().caused_by(leaf)).unwrap().is_empty());
        assert_eq!(bus.history(HistoryQuery::new().caused_by(None)).unwrap().len(), 9);
        bus.shutdown();
    });
}

#[test]
fn a_cascade_walk_needs_its_links_in_history_but_not_its_root() {
    watchdog(30, || {
        // Room for one cascade (4 events) and a bit: the root falls out
        // first, then the round that links the rest to it.
        let bus = cascading_bus(5);
        let root = bus.publish(ev("chat.line")).unwrap();
        bus.flush();
        // Slots: the root, the round, its score and hint, a filler.
        bus.publish(ev("filler")).unwrap();
        let walk = || bus.history(HistoryQuery::new().caused_by(root)).unwrap().len();
        assert_eq!(walk(), 3);
        // The next event pushes the root out.
        bus.publish(ev("filler")).unwrap();
        assert_eq!(walk(), 3, "the root itself need not be in history");
        // And the next, the round.
        bus.publish(ev("filler")).unwrap();
        // The round is gone: what it caused cannot be linked to the root.
        assert_eq!(walk(), 0);
        bus.shutdown();
    });
}

#[test]
fn a_cascade_across_handler_kinds_is_walked_whole() {
    // Inline → blocking → ordered → replayed: each hop records its parent.
    watchdog(30, || {
        let bus = Bus::builder().workers(2).history_size(1000).build().unwrap();
        let hops = [
            ("hop.0", "hop.1", SubscribeOptions::new()),
            ("hop.1", "hop.2", SubscribeOptions::new().blocking()),
            ("hop.2", "hop.3", SubscribeOptions::new().ordered()),
        ];
        for (on, next, options) in hops {
            let publish = Handler::sync(move |_| {
                Bus::current().unwrap().publish(ev(next))?;
                Ok(())
            });
            bus.subscribe(on, publish, options.plugin(on)).unwrap();
        }
        let root = bus.publish(ev("hop.0")).unwrap();
        bus.flush();
        let calls = Arc::new(AtomicU64::new(0));
        let c = calls.clone();
        let replayed = Handler::sync(move |_| {
            c.fetch_add(1, Ordering::SeqCst);
            Bus::current().unwrap().publish(ev("hop.4"))?;
            Ok(())
        });
        bus.subscribe_replay("hop.3", replayed, "replayer", 10).unwrap();
        bus.flush();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        let cascade = bus.history(HistoryQuery::new().caused_by(root)).unwrap();
        assert_eq!(names(&cascade), ["hop.4", "hop.3", "hop.2", "hop.1"]);
        for pair in cascade.windows(2) {
            assert_eq!(pair[0].parent().map(Cause::id), Some(pair[1].id()));
            assert_eq!(pair[0].depth(), pair[1].depth() + 1);
        }
        bus.shutdown();
    });
}

#[cfg(feature = "tokio")]
mod asynchronous {
    use super::*;
    use std::time::Duration;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
    }

    /// An async handler that awaits, publishes, awaits and publishes again
    /// (with `publish_async` too), for `options`.
    fn check_async(options: SubscribeOptions) {
        watchdog(30, move || {
            let rt = runtime();
            let bus = Bus::builder()
                .workers(2)
                .history_size(100)
                .runtime(rt.handle().clone())
                .build()
                .unwrap();
            let children = Children::on(&bus);
            let awaiting = Handler::future(|_parent: Arc<Event>| async move {
                tokio::time::sleep(Duration::from_millis(2)).await;
                let bus = Bus::current().expect("in the handler's scope");
                bus.publish(ev("child.after_sleep"))?;
                tokio::task::yield_now().await;
                bus.publish_async(ev("child.async")).await?;
                tokio::time::sleep(Duration::from_millis(1)).await;
                bus.publish(ev("child.last"))?;
                Ok(())
            });
            bus.subscribe("parent.*", awaiting, options.plugin("async")).unwrap();
            for _ in 0..5 {
                bus.publish(ev("parent.one")).unwrap();
            }
            rt.block_on(bus.flush_async());
            let parents = bus.history(HistoryQuery::new().matching("parent.*")).unwrap();
            let seen = children.take();
            assert_eq!(seen.len(), 15);
            for parent in &parents {
                let mine: Vec<&Event> =
                    seen.iter().filter(|c| c.parent() == Some(&cause_of(&bus, parent))).collect();
                assert_eq!(mine.len(), 3, "{parent:?}: {seen:?}");
            }
            bus.shutdown();
        });
    }

    #[test]
    fn a_child_of_an_async_handler_names_its_parent_across_awaits() {
        check_async(SubscribeOptions::new());
        check_async(SubscribeOptions::new().ordered());
        check_async(SubscribeOptions::new().concurrency(4));
    }

    /// Publishes through its context from an async handler, after an await.
    struct AsyncPublisher;

    impl Plugin for AsyncPublisher {
        fn name(&self) -> &str {
            "async_publisher"
        }

        fn setup(&mut self, ctx: &PluginContext) -> Result<(), PluginError> {
            let me = ctx.clone();
            let handler = Handler::future(move |_parent: Arc<Event>| {
                let me = me.clone();
                async move {
                    tokio::task::yield_now().await;
                    me.publish("child.publish", json!(1))?;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    me.publish_event(ev("child.event"))?;
                    Ok(())
                }
            });
            ctx.subscribe("parent.*", handler, ())?;
            Ok(())
        }
    }

    #[test]
    fn an_async_plugin_handler_publishing_through_its_context_names_its_parent() {
        watchdog(30, || {
            let rt = runtime();
            let builder = Bus::builder().history_size(100).runtime(rt.handle().clone());
            let manager = PluginManager::from_builder(builder).unwrap();
            let bus = manager.bus().clone();
            let children = Children::on(&bus);
            manager.load(AsyncPublisher).unwrap();
            let parent = bus.publish(ev("parent.one")).unwrap();
            rt.block_on(bus.flush_async());
            let seen = children.take();
            assert_eq!(seen.len(), 2);
            assert!(seen.iter().all(|c| c.parent().map(Cause::id) == Some(parent)), "{seen:?}");
            rt.block_on(manager.shutdown_async());
        });
    }

    #[test]
    fn a_task_an_async_handler_spawns_is_not_the_handler() {
        watchdog(30, || {
            let rt = runtime();
            let bus = Bus::builder().runtime(rt.handle().clone()).build().unwrap();
            let children = Children::on(&bus);
            let b = bus.clone();
            let spawning = Handler::future(move |_parent: Arc<Event>| {
                let b = b.clone();
                async move {
                    tokio::spawn(async move { b.publish_async(ev("child.spawned")).await })
                        .await
                        .unwrap()?;
                    Ok(())
                }
            });
            bus.subscribe("parent.*", spawning, "spawner").unwrap();
            bus.publish(ev("parent.one")).unwrap();
            // The spawned publish is no cascade of the handler's event: the
            // first flush need not wait for it, the second does.
            rt.block_on(bus.flush_async());
            rt.block_on(bus.flush_async());
            let seen = children.take();
            assert_eq!(seen.len(), 1);
            assert_eq!((seen[0].parent(), seen[0].depth()), (None, 0));
            bus.shutdown();
        });
    }
}
