//! Subscription trie: MQTT topic filters → subscribers (MQTT 3.1.1 §4.7, MQTT 5 §4.7).
//!
//! Levels are split on `/`; `+` stands for exactly one level, `#` for the parent level and
//! any number of levels below it. Against the topic name `a/b/c`:
//!
//! ```text
//! Valid, matching:          a/b/c  a/b/+  a/+/c  +/b/c  +/+/+  a/+/+  +/+/c
//!                           #  +/#  a/#  a/b/#  a/b/c/#  +/b/#  a/+/c/#
//! Invalid (rejected by the caller, never given to this module):
//!                           a/#/c  #/a  a/b#  a+/b/c  a/+b  ++  ##
//! Valid but non-matching:   a/b  a/+  +/b  +/+  b/c/a  a/b/d  a/b/c/d  a/b/c/+  +/+/+/+
//!                           /a/b/c  a/b/c/  a//b/c  A/b/c
//! ```
//!
//! and for topic names that start with `$` (such as `$SYS/broker/load`):
//!
//! ```text
//! Matching:                 $SYS/#  $SYS/+/load  $SYS/broker/+  $SYS/broker/load
//! Valid but non-matching:   #  +/#  +/broker/load  +/+/+
//! ```
//!
//! Empty levels are real levels: `/finance` is `""` then `finance`, so `+/+` and `/+` match
//! it and `+` does not; `a//b` has three levels; `+` matches an empty level (`sport/+`
//! matches `sport/`); `sport/#` matches `sport`, `sport/` and `sport/a/b`.
//!
//! # Shape
//!
//! As in nats' `sublist.go`, each `Node` keeps its literal children in a map and its
//! wildcard children in their own fields (`plus`, and `hash` for the entries of the filter
//! ending in `/#` below it). As in mosquitto's `subs.c`, filters whose first level starts with
//! `$` hang off a separate root that holds literal levels only, and a topic name starting with
//! `$` is looked up only there; so `#` and `+` at the first level never see `$SYS/...` by
//! construction, with no special case in the matcher. Deeper levels starting with `$` are
//! ordinary literals (`a/+` matches `a/$x`).
//!
//! # Invariants
//!
//! - Every filter and topic given to this module is valid MQTT syntax (checked by the
//!   caller): `#` only as the whole last level, `+` only as a whole level, no wildcard in a
//!   topic name. Shared subscriptions (`$share/group/filter`) are unwrapped by the caller;
//!   given whole, `$share` would be an ordinary `$` first level.
//! - One entry per (filter, key): inserting again replaces the value.
//! - No empty node survives a remove: every node other than the root holds an entry or a
//!   child, every `Leaf` holds at least one entry, and an empty tree is a bare root.
//! - `len` is the number of (filter, key) entries; `generation` moves on every change,
//!   including a value replaced by `insert`, and never otherwise.
//! - Matching allocates nothing but what the callback does. It recurses once per `+` child it
//!   follows, insert walks iteratively, and remove recurses once per filter level: the stack
//!   depth is bounded by the configured maximum number of topic levels.
//! - Matches are reported in no particular order (hash-map order).

use super::FastMap;
use std::fmt;
use std::hash::Hash;
use std::str::Split;
use std::sync::Arc;

/// The entries of one filter, stored at the place in the trie where that filter ends.
struct Leaf<K, V> {
    /// The filter every entry here was subscribed with, handed back on each match.
    filter: Arc<str>,
    /// One value per subscriber key; never empty while the leaf is in the trie.
    subs: FastMap<K, V>,
}

/// One level of the trie: its children and the filters that end here.
struct Node<K, V> {
    /// Children for literal levels (including the empty level `""`).
    literals: FastMap<Box<str>, Node<K, V>>,
    /// Child for a `+` level.
    plus: Option<Box<Node<K, V>>>,
    /// Entries of the filter made of this node's path followed by `/#` (or `#` at the root).
    hash: Option<Leaf<K, V>>,
    /// Entries of the filter that ends exactly at this node.
    exact: Option<Leaf<K, V>>,
}

/// Which of a node's two entry slots a filter ends in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// The filter ends at the node itself.
    Exact,
    /// The filter ends with a `#` level below the node.
    Hash,
}

