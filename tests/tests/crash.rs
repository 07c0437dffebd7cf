//! Crash safety of the on-disk store, end to end: the real `mote` binary is killed with
//! SIGKILL while a third-party client (paho-mqtt) publishes QoS 1 and QoS 2 messages;
//! after a restart on the same data directory, every message whose PUBACK/PUBCOMP the
//! publisher saw reaches the persistent subscribers (QoS 1 at least once, QoS 2 exactly
//! once), and subscriptions and retained messages survive.
//!
//! A round counts only when each publisher saw at least one acknowledgement before the
//! kill (otherwise it proved nothing and is tried again with a longer run before the kill,
//! a bounded number of times, then fails); the retained message is always checked, and a
//! `mosquitto_pub` that cannot set it fails the test.
//!
//! Run by `mote_tests::harness` (`harness = false`): without python3 and paho-mqtt 2.x
//! (and, for the SIGKILL test, `mosquitto_pub`/`mosquitto_sub`) a test is reported as
//! ignored, with the reason, and under `CI=true` it fails.
#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::time::{Duration, SystemTime};

use mote_tests::harness::{Suite, MOSQUITTO_PUB, MOSQUITTO_SUB, PAHO};
use mote_tests::{python_dir, spawn, Broker, Reaped};

fn main() -> std::process::ExitCode {
    Suite::new()
        .tests(
            &[PAHO, MOSQUITTO_PUB, MOSQUITTO_SUB],
            mote_tests::tests![acknowledged_messages_survive_sigkill_at_random_points],
        )
        .tests(
            &[PAHO],
            mote_tests::tests![
                offline_queue_beyond_the_memory_budget_waits_on_disk,
                a_resident_memory_budget_sends_queues_to_disk,
            ],
        )
        .run()
}

/// Room for every message of a round in each subscriber's queue (10,000 by default).
/// Small log segments (the smallest allowed), so that a kill lands among many segment
/// rolls and in segments written into zero-filled, preallocated space.
const QUEUE: &str = "[mqtt]\nmax_queued_messages = 100000\n[storage]\nsegment_bytes = 65536\n";

fn script(name: &str, port: u16, args: &[&str]) -> Reaped {
    let mut cmd = Command::new("python3");
    cmd.arg(python_dir().join(name))
        .arg("--port")
        .arg(port.to_string())
        .args(args);
    spawn(&mut cmd)
}

/// Runs a subscriber session to completion; returns (session present, qos, payload) lines.
fn subscriber(
    port: u16,
    id: &str,
    qos: u8,
    subscribe: Option<&str>,
    idle: f32,
) -> (bool, Vec<(u8, String)>) {
    let q = qos.to_string();
    let idle = idle.to_string();
    let mut args = vec!["--id", id, "--qos", &q, "--idle", &idle];
    if let Some(t) = subscribe {
        args.extend(["--subscribe", t]);
    }
    let (status, out, err) =
        script("crash_sub.py", port, &args).wait_output(Duration::from_secs(40));
    assert!(
        status.is_some_and(|s| s.success()),
        "subscriber {id} failed: {out}\n{err}"
    );
    let present = out.lines().any(|l| l == "SESSION 1");
    let msgs = out
        .lines()
        .filter_map(|l| l.strip_prefix("MSG "))
        .filter_map(|l| l.split_once(' '))
        .map(|(q, p)| (q.parse().unwrap(), p.to_owned()))
        .collect();
    (present, msgs)
}

fn acked(out: &str) -> HashSet<String> {
    out.lines()
        .filter_map(|l| l.strip_prefix("ACK "))
        .map(str::to_owned)
        .collect()
}

/// A pseudo-random delay in [lo, hi) ms from the clock (no RNG dependency).
fn jitter(lo: u64, hi: u64, round: u64) -> Duration {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    Duration::from_millis(
        lo + (nanos.wrapping_mul(2_654_435_761).wrapping_add(round * 97)) % (hi - lo),
    )
}

