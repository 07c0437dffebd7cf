//! Core-level twins of the end-to-end protocol tests (`tests/tests/raw_protocol.rs`):
//! each rule checked there through a socket is checked here on the core alone, with
//! decoded packets and virtual time, fast and deterministic.
//!
//! The harness below plays the part of the runtime's connection task and no more: a
//! [`Peer`] sends decoded packets to [`Core::handle`], drains what the core queued for it
//! when it reads (as the task does when woken), and ends its link the way the runtime
//! does for each [`Close`] (a DISCONNECT is a normal end, a protocol error or a lost
//! socket an abnormal one, a takeover none). Time only moves when a test moves it, and
//! [`advance`] fires the core's timers the way the runtime's timer loop does. Rules of
//! the runtime (framing, decoding, keep-alive timers, sockets) have no twin here.

use std::collections::VecDeque;

use super::*;

const V5: Protocol = Protocol::V5;
const V311: Protocol = Protocol::V311;

// ---------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------

/// A PUBLISH the core sent, owned.
#[derive(Debug, Clone, PartialEq)]
struct Msg {
    topic: String,
    payload: Vec<u8>,
    qos: QoS,
    packet_id: u16,
    dup: bool,
    retain: bool,
    sub_ids: Vec<u32>,
    topic_alias: Option<u16>,
    expiry: Option<u32>,
    payload_format_indicator: Option<u8>,
    content_type: Option<String>,
    response_topic: Option<String>,
    correlation_data: Option<Vec<u8>>,
    user_properties: Vec<(String, String)>,
    /// Bytes of the whole frame on the wire.
    frame_len: usize,
}

/// A packet the core wrote to a client, owned.
#[derive(Debug, Clone, PartialEq)]
enum Out {
    /// CONNACK: (Session Present, code).
    ConnAck(bool, u8),
    Publish(Msg),
    /// Acknowledgements: (packet id, reason).
    PubAck(u16, u8),
    PubRec(u16, u8),
    PubRel(u16, u8),
    PubComp(u16, u8),
    /// (packet id, codes).
    SubAck(u16, Vec<u8>),
    UnsubAck(u16, Vec<u8>),
    PingResp,
    /// DISCONNECT with its reason.
    Disconnect(u8),
    /// Anything a server never sends (named for the failure message).
    Other(String),
}

/// The owned form of `p`, a frame of `len` bytes.
fn owned(p: &Packet<'_>, len: usize) -> Out {
    match p {
        Packet::ConnAck(a) => Out::ConnAck(a.session_present, a.code),
        Packet::Publish(p) => {
            let pr = &p.properties;
            Out::Publish(Msg {
                topic: p.topic.to_owned(),
                payload: p.payload.to_vec(),
                qos: p.qos,
                packet_id: p.packet_id,
                dup: p.dup,
                retain: p.retain,
                sub_ids: pr.subscription_identifiers().iter().collect(),
                topic_alias: pr.topic_alias(),
                expiry: pr.message_expiry_interval(),
                payload_format_indicator: pr.payload_format_indicator(),
                content_type: pr.content_type().map(str::to_owned),
                response_topic: pr.response_topic().map(str::to_owned),
                correlation_data: pr.correlation_data().map(<[u8]>::to_vec),
                user_properties: pr
                    .user_properties()
                    .iter()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect(),
                frame_len: len,
            })
        }
        Packet::PubAck(a) => Out::PubAck(a.packet_id, a.reason),
        Packet::PubRec(a) => Out::PubRec(a.packet_id, a.reason),
        Packet::PubRel(a) => Out::PubRel(a.packet_id, a.reason),
        Packet::PubComp(a) => Out::PubComp(a.packet_id, a.reason),
        Packet::SubAck(a) => Out::SubAck(a.packet_id, a.codes.to_vec()),
        Packet::UnsubAck(a) => Out::UnsubAck(a.packet_id, a.codes.to_vec()),
        Packet::PingResp => Out::PingResp,
        Packet::Disconnect(d) => Out::Disconnect(d.reason),
        other => Out::Other(format!("{other:?}")),
    }
}

/// Every packet in `bytes`, decoded as a client of `protocol` reads them.
fn decode_all(bytes: &[u8], protocol: Protocol) -> Vec<Out> {
    let mut v = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let (p, n) = mote_codec::decode(&bytes[at..], protocol, u32::MAX)
            .unwrap()
            .unwrap();
        v.push(owned(&p, n));
        at += n;
    }
    v
}

/// Runs `f` on the CONNACK at the start of `bytes`.
fn with_connack<R>(bytes: &[u8], protocol: Protocol, f: impl FnOnce(&ConnAck<'_>) -> R) -> R {
    let (p, _) = mote_codec::decode(bytes, protocol, u32::MAX)
        .unwrap()
        .unwrap();
    let Packet::ConnAck(a) = p else {
        panic!("not a CONNACK: {p:?}")
    };
    f(&a)
}

/// A client as its connection task sees it: packets in, everything the core wrote for
/// it out, in order, in `inbox`.
struct Peer {
    c: Client,
    inbox: VecDeque<Out>,
}

impl Peer {
    /// Moves what the core wrote into the inbox.
    fn collect(&mut self) {
        let bytes = self.c.out.split();
        self.inbox.extend(decode_all(&bytes, self.c.protocol));
    }

    /// What the connection task does when woken: drain the session.
    fn pump(&mut self, core: &mut Core, now: Instant) {
        let _ = core.drain(&self.c.id, self.c.conn, now, &mut self.c.out);
        self.collect();
    }

    /// Hands `p` to the core; its replies go to the inbox.
    fn send(&mut self, core: &mut Core, p: &Packet<'_>, now: Instant) -> Result<(), Close> {
        let r = send(core, &mut self.c, p, now);
        self.collect();
        r
    }

    #[track_caller]
    fn send_ok(&mut self, core: &mut Core, p: &Packet<'_>, now: Instant) {
        assert_eq!(self.send(core, p, now), Ok(()), "{p:?}");
    }

    /// The next packet, draining the session first when the inbox is empty.
    fn recv(&mut self, core: &mut Core, now: Instant) -> Option<Out> {
        if self.inbox.is_empty() {
            self.pump(core, now);
        }
        self.inbox.pop_front()
    }

    #[track_caller]
    fn expect(&mut self, core: &mut Core, now: Instant) -> Out {
        match self.recv(core, now) {
            Some(o) => o,
            None => panic!("{}: nothing received", self.c.id),
        }
    }

    #[track_caller]
    fn expect_publish(&mut self, core: &mut Core, now: Instant) -> Msg {
        match self.expect(core, now) {
            Out::Publish(m) => m,
            other => panic!("{}: expected PUBLISH, got {other:?}", self.c.id),
        }
    }

    #[track_caller]
    fn expect_nothing(&mut self, core: &mut Core, now: Instant) {
        self.pump(core, now);
        assert!(
            self.inbox.is_empty(),
            "{}: unexpected {:?}",
            self.c.id,
            self.inbox
        );
    }

    /// Takes the first packet of the inbox that `pick` accepts (replies among deliveries).
    #[track_caller]
    fn take_reply(&mut self, what: &str, pick: impl Fn(&Out) -> bool) -> Out {
        match self.inbox.iter().position(pick) {
            Some(i) => self.inbox.remove(i).unwrap(),
            None => panic!("{}: no {what} in {:?}", self.c.id, self.inbox),
        }
    }

    /// Completes the QoS 1/2 flow of a received PUBLISH.
    #[track_caller]
    fn ack(&mut self, core: &mut Core, m: &Msg, now: Instant) {
        let id = m.packet_id;
        match m.qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.send_ok(core, &Packet::PubAck(Ack::new(id)), now),
            QoS::ExactlyOnce => {
                self.send_ok(core, &Packet::PubRec(Ack::new(id)), now);
                let rel = self.take_reply("PUBREL", |o| matches!(o, Out::PubRel(..)));
                assert_eq!(rel, Out::PubRel(id, 0));
                self.send_ok(core, &Packet::PubComp(Ack::new(id)), now);
            }
        }
    }

    /// SUBSCRIBE with packet id `pid`; the SUBACK's codes (retained messages stay queued).
    fn try_subscribe(
        &mut self,
        core: &mut Core,
        pid: u16,
        filters: &[(&str, SubOptions)],
        id: Option<u32>,
        now: Instant,
    ) -> Result<Vec<u8>, Close> {
        let entries: Vec<SubscribeFilter<'_>> = filters
            .iter()
            .map(|(f, o)| SubscribeFilter {
                filter: f,
                options: *o,
            })
            .collect();
        let ids: Vec<u32> = id.into_iter().collect();
        let props = PropValues {
            subscription_identifiers: PropList::Slice(&ids),
            ..PropValues::default()
        };
        let p = Packet::Subscribe(Subscribe {
            packet_id: pid,
            properties: Properties::Values(&props),
            filters: List::Slice(&entries),
        });
        self.send(core, &p, now)?;
        match self.take_reply("SUBACK", |o| matches!(o, Out::SubAck(..))) {
            Out::SubAck(got, codes) => {
                assert_eq!(got, pid, "SUBACK packet id");
                Ok(codes)
            }
            _ => unreachable!(),
        }
    }

    #[track_caller]
    fn subscribe_with(
        &mut self,
        core: &mut Core,
        pid: u16,
        filters: &[(&str, SubOptions)],
        id: Option<u32>,
        now: Instant,
    ) -> Vec<u8> {
        match self.try_subscribe(core, pid, filters, id, now) {
            Ok(codes) => codes,
            Err(e) => panic!("SUBSCRIBE refused: {e:?}"),
        }
    }

    /// Subscribes to one filter and asserts it is granted as asked.
    #[track_caller]
    fn subscribe(&mut self, core: &mut Core, filter: &str, qos: QoS, now: Instant) {
        let codes = self.subscribe_with(core, 1, &[(filter, q(qos))], None, now);
        assert_eq!(codes, [qos as u8], "SUBACK for {filter}");
    }

    /// Sends PUBLISH and completes its flow; returns the PUBACK/PUBREC reason.
    #[track_caller]
    fn publish_acked(&mut self, core: &mut Core, p: &Publish<'_>, now: Instant) -> u8 {
        self.send_ok(core, &Packet::Publish(*p), now);
        let id = p.packet_id;
        match p.qos {
            QoS::AtMostOnce => 0,
            QoS::AtLeastOnce => match self.take_reply("PUBACK", |o| matches!(o, Out::PubAck(..))) {
                Out::PubAck(got, r) if got == id => r,
                other => panic!("{other:?}"),
            },
            QoS::ExactlyOnce => {
                let r = match self.take_reply("PUBREC", |o| matches!(o, Out::PubRec(..))) {
                    Out::PubRec(got, r) if got == id => r,
                    other => panic!("{other:?}"),
                };
                self.send_ok(core, &Packet::PubRel(Ack::new(id)), now);
                let comp = self.take_reply("PUBCOMP", |o| matches!(o, Out::PubComp(..)));
                assert_eq!(comp, Out::PubComp(id, 0));
                r
            }
        }
    }

    /// The v5 reason the core asked this connection to close with (0: none).
    fn kicked(&self) -> u8 {
        self.c.kick.get()
    }

    /// Ends the link the way the runtime does after `close`.
    fn closed(self, core: &mut Core, close: Close, now: Instant) {
        let end = match close {
            Close::Disconnected { will } => End::Normal { will },
            Close::Error(_) => End::Abnormal,
            // The core already detached the link.
            Close::TakenOver => return,
        };
        core.disconnected(&self.c.id, self.c.conn, end, now, &mut Effects::default());
    }

    /// DISCONNECT (reason 0) and the end of the link.
    #[track_caller]
    fn disconnect(mut self, core: &mut Core, now: Instant) {
        let r = self.send(core, &Packet::Disconnect(Disconnect::new(0)), now);
        assert_eq!(r, Err(Close::Disconnected { will: false }));
        self.closed(core, Close::Disconnected { will: false }, now);
    }

    /// The socket is gone without DISCONNECT (network loss, keep-alive timeout).
    fn hang_up(self, core: &mut Core, now: Instant) {
        core.disconnected(
            &self.c.id,
            self.c.conn,
            End::Abnormal,
            now,
            &mut Effects::default(),
        );
    }
}

/// What CONNECT gave.
struct Opened {
    /// The client, when accepted; its inbox holds what followed the CONNACK.
    peer: Option<Peer>,
    /// CONNACK (Session Present, code).
    ack: (bool, u8),
    /// Keep alive the runtime is to enforce, when accepted.
    keep_alive: Option<u16>,
    /// Everything written, CONNACK first.
    bytes: Vec<u8>,
}

fn open(core: &mut Core, c: &Connect<'_>, now: Instant) -> Opened {
    let kick = Arc::new(NoWake::default());
    let mut out = BytesMut::new();
    // The user name is taken as given, as the runtime does without a password file.
    let acc = core.connect(
        c,
        c.username.map(Arc::from),
        kick.clone(),
        now,
        &mut out,
        &mut Effects::default(),
    );
    let bytes = out.to_vec();
    let mut all: VecDeque<Out> = decode_all(&bytes, c.protocol).into();
    let ack = match all.pop_front() {
        Some(Out::ConnAck(present, code)) => (present, code),
        other => panic!("CONNECT answered with {other:?}"),
    };
    let keep_alive = acc.as_ref().map(|a| a.keep_alive);
    let peer = acc.map(|a| Peer {
        c: Client {
            id: a.client_id,
            conn: a.conn_id,
            protocol: a.protocol,
            kick,
            out: BytesMut::new(),
        },
        inbox: all,
    });
    Opened {
        peer,
        ack,
        keep_alive,
        bytes,
    }
}

