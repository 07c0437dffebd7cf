//! A session's outbound half: packet ids, the inflight window, draining the queue onto
//! the wire, acknowledgements, and encoding deliveries as PUBLISH (topic aliases,
//! remaining expiry, the client's Maximum Packet Size).

use super::outbuf::{OutBuf, SPLICE_MIN};
use super::*;
use crate::proto::message::{push_user_property, Spent};
use bytes::{BufMut, Bytes};
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
    /// at the first one whose journal position `lsn` is not yet `durable`. Messages whose
    /// delivery ended here (QoS 0 sent, expired, too large) go to `spent`.
    ///
    /// With an `outbox`, the PUBLISH packets are decided here (packet id, topic alias,
    /// size) but encoded by the caller after it lets go of the core's lock
    /// ([`Outbox::write`]); without one they are encoded into `out` now.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn drain(
        &mut self,
        out: &mut BytesMut,
        mut outbox: Option<&mut Outbox>,
        settings: SendSettings<'_>,
        now: Instant,
        clock: Clock,
        durable: u64,
        ev: EventSink<'_>,
        spent: &mut Spent,
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
            let full = match outbox.as_deref() {
                Some(ob) => ob.is_full(out.len()),
                None => out.len() >= OUTBOUND_BATCH,
            };
            if full {
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
                spent.put(d.msg);
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
            // A plain copy of the message (not a `$json/` view, not a work queue's job
            // with its delivery count) is encoded after the lock; the others now, after
            // what was staged before them.
            let plain = view.is_none() && !(link.protocol.is_v5() && d.queue.is_some());
            if let (Some(ob), true, QoS::AtMostOnce) = (outbox.as_deref_mut(), plain, d.qos) {
                // Done with here, sent or too large: the outbox takes the message over
                // (no second reference to count up and down).
                finished(ev, &d);
                let Delivery {
                    msg,
                    sub_ids,
                    retain,
                    ..
                } = d;
                let publish = (QoS::AtMostOnce, retain, false, 0);
                if let Err(msg) = ob.stage(link, msg, sub_ids, publish, now) {
                    Rare::of(&mut self.rare).drops.too_large += 1;
                    spent.put(msg);
                }
                continue;
            }
            let sent = match outbox.as_deref_mut() {
                Some(ob) if plain => {
                    let publish = (d.qos, d.retain, dup, packet_id);
                    ob.stage(link, d.msg.clone(), d.sub_ids.clone(), publish, now)
                        .map_err(drop)
                }
                Some(ob) => {
                    ob.write_flat(out);
                    encode_publish(link, &d, (packet_id, dup, view.as_deref()), now, out)
                }
                None => encode_publish(link, &d, (packet_id, dup, view.as_deref()), now, out),
            };
            match sent {
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
                Ok(()) => {
                    finished(ev, &d);
                    spent.put(d.msg);
                }
                // Larger than the client accepts: dropped as if delivered (MQTT-3.1.2-25).
                Err(()) => {
                    Rare::of(&mut self.rare).drops.too_large += 1;
                    finished(ev, &d);
                    spent.put(d.msg);
                }
            }
        }
        false
    }

    /// Handles PUBACK/PUBCOMP: the flow for `packet_id` is complete (its message goes to
    /// `spent`). Returns false if the id was not inflight in the expected phase.
    pub(crate) fn complete(
        &mut self,
        packet_id: u16,
        phase: Phase,
        qos: QoS,
        ev: EventSink<'_>,
        spent: &mut Spent,
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
                    spent.put(i.delivery.msg);
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
    let (alias, new_alias) = choose_alias(link, &d.msg.topic);
    props.topic_alias = alias.map(|(a, _)| a);
    let topic: &str = if alias.is_some_and(|(_, known)| known) {
        ""
    } else {
        &d.msg.topic
    };
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

/// The outbound topic alias for `topic` on `link`: `(alias, already known to the
/// client)`, and the alias to remember if this PUBLISH goes out (a new one).
fn choose_alias(link: &Link, topic: &str) -> (Option<(u16, bool)>, Option<u16>) {
    if !link.protocol.is_v5() || link.client_alias_max == 0 {
        return (None, None);
    }
    if let Some(alias) = link.aliases.out(topic) {
        (Some((alias, true)), None)
    } else if link.aliases.out_count() < usize::from(link.client_alias_max) {
        let alias = link.aliases.out_count() as u16 + 1;
        (Some((alias, false)), Some(alias))
    } else {
        (None, None)
    }
}

/// One PUBLISH decided under the core's lock, to be encoded after it ([`Outbox`]).
#[derive(Debug)]
struct Pending {
    msg: Arc<Message>,
    sub_ids: Vec<u32>,
    qos: QoS,
    retain: bool,
    dup: bool,
    packet_id: u16,
    /// The topic alias, and whether the client knows it already (the topic is left out).
    alias: Option<(u16, bool)>,
}

impl Pending {
    /// Calls `f` with this delivery's PUBLISH for `protocol`, as of `now` (the remaining
    /// message expiry).
    fn with_packet<R>(
        &self,
        protocol: Protocol,
        now: Instant,
        f: impl FnOnce(&Packet<'_>) -> R,
    ) -> R {
        self.with_packet_of(protocol, now, &self.msg.payload, f)
    }

    /// [`Pending::with_packet`] with `payload` in place of the message's.
    fn with_packet_of<R>(
        &self,
        protocol: Protocol,
        now: Instant,
        payload: &[u8],
        f: impl FnOnce(&Packet<'_>) -> R,
    ) -> R {
        let mut props = if protocol.is_v5() {
            self.msg.properties(&self.sub_ids, now)
        } else {
            PropValues::default()
        };
        props.topic_alias = self.alias.map(|(a, _)| a);
        let known = self.alias.is_some_and(|(_, known)| known);
        f(&Packet::Publish(Publish {
            dup: self.dup,
            qos: self.qos,
            retain: self.retain,
            topic: if known { "" } else { &self.msg.topic },
            packet_id: self.packet_id,
            properties: Properties::from(&props),
            payload,
        }))
    }

    /// Writes this delivery's PUBLISH for `protocol` into `out`: one without properties
    /// (every 3.1.1 one) directly, the others through the codec (which builds the
    /// property values and measures the packet twice; on 1 → 16 fan-out that was 7 %
    /// more CPU).
    ///
    /// A payload of at least `SPLICE_MIN` bytes is spliced into an [`OutBuf`] rather
    /// than copied (`proto/session/outbuf.rs`): the packet's other bytes are written
    /// as they would be, with a remaining length that counts the payload.
    fn write_to<D: Dest>(&self, protocol: Protocol, now: Instant, out: &mut D) {
        let v5 = protocol.is_v5();
        let bare = !v5
            || (self.alias.is_none() && self.sub_ids.is_empty() && self.msg.has_no_properties());
        let (topic, payload) = (self.msg.topic.as_bytes(), &self.msg.payload);
        let id_len = if self.qos == QoS::AtMostOnce { 0 } else { 2 };
        let remaining = 2 + topic.len() + id_len + usize::from(v5) + payload.len();
        let (Ok(topic_len), Some((len_bytes, n)), true) = (
            u16::try_from(topic.len()),
            mote_codec::var_int_bytes(remaining),
            bare,
        ) else {
            return self.write_encoded(protocol, now, out);
        };
        let qos = match self.qos {
            QoS::AtMostOnce => 0,
            QoS::AtLeastOnce => 1,
            QoS::ExactlyOnce => 2,
        };
        let spliced = out.splices(payload);
        let bytes = out.bytes();
        bytes.reserve(1 + n + remaining - if spliced { payload.len() } else { 0 });
        bytes.put_u8(0x30 | u8::from(self.dup) << 3 | qos << 1 | u8::from(self.retain));
        bytes.put_slice(&len_bytes[..n]);
        bytes.put_u16(topic_len);
        bytes.put_slice(topic);
        if id_len > 0 {
            bytes.put_u16(self.packet_id);
        }
        if v5 {
            // An empty property block.
            bytes.put_u8(0);
        }
        out.payload(payload, spliced);
    }

    /// [`Pending::write_to`] through the codec: a v5 PUBLISH with properties, or one
    /// too long for the direct path (the size check under the lock refused those).
    /// A large payload is spliced: the packet is encoded without it and its
    /// remaining length made whole.
    fn write_encoded<D: Dest>(&self, protocol: Protocol, now: Instant, out: &mut D) {
        let payload = &self.msg.payload;
        if !out.splices(payload) {
            let bytes = out.bytes();
            return self.with_packet(protocol, now, |p| write_packet(bytes, protocol, p));
        }
        let mut head = BytesMut::new();
        self.with_packet_of(protocol, now, &[], |p| {
            write_packet(&mut head, protocol, p);
        });
        let header = mote_codec::check(&head, u32::MAX).ok().flatten();
        let whole = header.and_then(|h| {
            let rest = h.frame_len() - h.header_len;
            mote_codec::var_int_bytes(rest + payload.len()).map(|len| (h.header_len, len))
        });
        let (Some(&first), Some((header_len, (len_bytes, n)))) = (head.first(), whole) else {
            // Not a packet the codec wrote: as it would be written whole.
            let bytes = out.bytes();
            return self.with_packet(protocol, now, |p| write_packet(bytes, protocol, p));
        };
        let bytes = out.bytes();
        bytes.put_u8(first);
        bytes.put_slice(&len_bytes[..n]);
        bytes.put_slice(&head[header_len..]);
        out.payload(payload, true);
    }
}

/// Where [`Pending::write_to`] writes: a plain buffer (every payload copied), or a
/// connection's [`OutBuf`] (large payloads spliced). A trait, not an enum: each
/// caller's loop is compiled for its own kind (the plain one is the code before
/// splicing).
trait Dest {
    /// Where the packet's own bytes go.
    fn bytes(&mut self) -> &mut BytesMut;

    /// Whether `payload` would be spliced rather than copied.
    fn splices(&self, payload: &Bytes) -> bool;

    /// Appends `payload`: spliced (as [`Dest::splices`] said) or copied.
    fn payload(&mut self, payload: &Bytes, spliced: bool);
}

impl Dest for BytesMut {
    fn bytes(&mut self) -> &mut BytesMut {
        self
    }

    fn splices(&self, _: &Bytes) -> bool {
        false
    }

    fn payload(&mut self, payload: &Bytes, _: bool) {
        self.put_slice(payload);
    }
}

impl Dest for OutBuf {
    fn bytes(&mut self) -> &mut BytesMut {
        &mut self.bytes
    }

    fn splices(&self, payload: &Bytes) -> bool {
        payload.len() >= SPLICE_MIN
    }

    fn payload(&mut self, payload: &Bytes, spliced: bool) {
        if spliced {
            self.splice(payload.clone());
        } else {
            self.bytes.put_slice(payload);
        }
    }
}

// What `Outbox::MOST` promises.
const _: () = assert!(std::mem::size_of::<Pending>() <= 48);

/// PUBLISH packets a session's drain decided under the core's lock, for the connection
/// to encode after letting go of it: encoding (the payload copied into the outbound
/// buffer) and dropping each message's last reference were a fifth of fan-out's work
/// under the lock, the part that cannot run in parallel (issue #15).
///
/// The packets are decided in order under the lock (packet ids, topic aliases, the
/// client's Maximum Packet Size), so the bytes are those the drain would have written.
/// A drain stages only after everything else written in the same hold: the connection
/// writes the outbox right after the lock, before anything later.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    pending: Vec<Pending>,
    /// The encoded size of `pending` (at most; `Message::publish_len_bound`).
    bytes: usize,
    /// The connection's protocol and the drain's clock, for the encoding.
    protocol: Option<Protocol>,
    now: Option<Instant>,
}

impl Outbox {
    /// Most packets staged at once: a drain stops there as at `OUTBOUND_BATCH` bytes,
    /// so an outbox holds at most 4,096 × 48 bytes.
    const MOST: usize = 4096;
    /// Capacity kept after a small batch; a larger one (a burst's) is given back then.
    const KEEP: usize = 256;

    /// Stages a PUBLISH of `msg` (as encode_publish would write it). `Err` gives `msg`
    /// back when it exceeds the client's Maximum Packet Size, as there.
    fn stage(
        &mut self,
        link: &mut Link,
        msg: Arc<Message>,
        sub_ids: Vec<u32>,
        (qos, retain, dup, packet_id): (QoS, bool, bool, u16),
        now: Instant,
    ) -> Result<(), Arc<Message>> {
        // Encoded only if it may not fit: its bound stands in for its size.
        let max = link.client_max_packet as usize;
        let bound = msg.publish_len_bound(link.protocol.is_v5(), sub_ids.len());
        let (alias, new_alias) = choose_alias(link, &msg.topic);
        let p = Pending {
            msg,
            sub_ids,
            qos,
            retain,
            dup,
            packet_id,
            alias,
        };
        let exact = || p.with_packet(link.protocol, now, |p| p.encoded_len(link.protocol));
        debug_assert!(exact() <= bound, "a PUBLISH longer than its bound");
        let len = if bound <= max { bound } else { exact() };
        if len > max {
            return Err(p.msg);
        }
        if let Some(alias) = new_alias {
            link.aliases.set_out(p.msg.topic.clone(), alias);
        }
        self.protocol = Some(link.protocol);
        self.now = Some(now);
        self.bytes += len;
        self.pending.push(p);
        Ok(())
    }

    /// Whether a drain that wrote `written` bytes at once stops here (`OUTBOUND_BATCH`
    /// bytes, or `MOST` packets, staged and written together).
    fn is_full(&self, written: usize) -> bool {
        written + self.bytes >= OUTBOUND_BATCH || self.pending.len() >= Self::MOST
    }

    /// Whether nothing is staged.
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Encodes what was staged into `out`, in order, and empties the outbox; large
    /// payloads are spliced, not copied (`proto/session/outbuf.rs`).
    pub(crate) fn write(&mut self, out: &mut OutBuf) {
        self.write_into(out);
    }

    /// [`Outbox::write`] into a plain buffer (every payload copied): under the lock,
    /// before a delivery encoded at once.
    fn write_flat(&mut self, out: &mut BytesMut) {
        self.write_into(out);
    }

    /// Writes the staged packets into `out`, with room reserved first for all but the
    /// payloads it splices (counted here, after the lock, not as each is staged).
    fn write_into<D: Dest>(&mut self, out: &mut D) {
        let staged = self.pending.len();
        if let (Some(protocol), Some(now)) = (self.protocol, self.now) {
            let spliced: usize = (self.pending.iter())
                .filter(|p| out.splices(&p.msg.payload))
                .map(|p| p.msg.payload.len())
                .sum();
            out.bytes().reserve(self.bytes - spliced);
            for p in self.pending.drain(..) {
                p.write_to(protocol, now, out);
            }
        }
        self.pending.clear();
        // Through a burst the room stays (growing it anew for every batch copied it
        // over and over); the first small batch after it gives it back.
        if staged < Self::KEEP && self.pending.capacity() > Self::KEEP {
            self.pending = Vec::new();
        }
        self.bytes = 0;
    }
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
