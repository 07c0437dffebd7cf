//! Streams across a crash (`docs/streams.md`, "Crash safety"): SIGKILL of the broker
//! while a producer appends and a consumer group reads and acknowledges. After the
//! restart no acknowledged append is lost, offsets are dense and the next append takes
//! the next one (never reused), and the group resumes neither before the committed
//! offset `$SYS` showed before the kill nor after the first offset it had not
//! acknowledged.
//!
//! Raw sockets only: nothing from outside the Rust build is needed.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{connect, Msg, Raw, Recv};
use mote_codec::{Ack, Packet, Protocol, QoS};
use mote_tests::Broker;

/// The most the producer appends. The kill comes about a second in (once `$SYS` showed
/// a commit), when a fast machine has appended 10,000-20,000: room to spare, so that the
/// kill comes while the producer still appends.
const APPENDS: u32 = 200_000;

/// The `mote-offset` of a stream delivery.
fn offset(m: &Msg) -> u64 {
    m.user_properties
        .iter()
        .find(|(k, _)| k == "mote-offset")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or_else(|| panic!("no mote-offset on {m:?}"))
}

/// Reads as a member of group `g`, acknowledging each, until the connection ends;
/// records the offsets acknowledged.
fn consume(mut raw: Raw, acked: &Mutex<BTreeSet<u64>>) {
    loop {
        match raw.recv(Duration::from_secs(5)) {
            Recv::Frame(f) if f.kind() == 3 => {
                let m = f.publish();
                let ack = Packet::PubAck(Ack::new(m.packet_id));
                if !raw.send_raw(&common::encode(&ack, raw.protocol)) {
                    return;
                }
                acked.lock().unwrap().insert(offset(&m));
            }
            Recv::Frame(_) | Recv::Timeout => {}
            Recv::Closed => return,
        }
    }
}

/// Records the highest committed offset of group `g` that `$SYS` published.
fn watch_committed(mut raw: Raw, seen: &AtomicU64) {
    loop {
        match raw.recv(Duration::from_secs(5)) {
            Recv::Frame(f) if f.kind() == 3 => {
                let m = f.publish();
                if let Ok(v) = std::str::from_utf8(&m.payload).unwrap().parse::<u64>() {
                    seen.fetch_max(v, Ordering::Relaxed);
                }
            }
            Recv::Frame(_) | Recv::Timeout => {}
            Recv::Closed => return,
        }
    }
}

/// Reads all of `$stream/crash` from the start with a plain reader (at least `n`
/// messages, then until nothing more comes): offset → payload.
fn replay(broker: &Broker, n: usize) -> BTreeMap<u64, String> {
    let mut r = connect(broker.addr, Protocol::V5, "replayer");
    r.subscribe("$stream/crash/@earliest", QoS::AtLeastOnce);
    let mut got = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let wait = if got.len() < n { 5000 } else { 1000 };
        match r.recv(Duration::from_millis(wait)) {
            Recv::Frame(f) if f.kind() == 3 => {
                let m = f.publish();
                r.ack(&m);
                let payload = String::from_utf8(m.payload.clone()).unwrap();
                assert!(got.insert(offset(&m), payload).is_none(), "an offset twice");
            }
            Recv::Frame(_) => {}
            Recv::Timeout | Recv::Closed => break,
        }
    }
    got
}

