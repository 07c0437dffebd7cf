//! Per-client session state and its outbound half: the bounded queue, the inflight
//! window, packet identifiers, topic aliases, and encoding of deliveries.
//!
//! A [`Session`] outlives its connections (persistent sessions); the connection-scoped
//! part lives in [`Link`] and dies with the connection. Nothing here does I/O: draining
//! a session appends encoded packets to the caller's buffer.
//!
//! Invariants:
//! - `inflight` holds at most `min(client Receive Maximum, config max_inflight)`
//!   entries, in the order they were first sent; packet ids in it are unique and never 0.
//! - `queue` holds at most `max_queued_messages` deliveries and `max_queued_bytes` bytes
//!   (the user's own, `auth.limits`, when its last CONNECT brought some).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::store::record::{EnqueueRef, Record};
use bytes::BytesMut;
use mote_codec::{Ack, Packet, PropValues, Properties, Protocol, Publish, QoS, SubOptions};

use super::durable::{QueueTail, TailStore};
use super::queue::{DeliveryQueue, Queued};
use super::retained::Cursor;
use super::streams::StreamTag;
use super::Clock;

mod outbound;
mod outbuf;
mod spill;

use crate::proto::message::Message;
pub(crate) use outbound::{write_packet, Outbox, SendSettings};
pub(crate) use outbuf::{OutBuf, MAX_SLICES};
pub(crate) use spill::decode_spilled;

/// Bytes of PUBLISH packets one drain writes into a connection's outbound buffer before
/// it stops to let the connection write them.
pub(crate) const OUTBOUND_BATCH: usize = 256 * 1024;

/// Bytes read back from a spill file at a time.
const REFILL_BYTES: usize = 256 * 1024;

/// One subscription of a session, as granted.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Subscription {
    /// Options with the granted QoS.
    pub(crate) options: SubOptions,
    /// v5 Subscription Identifier.
    pub(crate) id: Option<u32>,
}

/// A message on its way to one receiver.
#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    /// The message.
    pub(crate) msg: Arc<Message>,
    /// QoS for this receiver: min(publish, subscription).
    pub(crate) qos: QoS,
    /// RETAIN flag to send.
    pub(crate) retain: bool,
    /// Matching v5 subscription identifiers.
    pub(crate) sub_ids: Vec<u32>,
    /// `(group, filter)` when it came through a shared subscription.
    pub(crate) shared: Option<(Arc<str>, Arc<str>)>,
    /// Store sequence number of this delivery (0 = not stored: QoS 0 or a clean session).
    pub(crate) dseq: u64,
    /// Journal position that must be durable before this delivery may be sent.
    pub(crate) lsn: u64,
    /// The work queue this delivery was taken from (its `dseq` is the queue's, and it
    /// goes back to the queue if this receiver does not acknowledge it).
    pub(crate) queue: Option<Arc<str>>,
    /// The stream reader this delivery is from (`proto/streams.rs`): not the session's
    /// to keep; its end is reported as [`Event::StreamDone`].
    pub(crate) stream: Option<Arc<StreamTag>>,
    /// Times it was sent before (work queues: a redelivery is sent with DUP).
    pub(crate) attempts: u32,
}

impl Delivery {
    /// A message the broker keeps for itself (a work queue's job, a delayed publish):
    /// QoS 1, not stored yet, sent `attempts` times before.
    pub(crate) fn kept(msg: Arc<Message>, attempts: u32) -> Delivery {
        Delivery {
            msg,
            qos: QoS::AtLeastOnce,
            retain: false,
            sub_ids: Vec::new(),
            shared: None,
            dseq: 0,
            lsn: 0,
            queue: None,
            stream: None,
            attempts,
        }
    }

    /// The journal record that queues this delivery for `client`.
    pub(crate) fn enqueue_record<'a>(&'a self, client: &'a str) -> EnqueueRef<'a> {
        EnqueueRef {
            client,
            dseq: self.dseq,
            mid: self.msg.mid,
            qos: self.qos as u8,
            retain: self.retain,
            sub_ids: &self.sub_ids,
            shared: self.shared.as_ref().map(|(g, f)| (&**g, &**f)),
        }
    }
}

/// What the outbound half did to a stored delivery (the core journals it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Event {
    /// Sent for the first time with this packet id.
    Sent {
        /// Delivery sequence number.
        dseq: u64,
        /// Packet identifier.
        packet_id: u16,
        /// Delivery QoS.
        qos: QoS,
    },
    /// PUBREC arrived: the flow is past the point of no re-send.
    Released {
        /// Delivery sequence number.
        dseq: u64,
    },
    /// Acknowledged, expired or dropped.
    Finished {
        /// Delivery sequence number.
        dseq: u64,
    },
    /// A delivery taken from a work queue was acknowledged (or dropped as if it were).
    QueueDone {
        /// The queue.
        queue: Arc<str>,
        /// Its sequence number in the queue (0: not stored).
        dseq: u64,
        /// Its message.
        mid: u64,
    },
    /// A stream's delivery was acknowledged (or sent at QoS 0, or dropped as if it was).
    StreamDone(Arc<StreamTag>),
    /// A consumer acknowledged a job whose visibility timeout had run out (its copy is
    /// back in the queue): the consumer has room again, nothing is done.
    QueueFreed {
        /// The queue.
        queue: Arc<str>,
    },
}

