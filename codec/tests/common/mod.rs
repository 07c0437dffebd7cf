//! Shared helpers for the codec's integration tests: encode/decode wrappers, an owned
//! model of every packet (so proptest can generate owned data and the test body can
//! build the borrowed `Packet` from it), and proptest strategies for valid packets.
//!
//! Each test binary uses a different part of this module.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use mote_codec::{
    check, decode, Ack, ConnAck, Connect, DecodeError, Disconnect, EncodeError, List, Packet,
    PropList, PropValues, Properties, Protocol, Publish, QoS, RetainHandling, Sink, SliceSink,
    SubAck, SubOptions, Subscribe, SubscribeFilter, UnsubAck, Unsubscribe, Will, MAX_VAR_INT,
};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;

// ---------------------------------------------------------------------------------------
// Encode / decode wrappers
// ---------------------------------------------------------------------------------------

/// A [`Sink`] appending to a `Vec`, to exercise `encode_to` with a sink other than a slice.
#[derive(Debug, Default)]
pub struct VecSink(pub Vec<u8>);

impl Sink for VecSink {
    fn put(&mut self, bytes: &[u8]) -> Result<(), EncodeError> {
        self.0.extend_from_slice(bytes);
        Ok(())
    }
}

/// Encodes `p`, checking that `encode` writes exactly `encoded_len` bytes.
pub fn encode(p: &Packet<'_>, proto: Protocol) -> Vec<u8> {
    let len = p.encoded_len(proto);
    let mut buf = vec![0u8; len];
    let n = p
        .encode(proto, &mut buf)
        .unwrap_or_else(|e| panic!("encode {p:?} for {proto:?}: {e}"));
    assert_eq!(n, len, "encode wrote {n} bytes, encoded_len said {len}");
    buf
}

/// Decodes a buffer that must hold exactly one whole frame.
pub fn decode_full(bytes: &[u8], proto: Protocol) -> Packet<'_> {
    match decode(bytes, proto, u32::MAX) {
        Ok(Some((p, n))) => {
            assert_eq!(n, bytes.len(), "frame length reported for {bytes:02X?}");
            p
        }
        other => panic!("decode {bytes:02X?} as {proto:?}: {other:?}"),
    }
}

/// Decodes a buffer holding one whole frame that must be rejected, and returns why.
pub fn decode_err(bytes: &[u8], proto: Protocol) -> DecodeError {
    match decode(bytes, proto, u32::MAX) {
        Err(e) => e,
        other => panic!("expected an error decoding {bytes:02X?} as {proto:?}, got {other:?}"),
    }
}

/// Builds a frame: first byte, shortest remaining length, body.
pub fn frame(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    out.extend_from_slice(&var_int(body.len() as u32));
    out.extend_from_slice(body);
    out
}

/// The shortest variable byte integer encoding of `v` (independent of the codec).
pub fn var_int(mut v: u32) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let mut b = (v % 128) as u8;
        v /= 128;
        if v > 0 {
            b |= 0x80;
        }
        out.push(b);
        if v == 0 {
            return out;
        }
    }
}

