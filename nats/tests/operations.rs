//! The bridge in operation: what an operator or another user can do to
//! it (delete its consumer, stop it from two places, hold its bus up,
//! send it what the server refuses), each once a way to make it hang,
//! spin or lie in its stats. Each test runs a nats-server of its own.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{eventually, PrivateServer};
use futures::StreamExt;
use switchboard::{Bus, Event, Handler};
use switchboard_nats::{Bridge, BridgeConfig, JetStreamConfig, Mode};

const WAIT: Duration = Duration::from_secs(20);

#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<Event>>>);

impl Seen {
    fn on(bus: &Bus) -> Seen {
        let seen = Seen::default();
        let s = seen.clone();
        bus.subscribe(
            "*",
            Handler::sync(move |e: &Event| {
                s.0.lock().unwrap().push(e.clone());
                Ok(())
            }),
            "observer",
        )
        .unwrap();
        seen
    }

    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

/// An event bigger than the server's max_payload can never be sent: it is
/// dropped and counted, not retried at the head of its lane (once a busy
/// loop in JetStream mode, with every later event stuck behind it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_too_large_for_the_server_is_dropped_and_counted_and_the_lane_goes_on_in_jetstream_mode(
) {
    let Some(server) = PrivateServer::start() else { return };
    let (a, b) = (Bus::new().unwrap(), Bus::new().unwrap());
    let js = |d: &str| Mode::JetStream(JetStreamConfig::new(d));
    let ea =
        Bridge::start(&a, BridgeConfig::new(server.url()).prefix("big").export("*").mode(js("ea")))
            .await
            .unwrap();
    let _ib =
        Bridge::start(&b, BridgeConfig::new(server.url()).prefix("big").import("*").mode(js("ib")))
            .await
            .unwrap();
    let seen = Seen::on(&b);
    let big = "x".repeat(2 << 20);
    a.publish(Event::new("trivia.big", serde_json::json!({ "blob": big }), "a")).unwrap();
    a.publish(Event::new("trivia.small", serde_json::json!({"n": 1}), "a")).unwrap();
    assert!(
        eventually(WAIT, || seen.len() == 1).await,
        "the small event behind the oversized one never left: {:?}",
        ea.stats()
    );
    let stats = ea.stats();
    assert_eq!((stats.oversized, stats.dropped, stats.retried), (1, 1, 0), "{stats:?}");
    assert_eq!(seen.0.lock().unwrap()[0].name(), "trivia.small");
}

/// Same in core mode (once a 20 ms retry loop).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_too_large_for_the_server_is_dropped_and_counted_and_the_lane_goes_on_in_core_mode(
) {
    let Some(server) = PrivateServer::start() else { return };
    let (a, b) = (Bus::new().unwrap(), Bus::new().unwrap());
    let ea =
        Bridge::start(&a, BridgeConfig::new(server.url()).prefix("big").export("*")).await.unwrap();
    let _ib =
        Bridge::start(&b, BridgeConfig::new(server.url()).prefix("big").import("*")).await.unwrap();
    let seen = Seen::on(&b);
    let big = "x".repeat(2 << 20);
    a.publish(Event::new("trivia.big", serde_json::json!({ "blob": big }), "a")).unwrap();
    a.publish(Event::new("trivia.small", serde_json::json!({"n": 1}), "a")).unwrap();
    assert!(
        eventually(WAIT, || seen.len() == 1).await,
        "the small event behind the oversized one never left: {:?}",
        ea.stats()
    );
    let stats = ea.stats();
    assert_eq!((stats.oversized, stats.dropped, stats.retried), (1, 1, 0), "{stats:?}");
}

/// A durable consumer deleted under a running bridge (by an operator): the
/// import task ends, is started again (counted, with the reason), and makes
/// the consumer again, so importing goes on. (It once looped on errors,
/// importing nothing, and showed healthy.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_consumer_is_made_again_and_importing_goes_on() {
    let Some(server) = PrivateServer::start() else { return };
    let (a, b) = (Bus::new().unwrap(), Bus::new().unwrap());
    let js = |d: &str| Mode::JetStream(JetStreamConfig::new(d).stream("DEL"));
    let _ea =
        Bridge::start(&a, BridgeConfig::new(server.url()).prefix("del").export("*").mode(js("ea")))
            .await
            .unwrap();
    let ib =
        Bridge::start(&b, BridgeConfig::new(server.url()).prefix("del").import("*").mode(js("ib")))
            .await
            .unwrap();
    let seen = Seen::on(&b);
    a.publish(Event::new("trivia.one", serde_json::json!({"n": 1}), "a")).unwrap();
    assert!(eventually(WAIT, || seen.len() == 1).await);
    let admin = async_nats::connect(server.url()).await.unwrap();
    let ctx = async_nats::jetstream::new(admin);
    let stream = ctx.get_stream("DEL").await.unwrap();
    let names: Vec<String> = stream.consumer_names().map(|n| n.unwrap()).collect().await;
    assert_eq!(names.len(), 1, "{names:?}");
    stream.delete_consumer(&names[0]).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    for n in 2..12 {
        a.publish(Event::new("trivia.more", serde_json::json!({ "n": n }), "a")).unwrap();
    }
    assert!(
        eventually(WAIT, || seen.len() == 11).await,
        "imports nothing after the consumer went: {} seen, {:?}",
        seen.len(),
        ib.stats()
    );
    let stats = ib.stats();
    let import = stats.tasks.iter().find(|t| t.name.starts_with("import")).unwrap();
    assert!(import.alive && import.restarts >= 1, "the loss is shown: {import:?}");
    assert!(import.last_failure.as_deref().unwrap_or("").contains("consumer"), "{import:?}");
}