/// Receives [`Event`]s; a no-op for volatile sessions.
pub(crate) type EventSink<'a> = &'a mut dyn FnMut(Event);

/// Where an outbound QoS 1/2 delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// PUBLISH sent; waiting for PUBACK (QoS 1) or PUBREC (QoS 2).
    Published,
    /// PUBREL sent; waiting for PUBCOMP.
    Released,
}

/// An outbound QoS 1/2 delivery not yet acknowledged.
#[derive(Debug, Clone)]
pub(crate) struct Inflight {
    /// Packet identifier.
    pub(crate) packet_id: u16,
    /// The delivery.
    pub(crate) delivery: Delivery,
    /// Where the flow stands.
    pub(crate) phase: Phase,
    /// A work queue's job whose visibility timeout ran out, or that the consumer
    /// refused (`$queue/$nack`), or a queue's or stream's delivery taken back while the
    /// client is connected (it unsubscribed): a copy went back to the queue or reader (or
    /// waits out a retry delay), and this entry only waits for the client's PUBACK to
    /// free its packet id (that PUBACK acknowledges nothing).
    pub(crate) stale: bool,
}

/// How the core wakes the task serving a connection (the runtime implements it; the core
/// only names whom to wake, in [`super::Effects`]).
pub(crate) trait Wake: Send + Sync + std::fmt::Debug {
    /// There is something to send, or the connection was kicked.
    fn wake(&self);
    /// Where the core asks the connection to close (see [`Kick`]): one object per
    /// connection carries both, so a connection costs one allocation for them.
    fn kick(&self) -> &Kick;
}

/// Why the broker ends a connection from outside its task (takeover, overflow).
#[derive(Debug, Default)]
pub(crate) struct Kick {
    reason: AtomicU8,
}

impl Kick {
    /// Asks the connection to close with the v5 `reason` (0 = not kicked).
    pub(crate) fn set(&self, reason: u8) {
        self.reason.store(reason, Ordering::Release);
    }
    /// The reason asked for, 0 if none.
    pub(crate) fn get(&self) -> u8 {
        self.reason.load(Ordering::Acquire)
    }
}

/// The connection-scoped part of a session.
#[derive(Debug)]
pub(crate) struct Link {
    /// Unique id of the connection.
    pub(crate) conn_id: u64,
    /// Wakes the connection task when there is something to send; its [`Kick`] is set
    /// when the broker wants the connection closed (see [`Link::kick`]).
    pub(crate) notify: Arc<dyn Wake>,
    /// When the credential it logged in with expires (a token's `exp`); `None`: not a
    /// token login. Such a user is the token's, not the password file's.
    pub(crate) credential_expires: Option<Instant>,
    /// Protocol of this connection.
    pub(crate) protocol: Protocol,
    /// Client's v5 Receive Maximum (how many QoS 1/2 we may have unacknowledged).
    pub(crate) client_receive_max: u16,
    /// Client's v5 Maximum Packet Size.
    pub(crate) client_max_packet: u32,
    /// Client's v5 Topic Alias Maximum (outbound aliases we may assign).
    pub(crate) client_alias_max: u16,
    /// The topic aliases of this connection, both ways.
    pub(crate) aliases: Aliases,
}

impl Link {
    /// Set when the broker wants the connection closed.
    pub(crate) fn kick(&self) -> &Kick {
        self.notify.kick()
    }
}

/// The topic aliases of one connection in both directions, allocated at the first one:
/// a connection that uses none (every 3.1.1 one, most v5 ones) carries one pointer
/// instead of two empty maps (96 bytes, issue #15: what an idle connection costs).
#[derive(Debug, Default)]
pub(crate) struct Aliases(Option<Box<AliasMaps>>);

/// See [`Aliases`].
#[derive(Debug, Default)]
struct AliasMaps {
    /// Outbound topic aliases we assigned.
    out: HashMap<Arc<str>, u16>,
    /// Inbound topic aliases the client set.
    inbound: HashMap<u16, Arc<str>>,
}

impl Aliases {
    /// The outbound alias assigned to `topic`.
    pub(crate) fn out(&self, topic: &str) -> Option<u16> {
        self.0.as_ref()?.out.get(topic).copied()
    }

