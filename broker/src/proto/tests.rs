//! The core driven directly with decoded packets and virtual time: no sockets.

#![allow(clippy::unwrap_used)]

use super::*;

mod access;
mod backpressure;
mod fuzz;
mod limits;
mod login;
mod outbox;
mod streams;
mod twins;
mod work_queues;
use mote_codec::{List, PropList, SubOptions, SubscribeFilter, Will};

// The simulated client and CONNECT helpers are the fuzz driver's (`crate::fuzzing`).
use crate::fuzzing::{connect_login, connect_packet, connect_with, Client, NoWake};
use crate::proto::login::Login;

/// A received PUBLISH: topic, payload, qos, packet id, dup, retain, subscription ids.
type Got = (String, Vec<u8>, QoS, u16, bool, bool, Vec<u32>);

fn core() -> Core {
    Core::new(
        Arc::new(MqttConfig::default()),
        Clock::new(Instant::now(), 1_700_000_000_000),
    )
}

/// Connects `id` as `login` (`expiry`: a persistent session's expiry, none: a clean
/// session); the client if accepted, and the CONNACK.
fn connect_as(
    core: &mut Core,
    protocol: Protocol,
    id: &str,
    expiry: Option<u32>,
    login: Login,
    now: Instant,
) -> (Option<Client>, Vec<u8>) {
    let props = PropValues {
        session_expiry_interval: expiry,
        ..PropValues::default()
    };
    let mut c = connect_packet(protocol, id, expiry.is_none(), Properties::Values(&props));
    c.username = login.user.as_deref();
    connect_login(core, &c, login.clone(), now)
}

fn connect(
    core: &mut Core,
    protocol: Protocol,
    id: &str,
    clean: bool,
    expiry: Option<u32>,
    now: Instant,
) -> Client {
    let props = Properties::Values(&PropValues {
        session_expiry_interval: expiry,
        ..PropValues::default()
    });
    connect_with(core, &connect_packet(protocol, id, clean, props), now)
        .0
        .unwrap()
}

/// An MQTT 5 client `id` with a clean start that accepts at most `receive_maximum`
/// unacknowledged QoS 1/2 PUBLISHes.
fn connect_receiving(core: &mut Core, id: &str, receive_maximum: u16, now: Instant) -> Client {
    let props = PropValues {
        receive_maximum: Some(receive_maximum),
        ..PropValues::default()
    };
    let packet = connect_packet(Protocol::V5, id, true, Properties::Values(&props));
    connect_with(core, &packet, now).0.unwrap()
}

/// Every packet in `bytes`, decoded with `protocol`, passed to `f`.
fn each_packet(bytes: &[u8], protocol: Protocol, mut f: impl FnMut(Packet<'_>)) {
    let mut at = 0;
    while at < bytes.len() {
        let (p, n) = mote_codec::decode(&bytes[at..], protocol, u32::MAX)
            .unwrap()
            .unwrap();
        f(p);
        at += n;
    }
}

fn send(core: &mut Core, c: &mut Client, p: &Packet<'_>, now: Instant) -> Result<(), Close> {
    let mut fx = Effects::default();
    core.handle(&c.id, c.conn, p, now, &mut c.out, &mut fx)
}

/// The reason code of the PUBACK of a QoS 1 PUBLISH to `topic` (none: no PUBACK).
fn puback(core: &mut Core, c: &mut Client, topic: &str, id: u16, now: Instant) -> Option<u8> {
    puback_of(core, c, topic, b"x", id, now)
}

/// A PUBLISH of `payload` to `topic` at `qos`, not retained, without properties.
fn publish_packet<'a>(topic: &'a str, payload: &'a [u8], qos: QoS, id: u16) -> Packet<'a> {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic,
        packet_id: id,
        properties: Properties::default(),
        payload,
    })
}

/// [`puback`] with `payload`.
fn puback_of(
    core: &mut Core,
    c: &mut Client,
    topic: &str,
    payload: &[u8],
    id: u16,
    now: Instant,
) -> Option<u8> {
    send(
        core,
        c,
        &publish_packet(topic, payload, QoS::AtLeastOnce, id),
        now,
    )
    .unwrap();
    let bytes = c.out.split().to_vec();
    let mut code = None;
    each_packet(&bytes, c.protocol, |p| {
        if let Packet::PubAck(a) = p {
            code = Some(a.reason);
        }
    });
    code
}

/// Drains and returns what the core has for `c` as owned (topic, payload, qos, id, dup, retain, sub ids).
fn received(core: &mut Core, c: &mut Client, now: Instant) -> Vec<Got> {
    let _ = core.drain(&c.id, c.conn, now, &mut c.out);
    let bytes = c.out.split().to_vec();
    let mut v = Vec::new();
    each_packet(&bytes, c.protocol, |p| {
        if let Packet::Publish(p) = p {
            v.push((
                p.topic.to_owned(),
                p.payload.to_vec(),
                p.qos,
                p.packet_id,
                p.dup,
                p.retain,
                p.properties.subscription_identifiers().iter().collect(),
            ));
        }
    });
    v
}

