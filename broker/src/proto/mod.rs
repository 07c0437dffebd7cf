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
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use mote_codec::{
    reason, topic, Ack, ConnAck, Connect, Disconnect, Packet, PropValues, Properties, Protocol,
    Publish, QoS, RetainHandling, SubAck, SubOptions, Subscribe, UnsubAck, Unsubscribe,
};
use tokio::sync::Notify;

pub(crate) mod message;
pub(crate) mod session;
pub(crate) mod trie;

use crate::config::MqttConfig;
use crate::store::journal::{Journal, JournalRef};
use crate::store::record::Record;
use crate::store::recover::{DeliveryImage, Index};
use message::{encode_user_properties, unix_ms, Message};
use session::{
    write_packet, Delivery, Event, Inflight, Kick, Link, Phase, QueueLimits, Session, SpillTo,
    Subscription, WillState,
};
use trie::SubscriptionTree;

/// Key of a subscription in the trie: the client and, for shared subscriptions, the group.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct SubKey {
    client: Arc<str>,
    group: Option<Arc<str>>,
}

/// What the trie stores per subscription.
#[derive(Debug, Clone)]
pub(crate) struct SubEntry {
    qos: QoS,
    no_local: bool,
    retain_as_published: bool,
    id: Option<u32>,
}

/// Journal growth (bytes since the last snapshot) below which compaction never runs.
const COMPACT_MIN: u64 = 64 * 1024 * 1024;

/// A shared subscription: its group and its (inner) filter.
type GroupKey = (Arc<str>, Arc<str>);

/// Connections to wake once the lock is released.
#[derive(Debug, Default)]
pub(crate) struct Effects {
    /// Notifiers of connections with new deliveries (or a kick).
    pub(crate) wake: Vec<Arc<Notify>>,
}

