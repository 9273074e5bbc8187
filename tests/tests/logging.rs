//! Losses are logged at `warn`, rate-limited, so a user with a `tracing`
//! subscriber sees them without a line per event. (Its own test binary: it
//! installs a process-wide subscriber.)

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use switchboard::{Bus, Event, Handler, Overflow, SubscribeOptions};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Level, Metadata, Subscriber};

/// Keeps every event logged at `warn` or above, as text.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<String>>>);

struct Text(String);

impl Visit for Text {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, "{}={:?} ", field.name(), value);
    }
}

impl Subscriber for Capture {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        *metadata.level() <= Level::WARN
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut text = Text(String::new());
        event.record(&mut text);
        self.0.lock().unwrap().push(text.0);
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

fn ev(name: &str) -> Event {
    Event::new(name, serde_json::json!({}), "test")
}

#[test]
fn losses_under_a_lossy_policy_are_logged_at_warn_at_most_once_a_second() {
    let capture = Capture::default();
    tracing::subscriber::set_global_default(capture.clone()).unwrap();
    let bus = Bus::builder().workers(1).build().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let rx = Mutex::new(rx);
    // An ordered subscription is fed by the publisher itself, so its
    // losses happen (and are logged) here, deterministically.
    let options = SubscribeOptions::new().ordered().backlog(2).overflow(Overflow::Shed);
    let id = bus
        .subscribe(
            "chat.*",
            Handler::sync(move |_| {
                let _ = rx.lock().unwrap().recv();
                Ok(())
            }),
            options.plugin("logger"),
        )
        .unwrap();
    for _ in 0..500 {
        bus.publish(ev("chat.line")).unwrap();
    }
    let dropped = bus.subscriptions(id).first().map(|s| s.stats.clone()).unwrap().backlog_dropped;
    assert!(dropped >= 400, "the backlog shed: {dropped}");
    let lines: Vec<String> = capture.0.lock().unwrap().clone();
    let losses: Vec<&String> = lines.iter().filter(|l| l.contains("backlog")).collect();
    assert!(!losses.is_empty(), "no warn line for {dropped} losses: {lines:?}");
    assert!(losses.len() <= 2, "not a line per loss: {} lines", losses.len());
    assert!(losses[0].contains("logger") && losses[0].contains("chat.*"), "{}", losses[0]);
    drop(tx);
    bus.shutdown();
}
