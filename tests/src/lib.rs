//! Cross-crate integration tests for Switchboard live in `tests/`.
