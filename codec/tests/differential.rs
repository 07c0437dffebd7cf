#![allow(clippy::unwrap_used)]
//! Differential tests against `mqttbytes` 0.6 (`mqttbytes::v4` for 3.1.1, `mqttbytes::v5`
//! for 5.0), both directions, driven by proptest over every packet type mqttbytes has
//! (it has no AUTH):
//!
//! - mote encodes -> mqttbytes decodes -> equal to the packet mqttbytes would build
//!   for the same content (all fields, via mqttbytes' `PartialEq`);
//! - mqttbytes encodes -> mote decodes -> equal to mote's packet (all fields);
//! - for 3.1.1 both encoders must write the very same bytes; for 5.0 the same length
//!   (property order is free, §2.2.2.2).
//!
//! Generated packets stay in the subset both libraries can represent: mqttbytes keeps the
//! CONNECT password as a `String` and treats an empty user name or password as absent, so
//! passwords are UTF-8 and neither is empty; it does not speak MQTT 3.1 (`MQIsdp`).
//!
//! DISAGREEMENTS. Where the two disagree, the MQTT specification decides; each case below
//! has a test (`dNN_*`) asserting mote's spec-correct behaviour next to mqttbytes' own.
//!
//! | #   | Input                                                    | mqttbytes 0.6                         | mote (spec)                        | Spec                                              |
//! |-----|----------------------------------------------------------|---------------------------------------|------------------------------------|---------------------------------------------------|
//! | D01 | v5 DISCONNECT, remaining length 0 (`E0 00`)              | Err(PayloadRequired)                  | Normal disconnection               | 5.0 §3.14.2.1 (reason/properties may be omitted)  |
//! | D02 | v5 DISCONNECT, remaining length 1 (`E0 01 8E`)           | Err(InsufficientBytes(1))             | reason 0x8E, no properties         | 5.0 §3.14.2.2.1 (length < 2: property length 0)   |
//! | D03 | v5 CONNACK written by mqttbytes with `properties: None`  | writes no Property Length (RL 2)      | rejects: UnexpectedEnd             | 5.0 §3.2.2.3.1 (Property Length is mandatory)     |
//! | D04 | 3.1.1 CONNECT with password but no user name             | writes and reads it                   | InvalidConnectFlags                | 3.1.1 §3.1.2.9, MQTT-3.1.2-22                     |
//! | D05 | reserved fixed-header flags (SUBSCRIBE 0x80, PUBREL 0x60, ...) | accepts                         | InvalidHeaderFlags                 | 3.1.1 §2.2.2 MQTT-2.2.2-1/2; 5.0 §2.1.3 MQTT-2.1.3-1 |
//! | D06 | CONNECT reserved flag (bit 0) set                        | accepts                               | InvalidConnectFlags                | 3.1.1 MQTT-3.1.2-3; 5.0 §3.1.2.3 MQTT-3.1.2-3     |
//! | D07 | PUBLISH with DUP=1 and QoS 0                             | accepts                               | DupOnQoS0                          | MQTT-3.3.1-2                                      |
//! | D08 | PUBLISH topic name with wildcard, or empty (no alias)    | accepts                               | InvalidTopicName                   | MQTT-3.3.2-2, MQTT-4.7.3-1; 5.0 §3.3.2.1          |
//! | D09 | SUBSCRIBE without any topic filter                       | accepts (empty list)                  | NoTopicFilter                      | 3.1.1 MQTT-3.8.3-3; 5.0 §3.8.3 (Protocol Error)   |
//! | D10 | UNSUBSCRIBE without any topic filter                     | accepts (empty list)                  | NoTopicFilter                      | 3.1.1 MQTT-3.10.3-2; 5.0 §3.10.3 (Protocol Error) |
//! | D11 | SUBSCRIBE options with reserved bits set                 | ignores them                          | InvalidSubscriptionOptions         | 3.1.1 MQTT-3.8.3-4; 5.0 MQTT-3.8.3-5              |
//! | D12 | packet identifier 0 in PUBACK/SUBSCRIBE/UNSUBSCRIBE      | accepts                               | ZeroPacketId                       | 3.1.1 MQTT-2.3.1-1; 5.0 MQTT-2.2.1-3              |
//! | D13 | topic filters `a/#/b`, `a+` in SUBSCRIBE                 | accepts                               | InvalidTopicFilter                 | MQTT-4.7.1-2, MQTT-4.7.1-3                        |
//! | D14 | 3.1.1 PUBACK/DISCONNECT/PINGREQ with extra bytes          | accepts, ignores them                 | TrailingBytes                      | 3.1.1 §3.4.1 (RL 2), §3.14.1 / §3.12.1 (RL 0)     |
//! | D15 | CONNACK acknowledge flags bits 7-1 set                   | accepts                               | InvalidConnAckFlags                | 3.1.1 §3.2.2.1; 5.0 §3.2.2.1 MQTT-3.2.2-1         |
//! | D16 | U+0000 in a UTF-8 string (topic)                         | accepts                               | InvalidUtf8                        | 3.1.1 MQTT-1.5.3-2; 5.0 MQTT-1.5.4-2              |
//! | D17 | v5 property rules: duplicates, Receive Maximum 0, Maximum Packet Size 0, Topic Alias 0, Subscription Identifier 0, Request Problem Information 2, Maximum QoS 2, two Subscription Identifiers in SUBSCRIBE | accepts | rejects (0x82, 0x94) | 5.0 §3.3.2.3.9, §3.1.2.11.3, §3.1.2.11.4, §3.3.2.3.4, §3.3.2.3.8, §3.1.2.11.7, §3.2.2.3.4, §3.8.2.1.2 |
//! | D18 | v5 AUTH (`F0 00`)                                        | Err(InvalidPacketType(15))            | AUTH, Success                      | 5.0 §3.15                                         |
//! | D19 | maximum packet size = remaining length                   | accepts (limits remaining length)     | PacketTooLarge (limits whole frame)| 5.0 §3.1.2.11.4, §2.1.4 (packet size = all bytes) |
//! | D20 | topic helpers: `matches("$SYS/#", "$SYS/x")`, `a+` as a filter, `""` as a name | no match; valid; valid | match; invalid; invalid | 5.0 §4.7.2; MQTT-4.7.1-3; MQTT-4.7.3-1 |
//! | D21 | 3.1 CONNECT (`MQIsdp`, level 3)                          | Err(InvalidProtocol)                  | Protocol::V31 (by design)          | not a spec disagreement: 3.1 predates OASIS       |
//! | D22 | v5 PUBLISH with several Subscription Identifiers followed by another property | counts 1 + len per identifier after counting its id byte, so the last property lands in the payload | all properties read | 5.0 §2.2.2.1 (Property Length), §3.3.2.3.8, §1.5.5 |

mod common;

