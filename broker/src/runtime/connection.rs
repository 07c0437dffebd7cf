//! One task per client connection: read frames into a buffer, decode them, hand them to
//! the core under its lock, write what comes back. No protocol rule lives here.
//!
//! Cancel safety: the only futures raced in `select!` are `read_buf` (cancel-safe: bytes
//! read are in the buffer), `Notify::notified`, timers and the shutdown token. Writes
//! happen outside `select!`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use mote_codec::{check, decode_body, DecodeError, FrameHeader, Packet, Protocol};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::shared::Shared;
use crate::proto::session::{write_packet, Kick, Wake};
use crate::proto::{disconnect_packet, Close, End};

/// The connection task's wake-up: the core names it in its effects.
impl Wake for Notify {
    fn wake(&self) {
        self.notify_one();
    }
}

/// How long a write may block before the client counts as gone (a consumer that does
/// not read at all).
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves one TCP connection until it ends.
pub(crate) async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let span = tracing::info_span!("conn", %peer, client = tracing::field::Empty);
    async move {
        if let Err(e) = run(stream, &shared, &shutdown).await {
            tracing::debug!(error = %e, "connection closed by I/O error");
        }
    }
    .instrument(span)
    .await
}

/// Writes `out` to the socket and clears it.
async fn flush(stream: &mut TcpStream, out: &mut BytesMut) -> std::io::Result<()> {
    if out.is_empty() {
        return Ok(());
    }
    match tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(out)).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "write timed out",
            ))
        }
    }
    out.clear();
    Ok(())
}

/// The protocol level byte of a CONNECT body, if it can be found.
fn connect_level(body: &[u8]) -> Option<u8> {
    let name_len = usize::from(u16::from_be_bytes([*body.first()?, *body.get(1)?]));
    body.get(2 + name_len).copied()
}

