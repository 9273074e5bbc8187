//! The plugin host: load, unload, reload, list.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use serde_json::json;
use support::{ev, watchdog};
use switchboard::{Bus, Event, Handler};
use switchboard_host::{Plugin, PluginContext, PluginError, PluginManager, PluginState};

/// A plugin counting `count.*` events, holding `token` in its handler, and
/// recording its teardown.
struct Counter {
    name: String,
    token: Arc<()>,
    calls: Arc<AtomicU64>,
    torn_down: Arc<AtomicBool>,
    teardown_fails: bool,
}

impl Counter {
    fn new(name: &str) -> Counter {
        Counter {
            name: name.to_owned(),
            token: Arc::new(()),
            calls: Arc::new(AtomicU64::new(0)),
            torn_down: Arc::new(AtomicBool::new(false)),
            teardown_fails: false,
        }
    }
}

impl Plugin for Counter {
    fn name(&self) -> &str {
        &self.name
    }

    fn version(&self) -> &str {
        "1.2.3"
    }

    fn setup(&mut self, ctx: &PluginContext) -> Result<(), PluginError> {
        let (token, calls) = (self.token.clone(), self.calls.clone());
        ctx.subscribe(
            "count.*",
            Handler::sync(move |_| {
                let _held = &token;
                calls.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }),
            (),
        )?;
        ctx.subscribe("fail.*", Handler::sync(|_| Err("this one always fails".into())), ())?;
        Ok(())
    }

    fn teardown(&mut self, _ctx: &PluginContext) -> Result<(), PluginError> {
        self.torn_down.store(true, Ordering::SeqCst);
        if self.teardown_fails {
            panic!("teardown exploded");
        }
        Ok(())
    }
}

#[test]
fn plugins_load_once_by_name_and_list_what_they_subscribed() {
    let manager = PluginManager::new(Bus::builder().workers(2).build().unwrap());
    let counter = Counter::new("stats");
    let calls = counter.calls.clone();
    manager.load(counter).unwrap();
    assert!(matches!(manager.load(Counter::new("stats")), Err(PluginError::AlreadyLoaded { .. })));
    manager.bus().publish(ev("count.one")).unwrap();
    manager.bus().publish(ev("fail.one")).unwrap();
    manager.bus().flush();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let list = manager.list();
    assert_eq!(list.len(), 1);
    assert_eq!((list[0].name.as_str(), list[0].version.as_str()), ("stats", "1.2.3"));
    assert_eq!(list[0].subscriptions, ["count.*", "fail.*"]);
    assert_eq!(list[0].handler_errors, 1);
    assert_eq!(list[0].state, PluginState::Running);
    assert!(!list[0].reloadable);
    assert!(matches!(manager.reload("stats"), Err(PluginError::NotReloadable { .. })));
    assert!(matches!(manager.unload("nobody"), Err(PluginError::NotLoaded { .. })));
    manager.shutdown();
}

/// Subscribes, then fails its setup the way it was told to.
struct Broken {
    panics: bool,
}

impl Plugin for Broken {
    fn name(&self) -> &str {
        "broken"
    }

    fn setup(&mut self, ctx: &PluginContext) -> Result<(), PluginError> {
        ctx.subscribe("*", Handler::sync(|_| Ok(())), ())?;
        ctx.subscribe("x", Handler::sync(|_| Ok(())), ())?;
        if self.panics {
            panic!("setup exploded");
        }
        Err(PluginError::other("no database"))
    }
}

#[test]
fn a_plugin_whose_setup_fails_or_panics_is_not_loaded_and_leaves_nothing() {
    let manager = PluginManager::new(Bus::builder().workers(2).build().unwrap());
    for panics in [false, true] {
        let err = manager.load(Broken { panics }).unwrap_err();
        let PluginError::Setup { name, reason } = err else { panic!("not a setup error: {err}") };
        assert_eq!(name, "broken");
        assert!(reason.contains(if panics { "setup exploded" } else { "no database" }), "{reason}");
        assert!(manager.list().is_empty());
        assert_eq!(manager.bus().stats().subscriptions, 0, "its subscriptions were removed");
    }
    // The name is free again.
    manager.load(Counter::new("broken")).unwrap();
    manager.shutdown();
}

#[test]
fn unload_removes_waits_drops_and_tears_down_even_when_teardown_panics() {
    watchdog(30, || {
        let manager = PluginManager::new(Bus::builder().workers(2).build().unwrap());
        let mut counter = Counter::new("quotes");
        counter.teardown_fails = true;
        let (token, torn_down) = (counter.token.clone(), counter.torn_down.clone());
        manager.load(counter).unwrap();
        for _ in 0..100 {
            manager.bus().publish(ev("count.x")).unwrap();
        }
        let err = manager.unload("quotes").unwrap_err();
        assert!(
            matches!(&err, PluginError::Teardown { reason, .. } if reason.contains("teardown exploded")),
            "{err}"
        );
        assert!(torn_down.load(Ordering::SeqCst));
        assert_eq!(Arc::strong_count(&token), 1, "the handlers were dropped");
        assert!(manager.list().is_empty());
        assert_eq!(manager.bus().stats().subscriptions, 0);
        manager.shutdown();
    });
}

