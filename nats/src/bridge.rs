//! The bridge: the export task, the import tasks, and the connection's life.

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use async_nats::jetstream::AckKind;
use async_nats::HeaderMap;
use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use parking_lot::Mutex;
use switchboard::{Bus, Event, EventId, Handler, PublishError, SubscribeOptions, SubscriptionId};
use switchboard_matcher::{Pattern, PatternSet};
use tokio::task::JoinHandle;

use crate::outbox::{Outbox, Outgoing};
use crate::subject::{Filter, Prefix};
use crate::wire::{self, Envelope, WireError};
use crate::{Auth, BridgeConfig, BridgeError, JetStreamConfig, Mode, TaskStats};

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

/// How long a restarted task waits first; it doubles with each restart in
/// a row...
const RESTART_DELAY: Duration = Duration::from_millis(50);
/// ...up to this.
const RESTART_DELAY_MAX: Duration = Duration::from_secs(5);
/// A task that ran this long before it stopped starts again at once.
const HEALTHY_RUN: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) exported: AtomicU64,
    pub(crate) deduplicated: AtomicU64,
    pub(crate) imported: AtomicU64,
    pub(crate) connects: AtomicU64,
    pub(crate) client_side_reconnects: AtomicU64,
    pub(crate) duplicates: AtomicU64,
    pub(crate) echoes: AtomicU64,
    pub(crate) invalid: AtomicU64,
    pub(crate) unknown_version: AtomicU64,
    pub(crate) retried: AtomicU64,
    pub(crate) slow_consumer: AtomicU64,
    pub(crate) refused: AtomicU64,
    pub(crate) undeliverable: AtomicU64,
    pub(crate) permission_errors: AtomicU64,
    pub(crate) oversized: AtomicU64,
}

/// One of the bridge's tasks, as the stats show it.
#[derive(Debug)]
pub(crate) struct TaskState {
    name: String,
    alive: AtomicBool,
    restarts: AtomicU64,
    last_failure: Mutex<Option<String>>,
}

impl TaskState {
    pub(crate) fn new(name: String) -> Arc<TaskState> {
        Arc::new(TaskState {
            name,
            alive: AtomicBool::new(true),
            restarts: AtomicU64::new(0),
            last_failure: Mutex::new(None),
        })
    }

    pub(crate) fn stats(&self) -> TaskStats {
        TaskStats {
            name: self.name.clone(),
            alive: self.alive.load(Ordering::SeqCst),
            restarts: self.restarts.load(Ordering::Relaxed),
            last_failure: self.last_failure.lock().clone(),
        }
    }
}

/// After the client dropped a connection to a live server (in practice: a
/// message it could not parse), JetStream imports pull one message at a
/// time for a while. The unreadable message then arrives alone, so it takes
/// no valid message down with it each time it is delivered again (which
/// would spend their delivery limit with its own), until the stream gives
/// up on it.
#[derive(Debug, Default)]
pub(crate) struct Quarantine {
    until: Mutex<Option<Instant>>,
    began: tokio::sync::Notify,
}

impl Quarantine {
    /// Single-message pulls from now for `span` (or longer, if already).
    fn extend(&self, span: Duration) {
        let until = Instant::now() + span;
        let began = {
            let mut now = self.until.lock();
            let began = !now.is_some_and(|t| t > Instant::now());
            *now = Some(now.map_or(until, |t| t.max(until)));
            began
        };
        if began {
            self.began.notify_waiters();
        }
    }

    /// When the quarantine ends, if it is on.
    fn ends(&self) -> Option<Instant> {
        self.until.lock().filter(|t| *t > Instant::now())
    }
}

