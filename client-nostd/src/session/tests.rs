//! Session tests on virtual time: the test plays the broker with the codec, feeding
//! frames in and reading what the session transmits. No sockets, no clocks.
#![allow(clippy::unwrap_used)]

use std::format;
use std::string::{String, ToString};
use std::vec;
use std::vec::Vec;

use mote_codec::{ConnAck, Disconnect, SubAck, SubOptions, UnsubAck};

use super::*;
use crate::{Buffers, Value};

type Bufs = Buffers<256, 256, 4, 128, 2>;

fn session<'b>(b: &'b mut Bufs, cfg: Config<'b>) -> Session<'b> {
    let (storage, _io) = b.split();
    Session::new(cfg, storage)
}

fn cfg(protocol: Protocol) -> Config<'static> {
    let mut c = Config::new("dev-1");
    c.protocol = protocol;
    c.keep_alive = 10;
    c.timeout_ms = 5_000;
    c
}

/// One line per packet the session transmits now.
fn transmit(s: &mut Session<'_>, now: u64) -> Vec<String> {
    let proto = s.config().protocol;
    let mut lines = Vec::new();
    let mut buf = [0u8; 256];
    loop {
        let n = s.poll_transmit(now, &mut buf).unwrap();
        if n == 0 {
            return lines;
        }
        let mut at = 0;
        while at < n {
            let (p, used) = decode(&buf[at..n], proto, u32::MAX).unwrap().unwrap();
            lines.push(describe(&p));
            at += used;
        }
    }
}

fn describe(p: &Packet<'_>) -> String {
    match p {
        Packet::Connect(c) => format!("CONNECT clean={}", c.clean_start as u8),
        Packet::Publish(p) => {
            let mut s = format!(
                "PUBLISH q{} id{} dup{} '{}'",
                p.qos as u8, p.packet_id, p.dup as u8, p.topic
            );
            if let Some(a) = p.properties.topic_alias() {
                s += &format!(" alias{a}");
            }
            s
        }
        Packet::PubAck(a) => format!("PUBACK {}", a.packet_id),
        Packet::PubRec(a) => format!("PUBREC {}", a.packet_id),
        Packet::PubRel(a) => format!("PUBREL {}", a.packet_id),
        Packet::PubComp(a) => format!("PUBCOMP {}", a.packet_id),
        Packet::Subscribe(s) => format!("SUBSCRIBE {}", s.packet_id),
        Packet::Unsubscribe(u) => format!("UNSUBSCRIBE {}", u.packet_id),
        Packet::PingReq => "PINGREQ".to_string(),
        Packet::Disconnect(_) => "DISCONNECT".to_string(),
        other => format!("{:?}", other.packet_type()),
    }
}

/// An event, owned.
#[derive(Debug, PartialEq)]
enum Ev {
    Connected(bool),
    Disconnected(CloseReason),
    Msg(String, Vec<u8>),
    Published(u16, u8),
    Subscribed(u16, u8),
    Unsubscribed(u16),
}

fn own(e: Event<'_>) -> Ev {
    match e {
        Event::Connected { session_present } => Ev::Connected(session_present),
        Event::Disconnected(r) => Ev::Disconnected(r),
        Event::Message(m) => Ev::Msg(m.topic.to_string(), m.payload.to_vec()),
        Event::Published { packet_id, reason } => Ev::Published(packet_id, reason),
        Event::Subscribed { packet_id, reason } => Ev::Subscribed(packet_id, reason),
        Event::Unsubscribed { packet_id } => Ev::Unsubscribed(packet_id),
    }
}

fn events(s: &mut Session<'_>) -> Vec<Ev> {
    let mut v = Vec::new();
    while let Some(e) = s.poll_event() {
        v.push(own(e));
    }
    v
}

/// Feeds one raw frame; returns its event and then every polled event.
fn feed_raw(s: &mut Session<'_>, now: u64, frame: &[u8]) -> Vec<Ev> {
    let mut v = Vec::new();
    match s.handle_received(now, frame) {
        Received::Frame { used, event } => {
            assert_eq!(used, frame.len());
            v.extend(event.map(own));
        }
        other => panic!("frame not handled: {other:?}"),
    }
    v.extend(events(s));
    v
}

fn feed(s: &mut Session<'_>, now: u64, p: Packet<'_>) -> Vec<Ev> {
    let proto = s.config().protocol;
    let mut buf = [0u8; 512];
    let n = p.encode(proto, &mut buf).unwrap();
    feed_raw(s, now, &buf[..n])
}

