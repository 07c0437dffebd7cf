#![allow(clippy::unwrap_used)]
//! Byte-exact tests: every packet type of MQTT 3.1.1 (also decoded as 3.1) and MQTT 5.0,
//! plus a 3.1 `MQIsdp` CONNECT, against hand-written frames. Each test asserts both
//! `encode(packet) == bytes` and `decode(bytes) == packet`; frames that are valid but not
//! what the encoder writes (non-canonical short forms, another property order) are
//! decode-only and say so.
//!
//! Where the specifications give an example, the frame is built from it: the 3.1.1 CONNECT
//! variable header (§3.1.2.10), the 5.0 CONNECT variable header (§3.1.2.12), the 3.1.1
//! PUBLISH variable header (§3.3.2.3), SUBSCRIBE/SUBACK/UNSUBSCRIBE payloads (3.1.1
//! §3.8.3.1, §3.9.3, §3.10.3) and the variable byte integer table (5.0 §1.5.5 Table 1-1,
//! 3.1.1 §2.2.3 Table 2.4).

mod common;

use common::*;
use mote_codec::{
    check, decode, Ack, ConnAck, Connect, DecodeError, Disconnect, EncodeError, List, Packet,
    PropList, PropValues, Properties, Protocol, Publish, QoS, RetainHandling, Sink, SubAck,
    SubOptions, Subscribe, SubscribeFilter, UnsubAck, Unsubscribe, Will, MAX_VAR_INT,
};

/// encode == bytes and decode(bytes) == packet.
fn exact(p: &Packet<'_>, proto: Protocol, bytes: &[u8]) {
    assert_eq!(encode(p, proto), bytes, "encode {p:?}");
    assert_eq!(p.encoded_len(proto), bytes.len());
    assert_eq!(&decode_full(bytes, proto), p, "decode {bytes:02X?}");
}

/// `exact` in 3.1.1 and on a 3.1 connection, which behaves as 3.1.1 after CONNECT.
fn exact_v3(p: &Packet<'_>, bytes: &[u8]) {
    exact(p, Protocol::V311, bytes);
    exact(p, Protocol::V31, bytes);
}

/// decode(bytes) == packet, for valid frames the encoder writes differently.
fn decodes_to(bytes: &[u8], proto: Protocol, p: &Packet<'_>) {
    assert_eq!(&decode_full(bytes, proto), p, "decode {bytes:02X?}");
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn no_props() -> Properties<'static> {
    Properties::default()
}

// =======================================================================================
// MQTT 3.1.1 (and 3.1)
// =======================================================================================

/// 3.1.1 §3.1.2.10, Figure 3.6: variable header `00 04 'MQTT' 04 CE 00 0A` — user name,
/// password, will QoS 1, will flag, clean session; keep alive 10.
const V311_CONNECT_VARIABLE_HEADER: [u8; 10] =
    [0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0xCE, 0x00, 0x0A];

#[test]
fn v311_connect_spec_example() {
    let p = Packet::Connect(Connect {
        protocol: Protocol::V311,
        clean_start: true,
        keep_alive: 10,
        properties: no_props(),
        client_id: "dev1",
        will: Some(Will {
            topic: "w/t",
            payload: b"bye",
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: no_props(),
        }),
        username: Some("user"),
        password: Some(b"pass"),
    });
    let bytes = cat(&[
        &[0x10, 38],
        &V311_CONNECT_VARIABLE_HEADER,
        &[0x00, 0x04, b'd', b'e', b'v', b'1'],
        &[0x00, 0x03, b'w', b'/', b't'],
        &[0x00, 0x03, b'b', b'y', b'e'],
        &[0x00, 0x04, b'u', b's', b'e', b'r'],
        &[0x00, 0x04, b'p', b'a', b's', b's'],
    ]);
    exact(&p, Protocol::V311, &bytes);
    // The encoder's variable header is byte for byte the specification's.
    assert_eq!(
        &encode(&p, Protocol::V311)[2..12],
        &V311_CONNECT_VARIABLE_HEADER
    );
}

#[test]
fn v311_connect_minimal_and_username_only() {
    let mut c = Connect {
        protocol: Protocol::V311,
        clean_start: true,
        keep_alive: 0,
        properties: no_props(),
        client_id: "",
        will: None,
        username: None,
        password: None,
    };
    exact(
        &Packet::Connect(c),
        Protocol::V311,
        &[
            0x10, 0x0C, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x00, 0x00, 0x00,
        ],
    );
    c.clean_start = false;
    c.keep_alive = 0xFFFF;
    c.client_id = "c";
    c.username = Some("u");
    exact(
        &Packet::Connect(c),
        Protocol::V311,
        &[
            0x10, 0x10, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x80, 0xFF, 0xFF, 0x00, 0x01,
            b'c', 0x00, 0x01, b'u',
        ],
    );
}

