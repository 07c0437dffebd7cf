//! End to end of JWT logins and client-id binding (`docs/security.md`): HS256, RS256 and
//! ES256 tokens as CONNECT passwords; refused tokens (bad signature, expired, not yet
//! valid, wrong audience or issuer, another algorithm, a user name that is not the
//! token's) answered 0x86 / return code 4 and never logged; the `acl` claim held to on
//! SUBSCRIBE, PUBLISH and delivery; a connection closed when its token expires (MQTT 5:
//! DISCONNECT 0xA0); key rotation on SIGHUP; client ids bound to users (0x85 / 2).
//!
//! Keys are made and tokens signed with the `openssl` CLI (`common/jwt.rs`), never with
//! the broker's code. Clients: raw sockets where a code must be read exactly, Debian's
//! `mosquitto_pub`/`mosquitto_sub`, and paho-mqtt 2.x. Run by `mote_tests::harness`
//! (`harness = false`): a test whose tool is missing is reported as ignored, with the
//! reason, and under `CI=true` it fails.
#![allow(clippy::unwrap_used)]

mod common;
#[path = "common/jwt.rs"]
mod tokens;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::login::{mosq_pub_refused, set_password};
use common::{
    connack, connect_packet, connect_raw, messages, mosq_pub, mosq_sub, publish, wait_messages,
    Frame, Raw, QUIET, WAIT,
};
use common::{expect_topic, ping};
use mote_codec::{Connect, Packet, Protocol, QoS, SubOptions};
use mote_tests::harness::{Suite, MOSQUITTO_PUB, MOSQUITTO_SUB, PAHO, STDBUF};
use mote_tests::{python_dir, run_script, tail, Broker, TempDir};
use serde_json::{json, Value};
use tokens::{now, secret_parts, Alg, Key, OPENSSL};

fn main() -> std::process::ExitCode {
    Suite::new()
        .tests(
            &[OPENSSL],
            mote_tests::tests![
                hs256_token_connects_v311_and_v5,
                rs256_and_es256_tokens_connect,
                refused_tokens_v311,
                refused_tokens_v5,
                acl_claim_enforced_v311,
                acl_claim_enforced_v5,
                expired_token_closes_the_connection_v311,
                expired_token_closes_the_connection_v5,
                sighup_rotates_the_key_and_refuses_a_bad_one,
                client_ids_bound_to_users_v311,
                client_ids_bound_to_users_v5,
            ],
        )
        .tests(
            &[OPENSSL, MOSQUITTO_PUB, MOSQUITTO_SUB, STDBUF],
            mote_tests::tests![
                mosquitto_tokens_of_each_algorithm_v311,
                mosquitto_tokens_of_each_algorithm_v5,
            ],
        )
        .tests(
            &[OPENSSL, PAHO],
            mote_tests::tests![paho_jwt_v311, paho_jwt_v5],
        )
        .run()
}

const V5: Protocol = Protocol::V5;
const V311: Protocol = Protocol::V311;
const Q1: QoS = QoS::AtLeastOnce;

// ---------------------------------------------------------------------------- helpers

/// A broker taking tokens of one key. Fields drop in order: the broker first, then the
/// directory of its files.
#[derive(Debug)]
struct Setup {
    broker: Broker,
    key: Key,
    dir: TempDir,
    /// Every token made for this broker, to check that none reaches its log.
    made: std::cell::RefCell<Vec<String>>,
}

impl Setup {
    /// A broker whose `[auth]` takes tokens of a new key of `alg`, with `users` in a
    /// password file (none: no password file) and `extra` lines.
    fn start(alg: Alg, users: &[(&str, &str)], extra: &str) -> Setup {
        let dir = TempDir::new("mote-jwt");
        let key = Key::new(&dir, alg);
        let mut toml = format!(
            "[auth]\njwt_algorithm = {:?}\njwt_key_file = {:?}\n",
            alg.name(),
            key.public.to_str().unwrap()
        );
        if !users.is_empty() {
            let passwd = dir.join("passwd");
            for (user, password) in users {
                set_password(&passwd, user, password);
            }
            toml.push_str(&format!("password_file = {:?}\n", passwd.to_str().unwrap()));
        }
        toml.push_str(extra);
        let broker = Broker::start_with(&["--memory"], Some(&toml));
        Setup {
            broker,
            key,
            dir,
            made: Default::default(),
        }
    }