fn connack(session_present: bool, properties: Properties<'_>) -> Packet<'_> {
    Packet::ConnAck(ConnAck {
        session_present,
        code: 0,
        properties,
    })
}

/// Transport up, CONNECT out, CONNACK in; returns what goes out right after.
fn connect(s: &mut Session<'_>, now: u64, session_present: bool) -> Vec<String> {
    connect_with(s, now, session_present, Properties::default())
}

fn connect_with(
    s: &mut Session<'_>,
    now: u64,
    session_present: bool,
    props: Properties<'_>,
) -> Vec<String> {
    // The end of the previous connection is not what these tests look at.
    events(s);
    s.handle_connect(now);
    let sent = transmit(s, now);
    assert_eq!(sent.len(), 1);
    assert!(sent[0].starts_with("CONNECT"), "{sent:?}");
    assert_eq!(
        feed(s, now, connack(session_present, props)),
        vec![Ev::Connected(session_present)]
    );
    transmit(s, now)
}

fn ack(p: fn(Ack<'static>) -> Packet<'static>, pid: u16) -> Packet<'static> {
    p(Ack::new(pid))
}

fn msg(topic: &str, qos: QoS) -> Message<'_> {
    Message::new(topic, b"x").qos(qos)
}

// ---- CONNECT ----------------------------------------------------------------------

#[test]
fn connect_carries_will_credentials_keepalive_and_v5_limits() {
    for protocol in [Protocol::V311, Protocol::V5] {
        let mut b = Bufs::new();
        let mut c = cfg(protocol);
        c.clean_start = false;
        c.session_expiry = Some(3600);
        c.username = Some("user");
        c.password = Some(b"pw");
        c.will = Some(crate::Will {
            topic: "dev/1/status",
            payload: b"offline",
            qos: QoS::AtLeastOnce,
            retain: true,
        });
        let mut s = session(&mut b, c);
        s.handle_connect(0);
        let mut buf = [0u8; 256];
        let n = s.poll_transmit(0, &mut buf).unwrap();
        let Some((Packet::Connect(p), _)) = decode(&buf[..n], protocol, 256).unwrap() else {
            panic!("not a CONNECT");
        };
        assert_eq!(p.protocol, protocol);
        assert!(!p.clean_start);
        assert_eq!(p.keep_alive, 10);
        assert_eq!(p.client_id, "dev-1");
        assert_eq!(p.username, Some("user"));
        assert_eq!(p.password, Some(&b"pw"[..]));
        let will = p.will.unwrap();
        assert_eq!(
            (will.topic, will.payload),
            ("dev/1/status", &b"offline"[..])
        );
        assert!(will.retain);
        if protocol.is_v5() {
            assert_eq!(p.properties.session_expiry_interval(), Some(3600));
            assert_eq!(p.properties.receive_maximum(), Some(INBOUND_MAX as u16));
            assert_eq!(p.properties.maximum_packet_size(), Some(256));
        }
        // Nothing else goes out before CONNACK.
        assert_eq!(s.poll_transmit(0, &mut buf).unwrap(), 0);
    }
}

#[test]
fn connect_larger_than_tx_buffer_is_a_clear_error() {
    let mut b = Buffers::<64, 16, 1, 64, 0>::new();
    let (storage, _) = b.split();
    let mut s = Session::new(cfg(Protocol::V5), storage);
    s.handle_connect(0);
    let mut out = [0u8; 16];
    assert!(matches!(
        s.poll_transmit(0, &mut out),
        Err(Error::BufferTooSmall { needed }) if needed > 16
    ));
}

#[test]
fn refused_connack_reports_its_code() {
    let mut b = Bufs::new();
    let mut s = session(&mut b, cfg(Protocol::V311));
    s.handle_connect(0);
    transmit(&mut s, 0);
    let refused = Packet::ConnAck(ConnAck {
        session_present: false,
        code: 5,
        properties: Properties::default(),
    });
    assert_eq!(
        feed(&mut s, 1, refused),
        vec![Ev::Disconnected(CloseReason::Refused(5))]
    );
    assert!(s.is_closed());
}

#[test]
fn missing_connack_times_out() {
    let mut b = Bufs::new();
    let mut s = session(&mut b, cfg(Protocol::V5));
    s.handle_connect(1_000);
    transmit(&mut s, 1_000);
    assert_eq!(s.poll_timeout(), Some(6_000));
    s.handle_timeout(5_999);
    assert!(events(&mut s).is_empty());
    s.handle_timeout(6_000);
    assert_eq!(events(&mut s), vec![Ev::Disconnected(CloseReason::Timeout)]);
}

// ---- keepalive --------------------------------------------------------------------

