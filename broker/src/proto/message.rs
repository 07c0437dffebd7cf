//! An application message as the broker keeps it: owned, immutable, shared by every
//! receiver through an `Arc`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mote_codec::{PropList, PropValues, Properties, Publish, QoS};

use crate::store::record::{StoredMessage, StoredRef};

/// One published message, after topic-alias resolution.
#[derive(Debug)]
pub(crate) struct Message {
    /// Identifier of the message in the store (unique per broker run and across
    /// recoveries).
    pub(crate) mid: u64,
    /// Topic name.
    pub(crate) topic: Arc<str>,
    /// Payload.
    pub(crate) payload: Bytes,
    /// QoS it was published with.
    pub(crate) qos: QoS,
    /// RETAIN flag as published.
    pub(crate) retain: bool,
    /// v5 Payload Format Indicator.
    pub(crate) payload_format_indicator: Option<u8>,
    /// v5 Content Type.
    pub(crate) content_type: Option<Arc<str>>,
    /// v5 Response Topic.
    pub(crate) response_topic: Option<Arc<str>>,
    /// v5 Correlation Data.
    pub(crate) correlation_data: Option<Bytes>,
    /// v5 User Properties, kept as their encoded property-block bytes (only 0x26
    /// entries) so every delivery re-emits them without allocating.
    pub(crate) user_properties: Bytes,
    /// When the v5 Message Expiry Interval runs out.
    pub(crate) expires_at: Option<Instant>,
    /// Client id of the publisher (for No Local); `None` for wills and `$SYS`.
    pub(crate) publisher: Option<Arc<str>>,
    /// The compaction epoch in which the store last got this message's record (0 =
    /// never): the log older than the current epoch goes away with the next snapshot,
    /// so a message referenced again in a newer epoch is written again.
    pub(crate) stored_epoch: AtomicU64,
}

impl Clone for Message {
    fn clone(&self) -> Message {
        Message {
            mid: self.mid,
            topic: self.topic.clone(),
            payload: self.payload.clone(),
            qos: self.qos,
            retain: self.retain,
            payload_format_indicator: self.payload_format_indicator,
            content_type: self.content_type.clone(),
            response_topic: self.response_topic.clone(),
            correlation_data: self.correlation_data.clone(),
            user_properties: self.user_properties.clone(),
            expires_at: self.expires_at,
            publisher: self.publisher.clone(),
            stored_epoch: AtomicU64::new(self.stored_epoch.load(Ordering::Relaxed)),
        }
    }
}

impl Message {
    /// Builds a message from a decoded PUBLISH whose topic is `topic` (alias resolved).
    pub(crate) fn from_publish(
        mid: u64,
        p: &Publish<'_>,
        topic: Arc<str>,
        publisher: Option<Arc<str>>,
        now: Instant,
    ) -> Message {
        // Most publishes (every 3.1.1 one) have no property to look for.
        let props = (!p.properties.is_empty()).then_some(&p.properties);
        Message {
            mid,
            topic,
            payload: Bytes::copy_from_slice(p.payload),
            qos: p.qos,
            retain: p.retain,
            payload_format_indicator: props.and_then(|p| p.payload_format_indicator()),
            content_type: props.and_then(|p| p.content_type()).map(Arc::from),
            response_topic: props.and_then(|p| p.response_topic()).map(Arc::from),
            correlation_data: props
                .and_then(|p| p.correlation_data())
                .map(Bytes::copy_from_slice),
            user_properties: props.map_or_else(Bytes::new, encode_user_properties),
            expires_at: props
                .and_then(|p| p.message_expiry_interval())
                .map(|s| now + Duration::from_secs(u64::from(s))),
            publisher,
            stored_epoch: AtomicU64::new(0),
        }
    }

