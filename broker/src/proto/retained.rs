//! Retained messages indexed by topic name, walked by topic filters (MQTT 3.1.1 §3.3.1.3
//! and §4.7, MQTT 5 §3.3.1.3 and §4.7).
//!
//! A SUBSCRIBE must deliver every retained message whose topic matches the new filter
//! (MQTT-3.3.1-6). Instead of testing the filter against every retained topic, the filter
//! walks a trie of the retained topics' levels and only enters the nodes it can match.
//! Against the retained topic `a/b/c`:
//!
//! ```text
//! Matching:                 a/b/c  a/b/+  a/+/c  +/b/c  +/+/+  #  +/#  a/#  a/b/#  a/b/c/#
//! Valid but non-matching:   a/b  a/+  +/+  a/b/c/d  a/b/c/+  /a/b/c  a/b/c/  a//b/c  A/b/c
//! ```
//!
//! and against the retained topic `$SYS/broker/load`:
//!
//! ```text
//! Matching:                 $SYS/#  $SYS/+/load  $SYS/broker/+  $SYS/broker/load
//! Valid but non-matching:   #  +/#  +/broker/load  +/+/+
//! ```
//!
//! `+` stands for exactly one whole level, an empty one included (`a/+` matches `a/`); `#`
//! for the parent level and any number below it (`a/#` matches `a`, `a/` and `a/b/c`). Empty
//! levels are levels: `/a` is `""` then `a`. A first-level `+` or `#` never matches a topic
//! whose first level starts with `$` (MQTT-4.7.2-1); deeper `$` levels are ordinary.
//!
//! # Order and cursors
//!
//! Matches are visited in one fixed total order: topics compared level by level as strings
//! (bytewise), a topic before the topics below it (`a` < `a/` < `a/b` < `a0`). That is the
//! pre-order of the trie with children kept sorted (`BTreeMap`). A walk may stop after
//! `limit` matches and hand back a [`Cursor`] (the last topic visited); a later walk given
//! that cursor visits only topics strictly after it, by comparing levels, not by holding a
//! node. So the trie may change between the two walks: a topic present throughout is
//! visited exactly once, one inserted or removed meanwhile at most once.
//!
//! # Invariants
//!
//! - Topics given to this module are valid topic names (no `+`/`#`, checked by the
//!   caller) and filters are valid filters: `#` only as the whole last level, `+` only as a
//!   whole level. Shared-subscription prefixes are stripped by the caller.
//! - The root holds no entry; every other node holds an entry or a child (a remove prunes
//!   the chain of nodes it empties), so memory is proportional to the live entries.
//! - `len` is the number of entries; `expiries` holds exactly one key per entry that has an
//!   expiry, and that entry's `expiry` field names it.
//! - Walks recurse once per topic level, so the stack depth is bounded by the configured
//!   maximum number of topic levels; insert, get and remove are iterative.
//! - Nothing here reads a clock: time comes in as an `Instant` argument.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Bound::{Excluded, Included, Unbounded};
use std::sync::Arc;
use std::time::Instant;

/// Where an entry sits in the expiry order: its instant, then a sequence number so that
/// equal instants pop in insertion order and every key is unique.
type ExpiryKey = (Instant, u64);

/// One retained value, stored at the trie node its topic ends at.
struct Entry<V> {
    /// The full topic name, handed back on each match.
    topic: Arc<str>,
    /// The retained value.
    value: V,
    /// Its key in `RetainedIndex::expiries`, when it expires.
    expiry: Option<ExpiryKey>,
}

/// One topic level: the retained topic ending here, if any, and the levels below.
struct Node<V> {
    /// Children by level, sorted so walks follow the fixed visiting order.
    children: BTreeMap<Box<str>, Node<V>>,
    /// The retained topic that ends exactly at this node.
    entry: Option<Entry<V>>,
}

impl<V> Default for Node<V> {
    /// A node with no entry and no children.
    fn default() -> Self {
        Self {
            children: BTreeMap::new(),
            entry: None,
        }
    }
}

/// Where a resumed walk starts: strictly after the topic it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cursor {
    /// The last topic visited; `None` only for a walk stopped before its first visit
    /// (`limit` 0), which resumes from the start.
    after: Option<Arc<str>>,
}

impl Cursor {
    /// Resumes strictly after `topic` (a page's `next`).
    pub(crate) fn after(topic: &str) -> Cursor {
        Cursor {
            after: Some(Arc::from(topic)),
        }
    }

    /// The topic a resumed walk starts after (`None`: from the start).
    pub(crate) fn topic(&self) -> Option<&str> {
        self.after.as_deref()
    }

    #[cfg(test)]
    /// The last topic visited before the walk stopped, if any.
    pub(crate) fn last_topic(&self) -> Option<&Arc<str>> {
        self.after.as_ref()
    }
}

/// Retained messages by topic: a trie a filter walks, plus an ordered set of expiries.
pub(crate) struct RetainedIndex<V> {
    /// Level zero; holds no entry (every topic has at least one level).
    root: Node<V>,
    /// Number of entries.
    len: usize,
    /// Entries that expire, earliest first, by topic.
    expiries: BTreeMap<ExpiryKey, Arc<str>>,
    /// Next tie-breaking sequence number for `expiries`.
    next_seq: u64,
}

