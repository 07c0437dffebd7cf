//! Small protocol types shared by every packet.

use crate::DecodeError;

/// The protocol spoken on a connection, fixed by its CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// MQTT 3.1 (`MQIsdp`, level 3): handled exactly as 3.1.1 apart from the CONNECT header.
    V31,
    /// MQTT 3.1.1 (level 4).
    V311,
    /// MQTT 5.0 (level 5).
    V5,
}

impl Protocol {
    /// The protocol level byte of CONNECT.
    pub fn level(self) -> u8 {
        match self {
            Protocol::V31 => 3,
            Protocol::V311 => 4,
            Protocol::V5 => 5,
        }
    }

    /// The protocol name of CONNECT.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::V31 => "MQIsdp",
            _ => "MQTT",
        }
    }

    /// True for MQTT 5.0, the only version with properties and reason codes.
    pub fn is_v5(self) -> bool {
        self == Protocol::V5
    }
}

/// Quality of service of a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum QoS {
    /// At most once.
    #[default]
    AtMostOnce = 0,
    /// At least once.
    AtLeastOnce = 1,
    /// Exactly once.
    ExactlyOnce = 2,
}

impl QoS {
    /// Parses the two-bit QoS value; 3 is malformed.
    pub fn from_u8(v: u8) -> Result<QoS, DecodeError> {
        match v {
            0 => Ok(QoS::AtMostOnce),
            1 => Ok(QoS::AtLeastOnce),
            2 => Ok(QoS::ExactlyOnce),
            _ => Err(DecodeError::InvalidQoS),
        }
    }
}

/// MQTT 5 Retain Handling subscription option.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RetainHandling {
    /// Send retained messages at the time of the subscribe.
    #[default]
    SendAtSubscribe = 0,
    /// Send retained messages only if the subscription did not exist.
    SendIfNew = 1,
    /// Never send retained messages on subscribe.
    DoNotSend = 2,
}

/// The options byte of one SUBSCRIBE entry (3.1.1 uses only the QoS).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SubOptions {
    /// Maximum QoS the subscriber accepts.
    pub qos: QoS,
    /// v5: don't forward the client's own publications.
    pub no_local: bool,
    /// v5: keep the RETAIN flag as published when forwarding.
    pub retain_as_published: bool,
    /// v5: when to send retained messages on subscribe.
    pub retain_handling: RetainHandling,
}

impl SubOptions {
    /// Options with only a QoS, as 3.1.1 has them.
    pub fn qos(qos: QoS) -> SubOptions {
        SubOptions {
            qos,
            ..SubOptions::default()
        }
    }

    /// Parses the options byte, rejecting reserved bits (all of bits 2-7 in 3.1.1).
    pub fn from_byte(b: u8, protocol: Protocol) -> Result<SubOptions, DecodeError> {
        let reserved = if protocol.is_v5() {
            0b1100_0000
        } else {
            0b1111_1100
        };
        if b & reserved != 0 {
            return Err(DecodeError::InvalidSubscriptionOptions(b));
        }
        let qos = match QoS::from_u8(b & 0b11) {
            Ok(qos) => qos,
            // MQTT 5 §3.8.3.1: a Protocol Error here, unlike a PUBLISH's QoS 3 (malformed).
            Err(_) if protocol.is_v5() => return Err(DecodeError::InvalidSubscriptionOptions(b)),
            Err(e) => return Err(e),
        };
        let retain_handling = match (b >> 4) & 0b11 {
            0 => RetainHandling::SendAtSubscribe,
            1 => RetainHandling::SendIfNew,
            2 => RetainHandling::DoNotSend,
            _ => return Err(DecodeError::InvalidSubscriptionOptions(b)),
        };
        Ok(SubOptions {
            qos,
            no_local: b & 0b0100 != 0,
            retain_as_published: b & 0b1000 != 0,
            retain_handling,
        })
    }

    /// The options byte (v5 bits are dropped for 3.1.1).
    pub fn to_byte(self, protocol: Protocol) -> u8 {
        let mut b = self.qos as u8;
        if protocol.is_v5() {
            b |= (self.no_local as u8) << 2;
            b |= (self.retain_as_published as u8) << 3;
            b |= (self.retain_handling as u8) << 4;
        }
        b
    }
}

