//! The integration tests in one test binary: linking a dozen binaries
//! against the whole workspace cost more than compiling the tests did.
//! `alloc.rs` (a counting global allocator), `logging.rs` and
//! `dispatch_spans.rs` (process-wide `tracing` subscribers) stay binaries of
//! their own.
//!
//! Each file is a module named after it, so `cargo test --test integration
//! edges::` runs what `--test edges` ran. Each is loaded by `#[path]`, so its
//! own `mod support;` finds `support/mod.rs` beside it, as it did when every
//! file was a binary: every module keeps a private copy of the support
//! module, which is what clippy's `duplicate_mod` is about.
#![allow(clippy::duplicate_mod)]

#[path = "async_lossless.rs"]
mod async_lossless;
#[path = "asynchronous.rs"]
mod asynchronous;
#[path = "bus.rs"]
mod bus;
#[path = "causality.rs"]
mod causality;
#[path = "edges.rs"]
mod edges;
#[path = "lifecycle.rs"]
mod lifecycle;
#[path = "lossless.rs"]
mod lossless;
#[path = "observe.rs"]
mod observe;
#[path = "ordered.rs"]
mod ordered;
#[path = "plugin_edges.rs"]
mod plugin_edges;
#[path = "plugins.rs"]
mod plugins;
#[path = "reentry.rs"]
mod reentry;
#[path = "runners.rs"]
mod runners;
#[path = "seam.rs"]
mod seam;
#[path = "seed_plugins.rs"]
mod seed_plugins;
#[path = "stress.rs"]
mod stress;
