//! The MQTT session through `mote-client`: MQTT 5, persistent session (clean start 0,
//! session expiry [`SESSION_EXPIRY_S`]), [`EVENTS`] `SensorEvent`s with QoS 1, wait for
//! every PUBACK, DISCONNECT.
//!
//! The client's [`Runner`](mote_client::Runner) owns the transport and reconnects through
//! [`Broker`], which re-uses one `TcpSocket`: abort, wait for the RST to go out, connect
//! again. The application half (publish, flush, disconnect) is joined with the runner in
//! the caller's task, so the shared state needs no real mutex (`NoopRawMutex`).

use core::cell::Cell;

use cortex_m_semihosting::hprintln;
use embassy_futures::join::join;
use embassy_net::tcp::{ConnectError, TcpSocket};
use embassy_net::Stack;
use embassy_sync::blocking_mutex::raw::NoopRawMutex;
use embassy_time::{with_timeout, Duration};
use mote_client::{
    Buffers, CloseReason, Config, Connect, EmbassyClock, Event, Protocol, QoS, SensorEvent,
    Session, State, Value,
};
use static_cell::StaticCell;

use crate::{uptime_ms, BROKER_ADDR, BROKER_PORT, EVENTS, IO_TIMEOUT};

/// MQTT client id (also the persistent session's key at the broker).
const CLIENT_ID: &str = "mote-qemu-mps2";
/// Topic of the events.
pub(crate) const TOPIC: &str = "mote/qemu/events";
/// `SensorEvent::device` of this board.
const DEVICE_ID: u32 = 385;
/// MQTT 5 Session Expiry Interval: the broker keeps the session (and our unacknowledged
/// QoS 1 messages) this long after a lost connection.
const SESSION_EXPIRY_S: u32 = 300;
/// Keep alive announced in CONNECT.
const KEEP_ALIVE_S: u16 = 30;

/// The whole MQTT part (first CONNECT to the last PUBACK and DISCONNECT) must finish
/// within this: 30 s, plus 20 ms per event. On expiry the firmware exits with status 1.
const SESSION_TIMEOUT: Duration = Duration::from_millis(30_000 + 20 * EVENTS as u64);

/// The client's memory: receive 256 B (CONNACK, PUBACKs; the broker is told it as Maximum
/// Packet Size), transmit 512 B (several PUBLISHes batched), 8 in-flight slots of 96 B
/// (a PUBLISH of a `SensorEvent` on the 16-byte topic with its content type is at most
/// 84 B), one topic alias. 1,696 bytes in all.
type ClientBuffers = Buffers<256, 512, 8, 96, 1>;

/// Reconnects the runner by re-using one socket.
struct Broker<'s> {
    socket: TcpSocket<'s>,
    attempts: u32,
}

impl<'s> Connect for Broker<'s> {
    type Transport<'a>
        = &'a mut TcpSocket<'s>
    where
        Self: 'a;
    type Error = ConnectError;

    // Cancel-safe: a connect dropped half-way is aborted by the next call.
    async fn connect(&mut self) -> Result<&mut TcpSocket<'s>, ConnectError> {
        self.attempts += 1;
        self.socket.abort();
        // After an abort this waits until the RST is out; on a closed socket it is immediate.
        let _ = self.socket.flush().await;
        self.socket.set_timeout(Some(IO_TIMEOUT));
        match self.socket.connect((BROKER_ADDR, BROKER_PORT)).await {
            Ok(()) => {
                hprintln!(
                    "mote: tcp connected (attempt {}) at {} ms",
                    self.attempts,
                    uptime_ms()
                );
                Ok(&mut self.socket)
            }
            Err(e) => {
                hprintln!(
                    "mote: tcp connect to 10.0.2.2:{} failed: {:?} (attempt {})",
                    BROKER_PORT,
                    e,
                    self.attempts
                );
                Err(e)
            }
        }
    }
}

/// Event `seq`: the channel cycles through 0..5 and each channel has its own kind of
/// value, so every `Value` variant goes over the wire (the end-to-end check recomputes
/// them; see `run-e2e.sh`).
fn event(seq: u16) -> SensorEvent {
    let s = u32::from(seq);
    let channel = seq % 5;
    let value = match channel {
        0 => Value::F32(20.0 + (s % 100) as f32 * 0.25),
        1 => Value::I32(-1000 * i32::from(seq)),
        2 => Value::U32(1 << (s % 32)),
        3 => Value::Bool(s % 2 == 1),
        _ => Value::I64(-(1i64 << (s % 63))),
    };
    SensorEvent {
        device: DEVICE_ID,
        seq: s,
        timestamp_ms: uptime_ms(),
        channel,
        value,
    }
}

/// What the runner's event callback counted.
#[derive(Debug, Default)]
struct Counts {
    connects: Cell<u32>,
    drops: Cell<u32>,
    acked: Cell<u32>,
    refused: Cell<u32>,
}

