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
//! Keys are hashed eight bytes at a time, and so is a name, in one pass
//! that also finds its dots: the hash of the prefix that ends at a dot is the
//! running hash of the words before it, folded with the dot's word cut after
//! the dot. [`prefixes`] walks forwards (prefixes and the whole name),
//! [`suffixes`] backwards. [`KeyTable`] maps keys to the values stored under
//! them.
//!
//! The hash is fast, not collision-resistant: keys come from the program's
//! own subscriptions, and a collision costs a key comparison, never a wrong
//! answer.

use crate::bytes::word8;

const PREFIX_SEED: u64 = 0x243f_6a88_85a3_08d3;
const SUFFIX_SEED: u64 = 0x1319_8a2e_0370_7344;
const K: u64 = 0xf135_7aea_2e62_a9c5;

/// Folds the word `word` into the running hash `acc`: the high and low
/// halves of their 128-bit product, xored, as in `rustc-hash`.
#[inline(always)]
fn mix(acc: u64, word: u64) -> u64 {
    let full = u128::from(acc ^ word) * u128::from(K);
    (full as u64) ^ ((full >> 64) as u64)
}

/// The hash of a key of `len` bytes whose words folded into `acc`.
/// [`KeyTable`] takes its control byte from the top bits and its slot from
/// the low ones, so both must depend on every input bit.
#[inline(always)]
fn finish(acc: u64, len: usize) -> u64 {
    let x = mix(acc, len as u64);
    x ^ (x >> 32)
}

/// The `n` (1 to 8) bytes of `bytes` from `at` as a little-endian word, in
/// its low bytes. When `bytes` has room, one load that overlaps the bytes
/// before and shifts them out; else a loop of at most 7 bytes.
#[inline(always)]
fn word_at(bytes: &[u8], at: usize, n: usize) -> u64 {
    if n == 8 {
        word8(bytes, at)
    } else if at + n >= 8 {
        word8(bytes, at + n - 8) >> (8 * (8 - n))
    } else {
        bytes[at..at + n].iter().rev().fold(0, |w, &b| (w << 8) | u64::from(b))
    }
}

/// The high bit of every byte of `x` that is zero, and no other bit.
#[inline(always)]
fn zero_bytes(x: u64) -> u64 {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    // A byte's high bit ends up set iff the byte of `x` is zero; no carry
    // crosses bytes, since (x & 0x7f) + 0x7f <= 0xfe.
    !(((x & LOW7).wrapping_add(LOW7)) | x | LOW7)
}

/// The high bit of every byte of `word` that is a `.`, and no other bit.
#[inline(always)]
fn dot_bits(word: u64) -> u64 {
    zero_bytes(word ^ repeat(b'.'))
}

/// Calls `f(len, hash)` for every prefix of `name` that ends with a dot,
/// shortest first, and returns the hash of the whole name. The hash of a
/// prefix is the hash of the whole of a key equal to it.
#[inline(always)]
pub(crate) fn prefixes(name: &[u8], mut f: impl FnMut(usize, u64)) -> u64 {
    let mut acc = PREFIX_SEED;
    for k in 0..name.len().div_ceil(8) {
        let w = word_at(name, k * 8, (name.len() - k * 8).min(8));
        let mut bits = dot_bits(w);
        while bits != 0 {
            // The dot's byte is the last one the prefix keeps of `w`.
            let keep = bits.trailing_zeros() as usize / 8 + 1;
            let cut = if keep == 8 { w } else { w & ((1 << (8 * keep)) - 1) };
            let len = k * 8 + keep;
            f(len, finish(mix(acc, cut), len));
            bits &= bits - 1;
        }
        acc = mix(acc, w);
    }
    finish(acc, name.len())
}

/// Calls `f(start, hash)` for every suffix of `name` that starts with a
/// dot, shortest first. Suffixes are hashed backwards, by words taken from
/// the end, a short first word being kept in its high bytes.
#[inline(always)]
pub(crate) fn suffixes(name: &[u8], mut f: impl FnMut(usize, u64)) {
    let mut acc = SUFFIX_SEED;
    for k in 0..name.len().div_ceil(8) {
        let n = (name.len() - k * 8).min(8);
        // Byte `b` of `w` is byte `base + b` of the name.
        let base = (name.len() - k * 8) as isize - 8;
        let at = name.len() - k * 8 - n;
        // The front chunk, when short, with one load that overlaps the
        // bytes after it and shifts them out.
        let w = if n < 8 && name.len() >= 8 {
            word8(name, at) << (8 * (8 - n))
        } else {
            word_at(name, at, n) << (8 * (8 - n))
        };
        let mut bits = dot_bits(w);
        while bits != 0 {
            // The dot's byte is the first one the suffix keeps of `w`.
            let top = 63 - bits.leading_zeros() as usize;
            let b = top / 8;
            let cut = w & !((1u64 << (8 * b)) - 1);
            let start = (base + b as isize) as usize;
            f(start, finish(mix(acc, cut), name.len() - start));
            bits ^= 1 << top;
        }
        acc = mix(acc, w);
    }
}

