//! One raw MQTT connection over `mote-codec` (or a core NATS connection, see
//! [`crate::nats`]), over TCP or TLS ([`crate::tls`]): a read buffer, a write buffer,
//! and the packets the load generator needs turned into small owned values.
//!
//! No third-party MQTT client is involved, so what is measured is the broker plus a
//! thin, batched client: every read drains all complete frames, every write sends all
//! queued packets in one `write_all`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use bytes::{Buf as _, BytesMut};
use mote_codec::{
    Ack, Connect, Disconnect, Packet, PropValues, Properties, Protocol, Publish, QoS, SubOptions,
    Subscribe, SubscribeFilter,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::tls::{Stream, TlsClient, TlsInfo};

/// Largest frame accepted from the broker (the MQTT maximum).
const MAX_FRAME: u32 = 268_435_460;

/// How long the broker may take to answer CONNECT, SUBSCRIBE or DISCONNECT.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The marker the load generator writes at the start of every payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Mark {
    /// Index of the publisher that sent the message.
    pub(crate) publisher: u32,
    /// Sequence number of the message within its publisher, from 0.
    pub(crate) seq: u64,
    /// Nanoseconds since the process's reference instant when it was encoded.
    pub(crate) sent_ns: u64,
}

/// Bytes of a [`Mark`] on the wire; the smallest payload the generator sends.
pub(crate) const MARK_LEN: usize = 20;

impl Mark {
    /// Writes the mark at the start of `payload` (at least [`MARK_LEN`] bytes).
    pub(crate) fn write(&self, payload: &mut [u8]) {
        payload[0..4].copy_from_slice(&self.publisher.to_be_bytes());
        payload[4..12].copy_from_slice(&self.seq.to_be_bytes());
        payload[12..20].copy_from_slice(&self.sent_ns.to_be_bytes());
    }

    /// Reads the mark at the start of `payload`, if it is long enough.
    pub(crate) fn read(payload: &[u8]) -> Option<Mark> {
        let p: &[u8; MARK_LEN] = payload.get(..MARK_LEN)?.try_into().ok()?;
        let (a, rest) = p.split_at(4);
        let (b, c) = rest.split_at(8);
        Some(Mark {
            publisher: u32::from_be_bytes(a.try_into().ok()?),
            seq: u64::from_be_bytes(b.try_into().ok()?),
            sent_ns: u64::from_be_bytes(c.try_into().ok()?),
        })
    }
}

/// A received packet reduced to what the generator acts on; owns nothing borrowed.
#[derive(Debug, Clone, Copy)]
pub(crate) enum In {
    /// CONNACK: session present, return/reason code.
    ConnAck { present: bool, code: u8 },
    /// SUBACK: the first return/reason code and how many filters were refused.
    SubAck { code: u8, refused: usize },
    /// PUBACK: packet id, reason code.
    PubAck { pid: u16, reason: u8 },
    /// PUBREC: packet id, reason code.
    PubRec { pid: u16, reason: u8 },
    /// PUBREL: packet id.
    PubRel { pid: u16 },
    /// PUBCOMP: packet id.
    PubComp { pid: u16 },
    /// PUBLISH: its QoS, packet id and the mark in its payload (if any).
    Publish {
        qos: QoS,
        pid: u16,
        mark: Option<Mark>,
    },
    /// DISCONNECT from the server (v5), with its reason code.
    Disconnect { reason: u8 },
    /// NATS `PONG`: the server has processed everything sent before our `PING`.
    Pong,
    /// Anything else (PINGRESP, UNSUBACK, AUTH): ignored.
    Other,
}

impl In {
    /// Reduces a decoded packet.
    fn from_packet(p: &Packet<'_>) -> In {
        match p {
            Packet::ConnAck(c) => In::ConnAck {
                present: c.session_present,
                code: c.code,
            },
            Packet::SubAck(s) => In::SubAck {
                code: s.codes.first().copied().unwrap_or(0x80),
                refused: s.codes.iter().filter(|&&c| c >= 0x80).count(),
            },
            Packet::PubAck(a) => In::PubAck {
                pid: a.packet_id,
                reason: a.reason,
            },
            Packet::PubRec(a) => In::PubRec {
                pid: a.packet_id,
                reason: a.reason,
            },
            Packet::PubRel(a) => In::PubRel { pid: a.packet_id },
            Packet::PubComp(a) => In::PubComp { pid: a.packet_id },
            Packet::Publish(p) => In::Publish {
                qos: p.qos,
                pid: p.packet_id,
                mark: Mark::read(p.payload),
            },
            Packet::Disconnect(d) => In::Disconnect { reason: d.reason },
            _ => In::Other,
        }
    }
}

