//! `mote-codec`: MQTT 3.1.1 and 5.0 packets for brokers and microcontrollers alike.
//!
//! - `#![no_std]`, no `alloc`, no `unsafe`.
//! - Decoding borrows: a [`Packet`] holds `&str` topics and `&[u8]` payloads pointing into
//!   the input. [`decode`] tells "need more bytes" (`Ok(None)`) from "malformed" (`Err`),
//!   reads nothing past the frame, and reports the frame's length. [`check`] reads only
//!   the fixed header, so a receiver can refuse an oversized frame before buffering it.
//! - Packets are small (`size_of::<Packet>()` is 128 bytes on x86_64) and `Copy`: MQTT 5
//!   properties are a [`Properties`], either the validated property block of a decoded
//!   packet, read again on demand by its accessors (`properties.topic_alias()`), or a
//!   caller's [`PropValues`] (one field per property) lent to encode:
//!   `Properties::Values(&values)`. [`Properties::default`] is "no property".
//! - Encoding writes into a caller's `&mut [u8]` ([`Packet::encode`]) or any [`Sink`]
//!   (a `bytes::BytesMut` with the `bytes` feature, written in place);
//!   [`Packet::encoded_len`] is exact. Lengths are computed once per packet.
//! - Validation is strict and every failure is a distinct [`DecodeError`] that maps to
//!   the MQTT 5 reason code to send ([`DecodeError::reason_code`]).
//! - MQTT 3.1 (`MQIsdp`, level 3) CONNECTs decode as [`Protocol::V31`] and behave as 3.1.1.
//!
//! Features: `server` (default) decodes the packets only a server receives (CONNECT,
//! SUBSCRIBE, UNSUBSCRIBE); a client leaves it out (`default-features = false`) and its
//! decoder refuses those with [`DecodeError::InvalidPacketType`]. Where speed and code
//! size pull apart, `server` also picks speed (writer primitives inlined, property
//! lengths added field by field, property accessors reading fields directly) and device
//! builds pick size. `bytes` implements [`Sink`] for `bytes::BytesMut`. What is encoded
//! and decoded is the same with or without them.
//!
//! Size: the code is written for small flash on microcontrollers: one encoder whatever
//! the [`Sink`] (a concrete writer into a slice or a small stack buffer), properties
//! encoded through a table rather than a branch per field, packets decoded in place.
//! `benches/size-clients` measures it inside a Cortex-M firmware; `benches/codec` times
//! it against `mqttbytes`.
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
pub use wire::{var_int_bytes, Sink, SliceSink, MAX_VAR_INT};