impl Effects {
    /// Wakes every connection named, consuming the list.
    pub(crate) fn run(&mut self) {
        for n in self.wake.drain(..) {
            n.notify_one();
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
}

/// The broker state: sessions, subscriptions, retained messages.
#[derive(Debug)]
pub(crate) struct Core {
    cfg: Arc<MqttConfig>,
    limits: QueueLimits,
    sessions: HashMap<Arc<str>, Session>,
    subs: SubscriptionTree<SubKey, SubEntry>,
    shared_rr: HashMap<GroupKey, usize>,
    retained: HashMap<Arc<str>, Arc<Message>>,
    next_conn_id: u64,
    next_assigned: u64,
    /// The on-disk journal (`None` for the in-memory store).
    journal: JournalRef,
    /// Highest journal position the current call's replies must wait for.
    wait_lsn: u64,
    next_mid: u64,
    next_dseq: u64,
    /// Size of the last snapshot written (compaction trigger).
    last_snapshot: u64,
    /// Bytes of deliveries queued in memory across all sessions.
    mem: Arc<AtomicUsize>,
    /// Budget for `mem`; beyond it deliveries to persistent sessions wait on disk.
    budget: usize,
    /// The configured budget for `mem`.
    queue_budget: usize,
    /// Target for the whole process's resident memory (0 = none): `budget` is capped
    /// at it minus what the broker uses besides its queues.
    memory_budget: usize,
    /// Where spill files go (`None` with the in-memory store).
    spill_dir: Option<PathBuf>,
    /// Number of the next spill file.
    next_spill: AtomicU64,
    /// Counters.
    pub(crate) stats: Stats,
}

impl Core {
    /// An empty broker with the limits of `cfg`.
    pub(crate) fn new(cfg: Arc<MqttConfig>) -> Core {
        let limits = QueueLimits {
            max_messages: cfg.max_queued_messages,
            max_bytes: cfg.max_queued_bytes,
            max_inflight: cfg.max_inflight,
        };
        Core {
            cfg,
            limits,
            sessions: HashMap::new(),
            subs: SubscriptionTree::new(),
            shared_rr: HashMap::new(),
            retained: HashMap::new(),
            next_conn_id: 1,
            next_assigned: 1,
            journal: None,
            wait_lsn: 0,
            next_mid: 1,
            next_dseq: 1,
            last_snapshot: 0,
            mem: Arc::new(AtomicUsize::new(0)),
            budget: usize::MAX,
            queue_budget: usize::MAX,
            memory_budget: 0,
            spill_dir: None,
            next_spill: AtomicU64::new(1),
            stats: Stats::default(),
        }
    }

    /// An empty broker that journals durable state to `journal` and keeps at most
    /// `budget` bytes of queued deliveries in memory, spilling the rest to `spill_dir`.
    pub(crate) fn with_journal(
        cfg: Arc<MqttConfig>,
        journal: Arc<Journal>,
        spill_dir: PathBuf,
        budget: usize,
    ) -> Core {
        let mut core = Core::new(cfg);
        core.journal = Some(journal);
        // Spill files are a cache of the journal: whatever a previous run left is stale.
        let _ = std::fs::remove_dir_all(&spill_dir);
        core.spill_dir = Some(spill_dir);
        core.budget = budget;
        core.queue_budget = budget;
        core
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

    /// Appends `rec` to the journal; with `wait`, the current call's replies are held
    /// until it is durable. Returns its position (0 without a journal).
    fn log(&mut self, rec: Record, wait: bool) -> u64 {
        let Some(j) = &self.journal else {
            return 0;
        };
        let lsn = j.append(&rec);
        if wait && j.waits() {
            self.wait_lsn = self.wait_lsn.max(lsn);
        }
        lsn
    }

    /// As [`Core::log`], for a record `encode` writes in place.
    fn log_with(&mut self, wait: bool, encode: &mut dyn FnMut(&mut Vec<u8>)) -> u64 {
        let Some(j) = &self.journal else {
            return 0;
        };
        let lsn = j.append_with(encode);
        if wait && j.waits() {
            self.wait_lsn = self.wait_lsn.max(lsn);
        }
        lsn
    }

    /// The journal position the replies produced since the last call must wait for
    /// (0 = none), resetting it.
    pub(crate) fn take_wait_lsn(&mut self) -> u64 {
        std::mem::take(&mut self.wait_lsn)
    }

    /// Position up to which deliveries may be sent.
    fn durable(&self) -> u64 {
        match &self.journal {
            Some(j) if j.waits() => j.durable(),
            _ => u64::MAX,
        }
    }

    /// A fresh message id.
    fn mid(&mut self) -> u64 {
        let m = self.next_mid;
        self.next_mid += 1;
        m
    }

    /// Writes `msg`'s record the first time a stored thing (delivery, retained entry,
    /// will) refers to it. Records of messages nothing refers to any more are dropped
    /// by the next compaction.
    fn hold_msg(&mut self, msg: &Message, will_expiry: Option<u32>, now: Instant) {
        if self.journal.is_none() || msg.stored.swap(true, Ordering::Relaxed) {
            return;
        }
        let stored = msg.as_stored(will_expiry, now, unix_ms());
        self.log_with(true, &mut |b| stored.encode_msg(msg.mid, b));
    }

    /// Journals what a session's outbound half did.
    fn log_events(&mut self, client: &Arc<str>, events: Vec<Event>) {
        for e in events {
            match e {
                Event::Sent {
                    dseq,
                    packet_id,
                    qos,
                } => {
                    // A QoS 2 PUBLISH may go out only once its packet id is durable: after
                    // a crash it must be re-sent with the same id, or the receiver would
                    // take it for a new message.
                    let rec = Record::Sent {
                        client: client.to_string(),
                        dseq,
                        packet_id,
                    };
                    self.log(rec, qos == QoS::ExactlyOnce);
                }
                Event::Released { dseq } => {
                    // PUBREL only after PUBREC is durable: re-sending the PUBLISH after
                    // the receiver let the id go would deliver it twice.
                    self.log(
                        Record::Released {
                            client: client.to_string(),
                            dseq,
                        },
                        true,
                    );
                }
                Event::Finished { dseq } => {
                    self.log(
                        Record::Done {
                            client: client.to_string(),
                            dseq,
                        },
                        false,
                    );
                }
            }
        }
    }

    /// Sends what `client`'s session may send now, journaling it.
    fn drain_session(&mut self, client: &Arc<str>, out: &mut BytesMut, now: Instant) {
        let limits = self.limits;
        let durable = self.durable();
        let mut events = Vec::new();
        if let Some(s) = self.sessions.get_mut(client) {
            s.drain(out, &limits, now, durable, &mut |e| events.push(e));
        }
        self.log_events(client, events);
    }

    /// Handles CONNECT: CONNACK into `out`; on success the session is attached to a new
    /// link woken through `notify` and closed through `kick`.
    pub(crate) fn connect(
        &mut self,
        c: &Connect<'_>,
        notify: Arc<Notify>,
        kick: Arc<Kick>,
        now: Instant,
        out: &mut BytesMut,
        fx: &mut Effects,
    ) -> Option<Accepted> {
        let protocol = c.protocol;
        let v5 = protocol.is_v5();
        let refuse = |out: &mut BytesMut, v3: u8, v5code: u8| {
            let code = if v5 { v5code } else { v3 };
            let ack = ConnAck {
                session_present: false,
                code,
                properties: Properties::default(),
            };
            write_packet(out, protocol, &Packet::ConnAck(ack));
            None
        };
        if c.client_id.is_empty() && !v5 && !c.clean_start {
            return refuse(out, reason::v3::IDENTIFIER_REJECTED, 0);
        }
        if c.client_id.len() > self.cfg.max_client_id_length {
            return refuse(
                out,
                reason::v3::IDENTIFIER_REJECTED,
                reason::CLIENT_IDENTIFIER_NOT_VALID,
            );
        }
        if c.properties.authentication_method().is_some() {
            return refuse(
                out,
                reason::v3::NOT_AUTHORIZED,
                reason::BAD_AUTHENTICATION_METHOD,
            );
        }
        if let Some(w) = &c.will {
            if w.qos as u8 > self.cfg.max_qos {
                return refuse(out, reason::v3::NOT_AUTHORIZED, reason::QOS_NOT_SUPPORTED);
            }
            if w.retain && !self.cfg.retain_available {
                return refuse(
                    out,
                    reason::v3::NOT_AUTHORIZED,
                    reason::RETAIN_NOT_SUPPORTED,
                );
            }
            if w.topic.len() > self.cfg.max_topic_length || is_sys(w.topic) {
                return refuse(out, reason::v3::NOT_AUTHORIZED, reason::TOPIC_NAME_INVALID);
            }
        }
        let assigned = c.client_id.is_empty();
        let client_id: Arc<str> = if assigned {
            let id = format!("mote-{:x}-{}", std::process::id(), self.next_assigned);
            self.next_assigned += 1;
            Arc::from(id)
        } else {
            Arc::from(c.client_id)
        };

        // Takeover and session resumption.
        if let Some(old) = self.sessions.get_mut(&client_id) {
            old.offline_since = None;
            if let Some(link) = old.link.take() {
                let reason = reason::SESSION_TAKEN_OVER;
                link.kick.set(reason);
                fx.wake.push(link.notify);
                tracing::info!(client = %client_id, "session taken over");
                self.link_ended(&client_id, End::Abnormal, true, now, fx);
                // A session that lived only as long as its connection ends with it, before
                // the new CONNECT's Clean Start is looked at (MQTT 5 §3.1.4, 3.1.1 §3.1.2.4).
                if self
                    .sessions
                    .get(&client_id)
                    .is_some_and(|s| s.expiry_interval == 0)
                {
                    self.end_session(&client_id, now, fx);
                }
            }
        }
        let mut session_present = false;
        if let Some(old) = self.sessions.get_mut(&client_id) {
            if c.clean_start {
                self.end_session(&client_id, now, fx);
            } else {
                // Reconnecting before the will delay ran out cancels the will.
                old.will = None;
                old.will_at = None;
                old.expires_at = None;
                session_present = true;
            }
        }

        let max_expiry = self.cfg.max_session_expiry;
        let requested_expiry = if v5 {
            c.properties.session_expiry_interval().unwrap_or(0)
        } else if c.clean_start {
            0
        } else {
            u32::MAX
        };
        let expiry = requested_expiry.min(max_expiry);

        let mut keep_alive = c.keep_alive;
        let mut server_keep_alive = None;
        let max_ka = self.cfg.max_keepalive;
        if v5 && max_ka > 0 && (keep_alive == 0 || keep_alive > max_ka) {
            keep_alive = max_ka;
            server_keep_alive = Some(max_ka);
        }

        let conn_id = self.next_conn_id;
        self.next_conn_id += 1;
        let link = Link {
            conn_id,
            notify,
            kick,
            protocol,
            client_receive_max: c.properties.receive_maximum().unwrap_or(u16::MAX),
            client_max_packet: c.properties.maximum_packet_size().unwrap_or(u32::MAX),
            client_alias_max: c.properties.topic_alias_maximum().unwrap_or(0),
            alias_out: HashMap::new(),
            alias_in: HashMap::new(),
        };
        let will = c.will.as_ref().map(|w| {
            let publish = Publish {
                dup: false,
                qos: w.qos,
                retain: w.retain,
                topic: w.topic,
                packet_id: 0,
                properties: w.properties,
                payload: w.payload,
            };
            let mid = self.next_mid;
            self.next_mid += 1;
            let mut msg = Message::from_publish(
                mid,
                &publish,
                Arc::from(w.topic),
                Some(client_id.clone()),
                now,
            );
            msg.expires_at = None;
            WillState {
                msg: Arc::new(msg),
                delay: if v5 {
                    w.properties.will_delay_interval().unwrap_or(0)
                } else {
                    0
                },
                expiry: w.properties.message_expiry_interval(),
            }
        });

        let session = self
            .sessions
            .entry(client_id.clone())
            .or_insert_with(|| Session::new(client_id.clone(), self.mem.clone()));
        let old_expiry = session.expiry_interval;
        let was_persisted = session.persisted;
        session.expiry_interval = expiry;
        session.link = Some(link);
        session.will = will.clone();
        session.persisted = expiry > 0;
        if self.journal.is_some() {
            let id = client_id.to_string();
            match (was_persisted, expiry > 0) {
                (false, true) => {
                    self.log(
                        Record::SessionOpen {
                            client: id.clone(),
                            expiry,
                        },
                        true,
                    );
                }
                (true, true) if old_expiry != expiry => {
                    self.log(
                        Record::SessionExpiry {
                            client: id.clone(),
                            expiry,
                        },
                        true,
                    );
                }
                (true, false) => {
                    // Resumed with Session Expiry 0: the session now ends with this
                    // connection, so the store lets go of it.
                    self.log(Record::SessionEnd { client: id.clone() }, false);
                }
                _ => {}
            }
            if was_persisted && expiry > 0 && session_present {
                self.log(Record::WillClear { client: id.clone() }, false);
            }
            if let (Some(w), true) = (&will, expiry > 0) {
                self.hold_msg(&w.msg, w.expiry, now);
                self.log(
                    Record::Will {
                        client: id,
                        mid: w.msg.mid,
                        delay: w.delay,
                    },
                    false,
                );
            }
        }
        let session = self.sessions.get_mut(&client_id)?;

        let mut props = PropValues::default();
        if v5 {
            let cfg = &self.cfg;
            props.receive_maximum = Some(cfg.receive_maximum);
            props.maximum_packet_size = Some(cfg.max_packet_size);
            props.topic_alias_maximum = Some(cfg.topic_alias_maximum);
            if cfg.max_qos < 2 {
                props.maximum_qos = Some(cfg.max_qos);
            }
            props.retain_available = Some(cfg.retain_available);
            props.wildcard_subscription_available = Some(cfg.wildcard_subscriptions);
            props.subscription_identifier_available = Some(cfg.subscription_identifiers);
            props.shared_subscription_available = Some(cfg.shared_subscriptions);
            props.server_keep_alive = server_keep_alive;
            if expiry != requested_expiry {
                props.session_expiry_interval = Some(expiry);
            }
            if assigned {
                props.assigned_client_identifier = Some(&client_id);
            }
        }
        let ack = ConnAck {
            session_present,
            code: 0,
            properties: Properties::from(&props),
        };
        write_packet(out, protocol, &Packet::ConnAck(ack));
        tracing::debug!(client = %client_id, ?protocol, session_present, "connected");

        let mut events = Vec::new();
        if session_present {
            session.resend_inflight(out, now, &mut |e| events.push(e));
        }
        self.log_events(&client_id, events);
        self.drain_session(&client_id, out, now);
        Some(Accepted {
            client_id,
            conn_id,
            keep_alive,
            protocol,
        })
    }

    /// The session of `client` if connection `conn_id` still owns it.
    fn owned(&mut self, client: &str, conn_id: u64) -> Option<&mut Session> {
        owned(&mut self.sessions, client, conn_id)
    }

    /// Sends queued deliveries of `client` that fit its window.
    pub(crate) fn drain(
        &mut self,
        client: &str,
        conn_id: u64,
        now: Instant,
        out: &mut BytesMut,
    ) -> Result<(), Close> {
        let s = self.owned(client, conn_id).ok_or(Close::TakenOver)?;
        let id = s.client_id.clone();
        self.drain_session(&id, out, now);
        Ok(())
    }

    /// Handles one packet of an established connection.
    ///
    /// # Errors
    /// [`Close`] when the connection must end.
    pub(crate) fn handle(
        &mut self,
        client: &Arc<str>,
        conn_id: u64,
        packet: &Packet<'_>,
        now: Instant,
        out: &mut BytesMut,
        fx: &mut Effects,
    ) -> Result<(), Close> {
        let max_expiry = self.cfg.max_session_expiry;
        let s = self.owned(client, conn_id).ok_or(Close::TakenOver)?;
        let protocol = s.link.as_ref().map_or(Protocol::V311, |l| l.protocol);
        let v5 = protocol.is_v5();
        let persisted = s.persisted;
        let mut events = Vec::new();
        match packet {
            Packet::Publish(p) => return self.handle_publish(client, conn_id, p, now, out, fx),
            Packet::PubAck(a) => {
                if !s.complete(a.packet_id, Phase::Published, QoS::AtLeastOnce, &mut |e| {
                    events.push(e)
                }) {
                    tracing::debug!(client = %client, id = a.packet_id, "PUBACK for unknown packet id");
                }
            }
            Packet::PubRec(a) => {
                let known = s.received(a.packet_id, a.reason, &mut |e| events.push(e));
                if a.reason < 0x80 {
                    let mut rel = Ack::new(a.packet_id);
                    if !known && v5 {
                        rel.reason = reason::PACKET_IDENTIFIER_NOT_FOUND;
                    }
                    write_packet(out, protocol, &Packet::PubRel(rel));
                }
            }
            Packet::PubRel(a) => {
                let mut comp = Ack::new(a.packet_id);
                let known = s.inbound_qos2.remove(&a.packet_id);
                if !known && v5 {
                    comp.reason = reason::PACKET_IDENTIFIER_NOT_FOUND;
                }
                write_packet(out, protocol, &Packet::PubComp(comp));
                if known && persisted {
                    let rec = Record::Inbound2Done {
                        client: client.to_string(),
                        packet_id: a.packet_id,
                    };
                    self.log(rec, false);
                }
            }
            Packet::PubComp(a) => {
                if !s.complete(a.packet_id, Phase::Released, QoS::ExactlyOnce, &mut |e| {
                    events.push(e)
                }) {
                    tracing::debug!(client = %client, id = a.packet_id, "PUBCOMP for unknown packet id");
                }
            }
            Packet::Subscribe(sub) => {
                return self.handle_subscribe(client, conn_id, sub, now, out, fx)
            }
            Packet::Unsubscribe(u) => return self.handle_unsubscribe(client, conn_id, u, out),
            Packet::PingReq => write_packet(out, protocol, &Packet::PingResp),
            Packet::Disconnect(d) => {
                if v5 {
                    if let Some(e) = d.properties.session_expiry_interval() {
                        if s.expiry_interval == 0 && e != 0 {
                            return Err(Close::Error(reason::PROTOCOL_ERROR));
                        }
                        let e = e.min(max_expiry);
                        s.expiry_interval = e;
                        if persisted && e > 0 {
                            self.log(
                                Record::SessionExpiry {
                                    client: client.to_string(),
                                    expiry: e,
                                },
                                false,
                            );
                        }
                    }
                }
                return Err(Close::Disconnected {
                    will: d.reason == reason::DISCONNECT_WITH_WILL,
                });
            }
            // No Authentication Method was accepted in CONNECT (an unknown one gets CONNACK
            // 0x8C), so any AUTH is a Protocol Error (MQTT-4.12.0-7).
            Packet::Auth(_) => return Err(Close::Error(reason::PROTOCOL_ERROR)),
            _ => return Err(Close::Error(reason::PROTOCOL_ERROR)),
        }
        self.log_events(client, events);
        self.drain_session(client, out, now);
        Ok(())
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
        let cfg = self.cfg.clone();
        let s = self.owned(client, conn_id).ok_or(Close::TakenOver)?;
        let Some(link) = s.link.as_mut() else {
            return Err(Close::TakenOver);
        };
        let protocol = link.protocol;
        let v5 = protocol.is_v5();
        if p.qos as u8 > cfg.max_qos {
            return Err(Close::Error(reason::QOS_NOT_SUPPORTED));
        }
        if p.retain && !cfg.retain_available {
            return Err(Close::Error(reason::RETAIN_NOT_SUPPORTED));
        }
        // Subscription identifiers travel only from server to client (MQTT-3.3.4-6).
        if !p.properties.subscription_identifiers().is_empty() {
            return Err(Close::Error(reason::PROTOCOL_ERROR));
        }
        // Topic alias resolution (per connection, client -> broker direction).
        let topic: Arc<str> = match p.properties.topic_alias() {
            Some(alias) if alias > cfg.topic_alias_maximum => {
                return Err(Close::Error(reason::TOPIC_ALIAS_INVALID));
            }
            Some(alias) if p.topic.is_empty() => match link.alias_in.get(&alias) {
                Some(t) => t.clone(),
                None => return Err(Close::Error(reason::PROTOCOL_ERROR)),
            },
            Some(alias) => {
                let t: Arc<str> = Arc::from(p.topic);
                link.alias_in.insert(alias, t.clone());
                t
            }
            None => Arc::from(p.topic),
        };
        if topic.len() > cfg.max_topic_length || topic.split('/').count() > cfg.max_topic_levels {
            return Err(Close::Error(reason::TOPIC_NAME_INVALID));
        }
        let mut code = reason::SUCCESS;
        if p.properties.payload_format_indicator() == Some(1)
            && std::str::from_utf8(p.payload).is_err()
        {
            if p.qos == QoS::AtMostOnce {
                return Err(Close::Error(reason::PAYLOAD_FORMAT_INVALID));
            }
            code = reason::PAYLOAD_FORMAT_INVALID;
        }
        if p.qos == QoS::ExactlyOnce {
            if s.inbound_qos2.contains(&p.packet_id) {
                // A re-sent PUBLISH of a flow we already hold: acknowledge, don't deliver again.
                write_packet(out, protocol, &Packet::PubRec(Ack::new(p.packet_id)));
                return Ok(());
            }
            if s.inbound_qos2.len() >= usize::from(cfg.receive_maximum) {
                return Err(Close::Error(reason::RECEIVE_MAXIMUM_EXCEEDED));
            }
        }
        // `$SYS` belongs to the broker: clients may not publish into it.
        let persisted = s.persisted;
        let routed = if code == reason::SUCCESS && !is_sys(&topic) {
            let mid = self.mid();
            let msg = Arc::new(Message::from_publish(
                mid,
                p,
                topic,
                Some(client.clone()),
                now,
            ));
            self.publish(msg, now, fx)
        } else {
            0
        };
        if code == reason::SUCCESS && routed == 0 && v5 {
            code = reason::NO_MATCHING_SUBSCRIBERS;
        }
        let mut ack = Ack::new(p.packet_id);
        ack.reason = if v5 { code } else { 0 };
        match p.qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => write_packet(out, protocol, &Packet::PubAck(ack)),
            QoS::ExactlyOnce => {
                if code < 0x80 {
                    if let Some(s) = self.owned(client, conn_id) {
                        s.inbound_qos2.insert(p.packet_id);
                    }
                    if persisted {
                        let rec = Record::Inbound2 {
                            client: client.to_string(),
                            packet_id: p.packet_id,
                        };
                        self.log(rec, true);
                    }
                }
                write_packet(out, protocol, &Packet::PubRec(ack));
            }
        }
        self.drain_session(client, out, now);
        Ok(())
    }

    /// Routes `msg` to every matching subscription and stores/deletes it as retained.
    /// Returns the number of sessions it was queued for.
    pub(crate) fn publish(&mut self, msg: Arc<Message>, now: Instant, fx: &mut Effects) -> usize {
        if msg.retain {
            if msg.payload.is_empty() {
                if self.retained.remove(&msg.topic).is_some() {
                    self.log(
                        Record::RetainDel {
                            topic: msg.topic.to_string(),
                        },
                        msg.qos != QoS::AtMostOnce,
                    );
                }
            } else if self.retained.len() < self.cfg.max_retained_messages
                || self.retained.contains_key(&msg.topic)
            {
                // `$SYS` values are regenerated at start-up; they are not stored.
                if !is_sys(&msg.topic) {
                    self.hold_msg(&msg, None, now);
                    let rec = Record::RetainSet {
                        topic: msg.topic.to_string(),
                        mid: msg.mid,
                    };
                    self.log(rec, msg.qos != QoS::AtMostOnce);
                }
                self.retained.insert(msg.topic.clone(), msg.clone());
            } else {
                tracing::warn!(topic = %msg.topic, "retained message limit reached; not retained");
            }
        }
        struct Target {
            qos: QoS,
            retain: bool,
            sub_ids: Vec<u32>,
        }
        let mut direct: HashMap<Arc<str>, Target> = HashMap::new();
        let mut groups: HashMap<GroupKey, Vec<(Arc<str>, SubEntry)>> = HashMap::new();
        self.subs
            .for_each_match(&msg.topic, |filter, key, entry| match &key.group {
                None => {
                    if entry.no_local && msg.publisher.as_deref() == Some(&*key.client) {
                        return;
                    }
                    let t = direct.entry(key.client.clone()).or_insert(Target {
                        qos: QoS::AtMostOnce,
                        retain: false,
                        sub_ids: Vec::new(),
                    });
                    t.qos = t.qos.max(entry.qos);
                    t.retain |= entry.retain_as_published && msg.retain;
                    if let Some(id) = entry.id {
                        t.sub_ids.push(id);
                    }
                }
                Some(group) => groups
                    .entry((group.clone(), Arc::from(filter)))
                    .or_default()
                    .push((key.client.clone(), entry.clone())),
            });
        let mut count = 0;
        for (client, t) in direct {
            let d = Delivery {
                qos: msg.qos.min(t.qos),
                retain: t.retain,
                sub_ids: t.sub_ids,
                msg: msg.clone(),
                shared: None,
                dseq: 0,
                lsn: 0,
            };
            count += usize::from(self.deliver(&client, d, now, fx));
        }
        for ((group, filter), mut members) in groups {
            members.sort_by(|a, b| a.0.cmp(&b.0));
            if let Some(client) = self.pick_member(&group, &filter, &members, None) {
                if let Some((_, e)) = members.iter().find(|m| m.0 == client) {
                    let d = Delivery {
                        qos: msg.qos.min(e.qos),
                        retain: e.retain_as_published && msg.retain,
                        sub_ids: e.id.into_iter().collect(),
                        msg: msg.clone(),
                        shared: Some((group.clone(), filter.clone())),
                        dseq: 0,
                        lsn: 0,
                    };
                    count += usize::from(self.deliver(&client, d, now, fx));
                }
            }
        }
        count
    }

    /// Chooses the member of a shared group to receive the next message: round robin over
    /// online members, or over all members when none is online; never `exclude`.
    fn pick_member(
        &mut self,
        group: &Arc<str>,
        filter: &Arc<str>,
        members: &[(Arc<str>, SubEntry)],
        exclude: Option<&str>,
    ) -> Option<Arc<str>> {
        let candidates: Vec<&Arc<str>> = members
            .iter()
            .map(|m| &m.0)
            .filter(|c| Some(&***c) != exclude)
            .collect();
        let online: Vec<&Arc<str>> = candidates
            .iter()
            .copied()
            .filter(|c| self.sessions.get(&***c).is_some_and(Session::online))
            .collect();
        let pool = if online.is_empty() {
            &candidates
        } else {
            &online
        };
        if pool.is_empty() {
            return None;
        }
        let rr = self
            .shared_rr
            .entry((group.clone(), filter.clone()))
            .or_insert(0);
        let chosen = pool[*rr % pool.len()].clone();
        *rr = rr.wrapping_add(1);
        Some(chosen)
    }

    /// Queues `d` for `client`; QoS 0 is not queued for an offline session.
    fn deliver(&mut self, client: &str, mut d: Delivery, now: Instant, fx: &mut Effects) -> bool {
        let limits = self.limits;
        let Some(s) = self.sessions.get(client) else {
            return false;
        };
        if d.msg.expired(now) || (!s.online() && d.qos == QoS::AtMostOnce) {
            return false;
        }
        self.stats.deliveries += 1;
        let qos = d.qos;
        // A delivery to a persistent session is journaled before it is queued; beyond
        // the memory budget it waits on disk only.
        let store = s.persisted && qos != QoS::AtMostOnce && self.journal.is_some();
        if store {
            self.hold_msg(&d.msg, None, now);
            d.dseq = self.next_dseq;
            self.next_dseq += 1;
            let rec = d.enqueue_record(client);
            d.lsn = self.log_with(true, &mut |b| rec.encode(b));
        }
        let dseq = d.dseq;
        let spill = if store {
            spill_to(&self.spill_dir, &self.next_spill, &self.mem, self.budget)
        } else {
            None
        };
        let Some(s) = self.sessions.get_mut(client) else {
            return false;
        };
        let result = s.enqueue(d, &limits, spill);
        if result == crate::proto::session::Enqueued::Dropped {
            self.stats.dropped_overflow += 1;
            match &s.link {
                // A connected consumer that cannot keep up with QoS 1/2 is disconnected
                // (its persistent session keeps queueing up to the same bound).
                Some(link) if qos != QoS::AtMostOnce && link.kick.get() == 0 => {
                    tracing::warn!(client = %client, "slow consumer: queue full, disconnecting");
                    link.kick.set(reason::QUOTA_EXCEEDED);
                    fx.wake.push(link.notify.clone());
                }
                _ => tracing::debug!(client = %client, "queue full: delivery dropped"),
            }
            if dseq != 0 {
                self.log(
                    Record::Done {
                        client: client.to_owned(),
                        dseq,
                    },
                    false,
                );
            }
            return false;
        }
        if let Some(link) = &s.link {
            fx.wake.push(link.notify.clone());
        }
        true
    }

    fn handle_subscribe(
        &mut self,
        client: &Arc<str>,
        conn_id: u64,
        sub: &Subscribe<'_>,
        now: Instant,
        out: &mut BytesMut,
        fx: &mut Effects,
    ) -> Result<(), Close> {
        let cfg = self.cfg.clone();
        let s = owned(&mut self.sessions, client, conn_id).ok_or(Close::TakenOver)?;
        let persisted = s.persisted;
        let mut records = Vec::new();
        let protocol = s.link.as_ref().map_or(Protocol::V311, |l| l.protocol);
        let v5 = protocol.is_v5();
        let sub_id = sub.properties.subscription_identifiers().iter().next();
        if sub_id.is_some() && !cfg.subscription_identifiers {
            return Err(Close::Error(reason::SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED));
        }
        let mut codes = Vec::with_capacity(sub.filters.len());
        let mut retained_for: Vec<(String, QoS, bool)> = Vec::new();
        for f in sub.filters.iter() {
            let fail = |v5code: u8| {
                if v5 {
                    v5code
                } else {
                    reason::v3::SUBACK_FAILURE
                }
            };
            let (group, inner) = match topic::split_shared(f.filter) {
                None => (None, f.filter),
                Some(Err(())) => {
                    codes.push(fail(reason::TOPIC_FILTER_INVALID));
                    continue;
                }
                Some(Ok((g, inner))) => {
                    if f.options.no_local {
                        return Err(Close::Error(reason::PROTOCOL_ERROR));
                    }
                    if !cfg.shared_subscriptions {
                        codes.push(fail(reason::SHARED_SUBSCRIPTIONS_NOT_SUPPORTED));
                        continue;
                    }
                    (Some(g), inner)
                }
            };
            if f.filter.len() > cfg.max_topic_length
                || inner.split('/').count() > cfg.max_topic_levels
            {
                codes.push(fail(reason::TOPIC_FILTER_INVALID));
                continue;
            }
            if is_denied(&cfg.deny_subscribe, inner) || is_denied(&cfg.deny_subscribe, f.filter) {
                codes.push(reason::UNSPECIFIED_ERROR);
                continue;
            }
            if topic::has_wildcard(inner) && !cfg.wildcard_subscriptions {
                codes.push(fail(reason::WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED));
                continue;
            }
            let qos = f
                .options
                .qos
                .min(QoS::from_u8(cfg.max_qos).unwrap_or(QoS::ExactlyOnce));
            let mut options = f.options;
            options.qos = qos;
            let full: Arc<str> = Arc::from(f.filter);
            if persisted {
                records.push(Record::SubAdd {
                    client: client.to_string(),
                    filter: f.filter.to_owned(),
                    options: options.to_byte(Protocol::V5),
                    id: sub_id.unwrap_or(0),
                });
            }
            let existed = s
                .subscriptions
                .insert(
                    full,
                    Subscription {
                        options,
                        id: sub_id,
                    },
                )
                .is_some();
            self.subs.insert(
                inner,
                SubKey {
                    client: client.clone(),
                    group: group.map(Arc::from),
                },
                SubEntry {
                    qos,
                    no_local: options.no_local,
                    retain_as_published: options.retain_as_published,
                    id: sub_id,
                },
            );
            let send_retained = group.is_none()
                && (!v5
                    || match options.retain_handling {
                        RetainHandling::SendAtSubscribe => true,
                        RetainHandling::SendIfNew => !existed,
                        RetainHandling::DoNotSend => false,
                    });
            if send_retained {
                retained_for.push((inner.to_owned(), qos, options.retain_as_published));
            }
            codes.push(qos as u8);
        }
        for rec in records {
            self.log(rec, true);
        }
        let ack = SubAck {
            packet_id: sub.packet_id,
            properties: Properties::default(),
            codes: &codes,
        };
        write_packet(out, protocol, &Packet::SubAck(ack));
        // Retained messages follow the SUBACK (MQTT-3.8.4-4), flagged RETAIN.
        let mut deliveries = Vec::new();
        for (filter, qos, _) in &retained_for {
            for msg in self.retained.values() {
                if topic::matches(filter, &msg.topic) && !msg.expired(now) {
                    deliveries.push(Delivery {
                        qos: msg.qos.min(*qos),
                        retain: true,
                        sub_ids: sub_id.into_iter().collect(),
                        msg: msg.clone(),
                        shared: None,
                        dseq: 0,
                        lsn: 0,
                    });
                }
            }
        }
        for d in deliveries {
            self.deliver(client, d, now, fx);
        }
        self.drain_session(client, out, now);
        Ok(())
    }

    fn handle_unsubscribe(
        &mut self,
        client: &Arc<str>,
        conn_id: u64,
        u: &Unsubscribe<'_>,
        out: &mut BytesMut,
    ) -> Result<(), Close> {
        let s = self.owned(client, conn_id).ok_or(Close::TakenOver)?;
        let protocol = s.link.as_ref().map_or(Protocol::V311, |l| l.protocol);
        let persisted = s.persisted;
        let mut codes = Vec::with_capacity(u.filters.len());
        let mut removed = Vec::new();
        for f in u.filters.iter() {
            if s.subscriptions.remove(f).is_some() {
                removed.push(f);
                codes.push(reason::SUCCESS);
            } else {
                codes.push(reason::NO_SUBSCRIPTION_EXISTED);
            }
        }
        for f in removed {
            self.remove_trie_entry(client, f);
            if persisted {
                self.log(
                    Record::SubDel {
                        client: client.to_string(),
                        filter: f.to_owned(),
                    },
                    true,
                );
            }
        }
        let ack = UnsubAck {
            packet_id: u.packet_id,
            properties: Properties::default(),
            codes: &codes,
        };
        write_packet(out, protocol, &Packet::UnsubAck(ack));
        Ok(())
    }

    fn remove_trie_entry(&mut self, client: &Arc<str>, full_filter: &str) {
        let (group, inner) = match topic::split_shared(full_filter) {
            Some(Ok((g, inner))) => (Some(Arc::from(g)), inner),
            _ => (None, full_filter),
        };
        self.subs.remove(
            inner,
            &SubKey {
                client: client.clone(),
                group,
            },
        );
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
        s.link = None;
        s.offline_since = Some(now);
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
        let Some(s) = self.sessions.get_mut(client) else {
            return;
        };
        let persisted = s.persisted;
        let mut will_gone = false;
        match end {
            End::Normal { will: false } => will_gone = s.will.take().is_some(),
            End::Normal { will: true } | End::Abnormal => {}
        }
        // Queued (unsent) shared deliveries go to another member of their group.
        let reroute = s.take_queued(|d| d.shared.is_some());
        let expiry = s.expiry_interval;
        if let Some(w) = &s.will {
            let delay = w.delay.min(expiry);
            if delay == 0 {
                let w = w.clone();
                s.will = None;
                will_gone = true;
                self.publish_will(w, now, fx);
            } else {
                s.will_at = Some(now + Duration::from_secs(u64::from(delay)));
            }
        }
        if persisted {
            if will_gone {
                self.log(
                    Record::WillClear {
                        client: client.to_string(),
                    },
                    false,
                );
            }
            if !takeover && expiry > 0 {
                let rec = Record::SessionOffline {
                    client: client.to_string(),
                    at_ms: unix_ms(),
                };
                self.log(rec, false);
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
        } else if let Some(s) = self.sessions.get_mut(client) {
            s.expires_at =
                (expiry != u32::MAX).then(|| now + Duration::from_secs(u64::from(expiry)));
        }
    }

    fn publish_will(&mut self, w: WillState, now: Instant, fx: &mut Effects) {
        tracing::debug!(topic = %w.msg.topic, "publishing will");
        let mut msg = w.msg;
        // The will's Message Expiry Interval counts from when it is published.
        if let Some(secs) = w.expiry {
            Arc::make_mut(&mut msg).expires_at = Some(now + Duration::from_secs(u64::from(secs)));
        }
        self.publish(msg, now, fx);
    }

    /// Gives a shared delivery to another member of its group (the previous one left).
    fn reroute_shared(&mut self, from: &Arc<str>, mut d: Delivery, now: Instant, fx: &mut Effects) {
        let Some((group, filter)) = d.shared.clone() else {
            return;
        };
        if d.dseq != 0 {
            self.log(
                Record::Done {
                    client: from.to_string(),
                    dseq: d.dseq,
                },
                false,
            );
            d.dseq = 0;
            d.lsn = 0;
        }
        let mut members = Vec::new();
        self.subs.for_each_match(&d.msg.topic, |f, key, entry| {
            if f == &*filter && key.group.as_deref() == Some(&*group) {
                members.push((key.client.clone(), entry.clone()));
            }
        });
        members.sort_by(|a, b| a.0.cmp(&b.0));
        if let Some(client) = self.pick_member(&group, &filter, &members, Some(from)) {
            self.deliver(&client, d, now, fx);
        }
    }

    /// Ends a session: publishes a pending will, removes subscriptions, and hands QoS 1
    /// deliveries of shared subscriptions to other members (a begun QoS 2 flow is not
    /// re-sent elsewhere, MQTT 5 §4.8.2).
    fn end_session(&mut self, client: &Arc<str>, now: Instant, fx: &mut Effects) {
        let Some(mut s) = self.sessions.remove(client) else {
            return;
        };
        for f in s.subscriptions.keys() {
            self.remove_trie_entry(client, f);
        }
        if s.persisted {
            self.log(
                Record::SessionEnd {
                    client: client.to_string(),
                },
                false,
            );
        }
        if s.will_at.is_some() {
            if let Some(w) = s.will.take() {
                self.publish_will(w, now, fx);
            }
        }
        // Queued shared deliveries and QoS 1 ones in flight go to another member; a QoS
        // 2 flow that has begun stays with this member (MQTT 5 §4.8.2) and ends here.
        let inflight = std::mem::take(&mut s.inflight)
            .into_iter()
            .map(|i| (i.delivery, true));
        let queued = s.take_queued(|_| true).into_iter().map(|d| (d, false));
        for (d, sent) in queued.chain(inflight) {
            if d.shared.is_some() && (!sent || d.qos == QoS::AtLeastOnce) {
                self.reroute_shared(client, d, now, fx);
            } else if d.dseq != 0 {
            }
        }
        tracing::debug!(client = %client, "session ended");
    }

    /// Fires due wills and ends expired sessions. Call periodically.
    pub(crate) fn tick(&mut self, now: Instant, fx: &mut Effects) {
        let mut wills = Vec::new();
        let mut expired = Vec::new();
        for (id, s) in &mut self.sessions {
            if s.online() {
                continue;
            }
            if s.will_at.is_some_and(|t| t <= now) {
                s.will_at = None;
                if let Some(w) = s.will.take() {
                    wills.push((id.clone(), s.persisted, w));
                }
            }
            if s.expires_at.is_some_and(|t| t <= now) {
                expired.push(id.clone());
            }
        }
        for (id, persisted, w) in wills {
            if persisted {
                self.log(
                    Record::WillClear {
                        client: id.to_string(),
                    },
                    false,
                );
            }
            self.publish_will(w, now, fx);
        }
        for id in expired {
            self.end_session(&id, now, fx);
        }
        let gone: Vec<Arc<Message>> = self
            .retained
            .values()
            .filter(|m| m.expired(now))
            .cloned()
            .collect();
        for m in gone {
            self.retained.remove(&m.topic);
            self.log(
                Record::RetainDel {
                    topic: m.topic.to_string(),
                },
                false,
            );
        }
    }
    /// Recovery, step 1 of 3: the sessions of pass 1 with their subscriptions, expiry
    /// and inbound QoS 2 state; their deliveries follow through
    /// [`Core::restore_delivery`], retained messages and wills through
    /// [`Core::restore_finish`].
    pub(crate) fn restore_sessions(&mut self, index: &Index, now: Instant) {
        let now_ms = unix_ms();
        self.next_mid = self.next_mid.max(index.max_mid + 1);
        self.next_dseq = self.next_dseq.max(index.max_dseq + 1);
        for (client, si) in &index.sessions {
            let id: Arc<str> = Arc::from(client.as_str());
            let mut s = Session::new(id.clone(), self.mem.clone());
            s.expiry_interval = si.expiry;
            s.persisted = true;
            let offline = si.offline_at_ms.map_or(now, |ms| {
                crate::proto::message::unix_ms_to_instant(ms, now, now_ms)
            });
            s.offline_since = Some(offline);
            for (filter, &(opts, sub_id)) in &si.subs {
                let options = SubOptions::from_byte(opts, Protocol::V5).unwrap_or_default();
                let sub_id = (sub_id != 0).then_some(sub_id);
                let (group, inner) = match topic::split_shared(filter) {
                    Some(Ok((g, inner))) => (Some(Arc::from(g)), inner.to_owned()),
                    _ => (None, filter.clone()),
                };
                let entry = SubEntry {
                    qos: options.qos,
                    no_local: options.no_local,
                    retain_as_published: options.retain_as_published,
                    id: sub_id,
                };
                self.subs.insert(
                    &inner,
                    SubKey {
                        client: id.clone(),
                        group,
                    },
                    entry,
                );
                s.subscriptions.insert(
                    Arc::from(filter.as_str()),
                    Subscription {
                        options,
                        id: sub_id,
                    },
                );
            }
            s.inbound_qos2 = si.inbound2.clone();
            s.expires_at = (si.expiry != u32::MAX)
                .then(|| offline + Duration::from_secs(u64::from(si.expiry)));
            if si.offline_at_ms.is_none() {
                self.log(
                    Record::SessionOffline {
                        client: id.to_string(),
                        at_ms: now_ms,
                    },
                    false,
                );
            }
            self.sessions.insert(id, s);
        }
    }

    /// Recovery, step 2: one live delivery of pass 2, in log order (the order its
    /// session queued them). A sent one goes back in flight; the others are queued in
    /// memory until the queue budget is used, then straight into the spill file.
    pub(crate) fn restore_delivery(
        &mut self,
        client: &str,
        dseq: u64,
        d: DeliveryImage,
        msg: Arc<Message>,
    ) {
        let Some(s) = self.sessions.get_mut(client) else {
            return;
        };
        let delivery = Delivery {
            msg,
            qos: QoS::from_u8(d.qos).unwrap_or(QoS::AtLeastOnce),
            retain: d.retain,
            sub_ids: d.sub_ids,
            shared: d.shared.map(|(g, f)| (Arc::from(g), Arc::from(f))),
            dseq,
            lsn: 0,
        };
        match d.packet_id {
            Some(packet_id) => s.inflight.push_back(Inflight {
                packet_id,
                delivery,
                phase: if d.released {
                    Phase::Released
                } else {
                    Phase::Published
                },
            }),
            None => {
                let spill = spill_to(&self.spill_dir, &self.next_spill, &self.mem, self.budget);
                s.restore_queued(delivery, spill);
            }
        }
    }

    /// Recovery, step 3: retained messages and wills, from the messages pass 2 kept.
    pub(crate) fn restore_finish(
        &mut self,
        index: &Index,
        messages: &HashMap<u64, (Arc<Message>, Option<u32>)>,
    ) {
        for (topic, mid) in &index.retained {
            if let Some((m, _)) = messages.get(mid) {
                self.retained.insert(Arc::from(topic.as_str()), m.clone());
            }
        }
        for (client, si) in &index.sessions {
            let (Some((mid, delay)), Some(s)) = (si.will, self.sessions.get_mut(client.as_str()))
            else {
                continue;
            };
            let (Some((msg, will_expiry)), Some(offline)) = (messages.get(&mid), s.offline_since)
            else {
                continue;
            };
            s.will = Some(WillState {
                msg: msg.clone(),
                delay,
                expiry: *will_expiry,
            });
            let wait = Duration::from_secs(u64::from(delay.min(si.expiry)));
            s.will_at = Some(offline + wait);
        }
    }

    /// Framed journal records describing the whole durable state now (for compaction).
    /// Hands the records to `sink` in chunks of about 1 MiB; returns the total size.
    pub(crate) fn snapshot(&mut self, now: Instant, sink: &mut dyn FnMut(Vec<u8>)) -> u64 {
        let mut snap = Snapshot {
            sink,
            out: Vec::new(),
            emitted: HashSet::new(),
            now,
            now_ms: unix_ms(),
            total: 0,
        };
        for (topic, m) in self.retained.iter().filter(|(t, _)| !is_sys(t)) {
            snap.msg(m, None);
            snap.put(Record::RetainSet {
                topic: topic.to_string(),
                mid: m.mid,
            });
        }
        for (id, s) in &mut self.sessions {
            if !s.persisted {
                continue;
            }
            let client = id.to_string();
            snap.put(Record::SessionOpen {
                client: client.clone(),
                expiry: s.expiry_interval,
            });
            if let (Some(at), false) = (s.offline_since, s.online()) {
                let at_ms = crate::proto::message::instant_to_unix_ms(at, now, snap.now_ms);
                snap.put(Record::SessionOffline {
                    client: client.clone(),
                    at_ms,
                });
            }
            for (filter, sub) in &s.subscriptions {
                snap.put(Record::SubAdd {
                    client: client.clone(),
                    filter: filter.to_string(),
                    options: sub.options.to_byte(Protocol::V5),
                    id: sub.id.unwrap_or(0),
                });
            }
            let inflight = s
                .inflight
                .iter()
                .map(|i| (&i.delivery, Some((i.packet_id, i.phase))));
            for (d, sent) in inflight.chain(s.queue.iter().map(|d| (d, None))) {
                if d.dseq == 0 {
                    continue;
                }
                snap.delivery(&client, d);
                if let Some((packet_id, phase)) = sent {
                    snap.put(Record::Sent {
                        client: client.clone(),
                        dseq: d.dseq,
                        packet_id,
                    });
                    if phase == Phase::Released {
                        snap.put(Record::Released {
                            client: client.clone(),
                            dseq: d.dseq,
                        });
                    }
                }
            }
            if let Some(spill) = s.spill.as_mut() {
                let now_ms = snap.now_ms;
                let r = spill.for_each(now, now_ms, &mut |d| snap.spilled_delivery(&client, d));
                if let Err(e) = r {
                    tracing::error!(client = %client, error = %e, "spill unreadable while compacting");
                }
            }
            for &packet_id in &s.inbound_qos2 {
                snap.put(Record::Inbound2 {
                    client: client.clone(),
                    packet_id,
                });
            }
            if let Some(w) = &s.will {
                snap.msg(&w.msg, w.expiry);
                snap.put(Record::Will {
                    client: client.clone(),
                    mid: w.msg.mid,
                    delay: w.delay,
                });
            }
        }
        snap.flush();
        snap.total
    }

    /// Replaces the journal's history with a snapshot once it has grown to several times
    /// the live state.
    pub(crate) fn maybe_compact(&mut self, now: Instant) {
        let Some(j) = &self.journal else {
            return;
        };
        let since = j.since_snapshot();
        if since < COMPACT_MIN.max(self.last_snapshot.saturating_mul(2)) {
            return;
        }
        // Rewriting a log that is mostly live state reclaims little, and the core waits
        // while the snapshot is written: wait until at least half of the log can go. The
        // live state is estimated by the queue cost of the queued deliveries (in memory
        // and spilled), which is of the order of their records' size.
        let (_, spilled) = self.spilled();
        let live = (self.queued_memory() + spilled) as u64;
        if self.last_snapshot + since < live.saturating_mul(2) {
            return;
        }
        let bytes = self.compact(now);
        tracing::info!(bytes, "compacted the store");
    }

    /// Deliveries waiting in spill files across all sessions, and their queue cost.
    fn spilled(&self) -> (usize, usize) {
        let spills = self.sessions.values().filter_map(|s| s.spill.as_ref());
        spills.fold((0, 0), |(n, b), s| (n + s.count, b + s.bytes))
    }

    /// Writes a snapshot of the live state that replaces the journal's history; returns
    /// its size.
    pub(crate) fn compact(&mut self, now: Instant) -> u64 {
        let Some(j) = self.journal.clone() else {
            return 0;
        };
        j.snapshot_begin();
        let bytes = self.snapshot(now, &mut |chunk| j.snapshot_chunk(chunk));
        j.snapshot_end();
        self.last_snapshot = bytes;
        bytes
    }

    /// Publishes the broker's counters under `$SYS/broker/` (retained, QoS 0).
    pub(crate) fn publish_sys(&mut self, uptime: Duration, now: Instant, fx: &mut Effects) {
        let online = self.sessions.values().filter(|s| s.online()).count();
        let queued: usize = self.sessions.values().map(|s| s.queue.len()).sum();
        let expired: u64 = self.sessions.values().map(|s| s.drops.expired).sum();
        let (spilled, _) = self.spilled();
        let values: [(&str, String); 13] = [
            ("version", format!("mote {}", env!("CARGO_PKG_VERSION"))),
            ("uptime", format!("{} seconds", uptime.as_secs())),
            ("clients/connected", online.to_string()),
            ("clients/total", self.sessions.len().to_string()),
            ("subscriptions/count", self.subs.len().to_string()),
            ("retained/count", self.retained.len().to_string()),
            ("messages/received", self.stats.publish_received.to_string()),
            ("messages/delivered", self.stats.deliveries.to_string()),
            ("messages/queued", queued.to_string()),
            ("messages/dropped", self.stats.dropped_overflow.to_string()),
            ("messages/expired", expired.to_string()),
            ("messages/spilled", spilled.to_string()),
            ("memory/queued", self.queued_memory().to_string()),
        ];
        for (name, value) in values {
            let topic = format!("$SYS/broker/{name}");
            self.publish_system(&topic, Bytes::from(value), true, now, fx);
        }
    }

    /// Publishes a broker-originated message (e.g. `$SYS`).
    pub(crate) fn publish_system(
        &mut self,
        topic: &str,
        payload: Bytes,
        retain: bool,
        now: Instant,
        fx: &mut Effects,
    ) {
        let msg = Message {
            mid: self.mid(),
            topic: Arc::from(topic),
            payload,
            qos: QoS::AtMostOnce,
            retain,
            payload_format_indicator: None,
            content_type: None,
            response_topic: None,
            correlation_data: None,
            user_properties: encode_user_properties(&Properties::default()),
            expires_at: None,
            publisher: None,
            stored: std::sync::atomic::AtomicBool::new(false),
        };
        self.publish(Arc::new(msg), now, fx);
    }
}

/// The session of `client` in `sessions` if connection `conn_id` still owns it (a free
/// function so callers can borrow other fields of the core beside it).
fn owned<'s>(
    sessions: &'s mut HashMap<Arc<str>, Session>,
    client: &str,
    conn_id: u64,
) -> Option<&'s mut Session> {
    sessions
        .get_mut(client)
        .filter(|s| s.link.as_ref().is_some_and(|l| l.conn_id == conn_id))
}

/// Builds a snapshot: framed records, each in-memory message written once, streamed to
/// a sink in chunks.
struct Snapshot<'s> {
    sink: &'s mut dyn FnMut(Vec<u8>),
    out: Vec<u8>,
    emitted: HashSet<u64>,
    now: Instant,
    now_ms: u64,
    total: u64,
}

