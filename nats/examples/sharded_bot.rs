//! A chat bot sharded over two processes that share one event space
//! through NATS.
//!
//! * the **trivia** shard hosts the trivia plugin and the chat: it plays
//!   rounds, and exports `trivia.*`; it imports `stats.*`;
//! * the **stats** shard hosts the stats plugin, which counts rounds,
//!   answers and wins from the imported `trivia.*` events, and publishes a
//!   `stats.leaderboard` after every round, exported back to the trivia
//!   shard.
//!
//! Run with no arguments, it starts both shards as child processes (the
//! same binary, `--shard trivia` and `--shard stats`), relays what each
//! prints, and checks that each received everything the other sent. It
//! fails with a clear message when no NATS server answers.
//!
//! Each shard ends with what its bridge counted, split by kind of event,
//! and the parent sets what one shard exported against what the other
//! imported. They may differ by a few `shard.hello.*` events: the bridge
//! runs in core mode (at most once), and a hello sent before the other
//! shard had subscribed reached nobody. That is why the shards shake hands
//! before the game, which must arrive in full.
//!
//! `cargo run --release --example sharded_bot -- [--server nats://127.0.0.1:4222] [--rounds 20]`

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::json;
use switchboard::{Bus, Event, Handler};
use switchboard_host::{Plugin, PluginContext, PluginError, PluginManager};
use switchboard_metrics::Metrics;
use switchboard_nats::{Bridge, BridgeConfig, BridgeStats};
use switchboard_plugins::{
    payload, ChatMessage, StatsPlugin, StatsStore, TriviaEnded, TriviaPlugin,
};

#[derive(Parser, Debug)]
struct Args {
    /// The NATS server(s).
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    server: String,
    /// Trivia rounds to play.
    #[arg(long, default_value_t = 20)]
    rounds: u64,
    /// Run one shard (`trivia` or `stats`) instead of starting both.
    #[arg(long)]
    shard: Option<String>,
    /// The subject prefix the shards share (default: fresh per run).
    #[arg(long)]
    prefix: Option<String>,
    /// Serve each shard's Prometheus metrics: the trivia shard at this
    /// address, the stats shard at the next port (e.g. 127.0.0.1:9187 and
    /// 127.0.0.1:9188).
    #[arg(long)]
    metrics: Option<std::net::SocketAddr>,
}

/// A shard's bus, observed and served on `--metrics` when asked (the stats
/// shard on the next port).
fn shard_bus(args: &Args, shard: &str) -> Result<(Bus, Option<Metrics>), String> {
    let Some(mut addr) = args.metrics else {
        return Ok((Bus::builder().name(shard).build().map_err(|e| e.to_string())?, None));
    };
    if shard == "stats" {
        addr.set_port(addr.port().wrapping_add(1));
    }
    switchboard_metrics::install_prometheus(addr).map_err(|e| e.to_string())?;
    println!("{shard} shard metrics at http://{addr}/metrics");
    let metrics = Metrics::new();
    let bus = Bus::builder()
        .name(shard)
        .observer(metrics.observer())
        .build()
        .map_err(|e| e.to_string())?;
    Ok((bus, Some(metrics)))
}

/// Watches a shard's bus, plugins and bridge, when it serves metrics.
fn watch(metrics: &Option<Metrics>, bus: &Bus, plugins: &PluginManager, bridge: &Arc<Bridge>) {
    if let Some(m) = metrics {
        m.watch(bus);
        m.watch_host(plugins);
        m.watch_bridge(bridge);
    }
}

/// Guesses players shout until one is right (the trivia plugin's answers
/// are among them).
const GUESSES: &[&str] =
    &["42", "4", "red", "blue", "6", "8", "london", "paris", "mars", "jupiter"];
