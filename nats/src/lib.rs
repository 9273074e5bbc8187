//! A NATS bridge for Switchboard: a bot sharded over processes and hosts
//! keeps one event space.
//!
//! A [`Bridge`] connects one local [`Bus`] to a NATS server:
//!
//! * **export**: local events whose names match the export globs are
//!   published to NATS under `<prefix>.<name>` (the name escaped into a
//!   valid subject, see [`subject`]); metadata (origin, id, publish key,
//!   source, priority, timestamp, and the [parent](switchboard::Event::parent)
//!   if there is one) travels in headers, the payload as JSON (typed
//!   payloads through serde);
//! * **import**: events arriving for the import globs are published into
//!   the local bus with their original name, id, source, priority,
//!   timestamp and parent (restored with
//!   [`Event::with_parent`](switchboard::Event::with_parent), so a cascade
//!   that crossed walks on in the importing bus's history), and marked with
//!   [`Event::origin`](switchboard::Event::origin). A glob becomes a NATS
//!   filter that receives a superset of its names (`trivia.*` →
//!   `<prefix>.trivia.>`; never a NATS `*`), overlapping filters are reduced
//!   to a disjoint set, and every message is re-checked with the exact
//!   matcher;
//! * **no loops**: an imported event is never exported again, and a
//!   bridge skips messages carrying its own origin, so two buses that
//!   export and import `*` to each other see each event exactly once;
//! * **never blocking dispatch**: exports go through a bounded queue of the
//!   bridge's own; when it is full, the lowest priority is dropped first,
//!   and counted ([`BridgeStats::dropped`]);
//! * **outages**: the client reconnects forever and its subscriptions come
//!   back. In core mode ([`Mode::Core`], at most once), nothing is handed to
//!   the client while it is disconnected: the queue holds what it can, and
//!   what it drops is counted; messages already written to a connection that
//!   then broke can be lost without a count (core NATS has no
//!   acknowledgements), and an importing bus that falls more than
//!   [`BridgeConfig::subscription_capacity`] messages behind loses messages
//!   (reported in [`BridgeStats::slow_consumer`]; core NATS has no flow
//!   control). In JetStream mode ([`Mode::JetStream`], at least
//!   once) exports are acknowledged by the stream and retried until they
//!   are, imports come from a durable consumer and are acknowledged only
//!   after the local handlers ran, and redeliveries are dropped by their
//!   publish key (below);
//! * **a full importing bus**: [`Bus::publish_async`](switchboard::Bus::publish_async)
//!   waits for room under the bus's default [`Overflow::Block`](switchboard::Overflow::Block).
//!   Under a policy that refuses instead (`Overflow::Error`: `Full`,
//!   `BacklogFull`), a refused import is counted in
//!   [`BridgeStats::refused`]. In JetStream mode it is never acknowledged:
//!   it is negatively acknowledged with a backoff (100 ms, doubling with
//!   each delivery as the message's delivery count says, at most 2 s), so
//!   the stream delivers it again until the bus takes it; order is not kept
//!   for it (what came after it may be published first). In core mode it is
//!   lost, and logged at warn. An event whose name the local bus refuses
//!   (`InvalidName`) can never be taken: it is counted in
//!   [`BridgeStats::invalid`] and, in JetStream mode, terminated (`Term`)
//!   so it is not delivered again.
//!
//! # One delivery per publish
//!
//! Each event the local bus accepts is one delivery to each importing bus,
//! even when it is a clone of an earlier one: `Event::clone` keeps the
//! [`EventId`](switchboard::EventId), and republishing a clone is a new
//! publish. So de-duplication does not go by the event id but by a
//! *publish key* unique to one accepted publish: the exporting bus's
//! [`Bus::instance`] in the high 64 bits and the event's
//! [`sequence`](switchboard::Event::sequence) in the low 64. It travels as
//! 32 hex digits in the `Switchboard-Key` header and, in JetStream mode, as
//! the `Nats-Msg-Id` the stream's duplicate window goes by. The event id
//! still travels in `Switchboard-Id` and the imported event keeps it, so a
//! clone imported twice arrives as two events with one id. An importer
//! remembers the keys of the last 65,536 messages it imported and drops a
//! message whose key it saw ([`BridgeStats::duplicates_dropped`]): a
//! re-send or redelivery of one publish. A message without a valid
//! `Switchboard-Key` (or `Switchboard-Id`, or `Switchboard-Origin`) is not a
//! bridged event: it is skipped and counted in [`BridgeStats::invalid`].
//!
//! # Facing the network
//!
//! Anything a client of the NATS server publishes under the prefix reaches
//! the importing bridges, so they take nothing on trust:
//!
//! * **the format is a versioned contract**, in [`wire`]: every header value
//!   is checked (with checked arithmetic), and a message outside the format
//!   (a malformed optional header included, or a version the bridge does
//!   not read) is skipped, logged at warn and counted in
//!   [`BridgeStats::invalid`];
//! * **no task dies unseen**: each task runs under a supervisor that starts
//!   it again when it panics or ends, logs it at error and shows it in
//!   [`BridgeStats::tasks`];
//! * **a header block the client cannot parse** makes the client drop the
//!   connection and reconnect (counted in
//!   [`BridgeStats::client_side_reconnects`]); core mode loses what the
//!   client had read with it. JetStream loses nothing valid: after such a
//!   reconnect, imports pull one message at a time for a while, so the
//!   unreadable message
//!   arrives alone until the stream gives up on it at the delivery limit
//!   ([`JetStreamConfig::max_deliver`]; counted in
//!   [`BridgeStats::undeliverable`], its stream sequence logged);
//! * **only bridges should publish under the prefix**, and that is the
//!   server's to enforce: connect with credentials
//!   ([`BridgeConfig::user_and_password`], [`token`](BridgeConfig::token),
//!   [`nkey`](BridgeConfig::nkey),
//!   [`credentials_file`](BridgeConfig::credentials_file)) and TLS
//!   ([`require_tls`](BridgeConfig::require_tls)), give each bridge an inbox
//!   prefix of its own ([`inbox_prefix`](BridgeConfig::inbox_prefix):
//!   JetStream delivers to it), and give only the bridge users the prefix,
//!   their inboxes and the JetStream calls a bridge makes on its stream:
//!
//! ```text
//! authorization {
//!   SHARD_1 = {
//!     publish   = ["mybot.>", "_INBOX_shard1.>", "$JS.API.INFO",
//!                  "$JS.API.STREAM.INFO.SWITCHBOARD_MYBOT", "$JS.API.STREAM.CREATE.SWITCHBOARD_MYBOT",
//!                  "$JS.API.CONSUMER.CREATE.SWITCHBOARD_MYBOT.>", "$JS.API.CONSUMER.DURABLE.CREATE.SWITCHBOARD_MYBOT.>",
//!                  "$JS.API.CONSUMER.INFO.SWITCHBOARD_MYBOT.>", "$JS.API.CONSUMER.MSG.NEXT.SWITCHBOARD_MYBOT.>",
//!                  "$JS.ACK.SWITCHBOARD_MYBOT.>"]
//!     subscribe = ["mybot.>", "_INBOX_shard1.>", "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.SWITCHBOARD_MYBOT.*"]
//!   }
//!   # SHARD_2: the same with its own inbox prefix, _INBOX_shard2
//!   users = [
//!     { user: shard-1, password: "...", permissions: $SHARD_1 }
//!     { user: shard-2, password: "...", permissions: $SHARD_2 }
//!     # everyone else: nothing on mybot.>, _INBOX_shard*.> or $JS.* (or a separate account)
//!   ]
//! }
//! ```
//!
//! (Core mode needs only the prefix and the inbox; the JetStream entries
//! are the calls on the bridge's stream, acknowledgements and the
//! delivery-limit advisories. A refused permission is counted in
//! [`BridgeStats::permission_errors`].)
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use switchboard::Bus;
//! use switchboard_nats::{Bridge, BridgeConfig};
//!
//! let bus = Bus::new()?;
//! let bridge = Bridge::start(
//!     &bus,
//!     BridgeConfig::new("nats://127.0.0.1:4222")
//!         .prefix("mybot")
//!         .export("trivia.*")
//!         .import("stats.*"),
//! )
//! .await?;
//! // ... the bot runs ...
//! println!("{:?}", bridge.stats());
//! assert!(bridge.stats().healthy());
//! bridge.shutdown(std::time::Duration::from_secs(5)).await;
//! # Ok(()) }
//! ```

