//! Compaction under load, end to end: the broker rewrites its log as a snapshot while
//! publishers and an acknowledging subscriber keep it busy (the snapshot is written away
//! from the core's lock, and records appended meanwhile must survive it), then dies by
//! SIGKILL; after a restart an offline persistent subscriber receives every message whose
//! PUBACK the publisher saw, in order.
//!
//! Raw sockets only: nothing from outside the Rust build is needed.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{connack, connect_with, expiry_props, Raw, Recv};
use mote_codec::{Connect, Packet, Properties, Protocol, Publish, QoS};
use mote_tests::Broker;

/// Small segments and a small compaction threshold: the log compacts many times.
const CONFIG: &str = "[storage]\nsegment_bytes = 65536\ncompact_min_bytes = 65536\n[mqtt]\nmax_queued_messages = 100000\n";

/// Messages published; one in `KEEP_EVERY` goes to the offline subscriber.
const MESSAGES: u32 = 20_000;
const KEEP_EVERY: u32 = 10;

fn persistent(protocol: Protocol, id: &str, clean: bool) -> Connect<'_> {
    Connect {
        protocol,
        clean_start: clean,
        keep_alive: 60,
        properties: Properties::Values(expiry_props(3600)),
        client_id: id,
        will: None,
        username: None,
        password: None,
    }
}

/// Acknowledges every QoS 1 PUBLISH until `stop`.
fn acknowledge_until(mut raw: Raw, stop: Arc<AtomicBool>) -> u64 {
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        match raw.recv(Duration::from_millis(100)) {
            Recv::Frame(f) if f.kind() == 3 => {
                let m = f.publish();
                raw.ack(&m);
                n += 1;
            }
            Recv::Frame(_) | Recv::Timeout => {}
            Recv::Closed => break,
        }
    }
    n
}

/// Publishes `MESSAGES` QoS 1 messages with up to 100 in flight; returns the payload
/// numbers of the kept ones whose PUBACK arrived.
fn publish_all(raw: &mut Raw) -> Vec<u32> {
    let payload_pad = [b'x'; 180];
    let mut in_flight = std::collections::HashMap::new();
    let mut acked = Vec::new();
    let mut next = 0u32;
    while next < MESSAGES || !in_flight.is_empty() {
        while next < MESSAGES && in_flight.len() < 100 {
            let id = (next % 60_000) as u16 + 1;
            let keep = next % KEEP_EVERY == 0;
            let topic = if keep { "c/keep/x" } else { "c/drop/x" };
            let mut payload = format!("{next:08}").into_bytes();
            payload.extend_from_slice(&payload_pad);
            raw.send(&Packet::Publish(Publish {
                dup: false,
                qos: QoS::AtLeastOnce,
                retain: false,
                topic,
                packet_id: id,
                properties: Properties::default(),
                payload: &payload,
            }));
            in_flight.insert(id, (next, keep));
            next += 1;
        }
        match raw.recv(Duration::from_secs(10)) {
            Recv::Frame(f) if f.kind() == 4 => {
                let Packet::PubAck(a) = f.packet() else {
                    unreachable!()
                };
                let (n, keep) = in_flight.remove(&a.packet_id).unwrap();
                if keep {
                    acked.push(n);
                }
            }
            Recv::Frame(f) => panic!("publisher got {}", f.describe()),
            other => panic!("publisher: {other:?} with {} in flight", in_flight.len()),
        }
    }
    acked
}

#[test]
fn compaction_under_load_then_sigkill_loses_nothing_acknowledged() {
    let dir = std::env::temp_dir().join(format!("mote-compaction-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let dir_s = dir.to_str().unwrap().to_owned();
    let mut broker = Broker::start_with(&["--data-dir", &dir_s], Some(CONFIG));

    // The offline subscriber: its queue is the live state that must survive.
    let (mut keep, _) = connect_with(broker.addr, &persistent(Protocol::V5, "keeper", true));
    keep.subscribe("c/keep/#", QoS::AtLeastOnce);
    keep.disconnect();

    // The online subscriber acknowledges everything: its deliveries become garbage.
    let (mut online, _) = connect_with(broker.addr, &persistent(Protocol::V5, "online", true));
    online.subscribe("c/#", QoS::AtLeastOnce);
    let stop = Arc::new(AtomicBool::new(false));
    let acker = {
        let stop = stop.clone();
        std::thread::spawn(move || acknowledge_until(online, stop))
    };

    let (mut publisher, _) = connect_with(
        broker.addr,
        &common::connect_packet(Protocol::V5, "publisher", true),
    );
    let started = Instant::now();
    let acked = publish_all(&mut publisher);
    assert_eq!(acked.len() as u32, MESSAGES / KEEP_EVERY);
    // Let the acknowledging subscriber catch up so its garbage is in the log.
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let delivered = acker.join().unwrap();
    assert!(delivered > 0, "the online subscriber received nothing");
    let compactions = broker.log().matches("compacted the store").count();
    eprintln!(
        "published {MESSAGES} in {:?}; online subscriber acked {delivered}; {compactions} compactions",
        started.elapsed()
    );
    assert!(
        compactions >= 2,
        "the log was expected to compact under load; broker log:\n{}",
        broker.log()
    );
    broker.kill();

    // Restart on the same data: the offline subscriber gets every acknowledged message.
    let broker = Broker::start_with(&["--data-dir", &dir_s], Some(CONFIG));
    let (mut keep, ack) = connect_with(broker.addr, &persistent(Protocol::V5, "keeper", false));
    assert!(connack(&ack).0, "the session survived");
    let mut got = Vec::new();
    let end = Instant::now() + Duration::from_secs(30);
    while got.len() < acked.len() && Instant::now() < end {
        match keep.recv(Duration::from_secs(5)) {
            Recv::Frame(f) if f.kind() == 3 => {
                let m = f.publish();
                keep.ack(&m);
                let n: u32 = std::str::from_utf8(&m.payload[..8])
                    .unwrap()
                    .parse()
                    .unwrap();
                // At least once: a redelivered message may come again; keep the first.
                if got.last().map_or(true, |&last| n > last) {
                    got.push(n);
                }
            }
            Recv::Frame(_) => {}
            other => panic!("offline subscriber: {other:?} after {} messages", got.len()),
        }
    }
    assert_eq!(got, acked, "every acknowledged message, in order");
    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
}
