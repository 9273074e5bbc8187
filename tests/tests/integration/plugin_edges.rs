//! The plugin host where user code misbehaves or re-enters: a factory that
//! panics or builds the wrong name, a `version()` that asks the manager, a
//! `teardown` that subscribes, and a reload's hand-over, which must count
//! one delivery per accepted publish and no call it skipped.

mod support;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use support::{by_pattern, ev, watchdog};
use switchboard::{Bus, Handler, Target};
use switchboard_host::{
    Plugin, PluginContext, PluginError, PluginManager, PluginState, WeakPluginManager,
};

/// Counts its calls of `tick` in a counter its factory shares.
struct Ticker {
    calls: Arc<AtomicU64>,
    /// Published from `setup`: an event and its clone.
    republish: bool,
}

impl Plugin for Ticker {
    fn name(&self) -> &str {
        "ticker"
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
        if self.republish {
            // Inside the reload window: both instances are subscribed and
            // claims are on. An event and its clone are two publishes.
            let event = ev("tick");
            // (Keeps their id: the context only sets the source.)
            ctx.publish_event(event.clone())?;
            ctx.publish_event(event)?;
        }
        Ok(())
    }
}

/// The reported case: claims were keyed by `EventId`, which a clone keeps,
/// so an event and its clone published during a reload ran once.
#[test]
fn an_event_and_its_clone_published_during_a_reload_are_two_deliveries() {
    watchdog(30, || {
        let manager = PluginManager::new(Bus::builder().workers(2).build().unwrap());
        let calls = Arc::new(AtomicU64::new(0));
        let (c, builds) = (calls.clone(), Arc::new(AtomicU64::new(0)));
        let b = builds.clone();
        manager
            .register(move || Ticker {
                calls: c.clone(),
                republish: b.fetch_add(1, Ordering::SeqCst) > 0,
            })
            .unwrap();
        manager.reload("ticker").unwrap();
        manager.bus().flush();
        assert_eq!(calls.load(Ordering::SeqCst), 2, "one call per accepted publish");
        manager.shutdown();
    });
}

/// `Stats::dispatched` counted the calls that lost a reload's hand-over
/// (20 real calls reported as 25). A refused claim is no call.
#[test]
fn calls_a_reload_hands_over_are_not_counted_as_dispatched() {
    watchdog(60, || {
        let manager = PluginManager::new(Bus::builder().workers(2).build().unwrap());
        let calls = Arc::new(AtomicU64::new(0));
        let c = calls.clone();
        manager.register(move || Ticker { calls: c.clone(), republish: false }).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flood = {
            let (bus, stop) = (manager.bus().clone(), stop.clone());
            thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    bus.publish(ev("tick")).unwrap();
                    n += 1;
                }
                n
            })
        };
        for _ in 0..20 {
            manager.reload("ticker").unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        let published = flood.join().unwrap();
        manager.bus().flush();
        assert_eq!(calls.load(Ordering::SeqCst), published, "each event handled once");
        assert_eq!(manager.bus().stats().dispatched, published, "and counted once");
        manager.shutdown();
    });
}

/// The reported case: a factory that panics in `reload` let the panic out
/// of `reload`, and the plugin stayed `Reloading` for good.
#[test]
fn a_factory_that_panics_in_reload_leaves_the_old_instance_running() {
    watchdog(30, || {
        let manager = PluginManager::new(Bus::builder().workers(2).build().unwrap());
        let (calls, builds) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (c, b) = (calls.clone(), builds.clone());
        manager
            .register(move || {
                if b.fetch_add(1, Ordering::SeqCst) == 1 {
                    panic!("the factory's config is broken");
                }
                Ticker { calls: c.clone(), republish: false }
            })
            .unwrap();
        let reloaded = catch_unwind(AssertUnwindSafe(|| manager.reload("ticker")));
        match reloaded {
            Ok(Err(PluginError::Setup { reason, .. })) => {
                assert!(reason.contains("config is broken"), "{reason}")
            }
            other => panic!("expected a Setup error, got {other:?}"),
        }
        let info = &manager.list()[0];
        assert_eq!(info.state, PluginState::Running, "the manager is usable");
        manager.bus().publish(ev("tick")).unwrap();
        manager.bus().flush();
        assert_eq!(calls.load(Ordering::SeqCst), 1, "the old instance still runs");
        manager.reload("ticker").expect("the next reload works");
        manager.unload("ticker").expect("and so does unload");
        assert!(manager.bus().subscriptions(Target::All).is_empty());
        manager.shutdown();
    });
}