fn subscribe(
    core: &mut Core,
    c: &mut Client,
    filters: &[(&str, SubOptions)],
    id: Option<u32>,
    now: Instant,
) -> Vec<u8> {
    let entries: Vec<SubscribeFilter<'_>> = filters
        .iter()
        .map(|(f, o)| SubscribeFilter {
            filter: f,
            options: *o,
        })
        .collect();
    let ids: Vec<u32> = id.into_iter().collect();
    let p = Packet::Subscribe(Subscribe {
        packet_id: 1,
        properties: Properties::Values(&PropValues {
            subscription_identifiers: PropList::Slice(&ids),
            ..PropValues::default()
        }),
        filters: List::Slice(&entries),
    });
    send(core, c, &p, now).unwrap();
    let bytes = c.out.split().to_vec();
    let mut codes = Vec::new();
    each_packet(&bytes, c.protocol, |p| {
        if let Packet::SubAck(a) = p {
            codes = a.codes.to_vec();
        }
    });
    // Put back anything after the SUBACK (retained deliveries).
    let mut rest = BytesMut::new();
    each_packet(&bytes, c.protocol, |p| {
        if !matches!(p, Packet::SubAck(_)) {
            p.encode_to(c.protocol, &mut rest).unwrap();
        }
    });
    c.out = rest;
    codes
}

fn publish(
    core: &mut Core,
    c: &mut Client,
    topic: &str,
    payload: &[u8],
    qos: QoS,
    id: u16,
    now: Instant,
) {
    send(core, c, &publish_packet(topic, payload, qos, id), now).unwrap();
    c.out.clear();
}

/// `c` unsubscribes from `filter` (packet id `id`); its UNSUBACK is left in `c.out`.
fn unsubscribe(core: &mut Core, c: &mut Client, filter: &str, id: u16, now: Instant) {
    let filters = [filter];
    let u = Packet::Unsubscribe(Unsubscribe {
        packet_id: id,
        properties: Properties::default(),
        filters: List::Slice(&filters),
    });
    send(core, c, &u, now).unwrap();
}

/// `n` QoS 1 messages `p` publishes to `topic`, packet ids from `first_id`.
fn publish_n(core: &mut Core, p: &mut Client, topic: &str, n: u16, first_id: u16, now: Instant) {
    for i in 0..n {
        publish(core, p, topic, b"n", QoS::AtLeastOnce, first_id + i, now);
    }
}

fn q(qos: QoS) -> SubOptions {
    SubOptions::qos(qos)
}

#[test]
fn v5_connack_announces_limits() {
    let mut core = core();
    let (_, bytes) = connect_with(
        &mut core,
        &connect_packet(Protocol::V5, "", true, Properties::default()),
        Instant::now(),
    );
    let (p, _) = mote_codec::decode(&bytes, Protocol::V5, u32::MAX)
        .unwrap()
        .unwrap();
    let Packet::ConnAck(a) = p else {
        panic!("not a CONNACK")
    };
    assert_eq!(a.code, 0);
    assert!(!a.session_present);
    let pr = a.properties;
    assert_eq!(pr.receive_maximum(), Some(1024));
    assert_eq!(pr.topic_alias_maximum(), Some(64));
    assert_eq!(pr.maximum_packet_size(), Some(1_048_576));
    assert_eq!(pr.retain_available(), Some(true));
    assert_eq!(pr.shared_subscription_available(), Some(true));
    assert!(pr
        .assigned_client_identifier()
        .is_some_and(|id| !id.is_empty()));
}

#[test]
fn v311_empty_id_without_clean_session_is_rejected() {
    let mut core = core();
    let (c, bytes) = connect_with(
        &mut core,
        &connect_packet(Protocol::V311, "", false, Properties::default()),
        Instant::now(),
    );
    assert!(c.is_none());
    assert_eq!(bytes, [0x20, 0x02, 0x00, 0x02]);
}

#[test]
fn qos1_flow_and_window() {
    let now = Instant::now();
    let mut core = core();
    let mut sub = connect(&mut core, Protocol::V311, "sub", true, None, now);
    let mut publ = connect(&mut core, Protocol::V311, "pub", true, None, now);
    assert_eq!(
        subscribe(
            &mut core,
            &mut sub,
            &[("a/+", q(QoS::AtLeastOnce))],
            None,
            now
        ),
        [1]
    );
    publish(&mut core, &mut publ, "a/b", b"1", QoS::AtLeastOnce, 10, now);
    publish(&mut core, &mut publ, "a/b", b"2", QoS::ExactlyOnce, 11, now);
    let got = received(&mut core, &mut sub, now);
    assert_eq!(got.len(), 2);
    assert_eq!(
        (got[0].2, got[1].2),
        (QoS::AtLeastOnce, QoS::AtLeastOnce),
        "granted QoS caps delivery"
    );
    let s = &core.shards["sub"];
    assert_eq!(s.inflight().count(), 2);
    send(
        &mut core,
        &mut sub,
        &Packet::PubAck(Ack::new(got[0].3)),
        now,
    )
    .unwrap();
    send(
        &mut core,
        &mut sub,
        &Packet::PubAck(Ack::new(got[1].3)),
        now,
    )
    .unwrap();
    assert!(core.shards["sub"].inflight().next().is_none());
}

