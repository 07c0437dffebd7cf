//! The records of the on-disk store and their binary form.
//!
//! Every change to durable state is one record; replaying them in order rebuilds the
//! state (see `recover`). Only persistent sessions (Session Expiry above 0) and retained
//! messages are written: a clean session dies with its connection, so there is nothing
//! of it to keep across a crash.
//!
//! Layout: a kind byte, then the fields in order; strings and byte strings carry a
//! `u32` little-endian length; integers are little-endian. Decoding checks every bound
//! and fails with `None` on any inconsistency (the log's checksum already caught
//! torn or flipped bytes, so this only guards against a format mismatch).

use bytes::Bytes;

/// A message as stored (shared by deliveries, retained entries and wills).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredMessage {
    /// Topic name.
    pub(crate) topic: String,
    /// Payload.
    pub(crate) payload: Bytes,
    /// QoS as published.
    pub(crate) qos: u8,
    /// RETAIN as published.
    pub(crate) retain: bool,
    /// Payload Format Indicator (255 = absent).
    pub(crate) payload_format_indicator: u8,
    /// Content Type.
    pub(crate) content_type: Option<String>,
    /// Response Topic.
    pub(crate) response_topic: Option<String>,
    /// Correlation Data.
    pub(crate) correlation_data: Option<Bytes>,
    /// User properties as encoded property bytes.
    pub(crate) user_properties: Bytes,
    /// Expiry as Unix milliseconds (0 = never).
    pub(crate) expires_at_ms: u64,
    /// Message expiry interval of a will, counted from its publication (u32::MAX = none).
    pub(crate) will_expiry: u32,
    /// Publisher's client id.
    pub(crate) publisher: Option<String>,
}

/// One change to durable state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Record {
    /// A persistent session starts (or restarts clean) with this expiry interval.
    SessionOpen {
        /// Client id.
        client: String,
        /// Session Expiry Interval, seconds.
        expiry: u32,
        /// The user that created it (`None`: anonymous; older logs have no such field).
        user: Option<String>,
    },
    /// The session's expiry interval changed (v5 DISCONNECT).
    SessionExpiry {
        /// Client id.
        client: String,
        /// New interval.
        expiry: u32,
    },
    /// The session's connection ended at this Unix time (ms).
    SessionOffline {
        /// Client id.
        client: String,
        /// When.
        at_ms: u64,
    },
    /// The session ended; everything of it is gone.
    SessionEnd {
        /// Client id.
        client: String,
    },
    /// A subscription was added or replaced.
    SubAdd {
        /// Client id.
        client: String,
        /// Full filter (with any `$share/group/` prefix).
        filter: String,
        /// Options byte (v5 layout) with the granted QoS.
        options: u8,
        /// Subscription identifier (0 = none).
        id: u32,
    },
    /// A subscription was removed.
    SubDel {
        /// Client id.
        client: String,
        /// Full filter.
        filter: String,
    },
    /// A message body, referenced by id.
    Msg {
        /// Message id.
        mid: u64,
        /// The message.
        msg: StoredMessage,
    },
    /// A delivery of message `mid` was queued for `client`.
    Enqueue {
        /// Client id.
        client: String,
        /// Delivery sequence number (unique).
        dseq: u64,
        /// Message id.
        mid: u64,
        /// Delivery QoS.
        qos: u8,
        /// RETAIN flag to send.
        retain: bool,
        /// Subscription identifiers.
        sub_ids: Vec<u32>,
        /// `$share` group and filter, when it came through a shared subscription.
        shared: Option<(String, String)>,
    },
    /// The delivery was sent with this packet id.
    Sent {
        /// Client id.
        client: String,
        /// Delivery sequence number.
        dseq: u64,
        /// Packet identifier.
        packet_id: u16,
    },
    /// PUBREC arrived for the delivery: next is PUBREL/PUBCOMP.
    Released {
        /// Client id.
        client: String,
        /// Delivery sequence number.
        dseq: u64,
    },
    /// The delivery finished (acknowledged, expired, or dropped).
    Done {
        /// Client id.
        client: String,
        /// Delivery sequence number.
        dseq: u64,
    },
    /// An inbound QoS 2 PUBLISH was accepted (PUBREC sent); a re-send must not be
    /// delivered again.
    Inbound2 {
        /// Client id.
        client: String,
        /// Packet identifier.
        packet_id: u16,
    },
    /// PUBREL arrived for the inbound QoS 2 flow.
    Inbound2Done {
        /// Client id.
        client: String,
        /// Packet identifier.
        packet_id: u16,
    },
    /// A retained message was set.
    RetainSet {
        /// Topic.
        topic: String,
        /// Message id.
        mid: u64,
    },
    /// A retained message was deleted.
    RetainDel {
        /// Topic.
        topic: String,
    },
    /// The session's will (message `mid`, delay in seconds).
    Will {
        /// Client id.
        client: String,
        /// Message id.
        mid: u64,
        /// Will Delay Interval.
        delay: u32,
    },
    /// The session has no will any more (fired, cancelled, or discarded).
    WillClear {
        /// Client id.
        client: String,
    },
    /// A stream reader's (or consumer group's) committed offset: everything before
    /// `next` was acknowledged (`docs/streams.md`).
    StreamCommit {
        /// The stream.
        stream: String,
        /// The reader (`proto::streams` names them).
        reader: String,
        /// The first offset not acknowledged.
        next: u64,
    },
    /// A work queue's job went back to its queue after `attempts` deliveries (so the
    /// count that dead-letters it survives a restart).
    Attempts {
        /// The queue's store id.
        client: String,
        /// The job's delivery sequence number.
        dseq: u64,
        /// Deliveries so far.
        attempts: u32,
    },
    /// A stream reader is gone (its session ended, it unsubscribed).
    StreamReaderDel {
        /// The stream.
        stream: String,
        /// The reader.
        reader: String,
    },
}

