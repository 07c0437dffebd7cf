//! MQTT 5 properties (§2.2.2): one struct with a field per property, validated per packet.
//!
//! The two properties that may repeat (User Property everywhere, Subscription Identifier in
//! PUBLISH) are [`PropList`]s: after decoding they point into the property block of the
//! input and are parsed again on iteration, so decoding allocates nothing; to encode, the
//! caller gives a slice.

use crate::wire::{var_int_len, Reader, Sink, Writer, MAX_VAR_INT};
use crate::{DecodeError, EncodeError};

/// Property identifiers (MQTT 5 §2.2.2.2).
pub mod id {
    /// Payload Format Indicator.
    pub const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
    /// Message Expiry Interval.
    pub const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
    /// Content Type.
    pub const CONTENT_TYPE: u8 = 0x03;
    /// Response Topic.
    pub const RESPONSE_TOPIC: u8 = 0x08;
    /// Correlation Data.
    pub const CORRELATION_DATA: u8 = 0x09;
    /// Subscription Identifier.
    pub const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
    /// Session Expiry Interval.
    pub const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
    /// Assigned Client Identifier.
    pub const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
    /// Server Keep Alive.
    pub const SERVER_KEEP_ALIVE: u8 = 0x13;
    /// Authentication Method.
    pub const AUTHENTICATION_METHOD: u8 = 0x15;
    /// Authentication Data.
    pub const AUTHENTICATION_DATA: u8 = 0x16;
    /// Request Problem Information.
    pub const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
    /// Will Delay Interval.
    pub const WILL_DELAY_INTERVAL: u8 = 0x18;
    /// Request Response Information.
    pub const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
    /// Response Information.
    pub const RESPONSE_INFORMATION: u8 = 0x1A;
    /// Server Reference.
    pub const SERVER_REFERENCE: u8 = 0x1C;
    /// Reason String.
    pub const REASON_STRING: u8 = 0x1F;
    /// Receive Maximum.
    pub const RECEIVE_MAXIMUM: u8 = 0x21;
    /// Topic Alias Maximum.
    pub const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
    /// Topic Alias.
    pub const TOPIC_ALIAS: u8 = 0x23;
    /// Maximum QoS.
    pub const MAXIMUM_QOS: u8 = 0x24;
    /// Retain Available.
    pub const RETAIN_AVAILABLE: u8 = 0x25;
    /// User Property.
    pub const USER_PROPERTY: u8 = 0x26;
    /// Maximum Packet Size.
    pub const MAXIMUM_PACKET_SIZE: u8 = 0x27;
    /// Wildcard Subscription Available.
    pub const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
    /// Subscription Identifier Available.
    pub const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
    /// Shared Subscription Available.
    pub const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;
}

/// Which packet (or the will inside CONNECT) a property block belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PropCtx {
    Connect,
    Will,
    ConnAck,
    Publish,
    PubResp,
    Subscribe,
    SubAck,
    Unsubscribe,
    UnsubAck,
    Disconnect,
    Auth,
}

const fn mask(ids: &[u8]) -> u64 {
    let mut m = 0u64;
    let mut i = 0;
    while i < ids.len() {
        m |= 1 << ids[i];
        i += 1;
    }
    m
}

