//! The fourteen MQTT 3.1.1 packets and AUTH of MQTT 5: borrowed views, decode, encode.

use crate::properties::{PropCtx, Properties};
use crate::reason;
use crate::topic;
use crate::types::{Protocol, QoS, SubOptions};
use crate::wire::{read_var_int, var_int_len, DynSink, Reader, Sink, Writer, MAX_VAR_INT};
use crate::{DecodeError, EncodeError};

/// Packet type numbers of the fixed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum PacketType {
    Connect = 1,
    ConnAck = 2,
    Publish = 3,
    PubAck = 4,
    PubRec = 5,
    PubRel = 6,
    PubComp = 7,
    Subscribe = 8,
    SubAck = 9,
    Unsubscribe = 10,
    UnsubAck = 11,
    PingReq = 12,
    PingResp = 13,
    Disconnect = 14,
    Auth = 15,
}

impl PacketType {
    /// The type of the high nibble `v`, if it names one.
    pub fn from_u8(v: u8) -> Option<PacketType> {
        use PacketType::*;
        Some(match v {
            1 => Connect,
            2 => ConnAck,
            3 => Publish,
            4 => PubAck,
            5 => PubRec,
            6 => PubRel,
            7 => PubComp,
            8 => Subscribe,
            9 => SubAck,
            10 => Unsubscribe,
            11 => UnsubAck,
            12 => PingReq,
            13 => PingResp,
            14 => Disconnect,
            15 => Auth,
            _ => return None,
        })
    }

    /// The fixed-header flags this type must carry (PUBLISH has none fixed).
    fn required_flags(self) -> Option<u8> {
        match self {
            PacketType::Publish => None,
            PacketType::PubRel | PacketType::Subscribe | PacketType::Unsubscribe => Some(0b0010),
            _ => Some(0),
        }
    }
}

/// The fixed header of a frame: enough to know how many bytes the frame takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Packet type (high nibble of the first byte).
    pub packet_type: u8,
    /// Flags (low nibble of the first byte).
    pub flags: u8,
    /// Bytes of the fixed header (2 to 5).
    pub header_len: usize,
    /// The remaining length: bytes after the fixed header.
    pub remaining_len: usize,
}

impl FrameHeader {
    /// Bytes of the whole frame.
    pub fn frame_len(&self) -> usize {
        self.header_len + self.remaining_len
    }
}

/// Reads the fixed header at the start of `buf` without looking at the rest.
///
/// Returns `Ok(None)` when `buf` does not yet hold the whole fixed header. Fails with
/// [`DecodeError::PacketTooLarge`] as soon as the remaining length shows the frame would
/// exceed `max_packet_size`, so a receiver never buffers an oversized packet.
///
/// # Errors
/// [`DecodeError::MalformedVarInt`], [`DecodeError::PacketTooLarge`].
pub fn check(buf: &[u8], max_packet_size: u32) -> Result<Option<FrameHeader>, DecodeError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let Some((remaining, n)) = read_var_int(&buf[1..])? else {
        return Ok(None);
    };
    let header = FrameHeader {
        packet_type: first >> 4,
        flags: first & 0x0F,
        header_len: 1 + n,
        remaining_len: remaining as usize,
    };
    if header.frame_len() > max_packet_size as usize {
        return Err(DecodeError::PacketTooLarge {
            size: header.frame_len(),
            max: max_packet_size,
        });
    }
    Ok(Some(header))
}

/// Decodes one packet from the start of `buf`.
///
/// `protocol` is the connection's version (ignored for CONNECT, which carries its own).
/// Returns `Ok(None)` when `buf` holds only part of a frame, otherwise the packet and the
/// bytes the frame used; bytes after the frame are never read.
///
/// # Errors
/// Any [`DecodeError`]; each maps to a reason code with [`DecodeError::reason_code`].
pub fn decode(
    buf: &[u8],
    protocol: Protocol,
    max_packet_size: u32,
) -> Result<Option<(Packet<'_>, usize)>, DecodeError> {
    let Some(h) = check(buf, max_packet_size)? else {
        return Ok(None);
    };
    let Some(frame) = buf.get(h.header_len..h.frame_len()) else {
        return Ok(None);
    };
    Ok(Some((decode_body(&h, frame, protocol)?, h.frame_len())))
}

