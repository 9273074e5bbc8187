//! The exporter for real: a bus, a plugin host and a NATS bridge with known
//! traffic, scraped over HTTP, and every scraped value compared with what
//! the bus, the host and the bridge say themselves. One test: the recorder
//! is the process's.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use switchboard::{Bus, Event, Handler, Overflow, Priority, SubscribeOptions, Target};
use switchboard_host::{Plugin, PluginContext, PluginError, PluginManager};
use switchboard_metrics::{install_prometheus, names, Metrics};
use switchboard_nats::{Bridge, BridgeConfig};

/// One scraped sample: its name, labels and value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn scrape(addr: SocketAddr) -> (String, Vec<Sample>) {
    let mut stream = TcpStream::connect(addr).expect("the exporter answers");
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // The body may be chunked: keep only the lines that look like samples.
    let samples = body
        .lines()
        .filter(|l| l.starts_with("switchboard_"))
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').unwrap();
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split("\",")
                .filter(|kv| !kv.is_empty())
                .map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap();
                    (k.to_owned(), v.trim_matches('"').to_owned())
                })
                .collect();
            Sample { name: name.to_owned(), labels, value: value.parse().unwrap() }
        })
        .collect();
    (body.to_owned(), samples)
}

/// The one sample named `name` whose labels include `labels`.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> u64 {
    let found: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
        .collect();
    assert_eq!(found.len(), 1, "{name} {labels:?}: {found:?}");
    found[0].value as u64
}

struct Counting;

impl Plugin for Counting {
    fn name(&self) -> &str {
        "counting"
    }

