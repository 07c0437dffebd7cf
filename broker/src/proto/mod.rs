//! The broker's protocol core: every MQTT rule that spans sessions, without I/O.
//!
//! A connection task decodes packets and hands them to [`Core`] under one lock; the core
//! writes the connection's replies into a buffer and names the other connections to wake
//! ([`Effects`]). Time is passed in, so the whole core runs under tests with virtual time.
//!
//! Routing: the [`SubscriptionTree`] maps filters to `(client, share group)` keys. A
//! publish is delivered once per client at the highest matching QoS with every matching
//! subscription identifier, and once per shared group to one member (online first, round
//! robin).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use mote_codec::{
    reason, topic, Ack, ConnAck, Connect, Disconnect, Packet, PropValues, Properties, Protocol,
    Publish, QoS, RetainHandling, SubAck, SubOptions, Subscribe, UnsubAck, Unsubscribe,
};

pub(crate) mod acl;
mod backpressure;
mod connect;
pub(crate) mod delayed;
pub(crate) mod durable;
pub(crate) mod login;
mod matches;
pub(crate) mod message;
mod policy;
pub(crate) mod queue;
mod queues;
pub(crate) mod retained;
mod router;
pub(crate) mod session;
mod shard;
mod snapshot;
pub(crate) use snapshot::Compaction;
pub(crate) mod streams;
mod subscribe;
mod sys;
pub(crate) use queues::QueueStats;
pub(crate) use sys::RuntimeStats;
pub(crate) mod timers;
pub(crate) mod trie;

use crate::config::MqttConfig;
use crate::store::record::Record;
use crate::store::recover::{DeliveryImage, Index};
use durable::{Journal, TailStore, Why};
use message::{encode_user_properties, Message};
use retained::RetainedIndex;
use session::{
    write_packet, Aliases, Delivery, Event, Inflight, Link, Phase, QueueLimits, Session, SpillTo,
    Subscription, Wake, WillState,
};
use timers::Timers;
use trie::SubscriptionTree;

/// The hash map of the hot paths (sessions by client id, the subscription trie, a
/// publish's targets): keys come from clients, so the hasher is randomly keyed, but it
/// costs a fraction of std's SipHash.
pub(crate) type FastMap<K, V> = HashMap<K, V, ahash::RandomState>;

/// Key of a subscription in the trie: the client and, for shared subscriptions, the group.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct SubKey {
    client: Arc<str>,
    group: Option<Arc<str>>,
    /// A `$json/` subscription: a key of its own, so that `F` and `$json/F` of one
    /// client are two subscriptions (the client still gets one message per publish).
    json: bool,
}

/// What the trie stores per subscription.
#[derive(Debug, Clone)]
pub(crate) struct SubEntry {
    qos: QoS,
    no_local: bool,
    retain_as_published: bool,
    id: Option<u32>,
    /// The access rules allow only part of what the filter matches: each message is
    /// checked on delivery.
    checked: bool,
}

/// A shared subscription: its group and its (inner) filter.
type GroupKey = (Arc<str>, Arc<str>);

/// Connections to wake once the lock is released.
#[derive(Debug, Default)]
pub(crate) struct Effects {
    /// Notifiers of connections with new deliveries (or a kick).
    pub(crate) wake: Vec<Arc<dyn Wake>>,
}

impl Effects {
    /// Names a connection to wake. Consecutive deliveries to one subscriber (a batch
    /// of publishes it matches) name it once.
    pub(crate) fn wake(&mut self, n: &Arc<dyn Wake>) {
        if !self.wake.last().is_some_and(|w| Arc::ptr_eq(w, n)) {
            self.wake.push(n.clone());
        }
    }

    /// Wakes every connection named, consuming the list.
    pub(crate) fn run(&mut self) {
        for n in self.wake.drain(..) {
            n.wake();
        }
    }
}

/// How a connection ended, as the core needs to know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// DISCONNECT from the client; `will` when its reason was 0x04.
    Normal {
        /// Publish the will anyway (v5 reason 0x04).
        will: bool,
    },
    /// Anything else: network loss, keepalive, protocol error, shutdown.
    Abnormal,
}

/// Why the core wants the connection closed after a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Close {
    /// The client disconnected normally.
    Disconnected {
        /// v5 reason 0x04: publish the will.
        will: bool,
    },
    /// Protocol violation: send DISCONNECT with this v5 reason, then close.
    Error(u8),
    /// Another connection took the session over; close silently.
    TakenOver,
}

