//! An observed bus: per-subscription call counts for every handler kind,
//! sampled timings reaching the observer's per-subscription sink, and an
//! observer that calls back into the bus.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use support::{ev, watchdog};
use switchboard::{
    Bus, CallObserver, Event, Handler, Observer, SubscribeOptions, Subscribed, Target,
};

/// Records each subscription it heard of, and each sample, by plugin.
#[derive(Default)]
struct Recording {
    every: u32,
    subscribed: Mutex<Vec<(String, String, String)>>,
    samples: Arc<Mutex<Vec<(String, Duration, Duration)>>>,
    /// When set, `subscribed` reads the bus's subscriptions: user code
    /// calling back into the bus from the observer.
    bus: OnceLock<switchboard::WeakBus>,
    seen_by_reentry: AtomicU64,
}

struct Sink {
    plugin: String,
    samples: Arc<Mutex<Vec<(String, Duration, Duration)>>>,
}

impl CallObserver for Sink {
    fn sampled(&self, waited: Duration, ran: Duration) {
        self.samples.lock().unwrap().push((self.plugin.clone(), waited, ran));
    }
}

impl Observer for Recording {
    fn subscribed(&self, s: &Subscribed<'_>) -> Arc<dyn CallObserver> {
        self.subscribed.lock().unwrap().push((
            s.bus.to_owned(),
            s.plugin.to_owned(),
            s.pattern.to_owned(),
        ));
        if let Some(bus) = self.bus.get().and_then(|w| w.upgrade()) {
            let n = bus.subscriptions(Target::All).len() as u64;
            self.seen_by_reentry.store(n + 1, Ordering::SeqCst);
        }
        Arc::new(Sink { plugin: s.plugin.to_owned(), samples: self.samples.clone() })
    }

    fn sample_every(&self) -> u32 {
        self.every
    }
}

fn counting() -> Handler {
    Handler::sync(|_: &Event| Ok(()))
}

#[test]
fn every_handler_kind_counts_its_calls_and_reports_sampled_timings() {
    watchdog(60, || {
        let observer = Arc::new(Recording { every: 1, ..Default::default() });
        let bus = Bus::builder().name("obs").observer(observer.clone()).build().unwrap();
        bus.subscribe("k.*", counting(), "inline").unwrap();
        bus.subscribe("k.*", counting(), SubscribeOptions::new().plugin("ordered").ordered())
            .unwrap();
        bus.subscribe("k.*", counting(), SubscribeOptions::new().plugin("blocking").blocking())
            .unwrap();
        bus.subscribe(
            "other",
            Handler::sync(|_: &Event| Err("no".into())),
            SubscribeOptions::new().plugin("failing"),
        )
        .unwrap();
        // An hour-old event: the sampled wait says so.
        let old = SystemTime::now() - Duration::from_secs(3600);
        for _ in 0..10 {
            bus.publish(ev("k.x").with_timestamp(old)).unwrap();
        }
        bus.publish(ev("other")).unwrap();
        bus.flush();
        // A replayed call counts too: 10 from history, then none live.
        bus.subscribe_replay("k.*", counting(), SubscribeOptions::new().plugin("late"), 10)
            .unwrap();
        bus.flush();
        let calls: Vec<(String, u64, u64)> = bus
            .subscriptions(Target::All)
            .into_iter()
            .map(|s| (s.plugin, s.stats.calls, s.stats.errors))
            .collect();
        assert_eq!(
            calls,
            [
                ("inline".to_owned(), 10, 0),
                ("ordered".to_owned(), 10, 0),
                ("blocking".to_owned(), 10, 0),
                ("failing".to_owned(), 1, 1),
                ("late".to_owned(), 10, 0),
            ]
        );
        assert_eq!(bus.stats().dispatched, 41, "the per-subscription counts add up");
        let samples = observer.samples.lock().unwrap().clone();
        assert_eq!(samples.len(), 41, "every call sampled at sample_every 1");
        for (plugin, waited, _ran) in &samples {
            if plugin != "failing" {
                assert!(*waited >= Duration::from_secs(3599), "{plugin}: {waited:?}");
            }
        }
        let heard = observer.subscribed.lock().unwrap().clone();
        assert_eq!(heard.len(), 5);
        assert!(heard.iter().all(|(bus, _, _)| bus == "obs"));
        assert_eq!(heard[1], ("obs".into(), "ordered".into(), "k.*".into()));
        bus.shutdown();
    });
}

