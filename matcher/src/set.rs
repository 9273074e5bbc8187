//! Matching one name against many patterns at once.
//!
//! Patterns are sorted into buckets by shape when the set is built, the way
//! ripgrep's `globset` does, so that most of them are never looked at for a
//! name they cannot match:
//!
//! * **exact** — no wildcard at all: one hash lookup of the whole name;
//! * **dot-prefix** — a literal prefix with a dot in it (`plugin42.*`,
//!   `user7.?.login`): the prefix up to its last dot is a key of a hash
//!   table, looked up once per dot of the name, since a prefix that ends at
//!   a dot ends at one of the name's dots; `<prefix>.*` matches outright,
//!   anything else is verified with its own [`Pattern`];
//! * **dot-suffix** — no literal prefix, a literal suffix with a dot in it
//!   (`*.ended3`, `?.login`): the suffix from its first dot is a key, looked
//!   up once per dot of the name, and only for names whose last segment some
//!   key ends with (a small bitset decides); `*.<suffix>` matches outright;
//! * **anchored** — a literal prefix without a dot (`a9[0-9]*`): a
//!   compressed trie of the prefixes, walked once along the name;
//! * **tail-anchored** — no literal prefix, a literal suffix without a dot
//!   (`*ended3`): a compressed trie of the reversed suffixes, walked once
//!   backwards along the name;
//! * **floating** — a literal only in the middle (`*.ended*`, `?x?`): one
//!   Aho-Corasick automaton over each pattern's longest literal finds the
//!   candidates, which are then verified;
//! * **match-all** — only stars: every name matches;
//! * **residual** — no literal anywhere (`?*`, `[0-9]*`): verified one by one.
//!   These are rare in practice; their cost is the one that grows with their
//!   number.
//!
//! Verification uses the same linear matcher as [`Pattern::is_match`], so a
//! set can never disagree with a loop of patterns.
//!
//! The three hash tables are [`KeyTable`]s, and the keys of one name are
//! hashed in one pass over its words (see `keys.rs`). The lookups of one name
//! are batched: the control bytes of every lookup are read before any is
//! resolved, so that at 100k patterns, where the tables no longer fit in the
//! cache, the misses of one name overlap instead of queueing.

use std::fmt;
use std::sync::Arc;

use aho_corasick::{AhoCorasick, MatchKind};

use crate::error::PatternError;
use crate::keys::{self, group, KeyTable, SuffixGate};
use crate::pattern::Pattern;
use crate::trie::PrefixTrie;

/// A value stored in the trie: a pattern index, with the top bit set when
/// the pattern is `<prefix>*` and needs no verification.
type TrieValue = u32;
const PREFIX_STAR: u32 = 1 << 31;

/// The most patterns one set can hold.
pub const MAX_SET_LEN: usize = (PREFIX_STAR - 1) as usize;

/// A compiled, immutable index over many [`Pattern`]s.
///
/// Built once, then shared: `PatternSet` is `Send + Sync` and cloning it only
/// bumps a reference count. The cost of [`matches`](PatternSet::matches)
/// depends on the name and on how many patterns match it, not on how many
/// patterns the set holds (except for patterns with no literal character at
/// all, such as `?*`, which are checked one by one).
///
/// # Examples
///
/// ```
/// use switchboard_matcher::PatternSet;
///
/// let set = PatternSet::new(["trivia.*", "quote.added", "*"])?;
/// assert_eq!(set.matches("quote.added"), vec![1, 2]);
/// assert_eq!(set.matches("trivia.round.won"), vec![0, 2]);
///
/// let mut out = Vec::new();
/// set.matches_into("quote.removed", &mut out);
/// assert_eq!(out, vec![2]);
/// # Ok::<(), switchboard_matcher::PatternError>(())
/// ```
#[derive(Clone)]
pub struct PatternSet {
    inner: Arc<Inner>,
}

