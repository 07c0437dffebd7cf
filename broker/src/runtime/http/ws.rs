//! MQTT over WebSocket (MQTT 5.0 §6, 3.1.1 §6): an adapter that makes a WebSocket a byte
//! stream, so the same connection code as TCP serves it (`connection::serve`).
//!
//! - Binary frames carry the MQTT byte stream: a packet may span frames and a frame may
//!   hold several packets; the adapter does not look at packet boundaries.
//! - A text frame is a protocol error: the connection closes (MQTT-6.0.0-1).
//! - What the connection writes between two flushes leaves as one binary frame.
//! - Sub-protocols `mqtt` (5.0 and 3.1.1) and `mqttv3.1` are offered; a client that
//!   offers none is served anyway (several embedded clients send no header).

use std::borrow::Borrow;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use futures_util::{Sink, Stream as _};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::HttpState;
use crate::runtime::connection::{self, Stream};
use crate::runtime::shared::Transport;
use crate::runtime::table::Slot;

/// The WebSocket sub-protocols MQTT defines.
const PROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

/// Frames at most this much larger than `max_packet_size` are accepted (a frame may
/// carry the tail of one packet and the head of the next).
const FRAME_SLACK: usize = 64 * 1024;

/// Upgrades the request and serves MQTT on it, in the HTTP socket's table slot.
pub(super) fn upgrade<L: Borrow<Slot> + Send + 'static>(
    ws: WebSocketUpgrade,
    state: &HttpState,
    peer: SocketAddr,
    slot: L,
) -> Response {
    let limit = state.shared.config.mqtt.max_packet_size as usize + FRAME_SLACK;
    let shared = state.shared.clone();
    let shutdown = state.shutdown.clone();
    ws.protocols(PROTOCOLS)
        .max_message_size(limit)
        .max_frame_size(limit)
        .on_failed_upgrade(|e| tracing::info!(error = %e, "WebSocket upgrade failed"))
        .on_upgrade(move |socket| async move {
            let stream = WsStream::new(socket);
            connection::serve(stream, peer, shared, shutdown, slot).await;
        })
}

/// A WebSocket as an MQTT byte stream.
pub(crate) struct WsStream {
    ws: WebSocket,
    /// What is left of the last binary frame read.
    read: Bytes,
    /// Written and not yet sent as a frame.
    write: BytesMut,
    /// The peer closed (a Close frame, or the end of the stream).
    eof: bool,
}

impl std::fmt::Debug for WsStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsStream")
            .field("read", &self.read.len())
            .field("write", &self.write.len())
            .field("eof", &self.eof)
            .finish()
    }
}

impl WsStream {
    pub(crate) fn new(ws: WebSocket) -> WsStream {
        WsStream {
            ws,
            read: Bytes::new(),
            write: BytesMut::new(),
            eof: false,
        }
    }

    /// Sends what was written as one binary frame and flushes the socket.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.write.is_empty() {
            ready!(Pin::new(&mut self.ws).poll_ready(cx)).map_err(io::Error::other)?;
            let frame = self.write.split().freeze();
            Pin::new(&mut self.ws)
                .start_send(Message::Binary(frame))
                .map_err(io::Error::other)?;
        }
        Pin::new(&mut self.ws)
            .poll_flush(cx)
            .map_err(io::Error::other)
    }
}

impl AsyncRead for WsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.read.is_empty() {
                let n = this.read.len().min(buf.remaining());
                buf.put_slice(&this.read.split_to(n));
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut this.ws).poll_next(cx)) {
                Some(Ok(Message::Binary(b))) => this.read = b,
                Some(Ok(Message::Text(_))) => {
                    tracing::info!("text frame on an MQTT WebSocket; closing");
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "text frame on an MQTT WebSocket",
                    )));
                }
                // Pongs to pings are queued by the WebSocket itself.
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                // The reply Close frame is queued by the WebSocket and goes out on the
                // next poll, which then ends the stream (RFC 6455 §5.5.1).
                Some(Ok(Message::Close(_))) => {}
                None => this.eof = true,
                Some(Err(e)) => return Poll::Ready(Err(io::Error::other(e))),
            }
        }
    }
}

impl AsyncWrite for WsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // One frame is being assembled at a time; a full one goes out first.
        if this.write.len() >= FRAME_SLACK {
            ready!(this.poll_send(cx))?;
        }
        this.write.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_send(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.ws)
            .poll_close(cx)
            .map_err(io::Error::other)
    }
}

impl Stream for WsStream {
    const TRANSPORT: Transport = Transport::Ws;

    /// Bytes become frames only when flushed: always the waiting path.
    fn try_write_now(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::ErrorKind::WouldBlock.into())
    }
}

/// Shared so the HTTP socket's task and the WebSocket's can both hold the table slot.
pub(super) type SharedSlot = Arc<Slot>;