/// Little-endian writer over a `Vec<u8>`.
struct W<'a>(&'a mut Vec<u8>);

impl W<'_> {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u32(u32::try_from(b.len()).unwrap_or(u32::MAX));
        self.0.extend_from_slice(b);
    }
    fn opt(&mut self, b: Option<&[u8]>) {
        match b {
            Some(b) => {
                self.u8(1);
                self.bytes(b);
            }
            None => self.u8(0),
        }
    }
}

/// Bounds-checked little-endian reader.
struct R<'a>(&'a [u8]);

impl<'a> R<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.0.len() {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn string(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?.to_vec()).ok()
    }
    fn opt(&mut self) -> Option<Option<&'a [u8]>> {
        match self.u8()? {
            0 => Some(None),
            1 => Some(Some(self.bytes()?)),
            _ => None,
        }
    }
    fn opt_string(&mut self) -> Option<Option<String>> {
        match self.opt()? {
            None => Some(None),
            Some(b) => Some(Some(String::from_utf8(b.to_vec()).ok()?)),
        }
    }
}

/// A [`StoredMessage`] borrowed from wherever the message lives: what the broker
/// journals for every stored message, encoded without copying its strings first.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StoredRef<'a> {
    /// Topic name.
    pub(crate) topic: &'a str,
    /// Payload.
    pub(crate) payload: &'a [u8],
    /// QoS as published.
    pub(crate) qos: u8,
    /// RETAIN as published.
    pub(crate) retain: bool,
    /// Payload Format Indicator (255 = absent).
    pub(crate) payload_format_indicator: u8,
    /// Content Type.
    pub(crate) content_type: Option<&'a str>,
    /// Response Topic.
    pub(crate) response_topic: Option<&'a str>,
    /// Correlation Data.
    pub(crate) correlation_data: Option<&'a [u8]>,
    /// User properties as encoded property bytes.
    pub(crate) user_properties: &'a [u8],
    /// Expiry as Unix milliseconds (0 = never).
    pub(crate) expires_at_ms: u64,
    /// Message expiry interval of a will (u32::MAX = none).
    pub(crate) will_expiry: u32,
    /// Publisher's client id.
    pub(crate) publisher: Option<&'a str>,
}