struct Inner {
    patterns: Vec<Pattern>,
    /// Whole-name literals, keyed by [`keys::whole_hash`].
    exact: KeyTable,
    /// Literal prefixes cut after their last dot, keyed like the prefixes
    /// [`keys::prefixes`] reports; the top bit marks `<prefix>.*`.
    dot_prefix: KeyTable,
    /// Literal suffixes cut before their first dot, keyed like the suffixes
    /// [`keys::suffixes`] reports; the top bit marks `*.<suffix>`.
    dot_suffix: KeyTable,
    /// Which names may end with a key of `dot_suffix`.
    suffix_gate: SuffixGate,
    /// Literal prefixes with no dot; the top bit marks `<prefix>*`.
    anchored: PrefixTrie<TrieValue>,
    /// Reversed literal suffixes with no dot; the top bit marks
    /// `*<literal>`.
    tail_anchored: PrefixTrie<TrieValue>,
    /// Floating patterns: the automaton's pattern `k` is a literal shared by
    /// the patterns `floating_ids[floating_ranges[k].0..floating_ranges[k].1]`.
    floating: Option<AhoCorasick>,
    floating_ranges: Vec<(u32, u32)>,
    floating_ids: Vec<u32>,
    match_all: Vec<u32>,
    residual: Vec<u32>,
}