mod bridge;
mod outbox;
pub mod subject;
pub mod wire;

/// The NATS client this crate is built on, for what the bridge does not
/// cover (managing streams, publishing raw messages).
pub use async_nats;

use std::any::Any;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use switchboard::Bus;
use switchboard_matcher::PatternError;
use tokio::task::JoinHandle;

/// How a bridge delivers.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub enum Mode {
    /// Core NATS: at most once, lowest latency. The default.
    #[default]
    Core,
    /// JetStream: at least once across outages, duplicates of one publish
    /// dropped by its publish key.
    JetStream(JetStreamConfig),
}

/// JetStream settings. Start from [`JetStreamConfig::new`].
#[derive(Clone, Debug)]
pub struct JetStreamConfig {
    pub(crate) stream: Option<String>,
    pub(crate) durable: String,
    pub(crate) duplicate_window: Duration,
    pub(crate) max_age: Duration,
    pub(crate) ack_wait: Duration,
    pub(crate) max_deliver: Option<i64>,
}

impl JetStreamConfig {
    /// JetStream with the durable consumer name `durable` and defaults.
    /// Keep the name stable across restarts of one shard, distinct between
    /// shards.
    pub fn new(durable: impl Into<String>) -> JetStreamConfig {
        JetStreamConfig {
            stream: None,
            durable: durable.into(),
            duplicate_window: Duration::from_secs(120),
            max_age: Duration::from_secs(3600),
            ack_wait: Duration::from_secs(30),
            max_deliver: Some(DEFAULT_MAX_DELIVER),
        }
    }

