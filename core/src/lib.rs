//! Switchboard: an embedded event bus for programs that host plugins.
//!
//! The bus engine lands in the next change; for now this crate re-exports
//! the pattern matcher every dispatch goes through.
//!
//! ```
//! use switchboard::matcher::Pattern;
//!
//! assert!(Pattern::new("trivia.*")?.is_match("trivia.started"));
//! # Ok::<(), switchboard::matcher::PatternError>(())
//! ```

pub use switchboard_matcher as matcher;
