//! Helpers shared by `mosquitto_clients.rs` and `raw_protocol.rs`: a child process whose
//! output is collected while it runs, and a blocking raw MQTT client over `TcpStream`
//! that speaks through `mote_codec`.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mote_codec::{
    Ack, Connect, Packet, PropValues, Properties, Protocol, Publish, QoS, SubOptions, Subscribe,
    SubscribeFilter, Will,
};
use mote_tests::{Broker, Reaped};

/// The TLS tests' certificates (made with `openssl`), broker and `openssl s_client`.
pub(crate) mod certs;
/// The attacker of the mutation flood (`flood.rs`): hostile connections and their bytes.
pub(crate) mod flood;
/// `mote passwd` and refused `mosquitto_pub` logins.
pub(crate) mod login;

// ---------------------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------------------

/// A child process whose stdout and stderr are collected line by line while it runs.
/// Killed and reaped on drop (through [`Reaped`]).
#[derive(Debug)]
pub(crate) struct Proc {
    child: Reaped,
    out: Arc<Mutex<Vec<String>>>,
    err: Arc<Mutex<Vec<String>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

fn collect<R: Read + Send + 'static>(
    r: R,
    into: Arc<Mutex<Vec<String>>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            into.lock().unwrap().push(line);
        }
    })
}