use bytes::{Bytes, BytesMut};
use common::*;
use mote_codec::{decode, topic, DecodeError, Packet, Protocol, QoS, RetainHandling};
use mqttbytes::{v4, v5};
use proptest::prelude::*;
use std::convert::TryFrom;

// ---------------------------------------------------------------------------------------
// Model -> mqttbytes
// ---------------------------------------------------------------------------------------

fn mqos(q: QoS) -> mqttbytes::QoS {
    match q {
        QoS::AtMostOnce => mqttbytes::QoS::AtMostOnce,
        QoS::AtLeastOnce => mqttbytes::QoS::AtLeastOnce,
        QoS::ExactlyOnce => mqttbytes::QoS::ExactlyOnce,
    }
}

fn bytes_of(v: &Option<Vec<u8>>) -> Option<Bytes> {
    v.as_ref().map(|b| Bytes::from(b.clone()))
}

fn flag(v: Option<bool>) -> Option<u8> {
    v.map(u8::from)
}

/// mqttbytes' login: strings, empty meaning absent.
fn login(c: &OConnect) -> Option<(String, String)> {
    if c.username.is_none() && c.password.is_none() {
        return None;
    }
    let password = c
        .password
        .as_ref()
        .map(|p| String::from_utf8(p.clone()).unwrap())
        .unwrap_or_default();
    Some((c.username.clone().unwrap_or_default(), password))
}

fn v4_connack_code(code: u8) -> v4::ConnectReturnCode {
    use v4::ConnectReturnCode::*;
    let c = match code {
        0 => Success,
        1 => RefusedProtocolVersion,
        2 => BadClientId,
        3 => ServiceUnavailable,
        4 => BadUserNamePassword,
        5 => NotAuthorized,
        _ => panic!("no 3.1.1 CONNACK code {code}"),
    };
    assert_eq!(c as u8, code);
    c
}

fn v5_connack_code(code: u8) -> v5::ConnectReturnCode {
    use v5::ConnectReturnCode::*;
    let c = match code {
        0x00 => Success,
        0x80 => UnspecifiedError,
        0x81 => MalformedPacket,
        0x82 => ProtocolError,
        0x83 => ImplementationSpecificError,
        0x84 => UnsupportedProtocolVersion,
        0x85 => ClientIdentifierNotValid,
        0x86 => BadUserNamePassword,
        0x87 => NotAuthorized,
        0x88 => ServerUnavailable,
        0x89 => ServerBusy,
        0x8A => Banned,
        0x8C => BadAuthenticationMethod,
        0x90 => TopicNameInvalid,
        0x95 => PacketTooLarge,
        0x97 => QuotaExceeded,
        0x99 => PayloadFormatInvalid,
        0x9A => RetainNotSupported,
        0x9B => QoSNotSupported,
        0x9C => UseAnotherServer,
        0x9D => ServerMoved,
        0x9F => ConnectionRateExceeded,
        _ => panic!("no v5 CONNACK code {code:#04x}"),
    };
    assert_eq!(c as u8, code);
    c
}

macro_rules! puback_like_reason {
    ($fn:ident, $ty:ty) => {
        fn $fn(code: u8) -> $ty {
            use $ty as R;
            let r = match code {
                0x00 => R::Success,
                0x10 => R::NoMatchingSubscribers,
                0x80 => R::UnspecifiedError,
                0x83 => R::ImplementationSpecificError,
                0x87 => R::NotAuthorized,
                0x90 => R::TopicNameInvalid,
                0x91 => R::PacketIdentifierInUse,
                0x97 => R::QuotaExceeded,
                0x99 => R::PayloadFormatInvalid,
                _ => panic!("no PUBACK/PUBREC reason {code:#04x}"),
            };
            assert_eq!(r as u8, code);
            r
        }
    };
}
puback_like_reason!(puback_reason, v5::PubAckReason);
puback_like_reason!(pubrec_reason, v5::PubRecReason);

macro_rules! pubrel_like_reason {
    ($fn:ident, $ty:ty) => {
        fn $fn(code: u8) -> $ty {
            use $ty as R;
            let r = match code {
                0x00 => R::Success,
                0x92 => R::PacketIdentifierNotFound,
                _ => panic!("no PUBREL/PUBCOMP reason {code:#04x}"),
            };
            assert_eq!(r as u8, code);
            r
        }
    };
}
pubrel_like_reason!(pubrel_reason, v5::PubRelReason);
pubrel_like_reason!(pubcomp_reason, v5::PubCompReason);

fn unsuback_reason(code: u8) -> v5::UnsubAckReason {
    use v5::UnsubAckReason::*;
    let r = match code {
        0x00 => Success,
        0x11 => NoSubscriptionExisted,
        0x80 => UnspecifiedError,
        0x83 => ImplementationSpecificError,
        0x87 => NotAuthorized,
        0x8F => TopicFilterInvalid,
        0x91 => PacketIdentifierInUse,
        _ => panic!("no UNSUBACK reason {code:#04x}"),
    };
    assert_eq!(r as u8, code);
    r
}

/// The mqttbytes 3.1.1 packet for the same content.
fn to_v4(op: &OPacket) -> v4::Packet {
    match op {
        OPacket::Connect(c) => v4::Packet::Connect(v4::Connect {
            protocol: mqttbytes::Protocol::V4,
            keep_alive: c.keep_alive,
            client_id: c.client_id.clone(),
            clean_session: c.clean_start,
            last_will: c.will.as_ref().map(|w| v4::LastWill {
                topic: w.topic.clone(),
                message: Bytes::from(w.payload.clone()),
                qos: mqos(w.qos),
                retain: w.retain,
            }),
            login: login(c).map(|(username, password)| v4::Login { username, password }),
        }),
        OPacket::ConnAck {
            session_present,
            code,
            ..
        } => v4::Packet::ConnAck(v4::ConnAck {
            session_present: *session_present,
            code: v4_connack_code(*code),
        }),
        OPacket::Publish(p) => v4::Packet::Publish(v4::Publish {
            dup: p.dup,
            qos: mqos(p.qos),
            retain: p.retain,
            topic: p.topic.clone(),
            pkid: p.packet_id,
            payload: Bytes::from(p.payload.clone()),
        }),
        OPacket::PubAck(a) => v4::Packet::PubAck(v4::PubAck { pkid: a.packet_id }),
        OPacket::PubRec(a) => v4::Packet::PubRec(v4::PubRec { pkid: a.packet_id }),
        OPacket::PubRel(a) => v4::Packet::PubRel(v4::PubRel { pkid: a.packet_id }),
        OPacket::PubComp(a) => v4::Packet::PubComp(v4::PubComp { pkid: a.packet_id }),
        OPacket::Subscribe {
            packet_id, filters, ..
        } => v4::Packet::Subscribe(v4::Subscribe {
            pkid: *packet_id,
            filters: filters
                .iter()
                .map(|(f, o)| v4::SubscribeFilter::new(f.clone(), mqos(o.qos)))
                .collect(),
        }),
        OPacket::SubAck {
            packet_id, codes, ..
        } => v4::Packet::SubAck(v4::SubAck {
            pkid: *packet_id,
            return_codes: codes
                .iter()
                .map(|&c| v4::SubscribeReasonCode::try_from(c).unwrap())
                .collect(),
        }),
        OPacket::Unsubscribe {
            packet_id, filters, ..
        } => v4::Packet::Unsubscribe(v4::Unsubscribe {
            pkid: *packet_id,
            topics: filters.clone(),
        }),
        OPacket::UnsubAck { packet_id, .. } => {
            v4::Packet::UnsubAck(v4::UnsubAck { pkid: *packet_id })
        }
        OPacket::PingReq => v4::Packet::PingReq,
        OPacket::PingResp => v4::Packet::PingResp,
        OPacket::Disconnect { .. } => v4::Packet::Disconnect,
        OPacket::Auth { .. } => panic!("no AUTH in 3.1.1"),
    }
}