/// A successful CONNECT.
#[derive(Debug, Clone)]
pub(crate) struct Accepted {
    /// The (possibly assigned) client id.
    pub(crate) client_id: Arc<str>,
    /// The connection's id.
    pub(crate) conn_id: u64,
    /// Keep alive to enforce, seconds (0 = none).
    pub(crate) keep_alive: u16,
    /// Protocol of the connection.
    pub(crate) protocol: Protocol,
}

/// Counters of the whole broker.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Stats {
    /// PUBLISH packets received.
    pub(crate) publish_received: u64,
    /// Deliveries queued to sessions.
    pub(crate) deliveries: u64,
    /// Deliveries dropped because a session queue was full.
    pub(crate) dropped_overflow: u64,
    /// Retained messages not kept because of the limits on retained messages.
    pub(crate) retained_refused: u64,
    /// PUBLISHes and wills refused by the access rules.
    pub(crate) publish_denied: u64,
    /// Subscriptions refused by the access rules (at SUBSCRIBE or removed by a reload).
    pub(crate) subscribe_denied: u64,
    /// Times a publisher was paused because a subscriber's queue was congested.
    pub(crate) publishers_paused: u64,
}

/// The broker state: sessions, subscriptions, retained messages.
#[derive(Debug)]
pub(crate) struct Core {
    cfg: Arc<MqttConfig>,
    limits: QueueLimits,
    /// The sessions, by shard (`proto/shard.rs`).
    shards: shard::Shards,
    /// What the lock's holder keeps between its calls (`proto/shard.rs`).
    held: shard::Holder,
    /// Recently published topics' matching subscriptions (`proto/matches.rs`).
    matches: matches::MatchCache,
    /// The access rules in force.
    acl: Arc<acl::Acl>,
    /// Delayed publishes waiting for their time (`$delayed/...`).
    delayed: delayed::Delayed,
    subs: SubscriptionTree<SubKey, SubEntry>,
    shared_rr: HashMap<GroupKey, usize>,
    retained: RetainedIndex<Arc<Message>>,
    /// Summed cost of the retained messages (bounded by `max_retained_bytes`).
    retained_bytes: usize,
    next_conn_id: u64,
    next_assigned: u64,
    /// The on-disk journal (`None` for the in-memory store).
    journal: Option<Arc<dyn Journal>>,
    /// Highest journal position the current call's replies must wait for.
    wait_lsn: u64,
    next_mid: u64,
    next_dseq: u64,
    /// Size of the last snapshot written (compaction trigger).
    last_snapshot: u64,
    /// A compaction is being written (at most one at a time).
    compacting: bool,
    /// Compaction epoch: moves on when a snapshot begins (see `hold_msg`).
    epoch: u64,
    /// Log growth below which the log is not compacted.
    compact_min: u64,
    /// Bytes of deliveries queued in memory across all sessions.
    mem: Arc<AtomicUsize>,
    /// Budget for `mem`; beyond it deliveries to persistent sessions wait on disk.
    budget: usize,
    /// The configured budget for `mem`.
    queue_budget: usize,
    /// Target for the whole process's resident memory (0 = none): `budget` is capped
    /// at it minus what the broker uses besides its queues.
    memory_budget: usize,
    /// Where queue tails go beyond the budget (`None` with the in-memory store).
    tails: Option<Arc<dyn TailStore>>,
    /// The wall clock, read by the runtime and passed in; the core never reads a clock.
    clock: Clock,
    /// Will delays and session expiries of offline sessions, in deadline order.
    timers: Timers<Timer>,
    /// The consumers of the work queues.
    queues: queues::Queues,
    /// The streams and their readers.
    streams: streams::Streams,
    /// Counters.
    pub(crate) stats: Stats,
}

/// A deadline the core keeps.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Timer {
    /// The will of an offline session is due (its Will Delay Interval ran out).
    Will(Arc<str>),
    /// An offline session expires (its Session Expiry Interval ran out).
    Expiry(Arc<str>),
    /// A work queue's job (message id) held by a consumer becomes visible again: its
    /// visibility timeout ran out without an acknowledgement.
    Visible(Arc<str>, u64),
    /// The earliest delayed publish is due.
    Delayed,
    /// A work queue's job (message id) refused with a retry delay goes back to its queue.
    Retry(u64),
    /// Retention of the streams runs.
    StreamTrim,
    /// A stream's readers met a message not yet durable: they try again.
    StreamRetry(Arc<str>),
    /// The credential of a client's connection expires (a token's `exp`): the
    /// connection is closed.
    Credential(Arc<str>),
}