#[test]
fn v31_mqisdp_connect() {
    let mut c = Connect {
        protocol: Protocol::V31,
        clean_start: true,
        keep_alive: 60,
        properties: no_props(),
        client_id: "c",
        will: None,
        username: None,
        password: None,
    };
    let header = [0x00, 0x06, b'M', b'Q', b'I', b's', b'd', b'p', 0x03];
    exact(
        &Packet::Connect(c),
        Protocol::V31,
        &cat(&[
            &[0x10, 0x0F],
            &header,
            &[0x02, 0x00, 0x3C, 0x00, 0x01, b'c'],
        ]),
    );
    // Will QoS 2 + retain + will flag + clean session = 0x36.
    c.will = Some(Will {
        topic: "t",
        payload: b"",
        qos: QoS::ExactlyOnce,
        retain: true,
        properties: no_props(),
    });
    let bytes = cat(&[
        &[0x10, 0x14],
        &header,
        &[
            0x36, 0x00, 0x3C, 0x00, 0x01, b'c', 0x00, 0x01, b't', 0x00, 0x00,
        ],
    ]);
    exact(&Packet::Connect(c), Protocol::V31, &bytes);
    // CONNECT carries its own protocol: the connection's is ignored.
    decodes_to(&bytes, Protocol::V5, &Packet::Connect(c));
}

#[test]
fn v311_connack() {
    let mut c = ConnAck {
        session_present: true,
        code: 0,
        properties: no_props(),
    };
    exact_v3(&Packet::ConnAck(c), &[0x20, 0x02, 0x01, 0x00]);
    c.session_present = false;
    c.code = 5;
    exact_v3(&Packet::ConnAck(c), &[0x20, 0x02, 0x00, 0x05]);
}

#[test]
fn v311_publish_qos0() {
    let p = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: "a/b",
        packet_id: 0,
        properties: no_props(),
        payload: b"hello",
    });
    exact_v3(
        &p,
        &[
            0x30, 0x0A, 0x00, 0x03, b'a', b'/', b'b', b'h', b'e', b'l', b'l', b'o',
        ],
    );
}

/// 3.1.1 §3.3.2.3, Figure 3.11: topic "a/b", packet identifier 10.
#[test]
fn v311_publish_spec_example_dup_qos1_retain() {
    let p = Packet::Publish(Publish {
        dup: true,
        qos: QoS::AtLeastOnce,
        retain: true,
        topic: "a/b",
        packet_id: 10,
        properties: no_props(),
        payload: &[0x01, 0x02],
    });
    exact_v3(
        &p,
        &[
            0x3B, 0x09, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x0A, 0x01, 0x02,
        ],
    );
}

#[test]
fn v311_publish_qos2_empty_payload() {
    let p = Packet::Publish(Publish {
        dup: false,
        qos: QoS::ExactlyOnce,
        retain: false,
        topic: "a/b",
        packet_id: 0xFFFF,
        properties: no_props(),
        payload: b"",
    });
    exact_v3(&p, &[0x34, 0x07, 0x00, 0x03, b'a', b'/', b'b', 0xFF, 0xFF]);
}

#[test]
fn v311_publish_acknowledgements() {
    let a = Ack::new(10);
    exact_v3(&Packet::PubAck(a), &[0x40, 0x02, 0x00, 0x0A]);
    exact_v3(&Packet::PubRec(a), &[0x50, 0x02, 0x00, 0x0A]);
    exact_v3(&Packet::PubRel(a), &[0x62, 0x02, 0x00, 0x0A]);
    exact_v3(&Packet::PubComp(a), &[0x70, 0x02, 0x00, 0x0A]);
}

/// 3.1.1 §3.8.2 (packet identifier 10) and §3.8.3.1 (Figure 3.22): "a/b" QoS 1,
/// "c/d" QoS 2.
#[test]
fn v311_subscribe_spec_example() {
    let filters = [
        SubscribeFilter {
            filter: "a/b",
            options: SubOptions::qos(QoS::AtLeastOnce),
        },
        SubscribeFilter {
            filter: "c/d",
            options: SubOptions::qos(QoS::ExactlyOnce),
        },
    ];
    let p = Packet::Subscribe(Subscribe {
        packet_id: 10,
        properties: no_props(),
        filters: List::Slice(&filters),
    });
    exact_v3(
        &p,
        &[
            0x82, 0x0E, 0x00, 0x0A, 0x00, 0x03, b'a', b'/', b'b', 0x01, 0x00, 0x03, b'c', b'/',
            b'd', 0x02,
        ],
    );
}

