//! Errors of the client API and the reasons a connection ends. Both are small `Copy`
//! values: they sit on hot paths of a microcontroller.

use mote_codec::EncodeError;

/// Why a request to the client failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Every in-flight slot is taken; wait for acknowledgements (the async [`crate::Client`]
    /// methods wait by themselves).
    #[error("all in-flight slots are in use")]
    Full,
    /// A QoS 0 publish needs a live connection: it is never stored.
    #[error("not connected")]
    NotConnected,
    /// A buffer cannot hold the packet: an in-flight slot (at publish time), the transmit
    /// buffer, or the receive buffer. `needed` is the size that would do.
    #[error("buffer too small: need {needed} bytes")]
    BufferTooSmall {
        /// Bytes the packet needs.
        needed: usize,
    },
    /// The packet is larger than the broker's Maximum Packet Size (MQTT 5 CONNACK).
    #[error("packet exceeds the broker's maximum packet size")]
    PacketTooLarge,
    /// The broker's Maximum QoS (MQTT 5 CONNACK) is below the requested QoS.
    #[error("QoS not supported by the broker")]
    QosNotSupported,
    /// A topic name that is empty or holds a wildcard, or a filter list that is empty.
    #[error("invalid topic")]
    InvalidTopic,
    /// The codec refused the packet (a field over MQTT's limits).
    #[error("encode: {0}")]
    Encode(EncodeError),
    /// A [`crate::SensorEvent`] could not be encoded or decoded.
    #[error("sensor event encoding")]
    Event,
    /// The client was shut down with `disconnect`.
    #[error("client shut down")]
    ShutDown,
}

/// Why a connection ended (reported as [`crate::Event::Disconnected`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// The transport failed or reached end of stream.
    Transport,
    /// No CONNACK, or no PINGRESP, within the configured timeout: a dead connection.
    Timeout,
    /// The broker refused the CONNECT with this return (3.1.1) or reason (5.0) code.
    Refused(u8),
    /// The broker sent DISCONNECT with this reason code (0 in 3.1.1).
    Server(u8),
    /// The broker sent something malformed or out of place (or a packet larger than
    /// the receive buffer).
    Protocol,
    /// The application asked to disconnect.
    Local,
}