impl Core {
    /// An empty broker with the limits of `cfg`, starting at `clock`.
    pub(crate) fn new(cfg: Arc<MqttConfig>, clock: Clock) -> Core {
        let limits = QueueLimits {
            max_messages: cfg.max_queued_messages,
            max_bytes: cfg.max_queued_bytes,
            max_inflight: cfg.max_inflight,
        };
        let acl = Arc::new(acl::Acl::allow_all(&cfg.deny_subscribe));
        Core {
            cfg,
            limits,
            shards: shard::Shards::default(),
            held: shard::Holder::default(),
            matches: matches::MatchCache::default(),
            acl,
            delayed: delayed::Delayed::default(),
            subs: SubscriptionTree::new(),
            shared_rr: HashMap::new(),
            retained: RetainedIndex::new(),
            retained_bytes: 0,
            next_conn_id: 1,
            next_assigned: 1,
            journal: None,
            wait_lsn: 0,
            next_mid: 1,
            next_dseq: 1,
            last_snapshot: 0,
            compacting: false,
            epoch: 1,
            compact_min: 64 * 1024 * 1024,
            mem: Arc::new(AtomicUsize::new(0)),
            budget: usize::MAX,
            queue_budget: usize::MAX,
            memory_budget: 0,
            tails: None,
            clock,
            timers: Timers::new(),
            queues: queues::Queues::default(),
            streams: streams::Streams::default(),
            stats: Stats::default(),
        }
    }

    /// An empty broker that journals durable state to `journal` and keeps at most
    /// `budget` bytes of queued deliveries in memory, the rest in queue tails from `tails`.
    pub(crate) fn with_journal(
        cfg: Arc<MqttConfig>,
        journal: Arc<dyn Journal>,
        tails: Arc<dyn TailStore>,
        budget: usize,
        clock: Clock,
    ) -> Core {
        let mut core = Core::new(cfg, clock);
        core.journal = Some(journal);
        core.tails = Some(tails);
        core.budget = budget;
        core.queue_budget = budget;
        core
    }

    /// The core with its sessions in `n` shards (`proto/shard.rs`), before it has any.
    ///
    /// # Panics
    /// When it has sessions already.
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn with_shards(mut self, n: usize) -> Core {
        assert!(
            self.shards.is_empty(),
            "sessions are sharded before there are any"
        );
        self.shards = shard::Shards::new(n);
        self
    }

    /// How many shards the sessions are in.
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn shard_count(&self) -> usize {
        self.shards.count()
    }

    /// Sets the wall clock. The core derives wall time for any later instant from the
    /// monotonic clock; the runtime sets it again from time to time so the two do not
    /// drift apart.
    pub(crate) fn set_clock(&mut self, clock: Clock) {
        self.clock = clock;
    }

    /// `now` in both clocks.
    fn clock(&self, now: Instant) -> Clock {
        Clock::new(now, self.clock.unix_ms(now))
    }

    /// Sets the log growth below which the log is never compacted.
    pub(crate) fn set_compact_min(&mut self, bytes: u64) {
        self.compact_min = bytes;
    }

    /// Sets the bytes of queued deliveries kept in memory across all sessions. With the
    /// in-memory store there is nowhere else to put them, so this is a hard cap.
    pub(crate) fn set_queue_budget(&mut self, bytes: usize) {
        self.budget = bytes;
        self.queue_budget = bytes;
    }

    /// Caps the queue budget so that the process's resident memory stays near
    /// `bytes` (0 = no cap); see [`Core::observe_resident`].
    pub(crate) fn set_memory_budget(&mut self, bytes: usize) {
        self.memory_budget = bytes;
    }

    /// The target for the process's resident memory (0 = none).
    pub(crate) fn memory_budget(&self) -> usize {
        self.memory_budget
    }

    /// Takes the process's resident memory, measured now: whatever is not queued
    /// deliveries is taken off the memory budget to give the queue budget.
    pub(crate) fn observe_resident(&mut self, rss: usize) {
        if self.memory_budget == 0 {
            return;
        }
        let other = rss.saturating_sub(self.queued_memory());
        // A sixteenth held back for what queues and buffers grow between two readings.
        let target = self.memory_budget - self.memory_budget / 16;
        self.budget = self.queue_budget.min(target.saturating_sub(other));
    }

    /// Bytes of deliveries queued in memory across all sessions.
    pub(crate) fn queued_memory(&self) -> usize {
        self.mem.load(Ordering::Relaxed)
    }