/// 3.1.1 §3.9.3, Figure 3.26: granted QoS 0, granted QoS 2, failure.
#[test]
fn v311_suback_spec_example() {
    let p = Packet::SubAck(SubAck {
        packet_id: 10,
        properties: no_props(),
        codes: &[0x00, 0x02, 0x80],
    });
    exact_v3(&p, &[0x90, 0x05, 0x00, 0x0A, 0x00, 0x02, 0x80]);
}

/// 3.1.1 §3.10.3, Figure 3.30: "a/b", "c/d".
#[test]
fn v311_unsubscribe_spec_example() {
    let filters = ["a/b", "c/d"];
    let p = Packet::Unsubscribe(Unsubscribe {
        packet_id: 10,
        properties: no_props(),
        filters: List::Slice(&filters),
    });
    exact_v3(
        &p,
        &[
            0xA2, 0x0C, 0x00, 0x0A, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x03, b'c', b'/', b'd',
        ],
    );
}

#[test]
fn v311_unsuback_ping_disconnect() {
    let u = Packet::UnsubAck(UnsubAck {
        packet_id: 10,
        properties: no_props(),
        codes: &[],
    });
    exact_v3(&u, &[0xB0, 0x02, 0x00, 0x0A]);
    exact_v3(&Packet::PingReq, &[0xC0, 0x00]);
    exact_v3(&Packet::PingResp, &[0xD0, 0x00]);
    exact_v3(&Packet::Disconnect(Disconnect::new(0)), &[0xE0, 0x00]);
}

// =======================================================================================
// MQTT 5.0
// =======================================================================================

/// 5.0 §3.1.2.12, Figure 3-7: `00 04 'MQTT' 05 CE 00 0A`, then properties of length 5:
/// Session Expiry Interval (0x11) = 10.
const V5_CONNECT_VARIABLE_HEADER: [u8; 16] = [
    0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0xCE, 0x00, 0x0A, 0x05, 0x11, 0x00, 0x00, 0x00, 0x0A,
];

#[test]
fn v5_connect_spec_example_with_will_properties() {
    let will_users = [("k", "v")];
    let p = Packet::Connect(Connect {
        protocol: Protocol::V5,
        clean_start: true,
        keep_alive: 10,
        properties: Properties::Values(&PropValues {
            session_expiry_interval: Some(10),
            ..PropValues::default()
        }),
        client_id: "dev1",
        will: Some(Will {
            topic: "w/t",
            payload: b"bye",
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Properties::Values(&PropValues {
                payload_format_indicator: Some(1),
                content_type: Some("text"),
                response_topic: Some("r/t"),
                correlation_data: Some(&[0xC0, 0xDE]),
                will_delay_interval: Some(5),
                user_properties: PropList::Slice(&will_users),
                ..PropValues::default()
            }),
        }),
        username: Some("user"),
        password: Some(b"pass"),
    });
    let will_props: &[u8] = &[
        0x20, // property length 32
        0x01, 0x01, // payload format indicator = 1
        0x03, 0x00, 0x04, b't', b'e', b'x', b't', // content type
        0x08, 0x00, 0x03, b'r', b'/', b't', // response topic
        0x09, 0x00, 0x02, 0xC0, 0xDE, // correlation data
        0x18, 0x00, 0x00, 0x00, 0x05, // will delay interval = 5
        0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v', // user property
    ];
    let bytes = cat(&[
        &[0x10, 77],
        &V5_CONNECT_VARIABLE_HEADER,
        &[0x00, 0x04, b'd', b'e', b'v', b'1'],
        will_props,
        &[0x00, 0x03, b'w', b'/', b't'],
        &[0x00, 0x03, b'b', b'y', b'e'],
        &[0x00, 0x04, b'u', b's', b'e', b'r'],
        &[0x00, 0x04, b'p', b'a', b's', b's'],
    ]);
    exact(&p, Protocol::V5, &bytes);
    assert_eq!(
        &encode(&p, Protocol::V5)[2..18],
        &V5_CONNECT_VARIABLE_HEADER
    );
}

#[test]
fn v5_connect_with_every_connect_property() {
    let users = [("a", "b")];
    let p = Packet::Connect(Connect {
        protocol: Protocol::V5,
        clean_start: true,
        keep_alive: 60,
        properties: Properties::Values(&PropValues {
            session_expiry_interval: Some(60),
            authentication_method: Some("SCRAM"),
            authentication_data: Some(&[1, 2, 3]),
            request_problem_information: Some(false),
            request_response_information: Some(true),
            receive_maximum: Some(20),
            topic_alias_maximum: Some(10),
            user_properties: PropList::Slice(&users),
            maximum_packet_size: Some(1024),
            ..PropValues::default()
        }),
        client_id: "c",
        will: None,
        username: None,
        password: None,
    });
    let bytes = cat(&[
        &[0x10, 0x37],
        &[0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x3C],
        &[0x29],
        &[0x11, 0x00, 0x00, 0x00, 0x3C],
        &[0x15, 0x00, 0x05, b'S', b'C', b'R', b'A', b'M'],
        &[0x16, 0x00, 0x03, 0x01, 0x02, 0x03],
        &[0x17, 0x00],
        &[0x19, 0x01],
        &[0x21, 0x00, 0x14],
        &[0x22, 0x00, 0x0A],
        &[0x26, 0x00, 0x01, b'a', 0x00, 0x01, b'b'],
        &[0x27, 0x00, 0x00, 0x04, 0x00],
        &[0x00, 0x01, b'c'],
    ]);
    exact(&p, Protocol::V5, &bytes);
}

