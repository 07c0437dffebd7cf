//! One task per client connection: read frames into a buffer, decode them, hand them to
//! the core under its lock, write what comes back. No protocol rule lives here.
//!
//! Invariants:
//! - Once the core accepted a CONNECT, it is told that the link ended
//!   (`Core::disconnected`) exactly once, however the connection ends: a read or write
//!   error, a timeout, a close the core asked for, eviction, shutdown, and even a panic
//!   or the task being dropped (see [`LinkGuard`]). The one exception is a takeover,
//!   where the core detached the link itself.
//! - Before CONNECT a client can make the broker buffer at most
//!   `max_connect_packet_size` bytes; after a large packet the read and write buffers
//!   shrink back to [`BUF_CAPACITY`]; a connection quiet for [`IDLE_RELEASE`] gives them
//!   back, and reads start small and grow only for a client with more to send.
//! - A TCP connection with nothing to do (nothing after its CONNECT, or quiet for
//!   [`IDLE_RELEASE`] with nothing buffered or held) dozes: its task ends and what is
//!   left of it ([`Dozing`]) waits in the [`Dozer`] until input, a wake-up, its
//!   keep-alive deadline, eviction or shutdown needs it; then a new task runs the packet
//!   loop again, which looks at what woke it first, so its keep-alive, throttle and
//!   takeover rules are those of the loop.
//! - When the broker closes a connection after telling the client why (a DISCONNECT, a
//!   refusing CONNACK), it closes gracefully ([`close_gracefully`]): closing a socket
//!   with unread input sends a reset, which makes the client's TCP stack drop whatever
//!   it had not read yet, reason code included.
//! - TCP and TLS connections run the same code, generic over the stream ([`Stream`]);
//!   a TLS connection first completes its handshake ([`serve_tls`]), within the same
//!   connect timeout that then bounds its CONNECT.
//!
//! - Replies leave only once the journal has their records, in the order they were made
//!   ([`Held`]); meanwhile the connection reads and handles what follows.
//!
//! Cancel safety: the only futures raced in `select!` are `read_buf` (cancel-safe: bytes
//! read are in the buffer; over TLS, decrypted bytes not yet read stay in the TLS
//! session), `Signal::wait` and `Signal::evicted` (nothing is taken until they resolve),
//! `Shared::durable` (it watches a counter), timers and cancellation tokens. Writes
//! happen outside `select!`.

use std::borrow::Borrow;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use mote_codec::{check, decode_body, DecodeError, FrameHeader, Packet, Protocol};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::arrival::{Sequenced, Turn};
use super::auth::Refusal;
use super::doze::{serve_first, Dozer, Ready, Sleeper, Wakeup};
use super::held::Held;
use super::shared::{Shared, Transport};
use super::table::{Signal, Slot};
use super::tls::{self, Certs, Handshake};
use crate::proto::session::{write_packet, OutBuf, Outbox, Wake, MAX_SLICES, OUTBOUND_BATCH};
use crate::proto::{disconnect_packet, Accepted, Close, End};

/// How long a write may block before the client counts as gone (a consumer that does
/// not read at all).
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Capacity buffers start with and shrink back to.
const BUF_CAPACITY: usize = 4096;

/// A buffer that grew beyond this (for a large packet) is replaced by a small one once
/// the packet has passed, so one large packet does not pin memory for the connection's
/// life.
const SHRINK_ABOVE: usize = 64 * 1024;

/// A connection that has received nothing and been sent nothing for this long gives
/// back its buffers, so a client that was busy and went quiet does not keep 4 KiB it is
/// not using (issue #15: "an idle connection costs ≤ 1 KiB"); over TCP it then dozes
/// ([`Dozing`]). The next read takes a small buffer, which grows again once input
/// comes in quantity (see [`grow_if_full`]).
const IDLE_RELEASE: Duration = Duration::from_secs(1);

/// Longest a graceful close discards the client's input before closing anyway.
const LINGER_MAX: Duration = Duration::from_secs(2);

/// A graceful close ends early once the client has sent nothing for this long: with no
/// unread input left, closing sends no reset.
const LINGER_QUIET: Duration = Duration::from_millis(200);

/// A client's PUBLISH rate limits (`mqtt.max_publish_rate`, `max_publish_bytes_rate`, or
/// its user's own, `auth.limits`):
/// token buckets holding one second's worth. When one is in debt the connection stops
/// reading until it is repaid, so a fast publisher is slowed by TCP backpressure, never
/// disconnected, and costs the broker nothing meanwhile.
#[derive(Debug)]
struct Throttle {
    /// Messages per second and bytes per second (0: no limit).
    rates: (f64, f64),
    /// Tokens left (negative: debt).
    tokens: (f64, f64),
    at: Instant,
}

impl Throttle {
    /// Messages and bytes per second (`0`: no limit), as `Login::publish_rates` says.
    fn new((messages, bytes): (u32, u64)) -> Option<Throttle> {
        let rates = (f64::from(messages), bytes as f64);
        (rates.0 > 0.0 || rates.1 > 0.0).then(|| Throttle {
            rates,
            tokens: rates,
            at: Instant::now(),
        })
    }

    /// True when no further PUBLISH may be handled now (one may always go into debt for
    /// its bytes: a packet larger than the byte rate still passes, then waits it out).
    fn exhausted(&self) -> bool {
        (self.rates.0 > 0.0 && self.tokens.0 < 1.0) || (self.rates.1 > 0.0 && self.tokens.1 < 1.0)
    }

    /// Takes one PUBLISH of `bytes`.
    fn take(&mut self, bytes: usize) {
        self.tokens.0 -= 1.0;
        self.tokens.1 -= bytes as f64;
    }

    /// When the connection may read again, if it must wait.
    fn paused_until(&mut self, now: Instant) -> Option<Instant> {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        let refill = |tokens: f64, rate: f64| (tokens + rate * dt).min(rate);
        self.tokens = (
            refill(self.tokens.0, self.rates.0),
            refill(self.tokens.1, self.rates.1),
        );
        // Until `exhausted` is false again: a whole message's token, and some byte credit.
        let wait = |tokens: f64, rate: f64, need: f64| {
            if rate > 0.0 && tokens < need {
                (need - tokens) / rate
            } else {
                0.0
            }
        };
        let secs =
            wait(self.tokens.0, self.rates.0, 1.0).max(wait(self.tokens.1, self.rates.1, 1.0));
        (secs > 0.0).then(|| now + Duration::from_secs_f64(secs))
    }
}

/// How the socket is closed once the connection is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closing {
    /// Close at once: the client closed, vanished, or was told nothing.
    Now,
    /// The broker told the client why it closes: let that reach it first.
    Graceful,
}

/// A byte stream a connection is served over: TCP, or TLS over TCP.
pub(crate) trait Stream: AsyncRead + AsyncWrite + Unpin + Send {
    /// What the connection counts as (metrics).
    const TRANSPORT: Transport;

    /// Writes what the socket takes now without waiting, as `TcpStream::try_write` does;
    /// `WouldBlock` when nothing can be written at once (always, for a stream that has
    /// no such fast path).
    fn try_write_now(&mut self, buf: &[u8]) -> std::io::Result<usize>;

