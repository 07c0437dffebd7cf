//! Hostile-network faults of the connection runtime (issue #10): clients that reset their
//! sockets, stop reading, hold thousands of idle sockets, send huge CONNECTs slowly, keep
//! writing after the broker closed them, or race each other across connections.
//!
//! Black-box: the real `mote` binary, raw sockets (`socket2` where a test needs a source
//! address, a small receive buffer or a reset). The tests of this file take one lock each
//! so they run one at a time: several open thousands of sockets or measure the broker's
//! memory or timing, and would disturb each other.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::{connect, connect_packet, encode, publish, will, Raw, Recv};
use mote_codec::{
    reason, Packet, Properties, Protocol, Publish, QoS, SubOptions, Subscribe, SubscribeFilter,
};
use mote_tests::harness::{Need, Suite, PROC_STATUS};
use mote_tests::Broker;

fn main() -> std::process::ExitCode {
    Suite::new()
        .tests(
            &[],
            mote_tests::tests![
                reset_after_connect_fires_every_will_and_ends_every_session,
                reset_while_broker_writes_takes_member_out_of_shared_group,
                pending_sockets_per_address_are_capped,
                client_still_writing_reads_the_disconnect_reason,
                subscribe_sent_before_publish_is_handled_first,
                subscribe_from_a_dozing_client_before_publish_from_an_awake_one,
                one_subscribe_of_100000_filters_over_1000_retained_stays_bounded,
                a_publisher_over_its_rate_is_slowed_not_disconnected,
            ],
        )
        .tests(
            &[FDS_FOR_IDLE_SOCKETS],
            mote_tests::tests![
                idle_sockets_cannot_lock_out_a_live_client,
                reconnecting_idle_sockets_cannot_lock_out_live_clients,
                one_publish_wakes_2000_dozing_subscribers_and_stalls_nobody,
            ],
        )
        .tests(
            &[PROC_STATUS],
            mote_tests::tests![
                huge_connect_sent_slowly_pins_no_memory,
                buffers_shrink_after_a_large_packet,
            ],
        )
        .run()
}
use socket2::{Domain, SockRef, Socket, Type};

const V5: Protocol = Protocol::V5;
const V311: Protocol = Protocol::V311;

/// One test at a time (see the module docs).
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

// ---------------------------------------------------------------------------- helpers

/// Closes `s` with a reset (SO_LINGER 0), as a client whose network vanished does.
fn reset(s: TcpStream) {
    let _ = SockRef::from(&s).set_linger(Some(Duration::ZERO));
    drop(s);
}

/// A TCP connection to `dst` from the loopback address `src` (all of 127.0.0.0/8 is
/// loopback on Linux, so a test can look like many hosts).
fn connect_from(src: Ipv4Addr, dst: SocketAddr) -> std::io::Result<TcpStream> {
    let s = Socket::new(Domain::IPV4, Type::STREAM, Some(socket2::Protocol::TCP))?;
    s.bind(&SocketAddr::new(IpAddr::V4(src), 0).into())?;
    s.connect_timeout(&dst.into(), Duration::from_secs(10))?;
    let s: TcpStream = s.into();
    s.set_nodelay(true)?;
    Ok(s)
}

/// A [`Raw`] client over `stream` (already connected to `addr`). `Raw` has no
/// constructor from a stream, so one is opened and its stream replaced (the spare
/// connection is closed at once).
fn raw_on(addr: SocketAddr, stream: TcpStream, protocol: Protocol) -> Raw {
    let mut raw = Raw::open(addr, protocol);
    stream.set_nodelay(true).unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    raw.stream = stream;
    raw
}

/// Subscribes `raw` to `filter` without waiting for the SUBACK.
fn send_subscribe(raw: &mut Raw, packet_id: u16, filter: &str, qos: QoS) {
    let entries = [SubscribeFilter {
        filter,
        options: SubOptions::qos(qos),
    }];
    raw.send(&Packet::Subscribe(Subscribe {
        packet_id,
        properties: Properties::default(),
        filters: mote_codec::List::Slice(&entries),
    }));
}

/// The broker's resident memory in bytes (`VmRSS` of `/proc/<pid>/status`).
fn vm_rss(broker: &Broker) -> u64 {
    let pid = broker.pid().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

/// The soft limit on open files of this process (the broker inherits it), if readable.
fn open_file_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line.split_whitespace().nth(3)?;
    if soft == "unlimited" {
        return Some(u64::MAX);
    }
    soft.parse().ok()
}

/// `Ok` when the idle-socket tests' descriptors are available to this process and the
/// broker (which inherits the limit), else the reason and the fix.
fn enough_fds() -> Result<(), String> {
    let needed = IDLE_SOCKETS as u64 + 1000;
    match open_file_limit() {
        Some(limit) if limit < needed => Err(format!(
            "open-file limit is {limit}, this test needs {needed}; raise it with `ulimit -n {needed}`"
        )),
        _ => Ok(()),
    }
}

/// The idle-socket tests' need: enough open files.
const FDS_FOR_IDLE_SOCKETS: Need = Need::Check {
    what: "open-file limit",
    check: enough_fds,
};

/// How a connection ended, seen from the client.
#[derive(Debug, PartialEq, Eq)]
enum Ending {
    /// Orderly close (FIN): everything the broker sent was readable.
    Eof,
    /// A reset or another error.
    Reset(std::io::ErrorKind),
    /// Still open when the time was up.
    Open,
}

