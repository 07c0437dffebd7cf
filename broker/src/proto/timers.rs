//! Deadlines by key, in one ordered structure the core asks for what is due.
//!
//! The core keeps its will-delay (MQTT 5 §3.1.2.11.2), session-expiry (§3.1.2.11.2),
//! message-expiry (§3.3.2.3.3) and keep-alive (MQTT 3.1.1 §3.1.2.10, MQTT 5 §3.1.2.10)
//! deadlines here, so a tick pops what is due instead of scanning every session.
//!
//! # Invariants
//!
//! - At most one deadline per key: `set` replaces the key's earlier deadline.
//! - `by_key` and `order` hold the same keys: `by_key[k] == (at, seq)` exactly when
//!   `order[(at, seq)] == k`.
//! - `seq` grows with every `set`, so equal instants pop in the order they were set and
//!   every `order` key is unique.
//! - Every operation is O(log n) (a `BTreeMap` and a `HashMap`); nothing reads a clock.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::Hash;
use std::time::Instant;

/// Deadlines by key, earliest first.
pub(crate) struct Timers<K> {
    /// Keys by (deadline, set sequence).
    order: BTreeMap<(Instant, u64), K>,
    /// Each key's place in `order`.
    by_key: HashMap<K, (Instant, u64)>,
    /// The next set sequence number.
    next_seq: u64,
}

impl<K: Clone + Hash + Eq> Timers<K> {
    /// Creates an empty set of timers.
    pub(crate) fn new() -> Self {
        Self {
            order: BTreeMap::new(),
            by_key: HashMap::new(),
            next_seq: 0,
        }
    }

    /// Sets `key`'s deadline to `at`, replacing any earlier deadline of `key`.
    pub(crate) fn set(&mut self, key: K, at: Instant) {
        let place = (at, self.next_seq);
        self.next_seq += 1;
        if let Some(old) = self.by_key.insert(key.clone(), place) {
            self.order.remove(&old);
        }
        self.order.insert(place, key);
    }

    /// Removes `key`'s deadline; returns it if there was one.
    pub(crate) fn cancel(&mut self, key: &K) -> Option<Instant> {
        let place = self.by_key.remove(key)?;
        self.order.remove(&place);
        Some(place.0)
    }

    #[cfg(test)]
    /// `key`'s deadline, if set.
    pub(crate) fn get(&self, key: &K) -> Option<Instant> {
        self.by_key.get(key).map(|&(at, _)| at)
    }

    /// The earliest deadline (for the core's next timeout).
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.order.first_key_value().map(|(&(at, _), _)| at)
    }

    /// Removes and returns the earliest deadline at or before `now` with its key; among
    /// equal deadlines, the one set first.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<(K, Instant)> {
        match self.order.first_key_value() {
            Some((&(at, _), _)) if at <= now => {}
            _ => return None,
        }
        let ((at, _), key) = self.order.pop_first()?;
        self.by_key.remove(&key);
        Some((key, at))
    }

    #[cfg(test)]
    /// Number of keys with a deadline.
    pub(crate) fn len(&self) -> usize {
        self.by_key.len()
    }

    #[cfg(test)]
    /// Whether no deadline is set.
    pub(crate) fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

impl<K: Clone + Hash + Eq> Default for Timers<K> {
    /// No timers.
    fn default() -> Self {
        Self::new()
    }
}

impl<K> fmt::Debug for Timers<K> {
    /// Sizes and the next deadline only: the core may hold a timer per session.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Timers")
            .field("len", &self.order.len())
            .field("next", &self.order.keys().next().map(|(at, _)| at))
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    /// Deadlines pop earliest first, ties in the order they were set, and only when due.
    #[test]
    fn pops_due_in_deadline_then_set_order() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut timers = Timers::new();
        timers.set("c", at(5));
        timers.set("a", at(3));
        timers.set("b", at(5));
        timers.set("d", at(9));
        assert_eq!(timers.len(), 4);
        assert_eq!(timers.next_deadline(), Some(at(3)));
        assert_eq!(timers.pop_due(at(2)), None);
        assert_eq!(timers.pop_due(at(7)), Some(("a", at(3))));
        assert_eq!(timers.pop_due(at(7)), Some(("c", at(5))));
        assert_eq!(timers.pop_due(at(7)), Some(("b", at(5))));
        assert_eq!(timers.pop_due(at(7)), None);
        assert_eq!(timers.next_deadline(), Some(at(9)));
        assert_eq!(timers.get(&"d"), Some(at(9)));
        assert_eq!(timers.get(&"a"), None);
        assert_eq!(timers.len(), 1);
    }

    /// Setting a key again moves its deadline (and its place among ties); cancel removes it.
    #[test]
    fn set_replaces_and_cancel_removes() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut timers = Timers::new();
        timers.set(1u32, at(1));
        timers.set(2, at(4));
        timers.set(1, at(4));
        assert_eq!(timers.len(), 2);
        assert_eq!(timers.get(&1), Some(at(4)));
        assert_eq!(timers.next_deadline(), Some(at(4)));
        assert_eq!(timers.pop_due(at(4)), Some((2, at(4))));
        assert_eq!(timers.cancel(&1), Some(at(4)));
        assert_eq!(timers.cancel(&1), None);
        assert!(timers.is_empty());
        assert_eq!(timers.next_deadline(), None);
        assert_eq!(timers.pop_due(at(100)), None);
        assert!(format!("{timers:?}").contains("len: 0"));
    }

    /// One step of the property test.
    #[derive(Debug, Clone)]
    enum Op {
        /// `set(key, t0 + secs)`.
        Set(u8, u64),
        /// `cancel(key)`.
        Cancel(u8),
        /// `pop_due(t0 + secs)`.
        Pop(u64),
    }

    proptest! {
        /// Random operations agree with a `Vec` of (key, deadline) kept in set order.
        #[test]
        fn agrees_with_vec_model(ops in prop::collection::vec(prop_oneof![
            (0u8..8, 0u64..20).prop_map(|(k, s)| Op::Set(k, s)),
            (0u8..8).prop_map(Op::Cancel),
            (0u64..25).prop_map(Op::Pop),
        ], 0..60)) {
            let t0 = Instant::now();
            let at = |s: u64| t0 + Duration::from_secs(s);
            let mut timers = Timers::new();
            // In set order; a re-set key moves to the end.
            let mut model: Vec<(u8, Instant)> = Vec::new();
            for op in ops {
                match op {
                    Op::Set(key, s) => {
                        timers.set(key, at(s));
                        model.retain(|(k, _)| *k != key);
                        model.push((key, at(s)));
                    }
                    Op::Cancel(key) => {
                        let want = model.iter().position(|(k, _)| *k == key).map(|i| model.remove(i).1);
                        prop_assert_eq!(timers.cancel(&key), want);
                    }
                    Op::Pop(s) => {
                        // The earliest due; `min_by_key` keeps the first of equal ones.
                        let want = model
                            .iter()
                            .enumerate()
                            .filter(|(_, (_, d))| *d <= at(s))
                            .min_by_key(|(_, (_, d))| *d)
                            .map(|(i, _)| i);
                        let want = want.map(|i| model.remove(i));
                        prop_assert_eq!(timers.pop_due(at(s)), want);
                    }
                }
                prop_assert_eq!(timers.len(), model.len());
                prop_assert_eq!(timers.next_deadline(), model.iter().map(|(_, d)| *d).min());
                for key in 0u8..8 {
                    let want = model.iter().find(|(k, _)| *k == key).map(|(_, d)| *d);
                    prop_assert_eq!(timers.get(&key), want);
                }
            }
        }
    }
}