    /// How many outbound aliases are assigned.
    pub(crate) fn out_count(&self) -> usize {
        self.0.as_ref().map_or(0, |m| m.out.len())
    }

    /// Assigns the outbound alias `alias` to `topic`.
    pub(crate) fn set_out(&mut self, topic: Arc<str>, alias: u16) {
        self.maps().out.insert(topic, alias);
    }

    /// The topic the client set for inbound alias `alias`.
    pub(crate) fn inbound(&self, alias: u16) -> Option<&Arc<str>> {
        self.0.as_ref()?.inbound.get(&alias)
    }

    /// The client (re)set inbound alias `alias` to `topic`.
    pub(crate) fn set_inbound(&mut self, alias: u16, topic: Arc<str>) {
        self.maps().inbound.insert(alias, topic);
    }

    fn maps(&mut self) -> &mut AliasMaps {
        self.0.get_or_insert_with(Box::default)
    }
}

/// The will of a connection, kept owned until it fires or is cancelled.
#[derive(Debug, Clone)]
pub(crate) struct WillState {
    /// The message to publish.
    pub(crate) msg: Arc<Message>,
    /// v5 Will Delay Interval in seconds.
    pub(crate) delay: u32,
    /// v5 Message Expiry Interval of the will, counted from its publication.
    pub(crate) expiry: Option<u32>,
}

/// Counters of what a session had to drop.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Drops {
    /// Deliveries dropped because the queue was full.
    pub(crate) overflow: u64,
    /// Deliveries dropped because the message expired.
    pub(crate) expired: u64,
    /// Deliveries dropped because they exceeded the client's Maximum Packet Size.
    pub(crate) too_large: u64,
}

/// A client's session: one client's protocol state in both directions, behind its own
/// methods (the core asks it, it does not reach into it).
#[derive(Debug)]
pub(crate) struct Session {
    /// Client identifier.
    client_id: Arc<str>,
    /// The user that created the session (`None`: anonymous); a CONNECT by another user
    /// does not resume it.
    user: Option<Arc<str>>,
    /// The rules the credential of its last CONNECT carried (a token's `acl` claim),
    /// looked at before the rules file's. Not stored: after a restart a session has none
    /// until its client connects again, which decides its subscriptions anew.
    grant: Option<Arc<super::acl::Grant>>,
    /// The user's own limits (`auth.limits`) from its last CONNECT; `None`: `[mqtt]`'s.
    /// Not stored: after a restart a session has `[mqtt]`'s until its client connects
    /// again.
    limits: Option<Arc<super::login::Limits>>,
    /// Subscriptions by full filter (including any `$share/group/` prefix).
    subscriptions: HashMap<Arc<str>, Subscription>,
    /// What most sessions never need, allocated at its first use (see [`Rare`]).
    rare: Option<Box<Rare>>,
    /// Session Expiry Interval in seconds (`u32::MAX` = never).
    expiry_interval: u32,
    /// Deliveries not yet sent.
    queue: DeliveryQueue<Delivery>,
    /// Sent, unacknowledged QoS 1/2 deliveries, oldest first.
    inflight: VecDeque<Inflight>,
    /// Every packet id in `inflight` lies between the first's and the last's (in the
    /// circular order ids are handed out in), so a new id beyond the last needs no
    /// search (see `alloc_packet_id`). False once recovered entries came in, or ids
    /// wrapped around onto the window, until the window is empty again.
    ids_ordered: bool,
    /// Inbound QoS 2 packet ids between PUBREC and PUBREL; allocated at the first (most
    /// sessions never hold one). Boxed on purpose: an empty set inline is 48 bytes in
    /// every session, the box 8 (issue #15: what an idle connection costs).
    #[allow(clippy::box_collection)]
    inbound_qos2: Option<Box<HashSet<u16>>>,
    next_packet_id: u16,
    /// The live connection, if any.
    link: Option<Link>,
    /// The will of the current (or last) connection.
    will: Option<WillState>,
    /// When the last connection ended (for the store).
    offline_since: Option<Instant>,
    /// True while the store holds this session (it was opened with an expiry above 0).
    persisted: bool,
    /// The tail of the queue kept on disk (always after `queue`).
    spill: Option<Box<dyn QueueTail>>,
    /// Bytes queued in memory across all sessions (shared with the core).
    mem: Arc<AtomicUsize>,
}

/// The parts of a session that most sessions never use, in one box allocated at the
/// first use: 80 bytes inline in every session, 8 boxed (issue #15: what an idle
/// connection costs).
#[derive(Debug, Default)]
struct Rare {
    /// The filters of its `$json/` subscriptions (without the prefixes): a delivery
    /// matching one has its sensor-event payload sent as JSON.
    json_filters: Vec<Arc<str>>,
    /// Retained messages still to send for recent subscriptions, in order.
    retained_jobs: VecDeque<RetainedJob>,
    /// What the session had to drop.
    drops: Drops,
}

