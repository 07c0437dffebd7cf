//! `mote-client` on tokio against real brokers: the `mote` binary and Mosquitto, each
//! over MQTT 3.1.1 and 5.0.
//!
//! - every QoS 1 event arrives at least once and every QoS 2 event exactly once (the
//!   subscriber is rumqttc, an independent implementation);
//! - a connection cut mid-stream (a TCP proxy drops it) resumes the persistent session:
//!   unacknowledged messages are re-sent with DUP, PUBRELs completed, QoS 2 still
//!   exactly once;
//! - a broker restarted mid-stream (killed, started again on the same port, all state
//!   lost): the client reconnects by itself, re-sends what was never acknowledged, and
//!   every event published before, during and after the outage reaches a subscriber
//!   connected after the restart;
//! - an MQTT 5 subscriber built on `mote-client` gets the events with their content type.
//!
//! The `mote` binary is the one next to this test executable (`target/<profile>/mote`,
//! built by `mote_tests::mote_bin` when missing or stale; set `MOTE_BIN` to use another).
//! Mosquitto is `/usr/sbin/mosquitto` (or `mosquitto` on `PATH`).
//!
//! Run by `mote_tests::harness` (`harness = false`): without Mosquitto its tests are
//! reported as ignored, with the reason, and under `CI=true` they fail. The tests against
//! `mote` need nothing from outside and always run.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use embassy_sync::blocking_mutex::raw::CriticalSectionRawMutex;
use mote_client::{
    Buffers, Client, CloseReason, Config, ConnectFn, Event, FromTokio, Protocol, QoS, SensorEvent,
    Session, State, SubOptions, SubscribeFilter, TokioClock, Value, CONTENT_TYPE,
};
use mote_tests::harness::{Need, Suite};
use mote_tests::{Reaped, TempFile};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(15);

fn main() -> std::process::ExitCode {
    Suite::new()
        .async_tests(
            &[],
            mote_tests::async_tests![
                mote_v311_every_qos,
                mote_v5_every_qos,
                mote_v311_connection_cut_resumes_session,
                mote_v5_connection_cut_resumes_session,
                mote_v311_broker_restart,
                mote_v5_broker_restart,
                mote_v5_subscriber_gets_content_type,
            ],
        )
        .async_tests(
            &[MOSQUITTO],
            mote_tests::async_tests![
                mosquitto_v311_every_qos,
                mosquitto_v5_every_qos,
                mosquitto_v311_connection_cut_resumes_session,
                mosquitto_v5_connection_cut_resumes_session,
                mosquitto_v311_broker_restart,
                mosquitto_v5_broker_restart,
                mosquitto_v5_subscriber_gets_content_type,
            ],
        )
        .run()
}

// ---- brokers --------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Mote,
    Mosquitto,
}

/// A broker process, killed and reaped on drop.
enum Running {
    Mote(mote_tests::Broker),
    Mosquitto(Reaped, TempFile),
}

struct Broker {
    kind: Kind,
    port: u16,
    proc: Option<Running>,
}

/// The Mosquitto broker: `/usr/sbin/mosquitto` when it is there, else `mosquitto` on
/// `PATH`.
fn mosquitto_bin() -> &'static str {
    if std::path::Path::new("/usr/sbin/mosquitto").exists() {
        "/usr/sbin/mosquitto"
    } else {
        "mosquitto"
    }
}

/// The Mosquitto broker can be run (the harness checks it before each Mosquitto test).
const MOSQUITTO: Need = Need::Check {
    what: "mosquitto",
    check: mosquitto_runs,
};