/// Reads `s` until it closes or `timeout` passes; the bytes read and how it ended.
fn read_to_end(s: &mut TcpStream, timeout: Duration) -> (Vec<u8>, Ending) {
    let end = Instant::now() + timeout;
    let mut data = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (data, Ending::Open);
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut chunk) {
            Ok(0) => return (data, Ending::Eof),
            Ok(n) => data.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return (data, Ending::Reset(e.kind())),
        }
    }
}

/// Splits `bytes` into MQTT frames (a torn last frame is left out).
fn frames(mut bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while let Ok(Some(h)) = mote_codec::check(bytes, u32::MAX) {
        if bytes.len() < h.frame_len() {
            break;
        }
        out.push(bytes[..h.frame_len()].to_vec());
        bytes = &bytes[h.frame_len()..];
    }
    out
}

/// The latest values of the `$SYS` topics `mon` subscribed to, and the other messages.
#[derive(Debug, Default)]
struct Watch {
    sys: std::collections::HashMap<String, u64>,
    others: Vec<common::Msg>,
}

impl Watch {
    /// Reads what `mon` receives until `done` holds or `timeout` passes.
    fn until(&mut self, mon: &mut Raw, timeout: Duration, done: impl Fn(&Watch) -> bool) {
        let end = Instant::now() + timeout;
        while !done(self) {
            match mon.recv(end.saturating_duration_since(Instant::now())) {
                Recv::Frame(f) if f.kind() == 3 => {
                    let m = f.publish();
                    if let Some(name) = m.topic.strip_prefix("$SYS/broker/") {
                        let v = String::from_utf8_lossy(&m.payload)
                            .parse()
                            .unwrap_or(u64::MAX);
                        self.sys.insert(name.to_owned(), v);
                    } else {
                        self.others.push(m);
                    }
                }
                Recv::Frame(_) => {}
                Recv::Closed | Recv::Timeout => return,
            }
        }
    }

    fn get(&self, name: &str) -> Option<u64> {
        self.sys.get(name).copied()
    }
}

// ------------------------------------------------------------- fault 1: zombie sessions

/// 200 clients send a CONNECT with a will and reset the socket at once (half of them
/// after a pause of 100 µs). Whether the broker's CONNACK write or its next read sees the
/// reset, the connection ends: every session the broker accepted publishes its will and
/// `$SYS/broker/clients/connected` falls back to the monitor alone. (Before the fix a
/// failed write returned without telling the core: sessions stayed "connected" forever
/// and their wills never fired.) The sessions persist (expiry 300 s), so
/// `$SYS/broker/clients/total` says how many CONNECTs the broker accepted: a reset can
/// reach the broker before it read the CONNECT, and then there is no session and no will.
fn reset_after_connect_fires_every_will_and_ends_every_session() {
    let _serial = serial();
    let broker = Broker::start_with(&["--memory"], Some("[mqtt]\nsys_interval_secs = 1\n"));
    let mut mon = connect(broker.addr, V5, "monitor");
    mon.subscribe("will/#", QoS::AtMostOnce);
    mon.subscribe("$SYS/broker/clients/+", QoS::AtMostOnce);
    let mut watch = Watch::default();
    watch.until(&mut mon, Duration::from_secs(5), |w| {
        w.get("clients/connected") == Some(1) && w.get("clients/total") == Some(1)
    });
    assert_eq!(
        watch.get("clients/connected"),
        Some(1),
        "baseline: the monitor alone"
    );

    const N: usize = 200;
    for i in 0..N {
        let id = format!("zombie-{i}");
        let topic = format!("will/{i}");
        let protocol = if i % 2 == 0 { V5 } else { V311 };
        let mut c = connect_packet(protocol, &id, protocol == V5);
        if protocol == V5 {
            c.properties = Properties::Values(common::expiry_props(300));
        }
        c.will = Some(will(&topic, b"gone"));
        let mut s = TcpStream::connect(broker.addr).unwrap();
        s.write_all(&encode(&Packet::Connect(c), protocol)).unwrap();
        if i % 4 >= 2 {
            let t = Instant::now();
            while t.elapsed() < Duration::from_micros(100) {
                std::hint::spin_loop();
            }
        }
        reset(s);
    }

    watch.until(&mut mon, Duration::from_secs(15), |w| {
        let accepted = w.get("clients/total").unwrap_or(1).saturating_sub(1) as usize;
        w.get("clients/connected") == Some(1) && w.others.len() >= accepted && accepted > 0
    });
    let accepted = watch.get("clients/total").unwrap_or(1).saturating_sub(1) as usize;
    let wills: HashSet<&str> = watch.others.iter().map(|m| m.topic.as_str()).collect();
    for m in &watch.others {
        assert_eq!(m.payload, b"gone", "unexpected message on {}", m.topic);
    }
    eprintln!("{accepted} of {N} CONNECTs were accepted before their reset");
    assert!(
        accepted >= N / 4,
        "only {accepted} of {N} CONNECTs reached the broker before their reset: too few \
         to test anything"
    );
    assert_eq!(
        watch.get("clients/connected"),
        Some(1),
        "$SYS/broker/clients/connected must return to the baseline of 1 ({} wills of \
         {accepted} accepted sessions)",
        wills.len()
    );
    assert_eq!(
        wills.len(),
        accepted,
        "wills published for {} of the {accepted} accepted sessions",
        wills.len()
    );
}