impl Rare {
    /// `rare`, allocated if it was not.
    fn of(rare: &mut Option<Box<Rare>>) -> &mut Rare {
        rare.get_or_insert_with(Box::default)
    }

    /// The `$json/` filters in `rare` (none if it is not allocated).
    fn json_filters(rare: &Option<Box<Rare>>) -> &[Arc<str>] {
        rare.as_ref().map_or(&[], |r| &r.json_filters)
    }
}

impl Queued for Delivery {
    /// QoS 0 deliveries make room for others when a queue is full (MQTT 5 §4.1 lets a
    /// server drop QoS 0 messages it queues).
    fn droppable(&self) -> bool {
        // A work queue's or a stream's delivery is counted by its owner, which must
        // hear of its end: never evicted silently.
        self.qos == QoS::AtMostOnce && self.queue.is_none() && self.stream.is_none()
    }
    fn cost(&self) -> usize {
        self.msg.cost()
    }
}

/// Retained messages still to send for a new subscription: walked from the retained
/// index in steps bounded by the session's queue room, so one SUBSCRIBE can neither
/// hold the core nor grow a queue past its limits.
#[derive(Debug)]
pub(crate) struct RetainedJob {
    /// The subscription's filter (without any `$share/` prefix).
    pub(crate) filter: Arc<str>,
    /// Granted QoS.
    pub(crate) qos: QoS,
    /// v5 Subscription Identifier.
    pub(crate) sub_id: Option<u32>,
    /// Where the walk resumes (`None`: from the start).
    pub(crate) cursor: Option<Cursor>,
}

/// Where a delivery that must not stay in memory goes (`None`: memory).
pub(crate) type SpillTo<'a> = Option<&'a dyn TailStore>;

impl Drop for Session {
    fn drop(&mut self) {
        self.mem.fetch_sub(self.queue.bytes(), Ordering::Relaxed);
    }
}

/// Limits the session enforces on its queue.
#[derive(Debug, Clone, Copy)]
pub(crate) struct QueueLimits {
    /// Most deliveries queued.
    pub(crate) max_messages: usize,
    /// Most bytes queued.
    pub(crate) max_bytes: usize,
    /// Most outbound QoS 1/2 inflight (before the client's Receive Maximum).
    pub(crate) max_inflight: u16,
}

/// What happened to a delivery offered to a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Enqueued {
    /// Queued.
    Ok,
    /// Dropped (queue full, nothing lower to evict).
    Dropped,
}

impl Session {
    /// A new empty session whose in-memory queue counts towards `mem`.
    pub(crate) fn new(client_id: Arc<str>, mem: Arc<AtomicUsize>) -> Session {
        Session {
            client_id,
            user: None,
            grant: None,
            limits: None,
            subscriptions: HashMap::new(),
            rare: None,
            expiry_interval: 0,
            queue: DeliveryQueue::new(),
            inflight: VecDeque::new(),
            ids_ordered: true,
            inbound_qos2: None,
            next_packet_id: 1,
            link: None,
            will: None,
            offline_since: None,
            persisted: false,
            spill: None,
            mem,
        }
    }

    /// Client identifier.
    pub(crate) fn client_id(&self) -> &Arc<str> {
        &self.client_id
    }

    /// The user that created the session (`None`: anonymous).
    pub(crate) fn user(&self) -> Option<&Arc<str>> {
        self.user.as_ref()
    }

    /// Sets the user the session belongs to.
    pub(crate) fn set_user(&mut self, user: Option<Arc<str>>) {
        self.user = user;
    }

    /// The rules its credential carries, if any.
    pub(crate) fn grant(&self) -> Option<&Arc<super::acl::Grant>> {
        self.grant.as_ref()
    }

    /// Sets the rules its credential carries; returns the ones it had.
    pub(crate) fn set_grant(
        &mut self,
        grant: Option<Arc<super::acl::Grant>>,
    ) -> Option<Arc<super::acl::Grant>> {
        std::mem::replace(&mut self.grant, grant)
    }

    /// Sets the user's own limits (`None`: `[mqtt]`'s).
    pub(crate) fn set_limits(&mut self, limits: Option<Arc<super::login::Limits>>) {
        self.limits = limits;
    }

    /// Its queue limits: `base` (`[mqtt]`'s), with the ones its user's own limits set.
    pub(crate) fn queue_limits(&self, base: QueueLimits) -> QueueLimits {
        match &self.limits {
            None => base,
            Some(l) => l.queue(base),
        }
    }

    /// Most subscriptions it may hold: its user's own limit, else `base` (`[mqtt]`'s).
    pub(crate) fn max_subscriptions(&self, base: usize) -> usize {
        self.limits
            .as_ref()
            .and_then(|l| l.max_subscriptions)
            .unwrap_or(base)
    }

