//! End to end of per-user limits (`[[auth.limits]]`, `docs/security.md`): two users of
//! one password file (made with `mote passwd`), a device held to 3 subscriptions and 10
//! PUBLISHes a second, a backend held to neither; the difference seen from outside, in
//! the SUBACK codes (MQTT 5 and 3.1.1) and in how long `mosquitto_pub` takes to publish.
//!
//! Run by `mote_tests::harness` (`harness = false`): a test whose client is missing is
//! reported as ignored, with the reason, and under `CI=true` it fails.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::login::set_password;
use common::{connect_packet, connect_with, messages, mosq_pub, mosq_sub, wait_messages, Raw};
use mote_codec::{Connect, Protocol, QoS, SubOptions};
use mote_tests::harness::{Suite, MOSQUITTO_PUB, MOSQUITTO_SUB, STDBUF};
use mote_tests::{Broker, TempDir};

fn main() -> std::process::ExitCode {
    Suite::new()
        .tests(
            &[],
            mote_tests::tests![
                subscriptions_per_client_differ_by_user_v5,
                subscriptions_per_client_differ_by_user_v311,
            ],
        )
        .tests(
            &[MOSQUITTO_PUB, MOSQUITTO_SUB, STDBUF],
            mote_tests::tests![publish_rate_differs_by_user],
        )
        .run()
}

/// The device's limits: subscriptions and PUBLISHes a second.
const DEVICE_SUBSCRIPTIONS: usize = 3;
const DEVICE_RATE: u32 = 10;

/// A broker whose password file (made with `mote passwd`) holds `device` and
/// `backend`, the device with limits of its own; `[mqtt]` has none but its defaults.
/// Fields drop in order: the broker first, then the directory of its files.
struct Setup {
    broker: Broker,
    _dir: TempDir,
}

impl Setup {
    fn start() -> Setup {
        let dir = TempDir::new("mote-limits");
        let passwd = dir.join("passwd");
        set_password(&passwd, "device-1", "device-pw");
        set_password(&passwd, "backend", "backend-pw");
        let toml = format!(
            "[auth]\npassword_file = {:?}\n\n\
             [[auth.limits]]\nusers = [\"device-*\"]\n\
             max_subscriptions_per_client = {DEVICE_SUBSCRIPTIONS}\n\
             max_publish_rate = {DEVICE_RATE}\n",
            passwd.to_str().unwrap()
        );
        let broker = Broker::start_with(&["--memory"], Some(&toml));
        Setup { broker, _dir: dir }
    }

    fn addr(&self) -> SocketAddr {
        self.broker.addr
    }
}

/// Logs in as `user` and asserts the CONNACK accepted it.
#[track_caller]
fn login(addr: SocketAddr, protocol: Protocol, id: &str, user: &str, password: &str) -> Raw {
    let c = Connect {
        username: Some(user),
        password: Some(password.as_bytes()),
        ..connect_packet(protocol, id, true)
    };
    connect_with(addr, &c).0
}

fn subscriptions_per_client_differ_by_user(protocol: Protocol) {
    let s = Setup::start();
    let quota = if protocol == Protocol::V5 { 0x97 } else { 0x80 };
    let filters: Vec<String> = (0..DEVICE_SUBSCRIPTIONS + 2)
        .map(|i| format!("f/{i}"))
        .collect();
    let entries: Vec<(&str, SubOptions)> = filters
        .iter()
        .map(|f| (f.as_str(), SubOptions::qos(QoS::AtLeastOnce)))
        .collect();

    let mut device = login(s.addr(), protocol, "device-1", "device-1", "device-pw");
    let got = device.subscribe_with(1, &entries, None);
    let mut want = vec![1; DEVICE_SUBSCRIPTIONS];
    want.extend([quota, quota]);
    assert_eq!(got, want, "device-1: beyond its own limit, refused");

    let mut backend = login(s.addr(), protocol, "backend", "backend", "backend-pw");
    let got = backend.subscribe_with(1, &entries, None);
    assert_eq!(
        got,
        vec![1; entries.len()],
        "backend: [mqtt]'s limit (10000)"
    );
}

fn subscriptions_per_client_differ_by_user_v5() {
    subscriptions_per_client_differ_by_user(Protocol::V5);
}

fn subscriptions_per_client_differ_by_user_v311() {
    subscriptions_per_client_differ_by_user(Protocol::V311);
}

/// `mosquitto_pub -u USER -P PASSWORD -t TOPIC -q 1 --repeat N`; how long it took.
fn time_publish(broker: &Broker, user: &str, password: &str, topic: &str, n: u32) -> Duration {
    let n = n.to_string();
    let start = Instant::now();
    mosq_pub(
        broker,
        &[
            "-u", user, "-P", password, "-t", topic, "-q", "1", "-m", "x", "--repeat", &n,
        ],
    );
    start.elapsed()
}

fn publish_rate_differs_by_user() {
    let s = Setup::start();
    // The backend counts what arrives (it is not rate limited, and neither are
    // deliveries).
    let mut sub = mosq_sub(
        &s.broker,
        &[
            "-u",
            "backend",
            "-P",
            "backend-pw",
            "-t",
            "rate/#",
            "-q",
            "1",
        ],
    );
    // 50 messages: the device's bucket holds one second's worth (10), the other 40 wait
    // for tokens at 10 a second, about 4 s; the backend's are not held at all.
    const N: u32 = 50;
    let backend = time_publish(&s.broker, "backend", "backend-pw", "rate/backend", N);
    let device = time_publish(&s.broker, "device-1", "device-pw", "rate/device", N);
    let floor = Duration::from_secs_f64(f64::from(N - DEVICE_RATE) / f64::from(DEVICE_RATE));
    assert!(
        device >= floor.mul_f64(0.9),
        "device-1 published {N} in {device:?}: faster than {DEVICE_RATE}/s allows ({floor:?})"
    );
    assert!(
        backend < floor / 2,
        "backend published {N} in {backend:?}: held back as if limited"
    );
    // Slowed, not dropped: every message of both arrived.
    let n = usize::try_from(2 * N).unwrap();
    assert!(
        wait_messages(&mut sub, n, Duration::from_secs(10)),
        "{} of {n} messages arrived",
        messages(&sub).len()
    );
    eprintln!("{N} PUBLISHes: backend {backend:?}, device-1 {device:?} (floor {floor:?})");
}
