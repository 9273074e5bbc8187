//! The heavy-bot demo: a busy chat bot on Switchboard.
//!
//! The four example plugins (trivia, stats, quote, search), a thousand
//! synthetic plugins with ten thousand literal and wildcard subscriptions,
//! chat traffic from several publisher threads, a faulty plugin (errors and
//! panics), a slow plugin (a blocking handler with a bounded backlog), a
//! latency probe, and a hot reload of `stats` halfway through. At the end it
//! prints what happened and checks it: every delivery counted, nothing
//! dropped, the reload lost and duplicated nothing (by sequence numbers),
//! the faulty plugin's failures stayed its own. It exits non-zero if any
//! check fails.
//!
//! `cargo run --release -p switchboard-plugins --example bot_demo -- --help`
//!
//! With `--metrics 127.0.0.1:9187` it serves Prometheus metrics while it
//! runs (`switchboard-metrics`); with `--plot FILE.svg` too, it scrapes its
//! own endpoint over HTTP as it runs and draws what an operator would see.

#[path = "support/operator.rs"]
mod operator;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use clap::builder::RangedU64ValueParser;
use clap::Parser;
use serde_json::{json, Value};
use switchboard::{Bus, Event, Handler, Overflow, SubscribeOptions};
use switchboard_host::{Plugin, PluginContext, PluginError, PluginManager};
use switchboard_plugins::{
    ChatMessage, QuotePlugin, SearchIndex, SearchPlugin, StatsPlugin, StatsStore, TriviaPlugin,
};

/// A busy chat bot on Switchboard: plugins, chat traffic, a faulty and a
/// slow plugin, and a hot reload, checked at the end.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// How long the publishers run, in seconds.
    #[arg(long, default_value_t = 8.0)]
    duration: f64,
    /// Stop after this many chat lines per publisher instead of after
    /// `--duration`.
    #[arg(long)]
    events: Option<u64>,
    /// Synthetic plugins besides the example ones.
    #[arg(long, default_value_t = 1_000)]
    plugins: usize,
    /// Subscriptions of the synthetic plugins, in all (at least one each).
    #[arg(long, default_value_t = 10_000)]
    subscriptions: usize,
    /// Dispatch worker threads (1 to 1024).
    #[arg(long, default_value_t = 2, value_parser = RangedU64ValueParser::<usize>::new().range(1..=1024))]
    workers: usize,
    /// Publisher threads, each a chat gateway connection (1 to 1024).
    #[arg(long, default_value_t = 2, value_parser = RangedU64ValueParser::<usize>::new().range(1..=1024))]
    publishers: usize,
    /// Chat lines per second per publisher; 0 publishes as fast as the bus
    /// takes them (then the queue stays full and latency is queueing time).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Synthetic events published per chat line.
    #[arg(long, default_value_t = 4)]
    fanout: u64,
    /// Also write the summary as JSON to this file (with the bus's and the
    /// plugin host's own counters, as `Stats` and `HostStats` serialise).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Serve Prometheus metrics at this address while running (loopback,
    /// e.g. 127.0.0.1:9187).
    #[arg(long)]
    metrics: Option<std::net::SocketAddr>,
    /// With --metrics: scrape the endpoint over HTTP as the demo runs and
    /// draw the series in this SVG file.
    #[arg(long, requires = "metrics")]
    plot: Option<PathBuf>,
}

/// Deliveries to the synthetic plugins, by kind of subscription.
#[derive(Default)]
struct Synthetic {
    literal: AtomicU64,
    wildcard: AtomicU64,
}

/// A synthetic plugin: `per - 1` literal subscriptions `p<i>.a<j>` and one
/// wildcard `p<i>.*`.
struct SyntheticPlugin {
    index: usize,
    per: usize,
    counts: Arc<Synthetic>,
}

impl Plugin for SyntheticPlugin {
    fn name(&self) -> &str {
        "synthetic"
    }