/// Decodes the body of a frame whose header `h` was read by [`check`].
///
/// # Errors
/// Any [`DecodeError`].
pub fn decode_body<'a>(
    h: &FrameHeader,
    body: &'a [u8],
    protocol: Protocol,
) -> Result<Packet<'a>, DecodeError> {
    let ty =
        PacketType::from_u8(h.packet_type).ok_or(DecodeError::InvalidPacketType(h.packet_type))?;
    if ty == PacketType::Auth && !protocol.is_v5() {
        return Err(DecodeError::InvalidPacketType(h.packet_type));
    }
    if let Some(required) = ty.required_flags() {
        if h.flags != required {
            return Err(DecodeError::InvalidHeaderFlags {
                packet_type: h.packet_type,
                flags: h.flags,
            });
        }
    }
    let mut r = Reader::new(body);
    let v5 = protocol.is_v5();
    // Every packet a client receives is built empty and then filled in place, in one
    // place: smaller code than building each one by value.
    let mut packet = match ty {
        #[cfg(feature = "server")]
        PacketType::Connect => Packet::Connect(Connect::read(&mut r)?),
        #[cfg(feature = "server")]
        PacketType::Subscribe => Packet::Subscribe(Subscribe::read(&mut r, protocol)?),
        #[cfg(feature = "server")]
        PacketType::Unsubscribe => Packet::Unsubscribe(Unsubscribe::read(&mut r, v5)?),
        // Without the `server` feature the packets only a server receives are refused.
        #[cfg(not(feature = "server"))]
        PacketType::Connect | PacketType::Subscribe | PacketType::Unsubscribe => {
            return Err(DecodeError::InvalidPacketType(h.packet_type))
        }
        PacketType::ConnAck => Packet::ConnAck(ConnAck {
            session_present: false,
            code: 0,
            properties: Properties::default(),
        }),
        PacketType::Publish => Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: "",
            packet_id: 0,
            properties: Properties::default(),
            payload: &[],
        }),
        PacketType::PubAck => Packet::PubAck(Ack::new(0)),
        PacketType::PubRec => Packet::PubRec(Ack::new(0)),
        PacketType::PubRel => Packet::PubRel(Ack::new(0)),
        PacketType::PubComp => Packet::PubComp(Ack::new(0)),
        PacketType::SubAck => Packet::SubAck(SubAck {
            packet_id: 0,
            properties: Properties::default(),
            codes: &[],
        }),
        PacketType::UnsubAck => Packet::UnsubAck(UnsubAck {
            packet_id: 0,
            properties: Properties::default(),
            codes: &[],
        }),
        PacketType::PingReq => Packet::PingReq,
        PacketType::PingResp => Packet::PingResp,
        PacketType::Disconnect => Packet::Disconnect(Disconnect::new(0)),
        PacketType::Auth => Packet::Auth(Disconnect::new(0)),
    };
    match &mut packet {
        Packet::ConnAck(c) => c.read(&mut r, v5)?,
        Packet::Publish(p) => p.read(&mut r, h.flags, v5)?,
        Packet::PubAck(a) | Packet::PubRec(a) => a.read(&mut r, v5, reason::PUBACK)?,
        Packet::PubRel(a) | Packet::PubComp(a) => a.read(&mut r, v5, reason::PUBREL)?,
        Packet::SubAck(s) => s.read(&mut r, v5)?,
        Packet::UnsubAck(u) => u.read(&mut r, v5)?,
        Packet::Disconnect(d) => d.read(&mut r, v5, PropCtx::Disconnect, reason::DISCONNECT)?,
        Packet::Auth(d) => d.read(&mut r, v5, PropCtx::Auth, reason::AUTH)?,
        // Read above (server packets), or without a body.
        _ => {}
    }
    r.finish()?;
    Ok(packet)
}

