//! A seeded, deterministic fuzz of the core: 3 to 6 simulated clients (MQTT 3.1.1 and
//! 5.0) drive one [`Core`] with random operations for a bounded number of steps, and the
//! invariants of the driver, `crate::fuzzing` (`broker/src/fuzzing.rs`, shared with the
//! cargo-fuzz target `core` in `broker/fuzz/`), are checked after every step.
//!
//! The bugs it found, and the ones the cargo-fuzz target found, have a minimal
//! deterministic test each at the end of this file.
//!
//! Knobs: `MOTE_FUZZ_CASES` (cases), `MOTE_FUZZ_STEPS` (steps per case), `MOTE_FUZZ_SEED`
//! (run that one case, printing every operation), `MOTE_FUZZ_RAW=1` (with raw frames,
//! as the cargo-fuzz target has them). A failing case prints its seed and its last
//! operations.

use super::*;
use crate::fuzzing::{case_seed, run_seeded, Stats};

/// The work queue of the driver's alphabet.
const QUEUE: &str = "$queue/q1";

/// Cases and steps per case of a default run (a few seconds in a debug build).
const DEFAULT_CASES: u64 = 1000;
const DEFAULT_STEPS: usize = 250;

/// Cases of the default run with raw frames (their checks are fewer once a raw frame
/// reached the core).
const RAW_CASES: u64 = 200;

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => v.parse().ok(),
    }
}

/// Runs the default cases (or the knobs' ones), raw frames among the operations when
/// `raw`.
fn run(raw: bool, default_cases: u64) {
    let steps = env_u64("MOTE_FUZZ_STEPS").map_or(DEFAULT_STEPS, |s| s as usize);
    let raw = raw || env_u64("MOTE_FUZZ_RAW") == Some(1);
    if let Some(seed) = env_u64("MOTE_FUZZ_SEED") {
        let stats = run_seeded(seed, steps, raw, true);
        eprintln!("fuzz: {stats:?}");
        return;
    }
    let cases = env_u64("MOTE_FUZZ_CASES").unwrap_or(default_cases);
    let started = std::time::Instant::now();
    let mut stats = Stats::default();
    for case in 0..cases {
        stats.add(run_seeded(case_seed(case), steps, raw, false));
    }
    eprintln!(
        "fuzz: {cases} cases x {steps} steps (raw frames {raw}) in {:?}: {stats:?}",
        started.elapsed()
    );
}

#[test]
fn fuzz_random_operations_keep_the_invariants() {
    run(false, DEFAULT_CASES);
}

#[test]
fn fuzz_with_raw_frames_keeps_the_certain_invariants() {
    run(true, RAW_CASES);
}

// ---------------------------------------------------------------------------------------
// Bugs the fuzz found (fixed in 1c7267d), each as a minimal deterministic case
// ---------------------------------------------------------------------------------------

#[test]
fn queue_redelivery_to_a_qos0_consumer_has_dup_0() {
    // MQTT-3.3.1-2 (3.1.1 and 5.0): the DUP flag MUST be 0 for all QoS 0 messages; the
    // codec refuses such a PUBLISH as malformed, so a client built on it disconnects.
    // Found by `fuzz_random_operations_keep_the_invariants`.
    let now = Instant::now();
    let mut core = core();
    let mut first = connect(&mut core, Protocol::V5, "first", true, None, now);
    subscribe(
        &mut core,
        &mut first,
        &[(QUEUE, q(QoS::AtLeastOnce))],
        None,
        now,
    );
    let mut p = connect(&mut core, Protocol::V5, "producer", true, None, now);
    publish(&mut core, &mut p, QUEUE, b"job", QoS::AtLeastOnce, 1, now);
    assert_eq!(
        received(&mut core, &mut first, now).len(),
        1,
        "held, not acknowledged"
    );
    // The consumer goes: its job goes back to the queue, one attempt more.
    let mut fx = Effects::default();
    core.disconnected(&first.id, first.conn, End::Abnormal, now, &mut fx);
    let mut second = connect(&mut core, Protocol::V5, "second", true, None, now);
    subscribe(
        &mut core,
        &mut second,
        &[(QUEUE, q(QoS::AtMostOnce))],
        None,
        now,
    );
    let _ = core.drain(&second.id, second.conn, now, &mut second.out);
    let bytes = second.out.split().to_vec();
    assert_eq!(bytes[0] >> 4, 3, "a PUBLISH");
    assert_eq!(bytes[0] & 0b0110, 0, "QoS 0");
    assert_eq!(bytes[0] & 0b1000, 0, "DUP must be 0 on a QoS 0 PUBLISH");
    assert!(mote_codec::decode(&bytes, Protocol::V5, u32::MAX).is_ok());
}