impl PropCtx {
    /// Bit `n` set when property `n` is allowed here (MQTT 5 §2.2.2.2 table).
    fn allowed(self) -> u64 {
        use id::*;
        match self {
            PropCtx::Connect => mask(&[
                SESSION_EXPIRY_INTERVAL,
                RECEIVE_MAXIMUM,
                MAXIMUM_PACKET_SIZE,
                TOPIC_ALIAS_MAXIMUM,
                REQUEST_RESPONSE_INFORMATION,
                REQUEST_PROBLEM_INFORMATION,
                USER_PROPERTY,
                AUTHENTICATION_METHOD,
                AUTHENTICATION_DATA,
            ]),
            PropCtx::Will => mask(&[
                WILL_DELAY_INTERVAL,
                PAYLOAD_FORMAT_INDICATOR,
                MESSAGE_EXPIRY_INTERVAL,
                CONTENT_TYPE,
                RESPONSE_TOPIC,
                CORRELATION_DATA,
                USER_PROPERTY,
            ]),
            PropCtx::ConnAck => mask(&[
                SESSION_EXPIRY_INTERVAL,
                RECEIVE_MAXIMUM,
                MAXIMUM_QOS,
                RETAIN_AVAILABLE,
                MAXIMUM_PACKET_SIZE,
                ASSIGNED_CLIENT_IDENTIFIER,
                TOPIC_ALIAS_MAXIMUM,
                REASON_STRING,
                USER_PROPERTY,
                WILDCARD_SUBSCRIPTION_AVAILABLE,
                SUBSCRIPTION_IDENTIFIER_AVAILABLE,
                SHARED_SUBSCRIPTION_AVAILABLE,
                SERVER_KEEP_ALIVE,
                RESPONSE_INFORMATION,
                SERVER_REFERENCE,
                AUTHENTICATION_METHOD,
                AUTHENTICATION_DATA,
            ]),
            PropCtx::Publish => mask(&[
                PAYLOAD_FORMAT_INDICATOR,
                MESSAGE_EXPIRY_INTERVAL,
                TOPIC_ALIAS,
                RESPONSE_TOPIC,
                CORRELATION_DATA,
                USER_PROPERTY,
                SUBSCRIPTION_IDENTIFIER,
                CONTENT_TYPE,
            ]),
            PropCtx::PubResp | PropCtx::SubAck | PropCtx::UnsubAck => {
                mask(&[REASON_STRING, USER_PROPERTY])
            }
            PropCtx::Subscribe => mask(&[SUBSCRIPTION_IDENTIFIER, USER_PROPERTY]),
            PropCtx::Unsubscribe => mask(&[USER_PROPERTY]),
            PropCtx::Disconnect => mask(&[
                SESSION_EXPIRY_INTERVAL,
                REASON_STRING,
                USER_PROPERTY,
                SERVER_REFERENCE,
            ]),
            PropCtx::Auth => mask(&[
                AUTHENTICATION_METHOD,
                AUTHENTICATION_DATA,
                REASON_STRING,
                USER_PROPERTY,
            ]),
        }
    }

    /// Properties that may appear more than once here.
    fn repeatable(self) -> u64 {
        match self {
            PropCtx::Publish => mask(&[id::USER_PROPERTY, id::SUBSCRIPTION_IDENTIFIER]),
            _ => mask(&[id::USER_PROPERTY]),
        }
    }
}

/// An item of a repeatable property.
pub trait PropItem<'a>: Sized + Copy + PartialEq {
    /// The property identifier.
    const ID: u8;
    /// Reads the value (after the identifier).
    #[doc(hidden)]
    fn read_value(r: &mut Reader<'a>) -> Result<Self, DecodeError>;
    /// Bytes of the value.
    #[doc(hidden)]
    fn value_len(&self) -> usize;
    /// Writes the value.
    #[doc(hidden)]
    fn write_value<S: Sink + ?Sized>(&self, w: &mut Writer<'_, S>) -> Result<(), EncodeError>;
}

/// A User Property: a name and a value, both UTF-8 strings; names may repeat.
pub type UserProperty<'a> = (&'a str, &'a str);

impl<'a> PropItem<'a> for (&'a str, &'a str) {
    const ID: u8 = id::USER_PROPERTY;
    fn read_value(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        Ok((r.string()?, r.string()?))
    }
    fn value_len(&self) -> usize {
        4 + self.0.len() + self.1.len()
    }
    fn write_value<S: Sink + ?Sized>(&self, w: &mut Writer<'_, S>) -> Result<(), EncodeError> {
        w.string(self.0)?;
        w.string(self.1)
    }
}

impl<'a> PropItem<'a> for u32 {
    const ID: u8 = id::SUBSCRIPTION_IDENTIFIER;
    fn read_value(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        match r.var_int()? {
            0 => Err(DecodeError::InvalidPropertyValue(
                id::SUBSCRIPTION_IDENTIFIER,
            )),
            v => Ok(v),
        }
    }
    fn value_len(&self) -> usize {
        var_int_len(*self as usize)
    }
    fn write_value<S: Sink + ?Sized>(&self, w: &mut Writer<'_, S>) -> Result<(), EncodeError> {
        if *self == 0 || *self > MAX_VAR_INT {
            return Err(EncodeError::TooLarge);
        }
        w.var_int(*self as usize)
    }
}

/// The values of one repeatable property, in order.
///
/// `Wire` points at a whole (already validated) property block and yields only the
/// entries of `T::ID`; `Slice` is what a caller builds to encode.
#[derive(Debug, Clone, Copy)]
pub enum PropList<'a, T> {
    /// Entries inside an encoded property block (from decoding).
    Wire(&'a [u8]),
    /// Entries given by the caller.
    Slice(&'a [T]),
}

impl<T> Default for PropList<'_, T> {
    fn default() -> Self {
        PropList::Slice(&[])
    }
}

impl<'a, T: PropItem<'a>> PropList<'a, T> {
    /// Iterates over the values in order.
    pub fn iter(&self) -> PropListIter<'a, T> {
        match *self {
            PropList::Wire(b) => PropListIter::Wire(Reader::new(b)),
            PropList::Slice(s) => PropListIter::Slice(s.iter()),
        }
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        self.iter().count()
    }

    /// True when there is no value.
    pub fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }

    fn wire_len(&self) -> usize {
        self.iter().map(|v| 1 + v.value_len()).sum()
    }

    fn write<S: Sink + ?Sized>(&self, w: &mut Writer<'_, S>) -> Result<(), EncodeError> {
        for v in self.iter() {
            w.u8(T::ID)?;
            v.write_value(w)?;
        }
        Ok(())
    }
}

