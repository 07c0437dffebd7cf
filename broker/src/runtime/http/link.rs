//! The HTTP listener's links into the core: an MQTT 5 client over an in-process pipe,
//! served by the same connection code as a TCP client (`connection::serve`). HTTP
//! publish and SSE subscribe therefore go through CONNECT (credentials, access rules),
//! durability before acknowledgement, sessions and queue limits exactly as MQTT does:
//! an adapter, not a second protocol path.
//!
//! A [`Link`] is a handle on a task that owns the pipe's client end: commands go in
//! through a channel, deliveries come out through another.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use mote_codec::{
    check, decode_body, Ack, Connect, Disconnect, Packet, PropList, PropValues, Properties,
    Protocol, Publish, QoS, SubOptions, Subscribe, SubscribeFilter,
};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::{mpsc, oneshot};

use super::HttpState;
use crate::proto::session::write_packet;
use crate::runtime::connection;

/// Bytes the pipe buffers in each direction.
const PIPE_BYTES: usize = 256 * 1024;

/// QoS 1/2 publishes a link has in flight at most (the broker's Receive Maximum may be
/// lower).
const MAX_IN_FLIGHT: u16 = 1024;

/// How long the broker may take to answer CONNECT.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a link could not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum LinkError {
    /// The broker refused the CONNECT with this reason code.
    #[error("connection refused (reason {0:#04x})")]
    Refused(u8),
    /// The connection table is full.
    #[error("the broker is at its connection limit")]
    Busy,
    /// The message is larger than the broker accepts.
    #[error("the message is larger than the broker's maximum packet size")]
    TooLarge,
    /// The link ended (the broker closed it, or is shutting down).
    #[error("the broker closed the link")]
    Closed,
}

/// How a link connects.
#[derive(Debug, Clone)]
pub(crate) struct LinkConfig {
    /// The MQTT client id (never empty: the HTTP layer names its links).
    pub(crate) client_id: String,
    pub(crate) clean_start: bool,
    pub(crate) session_expiry: u32,
    pub(crate) username: Option<String>,
    pub(crate) password: Option<Vec<u8>>,
    /// The link's Receive Maximum: QoS 1 deliveries unacknowledged at once.
    pub(crate) receive_maximum: u16,
    /// The HTTP client, for the broker's logs.
    pub(crate) peer: SocketAddr,
    /// Payload bytes of deliveries waiting for the reader beyond which QoS 0 ones are
    /// dropped (the delivery channel bounds their count).
    pub(crate) max_buffered_bytes: usize,
}

/// The properties of a message the HTTP API reads and writes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub(crate) struct MsgProps {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) payload_format_indicator: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) message_expiry_interval: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) content_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) response_topic: Option<String>,
    /// Base64 in JSON.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "serialize_b64"
    )]
    pub(crate) correlation_data: Option<Bytes>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) user_properties: Vec<(String, String)>,
}

fn serialize_b64<S: serde::Serializer>(v: &Option<Bytes>, s: S) -> Result<S::Ok, S::Error> {
    use base64::Engine as _;
    match v {
        Some(b) => s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(b)),
        None => s.serialize_none(),
    }
}

impl MsgProps {
    /// The properties of a decoded packet.
    pub(crate) fn read(p: &Properties<'_>) -> MsgProps {
        let v = p.values();
        MsgProps {
            payload_format_indicator: v.payload_format_indicator,
            message_expiry_interval: v.message_expiry_interval,
            content_type: v.content_type.map(str::to_owned),
            response_topic: v.response_topic.map(str::to_owned),
            correlation_data: v.correlation_data.map(Bytes::copy_from_slice),
            user_properties: v
                .user_properties
                .iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        }
    }
}

/// A message to publish.
#[derive(Debug, Clone)]
pub(crate) struct OutMessage {
    pub(crate) topic: String,
    pub(crate) payload: Bytes,
    pub(crate) qos: QoS,
    pub(crate) retain: bool,
    pub(crate) props: MsgProps,
}

