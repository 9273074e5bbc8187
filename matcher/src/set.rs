//! Matching one name against many patterns at once.
//!
//! Patterns are sorted into buckets by shape when the set is built, the way
//! ripgrep's `globset` does, so that most of them are never looked at for a
//! name they cannot match:
//!
//! * **exact** — no wildcard at all: one hash lookup of the whole name;
//! * **anchored** — a literal prefix (`plugin42.*`, `a9[0-9]*`): a compressed
//!   trie of the prefixes, walked once along the name; `<literal>*` matches
//!   outright, anything else is verified with its own [`Pattern`];
//! * **tail-anchored** — no literal prefix but a literal suffix (`*.ended3`,
//!   `?.login`): a compressed trie of the reversed suffixes, walked once
//!   backwards along the name; `*<literal>` matches outright, anything else
//!   is verified;
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

use std::fmt;
use std::sync::Arc;

use aho_corasick::{AhoCorasick, MatchKind};
use hashbrown::HashTable;
use rustc_hash::FxHasher;

use crate::error::PatternError;
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
    /// Whole-name literals: `(key start, key end, ids start, ids end)`, the
    /// key in `exact_keys`, the ids in `exact_ids`. A raw table so that the
    /// key comparison is ours (inline for short keys, no `memcmp` call).
    exact: HashTable<(u32, u32, u32, u32)>,
    exact_keys: Vec<u8>,
    exact_ids: Vec<u32>,
    anchored: PrefixTrie<TrieValue>,
    /// Reversed literal suffixes; the top bit marks `*<literal>`.
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

        let mut exact_pairs: Vec<(&[u8], u32)> = Vec::new();
        let mut anchored: Vec<(&[u8], TrieValue)> = Vec::new();
        let mut reversed_suffixes: Vec<(Vec<u8>, TrieValue)> = Vec::new();
        let mut floating_pairs: Vec<(&[u8], u32)> = Vec::new();
        let mut match_all = Vec::new();
        let mut residual = Vec::new();
        for (i, pattern) in patterns.iter().enumerate() {
            let i = i as u32;
            let shape = pattern.shape();
            if let Some(lit) = shape.exact_literal() {
                exact_pairs.push((lit, i));
            } else if shape.is_match_all() {
                match_all.push(i);
            } else if !shape.literal_prefix().is_empty() {
                let flag = if shape.is_prefix_star() { PREFIX_STAR } else { 0 };
                anchored.push((shape.literal_prefix(), i | flag));
            } else if !shape.literal_suffix().is_empty() {
                let flag = if shape.is_star_suffix() { PREFIX_STAR } else { 0 };
                let reversed: Vec<u8> = shape.literal_suffix().iter().rev().copied().collect();
                reversed_suffixes.push((reversed, i | flag));
            } else if let Some(lit) = shape.required_literal() {
                floating_pairs.push((lit, i));
            } else if !matches!(shape, crate::pattern::Shape::Never) {
                residual.push(i);
            }
        }

        let (exact_groups, exact_ids) = group(exact_pairs);
        let mut exact = HashTable::with_capacity(exact_groups.len());
        let mut exact_keys = Vec::new();
        for (key, (start, end)) in exact_groups {
            let at = exact_keys.len() as u32;
            exact_keys.extend_from_slice(key);
            let entry = (at, exact_keys.len() as u32, start, end);
            exact.insert_unique(hash_bytes(key), entry, |e| {
                hash_bytes(&exact_keys[e.0 as usize..e.1 as usize])
            });
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
        let inner = Inner {
            anchored: PrefixTrie::new(anchored),
            tail_anchored,
            patterns,
            exact,
            exact_keys,
            exact_ids,
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
        if let Some((start, end)) = inner.exact_lookup(bytes) {
            out.extend(inner.exact_ids[start as usize..end as usize].iter().map(|&i| i as usize));
        }
        if !inner.anchored.is_empty() {
            inner.anchored.for_each_prefix(bytes, |v| {
                let i = (v & !PREFIX_STAR) as usize;
                if v & PREFIX_STAR != 0 || inner.patterns[i].is_match(name) {
                    out.push(i);
                }
            });
        }
        if !inner.tail_anchored.is_empty() {
            inner.tail_anchored.for_each_reversed_suffix(bytes, |v| {
                let i = (v & !PREFIX_STAR) as usize;
                if v & PREFIX_STAR != 0 || inner.patterns[i].is_match(name) {
                    out.push(i);
                }
            });
        }
        if let Some(ac) = &inner.floating {
            for m in ac.find_overlapping_iter(bytes) {
                let (start, end) = inner.floating_ranges[m.pattern().as_usize()];
                for &i in &inner.floating_ids[start as usize..end as usize] {
                    if inner.patterns[i as usize].is_match(name) {
                        out.push(i as usize);
                    }
                }
            }
        }
        out.extend(inner.match_all.iter().map(|&i| i as usize));
        for &i in &inner.residual {
            if inner.patterns[i as usize].is_match(name) {
                out.push(i as usize);
            }
        }
        if out.len() > 1 {
            out.sort_unstable();
            out.dedup();
        }
    }

    /// Whether any pattern matches `name`.
    pub fn is_match(&self, name: &str) -> bool {
        let inner = &*self.inner;
        if !inner.match_all.is_empty() || inner.exact_lookup(name.as_bytes()).is_some() {
            return true;
        }
        let mut out = Vec::new();
        self.matches_into(name, &mut out);
        !out.is_empty()
    }
}

impl Inner {
    /// The range of `exact_ids` for the whole-name literal `name`.
    #[inline]
    fn exact_lookup(&self, name: &[u8]) -> Option<(u32, u32)> {
        if self.exact.is_empty() {
            return None;
        }
        let keys = &self.exact_keys;
        self.exact
            .find(hash_bytes(name), |e| crate::bytes::eq(&keys[e.0 as usize..e.1 as usize], name))
            .map(|e| (e.2, e.3))
    }
}

#[inline]
fn hash_bytes(bytes: &[u8]) -> u64 {
    use std::hash::Hasher;
    let mut h = FxHasher::default();
    h.write(bytes);
    h.finish()
}

/// A distinct key and the range of its ids.
type Group<'a> = (&'a [u8], (u32, u32));

/// Sorts `(key, id)` pairs and groups the ids by key: returns each distinct
/// key with its range in the returned id list.
fn group(mut pairs: Vec<(&[u8], u32)>) -> (Vec<Group<'_>>, Vec<u32>) {
    pairs.sort_unstable();
    let mut groups: Vec<Group<'_>> = Vec::new();
    let mut ids = Vec::with_capacity(pairs.len());
    for (key, id) in pairs {
        match groups.last_mut() {
            Some((k, range)) if *k == key => range.1 += 1,
            _ => {
                let at = ids.len() as u32;
                groups.push((key, (at, at + 1)));
            }
        }
        ids.push(id);
    }
    (groups, ids)
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
            .field("exact", &self.inner.exact_ids.len())
            .field("floating", &self.inner.floating_ids.len())
            .field("match_all", &self.inner.match_all.len())
            .field("residual", &self.inner.residual.len())
            .finish_non_exhaustive()
    }
}
