//! A session's queue of deliveries waiting to be sent: FIFO, with the oldest droppable
//! (QoS 0) item evictable in amortised O(1).
//!
//! A session's state holds the QoS 1 and 2 messages pending transmission and, only
//! optionally, the QoS 0 ones (MQTT 3.1.1 §4.1, MQTT 5 §4.1). So when a session's queue is
//! full, a QoS 1 or 2 delivery evicts the oldest queued QoS 0 one, and a QoS 0 delivery is
//! itself dropped. The limits and that policy live with the caller; this type makes the
//! eviction cheap.
//!
//! # Shape
//!
//! Items sit in a ring of slots; an evicted item leaves a tombstone (`None`) in its slot
//! instead of shifting the ones after it. Every slot has an absolute position: `base` is
//! the position of the first slot, the next slot is `base + 1`, and `push_front` lowers
//! `base` (positions wrap around `u64`; only differences from `base` are used). A second
//! ring, `drop_order`, holds the positions of the live droppable items, oldest first, so
//! eviction pops its front and empties that slot.
//!
//! # Invariants
//!
//! - The first and last slots are live (tombstones at either end are trimmed at once).
//! - `drop_order` holds exactly the positions of the live droppable items, ascending.
//! - `tombstones <= live`, so `slots.len() <= 2 * live`: a compaction (O(slots)) runs
//!   when an eviction would break it, which needs as many O(1) evictions since the last
//!   one, so eviction is amortised O(1) and memory stays proportional to the live items
//!   however long the queue never empties. Rings whose capacity has exceeded sixteen
//!   times their length for as many removals as that capacity are shrunk to four times
//!   it, for the same reason; the owner shrinks an idle queue at once ([`release`]).
//!   The hysteresis is what lets a queue that fills and drains in waves (a subscriber
//!   behind a fast publisher) keep its ring: shrinking whenever a wave drained made
//!   every wave grow it again, and a ring above malloc's mmap threshold grows by
//!   `mremap`, which on a multi-threaded broker interrupts every other core to flush
//!   its TLB (23,000 of them in one fan-out run of 2.4M deliveries, issue #15).
//! - `live` and `bytes` are the count and the summed `cost()` of the live items. An item's
//!   `droppable()` and `cost()` must not change while it is queued.
//!
//! - An empty queue holds no ring at all once released ([`DeliveryQueue`] wraps the
//!   [`Ring`] in a box made at the first push): 8 bytes in every session instead of 112
//!   (issue #15: what an idle connection costs).
//!
//! [`release`]: DeliveryQueue::release

use std::collections::VecDeque;
use std::fmt;

/// What the queue needs to know about an item.
pub(crate) trait Queued {
    /// Whether the item may be evicted to make room (a QoS 0 delivery).
    fn droppable(&self) -> bool;
    /// The bytes the item counts against the queue's byte limit.
    fn cost(&self) -> usize;
}

/// A FIFO of deliveries with O(1) eviction of the oldest droppable one: a [`Ring`],
/// allocated at the first push and freed when released empty.
#[derive(Debug)]
pub(crate) struct DeliveryQueue<T> {
    ring: Option<Box<Ring<T>>>,
}

impl<T: Queued> DeliveryQueue<T> {
    /// Creates an empty queue (no ring yet).
    pub(crate) fn new() -> Self {
        Self { ring: None }
    }

    /// The ring, made if there is none.
    fn ring(&mut self) -> &mut Ring<T> {
        self.ring.get_or_insert_with(|| Box::new(Ring::new()))
    }

    /// Number of queued items.
    pub(crate) fn len(&self) -> usize {
        self.ring.as_ref().map_or(0, |r| r.len())
    }

    /// Summed `cost()` of the queued items.
    pub(crate) fn bytes(&self) -> usize {
        self.ring.as_ref().map_or(0, |r| r.bytes())
    }

    /// Whether nothing is queued.
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends `item` (newest).
    pub(crate) fn push_back(&mut self, item: T) {
        self.ring().push_back(item);
    }

    /// Puts `item` first (oldest), e.g. a delivery taken off the front and put back.
    pub(crate) fn push_front(&mut self, item: T) {
        self.ring().push_front(item);
    }