const PLAYERS: &[&str] = &["alice", "bob", "carol", "dave"];
const LIMIT: Duration = Duration::from_secs(30);

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let result = runtime.block_on(async {
        match args.shard.as_deref() {
            None => parent(&args).await,
            Some("trivia") => trivia_shard(&args).await,
            Some("stats") => stats_shard(&args).await,
            Some(other) => Err(format!("unknown shard {other:?}: use trivia or stats")),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sharded_bot: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Starts both shards, relays their output, checks their results.
async fn parent(args: &Args) -> Result<(), String> {
    // Fail early and clearly when no server answers.
    let probe =
        tokio::time::timeout(Duration::from_secs(3), async_nats::connect(args.server.as_str()))
            .await;
    match probe {
        Ok(Ok(client)) => drop(client),
        Ok(Err(e)) => return Err(no_server(&args.server, &e.to_string())),
        Err(_) => return Err(no_server(&args.server, "timed out")),
    }
    let prefix =
        args.prefix.clone().unwrap_or_else(|| format!("sharded_bot.run{}", std::process::id()));
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    println!("two shards over NATS at {} under `{prefix}.>`, {} rounds", args.server, args.rounds);
    let spawn = |shard: &str| {
        let mut command = Command::new(&exe);
        command
            .args(["--shard", shard, "--server", &args.server, "--prefix", &prefix])
            .args(["--rounds", &args.rounds.to_string()]);
        if let Some(addr) = args.metrics {
            command.args(["--metrics", &addr.to_string()]);
        }
        command
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start the {shard} shard: {e}"))
    };
    let children = [("stats", spawn("stats")?), ("trivia", spawn("trivia")?)];
    let results = Arc::new(Mutex::new(BTreeMap::new()));
    let mut relays = Vec::new();
    for (name, mut child) in children {
        let stdout = child.stdout.take().expect("piped");
        let results = results.clone();
        relays.push(std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(json) = line.strip_prefix("RESULT ") {
                    results
                        .lock()
                        .unwrap()
                        .insert(name, serde_json::from_str::<serde_json::Value>(json).ok());
                } else {
                    println!("[{name:>6}] {line}");
                }
            }
            child.wait().map(|s| (name, s.success()))
        }));
    }
    let mut failed = Vec::new();
    for relay in relays {
        match relay.join().expect("relay thread") {
            Ok((_, true)) => {}
            Ok((name, false)) => failed.push(name),
            Err(e) => return Err(e.to_string()),
        }
    }
    if !failed.is_empty() {
        return Err(format!("shard(s) {failed:?} failed"));
    }
    let results = results.lock().unwrap().clone();
    let get = |shard: &str, key: &str| {
        results
            .get(shard)
            .cloned()
            .flatten()
            .and_then(|v| v.pointer(&format!("/{key}")).and_then(serde_json::Value::as_u64))
            .ok_or(format!("{shard} shard gave no {key}"))
    };
    let sent = get("trivia", "trivia_events_sent")?;
    let received = get("stats", "trivia_events_received")?;
    let boards_sent = get("stats", "leaderboards_sent")?;
    let boards_received = get("trivia", "leaderboards_received")?;
    println!(
        "checked: trivia events {sent} sent / {received} received by the stats shard; leaderboards {boards_sent} sent / {boards_received} received by the trivia shard"
    );
    for (from, to) in [("trivia", "stats"), ("stats", "trivia")] {
        println!(
            "{}",
            explain(
                from,
                to,
                get(from, "bridge/exported")?,
                get(to, "bridge/imported")?,
                get(from, "hellos_sent")?,
                get(to, "hellos_imported")?,
            )
        );
    }
    for shard in ["trivia", "stats"] {
        let healthy = results
            .get(shard)
            .cloned()
            .flatten()
            .and_then(|v| v.pointer("/bridge/healthy").and_then(serde_json::Value::as_bool));
        if healthy != Some(true) {
            return Err(format!("the {shard} shard's bridge had a task stopped or restarted"));
        }
    }
    if sent != received || boards_sent != boards_received || boards_sent != args.rounds {
        return Err("an event was lost or doubled between the shards".into());
    }
    Ok(())
}

/// One line: what `from` exported, what `to` imported of it, and why the
/// two differ.
fn explain(
    from: &str,
    to: &str,
    exported: u64,
    imported: u64,
    hellos_sent: u64,
    hellos_imported: u64,
) -> String {
    let head = format!("{from} -> {to}: {exported} exported, {imported} imported");
    if imported == exported {
        return format!("{head}: every message arrived, once");
    }
    if imported > exported {
        return format!("{head}: {} more than were sent (a delivery twice?)", imported - exported);
    }
    let missing = exported - imported;
    let early = hellos_sent.saturating_sub(hellos_imported);
    if missing == early {
        let what = if missing == 1 { "is a hello" } else { "are hellos" };
        format!(
            "{head}: the {missing} missing {what} the {from} shard sent before the {to} shard had subscribed; core NATS is at most once and keeps nothing for a subscriber not there yet (expected at start-up)"
        )
    } else {
        format!(
            "{head}: {missing} lost on the way ({early} of them start-up hellos); core NATS is at most once"
        )
    }
}

