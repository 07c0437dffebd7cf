//! Work queues across a crash: jobs whose enqueue was acknowledged survive SIGKILL of the
//! broker while a producer enqueues and a worker takes and acknowledges jobs, and are
//! all done after the restart (at least once: a job acknowledged just before the kill
//! may come again).
//!
//! Raw sockets only: nothing from outside the Rust build is needed.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{connect, Raw, Recv};
use mote_codec::{reason, Ack, Packet, Protocol, QoS};
use mote_tests::Broker;

const JOBS: u32 = 5_000;

/// Takes jobs and acknowledges each until the connection ends or `until` passes.
fn work(mut raw: Raw, done: &Mutex<BTreeSet<u32>>, until: Instant) {
    while Instant::now() < until {
        match raw.recv(Duration::from_millis(200)) {
            Recv::Frame(f) if f.kind() == 3 => {
                let m = f.publish();
                let n: u32 = std::str::from_utf8(&m.payload).unwrap().parse().unwrap();
                // QoS 1 jobs (both workers subscribe with QoS 1); the broker may be gone.
                let ack = Packet::PubAck(Ack::new(m.packet_id));
                if !raw.send_raw(&common::encode(&ack, raw.protocol)) {
                    return;
                }
                done.lock().unwrap().insert(n);
            }
            Recv::Frame(_) | Recv::Timeout => {}
            Recv::Closed => return,
        }
    }
}

