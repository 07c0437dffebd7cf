#![allow(clippy::unwrap_used)]
//! Property tests.
//!
//! 1. Every valid packet of every type, in MQTT 3.1, 3.1.1 and 5.0, survives
//!    `decode(encode(p)) == p`; `encoded_len` is what `encode` writes; the frame length
//!    `decode` and `check` report is the byte count; every strict prefix is `Ok(None)`;
//!    bytes after the frame are never read; re-encoding the decoded packet is canonical.
//! 2. `decode` never panics: on arbitrary bytes, on arbitrary bodies behind a valid fixed
//!    header, and on mutations of valid frames. When it returns `Ok(Some((p, n)))`,
//!    `n <= input.len()` and `p` re-encodes and decodes to itself.

mod common;

use common::*;
use mote_codec::{check, decode, topic, DecodeError, Packet, PacketType, Protocol};
use proptest::collection::vec;
use proptest::prelude::*;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Decodes `input` in `proto`; if it yields a packet, checks the frame length and that
/// the packet re-encodes to something that decodes to itself.
fn decode_is_sound(input: &[u8], proto: Protocol) {
    match decode(input, proto, u32::MAX) {
        Ok(Some((p, n))) => {
            assert!(
                n <= input.len(),
                "frame of {n} bytes from {} bytes",
                input.len()
            );
            assert!(n >= 2);
            let h = check(input, u32::MAX).unwrap().unwrap();
            assert_eq!(h.frame_len(), n);
            // A packet only decodes when its whole frame is there, so its frame is
            // exactly the bytes consumed and any prefix needs more bytes.
            assert_eq!(decode(&input[..n - 1], proto, u32::MAX), Ok(None));
            assert_reencode_stable(&p, proto);
        }
        Ok(None) => {
            // Only an incomplete frame is "need more bytes".
            if let Ok(Some(h)) = check(input, u32::MAX) {
                assert!(h.frame_len() > input.len());
            }
        }
        Err(e) => {
            // Errors are specific and map to a reason code a v5 peer understands.
            assert!(e.reason_code() >= 0x80, "{e:?}");
        }
    }
}

/// A frame whose fixed header is well formed: a known type with its required flags
/// (any flags for PUBLISH, and now and then any flags at all), the right remaining length,
/// then arbitrary body bytes.
fn framed_garbage() -> impl Strategy<Value = Vec<u8>> {
    (
        1..=15u8,
        0..16u8,
        prop::bool::weighted(0.1),
        vec(any::<u8>(), 0..48),
    )
        .prop_map(|(ty, any_flags, wild, body)| {
            let flags = match ty {
                3 => any_flags,
                _ if wild => any_flags,
                6 | 8 | 10 => 0b0010,
                _ => 0,
            };
            frame(ty << 4 | flags, &body)
        })
}

/// How to damage a valid frame.
#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Set(usize, u8),
    Insert(usize, u8),
    Remove(usize),
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1..=255u8).prop_map(|(i, m)| Mutation::Flip(i, m)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<usize>().prop_map(Mutation::Remove),
        any::<usize>().prop_map(Mutation::Truncate),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    if bytes.is_empty() {
        return;
    }
    let at = |i: usize, len: usize| i % len;
    match *m {
        Mutation::Flip(i, mask) => {
            let i = at(i, bytes.len());
            bytes[i] ^= mask;
        }
        Mutation::Set(i, b) => {
            let i = at(i, bytes.len());
            bytes[i] = b;
        }
        Mutation::Insert(i, b) => {
            let i = at(i, bytes.len() + 1);
            bytes.insert(i, b);
        }
        Mutation::Remove(i) => {
            let i = at(i, bytes.len());
            bytes.remove(i);
        }
        Mutation::Truncate(i) => {
            let i = at(i, bytes.len());
            bytes.truncate(i);
        }
    }
}

/// The frame's remaining length may have been damaged; rewrite it so the body is read.
fn refit_remaining_length(bytes: &[u8]) -> Option<Vec<u8>> {
    let first = *bytes.first()?;
    let h = check(bytes, u32::MAX).ok()??;
    let body = bytes.get(h.header_len..)?;
    Some(frame(first, body))
}

