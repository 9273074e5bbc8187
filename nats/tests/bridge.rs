//! The bridge against a real NATS server: exactly-once exchange, overlapping
//! imports, awkward names, metadata, typed payloads, duplicates, republished
//! clones, refused imports, invalid messages and invalid configuration,
//! parents.

mod common;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime};

use common::{eventually, shared_server, unique_prefix};
use futures::TryStreamExt;
use serde_json::json;
use switchboard::{Bus, Cause, Event, Handler, HistoryQuery, Overflow, Priority, PublishError};
use switchboard_nats::{Bridge, BridgeConfig, BridgeError, JetStreamConfig, Mode};

/// Every event a bus's handlers saw, by id.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<Event>>>);

impl Seen {
    fn on(bus: &Bus, pattern: &str) -> Seen {
        let seen = Seen::default();
        let s = seen.clone();
        bus.subscribe(
            pattern,
            Handler::sync(move |e: &Event| {
                s.0.lock().unwrap().push(e.clone());
                Ok(())
            }),
            "observer",
        )
        .expect("subscribe");
        seen
    }

    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    fn events(&self) -> Vec<Event> {
        self.0.lock().unwrap().clone()
    }

    /// How many times each id was seen.
    fn counts(&self) -> HashMap<u128, usize> {
        let mut out = HashMap::new();
        for e in self.0.lock().unwrap().iter() {
            *out.entry(e.id().as_u128()).or_insert(0) += 1;
        }
        out
    }

    fn names(&self) -> Vec<String> {
        let mut v: Vec<String> =
            self.0.lock().unwrap().iter().map(|e| e.name().to_owned()).collect();
        v.sort();
        v
    }
}

const WAIT: Duration = Duration::from_secs(10);

