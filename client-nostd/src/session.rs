//! The protocol core: one MQTT client session as a deterministic, sans-IO state machine.
//!
//! Grammar (as in `quinn-proto`): the owner feeds inputs through `handle_*` and takes
//! outputs through `poll_*`, passing the time (`now`, milliseconds on any monotonic
//! clock) into every call. Nothing here reads a clock, sleeps or touches a socket.
//!
//! | input | meaning |
//! | --- | --- |
//! | [`Session::handle_connect`] | a new transport is up: a CONNECT is queued |
//! | [`Session::handle_received`] | bytes arrived: decodes and handles one frame |
//! | [`Session::handle_timeout`] | the time in [`Session::poll_timeout`] was reached |
//! | [`Session::handle_closed`] | the transport failed or was closed |
//! | [`Session::publish`], [`Session::subscribe`], ... | application requests |
//!
//! | output | meaning |
//! | --- | --- |
//! | [`Session::poll_transmit`] | encodes the packets due now into the caller's buffer |
//! | [`Session::poll_timeout`] | when to call `handle_timeout` next |
//! | [`Session::poll_event`] | events not tied to a received frame |
//!
//! After every input, call `poll_transmit` until it returns 0 and `poll_event` until it
//! returns `None`.
//!
//! Invariants:
//! - Packet identifiers in use (in-flight slots, the automatic SUBSCRIBE) are unique
//!   and never 0; allocation counts up, wraps from 65535 to 1, and skips ids in use.
//! - A slot holds the packet as first encoded (full topic, DUP 0, no topic alias);
//!   DUP and aliases are applied when it is transmitted. Slots are transmitted in the
//!   order they were submitted, and QoS 1/2 publishes in flight never exceed the
//!   broker's Receive Maximum.
//! - Nothing is ever sent larger than the broker's Maximum Packet Size.

use mote_codec::{
    decode, reason, topic, Ack, Connect, Disconnect, EncodeError, List, Packet, PropValues,
    Properties, Protocol, Publish, QoS, Subscribe, SubscribeFilter, Unsubscribe,
};

use crate::buffers::{SlotMeta, SlotState, Storage, ALIAS_SLOT};
use crate::{CloseReason, Config, Error, SensorEvent, CONTENT_TYPE};

/// QoS 1/2 messages the client accepts from the broker at once: the MQTT 5 Receive
/// Maximum it announces, and the number of QoS 2 packet ids it remembers to deliver
/// exactly once. (A 3.1.1 broker is not bound by it; past this many unreleased QoS 2
/// messages the oldest id is forgotten, which can turn a re-delivery into a duplicate.)
pub const INBOUND_MAX: usize = 8;

const PUBACK: u8 = 4;
const PUBREC: u8 = 5;
const PUBCOMP: u8 = 7;
const TYPE_PUBLISH: u8 = 3;
const TYPE_SUBSCRIBE: u8 = 8;
const TYPE_UNSUBSCRIBE: u8 = 10;

/// An application message to publish.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Message<'a> {
    /// Topic name (no wildcards).
    pub topic: &'a str,
    /// Payload.
    pub payload: &'a [u8],
    /// Quality of service.
    pub qos: QoS,
    /// Retain flag.
    pub retain: bool,
    /// MQTT 5 Content Type (ignored in 3.1.1).
    pub content_type: Option<&'a str>,
    /// MQTT 5 Message Expiry Interval in seconds (ignored in 3.1.1).
    pub message_expiry: Option<u32>,
}

impl<'a> Message<'a> {
    /// A QoS 0, non-retained message without properties.
    pub const fn new(topic: &'a str, payload: &'a [u8]) -> Self {
        Message {
            topic,
            payload,
            qos: QoS::AtMostOnce,
            retain: false,
            content_type: None,
            message_expiry: None,
        }
    }

    /// With quality of service `qos`.
    pub const fn qos(mut self, qos: QoS) -> Self {
        self.qos = qos;
        self
    }

    /// With the retain flag set to `retain`.
    pub const fn retain(mut self, retain: bool) -> Self {
        self.retain = retain;
        self
    }

    /// With an MQTT 5 content type.
    pub const fn content_type(mut self, content_type: &'a str) -> Self {
        self.content_type = Some(content_type);
        self
    }

    /// With an MQTT 5 message expiry interval in seconds.
    pub const fn message_expiry(mut self, seconds: u32) -> Self {
        self.message_expiry = Some(seconds);
        self
    }
}