impl Proc {
    /// Spawns `cmd` with piped output.
    pub(crate) fn spawn(cmd: &mut Command) -> Proc {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        let out = Arc::new(Mutex::new(Vec::new()));
        let err = Arc::new(Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        if let Some(o) = child.stdout.take() {
            readers.push(collect(o, out.clone()));
        }
        if let Some(e) = child.stderr.take() {
            readers.push(collect(e, err.clone()));
        }
        Proc {
            child: Reaped(child),
            out,
            err,
            readers,
        }
    }

    /// Process id.
    pub(crate) fn id(&self) -> u32 {
        self.child.0.id()
    }

    /// Every stdout line so far.
    pub(crate) fn stdout_lines(&self) -> Vec<String> {
        self.out.lock().unwrap().clone()
    }

    /// Every stderr line so far.
    pub(crate) fn stderr_lines(&self) -> Vec<String> {
        self.err.lock().unwrap().clone()
    }

    /// stdout and stderr so far, for failure messages.
    pub(crate) fn dump(&self) -> String {
        format!(
            "--- stdout ---\n{}\n--- stderr ---\n{}",
            self.out.lock().unwrap().join("\n"),
            self.err.lock().unwrap().join("\n")
        )
    }

    /// Waits until some stdout line satisfies `pred` (true) or `timeout` passes / the
    /// process ends without it (false).
    pub(crate) fn wait_line(&mut self, pred: impl Fn(&str) -> bool, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        loop {
            if self.out.lock().unwrap().iter().any(|l| pred(l)) {
                return true;
            }
            if Instant::now() >= end {
                return false;
            }
            if let Ok(Some(_)) = self.child.0.try_wait() {
                // Let the reader threads drain what is left, then look once more.
                std::thread::sleep(Duration::from_millis(50));
                return self.out.lock().unwrap().iter().any(|l| pred(l));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the process to exit within `timeout`; `None` if it is still running.
    pub(crate) fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = self.child.0.try_wait() {
                self.join_readers();
                return Some(st);
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL and reap.
    pub(crate) fn kill(&mut self) {
        let _ = self.child.0.kill();
        let _ = self.child.0.wait();
        self.join_readers();
    }

    fn join_readers(&mut self) {
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
    }
}

/// True for the lines `mosquitto_sub -d` prints about the protocol (not messages).
pub(crate) fn is_debug_line(l: &str) -> bool {
    l.starts_with("Client ") || l.starts_with("Subscribed (mid") || l.starts_with("Timed out")
}

/// `mosquitto_sub -h 127.0.0.1 -p PORT -d ARGS...`, returned once the SUBACK arrived
/// (panics when it does not within 5 s).
#[track_caller]
pub(crate) fn mosq_sub(broker: &Broker, args: &[&str]) -> Proc {
    let mut p = mosq_sub_nowait(broker, args);
    wait_subscribed(&mut p, broker, args, Duration::from_secs(5));
    p
}

/// Waits (at most `limit`) until the `mosquitto_sub -d` `p`, started with `args`, got
/// its SUBACK; panics saying so when it did not.
#[track_caller]
pub(crate) fn wait_subscribed(p: &mut Proc, broker: &Broker, args: &[&str], limit: Duration) {
    assert!(
        p.wait_line(|l| l.starts_with("Subscribed (mid"), limit),
        "mosquitto_sub {args:?} did not subscribe\n{}\nbroker log:\n{}",
        p.dump(),
        broker.log()
    );
}

/// `mosquitto_sub -h 127.0.0.1 -p PORT -d ARGS...`, not waiting for anything.
pub(crate) fn mosq_sub_nowait(broker: &Broker, args: &[&str]) -> Proc {
    mosq_sub_on(broker.port(), args)
}

/// `mosquitto_sub -h 127.0.0.1 -p PORT -d ARGS...` on `port` (the plain listener's or
/// another one, a TLS listener's), not waiting for anything.
///
/// Run under `stdbuf -oL`: piped, mosquitto_sub's stdout is block-buffered and its debug
/// lines (the SUBACK we wait for) would only show when a message is printed.
pub(crate) fn mosq_sub_on(port: u16, args: &[&str]) -> Proc {
    let port = port.to_string();
    Proc::spawn(
        Command::new("stdbuf")
            .args(["-oL", "mosquitto_sub", "-h", "127.0.0.1", "-p", &port, "-d"])
            .args(args),
    )
}

/// True when mosquitto_pub, mosquitto_sub and stdbuf can run (same CI rule as
/// [`mote_tests::require_tool`]).
pub(crate) fn have_clients() -> bool {
    mote_tests::require_tool("mosquitto_sub", &["--help"])
        && mote_tests::require_tool("stdbuf", &["--version"])
}

/// The message lines (not debug lines) `mosquitto_sub` printed so far.
pub(crate) fn messages(p: &Proc) -> Vec<String> {
    p.stdout_lines()
        .into_iter()
        .filter(|l| !is_debug_line(l))
        .collect()
}

/// Waits until `p` printed at least `n` message lines (false on timeout).
pub(crate) fn wait_messages(p: &mut Proc, n: usize, timeout: Duration) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if messages(p).len() >= n {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs `mosquitto_pub -h 127.0.0.1 -p PORT ARGS...` to completion (10 s at most) and
/// asserts it succeeded.
#[track_caller]
pub(crate) fn mosq_pub(broker: &Broker, args: &[&str]) {
    let port = broker.port().to_string();
    let mut p = Proc::spawn(
        Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &port])
            .args(args),
    );
    let st = p.wait_exit(Duration::from_secs(10));
    assert!(
        st.is_some_and(|s| s.success()),
        "mosquitto_pub {args:?} failed: {st:?}\n{}\nbroker log:\n{}",
        p.dump(),
        broker.log()
    );
}

// ---------------------------------------------------------------------------------------
// Raw MQTT client
// ---------------------------------------------------------------------------------------

/// One frame as received: its bytes, decoded on demand.
#[derive(Debug, Clone)]
pub(crate) struct Frame {
    /// The whole frame, fixed header included.
    pub(crate) bytes: Vec<u8>,
    /// Protocol to decode it with.
    pub(crate) protocol: Protocol,
}

impl Frame {
    /// Packet type (high nibble of the first byte).
    pub(crate) fn kind(&self) -> u8 {
        self.bytes[0] >> 4
    }

    /// Decodes the frame; panics (naming the bytes) when the codec refuses it.
    #[track_caller]
    pub(crate) fn packet(&self) -> Packet<'_> {
        match mote_codec::decode(&self.bytes, self.protocol, u32::MAX) {
            Ok(Some((p, _))) => p,
            other => panic!("cannot decode frame {:02x?}: {other:?}", self.bytes),
        }
    }

    /// The frame's body (after the fixed header).
    pub(crate) fn body(&self) -> &[u8] {
        let h = mote_codec::check(&self.bytes, u32::MAX).unwrap().unwrap();
        &self.bytes[h.header_len..]
    }

    /// For a DISCONNECT: its reason code, read from the bytes (0 when absent). Done by
    /// hand so reason codes the codec's DISCONNECT table lacks still show.
    pub(crate) fn disconnect_reason(&self) -> Option<u8> {
        (self.kind() == 14).then(|| self.body().first().copied().unwrap_or(0))
    }

    /// The PUBLISH in this frame, owned; panics if it is another packet.
    #[track_caller]
    pub(crate) fn publish(&self) -> Msg {
        match self.packet() {
            Packet::Publish(p) => Msg::from(&p),
            _ => panic!("expected PUBLISH, got {}", self.describe()),
        }
    }

    /// A short description for failure messages.
    pub(crate) fn describe(&self) -> String {
        let name = [
            "?",
            "CONNECT",
            "CONNACK",
            "PUBLISH",
            "PUBACK",
            "PUBREC",
            "PUBREL",
            "PUBCOMP",
            "SUBSCRIBE",
            "SUBACK",
            "UNSUBSCRIBE",
            "UNSUBACK",
            "PINGREQ",
            "PINGRESP",
            "DISCONNECT",
            "AUTH",
        ][usize::from(self.kind())];
        format!("{name} {:02x?}", &self.bytes[..self.bytes.len().min(48)])
    }
}

/// A received PUBLISH, owned.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Msg {
    pub(crate) topic: String,
    pub(crate) payload: Vec<u8>,
    pub(crate) qos: QoS,
    pub(crate) dup: bool,
    pub(crate) retain: bool,
    pub(crate) packet_id: u16,
    pub(crate) topic_alias: Option<u16>,
    pub(crate) sub_ids: Vec<u32>,
    pub(crate) expiry: Option<u32>,
    pub(crate) user_properties: Vec<(String, String)>,
    pub(crate) content_type: Option<String>,
    pub(crate) response_topic: Option<String>,
    pub(crate) correlation_data: Option<Vec<u8>>,
}

impl From<&Publish<'_>> for Msg {
    fn from(p: &Publish<'_>) -> Msg {
        let pr = &p.properties;
        Msg {
            topic: p.topic.to_owned(),
            payload: p.payload.to_vec(),
            qos: p.qos,
            dup: p.dup,
            retain: p.retain,
            packet_id: p.packet_id,
            topic_alias: pr.topic_alias(),
            sub_ids: pr.subscription_identifiers().iter().collect(),
            expiry: pr.message_expiry_interval(),
            user_properties: pr
                .user_properties()
                .iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            content_type: pr.content_type().map(str::to_owned),
            response_topic: pr.response_topic().map(str::to_owned),
            correlation_data: pr.correlation_data().map(<[u8]>::to_vec),
        }
    }
}

/// What a read gave.
#[derive(Debug)]
pub(crate) enum Recv {
    /// A complete frame.
    Frame(Frame),
    /// The peer closed the connection (EOF or reset).
    Closed,
    /// Nothing complete arrived in time.
    Timeout,
}

/// A blocking MQTT connection driven by hand.
#[derive(Debug)]
pub(crate) struct Raw {
    pub(crate) stream: TcpStream,
    pub(crate) protocol: Protocol,
    buf: Vec<u8>,
    closed: bool,
}

/// How long tests wait for something that should arrive.
pub(crate) const WAIT: Duration = Duration::from_secs(5);
/// How long tests wait to be sure something does not arrive.
pub(crate) const QUIET: Duration = Duration::from_millis(500);

impl Raw {
    /// Opens a TCP connection (nothing sent yet).
    pub(crate) fn open(addr: SocketAddr, protocol: Protocol) -> Raw {
        let stream = TcpStream::connect(addr).expect("connect to broker");
        stream.set_nodelay(true).unwrap();
        stream
            .set_write_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        Raw {
            stream,
            protocol,
            buf: Vec::new(),
            closed: false,
        }
    }