#[test]
fn keepalive_sends_pingreq_after_an_idle_interval() {
    let mut b = Bufs::new();
    let mut s = session(&mut b, cfg(Protocol::V311));
    connect(&mut s, 0, false);
    assert_eq!(s.poll_timeout(), Some(10_000));
    // Transmitting something moves the ping back.
    s.publish(&msg("a", QoS::AtMostOnce)).unwrap();
    transmit(&mut s, 4_000);
    assert_eq!(s.poll_timeout(), Some(14_000));
    s.handle_timeout(13_999);
    assert!(transmit(&mut s, 13_999).is_empty());
    s.handle_timeout(14_000);
    assert_eq!(transmit(&mut s, 14_000), vec!["PINGREQ"]);
    // Now the PINGRESP deadline.
    assert_eq!(s.poll_timeout(), Some(19_000));
}

#[test]
fn pingresp_keeps_the_connection() {
    let mut b = Bufs::new();
    let mut s = session(&mut b, cfg(Protocol::V5));
    connect(&mut s, 0, false);
    s.handle_timeout(10_000);
    assert_eq!(transmit(&mut s, 10_000), vec!["PINGREQ"]);
    assert!(feed(&mut s, 10_050, Packet::PingResp).is_empty());
    s.handle_timeout(15_000);
    assert!(events(&mut s).is_empty());
    assert!(s.is_connected());
    assert_eq!(s.poll_timeout(), Some(20_000));
}

#[test]
fn missing_pingresp_closes_the_connection() {
    let mut b = Bufs::new();
    let mut s = session(&mut b, cfg(Protocol::V311));
    connect(&mut s, 0, false);
    s.handle_timeout(10_000);
    assert_eq!(transmit(&mut s, 10_000), vec!["PINGREQ"]);
    // Other traffic is no PINGRESP.
    feed(&mut s, 12_000, ack(Packet::PubAck, 77));
    s.handle_timeout(14_999);
    assert!(s.is_connected());
    s.handle_timeout(15_000);
    assert_eq!(events(&mut s), vec![Ev::Disconnected(CloseReason::Timeout)]);
    assert!(s.is_closed());
    assert_eq!(s.poll_timeout(), None);
}

#[test]
fn server_keep_alive_overrides_the_configured_one() {
    let mut b = Bufs::new();
    let mut s = session(&mut b, cfg(Protocol::V5));
    let props = Properties::Values(&PropValues {
        server_keep_alive: Some(3),
        ..PropValues::default()
    });
    connect_with(&mut s, 0, false, props);
    assert_eq!(s.poll_timeout(), Some(3_000));
}

// ---- QoS 1/2 across reconnects ------------------------------------------------------

#[test]
fn qos1_unacked_is_resent_with_dup_when_the_session_is_present() {
    let mut b = Bufs::new();
    let mut c = cfg(Protocol::V311);
    c.clean_start = false;
    let mut s = session(&mut b, c);
    connect(&mut s, 0, false);
    let id = s.publish(&msg("t", QoS::AtLeastOnce)).unwrap();
    assert_eq!(
        transmit(&mut s, 1),
        vec![format!("PUBLISH q1 id{id} dup0 't'")]
    );
    s.handle_closed();
    assert_eq!(
        events(&mut s),
        vec![Ev::Disconnected(CloseReason::Transport)]
    );
    assert_eq!(
        connect(&mut s, 100, true),
        vec![format!("PUBLISH q1 id{id} dup1 't'")]
    );
    assert_eq!(
        feed(&mut s, 101, ack(Packet::PubAck, id)),
        vec![Ev::Published(id, 0)]
    );
    assert!(s.is_idle());
}

#[test]
fn qos1_unacked_is_resent_as_new_when_the_session_is_absent() {
    let mut b = Bufs::new();
    let mut s = session(&mut b, cfg(Protocol::V5));
    connect(&mut s, 0, false);
    let id = s.publish(&msg("t", QoS::AtLeastOnce)).unwrap();
    transmit(&mut s, 1);
    s.handle_closed();
    events(&mut s);
    assert_eq!(
        connect(&mut s, 100, false),
        vec![format!("PUBLISH q1 id{id} dup0 't'")]
    );
}

#[test]
fn qos2_without_pubrec_is_resent_with_dup() {
    let mut b = Bufs::new();
    let mut s = session(&mut b, cfg(Protocol::V311));
    connect(&mut s, 0, false);
    let id = s.publish(&msg("t", QoS::ExactlyOnce)).unwrap();
    transmit(&mut s, 1);
    s.handle_closed();
    assert_eq!(
        connect(&mut s, 100, true),
        vec![format!("PUBLISH q2 id{id} dup1 't'")]
    );
    assert!(feed(&mut s, 101, ack(Packet::PubRec, id)).is_empty());
    assert_eq!(transmit(&mut s, 101), vec![format!("PUBREL {id}")]);
    assert_eq!(
        feed(&mut s, 102, ack(Packet::PubComp, id)),
        vec![Ev::Published(id, 0)]
    );
    assert!(s.is_idle());
}

