//! The async runner on tokio's paused (virtual) clock, the test playing the broker over
//! in-memory pipes: keepalive, a missing PINGRESP, reconnect with backoff, and a
//! re-send with DUP after the reconnect.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use embassy_sync::blocking_mutex::raw::CriticalSectionRawMutex;
use mote_client::codec::{decode, Ack, ConnAck, Packet, Properties};
use mote_client::{
    Buffers, CloseReason, Config, ConnectFn, Event, FromTokio, Message, Protocol, QoS, Session,
    State, TokioClock,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// The broker's end of one connection.
struct Peer {
    io: DuplexStream,
    buf: Vec<u8>,
    protocol: Protocol,
}

impl Peer {
    /// The next packet, described; `None` at end of stream.
    async fn next(&mut self) -> Option<String> {
        loop {
            if let Some((p, n)) = decode(&self.buf, self.protocol, 1 << 20).unwrap() {
                let d = match p {
                    Packet::Connect(c) => format!("CONNECT clean={}", c.clean_start as u8),
                    Packet::Publish(p) => format!("PUBLISH id{} dup{}", p.packet_id, p.dup as u8),
                    other => format!("{:?}", other.packet_type()),
                };
                self.buf.drain(..n);
                return Some(d);
            }
            let mut chunk = [0u8; 512];
            let n = self.io.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    async fn send(&mut self, p: Packet<'_>) {
        let mut out = [0u8; 256];
        let n = p.encode(self.protocol, &mut out).unwrap();
        self.io.write_all(&out[..n]).await.unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn missing_pingresp_closes_and_the_runner_reconnects_and_resends() {
    let protocol = Protocol::V311;
    let mut cfg = Config::new("dev-ka");
    cfg.protocol = protocol;
    cfg.clean_start = false;
    cfg.keep_alive = 5;
    cfg.timeout_ms = 2_000;
    cfg.backoff_min_ms = 1_000;
    let bufs = Box::leak(Box::new(Buffers::<512, 512, 4, 128, 0>::new()));
    let (storage, io) = bufs.split();
    let state: &'static State<'static, CriticalSectionRawMutex> =
        Box::leak(Box::new(State::new(Session::new(cfg, storage))));
    let (client, mut runner) = mote_client::new(state, io, TokioClock::new());

    let (peers_tx, mut peers) = mpsc::unbounded_channel();
    let events = Arc::new(Mutex::new(Vec::new()));
    let log = events.clone();
    let task = tokio::spawn(async move {
        let mut connector = ConnectFn(move || {
            let (ours, theirs) = tokio::io::duplex(4096);
            peers_tx.send(theirs).unwrap();
            async move { Ok::<_, std::io::Error>(FromTokio(ours)) }
        });
        runner
            .run(&mut connector, |ev| {
                if let Event::Connected { .. } | Event::Disconnected(_) = ev {
                    log.lock().unwrap().push(format!("{ev:?}"));
                }
            })
            .await
    });

    let start = Instant::now();
    let mut peer = Peer {
        io: peers.recv().await.unwrap(),
        buf: Vec::new(),
        protocol,
    };
    assert_eq!(peer.next().await.unwrap(), "CONNECT clean=0");
    peer.send(Packet::ConnAck(ConnAck {
        session_present: false,
        code: 0,
        properties: Properties::default(),
    }))
    .await;
    client.wait_connected().await;
    let id = client
        .publish(&Message::new("t", b"1").qos(QoS::AtLeastOnce))
        .await
        .unwrap();
    assert_eq!(peer.next().await.unwrap(), format!("PUBLISH id{id} dup0"));
    // No PUBACK. After 5 s of silence from the client: PINGREQ.
    assert_eq!(peer.next().await.unwrap(), "PingReq");
    assert_eq!(start.elapsed().as_secs(), 5);
    // No PINGRESP: 2 s later the client gives up on this connection.
    assert_eq!(peer.next().await, None);
    assert_eq!(start.elapsed().as_secs(), 7);

    // After the 1 s backoff, a new connection; the session is resumed.
    let mut peer = Peer {
        io: peers.recv().await.unwrap(),
        buf: Vec::new(),
        protocol,
    };
    assert_eq!(start.elapsed().as_secs(), 8);
    assert_eq!(peer.next().await.unwrap(), "CONNECT clean=0");
    peer.send(Packet::ConnAck(ConnAck {
        session_present: true,
        code: 0,
        properties: Properties::default(),
    }))
    .await;
    assert_eq!(peer.next().await.unwrap(), format!("PUBLISH id{id} dup1"));
    peer.send(Packet::PubAck(Ack::new(id))).await;
    tokio::time::timeout(Duration::from_secs(1), client.flush())
        .await
        .unwrap();

    client.disconnect();
    assert_eq!(peer.next().await.unwrap(), "Disconnect");
    task.await.unwrap().unwrap();
    assert_eq!(
        *events.lock().unwrap(),
        [
            "Connected { session_present: false }".to_string(),
            format!("{:?}", Event::Disconnected(CloseReason::Timeout)),
            "Connected { session_present: true }".to_string(),
            format!("{:?}", Event::Disconnected(CloseReason::Local)),
        ]
    );
}

/// A transport whose `flush` stops completing once `stall` is set: an `embassy-net`
/// socket whose peer went silent (its `flush` waits for the peer's ACK of every byte).
struct Stalling {
    inner: FromTokio<DuplexStream>,
    stall: Arc<std::sync::atomic::AtomicBool>,
}

impl embedded_io_async::ErrorType for Stalling {
    type Error = std::io::Error;
}

impl embedded_io_async::Read for Stalling {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
        self.inner.read(buf).await
    }
}

impl embedded_io_async::Write for Stalling {
    async fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
        self.inner.write(buf).await
    }

    async fn flush(&mut self) -> Result<(), Self::Error> {
        if self.stall.load(std::sync::atomic::Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        self.inner.flush().await
    }
}

#[tokio::test(start_paused = true)]
async fn keepalive_timeout_fires_while_the_transport_does_not_drain() {
    let protocol = Protocol::V311;
    let mut cfg = Config::new("dev-stall");
    cfg.protocol = protocol;
    cfg.keep_alive = 5;
    cfg.timeout_ms = 2_000;
    cfg.backoff_min_ms = 1_000;
    let bufs = Box::leak(Box::new(Buffers::<512, 512, 4, 128, 0>::new()));
    let (storage, io) = bufs.split();
    let state: &'static State<'static, CriticalSectionRawMutex> =
        Box::leak(Box::new(State::new(Session::new(cfg, storage))));
    let (client, mut runner) = mote_client::new(state, io, TokioClock::new());

    let stall = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stall_in = stall.clone();
    let (peers_tx, mut peers) = mpsc::unbounded_channel();
    let events = Arc::new(Mutex::new(Vec::new()));
    let log = events.clone();
    let task = tokio::spawn(async move {
        let mut connector = ConnectFn(move || {
            let (ours, theirs) = tokio::io::duplex(4096);
            peers_tx.send(theirs).unwrap();
            let stall = stall_in.clone();
            async move {
                Ok::<_, std::io::Error>(Stalling {
                    inner: FromTokio(ours),
                    stall,
                })
            }
        });
        runner
            .run(&mut connector, |ev| {
                if let Event::Disconnected(_) = ev {
                    log.lock().unwrap().push(format!("{ev:?}"));
                }
            })
            .await
    });

    let start = Instant::now();
    let mut peer = Peer {
        io: peers.recv().await.unwrap(),
        buf: Vec::new(),
        protocol,
    };
    assert_eq!(peer.next().await.unwrap(), "CONNECT clean=1");
    peer.send(Packet::ConnAck(ConnAck {
        session_present: false,
        code: 0,
        properties: Properties::default(),
    }))
    .await;
    client.wait_connected().await;
    // From now on nothing the client writes is ever acknowledged.
    stall.store(true, std::sync::atomic::Ordering::SeqCst);
    let id = client
        .publish(&Message::new("t", b"1").qos(QoS::AtLeastOnce))
        .await
        .unwrap();
    assert_eq!(peer.next().await.unwrap(), format!("PUBLISH id{id} dup0"));
    // The runner is stuck in `flush`; still, keep alive (5 s) + timeout (2 s) after the
    // last transmission, the connection is given up as dead.
    let closed = tokio::time::timeout(Duration::from_secs(60), peer.next()).await;
    assert_eq!(
        closed.expect("the client never noticed the dead connection"),
        None
    );
    assert_eq!(start.elapsed().as_secs(), 7);
    assert_eq!(
        *events.lock().unwrap(),
        [format!("{:?}", Event::Disconnected(CloseReason::Timeout))]
    );
    client.disconnect();
    task.await.unwrap().unwrap();
}
