//! Switchboard: an embedded, lock-free, high-throughput event bus for
//! programs that host plugins.
//!
//! Plugins publish named events carrying data; other plugins subscribe with
//! fnmatch globs (`trivia.*`, `*`) and are called by a pool of worker
//! threads, without the publisher waiting.
//!
//! ```
//! use serde_json::json;
//! use switchboard::{Bus, Event, Handler, HistoryQuery, Priority};
//!
//! let bus = Bus::builder().workers(2).history_size(100).build()?;
//! let stats = Handler::sync(|event: &Event| {
//!     assert!(event.name().starts_with("trivia."));
//!     Ok(())
//! });
//! bus.subscribe("trivia.*", stats, "stats")?;
//! bus.publish(
//!     Event::new("trivia.started", json!({"question": "2+2?"}), "trivia")
//!         .with_priority(Priority::High),
//! )?;
//! bus.flush(); // every event published before this has been dispatched
//! assert_eq!(bus.stats().dispatched, 1);
//! assert_eq!(bus.history(HistoryQuery::new().last(10).matching("trivia.*"))?.len(), 1);
//! bus.shutdown();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Guarantees
//!
//! * No handler runs while the bus holds a lock: handlers may publish,
//!   subscribe and unsubscribe freely.
//! * Once [`Bus::unsubscribe`] returns, the handler is never started again;
//!   [`Unsubscribed::wait`] also waits for running calls. A removed
//!   handler is dropped exactly once, outside every lock of the bus: at once
//!   when no call of it runs, else when its worker finishes the batch.
//! * A handler's `Err` or panic is counted, logged, passed to the error
//!   hook, and never stops other handlers or the worker.
//! * Nothing is lost silently: every event is dispatched, given back to the
//!   publisher in a [`PublishError`], or counted in [`Stats::dropped`] (only
//!   under [`Overflow::Shed`]).
//! * Events published from inside handlers are queued, never run nested.
//! * A subscription made [`ordered`](SubscribeOptions::ordered) never runs
//!   concurrently with itself and sees each publishing thread's events in
//!   publish order. [`blocking`](SubscribeOptions::blocking) ones run on
//!   threads of their own, and async ones (feature `tokio`,
//!   `Handler::future`) as tasks on a tokio runtime: neither ever
//!   holds a dispatch worker. Their backlog is bounded; what overflows is
//!   counted ([`Stats::backlog_dropped`]).
//! * With several workers, events are dispatched in parallel: there is no
//!   order between events taken by different workers. With one worker,
//!   events of one priority are dispatched in publish order, handler-published
//!   ones included.
//! * [`Bus::history`] is in publish order, and an event is in it before any
//!   handler sees it.
//! * An event published from a handler, of any kind, names the event being
//!   handled as its [`parent`](Event::parent) (a [`Cause`]);
//!   [`HistoryQuery::caused_by`] walks the cascade an event started, and
//!   [`BusBuilder::trace_dispatch`] links each handler call's `tracing`
//!   span to the span its event was published in.
//! * Every caller of [`Bus::shutdown`] returns after the drain and the join;
//!   [`Bus::flush_timeout`], [`Unsubscribed::wait_timeout`] and
//!   [`Bus::shutdown_timeout`] bound their waits.
//!
//! # Cargo features
//!
//! | Feature | Default | What it adds |
//! |---------|---------|--------------|
//! | `tokio` | off | async handlers (`Handler::future`), run as tasks on a tokio runtime; `Bus::publish_async`, `flush_async`, `shutdown_async` and `run_blocking`, which wait without blocking a runtime thread; `BusBuilder::runtime` |
//!
//! The plugin host is the crate `switchboard-host`; the bridge to NATS,
//! `switchboard-nats`.
//!
//! The pattern matcher is re-exported as [`matcher`].

#![cfg_attr(docsrs, feature(doc_cfg))]

pub use switchboard_matcher as matcher;

// The layers, top down; every import points down, but the one pair
// `bus` <-> `builder` (the handle and what starts it):
//   bus/, builder          the public handle, one file per job
//   dispatch/              the worker loop and the runners (pool, threads, tokio)
//   shared                 the state a bus's handles and workers share
//   wait, reclaim, snapshot, subscription, mailbox
//   config, context, handler, panic, gate, history, flush, queue, barrier,
//   stats, observe, trace, event, error, loom
mod barrier;
mod builder;
mod bus;
mod config;
mod context;
mod dispatch;
mod error;
mod event;
mod flush;
mod gate;
mod handler;
mod history;
mod loom;
mod mailbox;
mod observe;
mod panic;
mod queue;
mod reclaim;
mod shared;
mod snapshot;
mod stats;
mod subscription;
mod trace;
mod wait;

#[cfg(all(test, loom))]
mod loom_tests;

pub use crate::builder::BusBuilder;
pub use crate::bus::{
    Bus, HistoryQuery, Replayed, SubscriptionGuard, SubscriptionInfo, Target, Unsubscribed, WeakBus,
};
pub use crate::config::ErrorHook;
pub use crate::error::{
    BacklogFull, BuildError, FlushTimeout, HandlerPanic, HandlerTimeout, HistoryError, NameError,
    PayloadError, PublishError, ShutdownTimeout, SubscribeError, WaitTimeout, MAX_NAME_LEN,
};
pub use crate::event::{Cause, Event, EventId, Payload, Priority, TypedPayload};
pub use crate::handler::{Handler, HandlerResult};
pub use crate::observe::{CallObserver, Observer, Subscribed};
pub use crate::queue::Overflow;
pub use crate::stats::{Stats, SubscriptionStats};
pub use crate::subscription::{SubscribeOptions, SubscriptionId};