/// How a client connects.
#[derive(Debug, Clone)]
pub(crate) struct ConnectOpts {
    /// Protocol version.
    pub(crate) protocol: Protocol,
    /// Client identifier.
    pub(crate) client_id: String,
    /// Clean session (3.1.1) / clean start (5).
    pub(crate) clean: bool,
    /// v5 Session Expiry Interval, seconds.
    pub(crate) session_expiry: Option<u32>,
    /// Speak core NATS instead of MQTT (`protocol`, `clean` and `session_expiry` are
    /// then unused; `client_id` is the connection's name).
    pub(crate) nats: bool,
    /// Keep Alive announced in CONNECT, seconds (no PINGREQ is ever sent).
    pub(crate) keep_alive: u16,
    /// MQTT over TLS with this client; plain TCP without.
    pub(crate) tls: Option<TlsClient>,
}

/// A connected MQTT client socket with its buffers.
#[derive(Debug)]
pub(crate) struct Conn {
    stream: Stream,
    rbuf: BytesMut,
    wbuf: BytesMut,
    protocol: Protocol,
    /// Core NATS instead of MQTT.
    nats: bool,
    /// The next NATS subscription id.
    next_sid: u64,
    /// Time from starting the TCP connect to the transport being ready (TCP connected,
    /// and with TLS the handshake done), before any MQTT byte.
    transport_setup: Duration,
}