#[test]
fn qos2_duplicate_publish_is_delivered_once() {
    let now = Instant::now();
    let mut core = core();
    let mut sub = connect(&mut core, Protocol::V5, "sub", true, None, now);
    let mut publ = connect(&mut core, Protocol::V5, "pub", true, None, now);
    subscribe(
        &mut core,
        &mut sub,
        &[("t", q(QoS::ExactlyOnce))],
        None,
        now,
    );
    publish(&mut core, &mut publ, "t", b"x", QoS::ExactlyOnce, 7, now);
    publish(&mut core, &mut publ, "t", b"x", QoS::ExactlyOnce, 7, now);
    assert_eq!(received(&mut core, &mut sub, now).len(), 1);
    send(&mut core, &mut publ, &Packet::PubRel(Ack::new(7)), now).unwrap();
    assert!(core.shards["pub"].inbound_qos2_count() == 0);
    // After PUBREL the id is free: the same id is a new message.
    publish(&mut core, &mut publ, "t", b"y", QoS::ExactlyOnce, 7, now);
    assert_eq!(received(&mut core, &mut sub, now).len(), 1);
}

#[test]
fn overlapping_subscriptions_deliver_once_with_every_identifier() {
    let now = Instant::now();
    let mut core = core();
    let mut sub = connect(&mut core, Protocol::V5, "sub", true, None, now);
    let mut publ = connect(&mut core, Protocol::V5, "pub", true, None, now);
    subscribe(
        &mut core,
        &mut sub,
        &[("a/#", q(QoS::AtMostOnce))],
        Some(1),
        now,
    );
    subscribe(
        &mut core,
        &mut sub,
        &[("a/+", q(QoS::AtLeastOnce))],
        Some(2),
        now,
    );
    publish(&mut core, &mut publ, "a/b", b"x", QoS::ExactlyOnce, 1, now);
    let got = received(&mut core, &mut sub, now);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].2, QoS::AtLeastOnce);
    let mut ids = got[0].6.clone();
    ids.sort_unstable();
    assert_eq!(ids, [1, 2]);
}

#[test]
fn persistent_session_queues_and_resends_with_dup() {
    let t0 = Instant::now();
    let mut core = core();
    let mut sub = connect(&mut core, Protocol::V311, "sub", false, None, t0);
    let mut publ = connect(&mut core, Protocol::V311, "pub", true, None, t0);
    subscribe(&mut core, &mut sub, &[("t", q(QoS::AtLeastOnce))], None, t0);
    publish(&mut core, &mut publ, "t", b"1", QoS::AtLeastOnce, 1, t0);
    let first = received(&mut core, &mut sub, t0);
    assert_eq!(first.len(), 1);
    let mut fx = Effects::default();
    core.disconnected(&sub.id, sub.conn, End::Abnormal, t0, &mut fx);
    publish(&mut core, &mut publ, "t", b"2", QoS::AtLeastOnce, 2, t0);
    publish(&mut core, &mut publ, "t", b"q0", QoS::AtMostOnce, 0, t0);
    let (c, bytes) = connect_with(
        &mut core,
        &connect_packet(Protocol::V311, "sub", false, Properties::default()),
        t0,
    );
    assert_eq!(&bytes[..4], [0x20, 0x02, 0x01, 0x00], "session present");
    let mut got = Vec::new();
    each_packet(&bytes[4..], Protocol::V311, |p| {
        if let Packet::Publish(p) = p {
            got.push((p.payload.to_vec(), p.dup, p.packet_id));
        }
    });
    assert_eq!(
        got.len(),
        2,
        "unacked resent, queued QoS 1 sent, QoS 0 not queued offline"
    );
    assert_eq!(got[0], (b"1".to_vec(), true, first[0].3));
    assert_eq!((got[1].0.as_slice(), got[1].1), (&b"2"[..], false));
    drop(c);
}

#[test]
fn will_waits_for_its_delay_and_is_cancelled_by_reconnect() {
    let t0 = Instant::now();
    let mut core = core();
    let mut watcher = connect(&mut core, Protocol::V5, "w", true, None, t0);
    subscribe(
        &mut core,
        &mut watcher,
        &[("will/#", q(QoS::AtLeastOnce))],
        None,
        t0,
    );
    let will_props = PropValues {
        will_delay_interval: Some(5),
        ..PropValues::default()
    };
    let will = || Will {
        topic: "will/x",
        payload: b"gone",
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Properties::Values(&will_props),
    };
    let props = Properties::Values(&PropValues {
        session_expiry_interval: Some(100),
        ..PropValues::default()
    });
    let mut c = connect_packet(Protocol::V5, "dev", true, props);
    c.will = Some(will());
    let dev = connect_with(&mut core, &c, t0).0.unwrap();
    let mut fx = Effects::default();
    core.disconnected(&dev.id, dev.conn, End::Abnormal, t0, &mut fx);
    core.handle_timeout(t0 + Duration::from_secs(4), &mut fx);
    assert!(
        received(&mut core, &mut watcher, t0).is_empty(),
        "not before the delay"
    );
    core.handle_timeout(t0 + Duration::from_secs(6), &mut fx);
    let got = received(&mut core, &mut watcher, t0);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, "will/x");

    // Reconnecting (clean start 0) before the delay cancels the will.
    let mut c2 = connect_packet(Protocol::V5, "dev2", true, props);
    c2.will = Some(will());
    let dev2 = connect_with(&mut core, &c2, t0).0.unwrap();
    core.disconnected(&dev2.id, dev2.conn, End::Abnormal, t0, &mut fx);
    let _ = connect_with(
        &mut core,
        &connect_packet(Protocol::V5, "dev2", false, props),
        t0 + Duration::from_secs(1),
    );
    core.handle_timeout(t0 + Duration::from_secs(10), &mut fx);
    assert!(received(&mut core, &mut watcher, t0).is_empty());
}