/// After a bus's count settles, extra deliveries would show up within this.
const QUIET: Duration = Duration::from_millis(300);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_buses_bridging_everything_both_ways_see_each_event_exactly_once() {
    let Some(url) = shared_server() else { return };
    let prefix = unique_prefix("both_ways");
    let (a, b) = (Bus::new().unwrap(), Bus::new().unwrap());
    let config =
        |name: &str| BridgeConfig::new(&url).prefix(&prefix).export("*").import("*").instance(name);
    let bridge_a = Bridge::start(&a, config("shard-a")).await.expect("bridge a");
    let bridge_b = Bridge::start(&b, config("shard-b")).await.expect("bridge b");
    let (seen_a, seen_b) = (Seen::on(&a, "*"), Seen::on(&b, "*"));

    let mut sent_a = Vec::new();
    let mut sent_b = Vec::new();
    for i in 0..300u64 {
        let ea = Event::new(format!("trivia.q{i}"), json!({"i": i}), "trivia")
            .with_priority(Priority::High);
        sent_a.push(ea.id().as_u128());
        a.publish(ea).unwrap();
        let eb = Event::new(format!("stats.s{i}"), json!([i, "x"]), "stats plugin");
        sent_b.push(eb.id().as_u128());
        b.publish(eb).unwrap();
    }
    assert!(
        eventually(WAIT, || seen_a.len() >= 600 && seen_b.len() >= 600).await,
        "a saw {}, b saw {}",
        seen_a.len(),
        seen_b.len()
    );
    tokio::time::sleep(QUIET).await;
    for (bus, seen) in [("a", &seen_a), ("b", &seen_b)] {
        let counts = seen.counts();
        assert_eq!(seen.len(), 600, "bus {bus} saw extra deliveries");
        for id in sent_a.iter().chain(&sent_b) {
            assert_eq!(counts.get(id), Some(&1), "bus {bus}: event {id:x} not seen exactly once");
        }
    }
    // Imported events keep what the publisher gave them, and say where
    // they came from.
    let original: HashMap<u128, Event> =
        seen_a.events().into_iter().map(|e| (e.id().as_u128(), e)).collect();
    for e in seen_b.events().into_iter().filter(|e| e.name().starts_with("trivia.")) {
        let o = &original[&e.id().as_u128()];
        assert_eq!(e.origin(), Some("shard-a"));
        assert_eq!(o.origin(), None);
        assert_eq!(
            (e.name(), e.source(), e.priority(), e.data()),
            (o.name(), o.source(), o.priority(), o.data())
        );
        assert_eq!(e.timestamp(), o.timestamp());
    }
    let sb = seen_a.events().into_iter().find(|e| e.name() == "stats.s7").unwrap();
    assert_eq!((sb.source(), sb.data()), ("stats plugin", &json!([7, "x"])));

    let (sa, sb) = (bridge_a.stats(), bridge_b.stats());
    assert_eq!((sa.exported, sa.imported, sa.dropped), (300, 300, 0), "{sa:?}");
    assert_eq!((sb.exported, sb.imported, sb.dropped), (300, 300, 0), "{sb:?}");
    assert_eq!((sa.echoes_skipped, sb.echoes_skipped), (300, 300));
    assert!(sa.connected && sb.connected);
    assert_eq!(bridge_a.shutdown(Duration::from_secs(5)).await, 0);
    assert_eq!(bridge_b.shutdown(Duration::from_secs(5)).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_imports_deliver_once_and_only_what_matches() {
    let Some(url) = shared_server() else { return };
    let prefix = unique_prefix("overlap");
    let (a, b) = (Bus::new().unwrap(), Bus::new().unwrap());
    let _ea = Bridge::start(&a, BridgeConfig::new(&url).prefix(&prefix).export("*")).await.unwrap();
    let config = BridgeConfig::new(&url)
        .prefix(&prefix)
        .import("trivia.*")
        .import("trivia.started")
        .import("*.started")
        .import("t?ivia.*")
        .import("quote.[a-c]*");
    let ib = Bridge::start(&b, config).await.unwrap();
    let seen = Seen::on(&b, "*");
    // A's own exports also reach its own import-free bridge: nothing.
    let names = [
        "trivia.started",
        "trivia.ended",
        "quote.started",
        "quote.added",
        "quote.removed",
        "trivia",
        "stats.count",
        "trivia.round.won",
    ];
    for n in names {
        a.publish(Event::new(n, json!(null), "test")).unwrap();
    }
    let expected =
        ["quote.added", "quote.started", "trivia.ended", "trivia.round.won", "trivia.started"]
            .map(String::from);
    assert!(eventually(WAIT, || seen.len() >= expected.len()).await);
    tokio::time::sleep(QUIET).await;
    assert_eq!(seen.names(), expected);
    assert_eq!(ib.stats().imported, expected.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_that_are_not_subjects_cross_intact() {
    let Some(url) = shared_server() else { return };
    let prefix = unique_prefix("names");
    let (a, b) = (Bus::new().unwrap(), Bus::new().unwrap());
    let _ea = Bridge::start(&a, BridgeConfig::new(&url).prefix(&prefix).export("*")).await.unwrap();
    let _ib = Bridge::start(&b, BridgeConfig::new(&url).prefix(&prefix).import("*")).await.unwrap();
    let seen = Seen::on(&b, "*");
    let mut names = vec![
        "chat message",
        "a..b",
        ".x",
        "y.",
        "*",
        ">",
        "a.*.>",
        "100%",
        "%41",
        "tab\tnew\nline",
        "🎲.roll",
        "ünï",
    ];
    for n in &names {
        a.publish(Event::new(*n, json!(n), "te st.src")).unwrap();
    }
    assert!(eventually(WAIT, || seen.len() >= names.len()).await, "saw {:?}", seen.names());
    names.sort();
    assert_eq!(seen.names(), names);
    for e in seen.events() {
        assert_eq!(e.data(), &json!(e.name()));
        assert_eq!(e.source(), "te st.src");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_payloads_travel_through_serde() {
    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct QuoteAdded {
        id: u32,
        text: String,
    }
    let Some(url) = shared_server() else { return };
    let prefix = unique_prefix("typed");
    let (a, b) = (Bus::new().unwrap(), Bus::new().unwrap());
    let _ea =
        Bridge::start(&a, BridgeConfig::new(&url).prefix(&prefix).export("quote.*")).await.unwrap();
    let _ib =
        Bridge::start(&b, BridgeConfig::new(&url).prefix(&prefix).import("quote.*")).await.unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    b.subscribe(
        "quote.added",
        Handler::typed(move |_e: &Event, q: &QuoteAdded| {
            g.lock().unwrap().push(q.text.clone());
            Ok(())
        }),
        "search",
    )
    .unwrap();
    a.publish(Event::typed("quote.added", QuoteAdded { id: 7, text: "to be".into() }, "quotes"))
        .unwrap();
    assert!(eventually(WAIT, || got.lock().unwrap().len() == 1).await);
    assert_eq!(*got.lock().unwrap(), ["to be"]);
    assert_eq!(b.stats().handler_errors, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_events_parent_crosses_in_its_header_and_the_cascade_goes_on_on_the_other_side() {
    let Some(url) = shared_server() else { return };
    let prefix = unique_prefix("parent");
    let (a, b) = (Bus::new().unwrap(), Bus::new().unwrap());
    let _ea = Bridge::start(&a, BridgeConfig::new(&url).prefix(&prefix).export("trivia.*"))
        .await
        .unwrap();
    let ib = Bridge::start(&b, BridgeConfig::new(&url).prefix(&prefix).import("trivia.*"))
        .await
        .unwrap();
    let seen = Seen::on(&b, "trivia.*");
    // On a, a chat line's handler starts a round; on b, the imported
    // round's handler updates a score.
    let next = |name: &'static str| {
        Handler::sync(move |_| {
            Bus::current().unwrap().publish(Event::new(name, json!(1), "t"))?;
            Ok(())
        })
    };
    a.subscribe("chat.line", next("trivia.round"), "trivia").unwrap();
    b.subscribe("trivia.round", next("score.changed"), "scores").unwrap();
    let line = a.publish(Event::new("chat.line", json!("2+2?"), "gateway")).unwrap();
    a.publish(Event::new("trivia.plain", json!(2), "trivia")).unwrap();
    assert!(eventually(WAIT, || seen.len() == 2).await, "{:?}", ib.stats());
    b.flush_async().await;
    let line_seq =
        a.history(HistoryQuery::new().matching("chat.line")).unwrap()[0].sequence().unwrap();
    let events = seen.events();
    let round = events.iter().find(|e| e.name() == "trivia.round").unwrap();
    // The parent as a's handler recorded it: id, sequence and bus are a's.
    assert_eq!(round.parent(), Some(&Cause::new(line).with_sequence(a.instance(), line_seq)));
    let plain = events.iter().find(|e| e.name() == "trivia.plain").unwrap();
    assert_eq!(plain.parent(), None);
    // b's history walks the cascade from a's chat line, which b never had.
    let cascade = b.history(HistoryQuery::new().caused_by(line)).unwrap();
    let names: Vec<&str> = cascade.iter().map(|e| e.name()).collect();
    assert_eq!(names, ["score.changed", "trivia.round"]);
    let score = &cascade[0];
    assert_eq!(score.parent().and_then(Cause::bus), Some(b.instance()));
    assert_eq!(ib.stats().invalid, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_of_one_publish_and_foreign_messages_are_dropped_and_counted() {
    let Some(url) = shared_server() else { return };
    let prefix = unique_prefix("dups");
    let b = Bus::new().unwrap();
    let ib = Bridge::start(&b, BridgeConfig::new(&url).prefix(&prefix).import("*")).await.unwrap();
    let seen = Seen::on(&b, "*");
    let raw = async_nats::connect(url.as_str()).await.unwrap();
    let mut keyless = async_nats::HeaderMap::new();
    keyless.insert("Switchboard-Origin", "elsewhere");
    keyless.insert("Switchboard-Id", "000000000000000000000000000000ab");
    keyless.insert("Switchboard-Source", "raw");
    // The publish key: the exporting bus's instance, then the sequence.
    let keyed = |key: &'static str| {
        let mut h = keyless.clone();
        h.insert("Switchboard-Key", key);
        h
    };
    let headers = keyed("00000000000000070000000000000001");
    let subject = format!("{prefix}.trivia.started");
    // One publish twice (a redelivery): once. The same event published
    // again (a clone: same id, a new publish key): delivered again.
    raw.publish_with_headers(subject.clone(), headers.clone(), "1".into()).await.unwrap();
    raw.publish_with_headers(subject.clone(), headers.clone(), "1".into()).await.unwrap();
    let again = keyed("00000000000000070000000000000002");
    raw.publish_with_headers(subject.clone(), again, "1".into()).await.unwrap();
    // Then messages that are not bridged events: no headers, no publish
    // key, bad JSON, a subject escaping cannot make, a malformed parent.
    raw.publish(subject.clone(), "2".into()).await.unwrap();
    raw.publish_with_headers(subject.clone(), keyless.clone(), "1".into()).await.unwrap();
    let bad_json = keyed("00000000000000070000000000000003");
    raw.publish_with_headers(format!("{prefix}.trivia.x"), bad_json, "{not json".into())
        .await
        .unwrap();
    raw.publish_with_headers(format!("{prefix}.a%zz"), headers.clone(), "1".into()).await.unwrap();
    // A parent header that is not 32 hex digits.
    let mut bad_parent = keyed("00000000000000070000000000000004");
    bad_parent.insert("Switchboard-Parent", "00ab");
    raw.publish_with_headers(subject.clone(), bad_parent, "1".into()).await.unwrap();
    raw.flush().await.unwrap();
    assert!(
        eventually(WAIT, || ib.stats().invalid == 5 && ib.stats().duplicates_dropped == 1).await,
        "{:?}",
        ib.stats()
    );
    tokio::time::sleep(QUIET).await;
    let events = seen.events();
    assert_eq!(events.len(), 2, "{:?}", ib.stats());
    for e in &events {
        assert_eq!(e.id().as_u128(), 0xab);
        assert_eq!(e.source(), "raw");
        assert_eq!(e.origin(), Some("elsewhere"));
        assert!(e.timestamp() <= SystemTime::now());
    }
    assert_eq!(ib.stats().imported, 2);
}

/// A JetStream stream name of this test's own, and the mode using it.
fn jetstream(prefix: &str, durable: &str) -> (String, Mode) {
    let stream: String = prefix
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' })
        .collect();
    (stream.clone(), Mode::JetStream(JetStreamConfig::new(durable).stream(stream)))
}

/// Runs `test`, then deletes the JetStream stream it made on the shared
/// server, whether it passed or not.
async fn removing_stream(url: &str, stream: &str, test: impl Future<Output = ()> + Send + 'static) {
    let outcome = tokio::spawn(test).await;
    match async_nats::connect(url).await {
        Ok(client) => {
            if let Err(e) = async_nats::jetstream::new(client).delete_stream(stream).await {
                eprintln!("could not delete the test stream {stream}: {e}");
            }
        }
        Err(e) => eprintln!("could not delete the test stream {stream}: {e}"),
    }
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

/// Bus A exports `x.*`, bus B imports it; A publishes an event and then a
/// clone of it (same id, a second publish): B's handlers see both.
async fn an_event_and_its_clone_both_cross(url: String, prefix: String, mode: Option<Mode>) {
    let (a, b) = (Bus::new().unwrap(), Bus::new().unwrap());
    let config = |instance: &str| {
        let c = BridgeConfig::new(&url).prefix(&prefix).instance(instance);
        match &mode {
            Some(m) => c.mode(m.clone()),
            None => c,
        }
    };
    let ea = Bridge::start(&a, config("a").export("x.*")).await.expect("bridge a");
    let ib = Bridge::start(&b, config("b").import("x.*")).await.expect("bridge b");
    let seen = Seen::on(&b, "x.*");
    let event = Event::new("x.ping", json!({"n": 1}), "test");
    let clone = event.clone();
    a.publish(event).unwrap();
    a.publish(clone).unwrap();
    assert!(ea.flush(WAIT).await, "{:?}", ea.stats());
    assert!(
        eventually(WAIT, || seen.len() >= 2).await,
        "b saw {} of 2: {:?} {:?}",
        seen.len(),
        ea.stats(),
        ib.stats()
    );
    tokio::time::sleep(QUIET).await;
    let events = seen.events();
    assert_eq!(events.len(), 2, "{:?}", ib.stats());
    // Both keep the event's identity.
    assert_eq!(events[0].id(), events[1].id());
    assert_eq!(events[0].origin(), Some("a"));
    let (sa, sb) = (ea.stats(), ib.stats());
    assert_eq!((sa.exported, sb.imported, sb.duplicates_dropped), (2, 2, 0), "{sa:?} {sb:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_republished_clone_is_delivered_again_in_core_mode() {
    let Some(url) = shared_server() else { return };
    an_event_and_its_clone_both_cross(url, unique_prefix("clone_core"), None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_republished_clone_is_delivered_again_in_jetstream_mode() {
    let Some(url) = shared_server() else { return };
    let prefix = unique_prefix("clone_js");
    let (stream, mode) = jetstream(&prefix, "clone_b");
    let test = an_event_and_its_clone_both_cross(url.clone(), prefix, Some(mode));
    removing_stream(&url, &stream, test).await;
}

/// A latch handlers wait on until the test opens it (30 s at most).
#[derive(Clone, Default)]
struct Latch(Arc<(Mutex<bool>, Condvar)>);

impl Latch {
    fn wait(&self) {
        let (open, changed) = &*self.0;
        let guard = open.lock().unwrap();
        let _ = changed.wait_timeout_while(guard, Duration::from_secs(30), |open| !*open).unwrap();
    }

    fn open(&self) {
        *self.0 .0.lock().unwrap() = true;
        self.0 .1.notify_all();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_imports_the_local_bus_refuses_are_redelivered_not_lost() {
    const BURST: u64 = 40;
    let Some(url) = shared_server() else { return };
    let prefix = unique_prefix("refused");
    let (stream, mode) = jetstream(&prefix, "refused_b");
    let server = url.clone();
    let test = async move {
        let a = Bus::new().unwrap();
        // One worker taking one event at a time, room for 4 more, and a
        // publish into a full queue refused (`Full`) rather than waited on.
        let b = Bus::builder()
            .workers(1)
            .batch_size(1)
            .capacity(4)
            .overflow(Overflow::Error)
            .build()
            .unwrap();
        let config = |instance: &str| {
            BridgeConfig::new(&server).prefix(&prefix).instance(instance).mode(mode.clone())
        };
        let ea = Bridge::start(&a, config("a").export("x.*")).await.expect("bridge a");
        let ib = Bridge::start(&b, config("b").import("x.*")).await.expect("bridge b");
        let latch = Latch::default();
        let seen: Arc<Mutex<HashMap<u64, usize>>> = Arc::default();
        let local = Arc::new(Mutex::new(0usize));
        let entered = Arc::new(AtomicBool::new(false));
        let (l, s, lo, en) = (latch.clone(), seen.clone(), local.clone(), entered.clone());
        b.subscribe(
            "x.*",
            Handler::sync(move |e: &Event| {
                en.store(true, Ordering::SeqCst);
                l.wait();
                match e.data()["n"].as_u64() {
                    Some(n) if e.origin().is_some() => {
                        *s.lock().unwrap().entry(n).or_default() += 1
                    }
                    _ => *lo.lock().unwrap() += 1,
                }
                Ok(())
            }),
            "slow",
        )
        .unwrap();
        // The worker blocks on a first local event; the next ones fill the
        // queue until B refuses.
        b.publish(Event::new("x.local", json!(null), "test")).unwrap();
        assert!(eventually(WAIT, || entered.load(Ordering::SeqCst)).await, "the handler never ran");
        let mut filled = 1;
        loop {
            match b.publish(Event::new("x.local", json!(null), "test")) {
                Ok(_) => filled += 1,
                Err(PublishError::Full(_)) => break,
                Err(e) => panic!("unexpected {e}"),
            }
            assert!(filled < 100, "B's queue never filled");
        }
        for n in 0..BURST {
            a.publish(Event::new(format!("x.burst{n}"), json!({ "n": n }), "test")).unwrap();
        }
        assert!(ea.flush(WAIT).await, "{:?}", ea.stats());
        // B refuses what JetStream delivers while it is full...
        assert!(
            eventually(WAIT, || ib.stats().refused > 0).await,
            "nothing was refused: {:?}",
            ib.stats()
        );
        latch.open();
        // ...and gets it again once it has room: everything, once each.
        assert!(
            eventually(Duration::from_secs(30), || seen.lock().unwrap().len() as u64 == BURST)
                .await,
            "b handled {} of {BURST}: {:?}",
            seen.lock().unwrap().len(),
            ib.stats()
        );
        tokio::time::sleep(QUIET).await;
        b.flush_async().await;
        let seen = seen.lock().unwrap().clone();
        for n in 0..BURST {
            assert_eq!(seen.get(&n), Some(&1), "event {n} not handled exactly once");
        }
        assert_eq!(*local.lock().unwrap(), filled);
        let sb = ib.stats();
        assert_eq!(sb.imported, BURST, "{sb:?}");
        assert!(sb.refused > 0, "{sb:?}");
        assert_eq!(sb.invalid, 0, "{sb:?}");
        assert_eq!(ea.shutdown(Duration::from_secs(5)).await, 0);
        ib.shutdown(Duration::from_secs(5)).await;
    };
    removing_stream(&url, &stream, test).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jetstream_import_whose_name_the_bus_refuses_is_terminated_and_counted_invalid() {
    let Some(url) = shared_server() else { return };
    let prefix = unique_prefix("badname");
    let (stream, mode) = jetstream(&prefix, "badname_b");
    let (server, name) = (url.clone(), stream.clone());
    let test = async move {
        let b = Bus::new().unwrap();
        let config = BridgeConfig::new(&server).prefix(&prefix).import("*").instance("b");
        let ib = Bridge::start(&b, config.mode(mode)).await.expect("bridge b");
        let seen = Seen::on(&b, "*");
        let js = async_nats::jetstream::new(async_nats::connect(server.as_str()).await.unwrap());
        let headers = |key: &'static str| {
            let mut h = async_nats::HeaderMap::new();
            h.insert("Switchboard-Origin", "elsewhere");
            h.insert("Switchboard-Id", "000000000000000000000000000000ab");
            h.insert("Switchboard-Key", key);
            h
        };
        // `%` is an empty token: the subject of the empty name, which `*`
        // matches and no bus accepts. Then a good message, which must not
        // be held up behind it.
        for (subject, key) in [
            (format!("{prefix}.%"), "00000000000000070000000000000001"),
            (format!("{prefix}.x.ok"), "00000000000000070000000000000002"),
        ] {
            let ack = js.publish_with_headers(subject, headers(key), "1".into()).await.unwrap();
            ack.await.expect("stored");
        }
        assert!(
            eventually(WAIT, || seen.len() == 1 && ib.stats().invalid == 1).await,
            "{:?}",
            ib.stats()
        );
        // Both settled: neither waits to be delivered again.
        let stream = js.get_stream(&name).await.unwrap();
        let mut settled = false;
        for _ in 0..100 {
            let consumers: Vec<_> = stream.consumers().try_collect().await.unwrap();
            assert_eq!(consumers.len(), 1);
            let c = &consumers[0];
            settled = c.num_ack_pending == 0 && c.num_pending == 0 && c.num_redelivered == 0;
            if settled {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(settled, "a message was left unsettled or delivered again");
        tokio::time::sleep(QUIET).await;
        assert_eq!(seen.names(), ["x.ok"]);
        let sb = ib.stats();
        assert_eq!((sb.imported, sb.invalid, sb.refused), (1, 1, 0), "{sb:?}");
    };
    removing_stream(&url, &stream, test).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configuration_gets_a_typed_error() {
    let bus = Bus::new().unwrap();
    let start = |c: BridgeConfig| {
        let bus = bus.clone();
        async move { Bridge::start(&bus, c).await }
    };
    let base =
        || BridgeConfig::new("nats://127.0.0.1:1").connect_timeout(Duration::from_millis(500));
    assert!(matches!(
        start(base().prefix("a..b").export("*")).await,
        Err(BridgeError::InvalidPrefix(_))
    ));
    assert!(matches!(
        start(base().prefix("a.*").export("*")).await,
        Err(BridgeError::InvalidPrefix(_))
    ));
    assert!(matches!(start(base()).await, Err(BridgeError::NothingToBridge)));
    assert!(matches!(start(base().import("")).await, Err(BridgeError::EmptyGlob)));
    assert!(matches!(
        start(base().export("x".repeat(5000))).await,
        Err(BridgeError::InvalidGlob { .. })
    ));
    assert!(matches!(
        start(base().export("*").instance("shard 1\r\n")).await,
        Err(BridgeError::InvalidName { what: "instance id", .. })
    ));
    let js = switchboard_nats::Mode::JetStream(switchboard_nats::JetStreamConfig::new("bad.name"));
    assert!(matches!(
        start(base().export("*").mode(js)).await,
        Err(BridgeError::InvalidName { .. })
    ));
    // Nothing listens on port 1: a clear error naming the server.
    match start(base().export("*")).await {
        Err(e @ BridgeError::Connect { .. }) => {
            assert!(e.to_string().contains("127.0.0.1:1"), "{e}")
        }
        other => panic!("expected a connect error, got {other:?}"),
    }
    // A refused start leaves no subscription behind.
    assert_eq!(bus.stats().subscriptions, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_tells_a_publish_the_stream_already_held_from_a_new_one() {
    let Some(url) = shared_server() else { return };
    let prefix = unique_prefix("dedup");
    let (stream, mode) = jetstream(&prefix, "dedup_a");
    let (server, p) = (url.clone(), prefix.clone());
    let test = async move {
        let a = Bus::new().unwrap();
        let config = BridgeConfig::new(&server).prefix(&p).export("*").mode(mode);
        let ea = Bridge::start(&a, config).await.expect("bridge a");
        let seen = Seen::on(&a, "*");
        a.publish(Event::new("x.first", json!(1), "test")).unwrap();
        assert!(ea.flush(WAIT).await);
        let first = seen.events()[0].sequence().expect("numbered");
        // What a lost acknowledgement leaves behind: the stream holds the
        // next publish already, under its key (the bus's instance, then its
        // sequence number), as if an earlier send had reached it.
        let key = u128::from(a.instance()) << 64 | u128::from(first + 1);
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(switchboard_nats::wire::MSG_ID, switchboard_nats::wire::hex_token(key));
        let js = async_nats::jetstream::new(async_nats::connect(server.as_str()).await.unwrap());
        let ack = js
            .publish_with_headers(format!("{p}.x.second"), headers, "2".into())
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(!ack.duplicate);
        a.publish(Event::new("x.second", json!(2), "test")).unwrap();
        a.publish(Event::new("x.third", json!(3), "test")).unwrap();
        assert!(ea.flush(WAIT).await);
        let stats = ea.stats();
        assert_eq!((stats.exported, stats.deduplicated, stats.dropped), (2, 1, 0), "{stats:?}");
    };
    removing_stream(&url, &stream, test).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridge_shared_with_a_monitor_shuts_down_through_a_reference_once() {
    let Some(url) = shared_server() else { return };
    let prefix = unique_prefix("monitor");
    let (a, b) = (Bus::new().unwrap(), Bus::new().unwrap());
    let ea = Arc::new(
        Bridge::start(&a, BridgeConfig::new(&url).prefix(&prefix).export("*")).await.unwrap(),
    );
    let ib = Bridge::start(&b, BridgeConfig::new(&url).prefix(&prefix).import("*")).await.unwrap();
    let seen = Seen::on(&b, "*");
    for n in 0..100 {
        a.publish(Event::new("x.tick", json!(n), "test")).unwrap();
    }
    // A monitor task holds the bridge too, and is the one to stop it.
    let monitor = {
        let ea = ea.clone();
        tokio::spawn(async move {
            assert!(ea.stats().healthy());
            ea.shutdown(Duration::from_secs(5)).await
        })
    };
    assert_eq!(monitor.await.unwrap(), 0, "everything queued was sent");
    assert!(eventually(WAIT, || seen.len() == 100).await, "{:?}", ib.stats());
    let stats = ea.stats();
    assert_eq!((stats.exported, stats.dropped), (100, 0), "{stats:?}");
    assert!(stats.tasks.iter().all(|t| !t.alive), "stopped: {stats:?}");
    // Stopped once: a second call has nothing to do, and exports stopped.
    assert_eq!(ea.shutdown(Duration::from_secs(1)).await, 0);
    a.publish(Event::new("x.after", json!(0), "test")).unwrap();
    a.flush();
    tokio::time::sleep(QUIET).await;
    assert_eq!(seen.len(), 100);
    assert_eq!(ea.stats().exported, 100);
}