/// How a supervised task's run ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Exit {
    /// Its work is over: the bridge is closing or the local bus shut down.
    Done,
    /// It stopped while there was work to do: it is started again.
    Unexpected(String),
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
    pub(crate) tasks: Mutex<Vec<Arc<TaskState>>>,
    resume_delay: Duration,
    /// The JetStream delivery limit (`None`: core mode, or no limit).
    max_deliver: Option<i64>,
    /// The JetStream ack wait (core mode: unused).
    ack_wait: Duration,
    quarantine: Arc<Quarantine>,
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
    if let Err(e) = Prefix::new(&config.inbox_prefix) {
        return Err(BridgeError::InvalidName { what: "inbox prefix", name: e.prefix });
    }
    // The instance travels in a header.
    if !wire::is_valid_origin(&config.instance) {
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
        if js.ack_wait < Duration::from_millis(100) {
            return Err(BridgeError::JetStream("the ack wait must be at least 100 ms".into()));
        }
        if js.max_deliver == Some(0) {
            return Err(BridgeError::JetStream(
                "the delivery limit must be at least 1 (None: no limit)".into(),
            ));
        }
    }

    let counters = Arc::new(Counters::default());
    let quarantine = Arc::new(Quarantine::default());
    let client = connect(&config, counters.clone(), quarantine.clone()).await?;

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
            Some((context, stream, name, js.clone()))
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
                ImportSource::Core(filter.subject(), sub)
            }
            Some((_, stream, _, js)) => ImportSource::JetStream(Box::new((
                consumer_for(stream, js, filter).await?,
                stream.clone(),
                js.clone(),
                filter.clone(),
            ))),
        });
    }
    // JetStream tells whoever listens when a consumer gives up on a message
    // at its delivery limit: the bridge listens for its own consumers, to
    // count (and log) what it will never receive.
    let advisories = match &jetstream {
        Some((_, _, stream, js)) if !filters.is_empty() && js.max_deliver.is_some() => {
            let subject = format!("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.*");
            let sub = client
                .subscribe(subject.clone())
                .await
                .map_err(|e| BridgeError::Subscribe(format!("{subject}: {e}")))?;
            Some((subject, sub, format!("{}_", js.durable)))
        }
        _ => None,
    };

    // A round trip through the server: it handles one connection's
    // commands in order, so once our own probe comes back, it has our
    // subscriptions and whatever is published after `start` returns
    // reaches us. (`flush` only empties the socket's write buffer.)
    round_trip(&client).await?;

    let (max_deliver, ack_wait) = match &config.mode {
        Mode::JetStream(js) => (js.max_deliver, js.ack_wait),
        Mode::Core => (None, Duration::from_secs(30)),
    };
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
        tasks: Mutex::new(Vec::new()),
        resume_delay: config.resume_delay,
        max_deliver,
        ack_wait,
        quarantine,
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
    if !config.export.is_empty() {
        tasks.push(match jetstream {
            None => spawn_supervised(&shared, "export".into(), export_core),
            Some((context, _, _, _)) => spawn_supervised(&shared, "export".into(), move |shared| {
                export_jetstream(shared, context.clone())
            }),
        });
    }
    for source in sources {
        tasks.push(match source {
            ImportSource::Core(subject, sub) => {
                let mut first = Some(sub);
                spawn_supervised(&shared, format!("import {subject}"), move |shared| {
                    let first = first.take();
                    let subject = subject.clone();
                    async move {
                        let sub = match first {
                            Some(sub) => sub,
                            // A restart: subscribe again (the client queues
                            // it while disconnected).
                            None => match shared.client.subscribe(subject.clone()).await {
                                Ok(sub) => sub,
                                Err(e) => {
                                    return Exit::Unexpected(format!("subscribing again: {e}"))
                                }
                            },
                        };
                        import_core(shared, sub).await
                    }
                })
            }
            ImportSource::JetStream(source) => {
                let (consumer, stream, js, filter) = *source;
                let name = format!("import {}", filter.subject());
                let mut first = Some(consumer);
                spawn_supervised(&shared, name, move |shared| {
                    let first = first.take();
                    let (stream, js, filter) = (stream.clone(), js.clone(), filter.clone());
                    async move {
                        let consumer = match first {
                            Some(consumer) => consumer,
                            // A restart: the consumer may be gone; make it
                            // (again) as `start` did.
                            None => match consumer_for(&stream, &js, &filter).await {
                                Ok(consumer) => consumer,
                                Err(e) => return Exit::Unexpected(e.to_string()),
                            },
                        };
                        import_jetstream(shared, consumer).await
                    }
                })
            }
        });
    }
    if let Some((subject, sub, consumers)) = advisories {
        let mut first = Some(sub);
        tasks.push(spawn_supervised(&shared, "delivery-limit advisories".into(), move |shared| {
            let first = first.take();
            let (subject, consumers) = (subject.clone(), consumers.clone());
            async move {
                let sub = match first {
                    Some(sub) => sub,
                    None => match shared.client.subscribe(subject).await {
                        Ok(sub) => sub,
                        Err(e) => return Exit::Unexpected(format!("subscribing again: {e}")),
                    },
                };
                watch_delivery_limit(shared, sub, consumers).await
            }
        }));
    }
    Ok(Running { shared, tasks })
}

