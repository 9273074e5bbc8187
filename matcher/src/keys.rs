//! Dot-aligned keys, found by hashing.
//!
//! Event names are dotted (`plugin42.action7`) and most patterns are built
//! along the dots: their literal prefix ends at a dot (`plugin42.*`) or their
//! literal suffix starts at one (`*.ended3`). If a name starts with such a
//! prefix, the prefix ends at one of the name's own dots, so a hash table of
//! those prefixes needs one probe per dot of the name, whatever the number
//! of patterns — unlike a trie, whose walk takes one cache miss per branching
//! level (and numbered plugins branch at every digit).
//!
//! [`prefixes`] walks a name forwards and hashes each segment (the bytes
//! between dots) once: the hash of every prefix ending at a dot, and of the
//! whole name, is a fold of those segment hashes; [`suffixes`] does the same
//! backwards. A key is hashed by the same walk, so the two always agree. [`KeyTable`] maps
//! keys to the values stored under them.

use rustc_hash::FxHasher;

const PREFIX_SEED: u64 = 0x243f_6a88_85a3_08d3;
const SUFFIX_SEED: u64 = 0x1319_8a2e_0370_7344;
/// Told apart from a dot-terminated segment: the last one of a whole name.
const LAST: u64 = 0xa409_3822_299f_31d0;
const K: u64 = 0xf135_7aea_2e62_a9c5;

#[inline]
fn segment_hash(segment: &[u8]) -> u64 {
    use std::hash::Hasher;
    let mut h = FxHasher::default();
    h.write(segment);
    h.finish()
}

#[inline(always)]
fn fold(acc: u64, segment: u64) -> u64 {
    (acc.rotate_left(23) ^ segment).wrapping_mul(K)
}

/// The table hash of a fold: [`KeyTable`] takes its tag from the top half
/// and its slot from the low bits, so both must depend on every input bit.
#[inline(always)]
fn finish(acc: u64) -> u64 {
    let x = acc ^ (acc >> 31);
    x.wrapping_mul(K) ^ (x >> 29)
}

/// Calls `f(len, hash)` for every prefix of `name` that ends with a dot,
/// shortest first, and returns the hash of the whole name.
#[inline(always)]
pub(crate) fn prefixes(name: &[u8], mut f: impl FnMut(usize, u64)) -> u64 {
    let mut acc = PREFIX_SEED;
    let mut start = 0;
    for (i, &byte) in name.iter().enumerate() {
        if byte == b'.' {
            acc = fold(acc, segment_hash(&name[start..i]));
            f(i + 1, finish(acc));
            start = i + 1;
        }
    }
    finish(fold(acc, segment_hash(&name[start..]) ^ LAST))
}

/// Calls `f(start, hash)` for every suffix of `name` that starts with a
/// dot, shortest first.
#[inline(always)]
pub(crate) fn suffixes(name: &[u8], mut f: impl FnMut(usize, u64)) {
    let mut acc = SUFFIX_SEED;
    let mut end = name.len();
    for (i, &byte) in name.iter().enumerate().rev() {
        if byte == b'.' {
            acc = fold(acc, segment_hash(&name[i + 1..end]));
            f(i, finish(acc));
            end = i;
        }
    }
}

/// The hash [`prefixes`] returns for the whole of `key`.
pub(crate) fn whole_hash(key: &[u8]) -> u64 {
    prefixes(key, |_, _| {})
}

/// The hash [`prefixes`] gives `key`, which must end with a dot.
pub(crate) fn prefix_hash(key: &[u8]) -> u64 {
    debug_assert_eq!(key.last(), Some(&b'.'));
    let mut hash = 0;
    prefixes(key, |len, h| {
        if len == key.len() {
            hash = h;
        }
    });
    hash
}

/// The hash [`suffixes`] gives `key`, which must start with a dot.
pub(crate) fn suffix_hash(key: &[u8]) -> u64 {
    debug_assert_eq!(key.first(), Some(&b'.'));
    let mut hash = 0;
    suffixes(key, |start, h| {
        if start == 0 {
            hash = h;
        }
    });
    hash
}

/// Key bytes kept in the slot itself, so that a lookup of a short key
/// touches one cache line.
const INLINE_KEY: usize = 20;
/// Of a longer key, the slot keeps this many first bytes, then the offset of
/// the rest in [`KeyTable::long_keys`].
const KEPT: usize = INLINE_KEY - 4;