fn mosquitto_runs() -> Result<(), String> {
    let bin = mosquitto_bin();
    Command::new(bin)
        .arg("-h")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(drop)
        .map_err(|e| mote_tests::harness::cannot_run(bin, &e, "apt-get install mosquitto"))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Broker {
    /// Starts a broker of `kind` on a free port.
    fn start(kind: Kind) -> Broker {
        let mut b = Broker {
            kind,
            port: free_port(),
            proc: None,
        };
        b.restart();
        b
    }

    /// Starts the process again on the same port (all state lost: in-memory mote,
    /// Mosquitto without persistence).
    fn restart(&mut self) {
        self.kill();
        let port = self.port;
        self.proc = Some(match self.kind {
            Kind::Mote => {
                let addr = format!("127.0.0.1:{port}");
                Running::Mote(mote_tests::Broker::start_with(
                    &["--memory", "--mqtt", &addr],
                    None,
                ))
            }
            Kind::Mosquitto => {
                let conf = format!(
                    "listener {port} 127.0.0.1\nallow_anonymous true\nuser root\npersistence false\n"
                );
                let conf = TempFile::new("mote-client-mosquitto", ".conf", conf.as_bytes());
                let child = Command::new(mosquitto_bin())
                    .arg("-c")
                    .arg(&conf.path)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("spawn mosquitto");
                let running = Running::Mosquitto(Reaped(child), conf);
                let deadline = std::time::Instant::now() + WAIT;
                while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                    assert!(std::time::Instant::now() < deadline, "mosquitto not ready");
                    std::thread::sleep(Duration::from_millis(20));
                }
                running
            }
        });
    }

    fn kill(&mut self) {
        match self.proc.take() {
            Some(Running::Mote(mut b)) => b.kill(),
            Some(Running::Mosquitto(r, _conf)) => drop(r),
            None => {}
        }
    }
}

// ---- the device under test ----------------------------------------------------------

type Mutex_ = CriticalSectionRawMutex;

/// What a device's runner reported.
#[derive(Debug, Clone, PartialEq)]
enum Rec {
    Connected(bool),
    Disconnected(CloseReason),
    Msg {
        qos: QoS,
        content_type: Option<String>,
        payload: Vec<u8>,
    },
    Published(u16, u8),
    Subscribed(u16, u8),
}

/// A `mote-client` with its runner spawned; it connects to whatever port `port` holds
/// while `gate` is open.
struct Device {
    client: Client<'static, 'static, Mutex_>,
    log: Arc<Mutex<Vec<Rec>>>,
    gate: Arc<AtomicBool>,
    port: Arc<AtomicU16>,
    runner: JoinHandle<Result<(), mote_client::Error>>,
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

fn device(cfg: Config<'static>, port: u16) -> Device {
    let bufs = Box::leak(Box::new(Buffers::<2048, 2048, 16, 192, 4>::new()));
    let (storage, io) = bufs.split();
    let state: &'static State<'static, Mutex_> =
        Box::leak(Box::new(State::new(Session::new(cfg, storage))));
    let (client, mut runner) = mote_client::new(state, io, TokioClock::new());
    let log = Arc::new(Mutex::new(Vec::new()));
    let gate = Arc::new(AtomicBool::new(true));
    let port = Arc::new(AtomicU16::new(port));
    let runner = {
        let (log, gate, port) = (log.clone(), gate.clone(), port.clone());
        tokio::spawn(async move {
            let mut connector = ConnectFn(move || {
                let open = gate.load(Ordering::SeqCst);
                let addr = SocketAddr::from(([127, 0, 0, 1], port.load(Ordering::SeqCst)));
                async move {
                    if !open {
                        return Err(std::io::Error::other("gate closed"));
                    }
                    let s = TcpStream::connect(addr).await?;
                    s.set_nodelay(true)?;
                    Ok(FromTokio(s))
                }
            });
            runner
                .run(&mut connector, |ev| {
                    let rec = match ev {
                        Event::Connected { session_present } => Rec::Connected(session_present),
                        Event::Disconnected(r) => Rec::Disconnected(r),
                        Event::Message(m) => Rec::Msg {
                            qos: m.qos,
                            content_type: m.content_type.map(str::to_owned),
                            payload: m.payload.to_vec(),
                        },
                        Event::Published { packet_id, reason } => Rec::Published(packet_id, reason),
                        Event::Subscribed { packet_id, reason } => {
                            Rec::Subscribed(packet_id, reason)
                        }
                        Event::Unsubscribed { .. } => return,
                    };
                    log.lock().unwrap().push(rec);
                })
                .await
        })
    };
    Device {
        client,
        log,
        gate,
        port,
        runner,
    }
}

fn config(name: &str, protocol: Protocol) -> Config<'static> {
    let id = leak(format!("{name}-{}-{}", std::process::id(), free_port()));
    let mut c = Config::new(id);
    c.protocol = protocol;
    c.keep_alive = 5;
    c.timeout_ms = 3_000;
    c.backoff_min_ms = 50;
    c.backoff_max_ms = 400;
    c.event_topic = leak(format!("mote/events/{id}"));
    c
}

