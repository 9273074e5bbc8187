//! One compiled pattern and its linear-time matcher.
//!
//! A pattern is split at its stars into segments, each a run of tokens that
//! match exactly one character (`a`, `?`, `[a-z]`). With the segments
//! `S0 * S1 * … * Sn`, a name matches when `S0` matches at its start, `Sn`
//! matches at its end, and `S1 … Sn-1` occur in order in between. Taking the
//! leftmost occurrence of each middle segment is always right (a later one
//! can only leave less room for the rest), so no backtracking is needed: the
//! cost is at most `O(|name| * |pattern|)`, and `O(|name|)` for the common
//! shapes (literal segments are found with `memchr::memmem`).

use std::fmt;
use std::sync::Arc;

use memchr::memmem;

use crate::error::{PatternError, MAX_PATTERN_LEN};
use crate::parse::{tokenize, Class, Token};

/// One step of a segment. Every step matches a fixed number of characters.
#[derive(Clone, Debug)]
enum Step {
    /// These exact bytes (one or more whole characters).
    Literal(Box<[u8]>),
    /// Any one character.
    AnyChar,
    /// One character of a bracket expression (boxed: a class is large and
    /// rare, and every other step stays 24 bytes).
    Class(Box<Class>),
}

/// A run of steps between two stars (or a pattern end).
#[derive(Clone, Debug, Default)]
pub(crate) struct Segment {
    steps: Vec<Step>,
    /// How many characters the segment matches.
    chars: usize,
}

impl Segment {
    /// Appends literal characters (merged with a literal step before them).
    fn push_literal(&mut self, text: &str) {
        if text.is_empty() {
            return;
        }
        if let Some(Step::Literal(lit)) = self.steps.last_mut() {
            let mut v = std::mem::take(lit).into_vec();
            v.extend_from_slice(text.as_bytes());
            *lit = v.into_boxed_slice();
        } else {
            self.steps.push(Step::Literal(text.as_bytes().into()));
        }
        self.chars += text.chars().count();
    }

    fn push(&mut self, step: Step) {
        self.steps.push(step);
        self.chars += 1;
    }

    /// The segment as a literal string, when it has no `?` or class.
    fn as_literal(&self) -> Option<&[u8]> {
        match self.steps.as_slice() {
            [] => Some(&[]),
            [Step::Literal(lit)] => Some(lit),
            _ => None,
        }
    }

    /// The longest literal step in the segment.
    fn longest_literal(&self) -> Option<&[u8]> {
        self.steps
            .iter()
            .filter_map(|s| match s {
                Step::Literal(l) => Some(&**l),
                _ => None,
            })
            .max_by_key(|l| l.len())
    }

    /// Matches the segment at byte offset `at` of `name`; returns the offset
    /// just past it. `at` must be a character boundary.
    #[inline]
    fn match_at(&self, name: &str, mut at: usize) -> Option<usize> {
        let bytes = name.as_bytes();
        for step in &self.steps {
            match step {
                Step::Literal(lit) => {
                    if !crate::bytes::starts_with(&bytes[at..], lit) {
                        return None;
                    }
                    at += lit.len();
                }
                Step::AnyChar => at += next_char(name, at)?.len_utf8(),
                Step::Class(class) => {
                    let c = next_char(name, at)?;
                    if !class.matches(c) {
                        return None;
                    }
                    at += c.len_utf8();
                }
            }
        }
        Some(at)
    }

    /// Finds the leftmost occurrence of the segment at or after `from`;
    /// returns the offset just past it.
    fn find(&self, name: &str, from: usize) -> Option<usize> {
        let bytes = name.as_bytes();
        match self.steps.first() {
            None => Some(from),
            Some(Step::Literal(lit)) => {
                let finder = memmem::Finder::new(lit);
                let mut start = from;
                while let Some(found) = finder.find(&bytes[start..]) {
                    let at = start + found;
                    if let Some(end) = self.match_at(name, at) {
                        return Some(end);
                    }
                    // The literal starts with a whole character, so the next
                    // candidate is at least one character further on.
                    start = at + next_char(name, at).map_or(1, char::len_utf8);
                }
                None
            }
            Some(_) => {
                let mut at = from;
                loop {
                    if let Some(end) = self.match_at(name, at) {
                        return Some(end);
                    }
                    at += next_char(name, at)?.len_utf8();
                }
            }
        }
    }
}