    /// [`Stream::try_write_now`] for several buffers in order (`writev`).
    fn try_write_vectored_now(&mut self, bufs: &[IoSlice<'_>]) -> std::io::Result<usize> {
        match bufs.iter().find(|b| !b.is_empty()) {
            Some(b) => self.try_write_now(b),
            None => Ok(0),
        }
    }
}

/// Plain TCP: the only stream that dozes ([`serve_tcp`]). TLS may hold decrypted bytes
/// the socket no longer shows; WebSocket and in-process pipes are not sockets.
impl Stream for TcpStream {
    const TRANSPORT: Transport = Transport::Tcp;
    #[inline]
    fn try_write_now(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.try_write(buf)
    }
    #[inline]
    fn try_write_vectored_now(&mut self, bufs: &[IoSlice<'_>]) -> std::io::Result<usize> {
        self.try_write_vectored(bufs)
    }
}

impl Stream for tokio::io::DuplexStream {
    const TRANSPORT: Transport = Transport::Internal;
    /// An in-process pipe (the HTTP listener's links into the core): the waiting path.
    #[inline]
    fn try_write_now(&mut self, _: &[u8]) -> std::io::Result<usize> {
        Err(std::io::ErrorKind::WouldBlock.into())
    }
}

impl Stream for TlsStream<TcpStream> {
    const TRANSPORT: Transport = Transport::Tls;
    /// Bytes go through the TLS session first: always the waiting path.
    #[inline]
    fn try_write_now(&mut self, _: &[u8]) -> std::io::Result<usize> {
        Err(std::io::ErrorKind::WouldBlock.into())
    }
}

/// Serves one plain TCP connection: phase 1 in this task, then the packet loop until the
/// connection ends or dozes in `dozer`, whose tasks (on `tracker`) serve it from then on.
/// `slot` is its place in the connection table, released when the connection ends.
pub(crate) fn serve_tcp(
    mut stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    slot: Slot,
    dozer: Arc<Dozer<Dozing>>,
    tracker: TaskTracker,
) -> impl std::future::Future<Output = ()> + Send {
    let span = conn_span(peer, Transport::Tcp);
    let turn = shared.arrivals.as_ref().map(|a| a.turn());
    let ours = turn.clone();
    let conn = async move {
        let open = shared.transports.open(Transport::Tcp);
        let origin = Origin::accepted_now(peer);
        let phase1 = Box::pin(handshake(&mut stream, origin, &shared, &shutdown, &slot));
        let admitted = match phase1.await {
            Ok(a) => a,
            Err(closing) => {
                if closing == Closing::Graceful {
                    close_gracefully(&mut stream).await;
                }
                return;
            }
        };
        let guard = LinkGuard::connected(&shared, &slot, &admitted.acc);
        let io = LinkIo::new(admitted.inbuf, admitted.out, admitted.rates);
        let conn = Connected {
            guard,
            slot,
            keep_alive: admitted.acc.keep_alive,
            protocol: admitted.acc.protocol,
        };
        open.hand_over();
        let ctx = TcpContext {
            shutdown,
            dozer,
            tracker,
        };
        live_tcp(stream, conn, io, ctx, ours, true).await;
    };
    Sequenced::new(conn.instrument(span), turn)
}

/// The span of a connection's log lines (its client id is added at CONNECT).
fn conn_span(peer: SocketAddr, transport: Transport) -> tracing::Span {
    tracing::info_span!(
        "conn",
        %peer,
        transport = transport.name(),
        client = tracing::field::Empty
    )
}

/// Serves one connection over `stream` (WebSocket, or an in-process pipe; plain TCP has
/// [`serve_tcp`]) until it ends. `slot` is its place in the connection table, released
/// when the last owner drops it.
///
/// Not an `async fn`: one would keep its arguments in the task's state beside the block
/// they are moved into (every connection pays for a task's largest state).
pub(crate) fn serve<S: Stream, L: Borrow<Slot> + Send>(
    mut stream: S,
    peer: SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    slot: L,
) -> impl std::future::Future<Output = ()> + Send {
    let span = conn_span(peer, S::TRANSPORT);
    let turn = shared.arrivals.as_ref().map(|a| a.turn());
    let ours = turn.clone();
    let conn = async move {
        let _open = shared.transports.open(S::TRANSPORT);
        let origin = Origin::accepted_now(peer);
        let (slot_ref, turn) = (slot.borrow(), ours.as_deref());
        if run(&mut stream, origin, &shared, &shutdown, slot_ref, turn).await == Closing::Graceful {
            close_gracefully(&mut stream).await;
        }
        drop(slot);
    };
    Sequenced::new(conn.instrument(span), turn)
}

/// Serves one connection of a TLS listener until it ends: the TLS handshake (with the
/// certificates in force when it starts), then MQTT as over TCP. A failed handshake
/// closes the socket with one log line. `slot` is its place in the connection table,
/// released when this returns.
pub(crate) fn serve_tls(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    slot: Slot,
    certs: Arc<Certs>,
) -> impl std::future::Future<Output = ()> + Send {
    let turn = shared.arrivals.as_ref().map(|a| a.turn());
    let ours = turn.clone();
    let span = tracing::info_span!(
        "conn",
        %peer,
        tls = true,
        version = tracing::field::Empty,
        client = tracing::field::Empty
    );
    let conn = async move {
        let _open = shared.transports.open(Transport::Tls);
        // The connect timeout covers the handshake and the CONNECT together.
        let started = Instant::now();
        let deadline = started + Duration::from_millis(shared.config.mqtt.connect_timeout_ms);
        let handshake = tls::handshake(
            certs.acceptor(),
            stream,
            deadline,
            slot.evicted(),
            shutdown.cancelled(),
        );
        let mut stream = match handshake.await {
            Ok(s) => s,
            Err(Handshake::Failed(e)) => {
                tracing::info!(error = %e, "TLS handshake failed; closing");
                return;
            }
            Err(Handshake::TimedOut) => {
                tracing::info!("TLS handshake not done within the connect timeout; closing");
                return;
            }
            Err(Handshake::Abandoned) => return,
        };
        if let Some(v) = stream.get_ref().1.protocol_version() {
            tracing::Span::current().record("version", tracing::field::debug(v));
        }
        let identity = if certs.config().use_identity_as_username {
            match tls::peer_common_name(&stream) {
                Some(cn) => Some(Arc::<str>::from(cn)),
                None => {
                    tracing::info!("client certificate without a subject CN; closing");
                    return;
                }
            }
        } else {
            None
        };
        let origin = Origin {
            peer,
            started,
            identity,
        };
        let turn = ours.as_deref();
        if run(&mut stream, origin, &shared, &shutdown, &slot, turn).await == Closing::Graceful {
            close_gracefully(&mut stream).await;
        }
        drop(slot);
    };
    Sequenced::new(conn.instrument(span), turn)
}

/// Writes `out` to the socket and clears it.
///
/// The socket usually takes the whole buffer at once, so a write is first tried without
/// arming a timer; only what it did not take is written under [`WRITE_TIMEOUT`].
///
/// A buffer that grew past [`SHRINK_ABOVE`] (a large packet, or a batch of the core's
/// outbound queue) is replaced by a small one once written.
async fn flush<S: Stream>(stream: &mut S, out: &mut OutBuf) -> std::io::Result<()> {
    flush_keeping(stream, out, false).await
}

/// [`flush`] for a plain buffer (the handshake's replies: nothing spliced).
async fn flush_bytes<S: Stream>(stream: &mut S, out: &mut BytesMut) -> std::io::Result<()> {
    let mut whole = OutBuf::from(std::mem::take(out));
    let r = flush(stream, &mut whole).await;
    *out = whole.bytes;
    r
}

/// [`flush`], except that with `more` (the core's drain stopped at a full batch and more
/// is queued) a grown buffer is kept: the next drain would grow it again at once.
/// A subscriber behind a fast publisher would otherwise reallocate its buffer, and fault
/// in its pages, for every batch.
async fn flush_keeping<S: Stream>(
    stream: &mut S,
    out: &mut OutBuf,
    more: bool,
) -> std::io::Result<()> {
    if out.is_empty() {
        return Ok(());
    }
    let own = out.bytes.len();
    write_out(stream, out, own).await?;
    out.clear();
    let cap = out.bytes.capacity();
    if cap > SHRINK_ABOVE && !(more && cap <= 2 * OUTBOUND_BATCH) {
        out.bytes = BytesMut::with_capacity(BUF_CAPACITY);
    }
    out.shrink_splices();
    Ok(())
}

/// [`flush_keeping`] for what `held` lets go: the replies still waiting for the journal
/// stay at the front of `out`. Returns the bytes written.
async fn flush_held<S: Stream>(
    stream: &mut S,
    out: &mut OutBuf,
    held: &mut Held,
    more: bool,
) -> std::io::Result<usize> {
    let n = held.sendable(out.bytes.len());
    if n == out.bytes.len() {
        let all = out.len();
        flush_keeping(stream, out, more).await?;
        held.sent(n);
        return Ok(all);
    }
    let mut written = 0;
    if n > 0 {
        written = write_out(stream, out, n).await?;
        held.sent(n);
    }
    Ok(written)
}

/// Writes the first `own` bytes of `out`'s own bytes, with the payloads spliced among
/// and right after them, and lets go of them. Returns the bytes written.
async fn write_out<S: Stream>(
    stream: &mut S,
    out: &mut OutBuf,
    own: usize,
) -> std::io::Result<usize> {
    if !out.has_splices() {
        // Nothing spliced (payloads under `SPLICE_MIN`, the usual case): one buffer,
        // written as before splicing (building I/O vectors cost 3 % of 64-byte fan-out).
        write_bytes(stream, &out.bytes[..own]).await?;
        if own == out.bytes.len() {
            // Emptied, its room kept where it starts (advancing past everything
            // would leave the room behind the start, to be won back by the next
            // reserve).
            out.clear();
        } else {
            out.advance(own);
        }
        return Ok(own);
    }
    let total = out.len_through(own);
    let end = out.end_of(own);
    let mut left = total;
    while left > 0 {
        let r = {
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let k = out.slices(out.own_before(end), &mut slices);
            stream.try_write_vectored_now(&slices[..k])
        };
        match r {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                out.advance(n);
                left -= n;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    if left > 0 {
        // In a box: its I/O vectors (1 KiB) would otherwise be part of every
        // connection task's state, which an idle connection pays for.
        Box::pin(timed_out_after(
            WRITE_TIMEOUT,
            write_vectored(stream, out, end, left),
        ))
        .await?;
    }
    Ok(total)
}

/// The rest of [`write_out`]'s vectored write, `left` bytes through `end`, waiting for
/// the socket.
async fn write_vectored<S: Stream>(
    stream: &mut S,
    out: &mut OutBuf,
    end: usize,
    mut left: usize,
) -> std::io::Result<()> {
    while left > 0 {
        let n = {
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let k = out.slices(out.own_before(end), &mut slices);
            stream.write_vectored(&slices[..k]).await?
        };
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        out.advance(n);
        left -= n;
    }
    // `flush`: a TLS stream may keep records in its session until flushed (a no-op on
    // TCP).
    stream.flush().await
}

/// Writes `bytes` to the socket: first without arming a timer (the socket usually takes
/// them at once), then what is left under [`WRITE_TIMEOUT`].
async fn write_bytes<S: Stream>(stream: &mut S, bytes: &[u8]) -> std::io::Result<()> {
    let mut written = 0;
    while written < bytes.len() {
        match stream.try_write_now(&bytes[written..]) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => written += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    if written < bytes.len() {
        let rest = &bytes[written..];
        // `flush`: a TLS stream may keep records in its session until flushed (a no-op
        // on TCP).
        let write = async {
            stream.write_all(rest).await?;
            stream.flush().await
        };
        // In a box, as in `write_out`: the timer is needed only by a socket that did
        // not take everything at once, and every connection task would carry it.
        Box::pin(timed_out_after(WRITE_TIMEOUT, write)).await?;
    }
    Ok(())
}

/// `write`'s result, or a `TimedOut` error once `limit` passed.
async fn timed_out_after(
    limit: Duration,
    write: impl std::future::Future<Output = std::io::Result<()>>,
) -> std::io::Result<()> {
    match tokio::time::timeout(limit, write).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "write timed out",
        )),
    }
}

/// Waits until every reply `held` holds may go (they then precede whatever is written
/// after them, a DISCONNECT say). A failed journal parks the task for good: those
/// replies must never be sent.
async fn settle(shared: &Shared, held: &mut Held) {
    if let Some(last) = held.last() {
        if shared.durable(last).await.is_err() {
            std::future::pending::<()>().await;
        }
        held.release(shared.durable_now());
    }
}

/// [`settle`], then writes what is in `out`: the last replies of a client that
/// disconnected.
async fn settle_and_flush<S: Stream>(
    shared: &Shared,
    stream: &mut S,
    out: &mut OutBuf,
    held: &mut Held,
) -> std::io::Result<()> {
    settle(shared, held).await;
    flush(stream, out).await
}

/// How long a client with Keep Alive `secs` may stay silent: 1.5 × its Keep Alive
/// (MQTT-3.1.2-24 (5.0), 3.1.2-10 (3.1.1)); `None` for Keep Alive 0.
fn keep_alive_limit(secs: u16) -> Option<Duration> {
    (secs > 0).then(|| Duration::from_millis(u64::from(secs) * 1500))
}

/// Ends a connection after the broker said why: shuts the write side (what was sent is
/// followed by a FIN, not lost to a reset), then reads and discards the client's input
/// until it closes, is quiet for [`LINGER_QUIET`], or [`LINGER_MAX`] passed.
async fn close_gracefully<S: Stream>(stream: &mut S) {
    let _ = tokio::time::timeout(LINGER_QUIET, stream.shutdown()).await;
    let deadline = Instant::now() + LINGER_MAX;
    // On the heap: on the stack it would be part of every connection task's size (a
    // task is as large as its largest state), idle or not.
    let mut scratch = vec![0u8; 1024];
    loop {
        let quiet = (Instant::now() + LINGER_QUIET).min(deadline);
        match tokio::time::timeout_at(quiet, stream.read(&mut scratch)).await {
            Ok(Ok(n)) if n > 0 && Instant::now() < deadline => {}
            _ => return,
        }
    }
}

/// The protocol level byte of a CONNECT body, if it can be found.
fn connect_level(body: &[u8]) -> Option<u8> {
    let name_len = usize::from(u16::from_be_bytes([*body.first()?, *body.get(1)?]));
    body.get(2 + name_len).copied()
}

/// At most this many frames handled in one wake-up let the subscribers they woke write
/// first (see `Link::serve`): issue #10's fixed-rate QoS 1 fan-in, one frame per read,
/// had a median latency 1.14x the old two-thread build's without it and 1.03-1.09x with
/// it (`benches/RESULTS.md`).
const YIELD_MAX_FRAMES: usize = 8;

/// Most frames decoded ahead of one hold of the core's lock (a `Packet` is 128 bytes:
/// 32 KiB of them).
const DECODED_BATCH: usize = 256;

/// After a read: a read that filled `buf` is from a client with more to send, so the
/// buffer grows to [`BUF_CAPACITY`] at once instead of in small steps (a read into an
/// empty `BytesMut` takes 64 bytes).
fn grow_if_full(buf: &mut BytesMut) {
    if buf.len() == buf.capacity() && buf.capacity() < BUF_CAPACITY {
        buf.reserve(BUF_CAPACITY - buf.len());
    }
}

/// Replaces `buf` by a small buffer holding the same bytes if it grew large and what
/// is left in it is small.
fn shrink(buf: &mut BytesMut, grew: bool) {
    if grew && buf.len() <= BUF_CAPACITY {
        let mut small = BytesMut::with_capacity(BUF_CAPACITY);
        small.extend_from_slice(buf);
        *buf = small;
    }
}

/// Owns the duty to tell the core that the link of an accepted CONNECT ended.
///
/// Explicit ends go through [`LinkGuard::end`] (which waits until what the core
/// journaled, a will say, is durable) or [`LinkGuard::taken_over`]. If the guard is
/// dropped without either (the task panicked, or was dropped at shutdown), `Drop` spawns
/// a task that ends the link as lost: done in a task of its own, not during the
/// unwinding, so a core that panicked once cannot make it panic again mid-unwind.
#[derive(Debug)]
struct LinkGuard {
    shared: Arc<Shared>,
    client_id: Arc<str>,
    conn_id: u64,
    armed: bool,
}

impl LinkGuard {
    fn new(shared: &Arc<Shared>, acc: &Accepted) -> LinkGuard {
        LinkGuard {
            shared: shared.clone(),
            client_id: acc.client_id.clone(),
            conn_id: acc.conn_id,
            armed: true,
        }
    }