/// Crash rounds, each with its own data directory and its own point of the kill.
const ROUNDS: u64 = 3;
/// Tries per round: a try in which a publisher saw no acknowledgement before the kill is
/// run again with twice the time before the kill (at most 8 times the first).
const TRIES: u32 = 4;

/// One try of a crash round, killing the broker `before_kill` after the publishers
/// started. Returns false, having checked nothing, when a publisher saw no
/// acknowledgement before the kill: such a try proves nothing about durability.
fn crash_round(round: u64, before_kill: Duration) -> bool {
    let dir = std::env::temp_dir().join(format!("mote-crash-{}-{round}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let dir_s = dir.to_str().unwrap().to_owned();
    let mut broker = Broker::start_with(&["--data-dir", &dir_s], Some(QUEUE));
    let port = broker.port();

    // Persistent subscribers (clean session 0), then offline.
    let (present, _) = subscriber(port, "crash-s1", 1, Some("crash/#"), 0.2);
    assert!(!present);
    let (present, _) = subscriber(port, "crash-s2", 2, Some("crash/#"), 0.2);
    assert!(!present);
    let set = Command::new("mosquitto_pub")
        .args([
            "-p",
            &port.to_string(),
            "-t",
            "crash/retained",
            "-m",
            "kept",
            "-r",
            "-q",
            "1",
        ])
        .output()
        .unwrap_or_else(|e| panic!("cannot run mosquitto_pub: {e}"));
    assert!(
        set.status.success(),
        "mosquitto_pub could not set the retained message ({}): {}",
        set.status,
        String::from_utf8_lossy(&set.stderr)
    );

    // Publish from two paho clients and kill the broker in the middle.
    let p1 = script(
        "crash_pub.py",
        port,
        &[
            "--qos", "1", "--prefix", "q1", "--count", "5000", "--topic", "crash/a",
        ],
    );
    let p2 = script(
        "crash_pub.py",
        port,
        &[
            "--qos", "2", "--prefix", "q2", "--count", "5000", "--topic", "crash/b",
        ],
    );
    std::thread::sleep(before_kill);
    broker.kill();
    let (_, out1, err1) = p1.wait_output(Duration::from_secs(30));
    let (_, out2, err2) = p2.wait_output(Duration::from_secs(30));
    let acked1 = acked(&out1);
    let acked2 = acked(&out2);
    assert!(
        out1.contains("DONE") && out2.contains("DONE"),
        "publishers: {err1}\n{err2}"
    );
    eprintln!(
        "round {round}: acked q1={} q2={} in the {before_kill:?} before the kill",
        acked1.len(),
        acked2.len()
    );
    if acked1.is_empty() || acked2.is_empty() {
        drop(broker);
        let _ = std::fs::remove_dir_all(&dir);
        return false;
    }

    // Restart on the same data directory; the subscribers resume their sessions.
    let broker = Broker::start_with(&["--data-dir", &dir_s], Some(QUEUE));
    let port = broker.port();
    let (present1, got1) = subscriber(port, "crash-s1", 1, None, 5.0);
    let (present2, got2) = subscriber(port, "crash-s2", 2, None, 5.0);
    assert!(present1 && present2, "sessions survived the crash");

    let seen1: HashSet<&str> = got1.iter().map(|(_, p)| p.as_str()).collect();
    for m in acked1
        .iter()
        .map(|i| format!("q1-{i}"))
        .chain(acked2.iter().map(|i| format!("q2-{i}")))
    {
        assert!(
            seen1.contains(m.as_str()),
            "round {round}: acknowledged {m} lost for the QoS 1 subscriber"
        );
    }
    let mut counts2: HashMap<&str, usize> = HashMap::new();
    for (_, p) in &got2 {
        *counts2.entry(p.as_str()).or_default() += 1;
    }
    for i in &acked1 {
        assert!(
            counts2.contains_key(format!("q1-{i}").as_str()),
            "round {round}: q1-{i} lost for the QoS 2 subscriber"
        );
    }
    for i in &acked2 {
        assert_eq!(
            counts2.get(format!("q2-{i}").as_str()),
            Some(&1),
            "round {round}: q2-{i} not delivered exactly once"
        );
    }
    for (p, n) in &counts2 {
        if p.starts_with("q2-") {
            assert_eq!(
                *n, 1,
                "round {round}: QoS 2 message {p} delivered {n} times"
            );
        }
    }
    let out = Command::new("mosquitto_sub")
        .args([
            "-p",
            &port.to_string(),
            "-t",
            "crash/retained",
            "-C",
            "1",
            "-W",
            "5",
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "kept",
        "retained message survived"
    );
    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
    true
}

fn acknowledged_messages_survive_sigkill_at_random_points() {
    for round in 0..ROUNDS {
        let mut before_kill = jitter(300, 1100, round);
        let mut tries = 1;
        while !crash_round(round, before_kill) {
            assert!(
                tries < TRIES,
                "round {round}: in {TRIES} tries (the last killing the broker {before_kill:?} \
                 after the publishers started) a publisher never saw an acknowledgement \
                 before the kill, so nothing was tested"
            );
            tries += 1;
            before_kill *= 2;
        }
    }
}

/// Beyond `storage.queue_memory_bytes`, an offline persistent subscriber's queue waits on
/// disk: every message still arrives, in order, after a restart in the middle too.
fn offline_queue_beyond_the_memory_budget_waits_on_disk() {
    queue_waits_on_disk(
        "[mqtt]\nmax_queued_messages = 100000\n[storage]\nqueue_memory_bytes = 65536\n",
        "queue",
    );
}

/// `storage.memory_budget_bytes` below what the broker needs anyway leaves no room for
/// queues in memory (the queue budget itself is the default 256 MiB): the queue goes to
/// disk all the same.
fn a_resident_memory_budget_sends_queues_to_disk() {
    queue_waits_on_disk(
        "[mqtt]\nmax_queued_messages = 100000\n[storage]\nmemory_budget_bytes = 1048576\n",
        "rss",
    );
}

/// Publishes 8,000 QoS 1 messages to an offline persistent subscriber under `config`;
/// they must be in one spill file, and after a restart arrive in order, once each.
fn queue_waits_on_disk(config: &str, tag: &str) {
    let dir = std::env::temp_dir().join(format!("mote-spill-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let dir_s = dir.to_str().unwrap().to_owned();
    let mut broker = Broker::start_with(&["--data-dir", &dir_s], Some(config));
    let (_, _) = subscriber(broker.port(), "spill-s", 1, Some("spill/#"), 0.2);
    let (_, out, err) = script(
        "crash_pub.py",
        broker.port(),
        &[
            "--qos",
            "1",
            "--prefix",
            "m",
            "--count",
            "8000",
            "--topic",
            "spill/x",
            "--timeout",
            "60",
        ],
    )
    .wait_output(Duration::from_secs(90));
    assert_eq!(acked(&out).len(), 8000, "{err}");
    assert!(
        std::fs::read_dir(dir.join("spill")).is_ok_and(|d| d.count() == 1),
        "the queue beyond the budget is in one spill file"
    );
    assert_eq!(broker.terminate().map(|s| s.success()), Some(true));
    let broker = Broker::start_with(&["--data-dir", &dir_s], Some(config));
    let (present, got) = subscriber(broker.port(), "spill-s", 1, None, 3.0);
    assert!(present);
    let got: Vec<String> = got.into_iter().map(|(_, p)| p).collect();
    let want: Vec<String> = (0..8000).map(|i| format!("m-{i}")).collect();
    assert_eq!(got, want, "every message, in order, exactly once");
    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
}