/// Something the application should know about.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Event<'a> {
    /// CONNACK accepted the connection.
    Connected {
        /// The broker resumed a stored session.
        session_present: bool,
    },
    /// The connection ended; the runner reconnects unless the application disconnected.
    Disconnected(CloseReason),
    /// A message for one of the subscriptions, borrowed from the receive buffer.
    Message(Incoming<'a>),
    /// A QoS 1/2 publish finished: PUBACK or PUBCOMP arrived (`reason` < 0x80), the
    /// broker refused it (PUBACK/PUBREC reason >= 0x80), it was too large for the
    /// broker (0x95), or its session ended after its PUBREC (0, delivered).
    Published {
        /// Its packet identifier.
        packet_id: u16,
        /// MQTT 5 reason code (0 in 3.1.1).
        reason: u8,
    },
    /// SUBACK arrived.
    Subscribed {
        /// Packet identifier of the SUBSCRIBE.
        packet_id: u16,
        /// The highest return code: the granted QoS when it is below 0x80, else the
        /// failure of at least one filter.
        reason: u8,
    },
    /// UNSUBACK arrived.
    Unsubscribed {
        /// Packet identifier of the UNSUBSCRIBE.
        packet_id: u16,
    },
}

/// A received application message: a view into the receive buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Incoming<'a> {
    /// Topic name.
    pub topic: &'a str,
    /// Payload.
    pub payload: &'a [u8],
    /// QoS it was delivered with.
    pub qos: QoS,
    /// Retain flag (a retained message sent on subscribe).
    pub retain: bool,
    /// MQTT 5 Content Type ([`CONTENT_TYPE`] marks a [`SensorEvent`]).
    pub content_type: Option<&'a str>,
}

impl<'a> Incoming<'a> {
    fn new(p: &Publish<'a>) -> Self {
        Incoming {
            topic: p.topic,
            payload: p.payload,
            qos: p.qos,
            retain: p.retain,
            content_type: p.properties.content_type(),
        }
    }
}

/// What [`Session::handle_received`] did with the bytes it was given.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Received<'a> {
    /// No whole frame yet: read more bytes and call again.
    Incomplete,
    /// Acknowledgements owed to the broker fill the queue: transmit first
    /// ([`Session::poll_transmit`]), then call again with the same bytes.
    Busy,
    /// One frame was handled.
    Frame {
        /// Bytes of the frame, to drop from the front of the buffer (after using
        /// `event`, which may borrow them). After a protocol error the whole input.
        used: usize,
        /// What the frame means to the application.
        event: Option<Event<'a>>,
    },
}

/// Connection state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Conn {
    /// No transport.
    Down,
    /// Transport up; CONNECT queued or sent.
    AwaitConnAck,
    /// CONNACK accepted.
    Up,
}

/// What became of an attempt to put a stored PUBLISH into the transmit buffer.
enum Put {
    /// Written: this many bytes.
    Sent(usize),
    /// The buffer has no room left for it now.
    NoRoom,
    /// Larger than the broker accepts: it can never be sent.
    TooLarge,
}

/// One MQTT client session: the connection's protocol state and the in-flight store
/// that outlives connections.
///
/// RAM on a 32-bit target: 224 bytes including the [`Config`] (84); the slots and the
/// alias table live in the caller's [`crate::Buffers`].
#[derive(Debug)]
pub struct Session<'b> {
    cfg: Config<'b>,
    meta: &'b mut [SlotMeta],
    slots: &'b mut [u8],
    slot_size: usize,
    aliases: &'b mut [u8],
    rx_cap: u32,
    tx_cap: usize,
    conn: Conn,
    connect_pending: bool,
    ping_pending: bool,
    ping_outstanding: bool,
    disconnect_pending: bool,
    shut_down: bool,
    /// The automatic SUBSCRIBE (of `cfg.subscriptions`) is due for transmission.
    sub_pending: bool,
    /// Packet id of the automatic SUBSCRIBE until its SUBACK (0: none).
    sub_pid: u16,
    closed: Option<CloseReason>,
    /// CONNACK or PINGRESP deadline.
    deadline: u64,
    last_tx: u64,
    keep_alive_ms: u64,
    next_pid: u16,
    next_seq: u32,
    /// The broker's limits from CONNACK.
    max_packet: u32,
    receive_max: u16,
    alias_max: u16,
    alias_next: u16,
    max_qos: QoS,
    /// Acknowledgements owed to the broker, in the order they are due: (type, id).
    owed: [(u8, u16); INBOUND_MAX],
    owed_len: u8,
    /// Inbound QoS 2 ids that got a PUBREC and wait for PUBREL, oldest first.
    await_rel: [u16; INBOUND_MAX],
    await_rel_len: u8,
}