    /// The oldest item.
    pub(crate) fn front(&self) -> Option<&T> {
        self.ring.as_ref()?.front()
    }

    /// Removes and returns the oldest item.
    pub(crate) fn pop_front(&mut self) -> Option<T> {
        self.ring.as_mut()?.pop_front()
    }

    /// Removes and returns the oldest droppable item; amortised O(1).
    pub(crate) fn evict_droppable(&mut self) -> Option<T> {
        self.ring.as_mut()?.evict_droppable()
    }

    /// Removes and returns, in order, the items `take` selects (see [`Ring::take_where`]).
    pub(crate) fn take_where(&mut self, take: impl FnMut(&T) -> bool) -> Vec<T> {
        match self.ring.as_mut() {
            Some(r) => r.take_where(take),
            None => Vec::new(),
        }
    }

    /// The queued items, oldest first.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> {
        self.ring.iter().flat_map(|r| r.iter())
    }

    /// For an owner gone idle: an empty queue frees its ring, another gives back the
    /// capacity it does not need ([`Ring::release`]).
    pub(crate) fn release(&mut self) {
        match self.ring.as_mut() {
            Some(r) if r.is_empty() => self.ring = None,
            Some(r) => r.release(),
            None => {}
        }
    }
}

impl<T: Queued> Default for DeliveryQueue<T> {
    /// An empty queue.
    fn default() -> Self {
        Self::new()
    }
}

/// The ring of a [`DeliveryQueue`] (module docs).
struct Ring<T> {
    /// Items in order; `None` is an evicted item's tombstone.
    slots: VecDeque<Option<T>>,
    /// Absolute position of `slots[0]`.
    base: u64,
    /// Positions of the live droppable items, oldest first.
    drop_order: VecDeque<u64>,
    /// Number of live items.
    live: usize,
    /// Tombstones in `slots`.
    tombstones: usize,
    /// Summed `cost()` of the live items.
    bytes: usize,
    /// Removals in a row that left the ring oversized (see [`SHRINK_RATIO`]).
    oversized_for: usize,
    /// Slots moved by trimming, compaction and shrinking: the work beyond O(1) per call,
    /// for the test that bounds it.
    steps: u64,
}

/// Rings with less capacity than this are never shrunk.
const SHRINK_FLOOR: usize = 64;

/// A ring is shrunk once its capacity has exceeded this many times its length for as
/// many removals as its capacity (or at once by [`DeliveryQueue::release`])...
const SHRINK_RATIO: usize = 16;

/// ...to this many times its length.
const SHRINK_TO: usize = 4;

impl<T: Queued> Ring<T> {
    /// Creates an empty ring.
    pub(crate) fn new() -> Self {
        Self {
            slots: VecDeque::new(),
            base: 0,
            drop_order: VecDeque::new(),
            live: 0,
            tombstones: 0,
            bytes: 0,
            oversized_for: 0,
            steps: 0,
        }
    }

    /// Number of queued items.
    pub(crate) fn len(&self) -> usize {
        self.live
    }

    /// Summed `cost()` of the queued items.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether nothing is queued.
    pub(crate) fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Appends `item` (newest).
    pub(crate) fn push_back(&mut self, item: T) {
        if item.droppable() {
            let pos = self.base.wrapping_add(self.slots.len() as u64);
            self.drop_order.push_back(pos);
        }
        self.add(&item);
        self.slots.push_back(Some(item));
    }

    /// Puts `item` first (oldest), e.g. a delivery taken off the front and put back.
    pub(crate) fn push_front(&mut self, item: T) {
        self.base = self.base.wrapping_sub(1);
        if item.droppable() {
            self.drop_order.push_front(self.base);
        }
        self.add(&item);
        self.slots.push_front(Some(item));
    }

    /// The oldest item.
    pub(crate) fn front(&self) -> Option<&T> {
        // The first slot is live whenever there is one.
        self.slots.front().and_then(Option::as_ref)
    }