async fn run(
    mut stream: TcpStream,
    shared: &Shared,
    shutdown: &CancellationToken,
) -> std::io::Result<()> {
    let cfg = &shared.config.mqtt;
    let max_packet = cfg.max_packet_size;
    let mut inbuf = BytesMut::with_capacity(4096);
    let mut out = BytesMut::with_capacity(4096);

    // Phase 1: a complete CONNECT within the connect timeout.
    let deadline = Instant::now() + Duration::from_millis(cfg.connect_timeout_ms);
    let header: FrameHeader = loop {
        if let Some(&first) = inbuf.first() {
            if first >> 4 != 1 {
                tracing::warn!(first_byte = first, "first packet is not CONNECT; closing");
                return Ok(());
            }
        }
        match check(&inbuf, max_packet) {
            Ok(Some(h)) if inbuf.len() >= h.frame_len() => break h,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "bad CONNECT frame; closing");
                return Ok(());
            }
        }
        tokio::select! {
            r = stream.read_buf(&mut inbuf) => if r? == 0 { return Ok(()) },
            _ = tokio::time::sleep_until(deadline) => {
                tracing::info!("no CONNECT within the connect timeout; closing");
                return Ok(());
            }
            _ = shutdown.cancelled() => return Ok(()),
        }
    };
    let body = &inbuf[header.header_len..header.frame_len()];
    let connect = match decode_body(&header, body, Protocol::V5) {
        Ok(Packet::Connect(c)) => c,
        Ok(_) => return Ok(()),
        Err(e) => {
            tracing::warn!(error = %e, "invalid CONNECT; closing");
            match e {
                // Not MQTT at all: nothing we send would be understood.
                DecodeError::InvalidProtocolName => {}
                DecodeError::UnsupportedProtocolVersion(_) => {
                    // 3.1.1 §3.1.2.2: return code 1; the 3.1.1 CONNACK shape is the one a
                    // client of an unknown version can best read.
                    out.extend_from_slice(&[0x20, 0x02, 0x00, 0x01]);
                }
                _ if connect_level(body) == Some(5) => {
                    let ack = mote_codec::ConnAck {
                        session_present: false,
                        code: e.reason_code(),
                        properties: Default::default(),
                    };
                    write_packet(&mut out, Protocol::V5, &Packet::ConnAck(ack));
                }
                _ => {}
            }
            flush(&mut stream, &mut out).await?;
            return Ok(());
        }
    };
    let notify = Arc::new(Notify::new());
    let kick = Arc::new(Kick::default());
    // Replies (and deliveries to others) go out only once what they confirm is durable.
    let accepted = shared
        .apply(|core, fx| {
            let now = std::time::Instant::now();
            core.connect(&connect, notify.clone(), kick.clone(), now, &mut out, fx)
        })
        .await;
    inbuf.advance(header.frame_len());
    flush(&mut stream, &mut out).await?;
    let Some(acc) = accepted else {
        return Ok(());
    };
    tracing::Span::current().record("client", &*acc.client_id);
    tracing::info!(protocol = ?acc.protocol, keep_alive = acc.keep_alive, "client connected");
    let protocol = acc.protocol;
    let keep_alive =
        (acc.keep_alive > 0).then(|| Duration::from_millis(u64::from(acc.keep_alive) * 1500));
    let mut last_rx = Instant::now();

    // Phase 2: packets until the end.
    let end = 'conn: loop {
        // Handle every complete frame in the buffer under one lock.
        let mut consumed = 0;
        let mut close = None;
        shared
            .apply(|core, fx| {
                let now = std::time::Instant::now();
                loop {
                    let rest = &inbuf[consumed..];
                    let h = match check(rest, max_packet) {
                        Ok(Some(h)) if rest.len() >= h.frame_len() => h,
                        Ok(_) => break,
                        Err(e) => {
                            tracing::warn!(error = %e, "packet too large; closing");
                            close = Some(Close::Error(e.reason_code()));
                            break;
                        }
                    };
                    let packet = match decode_body(&h, &rest[h.header_len..h.frame_len()], protocol)
                    {
                        Ok(p) => p,
                        Err(e) => {
                            tracing::warn!(error = %e, "malformed packet; closing");
                            close = Some(Close::Error(e.reason_code()));
                            break;
                        }
                    };
                    consumed += h.frame_len();
                    if let Err(c) =
                        core.handle(&acc.client_id, acc.conn_id, &packet, now, &mut out, fx)
                    {
                        close = Some(c);
                        break;
                    }
                }
            })
            .await;
        inbuf.advance(consumed);
        match close {
            Some(Close::Disconnected { will }) => {
                flush(&mut stream, &mut out).await?;
                break 'conn End::Normal { will };
            }
            Some(Close::Error(code)) => {
                if code != mote_codec::reason::PROTOCOL_ERROR {
                    tracing::info!(reason = code, "closing connection");
                } else {
                    tracing::warn!(reason = code, "protocol error; closing");
                }
                disconnect_packet(&mut out, protocol, code);
                let _ = flush(&mut stream, &mut out).await;
                break 'conn End::Abnormal;
            }
            Some(Close::TakenOver) => return Ok(()),
            None => {}
        }
        flush(&mut stream, &mut out).await?;

        let keepalive_expired = async {
            match keep_alive {
                Some(ka) => tokio::time::sleep_until(last_rx + ka).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = stream.read_buf(&mut inbuf) => {
                match r {
                    Ok(0) => break 'conn End::Abnormal,
                    Ok(_) => last_rx = Instant::now(),
                    Err(e) => {
                        tracing::debug!(error = %e, "read failed");
                        break 'conn End::Abnormal;
                    }
                }
            }
            _ = notify.notified() => {
                let reason = kick.get();
                if reason != 0 {
                    // Taken over (the core already detached us) or too slow (still
                    // attached: `disconnected` below detaches and keeps the session).
                    disconnect_packet(&mut out, protocol, reason);
                    let _ = flush(&mut stream, &mut out).await;
                    break 'conn End::Abnormal;
                }
                let now = std::time::Instant::now();
                let res = shared
                    .apply(|core, _| core.drain(&acc.client_id, acc.conn_id, now, &mut out))
                    .await;
                if res.is_err() {
                    return Ok(());
                }
            }
            _ = keepalive_expired => {
                tracing::info!("keep alive expired; closing");
                disconnect_packet(&mut out, protocol, mote_codec::reason::KEEP_ALIVE_TIMEOUT);
                let _ = flush(&mut stream, &mut out).await;
                break 'conn End::Abnormal;
            }
            _ = shutdown.cancelled() => {
                disconnect_packet(&mut out, protocol, mote_codec::reason::SERVER_SHUTTING_DOWN);
                let _ = flush(&mut stream, &mut out).await;
                break 'conn End::Abnormal;
            }
        }
    };
    tracing::info!(?end, "client disconnected");
    // A will published here reaches its subscribers once it is durable.
    let now = std::time::Instant::now();
    shared
        .apply(|core, fx| core.disconnected(&acc.client_id, acc.conn_id, end, now, fx))
        .await;
    Ok(())
}
