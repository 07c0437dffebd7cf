//! The part of the core that splits by client (issue #15, `docs/architecture.md`, "Every
//! core", step 3): the sessions and their congestion, in [`Shards`] chosen by a hash of
//! the client id, and what one holder of the lock keeps between its calls ([`Holder`]:
//! the publisher it may pause, the messages it frees after letting go).
//!
//! Still under the core's one lock. Every use of a session goes through [`Shards`], which
//! picks its shard, so the shards can later each take a lock of their own; the model
//! checker (`fuzzing.rs`) runs the core with one shard and with four. What is here does
//! not reach the global rooms (routing, retained messages, work queues, streams, the
//! journal): a packet a session answers by itself ([`Shard::acknowledge`]) hands back
//! what the rest of the core has to do with it ([`Acked`]), which for plain MQTT
//! deliveries on the in-memory store is nothing.

use super::*;

/// One shard: the sessions whose client ids hash to it.
#[derive(Debug, Default)]
pub(super) struct Shard {
    /// The sessions by client id (work queues and the delayed store are sessions too).
    pub(super) sessions: FastMap<Arc<str>, Box<Session>>,
    /// Its online subscribers past their high-water mark (`proto/backpressure.rs`).
    pub(super) congested: FastMap<Arc<str>, backpressure::Congestion>,
}

/// What the holder of the core's lock keeps between its calls.
#[derive(Debug, Default)]
pub(super) struct Holder {
    /// The connection of the PUBLISH being routed, while it may be paused.
    pub(super) pausable: Option<Arc<dyn Wake>>,
    /// Until when the connection that made the current calls is to stop reading.
    pub(super) pause_until: Option<Instant>,
    /// Messages whose delivery ended in this hold of the lock, freed after it
    /// (`message::Spent`).
    pub(super) spent: message::Spent,
}

impl Holder {
    /// The messages whose delivery ended since the last call.
    pub(super) fn take_spent(&mut self) -> message::Spent {
        self.spent.take()
    }

    /// Frees the messages set aside since the last call.
    pub(super) fn free_spent(&mut self) {
        self.spent.clear();
    }
}

/// Most shards a core is split into.
pub(super) const MAX_SHARDS: usize = 256;

/// The shards, each session in the one its client id hashes to.
#[derive(Debug)]
pub(super) struct Shards {
    parts: Box<[Shard]>,
}

impl Default for Shards {
    fn default() -> Shards {
        Shards::new(1)
    }
}

impl Shards {
    /// `n` empty shards (at least 1, at most [`MAX_SHARDS`]).
    pub(super) fn new(n: usize) -> Shards {
        let n = n.clamp(1, MAX_SHARDS);
        Shards {
            parts: (0..n).map(|_| Shard::default()).collect(),
        }
    }

    /// How many shards there are.
    #[cfg(any(test, feature = "fuzzing"))]
    pub(super) fn count(&self) -> usize {
        self.parts.len()
    }

    /// The shard of `client`, from its length and last eight bytes: a few instructions,
    /// where hashing the whole id for every lookup cost fan-out to 16 subscribers a
    /// sixth of its throughput (`benches/ab.py`, 4 shards). Ids made to share a shard
    /// only crowd that shard: its map's own hasher is keyed.
    fn index(&self, client: &str) -> usize {
        let n = self.parts.len();
        if n == 1 {
            return 0;
        }
        let b = client.as_bytes();
        let mut tail = [0u8; 8];
        let k = b.len().min(8);
        tail[..k].copy_from_slice(&b[b.len() - k..]);
        let x = (u64::from_le_bytes(tail) ^ b.len() as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        ((x >> 32) % n as u64) as usize
    }

    /// The shard of `client`.
    pub(super) fn of(&self, client: &str) -> &Shard {
        &self.parts[self.index(client)]
    }

    /// The shard of `client`, to change.
    pub(super) fn of_mut(&mut self, client: &str) -> &mut Shard {
        let i = self.index(client);
        &mut self.parts[i]
    }

    /// The session of `client`.
    pub(super) fn get(&self, client: &str) -> Option<&Session> {
        self.of(client).sessions.get(client).map(|s| &**s)
    }

    /// The session of `client`, to change.
    pub(super) fn get_mut(&mut self, client: &str) -> Option<&mut Session> {
        self.of_mut(client)
            .sessions
            .get_mut(client)
            .map(|s| &mut **s)
    }

    /// Whether `client` has a session.
    pub(super) fn contains(&self, client: &str) -> bool {
        self.of(client).sessions.contains_key(client)
    }

    /// Keeps session `s` of `client`, returning the one it replaces.
    pub(super) fn insert(&mut self, client: Arc<str>, s: Box<Session>) -> Option<Box<Session>> {
        self.of_mut(&client).sessions.insert(client, s)
    }

    /// Takes the session of `client` away.
    pub(super) fn remove(&mut self, client: &str) -> Option<Box<Session>> {
        self.of_mut(client).sessions.remove(client)
    }

    /// The session of `client` if connection `conn_id` still owns it.
    pub(super) fn owned(&mut self, client: &str, conn_id: u64) -> Option<&mut Session> {
        owned(&mut self.of_mut(client).sessions, client, conn_id)
    }

    /// Every session, shard by shard.
    pub(super) fn iter(&self) -> impl Iterator<Item = (&Arc<str>, &Session)> + '_ {
        self.parts
            .iter()
            .flat_map(|p| p.sessions.iter().map(|(k, s)| (k, &**s)))
    }