/// MQTT 5 allows a password without a user name (§3.1.2.9), unlike 3.1.1.
#[test]
fn v5_connect_password_without_username() {
    let p = Packet::Connect(Connect {
        protocol: Protocol::V5,
        clean_start: true,
        keep_alive: 0,
        properties: no_props(),
        client_id: "",
        will: None,
        username: None,
        password: Some(b"pw"),
    });
    exact(
        &p,
        Protocol::V5,
        &[
            0x10, 0x11, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x42, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x02, b'p', b'w',
        ],
    );
}

fn connack_all_props<'a>(users: &'a [(&'a str, &'a str)]) -> PropValues<'a> {
    PropValues {
        session_expiry_interval: Some(3600),
        assigned_client_identifier: Some("auto-1"),
        server_keep_alive: Some(30),
        authentication_method: Some("SCRAM"),
        authentication_data: Some(&[0xAA, 0xBB]),
        response_information: Some("resp"),
        server_reference: Some("srv"),
        reason_string: Some("ok"),
        receive_maximum: Some(100),
        topic_alias_maximum: Some(16),
        maximum_qos: Some(1),
        retain_available: Some(false),
        user_properties: PropList::Slice(users),
        maximum_packet_size: Some(65536),
        wildcard_subscription_available: Some(true),
        subscription_identifier_available: Some(false),
        shared_subscription_available: Some(true),
        ..PropValues::default()
    }
}

/// Each CONNACK property, in the order the encoder writes them (any order is valid).
const CONNACK_PROPS: [&[u8]; 18] = [
    &[0x11, 0x00, 0x00, 0x0E, 0x10],
    &[0x12, 0x00, 0x06, b'a', b'u', b't', b'o', b'-', b'1'],
    &[0x13, 0x00, 0x1E],
    &[0x15, 0x00, 0x05, b'S', b'C', b'R', b'A', b'M'],
    &[0x16, 0x00, 0x02, 0xAA, 0xBB],
    &[0x1A, 0x00, 0x04, b'r', b'e', b's', b'p'],
    &[0x1C, 0x00, 0x03, b's', b'r', b'v'],
    &[0x1F, 0x00, 0x02, b'o', b'k'],
    &[0x21, 0x00, 0x64],
    &[0x22, 0x00, 0x10],
    &[0x24, 0x01],
    &[0x25, 0x00],
    &[0x26, 0x00, 0x01, b'a', 0x00, 0x01, b'1'],
    &[0x26, 0x00, 0x01, b'a', 0x00, 0x01, b'2'],
    &[0x27, 0x00, 0x01, 0x00, 0x00],
    &[0x28, 0x01],
    &[0x29, 0x00],
    &[0x2A, 0x01],
];

#[test]
fn v5_connack_with_every_connack_property() {
    let users = [("a", "1"), ("a", "2")];
    let vals = connack_all_props(&users);
    let p = Packet::ConnAck(ConnAck {
        session_present: true,
        code: 0,
        properties: Properties::Values(&vals),
    });
    let props = CONNACK_PROPS.concat();
    assert_eq!(props.len(), 83);
    let bytes = cat(&[&[0x20, 86, 0x01, 0x00, 83], &props]);
    exact(&p, Protocol::V5, &bytes);

    // The same properties in reverse order (user properties keep their relative order)
    // decode to the same packet: MQTT 5 §2.2.2 does not fix an order.
    let mut reversed: Vec<&[u8]> = CONNACK_PROPS.to_vec();
    reversed.reverse();
    reversed.swap(4, 5); // the two user properties back in order
    assert_eq!(reversed[4][6], b'1');
    let bytes = cat(&[&[0x20, 86, 0x01, 0x00, 83], &reversed.concat()]);
    decodes_to(&bytes, Protocol::V5, &p);
}

#[test]
fn v5_connack_minimal_and_refused() {
    let mut c = ConnAck {
        session_present: false,
        code: 0,
        properties: no_props(),
    };
    exact(
        &Packet::ConnAck(c),
        Protocol::V5,
        &[0x20, 0x03, 0x00, 0x00, 0x00],
    );
    c.code = 0x87;
    exact(
        &Packet::ConnAck(c),
        Protocol::V5,
        &[0x20, 0x03, 0x00, 0x87, 0x00],
    );
}