    /// Sends raw bytes; returns false when the socket refused them (peer gone).
    pub(crate) fn send_raw(&mut self, bytes: &[u8]) -> bool {
        self.stream.write_all(bytes).is_ok()
    }

    /// Encodes and sends `p` with the connection's protocol; panics when the write fails.
    #[track_caller]
    pub(crate) fn send(&mut self, p: &Packet<'_>) {
        let bytes = encode(p, self.protocol);
        assert!(self.send_raw(&bytes), "write of {p:?} failed");
    }

    /// Reads the next frame within `timeout`.
    pub(crate) fn recv(&mut self, timeout: Duration) -> Recv {
        let end = Instant::now() + timeout;
        loop {
            if let Ok(Some(h)) = mote_codec::check(&self.buf, u32::MAX) {
                if self.buf.len() >= h.frame_len() {
                    let bytes: Vec<u8> = self.buf.drain(..h.frame_len()).collect();
                    return Recv::Frame(Frame {
                        bytes,
                        protocol: self.protocol,
                    });
                }
            }
            if self.closed {
                return Recv::Closed;
            }
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Recv::Timeout;
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            let mut chunk = [0u8; 16 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => self.closed = true,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => self.closed = true,
            }
        }
    }

    /// The next frame; panics when the connection closes or nothing comes within `WAIT`.
    #[track_caller]
    pub(crate) fn expect(&mut self) -> Frame {
        match self.recv(WAIT) {
            Recv::Frame(f) => f,
            other => panic!("expected a packet, got {other:?}"),
        }
    }