    /// Sends what `client`'s session may send now, journaling it.
    ///
    /// Returns true when it stopped at a full outbound batch with more queued (the
    /// connection is woken again for the rest).
    fn drain_session(
        &mut self,
        client: &Arc<str>,
        out: &mut BytesMut,
        outbox: Option<&mut session::Outbox>,
        now: Instant,
    ) -> bool {
        self.retained_step(client, now);
        let limits = self.limits;
        let durable = self.durable();
        let clock = self.clock(now);
        let mut events = Vec::new();
        let mut more = false;
        let settings = session::SendSettings {
            max_inflight: limits.max_inflight,
            event_topics: &self.cfg.event_topics,
        };
        if let Some(s) = self.shards.get_mut(client) {
            let ev = &mut |e| events.push(e);
            more = s.drain(
                out,
                outbox,
                settings,
                now,
                clock,
                durable,
                ev,
                &mut self.held.spent,
            );
            if more {
                if let Some(link) = s.link() {
                    link.notify.wake();
                }
            }
        }
        self.log_events(client, events);
        // Drained below its low-water mark: publishers paused on it go on.
        self.relieve(client, false);
        // Acknowledgements made room at work-queue consumers and stream readers.
        self.dispatch_due(now);
        self.dispatch_due_streams(now);
        more
    }

    /// The session of `client` if connection `conn_id` still owns it.
    fn owned(&mut self, client: &str, conn_id: u64) -> Option<&mut Session> {
        self.shards.owned(client, conn_id)
    }

    /// Sends queued deliveries of `client` that fit its window; true when more are queued
    /// than one outbound batch held.
    #[cfg(test)]
    pub(crate) fn drain(
        &mut self,
        client: &str,
        conn_id: u64,
        now: Instant,
        out: &mut BytesMut,
    ) -> Result<bool, Close> {
        let s = self.owned(client, conn_id).ok_or(Close::TakenOver)?;
        let id = s.client_id().clone();
        Ok(self.drain_session(&id, out, None, now))
    }

    /// As [`Core::drain`], but the PUBLISH packets of plain deliveries are only decided
    /// (into `outbox`), for the caller to encode into `out` after letting go of the lock
    /// (`session::Outbox`), before it writes anything else there.
    pub(crate) fn drain_deferred(
        &mut self,
        client: &str,
        conn_id: u64,
        now: Instant,
        out: &mut BytesMut,
        outbox: &mut session::Outbox,
    ) -> Result<bool, Close> {
        let s = self.owned(client, conn_id).ok_or(Close::TakenOver)?;
        let id = s.client_id().clone();
        Ok(self.drain_session(&id, out, Some(outbox), now))
    }

    /// The messages whose delivery ended since the last call, for the lock's holder to
    /// free after letting go (`message::Spent`).
    pub(crate) fn take_spent(&mut self) -> message::Spent {
        self.held.take_spent()
    }

    /// Frees the messages set aside since the last call (a lock holder that did not take
    /// them, when it lets go).
    pub(crate) fn free_spent(&mut self) {
        self.held.free_spent();
    }

    /// The connection of `client` has gone quiet (nothing received or sent for a while,
    /// nothing buffered): its session gives back the memory a drained burst left behind.
    pub(crate) fn idle(&mut self, client: &str, conn_id: u64) {
        if let Some(s) = self.owned(client, conn_id) {
            s.release_idle();
        }
    }

    /// Handles one packet of an established connection, then writes what its session
    /// may send now (as [`Core::drain`]).
    ///
    /// # Errors
    /// [`Close`] when the connection must end.
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn handle(
        &mut self,
        client: &Arc<str>,
        conn_id: u64,
        packet: &Packet<'_>,
        now: Instant,
        out: &mut BytesMut,
        fx: &mut Effects,
    ) -> Result<(), Close> {
        self.handle_only(client, conn_id, packet, now, out, fx)?;
        self.drain_session(client, out, None, now);
        Ok(())
    }