/// One MQTT control packet, borrowing its strings and payloads from the input.
// CONNECT (two property blocks) is the largest variant; boxing needs `alloc`, which this
// crate does without, and a packet lives on the stack only while it is handled.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Packet<'a> {
    /// CONNECT.
    Connect(Connect<'a>),
    /// CONNACK.
    ConnAck(ConnAck<'a>),
    /// PUBLISH.
    Publish(Publish<'a>),
    /// PUBACK.
    PubAck(Ack<'a>),
    /// PUBREC.
    PubRec(Ack<'a>),
    /// PUBREL.
    PubRel(Ack<'a>),
    /// PUBCOMP.
    PubComp(Ack<'a>),
    /// SUBSCRIBE.
    Subscribe(Subscribe<'a>),
    /// SUBACK.
    SubAck(SubAck<'a>),
    /// UNSUBSCRIBE.
    Unsubscribe(Unsubscribe<'a>),
    /// UNSUBACK.
    UnsubAck(UnsubAck<'a>),
    /// PINGREQ.
    PingReq,
    /// PINGRESP.
    PingResp,
    /// DISCONNECT.
    Disconnect(Disconnect<'a>),
    /// AUTH (MQTT 5 only); same shape as DISCONNECT.
    Auth(Disconnect<'a>),
}

/// CONNECT (§3.1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Connect<'a> {
    /// Protocol name and level.
    pub protocol: Protocol,
    /// Clean Session (3.1.1) / Clean Start (5).
    pub clean_start: bool,
    /// Keep alive in seconds; 0 turns it off.
    pub keep_alive: u16,
    /// v5 properties.
    pub properties: Properties<'a>,
    /// Client identifier (may be empty).
    pub client_id: &'a str,
    /// The will, if any.
    pub will: Option<Will<'a>>,
    /// User name.
    pub username: Option<&'a str>,
    /// Password.
    pub password: Option<&'a [u8]>,
}

/// The will message inside CONNECT.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Will<'a> {
    /// Topic to publish the will to.
    pub topic: &'a str,
    /// Will payload.
    pub payload: &'a [u8],
    /// Will QoS.
    pub qos: QoS,
    /// Will retain flag.
    pub retain: bool,
    /// v5 will properties.
    pub properties: Properties<'a>,
}

/// CONNACK (§3.2).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConnAck<'a> {
    /// Session Present.
    pub session_present: bool,
    /// 3.1.1 return code or v5 reason code.
    pub code: u8,
    /// v5 properties.
    pub properties: Properties<'a>,
}

/// PUBLISH (§3.3).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Publish<'a> {
    /// DUP flag.
    pub dup: bool,
    /// QoS.
    pub qos: QoS,
    /// RETAIN flag.
    pub retain: bool,
    /// Topic name (empty in v5 when a topic alias stands for it).
    pub topic: &'a str,
    /// Packet identifier; 0 for QoS 0.
    pub packet_id: u16,
    /// v5 properties.
    pub properties: Properties<'a>,
    /// Application message.
    pub payload: &'a [u8],
}

/// PUBACK, PUBREC, PUBREL and PUBCOMP (§3.4-3.7).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ack<'a> {
    /// Packet identifier.
    pub packet_id: u16,
    /// v5 reason code (0 in 3.1.1).
    pub reason: u8,
    /// v5 properties.
    pub properties: Properties<'a>,
}

impl Ack<'_> {
    /// A success acknowledgement with no properties.
    pub fn new(packet_id: u16) -> Self {
        Ack {
            packet_id,
            reason: 0,
            properties: Properties::default(),
        }
    }
}

/// One entry of SUBSCRIBE: a filter and its options.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SubscribeFilter<'a> {
    /// Topic filter (may be `$share/...`).
    pub filter: &'a str,
    /// Subscription options.
    pub options: SubOptions,
}

/// SUBSCRIBE (§3.8).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Subscribe<'a> {
    /// Packet identifier.
    pub packet_id: u16,
    /// v5 properties (Subscription Identifier, User Properties).
    pub properties: Properties<'a>,
    /// The filters, at least one.
    pub filters: List<'a, SubscribeFilter<'a>>,
}

/// SUBACK (§3.9).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SubAck<'a> {
    /// Packet identifier.
    pub packet_id: u16,
    /// v5 properties.
    pub properties: Properties<'a>,
    /// One return/reason code per filter, in order.
    pub codes: &'a [u8],
}

/// UNSUBSCRIBE (§3.10).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Unsubscribe<'a> {
    /// Packet identifier.
    pub packet_id: u16,
    /// v5 properties.
    pub properties: Properties<'a>,
    /// The filters, at least one.
    pub filters: List<'a, &'a str>,
}

/// UNSUBACK (§3.11).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UnsubAck<'a> {
    /// Packet identifier.
    pub packet_id: u16,
    /// v5 properties.
    pub properties: Properties<'a>,
    /// v5: one reason code per filter (empty in 3.1.1).
    pub codes: &'a [u8],
}

/// DISCONNECT (§3.14) and AUTH (§3.15).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Disconnect<'a> {
    /// v5 reason code (0 in 3.1.1).
    pub reason: u8,
    /// v5 properties.
    pub properties: Properties<'a>,
}

impl Disconnect<'_> {
    /// A DISCONNECT with `reason` and no properties.
    pub fn new(reason: u8) -> Self {
        Disconnect {
            reason,
            properties: Properties::default(),
        }
    }
}

/// An entry of a SUBSCRIBE or UNSUBSCRIBE list.
pub trait ListItem<'a>: Sized + Copy + PartialEq {
    /// Reads one entry from validated wire bytes.
    #[doc(hidden)]
    fn read(r: &mut Reader<'a>) -> Result<Self, DecodeError>;
    /// Bytes of the entry.
    #[doc(hidden)]
    fn wire_len(&self) -> usize;
    /// Writes the entry.
    #[doc(hidden)]
    fn write(&self, w: &mut Writer<'_>, p: Protocol) -> Result<(), EncodeError>;
}

impl<'a> ListItem<'a> for SubscribeFilter<'a> {
    fn read(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        Ok(SubscribeFilter {
            filter: r.string()?,
            options: SubOptions::from_byte(r.u8()?, Protocol::V5)?,
        })
    }
    fn wire_len(&self) -> usize {
        3 + self.filter.len()
    }
    fn write(&self, w: &mut Writer<'_>, p: Protocol) -> Result<(), EncodeError> {
        w.string(self.filter)?;
        w.u8(self.options.to_byte(p))
    }
}

impl<'a> ListItem<'a> for &'a str {
    fn read(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        r.string()
    }
    fn wire_len(&self) -> usize {
        2 + self.len()
    }
    fn write(&self, w: &mut Writer<'_>, _: Protocol) -> Result<(), EncodeError> {
        w.string(self)
    }
}

/// The entries of SUBSCRIBE or UNSUBSCRIBE: validated wire bytes after decoding, a
/// caller's slice for encoding. Iterating parses the wire form again, allocating nothing.
#[derive(Debug, Clone, Copy)]
pub enum List<'a, T> {
    /// Entries inside a decoded packet.
    Wire(&'a [u8]),
    /// Entries given by the caller.
    Slice(&'a [T]),
}

impl<'a, T: ListItem<'a>> List<'a, T> {
    /// Iterates over the entries in order.
    pub fn iter(&self) -> ListIter<'a, T> {
        match *self {
            List::Wire(b) => ListIter::Wire(Reader::new(b)),
            List::Slice(s) => ListIter::Slice(s.iter()),
        }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.iter().count()
    }

    /// True when there is no entry.
    pub fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }

    fn wire_len(&self) -> usize {
        self.iter().map(|e| e.wire_len()).sum()
    }
}

