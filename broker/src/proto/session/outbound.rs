//! A session's outbound half: packet ids, the inflight window, draining the queue onto
//! the wire, acknowledgements, and encoding deliveries as PUBLISH (topic aliases,
//! remaining expiry, the client's Maximum Packet Size).

use super::*;
use crate::proto::message::push_user_property;
use mote_codec::PropList;

/// What sending a session's queue needs from the broker's settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SendSettings<'a> {
    /// Most outbound QoS 1/2 inflight (before the client's Receive Maximum).
    pub(crate) max_inflight: u16,
    /// Topic filters whose payloads are sensor events (for `$json/` subscriptions).
    pub(crate) event_topics: &'a [String],
}

impl Session {
    /// The next free outbound packet id, never 0, skipping ids still inflight.
    ///
    /// Ids are handed out in order, so while `ids_ordered` holds, an id outside the
    /// span from the oldest inflight id to the newest is free without searching the
    /// window (the search was a scan of up to `max_inflight` entries per PUBLISH).
    pub(super) fn alloc_packet_id(&mut self) -> u16 {
        loop {
            let id = self.next_packet_id;
            self.next_packet_id = self.next_packet_id.checked_add(1).unwrap_or(1);
            if !self.packet_id_in_use(id) {
                return id;
            }
        }
    }

    fn packet_id_in_use(&mut self, id: u16) -> bool {
        let (Some(first), Some(last)) = (self.inflight.front(), self.inflight.back()) else {
            self.ids_ordered = true;
            return false;
        };
        if self.ids_ordered {
            let (lo, hi) = (first.packet_id, last.packet_id);
            let within = if lo <= hi {
                lo <= id && id <= hi
            } else {
                id >= lo || id <= hi
            };
            if !within {
                return false;
            }
            // The ids came round to the window: what is handed out next may land
            // between older ones, so search until the window empties.
            self.ids_ordered = false;
        }
        self.inflight.iter().any(|i| i.packet_id == id)
    }

    /// Re-sends the inflight window after a reconnect: PUBLISH with DUP for those not yet
    /// acknowledged, PUBREL for those released, in their original order.
    pub(crate) fn resend_inflight(
        &mut self,
        out: &mut BytesMut,
        now: Instant,
        event_topics: &[String],
        ev: EventSink<'_>,
    ) {
        let Some(link) = self.link.as_mut() else {
            return;
        };
        let mut keep = VecDeque::with_capacity(self.inflight.len());
        for inf in std::mem::take(&mut self.inflight) {
            match inf.phase {
                Phase::Released => {
                    write_packet(out, link.protocol, &Packet::PubRel(Ack::new(inf.packet_id)));
                    keep.push_back(inf);
                }
                Phase::Published => {
                    // Onward delivery has begun, so even an expired message is re-sent
                    // with its packet id (MQTT-4.4.0-1; expiry only deletes copies whose
                    // delivery has not started, §3.3.2.3.3).
                    let view =
                        json_view(Rare::json_filters(&self.rare), &inf.delivery, event_topics);
                    let publish = (inf.packet_id, true, view.as_deref());
                    match encode_publish(link, &inf.delivery, publish, now, out) {
                        Ok(()) => keep.push_back(inf),
                        Err(()) => {
                            Rare::of(&mut self.rare).drops.too_large += 1;
                            finished(ev, &inf.delivery);
                        }
                    }
                }
            }
        }
        self.inflight = keep;
    }