    /// True while the store holds this session (it was opened with an expiry above 0).
    pub(crate) fn persisted(&self) -> bool {
        self.persisted
    }

    /// Marks the session as held by the store (or not).
    pub(crate) fn set_persisted(&mut self, persisted: bool) {
        self.persisted = persisted;
    }

    /// Session Expiry Interval in seconds (`u32::MAX` = never).
    pub(crate) fn expiry_interval(&self) -> u32 {
        self.expiry_interval
    }

    /// Sets the Session Expiry Interval.
    pub(crate) fn set_expiry_interval(&mut self, secs: u32) {
        self.expiry_interval = secs;
    }

    /// When the last connection ended, while offline.
    pub(crate) fn offline_since(&self) -> Option<Instant> {
        self.offline_since
    }

    /// The live connection, if any.
    pub(crate) fn link(&self) -> Option<&Link> {
        self.link.as_ref()
    }

    /// The live connection, if any, to change its connection-scoped state (aliases).
    pub(crate) fn link_mut(&mut self) -> Option<&mut Link> {
        self.link.as_mut()
    }

    /// True when connection `conn_id` is the one attached.
    pub(crate) fn owned_by(&self, conn_id: u64) -> bool {
        self.link.as_ref().is_some_and(|l| l.conn_id == conn_id)
    }

    /// Attaches a new connection.
    pub(crate) fn attach(&mut self, link: Link) {
        self.link = Some(link);
        self.offline_since = None;
    }

    /// Detaches the connection for a takeover: another attaches at once, so the session
    /// is not offline in between.
    pub(crate) fn take_link(&mut self) -> Option<Link> {
        self.offline_since = None;
        self.link.take()
    }

    /// Detaches the connection that ended at `now`; the session is offline from then,
    /// and gives back the ring a drained burst left (an offline session may wait long).
    pub(crate) fn detach(&mut self, now: Instant) {
        self.link = None;
        self.offline_since = Some(now);
        self.release_idle();
    }

    /// Marks a recovered session offline since `at`.
    pub(crate) fn set_offline_since(&mut self, at: Instant) {
        self.offline_since = Some(at);
    }

    /// The will of the current (or last) connection.
    pub(crate) fn will(&self) -> Option<&WillState> {
        self.will.as_ref()
    }

    /// Sets (or clears) the will.
    pub(crate) fn set_will(&mut self, will: Option<WillState>) {
        self.will = will;
    }

    /// Takes the will out (it is published or discarded).
    pub(crate) fn take_will(&mut self) -> Option<WillState> {
        self.will.take()
    }

    /// Subscriptions by full filter (including any `$share/group/` prefix).
    pub(crate) fn subscriptions(&self) -> impl Iterator<Item = (&Arc<str>, &Subscription)> {
        self.subscriptions.iter()
    }

    /// True when the session holds a subscription to `filter` (full filter).
    pub(crate) fn has_subscription(&self, filter: &str) -> bool {
        self.subscriptions.contains_key(filter)
    }

    /// Number of subscriptions.
    pub(crate) fn subscription_count(&self) -> usize {
        self.subscriptions.len()
    }

    /// Adds or replaces the subscription to `filter`; true when it replaced one.
    pub(crate) fn subscribe(&mut self, filter: Arc<str>, sub: Subscription) -> bool {
        if let Some(inner) = super::subscribe::json_filter(&filter) {
            let json = &mut Rare::of(&mut self.rare).json_filters;
            if !json.iter().any(|f| &**f == inner) {
                json.push(Arc::from(inner));
            }
        }
        self.subscriptions.insert(filter, sub).is_some()
    }

    /// Removes the subscription to `filter`; true when there was one.
    pub(crate) fn unsubscribe(&mut self, filter: &str) -> bool {
        let existed = self.subscriptions.remove(filter).is_some();
        if existed && super::subscribe::json_filter(filter).is_some() {
            // Another `$json/` subscription (shared or not) may hold the same filter.
            let still: Vec<Arc<str>> = self
                .subscriptions
                .keys()
                .filter_map(|k| super::subscribe::json_filter(k).map(Arc::from))
                .collect();
            Rare::of(&mut self.rare).json_filters = still;
        }
        existed
    }

    /// True when inbound QoS 2 packet id `id` is between PUBREC and PUBREL.
    pub(crate) fn holds_inbound_qos2(&self, id: u16) -> bool {
        self.inbound_qos2.as_ref().is_some_and(|h| h.contains(&id))
    }

    /// Inbound QoS 2 flows between PUBREC and PUBREL.
    pub(crate) fn inbound_qos2_count(&self) -> usize {
        self.inbound_qos2.as_ref().map_or(0, |h| h.len())
    }