#[test]
fn normal_disconnect_discards_the_will_and_session_expiry_zero_ends_session() {
    let t0 = Instant::now();
    let mut core = core();
    let mut watcher = connect(&mut core, Protocol::V311, "w", true, None, t0);
    subscribe(
        &mut core,
        &mut watcher,
        &[("will", q(QoS::AtMostOnce))],
        None,
        t0,
    );
    let mut c = connect_packet(Protocol::V311, "dev", true, Properties::default());
    c.will = Some(Will {
        topic: "will",
        payload: b"x",
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Properties::default(),
    });
    let dev = connect_with(&mut core, &c, t0).0.unwrap();
    let mut fx = Effects::default();
    core.disconnected(&dev.id, dev.conn, End::Normal { will: false }, t0, &mut fx);
    assert!(received(&mut core, &mut watcher, t0).is_empty());
    assert!(!core.shards.contains("dev"));
}

#[test]
fn offline_message_expires_in_the_queue() {
    let t0 = Instant::now();
    let mut core = core();
    let mut sub = connect(&mut core, Protocol::V5, "sub", false, Some(300), t0);
    let mut publ = connect(&mut core, Protocol::V5, "pub", true, None, t0);
    subscribe(&mut core, &mut sub, &[("t", q(QoS::AtLeastOnce))], None, t0);
    let mut fx = Effects::default();
    core.disconnected(&sub.id, sub.conn, End::Normal { will: false }, t0, &mut fx);
    for (payload, expiry) in [(&b"short"[..], 1u32), (&b"long"[..], 100)] {
        let p = Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: "t",
            packet_id: 3,
            properties: Properties::Values(&PropValues {
                message_expiry_interval: Some(expiry),
                ..PropValues::default()
            }),
            payload,
        });
        send(&mut core, &mut publ, &p, t0).unwrap();
    }
    let later = t0 + Duration::from_secs(10);
    let (_, bytes) = connect_with(
        &mut core,
        &connect_packet(Protocol::V5, "sub", false, Properties::default()),
        later,
    );
    let mut got = Vec::new();
    each_packet(&bytes, Protocol::V5, |p| {
        if let Packet::Publish(p) = p {
            got.push((p.payload.to_vec(), p.properties.message_expiry_interval()));
        }
    });
    assert_eq!(
        got,
        [(b"long".to_vec(), Some(90))],
        "expired dropped, remaining interval forwarded"
    );
}

#[test]
fn shared_group_gives_each_message_to_one_member_and_reroutes_on_leave() {
    let t0 = Instant::now();
    let mut core = core();
    let mut a = connect(&mut core, Protocol::V5, "a", false, Some(60), t0);
    let mut b = connect(&mut core, Protocol::V5, "b", true, None, t0);
    let mut publ = connect(&mut core, Protocol::V5, "pub", true, None, t0);
    for c in [&mut a, &mut b] {
        assert_eq!(
            subscribe(
                &mut core,
                c,
                &[("$share/g/jobs", q(QoS::AtLeastOnce))],
                None,
                t0
            ),
            [1]
        );
    }
    for i in 0..10u16 {
        publish(
            &mut core,
            &mut publ,
            "jobs",
            &i.to_be_bytes(),
            QoS::AtLeastOnce,
            i + 1,
            t0,
        );
    }
    // a leaves before draining its queue: its queued jobs go to b.
    let mut fx = Effects::default();
    core.disconnected(&a.id, a.conn, End::Abnormal, t0, &mut fx);
    let got_b = received(&mut core, &mut b, t0);
    let mut payloads: Vec<Vec<u8>> = got_b.iter().map(|g| g.1.clone()).collect();
    payloads.sort();
    payloads.dedup();
    assert_eq!(payloads.len(), 10, "every job reached b exactly once");
    assert!(received(&mut core, &mut a, t0).is_empty());
}

#[test]
fn takeover_kicks_the_old_connection() {
    let t0 = Instant::now();
    let mut core = core();
    let old = connect(&mut core, Protocol::V5, "x", false, Some(60), t0);
    let (new, bytes) = connect_with(
        &mut core,
        &connect_packet(
            Protocol::V5,
            "x",
            false,
            Properties::Values(&PropValues {
                session_expiry_interval: Some(60),
                ..PropValues::default()
            }),
        ),
        t0,
    );
    assert_eq!(old.kick.get(), reason::SESSION_TAKEN_OVER);
    assert_eq!(bytes[2], 1, "session present");
    let mut old = old;
    assert_eq!(
        send(&mut core, &mut old, &Packet::PingReq, t0),
        Err(Close::TakenOver)
    );
    let mut new = new.unwrap();
    assert_eq!(send(&mut core, &mut new, &Packet::PingReq, t0), Ok(()));
}

