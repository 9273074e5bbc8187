//! Glob patterns with the exact semantics of Python's `fnmatch.fnmatchcase`,
//! and a precompiled index that matches one name against many of them at
//! once.
//!
//! ```
//! use switchboard_matcher::{Pattern, PatternSet};
//!
//! let p = Pattern::new("trivia.*")?;
//! assert!(p.is_match("trivia.round.won")); // '*' crosses dots
//! assert_eq!(p.as_str(), "trivia.*");
//!
//! let set = PatternSet::new(["trivia.*", "quote.added", "*"])?;
//! assert_eq!(set.matches("quote.added"), vec![1, 2]);
//! # Ok::<(), switchboard_matcher::PatternError>(())
//! ```
//!
//! # Semantics
//!
//! The answers are CPython's, to the letter (a committed fixture generated
//! by CPython itself checks them):
//!
//! * `*` matches any run of characters, the empty run and `.` included:
//!   `trivia.*` matches `trivia.`, `trivia.started` and `trivia.round.won`.
//!   `**` is just `*`.
//! * `?` matches exactly one character (a Unicode scalar value), `.` included.
//! * `[seq]` matches one character of the set, `[!seq]` one character not in
//!   it. Only `!` negates: `[^a]` is a set holding `^` and `a`. A `]` first in
//!   the set is literal (`[]]`, `[!]]`). `a-z` is a range; a reversed range
//!   such as `[d-b]` matches nothing, so `[!d-b]` matches any character; a `-`
//!   first or last is literal.
//! * A `[` that is never closed is a literal `[`: `[`, `[a`, `[!]` and `[]`
//!   match themselves.
//! * There is no escape character: `\` is an ordinary character.
//! * Matching is case-sensitive and always covers the whole name.
//!
//! Patterns longer than [`MAX_PATTERN_LEN`] bytes are refused with
//! [`PatternError::TooLong`]; every other string is a valid pattern.
//!
//! # Cost
//!
//! [`Pattern::is_match`] never backtracks: it costs at most
//! `O(|name| * |pattern|)` and is linear in the name for the usual shapes.
//! [`PatternSet::matches`] sorts patterns into buckets (exact names in a
//! hash table; literal prefixes and suffixes that meet a dot in hash tables
//! probed once per dot of the name; other prefixes and suffixes in tries;
//! other literals in one Aho-Corasick automaton), so its cost does not grow
//! with the number of patterns.

pub mod reference;

mod bytes;
mod error;
mod keys;
mod parse;
mod pattern;
mod set;
mod trie;

pub use crate::error::{PatternError, MAX_PATTERN_LEN};
pub use crate::pattern::Pattern;
pub use crate::set::{PatternSet, MAX_SET_LEN};

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync + Clone + 'static>() {}

    #[test]
    fn public_types_are_send_sync() {
        assert_send_sync::<Pattern>();
        assert_send_sync::<PatternSet>();
        assert_send_sync::<PatternError>();
    }
}
