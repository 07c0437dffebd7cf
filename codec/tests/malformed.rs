#![allow(clippy::unwrap_used)]
//! Malformed and protocol-violating input: each case is one complete frame and asserts
//! the specific `DecodeError` it must produce (and, for many, the MQTT 5 reason code a
//! server sends for it: 0x81 Malformed Packet, 0x82 Protocol Error, 0x84 Unsupported
//! Protocol Version, 0x94 Topic Alias invalid, 0x95 Packet too large).
//!
//! Frames are written by hand; `frame(first_byte, body)` only prepends the remaining
//! length so that the body, the part under test, stays readable.
//!
//! The `spec_*` tests at the end pin reason codes where an easy reading of the
//! specification gives another one (they caught three such mappings in the codec).

mod common;

use common::{decode_err, decode_full, encode, frame};
use mote_codec::{
    check, decode, reason, Ack, Connect, DecodeError, Packet, Properties, Protocol, Publish, QoS,
};
use DecodeError::*;

const V31: Protocol = Protocol::V31;
const V3: Protocol = Protocol::V311;
const V5: Protocol = Protocol::V5;

/// One test per malformed frame: `rejects!(name, protocol, frame, error)`, optionally
/// followed by the expected `reason_code`.
macro_rules! rejects {
    ($name:ident, $proto:expr, $bytes:expr, $err:expr) => {
        #[test]
        fn $name() {
            let bytes: Vec<u8> = $bytes.to_vec();
            assert_eq!(decode_err(&bytes, $proto), $err);
        }
    };
    ($name:ident, $proto:expr, $bytes:expr, $err:expr, $rc:expr) => {
        #[test]
        fn $name() {
            let bytes: Vec<u8> = $bytes.to_vec();
            let e = decode_err(&bytes, $proto);
            assert_eq!(e, $err);
            assert_eq!(e.reason_code(), $rc, "reason code of {e:?}");
        }
    };
}