/// Spawns `run` on the current runtime under [`supervise`], registered in
/// the bridge's task list.
fn spawn_supervised<F, Fut>(shared: &Arc<Shared>, name: String, mut run: F) -> JoinHandle<()>
where
    F: FnMut(Arc<Shared>) -> Fut + Send + 'static,
    Fut: Future<Output = Exit> + Send + 'static,
{
    let state = TaskState::new(name);
    shared.tasks.lock().push(state.clone());
    let weak = Arc::downgrade(shared);
    tokio::spawn(supervise(state, move || {
        // The task holds the bridge only while it runs: a dropped bridge
        // ends its supervisors.
        let shared = weak.upgrade()?;
        if shared.closing.load(Ordering::SeqCst) {
            return None;
        }
        Some(run(shared))
    }))
}

/// Runs what `next` makes until it ends with [`Exit::Done`] (or `next`
/// makes nothing: the bridge is closing). A run that panics, or ends while
/// there is work to do, is logged at error, counted in the task's
/// `restarts` with its reason, and started again after a delay
/// ([`RESTART_DELAY`], doubling with each restart in a row, at most
/// [`RESTART_DELAY_MAX`]). So no task dies unseen: a crafted message that
/// makes one panic costs a restart, and the stats show it.
pub(crate) async fn supervise<F, Fut>(state: Arc<TaskState>, mut next: F)
where
    F: FnMut() -> Option<Fut>,
    Fut: Future<Output = Exit>,
{
    /// Not alive once the supervisor is gone, however it went (an abort
    /// at shutdown included).
    struct Down(Arc<TaskState>);
    impl Drop for Down {
        fn drop(&mut self) {
            self.0.alive.store(false, Ordering::SeqCst);
        }
    }
    let _down = Down(state.clone());
    let mut in_a_row = 0u32;
    loop {
        let Some(run) = next() else { break };
        state.alive.store(true, Ordering::SeqCst);
        let started = Instant::now();
        let why = match AssertUnwindSafe(run).catch_unwind().await {
            Ok(Exit::Done) => break,
            Ok(Exit::Unexpected(why)) => why,
            Err(panic) => format!("panicked: {}", crate::panic_message(&*panic)),
        };
        state.alive.store(false, Ordering::SeqCst);
        state.restarts.fetch_add(1, Ordering::Relaxed);
        tracing::error!(task = %state.name, reason = %why, "a bridge task stopped; starting it again");
        *state.last_failure.lock() = Some(why);
        if started.elapsed() >= HEALTHY_RUN {
            in_a_row = 0;
        }
        let delay = RESTART_DELAY.saturating_mul(1 << in_a_row.min(10)).min(RESTART_DELAY_MAX);
        in_a_row = in_a_row.saturating_add(1);
        tokio::time::sleep(delay).await;
    }
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
    Core(String, async_nats::Subscriber),
    /// The consumer, and what makes it again.
    JetStream(
        Box<(
            jetstream::consumer::PullConsumer,
            jetstream::stream::Stream,
            JetStreamConfig,
            Filter,
        )>,
    ),
}

/// What the connection's event callback knows about the server it talks to:
/// enough to tell a reconnect to the same, live server that did not say why
/// it dropped us (so the client dropped the connection itself) from a
/// server restart or a move to another server of a cluster.
struct Peer {
    client: OnceLock<async_nats::Client>,
    /// The server's id and our client id on it, as of the last connect.
    last: Mutex<Option<(String, u64)>>,
    /// The server sent an error since the last connect (`Stale Connection`,
    /// `Slow Consumer`, an authorisation error): the server ended it.
    server_said: AtomicBool,
    quarantine: Arc<Quarantine>,
    /// How long a quarantine lasts after a client-side reconnect: twice the
    /// ack wait (an unreadable message comes back once per ack wait, and
    /// each time extends it), and a second.
    quarantine_span: Duration,
}

impl Peer {
    /// After a connect: was it back to the server we were on, which had not
    /// said why we left?
    async fn connected(&self, counters: &Counters, reconnect: bool) {
        // The first connect is recorded by `connect` itself.
        let Some(client) = self.client.get().filter(|_| reconnect) else { return };
        let before = self.last.lock().clone();
        // The Connected event can come before the client has the new
        // connection's INFO: wait (briefly) for a client id that is not the
        // old one. (A restarted server may hand out the old number again:
        // then the wait ends by time, and the server id tells.)
        let deadline = Instant::now() + Duration::from_secs(1);
        let mut info = client.server_info();
        while before.as_ref().is_some_and(|(_, cid)| info.client_id == *cid)
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
            info = client.server_info();
        }
        let server_said = self.server_said.swap(false, Ordering::SeqCst);
        if let Some((server, _)) = before {
            if server == info.server_id && !server_said {
                counters.client_side_reconnects.fetch_add(1, Ordering::Relaxed);
                // Only then: a quarantine after every reconnect (a server
                // restart included) restarts the pull streams, and what they
                // had buffered comes back only after the ack wait. (In a
                // cluster the client may come back on another member after
                // an unreadable message; that one is missed.)
                self.quarantine.extend(self.quarantine_span);
                tracing::warn!(
                    server = %info.server_id,
                    "the NATS client dropped its connection to a server that stayed up, and \
                     reconnected: it read something it could not parse (such as a malformed header \
                     block published under the prefix) or missed pings; what it had read but not \
                     yet handed over is lost in core mode, delivered again in JetStream mode"
                );
            }
        }
        *self.last.lock() = Some((info.server_id, info.client_id));
    }
}