    /// Moves queued deliveries onto the wire while the inflight window has room, stopping
    /// at the first one whose journal position `lsn` is not yet `durable`.
    pub(crate) fn drain(
        &mut self,
        out: &mut BytesMut,
        settings: SendSettings<'_>,
        now: Instant,
        clock: Clock,
        durable: u64,
        ev: EventSink<'_>,
    ) -> bool {
        let event_topics = settings.event_topics;
        let Some(link) = self.link.as_ref() else {
            return false;
        };
        let window = usize::from(link.client_receive_max.min(settings.max_inflight).max(1));
        loop {
            if self.queue.is_empty() {
                self.refill(clock);
            }
            let Some(front) = self.queue.front() else {
                break;
            };
            if out.len() >= OUTBOUND_BATCH {
                // The rest waits until this batch is written: the outbound buffer stays
                // bounded however many QoS 0 messages are queued; the caller wakes the
                // connection again.
                return true;
            }
            if front.lsn > durable
                || (front.qos != QoS::AtMostOnce && self.inflight.len() >= window)
            {
                break;
            }
            let Some(d) = self.pop_queue() else {
                break;
            };
            if d.msg.expired(now) {
                Rare::of(&mut self.rare).drops.expired += 1;
                finished(ev, &d);
                continue;
            }
            let packet_id = if d.qos == QoS::AtMostOnce {
                0
            } else {
                self.alloc_packet_id()
            };
            let Some(link) = self.link.as_mut() else {
                break;
            };
            // A work queue's redelivery is a new PUBLISH flagged DUP (the only hint a
            // 3.1.1 consumer gets that it may have seen it before).
            // DUP is 0 on every QoS 0 PUBLISH (MQTT-3.3.1-2).
            let dup = d.attempts > 0 && d.qos != QoS::AtMostOnce;
            let view = json_view(Rare::json_filters(&self.rare), &d, event_topics);
            match encode_publish(link, &d, (packet_id, dup, view.as_deref()), now, out) {
                Ok(()) if d.qos != QoS::AtMostOnce => {
                    // A queue's delivery is journaled as the queue's, not this session's.
                    if d.dseq != 0 && d.queue.is_none() {
                        ev(Event::Sent {
                            dseq: d.dseq,
                            packet_id,
                            qos: d.qos,
                        });
                    }
                    self.inflight.push_back(Inflight {
                        packet_id,
                        delivery: d,
                        phase: Phase::Published,
                        stale: false,
                    })
                }
                Ok(()) => finished(ev, &d),
                // Larger than the client accepts: dropped as if delivered (MQTT-3.1.2-25).
                Err(()) => {
                    Rare::of(&mut self.rare).drops.too_large += 1;
                    finished(ev, &d);
                }
            }
        }
        false
    }

    /// Handles PUBACK/PUBCOMP: the flow for `packet_id` is complete. Returns false if the
    /// id was not inflight in the expected phase.
    pub(crate) fn complete(
        &mut self,
        packet_id: u16,
        phase: Phase,
        qos: QoS,
        ev: EventSink<'_>,
    ) -> bool {
        match self
            .inflight
            .iter()
            .position(|i| i.packet_id == packet_id && i.phase == phase && i.delivery.qos == qos)
        {
            Some(pos) => {
                if let Some(i) = self.inflight.remove(pos) {
                    if i.stale {
                        // Its copy is back in its queue: this PUBACK only frees the
                        // packet id (and the consumer's place), acknowledging nothing.
                        if let Some(queue) = &i.delivery.queue {
                            ev(Event::QueueFreed {
                                queue: queue.clone(),
                            });
                        }
                    } else {
                        finished(ev, &i.delivery);
                    }
                }
                true
            }
            None => false,
        }
    }

    /// Handles PUBREC: the QoS 2 flow moves to `Released`. A PUBREC with an error reason
    /// ends the flow. Returns false if the id was unknown.
    pub(crate) fn received(&mut self, packet_id: u16, reason: u8, ev: EventSink<'_>) -> bool {
        let pos = self
            .inflight
            .iter()
            .position(|i| i.packet_id == packet_id && i.delivery.qos == QoS::ExactlyOnce);
        match pos {
            Some(pos) if reason >= 0x80 => {
                if let Some(i) = self.inflight.remove(pos) {
                    finished(ev, &i.delivery);
                }
                true
            }
            Some(pos) => {
                if let Some(i) = self.inflight.get_mut(pos) {
                    if i.phase != Phase::Released && i.delivery.dseq != 0 {
                        ev(Event::Released {
                            dseq: i.delivery.dseq,
                        });
                    }
                    i.phase = Phase::Released;
                }
                true
            }
            None => false,
        }
    }
}

/// Reports a stored delivery as finished.
fn finished(ev: EventSink<'_>, d: &Delivery) {
    if let Some(tag) = &d.stream {
        ev(Event::StreamDone(tag.clone()));
    } else if let Some(queue) = &d.queue {
        ev(Event::QueueDone {
            queue: queue.clone(),
            dseq: d.dseq,
            mid: d.msg.mid,
        });
    } else if d.dseq != 0 {
        ev(Event::Finished { dseq: d.dseq });
    }
}

/// Encodes `packet` for `protocol` into `out`.
pub(crate) fn write_packet(out: &mut BytesMut, protocol: Protocol, packet: &Packet<'_>) {
    // Encoding into a BytesMut can only fail for packets beyond MQTT's size limits, which
    // the broker never builds from decoded input.
    if let Err(e) = packet.encode_to(protocol, out) {
        tracing::error!(error = %e, "could not encode an outbound packet");
    }
}

/// The payload a delivery is sent with instead of its own: the JSON view of a sensor
/// event, for a session with a `$json/` subscription matching it (`None`: as published).
fn json_view(json_filters: &[Arc<str>], d: &Delivery, event_topics: &[String]) -> Option<Vec<u8>> {
    if json_filters.is_empty()
        || !json_filters
            .iter()
            .any(|f| mote_codec::topic::matches(f, &d.msg.topic))
    {
        return None;
    }
    crate::json::is_event(d.msg.content_type.as_deref(), &d.msg.topic, event_topics)
        .then(|| crate::json::event_view(&d.msg.payload))
}