/// `00 04 'MQTT' <level>`.
fn mqtt(level: u8) -> Vec<u8> {
    vec![0x00, 0x04, b'M', b'Q', b'T', b'T', level]
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// A 3.1.1 CONNECT with `flags`, keep alive 60 and the given payload.
fn connect_v3(flags: u8, payload: &[u8]) -> Vec<u8> {
    frame(0x10, &cat(&[&mqtt(4), &[flags, 0x00, 0x3C], payload]))
}

/// A v5 CONNECT (clean start) with the given property block (without its length) and
/// client identifier "c".
fn connect_v5_props(props: &[u8]) -> Vec<u8> {
    frame(
        0x10,
        &cat(&[
            &mqtt(5),
            &[0x02, 0x00, 0x3C, props.len() as u8],
            props,
            &[0x00, 0x01, b'c'],
        ]),
    )
}

/// A v5 QoS 0 PUBLISH to "a" with the given property block (without its length).
fn publish_v5_props(props: &[u8]) -> Vec<u8> {
    frame(
        0x30,
        &cat(&[&[0x00, 0x01, b'a', props.len() as u8], props, b"payload"]),
    )
}

/// A v5 SUBSCRIBE (packet id 1) with the given property block and one entry "a" with
/// `options`.
fn subscribe_v5(props: &[u8], options: u8) -> Vec<u8> {
    frame(
        0x82,
        &cat(&[
            &[0x00, 0x01, props.len() as u8],
            props,
            &[0x00, 0x01, b'a', options],
        ]),
    )
}

/// A v5 CONNACK (accepted) with the given property block.
fn connack_v5_props(props: &[u8]) -> Vec<u8> {
    frame(0x20, &cat(&[&[0x00, 0x00, props.len() as u8], props]))
}

// ---------------------------------------------------------------------------------------
// Fixed header: packet type and reserved flags (3.1.1 §2.2.2, 5.0 §2.1.3)
// ---------------------------------------------------------------------------------------

rejects!(
    connect_reserved_header_flags,
    V3,
    frame(0x11, &cat(&[&mqtt(4), &[0x02, 0x00, 0x3C, 0x00, 0x00]])),
    InvalidHeaderFlags {
        packet_type: 1,
        flags: 1
    },
    reason::MALFORMED_PACKET
);
rejects!(
    connack_reserved_header_flags,
    V3,
    [0x28, 0x02, 0x00, 0x00],
    InvalidHeaderFlags {
        packet_type: 2,
        flags: 8
    }
);
rejects!(
    puback_reserved_header_flags,
    V5,
    [0x41, 0x02, 0x00, 0x01],
    InvalidHeaderFlags {
        packet_type: 4,
        flags: 1
    },
    reason::MALFORMED_PACKET
);
rejects!(
    pubrec_reserved_header_flags,
    V3,
    [0x52, 0x02, 0x00, 0x01],
    InvalidHeaderFlags {
        packet_type: 5,
        flags: 2
    }
);
rejects!(
    pubrel_header_flags_must_be_0010,
    V3,
    [0x60, 0x02, 0x00, 0x01],
    InvalidHeaderFlags {
        packet_type: 6,
        flags: 0
    }
);
rejects!(
    pubcomp_reserved_header_flags,
    V5,
    [0x74, 0x02, 0x00, 0x01],
    InvalidHeaderFlags {
        packet_type: 7,
        flags: 4
    }
);
rejects!(
    subscribe_header_flags_must_be_0010,
    V3,
    [0x80, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x00],
    InvalidHeaderFlags {
        packet_type: 8,
        flags: 0
    }
);
rejects!(
    suback_reserved_header_flags,
    V3,
    [0x92, 0x03, 0x00, 0x01, 0x00],
    InvalidHeaderFlags {
        packet_type: 9,
        flags: 2
    }
);
rejects!(
    unsubscribe_header_flags_must_be_0010,
    V5,
    [0xA3, 0x06, 0x00, 0x01, 0x00, 0x00, 0x01, b'a'],
    InvalidHeaderFlags {
        packet_type: 10,
        flags: 3
    }
);
rejects!(
    unsuback_reserved_header_flags,
    V3,
    [0xB8, 0x02, 0x00, 0x01],
    InvalidHeaderFlags {
        packet_type: 11,
        flags: 8
    }
);
rejects!(
    pingreq_reserved_header_flags,
    V3,
    [0xC1, 0x00],
    InvalidHeaderFlags {
        packet_type: 12,
        flags: 1
    }
);
rejects!(
    pingresp_reserved_header_flags,
    V5,
    [0xD2, 0x00],
    InvalidHeaderFlags {
        packet_type: 13,
        flags: 2
    }
);
rejects!(
    disconnect_reserved_header_flags,
    V3,
    [0xEF, 0x00],
    InvalidHeaderFlags {
        packet_type: 14,
        flags: 15
    }
);
rejects!(
    auth_reserved_header_flags,
    V5,
    [0xF1, 0x00],
    InvalidHeaderFlags {
        packet_type: 15,
        flags: 1
    }
);
rejects!(packet_type_zero, V5, [0x00, 0x00], InvalidPacketType(0));
// Type 15 is "Reserved / Forbidden" in 3.1.1 (§2.2.1) and in 3.1.
rejects!(auth_in_v311, V3, [0xF0, 0x00], InvalidPacketType(15));
rejects!(auth_in_v31, V31, [0xF0, 0x01, 0x18], InvalidPacketType(15));

// ---------------------------------------------------------------------------------------
// Remaining length and packet size
// ---------------------------------------------------------------------------------------

// 5.0 §1.5.5 / 3.1.1 §2.2.3: at most four bytes, so at most 268,435,455.
rejects!(
    remaining_length_of_five_bytes,
    V3,
    [0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F],
    MalformedVarInt,
    reason::MALFORMED_PACKET
);
rejects!(
    property_length_of_five_bytes,
    V5,
    [0x30, 0x08, 0x00, 0x01, b'a', 0xFF, 0xFF, 0xFF, 0xFF, 0x7F],
    MalformedVarInt,
    reason::MALFORMED_PACKET
);

#[test]
fn five_byte_remaining_length_detected_without_the_fifth_byte() {
    // Four continuation bytes already make the length malformed; three are "need more".
    assert_eq!(
        check(&[0x30, 0x80, 0x80, 0x80, 0x80], 1 << 30),
        Err(MalformedVarInt)
    );
    assert_eq!(check(&[0x30, 0x80, 0x80, 0x80], 1 << 30), Ok(None));
    assert_eq!(
        decode(&[0x30, 0x80, 0x80, 0x80, 0x80], V5, u32::MAX),
        Err(MalformedVarInt)
    );
}

#[test]
fn frame_over_max_packet_size() {
    let bytes = [
        0x30, 0x0A, 0x00, 0x03, b'a', b'/', b'b', b'h', b'e', b'l', b'l', b'o',
    ];
    let e = decode(&bytes, V3, 11).unwrap_err();
    assert_eq!(e, PacketTooLarge { size: 12, max: 11 });
    assert_eq!(e.reason_code(), reason::PACKET_TOO_LARGE);
    // The limit is on the whole frame, fixed header included (5.0 §3.1.2.11.4).
    assert!(decode(&bytes, V3, 12).unwrap().is_some());
}

#[test]
fn check_refuses_oversized_frame_from_fixed_header_alone() {
    // Remaining length 16,383: three header bytes are enough to refuse the frame; none
    // of the body has arrived, and `decode` says the same without waiting for it.
    let header = [0x30, 0xFF, 0x7F];
    assert_eq!(
        check(&header, 1000),
        Err(PacketTooLarge {
            size: 16_386,
            max: 1000
        })
    );
    assert_eq!(
        decode(&header, V5, 1000),
        Err(PacketTooLarge {
            size: 16_386,
            max: 1000
        })
    );
    // Under the limit, the same header is just "need more bytes".
    let h = check(&header, 16_386).unwrap().unwrap();
    assert_eq!(
        (h.header_len, h.remaining_len, h.frame_len()),
        (3, 16_383, 16_386)
    );
    assert_eq!(decode(&header, V5, 16_386), Ok(None));
}

#[test]
fn other_errors_wait_for_the_whole_frame() {
    // Invalid flags are only reported once the frame is complete; before, more is needed.
    assert_eq!(decode(&[0x80, 0x06, 0x00, 0x01], V3, u32::MAX), Ok(None));
    assert_eq!(decode(&[], V3, u32::MAX), Ok(None));
    assert_eq!(decode(&[0x30], V3, u32::MAX), Ok(None));
}

// ---------------------------------------------------------------------------------------
// UTF-8 strings (3.1.1 §1.5.3, 5.0 §1.5.4)
// ---------------------------------------------------------------------------------------

rejects!(
    ill_formed_utf8_in_topic,
    V3,
    [0x30, 0x04, 0x00, 0x02, 0xC3, 0x28],
    InvalidUtf8,
    reason::MALFORMED_PACKET
);
rejects!(
    nul_character_in_topic,
    V5,
    [0x30, 0x06, 0x00, 0x03, b'a', 0x00, b'b', 0x00],
    InvalidUtf8,
    reason::MALFORMED_PACKET
);
rejects!(
    encoded_surrogate_in_topic,
    V3,
    [0x30, 0x05, 0x00, 0x03, 0xED, 0xA0, 0x80],
    InvalidUtf8
);
rejects!(
    overlong_nul_in_topic,
    V3,
    [0x30, 0x04, 0x00, 0x02, 0xC0, 0x80],
    InvalidUtf8
);
rejects!(
    ill_formed_utf8_in_client_id,
    V3,
    connect_v3(0x02, &[0x00, 0x01, 0xFF]),
    InvalidUtf8
);
rejects!(
    surrogate_in_user_property,
    V5,
    [0x40, 0x0C, 0x00, 0x01, 0x00, 0x08, 0x26, 0x00, 0x03, 0xED, 0xA0, 0x80, 0x00, 0x00],
    InvalidUtf8
);
rejects!(
    nul_character_in_topic_filter,
    V3,
    [0x82, 0x07, 0x00, 0x01, 0x00, 0x02, b'a', 0x00, 0x00],
    InvalidUtf8
);

// ---------------------------------------------------------------------------------------
// Topic names and filters (§4.7)
// ---------------------------------------------------------------------------------------

rejects!(
    plus_wildcard_in_topic_name,
    V3,
    [0x30, 0x05, 0x00, 0x03, b'a', b'/', b'+'],
    InvalidTopicName
);
rejects!(
    hash_wildcard_in_topic_name,
    V5,
    [0x30, 0x04, 0x00, 0x01, b'#', 0x00],
    InvalidTopicName
);
rejects!(
    empty_topic_name_v311,
    V3,
    [0x30, 0x02, 0x00, 0x00],
    InvalidTopicName
);
rejects!(
    empty_topic_name_v5_without_alias,
    V5,
    [0x30, 0x03, 0x00, 0x00, 0x00],
    InvalidTopicName
);
rejects!(
    wildcard_in_will_topic,
    V3,
    connect_v3(
        0x06,
        &[0x00, 0x01, b'c', 0x00, 0x03, b'a', b'/', b'#', 0x00, 0x00]
    ),
    InvalidTopicName
);
rejects!(
    hash_not_last_in_filter,
    V3,
    [0x82, 0x0A, 0x00, 0x01, 0x00, 0x05, b'a', b'/', b'#', b'/', b'b', 0x00],
    InvalidTopicFilter,
    reason::MALFORMED_PACKET
);
rejects!(
    plus_not_a_whole_level_in_filter,
    V5,
    [0x82, 0x08, 0x00, 0x01, 0x00, 0x00, 0x02, b'a', b'+', 0x00],
    InvalidTopicFilter
);
rejects!(
    plus_not_a_whole_level_in_unsubscribe,
    V3,
    [0xA2, 0x06, 0x00, 0x01, 0x00, 0x02, b'a', b'+'],
    InvalidTopicFilter
);
rejects!(
    empty_topic_filter,
    V3,
    [0x82, 0x05, 0x00, 0x01, 0x00, 0x00, 0x00],
    InvalidTopicFilter
);

// ---------------------------------------------------------------------------------------
// Packet identifiers (3.1.1 §2.3.1, 5.0 §2.2.1)
// ---------------------------------------------------------------------------------------

rejects!(
    zero_packet_id_publish_qos1,
    V3,
    [0x32, 0x05, 0x00, 0x01, b'a', 0x00, 0x00],
    ZeroPacketId,
    reason::PROTOCOL_ERROR
);
rejects!(
    zero_packet_id_puback,
    V5,
    [0x40, 0x02, 0x00, 0x00],
    ZeroPacketId,
    reason::PROTOCOL_ERROR
);
rejects!(
    zero_packet_id_pubrel,
    V3,
    [0x62, 0x02, 0x00, 0x00],
    ZeroPacketId
);
rejects!(
    zero_packet_id_subscribe,
    V3,
    [0x82, 0x06, 0x00, 0x00, 0x00, 0x01, b'a', 0x00],
    ZeroPacketId
);
rejects!(
    zero_packet_id_unsubscribe,
    V3,
    [0xA2, 0x05, 0x00, 0x00, 0x00, 0x01, b'a'],
    ZeroPacketId
);

// ---------------------------------------------------------------------------------------
// QoS and DUP
// ---------------------------------------------------------------------------------------

// 5.0 §3.3.1.2: both QoS bits set is a Malformed Packet.
rejects!(
    publish_qos_3,
    V5,
    [0x36, 0x06, 0x00, 0x01, b'a', 0x00, 0x01, 0x00],
    InvalidQoS,
    reason::MALFORMED_PACKET
);
// 5.0 §3.1.2.6: a Will QoS of 3 is a Malformed Packet; the codec reports it as a flags
// error (flags = will QoS 3 | will flag | clean start).
rejects!(
    will_qos_3,
    V3,
    connect_v3(
        0x1E,
        &[0x00, 0x01, b'c', 0x00, 0x03, b'w', b'/', b't', 0x00, 0x00]
    ),
    InvalidConnectFlags(0x1E),
    reason::MALFORMED_PACKET
);
rejects!(
    subscription_options_qos_3_v311,
    V3,
    [0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x03],
    InvalidQoS
);
rejects!(
    dup_on_qos0_publish,
    V3,
    [0x38, 0x03, 0x00, 0x01, b'a'],
    DupOnQoS0
);

// ---------------------------------------------------------------------------------------
// Properties (5.0 §2.2.2)
// ---------------------------------------------------------------------------------------

rejects!(
    duplicate_content_type,
    V5,
    publish_v5_props(&[0x03, 0x00, 0x01, b'x', 0x03, 0x00, 0x01, b'y']),
    DuplicateProperty(0x03),
    reason::PROTOCOL_ERROR
);
rejects!(
    duplicate_receive_maximum,
    V5,
    connect_v5_props(&[0x21, 0x00, 0x0A, 0x21, 0x00, 0x0B]),
    DuplicateProperty(0x21),
    reason::PROTOCOL_ERROR
);
// 5.0 §3.8.2.1.2: SUBSCRIBE carries at most one Subscription Identifier.
rejects!(
    duplicate_subscription_identifier_in_subscribe,
    V5,
    subscribe_v5(&[0x0B, 0x01, 0x0B, 0x02], 0x00),
    DuplicateProperty(0x0B)
);
rejects!(
    topic_alias_in_connect,
    V5,
    connect_v5_props(&[0x23, 0x00, 0x01]),
    PropertyNotAllowed(0x23),
    reason::MALFORMED_PACKET
);
rejects!(
    session_expiry_in_publish,
    V5,
    publish_v5_props(&[0x11, 0x00, 0x00, 0x00, 0x01]),
    PropertyNotAllowed(0x11)
);
rejects!(
    will_delay_in_connect_properties,
    V5,
    connect_v5_props(&[0x18, 0x00, 0x00, 0x00, 0x01]),
    PropertyNotAllowed(0x18)
);
rejects!(
    reason_string_in_subscribe,
    V5,
    subscribe_v5(&[0x1F, 0x00, 0x01, b'r'], 0x00),
    PropertyNotAllowed(0x1F)
);
rejects!(
    unknown_property_0x05,
    V5,
    publish_v5_props(&[0x05, 0x00]),
    UnknownProperty(0x05),
    reason::MALFORMED_PACKET
);
rejects!(
    unknown_property_0x2b,
    V5,
    connack_v5_props(&[0x2B, 0x01]),
    UnknownProperty(0x2B)
);
// §3.1.2.11.3: Receive Maximum 0 is a Protocol Error.
rejects!(
    receive_maximum_zero,
    V5,
    connect_v5_props(&[0x21, 0x00, 0x00]),
    InvalidPropertyValue(0x21),
    reason::PROTOCOL_ERROR
);
// §3.1.2.11.4: Maximum Packet Size 0 is a Protocol Error.
rejects!(
    maximum_packet_size_zero,
    V5,
    connect_v5_props(&[0x27, 0x00, 0x00, 0x00, 0x00]),
    InvalidPropertyValue(0x27),
    reason::PROTOCOL_ERROR
);
rejects!(
    maximum_packet_size_zero_in_connack,
    V5,
    connack_v5_props(&[0x27, 0x00, 0x00, 0x00, 0x00]),
    InvalidPropertyValue(0x27)
);
// §3.3.2.3.4: Topic Alias 0 -> DISCONNECT 0x94.
rejects!(
    topic_alias_zero,
    V5,
    publish_v5_props(&[0x23, 0x00, 0x00]),
    InvalidTopicAlias,
    reason::TOPIC_ALIAS_INVALID
);
// §3.8.2.1.2: Subscription Identifier 0 is a Protocol Error.
rejects!(
    subscription_identifier_zero_in_subscribe,
    V5,
    subscribe_v5(&[0x0B, 0x00], 0x00),
    InvalidPropertyValue(0x0B),
    reason::PROTOCOL_ERROR
);
rejects!(
    subscription_identifier_zero_in_publish,
    V5,
    publish_v5_props(&[0x0B, 0x00]),
    InvalidPropertyValue(0x0B)
);
// §3.1.2.11.7: Request Problem Information other than 0/1 is a Protocol Error.
rejects!(
    request_problem_information_2,
    V5,
    connect_v5_props(&[0x17, 0x02]),
    InvalidPropertyValue(0x17),
    reason::PROTOCOL_ERROR
);
// §3.2.2.3.4: Maximum QoS other than 0/1 is a Protocol Error.
rejects!(
    maximum_qos_2,
    V5,
    connack_v5_props(&[0x24, 0x02]),
    InvalidPropertyValue(0x24)
);
rejects!(
    payload_format_indicator_2,
    V5,
    publish_v5_props(&[0x01, 0x02]),
    InvalidPropertyValue(0x01)
);
// §3.3.2.3.5: a Response Topic is a topic name, without wildcards.
rejects!(
    wildcard_in_response_topic,
    V5,
    publish_v5_props(&[0x08, 0x00, 0x01, b'#']),
    InvalidPropertyValue(0x08)
);

// ---------------------------------------------------------------------------------------
// CONNECT variable header (§3.1.2)
// ---------------------------------------------------------------------------------------

rejects!(
    protocol_name_wrong,
    V3,
    frame(
        0x10,
        &[0x00, 0x04, b'M', b'Q', b'T', b'X', 0x04, 0x02, 0x00, 0x3C, 0x00, 0x00]
    ),
    InvalidProtocolName,
    reason::MALFORMED_PACKET
);
rejects!(
    protocol_name_lowercase,
    V5,
    frame(
        0x10,
        &[0x00, 0x04, b'm', b'q', b't', b't', 0x05, 0x02, 0x00, 0x3C, 0x00, 0x00, 0x00]
    ),
    InvalidProtocolName
);
rejects!(
    protocol_level_6,
    V5,
    frame(
        0x10,
        &cat(&[&mqtt(6), &[0x02, 0x00, 0x3C, 0x00, 0x00, 0x00]])
    ),
    UnsupportedProtocolVersion(6),
    reason::UNSUPPORTED_PROTOCOL_VERSION
);
rejects!(
    protocol_level_3_with_name_mqtt,
    V3,
    frame(0x10, &cat(&[&mqtt(3), &[0x02, 0x00, 0x3C, 0x00, 0x00]])),
    UnsupportedProtocolVersion(3),
    reason::UNSUPPORTED_PROTOCOL_VERSION
);
rejects!(
    will_qos_without_will_flag,
    V3,
    connect_v3(0x0A, &[0x00, 0x00]),
    InvalidConnectFlags(0x0A),
    reason::MALFORMED_PACKET
);
rejects!(
    will_retain_without_will_flag,
    V5,
    frame(
        0x10,
        &cat(&[&mqtt(5), &[0x22, 0x00, 0x3C, 0x00, 0x00, 0x00]])
    ),
    InvalidConnectFlags(0x22)
);
// §3.1.2.3: the reserved flag must be 0; otherwise the packet is malformed.
rejects!(
    reserved_connect_flag,
    V3,
    connect_v3(0x03, &[0x00, 0x00]),
    InvalidConnectFlags(0x03),
    reason::MALFORMED_PACKET
);
// 3.1.1 §3.1.2.9 (MQTT-3.1.2-22): no password without a user name.
rejects!(
    password_without_username_v311,
    V3,
    connect_v3(0x42, &[0x00, 0x00, 0x00, 0x02, b'p', b'w']),
    InvalidConnectFlags(0x42)
);
rejects!(
    password_without_username_v31,
    V3,
    frame(
        0x10,
        &[
            0x00, 0x06, b'M', b'Q', b'I', b's', b'd', b'p', 0x03, 0x42, 0x00, 0x3C, 0x00, 0x00,
            0x00, 0x02, b'p', b'w'
        ]
    ),
    InvalidConnectFlags(0x42)
);

/// MQTT 5 §3.1.2.9 lifts the 3.1.1 rule: a password may come without a user name.
#[test]
fn password_without_username_accepted_in_v5() {
    let bytes = frame(
        0x10,
        &cat(&[
            &mqtt(5),
            &[0x42, 0x00, 0x3C, 0x00, 0x00, 0x00, 0x00, 0x02, b'p', b'w'],
        ]),
    );
    let Packet::Connect(c) = decode_full(&bytes, V5) else {
        panic!("not a CONNECT")
    };
    assert_eq!((c.username, c.password), (None, Some(&b"pw"[..])));
}

// ---------------------------------------------------------------------------------------
// SUBSCRIBE / UNSUBSCRIBE payloads (§3.8.3, §3.10.3)
// ---------------------------------------------------------------------------------------

rejects!(
    subscribe_without_filters_v311,
    V3,
    [0x82, 0x02, 0x00, 0x01],
    NoTopicFilter,
    reason::PROTOCOL_ERROR
);
rejects!(
    subscribe_without_filters_v5,
    V5,
    [0x82, 0x03, 0x00, 0x01, 0x00],
    NoTopicFilter,
    reason::PROTOCOL_ERROR
);
rejects!(
    unsubscribe_without_filters_v311,
    V3,
    [0xA2, 0x02, 0x00, 0x01],
    NoTopicFilter
);
rejects!(
    unsubscribe_without_filters_v5,
    V5,
    [0xA2, 0x03, 0x00, 0x01, 0x00],
    NoTopicFilter,
    reason::PROTOCOL_ERROR
);
// 3.1.1 §3.8.3.1: bits 2-7 of the requested QoS byte are reserved (No Local is v5-only).
rejects!(
    subscription_options_reserved_bits_v311,
    V3,
    [0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x04],
    InvalidSubscriptionOptions(0x04)
);
// 5.0 §3.8.3.1 (MQTT-3.8.3-5): bits 6-7 reserved; a set one makes the packet malformed.
rejects!(
    subscription_options_reserved_bits_v5,
    V5,
    subscribe_v5(&[], 0x40),
    InvalidSubscriptionOptions(0x40),
    reason::MALFORMED_PACKET
);
rejects!(
    retain_handling_3,
    V5,
    subscribe_v5(&[], 0x30),
    InvalidSubscriptionOptions(0x30)
);
rejects!(
    subscription_options_byte_missing,
    V3,
    [0x82, 0x05, 0x00, 0x01, 0x00, 0x01, b'a'],
    UnexpectedEnd
);

// ---------------------------------------------------------------------------------------
// Trailing bytes
// ---------------------------------------------------------------------------------------

rejects!(
    trailing_byte_after_pingreq,
    V5,
    [0xC0, 0x01, 0x00],
    TrailingBytes(1)
);
rejects!(
    trailing_byte_after_pingresp,
    V3,
    [0xD0, 0x02, 0x00, 0x00],
    TrailingBytes(2)
);
rejects!(
    trailing_byte_after_disconnect_v311,
    V3,
    [0xE0, 0x01, 0x00],
    TrailingBytes(1)
);
rejects!(
    trailing_byte_after_puback_v311,
    V3,
    [0x40, 0x03, 0x00, 0x01, 0x00],
    TrailingBytes(1)
);
rejects!(
    trailing_byte_after_unsuback_v311,
    V3,
    [0xB0, 0x03, 0x00, 0x01, 0x00],
    TrailingBytes(1)
);
rejects!(
    trailing_byte_after_connack_v311,
    V3,
    [0x20, 0x03, 0x00, 0x00, 0x00],
    TrailingBytes(1)
);
rejects!(
    trailing_byte_after_puback_properties_v5,
    V5,
    [0x40, 0x05, 0x00, 0x01, 0x00, 0x00, 0xAA],
    TrailingBytes(1)
);

// ---------------------------------------------------------------------------------------
// Reason codes outside each packet's table
// ---------------------------------------------------------------------------------------

rejects!(
    puback_invalid_reason,
    V5,
    [0x40, 0x03, 0x00, 0x01, 0x05],
    InvalidReasonCode(0x05),
    reason::MALFORMED_PACKET
);
rejects!(
    pubrec_invalid_reason,
    V5,
    [0x50, 0x03, 0x00, 0x01, 0x92],
    InvalidReasonCode(0x92)
);
rejects!(
    pubrel_puback_only_reason,
    V5,
    [0x62, 0x03, 0x00, 0x01, 0x10],
    InvalidReasonCode(0x10)
);
rejects!(
    pubcomp_invalid_reason,
    V5,
    [0x70, 0x03, 0x00, 0x01, 0x80],
    InvalidReasonCode(0x80)
);
rejects!(
    disconnect_invalid_reason,
    V5,
    [0xE0, 0x01, 0x05],
    InvalidReasonCode(0x05)
);
rejects!(
    disconnect_connack_only_reason,
    V5,
    [0xE0, 0x01, 0x84],
    InvalidReasonCode(0x84)
);
rejects!(
    auth_invalid_reason,
    V5,
    [0xF0, 0x01, 0x01],
    InvalidReasonCode(0x01)
);
rejects!(
    suback_invalid_reason_v5,
    V5,
    [0x90, 0x04, 0x00, 0x01, 0x00, 0x03],
    InvalidReasonCode(0x03)
);
rejects!(
    suback_invalid_return_code_v311,
    V3,
    [0x90, 0x03, 0x00, 0x01, 0x83],
    InvalidReasonCode(0x83)
);
rejects!(
    unsuback_invalid_reason,
    V5,
    [0xB0, 0x04, 0x00, 0x01, 0x00, 0x10],
    InvalidReasonCode(0x10)
);
rejects!(
    connack_invalid_return_code_v311,
    V3,
    [0x20, 0x02, 0x00, 0x06],
    InvalidReasonCode(0x06)
);
rejects!(
    connack_invalid_reason_v5,
    V5,
    [0x20, 0x03, 0x00, 0x01, 0x00],
    InvalidReasonCode(0x01)
);

// ---------------------------------------------------------------------------------------
// CONNACK acknowledge flags (3.1.1 §3.2.2.1, 5.0 §3.2.2.1)
// ---------------------------------------------------------------------------------------

rejects!(
    connack_reserved_flags_v311,
    V3,
    [0x20, 0x02, 0x02, 0x00],
    InvalidConnAckFlags(0x02)
);
rejects!(
    connack_reserved_flags_v5,
    V5,
    [0x20, 0x03, 0x81, 0x00, 0x00],
    InvalidConnAckFlags(0x81),
    reason::MALFORMED_PACKET
);

// ---------------------------------------------------------------------------------------
// Fields running past the end of a complete frame
// ---------------------------------------------------------------------------------------

rejects!(
    topic_longer_than_frame,
    V3,
    [0x30, 0x02, 0x00, 0x05],
    UnexpectedEnd,
    reason::MALFORMED_PACKET
);
rejects!(packet_id_cut_short, V3, [0x40, 0x01, 0x00], UnexpectedEnd);
rejects!(
    connect_cut_inside_protocol_name,
    V3,
    [0x10, 0x03, 0x00, 0x04, b'M'],
    UnexpectedEnd
);
rejects!(
    property_block_longer_than_frame,
    V5,
    [0x30, 0x05, 0x00, 0x01, b'a', 0x05, 0x01],
    UnexpectedEnd
);
rejects!(
    property_value_longer_than_block,
    V5,
    [0x30, 0x06, 0x00, 0x01, b'a', 0x02, 0x02, 0x00],
    UnexpectedEnd
);
rejects!(
    suback_without_codes,
    V3,
    [0x90, 0x02, 0x00, 0x01],
    UnexpectedEnd
);
rejects!(
    unsuback_without_codes_v5,
    V5,
    [0xB0, 0x03, 0x00, 0x01, 0x00],
    UnexpectedEnd
);
// 5.0 §3.2.2.3: the CONNACK property length is not optional.
rejects!(
    connack_without_property_length_v5,
    V5,
    [0x20, 0x02, 0x00, 0x00],
    UnexpectedEnd
);
rejects!(
    subscribe_without_property_length_v5,
    V5,
    [0x82, 0x02, 0x00, 0x01],
    UnexpectedEnd
);
rejects!(
    username_flag_without_username,
    V3,
    connect_v3(0x82, &[0x00, 0x00]),
    UnexpectedEnd
);
rejects!(
    will_flag_without_will_fields,
    V5,
    frame(
        0x10,
        &cat(&[&mqtt(5), &[0x06, 0x00, 0x3C, 0x00, 0x00, 0x00]])
    ),
    UnexpectedEnd
);

// ---------------------------------------------------------------------------------------
// Accepted although unusual
// ---------------------------------------------------------------------------------------

/// Non-minimal variable byte integers are accepted. MQTT-1.5.5-1 ("The encoded value
/// MUST use the minimum number of bytes necessary to represent the value") binds the
/// *sender*; neither 3.1.1 §2.2.3 nor 5.0 §1.5.5 tells a receiver to reject a longer
/// form, so the decoder is liberal here and the encoder always writes the shortest form.
#[test]
fn non_minimal_variable_byte_integers_accepted() {
    // Remaining length 0 in two bytes.
    assert_eq!(
        decode(&[0xC0, 0x80, 0x00], V3, u32::MAX),
        Ok(Some((Packet::PingReq, 3)))
    );
    // Remaining length 3 in two bytes; re-encoding uses one.
    let bytes = [0x30, 0x83, 0x00, 0x00, 0x01, b'a'];
    let p = decode_full(&bytes, V3);
    assert_eq!(encode(&p, V3), [0x30, 0x03, 0x00, 0x01, b'a']);
    // Property length 0 in two bytes.
    let bytes = [0x30, 0x05, 0x00, 0x01, b'a', 0x80, 0x00];
    let p = decode_full(&bytes, V5);
    assert_eq!(
        p,
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: "a",
            packet_id: 0,
            properties: Properties::default(),
            payload: b"",
        })
    );
    // Subscription Identifier 1 in two bytes.
    let bytes = [0x30, 0x07, 0x00, 0x01, b'a', 0x03, 0x0B, 0x81, 0x00];
    let Packet::Publish(p) = decode_full(&bytes, V5) else {
        panic!("not a PUBLISH")
    };
    assert_eq!(
        p.properties
            .subscription_identifiers()
            .iter()
            .collect::<Vec<_>>(),
        [1]
    );
    // Four-byte encoding of 1 as remaining length is still within the four-byte limit.
    assert_eq!(
        decode(&[0x40, 0x82, 0x80, 0x80, 0x00, 0x00, 0x01], V3, u32::MAX),
        Ok(Some((Packet::PubAck(Ack::new(1)), 7)))
    );
}