/// A two-byte-length-prefixed string or binary field.
pub fn lp(b: &[u8]) -> Vec<u8> {
    let mut out = (b.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(b);
    out
}

/// Every check the round-trip property makes on one valid packet.
pub fn assert_round_trip(p: &Packet<'_>, proto: Protocol) {
    let bytes = encode(p, proto);
    let len = bytes.len();

    // `encode_to` into another sink writes the same bytes, through `put` (a `Vec`) or in
    // place (a slice after what it already holds).
    let mut sink = VecSink::default();
    p.encode_to(proto, &mut sink).unwrap();
    assert_eq!(sink.0, bytes, "encode_to differs from encode");
    let mut out = vec![0xEEu8; len + 3];
    let mut slice = SliceSink::new(&mut out);
    slice.put(&[1, 2]).unwrap();
    p.encode_to(proto, &mut slice).unwrap();
    assert_eq!(slice.written(), 2 + len);
    assert_eq!(
        &out[2..2 + len],
        &bytes[..],
        "encode_to a slice differs from encode"
    );
    // No room: nothing written.
    let mut slice = SliceSink::new(&mut out[..len + 1]);
    slice.put(&[1, 2]).unwrap();
    assert_eq!(
        p.encode_to(proto, &mut slice),
        Err(EncodeError::BufferTooSmall { needed: 2 + len })
    );
    assert_eq!(slice.written(), 2);

    // One byte short of room is refused up front.
    let mut small = vec![0u8; len - 1];
    assert_eq!(
        p.encode(proto, &mut small),
        Err(EncodeError::BufferTooSmall { needed: len })
    );

    // The fixed header alone tells the frame length.
    let h = check(&bytes, u32::MAX).unwrap().unwrap();
    assert_eq!(h.frame_len(), len);
    assert_eq!(h.packet_type, p.packet_type() as u8);

    // Decode gives back the packet and the frame length, and reads nothing past it.
    let (q, n) = decode(&bytes, proto, u32::MAX).unwrap().unwrap();
    assert_eq!(n, len);
    assert_eq!(&q, p);
    let mut longer = bytes.clone();
    longer.extend_from_slice(&[0xFF, 0x00, 0x30]);
    let (q2, n2) = decode(&longer, proto, u32::MAX).unwrap().unwrap();
    assert_eq!(n2, len);
    assert_eq!(&q2, p);

    // Maximum packet size counts the whole frame.
    assert!(decode(&bytes, proto, len as u32).unwrap().is_some());
    assert_eq!(
        decode(&bytes, proto, len as u32 - 1),
        Err(DecodeError::PacketTooLarge {
            size: len,
            max: len as u32 - 1
        })
    );

    // Every strict prefix is "need more bytes".
    for cut in 0..len {
        assert_eq!(
            decode(&bytes[..cut], proto, u32::MAX),
            Ok(None),
            "prefix of {cut} bytes of {bytes:02X?}"
        );
    }

    // Re-encoding the decoded (wire-backed) packet is canonical.
    assert_eq!(encode(&q, proto), bytes);
}

/// For a packet decoded from some input: encoding it again and decoding gives it back.
pub fn assert_reencode_stable(p: &Packet<'_>, proto: Protocol) {
    let bytes = encode(p, proto);
    let (q, n) = decode(&bytes, proto, u32::MAX)
        .unwrap_or_else(|e| panic!("re-decoding {p:?} from {bytes:02X?}: {e}"))
        .unwrap();
    assert_eq!(n, bytes.len());
    assert_eq!(&q, p);
}

// ---------------------------------------------------------------------------------------
// Owned model of the packets
// ---------------------------------------------------------------------------------------

/// Owned [`Properties`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OProps {
    pub payload_format_indicator: Option<u8>,
    pub message_expiry_interval: Option<u32>,
    pub content_type: Option<String>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Vec<u8>>,
    pub subscription_identifiers: Vec<u32>,
    pub session_expiry_interval: Option<u32>,
    pub assigned_client_identifier: Option<String>,
    pub server_keep_alive: Option<u16>,
    pub authentication_method: Option<String>,
    pub authentication_data: Option<Vec<u8>>,
    pub request_problem_information: Option<bool>,
    pub will_delay_interval: Option<u32>,
    pub request_response_information: Option<bool>,
    pub response_information: Option<String>,
    pub server_reference: Option<String>,
    pub reason_string: Option<String>,
    pub receive_maximum: Option<u16>,
    pub topic_alias_maximum: Option<u16>,
    pub topic_alias: Option<u16>,
    pub maximum_qos: Option<u8>,
    pub retain_available: Option<bool>,
    pub user_properties: Vec<(String, String)>,
    pub maximum_packet_size: Option<u32>,
    pub wildcard_subscription_available: Option<bool>,
    pub subscription_identifier_available: Option<bool>,
    pub shared_subscription_available: Option<bool>,
}