/// What a walk cost, for the tests that bound it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct WalkStats {
    /// Trie nodes entered.
    nodes: usize,
    /// Entries handed to the callback.
    visited: usize,
}

impl<V> RetainedIndex<V> {
    /// Creates an empty index.
    pub(crate) fn new() -> Self {
        Self {
            root: Node::default(),
            len: 0,
            expiries: BTreeMap::new(),
            next_seq: 0,
        }
    }

    /// Number of retained topics.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    #[cfg(test)]
    /// Whether no topic is retained.
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The value retained under exactly `topic`.
    pub(crate) fn get(&self, topic: &str) -> Option<&V> {
        let mut node = &self.root;
        for level in topic.split('/') {
            node = node.children.get(level)?;
        }
        node.entry.as_ref().map(|e| &e.value)
    }

    /// Sets the retained value of `topic` (replacing any, with its expiry), expiring at
    /// `expires_at` if given. Returns the value replaced.
    pub(crate) fn insert(
        &mut self,
        topic: Arc<str>,
        value: V,
        expires_at: Option<Instant>,
    ) -> Option<V> {
        let expiry = expires_at.map(|at| {
            let key = (at, self.next_seq);
            self.next_seq += 1;
            self.expiries.insert(key, topic.clone());
            key
        });
        let mut node = &mut self.root;
        for level in topic.split('/') {
            node = node.children.entry(Box::from(level)).or_default();
        }
        let old = node.entry.replace(Entry {
            topic,
            value,
            expiry,
        });
        match old {
            Some(old) => {
                if let Some(key) = old.expiry {
                    self.expiries.remove(&key);
                }
                Some(old.value)
            }
            None => {
                self.len += 1;
                None
            }
        }
    }

    /// Removes the value retained under `topic` (and its expiry), pruning the nodes it
    /// leaves empty. Returns the value removed.
    pub(crate) fn remove(&mut self, topic: &str) -> Option<V> {
        let levels: Vec<&str> = topic.split('/').collect();
        // Pass 1, read-only: is there an entry, and from which ancestor does the chain of
        // nodes that only exist for it start? That ancestor (`keep`) stays.
        let mut node = &self.root;
        let mut keep = 0;
        for (depth, level) in levels.iter().enumerate() {
            if depth > 0 && (node.entry.is_some() || node.children.len() > 1) {
                keep = depth;
            }
            node = node.children.get(*level)?;
        }
        node.entry.as_ref()?;
        let entry = if node.children.is_empty() {
            // Pass 2: cut the chain below `keep` and take the entry from its far end.
            let mut parent = &mut self.root;
            for level in &levels[..keep] {
                parent = parent.children.get_mut(*level)?;
            }
            let mut cut = parent.children.remove(levels[keep])?;
            for level in &levels[keep + 1..] {
                cut = cut.children.remove(*level)?;
            }
            cut.entry?
        } else {
            // Nodes below still hold entries: only the entry goes.
            let mut node = &mut self.root;
            for level in &levels {
                node = node.children.get_mut(*level)?;
            }
            node.entry.take()?
        };
        if let Some(key) = entry.expiry {
            self.expiries.remove(&key);
        }
        self.len -= 1;
        Some(entry.value)
    }

    /// Visits retained topics matching the topic filter `filter`, in the module's fixed
    /// order, starting strictly after `after` (a cursor from an earlier walk with the same
    /// filter; `None` starts from the beginning), at most `limit` of them.
    ///
    /// Returns the cursor to resume from when more matches remain, `None` when the walk
    /// is complete. Cost: the walk enters only nodes whose path matches a prefix of the
    /// filter (a literal filter enters one node per level, and a filter matching nothing
    /// visits no entry), plus O(levels · log fanout) to skip what precedes the cursor.
    /// `limit` bounds the entries visited, not the nodes entered: a `+` over a wide level
    /// whose subtrees hold no match is crossed in one call. Finding out that a match
    /// remains after the `limit`-th costs the search up to that next match.
    pub(crate) fn for_each_match(
        &self,
        filter: &str,
        after: Option<&Cursor>,
        limit: usize,
        f: impl FnMut(&Arc<str>, &V),
    ) -> Option<Cursor> {
        self.walk(filter, after, limit, f).0
    }

    /// Visits every entry (those under `$` first levels too), in the walk order, after
    /// `after`, at most `limit`; returns where to resume, or `None` when done.
    pub(crate) fn walk_all(
        &self,
        after: Option<&Cursor>,
        limit: usize,
        f: impl FnMut(&Arc<str>, &V),
    ) -> Option<Cursor> {
        let cursor_topic = after.and_then(|c| c.after.as_deref());
        let cursor_levels: Option<Vec<&str>> = cursor_topic.map(|t| t.split('/').collect());
        let mut walk = Walk {
            f,
            limit,
            last: None,
            stopped: false,
            stats: WalkStats::default(),
        };
        // Not `at_root`: nothing is skipped, `$` first levels included.
        walk.subtree(&self.root, false, cursor_levels.as_deref());
        walk.stopped.then(|| Cursor {
            after: walk
                .last
                .cloned()
                .or_else(|| after.and_then(|c| c.after.clone())),
        })
    }