/// Encodes one delivery as PUBLISH, applying topic aliases, the remaining message expiry,
/// and the client's Maximum Packet Size. `(packet id, DUP, JSON view)`: the JSON view,
/// when given, is sent as the payload, with content type `application/json`.
/// `Err(())` when it does not fit that limit.
fn encode_publish(
    link: &mut Link,
    d: &Delivery,
    (packet_id, dup, view): (u16, bool, Option<&[u8]>),
    now: Instant,
    out: &mut BytesMut,
) -> Result<(), ()> {
    let v5 = link.protocol.is_v5();
    // A work queue's job tells an MQTT 5 consumer how many times it was delivered,
    // this time included (docs/queues.md).
    let mut users = Vec::new();
    if v5 && d.queue.is_some() {
        users.extend_from_slice(&d.msg.user_properties);
        let count = (u64::from(d.attempts) + 1).to_string();
        push_user_property(&mut users, "mote-delivery-count", &count);
    }
    let mut props = if v5 {
        d.msg.properties(&d.sub_ids, now)
    } else {
        PropValues::default()
    };
    if !users.is_empty() {
        props.user_properties = PropList::Wire(&users);
    }
    if view.is_some() && v5 {
        props.content_type = Some("application/json");
        props.payload_format_indicator = Some(1);
    }
    let mut topic: &str = &d.msg.topic;
    let mut new_alias = None;
    if v5 && link.client_alias_max > 0 {
        if let Some(alias) = link.aliases.out(&d.msg.topic) {
            props.topic_alias = Some(alias);
            topic = "";
        } else if link.aliases.out_count() < usize::from(link.client_alias_max) {
            let alias = link.aliases.out_count() as u16 + 1;
            props.topic_alias = Some(alias);
            new_alias = Some(alias);
        }
    }
    let publish = Packet::Publish(Publish {
        dup,
        qos: d.qos,
        retain: d.retain,
        topic,
        packet_id,
        properties: Properties::from(&props),
        payload: view.unwrap_or(&d.msg.payload),
    });
    // Larger than the client accepts: the caller drops it as if delivered (MQTT-3.1.2-25).
    if publish.encoded_len(link.protocol) > link.client_max_packet as usize {
        return Err(());
    }
    if let Some(alias) = new_alias {
        link.aliases.set_out(d.msg.topic.clone(), alias);
    }
    write_packet(out, link.protocol, &publish);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inflight(packet_id: u16) -> Inflight {
        let publish = Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: "t",
            packet_id,
            properties: Properties::default(),
            payload: b"x",
        };
        let msg = Message::from_publish(1, &publish, Arc::from("t"), None, Instant::now());
        Inflight {
            packet_id,
            delivery: Delivery::kept(Arc::new(msg), 0),
            phase: Phase::Published,
            stale: false,
        }
    }

    fn session_with(ids: &[u16], next: u16) -> Session {
        let mut s = Session::new(Arc::from("c"), Arc::default());
        s.inflight.extend(ids.iter().map(|&id| inflight(id)));
        s.next_packet_id = next;
        s
    }

    /// Ids go out in order and skip 0; one still in flight is never handed out again,
    /// also once the ids came round to the window (an old PUBLISH unacknowledged while
    /// 65,535 others were sent and acknowledged), and after recovery put the window
    /// back in any order.
    #[test]
    fn a_packet_id_in_flight_is_never_handed_out_again() {
        let mut s = session_with(&[10, 11], 12);
        assert_eq!(s.alloc_packet_id(), 12);
        let mut s = session_with(&[65_534, 65_535], 65_535);
        assert_eq!(
            s.alloc_packet_id(),
            1,
            "65,535 is taken, and 0 is not an id"
        );
        // Came round: 5 and 7 are still in flight from the previous lap, 6 is free.
        let mut s = session_with(&[5, 7, 65_000], 5);
        assert_eq!(s.alloc_packet_id(), 6);
        s.inflight.push_back(inflight(6));
        assert_eq!(s.alloc_packet_id(), 8, "7 is still in flight");
        // Recovered in no particular order.
        let mut s = session_with(&[], 3);
        for id in [4, 3, 9] {
            s.restore_inflight(inflight(id));
        }
        assert_eq!(s.alloc_packet_id(), 5);
        // Empty again: back to the quick path.
        s.inflight.clear();
        assert_eq!(s.alloc_packet_id(), 6);
        assert!(s.ids_ordered);
    }
}