/// The hash [`prefixes`] gives `key`, as a whole name or as a prefix of
/// a longer one.
pub(crate) fn whole_hash(key: &[u8]) -> u64 {
    prefixes(key, |_, _| {})
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

/// A filter in front of the dot-suffix table, on the name's last segment.
///
/// A suffix key that starts at a dot ends with the name's last segment: its
/// own last segment is the name's, dot included. The gate keeps a bit per
/// last segment of every key (hashed from its last eight bytes at most), so
/// that the backward walk, which costs as much as the forward one, is skipped
/// for a name whose last segment no key ends with. False positives only cost
/// the walk.
#[derive(Clone, Debug, Default)]
pub(crate) struct SuffixGate {
    bits: Vec<u64>,
    shift: u32,
}

impl SuffixGate {
    /// A gate for the suffix keys `keys`, each starting with a dot.
    pub(crate) fn new<'a>(keys: impl ExactSizeIterator<Item = &'a [u8]>) -> SuffixGate {
        if keys.len() == 0 {
            return SuffixGate::default();
        }
        // About 16 bits per key: a false positive rate near 6%.
        let size = (keys.len() * 16).next_power_of_two().clamp(64, 1 << 24);
        let mut gate = SuffixGate { bits: vec![0; size / 64], shift: 64 - size.trailing_zeros() };
        for key in keys {
            let last_dot = key.iter().rposition(|&b| b == b'.').unwrap_or(0);
            let bit = gate.bit(key, last_dot);
            gate.bits[bit / 64] |= 1 << (bit % 64);
        }
        gate
    }

    /// The bit of the last segment of `bytes`, whose last dot is at
    /// `last_dot`.
    #[inline(always)]
    fn bit(&self, bytes: &[u8], last_dot: usize) -> usize {
        let n = (bytes.len() - last_dot).min(8);
        let w = word_at(bytes, bytes.len() - n, n);
        (mix(w, n as u64) >> self.shift) as usize
    }

    /// Whether a suffix key may match `name`, whose last dot is at
    /// `last_dot`.
    #[inline(always)]
    pub(crate) fn may_pass(&self, name: &[u8], last_dot: usize) -> bool {
        if self.bits.is_empty() {
            return false;
        }
        let bit = self.bit(name, last_dot);
        self.bits[bit / 64] & (1 << (bit % 64)) != 0
    }
}

/// Key bytes kept in the slot itself, so that a lookup of a short key
/// reads one slot.
const INLINE_KEY: usize = 20;
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
    /// How many of `vals` are the key's values (1 or 2); 0 when they are
    /// `values[vals[0] + 1..][..values[vals[0]]]` instead.
    inline: u16,
    vals: [u32; 2],
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
/// else seven bits of the key's hash with the top bit set, read eight at a
/// time (the first eight are repeated after the last, so a group never
/// wraps). The control bytes
/// are small enough to stay in cache when the slots are not, so a lookup of
/// an absent key rarely reads a slot, and one of a present key reads one
/// slot (short keys and up to two values are inline). The table is at most
/// half full.
#[derive(Clone, Debug, Default)]
pub(crate) struct KeyTable {
    ctrl: Vec<u8>,
    slots: Vec<Slot>,
    long_keys: Vec<u8>,
    values: Vec<u32>,
}

/// Control bytes read at once: one word.
const GROUP: usize = 8;

/// `byte` in every byte of a word.
#[inline(always)]
fn repeat(byte: u8) -> u64 {
    u64::from(byte) * 0x0101_0101_0101_0101
}

#[inline(always)]
fn ctrl_of(hash: u64) -> u8 {
    (hash >> 57) as u8 | 0x80
}