#[test]
fn qos2_after_pubrec_resends_pubrel_not_the_publish() {
    let mut b = Bufs::new();
    let mut s = session(&mut b, cfg(Protocol::V5));
    connect(&mut s, 0, false);
    let id = s.publish(&msg("t", QoS::ExactlyOnce)).unwrap();
    transmit(&mut s, 1);
    feed(&mut s, 2, ack(Packet::PubRec, id));
    assert_eq!(transmit(&mut s, 2), vec![format!("PUBREL {id}")]);
    // The connection dies before PUBCOMP.
    s.handle_closed();
    events(&mut s);
    assert_eq!(connect(&mut s, 100, true), vec![format!("PUBREL {id}")]);
    assert_eq!(
        feed(&mut s, 101, ack(Packet::PubComp, id)),
        vec![Ev::Published(id, 0)]
    );
    assert!(s.is_idle());
}

#[test]
fn qos2_after_pubrec_counts_as_delivered_when_the_session_is_absent() {
    let mut b = Bufs::new();
    let mut s = session(&mut b, cfg(Protocol::V311));
    connect(&mut s, 0, false);
    let id = s.publish(&msg("t", QoS::ExactlyOnce)).unwrap();
    transmit(&mut s, 1);
    feed(&mut s, 2, ack(Packet::PubRec, id));
    s.handle_closed();
    events(&mut s);
    s.handle_connect(100);
    transmit(&mut s, 100);
    assert_eq!(
        feed(&mut s, 100, connack(false, Properties::default())),
        vec![Ev::Connected(false), Ev::Published(id, 0)]
    );
    assert!(transmit(&mut s, 100).is_empty());
    assert!(s.is_idle());
}

#[test]
fn messages_stored_while_disconnected_go_out_in_order_after_connack() {
    let mut b = Bufs::new();
    let mut s = session(&mut b, cfg(Protocol::V311));
    let a = s.publish(&msg("a", QoS::AtLeastOnce)).unwrap();
    let c = s.publish(&msg("c", QoS::ExactlyOnce)).unwrap();
    assert_eq!(
        s.publish(&msg("q0", QoS::AtMostOnce)),
        Err(Error::NotConnected)
    );
    assert_eq!(
        connect(&mut s, 0, false),
        vec![
            format!("PUBLISH q1 id{a} dup0 'a'"),
            format!("PUBLISH q2 id{c} dup0 'c'")
        ]
    );
}

#[test]
fn resends_keep_the_original_order_after_partial_acks() {
    let mut b = Bufs::new();
    let mut s = session(&mut b, cfg(Protocol::V311));
    connect(&mut s, 0, false);
    let ids: Vec<u16> = ["a", "b", "c", "d"]
        .iter()
        .map(|t| s.publish(&msg(t, QoS::AtLeastOnce)).unwrap())
        .collect();
    transmit(&mut s, 1);
    feed(&mut s, 2, ack(Packet::PubAck, ids[1]));
    // A new message takes the freed slot (slot order is no longer submission order).
    let e = s.publish(&msg("e", QoS::AtLeastOnce)).unwrap();
    s.handle_closed();
    assert_eq!(
        connect(&mut s, 10, true),
        vec![
            format!("PUBLISH q1 id{} dup1 'a'", ids[0]),
            format!("PUBLISH q1 id{} dup1 'c'", ids[2]),
            format!("PUBLISH q1 id{} dup1 'd'", ids[3]),
            format!("PUBLISH q1 id{e} dup0 'e'"),
        ]
    );
}

#[test]
fn refused_publish_finishes_with_its_reason() {
    let mut b = Bufs::new();
    let mut s = session(&mut b, cfg(Protocol::V5));
    connect(&mut s, 0, false);
    let id = s.publish(&msg("t", QoS::ExactlyOnce)).unwrap();
    transmit(&mut s, 1);
    let mut a = Ack::new(id);
    a.reason = reason::NOT_AUTHORIZED;
    assert_eq!(
        feed(&mut s, 2, Packet::PubRec(a)),
        vec![Ev::Published(id, reason::NOT_AUTHORIZED)]
    );
    // No PUBREL for a refused QoS 2 message.
    assert!(transmit(&mut s, 2).is_empty());
    assert!(s.is_idle());
}

// ---- packet identifiers -------------------------------------------------------------