#[test]
fn v5_publish_with_user_properties_subscription_ids_and_topic_alias() {
    let users = [("k", "v"), ("k", "w")];
    let ids = [1, 16_384, MAX_VAR_INT];
    let p = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "a/b",
        packet_id: 7,
        properties: Properties::Values(&PropValues {
            message_expiry_interval: Some(30),
            subscription_identifiers: PropList::Slice(&ids),
            topic_alias: Some(5),
            user_properties: PropList::Slice(&users),
            ..PropValues::default()
        }),
        payload: b"hi",
    });
    let bytes = cat(&[
        &[0x32, 0x2B],
        &[0x00, 0x03, b'a', b'/', b'b', 0x00, 0x07],
        &[0x21],
        &[0x02, 0x00, 0x00, 0x00, 0x1E],
        &[0x0B, 0x01],
        &[0x0B, 0x80, 0x80, 0x01],
        &[0x0B, 0xFF, 0xFF, 0xFF, 0x7F],
        &[0x23, 0x00, 0x05],
        &[0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v'],
        &[0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'w'],
        b"hi",
    ]);
    exact(&p, Protocol::V5, &bytes);

    // Decoded lists iterate in wire order.
    let Packet::Publish(d) = decode_full(&bytes, Protocol::V5) else {
        panic!("not a PUBLISH")
    };
    assert_eq!(
        d.properties
            .subscription_identifiers()
            .iter()
            .collect::<Vec<_>>(),
        ids
    );
    assert_eq!(
        d.properties.user_properties().iter().collect::<Vec<_>>(),
        users
    );
    assert_eq!(d.properties.user_properties().len(), 2);
}

#[test]
fn v5_publish_empty_topic_with_alias_and_plain_qos0() {
    let aliased = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: "",
        packet_id: 0,
        properties: Properties::Values(&PropValues {
            topic_alias: Some(5),
            ..PropValues::default()
        }),
        payload: b"x",
    });
    exact(
        &aliased,
        Protocol::V5,
        &[0x30, 0x07, 0x00, 0x00, 0x03, 0x23, 0x00, 0x05, b'x'],
    );
    let plain = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: true,
        topic: "a/b",
        packet_id: 0,
        properties: no_props(),
        payload: b"",
    });
    exact(
        &plain,
        Protocol::V5,
        &[0x31, 0x06, 0x00, 0x03, b'a', b'/', b'b', 0x00],
    );
}

/// MQTT 5 §3.4.2.1: remaining length 2 means reason 0x00 and no properties; 3 means a
/// reason and no properties; 4 or more, a property length follows.
#[test]
fn v5_puback_short_forms() {
    let ok = Packet::PubAck(Ack::new(1));
    exact(&ok, Protocol::V5, &[0x40, 0x02, 0x00, 0x01]);

    let mut a = Ack::new(1);
    a.reason = 0x10;
    let no_subs = Packet::PubAck(a);
    exact(&no_subs, Protocol::V5, &[0x40, 0x03, 0x00, 0x01, 0x10]);

    // Valid but longer than needed: decode-only.
    decodes_to(
        &[0x40, 0x04, 0x00, 0x01, 0x10, 0x00],
        Protocol::V5,
        &no_subs,
    );
    decodes_to(&[0x40, 0x04, 0x00, 0x01, 0x00, 0x00], Protocol::V5, &ok);
    decodes_to(&[0x40, 0x03, 0x00, 0x01, 0x00], Protocol::V5, &ok);

    // With properties, the reason code is always written, even 0x00.
    let with_string = Packet::PubAck(Ack {
        packet_id: 1,
        reason: 0x10,
        properties: Properties::Values(&PropValues {
            reason_string: Some("none"),
            ..PropValues::default()
        }),
    });
    exact(
        &with_string,
        Protocol::V5,
        &[
            0x40, 0x0B, 0x00, 0x01, 0x10, 0x07, 0x1F, 0x00, 0x04, b'n', b'o', b'n', b'e',
        ],
    );
    let users = [("k", "v")];
    let success_with_user = Packet::PubAck(Ack {
        packet_id: 1,
        reason: 0,
        properties: Properties::Values(&PropValues {
            user_properties: PropList::Slice(&users),
            ..PropValues::default()
        }),
    });
    exact(
        &success_with_user,
        Protocol::V5,
        &[
            0x40, 0x0B, 0x00, 0x01, 0x00, 0x07, 0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v',
        ],
    );
}