impl<'a, T: PropItem<'a>> PartialEq for PropList<'a, T> {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

/// Iterator over a [`PropList`].
#[derive(Debug, Clone)]
pub enum PropListIter<'a, T> {
    #[doc(hidden)]
    Wire(Reader<'a>),
    #[doc(hidden)]
    Slice(core::slice::Iter<'a, T>),
}

impl<'a, T: PropItem<'a>> Iterator for PropListIter<'a, T> {
    type Item = T;
    fn next(&mut self) -> Option<T> {
        match self {
            PropListIter::Slice(it) => it.next().copied(),
            PropListIter::Wire(r) => {
                // The block was validated when decoded, so a parse failure cannot happen;
                // it ends the iteration rather than panicking.
                while r.remaining() > 0 {
                    let pid = r.var_int().ok()?;
                    if pid == u32::from(T::ID) {
                        return T::read_value(r).ok();
                    }
                    skip_value(r, pid as u8).ok()?;
                }
                None
            }
        }
    }
}

/// Skips the value of property `pid` (known to be valid).
fn skip_value(r: &mut Reader<'_>, pid: u8) -> Result<(), DecodeError> {
    match value_kind(pid).ok_or(DecodeError::UnknownProperty(pid))? {
        Kind::Byte => r.take(1).map(drop),
        Kind::Two => r.take(2).map(drop),
        Kind::Four => r.take(4).map(drop),
        Kind::VarInt => r.var_int().map(drop),
        Kind::Str | Kind::Bin => r.binary().map(drop),
        Kind::Pair => {
            r.binary()?;
            r.binary().map(drop)
        }
    }
}

/// Wire type of a property value.
#[derive(Clone, Copy)]
enum Kind {
    Byte,
    Two,
    Four,
    VarInt,
    Str,
    Bin,
    Pair,
}

fn value_kind(pid: u8) -> Option<Kind> {
    use id::*;
    Some(match pid {
        PAYLOAD_FORMAT_INDICATOR
        | REQUEST_PROBLEM_INFORMATION
        | REQUEST_RESPONSE_INFORMATION
        | MAXIMUM_QOS
        | RETAIN_AVAILABLE
        | WILDCARD_SUBSCRIPTION_AVAILABLE
        | SUBSCRIPTION_IDENTIFIER_AVAILABLE
        | SHARED_SUBSCRIPTION_AVAILABLE => Kind::Byte,
        SERVER_KEEP_ALIVE | RECEIVE_MAXIMUM | TOPIC_ALIAS_MAXIMUM | TOPIC_ALIAS => Kind::Two,
        MESSAGE_EXPIRY_INTERVAL
        | SESSION_EXPIRY_INTERVAL
        | WILL_DELAY_INTERVAL
        | MAXIMUM_PACKET_SIZE => Kind::Four,
        SUBSCRIPTION_IDENTIFIER => Kind::VarInt,
        CONTENT_TYPE
        | RESPONSE_TOPIC
        | ASSIGNED_CLIENT_IDENTIFIER
        | AUTHENTICATION_METHOD
        | RESPONSE_INFORMATION
        | SERVER_REFERENCE
        | REASON_STRING => Kind::Str,
        CORRELATION_DATA | AUTHENTICATION_DATA => Kind::Bin,
        USER_PROPERTY => Kind::Pair,
        _ => return None,
    })
}

