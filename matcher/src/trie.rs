//! A compressed byte trie over literal prefixes.
//!
//! Each node owns an edge label (a run of bytes) and the values whose key
//! ends there. A lookup walks the name once, byte run by byte run, and
//! reports the values of every node whose key is a prefix of the name, so
//! its cost depends on the name's length and not on how many keys there are.

/// A node: its label is `labels[label.0..label.1]`; its children are
/// `children[kids.0..kids.1]`, sorted by the first byte of their label; its
/// values are `values[vals.0..vals.1]`.
#[derive(Clone, Debug)]
struct Node {
    label: (u32, u32),
    kids: (u32, u32),
    vals: (u32, u32),
}

/// A compressed trie mapping byte strings to values of type `V`.
#[derive(Clone, Debug)]
pub(crate) struct PrefixTrie<V> {
    nodes: Vec<Node>,
    /// `(first label byte, node index)` for every child, grouped per parent.
    children: Vec<(u8, u32)>,
    labels: Vec<u8>,
    values: Vec<V>,
}

impl<V: Copy> PrefixTrie<V> {
    /// Builds the trie. `entries` may come in any order and repeat keys.
    pub(crate) fn new(mut entries: Vec<(&[u8], V)>) -> PrefixTrie<V> {
        entries.sort_by(|a, b| a.0.cmp(b.0));
        let mut trie = PrefixTrie {
            nodes: Vec::new(),
            children: Vec::new(),
            labels: Vec::new(),
            values: Vec::with_capacity(entries.len()),
        };
        trie.nodes.push(Node { label: (0, 0), kids: (0, 0), vals: (0, 0) });
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
            // Group the rest by their next byte.
            let kids_start = trie.children.len();
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
                let label_start = trie.labels.len() as u32;
                trie.labels.extend_from_slice(&first[depth..common]);
                let child = trie.nodes.len();
                trie.nodes.push(Node {
                    label: (label_start, trie.labels.len() as u32),
                    kids: (0, 0),
                    vals: (0, 0),
                });
                trie.children.push((byte, child as u32));
                stack.push((child, i..j, common));
                i = j;
            }
            trie.nodes[node].kids = (kids_start as u32, trie.children.len() as u32);
        }
        trie
    }

    /// Calls `f` with the values of every key that is a prefix of `name`,
    /// shortest key first.
    #[inline]
    pub(crate) fn for_each_prefix(&self, name: &[u8], mut f: impl FnMut(V)) {
        let mut node = &self.nodes[0];
        let mut at = 0;
        loop {
            for &v in &self.values[node.vals.0 as usize..node.vals.1 as usize] {
                f(v);
            }
            let Some(&byte) = name.get(at) else { return };
            let kids = &self.children[node.kids.0 as usize..node.kids.1 as usize];
            let Ok(k) = kids.binary_search_by_key(&byte, |&(b, _)| b) else { return };
            let child = &self.nodes[kids[k].1 as usize];
            let label = &self.labels[child.label.0 as usize..child.label.1 as usize];
            if !crate::bytes::starts_with(&name[at..], label) {
                return;
            }
            at += label.len();
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
