//! The bridge when NATS fails: a server restart in core mode (counted loss,
//! lowest priority first, local dispatch unaffected), the same in JetStream
//! mode (no loss, no duplicate), and a slow importing bus. Each test runs a
//! nats-server of its own.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{eventually, PrivateServer};
use serde_json::json;
use switchboard::{Bus, Event, Handler, Priority};
use switchboard_nats::{Bridge, BridgeConfig, JetStreamConfig, Mode};

const WAIT: Duration = Duration::from_secs(20);

fn recorder(bus: &Bus) -> Arc<Mutex<Vec<Event>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    bus.subscribe(
        "*",
        Handler::sync(move |e: &Event| {
            s.lock().unwrap().push(e.clone());
            Ok(())
        }),
        "observer",
    )
    .unwrap();
    seen
}

fn count(seen: &Arc<Mutex<Vec<Event>>>) -> usize {
    seen.lock().unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_mode_outage_drops_lowest_priority_first_counts_it_and_never_blocks_dispatch() {
    let Some(mut server) = PrivateServer::start() else { return };
    let (a, b) = (Bus::new().unwrap(), Bus::new().unwrap());
    let ea = Bridge::start(
        &a,
        BridgeConfig::new(server.url())
            .prefix("outage")
            .export("*")
            .queue_capacity(50)
            // Long enough for B to be subscribed again when A resumes.
            .resume_delay(Duration::from_millis(1500)),
    )
    .await
    .unwrap();
    let ib = Bridge::start(&b, BridgeConfig::new(server.url()).prefix("outage").import("*"))
        .await
        .unwrap();
    let local = recorder(&a);
    let remote = recorder(&b);

    for i in 0..10 {
        a.publish(Event::new(format!("before.{i}"), json!(i), "t")).unwrap();
    }
    assert!(
        eventually(WAIT, || count(&remote) == 10).await,
        "b got {}: {:?} {:?}",
        count(&remote),
        ea.stats(),
        ib.stats()
    );

    server.stop();
    assert!(
        eventually(WAIT, || !ea.stats().connected && !ib.stats().connected).await,
        "nobody noticed the outage"
    );
    for i in 0..100 {
        a.publish(Event::new(format!("low.{i}"), json!(i), "t").with_priority(Priority::Low))
            .unwrap();
    }
    for i in 0..30 {
        a.publish(Event::new(format!("high.{i}"), json!(i), "t").with_priority(Priority::High))
            .unwrap();
    }
    // Local dispatch goes on without the broker.
    tokio::time::timeout(Duration::from_secs(5), a.flush_async())
        .await
        .expect("local flush is not held up by NATS");
    assert_eq!(count(&local), 140);
    // The outbox holds 50: 50 Low arrived to a full outbox and were
    // dropped; each High evicted the oldest Low.
    assert!(eventually(WAIT, || ea.stats().queued == 50).await, "{:?}", ea.stats());
    assert_eq!(ea.stats().dropped, 80);

    server.restart();
    assert!(eventually(WAIT, || count(&remote) >= 60).await, "b got {}", count(&remote));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut names: Vec<String> =
        remote.lock().unwrap()[10..].iter().map(|e| e.name().to_owned()).collect();
    names.sort();
    let mut expected: Vec<String> =
        (30..50).map(|i| format!("low.{i}")).chain((0..30).map(|i| format!("high.{i}"))).collect();
    expected.sort();
    assert_eq!(names, expected);
    let (sa, sb) = (ea.stats(), ib.stats());
    assert!(sa.reconnects >= 1 && sb.reconnects >= 1, "{sa:?} {sb:?}");
    // A restarted server is a new server: not the client's own doing.
    assert_eq!((sa.client_side_reconnects, sb.client_side_reconnects), (0, 0), "{sa:?} {sb:?}");
    assert!(sa.healthy() && sb.healthy(), "{sa:?} {sb:?}");
    assert_eq!((sa.exported, sa.dropped, sa.queued), (60, 80, 0), "{sa:?}");
    assert_eq!(sb.imported, 60);

    // And the bridge goes on as before.
    a.publish(Event::new("after", json!(null), "t")).unwrap();
    assert!(eventually(WAIT, || count(&remote) == 61).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_mode_outage_loses_nothing_and_delivers_once() {
    let Some(mut server) = PrivateServer::start() else { return };
    let (a, b) = (Bus::new().unwrap(), Bus::new().unwrap());
    let js = |durable: &str| Mode::JetStream(JetStreamConfig::new(durable));
    let ea = Bridge::start(
        &a,
        BridgeConfig::new(server.url())
            .prefix("durable")
            .export("*")
            .instance("a")
            .mode(js("shard_a")),
    )
    .await
    .unwrap();
    let ib = Bridge::start(
        &b,
        BridgeConfig::new(server.url())
            .prefix("durable")
            .import("*")
            .instance("b")
            .mode(js("shard_b")),
    )
    .await
    .unwrap();
    let remote = recorder(&b);
    let mut sent = Vec::new();
    let mut publish = |name: String| {
        let e = Event::new(name, json!({"n": 1}), "t");
        sent.push(e.id().as_u128());
        a.publish(e).unwrap();
    };
    for i in 0..20 {
        publish(format!("before.{i}"));
    }
    assert!(eventually(WAIT, || count(&remote) == 20).await, "b got {}", count(&remote));

    server.stop();
    assert!(eventually(WAIT, || !ea.stats().connected).await);
    for i in 0..100 {
        publish(format!("during.{i}"));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.restart();
    assert!(
        eventually(WAIT, || count(&remote) >= 120).await,
        "b got {} of 120: {:?} {:?}",
        count(&remote),
        ea.stats(),
        ib.stats()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut counts: HashMap<u128, usize> = HashMap::new();
    for e in remote.lock().unwrap().iter() {
        *counts.entry(e.id().as_u128()).or_default() += 1;
    }
    for id in &sent {
        assert_eq!(counts.get(id), Some(&1), "event {id:x} not delivered exactly once");
    }
    assert_eq!(count(&remote), 120);
    let (sa, sb) = (ea.stats(), ib.stats());
    // A send whose acknowledgement the restart lost is sent again, and the
    // stream says it is a duplicate: each event is acknowledged once.
    assert_eq!((sa.exported + sa.deduplicated, sa.dropped), (120, 0), "{sa:?}");
    assert_eq!(sb.imported, 120, "{sb:?}");
    assert!(sa.reconnects >= 1);
    assert_eq!((sa.client_side_reconnects, sb.client_side_reconnects), (0, 0), "{sa:?} {sb:?}");
    assert!(sa.healthy() && sb.healthy(), "{sa:?} {sb:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_importing_bus_is_reported_as_a_slow_consumer_and_never_slows_the_exporter() {
    let Some(server) = PrivateServer::start() else { return };
    let a = Bus::new().unwrap();
    let b = Bus::builder().workers(1).capacity(4).build().unwrap();
    let ea = Bridge::start(&a, BridgeConfig::new(server.url()).prefix("slow").export("*"))
        .await
        .unwrap();
    let ib = Bridge::start(
        &b,
        BridgeConfig::new(server.url()).prefix("slow").import("*").subscription_capacity(8),
    )
    .await
    .unwrap();
    let handled = Arc::new(AtomicU64::new(0));
    let h = handled.clone();
    b.subscribe(
        "*",
        Handler::sync(move |_e: &Event| {
            std::thread::sleep(Duration::from_millis(2));
            h.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }),
        "slow",
    )
    .unwrap();
    let local = recorder(&a);
    for i in 0..2_000 {
        a.publish(Event::new(format!("flood.{i}"), json!(i), "t")).unwrap();
    }
    tokio::time::timeout(Duration::from_secs(5), a.flush_async())
        .await
        .expect("the exporter's bus is not slowed");
    assert_eq!(count(&local), 2_000);
    assert!(ea.flush(WAIT).await, "the exporter sent everything");
    assert_eq!(ea.stats().exported, 2_000);
    assert!(eventually(WAIT, || ib.stats().slow_consumer > 0).await, "{:?}", ib.stats());
    // Once the importer has caught up, everything it imported was handled.
    let mut last = u64::MAX;
    while ib.stats().imported != last {
        last = ib.stats().imported;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    b.flush_async().await;
    let imported = ib.stats().imported;
    assert!(imported < 2_000, "a slow consumer lost nothing?");
    assert_eq!(handled.load(Ordering::Relaxed), imported);
}