    /// Every session, to change, shard by shard.
    pub(super) fn iter_mut(&mut self) -> impl Iterator<Item = (&Arc<str>, &mut Session)> + '_ {
        self.parts
            .iter_mut()
            .flat_map(|p| p.sessions.iter_mut().map(|(k, s)| (k, &mut **s)))
    }

    /// Every session, shard by shard.
    pub(super) fn values(&self) -> impl Iterator<Item = &Session> + '_ {
        self.iter().map(|(_, s)| s)
    }

    /// How many sessions there are.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.parts.iter().map(|p| p.sessions.len()).sum()
    }

    /// Whether there is no session.
    #[cfg(any(test, feature = "fuzzing"))]
    pub(super) fn is_empty(&self) -> bool {
        self.parts.iter().all(|p| p.sessions.is_empty())
    }

    /// Whether any online subscriber is past its high-water mark.
    #[cfg(test)]
    pub(super) fn any_congested(&self) -> bool {
        self.parts.iter().any(|p| !p.congested.is_empty())
    }
}

#[cfg(test)]
impl std::ops::Index<&str> for Shards {
    type Output = Session;

    /// The session of `client`; panics without one (for tests).
    fn index(&self, client: &str) -> &Session {
        match self.get(client) {
            Some(s) => s,
            None => panic!("no session {client}"),
        }
    }
}

/// What a packet a session answered by itself leaves for the rest of the core.
#[derive(Debug, Default)]
pub(super) struct Acked {
    /// What changed about its deliveries: for the journal, work queues and streams.
    pub(super) events: Vec<Event>,
    /// A work queue's job its v5 consumer refused, and the reason code it gave.
    pub(super) refused: Option<(Delivery, u8)>,
    /// The packet id of an inbound QoS 2 flow of a persisted session that ended (its
    /// end is journaled).
    pub(super) released: Option<u16>,
}

/// What a PUBLISH is checked against besides its publisher's session.
pub(super) struct Rules<'a> {
    pub(super) cfg: &'a MqttConfig,
    /// The queue limits of `[mqtt]` (a user's own may replace them).
    pub(super) limits: QueueLimits,
    /// The access rules in force.
    pub(super) acl: &'a acl::Acl,
    /// Now in Unix seconds, rounded up (for `$delayed/`).
    pub(super) now_secs: u64,
}

/// A PUBLISH its publisher's session let through ([`Shard::admit`]), for the global
/// rooms to route.
pub(super) struct Admitted {
    /// Its topic, an alias resolved.
    pub(super) topic: Arc<str>,
    /// Its reason code so far: success, or a refusal that is still acknowledged
    /// (payload format invalid at QoS 1/2, not authorized, a malformed `$delayed/`).
    pub(super) code: u8,
    /// `$delayed/SECONDS/TOPIC`: when (Unix seconds) and where to.
    pub(super) delay: Option<(u64, String)>,
    /// `$queue/$nack/...` and the like: a consumer's word about its jobs.
    pub(super) control: bool,
    /// The protocol of the publisher's connection.
    pub(super) protocol: Protocol,
    /// The access rules refused it (counted by the caller).
    pub(super) denied: bool,
    /// The publisher's connection, to pause if a subscriber it fills is congested
    /// (`proto/backpressure.rs`); `None` when backpressure is off or the publisher's own
    /// queue is congested (it must keep reading its acknowledgements).
    pub(super) pausable: Option<Arc<dyn Wake>>,
}

