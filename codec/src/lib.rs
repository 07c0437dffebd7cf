//! `mote-codec`: MQTT 3.1.1 and 5.0 packets for brokers and microcontrollers alike.
//!
//! - `#![no_std]`, no `alloc`, no `unsafe`.
//! - Decoding borrows: a [`Packet`] holds `&str` topics and `&[u8]` payloads pointing into
//!   the input. [`decode`] tells "need more bytes" (`Ok(None)`) from "malformed" (`Err`),
//!   reads nothing past the frame, and reports the frame's length. [`check`] reads only
//!   the fixed header, so a receiver can refuse an oversized frame before buffering it.
//! - Encoding writes into a caller's `&mut [u8]` ([`Packet::encode`]) or any [`Sink`]
//!   (a `bytes::BytesMut` with the `bytes` feature); [`Packet::encoded_len`] is exact.
//! - Validation is strict and every failure is a distinct [`DecodeError`] that maps to
//!   the MQTT 5 reason code to send ([`DecodeError::reason_code`]).
//! - MQTT 3.1 (`MQIsdp`, level 3) CONNECTs decode as [`Protocol::V31`] and behave as 3.1.1.
//!
//! Features: `server` (default) decodes the packets only a server receives (CONNECT,
//! SUBSCRIBE, UNSUBSCRIBE); a client leaves it out (`default-features = false`) and its
//! decoder refuses those with [`DecodeError::InvalidPacketType`]. `bytes` implements
//! [`Sink`] for `bytes::BytesMut`. Encoding is the same with or without them.
//!
//! Size: the code is written for small flash on microcontrollers: one encoder whatever
//! the [`Sink`] (a trait object inside), properties encoded and decoded through tables
//! rather than a branch per field, packets decoded in place. `benches/size-clients`
//! measures it inside a Cortex-M firmware.
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod error;
mod packet;
pub mod properties;
pub mod topic;
mod types;
mod wire;

pub use error::{DecodeError, EncodeError};
pub use packet::{
    check, decode, decode_body, Ack, ConnAck, Connect, Disconnect, FrameHeader, List, ListItem,
    ListIter, Packet, PacketType, Publish, SubAck, Subscribe, SubscribeFilter, UnsubAck,
    Unsubscribe, Will,
};
pub use properties::{PropList, PropValues, Properties, UserProperty};
pub use types::{reason, Protocol, QoS, RetainHandling, SubOptions};
pub use wire::{Sink, SliceSink, MAX_VAR_INT};