    /// Tells the core the link ended as `end`; its will reaches subscribers once durable.
    ///
    /// # Cancel safety
    /// The core is told at the first poll; cancelling later only skips the wait for
    /// durability and the wake-ups.
    async fn end(mut self, end: End) {
        self.armed = false;
        tracing::info!(?end, "client disconnected");
        let (client, conn_id) = (self.client_id.clone(), self.conn_id);
        let now = std::time::Instant::now();
        self.shared
            .apply(|core, fx| core.disconnected(&client, conn_id, end, now, fx))
            .await;
    }

    /// The core detached the link itself (another connection took the session over).
    fn taken_over(mut self) {
        self.armed = false;
        tracing::info!("session taken over");
    }

    /// The core accepted the CONNECT of the connection in `slot`: from now on it holds a
    /// link for it, which the guard returned ends.
    fn connected(shared: &Arc<Shared>, slot: &Slot, acc: &Accepted) -> LinkGuard {
        slot.connected();
        tracing::Span::current().record("client", &*acc.client_id);
        tracing::info!(protocol = ?acc.protocol, keep_alive = acc.keep_alive, "client connected");
        LinkGuard::new(shared, acc)
    }

    /// Ends the link as `exit` says; returns how to close the socket.
    async fn finish(self, exit: LinkExit) -> Closing {
        match exit.end {
            Some(end) => {
                // In a box: as large as the rest of phase 2's state.
                let ending = Box::pin(self.end(end));
                ending.await;
            }
            None => self.taken_over(),
        }
        exit.closing
    }
}

impl Drop for LinkGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (shared, client, conn_id) = (self.shared.clone(), self.client_id.clone(), self.conn_id);
        tracing::warn!("connection task ended without ending its link; ending it now");
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    let now = std::time::Instant::now();
                    shared
                        .apply(|core, fx| {
                            core.disconnected(&client, conn_id, End::Abnormal, now, fx)
                        })
                        .await;
                });
            }
            Err(_) => tracing::error!("no runtime to end the link on"),
        }
    }
}