    fn addr(&self) -> SocketAddr {
        self.broker.addr
    }

    /// A token of the broker's key for `claims`, remembered for [`Setup::log_is_clean`].
    fn token(&self, claims: &Value) -> String {
        let t = self.key.sign(claims);
        self.made.borrow_mut().push(t.clone());
        t
    }

    /// A token of `user` valid for `secs` more seconds, with `extra` claims.
    fn token_for(&self, user: &str, secs: i64, extra: Value) -> String {
        let mut claims = json!({"sub": user, "exp": now() + secs});
        if let (Value::Object(c), Value::Object(e)) = (&mut claims, extra) {
            c.extend(e);
        }
        self.token(&claims)
    }

    /// Sends SIGHUP to the broker.
    #[track_caller]
    fn sighup(&self) {
        let pid = self.broker.pid().expect("broker running");
        let st = Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(st.success(), "kill -HUP {pid}: {st}");
    }

    /// Asserts the broker logged no part of any token made for it.
    #[track_caller]
    fn log_is_clean(&self) {
        let log = self.broker.log();
        for t in self.made.borrow().iter() {
            for part in secret_parts(t) {
                assert!(
                    !log.contains(part),
                    "the log holds a part of a token ({part}):\n{}",
                    tail(&log, 40)
                );
            }
        }
    }
}

/// A CONNECT (keep alive 30, clean start) with these credentials.
fn creds<'a>(
    protocol: Protocol,
    client_id: &'a str,
    user: Option<&'a str>,
    password: Option<&'a str>,
) -> Connect<'a> {
    Connect {
        username: user,
        password: password.map(str::as_bytes),
        ..connect_packet(protocol, client_id, true)
    }
}

/// Logs in and asserts the CONNACK accepted it.
#[track_caller]
fn login(addr: SocketAddr, protocol: Protocol, id: &str, user: Option<&str>, token: &str) -> Raw {
    let (raw, ack) = connect_raw(addr, &creds(protocol, id, user, Some(token)));
    let (_, code) = connack(&ack);
    assert_eq!(code, 0, "{id}: login refused: {}", ack.describe());
    raw
}

/// A login that must be refused: the CONNACK code; asserts the broker then closes the
/// connection without sending anything more.
#[track_caller]
fn refused(
    addr: SocketAddr,
    protocol: Protocol,
    id: &str,
    user: Option<&str>,
    password: Option<&str>,
) -> u8 {
    let (mut raw, ack) = connect_raw(addr, &creds(protocol, id, user, password));
    let (present, code) = connack(&ack);
    assert_ne!(code, 0, "{id}: login accepted: {}", ack.describe());
    assert!(!present, "refused CONNACK with Session Present 1");
    let after = raw.expect_closed_within(WAIT);
    assert!(
        after.is_empty(),
        "packets after a refused CONNACK: {:?}",
        after.iter().map(Frame::describe).collect::<Vec<_>>()
    );
    code
}

/// Publishes `topic` at QoS 1 and returns the PUBACK's code (0 when absent, as always
/// in 3.1.1). The sender must not be subscribed to the topic.
#[track_caller]
fn publish_code(raw: &mut Raw, topic: &str, packet_id: u16) -> u8 {
    raw.send(&Packet::Publish(publish(
        topic,
        topic.as_bytes(),
        Q1,
        packet_id,
    )));
    let ack = raw.expect_kind(4);
    ack.body().get(2).copied().unwrap_or(0)
}

/// SUBSCRIBE of each `(filter, granted)` at QoS 1 in one packet; asserts the codes: 1
/// when granted, 0x87 (3.1.1: 0x80) when refused.
#[track_caller]
fn check_suback(raw: &mut Raw, filters: &[(&str, bool)]) {
    let denied = if raw.protocol == V5 { 0x87 } else { 0x80 };
    let entries: Vec<(&str, SubOptions)> = filters
        .iter()
        .map(|(f, _)| (*f, SubOptions::qos(Q1)))
        .collect();
    let got = raw.subscribe_with(7, &entries, None);
    let want: Vec<u8> = filters
        .iter()
        .map(|(_, ok)| if *ok { 1 } else { denied })
        .collect();
    assert_eq!(got, want, "SUBACK codes for {filters:?}");
}

