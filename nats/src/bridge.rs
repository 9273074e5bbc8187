//! The bridge: the export task, the import tasks, and the connection's life.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream;
use async_nats::jetstream::AckKind;
use async_nats::{HeaderMap, HeaderValue};
use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use parking_lot::Mutex;
use switchboard::{
    Bus, Event, EventId, Handler, Priority, PublishError, SubscribeOptions, SubscriptionId,
};
use switchboard_matcher::{Pattern, PatternSet};
use tokio::task::JoinHandle;

use crate::outbox::{Outbox, Outgoing};
use crate::subject::{self, Filter, Prefix};
use crate::{BridgeConfig, BridgeError, JetStreamConfig, Mode};

/// Header names.
pub(crate) const ORIGIN: &str = "Switchboard-Origin";
pub(crate) const ID: &str = "Switchboard-Id";
/// The publish key: unique to one accepted publish on the exporting bus (its
/// [`Bus::instance`] in the high 64 bits, the event's
/// [`sequence`](Event::sequence) in the low 64), 32 hex digits. What
/// de-duplication goes by, and the `Nats-Msg-Id` in JetStream mode.
pub(crate) const KEY: &str = "Switchboard-Key";
pub(crate) const SOURCE: &str = "Switchboard-Source";
pub(crate) const PRIORITY: &str = "Switchboard-Priority";
pub(crate) const TIMESTAMP: &str = "Switchboard-Timestamp";
const MSG_ID: &str = "Nats-Msg-Id";

/// How many publish keys an importer remembers, to drop redeliveries.
const REMEMBERED_KEYS: usize = 1 << 16;
/// JetStream publishes awaiting their acknowledgement at once.
const ACK_WINDOW: usize = 256;
/// Messages imported between two local flushes (JetStream mode).
const IMPORT_BATCH: usize = 256;
/// How often a task waiting for the connection looks again.
const RECHECK: Duration = Duration::from_millis(20);
/// How long JetStream waits before delivering again an import the local bus
/// refused, on the first refusal; it doubles with each delivery...
const NAK_DELAY: Duration = Duration::from_millis(100);
/// ...up to this.
const NAK_DELAY_MAX: Duration = Duration::from_secs(2);

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) exported: AtomicU64,
    pub(crate) imported: AtomicU64,
    pub(crate) connects: AtomicU64,
    pub(crate) duplicates: AtomicU64,
    pub(crate) echoes: AtomicU64,
    pub(crate) invalid: AtomicU64,
    pub(crate) retried: AtomicU64,
    pub(crate) slow_consumer: AtomicU64,
    pub(crate) refused: AtomicU64,
}

/// What the bridge's tasks share.
pub(crate) struct Shared {
    pub(crate) bus: Bus,
    pub(crate) prefix: Prefix,
    pub(crate) instance: Arc<str>,
    pub(crate) imports: Option<PatternSet>,
    pub(crate) outbox: Outbox,
    pub(crate) counters: Arc<Counters>,
    recent: Mutex<Recent>,
    pub(crate) client: async_nats::Client,
    pub(crate) export_subs: Mutex<Vec<SubscriptionId>>,
    pub(crate) closing: AtomicBool,
    resume_delay: Duration,
}

/// The publish keys of the messages imported lately, oldest first.
#[derive(Default)]
struct Recent {
    set: HashSet<u128>,
    order: VecDeque<u128>,
}

impl Recent {
    fn contains(&self, key: u128) -> bool {
        self.set.contains(&key)
    }

