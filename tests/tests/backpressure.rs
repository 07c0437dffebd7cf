//! Publisher backpressure from outside (`[mqtt] publisher_backpressure_ms`, README
//! "Slow subscribers slow their publishers first"): publishers that outrun one
//! subscriber are slowed rather than its messages dropped, and a subscriber that never
//! reads holds its publishers back for at most the budget.
//!
//! Raw sockets only: nothing from outside the Rust build is needed.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{connect, Raw, Recv};
use mote_codec::{Packet, Protocol, QoS};
use mote_tests::Broker;

/// Sends `n` QoS 0 PUBLISHes of `size` bytes to `topic` as fast as the socket takes
/// them, then a PINGREQ, and waits for its PINGRESP: how long the whole took.
fn blast(mut raw: Raw, topic: &str, n: u32, size: usize) -> Duration {
    let started = Instant::now();
    let payload = vec![b'x'; size];
    let mut batch = Vec::new();
    for i in 0..n {
        let p = common::publish(topic, &payload, QoS::AtMostOnce, 0);
        batch.extend_from_slice(&common::encode(&Packet::Publish(p), Protocol::V311));
        if i % 256 == 255 || i + 1 == n {
            assert!(raw.send_raw(&batch), "the broker closed the publisher");
            batch.clear();
        }
    }
    raw.send(&Packet::PingReq);
    loop {
        match raw.recv(Duration::from_secs(30)) {
            Recv::Frame(f) if f.kind() == 13 => return started.elapsed(),
            Recv::Frame(_) => {}
            other => panic!("no PINGRESP: {other:?}"),
        }
    }
}

/// Counts QoS 0 PUBLISHes until none came for `quiet`, resting `rest` after every
/// 200 (a subscriber slower than its publishers).
fn count(raw: &mut Raw, quiet: Duration, rest: Duration) -> usize {
    let mut n = 0;
    loop {
        match raw.recv(quiet) {
            Recv::Frame(f) if f.kind() == 3 => {
                n += 1;
                if n % 200 == 0 {
                    std::thread::sleep(rest);
                }
            }
            Recv::Frame(_) => {}
            Recv::Timeout | Recv::Closed => return n,
        }
    }
}

#[test]
fn a_fan_in_burst_into_a_slow_subscriber_at_the_defaults_loses_nothing() {
    let broker = Broker::start_with(&["--memory"], None);
    let mut sub = connect(broker.addr, Protocol::V311, "fan-in-sub");
    sub.subscribe("burst/#", QoS::AtMostOnce);
    const PER: u32 = 20_000;
    let publishers: Vec<_> = (0..4)
        .map(|i| {
            let raw = connect(broker.addr, Protocol::V311, &format!("fan-in-pub-{i}"));
            std::thread::spawn(move || blast(raw, &format!("burst/{i}"), PER, 64))
        })
        .collect();
    // At most 20,000 a second: the publishers outrun it by far.
    let got = count(&mut sub, Duration::from_secs(3), Duration::from_millis(10));
    for p in publishers {
        p.join().unwrap();
    }
    assert_eq!(
        got,
        4 * PER as usize,
        "4 publishers x {PER} into one slow subscriber whose queue holds 10,000: lost {}",
        4 * PER as usize - got
    );
}

#[test]
fn a_subscriber_that_never_reads_holds_publishers_back_for_at_most_the_budget() {
    let config = "[mqtt]\nmax_queued_messages = 1000\npublisher_backpressure_ms = 1000\n";
    let broker = Broker::start_with(&["--memory"], Some(config));
    // Subscribes and never reads again.
    let mut stuck = connect(broker.addr, Protocol::V311, "never-reads");
    stuck.subscribe("t/#", QoS::AtMostOnce);
    let mut reader = connect(broker.addr, Protocol::V311, "reads");
    reader.subscribe("t/#", QoS::AtMostOnce);
    let n = 20_000;
    let publisher = {
        let raw = connect(broker.addr, Protocol::V311, "publisher");
        std::thread::spawn(move || blast(raw, "t/x", n, 1024))
    };
    let got = count(&mut reader, Duration::from_secs(5), Duration::ZERO);
    let took = publisher.join().unwrap();
    // Paused for at most the budget while the stuck one filled up, then its limits
    // applied (its messages dropped, counted) and the publisher went on.
    assert!(took < Duration::from_secs(8), "publisher held for {took:?}");
    assert_eq!(got, n as usize, "the reading subscriber lost messages");
    drop(stuck);
}