#[test]
fn a_busy_thread_times_at_least_one_call_in_sample_every_and_a_quiet_one_every_call() {
    watchdog(60, || {
        let observer = Arc::new(Recording { every: 8, ..Default::default() });
        let bus = Bus::builder().workers(1).observer(observer.clone()).build().unwrap();
        bus.subscribe("x", counting(), "a").unwrap();
        // Busy: calls far closer than 200 µs apart, whatever else runs on
        // the machine: the worker is held while all of them are published,
        // then makes them back to back. The sampler starts at every call and
        // doubles to the cap (1, 2, 4, then 8).
        let hold = support::hold_worker(&bus);
        for _ in 0..8000 {
            bus.publish(ev("x")).unwrap();
        }
        drop(hold);
        bus.flush();
        assert_eq!(bus.subscriptions(Target::All)[0].stats.calls, 8000);
        let samples_of_a =
            || observer.samples.lock().unwrap().iter().filter(|s| s.0 == "a").count();
        let busy = samples_of_a();
        assert!((1000..=1003).contains(&busy), "{busy} samples of 8000 calls");
        // Quiet: a call every few milliseconds. Once the sampler has come
        // back down from the cap (halving at each timed call), each is timed.
        let quiet = |n: usize| {
            for _ in 0..n {
                bus.publish(ev("x")).unwrap();
                bus.flush();
                std::thread::sleep(Duration::from_millis(2));
            }
            samples_of_a()
        };
        let settled = quiet(20);
        assert_eq!(quiet(20) - settled, 20, "every quiet call timed");
        bus.shutdown();
    });
}

#[test]
fn an_unobserved_bus_counts_no_calls_per_subscription() {
    let bus = Bus::new().unwrap();
    bus.subscribe("*", counting(), "a").unwrap();
    bus.publish(ev("x")).unwrap();
    bus.flush();
    assert_eq!(bus.stats().dispatched, 1);
    assert_eq!(bus.subscriptions(Target::All)[0].stats.calls, 0);
}

#[test]
fn an_observer_may_call_back_into_the_bus_while_it_hears_of_a_subscription() {
    watchdog(30, || {
        let observer = Arc::new(Recording { every: 1, ..Default::default() });
        let bus = Bus::builder().observer(observer.clone()).build().unwrap();
        observer.bus.set(bus.downgrade()).ok().unwrap();
        bus.subscribe("a", counting(), "one").unwrap();
        bus.subscribe("b", counting(), "two").unwrap();
        // The second subscribe's observer saw the first subscription.
        assert_eq!(observer.seen_by_reentry.load(Ordering::SeqCst), 2);
        bus.shutdown();
    });
}

#[cfg(feature = "tokio")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_calls_are_counted_and_timed_from_start_to_end() {
    let observer = Arc::new(Recording { every: 1, ..Default::default() });
    let bus = Bus::builder().observer(observer.clone()).build().unwrap();
    bus.subscribe(
        "a.*",
        Handler::future(|_e: Arc<Event>| async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok(())
        }),
        "async",
    )
    .unwrap();
    for _ in 0..3 {
        bus.publish_async(ev("a.x")).await.unwrap();
    }
    bus.flush_async().await;
    assert_eq!(bus.subscriptions(Target::All)[0].stats.calls, 3);
    let samples = observer.samples.lock().unwrap().clone();
    assert_eq!(samples.len(), 3);
    assert!(samples.iter().all(|(_, _, ran)| *ran >= Duration::from_millis(19)), "{samples:?}");
    bus.shutdown_async().await;
}

#[test]
fn a_subscription_counts_its_panics_apart_from_its_errors() {
    watchdog(30, || {
        let bus = Bus::new().unwrap();
        let n = Arc::new(AtomicU64::new(0));
        let calls = n.clone();
        bus.subscribe(
            "x",
            Handler::sync(move |_: &Event| {
                if calls.fetch_add(1, Ordering::SeqCst).is_multiple_of(2) {
                    panic!("even calls panic")
                }
                Err("odd calls fail".into())
            }),
            "flaky",
        )
        .unwrap();
        for _ in 0..5 {
            bus.publish(ev("x")).unwrap();
        }
        bus.flush();
        let stats = &bus.subscriptions(Target::All)[0].stats;
        assert_eq!((stats.errors, stats.panics, stats.timeouts), (5, 3, 0));
        bus.shutdown();
    });
}

#[cfg(feature = "tokio")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_async_subscription_counts_its_timeouts_apart_from_its_errors() {
    let bus = Bus::new().unwrap();
    bus.subscribe(
        "slow",
        Handler::future(|_e: Arc<Event>| async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok(())
        }),
        SubscribeOptions::new().plugin("slow").timeout(Duration::from_millis(20)),
    )
    .unwrap();
    bus.publish_async(ev("slow")).await.unwrap();
    bus.flush_async().await;
    let stats = &bus.subscriptions(Target::All)[0].stats;
    assert_eq!((stats.errors, stats.panics, stats.timeouts), (1, 0, 1));
    bus.shutdown_async().await;
}