/// A shared-group member stops reading until the broker is stuck writing to it, then
/// resets. Its session must go offline, so every job published afterwards reaches the
/// healthy member. (Before the fix the failed write left it "online" and the group kept
/// giving it half of the jobs.)
fn reset_while_broker_writes_takes_member_out_of_shared_group() {
    let _serial = serial();
    let broker = Broker::start();
    let mut healthy = connect(broker.addr, V5, "healthy");
    healthy.subscribe("$share/g/jobs", QoS::AtLeastOnce);

    // The stalled member: a tiny receive buffer so the broker's writes block soon.
    let mut stalled = Raw::open(broker.addr, V5);
    SockRef::from(&stalled.stream)
        .set_recv_buffer_size(4096)
        .unwrap();
    stalled.send(&Packet::Connect(connect_packet(V5, "stalled", true)));
    stalled.expect_kind(2);
    stalled.subscribe("$share/g/jobs", QoS::AtLeastOnce);

    // 200 jobs of 128 KiB: half (12.8 MB) go to the member that does not read, far more
    // than the socket buffers hold, so the broker is left blocked writing to it.
    let mut producer = connect(broker.addr, V5, "producer");
    let big = vec![b'x'; 128 * 1024];
    let reader = {
        // The healthy member reads (and acknowledges) while the producer publishes.
        std::thread::spawn(move || {
            let mut after = HashSet::new();
            let end = Instant::now() + Duration::from_secs(30);
            while after.len() < 40 && Instant::now() < end {
                match healthy.recv(Duration::from_millis(200)) {
                    Recv::Frame(f) if f.kind() == 3 => {
                        let m = f.publish();
                        healthy.ack(&m);
                        if m.payload.starts_with(b"after-") {
                            after.insert(m.payload.clone());
                        }
                    }
                    Recv::Closed => break,
                    _ => {}
                }
            }
            after.len()
        })
    };
    for i in 0..200u16 {
        producer.publish_acked(&publish("jobs", &big, QoS::AtLeastOnce, i + 1));
    }
    std::thread::sleep(Duration::from_millis(500));
    let Raw { stream, .. } = stalled;
    reset(stream);
    std::thread::sleep(Duration::from_millis(500));

    for i in 0..40u16 {
        let payload = format!("after-{i}");
        producer.publish_acked(&publish(
            "jobs",
            payload.as_bytes(),
            QoS::AtLeastOnce,
            1000 + i,
        ));
    }
    let got = reader.join().unwrap();
    assert_eq!(
        got, 40,
        "jobs published after the member reset that reached the healthy member"
    );
}

// ------------------------------------------------------------ fault 5: slot exhaustion

/// Idle sockets per attacking address (below the default per-IP caps).
const PER_ADDRESS: usize = 40;
/// The attacker's address for socket `k`: 127.1.X.Y, `PER_ADDRESS` sockets each.
fn attacker_ip(k: usize) -> Ipv4Addr {
    let a = k / PER_ADDRESS;
    Ipv4Addr::new(127, 1, (a / 250) as u8, (a % 250) as u8 + 1)
}

/// Connections waiting in the listen queue of the broker's listener at `addr` (the
/// `rx_queue` of its LISTEN line in `/proc/net/tcp`), if it can be read.
fn accept_queue(addr: SocketAddr) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let local = format!(":{:04X}", addr.port());
    table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        // sl local_address rem_address st tx_queue:rx_queue ...; 0A = LISTEN
        (f.get(1)?.ends_with(&local) && *f.get(3)? == "0A")
            .then(|| u64::from_str_radix(f.get(4)?.split(':').nth(1)?, 16).ok())?
    })
}