/// How the link of an accepted connection ended.
#[derive(Debug)]
struct LinkExit {
    /// What to tell the core; `None` after a takeover.
    end: Option<End>,
    closing: Closing,
}

impl LinkExit {
    fn ended(end: End, closing: Closing) -> LinkExit {
        LinkExit {
            end: Some(end),
            closing,
        }
    }

    fn taken_over() -> LinkExit {
        LinkExit {
            end: None,
            closing: Closing::Now,
        }
    }

    /// The socket failed.
    fn lost(e: &std::io::Error) -> LinkExit {
        tracing::debug!(error = %e, "connection lost (I/O error)");
        LinkExit::ended(End::Abnormal, Closing::Now)
    }
}

/// Where a connection comes from, for its CONNECT phase.
struct Origin {
    peer: SocketAddr,
    /// When the socket was accepted (the connect timeout runs from there).
    started: Instant,
    /// The user name a verified client certificate gave (the CONNECT's credentials are
    /// then not checked).
    identity: Option<Arc<str>>,
}

impl Origin {
    /// A socket from `peer` accepted now, with no certificate identity.
    fn accepted_now(peer: SocketAddr) -> Origin {
        Origin {
            peer,
            started: Instant::now(),
            identity: None,
        }
    }
}

/// The whole connection of a stream that keeps its task (TLS, WebSocket, in-process
/// pipes): CONNECT, then packets until the end. Returns how to close.
/// `turn`: its place in the arrival order across connections (multi-threaded runtime).
async fn run<S: Stream>(
    stream: &mut S,
    origin: Origin,
    shared: &Arc<Shared>,
    shutdown: &CancellationToken,
    slot: &Slot,
    turn: Option<&Turn>,
) -> Closing {
    // Phase 1 runs in a box of its own, freed once the client is connected: its futures
    // (the login, the core's CONNECT handling) are larger than phase 2's, and a task is
    // as large as its largest state, for its whole life. Boxed, the task holds only
    // phase 2 (issue #15: "an idle connection costs ≤ 1 KiB").
    // (In a statement of its own: a temporary lives to the end of its statement, so
    // `Box::pin(handshake(..)).await` would keep room for the unboxed future too.)
    let phase1 = Box::pin(handshake(stream, origin, shared, shutdown, slot));
    let Admitted {
        acc,
        inbuf,
        out,
        rates,
    } = match phase1.await {
        Ok(a) => a,
        Err(closing) => return closing,
    };
    // From here on the core holds a link for this connection: every way out below ends
    // it (`?` in `link` included), and the guard covers what cannot return.
    let guard = LinkGuard::connected(shared, slot, &acc);
    let link = Link {
        shared,
        shutdown,
        slot,
        acc: &acc,
        turn,
    };
    let mut io = LinkIo::new(inbuf, out, rates);
    let exit = loop {
        // Phase 2 in a box too (the same future as a dozing TCP connection's).
        let phase2 = Box::pin(link.serve(stream, &mut io, false));
        match phase2.await {
            Ok(Step::Exit(exit)) => break exit,
            // Only a loop allowed to doze stops for it; serving on is what it would mean.
            Ok(Step::Doze) => {}
            Err(e) => break LinkExit::lost(&e),
        }
    };
    guard.finish(exit).await
}