#[test]
fn retained_messages_replace_delete_and_follow_retain_handling() {
    let t0 = Instant::now();
    let mut core = core();
    let mut publ = connect(&mut core, Protocol::V5, "pub", true, None, t0);
    let retained = |payload: &'static [u8]| {
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: true,
            topic: "r",
            packet_id: 0,
            properties: Properties::default(),
            payload,
        })
    };
    send(&mut core, &mut publ, &retained(b"one"), t0).unwrap();
    send(&mut core, &mut publ, &retained(b"two"), t0).unwrap();
    let mut sub = connect(&mut core, Protocol::V5, "sub", true, None, t0);
    subscribe(&mut core, &mut sub, &[("r", q(QoS::AtLeastOnce))], None, t0);
    let got = received(&mut core, &mut sub, t0);
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].1.as_slice(), got[0].5), (&b"two"[..], true));
    let mut opts = q(QoS::AtLeastOnce);
    opts.retain_handling = RetainHandling::SendIfNew;
    subscribe(&mut core, &mut sub, &[("r", opts)], None, t0);
    assert!(
        received(&mut core, &mut sub, t0).is_empty(),
        "existing subscription, handling 1"
    );
    send(&mut core, &mut publ, &retained(b""), t0).unwrap();
    assert_eq!(core.retained.len(), 0, "empty payload deletes");
    let got = received(&mut core, &mut sub, t0);
    assert_eq!(
        got.len(),
        1,
        "the delete is still delivered to current subscribers"
    );
    assert!(
        !got[0].5,
        "live forward without Retain As Published clears RETAIN"
    );
}

#[test]
fn receive_maximum_exceeded_is_0x93() {
    let t0 = Instant::now();
    let cfg = MqttConfig {
        receive_maximum: 2,
        ..MqttConfig::default()
    };
    let mut core = Core::new(Arc::new(cfg), Clock::new(Instant::now(), 1_700_000_000_000));
    let mut c = connect(&mut core, Protocol::V5, "p", true, None, t0);
    let p = |id| publish_packet("t", b"", QoS::ExactlyOnce, id);
    assert!(send(&mut core, &mut c, &p(1), t0).is_ok());
    assert!(send(&mut core, &mut c, &p(2), t0).is_ok());
    assert_eq!(
        send(&mut core, &mut c, &p(3), t0),
        Err(Close::Error(reason::RECEIVE_MAXIMUM_EXCEEDED))
    );
}

/// `deny_subscribe` is a rule of the access rules: 0x80 in 3.1.1, 0x87 Not authorized in
/// MQTT 5 (docs/security.md).
#[test]
fn denied_filter_is_refused_in_both_versions() {
    let t0 = Instant::now();
    let cfg = MqttConfig {
        deny_subscribe: vec!["test/nosubscribe".into(), "secret/#".into()],
        ..MqttConfig::default()
    };
    let mut core = Core::new(Arc::new(cfg), Clock::new(Instant::now(), 1_700_000_000_000));
    for protocol in [Protocol::V311, Protocol::V5] {
        let mut c = connect(&mut core, protocol, "c", true, None, t0);
        let codes = subscribe(
            &mut core,
            &mut c,
            &[
                ("test/nosubscribe", q(QoS::AtLeastOnce)),
                ("secret/a", q(QoS::AtMostOnce)),
                ("ok", q(QoS::AtLeastOnce)),
            ],
            None,
            t0,
        );
        let no = if protocol.is_v5() { 0x87 } else { 0x80 };
        assert_eq!(codes, [no, no, 0x01]);
    }
}

#[test]
fn no_local_and_retain_as_published() {
    let t0 = Instant::now();
    let mut core = core();
    let mut c = connect(&mut core, Protocol::V5, "c", true, None, t0);
    let mut nl = q(QoS::AtMostOnce);
    nl.no_local = true;
    nl.retain_as_published = true;
    subscribe(&mut core, &mut c, &[("t", nl)], None, t0);
    publish(&mut core, &mut c, "t", b"mine", QoS::AtMostOnce, 0, t0);
    assert!(received(&mut core, &mut c, t0).is_empty());
    let mut other = connect(&mut core, Protocol::V5, "o", true, None, t0);
    let p = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: true,
        topic: "t",
        packet_id: 0,
        properties: Properties::default(),
        payload: b"r",
    });
    send(&mut core, &mut other, &p, t0).unwrap();
    let got = received(&mut core, &mut c, t0);
    assert_eq!(got.len(), 1);
    assert!(got[0].5, "Retain As Published keeps RETAIN");
}

#[test]
fn sys_counters_reach_sys_subscribers_but_not_hash() {
    let t0 = Instant::now();
    let mut core = core();
    let mut all = connect(&mut core, Protocol::V5, "all", true, None, t0);
    let mut sys = connect(&mut core, Protocol::V5, "sys", true, None, t0);
    subscribe(&mut core, &mut all, &[("#", q(QoS::AtMostOnce))], None, t0);
    subscribe(
        &mut core,
        &mut sys,
        &[("$SYS/broker/clients/+", q(QoS::AtMostOnce))],
        None,
        t0,
    );
    let mut fx = Effects::default();
    core.publish_sys(Duration::from_secs(3), RuntimeStats::default(), t0, &mut fx);
    assert!(
        received(&mut core, &mut all, t0).is_empty(),
        "# never matches $SYS"
    );
    let got = received(&mut core, &mut sys, t0);
    let connected = got
        .iter()
        .find(|g| g.0 == "$SYS/broker/clients/connected")
        .unwrap();
    assert_eq!(connected.1, b"2");
    // Clients may not publish into $SYS.
    publish(
        &mut core,
        &mut all,
        "$SYS/broker/clients/connected",
        b"999",
        QoS::AtMostOnce,
        0,
        t0,
    );
    assert!(received(&mut core, &mut sys, t0).is_empty());
}

