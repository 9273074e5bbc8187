//! `BusBuilder::trace_dispatch`: each handler call runs in a `dispatch`
//! span whose parent is the span current where its event was published, so
//! a trace links each event's handling to the handling that caused it.
//!
//! A binary of its own: it installs a process-wide `tracing` subscriber (the
//! real span registry, with a layer recording each span's parent), which
//! the workers' threads see.

#[path = "integration/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use support::{ev, watchdog};
use switchboard::{Bus, Handler, HistoryQuery, SubscribeOptions};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::Subscriber;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::{LookupSpan, Registry};

/// A span as it was made: its name, its fields, and its parent's number.
#[derive(Clone, Debug)]
struct Made {
    number: usize,
    name: &'static str,
    fields: HashMap<String, String>,
    parent: Option<usize>,
}

/// Every span made, numbered in order (span ids are reused once a span
/// closes; numbers are not).
#[derive(Clone, Default)]
struct Spans(Arc<Mutex<SpansInner>>);

#[derive(Default)]
struct SpansInner {
    made: Vec<Made>,
    /// The number of the live span with this id.
    live: HashMap<u64, usize>,
}

struct Fields<'a>(&'a mut HashMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Spans {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = HashMap::new();
        attrs.record(&mut Fields(&mut fields));
        // The registry resolved the parent already: explicit, or the
        // thread's current span.
        let parent_id = ctx.span(id).and_then(|span| span.parent()).map(|parent| parent.id());
        let mut inner = self.0.lock().unwrap();
        let number = inner.made.len();
        let parent = parent_id.and_then(|p| inner.live.get(&p.into_u64()).copied());
        inner.made.push(Made { number, name: attrs.metadata().name(), fields, parent });
        inner.live.insert(id.into_u64(), number);
    }
}

impl Spans {
    /// The recorder the process-wide subscriber feeds.
    fn installed() -> &'static Spans {
        static SPANS: OnceLock<Spans> = OnceLock::new();
        SPANS.get_or_init(|| {
            let spans = Spans::default();
            tracing::subscriber::set_global_default(Registry::default().with(spans.clone()))
                .expect("no other global subscriber in this binary");
            spans
        })
    }

    /// The spans whose field `event` starts with `prefix`.
    fn of(&self, prefix: &str) -> Vec<Made> {
        let inner = self.0.lock().unwrap();
        inner
            .made
            .iter()
            .filter(|m| m.fields.get("event").is_some_and(|e| e.starts_with(prefix)))
            .cloned()
            .collect()
    }

    fn get(&self, number: usize) -> Made {
        self.0.lock().unwrap().made[number].clone()
    }
}

/// Publishes `next` (if any) from its call.
fn publishing(next: Option<&'static str>) -> Handler {
    Handler::sync(move |_| {
        if let Some(next) = next {
            Bus::current().unwrap().publish(ev(next))?;
        }
        Ok(())
    })
}

/// The dispatch span of `event` for `plugin`, exactly one.
fn dispatch_of<'a>(spans: &'a [Made], event: &str, plugin: &str) -> &'a Made {
    let found: Vec<&Made> = spans
        .iter()
        .filter(|m| {
            m.name == "dispatch" && m.fields["event"] == event && m.fields["plugin"] == plugin
        })
        .collect();
    assert_eq!(found.len(), 1, "{event} for {plugin}: {spans:#?}");
    found[0]
}

