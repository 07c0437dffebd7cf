//! The match cache: a topic's matching subscriptions, kept from one publish to the next
//! while the subscription tree does not change.
//!
//! Why: a device fleet publishes to the same topics over and over, and walking the trie
//! (splitting the topic, comparing levels, visiting `+` and `#` branches) and merging the
//! matches per client was about a sixth of the broker's CPU per message in fan-in
//! (`perf`, 8 publishers on 8 topics → 1 subscriber). Any insert or remove moves the
//! tree's generation, which empties the cache, so a hit is always what the trie would
//! say now. What depends on more than the tree (the access rules' read check of
//! `checked` entries, No Local, a shared group's choice of member) is decided per
//! publish, after the lookup.

use std::sync::Arc;

use super::{FastMap, GroupKey, SubEntry, SubKey, SubscriptionTree};

/// One subscription a topic matched.
#[derive(Debug)]
pub(super) struct Hit {
    pub(super) client: Arc<str>,
    /// A shared subscription's group and filter.
    pub(super) group: Option<GroupKey>,
    pub(super) entry: SubEntry,
    /// Its client is not the previous hit's: where one client's run of neighbours
    /// starts (found once, when the list is made, rather than by comparing client ids
    /// on every publish).
    pub(super) new_client: bool,
}

/// Most topics kept; past it the cache starts again empty.
const MAX_TOPICS: usize = 8192;
/// Most hits kept over all topics (about 64 bytes each: at most 4 MiB); a topic with
/// more matches than this is never kept.
const MAX_HITS: usize = 65_536;

/// The matches of recently published topics.
#[derive(Debug, Default)]
pub(super) struct MatchCache {
    /// The tree's generation the entries were computed at.
    generation: u64,
    /// Topic → its hits: plain subscriptions first, sorted by client (so a client's
    /// overlapping subscriptions are neighbours), then shared ones by group, filter and
    /// client.
    map: FastMap<Arc<str>, Arc<[Hit]>>,
    /// Summed length of the kept hit lists.
    hits: usize,
}

impl MatchCache {
    /// The subscriptions of `subs` matching `topic`, in the order described at `map`.
    pub(super) fn get(
        &mut self,
        subs: &SubscriptionTree<SubKey, SubEntry>,
        topic: &Arc<str>,
    ) -> Arc<[Hit]> {
        if self.generation != subs.generation() {
            self.clear();
            self.generation = subs.generation();
        }
        if let Some(hits) = self.map.get(topic) {
            return hits.clone();
        }
        let mut found: Vec<Hit> = Vec::new();
        subs.for_each_match(topic, |filter, key, entry| {
            found.push(Hit {
                client: key.client.clone(),
                group: key.group.clone().map(|g| (g, Arc::from(filter))),
                entry: entry.clone(),
                new_client: true,
            });
        });
        found.sort_by(|a, b| a.group.cmp(&b.group).then_with(|| a.client.cmp(&b.client)));
        for i in 1..found.len() {
            found[i].new_client = found[i].client != found[i - 1].client;
        }
        let hits: Arc<[Hit]> = found.into();
        if hits.len() <= MAX_HITS {
            if self.map.len() >= MAX_TOPICS || self.hits + hits.len() > MAX_HITS {
                self.clear();
            }
            self.hits += hits.len();
            self.map.insert(topic.clone(), hits.clone());
        }
        hits
    }

    /// `topic` as a shared string: the cache's own copy when it holds the topic (no
    /// allocation for a topic published before), a new one otherwise.
    pub(super) fn intern(&self, topic: &str) -> Arc<str> {
        match self.map.get_key_value(topic) {
            Some((kept, _)) => kept.clone(),
            None => Arc::from(topic),
        }
    }

    fn clear(&mut self) {
        self.map.clear();
        self.hits = 0;
    }

    /// Topics kept (for tests).
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mote_codec::QoS;

    fn key(client: &str, group: Option<&str>) -> SubKey {
        SubKey {
            client: Arc::from(client),
            group: group.map(Arc::from),
            json: false,
        }
    }

    fn entry(qos: QoS) -> SubEntry {
        SubEntry {
            qos,
            no_local: false,
            retain_as_published: false,
            id: None,
            checked: false,
        }
    }

