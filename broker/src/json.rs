//! The JSON view of a device's `SensorEvent` (postcard bytes, `docs/sensor-event.md`),
//! and of any other payload: for SSE and the HTTP API, and for MQTT subscribers that
//! opt in with a `$json/FILTER` subscription. Pure: no I/O.
//!
//! - A sensor event becomes `{"device","seq","timestamp_ms","channel","value":{"type","value"}}`;
//!   integers beyond 2^53 (which JavaScript's numbers cannot hold) are strings.
//! - A payload that should be an event and is not valid becomes base64 with a
//!   `decode_error`: the message is never dropped.
//! - Anything else is text when it is UTF-8, base64 otherwise.

use base64::Engine as _;
use serde_json::{json, Map, Value};

/// The MQTT 5 content type of a `SensorEvent` payload.
pub(crate) const EVENT_CONTENT_TYPE: &str = "application/x-mote-event";

/// Largest integer a JSON number carries exactly in JavaScript (2^53 - 1).
const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// Whether a message's payload is a `SensorEvent`: its MQTT 5 content type says so, or
/// its topic matches one of `event_topics` (3.1.1 devices have no content type).
pub(crate) fn is_event(content_type: Option<&str>, topic: &str, event_topics: &[String]) -> bool {
    content_type == Some(EVENT_CONTENT_TYPE)
        || event_topics
            .iter()
            .any(|f| mote_codec::topic::matches(f, topic))
}

/// The payload a `$json/` subscriber receives for a `SensorEvent`: the event as JSON, or
/// `{"decode_error", "payload"}` (base64) when it does not decode.
pub(crate) fn event_view(payload: &[u8]) -> Vec<u8> {
    let v = match SensorEvent::decode(payload) {
        Ok(e) => e.to_json(),
        Err(e) => json!({
            "decode_error": e.to_string(),
            "payload": base64::engine::general_purpose::STANDARD.encode(payload),
        }),
    };
    v.to_string().into_bytes()
}

/// How a payload is rendered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// Events as JSON, UTF-8 as text, the rest base64.
    Auto,
    /// Always base64.
    Base64,
}

/// Why bytes are not a `SensorEvent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum EventError {
    #[error("truncated")]
    Truncated,
    #[error("a varint is too long for its field")]
    Overflow,
    #[error("unknown value tag {0}")]
    UnknownTag(u64),
    #[error("invalid bool byte {0:#04x}")]
    InvalidBool(u8),
    #[error("{0} trailing bytes")]
    Trailing(usize),
}

/// A decoded event's value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum EventValue {
    Bool(bool),
    I32(i32),
    U32(u32),
    F32(f32),
    I64(i64),
}

/// A decoded `SensorEvent`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct SensorEvent {
    pub(crate) device: u32,
    pub(crate) seq: u32,
    pub(crate) timestamp_ms: u64,
    pub(crate) channel: u16,
    pub(crate) value: EventValue,
}

/// Reads postcard's primitives from a byte slice.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn byte(&mut self) -> Result<u8, EventError> {
        let (&b, rest) = self.0.split_first().ok_or(EventError::Truncated)?;
        self.0 = rest;
        Ok(b)
    }

    /// An unsigned LEB128 varint of at most `bits` bits.
    fn varint(&mut self, bits: u32) -> Result<u64, EventError> {
        let mut value: u64 = 0;
        let mut shift = 0u32;
        loop {
            let b = self.byte()?;
            let part = u64::from(b & 0x7f);
            if shift >= bits || (shift > 0 && part >> (bits - shift).min(63) != 0) {
                return Err(EventError::Overflow);
            }
            value |= part << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
            shift += 7;
        }
    }

    fn zigzag(&mut self, bits: u32) -> Result<i64, EventError> {
        let v = self.varint(bits)?;
        Ok((v >> 1) as i64 ^ -((v & 1) as i64))
    }
}

impl SensorEvent {
    /// Decodes exactly one event filling `bytes`.
    pub(crate) fn decode(bytes: &[u8]) -> Result<SensorEvent, EventError> {
        let mut r = Reader(bytes);
        // The widths are checked by `varint`, so the casts below cannot truncate.
        let device = r.varint(32)? as u32;
        let seq = r.varint(32)? as u32;
        let timestamp_ms = r.varint(64)?;
        let channel = r.varint(16)? as u16;
        let value = match r.varint(32)? {
            0 => match r.byte()? {
                0 => EventValue::Bool(false),
                1 => EventValue::Bool(true),
                b => return Err(EventError::InvalidBool(b)),
            },
            1 => EventValue::I32(r.zigzag(32)? as i32),
            2 => EventValue::U32(r.varint(32)? as u32),
            3 => {
                let mut b = [0u8; 4];
                for x in &mut b {
                    *x = r.byte()?;
                }
                EventValue::F32(f32::from_le_bytes(b))
            }
            4 => EventValue::I64(r.zigzag(64)?),
            tag => return Err(EventError::UnknownTag(tag)),
        };
        if !r.0.is_empty() {
            return Err(EventError::Trailing(r.0.len()));
        }
        Ok(SensorEvent {
            device,
            seq,
            timestamp_ms,
            channel,
            value,
        })
    }