impl OProps {
    /// The user properties as borrowed pairs (the slice `view` points at).
    pub fn users(&self) -> Vec<(&str, &str)> {
        self.user_properties
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    /// True when no property is set.
    pub fn is_empty(&self) -> bool {
        *self == OProps::default()
    }

    /// The borrowed properties; `users` must come from [`OProps::users`].
    pub fn view<'a>(&'a self, users: &'a [(&'a str, &'a str)]) -> PropValues<'a> {
        PropValues {
            payload_format_indicator: self.payload_format_indicator,
            message_expiry_interval: self.message_expiry_interval,
            content_type: self.content_type.as_deref(),
            response_topic: self.response_topic.as_deref(),
            correlation_data: self.correlation_data.as_deref(),
            subscription_identifiers: PropList::Slice(&self.subscription_identifiers),
            session_expiry_interval: self.session_expiry_interval,
            assigned_client_identifier: self.assigned_client_identifier.as_deref(),
            server_keep_alive: self.server_keep_alive,
            authentication_method: self.authentication_method.as_deref(),
            authentication_data: self.authentication_data.as_deref(),
            request_problem_information: self.request_problem_information,
            will_delay_interval: self.will_delay_interval,
            request_response_information: self.request_response_information,
            response_information: self.response_information.as_deref(),
            server_reference: self.server_reference.as_deref(),
            reason_string: self.reason_string.as_deref(),
            receive_maximum: self.receive_maximum,
            topic_alias_maximum: self.topic_alias_maximum,
            topic_alias: self.topic_alias,
            maximum_qos: self.maximum_qos,
            retain_available: self.retain_available,
            user_properties: PropList::Slice(users),
            maximum_packet_size: self.maximum_packet_size,
            wildcard_subscription_available: self.wildcard_subscription_available,
            subscription_identifier_available: self.subscription_identifier_available,
            shared_subscription_available: self.shared_subscription_available,
        }
    }
}

/// Owned [`Will`].
#[derive(Debug, Clone, PartialEq)]
pub struct OWill {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: QoS,
    pub retain: bool,
    pub props: OProps,
}

/// Owned [`Connect`].
#[derive(Debug, Clone, PartialEq)]
pub struct OConnect {
    pub protocol: Protocol,
    pub clean_start: bool,
    pub keep_alive: u16,
    pub props: OProps,
    pub client_id: String,
    pub will: Option<OWill>,
    pub username: Option<String>,
    pub password: Option<Vec<u8>>,
}

/// Owned [`Publish`].
#[derive(Debug, Clone, PartialEq)]
pub struct OPublish {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    pub topic: String,
    pub packet_id: u16,
    pub props: OProps,
    pub payload: Vec<u8>,
}

/// Owned [`Ack`].
#[derive(Debug, Clone, PartialEq)]
pub struct OAck {
    pub packet_id: u16,
    pub reason: u8,
    pub props: OProps,
}

/// Owned [`Packet`] (test data: size is no concern).
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum OPacket {
    Connect(OConnect),
    ConnAck {
        session_present: bool,
        code: u8,
        props: OProps,
    },
    Publish(OPublish),
    PubAck(OAck),
    PubRec(OAck),
    PubRel(OAck),
    PubComp(OAck),
    Subscribe {
        packet_id: u16,
        props: OProps,
        filters: Vec<(String, SubOptions)>,
    },
    SubAck {
        packet_id: u16,
        props: OProps,
        codes: Vec<u8>,
    },
    Unsubscribe {
        packet_id: u16,
        props: OProps,
        filters: Vec<String>,
    },
    UnsubAck {
        packet_id: u16,
        props: OProps,
        codes: Vec<u8>,
    },
    PingReq,
    PingResp,
    Disconnect {
        reason: u8,
        props: OProps,
    },
    Auth {
        reason: u8,
        props: OProps,
    },
}

fn ack_view<'a>(a: &'a OAck, vals: &'a PropValues<'a>) -> Ack<'a> {
    Ack {
        packet_id: a.packet_id,
        reason: a.reason,
        properties: Properties::from(vals),
    }
}