#[test]
fn v5_pubrec_pubrel_pubcomp() {
    let mut a = Ack::new(2);
    a.reason = 0x91;
    exact(
        &Packet::PubRec(a),
        Protocol::V5,
        &[0x50, 0x03, 0x00, 0x02, 0x91],
    );
    exact(
        &Packet::PubRec(Ack::new(2)),
        Protocol::V5,
        &[0x50, 0x02, 0x00, 0x02],
    );
    let mut a = Ack::new(3);
    a.reason = 0x92;
    exact(
        &Packet::PubRel(a),
        Protocol::V5,
        &[0x62, 0x03, 0x00, 0x03, 0x92],
    );
    exact(
        &Packet::PubRel(Ack::new(3)),
        Protocol::V5,
        &[0x62, 0x02, 0x00, 0x03],
    );
    let mut a = Ack::new(4);
    a.reason = 0x92;
    exact(
        &Packet::PubComp(a),
        Protocol::V5,
        &[0x70, 0x03, 0x00, 0x04, 0x92],
    );
    exact(
        &Packet::PubComp(Ack::new(4)),
        Protocol::V5,
        &[0x70, 0x02, 0x00, 0x04],
    );
}

#[test]
fn v5_subscribe_with_options_and_subscription_id() {
    let ids = [42];
    let filters = [
        SubscribeFilter {
            filter: "a/+",
            options: SubOptions {
                qos: QoS::AtLeastOnce,
                no_local: true,
                retain_as_published: true,
                retain_handling: RetainHandling::DoNotSend,
            },
        },
        SubscribeFilter {
            filter: "$share/g/#",
            options: SubOptions {
                qos: QoS::AtMostOnce,
                no_local: false,
                retain_as_published: false,
                retain_handling: RetainHandling::SendIfNew,
            },
        },
    ];
    let p = Packet::Subscribe(Subscribe {
        packet_id: 10,
        properties: Properties::Values(&PropValues {
            subscription_identifiers: PropList::Slice(&ids),
            ..PropValues::default()
        }),
        filters: List::Slice(&filters),
    });
    let bytes = cat(&[
        &[0x82, 0x18, 0x00, 0x0A],
        &[0x02, 0x0B, 0x2A],
        &[0x00, 0x03, b'a', b'/', b'+', 0x2D],
        &[0x00, 0x0A],
        b"$share/g/#",
        &[0x10],
    ]);
    exact(&p, Protocol::V5, &bytes);
    // In 3.1.1 only the QoS bits exist.
    let Packet::Subscribe(d) = decode_full(&bytes, Protocol::V5) else {
        panic!("not a SUBSCRIBE")
    };
    assert_eq!(d.filters.len(), 2);
    assert_eq!(
        d.filters
            .iter()
            .next()
            .unwrap()
            .options
            .to_byte(Protocol::V311),
        0x01
    );
}

#[test]
fn v5_suback_unsubscribe_unsuback() {
    let suback = Packet::SubAck(SubAck {
        packet_id: 10,
        properties: Properties::Values(&PropValues {
            reason_string: Some("x"),
            ..PropValues::default()
        }),
        codes: &[0x01, 0x9E, 0xA2],
    });
    exact(
        &suback,
        Protocol::V5,
        &[
            0x90, 0x0A, 0x00, 0x0A, 0x04, 0x1F, 0x00, 0x01, b'x', 0x01, 0x9E, 0xA2,
        ],
    );
    let plain = Packet::SubAck(SubAck {
        packet_id: 10,
        properties: no_props(),
        codes: &[0x00],
    });
    exact(&plain, Protocol::V5, &[0x90, 0x04, 0x00, 0x0A, 0x00, 0x00]);

    let users = [("k", "v")];
    let filters = ["a/#", "b"];
    let unsub = Packet::Unsubscribe(Unsubscribe {
        packet_id: 11,
        properties: Properties::Values(&PropValues {
            user_properties: PropList::Slice(&users),
            ..PropValues::default()
        }),
        filters: List::Slice(&filters),
    });
    exact(
        &unsub,
        Protocol::V5,
        &[
            0xA2, 0x12, 0x00, 0x0B, 0x07, 0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v', 0x00, 0x03,
            b'a', b'/', b'#', 0x00, 0x01, b'b',
        ],
    );

    let unsuback = Packet::UnsubAck(UnsubAck {
        packet_id: 11,
        properties: no_props(),
        codes: &[0x00, 0x11],
    });
    exact(
        &unsuback,
        Protocol::V5,
        &[0xB0, 0x05, 0x00, 0x0B, 0x00, 0x00, 0x11],
    );
}

#[test]
fn v5_ping() {
    exact(&Packet::PingReq, Protocol::V5, &[0xC0, 0x00]);
    exact(&Packet::PingResp, Protocol::V5, &[0xD0, 0x00]);
}