#[test]
fn enqueued_jobs_survive_sigkill_and_are_all_done_after_restart() {
    let dir = std::env::temp_dir().join(format!("mote-queue-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let dir_s = dir.to_str().unwrap().to_owned();
    let config = "[mqtt]\nmax_queued_messages = 100000\n";
    let mut broker = Broker::start_with(&["--data-dir", &dir_s], Some(config));

    let done = Arc::new(Mutex::new(BTreeSet::new()));
    let mut worker = connect(broker.addr, Protocol::V5, "crash-worker");
    worker.subscribe("$queue/crashjobs", QoS::AtLeastOnce);
    let worker = {
        let done = done.clone();
        std::thread::spawn(move || work(worker, &done, Instant::now() + Duration::from_secs(30)))
    };
    let stop = Arc::new(AtomicBool::new(false));
    let producer = {
        let raw = connect(broker.addr, Protocol::V5, "crash-producer");
        let stop = stop.clone();
        std::thread::spawn(move || common::produce_numbered(raw, "$queue/crashjobs", JOBS, &stop))
    };
    // Kill once some jobs are acknowledged and some done.
    let end = Instant::now() + Duration::from_secs(20);
    while done.lock().unwrap().len() < 200 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(5));
    }
    broker.kill();
    stop.store(true, Ordering::Relaxed);
    let enqueued = producer.join().unwrap();
    worker.join().unwrap();
    let before = done.lock().unwrap().len();
    assert!(
        !enqueued.is_empty() && before > 0,
        "the kill came too early"
    );

    // Restart: a new worker finishes every job that was acknowledged to the producer.
    let broker = Broker::start_with(&["--data-dir", &dir_s], Some(config));
    let mut worker = connect(broker.addr, Protocol::V311, "after-worker");
    worker.subscribe("$queue/crashjobs", QoS::AtLeastOnce);
    let deadline = Instant::now() + Duration::from_secs(60);
    let missing = |done: &BTreeSet<u32>| enqueued.difference(done).count();
    let worker = {
        let done = done.clone();
        std::thread::spawn(move || work(worker, &done, deadline))
    };
    while missing(&done.lock().unwrap()) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let left = missing(&done.lock().unwrap());
    eprintln!(
        "{} enqueues acknowledged, {before} done before the kill, {} after",
        enqueued.len(),
        done.lock().unwrap().len() - before
    );
    assert_eq!(
        left,
        0,
        "acknowledged jobs lost; broker log:\n{}",
        broker.log()
    );
    drop(broker);
    let _ = worker.join();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A v5 worker refuses one job (PUBACK 0x80: it comes back, flagged DUP) and marks
/// another as poison (0x99: dead-lettered at once); a third is taken by five workers that
/// die with it and is then dead-lettered instead of delivered a sixth time. `$SYS` counts
/// it; the dead letters survive SIGKILL of the broker and are read from `$queue/jobs.dlq`.
#[test]
fn refused_poison_and_undeliverable_jobs_go_to_the_dead_letter_queue() {
    let dir = std::env::temp_dir().join(format!("mote-queue-dlq-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let dir_s = dir.to_str().unwrap().to_owned();
    let config = "[mqtt]\nsys_interval_secs = 1\n";
    let mut broker = Broker::start_with(&["--data-dir", &dir_s], Some(config));
    let mut p = connect(broker.addr, Protocol::V5, "dlq-producer");
    for (i, job) in ["refused", "poison"].iter().enumerate() {
        let id = i as u16 + 1;
        p.publish_acked(&common::publish(
            "$queue/jobs",
            job.as_bytes(),
            QoS::AtLeastOnce,
            id,
        ));
    }
    let mut w = connect(broker.addr, Protocol::V5, "dlq-worker");
    w.subscribe("$queue/jobs", QoS::AtLeastOnce);
    let first = w.expect_publish();
    let second = w.expect_publish();
    assert_eq!(
        (&first.payload[..], &second.payload[..]),
        (&b"refused"[..], &b"poison"[..])
    );
    let mut nack = Ack::new(first.packet_id);
    nack.reason = reason::UNSPECIFIED_ERROR;
    w.send(&Packet::PubAck(nack));
    let mut poison = Ack::new(second.packet_id);
    poison.reason = reason::PAYLOAD_FORMAT_INVALID;
    w.send(&Packet::PubAck(poison));
    let again = w.expect_publish();
    assert_eq!(&again.payload[..], b"refused");
    assert!(again.dup, "a redelivery is flagged DUP");
    // MQTT 5 consumers are told the delivery count.
    let count = |m: &common::Msg| {
        m.user_properties
            .iter()
            .find(|(k, _)| k == "mote-delivery-count")
            .map(|(_, v)| v.clone())
    };
    assert_eq!(count(&first).as_deref(), Some("1"));
    assert_eq!(count(&again).as_deref(), Some("2"));
    w.ack(&again);
    w.disconnect();

    p.publish_acked(&common::publish(
        "$queue/jobs",
        b"crashes-workers",
        QoS::AtLeastOnce,
        3,
    ));
    for round in 0..5 {
        let mut w = connect(broker.addr, Protocol::V311, "dlq-dying-worker");
        w.subscribe("$queue/jobs", QoS::AtLeastOnce);
        let m = w.expect_publish();
        assert_eq!(&m.payload[..], b"crashes-workers", "delivery {}", round + 1);
        drop(w); // dies without acknowledging
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut w = connect(broker.addr, Protocol::V311, "dlq-last-worker");
    w.subscribe("$queue/jobs", QoS::AtLeastOnce);
    w.expect_nothing();
    drop(w);

    let mut sys = connect(broker.addr, Protocol::V5, "dlq-sys");
    sys.subscribe("$SYS/broker/queues/jobs/dead_lettered", QoS::AtMostOnce);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let m = sys.expect_publish();
        if &m.payload[..] == b"2" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "dead_lettered stays {:?}",
            m.payload
        );
    }

    broker.kill();
    let broker = Broker::start_with(&["--data-dir", &dir_s], Some(config));
    let mut d = connect(broker.addr, Protocol::V5, "dlq-reader");
    d.subscribe("$queue/jobs.dlq", QoS::AtLeastOnce);
    let mut dead = Vec::new();
    for _ in 0..2 {
        let m = d.expect_publish();
        d.ack(&m);
        dead.push(String::from_utf8(m.payload).unwrap());
    }
    dead.sort();
    assert_eq!(dead, ["crashes-workers", "poison"]);
    d.expect_nothing();
    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `$delayed/SECONDS/TOPIC` reaches a work queue's consumer no earlier than SECONDS
/// later (and soon after), and a plain subscriber the same way.
#[test]
fn a_delayed_publish_arrives_after_its_delay() {
    let broker = Broker::start_with(&["--memory"], None);
    let mut w = connect(broker.addr, Protocol::V5, "delay-worker");
    w.subscribe("$queue/later", QoS::AtLeastOnce);
    let mut s = connect(broker.addr, Protocol::V311, "delay-sub");
    s.subscribe("plain/later", QoS::AtLeastOnce);
    let mut p = connect(broker.addr, Protocol::V5, "delay-producer");
    let sent = Instant::now();
    p.publish_acked(&common::publish(
        "$delayed/2/$queue/later",
        b"job",
        QoS::AtLeastOnce,
        1,
    ));
    p.publish_acked(&common::publish(
        "$delayed/2/plain/later",
        b"msg",
        QoS::AtLeastOnce,
        2,
    ));
    let job = w.expect_publish();
    let after_job = sent.elapsed();
    let m = s.expect_publish();
    let after_msg = sent.elapsed();
    assert_eq!(
        (&job.payload[..], job.topic.as_str()),
        (&b"job"[..], "$queue/later")
    );
    assert_eq!(
        (&m.payload[..], m.topic.as_str()),
        (&b"msg"[..], "plain/later")
    );
    for (what, t) in [("job", after_job), ("message", after_msg)] {
        assert!(t >= Duration::from_secs(2), "{what} after {t:?}: too early");
        assert!(t < Duration::from_secs(4), "{what} after {t:?}: too late");
    }
    w.ack(&job);
}

/// With `queue_visibility_timeout_secs = 1`, a job a worker holds without acknowledging
/// goes to the other worker about a second later (flagged DUP); the first worker's late
/// PUBACK is harmless and the second one's finishes the job.
#[test]
fn a_job_held_past_the_visibility_timeout_goes_to_another_worker() {
    let config = "[mqtt]\nqueue_visibility_timeout_secs = 1\n";
    let broker = Broker::start_with(&["--memory"], Some(config));
    let mut slow = connect(broker.addr, Protocol::V5, "vis-slow");
    slow.subscribe("$queue/vis", QoS::AtLeastOnce);
    let mut p = connect(broker.addr, Protocol::V5, "vis-producer");
    p.publish_acked(&common::publish("$queue/vis", b"job", QoS::AtLeastOnce, 1));
    let held = slow.expect_publish();
    let taken = Instant::now();
    let mut fast = connect(broker.addr, Protocol::V311, "vis-fast");
    fast.subscribe("$queue/vis", QoS::AtLeastOnce);
    let again = fast.expect_publish();
    let waited = taken.elapsed();
    assert_eq!(&again.payload[..], b"job");
    assert!(again.dup, "a redelivery is flagged DUP");
    assert!(
        waited >= Duration::from_millis(800) && waited < Duration::from_secs(3),
        "visible again after {waited:?}"
    );
    slow.ack(&held);
    fast.ack(&again);
    slow.expect_nothing();
    fast.expect_nothing();
}

/// Queues declared in TOML (`[queue.NAME]`) and over MQTT (`$admin/queue/NAME`): their
/// settings hold, the MQTT declaration survives SIGKILL and a restart (it is kept as
/// the topic's retained message), and with `auto_create = false` an undeclared queue
/// does not exist.
#[test]
fn declared_queues_keep_their_settings_across_a_restart() {
    let dir = std::env::temp_dir().join(format!("mote-queue-decl-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let dir_s = dir.to_str().unwrap().to_owned();
    let config = "[queues]\nauto_create = false\n\n[queue.toml-jobs]\nprefetch = 1\n";
    let mut broker = Broker::start_with(&["--data-dir", &dir_s], Some(config));
    let mut admin = connect(broker.addr, Protocol::V5, "decl-admin");
    let decl = br#"{"max_messages": 2, "overflow": "drop_oldest"}"#;
    admin.send(&Packet::Publish(common::publish(
        "$admin/queue/mqtt-jobs",
        decl,
        QoS::AtLeastOnce,
        1,
    )));
    let ack = admin.expect_kind(4);
    assert_eq!(ack.packet(), Packet::PubAck(Ack::new(1)), "declared");
    admin.send(&Packet::Publish(common::publish(
        "$admin/queue/mqtt-jobs",
        br#"{"max_messages": 3}"#,
        QoS::AtLeastOnce,
        2,
    )));
    let f = admin.expect_kind(4);
    let Packet::PubAck(a) = f.packet() else {
        panic!("no PUBACK");
    };
    assert_eq!(a.reason, 0x83, "a conflicting declaration is refused");
    broker.kill();

    let broker = Broker::start_with(&["--data-dir", &dir_s], Some(config));
    let mut p = connect(broker.addr, Protocol::V5, "decl-producer");
    for (i, body) in [b"a", b"b", b"c"].iter().enumerate() {
        p.publish_acked(&common::publish(
            "$queue/mqtt-jobs",
            *body,
            QoS::AtLeastOnce,
            i as u16 + 1,
        ));
    }
    p.send(&Packet::Publish(common::publish(
        "$queue/undeclared",
        b"x",
        QoS::AtLeastOnce,
        9,
    )));
    let f = p.expect_kind(4);
    let Packet::PubAck(a) = f.packet() else {
        panic!("no PUBACK");
    };
    assert_eq!(a.reason, reason::NO_MATCHING_SUBSCRIBERS, "no such queue");
    let mut w = connect(broker.addr, Protocol::V5, "decl-worker");
    w.subscribe("$queue/mqtt-jobs", QoS::AtLeastOnce);
    let first = w.expect_publish();
    let second = w.expect_publish();
    assert_eq!(
        (&first.payload[..], &second.payload[..]),
        (&b"b"[..], &b"c"[..]),
        "max_messages 2, drop_oldest: survived the restart"
    );
    w.ack(&first);
    w.ack(&second);
    // The TOML queue: a prefetch of 1.
    for i in 0..2u16 {
        p.publish_acked(&common::publish(
            "$queue/toml-jobs",
            b"t",
            QoS::AtLeastOnce,
            20 + i,
        ));
    }
    let mut t = connect(broker.addr, Protocol::V5, "decl-toml-worker");
    t.subscribe("$queue/toml-jobs", QoS::AtLeastOnce);
    let one = t.expect_publish();
    t.expect_nothing();
    t.ack(&one);
    let two = t.expect_publish();
    t.ack(&two);
    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `mote queue declare|ls|redrive` against a running broker: a declaration (and a
/// conflicting one refused), the queues' counters, and dead letters moved back.
#[test]
fn the_mote_queue_command_declares_lists_and_redrives() {
    let broker = Broker::start_with(&["--memory"], Some("[mqtt]\nsys_interval_secs = 1\n"));
    let addr = broker.addr.to_string();
    let mote = |args: &[&str]| {
        let out = std::process::Command::new(mote_tests::mote_bin())
            .args(["queue", "--broker", &addr])
            .args(args)
            .env_remove("RUST_BACKTRACE")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, _) = mote(&["declare", "cli-jobs", r#"{"prefetch": 5}"#]);
    assert!(ok && out.contains("declared"), "{out}");
    let (ok, _, err) = mote(&["declare", "cli-jobs", r#"{"prefetch": 6}"#]);
    assert!(!ok && err.contains("other settings"), "{err}");
    let mut p = connect(broker.addr, Protocol::V5, "cli-producer");
    for i in 0..3u16 {
        p.publish_acked(&common::publish(
            "$queue/cli-jobs",
            b"job",
            QoS::AtLeastOnce,
            i + 1,
        ));
    }
    // Two poisoned: dead letters.
    let mut w = connect(broker.addr, Protocol::V5, "cli-worker");
    w.subscribe("$queue/cli-jobs", QoS::AtLeastOnce);
    for _ in 0..2 {
        let m = w.expect_publish();
        let mut poison = Ack::new(m.packet_id);
        poison.reason = reason::PAYLOAD_FORMAT_INVALID;
        w.send(&Packet::PubAck(poison));
    }
    let third = w.expect_publish();
    w.ack(&third);
    w.disconnect();
    // The counters are `$SYS` values, published every second here.
    let end = Instant::now() + Duration::from_secs(10);
    let listed = loop {
        let (ok, out, err) = mote(&["ls"]);
        assert!(ok, "{err}");
        let dlq = out.lines().find(|l| l.starts_with("cli-jobs.dlq "));
        if dlq.is_some_and(|l| l.split_whitespace().nth(1) == Some("2")) || Instant::now() > end {
            break out;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(
        listed
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>()
                == ["cli-jobs.dlq", "2", "0", "0", "0", "0"]),
        "{listed}"
    );
    // One queue and its dead letters.
    let (ok, out, err) = mote(&["stats", "cli-jobs"]);
    assert!(ok, "{err}");
    let lines: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert!(lines.contains(&vec!["cli-jobs.dlq"]), "{out}");
    assert!(lines.contains(&vec!["depth", "2"]), "{out}");
    let (ok, _, err) = mote(&["stats", "no-such-queue"]);
    assert!(!ok && err.contains("no queue"), "{err}");
    let (ok, out, err) = mote(&["redrive", "cli-jobs"]);
    assert!(ok && out.trim() == "moved 2", "{out} {err}");
}

/// A job's delivery count survives a restart of the broker: two workers take it and die
/// (two deliveries), the broker is killed, and after the restart the third delivery is
/// told `mote-delivery-count` 3 and, its worker dying too, the job is dead-lettered
/// (max_deliveries 3) instead of being given three more tries.
#[test]
fn the_delivery_count_survives_a_restart() {
    let dir = std::env::temp_dir().join(format!("mote-queue-count-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let dir_s = dir.to_str().unwrap().to_owned();
    let config = "[queue.counted]\nmax_deliveries = 3\n";
    let mut broker = Broker::start_with(&["--data-dir", &dir_s], Some(config));
    let mut p = connect(broker.addr, Protocol::V5, "count-producer");
    p.publish_acked(&common::publish(
        "$queue/counted",
        b"poison",
        QoS::AtLeastOnce,
        1,
    ));
    let count = |m: &common::Msg| {
        m.user_properties
            .iter()
            .find(|(k, _)| k == "mote-delivery-count")
            .map(|(_, v)| v.clone())
    };
    for n in 1..=2 {
        let mut w = connect(broker.addr, Protocol::V5, &format!("count-worker-{n}"));
        w.subscribe("$queue/counted", QoS::AtLeastOnce);
        let m = w.expect_publish();
        assert_eq!(count(&m).as_deref(), Some(n.to_string().as_str()));
        // Dies without acknowledging.
        drop(w);
        std::thread::sleep(Duration::from_millis(200));
    }
    broker.kill();
    let broker = Broker::start_with(&["--data-dir", &dir_s], Some(config));
    let mut w = connect(broker.addr, Protocol::V5, "count-worker-3");
    w.subscribe("$queue/counted", QoS::AtLeastOnce);
    let m = w.expect_publish();
    assert_eq!(
        count(&m).as_deref(),
        Some("3"),
        "the count went on after the restart"
    );
    drop(w);
    let mut dlq = connect(broker.addr, Protocol::V5, "count-dlq");
    dlq.subscribe("$queue/counted.dlq", QoS::AtLeastOnce);
    let dead = match dlq.recv(Duration::from_secs(5)) {
        Recv::Frame(f) if f.kind() == 3 => f.publish(),
        other => panic!("no dead letter: {other:?}; log:\n{}", broker.log()),
    };
    assert_eq!(&dead.payload[..], b"poison");
    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A consumer waiting on an empty queue gets a new job at once, whatever the
/// publisher's QoS (the job is handed out before it is durable and sent once it is).
#[test]
fn an_idle_consumer_gets_a_new_job_at_once() {
    let dir = std::env::temp_dir().join(format!("mote-queue-idle-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let dir_s = dir.to_str().unwrap().to_owned();
    let broker = Broker::start_with(&["--data-dir", &dir_s, "--fsync", "always"], None);
    let mut w = connect(broker.addr, Protocol::V311, "idle-worker");
    w.subscribe("$queue/idle", QoS::AtLeastOnce);
    let mut p = connect(broker.addr, Protocol::V5, "idle-producer");
    for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::AtMostOnce]
        .into_iter()
        .enumerate()
    {
        std::thread::sleep(Duration::from_millis(300));
        let body = format!("job-{i}");
        let sent = Instant::now();
        p.publish("$queue/idle", body.as_bytes(), qos, i as u16 + 1);
        let m = match w.recv(Duration::from_secs(1)) {
            Recv::Frame(f) if f.kind() == 3 => f.publish(),
            other => panic!("job {i} (QoS {qos:?}) not delivered within 1 s: {other:?}"),
        };
        assert_eq!(m.payload, body.as_bytes());
        assert!(
            sent.elapsed() < Duration::from_millis(500),
            "{:?}",
            sent.elapsed()
        );
        w.ack(&m);
    }
    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
}