    /// The event as JSON.
    pub(crate) fn to_json(self) -> Value {
        let (kind, value) = match self.value {
            EventValue::Bool(b) => ("bool", json!(b)),
            EventValue::I32(v) => ("i32", json!(v)),
            EventValue::U32(v) => ("u32", json!(v)),
            // The shortest decimal that reads back as the same f32 (23.3, not the
            // f64 widening 23.299999237060547); NaN and infinities have no JSON
            // number: as strings.
            EventValue::F32(v) if v.is_finite() => {
                let shortest: f64 = v.to_string().parse().unwrap_or(f64::from(v));
                ("f32", json!(shortest))
            }
            EventValue::F32(v) => ("f32", json!(v.to_string())),
            EventValue::I64(v) => ("i64", signed(v)),
        };
        json!({
            "device": self.device,
            "seq": self.seq,
            "timestamp_ms": unsigned(self.timestamp_ms),
            "channel": self.channel,
            "value": {"type": kind, "value": value},
        })
    }
}

/// A JSON number when JavaScript holds it exactly, else a string.
fn unsigned(v: u64) -> Value {
    if v <= MAX_SAFE_INTEGER {
        json!(v)
    } else {
        json!(v.to_string())
    }
}

fn signed(v: i64) -> Value {
    if v.unsigned_abs() <= MAX_SAFE_INTEGER {
        json!(v)
    } else {
        json!(v.to_string())
    }
}

