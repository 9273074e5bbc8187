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

/// The table hash of a fold: [`KeyTable`] takes its control byte from the
/// top bits and its slot from the low ones, so both must depend on every input bit.
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
    for_each_dot(name, |dot| {
        acc = fold(acc, segment_hash(&name[start..dot]));
        f(dot + 1, finish(acc));
        start = dot + 1;
    });
    finish(fold(acc, segment_hash(&name[start..]) ^ LAST))
}

/// Calls `f(start, hash)` for every suffix of `name` that starts with a
/// dot, shortest first.
#[inline(always)]
pub(crate) fn suffixes(name: &[u8], mut f: impl FnMut(usize, u64)) {
    let mut acc = SUFFIX_SEED;
    let mut end = name.len();
    for_each_dot_rev(name, |dot| {
        acc = fold(acc, segment_hash(&name[dot + 1..end]));
        f(dot, finish(acc));
        end = dot;
    });
}

/// The high bit of every byte of `word` that is a `.`, and no other bit.
#[inline(always)]
fn dot_bits(word: u64) -> u64 {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    let x = word ^ 0x2e2e_2e2e_2e2e_2e2e;
    // A byte's high bit ends up set iff the byte of `x` is zero; no carry
    // crosses bytes, since (x & 0x7f) + 0x7f <= 0xfe.
    !(((x & LOW7).wrapping_add(LOW7)) | x | LOW7)
}

/// The bytes of `chunk` (at most 8) as a little-endian word, zero-padded.
#[inline(always)]
fn word(chunk: &[u8]) -> u64 {
    if let Ok(full) = <[u8; 8]>::try_from(chunk) {
        return u64::from_le_bytes(full);
    }
    // A short last chunk: a loop of at most 7 bytes, not a `memcpy` call.
    chunk.iter().rev().fold(0, |w, &b| (w << 8) | u64::from(b))
}

/// Calls `f` with the offset of every `.` of `name`, ascending; eight bytes
/// at a time.
#[inline(always)]
fn for_each_dot(name: &[u8], mut f: impl FnMut(usize)) {
    for (k, chunk) in name.chunks(8).enumerate() {
        let mut bits = dot_bits(word(chunk));
        while bits != 0 {
            f(k * 8 + bits.trailing_zeros() as usize / 8);
            bits &= bits - 1;
        }
    }
}

/// Calls `f` with the offset of every `.` of `name`, descending.
#[inline(always)]
fn for_each_dot_rev(name: &[u8], mut f: impl FnMut(usize)) {
    for (k, chunk) in name.rchunks(8).enumerate() {
        // `chunk` is the 8 (or fewer, first) bytes ending k * 8 from the end.
        let base = name.len() - k * 8 - chunk.len();
        let mut bits = dot_bits(word(chunk));
        while bits != 0 {
            let top = 63 - bits.leading_zeros() as usize;
            f(base + top / 8);
            bits ^= 1 << top;
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
/// reads one slot.
const INLINE_KEY: usize = 24;
/// Of a longer key, the slot keeps this many first bytes, then the offset of
/// the rest in [`KeyTable::long_keys`].
const KEPT: usize = INLINE_KEY - 4;

/// One slot of the table: 32 bytes, aligned, so a slot never straddles two
/// cache lines.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C, align(32))]
struct Slot {
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
/// hashes; the table compares.
///
/// Linear probing over a byte of control per slot: 0 for an empty slot,
/// else seven bits of the key's hash with the top bit set. The control bytes
/// are small enough to stay in cache when the slots are not, so a lookup of
/// an absent key rarely reads a slot, and one of a present key reads one
/// slot (short keys and single values are inline). The table is at most
/// half full.
#[derive(Clone, Debug, Default)]
pub(crate) struct KeyTable {
    ctrl: Vec<u8>,
    slots: Vec<Slot>,
    long_keys: Vec<u8>,
    values: Vec<u32>,
}

#[inline(always)]
fn ctrl_of(hash: u64) -> u8 {
    (hash >> 57) as u8 | 0x80
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
            ctrl: vec![0; size],
            slots: vec![Slot::default(); size],
            long_keys: Vec::new(),
            values: Vec::new(),
        };
        let mask = size - 1;
        let mut i = 0;
        while i < entries.len() {
            let (key, hash, first) = entries[i];
            let group = entries[i..].iter().take_while(|e| e.0 == key).count();
            assert!(key.len() <= MAX_KEY_LEN, "keys are at most MAX_KEY_LEN bytes");
            let mut slot = Slot {
                len: key.len() as u16,
                single: group == 1,
                vals: first,
                key: [0; INLINE_KEY],
            };
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
            while out.ctrl[at] != 0 {
                at = (at + 1) & mask;
            }
            out.ctrl[at] = ctrl_of(hash);
            out.slots[at] = slot;
            i += group;
        }
        out
    }

    /// Whether `hash`'s key may be present, from its first control byte
    /// alone. Reading it for a batch of lookups before resolving any lets
    /// their cache misses overlap.
    #[inline(always)]
    pub(crate) fn may_hold(&self, hash: u64) -> bool {
        match self.ctrl.len() {
            0 => false,
            n => self.ctrl[hash as usize & (n - 1)] != 0,
        }
    }

    /// The values stored under `key`, whose hash is `hash`.
    #[inline(always)]
    pub(crate) fn get(&self, hash: u64, key: &[u8]) -> &[u32] {
        if self.ctrl.is_empty() {
            return &[];
        }
        let mask = self.ctrl.len() - 1;
        let want = ctrl_of(hash);
        let mut at = hash as usize & mask;
        loop {
            let ctrl = self.ctrl[at];
            if ctrl == 0 {
                return &[];
            }
            if ctrl == want {
                let slot = &self.slots[at];
                if usize::from(slot.len) == key.len() && self.key_eq(slot, key) {
                    return if slot.single {
                        std::slice::from_ref(&slot.vals)
                    } else {
                        let start = slot.vals as usize;
                        &self.values[start + 1..start + 1 + self.values[start] as usize]
                    };
                }
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
        self.ctrl.iter().filter(|&&c| c != 0).count()
    }

    /// Whether the table holds no key.
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.ctrl.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dots_are_found_both_ways() {
        for name in ["", ".", "a", "a.b", "........", ".........", "é.x.", "abcdefg.hijklmn.opq"] {
            let expected: Vec<usize> =
                name.bytes().enumerate().filter(|&(_, b)| b == b'.').map(|(i, _)| i).collect();
            let mut forwards = Vec::new();
            for_each_dot(name.as_bytes(), |i| forwards.push(i));
            assert_eq!(forwards, expected, "{name:?}");
            let mut backwards = Vec::new();
            for_each_dot_rev(name.as_bytes(), |i| backwards.push(i));
            backwards.reverse();
            assert_eq!(backwards, expected, "{name:?}");
        }
        // Every byte value next to a dot: no false positive, no miss.
        let all: Vec<u8> = (0..=255u8).flat_map(|b| [b, b'.', b]).collect();
        let mut found = 0;
        for_each_dot(&all, |i| {
            assert_eq!(all[i], b'.');
            found += 1;
        });
        assert_eq!(found, all.iter().filter(|&&b| b == b'.').count());
    }

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
            assert!(table.may_hold(whole_hash(key)));
            let mut absent = key.clone();
            absent.push(b'q');
            assert!(table.get(whole_hash(&absent), &absent).is_empty(), "key {i} + q");
        }
        let empty = KeyTable::new(Vec::new());
        assert!(empty.is_empty());
        assert!(empty.get(whole_hash(b"x"), b"x").is_empty());
        assert!(!empty.may_hold(7));
    }
}
