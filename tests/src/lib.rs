//! Cross-crate integration tests for Switchboard live in `tests/`.

// The README's examples span the workspace's crates (the bus, the matcher,
// the plugins, the NATS bridge), so they are compiled and run here.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;