fn write_v4(p: &v4::Packet) -> Vec<u8> {
    let mut b = BytesMut::new();
    match p {
        v4::Packet::Connect(x) => x.write(&mut b),
        v4::Packet::ConnAck(x) => x.write(&mut b),
        v4::Packet::Publish(x) => x.write(&mut b),
        v4::Packet::PubAck(x) => x.write(&mut b),
        v4::Packet::PubRec(x) => x.write(&mut b),
        v4::Packet::PubRel(x) => x.write(&mut b),
        v4::Packet::PubComp(x) => x.write(&mut b),
        v4::Packet::Subscribe(x) => x.write(&mut b),
        v4::Packet::SubAck(x) => x.write(&mut b),
        v4::Packet::Unsubscribe(x) => x.write(&mut b),
        v4::Packet::UnsubAck(x) => x.write(&mut b),
        v4::Packet::PingReq => v4::PingReq.write(&mut b),
        v4::Packet::PingResp => v4::PingResp.write(&mut b),
        v4::Packet::Disconnect => v4::Disconnect.write(&mut b),
    }
    .unwrap();
    b.to_vec()
}

fn read_v4(bytes: &[u8]) -> Result<v4::Packet, mqttbytes::Error> {
    let mut b = BytesMut::from(bytes);
    let p = v4::read(&mut b, usize::MAX)?;
    assert!(b.is_empty(), "mqttbytes left {} bytes", b.len());
    Ok(p)
}

fn none_if_empty<T>(props: &OProps, f: impl FnOnce(&OProps) -> T) -> Option<T> {
    if props.is_empty() {
        None
    } else {
        Some(f(props))
    }
}

fn connect_props_v5(p: &OProps) -> v5::ConnectProperties {
    v5::ConnectProperties {
        session_expiry_interval: p.session_expiry_interval,
        receive_maximum: p.receive_maximum,
        max_packet_size: p.maximum_packet_size,
        topic_alias_max: p.topic_alias_maximum,
        request_response_info: flag(p.request_response_information),
        request_problem_info: flag(p.request_problem_information),
        user_properties: p.user_properties.clone(),
        authentication_method: p.authentication_method.clone(),
        authentication_data: bytes_of(&p.authentication_data),
    }
}

fn will_props_v5(p: &OProps) -> v5::WillProperties {
    v5::WillProperties {
        delay_interval: p.will_delay_interval,
        payload_format_indicator: p.payload_format_indicator,
        message_expiry_interval: p.message_expiry_interval,
        content_type: p.content_type.clone(),
        response_topic: p.response_topic.clone(),
        correlation_data: bytes_of(&p.correlation_data),
        user_properties: p.user_properties.clone(),
    }
}

fn connack_props_v5(p: &OProps) -> v5::ConnAckProperties {
    v5::ConnAckProperties {
        session_expiry_interval: p.session_expiry_interval,
        receive_max: p.receive_maximum,
        max_qos: p.maximum_qos,
        retain_available: flag(p.retain_available),
        max_packet_size: p.maximum_packet_size,
        assigned_client_identifier: p.assigned_client_identifier.clone(),
        topic_alias_max: p.topic_alias_maximum,
        reason_string: p.reason_string.clone(),
        user_properties: p.user_properties.clone(),
        wildcard_subscription_available: flag(p.wildcard_subscription_available),
        subscription_identifiers_available: flag(p.subscription_identifier_available),
        shared_subscription_available: flag(p.shared_subscription_available),
        server_keep_alive: p.server_keep_alive,
        response_information: p.response_information.clone(),
        server_reference: p.server_reference.clone(),
        authentication_method: p.authentication_method.clone(),
        authentication_data: bytes_of(&p.authentication_data),
    }
}

fn publish_props_v5(p: &OProps) -> v5::PublishProperties {
    v5::PublishProperties {
        payload_format_indicator: p.payload_format_indicator,
        message_expiry_interval: p.message_expiry_interval,
        topic_alias: p.topic_alias,
        response_topic: p.response_topic.clone(),
        correlation_data: bytes_of(&p.correlation_data),
        user_properties: p.user_properties.clone(),
        subscription_identifiers: p
            .subscription_identifiers
            .iter()
            .map(|&i| i as usize)
            .collect(),
        content_type: p.content_type.clone(),
    }
}

macro_rules! reason_props {
    ($fn:ident, $ty:ident) => {
        fn $fn(p: &OProps) -> v5::$ty {
            v5::$ty {
                reason_string: p.reason_string.clone(),
                user_properties: p.user_properties.clone(),
            }
        }
    };
}
reason_props!(puback_props, PubAckProperties);
reason_props!(pubrec_props, PubRecProperties);
reason_props!(pubrel_props, PubRelProperties);
reason_props!(pubcomp_props, PubCompProperties);
reason_props!(suback_props, SubAckProperties);
reason_props!(unsuback_props, UnsubAckProperties);

fn retain_rule(rh: RetainHandling) -> v5::RetainForwardRule {
    match rh {
        RetainHandling::SendAtSubscribe => v5::RetainForwardRule::OnEverySubscribe,
        RetainHandling::SendIfNew => v5::RetainForwardRule::OnNewSubscribe,
        RetainHandling::DoNotSend => v5::RetainForwardRule::Never,
    }
}