    /// Remembers `key`; false if it was already remembered.
    fn insert(&mut self, key: u128) -> bool {
        if !self.set.insert(key) {
            return false;
        }
        self.order.push_back(key);
        if self.order.len() > REMEMBERED_KEYS {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }
}

/// An imported message decoded into an event, with its publish key.
struct Incoming {
    event: Event,
    key: u128,
}

/// What became of an imported event offered to the local bus.
enum Delivery {
    /// Published locally (and its key remembered).
    Accepted,
    /// Refused for now (a queue or backlog was full): a later try may
    /// succeed. Counted in `refused`.
    Refused(PublishError),
    /// Refused for good: the local bus does not accept its name. Counted in
    /// `invalid`.
    Invalid,
    /// The local bus is shut down.
    Closed,
}

pub(crate) struct Running {
    pub(crate) shared: Arc<Shared>,
    pub(crate) tasks: Vec<JoinHandle<()>>,
}

pub(crate) async fn start(bus: &Bus, config: BridgeConfig) -> Result<Running, BridgeError> {
    let prefix = Prefix::new(&config.prefix).map_err(BridgeError::InvalidPrefix)?;
    let compile = |globs: &[String]| -> Result<Vec<Pattern>, BridgeError> {
        globs
            .iter()
            .map(|g| {
                Pattern::new(g).map_err(|error| BridgeError::InvalidGlob { glob: g.clone(), error })
            })
            .collect()
    };
    if config.export.iter().chain(&config.import).any(String::is_empty) {
        return Err(BridgeError::EmptyGlob);
    }
    let exports = compile(&config.export)?;
    compile(&config.import)?;
    if config.export.is_empty() && config.import.is_empty() {
        return Err(BridgeError::NothingToBridge);
    }
    let imports = if config.import.is_empty() {
        None
    } else {
        let set = PatternSet::new(&config.import)
            .map_err(|error| BridgeError::InvalidGlob { glob: config.import.join(", "), error })?;
        Some(set)
    };
    // The instance travels in a header: printable ASCII, no spaces.
    if config.instance.is_empty() || !config.instance.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(BridgeError::InvalidName {
            what: "instance id",
            name: config.instance.clone(),
        });
    }
    if let Mode::JetStream(js) = &config.mode {
        check_js_name(&js.durable, "durable consumer name")?;
        if let Some(stream) = &js.stream {
            check_js_name(stream, "stream name")?;
        }
    }

    let counters = Arc::new(Counters::default());
    let client = connect(&config, counters.clone()).await?;

    let jetstream = match &config.mode {
        Mode::Core => None,
        Mode::JetStream(js) => {
            let context = jetstream::new(client.clone());
            let name = js.stream.clone().unwrap_or_else(|| default_stream_name(&config.prefix));
            let stream = context
                .get_or_create_stream(jetstream::stream::Config {
                    name: name.clone(),
                    subjects: vec![format!("{}.>", config.prefix)],
                    duplicate_window: js.duplicate_window,
                    max_age: js.max_age,
                    ..Default::default()
                })
                .await
                .map_err(|e| BridgeError::JetStream(format!("stream {name}: {e}")))?;
            Some((context, stream, js.clone()))
        }
    };

    let filters = prefix.disjoint_filters(&config.import);
    let mut sources = Vec::new();
    for filter in &filters {
        sources.push(match &jetstream {
            None => {
                let sub = client
                    .subscribe(filter.subject())
                    .await
                    .map_err(|e| BridgeError::Subscribe(format!("{}: {e}", filter.subject())))?;
                ImportSource::Core(sub)
            }
            Some((_, stream, js)) => {
                ImportSource::JetStream(Box::new(consumer_for(stream, js, filter).await?))
            }
        });
    }

    // A round trip through the server: it handles one connection's
    // commands in order, so once our own probe comes back, it has our
    // subscriptions and whatever is published after `start` returns
    // reaches us. (`flush` only empties the socket's write buffer.)
    round_trip(&client).await?;