impl<'a, T: ListItem<'a>> PartialEq for List<'a, T> {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

/// Iterator over a [`List`].
#[derive(Debug, Clone)]
pub enum ListIter<'a, T> {
    #[doc(hidden)]
    Wire(Reader<'a>),
    #[doc(hidden)]
    Slice(core::slice::Iter<'a, T>),
}

impl<'a, T: ListItem<'a>> Iterator for ListIter<'a, T> {
    type Item = T;
    fn next(&mut self) -> Option<T> {
        match self {
            ListIter::Slice(it) => it.next().copied(),
            // Validated when decoded: a failure cannot happen and ends the iteration.
            ListIter::Wire(r) if r.remaining() > 0 => T::read(r).ok(),
            ListIter::Wire(_) => None,
        }
    }
}

fn check_reason(code: u8, allowed: &[u8]) -> Result<u8, DecodeError> {
    if allowed.contains(&code) {
        Ok(code)
    } else {
        Err(DecodeError::InvalidReasonCode(code))
    }
}

#[cfg(feature = "server")]
fn props<'a>(r: &mut Reader<'a>, v5: bool, ctx: PropCtx) -> Result<Properties<'a>, DecodeError> {
    if v5 {
        Properties::read(r, ctx)
    } else {
        Ok(Properties::default())
    }
}

impl<'a> Connect<'a> {
    #[cfg(feature = "server")]
    fn read(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let name = r.binary()?;
        let level = r.u8()?;
        let protocol = match (name, level) {
            (b"MQTT", 4) => Protocol::V311,
            (b"MQTT", 5) => Protocol::V5,
            (b"MQIsdp", 3) => Protocol::V31,
            (b"MQTT", l) | (b"MQIsdp", l) => {
                return Err(DecodeError::UnsupportedProtocolVersion(l))
            }
            _ => return Err(DecodeError::InvalidProtocolName),
        };
        let v5 = protocol.is_v5();
        let flags = r.u8()?;
        let will_flag = flags & 0b0000_0100 != 0;
        let will_qos = (flags >> 3) & 0b11;
        let will_retain = flags & 0b0010_0000 != 0;
        let has_password = flags & 0b0100_0000 != 0;
        let has_username = flags & 0b1000_0000 != 0;
        let bad = flags & 1 != 0
            || will_qos == 3
            || (!will_flag && (will_qos != 0 || will_retain))
            || (!v5 && has_password && !has_username);
        if bad {
            return Err(DecodeError::InvalidConnectFlags(flags));
        }
        let keep_alive = r.u16()?;
        let properties = props(r, v5, PropCtx::Connect)?;
        let client_id = r.string()?;
        let will = if will_flag {
            let properties = props(r, v5, PropCtx::Will)?;
            let topic = r.string()?;
            if !topic::is_valid_name(topic) {
                return Err(DecodeError::InvalidTopicName);
            }
            Some(Will {
                topic,
                payload: r.binary()?,
                qos: QoS::from_u8(will_qos)?,
                retain: will_retain,
                properties,
            })
        } else {
            None
        };
        let username = if has_username {
            Some(r.string()?)
        } else {
            None
        };
        let password = if has_password {
            Some(r.binary()?)
        } else {
            None
        };
        Ok(Connect {
            protocol,
            clean_start: flags & 0b10 != 0,
            keep_alive,
            properties,
            client_id,
            will,
            username,
            password,
        })
    }

    /// Bytes after the fixed header, given the wire lengths of the property blocks.
    fn remaining_len(&self, props: usize, will_props: usize) -> usize {
        let mut n = 2 + self.protocol.name().len() + 1 + 1 + 2 + props + 2 + self.client_id.len();
        if let Some(w) = &self.will {
            n += will_props + 4 + w.topic.len() + w.payload.len();
        }
        n += self.username.map_or(0, |u| 2 + u.len());
        n += self.password.map_or(0, |p| 2 + p.len());
        n
    }

    fn write(&self, w: &mut Writer<'_>, l: &Lens) -> Result<(), EncodeError> {
        let v5 = self.protocol.is_v5();
        w.string(self.protocol.name())?;
        w.u8(self.protocol.level())?;
        let mut flags = (self.clean_start as u8) << 1;
        if let Some(will) = &self.will {
            flags |= 0b100 | (will.qos as u8) << 3 | (will.retain as u8) << 5;
        }
        flags |= (self.password.is_some() as u8) << 6 | (self.username.is_some() as u8) << 7;
        w.u8(flags)?;
        w.u16(self.keep_alive)?;
        if v5 {
            self.properties.write(w, l.props)?;
        }
        w.string(self.client_id)?;
        if let Some(will) = &self.will {
            if v5 {
                will.properties.write(w, l.will_props)?;
            }
            w.string(will.topic)?;
            w.binary(will.payload)?;
        }
        if let Some(u) = self.username {
            w.string(u)?;
        }
        if let Some(p) = self.password {
            w.binary(p)?;
        }
        Ok(())
    }
}