fn no_server(server: &str, why: &str) -> String {
    format!(
        "no NATS server answers at {server} ({why}). Start one with `nats-server -js`, or pass --server URL."
    )
}

fn bridge_config(args: &Args, shard: &str) -> BridgeConfig {
    BridgeConfig::new(&args.server)
        .prefix(args.prefix.clone().unwrap_or_else(|| "sharded_bot".into()))
        .instance(format!("shard-{shard}"))
        .export("shard.*")
        .import("shard.*")
}

/// Both shards say hello until each has heard the other: after that, each
/// one's imports are subscribed, and nothing sent is lost for want of a
/// listener. Returns how many hellos this shard sent.
async fn handshake(bus: &Bus, me: &str, peer: &str) -> Result<u64, String> {
    let heard = Arc::new(AtomicU64::new(0));
    let h = heard.clone();
    let peer_hello = format!("shard.hello.{peer}");
    let guard = bus
        .subscribe_scoped(
            &format!("shard.hello.{peer}"),
            Handler::sync(move |_e: &Event| {
                h.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }),
            "handshake",
        )
        .map_err(|e| e.to_string())?;
    let start = Instant::now();
    // Keep saying hello a little after hearing the peer, so it hears us too.
    let mut after = 0;
    let mut sent = 0;
    while after < 5 {
        bus.publish(Event::new(format!("shard.hello.{me}"), json!(null), me))
            .map_err(|e| e.to_string())?;
        sent += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
        if heard.load(Ordering::Relaxed) > 0 {
            after += 1;
        }
        if start.elapsed() > LIMIT {
            return Err(format!("never heard {peer_hello} from the other shard"));
        }
    }
    drop(guard);
    Ok(sent)
}