    let shared = Arc::new(Shared {
        bus: bus.clone(),
        prefix,
        instance: Arc::from(config.instance.as_str()),
        imports,
        outbox: Outbox::new(config.queue_capacity),
        counters,
        recent: Mutex::new(Recent::default()),
        client,
        export_subs: Mutex::new(Vec::new()),
        closing: AtomicBool::new(false),
        resume_delay: config.resume_delay,
    });
    for (i, glob) in config.export.iter().enumerate() {
        // Each event is exported once even when several export globs match
        // it: the first matching glob's subscription sends it.
        let earlier: Vec<Pattern> = exports[..i].to_vec();
        let weak = Arc::downgrade(&shared);
        // Ordered: one publishing thread's events leave in its order.
        // The handler only queues: its backlog drains at once, so it can be
        // generous without holding much.
        let options = SubscribeOptions::from(&config.plugin)
            .ordered()
            .backlog(config.queue_capacity.max(65_536));
        let export = Handler::sync(move |event: &Event| {
            if event.origin().is_some() || earlier.iter().any(|p| p.is_match(event.name())) {
                return Ok(());
            }
            if let Some(shared) = weak.upgrade() {
                shared.export(event);
            }
            Ok(())
        });
        match bus.subscribe(glob, export, options) {
            Ok(id) => shared.export_subs.lock().push(id),
            Err(e) => {
                shared.unsubscribe_exports();
                return Err(BridgeError::Subscribe(format!("local export of {glob:?}: {e}")));
            }
        }
    }

    let mut tasks = Vec::new();
    tasks.push(match jetstream {
        None => tokio::spawn(export_core(shared.clone())),
        Some((context, _, _)) => tokio::spawn(export_jetstream(shared.clone(), context)),
    });
    for source in sources {
        let shared = shared.clone();
        tasks.push(match source {
            ImportSource::Core(sub) => tokio::spawn(import_core(shared, sub)),
            ImportSource::JetStream(consumer) => tokio::spawn(import_jetstream(shared, *consumer)),
        });
    }
    Ok(Running { shared, tasks })
}

async fn round_trip(client: &async_nats::Client) -> Result<(), BridgeError> {
    let fail = |e: &dyn std::fmt::Display| {
        BridgeError::Subscribe(format!("confirming subscriptions: {e}"))
    };
    let inbox = client.new_inbox();
    let mut probe = client.subscribe(inbox.clone()).await.map_err(|e| fail(&e))?;
    client.publish(inbox, Bytes::new()).await.map_err(|e| fail(&e))?;
    match tokio::time::timeout(Duration::from_secs(10), probe.next()).await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(fail(&"the connection closed")),
        Err(_) => Err(fail(&"the server did not answer within 10 s")),
    }
}

enum ImportSource {
    Core(async_nats::Subscriber),
    JetStream(Box<jetstream::consumer::PullConsumer>),
}

async fn connect(
    config: &BridgeConfig,
    counters: Arc<Counters>,
) -> Result<async_nats::Client, BridgeError> {
    let options = async_nats::ConnectOptions::new()
        .name(format!("switchboard bridge {}", config.instance))
        .connection_timeout(config.connect_timeout)
        .max_reconnects(None)
        .subscription_capacity(config.subscription_capacity)
        .reconnect_delay_callback(|attempts| {
            // 10 ms, doubling to at most 500 ms: quick to come back after a
            // restart, gentle on a server that stays down.
            Duration::from_millis(10u64.saturating_mul(1 << attempts.min(6)).min(500))
        })
        .event_callback(move |event| {
            let counters = counters.clone();
            async move {
                match event {
                    async_nats::Event::Connected => {
                        counters.connects.fetch_add(1, Ordering::Relaxed);
                        tracing::info!("bridge connected to NATS");
                    }
                    async_nats::Event::Disconnected => {
                        tracing::warn!("bridge disconnected from NATS; reconnecting");
                    }
                    async_nats::Event::SlowConsumer(sid) => {
                        counters.slow_consumer.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(sid, "NATS dropped messages for a slow bridge subscription");
                    }
                    other => tracing::info!(event = %other, "NATS client event"),
                }
            }
        });
    options.connect(config.servers.as_str()).await.map_err(|e| BridgeError::Connect {
        servers: config.servers.clone(),
        reason: e.to_string(),
    })
}