    /// The next frame, which must be of packet type `kind`.
    #[track_caller]
    pub(crate) fn expect_kind(&mut self, kind: u8) -> Frame {
        let f = self.expect();
        assert_eq!(f.kind(), kind, "unexpected packet: {}", f.describe());
        f
    }

    /// The next PUBLISH (panics on anything else, a close or a timeout).
    #[track_caller]
    pub(crate) fn expect_publish(&mut self) -> Msg {
        self.expect_kind(3).publish()
    }

    /// Asserts nothing arrives for `QUIET` (and the connection stays open).
    #[track_caller]
    pub(crate) fn expect_nothing(&mut self) {
        match self.recv(QUIET) {
            Recv::Timeout => {}
            Recv::Frame(f) => panic!("expected nothing, got {}", f.describe()),
            Recv::Closed => panic!("expected nothing, but the connection was closed"),
        }
    }

    /// Reads until the broker closes the connection (within `timeout`), returning the
    /// frames that came before the close. Panics when it stays open.
    #[track_caller]
    pub(crate) fn expect_closed_within(&mut self, timeout: Duration) -> Vec<Frame> {
        let end = Instant::now() + timeout;
        let mut frames = Vec::new();
        loop {
            match self.recv(end.saturating_duration_since(Instant::now())) {
                Recv::Frame(f) => frames.push(f),
                Recv::Closed => return frames,
                Recv::Timeout => panic!(
                    "connection still open after {timeout:?}; got {:?}",
                    frames.iter().map(Frame::describe).collect::<Vec<_>>()
                ),
            }
        }
    }

    /// Expects the broker to close the connection, sending nothing but (v5) a DISCONNECT
    /// first; returns that DISCONNECT's reason code, `None` when there was none.
    #[track_caller]
    pub(crate) fn expect_close(&mut self) -> Option<u8> {
        let frames = self.expect_closed_within(WAIT);
        let described: Vec<String> = frames.iter().map(Frame::describe).collect();
        assert!(
            frames.len() <= 1,
            "more than one packet before close: {described:?}"
        );
        frames.first().map(|f| {
            f.disconnect_reason()
                .unwrap_or_else(|| panic!("expected DISCONNECT, got {described:?}"))
        })
    }

    /// Sends PUBLISH.
    pub(crate) fn publish(&mut self, topic: &str, payload: &[u8], qos: QoS, packet_id: u16) {
        self.send(&Packet::Publish(publish(topic, payload, qos, packet_id)));
    }

    /// Sends PUBLISH and completes its QoS 1/2 flow with the broker.
    #[track_caller]
    pub(crate) fn publish_acked(&mut self, p: &Publish<'_>) {
        self.send(&Packet::Publish(*p));
        match p.qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => {
                self.expect_kind(4);
            }
            QoS::ExactlyOnce => {
                self.expect_kind(5);
                self.send(&Packet::PubRel(Ack::new(p.packet_id)));
                self.expect_kind(7);
            }
        }
    }