impl<'a> ConnAck<'a> {
    /// Fills an empty CONNACK from its body.
    fn read(&mut self, r: &mut Reader<'a>, v5: bool) -> Result<(), DecodeError> {
        let flags = r.u8()?;
        if flags & 0xFE != 0 {
            return Err(DecodeError::InvalidConnAckFlags(flags));
        }
        let code = r.u8()?;
        if v5 {
            check_reason(code, reason::CONNACK)?;
        } else if code > 5 {
            return Err(DecodeError::InvalidReasonCode(code));
        }
        self.session_present = flags & 1 != 0;
        self.code = code;
        if v5 {
            self.properties = Properties::read(r, PropCtx::ConnAck)?;
        }
        Ok(())
    }
}

impl<'a> Publish<'a> {
    /// Fills an empty PUBLISH from its body.
    fn read(&mut self, r: &mut Reader<'a>, flags: u8, v5: bool) -> Result<(), DecodeError> {
        let qos = QoS::from_u8((flags >> 1) & 0b11)?;
        let dup = flags & 0b1000 != 0;
        if dup && qos == QoS::AtMostOnce {
            return Err(DecodeError::DupOnQoS0);
        }
        let topic = r.string()?;
        let packet_id = if qos == QoS::AtMostOnce {
            0
        } else {
            r.packet_id()?
        };
        if v5 {
            self.properties = Properties::read(r, PropCtx::Publish)?;
        }
        let aliased = topic.is_empty() && self.properties.topic_alias().is_some();
        if !aliased && !topic::is_valid_name(topic) {
            return Err(DecodeError::InvalidTopicName);
        }
        self.dup = dup;
        self.qos = qos;
        self.retain = flags & 1 != 0;
        self.topic = topic;
        self.packet_id = packet_id;
        self.payload = r.rest();
        Ok(())
    }

    /// The first byte of the fixed header.
    fn first_byte(&self) -> u8 {
        0x30 | (self.dup as u8) << 3 | (self.qos as u8) << 1 | self.retain as u8
    }

    /// Bytes after the fixed header, given the wire length of the property block.
    fn remaining_len(&self, props: usize) -> usize {
        let pid = if self.qos == QoS::AtMostOnce { 0 } else { 2 };
        2 + self.topic.len() + pid + props + self.payload.len()
    }

    fn write(&self, w: &mut Writer<'_>, v5: bool, props: usize) -> Result<(), EncodeError> {
        w.string(self.topic)?;
        if self.qos != QoS::AtMostOnce {
            w.u16(self.packet_id)?;
        }
        if v5 {
            self.properties.write(w, props)?;
        }
        w.bytes(self.payload)
    }
}

impl<'a> Ack<'a> {
    /// Fills an empty acknowledgement from its body.
    fn read(&mut self, r: &mut Reader<'a>, v5: bool, allowed: &[u8]) -> Result<(), DecodeError> {
        self.packet_id = r.packet_id()?;
        if v5 && r.remaining() > 0 {
            self.reason = check_reason(r.u8()?, allowed)?;
            if r.remaining() > 0 {
                self.properties = Properties::read(r, PropCtx::PubResp)?;
            }
        }
        Ok(())
    }

    /// Bytes after the fixed header, given the property block's content length.
    fn remaining_len(&self, v5: bool, props: usize) -> usize {
        match (v5, self.reason, props) {
            (false, _, _) | (true, 0, 0) => 2,
            (true, _, 0) => 3,
            (true, _, n) => 3 + var_int_len(n) + n,
        }
    }

    fn write(&self, w: &mut Writer<'_>, l: &Lens) -> Result<(), EncodeError> {
        w.u16(self.packet_id)?;
        if l.rem >= 3 {
            w.u8(self.reason)?;
        }
        if l.rem > 3 {
            self.properties.write(w, l.props)?;
        }
        Ok(())
    }
}

#[cfg(feature = "server")]
impl<'a> Subscribe<'a> {
    fn read(r: &mut Reader<'a>, protocol: Protocol) -> Result<Self, DecodeError> {
        let packet_id = r.packet_id()?;
        let properties = props(r, protocol.is_v5(), PropCtx::Subscribe)?;
        let entries = r.rest();
        let mut er = Reader::new(entries);
        if er.remaining() == 0 {
            return Err(DecodeError::NoTopicFilter);
        }
        while er.remaining() > 0 {
            let filter = er.string()?;
            if !topic::is_valid_filter(filter) {
                return Err(DecodeError::InvalidTopicFilter);
            }
            SubOptions::from_byte(er.u8()?, protocol)?;
        }
        Ok(Subscribe {
            packet_id,
            properties,
            filters: List::Wire(entries),
        })
    }
}

impl<'a> SubAck<'a> {
    /// Fills an empty SUBACK from its body.
    fn read(&mut self, r: &mut Reader<'a>, v5: bool) -> Result<(), DecodeError> {
        self.packet_id = r.packet_id()?;
        if v5 {
            self.properties = Properties::read(r, PropCtx::SubAck)?;
        }
        let codes = r.rest();
        if codes.is_empty() {
            return Err(DecodeError::UnexpectedEnd);
        }
        let allowed = if v5 {
            reason::SUBACK
        } else {
            reason::SUBACK_V3
        };
        for &c in codes {
            check_reason(c, allowed)?;
        }
        self.codes = codes;
        Ok(())
    }
}