    /// The stream on `<prefix>.>` (created if missing). Default
    /// `SWITCHBOARD_<PREFIX>`.
    pub fn stream(mut self, name: impl Into<String>) -> JetStreamConfig {
        self.stream = Some(name.into());
        self
    }

    /// How long the stream drops a message whose `Nats-Msg-Id` (the publish
    /// key) it already stored: a re-send of one publish. Default 2 min.
    pub fn duplicate_window(mut self, window: Duration) -> JetStreamConfig {
        self.duplicate_window = window;
        self
    }

    /// How long the stream keeps messages. Default 1 h.
    pub fn max_age(mut self, age: Duration) -> JetStreamConfig {
        self.max_age = age;
        self
    }

    /// How long a delivered message may stay unacknowledged before it is
    /// delivered again. Default 30 s.
    pub fn ack_wait(mut self, wait: Duration) -> JetStreamConfig {
        self.ack_wait = wait;
        self
    }

    /// How many times the stream delivers one message before it gives up on
    /// it (`None`: no limit). Default [`DEFAULT_MAX_DELIVER`].
    ///
    /// What this bounds is a message the client cannot read: a malformed
    /// header block breaks the connection each time it is delivered, and
    /// would come back every [`ack_wait`](JetStreamConfig::ack_wait)
    /// forever. At the limit the stream gives up on it, and the bridge
    /// counts it in [`BridgeStats::undeliverable`] and logs its stream
    /// sequence. An event the local bus refuses for now is never lost to
    /// the limit: on its last delivery the bridge keeps it and offers it
    /// again until the bus takes it.
    pub fn max_deliver(mut self, limit: Option<u32>) -> JetStreamConfig {
        self.max_deliver = limit.map(i64::from);
        self
    }
}