/// `shutdown(&self)` from two holders at once: the second waits for the
/// first (it once returned 0 at once, with the bridge still running).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_concurrent_shutdown_waits_for_the_first() {
    let Some(mut server) = PrivateServer::start() else { return };
    let a = Bus::new().unwrap();
    let ea = Arc::new(
        Bridge::start(&a, BridgeConfig::new(server.url()).prefix("sd").export("*")).await.unwrap(),
    );
    // Disconnected: the queue cannot drain, so the first shutdown waits its timeout.
    server.stop();
    assert!(eventually(WAIT, || !ea.stats().connected).await);
    for n in 0..10 {
        a.publish(Event::new("trivia.q", serde_json::json!({ "n": n }), "a")).unwrap();
    }
    a.flush_async().await;
    let first = {
        let ea = ea.clone();
        tokio::spawn(async move { ea.shutdown(Duration::from_secs(3)).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    let second = ea.shutdown(Duration::from_secs(3)).await;
    let took = started.elapsed();
    let still_running = ea.stats().tasks.iter().any(|t| t.alive);
    let first = first.await.unwrap();
    assert!(
        !still_running,
        "the second shutdown returned {second} after {took:?} while the bridge was still up"
    );
    assert_eq!((first, second), (10, 0), "the first counts what was left, once");
    assert_eq!(ea.stats().dropped, 10);
}

/// A slow local handler (default Overflow::Block, nothing refused) holds the
/// batch past ack_wait x max_deliver: the bridge tells the stream it is
/// still working on what it holds, so the stream neither delivers it again
/// nor gives up on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_local_handler_does_not_make_the_stream_give_up_on_what_the_bridge_holds() {
    let Some(server) = PrivateServer::start() else { return };
    let a = Bus::new().unwrap();
    let b = Bus::new().unwrap();
    let js = |d: &str| {
        Mode::JetStream(
            JetStreamConfig::new(d).ack_wait(Duration::from_secs(2)).max_deliver(Some(2)),
        )
    };
    let _ea = Bridge::start(
        &a,
        BridgeConfig::new(server.url()).prefix("hold").export("x.*").mode(js("ea")),
    )
    .await
    .unwrap();
    let ib = Bridge::start(
        &b,
        BridgeConfig::new(server.url()).prefix("hold").import("x.*").mode(js("ib")),
    )
    .await
    .unwrap();
    let open = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(std::collections::BTreeSet::new()));
    let (o, s) = (open.clone(), seen.clone());
    b.subscribe(
        "x.*",
        Handler::sync(move |e: &Event| {
            while !o.load(std::sync::atomic::Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(5));
            }
            if let Some(n) = e.data()["n"].as_u64() {
                s.lock().unwrap().insert(n);
            }
            Ok(())
        }),
        "slow",
    )
    .unwrap();
    struct Open(Arc<std::sync::atomic::AtomicBool>);
    impl Drop for Open {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
    let _guard = Open(open.clone());
    for n in 0..20u64 {
        a.publish(Event::new("x.e", serde_json::json!({ "n": n }), "a")).unwrap();
    }
    // Default bus: nothing is refused, the handler is just slow, past
    // twice the ack wait times the delivery limit.
    let _ = refused_wait(&ib).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    open.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(40), || seen.lock().unwrap().len() == 20).await,
        "{} of 20: {:?}",
        seen.lock().unwrap().len(),
        ib.stats()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stats = ib.stats();
    assert_eq!(
        (stats.undeliverable, stats.imported, stats.duplicates_dropped),
        (0, 20, 0),
        "{stats:?}"
    );
}

/// An existing durable consumer's ack_wait and delivery limit follow the
/// config of a restarted bridge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_bridge_updates_ack_wait_and_max_deliver() {
    let Some(server) = PrivateServer::start() else { return };
    let bus = Bus::new().unwrap();
    let start = |wait: u64, limit: Option<u32>| {
        BridgeConfig::new(server.url()).prefix("upd").import("*").mode(Mode::JetStream(
            JetStreamConfig::new("upd")
                .stream("UPD")
                .ack_wait(Duration::from_secs(wait))
                .max_deliver(limit),
        ))
    };
    let info = || async {
        let ctx = async_nats::jetstream::new(async_nats::connect(server.url()).await.unwrap());
        let stream = ctx.get_stream("UPD").await.unwrap();
        let names: Vec<String> = stream.consumer_names().map(|n| n.unwrap()).collect().await;
        let c: async_nats::jetstream::consumer::PullConsumer =
            stream.get_consumer(&names[0]).await.unwrap();
        (c.cached_info().config.ack_wait, c.cached_info().config.max_deliver)
    };
    for (wait, limit, want) in [(30, Some(10), 10), (2, Some(3), 3), (5, None, -1), (7, Some(4), 4)]
    {
        let bridge = Bridge::start(&bus, start(wait, limit)).await.unwrap();
        assert_eq!(info().await, (Duration::from_secs(wait), want));
        bridge.shutdown(Duration::from_secs(2)).await;
    }
}

async fn refused_wait(ib: &Bridge) -> bool {
    eventually(Duration::from_secs(1), || ib.stats().imported > 0).await
}
