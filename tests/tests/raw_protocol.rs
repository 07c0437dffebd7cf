//! Raw-socket tests of protocol corners that no ready-made client exposes: packets are
//! built with `mote_codec` (or by hand when they must be invalid) and sent over a
//! blocking `TcpStream`. Each test runs its own broker.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{
    connack, connect, connect_packet, connect_raw, connect_with, encode, expiry_props, publish,
    will, Msg, Raw, Recv, WAIT,
};
use mote_codec::{
    reason, Ack, Connect, Disconnect, Packet, PropValues, Properties, Protocol, QoS,
    RetainHandling, SubOptions, Unsubscribe,
};
use mote_tests::Broker;

const V5: Protocol = Protocol::V5;
const V311: Protocol = Protocol::V311;

fn opts(qos: QoS) -> SubOptions {
    SubOptions::qos(qos)
}

/// Publishes `topic`/`payload` at QoS 1 from a fresh v5 client and disconnects.
fn publish_once(broker: &Broker, topic: &str, payload: &[u8]) {
    publish_once_qos(broker, topic, payload, QoS::AtLeastOnce);
}

/// Publishes `topic`/`payload` at `qos` from a fresh v5 client and disconnects.
fn publish_once_qos(broker: &Broker, topic: &str, payload: &[u8], qos: QoS) {
    let mut p = connect(broker.addr, V5, "");
    p.publish_acked(&publish(topic, payload, qos, 1));
    p.disconnect();
}

/// A CONNECT for a session that outlives the connection: v5 Clean Start 1 with Session
/// Expiry `secs`; 3.1.1 Clean Session 0.
fn persistent(protocol: Protocol, id: &str, secs: u32) -> Connect<'_> {
    let mut c = connect_packet(protocol, id, protocol == V5);
    if protocol == V5 {
        c.properties = Properties::Values(expiry_props(secs));
    }
    c
}

/// Reconnects a persistent session (Clean Start 0) and asserts Session Present 1.
fn resume(broker: &Broker, protocol: Protocol, id: &str) -> Raw {
    let mut c = persistent(protocol, id, 60);
    c.clean_start = false;
    let (raw, ack) = connect_with(broker.addr, &c);
    assert_eq!(connack(&ack), (true, 0), "session should be present");
    raw
}

// ---------------------------------------------------------------------------------------
// CONNECT
// ---------------------------------------------------------------------------------------

#[test]
fn first_packet_not_connect_closes_connection() {
    let broker = Broker::start();
    let firsts: [(&str, Vec<u8>); 3] = [
        ("PINGREQ", vec![0xC0, 0x00]),
        (
            "PUBLISH",
            encode(
                &Packet::Publish(publish("a", b"x", QoS::AtMostOnce, 0)),
                V311,
            ),
        ),
        (
            "SUBSCRIBE",
            vec![0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x00],
        ),
    ];
    for (name, bytes) in firsts {
        let mut raw = Raw::open(broker.addr, V311);
        raw.send_raw(&bytes);
        let frames = raw.expect_closed_within(WAIT);
        // MQTT-3.1.0-1: the first packet must be CONNECT.
        assert!(frames.is_empty(), "{name} first: got {frames:?}");
    }
    // The broker is still fine.
    connect(broker.addr, V311, "after").disconnect();
}

#[test]
fn second_connect_is_a_protocol_error() {
    let broker = Broker::start();
    // MQTT 5 MQTT-3.1.0-2: a second CONNECT is a Protocol Error.
    let mut raw = connect(broker.addr, V5, "twice-5");
    raw.send(&Packet::Connect(connect_packet(V5, "twice-5", true)));
    assert_eq!(raw.expect_close(), Some(reason::PROTOCOL_ERROR));
    // 3.1.1 (MQTT-3.1.0-2): close, no DISCONNECT in 3.1.1.
    let mut raw = connect(broker.addr, V311, "twice-311");
    raw.send(&Packet::Connect(connect_packet(V311, "twice-311", true)));
    assert_eq!(raw.expect_close(), None);
}

#[test]
fn unsupported_protocol_level_gets_return_code_1() {
    let broker = Broker::start();
    let mut bytes = encode(&Packet::Connect(connect_packet(V311, "level6", true)), V311);
    // [0x10, len, 0x00, 0x04, 'M', 'Q', 'T', 'T', level, ...]
    assert_eq!(&bytes[2..8], b"\x00\x04MQTT");
    bytes[8] = 6;
    let mut raw = Raw::open(broker.addr, V311);
    raw.send_raw(&bytes);
    let frames = raw.expect_closed_within(WAIT);
    // MQTT-3.1.2-2: CONNACK return code 0x01, then close.
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0].bytes, vec![0x20, 0x02, 0x00, 0x01]);
}

#[test]
fn connect_reserved_flag_closes_connection() {
    let broker = Broker::start();
    // MQTT-3.1.2-3 (reserved flag), MQTT-3.1.2-13/-15 (will QoS / will retain without
    // will flag).
    for (protocol, flag) in [
        (V311, 0x01),
        (V5, 0x01),
        (V311, 0x20),
        (V311, 0x08),
        (V5, 0x20),
    ] {
        let mut bytes = encode(
            &Packet::Connect(connect_packet(protocol, "reserved", true)),
            protocol,
        );
        // The flags byte follows name (6 bytes) and level.
        assert_eq!(bytes[9] & 0x2D, 0);
        bytes[9] |= flag;
        let mut raw = Raw::open(broker.addr, protocol);
        raw.send_raw(&bytes);
        let frames = raw.expect_closed_within(WAIT);
        // MQTT-3.1.2-3: the reserved flag must be 0; a CONNACK, if any, must refuse.
        for f in &frames {
            assert_eq!(f.kind(), 2, "{}", f.describe());
            assert_ne!(f.bytes[3], 0, "reserved flag accepted: {}", f.describe());
        }
    }
}

#[test]
fn connack_v5_announces_server_limits() {
    let broker = Broker::start_with(
        &["--memory"],
        Some("[mqtt]\nreceive_maximum = 7\ntopic_alias_maximum = 9\nmax_packet_size = 5000\n"),
    );
    let (_raw, ack) = connect_with(broker.addr, &connect_packet(V5, "limits", true));
    let Packet::ConnAck(a) = ack.packet() else {
        unreachable!()
    };
    let p = a.properties;
    assert_eq!(p.receive_maximum(), Some(7), "Receive Maximum");
    assert_eq!(p.maximum_packet_size(), Some(5000), "Maximum Packet Size");
    assert_eq!(p.topic_alias_maximum(), Some(9), "Topic Alias Maximum");
    assert_eq!(p.retain_available(), Some(true), "Retain Available");
    assert_eq!(
        p.wildcard_subscription_available(),
        Some(true),
        "Wildcard Subscription Available"
    );
    assert_eq!(
        p.shared_subscription_available(),
        Some(true),
        "Shared Subscription Available"
    );
    assert_eq!(
        p.subscription_identifier_available(),
        Some(true),
        "Subscription Identifier Available"
    );
    // Absent Maximum QoS means 2.
    assert_eq!(p.maximum_qos(), None);
}

#[test]
fn server_keep_alive_caps_the_client_keep_alive() {
    let broker = Broker::start_with(&["--memory"], Some("[mqtt]\nmax_keepalive = 60\n"));
    let mut c = connect_packet(V5, "ka-long", true);
    c.keep_alive = 120;
    let (_raw, ack) = connect_with(broker.addr, &c);
    let Packet::ConnAck(a) = ack.packet() else {
        unreachable!()
    };
    assert_eq!(a.properties.server_keep_alive(), Some(60));
    let mut c = connect_packet(V5, "ka-short", true);
    c.keep_alive = 30;
    let (_raw, ack) = connect_with(broker.addr, &c);
    let Packet::ConnAck(a) = ack.packet() else {
        unreachable!()
    };
    assert!(
        matches!(a.properties.server_keep_alive(), None | Some(30)),
        "a keep alive under the maximum is left alone: {:?}",
        a.properties.server_keep_alive()
    );
}

fn keepalive_enforced(protocol: Protocol) {
    let broker = Broker::start();
    let mut c = connect_packet(protocol, "sleepy", true);
    c.keep_alive = 1;
    let (mut raw, _) = connect_with(broker.addr, &c);
    let t0 = Instant::now();
    let frames = raw.expect_closed_within(Duration::from_secs(5));
    let after = t0.elapsed();
    // MQTT-3.1.2-24 (3.1.1) / MQTT-3.1.2-22 (5): close after 1.5 x keep alive.
    assert!(
        after >= Duration::from_millis(1400) && after <= Duration::from_millis(3000),
        "closed after {after:?} for keep alive 1 s"
    );
    let reasons: Vec<Option<u8>> = frames.iter().map(|f| f.disconnect_reason()).collect();
    if protocol == V5 {
        assert_eq!(reasons, vec![Some(reason::KEEP_ALIVE_TIMEOUT)]);
    } else {
        assert!(reasons.is_empty(), "{reasons:?}");
    }
}

#[test]
fn keepalive_enforced_at_one_and_a_half_times_v5() {
    keepalive_enforced(V5);
}

#[test]
fn keepalive_enforced_at_one_and_a_half_times_v311() {
    keepalive_enforced(V311);
}

fn keepalive_zero(protocol: Protocol) {
    let broker = Broker::start();
    let mut c = connect_packet(protocol, "forever", true);
    c.keep_alive = 0;
    let (mut raw, ack) = connect_with(broker.addr, &c);
    if let Packet::ConnAck(a) = ack.packet() {
        if let Some(ka) = a.properties.server_keep_alive() {
            assert!(
                ka == 0 || ka > 3,
                "server keep alive {ka} would end the test"
            );
        }
    }
    match raw.recv(Duration::from_secs(3)) {
        Recv::Timeout => {}
        other => panic!("keep alive 0 connection ended or got {other:?}"),
    }
    raw.send(&Packet::PingReq);
    raw.expect_kind(13);
}

#[test]
fn keepalive_zero_is_accepted_v5() {
    keepalive_zero(V5);
}

#[test]
fn keepalive_zero_is_accepted_v311() {
    keepalive_zero(V311);
}

#[test]
fn empty_client_id_v5_gets_assigned_identifier() {
    let broker = Broker::start();
    let mut ids = Vec::new();
    for _ in 0..2 {
        let (_raw, ack) = connect_with(broker.addr, &connect_packet(V5, "", true));
        let Packet::ConnAck(a) = ack.packet() else {
            unreachable!()
        };
        let id = a
            .properties
            .assigned_client_identifier()
            .expect("MQTT-3.2.2-16: Assigned Client Identifier")
            .to_owned();
        assert!(!id.is_empty());
        ids.push(id);
    }
    assert_ne!(ids[0], ids[1], "assigned identifiers must be unique");
}

#[test]
fn empty_client_id_v311_needs_clean_session() {
    let broker = Broker::start();
    // Clean Session 1: accepted (MQTT-3.1.3-6).
    let (raw, ack) = connect_raw(broker.addr, &connect_packet(V311, "", true));
    assert_eq!(connack(&ack), (false, 0));
    raw.disconnect();
    // Clean Session 0: CONNACK 0x02 (identifier rejected) and close (MQTT-3.1.3-8).
    let (mut raw, ack) = connect_raw(broker.addr, &connect_packet(V311, "", false));
    assert_eq!(connack(&ack), (false, reason::v3::IDENTIFIER_REJECTED));
    assert!(raw.expect_closed_within(WAIT).is_empty());
}