/// Connects with `c` and asserts CONNACK 0.
#[track_caller]
fn join(core: &mut Core, c: &Connect<'_>, now: Instant) -> Peer {
    let o = open(core, c, now);
    assert_eq!(o.ack.1, 0, "CONNACK refused");
    o.peer.unwrap()
}

/// CONNECT with Clean Start 1 and nothing else.
fn plain(protocol: Protocol, id: &str) -> Connect<'_> {
    connect_packet(protocol, id, true, Properties::default())
}

/// Connects with Clean Start 1; asserts success.
#[track_caller]
fn online(core: &mut Core, protocol: Protocol, id: &str, now: Instant) -> Peer {
    join(core, &plain(protocol, id), now)
}

/// Properties with a Session Expiry Interval.
fn expiry(secs: u32) -> PropValues<'static> {
    PropValues {
        session_expiry_interval: Some(secs),
        ..PropValues::default()
    }
}

/// A CONNECT for a session that outlives the connection: v5 Clean Start 1 with the
/// Session Expiry of `props`; 3.1.1 Clean Session 0.
fn persistent<'a>(protocol: Protocol, id: &'a str, props: &'a PropValues<'a>) -> Connect<'a> {
    if protocol == V5 {
        connect_packet(protocol, id, true, Properties::Values(props))
    } else {
        connect_packet(protocol, id, false, Properties::default())
    }
}

/// Reconnects a persistent session (Clean Start 0) and asserts Session Present 1.
#[track_caller]
fn resume(core: &mut Core, protocol: Protocol, id: &str, now: Instant) -> Peer {
    let e = expiry(60);
    let mut c = persistent(protocol, id, &e);
    c.clean_start = false;
    let o = open(core, &c, now);
    assert_eq!(o.ack, (true, 0), "session should be present");
    o.peer.unwrap()
}

/// A PUBLISH without properties.
fn msg<'a>(topic: &'a str, payload: &'a [u8], qos: QoS, packet_id: u16) -> Publish<'a> {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic,
        packet_id,
        properties: Properties::default(),
        payload,
    }
}

/// Publishes from a fresh v5 client (assigned id), completes the flow, disconnects.
fn publish_once(core: &mut Core, topic: &str, payload: &[u8], qos: QoS, now: Instant) {
    let mut p = online(core, V5, "", now);
    p.publish_acked(core, &msg(topic, payload, qos, 1), now);
    p.disconnect(core, now);
}

/// A core with `cfg`.
fn core_with(cfg: MqttConfig) -> Core {
    Core::new(Arc::new(cfg), Clock::new(Instant::now(), 1_700_000_000_000))
}