/// The properties of one MQTT 5 packet (or of a will). Absent ones are `None`/empty.
/// In 3.1.1 packets every field stays at its default.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Properties<'a> {
    /// 0x01: 0 = unspecified bytes, 1 = UTF-8.
    pub payload_format_indicator: Option<u8>,
    /// 0x02: seconds until the message expires.
    pub message_expiry_interval: Option<u32>,
    /// 0x03: MIME-like description of the payload.
    pub content_type: Option<&'a str>,
    /// 0x08: topic for a response.
    pub response_topic: Option<&'a str>,
    /// 0x09: correlates a response with its request.
    pub correlation_data: Option<&'a [u8]>,
    /// 0x0B: subscription identifiers (several in a forwarded PUBLISH, one in SUBSCRIBE).
    pub subscription_identifiers: PropList<'a, u32>,
    /// 0x11: seconds the session outlives the connection.
    pub session_expiry_interval: Option<u32>,
    /// 0x12: client identifier chosen by the server.
    pub assigned_client_identifier: Option<&'a str>,
    /// 0x13: keep alive the server imposes.
    pub server_keep_alive: Option<u16>,
    /// 0x15: name of the extended authentication method.
    pub authentication_method: Option<&'a str>,
    /// 0x16: authentication data of that method.
    pub authentication_data: Option<&'a [u8]>,
    /// 0x17: whether reason strings and user properties may be sent on failures.
    pub request_problem_information: Option<bool>,
    /// 0x18: seconds to wait before publishing the will.
    pub will_delay_interval: Option<u32>,
    /// 0x19: whether the client asks for Response Information.
    pub request_response_information: Option<bool>,
    /// 0x1A: basis for response topics.
    pub response_information: Option<&'a str>,
    /// 0x1C: another server to use.
    pub server_reference: Option<&'a str>,
    /// 0x1F: human-readable diagnostic.
    pub reason_string: Option<&'a str>,
    /// 0x21: QoS 1/2 publications the sender accepts concurrently (never 0).
    pub receive_maximum: Option<u16>,
    /// 0x22: highest topic alias the sender accepts.
    pub topic_alias_maximum: Option<u16>,
    /// 0x23: topic alias of this PUBLISH (never 0).
    pub topic_alias: Option<u16>,
    /// 0x24: highest QoS the server supports (0 or 1; absent means 2).
    pub maximum_qos: Option<u8>,
    /// 0x25: whether the server supports retained messages.
    pub retain_available: Option<bool>,
    /// 0x26: user properties, in order.
    pub user_properties: PropList<'a, UserProperty<'a>>,
    /// 0x27: largest packet the sender accepts (never 0).
    pub maximum_packet_size: Option<u32>,
    /// 0x28: whether wildcard subscriptions are supported.
    pub wildcard_subscription_available: Option<bool>,
    /// 0x29: whether subscription identifiers are supported.
    pub subscription_identifier_available: Option<bool>,
    /// 0x2A: whether shared subscriptions are supported.
    pub shared_subscription_available: Option<bool>,
}

fn flag(v: u8, pid: u8) -> Result<bool, DecodeError> {
    match v {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(DecodeError::InvalidPropertyValue(pid)),
    }
}