impl<'b> Session<'b> {
    /// A session with nothing in flight, not connected.
    pub fn new(config: Config<'b>, storage: Storage<'b>) -> Self {
        Session {
            cfg: config,
            meta: storage.meta,
            slots: storage.slots,
            // Slot lengths are kept as u16.
            slot_size: storage.slot_size.min(usize::from(u16::MAX)),
            aliases: storage.aliases,
            rx_cap: u32::try_from(storage.rx_capacity).unwrap_or(u32::MAX),
            tx_cap: storage.tx_capacity,
            conn: Conn::Down,
            connect_pending: false,
            ping_pending: false,
            ping_outstanding: false,
            disconnect_pending: false,
            shut_down: false,
            sub_pending: false,
            sub_pid: 0,
            closed: None,
            deadline: 0,
            last_tx: 0,
            keep_alive_ms: u64::from(config.keep_alive) * 1000,
            next_pid: 1,
            next_seq: 0,
            max_packet: u32::MAX,
            receive_max: u16::MAX,
            alias_max: 0,
            alias_next: 0,
            max_qos: QoS::ExactlyOnce,
            owed: [(0, 0); INBOUND_MAX],
            owed_len: 0,
            await_rel: [0; INBOUND_MAX],
            await_rel_len: 0,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config<'b> {
        &self.cfg
    }

    /// True between an accepted CONNACK and the end of that connection.
    pub fn is_connected(&self) -> bool {
        self.conn == Conn::Up
    }

    /// True when no transport is in use (never connected, closed, or failed).
    pub fn is_closed(&self) -> bool {
        self.conn == Conn::Down
    }

    /// True after [`Session::disconnect`]: the owner should stop reconnecting.
    pub fn is_shut_down(&self) -> bool {
        self.shut_down
    }

    /// True when nothing is in flight: every publish was transmitted (QoS 0) or
    /// acknowledged (QoS 1/2), and every (un)subscribe acknowledged.
    pub fn is_idle(&self) -> bool {
        self.sub_pid == 0 && self.meta.iter().all(|m| m.state == SlotState::Free)
    }

    /// Occupied in-flight slots.
    pub fn in_flight(&self) -> usize {
        self.meta
            .iter()
            .filter(|m| m.state != SlotState::Free)
            .count()
    }

    // ---- inputs -------------------------------------------------------------------

    /// A new transport is up: queues CONNECT and starts the CONNACK timer.
    pub fn handle_connect(&mut self, now: u64) {
        self.conn = Conn::AwaitConnAck;
        self.connect_pending = true;
        self.deadline = now.saturating_add(u64::from(self.cfg.timeout_ms));
        self.ping_pending = false;
        self.ping_outstanding = false;
        self.owed_len = 0;
        // Topic aliases live as long as one network connection.
        self.alias_max = 0;
        self.alias_next = 0;
        for len in self.aliases.iter_mut().step_by(ALIAS_SLOT) {
            *len = 0;
        }
    }

    /// The transport failed or reached end of stream.
    pub fn handle_closed(&mut self) {
        self.close(CloseReason::Transport);
    }

    /// Time passed: fails a connection whose CONNACK or PINGRESP is overdue, and
    /// queues a PINGREQ when the keep alive interval passed without transmitting.
    pub fn handle_timeout(&mut self, now: u64) {
        match self.conn {
            Conn::AwaitConnAck if now >= self.deadline => self.close(CloseReason::Timeout),
            Conn::Up if (self.ping_outstanding || self.ping_pending) && now >= self.deadline => {
                self.close(CloseReason::Timeout)
            }
            Conn::Up
                if !self.ping_outstanding
                    && !self.ping_pending
                    && self.keep_alive_ms > 0
                    && now >= self.last_tx.saturating_add(self.keep_alive_ms) =>
            {
                self.ping_pending = true;
                // The PINGRESP is due within the timeout even when the PINGREQ cannot be
                // written (a transport that stopped draining); sending it re-arms this.
                self.deadline = now.saturating_add(u64::from(self.cfg.timeout_ms));
            }
            _ => {}
        }
    }

    /// Decodes and handles the frame at the start of `buf`.
    ///
    /// The returned event may borrow `buf` (a received message is not copied). A
    /// malformed or unexpected packet closes the connection ([`CloseReason::Protocol`],
    /// reported by [`Session::poll_event`]); so does a frame longer than the receive
    /// buffer.
    pub fn handle_received<'a>(&mut self, now: u64, buf: &'a [u8]) -> Received<'a> {
        if self.conn == Conn::Down || buf.is_empty() {
            return Received::Incomplete;
        }
        // Any frame may owe one acknowledgement; make sure it can be queued.
        if usize::from(self.owed_len) >= INBOUND_MAX {
            return Received::Busy;
        }
        let (packet, used) = match decode(buf, self.cfg.protocol, self.rx_cap) {
            Ok(Some(frame)) => frame,
            Ok(None) => return Received::Incomplete,
            Err(_) => {
                self.close(CloseReason::Protocol);
                return Received::Frame {
                    used: buf.len(),
                    event: None,
                };
            }
        };
        let event = self.on_packet(now, &packet);
        Received::Frame { used, event }
    }

    // ---- application requests -----------------------------------------------------

    /// Queues a publish; returns its packet identifier (0 for QoS 0).
    ///
    /// QoS 1/2 messages are accepted while disconnected and sent once connected; they
    /// stay in the in-flight store until acknowledged, across reconnects.
    ///
    /// # Errors
    /// [`Error::Full`] (no free slot: retry after acknowledgements),
    /// [`Error::NotConnected`] (QoS 0 without a connection), [`Error::BufferTooSmall`]
    /// (larger than a slot or the transmit buffer), [`Error::PacketTooLarge`] (larger
    /// than the broker accepts), [`Error::QosNotSupported`], [`Error::InvalidTopic`],
    /// [`Error::ShutDown`].
    // Properties set field by field: the struct update syntax clippy prefers copies all
    // 27 fields in code (216 bytes more on a Cortex-M3).
    #[allow(clippy::field_reassign_with_default)]
    pub fn publish(&mut self, msg: &Message<'_>) -> Result<u16, Error> {
        if self.shut_down {
            return Err(Error::ShutDown);
        }
        if msg.qos > self.max_qos {
            return Err(Error::QosNotSupported);
        }
        if !topic::is_valid_name(msg.topic) {
            return Err(Error::InvalidTopic);
        }
        if msg.qos == QoS::AtMostOnce && self.conn != Conn::Up {
            return Err(Error::NotConnected);
        }
        // The largest form it may take on the wire: with the topic and a topic alias.
        let alias = (self.cfg.protocol.is_v5() && !self.aliases.is_empty()).then_some(1);
        let mut largest = PropValues::default();
        largest.content_type = msg.content_type;
        largest.message_expiry_interval = msg.message_expiry;
        largest.topic_alias = alias;
        // Stored without the alias: the one to use is chosen when it is sent.
        let mut stored = largest;
        stored.topic_alias = None;
        // One packet, changed in place: every copy of a `Packet` is code on a device.
        let mut packet = Packet::Publish(Publish {
            dup: false,
            qos: msg.qos,
            retain: msg.retain,
            topic: msg.topic,
            packet_id: 0,
            properties: Properties::from(&largest),
            payload: msg.payload,
        });
        self.check_wire(packet.encoded_len(self.cfg.protocol))?;
        if let Packet::Publish(p) = &mut packet {
            p.properties = Properties::from(&stored);
        }
        self.store(&mut packet)
    }

    /// Encodes `event` with postcard and publishes it on [`Config::event_topic`],
    /// with the content type [`CONTENT_TYPE`] in MQTT 5.
    ///
    /// # Errors
    /// As [`Session::publish`].
    pub fn publish_event(&mut self, event: &SensorEvent, qos: QoS) -> Result<u16, Error> {
        let mut buf = [0u8; SensorEvent::MAX_ENCODED_LEN];
        let payload = event.encode(&mut buf)?;
        let mut msg = Message::new(self.cfg.event_topic, &*payload).qos(qos);
        if self.cfg.protocol.is_v5() {
            msg.content_type = Some(CONTENT_TYPE);
        }
        self.publish(&msg)
    }

    /// Queues a SUBSCRIBE; returns its packet identifier ([`Event::Subscribed`] tells
    /// the outcome). Filters in [`Config::subscriptions`] need no call.
    ///
    /// # Errors
    /// [`Error::Full`], [`Error::BufferTooSmall`], [`Error::PacketTooLarge`],
    /// [`Error::InvalidTopic`] (no filter, or an invalid one), [`Error::ShutDown`].
    pub fn subscribe(&mut self, filters: &[SubscribeFilter<'_>]) -> Result<u16, Error> {
        if filters.is_empty() || !filters.iter().all(|f| topic::is_valid_filter(f.filter)) {
            return Err(Error::InvalidTopic);
        }
        let mut p = Packet::Subscribe(Subscribe {
            packet_id: 0,
            properties: Properties::default(),
            filters: List::Slice(filters),
        });
        self.check_wire(p.encoded_len(self.cfg.protocol))?;
        self.store(&mut p)
    }

    /// Queues an UNSUBSCRIBE; returns its packet identifier.
    ///
    /// # Errors
    /// As [`Session::subscribe`].
    pub fn unsubscribe(&mut self, filters: &[&str]) -> Result<u16, Error> {
        if filters.is_empty() || !filters.iter().all(|f| topic::is_valid_filter(f)) {
            return Err(Error::InvalidTopic);
        }
        let mut p = Packet::Unsubscribe(Unsubscribe {
            packet_id: 0,
            properties: Properties::default(),
            filters: List::Slice(filters),
        });
        self.check_wire(p.encoded_len(self.cfg.protocol))?;
        self.store(&mut p)
    }

    /// Ends the session's use: sends DISCONNECT (normal disconnection, so no will) if
    /// connected, then reports [`CloseReason::Local`]. Later requests fail with
    /// [`Error::ShutDown`]; stored messages stay in the store.
    pub fn disconnect(&mut self) {
        self.shut_down = true;
        if self.conn == Conn::Up {
            self.disconnect_pending = true;
        } else {
            self.close(CloseReason::Local);
        }
    }

    // ---- outputs ------------------------------------------------------------------

    /// Encodes every packet due now that fits into `out`; returns the bytes written
    /// (0: nothing to send). Hand them to the transport before calling again.
    ///
    /// # Errors
    /// [`Error::BufferTooSmall`] when the CONNECT or the automatic SUBSCRIBE does not fit
    /// into an empty `out`: a configuration error that retrying cannot fix.
    pub fn poll_transmit(&mut self, now: u64, out: &mut [u8]) -> Result<usize, Error> {
        let proto = self.cfg.protocol;
        let mut w = 0;
        match self.conn {
            Conn::Down => return Ok(0),
            Conn::AwaitConnAck => {
                if self.connect_pending {
                    let props = self.connect_properties();
                    w = self
                        .connect_packet(&props)
                        .encode(proto, out)
                        .map_err(encode_error)?;
                    self.connect_pending = false;
                }
            }
            Conn::Up if self.disconnect_pending => {
                w = put(&Packet::Disconnect(Disconnect::new(0)), proto, out, 0)
                    .ok_or(Error::BufferTooSmall { needed: 2 })?;
                self.close(CloseReason::Local);
            }
            Conn::Up => {
                if self.ping_pending {
                    if let Some(n) = put(&Packet::PingReq, proto, out, w) {
                        w += n;
                        self.ping_pending = false;
                        self.ping_outstanding = true;
                        self.deadline = now.saturating_add(u64::from(self.cfg.timeout_ms));
                    }
                }
                while let Some(&(ty, pid)) = self
                    .owed
                    .get(..usize::from(self.owed_len))
                    .and_then(|o| o.first())
                {
                    let a = Ack::new(pid);
                    let p = match ty {
                        PUBACK => Packet::PubAck(a),
                        PUBREC => Packet::PubRec(a),
                        _ => Packet::PubComp(a),
                    };
                    let Some(n) = put(&p, proto, out, w) else {
                        break;
                    };
                    w += n;
                    self.owed.copy_within(1.., 0);
                    self.owed_len -= 1;
                }
                if self.sub_pending && self.sub_pid != 0 {
                    let p = Packet::Subscribe(Subscribe {
                        packet_id: self.sub_pid,
                        properties: Properties::default(),
                        filters: List::Slice(self.cfg.subscriptions),
                    });
                    match put(&p, proto, out, w) {
                        Some(n) => {
                            w += n;
                            self.sub_pending = false;
                        }
                        None if w == 0 => {
                            return Err(Error::BufferTooSmall {
                                needed: p.encoded_len(proto),
                            })
                        }
                        None => {}
                    }
                }
                w = self.transmit_slots(out, w);
            }
        }
        if w > 0 {
            self.last_tx = now;
        }
        Ok(w)
    }

    /// When [`Session::handle_timeout`] should run next (`None`: no timer).
    pub fn poll_timeout(&self) -> Option<u64> {
        match self.conn {
            Conn::AwaitConnAck => Some(self.deadline),
            Conn::Up if self.ping_outstanding || self.ping_pending => Some(self.deadline),
            Conn::Up if self.keep_alive_ms > 0 => {
                Some(self.last_tx.saturating_add(self.keep_alive_ms))
            }
            _ => None,
        }
    }

    /// The next event not tied to a received frame: the end of a connection, or a
    /// publish finished without an acknowledgement (see [`Event::Published`]).
    pub fn poll_event(&mut self) -> Option<Event<'static>> {
        if let Some(r) = self.closed.take() {
            return Some(Event::Disconnected(r));
        }
        let m = self
            .meta
            .iter_mut()
            .find(|m| matches!(m.state, SlotState::Done(_)))?;
        let reason = match m.state {
            SlotState::Done(r) => r,
            _ => 0,
        };
        m.state = SlotState::Free;
        Some(Event::Published {
            packet_id: m.pid,
            reason,
        })
    }

    // ---- internals ----------------------------------------------------------------

    fn close(&mut self, reason: CloseReason) {
        if self.conn != Conn::Down {
            self.conn = Conn::Down;
            self.closed = Some(reason);
        }
        self.disconnect_pending = false;
    }

    /// The CONNECT's properties (none in 3.1.1).
    fn connect_properties(&self) -> PropValues<'b> {
        let c = &self.cfg;
        let mut properties = PropValues::default();
        if c.protocol.is_v5() {
            properties.session_expiry_interval = c.session_expiry;
            properties.receive_maximum = Some(INBOUND_MAX as u16);
            properties.maximum_packet_size = Some(self.rx_cap);
        }
        properties
    }

    /// The CONNECT, with `properties` from [`Session::connect_properties`].
    fn connect_packet<'p>(&self, properties: &'p PropValues<'b>) -> Packet<'p>
    where
        'b: 'p,
    {
        let c = &self.cfg;
        Packet::Connect(Connect {
            protocol: c.protocol,
            clean_start: c.clean_start,
            keep_alive: c.keep_alive,
            properties: Properties::from(properties),
            client_id: c.client_id,
            will: c.will.map(|w| mote_codec::Will {
                topic: w.topic,
                payload: w.payload,
                qos: w.qos,
                retain: w.retain,
                properties: Properties::default(),
            }),
            username: c.username,
            password: c.password,
        })
    }

    /// Fails when a packet of `len` bytes could never be transmitted.
    fn check_wire(&self, len: usize) -> Result<(), Error> {
        if len > self.tx_cap {
            return Err(Error::BufferTooSmall { needed: len });
        }
        if len > self.max_packet as usize {
            return Err(Error::PacketTooLarge);
        }
        Ok(())
    }

    /// Gives the packet an id (if it needs one) and encodes it into a free slot.
    fn store(&mut self, packet: &mut Packet<'_>) -> Result<u16, Error> {
        let i = self
            .meta
            .iter()
            .position(|m| m.state == SlotState::Free)
            .ok_or(Error::Full)?;
        let needed = packet.encoded_len(self.cfg.protocol);
        if needed > self.slot_size {
            return Err(Error::BufferTooSmall { needed });
        }
        let pid = match packet {
            Packet::Publish(p) if p.qos == QoS::AtMostOnce => 0,
            Packet::Publish(Publish { packet_id, .. })
            | Packet::Subscribe(Subscribe { packet_id, .. })
            | Packet::Unsubscribe(Unsubscribe { packet_id, .. }) => {
                *packet_id = self.alloc_pid()?;
                *packet_id
            }
            _ => 0,
        };
        let start = i * self.slot_size;
        let slot = self
            .slots
            .get_mut(start..start + self.slot_size)
            .ok_or(Error::BufferTooSmall { needed })?;
        let len = packet
            .encode(self.cfg.protocol, slot)
            .map_err(encode_error)?;
        let seq = self.next_seq;
        self.next_seq = seq.wrapping_add(1);
        if let Some(m) = self.meta.get_mut(i) {
            *m = SlotMeta {
                seq,
                pid,
                len: len as u16,
                state: SlotState::Queued,
            };
        }
        Ok(pid)
    }

    fn alloc_pid(&mut self) -> Result<u16, Error> {
        for _ in 0..=u16::MAX {
            let pid = self.next_pid;
            self.next_pid = pid.checked_add(1).unwrap_or(1);
            if pid != 0 && pid != self.sub_pid && self.find(pid).is_none() {
                return Ok(pid);
            }
        }
        Err(Error::Full)
    }

    /// The occupied slot with packet id `pid` (never matches QoS 0 slots).
    fn find(&self, pid: u16) -> Option<usize> {
        self.meta
            .iter()
            .position(|m| m.pid == pid && pid != 0 && m.state != SlotState::Free)
    }

    /// First header byte of slot `i`'s packet.
    fn first_byte(&self, i: usize) -> u8 {
        self.slots
            .get(i * self.slot_size)
            .copied()
            .unwrap_or_default()
    }

    /// The slot of an outbound flow waiting for an ack of `ty` with id `pid`.
    fn awaiting(&self, pid: u16, ty: u8, qos: u8) -> Option<usize> {
        let i = self.find(pid)?;
        let b = self.first_byte(i);
        (b >> 4 == ty && (ty != TYPE_PUBLISH || (b >> 1) & 3 == qos)).then_some(i)
    }

    fn set_state(&mut self, i: usize, state: SlotState) {
        if let Some(m) = self.meta.get_mut(i) {
            m.state = state;
        }
    }

    fn state(&self, i: usize) -> SlotState {
        self.meta.get(i).map_or(SlotState::Free, |m| m.state)
    }

    fn owe(&mut self, ty: u8, pid: u16) {
        if let Some(slot) = self.owed.get_mut(usize::from(self.owed_len)) {
            *slot = (ty, pid);
            self.owed_len += 1;
        }
    }

    fn on_packet<'a>(&mut self, now: u64, packet: &Packet<'a>) -> Option<Event<'a>> {
        match (self.conn, packet) {
            (Conn::AwaitConnAck, Packet::ConnAck(c)) => {
                if c.code != reason::SUCCESS {
                    self.close(CloseReason::Refused(c.code));
                    return None;
                }
                Some(self.on_connack(now, c.session_present, &c.properties))
            }
            (Conn::Up, Packet::Publish(p)) => self.on_publish(p),
            (Conn::Up, Packet::PubAck(a)) => {
                let i = self.awaiting(a.packet_id, TYPE_PUBLISH, 1)?;
                (self.state(i) == SlotState::AwaitAck).then(|| self.finish(i, a.reason))
            }
            (Conn::Up, Packet::PubRec(a)) => {
                let i = self.awaiting(a.packet_id, TYPE_PUBLISH, 2)?;
                match self.state(i) {
                    SlotState::AwaitAck | SlotState::Rel | SlotState::AwaitComp => {
                        if a.reason >= 0x80 {
                            return Some(self.finish(i, a.reason));
                        }
                        self.set_state(i, SlotState::Rel);
                        None
                    }
                    _ => None,
                }
            }
            (Conn::Up, Packet::PubRel(a)) => {
                let len = usize::from(self.await_rel_len);
                if let Some(k) = self
                    .await_rel
                    .get(..len)?
                    .iter()
                    .position(|&id| id == a.packet_id)
                {
                    self.await_rel.copy_within(k + 1..len, k);
                    self.await_rel_len -= 1;
                }
                self.owe(PUBCOMP, a.packet_id);
                None
            }
            (Conn::Up, Packet::PubComp(a)) => {
                let i = self.awaiting(a.packet_id, TYPE_PUBLISH, 2)?;
                matches!(self.state(i), SlotState::Rel | SlotState::AwaitComp)
                    .then(|| self.finish(i, a.reason))
            }
            (Conn::Up, Packet::SubAck(s)) => {
                let reason = s.codes.iter().copied().max().unwrap_or(0);
                if s.packet_id == self.sub_pid && self.sub_pid != 0 {
                    self.sub_pid = 0;
                    self.sub_pending = false;
                } else {
                    let i = self.awaiting(s.packet_id, TYPE_SUBSCRIBE, 0)?;
                    self.set_state(i, SlotState::Free);
                }
                Some(Event::Subscribed {
                    packet_id: s.packet_id,
                    reason,
                })
            }
            (Conn::Up, Packet::UnsubAck(u)) => {
                let i = self.awaiting(u.packet_id, TYPE_UNSUBSCRIBE, 0)?;
                self.set_state(i, SlotState::Free);
                Some(Event::Unsubscribed {
                    packet_id: u.packet_id,
                })
            }
            (Conn::Up, Packet::PingResp) => {
                self.ping_outstanding = false;
                None
            }
            (_, Packet::Disconnect(d)) => {
                self.close(CloseReason::Server(d.reason));
                None
            }
            _ => {
                self.close(CloseReason::Protocol);
                None
            }
        }
    }

    /// Frees a finished publish slot and says so.
    fn finish(&mut self, i: usize, reason: u8) -> Event<'static> {
        let packet_id = self.meta.get(i).map_or(0, |m| m.pid);
        self.set_state(i, SlotState::Free);
        Event::Published { packet_id, reason }
    }

    fn on_connack(
        &mut self,
        now: u64,
        session_present: bool,
        props: &Properties<'_>,
    ) -> Event<'static> {
        self.conn = Conn::Up;
        self.last_tx = now;
        self.max_packet = props.maximum_packet_size().unwrap_or(u32::MAX);
        self.receive_max = props.receive_maximum().unwrap_or(u16::MAX);
        let entries = (self.aliases.len() / ALIAS_SLOT).min(usize::from(u16::MAX)) as u16;
        self.alias_max = props.topic_alias_maximum().unwrap_or(0).min(entries);
        self.max_qos = match props.maximum_qos() {
            Some(0) => QoS::AtMostOnce,
            Some(1) => QoS::AtLeastOnce,
            _ => QoS::ExactlyOnce,
        };
        self.keep_alive_ms =
            u64::from(props.server_keep_alive().unwrap_or(self.cfg.keep_alive)) * 1000;
        for i in 0..self.meta.len() {
            let is_publish = self.first_byte(i) >> 4 == TYPE_PUBLISH;
            let next = match (self.state(i), session_present) {
                // The broker knows these ids: re-send with DUP, PUBREL again.
                (SlotState::AwaitAck, true) if is_publish => SlotState::QueuedDup,
                (SlotState::Rel | SlotState::AwaitComp, true) => SlotState::Rel,
                // The broker lost the session: unacknowledged publishes go out as new
                // ones; a PUBREC'd QoS 2 message was already the broker's.
                (SlotState::AwaitAck | SlotState::QueuedDup, _) => SlotState::Queued,
                (SlotState::Rel | SlotState::AwaitComp, false) => SlotState::Done(0),
                (s, _) => s,
            };
            self.set_state(i, next);
        }
        if !session_present {
            self.await_rel_len = 0;
            if self.sub_pid == 0 && !self.cfg.subscriptions.is_empty() {
                self.sub_pid = self.alloc_pid().unwrap_or(0);
            }
        }
        self.sub_pending = self.sub_pid != 0;
        Event::Connected { session_present }
    }

    fn on_publish<'a>(&mut self, p: &Publish<'a>) -> Option<Event<'a>> {
        match p.qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.owe(PUBACK, p.packet_id),
            QoS::ExactlyOnce => {
                self.owe(PUBREC, p.packet_id);
                let len = usize::from(self.await_rel_len);
                let known = self.await_rel.get(..len)?;
                if known.contains(&p.packet_id) {
                    // Delivered when it first arrived: exactly once.
                    return None;
                }
                if len == INBOUND_MAX {
                    self.await_rel.copy_within(1.., 0);
                    self.await_rel_len -= 1;
                }
                if let Some(id) = self.await_rel.get_mut(usize::from(self.await_rel_len)) {
                    *id = p.packet_id;
                    self.await_rel_len += 1;
                }
            }
        }
        Some(Event::Message(Incoming::new(p)))
    }

    /// Moves due slots into `out` from offset `w`, earliest submission first.
    fn transmit_slots(&mut self, out: &mut [u8], mut w: usize) -> usize {
        let proto = self.cfg.protocol;
        let mut in_flight = (0..self.meta.len())
            .filter(|&i| {
                let b = self.first_byte(i);
                b >> 4 == TYPE_PUBLISH
                    && b & 0b0110 != 0
                    && matches!(
                        self.state(i),
                        SlotState::AwaitAck | SlotState::Rel | SlotState::AwaitComp
                    )
            })
            .count();
        while let Some(i) = self.next_to_send() {
            let state = self.state(i);
            let b = self.first_byte(i);
            let qos = (b >> 1) & 3;
            let next = if state == SlotState::Rel {
                let Some(n) = put(&Packet::PubRel(Ack::new(self.pid(i))), proto, out, w) else {
                    break;
                };
                w += n;
                SlotState::AwaitComp
            } else if b >> 4 == TYPE_PUBLISH {
                if qos > 0 && in_flight >= usize::from(self.receive_max) {
                    break;
                }
                match self.put_publish(i, state == SlotState::QueuedDup, out, w) {
                    Put::NoRoom => break,
                    Put::TooLarge if qos == 0 => SlotState::Free,
                    Put::TooLarge => SlotState::Done(reason::PACKET_TOO_LARGE),
                    Put::Sent(n) => {
                        w += n;
                        if qos == 0 {
                            SlotState::Free
                        } else {
                            in_flight += 1;
                            SlotState::AwaitAck
                        }
                    }
                }
            } else {
                // SUBSCRIBE / UNSUBSCRIBE: sent as stored.
                let data = self.slot(i);
                let Some(dst) = out.get_mut(w..w + data.len()) else {
                    break;
                };
                dst.copy_from_slice(data);
                w += data.len();
                SlotState::AwaitAck
            };
            self.set_state(i, next);
        }
        w
    }

    fn pid(&self, i: usize) -> u16 {
        self.meta.get(i).map_or(0, |m| m.pid)
    }

    /// The stored packet of slot `i`.
    fn slot(&self, i: usize) -> &[u8] {
        let start = i * self.slot_size;
        let len = self.meta.get(i).map_or(0, |m| usize::from(m.len));
        self.slots.get(start..start + len).unwrap_or_default()
    }

    /// The slot due first (lowest submission number, wrapping).
    fn next_to_send(&self) -> Option<usize> {
        let mut best: Option<(usize, u32)> = None;
        for (i, m) in self.meta.iter().enumerate() {
            let due = matches!(
                m.state,
                SlotState::Queued | SlotState::QueuedDup | SlotState::Rel
            );
            if due && best.map_or(true, |(_, s)| (m.seq.wrapping_sub(s) as i32) < 0) {
                best = Some((i, m.seq));
            }
        }
        best.map(|(i, _)| i)
    }

    /// Writes the PUBLISH stored in slot `i` at `out[w..]`, with DUP as asked and a
    /// topic alias when the broker allows them.
    fn put_publish(&mut self, i: usize, dup: bool, out: &mut [u8], w: usize) -> Put {
        let proto = self.cfg.protocol;
        let start = i * self.slot_size;
        let len = self.meta.get(i).map_or(0, |m| usize::from(m.len));
        let data = self.slots.get(start..start + len).unwrap_or_default();
        // Changed in place: every copy of a `Packet` is code on a device.
        let mut props;
        let Ok(Some((mut packet, _))) = decode(data, proto, u32::MAX) else {
            // Cannot happen (we encoded it); drop rather than retry forever.
            return Put::TooLarge;
        };
        let Packet::Publish(p) = &mut packet else {
            return Put::TooLarge;
        };
        let topic = p.topic;
        p.dup = dup;
        let mut bind = None;
        if self.alias_max > 0 {
            let hit = self
                .aliases
                .chunks(ALIAS_SLOT)
                .take(usize::from(self.alias_max))
                .position(|e| {
                    e.first() == Some(&(topic.len() as u8))
                        && e.get(1..=topic.len()) == Some(topic.as_bytes())
                });
            let alias = match hit {
                Some(k) => {
                    p.topic = "";
                    Some(k as u16 + 1)
                }
                None if topic.len() < ALIAS_SLOT => {
                    let alias = self.alias_next % self.alias_max + 1;
                    bind = Some(alias);
                    Some(alias)
                }
                None => None,
            };
            if alias.is_some() {
                props = p.properties.values();
                props.topic_alias = alias;
                p.properties = Properties::from(&props);
            }
        }
        if packet.encoded_len(proto) > self.max_packet as usize {
            return Put::TooLarge;
        }
        let Some(n) = put(&packet, proto, out, w) else {
            return Put::NoRoom;
        };
        if let Some(alias) = bind {
            let e = usize::from(alias - 1) * ALIAS_SLOT;
            if let Some(entry) = self.aliases.get_mut(e..e + 1 + topic.len()) {
                entry[0] = topic.len() as u8;
                entry[1..].copy_from_slice(topic.as_bytes());
            }
            self.alias_next = alias;
        }
        Put::Sent(n)
    }
}

/// Encodes `p` at `out[at..]`; `None` when it does not fit.
fn put(p: &Packet<'_>, proto: Protocol, out: &mut [u8], at: usize) -> Option<usize> {
    p.encode(proto, out.get_mut(at..)?).ok()
}

fn encode_error(e: EncodeError) -> Error {
    match e {
        EncodeError::BufferTooSmall { needed } => Error::BufferTooSmall { needed },
        e => Error::Encode(e),
    }
}

#[cfg(test)]
mod tests;