    /// Removes and returns the oldest item.
    pub(crate) fn pop_front(&mut self) -> Option<T> {
        let item = self.slots.pop_front()??;
        self.base = self.base.wrapping_add(1);
        if item.droppable() {
            // It was the oldest live item, so the oldest droppable one.
            let pos = self.drop_order.pop_front();
            debug_assert_eq!(pos, Some(self.base.wrapping_sub(1)));
        }
        self.sub(&item);
        self.tidy();
        Some(item)
    }

    /// Removes and returns the oldest droppable item; amortised O(1).
    pub(crate) fn evict_droppable(&mut self) -> Option<T> {
        let pos = self.drop_order.pop_front()?;
        let index = usize::try_from(pos.wrapping_sub(self.base)).ok()?;
        let item = self.slots.get_mut(index)?.take()?;
        self.tombstones += 1;
        self.sub(&item);
        self.tidy();
        Some(item)
    }

    /// Removes and returns, in order, the items `take` selects, keeping the others in
    /// order. O(n): for rare whole-queue changes (expiry sweeps, session takeover).
    pub(crate) fn take_where(&mut self, mut take: impl FnMut(&T) -> bool) -> Vec<T> {
        let mut taken = Vec::new();
        let mut kept = VecDeque::with_capacity(self.live);
        self.steps += self.slots.len() as u64;
        for item in self.slots.drain(..).flatten() {
            if take(&item) {
                taken.push(item);
            } else {
                kept.push_back(Some(item));
            }
        }
        self.slots = kept;
        self.live = 0;
        self.bytes = 0;
        self.tombstones = 0;
        for item in self.slots.iter().flatten() {
            self.live += 1;
            self.bytes += item.cost();
        }
        self.reindex();
        taken
    }

    /// The queued items, oldest first.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> {
        self.slots.iter().flatten()
    }

    /// Counts a new live item.
    fn add(&mut self, item: &T) {
        self.live += 1;
        self.bytes += item.cost();
    }

    /// Uncounts a removed live item.
    fn sub(&mut self, item: &T) {
        self.live -= 1;
        self.bytes -= item.cost();
    }

    /// Restores the invariants after an item left: trims the ends, compacts when the
    /// tombstones outnumber the live items, shrinks oversized rings.
    fn tidy(&mut self) {
        self.trim();
        // Each tombstone was made by an O(1) eviction since the last compaction, and
        // there are more of them than live items: they pay for this O(slots) pass.
        if self.tombstones > self.live {
            self.compact();
        }
        self.shrink();
    }

    /// Drops tombstones from both ends, restoring "the first and last slots are live".
    fn trim(&mut self) {
        while let Some(None) = self.slots.front() {
            self.slots.pop_front();
            self.base = self.base.wrapping_add(1);
            self.tombstones -= 1;
            self.steps += 1;
        }
        while let Some(None) = self.slots.back() {
            self.slots.pop_back();
            self.tombstones -= 1;
            self.steps += 1;
        }
    }

    /// Removes every tombstone and renumbers `drop_order`.
    fn compact(&mut self) {
        self.steps += self.slots.len() as u64;
        self.slots.retain(Option::is_some);
        self.tombstones = 0;
        self.reindex();
    }

    /// Rebuilds `drop_order` from `slots` (which must hold no tombstone).
    fn reindex(&mut self) {
        self.steps += self.slots.len() as u64;
        self.drop_order.clear();
        for (i, slot) in self.slots.iter().enumerate() {
            if slot.as_ref().is_some_and(Queued::droppable) {
                self.drop_order.push_back(self.base.wrapping_add(i as u64));
            }
        }
    }

    /// Gives back ring capacity far beyond what the items need once it has been so for
    /// as many removals as the ring's capacity: the shrink's O(len) is paid by them, and
    /// a queue that fills again within that many removals keeps its ring (module docs).
    fn shrink(&mut self) {
        if self.slots.capacity() <= SHRINK_FLOOR.max(SHRINK_RATIO * self.slots.len()) {
            self.oversized_for = 0;
            return;
        }
        self.oversized_for += 1;
        if self.oversized_for >= self.slots.capacity() {
            self.release();
        }
    }

    /// Gives back ring capacity far beyond what the items need now: a ring
    /// [`SHRINK_RATIO`] times larger than its contents is cut to [`SHRINK_TO`] times
    /// them. For an owner that has gone idle (its connection quiet, nothing to send), so
    /// a burst that drained leaves no large ring behind.
    pub(crate) fn release(&mut self) {
        self.oversized_for = 0;
        if self.slots.capacity() > SHRINK_FLOOR.max(SHRINK_RATIO * self.slots.len()) {
            self.steps += self.slots.len() as u64;
            self.slots.shrink_to(SHRINK_TO * self.slots.len());
        }
        if self.drop_order.capacity() > SHRINK_FLOOR.max(SHRINK_RATIO * self.drop_order.len()) {
            self.steps += self.drop_order.len() as u64;
            self.drop_order.shrink_to(SHRINK_TO * self.drop_order.len());
        }
    }
}