    /// Handles one packet of an established connection and writes its replies, but not
    /// the session's queued deliveries: a caller handling a batch of frames calls
    /// [`Core::drain`] once after the batch, not once per frame (a drain looks up the
    /// session, its retained jobs, congestion and due queues: with QoS 1 pairs, the
    /// core's lock was held about a fifth less without it).
    ///
    /// # Errors
    /// [`Close`] when the connection must end.
    pub(crate) fn handle_only(
        &mut self,
        client: &Arc<str>,
        conn_id: u64,
        packet: &Packet<'_>,
        now: Instant,
        out: &mut BytesMut,
        fx: &mut Effects,
    ) -> Result<(), Close> {
        let acked = match packet {
            Packet::Publish(p) => return self.handle_publish(client, conn_id, p, now, out, fx),
            Packet::Subscribe(sub) => {
                return self.handle_subscribe(client, conn_id, sub, now, out, fx)
            }
            Packet::Unsubscribe(u) => return self.handle_unsubscribe(client, conn_id, u, now, out),
            Packet::Disconnect(d) => return self.handle_disconnect(client, conn_id, d),
            // Acknowledgements and PINGREQ: the session answers them by itself.
            _ => self.shards.of_mut(client).acknowledge(
                client,
                conn_id,
                packet,
                out,
                &mut self.held.spent,
            )?,
        };
        // No Authentication Method was accepted in CONNECT (an unknown one gets CONNACK
        // 0x8C), so any AUTH is a Protocol Error (MQTT-4.12.0-7); so is anything else
        // here (a second CONNECT, a server's packet).
        let Some(acked) = acked else {
            return Err(Close::Error(reason::PROTOCOL_ERROR));
        };
        if !acked.events.is_empty() {
            self.log_events(client, acked.events);
        }
        if let Some(packet_id) = acked.released {
            let rec = Record::Inbound2Done {
                client: client.to_string(),
                packet_id,
            };
            self.log(rec, Why::NoPromise);
        }
        if let Some((d, code)) = acked.refused {
            self.job_refused(client, d, code, now);
        }
        Ok(())
    }

    /// A DISCONNECT of an established connection: a v5 client may set its session's
    /// expiry there, but not from 0 to more (MQTT-3.14.2-2).
    fn handle_disconnect(
        &mut self,
        client: &Arc<str>,
        conn_id: u64,
        d: &Disconnect<'_>,
    ) -> Result<(), Close> {
        let max_expiry = self.cfg.max_session_expiry;
        let s = self.shards.owned(client, conn_id).ok_or(Close::TakenOver)?;
        let v5 = s.link().is_some_and(|l| l.protocol.is_v5());
        if let Some(e) = d.properties.session_expiry_interval().filter(|_| v5) {
            if s.expiry_interval() == 0 && e != 0 {
                return Err(Close::Error(reason::PROTOCOL_ERROR));
            }
            let e = e.min(max_expiry);
            s.set_expiry_interval(e);
            if s.persisted() && e > 0 {
                self.log(
                    Record::SessionExpiry {
                        client: client.to_string(),
                        expiry: e,
                    },
                    Why::NoPromise,
                );
            }
        }
        Err(Close::Disconnected {
            will: d.reason == reason::DISCONNECT_WITH_WILL,
        })
    }