#[test]
fn acknowledged_appends_and_committed_offsets_survive_sigkill() {
    let dir = std::env::temp_dir().join(format!("mote-stream-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let dir_s = dir.to_str().unwrap().to_owned();
    let config = "[mqtt]\nsys_interval_secs = 1\n";
    let mut broker = Broker::start_with(&["--data-dir", &dir_s], Some(config));

    let acked_by_group = Arc::new(Mutex::new(BTreeSet::new()));
    let mut member = connect(broker.addr, Protocol::V5, "crash-member");
    member.subscribe("$share/g/$stream/crash/@earliest", QoS::AtLeastOnce);
    let member = {
        let acked = acked_by_group.clone();
        std::thread::spawn(move || consume(member, &acked))
    };
    let committed_seen = Arc::new(AtomicU64::new(0));
    let mut sys = connect(broker.addr, Protocol::V5, "crash-sys");
    sys.subscribe(
        "$SYS/broker/streams/crash/groups/g/committed",
        QoS::AtMostOnce,
    );
    let sys = {
        let seen = committed_seen.clone();
        std::thread::spawn(move || watch_committed(sys, &seen))
    };
    let stop = Arc::new(AtomicBool::new(false));
    let producer = {
        let raw = connect(broker.addr, Protocol::V5, "crash-producer");
        let stop = stop.clone();
        std::thread::spawn(move || common::produce_numbered(raw, "$stream/crash", APPENDS, &stop))
    };
    // Kill once the group acknowledged some and `$SYS` showed a commit.
    let end = Instant::now() + Duration::from_secs(30);
    while (acked_by_group.lock().unwrap().len() < 500
        || committed_seen.load(Ordering::Relaxed) == 0)
        && Instant::now() < end
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    broker.kill();
    stop.store(true, Ordering::Relaxed);
    let appended = producer.join().unwrap();
    member.join().unwrap();
    sys.join().unwrap();
    let committed_before = committed_seen.load(Ordering::Relaxed);
    let acked_before = acked_by_group.lock().unwrap().clone();
    assert!(
        !appended.is_empty() && committed_before > 0,
        "the kill came too early"
    );
    // The first offset the group had not acknowledged: it must resume at or before it.
    let first_unacked = (0..).find(|o| !acked_before.contains(o)).unwrap();

    let broker = Broker::start_with(&["--data-dir", &dir_s], Some(config));
    // Every acknowledged append is there, at dense offsets from 0.
    let got = replay(&broker, appended.len());
    let kept = got.len() as u64;
    assert!(
        kept >= appended.len() as u64,
        "appends lost: {kept} kept, {} acknowledged",
        appended.len()
    );
    assert_eq!(
        got.keys().copied().collect::<Vec<_>>(),
        (0..kept).collect::<Vec<_>>(),
        "offsets dense"
    );
    let payloads: BTreeSet<u32> = got.values().map(|p| p.parse().unwrap()).collect();
    let lost: Vec<&u32> = appended.difference(&payloads).collect();
    assert!(
        lost.is_empty(),
        "acknowledged appends lost: {lost:?}; log:\n{}",
        broker.log()
    );

    // The group resumes between what `$SYS` showed committed and its first unacknowledged.
    let mut member = connect(broker.addr, Protocol::V5, "crash-member-2");
    member.subscribe("$share/g/$stream/crash/@earliest", QoS::AtLeastOnce);
    // One more append, so that the group has something to read even when it had
    // acknowledged (and committed) every append before the kill: then it resumes at
    // this one. The next append takes the next offset: none is reused (below).
    let mut p = connect(broker.addr, Protocol::V5, "after-producer");
    p.publish_acked(&common::publish(
        "$stream/crash",
        b"after",
        QoS::AtLeastOnce,
        1,
    ));
    let first = member.expect_publish();
    let resumed = offset(&first);
    assert!(
        resumed >= committed_before && resumed <= first_unacked,
        "the group resumed at {resumed}: committed before the kill {committed_before}, first unacknowledged {first_unacked}"
    );
    let mut tail = connect(broker.addr, Protocol::V5, "tail");
    tail.subscribe(&format!("$stream/crash/@{kept}"), QoS::AtLeastOnce);
    let m = tail.expect_publish();
    assert_eq!((offset(&m), &m.payload[..]), (kept, &b"after"[..]));
    eprintln!(
        "{} appends acknowledged, {kept} kept; group committed {committed_before} before the kill, resumed at {resumed}",
        appended.len()
    );
    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
}