impl KeyTable {
    /// Builds the table from `(key, value)` pairs in any order, a key may
    /// repeat; `hash` is the hash lookups will use for a key. Keys are at
    /// most [`MAX_KEY_LEN`] bytes.
    ///
    /// # Panics
    ///
    /// When the long keys total more than `u32::MAX` bytes, or a key is
    /// longer than [`MAX_KEY_LEN`].
    pub(crate) fn new(pairs: Vec<(&[u8], u32)>, hash: impl Fn(&[u8]) -> u64) -> KeyTable {
        let (groups, ids) = group(pairs);
        if groups.is_empty() {
            return KeyTable::default();
        }
        let size = (groups.len() * 4 / 3 + 1).next_power_of_two().max(GROUP);
        let mut out = KeyTable {
            ctrl: vec![0; size + GROUP],
            slots: vec![Slot::default(); size],
            long_keys: Vec::new(),
            values: Vec::new(),
        };
        let mask = size - 1;
        for (key, (start, end)) in groups {
            let vals = &ids[start as usize..end as usize];
            assert!(key.len() <= MAX_KEY_LEN, "keys are at most MAX_KEY_LEN bytes");
            let mut slot =
                Slot { len: key.len() as u16, inline: 1, vals: [vals[0], 0], key: [0; INLINE_KEY] };
            match vals.len() {
                1 => {}
                2 => {
                    slot.inline = 2;
                    slot.vals[1] = vals[1];
                }
                n => {
                    slot.inline = 0;
                    slot.vals[0] =
                        u32::try_from(out.values.len()).expect("a set holds < 2^31 values");
                    out.values.push(n as u32);
                    out.values.extend_from_slice(vals);
                }
            }
            if key.len() <= INLINE_KEY {
                slot.key[..key.len()].copy_from_slice(key);
            } else {
                let at = u32::try_from(out.long_keys.len()).expect("PatternSet keys exceed 4 GiB");
                slot.key[..KEPT].copy_from_slice(&key[..KEPT]);
                slot.key[KEPT..].copy_from_slice(&at.to_le_bytes());
                out.long_keys.extend_from_slice(&key[KEPT..]);
            }
            let hash = hash(key);
            let mut at = hash as usize & mask;
            while out.ctrl[at] != 0 {
                at = (at + 1) & mask;
            }
            out.ctrl[at] = ctrl_of(hash);
            if at < GROUP {
                out.ctrl[size + at] = ctrl_of(hash);
            }
            out.slots[at] = slot;
        }
        out
    }

    /// The slots a lookup of `hash` starts from: the control bytes of the
    /// group at its home slot, those that match its control byte, and those
    /// that are empty (high bit of each byte).
    #[inline(always)]
    fn group(&self, at: usize, want: u8) -> (u64, u64) {
        let group = word8(&self.ctrl, at);
        let empty = zero_bytes(group);
        // Linear probing: a key is never stored past an empty slot.
        let before = if empty == 0 { !0 } else { (empty & empty.wrapping_neg()) - 1 };
        (zero_bytes(group ^ repeat(want)) & before, empty)
    }

    /// Whether `hash`'s key may be present, from the control bytes of its
    /// home group alone. Reading them for a batch of lookups before
    /// resolving any lets their cache misses overlap.
    #[inline(always)]
    pub(crate) fn may_hold(&self, hash: u64) -> bool {
        if self.slots.is_empty() {
            return false;
        }
        let (matching, empty) = self.group(hash as usize & (self.slots.len() - 1), ctrl_of(hash));
        matching != 0 || empty == 0
    }

    /// The values stored under `key`, whose hash is `hash`.
    #[inline(always)]
    pub(crate) fn get(&self, hash: u64, key: &[u8]) -> &[u32] {
        if self.slots.is_empty() {
            return &[];
        }
        let mask = self.slots.len() - 1;
        let want = ctrl_of(hash);
        let mut at = hash as usize & mask;
        loop {
            let (mut matching, empty) = self.group(at, want);
            while matching != 0 {
                let slot = &self.slots[(at + matching.trailing_zeros() as usize / 8) & mask];
                if usize::from(slot.len) == key.len() && self.key_eq(slot, key) {
                    return match slot.inline {
                        0 => {
                            let start = slot.vals[0] as usize;
                            &self.values[start + 1..start + 1 + self.values[start] as usize]
                        }
                        n => &slot.vals[..usize::from(n)],
                    };
                }
                matching &= matching - 1;
            }
            if empty != 0 {
                return &[];
            }
            at = (at + GROUP) & mask;
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
        self.ctrl[..self.slots.len()].iter().filter(|&&c| c != 0).count()
    }

    /// Whether the table holds no key.
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.ctrl.is_empty()
    }
}

/// A distinct key and the range of its ids.
pub(crate) type Group<'a> = (&'a [u8], (u32, u32));