impl PatternSet {
    /// Compiles every pattern of `patterns` and indexes them. Pattern `i` of
    /// the input is reported as index `i`.
    ///
    /// Building is linear in the total length of the patterns (plus sorting
    /// the literal prefixes).
    ///
    /// # Errors
    ///
    /// The first [`PatternError`] of any pattern, for example
    /// [`PatternError::TooLong`].
    ///
    /// # Panics
    ///
    /// When given more than [`MAX_SET_LEN`] patterns.
    pub fn new<I, S>(patterns: I) -> Result<PatternSet, PatternError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let patterns = patterns
            .into_iter()
            .map(|p| Pattern::new(p.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(PatternSet::from_patterns(patterns))
    }

    /// Indexes patterns that are already compiled. Pattern `i` of the input
    /// is reported as index `i`.
    ///
    /// # Panics
    ///
    /// When given more than [`MAX_SET_LEN`] patterns.
    pub fn from_patterns<I: IntoIterator<Item = Pattern>>(patterns: I) -> PatternSet {
        let patterns: Vec<Pattern> = patterns.into_iter().collect();
        assert!(patterns.len() <= MAX_SET_LEN, "a PatternSet holds at most {MAX_SET_LEN} patterns");

        let mut exact = Vec::new();
        let mut dot_prefix = Vec::new();
        let mut dot_suffix = Vec::new();
        let mut anchored: Vec<(&[u8], TrieValue)> = Vec::new();
        let mut reversed_suffixes: Vec<(Vec<u8>, TrieValue)> = Vec::new();
        let mut floating_pairs: Vec<(&[u8], u32)> = Vec::new();
        let mut match_all = Vec::new();
        let mut residual = Vec::new();
        for (i, pattern) in patterns.iter().enumerate() {
            let i = i as u32;
            let shape = pattern.shape();
            let prefix = shape.literal_prefix();
            let suffix = shape.literal_suffix();
            if let Some(lit) = shape.exact_literal() {
                exact.push((lit, i | PREFIX_STAR));
            } else if shape.is_match_all() {
                match_all.push(i);
            } else if let Some(last_dot) = memchr::memrchr(b'.', prefix) {
                // Only `<prefix>.*` itself needs no verifying: the key is
                // then its whole literal prefix.
                let key = &prefix[..=last_dot];
                let whole = shape.is_prefix_star() && key.len() == prefix.len();
                let flag = if whole { PREFIX_STAR } else { 0 };
                dot_prefix.push((key, i | flag));
            } else if !prefix.is_empty() {
                let flag = if shape.is_prefix_star() { PREFIX_STAR } else { 0 };
                anchored.push((prefix, i | flag));
            } else if let Some(first_dot) = memchr::memchr(b'.', suffix) {
                let key = &suffix[first_dot..];
                let whole = shape.is_star_suffix() && first_dot == 0;
                let flag = if whole { PREFIX_STAR } else { 0 };
                dot_suffix.push((key, i | flag));
            } else if !suffix.is_empty() {
                let flag = if shape.is_star_suffix() { PREFIX_STAR } else { 0 };
                let reversed: Vec<u8> = suffix.iter().rev().copied().collect();
                reversed_suffixes.push((reversed, i | flag));
            } else if let Some(lit) = shape.required_literal() {
                floating_pairs.push((lit, i));
            } else if !matches!(shape, crate::pattern::Shape::Never) {
                residual.push(i);
            }
        }

        let (floating_groups, floating_ids) = group(floating_pairs);
        let mut floating = None;
        let mut floating_ranges = Vec::new();
        if !floating_groups.is_empty() {
            let literals: Vec<&[u8]> = floating_groups.iter().map(|(k, _)| *k).collect();
            match AhoCorasick::builder().match_kind(MatchKind::Standard).build(&literals) {
                Ok(ac) => {
                    floating = Some(ac);
                    floating_ranges = floating_groups.iter().map(|(_, r)| *r).collect();
                }
                // Too large for one automaton: still correct, just slower.
                Err(_) => {
                    residual.extend_from_slice(&floating_ids);
                    residual.sort_unstable();
                }
            }
        }
        let floating_ids = if floating.is_some() { floating_ids } else { Vec::new() };

        let tail_anchored =
            PrefixTrie::new(reversed_suffixes.iter().map(|(k, v)| (&k[..], *v)).collect());
        let exact = KeyTable::new(exact, keys::whole_hash);
        let dot_prefix = KeyTable::new(dot_prefix, keys::whole_hash);
        let suffix_gate = SuffixGate::new(dot_suffix.iter().map(|e| e.0));
        let dot_suffix = KeyTable::new(dot_suffix, keys::suffix_hash);
        let anchored = PrefixTrie::new(anchored);
        let inner = Inner {
            anchored,
            tail_anchored,
            patterns,
            exact,
            dot_prefix,
            dot_suffix,
            suffix_gate,
            floating,
            floating_ranges,
            floating_ids,
            match_all,
            residual,
        };
        PatternSet { inner: Arc::new(inner) }
    }

    /// A set with no pattern.
    pub fn empty() -> PatternSet {
        PatternSet::from_patterns(Vec::new())
    }

    /// How many patterns the set holds.
    pub fn len(&self) -> usize {
        self.inner.patterns.len()
    }

    /// Whether the set holds no pattern.
    pub fn is_empty(&self) -> bool {
        self.inner.patterns.is_empty()
    }

    /// The patterns, in the order they were given.
    pub fn patterns(&self) -> &[Pattern] {
        &self.inner.patterns
    }

    /// The indices of the patterns that match `name`, ascending, each once.
    pub fn matches(&self, name: &str) -> Vec<usize> {
        let mut out = Vec::new();
        self.matches_into(name, &mut out);
        out
    }

    /// Like [`matches`](PatternSet::matches), into a vector the caller
    /// reuses. `out` is cleared first.
    pub fn matches_into(&self, name: &str, out: &mut Vec<usize>) {
        out.clear();
        let inner = &*self.inner;
        let bytes = name.as_bytes();
        // The dot-aligned keys first, looked up in batches.
        let mut lookups = Lookups { inner, name, hashes: [0; BATCH], lens: [0; BATCH], len: 0 };
        let mut last_dot = None;
        let whole = keys::prefixes(bytes, |len, hash| {
            last_dot = Some(len - 1);
            if !inner.dot_prefix.is_empty() {
                lookups.push(PREFIX, len, hash, out);
            }
        });
        if !inner.exact.is_empty() {
            lookups.push(EXACT, bytes.len(), whole, out);
        }
        match last_dot {
            Some(dot) if inner.suffix_gate.may_pass(bytes, dot) => {
                keys::suffixes(bytes, |start, hash| {
                    lookups.push(SUFFIX, bytes.len() - start, hash, out);
                });
            }
            _ => {}
        }
        lookups.flush(out);

        let mut verify = |v: TrieValue| verify(inner, name, v, out);
        if !inner.anchored.is_empty() {
            inner.anchored.for_each_prefix(bytes, &mut verify);
        }
        if !inner.tail_anchored.is_empty() {
            inner.tail_anchored.for_each_reversed_suffix(bytes, &mut verify);
        }
        if let Some(ac) = &inner.floating {
            for m in ac.find_overlapping_iter(bytes) {
                let (start, end) = inner.floating_ranges[m.pattern().as_usize()];
                inner.floating_ids[start as usize..end as usize].iter().for_each(|&i| verify(i));
            }
        }
        inner.residual.iter().for_each(|&i| verify(i));
        out.extend(inner.match_all.iter().map(|&i| i as usize));
        if out.len() > 1 && out.windows(2).any(|w| w[0] >= w[1]) {
            out.sort_unstable();
            out.dedup();
        }
    }

    /// Whether any pattern matches `name`.
    pub fn is_match(&self, name: &str) -> bool {
        if !self.inner.match_all.is_empty() {
            return true;
        }
        let mut out = Vec::new();
        self.matches_into(name, &mut out);
        !out.is_empty()
    }
}

/// Pushes pattern `v & !PREFIX_STAR` onto `out` if it matches `name`: at
/// once when `v` has the `PREFIX_STAR` bit, which says the bucket that
/// found it has decided already.
#[inline(always)]
fn verify(inner: &Inner, name: &str, v: TrieValue, out: &mut Vec<usize>) {
    let i = (v & !PREFIX_STAR) as usize;
    if v & PREFIX_STAR != 0 || inner.patterns[i].is_match(name) {
        out.push(i);
    }
}

/// How many key lookups are batched: enough for a name with a few dots.
const BATCH: usize = 8;

/// Which table a lookup goes to: the index in [`Lookups::flush`]'s
/// `tables`.
const EXACT: u32 = 0;
const PREFIX: u32 = 1;
const SUFFIX: u32 = 2;

/// The lookups of one name's dot-aligned keys, gathered so that the cache
/// misses of a batch overlap: each lookup's first control byte is read for
/// the whole batch before any is resolved, which would otherwise wait for
/// one miss after another behind branches the CPU cannot predict.
///
/// Lookup `k` is of the `lens[k] & LEN_MASK` first (`PREFIX`), last
/// (`SUFFIX`) or all (`EXACT`) bytes of the name, the kind in the bits
/// above; its hash is `hashes[k]`.
struct Lookups<'a> {
    inner: &'a Inner,
    name: &'a str,
    hashes: [u64; BATCH],
    lens: [u32; BATCH],
    len: usize,
}