impl<'a> Properties<'a> {
    /// Reads a property block (length prefix included) allowed in `ctx`.
    pub(crate) fn read(r: &mut Reader<'a>, ctx: PropCtx) -> Result<Self, DecodeError> {
        let len = r.var_int()? as usize;
        let block = r.take(len)?;
        let mut p = Properties::default();
        let mut br = Reader::new(block);
        let mut seen = 0u64;
        let allowed = ctx.allowed();
        let repeatable = ctx.repeatable();
        let mut has_user = false;
        let mut has_sub_id = false;
        while br.remaining() > 0 {
            let raw = br.var_int()?;
            let pid = u8::try_from(raw).map_err(|_| DecodeError::UnknownProperty(0xFF))?;
            if value_kind(pid).is_none() {
                return Err(DecodeError::UnknownProperty(pid));
            }
            let bit = 1u64 << pid;
            if allowed & bit == 0 {
                return Err(DecodeError::PropertyNotAllowed(pid));
            }
            if seen & bit != 0 && repeatable & bit == 0 {
                return Err(DecodeError::DuplicateProperty(pid));
            }
            seen |= bit;
            use id::*;
            match pid {
                PAYLOAD_FORMAT_INDICATOR => {
                    let v = br.u8()?;
                    flag(v, pid)?;
                    p.payload_format_indicator = Some(v);
                }
                MESSAGE_EXPIRY_INTERVAL => p.message_expiry_interval = Some(br.u32()?),
                CONTENT_TYPE => p.content_type = Some(br.string()?),
                RESPONSE_TOPIC => {
                    let t = br.string()?;
                    if !crate::topic::is_valid_name(t) {
                        return Err(DecodeError::InvalidPropertyValue(pid));
                    }
                    p.response_topic = Some(t);
                }
                CORRELATION_DATA => p.correlation_data = Some(br.binary()?),
                SUBSCRIPTION_IDENTIFIER => {
                    <u32 as PropItem>::read_value(&mut br)?;
                    has_sub_id = true;
                }
                SESSION_EXPIRY_INTERVAL => p.session_expiry_interval = Some(br.u32()?),
                ASSIGNED_CLIENT_IDENTIFIER => p.assigned_client_identifier = Some(br.string()?),
                SERVER_KEEP_ALIVE => p.server_keep_alive = Some(br.u16()?),
                AUTHENTICATION_METHOD => p.authentication_method = Some(br.string()?),
                AUTHENTICATION_DATA => p.authentication_data = Some(br.binary()?),
                REQUEST_PROBLEM_INFORMATION => {
                    p.request_problem_information = Some(flag(br.u8()?, pid)?)
                }
                WILL_DELAY_INTERVAL => p.will_delay_interval = Some(br.u32()?),
                REQUEST_RESPONSE_INFORMATION => {
                    p.request_response_information = Some(flag(br.u8()?, pid)?)
                }
                RESPONSE_INFORMATION => p.response_information = Some(br.string()?),
                SERVER_REFERENCE => p.server_reference = Some(br.string()?),
                REASON_STRING => p.reason_string = Some(br.string()?),
                RECEIVE_MAXIMUM => match br.u16()? {
                    0 => return Err(DecodeError::InvalidPropertyValue(pid)),
                    v => p.receive_maximum = Some(v),
                },
                TOPIC_ALIAS_MAXIMUM => p.topic_alias_maximum = Some(br.u16()?),
                TOPIC_ALIAS => match br.u16()? {
                    0 => return Err(DecodeError::InvalidTopicAlias),
                    v => p.topic_alias = Some(v),
                },
                MAXIMUM_QOS => {
                    let v = br.u8()?;
                    flag(v, pid)?;
                    p.maximum_qos = Some(v);
                }
                RETAIN_AVAILABLE => p.retain_available = Some(flag(br.u8()?, pid)?),
                USER_PROPERTY => {
                    <UserProperty<'a> as PropItem>::read_value(&mut br)?;
                    has_user = true;
                }
                MAXIMUM_PACKET_SIZE => match br.u32()? {
                    0 => return Err(DecodeError::InvalidPropertyValue(pid)),
                    v => p.maximum_packet_size = Some(v),
                },
                WILDCARD_SUBSCRIPTION_AVAILABLE => {
                    p.wildcard_subscription_available = Some(flag(br.u8()?, pid)?)
                }
                SUBSCRIPTION_IDENTIFIER_AVAILABLE => {
                    p.subscription_identifier_available = Some(flag(br.u8()?, pid)?)
                }
                SHARED_SUBSCRIPTION_AVAILABLE => {
                    p.shared_subscription_available = Some(flag(br.u8()?, pid)?)
                }
                _ => return Err(DecodeError::UnknownProperty(pid)),
            }
        }
        if has_user {
            p.user_properties = PropList::Wire(block);
        }
        if has_sub_id {
            p.subscription_identifiers = PropList::Wire(block);
        }
        Ok(p)
    }