async fn connect(
    config: &BridgeConfig,
    counters: Arc<Counters>,
    quarantine: Arc<Quarantine>,
) -> Result<async_nats::Client, BridgeError> {
    let ack_wait = match &config.mode {
        Mode::JetStream(js) => js.ack_wait,
        Mode::Core => Duration::ZERO,
    };
    let peer = Arc::new(Peer {
        client: OnceLock::new(),
        last: Mutex::new(None),
        server_said: AtomicBool::new(false),
        quarantine,
        quarantine_span: ack_wait.saturating_mul(2) + Duration::from_secs(1),
    });
    let events = peer.clone();
    let mut options = async_nats::ConnectOptions::new()
        .name(format!("switchboard bridge {}", config.instance))
        .connection_timeout(config.connect_timeout)
        .max_reconnects(None)
        .subscription_capacity(config.subscription_capacity)
        .custom_inbox_prefix(&config.inbox_prefix)
        .reconnect_delay_callback(|attempts| {
            // 10 ms, doubling to at most 500 ms: quick to come back after a
            // restart, gentle on a server that stays down.
            Duration::from_millis(10u64.saturating_mul(1 << attempts.min(6)).min(500))
        })
        .event_callback(move |event| {
            let counters = counters.clone();
            let peer = events.clone();
            async move {
                match event {
                    async_nats::Event::Connected => {
                        let earlier = counters.connects.fetch_add(1, Ordering::Relaxed);
                        tracing::info!("bridge connected to NATS");
                        peer.connected(&counters, earlier > 0).await;
                    }
                    async_nats::Event::Disconnected => {
                        tracing::warn!("bridge disconnected from NATS; reconnecting");
                    }
                    async_nats::Event::SlowConsumer(sid) => {
                        counters.slow_consumer.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(sid, "NATS dropped messages for a slow bridge subscription");
                    }
                    async_nats::Event::ServerError(e) => {
                        // A permissions violation leaves the connection up;
                        // the errors that close it explain the reconnect.
                        let text = e.to_string();
                        if text.to_ascii_lowercase().contains("permissions violation") {
                            counters.permission_errors.fetch_add(1, Ordering::Relaxed);
                            tracing::error!(error = %text, "the NATS server refused the bridge a publish or subscription: check its permissions");
                        } else {
                            peer.server_said.store(true, Ordering::SeqCst);
                            tracing::warn!(error = %text, "the NATS server reported an error");
                        }
                    }
                    other => tracing::info!(event = %other, "NATS client event"),
                }
            }
        });
    let credentials = |e: std::io::Error| BridgeError::Credentials(e.to_string());
    options = match &config.auth {
        Auth::None => options,
        Auth::UserPassword { user, password } => {
            options.user_and_password(user.clone(), password.0.clone())
        }
        Auth::Token(token) => options.token(token.0.clone()),
        Auth::NKey(seed) => options.nkey(seed.0.clone()),
        Auth::CredentialsFile(path) => options.credentials_file(path).await.map_err(credentials)?,
    };
    if config.tls.required {
        options = options.require_tls(true);
    }
    for root in &config.tls.roots {
        options = options.add_root_certificates(root.clone());
    }
    if let Some((cert, key)) = &config.tls.client {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    let client = options.connect(config.servers.as_str()).await.map_err(|e| {
        BridgeError::Connect { servers: config.servers.clone(), reason: e.to_string() }
    })?;
    let info = client.server_info();
    peer.last.lock().get_or_insert((info.server_id, info.client_id));
    let _ = peer.client.set(client.clone());
    Ok(client)
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
    let config = jetstream::consumer::pull::Config {
        durable_name: Some(name.clone()),
        filter_subject: subject.clone(),
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        ack_wait: js.ack_wait,
        max_deliver: js.max_deliver.unwrap_or(-1),
        deliver_policy: jetstream::consumer::DeliverPolicy::New,
        ..Default::default()
    };
    let fail = |e: &dyn std::fmt::Display| {
        BridgeError::JetStream(format!("consumer {name} on {subject}: {e}"))
    };
    let consumer: jetstream::consumer::PullConsumer =
        stream.get_or_create_consumer(&name, config.clone()).await.map_err(|e| fail(&e))?;
    // A consumer an earlier run made keeps its settings: bring the ones this
    // config sets up to date.
    let now = &consumer.cached_info().config;
    if now.ack_wait != config.ack_wait || now.max_deliver != config.max_deliver {
        return stream.update_consumer(config).await.map_err(|e| fail(&e));
    }
    Ok(consumer)
}

/// A stable 64-bit hash (FNV-1a): consumer names must not change between
/// runs, which `std`'s hasher does not promise.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
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
        let headers = Envelope {
            origin: self.instance.to_string(),
            id: event.id().as_u128(),
            key: (u128::from(self.bus.instance()) << 64) | u128::from(seq),
            source: event.source().to_owned(),
            priority: event.priority(),
            timestamp: event.timestamp(),
            parent: event.parent().copied(),
        }
        .to_headers();
        let payload = match serde_json::to_vec(event.data()) {
            Ok(bytes) => Bytes::from(bytes),
            Err(e) => {
                // A JSON value always serialises; keep the branch honest.
                tracing::error!(event = event.name(), error = %e, "cannot encode an event for NATS");
                self.outbox.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        // What the server would refuse for good must not sit at the head
        // of its lane: the headers are bounded by the origin (256 bytes),
        // the source escaped (3 bytes a byte at most) and the fixed fields.
        let max = self.client.server_info().max_payload;
        let size = payload.len() + 512 + 3 * event.source().len();
        if max > 0 && size > max {
            self.counters.oversized.fetch_add(1, Ordering::Relaxed);
            self.outbox.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                event = event.name(),
                size,
                max,
                "an event too large for the NATS server is not exported: dropped"
            );
            return;
        }
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
        let origin = headers.and_then(|h| h.get(wire::ORIGIN)).map(|v| v.as_str());
        if origin == Some(&*self.instance) {
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
        let envelope = match Envelope::from_headers(headers) {
            Ok(envelope) => envelope,
            Err(e) => {
                if matches!(e, WireError::UnsupportedVersion(_)) {
                    self.counters.unknown_version.fetch_add(1, Ordering::Relaxed);
                }
                return invalid(&e);
            }
        };
        let data = match serde_json::from_slice(payload) {
            Ok(data) => data,
            Err(e) => return invalid(&format!("payload is not JSON: {e}")),
        };
        if self.recent.lock().contains(envelope.key) {
            self.counters.duplicates.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let mut event = Event::new(name, data, envelope.source)
            .with_priority(envelope.priority)
            .with_id(EventId::from_u128(envelope.id))
            .with_timestamp(envelope.timestamp)
            .with_origin(envelope.origin);
        if let Some(parent) = envelope.parent {
            // Kept as given: the import task's publish is no handler's.
            event = event.with_parent(parent);
        }
        Some(Incoming { event, key: envelope.key })
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

/// A message taken from the outbox. Settled once it was sent (or failed
/// and went back); dropped unsettled, as when its task panics or the bridge
/// shuts down mid-send, it goes back to the front of its lane, so a task
/// that stops never takes messages with it.
struct Taken {
    shared: Arc<Shared>,
    item: Option<Outgoing>,
}

/// What became of a message handed to NATS.
enum Sent {
    /// Written to the server (core), or stored by the stream (JetStream).
    Stored,
    /// JetStream acknowledged it as one it had stored already (a re-send of
    /// a publish whose acknowledgement was lost).
    Duplicate,
    /// It can never be sent (counted by the caller).
    Dropped,
}

impl Taken {
    fn new(shared: &Arc<Shared>, item: Outgoing) -> Taken {
        Taken { shared: shared.clone(), item: Some(item) }
    }

    fn item(&self) -> &Outgoing {
        self.item.as_ref().expect("a taken message is there until settled")
    }

    /// The message was sent, or goes back to the front to be sent again.
    fn settle(mut self, result: Result<Sent, String>) {
        let (shared, item) = (&self.shared, self.item.take().expect("settled once"));
        match result {
            Ok(Sent::Stored) => {
                shared.counters.exported.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Sent::Duplicate) => {
                shared.counters.deduplicated.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Sent::Dropped) => {}
            Err(e) => {
                tracing::warn!(error = %e, subject = %item.subject, "NATS did not take the message; will retry");
                shared.counters.retried.fetch_add(1, Ordering::Relaxed);
                shared.outbox.push(item, true);
            }
        }
        shared.outbox.settle();
    }
}

impl Drop for Taken {
    fn drop(&mut self) {
        if let Some(item) = self.item.take() {
            self.shared.outbox.push(item, true);
            self.shared.outbox.settle();
        }
    }
}

/// Core mode: hand each message to the client while connected. During an
/// outage nothing is handed over; the outbox holds what it can and counts
/// what it drops.
async fn export_core(shared: Arc<Shared>) -> Exit {
    loop {
        // Check first, then take: during an outage every message stays in
        // the outbox, where overflow drops the lowest priority first.
        if !until_connected(&shared).await {
            return Exit::Done;
        }
        let Some(item) = shared.outbox.pop() else {
            if shared.closing.load(Ordering::SeqCst) {
                return Exit::Done;
            }
            tokio::select! {
                () = shared.outbox.ready() => {}
                () = tokio::time::sleep(RECHECK * 5) => {}
            }
            continue;
        };
        let taken = Taken::new(&shared, item);
        let item = taken.item();
        let sent = shared
            .client
            .publish_with_headers(item.subject.clone(), item.headers.clone(), item.payload.clone())
            .await;
        if let Err(e) = &sent {
            if e.kind() == async_nats::client::PublishErrorKind::MaxPayloadExceeded {
                // Never sendable: dropped, counted, and not retried.
                tracing::warn!(error = %e, subject = %item.subject, "an event too large for the NATS server is not exported: dropped");
                shared.counters.oversized.fetch_add(1, Ordering::Relaxed);
                shared.outbox.dropped.fetch_add(1, Ordering::Relaxed);
                taken.settle(Ok(Sent::Dropped));
                continue;
            }
        }
        let sent = sent.map(|()| Sent::Stored).map_err(|e| e.to_string());
        let failed = sent.is_err();
        taken.settle(sent);
        if failed {
            tokio::time::sleep(RECHECK).await;
        }
    }
}

/// JetStream mode: publish with `Nats-Msg-Id`, keep up to [`ACK_WINDOW`]
/// acknowledgements outstanding, and put back what was not acknowledged
/// (the stream drops the duplicate if it had stored it after all).
async fn export_jetstream(shared: Arc<Shared>, context: jetstream::Context) -> Exit {
    let mut pending = FuturesUnordered::new();
    loop {
        // Settle what has been acknowledged.
        while let Some(Some((taken, result))) = pending.next().now_or_never() {
            Taken::settle(taken, result);
        }
        let item = if pending.len() < ACK_WINDOW && shared.connected() {
            shared.outbox.pop()
        } else {
            None
        };
        let Some(item) = item else {
            if pending.is_empty() {
                if shared.closing.load(Ordering::SeqCst) && shared.outbox.len() == 0 {
                    return Exit::Done;
                }
                if !until_connected(&shared).await {
                    return Exit::Done;
                }
                tokio::select! {
                    () = shared.outbox.ready() => {}
                    () = tokio::time::sleep(RECHECK * 5) => {}
                }
            } else if let Some((taken, result)) = pending.next().await {
                Taken::settle(taken, result);
            }
            continue;
        };
        let taken = Taken::new(&shared, item);
        let item = taken.item();
        match context
            .publish_with_headers(item.subject.clone(), item.headers.clone(), item.payload.clone())
            .await
        {
            Ok(ack) => pending.push(
                async move {
                    let result = ack
                        .await
                        .map(|ack| if ack.duplicate { Sent::Duplicate } else { Sent::Stored })
                        .map_err(|e| e.to_string());
                    (taken, result)
                }
                .boxed(),
            ),
            Err(e) => {
                taken.settle(Err(e.to_string()));
                // Not at once again: the same message is first in line.
                tokio::time::sleep(RECHECK).await;
            }
        }
    }
}

/// Core mode: nothing can be delivered again, so an event the local bus
/// refuses is lost: counted in `refused` and logged.
async fn import_core(shared: Arc<Shared>, mut sub: async_nats::Subscriber) -> Exit {
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
            Delivery::Closed => return Exit::Done,
        }
    }
    if shared.closing.load(Ordering::SeqCst) {
        Exit::Done
    } else {
        Exit::Unexpected("the NATS subscription ended".into())
    }
}

/// Counts (and logs, with its stream sequence) each message one of this
/// bridge's consumers gave up on at its delivery limit: a message the
/// bridge could never take, typically one whose header block the client
/// cannot parse. `consumers` is the durable name and `_`: this bridge's
/// consumers are named that, then 16 hex digits.
async fn watch_delivery_limit(
    shared: Arc<Shared>,
    mut sub: async_nats::Subscriber,
    consumers: String,
) -> Exit {
    while let Some(message) = sub.next().await {
        let Ok(advisory) = serde_json::from_slice::<serde_json::Value>(&message.payload) else {
            continue;
        };
        let field = |name: &str| advisory.get(name).cloned().unwrap_or_default();
        let consumer = field("consumer");
        let ours = consumer
            .as_str()
            .and_then(|c| c.strip_prefix(consumers.as_str()))
            .is_some_and(|rest| rest.len() == 16 && rest.bytes().all(|b| b.is_ascii_hexdigit()));
        if !ours {
            continue;
        }
        shared.counters.undeliverable.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            stream = %field("stream"),
            consumer = %consumer,
            stream_sequence = %field("stream_seq"),
            deliveries = %field("deliveries"),
            "JetStream gave up on a bridged message at its delivery limit: it is not imported \
             (the stream still holds it at this sequence)"
        );
    }
    if shared.closing.load(Ordering::SeqCst) {
        Exit::Done
    } else {
        Exit::Unexpected("the advisory subscription ended".into())
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
/// with a delay ([`nak_delay`]), so the stream delivers it again; on the
/// last delivery the delivery limit allows, the bridge keeps it instead and
/// offers it again itself (telling the stream it is in progress) until the
/// bus takes it, so the limit never loses what the bus refused. What the bus
/// refuses for good (its name) is terminated.
async fn import_jetstream(
    shared: Arc<Shared>,
    consumer: jetstream::consumer::PullConsumer,
) -> Exit {
    match import_loop(&shared, &consumer).await {
        Ok(never) => match never {},
        Err(exit) => exit,
    }
}

/// [`import_jetstream`]'s loop; it ends only with how the task ends.
async fn import_loop(
    shared: &Arc<Shared>,
    consumer: &jetstream::consumer::PullConsumer,
) -> Result<std::convert::Infallible, Exit> {
    let mut held = Held::new();
    'restart: loop {
        if shared.closing.load(Ordering::SeqCst) {
            return Err(Exit::Done);
        }
        let quarantine = shared.quarantine.ends();
        let pulled = match quarantine {
            None => consumer.messages().await,
            Some(_) => consumer.stream().max_messages_per_batch(1).messages().await,
        };
        let mut messages = match pulled {
            Ok(messages) => messages,
            Err(e) => {
                tracing::warn!(error = %e, "cannot pull from the JetStream consumer; retrying");
                tokio::time::sleep(RECHECK * 10).await;
                continue;
            }
        };
        if quarantine.is_some() {
            tracing::warn!(
                "JetStream imports pull one message at a time until an unreadable message is given up"
            );
        }
        loop {
            // A quarantine that begins or ends changes how we pull.
            let began = shared.quarantine.began.notified();
            let mut began = std::pin::pin!(began);
            began.as_mut().enable();
            if quarantine.is_none() && shared.quarantine.ends().is_some() {
                continue 'restart;
            }
            let first = match quarantine {
                None => tokio::select! {
                    first = messages.next() => first,
                    () = began => continue 'restart,
                },
                Some(ends) => tokio::select! {
                    first = messages.next() => first,
                    () = tokio::time::sleep_until(ends.into()) => continue 'restart,
                },
            };
            let Some(first) = first else { continue 'restart };
            let mut batch = vec![first];
            while batch.len() < IMPORT_BATCH {
                match messages.next().now_or_never() {
                    Some(Some(m)) => batch.push(m),
                    _ => break,
                }
            }
            import_batch(shared, &mut messages, batch, &mut held).await?;
            while !held.is_empty() {
                let batch: Vec<_> = held.drain(..held.len().min(IMPORT_BATCH)).collect();
                import_batch(shared, &mut messages, batch, &mut held).await?;
            }
        }
    }
}

/// Messages an import task took off the pull stream while the bus was busy
/// with an earlier batch, so as to tell the stream it is working on them.
type Held = VecDeque<Result<jetstream::Message, jetstream::consumer::pull::MessagesError>>;

/// How many messages an import task holds that way, at most.
const HELD_MAX: usize = 65_536;

/// Publishes one batch locally and acknowledges what the bus took (see
/// [`import_jetstream`]). `Err` carries how the task ends.
async fn import_batch(
    shared: &Arc<Shared>,
    messages: &mut jetstream::consumer::pull::Stream,
    batch: Vec<Result<jetstream::Message, jetstream::consumer::pull::MessagesError>>,
    held: &mut Held,
) -> Result<(), Exit> {
    {
        {
            let mut to_ack = Vec::with_capacity(batch.len());
            for message in batch {
                let message = match message {
                    Ok(m) => m,
                    Err(e) => {
                        use jetstream::consumer::pull::MessagesErrorKind as Kind;
                        if matches!(e.kind(), Kind::ConsumerDeleted | Kind::PushBasedConsumer) {
                            // Gone (deleted by an operator, or another
                            // user): the supervisor makes it again.
                            return Err(Exit::Unexpected(format!("the JetStream consumer: {e}")));
                        }
                        // Heartbeats missed during an outage, and the like:
                        // the stream goes on pulling.
                        tracing::debug!(error = %e, "JetStream pull");
                        continue;
                    }
                };
                let decode = || {
                    shared.decode(
                        message.subject.as_str(),
                        message.headers.as_ref(),
                        &message.payload,
                    )
                };
                let Some(incoming) = decode() else {
                    // An echo, a duplicate, not for this bridge, or not a
                    // bridged event: done with.
                    to_ack.push(message);
                    continue;
                };
                let mut outcome = shared.deliver(incoming).await;
                let delivered = message.info().map_or(1, |info| info.delivered);
                let last = shared.max_deliver.is_some_and(|limit| delivered >= limit);
                let mut retries = 0;
                while last && matches!(outcome, Delivery::Refused(_)) {
                    // The stream would give up after this delivery: keep it.
                    retries += 1;
                    let delay = nak_delay(retries).min(shared.ack_wait / 2);
                    tokio::time::sleep(delay).await;
                    if let Err(e) = message.ack_with(AckKind::Progress).await {
                        tracing::debug!(error = %e, "JetStream in-progress ack");
                    }
                    outcome = match decode() {
                        Some(incoming) => shared.deliver(incoming).await,
                        None => Delivery::Accepted,
                    };
                }
                match outcome {
                    Delivery::Accepted => to_ack.push(message),
                    Delivery::Refused(e) => {
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
                    Delivery::Closed => return Err(Exit::Done),
                }
            }
            // The bus may take a while (its handlers, and everything else
            // it was given): keep the stream from delivering these again
            // meanwhile, which would spend their delivery limit.
            {
                let flushed = shared.bus.flush_async();
                let mut flushed = std::pin::pin!(flushed);
                let every = shared.ack_wait / 3;
                loop {
                    tokio::select! {
                        () = &mut flushed => break,
                        () = tokio::time::sleep(every) => {
                            // What the client has pulled meanwhile is held
                            // too: its ack wait runs as well.
                            while held.len() < HELD_MAX {
                                match messages.next().now_or_never() {
                                    Some(Some(m)) => held.push_back(m),
                                    _ => break,
                                }
                            }
                            let holding = held.iter().filter_map(|m| m.as_ref().ok());
                            for message in to_ack.iter().chain(holding) {
                                let _ = message.ack_with(AckKind::Progress).await;
                            }
                        }
                    }
                }
            }
            for message in to_ack {
                if let Err(e) = message.ack().await {
                    tracing::warn!(error = %e, "JetStream ack failed; the message will be redelivered");
                }
            }
        }
    }
    Ok(())
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

    #[tokio::test(start_paused = true)]
    async fn a_task_that_panics_or_ends_is_started_again_and_counted_until_it_is_done() {
        let state = TaskState::new("import x".into());
        let mut runs = 0;
        let supervisor = supervise(state.clone(), || {
            runs += 1;
            let run = runs;
            Some(async move {
                match run {
                    1 => panic!("overflow when adding duration to instant"),
                    2 => Exit::Unexpected("the NATS subscription ended".into()),
                    _ => Exit::Done,
                }
            })
        });
        supervisor.await;
        assert_eq!(runs, 3);
        let stats = state.stats();
        assert_eq!(stats.restarts, 2);
        assert!(!stats.alive, "a task whose work is over is not alive");
        assert_eq!(stats.last_failure.as_deref(), Some("the NATS subscription ended"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_supervised_task_stays_alive_while_it_runs_and_stops_when_told() {
        let state = TaskState::new("export".into());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let mut rx = Some(rx);
        let supervisor = tokio::spawn(supervise(state.clone(), move || {
            let rx = rx.take()?;
            Some(async move {
                let _ = rx.await;
                panic!("boom")
            })
        }));
        tokio::task::yield_now().await;
        assert!(state.stats().alive);
        tx.send(()).unwrap();
        supervisor.await.unwrap();
        let stats = state.stats();
        assert_eq!((stats.alive, stats.restarts), (false, 1));
        assert_eq!(stats.last_failure.as_deref(), Some("panicked: boom"));
    }
}