#[test]
fn session_present_flag() {
    let broker = Broker::start();
    for protocol in [V311, V5] {
        let id = format!("sp-{protocol:?}");
        // No session yet: Session Present 0 even with Clean Start 0.
        let mut c = persistent(protocol, &id, 60);
        c.clean_start = false;
        let (raw, ack) = connect_with(broker.addr, &c);
        assert_eq!(connack(&ack), (false, 0));
        raw.disconnect();
        let raw = resume(&broker, protocol, &id);
        raw.disconnect();
        // Clean Start 1 discards it: Session Present 0 (3.1.1 MQTT-3.2.2-1, v5 MQTT-3.2.2-2).
        let (raw, ack) = connect_with(broker.addr, &connect_packet(protocol, &id, true));
        assert_eq!(connack(&ack), (false, 0), "{protocol:?}");
        raw.disconnect();
    }
}

fn takeover(protocol: Protocol) {
    let broker = Broker::start();
    let mut observer = connect(broker.addr, V5, "observer");
    observer.subscribe("takeover/#", QoS::AtLeastOnce);
    let mut c = connect_packet(protocol, "twin", true);
    c.will = Some(will("takeover/will", b"old-gone"));
    let (mut first, _) = connect_with(broker.addr, &c);
    let (mut second, ack) = connect_with(broker.addr, &connect_packet(protocol, "twin", true));
    assert_eq!(connack(&ack), (false, 0));
    // MQTT-3.1.4-2 (3.1.1) / MQTT-3.1.4-3 (5): the existing connection is closed, in v5
    // after DISCONNECT 0x8E.
    let expected = (protocol == V5).then_some(reason::SESSION_TAKEN_OVER);
    assert_eq!(first.expect_close(), expected);
    // Its will is published: the old connection did not end with a normal DISCONNECT.
    let m = observer.expect_publish();
    assert_eq!(
        (m.topic.as_str(), m.payload.as_slice()),
        ("takeover/will", &b"old-gone"[..])
    );
    // The new connection works.
    second.subscribe("takeover/t", QoS::AtMostOnce);
    publish_once(&broker, "takeover/t", b"hi");
    assert_eq!(second.expect_publish().payload, b"hi");
}

#[test]
fn takeover_disconnects_old_connection_v5() {
    takeover(V5);
}

#[test]
fn takeover_disconnects_old_connection_v311() {
    takeover(V311);
}

// ---------------------------------------------------------------------------------------
// Malformed packets and protocol errors
// ---------------------------------------------------------------------------------------

/// Sends `bytes` on an established connection of `protocol`; expects it closed (with a
/// v5 DISCONNECT carrying `expected`) while an already-connected client keeps working.
fn bad_packet(protocol: Protocol, bytes: &[u8], expected: u8) {
    bad_packet_on(&Broker::start(), protocol, bytes, expected);
}

fn bad_packet_on(broker: &Broker, protocol: Protocol, bytes: &[u8], expected: u8) {
    bad_packet_any(broker, protocol, bytes, &[expected]);
}

/// Like [`bad_packet_on`], where the spec leaves the choice between several codes.
fn bad_packet_any(broker: &Broker, protocol: Protocol, bytes: &[u8], expected: &[u8]) {
    let mut observer = connect(broker.addr, V5, "observer");
    observer.subscribe("obs/#", QoS::AtLeastOnce);
    let mut bad = connect(broker.addr, protocol, "culprit");
    bad.send_raw(bytes);
    let got = bad.expect_close();
    if protocol == V5 {
        assert!(
            got.is_some_and(|r| expected.contains(&r)),
            "DISCONNECT reason for {bytes:02x?}: got {got:02x?}, expected one of {expected:02x?}"
        );
    } else {
        assert_eq!(got, None, "3.1.1 has no server DISCONNECT");
    }
    publish_once(broker, "obs/after", b"still here");
    let m = observer.expect_publish();
    assert_eq!(m.topic, "obs/after");
    observer.ack(&m);
}

#[test]
fn malformed_subscribe_reserved_header_flags() {
    // MQTT-3.8.1-1: SUBSCRIBE flags must be 0010; anything else is malformed.
    bad_packet(
        V5,
        &[0x80, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b'a', 0x00],
        reason::MALFORMED_PACKET,
    );
}

#[test]
fn malformed_subscribe_reserved_header_flags_v311() {
    bad_packet(V311, &[0x80, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x00], 0);
}

#[test]
fn malformed_publish_qos_3() {
    // MQTT-3.3.1-4: both QoS bits set is a Malformed Packet.
    bad_packet(
        V5,
        &[0x36, 0x07, 0x00, 0x01, b'a', 0x00, 0x01, 0x00, b'x'],
        reason::MALFORMED_PACKET,
    );
}

#[test]
fn malformed_publish_qos_3_v311() {
    bad_packet(V311, &[0x36, 0x06, 0x00, 0x01, b'a', 0x00, 0x01, b'x'], 0);
}

#[test]
fn malformed_publish_topic_not_utf8() {
    // MQTT-1.5.4-1 (v5) / MQTT-1.5.3-1: ill-formed UTF-8 is a Malformed Packet.
    bad_packet(
        V5,
        &[0x30, 0x06, 0x00, 0x02, 0xC3, 0x28, 0x00, b'x'],
        reason::MALFORMED_PACKET,
    );
}

#[test]
fn malformed_publish_topic_with_nul() {
    // MQTT-1.5.4-2: U+0000 in a string is malformed.
    bad_packet(
        V5,
        &[0x30, 0x06, 0x00, 0x02, b'a', 0x00, 0x00, b'x'],
        reason::MALFORMED_PACKET,
    );
}

#[test]
fn malformed_remaining_length_of_five_bytes() {
    // §1.5.5 / §2.2.3: a Variable Byte Integer has at most 4 bytes.
    bad_packet(
        V5,
        &[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01],
        reason::MALFORMED_PACKET,
    );
}

#[test]
fn malformed_subscription_options_reserved_bits() {
    // MQTT-3.8.3-5: reserved bits of the subscription options set: malformed.
    bad_packet(
        V5,
        &[0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b'a', 0x40],
        reason::MALFORMED_PACKET,
    );
}

#[test]
fn protocol_error_subscribe_without_filter() {
    // MQTT-3.8.3-2: "A SUBSCRIBE packet with no Payload is a Protocol Error."
    bad_packet(V5, &[0x82, 0x03, 0x00, 0x01, 0x00], reason::PROTOCOL_ERROR);
}

#[test]
fn protocol_error_retain_handling_3() {
    // §3.8.3.1: "It is a Protocol Error to send a Retain Handling value of 3."
    bad_packet(
        V5,
        &[0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b'a', 0x30],
        reason::PROTOCOL_ERROR,
    );
}

#[test]
fn protocol_error_subscription_identifier_0() {
    // §3.8.2.1.2: "It is a Protocol Error if the Subscription Identifier has a value of 0."
    bad_packet(
        V5,
        &[
            0x82, 0x09, 0x00, 0x01, 0x02, 0x0B, 0x00, 0x00, 0x01, b'a', 0x00,
        ],
        reason::PROTOCOL_ERROR,
    );
}

#[test]
fn packet_too_large_gets_0x95() {
    let broker = Broker::start_with(&["--memory"], Some("[mqtt]\nmax_packet_size = 1024\n"));
    let (raw, ack) = connect_with(broker.addr, &connect_packet(V5, "probe", true));
    let Packet::ConnAck(a) = ack.packet() else {
        unreachable!()
    };
    assert_eq!(a.properties.maximum_packet_size(), Some(1024));
    raw.disconnect();
    let big = vec![b'z'; 2000];
    let bytes = encode(
        &Packet::Publish(publish("obs/big", &big, QoS::AtMostOnce, 0)),
        V5,
    );
    // v5 §3.2.2.3.6 / §4.13: a packet above the announced maximum: DISCONNECT 0x95.
    bad_packet_on(&broker, V5, &bytes, reason::PACKET_TOO_LARGE);
}

#[test]
fn auth_without_method_is_a_protocol_error() {
    let broker = Broker::start();
    let mut raw = connect(broker.addr, V5, "authless");
    let mut d = Disconnect::new(reason::RE_AUTHENTICATE);
    let d_props = PropValues {
        authentication_method: Some("SCRAM-SHA-1"),
        ..d.properties.values()
    };
    d.properties = Properties::Values(&d_props);
    raw.send(&Packet::Auth(d));
    // MQTT-4.12.0-7: the client may not send AUTH without an Authentication Method in
    // CONNECT, so it is a Protocol Error (0x8C is not a DISCONNECT reason code, §3.14.2.1;
    // an unsupported method in CONNECT gets CONNACK 0x8C instead).
    assert_eq!(raw.expect_close(), Some(reason::PROTOCOL_ERROR));
}

// ---------------------------------------------------------------------------------------
// QoS flows across reconnects
// ---------------------------------------------------------------------------------------

fn qos2_inbound_interrupted(protocol: Protocol) {
    let broker = Broker::start();
    let mut sub = connect(broker.addr, V5, "q2-sub");
    sub.subscribe("q2/t", QoS::ExactlyOnce);

    let (mut p, _) = connect_with(broker.addr, &persistent(protocol, "q2-pub", 60));
    p.send(&Packet::Publish(publish(
        "q2/t",
        b"once",
        QoS::ExactlyOnce,
        7,
    )));
    let rec = p.expect_kind(5);
    assert!(matches!(rec.packet(), Packet::PubRec(a) if a.packet_id == 7));
    drop(p);

    let mut p = resume(&broker, protocol, "q2-pub");
    let mut again = publish("q2/t", b"once", QoS::ExactlyOnce, 7);
    again.dup = true;
    p.send(&Packet::Publish(again));
    // MQTT-4.3.3-10 (v5) / MQTT-4.3.3-2: acknowledge with PUBREC, deliver no duplicate.
    let rec = p.expect_kind(5);
    assert!(
        matches!(rec.packet(), Packet::PubRec(a) if a.packet_id == 7),
        "{}",
        rec.describe()
    );
    p.send(&Packet::PubRel(Ack::new(7)));
    let comp = p.expect_kind(7);
    assert!(
        matches!(comp.packet(), Packet::PubComp(a) if a.packet_id == 7 && a.reason == 0),
        "{}",
        comp.describe()
    );

    let mut got: Vec<Msg> = Vec::new();
    while let Recv::Frame(f) = sub.recv(Duration::from_millis(700)) {
        let m = f.publish();
        sub.send(&Packet::PubRec(Ack::new(m.packet_id)));
        got.push(m);
        // Its PUBREL.
        let rel = sub.expect_kind(6);
        sub.send(&Packet::PubComp(Ack::new(match rel.packet() {
            Packet::PubRel(a) => a.packet_id,
            _ => unreachable!(),
        })));
    }
    let payloads: Vec<&[u8]> = got.iter().map(|m| m.payload.as_slice()).collect();
    assert_eq!(
        payloads,
        vec![&b"once"[..]],
        "exactly one copy to the subscriber"
    );
}

#[test]
fn qos2_inbound_interrupted_before_pubrel_v5() {
    qos2_inbound_interrupted(V5);
}