/// The default delivery limit of a JetStream consumer: with the default
/// ack wait (30 s), a message no client can read stops coming back after
/// about 5 minutes.
pub const DEFAULT_MAX_DELIVER: i64 = 10;

/// A secret: kept out of `Debug` output and logs.
#[derive(Clone)]
pub(crate) struct Secret(pub(crate) String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<secret>")
    }
}

/// How a bridge authenticates to the NATS server.
#[derive(Clone, Debug, Default)]
pub(crate) enum Auth {
    #[default]
    None,
    UserPassword {
        user: String,
        password: Secret,
    },
    Token(Secret),
    NKey(Secret),
    CredentialsFile(PathBuf),
}

#[derive(Clone, Debug, Default)]
pub(crate) struct Tls {
    pub(crate) required: bool,
    pub(crate) roots: Vec<PathBuf>,
    pub(crate) client: Option<(PathBuf, PathBuf)>,
}

/// What a bridge bridges, and how. Start from [`BridgeConfig::new`].
#[derive(Clone, Debug)]
pub struct BridgeConfig {
    servers: String,
    prefix: String,
    export: Vec<String>,
    import: Vec<String>,
    instance: String,
    plugin: String,
    queue_capacity: usize,
    connect_timeout: Duration,
    resume_delay: Duration,
    subscription_capacity: usize,
    mode: Mode,
    auth: Auth,
    tls: Tls,
    inbox_prefix: String,
}

impl BridgeConfig {
    /// A bridge to `servers` (`nats://host:port`, comma-separated for
    /// several), prefix `switchboard`, nothing exported or imported yet.
    pub fn new(servers: impl Into<String>) -> BridgeConfig {
        BridgeConfig {
            servers: servers.into(),
            prefix: "switchboard".to_owned(),
            export: Vec::new(),
            import: Vec::new(),
            instance: random_instance(),
            plugin: "nats-bridge".to_owned(),
            queue_capacity: 65_536,
            connect_timeout: Duration::from_secs(5),
            resume_delay: Duration::from_millis(250),
            subscription_capacity: 65_536,
            mode: Mode::Core,
            auth: Auth::None,
            tls: Tls::default(),
            inbox_prefix: "_INBOX".to_owned(),
        }
    }

    /// The subject prefix every event travels under: dot-separated literal
    /// tokens, such as `mybot` or `bots.prod`. Buses share events only
    /// under the same prefix.
    pub fn prefix(mut self, prefix: impl Into<String>) -> BridgeConfig {
        self.prefix = prefix.into();
        self
    }

    /// Exports local events matching `glob` (fnmatch, as subscriptions).
    pub fn export(mut self, glob: impl Into<String>) -> BridgeConfig {
        self.export.push(glob.into());
        self
    }

    /// Imports remote events matching `glob`.
    pub fn import(mut self, glob: impl Into<String>) -> BridgeConfig {
        self.import.push(glob.into());
        self
    }

    /// This bridge's origin id, stamped on what it exports and recorded as
    /// [`Event::origin`](switchboard::Event::origin) on what others import:
    /// printable ASCII without spaces. Default: random, unique per bridge.
    /// Give each shard its own.
    pub fn instance(mut self, instance: impl Into<String>) -> BridgeConfig {
        self.instance = instance.into();
        self
    }

    /// The plugin name the export subscriptions are made under. Default
    /// `nats-bridge`.
    pub fn plugin(mut self, plugin: impl Into<String>) -> BridgeConfig {
        self.plugin = plugin.into();
        self
    }

    /// Messages waiting to be sent, at most (default 65,536). Past it the
    /// lowest priority is dropped first, and counted.
    pub fn queue_capacity(mut self, capacity: usize) -> BridgeConfig {
        self.queue_capacity = capacity.max(1);
        self
    }