impl Conn {
    /// Opens a TCP connection (and a TLS session over it with `opts.tls`), sends
    /// CONNECT and waits for a successful CONNACK. Returns the connection and the
    /// CONNACK's Session Present flag.
    ///
    /// # Errors
    /// Network errors, a failed TLS handshake, a timeout, or a refused CONNECT.
    pub(crate) async fn connect(
        addr: SocketAddr,
        opts: &ConnectOpts,
    ) -> anyhow::Result<(Conn, bool)> {
        let t0 = Instant::now();
        let tcp = TcpStream::connect(addr)
            .await
            .with_context(|| format!("cannot connect to {addr}"))?;
        tcp.set_nodelay(true)?;
        let stream = match &opts.tls {
            None => Stream::Tcp(tcp),
            Some(tls) => tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.handshake(tcp))
                .await
                .map_err(|_| anyhow::anyhow!("no TLS handshake within {HANDSHAKE_TIMEOUT:?}"))?
                .with_context(|| format!("{}: TLS to {addr}", opts.client_id))?,
        };
        let mut conn = Conn {
            transport_setup: t0.elapsed(),
            stream,
            rbuf: BytesMut::with_capacity(256 * 1024),
            wbuf: BytesMut::with_capacity(256 * 1024),
            protocol: opts.protocol,
            nats: opts.nats,
            next_sid: 1,
        };
        if opts.nats {
            // The server speaks first (INFO); CONNECT + PING, and its PONG confirms.
            crate::nats::push_connect(&mut conn.wbuf, &opts.client_id);
            conn.flush().await?;
            conn.expect_pong(HANDSHAKE_TIMEOUT)
                .await
                .with_context(|| format!("{}: NATS CONNECT", opts.client_id))?;
            return Ok((conn, false));
        }
        let properties = Properties::Values(&PropValues {
            session_expiry_interval: opts.session_expiry,
            ..PropValues::default()
        });
        conn.push(&Packet::Connect(Connect {
            protocol: opts.protocol,
            clean_start: opts.clean,
            // No pings are sent: runs are bounded and a ping would only add noise (0 by
            // default; a broker that refuses 0 gets a long one, --keep-alive).
            keep_alive: opts.keep_alive,
            properties,
            client_id: &opts.client_id,
            will: None,
            username: None,
            password: None,
        }))?;
        conn.flush().await?;
        match conn.expect_one(HANDSHAKE_TIMEOUT).await? {
            In::ConnAck { present, code: 0 } => Ok((conn, present)),
            In::ConnAck { code, .. } => {
                bail!("{}: CONNECT refused with code {code:#04x}", opts.client_id)
            }
            other => bail!("{}: expected CONNACK, got {other:?}", opts.client_id),
        }
    }

    /// Subscribes to one filter and waits for a SUBACK granting it.
    ///
    /// # Errors
    /// Network errors, a timeout, or a refused subscription.
    pub(crate) async fn subscribe(&mut self, filter: &str, qos: QoS) -> anyhow::Result<()> {
        self.subscribe_many(&[filter.to_owned()], qos).await
    }

    /// Subscribes to many filters: SUBSCRIBE packets of at most 100 filters each, all
    /// sent before the SUBACKs are read (NATS: one `SUB` each, then a `PING` whose
    /// `PONG` tells they are in place).
    ///
    /// # Errors
    /// Network errors, a timeout, or a refused subscription.
    pub(crate) async fn subscribe_many(
        &mut self,
        filters: &[String],
        qos: QoS,
    ) -> anyhow::Result<()> {
        if self.nats {
            for f in filters {
                crate::nats::push_sub(&mut self.wbuf, f, self.next_sid);
                self.next_sid += 1;
            }
            crate::nats::push_ping(&mut self.wbuf);
            self.flush().await?;
            return self.expect_pong(HANDSHAKE_TIMEOUT).await.context("SUB");
        }
        let mut packets = 0usize;
        for (n, chunk) in filters.chunks(100).enumerate() {
            let list: Vec<SubscribeFilter<'_>> = chunk
                .iter()
                .map(|f| SubscribeFilter {
                    filter: f,
                    options: SubOptions::qos(qos),
                })
                .collect();
            self.push(&Packet::Subscribe(Subscribe {
                packet_id: u16::try_from(n % 65_535 + 1).unwrap_or(1),
                properties: Properties::default(),
                filters: mote_codec::List::Slice(&list),
            }))?;
            packets += 1;
        }
        self.flush().await?;
        for _ in 0..packets {
            match self.expect_one(HANDSHAKE_TIMEOUT).await? {
                In::SubAck { refused: 0, .. } => {}
                In::SubAck { code, refused } => bail!(
                    "SUBSCRIBE {} refused {refused} filter(s) (code {code:#04x})",
                    filters.first().map_or("", String::as_str)
                ),
                other => bail!("expected SUBACK, got {other:?}"),
            }
        }
        Ok(())
    }

    /// What the TLS handshake settled on; `None` over plain TCP.
    pub(crate) fn tls_info(&self) -> Option<TlsInfo> {
        self.stream.tls_info()
    }

    /// Time from starting the TCP connect to the transport being ready (with TLS: the
    /// handshake done), before CONNECT was sent.
    pub(crate) fn transport_setup(&self) -> Duration {
        self.transport_setup
    }

    /// Sends DISCONNECT and waits for the broker to close the connection first, then
    /// closes it. The side that closes first keeps the TIME_WAIT state, so many short
    /// connections in a row leave it with the broker's port and do not use up the
    /// client's ephemeral ports.
    ///
    /// # Errors
    /// Network errors while sending, or no close within the handshake timeout.
    pub(crate) async fn disconnect_broker_closes(mut self) -> anyhow::Result<()> {
        self.push(&Packet::Disconnect(Disconnect::new(0)))?;
        self.flush().await?;
        let mut scratch = [0u8; 4096];
        let closed = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
            // End of file, or over TLS the error of a close without close_notify: closed
            // either way.
            while let Ok(n) = self.stream.read(&mut scratch).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
        if closed.is_err() {
            bail!("the broker did not close the connection within {HANDSHAKE_TIMEOUT:?} of DISCONNECT");
        }
        Ok(())
    }

    /// Sends DISCONNECT and waits (briefly) for the broker to close the socket, so the
    /// session is offline when this returns.
    ///
    /// # Errors
    /// Network errors while sending.
    pub(crate) async fn disconnect(mut self) -> anyhow::Result<()> {
        if self.nats {
            // NATS has no DISCONNECT: a PONG tells that everything before was processed.
            crate::nats::push_ping(&mut self.wbuf);
            self.flush().await?;
            self.expect_pong(HANDSHAKE_TIMEOUT).await?;
        } else {
            self.push(&Packet::Disconnect(Disconnect::new(0)))?;
            self.flush().await?;
        }
        let _ = self.stream.shutdown().await;
        let mut scratch = [0u8; 4096];
        let _ = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
            while let Ok(n) = self.stream.read(&mut scratch).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
        Ok(())
    }

    /// Encodes `packet` into the write buffer (sent by the next [`Conn::flush`]).
    ///
    /// # Errors
    /// When the packet cannot be encoded.
    pub(crate) fn push(&mut self, packet: &Packet<'_>) -> anyhow::Result<()> {
        packet
            .encode_to(self.protocol, &mut self.wbuf)
            .map_err(|e| anyhow::anyhow!("cannot encode {:?}: {e:?}", packet.packet_type()))
    }

    /// Encodes a PUBLISH (with the RETAIN flag when `retain`).
    ///
    /// # Errors
    /// When the packet cannot be encoded.
    pub(crate) fn push_publish(
        &mut self,
        topic: &str,
        qos: QoS,
        retain: bool,
        pid: u16,
        payload: &[u8],
    ) -> anyhow::Result<()> {
        if self.nats {
            if qos != QoS::AtMostOnce || retain {
                bail!("core NATS has neither QoS 1/2 nor retained messages");
            }
            crate::nats::push_pub(&mut self.wbuf, topic, payload);
            return Ok(());
        }
        self.push(&Packet::Publish(Publish {
            dup: false,
            qos,
            retain,
            topic,
            packet_id: pid,
            properties: Properties::default(),
            payload,
        }))
    }

    /// Encodes an acknowledgement of type `kind` (PUBACK, PUBREC, PUBREL or PUBCOMP).
    ///
    /// # Errors
    /// When the packet cannot be encoded.
    pub(crate) fn push_ack(&mut self, kind: AckKind, pid: u16) -> anyhow::Result<()> {
        if self.nats {
            bail!("core NATS has no acknowledgements");
        }
        let a = Ack::new(pid);
        self.push(&match kind {
            AckKind::PubAck => Packet::PubAck(a),
            AckKind::PubRec => Packet::PubRec(a),
            AckKind::PubRel => Packet::PubRel(a),
            AckKind::PubComp => Packet::PubComp(a),
        })
    }

    /// Bytes waiting in the write buffer.
    pub(crate) fn pending(&self) -> usize {
        self.wbuf.len()
    }

    /// Writes the whole write buffer to the socket.
    ///
    /// # Errors
    /// Network errors.
    pub(crate) async fn flush(&mut self) -> anyhow::Result<()> {
        if !self.wbuf.is_empty() {
            self.stream
                .write_all(&self.wbuf)
                .await
                .context("write to broker")?;
            // Over TLS, records the socket did not take yet wait in rustls; over TCP
            // this returns at once.
            self.stream.flush().await.context("write to broker")?;
            self.wbuf.clear();
        }
        Ok(())
    }

    /// Reads more bytes from the socket, waiting at most `wait`. Returns `false` on
    /// timeout.
    ///
    /// # Errors
    /// When the broker closed the connection or the read failed.
    pub(crate) async fn fill(&mut self, wait: Duration) -> anyhow::Result<bool> {
        if self.rbuf.capacity() - self.rbuf.len() < 64 * 1024 {
            self.rbuf.reserve(256 * 1024);
        }
        // `read_buf` is cancel-safe: a timed-out read has read nothing.
        match tokio::time::timeout(wait, self.stream.read_buf(&mut self.rbuf)).await {
            Err(_) => Ok(false),
            Ok(Ok(0)) => bail!("broker closed the connection"),
            Ok(Ok(_)) => Ok(true),
            Ok(Err(e)) => Err(e).context("read from broker"),
        }
    }

    /// Takes the next complete packet from the read buffer, if there is one.
    ///
    /// # Errors
    /// When the broker sent a malformed packet.
    pub(crate) fn next(&mut self) -> anyhow::Result<Option<In>> {
        if self.nats {
            use crate::nats::Frame;
            let Some((frame, used)) = crate::nats::parse(&self.rbuf)? else {
                return Ok(None);
            };
            self.rbuf.advance(used);
            return Ok(Some(match frame {
                Frame::Msg(mark) => In::Publish {
                    qos: QoS::AtMostOnce,
                    pid: 0,
                    mark,
                },
                Frame::Ping => {
                    // Answered with the next flush.
                    crate::nats::push_pong(&mut self.wbuf);
                    In::Other
                }
                Frame::Pong => In::Pong,
                Frame::Other => In::Other,
            }));
        }
        let (packet, used) = match mote_codec::decode(&self.rbuf, self.protocol, MAX_FRAME) {
            Ok(Some((p, used))) => (In::from_packet(&p), used),
            Ok(None) => return Ok(None),
            Err(e) => bail!("malformed packet from broker: {e:?}"),
        };
        self.rbuf.advance(used);
        Ok(Some(packet))
    }

    /// NATS: waits for a `PONG`, answering the server's `PING`s meanwhile.
    async fn expect_pong(&mut self, wait: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            while let Some(p) = self.next()? {
                // Messages still arriving (a subscriber saying goodbye) are dropped.
                if let In::Pong = p {
                    return Ok(());
                }
            }
            self.flush().await?;
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() || !self.fill(left).await? {
                bail!("no PONG from the server within {wait:?}");
            }
        }
    }

    /// Waits for one packet.
    async fn expect_one(&mut self, wait: Duration) -> anyhow::Result<In> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(p) = self.next()? {
                return Ok(p);
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() || !self.fill(left).await? {
                bail!("no answer from the broker within {wait:?}");
            }
        }
    }
}

/// The four acknowledgement packets of QoS 1 and 2.
#[allow(clippy::enum_variant_names)] // the packets' names
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AckKind {
    /// PUBACK.
    PubAck,
    /// PUBREC.
    PubRec,
    /// PUBREL.
    PubRel,
    /// PUBCOMP.
    PubComp,
}
