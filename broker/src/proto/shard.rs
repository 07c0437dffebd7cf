//! The part of the core that splits by client (issue #15, `docs/architecture.md`, "Every
//! core", step 2): the sessions, their congestion, and what one holder of the lock keeps
//! between its calls (the publisher it may pause, the messages it frees after letting go).
//!
//! Still under the core's one lock and one of it; a lock per shard is the next step. What
//! is here does not reach the global rooms (routing, retained messages, work queues,
//! streams, the journal): a packet a session answers by itself
//! ([`Shard::acknowledge`]) hands back what the rest of the core has to do with it
//! ([`Acked`]), which for plain MQTT deliveries on the in-memory store is nothing.

use super::*;

/// The sessions and the per-holder state of the lock (see the module's doc).
#[derive(Debug, Default)]
pub(super) struct Shard {
    /// The sessions by client id (work queues and the delayed store are sessions too).
    pub(super) sessions: FastMap<Arc<str>, Box<Session>>,
    /// Online subscribers past their high-water mark (`proto/backpressure.rs`).
    pub(super) congested: FastMap<Arc<str>, backpressure::Congestion>,
    /// The connection of the PUBLISH being routed, while it may be paused.
    pub(super) pausable: Option<Arc<dyn Wake>>,
    /// Until when the connection that made the current calls is to stop reading.
    pub(super) pause_until: Option<Instant>,
    /// Messages whose delivery ended in this hold of the lock, freed after it
    /// (`message::Spent`).
    pub(super) spent: message::Spent,
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

impl Shard {
    /// The session of `client` if connection `conn_id` still owns it.
    pub(super) fn owned(&mut self, client: &str, conn_id: u64) -> Option<&mut Session> {
        self.sessions
            .get_mut(client)
            .map(|s| &mut **s)
            .filter(|s| s.owned_by(conn_id))
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
    ) -> Result<Option<Acked>, Close> {
        let Shard {
            sessions, spent, ..
        } = self;
        let s = sessions
            .get_mut(client)
            .map(|s| &mut **s)
            .filter(|s| s.owned_by(conn_id))
            .ok_or(Close::TakenOver)?;
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

    /// The messages whose delivery ended since the last call.
    pub(super) fn take_spent(&mut self) -> message::Spent {
        self.spent.take()
    }

    /// Frees the messages set aside since the last call.
    pub(super) fn free_spent(&mut self) {
        self.spent.clear();
    }
}