impl OPacket {
    /// Builds the borrowed packet and hands it to `f`.
    pub fn with<R>(&self, f: impl FnOnce(&Packet<'_>) -> R) -> R {
        match self {
            OPacket::Connect(c) => {
                let users = c.props.users();
                let will_users = c.will.as_ref().map(|w| w.props.users()).unwrap_or_default();
                let vals = c.props.view(&users);
                let will_vals = c
                    .will
                    .as_ref()
                    .map(|w| w.props.view(&will_users))
                    .unwrap_or_default();
                let p = Packet::Connect(Connect {
                    protocol: c.protocol,
                    clean_start: c.clean_start,
                    keep_alive: c.keep_alive,
                    properties: Properties::from(&vals),
                    client_id: &c.client_id,
                    will: c.will.as_ref().map(|w| Will {
                        topic: &w.topic,
                        payload: &w.payload,
                        qos: w.qos,
                        retain: w.retain,
                        properties: Properties::from(&will_vals),
                    }),
                    username: c.username.as_deref(),
                    password: c.password.as_deref(),
                });
                f(&p)
            }
            OPacket::ConnAck {
                session_present,
                code,
                props,
            } => {
                let users = props.users();
                let vals = props.view(&users);
                f(&Packet::ConnAck(ConnAck {
                    session_present: *session_present,
                    code: *code,
                    properties: Properties::from(&vals),
                }))
            }
            OPacket::Publish(p) => {
                let users = p.props.users();
                let vals = p.props.view(&users);
                f(&Packet::Publish(Publish {
                    dup: p.dup,
                    qos: p.qos,
                    retain: p.retain,
                    topic: &p.topic,
                    packet_id: p.packet_id,
                    properties: Properties::from(&vals),
                    payload: &p.payload,
                }))
            }
            OPacket::PubAck(a) => {
                let users = a.props.users();
                let vals = a.props.view(&users);
                f(&Packet::PubAck(ack_view(a, &vals)))
            }
            OPacket::PubRec(a) => {
                let users = a.props.users();
                let vals = a.props.view(&users);
                f(&Packet::PubRec(ack_view(a, &vals)))
            }
            OPacket::PubRel(a) => {
                let users = a.props.users();
                let vals = a.props.view(&users);
                f(&Packet::PubRel(ack_view(a, &vals)))
            }
            OPacket::PubComp(a) => {
                let users = a.props.users();
                let vals = a.props.view(&users);
                f(&Packet::PubComp(ack_view(a, &vals)))
            }
            OPacket::Subscribe {
                packet_id,
                props,
                filters,
            } => {
                let users = props.users();
                let vals = props.view(&users);
                let filters: Vec<SubscribeFilter<'_>> = filters
                    .iter()
                    .map(|(filter, options)| SubscribeFilter {
                        filter,
                        options: *options,
                    })
                    .collect();
                f(&Packet::Subscribe(Subscribe {
                    packet_id: *packet_id,
                    properties: Properties::from(&vals),
                    filters: List::Slice(&filters),
                }))
            }
            OPacket::SubAck {
                packet_id,
                props,
                codes,
            } => {
                let users = props.users();
                let vals = props.view(&users);
                f(&Packet::SubAck(SubAck {
                    packet_id: *packet_id,
                    properties: Properties::from(&vals),
                    codes,
                }))
            }
            OPacket::Unsubscribe {
                packet_id,
                props,
                filters,
            } => {
                let users = props.users();
                let vals = props.view(&users);
                let filters: Vec<&str> = filters.iter().map(String::as_str).collect();
                f(&Packet::Unsubscribe(Unsubscribe {
                    packet_id: *packet_id,
                    properties: Properties::from(&vals),
                    filters: List::Slice(&filters),
                }))
            }
            OPacket::UnsubAck {
                packet_id,
                props,
                codes,
            } => {
                let users = props.users();
                let vals = props.view(&users);
                f(&Packet::UnsubAck(UnsubAck {
                    packet_id: *packet_id,
                    properties: Properties::from(&vals),
                    codes,
                }))
            }
            OPacket::PingReq => f(&Packet::PingReq),
            OPacket::PingResp => f(&Packet::PingResp),
            OPacket::Disconnect { reason, props } => {
                let users = props.users();
                let vals = props.view(&users);
                f(&Packet::Disconnect(Disconnect {
                    reason: *reason,
                    properties: Properties::from(&vals),
                }))
            }
            OPacket::Auth { reason, props } => {
                let users = props.users();
                let vals = props.view(&users);
                f(&Packet::Auth(Disconnect {
                    reason: *reason,
                    properties: Properties::from(&vals),
                }))
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Reason codes allowed per packet (MQTT 5 tables, written out independently of the codec)
// ---------------------------------------------------------------------------------------

/// MQTT 5 §3.2.2.2, Table 3-1.
pub const CONNACK_V5: &[u8] = &[
    0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8C, 0x90, 0x95, 0x97,
    0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F,
];
/// MQTT 3.1.1 §3.2.2.3, Table 3.1.
pub const CONNACK_V3: &[u8] = &[0, 1, 2, 3, 4, 5];
/// MQTT 5 §3.4.2.1 (PUBACK) and §3.5.2.1 (PUBREC).
pub const PUBACK_V5: &[u8] = &[0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99];
/// MQTT 5 §3.6.2.1 (PUBREL) and §3.7.2.1 (PUBCOMP).
pub const PUBREL_V5: &[u8] = &[0x00, 0x92];
/// MQTT 5 §3.9.3.
pub const SUBACK_V5: &[u8] = &[
    0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2,
];
/// MQTT 3.1.1 §3.9.3.
pub const SUBACK_V3: &[u8] = &[0x00, 0x01, 0x02, 0x80];
/// MQTT 5 §3.11.3.
pub const UNSUBACK_V5: &[u8] = &[0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91];
/// MQTT 5 §3.14.2.1, Table 3-10.
pub const DISCONNECT_V5: &[u8] = &[
    0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x90, 0x93, 0x94, 0x95,
    0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1, 0xA2,
];
/// MQTT 5 §3.15.2.1.
pub const AUTH_V5: &[u8] = &[0x00, 0x18, 0x19];

// ---------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------

/// Any of the three protocol versions.
pub fn protocol() -> impl Strategy<Value = Protocol> {
    prop_oneof![
        Just(Protocol::V31),
        Just(Protocol::V311),
        Just(Protocol::V5)
    ]
}

/// An MQTT UTF-8 string (no U+0000), mostly short ASCII, sometimes any Unicode.
pub fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-zA-Z0-9 /_.-]{0,8}",
        1 => "[^\\x00]{0,5}",
    ]
}

/// A non-empty MQTT UTF-8 string.
pub fn text1() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-zA-Z0-9 /_.-]{1,8}",
        1 => "[^\\x00]{1,5}",
    ]
}