/// Size of the chunks a snapshot is handed over in.
const SNAPSHOT_CHUNK: usize = 1024 * 1024;

impl Snapshot<'_> {
    fn put(&mut self, rec: Record) {
        self.put_with(&mut |b| rec.encode(b));
    }

    fn put_with(&mut self, encode: &mut dyn FnMut(&mut Vec<u8>)) {
        crate::store::log::frame_with(&mut self.out, encode);
        if self.out.len() >= SNAPSHOT_CHUNK {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if !self.out.is_empty() {
            self.total += self.out.len() as u64;
            (self.sink)(std::mem::take(&mut self.out));
        }
    }

    /// The message of `d` (once) and its `Enqueue` record.
    fn delivery(&mut self, client: &str, d: &Delivery) {
        self.msg(&d.msg, None);
        self.enqueue(client, d);
    }

    /// A delivery read back from a spill file: its message is written without
    /// remembering the id (spilled messages are copies; a duplicate record is harmless,
    /// a set of every id is not).
    fn spilled_delivery(&mut self, client: &str, d: &Delivery) {
        if !self.emitted.contains(&d.msg.mid) {
            self.put_msg(&d.msg, None);
        }
        self.enqueue(client, d);
    }

    fn enqueue(&mut self, client: &str, d: &Delivery) {
        let rec = d.enqueue_record(client);
        self.put_with(&mut |b| rec.encode(b));
    }

    fn msg(&mut self, m: &Message, will_expiry: Option<u32>) {
        if self.emitted.insert(m.mid) {
            self.put_msg(m, will_expiry);
        }
    }

    fn put_msg(&mut self, m: &Message, will_expiry: Option<u32>) {
        let stored = m.as_stored(will_expiry, self.now, self.now_ms);
        self.put_with(&mut |b| stored.encode_msg(m.mid, b));
    }
}