impl StoredRef<'_> {
    fn write(&self, w: &mut W<'_>) {
        w.bytes(self.topic.as_bytes());
        w.bytes(self.payload);
        w.u8(self.qos);
        w.u8(u8::from(self.retain));
        w.u8(self.payload_format_indicator);
        w.opt(self.content_type.map(str::as_bytes));
        w.opt(self.response_topic.map(str::as_bytes));
        w.opt(self.correlation_data);
        w.bytes(self.user_properties);
        w.u64(self.expires_at_ms);
        w.u32(self.will_expiry);
        w.opt(self.publisher.map(str::as_bytes));
    }

    /// Appends the `Msg` record of message `mid` to `out` (the bytes
    /// [`Record::encode`] writes for `Record::Msg`).
    pub(crate) fn encode_msg(&self, mid: u64, out: &mut Vec<u8>) {
        let mut w = W(out);
        w.u8(Record::KIND_MSG);
        w.u64(mid);
        self.write(&mut w);
    }
}

/// An `Enqueue` record borrowed from the delivery it describes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EnqueueRef<'a> {
    /// Client id.
    pub(crate) client: &'a str,
    /// Delivery sequence number.
    pub(crate) dseq: u64,
    /// Message id.
    pub(crate) mid: u64,
    /// Delivery QoS.
    pub(crate) qos: u8,
    /// RETAIN flag to send.
    pub(crate) retain: bool,
    /// Subscription identifiers.
    pub(crate) sub_ids: &'a [u32],
    /// `$share` group and filter.
    pub(crate) shared: Option<(&'a str, &'a str)>,
}

impl EnqueueRef<'_> {
    /// Appends the record (the bytes [`Record::encode`] writes for `Record::Enqueue`).
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        let mut w = W(out);
        w.u8(Record::KIND_ENQUEUE);
        w.bytes(self.client.as_bytes());
        w.u64(self.dseq);
        w.u64(self.mid);
        w.u8(self.qos);
        w.u8(u8::from(self.retain));
        w.u32(u32::try_from(self.sub_ids.len()).unwrap_or(0));
        for id in self.sub_ids {
            w.u32(*id);
        }
        match self.shared {
            Some((g, f)) => {
                w.u8(1);
                w.bytes(g.as_bytes());
                w.bytes(f.as_bytes());
            }
            None => w.u8(0),
        }
    }
}

impl StoredMessage {
    /// The borrowed form.
    pub(crate) fn as_ref(&self) -> StoredRef<'_> {
        StoredRef {
            topic: &self.topic,
            payload: &self.payload,
            qos: self.qos,
            retain: self.retain,
            payload_format_indicator: self.payload_format_indicator,
            content_type: self.content_type.as_deref(),
            response_topic: self.response_topic.as_deref(),
            correlation_data: self.correlation_data.as_deref(),
            user_properties: &self.user_properties,
            expires_at_ms: self.expires_at_ms,
            will_expiry: self.will_expiry,
            publisher: self.publisher.as_deref(),
        }
    }

    fn read(r: &mut R<'_>) -> Option<StoredMessage> {
        Some(StoredMessage {
            topic: r.string()?,
            payload: Bytes::copy_from_slice(r.bytes()?),
            qos: r.u8()?,
            retain: r.u8()? != 0,
            payload_format_indicator: r.u8()?,
            content_type: r.opt_string()?,
            response_topic: r.opt_string()?,
            correlation_data: r.opt()?.map(Bytes::copy_from_slice),
            user_properties: Bytes::copy_from_slice(r.bytes()?),
            expires_at_ms: r.u64()?,
            will_expiry: r.u32()?,
            publisher: r.opt_string()?,
        })
    }
}