    /// True when the message expired at `now`.
    pub(crate) fn expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|t| t <= now)
    }

    /// Seconds of expiry left at `now` (rounded up, at least 1 while not expired).
    pub(crate) fn remaining_expiry(&self, now: Instant) -> Option<u32> {
        self.expires_at.map(|t| {
            let left = t.saturating_duration_since(now);
            let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
            u32::try_from(secs.max(1)).unwrap_or(u32::MAX)
        })
    }

    /// Bytes one queued delivery of this message holds in memory: its own heap data
    /// (payload, topic, properties) plus the message and delivery structs and the
    /// allocator's overhead per allocation. Budgets are counted with this, so it errs on
    /// the high side rather than letting RSS outgrow a configured budget.
    pub(crate) fn cost(&self) -> usize {
        const FIXED: usize = std::mem::size_of::<Message>() + QUEUED_DELIVERY + 4 * ALLOC_OVERHEAD;
        let props = self.content_type.as_ref().map_or(0, |s| s.len())
            + self.response_topic.as_ref().map_or(0, |s| s.len())
            + self.correlation_data.as_ref().map_or(0, |b| b.len());
        self.payload.len() + self.topic.len() + self.user_properties.len() + props + FIXED
    }

    /// At least the encoded size of a PUBLISH of this message (`v5`: with its properties,
    /// `sub_ids` subscription identifiers and a topic alias), found without encoding it.
    pub(crate) fn publish_len_bound(&self, v5: bool, sub_ids: usize) -> usize {
        // Fixed header and remaining length (1 + 4), topic length, packet id.
        let mut n = 5 + 2 + self.topic.len() + 2 + self.payload.len();
        if v5 {
            // Property length, payload format (2), expiry (5), the three strings and
            // binary (3 + their length), user properties as kept, each subscription id
            // (1 + a varint of at most 4), a topic alias (3).
            n += 4 + 2 + 5 + 9 + 3;
            n += self.content_type.as_ref().map_or(0, |s| s.len())
                + self.response_topic.as_ref().map_or(0, |s| s.len())
                + self.correlation_data.as_ref().map_or(0, |b| b.len())
                + self.user_properties.len()
                + 5 * sub_ids;
        }
        n
    }

    /// Whether a PUBLISH of this message has no v5 properties of its own (none of the
    /// values [`Message::properties`] carries).
    pub(crate) fn has_no_properties(&self) -> bool {
        self.payload_format_indicator.is_none()
            && self.content_type.is_none()
            && self.response_topic.is_none()
            && self.correlation_data.is_none()
            && self.user_properties.is_empty()
            && self.expires_at.is_none()
    }

    /// The v5 properties of a delivery of this message at `now`.
    pub(crate) fn properties<'a>(&'a self, sub_ids: &'a [u32], now: Instant) -> PropValues<'a> {
        PropValues {
            payload_format_indicator: self.payload_format_indicator,
            message_expiry_interval: self.remaining_expiry(now),
            content_type: self.content_type.as_deref(),
            response_topic: self.response_topic.as_deref(),
            correlation_data: self.correlation_data.as_deref(),
            user_properties: if self.user_properties.is_empty() {
                PropList::default()
            } else {
                PropList::Wire(&self.user_properties)
            },
            subscription_identifiers: PropList::Slice(sub_ids),
            ..PropValues::default()
        }
    }
}

/// Bytes a delivery takes in a session's queue besides the message it points to.
pub(crate) const QUEUED_DELIVERY: usize = 120;
/// Bookkeeping malloc keeps per allocation (header and rounding), roughly.
const ALLOC_OVERHEAD: usize = 16;

/// `at` as Unix milliseconds, given that `now` is `now_ms`.
pub(crate) fn instant_to_unix_ms(at: Instant, now: Instant, now_ms: u64) -> u64 {
    if at >= now {
        now_ms.saturating_add(u64::try_from((at - now).as_millis()).unwrap_or(u64::MAX))
    } else {
        now_ms.saturating_sub(u64::try_from((now - at).as_millis()).unwrap_or(u64::MAX))
    }
}

/// Unix milliseconds `ms` as an `Instant`, given that `now` is `now_ms`.
pub(crate) fn unix_ms_to_instant(ms: u64, now: Instant, now_ms: u64) -> Instant {
    if ms >= now_ms {
        now + Duration::from_millis(ms - now_ms)
    } else {
        now.checked_sub(Duration::from_millis(now_ms - ms))
            .unwrap_or(now)
    }
}

impl Message {
    /// The user properties, decoded.
    pub(crate) fn user_property_pairs(&self) -> Vec<(String, String)> {
        Properties::Wire(&self.user_properties)
            .user_properties()
            .iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    /// The stored form, borrowed; `will_expiry` is the will's own expiry interval, if
    /// this is one.
    pub(crate) fn as_stored(
        &self,
        will_expiry: Option<u32>,
        now: Instant,
        now_ms: u64,
    ) -> StoredRef<'_> {
        StoredRef {
            topic: &self.topic,
            payload: &self.payload,
            qos: self.qos as u8,
            retain: self.retain,
            payload_format_indicator: self.payload_format_indicator.unwrap_or(u8::MAX),
            content_type: self.content_type.as_deref(),
            response_topic: self.response_topic.as_deref(),
            correlation_data: self.correlation_data.as_deref(),
            user_properties: &self.user_properties,
            expires_at_ms: self
                .expires_at
                .map_or(0, |t| instant_to_unix_ms(t, now, now_ms).max(1)),
            will_expiry: will_expiry.unwrap_or(u32::MAX),
            publisher: self.publisher.as_deref(),
        }
    }

    /// Rebuilds a message from its stored form; also returns the will expiry.
    pub(crate) fn from_stored(
        mid: u64,
        m: StoredMessage,
        now: Instant,
        now_ms: u64,
    ) -> (Message, Option<u32>) {
        let msg = Message {
            mid,
            topic: Arc::from(m.topic),
            payload: m.payload,
            qos: QoS::from_u8(m.qos).unwrap_or(QoS::AtLeastOnce),
            retain: m.retain,
            payload_format_indicator: (m.payload_format_indicator != u8::MAX)
                .then_some(m.payload_format_indicator),
            content_type: m.content_type.map(Arc::from),
            response_topic: m.response_topic.map(Arc::from),
            correlation_data: m.correlation_data,
            user_properties: m.user_properties,
            expires_at: (m.expires_at_ms != 0)
                .then(|| unix_ms_to_instant(m.expires_at_ms, now, now_ms)),
            publisher: m.publisher.map(Arc::from),
            stored_epoch: AtomicU64::new(0),
        };
        (msg, (m.will_expiry != u32::MAX).then_some(m.will_expiry))
    }
}