/// A delivery from the broker.
#[derive(Debug, Clone)]
pub(crate) struct Incoming {
    pub(crate) topic: String,
    pub(crate) payload: Bytes,
    pub(crate) qos: QoS,
    pub(crate) retain: bool,
    /// 0 for QoS 0; acknowledge others with [`Link::ack`].
    pub(crate) packet_id: u16,
    pub(crate) props: MsgProps,
}

/// The broker's answer to a publish: the PUBACK's (or PUBREC's) reason code; 0 for QoS 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PublishAck {
    pub(crate) reason: u8,
    pub(crate) reason_string: Option<String>,
}

/// A SUBSCRIBE: filters with their QoS, and v5 user properties.
#[derive(Debug, Default)]
pub(crate) struct Subscription {
    pub(crate) filters: Vec<(String, QoS)>,
    pub(crate) user_properties: Vec<(String, String)>,
}

enum Cmd {
    Publish(OutMessage, oneshot::Sender<Result<PublishAck, LinkError>>),
    Subscribe(Subscription, oneshot::Sender<Result<Vec<u8>, LinkError>>),
    Ack(u16),
}

/// What a packet id waits for.
enum Waiting {
    PubAck(oneshot::Sender<Result<PublishAck, LinkError>>),
    /// QoS 2: PUBREC came (with this answer), PUBCOMP is awaited.
    PubComp(PublishAck, oneshot::Sender<Result<PublishAck, LinkError>>),
    SubAck(oneshot::Sender<Result<Vec<u8>, LinkError>>),
}

/// A connected link; the connection ends when the last handle is dropped.
#[derive(Debug, Clone)]
pub(crate) struct Link {
    cmds: mpsc::Sender<Cmd>,
    /// QoS 0 deliveries dropped because the reader's buffer was full.
    dropped: Arc<AtomicU64>,
    /// Payload bytes delivered and not yet taken by the reader ([`Link::taken`]).
    buffered: Arc<AtomicUsize>,
}

impl std::fmt::Debug for Cmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cmd::Publish(m, _) => write!(f, "Publish({})", m.topic),
            Cmd::Subscribe(sub, _) => write!(f, "Subscribe({})", sub.filters.len()),
            Cmd::Ack(id) => write!(f, "Ack({id})"),
        }
    }
}