#[cfg(feature = "server")]
impl<'a> Unsubscribe<'a> {
    fn read(r: &mut Reader<'a>, v5: bool) -> Result<Self, DecodeError> {
        let packet_id = r.packet_id()?;
        let properties = props(r, v5, PropCtx::Unsubscribe)?;
        let entries = r.rest();
        let mut er = Reader::new(entries);
        if er.remaining() == 0 {
            return Err(DecodeError::NoTopicFilter);
        }
        while er.remaining() > 0 {
            if !topic::is_valid_filter(er.string()?) {
                return Err(DecodeError::InvalidTopicFilter);
            }
        }
        Ok(Unsubscribe {
            packet_id,
            properties,
            filters: List::Wire(entries),
        })
    }
}

impl<'a> UnsubAck<'a> {
    /// Fills an empty UNSUBACK from its body.
    fn read(&mut self, r: &mut Reader<'a>, v5: bool) -> Result<(), DecodeError> {
        self.packet_id = r.packet_id()?;
        if !v5 {
            return Ok(());
        }
        self.properties = Properties::read(r, PropCtx::UnsubAck)?;
        let codes = r.rest();
        if codes.is_empty() {
            return Err(DecodeError::UnexpectedEnd);
        }
        for &c in codes {
            check_reason(c, reason::UNSUBACK)?;
        }
        self.codes = codes;
        Ok(())
    }
}

impl<'a> Disconnect<'a> {
    /// Fills an empty DISCONNECT or AUTH from its body.
    fn read(
        &mut self,
        r: &mut Reader<'a>,
        v5: bool,
        ctx: PropCtx,
        allowed: &[u8],
    ) -> Result<(), DecodeError> {
        if v5 && r.remaining() > 0 {
            self.reason = check_reason(r.u8()?, allowed)?;
            if r.remaining() > 0 {
                self.properties = Properties::read(r, ctx)?;
            }
        }
        Ok(())
    }

    /// Bytes after the fixed header, given the property block's content length.
    fn remaining_len(&self, v5: bool, props: usize) -> usize {
        match (v5, self.reason, props) {
            (false, _, _) | (true, 0, 0) => 0,
            (true, _, 0) => 1,
            (true, _, n) => 1 + var_int_len(n) + n,
        }
    }

    fn write(&self, w: &mut Writer<'_>, l: &Lens) -> Result<(), EncodeError> {
        if l.rem >= 1 {
            w.u8(self.reason)?;
        }
        if l.rem > 1 {
            self.properties.write(w, l.props)?;
        }
        Ok(())
    }
}

impl<'a> Packet<'a> {
    /// The packet's type.
    pub fn packet_type(&self) -> PacketType {
        match self {
            Packet::Connect(_) => PacketType::Connect,
            Packet::ConnAck(_) => PacketType::ConnAck,
            Packet::Publish(_) => PacketType::Publish,
            Packet::PubAck(_) => PacketType::PubAck,
            Packet::PubRec(_) => PacketType::PubRec,
            Packet::PubRel(_) => PacketType::PubRel,
            Packet::PubComp(_) => PacketType::PubComp,
            Packet::Subscribe(_) => PacketType::Subscribe,
            Packet::SubAck(_) => PacketType::SubAck,
            Packet::Unsubscribe(_) => PacketType::Unsubscribe,
            Packet::UnsubAck(_) => PacketType::UnsubAck,
            Packet::PingReq => PacketType::PingReq,
            Packet::PingResp => PacketType::PingResp,
            Packet::Disconnect(_) => PacketType::Disconnect,
            Packet::Auth(_) => PacketType::Auth,
        }
    }