#[test]
fn packet_ids_wrap_past_65535_and_skip_ids_in_use() {
    let mut b = Bufs::new();
    let mut s = session(&mut b, cfg(Protocol::V311));
    connect(&mut s, 0, false);
    s.next_pid = 65534;
    let q1 = |s: &mut Session<'_>| s.publish(&msg("t", QoS::AtLeastOnce)).unwrap();
    assert_eq!([q1(&mut s), q1(&mut s), q1(&mut s)], [65534, 65535, 1]);
    transmit(&mut s, 1);
    feed(&mut s, 2, ack(Packet::PubAck, 65535));
    // 65534 and 1 are still in flight: the counter wraps around them, never to 0.
    s.next_pid = 65534;
    assert_eq!(q1(&mut s), 65535);
    assert_eq!(q1(&mut s), 2);
    assert_eq!(s.publish(&msg("t", QoS::AtLeastOnce)), Err(Error::Full));
    // Subscribe ids come from the same space.
    feed(&mut s, 3, ack(Packet::PubAck, 1));
    s.next_pid = 65535;
    let filters = [SubscribeFilter {
        filter: "cmd/#",
        options: SubOptions::qos(QoS::AtLeastOnce),
    }];
    assert_eq!(s.subscribe(&filters), Ok(1));
}

// ---- buffers and limits -------------------------------------------------------------

#[test]
fn full_store_reports_full_until_an_ack_frees_a_slot() {
    let mut b = Bufs::new();
    let mut s = session(&mut b, cfg(Protocol::V5));
    connect(&mut s, 0, false);
    for _ in 0..4 {
        s.publish(&msg("t", QoS::AtLeastOnce)).unwrap();
    }
    assert_eq!(s.publish(&msg("t", QoS::AtLeastOnce)), Err(Error::Full));
    assert_eq!(s.in_flight(), 4);
    transmit(&mut s, 1);
    feed(&mut s, 2, ack(Packet::PubAck, 1));
    assert!(s.publish(&msg("t", QoS::AtLeastOnce)).is_ok());
}

#[test]
fn publish_larger_than_a_slot_is_buffer_too_small() {
    let mut b = Bufs::new();
    let mut s = session(&mut b, cfg(Protocol::V311));
    let payload = [0u8; 200];
    let r = s.publish(&Message::new("t", &payload).qos(QoS::AtLeastOnce));
    assert_eq!(r, Err(Error::BufferTooSmall { needed: 208 }));
    assert!(s.is_idle());
}

#[test]
fn publish_larger_than_the_tx_buffer_is_buffer_too_small() {
    let mut b = Buffers::<256, 64, 2, 128, 0>::new();
    let (storage, _) = b.split();
    let mut s = Session::new(cfg(Protocol::V311), storage);
    let payload = [0u8; 70];
    let r = s.publish(&Message::new("t", &payload).qos(QoS::AtLeastOnce));
    assert_eq!(r, Err(Error::BufferTooSmall { needed: 77 }));
}

#[test]
fn frame_larger_than_the_rx_buffer_closes_with_protocol_error() {
    let mut b = Bufs::new();
    let mut s = session(&mut b, cfg(Protocol::V311));
    connect(&mut s, 0, false);
    let payload = [7u8; 300];
    let p = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: "big",
        packet_id: 0,
        properties: Properties::default(),
        payload: &payload,
    });
    let mut buf = [0u8; 400];
    let n = p.encode(Protocol::V311, &mut buf).unwrap();
    // Only the header has arrived; the session refuses before buffering the rest.
    let r = s.handle_received(1, &buf[..8]);
    assert_eq!(
        r,
        Received::Frame {
            used: 8,
            event: None
        }
    );
    assert_eq!(
        events(&mut s),
        vec![Ev::Disconnected(CloseReason::Protocol)]
    );
    assert!(n > 256);
}

#[test]
fn malformed_frame_closes_with_protocol_error() {
    let mut b = Bufs::new();
    let mut s = session(&mut b, cfg(Protocol::V5));
    connect(&mut s, 0, false);
    // PUBACK with packet id 0.
    assert_eq!(
        feed_raw(&mut s, 1, &[0x40, 0x02, 0x00, 0x00]),
        vec![Ev::Disconnected(CloseReason::Protocol)]
    );
}

#[test]
fn unexpected_packet_closes_with_protocol_error() {
    let mut b = Bufs::new();
    let mut s = session(&mut b, cfg(Protocol::V311));
    s.handle_connect(0);
    transmit(&mut s, 0);
    // PINGRESP before CONNACK.
    assert_eq!(
        feed(&mut s, 1, Packet::PingResp),
        vec![Ev::Disconnected(CloseReason::Protocol)]
    );
}

