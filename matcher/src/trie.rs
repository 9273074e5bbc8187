//! A compressed byte trie over literal prefixes.
//!
//! Each node owns an edge label (a run of bytes) and the values whose key
//! ends there. A lookup walks the name once, byte run by byte run, and
//! reports the values of every node whose key is a prefix of the name, so
//! its cost depends on the name's length and not on how many keys there are.

/// Label bytes kept inside the node, so that a visit touches one cache line.
const INLINE: usize = 8;

/// A node: its label (the bytes of the edge into it) is `inline[..len]` when
/// it is at most `INLINE` bytes long, else `labels[at..at + len]`; its
/// children are the nodes `kids.0..kids.1` (contiguous, sorted by first label
/// byte, which `firsts` holds for a compact binary search); its values are
/// `values[vals.0..vals.1]`.
#[derive(Clone, Debug)]
struct Node {
    inline: [u8; INLINE],
    label_len: u32,
    label_at: u32,
    kids: (u32, u32),
    vals: (u32, u32),
}

/// A compressed trie mapping byte strings to values of type `V`.
#[derive(Clone, Debug)]
pub(crate) struct PrefixTrie<V> {
    nodes: Vec<Node>,
    /// The first label byte of every node, indexed like `nodes`.
    firsts: Vec<u8>,
    labels: Vec<u8>,
    values: Vec<V>,
}

impl<V: Copy> PrefixTrie<V> {
    /// Builds the trie. `entries` may come in any order and repeat keys.
    pub(crate) fn new(mut entries: Vec<(&[u8], V)>) -> PrefixTrie<V> {
        entries.sort_by(|a, b| a.0.cmp(b.0));
        let mut trie = PrefixTrie {
            nodes: Vec::new(),
            firsts: Vec::new(),
            labels: Vec::new(),
            values: Vec::with_capacity(entries.len()),
        };
        trie.push_node(&[]);
        // An explicit stack instead of recursion: adversarial keys
        // ("a", "aa", "aaa", …) would otherwise recurse once per byte.
        // Each job: (node index, entries below it, depth already consumed).
        let mut stack: Vec<(usize, std::ops::Range<usize>, usize)> = vec![(0, 0..entries.len(), 0)];
        while let Some((node, range, depth)) = stack.pop() {
            let items = &entries[range.clone()];
            // Keys that end exactly here sort first.
            let ending = items.iter().take_while(|(k, _)| k.len() == depth).count();
            let vals_start = trie.values.len() as u32;
            trie.values.extend(items[..ending].iter().map(|&(_, v)| v));
            trie.nodes[node].vals = (vals_start, trie.values.len() as u32);
            // Group the rest by their next byte; each group is one child,
            // and a node's children are pushed next to each other.
            let kids_start = trie.nodes.len();
            let mut i = range.start + ending;
            while i < range.end {
                let byte = entries[i].0[depth];
                let mut j = i + 1;
                while j < range.end && entries[j].0[depth] == byte {
                    j += 1;
                }
                // The group shares the common prefix of its first and last key.
                let (first, last) = (entries[i].0, entries[j - 1].0);
                let common = first.iter().zip(last).take_while(|(a, b)| a == b).count();
                let child = trie.push_node(&first[depth..common]);
                stack.push((child, i..j, common));
                i = j;
            }
            trie.nodes[node].kids = (kids_start as u32, trie.nodes.len() as u32);
        }
        trie
    }

    fn push_node(&mut self, label: &[u8]) -> usize {
        let mut inline = [0u8; INLINE];
        let label_at = if label.len() <= INLINE {
            inline[..label.len()].copy_from_slice(label);
            0
        } else {
            self.labels.extend_from_slice(label);
            (self.labels.len() - label.len()) as u32
        };
        self.nodes.push(Node {
            inline,
            label_len: label.len() as u32,
            label_at,
            kids: (0, 0),
            vals: (0, 0),
        });
        self.firsts.push(label.first().copied().unwrap_or(0));
        self.nodes.len() - 1
    }

    #[inline]
    fn label<'a>(&'a self, node: &'a Node) -> &'a [u8] {
        let len = node.label_len as usize;
        if len <= INLINE {
            &node.inline[..len]
        } else {
            &self.labels[node.label_at as usize..node.label_at as usize + len]
        }
    }

    /// Calls `f` with the values of every key that is a prefix of `name`,
    /// shortest key first.
    #[inline]
    pub(crate) fn for_each_prefix(&self, name: &[u8], mut f: impl FnMut(V)) {
        let mut node = &self.nodes[0];
        let mut at = 0;
        loop {
            if node.vals.0 != node.vals.1 {
                for &v in &self.values[node.vals.0 as usize..node.vals.1 as usize] {
                    f(v);
                }
            }
            let Some(&byte) = name.get(at) else { return };
            let (lo, hi) = (node.kids.0 as usize, node.kids.1 as usize);
            let Ok(k) = self.firsts[lo..hi].binary_search(&byte) else { return };
            let child = &self.nodes[lo + k];
            if !crate::bytes::starts_with(&name[at..], self.label(child)) {
                return;
            }
            at += child.label_len as usize;
            node = child;
        }
    }

    /// Like [`for_each_prefix`](PrefixTrie::for_each_prefix) for a trie of
    /// reversed keys: calls `f` with the values of every key whose reverse
    /// is a suffix of `name`, reading `name` backwards in place.
    #[inline]
    pub(crate) fn for_each_reversed_suffix(&self, name: &[u8], mut f: impl FnMut(V)) {
        let mut node = &self.nodes[0];
        let mut end = name.len();
        loop {
            if node.vals.0 != node.vals.1 {
                for &v in &self.values[node.vals.0 as usize..node.vals.1 as usize] {
                    f(v);
                }
            }
            let Some(&byte) = end.checked_sub(1).map(|i| &name[i]) else { return };
            let (lo, hi) = (node.kids.0 as usize, node.kids.1 as usize);
            let Ok(k) = self.firsts[lo..hi].binary_search(&byte) else { return };
            let child = &self.nodes[lo + k];
            if !crate::bytes::ends_with_reversed(&name[..end], self.label(child)) {
                return;
            }
            end -= child.label_len as usize;
            node = child;
        }
    }

    /// Whether the trie holds no value.
    pub(crate) fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::PrefixTrie;

    fn prefixes(trie: &PrefixTrie<u32>, name: &str) -> Vec<u32> {
        let mut out = Vec::new();
        trie.for_each_prefix(name.as_bytes(), |v| out.push(v));
        out
    }

    #[test]
    fn reports_every_prefix_key() {
        let keys: Vec<(&[u8], u32)> = vec![
            (b"plugin1.", 0),
            (b"plugin12.", 1),
            (b"plugin1", 2),
            (b"", 3),
            (b"quote", 4),
            (b"plugin1.", 5),
        ];
        let trie = PrefixTrie::new(keys);
        let mut got = prefixes(&trie, "plugin1.x");
        got.sort();
        assert_eq!(got, vec![0, 2, 3, 5]);
        assert_eq!(prefixes(&trie, "plugin12.a").len(), 3);
        assert_eq!(prefixes(&trie, "quot"), vec![3]);
        assert_eq!(prefixes(&trie, ""), vec![3]);
    }

    #[test]
    fn deep_chains_do_not_recurse() {
        let keys: Vec<Vec<u8>> = (1..5000).map(|n| vec![b'a'; n]).collect();
        let trie =
            PrefixTrie::new(keys.iter().enumerate().map(|(i, k)| (&k[..], i as u32)).collect());
        assert_eq!(prefixes(&trie, &"a".repeat(6000)).len(), 4999);
    }
}