/// A TCP connection past its CONNECT, between runs of its packet loop: what it owns
/// besides its socket and its buffers. Dozing, it is this and its socket ([`Dozing`]).
#[derive(Debug)]
struct Connected {
    /// Ends the link; also the broker's state and the client's names.
    guard: LinkGuard,
    slot: Slot,
    /// The CONNECT's Keep Alive in force, seconds (0: none).
    keep_alive: u16,
    protocol: Protocol,
}

impl Connected {
    /// What the core accepted, as the packet loop reads it.
    fn accepted(&self) -> Accepted {
        Accepted {
            client_id: self.guard.client_id.clone(),
            conn_id: self.guard.conn_id,
            keep_alive: self.keep_alive,
            protocol: self.protocol,
        }
    }
}

/// What every TCP connection's task is given: shutdown, where to doze, where to spawn.
struct TcpContext {
    shutdown: CancellationToken,
    dozer: Arc<Dozer<Dozing>>,
    tracker: TaskTracker,
}

/// A dozing TCP connection (`runtime/doze.rs`): its socket out of tokio's reactor, its
/// link, when it last sent something and its rate limits. 104 bytes, where its task was
/// 1,280 and its reactor registration 256.
///
/// Not its log span either: at the default level (`info`) a span lives in the log
/// subscriber's registry with its formatted fields, about 500 bytes. The task it goes
/// back to makes the span anew from the socket's peer address and the client id.
#[derive(Debug)]
pub(crate) struct Dozing {
    stream: std::net::TcpStream,
    conn: Connected,
    last_rx: Instant,
    throttle: Option<Box<Throttle>>,
}

impl Sleeper for Dozing {
    fn fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.stream)
    }

    fn deadline(&self) -> Option<Instant> {
        keep_alive_limit(self.conn.keep_alive).map(|k| self.last_rx + k)
    }

    fn dozing(&self, ready: &Arc<Ready>, token: u64) {
        self.conn.slot.signal().doze(ready, token);
    }

    fn resume(
        self: Box<Self>,
        dozer: &Arc<Dozer<Dozing>>,
        tracker: &TaskTracker,
        shutdown: &CancellationToken,
        why: Wakeup,
    ) {
        let Dozing {
            stream,
            conn,
            last_rx,
            throttle,
        } = *self;
        // Its place in the arrival order: input served by the dozer's task itself has the
        // dozer's (taken when the dozer was woken, passed when its poll ends); otherwise
        // one is taken now, in the order the dozer sends connections back.
        let turn = conn.guard.shared.arrivals.as_ref().map(|a| {
            let t = a.turn();
            if why == Wakeup::Other {
                t.take_ticket();
            }
            t
        });
        let ours = turn.clone();
        let ctx = TcpContext {
            shutdown: shutdown.clone(),
            dozer: dozer.clone(),
            tracker: tracker.clone(),
        };
        let peer = stream
            .peer_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let span = conn_span(peer, Transport::Tcp);
        span.record("client", &*conn.guard.client_id);
        let task = async move {
            let (inbuf, last_rx) = match read_waiting(&stream) {
                Some(buf) => {
                    conn.slot.touch();
                    let shared = &conn.guard.shared;
                    shared.transports.received(Transport::Tcp, buf.len());
                    (buf, Instant::now())
                }
                None => (BytesMut::new(), last_rx),
            };
            let stream = match TcpStream::from_std(stream) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot wake a dozing connection; ending it");
                    let shared = conn.guard.shared.clone();
                    let _open = shared.transports.adopt(Transport::Tcp);
                    conn.guard.end(End::Abnormal).await;
                    return;
                }
            };
            let io = LinkIo {
                inbuf,
                out: OutBuf::default(),
                last_rx,
                throttle,
            };
            live_tcp(stream, conn, io, ctx, ours, false).await;
        };
        let task = Sequenced::new(task.instrument(span), turn);
        match why {
            Wakeup::Input => serve_first(task, tracker),
            Wakeup::Other => {
                tracker.spawn(task);
            }
        }
    }
}

/// Reads the input that woke a dozing connection, if any, before its socket goes back to
/// tokio: tokio learns that a socket it was just given is readable only at its
/// reactor's next turn, so the first read would wait for it. Meanwhile the task would
/// go back to sleep, and with it its place in the arrival order (`runtime/arrival.rs`),
/// which input on an awake connection could then overtake. `None`: nothing to read now
/// (or the end, or an error, which the packet loop's own read then sees).
fn read_waiting(stream: &std::net::TcpStream) -> Option<BytesMut> {
    use std::io::Read;
    // On the stack (this is not async): a connection woken by a delivery, with nothing
    // to read, allocates nothing.
    let mut buf = [0u8; BUF_CAPACITY];
    match (&*stream).read(&mut buf) {
        Ok(n) if n > 0 => Some(BytesMut::from(&buf[..n])),
        _ => None,
    }
}

/// Phase 2 of a TCP connection in a task of its own: packets until the link ends, or
/// until the connection may doze, when it goes to `dozer` and the task ends. `fresh`:
/// just connected, when a connection that sent nothing after its CONNECT dozes as soon
/// as its CONNACK is out (a device that connects and then only pings now and then never
/// has a packet loop, nor its buffers, for longer than it takes to answer it).
async fn live_tcp(
    mut stream: TcpStream,
    conn: Connected,
    mut io: LinkIo,
    ctx: TcpContext,
    turn: Option<Arc<Turn>>,
    fresh: bool,
) {
    let shared = conn.guard.shared.clone();
    let open = shared.transports.adopt(Transport::Tcp);
    let acc = conn.accepted();
    let link = Link {
        shared: &conn.guard.shared,
        shutdown: &ctx.shutdown,
        slot: &conn.slot,
        acc: &acc,
        turn: turn.as_deref(),
    };
    let step = if fresh && io.inbuf.is_empty() {
        match flush(&mut stream, &mut io.out).await {
            Ok(()) => Ok(Step::Doze),
            Err(e) => Err(e),
        }
    } else {
        // In a box: the loop is the largest state of the task, and a fresh
        // connection that dozes at once never needs it.
        let phase2 = Box::pin(link.serve(&mut stream, &mut io, true));
        phase2.await
    };
    let exit = match step {
        Ok(Step::Doze) => {
            match stream.into_std() {
                Ok(stream) => {
                    open.hand_over();
                    let dozing = Box::new(Dozing {
                        stream,
                        conn,
                        last_rx: io.last_rx,
                        throttle: io.throttle,
                    });
                    ctx.dozer.park(dozing, &ctx.tracker);
                }
                Err(e) => {
                    conn.guard.finish(LinkExit::lost(&e)).await;
                }
            }
            return;
        }
        Ok(Step::Exit(exit)) => exit,
        Err(e) => LinkExit::lost(&e),
    };
    let Connected { guard, slot, .. } = conn;
    if guard.finish(exit).await == Closing::Graceful {
        close_gracefully(&mut stream).await;
    }
    drop(open);
    drop(slot);
}

