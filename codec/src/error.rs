//! Errors of decoding and encoding, each mapped to the MQTT 5 reason code a server sends.

use crate::reason;

/// Why a frame could not be decoded.
///
/// Every variant maps to the MQTT 5 reason code the receiver should use to close the
/// connection ([`DecodeError::reason_code`]): malformed (0x81) and protocol error (0x82)
/// are kept apart, as the specification does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Packet type 0 or 15 in v3.1.1, or an unknown type; without the `server` feature
    /// also CONNECT, SUBSCRIBE and UNSUBSCRIBE, which only a server receives.
    #[error("invalid packet type {0}")]
    InvalidPacketType(u8),
    /// The low nibble of the fixed header has a value the packet type forbids.
    #[error("reserved fixed-header flags {flags:#06b} set on packet type {packet_type}")]
    InvalidHeaderFlags {
        /// The packet type (high nibble).
        packet_type: u8,
        /// The flags (low nibble).
        flags: u8,
    },
    /// A variable byte integer uses a fifth byte (value over 268,435,455).
    #[error("variable byte integer longer than 4 bytes")]
    MalformedVarInt,
    /// The frame is larger than the caller's maximum packet size.
    #[error("packet of {size} bytes exceeds the maximum of {max}")]
    PacketTooLarge {
        /// Total frame size in bytes.
        size: usize,
        /// The limit in force.
        max: u32,
    },
    /// A field claims more bytes than the frame holds.
    #[error("field runs past the end of the packet")]
    UnexpectedEnd,
    /// Bytes left over after the last field of a packet.
    #[error("{0} trailing bytes after the packet")]
    TrailingBytes(usize),
    /// A string is not well-formed UTF-8 or contains U+0000 (MQTT-1.5.3).
    #[error("invalid UTF-8 string")]
    InvalidUtf8,
    /// The protocol name is not `MQTT` (or `MQIsdp` for level 3).
    #[error("invalid protocol name")]
    InvalidProtocolName,
    /// A protocol level this codec does not speak (not 3, 4 or 5).
    #[error("unsupported protocol level {0}")]
    UnsupportedProtocolVersion(u8),
    /// CONNECT flags: reserved bit set, or will QoS/retain set without the will flag, or
    /// a will QoS of 3, or (3.1.1) a password without a user name.
    #[error("invalid CONNECT flags {0:#010b}")]
    InvalidConnectFlags(u8),
    /// CONNACK acknowledge flags other than bit 0 set.
    #[error("invalid CONNACK flags {0:#010b}")]
    InvalidConnAckFlags(u8),
    /// QoS 3 in a PUBLISH, or in 3.1.1 subscription options. (A will QoS of 3 is
    /// [`DecodeError::InvalidConnectFlags`]; in MQTT 5 subscription options it is
    /// [`DecodeError::InvalidSubscriptionOptions`], a Protocol Error.)
    #[error("invalid QoS 3")]
    InvalidQoS,
    /// A PUBLISH with QoS 0 and DUP 1.
    #[error("DUP set on a QoS 0 PUBLISH")]
    DupOnQoS0,
    /// Subscription options with reserved bits set (malformed), or in MQTT 5 Retain
    /// Handling 3 or Maximum QoS 3 (Protocol Errors).
    #[error("invalid subscription options {0:#010b}")]
    InvalidSubscriptionOptions(u8),
    /// A topic name that is empty (without a topic alias) or holds `+` or `#`: a Protocol
    /// Error (0x82).
    #[error("invalid topic name")]
    InvalidTopicName,
    /// A topic filter that is empty or has misplaced wildcards.
    #[error("invalid topic filter")]
    InvalidTopicFilter,
    /// Packet identifier 0 where one is required.
    #[error("packet identifier 0")]
    ZeroPacketId,
    /// A SUBSCRIBE or UNSUBSCRIBE without any topic filter.
    #[error("no topic filter in SUBSCRIBE/UNSUBSCRIBE")]
    NoTopicFilter,
    /// A property identifier that MQTT 5 does not define.
    #[error("unknown property identifier {0:#04x}")]
    UnknownProperty(u8),
    /// A property this packet type may not carry.
    #[error("property {0:#04x} not allowed in this packet")]
    PropertyNotAllowed(u8),
    /// A property that may appear once appears twice.
    #[error("property {0:#04x} appears more than once")]
    DuplicateProperty(u8),
    /// A property value outside its range (e.g. Receive Maximum 0, a boolean of 2).
    #[error("invalid value for property {0:#04x}")]
    InvalidPropertyValue(u8),
    /// Topic Alias 0 (MQTT 5 §3.3.2.3.4).
    #[error("topic alias 0")]
    InvalidTopicAlias,
    /// A reason code this packet type does not define.
    #[error("reason code {0:#04x} not valid in this packet")]
    InvalidReasonCode(u8),
    /// A packet that does not exist in the connection's protocol version. (Decoding
    /// reports AUTH on a 3.1.1 connection as [`DecodeError::InvalidPacketType`]; this
    /// variant is for callers that check versions themselves.)
    #[error("packet type not defined in this protocol version")]
    NotInVersion,
}

impl DecodeError {
    /// The MQTT 5 reason code a server (or client) sends in DISCONNECT for this error.
    pub fn reason_code(&self) -> u8 {
        match self {
            DecodeError::PacketTooLarge { .. } => reason::PACKET_TOO_LARGE,
            DecodeError::UnsupportedProtocolVersion(_) => reason::UNSUPPORTED_PROTOCOL_VERSION,
            DecodeError::InvalidTopicAlias => reason::TOPIC_ALIAS_INVALID,
            // An empty topic name without a Topic Alias is a Protocol Error (MQTT 5
            // §3.3.2.1), and so is a wildcard in a name (data the protocol does not allow,
            // §4.13). 0x90 means "correctly formed, but not accepted": a broker's policy.
            DecodeError::InvalidTopicName => reason::PROTOCOL_ERROR,
            // Maximum QoS 3 and Retain Handling 3 are Protocol Errors (MQTT 5 §3.8.3.1);
            // a reserved bit set is malformed (MQTT-3.8.3-5).
            DecodeError::InvalidSubscriptionOptions(b)
                if b & 0b1100_0000 == 0 && (b & 0b11 == 3 || (b >> 4) & 0b11 == 3) =>
            {
                reason::PROTOCOL_ERROR
            }
            DecodeError::DuplicateProperty(_)
            | DecodeError::InvalidPropertyValue(_)
            | DecodeError::NoTopicFilter
            | DecodeError::ZeroPacketId
            | DecodeError::NotInVersion => reason::PROTOCOL_ERROR,
            _ => reason::MALFORMED_PACKET,
        }
    }
}

/// Why a packet could not be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The output buffer is smaller than [`crate::Packet::encoded_len`].
    #[error("output buffer too small: need {needed} bytes")]
    BufferTooSmall {
        /// Bytes the whole packet needs.
        needed: usize,
    },
    /// The packet's remaining length would exceed 268,435,455 bytes, or a string or
    /// binary field exceeds 65,535 bytes.
    #[error("packet or field too large to encode")]
    TooLarge,
    /// The packet does not exist in the chosen protocol version (AUTH in 3.1.1).
    #[error("packet type not defined in this protocol version")]
    NotInVersion,
}