#[inline]
fn next_char(name: &str, at: usize) -> Option<char> {
    name.get(at..).and_then(|rest| rest.chars().next())
}

/// The byte offset `chars` characters before the end of `name`, if there are
/// that many.
#[inline]
fn offset_from_end(name: &str, chars: usize) -> Option<usize> {
    if chars == 0 {
        return Some(name.len());
    }
    name.char_indices().rev().nth(chars - 1).map(|(i, _)| i)
}

/// How a compiled pattern decides a match.
#[derive(Clone, Debug)]
pub(crate) enum Shape {
    /// A bracket expression with an empty set: nothing matches.
    Never,
    /// No star: the single segment must match the whole name.
    Exact(Segment),
    /// At least one star: head, middles in order, tail.
    Starred { head: Segment, middles: Vec<Segment>, tail: Segment },
}

/// A compiled fnmatch pattern with Python's `fnmatch.fnmatchcase` semantics.
///
/// `*` matches any run of characters (dots included), `?` any one character,
/// `[seq]` / `[!seq]` one character in / not in a set; there is no escape
/// character and matching is case-sensitive. See the crate documentation for
/// the full rules.
///
/// Cloning is cheap: the compiled form is shared.
///
/// # Examples
///
/// ```
/// use switchboard_matcher::Pattern;
///
/// let p = Pattern::new("trivia.*")?;
/// assert!(p.is_match("trivia.round.won"));
/// assert!(!p.is_match("quote.added"));
/// assert_eq!(p.as_str(), "trivia.*");
/// # Ok::<(), switchboard_matcher::PatternError>(())
/// ```
#[derive(Clone)]
pub struct Pattern {
    inner: Arc<Inner>,
}

struct Inner {
    source: Box<str>,
    shape: Shape,
}

impl Pattern {
    /// Compiles `pattern`.
    ///
    /// # Errors
    ///
    /// [`PatternError::TooLong`] when `pattern` is longer than
    /// [`MAX_PATTERN_LEN`] bytes. Every shorter string is a valid pattern.
    pub fn new(pattern: &str) -> Result<Pattern, PatternError> {
        if pattern.len() > MAX_PATTERN_LEN {
            return Err(PatternError::TooLong { len: pattern.len(), max: MAX_PATTERN_LEN });
        }
        let shape = compile(&tokenize(pattern));
        Ok(Pattern { inner: Arc::new(Inner { source: pattern.into(), shape }) })
    }

    /// The pattern as it was written.
    pub fn as_str(&self) -> &str {
        &self.inner.source
    }

    /// Whether `name` matches the whole pattern, as
    /// `fnmatch.fnmatchcase(name, pattern)` would answer.
    ///
    /// # Examples
    ///
    /// ```
    /// use switchboard_matcher::Pattern;
    ///
    /// assert!(Pattern::new("user.?.login")?.is_match("user...login"));
    /// assert!(Pattern::new("[!x]")?.is_match("."));
    /// assert!(!Pattern::new("[d-b]")?.is_match("c"));
    /// # Ok::<(), switchboard_matcher::PatternError>(())
    /// ```
    #[inline]
    pub fn is_match(&self, name: &str) -> bool {
        match &self.inner.shape {
            Shape::Never => false,
            Shape::Exact(seg) => seg.match_at(name, 0) == Some(name.len()),
            Shape::Starred { head, middles, tail } => {
                let Some(mut at) = head.match_at(name, 0) else { return false };
                for middle in middles {
                    match middle.find(name, at) {
                        Some(end) => at = end,
                        None => return false,
                    }
                }
                match offset_from_end(name, tail.chars) {
                    Some(start) if start >= at => tail.match_at(name, start) == Some(name.len()),
                    _ => false,
                }
            }
        }
    }

    pub(crate) fn shape(&self) -> &Shape {
        &self.inner.shape
    }
}

impl Shape {
    /// The literal the pattern is, when it has no wildcard at all.
    pub(crate) fn exact_literal(&self) -> Option<&[u8]> {
        match self {
            Shape::Exact(seg) => seg.as_literal(),
            _ => None,
        }
    }