/// MQTT 5 §3.14.2.1: remaining length 0 means Normal disconnection and no properties;
/// §3.14.2.2.1: under 2, the property length is 0.
#[test]
fn v5_disconnect_forms() {
    let normal = Packet::Disconnect(Disconnect::new(0));
    exact(&normal, Protocol::V5, &[0xE0, 0x00]);
    decodes_to(&[0xE0, 0x01, 0x00], Protocol::V5, &normal);
    decodes_to(&[0xE0, 0x02, 0x00, 0x00], Protocol::V5, &normal);

    let taken_over = Packet::Disconnect(Disconnect::new(0x8E));
    exact(&taken_over, Protocol::V5, &[0xE0, 0x01, 0x8E]);
    decodes_to(&[0xE0, 0x02, 0x8E, 0x00], Protocol::V5, &taken_over);

    let with_props = Packet::Disconnect(Disconnect {
        reason: 0x04,
        properties: Properties::Values(&PropValues {
            session_expiry_interval: Some(0),
            server_reference: Some("srv"),
            reason_string: Some("bye"),
            ..PropValues::default()
        }),
    });
    exact(
        &with_props,
        Protocol::V5,
        &[
            0xE0, 0x13, 0x04, 0x11, 0x11, 0x00, 0x00, 0x00, 0x00, 0x1C, 0x00, 0x03, b's', b'r',
            b'v', 0x1F, 0x00, 0x03, b'b', b'y', b'e',
        ],
    );
}

/// MQTT 5 §3.15: AUTH with remaining length 0 is Success without properties.
#[test]
fn v5_auth() {
    exact(
        &Packet::Auth(Disconnect::new(0)),
        Protocol::V5,
        &[0xF0, 0x00],
    );
    exact(
        &Packet::Auth(Disconnect::new(0x19)),
        Protocol::V5,
        &[0xF0, 0x01, 0x19],
    );
    let cont = Packet::Auth(Disconnect {
        reason: 0x18,
        properties: Properties::Values(&PropValues {
            authentication_method: Some("SCRAM-SHA-1"),
            authentication_data: Some(&[0x01, 0x02]),
            ..PropValues::default()
        }),
    });
    let bytes = cat(&[
        &[0xF0, 0x15, 0x18, 0x13],
        &[0x15, 0x00, 0x0B],
        b"SCRAM-SHA-1",
        &[0x16, 0x00, 0x02, 0x01, 0x02],
    ]);
    exact(&cont, Protocol::V5, &bytes);
}

// =======================================================================================
// Variable byte integers (5.0 §1.5.5 Table 1-1; 3.1.1 §2.2.3 Table 2.4)
// =======================================================================================

/// A QoS 0 PUBLISH to "a" whose remaining length is `remaining`, in 3.1.1.
fn publish_of_remaining(remaining: usize) -> (Vec<u8>, Vec<u8>) {
    let payload = vec![0x5A; remaining - 3];
    let header = var_int(remaining as u32);
    let bytes = cat(&[&[0x30], &header, &[0x00, 0x01, b'a'], &payload]);
    (payload, bytes)
}

#[test]
fn variable_byte_integer_spec_examples() {
    // 0: a PINGREQ.
    exact(&Packet::PingReq, Protocol::V5, &[0xC0, 0x00]);
    let rows: [(usize, &[u8]); 6] = [
        (127, &[0x7F]),
        (128, &[0x80, 0x01]),
        (16_383, &[0xFF, 0x7F]),
        (16_384, &[0x80, 0x80, 0x01]),
        (2_097_151, &[0xFF, 0xFF, 0x7F]),
        (2_097_152, &[0x80, 0x80, 0x80, 0x01]),
    ];
    for (remaining, encoded) in rows {
        assert_eq!(var_int(remaining as u32), encoded, "test helper");
        let (public, n) = mote_codec::var_int_bytes(remaining).unwrap();
        assert_eq!(&public[..n], encoded, "var_int_bytes");
        let (payload, bytes) = publish_of_remaining(remaining);
        assert_eq!(&bytes[1..1 + encoded.len()], encoded);
        let p = Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: "a",
            packet_id: 0,
            properties: no_props(),
            payload: &payload,
        });
        exact(&p, Protocol::V311, &bytes);
        let h = check(&bytes[..1 + encoded.len()], u32::MAX)
            .unwrap()
            .unwrap();
        assert_eq!(h.remaining_len, remaining);
        assert_eq!(h.header_len, 1 + encoded.len());
        // One byte of the header short is "need more".
        assert_eq!(check(&bytes[..encoded.len()], u32::MAX), Ok(None));
    }
}

/// Keeps the first bytes written and counts the rest, so a 256 MiB packet can be
/// encoded without touching its payload.
#[derive(Default)]
struct HeadSink {
    head: Vec<u8>,
    total: usize,
}