/// Arbitrary binary data, usually short.
pub fn binary() -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..12)
}

/// A payload: usually short, sometimes long enough for a two-byte remaining length.
pub fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => vec(any::<u8>(), 0..16),
        1 => vec(any::<u8>(), 120..300),
    ]
}

/// A topic level without wildcards or separators (may be empty).
fn level() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-z0-9$ ]{0,4}",
        1 => "[^\\x00+#/]{1,3}",
    ]
}

/// A valid topic name: non-empty, no wildcards, no U+0000 (MQTT §4.7.3).
pub fn topic_name() -> impl Strategy<Value = String> {
    vec(level(), 1..4)
        .prop_map(|levels| levels.join("/"))
        .prop_filter("topic names are not empty", |t| !t.is_empty())
}

/// A valid topic filter: wildcards only as whole levels, `#` only last (MQTT §4.7.1),
/// sometimes a shared subscription.
pub fn topic_filter() -> impl Strategy<Value = String> {
    let lvl = prop_oneof![4 => level(), 1 => Just("+".to_string())];
    (vec(lvl, 0..4), any::<bool>(), prop::bool::weighted(0.1))
        .prop_map(|(levels, hash, share)| {
            let mut f = levels.join("/");
            if hash {
                if levels.is_empty() {
                    f.push('#');
                } else {
                    f.push_str("/#");
                }
            }
            if share {
                f = format!("$share/grp/{f}");
            }
            f
        })
        .prop_filter("topic filters are not empty", |f| {
            !f.is_empty() && !f.ends_with("$share/grp/")
        })
}

/// Some QoS.
pub fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

/// A non-zero packet identifier (MQTT-2.3.1-1).
pub fn packet_id() -> impl Strategy<Value = u16> {
    prop_oneof![Just(1u16), Just(u16::MAX), 1..=u16::MAX]
}

/// Subscription options; only the QoS in 3.1.1.
pub fn sub_options(v5: bool) -> impl Strategy<Value = SubOptions> {
    (qos(), any::<bool>(), any::<bool>(), 0..3u8).prop_map(move |(qos, nl, rap, rh)| {
        if !v5 {
            return SubOptions::qos(qos);
        }
        SubOptions {
            qos,
            no_local: nl,
            retain_as_published: rap,
            retain_handling: match rh {
                0 => RetainHandling::SendAtSubscribe,
                1 => RetainHandling::SendIfNew,
                _ => RetainHandling::DoNotSend,
            },
        }
    })
}

fn o<S: Strategy>(s: S) -> impl Strategy<Value = Option<S::Value>> {
    proptest::option::weighted(0.35, s)
}

fn users() -> impl Strategy<Value = Vec<(String, String)>> {
    prop_oneof![
        2 => Just(Vec::new()),
        1 => vec((text(), text()), 1..4),
    ]
}

fn flag01() -> impl Strategy<Value = u8> {
    0..=1u8
}

fn sub_id() -> impl Strategy<Value = u32> {
    prop_oneof![Just(1u32), Just(MAX_VAR_INT), 1..=MAX_VAR_INT]
}