impl Shard {
    /// The session of `client` if connection `conn_id` still owns it.
    fn owned(&mut self, client: &str, conn_id: u64) -> Option<&mut Session> {
        owned(&mut self.sessions, client, conn_id)
    }

    /// Handles a PUBACK, PUBREC, PUBREL, PUBCOMP or PINGREQ of connection `conn_id` of
    /// `client`, writing its reply into `out`. `Ok(None)` for any other packet, which
    /// the rest of the core handles.
    ///
    /// # Errors
    /// [`Close::TakenOver`] when the connection no longer owns its session.
    pub(super) fn acknowledge(
        &mut self,
        client: &str,
        conn_id: u64,
        packet: &Packet<'_>,
        out: &mut BytesMut,
        spent: &mut message::Spent,
    ) -> Result<Option<Acked>, Close> {
        let s = owned(&mut self.sessions, client, conn_id).ok_or(Close::TakenOver)?;
        let protocol = s.link().map_or(Protocol::V311, |l| l.protocol);
        let v5 = protocol.is_v5();
        let mut acked = Acked::default();
        let ev = &mut |e| acked.events.push(e);
        match packet {
            // A v5 consumer refusing a work queue's job (docs/queues.md: nack).
            Packet::PubAck(a) if v5 && a.reason >= 0x80 && s.holds_queue_delivery(a.packet_id) => {
                acked.refused = s
                    .take_refused_queue_delivery(a.packet_id)
                    .map(|d| (d, a.reason));
            }
            Packet::PubAck(a) => {
                if !s.complete(a.packet_id, Phase::Published, QoS::AtLeastOnce, ev, spent) {
                    tracing::debug!(client, id = a.packet_id, "PUBACK for unknown packet id");
                }
            }
            Packet::PubRec(a) => {
                let known = s.received(a.packet_id, a.reason, ev);
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
                let known = s.release_inbound_qos2(a.packet_id);
                if !known && v5 {
                    comp.reason = reason::PACKET_IDENTIFIER_NOT_FOUND;
                }
                write_packet(out, protocol, &Packet::PubComp(comp));
                if known && s.persisted() {
                    acked.released = Some(a.packet_id);
                }
            }
            Packet::PubComp(a) => {
                if !s.complete(a.packet_id, Phase::Released, QoS::ExactlyOnce, ev, spent) {
                    tracing::debug!(client, id = a.packet_id, "PUBCOMP for unknown packet id");
                }
            }
            Packet::PingReq => write_packet(out, protocol, &Packet::PingResp),
            _ => return Ok(None),
        }
        Ok(Some(acked))
    }