/// Waits (5 s at most) until the broker logged `n` lines holding `needle`.
#[track_caller]
fn wait_log_count(broker: &Broker, needle: &str, n: usize) {
    let end = Instant::now() + WAIT;
    while broker.log().matches(needle).count() < n {
        assert!(
            Instant::now() < end,
            "fewer than {n} log lines with {needle:?}; log:\n{}",
            tail(&broker.log(), 40)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Milliseconds since the epoch, now.
fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

// ---------------------------------------------------------------------------- logins

fn hs256_token_connects_v311_and_v5() {
    let s = Setup::start(Alg::Hs256, &[], "");
    let t = s.token_for("dev1", 300, json!({}));
    // MQTT 5 may send a password alone; 3.1.1 needs a user name with it, which must
    // then be the token's.
    let mut a = login(s.addr(), V5, "a", None, &t);
    let mut b = login(s.addr(), V311, "b", Some("dev1"), &t);
    let mut c = login(s.addr(), V5, "c", Some("dev1"), &t);
    // The user name is the token's: `%u` rules see it (here: no rules file, all open).
    b.subscribe("t/#", Q1);
    assert_eq!(publish_code(&mut a, "t/1", 1), 0);
    expect_topic(&mut b, "t/1");
    ping(&mut c, "c");
    // Without a password file, a user name with no token is not taken as given.
    assert_eq!(refused(s.addr(), V5, "d", Some("dev1"), None), 0x86);
    assert_eq!(
        refused(s.addr(), V311, "d", Some("dev1"), Some("password")),
        4
    );
    assert_eq!(refused(s.addr(), V5, "d", None, None), 0x87, "anonymous");
    s.log_is_clean();
}

fn rs256_and_es256_tokens_connect() {
    for alg in [Alg::Rs256, Alg::Es256] {
        let s = Setup::start(alg, &[], "");
        let t = s.token_for("dev1", 300, json!({}));
        for protocol in [V5, V311] {
            let mut raw = login(s.addr(), protocol, "dev1-a", Some("dev1"), &t);
            ping(&mut raw, alg.name());
        }
        // The same claims signed by another key of the same kind, and a token naming
        // another algorithm (an HS256 one made with the public key as its secret: the
        // classic confusion), are refused.
        let other = Key::new(&s.dir, alg).sign(&json!({"sub": "dev1", "exp": now() + 300}));
        assert_eq!(
            refused(s.addr(), V5, "x", None, Some(&other)),
            0x86,
            "{}: another key",
            alg.name()
        );
        let public = std::fs::read(&s.key.public).unwrap();
        let claims = json!({"sub": "dev1", "exp": now() + 300});
        let hs = tokens::sign_hs256(&s.dir.path, &public, &claims);
        assert_eq!(
            refused(s.addr(), V311, "x", Some("dev1"), Some(&hs)),
            4,
            "{}: HS256 with the public key",
            alg.name()
        );
        s.made.borrow_mut().extend([other, hs]);
        s.log_is_clean();
    }
}

fn refused_tokens(protocol: Protocol) {
    let s = Setup::start(
        Alg::Hs256,
        &[],
        "jwt_audience = \"mote\"\njwt_issuer = \"https://issuer.example\"\n",
    );
    let bad = if protocol == V5 { 0x86 } else { 4 };
    let good = |extra: Value| {
        let mut c = json!({"sub": "dev1", "exp": now() + 300, "aud": "mote",
            "iss": "https://issuer.example"});
        if let (Value::Object(c), Value::Object(e)) = (&mut c, extra) {
            c.extend(e);
        }
        c
    };
    let ok = s.token(&good(json!({})));
    login(s.addr(), protocol, "ok", Some("dev1"), &ok);
    let forged = Key::new(&s.dir, Alg::Hs256).sign(&good(json!({})));
    let mut no_exp = good(json!({}));
    no_exp.as_object_mut().unwrap().remove("exp");
    let cases: Vec<(&str, String, &str)> = vec![
        ("bad signature", forged, "bad signature"),
        (
            "expired",
            s.token(&good(json!({"exp": now() - 5}))),
            "token expired",
        ),
        (
            "not yet valid",
            s.token(&good(json!({"nbf": now() + 120}))),
            "token not yet valid",
        ),
        (
            "wrong audience",
            s.token(&good(json!({"aud": "other"}))),
            "wrong audience",
        ),
        (
            "wrong issuer",
            s.token(&good(json!({"iss": "https://evil.example"}))),
            "wrong issuer",
        ),
        ("no exp", s.token(&no_exp), "no exp claim"),
        (
            "HS512",
            s.key.sign_as("HS512", &good(json!({}))),
            "token signed with another algorithm",
        ),
        (
            "no user",
            s.token(&good(json!({"sub": ""}))),
            "no user name in the token",
        ),
    ];
    for (what, token, reason) in &cases {
        s.made.borrow_mut().push(token.clone());
        assert_eq!(
            refused(s.addr(), protocol, "r", Some("dev1"), Some(token)),
            bad,
            "{what}"
        );
        // The reason is logged, the token never.
        let line = format!("reason={reason}");
        wait_log_count(&s.broker, &line, 1);
    }
    // A user name that is not the token's.
    assert_eq!(
        refused(s.addr(), protocol, "r", Some("dev2"), Some(&ok)),
        bad,
        "another user name"
    );
    wait_log_count(&s.broker, "the user name is not the token's", 1);
    s.log_is_clean();
}

fn refused_tokens_v311() {
    refused_tokens(V311);
}

fn refused_tokens_v5() {
    refused_tokens(V5);
}

// ---------------------------------------------------------------------------- rules

fn acl_claim_enforced(protocol: Protocol) {
    let s = Setup::start(Alg::Es256, &[], "");
    let rules = json!({"acl": {"pub": ["sensors/%c/#"], "sub": ["cmd/%u/#"], "all": ["both/%u"]}});
    let t = s.token_for("dev1", 300, rules);
    // A token without the claim: no rules file, so everything is open to it.
    let w = s.token_for("watcher", 300, json!({}));
    let mut watcher = login(s.addr(), protocol, "watcher", Some("watcher"), &w);
    watcher.subscribe("#", Q1);
    let mut dev = login(s.addr(), protocol, "dev1-a", Some("dev1"), &t);

    check_suback(
        &mut dev,
        &[
            ("cmd/dev1/#", true),
            ("cmd/dev2/#", false),
            ("cmd/#", false),
            ("#", false),
            ("sensors/dev1-a/#", false),
            ("both/dev1", true),
        ],
    );
    // Allowed writes reach the watcher; refused ones: MQTT 5 PUBACK 0x87, 3.1.1
    // acknowledged as usual; neither is delivered.
    let refusal = if protocol == V5 { 0x87 } else { 0 };
    assert!(publish_code(&mut dev, "sensors/dev1-a/temp", 1) < 0x80);
    expect_topic(&mut watcher, "sensors/dev1-a/temp");
    assert_eq!(publish_code(&mut dev, "sensors/dev1-b/temp", 2), refusal);
    assert_eq!(publish_code(&mut dev, "other/x", 3), refusal);
    assert_eq!(publish_code(&mut dev, "cmd/dev1/x", 4), refusal);
    watcher.expect_nothing();
    // The dev reads what its claim lets it read, and only that.
    for topic in ["cmd/dev1/go", "cmd/dev2/go", "both/dev1"] {
        assert!(publish_code(&mut watcher, topic, 10) < 0x80);
        // The watcher (on `#`) gets its own message back.
        expect_topic(&mut watcher, topic);
    }
    expect_topic(&mut dev, "cmd/dev1/go");
    expect_topic(&mut dev, "both/dev1");
    dev.expect_nothing();
    s.log_is_clean();
}

fn acl_claim_enforced_v311() {
    acl_claim_enforced(V311);
}

fn acl_claim_enforced_v5() {
    acl_claim_enforced(V5);
}

// ---------------------------------------------------------------------------- expiry

/// A client whose token expires in about 3 s is closed then, not before: MQTT 5 with
/// DISCONNECT 0xA0 (Maximum connect time), 3.1.1 without a packet. The 3.1.1 client
/// sends nothing meanwhile (its connection dozes), the MQTT 5 one pings.
fn expired_token_closes_the_connection(protocol: Protocol) {
    let s = Setup::start(Alg::Hs256, &[], "");
    let exp = now() + 3;
    let t = s.token(&json!({"sub": "dev1", "exp": exp}));
    let long = s.token_for("dev2", 300, json!({}));
    let mut dev = login(s.addr(), protocol, "dev1", Some("dev1"), &t);
    let mut other = login(s.addr(), protocol, "dev2", Some("dev2"), &long);
    if protocol == V5 {
        std::thread::sleep(Duration::from_millis(1000));
        ping(&mut dev, "before expiry");
    }
    let frames = dev.expect_closed_within(Duration::from_secs(6));
    let closed_ms = now_ms();
    let exp_ms = u128::try_from(exp).unwrap() * 1000;
    assert!(
        closed_ms + 50 >= exp_ms,
        "closed {} ms before its token expired",
        exp_ms - closed_ms
    );
    assert!(
        closed_ms <= exp_ms + 3000,
        "closed {} ms after its token expired",
        closed_ms - exp_ms
    );
    let reasons: Vec<Option<u8>> = frames.iter().map(Frame::disconnect_reason).collect();
    if protocol == V5 {
        assert_eq!(reasons, vec![Some(0xA0)], "DISCONNECT 0xA0 expected");
    } else {
        assert!(frames.is_empty(), "3.1.1 close with packets: {reasons:?}");
    }
    wait_log_count(&s.broker, "credential expired; disconnecting", 1);
    // Another client is untouched; the expired token no longer logs in.
    ping(&mut other, "other");
    let bad = if protocol == V5 { 0x86 } else { 4 };
    assert_eq!(
        refused(s.addr(), protocol, "dev1", Some("dev1"), Some(&t)),
        bad
    );
    s.log_is_clean();
}

fn expired_token_closes_the_connection_v311() {
    expired_token_closes_the_connection(V311);
}

fn expired_token_closes_the_connection_v5() {
    expired_token_closes_the_connection(V5);
}

// ---------------------------------------------------------------------------- reload

fn sighup_rotates_the_key_and_refuses_a_bad_one() {
    let s = Setup::start(Alg::Es256, &[], "");
    let old = s.token_for("dev1", 300, json!({}));
    let mut kept = login(s.addr(), V5, "kept", None, &old);
    kept.subscribe("t/#", Q1);

    // Rotate: the key file now holds another public key.
    let next = Key::new(&s.dir, Alg::Es256);
    std::fs::copy(&next.public, &s.key.public).unwrap();
    s.sighup();
    wait_log_count(&s.broker, "access policy in force", 2);
    let new = next.sign(&json!({"sub": "dev2", "exp": now() + 300}));
    s.made.borrow_mut().push(new.clone());
    assert_eq!(refused(s.addr(), V5, "old", None, Some(&old)), 0x86);
    let mut fresh = login(s.addr(), V311, "new", Some("dev2"), &new);
    // The client connected with the old key stays, and works.
    assert_eq!(publish_code(&mut fresh, "t/1", 1), 0);
    expect_topic(&mut kept, "t/1");

    // A bad key file is refused at reload; the key in force stays.
    std::fs::write(&s.key.public, "-----BEGIN PUBLIC KEY-----\nnot a key\n").unwrap();
    s.sighup();
    wait_log_count(&s.broker, "reload refused", 1);
    login(s.addr(), V5, "again", None, &new);
    ping(&mut kept, "kept");
    s.log_is_clean();
}

// ---------------------------------------------------------------------------- binding

fn client_ids_bound_to_users(protocol: Protocol) {
    let s = Setup::start(
        Alg::Hs256,
        &[("alice", "alice-pw"), ("bob", "bob-pw")],
        "client_id_patterns = [\"%u-*\"]\n",
    );
    let rejected = if protocol == V5 { 0x85 } else { 2 };
    let pw = |id: &str, user: &str, password: &str| {
        connect_raw(s.addr(), &creds(protocol, id, Some(user), Some(password)))
    };
    let (mut bob, ack) = pw("bob-1", "bob", "bob-pw");
    assert_eq!(connack(&ack).1, 0, "bob with his id");
    bob.subscribe("bob/#", Q1);
    // Alice's valid password does not get her bob's client id: refused, and bob keeps
    // his connection and session.
    let (mut raw, ack) = pw("bob-1", "alice", "alice-pw");
    assert_eq!(connack(&ack).1, rejected, "alice as bob-1");
    assert!(raw.expect_closed_within(WAIT).is_empty());
    let (mut alice, ack) = pw("alice-phone", "alice", "alice-pw");
    assert_eq!(connack(&ack).1, 0, "alice with her id");
    assert_eq!(publish_code(&mut alice, "bob/x", 1), 0);
    expect_topic(&mut bob, "bob/x");
    // A token's user is bound the same way; an id equal to the user name alone does not
    // match `%u-*`.
    let t = s.token_for("dev1", 300, json!({}));
    login(s.addr(), protocol, "dev1-x", Some("dev1"), &t);
    for id in ["bob-1", "dev1", "dev10-x"] {
        assert_eq!(
            refused(s.addr(), protocol, id, Some("dev1"), Some(&t)),
            rejected,
            "dev1 as {id}"
        );
    }
    if protocol == V5 {
        // An empty id (the broker would assign one) is refused too.
        assert_eq!(refused(s.addr(), V5, "", Some("dev1"), Some(&t)), 0x85);
    }
    ping(&mut bob, "bob");
    s.log_is_clean();
}

fn client_ids_bound_to_users_v311() {
    client_ids_bound_to_users(V311);
}

fn client_ids_bound_to_users_v5() {
    client_ids_bound_to_users(V5);
}

// ---------------------------------------------------------------------------- mosquitto

fn mosquitto_tokens_of_each_algorithm(version: &str) {
    let v5 = version == "mqttv5";
    for alg in [Alg::Hs256, Alg::Rs256, Alg::Es256] {
        let s = Setup::start(alg, &[], "client_id_patterns = [\"%u-*\"]\n");
        let rules = json!({"acl": {"sub": ["cmd/%u/#"]}});
        let sub_token = s.token_for("dev1", 300, rules);
        let pub_token = s.token_for("ctl", 300, json!({}));
        let mut sub = mosq_sub(
            &s.broker,
            &[
                "-V",
                version,
                "-i",
                "dev1-sub",
                "-u",
                "dev1",
                "-P",
                &sub_token,
                "-q",
                "1",
                "-t",
                "cmd/dev1/#",
                "-t",
                "cmd/dev2/#",
            ],
        );
        // Its token's rules let it read cmd/dev1/# only: the second filter is refused.
        let refusal = if v5 { "135" } else { "128" };
        let granted = sub
            .stdout_lines()
            .into_iter()
            .find(|l| l.starts_with("Subscribed (mid"))
            .unwrap();
        assert!(
            granted.ends_with(&format!(": 1, {refusal}")),
            "{}: {granted}",
            alg.name()
        );
        for topic in ["cmd/dev2/x", "cmd/dev1/x"] {
            mosq_pub(
                &s.broker,
                &[
                    "-V", version, "-i", "ctl-1", "-u", "ctl", "-P", &pub_token, "-q", "1", "-t",
                    topic, "-m", topic,
                ],
            );
        }
        assert!(
            wait_messages(&mut sub, 1, WAIT),
            "{}: nothing received\n{}",
            alg.name(),
            sub.dump()
        );
        std::thread::sleep(QUIET);
        assert_eq!(
            messages(&sub),
            vec!["cmd/dev1/x".to_owned()],
            "{}",
            alg.name()
        );
        // Refused: an expired token (bad user name or password), an id not the user's.
        let expired = s.token_for("ctl", -10, json!({}));
        let bad = if v5 { 134 } else { 4 };
        mosq_pub_refused(
            &s.broker,
            &[
                "-V", version, "-i", "ctl-2", "-u", "ctl", "-P", &expired, "-t", "x", "-m", "x",
            ],
            bad,
        );
        let rejected = if v5 { 133 } else { 2 };
        mosq_pub_refused(
            &s.broker,
            &[
                "-V", version, "-i", "dev1-x", "-u", "ctl", "-P", &pub_token, "-t", "x", "-m", "x",
            ],
            rejected,
        );
        s.log_is_clean();
    }
}

fn mosquitto_tokens_of_each_algorithm_v311() {
    mosquitto_tokens_of_each_algorithm("mqttv311");
}

fn mosquitto_tokens_of_each_algorithm_v5() {
    mosquitto_tokens_of_each_algorithm("mqttv5");
}

// ---------------------------------------------------------------------------- paho

/// The paho-mqtt 2.x side (motepaho's conventions: one JSON check per line).
const PAHO_SCRIPT: &str = r#""""JWT logins as paho-mqtt 2.x sees them (tests/jwt.rs)."""
import re
import time

import motepaho as mp

V311_CONNACK = re.compile(r"Received CONNACK \((\d+), (\d+)\)")


def attempt(args, client_id, user, password):
    c = mp.Client(client_id, args.version)
    c.c.username_pw_set(user, password)
    _, rc, _ = c.connect(args.port)
    raw = None
    for line in c.log:
        m = V311_CONNACK.search(line)
        if m:
            raw = int(m.group(2))
    return rc, raw, c


def main():
    p = mp.parser(__doc__)
    for a in ["--user", "--good", "--bad", "--expiring"]:
        p.add_argument(a, required=True)
    args = p.parse_args()
    run = mp.Run(args, "jwt_paho")
    v5 = args.version == "5"
    me = args.user + "-paho"

    for name, cid, token, want, want311 in [
        ("bad_token", me, args.bad, 0x86, 4),
        ("foreign_client_id", "someone-else", args.good, 0x85, 2),
    ]:
        rc, raw, c = attempt(args, cid, args.user, token)
        run.eq(name, rc, want)
        if not v5:
            run.eq(name + "_return_code", raw, want311)
        mp.pump([c], lambda: c.closed, 3.0)
        run.check(name + "_closed", c.closed)

    rc, _, c = attempt(args, me, args.user, args.good)
    run.eq("login", rc, 0)
    denied = 0x87 if v5 else 0x80
    subs = [("cmd/" + args.user + "/#", 1), ("loop/" + me + "/#", 1), ("other/#", 1)]
    run.eq("suback", c.subscribe(subs), [1, 1, denied])
    codes = {}

    def on_publish(cl, userdata, mid, reason_code, properties):
        codes[mid] = reason_code.value
        c.acked.add(mid)

    c.c.on_publish = on_publish
    sent = {}
    for topic in ["loop/" + me + "/a", "cmd/" + args.user + "/x", "other/x"]:
        mid = c.publish(topic, topic, qos=1)
        sent[topic] = mid
        mp.pump([c], lambda: mid in codes or c.closed, 5.0)
    run.eq("puback_allowed", codes.get(sent["loop/" + me + "/a"]), 0)
    run.eq("puback_read_only", codes.get(sent["cmd/" + args.user + "/x"]), 0x87 if v5 else 0)
    run.eq("puback_outside", codes.get(sent["other/x"]), 0x87 if v5 else 0)
    mp.settle([c], 0.5)
    run.eq("delivered", [m.topic for m in c.messages], ["loop/" + me + "/a"])
    c.disconnect()

    rc, _, e = attempt(args, me + "-exp", args.user, args.expiring)
    run.eq("expiring_login", rc, 0)
    started = time.monotonic()
    mp.pump([e], lambda: e.closed, 15.0)
    run.check("expired_closed", e.closed, after=time.monotonic() - started)
    if v5:
        reasons = [(server, rc) for server, rc, _ in e.disconnects]
        run.eq("expired_reason", reasons, [(True, 0xA0)])
    run.finish()


main()
"#;

fn paho_jwt(version: &str) {
    let s = Setup::start(Alg::Rs256, &[], "client_id_patterns = [\"%u-*\"]\n");
    let rules = json!({"acl": {"sub": ["cmd/%u/#"], "all": ["loop/%c/#"]}});
    let good = s.token_for("dev1", 300, rules.clone());
    let expiring = s.token_for("dev1", 8, rules);
    let bad = Key::new(&s.dir, Alg::Rs256).sign(&json!({"sub": "dev1", "exp": now() + 300}));
    s.made.borrow_mut().push(bad.clone());
    let script = s.dir.join("jwt_paho.py");
    std::fs::write(&script, PAHO_SCRIPT).unwrap();
    let mut cmd = Command::new("python3");
    cmd.arg(&script)
        .env("PYTHONPATH", python_dir())
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .args(["--port", &s.broker.port().to_string()])
        .args(["--version", version, "--timeout", "25"])
        .args(["--user", "dev1", "--good", &good, "--bad", &bad])
        .args(["--expiring", &expiring]);
    let mut checks = vec![
        "bad_token",
        "bad_token_closed",
        "foreign_client_id",
        "foreign_client_id_closed",
        "login",
        "suback",
        "puback_allowed",
        "puback_read_only",
        "puback_outside",
        "delivered",
        "expiring_login",
        "expired_closed",
    ];
    if version == "5" {
        checks.push("expired_reason");
    } else {
        checks.extend(["bad_token_return_code", "foreign_client_id_return_code"]);
    }
    run_script(
        &mut cmd,
        Duration::from_secs(30),
        &format!("jwt_paho.py --version {version}"),
        &checks,
        &s.broker,
    );
    s.log_is_clean();
}

fn paho_jwt_v311() {
    paho_jwt("311");
}

fn paho_jwt_v5() {
    paho_jwt("5");
}