    /// [`Self::for_each_match`], also reporting what the walk cost.
    fn walk(
        &self,
        filter: &str,
        after: Option<&Cursor>,
        limit: usize,
        f: impl FnMut(&Arc<str>, &V),
    ) -> (Option<Cursor>, WalkStats) {
        let filter_levels: Vec<&str> = filter.split('/').collect();
        let cursor_topic = after.and_then(|c| c.after.as_deref());
        let cursor_levels: Option<Vec<&str>> = cursor_topic.map(|t| t.split('/').collect());
        let mut walk = Walk {
            f,
            limit,
            last: None,
            stopped: false,
            stats: WalkStats::default(),
        };
        walk.filter(&self.root, true, &filter_levels, cursor_levels.as_deref());
        let cursor = walk.stopped.then(|| Cursor {
            after: walk
                .last
                .cloned()
                .or_else(|| after.and_then(|c| c.after.clone())),
        });
        (cursor, walk.stats)
    }

    /// Removes and returns up to `limit` entries whose expiry is at or before `now`,
    /// earliest first (equal instants in insertion order). Costs O(log n) per entry
    /// returned, never a scan of the unexpired ones.
    pub(crate) fn pop_expired(&mut self, now: Instant, limit: usize) -> Vec<(Arc<str>, V)> {
        let mut out = Vec::new();
        while out.len() < limit {
            match self.expiries.first_key_value() {
                Some((&(at, _), _)) if at <= now => {}
                _ => break,
            }
            let Some((_, topic)) = self.expiries.pop_first() else {
                break;
            };
            // The expiry key is gone already; `remove` finds nothing more to unlink.
            if let Some(value) = self.remove(&topic) {
                out.push((topic, value));
            }
        }
        out
    }

    /// The earliest expiry of any entry (for the core's next timeout).
    pub(crate) fn next_expiry(&self) -> Option<Instant> {
        self.expiries.first_key_value().map(|(&(at, _), _)| at)
    }

    #[cfg(test)]
    /// Every entry (for snapshots); in the module's fixed order, though callers should
    /// not rely on it.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&Arc<str>, &V)> {
        Iter {
            stack: vec![self.root.children.values()],
        }
    }
}

impl<V> Default for RetainedIndex<V> {
    /// An empty index.
    fn default() -> Self {
        Self::new()
    }
}

impl<V> fmt::Debug for RetainedIndex<V> {
    /// Sizes only: a broker may retain millions of topics.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetainedIndex")
            .field("len", &self.len)
            .field("expiring", &self.expiries.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
/// Pre-order iterator over the entries of the trie.
struct Iter<'a, V> {
    /// Children still to visit, one iterator per level of the current path.
    stack: Vec<std::collections::btree_map::Values<'a, Box<str>, Node<V>>>,
}

#[cfg(test)]
impl<'a, V> Iterator for Iter<'a, V> {
    type Item = (&'a Arc<str>, &'a V);

    /// The next entry in pre-order.
    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let top = self.stack.last_mut()?;
            match top.next() {
                Some(node) => {
                    self.stack.push(node.children.values());
                    if let Some(e) = &node.entry {
                        return Some((&e.topic, &e.value));
                    }
                }
                None => {
                    self.stack.pop();
                }
            }
        }
    }
}

/// The state of one walk of a filter over the trie.
struct Walk<'a, F> {
    /// The caller's callback.
    f: F,
    /// Most entries to hand to `f`.
    limit: usize,
    /// The last topic handed to `f`.
    last: Option<&'a Arc<str>>,
    /// Set on finding a match beyond `limit`: the walk unwinds and returns a cursor.
    stopped: bool,
    /// What the walk cost.
    stats: WalkStats,
}

impl<'a, F> Walk<'a, F> {
    /// Hands `entry` to the callback, or stops the walk if `limit` is reached.
    fn visit<V>(&mut self, entry: &'a Entry<V>)
    where
        F: FnMut(&Arc<str>, &V),
    {
        if self.stats.visited == self.limit {
            self.stopped = true;
            return;
        }
        (self.f)(&entry.topic, &entry.value);
        self.stats.visited += 1;
        self.last = Some(&entry.topic);
    }

    /// Visits the entries at or below `node` matched by the filter levels left in
    /// `filter`. `cursor` is `None` when everything here comes after the cursor, or the
    /// cursor's levels left below `node` when `node` lies on the cursor's path.
    fn filter<V>(
        &mut self,
        node: &'a Node<V>,
        at_root: bool,
        filter: &[&str],
        cursor: Option<&'a [&'a str]>,
    ) where
        F: FnMut(&Arc<str>, &V),
    {
        if self.stopped {
            return;
        }
        match filter {
            // `p/#` matches `p` and everything below it (MQTT-4.7.1-2).
            ["#", ..] => self.subtree(node, at_root, cursor),
            [] => {
                self.stats.nodes += 1;
                // On the cursor's path, this node is the cursor or precedes it.
                if cursor.is_none() {
                    if let Some(entry) = &node.entry {
                        self.visit(entry);
                    }
                }
            }
            // `+` matches one whole level, but no `$` first level (MQTT-4.7.2-1).
            ["+", rest @ ..] => {
                self.stats.nodes += 1;
                for (child, child_cursor) in children(node, cursor, at_root) {
                    self.filter(child, false, rest, child_cursor);
                    if self.stopped {
                        return;
                    }
                }
            }
            [literal, rest @ ..] => {
                self.stats.nodes += 1;
                let child_cursor = match cursor {
                    Some([first, below @ ..]) => match (*literal).cmp(*first) {
                        // Everything down this literal precedes the cursor.
                        std::cmp::Ordering::Less => return,
                        std::cmp::Ordering::Equal => Some(below),
                        std::cmp::Ordering::Greater => None,
                    },
                    _ => None,
                };
                if let Some(child) = node.children.get(*literal) {
                    self.filter(child, false, rest, child_cursor);
                }
            }
        }
    }