/// MQTT 5 reason codes (and the 3.1.1 CONNACK return codes that share the byte).
pub mod reason {
    /// Success / normal disconnection / granted QoS 0.
    pub const SUCCESS: u8 = 0x00;
    /// Normal disconnection (DISCONNECT).
    pub const NORMAL_DISCONNECTION: u8 = 0x00;
    /// Granted QoS 1 (SUBACK).
    pub const GRANTED_QOS_1: u8 = 0x01;
    /// Granted QoS 2 (SUBACK).
    pub const GRANTED_QOS_2: u8 = 0x02;
    /// Disconnect with Will Message (DISCONNECT).
    pub const DISCONNECT_WITH_WILL: u8 = 0x04;
    /// No matching subscribers (PUBACK, PUBREC).
    pub const NO_MATCHING_SUBSCRIBERS: u8 = 0x10;
    /// No subscription existed (UNSUBACK).
    pub const NO_SUBSCRIPTION_EXISTED: u8 = 0x11;
    /// Continue authentication (AUTH).
    pub const CONTINUE_AUTHENTICATION: u8 = 0x18;
    /// Re-authenticate (AUTH).
    pub const RE_AUTHENTICATE: u8 = 0x19;
    /// Unspecified error.
    pub const UNSPECIFIED_ERROR: u8 = 0x80;
    /// Malformed Packet.
    pub const MALFORMED_PACKET: u8 = 0x81;
    /// Protocol Error.
    pub const PROTOCOL_ERROR: u8 = 0x82;
    /// Implementation specific error.
    pub const IMPLEMENTATION_SPECIFIC_ERROR: u8 = 0x83;
    /// Unsupported Protocol Version (CONNACK).
    pub const UNSUPPORTED_PROTOCOL_VERSION: u8 = 0x84;
    /// Client Identifier not valid (CONNACK).
    pub const CLIENT_IDENTIFIER_NOT_VALID: u8 = 0x85;
    /// Bad User Name or Password (CONNACK).
    pub const BAD_USER_NAME_OR_PASSWORD: u8 = 0x86;
    /// Not authorized.
    pub const NOT_AUTHORIZED: u8 = 0x87;
    /// Server unavailable (CONNACK).
    pub const SERVER_UNAVAILABLE: u8 = 0x88;
    /// Server busy.
    pub const SERVER_BUSY: u8 = 0x89;
    /// Banned (CONNACK).
    pub const BANNED: u8 = 0x8A;
    /// Server shutting down (DISCONNECT).
    pub const SERVER_SHUTTING_DOWN: u8 = 0x8B;
    /// Bad authentication method.
    pub const BAD_AUTHENTICATION_METHOD: u8 = 0x8C;
    /// Keep Alive timeout (DISCONNECT).
    pub const KEEP_ALIVE_TIMEOUT: u8 = 0x8D;
    /// Session taken over (DISCONNECT).
    pub const SESSION_TAKEN_OVER: u8 = 0x8E;
    /// Topic Filter invalid.
    pub const TOPIC_FILTER_INVALID: u8 = 0x8F;
    /// Topic Name invalid.
    pub const TOPIC_NAME_INVALID: u8 = 0x90;
    /// Packet Identifier in use.
    pub const PACKET_IDENTIFIER_IN_USE: u8 = 0x91;
    /// Packet Identifier not found.
    pub const PACKET_IDENTIFIER_NOT_FOUND: u8 = 0x92;
    /// Receive Maximum exceeded (DISCONNECT).
    pub const RECEIVE_MAXIMUM_EXCEEDED: u8 = 0x93;
    /// Topic Alias invalid (DISCONNECT).
    pub const TOPIC_ALIAS_INVALID: u8 = 0x94;
    /// Packet too large.
    pub const PACKET_TOO_LARGE: u8 = 0x95;
    /// Message rate too high (DISCONNECT).
    pub const MESSAGE_RATE_TOO_HIGH: u8 = 0x96;
    /// Quota exceeded.
    pub const QUOTA_EXCEEDED: u8 = 0x97;
    /// Administrative action (DISCONNECT).
    pub const ADMINISTRATIVE_ACTION: u8 = 0x98;
    /// Payload format invalid.
    pub const PAYLOAD_FORMAT_INVALID: u8 = 0x99;
    /// Retain not supported.
    pub const RETAIN_NOT_SUPPORTED: u8 = 0x9A;
    /// QoS not supported.
    pub const QOS_NOT_SUPPORTED: u8 = 0x9B;
    /// Use another server.
    pub const USE_ANOTHER_SERVER: u8 = 0x9C;
    /// Server moved.
    pub const SERVER_MOVED: u8 = 0x9D;
    /// Shared Subscriptions not supported.
    pub const SHARED_SUBSCRIPTIONS_NOT_SUPPORTED: u8 = 0x9E;
    /// Connection rate exceeded.
    pub const CONNECTION_RATE_EXCEEDED: u8 = 0x9F;
    /// Maximum connect time (DISCONNECT).
    pub const MAXIMUM_CONNECT_TIME: u8 = 0xA0;
    /// Subscription Identifiers not supported.
    pub const SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED: u8 = 0xA1;
    /// Wildcard Subscriptions not supported.
    pub const WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED: u8 = 0xA2;

    /// MQTT 3.1.1 CONNACK return codes.
    pub mod v3 {
        /// Connection accepted.
        pub const ACCEPTED: u8 = 0;
        /// Unacceptable protocol version.
        pub const UNACCEPTABLE_PROTOCOL_VERSION: u8 = 1;
        /// Identifier rejected.
        pub const IDENTIFIER_REJECTED: u8 = 2;
        /// Server unavailable.
        pub const SERVER_UNAVAILABLE: u8 = 3;
        /// Bad user name or password.
        pub const BAD_USER_NAME_OR_PASSWORD: u8 = 4;
        /// Not authorized.
        pub const NOT_AUTHORIZED: u8 = 5;
        /// SUBACK failure.
        pub const SUBACK_FAILURE: u8 = 0x80;
    }

    /// Reason codes valid in a v5 CONNACK.
    pub(crate) const CONNACK: &[u8] = &[
        0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8C, 0x90, 0x95,
        0x97, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F,
    ];
    /// Reason codes valid in PUBACK and PUBREC.
    pub(crate) const PUBACK: &[u8] = &[0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99];
    /// Reason codes valid in PUBREL and PUBCOMP.
    pub(crate) const PUBREL: &[u8] = &[0x00, 0x92];
    /// Reason codes valid in a v5 SUBACK.
    pub(crate) const SUBACK: &[u8] = &[
        0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2,
    ];
    /// Return codes valid in a 3.1.1 SUBACK.
    pub(crate) const SUBACK_V3: &[u8] = &[0x00, 0x01, 0x02, 0x80];
    /// Reason codes valid in a v5 UNSUBACK.
    pub(crate) const UNSUBACK: &[u8] = &[0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91];
    /// Reason codes valid in DISCONNECT.
    pub(crate) const DISCONNECT: &[u8] = &[
        0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x90, 0x93, 0x94,
        0x95, 0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1, 0xA2,
    ];
    /// Reason codes valid in AUTH.
    pub(crate) const AUTH: &[u8] = &[0x00, 0x18, 0x19];
}