proptest! {
    #![proptest_config(config(512))]

    /// Every valid packet round-trips with every guarantee of the API.
    #[test]
    fn valid_packets_round_trip((proto, op) in any_packet()) {
        op.with(|p| assert_round_trip(p, proto));
    }

    /// The generated filters and names are valid by the codec's own topic rules, so the
    /// strategies and the codec agree on what "valid" means.
    #[test]
    fn generated_topics_are_valid(name in topic_name(), filter in topic_filter()) {
        prop_assert!(topic::is_valid_name(&name), "{name:?}");
        prop_assert!(topic::is_valid_filter(&filter), "{filter:?}");
        prop_assert!(topic::matches("#", &name) || name.starts_with('$'));
    }

    /// Arbitrary bytes never panic the decoder, in any protocol.
    #[test]
    fn arbitrary_bytes_never_panic(input in vec(any::<u8>(), 0..64)) {
        for proto in [Protocol::V31, Protocol::V311, Protocol::V5] {
            decode_is_sound(&input, proto);
        }
    }

    /// Arbitrary bodies behind a valid fixed header never panic the decoder.
    #[test]
    fn framed_garbage_never_panics(input in framed_garbage()) {
        for proto in [Protocol::V31, Protocol::V311, Protocol::V5] {
            decode_is_sound(&input, proto);
        }
    }

    /// Damaged valid frames never panic the decoder; whatever still decodes is sound.
    #[test]
    fn mutated_frames_never_panic(
        (proto, op) in any_packet(),
        mutations in vec(mutation(), 1..4),
    ) {
        let mut bytes = op.with(|p| encode(p, proto));
        for m in &mutations {
            apply(&mut bytes, m);
        }
        decode_is_sound(&bytes, proto);
        if let Some(refit) = refit_remaining_length(&bytes) {
            decode_is_sound(&refit, proto);
        }
    }

    /// A valid frame followed by anything decodes to the same packet and frame length.
    #[test]
    fn trailing_stream_bytes_are_not_read(
        (proto, op) in any_packet(),
        tail in vec(any::<u8>(), 0..16),
    ) {
        op.with(|p| {
            let mut bytes = encode(p, proto);
            let n = bytes.len();
            bytes.extend_from_slice(&tail);
            let (q, m) = decode(&bytes, proto, u32::MAX).unwrap().unwrap();
            assert_eq!(m, n);
            assert_eq!(&q, p);
        });
    }

    /// `check` refuses a frame over the limit from its fixed header alone, before any of
    /// the body has arrived.
    #[test]
    fn check_refuses_oversized_frames_early(
        remaining in 0..=mote_codec::MAX_VAR_INT,
        max in any::<u32>(),
    ) {
        let mut header = vec![0x30];
        header.extend_from_slice(&var_int(remaining));
        let size = header.len() + remaining as usize;
        let r = check(&header, max);
        if size > max as usize {
            prop_assert_eq!(r, Err(DecodeError::PacketTooLarge { size, max }));
        } else {
            let h = r.unwrap().unwrap();
            prop_assert_eq!(h.frame_len(), size);
            prop_assert_eq!(h.remaining_len, remaining as usize);
            prop_assert_eq!(h.header_len, header.len());
        }
    }
}

proptest! {
    #![proptest_config(config(128))]

    /// Decoding a stream of back-to-back frames, one `decode` at a time, yields every
    /// packet in order.
    #[test]
    fn streams_of_frames_split_correctly(
        (proto, ops) in protocol().prop_flat_map(|p| (Just(p), vec(packet(p), 1..6))),
    ) {
        let mut stream = Vec::new();
        for op in &ops {
            op.with(|p| stream.extend_from_slice(&encode(p, proto)));
        }
        let mut at = 0;
        for op in &ops {
            let (q, n) = decode(&stream[at..], proto, u32::MAX).unwrap().unwrap();
            op.with(|p| assert_eq!(&q, p));
            at += n;
        }
        prop_assert_eq!(at, stream.len());
        prop_assert_eq!(decode(&stream[at..], proto, u32::MAX), Ok(None));
    }
}

/// Every packet type is produced by the strategies (a guard against a strategy that
/// silently stops generating a type).
#[test]
fn strategies_cover_every_packet_type() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    for proto in [Protocol::V31, Protocol::V311, Protocol::V5] {
        let mut runner = TestRunner::deterministic();
        let strategy = packet(proto);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..2000 {
            let op = strategy.new_tree(&mut runner).unwrap().current();
            seen.insert(op.with(|p: &Packet<'_>| p.packet_type() as u8));
        }
        let expected = if proto.is_v5() { 15 } else { 14 };
        assert_eq!(seen.len(), expected, "{proto:?}: {seen:?}");
        assert_eq!(seen.contains(&(PacketType::Auth as u8)), proto.is_v5());
    }
}