    /// Holds inbound QoS 2 packet id `id` until PUBREL (MQTT-4.3.3-9).
    pub(crate) fn hold_inbound_qos2(&mut self, id: u16) {
        self.inbound_qos2
            .get_or_insert_with(Box::default)
            .insert(id);
    }

    /// PUBREL for `id`: lets it go; true when it was held.
    pub(crate) fn release_inbound_qos2(&mut self, id: u16) -> bool {
        self.inbound_qos2.as_mut().is_some_and(|h| h.remove(&id))
    }

    /// The inbound QoS 2 packet ids held.
    pub(crate) fn inbound_qos2(&self) -> impl Iterator<Item = u16> + '_ {
        self.inbound_qos2.iter().flat_map(|h| h.iter().copied())
    }

    /// Restores the inbound QoS 2 ids held (recovery).
    pub(crate) fn restore_inbound_qos2(&mut self, ids: HashSet<u16>) {
        self.inbound_qos2 = (!ids.is_empty()).then(|| Box::new(ids));
    }

    /// Deliveries queued in memory (not the on-disk tail).
    pub(crate) fn queued_len(&self) -> usize {
        self.queue.len()
    }

    /// Queue cost of the deliveries queued in memory.
    pub(crate) fn queued_bytes(&self) -> usize {
        self.queue.bytes()
    }

    /// Deliveries queued in memory, oldest first.
    pub(crate) fn queued(&self) -> impl Iterator<Item = &Delivery> {
        self.queue.iter()
    }

    /// Sent, unacknowledged QoS 1/2 deliveries, oldest first.
    pub(crate) fn inflight(&self) -> impl Iterator<Item = &Inflight> {
        self.inflight.iter()
    }

    /// Takes every delivery in flight out (the session ends).
    pub(crate) fn take_inflight(&mut self) -> VecDeque<Inflight> {
        std::mem::take(&mut self.inflight)
    }

    /// Puts a recovered delivery back in flight, after those already there.
    pub(crate) fn restore_inflight(&mut self, inflight: Inflight) {
        self.ids_ordered = false;
        self.inflight.push_back(inflight);
    }

    /// What this session had to drop.
    pub(crate) fn drops(&self) -> Drops {
        self.rare.as_ref().map_or_else(Drops::default, |r| r.drops)
    }

    /// The on-disk tail of the queue, if any.
    pub(crate) fn spill_mut(&mut self) -> Option<&mut (dyn QueueTail + 'static)> {
        self.spill.as_deref_mut()
    }

    /// Queues retained-message jobs for new subscriptions; each replaces a job for the
    /// same filter still running.
    pub(crate) fn add_retained_jobs(&mut self, jobs: Vec<RetainedJob>) {
        if jobs.is_empty() {
            return;
        }
        let queued = &mut Rare::of(&mut self.rare).retained_jobs;
        let fresh: HashSet<&Arc<str>> = jobs.iter().map(|j| &j.filter).collect();
        queued.retain(|j| !fresh.contains(&j.filter));
        queued.extend(jobs);
    }

    /// The retained-message job to continue, if any.
    pub(crate) fn retained_job(&mut self) -> Option<&mut RetainedJob> {
        self.rare.as_mut()?.retained_jobs.front_mut()
    }

    /// The current retained-message job is complete.
    pub(crate) fn finish_retained_job(&mut self) {
        if let Some(r) = self.rare.as_mut() {
            r.retained_jobs.pop_front();
        }
    }

    /// True while retained messages of new subscriptions are still to be queued.
    pub(crate) fn has_retained_jobs(&self) -> bool {
        self.rare
            .as_ref()
            .is_some_and(|r| !r.retained_jobs.is_empty())
    }

    /// The next message of a work queue's (or the delayed store's) own session: the
    /// front of its queue, read back from the on-disk tail when memory ran dry.
    pub(crate) fn take_ready(&mut self, clock: Clock) -> Option<Delivery> {
        if self.queue.is_empty() {
            self.refill(clock);
        }
        self.pop_queue()
    }

    /// Puts a work queue's message back at the front of the queue's own session.
    pub(crate) fn push_front_ready(&mut self, d: Delivery) {
        self.add_mem(d.msg.cost());
        self.queue.push_front(d);
    }

    /// True when the delivery in flight as `packet_id` (awaiting PUBACK) is a work
    /// queue's.
    pub(crate) fn holds_queue_delivery(&self, packet_id: u16) -> bool {
        self.inflight.iter().any(|i| {
            i.packet_id == packet_id
                && i.phase == Phase::Published
                && i.delivery.queue.is_some()
                && !i.stale
        })
    }

    /// The work queue's job with message `mid` this session holds, given back because
    /// its visibility timeout ran out: a job not yet sent leaves the session; one in
    /// flight stays there, stale, until the client's PUBACK frees its packet id, and a
    /// copy (one attempt more) is returned. The flag tells whether a stale entry stayed.
    pub(crate) fn abandon_queue_job(&mut self, mid: u64) -> Option<(Delivery, bool)> {
        let held = |d: &Delivery| d.queue.is_some() && d.msg.mid == mid;
        if let Some(i) = self
            .inflight
            .iter_mut()
            .find(|i| !i.stale && i.phase == Phase::Published && held(&i.delivery))
        {
            i.stale = true;
            let mut d = i.delivery.clone();
            d.attempts += 1;
            return Some((d, true));
        }
        self.take_queued(held)
            .into_iter()
            .next()
            .map(|d| (d, false))
    }

    /// The work queue's job in flight as `packet_id`, refused by the consumer
    /// (`$queue/$nack`): its entry stays, stale, until the client's PUBACK frees the
    /// packet id, and a copy (one attempt more) is returned.
    pub(crate) fn refuse_queue_job(&mut self, packet_id: u16) -> Option<Delivery> {
        let i = self.inflight.iter_mut().find(|i| {
            i.packet_id == packet_id
                && i.phase == Phase::Published
                && i.delivery.queue.is_some()
                && !i.stale
        })?;
        i.stale = true;
        let mut d = i.delivery.clone();
        d.attempts += 1;
        Some(d)
    }

    /// The message id and queue of the work queue's job in flight as `packet_id`.
    pub(crate) fn queue_job_in_flight(&self, packet_id: u16) -> Option<(u64, Arc<str>)> {
        self.inflight
            .iter()
            .find(|i| {
                i.packet_id == packet_id
                    && i.phase == Phase::Published
                    && i.delivery.queue.is_some()
                    && !i.stale
            })
            .and_then(|i| Some((i.delivery.msg.mid, i.delivery.queue.clone()?)))
    }

    /// Takes back the work-queue delivery in flight as `packet_id` (a consumer refused it:
    /// a v5 PUBACK with a reason code of 0x80 or more), counted as one more attempt.
    pub(crate) fn take_refused_queue_delivery(&mut self, packet_id: u16) -> Option<Delivery> {
        let pos = self.inflight.iter().position(|i| {
            i.packet_id == packet_id
                && i.phase == Phase::Published
                && i.delivery.queue.is_some()
                && !i.stale
        })?;
        let mut d = self.inflight.remove(pos)?.delivery;
        d.attempts += 1;
        Some(d)
    }

    /// Takes the work-queue deliveries this session holds (of queue `only`, or of any),
    /// those in flight first (counted as one more attempt), then the queued ones.
    ///
    /// While a connection is attached (the consumer unsubscribed, or lost the right to
    /// read), a delivery in flight is taken as a copy and its entry stays, stale, until
    /// the client acknowledges it: the client still holds its packet id, which must not
    /// be reused before (MQTT-2.2.1-3), and it counts against the client's Receive
    /// Maximum (MQTT-3.3.4-9).
    pub(crate) fn take_queue_deliveries(&mut self, only: Option<&Arc<str>>) -> Vec<Delivery> {
        let ours = |d: &Delivery| match (&d.queue, only) {
            (Some(q), Some(o)) => q == o,
            (Some(_), None) => true,
            (None, _) => false,
        };
        let mut taken = self.take_in_flight(ours, |i| {
            let mut d = i.delivery.clone();
            d.attempts += 1;
            d
        });
        taken.extend(self.take_queued(ours));
        taken
    }

    /// Takes what `take` makes of this session's in-flight entries that are `ours` and
    /// not stale. With a connection attached those entries stay, stale (see
    /// [`Session::take_queue_deliveries`]); without one they leave, and so do stale ones,
    /// whose copies went back before.
    fn take_in_flight<T>(
        &mut self,
        ours: impl Fn(&Delivery) -> bool,
        take: impl Fn(&Inflight) -> T,
    ) -> Vec<T> {
        let online = self.online();
        let mut taken = Vec::new();
        let mut kept = VecDeque::with_capacity(self.inflight.len());
        for mut i in std::mem::take(&mut self.inflight) {
            if !ours(&i.delivery) {
                kept.push_back(i);
                continue;
            }
            if !i.stale {
                taken.push(take(&i));
                i.stale = true;
            }
            if online {
                kept.push_back(i);
            }
        }
        self.inflight = kept;
        taken
    }

    /// Takes the stream deliveries this session holds (of reader `(stream, reader)`, or
    /// of every reader), in flight or queued, for their readers to send again; with a
    /// connection attached, entries in flight stay, stale, as a work queue's do
    /// ([`Session::take_queue_deliveries`]).
    pub(crate) fn take_stream_deliveries(
        &mut self,
        only: Option<(&str, &str)>,
    ) -> Vec<Arc<StreamTag>> {
        let ours = |d: &Delivery| match (&d.stream, only) {
            (Some(t), Some((s, r))) => &*t.stream == s && &*t.reader == r,
            (Some(_), None) => true,
            (None, _) => false,
        };
        let is_ours = |d: &Delivery| d.stream.is_some() && ours(d);
        let mut taken = self.take_in_flight(is_ours, |i| i.delivery.stream.clone());
        taken.extend(self.take_queued(ours).into_iter().map(|d| d.stream));
        taken.into_iter().flatten().collect()
    }

    /// True when a connection is attached.
    pub(crate) fn online(&self) -> bool {
        self.link.is_some()
    }

    /// Queues a delivery, evicting QoS 0 deliveries first when full (full: past `limits`,
    /// or the user's own queue limits when it has some).
    pub(crate) fn enqueue(
        &mut self,
        d: Delivery,
        limits: &QueueLimits,
        spill: SpillTo<'_>,
        clock: Clock,
    ) -> Enqueued {
        if d.queue.is_some() || d.stream.is_some() {
            // A work queue's or a stream's delivery: at most the queue's prefetch (the
            // reader's window) of them are here, counted by the queue (the reader), so
            // the session's own limits do not apply.
            self.add_mem(d.msg.cost());
            self.queue.push_back(d);
            return Enqueued::Ok;
        }
        let limits = self.queue_limits(*limits);
        let cost = d.msg.cost();
        let (spilled, spilled_bytes) = self.spilled();
        while self.queue.len() + spilled >= limits.max_messages
            || self.queue.bytes() + spilled_bytes + cost > limits.max_bytes
        {
            if d.qos == QoS::AtMostOnce {
                Rare::of(&mut self.rare).drops.overflow += 1;
                return Enqueued::Dropped;
            }
            // The oldest queued QoS 0 delivery makes room (amortised O(1)).
            match self.queue.evict_droppable() {
                Some(old) => {
                    self.sub_mem(old.msg.cost());
                    Rare::of(&mut self.rare).drops.overflow += 1;
                }
                None => {
                    Rare::of(&mut self.rare).drops.overflow += 1;
                    return Enqueued::Dropped;
                }
            }
        }
        // Once a tail is on disk, everything after it goes there too (order).
        if d.qos != QoS::AtMostOnce && (self.spill.is_some() || spill.is_some()) {
            match self.spill_push(&d, spill, clock) {
                Ok(()) => return Enqueued::Ok,
                Err(e) => {
                    tracing::warn!(client = %self.client_id, error = %e, "spill failed; queueing in memory")
                }
            }
        }
        self.add_mem(cost);
        self.queue.push_back(d);
        Enqueued::Ok
    }

    /// Deliveries in the on-disk tail, and their queue cost.
    pub(crate) fn spilled(&self) -> (usize, usize) {
        self.spill
            .as_ref()
            .map_or((0, 0), |s| (s.count(), s.bytes()))
    }

    /// Counts `n` more bytes queued in memory across all sessions (the session's own
    /// count is its queue's).
    fn add_mem(&mut self, n: usize) {
        self.mem.fetch_add(n, Ordering::Relaxed);
    }

    fn sub_mem(&mut self, n: usize) {
        self.mem.fetch_sub(n, Ordering::Relaxed);
    }

    /// Keeps only the queued deliveries `keep` accepts; returns the others.
    pub(crate) fn take_queued(&mut self, mut take: impl FnMut(&Delivery) -> bool) -> Vec<Delivery> {
        let taken = self.queue.take_where(|d| take(d));
        for d in &taken {
            self.sub_mem(d.msg.cost());
        }
        taken
    }

    /// Puts a restored delivery at the end of the queue (memory, or the spill tail).
    pub(crate) fn restore_queued(&mut self, d: Delivery, spill: SpillTo<'_>, clock: Clock) {
        if (self.spill.is_some() || spill.is_some()) && self.spill_push(&d, spill, clock).is_ok() {
            return;
        }
        self.add_mem(d.msg.cost());
        self.queue.push_back(d);
    }

    /// Gives back the memory a drained burst left in the queue's ring, and an empty set
    /// of held QoS 2 ids: for a session whose connection has gone quiet or ended
    /// (`proto/queue.rs` keeps the ring while traffic flows).
    pub(crate) fn release_idle(&mut self) {
        self.queue.release();
        // Kept while in use (a QoS 2 publisher would otherwise allocate it per message).
        if self.inbound_qos2.as_ref().is_some_and(|h| h.is_empty()) {
            self.inbound_qos2 = None;
        }
    }

    fn pop_queue(&mut self) -> Option<Delivery> {
        let d = self.queue.pop_front()?;
        self.sub_mem(d.msg.cost());
        Some(d)
    }
}