/// A factory whose plugin has another name than its first instance's:
/// `NameMismatch` in `reload`. (`register` takes no name any more: the
/// first instance names the plugin, so there is nothing to mismatch there;
/// it loads under the instance's name.)
#[test]
fn a_factory_building_another_name_is_a_name_mismatch() {
    struct Named(&'static str);
    impl Plugin for Named {
        fn name(&self) -> &str {
            self.0
        }
        fn setup(&mut self, _ctx: &PluginContext) -> Result<(), PluginError> {
            Ok(())
        }
    }
    let manager = PluginManager::new(Bus::new().unwrap());
    manager.register(|| Named("b")).unwrap();
    assert!(manager.list().iter().any(|p| p.name == "b"), "named by its instance");
    let builds = Arc::new(AtomicU64::new(0));
    let b = builds.clone();
    manager
        .register(move || Named(if b.fetch_add(1, Ordering::SeqCst) == 0 { "a" } else { "z" }))
        .unwrap();
    match manager.reload("a") {
        Err(PluginError::NameMismatch { registered, instance }) => {
            assert_eq!((registered.as_str(), instance.as_str()), ("a", "z"));
        }
        other => panic!("expected NameMismatch, got {other:?}"),
    }
    let a = manager.list().into_iter().find(|p| p.name == "a").expect("a is loaded");
    assert_eq!(a.state, PluginState::Running);
    manager.shutdown();
}

/// Subscribes in `teardown`, and asks the manager for the list in
/// `version()`.
struct Awkward {
    manager: Arc<Mutex<Option<WeakPluginManager>>>,
}

impl Plugin for Awkward {
    fn name(&self) -> &str {
        "awkward"
    }

    fn version(&self) -> &str {
        if let Some(manager) = self.manager.lock().unwrap().as_ref().and_then(|m| m.upgrade()) {
            let _ = manager.list();
        }
        "1.0.0"
    }

    fn setup(&mut self, ctx: &PluginContext) -> Result<(), PluginError> {
        ctx.subscribe("a.*", Handler::sync(|_| Ok(())), ())?;
        Ok(())
    }

    fn teardown(&mut self, ctx: &PluginContext) -> Result<(), PluginError> {
        ctx.subscribe("late.*", Handler::sync(|_| Ok(())), ())?;
        Ok(())
    }
}

/// `version()` is user code: it used to run under the manager's lock, so
/// one that asks the manager deadlocked. What `teardown` subscribed used to
/// outlive the unloaded plugin.
#[test]
fn user_code_in_version_and_teardown_cannot_wedge_or_outlive_the_plugin() {
    watchdog(30, || {
        let manager = PluginManager::new(Bus::builder().workers(2).build().unwrap());
        let slot = Arc::new(Mutex::new(Some(manager.downgrade())));
        let s = slot.clone();
        manager.register(move || Awkward { manager: s.clone() }).unwrap();
        let listed = manager.list();
        assert_eq!(listed[0].version, "1.0.0");
        manager.reload("awkward").unwrap();
        assert!(
            by_pattern(manager.bus().subscriptions(Target::Plugin("awkward"))).contains_key("a.*")
        );
        assert!(
            !by_pattern(manager.bus().subscriptions(Target::Plugin("awkward")))
                .contains_key("late.*"),
            "the replaced instance's teardown subscription is gone"
        );
        manager.unload("awkward").unwrap();
        assert!(
            by_pattern(manager.bus().subscriptions(Target::Plugin("awkward"))).is_empty(),
            "nothing outlives it"
        );
        manager.shutdown();
    });
}