#[test]
fn partial_frames_are_incomplete() {
    let mut b = Bufs::new();
    let mut s = session(&mut b, cfg(Protocol::V311));
    s.handle_connect(0);
    transmit(&mut s, 0);
    assert_eq!(s.handle_received(0, &[0x20]), Received::Incomplete);
    assert_eq!(
        s.handle_received(0, &[0x20, 0x02, 0x00]),
        Received::Incomplete
    );
    assert!(
        s.handle_received(0, &[0x20, 0x02, 0x00, 0x00, 0xD0])
            == Received::Frame {
                used: 4,
                event: Some(Event::Connected {
                    session_present: false
                })
            }
    );
}

#[test]
fn broker_maximum_packet_size_is_never_exceeded() {
    let mut b = Bufs::new();
    let mut s = session(&mut b, cfg(Protocol::V5));
    s.publish(&Message::new("t", &[0u8; 60]).qos(QoS::AtLeastOnce))
        .unwrap();
    let props = Properties::Values(&PropValues {
        maximum_packet_size: Some(40),
        ..PropValues::default()
    });
    // Stored before the limit was known: dropped with 0x95 instead of sent.
    assert!(connect_with(&mut s, 0, false, props).is_empty());
    assert_eq!(
        events(&mut s),
        vec![Ev::Published(1, reason::PACKET_TOO_LARGE)]
    );
    // Known now: refused up front.
    assert_eq!(
        s.publish(&Message::new("t", &[0u8; 60]).qos(QoS::AtLeastOnce)),
        Err(Error::PacketTooLarge)
    );
    assert!(s.publish(&Message::new("t", &[0u8; 10])).is_ok());
}

#[test]
fn receive_maximum_limits_publishes_in_flight() {
    let mut b = Bufs::new();
    let mut s = session(&mut b, cfg(Protocol::V5));
    let props = Properties::Values(&PropValues {
        receive_maximum: Some(2),
        ..PropValues::default()
    });
    connect_with(&mut s, 0, false, props);
    for t in ["a", "b", "c"] {
        s.publish(&msg(t, QoS::AtLeastOnce)).unwrap();
    }
    let sent = transmit(&mut s, 1);
    assert_eq!(sent.len(), 2, "{sent:?}");
    feed(&mut s, 2, ack(Packet::PubAck, 1));
    assert_eq!(transmit(&mut s, 2), vec!["PUBLISH q1 id3 dup0 'c'"]);
}

#[test]
fn broker_maximum_qos_is_enforced() {
    let mut b = Bufs::new();
    let mut s = session(&mut b, cfg(Protocol::V5));
    let props = Properties::Values(&PropValues {
        maximum_qos: Some(1),
        ..PropValues::default()
    });
    connect_with(&mut s, 0, false, props);
    assert_eq!(
        s.publish(&msg("t", QoS::ExactlyOnce)),
        Err(Error::QosNotSupported)
    );
}

#[test]
fn invalid_topics_are_refused() {
    let mut b = Bufs::new();
    let mut s = session(&mut b, cfg(Protocol::V5));
    assert_eq!(
        s.publish(&msg("a/+", QoS::AtLeastOnce)),
        Err(Error::InvalidTopic)
    );
    assert_eq!(
        s.publish(&msg("", QoS::AtLeastOnce)),
        Err(Error::InvalidTopic)
    );
    assert_eq!(s.subscribe(&[]), Err(Error::InvalidTopic));
    assert_eq!(s.unsubscribe(&["a/#/b"]), Err(Error::InvalidTopic));
}

// ---- topic aliases ------------------------------------------------------------------

#[test]
fn topic_alias_replaces_a_repeated_topic() {
    let mut b = Bufs::new();
    let mut s = session(&mut b, cfg(Protocol::V5));
    let props = Properties::Values(&PropValues {
        topic_alias_maximum: Some(10),
        ..PropValues::default()
    });
    connect_with(&mut s, 0, false, props);
    let mut sent = Vec::new();
    for t in [
        "sensors/a",
        "sensors/a",
        "sensors/b",
        "sensors/a",
        "sensors/c",
        "sensors/b",
    ] {
        s.publish(&msg(t, QoS::AtMostOnce)).unwrap();
        sent.extend(transmit(&mut s, 1));
    }
    // Two table entries: `c` takes over alias 1 from `a`.
    assert_eq!(
        sent,
        vec![
            "PUBLISH q0 id0 dup0 'sensors/a' alias1",
            "PUBLISH q0 id0 dup0 '' alias1",
            "PUBLISH q0 id0 dup0 'sensors/b' alias2",
            "PUBLISH q0 id0 dup0 '' alias1",
            "PUBLISH q0 id0 dup0 'sensors/c' alias1",
            "PUBLISH q0 id0 dup0 '' alias2",
        ]
    );
}