/// Subscription trie: MQTT topic filters -> subscribers.
pub(crate) struct SubscriptionTree<K, V> {
    /// Root for every filter whose first level does not start with `$`.
    root: Node<K, V>,
    /// Roots for filters whose first level starts with `$`, by that level; literal only, so
    /// no wildcard can ever sit at the first level of a `$` topic.
    dollar: FastMap<Box<str>, Node<K, V>>,
    /// Number of (filter, key) entries.
    len: usize,
    /// Bumped on every change, so callers can drop caches built from an older tree.
    generation: u64,
}

impl<K: Clone + Eq + Hash, V: Clone> SubscriptionTree<K, V> {
    /// Creates an empty tree.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Insert or replace the entry of `key` under `filter`. Returns the old value if `key` already had that filter.
    pub(crate) fn insert(&mut self, filter: &str, key: K, value: V) -> Option<V> {
        let (first, mut levels) = split_filter(filter);
        let mut node = match first {
            Some(first) => self.dollar.entry(Box::from(first)).or_default(),
            None => &mut self.root,
        };
        let mut slot = Slot::Exact;
        for level in levels.by_ref() {
            match level {
                "#" => {
                    slot = Slot::Hash;
                    break;
                }
                "+" => node = node.plus.get_or_insert_with(Box::default),
                literal => node = node.literals.entry(Box::from(literal)).or_default(),
            }
        }
        debug_assert!(levels.next().is_none(), "`#` not last in filter {filter:?}");
        let leaf = node.slot_mut(slot).get_or_insert_with(|| Leaf {
            filter: Arc::from(filter),
            subs: FastMap::default(),
        });
        let old = leaf.subs.insert(key, value);
        if old.is_none() {
            self.len += 1;
        }
        // A replaced value is a change too: a cached match would still hold the old one.
        self.generation = self.generation.wrapping_add(1);
        old
    }

    /// Remove `key`'s entry under `filter`; prunes empty nodes. Returns the removed value.
    pub(crate) fn remove(&mut self, filter: &str, key: &K) -> Option<V> {
        let (first, levels) = split_filter(filter);
        let removed = match first {
            Some(first) => {
                let node = self.dollar.get_mut(first)?;
                let removed = node.remove(levels, key);
                if node.is_empty() {
                    self.dollar.remove(first);
                }
                removed
            }
            None => self.root.remove(levels, key),
        }?;
        self.len -= 1;
        self.generation = self.generation.wrapping_add(1);
        Some(removed)
    }

    /// Call `f(filter, key, value)` for every subscription whose filter matches the topic name `topic`.
    pub(crate) fn for_each_match(&self, topic: &str, mut f: impl FnMut(&str, &K, &V)) {
        let mut levels = topic.split('/');
        match levels.next() {
            // `$` topics are looked up under their own literal root only.
            Some(first) if first.starts_with('$') => {
                if let Some(node) = self.dollar.get(first) {
                    node.for_each_match(levels, &mut f);
                }
            }
            _ => self.root.for_each_match(topic.split('/'), &mut f),
        }
    }

    #[cfg(test)]
    /// Convenience: collect matches (key, value) into a Vec.
    pub(crate) fn matches(&self, topic: &str) -> Vec<(K, V)> {
        let mut out = Vec::new();
        self.for_each_match(topic, |_, key, value| {
            out.push((key.clone(), value.clone()));
        });
        out
    }

    /// Number of (filter, key) entries.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    #[cfg(test)]
    /// Whether the tree holds no entry at all.
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Incremented on every insert/remove that changed the tree (lets callers keep caches).
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }
}

impl<K, V> Default for SubscriptionTree<K, V> {
    /// An empty tree at generation 0.
    fn default() -> Self {
        Self {
            root: Node::default(),
            dollar: FastMap::default(),
            len: 0,
            generation: 0,
        }
    }
}

impl<K, V> fmt::Debug for SubscriptionTree<K, V> {
    /// Sizes only: a broker's tree can hold millions of entries.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubscriptionTree")
            .field("len", &self.len)
            .field("generation", &self.generation)
            .field("dollar_roots", &self.dollar.len())
            .finish_non_exhaustive()
    }
}