#[test]
fn qos2_inbound_interrupted_before_pubrel_v311() {
    qos2_inbound_interrupted(V311);
}

fn qos2_outbound_resume(protocol: Protocol) {
    let broker = Broker::start();
    let (mut s, _) = connect_with(broker.addr, &persistent(protocol, "q2o", 60));
    s.subscribe("q2o/t", QoS::ExactlyOnce);
    publish_once_qos(&broker, "q2o/t", b"m1", QoS::ExactlyOnce);
    let m = s.expect_publish();
    assert_eq!(
        (m.qos, m.payload.as_slice()),
        (QoS::ExactlyOnce, &b"m1"[..])
    );
    s.send(&Packet::PubRec(Ack::new(m.packet_id)));
    let rel = s.expect_kind(6);
    assert!(matches!(rel.packet(), Packet::PubRel(a) if a.packet_id == m.packet_id));
    drop(s); // no PUBCOMP

    let mut s = resume(&broker, protocol, "q2o");
    // MQTT-4.4.0-1: unacknowledged PUBRELs are re-sent on reconnect, with their ids.
    let f = s.expect();
    match f.packet() {
        Packet::PubRel(a) => assert_eq!(a.packet_id, m.packet_id),
        _ => panic!("expected PUBREL first, got {}", f.describe()),
    }
    s.send(&Packet::PubComp(Ack::new(m.packet_id)));
    s.expect_nothing();
}

#[test]
fn qos2_outbound_resumes_with_pubrel_v5() {
    qos2_outbound_resume(V5);
}

#[test]
fn qos2_outbound_resumes_with_pubrel_v311() {
    qos2_outbound_resume(V311);
}

fn qos1_resent_with_dup(protocol: Protocol) {
    let broker = Broker::start();
    let (mut s, _) = connect_with(broker.addr, &persistent(protocol, "q1r", 60));
    s.subscribe("q1r/t", QoS::AtLeastOnce);
    publish_once(&broker, "q1r/t", b"again");
    let m = s.expect_publish();
    assert!(!m.dup);
    drop(s); // no PUBACK

    let mut s = resume(&broker, protocol, "q1r");
    // MQTT-4.4.0-1 and MQTT-3.3.1-1: re-sent with the same id and DUP 1.
    let m2 = s.expect_publish();
    assert!(m2.dup, "DUP must be 1 on re-delivery");
    assert_eq!(
        (m2.packet_id, m2.payload.as_slice()),
        (m.packet_id, &b"again"[..])
    );
    s.ack(&m2);
    s.expect_nothing();
}

#[test]
fn qos1_unacked_resent_with_dup_v5() {
    qos1_resent_with_dup(V5);
}

#[test]
fn qos1_unacked_resent_with_dup_v311() {
    qos1_resent_with_dup(V311);
}

#[test]
fn hundred_qos2_in_flight_arrive_exactly_once() {
    let broker = Broker::start();
    let mut sub = connect(broker.addr, V5, "many-sub");
    sub.subscribe("many/t", QoS::ExactlyOnce);
    let mut p = connect(broker.addr, V5, "many-pub");
    let payloads: Vec<String> = (0..100).map(|i| format!("msg-{i}")).collect();
    let mut bytes = Vec::new();
    for (i, pl) in payloads.iter().enumerate() {
        let id = u16::try_from(i + 1).unwrap();
        bytes.extend(encode(
            &Packet::Publish(publish("many/t", pl.as_bytes(), QoS::ExactlyOnce, id)),
            V5,
        ));
    }
    assert!(p.send_raw(&bytes));
    for id in 1..=100u16 {
        let f = p.expect_kind(5);
        assert!(
            matches!(f.packet(), Packet::PubRec(a) if a.packet_id == id && a.reason == 0),
            "{}",
            f.describe()
        );
    }
    let mut rels = Vec::new();
    for id in 1..=100u16 {
        rels.extend(encode(&Packet::PubRel(Ack::new(id)), V5));
    }
    assert!(p.send_raw(&rels));
    for id in 1..=100u16 {
        let f = p.expect_kind(7);
        assert!(
            matches!(f.packet(), Packet::PubComp(a) if a.packet_id == id && a.reason == 0),
            "{}",
            f.describe()
        );
    }

    let mut got = Vec::new();
    let mut open = std::collections::HashSet::new();
    let mut completed = 0;
    while completed < 100 {
        let f = sub.expect();
        match f.packet() {
            Packet::Publish(m) => {
                assert_eq!(m.qos, QoS::ExactlyOnce);
                assert!(
                    open.insert(m.packet_id),
                    "packet id {} reused while in flight",
                    m.packet_id
                );
                got.push(String::from_utf8(m.payload.to_vec()).unwrap());
                sub.send(&Packet::PubRec(Ack::new(m.packet_id)));
            }
            Packet::PubRel(a) => {
                assert!(open.remove(&a.packet_id));
                sub.send(&Packet::PubComp(Ack::new(a.packet_id)));
                completed += 1;
            }
            _ => panic!("unexpected {}", f.describe()),
        }
    }
    sub.expect_nothing();
    assert_eq!(got, payloads, "all 100, once each, in order");
}

// ---------------------------------------------------------------------------------------
// Topic aliases, flow control, packet size
// ---------------------------------------------------------------------------------------

/// A QoS 0 PUBLISH with the properties of [`alias`].
fn aliased<'a>(topic: &'a str, props: &'a PropValues<'a>, payload: &'a [u8]) -> Packet<'a> {
    let mut p = publish(topic, payload, QoS::AtMostOnce, 0);
    p.properties = Properties::Values(props);
    Packet::Publish(p)
}

/// Properties with a topic alias.
fn alias(alias: u16) -> PropValues<'static> {
    PropValues {
        topic_alias: Some(alias),
        ..PropValues::default()
    }
}

#[test]
fn topic_alias_inbound() {
    let broker = Broker::start_with(&["--memory"], Some("[mqtt]\ntopic_alias_maximum = 5\n"));
    let mut sub = connect(broker.addr, V5, "alias-sub");
    sub.subscribe("ta/#", QoS::AtMostOnce);
    let mut p = connect(broker.addr, V5, "alias-pub");
    p.send(&aliased("ta/x", &alias(1), b"first"));
    p.send(&aliased("", &alias(1), b"second"));
    p.send(&aliased("ta/y", &alias(1), b"third")); // remaps alias 1
    p.send(&aliased("", &alias(1), b"fourth"));
    p.send(&aliased("ta/z", &alias(5), b"fifth"));
    p.send(&aliased("", &alias(5), b"sixth"));
    let got: Vec<(String, Vec<u8>)> = (0..6)
        .map(|_| {
            let m = sub.expect_publish();
            (m.topic, m.payload)
        })
        .collect();
    let want: Vec<(String, Vec<u8>)> = [
        ("ta/x", "first"),
        ("ta/x", "second"),
        ("ta/y", "third"),
        ("ta/y", "fourth"),
        ("ta/z", "fifth"),
        ("ta/z", "sixth"),
    ]
    .iter()
    .map(|(t, p)| (t.to_string(), p.as_bytes().to_vec()))
    .collect();
    assert_eq!(got, want);
}

#[test]
fn topic_alias_above_maximum_gets_0x94() {
    let broker = Broker::start_with(&["--memory"], Some("[mqtt]\ntopic_alias_maximum = 5\n"));
    // §3.3.2.3.4: an alias greater than Topic Alias Maximum: DISCONNECT 0x94.
    let bytes = encode(&aliased("obs/x", &alias(6), b"x"), V5);
    bad_packet_on(&broker, V5, &bytes, reason::TOPIC_ALIAS_INVALID);
}

#[test]
fn topic_alias_zero_gets_0x94() {
    // MQTT-3.3.2-8: Topic Alias 0 is not permitted; §3.3.2.3.4: 0x94.
    bad_packet(
        V5,
        &encode(&aliased("obs/x", &alias(0), b"x"), V5),
        reason::TOPIC_ALIAS_INVALID,
    );
}

#[test]
fn topic_alias_unknown_is_a_protocol_error() {
    // Empty topic with an alias never set on this connection: Protocol Error.
    bad_packet(
        V5,
        &encode(&aliased("", &alias(3), b"x"), V5),
        reason::PROTOCOL_ERROR,
    );
}

#[test]
fn topic_aliases_die_with_the_connection() {
    let broker = Broker::start();
    let (mut p, _) = connect_with(broker.addr, &persistent(V5, "alias-reconnect", 60));
    p.send(&aliased("ta/x", &alias(1), b"first"));
    p.send(&Packet::PingReq);
    p.expect_kind(13);
    drop(p);
    // §3.3.2.3.4: aliases are per Network Connection, even when the session resumes.
    let mut p = resume(&broker, V5, "alias-reconnect");
    p.send(&aliased("", &alias(1), b"stale"));
    assert_eq!(p.expect_close(), Some(reason::PROTOCOL_ERROR));
}

#[test]
fn receive_maximum_exceeded_gets_0x93() {
    let broker = Broker::start_with(&["--memory"], Some("[mqtt]\nreceive_maximum = 2\n"));
    // Within the limit, completing flows frees slots.
    let mut ok = connect(broker.addr, V5, "within");
    for id in 1..=2 {
        ok.send(&Packet::Publish(publish(
            "rm/t",
            b"x",
            QoS::ExactlyOnce,
            id,
        )));
        ok.expect_kind(5);
    }
    ok.send(&Packet::PubRel(Ack::new(1)));
    ok.expect_kind(7);
    ok.send(&Packet::Publish(publish("rm/t", b"x", QoS::ExactlyOnce, 3)));
    ok.expect_kind(5);
    ok.disconnect();

    // Three QoS 2 PUBLISH without PUBREL against Receive Maximum 2 (§3.3.4).
    let mut observer = connect(broker.addr, V5, "observer");
    observer.subscribe("obs/#", QoS::AtMostOnce);
    let mut raw = connect(broker.addr, V5, "greedy");
    for id in 1..=3 {
        raw.send(&Packet::Publish(publish(
            "rm/t",
            b"x",
            QoS::ExactlyOnce,
            id,
        )));
    }
    let frames = raw.expect_closed_within(WAIT);
    let kinds: Vec<String> = frames.iter().map(|f| f.describe()).collect();
    assert_eq!(frames.len(), 3, "{kinds:?}");
    assert_eq!(frames[0].kind(), 5, "{kinds:?}");
    assert_eq!(frames[1].kind(), 5, "{kinds:?}");
    assert_eq!(
        frames[2].disconnect_reason(),
        Some(reason::RECEIVE_MAXIMUM_EXCEEDED),
        "{kinds:?}"
    );
    publish_once(&broker, "obs/x", b"fine");
    assert_eq!(observer.expect_publish().payload, b"fine");
}

