//! Byte-slice comparisons for the short slices matching deals in.
//!
//! `==` on byte slices calls `memcmp`, whose call and set-up cost more than
//! the comparison itself for the few bytes of a trie label or an event-name
//! segment. These compare up to 32 bytes inline and defer to `memcmp` above.

/// Whether `a == b`: up to 32 bytes with a few word loads (overlapping
/// when the length is not a multiple of the word).
#[inline(always)]
pub(crate) fn eq(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    match n {
        0 => true,
        1..=3 => a[0] == b[0] && a[n / 2] == b[n / 2] && a[n - 1] == b[n - 1],
        4..=7 => word4(a, 0) == word4(b, 0) && word4(a, n - 4) == word4(b, n - 4),
        8..=16 => word8(a, 0) == word8(b, 0) && word8(a, n - 8) == word8(b, n - 8),
        17..=32 => {
            word8(a, 0) == word8(b, 0)
                && word8(a, 8) == word8(b, 8)
                && word8(a, n - 16) == word8(b, n - 16)
                && word8(a, n - 8) == word8(b, n - 8)
        }
        _ => a == b,
    }
}

/// Bytes `at..at + 8` of `s` as a little-endian word.
#[inline(always)]
pub(crate) fn word8(s: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&s[at..at + 8]);
    u64::from_le_bytes(w)
}

#[inline(always)]
fn word4(s: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&s[at..at + 4]);
    u32::from_le_bytes(w)
}

/// Whether `hay` ends with the bytes of `reversed`, read backwards
/// (`reversed[0]` is the last byte of `hay`).
#[inline(always)]
pub(crate) fn ends_with_reversed(hay: &[u8], reversed: &[u8]) -> bool {
    if hay.len() < reversed.len() {
        return false;
    }
    if reversed.is_empty() {
        return true;
    }
    let last = hay.len() - 1;
    let mut i = 0;
    while i < reversed.len() {
        if hay[last - i] != reversed[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// Whether `hay` starts with `prefix`.
#[inline(always)]
pub(crate) fn starts_with(hay: &[u8], prefix: &[u8]) -> bool {
    hay.len() >= prefix.len() && eq(&hay[..prefix.len()], prefix)
}

#[cfg(test)]
mod tests {
    use super::{ends_with_reversed, eq, starts_with};

    #[test]
    fn eq_finds_a_difference_anywhere() {
        for n in 0..40usize {
            let a: Vec<u8> = (0..n as u8).collect();
            assert!(eq(&a, &a.clone()), "{n}");
            for at in 0..n {
                let mut b = a.clone();
                b[at] ^= 0x80;
                assert!(!eq(&a, &b), "length {n}, byte {at}");
            }
        }
    }

    #[test]
    fn agrees_with_std() {
        let samples: [&[u8]; 8] = [
            b"",
            b"a",
            b"ab",
            b"plugin42.",
            b"plugin42.action7",
            b"0123456789abcdefX",
            b"0123456789abcdefY",
            b"0123456789abcdef0123456789abcdefZ",
        ];
        for a in samples {
            for b in samples {
                assert_eq!(eq(a, b), a == b, "{a:?} {b:?}");
                assert_eq!(starts_with(a, b), a.starts_with(b), "{a:?} {b:?}");
                let reversed: Vec<u8> = b.iter().rev().copied().collect();
                assert_eq!(ends_with_reversed(a, &reversed), a.ends_with(b), "{a:?} {b:?}");
            }
        }
    }
}