    fn setup(&mut self, ctx: &PluginContext) -> Result<(), PluginError> {
        for j in 0..self.per - 1 {
            let counts = self.counts.clone();
            let literal = Handler::sync(move |_| {
                counts.literal.fetch_add(1, Ordering::Relaxed);
                Ok(())
            });
            ctx.subscribe(&format!("p{}.a{j}", self.index), literal, ())?;
        }
        let counts = self.counts.clone();
        let wildcard = Handler::sync(move |_| {
            counts.wildcard.fetch_add(1, Ordering::Relaxed);
            Ok(())
        });
        ctx.subscribe(&format!("p{}.*", self.index), wildcard, ())?;
        Ok(())
    }
}

/// Each synthetic plugin needs its own name; this wraps one with it.
struct Named<P> {
    name: String,
    inner: P,
}

impl<P: Plugin> Plugin for Named<P> {
    fn name(&self) -> &str {
        &self.name
    }

    fn setup(&mut self, ctx: &PluginContext) -> Result<(), PluginError> {
        self.inner.setup(ctx)
    }
}

/// Fails one call in three and panics one in seven; counts its failures.
struct Faulty {
    calls: Arc<AtomicU64>,
    failures: Arc<AtomicU64>,
}

impl Plugin for Faulty {
    fn name(&self) -> &str {
        "faulty"
    }

    fn setup(&mut self, ctx: &PluginContext) -> Result<(), PluginError> {
        let (calls, failures) = (self.calls.clone(), self.failures.clone());
        let flaky = Handler::sync(move |_| {
            let n = calls.fetch_add(1, Ordering::Relaxed);
            if n % 7 == 0 {
                failures.fetch_add(1, Ordering::Relaxed);
                panic!("faulty plugin: call {n} panics");
            }
            if n % 3 == 0 {
                failures.fetch_add(1, Ordering::Relaxed);
                return Err(format!("faulty plugin: call {n} fails").into());
            }
            Ok(())
        });
        ctx.subscribe("chat.message", flaky, ())?;
        Ok(())
    }
}

/// A blocking handler that takes a millisecond per chat line, with a
/// bounded backlog: it never holds a dispatch worker. Under the bus's
/// default (`Overflow::Block`) it would slow the whole bot to its pace; it
/// asks to shed instead (`Overflow::Shed`): when it falls behind, its
/// oldest waiting lines are dropped for it alone, and counted.
struct Slow {
    calls: Arc<AtomicU64>,
}

impl Plugin for Slow {
    fn name(&self) -> &str {
        "slow"
    }

    fn setup(&mut self, ctx: &PluginContext) -> Result<(), PluginError> {
        let calls = self.calls.clone();
        let options = SubscribeOptions::new().blocking().backlog(1_024).overflow(Overflow::Shed);
        let slow = Handler::sync(move |_| {
            std::thread::sleep(Duration::from_millis(1));
            calls.fetch_add(1, Ordering::Relaxed);
            Ok(())
        });
        ctx.subscribe("chat.message", slow, options)?;
        Ok(())
    }
}

/// Records publish → handler latency of chat lines.
struct Latency {
    histogram: Arc<Mutex<hdrhistogram::Histogram<u64>>>,
}

impl Plugin for Latency {
    fn name(&self) -> &str {
        "latency"
    }

    fn setup(&mut self, ctx: &PluginContext) -> Result<(), PluginError> {
        let histogram = self.histogram.clone();
        let probe = Handler::sync(move |event: &Event| {
            let waited = SystemTime::now().duration_since(event.timestamp()).unwrap_or_default();
            let nanos = u64::try_from(waited.as_nanos()).unwrap_or(u64::MAX).max(1);
            histogram.lock().map_err(|_| "latency histogram poisoned")?.saturating_record(nanos);
            Ok(())
        });
        ctx.subscribe("chat.message", probe, ())?;
        Ok(())
    }
}