impl Sink for HeadSink {
    fn put(&mut self, bytes: &[u8]) -> Result<(), EncodeError> {
        let room = 16usize.saturating_sub(self.head.len());
        self.head.extend_from_slice(&bytes[..room.min(bytes.len())]);
        self.total += bytes.len();
        Ok(())
    }
}

/// 268,435,455 (`FF FF FF 7F`), the largest remaining length, both ways; one more does
/// not encode, and a fifth length byte does not decode.
#[test]
fn variable_byte_integer_maximum() {
    let max = MAX_VAR_INT as usize;
    assert_eq!(max, 268_435_455);
    assert_eq!(
        mote_codec::var_int_bytes(max),
        Some(([0xFF, 0xFF, 0xFF, 0x7F], 4))
    );
    assert_eq!(mote_codec::var_int_bytes(max + 1), None);
    // Zeroed allocations are lazily mapped: untouched, these cost no memory.
    let payload = vec![0u8; max - 3];
    let p = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: "a",
        packet_id: 0,
        properties: no_props(),
        payload: &payload,
    });
    assert_eq!(p.encoded_len(Protocol::V311), 5 + max);
    let mut sink = HeadSink::default();
    p.encode_to(Protocol::V311, &mut sink).unwrap();
    assert_eq!(sink.total, 5 + max);
    assert_eq!(
        &sink.head[..8],
        &[0x30, 0xFF, 0xFF, 0xFF, 0x7F, 0x00, 0x01, b'a']
    );

    let mut bytes = vec![0u8; 5 + max];
    bytes[..8].copy_from_slice(&[0x30, 0xFF, 0xFF, 0xFF, 0x7F, 0x00, 0x01, b'a']);
    let h = check(&bytes[..5], u32::MAX).unwrap().unwrap();
    assert_eq!((h.header_len, h.remaining_len), (5, max));
    let (q, n) = decode(&bytes, Protocol::V311, u32::MAX).unwrap().unwrap();
    assert_eq!(n, 5 + max);
    let Packet::Publish(d) = q else {
        panic!("not a PUBLISH")
    };
    assert_eq!(
        (d.topic, d.qos, d.payload.len()),
        ("a", QoS::AtMostOnce, max - 3)
    );
    drop(bytes);

    // One byte more cannot be framed.
    let payload = vec![0u8; max - 2];
    let p = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: "a",
        packet_id: 0,
        properties: no_props(),
        payload: &payload,
    });
    let mut sink = HeadSink::default();
    assert_eq!(
        p.encode_to(Protocol::V311, &mut sink),
        Err(EncodeError::TooLarge)
    );
    assert_eq!(
        check(&[0x30, 0x80, 0x80, 0x80, 0x80, 0x01], u32::MAX),
        Err(DecodeError::MalformedVarInt)
    );
}

// =======================================================================================
// Encoder refusals
// =======================================================================================

#[test]
fn encode_errors() {
    // AUTH does not exist in 3.1.1.
    let auth = Packet::Auth(Disconnect::new(0));
    let mut buf = [0u8; 16];
    assert_eq!(
        auth.encode(Protocol::V311, &mut buf),
        Err(EncodeError::NotInVersion)
    );
    assert_eq!(
        auth.encode(Protocol::V31, &mut buf),
        Err(EncodeError::NotInVersion)
    );

    // A string over 65,535 bytes.
    let long = "a".repeat(65_536);
    let p = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: &long,
        packet_id: 0,
        properties: no_props(),
        payload: b"",
    });
    let mut big = vec![0u8; p.encoded_len(Protocol::V311)];
    assert_eq!(
        p.encode(Protocol::V311, &mut big),
        Err(EncodeError::TooLarge)
    );
    // 65,535 bytes is still fine.
    let ok = "a".repeat(65_535);
    let p = Packet::Publish(Publish {
        topic: &ok,
        ..match p {
            Packet::Publish(p) => p,
            _ => unreachable!(),
        }
    });
    let bytes = encode(&p, Protocol::V311);
    assert_eq!(decode_full(&bytes, Protocol::V311), p);

    // Subscription identifiers outside 1..=268,435,455.
    for ids in [[0u32], [MAX_VAR_INT + 1]] {
        let p = Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: "t",
            packet_id: 0,
            properties: Properties::Values(&PropValues {
                subscription_identifiers: PropList::Slice(&ids),
                ..PropValues::default()
            }),
            payload: b"",
        });
        let mut buf = [0u8; 64];
        assert_eq!(p.encode(Protocol::V5, &mut buf), Err(EncodeError::TooLarge));
    }

    // A buffer too small is reported with the size needed.
    let mut small = [0u8; 3];
    assert_eq!(
        Packet::PubAck(Ack::new(1)).encode(Protocol::V311, &mut small),
        Err(EncodeError::BufferTooSmall { needed: 4 })
    );
}