/// CONNECT properties (MQTT 5 §3.1.2.11).
pub fn props_connect() -> impl Strategy<Value = OProps> {
    (
        o(any::<u32>()),
        o(1..=u16::MAX),
        o(1..=u32::MAX),
        o(any::<u16>()),
        o(any::<bool>()),
        o(any::<bool>()),
        users(),
        o(text()),
        o(binary()),
    )
        .prop_map(|(sei, rm, mps, tam, rri, rpi, up, am, ad)| OProps {
            session_expiry_interval: sei,
            receive_maximum: rm,
            maximum_packet_size: mps,
            topic_alias_maximum: tam,
            request_response_information: rri,
            request_problem_information: rpi,
            user_properties: up,
            // Authentication Data without a method is a Protocol Error (§3.1.2.11.10).
            authentication_data: if am.is_some() { ad } else { None },
            authentication_method: am,
            ..OProps::default()
        })
}

/// Will properties (MQTT 5 §3.1.3.2).
pub fn props_will() -> impl Strategy<Value = OProps> {
    (
        o(any::<u32>()),
        o(flag01()),
        o(any::<u32>()),
        o(text()),
        o(topic_name()),
        o(binary()),
        users(),
    )
        .prop_map(|(wdi, pfi, mei, ct, rt, cd, up)| OProps {
            will_delay_interval: wdi,
            payload_format_indicator: pfi,
            message_expiry_interval: mei,
            content_type: ct,
            response_topic: rt,
            correlation_data: cd,
            user_properties: up,
            ..OProps::default()
        })
}

/// CONNACK properties (MQTT 5 §3.2.2.3).
pub fn props_connack() -> impl Strategy<Value = OProps> {
    (
        (
            o(any::<u32>()),
            o(1..=u16::MAX),
            o(flag01()),
            o(any::<bool>()),
            o(1..=u32::MAX),
            o(text()),
            o(any::<u16>()),
            o(text()),
            users(),
        ),
        (
            o(any::<bool>()),
            o(any::<bool>()),
            o(any::<bool>()),
            o(any::<u16>()),
            o(text()),
            o(text()),
            o(text()),
            o(binary()),
        ),
    )
        .prop_map(
            |((sei, rm, mq, ra, mps, aci, tam, rs, up), (wsa, sia, ssa, ska, ri, sr, am, ad))| {
                OProps {
                    session_expiry_interval: sei,
                    receive_maximum: rm,
                    maximum_qos: mq,
                    retain_available: ra,
                    maximum_packet_size: mps,
                    assigned_client_identifier: aci,
                    topic_alias_maximum: tam,
                    reason_string: rs,
                    user_properties: up,
                    wildcard_subscription_available: wsa,
                    subscription_identifier_available: sia,
                    shared_subscription_available: ssa,
                    server_keep_alive: ska,
                    response_information: ri,
                    server_reference: sr,
                    authentication_data: if am.is_some() { ad } else { None },
                    authentication_method: am,
                    ..OProps::default()
                }
            },
        )
}

/// PUBLISH properties (MQTT 5 §3.3.2.3).
pub fn props_publish() -> impl Strategy<Value = OProps> {
    (
        o(flag01()),
        o(any::<u32>()),
        o(1..=u16::MAX),
        o(topic_name()),
        o(binary()),
        users(),
        prop_oneof![2 => Just(Vec::new()), 1 => vec(sub_id(), 1..4)],
        o(text()),
    )
        .prop_map(|(pfi, mei, ta, rt, cd, up, ids, ct)| OProps {
            payload_format_indicator: pfi,
            message_expiry_interval: mei,
            topic_alias: ta,
            response_topic: rt,
            correlation_data: cd,
            user_properties: up,
            subscription_identifiers: ids,
            content_type: ct,
            ..OProps::default()
        })
}

/// Reason String and User Properties: PUBACK/PUBREC/PUBREL/PUBCOMP, SUBACK, UNSUBACK.
pub fn props_reason() -> impl Strategy<Value = OProps> {
    (o(text()), users()).prop_map(|(rs, up)| OProps {
        reason_string: rs,
        user_properties: up,
        ..OProps::default()
    })
}

/// SUBSCRIBE properties: at most one Subscription Identifier (§3.8.2.1.2).
pub fn props_subscribe() -> impl Strategy<Value = OProps> {
    (o(sub_id()), users()).prop_map(|(id, up)| OProps {
        subscription_identifiers: id.into_iter().collect(),
        user_properties: up,
        ..OProps::default()
    })
}