    fn clients(hits: &[Hit]) -> Vec<(String, Option<String>)> {
        hits.iter()
            .map(|h| {
                (
                    h.client.to_string(),
                    h.group.as_ref().map(|g| g.0.to_string()),
                )
            })
            .collect()
    }

    /// A cached topic follows every change of the tree: a subscription added after the
    /// topic was cached is matched, one removed is not, a changed QoS is seen.
    #[test]
    fn a_change_of_the_tree_is_seen_at_once() {
        let mut subs = SubscriptionTree::new();
        let mut cache = MatchCache::default();
        let topic: Arc<str> = Arc::from("a/b");
        subs.insert("a/+", key("c1", None), entry(QoS::AtMostOnce));
        assert_eq!(clients(&cache.get(&subs, &topic)), [("c1".into(), None)]);
        subs.insert("a/#", key("c0", None), entry(QoS::AtMostOnce));
        assert_eq!(
            clients(&cache.get(&subs, &topic)),
            [("c0".into(), None), ("c1".into(), None)]
        );
        subs.insert("a/b", key("c0", None), entry(QoS::ExactlyOnce));
        let hits = cache.get(&subs, &topic);
        assert_eq!(hits.len(), 3, "two subscriptions of c0 and one of c1");
        assert!(hits.iter().any(|h| h.entry.qos == QoS::ExactlyOnce));
        subs.remove("a/+", &key("c1", None));
        assert_eq!(
            clients(&cache.get(&subs, &topic)),
            [("c0".into(), None), ("c0".into(), None)]
        );
        assert_eq!(cache.len(), 1);
    }

    /// Plain subscriptions come first, a client's side by side; shared ones after them,
    /// by group.
    #[test]
    fn hits_are_ordered_for_merging() {
        let mut subs = SubscriptionTree::new();
        let mut cache = MatchCache::default();
        subs.insert("t/#", key("b", Some("g2")), entry(QoS::AtMostOnce));
        subs.insert("t/x", key("b", None), entry(QoS::AtMostOnce));
        subs.insert("t/+", key("a", Some("g1")), entry(QoS::AtMostOnce));
        subs.insert("#", key("a", None), entry(QoS::AtMostOnce));
        subs.insert("t/#", key("b", None), entry(QoS::AtMostOnce));
        let hits = cache.get(&subs, &Arc::from("t/x"));
        assert_eq!(
            clients(&hits),
            [
                ("a".into(), None),
                ("b".into(), None),
                ("b".into(), None),
                ("a".into(), Some("g1".into())),
                ("b".into(), Some("g2".into())),
            ]
        );
        // Where each client's run starts: b's two plain subscriptions are one run.
        let starts: Vec<bool> = hits.iter().map(|h| h.new_client).collect();
        assert_eq!(starts, [true, true, false, true, true]);
    }

    /// The cache holds at most `MAX_TOPICS` topics and `MAX_HITS` hits; a topic with
    /// more matches than that is answered but not kept; a kept topic's string is shared.
    #[test]
    fn the_cache_is_bounded() {
        let mut subs = SubscriptionTree::new();
        let mut cache = MatchCache::default();
        subs.insert("#", key("all", None), entry(QoS::AtMostOnce));
        for i in 0..MAX_TOPICS + 10 {
            let topic: Arc<str> = Arc::from(format!("t/{i}"));
            assert_eq!(cache.get(&subs, &topic).len(), 1);
            assert!(cache.len() <= MAX_TOPICS);
        }
        let kept: Arc<str> = Arc::from("kept");
        cache.get(&subs, &kept);
        assert!(Arc::ptr_eq(&cache.intern("kept"), &kept));
        assert!(!Arc::ptr_eq(&cache.intern("other"), &kept));
        for i in 0..=MAX_HITS {
            subs.insert("crowd", key(&format!("c{i}"), None), entry(QoS::AtMostOnce));
        }
        let crowd: Arc<str> = Arc::from("crowd");
        assert_eq!(cache.get(&subs, &crowd).len(), MAX_HITS + 2);
        assert_eq!(cache.len(), 0, "a crowd of hits is not kept");
    }
}