    /// Acknowledges a received QoS 1/2 PUBLISH (the whole flow for QoS 2).
    #[track_caller]
    pub(crate) fn ack(&mut self, m: &Msg) {
        match m.qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.send(&Packet::PubAck(Ack::new(m.packet_id))),
            QoS::ExactlyOnce => {
                self.send(&Packet::PubRec(Ack::new(m.packet_id)));
                let rel = self.expect_kind(6);
                match rel.packet() {
                    Packet::PubRel(a) => assert_eq!(a.packet_id, m.packet_id),
                    _ => unreachable!(),
                }
                self.send(&Packet::PubComp(Ack::new(m.packet_id)));
            }
        }
    }

    /// Subscribes and returns the SUBACK codes.
    #[track_caller]
    pub(crate) fn subscribe_with(
        &mut self,
        packet_id: u16,
        filters: &[(&str, SubOptions)],
        sub_id: Option<u32>,
    ) -> Vec<u8> {
        let entries: Vec<SubscribeFilter<'_>> = filters
            .iter()
            .map(|(f, o)| SubscribeFilter {
                filter: f,
                options: *o,
            })
            .collect();
        let ids: Vec<u32> = sub_id.into_iter().collect();
        let properties = PropValues {
            subscription_identifiers: mote_codec::PropList::Slice(&ids),
            ..PropValues::default()
        };
        self.send(&Packet::Subscribe(Subscribe {
            packet_id,
            properties: Properties::Values(&properties),
            filters: mote_codec::List::Slice(&entries),
        }));
        let f = self.expect_kind(9);
        match f.packet() {
            Packet::SubAck(a) => {
                assert_eq!(a.packet_id, packet_id, "SUBACK packet id");
                a.codes.to_vec()
            }
            _ => unreachable!(),
        }
    }

    /// Subscribes to one filter at `qos` and asserts it was granted.
    #[track_caller]
    pub(crate) fn subscribe(&mut self, filter: &str, qos: QoS) {
        let codes = self.subscribe_with(1, &[(filter, SubOptions::qos(qos))], None);
        assert_eq!(codes, vec![qos as u8], "SUBACK for {filter}");
    }

    /// Sends DISCONNECT (reason 0) and waits for the broker to close.
    #[track_caller]
    pub(crate) fn disconnect(mut self) {
        self.send(&Packet::Disconnect(mote_codec::Disconnect::new(0)));
        let _ = self.expect_closed_within(WAIT);
    }
}

/// Encodes `p` for `protocol`.
pub(crate) fn encode(p: &Packet<'_>, protocol: Protocol) -> Vec<u8> {
    let protocol = match p {
        Packet::Connect(c) => c.protocol,
        _ => protocol,
    };
    let mut buf = vec![0u8; p.encoded_len(protocol)];
    let n = p.encode(protocol, &mut buf).expect("encode");
    buf.truncate(n);
    buf
}

/// A PUBLISH without properties.
pub(crate) fn publish<'a>(
    topic: &'a str,
    payload: &'a [u8],
    qos: QoS,
    packet_id: u16,
) -> Publish<'a> {
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

/// A CONNECT with keep alive 30 and nothing else.
pub(crate) fn connect_packet(
    protocol: Protocol,
    client_id: &str,
    clean_start: bool,
) -> Connect<'_> {
    Connect {
        protocol,
        clean_start,
        keep_alive: 30,
        properties: Properties::default(),
        client_id,
        will: None,
        username: None,
        password: None,
    }
}

/// A will on `topic` with `payload`, QoS 0, no properties.
pub(crate) fn will<'a>(topic: &'a str, payload: &'a [u8]) -> Will<'a> {
    Will {
        topic,
        payload,
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Properties::default(),
    }
}

/// Sends `c` on a new connection and returns it with the CONNACK frame (any code).
#[track_caller]
pub(crate) fn connect_raw(addr: SocketAddr, c: &Connect<'_>) -> (Raw, Frame) {
    let mut raw = Raw::open(addr, c.protocol);
    raw.send(&Packet::Connect(*c));
    let ack = raw.expect_kind(2);
    (raw, ack)
}