/// The mqttbytes 5.0 packet for the same content.
fn to_v5(op: &OPacket) -> v5::Packet {
    match op {
        OPacket::Connect(c) => v5::Packet::Connect(v5::Connect {
            protocol: mqttbytes::Protocol::V5,
            keep_alive: c.keep_alive,
            client_id: c.client_id.clone(),
            clean_session: c.clean_start,
            last_will: c.will.as_ref().map(|w| v5::LastWill {
                topic: w.topic.clone(),
                message: Bytes::from(w.payload.clone()),
                qos: mqos(w.qos),
                retain: w.retain,
                properties: none_if_empty(&w.props, will_props_v5),
            }),
            login: login(c).map(|(username, password)| v5::Login { username, password }),
            properties: none_if_empty(&c.props, connect_props_v5),
        }),
        OPacket::ConnAck {
            session_present,
            code,
            props,
        } => v5::Packet::ConnAck(v5::ConnAck {
            session_present: *session_present,
            code: v5_connack_code(*code),
            properties: none_if_empty(props, connack_props_v5),
        }),
        OPacket::Publish(p) => v5::Packet::Publish(v5::Publish {
            dup: p.dup,
            qos: mqos(p.qos),
            retain: p.retain,
            topic: p.topic.clone(),
            pkid: p.packet_id,
            properties: none_if_empty(&p.props, publish_props_v5),
            payload: Bytes::from(p.payload.clone()),
        }),
        OPacket::PubAck(a) => v5::Packet::PubAck(v5::PubAck {
            pkid: a.packet_id,
            reason: puback_reason(a.reason),
            properties: none_if_empty(&a.props, puback_props),
        }),
        OPacket::PubRec(a) => v5::Packet::PubRec(v5::PubRec {
            pkid: a.packet_id,
            reason: pubrec_reason(a.reason),
            properties: none_if_empty(&a.props, pubrec_props),
        }),
        OPacket::PubRel(a) => v5::Packet::PubRel(v5::PubRel {
            pkid: a.packet_id,
            reason: pubrel_reason(a.reason),
            properties: none_if_empty(&a.props, pubrel_props),
        }),
        OPacket::PubComp(a) => v5::Packet::PubComp(v5::PubComp {
            pkid: a.packet_id,
            reason: pubcomp_reason(a.reason),
            properties: none_if_empty(&a.props, pubcomp_props),
        }),
        OPacket::Subscribe {
            packet_id,
            props,
            filters,
        } => v5::Packet::Subscribe(v5::Subscribe {
            pkid: *packet_id,
            filters: filters
                .iter()
                .map(|(f, o)| v5::SubscribeFilter {
                    path: f.clone(),
                    qos: mqos(o.qos),
                    nolocal: o.no_local,
                    preserve_retain: o.retain_as_published,
                    retain_forward_rule: retain_rule(o.retain_handling),
                })
                .collect(),
            properties: none_if_empty(props, |p| v5::SubscribeProperties {
                id: p.subscription_identifiers.first().map(|&i| i as usize),
                user_properties: p.user_properties.clone(),
            }),
        }),
        OPacket::SubAck {
            packet_id,
            props,
            codes,
        } => v5::Packet::SubAck(v5::SubAck {
            pkid: *packet_id,
            return_codes: codes
                .iter()
                .map(|&c| v5::SubscribeReasonCode::try_from(c).unwrap())
                .collect(),
            properties: none_if_empty(props, suback_props),
        }),
        OPacket::Unsubscribe {
            packet_id,
            props,
            filters,
        } => v5::Packet::Unsubscribe(v5::Unsubscribe {
            pkid: *packet_id,
            filters: filters.clone(),
            properties: none_if_empty(props, |p| v5::UnsubscribeProperties {
                user_properties: p.user_properties.clone(),
            }),
        }),
        OPacket::UnsubAck {
            packet_id,
            props,
            codes,
        } => v5::Packet::UnsubAck(v5::UnsubAck {
            pkid: *packet_id,
            reasons: codes.iter().map(|&c| unsuback_reason(c)).collect(),
            properties: none_if_empty(props, unsuback_props),
        }),
        OPacket::PingReq => v5::Packet::PingReq,
        OPacket::PingResp => v5::Packet::PingResp,
        OPacket::Disconnect { reason, props } => v5::Packet::Disconnect(v5::Disconnect {
            reason_code: v5::DisconnectReasonCode::try_from(*reason).unwrap(),
            properties: none_if_empty(props, |p| v5::DisconnectProperties {
                session_expiry_interval: p.session_expiry_interval,
                reason_string: p.reason_string.clone(),
                user_properties: p.user_properties.clone(),
                server_reference: p.server_reference.clone(),
            }),
        }),
        OPacket::Auth { .. } => panic!("mqttbytes 0.6 has no AUTH"),
    }
}

fn write_v5(p: &v5::Packet) -> Vec<u8> {
    let mut b = BytesMut::new();
    match p {
        v5::Packet::Connect(x) => x.write(&mut b),
        v5::Packet::ConnAck(x) => x.write(&mut b),
        v5::Packet::Publish(x) => x.write(&mut b),
        v5::Packet::PubAck(x) => x.write(&mut b),
        v5::Packet::PubRec(x) => x.write(&mut b),
        v5::Packet::PubRel(x) => x.write(&mut b),
        v5::Packet::PubComp(x) => x.write(&mut b),
        v5::Packet::Subscribe(x) => x.write(&mut b),
        v5::Packet::SubAck(x) => x.write(&mut b),
        v5::Packet::Unsubscribe(x) => x.write(&mut b),
        v5::Packet::UnsubAck(x) => x.write(&mut b),
        v5::Packet::PingReq => v5::PingReq.write(&mut b),
        v5::Packet::PingResp => v5::PingResp.write(&mut b),
        v5::Packet::Disconnect(x) => x.write(&mut b),
    }
    .unwrap();
    b.to_vec()
}

fn read_v5(bytes: &[u8]) -> Result<v5::Packet, mqttbytes::Error> {
    let mut b = BytesMut::from(bytes);
    let p = v5::read(&mut b, usize::MAX)?;
    assert!(b.is_empty(), "mqttbytes left {} bytes", b.len());
    Ok(p)
}

// ---------------------------------------------------------------------------------------
// Strategies: valid packets both libraries can represent
// ---------------------------------------------------------------------------------------

/// Adjusts a valid packet into the subset mqttbytes can represent (see the module doc);
/// `None` for AUTH, which mqttbytes lacks.
fn representable(op: OPacket) -> Option<OPacket> {
    match op {
        OPacket::Auth { .. } => None,
        OPacket::Connect(mut c) => {
            if c.protocol == Protocol::V31 {
                c.protocol = Protocol::V311;
            }
            if let Some(u) = c.username.as_mut().filter(|u| u.is_empty()) {
                *u = "user".to_string();
            }
            c.password = c.password.take().map(|p| {
                let s = String::from_utf8_lossy(&p).into_owned();
                if s.is_empty() {
                    b"pw".to_vec()
                } else {
                    s.into_bytes()
                }
            });
            Some(OPacket::Connect(c))
        }
        other => Some(other),
    }
}