#[test]
fn unknown_authentication_method_gets_connack_0x8c() {
    let mut core = core();
    let props = Properties::Values(&PropValues {
        authentication_method: Some("SCRAM-SHA-1"),
        ..PropValues::default()
    });
    let (c, bytes) = connect_with(
        &mut core,
        &connect_packet(Protocol::V5, "a", true, props),
        Instant::now(),
    );
    assert!(c.is_none());
    let (p, _) = mote_codec::decode(&bytes, Protocol::V5, u32::MAX)
        .unwrap()
        .unwrap();
    let Packet::ConnAck(a) = p else {
        panic!("not a CONNACK")
    };
    assert_eq!(
        (a.code, a.session_present),
        (reason::BAD_AUTHENTICATION_METHOD, false)
    );
    assert_eq!(core.shards.len(), 0);
}

/// Publishes a retained QoS 0 message on `topic` from a throwaway client.
fn retain(core: &mut Core, topic: &str, now: Instant) {
    let msg = Message::from_publish(
        core.mid(),
        &Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: true,
            topic,
            packet_id: 0,
            properties: Properties::default(),
            payload: b"r",
        },
        Arc::from(topic),
        None,
        now,
    );
    core.publish(Arc::new(msg), now, &mut Effects::default());
}

#[test]
fn one_subscribe_repeating_a_filter_is_one_subscription_and_retained_arrive_once() {
    // Issue #10 fault 2: 100,000 copies of `#` with 1,000 retained messages built a
    // delivery per (filter, message) pair and aborted the broker.
    let cfg = MqttConfig {
        max_queued_messages: 100,
        ..MqttConfig::default()
    };
    let mut core = Core::new(Arc::new(cfg), Clock::new(Instant::now(), 1_700_000_000_000));
    let now = Instant::now();
    for i in 0..1000 {
        retain(&mut core, &format!("r/{i}"), now);
    }
    let mut c = connect(&mut core, Protocol::V5, "many", true, None, now);
    let filters = vec![("#", q(QoS::AtMostOnce)); 100_000];
    let codes = subscribe(&mut core, &mut c, &filters, None, now);
    assert_eq!(codes.len(), 100_000, "one reason code per filter, in order");
    assert_eq!(core.shards["many"].subscription_count(), 1);
    assert!(
        core.shards["many"].queued_len() <= 100,
        "retained deliveries stay within the session's queue limit"
    );
    // The rest comes in steps as the session drains: each message exactly once.
    let mut got = std::collections::BTreeSet::new();
    for _ in 0..1000 {
        let batch = received(&mut core, &mut c, now);
        if batch.is_empty() && !core.shards["many"].has_retained_jobs() {
            break;
        }
        for m in batch {
            assert!(m.5, "sent because of a new subscription: RETAIN 1");
            assert!(got.insert(m.0.clone()), "{} delivered twice", m.0);
        }
    }
    assert_eq!(got.len(), 1000);
}

#[test]
fn non_matching_filters_do_not_walk_every_retained_message() {
    // Issue #10 fault 3: 30,000 non-matching filters with 10,000 retained messages held
    // the core for 23 s (each filter matched against every retained message). With the
    // retained index each literal filter costs its levels; this bound is 10x above what
    // a debug build needs here and far below the old cost.
    let mut core = core();
    let now = Instant::now();
    for i in 0..10_000 {
        retain(&mut core, &format!("sensors/{i}/temp"), now);
    }
    let mut c = connect(&mut core, Protocol::V5, "wide", true, None, now);
    let names: Vec<String> = (0..30_000).map(|i| format!("other/{i}/x")).collect();
    let filters: Vec<(&str, SubOptions)> = names
        .iter()
        .map(|n| (n.as_str(), q(QoS::AtLeastOnce)))
        .collect();
    let started = std::time::Instant::now();
    let codes = subscribe(&mut core, &mut c, &filters, None, now);
    assert_eq!(codes.len(), 30_000);
    assert!(received(&mut core, &mut c, now).is_empty());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "30,000 filters took {:?}",
        started.elapsed()
    );
}