/// Sorts `(key, id)` pairs and groups the ids by key: returns each distinct
/// key with its range in the returned id list.
pub(crate) fn group(mut pairs: Vec<(&[u8], u32)>) -> (Vec<Group<'_>>, Vec<u32>) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_dot_gets_its_prefix_and_suffix() {
        let names = [
            "",
            ".",
            "a",
            "a.b",
            "........",
            ".........",
            "é.x.",
            "abcdefg.hijklmn.opq",
            "plugin42.round.won.",
            "1234567.",
            ".1234567",
            "12345678.12345678.1",
        ];
        for name in names {
            let bytes = name.as_bytes();
            let dots: Vec<usize> =
                bytes.iter().enumerate().filter(|&(_, &b)| b == b'.').map(|(i, _)| i).collect();

            let mut seen = Vec::new();
            let whole = prefixes(bytes, |len, hash| seen.push((len, hash)));
            let lens: Vec<usize> = dots.iter().map(|d| d + 1).collect();
            assert_eq!(seen.iter().map(|s| s.0).collect::<Vec<_>>(), lens, "{name:?}");
            for (len, hash) in seen {
                assert_eq!(hash, whole_hash(&bytes[..len]), "{name:?}, prefix of {len}");
            }
            assert_eq!(whole, whole_hash(bytes));

            let mut seen = Vec::new();
            suffixes(bytes, |start, hash| seen.push((start, hash)));
            let starts: Vec<usize> = dots.iter().rev().copied().collect();
            assert_eq!(seen.iter().map(|s| s.0).collect::<Vec<_>>(), starts, "{name:?}");
            for (start, hash) in seen {
                assert_eq!(hash, suffix_hash(&bytes[start..]), "{name:?}, suffix from {start}");
            }
        }
        // Every byte value next to a dot: no false positive, no miss.
        let all: Vec<u8> = (0..=255u8).flat_map(|b| [b, b'.', b]).collect();
        let mut found = 0;
        prefixes(&all, |len, _| {
            assert_eq!(all[len - 1], b'.');
            found += 1;
        });
        assert_eq!(found, 256 + 2);
    }

    #[test]
    fn suffix_gate_passes_every_name_a_key_may_end() {
        let keys: [&[u8]; 5] = [b".ended3", b".a.b", b".", b".averyveryverylongsegment", b".x.y."];
        let gate = SuffixGate::new(keys.iter().copied());
        let last_dot = |n: &[u8]| n.iter().rposition(|&b| b == b'.').expect("a dot");
        for name in ["x.ended3", "q.a.b", "z.b", "x.", "y.averyveryverylongsegment", "..y."] {
            assert!(gate.may_pass(name.as_bytes(), last_dot(name.as_bytes())), "{name}");
        }
        let passed = (0..1000)
            .map(|i| format!("plugin.action{i}"))
            .filter(|n| gate.may_pass(n.as_bytes(), last_dot(n.as_bytes())))
            .count();
        assert!(passed < 100, "{passed} of 1000 other names passed");
        assert!(!SuffixGate::new([].iter().copied()).may_pass(b"a.b", 1));
    }

    #[test]
    fn hashes_tell_keys_apart() {
        let keys: [&[u8]; 8] = [b"", b"\0", b"\0\0", b"a", b"a\0", b"ab.c", b"a.bc", b"12345678"];
        let mut hashes: Vec<u64> = keys.iter().map(|k| whole_hash(k)).collect();
        hashes.sort_unstable();
        hashes.dedup();
        assert_eq!(hashes.len(), keys.len());
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
        let entries: Vec<(&[u8], u32)> = keys
            .iter()
            .enumerate()
            .flat_map(|(i, k)| {
                // Keys with one, two (inline) and three (out of line) values.
                let times = i % 3 + 1;
                (0..times).map(move |t| (&k[..], (i * 4 + t) as u32))
            })
            .collect();
        let table = KeyTable::new(entries, whole_hash);
        assert_eq!(table.len(), keys.len());
        for (i, key) in keys.iter().enumerate() {
            let expected: Vec<u32> = (0..i % 3 + 1).map(|t| (i * 4 + t) as u32).collect();
            assert_eq!(table.get(whole_hash(key), key), &expected[..], "key {i}");
            assert!(table.may_hold(whole_hash(key)));
            let mut absent = key.clone();
            absent.push(b'q');
            assert!(table.get(whole_hash(&absent), &absent).is_empty(), "key {i} + q");
        }
        // Keys that all hash alike, homed at the last slot: their probe
        // crosses groups and wraps around the end of the table.
        let same: Vec<Vec<u8>> = (0..20).map(|i| format!("k{i}").into_bytes()).collect();
        let h = u64::MAX;
        let table = KeyTable::new(same.iter().zip(0..).map(|(k, i)| (&k[..], i)).collect(), |_| h);
        for (i, key) in same.iter().enumerate() {
            assert_eq!(table.get(h, key), &[i as u32], "colliding key {i}");
        }
        assert!(table.may_hold(h));
        assert!(table.get(h, b"k20").is_empty());
        assert!(table.get(h ^ 1, b"k3").is_empty(), "another home, another key");

        let empty = KeyTable::new(Vec::new(), whole_hash);
        assert!(empty.is_empty());
        assert!(empty.get(whole_hash(b"x"), b"x").is_empty());
        assert!(!empty.may_hold(7));
    }
}