/// Splits a filter into its first level when that level starts with `$` (the `dollar`
/// root's key) and the levels still to walk from the chosen root.
fn split_filter(filter: &str) -> (Option<&str>, Split<'_, char>) {
    let mut levels = filter.split('/');
    match levels.next() {
        Some(first) if first.starts_with('$') => (Some(first), levels),
        _ => (None, filter.split('/')),
    }
}

impl<K, V> Default for Node<K, V> {
    /// A node with no children and no entries.
    fn default() -> Self {
        Self {
            literals: FastMap::default(),
            plus: None,
            hash: None,
            exact: None,
        }
    }
}

impl<K, V> Node<K, V> {
    /// Whether the node holds neither entries nor children, so its parent may drop it.
    fn is_empty(&self) -> bool {
        self.literals.is_empty()
            && self.plus.is_none()
            && self.hash.is_none()
            && self.exact.is_none()
    }

    /// The entry slot of this node for filters ending as `slot` says.
    fn slot_mut(&mut self, slot: Slot) -> &mut Option<Leaf<K, V>> {
        match slot {
            Slot::Exact => &mut self.exact,
            Slot::Hash => &mut self.hash,
        }
    }

    /// Reports every entry matching the topic levels left in `levels`, from this node down.
    ///
    /// Literal levels are followed in a loop; only a `+` child costs a recursive call (as in
    /// nats' `matchLevel`). Nothing is allocated.
    fn for_each_match<F>(&self, mut levels: Split<'_, char>, f: &mut F)
    where
        F: FnMut(&str, &K, &V),
    {
        let mut node = self;
        loop {
            // `p/#` matches the rest of the topic, including no level at all (`p` itself).
            if let Some(leaf) = &node.hash {
                leaf.report(f);
            }
            let Some(level) = levels.next() else {
                if let Some(leaf) = &node.exact {
                    leaf.report(f);
                }
                return;
            };
            if let Some(plus) = &node.plus {
                plus.for_each_match(levels.clone(), f);
            }
            match node.literals.get(level) {
                Some(child) => node = child,
                None => return,
            }
        }
    }

    /// Removes `key` from the filter whose remaining levels are `levels`, dropping children
    /// that end up empty. Returns the removed value.
    fn remove(&mut self, mut levels: Split<'_, char>, key: &K) -> Option<V>
    where
        K: Eq + Hash,
    {
        match levels.next() {
            None => take_entry(&mut self.exact, key),
            Some("#") => take_entry(&mut self.hash, key),
            Some("+") => {
                let child = self.plus.as_deref_mut()?;
                let removed = child.remove(levels, key);
                if child.is_empty() {
                    self.plus = None;
                }
                removed
            }
            Some(literal) => {
                let child = self.literals.get_mut(literal)?;
                let removed = child.remove(levels, key);
                if child.is_empty() {
                    self.literals.remove(literal);
                }
                removed
            }
        }
    }
}

impl<K, V> Leaf<K, V> {
    /// Calls `f` with this leaf's filter for each of its entries.
    fn report<F>(&self, f: &mut F)
    where
        F: FnMut(&str, &K, &V),
    {
        for (key, value) in &self.subs {
            f(&self.filter, key, value);
        }
    }
}

/// Removes `key` from the leaf in `slot`, emptying the slot when its last entry goes.
fn take_entry<K: Eq + Hash, V>(slot: &mut Option<Leaf<K, V>>, key: &K) -> Option<V> {
    let leaf = slot.as_mut()?;
    let removed = leaf.subs.remove(key);
    if leaf.subs.is_empty() {
        *slot = None;
    }
    removed
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    /// Brute-force MQTT matcher: compares filter and topic level by level.
    fn naive_match(filter: &str, topic: &str) -> bool {
        let f: Vec<&str> = filter.split('/').collect();
        let t: Vec<&str> = topic.split('/').collect();
        if topic.starts_with('$') && (f[0] == "+" || f[0] == "#") {
            return false;
        }
        let mut i = 0;
        loop {
            match (f.get(i), t.get(i)) {
                (Some(&"#"), _) => return true,
                (Some(&"+"), Some(_)) => {}
                (Some(a), Some(b)) if a == b => {}
                (None, None) => return true,
                _ => return false,
            }
            i += 1;
        }
    }

    /// Every (filter, key, value) reported for `topic`, sorted.
    fn matched<K: Clone + Eq + Hash + Ord, V: Clone + Ord>(
        tree: &SubscriptionTree<K, V>,
        topic: &str,
    ) -> Vec<(String, K, V)> {
        let mut out = Vec::new();
        tree.for_each_match(topic, |filter, key, value| {
            out.push((filter.to_owned(), key.clone(), value.clone()));
        });
        out.sort();
        out
    }

    /// Walks the whole trie checking pruning and leaf invariants; returns the entry count.
    fn check_node<K, V>(node: &Node<K, V>, is_root: bool) -> usize {
        assert!(is_root || !node.is_empty(), "empty node left in the trie");
        let mut count = 0;
        for leaf in [&node.exact, &node.hash].into_iter().flatten() {
            assert!(!leaf.subs.is_empty(), "empty leaf left in the trie");
            count += leaf.subs.len();
        }
        for child in node.literals.values() {
            count += check_node(child, false);
        }
        if let Some(plus) = &node.plus {
            count += check_node(plus, false);
        }
        count
    }

    /// Asserts the structural invariants of `tree` and that `len` counts its entries.
    fn check_invariants<K, V>(tree: &SubscriptionTree<K, V>) {
        let mut count = check_node(&tree.root, true);
        for node in tree.dollar.values() {
            count += check_node(node, false);
        }
        assert_eq!(count, tree.len);
        if tree.len == 0 {
            assert!(tree.root.is_empty() && tree.dollar.is_empty());
        }
    }

    /// (filter, topic, should_match): every rule of MQTT §4.7 and the module docs' lists.
    const CASES: &[(&str, &str, bool)] = &[
        // The module docs' list against `a/b/c`.
        ("a/b/c", "a/b/c", true),
        ("a/b/+", "a/b/c", true),
        ("a/+/c", "a/b/c", true),
        ("+/b/c", "a/b/c", true),
        ("+/+/+", "a/b/c", true),
        ("a/+/+", "a/b/c", true),
        ("+/+/c", "a/b/c", true),
        ("#", "a/b/c", true),
        ("+/#", "a/b/c", true),
        ("a/#", "a/b/c", true),
        ("a/b/#", "a/b/c", true),
        ("a/b/c/#", "a/b/c", true),
        ("+/b/#", "a/b/c", true),
        ("a/+/c/#", "a/b/c", true),
        ("a/b", "a/b/c", false),
        ("a/+", "a/b/c", false),
        ("+/b", "a/b/c", false),
        ("+/+", "a/b/c", false),
        ("b/c/a", "a/b/c", false),
        ("a/b/d", "a/b/c", false),
        ("a/b/c/d", "a/b/c", false),
        ("a/b/c/+", "a/b/c", false),
        ("+/+/+/+", "a/b/c", false),
        ("/a/b/c", "a/b/c", false),
        ("a/b/c/", "a/b/c", false),
        ("a//b/c", "a/b/c", false),
        ("A/b/c", "a/b/c", false),
        // `#` matches the parent level and any number of children.
        ("sport/#", "sport", true),
        ("sport/#", "sport/", true),
        ("sport/#", "sport/a/b", true),
        ("sport/tennis/player1/#", "sport/tennis/player1", true),
        (
            "sport/tennis/player1/#",
            "sport/tennis/player1/score/wimbledon",
            true,
        ),
        ("sport/#", "sports", false),
        ("sport/#", "other/sport", false),
        ("#", "sport", true),
        ("#", "/", true),
        ("#", "/finance", true),
        ("+/#", "a", true),
        ("+/#", "/", true),
        // `+` matches exactly one level, an empty one included.
        ("sport/tennis/+", "sport/tennis/player1", true),
        ("sport/tennis/+", "sport/tennis/player1/ranking", false),
        ("sport/tennis/+", "sport/tennis", false),
        ("sport/+", "sport", false),
        ("sport/+", "sport/", true),
        ("+", "a", true),
        ("+/+", "a", false),
        ("+/a", "/a", true),
        ("+/+", "/", true),
        // Empty levels are real levels.
        ("+/+", "/finance", true),
        ("/+", "/finance", true),
        ("+", "/finance", false),
        ("+", "/a", false),
        ("/a", "a", false),
        ("a", "/a", false),
        ("/", "/", true),
        ("a//b", "a//b", true),
        ("a/+/b", "a//b", true),
        ("a/b", "a//b", false),
        ("a//b", "a/b", false),
        // `$` topics: no wildcard at the first level, literals do match.
        ("#", "$SYS/broker/load", false),
        ("#", "$SYS", false),
        ("+", "$SYS", false),
        ("+/#", "$SYS/broker/load", false),
        ("+/broker/load", "$SYS/broker/load", false),
        ("+/+/+", "$SYS/broker/load", false),
        ("$SYS/#", "$SYS/broker/load", true),
        ("$SYS/#", "$SYS", true),
        ("$SYS/#", "$SYS/", true),
        ("$SYS/+/load", "$SYS/broker/load", true),
        ("$SYS/broker/+", "$SYS/broker/load", true),
        ("$SYS/broker/load", "$SYS/broker/load", true),
        ("$SYS/+", "$SYS/broker/load", false),
        ("$SYS/#", "$OTHER/x", false),
        ("$SYS", "$SYS/broker", false),
        ("$SYS/broker/load", "SYS/broker/load", false),
        // Only the first level is special: deeper `$` levels are ordinary.
        ("a/$SYS", "a/$SYS", true),
        ("a/+", "a/$SYS", true),
        ("a/#", "a/$b", true),
    ];

    /// Each table row, alone in a tree, matches its topic exactly when it should; the
    /// brute-force matcher used by the property tests agrees with every row.
    #[test]
    fn table_of_filters_and_topics() {
        for &(filter, topic, should_match) in CASES {
            assert_eq!(
                naive_match(filter, topic),
                should_match,
                "naive: {filter:?} vs {topic:?}"
            );
            let mut tree = SubscriptionTree::new();
            tree.insert(filter, 1u32, ());
            let got = matched(&tree, topic);
            let want = if should_match {
                vec![(filter.to_owned(), 1, ())]
            } else {
                vec![]
            };
            assert_eq!(got, want, "trie: {filter:?} vs {topic:?}");
        }
    }

    /// All table rows in one tree at once: each topic gets exactly its matching rows.
    #[test]
    fn table_in_one_tree() {
        let mut tree = SubscriptionTree::new();
        for (i, &(filter, _, _)) in CASES.iter().enumerate() {
            tree.insert(filter, i, ());
        }
        check_invariants(&tree);
        for &(_, topic, _) in CASES {
            let got: Vec<String> = matched(&tree, topic)
                .into_iter()
                .map(|(f, _, _)| f)
                .collect();
            let mut want: Vec<String> = CASES
                .iter()
                .enumerate()
                .filter(|(_, (f, _, _))| naive_match(f, topic))
                .map(|(_, (f, _, _))| (*f).to_owned())
                .collect();
            want.sort();
            let mut got = got;
            got.sort();
            assert_eq!(got, want, "topic {topic:?}");
        }
    }

    /// Inserting the same (filter, key) again replaces the value and returns the old one.
    #[test]
    fn insert_replaces_value_of_same_filter_and_key() {
        let mut tree = SubscriptionTree::new();
        assert_eq!(tree.insert("a/+", "c1", 0u8), None);
        let g = tree.generation();
        assert_eq!(tree.insert("a/+", "c1", 2), Some(0));
        assert!(
            tree.generation() > g,
            "a replaced value must move the generation"
        );
        assert_eq!(tree.len(), 1);
        assert_eq!(tree.matches("a/b"), vec![("c1", 2)]);
        check_invariants(&tree);
    }

    /// One key under several matching filters is reported once per filter, with that filter.
    #[test]
    fn overlapping_filters_of_one_key_reported_once_per_filter() {
        let mut tree = SubscriptionTree::new();
        for (i, filter) in ["a/b", "a/+", "a/#", "#", "+/+", "a/b/#", "b/#"]
            .into_iter()
            .enumerate()
        {
            tree.insert(filter, "c1", i);
        }
        tree.insert("a/b", "c2", 9);
        assert_eq!(tree.len(), 8);
        let got = matched(&tree, "a/b");
        let want: Vec<(String, &str, usize)> = vec![
            ("#".into(), "c1", 3),
            ("+/+".into(), "c1", 4),
            ("a/#".into(), "c1", 2),
            ("a/+".into(), "c1", 1),
            ("a/b".into(), "c1", 0),
            ("a/b".into(), "c2", 9),
            ("a/b/#".into(), "c1", 5),
        ];
        assert_eq!(got, want);
        assert_eq!(tree.matches("a/b").len(), 7);
    }

    /// `p` and `p/#` are distinct filters, both reported for the topic `p`.
    #[test]
    fn exact_and_hash_of_same_path_are_distinct() {
        let mut tree = SubscriptionTree::new();
        tree.insert("p", 1, 'e');
        tree.insert("p/#", 1, 'h');
        assert_eq!(tree.len(), 2);
        assert_eq!(
            matched(&tree, "p"),
            vec![("p".into(), 1, 'e'), ("p/#".into(), 1, 'h')]
        );
        assert_eq!(matched(&tree, "p/q"), vec![("p/#".into(), 1, 'h')]);
        assert_eq!(tree.remove("p", &1), Some('e'));
        assert_eq!(matched(&tree, "p"), vec![("p/#".into(), 1, 'h')]);
    }

    /// Removing every entry leaves a bare root, an empty tree and a moved generation.
    #[test]
    fn remove_everything_prunes_to_empty_root() {
        let filters = [
            "a/b/c", "a/b", "a/+/c", "+/#", "#", "/", "a//b", "$SYS/#", "$SYS/+/x", "$s",
        ];
        let mut tree = SubscriptionTree::new();
        for filter in filters {
            tree.insert(filter, 1u8, filter.len());
            tree.insert(filter, 2u8, 0);
        }
        assert_eq!(tree.len(), 2 * filters.len());
        let g = tree.generation();
        for filter in filters {
            assert_eq!(tree.remove(filter, &1), Some(filter.len()));
            check_invariants(&tree);
            assert_eq!(tree.remove(filter, &2), Some(0));
            check_invariants(&tree);
        }
        assert!(tree.is_empty());
        assert_eq!(tree.len(), 0);
        assert!(tree.root.is_empty() && tree.dollar.is_empty());
        assert_eq!(tree.generation(), g + 2 * filters.len() as u64);
        assert!(tree.matches("a/b/c").is_empty());
    }

    /// A remove that finds nothing returns `None` and leaves the generation alone.
    #[test]
    fn remove_missing_entry_changes_nothing() {
        let mut tree = SubscriptionTree::new();
        tree.insert("a/+", 1, ());
        let g = tree.generation();
        assert_eq!(tree.remove("a/+", &2), None);
        assert_eq!(tree.remove("a/b", &1), None);
        assert_eq!(tree.remove("a/#", &1), None);
        assert_eq!(tree.remove("a", &1), None);
        assert_eq!(tree.remove("$a/+", &1), None);
        assert_eq!(tree.generation(), g);
        assert_eq!(tree.len(), 1);
        check_invariants(&tree);
    }

    /// Pruning stops at nodes still holding other filters.
    #[test]
    fn remove_keeps_nodes_still_in_use() {
        let mut tree = SubscriptionTree::new();
        tree.insert("a/b", 1, ());
        tree.insert("a/b/c/d", 1, ());
        assert_eq!(tree.remove("a/b/c/d", &1), Some(()));
        check_invariants(&tree);
        assert_eq!(tree.matches("a/b"), vec![(1, ())]);
        assert_eq!(tree.remove("a/b", &1), Some(()));
        assert!(tree.root.is_empty());
    }

    /// A new tree and a default tree are empty at generation 0 and match nothing.
    #[test]
    fn new_and_default_are_empty() {
        let tree: SubscriptionTree<u8, ()> = SubscriptionTree::default();
        assert!(tree.is_empty());
        assert_eq!(tree.generation(), 0);
        assert!(tree.matches("a").is_empty());
        assert_eq!(SubscriptionTree::<u8, ()>::new().len(), 0);
        assert!(format!("{tree:?}").contains("len: 0"));
    }

    /// Filter levels for the property tests; `#` is cut to be the last level.
    const FILTER_LEVELS: [&str; 6] = ["a", "b", "", "$s", "+", "#"];
    /// Topic levels for the property tests.
    const TOPIC_LEVELS: [&str; 4] = ["a", "b", "", "$s"];

    /// Valid filters of 1 to 4 levels: anything after a `#` is dropped.
    fn filter_strategy() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(&FILTER_LEVELS[..]), 1..=4).prop_map(|levels| {
            let end = levels
                .iter()
                .position(|l| *l == "#")
                .map_or(levels.len(), |i| i + 1);
            levels[..end].join("/")
        })
    }

