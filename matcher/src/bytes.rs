//! Byte-slice comparisons for the short slices matching deals in.
//!
//! `==` on byte slices calls `memcmp`, whose call and set-up cost more than
//! the comparison itself for the few bytes of a trie label or an event-name
//! segment. These compare up to 32 bytes inline and defer to `memcmp` above.

/// Whether `a == b`.
#[inline(always)]
pub(crate) fn eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    if a.len() <= 32 {
        let mut i = 0;
        while i < a.len() {
            if a[i] != b[i] {
                return false;
            }
            i += 1;
        }
        true
    } else {
        a == b
    }
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