impl Link {
    /// Connects a link; deliveries go to `deliveries` (QoS 0 ones are dropped and counted
    /// when it is full).
    pub(crate) async fn connect(
        state: &HttpState,
        cfg: LinkConfig,
        deliveries: Option<mpsc::Sender<Incoming>>,
    ) -> Result<Link, LinkError> {
        let slot = state
            .table
            .admit(Ipv4Addr::UNSPECIFIED.into())
            .map_err(|_| LinkError::Busy)?;
        let (mut io, server) = tokio::io::duplex(PIPE_BYTES);
        state.tracker.spawn(connection::serve(
            server,
            cfg.peer,
            state.shared.clone(),
            state.shutdown.clone(),
            slot,
        ));
        let props = PropValues {
            session_expiry_interval: (cfg.session_expiry > 0).then_some(cfg.session_expiry),
            receive_maximum: Some(cfg.receive_maximum.max(1)),
            ..PropValues::default()
        };
        let connect = Connect {
            protocol: Protocol::V5,
            clean_start: cfg.clean_start,
            keep_alive: 0,
            properties: Properties::from(&props),
            client_id: &cfg.client_id,
            will: None,
            username: cfg.username.as_deref(),
            password: cfg.password.as_deref(),
        };
        let mut out = BytesMut::new();
        write_packet(&mut out, Protocol::V5, &Packet::Connect(connect));
        let mut buf = BytesMut::with_capacity(4096);
        let max_packet = state.shared.config.mqtt.max_packet_size;
        let handshake = async {
            io.write_all(&out).await.map_err(|_| LinkError::Closed)?;
            loop {
                if let Ok(Some(h)) = check(&buf, max_packet) {
                    if buf.len() >= h.frame_len() {
                        let body = &buf[h.header_len..h.frame_len()];
                        return match decode_body(&h, body, Protocol::V5) {
                            Ok(Packet::ConnAck(a)) if a.code == 0 => {
                                let v = a.properties.values();
                                let r = (
                                    v.receive_maximum.unwrap_or(u16::MAX),
                                    v.maximum_packet_size.unwrap_or(max_packet),
                                    v.server_keep_alive.unwrap_or(0),
                                );
                                bytes::Buf::advance(&mut buf, h.frame_len());
                                Ok(r)
                            }
                            Ok(Packet::ConnAck(a)) => Err(LinkError::Refused(a.code)),
                            _ => Err(LinkError::Closed),
                        };
                    }
                }
                match io.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => return Err(LinkError::Closed),
                    Ok(_) => {}
                }
            }
        };
        let (quota, max_packet, keep_alive) = tokio::time::timeout(CONNECT_TIMEOUT, handshake)
            .await
            .map_err(|_| LinkError::Closed)??;
        let (tx, rx) = mpsc::channel(64);
        let dropped = Arc::new(AtomicU64::new(0));
        let buffered = Arc::new(AtomicUsize::new(0));
        let driver = Driver {
            io,
            buf,
            out: BytesMut::new(),
            waiting: ahash::HashMap::default(),
            next_id: 1,
            in_flight: 0,
            quota: quota.clamp(1, MAX_IN_FLIGHT),
            max_packet,
            deliveries,
            dropped: dropped.clone(),
            buffered: buffered.clone(),
            max_buffered: cfg.max_buffered_bytes,
        };
        let ping = (keep_alive > 0).then(|| Duration::from_secs(u64::from(keep_alive)) / 2);
        state.tracker.spawn(driver.run(rx, ping));
        Ok(Link {
            cmds: tx,
            dropped,
            buffered,
        })
    }

    /// Publishes `m`; answers once the broker acknowledged it (QoS 1/2: durable), or at
    /// once for QoS 0.
    pub(crate) async fn publish(&self, m: OutMessage) -> Result<PublishAck, LinkError> {
        let (tx, rx) = oneshot::channel();
        self.cmds
            .send(Cmd::Publish(m, tx))
            .await
            .map_err(|_| LinkError::Closed)?;
        rx.await.map_err(|_| LinkError::Closed)?
    }

    /// Subscribes; answers the SUBACK's reason codes.
    pub(crate) async fn subscribe(&self, sub: Subscription) -> Result<Vec<u8>, LinkError> {
        let (tx, rx) = oneshot::channel();
        self.cmds
            .send(Cmd::Subscribe(sub, tx))
            .await
            .map_err(|_| LinkError::Closed)?;
        rx.await.map_err(|_| LinkError::Closed)?
    }

    /// Acknowledges a QoS 1 delivery.
    pub(crate) async fn ack(&self, packet_id: u16) -> Result<(), LinkError> {
        self.cmds
            .send(Cmd::Ack(packet_id))
            .await
            .map_err(|_| LinkError::Closed)
    }

    /// The reader took a delivery of `payload_len` bytes off the channel.
    pub(crate) fn taken(&self, payload_len: usize) {
        self.buffered.fetch_sub(payload_len, Ordering::Relaxed);
    }

    /// QoS 0 deliveries dropped so far because the reader was behind.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Whether the link's connection has ended.
    pub(crate) fn is_closed(&self) -> bool {
        self.cmds.is_closed()
    }
}

/// The task that owns a link's pipe.
struct Driver {
    io: DuplexStream,
    buf: BytesMut,
    out: BytesMut,
    waiting: ahash::HashMap<u16, Waiting>,
    next_id: u16,
    /// QoS 1/2 publishes not yet completed.
    in_flight: u16,
    /// The broker's Receive Maximum (capped).
    quota: u16,
    max_packet: u32,
    deliveries: Option<mpsc::Sender<Incoming>>,
    dropped: Arc<AtomicU64>,
    buffered: Arc<AtomicUsize>,
    max_buffered: usize,
}