/// What one publisher thread sent.
#[derive(Default, Clone, Copy)]
struct Sent {
    chat: u64,
    synthetic: u64,
    literal_expected: u64,
    wildcard_expected: u64,
    quotes: u64,
    trivia_starts: u64,
}

const WORDS: &[&str] =
    &["hello", "rust", "bus", "plugin", "event", "trivia", "quote", "fox", "dog", "lazy"];
const ANSWERS: &[&str] = &["4", "blue", "8", "paris", "jupiter", "42"];

/// A small deterministic generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn publisher(
    bus: Bus,
    origin: u32,
    args: Arc<Args>,
    stop: Arc<AtomicBool>,
    progress: Arc<AtomicU64>,
) -> Sent {
    let mut rng =
        Rng(0x9E37_79B9_7F4A_7C15 ^ (u64::from(origin) + 1).wrapping_mul(0x2545_F491_4F6C_DD1D));
    let per = (args.subscriptions / args.plugins.max(1)).max(1) as u64;
    let mut sent = Sent::default();
    let start = Instant::now();
    loop {
        if stop.load(Ordering::Relaxed) || args.events.is_some_and(|n| sent.chat >= n) {
            return sent;
        }
        if args.rate > 0 {
            let due = start + Duration::from_secs_f64(sent.chat as f64 / args.rate as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        let user = format!("user{}", rng.next(200));
        let text = match rng.next(100) {
            0 => {
                sent.trivia_starts += 1;
                "!trivia".to_owned()
            }
            1..=10 => ANSWERS[rng.next(ANSWERS.len() as u64) as usize].to_owned(),
            11 => {
                sent.quotes += 1;
                let words: Vec<&str> =
                    (0..4).map(|_| WORDS[rng.next(WORDS.len() as u64) as usize]).collect();
                format!("!quote {}", words.join(" "))
            }
            _ => WORDS[rng.next(WORDS.len() as u64) as usize].to_owned(),
        };
        let message =
            ChatMessage { channel: "#general".into(), user, text, origin, seq: sent.chat };
        bus.publish(Event::typed("chat.message", message, format!("gateway{origin}")))
            .expect("publish a chat line");
        sent.chat += 1;
        for _ in 0..args.fanout {
            let (i, j) = (rng.next(args.plugins.max(1) as u64), rng.next(per));
            if args.plugins > 0 {
                sent.wildcard_expected += 1;
                if j < per - 1 {
                    sent.literal_expected += 1;
                }
            }
            bus.publish(Event::new(format!("p{i}.a{j}"), Value::Null, format!("gateway{origin}")))
                .expect("publish a synthetic event");
            sent.synthetic += 1;
        }
        progress.fetch_add(1, Ordering::Relaxed);
    }
}

fn main() {
    let args = Arc::new(Args::parse());
    let mut failures: Vec<String> = Vec::new();
    let mut check = |ok: bool, what: String| {
        if !ok {
            failures.push(what);
        }
    };

    let metrics = args.metrics.map(|addr| {
        switchboard_metrics::install_prometheus(addr).unwrap_or_else(|e| {
            eprintln!("error: {e}");
            std::process::exit(2)
        });
        println!("metrics at http://{addr}/metrics");
        switchboard_metrics::Metrics::builder().interval(Duration::from_millis(200)).build()
    });
    let mut builder = Bus::builder().workers(args.workers).history_size(1_000).name("bot");
    if let Some(metrics) = &metrics {
        builder = builder.observer(metrics.observer());
    }
    let manager = PluginManager::from_builder(builder).unwrap_or_else(|e| {
        eprintln!("error: cannot start the bus: {e}");
        std::process::exit(2)
    });
    if let Some(metrics) = &metrics {
        metrics.watch(manager.bus());
        metrics.watch_host(&manager);
    }
    let scraper = match (args.metrics, &args.plot) {
        (Some(addr), Some(_)) => Some(operator::Scraper::start(addr, Duration::from_millis(250))),
        _ => None,
    };
    let (store, index) = (StatsStore::new(), SearchIndex::new());
    manager.register(TriviaPlugin::new).expect("load trivia");
    let s = store.clone();
    manager.register(move || StatsPlugin::new(s.clone())).expect("load stats");
    manager.register(QuotePlugin::new).expect("load quote");
    let i = index.clone();
    manager.register(move || SearchPlugin::new(i.clone())).expect("load search");
    let synthetic = Arc::new(Synthetic::default());
    let per = (args.subscriptions / args.plugins.max(1)).max(1);
    for index in 0..args.plugins {
        let plugin = SyntheticPlugin { index, per, counts: synthetic.clone() };
        manager
            .load(Named { name: format!("synthetic{index}"), inner: plugin })
            .expect("load a synthetic plugin");
    }
    let (faulty_calls, faulty_failures) =
        (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    manager
        .load(Faulty { calls: faulty_calls.clone(), failures: faulty_failures.clone() })
        .expect("load faulty");
    let slow_calls = Arc::new(AtomicU64::new(0));
    manager.load(Slow { calls: slow_calls.clone() }).expect("load slow");
    // 1 ns to 60 s, 3 significant digits.
    let histogram = Arc::new(Mutex::new(
        hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("a histogram"),
    ));
    manager.load(Latency { histogram: histogram.clone() }).expect("load latency");
    let subscriptions = manager.bus().stats().subscriptions;

    // Quiet the faulty plugin's panic messages: they are expected, counted,
    // and reported below.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let faulty =
            info.payload().downcast_ref::<String>().is_some_and(|m| m.starts_with("faulty plugin"));
        if !faulty {
            default_hook(info);
        }
    }));

    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let publishers: Vec<_> = (0..args.publishers)
        .map(|origin| {
            let (bus, args, stop, progress) =
                (manager.bus().clone(), args.clone(), stop.clone(), progress.clone());
            std::thread::spawn(move || publisher(bus, origin as u32, args, stop, progress))
        })
        .collect();

    let bar = if std::io::stdout().is_terminal() {
        indicatif::ProgressBar::new(match args.events {
            Some(n) => n * args.publishers as u64,
            None => (args.duration * 1000.0) as u64,
        })
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:40} {msg}")
            .expect("a progress template"),
    );
    let deadline = Duration::from_secs_f64(args.duration);
    let total_chat = args.events.map(|n| n * args.publishers as u64);
    let mut reloaded: Option<Result<(), PluginError>> = None;
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let elapsed = start.elapsed();
        let lines = progress.load(Ordering::Relaxed);
        bar.set_position(match total_chat {
            Some(_) => lines,
            None => elapsed.as_millis() as u64,
        });
        bar.set_message(format!(
            "{lines} chat lines, {} events handled",
            manager.bus().stats().dispatched
        ));
        let half = match total_chat {
            Some(total) => lines * 2 >= total,
            None => elapsed * 2 >= deadline,
        };
        if reloaded.is_none() && half {
            reloaded = Some(manager.reload("stats"));
            bar.println("stats reloaded mid-run");
        }
        let done = match total_chat {
            Some(total) => lines >= total,
            None => elapsed >= deadline,
        };
        if done {
            stop.store(true, Ordering::Relaxed);
            break;
        }
    }
    let sent: Vec<Sent> = publishers.into_iter().map(|p| p.join().expect("a publisher")).collect();
    let published_in = start.elapsed();
    manager.bus().flush();
    let drained_in = start.elapsed();
    bar.finish_and_clear();
    if reloaded.is_none() {
        reloaded = Some(manager.reload("stats"));
    }

    let total = sent.iter().fold(Sent::default(), |a, s| Sent {
        chat: a.chat + s.chat,
        synthetic: a.synthetic + s.synthetic,
        literal_expected: a.literal_expected + s.literal_expected,
        wildcard_expected: a.wildcard_expected + s.wildcard_expected,
        quotes: a.quotes + s.quotes,
        trivia_starts: a.trivia_starts + s.trivia_starts,
    });
    let stats = manager.bus().stats();
    let plugins = manager.list();
    let errors_of =
        |name: &str| plugins.iter().find(|p| p.name == name).map_or(0, |p| p.handler_errors);
    let others_errors: u64 =
        plugins.iter().filter(|p| p.name != "faulty").map(|p| p.handler_errors).sum();
    let delivery = store.delivery(&sent.iter().map(|s| s.chat).collect::<Vec<_>>());
    let slow_dropped = stats.backlog_dropped;
    let slow_done = slow_calls.load(Ordering::Relaxed);
    let (literal, wildcard) =
        (synthetic.literal.load(Ordering::Relaxed), synthetic.wildcard.load(Ordering::Relaxed));
    let events = total.chat + total.synthetic;
    let hist = histogram.lock().expect("histogram").clone();
    let us = |q: f64| hist.value_at_quantile(q) as f64 / 1e3;
    let sample = index.search("lazy dog");
    let winners = store.top_winners(3);

    check(matches!(reloaded, Some(Ok(()))), format!("the reload of stats failed: {reloaded:?}"));
    check(
        (delivery.lost, delivery.duplicated) == (0, 0),
        format!(
            "stats lost {} and duplicated {} chat lines across the reload",
            delivery.lost, delivery.duplicated
        ),
    );
    check(stats.dropped == 0, format!("the bus dropped {} events", stats.dropped));
    check(
        literal == total.literal_expected,
        format!("literal deliveries {literal}, expected {}", total.literal_expected),
    );
    check(
        wildcard == total.wildcard_expected,
        format!("wildcard deliveries {wildcard}, expected {}", total.wildcard_expected),
    );
    check(
        faulty_calls.load(Ordering::Relaxed) == total.chat,
        "the faulty plugin missed chat lines".into(),
    );
    check(
        errors_of("faulty") == faulty_failures.load(Ordering::Relaxed),
        format!(
            "faulty: {} handler errors counted, {} failures made",
            errors_of("faulty"),
            faulty_failures.load(Ordering::Relaxed)
        ),
    );
    check(others_errors == 0, format!("{others_errors} handler errors outside the faulty plugin"));
    check(
        slow_done + slow_dropped == total.chat,
        format!(
            "slow: {slow_done} handled + {slow_dropped} dropped from its backlog != {} chat lines",
            total.chat
        ),
    );
    check(
        index.len() as u64 == total.quotes,
        format!("search indexed {} quotes of {}", index.len(), total.quotes),
    );
    check(store.rounds() <= total.trivia_starts, "more trivia rounds than !trivia lines".into());
    check(
        hist.len() == total.chat,
        format!("latency probe saw {} of {} chat lines", hist.len(), total.chat),
    );

    println!("Switchboard heavy-bot demo");
    println!(
        "  plugins loaded            {} ({} synthetic), {subscriptions} subscriptions",
        plugins.len(),
        args.plugins
    );
    println!("  workers / publishers      {} / {}", args.workers, args.publishers);
    println!(
        "  events published          {events} ({} chat lines, {} synthetic) in {:.2} s",
        total.chat,
        total.synthetic,
        published_in.as_secs_f64()
    );
    println!(
        "  throughput                {:.0} events/s, {:.0} handler calls/s",
        events as f64 / drained_in.as_secs_f64(),
        stats.dispatched as f64 / drained_in.as_secs_f64()
    );
    println!(
        "  latency publish->handler  p50 {:.1} us, p99 {:.1} us, p99.9 {:.1} us ({})",
        us(0.5),
        us(0.99),
        us(0.999),
        if args.rate == 0 { "flooding: mostly time in the full queue" } else { "paced" }
    );
    println!(
        "  deliveries                example plugins: {} chat lines each to trivia, quote, stats, faulty and the probe; synthetic literal {literal}, synthetic wildcard {wildcard}; slow {slow_done} (all it could handle at 1 ms a line; see dropped)",
        total.chat
    );
    let group_errors = |prefix: &str| -> u64 {
        plugins.iter().filter(|p| p.name.starts_with(prefix)).map(|p| p.handler_errors).sum()
    };
    println!(
        "  errors by plugin group    example {}, synthetic {}, faulty {} (it fails or panics on 2 calls in 3, on purpose), slow {}, latency probe {}",
        ["trivia", "stats", "quote", "search"].iter().map(|n| errors_of(n)).sum::<u64>(),
        group_errors("synthetic"),
        errors_of("faulty"),
        errors_of("slow"),
        errors_of("latency")
    );
    println!(
        "  dropped                   {} by the bus (its policy is Overflow::Block: publishers wait for room, nothing accepted is lost)",
        stats.dropped
    );
    println!(
        "                            {slow_dropped} from the slow plugin's backlog: it takes 1 ms a line and asked for Overflow::Shed, so it drops its oldest waiting lines instead of slowing the bot (Stats::backlog_dropped)"
    );
    println!("  faulty plugin             {} failures isolated ({} panics); other plugins' errors: {others_errors}", errors_of("faulty"), stats.handler_panics);
    println!("  stats reload              lost {}, duplicated {} (of {} chat lines, by sequence numbers)", delivery.lost, delivery.duplicated, delivery.seen);
    println!("  trivia                    {} rounds; top winners {winners:?}", store.rounds());
    println!(
        "  search                    {} quotes indexed; \"lazy dog\" finds {} (e.g. {:?})",
        index.len(),
        sample.len(),
        sample.first().map(|q| &q.text)
    );

    println!("  bus                       {stats}");
    if let (Some(scraper), Some(addr), Some(path)) = (scraper, args.metrics, &args.plot) {
        if let Some(metrics) = &metrics {
            metrics.collect();
        }
        match scraper.finish(addr, path) {
            Ok(n) => println!("  metrics plot              {} ({n} scrapes)", path.display()),
            Err(e) => failures.push(format!("cannot draw the metrics plot: {e}")),
        }
    }
    let summary = json!({
        "bus": stats,
        "host": manager.stats(),
        "plugins": plugins.len(), "synthetic_plugins": args.plugins, "subscriptions": subscriptions,
        "workers": args.workers, "publishers": args.publishers,
        "events": events, "chat_lines": total.chat, "synthetic_events": total.synthetic,
        "seconds": drained_in.as_secs_f64(),
        "events_per_second": events as f64 / drained_in.as_secs_f64(),
        "handler_calls": stats.dispatched,
        "latency_us": {"p50": us(0.5), "p99": us(0.99), "p999": us(0.999)},
        "deliveries": {"synthetic_literal": literal, "synthetic_wildcard": wildcard, "slow": slow_done},
        "dropped": stats.dropped, "slow_backlog_dropped": slow_dropped,
        "faulty_failures": errors_of("faulty"), "other_errors": others_errors,
        "reload": {"lost": delivery.lost, "duplicated": delivery.duplicated},
        "trivia_rounds": store.rounds(), "top_winners": winners,
        "quotes_indexed": index.len(), "checks_failed": failures,
    });
    if let Some(path) = &args.json {
        if let Err(e) = std::fs::write(path, serde_json::to_string_pretty(&summary).expect("JSON"))
        {
            failures.push(format!("cannot write {}: {e}", path.display()));
        }
    }
    manager.shutdown();
    let left = manager.bus().stats().drain_dropped;
    if left > 0 {
        failures.push(format!("shutdown's drain timed out with {left} events left in backlogs"));
    }
    if failures.is_empty() {
        println!("all checks passed");
    } else {
        for f in &failures {
            eprintln!("CHECK FAILED: {f}");
        }
        std::process::exit(1);
    }
}
