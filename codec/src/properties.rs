//! MQTT 5 properties (§2.2.2): [`Properties`], the small `Copy` handle a packet holds,
//! and [`PropValues`], one field per property, which a caller fills to encode.
//!
//! Decoding validates a property block as strictly as MQTT 5 asks (identifiers allowed
//! in that packet, no duplicates, values in range, UTF-8) and keeps only the block: the
//! accessors read it again on demand, so a packet stays small and decoding copies
//! nothing. The two properties that may repeat (User Property everywhere, Subscription
//! Identifier in PUBLISH) are [`PropList`]s: after decoding they point into the block
//! and are parsed again on iteration; to encode, the caller gives a slice.

use crate::wire::{var_int_len, Reader, Writer, MAX_VAR_INT};
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
// Without `server`, CONNECT, its will, SUBSCRIBE and UNSUBSCRIBE are never decoded.
#[cfg_attr(not(feature = "server"), allow(dead_code))]
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
    fn write_value(&self, w: &mut Writer<'_>) -> Result<(), EncodeError>;
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
    fn write_value(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
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
    fn write_value(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
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
    let kind = value_kind(pid).ok_or(DecodeError::UnknownProperty(pid))?;
    read_value(r, kind, false).map(drop)
}

/// A property value as read from the wire.
#[derive(Clone, Copy)]
enum Val<'a> {
    /// A Byte, Two Byte, Four Byte or Variable Byte Integer.
    Num(u32),
    /// A UTF-8 string, checked.
    Str(&'a str),
    /// Binary data, or a string read from a block validated before (not checked again).
    Bin(&'a [u8]),
    /// A User Property, the values left in the block.
    Pair,
}

/// Reads one value of `kind`, checking strings when `check` (decoding) and not when
/// reading a block validated before. One function for every property keeps the code
/// small.
#[inline(never)]
fn read_value<'a>(r: &mut Reader<'a>, kind: Kind, check: bool) -> Result<Val<'a>, DecodeError> {
    Ok(match kind {
        Kind::Byte => Val::Num(r.u8()?.into()),
        Kind::Two => Val::Num(r.u16()?.into()),
        Kind::Four => Val::Num(r.u32()?),
        Kind::VarInt => Val::Num(r.var_int()?),
        Kind::Str if check => Val::Str(r.string()?),
        Kind::Str | Kind::Bin => Val::Bin(r.binary()?),
        Kind::Pair if check => {
            r.string()?;
            r.string()?;
            Val::Pair
        }
        Kind::Pair => {
            r.binary()?;
            r.binary()?;
            Val::Pair
        }
    })
}

/// A property value to encode.
#[derive(Clone, Copy)]
enum Out<'a> {
    Byte(u8),
    Two(u16),
    Four(u32),
    /// A Variable Byte Integer (Subscription Identifier: 1 to 268,435,455).
    Var(u32),
    /// A string or binary data: two length bytes, then the bytes.
    Bin(&'a [u8]),
    /// A User Property.
    Pair(&'a str, &'a str),
}

impl Out<'_> {
    /// Bytes of the value (the identifier not included).
    // Server builds count lengths field by field instead (see `content_len`).
    #[cfg_attr(feature = "server", allow(dead_code))]
    fn len(self) -> usize {
        match self {
            Out::Byte(_) => 1,
            Out::Two(_) => 2,
            Out::Four(_) => 4,
            Out::Var(v) => var_int_len(v as usize),
            Out::Bin(b) => 2 + b.len(),
            Out::Pair(k, v) => 4 + k.len() + v.len(),
        }
    }

    fn write(self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        match self {
            Out::Byte(b) => w.u8(b),
            Out::Two(v) => w.u16(v),
            Out::Four(v) => w.u32(v),
            Out::Var(v) if v == 0 || v > MAX_VAR_INT => Err(EncodeError::TooLarge),
            Out::Var(v) => w.var_int(v as usize),
            Out::Bin(b) => w.binary(b),
            Out::Pair(k, v) => {
                w.string(k)?;
                w.string(v)
            }
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

/// The values of every MQTT 5 property, one field each (absent ones `None`/empty): what
/// a caller fills in to encode properties (lend it to a packet with
/// [`Properties::from`]), and what [`Properties::values`] gives for a decoded block.
///
/// It is large (27 fields), so packets do not hold it: they hold a [`Properties`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PropValues<'a> {
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

/// No property: [`PropValues::default`]. Copying one constant is smaller code than
/// setting each of the 27 fields wherever a packet is built.
const EMPTY: PropValues<'static> = PropValues {
    payload_format_indicator: None,
    message_expiry_interval: None,
    content_type: None,
    response_topic: None,
    correlation_data: None,
    subscription_identifiers: PropList::Slice(&[]),
    session_expiry_interval: None,
    assigned_client_identifier: None,
    server_keep_alive: None,
    authentication_method: None,
    authentication_data: None,
    request_problem_information: None,
    will_delay_interval: None,
    request_response_information: None,
    response_information: None,
    server_reference: None,
    reason_string: None,
    receive_maximum: None,
    topic_alias_maximum: None,
    topic_alias: None,
    maximum_qos: None,
    retain_available: None,
    user_properties: PropList::Slice(&[]),
    maximum_packet_size: None,
    wildcard_subscription_available: None,
    subscription_identifier_available: None,
    shared_subscription_available: None,
};

impl Default for PropValues<'_> {
    #[inline(never)]
    fn default() -> Self {
        EMPTY
    }
}

/// One field of [`PropValues`], by the type of its value.
#[derive(Clone, Copy)]
enum Field<'r, 'a> {
    Byte(&'r Option<u8>),
    Flag(&'r Option<bool>),
    Two(&'r Option<u16>),
    Four(&'r Option<u32>),
    Str(&'r Option<&'a str>),
    Bin(&'r Option<&'a [u8]>),
    SubIds,
    Users,
}

/// The identifiers of [`PropValues::fields`], in order.
static FIELD_IDS: [u8; 27] = {
    use id::*;
    [
        PAYLOAD_FORMAT_INDICATOR,
        MESSAGE_EXPIRY_INTERVAL,
        CONTENT_TYPE,
        RESPONSE_TOPIC,
        CORRELATION_DATA,
        SUBSCRIPTION_IDENTIFIER,
        SESSION_EXPIRY_INTERVAL,
        ASSIGNED_CLIENT_IDENTIFIER,
        SERVER_KEEP_ALIVE,
        AUTHENTICATION_METHOD,
        AUTHENTICATION_DATA,
        REQUEST_PROBLEM_INFORMATION,
        WILL_DELAY_INTERVAL,
        REQUEST_RESPONSE_INFORMATION,
        RESPONSE_INFORMATION,
        SERVER_REFERENCE,
        REASON_STRING,
        RECEIVE_MAXIMUM,
        TOPIC_ALIAS_MAXIMUM,
        TOPIC_ALIAS,
        MAXIMUM_QOS,
        RETAIN_AVAILABLE,
        USER_PROPERTY,
        MAXIMUM_PACKET_SIZE,
        WILDCARD_SUBSCRIPTION_AVAILABLE,
        SUBSCRIPTION_IDENTIFIER_AVAILABLE,
        SHARED_SUBSCRIPTION_AVAILABLE,
    ]
};

impl<'a> PropValues<'a> {
    /// The values of a validated property block (no length prefix).
    fn from_wire(block: &'a [u8]) -> Self {
        use id::*;
        let mut p = PropValues::default();
        let mut br = Reader::new(block);
        while br.remaining() > 0 {
            // The block was validated: a failure cannot happen and ends the walk.
            let Ok(raw) = br.var_int() else { break };
            let pid = raw as u8;
            let Some(kind) = value_kind(pid) else { break };
            let Ok(v) = read_value(&mut br, kind, false) else {
                break;
            };
            let (n, b) = match v {
                Val::Num(n) => (n, &[][..]),
                Val::Str(s) => (0, s.as_bytes()),
                Val::Bin(b) => (0, b),
                Val::Pair => (0, &[][..]),
            };
            let s = || core::str::from_utf8(b).ok();
            match pid {
                PAYLOAD_FORMAT_INDICATOR => p.payload_format_indicator = Some(n as u8),
                MESSAGE_EXPIRY_INTERVAL => p.message_expiry_interval = Some(n),
                CONTENT_TYPE => p.content_type = s(),
                RESPONSE_TOPIC => p.response_topic = s(),
                CORRELATION_DATA => p.correlation_data = Some(b),
                // The repeatable ones are read again from the block on iteration.
                SUBSCRIPTION_IDENTIFIER => p.subscription_identifiers = PropList::Wire(block),
                SESSION_EXPIRY_INTERVAL => p.session_expiry_interval = Some(n),
                ASSIGNED_CLIENT_IDENTIFIER => p.assigned_client_identifier = s(),
                SERVER_KEEP_ALIVE => p.server_keep_alive = Some(n as u16),
                AUTHENTICATION_METHOD => p.authentication_method = s(),
                AUTHENTICATION_DATA => p.authentication_data = Some(b),
                REQUEST_PROBLEM_INFORMATION => p.request_problem_information = Some(n != 0),
                WILL_DELAY_INTERVAL => p.will_delay_interval = Some(n),
                REQUEST_RESPONSE_INFORMATION => p.request_response_information = Some(n != 0),
                RESPONSE_INFORMATION => p.response_information = s(),
                SERVER_REFERENCE => p.server_reference = s(),
                REASON_STRING => p.reason_string = s(),
                RECEIVE_MAXIMUM => p.receive_maximum = Some(n as u16),
                TOPIC_ALIAS_MAXIMUM => p.topic_alias_maximum = Some(n as u16),
                TOPIC_ALIAS => p.topic_alias = Some(n as u16),
                MAXIMUM_QOS => p.maximum_qos = Some(n as u8),
                RETAIN_AVAILABLE => p.retain_available = Some(n != 0),
                USER_PROPERTY => p.user_properties = PropList::Wire(block),
                MAXIMUM_PACKET_SIZE => p.maximum_packet_size = Some(n),
                WILDCARD_SUBSCRIPTION_AVAILABLE => p.wildcard_subscription_available = Some(n != 0),
                SUBSCRIPTION_IDENTIFIER_AVAILABLE => {
                    p.subscription_identifier_available = Some(n != 0)
                }
                SHARED_SUBSCRIPTION_AVAILABLE => p.shared_subscription_available = Some(n != 0),
                _ => {}
            }
        }
        p
    }

    /// Every field in the order they are encoded (by identifier, see [`FIELD_IDS`]).
    fn fields(&self) -> [Field<'_, 'a>; 27] {
        use Field::*;
        [
            Byte(&self.payload_format_indicator),
            Four(&self.message_expiry_interval),
            Str(&self.content_type),
            Str(&self.response_topic),
            Bin(&self.correlation_data),
            SubIds,
            Four(&self.session_expiry_interval),
            Str(&self.assigned_client_identifier),
            Two(&self.server_keep_alive),
            Str(&self.authentication_method),
            Bin(&self.authentication_data),
            Flag(&self.request_problem_information),
            Four(&self.will_delay_interval),
            Flag(&self.request_response_information),
            Str(&self.response_information),
            Str(&self.server_reference),
            Str(&self.reason_string),
            Two(&self.receive_maximum),
            Two(&self.topic_alias_maximum),
            Two(&self.topic_alias),
            Byte(&self.maximum_qos),
            Flag(&self.retain_available),
            Users,
            Four(&self.maximum_packet_size),
            Flag(&self.wildcard_subscription_available),
            Flag(&self.subscription_identifier_available),
            Flag(&self.shared_subscription_available),
        ]
    }

    /// Calls `f` with every present property in the order they are encoded. One loop
    /// and one call site serve both [`PropValues::content_len`] and
    /// [`PropValues::write`]: smaller code than a branch per field.
    #[inline(never)]
    fn each(
        &self,
        f: &mut dyn FnMut(u8, Out<'a>) -> Result<(), EncodeError>,
    ) -> Result<(), EncodeError> {
        for (&pid, field) in FIELD_IDS.iter().zip(self.fields()) {
            let out = match field {
                Field::Byte(v) => v.map(Out::Byte),
                Field::Flag(v) => v.map(|b| Out::Byte(b.into())),
                Field::Two(v) => v.map(Out::Two),
                Field::Four(v) => v.map(Out::Four),
                Field::Str(v) => v.map(|s| Out::Bin(s.as_bytes())),
                Field::Bin(v) => v.map(Out::Bin),
                Field::SubIds => {
                    for v in self.subscription_identifiers.iter() {
                        f(pid, Out::Var(v))?;
                    }
                    None
                }
                Field::Users => {
                    for (k, v) in self.user_properties.iter() {
                        f(pid, Out::Pair(k, v))?;
                    }
                    None
                }
            };
            if let Some(v) = out {
                f(pid, v)?;
            }
        }
        Ok(())
    }

    /// Bytes of the property block without its length prefix.
    ///
    /// Server builds (feature `server`) add up the fields directly, which is several
    /// times faster than the table walk device builds use to stay small.
    #[cfg(feature = "server")]
    pub fn content_len(&self) -> usize {
        fn bin(v: Option<&[u8]>) -> usize {
            v.map_or(0, |b| 3 + b.len())
        }
        fn s(v: Option<&str>) -> usize {
            bin(v.map(str::as_bytes))
        }
        fn n<T>(v: Option<T>, size: usize) -> usize {
            v.map_or(0, |_| 1 + size)
        }
        let lists = |p: &Self| -> usize {
            let ids: usize = p
                .subscription_identifiers
                .iter()
                .map(|v| 1 + v.value_len())
                .sum();
            let users: usize = p.user_properties.iter().map(|v| 1 + v.value_len()).sum();
            ids + users
        };
        n(self.payload_format_indicator, 1)
            + n(self.message_expiry_interval, 4)
            + s(self.content_type)
            + s(self.response_topic)
            + bin(self.correlation_data)
            + n(self.session_expiry_interval, 4)
            + s(self.assigned_client_identifier)
            + n(self.server_keep_alive, 2)
            + s(self.authentication_method)
            + bin(self.authentication_data)
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
            + n(self.maximum_packet_size, 4)
            + n(self.wildcard_subscription_available, 1)
            + n(self.subscription_identifier_available, 1)
            + n(self.shared_subscription_available, 1)
            + lists(self)
    }

    /// Bytes of the property block without its length prefix.
    #[cfg(not(feature = "server"))]
    pub fn content_len(&self) -> usize {
        let mut n = 0;
        // Counting never fails.
        let _ = self.each(&mut |_, v| {
            n += 1 + v.len();
            Ok(())
        });
        n
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

    /// Writes every present property (the length prefix is the caller's).
    fn write_content(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        self.each(&mut |pid, v| {
            w.u8(pid)?;
            v.write(w)
        })
    }
}

/// Checks a property block (no length prefix) against MQTT 5 for `ctx`: known
/// identifiers allowed there, no duplicates but of the repeatable ones, values in range,
/// strings well-formed UTF-8.
fn validate(block: &[u8], ctx: PropCtx) -> Result<(), DecodeError> {
    use id::*;
    let mut br = Reader::new(block);
    let mut seen = 0u64;
    let allowed = ctx.allowed();
    let repeatable = ctx.repeatable();
    while br.remaining() > 0 {
        let raw = br.var_int()?;
        let pid = u8::try_from(raw).map_err(|_| DecodeError::UnknownProperty(0xFF))?;
        let kind = value_kind(pid).ok_or(DecodeError::UnknownProperty(pid))?;
        // Every known identifier is below 64.
        let bit = 1u64 << (pid & 63);
        if allowed & bit == 0 {
            return Err(DecodeError::PropertyNotAllowed(pid));
        }
        if seen & bit != 0 && repeatable & bit == 0 {
            return Err(DecodeError::DuplicateProperty(pid));
        }
        seen |= bit;
        let (n, s) = match read_value(&mut br, kind, true)? {
            Val::Num(n) => (n, ""),
            Val::Str(s) => (0, s),
            Val::Bin(_) | Val::Pair => (0, ""),
        };
        let invalid = match pid {
            TOPIC_ALIAS if n == 0 => return Err(DecodeError::InvalidTopicAlias),
            RECEIVE_MAXIMUM | MAXIMUM_PACKET_SIZE | SUBSCRIPTION_IDENTIFIER => n == 0,
            RESPONSE_TOPIC => !crate::topic::is_valid_name(s),
            // Every one-byte property is 0 or 1.
            _ => matches!(kind, Kind::Byte) && n > 1,
        };
        if invalid {
            return Err(DecodeError::InvalidPropertyValue(pid));
        }
    }
    Ok(())
}

/// The value of the first property `pid` in a validated block (no length prefix).
fn find(block: &[u8], pid: u8) -> Option<Val<'_>> {
    let mut r = Reader::new(block);
    while r.remaining() > 0 {
        let raw = r.var_int().ok()?;
        let kind = value_kind(raw as u8)?;
        let v = read_value(&mut r, kind, false).ok()?;
        if raw == u32::from(pid) {
            return Some(v);
        }
    }
    None
}

/// The number in `v`, if it is one.
fn num(v: Option<Val<'_>>) -> Option<u32> {
    match v {
        Some(Val::Num(n)) => Some(n),
        _ => None,
    }
}

/// The bytes in `v` (binary data or a string), if any.
fn bin(v: Option<Val<'_>>) -> Option<&[u8]> {
    match v {
        Some(Val::Bin(b)) => Some(b),
        Some(Val::Str(s)) => Some(s.as_bytes()),
        _ => None,
    }
}

/// The properties of one packet (or of a will), as a packet holds them: small and `Copy`.
///
/// A decoded packet holds [`Properties::Wire`], its validated property block, read again
/// on demand by the accessors ([`Properties::topic_alias`],
/// [`Properties::user_properties`], …; blocks are short), or all at once with
/// [`Properties::values`]. To encode properties, fill a [`PropValues`] and lend it:
/// `Properties::Values(&values)` (or `Properties::from(&values)`).
/// [`Properties::default`] is "no property" (and what a 3.1.1 packet holds).
///
/// Two `Properties` are equal when they hold the same properties, whatever their form.
#[derive(Clone, Copy)]
pub enum Properties<'a> {
    /// A property block without its length prefix, as decoded (and validated). Encoding
    /// writes its bytes as they are; the accessors skip what they cannot parse, so a
    /// block built by hand must be a valid one.
    Wire(&'a [u8]),
    /// Values a caller built, to encode.
    Values(&'a PropValues<'a>),
}

impl Default for Properties<'_> {
    fn default() -> Self {
        Properties::Wire(&[])
    }
}

impl<'a> From<&'a PropValues<'a>> for Properties<'a> {
    fn from(v: &'a PropValues<'a>) -> Self {
        Properties::Values(v)
    }
}

impl PartialEq for Properties<'_> {
    fn eq(&self, other: &Self) -> bool {
        match (*self, *other) {
            (Properties::Wire(a), Properties::Wire(b)) if a == b => true,
            _ => self.values() == other.values(),
        }
    }
}

impl core::fmt::Debug for Properties<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        if self.is_empty() {
            f.write_str("Properties(none)")
        } else {
            f.debug_tuple("Properties").field(&self.values()).finish()
        }
    }
}

/// Accessors of the single-valued properties. Server builds read the field of
/// [`PropValues`] directly or scan the block; device builds share one out-of-line lookup
/// ([`Properties::get`]), which is smaller code.
macro_rules! accessors {
    ($($(#[$doc:meta])* $name:ident: $ty:ty = $id:ident, |$v:ident| $conv:expr;)*) => {
        $(
            $(#[$doc])*
            #[cfg(feature = "server")]
            pub fn $name(&self) -> Option<$ty> {
                match *self {
                    Properties::Values(v) => v.$name,
                    Properties::Wire(b) => {
                        let $v = find(b, id::$id);
                        $conv
                    }
                }
            }

            $(#[$doc])*
            #[cfg(not(feature = "server"))]
            pub fn $name(&self) -> Option<$ty> {
                let $v = self.get(id::$id);
                $conv
            }
        )*
    };
}

impl<'a> Properties<'a> {
    /// Reads a property block (length prefix included) allowed in `ctx`.
    pub(crate) fn read(r: &mut Reader<'a>, ctx: PropCtx) -> Result<Self, DecodeError> {
        let len = r.var_int()? as usize;
        let block = r.take(len)?;
        validate(block, ctx)?;
        Ok(Properties::Wire(block))
    }

    /// The value of the first property `pid`, whatever the form.
    #[cfg(not(feature = "server"))]
    #[inline(never)]
    fn get(&self, pid: u8) -> Option<Val<'a>> {
        match *self {
            Properties::Wire(b) => find(b, pid),
            Properties::Values(v) => {
                let mut found = None;
                // Never fails: the closure does not.
                let _ = v.each(&mut |id, out| {
                    if id == pid && found.is_none() {
                        found = match out {
                            Out::Byte(n) => Some(Val::Num(n.into())),
                            Out::Two(n) => Some(Val::Num(n.into())),
                            Out::Four(n) | Out::Var(n) => Some(Val::Num(n)),
                            Out::Bin(b) => Some(Val::Bin(b)),
                            Out::Pair(..) => None,
                        };
                    }
                    Ok(())
                });
                found
            }
        }
    }

    /// Every property at once.
    pub fn values(&self) -> PropValues<'a> {
        match *self {
            Properties::Values(v) => *v,
            Properties::Wire(b) => PropValues::from_wire(b),
        }
    }

    accessors! {
        /// 0x01 Payload Format Indicator: 0 = unspecified bytes, 1 = UTF-8.
        payload_format_indicator: u8 = PAYLOAD_FORMAT_INDICATOR, |v| num(v).map(|n| n as u8);
        /// 0x02 Message Expiry Interval: seconds until the message expires.
        message_expiry_interval: u32 = MESSAGE_EXPIRY_INTERVAL, |v| num(v);
        /// 0x03 Content Type: MIME-like description of the payload.
        content_type: &'a str = CONTENT_TYPE, |v| bin(v).and_then(|b| core::str::from_utf8(b).ok());
        /// 0x08 Response Topic: topic for a response.
        response_topic: &'a str = RESPONSE_TOPIC, |v| bin(v).and_then(|b| core::str::from_utf8(b).ok());
        /// 0x09 Correlation Data: correlates a response with its request.
        correlation_data: &'a [u8] = CORRELATION_DATA, |v| bin(v);
        /// 0x11 Session Expiry Interval: seconds the session outlives the connection.
        session_expiry_interval: u32 = SESSION_EXPIRY_INTERVAL, |v| num(v);
        /// 0x12 Assigned Client Identifier: client identifier chosen by the server.
        assigned_client_identifier: &'a str = ASSIGNED_CLIENT_IDENTIFIER, |v| bin(v).and_then(|b| core::str::from_utf8(b).ok());
        /// 0x13 Server Keep Alive: keep alive the server imposes.
        server_keep_alive: u16 = SERVER_KEEP_ALIVE, |v| num(v).map(|n| n as u16);
        /// 0x15 Authentication Method: name of the extended authentication method.
        authentication_method: &'a str = AUTHENTICATION_METHOD, |v| bin(v).and_then(|b| core::str::from_utf8(b).ok());
        /// 0x16 Authentication Data: data of that method.
        authentication_data: &'a [u8] = AUTHENTICATION_DATA, |v| bin(v);
        /// 0x17 Request Problem Information: whether reason strings and user properties
        /// may be sent on failures.
        request_problem_information: bool = REQUEST_PROBLEM_INFORMATION, |v| num(v).map(|n| n != 0);
        /// 0x18 Will Delay Interval: seconds to wait before publishing the will.
        will_delay_interval: u32 = WILL_DELAY_INTERVAL, |v| num(v);
        /// 0x19 Request Response Information: whether the client asks for Response
        /// Information.
        request_response_information: bool = REQUEST_RESPONSE_INFORMATION, |v| num(v).map(|n| n != 0);
        /// 0x1A Response Information: basis for response topics.
        response_information: &'a str = RESPONSE_INFORMATION, |v| bin(v).and_then(|b| core::str::from_utf8(b).ok());
        /// 0x1C Server Reference: another server to use.
        server_reference: &'a str = SERVER_REFERENCE, |v| bin(v).and_then(|b| core::str::from_utf8(b).ok());
        /// 0x1F Reason String: human-readable diagnostic.
        reason_string: &'a str = REASON_STRING, |v| bin(v).and_then(|b| core::str::from_utf8(b).ok());
        /// 0x21 Receive Maximum: QoS 1/2 publications the sender accepts concurrently.
        receive_maximum: u16 = RECEIVE_MAXIMUM, |v| num(v).map(|n| n as u16);
        /// 0x22 Topic Alias Maximum: highest topic alias the sender accepts.
        topic_alias_maximum: u16 = TOPIC_ALIAS_MAXIMUM, |v| num(v).map(|n| n as u16);
        /// 0x23 Topic Alias of this PUBLISH (never 0).
        topic_alias: u16 = TOPIC_ALIAS, |v| num(v).map(|n| n as u16);
        /// 0x24 Maximum QoS: highest QoS the server supports (0 or 1; absent means 2).
        maximum_qos: u8 = MAXIMUM_QOS, |v| num(v).map(|n| n as u8);
        /// 0x25 Retain Available: whether the server supports retained messages.
        retain_available: bool = RETAIN_AVAILABLE, |v| num(v).map(|n| n != 0);
        /// 0x27 Maximum Packet Size: largest packet the sender accepts (never 0).
        maximum_packet_size: u32 = MAXIMUM_PACKET_SIZE, |v| num(v);
        /// 0x28 Wildcard Subscription Available.
        wildcard_subscription_available: bool = WILDCARD_SUBSCRIPTION_AVAILABLE, |v| num(v).map(|n| n != 0);
        /// 0x29 Subscription Identifier Available.
        subscription_identifier_available: bool = SUBSCRIPTION_IDENTIFIER_AVAILABLE, |v| num(v).map(|n| n != 0);
        /// 0x2A Shared Subscription Available.
        shared_subscription_available: bool = SHARED_SUBSCRIPTION_AVAILABLE, |v| num(v).map(|n| n != 0);
    }

    /// 0x0B Subscription Identifiers, in order (several in a forwarded PUBLISH, one in
    /// SUBSCRIBE).
    pub fn subscription_identifiers(&self) -> PropList<'a, u32> {
        match *self {
            Properties::Values(v) => v.subscription_identifiers,
            Properties::Wire(b) => PropList::Wire(b),
        }
    }

    /// 0x26 User Properties, in order.
    pub fn user_properties(&self) -> PropList<'a, UserProperty<'a>> {
        match *self {
            Properties::Values(v) => v.user_properties,
            Properties::Wire(b) => PropList::Wire(b),
        }
    }

    /// Bytes of the property block without its length prefix.
    pub fn content_len(&self) -> usize {
        match *self {
            Properties::Wire(b) => b.len(),
            Properties::Values(v) => v.content_len(),
        }
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

    /// Writes the block: its length prefix `len` (from [`Properties::content_len`]),
    /// then every property.
    pub(crate) fn write(&self, w: &mut Writer<'_>, len: usize) -> Result<(), EncodeError> {
        w.var_int(len)?;
        match *self {
            // No property: the length byte alone.
            _ if len == 0 => Ok(()),
            Properties::Wire(b) => w.bytes(b),
            Properties::Values(v) => v.write_content(w),
        }
    }
}