#[test]
fn server_respects_client_receive_maximum() {
    let broker = Broker::start();
    let mut c = connect_packet(V5, "slow-reader", true);
    let c_props = PropValues {
        receive_maximum: Some(2),
        ..c.properties.values()
    };
    c.properties = Properties::Values(&c_props);
    let (mut sub, _) = connect_with(broker.addr, &c);
    sub.subscribe("crm/t", QoS::AtLeastOnce);
    let mut p = connect(broker.addr, V5, "fast-writer");
    for i in 0..5u16 {
        p.publish_acked(&publish(
            "crm/t",
            format!("{i}").as_bytes(),
            QoS::AtLeastOnce,
            i + 1,
        ));
    }
    // MQTT-3.3.4-9: no more than the client's Receive Maximum unacknowledged.
    let a = sub.expect_publish();
    let b = sub.expect_publish();
    sub.expect_nothing();
    sub.ack(&a);
    let c3 = sub.expect_publish();
    sub.expect_nothing();
    sub.ack(&b);
    sub.ack(&c3);
    let d = sub.expect_publish();
    let e = sub.expect_publish();
    sub.ack(&d);
    sub.ack(&e);
    let payloads: Vec<Vec<u8>> = [a, b, c3, d, e].into_iter().map(|m| m.payload).collect();
    assert_eq!(
        payloads,
        vec![
            b"0".to_vec(),
            b"1".to_vec(),
            b"2".to_vec(),
            b"3".to_vec(),
            b"4".to_vec()
        ]
    );
}

#[test]
fn client_maximum_packet_size_is_respected() {
    let broker = Broker::start();
    let mut c = connect_packet(V5, "tiny", true);
    let c_props = PropValues {
        maximum_packet_size: Some(100),
        ..c.properties.values()
    };
    c.properties = Properties::Values(&c_props);
    let (mut sub, _) = connect_with(broker.addr, &c);
    sub.subscribe("mps/t", QoS::AtLeastOnce);
    let big = vec![b'B'; 500];
    publish_once(&broker, "mps/t", &big);
    publish_once(&broker, "mps/t", b"small");
    // MQTT-3.1.2-24: never send a packet above the client's limit; the message is
    // discarded for that client (MQTT-3.1.2-25) and later ones still flow.
    let f = sub.expect();
    assert!(
        f.bytes.len() <= 100,
        "{} bytes sent to a client with a 100-byte limit",
        f.bytes.len()
    );
    let m = f.publish();
    assert_eq!(m.payload, b"small");
    sub.ack(&m);
    sub.expect_nothing();
}

#[test]
fn outbound_topic_alias() {
    let broker = Broker::start();
    let mut c = connect_packet(V5, "alias-taker", true);
    let c_props = PropValues {
        topic_alias_maximum: Some(5),
        ..c.properties.values()
    };
    c.properties = Properties::Values(&c_props);
    let (mut sub, _) = connect_with(broker.addr, &c);
    sub.subscribe("oa/#", QoS::AtLeastOnce);
    let mut plain = connect(broker.addr, V5, "alias-refuser");
    plain.subscribe("oa/#", QoS::AtLeastOnce);
    for (t, p) in [("oa/t", "1"), ("oa/t", "2"), ("oa/u", "3"), ("oa/t", "4")] {
        publish_once(&broker, t, p.as_bytes());
    }
    let got: Vec<Msg> = (0..4)
        .map(|_| {
            let m = sub.expect_publish();
            sub.ack(&m);
            m
        })
        .collect();
    let first = got[0].topic_alias.expect("first message sets an alias");
    assert!(
        (1..=5).contains(&first),
        "alias {first} above the client's maximum 5"
    );
    assert_eq!(got[0].topic, "oa/t");
    assert_eq!(
        (got[1].topic.as_str(), got[1].topic_alias),
        ("", Some(first)),
        "second message uses the alias"
    );
    let other = got[2].topic_alias;
    assert!(other.is_some_and(|a| a != first && (1..=5).contains(&a)) || other.is_none());
    assert_eq!(got[2].topic, "oa/u");
    assert_eq!(
        (got[3].topic.as_str(), got[3].topic_alias),
        ("", Some(first))
    );
    // MQTT-3.1.2-27: no alias for a client that did not announce a Topic Alias Maximum.
    for _ in 0..4 {
        let m = plain.expect_publish();
        assert_eq!(m.topic_alias, None);
        assert!(m.topic.starts_with("oa/"));
        plain.ack(&m);
    }
}

// ---------------------------------------------------------------------------------------
// Subscriptions
// ---------------------------------------------------------------------------------------

#[test]
fn overlapping_subscriptions_carry_all_identifiers_once() {
    let broker = Broker::start();
    let mut s = connect(broker.addr, V5, "ids");
    assert_eq!(
        s.subscribe_with(1, &[("si/#", opts(QoS::AtMostOnce))], Some(1)),
        vec![0]
    );
    assert_eq!(
        s.subscribe_with(2, &[("si/+", opts(QoS::ExactlyOnce))], Some(2)),
        vec![2]
    );
    publish_once(&broker, "si/x", b"both");
    // MQTT-3.3.4-2: one delivery at the highest QoS; MQTT-3.3.4-3/-5: with every
    // matching Subscription Identifier.
    let m = s.expect_publish();
    let mut ids = m.sub_ids.clone();
    ids.sort_unstable();
    assert_eq!(ids, vec![1, 2]);
    assert_eq!(
        m.qos,
        QoS::AtLeastOnce,
        "min(publish QoS 1, highest granted 2)"
    );
    s.ack(&m);
    s.expect_nothing();
}

#[test]
fn no_local() {
    let broker = Broker::start();
    let mut me = connect(broker.addr, V5, "narcissus");
    let o = SubOptions {
        no_local: true,
        ..opts(QoS::AtLeastOnce)
    };
    assert_eq!(me.subscribe_with(1, &[("nl/t", o)], None), vec![1]);
    let mut other = connect(broker.addr, V5, "echo");
    other.subscribe("nl/t", QoS::AtLeastOnce);
    me.publish_acked(&publish("nl/t", b"own", QoS::AtLeastOnce, 1));
    // MQTT-3.8.3-3: not forwarded to the publishing client...
    let m = other.expect_publish();
    assert_eq!(m.payload, b"own");
    other.ack(&m);
    // ... but others' messages are.
    other.publish_acked(&publish("nl/t", b"foreign", QoS::AtLeastOnce, 1));
    let m = me.expect_publish();
    assert_eq!(
        m.payload, b"foreign",
        "the own message must not be forwarded"
    );
    me.ack(&m);
    me.expect_nothing();
}

#[test]
fn no_local_on_shared_subscription_is_a_protocol_error() {
    let broker = Broker::start();
    let mut c = connect(broker.addr, V5, "shared-nl");
    let o = SubOptions {
        no_local: true,
        ..opts(QoS::AtMostOnce)
    };
    let entries = [mote_codec::SubscribeFilter {
        filter: "$share/g/t",
        options: o,
    }];
    c.send(&Packet::Subscribe(mote_codec::Subscribe {
        packet_id: 1,
        properties: Properties::default(),
        filters: mote_codec::List::Slice(&entries),
    }));
    // MQTT-3.8.3-4.
    assert_eq!(c.expect_close(), Some(reason::PROTOCOL_ERROR));
}

#[test]
fn shared_subscription_gets_no_retained_message_on_subscribe() {
    let broker = Broker::start();
    let mut p = connect(broker.addr, V5, "retainer");
    let mut r = publish("sh/t", b"old", QoS::AtLeastOnce, 1);
    r.retain = true;
    p.publish_acked(&r);
    let mut s = connect(broker.addr, V5, "sharer");
    assert_eq!(
        s.subscribe_with(1, &[("$share/g/sh/t", opts(QoS::AtLeastOnce))], None),
        vec![1]
    );
    // MQTT 5 §4.8.2: retained messages are not sent for a shared subscription.
    s.expect_nothing();
    p.publish_acked(&publish("sh/t", b"new", QoS::AtLeastOnce, 2));
    let m = s.expect_publish();
    assert_eq!(m.payload, b"new");
}

#[test]
fn retain_as_published() {
    let broker = Broker::start();
    let mut p = connect(broker.addr, V5, "rap-pub");
    let mut r = publish("rap/t", b"stored", QoS::AtLeastOnce, 1);
    r.retain = true;
    p.publish_acked(&r);
    let mut keep = connect(broker.addr, V5, "rap-1");
    let o = SubOptions {
        retain_as_published: true,
        ..opts(QoS::AtLeastOnce)
    };
    keep.subscribe_with(1, &[("rap/#", o)], None);
    let mut clear = connect(broker.addr, V5, "rap-0");
    clear.subscribe_with(1, &[("rap/#", opts(QoS::AtLeastOnce))], None);
    // Retained messages sent because of a new subscription: RETAIN 1 (v5 §3.3.1.3;
    // 3.1.1 MQTT-3.3.1-8), whatever Retain As Published says.
    for c in [&mut keep, &mut clear] {
        let m = c.expect_publish();
        assert_eq!((m.payload.as_slice(), m.retain), (&b"stored"[..], true));
        c.ack(&m);
    }
    let mut live = publish("rap/t", b"live", QoS::AtLeastOnce, 2);
    live.retain = true;
    p.publish_acked(&live);
    p.publish_acked(&publish("rap/t", b"plain", QoS::AtLeastOnce, 3));
    // MQTT-3.3.1-13: RAP 1 keeps the flag; MQTT-3.3.1-12: RAP 0 clears it.
    for (c, want) in [(&mut keep, [true, false]), (&mut clear, [false, false])] {
        let a = c.expect_publish();
        c.ack(&a);
        let b = c.expect_publish();
        c.ack(&b);
        assert_eq!(
            (a.payload.as_slice(), b.payload.as_slice()),
            (&b"live"[..], &b"plain"[..])
        );
        assert_eq!([a.retain, b.retain], want);
    }
}

#[test]
fn retain_handling_0_1_2() {
    let broker = Broker::start();
    let mut p = connect(broker.addr, V5, "rh-pub");
    let mut r = publish("rh/t", b"kept", QoS::AtLeastOnce, 1);
    r.retain = true;
    p.publish_acked(&r);
    let rh = |h| SubOptions {
        retain_handling: h,
        ..opts(QoS::AtLeastOnce)
    };
    // 0: on every subscribe (MQTT-3.3.1-9).
    let mut c0 = connect(broker.addr, V5, "rh0");
    for pid in 1..=2 {
        c0.subscribe_with(pid, &[("rh/t", rh(RetainHandling::SendAtSubscribe))], None);
        let m = c0.expect_publish();
        assert!(m.retain && m.payload == b"kept", "RH 0, subscribe #{pid}");
        c0.ack(&m);
    }
    // 1: only when the subscription is new (MQTT-3.3.1-10).
    let mut c1 = connect(broker.addr, V5, "rh1");
    c1.subscribe_with(1, &[("rh/t", rh(RetainHandling::SendIfNew))], None);
    let m = c1.expect_publish();
    assert!(m.retain && m.payload == b"kept");
    c1.ack(&m);
    c1.subscribe_with(2, &[("rh/t", rh(RetainHandling::SendIfNew))], None);
    c1.expect_nothing();
    // 2: never (MQTT-3.3.1-11).
    let mut c2 = connect(broker.addr, V5, "rh2");
    c2.subscribe_with(1, &[("rh/t", rh(RetainHandling::DoNotSend))], None);
    c2.expect_nothing();
    // 3.1.1 re-sends retained messages on every subscribe (MQTT-3.8.4-3).
    let mut c3 = connect(broker.addr, V311, "rh311");
    for _ in 0..2 {
        c3.subscribe("rh/t", QoS::AtLeastOnce);
        let m = c3.expect_publish();
        assert!(m.retain && m.payload == b"kept");
        c3.ack(&m);
    }
}