#[test]
fn a_will_to_a_work_queue_is_enqueued() {
    // docs/queues.md: a PUBLISH to `$queue/NAME` enqueues; a will is published as if its
    // client had published it (MQTT-3.1.2-8 / v5 §3.1.3.2). `publish_will` used to route
    // it through the trie, where no `$queue/...` consumer is: the will was dropped
    // silently. Seen while writing the fuzz (its wills use `$queue/q1` too).
    let now = Instant::now();
    let mut core = core();
    let mut worker = connect(&mut core, Protocol::V5, "worker", true, None, now);
    subscribe(
        &mut core,
        &mut worker,
        &[(QUEUE, q(QoS::AtLeastOnce))],
        None,
        now,
    );
    let mut c = connect_packet(Protocol::V5, "dev", true, Properties::default());
    c.will = Some(Will {
        topic: QUEUE,
        payload: b"gone",
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Properties::default(),
    });
    let dev = connect_with(&mut core, &c, now).0.unwrap();
    let mut fx = Effects::default();
    core.disconnected(&dev.id, dev.conn, End::Abnormal, now, &mut fx);
    let got = received(&mut core, &mut worker, now);
    assert_eq!(got.len(), 1, "the will reaches the queue's consumer");
    assert_eq!(got[0].1, b"gone");
}

#[test]
fn a_rerouted_shared_delivery_takes_the_new_members_subscription() {
    // MQTT 5 §3.3.4 / MQTT-3.3.4-3: the Subscription Identifiers sent are those of the
    // receiving client's matching subscriptions; MQTT-3.8.4-8 (3.1.1: 3.8.4-6): the
    // delivery QoS is at most the QoS granted to that subscription. `reroute_shared`
    // used to hand the first member's `Delivery` (its QoS, RETAIN and subscription ids)
    // to the next member unchanged. Found by `fuzz_random_operations_keep_the_invariants`.
    let now = Instant::now();
    let mut core = core();
    let mut a = connect(&mut core, Protocol::V5, "a", false, Some(60), now);
    let mut b = connect(&mut core, Protocol::V5, "b", true, None, now);
    let group = "$share/g/t";
    subscribe(
        &mut core,
        &mut a,
        &[(group, q(QoS::ExactlyOnce))],
        Some(7),
        now,
    );
    subscribe(&mut core, &mut b, &[(group, q(QoS::AtMostOnce))], None, now);
    let mut p = connect(&mut core, Protocol::V5, "p", true, None, now);
    // Round robin over the sorted members: the first message goes to `a`.
    publish(&mut core, &mut p, "t", b"job", QoS::ExactlyOnce, 1, now);
    // `a` leaves before it drained: its queued shared delivery goes to `b`.
    let mut fx = Effects::default();
    core.disconnected(&a.id, a.conn, End::Abnormal, now, &mut fx);
    let got = received(&mut core, &mut b, now);
    assert_eq!(got.len(), 1, "b takes a's job");
    assert_eq!(got[0].2, QoS::AtMostOnce, "b's granted QoS");
    assert!(got[0].6.is_empty(), "b has no Subscription Identifier");
}

// ---------------------------------------------------------------------------------------
// Bugs found with raw frames (the seeded run above and the cargo-fuzz target `core`)
// ---------------------------------------------------------------------------------------

#[test]
fn a_puback_leaves_its_reason_string_out_beyond_the_clients_maximum_packet_size() {
    // MQTT-3.4.2-2 (PUBACK), MQTT-3.5.2-2 (PUBREC): the Reason String MUST NOT be sent if
    // it would make the packet larger than the receiver's Maximum Packet Size. A refused
    // `$admin/queue/...` declaration used to be answered with its reason string whatever
    // the size: a 208-byte PUBACK to a client that allows 128. Found by
    // `fuzz_with_raw_frames_keeps_the_certain_invariants`.
    let now = Instant::now();
    let mut core = core();
    for (max, with_reason) in [(Some(128), false), (None, true)] {
        let props = PropValues {
            maximum_packet_size: max,
            ..PropValues::default()
        };
        let c = connect_packet(Protocol::V5, "admin", true, Properties::Values(&props));
        let mut a = connect_with(&mut core, &c, now).0.unwrap();
        for qos in [QoS::AtLeastOnce, QoS::ExactlyOnce] {
            let p = Packet::Publish(Publish {
                dup: false,
                qos,
                retain: false,
                topic: "$admin/queue/q1",
                packet_id: 7,
                properties: Properties::default(),
                payload: br#"{"nope": 1}"#,
            });
            send(&mut core, &mut a, &p, now).unwrap();
            let bytes = a.out.split().to_vec();
            let (ack, n) = mote_codec::decode(&bytes, Protocol::V5, u32::MAX)
                .unwrap()
                .unwrap();
            assert_eq!(n, bytes.len(), "one acknowledgement");
            let (Packet::PubAck(ack) | Packet::PubRec(ack)) = ack else {
                panic!("{ack:?}")
            };
            assert_eq!(ack.reason, 0x99, "not the JSON of a declaration");
            assert_eq!(ack.properties.reason_string().is_some(), with_reason);
            assert!(n <= max.unwrap_or(u32::MAX) as usize, "{n} bytes");
        }
    }
}