impl Driver {
    async fn run(mut self, mut cmds: mpsc::Receiver<Cmd>, ping: Option<Duration>) {
        let mut ping = ping.map(|p| tokio::time::interval_at(tokio::time::Instant::now() + p, p));
        loop {
            if !self.out.is_empty() {
                if self.io.write_all(&self.out).await.is_err() {
                    break;
                }
                self.out.clear();
            }
            tokio::select! {
                cmd = cmds.recv(), if self.in_flight < self.quota => match cmd {
                    Some(c) => self.command(c),
                    None => {
                        // Every handle is gone: end the connection normally.
                        write_packet(&mut self.out, Protocol::V5, &Packet::Disconnect(Disconnect::new(0)));
                        let _ = self.io.write_all(&self.out).await;
                        break;
                    }
                },
                r = self.io.read_buf(&mut self.buf) => match r {
                    Ok(0) | Err(_) => break,
                    Ok(_) => if self.frames().await.is_err() {
                        break;
                    },
                },
                _ = async { match ping.as_mut() {
                    Some(p) => { p.tick().await; }
                    None => std::future::pending().await,
                } } => write_packet(&mut self.out, Protocol::V5, &Packet::PingReq),
            }
        }
        // Whoever waits on this link hears `Closed` (their senders are dropped here).
    }

    /// The next free packet id.
    fn packet_id(&mut self) -> u16 {
        loop {
            let id = self.next_id;
            self.next_id = self.next_id.checked_add(1).unwrap_or(1);
            if !self.waiting.contains_key(&id) {
                return id;
            }
        }
    }