    /// Topic names of 1 to 4 levels.
    fn topic_strategy() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(&TOPIC_LEVELS[..]), 1..=4)
            .prop_map(|l| l.join("/"))
    }

    /// A remove in the property test: an entry inserted earlier, or any (filter, key).
    #[derive(Debug, Clone)]
    enum Removal {
        /// Removes the (filter, key) of the insert at this index.
        Inserted(prop::sample::Index),
        /// Removes a random (filter, key), most often absent.
        Any(String, u8),
    }

    proptest! {
        /// The trie reports exactly the (filter, key, value) that the brute-force matcher picks.
        #[test]
        fn matches_agree_with_brute_force(
            subs in prop::collection::vec((filter_strategy(), 0u8..3), 0..24),
            topics in prop::collection::vec(topic_strategy(), 1..16),
        ) {
            let mut tree = SubscriptionTree::new();
            let mut model = BTreeMap::new();
            for (i, (filter, key)) in subs.iter().enumerate() {
                let old = tree.insert(filter, *key, i);
                prop_assert_eq!(old, model.insert((filter.clone(), *key), i));
            }
            prop_assert_eq!(tree.len(), model.len());
            check_invariants(&tree);
            for topic in &topics {
                let want: Vec<(String, u8, usize)> = model
                    .iter()
                    .filter(|((f, _), _)| naive_match(f, topic))
                    .map(|((f, k), v)| (f.clone(), *k, *v))
                    .collect();
                prop_assert_eq!(matched(&tree, topic), want, "topic {:?}", topic);
            }
        }

        /// Inserts then removes agree with a `Vec` model: returns, len, generation, matches.
        #[test]
        fn inserts_and_removes_agree_with_vec_model(
            subs in prop::collection::vec((filter_strategy(), 0u8..3), 0..24),
            removals in prop::collection::vec(prop_oneof![
                any::<prop::sample::Index>().prop_map(Removal::Inserted),
                (filter_strategy(), 0u8..3).prop_map(|(f, k)| Removal::Any(f, k)),
            ], 0..24),
            topics in prop::collection::vec(topic_strategy(), 1..8),
        ) {
            let mut tree = SubscriptionTree::new();
            let mut model: Vec<(String, u8, usize)> = Vec::new();
            for (i, (filter, key)) in subs.iter().enumerate() {
                let g = tree.generation();
                let old = tree.insert(filter, *key, i);
                let slot = model.iter_mut().find(|(f, k, _)| f == filter && k == key);
                let want_old = match slot {
                    Some(entry) => Some(std::mem::replace(&mut entry.2, i)),
                    None => {
                        model.push((filter.clone(), *key, i));
                        None
                    }
                };
                prop_assert_eq!(old, want_old);
                prop_assert_eq!(tree.generation(), g + 1);
            }
            for removal in &removals {
                let (filter, key) = match removal {
                    Removal::Inserted(_) if subs.is_empty() => continue,
                    Removal::Inserted(index) => index.get(&subs).clone(),
                    Removal::Any(filter, key) => (filter.clone(), *key),
                };
                let g = tree.generation();
                let removed = tree.remove(&filter, &key);
                let at = model.iter().position(|(f, k, _)| *f == filter && *k == key);
                let want = at.map(|at| model.swap_remove(at).2);
                prop_assert_eq!(removed, want);
                prop_assert_eq!(tree.generation(), g + u64::from(removed.is_some()));
                prop_assert_eq!(tree.len(), model.len());
                check_invariants(&tree);
            }
            for topic in &topics {
                let mut want: Vec<(String, u8, usize)> = model
                    .iter()
                    .filter(|(f, _, _)| naive_match(f, topic))
                    .cloned()
                    .collect();
                want.sort();
                prop_assert_eq!(matched(&tree, topic), want, "topic {:?}", topic);
            }
            for (filter, key, value) in std::mem::take(&mut model) {
                prop_assert_eq!(tree.remove(&filter, &key), Some(value));
            }
            prop_assert!(tree.is_empty());
            check_invariants(&tree);
        }
    }
}