    /// The lengths an encoding for `protocol` needs, each computed once.
    fn lens(&self, protocol: Protocol) -> Lens {
        let v5 = match self {
            Packet::Connect(c) => c.protocol.is_v5(),
            _ => protocol.is_v5(),
        };
        // Content length of a property block, and its wire length (prefix included).
        let content = |p: &Properties<'_>| if v5 { p.content_len() } else { 0 };
        let wire = |n: usize| if v5 { var_int_len(n) + n } else { 0 };
        let mut l = Lens {
            rem: 0,
            props: 0,
            will_props: 0,
        };
        l.rem = match self {
            Packet::Connect(c) => {
                l.props = content(&c.properties);
                l.will_props = c.will.as_ref().map_or(0, |w| content(&w.properties));
                c.remaining_len(wire(l.props), wire(l.will_props))
            }
            Packet::ConnAck(c) => {
                l.props = content(&c.properties);
                2 + wire(l.props)
            }
            Packet::Publish(p) => {
                l.props = content(&p.properties);
                p.remaining_len(wire(l.props))
            }
            Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
                l.props = content(&a.properties);
                a.remaining_len(v5, l.props)
            }
            Packet::Subscribe(s) => {
                l.props = content(&s.properties);
                2 + wire(l.props) + s.filters.wire_len()
            }
            Packet::SubAck(s) => {
                l.props = content(&s.properties);
                2 + wire(l.props) + s.codes.len()
            }
            Packet::Unsubscribe(u) => {
                l.props = content(&u.properties);
                2 + wire(l.props) + u.filters.wire_len()
            }
            Packet::UnsubAck(u) => {
                l.props = content(&u.properties);
                2 + if v5 { wire(l.props) + u.codes.len() } else { 0 }
            }
            Packet::PingReq | Packet::PingResp => 0,
            Packet::Disconnect(d) | Packet::Auth(d) => {
                l.props = content(&d.properties);
                d.remaining_len(v5, l.props)
            }
        };
        l
    }

    /// Exact bytes [`Packet::encode`] writes for `protocol` (CONNECT uses its own).
    pub fn encoded_len(&self, protocol: Protocol) -> usize {
        self.lens(protocol).frame()
    }

    /// Fails for what cannot be encoded at all for `protocol`.
    fn check_encodable(&self, protocol: Protocol, l: &Lens) -> Result<(), EncodeError> {
        if matches!(self, Packet::Auth(_)) && !protocol.is_v5() {
            return Err(EncodeError::NotInVersion);
        }
        if l.rem > MAX_VAR_INT as usize {
            return Err(EncodeError::TooLarge);
        }
        Ok(())
    }

    /// Writes the fixed header and the body whose lengths are `l`.
    fn write(&self, w: &mut Writer<'_>, protocol: Protocol, l: &Lens) -> Result<(), EncodeError> {
        let v5 = protocol.is_v5();
        let first = match self {
            Packet::Publish(p) => p.first_byte(),
            other => {
                let ty = other.packet_type();
                (ty as u8) << 4 | ty.required_flags().unwrap_or(0)
            }
        };
        w.u8(first)?;
        w.var_int(l.rem)?;
        match self {
            Packet::Connect(c) => c.write(w, l),
            Packet::ConnAck(c) => {
                w.u8(c.session_present as u8)?;
                w.u8(c.code)?;
                if v5 {
                    c.properties.write(w, l.props)?;
                }
                Ok(())
            }
            Packet::Publish(p) => p.write(w, v5, l.props),
            Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
                a.write(w, l)
            }
            Packet::Subscribe(s) => {
                w.u16(s.packet_id)?;
                if v5 {
                    s.properties.write(w, l.props)?;
                }
                s.filters.iter().try_for_each(|f| f.write(w, protocol))
            }
            Packet::SubAck(s) => {
                w.u16(s.packet_id)?;
                if v5 {
                    s.properties.write(w, l.props)?;
                }
                w.bytes(s.codes)
            }
            Packet::Unsubscribe(u) => {
                w.u16(u.packet_id)?;
                if v5 {
                    u.properties.write(w, l.props)?;
                }
                u.filters.iter().try_for_each(|f| f.write(w, protocol))
            }
            Packet::UnsubAck(u) => {
                w.u16(u.packet_id)?;
                if v5 {
                    u.properties.write(w, l.props)?;
                    w.bytes(u.codes)?;
                }
                Ok(())
            }
            Packet::PingReq | Packet::PingResp => Ok(()),
            Packet::Disconnect(d) | Packet::Auth(d) => d.write(w, l),
        }
    }

    /// Encodes into `sink` for `protocol`: in place when the sink lends its memory
    /// ([`Sink::put_in_place`]: a slice, a `BytesMut`), otherwise gathering small fields
    /// in a buffer on the stack and handing them to [`Sink::put`] in a few calls (a large
    /// payload is handed over as it is).
    ///
    /// # Errors
    /// [`EncodeError::BufferTooSmall`] from the sink, [`EncodeError::TooLarge`] when the
    /// packet or a field exceeds MQTT's limits, [`EncodeError::NotInVersion`] for AUTH in
    /// 3.1.1. A sink that lends its memory is left as it was on error; another one may
    /// have taken part of the packet when a field is too large.
    pub fn encode_to<S: Sink + ?Sized>(
        &self,
        protocol: Protocol,
        sink: &mut S,
    ) -> Result<(), EncodeError> {
        let l = self.lens(protocol);
        self.check_encodable(protocol, &l)?;
        let mut fill = |buf: &mut [u8]| self.write(&mut Writer::slice(buf), protocol, &l);
        if let Some(r) = sink.put_in_place(l.frame(), &mut fill) {
            return r;
        }
        let mut stack = [0u8; SPILL_BUF];
        let mut sink = DynSink(sink);
        let mut w = Writer::spilling(&mut stack, &mut sink);
        self.write(&mut w, protocol, &l)?;
        w.finish()
    }

    /// Encodes into `out`, returning the bytes written (always [`Packet::encoded_len`]).
    ///
    /// # Errors
    /// As [`Packet::encode_to`]; nothing useful is left in `out` on error.
    pub fn encode(&self, protocol: Protocol, out: &mut [u8]) -> Result<usize, EncodeError> {
        let l = self.lens(protocol);
        let needed = l.frame();
        if out.len() < needed {
            return Err(EncodeError::BufferTooSmall { needed });
        }
        self.check_encodable(protocol, &l)?;
        let mut w = Writer::slice(out);
        self.write(&mut w, protocol, &l)?;
        Ok(w.pos())
    }
}

/// Bytes of the stack buffer [`Packet::encode_to`] gathers small fields in.
const SPILL_BUF: usize = 64;

/// What encoding one packet needs to know of its lengths.
struct Lens {
    /// The remaining length.
    rem: usize,
    /// Content length of the packet's property block (0 in 3.1.1).
    props: usize,
    /// Content length of the will's property block (CONNECT).
    will_props: usize,
}