impl Record {
    /// Appends the binary form of the record to `out`.
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        let mut w = W(out);
        match self {
            Record::SessionOpen {
                client,
                expiry,
                user,
            } => {
                // Kind 1 (anonymous) is the layout logs had before users; kind 18 adds
                // the user, so a cut record is never taken for a shorter valid one.
                w.u8(if user.is_some() { 18 } else { 1 });
                w.bytes(client.as_bytes());
                w.u32(*expiry);
                if let Some(u) = user {
                    w.bytes(u.as_bytes());
                }
            }
            Record::SessionExpiry { client, expiry } => {
                w.u8(2);
                w.bytes(client.as_bytes());
                w.u32(*expiry);
            }
            Record::SessionOffline { client, at_ms } => {
                w.u8(3);
                w.bytes(client.as_bytes());
                w.u64(*at_ms);
            }
            Record::SessionEnd { client } => {
                w.u8(4);
                w.bytes(client.as_bytes());
            }
            Record::SubAdd {
                client,
                filter,
                options,
                id,
            } => {
                w.u8(5);
                w.bytes(client.as_bytes());
                w.bytes(filter.as_bytes());
                w.u8(*options);
                w.u32(*id);
            }
            Record::SubDel { client, filter } => {
                w.u8(6);
                w.bytes(client.as_bytes());
                w.bytes(filter.as_bytes());
            }
            Record::Msg { mid, msg } => msg.as_ref().encode_msg(*mid, w.0),
            Record::Enqueue {
                client,
                dseq,
                mid,
                qos,
                retain,
                sub_ids,
                shared,
            } => EnqueueRef {
                client,
                dseq: *dseq,
                mid: *mid,
                qos: *qos,
                retain: *retain,
                sub_ids,
                shared: shared.as_ref().map(|(g, f)| (g.as_str(), f.as_str())),
            }
            .encode(w.0),
            Record::Sent {
                client,
                dseq,
                packet_id,
            } => {
                w.u8(9);
                w.bytes(client.as_bytes());
                w.u64(*dseq);
                w.u16(*packet_id);
            }
            Record::Released { client, dseq } => {
                w.u8(10);
                w.bytes(client.as_bytes());
                w.u64(*dseq);
            }
            Record::Done { client, dseq } => {
                w.u8(11);
                w.bytes(client.as_bytes());
                w.u64(*dseq);
            }
            Record::Inbound2 { client, packet_id } => {
                w.u8(12);
                w.bytes(client.as_bytes());
                w.u16(*packet_id);
            }
            Record::Inbound2Done { client, packet_id } => {
                w.u8(13);
                w.bytes(client.as_bytes());
                w.u16(*packet_id);
            }
            Record::RetainSet { topic, mid } => {
                w.u8(Record::KIND_RETAIN_SET);
                w.bytes(topic.as_bytes());
                w.u64(*mid);
            }
            Record::RetainDel { topic } => {
                w.u8(15);
                w.bytes(topic.as_bytes());
            }
            Record::Will { client, mid, delay } => {
                w.u8(Record::KIND_WILL);
                w.bytes(client.as_bytes());
                w.u64(*mid);
                w.u32(*delay);
            }
            Record::WillClear { client } => {
                w.u8(17);
                w.bytes(client.as_bytes());
            }
            Record::StreamCommit {
                stream,
                reader,
                next,
            } => {
                w.u8(19);
                w.bytes(stream.as_bytes());
                w.bytes(reader.as_bytes());
                w.u64(*next);
            }
            Record::Attempts {
                client,
                dseq,
                attempts,
            } => {
                w.u8(21);
                w.bytes(client.as_bytes());
                w.u64(*dseq);
                w.u32(*attempts);
            }
            Record::StreamReaderDel { stream, reader } => {
                w.u8(20);
                w.bytes(stream.as_bytes());
                w.bytes(reader.as_bytes());
            }
        }
    }

    /// Kind byte of a `Msg` record.
    pub(crate) const KIND_MSG: u8 = 7;
    /// Kind byte of an `Enqueue` record.
    pub(crate) const KIND_ENQUEUE: u8 = 8;
    /// Kind byte of a `RetainSet` record.
    pub(crate) const KIND_RETAIN_SET: u8 = 14;
    /// Kind byte of a `Will` record.
    pub(crate) const KIND_WILL: u8 = 16;

    /// The kind byte of an encoded record.
    pub(crate) fn kind(buf: &[u8]) -> Option<u8> {
        buf.first().copied()
    }

    /// The message id of an encoded `Msg` record, without decoding the message.
    pub(crate) fn msg_id(buf: &[u8]) -> Option<u64> {
        let mut r = R(buf);
        (r.u8()? == Record::KIND_MSG).then_some(())?;
        r.u64()
    }

    /// Parses a record; `None` when the bytes are not one.
    pub(crate) fn decode(buf: &[u8]) -> Option<Record> {
        let mut r = R(buf);
        let rec = match r.u8()? {
            kind @ (1 | 18) => Record::SessionOpen {
                client: r.string()?,
                expiry: r.u32()?,
                user: if kind == 18 { Some(r.string()?) } else { None },
            },
            2 => Record::SessionExpiry {
                client: r.string()?,
                expiry: r.u32()?,
            },
            3 => Record::SessionOffline {
                client: r.string()?,
                at_ms: r.u64()?,
            },
            4 => Record::SessionEnd {
                client: r.string()?,
            },
            5 => Record::SubAdd {
                client: r.string()?,
                filter: r.string()?,
                options: r.u8()?,
                id: r.u32()?,
            },
            6 => Record::SubDel {
                client: r.string()?,
                filter: r.string()?,
            },
            Record::KIND_MSG => Record::Msg {
                mid: r.u64()?,
                msg: StoredMessage::read(&mut r)?,
            },
            Record::KIND_ENQUEUE => {
                let client = r.string()?;
                let dseq = r.u64()?;
                let mid = r.u64()?;
                let qos = r.u8()?;
                let retain = r.u8()? != 0;
                let n = r.u32()? as usize;
                let mut sub_ids = Vec::with_capacity(n.min(64));
                for _ in 0..n {
                    sub_ids.push(r.u32()?);
                }
                let shared = match r.u8()? {
                    0 => None,
                    1 => Some((r.string()?, r.string()?)),
                    _ => return None,
                };
                Record::Enqueue {
                    client,
                    dseq,
                    mid,
                    qos,
                    retain,
                    sub_ids,
                    shared,
                }
            }
            9 => Record::Sent {
                client: r.string()?,
                dseq: r.u64()?,
                packet_id: r.u16()?,
            },
            10 => Record::Released {
                client: r.string()?,
                dseq: r.u64()?,
            },
            11 => Record::Done {
                client: r.string()?,
                dseq: r.u64()?,
            },
            12 => Record::Inbound2 {
                client: r.string()?,
                packet_id: r.u16()?,
            },
            13 => Record::Inbound2Done {
                client: r.string()?,
                packet_id: r.u16()?,
            },
            Record::KIND_RETAIN_SET => Record::RetainSet {
                topic: r.string()?,
                mid: r.u64()?,
            },
            15 => Record::RetainDel { topic: r.string()? },
            Record::KIND_WILL => Record::Will {
                client: r.string()?,
                mid: r.u64()?,
                delay: r.u32()?,
            },
            17 => Record::WillClear {
                client: r.string()?,
            },
            19 => Record::StreamCommit {
                stream: r.string()?,
                reader: r.string()?,
                next: r.u64()?,
            },
            21 => Record::Attempts {
                client: r.string()?,
                dseq: r.u64()?,
                attempts: r.u32()?,
            },
            20 => Record::StreamReaderDel {
                stream: r.string()?,
                reader: r.string()?,
            },
            _ => return None,
        };
        r.0.is_empty().then_some(rec)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sample_message() -> StoredMessage {
        StoredMessage {
            topic: "a/b".into(),
            payload: Bytes::from_static(b"payload"),
            qos: 2,
            retain: true,
            payload_format_indicator: 1,
            content_type: Some("text/plain".into()),
            response_topic: None,
            correlation_data: Some(Bytes::from_static(b"\x00\x01")),
            user_properties: Bytes::from_static(b"\x26\x00\x01k\x00\x01v"),
            expires_at_ms: 1_700_000_000_000,
            will_expiry: u32::MAX,
            publisher: Some("dev".into()),
        }
    }

    #[test]
    fn every_record_round_trips() {
        let c = || "client".to_string();
        let records = vec![
            Record::SessionOpen {
                client: c(),
                expiry: 60,
                user: None,
            },
            Record::SessionOpen {
                client: c(),
                expiry: 60,
                user: Some("alice".into()),
            },
            Record::SessionExpiry {
                client: c(),
                expiry: 0,
            },
            Record::SessionOffline {
                client: c(),
                at_ms: 123,
            },
            Record::SessionEnd { client: c() },
            Record::SubAdd {
                client: c(),
                filter: "$share/g/a/#".into(),
                options: 0x2E,
                id: 7,
            },
            Record::SubDel {
                client: c(),
                filter: "a/+".into(),
            },
            Record::Msg {
                mid: 9,
                msg: sample_message(),
            },
            Record::Enqueue {
                client: c(),
                dseq: 4,
                mid: 9,
                qos: 1,
                retain: false,
                sub_ids: vec![1, 2],
                shared: Some(("g".into(), "a/#".into())),
            },
            Record::Enqueue {
                client: c(),
                dseq: 5,
                mid: 9,
                qos: 2,
                retain: true,
                sub_ids: vec![],
                shared: None,
            },
            Record::Sent {
                client: c(),
                dseq: 4,
                packet_id: 65535,
            },
            Record::Released {
                client: c(),
                dseq: 4,
            },
            Record::Done {
                client: c(),
                dseq: 4,
            },
            Record::Inbound2 {
                client: c(),
                packet_id: 3,
            },
            Record::Inbound2Done {
                client: c(),
                packet_id: 3,
            },
            Record::RetainSet {
                topic: "r".into(),
                mid: 9,
            },
            Record::RetainDel { topic: "r".into() },
            Record::Will {
                client: c(),
                mid: 9,
                delay: 30,
            },
            Record::WillClear { client: c() },
            Record::StreamCommit {
                stream: "s".into(),
                reader: "g\0x".into(),
                next: 42,
            },
            Record::StreamReaderDel {
                stream: "s".into(),
                reader: "g\0x".into(),
            },
            Record::Attempts {
                client: c(),
                dseq: 7,
                attempts: 3,
            },
        ];
        for rec in records {
            let mut buf = Vec::new();
            rec.encode(&mut buf);
            assert_eq!(Record::decode(&buf), Some(rec.clone()));
            // Any truncation is rejected, never misread.
            for cut in 0..buf.len() {
                assert_eq!(Record::decode(&buf[..cut]), None, "{rec:?} cut at {cut}");
            }
        }
    }

    #[test]
    fn unknown_kind_and_trailing_bytes_are_rejected() {
        assert_eq!(Record::decode(&[0]), None);
        assert_eq!(Record::decode(&[99, 1, 2]), None);
        let mut buf = Vec::new();
        Record::SessionEnd { client: "x".into() }.encode(&mut buf);
        buf.push(0);
        assert_eq!(Record::decode(&buf), None);
    }
}