/// What phase 2 keeps across dozes.
struct LinkIo {
    /// Input not yet handled (empty, and without capacity, while dozing).
    inbuf: BytesMut,
    /// Output not yet written (likewise).
    out: OutBuf,
    /// When the client last sent something (keep-alive runs from there).
    last_rx: Instant,
    /// Its PUBLISH rate limits, if any (boxed: most clients have none, and a dozing
    /// connection carries this).
    throttle: Option<Box<Throttle>>,
}

impl LinkIo {
    /// Phase 2's start: what followed the CONNECT, the CONNACK, the client's rates.
    fn new(inbuf: BytesMut, out: BytesMut, rates: (u32, u64)) -> LinkIo {
        LinkIo {
            inbuf,
            out: OutBuf::from(out),
            last_rx: Instant::now(),
            throttle: Throttle::new(rates).map(Box::new),
        }
    }
}

/// How a run of [`Link::serve`] ended.
enum Step {
    /// The link is over.
    Exit(LinkExit),
    /// The connection is idle, with nothing buffered or held: doze until it is not.
    Doze,
}

/// A connection the core accepted, with what phase 2 starts from.
struct Admitted {
    acc: Accepted,
    /// What the client sent after its CONNECT.
    inbuf: BytesMut,
    /// The CONNACK and whatever else the CONNECT produced.
    out: BytesMut,
    /// Its PUBLISH rates (messages, bytes per second; `0`: no limit).
    rates: (u32, u64),
}

/// Phase 1: a complete CONNECT within the connect timeout, the login, and the core's
/// answer. `Err`: the connection ends here, closed as it says.
async fn handshake<S: Stream>(
    stream: &mut S,
    origin: Origin,
    shared: &Arc<Shared>,
    shutdown: &CancellationToken,
    slot: &Slot,
) -> Result<Admitted, Closing> {
    let Origin {
        peer,
        started,
        identity,
    } = origin;
    let cfg = &shared.config.mqtt;
    // Empty: reads start small and grow (see `grow_if_full`), so a device that sends a
    // CONNECT and then a PINGREQ now and then never holds a full-size buffer.
    let mut inbuf = BytesMut::new();
    let mut out = BytesMut::new();

    // Phase 1: a complete CONNECT within the connect timeout, no larger than the
    // pre-CONNECT limit.
    let connect_limit = cfg.max_connect_packet_size.min(cfg.max_packet_size);
    let deadline = started + Duration::from_millis(cfg.connect_timeout_ms);
    let header: FrameHeader = loop {
        if let Some(&first) = inbuf.first() {
            if first >> 4 != 1 {
                tracing::warn!(first_byte = first, "first packet is not CONNECT; closing");
                return Err(Closing::Now);
            }
        }
        match check(&inbuf, connect_limit) {
            Ok(Some(h)) if inbuf.len() >= h.frame_len() => break h,
            Ok(_) => {}
            Err(e) => {
                // The version is not known yet (the level byte may not have arrived),
                // so no CONNACK could be read: just close (MQTT-4.8.0-1 allows closing
                // on a malformed packet; one over our limit is treated alike).
                tracing::warn!(error = %e, limit = connect_limit, "bad or oversized CONNECT frame; closing");
                return Err(Closing::Now);
            }
        }
        tokio::select! {
            r = stream.read_buf(&mut inbuf) => match r {
                Ok(0) | Err(_) => return Err(Closing::Now),
                Ok(_) => {}
            },
            _ = tokio::time::sleep_until(deadline) => {
                tracing::info!("no CONNECT within the connect timeout; closing");
                return Err(Closing::Now);
            }
            _ = slot.evicted() => {
                tracing::info!("evicted before CONNECT (connection table full)");
                return Err(Closing::Now);
            }
            _ = shutdown.cancelled() => return Err(Closing::Now),
        }
    };
    let grew = inbuf.capacity() > SHRINK_ABOVE;
    let body = &inbuf[header.header_len..header.frame_len()];
    let connect = match decode_body(&header, body, Protocol::V5) {
        Ok(Packet::Connect(c)) => c,
        Ok(_) => return Err(Closing::Now),
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
            if out.is_empty() || flush_bytes(stream, &mut out).await.is_err() {
                return Err(Closing::Now);
            }
            return Err(Closing::Graceful);
        }
    };
    // Credentials are checked before the core sees the CONNECT, off its lock.
    let login = match identity {
        // mTLS with `use_identity_as_username`: the certificate is the credential (and
        // the password file does not govern this user).
        Some(user) => Ok(shared.auth.certificate_login(user)),
        None => tokio::select! {
            r = shared.auth.authenticate(peer.ip(), connect.username, connect.password) => r,
            _ = tokio::time::sleep_until(deadline + Duration::from_millis(cfg.connect_timeout_ms)) => {
                tracing::info!("login not decided in time; closing");
                return Err(Closing::Now);
            }
            _ = slot.evicted() => return Err(Closing::Now),
            _ = shutdown.cancelled() => return Err(Closing::Now),
        },
    };
    let user = match login {
        Ok(user) => user,
        Err(refusal) => {
            // Who and why, never the password.
            tracing::info!(
                user = connect.username.unwrap_or(""),
                client_id = connect.client_id,
                ?refusal,
                "login refused"
            );
            let (v3, v5) = match refusal {
                Refusal::BadCredentials => (
                    mote_codec::reason::v3::BAD_USER_NAME_OR_PASSWORD,
                    mote_codec::reason::BAD_USER_NAME_OR_PASSWORD,
                ),
                Refusal::NotAuthorized => (
                    mote_codec::reason::v3::NOT_AUTHORIZED,
                    mote_codec::reason::NOT_AUTHORIZED,
                ),
                Refusal::Throttled => (
                    mote_codec::reason::v3::NOT_AUTHORIZED,
                    mote_codec::reason::CONNECTION_RATE_EXCEEDED,
                ),
            };
            let ack = mote_codec::ConnAck {
                session_present: false,
                code: if connect.protocol.is_v5() { v5 } else { v3 },
                properties: Default::default(),
            };
            write_packet(&mut out, connect.protocol, &Packet::ConnAck(ack));
            return Err(match flush_bytes(stream, &mut out).await {
                Ok(()) => Closing::Graceful,
                Err(_) => Closing::Now,
            });
        }
    };
    let rates = user.publish_rates(cfg);
    // The core wakes and kicks the connection through its slot's signal.
    let signal: Arc<dyn Wake> = slot.signal().clone();
    // Replies (and deliveries to others) go out only once what they confirm is durable.
    let accepted = shared
        .apply(|core, fx| {
            let now = std::time::Instant::now();
            core.connect(&connect, user, signal.clone(), now, &mut out, fx)
        })
        .await;
    inbuf.advance(header.frame_len());
    shrink(&mut inbuf, grew);
    let Some(acc) = accepted else {
        // A refusing CONNACK (MQTT-3.2.2-5: then close the connection).
        return Err(match flush_bytes(stream, &mut out).await {
            Ok(()) => Closing::Graceful,
            Err(_) => Closing::Now,
        });
    };
    Ok(Admitted {
        acc,
        inbuf,
        out,
        rates,
    })
}

/// What phase 2 of a connection works with.
struct Link<'a> {
    shared: &'a Shared,
    shutdown: &'a CancellationToken,
    slot: &'a Slot,
    acc: &'a Accepted,
    /// Its place in the arrival order across connections (`None`: one worker thread).
    turn: Option<&'a Turn>,
}