    fn setup(&mut self, ctx: &PluginContext) -> Result<(), PluginError> {
        ctx.subscribe("t.*", Handler::sync(|_: &Event| Ok(())), ())?;
        // Once per instance: the load and the reload.
        ctx.publish("counting.ready", json!(null))?;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_over_http_says_what_the_bus_the_host_and_the_bridge_count() {
    let addr: SocketAddr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    install_prometheus(addr).expect("the exporter starts");
    // Read only when asked, so that the scrape sees one moment.
    let metrics = Metrics::builder().interval(Duration::from_secs(3600)).sample_every(1).build();
    let bus = Bus::builder().name("scraped").observer(metrics.observer()).build().unwrap();
    let host = PluginManager::new(bus.clone());
    host.register(|| Counting).unwrap();
    host.reload("counting").unwrap();
    metrics.watch(&bus);
    metrics.watch_host(&host);

    bus.subscribe("t.*", Handler::sync(|_: &Event| Err("always".into())), "failing").unwrap();
    bus.subscribe("p.*", Handler::sync(|_: &Event| panic!("on purpose")), "panicky").unwrap();
    for i in 0..3 {
        bus.publish(Event::new("p.x", json!(i), "test")).unwrap();
    }
    // A lossy backlog of one, held up: what it sheds is counted for it.
    let (hold, release) = std::sync::mpsc::channel::<()>();
    let release = std::sync::Mutex::new(release);
    bus.subscribe(
        "slow.*",
        Handler::sync(move |_: &Event| {
            let _ = release.lock().unwrap().recv_timeout(Duration::from_secs(10));
            Ok(())
        }),
        SubscribeOptions::new().plugin("slow").blocking().backlog(1).overflow(Overflow::Shed),
    )
    .unwrap();

    // Known traffic: 100 normal, 10 high, 5 low; 5 to the slow one.
    for (n, priority) in [(100, Priority::Normal), (10, Priority::High), (5, Priority::Low)] {
        for i in 0..n {
            bus.publish(Event::new("t.x", json!(i), "test").with_priority(priority)).unwrap();
        }
    }
    for i in 0..5 {
        bus.publish(Event::new("slow.x", json!(i), "test")).unwrap();
    }
    // Let the slow subscriber go once what it shed is counted.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while bus.stats().backlog_dropped < 3 {
        assert!(std::time::Instant::now() < deadline, "{:?}", bus.stats());
        std::thread::sleep(Duration::from_millis(1));
    }
    for _ in 0..5 {
        let _ = hold.send(());
    }
    let nats = std::env::var("SWITCHBOARD_NATS_URL").unwrap_or("nats://127.0.0.1:4222".into());
    let bridge = match Bridge::start(
        &bus,
        BridgeConfig::new(&nats)
            .prefix(format!("sbtest.scrape.p{}", std::process::id()))
            .export("t.*"),
    )
    .await
    {
        Ok(bridge) => Some(Arc::new(bridge)),
        Err(e) if std::env::var("SWITCHBOARD_REQUIRE_NATS").is_ok_and(|v| v == "1") => {
            panic!("no NATS server: {e}")
        }
        Err(e) => {
            eprintln!("SKIPPED the bridge part: {e}");
            None
        }
    };
    if let Some(bridge) = &bridge {
        metrics.watch_bridge(bridge);
        for i in 0..7 {
            bus.publish(Event::new("t.bridged", json!(i), "test")).unwrap();
        }
        assert!(bridge.flush(Duration::from_secs(10)).await);
    }
    bus.flush_async().await;

    metrics.collect();
    let (body, samples) = scrape(addr);
    let stats = bus.stats();
    let bus_label = ("bus", "scraped");
    for (i, p) in ["low", "normal", "high"].iter().enumerate() {
        assert_eq!(
            value(&samples, names::PUBLISHED, &[bus_label, ("priority", p)]),
            stats.published_by_priority[i]
        );
        assert_eq!(
            value(&samples, names::QUEUE_DEPTH, &[bus_label, ("priority", p)]),
            stats.queue_depth[i]
        );
    }
    assert_eq!(
        stats.published_by_priority,
        [5, 100 + 5 + 3 + 2 + 7 * u64::from(bridge.is_some()), 10]
    );
    assert_eq!(value(&samples, names::CALLS, &[bus_label]), stats.dispatched);
    assert_eq!(value(&samples, names::ERRORS, &[bus_label]), stats.handler_errors);
    assert_eq!(value(&samples, names::EVENTS_DISPATCHED, &[bus_label]), stats.events_dispatched);
    assert_eq!(value(&samples, names::SUBSCRIPTIONS, &[bus_label]), stats.subscriptions);
    assert_eq!(
        value(&samples, names::DROPPED, &[bus_label, ("reason", "backlog")]),
        stats.backlog_dropped
    );
    assert!(stats.backlog_dropped > 0, "the slow subscriber shed: {stats:?}");

    // Per subscription, as `subscriptions()` says (totals per plugin and
    // pattern; the reload's replaced instance counted in its plugin's).
    for info in bus.subscriptions(Target::All) {
        let labels = [bus_label, ("plugin", &*info.plugin), ("pattern", &*info.pattern)];
        let calls = value(&samples, names::SUBSCRIPTION_CALLS, &labels);
        if info.plugin == "counting" {
            assert!(calls >= info.stats.calls, "{info:?}");
        } else {
            assert_eq!(calls, info.stats.calls, "{info:?}");
        }
        assert_eq!(value(&samples, names::SUBSCRIPTION_ERRORS, &labels), info.stats.errors);
        assert_eq!(value(&samples, names::SUBSCRIPTION_PANICS, &labels), info.stats.panics);
        assert_eq!(value(&samples, names::SUBSCRIPTION_TIMEOUTS, &labels), info.stats.timeouts);
        assert_eq!(
            value(&samples, names::SUBSCRIPTION_DROPPED, &labels),
            info.stats.backlog_dropped
        );
        assert_eq!(value(&samples, names::BACKLOG, &labels), info.stats.backlog);
    }
    let failing = [bus_label, ("plugin", "failing"), ("pattern", "t.*")];
    assert_eq!(
        value(&samples, names::SUBSCRIPTION_ERRORS, &failing),
        115 + 7 * u64::from(bridge.is_some())
    );
    assert_eq!(
        value(&samples, names::SUBSCRIPTION_CALLS, &failing),
        115 + 7 * u64::from(bridge.is_some())
    );

    // Latency histograms, as histograms: buckets, a sum and a count, one
    // sample per call (sample_every 1).
    assert!(body.contains(&format!("# TYPE {} histogram", names::LATENCY)), "{body}");
    assert!(body.contains(&format!("# TYPE {} histogram", names::DURATION)));
    let count = format!("{}_count", names::DURATION);
    assert_eq!(
        value(&samples, &count, &[bus_label, ("plugin", "failing")]),
        115 + 7 * u64::from(bridge.is_some())
    );
    assert!(samples.iter().any(|s| s.name == format!("{}_bucket", names::LATENCY)
        && s.labels.get("le").is_some_and(|le| le == "0.001")));

    // The host.
    let hs = host.stats();
    assert_eq!((hs.loaded, hs.loads, hs.reloads), (1, 1, 1));
    assert_eq!(value(&samples, names::PLUGINS_LOADED, &[bus_label]), 1);
    assert_eq!(value(&samples, names::PLUGIN_PUBLISHED, &[bus_label, ("plugin", "counting")]), 2);
    let panicky = [bus_label, ("plugin", "panicky"), ("pattern", "p.*")];
    assert_eq!(value(&samples, names::SUBSCRIPTION_PANICS, &panicky), 3);
    assert_eq!(value(&samples, names::PANICS, &[bus_label]), 3);
    assert_eq!(value(&samples, names::PLUGIN_LOADS, &[bus_label]), 1);
    assert_eq!(value(&samples, names::PLUGIN_RELOADS, &[bus_label, ("outcome", "ok")]), 1);
    assert_eq!(
        value(&samples, &format!("{}_count", names::PLUGIN_RELOAD_SECONDS), &[bus_label]),
        1
    );

    // The bridge.
    if let Some(bridge) = &bridge {
        let bs = bridge.stats();
        let b = ("bridge", bridge.instance());
        assert_eq!(bs.exported, 7);
        assert_eq!(value(&samples, names::BRIDGE, &[b, ("what", "exported")]), bs.exported);
        assert_eq!(value(&samples, names::BRIDGE, &[b, ("what", "dropped")]), bs.dropped);
        assert_eq!(value(&samples, names::BRIDGE_CONNECTED, &[b]), 1);
        assert_eq!(value(&samples, names::BRIDGE_TASKS_ALIVE, &[b]), bs.tasks.len() as u64);
    }

    // Every series named is one the exporter emits: the dashboard relies
    // on it.
    for name in names::ALL {
        assert!(body.contains(&format!("\n{name}")), "{name} is not exported");
    }
    // And every series the committed Grafana dashboard queries is one of
    // them, exported here.
    let dashboard: serde_json::Value =
        serde_json::from_str(include_str!("../dashboard/switchboard.json"))
            .expect("the dashboard is JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10);
    let mut queried = std::collections::BTreeSet::new();
    for panel in panels {
        let targets = panel["targets"].as_array().expect("each panel queries");
        assert!(!targets.is_empty(), "{}", panel["title"]);
        for target in targets {
            let expr = target["expr"].as_str().expect("a PromQL expression");
            for (at, _) in expr.match_indices("switchboard_") {
                let name: String = expr[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                queried.insert(name);
            }
        }
    }
    assert!(queried.len() >= 20, "{queried:?}");
    for name in &queried {
        let series = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(name);
        assert!(names::ALL.contains(&series), "the dashboard queries {name}, which is not ours");
        assert!(body.contains(&format!("\n{name}")), "the dashboard queries {name}, not exported");
    }
}
