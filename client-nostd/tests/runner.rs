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