/// Unloads itself from its own handler when it sees `quit`.
struct Quitter {
    manager: switchboard_host::WeakPluginManager,
    result: Arc<Mutex<Option<bool>>>,
}

impl Plugin for Quitter {
    fn name(&self) -> &str {
        "quitter"
    }

    fn setup(&mut self, ctx: &PluginContext) -> Result<(), PluginError> {
        let (manager, result) = (self.manager.clone(), self.result.clone());
        ctx.subscribe(
            "quit",
            Handler::sync(move |_| {
                let manager = manager.upgrade().expect("the manager is alive");
                *result.lock().unwrap() = Some(manager.unload("quitter").is_ok());
                Ok(())
            }),
            (),
        )?;
        Ok(())
    }
}

#[test]
fn a_plugin_unloading_itself_from_its_handler_does_not_deadlock() {
    watchdog(30, || {
        let manager = PluginManager::new(Bus::builder().workers(2).build().unwrap());
        let result = Arc::new(Mutex::new(None));
        manager.load(Quitter { manager: manager.downgrade(), result: result.clone() }).unwrap();
        manager.bus().publish(ev("quit")).unwrap();
        manager.bus().flush();
        assert_eq!(*result.lock().unwrap(), Some(true));
        assert!(manager.list().is_empty());
        manager.shutdown();
    });
}

/// Which instances saw each (publishing thread, sequence number).
type Seen = Arc<Mutex<HashMap<(u64, u64), Vec<u64>>>>;

/// Records every `flood.*` event it sees, by (thread, sequence), with the
/// instance that saw it. Instance `n` of the factory also subscribes
/// `extra.*` when `n` is odd, so reloads change the subscriptions.
struct Recorder {
    instance: u64,
    seen: Seen,
}

impl Plugin for Recorder {
    fn name(&self) -> &str {
        "recorder"
    }

    fn setup(&mut self, ctx: &PluginContext) -> Result<(), PluginError> {
        let (instance, seen) = (self.instance, self.seen.clone());
        ctx.subscribe(
            "flood.*",
            Handler::sync(move |e: &Event| {
                let key = (e.data()["t"].as_u64().unwrap(), e.data()["seq"].as_u64().unwrap());
                seen.lock().unwrap().entry(key).or_default().push(instance);
                Ok(())
            }),
            (),
        )?;
        if self.instance % 2 == 1 {
            ctx.subscribe("extra.*", Handler::sync(|_| Ok(())), ())?;
        }
        Ok(())
    }
}

#[test]
fn reload_under_a_flood_loses_and_duplicates_nothing() {
    watchdog(120, || {
        let manager = PluginManager::new(Bus::builder().workers(4).build().unwrap());
        let seen: Seen = Arc::default();
        let instances = Arc::new(AtomicU64::new(0));
        let (s, n) = (seen.clone(), instances.clone());
        manager
            .register(move || Recorder {
                instance: n.fetch_add(1, Ordering::SeqCst),
                seen: s.clone(),
            })
            .unwrap();
        const THREADS: u64 = 3;
        const PER_THREAD: u64 = 20_000;
        let publishers: Vec<_> = (0..THREADS)
            .map(|t| {
                let bus = manager.bus().clone();
                thread::spawn(move || {
                    for seq in 0..PER_THREAD {
                        bus.publish(Event::new("flood.tick", json!({"t": t, "seq": seq}), "test"))
                            .unwrap();
                    }
                })
            })
            .collect();
        for round in 0..6 {
            thread::sleep(std::time::Duration::from_millis(5));
            manager.reload("recorder").unwrap();
            let info = &manager.list()[0];
            assert_eq!(info.state, PluginState::Running);
            let expected: &[&str] =
                if (round + 1) % 2 == 1 { &["flood.*", "extra.*"] } else { &["flood.*"] };
            assert_eq!(
                info.subscriptions, expected,
                "the new instance's subscriptions are in place"
            );
        }
        for p in publishers {
            p.join().unwrap();
        }
        manager.bus().flush();
        let seen = seen.lock().unwrap();
        let mut lost = 0;
        let mut duplicated = 0;
        for t in 0..THREADS {
            for seq in 0..PER_THREAD {
                match seen.get(&(t, seq)).map_or(0, Vec::len) {
                    0 => lost += 1,
                    1 => {}
                    _ => duplicated += 1,
                }
            }
        }
        assert_eq!((lost, duplicated), (0, 0), "lost, duplicated");
        let instances_seen: std::collections::BTreeSet<u64> =
            seen.values().flatten().copied().collect();
        assert!(instances_seen.len() > 1, "several instances took part: {instances_seen:?}");
        drop(seen);
        manager.shutdown();
    });
}