    fn handle_publish(
        &mut self,
        client: &Arc<str>,
        conn_id: u64,
        p: &Publish<'_>,
        now: Instant,
        out: &mut BytesMut,
        fx: &mut Effects,
    ) -> Result<(), Close> {
        self.stats.publish_received += 1;
        // Rounded up: a delayed publish is never released early.
        let now_secs = self.clock.unix_ms(now).div_ceil(1000);
        // The topic as published (empty when an alias stands for it).
        let named = self.matches.intern(p.topic);
        let rules = shard::Rules {
            cfg: &self.cfg,
            limits: self.limits,
            acl: &self.acl,
            now_secs,
        };
        // A re-sent QoS 2 PUBLISH of a flow already held was acknowledged again.
        let shard = self.shards.of_mut(client);
        let Some(admitted) = shard.admit(client, conn_id, p, named, rules, out)? else {
            return Ok(());
        };
        let shard::Admitted {
            topic,
            mut code,
            delay,
            control,
            protocol,
            denied,
            pausable,
        } = admitted;
        if denied {
            self.stats.publish_denied += 1;
        }
        let v5 = protocol.is_v5();
        // `$admin/queue/NAME` declares a queue; the declaration is kept as the topic's
        // retained message. `$admin/queue/NAME/redrive` moves its dead letters back
        // (`proto/queues.rs`).
        let admin = topic.strip_prefix(queues::ADMIN_PREFIX);
        let redrive = admin.and_then(|rest| rest.strip_suffix("/redrive"));
        // `$admin/stream/NAME` declares a stream the same way (`proto/streams.rs`).
        let stream_decl = topic.strip_prefix(streams::ADMIN_PREFIX);
        let declare = (admin.is_some() && redrive.is_none()) || stream_decl.is_some();
        let mut reason_string = None;
        if let (Some(name), true) = (redrive, code == reason::SUCCESS) {
            (code, reason_string) = self.redrive(name, now);
        } else if let (Some(name), true) = (stream_decl, code == reason::SUCCESS) {
            (code, reason_string) = self.admin_declare_stream(name, p.payload, now);
        } else if declare && code == reason::SUCCESS {
            (code, reason_string) = self.admin_declare(&topic, p.payload, now);
        }
        let routed = if control || redrive.is_some() {
            if control && code == reason::SUCCESS {
                code = self.queue_control(client, &topic, now);
            }
            1
        } else if code == reason::SUCCESS && !is_sys(&topic) {
            let mid = self.mid();
            let mut msg = Message::from_publish(mid, p, topic, Some(client.clone()), now);
            msg.retain |= declare;
            let msg = Arc::new(msg);
            match delay {
                // Delayed into a work queue or stream that does not exist (not declared,
                // not made on first use): it would reach nobody when due, so it is not
                // kept (MQTT 5: 0x10, as a direct publish there).
                Some((_, target))
                    if queues::queue_of(&target).is_some_and(|n| !self.queue_usable(n))
                        || streams::stream_of(&target).is_some_and(|n| !self.streams.known(n)) =>
                {
                    0
                }
                Some((at_secs, target)) => {
                    let due = delayed::Due {
                        at_secs,
                        topic: &target,
                    };
                    if self.delay(msg, due, now) {
                        1
                    } else {
                        code = reason::QUOTA_EXCEEDED;
                        0
                    }
                }
                None => {
                    // A subscriber it fills past its high-water mark pauses it.
                    self.held.pausable = pausable;
                    let routed = self.route(msg, false, now, fx);
                    self.routed();
                    match routed {
                        Ok(n) => n,
                        Err(Full) => {
                            code = reason::QUOTA_EXCEEDED;
                            0
                        }
                    }
                }
            }
        } else {
            0
        };
        if code == reason::SUCCESS && routed == 0 && v5 {
            code = reason::NO_MATCHING_SUBSCRIBERS;
        }
        if declare && code == reason::NO_MATCHING_SUBSCRIBERS {
            // Kept (retained), whoever listens.
            code = reason::SUCCESS;
        }
        let held = self.shards.of_mut(client).answer(
            client,
            conn_id,
            p,
            protocol,
            (code, reason_string.as_deref()),
            out,
        );
        if held {
            let rec = Record::Inbound2 {
                client: client.to_string(),
                packet_id: p.packet_id,
            };
            self.log(rec, Why::Accept);
        }
        Ok(())
    }

    /// The connection `conn_id` of `client` ended. Schedules or publishes the will,
    /// starts the session expiry, hands shared deliveries to other members.
    pub(crate) fn disconnected(
        &mut self,
        client: &Arc<str>,
        conn_id: u64,
        end: End,
        now: Instant,
        fx: &mut Effects,
    ) {
        let Some(s) = self.owned(client, conn_id) else {
            return;
        };
        s.detach(now);
        self.link_ended(client, end, false, now, fx);
    }

    /// Common tail of a connection's end (the link is already detached). `takeover` is set
    /// when a new connection with the same id is about to attach.
    fn link_ended(
        &mut self,
        client: &Arc<str>,
        end: End,
        takeover: bool,
        now: Instant,
        fx: &mut Effects,
    ) {
        // The connection's credential no longer matters.
        self.timers.cancel(&Timer::Credential(client.clone()));
        // Work-queue and stream messages are theirs, never the session's: back they go.
        self.return_deliveries(client, None, now);
        self.stream_member_offline(client, now);
        self.relieve(client, true);
        let Some(s) = self.shards.get_mut(client) else {
            return;
        };
        let persisted = s.persisted();
        let mut will_gone = false;
        match end {
            End::Normal { will: false } => will_gone = s.take_will().is_some(),
            End::Normal { will: true } | End::Abnormal => {}
        }
        // Queued (unsent) shared deliveries go to another member of their group.
        let reroute = s.take_queued(|d| d.shared.is_some());
        let expiry = s.expiry_interval();
        if let Some(delay) = s.will().map(|w| w.delay.min(expiry)) {
            if delay == 0 {
                if let Some(w) = s.take_will() {
                    will_gone = true;
                    let login = (s.user().cloned(), s.grant().cloned());
                    self.publish_will(w, login, now, fx);
                }
            } else {
                let at = now + Duration::from_secs(u64::from(delay));
                self.timers.set(Timer::Will(client.clone()), at);
            }
        }
        if persisted {
            if will_gone {
                self.log(
                    Record::WillClear {
                        client: client.to_string(),
                    },
                    Why::NoPromise,
                );
            }
            if !takeover && expiry > 0 {
                let rec = Record::SessionOffline {
                    client: client.to_string(),
                    at_ms: self.clock.unix_ms(now),
                };
                self.log(rec, Why::NoPromise);
            }
        }
        for d in reroute {
            self.reroute_shared(client, d, now, fx);
        }
        if takeover {
            return;
        }
        if expiry == 0 {
            self.end_session(client, now, fx);
        } else if expiry != u32::MAX {
            let at = now + Duration::from_secs(u64::from(expiry));
            self.timers.set(Timer::Expiry(client.clone()), at);
        }
    }