    /// Checks a PUBLISH of connection `conn_id` of `client` against its session and
    /// `rules`: QoS and retain allowed, no subscription identifier, its topic alias
    /// (resolved or set; `named` is the topic as published), the topic's limits, the
    /// payload format, the QoS 2 window and the access rules. `Ok(None)` for a re-sent
    /// QoS 2 PUBLISH of a flow already held: acknowledged again into `out`, not to be
    /// delivered again.
    ///
    /// # Errors
    /// [`Close`] when the connection must end (with a reason for v5).
    pub(super) fn admit(
        &mut self,
        client: &str,
        conn_id: u64,
        p: &Publish<'_>,
        named: Arc<str>,
        rules: Rules<'_>,
        out: &mut BytesMut,
    ) -> Result<Option<Admitted>, Close> {
        let Rules {
            cfg,
            limits,
            acl,
            now_secs,
        } = rules;
        let s = self.owned(client, conn_id).ok_or(Close::TakenOver)?;
        let Some(link) = s.link_mut() else {
            return Err(Close::TakenOver);
        };
        let protocol = link.protocol;
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
            // 0 is never a valid alias (MQTT-3.3.2-8); the decoder refuses it too.
            Some(alias) if alias == 0 || alias > cfg.topic_alias_maximum => {
                return Err(Close::Error(reason::TOPIC_ALIAS_INVALID));
            }
            Some(alias) if p.topic.is_empty() => match link.aliases.inbound(alias) {
                Some(t) => t.clone(),
                None => return Err(Close::Error(reason::PROTOCOL_ERROR)),
            },
            Some(alias) => {
                link.aliases.set_inbound(alias, named.clone());
                named
            }
            None => named,
        };
        if topic.len() > cfg.max_topic_length || topic_levels(&topic) > cfg.max_topic_levels {
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
            if s.holds_inbound_qos2(p.packet_id) {
                // A re-sent PUBLISH of a flow we already hold: acknowledge, don't deliver again.
                write_packet(out, protocol, &Packet::PubRec(Ack::new(p.packet_id)));
                return Ok(None);
            }
            if s.inbound_qos2_count() >= usize::from(cfg.receive_maximum) {
                return Err(Close::Error(reason::RECEIVE_MAXIMUM_EXCEEDED));
            }
        }
        // `$queue/$nack/...`, `$queue/$touch/...`, `$queue/$credit/...`: a consumer's
        // word about its own jobs, not a message (`proto/queues.rs`).
        let control = topic.starts_with(queues::CONTROL_PREFIX);
        // `$delayed/SECONDS/TOPIC`: published to TOPIC later (`proto/delayed.rs`).
        let delay = match delayed::parse(&topic, now_secs) {
            None => None,
            Some(Ok(due)) => Some((due.at_secs, due.topic.to_owned())),
            Some(Err(())) => {
                code = reason::TOPIC_NAME_INVALID;
                None
            }
        };
        // The access rules (docs/security.md): a refused PUBLISH is not routed. MQTT 5
        // says why (0x87); 3.1.1 has no refusal and acknowledges it as usual. A delayed
        // publish is a write of its target.
        let grant = s.grant().map(|g| &**g);
        let mut denied = false;
        if acl.checks(grant) && code == reason::SUCCESS && !control {
            let who = acl::Who {
                user: s.user().map(|u| &**u),
                client,
                grant,
            };
            let written = delay.as_ref().map_or(&*topic, |(_, t)| t.as_str());
            if !acl.allows(who, acl::Access::Write, written) {
                tracing::debug!(client, topic = %topic, "publish refused by the access rules");
                denied = true;
                code = reason::NOT_AUTHORIZED;
            }
        }
        let pausable = if cfg.publisher_backpressure_ms == 0 || s.congested(&s.queue_limits(limits))
        {
            None
        } else {
            s.link().map(|l| l.notify.clone())
        };
        Ok(Some(Admitted {
            topic,
            code,
            delay,
            control,
            protocol,
            denied,
            pausable,
        }))
    }

    /// Acknowledges PUBLISH `p` (PUBACK at QoS 1, PUBREC at QoS 2; nothing at QoS 0)
    /// with `code` and, for v5 and when the client's Maximum Packet Size leaves room, a
    /// reason string. At QoS 2, the session holds the flow unless v5 was told of a
    /// refusal. True when a persisted session began holding one (the caller journals
    /// it).
    pub(super) fn answer(
        &mut self,
        client: &str,
        conn_id: u64,
        p: &Publish<'_>,
        protocol: Protocol,
        (code, reason_string): (u8, Option<&str>),
        out: &mut BytesMut,
    ) -> bool {
        let v5 = protocol.is_v5();
        let mut ack = Ack::new(p.packet_id);
        ack.reason = if v5 { code } else { 0 };
        // Made and looked up only where needed (not for a plain PUBACK: once per
        // message).
        let why;
        if v5 && reason_string.is_some() {
            why = PropValues {
                reason_string,
                ..PropValues::default()
            };
            // Left out rather than go beyond the client's Maximum Packet Size
            // (MQTT-3.4.2-2, MQTT-3.5.2-2).
            let with = Ack {
                properties: Properties::from(&why),
                ..ack
            };
            let max = self
                .owned(client, conn_id)
                .and_then(|s| s.link())
                .map_or(u32::MAX, |l| l.client_max_packet);
            if Packet::PubAck(with).encoded_len(protocol) <= max as usize {
                ack = with;
            }
        }
        let mut held = false;
        match p.qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => write_packet(out, protocol, &Packet::PubAck(ack)),
            QoS::ExactlyOnce => {
                // A 3.1.1 client was told nothing of a refusal: its flow goes on.
                if code < 0x80 || !v5 {
                    if let Some(s) = self.owned(client, conn_id) {
                        s.hold_inbound_qos2(p.packet_id);
                        held = s.persisted();
                    }
                }
                write_packet(out, protocol, &Packet::PubRec(ack));
            }
        }
        held
    }
}

/// The session of `client` in `sessions` if connection `conn_id` still owns it (a free
/// function so that a caller can borrow the shard's other fields beside it).
fn owned<'s>(
    sessions: &'s mut FastMap<Arc<str>, Box<Session>>,
    client: &str,
    conn_id: u64,
) -> Option<&'s mut Session> {
    sessions
        .get_mut(client)
        .map(|s| &mut **s)
        .filter(|s| s.owned_by(conn_id))
}
