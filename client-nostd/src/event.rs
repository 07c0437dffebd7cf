//! `SensorEvent`: the few bytes a device publishes, and their schema.
//!
//! Encoded with `postcard` (serde, no_std, no alloc). The byte layout is fixed by the
//! field order and the enum tag order below and documented in `docs/sensor-event.md`,
//! so a backend in any language can decode it; never reorder fields or variants, only
//! append new variants.

use serde::{Deserialize, Serialize};

use crate::Error;

/// MQTT 5 content type of a postcard-encoded [`SensorEvent`].
pub const CONTENT_TYPE: &str = "application/x-mote-event";

/// One reading of one sensor channel.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SensorEvent {
    /// Device identifier (varint).
    pub device: u32,
    /// Sequence number, counting up per device (varint).
    pub seq: u32,
    /// Milliseconds since the Unix epoch, or since boot on devices without a real-time
    /// clock (varint).
    pub timestamp_ms: u64,
    /// Sensor channel on the device (varint).
    pub channel: u16,
    /// The reading.
    pub value: Value,
}

/// A reading. The tag (variant index, a varint) comes first, then the value.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Value {
    /// Tag 0: one byte, 0 or 1.
    Bool(bool),
    /// Tag 1: zigzag varint.
    I32(i32),
    /// Tag 2: varint.
    U32(u32),
    /// Tag 3: 4 bytes, IEEE 754 binary32, little-endian.
    F32(f32),
    /// Tag 4: zigzag varint.
    I64(i64),
}

impl SensorEvent {
    /// The largest encoding: 5 (device) + 5 (seq) + 10 (timestamp) + 3 (channel) +
    /// 1 (tag) + 10 (an `I64`).
    pub const MAX_ENCODED_LEN: usize = 34;

    /// Encodes into `buf`, returning the bytes used.
    ///
    /// # Errors
    /// [`Error::Event`] when `buf` is too small ([`SensorEvent::MAX_ENCODED_LEN`] always
    /// suffices).
    pub fn encode<'a>(&self, buf: &'a mut [u8]) -> Result<&'a mut [u8], Error> {
        postcard::to_slice(self, buf).map_err(|_| Error::Event)
    }

    /// Decodes an event from exactly `bytes`.
    ///
    /// # Errors
    /// [`Error::Event`] when the bytes are not one event.
    pub fn decode(bytes: &[u8]) -> Result<SensorEvent, Error> {
        match postcard::take_from_bytes(bytes) {
            Ok((event, [])) => Ok(event),
            _ => Err(Error::Event),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The worked example of `docs/sensor-event.md`, byte for byte.
    #[test]
    fn worked_example_matches_the_doc() {
        let ev = SensorEvent {
            device: 300,
            seq: 1,
            timestamp_ms: 1_700_000_000_000,
            channel: 2,
            value: Value::F32(21.5),
        };
        let mut buf = [0u8; SensorEvent::MAX_ENCODED_LEN];
        let bytes = ev.encode(&mut buf).unwrap();
        let expected = [
            0xAC, 0x02, // device 300
            0x01, // seq 1
            0x80, 0xD0, 0x95, 0xFF, 0xBC, 0x31, // timestamp 1_700_000_000_000
            0x02, // channel 2
            0x03, // tag F32
            0x00, 0x00, 0xAC, 0x41, // 21.5f32 little-endian
        ];
        assert_eq!(bytes, &expected[..]);
        assert_eq!(SensorEvent::decode(&expected).unwrap(), ev);
    }

    #[test]
    fn every_value_kind_round_trips_and_fits_the_maximum() {
        for value in [
            Value::Bool(true),
            Value::I32(-1),
            Value::U32(u32::MAX),
            Value::F32(-0.5),
            Value::I64(i64::MIN),
        ] {
            let ev = SensorEvent {
                device: u32::MAX,
                seq: u32::MAX,
                timestamp_ms: u64::MAX,
                channel: u16::MAX,
                value,
            };
            let mut buf = [0u8; SensorEvent::MAX_ENCODED_LEN];
            let n = ev.encode(&mut buf).unwrap().len();
            assert!(n <= SensorEvent::MAX_ENCODED_LEN);
            assert_eq!(SensorEvent::decode(&buf[..n]).unwrap(), ev);
        }
        let mut small = [0u8; 3];
        let ev = SensorEvent {
            device: 1,
            seq: 1,
            timestamp_ms: 1,
            channel: 1,
            value: Value::Bool(false),
        };
        assert_eq!(ev.encode(&mut small), Err(Error::Event));
        assert_eq!(SensorEvent::decode(&[0x01, 0x01]), Err(Error::Event));
        // Trailing bytes are not one event.
        let mut buf = [0u8; SensorEvent::MAX_ENCODED_LEN];
        let n = ev.encode(&mut buf).unwrap().len();
        assert_eq!(SensorEvent::decode(&buf[..n + 1]), Err(Error::Event));
    }

    #[test]
    fn value_tags_and_zigzag() {
        let base = SensorEvent {
            device: 0,
            seq: 0,
            timestamp_ms: 0,
            channel: 0,
            value: Value::Bool(true),
        };
        let cases: [(Value, &[u8]); 5] = [
            (Value::Bool(true), &[0x00, 0x01]),
            (Value::I32(-2), &[0x01, 0x03]),
            (Value::U32(128), &[0x02, 0x80, 0x01]),
            (Value::F32(1.0), &[0x03, 0x00, 0x00, 0x80, 0x3F]),
            (Value::I64(64), &[0x04, 0x80, 0x01]),
        ];
        for (value, tail) in cases {
            let mut buf = [0u8; SensorEvent::MAX_ENCODED_LEN];
            let bytes = SensorEvent { value, ..base }.encode(&mut buf).unwrap();
            assert_eq!(&bytes[..4], &[0, 0, 0, 0]);
            assert_eq!(&bytes[4..], tail, "{value:?}");
        }
    }
}