/// One slot of the open-addressing table: 32 bytes, aligned, so a slot never
/// straddles two cache lines.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C, align(32))]
struct Slot {
    /// The top half of the key's hash with the low bit set; 0 marks an
    /// empty slot.
    tag: u32,
    /// The key's length in bytes.
    len: u16,
    /// Whether `vals` is the key's only value; else the key's values are
    /// `values[vals + 1..][..values[vals]]`.
    single: bool,
    vals: u32,
    /// The key when it is at most `INLINE_KEY` bytes long; else its first
    /// `KEPT` bytes and the offset of the rest in `long_keys`, little-endian.
    key: [u8; INLINE_KEY],
}

/// The longest key a table holds: keys come from patterns, which
/// [`MAX_PATTERN_LEN`](crate::MAX_PATTERN_LEN) bounds.
pub(crate) const MAX_KEY_LEN: usize = crate::MAX_PATTERN_LEN;

/// A map from byte-string keys to the values stored under them. The caller
/// hashes; the table compares. Linear probing in a table at most half full,
/// with short keys and single values inline, so that most lookups read one
/// cache line.
#[derive(Clone, Debug, Default)]
pub(crate) struct KeyTable {
    slots: Vec<Slot>,
    long_keys: Vec<u8>,
    values: Vec<u32>,
}

#[inline(always)]
fn tag_of(hash: u64) -> u32 {
    (hash >> 32) as u32 | 1
}

impl KeyTable {
    /// Builds the table from `(key, hash of key, value)` triples in any
    /// order; a key may repeat. Keys are at most [`MAX_KEY_LEN`] bytes.
    ///
    /// # Panics
    ///
    /// When the long keys total more than `u32::MAX` bytes, or a key is
    /// longer than [`MAX_KEY_LEN`].
    pub(crate) fn new(mut entries: Vec<(&[u8], u64, u32)>) -> KeyTable {
        entries.sort_unstable_by(|a, b| a.0.cmp(b.0).then(a.2.cmp(&b.2)));
        if entries.is_empty() {
            return KeyTable::default();
        }
        let distinct = entries.windows(2).filter(|w| w[0].0 != w[1].0).count() + 1;
        let size = (distinct * 2).next_power_of_two();
        let mut out = KeyTable {
            slots: vec![Slot::default(); size],
            long_keys: Vec::new(),
            values: Vec::new(),
        };
        let mask = size - 1;
        let mut i = 0;
        while i < entries.len() {
            let (key, hash, first) = entries[i];
            let group = entries[i..].iter().take_while(|e| e.0 == key).count();
            let mut slot = Slot {
                tag: tag_of(hash),
                len: u16::try_from(key.len()).expect("keys are at most MAX_KEY_LEN bytes"),
                single: group == 1,
                vals: first,
                key: [0; INLINE_KEY],
            };
            assert!(key.len() <= MAX_KEY_LEN, "keys are at most MAX_KEY_LEN bytes");
            if group > 1 {
                slot.vals = u32::try_from(out.values.len()).expect("a set holds < 2^31 values");
                out.values.push(group as u32);
                out.values.extend(entries[i..i + group].iter().map(|e| e.2));
            }
            if key.len() <= INLINE_KEY {
                slot.key[..key.len()].copy_from_slice(key);
            } else {
                let at = u32::try_from(out.long_keys.len()).expect("PatternSet keys exceed 4 GiB");
                slot.key[..KEPT].copy_from_slice(&key[..KEPT]);
                slot.key[KEPT..].copy_from_slice(&at.to_le_bytes());
                out.long_keys.extend_from_slice(&key[KEPT..]);
            }
            let mut at = hash as usize & mask;
            while out.slots[at].tag != 0 {
                at = (at + 1) & mask;
            }
            out.slots[at] = slot;
            i += group;
        }
        out
    }

    /// The tag of the first slot `hash` probes: 0 when `hash`'s key is
    /// certainly absent. Reading it first for a batch of lookups lets their
    /// cache misses overlap.
    #[inline(always)]
    pub(crate) fn first_tag(&self, hash: u64) -> u32 {
        match self.slots.len() {
            0 => 0,
            n => self.slots[hash as usize & (n - 1)].tag,
        }
    }