/// Connects, publishes, waits for the acknowledgements, disconnects and closes the socket.
/// Failures are printed here; `Err` means "exit non-zero".
pub(crate) async fn session(stack: Stack<'static>) -> Result<(), ()> {
    static BUFFERS: StaticCell<ClientBuffers> = StaticCell::new();
    static STATE: StaticCell<State<'static, NoopRawMutex>> = StaticCell::new();

    let mut cfg = Config::new(CLIENT_ID);
    cfg.protocol = Protocol::V5;
    cfg.clean_start = false;
    cfg.session_expiry = Some(SESSION_EXPIRY_S);
    cfg.keep_alive = KEEP_ALIVE_S;
    cfg.event_topic = TOPIC;
    cfg.timeout_ms = 10_000;
    cfg.backoff_min_ms = 250;
    cfg.backoff_max_ms = 4_000;

    let (storage, io) = BUFFERS.init(ClientBuffers::new()).split();
    let state = STATE.init(State::new(Session::new(cfg, storage)));
    let (client, mut runner) = mote_client::new(state, io, EmbassyClock);

    let mut rx_buf = [0u8; 512];
    let mut tx_buf = [0u8; 1024];
    let mut broker = Broker {
        socket: TcpSocket::new(stack, &mut rx_buf, &mut tx_buf),
        attempts: 0,
    };

    let counts = Counts::default();
    let step = (u32::from(EVENTS) / 10).max(1);
    let on_event = |ev: Event<'_>| match ev {
        Event::Connected { session_present } => {
            counts.connects.set(counts.connects.get() + 1);
            hprintln!(
                "mote: mqtt 5 connected (session present {}) at {} ms",
                u8::from(session_present),
                uptime_ms()
            );
        }
        Event::Disconnected(CloseReason::Local) => {}
        Event::Disconnected(reason) => {
            counts.drops.set(counts.drops.get() + 1);
            hprintln!(
                "mote: connection lost ({:?}) at {} ms; reconnecting",
                reason,
                uptime_ms()
            );
        }
        Event::Published { reason, packet_id } if reason >= 0x80 => {
            counts.refused.set(counts.refused.get() + 1);
            hprintln!(
                "mote: broker refused publish {} (reason 0x{:02x})",
                packet_id,
                reason
            );
        }
        Event::Published { .. } => {
            let acked = counts.acked.get() + 1;
            counts.acked.set(acked);
            if acked % step == 0 || acked == u32::from(EVENTS) {
                hprintln!(
                    "mote: {}/{} acknowledged at {} ms",
                    acked,
                    EVENTS,
                    uptime_ms()
                );
            }
        }
        _ => {}
    };

    let app = async {
        let result = async {
            for seq in 0..EVENTS {
                if let Err(e) = client.publish_event(&event(seq), QoS::AtLeastOnce).await {
                    hprintln!("mote: FAILED: publish {}: {}", seq, e);
                    return Err(());
                }
                if seq == 0 {
                    hprintln!("mote: first event queued at {} ms", uptime_ms());
                }
            }
            client.flush().await;
            Ok(())
        }
        .await;
        // Sends DISCONNECT (normal, no will) and makes `run` return.
        client.disconnect();
        result
    };

    let outcome = with_timeout(
        SESSION_TIMEOUT,
        join(runner.run(&mut broker, on_event), app),
    )
    .await;
    let (acked, refused) = (counts.acked.get(), counts.refused.get());
    match outcome {
        Err(_) => {
            hprintln!(
                "mote: FAILED: timeout after {} s: {}/{} acknowledged, {} connects, {} drops",
                SESSION_TIMEOUT.as_secs(),
                acked,
                EVENTS,
                counts.connects.get(),
                counts.drops.get()
            );
            return Err(());
        }
        Ok((Err(e), _)) => {
            hprintln!("mote: FAILED: client: {}", e);
            return Err(());
        }
        Ok((Ok(()), Err(()))) => return Err(()),
        Ok((Ok(()), Ok(()))) => {}
    }
    if acked != u32::from(EVENTS) || refused != 0 {
        hprintln!(
            "mote: FAILED: {} events, {} acknowledged, {} refused",
            EVENTS,
            acked,
            refused
        );
        return Err(());
    }
    hprintln!(
        "mote: {} events acknowledged, disconnected at {} ms ({} connects, {} drops)",
        acked,
        uptime_ms(),
        counts.connects.get(),
        counts.drops.get()
    );

    // Send our FIN and wait for its ACK, so the broker sees an orderly close.
    broker.socket.close();
    if with_timeout(IO_TIMEOUT, broker.socket.flush())
        .await
        .is_err()
    {
        hprintln!("mote: warning: close not acknowledged in time");
    }
    Ok(())
}
