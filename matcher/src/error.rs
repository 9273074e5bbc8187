//! The error returned when a string cannot be compiled into a pattern.

use std::fmt;

/// The longest pattern, in bytes of UTF-8, that [`Pattern::new`](crate::Pattern::new) accepts.
///
/// fnmatch itself has no limit. Switchboard sets one so that the cost of
/// matching, which is at most proportional to `|name| * |pattern|`, stays
/// bounded for every pattern a plugin can register.
pub const MAX_PATTERN_LEN: usize = 4096;

/// Why a string could not be compiled into a [`Pattern`](crate::Pattern).
///
/// Every string up to [`MAX_PATTERN_LEN`] bytes is a valid fnmatch pattern,
/// so the only error today is length; the enum is non-exhaustive so that
/// later limits can be added without breaking callers.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PatternError {
    /// The pattern is longer than [`MAX_PATTERN_LEN`] bytes.
    TooLong {
        /// The length of the rejected pattern, in bytes.
        len: usize,
        /// The limit it exceeded.
        max: usize,
    },
}

impl fmt::Display for PatternError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PatternError::TooLong { len, max } => {
                write!(f, "pattern is {len} bytes long, more than the limit of {max}")
            }
        }
    }
}

impl std::error::Error for PatternError {}