fn shared(proto: Protocol) -> impl Strategy<Value = OPacket> {
    packet(proto).prop_filter_map("not representable in mqttbytes", representable)
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// mqttbytes miscounts each Subscription Identifier by one byte (D22), which is harmless
/// with one identifier and loses trailing properties with several.
fn mqttbytes_v5_misreads(op: &OPacket) -> bool {
    matches!(op, OPacket::Publish(p) if p.props.subscription_identifiers.len() >= 2)
}

/// mqttbytes cannot decode a v5 DISCONNECT of remaining length 0 or 1 (D01, D02).
fn mqttbytes_v5_cannot_read(bytes: &[u8]) -> bool {
    bytes.first() == Some(&0xE0) && bytes.get(1).is_some_and(|&rl| rl < 2)
}

proptest! {
    #![proptest_config(config())]

    /// 3.1.1: mote's bytes decode in mqttbytes to the same packet, and are the very
    /// bytes mqttbytes writes.
    #[test]
    fn v311_mote_encodes_mqttbytes_decodes(op in shared(Protocol::V311)) {
        let bytes = op.with(|p| encode(p, Protocol::V311));
        let expected = to_v4(&op);
        prop_assert_eq!(&write_v4(&expected), &bytes);
        prop_assert_eq!(read_v4(&bytes).unwrap(), expected);
    }

    /// 3.1.1: mqttbytes' bytes decode in mote to the same packet.
    #[test]
    fn v311_mqttbytes_encodes_mote_decodes(op in shared(Protocol::V311)) {
        let bytes = write_v4(&to_v4(&op));
        for proto in [Protocol::V311, Protocol::V31] {
            let got = decode_full(&bytes, proto);
            op.with(|p| assert_eq!(&got, p));
        }
    }

    /// 5.0: mote's bytes decode in mqttbytes to the same packet (except the DISCONNECT
    /// short forms mqttbytes cannot read, D01/D02, checked to be exactly those).
    #[test]
    fn v5_mote_encodes_mqttbytes_decodes(op in shared(Protocol::V5)) {
        let bytes = op.with(|p| encode(p, Protocol::V5));
        match read_v5(&bytes) {
            Ok(got) if mqttbytes_v5_misreads(&op) => {
                // D22: with several Subscription Identifiers mqttbytes may leave the
                // last property in the payload; check it at least got the identifiers
                // it did read right.
                let (v5::Packet::Publish(got), v5::Packet::Publish(want)) = (got, to_v5(&op))
                else {
                    panic!("not a PUBLISH")
                };
                let got_ids = got.properties.map(|p| p.subscription_identifiers).unwrap_or_default();
                let want_ids = want.properties.map(|p| p.subscription_identifiers).unwrap_or_default();
                prop_assert!(want_ids.starts_with(&got_ids));
            }
            Ok(got) => prop_assert_eq!(got, to_v5(&op)),
            Err(e) => prop_assert!(
                mqttbytes_v5_cannot_read(&bytes),
                "mqttbytes rejects {:02X?}: {:?}", bytes, e
            ),
        }
    }

    /// 5.0: mqttbytes' bytes decode in mote to the same packet; both are minimal, so the
    /// lengths agree. (A property-less CONNACK is written with an explicit empty property
    /// block: mqttbytes' `None` omits the mandatory Property Length, D03.)
    #[test]
    fn v5_mqttbytes_encodes_mote_decodes(op in shared(Protocol::V5)) {
        let mut m = to_v5(&op);
        if let v5::Packet::ConnAck(c) = &mut m {
            c.properties.get_or_insert_with(v5::ConnAckProperties::new);
        }
        let bytes = write_v5(&m);
        let got = decode_full(&bytes, Protocol::V5);
        op.with(|p| {
            assert_eq!(&got, p);
            assert_eq!(bytes.len(), p.encoded_len(Protocol::V5));
        });
    }

    /// Topic helpers agree with mqttbytes' except in the documented cases (D20).
    #[test]
    fn topic_helpers_agree(filter in "[ab/+#$]{0,6}", name in "[ab/$]{0,5}") {
        let (mote_ok, mqtt_ok) = (topic::is_valid_filter(&filter), mqttbytes::valid_filter(&filter));
        if mote_ok {
            prop_assert!(mqtt_ok, "{filter:?}");
        } else if mqtt_ok {
            // D20: mqttbytes does not check that `+` is a whole level (MQTT-4.7.1-3).
            prop_assert!(
                filter.split('/').any(|l| l.contains('+') && l != "+"),
                "{filter:?}"
            );
        }
        // D20: mqttbytes accepts the empty topic name (MQTT-4.7.3-1).
        prop_assert_eq!(topic::is_valid_name(&name), mqttbytes::valid_topic(&name) && !name.is_empty());
        if mote_ok && topic::is_valid_name(&name) {
            let (a, b) = (topic::matches(&filter, &name), mqttbytes::matches(&name, &filter));
            if name.starts_with('$') {
                // D20: mqttbytes never matches a `$` topic; the spec only excludes
                // filters that start with a wildcard (§4.7.2).
                prop_assert!(!b);
                let starts_wild = filter.starts_with('+') || filter.starts_with('#');
                prop_assert!(!(a && starts_wild));
            } else {
                prop_assert_eq!(a, b, "filter {:?} name {:?}", filter, name);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Disagreements: mote follows the specification
// ---------------------------------------------------------------------------------------

fn err(bytes: &[u8], proto: Protocol) -> DecodeError {
    decode_err(bytes, proto)
}

/// D01 — 5.0 §3.14.2.1: "The Reason Code and Property Length can be omitted if the
/// Reason Code is 0x00 (Normal disconnection) and there are no Properties. In this case
/// the DISCONNECT has a Remaining Length of 0."
#[test]
fn d01_v5_disconnect_remaining_length_0() {
    assert_eq!(
        read_v5(&[0xE0, 0x00]),
        Err(mqttbytes::Error::PayloadRequired)
    );
    assert_eq!(
        decode_full(&[0xE0, 0x00], Protocol::V5),
        Packet::Disconnect(mote_codec::Disconnect::new(0))
    );
}

/// D02 — 5.0 §3.14.2.2.1: "If the Remaining Length is less than 2, a value of 0 is used"
/// for the property length.
#[test]
fn d02_v5_disconnect_reason_without_property_length() {
    assert_eq!(
        read_v5(&[0xE0, 0x01, 0x8E]),
        Err(mqttbytes::Error::InsufficientBytes(1))
    );
    assert_eq!(
        decode_full(&[0xE0, 0x01, 0x8E], Protocol::V5),
        Packet::Disconnect(mote_codec::Disconnect::new(0x8E))
    );
}

/// D03 — 5.0 §3.2.2.3.1: the CONNACK variable header holds a Property Length (0 when
/// there are no properties). mqttbytes writes none for `properties: None` and cannot
/// read its own output back.
#[test]
fn d03_v5_connack_without_property_length() {
    let bytes = write_v5(&v5::Packet::ConnAck(v5::ConnAck::new(
        v5::ConnectReturnCode::Success,
        false,
    )));
    assert_eq!(bytes, [0x20, 0x02, 0x00, 0x00]);
    assert!(read_v5(&bytes).is_err());
    assert_eq!(err(&bytes, Protocol::V5), DecodeError::UnexpectedEnd);
    // With the property length, both agree.
    let ok = [0x20, 0x03, 0x00, 0x00, 0x00];
    assert!(matches!(read_v5(&ok), Ok(v5::Packet::ConnAck(_))));
    assert!(matches!(decode_full(&ok, Protocol::V5), Packet::ConnAck(_)));
}

/// D04 — 3.1.1 §3.1.2.9, MQTT-3.1.2-22: "If the User Name Flag is set to 0, the Password
/// Flag MUST be set to 0."
#[test]
fn d04_v311_password_without_username() {
    let mut c = v4::Connect::new("c");
    c.login = Some(v4::Login::new("", "pw"));
    let bytes = write_v4(&v4::Packet::Connect(c));
    assert_eq!(bytes[9], 0x42, "flags: password + clean session");
    assert!(matches!(read_v4(&bytes), Ok(v4::Packet::Connect(_))));
    assert_eq!(
        err(&bytes, Protocol::V311),
        DecodeError::InvalidConnectFlags(0x42)
    );
}

/// D05 — 3.1.1 §2.2.2 (MQTT-2.2.2-1, -2) and 5.0 §2.1.3 (MQTT-2.1.3-1): reserved flag
/// bits must have the listed values; otherwise the packet is malformed.
#[test]
fn d05_reserved_fixed_header_flags() {
    let cases: [(&[u8], u8, u8); 6] = [
        (&[0x80, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x00], 8, 0),
        (&[0x60, 0x02, 0x00, 0x01], 6, 0),
        (&[0xA0, 0x05, 0x00, 0x01, 0x00, 0x01, b'a'], 10, 0),
        (&[0x41, 0x02, 0x00, 0x01], 4, 1),
        (&[0x2F, 0x02, 0x00, 0x00], 2, 15),
        (&[0xB4, 0x02, 0x00, 0x01], 11, 4),
    ];
    for (bytes, packet_type, flags) in cases {
        assert!(read_v4(bytes).is_ok(), "mqttbytes v4 accepts {bytes:02X?}");
        assert_eq!(
            err(bytes, Protocol::V311),
            DecodeError::InvalidHeaderFlags { packet_type, flags }
        );
    }
    let v5_subscribe = [0x80, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b'a', 0x00];
    assert!(read_v5(&v5_subscribe).is_ok());
    assert_eq!(
        err(&v5_subscribe, Protocol::V5),
        DecodeError::InvalidHeaderFlags {
            packet_type: 8,
            flags: 0
        }
    );
}

/// D06 — MQTT-3.1.2-3: the reserved CONNECT flag must be 0 (5.0: else malformed).
#[test]
fn d06_connect_reserved_flag() {
    let bytes = frame(
        0x10,
        &[
            0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x03, 0x00, 0x3C, 0x00, 0x00,
        ],
    );
    assert!(read_v4(&bytes).is_ok());
    assert_eq!(
        err(&bytes, Protocol::V311),
        DecodeError::InvalidConnectFlags(0x03)
    );
}

/// D07 — MQTT-3.3.1-2: "The DUP flag MUST be set to 0 for all QoS 0 messages."
#[test]
fn d07_dup_on_qos0() {
    let bytes = [0x38, 0x03, 0x00, 0x01, b'a'];
    assert!(read_v4(&bytes).is_ok());
    assert_eq!(err(&bytes, Protocol::V311), DecodeError::DupOnQoS0);
}

/// D08 — MQTT-3.3.2-2: no wildcards in a topic name; MQTT-4.7.3-1: topic names are at
/// least one character; 5.0 §3.3.2.1: empty without a Topic Alias is a Protocol Error.
#[test]
fn d08_invalid_topic_names() {
    for bytes in [
        &[0x30, 0x05, 0x00, 0x03, b'a', b'/', b'+'][..],
        &[0x30, 0x03, 0x00, 0x01, b'#'][..],
        &[0x30, 0x02, 0x00, 0x00][..],
    ] {
        assert!(read_v4(bytes).is_ok(), "{bytes:02X?}");
        assert_eq!(err(bytes, Protocol::V311), DecodeError::InvalidTopicName);
    }
    let v5_empty = [0x30, 0x03, 0x00, 0x00, 0x00];
    assert!(read_v5(&v5_empty).is_ok());
    assert_eq!(err(&v5_empty, Protocol::V5), DecodeError::InvalidTopicName);
}

/// D09 — 3.1.1 MQTT-3.8.3-3 ("at least one Topic Filter"); 5.0 §3.8.3 ("A SUBSCRIBE
/// packet with no Payload is a Protocol Error").
#[test]
fn d09_subscribe_without_filters() {
    let v4 = [0x82, 0x02, 0x00, 0x01];
    assert!(matches!(read_v4(&v4), Ok(v4::Packet::Subscribe(s)) if s.filters.is_empty()));
    assert_eq!(err(&v4, Protocol::V311), DecodeError::NoTopicFilter);
    let v5 = [0x82, 0x03, 0x00, 0x01, 0x00];
    assert!(matches!(read_v5(&v5), Ok(v5::Packet::Subscribe(s)) if s.filters.is_empty()));
    assert_eq!(err(&v5, Protocol::V5), DecodeError::NoTopicFilter);
}

/// D10 — 3.1.1 MQTT-3.10.3-2; 5.0 §3.10.3 ("An UNSUBSCRIBE packet with no Payload is a
/// Protocol Error").
#[test]
fn d10_unsubscribe_without_filters() {
    let v4 = [0xA2, 0x02, 0x00, 0x01];
    assert!(matches!(read_v4(&v4), Ok(v4::Packet::Unsubscribe(u)) if u.topics.is_empty()));
    assert_eq!(err(&v4, Protocol::V311), DecodeError::NoTopicFilter);
    let v5 = [0xA2, 0x03, 0x00, 0x01, 0x00];
    assert!(matches!(read_v5(&v5), Ok(v5::Packet::Unsubscribe(u)) if u.filters.is_empty()));
    assert_eq!(err(&v5, Protocol::V5), DecodeError::NoTopicFilter);
}

/// D11 — 3.1.1 MQTT-3.8.3-4 and 5.0 MQTT-3.8.3-5: reserved bits of the subscription
/// options must be 0, else the packet is malformed.
#[test]
fn d11_subscription_options_reserved_bits() {
    let v4 = [0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0xFD];
    assert!(read_v4(&v4).is_ok());
    assert_eq!(
        err(&v4, Protocol::V311),
        DecodeError::InvalidSubscriptionOptions(0xFD)
    );
    let v5 = [0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b'a', 0xC1];
    assert!(read_v5(&v5).is_ok());
    assert_eq!(
        err(&v5, Protocol::V5),
        DecodeError::InvalidSubscriptionOptions(0xC1)
    );
}

/// D12 — 3.1.1 MQTT-2.3.1-1, 5.0 MQTT-2.2.1-3: SUBSCRIBE, UNSUBSCRIBE and PUBLISH
/// (QoS > 0) carry a non-zero packet identifier; acknowledgements echo one.
#[test]
fn d12_zero_packet_identifier() {
    for bytes in [
        &[0x40, 0x02, 0x00, 0x00][..],
        &[0x82, 0x06, 0x00, 0x00, 0x00, 0x01, b'a', 0x00][..],
        &[0xA2, 0x05, 0x00, 0x00, 0x00, 0x01, b'a'][..],
    ] {
        assert!(read_v4(bytes).is_ok(), "{bytes:02X?}");
        assert_eq!(err(bytes, Protocol::V311), DecodeError::ZeroPacketId);
    }
    // Both reject it in PUBLISH.
    let publish = [0x32, 0x05, 0x00, 0x01, b'a', 0x00, 0x00];
    assert_eq!(read_v4(&publish), Err(mqttbytes::Error::PacketIdZero));
    assert_eq!(err(&publish, Protocol::V311), DecodeError::ZeroPacketId);
}

/// D13 — MQTT-4.7.1-2 (`#` last, a whole level) and MQTT-4.7.1-3 (`+` a whole level).
#[test]
fn d13_invalid_topic_filters() {
    for filter in [&b"a/#/b"[..], b"a+", b"#a"] {
        let mut body = vec![0x00, 0x01];
        body.extend_from_slice(&lp(filter));
        body.push(0x00);
        let bytes = frame(0x82, &body);
        assert!(read_v4(&bytes).is_ok(), "{filter:?}");
        assert_eq!(err(&bytes, Protocol::V311), DecodeError::InvalidTopicFilter);
    }
}

/// D14 — 3.1.1 §3.4.1 (PUBACK remaining length 2), §3.14.1 and §3.12.1 (DISCONNECT,
/// PINGREQ remaining length 0).
#[test]
fn d14_trailing_bytes_v311() {
    let cases: [(&[u8], usize); 3] = [
        (&[0x40, 0x03, 0x00, 0x01, 0x00], 1),
        (&[0xE0, 0x01, 0x00], 1),
        (&[0xC0, 0x02, 0x00, 0x00], 2),
    ];
    for (bytes, extra) in cases {
        assert!(read_v4(bytes).is_ok(), "{bytes:02X?}");
        assert_eq!(
            err(bytes, Protocol::V311),
            DecodeError::TrailingBytes(extra)
        );
    }
}

/// D15 — 3.1.1 §3.2.2.1 and 5.0 §3.2.2.1 (MQTT-3.2.2-1): CONNACK flag bits 7-1 are
/// reserved and must be 0.
#[test]
fn d15_connack_reserved_flags() {
    let v4 = [0x20, 0x02, 0x02, 0x00];
    assert_eq!(
        read_v4(&v4),
        Ok(v4::Packet::ConnAck(v4::ConnAck::new(
            v4::ConnectReturnCode::Success,
            false
        )))
    );
    assert_eq!(
        err(&v4, Protocol::V311),
        DecodeError::InvalidConnAckFlags(0x02)
    );
    let v5 = [0x20, 0x03, 0x80, 0x00, 0x00];
    assert!(read_v5(&v5).is_ok());
    assert_eq!(
        err(&v5, Protocol::V5),
        DecodeError::InvalidConnAckFlags(0x80)
    );
}

/// D16 — 3.1.1 MQTT-1.5.3-2, 5.0 MQTT-1.5.4-2: a UTF-8 string must not hold U+0000.
#[test]
fn d16_nul_in_string() {
    let bytes = [0x30, 0x05, 0x00, 0x03, b'a', 0x00, b'b'];
    assert!(read_v4(&bytes).is_ok());
    assert_eq!(err(&bytes, Protocol::V311), DecodeError::InvalidUtf8);
    // Both reject ill-formed UTF-8.
    let bad = [0x30, 0x04, 0x00, 0x02, 0xC3, 0x28];
    assert!(read_v4(&bad).is_err());
    assert_eq!(err(&bad, Protocol::V311), DecodeError::InvalidUtf8);
}

/// D17 — 5.0 property rules mqttbytes does not check.
#[test]
fn d17_v5_property_rules() {
    fn publish(props: &[u8]) -> Vec<u8> {
        let mut body = vec![0x00, 0x01, b'a', props.len() as u8];
        body.extend_from_slice(props);
        frame(0x30, &body)
    }
    fn connect(props: &[u8]) -> Vec<u8> {
        let mut body = vec![0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x3C];
        body.push(props.len() as u8);
        body.extend_from_slice(props);
        body.extend_from_slice(&[0x00, 0x01, b'c']);
        frame(0x10, &body)
    }
    fn subscribe(props: &[u8]) -> Vec<u8> {
        let mut body = vec![0x00, 0x01, props.len() as u8];
        body.extend_from_slice(props);
        body.extend_from_slice(&[0x00, 0x01, b'a', 0x00]);
        frame(0x82, &body)
    }
    fn connack(props: &[u8]) -> Vec<u8> {
        let mut body = vec![0x00, 0x00, props.len() as u8];
        body.extend_from_slice(props);
        frame(0x20, &body)
    }
    use DecodeError::*;
    let cases: Vec<(Vec<u8>, DecodeError, &str)> = vec![
        // §3.3.2.3.9: Content Type more than once is a Protocol Error.
        (
            publish(&[0x03, 0x00, 0x01, b'x', 0x03, 0x00, 0x01, b'y']),
            DuplicateProperty(0x03),
            "§3.3.2.3.9",
        ),
        (
            connect(&[0x21, 0x00, 0x00]),
            InvalidPropertyValue(0x21),
            "§3.1.2.11.3",
        ),
        (
            connect(&[0x27, 0x00, 0x00, 0x00, 0x00]),
            InvalidPropertyValue(0x27),
            "§3.1.2.11.4",
        ),
        (
            publish(&[0x23, 0x00, 0x00]),
            InvalidTopicAlias,
            "§3.3.2.3.4",
        ),
        (
            publish(&[0x0B, 0x00]),
            InvalidPropertyValue(0x0B),
            "§3.3.2.3.8",
        ),
        (
            subscribe(&[0x0B, 0x00]),
            InvalidPropertyValue(0x0B),
            "§3.8.2.1.2",
        ),
        (
            subscribe(&[0x0B, 0x01, 0x0B, 0x02]),
            DuplicateProperty(0x0B),
            "§3.8.2.1.2",
        ),
        (
            connect(&[0x17, 0x02]),
            InvalidPropertyValue(0x17),
            "§3.1.2.11.7",
        ),
        (
            connack(&[0x24, 0x02]),
            InvalidPropertyValue(0x24),
            "§3.2.2.3.4",
        ),
    ];
    for (bytes, expected, section) in cases {
        assert!(read_v5(&bytes).is_ok(), "mqttbytes accepts ({section})");
        let e = err(&bytes, Protocol::V5);
        assert_eq!(e, expected, "{section}");
        assert!(matches!(e.reason_code(), 0x82 | 0x94), "{section}");
    }
    // Both reject a property not allowed in the packet and an unknown one.
    let not_allowed = connect(&[0x23, 0x00, 0x01]);
    assert!(read_v5(&not_allowed).is_err());
    assert_eq!(err(&not_allowed, Protocol::V5), PropertyNotAllowed(0x23));
    let unknown = publish(&[0x05, 0x00]);
    assert!(read_v5(&unknown).is_err());
    assert_eq!(err(&unknown, Protocol::V5), UnknownProperty(0x05));
}

/// D18 — 5.0 §3.15: AUTH; with Remaining Length 0 it means Success.
#[test]
fn d18_v5_auth() {
    assert_eq!(
        read_v5(&[0xF0, 0x00]),
        Err(mqttbytes::Error::InvalidPacketType(15))
    );
    assert_eq!(
        decode_full(&[0xF0, 0x00], Protocol::V5),
        Packet::Auth(mote_codec::Disconnect::new(0))
    );
}

/// D19 — 5.0 §3.1.2.11.4 / §3.2.2.3.6: Maximum Packet Size is "the total number of bytes
/// in an MQTT Control Packet" (§2.1.4), fixed header included; mqttbytes limits only the
/// remaining length.
#[test]
fn d19_maximum_packet_size_counts_the_whole_frame() {
    let bytes = [0x40, 0x02, 0x00, 0x01];
    let mut b = BytesMut::from(&bytes[..]);
    assert!(
        v4::read(&mut b, 2).is_ok(),
        "mqttbytes: 2 remaining bytes <= 2"
    );
    assert_eq!(
        decode(&bytes, Protocol::V311, 2),
        Err(DecodeError::PacketTooLarge { size: 4, max: 2 })
    );
    assert!(decode(&bytes, Protocol::V311, 4).unwrap().is_some());
}

/// D20 — topic helpers: §4.7.2 (only filters starting with a wildcard skip `$` topics),
/// MQTT-4.7.1-3 (`+` occupies a whole level), MQTT-4.7.3-1 (names are non-empty).
#[test]
fn d20_topic_helpers() {
    assert!(!mqttbytes::matches("$SYS/uptime", "$SYS/#"));
    assert!(topic::matches("$SYS/#", "$SYS/uptime"));
    // Both keep `$` topics from `#` and `+/...`.
    assert!(!mqttbytes::matches("$SYS/uptime", "#"));
    assert!(!topic::matches("#", "$SYS/uptime"));
    assert!(!topic::matches("+/uptime", "$SYS/uptime"));

    assert!(mqttbytes::valid_filter("a+"));
    assert!(!topic::is_valid_filter("a+"));
    assert!(mqttbytes::valid_topic(""));
    assert!(!topic::is_valid_name(""));
}

/// D21 — not a spec disagreement: mote accepts the MQTT 3.1 CONNECT (`MQIsdp`, level 3)
/// by design; mqttbytes does not speak 3.1.
#[test]
fn d21_mqtt31_connect() {
    let bytes = [
        0x10, 0x0F, 0x00, 0x06, b'M', b'Q', b'I', b's', b'd', b'p', 0x03, 0x02, 0x00, 0x3C, 0x00,
        0x01, b'c',
    ];
    assert_eq!(read_v4(&bytes), Err(mqttbytes::Error::InvalidProtocol));
    let Packet::Connect(c) = decode_full(&bytes, Protocol::V311) else {
        panic!("not a CONNECT")
    };
    assert_eq!(c.protocol, Protocol::V31);
}

/// D22 — 5.0 §2.2.2.1: the Property Length counts exactly the bytes of the properties;
/// a Subscription Identifier (§3.3.2.3.8) takes its identifier byte plus the bytes of its
/// variable byte integer (§1.5.5). mqttbytes counts one byte too many per identifier, so
/// with two of them it stops early and the last property becomes payload.
#[test]
fn d22_v5_several_subscription_identifiers() {
    let bytes = [
        0x30, 0x0C, 0x00, 0x01, b'a', // QoS 0 PUBLISH to "a"
        0x06, 0x0B, 0x01, 0x0B, 0x02, 0x01, 0x01, // ids 1 and 2, payload format 1
        b'h', b'i', // payload
    ];
    let Ok(v5::Packet::Publish(m)) = read_v5(&bytes) else {
        panic!("mqttbytes fails")
    };
    let props = m.properties.unwrap();
    assert_eq!(props.subscription_identifiers, [1, 2]);
    assert_eq!(props.payload_format_indicator, None);
    assert_eq!(&m.payload[..], &[0x01, 0x01, b'h', b'i']);

    let Packet::Publish(p) = decode_full(&bytes, Protocol::V5) else {
        panic!("not a PUBLISH")
    };
    assert_eq!(
        p.properties
            .subscription_identifiers()
            .iter()
            .collect::<Vec<_>>(),
        [1, 2]
    );
    assert_eq!(p.properties.payload_format_indicator(), Some(1));
    assert_eq!(p.payload, b"hi");
}

/// Where both are strict, they agree: a sample of inputs both reject.
#[test]
fn both_reject() {
    let v4_cases: [&[u8]; 5] = [
        &[0x36, 0x05, 0x00, 0x01, b'a', 0x00, 0x01], // PUBLISH QoS 3
        &[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F],       // five-byte remaining length
        &[0x20, 0x02, 0x00, 0x06],                   // CONNACK return code 6
        &[0xB0, 0x03, 0x00, 0x01, 0x00],             // UNSUBACK with an extra byte
        &[0x90, 0x02, 0x00, 0x01],                   // SUBACK without return codes
    ];
    for bytes in v4_cases {
        assert!(read_v4(bytes).is_err(), "{bytes:02X?}");
        assert!(
            decode(bytes, Protocol::V311, u32::MAX).is_err(),
            "{bytes:02X?}"
        );
    }
    let v5_cases: [&[u8]; 4] = [
        &[0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b'a', 0x30], // Retain Handling 3
        &[0x40, 0x03, 0x00, 0x01, 0x05],                         // PUBACK reason 0x05
        &[0xE0, 0x02, 0x05, 0x00],                               // DISCONNECT reason 0x05
        &[0x90, 0x04, 0x00, 0x01, 0x00, 0x03],                   // SUBACK reason 0x03
    ];
    for bytes in v5_cases {
        assert!(read_v5(bytes).is_err(), "{bytes:02X?}");
        assert!(
            decode(bytes, Protocol::V5, u32::MAX).is_err(),
            "{bytes:02X?}"
        );
    }
}