#[test]
fn topic_aliases_start_over_on_each_connection() {
    let mut b = Bufs::new();
    let mut s = session(&mut b, cfg(Protocol::V5));
    let props = Properties::Values(&PropValues {
        topic_alias_maximum: Some(1),
        ..PropValues::default()
    });
    connect_with(&mut s, 0, false, props);
    s.publish(&msg("t", QoS::AtLeastOnce)).unwrap();
    assert_eq!(transmit(&mut s, 1), vec!["PUBLISH q1 id1 dup0 't' alias1"]);
    s.handle_closed();
    // The re-send on the new connection carries the topic again.
    assert_eq!(
        connect_with(&mut s, 10, true, props),
        vec!["PUBLISH q1 id1 dup1 't' alias1"]
    );
}

#[test]
fn no_topic_alias_without_the_brokers_consent_or_in_v311() {
    for protocol in [Protocol::V5, Protocol::V311] {
        let mut b = Bufs::new();
        let mut s = session(&mut b, cfg(protocol));
        connect(&mut s, 0, false);
        s.publish(&msg("t", QoS::AtMostOnce)).unwrap();
        s.publish(&msg("t", QoS::AtMostOnce)).unwrap();
        assert_eq!(
            transmit(&mut s, 1),
            vec!["PUBLISH q0 id0 dup0 't'", "PUBLISH q0 id0 dup0 't'"]
        );
    }
}

// ---- receiving ----------------------------------------------------------------------

fn incoming(qos: QoS, packet_id: u16, dup: bool) -> Packet<'static> {
    Packet::Publish(Publish {
        dup,
        qos,
        retain: false,
        topic: "cmd/1",
        packet_id,
        properties: Properties::default(),
        payload: b"on",
    })
}

#[test]
fn inbound_qos1_is_delivered_and_acknowledged() {
    let mut b = Bufs::new();
    let mut s = session(&mut b, cfg(Protocol::V311));
    connect(&mut s, 0, false);
    assert_eq!(
        feed(&mut s, 1, incoming(QoS::AtLeastOnce, 9, false)),
        vec![Ev::Msg("cmd/1".into(), b"on".to_vec())]
    );
    assert_eq!(transmit(&mut s, 1), vec!["PUBACK 9"]);
}

#[test]
fn inbound_qos2_is_delivered_exactly_once() {
    let mut b = Bufs::new();
    let mut s = session(&mut b, cfg(Protocol::V5));
    connect(&mut s, 0, false);
    assert_eq!(
        feed(&mut s, 1, incoming(QoS::ExactlyOnce, 4, false)).len(),
        1
    );
    assert_eq!(transmit(&mut s, 1), vec!["PUBREC 4"]);
    // The broker missed our PUBREC and sends it again: acknowledged, not delivered.
    assert!(feed(&mut s, 2, incoming(QoS::ExactlyOnce, 4, true)).is_empty());
    assert_eq!(transmit(&mut s, 2), vec!["PUBREC 4"]);
    assert!(feed(&mut s, 3, ack(Packet::PubRel, 4)).is_empty());
    assert_eq!(transmit(&mut s, 3), vec!["PUBCOMP 4"]);
    // After PUBREL the id is free for a new message.
    assert_eq!(
        feed(&mut s, 4, incoming(QoS::ExactlyOnce, 4, false)).len(),
        1
    );
}

#[test]
fn inbound_qos2_state_survives_a_resumed_session() {
    let mut b = Bufs::new();
    let mut s = session(&mut b, cfg(Protocol::V311));
    connect(&mut s, 0, false);
    feed(&mut s, 1, incoming(QoS::ExactlyOnce, 4, false));
    s.handle_closed();
    connect(&mut s, 10, true);
    assert!(feed(&mut s, 11, incoming(QoS::ExactlyOnce, 4, true)).is_empty());
    assert_eq!(transmit(&mut s, 11), vec!["PUBREC 4"]);
}

#[test]
fn busy_when_owed_acks_fill_the_queue() {
    let mut b = Bufs::new();
    let mut s = session(&mut b, cfg(Protocol::V311));
    connect(&mut s, 0, false);
    for id in 1..=INBOUND_MAX as u16 {
        feed(&mut s, 1, incoming(QoS::AtLeastOnce, id, false));
    }
    let mut buf = [0u8; 64];
    let n = incoming(QoS::AtLeastOnce, 99, false)
        .encode(Protocol::V311, &mut buf)
        .unwrap();
    assert_eq!(s.handle_received(1, &buf[..n]), Received::Busy);
    assert_eq!(transmit(&mut s, 1).len(), INBOUND_MAX);
    assert!(matches!(
        s.handle_received(1, &buf[..n]),
        Received::Frame { .. }
    ));
}