    fn command(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Publish(m, reply) => {
                let packet_id = if m.qos == QoS::AtMostOnce {
                    0
                } else {
                    self.packet_id()
                };
                let user: Vec<(&str, &str)> = m
                    .props
                    .user_properties
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                let props = PropValues {
                    payload_format_indicator: m.props.payload_format_indicator,
                    message_expiry_interval: m.props.message_expiry_interval,
                    content_type: m.props.content_type.as_deref(),
                    response_topic: m.props.response_topic.as_deref(),
                    correlation_data: m.props.correlation_data.as_deref(),
                    user_properties: PropList::Slice(&user),
                    ..PropValues::default()
                };
                let packet = Packet::Publish(Publish {
                    dup: false,
                    qos: m.qos,
                    retain: m.retain,
                    topic: &m.topic,
                    packet_id,
                    properties: Properties::from(&props),
                    payload: &m.payload,
                });
                if packet.encoded_len(Protocol::V5) > self.max_packet as usize {
                    let _ = reply.send(Err(LinkError::TooLarge));
                    return;
                }
                write_packet(&mut self.out, Protocol::V5, &packet);
                if packet_id == 0 {
                    let _ = reply.send(Ok(PublishAck {
                        reason: 0,
                        reason_string: None,
                    }));
                } else {
                    self.in_flight += 1;
                    self.waiting.insert(packet_id, Waiting::PubAck(reply));
                }
            }
            Cmd::Subscribe(sub, reply) => {
                let packet_id = self.packet_id();
                let user: Vec<(&str, &str)> = sub
                    .user_properties
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                let props = PropValues {
                    user_properties: PropList::Slice(&user),
                    ..PropValues::default()
                };
                let list: Vec<SubscribeFilter<'_>> = sub
                    .filters
                    .iter()
                    .map(|(f, qos)| SubscribeFilter {
                        filter: f,
                        options: SubOptions::qos(*qos),
                    })
                    .collect();
                let packet = Packet::Subscribe(Subscribe {
                    packet_id,
                    properties: Properties::from(&props),
                    filters: mote_codec::List::Slice(&list),
                });
                write_packet(&mut self.out, Protocol::V5, &packet);
                self.waiting.insert(packet_id, Waiting::SubAck(reply));
            }
            Cmd::Ack(id) => {
                write_packet(&mut self.out, Protocol::V5, &Packet::PubAck(Ack::new(id)));
            }
        }
    }

    /// Handles every complete frame in the buffer. `Err` ends the link.
    async fn frames(&mut self) -> Result<(), ()> {
        loop {
            let h = match check(&self.buf, u32::MAX >> 4) {
                Ok(Some(h)) if self.buf.len() >= h.frame_len() => h,
                Ok(_) => return Ok(()),
                Err(_) => return Err(()),
            };
            let frame = self.buf.split_to(h.frame_len()).freeze();
            let body = &frame[h.header_len..];
            match decode_body(&h, body, Protocol::V5).map_err(|_| ())? {
                Packet::Publish(p) => self.delivery(&p).await?,
                Packet::PubAck(a) => {
                    if let Some(Waiting::PubAck(reply)) = self.waiting.remove(&a.packet_id) {
                        self.in_flight -= 1;
                        let _ = reply.send(Ok(answer(&a)));
                    }
                }
                Packet::PubRec(a) => {
                    if let Some(Waiting::PubAck(reply)) = self.waiting.remove(&a.packet_id) {
                        if a.reason >= 0x80 {
                            self.in_flight -= 1;
                            let _ = reply.send(Ok(answer(&a)));
                        } else {
                            write_packet(
                                &mut self.out,
                                Protocol::V5,
                                &Packet::PubRel(Ack::new(a.packet_id)),
                            );
                            self.waiting
                                .insert(a.packet_id, Waiting::PubComp(answer(&a), reply));
                        }
                    }
                }
                Packet::PubComp(a) => {
                    if let Some(Waiting::PubComp(ack, reply)) = self.waiting.remove(&a.packet_id) {
                        self.in_flight -= 1;
                        let _ = reply.send(Ok(ack));
                    }
                }
                Packet::SubAck(a) => {
                    if let Some(Waiting::SubAck(reply)) = self.waiting.remove(&a.packet_id) {
                        let _ = reply.send(Ok(a.codes.to_vec()));
                    }
                }
                Packet::PubRel(a) => {
                    // Only for QoS 2 deliveries, which links never subscribe to; answer
                    // anyway so the broker's state moves on.
                    write_packet(
                        &mut self.out,
                        Protocol::V5,
                        &Packet::PubComp(Ack::new(a.packet_id)),
                    );
                }
                Packet::PingResp | Packet::UnsubAck(_) => {}
                Packet::Disconnect(_) => return Err(()),
                _ => return Err(()),
            }
        }
    }

    /// A PUBLISH from the broker: to the reader, or dropped (QoS 0, reader full).
    async fn delivery(&mut self, p: &Publish<'_>) -> Result<(), ()> {
        let Some(tx) = &self.deliveries else {
            // Nobody reads: acknowledge so the broker does not hold it.
            if p.qos != QoS::AtMostOnce {
                write_packet(
                    &mut self.out,
                    Protocol::V5,
                    &Packet::PubAck(Ack::new(p.packet_id)),
                );
            }
            return Ok(());
        };
        let m = Incoming {
            topic: p.topic.to_owned(),
            payload: Bytes::copy_from_slice(p.payload),
            qos: p.qos,
            retain: p.retain,
            packet_id: p.packet_id,
            props: MsgProps::read(&p.properties),
        };
        let len = m.payload.len();
        if p.qos == QoS::AtMostOnce {
            let full =
                self.buffered.load(Ordering::Relaxed).saturating_add(len) > self.max_buffered;
            if full || tx.try_send(m).is_err() {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            } else {
                self.buffered.fetch_add(len, Ordering::Relaxed);
            }
            Ok(())
        } else {
            // Bounded by the link's Receive Maximum: the broker sends no more QoS 1
            // deliveries until the reader acknowledges some.
            self.buffered.fetch_add(len, Ordering::Relaxed);
            tx.send(m).await.map_err(|_| ())
        }
    }
}

/// A PUBACK's or PUBREC's answer.
fn answer(a: &Ack<'_>) -> PublishAck {
    PublishAck {
        reason: a.reason,
        reason_string: a.properties.values().reason_string.map(str::to_owned),
    }
}
