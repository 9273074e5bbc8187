//! The bridge against hostile input: crafted header values, malformed
//! header blocks, a flood of messages that are not bridged events, clients
//! without the right to speak on the prefix, and TLS. Each test runs a
//! nats-server of its own on a private port.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{eventually, raw_publish, PrivateServer};
use switchboard::{Bus, Event, Handler, Priority};
use switchboard_nats::wire::{self, Envelope};
use switchboard_nats::{Bridge, BridgeConfig, BridgeStats, JetStreamConfig, Mode};

const WAIT: Duration = Duration::from_secs(30);
/// How long to wait for what must not come.
const QUIET: Duration = Duration::from_millis(300);
const PREFIX: &str = "hostile";

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

    /// The `n` of every `{"n": ...}` payload seen, sorted.
    fn numbers(&self) -> Vec<u64> {
        let mut n: Vec<u64> =
            self.0.lock().unwrap().iter().filter_map(|e| e.data()["n"].as_u64()).collect();
        n.sort_unstable();
        n
    }
}

/// The headers of a valid bridged event from a foreign origin, publish key `key`.
fn valid(key: u64) -> async_nats::HeaderMap {
    Envelope {
        origin: "elsewhere".into(),
        id: u128::from(key),
        key: 0xfeed << 64 | u128::from(key),
        source: "raw".into(),
        priority: Priority::Normal,
        timestamp: SystemTime::now(),
        parent: None,
    }
    .to_headers()
}

fn payload(n: u64) -> bytes::Bytes {
    format!("{{\"n\":{n}}}").into()
}

fn js_mode(durable: &str) -> Mode {
    Mode::JetStream(
        JetStreamConfig::new(durable).ack_wait(Duration::from_secs(1)).max_deliver(Some(3)),
    )
}

fn assert_tasks_never_failed(stats: &BridgeStats) {
    assert!(!stats.tasks.is_empty());
    for task in &stats.tasks {
        assert!(task.alive && task.restarts == 0, "{task:?}");
    }
}

/// Publishes `valid(n)` for every `n` in `range` with the client `raw`.
async fn send_valid(raw: &async_nats::Client, range: std::ops::Range<u64>) {
    for n in range {
        raw.publish_with_headers(format!("{PREFIX}.trivia.answer"), valid(n), payload(n))
            .await
            .unwrap();
    }
    raw.flush().await.unwrap();
}