const LEN_MASK: u32 = (1 << 16) - 1;
const _: () = assert!(keys::MAX_KEY_LEN <= LEN_MASK as usize);

impl Lookups<'_> {
    /// Adds a lookup of a `len`-byte key; resolves the batch when it is
    /// full. Keys longer than any table holds are not looked up.
    #[inline(always)]
    fn push(&mut self, kind: u32, len: usize, hash: u64, out: &mut Vec<usize>) {
        if len > keys::MAX_KEY_LEN {
            return;
        }
        self.hashes[self.len] = hash;
        self.lens[self.len] = len as u32 | kind << 16;
        self.len += 1;
        if self.len == BATCH {
            self.flush(out);
        }
    }

    /// Resolves the lookups gathered so far.
    #[inline(always)]
    fn flush(&mut self, out: &mut Vec<usize>) {
        let n = self.len;
        self.len = 0;
        let inner = self.inner;
        let tables = [&inner.exact, &inner.dot_prefix, &inner.dot_suffix];
        let table = |packed: u32| tables[(packed >> 16) as usize];
        let mut may = [false; BATCH];
        for (k, may) in may[..n].iter_mut().enumerate() {
            *may = table(self.lens[k]).may_hold(self.hashes[k]);
        }
        let bytes = self.name.as_bytes();
        for (k, _) in may[..n].iter().enumerate().filter(|(_, &may)| may) {
            let len = (self.lens[k] & LEN_MASK) as usize;
            let key = match self.lens[k] >> 16 {
                EXACT => bytes,
                PREFIX => &bytes[..len],
                _ => &bytes[bytes.len() - len..],
            };
            for &v in table(self.lens[k]).get(self.hashes[k], key) {
                verify(inner, self.name, v, out);
            }
        }
    }
}

impl Default for PatternSet {
    fn default() -> PatternSet {
        PatternSet::empty()
    }
}

impl fmt::Debug for PatternSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PatternSet")
            .field("len", &self.len())
            .field("exact", &self.inner.exact.len())
            .field("floating", &self.inner.floating_ids.len())
            .field("match_all", &self.inner.match_all.len())
            .field("residual", &self.inner.residual.len())
            .finish_non_exhaustive()
    }
}