/// Counts the peer's hellos this shard imports, over the whole run (made
/// before the bridge starts, so it sees every one the bridge imports).
fn count_imported_hellos(bus: &Bus) -> Result<Arc<AtomicU64>, String> {
    let count = Arc::new(AtomicU64::new(0));
    let c = count.clone();
    bus.subscribe(
        "shard.hello.*",
        Handler::sync(move |event: &Event| {
            if event.origin().is_some() {
                c.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        }),
        "hello-counter",
    )
    .map_err(|e| e.to_string())?;
    Ok(count)
}

/// `total (a x, b y, ...)`, the parts that are not zero, and what is left
/// over if they do not add up.
fn split(total: u64, parts: &[(u64, &str)]) -> String {
    let mut shown: Vec<String> =
        parts.iter().filter(|(n, _)| *n > 0).map(|(n, what)| format!("{n} {what}")).collect();
    let sum: u64 = parts.iter().map(|(n, _)| n).sum();
    if sum != total {
        shown.push(format!("{} not accounted for", total.abs_diff(sum)));
    }
    if shown.is_empty() {
        total.to_string()
    } else {
        format!("{total} ({})", shown.join(", "))
    }
}

/// What a shard's bridge counted, each figure with what it is made of:
/// `sent` are the local events that match the export globs, `received` the
/// imported events by kind.
fn bridge_summary(stats: &BridgeStats, sent: &[(u64, &str)], received: &[(u64, &str)]) -> String {
    let total_sent: u64 = sent.iter().map(|(n, _)| n).sum();
    let mut line = format!(
        "bridge: of its {} local events to export, exported {}, dropped {}",
        split(total_sent, sent),
        stats.exported,
        stats.dropped
    );
    if stats.dropped > 0 {
        line.push_str(" (its queue was full: they never left, lowest priority first)");
    }
    if stats.queued > 0 {
        line.push_str(&format!(", {} still queued", stats.queued));
    }
    line.push_str(&format!("; imported {}", split(stats.imported, received)));
    line.push_str(&format!(
        "; skipped {} echoes (its own shard.* messages coming back)",
        stats.echoes_skipped
    ));
    for (n, what) in [
        (stats.duplicates_dropped, "re-sent duplicates dropped"),
        (stats.invalid, "invalid messages skipped"),
        (stats.refused, "imports the local bus refused (lost in core mode)"),
        (stats.slow_consumer, "slow-consumer reports (NATS dropped imports: the bus fell behind)"),
        (stats.unknown_version, "messages of an unknown wire format version"),
        (stats.client_side_reconnects, "reconnects after input the client could not parse"),
        (stats.undeliverable, "messages JetStream gave up on at the delivery limit"),
    ] {
        if n > 0 {
            line.push_str(&format!("; {n} {what}"));
        }
    }
    for task in stats.tasks.iter().filter(|t| t.restarts > 0 || !t.alive) {
        line.push_str(&format!(
            "; task {:?} {} after {} restarts ({})",
            task.name,
            if task.alive { "running" } else { "STOPPED" },
            task.restarts,
            task.last_failure.as_deref().unwrap_or("no failure")
        ));
    }
    line
}

/// A bridge's counters for the parent's check.
fn stats_json(stats: &BridgeStats) -> serde_json::Value {
    json!({
        "exported": stats.exported,
        "imported": stats.imported,
        "dropped": stats.dropped,
        "echoes_skipped": stats.echoes_skipped,
        "healthy": stats.healthy() && stats.tasks.iter().all(|t| t.restarts == 0),
    })
}

async fn trivia_shard(args: &Args) -> Result<(), String> {
    let (bus, metrics) = shard_bus(args, "trivia")?;
    let plugins = PluginManager::new(bus.clone());
    plugins.load(TriviaPlugin::new()).map_err(|e| e.to_string())?;
    let hellos_imported = count_imported_hellos(&bus)?;
    let bridge =
        Bridge::start(&bus, bridge_config(args, "trivia").export("trivia.*").import("stats.*"))
            .await
            .map_err(|e| e.to_string())?;
    let bridge = Arc::new(bridge);
    watch(&metrics, &bus, &plugins, &bridge);
    let sent = Arc::new(AtomicU64::new(0));
    let ended = Arc::new(AtomicU64::new(0));
    let (s, e) = (sent.clone(), ended.clone());
    bus.subscribe(
        "trivia.*",
        Handler::sync(move |event: &Event| {
            if event.origin().is_none() {
                s.fetch_add(1, Ordering::Relaxed);
                if event.name() == "trivia.ended" {
                    e.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(())
        }),
        "counter",
    )
    .map_err(|e| e.to_string())?;
    let boards = Arc::new(Mutex::new(Vec::new()));
    let b = boards.clone();
    bus.subscribe(
        "stats.leaderboard",
        Handler::sync(move |event: &Event| {
            b.lock().unwrap().push(event.data().clone());
            Ok(())
        }),
        "announcer",
    )
    .map_err(|e| e.to_string())?;
    let hellos_sent = handshake(&bus, "trivia", "stats").await?;
    println!("connected as {}; playing {} rounds", bridge.instance(), args.rounds);

    let mut seq = 0;
    let mut say = |user: &str, text: &str| {
        let line = ChatMessage {
            channel: "#games".into(),
            user: user.into(),
            text: text.into(),
            origin: 0,
            seq,
        };
        seq += 1;
        bus.publish(Event::typed("chat.message", line, "gateway"))
    };
    for round in 0..args.rounds {
        say("host", "!trivia").map_err(|e| e.to_string())?;
        bus.flush_async().await;
        for (i, guess) in GUESSES.iter().enumerate() {
            if ended.load(Ordering::Relaxed) > round {
                break;
            }
            say(PLAYERS[(i + round as usize) % PLAYERS.len()], guess).map_err(|e| e.to_string())?;
            bus.flush_async().await;
        }
        if ended.load(Ordering::Relaxed) <= round {
            return Err(format!("round {} never ended", round + 1));
        }
    }
    // The stats shard answers every round with a leaderboard.
    let start = Instant::now();
    while (boards.lock().unwrap().len() as u64) < args.rounds && start.elapsed() < LIMIT {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let last = boards.lock().unwrap().last().cloned().unwrap_or_default();
    println!("final leaderboard from the stats shard: {last}");
    bus.publish(Event::new(
        "shard.done",
        json!({"trivia_events": sent.load(Ordering::Relaxed)}),
        "trivia",
    ))
    .map_err(|e| e.to_string())?;
    bus.flush_async().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    bridge.flush(Duration::from_secs(5)).await;
    bus.flush_async().await;
    let stats = bridge.stats();
    let (trivia_sent, boards_received) =
        (sent.load(Ordering::Relaxed), boards.lock().unwrap().len() as u64);
    let hellos_imported = hellos_imported.load(Ordering::Relaxed);
    println!("sent {trivia_sent} trivia events; received {boards_received} leaderboards");
    println!(
        "{}",
        bridge_summary(
            &stats,
            &[(trivia_sent, "trivia events"), (hellos_sent, "hellos"), (1, "done")],
            &[(boards_received, "leaderboards"), (hellos_imported, "hellos")],
        )
    );
    println!(
        "RESULT {}",
        json!({
            "trivia_events_sent": trivia_sent,
            "leaderboards_received": boards_received,
            "hellos_sent": hellos_sent,
            "hellos_imported": hellos_imported,
            "bridge": stats_json(&stats),
        })
    );
    bridge.shutdown(Duration::from_secs(5)).await;
    bus.shutdown();
    Ok(())
}

/// Answers every trivia round that ended with the stats shard's
/// leaderboard, `stats.leaderboard`; counts the trivia events it received
/// and the leaderboards it sent.
struct Leaderboard {
    store: Arc<StatsStore>,
    received: Arc<AtomicU64>,
    boards: Arc<AtomicU64>,
}

impl Plugin for Leaderboard {
    fn name(&self) -> &str {
        "leaderboard"
    }

    fn setup(&mut self, ctx: &PluginContext) -> Result<(), PluginError> {
        let (r, b, st) = (self.received.clone(), self.boards.clone(), self.store.clone());
        let me = ctx.clone();
        let answer = Handler::sync(move |event: &Event| {
            r.fetch_add(1, Ordering::Relaxed);
            if let Some(TriviaEnded { round, winner, .. }) = payload::<TriviaEnded>(event) {
                let top: Vec<_> = st
                    .top_winners(3)
                    .into_iter()
                    .map(|(u, w)| json!({"user": u, "wins": w}))
                    .collect();
                let board = json!({"round": round, "winner": winner, "top": top});
                me.publish("stats.leaderboard", board)?;
                b.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        });
        ctx.subscribe("trivia.*", answer, ())?;
        Ok(())
    }
}

async fn stats_shard(args: &Args) -> Result<(), String> {
    let (bus, metrics) = shard_bus(args, "stats")?;
    let store = StatsStore::new();
    let plugins = PluginManager::new(bus.clone());
    plugins.load(StatsPlugin::new(store.clone())).map_err(|e| e.to_string())?;
    let hellos_imported = count_imported_hellos(&bus)?;
    let bridge =
        Bridge::start(&bus, bridge_config(args, "stats").import("trivia.*").export("stats.*"))
            .await
            .map_err(|e| e.to_string())?;
    let bridge = Arc::new(bridge);
    watch(&metrics, &bus, &plugins, &bridge);
    let received = Arc::new(AtomicU64::new(0));
    let boards = Arc::new(AtomicU64::new(0));
    let leaderboard =
        Leaderboard { store: store.clone(), received: received.clone(), boards: boards.clone() };
    plugins.load(leaderboard).map_err(|e| e.to_string())?;
    let done = Arc::new(Mutex::new(None));
    let d = done.clone();
    bus.subscribe(
        "shard.done",
        Handler::sync(move |event: &Event| {
            *d.lock().unwrap() = event.data()["trivia_events"].as_u64();
            Ok(())
        }),
        "coordinator",
    )
    .map_err(|e| e.to_string())?;
    let hellos_sent = handshake(&bus, "stats", "trivia").await?;
    println!("connected as {}; counting the trivia shard's rounds", bridge.instance());
    let start = Instant::now();
    loop {
        if let Some(expected) = *done.lock().unwrap() {
            if received.load(Ordering::Relaxed) >= expected {
                break;
            }
        }
        if start.elapsed() > LIMIT * 2 {
            return Err(format!(
                "received {} trivia events and no end",
                received.load(Ordering::Relaxed)
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bus.flush_async().await;
    bridge.flush(Duration::from_secs(5)).await;
    let stats = bridge.stats();
    let (received, boards) = (received.load(Ordering::Relaxed), boards.load(Ordering::Relaxed));
    let hellos_imported = hellos_imported.load(Ordering::Relaxed);
    let top = store.top_winners(4);
    println!(
        "received {received} trivia events: {} rounds, wins {top:?}, answers by alice {}",
        store.rounds(),
        store.participation("alice")
    );
    println!(
        "{}",
        bridge_summary(
            &stats,
            &[(boards, "leaderboards"), (hellos_sent, "hellos")],
            &[(received, "trivia events"), (hellos_imported, "hellos"), (1, "done")],
        )
    );
    println!(
        "RESULT {}",
        json!({
            "trivia_events_received": received,
            "leaderboards_sent": boards,
            "hellos_sent": hellos_sent,
            "hellos_imported": hellos_imported,
            "bridge": stats_json(&stats),
        })
    );
    bridge.shutdown(Duration::from_secs(5)).await;
    bus.shutdown();
    Ok(())
}