/// Stream and consumer names: no `.`, `*`, `>`, whitespace or path separators.
fn check_js_name(name: &str, what: &'static str) -> Result<(), BridgeError> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(BridgeError::InvalidName { what, name: name.to_owned() })
    }
}

pub(crate) fn default_stream_name(prefix: &str) -> String {
    let body: String = prefix
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' })
        .collect();
    format!("SWITCHBOARD_{body}")
}

async fn consumer_for(
    stream: &jetstream::stream::Stream,
    js: &JetStreamConfig,
    filter: &Filter,
) -> Result<jetstream::consumer::PullConsumer, BridgeError> {
    // One durable consumer per filter, named after it, so a bridge that
    // restarts with the same globs resumes where it stopped.
    let subject = filter.subject();
    let name = format!("{}_{:016x}", js.durable, fnv1a(subject.as_bytes()));
    stream
        .get_or_create_consumer(
            &name,
            jetstream::consumer::pull::Config {
                durable_name: Some(name.clone()),
                filter_subject: subject.clone(),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: js.ack_wait,
                deliver_policy: jetstream::consumer::DeliverPolicy::New,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| BridgeError::JetStream(format!("consumer {name} on {subject}: {e}")))
}

/// A stable 64-bit hash (FNV-1a): consumer names must not change between
/// runs, which `std`'s hasher does not promise.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

fn priority_name(p: Priority) -> &'static str {
    match p {
        Priority::Low => "low",
        Priority::High => "high",
        _ => "normal",
    }
}

fn header(value: &str) -> HeaderValue {
    // Every value built here is printable ASCII (ids, numbers, escaped text).
    HeaderValue::from(value)
}

