//! Helpers shared by the integration tests.

#![allow(dead_code)] // each test file uses its own part of this

use std::collections::BTreeMap;
use std::panic::resume_unwind;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchboard::{Bus, Event, Handler, HandlerResult, SubscriptionInfo};

/// An event with an empty JSON object as payload.
pub(crate) fn ev(name: &str) -> Event {
    Event::new(name, serde_json::json!({}), "test")
}

/// Runs `f` on its own thread and fails the test if it has not finished
/// within `secs` seconds, so a deadlock fails in seconds instead of hanging
/// the test run. A panic in `f` is passed on.
pub(crate) fn watchdog<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let watched = std::thread::Builder::new()
        .name("watched".into())
        .spawn(move || {
            let out = f();
            let _ = done_tx.send(());
            out
        })
        .expect("spawn the watched thread");
    match done_rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(()) => watched.join().unwrap_or_else(|panic| resume_unwind(panic)),
        Err(RecvTimeoutError::Disconnected) => match watched.join() {
            Ok(out) => out,
            Err(panic) => resume_unwind(panic),
        },
        Err(RecvTimeoutError::Timeout) => {
            panic!("deadlock: still running after {secs} s")
        }
    }
}

/// Polls `cond` every millisecond until it holds; fails after `secs` seconds.
pub(crate) fn eventually(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Keeps a one-worker bus's worker busy inside a handler until the returned
/// sender sends (or is dropped), so that events can be queued behind it.
pub(crate) fn hold_worker(bus: &Bus) -> mpsc::Sender<()> {
    let (tx, rx) = mpsc::channel::<()>();
    let rx = Mutex::new(rx);
    let started = Arc::new(AtomicBool::new(false));
    let s = started.clone();
    bus.subscribe(
        "block",
        Handler::sync(move |_| {
            s.store(true, Ordering::SeqCst);
            let _ = rx.lock().unwrap().recv();
            Ok(())
        }),
        "holder",
    )
    .unwrap();
    bus.publish(ev("block")).unwrap();
    while !started.load(Ordering::SeqCst) {
        std::thread::yield_now();
    }
    tx
}

/// The subscriptions `Bus::subscriptions` listed, as pattern -> plugins
/// (each pattern's plugins in subscription order), the way tests compare
/// them.
pub(crate) fn by_pattern(subs: Vec<SubscriptionInfo>) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for sub in subs {
        out.entry(sub.pattern).or_default().push(sub.plugin);
    }
    out
}

/// A handler that records the names it sees, in order, and the record.
#[allow(clippy::type_complexity)]
pub(crate) fn recorder(
) -> (Arc<Mutex<Vec<String>>>, impl Fn(&Event) -> HandlerResult + Send + Sync + Clone) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let l = log.clone();
    (log, move |e: &Event| {
        l.lock().unwrap().push(e.name().to_owned());
        Ok(())
    })
}

/// A latch a handler waits on until the test opens it.
#[derive(Clone, Default)]
pub(crate) struct Latch(Arc<(Mutex<bool>, std::sync::Condvar)>);

impl Latch {
    pub(crate) fn wait(&self) {
        let (open, changed) = &*self.0;
        let mut open = open.lock().unwrap();
        while !*open {
            open = changed.wait(open).unwrap();
        }
    }

    pub(crate) fn open(&self) {
        let (open, changed) = &*self.0;
        *open.lock().unwrap() = true;
        changed.notify_all();
    }
}

/// Calls `flush` on its bus when dropped, then says so: for handlers whose
/// `Drop` uses the bus.
pub(crate) struct FlushOnDrop {
    pub(crate) bus: switchboard::WeakBus,
    pub(crate) dropped: Arc<AtomicBool>,
}

impl Drop for FlushOnDrop {
    fn drop(&mut self) {
        if let Some(bus) = self.bus.upgrade() {
            bus.flush();
        }
        self.dropped.store(true, Ordering::SeqCst);
    }
}

/// A payload that runs a closure when dropped.
pub(crate) struct OnDrop(Mutex<Option<Box<dyn FnOnce() + Send>>>);

impl OnDrop {
    pub(crate) fn new(f: impl FnOnce() + Send + 'static) -> OnDrop {
        OnDrop(Mutex::new(Some(Box::new(f))))
    }
}

impl serde::Serialize for OnDrop {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_unit()
    }
}

impl Drop for OnDrop {
    fn drop(&mut self) {
        if let Some(f) = self.0.lock().unwrap().take() {
            f();
        }
    }
}