/// Connects with `c`, asserts success, and returns the connection and the CONNACK frame.
#[track_caller]
pub(crate) fn connect_with(addr: SocketAddr, c: &Connect<'_>) -> (Raw, Frame) {
    let (raw, ack) = connect_raw(addr, c);
    match ack.packet() {
        Packet::ConnAck(a) => assert_eq!(a.code, 0, "CONNACK refused: {}", ack.describe()),
        _ => unreachable!(),
    }
    (raw, ack)
}

/// Connects with clean start and no properties; asserts success.
#[track_caller]
pub(crate) fn connect(addr: SocketAddr, protocol: Protocol, client_id: &str) -> Raw {
    connect_with(addr, &connect_packet(protocol, client_id, true)).0
}

/// The next PUBLISH, acknowledged; asserts its topic.
#[track_caller]
pub(crate) fn expect_topic(raw: &mut Raw, topic: &str) -> Msg {
    let m = raw.expect_publish();
    raw.ack(&m);
    assert_eq!(m.topic, topic, "unexpected message {m:?}");
    m
}

/// PINGREQ; asserts the PINGRESP (the connection is still up).
#[track_caller]
pub(crate) fn ping(raw: &mut Raw, who: &str) {
    assert!(raw.send_raw(&[0xC0, 0x00]), "{who}: PINGREQ not sent");
    match raw.recv(WAIT) {
        Recv::Frame(f) if f.kind() == 13 => {}
        other => panic!("{who}: expected PINGRESP, got {other:?}"),
    }
}

/// The session-present flag and code of a CONNACK frame.
#[track_caller]
pub(crate) fn connack(f: &Frame) -> (bool, u8) {
    match f.packet() {
        Packet::ConnAck(a) => (a.session_present, a.code),
        _ => panic!("expected CONNACK, got {}", f.describe()),
    }
}

/// Properties with a session expiry interval (kept for the life of the test process,
/// so a packet holding them can be returned).
pub(crate) fn expiry_props(secs: u32) -> &'static PropValues<'static> {
    Box::leak(Box::new(PropValues {
        session_expiry_interval: Some(secs),
        ..PropValues::default()
    }))
}

/// Publishes `count` QoS 1 messages numbered from 0 (the payload is the number) to
/// `topic` with up to 50 in flight, until told to stop, all are acknowledged, or the
/// broker goes (it may be killed at any moment); returns the numbers whose PUBACK
/// arrived. A PUBACK refusing one fails the test.
#[allow(dead_code)]
pub(crate) fn produce_numbered(
    mut raw: Raw,
    topic: &str,
    count: u32,
    stop: &std::sync::atomic::AtomicBool,
) -> std::collections::BTreeSet<u32> {
    use std::sync::atomic::Ordering;
    let mut in_flight: std::collections::HashMap<u16, u32> = std::collections::HashMap::new();
    let mut acked = std::collections::BTreeSet::new();
    let mut next = 0u32;
    loop {
        while next < count && in_flight.len() < 50 && !stop.load(Ordering::Relaxed) {
            let id = (next % 60_000) as u16 + 1;
            let payload = format!("{next}");
            let p = Packet::Publish(publish(topic, payload.as_bytes(), QoS::AtLeastOnce, id));
            if !raw.send_raw(&encode(&p, Protocol::V5)) {
                return acked;
            }
            in_flight.insert(id, next);
            next += 1;
        }
        if in_flight.is_empty() {
            return acked;
        }
        match raw.recv(Duration::from_secs(2)) {
            Recv::Frame(f) if f.kind() == 4 => {
                let Packet::PubAck(a) = f.packet() else {
                    unreachable!()
                };
                assert_eq!(a.reason, 0, "{topic}: publish refused");
                if let Some(n) = in_flight.remove(&a.packet_id) {
                    acked.insert(n);
                }
            }
            Recv::Frame(_) => {}
            Recv::Closed | Recv::Timeout => return acked,
        }
    }
}