/// Encodes the user properties of `props` as a bare run of 0x26 properties.
pub(crate) fn encode_user_properties(props: &Properties<'_>) -> Bytes {
    let users = props.user_properties();
    if users.is_empty() {
        return Bytes::new();
    }
    let mut out = Vec::new();
    for (k, v) in users.iter() {
        push_user_property(&mut out, k, v);
    }
    Bytes::from(out)
}

/// Appends one user property (0x26, key, value) to a bare run of properties. The strings
/// are short (bounded by the decoder, or the broker's own).
pub(crate) fn push_user_property(out: &mut Vec<u8>, key: &str, value: &str) {
    out.push(mote_codec::properties::id::USER_PROPERTY);
    for s in [key, value] {
        let len = u16::try_from(s.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&s.as_bytes()[..usize::from(len)]);
    }
}

/// Messages whose last delivery ended under the core's lock (a PUBACK or PUBCOMP, an
/// expired or too large delivery), set aside to be freed by the lock's holder after it
/// lets go (`Shared::apply_held`). Freeing a message (its topic, payload and properties:
/// three to five calls into the allocator, and a free of memory another thread
/// allocated takes that arena's lock) was a tenth of QoS 0 fan-in's work under the lock,
/// the part of the broker that cannot run in parallel. (A QoS 0 delivery that goes out
/// now leaves the lock in the connection's outbox, freed when it is written.)
///
/// At most [`Spent::MOST`] are set aside; what comes after is freed in place. A holder
/// that does not take them frees them when it lets go ([`Spent::clear`] from the lock
/// guard), so none outlives the hold that set it aside.
#[derive(Debug, Default)]
pub(crate) struct Spent(Vec<Arc<Message>>);

impl Spent {
    /// Most messages set aside in one hold of the lock.
    const MOST: usize = 4096;

    /// Sets `msg` aside (or drops it here when enough are).
    pub(crate) fn put(&mut self, msg: Arc<Message>) {
        if self.0.len() < Self::MOST {
            if self.0.capacity() == 0 {
                self.0.reserve(64);
            }
            self.0.push(msg);
        }
    }

    /// What was set aside, to be dropped after the lock is released.
    pub(crate) fn take(&mut self) -> Spent {
        Spent(std::mem::take(&mut self.0))
    }

    /// Frees what was set aside now.
    pub(crate) fn clear(&mut self) {
        self.0.clear();
    }

    /// The topics of what was set aside, in order.
    #[cfg(test)]
    pub(crate) fn topics(&self) -> Vec<&str> {
        self.0.iter().map(|m| &*m.topic).collect()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn delivery_cost_covers_the_delivery_struct() {
        assert!(std::mem::size_of::<crate::proto::session::Delivery>() <= super::QUEUED_DELIVERY);
    }

    /// Set aside up to `MOST`, the rest freed in place; taken, they are freed with what
    /// took them, and cleared, at once.
    #[test]
    fn spent_messages_are_set_aside_up_to_a_bound_and_freed_with_their_taker() {
        use super::{Message, Spent};
        use std::sync::{Arc, Weak};
        let publish = mote_codec::Publish {
            dup: false,
            qos: mote_codec::QoS::AtMostOnce,
            retain: false,
            topic: "t",
            packet_id: 0,
            properties: mote_codec::Properties::default(),
            payload: b"x",
        };
        let now = std::time::Instant::now();
        let message = |mid: u64| {
            Arc::new(Message::from_publish(
                mid,
                &publish,
                Arc::from("t"),
                None,
                now,
            ))
        };
        let mut spent = Spent::default();
        let weak: Vec<Weak<Message>> = (0..Spent::MOST as u64 + 10)
            .map(|mid| {
                let msg = message(mid);
                let w = Arc::downgrade(&msg);
                spent.put(msg);
                w
            })
            .collect();
        let alive = |w: &[Weak<Message>]| w.iter().filter(|w| w.strong_count() > 0).count();
        assert_eq!(
            alive(&weak),
            Spent::MOST,
            "beyond the bound: freed in place"
        );
        let taken = spent.take();
        assert_eq!(alive(&weak), Spent::MOST, "taken, not freed");
        drop(taken);
        assert_eq!(alive(&weak), 0);
        let msg = message(1);
        let w = Arc::downgrade(&msg);
        spent.put(msg);
        spent.clear();
        assert_eq!(w.strong_count(), 0, "cleared: freed");
    }
}