    /// How long connecting may take before [`Bridge::start`] fails. Default 5 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> BridgeConfig {
        self.connect_timeout = timeout;
        self
    }

    /// After the connection comes back, how long the bridge waits before it
    /// sends what it held during the outage (default 250 ms). Core NATS
    /// delivers only to subscriptions that exist when a message arrives;
    /// the wait lets the other bridges, reconnecting too, subscribe again
    /// first.
    pub fn resume_delay(mut self, delay: Duration) -> BridgeConfig {
        self.resume_delay = delay;
        self
    }

    /// Messages the client buffers per import subscription while the local
    /// bus is slow to take them (default 65,536). Past it NATS drops them
    /// for this subscription and reports a slow consumer
    /// ([`BridgeStats::slow_consumer`]).
    pub fn subscription_capacity(mut self, capacity: usize) -> BridgeConfig {
        self.subscription_capacity = capacity.max(1);
        self
    }

    /// Core NATS or JetStream.
    pub fn mode(mut self, mode: Mode) -> BridgeConfig {
        self.mode = mode;
        self
    }

    /// Authenticates with a user name and password. (One way to
    /// authenticate at a time: the last one set counts.) The server's
    /// configuration then decides what this user may publish and subscribe
    /// to: see the crate docs on letting only bridges speak on the prefix.
    pub fn user_and_password(
        mut self,
        user: impl Into<String>,
        password: impl Into<String>,
    ) -> BridgeConfig {
        self.auth = Auth::UserPassword { user: user.into(), password: Secret(password.into()) };
        self
    }

    /// Authenticates with a token.
    pub fn token(mut self, token: impl Into<String>) -> BridgeConfig {
        self.auth = Auth::Token(Secret(token.into()));
        self
    }

    /// Authenticates with an NKey: `seed` is the user's seed (`SU...`); the
    /// server knows its public key.
    pub fn nkey(mut self, seed: impl Into<String>) -> BridgeConfig {
        self.auth = Auth::NKey(Secret(seed.into()));
        self
    }

    /// Authenticates with a credentials file (a user JWT and its NKey seed,
    /// as `nsc` writes them), for servers run in operator mode. Read when
    /// the bridge starts.
    pub fn credentials_file(mut self, path: impl Into<PathBuf>) -> BridgeConfig {
        self.auth = Auth::CredentialsFile(path.into());
        self
    }

    /// The subject prefix of the bridge's reply inboxes (default `_INBOX`).
    /// JetStream delivers pulled messages, and acknowledges publishes, to
    /// these inboxes: whoever may subscribe to them reads the bridged
    /// events, and whoever may publish to them can send the bridge what it
    /// cannot parse. Give each bridge a prefix of its own (`_INBOX_shard1`)
    /// and only that bridge the right to it (see the crate docs).
    pub fn inbox_prefix(mut self, prefix: impl Into<String>) -> BridgeConfig {
        self.inbox_prefix = prefix.into();
        self
    }

    /// Refuses to connect without TLS. Default: TLS when the URL says
    /// `tls://` or the server requires it.
    pub fn require_tls(mut self, required: bool) -> BridgeConfig {
        self.tls.required = required;
        self
    }

    /// Trusts the certificate authorities in this PEM file (besides the
    /// system's), for a server whose certificate a private authority signed.
    pub fn root_certificates(mut self, path: impl Into<PathBuf>) -> BridgeConfig {
        self.tls.roots.push(path.into());
        self
    }

    /// Presents this client certificate and key (PEM files), for a server
    /// that verifies clients.
    pub fn client_certificate(
        mut self,
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
    ) -> BridgeConfig {
        self.tls.client = Some((cert.into(), key.into()));
        self
    }
}