#[test]
fn unsubscribe_reason_codes() {
    let broker = Broker::start();
    let mut c = connect(broker.addr, V5, "unsub");
    c.subscribe("known/t", QoS::AtMostOnce);
    c.send(&Packet::Unsubscribe(Unsubscribe {
        packet_id: 9,
        properties: Properties::default(),
        filters: mote_codec::List::Slice(&["known/t", "never/subscribed"]),
    }));
    let f = c.expect_kind(11);
    let Packet::UnsubAck(a) = f.packet() else {
        unreachable!()
    };
    // MQTT-3.11.3-1 order; 0x11 No subscription existed.
    assert_eq!(a.packet_id, 9);
    assert_eq!(a.codes, &[reason::SUCCESS, reason::NO_SUBSCRIPTION_EXISTED]);
    // And the subscription is gone.
    publish_once(&broker, "known/t", b"x");
    c.expect_nothing();
}

fn deny_config() -> Broker {
    Broker::start_with(
        &["--memory"],
        Some("[mqtt]\nmax_keepalive = 60\ndeny_subscribe = [\"test/nosubscribe\"]\n"),
    )
}

#[test]
fn denied_filter_gets_suback_failure() {
    let broker = deny_config();
    let mut c = connect(broker.addr, V311, "denied-311");
    let codes = c.subscribe_with(
        1,
        &[
            ("ok/t", opts(QoS::AtLeastOnce)),
            ("test/nosubscribe", opts(QoS::AtLeastOnce)),
        ],
        None,
    );
    // MQTT-3.9.3 return code 0x80 = Failure, in filter order (MQTT-3.9.3-1).
    assert_eq!(codes, vec![1, reason::v3::SUBACK_FAILURE]);
    let mut c5 = connect(broker.addr, V5, "denied-5");
    let codes = c5.subscribe_with(
        1,
        &[
            ("test/nosubscribe", opts(QoS::AtLeastOnce)),
            ("ok/t", opts(QoS::AtMostOnce)),
        ],
        None,
    );
    assert!(codes[0] >= 0x80, "v5 denied filter must fail: {codes:02x?}");
    assert_eq!(codes[1], 0);
    publish_once(&broker, "test/nosubscribe", b"secret");
    c.expect_nothing();
    c5.expect_nothing();
}

// ---------------------------------------------------------------------------------------
// DISCONNECT and wills
// ---------------------------------------------------------------------------------------

#[test]
fn disconnect_with_will_message_publishes_will() {
    let broker = Broker::start();
    let mut observer = connect(broker.addr, V5, "observer");
    observer.subscribe("dw/#", QoS::AtMostOnce);
    // Reason 0x00: will discarded (MQTT-3.14.4-3).
    let mut c = connect_packet(V5, "polite", true);
    c.will = Some(will("dw/polite", b"no"));
    let (mut raw, _) = connect_with(broker.addr, &c);
    raw.send(&Packet::Disconnect(Disconnect::new(
        reason::NORMAL_DISCONNECTION,
    )));
    assert!(raw.expect_closed_within(WAIT).is_empty());
    // Reason 0x04: will published (§3.14.2.1).
    let mut c = connect_packet(V5, "dramatic", true);
    c.will = Some(will("dw/dramatic", b"yes"));
    let (mut raw, _) = connect_with(broker.addr, &c);
    raw.send(&Packet::Disconnect(Disconnect::new(
        reason::DISCONNECT_WITH_WILL,
    )));
    assert!(raw.expect_closed_within(WAIT).is_empty());
    let m = observer.expect_publish();
    assert_eq!(
        (m.topic.as_str(), m.payload.as_slice()),
        ("dw/dramatic", &b"yes"[..])
    );
    observer.expect_nothing();
}

#[test]
fn disconnect_cannot_raise_session_expiry_from_zero() {
    let broker = Broker::start();
    let mut observer = connect(broker.addr, V5, "observer");
    observer.subscribe("se/#", QoS::AtMostOnce);
    let mut c = connect_packet(V5, "sneaky", true);
    c.will = Some(will("se/will", b"protocol-error"));
    let (mut raw, _) = connect_with(broker.addr, &c);
    let mut d = Disconnect::new(reason::NORMAL_DISCONNECTION);
    let d_props = PropValues {
        session_expiry_interval: Some(30),
        ..d.properties.values()
    };
    d.properties = Properties::Values(&d_props);
    raw.send(&Packet::Disconnect(d));
    // MQTT-3.14.2-2: Protocol Error.
    assert_eq!(raw.expect_close(), Some(reason::PROTOCOL_ERROR));
    // The connection ended on a protocol error, not a normal DISCONNECT: the will is
    // published (§3.1.2.5).
    let m = observer.expect_publish();
    assert_eq!(m.topic, "se/will");
    // No session was kept.
    let (raw, ack) = connect_with(broker.addr, &connect_packet(V5, "sneaky", false));
    assert_eq!(connack(&ack), (false, 0));
    raw.disconnect();
}

#[test]
fn disconnect_can_end_a_persistent_session() {
    let broker = Broker::start();
    let (mut raw, _) = connect_with(broker.addr, &persistent(V5, "short-lived", 60));
    let mut d = Disconnect::new(reason::NORMAL_DISCONNECTION);
    let d_props = PropValues {
        session_expiry_interval: Some(0),
        ..d.properties.values()
    };
    d.properties = Properties::Values(&d_props);
    raw.send(&Packet::Disconnect(d));
    assert!(raw.expect_closed_within(WAIT).is_empty());
    // §3.14.2.2.2: the new (zero) interval applies: the session ended.
    let mut c = persistent(V5, "short-lived", 60);
    c.clean_start = false;
    let (raw, ack) = connect_with(broker.addr, &c);
    assert_eq!(connack(&ack), (false, 0));
    raw.disconnect();
}

#[test]
fn overlapping_subscriptions_use_highest_qos_once() {
    let broker = Broker::start();
    let mut s = connect(broker.addr, V311, "ov");
    let codes = s.subscribe_with(
        1,
        &[
            ("ov/#", opts(QoS::AtMostOnce)),
            ("ov/+", opts(QoS::ExactlyOnce)),
        ],
        None,
    );
    assert_eq!(codes, vec![0, 2]);
    let mut p = connect(broker.addr, V5, "ov-pub");
    p.publish_acked(&publish("ov/x", b"x", QoS::ExactlyOnce, 1));
    let m = s.expect_publish();
    assert_eq!(m.qos, QoS::ExactlyOnce);
    s.ack(&m);
    s.expect_nothing();
}

// ---------------------------------------------------------------------------------------
// More corners: sessions, wills, expiry, limits
// ---------------------------------------------------------------------------------------

#[test]
fn reconnect_resends_unacked_in_order_then_queued() {
    let broker = Broker::start();
    let (mut s, _) = connect_with(broker.addr, &persistent(V5, "orderly", 60));
    s.subscribe("ord/t", QoS::AtLeastOnce);
    for p in ["m1", "m2", "m3"] {
        publish_once(&broker, "ord/t", p.as_bytes());
    }
    let first: Vec<Msg> = (0..3).map(|_| s.expect_publish()).collect();
    drop(s); // nothing acknowledged
    publish_once(&broker, "ord/t", b"m4");
    let mut s = resume(&broker, V5, "orderly");
    // MQTT-4.6.0-1: re-sent PUBLISHes first, in their original order, then the rest.
    let again: Vec<Msg> = (0..4)
        .map(|_| {
            let m = s.expect_publish();
            s.ack(&m);
            m
        })
        .collect();
    for (a, b) in first.iter().zip(&again) {
        assert_eq!(
            (a.packet_id, &a.payload, true),
            (b.packet_id, &b.payload, b.dup)
        );
    }
    assert_eq!(
        (again[3].payload.as_slice(), again[3].dup),
        (&b"m4"[..], false)
    );
    s.expect_nothing();
}

#[test]
fn session_expires_after_its_interval() {
    let broker = Broker::start();
    let (mut s, _) = connect_with(broker.addr, &persistent(V5, "mayfly", 1));
    s.subscribe("exp/t", QoS::AtLeastOnce);
    s.disconnect();
    std::thread::sleep(Duration::from_millis(2000));
    publish_once(&broker, "exp/t", b"too late");
    // §3.1.2.11.2: the session (and its subscription) is gone after 1 s.
    let mut c = persistent(V5, "mayfly", 1);
    c.clean_start = false;
    let (mut s, ack) = connect_with(broker.addr, &c);
    assert_eq!(connack(&ack), (false, 0));
    s.expect_nothing();
}

#[test]
fn will_waits_for_the_shorter_of_delay_and_session_expiry() {
    let broker = Broker::start();
    let mut observer = connect(broker.addr, V5, "observer");
    observer.subscribe("wse/#", QoS::AtMostOnce);
    let mut c = connect_packet(V5, "short-session", true);
    c.properties = Properties::Values(expiry_props(1));
    let mut w = will("wse/t", b"session-ended");
    let w_props = PropValues {
        will_delay_interval: Some(30),
        ..w.properties.values()
    };
    w.properties = Properties::Values(&w_props);
    c.will = Some(w);
    let (raw, _) = connect_with(broker.addr, &c);
    drop(raw);
    let t0 = Instant::now();
    // §3.1.3.2.2: the will is sent when the session ends if that comes first.
    let m = observer.expect_publish();
    let after = t0.elapsed();
    assert_eq!(m.payload, b"session-ended");
    assert!(
        after >= Duration::from_millis(800) && after <= Duration::from_millis(3000),
        "will after {after:?}; session expiry was 1 s"
    );
}

#[test]
fn will_properties_and_retain_apply() {
    let broker = Broker::start();
    let mut observer = connect(broker.addr, V5, "observer");
    observer.subscribe("wp/#", QoS::AtLeastOnce);
    let mut c = connect_packet(V5, "propertied", true);
    let mut w = will("wp/t", b"{\"gone\":true}");
    w.qos = QoS::AtLeastOnce;
    w.retain = true;
    let w_props = PropValues {
        content_type: Some("application/json"),
        response_topic: Some("wp/reply"),
        correlation_data: Some(b"c-1"),
        message_expiry_interval: Some(100),
        user_properties: mote_codec::PropList::Slice(&[("who", "propertied")]),
        ..w.properties.values()
    };
    w.properties = Properties::Values(&w_props);
    c.will = Some(w);
    let (raw, _) = connect_with(broker.addr, &c);
    drop(raw);
    let m = observer.expect_publish();
    observer.ack(&m);
    // §3.1.3.2: the will's properties are sent with it.
    assert_eq!(m.topic, "wp/t");
    assert_eq!(m.qos, QoS::AtLeastOnce);
    assert_eq!(m.content_type.as_deref(), Some("application/json"));
    assert_eq!(m.response_topic.as_deref(), Some("wp/reply"));
    assert_eq!(m.correlation_data.as_deref(), Some(&b"c-1"[..]));
    assert_eq!(
        m.user_properties,
        vec![("who".to_owned(), "propertied".to_owned())]
    );
    assert!(
        m.expiry.is_some_and(|e| (98..=100).contains(&e)),
        "{:?}",
        m.expiry
    );
    // Will Retain 1: the will is retained (MQTT-3.1.2-17).
    let mut late = connect(broker.addr, V5, "late");
    late.subscribe("wp/t", QoS::AtLeastOnce);
    let r = late.expect_publish();
    assert!(r.retain && r.payload == b"{\"gone\":true}");
}