impl Lens {
    /// Bytes of the whole frame.
    fn frame(&self) -> usize {
        1 + var_int_len(self.rem) + self.rem
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::{PropList, PropValues};

    fn round_trip(p: &Packet<'_>, protocol: Protocol) {
        let mut buf = [0u8; 512];
        let n = p.encode(protocol, &mut buf).unwrap();
        assert_eq!(n, p.encoded_len(protocol));
        let (back, used) = decode(&buf[..n], protocol, 1024).unwrap().unwrap();
        assert_eq!(used, n);
        assert_eq!(&back, p);
        // Every strict prefix is "need more bytes", never an error.
        for cut in 0..n {
            assert_eq!(decode(&buf[..cut], protocol, 1024), Ok(None));
        }
    }

    #[test]
    fn publish_v5_with_repeated_properties() {
        let users = [("a", "1"), ("a", "2"), ("b", "")];
        let ids = [7u32, 300_000];
        let props = PropValues {
            user_properties: PropList::Slice(&users),
            subscription_identifiers: PropList::Slice(&ids),
            content_type: Some("text/plain"),
            message_expiry_interval: Some(10),
            ..PropValues::default()
        };
        let p = Packet::Publish(Publish {
            dup: true,
            qos: QoS::ExactlyOnce,
            retain: true,
            topic: "a/b",
            packet_id: 9,
            properties: Properties::from(&props),
            payload: b"hello",
        });
        round_trip(&p, Protocol::V5);
    }

    /// A packet is moved on every decode: it must stay small. It was 608 bytes when
    /// it held 27 property fields inline (twice in CONNECT).
    #[test]
    fn packet_stays_small() {
        let word = core::mem::size_of::<usize>();
        let packet = core::mem::size_of::<Packet<'_>>();
        let props = core::mem::size_of::<Properties<'_>>();
        let decoded = core::mem::size_of::<Result<Option<(Packet<'_>, usize)>, DecodeError>>();
        // 16, 128 and 136 bytes on x86_64.
        assert!(props <= 2 * word, "Properties is {props} bytes");
        assert!(packet <= 16 * word, "Packet is {packet} bytes");
        assert!(decoded <= 17 * word, "decode's result is {decoded} bytes");
    }

    /// `encode_to` writes a `BytesMut` in place: the same bytes as `encode`, after what it
    /// held, and nothing when a field is too large.
    #[cfg(feature = "bytes")]
    #[test]
    fn bytes_mut_in_place() {
        let p = Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: "a/b",
            packet_id: 3,
            properties: Properties::default(),
            payload: b"xyz",
        });
        let mut buf = [0u8; 64];
        let n = p.encode(Protocol::V5, &mut buf).unwrap();
        let mut out = bytes::BytesMut::from(&b"head"[..]);
        p.encode_to(Protocol::V5, &mut out).unwrap();
        assert_eq!(&out[..4], b"head");
        assert_eq!(&out[4..], &buf[..n]);

        let long = [b'v'; 70_000];
        let users = [("k", core::str::from_utf8(&long).unwrap())];
        let values = PropValues {
            user_properties: PropList::Slice(&users),
            ..PropValues::default()
        };
        let mut q = p;
        if let Packet::Publish(x) = &mut q {
            x.properties = Properties::Values(&values);
        }
        assert_eq!(
            q.encode_to(Protocol::V5, &mut out),
            Err(EncodeError::TooLarge)
        );
        assert_eq!(out.len(), 4 + n, "nothing appended on error");
    }

    #[test]
    #[cfg(feature = "server")] // decodes a packet only a server decodes
    fn connect_versions() {
        for protocol in [Protocol::V31, Protocol::V311, Protocol::V5] {
            let p = Packet::Connect(Connect {
                protocol,
                clean_start: true,
                keep_alive: 30,
                properties: Properties::default(),
                client_id: "dev-1",
                will: Some(Will {
                    topic: "w",
                    payload: b"gone",
                    qos: QoS::AtLeastOnce,
                    retain: true,
                    properties: Properties::default(),
                }),
                username: Some("u"),
                password: Some(b"p"),
            });
            round_trip(&p, protocol);
        }
    }

    #[test]
    #[cfg(feature = "server")] // decodes a packet only a server decodes
    fn subscribe_list() {
        let filters = [
            SubscribeFilter {
                filter: "a/+",
                options: SubOptions::qos(QoS::AtLeastOnce),
            },
            SubscribeFilter {
                filter: "#",
                options: SubOptions::qos(QoS::ExactlyOnce),
            },
        ];
        let p = Packet::Subscribe(Subscribe {
            packet_id: 1,
            properties: Properties::default(),
            filters: List::Slice(&filters),
        });
        round_trip(&p, Protocol::V311);
        round_trip(&p, Protocol::V5);
    }

    #[test]
    fn short_acks_and_disconnects() {
        round_trip(&Packet::PubAck(Ack::new(5)), Protocol::V5);
        let mut a = Ack::new(5);
        a.reason = 0x10;
        round_trip(&Packet::PubRec(a), Protocol::V5);
        round_trip(&Packet::Disconnect(Disconnect::new(0)), Protocol::V5);
        round_trip(&Packet::Disconnect(Disconnect::new(0x8E)), Protocol::V5);
        round_trip(&Packet::Disconnect(Disconnect::new(0)), Protocol::V311);
        round_trip(&Packet::PingReq, Protocol::V311);
    }
}