    /// Visits `node`'s entry and every entry below it, in order, after the cursor.
    fn subtree<V>(&mut self, node: &'a Node<V>, at_root: bool, cursor: Option<&'a [&'a str]>)
    where
        F: FnMut(&Arc<str>, &V),
    {
        self.stats.nodes += 1;
        if cursor.is_none() {
            if let Some(entry) = &node.entry {
                self.visit(entry);
            }
        }
        for (child, child_cursor) in children(node, cursor, at_root) {
            if self.stopped {
                return;
            }
            self.subtree(child, false, child_cursor);
        }
    }
}

/// The children of `node` a walk still has to enter, in order, each with its part of the
/// cursor (see [`Walk::filter`]); with `skip_dollar`, children whose level starts with `$`
/// are left out by range (they sort between `$` and `%`), never looked at one by one.
fn children<'a, V>(
    node: &'a Node<V>,
    cursor: Option<&'a [&'a str]>,
    skip_dollar: bool,
) -> impl Iterator<Item = (&'a Node<V>, Option<&'a [&'a str]>)> + 'a {
    // The child on the cursor's path (still bounded by the cursor), then those after it.
    let (on_path, after) = match cursor {
        Some([first, below @ ..]) => {
            let child = node.children.get(*first).map(|c| (c, Some(below)));
            let child = child.filter(|_| !(skip_dollar && first.starts_with('$')));
            (child, Some(*first))
        }
        _ => (None, None),
    };
    let lower = after.map_or(Unbounded, Excluded);
    let (below_dollar, rest_lower) = if skip_dollar {
        // Keys starting with `$` are exactly those in `"$"..` `"%"`.
        let below = match after {
            Some(a) if a >= "$" => None,
            _ => Some(node.children.range::<str, _>((lower, Excluded("$")))),
        };
        let rest = match after {
            Some(a) if a >= "%" => lower,
            _ => Included("%"),
        };
        (below, rest)
    } else {
        (None, lower)
    };
    let rest = node.children.range::<str, _>((rest_lower, Unbounded));
    on_path.into_iter().chain(
        below_dollar
            .into_iter()
            .flatten()
            .chain(rest)
            .map(|(_, child)| (child, None)),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use mote_codec::topic::matches;
    use proptest::prelude::*;
    use std::collections::{BTreeSet, HashMap};
    use std::time::Duration;

    /// The fixed visiting order: level by level, a prefix first.
    fn order_key(topic: &str) -> Vec<&str> {
        topic.split('/').collect()
    }

    /// Every topic `filter` matches in one unlimited walk.
    fn walk_all<V>(index: &RetainedIndex<V>, filter: &str) -> Vec<String> {
        let mut out = Vec::new();
        let cursor = index.for_each_match(filter, None, usize::MAX, |t, _| out.push(t.to_string()));
        assert_eq!(cursor, None, "an unlimited walk completes");
        out
    }

    /// The same walk in steps of `limit`, concatenated.
    fn walk_in_steps<V>(index: &RetainedIndex<V>, filter: &str, limit: usize) -> Vec<String> {
        let mut out = Vec::new();
        let mut cursor = None;
        let mut calls = 0;
        loop {
            let before = out.len();
            cursor = index.for_each_match(filter, cursor.as_ref(), limit, |t, _| {
                out.push(t.to_string());
            });
            assert!(out.len() - before <= limit, "a step visits at most `limit`");
            calls += 1;
            assert!(calls <= index.len() + 2, "the walk must make progress");
            if cursor.is_none() {
                return out;
            }
            assert_eq!(
                out.len() - before,
                limit,
                "a stopped step used its whole limit"
            );
        }
    }

    /// Walks the trie checking pruning and entry invariants; returns the entry count.
    fn check_node<V>(node: &Node<V>, path: &str, is_root: bool, expiring: &mut usize) -> usize {
        assert!(
            is_root || node.entry.is_some() || !node.children.is_empty(),
            "empty node left at {path:?}"
        );
        let mut count = 0;
        if let Some(entry) = &node.entry {
            assert!(!is_root, "the root holds no entry");
            assert_eq!(&*entry.topic, path);
            count += 1;
            *expiring += usize::from(entry.expiry.is_some());
        }
        for (level, child) in &node.children {
            let child_path = if is_root {
                level.to_string()
            } else {
                format!("{path}/{level}")
            };
            count += check_node(child, &child_path, false, expiring);
        }
        count
    }

    /// Asserts the structural invariants and that `len` and `expiries` agree with the trie.
    fn check_invariants<V>(index: &RetainedIndex<V>) {
        let mut expiring = 0;
        assert_eq!(check_node(&index.root, "", true, &mut expiring), index.len);
        assert_eq!(expiring, index.expiries.len());
        for (key, topic) in &index.expiries {
            let mut node = &index.root;
            for level in topic.split('/') {
                node = &node.children[level];
            }
            assert_eq!(node.entry.as_ref().unwrap().expiry, Some(*key));
        }
    }

    /// (filter, topic, matches) rows: the rules of MQTT §4.7 this index must follow.
    const CASES: &[(&str, &str, bool)] = &[
        ("a/b/c", "a/b/c", true),
        ("a/b/+", "a/b/c", true),
        ("a/+/c", "a/b/c", true),
        ("+/b/c", "a/b/c", true),
        ("+/+/+", "a/b/c", true),
        ("#", "a/b/c", true),
        ("+/#", "a/b/c", true),
        ("a/#", "a/b/c", true),
        ("a/b/#", "a/b/c", true),
        ("a/b/c/#", "a/b/c", true),
        ("a/b", "a/b/c", false),
        ("a/+", "a/b/c", false),
        ("+/+", "a/b/c", false),
        ("a/b/c/d", "a/b/c", false),
        ("a/b/c/+", "a/b/c", false),
        ("/a/b/c", "a/b/c", false),
        ("a/b/c/", "a/b/c", false),
        ("a//b/c", "a/b/c", false),
        ("A/b/c", "a/b/c", false),
        // `#` includes the parent level.
        ("sport/#", "sport", true),
        ("sport/#", "sport/", true),
        ("sport/#", "sports", false),
        ("+/#", "a", true),
        ("#", "/", true),
        // `+` is one whole level, possibly empty.
        ("sport/+", "sport", false),
        ("sport/+", "sport/", true),
        ("+", "a", true),
        ("+/+", "/", true),
        // Empty levels are levels.
        ("+/+", "/finance", true),
        ("/+", "/finance", true),
        ("+", "/finance", false),
        ("/a", "a", false),
        ("a//b", "a//b", true),
        ("a/+/b", "a//b", true),
        ("a/b", "a//b", false),
        // `$` first levels: no first-level wildcard; literals and deeper levels are plain.
        ("#", "$SYS/broker/load", false),
        ("#", "$SYS", false),
        ("+", "$SYS", false),
        ("+/#", "$SYS/broker/load", false),
        ("+/broker/load", "$SYS/broker/load", false),
        ("$SYS/#", "$SYS/broker/load", true),
        ("$SYS/#", "$SYS", true),
        ("$SYS/+/load", "$SYS/broker/load", true),
        ("$SYS/broker/load", "$SYS/broker/load", true),
        ("$SYS/#", "$OTHER/x", false),
        ("a/+", "a/$SYS", true),
        ("a/#", "a/$b", true),
        ("#", "%", true),
        ("+/+", "a/%", true),
    ];

    /// Each row alone, then all rows' topics in one index: the walk agrees with the table,
    /// and the table agrees with the codec's matcher.
    #[test]
    fn table_of_filters_and_topics() {
        let mut all = RetainedIndex::new();
        for &(filter, topic, want) in CASES {
            assert_eq!(
                matches(filter, topic),
                want,
                "codec: {filter:?} vs {topic:?}"
            );
            let mut index = RetainedIndex::new();
            index.insert(Arc::from(topic), (), None);
            let got = walk_all(&index, filter);
            let want_topics: Vec<String> = if want { vec![topic.into()] } else { vec![] };
            assert_eq!(got, want_topics, "{filter:?} vs {topic:?}");
            all.insert(Arc::from(topic), (), None);
        }
        check_invariants(&all);
        for &(filter, _, _) in CASES {
            let mut want: Vec<String> = all
                .iter()
                .map(|(t, _)| t.to_string())
                .filter(|t| matches(filter, t))
                .collect();
            want.sort_by(|a, b| order_key(a).cmp(&order_key(b)));
            assert_eq!(walk_all(&all, filter), want, "filter {filter:?}");
        }
    }

    /// Matches come in level order, a topic before those below it.
    #[test]
    fn walk_order_is_level_wise() {
        let mut index = RetainedIndex::new();
        for topic in ["a0", "a/b", "a", "a/", "b", "/x", "a/b/c", "a/a", "$SYS/x"] {
            index.insert(Arc::from(topic), (), None);
        }
        assert_eq!(
            walk_all(&index, "#"),
            ["/x", "a", "a/", "a/a", "a/b", "a/b/c", "a0", "b"]
        );
        let snapshot: Vec<&str> = index.iter().map(|(t, _)| &**t).collect();
        assert_eq!(snapshot.len(), 9);
        assert!(snapshot.contains(&"$SYS/x"));
    }

    /// Insert replaces and returns the old value; get and remove find exact topics only.
    #[test]
    fn insert_get_remove() {
        let mut index = RetainedIndex::new();
        assert_eq!(index.insert(Arc::from("a/b"), 1, None), None);
        assert_eq!(index.insert(Arc::from("a/b"), 2, None), Some(1));
        assert_eq!(index.insert(Arc::from("a"), 3, None), None);
        assert_eq!(index.len(), 2);
        assert_eq!(index.get("a/b"), Some(&2));
        assert_eq!(index.get("a"), Some(&3));
        assert_eq!(index.get("a/"), None);
        assert_eq!(index.get("a/b/c"), None);
        assert_eq!(index.remove("a/b/c"), None);
        assert_eq!(index.remove("a/"), None);
        assert_eq!(index.remove("a"), Some(3));
        assert_eq!(index.remove("a"), None);
        check_invariants(&index);
        assert_eq!(index.get("a/b"), Some(&2));
        assert_eq!(index.remove("a/b"), Some(2));
        assert!(index.is_empty());
        assert!(
            index.root.children.is_empty(),
            "the last remove prunes to a bare root"
        );
    }

    /// Removing an entry with entries below it keeps them; removing a deep one prunes only
    /// the chain that held nothing else.
    #[test]
    fn remove_prunes_only_empty_chains() {
        let mut index = RetainedIndex::new();
        for topic in ["a", "a/b/c/d", "a/b/x", "q/r/s"] {
            index.insert(Arc::from(topic), topic.len(), None);
        }
        assert_eq!(index.remove("a"), Some(1));
        check_invariants(&index);
        assert_eq!(index.remove("a/b/c/d"), Some(7));
        check_invariants(&index);
        assert!(!index.root.children["a"].children["b"]
            .children
            .contains_key("c"));
        assert_eq!(index.remove("q/r/s"), Some(5));
        check_invariants(&index);
        assert!(!index.root.children.contains_key("q"));
        assert_eq!(walk_all(&index, "#"), ["a/b/x"]);
    }

    /// Expired entries pop earliest first, ties in insertion order, at most `limit` at a
    /// time; replacing or removing an entry drops its old expiry.
    #[test]
    fn expiry_order_and_replacement() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut index = RetainedIndex::new();
        index.insert(Arc::from("late"), 'l', Some(at(30)));
        index.insert(Arc::from("tie/1"), '1', Some(at(10)));
        index.insert(Arc::from("tie/2"), '2', Some(at(10)));
        index.insert(Arc::from("early"), 'e', Some(at(5)));
        index.insert(Arc::from("never"), 'n', None);
        index.insert(Arc::from("moved"), 'm', Some(at(1)));
        // Replacing moves the expiry (and a replacement without one never expires).
        index.insert(Arc::from("moved"), 'M', Some(at(20)));
        index.insert(Arc::from("gone"), 'g', Some(at(2)));
        assert_eq!(index.remove("gone"), Some('g'));
        index.insert(Arc::from("kept"), 'k', Some(at(3)));
        index.insert(Arc::from("kept"), 'K', None);
        check_invariants(&index);

        assert_eq!(index.next_expiry(), Some(at(5)));
        assert!(index.pop_expired(at(4), 10).is_empty());
        let popped = index.pop_expired(at(10), 2);
        let got: Vec<(&str, char)> = popped.iter().map(|(t, v)| (&**t, *v)).collect();
        assert_eq!(got, [("early", 'e'), ("tie/1", '1')]);
        let popped = index.pop_expired(at(25), 10);
        let got: Vec<(&str, char)> = popped.iter().map(|(t, v)| (&**t, *v)).collect();
        assert_eq!(got, [("tie/2", '2'), ("moved", 'M')]);
        assert_eq!(index.next_expiry(), Some(at(30)));
        check_invariants(&index);
        assert_eq!(index.pop_expired(at(100), 10).len(), 1);
        assert_eq!(index.next_expiry(), None);
        assert_eq!(index.len(), 2);
        assert_eq!(index.get("kept"), Some(&'K'));
        assert_eq!(index.get("never"), Some(&'n'));
        check_invariants(&index);
    }

    /// A literal filter that matches nothing, over 100,000 retained topics, enters only the
    /// nodes on its own path and reaches no entry; a wildcard filter confined below a
    /// missing or small branch does likewise.
    #[test]
    fn non_matching_filters_touch_no_entries() {
        let mut index = RetainedIndex::new();
        for i in 0..100_000u32 {
            let topic = format!("dev/{}/{}/temp", i % 317, i);
            index.insert(Arc::from(topic.as_str()), i, None);
        }
        assert_eq!(index.len(), 100_000);
        for filter in [
            "dev/5/999999/temp",
            "dev/5/5/humidity",
            "other/x/y/z",
            "dev/+/12/+/extra",
            "dev/400/#",
            "$SYS/#",
            "dev/7/+/humidity/#",
        ] {
            let (cursor, stats) = index.walk(filter, None, usize::MAX, |_, _| {});
            assert_eq!(cursor, None);
            assert_eq!(stats.visited, 0, "{filter:?} visited an entry");
            // At most one node per filter level, except a `+` fanning out over 317
            // devices or over one device's ~316 readings.
            assert!(
                stats.nodes <= 2 * 317 + 6,
                "{filter:?} entered {} nodes",
                stats.nodes
            );
        }
        let (_, stats) = index.walk("dev/5/5/temp", None, usize::MAX, |_, _| {});
        assert_eq!(
            stats,
            WalkStats {
                nodes: 5,
                visited: 1
            }
        );
        // Resuming after a cursor costs the path to the cursor, not what precedes it.
        let mut seen = 0;
        let cursor = index
            .for_each_match("#", None, 50_000, |_, _| seen += 1)
            .unwrap();
        let (rest, stats) = index.walk("#", Some(&cursor), 1, |_, _| seen += 1);
        assert!(rest.is_some());
        assert_eq!(seen, 50_001);
        assert!(stats.nodes < 20, "resume entered {} nodes", stats.nodes);
    }

    /// `limit` 0 visits nothing and hands back a cursor at the same place if a match remains.
    #[test]
    fn limit_zero_keeps_its_place() {
        let mut index = RetainedIndex::new();
        index.insert(Arc::from("a"), (), None);
        index.insert(Arc::from("b"), (), None);
        let c0 = index
            .for_each_match("+", None, 0, |_, _| panic!("visited"))
            .unwrap();
        assert_eq!(c0.last_topic(), None);
        let c1 = index.for_each_match("+", Some(&c0), 1, |_, _| {}).unwrap();
        assert_eq!(c1.last_topic().map(|t| &**t), Some("a"));
        let c2 = index
            .for_each_match("+", Some(&c1), 0, |_, _| panic!("visited"))
            .unwrap();
        assert_eq!(c2, c1);
        let mut got = Vec::new();
        assert_eq!(
            index.for_each_match("+", Some(&c2), 1, |t, _| got.push(t.clone())),
            None
        );
        assert_eq!(got, [Arc::<str>::from("b")]);
        assert_eq!(index.for_each_match("z", None, 0, |_, _| {}), None);
    }

    /// Filter levels for the property tests; `#` is cut to be the last level.
    const FILTER_LEVELS: [&str; 8] = ["a", "b", "", "$s", "%", "+", "+", "#"];
    /// Topic levels for the property tests.
    const TOPIC_LEVELS: [&str; 6] = ["a", "b", "", "$s", "%", "a$"];

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

    /// A change made between two steps of a walk.
    #[derive(Debug, Clone)]
    enum Change {
        /// Retains this topic.
        Insert(String),
        /// Removes this topic.
        Remove(String),
    }

    proptest! {
        /// One unlimited walk visits exactly the topics the codec's matcher picks, once
        /// each, in level order; the index agrees with a map model throughout.
        #[test]
        fn walk_agrees_with_codec_matcher(
            topics in prop::collection::vec(topic_strategy(), 0..40),
            removed in prop::collection::vec(topic_strategy(), 0..10),
            filters in prop::collection::vec(filter_strategy(), 1..12),
        ) {
            let mut index = RetainedIndex::new();
            let mut model = HashMap::new();
            for (i, topic) in topics.iter().enumerate() {
                let old = index.insert(Arc::from(topic.as_str()), i, None);
                prop_assert_eq!(old, model.insert(topic.clone(), i));
            }
            for topic in &removed {
                prop_assert_eq!(index.remove(topic), model.remove(topic));
            }
            prop_assert_eq!(index.len(), model.len());
            check_invariants(&index);
            for (topic, value) in &model {
                prop_assert_eq!(index.get(topic), Some(value));
            }
            let mut listed: Vec<String> = index.iter().map(|(t, _)| t.to_string()).collect();
            listed.sort();
            let mut want_all: Vec<String> = model.keys().cloned().collect();
            want_all.sort();
            prop_assert_eq!(listed, want_all);
            for filter in &filters {
                let mut want: Vec<&String> =
                    model.keys().filter(|t| matches(filter, t)).collect();
                want.sort_by(|a, b| order_key(a).cmp(&order_key(b)));
                let got = walk_all(&index, filter);
                prop_assert_eq!(got.iter().collect::<Vec<_>>(), want, "filter {:?}", filter);
            }
        }

        /// Walking in steps of a small `limit`, resuming from each cursor, yields exactly
        /// the sequence of one unlimited walk.
        #[test]
        fn resumed_walk_equals_unlimited_walk(
            topics in prop::collection::vec(topic_strategy(), 0..40),
            filter in filter_strategy(),
            limit in 1usize..5,
        ) {
            let mut index = RetainedIndex::new();
            for topic in &topics {
                index.insert(Arc::from(topic.as_str()), (), None);
            }
            prop_assert_eq!(walk_in_steps(&index, &filter, limit), walk_all(&index, &filter));
        }

        /// From any cursor (also one from another filter's walk, or a topic never
        /// retained), a walk visits exactly the matches strictly after it, in order.
        #[test]
        fn walk_from_any_cursor_visits_what_follows_it(
            topics in prop::collection::vec(topic_strategy(), 0..40),
            filter in filter_strategy(),
            after in topic_strategy(),
        ) {
            let mut index = RetainedIndex::new();
            for topic in &topics {
                index.insert(Arc::from(topic.as_str()), (), None);
            }
            let cursor = Cursor { after: Some(Arc::from(after.as_str())) };
            let want: Vec<String> = walk_all(&index, &filter)
                .into_iter()
                .filter(|t| order_key(t) > order_key(&after))
                .collect();
            prop_assert_eq!(walk_in_steps_from(&index, &filter, Some(&cursor)), want);
        }

        /// With inserts and removes between steps, a resumed walk visits every topic
        /// present throughout exactly once, any other matching topic at most once, only
        /// matching topics, in strictly increasing order.
        #[test]
        fn resumed_walk_under_changes(
            topics in prop::collection::vec(topic_strategy(), 0..30),
            filter in filter_strategy(),
            steps in prop::collection::vec((0usize..4, prop::collection::vec(prop_oneof![
                topic_strategy().prop_map(Change::Insert),
                topic_strategy().prop_map(Change::Remove),
            ], 0..4)), 1..30),
        ) {
            let mut index = RetainedIndex::new();
            for topic in &topics {
                index.insert(Arc::from(topic.as_str()), (), None);
            }
            let mut throughout: BTreeSet<String> = topics.iter().cloned().collect();
            let mut visited: Vec<String> = Vec::new();
            let mut cursor = None;
            let mut done = false;
            for (limit, changes) in &steps {
                let before = visited.len();
                cursor = index.for_each_match(&filter, cursor.as_ref(), *limit, |t, _| {
                    visited.push(t.to_string());
                });
                prop_assert!(visited.len() - before <= *limit);
                if cursor.is_none() {
                    done = true;
                    break;
                }
                for change in changes {
                    match change {
                        Change::Insert(t) => {
                            index.insert(Arc::from(t.as_str()), (), None);
                        }
                        Change::Remove(t) => {
                            index.remove(t);
                            throughout.remove(t);
                        }
                    }
                }
                check_invariants(&index);
            }
            if !done {
                visited.extend(walk_in_steps_from(&index, &filter, cursor.as_ref()));
            }
            for pair in visited.windows(2) {
                prop_assert!(order_key(&pair[0]) < order_key(&pair[1]), "order: {:?}", pair);
            }
            for topic in &visited {
                prop_assert!(matches(&filter, topic));
            }
            for topic in throughout.iter().filter(|t| matches(&filter, t)) {
                prop_assert!(visited.contains(topic), "missed {:?}", topic);
            }
        }

        /// Expiries pop in (instant, insertion) order, only when due, and agree with a
        /// model under replacement and removal.
        #[test]
        fn expiry_agrees_with_model(
            ops in prop::collection::vec((topic_strategy(), prop::option::of(0u64..20), any::<bool>()), 0..40),
            nows in prop::collection::vec((0u64..25, 0usize..5), 1..8),
        ) {
            let t0 = Instant::now();
            let mut index = RetainedIndex::new();
            // topic -> (expiry second, insertion sequence)
            let mut model: HashMap<String, Option<(u64, usize)>> = HashMap::new();
            for (seq, (topic, expiry, remove)) in ops.iter().enumerate() {
                if *remove {
                    prop_assert_eq!(index.remove(topic).is_some(), model.remove(topic).is_some());
                } else {
                    let at = expiry.map(|s| t0 + Duration::from_secs(s));
                    index.insert(Arc::from(topic.as_str()), seq, at);
                    model.insert(topic.clone(), expiry.map(|s| (s, seq)));
                }
            }
            check_invariants(&index);
            let mut nows = nows;
            nows.sort();
            for (now, limit) in nows {
                let mut due: Vec<(u64, usize, String)> = model
                    .iter()
                    .filter_map(|(t, e)| e.filter(|(s, _)| *s <= now).map(|(s, q)| (s, q, t.clone())))
                    .collect();
                due.sort();
                due.truncate(limit);
                let popped = index.pop_expired(t0 + Duration::from_secs(now), limit);
                let got: Vec<String> = popped.iter().map(|(t, _)| t.to_string()).collect();
                let want: Vec<String> = due.iter().map(|(_, _, t)| t.clone()).collect();
                prop_assert_eq!(got, want);
                for (_, _, t) in &due {
                    model.remove(t);
                }
                let next = model.values().flatten().map(|(s, _)| *s).min();
                prop_assert_eq!(index.next_expiry(), next.map(|s| t0 + Duration::from_secs(s)));
                prop_assert_eq!(index.len(), model.len());
                check_invariants(&index);
            }
        }
    }

    /// Finishes a walk from `cursor` in steps of 3.
    fn walk_in_steps_from<V>(
        index: &RetainedIndex<V>,
        filter: &str,
        cursor: Option<&Cursor>,
    ) -> Vec<String> {
        let mut out = Vec::new();
        let mut cursor = cursor.cloned();
        for _ in 0..=index.len() + 1 {
            cursor =
                index.for_each_match(filter, cursor.as_ref(), 3, |t, _| out.push(t.to_string()));
            if cursor.is_none() {
                return out;
            }
        }
        panic!("walk did not finish");
    }
}