#[test]
fn retained_message_expires() {
    let broker = Broker::start();
    let mut p = connect(broker.addr, V5, "retainer");
    for (topic, secs) in [("rx/short", 1), ("rx/long", 60)] {
        let mut r = publish(topic, b"r", QoS::AtLeastOnce, 1);
        r.retain = true;
        let r_props = PropValues {
            message_expiry_interval: Some(secs),
            ..r.properties.values()
        };
        r.properties = Properties::Values(&r_props);
        p.publish_acked(&r);
    }
    std::thread::sleep(Duration::from_millis(2100));
    let mut s = connect(broker.addr, V5, "late");
    s.subscribe("rx/#", QoS::AtLeastOnce);
    // MQTT-3.3.2-5: an expired retained message is not delivered; MQTT-3.3.2-6: the
    // remaining interval is forwarded.
    let m = s.expect_publish();
    assert_eq!(m.topic, "rx/long");
    assert!(
        m.expiry.is_some_and(|e| (55..=58).contains(&e)),
        "{:?}",
        m.expiry
    );
    s.ack(&m);
    s.expect_nothing();
}

#[test]
fn keepalive_kept_by_pings() {
    let broker = Broker::start();
    let mut c = connect_packet(V5, "pinger", true);
    c.keep_alive = 1;
    let (mut raw, _) = connect_with(broker.addr, &c);
    for _ in 0..6 {
        std::thread::sleep(Duration::from_millis(500));
        raw.send(&Packet::PingReq);
        raw.expect_kind(13);
    }
}

#[test]
fn pubrel_for_unknown_id_gets_pubcomp_0x92() {
    let broker = Broker::start();
    let mut c = connect(broker.addr, V5, "confused");
    c.send(&Packet::PubRel(Ack::new(42)));
    let f = c.expect_kind(7);
    // §3.7.2.1: 0x92 Packet Identifier not found.
    assert!(
        matches!(f.packet(), Packet::PubComp(a) if a.packet_id == 42 && a.reason == reason::PACKET_IDENTIFIER_NOT_FOUND),
        "{}",
        f.describe()
    );
}

#[test]
fn maximum_qos_1_is_announced_and_enforced() {
    let broker = Broker::start_with(&["--memory"], Some("[mqtt]\nmax_qos = 1\n"));
    let (mut c, ack) = connect_with(broker.addr, &connect_packet(V5, "qos-capped", true));
    let Packet::ConnAck(a) = ack.packet() else {
        unreachable!()
    };
    assert_eq!(a.properties.maximum_qos(), Some(1));
    // §3.2.2.3.4 / §3.9.3: the granted QoS is capped at Maximum QoS.
    assert_eq!(
        c.subscribe_with(1, &[("mq/t", opts(QoS::ExactlyOnce))], None),
        vec![1]
    );
    // §3.2.2.3.4: a PUBLISH above Maximum QoS gets DISCONNECT 0x9B.
    c.send(&Packet::Publish(publish("mq/t", b"x", QoS::ExactlyOnce, 1)));
    assert_eq!(c.expect_close(), Some(reason::QOS_NOT_SUPPORTED));
    // A will QoS above it is refused in CONNACK with 0x9B (MQTT-3.2.2-12).
    let mut cw = connect_packet(V5, "will-qos2", true);
    let mut w = will("mq/w", b"x");
    w.qos = QoS::ExactlyOnce;
    cw.will = Some(w);
    let (mut raw, ack) = connect_raw(broker.addr, &cw);
    assert_eq!(connack(&ack), (false, reason::QOS_NOT_SUPPORTED));
    assert!(raw.expect_closed_within(WAIT).is_empty());
}

#[test]
fn retain_not_available_is_announced_and_enforced() {
    let broker = Broker::start_with(&["--memory"], Some("[mqtt]\nretain_available = false\n"));
    let (mut c, ack) = connect_with(broker.addr, &connect_packet(V5, "no-retain", true));
    let Packet::ConnAck(a) = ack.packet() else {
        unreachable!()
    };
    assert_eq!(a.properties.retain_available(), Some(false));
    let mut r = publish("nr/t", b"x", QoS::AtMostOnce, 0);
    r.retain = true;
    c.send(&Packet::Publish(r));
    // §3.2.2.3.5: RETAIN 1 when not supported: DISCONNECT 0x9A.
    assert_eq!(c.expect_close(), Some(reason::RETAIN_NOT_SUPPORTED));
}

#[test]
fn v311_password_without_username_is_refused() {
    let broker = Broker::start();
    // Built by hand: append a password field and set the password flag (bit 6) only.
    let mut bytes = encode(
        &Packet::Connect(connect_packet(V311, "pw-only", true)),
        V311,
    );
    bytes.extend_from_slice(&[0x00, 0x06]);
    bytes.extend_from_slice(b"secret");
    bytes[1] += 8;
    bytes[9] |= 0x40;
    let mut raw = Raw::open(broker.addr, V311);
    raw.send_raw(&bytes);
    let frames = raw.expect_closed_within(WAIT);
    // MQTT-3.1.2-22: a password without a user name is not allowed in 3.1.1.
    for f in &frames {
        assert_eq!(f.kind(), 2, "{}", f.describe());
        assert_ne!(f.bytes[3], 0, "accepted: {}", f.describe());
    }
}

#[test]
fn connect_receive_maximum_zero_is_a_protocol_error() {
    let broker = Broker::start();
    let mut bytes = encode(&Packet::Connect(connect_packet(V5, "zero-rm", true)), V5);
    // [0x10, len, 0,4,MQTT, 5, flags, ka(2), props-len=0, ...]: insert Receive Maximum 0.
    assert_eq!(bytes[12], 0);
    bytes.splice(12..13, [0x03, 0x21, 0x00, 0x00]);
    bytes[1] += 3;
    let mut raw = Raw::open(broker.addr, V5);
    raw.send_raw(&bytes);
    let frames = raw.expect_closed_within(WAIT);
    // §3.1.2.11.3: "It is a Protocol Error ... for it to have the value 0."
    assert!(frames.len() <= 1, "{frames:?}");
    if let Some(f) = frames.first() {
        assert_eq!(f.kind(), 2, "{}", f.describe());
        assert_eq!(f.bytes[3], reason::PROTOCOL_ERROR, "{}", f.describe());
    }
}

#[test]
fn shutdown_sends_server_shutting_down() {
    let mut broker = Broker::start();
    let mut c = connect(broker.addr, V5, "bystander");
    let mut c3 = connect(broker.addr, V311, "bystander-311");
    let st = broker.terminate();
    assert!(st.is_some_and(|s| s.success()), "exit status {st:?}");
    // §3.14: DISCONNECT 0x8B (Server shutting down) for v5; 3.1.1 is just closed.
    assert_eq!(c.expect_close(), Some(reason::SERVER_SHUTTING_DOWN));
    assert_eq!(c3.expect_close(), None);
}

/// Issue #15: a TCP connection quiet for 1 s drops its packet loop and dozes
/// (`runtime/connection.rs`, `Link::doze`). Whatever needs it then must still reach it:
/// a delivery, input, a takeover, shutdown.
#[test]
fn a_dozing_connection_still_gets_deliveries_input_takeover_and_shutdown() {
    let mut broker = Broker::start();
    let mut sub = connect(broker.addr, V5, "dozer-sub");
    sub.subscribe("doze/t", QoS::AtLeastOnce);
    let (mut twin, _) = connect_with(broker.addr, &connect_packet(V5, "dozer-twin", true));
    let mut old = connect(broker.addr, V311, "dozer-311");
    // Past the 1 s after which a quiet connection dozes.
    let doze = Duration::from_millis(1600);
    std::thread::sleep(doze);
    publish_once_qos(&broker, "doze/t", b"wake", QoS::AtLeastOnce);
    let m = sub.expect_publish();
    assert_eq!(m.payload, b"wake");
    sub.ack(&m);
    let (_second, ack) = connect_with(broker.addr, &connect_packet(V5, "dozer-twin", true));
    assert_eq!(connack(&ack), (false, 0));
    assert_eq!(twin.expect_close(), Some(reason::SESSION_TAKEN_OVER));
    std::thread::sleep(doze);
    old.send(&Packet::PingReq);
    old.expect_kind(13);
    std::thread::sleep(doze);
    let st = broker.terminate();
    assert!(st.is_some_and(|s| s.success()), "exit status {st:?}");
    assert_eq!(sub.expect_close(), Some(reason::SERVER_SHUTTING_DOWN));
    assert_eq!(old.expect_close(), None);
}

/// A full connection table evicts the client idle longest (`runtime/table.rs`). That
/// client dozes (`runtime/doze.rs`) by then: eviction must still reach it through its
/// signal, and it is told why (v5 DISCONNECT 0x89, Server busy) before it is closed,
/// while the other dozing client stays and the newcomer is let in.
#[test]
fn a_dozing_client_evicted_from_a_full_table_is_told_why() {
    let broker = Broker::start_with(
        &["--memory"],
        Some("[mqtt]\nmax_connections = 2\nidle_evict_after_secs = 1\n"),
    );
    let mut oldest = connect(broker.addr, V5, "evict-oldest");
    std::thread::sleep(Duration::from_millis(300));
    let mut other = connect(broker.addr, V5, "evict-other");
    // Both quiet past the 1 s after which they doze and may be evicted.
    std::thread::sleep(Duration::from_millis(1600));
    let mut newcomer = connect(broker.addr, V5, "evict-newcomer");
    assert_eq!(oldest.expect_close(), Some(reason::SERVER_BUSY));
    newcomer.send(&Packet::PingReq);
    newcomer.expect_kind(13);
    other.send(&Packet::PingReq);
    other.expect_kind(13);
}

#[test]
fn slow_consumer_is_disconnected_with_quota_exceeded() {
    let broker = Broker::start_with(
        &["--memory"],
        // The publisher is first paused on the congested consumer, for at most
        // `publisher_backpressure_ms`; only then does the queue's policy apply. At the
        // default 5 s a paused PUBACK arrives as late as the tests' WAIT (also 5 s).
        Some(
            "[mqtt]\nmax_queued_messages = 3\nmax_inflight = 1\n\
             publisher_backpressure_ms = 1000\n",
        ),
    );
    let mut observer = connect(broker.addr, V5, "observer");
    observer.subscribe("obs/#", QoS::AtMostOnce);
    let mut slow = connect(broker.addr, V5, "slowpoke");
    slow.subscribe("sc/t", QoS::AtLeastOnce);
    let mut p = connect(broker.addr, V5, "firehose");
    for i in 1..=8u16 {
        p.publish_acked(&publish("sc/t", b"x", QoS::AtLeastOnce, i));
    }
    // DESIGN: a connected consumer that cannot keep up with QoS 1/2 is disconnected
    // with 0x97 (Quota exceeded); others are not affected.
    let frames = slow.expect_closed_within(WAIT);
    let last = frames.last().map(|f| f.disconnect_reason());
    assert_eq!(last, Some(Some(reason::QUOTA_EXCEEDED)), "{frames:?}");
    publish_once(&broker, "obs/x", b"fine");
    assert_eq!(observer.expect_publish().payload, b"fine");
}