impl<T> fmt::Debug for Ring<T> {
    /// Sizes only: a queue may hold thousands of deliveries.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ring")
            .field("len", &self.live)
            .field("bytes", &self.bytes)
            .field("droppable", &self.drop_order.len())
            .field("tombstones", &self.tombstones)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A test delivery: an id, whether it is QoS 0, its cost.
    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Item {
        /// Identifies the item in assertions.
        id: u32,
        /// Droppable (QoS 0).
        qos0: bool,
        /// Cost in bytes.
        cost: usize,
    }

    impl Queued for Item {
        fn droppable(&self) -> bool {
            self.qos0
        }
        fn cost(&self) -> usize {
            self.cost
        }
    }

    /// An item with a cost derived from its id.
    fn item(id: u32, qos0: bool) -> Item {
        Item {
            id,
            qos0,
            cost: 10 + (id as usize % 7),
        }
    }

    /// Asserts every invariant of the module docs.
    fn check_invariants(q: &Ring<Item>) {
        if let (Some(first), Some(last)) = (q.slots.front(), q.slots.back()) {
            assert!(first.is_some() && last.is_some(), "tombstone at an end");
        }
        let tombstones = q.slots.iter().filter(|s| s.is_none()).count();
        assert_eq!(tombstones, q.tombstones);
        assert_eq!(q.slots.len(), q.live + q.tombstones);
        assert!(
            q.tombstones <= q.live,
            "{} tombstones, {} live",
            q.tombstones,
            q.live
        );
        let want: Vec<u64> = q
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.as_ref().is_some_and(|i| i.qos0))
            .map(|(i, _)| q.base.wrapping_add(i as u64))
            .collect();
        assert_eq!(q.drop_order.iter().copied().collect::<Vec<_>>(), want);
        assert_eq!(q.bytes, q.iter().map(|i| i.cost).sum::<usize>());
    }

    /// The basic FIFO: pushes at both ends, pops from the front, counts and bytes.
    /// A queue has no ring until something is pushed, and an empty queue released by
    /// its idle owner gives its ring back; one with items keeps them.
    #[test]
    fn an_idle_empty_queue_holds_no_ring() {
        let mut q = DeliveryQueue::new();
        assert!(q.ring.is_none() && q.is_empty() && q.front().is_none());
        assert_eq!(q.pop_front(), None);
        q.release();
        assert!(q.ring.is_none());
        q.push_back(item(1, true));
        q.push_back(item(2, false));
        q.release();
        assert_eq!(q.len(), 2);
        assert_eq!(q.evict_droppable(), Some(item(1, true)));
        assert_eq!(q.pop_front(), Some(item(2, false)));
        assert!(q.ring.is_some());
        q.release();
        assert!(q.ring.is_none());
        assert_eq!(q.bytes(), 0);
        q.push_front(item(3, false));
        assert_eq!(q.iter().count(), 1);
    }

    #[test]
    fn fifo_with_push_front() {
        let mut q = Ring::new();
        assert!(q.is_empty());
        assert_eq!(q.front(), None);
        assert_eq!(q.pop_front(), None);
        q.push_back(item(1, false));
        q.push_back(item(2, true));
        q.push_front(item(0, true));
        assert_eq!(q.len(), 3);
        assert_eq!(q.bytes(), 10 + 11 + 12);
        assert_eq!(q.front().map(|i| i.id), Some(0));
        let ids: Vec<u32> = q.iter().map(|i| i.id).collect();
        assert_eq!(ids, [0, 1, 2]);
        check_invariants(&q);
        assert_eq!(q.pop_front().map(|i| i.id), Some(0));
        assert_eq!(q.evict_droppable().map(|i| i.id), Some(2));
        assert_eq!(q.evict_droppable(), None);
        assert_eq!(q.pop_front().map(|i| i.id), Some(1));
        assert!(q.is_empty());
        assert_eq!(q.bytes(), 0);
        check_invariants(&q);
    }

    /// Eviction takes the oldest droppable item and keeps the rest in order.
    #[test]
    fn evicts_oldest_droppable_keeping_order() {
        let mut q = Ring::new();
        for (id, qos0) in [(1, false), (2, true), (3, false), (4, true), (5, true)] {
            q.push_back(item(id, qos0));
        }
        assert_eq!(q.evict_droppable().map(|i| i.id), Some(2));
        check_invariants(&q);
        assert_eq!(q.evict_droppable().map(|i| i.id), Some(4));
        check_invariants(&q);
        let ids: Vec<u32> = q.iter().map(|i| i.id).collect();
        assert_eq!(ids, [1, 3, 5]);
        assert_eq!(q.len(), 3);
        let taken = q.take_where(|i| i.id == 3);
        assert_eq!(taken, [item(3, false)]);
        assert_eq!(q.evict_droppable().map(|i| i.id), Some(5));
        assert_eq!(q.iter().map(|i| i.id).collect::<Vec<_>>(), [1]);
        check_invariants(&q);
    }

    /// The fault of issue #10: a full queue of 10,000 QoS 1 items and a few QoS 0 ones
    /// took a scan of the queue per eviction. Here 10,000 rounds of "the oldest QoS 0 is
    /// evicted, a QoS 0 arrives" (the droppable items at the back, the scan's worst case),
    /// then evicting the last ones and 10,000 evictions finding nothing, cost linear total
    /// work: a scan per eviction would be about 10,000 steps each.
    #[test]
    fn evictions_cost_linear_total_work() {
        let mut q = Ring::new();
        for id in 0..10_000 {
            q.push_back(item(id, false));
        }
        for id in 10_000..10_003 {
            q.push_back(item(id, true));
        }
        let start = q.steps;
        let mut ops = 0u64;
        for id in 10_003..20_003 {
            let evicted = q.evict_droppable().map(|i| i.id);
            assert_eq!(evicted, Some(id - 3));
            q.push_back(item(id, true));
            ops += 2;
            assert!(q.slots.len() <= 2 * q.len() + 1);
        }
        for id in 20_000..20_003 {
            assert_eq!(q.evict_droppable().map(|i| i.id), Some(id));
            ops += 1;
        }
        for _ in 0..10_000 {
            assert_eq!(q.evict_droppable(), None);
            ops += 1;
        }
        let steps = q.steps - start;
        // The tombstones left behind are swept once, when the last droppable item goes.
        assert!(steps <= 2 * ops, "{steps} steps for {ops} operations");
        assert_eq!(q.len(), 10_000);
        check_invariants(&q);
    }

    /// A producer/consumer that never lets the queue empty, evicting now and then, keeps
    /// memory proportional to the live items and the work linear.
    #[test]
    fn steady_state_keeps_memory_bounded() {
        let mut q = Ring::new();
        let mut next = 0u32;
        for _ in 0..100 {
            q.push_back(item(next, next % 2 == 0));
            next += 1;
        }
        let start = q.steps;
        for round in 0..50_000u32 {
            q.push_back(item(next, next % 2 == 0));
            next += 1;
            q.push_back(item(next, next % 3 == 0));
            next += 1;
            if round % 2 == 0 {
                q.evict_droppable();
            }
            q.pop_front();
            if round % 3 == 0 {
                q.pop_front();
            }
            assert!(q.slots.len() <= 2 * q.len() + 1);
            assert!(q.slots.capacity() <= SHRINK_FLOOR.max(2 * SHRINK_RATIO * q.slots.len()));
        }
        let steps = q.steps - start;
        assert!(steps <= 4 * 50_000 * 5, "{steps} steps");
        check_invariants(&q);
    }

    /// A burst that drains leaves no large ring behind once its owner is idle.
    #[test]
    fn drained_burst_gives_capacity_back() {
        let mut q = Ring::new();
        for id in 0..10_000 {
            q.push_back(item(id, id % 2 == 0));
        }
        for _ in 0..9_990 {
            q.pop_front();
        }
        assert_eq!(q.len(), 10);
        q.release();
        assert!(
            q.slots.capacity() <= SHRINK_FLOOR * 2,
            "{}",
            q.slots.capacity()
        );
        assert!(q.drop_order.capacity() <= SHRINK_FLOOR * 2);
        check_invariants(&q);
    }

    /// A queue that fills and drains in waves keeps its ring: it is not reallocated
    /// (and grown again) on every wave.
    #[test]
    fn waves_keep_their_ring() {
        let mut q = Ring::new();
        let mut next = 0;
        let mut capacities = Vec::new();
        for _ in 0..20 {
            for _ in 0..5_000 {
                q.push_back(item(next, next % 2 == 0));
                next += 1;
            }
            while q.pop_front().is_some() {}
            capacities.push(q.slots.capacity());
        }
        assert!(
            capacities.iter().all(|&c| c == capacities[0] && c >= 5_000),
            "{capacities:?}"
        );
        check_invariants(&q);
    }

    /// A ring left far too large while its queue stays in use is still given back, after
    /// as many removals as its capacity.
    #[test]
    fn oversized_ring_in_use_shrinks() {
        let mut q = Ring::new();
        for id in 0..10_000 {
            q.push_back(item(id, false));
        }
        while q.len() > 10 {
            q.pop_front();
        }
        for next in 10_000..50_000 {
            q.push_back(item(next, false));
            q.pop_front();
        }
        assert!(
            q.slots.capacity() <= SHRINK_FLOOR * 2,
            "{}",
            q.slots.capacity()
        );
        check_invariants(&q);
    }

    /// One step of the property test.
    #[derive(Debug, Clone)]
    enum Op {
        /// `push_back` an item (droppable or not).
        PushBack(bool),
        /// `push_front` an item.
        PushFront(bool),
        /// `pop_front`.
        Pop,
        /// `evict_droppable`.
        Evict,
        /// `take_where(id % m == 0)`.
        Take(u32),
    }

    proptest! {
        /// Random operations agree with a naive `VecDeque` model: same items, same order,
        /// same counts and bytes, same results.
        #[test]
        fn agrees_with_vecdeque_model(ops in prop::collection::vec(prop_oneof![
            4 => any::<bool>().prop_map(Op::PushBack),
            1 => any::<bool>().prop_map(Op::PushFront),
            2 => Just(Op::Pop),
            3 => Just(Op::Evict),
            1 => (2u32..6).prop_map(Op::Take),
        ], 0..200)) {
            let mut q = Ring::new();
            let mut model: VecDeque<Item> = VecDeque::new();
            for (id, op) in (0u32..).zip(ops) {
                match op {
                    Op::PushBack(qos0) => {
                        q.push_back(item(id, qos0));
                        model.push_back(item(id, qos0));
                    }
                    Op::PushFront(qos0) => {
                        q.push_front(item(id, qos0));
                        model.push_front(item(id, qos0));
                    }
                    Op::Pop => prop_assert_eq!(q.pop_front(), model.pop_front()),
                    Op::Evict => {
                        let want = model.iter().position(|i| i.qos0).and_then(|i| model.remove(i));
                        prop_assert_eq!(q.evict_droppable(), want);
                    }
                    Op::Take(m) => {
                        let (want, keep): (Vec<Item>, Vec<Item>) =
                            model.drain(..).partition(|i| i.id % m == 0);
                        model.extend(keep);
                        prop_assert_eq!(q.take_where(|i| i.id % m == 0), want);
                    }
                }
                prop_assert_eq!(q.len(), model.len());
                prop_assert_eq!(q.is_empty(), model.is_empty());
                prop_assert_eq!(q.bytes(), model.iter().map(|i| i.cost).sum::<usize>());
                prop_assert_eq!(q.front(), model.front());
                prop_assert!(q.iter().eq(model.iter()));
                check_invariants(&q);
            }
        }
    }
}