/// A CONNECT is decoded by its own protocol name and level, whatever the connection's.
#[test]
fn connect_ignores_connection_protocol() {
    let bytes = connect_v3(0x02, &[0x00, 0x01, b'c']);
    for proto in [V31, V3, V5] {
        let Packet::Connect(Connect { protocol, .. }) = decode_full(&bytes, proto) else {
            panic!("not a CONNECT")
        };
        assert_eq!(protocol, V3);
    }
}

/// Every error maps to a reason code a server can send: one of the MQTT 5 DISCONNECT
/// table, or 0x84 which goes in CONNACK (the only place a CONNECT error is reported).
#[test]
fn reason_codes_of_errors() {
    let table = [
        (InvalidPacketType(0), 0x81),
        (
            InvalidHeaderFlags {
                packet_type: 8,
                flags: 0,
            },
            0x81,
        ),
        (MalformedVarInt, 0x81),
        (PacketTooLarge { size: 10, max: 5 }, 0x95),
        (UnexpectedEnd, 0x81),
        (TrailingBytes(1), 0x81),
        (InvalidUtf8, 0x81),
        (InvalidProtocolName, 0x81),
        (UnsupportedProtocolVersion(6), 0x84),
        (InvalidConnectFlags(1), 0x81),
        (InvalidConnAckFlags(2), 0x81),
        (InvalidQoS, 0x81),
        (DupOnQoS0, 0x81),
        (InvalidSubscriptionOptions(0x40), 0x81),
        (InvalidTopicFilter, 0x81),
        (ZeroPacketId, 0x82),
        (NoTopicFilter, 0x82),
        (UnknownProperty(5), 0x81),
        (PropertyNotAllowed(0x23), 0x81),
        (DuplicateProperty(3), 0x82),
        (InvalidPropertyValue(0x21), 0x82),
        (InvalidTopicAlias, 0x94),
        (InvalidReasonCode(5), 0x81),
    ];
    for (e, rc) in table {
        assert_eq!(e.reason_code(), rc, "{e:?}");
        assert!(
            common::DISCONNECT_V5.contains(&rc) || common::CONNACK_V5.contains(&rc),
            "{rc:#04x}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Reason codes the specification prescribes where a plausible mapping differs. Each
// asserts the specification's reason code.
// ---------------------------------------------------------------------------------------

/// MQTT 5 §3.3.2.1: "It is a Protocol Error if the Topic Name is zero length and there
/// is no Topic Alias." `InvalidTopicName` must map to 0x82, not 0x90 (Topic Name
/// invalid: "correctly formed, but not accepted").
#[test]
fn spec_empty_topic_without_alias_is_protocol_error() {
    let e = decode_err(&[0x30, 0x03, 0x00, 0x00, 0x00], V5);
    assert_eq!(e, InvalidTopicName);
    assert_eq!(e.reason_code(), reason::PROTOCOL_ERROR, "{e:?}");
}

/// MQTT 5 §3.8.3.1: "It is a Protocol Error if the Maximum QoS field has the value 3."
/// (Unlike QoS 3 in a PUBLISH, which is malformed, 0x81.)
#[test]
fn spec_subscription_qos_3_is_protocol_error() {
    let e = decode_err(&subscribe_v5(&[], 0x03), V5);
    assert_eq!(e.reason_code(), reason::PROTOCOL_ERROR, "{e:?}");
}

/// MQTT 5 §3.8.3.1: "It is a Protocol Error to send a Retain Handling value of 3."
/// (A reserved bit set in the same byte stays malformed, 0x81.)
#[test]
fn spec_retain_handling_3_is_protocol_error() {
    let e = decode_err(&subscribe_v5(&[], 0x30), V5);
    assert_eq!(e.reason_code(), reason::PROTOCOL_ERROR, "{e:?}");
}