fn random_instance() -> String {
    // The process part of a fresh event id is random per process; the
    // counter part makes two bridges of one process differ.
    let id = switchboard::Event::new("bridge", serde_json::Value::Null, "bridge").id().as_u128();
    format!("{:016x}-{}", (id >> 64) as u64, id as u64)
}

/// Why a bridge could not start.
#[derive(Debug)]
#[non_exhaustive]
pub enum BridgeError {
    /// The subject prefix is not a literal NATS subject.
    InvalidPrefix(subject::PrefixError),
    /// An export or import glob is not a valid pattern.
    InvalidGlob {
        /// The glob.
        glob: String,
        /// Why.
        error: PatternError,
    },
    /// An export or import glob is empty.
    EmptyGlob,
    /// Neither export nor import globs were given.
    NothingToBridge,
    /// An instance id (which travels in a header) or a JetStream stream or
    /// consumer name holds characters NATS refuses.
    InvalidName {
        /// Which name.
        what: &'static str,
        /// The name.
        name: String,
    },
    /// The credentials file could not be read.
    Credentials(String),
    /// No NATS server answered, or it refused the connection (TLS, or
    /// authentication).
    Connect {
        /// The servers tried.
        servers: String,
        /// The client's error.
        reason: String,
    },
    /// A subscription (on NATS or on the local bus) failed.
    Subscribe(String),
    /// The JetStream stream or consumer could not be made.
    JetStream(String),
}

impl fmt::Display for BridgeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BridgeError::InvalidPrefix(e) => e.fmt(f),
            BridgeError::InvalidGlob { glob, error } => {
                write!(f, "invalid bridge glob {glob:?}: {error}")
            }
            BridgeError::EmptyGlob => f.write_str("a bridge glob is empty"),
            BridgeError::NothingToBridge => {
                f.write_str("the bridge has no export and no import globs")
            }
            BridgeError::InvalidName { what, name } => write!(
                f,
                "invalid {what} {name:?}: use letters, digits, `-` and `_` (an instance id may hold any printable ASCII but spaces)"
            ),
            BridgeError::Credentials(e) => write!(f, "NATS credentials: {e}"),
            BridgeError::Connect { servers, reason } => {
                write!(f, "no NATS server answered at {servers}: {reason}")
            }
            BridgeError::Subscribe(e) => write!(f, "bridge subscription failed: {e}"),
            BridgeError::JetStream(e) => write!(f, "JetStream: {e}"),
        }
    }
}