#[test]
fn a_full_queue_evicts_its_oldest_qos0_for_a_qos1_delivery() {
    let cfg = MqttConfig {
        max_queued_messages: 4,
        ..MqttConfig::default()
    };
    let mut core = Core::new(Arc::new(cfg), Clock::new(Instant::now(), 1_700_000_000_000));
    let now = Instant::now();
    let mut sub = connect(&mut core, Protocol::V5, "sub", false, Some(600), now);
    subscribe(
        &mut core,
        &mut sub,
        &[("t", q(QoS::AtLeastOnce))],
        None,
        now,
    );
    // Offline with a persistent session: QoS 0 is not queued offline, so fill the queue
    // while online without draining, then check what QoS 1 evicts.
    let mut p = connect(&mut core, Protocol::V5, "pub", true, None, now);
    publish(&mut core, &mut p, "t", b"q0-a", QoS::AtMostOnce, 0, now);
    publish(&mut core, &mut p, "t", b"q1-b", QoS::AtLeastOnce, 1, now);
    publish(&mut core, &mut p, "t", b"q0-c", QoS::AtMostOnce, 0, now);
    publish(&mut core, &mut p, "t", b"q1-d", QoS::AtLeastOnce, 2, now);
    // Full (4): a QoS 1 delivery evicts the oldest QoS 0 one; a QoS 0 one is dropped.
    publish(&mut core, &mut p, "t", b"q1-e", QoS::AtLeastOnce, 3, now);
    publish(&mut core, &mut p, "t", b"q0-f", QoS::AtMostOnce, 0, now);
    let got: Vec<Vec<u8>> = received(&mut core, &mut sub, now)
        .into_iter()
        .map(|m| m.1)
        .collect();
    assert_eq!(
        got,
        [
            b"q1-b".to_vec(),
            b"q0-c".to_vec(),
            b"q1-d".to_vec(),
            b"q1-e".to_vec()
        ]
    );
    assert_eq!(core.shards["sub"].drops().overflow, 2);
}

#[test]
fn the_queue_budget_caps_memory_without_a_store() {
    // Issue #10 fault 4: with `--memory` there was no broker-wide cap on queued bytes.
    let mut core = core();
    core.set_queue_budget(64 * 1024);
    let now = Instant::now();
    for i in 0..50 {
        let mut s = connect(
            &mut core,
            Protocol::V5,
            &format!("s{i}"),
            false,
            Some(600),
            now,
        );
        subscribe(&mut core, &mut s, &[("t", q(QoS::AtLeastOnce))], None, now);
        let mut fx = Effects::default();
        core.disconnected(&s.id, s.conn, End::Abnormal, now, &mut fx);
    }
    let mut p = connect(&mut core, Protocol::V5, "pub", true, None, now);
    let payload = vec![0u8; 1000];
    for i in 0..200u16 {
        publish(
            &mut core,
            &mut p,
            "t",
            &payload,
            QoS::AtLeastOnce,
            i + 1,
            now,
        );
    }
    assert!(
        core.queued_memory() <= 64 * 1024,
        "{}",
        core.queued_memory()
    );
    assert!(
        core.stats.dropped_overflow > 0,
        "what did not fit is counted"
    );
}

#[test]
fn a_large_backlog_of_qos0_leaves_in_bounded_batches() {
    // Issue #10 fault 9: a drain moved every queued QoS 0 message into the outbound
    // buffer at once.
    let mut core = core();
    let now = Instant::now();
    let mut sub = connect(&mut core, Protocol::V5, "sub", true, None, now);
    subscribe(&mut core, &mut sub, &[("t", q(QoS::AtMostOnce))], None, now);
    let mut p = connect(&mut core, Protocol::V5, "pub", true, None, now);
    let payload = vec![1u8; 1000];
    for _ in 0..2000 {
        publish(&mut core, &mut p, "t", &payload, QoS::AtMostOnce, 0, now);
    }
    let mut total = 0;
    loop {
        let _ = core.drain(&sub.id, sub.conn, now, &mut sub.out);
        let n = sub.out.len();
        if n == 0 {
            break;
        }
        assert!(
            n < session::OUTBOUND_BATCH + 2048,
            "one drain wrote {n} bytes"
        );
        total += sub.out.split().len();
    }
    assert!(total >= 2000 * 1000, "every message left: {total} bytes");
}

#[test]
fn subscriptions_per_session_are_capped_with_quota_exceeded() {
    // Issue #14: one client made 100,000 subscriptions and pinned 172 MB.
    let cfg = MqttConfig {
        max_subscriptions_per_client: 3,
        ..MqttConfig::default()
    };
    let mut core = Core::new(Arc::new(cfg), Clock::new(Instant::now(), 1_700_000_000_000));
    let now = Instant::now();
    for (protocol, refused) in [
        (Protocol::V5, reason::QUOTA_EXCEEDED),
        (Protocol::V311, 0x80),
    ] {
        let id = format!("greedy-{protocol:?}");
        let mut c = connect(&mut core, protocol, &id, true, None, now);
        let five = ["a", "b", "c", "d", "e"].map(|f| (f, q(QoS::AtLeastOnce)));
        let codes = subscribe(&mut core, &mut c, &five, None, now);
        assert_eq!(codes, [1, 1, 1, refused, refused], "{protocol:?}");
        // Replacing a subscription it holds is not a new one.
        let again = subscribe(&mut core, &mut c, &[("a", q(QoS::AtMostOnce))], None, now);
        assert_eq!(again, [0]);
        assert_eq!(core.shards[id.as_str()].subscription_count(), 3);
    }
}