/// Where deliveries to persistent sessions go while the memory queued across all sessions
/// is over `budget`: a spill file in `dir` (`None`: memory, or no on-disk store).
fn spill_to<'a>(
    dir: &'a Option<PathBuf>,
    seq: &'a AtomicU64,
    mem: &AtomicUsize,
    budget: usize,
) -> Option<SpillTo<'a>> {
    let dir = dir.as_deref()?;
    (mem.load(Ordering::Relaxed) > budget).then_some(SpillTo { dir, seq })
}

/// True for topics under `$SYS`, which only the broker publishes to.
fn is_sys(topic: &str) -> bool {
    topic == "$SYS" || topic.starts_with("$SYS/")
}

/// True when `filter` is on the deny list: listed as is, or matched by a listed wildcard
/// filter (a denied `a/#` also denies `a/b` and `a/+`).
fn is_denied(deny: &[String], filter: &str) -> bool {
    deny.iter()
        .any(|d| d == filter || (topic::has_wildcard(d) && topic::matches(d, filter)))
}

/// A DISCONNECT for `protocol` with `reason` (nothing for 3.1.1, which has no server
/// DISCONNECT).
pub(crate) fn disconnect_packet(out: &mut BytesMut, protocol: Protocol, reason: u8) {
    if protocol.is_v5() {
        write_packet(out, protocol, &Packet::Disconnect(Disconnect::new(reason)));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    //! The core driven directly with decoded packets and virtual time: no sockets.
    use super::*;
    use mote_codec::{List, PropList, SubOptions, SubscribeFilter, Will};

    /// A received PUBLISH: topic, payload, qos, packet id, dup, retain, subscription ids.
    type Got = (String, Vec<u8>, QoS, u16, bool, bool, Vec<u32>);

    /// One simulated client attached to the core.
    struct Client {
        id: Arc<str>,
        conn: u64,
        protocol: Protocol,
        kick: Arc<Kick>,
        out: BytesMut,
    }

    fn core() -> Core {
        Core::new(Arc::new(MqttConfig::default()))
    }

    fn connect_with(core: &mut Core, c: &Connect<'_>, now: Instant) -> (Option<Client>, Vec<u8>) {
        let kick = Arc::new(Kick::default());
        let mut out = BytesMut::new();
        let mut fx = Effects::default();
        let acc = core.connect(
            c,
            Arc::new(Notify::new()),
            kick.clone(),
            now,
            &mut out,
            &mut fx,
        );
        let bytes = out.to_vec();
        let client = acc.map(|a| Client {
            id: a.client_id,
            conn: a.conn_id,
            protocol: a.protocol,
            kick,
            out: BytesMut::new(),
        });
        (client, bytes)
    }

    fn connect_packet<'a>(
        protocol: Protocol,
        id: &'a str,
        clean: bool,
        props: Properties<'a>,
    ) -> Connect<'a> {
        Connect {
            protocol,
            clean_start: clean,
            keep_alive: 30,
            properties: props,
            client_id: id,
            will: None,
            username: None,
            password: None,
        }
    }

    fn connect(
        core: &mut Core,
        protocol: Protocol,
        id: &str,
        clean: bool,
        expiry: Option<u32>,
        now: Instant,
    ) -> Client {
        let props = Properties::Values(&PropValues {
            session_expiry_interval: expiry,
            ..PropValues::default()
        });
        connect_with(core, &connect_packet(protocol, id, clean, props), now)
            .0
            .unwrap()
    }

    /// Every packet in `bytes`, decoded with `protocol`, passed to `f`.
    fn each_packet(bytes: &[u8], protocol: Protocol, mut f: impl FnMut(Packet<'_>)) {
        let mut at = 0;
        while at < bytes.len() {
            let (p, n) = mote_codec::decode(&bytes[at..], protocol, u32::MAX)
                .unwrap()
                .unwrap();
            f(p);
            at += n;
        }
    }

    fn send(core: &mut Core, c: &mut Client, p: &Packet<'_>, now: Instant) -> Result<(), Close> {
        let mut fx = Effects::default();
        core.handle(&c.id, c.conn, p, now, &mut c.out, &mut fx)
    }

    /// Drains and returns what the core has for `c` as owned (topic, payload, qos, id, dup, retain, sub ids).
    fn received(core: &mut Core, c: &mut Client, now: Instant) -> Vec<Got> {
        let _ = core.drain(&c.id, c.conn, now, &mut c.out);
        let bytes = c.out.split().to_vec();
        let mut v = Vec::new();
        each_packet(&bytes, c.protocol, |p| {
            if let Packet::Publish(p) = p {
                v.push((
                    p.topic.to_owned(),
                    p.payload.to_vec(),
                    p.qos,
                    p.packet_id,
                    p.dup,
                    p.retain,
                    p.properties.subscription_identifiers().iter().collect(),
                ));
            }
        });
        v
    }

    fn subscribe(
        core: &mut Core,
        c: &mut Client,
        filters: &[(&str, SubOptions)],
        id: Option<u32>,
        now: Instant,
    ) -> Vec<u8> {
        let entries: Vec<SubscribeFilter<'_>> = filters
            .iter()
            .map(|(f, o)| SubscribeFilter {
                filter: f,
                options: *o,
            })
            .collect();
        let ids: Vec<u32> = id.into_iter().collect();
        let p = Packet::Subscribe(Subscribe {
            packet_id: 1,
            properties: Properties::Values(&PropValues {
                subscription_identifiers: PropList::Slice(&ids),
                ..PropValues::default()
            }),
            filters: List::Slice(&entries),
        });
        send(core, c, &p, now).unwrap();
        let bytes = c.out.split().to_vec();
        let mut codes = Vec::new();
        each_packet(&bytes, c.protocol, |p| {
            if let Packet::SubAck(a) = p {
                codes = a.codes.to_vec();
            }
        });
        // Put back anything after the SUBACK (retained deliveries).
        let mut rest = BytesMut::new();
        each_packet(&bytes, c.protocol, |p| {
            if !matches!(p, Packet::SubAck(_)) {
                p.encode_to(c.protocol, &mut rest).unwrap();
            }
        });
        c.out = rest;
        codes
    }

    fn publish(
        core: &mut Core,
        c: &mut Client,
        topic: &str,
        payload: &[u8],
        qos: QoS,
        id: u16,
        now: Instant,
    ) {
        let p = Packet::Publish(Publish {
            dup: false,
            qos,
            retain: false,
            topic,
            packet_id: id,
            properties: Properties::default(),
            payload,
        });
        send(core, c, &p, now).unwrap();
        c.out.clear();
    }

    fn q(qos: QoS) -> SubOptions {
        SubOptions::qos(qos)
    }

    #[test]
    fn v5_connack_announces_limits() {
        let mut core = core();
        let (_, bytes) = connect_with(
            &mut core,
            &connect_packet(Protocol::V5, "", true, Properties::default()),
            Instant::now(),
        );
        let (p, _) = mote_codec::decode(&bytes, Protocol::V5, u32::MAX)
            .unwrap()
            .unwrap();
        let Packet::ConnAck(a) = p else {
            panic!("not a CONNACK")
        };
        assert_eq!(a.code, 0);
        assert!(!a.session_present);
        let pr = a.properties;
        assert_eq!(pr.receive_maximum(), Some(1024));
        assert_eq!(pr.topic_alias_maximum(), Some(64));
        assert_eq!(pr.maximum_packet_size(), Some(1_048_576));
        assert_eq!(pr.retain_available(), Some(true));
        assert_eq!(pr.shared_subscription_available(), Some(true));
        assert!(pr
            .assigned_client_identifier()
            .is_some_and(|id| !id.is_empty()));
    }

    #[test]
    fn v311_empty_id_without_clean_session_is_rejected() {
        let mut core = core();
        let (c, bytes) = connect_with(
            &mut core,
            &connect_packet(Protocol::V311, "", false, Properties::default()),
            Instant::now(),
        );
        assert!(c.is_none());
        assert_eq!(bytes, [0x20, 0x02, 0x00, 0x02]);
    }

    #[test]
    fn qos1_flow_and_window() {
        let now = Instant::now();
        let mut core = core();
        let mut sub = connect(&mut core, Protocol::V311, "sub", true, None, now);
        let mut publ = connect(&mut core, Protocol::V311, "pub", true, None, now);
        assert_eq!(
            subscribe(
                &mut core,
                &mut sub,
                &[("a/+", q(QoS::AtLeastOnce))],
                None,
                now
            ),
            [1]
        );
        publish(&mut core, &mut publ, "a/b", b"1", QoS::AtLeastOnce, 10, now);
        publish(&mut core, &mut publ, "a/b", b"2", QoS::ExactlyOnce, 11, now);
        let got = received(&mut core, &mut sub, now);
        assert_eq!(got.len(), 2);
        assert_eq!(
            (got[0].2, got[1].2),
            (QoS::AtLeastOnce, QoS::AtLeastOnce),
            "granted QoS caps delivery"
        );
        let s = &core.sessions["sub"];
        assert_eq!(s.inflight.len(), 2);
        send(
            &mut core,
            &mut sub,
            &Packet::PubAck(Ack::new(got[0].3)),
            now,
        )
        .unwrap();
        send(
            &mut core,
            &mut sub,
            &Packet::PubAck(Ack::new(got[1].3)),
            now,
        )
        .unwrap();
        assert!(core.sessions["sub"].inflight.is_empty());
    }

    #[test]
    fn qos2_duplicate_publish_is_delivered_once() {
        let now = Instant::now();
        let mut core = core();
        let mut sub = connect(&mut core, Protocol::V5, "sub", true, None, now);
        let mut publ = connect(&mut core, Protocol::V5, "pub", true, None, now);
        subscribe(
            &mut core,
            &mut sub,
            &[("t", q(QoS::ExactlyOnce))],
            None,
            now,
        );
        publish(&mut core, &mut publ, "t", b"x", QoS::ExactlyOnce, 7, now);
        publish(&mut core, &mut publ, "t", b"x", QoS::ExactlyOnce, 7, now);
        assert_eq!(received(&mut core, &mut sub, now).len(), 1);
        send(&mut core, &mut publ, &Packet::PubRel(Ack::new(7)), now).unwrap();
        assert!(core.sessions["pub"].inbound_qos2.is_empty());
        // After PUBREL the id is free: the same id is a new message.
        publish(&mut core, &mut publ, "t", b"y", QoS::ExactlyOnce, 7, now);
        assert_eq!(received(&mut core, &mut sub, now).len(), 1);
    }

    #[test]
    fn overlapping_subscriptions_deliver_once_with_every_identifier() {
        let now = Instant::now();
        let mut core = core();
        let mut sub = connect(&mut core, Protocol::V5, "sub", true, None, now);
        let mut publ = connect(&mut core, Protocol::V5, "pub", true, None, now);
        subscribe(
            &mut core,
            &mut sub,
            &[("a/#", q(QoS::AtMostOnce))],
            Some(1),
            now,
        );
        subscribe(
            &mut core,
            &mut sub,
            &[("a/+", q(QoS::AtLeastOnce))],
            Some(2),
            now,
        );
        publish(&mut core, &mut publ, "a/b", b"x", QoS::ExactlyOnce, 1, now);
        let got = received(&mut core, &mut sub, now);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].2, QoS::AtLeastOnce);
        let mut ids = got[0].6.clone();
        ids.sort_unstable();
        assert_eq!(ids, [1, 2]);
    }

    #[test]
    fn persistent_session_queues_and_resends_with_dup() {
        let t0 = Instant::now();
        let mut core = core();
        let mut sub = connect(&mut core, Protocol::V311, "sub", false, None, t0);
        let mut publ = connect(&mut core, Protocol::V311, "pub", true, None, t0);
        subscribe(&mut core, &mut sub, &[("t", q(QoS::AtLeastOnce))], None, t0);
        publish(&mut core, &mut publ, "t", b"1", QoS::AtLeastOnce, 1, t0);
        let first = received(&mut core, &mut sub, t0);
        assert_eq!(first.len(), 1);
        let mut fx = Effects::default();
        core.disconnected(&sub.id, sub.conn, End::Abnormal, t0, &mut fx);
        publish(&mut core, &mut publ, "t", b"2", QoS::AtLeastOnce, 2, t0);
        publish(&mut core, &mut publ, "t", b"q0", QoS::AtMostOnce, 0, t0);
        let (c, bytes) = connect_with(
            &mut core,
            &connect_packet(Protocol::V311, "sub", false, Properties::default()),
            t0,
        );
        assert_eq!(&bytes[..4], [0x20, 0x02, 0x01, 0x00], "session present");
        let mut got = Vec::new();
        each_packet(&bytes[4..], Protocol::V311, |p| {
            if let Packet::Publish(p) = p {
                got.push((p.payload.to_vec(), p.dup, p.packet_id));
            }
        });
        assert_eq!(
            got.len(),
            2,
            "unacked resent, queued QoS 1 sent, QoS 0 not queued offline"
        );
        assert_eq!(got[0], (b"1".to_vec(), true, first[0].3));
        assert_eq!((got[1].0.as_slice(), got[1].1), (&b"2"[..], false));
        drop(c);
    }

    #[test]
    fn will_waits_for_its_delay_and_is_cancelled_by_reconnect() {
        let t0 = Instant::now();
        let mut core = core();
        let mut watcher = connect(&mut core, Protocol::V5, "w", true, None, t0);
        subscribe(
            &mut core,
            &mut watcher,
            &[("will/#", q(QoS::AtLeastOnce))],
            None,
            t0,
        );
        let will_props = PropValues {
            will_delay_interval: Some(5),
            ..PropValues::default()
        };
        let will = || Will {
            topic: "will/x",
            payload: b"gone",
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Properties::Values(&will_props),
        };
        let props = Properties::Values(&PropValues {
            session_expiry_interval: Some(100),
            ..PropValues::default()
        });
        let mut c = connect_packet(Protocol::V5, "dev", true, props);
        c.will = Some(will());
        let dev = connect_with(&mut core, &c, t0).0.unwrap();
        let mut fx = Effects::default();
        core.disconnected(&dev.id, dev.conn, End::Abnormal, t0, &mut fx);
        core.tick(t0 + Duration::from_secs(4), &mut fx);
        assert!(
            received(&mut core, &mut watcher, t0).is_empty(),
            "not before the delay"
        );
        core.tick(t0 + Duration::from_secs(6), &mut fx);
        let got = received(&mut core, &mut watcher, t0);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, "will/x");

        // Reconnecting (clean start 0) before the delay cancels the will.
        let mut c2 = connect_packet(Protocol::V5, "dev2", true, props);
        c2.will = Some(will());
        let dev2 = connect_with(&mut core, &c2, t0).0.unwrap();
        core.disconnected(&dev2.id, dev2.conn, End::Abnormal, t0, &mut fx);
        let _ = connect_with(
            &mut core,
            &connect_packet(Protocol::V5, "dev2", false, props),
            t0 + Duration::from_secs(1),
        );
        core.tick(t0 + Duration::from_secs(10), &mut fx);
        assert!(received(&mut core, &mut watcher, t0).is_empty());
    }

    #[test]
    fn normal_disconnect_discards_the_will_and_session_expiry_zero_ends_session() {
        let t0 = Instant::now();
        let mut core = core();
        let mut watcher = connect(&mut core, Protocol::V311, "w", true, None, t0);
        subscribe(
            &mut core,
            &mut watcher,
            &[("will", q(QoS::AtMostOnce))],
            None,
            t0,
        );
        let mut c = connect_packet(Protocol::V311, "dev", true, Properties::default());
        c.will = Some(Will {
            topic: "will",
            payload: b"x",
            qos: QoS::AtMostOnce,
            retain: false,
            properties: Properties::default(),
        });
        let dev = connect_with(&mut core, &c, t0).0.unwrap();
        let mut fx = Effects::default();
        core.disconnected(&dev.id, dev.conn, End::Normal { will: false }, t0, &mut fx);
        assert!(received(&mut core, &mut watcher, t0).is_empty());
        assert!(!core.sessions.contains_key("dev"));
    }

    #[test]
    fn offline_message_expires_in_the_queue() {
        let t0 = Instant::now();
        let mut core = core();
        let mut sub = connect(&mut core, Protocol::V5, "sub", false, Some(300), t0);
        let mut publ = connect(&mut core, Protocol::V5, "pub", true, None, t0);
        subscribe(&mut core, &mut sub, &[("t", q(QoS::AtLeastOnce))], None, t0);
        let mut fx = Effects::default();
        core.disconnected(&sub.id, sub.conn, End::Normal { will: false }, t0, &mut fx);
        for (payload, expiry) in [(&b"short"[..], 1u32), (&b"long"[..], 100)] {
            let p = Packet::Publish(Publish {
                dup: false,
                qos: QoS::AtLeastOnce,
                retain: false,
                topic: "t",
                packet_id: 3,
                properties: Properties::Values(&PropValues {
                    message_expiry_interval: Some(expiry),
                    ..PropValues::default()
                }),
                payload,
            });
            send(&mut core, &mut publ, &p, t0).unwrap();
        }
        let later = t0 + Duration::from_secs(10);
        let (_, bytes) = connect_with(
            &mut core,
            &connect_packet(Protocol::V5, "sub", false, Properties::default()),
            later,
        );
        let mut got = Vec::new();
        each_packet(&bytes, Protocol::V5, |p| {
            if let Packet::Publish(p) = p {
                got.push((p.payload.to_vec(), p.properties.message_expiry_interval()));
            }
        });
        assert_eq!(
            got,
            [(b"long".to_vec(), Some(90))],
            "expired dropped, remaining interval forwarded"
        );
    }

    #[test]
    fn shared_group_gives_each_message_to_one_member_and_reroutes_on_leave() {
        let t0 = Instant::now();
        let mut core = core();
        let mut a = connect(&mut core, Protocol::V5, "a", false, Some(60), t0);
        let mut b = connect(&mut core, Protocol::V5, "b", true, None, t0);
        let mut publ = connect(&mut core, Protocol::V5, "pub", true, None, t0);
        for c in [&mut a, &mut b] {
            assert_eq!(
                subscribe(
                    &mut core,
                    c,
                    &[("$share/g/jobs", q(QoS::AtLeastOnce))],
                    None,
                    t0
                ),
                [1]
            );
        }
        for i in 0..10u16 {
            publish(
                &mut core,
                &mut publ,
                "jobs",
                &i.to_be_bytes(),
                QoS::AtLeastOnce,
                i + 1,
                t0,
            );
        }
        // a leaves before draining its queue: its queued jobs go to b.
        let mut fx = Effects::default();
        core.disconnected(&a.id, a.conn, End::Abnormal, t0, &mut fx);
        let got_b = received(&mut core, &mut b, t0);
        let mut payloads: Vec<Vec<u8>> = got_b.iter().map(|g| g.1.clone()).collect();
        payloads.sort();
        payloads.dedup();
        assert_eq!(payloads.len(), 10, "every job reached b exactly once");
        assert!(received(&mut core, &mut a, t0).is_empty());
    }

    #[test]
    fn takeover_kicks_the_old_connection() {
        let t0 = Instant::now();
        let mut core = core();
        let old = connect(&mut core, Protocol::V5, "x", false, Some(60), t0);
        let (new, bytes) = connect_with(
            &mut core,
            &connect_packet(
                Protocol::V5,
                "x",
                false,
                Properties::Values(&PropValues {
                    session_expiry_interval: Some(60),
                    ..PropValues::default()
                }),
            ),
            t0,
        );
        assert_eq!(old.kick.get(), reason::SESSION_TAKEN_OVER);
        assert_eq!(bytes[2], 1, "session present");
        let mut old = old;
        assert_eq!(
            send(&mut core, &mut old, &Packet::PingReq, t0),
            Err(Close::TakenOver)
        );
        let mut new = new.unwrap();
        assert_eq!(send(&mut core, &mut new, &Packet::PingReq, t0), Ok(()));
    }

    #[test]
    fn retained_messages_replace_delete_and_follow_retain_handling() {
        let t0 = Instant::now();
        let mut core = core();
        let mut publ = connect(&mut core, Protocol::V5, "pub", true, None, t0);
        let retained = |payload: &'static [u8]| {
            Packet::Publish(Publish {
                dup: false,
                qos: QoS::AtMostOnce,
                retain: true,
                topic: "r",
                packet_id: 0,
                properties: Properties::default(),
                payload,
            })
        };
        send(&mut core, &mut publ, &retained(b"one"), t0).unwrap();
        send(&mut core, &mut publ, &retained(b"two"), t0).unwrap();
        let mut sub = connect(&mut core, Protocol::V5, "sub", true, None, t0);
        subscribe(&mut core, &mut sub, &[("r", q(QoS::AtLeastOnce))], None, t0);
        let got = received(&mut core, &mut sub, t0);
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].1.as_slice(), got[0].5), (&b"two"[..], true));
        let mut opts = q(QoS::AtLeastOnce);
        opts.retain_handling = RetainHandling::SendIfNew;
        subscribe(&mut core, &mut sub, &[("r", opts)], None, t0);
        assert!(
            received(&mut core, &mut sub, t0).is_empty(),
            "existing subscription, handling 1"
        );
        send(&mut core, &mut publ, &retained(b""), t0).unwrap();
        assert_eq!(core.retained.len(), 0, "empty payload deletes");
        let got = received(&mut core, &mut sub, t0);
        assert_eq!(
            got.len(),
            1,
            "the delete is still delivered to current subscribers"
        );
        assert!(
            !got[0].5,
            "live forward without Retain As Published clears RETAIN"
        );
    }

    #[test]
    fn receive_maximum_exceeded_is_0x93() {
        let t0 = Instant::now();
        let cfg = MqttConfig {
            receive_maximum: 2,
            ..MqttConfig::default()
        };
        let mut core = Core::new(Arc::new(cfg));
        let mut c = connect(&mut core, Protocol::V5, "p", true, None, t0);
        let p = |id| {
            Packet::Publish(Publish {
                dup: false,
                qos: QoS::ExactlyOnce,
                retain: false,
                topic: "t",
                packet_id: id,
                properties: Properties::default(),
                payload: b"",
            })
        };
        assert!(send(&mut core, &mut c, &p(1), t0).is_ok());
        assert!(send(&mut core, &mut c, &p(2), t0).is_ok());
        assert_eq!(
            send(&mut core, &mut c, &p(3), t0),
            Err(Close::Error(reason::RECEIVE_MAXIMUM_EXCEEDED))
        );
    }

    #[test]
    fn denied_filter_gets_0x80_in_both_versions() {
        let t0 = Instant::now();
        let cfg = MqttConfig {
            deny_subscribe: vec!["test/nosubscribe".into(), "secret/#".into()],
            ..MqttConfig::default()
        };
        let mut core = Core::new(Arc::new(cfg));
        for protocol in [Protocol::V311, Protocol::V5] {
            let mut c = connect(&mut core, protocol, "c", true, None, t0);
            let codes = subscribe(
                &mut core,
                &mut c,
                &[
                    ("test/nosubscribe", q(QoS::AtLeastOnce)),
                    ("secret/a", q(QoS::AtMostOnce)),
                    ("ok", q(QoS::AtLeastOnce)),
                ],
                None,
                t0,
            );
            assert_eq!(codes, [0x80, 0x80, 0x01]);
        }
    }

    #[test]
    fn no_local_and_retain_as_published() {
        let t0 = Instant::now();
        let mut core = core();
        let mut c = connect(&mut core, Protocol::V5, "c", true, None, t0);
        let mut nl = q(QoS::AtMostOnce);
        nl.no_local = true;
        nl.retain_as_published = true;
        subscribe(&mut core, &mut c, &[("t", nl)], None, t0);
        publish(&mut core, &mut c, "t", b"mine", QoS::AtMostOnce, 0, t0);
        assert!(received(&mut core, &mut c, t0).is_empty());
        let mut other = connect(&mut core, Protocol::V5, "o", true, None, t0);
        let p = Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: true,
            topic: "t",
            packet_id: 0,
            properties: Properties::default(),
            payload: b"r",
        });
        send(&mut core, &mut other, &p, t0).unwrap();
        let got = received(&mut core, &mut c, t0);
        assert_eq!(got.len(), 1);
        assert!(got[0].5, "Retain As Published keeps RETAIN");
    }

    #[test]
    fn sys_counters_reach_sys_subscribers_but_not_hash() {
        let t0 = Instant::now();
        let mut core = core();
        let mut all = connect(&mut core, Protocol::V5, "all", true, None, t0);
        let mut sys = connect(&mut core, Protocol::V5, "sys", true, None, t0);
        subscribe(&mut core, &mut all, &[("#", q(QoS::AtMostOnce))], None, t0);
        subscribe(
            &mut core,
            &mut sys,
            &[("$SYS/broker/clients/+", q(QoS::AtMostOnce))],
            None,
            t0,
        );
        let mut fx = Effects::default();
        core.publish_sys(Duration::from_secs(3), t0, &mut fx);
        assert!(
            received(&mut core, &mut all, t0).is_empty(),
            "# never matches $SYS"
        );
        let got = received(&mut core, &mut sys, t0);
        let connected = got
            .iter()
            .find(|g| g.0 == "$SYS/broker/clients/connected")
            .unwrap();
        assert_eq!(connected.1, b"2");
        // Clients may not publish into $SYS.
        publish(
            &mut core,
            &mut all,
            "$SYS/broker/clients/connected",
            b"999",
            QoS::AtMostOnce,
            0,
            t0,
        );
        assert!(received(&mut core, &mut sys, t0).is_empty());
    }

    #[test]
    fn unknown_authentication_method_gets_connack_0x8c() {
        let mut core = core();
        let props = Properties::Values(&PropValues {
            authentication_method: Some("SCRAM-SHA-1"),
            ..PropValues::default()
        });
        let (c, bytes) = connect_with(
            &mut core,
            &connect_packet(Protocol::V5, "a", true, props),
            Instant::now(),
        );
        assert!(c.is_none());
        let (p, _) = mote_codec::decode(&bytes, Protocol::V5, u32::MAX)
            .unwrap()
            .unwrap();
        let Packet::ConnAck(a) = p else {
            panic!("not a CONNACK")
        };
        assert_eq!(
            (a.code, a.session_present),
            (reason::BAD_AUTHENTICATION_METHOD, false)
        );
        assert_eq!(core.sessions.len(), 0);
    }
}