    /// The literal every match starts with (possibly empty).
    pub(crate) fn literal_prefix(&self) -> &[u8] {
        let head = match self {
            Shape::Never => return &[],
            Shape::Exact(seg) => seg,
            Shape::Starred { head, .. } => head,
        };
        match head.steps.first() {
            Some(Step::Literal(lit)) => lit,
            _ => &[],
        }
    }

    /// The literal every match ends with (possibly empty).
    pub(crate) fn literal_suffix(&self) -> &[u8] {
        let tail = match self {
            Shape::Never => return &[],
            Shape::Exact(seg) => seg,
            Shape::Starred { tail, .. } => tail,
        };
        match tail.steps.last() {
            Some(Step::Literal(lit)) => lit,
            _ => &[],
        }
    }

    /// Whether the pattern is `*<literal>`: every name with the literal
    /// suffix matches.
    pub(crate) fn is_star_suffix(&self) -> bool {
        match self {
            Shape::Starred { head, middles, tail } => {
                head.steps.is_empty() && middles.is_empty() && tail.as_literal().is_some()
            }
            _ => false,
        }
    }

    /// Whether the pattern is `<literal>*`: every name with the literal
    /// prefix matches.
    pub(crate) fn is_prefix_star(&self) -> bool {
        match self {
            Shape::Starred { head, middles, tail } => {
                middles.is_empty() && tail.steps.is_empty() && head.as_literal().is_some()
            }
            _ => false,
        }
    }

    /// Whether the pattern is only stars: it matches every name.
    pub(crate) fn is_match_all(&self) -> bool {
        match self {
            Shape::Starred { head, middles, tail } => {
                head.steps.is_empty() && middles.is_empty() && tail.steps.is_empty()
            }
            _ => false,
        }
    }

    /// The longest literal every match must contain, if any.
    pub(crate) fn required_literal(&self) -> Option<&[u8]> {
        let segments: Vec<&Segment> = match self {
            Shape::Never => return None,
            Shape::Exact(seg) => vec![seg],
            Shape::Starred { head, middles, tail } => {
                std::iter::once(head).chain(middles).chain(std::iter::once(tail)).collect()
            }
        };
        segments.into_iter().filter_map(Segment::longest_literal).max_by_key(|l| l.len())
    }
}

fn compile(tokens: &[Token]) -> Shape {
    let mut segments = vec![Segment::default()];
    let mut literal = String::new();
    let mut starred = false;
    for token in tokens {
        let step = match token {
            Token::Literal(c) => {
                literal.push(*c);
                continue;
            }
            Token::AnyChar => Some(Step::AnyChar),
            Token::Class(class) => Some(Step::Class(Box::new(class.clone()))),
            Token::Never => return Shape::Never,
            Token::Star => None,
        };
        let seg = segments.last_mut().expect("segments is never empty");
        seg.push_literal(&literal);
        literal.clear();
        match step {
            Some(step) => seg.push(step),
            None => {
                starred = true;
                segments.push(Segment::default());
            }
        }
    }
    segments.last_mut().expect("segments is never empty").push_literal(&literal);
    // Compiled once and kept as long as the pattern: no spare capacity.
    for seg in &mut segments {
        seg.steps.shrink_to_fit();
    }
    if !starred {
        return Shape::Exact(segments.pop().expect("one segment"));
    }
    let tail = segments.pop().expect("two segments");
    let mut rest = segments.into_iter();
    let head = rest.next().expect("two segments");
    let mut middles: Vec<Segment> = rest.collect();
    middles.shrink_to_fit();
    Shape::Starred { head, middles, tail }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Pattern").field(&self.as_str()).finish()
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Pattern) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Pattern {}

impl std::hash::Hash for Pattern {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl std::str::FromStr for Pattern {
    type Err = PatternError;

    fn from_str(s: &str) -> Result<Pattern, PatternError> {
        Pattern::new(s)
    }
}

impl TryFrom<&str> for Pattern {
    type Error = PatternError;

    fn try_from(s: &str) -> Result<Pattern, PatternError> {
        Pattern::new(s)
    }
}