    /// Publishes the will of a session of `user` holding `grant`, if the access rules
    /// let it write its topic (checked now: rules may have changed since the CONNECT).
    fn publish_will(
        &mut self,
        w: WillState,
        (user, grant): (Option<Arc<str>>, Option<Arc<acl::Grant>>),
        now: Instant,
        fx: &mut Effects,
    ) {
        if let Some(client) = w.msg.publisher.as_deref() {
            let who = acl::Who {
                user: user.as_deref(),
                client,
                grant: grant.as_deref(),
            };
            if !self.acl.allows(who, acl::Access::Write, &w.msg.topic) {
                self.stats.publish_denied += 1;
                tracing::info!(client, topic = %w.msg.topic, "will not published: not allowed to write its topic");
                return;
            }
        }
        tracing::debug!(topic = %w.msg.topic, "publishing will");
        let mut msg = w.msg;
        // The will's Message Expiry Interval counts from when it is published.
        if let Some(secs) = w.expiry {
            Arc::make_mut(&mut msg).expires_at = Some(now + Duration::from_secs(u64::from(secs)));
        }
        // A will to `$queue/NAME` is a job like any publish there.
        if self.route(msg, false, now, fx).is_err() {
            tracing::warn!("will not enqueued: its work queue is full");
        }
    }

    /// Sends `msg` where its topic says: a work queue's topic enqueues it, any other
    /// goes through the router (the number of sessions it was queued for). `released`:
    /// a delayed message coming due.
    ///
    /// # Errors
    /// [`Full`] when the work queue is full.
    pub(super) fn route(
        &mut self,
        msg: Arc<Message>,
        released: bool,
        now: Instant,
        fx: &mut Effects,
    ) -> Result<usize, Full> {
        if let Some(name) = streams::stream_of(&msg.topic).map(str::to_owned) {
            // A stream that does not exist reaches nobody; one that cannot be made (too
            // many streams) is full.
            return match self.streams.known(&name) {
                false => Ok(0),
                true => self.append(&name, &msg, now, fx).then_some(1).ok_or(Full),
            };
        }
        match queues::queue_of(&msg.topic).map(str::to_owned) {
            // A queue that does not exist (not declared, not created on first use)
            // reaches nobody.
            Some(name) if !self.queue_usable(&name) => Ok(0),
            Some(name) => self
                .enqueue(&name, msg, released, now, fx)
                .then_some(1)
                .ok_or(Full),
            None => Ok(self.publish(msg, now, fx)),
        }
    }

    /// Ends a session: publishes a pending will, removes subscriptions, and hands QoS 1
    /// deliveries of shared subscriptions to other members (a begun QoS 2 flow is not
    /// re-sent elsewhere, MQTT 5 §4.8.2).
    fn end_session(&mut self, client: &Arc<str>, now: Instant, fx: &mut Effects) {
        self.return_deliveries(client, None, now);
        self.queues.forget(client);
        self.stream_member_gone(client, now);
        let Some(mut s) = self.shards.remove(client) else {
            return;
        };
        for f in s.subscriptions().map(|(f, _)| f) {
            self.remove_trie_entry(client, f);
        }
        if s.persisted() {
            self.log(
                Record::SessionEnd {
                    client: client.to_string(),
                },
                Why::NoPromise,
            );
        }
        self.timers.cancel(&Timer::Expiry(client.clone()));
        if self.timers.cancel(&Timer::Will(client.clone())).is_some() {
            if let Some(w) = s.take_will() {
                self.publish_will(w, (s.user().cloned(), s.grant().cloned()), now, fx);
            }
        }
        // Queued shared deliveries and QoS 1 ones in flight go to another member; a QoS
        // 2 flow that has begun stays with this member (MQTT 5 §4.8.2) and ends here.
        let inflight = s.take_inflight().into_iter().map(|i| (i.delivery, true));
        let queued = s.take_queued(|_| true).into_iter().map(|d| (d, false));
        for (d, sent) in queued.chain(inflight) {
            // The rest goes with the session (its `SessionEnd` record drops them from
            // the store).
            if d.shared.is_some() && (!sent || d.qos == QoS::AtLeastOnce) {
                self.reroute_shared(client, d, now, fx);
            }
        }
        tracing::debug!(client = %client, "session ended");
    }