#[test]
fn a_dispatch_span_is_the_child_of_the_span_its_event_was_published_in() {
    let recorder = Spans::installed();
    watchdog(30, || {
        let bus = Bus::builder().workers(2).history_size(100).trace_dispatch(true).build().unwrap();
        // chat → (inline) trivia round → (blocking) score → (ordered) board;
        // the chat line has a second, plain subscriber.
        bus.subscribe("tr.chat.line", publishing(Some("tr.trivia.round")), "trivia").unwrap();
        bus.subscribe("tr.chat.line", publishing(None), "logger").unwrap();
        let blocking = SubscribeOptions::new().plugin("scores").blocking();
        bus.subscribe("tr.trivia.*", publishing(Some("tr.score.changed")), blocking).unwrap();
        let ordered = SubscribeOptions::new().plugin("board").ordered();
        bus.subscribe("tr.score.*", publishing(None), ordered).unwrap();

        let gateway = tracing::info_span!("gateway", user = "ada");
        gateway.in_scope(|| bus.publish(ev("tr.chat.line"))).unwrap();
        drop(gateway);
        // Published outside any span: its dispatch span is a root.
        bus.subscribe("tr.alone", publishing(None), "lonely").unwrap();
        bus.publish(ev("tr.alone")).unwrap();
        bus.flush();

        let spans = recorder.of("tr.");
        let history = bus.history(HistoryQuery::new().matching("tr.*")).unwrap();
        let seq = |name: &str| {
            history.iter().find(|e| e.name() == name).and_then(|e| e.sequence()).unwrap()
        };
        let chat = dispatch_of(&spans, "tr.chat.line", "trivia");
        let logger = dispatch_of(&spans, "tr.chat.line", "logger");
        let round = dispatch_of(&spans, "tr.trivia.round", "scores");
        let score = dispatch_of(&spans, "tr.score.changed", "board");

        // The chat line's calls are children of the publisher's span.
        let gateway = recorder.get(chat.parent.expect("the chat line's span has a parent"));
        assert_eq!((gateway.name, gateway.fields["user"].as_str()), ("gateway", "ada"));
        assert_eq!(logger.parent, chat.parent);
        // Each hop's span is the child of the call that published its event.
        assert_eq!(round.parent, Some(chat.number), "{spans:#?}");
        assert_eq!(score.parent, Some(round.number), "{spans:#?}");
        // The fields: the event, its sequence, the subscription, the parent.
        assert_eq!(chat.fields["sequence"], seq("tr.chat.line").to_string());
        assert_eq!(chat.fields["pattern"], "tr.chat.line");
        assert!(!chat.fields.contains_key("parent.sequence"), "{chat:?}");
        assert_eq!(round.fields["pattern"], "tr.trivia.*");
        assert_eq!(round.fields["sequence"], seq("tr.trivia.round").to_string());
        assert_eq!(round.fields["parent.sequence"], seq("tr.chat.line").to_string());
        let chat_id = history.iter().find(|e| e.name() == "tr.chat.line").unwrap().id();
        assert_eq!(round.fields["parent.id"], chat_id.to_string());
        assert_eq!(score.fields["parent.sequence"], seq("tr.trivia.round").to_string());

        let alone = dispatch_of(&spans, "tr.alone", "lonely");
        assert_eq!(alone.parent, None, "{alone:?}");
        bus.shutdown();
    });
}

#[test]
fn a_replayed_call_runs_in_a_dispatch_span_too() {
    let recorder = Spans::installed();
    watchdog(30, || {
        let bus = Bus::builder().history_size(100).trace_dispatch(true).build().unwrap();
        let publisher = tracing::info_span!("publisher");
        publisher.in_scope(|| bus.publish(ev("rp.old"))).unwrap();
        drop(publisher);
        // Dispatched before the replay subscribes: one call of the
        // replayer for it, the replayed one (a live call the replay
        // buffers has a span of its own too).
        bus.flush();
        bus.subscribe("rp.child", publishing(None), "sink").unwrap();
        bus.subscribe_replay("rp.old", publishing(Some("rp.child")), "replayer", 10).unwrap();
        bus.flush();
        let spans = recorder.of("rp.");
        let replayed = dispatch_of(&spans, "rp.old", "replayer");
        assert_eq!(recorder.get(replayed.parent.unwrap()).name, "publisher");
        let child = dispatch_of(&spans, "rp.child", "sink");
        assert_eq!(child.parent, Some(replayed.number));
        bus.shutdown();
    });
}

#[cfg(feature = "tokio")]
#[test]
fn an_async_call_is_polled_in_its_dispatch_span_across_awaits() {
    let recorder = Spans::installed();
    watchdog(30, || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let bus = Bus::builder()
            .runtime(rt.handle().clone())
            .history_size(100)
            .trace_dispatch(true)
            .build()
            .unwrap();
        let awaiting = Handler::future(|_event: Arc<switchboard::Event>| async move {
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            Bus::current().unwrap().publish(ev("as.child"))?;
            Ok(())
        });
        bus.subscribe("as.parent", awaiting, "waiter").unwrap();
        bus.subscribe("as.child", publishing(None), "sink").unwrap();
        bus.publish(ev("as.parent")).unwrap();
        rt.block_on(bus.flush_async());
        let spans = recorder.of("as.");
        let parent = dispatch_of(&spans, "as.parent", "waiter");
        let child = dispatch_of(&spans, "as.child", "sink");
        assert_eq!(child.parent, Some(parent.number), "{spans:#?}");
        bus.shutdown();
    });
}

#[test]
fn without_the_option_no_dispatch_span_is_made() {
    let recorder = Spans::installed();
    watchdog(30, || {
        let bus = Bus::builder().history_size(100).build().unwrap();
        bus.subscribe("off.chat", publishing(Some("off.round")), "trivia").unwrap();
        bus.subscribe(
            "off.round",
            publishing(None),
            SubscribeOptions::new().plugin("scores").blocking(),
        )
        .unwrap();
        tracing::info_span!("gateway").in_scope(|| bus.publish(ev("off.chat"))).unwrap();
        bus.flush();
        assert!(recorder.of("off.").is_empty());
        // The parent is recorded all the same.
        let round = &bus.history(HistoryQuery::new().matching("off.round")).unwrap()[0];
        assert!(round.parent().is_some());
        bus.shutdown();
    });
}