impl Shared {
    /// Encodes `event` and queues it for NATS (on a dispatch worker: never
    /// waits).
    fn export(&self, event: &Event) {
        // A dispatched event always has its sequence number; keep the
        // branch honest.
        let Some(seq) = event.sequence() else {
            tracing::error!(event = event.name(), "an exported event has no sequence number");
            self.outbox.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        // One key per accepted publish: a republished clone (same id) is
        // a new publish with a new sequence number, so a new key.
        let key = format!("{:032x}", (u128::from(self.bus.instance()) << 64) | u128::from(seq));
        let mut headers = HeaderMap::new();
        headers.insert(ORIGIN, header(&self.instance));
        headers.insert(ID, header(&format!("{:032x}", event.id().as_u128())));
        headers.insert(KEY, header(&key));
        headers.insert(MSG_ID, header(&key));
        headers.insert(SOURCE, header(&subject::escape_header(event.source())));
        headers.insert(PRIORITY, header(priority_name(event.priority())));
        let nanos = event.timestamp().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        headers.insert(TIMESTAMP, header(&nanos.to_string()));
        let payload = match serde_json::to_vec(event.data()) {
            Ok(bytes) => Bytes::from(bytes),
            Err(e) => {
                // A JSON value always serialises; keep the branch honest.
                tracing::error!(event = event.name(), error = %e, "cannot encode an event for NATS");
                self.outbox.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        self.outbox.push(
            Outgoing {
                subject: self.prefix.subject_for(event.name()),
                headers,
                payload,
                priority: event.priority(),
            },
            false,
        );
    }

    /// The client's own state (a watch the connection task updates), not
    /// the event callback's view, which runs later on a task of its own.
    pub(crate) fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Decodes an imported message into an event, or says why it is skipped.
    /// A message whose publish key was imported already is a duplicate; the
    /// key is remembered only once the local bus accepted the event (see
    /// [`deliver`](Shared::deliver)), so a refused event delivered again is
    /// not one.
    fn decode(
        &self,
        subject: &str,
        headers: Option<&HeaderMap>,
        payload: &[u8],
    ) -> Option<Incoming> {
        let get = |name: &str| headers.and_then(|h| h.get(name)).map(|v| v.as_str());
        if get(ORIGIN) == Some(&*self.instance) {
            self.counters.echoes.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let invalid = |why: &dyn std::fmt::Display| {
            self.counters.invalid.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(subject, reason = %why, "skipped a NATS message that is not a bridged event");
            None
        };
        let name = match self.prefix.name_for(subject) {
            Ok(name) => name,
            Err(e) => return invalid(&e),
        };
        // The filters are supersets: the exact matcher decides.
        if !self.imports.as_ref().is_some_and(|set| set.is_match(&name)) {
            return None;
        }
        let Some(origin) = get(ORIGIN) else { return invalid(&"no origin header") };
        let Some(id) = get(ID).and_then(|v| u128::from_str_radix(v, 16).ok()) else {
            return invalid(&"no valid id header");
        };
        let Some(key) = get(KEY).and_then(|v| u128::from_str_radix(v, 16).ok()) else {
            return invalid(&"no valid publish key header");
        };
        let source = get(SOURCE).and_then(subject::unescape_header).unwrap_or_default();
        let priority = match get(PRIORITY) {
            Some("low") => Priority::Low,
            Some("high") => Priority::High,
            _ => Priority::Normal,
        };
        let timestamp = get(TIMESTAMP)
            .and_then(|v| v.parse::<u128>().ok())
            .and_then(|n| {
                u64::try_from(n / 1_000_000_000).ok().map(|s| (s, (n % 1_000_000_000) as u32))
            })
            .map_or_else(SystemTime::now, |(s, ns)| UNIX_EPOCH + Duration::new(s, ns));
        let data = match serde_json::from_slice(payload) {
            Ok(data) => data,
            Err(e) => return invalid(&format!("payload is not JSON: {e}")),
        };
        if self.recent.lock().contains(key) {
            self.counters.duplicates.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let event = Event::new(name, data, source)
            .with_priority(priority)
            .with_id(EventId::from_u128(id))
            .with_timestamp(timestamp)
            .with_origin(origin);
        Some(Incoming { event, key })
    }

    /// Publishes an imported event locally, and remembers its key once the
    /// bus accepted it. An import task handles its messages one after the
    /// other, and the filters are disjoint, so no other task offers the same
    /// key meanwhile.
    async fn deliver(&self, incoming: Incoming) -> Delivery {
        let Incoming { event, key } = incoming;
        match self.bus.publish_async(event).await {
            Ok(_) => {
                self.recent.lock().insert(key);
                self.counters.imported.fetch_add(1, Ordering::Relaxed);
                Delivery::Accepted
            }
            Err(PublishError::Closed(_)) => Delivery::Closed,
            Err(PublishError::InvalidName { event, reason }) => {
                self.counters.invalid.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    event = event.name(),
                    %reason,
                    "skipped an imported event whose name the local bus refuses"
                );
                Delivery::Invalid
            }
            Err(e) => {
                // Full or BacklogFull under Overflow::Error, and the like:
                // the bus counts it too; the caller says what becomes of it.
                self.counters.refused.fetch_add(1, Ordering::Relaxed);
                Delivery::Refused(e)
            }
        }
    }

    pub(crate) fn unsubscribe_exports(&self) {
        for id in self.export_subs.lock().drain(..) {
            self.bus.unsubscribe(id);
        }
    }

    /// Events the bus dropped from the export subscriptions' backlogs.
    pub(crate) fn backlog_dropped(&self) -> u64 {
        self.export_subs
            .lock()
            .iter()
            .filter_map(|id| self.bus.subscriptions(*id).first().map(|s| s.stats.backlog_dropped))
            .sum()
    }
}

/// Waits until the connection is up (or the bridge closes). After an
/// outage, waits the resume delay too, so other bridges resubscribe first.
async fn until_connected(shared: &Shared) -> bool {
    let mut waited = false;
    loop {
        if shared.connected() {
            if !waited {
                return true;
            }
            tokio::time::sleep(shared.resume_delay).await;
            if shared.connected() {
                return true;
            }
        }
        if shared.closing.load(Ordering::SeqCst) {
            return false;
        }
        waited = true;
        tokio::time::sleep(RECHECK).await;
    }
}

/// Core mode: hand each message to the client while connected. During an
/// outage nothing is handed over; the outbox holds what it can and counts
/// what it drops.
async fn export_core(shared: Arc<Shared>) {
    loop {
        // Check first, then take: during an outage every message stays in
        // the outbox, where overflow drops the lowest priority first.
        if !until_connected(&shared).await {
            return;
        }
        let Some(item) = shared.outbox.pop() else {
            if shared.closing.load(Ordering::SeqCst) {
                return;
            }
            tokio::select! {
                () = shared.outbox.ready() => {}
                () = tokio::time::sleep(RECHECK * 5) => {}
            }
            continue;
        };
        let sent = shared
            .client
            .publish_with_headers(item.subject.clone(), item.headers.clone(), item.payload.clone())
            .await
            .map_err(|e| e.to_string());
        let failed = sent.is_err();
        settle(&shared, item, sent);
        if failed {
            tokio::time::sleep(RECHECK).await;
        }
    }
}

/// JetStream mode: publish with `Nats-Msg-Id`, keep up to [`ACK_WINDOW`]
/// acknowledgements outstanding, and put back what was not acknowledged
/// (the stream drops the duplicate if it had stored it after all).
async fn export_jetstream(shared: Arc<Shared>, context: jetstream::Context) {
    let mut pending = FuturesUnordered::new();
    loop {
        // Settle what has been acknowledged.
        while let Some(Some((item, result))) = pending.next().now_or_never() {
            settle(&shared, item, result);
        }
        let item = if pending.len() < ACK_WINDOW && shared.connected() {
            shared.outbox.pop()
        } else {
            None
        };
        let Some(item) = item else {
            if pending.is_empty() {
                if shared.closing.load(Ordering::SeqCst) && shared.outbox.len() == 0 {
                    return;
                }
                if !until_connected(&shared).await {
                    return;
                }
                tokio::select! {
                    () = shared.outbox.ready() => {}
                    () = tokio::time::sleep(RECHECK * 5) => {}
                }
            } else if let Some((item, result)) = pending.next().await {
                settle(&shared, item, result);
            }
            continue;
        };
        match context
            .publish_with_headers(item.subject.clone(), item.headers.clone(), item.payload.clone())
            .await
        {
            Ok(ack) => pending.push(
                async move {
                    let result = ack.await.map(|_| ()).map_err(|e| e.to_string());
                    (item, result)
                }
                .boxed(),
            ),
            Err(e) => settle(&shared, item, Err(e.to_string())),
        }
    }
}

/// A message taken from the outbox was sent (and, in JetStream mode,
/// acknowledged), or goes back to the front to be sent again.
fn settle(shared: &Shared, item: Outgoing, result: Result<(), String>) {
    match result {
        Ok(()) => {
            shared.counters.exported.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => {
            tracing::warn!(error = %e, subject = %item.subject, "NATS did not take the message; will retry");
            shared.counters.retried.fetch_add(1, Ordering::Relaxed);
            shared.outbox.push(item, true);
        }
    }
    shared.outbox.settle();
}

/// Core mode: nothing can be delivered again, so an event the local bus
/// refuses is lost: counted in `refused` and logged.
async fn import_core(shared: Arc<Shared>, mut sub: async_nats::Subscriber) {
    while let Some(message) = sub.next().await {
        let Some(incoming) =
            shared.decode(message.subject.as_str(), message.headers.as_ref(), &message.payload)
        else {
            continue;
        };
        match shared.deliver(incoming).await {
            Delivery::Accepted | Delivery::Invalid => {}
            Delivery::Refused(e) => tracing::warn!(
                error = %e,
                subject = %message.subject,
                "the local bus refused an imported event; core NATS cannot deliver it again: lost"
            ),
            Delivery::Closed => return,
        }
    }
}

/// How long JetStream should wait before delivering again a message the
/// local bus refused, after its `delivered`-th delivery: [`NAK_DELAY`],
/// doubling with each delivery, at most [`NAK_DELAY_MAX`].
fn nak_delay(delivered: i64) -> Duration {
    let doublings = u32::try_from(delivered.saturating_sub(1).clamp(0, 16)).unwrap_or(0);
    NAK_DELAY.saturating_mul(1 << doublings).min(NAK_DELAY_MAX)
}

/// JetStream mode: take what is ready (up to [`IMPORT_BATCH`]), publish it
/// locally, wait until the local handlers are done with it, then
/// acknowledge. A crash before the acknowledgement means a redelivery,
/// dropped here by its publish key if this process saw it. What the local
/// bus refuses for now is never acknowledged: it is negatively acknowledged
/// with a delay ([`nak_delay`]), so the stream delivers it again; what it
/// refuses for good (its name) is terminated.
async fn import_jetstream(shared: Arc<Shared>, consumer: jetstream::consumer::PullConsumer) {
    'restart: loop {
        if shared.closing.load(Ordering::SeqCst) {
            return;
        }
        let mut messages = match consumer.messages().await {
            Ok(messages) => messages,
            Err(e) => {
                tracing::warn!(error = %e, "cannot pull from the JetStream consumer; retrying");
                tokio::time::sleep(RECHECK * 10).await;
                continue;
            }
        };
        loop {
            let Some(first) = messages.next().await else { continue 'restart };
            let mut batch = vec![first];
            while batch.len() < IMPORT_BATCH {
                match messages.next().now_or_never() {
                    Some(Some(m)) => batch.push(m),
                    _ => break,
                }
            }
            let mut to_ack = Vec::with_capacity(batch.len());
            for message in batch {
                let message = match message {
                    Ok(m) => m,
                    Err(e) => {
                        // Heartbeats missed during an outage, and the like:
                        // the stream goes on pulling.
                        tracing::debug!(error = %e, "JetStream pull");
                        continue;
                    }
                };
                let Some(incoming) = shared.decode(
                    message.subject.as_str(),
                    message.headers.as_ref(),
                    &message.payload,
                ) else {
                    // An echo, a duplicate, not for this bridge, or not a
                    // bridged event: done with.
                    to_ack.push(message);
                    continue;
                };
                match shared.deliver(incoming).await {
                    Delivery::Accepted => to_ack.push(message),
                    Delivery::Refused(e) => {
                        let delivered = message.info().map_or(1, |info| info.delivered);
                        let delay = nak_delay(delivered);
                        tracing::debug!(
                            error = %e,
                            subject = %message.subject,
                            delivered,
                            ?delay,
                            "the local bus refused an imported event; JetStream will deliver it again"
                        );
                        if let Err(e) = message.ack_with(AckKind::Nak(Some(delay))).await {
                            tracing::warn!(error = %e, "JetStream nak failed; the message will be redelivered after the ack wait");
                        }
                    }
                    Delivery::Invalid => {
                        if let Err(e) = message.ack_with(AckKind::Term).await {
                            tracing::warn!(error = %e, "JetStream term failed");
                        }
                    }
                    Delivery::Closed => return,
                }
            }
            shared.bus.flush_async().await;
            for message in to_ack {
                if let Err(e) = message.ack().await {
                    tracing::warn!(error = %e, "JetStream ack failed; the message will be redelivered");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_import_waits_longer_with_each_delivery_up_to_a_limit() {
        let ms = |d: i64| nak_delay(d).as_millis();
        assert_eq!([ms(1), ms(2), ms(3), ms(4), ms(5)], [100, 200, 400, 800, 1600]);
        assert_eq!([ms(6), ms(100), ms(i64::MAX)], [2000, 2000, 2000]);
        // A count the server should never send still gets the first delay.
        assert_eq!([ms(0), ms(-3)], [100, 100]);
    }
}