impl std::error::Error for BridgeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BridgeError::InvalidPrefix(e) => Some(e),
            BridgeError::InvalidGlob { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// A bridge's counters, and the state of its tasks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BridgeStats {
    /// Events sent to NATS (in JetStream mode: stored by the stream).
    pub exported: u64,
    /// JetStream mode: sends the stream acknowledged as duplicates of a
    /// message it had stored already (by its `Nats-Msg-Id`: a re-send after
    /// a lost acknowledgement), not counted in `exported`.
    pub deduplicated: u64,
    /// Events received from NATS and published locally.
    pub imported: u64,
    /// Events that could not be exported: the bridge's queue was full (the
    /// lowest priority goes first), or the local export backlog was.
    pub dropped: u64,
    /// Times the connection came back after a loss.
    pub reconnects: u64,
    /// Of the `reconnects`, those where the client itself dropped the
    /// connection to a server that stayed up and had not said why: it read
    /// something it could not parse (a malformed header block published
    /// under the prefix: core mode loses what the client had read with it)
    /// or it missed pings. A server restart, a move to another server of a
    /// cluster, and a connection the server closed with an error are not
    /// counted here.
    pub client_side_reconnects: u64,
    /// Imported messages dropped because their publish key was seen already:
    /// a re-send or redelivery of one publish. (A republished clone of an
    /// event has the same id but a new key, and is delivered.)
    pub duplicates_dropped: u64,
    /// Messages carrying this bridge's own origin, skipped.
    pub echoes_skipped: u64,
    /// Messages on the prefix that are not bridged events (a subject
    /// escaping cannot make, headers outside the [`wire`] format, a payload
    /// that is not JSON), skipped and logged at warn; and imported events
    /// whose name the local bus refuses
    /// ([`PublishError::InvalidName`](switchboard::PublishError::InvalidName)),
    /// which no retry could deliver (in JetStream mode they are
    /// terminated: never delivered again).
    pub invalid: u64,
    /// Of the `invalid`, messages of a [`wire`] format version this bridge
    /// does not read.
    pub unknown_version: u64,
    /// Sends that failed or were not acknowledged and were queued again.
    pub retried: u64,
    /// Times the client reported an import subscription too slow: its
    /// buffer ([`BridgeConfig::subscription_capacity`]) was full and
    /// messages were dropped (one report may stand for several). Core mode
    /// only; JetStream's pull consumers have flow control.
    pub slow_consumer: u64,
    /// Times the local bus refused an imported event for now: its queue, or
    /// an ordered subscription's backlog, was full and the overflow policy
    /// is not to wait ([`Overflow::Error`](switchboard::Overflow::Error)).
    /// In JetStream mode each refusal is a retry, not a loss: the message is
    /// negatively acknowledged with a delay (100 ms, doubling with each
    /// delivery, at most 2 s), the stream delivers it again, and it counts
    /// in `imported` once the bus takes it (one event refused three times
    /// counts 3 here). In core mode nothing can be delivered again: each
    /// refusal is an event lost, and logged at warn.
    pub refused: u64,
    /// JetStream mode: messages the stream gave up on at the consumer's
    /// delivery limit ([`JetStreamConfig::max_deliver`]), never imported;
    /// each is logged at warn with its stream sequence.
    pub undeliverable: u64,
    /// Times the server refused the bridge a publish or a subscription
    /// (its permissions do not allow it): each is logged at error, and the
    /// bridge is not [`healthy`](BridgeStats::healthy).
    pub permission_errors: u64,
    /// Of the `dropped`, events too large for the server's payload limit:
    /// never sendable, so not retried.
    pub oversized: u64,
    /// Events waiting in the bridge's queue now.
    pub queued: u64,
    /// Connected now.
    pub connected: bool,
    /// The bridge's tasks: the export task, one import task per NATS
    /// filter, and (JetStream with a delivery limit) the advisory watcher.
    pub tasks: Vec<TaskStats>,
}

impl BridgeStats {
    /// Whether every task is running and the server refused the bridge
    /// nothing (no [`permission_errors`](BridgeStats::permission_errors)).
    pub fn healthy(&self) -> bool {
        self.tasks.iter().all(|t| t.alive) && self.permission_errors == 0
    }
}

/// One of a bridge's tasks. A task that panics or stops while it has work
/// is started again (after a delay that grows while it keeps failing),
/// logged at error and counted here; it is never gone unseen.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TaskStats {
    /// What it does: `export`, `import <filter>`, or
    /// `delivery-limit advisories`.
    pub name: String,
    /// Running now (false between a failure and its restart, and once the
    /// bridge or its bus shut down).
    pub alive: bool,
    /// Times it was started again.
    pub restarts: u64,
    /// Why it last stopped (a panic's message, or what ended), if it did.
    pub last_failure: Option<String>,
}

/// A running bridge. Stop it with [`shutdown`](Bridge::shutdown), from any
/// holder of a reference (share it in an `Arc` with a monitor task);
/// dropping it stops it at once, without sending what is queued.
#[derive(Debug)]
pub struct Bridge {
    shared: Arc<bridge::Shared>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Held by the shutdown in progress: a second, concurrent one waits
    /// for it.
    stopping: tokio::sync::Mutex<()>,
}

impl fmt::Debug for bridge::Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bridge")
            .field("prefix", &self.prefix)
            .field("instance", &self.instance)
            .finish()
    }
}