/// Paces a burst of connections: waits (at most 2 s) until the broker has taken most
/// of its listen queue, so no SYN is dropped and retried a second later.
fn wait_for_accepts(addr: SocketAddr) {
    let end = Instant::now() + Duration::from_secs(2);
    while accept_queue(addr).is_some_and(|q| q > 128) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A socket held by the attacker; `connected` ones sent a keep-alive-0 CONNECT.
struct Idle {
    src: Ipv4Addr,
    stream: TcpStream,
    connect: Option<Vec<u8>>,
}

/// Opens `n` idle sockets: the first half send a keep-alive-0 CONNECT (3.1.1 and v5
/// alternately) and get their CONNACK; the other half send nothing.
fn open_idle(addr: SocketAddr, n: usize) -> Vec<Idle> {
    let mut socks = Vec::with_capacity(n);
    for k in 0..n {
        if k % 64 == 0 {
            wait_for_accepts(addr);
        }
        let src = attacker_ip(k);
        let stream = connect_from(src, addr).unwrap_or_else(|e| panic!("socket {k}: {e}"));
        let connect = (k < n / 2).then(|| {
            let protocol = if k % 2 == 0 { V311 } else { V5 };
            let id = format!("idle-{k}");
            let mut c = connect_packet(protocol, &id, true);
            c.keep_alive = 0;
            encode(&Packet::Connect(c), protocol)
        });
        if let Some(c) = &connect {
            let mut s = &stream;
            s.write_all(c).unwrap();
        }
        socks.push(Idle {
            src,
            stream,
            connect,
        });
    }
    for (k, s) in socks
        .iter_mut()
        .enumerate()
        .filter(|(_, s)| s.connect.is_some())
    {
        let mut ack = [0u8; 4];
        s.stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        s.stream
            .read_exact(&mut ack)
            .unwrap_or_else(|e| panic!("CONNACK for idle client {k}: {e}"));
        assert_eq!(ack[0], 0x20, "idle client {k} got {ack:02x?}");
    }
    socks
}

/// 2,000 subscribers that went quiet doze without a task each (`runtime/doze.rs`). One
/// PUBLISH then wakes all of them at once: the dozer sends each back to a task of its
/// own, every one gets the message exactly once, and a client that pings meanwhile (its
/// connection dozes too, so its PINGREQ goes through the same dozer) is answered within
/// a second.
fn one_publish_wakes_2000_dozing_subscribers_and_stalls_nobody() {
    const N: usize = 2000;
    let _serial = serial();
    let broker = Broker::start_with(&["--memory"], Some("[mqtt]\nmax_connections = 5000\n"));
    let topic = "storm/t";
    let entries = [SubscribeFilter {
        filter: topic,
        options: SubOptions::qos(QoS::AtMostOnce),
    }];
    let subscribe = encode(
        &Packet::Subscribe(Subscribe {
            packet_id: 1,
            properties: Properties::default(),
            filters: mote_codec::List::Slice(&entries),
        }),
        V311,
    );
    let mut subs = Vec::with_capacity(N);
    for k in 0..N {
        if k % 64 == 0 {
            wait_for_accepts(broker.addr);
        }
        let stream = connect_from(attacker_ip(k), broker.addr)
            .unwrap_or_else(|e| panic!("subscriber {k}: {e}"));
        let id = format!("storm-{k}");
        let mut c = connect_packet(V311, &id, true);
        c.keep_alive = 0;
        let mut bytes = encode(&Packet::Connect(c), V311);
        bytes.extend_from_slice(&subscribe);
        (&stream).write_all(&bytes).unwrap();
        subs.push(stream);
    }
    // CONNACK (4 bytes) and SUBACK (5) for each.
    for (k, s) in subs.iter_mut().enumerate() {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut acks = [0u8; 9];
        s.read_exact(&mut acks)
            .unwrap_or_else(|e| panic!("CONNACK and SUBACK for subscriber {k}: {e}"));
        assert_eq!(
            (acks[0], acks[4], acks[8]),
            (0x20, 0x90, 0x00),
            "{k}: {acks:02x?}"
        );
    }
    let mut pinger = connect(broker.addr, V5, "storm-pinger");
    let mut publisher = connect(broker.addr, V311, "storm-publisher");
    // Past the 1 s after which a quiet connection dozes.
    std::thread::sleep(Duration::from_millis(1500));
    let t0 = Instant::now();
    publisher.publish(topic, b"wake", QoS::AtMostOnce, 0);
    pinger.send(&Packet::PingReq);
    pinger.expect_kind(13);
    let ping = t0.elapsed();
    // The PUBLISH as each subscriber reads it: 0x30, remaining length 13, the topic, the
    // payload. Then nothing more.
    let mut want = vec![0x30, 13, 0, 7];
    want.extend_from_slice(topic.as_bytes());
    want.extend_from_slice(b"wake");
    for (k, s) in subs.iter_mut().enumerate() {
        let mut got = [0u8; 15];
        s.read_exact(&mut got)
            .unwrap_or_else(|e| panic!("subscriber {k} got no PUBLISH: {e}"));
        assert_eq!(&got[..], &want[..], "subscriber {k}");
    }
    let all = t0.elapsed();
    for (k, s) in subs.iter_mut().enumerate().step_by(97) {
        s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        let mut more = [0u8; 1];
        assert!(
            s.read(&mut more).is_err(),
            "subscriber {k} got a second packet"
        );
    }
    eprintln!(
        "{N} dozing subscribers: PINGREQ answered after {ping:?}, all delivered after {all:?}"
    );
    assert!(
        ping < Duration::from_secs(1),
        "PINGREQ answered after {ping:?}"
    );
}

/// A legitimate client (127.0.0.1) connects; returns how long until its CONNACK, or
/// why it got none.
fn legit_connect(
    addr: SocketAddr,
    id: &str,
    protocol: Protocol,
) -> Result<(Duration, Raw), String> {
    let started = Instant::now();
    let mut raw = Raw::open(addr, protocol);
    raw.send_raw(&encode(
        &Packet::Connect(connect_packet(protocol, id, true)),
        protocol,
    ));
    match raw.recv(Duration::from_secs(3)) {
        Recv::Frame(f) if f.kind() == 2 => {
            let (_, code) = common::connack(&f);
            if code != 0 {
                return Err(format!("CONNACK refused with {code:#x}"));
            }
            Ok((started.elapsed(), raw))
        }
        other => Err(format!("no CONNACK: {other:?}")),
    }
}

/// Config of the slot tests: a long CONNECT timeout, so the idle sockets outlive the
/// test (the attacker's best case); every other limit at its default (max_connections
/// 10,000).
const SLOTS_CONFIG: &str = "[mqtt]\nconnect_timeout_ms = 120000\n";
const IDLE_SOCKETS: usize = 10_000;

/// 10,000 idle sockets fill the connection table (half before CONNECT, half after a
/// keep-alive-0 CONNECT, 3.1.1 and v5); a legitimate client must still get its CONNACK
/// within a second (it takes the place of the oldest socket that never sent CONNECT).
fn idle_sockets_cannot_lock_out_a_live_client() {
    let _serial = serial();
    let started = Instant::now();
    let broker = Broker::start_with(&["--memory"], Some(SLOTS_CONFIG));
    let socks = open_idle(broker.addr, IDLE_SOCKETS);
    eprintln!(
        "{IDLE_SOCKETS} idle sockets open after {:?}",
        started.elapsed()
    );
    for (i, protocol) in [V311, V5, V311, V5].into_iter().enumerate() {
        match legit_connect(broker.addr, &format!("legit-{i}"), protocol) {
            Ok((took, _raw)) => assert!(
                took < Duration::from_secs(1),
                "legitimate client {i} waited {took:?} for its CONNACK"
            ),
            Err(why) => panic!("legitimate client {i} locked out: {why}"),
        }
    }
    drop(socks);
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
}

/// Slowloris: the same 10,000 idle sockets, each reopened (and its CONNECT re-sent) as
/// soon as the broker closes it. 15 legitimate clients, one after another, must each get
/// their CONNACK within a second and stay connected.
fn reconnecting_idle_sockets_cannot_lock_out_live_clients() {
    let _serial = serial();
    let started = Instant::now();
    let broker = Broker::start_with(&["--memory"], Some(SLOTS_CONFIG));
    let addr = broker.addr;
    let socks = open_idle(addr, IDLE_SOCKETS);
    eprintln!(
        "{IDLE_SOCKETS} idle sockets open after {:?}",
        started.elapsed()
    );

    let stop = Arc::new(AtomicBool::new(false));
    let reopened = Arc::new(AtomicUsize::new(0));
    let mut watchers = Vec::new();
    let mut socks = socks.into_iter();
    for _ in 0..2 {
        let mut mine: Vec<Idle> = socks.by_ref().take(IDLE_SOCKETS / 2).collect();
        let (stop, reopened) = (stop.clone(), reopened.clone());
        watchers.push(std::thread::spawn(move || {
            for s in &mine {
                s.stream.set_nonblocking(true).unwrap();
            }
            let mut scratch = [0u8; 256];
            while !stop.load(Ordering::Relaxed) {
                for s in &mut mine {
                    let closed = match (&s.stream).read(&mut scratch) {
                        Ok(0) => true,
                        Ok(_) => false,
                        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
                    };
                    if !closed {
                        continue;
                    }
                    // Reopen at once, as an attacker would.
                    if let Ok(new) = connect_from(s.src, addr) {
                        if let Some(c) = &s.connect {
                            let _ = (&new).write_all(c);
                        }
                        let _ = new.set_nonblocking(true);
                        s.stream = new;
                        reopened.fetch_add(1, Ordering::Relaxed);
                    }
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }));
    }

    let mut live = Vec::new();
    let mut failures = Vec::new();
    for i in 0..15 {
        let protocol = if i % 2 == 0 { V311 } else { V5 };
        match legit_connect(addr, &format!("legit-{i}"), protocol) {
            Ok((took, raw)) if took < Duration::from_secs(1) => live.push(raw),
            Ok((took, _)) => failures.push(format!("client {i}: CONNACK after {took:?}")),
            Err(why) => failures.push(format!("client {i}: {why}")),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // The ones that got in are still connected (a PINGREQ is answered).
    for (i, raw) in live.iter_mut().enumerate() {
        raw.send(&Packet::PingReq);
        match raw.recv(Duration::from_secs(3)) {
            Recv::Frame(f) if f.kind() == 13 => {}
            other => failures.push(format!("live client {i} lost: {other:?}")),
        }
    }
    stop.store(true, Ordering::Relaxed);
    for w in watchers {
        w.join().unwrap();
    }
    eprintln!(
        "slowloris sockets reopened {} times",
        reopened.load(Ordering::Relaxed)
    );
    assert!(
        failures.is_empty(),
        "legitimate clients locked out: {failures:#?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
}

/// One address may hold only `max_pending_per_ip` sockets that have not sent CONNECT:
/// the next one from it is closed at once, while other addresses still get in.
fn pending_sockets_per_address_are_capped() {
    let _serial = serial();
    let broker = Broker::start_with(
        &["--memory"],
        Some("[mqtt]\nmax_pending_per_ip = 8\nconnect_timeout_ms = 60000\n"),
    );
    let src = Ipv4Addr::new(127, 3, 0, 1);
    let mut held: Vec<TcpStream> = (0..8)
        .map(|_| connect_from(src, broker.addr).unwrap())
        .collect();
    // Give the broker time to accept all eight before the ninth.
    std::thread::sleep(Duration::from_millis(300));
    let mut ninth = connect_from(src, broker.addr).unwrap();
    let (_, ending) = read_to_end(&mut ninth, Duration::from_secs(2));
    assert_ne!(
        ending,
        Ending::Open,
        "ninth pending socket from one address"
    );
    for (i, s) in held.iter_mut().enumerate() {
        let (_, ending) = read_to_end(s, Duration::from_millis(50));
        assert_eq!(ending, Ending::Open, "held pending socket {i}");
    }
    // Another address is not affected; and once a socket sends its CONNECT it no
    // longer counts as pending for its address.
    let other = connect_from(Ipv4Addr::new(127, 3, 0, 2), broker.addr).unwrap();
    let mut raw = raw_on(broker.addr, other, V311);
    raw.send(&Packet::Connect(connect_packet(
        V311,
        "other-address",
        true,
    )));
    raw.expect_kind(2);
    let mut first = raw_on(broker.addr, held.remove(0), V311);
    first.send(&Packet::Connect(connect_packet(V311, "was-pending", true)));
    first.expect_kind(2);
    let mut again = connect_from(src, broker.addr).unwrap();
    let (_, ending) = read_to_end(&mut again, Duration::from_millis(300));
    assert_eq!(
        ending,
        Ending::Open,
        "a pending slot of the address was freed by the CONNECT"
    );
}

// ------------------------------------------------------- fault 6: memory a client pins

/// 300 connections each send the first 900 KiB of a 1 MiB CONNECT, slowly. A client that
/// has not connected yet may send at most `max_connect_packet_size` (64 KiB by default),
/// so the broker closes each of them as soon as the fixed header announces 1 MiB, and its
/// resident memory grows by far less than the 300 × 1 MiB the partial packets would
/// take. Bound: 64 MiB of growth (the debug broker's 300 tasks and buffers need a few).
fn huge_connect_sent_slowly_pins_no_memory() {
    let _serial = serial();
    let broker = Broker::start();
    std::thread::sleep(Duration::from_millis(200));
    let before = vm_rss(&broker);
    const CONNS: usize = 300;
    const TOTAL: usize = 1024 * 1024;
    // Fixed header of a CONNECT whose Remaining Length makes it 1 MiB in all, then the
    // start of a v5 CONNECT body.
    let rl = TOTAL - 5;
    let mut head = vec![
        0x10,
        (rl & 0x7f) as u8 | 0x80,
        ((rl >> 7) & 0x7f) as u8 | 0x80,
        ((rl >> 14) & 0x7f) as u8 | 0x80,
        (rl >> 21) as u8,
    ];
    head.extend_from_slice(&[0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 30, 0]);
    let mut socks: Vec<Option<TcpStream>> = (0..CONNS)
        .map(|_| {
            let s = TcpStream::connect(broker.addr).unwrap();
            s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut w = &s;
            w.write_all(&head).ok().map(|_| s)
        })
        .collect();
    let chunk = vec![0u8; 60 * 1024];
    let mut peak = 0;
    for _round in 0..15 {
        for s in &mut socks {
            if let Some(stream) = s {
                let mut w = &*stream;
                if w.write_all(&chunk).is_err() {
                    *s = None;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
        peak = peak.max(vm_rss(&broker));
    }
    std::thread::sleep(Duration::from_millis(300));
    peak = peak.max(vm_rss(&broker));
    let grown = peak.saturating_sub(before);
    assert!(
        grown < 64 * 1024 * 1024,
        "broker RSS grew by {} MiB ({} -> {} KiB)",
        grown >> 20,
        before >> 10,
        peak >> 10
    );
    for (i, s) in socks.iter_mut().enumerate() {
        if let Some(stream) = s {
            let (data, ending) = read_to_end(stream, Duration::from_secs(2));
            assert!(data.is_empty(), "connection {i} got {data:02x?}");
            assert_ne!(ending, Ending::Open, "connection {i} is still open");
        }
    }
}

/// 60 clients each publish a 900 KiB message to themselves and read it back, then sit
/// idle. The broker's read and write buffers grew to 1 MiB for each; they must shrink
/// back once the packet has passed, so RSS does not keep 60 × 2 MiB.
fn buffers_shrink_after_a_large_packet() {
    let _serial = serial();
    let broker = Broker::start();
    let mut clients: Vec<Raw> = (0..60)
        .map(|i| connect(broker.addr, V5, &format!("big-{i}")))
        .collect();
    for (i, c) in clients.iter_mut().enumerate() {
        c.subscribe(&format!("big/{i}"), QoS::AtMostOnce);
    }
    std::thread::sleep(Duration::from_millis(200));
    let before = vm_rss(&broker);
    let payload = vec![b'p'; 900 * 1024];
    for (i, c) in clients.iter_mut().enumerate() {
        c.publish(&format!("big/{i}"), &payload, QoS::AtMostOnce, 0);
        let m = c.expect_publish();
        assert_eq!(m.payload.len(), payload.len());
    }
    std::thread::sleep(Duration::from_millis(500));
    let after = vm_rss(&broker);
    let grown = after.saturating_sub(before);
    assert!(
        grown < 32 * 1024 * 1024,
        "broker RSS grew by {} MiB after 60 large packets passed ({} -> {} KiB)",
        grown >> 20,
        before >> 10,
        after >> 10
    );
}

// ------------------------------------------------------ fault 10: closing with a reason

/// A v5 client floods QoS 2 PUBLISHes without PUBREL against a broker Receive Maximum of
/// 5 (§3.3.4: the 6th is a Receive Maximum exceeded error, 0x93) and keeps writing
/// without reading. It subscribed to the topic it floods and has a small receive
/// buffer, so the broker's DISCONNECT still waits in the broker's send queue when the
/// broker closes. When the client finally reads it must find the DISCONNECT with 0x93
/// and an orderly close: closing with unread input sends a reset, which throws away
/// what the broker had not yet sent.
fn client_still_writing_reads_the_disconnect_reason() {
    let _serial = serial();
    let broker = Broker::start_with(&["--memory"], Some("[mqtt]\nreceive_maximum = 5\n"));
    let sock = Socket::new(Domain::IPV4, Type::STREAM, Some(socket2::Protocol::TCP)).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&broker.addr.into()).unwrap();
    let mut raw = raw_on(broker.addr, sock.into(), V5);
    raw.send(&Packet::Connect(connect_packet(V5, "flooder", true)));
    raw.expect_kind(2);
    raw.subscribe("flood", QoS::AtMostOnce);
    let payload = vec![b'f'; 4096];
    let mut flood = Vec::new();
    for id in 1..=300u16 {
        flood.extend_from_slice(&encode(
            &Packet::Publish(publish("flood", &payload, QoS::ExactlyOnce, id)),
            V5,
        ));
    }
    let Raw { mut stream, .. } = raw;
    stream
        .set_write_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut write_error = None;
    for part in flood.chunks(8 * 1024) {
        if let Err(e) = stream.write_all(part) {
            write_error = Some(e.kind());
            break;
        }
    }
    std::thread::sleep(Duration::from_millis(100));
    let (data, ending) = read_to_end(&mut stream, Duration::from_secs(5));
    let got = frames(&data);
    let kinds: Vec<u8> = got.iter().map(|f| f[0] >> 4).collect();
    let disconnect = got.iter().find(|f| f[0] >> 4 == 14);
    assert_eq!(
        disconnect.and_then(|f| f.get(2).copied()),
        Some(reason::RECEIVE_MAXIMUM_EXCEEDED),
        "packet types read {kinds:?}; ending {ending:?}; write error {write_error:?}"
    );
    assert_eq!(ending, Ending::Eof, "packet types read {kinds:?}");
}

// ------------------------------------------------ fault 11: arrival order across clients

/// Client B's SUBSCRIBE is written a few microseconds before client A's PUBLISH to the
/// same topic (one thread, back to back, QoS 0, v5). The broker must handle them in the
/// order they arrived: B gets the message in each of 50 trials, on a one-thread runtime
/// (the scheduler keeps the order) and on a two-thread one (where the arrival tickets of
/// `runtime/arrival.rs` keep it: without them 5 to 11 of 50 were lost). In the first
/// trial both connections doze (`runtime/doze.rs`, nothing was sent after CONNECT): the
/// dozer sends them back to tasks in the order their input came, and each task reads
/// that input before its first wait (without that read, trial 0 was lost about once in
/// four runs on two threads).
fn subscribe_sent_before_publish_is_handled_first() {
    let _serial = serial();
    for threads in [1, 2] {
        let config = format!("[mqtt]\nworker_threads = {threads}\n");
        let broker = Broker::start_with(&["--memory"], Some(&config));
        let lost = subscribe_then_publish_trials(broker.addr);
        assert!(
            lost.is_empty(),
            "{threads} worker thread(s): message lost in trials {lost:?} of 50"
        );
    }
}

/// The same with the subscriber dozing (nothing sent since its CONNECT: it has no task,
/// `runtime/doze.rs`) and the publisher awake (it sent a PINGREQ just before): the dozer
/// must hand the subscriber's SUBSCRIBE to the core before the publisher's task, woken
/// after the dozer, runs. 20 trials, each with a subscriber of its own that dozes, on one
/// worker thread and on two. Before the dozer served such input itself (on two threads,
/// in the dozer's own place in the arrival order), all 20 were lost on either.
fn subscribe_from_a_dozing_client_before_publish_from_an_awake_one() {
    let _serial = serial();
    for threads in [1, 2] {
        let config = format!("[mqtt]\nworker_threads = {threads}\n");
        let broker = Broker::start_with(&["--memory"], Some(&config));
        let lost = dozing_subscriber_trials(broker.addr);
        assert!(
            lost.is_empty(),
            "{threads} worker thread(s): message lost in trials {lost:?} of 20"
        );
    }
}

/// The trials of [`subscribe_from_a_dozing_client_before_publish_from_an_awake_one`]:
/// those in which the subscriber did not get the message.
fn dozing_subscriber_trials(addr: std::net::SocketAddr) -> Vec<u16> {
    const TRIALS: u16 = 20;
    let mut subs: Vec<_> = (0..TRIALS)
        .map(|i| connect(addr, V5, &format!("dozing-sub-{i}")))
        .collect();
    let mut a = connect(addr, V5, "awake-pub");
    let mut lost = Vec::new();
    for (trial, b) in (0..TRIALS).zip(subs.iter_mut()) {
        // The publisher awake (input within the last second), its task idle again.
        a.send(&Packet::PingReq);
        a.expect_kind(13);
        if !subscribe_then_publish(b, &mut a, trial, "doze-order") {
            lost.push(trial);
        }
    }
    lost
}

/// One trial: after 20 ms with both connections idle, `b` subscribes to
/// `{prefix}/{trial}` and `a` publishes there at once. True when `b` got the message.
fn subscribe_then_publish(b: &mut Raw, a: &mut Raw, trial: u16, prefix: &str) -> bool {
    let topic = format!("{prefix}/{trial}");
    let publish_bytes = encode(
        &Packet::Publish(publish(&topic, b"m", QoS::AtMostOnce, 0)),
        V5,
    );
    // Both connections idle (waiting for input) when the two packets arrive: a
    // connection task still busy when its data arrives reads it without waiting.
    std::thread::sleep(Duration::from_millis(20));
    send_subscribe(b, trial + 1, &topic, QoS::AtMostOnce);
    assert!(a.send_raw(&publish_bytes));
    b.expect_kind(9);
    match b.recv(Duration::from_millis(500)) {
        Recv::Frame(f) if f.kind() == 3 => {
            assert_eq!(f.publish().topic, topic);
            true
        }
        Recv::Frame(f) => panic!("trial {trial}: unexpected {}", f.describe()),
        Recv::Closed => panic!("trial {trial}: subscriber closed"),
        Recv::Timeout => false,
    }
}

/// The trials of [`subscribe_sent_before_publish_is_handled_first`]: those in which the
/// subscriber did not get the message.
fn subscribe_then_publish_trials(addr: std::net::SocketAddr) -> Vec<u16> {
    let mut b = connect(addr, V5, "order-sub");
    let mut a = connect(addr, V5, "order-pub");
    let mut lost = Vec::new();
    for trial in 0..50u16 {
        if !subscribe_then_publish(&mut b, &mut a, trial, "order") {
            lost.push(trial);
        }
    }
    lost
}

/// Issue #10, faults 2 and 3: a SUBSCRIBE carrying the filter `#` 100,000 times with
/// 1,000 retained messages built a delivery per (filter, message) pair and the broker
/// aborted on a 5.9 GB allocation; 30,000 non-matching filters held the core for 23 s.
/// Now repeated filters are one subscription, each retained message arrives once, and
/// another client is served meanwhile.
fn one_subscribe_of_100000_filters_over_1000_retained_stays_bounded() {
    let _serial = serial();
    // Room for the 30,001 distinct filters (the default allows 10,000 per session).
    let broker = Broker::start_with(
        &["--memory"],
        Some("[mqtt]\nmax_subscriptions_per_client = 50000\n"),
    );
    let mut publisher = connect(broker.addr, V5, "retainer");
    for i in 0..1000 {
        let topic = format!("r/{i}");
        let qos = if i == 999 {
            QoS::AtLeastOnce
        } else {
            QoS::AtMostOnce
        };
        let p = Publish {
            dup: false,
            qos,
            retain: true,
            topic: &topic,
            packet_id: if i == 999 { 1 } else { 0 },
            properties: Properties::default(),
            payload: b"kept",
        };
        publisher.send(&Packet::Publish(p));
    }
    // The PUBACK of the last one: every earlier publish of this connection was handled.
    publisher.expect_kind(4);

    let mut big = connect(broker.addr, V5, "greedy");
    let mut filters: Vec<String> = vec!["#".to_owned(); 100_000];
    // And 30,000 filters that match nothing.
    filters.extend((0..30_000).map(|i| format!("nothing/{i}/here")));
    let list: Vec<(&str, SubOptions)> = filters
        .iter()
        .map(|f| (f.as_str(), SubOptions::qos(QoS::AtMostOnce)))
        .collect();
    let started = Instant::now();
    let codes = big.subscribe_with(7, &list, None);
    assert_eq!(codes.len(), 130_000, "one reason code per filter");
    assert!(codes.iter().all(|&c| c == 0));

    // Another client is served while the retained messages flow.
    let mut other = connect(broker.addr, V5, "bystander");
    let ping = Instant::now();
    other.send(&Packet::PingReq);
    other.expect_kind(13);
    assert!(
        ping.elapsed() < Duration::from_secs(1),
        "a PINGREQ waited {:?}",
        ping.elapsed()
    );

    let mut topics = HashSet::new();
    loop {
        match big.recv(Duration::from_secs(2)) {
            Recv::Frame(f) if f.kind() == 3 => {
                let m = f.publish();
                assert!(m.retain, "sent because of a new subscription: RETAIN 1");
                assert!(topics.insert(m.topic.clone()), "{} arrived twice", m.topic);
            }
            Recv::Frame(f) => panic!("unexpected {}", f.describe()),
            Recv::Timeout => break,
            Recv::Closed => panic!("the broker closed the connection; log:\n{}", broker.log()),
        }
    }
    assert_eq!(topics.len(), 1000, "each retained message exactly once");
    eprintln!("SUBACK and 1,000 retained in {:?}", started.elapsed());
}

// ------------------------------------------- per-client PUBLISH rate (max_publish_rate)

/// With `max_publish_rate = 50`, a client that sends 150 QoS 0 PUBLISHes at once is read
/// at 50 a second after its one-second burst: all arrive, in order, over about two
/// seconds, and it stays connected. Another client publishing meanwhile is not slowed.
fn a_publisher_over_its_rate_is_slowed_not_disconnected() {
    let broker = Broker::start_with(&["--memory"], Some("[mqtt]\nmax_publish_rate = 50\n"));
    let mut sub = connect(broker.addr, V311, "rate-sub");
    sub.subscribe("rate/#", QoS::AtMostOnce);
    let mut fast = connect(broker.addr, V311, "rate-fast");
    let mut batch = Vec::new();
    for i in 0..150u32 {
        batch.extend(encode(
            &Packet::Publish(publish(
                "rate/fast",
                i.to_string().as_bytes(),
                QoS::AtMostOnce,
                0,
            )),
            V311,
        ));
    }
    let started = Instant::now();
    assert!(fast.send_raw(&batch));
    // Meanwhile another client's messages go through at once.
    let mut other = connect(broker.addr, V311, "rate-other");
    other.publish("rate/other", b"hello", QoS::AtMostOnce, 0);
    let mut fast_got = Vec::new();
    let mut other_at = None;
    let mut last_at = started;
    while fast_got.len() < 150 && started.elapsed() < Duration::from_secs(10) {
        let m = sub.expect_publish();
        if m.topic == "rate/other" {
            other_at = Some(started.elapsed());
        } else {
            fast_got.push(String::from_utf8(m.payload.to_vec()).unwrap());
            last_at = Instant::now();
        }
    }
    let want: Vec<String> = (0..150).map(|i| i.to_string()).collect();
    assert_eq!(fast_got, want, "every message, in order");
    let took = last_at - started;
    assert!(
        took >= Duration::from_millis(1_600) && took < Duration::from_secs(6),
        "150 at 50/s after a 50 burst should take about 2 s, took {took:?}"
    );
    let other_at = other_at.expect("the other client's message");
    assert!(
        other_at < Duration::from_millis(500),
        "the other client was slowed: {other_at:?}"
    );
    // Still connected: a PINGREQ is answered.
    assert!(fast.send_raw(&[0xc0, 0x00]));
    assert_eq!(fast.expect().kind(), 13, "PINGRESP");
}