async fn a_crafted_timestamp_is_refused_and_importing_goes_on(mode: Mode) {
    let Some(server) = PrivateServer::start() else { return };
    let bus = Bus::new().unwrap();
    let config = BridgeConfig::new(server.url()).prefix(PREFIX).import("*").mode(mode);
    let bridge = Bridge::start(&bus, config).await.unwrap();
    let seen = Seen::on(&bus);
    let raw = async_nats::connect(server.url()).await.unwrap();
    // Seconds past what u64 holds once multiplied out: it panicked the
    // import task for good, and nothing was imported after it.
    let mut crafted = valid(1_000_000);
    crafted.insert(wire::TIMESTAMP, "18446744073709551615000000000");
    raw.publish_with_headers(format!("{PREFIX}.trivia.answer"), crafted, payload(1_000_000))
        .await
        .unwrap();
    send_valid(&raw, 0..100).await;
    assert!(
        eventually(WAIT, || seen.len() == 100 && bridge.stats().invalid == 1).await,
        "{:?}",
        bridge.stats()
    );
    tokio::time::sleep(QUIET).await;
    assert_eq!(seen.numbers(), (0..100).collect::<Vec<_>>());
    let stats = bridge.stats();
    assert_eq!((stats.imported, stats.invalid), (100, 1), "{stats:?}");
    assert_tasks_never_failed(&stats);
    assert!(stats.healthy());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crafted_timestamp_is_refused_and_importing_goes_on_in_core_mode() {
    a_crafted_timestamp_is_refused_and_importing_goes_on(Mode::Core).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crafted_timestamp_is_refused_and_importing_goes_on_in_jetstream_mode() {
    a_crafted_timestamp_is_refused_and_importing_goes_on(js_mode("crafted")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_optional_headers_an_unknown_version_and_a_refused_name_are_each_counted_invalid()
{
    let Some(server) = PrivateServer::start() else { return };
    let bus = Bus::new().unwrap();
    let bridge = Bridge::start(&bus, BridgeConfig::new(server.url()).prefix(PREFIX).import("*"))
        .await
        .unwrap();
    let seen = Seen::on(&bus);
    let raw = async_nats::connect(server.url()).await.unwrap();
    let u128_max = u128::MAX.to_string();
    let bad: &[(&str, &str)] = &[
        (wire::PRIORITY, "urgent"),
        (wire::TIMESTAMP, "abc"),
        (wire::TIMESTAMP, "-1"),
        (wire::TIMESTAMP, &u128_max),
        (wire::SOURCE, "%zz"),
        (wire::ORIGIN, ""),
        (wire::ORIGIN, "two words"),
        (wire::ID, "ab"),
        (wire::PARENT, "not a parent"),
        (wire::PARENT, "000000000000000000000000000000ag"),
        (wire::PARENT_KEY, "ab"),
        (wire::VERSION_HEADER, "2"),
    ];
    for (i, (header, value)) in bad.iter().enumerate() {
        let mut h = valid(1000 + i as u64);
        h.insert(*header, *value);
        raw.publish_with_headers(format!("{PREFIX}.trivia.answer"), h, payload(1000))
            .await
            .unwrap();
    }
    // `%` is the empty token: the subject of the empty name, which `*`
    // matches and no bus accepts.
    raw.publish_with_headers(format!("{PREFIX}.%"), valid(2000), payload(2000)).await.unwrap();
    // A valid event without its optional headers: delivered with defaults.
    let mut minimal = async_nats::HeaderMap::new();
    for header in [wire::ORIGIN, wire::ID, wire::KEY] {
        minimal.insert(header, valid(7).get(header).unwrap().clone());
    }
    raw.publish_with_headers(format!("{PREFIX}.trivia.answer"), minimal, payload(7)).await.unwrap();
    raw.flush().await.unwrap();
    let expected_invalid = bad.len() as u64 + 1;
    assert!(
        eventually(WAIT, || seen.len() == 1 && bridge.stats().invalid == expected_invalid).await,
        "{:?}",
        bridge.stats()
    );
    tokio::time::sleep(QUIET).await;
    let events = seen.0.lock().unwrap().clone();
    assert_eq!(events.len(), 1, "only the valid event: {events:?}");
    let e = &events[0];
    assert_eq!((e.data()["n"].as_u64(), e.priority(), e.source()), (Some(7), Priority::Normal, ""));
    assert!(e.timestamp() > UNIX_EPOCH + Duration::from_secs(1_700_000_000));
    let stats = bridge.stats();
    assert_eq!((stats.imported, stats.invalid, stats.unknown_version), (1, expected_invalid, 1));
    assert_eq!(bus.stats().rejected, 1, "the refused name is the bus's rejection too");
    assert_tasks_never_failed(&stats);
}

/// Header blocks a client library cannot parse; nats-server forwards them
/// as they are.
const MALFORMED: [&[u8]; 4] = [
    b"NATS/1.0\r\nSwitchboard-Origin: x\xff\r\n\r\n",
    b"HTTP/1.1 200\r\nSwitchboard-Origin: x\r\n\r\n",
    b"NATS/1.0\r\nno colon on this line\r\n\r\n",
    b"NATS/1.0\r\nbad name: value\r\n\r\n",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_header_block_costs_core_mode_a_counted_reconnect_and_importing_goes_on() {
    let Some(server) = PrivateServer::start() else { return };
    let bus = Bus::new().unwrap();
    let bridge = Bridge::start(&bus, BridgeConfig::new(server.url()).prefix(PREFIX).import("*"))
        .await
        .unwrap();
    let seen = Seen::on(&bus);
    let raw = async_nats::connect(server.url()).await.unwrap();
    let mut next = 0;
    for (i, block) in MALFORMED.iter().enumerate() {
        let said = raw_publish(server.port, None, &format!("{PREFIX}.trivia.answer"), block, b"{}")
            .unwrap();
        assert_eq!(said, "", "the server takes the message as it is");
        let reconnects = i as u64 + 1;
        assert!(
            eventually(WAIT, || bridge.stats().client_side_reconnects == reconnects).await,
            "block {i}: {:?}",
            bridge.stats()
        );
        // Back: once one probe arrives (the subscription is renewed), every
        // event sent after it arrives too.
        let arrived = seen.len();
        let mut probes = 0;
        while seen.len() == arrived {
            assert!(probes < 500, "the bridge never imported again: {:?}", bridge.stats());
            send_valid(&raw, next..next + 1).await;
            next += 1;
            probes += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let before = seen.len();
        send_valid(&raw, next..next + 100).await;
        next += 100;
        assert!(eventually(WAIT, || seen.len() == before + 100).await, "{:?}", bridge.stats());
    }
    let stats = bridge.stats();
    assert_eq!(stats.client_side_reconnects, 4, "{stats:?}");
    assert_eq!(stats.reconnects, 4, "{stats:?}");
    assert_tasks_never_failed(&stats);
    // Nothing the bus saw is made up: every number is one we sent.
    assert!(seen.numbers().iter().all(|&n| n < next));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_header_block_in_jetstream_is_given_up_at_the_delivery_limit_and_every_event_beside_it_arrives(
) {
    let Some(server) = PrivateServer::start() else { return };
    let bus = Bus::new().unwrap();
    let config = BridgeConfig::new(server.url()).prefix(PREFIX).import("*").mode(js_mode("poison"));
    let bridge = Bridge::start(&bus, config).await.unwrap();
    let seen = Seen::on(&bus);
    let raw = async_nats::connect(server.url()).await.unwrap();
    // Valid events before, between and after two unreadable ones, all in
    // the stream together: a pull batch holds several of them.
    send_valid(&raw, 0..100).await;
    raw_publish(server.port, None, &format!("{PREFIX}.a"), MALFORMED[0], b"{}").unwrap();
    send_valid(&raw, 100..200).await;
    raw_publish(server.port, None, &format!("{PREFIX}.b"), MALFORMED[3], b"{}").unwrap();
    send_valid(&raw, 200..300).await;
    assert!(
        eventually(Duration::from_secs(60), || seen.len() >= 300
            && bridge.stats().undeliverable == 2)
        .await,
        "{} seen, {:?}",
        seen.len(),
        bridge.stats()
    );
    tokio::time::sleep(QUIET).await;
    assert_eq!(seen.numbers(), (0..300).collect::<Vec<_>>(), "each valid event once");
    let stats = bridge.stats();
    assert!(stats.client_side_reconnects >= 2, "{stats:?}");
    assert_eq!((stats.imported, stats.undeliverable), (300, 2), "{stats:?}");
    assert_tasks_never_failed(&stats);
}

/// 10,000 messages that are not bridged events, interleaved with 10,000
/// that are: every kind of refusal the decoder has, in turn.
async fn a_hostile_flood_leaves_every_valid_event_delivered(mode: Mode) {
    let Some(server) = PrivateServer::start() else { return };
    let bus = Bus::new().unwrap();
    let config = BridgeConfig::new(server.url()).prefix(PREFIX).import("*").mode(mode);
    let bridge = Bridge::start(&bus, config).await.unwrap();
    let seen = Seen::on(&bus);
    let raw = async_nats::connect(server.url()).await.unwrap();
    const N: u64 = 10_000;
    let subject = format!("{PREFIX}.trivia.answer");
    for n in 0..N {
        let mut h = valid(N + n);
        let (subject, body): (String, bytes::Bytes) = match n % 8 {
            0 => {
                h.insert(wire::TIMESTAMP, "18446744073709551615000000000");
                (subject.clone(), payload(n))
            }
            1 => {
                h.insert(wire::PRIORITY, "urgent");
                (subject.clone(), payload(n))
            }
            2 => {
                h.insert(wire::VERSION_HEADER, "99");
                (subject.clone(), payload(n))
            }
            3 => (subject.clone(), "{not json".into()),
            4 => {
                h.insert(wire::KEY, "not a key");
                (subject.clone(), payload(n))
            }
            5 => (format!("{PREFIX}.a%zz"), payload(n)),
            6 => {
                h.insert(wire::SOURCE, "%");
                h.insert(wire::ORIGIN, "");
                (subject.clone(), payload(n))
            }
            _ => {
                h.insert(wire::ID, "-1");
                (subject.clone(), payload(n))
            }
        };
        raw.publish_with_headers(subject, h, body).await.unwrap();
        raw.publish_with_headers(format!("{PREFIX}.trivia.answer"), valid(n), payload(n))
            .await
            .unwrap();
    }
    raw.flush().await.unwrap();
    assert!(
        eventually(Duration::from_secs(60), || {
            let s = bridge.stats();
            s.invalid == N && (seen.len() as u64 == N || s.slow_consumer > 0)
        })
        .await,
        "{} seen, {:?}",
        seen.len(),
        bridge.stats()
    );
    tokio::time::sleep(QUIET).await;
    let stats = bridge.stats();
    if stats.slow_consumer == 0 {
        assert_eq!(seen.numbers(), (0..N).collect::<Vec<_>>());
        assert_eq!(stats.imported, N);
    }
    assert_eq!((stats.invalid, stats.unknown_version), (N, N / 8), "{stats:?}");
    assert_eq!(stats.client_side_reconnects, 0);
    assert_tasks_never_failed(&stats);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_flood_leaves_every_valid_event_delivered_in_core_mode() {
    a_hostile_flood_leaves_every_valid_event_delivered(Mode::Core).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_flood_leaves_every_valid_event_delivered_in_jetstream_mode() {
    a_hostile_flood_leaves_every_valid_event_delivered(js_mode("flood")).await;
}

/// Only the bridge users may publish and subscribe under the prefix, each
/// bridge has an inbox prefix of its own, and the JetStream API is narrowed
/// to the calls a bridge makes on its stream: the configuration the crate
/// docs recommend, for JetStream bridges. The guest may use `_INBOX.>`, as
/// any requester needs to.
const AUTHORISATION: &str = r#"
authorization {
  BRIDGE_A = {
    publish = ["perm.>", "_INBOX_a.>", "$JS.API.INFO", "$JS.API.STREAM.INFO.PERM", "$JS.API.STREAM.CREATE.PERM",
               "$JS.API.CONSUMER.CREATE.PERM.>", "$JS.API.CONSUMER.DURABLE.CREATE.PERM.>",
               "$JS.API.CONSUMER.INFO.PERM.>", "$JS.API.CONSUMER.MSG.NEXT.PERM.>", "$JS.ACK.PERM.>"]
    subscribe = ["perm.>", "_INBOX_a.>", "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.PERM.*"]
  }
  BRIDGE_B = {
    publish = ["perm.>", "_INBOX_b.>", "$JS.API.INFO", "$JS.API.STREAM.INFO.PERM", "$JS.API.STREAM.CREATE.PERM",
               "$JS.API.CONSUMER.CREATE.PERM.>", "$JS.API.CONSUMER.DURABLE.CREATE.PERM.>",
               "$JS.API.CONSUMER.INFO.PERM.>", "$JS.API.CONSUMER.MSG.NEXT.PERM.>", "$JS.ACK.PERM.>"]
    subscribe = ["perm.>", "_INBOX_b.>", "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.PERM.*"]
  }
  users = [
    { user: bridge-a, password: secret-a, permissions: $BRIDGE_A }
    { user: bridge-b, password: secret-b, permissions: $BRIDGE_B }
    { user: guest, password: guest-pw, permissions: { publish: ["chat.>", "_INBOX.>"], subscribe: ["chat.>", "_INBOX.>"] } }
  ]
}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_bridge_users_may_speak_on_the_prefix() {
    let Some(server) = PrivateServer::with_config(AUTHORISATION) else { return };
    let url = server.url();
    let js = |durable: &str| Mode::JetStream(JetStreamConfig::new(durable).stream("PERM"));
    let (a, b) = (Bus::new().unwrap(), Bus::new().unwrap());
    let config = |user: &str, password: &str| {
        let inbox = format!("_INBOX_{}", &user[user.len() - 1..]);
        BridgeConfig::new(&url).prefix("perm").user_and_password(user, password).inbox_prefix(inbox)
    };
    let ea = Bridge::start(&a, config("bridge-a", "secret-a").export("*").mode(js("perm_a")))
        .await
        .expect("bridge a logs in");
    let ib = Bridge::start(&b, config("bridge-b", "secret-b").import("*").mode(js("perm_b")))
        .await
        .expect("bridge b logs in");
    let seen = Seen::on(&b);

    // A bridge with the wrong password is refused, with a typed error.
    let wrong = Bridge::start(&Bus::new().unwrap(), config("bridge-a", "guess").import("*")).await;
    assert!(matches!(wrong, Err(switchboard_nats::BridgeError::Connect { .. })), "{wrong:?}");

    // No credentials: the server refuses the connection.
    assert!(async_nats::connect(url.as_str()).await.is_err());
    let said = raw_publish(server.port, None, "perm.trivia.answer", b"NATS/1.0\r\n\r\n", b"{}");
    let said = said.map(|s| s.to_lowercase()).unwrap_or_default();
    assert!(said.contains("authorization violation"), "{said:?}");

    // Logged in, without the right: the server refuses each publish, well
    // formed or not, and the JetStream API.
    let guest = async_nats::ConnectOptions::new()
        .user_and_password("guest".into(), "guest-pw".into())
        .connect(url.as_str())
        .await
        .expect("guest logs in");
    for n in 0..10 {
        guest
            .publish_with_headers("perm.trivia.answer".to_owned(), valid(n), payload(n))
            .await
            .unwrap();
    }
    guest.flush().await.unwrap();
    let stored = async_nats::jetstream::new(guest.clone())
        .publish_with_headers("perm.trivia.answer".to_owned(), valid(99), payload(99))
        .await;
    let stored = match stored {
        Ok(ack) => ack.await.map(|_| ()),
        Err(e) => Err(e),
    };
    assert!(stored.is_err(), "the guest must not reach the stream");
    for block in [&b"NATS/1.0\r\n\r\n"[..], MALFORMED[0]] {
        let said = raw_publish(
            server.port,
            Some(("guest", "guest-pw")),
            "perm.trivia.answer",
            block,
            b"{}",
        )
        .unwrap()
        .to_lowercase();
        assert!(said.contains("permissions violation"), "{said:?}");
    }

    // The guest listens on every inbox it may, and tries to reach the
    // bridges' own: it reads nothing bridged, and its publish there is
    // refused.
    let mut snoop = guest.subscribe("_INBOX.>").await.unwrap();
    guest.flush().await.unwrap();
    for inbox in ["_INBOX_a.x", "_INBOX_b.x"] {
        let said =
            raw_publish(server.port, Some(("guest", "guest-pw")), inbox, MALFORMED[0], b"{}")
                .unwrap()
                .to_lowercase();
        assert!(said.contains("permissions violation"), "{said:?}");
    }

    // The bridges themselves still speak: one event from A, and it is all
    // B ever sees.
    let marker = serde_json::json!({"n": 1, "secret": "hunter2"});
    a.publish(Event::new("trivia.marker", marker, "a")).unwrap();
    assert!(eventually(WAIT, || seen.len() == 1).await, "{:?}", ib.stats());
    tokio::time::sleep(QUIET).await;
    assert_eq!(seen.0.lock().unwrap()[0].name(), "trivia.marker");
    let mut leaked = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout(QUIET, futures::StreamExt::next(&mut snoop)).await
    {
        leaked.push(String::from_utf8_lossy(&m.payload).into_owned());
    }
    assert!(leaked.iter().all(|p| !p.contains("hunter2")), "the guest read it: {leaked:?}");
    for stats in [ea.stats(), ib.stats()] {
        assert_eq!((stats.reconnects, stats.permission_errors), (0, 0), "{stats:?}");
        assert!(stats.healthy(), "{stats:?}");
    }
    let stats = ib.stats();
    assert_eq!(
        (stats.imported, stats.invalid, stats.client_side_reconnects),
        (1, 0, 0),
        "{stats:?}"
    );
    assert_tasks_never_failed(&stats);
    assert_eq!(ea.shutdown(Duration::from_secs(5)).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridge_asked_for_tls_speaks_it_and_refuses_a_server_it_cannot_verify() {
    // A test authority's certificate for 127.0.0.1, and the server's key.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tls");
    let config = format!(
        "tls {{\n  cert_file: {:?}\n  key_file: {:?}\n}}\n",
        dir.join("server.pem"),
        dir.join("server-key.pem")
    );
    let Some(server) = PrivateServer::with_config(&config) else { return };
    let tls = || {
        BridgeConfig::new(server.url())
            .prefix("secure")
            .require_tls(true)
            .root_certificates(dir.join("ca.pem"))
    };
    let (a, b) = (Bus::new().unwrap(), Bus::new().unwrap());
    let ea = Bridge::start(&a, tls().export("*")).await.expect("bridge a over TLS");
    let ib = Bridge::start(&b, tls().import("*")).await.expect("bridge b over TLS");
    let seen = Seen::on(&b);
    a.publish(Event::new("trivia.started", serde_json::json!({"n": 1}), "a")).unwrap();
    assert!(eventually(WAIT, || seen.len() == 1).await, "{:?} {:?}", ea.stats(), ib.stats());
    // Without the authority that signed the server's certificate, the
    // bridge does not connect.
    let unverified = BridgeConfig::new(server.url()).prefix("secure").require_tls(true);
    let refused = Bridge::start(&Bus::new().unwrap(), unverified.import("*")).await;
    let Err(switchboard_nats::BridgeError::Connect { reason, .. }) = refused else {
        panic!("connected to a server it cannot verify: {refused:?}")
    };
    assert!(reason.contains("UnknownIssuer"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridge_logs_in_with_a_token_or_an_nkey_and_is_refused_without() {
    type Login = Box<dyn Fn(BridgeConfig) -> BridgeConfig>;
    let user = nkeys::KeyPair::new_user();
    let seed = user.seed().unwrap();
    let stranger = nkeys::KeyPair::new_user().seed().unwrap();
    let cases: [(String, Login, Login); 2] = [
        (
            "authorization { token: \"s3cret-token\" }".to_owned(),
            Box::new(|c: BridgeConfig| c.token("s3cret-token")),
            Box::new(|c: BridgeConfig| c.token("guess")),
        ),
        (
            format!("authorization {{ users = [ {{ nkey: {} }} ] }}", user.public_key()),
            Box::new(move |c: BridgeConfig| c.nkey(seed.clone())),
            Box::new(move |c: BridgeConfig| c.nkey(stranger.clone())),
        ),
    ];
    for (config, good, bad) in cases {
        let Some(server) = PrivateServer::with_config(&config) else { return };
        let at = |login: &Login| login(BridgeConfig::new(server.url()).prefix("login").import("*"));
        let bus = Bus::new().unwrap();
        let bridge = Bridge::start(&bus, at(&good)).await.expect("logs in");
        assert!(bridge.stats().connected);
        let refused = Bridge::start(&bus, at(&bad)).await;
        assert!(
            matches!(refused, Err(switchboard_nats::BridgeError::Connect { .. })),
            "{refused:?}"
        );
        // Secrets stay out of debug output.
        let shown = format!("{:?}", at(&good));
        assert!(!shown.contains("s3cret") && !shown.contains("SU"), "{shown}");
    }
}

/// A permission the server refuses (here the delivery-limit advisories'
/// subscription) is counted and makes the bridge unhealthy; and, since it
/// leaves the connection up, it does not pass for the reason of a later
/// reconnect, which is still told to be the client's (and quarantines).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_permission_is_counted_and_does_not_explain_a_later_reconnect() {
    let config = AUTHORISATION.replace(
        r#"subscribe = ["perm.>", "_INBOX_b.>", "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.PERM.*"]"#,
        r#"subscribe = ["perm.>", "_INBOX_b.>"]"#,
    );
    assert_ne!(config, AUTHORISATION);
    let Some(server) = PrivateServer::with_config(&config) else { return };
    let b = Bus::new().unwrap();
    let ib = Bridge::start(
        &b,
        BridgeConfig::new(server.url())
            .prefix("perm")
            .user_and_password("bridge-b", "secret-b")
            .inbox_prefix("_INBOX_b")
            .import("*")
            .mode(Mode::JetStream(JetStreamConfig::new("perm_b").stream("PERM"))),
    )
    .await
    .unwrap();
    assert!(eventually(WAIT, || ib.stats().permission_errors == 1).await, "{:?}", ib.stats());
    assert!(!ib.stats().healthy());
    let said = raw_publish(
        server.port,
        Some(("bridge-a", "secret-a")),
        "perm.trivia.answer",
        MALFORMED[0],
        b"{}",
    )
    .unwrap();
    assert_eq!(said, "");
    assert!(eventually(WAIT, || ib.stats().client_side_reconnects == 1).await, "{:?}", ib.stats());
    assert_eq!(ib.stats().reconnects, 1);
}