    /// The values stored under `key`, whose hash is `hash`.
    #[inline(always)]
    pub(crate) fn get(&self, hash: u64, key: &[u8]) -> &[u32] {
        if self.slots.is_empty() {
            return &[];
        }
        let mask = self.slots.len() - 1;
        let tag = tag_of(hash);
        let mut at = hash as usize & mask;
        loop {
            let slot = &self.slots[at];
            if slot.tag == tag && usize::from(slot.len) == key.len() && self.key_eq(slot, key) {
                return if slot.single {
                    std::slice::from_ref(&slot.vals)
                } else {
                    let start = slot.vals as usize;
                    &self.values[start + 1..start + 1 + self.values[start] as usize]
                };
            }
            if slot.tag == 0 {
                return &[];
            }
            at = (at + 1) & mask;
        }
    }

    /// Whether `slot`'s key is `key`, which has its length.
    #[inline(always)]
    fn key_eq(&self, slot: &Slot, key: &[u8]) -> bool {
        if key.len() <= INLINE_KEY {
            return crate::bytes::eq(&slot.key[..key.len()], key);
        }
        if !crate::bytes::eq(&slot.key[..KEPT], &key[..KEPT]) {
            return false;
        }
        let mut at = [0u8; 4];
        at.copy_from_slice(&slot.key[KEPT..]);
        let at = u32::from_le_bytes(at) as usize;
        crate::bytes::eq(&self.long_keys[at..at + key.len() - KEPT], &key[KEPT..])
    }

    /// How many keys the table holds.
    pub(crate) fn len(&self) -> usize {
        self.slots.iter().filter(|s| s.tag != 0).count()
    }

    /// Whether the table holds no key.
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_hashes_agree_with_the_walks_over_a_name() {
        let name = b"plugin42.round.won.";
        let mut prefixes_seen = Vec::new();
        let whole = prefixes(name, |len, hash| prefixes_seen.push((len, hash)));
        assert_eq!(whole, whole_hash(name));
        assert_eq!(prefixes_seen.len(), 3);
        for (len, hash) in prefixes_seen {
            assert_eq!(hash, prefix_hash(&name[..len]), "prefix of {len} bytes");
        }
        let mut suffixes_seen = Vec::new();
        suffixes(name, |start, hash| suffixes_seen.push((start, hash)));
        assert_eq!(suffixes_seen.iter().map(|s| s.0).collect::<Vec<_>>(), vec![18, 14, 8]);
        for (start, hash) in suffixes_seen {
            assert_eq!(hash, suffix_hash(&name[start..]), "suffix from {start}");
        }
        // Where the dots are changes the hash, not only the bytes between.
        assert_ne!(whole_hash(b"ab.c"), whole_hash(b"a.bc"));
        assert_ne!(whole_hash(b""), whole_hash(b"."));
        assert_ne!(whole_hash(b"a."), prefix_hash(b"a."));
    }

    #[test]
    fn table_finds_exactly_its_keys() {
        // Keys of every length around the inline limit, sharing long runs of
        // bytes, so that only the tail of a long key tells them apart.
        let mut keys: Vec<Vec<u8>> = Vec::new();
        for len in 0..48 {
            let base: Vec<u8> = (0..len).map(|i| b'a' + (i % 3) as u8).collect();
            keys.push(base.clone());
            if len > 0 {
                let mut other = base.clone();
                *other.last_mut().expect("non-empty") = b'z';
                keys.push(other);
            }
        }
        let entries: Vec<(&[u8], u64, u32)> = keys
            .iter()
            .enumerate()
            .flat_map(|(i, k)| {
                // Every third key twice, to store a run of values.
                let times = if i % 3 == 0 { 2 } else { 1 };
                (0..times).map(move |t| (&k[..], whole_hash(k), (i * 2 + t) as u32))
            })
            .collect();
        let table = KeyTable::new(entries);
        assert_eq!(table.len(), keys.len());
        for (i, key) in keys.iter().enumerate() {
            let expected: Vec<u32> = if i % 3 == 0 {
                vec![(i * 2) as u32, (i * 2 + 1) as u32]
            } else {
                vec![(i * 2) as u32]
            };
            assert_eq!(table.get(whole_hash(key), key), &expected[..], "key {i}");
            assert_ne!(table.first_tag(whole_hash(key)), 0);
            let mut absent = key.clone();
            absent.push(b'q');
            assert!(table.get(whole_hash(&absent), &absent).is_empty(), "key {i} + q");
        }
        let empty = KeyTable::new(Vec::new());
        assert!(empty.is_empty());
        assert!(empty.get(whole_hash(b"x"), b"x").is_empty());
        assert_eq!(empty.first_tag(7), 0);
    }
}