// ---- subscriptions ------------------------------------------------------------------

const FILTERS: &[SubscribeFilter<'static>] = &[SubscribeFilter {
    filter: "cmd/dev-1/#",
    options: SubOptions {
        qos: QoS::AtLeastOnce,
        no_local: false,
        retain_as_published: false,
        retain_handling: mote_codec::RetainHandling::SendAtSubscribe,
    },
}];

#[test]
fn configured_subscriptions_are_made_only_when_the_session_is_absent() {
    let mut b = Bufs::new();
    let mut c = cfg(Protocol::V311);
    c.subscriptions = FILTERS;
    c.clean_start = false;
    let mut s = session(&mut b, c);
    assert_eq!(connect(&mut s, 0, false), vec!["SUBSCRIBE 1"]);
    let suback = Packet::SubAck(SubAck {
        packet_id: 1,
        properties: Properties::default(),
        codes: &[1],
    });
    assert_eq!(feed(&mut s, 1, suback), vec![Ev::Subscribed(1, 1)]);
    assert!(s.is_idle());
    s.handle_closed();
    assert!(connect(&mut s, 10, true).is_empty());
    s.handle_closed();
    assert_eq!(connect(&mut s, 20, false), vec!["SUBSCRIBE 2"]);
}

#[test]
fn subscribe_and_unsubscribe_report_their_acks() {
    let mut b = Bufs::new();
    let mut s = session(&mut b, cfg(Protocol::V5));
    connect(&mut s, 0, false);
    let sid = s.subscribe(FILTERS).unwrap();
    let uid = s.unsubscribe(&["old/#"]).unwrap();
    assert_eq!(
        transmit(&mut s, 1),
        vec![format!("SUBSCRIBE {sid}"), format!("UNSUBSCRIBE {uid}")]
    );
    let suback = Packet::SubAck(SubAck {
        packet_id: sid,
        properties: Properties::default(),
        codes: &[0x87],
    });
    assert_eq!(feed(&mut s, 2, suback), vec![Ev::Subscribed(sid, 0x87)]);
    let unsuback = Packet::UnsubAck(UnsubAck {
        packet_id: uid,
        properties: Properties::default(),
        codes: &[0],
    });
    assert_eq!(feed(&mut s, 3, unsuback), vec![Ev::Unsubscribed(uid)]);
    assert!(s.is_idle());
}

// ---- disconnecting ------------------------------------------------------------------

#[test]
fn disconnect_sends_disconnect_and_refuses_more_work() {
    let mut b = Bufs::new();
    let mut s = session(&mut b, cfg(Protocol::V5));
    connect(&mut s, 0, false);
    s.disconnect();
    assert_eq!(transmit(&mut s, 1), vec!["DISCONNECT"]);
    assert_eq!(events(&mut s), vec![Ev::Disconnected(CloseReason::Local)]);
    assert!(s.is_shut_down() && s.is_closed());
    assert_eq!(s.publish(&msg("t", QoS::AtLeastOnce)), Err(Error::ShutDown));
}

#[test]
fn broker_disconnect_reports_its_reason() {
    let mut b = Bufs::new();
    let mut s = session(&mut b, cfg(Protocol::V5));
    connect(&mut s, 0, false);
    assert_eq!(
        feed(&mut s, 1, Packet::Disconnect(Disconnect::new(0x8E))),
        vec![Ev::Disconnected(CloseReason::Server(0x8E))]
    );
}

// ---- sensor events ------------------------------------------------------------------

#[test]
fn sensor_events_carry_the_content_type_in_v5_and_use_the_event_topic() {
    for protocol in [Protocol::V5, Protocol::V311] {
        let mut b = Bufs::new();
        let mut c = cfg(protocol);
        c.event_topic = "mote/events/dev-1";
        let mut s = session(&mut b, c);
        connect(&mut s, 0, false);
        let ev = SensorEvent {
            device: 1,
            seq: 7,
            timestamp_ms: 1234,
            channel: 0,
            value: Value::I32(-40),
        };
        s.publish_event(&ev, QoS::AtLeastOnce).unwrap();
        let mut buf = [0u8; 256];
        let n = s.poll_transmit(1, &mut buf).unwrap();
        let Some((Packet::Publish(p), _)) = decode(&buf[..n], protocol, 256).unwrap() else {
            panic!("not a PUBLISH");
        };
        assert_eq!(p.topic, "mote/events/dev-1");
        assert_eq!(SensorEvent::decode(p.payload).unwrap(), ev);
        let expected = protocol.is_v5().then_some(CONTENT_TYPE);
        assert_eq!(p.properties.content_type(), expected);
    }
}