impl Bridge {
    /// Connects to NATS and starts bridging `bus`. Runs its tasks on the
    /// current tokio runtime.
    ///
    /// # Errors
    ///
    /// A typed [`BridgeError`] for an invalid prefix, glob or JetStream
    /// name, no globs at all, no server answering within the connect
    /// timeout, or a stream, consumer or subscription that could not be made.
    pub async fn start(bus: &Bus, config: BridgeConfig) -> Result<Bridge, BridgeError> {
        let running = bridge::start(bus, config).await?;
        Ok(Bridge {
            shared: running.shared,
            tasks: Mutex::new(running.tasks),
            stopping: tokio::sync::Mutex::new(()),
        })
    }

    /// This bridge's origin id.
    pub fn instance(&self) -> &str {
        &self.shared.instance
    }

    /// The counters now.
    pub fn stats(&self) -> BridgeStats {
        let c = &self.shared.counters;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        BridgeStats {
            exported: load(&c.exported),
            deduplicated: load(&c.deduplicated),
            imported: load(&c.imported),
            dropped: load(&self.shared.outbox.dropped) + self.shared.backlog_dropped(),
            reconnects: load(&c.connects).saturating_sub(1),
            client_side_reconnects: load(&c.client_side_reconnects),
            duplicates_dropped: load(&c.duplicates),
            echoes_skipped: load(&c.echoes),
            invalid: load(&c.invalid),
            unknown_version: load(&c.unknown_version),
            retried: load(&c.retried),
            slow_consumer: load(&c.slow_consumer),
            refused: load(&c.refused),
            undeliverable: load(&c.undeliverable),
            permission_errors: load(&c.permission_errors),
            oversized: load(&c.oversized),
            queued: self.shared.outbox.len() as u64,
            connected: self.shared.connected(),
            tasks: self.shared.tasks.lock().iter().map(|t| t.stats()).collect(),
        }
    }

    /// Waits until every event the local bus had dispatched to the export
    /// subscriptions before the call has been sent (core mode: written to
    /// the server; JetStream: acknowledged), or `timeout` passes. Returns
    /// whether it got there.
    pub async fn flush(&self, timeout: Duration) -> bool {
        let work = async {
            self.shared.bus.flush_async().await;
            self.shared.outbox.drained().await;
            self.shared.client.flush().await.is_ok()
        };
        tokio::time::timeout(timeout, work).await.unwrap_or(false)
    }

    /// Stops exporting, sends what is queued (for at most `timeout`), stops
    /// importing and closes the connection. Returns the events left unsent,
    /// which are counted as dropped. Takes `&self`, so a monitor task that
    /// shares the bridge can stop it; a call made while another runs waits
    /// for it to finish, and a later call finds nothing to do: both return 0.
    pub async fn shutdown(&self, timeout: Duration) -> u64 {
        let _stopping = self.stopping.lock().await;
        let tasks = std::mem::take(&mut *self.tasks.lock());
        if tasks.is_empty() {
            return 0;
        }
        let flushed = self.flush(timeout).await;
        self.shared.unsubscribe_exports();
        self.shared.closing.store(true, Ordering::SeqCst);
        for task in &tasks {
            task.abort();
        }
        // Wait until they are gone: a message a task held goes back to the
        // queue as the task is dropped, and is counted below.
        for task in tasks {
            let _ = task.await;
        }
        let left = self.shared.outbox.len() as u64;
        if !flushed {
            tracing::warn!(left, "bridge shut down before its queue was sent");
        }
        self.shared.outbox.dropped.fetch_add(left, Ordering::Relaxed);
        let _ = self.shared.client.drain().await;
        left
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.shared.closing.store(true, Ordering::SeqCst);
        self.shared.unsubscribe_exports();
        for task in self.tasks.get_mut().iter() {
            task.abort();
        }
    }
}

/// A panic payload's message, as `std` prints it.
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a payload that is not a string".to_owned()
    }
}