/// Two members of `$share/g/sl/t`; publishes one message at `qos`; the member that got
/// it disconnects without acknowledging. Returns what the other member then receives.
fn shared_member_leaves(qos: QoS) -> Option<Msg> {
    let broker = Broker::start();
    let mut a = connect(broker.addr, V5, "member-a");
    let mut b = connect(broker.addr, V5, "member-b");
    for m in [&mut a, &mut b] {
        assert_eq!(
            m.subscribe_with(1, &[("$share/g/sl/t", opts(QoS::ExactlyOnce))], None),
            vec![2]
        );
    }
    publish_once_qos(&broker, "sl/t", b"job", qos);
    let (chosen, mut other) = match a.recv(Duration::from_secs(2)) {
        Recv::Frame(f) => {
            assert_eq!(f.publish().payload, b"job");
            (a, b)
        }
        _ => {
            let m = b.expect_publish();
            assert_eq!(m.payload, b"job");
            (b, a)
        }
    };
    drop(chosen); // session expiry 0: its session ends now
    match other.recv(Duration::from_secs(2)) {
        Recv::Frame(f) => Some(f.publish()),
        Recv::Timeout => None,
        Recv::Closed => panic!("other member disconnected"),
    }
}

#[test]
fn shared_qos1_goes_to_another_member_when_session_ends() {
    // MQTT 5 §4.8.2: if the chosen Client's Session terminates before it acknowledged a
    // QoS 1 message, the Server SHOULD send it to another member.
    let m = shared_member_leaves(QoS::AtLeastOnce).expect("QoS 1 message re-routed");
    assert_eq!(m.payload, b"job");
}

#[test]
fn shared_qos2_begun_is_never_sent_to_another_member() {
    // MQTT-4.8.2-5: a begun QoS 2 delivery MUST NOT be sent to any other member.
    assert_eq!(shared_member_leaves(QoS::ExactlyOnce), None);
}

#[test]
fn resubscribe_replaces_options_without_losing_inflight() {
    let broker = Broker::start();
    let mut s = connect(broker.addr, V5, "changer");
    s.subscribe("rp/t", QoS::AtLeastOnce);
    publish_once(&broker, "rp/t", b"m1");
    let m1 = s.expect_publish();
    assert_eq!(m1.qos, QoS::AtLeastOnce);
    // MQTT-3.8.4-3: the new subscription replaces the old one, in-flight messages stay.
    assert_eq!(
        s.subscribe_with(2, &[("rp/t", opts(QoS::AtMostOnce))], None),
        vec![0]
    );
    s.ack(&m1);
    publish_once(&broker, "rp/t", b"m2");
    let m2 = s.expect_publish();
    assert_eq!(
        (m2.qos, m2.payload.as_slice()),
        (QoS::AtMostOnce, &b"m2"[..])
    );
    s.expect_nothing();
}

#[test]
fn takeover_resuming_session_within_will_delay_cancels_will() {
    let broker = Broker::start();
    let mut observer = connect(broker.addr, V5, "observer");
    observer.subscribe("td/#", QoS::AtMostOnce);
    let mut c = persistent(V5, "heir", 60);
    let mut w = will("td/will", b"must-not-appear");
    let w_props = PropValues {
        will_delay_interval: Some(5),
        ..w.properties.values()
    };
    w.properties = Properties::Values(&w_props);
    c.will = Some(w);
    let (mut first, _) = connect_with(broker.addr, &c);
    let mut second = resume(&broker, V5, "heir");
    assert_eq!(first.expect_close(), Some(reason::SESSION_TAKEN_OVER));
    // §3.1.3.2.2: a new connection before the Will Delay Interval: no will.
    std::thread::sleep(Duration::from_millis(700));
    second.send(&Packet::PingReq);
    second.expect_kind(13);
    second.disconnect();
    observer.expect_nothing();
}

#[test]
fn session_expiry_capped_by_server_is_announced() {
    let broker = Broker::start_with(&["--memory"], Some("[mqtt]\nmax_session_expiry = 10\n"));
    let (_c, ack) = connect_with(broker.addr, &persistent(V5, "greedy-session", 100));
    let Packet::ConnAck(a) = ack.packet() else {
        unreachable!()
    };
    // §3.2.2.3.2: the Server tells the Client the Session Expiry Interval it uses.
    assert_eq!(a.properties.session_expiry_interval(), Some(10));
}

