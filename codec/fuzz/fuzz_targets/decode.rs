//! Decodes arbitrary bytes as MQTT 3.1.1 and as MQTT 5, frame after frame.
//!
//! Decoding may fail but never panics. Every packet that decodes must re-encode into a
//! buffer of exactly `encoded_len()` bytes, and decoding those bytes must give an equal
//! packet (packets are compared, not bytes: input may use non-minimal variable byte
//! integers). Every strict prefix of the re-encoded frame is "need more bytes".
#![no_main]

use libfuzzer_sys::fuzz_target;
use mote_codec::{decode, EncodeError, Packet, Protocol};

fuzz_target!(|data: &[u8]| {
    for protocol in [Protocol::V311, Protocol::V5] {
        let mut rest = data;
        while let Ok(Some((packet, used))) = decode(rest, protocol, u32::MAX) {
            assert!(used > 0 && used <= rest.len());
            round_trip(&packet, protocol);
            rest = &rest[used..];
        }
    }
});

fn round_trip(packet: &Packet<'_>, protocol: Protocol) {
    let len = packet.encoded_len(protocol);
    let mut buf = vec![0u8; len];
    let written = packet
        .encode(protocol, &mut buf)
        .unwrap_or_else(|e| panic!("re-encoding {packet:?} failed: {e:?}"));
    assert_eq!(
        written, len,
        "encode wrote other than encoded_len for {packet:?}"
    );

    if len > 0 {
        assert_eq!(
            packet.encode(protocol, &mut buf[..len - 1]),
            Err(EncodeError::BufferTooSmall { needed: len }),
            "encode into a buffer one byte short of {packet:?}"
        );
        packet.encode(protocol, &mut buf).expect("encode again");
    }

    let (back, used) = decode(&buf, protocol, u32::MAX)
        .unwrap_or_else(|e| panic!("re-encoded {packet:?} does not decode: {e:?}\n{buf:02x?}"))
        .unwrap_or_else(|| panic!("re-encoded {packet:?} is incomplete\n{buf:02x?}"));
    assert_eq!(used, len);
    assert_eq!(&back, packet, "round trip changed the packet\n{buf:02x?}");

    for cut in 0..len {
        assert_eq!(
            decode(&buf[..cut], protocol, u32::MAX),
            Ok(None),
            "prefix of {cut} bytes of {buf:02x?}"
        );
    }
}