    /// The next instant at which [`Core::handle_timeout`] has work, if any.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        let timers = self.timers.next_deadline();
        let retained = self.retained.next_expiry();
        match (timers, retained) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Fires due wills, ends expired sessions and drops expired retained messages: only
    /// what is due, taken in deadline order from the timers (no scan of all sessions).
    pub(crate) fn handle_timeout(&mut self, now: Instant, fx: &mut Effects) {
        while let Some((timer, _)) = self.timers.pop_due(now) {
            match timer {
                Timer::Will(id) => {
                    let Some(s) = self.shards.get_mut(&id) else {
                        continue;
                    };
                    let Some(w) = s.take_will() else {
                        continue;
                    };
                    let login = (s.user().cloned(), s.grant().cloned());
                    if s.persisted() {
                        let rec = Record::WillClear {
                            client: id.to_string(),
                        };
                        self.log(rec, Why::NoPromise);
                    }
                    self.publish_will(w, login, now, fx);
                }
                Timer::Expiry(id) => self.end_session(&id, now, fx),
                Timer::Visible(client, mid) => self.visibility_expired(&client, mid, now),
                Timer::Delayed => self.release_delayed(now, fx),
                Timer::Retry(mid) => self.retry_due(mid, now),
                Timer::StreamTrim => self.trim_streams(now),
                Timer::StreamRetry(name) => self.stream_retry(&name, now, fx),
                Timer::Credential(id) => self.credential_expired(&id, now, fx),
            }
        }
        // Retained messages leave in expiry order: no scan of the unexpired ones.
        for (topic, m) in self.retained.pop_expired(now, usize::MAX) {
            self.retained_bytes -= m.cost();
            self.log(
                Record::RetainDel {
                    topic: topic.to_string(),
                },
                Why::NoPromise,
            );
        }
    }
}

/// Where deliveries to persistent sessions go while the memory queued across all sessions
/// is over `budget`: a queue tail from `tails` (`None`: memory, or no on-disk store).
fn spill_to<'a>(
    tails: &'a Option<Arc<dyn TailStore>>,
    mem: &AtomicUsize,
    budget: usize,
) -> SpillTo<'a> {
    let tails = tails.as_deref()?;
    (mem.load(Ordering::Relaxed) > budget).then_some(tails)
}

/// A work queue that cannot take another job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Full;

/// A moment in the two clocks the core needs: monotonic for timers and expiry, Unix
/// milliseconds for what the store keeps across restarts.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    /// The monotonic instant.
    pub(crate) at: Instant,
    /// Unix time in milliseconds at `at`.
    unix_ms: u64,
}

impl Clock {
    /// The moment `at`, which is `unix_ms` on the wall clock.
    pub(crate) fn new(at: Instant, unix_ms: u64) -> Clock {
        Clock { at, unix_ms }
    }

    /// Unix milliseconds at `t`, by the monotonic distance from this moment.
    pub(crate) fn unix_ms(&self, t: Instant) -> u64 {
        if t >= self.at {
            self.unix_ms + (t - self.at).as_millis() as u64
        } else {
            self.unix_ms
                .saturating_sub((self.at - t).as_millis() as u64)
        }
    }
}

/// Levels of a topic name or filter (`a/b/c`: 3). Counted over bytes, not by splitting:
/// it runs for every PUBLISH.
fn topic_levels(topic: &str) -> usize {
    topic.bytes().filter(|&b| b == b'/').count() + 1
}

/// True for topics under `$SYS`, which only the broker publishes to.
fn is_sys(topic: &str) -> bool {
    topic == "$SYS" || topic.starts_with("$SYS/")
}

/// A DISCONNECT for `protocol` with `reason` (nothing for 3.1.1, which has no server
/// DISCONNECT).
pub(crate) fn disconnect_packet(out: &mut BytesMut, protocol: Protocol, reason: u8) {
    if protocol.is_v5() {
        write_packet(out, protocol, &Packet::Disconnect(Disconnect::new(reason)));
    }
}

#[cfg(test)]
mod tests;