    /// Bytes of the property block without its length prefix.
    pub fn content_len(&self) -> usize {
        fn s(v: Option<&str>) -> usize {
            v.map_or(0, |s| 3 + s.len())
        }
        fn b(v: Option<&[u8]>) -> usize {
            v.map_or(0, |s| 3 + s.len())
        }
        fn n<T>(v: Option<T>, size: usize) -> usize {
            v.map_or(0, |_| 1 + size)
        }
        n(self.payload_format_indicator, 1)
            + n(self.message_expiry_interval, 4)
            + s(self.content_type)
            + s(self.response_topic)
            + b(self.correlation_data)
            + self.subscription_identifiers.wire_len()
            + n(self.session_expiry_interval, 4)
            + s(self.assigned_client_identifier)
            + n(self.server_keep_alive, 2)
            + s(self.authentication_method)
            + b(self.authentication_data)
            + n(self.request_problem_information, 1)
            + n(self.will_delay_interval, 4)
            + n(self.request_response_information, 1)
            + s(self.response_information)
            + s(self.server_reference)
            + s(self.reason_string)
            + n(self.receive_maximum, 2)
            + n(self.topic_alias_maximum, 2)
            + n(self.topic_alias, 2)
            + n(self.maximum_qos, 1)
            + n(self.retain_available, 1)
            + self.user_properties.wire_len()
            + n(self.maximum_packet_size, 4)
            + n(self.wildcard_subscription_available, 1)
            + n(self.subscription_identifier_available, 1)
            + n(self.shared_subscription_available, 1)
    }

    /// Bytes of the property block including its length prefix.
    pub fn wire_len(&self) -> usize {
        let n = self.content_len();
        var_int_len(n) + n
    }

    /// True when no property is present.
    pub fn is_empty(&self) -> bool {
        self.content_len() == 0
    }

    /// Writes the length prefix and every present property.
    pub(crate) fn write<S: Sink + ?Sized>(&self, w: &mut Writer<'_, S>) -> Result<(), EncodeError> {
        use id::*;
        w.var_int(self.content_len())?;
        macro_rules! put {
            ($field:expr, $id:expr, $method:ident) => {
                if let Some(v) = $field {
                    w.u8($id)?;
                    w.$method(v)?;
                }
            };
        }
        put!(self.payload_format_indicator, PAYLOAD_FORMAT_INDICATOR, u8);
        put!(self.message_expiry_interval, MESSAGE_EXPIRY_INTERVAL, u32);
        put!(self.content_type, CONTENT_TYPE, string);
        put!(self.response_topic, RESPONSE_TOPIC, string);
        put!(self.correlation_data, CORRELATION_DATA, binary);
        self.subscription_identifiers.write(w)?;
        put!(self.session_expiry_interval, SESSION_EXPIRY_INTERVAL, u32);
        put!(
            self.assigned_client_identifier,
            ASSIGNED_CLIENT_IDENTIFIER,
            string
        );
        put!(self.server_keep_alive, SERVER_KEEP_ALIVE, u16);
        put!(self.authentication_method, AUTHENTICATION_METHOD, string);
        put!(self.authentication_data, AUTHENTICATION_DATA, binary);
        put!(
            self.request_problem_information.map(u8::from),
            REQUEST_PROBLEM_INFORMATION,
            u8
        );
        put!(self.will_delay_interval, WILL_DELAY_INTERVAL, u32);
        put!(
            self.request_response_information.map(u8::from),
            REQUEST_RESPONSE_INFORMATION,
            u8
        );
        put!(self.response_information, RESPONSE_INFORMATION, string);
        put!(self.server_reference, SERVER_REFERENCE, string);
        put!(self.reason_string, REASON_STRING, string);
        put!(self.receive_maximum, RECEIVE_MAXIMUM, u16);
        put!(self.topic_alias_maximum, TOPIC_ALIAS_MAXIMUM, u16);
        put!(self.topic_alias, TOPIC_ALIAS, u16);
        put!(self.maximum_qos, MAXIMUM_QOS, u8);
        put!(self.retain_available.map(u8::from), RETAIN_AVAILABLE, u8);
        self.user_properties.write(w)?;
        put!(self.maximum_packet_size, MAXIMUM_PACKET_SIZE, u32);
        put!(
            self.wildcard_subscription_available.map(u8::from),
            WILDCARD_SUBSCRIPTION_AVAILABLE,
            u8
        );
        put!(
            self.subscription_identifier_available.map(u8::from),
            SUBSCRIPTION_IDENTIFIER_AVAILABLE,
            u8
        );
        put!(
            self.shared_subscription_available.map(u8::from),
            SHARED_SUBSCRIPTION_AVAILABLE,
            u8
        );
        Ok(())
    }
}