/// UNSUBSCRIBE properties: only User Properties.
pub fn props_users() -> impl Strategy<Value = OProps> {
    users().prop_map(|up| OProps {
        user_properties: up,
        ..OProps::default()
    })
}

/// DISCONNECT properties (§3.14.2.2).
pub fn props_disconnect() -> impl Strategy<Value = OProps> {
    (o(any::<u32>()), o(text()), users(), o(text())).prop_map(|(sei, rs, up, sr)| OProps {
        session_expiry_interval: sei,
        reason_string: rs,
        user_properties: up,
        server_reference: sr,
        ..OProps::default()
    })
}

/// AUTH properties (§3.15.2.2).
pub fn props_auth() -> impl Strategy<Value = OProps> {
    (o(text()), o(binary()), o(text()), users()).prop_map(|(am, ad, rs, up)| OProps {
        authentication_data: if am.is_some() { ad } else { None },
        authentication_method: am,
        reason_string: rs,
        user_properties: up,
        ..OProps::default()
    })
}

/// Properties only in MQTT 5; empty otherwise.
fn pv<S>(v5: bool, s: S) -> BoxedStrategy<OProps>
where
    S: Strategy<Value = OProps> + 'static,
{
    if v5 {
        s.boxed()
    } else {
        Just(OProps::default()).boxed()
    }
}

fn will(v5: bool) -> impl Strategy<Value = OWill> {
    (
        topic_name(),
        binary(),
        qos(),
        any::<bool>(),
        pv(v5, props_will()),
    )
        .prop_map(|(topic, payload, qos, retain, props)| OWill {
            topic,
            payload,
            qos,
            retain,
            props,
        })
}

/// A valid CONNECT of `proto`.
pub fn connect(proto: Protocol) -> impl Strategy<Value = OPacket> {
    let v5 = proto.is_v5();
    (
        any::<bool>(),
        any::<u16>(),
        pv(v5, props_connect()),
        text(),
        o(will(v5)),
        o(text()),
        o(binary()),
    )
        .prop_map(
            move |(clean_start, keep_alive, props, client_id, will, mut username, password)| {
                // 3.1.1: a password needs a user name (MQTT-3.1.2-22); v5 lifts that.
                if !v5 && password.is_some() && username.is_none() {
                    username = Some("user".to_string());
                }
                OPacket::Connect(OConnect {
                    protocol: proto,
                    clean_start,
                    keep_alive,
                    props,
                    client_id,
                    will,
                    username,
                    password,
                })
            },
        )
}

/// A valid CONNACK.
pub fn connack(proto: Protocol) -> impl Strategy<Value = OPacket> {
    let v5 = proto.is_v5();
    let codes = if v5 { CONNACK_V5 } else { CONNACK_V3 };
    (any::<bool>(), select(codes), pv(v5, props_connack())).prop_map(
        |(session_present, code, props)| OPacket::ConnAck {
            session_present,
            code,
            props,
        },
    )
}

/// A valid PUBLISH; in v5 sometimes with an empty topic standing for its Topic Alias.
pub fn publish(proto: Protocol) -> impl Strategy<Value = OPacket> {
    let v5 = proto.is_v5();
    (
        qos(),
        any::<bool>(),
        any::<bool>(),
        topic_name(),
        packet_id(),
        pv(v5, props_publish()),
        payload(),
        any::<bool>(),
    )
        .prop_map(
            move |(qos, dup, retain, topic, pid, props, payload, use_alias)| {
                let at_most_once = qos == QoS::AtMostOnce;
                let topic = if v5 && use_alias && props.topic_alias.is_some() {
                    String::new()
                } else {
                    topic
                };
                OPacket::Publish(OPublish {
                    dup: dup && !at_most_once,
                    qos,
                    retain,
                    topic,
                    packet_id: if at_most_once { 0 } else { pid },
                    props,
                    payload,
                })
            },
        )
}

/// Which of the four acknowledgements of a publication.
#[allow(clippy::enum_variant_names)] // named after the packets
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckKind {
    PubAck,
    PubRec,
    PubRel,
    PubComp,
}