#[test]
fn max_keepalive_is_enforced() {
    let broker = Broker::start_with(&["--memory"], Some("[mqtt]\nmax_keepalive = 1\n"));
    // v5: Server Keep Alive 1, and the broker then closes after 1.5 s
    // (MQTT-3.2.2-21/-22).
    let mut c = connect_packet(V5, "lazy-5", true);
    c.keep_alive = 10;
    let (mut raw, ack) = connect_with(broker.addr, &c);
    let Packet::ConnAck(a) = ack.packet() else {
        unreachable!()
    };
    assert_eq!(a.properties.server_keep_alive(), Some(1));
    let t0 = Instant::now();
    let frames = raw.expect_closed_within(Duration::from_secs(5));
    assert!(
        t0.elapsed() <= Duration::from_millis(3000),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(
        frames.last().and_then(|f| f.disconnect_reason()),
        Some(reason::KEEP_ALIVE_TIMEOUT)
    );
}

#[test]
fn max_keepalive_does_not_cut_v311_clients() {
    // `mqtt.max_keepalive` (broker/src/config.rs): 3.1.1 cannot announce a server keep
    // alive, so a 3.1.1 client is held to its own value (MQTT-3.1.2-24).
    let broker = Broker::start_with(&["--memory"], Some("[mqtt]\nmax_keepalive = 1\n"));
    let mut c = connect_packet(V311, "lazy-311", true);
    c.keep_alive = 10;
    let (mut raw, _) = connect_with(broker.addr, &c);
    match raw.recv(Duration::from_secs(3)) {
        Recv::Timeout => {}
        other => panic!("3.1.1 client with keep alive 10 cut off: {other:?}"),
    }
    raw.send(&Packet::PingReq);
    raw.expect_kind(13);
}

#[test]
fn connect_timeout_closes_silent_connections() {
    let broker = Broker::start_with(&["--memory"], Some("[mqtt]\nconnect_timeout_ms = 500\n"));
    let mut raw = Raw::open(broker.addr, V311);
    // Half a CONNECT, then nothing.
    let bytes = encode(&Packet::Connect(connect_packet(V311, "half", true)), V311);
    raw.send_raw(&bytes[..5]);
    let t0 = Instant::now();
    assert!(raw.expect_closed_within(Duration::from_secs(5)).is_empty());
    let after = t0.elapsed();
    assert!(
        after >= Duration::from_millis(400) && after <= Duration::from_millis(2500),
        "closed after {after:?} with a 500 ms connect timeout"
    );
}

#[test]
fn session_queue_inbound_qos2_and_retained_survive_broker_crash() {
    // DESIGN.md: nothing acknowledged is lost, even across a broker crash (default store,
    // `--fsync always`).
    struct RemoveDir(std::path::PathBuf);
    impl Drop for RemoveDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let dir = RemoveDir(mote_tests::unique_path("mote-e2e-store", ""));
    let dir_s = dir.0.to_str().unwrap().to_owned();
    let args = ["--data-dir", dir_s.as_str(), "--fsync", "always"];
    let mut broker = Broker::start_with(&args, None);
    let (mut s, _) = connect_with(broker.addr, &persistent(V5, "durable-sub", 3600));
    s.subscribe("d/t", QoS::AtLeastOnce);
    s.disconnect();
    let (mut p, _) = connect_with(broker.addr, &persistent(V5, "durable-pub", 3600));
    p.publish_acked(&publish("d/t", b"m1", QoS::AtLeastOnce, 1));
    p.publish_acked(&publish("d/t", b"m2", QoS::AtLeastOnce, 2));
    let mut r = publish("d/r", b"kept", QoS::AtLeastOnce, 3);
    r.retain = true;
    p.publish_acked(&r);
    // A QoS 2 flow left between PUBREC and PUBREL.
    p.send(&Packet::Publish(publish("d/t", b"m3", QoS::ExactlyOnce, 7)));
    p.expect_kind(5);
    broker.kill();
    drop(p);

    let broker = Broker::start_with(&args, None);
    let mut p = resume(&broker, V5, "durable-pub");
    let mut dup = publish("d/t", b"m3", QoS::ExactlyOnce, 7);
    dup.dup = true;
    p.send(&Packet::Publish(dup));
    p.expect_kind(5);
    p.send(&Packet::PubRel(Ack::new(7)));
    let comp = p.expect_kind(7);
    assert!(
        matches!(comp.packet(), Packet::PubComp(a) if a.reason == 0),
        "inbound QoS 2 state lost: {}",
        comp.describe()
    );
    let mut s = resume(&broker, V5, "durable-sub");
    let got: Vec<Vec<u8>> = (0..3)
        .map(|_| {
            let m = s.expect_publish();
            s.ack(&m);
            m.payload
        })
        .collect();
    assert_eq!(got, vec![b"m1".to_vec(), b"m2".to_vec(), b"m3".to_vec()]);
    s.expect_nothing();
    let mut late = connect(broker.addr, V5, "late");
    late.subscribe("d/r", QoS::AtLeastOnce);
    let m = late.expect_publish();
    assert!(m.retain && m.payload == b"kept");
    drop(broker);
}

#[test]
fn malformed_or_protocol_error_more_cases() {
    let broker = Broker::start();
    let either = [reason::MALFORMED_PACKET, reason::PROTOCOL_ERROR];
    let cases: [(&str, Vec<u8>, &[u8]); 5] = [
        // MQTT-3.3.1-2: DUP must be 0 on QoS 0.
        (
            "QoS 0 with DUP",
            vec![0x38, 0x05, 0x00, 0x01, b'a', 0x00, b'x'],
            &either,
        ),
        // MQTT-3.3.2-2: no wildcards in a topic name.
        (
            "wildcard topic",
            vec![0x30, 0x06, 0x00, 0x02, b'a', b'+', 0x00, b'x'],
            &either,
        ),
        // MQTT-2.2.1-3: packet identifier 0 on QoS 1.
        (
            "packet id 0",
            vec![0x32, 0x07, 0x00, 0x01, b'a', 0x00, 0x00, 0x00, b'x'],
            &either,
        ),
        // MQTT-3.10.1-1: UNSUBSCRIBE flags must be 0010.
        (
            "UNSUBSCRIBE flags",
            vec![0xA0, 0x06, 0x00, 0x01, 0x00, 0x00, 0x01, b'a'],
            &[reason::MALFORMED_PACKET],
        ),
        // MQTT-3.6.1-1: PUBREL flags must be 0010.
        (
            "PUBREL flags",
            vec![0x60, 0x02, 0x00, 0x01],
            &[reason::MALFORMED_PACKET],
        ),
    ];
    for (name, bytes, codes) in cases {
        eprintln!("case: {name}");
        bad_packet_any(&broker, V5, &bytes, codes);
    }
}

#[test]
fn will_published_on_keepalive_timeout() {
    let broker = Broker::start();
    let mut observer = connect(broker.addr, V5, "observer");
    observer.subscribe("kw/#", QoS::AtMostOnce);
    let mut c = connect_packet(V311, "silent", true);
    c.keep_alive = 1;
    c.will = Some(will("kw/t", b"timed-out"));
    let (mut raw, _) = connect_with(broker.addr, &c);
    // §3.1.2.5 (3.1.1): "The Server closes the Network Connection because of a protocol
    // error" / keep alive expiry is not a DISCONNECT: the will is published.
    assert!(raw.expect_closed_within(WAIT).is_empty());
    let m = observer.expect_publish();
    assert_eq!(m.payload, b"timed-out");
}

#[test]
fn payload_format_indicator_is_checked_consistently() {
    let broker = Broker::start();
    let mut sub = connect(broker.addr, V5, "pfi-sub");
    sub.subscribe("pfi/t", QoS::AtLeastOnce);
    let mut p = connect(broker.addr, V5, "pfi-pub");
    let mut bad = publish("pfi/t", &[0xFF, 0xFE], QoS::AtLeastOnce, 1);
    let bad_props = PropValues {
        payload_format_indicator: Some(1),
        ..bad.properties.values()
    };
    bad.properties = Properties::Values(&bad_props);
    p.send(&Packet::Publish(bad));
    let f = p.expect_kind(4);
    let Packet::PubAck(a) = f.packet() else {
        unreachable!()
    };
    // §3.3.2.3.2: a receiver that validates answers 0x99; then it must not forward.
    if a.reason == reason::PAYLOAD_FORMAT_INVALID {
        sub.expect_nothing();
    } else {
        assert_eq!(a.reason, 0, "{}", f.describe());
        let m = sub.expect_publish();
        assert_eq!(m.payload, [0xFF, 0xFE]);
    }
}

#[test]
fn publish_properties_pass_through_unchanged() {
    let broker = Broker::start();
    let mut s5 = connect(broker.addr, V5, "props-5");
    s5.subscribe("pr/t", QoS::AtLeastOnce);
    let mut s3 = connect(broker.addr, V311, "props-311");
    s3.subscribe("pr/t", QoS::AtLeastOnce);
    let mut p = connect(broker.addr, V5, "props-pub");
    let mut m = publish("pr/t", b"payload", QoS::AtLeastOnce, 1);
    let users = [("k", "1"), ("a", "x"), ("k", "2"), ("", "")];
    let m_props = PropValues {
        payload_format_indicator: Some(1),
        content_type: Some("text/plain; charset=utf-8"),
        response_topic: Some("pr/reply/42"),
        correlation_data: Some(&[0x00, 0xFF, 0x10]),
        user_properties: mote_codec::PropList::Slice(&users),
        ..m.properties.values()
    };
    m.properties = Properties::Values(&m_props);
    p.publish_acked(&m);
    let f = s5.expect_kind(3);
    let Packet::Publish(got) = f.packet() else {
        unreachable!()
    };
    // MQTT-3.3.2-4, -15, -16, -18: forwarded unaltered, user properties in order.
    assert_eq!(got.properties.payload_format_indicator(), Some(1));
    assert_eq!(
        got.properties.content_type(),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(got.properties.response_topic(), Some("pr/reply/42"));
    assert_eq!(
        got.properties.correlation_data(),
        Some(&[0x00, 0xFF, 0x10][..])
    );
    let u: Vec<(&str, &str)> = got.properties.user_properties().iter().collect();
    assert_eq!(u, users);
    let m3 = s3.expect_publish();
    assert_eq!(m3.payload, b"payload");
}

#[test]
fn invalid_filters_and_share_names_are_refused() {
    let broker = Broker::start();
    for filter in [
        "a/b#",
        "a/+b",
        "a/#/c",
        "$share//t",
        "$share/g+/t",
        "$share/g#/t",
        "$share/g",
    ] {
        let mut c = connect(broker.addr, V5, "filters");
        let entries = [mote_codec::SubscribeFilter {
            filter,
            options: opts(QoS::AtMostOnce),
        }];
        c.send(&Packet::Subscribe(mote_codec::Subscribe {
            packet_id: 1,
            properties: Properties::default(),
            filters: mote_codec::List::Slice(&entries),
        }));
        // §4.7.1 / MQTT-4.8.2-1, -2: refused, by SUBACK failure or by closing.
        match c.recv(WAIT) {
            Recv::Frame(f) if f.kind() == 9 => {
                let code = *f.body().last().unwrap();
                assert!(code >= 0x80, "{filter:?} accepted: {}", f.describe());
            }
            Recv::Frame(f) => {
                let r = f.disconnect_reason();
                assert!(
                    matches!(r, Some(0x81 | 0x82 | 0x8F)),
                    "{filter:?}: {}",
                    f.describe()
                );
            }
            other => panic!("{filter:?}: {other:?}"),
        }
    }
}

#[test]
fn disabled_features_are_announced_and_refused() {
    let broker = Broker::start_with(
        &["--memory"],
        Some(
            "[mqtt]\nwildcard_subscriptions = false\nshared_subscriptions = false\n\
             subscription_identifiers = false\nmax_qos = 0\n",
        ),
    );
    let (_c, ack) = connect_with(broker.addr, &connect_packet(V5, "announce", true));
    let Packet::ConnAck(a) = ack.packet() else {
        unreachable!()
    };
    assert_eq!(a.properties.wildcard_subscription_available(), Some(false));
    assert_eq!(a.properties.shared_subscription_available(), Some(false));
    assert_eq!(
        a.properties.subscription_identifier_available(),
        Some(false)
    );
    assert_eq!(a.properties.maximum_qos(), Some(0));
    // §3.2.2.3.11-13: using them anyway is refused with 0xA2 / 0x9E / 0xA1, by SUBACK or
    // DISCONNECT.
    for (filter, sub_id, code) in [
        ("w/+", None, reason::WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED),
        (
            "$share/g/t",
            None,
            reason::SHARED_SUBSCRIPTIONS_NOT_SUPPORTED,
        ),
        (
            "plain/t",
            Some(5),
            reason::SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED,
        ),
    ] {
        let mut c = connect(broker.addr, V5, "user");
        let entries = [mote_codec::SubscribeFilter {
            filter,
            options: opts(QoS::AtMostOnce),
        }];
        let ids: Vec<u32> = sub_id.into_iter().collect();
        let properties = Properties::Values(&PropValues {
            subscription_identifiers: mote_codec::PropList::Slice(&ids),
            ..PropValues::default()
        });
        c.send(&Packet::Subscribe(mote_codec::Subscribe {
            packet_id: 1,
            properties,
            filters: mote_codec::List::Slice(&entries),
        }));
        let f = c.expect();
        let got = match f.kind() {
            9 => *f.body().last().unwrap(),
            14 => f.disconnect_reason().unwrap(),
            _ => panic!("{filter}: {}", f.describe()),
        };
        assert_eq!(got, code, "{filter}: {}", f.describe());
    }
    // 3.1.1: SUBACK 0x80 for a wildcard.
    let mut c = connect(broker.addr, V311, "old");
    let codes = c.subscribe_with(1, &[("w/#", opts(QoS::AtMostOnce))], None);
    assert_eq!(codes, vec![0x80]);
}

#[test]
fn slow_reader_does_not_hold_up_others() {
    let broker = Broker::start();
    // Subscribes and then never reads.
    let mut slow = connect(broker.addr, V311, "slow");
    slow.subscribe("flood/t", QoS::AtMostOnce);
    let mut fast = connect(broker.addr, V5, "fast");
    fast.subscribe("flood/#", QoS::AtLeastOnce);
    let reader = std::thread::spawn(move || {
        let mut n = 0usize;
        loop {
            let m = fast.expect_publish();
            fast.ack(&m);
            if m.topic == "flood/end" {
                return n;
            }
            n += 1;
        }
    });
    let mut p = connect(broker.addr, V5, "flooder");
    let payload = vec![b'f'; 16 * 1024];
    let frame = encode(
        &Packet::Publish(publish("flood/t", &payload, QoS::AtMostOnce, 0)),
        V5,
    );
    let t0 = Instant::now();
    for _ in 0..600 {
        assert!(p.send_raw(&frame), "publisher blocked or cut off");
    }
    p.publish_acked(&publish("flood/end", b"end", QoS::AtLeastOnce, 1));
    let n = reader.join().unwrap();
    // ~10 MB through a reader that stalls: the others are not held up.
    assert_eq!(n, 600, "fast subscriber lost QoS 0 messages");
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "took {:?}",
        t0.elapsed()
    );
    drop(slow);
}

fn expired_inflight(qos: QoS) {
    let broker = Broker::start();
    let (mut s, _) = connect_with(broker.addr, &persistent(V5, "late-acker", 60));
    s.subscribe("ei/t", qos);
    let mut p = connect(broker.addr, V5, "ei-pub");
    let mut m = publish("ei/t", b"short-lived", qos, 1);
    let m_props = PropValues {
        message_expiry_interval: Some(1),
        ..m.properties.values()
    };
    m.properties = Properties::Values(&m_props);
    p.publish_acked(&m);
    let first = s.expect_publish();
    assert_eq!(first.qos, qos);
    drop(s); // onward delivery has started; no acknowledgement
    std::thread::sleep(Duration::from_millis(2200));
    let mut s = resume(&broker, V5, "late-acker");
    // MQTT-4.4.0-1: unacknowledged PUBLISHes MUST be re-sent on reconnect. MQTT-3.3.2-5
    // only lets the server delete an expired message for a subscriber when it "has not
    // managed to start onward delivery"; here it had.
    let again = s.expect_publish();
    assert_eq!((again.packet_id, again.dup), (first.packet_id, true));
    s.ack(&again);
    s.expect_nothing();
}

#[test]
fn expired_but_inflight_qos1_is_still_resent() {
    expired_inflight(QoS::AtLeastOnce);
}

#[test]
fn expired_but_inflight_qos2_is_still_resent() {
    expired_inflight(QoS::ExactlyOnce);
}

#[test]
fn server_only_packets_from_a_client_are_protocol_errors() {
    let broker = Broker::start();
    let cases: [(&str, Vec<u8>, &[u8]); 4] = [
        (
            "CONNACK",
            vec![0x20, 0x03, 0x00, 0x00, 0x00],
            &[reason::PROTOCOL_ERROR],
        ),
        (
            "SUBACK",
            vec![0x90, 0x04, 0x00, 0x01, 0x00, 0x00],
            &[reason::PROTOCOL_ERROR],
        ),
        ("PINGRESP", vec![0xD0, 0x00], &[reason::PROTOCOL_ERROR]),
        // Packet type 0 is reserved (§2.1.2): malformed.
        (
            "type 0",
            vec![0x00, 0x00],
            &[reason::MALFORMED_PACKET, reason::PROTOCOL_ERROR],
        ),
    ];
    for (name, bytes, codes) in cases {
        eprintln!("case: {name}");
        bad_packet_any(&broker, V5, &bytes, codes);
    }
}

#[test]
fn client_publish_with_subscription_identifier_is_a_protocol_error() {
    let broker = Broker::start();
    let mut p = publish("obs/x", b"x", QoS::AtMostOnce, 0);
    let ids = [3u32];
    let p_props = PropValues {
        subscription_identifiers: mote_codec::PropList::Slice(&ids),
        ..p.properties.values()
    };
    p.properties = Properties::Values(&p_props);
    // MQTT-3.3.4-6: "A PUBLISH packet sent from a Client to a Server MUST NOT contain a
    // Subscription Identifier"; a violation is a Protocol Error (§4.13).
    bad_packet_on(
        &broker,
        V5,
        &encode(&Packet::Publish(p), V5),
        reason::PROTOCOL_ERROR,
    );
}