#[test]
fn retained_messages_are_bounded_in_bytes_and_in_size() {
    // Issue #14: 500 retained messages of 1 MB pinned 495 MB.
    let mut core = core();
    let now = Instant::now();
    let msg = |core: &mut Core, topic: &str, len: usize| {
        let payload = vec![7u8; len];
        let m = Message::from_publish(
            core.mid(),
            &Publish {
                dup: false,
                qos: QoS::AtMostOnce,
                retain: true,
                topic,
                packet_id: 0,
                properties: Properties::default(),
                payload: &payload,
            },
            Arc::from(topic),
            None,
            now,
        );
        Arc::new(m)
    };
    let one = msg(&mut core, "r/0", 1000).cost();
    let cfg = MqttConfig {
        max_retained_bytes: 3 * one,
        max_retained_message_bytes: 2000,
        ..MqttConfig::default()
    };
    let mut core = Core::new(Arc::new(cfg), Clock::new(now, 1_700_000_000_000));
    let mut sub = connect(&mut core, Protocol::V5, "watcher", true, None, now);
    subscribe(
        &mut core,
        &mut sub,
        &[("r/#", q(QoS::AtMostOnce))],
        None,
        now,
    );
    for i in 0..5 {
        let m = msg(&mut core, &format!("r/{i}"), 1000);
        core.publish(m, now, &mut Effects::default());
    }
    assert_eq!(core.retained.len(), 3, "three fit in the byte budget");
    assert_eq!(core.stats.retained_refused, 2);
    assert_eq!(
        received(&mut core, &mut sub, now).len(),
        5,
        "all are delivered"
    );
    // Replacing one makes room for itself; deleting one makes room for another.
    let m = msg(&mut core, "r/0", 1000);
    core.publish(m, now, &mut Effects::default());
    assert_eq!(core.stats.retained_refused, 2);
    let m = msg(&mut core, "r/1", 0);
    core.publish(m, now, &mut Effects::default());
    let m = msg(&mut core, "r/4", 1000);
    core.publish(m, now, &mut Effects::default());
    assert!(core.retained.get("r/4").is_some());
    // Too large a payload is never retained.
    let m = msg(&mut core, "r/big", 2001);
    core.publish(m, now, &mut Effects::default());
    assert!(core.retained.get("r/big").is_none());
    assert_eq!(core.stats.retained_refused, 3);
    assert!(core.retained_bytes <= 3 * one);
}

#[test]
fn json_subscriptions_get_sensor_events_as_json_and_nothing_else_changes() {
    let mut core = core();
    let now = Instant::now();
    let event: &[u8] = &[0x01, 0x05, 0xe8, 0x07, 0x02, 0x03, 0x00, 0x00, 0xac, 0x41];
    let json = br#"{"channel":2,"device":1,"seq":5,"timestamp_ms":1000,"value":{"type":"f32","value":21.5}}"#;
    let mut p = connect(&mut core, Protocol::V311, "dev", true, None, now);
    let mut s = connect(&mut core, Protocol::V5, "web", true, None, now);
    let mut raw = connect(&mut core, Protocol::V311, "raw", true, None, now);
    let codes = subscribe(
        &mut core,
        &mut s,
        &[
            ("$json/mote/events/#", q(QoS::AtLeastOnce)),
            // An overlapping plain filter: still one message per publish.
            ("mote/#", q(QoS::AtMostOnce)),
            // `$json/` must name a filter, and not a `$` topic one.
            ("$json/", q(QoS::AtMostOnce)),
            ("$json/$SYS/#", q(QoS::AtMostOnce)),
        ],
        None,
        now,
    );
    assert_eq!(codes, [1, 0, 0x8f, 0x8f]);
    assert_eq!(
        subscribe(
            &mut core,
            &mut raw,
            &[("mote/#", q(QoS::AtMostOnce))],
            None,
            now
        ),
        [0]
    );
    publish(
        &mut core,
        &mut p,
        "mote/events/dev1",
        event,
        QoS::AtLeastOnce,
        1,
        now,
    );
    publish(
        &mut core,
        &mut p,
        "mote/events/dev2",
        &[0x01],
        QoS::AtMostOnce,
        0,
        now,
    );
    // Not a sensor event (no content type, not an event topic): as published.
    publish(
        &mut core,
        &mut p,
        "mote/text",
        b"hello",
        QoS::AtMostOnce,
        0,
        now,
    );
    let got: Vec<(String, Vec<u8>, QoS)> = received(&mut core, &mut s, now)
        .into_iter()
        .map(|g| (g.0, g.1, g.2))
        .collect();
    assert_eq!(
        got,
        [
            (
                "mote/events/dev1".to_owned(),
                json.to_vec(),
                QoS::AtLeastOnce
            ),
            (
                "mote/events/dev2".to_owned(),
                br#"{"decode_error":"truncated","payload":"AQ=="}"#.to_vec(),
                QoS::AtMostOnce
            ),
            ("mote/text".to_owned(), b"hello".to_vec(), QoS::AtMostOnce),
        ]
    );
    // Other subscribers get the bytes as published.
    let raw_got: Vec<Vec<u8>> = received(&mut core, &mut raw, now)
        .into_iter()
        .map(|g| g.1)
        .collect();
    assert_eq!(raw_got, [event.to_vec(), vec![0x01], b"hello".to_vec()]);
    // Unsubscribing the `$json/` filter leaves the plain one: bytes again.
    unsubscribe(&mut core, &mut s, "$json/mote/events/#", 2, now);
    s.out.clear();
    publish(
        &mut core,
        &mut p,
        "mote/events/dev1",
        event,
        QoS::AtMostOnce,
        0,
        now,
    );
    let got: Vec<Vec<u8>> = received(&mut core, &mut s, now)
        .into_iter()
        .map(|g| g.1)
        .collect();
    assert_eq!(got, [event.to_vec()]);
}