/// A valid PUBACK/PUBREC/PUBREL/PUBCOMP; short forms arise when reason is 0 and no
/// property is set.
pub fn ack(proto: Protocol, kind: AckKind) -> impl Strategy<Value = OPacket> {
    let v5 = proto.is_v5();
    let codes = match kind {
        AckKind::PubAck | AckKind::PubRec => PUBACK_V5,
        AckKind::PubRel | AckKind::PubComp => PUBREL_V5,
    };
    (
        packet_id(),
        prop_oneof![Just(0u8), select(codes)],
        pv(v5, props_reason()),
    )
        .prop_map(move |(packet_id, reason, props)| {
            let a = OAck {
                packet_id,
                reason: if v5 { reason } else { 0 },
                props,
            };
            match kind {
                AckKind::PubAck => OPacket::PubAck(a),
                AckKind::PubRec => OPacket::PubRec(a),
                AckKind::PubRel => OPacket::PubRel(a),
                AckKind::PubComp => OPacket::PubComp(a),
            }
        })
}

/// A valid SUBSCRIBE.
pub fn subscribe(proto: Protocol) -> impl Strategy<Value = OPacket> {
    let v5 = proto.is_v5();
    (
        packet_id(),
        pv(v5, props_subscribe()),
        vec((topic_filter(), sub_options(v5)), 1..4),
    )
        .prop_map(|(packet_id, props, filters)| OPacket::Subscribe {
            packet_id,
            props,
            filters,
        })
}

/// A valid SUBACK.
pub fn suback(proto: Protocol) -> impl Strategy<Value = OPacket> {
    let v5 = proto.is_v5();
    let codes = if v5 { SUBACK_V5 } else { SUBACK_V3 };
    (
        packet_id(),
        pv(v5, props_reason()),
        vec(select(codes), 1..5),
    )
        .prop_map(|(packet_id, props, codes)| OPacket::SubAck {
            packet_id,
            props,
            codes,
        })
}

/// A valid UNSUBSCRIBE.
pub fn unsubscribe(proto: Protocol) -> impl Strategy<Value = OPacket> {
    let v5 = proto.is_v5();
    (
        packet_id(),
        pv(v5, props_users()),
        vec(topic_filter(), 1..4),
    )
        .prop_map(|(packet_id, props, filters)| OPacket::Unsubscribe {
            packet_id,
            props,
            filters,
        })
}

/// A valid UNSUBACK (3.1.1 has no reason codes).
pub fn unsuback(proto: Protocol) -> impl Strategy<Value = OPacket> {
    let v5 = proto.is_v5();
    (
        packet_id(),
        pv(v5, props_reason()),
        vec(select(UNSUBACK_V5), 1..5),
    )
        .prop_map(move |(packet_id, props, codes)| OPacket::UnsubAck {
            packet_id,
            props,
            codes: if v5 { codes } else { Vec::new() },
        })
}

/// A valid DISCONNECT.
pub fn disconnect(proto: Protocol) -> impl Strategy<Value = OPacket> {
    let v5 = proto.is_v5();
    (
        prop_oneof![Just(0u8), select(DISCONNECT_V5)],
        pv(v5, props_disconnect()),
    )
        .prop_map(move |(reason, props)| OPacket::Disconnect {
            reason: if v5 { reason } else { 0 },
            props,
        })
}

/// A valid AUTH (MQTT 5 only).
pub fn auth() -> impl Strategy<Value = OPacket> {
    (prop_oneof![Just(0u8), select(AUTH_V5)], props_auth())
        .prop_map(|(reason, props)| OPacket::Auth { reason, props })
}

/// Any valid packet of `proto` (AUTH only in v5).
pub fn packet(proto: Protocol) -> BoxedStrategy<OPacket> {
    let mut all: Vec<BoxedStrategy<OPacket>> = vec![
        connect(proto).boxed(),
        connack(proto).boxed(),
        publish(proto).boxed(),
        publish(proto).boxed(),
        ack(proto, AckKind::PubAck).boxed(),
        ack(proto, AckKind::PubRec).boxed(),
        ack(proto, AckKind::PubRel).boxed(),
        ack(proto, AckKind::PubComp).boxed(),
        subscribe(proto).boxed(),
        suback(proto).boxed(),
        unsubscribe(proto).boxed(),
        unsuback(proto).boxed(),
        Just(OPacket::PingReq).boxed(),
        Just(OPacket::PingResp).boxed(),
        disconnect(proto).boxed(),
    ];
    if proto.is_v5() {
        all.push(auth().boxed());
    }
    proptest::strategy::Union::new(all).boxed()
}

/// A protocol and a valid packet for it.
pub fn any_packet() -> impl Strategy<Value = (Protocol, OPacket)> {
    protocol().prop_flat_map(|proto| (Just(proto), packet(proto)))
}