/// Renders a payload into `out` as `payload_encoding` and `payload` (and `decode_error`
/// when an event did not decode). `is_event`: the message says it is a `SensorEvent`
/// (content type, or an event topic).
pub(crate) fn render_payload(
    payload: &[u8],
    is_event: bool,
    format: Format,
    out: &mut Map<String, Value>,
) {
    let b64 = |p: &[u8]| Value::String(base64::engine::general_purpose::STANDARD.encode(p));
    let (encoding, value) = match format {
        Format::Base64 => ("base64", b64(payload)),
        Format::Auto if is_event => match SensorEvent::decode(payload) {
            Ok(e) => ("json", e.to_json()),
            Err(e) => {
                out.insert("decode_error".into(), json!(e.to_string()));
                ("base64", b64(payload))
            }
        },
        Format::Auto => match std::str::from_utf8(payload) {
            Ok(s) => ("text", json!(s)),
            Err(_) => ("base64", b64(payload)),
        },
    };
    out.insert("payload_encoding".into(), json!(encoding));
    out.insert("payload".into(), value);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Golden cases: postcard bytes (as `mote_client::SensorEvent` encodes them; see the
    /// integration test that checks these against postcard itself) to JSON.
    #[test]
    fn golden_events() {
        let cases: [(&[u8], Value); 7] = [
            (
                // 23.3f32 = 0x41ba6666: shown as 23.3, not as its f64 widening.
                &[0x01, 0x01, 0x01, 0x01, 0x03, 0x66, 0x66, 0xba, 0x41],
                json!({"device":1,"seq":1,"timestamp_ms":1,"channel":1,
                       "value":{"type":"f32","value":23.3}}),
            ),
            (
                &[0x01, 0x05, 0xe8, 0x07, 0x02, 0x03, 0x00, 0x00, 0xac, 0x41],
                json!({"device":1,"seq":5,"timestamp_ms":1000,"channel":2,
                       "value":{"type":"f32","value":21.5}}),
            ),
            (
                &[0x00, 0x00, 0x00, 0x00, 0x00, 0x01],
                json!({"device":0,"seq":0,"timestamp_ms":0,"channel":0,
                       "value":{"type":"bool","value":true}}),
            ),
            (
                &[0x07, 0x01, 0x01, 0x09, 0x01, 0x03],
                json!({"device":7,"seq":1,"timestamp_ms":1,"channel":9,
                       "value":{"type":"i32","value":-2}}),
            ),
            (
                // timestamp 2^53 = 9007199254740992: beyond JavaScript's exact integers.
                &[
                    0x01, 0x01, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x10, 0x01, 0x02, 0xff,
                    0xff, 0xff, 0xff, 0x0f,
                ],
                json!({"device":1,"seq":1,"timestamp_ms":"9007199254740992","channel":1,
                       "value":{"type":"u32","value":4294967295u32}}),
            ),
            (
                // i64::MIN: zigzag all ones.
                &[
                    0x01, 0x01, 0x01, 0x01, 0x04, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                    0xff, 0x01,
                ],
                json!({"device":1,"seq":1,"timestamp_ms":1,"channel":1,
                       "value":{"type":"i64","value":"-9223372036854775808"}}),
            ),
            (
                &[0x01, 0x01, 0x01, 0x01, 0x04, 0x02],
                json!({"device":1,"seq":1,"timestamp_ms":1,"channel":1,
                       "value":{"type":"i64","value":1}}),
            ),
        ];
        for (bytes, want) in cases {
            let got = SensorEvent::decode(bytes).map(SensorEvent::to_json);
            assert_eq!(got, Ok(want), "bytes {bytes:02x?}");
        }
    }

    /// The decoder agrees with the device's encoder (postcard) on every kind of value,
    /// the extremes included.
    #[test]
    fn decodes_what_the_device_encodes() {
        use mote_client::{SensorEvent as Dev, Value as V};
        let values = [
            (V::Bool(false), EventValue::Bool(false)),
            (V::Bool(true), EventValue::Bool(true)),
            (V::I32(i32::MIN), EventValue::I32(i32::MIN)),
            (V::I32(-2), EventValue::I32(-2)),
            (V::U32(u32::MAX), EventValue::U32(u32::MAX)),
            (V::F32(23.3), EventValue::F32(23.3)),
            (V::F32(-0.0), EventValue::F32(-0.0)),
            (V::I64(i64::MIN), EventValue::I64(i64::MIN)),
            (V::I64(i64::MAX), EventValue::I64(i64::MAX)),
        ];
        for (i, (dev, ours)) in values.into_iter().enumerate() {
            for (device, seq, ts, channel) in [
                (0, 0, 0, 0),
                (1, 5, 1000, 2),
                (u32::MAX, u32::MAX, u64::MAX, u16::MAX),
            ] {
                let e = Dev {
                    device,
                    seq,
                    timestamp_ms: ts,
                    channel,
                    value: dev,
                };
                let mut buf = [0u8; Dev::MAX_ENCODED_LEN];
                let bytes = e.encode(&mut buf).unwrap();
                let want = SensorEvent {
                    device,
                    seq,
                    timestamp_ms: ts,
                    channel,
                    value: ours,
                };
                assert_eq!(
                    SensorEvent::decode(bytes),
                    Ok(want),
                    "case {i}: {bytes:02x?}"
                );
            }
        }
        // The golden bytes above are the device's encoding.
        let e = Dev {
            device: 1,
            seq: 5,
            timestamp_ms: 1000,
            channel: 2,
            value: V::F32(21.5),
        };
        let mut buf = [0u8; Dev::MAX_ENCODED_LEN];
        assert_eq!(
            e.encode(&mut buf).unwrap(),
            &[0x01, 0x05, 0xe8, 0x07, 0x02, 0x03, 0x00, 0x00, 0xac, 0x41]
        );
    }

    #[test]
    fn bad_events_are_errors_not_panics() {
        let cases: [(&[u8], EventError); 6] = [
            (&[], EventError::Truncated),
            (&[0x01, 0x01, 0x01, 0x01, 0x03, 0x00], EventError::Truncated),
            (
                &[0x01, 0x01, 0x01, 0x01, 0x05, 0x00],
                EventError::UnknownTag(5),
            ),
            (
                &[0x01, 0x01, 0x01, 0x01, 0x00, 0x02],
                EventError::InvalidBool(2),
            ),
            (
                &[0x01, 0x01, 0x01, 0x01, 0x00, 0x01, 0xaa],
                EventError::Trailing(1),
            ),
            // A channel (u16) of 2^16.
            (
                &[0x01, 0x01, 0x01, 0x80, 0x80, 0x04, 0x00, 0x01],
                EventError::Overflow,
            ),
        ];
        for (bytes, want) in cases {
            assert_eq!(SensorEvent::decode(bytes), Err(want), "bytes {bytes:02x?}");
        }
        // Every prefix and every one-byte change of a valid event: no panic.
        let good = [0x01u8, 0x05, 0xe8, 0x07, 0x02, 0x03, 0x00, 0x00, 0xac, 0x41];
        for n in 0..good.len() {
            let _ = SensorEvent::decode(&good[..n]);
            for b in 0..=255u8 {
                let mut m = good;
                m[n] = b;
                let _ = SensorEvent::decode(&m);
            }
        }
    }

    #[test]
    fn payloads_render_by_kind() {
        let render = |p: &[u8], ev: bool, f: Format| {
            let mut m = Map::new();
            render_payload(p, ev, f, &mut m);
            Value::Object(m)
        };
        assert_eq!(
            render(b"21.5", false, Format::Auto),
            json!({"payload_encoding":"text","payload":"21.5"})
        );
        assert_eq!(
            render(&[0xff, 0x00], false, Format::Auto),
            json!({"payload_encoding":"base64","payload":"/wA="})
        );
        assert_eq!(
            render(&[0x01], true, Format::Auto),
            json!({"payload_encoding":"base64","payload":"AQ==","decode_error":"truncated"})
        );
        assert_eq!(
            render(b"hi", true, Format::Base64),
            json!({"payload_encoding":"base64","payload":"aGk="})
        );
    }
}