/// A factory whose second instance cannot set up.
struct Flaky {
    instance: u64,
    calls: Arc<AtomicU64>,
}

impl Plugin for Flaky {
    fn name(&self) -> &str {
        "flaky"
    }

    fn setup(&mut self, ctx: &PluginContext) -> Result<(), PluginError> {
        let calls = self.calls.clone();
        ctx.subscribe(
            "tick",
            Handler::sync(move |_| {
                calls.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }),
            (),
        )?;
        if self.instance == 1 {
            return Err(PluginError::other("config file is broken"));
        }
        Ok(())
    }
}

#[test]
fn a_reload_whose_setup_fails_keeps_the_old_instance() {
    let manager = PluginManager::new(Bus::builder().workers(2).build().unwrap());
    let (n, calls) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (n2, c2) = (n.clone(), calls.clone());
    manager
        .register(move || Flaky { instance: n2.fetch_add(1, Ordering::SeqCst), calls: c2.clone() })
        .unwrap();
    let err = manager.reload("flaky").unwrap_err();
    assert!(
        matches!(&err, PluginError::Setup { reason, .. } if reason.contains("config file is broken")),
        "{err}"
    );
    assert_eq!(manager.list()[0].state, PluginState::Running);
    assert_eq!(manager.bus().stats().subscriptions, 1, "the failed instance left nothing behind");
    manager.bus().publish(ev("tick")).unwrap();
    manager.bus().flush();
    assert_eq!(calls.load(Ordering::SeqCst), 1, "the old instance still runs, once per event");
    // The third instance sets up fine.
    manager.reload("flaky").unwrap();
    manager.bus().publish(ev("tick")).unwrap();
    manager.bus().flush();
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    manager.shutdown();
}

/// `register` takes no name any more (its first instance names the
/// plugin), so the mismatch can only come from a later instance: a reload.
#[test]
fn a_factory_must_build_the_plugin_it_is_registered_as() {
    let manager = PluginManager::new(Bus::new().unwrap());
    let builds = Arc::new(AtomicU64::new(0));
    let b = builds.clone();
    manager
        .register(move || {
            Counter::new(if b.fetch_add(1, Ordering::SeqCst) == 0 { "stats" } else { "quotes" })
        })
        .unwrap();
    let err = manager.reload("stats").unwrap_err();
    assert!(matches!(err, PluginError::NameMismatch { .. }), "{err}");
    let names: Vec<String> = manager.list().into_iter().map(|p| p.name).collect();
    assert_eq!(names, ["stats"], "nothing named quotes was loaded");
    manager.shutdown();
}

#[test]
fn a_late_joiner_replays_history_then_goes_live_with_no_gap_and_no_duplicate() {
    watchdog(60, || {
        for round in 0..5 {
            // One worker: live events arrive in publish order too, so the
            // whole sequence the joiner sees must be contiguous.
            let bus = Bus::builder().workers(1).history_size(1_000).build().unwrap();
            const EVENTS: u64 = 20_000;
            let started = Arc::new(AtomicU64::new(0));
            let publisher = {
                let (bus, started) = (bus.clone(), started.clone());
                thread::spawn(move || {
                    for seq in 0..EVENTS {
                        bus.publish(Event::new("tick", json!(seq), "clock")).unwrap();
                        started.store(seq + 1, Ordering::SeqCst);
                    }
                })
            };
            while started.load(Ordering::SeqCst) < 2_000 + round * 1_000 {
                thread::yield_now();
            }
            let seen = Arc::new(Mutex::new(Vec::new()));
            let s = seen.clone();
            bus.subscribe_replay(
                "tick",
                Handler::sync(move |e: &Event| {
                    s.lock().unwrap().push(e.data().as_u64().unwrap());
                    Ok(())
                }),
                "late",
                100,
            )
            .unwrap();
            publisher.join().unwrap();
            bus.flush();
            let seen = seen.lock().unwrap();
            assert!(seen.len() >= 100, "round {round}: {} events", seen.len());
            assert_eq!(*seen.last().unwrap(), EVENTS - 1);
            let gaps = seen.windows(2).filter(|w| w[1] != w[0] + 1).count();
            assert_eq!(gaps, 0, "round {round}: a gap, a duplicate or a reordering at the seam");
            bus.shutdown();
        }
    });
}
