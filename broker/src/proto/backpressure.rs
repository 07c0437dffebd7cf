//! Publisher backpressure (`mqtt.publisher_backpressure_ms`): when a publish fills an
//! online subscriber's queue past half its limits, the connection that published it
//! stops reading its socket (TCP backpressure, as rumqttd does) until that subscriber
//! has drained below a quarter of them, so a burst that outruns one subscriber slows
//! its publishers instead of losing messages.
//!
//! Bounds, so no client can stall others for long:
//! - one congestion episode of a subscriber pauses publishers for at most the budget;
//!   past it they are released and the queue's own policy applies (QoS 0 dropped
//!   oldest first, a QoS 1/2 consumer that cannot keep up disconnected);
//! - a publisher whose own queue is congested is never paused (it must keep reading
//!   its acknowledgements: two clients publishing to each other cannot deadlock);
//! - offline sessions (nobody draining) and the broker's own stores never pause anyone;
//! - a subscriber that goes offline releases the publishers it held.

use super::*;

/// A subscriber past its high-water mark.
#[derive(Debug)]
pub(super) struct Congestion {
    /// When it passed it (the episode's start).
    since: Instant,
    /// Connections paused on it, woken when it drains (or the episode ends).
    paused: Vec<Arc<dyn Wake>>,
}

/// Whether a queue of `len` deliveries and `bytes` bytes is past `1/div` of `limits`.
fn past(len: usize, bytes: usize, limits: &QueueLimits, div: usize) -> bool {
    len.saturating_mul(div) >= limits.max_messages || bytes.saturating_mul(div) >= limits.max_bytes
}

impl Session {
    /// Past its high-water mark (half its queue limits, spilled deliveries included):
    /// whoever fills it further is paused.
    pub(super) fn congested(&self, limits: &QueueLimits) -> bool {
        let (spilled, spilled_bytes) = self.spilled();
        past(
            self.queued_len() + spilled,
            self.queued_bytes() + spilled_bytes,
            limits,
            2,
        )
    }
}

impl Core {
    /// The PUBLISH was routed: nobody more to pause for it.
    pub(super) fn routed(&mut self) {
        self.held.pausable = None;
    }

    /// `client` (online) was just queued a delivery and is past its high-water mark
    /// ([`Session::congested`]): the current publisher is paused on it (within the
    /// episode's budget).
    pub(super) fn check_congestion(&mut self, client: &str, now: Instant) {
        let Some(s) = self.shards.get(client) else {
            return;
        };
        let Some(publisher) = self.held.pausable.clone() else {
            return;
        };
        // Its own queue: never paused on itself.
        if s.link().is_some_and(|l| Arc::ptr_eq(&l.notify, &publisher)) {
            return;
        }
        let key = s.client_id().clone();
        let budget = Duration::from_millis(self.cfg.publisher_backpressure_ms);
        let c = self
            .shards
            .of_mut(&key)
            .congested
            .entry(key)
            .or_insert_with(|| Congestion {
                since: now,
                paused: Vec::new(),
            });
        let until = c.since + budget;
        if until <= now {
            // The episode used its budget: the queue's policy applies from here.
            return;
        }
        if !c.paused.iter().any(|p| Arc::ptr_eq(p, &publisher)) {
            c.paused.push(publisher);
        }
        self.stats.publishers_paused += 1;
        self.held.pause_until = Some(self.held.pause_until.map_or(until, |u| u.min(until)));
    }

    /// `client` drained: below its low-water mark its paused publishers go on. Also
    /// when it goes offline (`force`).
    pub(super) fn relieve(&mut self, client: &str, force: bool) {
        let limits = self.limits;
        // Its congestion is in its shard: no other shard is looked at.
        let shard = self.shards.of_mut(client);
        if shard.congested.is_empty() {
            return;
        }
        let below = match shard.sessions.get(client) {
            Some(s) => {
                let (spilled, spilled_bytes) = s.spilled();
                let (len, bytes) = (s.queued_len() + spilled, s.queued_bytes() + spilled_bytes);
                !past(len, bytes, &s.queue_limits(limits), 4)
            }
            None => true,
        };
        if !(force || below) {
            return;
        }
        if let Some(c) = shard.congested.remove(client) {
            for p in c.paused {
                p.wake();
            }
        }
    }

    /// Until when the connection of the calls since the last take must not read (it
    /// published to a congested subscriber), resetting it.
    pub(crate) fn take_pause(&mut self) -> Option<Instant> {
        self.held.pause_until.take()
    }

    /// True when the connection of the current call is to pause after its last PUBLISH.
    pub(crate) fn pausing(&self) -> bool {
        self.held.pause_until.is_some()
    }
}