/// Moves virtual time to `to`, firing every timer due on the way in deadline order, as
/// the runtime's timer loop does.
fn advance(core: &mut Core, to: Instant) {
    let mut fx = Effects::default();
    for _ in 0..10_000 {
        match core.poll_timeout() {
            Some(t) if t <= to => core.handle_timeout(t, &mut fx),
            _ => break,
        }
    }
    core.handle_timeout(to, &mut fx);
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn millis(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

/// Sends `packet` from a fresh `protocol` client and expects the core to close with
/// `expected`; a subscriber connected meanwhile keeps working (raw_protocol's
/// `bad_packet_on`, minus the decoding, which is the runtime's).
#[track_caller]
fn bad_packet(
    core: &mut Core,
    protocol: Protocol,
    packet: &Packet<'_>,
    expected: u8,
    now: Instant,
) {
    let mut observer = online(core, V5, "observer", now);
    observer.subscribe(core, "obs/#", QoS::AtLeastOnce, now);
    let mut bad = online(core, protocol, "culprit", now);
    let r = bad.send(core, packet, now);
    assert_eq!(r, Err(Close::Error(expected)), "{packet:?}");
    bad.closed(core, Close::Error(expected), now);
    publish_once(core, "obs/after", b"still here", QoS::AtLeastOnce, now);
    let m = observer.expect_publish(core, now);
    assert_eq!(m.topic, "obs/after");
    observer.ack(core, &m, now);
    observer.disconnect(core, now);
}

// ---------------------------------------------------------------------------------------
// CONNECT
// ---------------------------------------------------------------------------------------

#[test]
fn second_connect_on_a_connection_is_a_protocol_error() {
    // MQTT-3.1.0-2; raw_protocol.rs: `second_connect_is_a_protocol_error`.
    let mut core = core();
    let now = Instant::now();
    for protocol in [Protocol::V311, Protocol::V5] {
        let mut c = connect(&mut core, protocol, "twice", true, None, now);
        let again = connect_packet(protocol, "twice", true, Properties::default());
        let r = send(&mut core, &mut c, &Packet::Connect(again), now);
        assert_eq!(r, Err(Close::Error(reason::PROTOCOL_ERROR)), "{protocol:?}");
    }
}

#[test]
fn connack_announces_the_configured_limits() {
    // MQTT 5 §3.2.2.3; raw_protocol.rs: `connack_v5_announces_server_limits`.
    let mut core = core_with(MqttConfig {
        receive_maximum: 7,
        topic_alias_maximum: 9,
        max_packet_size: 5000,
        ..MqttConfig::default()
    });
    let o = open(&mut core, &plain(V5, "limits"), Instant::now());
    assert_eq!(o.ack, (false, 0));
    with_connack(&o.bytes, V5, |a| {
        let p = a.properties;
        assert_eq!(p.receive_maximum(), Some(7), "Receive Maximum");
        assert_eq!(p.maximum_packet_size(), Some(5000), "Maximum Packet Size");
        assert_eq!(p.topic_alias_maximum(), Some(9), "Topic Alias Maximum");
        assert_eq!(p.retain_available(), Some(true), "Retain Available");
        assert_eq!(p.wildcard_subscription_available(), Some(true));
        assert_eq!(p.shared_subscription_available(), Some(true));
        assert_eq!(p.subscription_identifier_available(), Some(true));
        // Absent Maximum QoS means 2.
        assert_eq!(p.maximum_qos(), None);
    });
}

#[test]
fn server_keep_alive_caps_a_longer_client_keep_alive() {
    // MQTT-3.2.2-21/-22; raw_protocol.rs: `server_keep_alive_caps_the_client_keep_alive`.
    let mut core = core_with(MqttConfig {
        max_keepalive: 60,
        ..MqttConfig::default()
    });
    let now = Instant::now();
    let mut c = plain(V5, "ka-long");
    c.keep_alive = 120;
    let o = open(&mut core, &c, now);
    with_connack(&o.bytes, V5, |a| {
        assert_eq!(a.properties.server_keep_alive(), Some(60));
    });
    assert_eq!(
        o.keep_alive,
        Some(60),
        "the runtime enforces the announced value"
    );
    let mut c = plain(V5, "ka-short");
    c.keep_alive = 30;
    let o = open(&mut core, &c, now);
    with_connack(&o.bytes, V5, |a| {
        let ka = a.properties.server_keep_alive();
        assert!(matches!(ka, None | Some(30)), "left alone: {ka:?}");
    });
    assert_eq!(o.keep_alive, Some(30));
}

#[test]
fn max_keepalive_is_announced_and_handed_to_the_runtime() {
    // MQTT-3.2.2-21/-22; raw_protocol.rs: `max_keepalive_is_enforced` (the announcement
    // and the value enforced; the timer that closes after 1.5 x is the runtime's).
    let mut core = core_with(MqttConfig {
        max_keepalive: 1,
        ..MqttConfig::default()
    });
    let mut c = plain(V5, "lazy-5");
    c.keep_alive = 10;
    let o = open(&mut core, &c, Instant::now());
    with_connack(&o.bytes, V5, |a| {
        assert_eq!(a.properties.server_keep_alive(), Some(1));
    });
    assert_eq!(o.keep_alive, Some(1));
}

#[test]
fn max_keepalive_does_not_shorten_a_v311_keep_alive() {
    // MQTT-3.1.2-24 (3.1.1 cannot announce a server keep alive); raw_protocol.rs:
    // `max_keepalive_does_not_cut_v311_clients`.
    let mut core = core_with(MqttConfig {
        max_keepalive: 1,
        ..MqttConfig::default()
    });
    let mut c = plain(V311, "lazy-311");
    c.keep_alive = 10;
    let o = open(&mut core, &c, Instant::now());
    assert_eq!(o.ack, (false, 0));
    assert_eq!(o.keep_alive, Some(10), "held to its own keep alive");
}

#[test]
fn keep_alive_zero_is_accepted() {
    // MQTT-3.1.2-10 / v5 §3.1.2.10; raw_protocol.rs: `keepalive_zero_is_accepted_v5`,
    // `keepalive_zero_is_accepted_v311` (what the core decides; the waiting is runtime).
    let mut core = core();
    let now = Instant::now();
    for protocol in [V5, V311] {
        let mut c = plain(protocol, "forever");
        c.keep_alive = 0;
        let o = open(&mut core, &c, now);
        assert_eq!(o.ack, (false, 0), "{protocol:?}");
        let announced = if protocol == V5 {
            with_connack(&o.bytes, V5, |a| a.properties.server_keep_alive())
        } else {
            None
        };
        if let Some(ka) = announced {
            assert!(
                ka == 0 || ka > 3,
                "server keep alive {ka} would end the test"
            );
        }
        assert_eq!(o.keep_alive, Some(announced.unwrap_or(0)), "{protocol:?}");
        let mut p = o.peer.unwrap();
        p.send_ok(&mut core, &Packet::PingReq, now);
        assert_eq!(p.expect(&mut core, now), Out::PingResp);
        p.disconnect(&mut core, now);
    }
}

#[test]
fn every_pingreq_gets_a_pingresp() {
    // MQTT-3.12.4-1; raw_protocol.rs: `keepalive_kept_by_pings` (the keep-alive timer the
    // pings reset is the runtime's).
    let mut core = core();
    let t0 = Instant::now();
    let mut c = plain(V5, "pinger");
    c.keep_alive = 1;
    let mut p = join(&mut core, &c, t0);
    for i in 1..=6 {
        let now = t0 + millis(500 * i);
        p.send_ok(&mut core, &Packet::PingReq, now);
        assert_eq!(p.expect(&mut core, now), Out::PingResp);
    }
}

#[test]
fn empty_client_id_v5_gets_a_unique_assigned_identifier() {
    // MQTT-3.2.2-16; raw_protocol.rs: `empty_client_id_v5_gets_assigned_identifier`.
    let mut core = core();
    let now = Instant::now();
    let mut ids = Vec::new();
    for _ in 0..2 {
        let o = open(&mut core, &plain(V5, ""), now);
        assert_eq!(o.ack, (false, 0));
        let id = with_connack(&o.bytes, V5, |a| {
            a.properties.assigned_client_identifier().map(str::to_owned)
        })
        .expect("MQTT-3.2.2-16: Assigned Client Identifier");
        assert!(!id.is_empty());
        assert_eq!(&*o.peer.unwrap().c.id, id, "the session is under that id");
        ids.push(id);
    }
    assert_ne!(ids[0], ids[1], "assigned identifiers must be unique");
}

#[test]
fn empty_client_id_v311_needs_clean_session() {
    // MQTT-3.1.3-6, MQTT-3.1.3-8; raw_protocol.rs: `empty_client_id_v311_needs_clean_session`.
    let mut core = core();
    let now = Instant::now();
    let o = open(&mut core, &plain(V311, ""), now);
    assert_eq!(o.ack, (false, 0));
    o.peer.unwrap().disconnect(&mut core, now);
    let o = open(
        &mut core,
        &connect_packet(V311, "", false, Properties::default()),
        now,
    );
    assert_eq!(o.ack, (false, reason::v3::IDENTIFIER_REJECTED));
    assert!(o.peer.is_none(), "refused: the runtime closes");
    assert!(core.shards.is_empty());
}

#[test]
fn session_present_tells_whether_a_session_was_resumed() {
    // 3.1.1 MQTT-3.2.2-1..3, v5 MQTT-3.2.2-2/-3; raw_protocol.rs: `session_present_flag`.
    let mut core = core();
    let now = Instant::now();
    for protocol in [V311, V5] {
        let id = format!("sp-{protocol:?}");
        let e = expiry(60);
        // No session yet: Session Present 0 even with Clean Start 0.
        let mut c = persistent(protocol, &id, &e);
        c.clean_start = false;
        let o = open(&mut core, &c, now);
        assert_eq!(o.ack, (false, 0), "{protocol:?}");
        o.peer.unwrap().disconnect(&mut core, now);
        resume(&mut core, protocol, &id, now).disconnect(&mut core, now);
        // Clean Start 1 discards it.
        let o = open(&mut core, &plain(protocol, &id), now);
        assert_eq!(o.ack, (false, 0), "{protocol:?}");
        o.peer.unwrap().disconnect(&mut core, now);
    }
}

/// A will of QoS 0 without properties.
fn will<'a>(topic: &'a str, payload: &'a [u8]) -> Will<'a> {
    Will {
        topic,
        payload,
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Properties::default(),
    }
}

#[test]
fn takeover_closes_the_old_connection_and_publishes_its_will() {
    // 3.1.1 MQTT-3.1.4-2, v5 MQTT-3.1.4-3; raw_protocol.rs:
    // `takeover_disconnects_old_connection_v5`, `takeover_disconnects_old_connection_v311`.
    for protocol in [V5, V311] {
        let mut core = core();
        let now = Instant::now();
        let mut observer = online(&mut core, V5, "observer", now);
        observer.subscribe(&mut core, "takeover/#", QoS::AtLeastOnce, now);
        let mut c = plain(protocol, "twin");
        c.will = Some(will("takeover/will", b"old-gone"));
        let mut first = join(&mut core, &c, now);
        let o = open(&mut core, &plain(protocol, "twin"), now);
        assert_eq!(o.ack, (false, 0), "{protocol:?}");
        let mut second = o.peer.unwrap();
        // The old connection is told to close with 0x8E (the runtime sends DISCONNECT 0x8E
        // to a v5 client only) and no longer owns the session.
        assert_eq!(first.kicked(), reason::SESSION_TAKEN_OVER, "{protocol:?}");
        assert_eq!(
            first.send(&mut core, &Packet::PingReq, now),
            Err(Close::TakenOver)
        );
        first.closed(&mut core, Close::TakenOver, now);
        // Its will is published: it did not end with a normal DISCONNECT.
        let m = observer.expect_publish(&mut core, now);
        assert_eq!(
            (m.topic.as_str(), m.payload.as_slice()),
            ("takeover/will", &b"old-gone"[..])
        );
        observer.expect_nothing(&mut core, now);
        // The new connection works.
        second.subscribe(&mut core, "takeover/t", QoS::AtMostOnce, now);
        publish_once(&mut core, "takeover/t", b"hi", QoS::AtLeastOnce, now);
        assert_eq!(second.expect_publish(&mut core, now).payload, b"hi");
    }
}

#[test]
fn auth_without_an_authentication_method_is_a_protocol_error() {
    // MQTT-4.12.0-7; raw_protocol.rs: `auth_without_method_is_a_protocol_error`.
    let mut core = core();
    let now = Instant::now();
    let mut c = online(&mut core, V5, "authless", now);
    let props = PropValues {
        authentication_method: Some("SCRAM-SHA-1"),
        ..PropValues::default()
    };
    let auth = Disconnect {
        reason: reason::RE_AUTHENTICATE,
        properties: Properties::Values(&props),
    };
    assert_eq!(
        c.send(&mut core, &Packet::Auth(auth), now),
        Err(Close::Error(reason::PROTOCOL_ERROR))
    );
}

#[test]
fn session_expiry_capped_by_the_server_is_announced() {
    // MQTT 5 §3.2.2.3.2; raw_protocol.rs: `session_expiry_capped_by_server_is_announced`.
    let mut core = core_with(MqttConfig {
        max_session_expiry: 10,
        ..MqttConfig::default()
    });
    let e = expiry(100);
    let o = open(
        &mut core,
        &persistent(V5, "greedy-session", &e),
        Instant::now(),
    );
    with_connack(&o.bytes, V5, |a| {
        assert_eq!(a.properties.session_expiry_interval(), Some(10));
    });
    assert_eq!(core.shards["greedy-session"].expiry_interval(), 10);
}

// ---------------------------------------------------------------------------------------
// QoS flows across reconnects
// ---------------------------------------------------------------------------------------

#[test]
fn qos2_inbound_interrupted_before_pubrel_is_delivered_once() {
    // v5 MQTT-4.3.3-10 / 3.1.1 MQTT-4.3.3-2; raw_protocol.rs:
    // `qos2_inbound_interrupted_before_pubrel_v5`, `..._v311`.
    for protocol in [V5, V311] {
        let mut core = core();
        let now = Instant::now();
        let mut sub = online(&mut core, V5, "q2-sub", now);
        sub.subscribe(&mut core, "q2/t", QoS::ExactlyOnce, now);
        let e = expiry(60);
        let mut p = join(&mut core, &persistent(protocol, "q2-pub", &e), now);
        p.send_ok(
            &mut core,
            &Packet::Publish(msg("q2/t", b"once", QoS::ExactlyOnce, 7)),
            now,
        );
        assert!(matches!(p.expect(&mut core, now), Out::PubRec(7, _)));
        p.hang_up(&mut core, now);

        let mut p = resume(&mut core, protocol, "q2-pub", now);
        let mut again = msg("q2/t", b"once", QoS::ExactlyOnce, 7);
        again.dup = true;
        p.send_ok(&mut core, &Packet::Publish(again), now);
        // Acknowledged with PUBREC, not delivered again.
        assert!(matches!(p.expect(&mut core, now), Out::PubRec(7, _)));
        p.send_ok(&mut core, &Packet::PubRel(Ack::new(7)), now);
        assert_eq!(p.expect(&mut core, now), Out::PubComp(7, 0));
        p.expect_nothing(&mut core, now);

        let mut got = Vec::new();
        while let Some(o) = sub.recv(&mut core, now) {
            let Out::Publish(m) = o else {
                panic!("{protocol:?}: {o:?}")
            };
            sub.ack(&mut core, &m, now);
            got.push(m.payload);
        }
        assert_eq!(got, [b"once".to_vec()], "{protocol:?}: exactly one copy");
    }
}

#[test]
fn qos2_outbound_resumes_with_pubrel() {
    // MQTT-4.4.0-1; raw_protocol.rs: `qos2_outbound_resumes_with_pubrel_v5`, `..._v311`.
    for protocol in [V5, V311] {
        let mut core = core();
        let now = Instant::now();
        let e = expiry(60);
        let mut s = join(&mut core, &persistent(protocol, "q2o", &e), now);
        s.subscribe(&mut core, "q2o/t", QoS::ExactlyOnce, now);
        publish_once(&mut core, "q2o/t", b"m1", QoS::ExactlyOnce, now);
        let m = s.expect_publish(&mut core, now);
        assert_eq!(
            (m.qos, m.payload.as_slice()),
            (QoS::ExactlyOnce, &b"m1"[..])
        );
        s.send_ok(&mut core, &Packet::PubRec(Ack::new(m.packet_id)), now);
        assert_eq!(s.expect(&mut core, now), Out::PubRel(m.packet_id, 0));
        s.hang_up(&mut core, now); // no PUBCOMP

        let mut s = resume(&mut core, protocol, "q2o", now);
        // The unacknowledged PUBREL is re-sent first, with its id.
        assert_eq!(
            s.expect(&mut core, now),
            Out::PubRel(m.packet_id, 0),
            "{protocol:?}"
        );
        s.send_ok(&mut core, &Packet::PubComp(Ack::new(m.packet_id)), now);
        s.expect_nothing(&mut core, now);
        assert!(core.shards["q2o"].inflight().next().is_none());
    }
}

#[test]
fn qos1_unacked_is_resent_with_dup_and_its_id() {
    // MQTT-4.4.0-1, MQTT-3.3.1-1; raw_protocol.rs: `qos1_unacked_resent_with_dup_v5`,
    // `..._v311`.
    for protocol in [V5, V311] {
        let mut core = core();
        let now = Instant::now();
        let e = expiry(60);
        let mut s = join(&mut core, &persistent(protocol, "q1r", &e), now);
        s.subscribe(&mut core, "q1r/t", QoS::AtLeastOnce, now);
        publish_once(&mut core, "q1r/t", b"again", QoS::AtLeastOnce, now);
        let m = s.expect_publish(&mut core, now);
        assert!(!m.dup);
        s.hang_up(&mut core, now); // no PUBACK

        let mut s = resume(&mut core, protocol, "q1r", now);
        let m2 = s.expect_publish(&mut core, now);
        assert!(m2.dup, "{protocol:?}: DUP must be 1 on re-delivery");
        assert_eq!(
            (m2.packet_id, m2.payload.as_slice()),
            (m.packet_id, &b"again"[..])
        );
        s.ack(&mut core, &m2, now);
        s.expect_nothing(&mut core, now);
    }
}

#[test]
fn hundred_qos2_in_flight_arrive_exactly_once_in_order() {
    // MQTT-4.3.3, MQTT-2.2.1-3 (no id reused while in flight); raw_protocol.rs:
    // `hundred_qos2_in_flight_arrive_exactly_once`.
    let mut core = core();
    let now = Instant::now();
    let mut sub = online(&mut core, V5, "many-sub", now);
    sub.subscribe(&mut core, "many/t", QoS::ExactlyOnce, now);
    let mut p = online(&mut core, V5, "many-pub", now);
    let payloads: Vec<String> = (0..100).map(|i| format!("msg-{i}")).collect();
    for (i, pl) in payloads.iter().enumerate() {
        let id = u16::try_from(i + 1).unwrap();
        p.send_ok(
            &mut core,
            &Packet::Publish(msg("many/t", pl.as_bytes(), QoS::ExactlyOnce, id)),
            now,
        );
    }
    for id in 1..=100u16 {
        assert_eq!(p.expect(&mut core, now), Out::PubRec(id, 0));
    }
    for id in 1..=100u16 {
        p.send_ok(&mut core, &Packet::PubRel(Ack::new(id)), now);
    }
    for id in 1..=100u16 {
        assert_eq!(p.expect(&mut core, now), Out::PubComp(id, 0));
    }

    let mut got = Vec::new();
    let mut open = std::collections::HashSet::new();
    let mut completed = 0;
    while completed < 100 {
        match sub.expect(&mut core, now) {
            Out::Publish(m) => {
                assert_eq!(m.qos, QoS::ExactlyOnce);
                assert!(open.insert(m.packet_id), "id {} reused", m.packet_id);
                got.push(String::from_utf8(m.payload).unwrap());
                sub.send_ok(&mut core, &Packet::PubRec(Ack::new(m.packet_id)), now);
            }
            Out::PubRel(id, _) => {
                assert!(open.remove(&id));
                sub.send_ok(&mut core, &Packet::PubComp(Ack::new(id)), now);
                completed += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    sub.expect_nothing(&mut core, now);
    assert_eq!(got, payloads, "all 100, once each, in order");
}

#[test]
fn reconnect_resends_unacked_in_order_then_queued() {
    // MQTT-4.6.0-1; raw_protocol.rs: `reconnect_resends_unacked_in_order_then_queued`.
    let mut core = core();
    let now = Instant::now();
    let e = expiry(60);
    let mut s = join(&mut core, &persistent(V5, "orderly", &e), now);
    s.subscribe(&mut core, "ord/t", QoS::AtLeastOnce, now);
    for p in ["m1", "m2", "m3"] {
        publish_once(&mut core, "ord/t", p.as_bytes(), QoS::AtLeastOnce, now);
    }
    let first: Vec<Msg> = (0..3).map(|_| s.expect_publish(&mut core, now)).collect();
    s.hang_up(&mut core, now); // nothing acknowledged
    publish_once(&mut core, "ord/t", b"m4", QoS::AtLeastOnce, now);
    let mut s = resume(&mut core, V5, "orderly", now);
    let again: Vec<Msg> = (0..4)
        .map(|_| {
            let m = s.expect_publish(&mut core, now);
            s.ack(&mut core, &m, now);
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
    s.expect_nothing(&mut core, now);
}

#[test]
fn expired_but_inflight_is_still_resent() {
    // MQTT-4.4.0-1 over MQTT-3.3.2-5 (delivery had started); raw_protocol.rs:
    // `expired_but_inflight_qos1_is_still_resent`, `expired_but_inflight_qos2_is_still_resent`.
    for qos in [QoS::AtLeastOnce, QoS::ExactlyOnce] {
        let mut core = core();
        let t0 = Instant::now();
        let e = expiry(60);
        let mut s = join(&mut core, &persistent(V5, "late-acker", &e), t0);
        s.subscribe(&mut core, "ei/t", qos, t0);
        let mut p = online(&mut core, V5, "ei-pub", t0);
        let props = PropValues {
            message_expiry_interval: Some(1),
            ..PropValues::default()
        };
        let mut m = msg("ei/t", b"short-lived", qos, 1);
        m.properties = Properties::Values(&props);
        p.publish_acked(&mut core, &m, t0);
        let first = s.expect_publish(&mut core, t0);
        assert_eq!(first.qos, qos);
        s.hang_up(&mut core, t0);
        let later = t0 + millis(2200);
        advance(&mut core, later);
        let mut s = resume(&mut core, V5, "late-acker", later);
        let again = s.expect_publish(&mut core, later);
        assert_eq!(
            (again.packet_id, again.dup),
            (first.packet_id, true),
            "{qos:?}"
        );
        s.ack(&mut core, &again, later);
        s.expect_nothing(&mut core, later);
    }
}

#[test]
fn pubrel_for_an_unknown_id_gets_pubcomp_0x92() {
    // MQTT 5 §3.7.2.1; raw_protocol.rs: `pubrel_for_unknown_id_gets_pubcomp_0x92`.
    let mut core = core();
    let now = Instant::now();
    let mut c = online(&mut core, V5, "confused", now);
    c.send_ok(&mut core, &Packet::PubRel(Ack::new(42)), now);
    assert_eq!(
        c.expect(&mut core, now),
        Out::PubComp(42, reason::PACKET_IDENTIFIER_NOT_FOUND)
    );
}

// ---------------------------------------------------------------------------------------
// Topic aliases, flow control, packet size
// ---------------------------------------------------------------------------------------

/// Properties with a topic alias.
fn alias(alias: u16) -> PropValues<'static> {
    PropValues {
        topic_alias: Some(alias),
        ..PropValues::default()
    }
}

/// A QoS 0 PUBLISH with `props`.
fn aliased<'a>(topic: &'a str, props: &'a PropValues<'a>, payload: &'a [u8]) -> Packet<'a> {
    let mut p = msg(topic, payload, QoS::AtMostOnce, 0);
    p.properties = Properties::Values(props);
    Packet::Publish(p)
}

fn alias_max_5() -> Core {
    core_with(MqttConfig {
        topic_alias_maximum: 5,
        ..MqttConfig::default()
    })
}

#[test]
fn inbound_topic_aliases_are_set_used_and_remapped() {
    // MQTT 5 §3.3.2.3.4; raw_protocol.rs: `topic_alias_inbound`.
    let mut core = alias_max_5();
    let now = Instant::now();
    let mut sub = online(&mut core, V5, "alias-sub", now);
    sub.subscribe(&mut core, "ta/#", QoS::AtMostOnce, now);
    let mut p = online(&mut core, V5, "alias-pub", now);
    let (a1, a5) = (alias(1), alias(5));
    for (topic, props, payload) in [
        ("ta/x", &a1, "first"),
        ("", &a1, "second"),
        ("ta/y", &a1, "third"), // remaps alias 1
        ("", &a1, "fourth"),
        ("ta/z", &a5, "fifth"),
        ("", &a5, "sixth"),
    ] {
        p.send_ok(&mut core, &aliased(topic, props, payload.as_bytes()), now);
    }
    let got: Vec<(String, Vec<u8>)> = (0..6)
        .map(|_| {
            let m = sub.expect_publish(&mut core, now);
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
fn topic_alias_above_the_maximum_is_0x94() {
    // MQTT 5 §3.3.2.3.4; raw_protocol.rs: `topic_alias_above_maximum_gets_0x94`.
    let mut core = alias_max_5();
    let a6 = alias(6);
    let p = aliased("obs/x", &a6, b"x");
    bad_packet(
        &mut core,
        V5,
        &p,
        reason::TOPIC_ALIAS_INVALID,
        Instant::now(),
    );
}

#[test]
fn unknown_topic_alias_is_a_protocol_error() {
    // MQTT 5 §3.3.2.3.4; raw_protocol.rs: `topic_alias_unknown_is_a_protocol_error`.
    let mut core = core();
    let a3 = alias(3);
    let p = aliased("", &a3, b"x");
    bad_packet(&mut core, V5, &p, reason::PROTOCOL_ERROR, Instant::now());
}

#[test]
fn topic_aliases_die_with_the_connection() {
    // MQTT 5 §3.3.2.3.4 (per Network Connection); raw_protocol.rs:
    // `topic_aliases_die_with_the_connection`.
    let mut core = core();
    let now = Instant::now();
    let e = expiry(60);
    let mut p = join(&mut core, &persistent(V5, "alias-reconnect", &e), now);
    let a1 = alias(1);
    p.send_ok(&mut core, &aliased("ta/x", &a1, b"first"), now);
    p.send_ok(&mut core, &Packet::PingReq, now);
    assert_eq!(p.expect(&mut core, now), Out::PingResp);
    p.hang_up(&mut core, now);
    let mut p = resume(&mut core, V5, "alias-reconnect", now);
    assert_eq!(
        p.send(&mut core, &aliased("", &a1, b"stale"), now),
        Err(Close::Error(reason::PROTOCOL_ERROR))
    );
}

#[test]
fn receive_maximum_exceeded_is_0x93_and_completed_flows_free_slots() {
    // MQTT 5 §3.3.4 (MQTT-3.3.4-7..9 from the server's side); raw_protocol.rs:
    // `receive_maximum_exceeded_gets_0x93`.
    let mut core = core_with(MqttConfig {
        receive_maximum: 2,
        ..MqttConfig::default()
    });
    let now = Instant::now();
    let q2 = |id| Packet::Publish(msg("rm/t", b"x", QoS::ExactlyOnce, id));
    // Within the limit, completing flows frees slots.
    let mut ok = online(&mut core, V5, "within", now);
    for id in 1..=2 {
        ok.send_ok(&mut core, &q2(id), now);
        assert!(matches!(ok.expect(&mut core, now), Out::PubRec(i, _) if i == id));
    }
    ok.send_ok(&mut core, &Packet::PubRel(Ack::new(1)), now);
    assert_eq!(ok.expect(&mut core, now), Out::PubComp(1, 0));
    ok.send_ok(&mut core, &q2(3), now);
    assert!(matches!(ok.expect(&mut core, now), Out::PubRec(3, _)));
    ok.disconnect(&mut core, now);

    // Three QoS 2 PUBLISH without PUBREL against Receive Maximum 2.
    let mut observer = online(&mut core, V5, "observer", now);
    observer.subscribe(&mut core, "obs/#", QoS::AtMostOnce, now);
    let mut greedy = online(&mut core, V5, "greedy", now);
    greedy.send_ok(&mut core, &q2(1), now);
    greedy.send_ok(&mut core, &q2(2), now);
    let r = greedy.send(&mut core, &q2(3), now);
    assert_eq!(r, Err(Close::Error(reason::RECEIVE_MAXIMUM_EXCEEDED)));
    let kinds: Vec<Out> = greedy.inbox.drain(..).collect();
    assert!(
        matches!(kinds.as_slice(), [Out::PubRec(1, _), Out::PubRec(2, _)]),
        "{kinds:?}"
    );
    greedy.closed(
        &mut core,
        Close::Error(reason::RECEIVE_MAXIMUM_EXCEEDED),
        now,
    );
    publish_once(&mut core, "obs/x", b"fine", QoS::AtLeastOnce, now);
    assert_eq!(observer.expect_publish(&mut core, now).payload, b"fine");
}

#[test]
fn server_respects_the_client_receive_maximum() {
    // MQTT-3.3.4-9; raw_protocol.rs: `server_respects_client_receive_maximum`.
    let mut core = core();
    let now = Instant::now();
    let props = PropValues {
        receive_maximum: Some(2),
        ..PropValues::default()
    };
    let c = connect_packet(V5, "slow-reader", true, Properties::Values(&props));
    let mut sub = join(&mut core, &c, now);
    sub.subscribe(&mut core, "crm/t", QoS::AtLeastOnce, now);
    let mut p = online(&mut core, V5, "fast-writer", now);
    for i in 0..5u16 {
        let payload = format!("{i}");
        p.publish_acked(
            &mut core,
            &msg("crm/t", payload.as_bytes(), QoS::AtLeastOnce, i + 1),
            now,
        );
    }
    let a = sub.expect_publish(&mut core, now);
    let b = sub.expect_publish(&mut core, now);
    sub.expect_nothing(&mut core, now);
    sub.ack(&mut core, &a, now);
    let c3 = sub.expect_publish(&mut core, now);
    sub.expect_nothing(&mut core, now);
    sub.ack(&mut core, &b, now);
    sub.ack(&mut core, &c3, now);
    let d = sub.expect_publish(&mut core, now);
    let e = sub.expect_publish(&mut core, now);
    sub.ack(&mut core, &d, now);
    sub.ack(&mut core, &e, now);
    let payloads: Vec<Vec<u8>> = [a, b, c3, d, e].into_iter().map(|m| m.payload).collect();
    assert_eq!(
        payloads,
        [
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
    // MQTT-3.1.2-24, MQTT-3.1.2-25; raw_protocol.rs: `client_maximum_packet_size_is_respected`.
    let mut core = core();
    let now = Instant::now();
    let props = PropValues {
        maximum_packet_size: Some(100),
        ..PropValues::default()
    };
    let c = connect_packet(V5, "tiny", true, Properties::Values(&props));
    let mut sub = join(&mut core, &c, now);
    sub.subscribe(&mut core, "mps/t", QoS::AtLeastOnce, now);
    publish_once(&mut core, "mps/t", &[b'B'; 500], QoS::AtLeastOnce, now);
    publish_once(&mut core, "mps/t", b"small", QoS::AtLeastOnce, now);
    let m = sub.expect_publish(&mut core, now);
    assert!(m.frame_len <= 100, "{} bytes sent", m.frame_len);
    assert_eq!(m.payload, b"small");
    sub.ack(&mut core, &m, now);
    sub.expect_nothing(&mut core, now);
    assert_eq!(
        core.shards["tiny"].drops().too_large,
        1,
        "discarded, counted"
    );
}

#[test]
fn outbound_topic_aliases_follow_the_client_maximum() {
    // MQTT-3.1.2-26/-27, MQTT-3.3.2-17; raw_protocol.rs: `outbound_topic_alias`.
    let mut core = core();
    let now = Instant::now();
    let props = PropValues {
        topic_alias_maximum: Some(5),
        ..PropValues::default()
    };
    let c = connect_packet(V5, "alias-taker", true, Properties::Values(&props));
    let mut sub = join(&mut core, &c, now);
    sub.subscribe(&mut core, "oa/#", QoS::AtLeastOnce, now);
    let mut plain_sub = online(&mut core, V5, "alias-refuser", now);
    plain_sub.subscribe(&mut core, "oa/#", QoS::AtLeastOnce, now);
    for (t, p) in [("oa/t", "1"), ("oa/t", "2"), ("oa/u", "3"), ("oa/t", "4")] {
        publish_once(&mut core, t, p.as_bytes(), QoS::AtLeastOnce, now);
    }
    let got: Vec<Msg> = (0..4)
        .map(|_| {
            let m = sub.expect_publish(&mut core, now);
            sub.ack(&mut core, &m, now);
            m
        })
        .collect();
    let first = got[0].topic_alias.expect("first message sets an alias");
    assert!(
        (1..=5).contains(&first),
        "alias {first} above the maximum 5"
    );
    assert_eq!(got[0].topic, "oa/t");
    assert_eq!(
        (got[1].topic.as_str(), got[1].topic_alias),
        ("", Some(first))
    );
    let other = got[2].topic_alias;
    assert!(other.is_some_and(|a| a != first && (1..=5).contains(&a)) || other.is_none());
    assert_eq!(got[2].topic, "oa/u");
    assert_eq!(
        (got[3].topic.as_str(), got[3].topic_alias),
        ("", Some(first))
    );
    // No alias for a client that did not announce a Topic Alias Maximum.
    for _ in 0..4 {
        let m = plain_sub.expect_publish(&mut core, now);
        assert_eq!(m.topic_alias, None);
        assert!(m.topic.starts_with("oa/"));
        plain_sub.ack(&mut core, &m, now);
    }
}

// ---------------------------------------------------------------------------------------
// Subscriptions
// ---------------------------------------------------------------------------------------

#[test]
fn overlapping_subscriptions_carry_every_identifier_once() {
    // MQTT-3.3.4-2, -3, -5; raw_protocol.rs: `overlapping_subscriptions_carry_all_identifiers_once`.
    let mut core = core();
    let now = Instant::now();
    let mut s = online(&mut core, V5, "ids", now);
    let codes = s.subscribe_with(&mut core, 1, &[("si/#", q(QoS::AtMostOnce))], Some(1), now);
    assert_eq!(codes, [0]);
    let codes = s.subscribe_with(&mut core, 2, &[("si/+", q(QoS::ExactlyOnce))], Some(2), now);
    assert_eq!(codes, [2]);
    publish_once(&mut core, "si/x", b"both", QoS::AtLeastOnce, now);
    let m = s.expect_publish(&mut core, now);
    let mut ids = m.sub_ids.clone();
    ids.sort_unstable();
    assert_eq!(ids, [1, 2]);
    assert_eq!(
        m.qos,
        QoS::AtLeastOnce,
        "min(publish QoS 1, highest granted 2)"
    );
    s.ack(&mut core, &m, now);
    s.expect_nothing(&mut core, now);
}

#[test]
fn overlapping_subscriptions_use_the_highest_qos_once() {
    // MQTT-3.3.4-2 (3.1.1 §3.3.5); raw_protocol.rs: `overlapping_subscriptions_use_highest_qos_once`.
    let mut core = core();
    let now = Instant::now();
    let mut s = online(&mut core, V311, "ov", now);
    let codes = s.subscribe_with(
        &mut core,
        1,
        &[("ov/#", q(QoS::AtMostOnce)), ("ov/+", q(QoS::ExactlyOnce))],
        None,
        now,
    );
    assert_eq!(codes, [0, 2]);
    let mut p = online(&mut core, V5, "ov-pub", now);
    p.publish_acked(&mut core, &msg("ov/x", b"x", QoS::ExactlyOnce, 1), now);
    let m = s.expect_publish(&mut core, now);
    assert_eq!(m.qos, QoS::ExactlyOnce);
    s.ack(&mut core, &m, now);
    s.expect_nothing(&mut core, now);
}

#[test]
fn no_local_skips_only_the_own_messages() {
    // MQTT-3.8.3-3; raw_protocol.rs: `no_local`.
    let mut core = core();
    let now = Instant::now();
    let mut me = online(&mut core, V5, "narcissus", now);
    let o = SubOptions {
        no_local: true,
        ..q(QoS::AtLeastOnce)
    };
    assert_eq!(
        me.subscribe_with(&mut core, 1, &[("nl/t", o)], None, now),
        [1]
    );
    let mut other = online(&mut core, V5, "echo", now);
    other.subscribe(&mut core, "nl/t", QoS::AtLeastOnce, now);
    me.publish_acked(&mut core, &msg("nl/t", b"own", QoS::AtLeastOnce, 1), now);
    let m = other.expect_publish(&mut core, now);
    assert_eq!(m.payload, b"own");
    other.ack(&mut core, &m, now);
    other.publish_acked(
        &mut core,
        &msg("nl/t", b"foreign", QoS::AtLeastOnce, 1),
        now,
    );
    let m = me.expect_publish(&mut core, now);
    assert_eq!(
        m.payload, b"foreign",
        "the own message must not be forwarded"
    );
    me.ack(&mut core, &m, now);
    me.expect_nothing(&mut core, now);
}

#[test]
fn no_local_on_a_shared_subscription_is_a_protocol_error() {
    // MQTT-3.8.3-4; raw_protocol.rs: `no_local_on_shared_subscription_is_a_protocol_error`.
    let mut core = core();
    let now = Instant::now();
    let mut c = online(&mut core, V5, "shared-nl", now);
    let o = SubOptions {
        no_local: true,
        ..q(QoS::AtMostOnce)
    };
    let r = c.try_subscribe(&mut core, 1, &[("$share/g/t", o)], None, now);
    assert_eq!(r, Err(Close::Error(reason::PROTOCOL_ERROR)));
}

/// A retained PUBLISH.
fn retained<'a>(topic: &'a str, payload: &'a [u8], qos: QoS, packet_id: u16) -> Publish<'a> {
    Publish {
        retain: true,
        ..msg(topic, payload, qos, packet_id)
    }
}

#[test]
fn shared_subscription_gets_no_retained_message_on_subscribe() {
    // MQTT 5 §4.8.2; raw_protocol.rs: `shared_subscription_gets_no_retained_message_on_subscribe`.
    let mut core = core();
    let now = Instant::now();
    let mut p = online(&mut core, V5, "retainer", now);
    p.publish_acked(
        &mut core,
        &retained("sh/t", b"old", QoS::AtLeastOnce, 1),
        now,
    );
    let mut s = online(&mut core, V5, "sharer", now);
    let codes = s.subscribe_with(
        &mut core,
        1,
        &[("$share/g/sh/t", q(QoS::AtLeastOnce))],
        None,
        now,
    );
    assert_eq!(codes, [1]);
    s.expect_nothing(&mut core, now);
    p.publish_acked(&mut core, &msg("sh/t", b"new", QoS::AtLeastOnce, 2), now);
    assert_eq!(s.expect_publish(&mut core, now).payload, b"new");
}

#[test]
fn retain_as_published_keeps_or_clears_the_flag() {
    // MQTT-3.3.1-12/-13, v5 §3.3.1.3; raw_protocol.rs: `retain_as_published`.
    let mut core = core();
    let now = Instant::now();
    let mut p = online(&mut core, V5, "rap-pub", now);
    p.publish_acked(
        &mut core,
        &retained("rap/t", b"stored", QoS::AtLeastOnce, 1),
        now,
    );
    let mut keep = online(&mut core, V5, "rap-1", now);
    let o = SubOptions {
        retain_as_published: true,
        ..q(QoS::AtLeastOnce)
    };
    keep.subscribe_with(&mut core, 1, &[("rap/#", o)], None, now);
    let mut clear = online(&mut core, V5, "rap-0", now);
    clear.subscribe_with(&mut core, 1, &[("rap/#", q(QoS::AtLeastOnce))], None, now);
    // Sent because of a new subscription: RETAIN 1 whatever Retain As Published says.
    for c in [&mut keep, &mut clear] {
        let m = c.expect_publish(&mut core, now);
        assert_eq!((m.payload.as_slice(), m.retain), (&b"stored"[..], true));
        c.ack(&mut core, &m, now);
    }
    p.publish_acked(
        &mut core,
        &retained("rap/t", b"live", QoS::AtLeastOnce, 2),
        now,
    );
    p.publish_acked(&mut core, &msg("rap/t", b"plain", QoS::AtLeastOnce, 3), now);
    for (c, want) in [(&mut keep, [true, false]), (&mut clear, [false, false])] {
        let a = c.expect_publish(&mut core, now);
        c.ack(&mut core, &a, now);
        let b = c.expect_publish(&mut core, now);
        c.ack(&mut core, &b, now);
        assert_eq!(
            (a.payload.as_slice(), b.payload.as_slice()),
            (&b"live"[..], &b"plain"[..])
        );
        assert_eq!([a.retain, b.retain], want);
    }
}

#[test]
fn retain_handling_0_1_2_and_v311_resend_on_every_subscribe() {
    // MQTT-3.3.1-9/-10/-11, 3.1.1 MQTT-3.8.4-3; raw_protocol.rs: `retain_handling_0_1_2`.
    let mut core = core();
    let now = Instant::now();
    let mut p = online(&mut core, V5, "rh-pub", now);
    p.publish_acked(
        &mut core,
        &retained("rh/t", b"kept", QoS::AtLeastOnce, 1),
        now,
    );
    let rh = |h| SubOptions {
        retain_handling: h,
        ..q(QoS::AtLeastOnce)
    };
    // 0: on every subscribe.
    let mut c0 = online(&mut core, V5, "rh0", now);
    for pid in 1..=2 {
        c0.subscribe_with(
            &mut core,
            pid,
            &[("rh/t", rh(RetainHandling::SendAtSubscribe))],
            None,
            now,
        );
        let m = c0.expect_publish(&mut core, now);
        assert!(m.retain && m.payload == b"kept", "RH 0, subscribe #{pid}");
        c0.ack(&mut core, &m, now);
    }
    // 1: only when the subscription is new.
    let mut c1 = online(&mut core, V5, "rh1", now);
    c1.subscribe_with(
        &mut core,
        1,
        &[("rh/t", rh(RetainHandling::SendIfNew))],
        None,
        now,
    );
    let m = c1.expect_publish(&mut core, now);
    assert!(m.retain && m.payload == b"kept");
    c1.ack(&mut core, &m, now);
    c1.subscribe_with(
        &mut core,
        2,
        &[("rh/t", rh(RetainHandling::SendIfNew))],
        None,
        now,
    );
    c1.expect_nothing(&mut core, now);
    // 2: never.
    let mut c2 = online(&mut core, V5, "rh2", now);
    c2.subscribe_with(
        &mut core,
        1,
        &[("rh/t", rh(RetainHandling::DoNotSend))],
        None,
        now,
    );
    c2.expect_nothing(&mut core, now);
    // 3.1.1 re-sends retained messages on every subscribe.
    let mut c3 = online(&mut core, V311, "rh311", now);
    for _ in 0..2 {
        c3.subscribe(&mut core, "rh/t", QoS::AtLeastOnce, now);
        let m = c3.expect_publish(&mut core, now);
        assert!(m.retain && m.payload == b"kept");
        c3.ack(&mut core, &m, now);
    }
}

#[test]
fn unsubscribe_answers_a_code_per_filter_in_order() {
    // MQTT-3.11.3-1, v5 §3.11.3 (0x11); raw_protocol.rs: `unsubscribe_reason_codes`.
    let mut core = core();
    let now = Instant::now();
    let mut c = online(&mut core, V5, "unsub", now);
    c.subscribe(&mut core, "known/t", QoS::AtMostOnce, now);
    let u = Packet::Unsubscribe(Unsubscribe {
        packet_id: 9,
        properties: Properties::default(),
        filters: List::Slice(&["known/t", "never/subscribed"]),
    });
    c.send_ok(&mut core, &u, now);
    assert_eq!(
        c.expect(&mut core, now),
        Out::UnsubAck(9, vec![reason::SUCCESS, reason::NO_SUBSCRIPTION_EXISTED])
    );
    // And the subscription is gone.
    publish_once(&mut core, "known/t", b"x", QoS::AtLeastOnce, now);
    c.expect_nothing(&mut core, now);
}

#[test]
fn denied_filter_gets_suback_failure() {
    // 3.1.1 MQTT-3.9.3 (0x80), MQTT-3.9.3-1 order, v5 §3.9.3; raw_protocol.rs:
    // `denied_filter_gets_suback_failure`.
    let mut core = core_with(MqttConfig {
        deny_subscribe: vec!["test/nosubscribe".into()],
        ..MqttConfig::default()
    });
    let now = Instant::now();
    let mut c = online(&mut core, V311, "denied-311", now);
    let codes = c.subscribe_with(
        &mut core,
        1,
        &[
            ("ok/t", q(QoS::AtLeastOnce)),
            ("test/nosubscribe", q(QoS::AtLeastOnce)),
        ],
        None,
        now,
    );
    assert_eq!(codes, [1, reason::v3::SUBACK_FAILURE]);
    let mut c5 = online(&mut core, V5, "denied-5", now);
    let codes = c5.subscribe_with(
        &mut core,
        1,
        &[
            ("test/nosubscribe", q(QoS::AtLeastOnce)),
            ("ok/t", q(QoS::AtMostOnce)),
        ],
        None,
        now,
    );
    assert!(codes[0] >= 0x80, "v5 denied filter must fail: {codes:02x?}");
    assert_eq!(codes[1], 0);
    publish_once(
        &mut core,
        "test/nosubscribe",
        b"secret",
        QoS::AtLeastOnce,
        now,
    );
    c.expect_nothing(&mut core, now);
    c5.expect_nothing(&mut core, now);
}

#[test]
fn resubscribe_replaces_options_without_losing_inflight() {
    // MQTT-3.8.4-3; raw_protocol.rs: `resubscribe_replaces_options_without_losing_inflight`.
    let mut core = core();
    let now = Instant::now();
    let mut s = online(&mut core, V5, "changer", now);
    s.subscribe(&mut core, "rp/t", QoS::AtLeastOnce, now);
    publish_once(&mut core, "rp/t", b"m1", QoS::AtLeastOnce, now);
    let m1 = s.expect_publish(&mut core, now);
    assert_eq!(m1.qos, QoS::AtLeastOnce);
    assert_eq!(
        s.subscribe_with(&mut core, 2, &[("rp/t", q(QoS::AtMostOnce))], None, now),
        [0]
    );
    s.ack(&mut core, &m1, now);
    assert!(
        core.shards["changer"].inflight().next().is_none(),
        "m1 was still in flight"
    );
    publish_once(&mut core, "rp/t", b"m2", QoS::AtLeastOnce, now);
    let m2 = s.expect_publish(&mut core, now);
    assert_eq!(
        (m2.qos, m2.payload.as_slice()),
        (QoS::AtMostOnce, &b"m2"[..])
    );
    s.expect_nothing(&mut core, now);
}

#[test]
fn malformed_share_names_are_refused() {
    // MQTT-4.8.2-1, -2; raw_protocol.rs: `invalid_filters_and_share_names_are_refused`
    // (the share names; a misplaced wildcard in a plain filter is the decoder's).
    let mut core = core();
    let now = Instant::now();
    for filter in ["$share//t", "$share/g+/t", "$share/g#/t", "$share/g"] {
        let mut c = online(&mut core, V5, "filters", now);
        match c.try_subscribe(&mut core, 1, &[(filter, q(QoS::AtMostOnce))], None, now) {
            Ok(codes) => assert!(codes[0] >= 0x80, "{filter:?} accepted: {codes:02x?}"),
            Err(close) => assert!(
                matches!(close, Close::Error(0x81 | 0x82 | 0x8F)),
                "{filter:?}: {close:?}"
            ),
        }
        assert!(
            core.shards["filters"].subscription_count() == 0,
            "{filter:?}"
        );
    }
}

#[test]
fn disabled_features_are_announced_and_refused() {
    // MQTT 5 §3.2.2.3.11-13, §3.2.2.3.4; raw_protocol.rs: `disabled_features_are_announced_and_refused`.
    let mut core = core_with(MqttConfig {
        wildcard_subscriptions: false,
        shared_subscriptions: false,
        subscription_identifiers: false,
        max_qos: 0,
        ..MqttConfig::default()
    });
    let now = Instant::now();
    let o = open(&mut core, &plain(V5, "announce"), now);
    with_connack(&o.bytes, V5, |a| {
        let p = a.properties;
        assert_eq!(p.wildcard_subscription_available(), Some(false));
        assert_eq!(p.shared_subscription_available(), Some(false));
        assert_eq!(p.subscription_identifier_available(), Some(false));
        assert_eq!(p.maximum_qos(), Some(0));
    });
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
        let mut c = online(&mut core, V5, "user", now);
        let got = match c.try_subscribe(&mut core, 1, &[(filter, q(QoS::AtMostOnce))], sub_id, now)
        {
            Ok(codes) => codes[0],
            Err(Close::Error(r)) => r,
            Err(other) => panic!("{filter}: {other:?}"),
        };
        assert_eq!(got, code, "{filter}");
    }
    // 3.1.1: SUBACK 0x80 for a wildcard.
    let mut c = online(&mut core, V311, "old", now);
    let codes = c.subscribe_with(&mut core, 1, &[("w/#", q(QoS::AtMostOnce))], None, now);
    assert_eq!(codes, [0x80]);
}

// ---------------------------------------------------------------------------------------
// DISCONNECT, session expiry and wills
// ---------------------------------------------------------------------------------------

/// DISCONNECT with `reason` and `props`.
fn disconnect_packet<'a>(reason: u8, props: &'a PropValues<'a>) -> Packet<'a> {
    Packet::Disconnect(Disconnect {
        reason,
        properties: Properties::Values(props),
    })
}

#[test]
fn disconnect_with_will_message_publishes_the_will() {
    // MQTT-3.14.4-3, v5 §3.14.2.1 (0x04); raw_protocol.rs:
    // `disconnect_with_will_message_publishes_will`.
    let mut core = core();
    let now = Instant::now();
    let mut observer = online(&mut core, V5, "observer", now);
    observer.subscribe(&mut core, "dw/#", QoS::AtMostOnce, now);
    for (id, topic, payload, code) in [
        (
            "polite",
            "dw/polite",
            &b"no"[..],
            reason::NORMAL_DISCONNECTION,
        ),
        (
            "dramatic",
            "dw/dramatic",
            b"yes",
            reason::DISCONNECT_WITH_WILL,
        ),
    ] {
        let mut c = plain(V5, id);
        c.will = Some(will(topic, payload));
        let mut p = join(&mut core, &c, now);
        let none = PropValues::default();
        let r = p.send(&mut core, &disconnect_packet(code, &none), now);
        let close = Close::Disconnected {
            will: code == reason::DISCONNECT_WITH_WILL,
        };
        assert_eq!(r, Err(close));
        assert!(p.inbox.is_empty(), "the server sends nothing back");
        p.closed(&mut core, close, now);
    }
    let m = observer.expect_publish(&mut core, now);
    assert_eq!(
        (m.topic.as_str(), m.payload.as_slice()),
        ("dw/dramatic", &b"yes"[..])
    );
    observer.expect_nothing(&mut core, now);
}

#[test]
fn disconnect_cannot_raise_session_expiry_from_zero() {
    // MQTT-3.14.2-2, §3.1.2.5; raw_protocol.rs: `disconnect_cannot_raise_session_expiry_from_zero`.
    let mut core = core();
    let now = Instant::now();
    let mut observer = online(&mut core, V5, "observer", now);
    observer.subscribe(&mut core, "se/#", QoS::AtMostOnce, now);
    let mut c = plain(V5, "sneaky");
    c.will = Some(will("se/will", b"protocol-error"));
    let mut p = join(&mut core, &c, now);
    let e = expiry(30);
    let r = p.send(&mut core, &disconnect_packet(0, &e), now);
    assert_eq!(r, Err(Close::Error(reason::PROTOCOL_ERROR)));
    p.closed(&mut core, Close::Error(reason::PROTOCOL_ERROR), now);
    // Ended on a protocol error, not a normal DISCONNECT: the will is published.
    assert_eq!(observer.expect_publish(&mut core, now).topic, "se/will");
    // No session was kept.
    let o = open(
        &mut core,
        &connect_packet(V5, "sneaky", false, Properties::default()),
        now,
    );
    assert_eq!(o.ack, (false, 0));
}

#[test]
fn disconnect_can_end_a_persistent_session() {
    // MQTT 5 §3.14.2.2.2; raw_protocol.rs: `disconnect_can_end_a_persistent_session`.
    let mut core = core();
    let now = Instant::now();
    let e = expiry(60);
    let mut p = join(&mut core, &persistent(V5, "short-lived", &e), now);
    let zero = expiry(0);
    let r = p.send(&mut core, &disconnect_packet(0, &zero), now);
    assert_eq!(r, Err(Close::Disconnected { will: false }));
    p.closed(&mut core, Close::Disconnected { will: false }, now);
    let mut c = persistent(V5, "short-lived", &e);
    c.clean_start = false;
    assert_eq!(open(&mut core, &c, now).ack, (false, 0));
}

#[test]
fn session_expires_after_its_interval() {
    // MQTT 5 §3.1.2.11.2; raw_protocol.rs: `session_expires_after_its_interval`.
    let mut core = core();
    let t0 = Instant::now();
    let e = expiry(1);
    let mut s = join(&mut core, &persistent(V5, "mayfly", &e), t0);
    s.subscribe(&mut core, "exp/t", QoS::AtLeastOnce, t0);
    s.disconnect(&mut core, t0);
    assert_eq!(core.poll_timeout(), Some(t0 + secs(1)), "its expiry is due");
    let later = t0 + secs(2);
    advance(&mut core, later);
    publish_once(&mut core, "exp/t", b"too late", QoS::AtLeastOnce, later);
    let mut c = persistent(V5, "mayfly", &e);
    c.clean_start = false;
    let o = open(&mut core, &c, later);
    assert_eq!(o.ack, (false, 0));
    o.peer.unwrap().expect_nothing(&mut core, later);
}

#[test]
fn will_waits_for_the_shorter_of_delay_and_session_expiry() {
    // MQTT 5 §3.1.3.2.2 (MQTT-3.1.3-9); raw_protocol.rs:
    // `will_waits_for_the_shorter_of_delay_and_session_expiry`.
    let mut core = core();
    let t0 = Instant::now();
    let mut observer = online(&mut core, V5, "observer", t0);
    observer.subscribe(&mut core, "wse/#", QoS::AtMostOnce, t0);
    let e = expiry(1);
    let mut c = connect_packet(V5, "short-session", true, Properties::Values(&e));
    let w_props = PropValues {
        will_delay_interval: Some(30),
        ..PropValues::default()
    };
    c.will = Some(Will {
        properties: Properties::Values(&w_props),
        ..will("wse/t", b"session-ended")
    });
    join(&mut core, &c, t0).hang_up(&mut core, t0);
    advance(&mut core, t0 + millis(800));
    observer.expect_nothing(&mut core, t0 + millis(800));
    let at = t0 + secs(1);
    advance(&mut core, at);
    let m = observer.expect_publish(&mut core, at);
    assert_eq!(m.payload, b"session-ended");
    advance(&mut core, t0 + secs(60));
    observer.expect_nothing(&mut core, t0 + secs(60));
}

#[test]
fn will_properties_and_retain_apply() {
    // MQTT 5 §3.1.3.2, MQTT-3.1.2-17; raw_protocol.rs: `will_properties_and_retain_apply`.
    let mut core = core();
    let now = Instant::now();
    let mut observer = online(&mut core, V5, "observer", now);
    observer.subscribe(&mut core, "wp/#", QoS::AtLeastOnce, now);
    let users = [("who", "propertied")];
    let w_props = PropValues {
        content_type: Some("application/json"),
        response_topic: Some("wp/reply"),
        correlation_data: Some(b"c-1"),
        message_expiry_interval: Some(100),
        user_properties: PropList::Slice(&users),
        ..PropValues::default()
    };
    let mut c = plain(V5, "propertied");
    c.will = Some(Will {
        topic: "wp/t",
        payload: b"{\"gone\":true}",
        qos: QoS::AtLeastOnce,
        retain: true,
        properties: Properties::Values(&w_props),
    });
    join(&mut core, &c, now).hang_up(&mut core, now);
    let m = observer.expect_publish(&mut core, now);
    observer.ack(&mut core, &m, now);
    assert_eq!(m.topic, "wp/t");
    assert_eq!(m.qos, QoS::AtLeastOnce);
    assert_eq!(m.content_type.as_deref(), Some("application/json"));
    assert_eq!(m.response_topic.as_deref(), Some("wp/reply"));
    assert_eq!(m.correlation_data.as_deref(), Some(&b"c-1"[..]));
    assert_eq!(
        m.user_properties,
        [("who".to_owned(), "propertied".to_owned())]
    );
    assert!(
        m.expiry.is_some_and(|e| (98..=100).contains(&e)),
        "{:?}",
        m.expiry
    );
    // Will Retain 1: the will is retained.
    let mut late = online(&mut core, V5, "late", now);
    late.subscribe(&mut core, "wp/t", QoS::AtLeastOnce, now);
    let r = late.expect_publish(&mut core, now);
    assert!(r.retain && r.payload == b"{\"gone\":true}");
}

#[test]
fn resuming_the_session_within_the_will_delay_cancels_the_will() {
    // MQTT 5 §3.1.3.2.2 (MQTT-3.1.4-3 takeover); raw_protocol.rs:
    // `takeover_resuming_session_within_will_delay_cancels_will`.
    let mut core = core();
    let t0 = Instant::now();
    let mut observer = online(&mut core, V5, "observer", t0);
    observer.subscribe(&mut core, "td/#", QoS::AtMostOnce, t0);
    let e = expiry(60);
    let w_props = PropValues {
        will_delay_interval: Some(5),
        ..PropValues::default()
    };
    let mut c = persistent(V5, "heir", &e);
    c.will = Some(Will {
        properties: Properties::Values(&w_props),
        ..will("td/will", b"must-not-appear")
    });
    let first = join(&mut core, &c, t0);
    let mut second = resume(&mut core, V5, "heir", t0);
    assert_eq!(first.kicked(), reason::SESSION_TAKEN_OVER);
    let t1 = t0 + millis(700);
    advance(&mut core, t1);
    second.send_ok(&mut core, &Packet::PingReq, t1);
    assert_eq!(second.expect(&mut core, t1), Out::PingResp);
    second.disconnect(&mut core, t1);
    // Well past the will delay: still nothing.
    advance(&mut core, t0 + secs(10));
    observer.expect_nothing(&mut core, t0 + secs(10));
}

#[test]
fn will_is_published_when_the_connection_is_lost() {
    // 3.1.1 §3.1.2.5 (keep-alive expiry is not a DISCONNECT); raw_protocol.rs:
    // `will_published_on_keepalive_timeout` (the timer is the runtime's; the end it
    // reports is abnormal).
    let mut core = core();
    let now = Instant::now();
    let mut observer = online(&mut core, V5, "observer", now);
    observer.subscribe(&mut core, "kw/#", QoS::AtMostOnce, now);
    let mut c = plain(V311, "silent");
    c.keep_alive = 1;
    c.will = Some(will("kw/t", b"timed-out"));
    let later = now + millis(1500);
    join(&mut core, &c, now).hang_up(&mut core, later);
    assert_eq!(
        observer.expect_publish(&mut core, later).payload,
        b"timed-out"
    );
}

// ---------------------------------------------------------------------------------------
// Retained messages, limits, shared subscriptions, properties
// ---------------------------------------------------------------------------------------

#[test]
fn retained_message_expires_and_forwards_its_remaining_interval() {
    // MQTT-3.3.2-5, MQTT-3.3.2-6; raw_protocol.rs: `retained_message_expires`.
    let mut core = core();
    let t0 = Instant::now();
    let mut p = online(&mut core, V5, "retainer", t0);
    for (topic, secs) in [("rx/short", 1), ("rx/long", 60)] {
        let props = PropValues {
            message_expiry_interval: Some(secs),
            ..PropValues::default()
        };
        let mut r = retained(topic, b"r", QoS::AtLeastOnce, 1);
        r.properties = Properties::Values(&props);
        p.publish_acked(&mut core, &r, t0);
    }
    let later = t0 + millis(2100);
    advance(&mut core, later);
    let mut s = online(&mut core, V5, "late", later);
    s.subscribe(&mut core, "rx/#", QoS::AtLeastOnce, later);
    let m = s.expect_publish(&mut core, later);
    assert_eq!(m.topic, "rx/long");
    assert!(
        m.expiry.is_some_and(|e| (55..=58).contains(&e)),
        "{:?}",
        m.expiry
    );
    s.ack(&mut core, &m, later);
    s.expect_nothing(&mut core, later);
}

#[test]
fn maximum_qos_1_is_announced_and_enforced() {
    // MQTT 5 §3.2.2.3.4, MQTT-3.2.2-12, §3.9.3; raw_protocol.rs:
    // `maximum_qos_1_is_announced_and_enforced`.
    let mut core = core_with(MqttConfig {
        max_qos: 1,
        ..MqttConfig::default()
    });
    let now = Instant::now();
    let o = open(&mut core, &plain(V5, "qos-capped"), now);
    with_connack(&o.bytes, V5, |a| {
        assert_eq!(a.properties.maximum_qos(), Some(1))
    });
    let mut c = o.peer.unwrap();
    // The granted QoS is capped at Maximum QoS.
    let codes = c.subscribe_with(&mut core, 1, &[("mq/t", q(QoS::ExactlyOnce))], None, now);
    assert_eq!(codes, [1]);
    // A PUBLISH above it: DISCONNECT 0x9B.
    let r = c.send(
        &mut core,
        &Packet::Publish(msg("mq/t", b"x", QoS::ExactlyOnce, 1)),
        now,
    );
    assert_eq!(r, Err(Close::Error(reason::QOS_NOT_SUPPORTED)));
    // A will QoS above it is refused in CONNACK with 0x9B.
    let mut cw = plain(V5, "will-qos2");
    cw.will = Some(Will {
        qos: QoS::ExactlyOnce,
        ..will("mq/w", b"x")
    });
    let o = open(&mut core, &cw, now);
    assert_eq!(o.ack, (false, reason::QOS_NOT_SUPPORTED));
    assert!(o.peer.is_none());
    assert!(!core.shards.contains("will-qos2"));
}

#[test]
fn retain_not_available_is_announced_and_enforced() {
    // MQTT 5 §3.2.2.3.5; raw_protocol.rs: `retain_not_available_is_announced_and_enforced`.
    let mut core = core_with(MqttConfig {
        retain_available: false,
        ..MqttConfig::default()
    });
    let now = Instant::now();
    let o = open(&mut core, &plain(V5, "no-retain"), now);
    with_connack(&o.bytes, V5, |a| {
        assert_eq!(a.properties.retain_available(), Some(false));
    });
    let mut c = o.peer.unwrap();
    let r = c.send(
        &mut core,
        &Packet::Publish(retained("nr/t", b"x", QoS::AtMostOnce, 0)),
        now,
    );
    assert_eq!(r, Err(Close::Error(reason::RETAIN_NOT_SUPPORTED)));
    assert_eq!(core.retained.len(), 0);
}

#[test]
fn slow_consumer_is_kicked_with_quota_exceeded() {
    // DESIGN (MQTT 5 §4.13 0x97); raw_protocol.rs: `slow_consumer_is_disconnected_with_quota_exceeded`.
    let mut core = core_with(MqttConfig {
        max_queued_messages: 3,
        max_inflight: 1,
        ..MqttConfig::default()
    });
    let now = Instant::now();
    let mut observer = online(&mut core, V5, "observer", now);
    observer.subscribe(&mut core, "obs/#", QoS::AtMostOnce, now);
    let mut slow = online(&mut core, V5, "slowpoke", now);
    slow.subscribe(&mut core, "sc/t", QoS::AtLeastOnce, now);
    let mut p = online(&mut core, V5, "firehose", now);
    for i in 1..=8u16 {
        p.publish_acked(&mut core, &msg("sc/t", b"x", QoS::AtLeastOnce, i), now);
        // The slow consumer's task writes what it may and never acknowledges.
        slow.pump(&mut core, now);
    }
    assert_eq!(slow.kicked(), reason::QUOTA_EXCEEDED);
    assert_eq!(observer.kicked(), 0);
    assert_eq!(p.kicked(), 0);
    slow.closed(&mut core, Close::Error(reason::QUOTA_EXCEEDED), now);
    publish_once(&mut core, "obs/x", b"fine", QoS::AtLeastOnce, now);
    assert_eq!(observer.expect_publish(&mut core, now).payload, b"fine");
}

/// Two members of `$share/g/sl/t`; one message at `qos`; the member that got it ends
/// its session (expiry 0) without acknowledging. What the other member then receives.
fn shared_member_leaves(qos: QoS) -> Option<Msg> {
    let mut core = core();
    let now = Instant::now();
    let mut a = online(&mut core, V5, "member-a", now);
    let mut b = online(&mut core, V5, "member-b", now);
    for m in [&mut a, &mut b] {
        let codes = m.subscribe_with(
            &mut core,
            1,
            &[("$share/g/sl/t", q(QoS::ExactlyOnce))],
            None,
            now,
        );
        assert_eq!(codes, [2]);
    }
    publish_once(&mut core, "sl/t", b"job", qos, now);
    let (chosen, mut other) = match a.recv(&mut core, now) {
        Some(Out::Publish(m)) => {
            assert_eq!(m.payload, b"job");
            (a, b)
        }
        Some(o) => panic!("{o:?}"),
        None => {
            assert_eq!(b.expect_publish(&mut core, now).payload, b"job");
            (b, a)
        }
    };
    chosen.hang_up(&mut core, now);
    let got = other.recv(&mut core, now).map(|o| match o {
        Out::Publish(m) => m,
        o => panic!("{o:?}"),
    });
    other.expect_nothing(&mut core, now);
    got
}

#[test]
fn shared_qos1_goes_to_another_member_when_the_session_ends() {
    // MQTT 5 §4.8.2; raw_protocol.rs: `shared_qos1_goes_to_another_member_when_session_ends`.
    let m = shared_member_leaves(QoS::AtLeastOnce).expect("QoS 1 message re-routed");
    assert_eq!(m.payload, b"job");
}

#[test]
fn shared_qos2_begun_is_never_sent_to_another_member() {
    // MQTT-4.8.2-5; raw_protocol.rs: `shared_qos2_begun_is_never_sent_to_another_member`.
    assert_eq!(shared_member_leaves(QoS::ExactlyOnce), None);
}

#[test]
fn invalid_utf8_under_payload_format_indicator_is_0x99_and_not_forwarded() {
    // MQTT 5 §3.3.2.3.2 (MQTT-3.3.2-4 receiver check); raw_protocol.rs:
    // `payload_format_indicator_is_checked_consistently`.
    let mut core = core();
    let now = Instant::now();
    let mut sub = online(&mut core, V5, "pfi-sub", now);
    sub.subscribe(&mut core, "pfi/t", QoS::AtLeastOnce, now);
    let mut p = online(&mut core, V5, "pfi-pub", now);
    let props = PropValues {
        payload_format_indicator: Some(1),
        ..PropValues::default()
    };
    let mut bad = msg("pfi/t", &[0xFF, 0xFE], QoS::AtLeastOnce, 1);
    bad.properties = Properties::Values(&props);
    p.send_ok(&mut core, &Packet::Publish(bad), now);
    match p.expect(&mut core, now) {
        Out::PubAck(1, reason::PAYLOAD_FORMAT_INVALID) => sub.expect_nothing(&mut core, now),
        Out::PubAck(1, 0) => {
            assert_eq!(sub.expect_publish(&mut core, now).payload, [0xFF, 0xFE]);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn publish_properties_pass_through_unchanged() {
    // MQTT-3.3.2-4, -15, -16, -18; raw_protocol.rs: `publish_properties_pass_through_unchanged`.
    let mut core = core();
    let now = Instant::now();
    let mut s5 = online(&mut core, V5, "props-5", now);
    s5.subscribe(&mut core, "pr/t", QoS::AtLeastOnce, now);
    let mut s3 = online(&mut core, V311, "props-311", now);
    s3.subscribe(&mut core, "pr/t", QoS::AtLeastOnce, now);
    let mut p = online(&mut core, V5, "props-pub", now);
    let users = [("k", "1"), ("a", "x"), ("k", "2"), ("", "")];
    let props = PropValues {
        payload_format_indicator: Some(1),
        content_type: Some("text/plain; charset=utf-8"),
        response_topic: Some("pr/reply/42"),
        correlation_data: Some(&[0x00, 0xFF, 0x10]),
        user_properties: PropList::Slice(&users),
        ..PropValues::default()
    };
    let mut m = msg("pr/t", b"payload", QoS::AtLeastOnce, 1);
    m.properties = Properties::Values(&props);
    p.publish_acked(&mut core, &m, now);
    let got = s5.expect_publish(&mut core, now);
    assert_eq!(got.payload_format_indicator, Some(1));
    assert_eq!(
        got.content_type.as_deref(),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(got.response_topic.as_deref(), Some("pr/reply/42"));
    assert_eq!(
        got.correlation_data.as_deref(),
        Some(&[0x00, 0xFF, 0x10][..])
    );
    let want: Vec<(String, String)> = users
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(got.user_properties, want, "in order, repeats kept");
    assert_eq!(s3.expect_publish(&mut core, now).payload, b"payload");
}

#[test]
fn server_only_packets_from_a_client_are_protocol_errors() {
    // MQTT 5 §4.13 / §2.1.2; raw_protocol.rs: `server_only_packets_from_a_client_are_protocol_errors`
    // (packet type 0 cannot be decoded: the runtime's).
    let mut core = core();
    let now = Instant::now();
    let none = PropValues::default();
    let packets = [
        Packet::ConnAck(ConnAck {
            session_present: false,
            code: 0,
            properties: Properties::Values(&none),
        }),
        Packet::SubAck(SubAck {
            packet_id: 1,
            properties: Properties::default(),
            codes: &[0],
        }),
        Packet::UnsubAck(UnsubAck {
            packet_id: 1,
            properties: Properties::default(),
            codes: &[0],
        }),
        Packet::PingResp,
    ];
    for p in packets {
        bad_packet(&mut core, V5, &p, reason::PROTOCOL_ERROR, now);
    }
}

#[test]
fn client_publish_with_a_subscription_identifier_is_a_protocol_error() {
    // MQTT-3.3.4-6; raw_protocol.rs: `client_publish_with_subscription_identifier_is_a_protocol_error`.
    let mut core = core();
    let ids = [3u32];
    let props = PropValues {
        subscription_identifiers: PropList::Slice(&ids),
        ..PropValues::default()
    };
    let mut p = msg("obs/x", b"x", QoS::AtMostOnce, 0);
    p.properties = Properties::Values(&props);
    bad_packet(
        &mut core,
        V5,
        &Packet::Publish(p),
        reason::PROTOCOL_ERROR,
        Instant::now(),
    );
}

#[test]
fn a_reader_that_never_drains_does_not_hold_up_others() {
    // DESIGN (per-session queues); raw_protocol.rs: `slow_reader_does_not_hold_up_others`
    // (the socket back-pressure is the runtime's; here: one session's backlog costs the
    // others nothing).
    let mut core = core();
    let now = Instant::now();
    let mut slow = online(&mut core, V311, "slow", now);
    slow.subscribe(&mut core, "flood/t", QoS::AtMostOnce, now);
    let mut fast = online(&mut core, V5, "fast", now);
    fast.subscribe(&mut core, "flood/#", QoS::AtLeastOnce, now);
    let mut p = online(&mut core, V5, "flooder", now);
    let payload = vec![b'f'; 16 * 1024];
    let mut n = 0usize;
    let mut take = |fast: &mut Peer, core: &mut Core| {
        let mut end = false;
        while let Some(o) = fast.recv(core, now) {
            let Out::Publish(m) = o else { panic!("{o:?}") };
            fast.ack(core, &m, now);
            if m.topic == "flood/end" {
                end = true;
            } else {
                n += 1;
            }
        }
        end
    };
    for i in 0..600 {
        p.send_ok(
            &mut core,
            &Packet::Publish(msg("flood/t", &payload, QoS::AtMostOnce, 0)),
            now,
        );
        if i % 50 == 0 {
            assert!(!take(&mut fast, &mut core));
        }
    }
    p.publish_acked(
        &mut core,
        &msg("flood/end", b"end", QoS::AtLeastOnce, 1),
        now,
    );
    assert!(take(&mut fast, &mut core), "the end marker arrived");
    assert_eq!(n, 600, "fast subscriber lost QoS 0 messages");
    assert_eq!(slow.kicked(), 0);
    assert!(core.shards["slow"].queued_len() <= MqttConfig::default().max_queued_messages);
}

// ---------------------------------------------------------------------------------------
// Crash recovery
// ---------------------------------------------------------------------------------------

/// A journal in memory: every record kept in order and durable once appended (the
/// store with `--fsync always`, minus the files).
#[derive(Debug, Default)]
struct MemJournal {
    records: std::sync::Mutex<Vec<Vec<u8>>>,
}

impl MemJournal {
    fn records(&self) -> Vec<Vec<u8>> {
        self.records.lock().unwrap().clone()
    }
}

impl durable::Journal for MemJournal {
    fn append_with(&self, encode: &mut dyn FnMut(&mut Vec<u8>)) -> u64 {
        let mut b = Vec::new();
        encode(&mut b);
        let mut records = self.records.lock().unwrap();
        records.push(b);
        records.len() as u64
    }
    fn waits(&self) -> bool {
        true
    }
    fn durable(&self) -> u64 {
        self.records.lock().unwrap().len() as u64
    }
    fn since_snapshot(&self) -> u64 {
        // Never enough for a compaction: these tests keep the whole log.
        0
    }
    fn snapshot_begin(&self) {
        panic!("no compaction in these tests");
    }
    fn snapshot_chunk(&self, _framed: Vec<u8>) {
        panic!("no compaction in these tests");
    }
    fn snapshot_end(&self) {
        panic!("no compaction in these tests");
    }
}

/// Queue tails that cannot be made: with an unlimited budget none is asked for.
#[derive(Debug)]
struct NoTails;

impl durable::TailStore for NoTails {
    fn create(&self) -> std::io::Result<Box<dyn durable::QueueTail>> {
        Err(std::io::Error::other("no spill files in these tests"))
    }
}

/// A core journaling into `journal`.
fn durable_core(journal: Arc<dyn durable::Journal>, now: Instant) -> Core {
    Core::with_journal(
        Arc::new(MqttConfig::default()),
        journal,
        Arc::new(NoTails),
        usize::MAX,
        Clock::new(now, 1_700_000_000_000),
    )
}

/// A new core rebuilt from `records` the way the runtime recovers the store: the index
/// pass, the sessions, the deliveries in log order, then retained messages and wills.
fn recover(records: &[Vec<u8>], now: Instant) -> Core {
    recover_at(records, now, 1_700_000_000_000)
}

/// [`recover`] with the wall clock at `unix_ms` at `now` (tests where wall time matters
/// across the crash).
fn recover_at(records: &[Vec<u8>], now: Instant, unix_ms: u64) -> Core {
    let mut core = Core::with_journal(
        Arc::new(MqttConfig::default()),
        Arc::new(MemJournal::default()),
        Arc::new(NoTails),
        usize::MAX,
        Clock::new(now, unix_ms),
    );
    let now_ms = core.clock.unix_ms(now);
    crate::fuzzing::replay_into(&mut core, records, now, now_ms);
    core
}

/// A persistent session keeps the user that created it across a crash: after recovery
/// its user resumes it and gets what was queued; another user with its client id starts
/// afresh and gets nothing (docs/security.md, session ownership).
#[test]
fn a_session_keeps_its_user_across_a_crash() {
    let t0 = Instant::now();
    let journal = Arc::new(MemJournal::default());
    let mut core = durable_core(journal.clone(), t0);
    let e = expiry(3600);
    let mut c = persistent(V5, "owned", &e);
    c.username = Some("alice");
    let mut s = join(&mut core, &c, t0);
    s.subscribe(&mut core, "o/t", QoS::AtLeastOnce, t0);
    s.disconnect(&mut core, t0);
    let mut p = online(&mut core, V5, "pub", t0);
    p.publish_acked(
        &mut core,
        &msg("o/t", b"for alice", QoS::AtLeastOnce, 1),
        t0,
    );
    drop(core);

    let t1 = t0 + secs(1);
    let records = journal.records();
    // Another user with the same client id: not resumed, nothing delivered.
    let mut core = recover(&records, t1);
    // Make sure the test's own reconnect would resume (no clean start).
    let mut again = c;
    again.clean_start = false;
    let mut bob = again;
    bob.username = Some("bob");
    let o = open(&mut core, &bob, t1);
    assert_eq!(o.ack, (false, 0), "bob must not resume alice's session");
    o.peer.unwrap().expect_nothing(&mut core, t1);
    // Its own user resumes it and gets the queued message.
    let mut core = recover(&records, t1);
    let o = open(&mut core, &again, t1);
    assert_eq!(o.ack, (true, 0));
    let got = o.peer.unwrap().expect_publish(&mut core, t1);
    assert_eq!(got.payload, b"for alice");
}

#[test]
fn queue_inbound_qos2_and_retained_survive_a_crash() {
    // DESIGN (nothing acknowledged is lost), MQTT-4.3.3-10; raw_protocol.rs:
    // `session_queue_inbound_qos2_and_retained_survive_broker_crash` (the log here is in
    // memory; writing it to disk is the store's).
    let t0 = Instant::now();
    let journal = Arc::new(MemJournal::default());
    let mut core = durable_core(journal.clone(), t0);
    let e = expiry(3600);
    let mut s = join(&mut core, &persistent(V5, "durable-sub", &e), t0);
    s.subscribe(&mut core, "d/t", QoS::AtLeastOnce, t0);
    s.disconnect(&mut core, t0);
    let mut p = join(&mut core, &persistent(V5, "durable-pub", &e), t0);
    p.publish_acked(&mut core, &msg("d/t", b"m1", QoS::AtLeastOnce, 1), t0);
    p.publish_acked(&mut core, &msg("d/t", b"m2", QoS::AtLeastOnce, 2), t0);
    p.publish_acked(
        &mut core,
        &retained("d/r", b"kept", QoS::AtLeastOnce, 3),
        t0,
    );
    // A QoS 2 flow left between PUBREC and PUBREL.
    p.send_ok(
        &mut core,
        &Packet::Publish(msg("d/t", b"m3", QoS::ExactlyOnce, 7)),
        t0,
    );
    assert!(matches!(p.expect(&mut core, t0), Out::PubRec(7, _)));
    // The crash: the core is gone without ending any link.
    drop(core);

    let t1 = t0 + secs(1);
    let mut core = recover(&journal.records(), t1);
    let mut p = resume(&mut core, V5, "durable-pub", t1);
    let mut dup = msg("d/t", b"m3", QoS::ExactlyOnce, 7);
    dup.dup = true;
    p.send_ok(&mut core, &Packet::Publish(dup), t1);
    assert!(matches!(p.expect(&mut core, t1), Out::PubRec(7, _)));
    p.send_ok(&mut core, &Packet::PubRel(Ack::new(7)), t1);
    assert_eq!(
        p.expect(&mut core, t1),
        Out::PubComp(7, 0),
        "inbound QoS 2 state lost"
    );
    let mut s = resume(&mut core, V5, "durable-sub", t1);
    let got: Vec<Vec<u8>> = (0..3)
        .map(|_| {
            let m = s.expect_publish(&mut core, t1);
            s.ack(&mut core, &m, t1);
            m.payload
        })
        .collect();
    assert_eq!(got, [b"m1".to_vec(), b"m2".to_vec(), b"m3".to_vec()]);
    s.expect_nothing(&mut core, t1);
    let mut late = online(&mut core, V5, "late", t1);
    late.subscribe(&mut core, "d/r", QoS::AtLeastOnce, t1);
    let m = late.expect_publish(&mut core, t1);
    assert!(m.retain && m.payload == b"kept");
}

// ---------------------------------------------------------------------------------------
// Extra: no raw_protocol.rs counterpart
// ---------------------------------------------------------------------------------------

#[test]
fn dollar_topics_are_not_matched_by_a_leading_wildcard_live_or_retained() {
    // MQTT-4.7.2-1 (v5 §4.7.2); no raw_protocol.rs test: the issue's `$` topics priority.
    let mut core = core();
    let now = Instant::now();
    let mut p = online(&mut core, V5, "dollar-pub", now);
    p.publish_acked(
        &mut core,
        &retained("$app/r", b"kept", QoS::AtLeastOnce, 1),
        now,
    );
    let filters = ["#", "+/r", "+/+", "$app/#", "$app/+", "$app/r"];
    let mut subs: Vec<Peer> = Vec::new();
    for (i, f) in filters.iter().enumerate() {
        let mut s = online(&mut core, V5, &format!("s{i}"), now);
        s.subscribe(&mut core, f, QoS::AtLeastOnce, now);
        subs.push(s);
    }
    // Retained messages on subscribe.
    for (s, f) in subs.iter_mut().zip(filters) {
        let got: Vec<String> = std::iter::from_fn(|| s.recv(&mut core, now))
            .map(|o| match o {
                Out::Publish(m) => m.topic,
                o => panic!("{o:?}"),
            })
            .collect();
        let want: &[&str] = if f.starts_with('$') { &["$app/r"] } else { &[] };
        assert_eq!(got, want, "retained for {f:?}");
    }
    // Live messages.
    p.publish_acked(&mut core, &msg("$app/r", b"live", QoS::AtMostOnce, 0), now);
    for (s, f) in subs.iter_mut().zip(filters) {
        let got: Vec<Vec<u8>> = std::iter::from_fn(|| s.recv(&mut core, now))
            .map(|o| match o {
                Out::Publish(m) => m.payload,
                o => panic!("{o:?}"),
            })
            .collect();
        let want: &[&[u8]] = if f.starts_with('$') { &[b"live"] } else { &[] };
        assert_eq!(got, want, "live for {f:?}");
    }
}

#[test]
fn retained_copied_in_steps_while_they_change_survive_compaction_and_a_crash() {
    // Issue #10 fault 8: a compaction copies the retained messages in steps under the
    // core's lock, and the core goes on between steps. Whatever changed meanwhile (set,
    // replaced, deleted, or delivered to a persistent session and then deleted) must come
    // back from the compacted log as it was at the end.
    let t0 = Instant::now();
    let journal = Arc::new(crate::fuzzing::FuzzJournal::default());
    let mut core = durable_core(journal.clone(), t0);
    core.set_compact_min(0);
    let mut p = online(&mut core, V5, "retainer", t0);
    let payloads: Vec<String> = (0..100).map(|i| format!("v1-{i}")).collect();
    for (i, v) in payloads.iter().enumerate() {
        let topic = format!("r/{i:03}");
        p.publish_acked(
            &mut core,
            &retained(&topic, v.as_bytes(), QoS::AtLeastOnce, 1),
            t0,
        );
    }
    let mut c = core.begin_compaction(t0).expect("a compaction is due");
    assert!(!core.copy_retained(&mut c, 10), "ten copied, ninety to go");
    // Meanwhile: replace one already copied, delete one not yet copied, add one.
    p.publish_acked(
        &mut core,
        &retained("r/005", b"v2-5", QoS::AtLeastOnce, 2),
        t0,
    );
    p.publish_acked(&mut core, &retained("r/050", b"", QoS::AtLeastOnce, 3), t0);
    p.publish_acked(
        &mut core,
        &retained("r/200", b"new", QoS::AtLeastOnce, 4),
        t0,
    );
    // A persistent session takes r/060 before that one is copied; then it is deleted.
    let e = expiry(3600);
    let mut s = join(&mut core, &persistent(V5, "late", &e), t0);
    s.subscribe(&mut core, "r/060", QoS::AtLeastOnce, t0);
    s.disconnect(&mut core, t0);
    p.publish_acked(&mut core, &retained("r/060", b"", QoS::AtLeastOnce, 5), t0);
    while !core.copy_retained(&mut c, 7) {}
    let bytes = c.run();
    core.compaction_done(bytes);

    let mut back = recover(&journal.surviving(), t0);
    let values = |core: &Core| -> Vec<(String, Vec<u8>)> {
        let mut v: Vec<(String, Vec<u8>)> = Vec::new();
        core.retained.walk_all(None, usize::MAX, |t, m| {
            v.push((t.to_string(), m.payload.to_vec()));
        });
        v
    };
    assert_eq!(
        values(&back),
        values(&core),
        "the retained set as it was at the end"
    );
    assert!(values(&back).contains(&("r/005".to_owned(), b"v2-5".to_vec())));
    assert!(!values(&back)
        .iter()
        .any(|(t, _)| t == "r/050" || t == "r/060"));
    // The delivery of r/060 kept its message although the snapshot never saw it.
    let mut late = resume(&mut back, V5, "late", t0);
    let m = late.expect_publish(&mut back, t0);
    assert_eq!(
        (m.topic.as_str(), m.payload.as_slice()),
        ("r/060", &b"v1-60"[..])
    );
    late.ack(&mut back, &m, t0);
    // The delete that followed reached the subscriber too (MQTT-3.3.1-10: delivered, not
    // kept).
    let m = late.expect_publish(&mut back, t0);
    assert_eq!(
        (m.topic.as_str(), m.payload.as_slice()),
        ("r/060", &b""[..])
    );
    late.ack(&mut back, &m, t0);
    late.expect_nothing(&mut back, t0);
}

#[test]
fn work_queue_jobs_held_by_a_consumer_survive_compaction_and_a_crash() {
    // A job handed to a consumer is still the queue's: a snapshot taken while a consumer
    // (here a clean session, which the store does not keep) holds it writes it back into
    // the queue, so it comes back after a crash.
    let t0 = Instant::now();
    let journal = Arc::new(crate::fuzzing::FuzzJournal::default());
    let mut core = durable_core(journal.clone(), t0);
    core.set_compact_min(0);
    let mut worker = online(&mut core, V5, "worker", t0);
    worker.subscribe(&mut core, "$queue/jobs", QoS::AtLeastOnce, t0);
    let mut p = online(&mut core, V5, "producer", t0);
    for i in 0..5u8 {
        let job = [b'j', b'0' + i];
        p.publish_acked(
            &mut core,
            &msg("$queue/jobs", &job, QoS::AtLeastOnce, 1),
            t0,
        );
    }
    let held: Vec<Vec<u8>> = (0..5)
        .map(|_| worker.expect_publish(&mut core, t0).payload)
        .collect();
    assert_eq!(held.len(), 5, "the worker holds all five, unacknowledged");
    let mut c = core.begin_compaction(t0).expect("a compaction is due");
    while !core.copy_retained(&mut c, 100) {}
    let bytes = c.run();
    core.compaction_done(bytes);
    p.publish_acked(
        &mut core,
        &msg("$queue/jobs", b"j5", QoS::AtLeastOnce, 2),
        t0,
    );
    // The crash.
    drop(core);
    let mut back = recover(&journal.surviving(), t0);
    let mut after = online(&mut back, V311, "after", t0);
    after.subscribe(&mut back, "$queue/jobs", QoS::AtLeastOnce, t0);
    let mut got = Vec::new();
    while let Some(Out::Publish(m)) = after.recv(&mut back, t0) {
        after.ack(&mut back, &m, t0);
        got.push(m.payload);
    }
    got.sort();
    let want: Vec<Vec<u8>> = (0..6u8).map(|i| vec![b'j', b'0' + i]).collect();
    assert_eq!(got, want, "every job, the held ones included");
}

/// `$delayed/SECONDS/TOPIC` is published to TOPIC once SECONDS have passed, never
/// before, and survives a crash in between (docs/queues.md, delayed publish).
#[test]
fn a_delayed_publish_is_released_on_time_and_survives_a_crash() {
    let t0 = Instant::now();
    let journal = Arc::new(MemJournal::default());
    let mut core = durable_core(journal.clone(), t0);
    let mut s = online(&mut core, V5, "sub", t0);
    s.subscribe(&mut core, "later/t", QoS::AtLeastOnce, t0);
    let mut p = online(&mut core, V5, "pub", t0);
    let code = p.publish_acked(
        &mut core,
        &msg("$delayed/10/later/t", b"ten", QoS::AtLeastOnce, 1),
        t0,
    );
    assert_eq!(code, reason::SUCCESS, "kept for later");
    p.publish_acked(
        &mut core,
        &msg("$delayed/30/later/t", b"thirty", QoS::AtLeastOnce, 2),
        t0,
    );
    for bad in ["$delayed/x/later/t", "$delayed/5/$SYS/x", "$delayed/5"] {
        let code = p.publish_acked(&mut core, &msg(bad, b"-", QoS::AtLeastOnce, 3), t0);
        assert_eq!(code, reason::TOPIC_NAME_INVALID, "{bad}");
    }
    advance(&mut core, t0 + secs(9));
    s.expect_nothing(&mut core, t0 + secs(9));
    advance(&mut core, t0 + secs(10));
    let m = s.expect_publish(&mut core, t0 + secs(10));
    assert_eq!((m.topic.as_str(), &m.payload[..]), ("later/t", &b"ten"[..]));
    drop(core);

    // The crash: the 30-second one comes back and is released on time (the wall clock
    // went on by the 12 s that passed).
    let t1 = t0 + secs(12);
    let unix = |t: Instant| 1_700_000_000_000 + (t - t0).as_millis() as u64;
    let mut core = recover_at(&journal.records(), t1, unix(t1));
    let mut s = online(&mut core, V5, "sub2", t1);
    s.subscribe(&mut core, "later/t", QoS::AtLeastOnce, t1);
    advance(&mut core, t0 + secs(29));
    s.expect_nothing(&mut core, t0 + secs(29));
    advance(&mut core, t0 + secs(30));
    let m = s.expect_publish(&mut core, t0 + secs(30));
    assert_eq!(&m.payload[..], b"thirty");
    // The one released before the crash is not released again (its delivery is done).
    s.expect_nothing(&mut core, t0 + secs(30));
}