impl Device {
    fn count(&self, f: impl Fn(&Rec) -> bool) -> usize {
        self.log.lock().unwrap().iter().filter(|r| f(r)).count()
    }

    async fn shutdown(self) {
        tokio::time::timeout(WAIT, self.client.flush())
            .await
            .expect("device flushed");
        self.client.disconnect();
        let r = tokio::time::timeout(WAIT, self.runner).await;
        assert!(matches!(r, Ok(Ok(Ok(())))), "runner ended with {r:?}");
    }
}

fn event(seq: u32) -> SensorEvent {
    SensorEvent {
        device: 7,
        seq,
        timestamp_ms: 1_700_000_000_000 + u64::from(seq),
        channel: (seq % 4) as u16,
        value: Value::F32(seq as f32 / 2.0),
    }
}

async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---- an independent subscriber (rumqttc, MQTT 3.1.1) -----------------------------------

/// Sequence numbers received, per delivered QoS.
type Seen = Arc<Mutex<HashMap<(u8, u32), usize>>>;

struct Subscriber {
    seen: Seen,
    task: JoinHandle<()>,
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn subscriber(port: u16, filter: &str) -> Subscriber {
    let id = format!("sub-{}-{}", std::process::id(), free_port());
    let mut opts = rumqttc::MqttOptions::new(id, "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut el) = rumqttc::AsyncClient::new(opts, 64);
    client
        .subscribe(filter, rumqttc::QoS::ExactlyOnce)
        .await
        .unwrap();
    let seen: Seen = Arc::default();
    let (subscribed, ready) = tokio::sync::oneshot::channel();
    let task = {
        let seen = seen.clone();
        tokio::spawn(async move {
            let _client = client;
            let mut subscribed = Some(subscribed);
            loop {
                match el.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                        if let Some(s) = subscribed.take() {
                            let _ = s.send(());
                        }
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                        let ev = SensorEvent::decode(&p.payload).expect("a SensorEvent");
                        *seen
                            .lock()
                            .unwrap()
                            .entry((p.qos as u8, ev.seq))
                            .or_default() += 1;
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        })
    };
    tokio::time::timeout(WAIT, ready)
        .await
        .expect("SUBACK")
        .unwrap();
    Subscriber { seen, task }
}

impl Subscriber {
    fn count(&self, qos: u8, seq: u32) -> usize {
        self.seen
            .lock()
            .unwrap()
            .get(&(qos, seq))
            .copied()
            .unwrap_or(0)
    }

    async fn wait_all(&self, qos: u8, seqs: std::ops::Range<u32>) {
        until(&format!("QoS {qos} events {seqs:?}"), || {
            seqs.clone().all(|s| self.count(qos, s) > 0)
        })
        .await;
    }
}

// ---- scenarios ----------------------------------------------------------------------

/// QoS 0/1/2 events published back to back; QoS 1 arrive, QoS 2 arrive exactly once.
async fn every_qos(kind: Kind, protocol: Protocol) {
    let broker = Broker::start(kind);
    let cfg = config("qos", protocol);
    let sub = subscriber(broker.port, cfg.event_topic).await;
    let dev = device(cfg, broker.port);
    tokio::time::timeout(WAIT, dev.client.wait_connected())
        .await
        .unwrap();
    const N: u32 = 40;
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        for i in 0..N {
            let seq = qos as u32 * 1000 + i;
            dev.client.publish_event(&event(seq), qos).await.unwrap();
        }
    }
    tokio::time::timeout(WAIT, dev.client.flush())
        .await
        .unwrap();
    sub.wait_all(1, 1000..1000 + N).await;
    sub.wait_all(2, 2000..2000 + N).await;
    // Give duplicates a moment to show up.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for i in 0..N {
        assert_eq!(
            sub.count(2, 2000 + i),
            1,
            "QoS 2 event {i} not exactly once"
        );
    }
    assert_eq!(
        dev.count(|r| matches!(r, Rec::Published(_, code) if *code < 0x80)),
        2 * N as usize
    );
    dev.shutdown().await;
}

/// A TCP proxy between the device and the broker whose connections the test can cut.
struct Proxy {
    port: u16,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    async fn start(target: u16) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accept = {
            let conns = conns.clone();
            tokio::spawn(async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    let task = tokio::spawn(async move {
                        if let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", target)).await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                    conns.lock().unwrap().push(task);
                }
            })
        };
        Proxy {
            port,
            conns,
            accept,
        }
    }