impl Link<'_> {
    /// Phase 2: packets until the end, or until the connection may doze. Every return
    /// (an I/O error through `?` included) goes back to [`run`], which ends the link or
    /// lets it doze and calls this again.
    ///
    /// `may_doze`: whether it may return [`Step::Doze`] (a plain TCP connection with a
    /// dozer); otherwise a quiet connection gives back its buffers and stays.
    async fn serve<S: Stream>(
        &self,
        stream: &mut S,
        io: &mut LinkIo,
        may_doze: bool,
    ) -> std::io::Result<Step> {
        let LinkIo {
            inbuf,
            out,
            last_rx,
            throttle,
        } = io;
        let (shared, acc) = (self.shared, self.acc);
        let max_packet = shared.config.mqtt.max_packet_size;
        let protocol = acc.protocol;
        let keep_alive = self.keep_alive();
        // The futures raced below live across iterations: creating them anew for every
        // packet would register and deregister a timer and a cancellation waiter each
        // time. The keep-alive timer is not moved on every packet either: when it fires
        // early (packets came meanwhile) it is reset to the deadline they made.
        let far = Duration::from_secs(86_400 * 365);
        let keepalive = tokio::time::sleep_until(*last_rx + keep_alive.unwrap_or(far));
        let cancelled = self.shutdown.cancelled();
        tokio::pin!(keepalive, cancelled);
        // Deliveries, a kick, eviction: all come through the slot's signal.
        let signal = self.slot.signal();
        // The last drain stopped at a full batch: more is queued.
        let mut more = false;
        // The CONNECT's CONNACK (and anything else it produced), if not sent yet.
        flush(stream, out).await?;
        // Look for deliveries at once: back from a doze, the wake-up that ended it may
        // have come before this task did (whatever else woke it, input or a deadline, is
        // looked at below).
        signal.wake();
        let resume = tokio::time::sleep_until(Instant::now());
        // When the connection was last busy (input, or deliveries): after
        // [`IDLE_RELEASE`] without either it gives back its buffers and dozes. The timer
        // is moved lazily, like the keep-alive timer, and not armed once they are given
        // back (a stream that cannot doze).
        let mut busy = Instant::now();
        let idle = tokio::time::sleep_until(busy + IDLE_RELEASE);
        tokio::pin!(resume, idle);
        let mut released = false;
        // It published to a congested subscriber (`proto/backpressure.rs`): nothing of
        // it is read or handled until the subscriber drained (a wake-up) or this passed.
        let mut blocked: Option<Instant> = None;
        // Replies waiting for their records to be durable, in order (see `runtime/held.rs`).
        let mut held = Held::default();
        // Deliveries decided under the core's lock, encoded after it (`session::Outbox`).
        let mut outbox = Outbox::default();
        loop {
            // Over its PUBLISH rate: nothing of this client is read or handled until the
            // debt is repaid (what is buffered waits too).
            let paused = throttle
                .as_mut()
                .and_then(|t| t.paused_until(Instant::now()))
                .or(blocked.filter(|&b| b > Instant::now()));
            if let Some(until) = paused {
                resume.as_mut().reset(until);
            }
            // Handle every complete frame in the buffer, decoded outside the core's lock
            // (the lock is the broker's ceiling, issue #15), at most `DECODED_BATCH` per
            // hold of the lock (none: no lock).
            let mut consumed = 0;
            let mut close = None;
            // The frames woke other connections (deliveries for them), and how many
            // frames were handled.
            let mut woke = false;
            let mut frames_handled = 0;
            let grew = inbuf.capacity() > SHRINK_ABOVE;
            let mut ready = paused.is_none() && !held.full();
            while ready {
                let mut frames: Vec<(usize, Packet<'_>)> = Vec::new();
                let mut at = consumed;
                // A bad frame after the decoded ones: it closes the connection once
                // every frame before it was handled.
                let mut bad = None;
                while frames.len() < DECODED_BATCH {
                    let rest = &inbuf[at..];
                    let h = match check(rest, max_packet) {
                        Ok(Some(h)) if rest.len() >= h.frame_len() => h,
                        Ok(_) => break,
                        Err(e) => {
                            tracing::warn!(error = %e, "packet too large; closing");
                            bad = Some(Close::Error(e.reason_code()));
                            break;
                        }
                    };
                    match decode_body(&h, &rest[h.header_len..h.frame_len()], protocol) {
                        Ok(p) => frames.push((h.frame_len(), p)),
                        Err(e) => {
                            tracing::warn!(error = %e, "malformed packet; closing");
                            bad = Some(Close::Error(e.reason_code()));
                            break;
                        }
                    }
                    at += h.frame_len();
                }
                if frames.is_empty() {
                    close = bad;
                    break;
                }
                let full = frames.len() == DECODED_BATCH;
                let mut handled = 0;
                // Input that arrived before this connection's, on others, goes first.
                if let Some(turn) = self.turn {
                    turn.wait().await;
                }
                let ((), lsn, fx) = shared.apply_held(|core, fx| {
                    let now = std::time::Instant::now();
                    for (len, packet) in &frames {
                        // Over its rate: this PUBLISH and what follows wait.
                        if let (Some(t), Packet::Publish(_)) = (throttle.as_mut(), packet) {
                            if t.exhausted() {
                                break;
                            }
                            t.take(*len);
                        }
                        handled += 1;
                        consumed += len;
                        if let Err(c) = core.handle_only(
                            &acc.client_id,
                            acc.conn_id,
                            packet,
                            now,
                            &mut out.bytes,
                            fx,
                        ) {
                            close = Some(c);
                            break;
                        }
                        // Its subscriber is congested: what follows waits.
                        if core.pausing() {
                            break;
                        }
                    }
                    // What the batch let the session send (acknowledgements opened its
                    // window, a SUBSCRIBE found retained messages), once for the batch.
                    // After a takeover the session is another connection's: it refuses.
                    let _ = core.drain_deferred(
                        &acc.client_id,
                        acc.conn_id,
                        now,
                        &mut out.bytes,
                        &mut outbox,
                    );
                    blocked = core.take_pause().map(Instant::from_std);
                });
                if let Some(turn) = self.turn {
                    turn.done();
                }
                // Encoded once the next connection in arrival order may go on.
                outbox.write(out);
                woke |= !fx.wake.is_empty();
                frames_handled += handled;
                held.push(out.bytes.len(), lsn, fx, shared.durable_now());
                let all = handled == frames.len() && close.is_none();
                if all && bad.is_some() {
                    close = bad;
                }
                ready = all && full && blocked.is_none() && !held.full();
            }
            inbuf.advance(consumed);
            shrink(inbuf, grew);
            match close {
                Some(Close::Disconnected { will }) => {
                    // The client ended normally; that its socket is gone by the time
                    // our last replies go out does not make the end abnormal.
                    let last = Box::pin(settle_and_flush(shared, stream, out, &mut held));
                    let _ = last.await;
                    return Ok(Step::Exit(LinkExit::ended(
                        End::Normal { will },
                        Closing::Now,
                    )));
                }
                Some(Close::Error(code)) => {
                    if code != mote_codec::reason::PROTOCOL_ERROR {
                        tracing::info!(reason = code, "closing connection");
                    } else {
                        tracing::warn!(reason = code, "protocol error; closing");
                    }
                    disconnect_packet(&mut out.bytes, protocol, code);
                    return Ok(Step::Exit(self.close_boxed(stream, out, &mut held).await));
                }
                Some(Close::TakenOver) => return Ok(Step::Exit(LinkExit::taken_over())),
                None => {}
            }
            if woke && !out.is_empty() && frames_handled <= YIELD_MAX_FRAMES {
                // Deliveries before acknowledgements: the subscribers just woken write
                // their messages before this connection writes its PUBACKs, so a
                // message's way to its subscribers does not wait for its publisher's
                // acknowledgement to be written (with one thread they take turns).
                // Only for a few frames: a client sending many at once is throughput-
                // bound, and its batch is written at once.
                tokio::task::yield_now().await;
            }
            let sent = flush_held(stream, out, &mut held, more).await?;
            shared.transports.sent(S::TRANSPORT, sent);
            more = false;
            // The frames just handled may have used up the rate, or met congestion.
            let paused = throttle
                .as_mut()
                .and_then(|t| t.paused_until(Instant::now()))
                .or(blocked.filter(|&b| b > Instant::now()));
            if let Some(until) = paused {
                resume.as_mut().reset(until);
            }

            tokio::select! {
                // The client was not idle: the broker was not reading it.
                () = &mut resume, if paused.is_some() => {
                    *last_rx = Instant::now();
                    blocked = None;
                }
                // The first held batch of replies may go.
                r = shared.durable(held.head().unwrap_or(0)), if held.head().is_some() => {
                    if r.is_err() {
                        // The journal failed: they must never be sent (see `Shared::apply`).
                        std::future::pending::<()>().await;
                    }
                    held.release(shared.durable_now());
                }
                r = stream.read_buf(inbuf), if paused.is_none() && !held.full() => {
                    match r {
                        Ok(0) => return Ok(Step::Exit(LinkExit::ended(End::Abnormal, Closing::Now))),
                        Ok(n) => {
                            *last_rx = Instant::now();
                            grow_if_full(inbuf);
                            if released {
                                released = false;
                                idle.as_mut().reset(*last_rx + IDLE_RELEASE);
                            }
                            self.slot.touch();
                            shared.transports.received(S::TRANSPORT, n);
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "read failed");
                            return Ok(Step::Exit(LinkExit::ended(End::Abnormal, Closing::Now)));
                        }
                    }
                }
                flags = signal.wait() => {
                    if Signal::evicted_in(flags) {
                        // Idle longest while the connection table was full (3.1.1
                        // §3.1.2.10 lets a server disconnect an inactive client whatever
                        // its Keep Alive).
                        tracing::info!("evicted as idle (connection table full); closing");
                        disconnect_packet(&mut out.bytes, protocol, mote_codec::reason::SERVER_BUSY);
                        return Ok(Step::Exit(self.close_boxed(stream, out, &mut held).await));
                    }
                    busy = Instant::now();
                    if released {
                        released = false;
                        idle.as_mut().reset(busy + IDLE_RELEASE);
                    }
                    // Woken: the subscriber it waited for drained (or it has deliveries
                    // of its own to take, and must read their acknowledgements).
                    blocked = None;
                    let reason = signal.kick().get();
                    if reason != 0 {
                        // Taken over (the core already detached us) or too slow (still
                        // attached: ending the link detaches it and keeps the session).
                        disconnect_packet(&mut out.bytes, protocol, reason);
                        return Ok(Step::Exit(self.close_boxed(stream, out, &mut held).await));
                    }
                    let now = std::time::Instant::now();
                    let (res, lsn, fx) = shared.apply_held(|core, _| {
                        core.drain_deferred(&acc.client_id, acc.conn_id, now, &mut out.bytes, &mut outbox)
                    });
                    outbox.write(out);
                    held.push(out.bytes.len(), lsn, fx, shared.durable_now());
                    match res {
                        Ok(m) => more = m,
                        Err(_) => return Ok(Step::Exit(LinkExit::taken_over())),
                    }
                }
                _ = &mut keepalive, if keep_alive.is_some() => {
                    if paused.is_some() {
                        // The broker is not reading it: its silence is not its own.
                        *last_rx = Instant::now();
                    }
                    let due = *last_rx + keep_alive.unwrap_or(far);
                    if due > Instant::now() {
                        // Packets came since the timer was set: wait for their deadline.
                        keepalive.as_mut().reset(due);
                        continue;
                    }
                    // MQTT-3.1.2-24 (5.0) / 3.1.2-10 (3.1.1): 1.5 × Keep Alive without a packet.
                    tracing::info!("keep alive expired; closing");
                    disconnect_packet(&mut out.bytes, protocol, mote_codec::reason::KEEP_ALIVE_TIMEOUT);
                    return Ok(Step::Exit(self.close_boxed(stream, out, &mut held).await));
                }
                () = &mut idle, if !released => {
                    let due = busy.max(*last_rx) + IDLE_RELEASE;
                    if due > Instant::now() {
                        idle.as_mut().reset(due);
                    } else if inbuf.is_empty() && out.is_empty() && held.head().is_none() {
                        *inbuf = BytesMut::new();
                        *out = OutBuf::default();
                        shared.lock().idle(&acc.client_id, acc.conn_id);
                        if paused.is_none() && !more && may_doze {
                            return Ok(Step::Doze);
                        }
                        released = true;
                    } else {
                        idle.as_mut().reset(Instant::now() + IDLE_RELEASE);
                    }
                }
                _ = &mut cancelled => {
                    disconnect_packet(&mut out.bytes, protocol, mote_codec::reason::SERVER_SHUTTING_DOWN);
                    return Ok(Step::Exit(self.close_boxed(stream, out, &mut held).await));
                }
            }
        }
    }

    /// How long the client may stay silent (see [`keep_alive_limit`]).
    fn keep_alive(&self) -> Option<Duration> {
        keep_alive_limit(self.acc.keep_alive)
    }

    /// [`Link::close_with`] in a box of its own: it is rare, and as large as the rest of
    /// phase 2's state, which every connection would otherwise carry.
    fn close_boxed<'a, S: Stream>(
        &'a self,
        stream: &'a mut S,
        out: &'a mut OutBuf,
        held: &'a mut Held,
    ) -> std::pin::Pin<Box<impl std::future::Future<Output = LinkExit> + Send + 'a>> {
        Box::pin(self.close_with(stream, out, held))
    }

    /// Sends what is in `out` (a DISCONNECT, after the replies `held` held back once they
    /// may go) and ends the link as lost; the socket is then
    /// closed gracefully so the client can read it. A client that does not read gets at
    /// most [`LINGER_MAX`] to take it, not [`WRITE_TIMEOUT`]: the link's end (its will)
    /// waits for this.
    async fn close_with<S: Stream>(
        &self,
        stream: &mut S,
        out: &mut OutBuf,
        held: &mut Held,
    ) -> LinkExit {
        settle(self.shared, held).await;
        match tokio::time::timeout(LINGER_MAX, flush(stream, out)).await {
            Ok(Ok(())) => LinkExit::ended(End::Abnormal, Closing::Graceful),
            _ => LinkExit::ended(End::Abnormal, Closing::Now),
        }
    }
}