    /// Drops every proxied connection (both sockets close).
    fn cut(&self) {
        for t in self.conns.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

/// The connection is cut while QoS 1/2 flows are in the middle; the broker keeps the
/// session, the client resumes it and completes every flow.
async fn cut_mid_stream(kind: Kind, protocol: Protocol) {
    let broker = Broker::start(kind);
    let proxy = Proxy::start(broker.port).await;
    let mut cfg = config("cut", protocol);
    cfg.clean_start = false;
    cfg.session_expiry = Some(300);
    let sub = subscriber(broker.port, cfg.event_topic).await;
    let dev = device(cfg, proxy.port);
    tokio::time::timeout(WAIT, dev.client.wait_connected())
        .await
        .unwrap();
    const N: u32 = 300;
    for i in 0..N {
        let qos = if i % 2 == 0 {
            QoS::AtLeastOnce
        } else {
            QoS::ExactlyOnce
        };
        dev.client.publish_event(&event(i), qos).await.unwrap();
        if i % 100 == 50 {
            // In the middle of a burst: some flows are half done.
            proxy.cut();
        }
    }
    tokio::time::timeout(WAIT, dev.client.flush())
        .await
        .unwrap();
    until("every event", || {
        (0..N).all(|i| sub.count(if i % 2 == 0 { 1 } else { 2 }, i) > 0)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    for i in (1..N).step_by(2) {
        assert_eq!(sub.count(2, i), 1, "QoS 2 event {i} not exactly once");
    }
    assert!(dev.count(|r| matches!(r, Rec::Connected(true))) >= 1);
    dev.shutdown().await;
}

/// The broker dies mid-stream and comes back empty on the same port.
async fn broker_restart(kind: Kind, protocol: Protocol) {
    let mut broker = Broker::start(kind);
    let cfg = config("restart", protocol);
    let topic = cfg.event_topic;
    let sub = subscriber(broker.port, topic).await;
    let dev = device(cfg, broker.port);
    tokio::time::timeout(WAIT, dev.client.wait_connected())
        .await
        .unwrap();
    for i in 0..20 {
        dev.client
            .publish_event(&event(i), QoS::AtLeastOnce)
            .await
            .unwrap();
    }
    tokio::time::timeout(WAIT, dev.client.flush())
        .await
        .unwrap();
    sub.wait_all(1, 0..20).await;
    drop(sub);

    // Down: the device notices and keeps what it publishes meanwhile.
    dev.gate.store(false, Ordering::SeqCst);
    broker.kill();
    until("device disconnected", || !dev.client.is_connected()).await;
    for i in 20..30 {
        dev.client
            .publish_event(&event(i), QoS::AtLeastOnce)
            .await
            .unwrap();
    }

    // Up again, empty; a new subscriber first, then the device may reconnect.
    broker.restart();
    let sub = subscriber(broker.port, topic).await;
    dev.port.store(broker.port, Ordering::SeqCst);
    dev.gate.store(true, Ordering::SeqCst);
    tokio::time::timeout(WAIT, dev.client.wait_connected())
        .await
        .unwrap();
    for i in 30..50 {
        dev.client
            .publish_event(&event(i), QoS::AtLeastOnce)
            .await
            .unwrap();
    }
    tokio::time::timeout(WAIT, dev.client.flush())
        .await
        .unwrap();
    sub.wait_all(1, 20..50).await;
    assert!(dev.count(|r| matches!(r, Rec::Connected(_))) >= 2);
    assert!(dev.count(|r| matches!(r, Rec::Disconnected(_))) >= 1);
    dev.shutdown().await;
}

/// An MQTT 5 subscriber built on `mote-client` (automatic subscription, inbound QoS 2)
/// receives the events with their content type.
async fn v5_subscriber(kind: Kind) {
    let broker = Broker::start(kind);
    let pub_cfg = config("v5pub", Protocol::V5);
    let filter: &'static [SubscribeFilter<'static>] = Box::leak(Box::new([SubscribeFilter {
        filter: pub_cfg.event_topic,
        options: SubOptions::qos(QoS::ExactlyOnce),
    }]));
    let mut sub_cfg = config("v5sub", Protocol::V5);
    sub_cfg.subscriptions = filter;
    let sub = device(sub_cfg, broker.port);
    until("SUBACK", || {
        sub.count(|r| matches!(r, Rec::Subscribed(..))) == 1
    })
    .await;
    assert!(sub.count(|r| matches!(r, Rec::Subscribed(_, 2))) == 1);
    let dev = device(pub_cfg, broker.port);
    for i in 0..20 {
        dev.client
            .publish_event(&event(i), QoS::ExactlyOnce)
            .await
            .unwrap();
    }
    dev.shutdown().await;
    until("20 messages", || {
        sub.count(|r| matches!(r, Rec::Msg { .. })) >= 20
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = sub.log.lock().unwrap().clone();
    let mut seqs: Vec<u32> = log
        .iter()
        .filter_map(|r| match r {
            Rec::Msg {
                qos,
                content_type,
                payload,
            } => {
                assert_eq!(*qos, QoS::ExactlyOnce);
                assert_eq!(content_type.as_deref(), Some(CONTENT_TYPE));
                Some(SensorEvent::decode(payload).unwrap().seq)
            }
            _ => None,
        })
        .collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (0..20).collect::<Vec<_>>());
    sub.shutdown().await;
}

// ---- the matrix -----------------------------------------------------------------------

async fn mote_v311_every_qos() {
    every_qos(Kind::Mote, Protocol::V311).await;
}

async fn mote_v5_every_qos() {
    every_qos(Kind::Mote, Protocol::V5).await;
}

async fn mosquitto_v311_every_qos() {
    every_qos(Kind::Mosquitto, Protocol::V311).await;
}

async fn mosquitto_v5_every_qos() {
    every_qos(Kind::Mosquitto, Protocol::V5).await;
}

async fn mote_v311_connection_cut_resumes_session() {
    cut_mid_stream(Kind::Mote, Protocol::V311).await;
}

async fn mote_v5_connection_cut_resumes_session() {
    cut_mid_stream(Kind::Mote, Protocol::V5).await;
}

async fn mosquitto_v311_connection_cut_resumes_session() {
    cut_mid_stream(Kind::Mosquitto, Protocol::V311).await;
}

async fn mosquitto_v5_connection_cut_resumes_session() {
    cut_mid_stream(Kind::Mosquitto, Protocol::V5).await;
}

async fn mote_v311_broker_restart() {
    broker_restart(Kind::Mote, Protocol::V311).await;
}

async fn mote_v5_broker_restart() {
    broker_restart(Kind::Mote, Protocol::V5).await;
}

async fn mosquitto_v311_broker_restart() {
    broker_restart(Kind::Mosquitto, Protocol::V311).await;
}

async fn mosquitto_v5_broker_restart() {
    broker_restart(Kind::Mosquitto, Protocol::V5).await;
}

async fn mote_v5_subscriber_gets_content_type() {
    v5_subscriber(Kind::Mote).await;
}

async fn mosquitto_v5_subscriber_gets_content_type() {
    v5_subscriber(Kind::Mosquitto).await;
}
