//! TLS and mTLS listeners (`[[listener]]`, `docs/tls.md`) end to end: `mosquitto_pub` /
//! `mosquitto_sub` over TLS 1.2 and 1.3, paho-mqtt's `tls_set`, client certificates,
//! the oldest TLS version, certificate rotation on SIGHUP, a bad certificate file at
//! reload, a client that sends garbage instead of a ClientHello, and client certificate
//! revocation (CRLs made with `openssl ca`): at connect, after a reload, expired, bad.
//!
//! A throwaway CA, server certificates for 127.0.0.1/localhost and client certificates
//! are made at run time with the `openssl` CLI (`common/certs.rs`). Run by
//! `mote_tests::harness` (`harness = false`): without `openssl`, the mosquitto clients,
//! `stdbuf` (or paho-mqtt for its test) a test is reported as ignored, with the reason,
//! and under `CI=true` it fails.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use common::certs::{
    identity_broker, log_count, make_leaf, mtls_required, openssl, pem, pki, s_client, tls_broker,
    wait_connected, wait_log, OwnCerts, OPENSSL,
};
use common::Proc;
use mote_tests::harness::{Suite, MOSQUITTO_PUB, MOSQUITTO_SUB, PAHO, STDBUF};
use mote_tests::{spawn, unique_path, Broker};

fn main() -> std::process::ExitCode {
    let code = Suite::new()
        .tests(
            &[OPENSSL, MOSQUITTO_PUB, MOSQUITTO_SUB, STDBUF],
            mote_tests::tests![
                mosquitto_tls12_relays_a_message,
                mosquitto_tls13_relays_a_message,
                client_that_does_not_trust_the_ca_fails,
                mtls_required_accepts_signed_client_refuses_others,
                mtls_optional_accepts_a_client_without_certificate,
                identity_as_username_from_client_certificate,
                min_tls_version_13_refuses_a_tls12_client,
                rotation_on_sighup_keeps_100_clients_and_serves_the_new_certificate,
                garbage_certificate_on_sighup_keeps_the_old_one,
                garbage_instead_of_client_hello_closes_only_that_socket,
                silent_client_closed_at_the_connect_timeout,
                plain_listener_unchanged_next_to_tls,
                crl_refuses_the_revoked_client_and_serves_the_good_one,
                crl_revocation_on_sighup_refuses_new_connections_keeps_established_ones,
                crl_file_change_picked_up_without_sighup,
                bad_crl_file_on_sighup_keeps_the_crl_in_force,
                expired_crl_refuses_client_certificates_with_a_clear_log_line,
            ],
        )
        .tests(
            &[OPENSSL],
            mote_tests::tests![bad_crl_file_at_start_stops_the_broker],
        )
        .tests(
            &[OPENSSL, PAHO],
            mote_tests::tests![paho_tls_set_connects_and_receives],
        )
        .run();
    common::certs::remove_pki();
    code
}

/// Longest any client process may run.
const CLIENT_LIMIT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------
// Certificates (the shared PKI is `common/certs.rs`)
// ---------------------------------------------------------------------------------------

/// A CA of the test's own for revocations: a copy of the shared `ca` (which signed the
/// server's certificate), a minimal `openssl.cnf` and its database, and two client
/// certificates it issued, `first` (CN device-first) and `second` (CN device-second).
/// `ca.crl` is the CRL the broker reads. Removed on drop.
struct CrlCa(PathBuf);

/// `openssl ca`'s configuration: only what `-revoke` and `-gencrl` need.
const CA_CNF: &str = "[ca]\ndefault_ca = ca_default\n[ca_default]\ndatabase = index.txt\n\
                      crlnumber = crlnumber\ndefault_md = sha256\nunique_subject = no\n\
                      default_crl_days = 2\n";

impl CrlCa {
    fn new() -> CrlCa {
        let dir = unique_path("mote-tls-crl", "");
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["ca.pem", "ca.key"] {
            std::fs::copy(pki().join(f), dir.join(f)).unwrap();
        }
        std::fs::write(dir.join("openssl.cnf"), CA_CNF).unwrap();
        std::fs::write(dir.join("index.txt"), "").unwrap();
        std::fs::write(dir.join("crlnumber"), "1000\n").unwrap();
        make_leaf(&dir, "ca", "first", "device-first", 3001, false);
        make_leaf(&dir, "ca", "second", "device-second", 3002, false);
        let ca = CrlCa(dir);
        ca.write_crl(&[]);
        ca
    }

    fn path(&self, f: &str) -> String {
        self.0.join(f).to_str().unwrap().to_owned()
    }

    /// `mosquitto_*` options to connect with client certificate `name`.
    fn tls(&self, name: &str) -> Vec<String> {
        vec![
            "--cafile".to_owned(),
            pem("ca.pem"),
            "--cert".to_owned(),
            self.path(&format!("{name}.pem")),
            "--key".to_owned(),
            self.path(&format!("{name}.key")),
        ]
    }

    /// The `[[listener]]` lines: this CA, certificates required, its CRL file.
    fn listener(&self) -> String {
        format!(
            "client_ca_file = {:?}\nrequire_certificate = true\ncrl_file = {:?}",
            self.path("ca.pem"),
            self.path("ca.crl")
        )
    }

    /// Revokes the certificate `name`.
    fn revoke(&self, name: &str) {
        let cert = format!("{name}.pem");
        openssl(&self.0, &self.ca_args(&["-revoke", &cert]));
    }

    /// Writes `ca.crl` at once (made aside, renamed over it) with `extra` `openssl ca
    /// -gencrl` options.
    fn write_crl(&self, extra: &[&str]) {
        let mut args = vec!["-gencrl", "-out", "ca.crl.new"];
        args.extend(extra);
        openssl(&self.0, &self.ca_args(&args));
        std::fs::rename(self.0.join("ca.crl.new"), self.0.join("ca.crl")).unwrap();
    }

    /// `openssl ca` with this CA's configuration, key and certificate, then `args`.
    fn ca_args<'a>(&self, args: &[&'a str]) -> Vec<&'a str> {
        let mut all = vec![
            "ca",
            "-config",
            "openssl.cnf",
            "-keyfile",
            "ca.key",
            "-cert",
            "ca.pem",
        ];
        all.extend(args);
        all
    }
}

impl Drop for CrlCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------------------
// Broker and clients
// ---------------------------------------------------------------------------------------

/// `mosquitto_pub -h 127.0.0.1 -p PORT ARGS...`, waited for (at most [`CLIENT_LIMIT`]);
/// its exit status (`None`: killed at the limit) and output.
fn mosq_pub(port: u16, args: &[&str]) -> (Option<ExitStatus>, String) {
    let child = spawn(
        Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(args),
    );
    let (st, out, err) = child.wait_output(CLIENT_LIMIT);
    (st, format!("{out}{err}"))
}

/// `mosquitto_pub` that must succeed.
#[track_caller]
fn mosq_pub_ok(broker: &Broker, port: u16, args: &[&str]) {
    let (st, out) = mosq_pub(port, args);
    assert!(
        st.is_some_and(|s| s.success()),
        "mosquitto_pub {args:?} failed ({st:?}): {out}\nbroker log:\n{}",
        broker.log()
    );
}

/// `mosquitto_pub` that must fail (refused, or the handshake failed).
#[track_caller]
fn mosq_pub_fails(broker: &Broker, port: u16, args: &[&str]) -> String {
    let (st, out) = mosq_pub(port, args);
    assert!(
        st.is_some_and(|s| !s.success()),
        "mosquitto_pub {args:?} should have failed ({st:?}): {out}\nbroker log:\n{}",
        broker.log()
    );
    out
}

/// `mosquitto_sub -h 127.0.0.1 -p PORT -d ARGS...` (line-buffered), returned once it is
/// subscribed.
#[track_caller]
fn mosq_sub(broker: &Broker, port: u16, args: &[&str]) -> Proc {
    let mut p = common::mosq_sub_on(port, args);
    common::wait_subscribed(&mut p, broker, args, Duration::from_secs(10));
    p
}

/// The message lines (not `-d` lines) of a finished `mosquitto_sub`.
fn messages(p: &mut Proc, broker: &Broker) -> Vec<String> {
    assert!(
        p.wait_exit(CLIENT_LIMIT).is_some(),
        "mosquitto_sub did not exit\n{}\nbroker log:\n{}",
        p.dump(),
        broker.log()
    );
    p.stdout_lines()
        .into_iter()
        .filter(|l| !common::is_debug_line(l))
        .collect()
}

/// Relays one message subscriber → publisher over TLS with `tls` client options.
fn relay(broker: &Broker, port: u16, tls: &[&str], topic: &str) {
    let mut sub_args = tls.to_vec();
    sub_args.extend(["-t", topic, "-q", "1", "-C", "1", "-W", "10"]);
    let mut sub = mosq_sub(broker, port, &sub_args);
    let mut pub_args = tls.to_vec();
    pub_args.extend(["-t", topic, "-q", "1", "-m", "over-tls"]);
    mosq_pub_ok(broker, port, &pub_args);
    assert_eq!(messages(&mut sub, broker), vec!["over-tls".to_owned()]);
}

/// Sends SIGHUP to the broker.
fn hangup(broker: &Broker) {
    let pid = broker.pid().unwrap().to_string();
    let st = Command::new("kill").args(["-HUP", &pid]).status().unwrap();
    assert!(st.success());
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

/// mosquitto's `--tls-version tlsv1.2` is "1.2 or newer" (it negotiates 1.3 with a
/// broker that has it); `openssl s_client -tls1_2` and paho (below) speak 1.2 only.
fn mosquitto_tls12_relays_a_message() {
    let (broker, port) = tls_broker(None, "");
    let ca = pem("ca.pem");
    relay(
        &broker,
        port,
        &["--cafile", &ca, "--tls-version", "tlsv1.2"],
        "tls/12",
    );
    let (st, out) = s_client(port, &["-tls1_2"]);
    assert!(st.is_some_and(|s| s.success()), "{out}");
    assert!(out.contains("Protocol  : TLSv1.2"), "{out}");
}

fn mosquitto_tls13_relays_a_message() {
    let (broker, port) = tls_broker(None, "");
    let ca = pem("ca.pem");
    relay(
        &broker,
        port,
        &["--cafile", &ca, "--tls-version", "tlsv1.3"],
        "tls/13",
    );
    // ALPN "mqtt" is offered and agreed when the client asks for it.
    let (st, out) = s_client(port, &["-alpn", "mqtt"]);
    assert!(st.is_some_and(|s| s.success()), "{out}");
    assert!(out.contains("ALPN protocol: mqtt"), "{out}");
}

fn client_that_does_not_trust_the_ca_fails() {
    let (broker, port) = tls_broker(None, "");
    let other = pem("other-ca.pem");
    mosq_pub_fails(
        &broker,
        port,
        &["--cafile", &other, "-t", "x", "-m", "y", "-q", "1"],
    );
    wait_log(&broker, "TLS handshake failed", 1, Duration::from_secs(5));
    // The listener still serves a client that trusts the CA.
    let ca = pem("ca.pem");
    mosq_pub_ok(&broker, port, &["--cafile", &ca, "-t", "x", "-m", "y"]);
}

fn mtls_required_accepts_signed_client_refuses_others() {
    let ca = pem("ca.pem");
    let (broker, port) = tls_broker(None, &mtls_required());
    let (cert, key) = (pem("client.pem"), pem("client.key"));
    for version in ["tlsv1.2", "tlsv1.3"] {
        let with_cert = [
            "--cafile",
            &ca,
            "--cert",
            &cert,
            "--key",
            &key,
            "--tls-version",
            version,
        ];
        relay(&broker, port, &with_cert, &format!("mtls/{version}"));
        // Without a certificate.
        let args = [
            "--cafile",
            &ca,
            "--tls-version",
            version,
            "-t",
            "m",
            "-m",
            "x",
            "-q",
            "1",
        ];
        mosq_pub_fails(&broker, port, &args);
        // With a self-signed one (same CN as the good one).
        let (rogue, rogue_key) = (pem("rogue.pem"), pem("rogue.key"));
        let args = [
            "--cafile",
            &ca,
            "--cert",
            &rogue,
            "--key",
            &rogue_key,
            "--tls-version",
            version,
            "-t",
            "m",
            "-m",
            "x",
            "-q",
            "1",
        ];
        mosq_pub_fails(&broker, port, &args);
    }
    assert_eq!(
        log_count(&broker, "client connected"),
        4,
        "only the two relays' clients may connect; log:\n{}",
        broker.log()
    );
}

fn mtls_optional_accepts_a_client_without_certificate() {
    let ca = pem("ca.pem");
    let extra = format!("client_ca_file = {ca:?}");
    let (broker, port) = tls_broker(None, &extra);
    mosq_pub_ok(
        &broker,
        port,
        &["--cafile", &ca, "-t", "o", "-m", "x", "-q", "1"],
    );
    let (cert, key) = (pem("client.pem"), pem("client.key"));
    mosq_pub_ok(
        &broker,
        port,
        &[
            "--cafile", &ca, "--cert", &cert, "--key", &key, "-t", "o", "-m", "x",
        ],
    );
    // A certificate the CA did not sign is refused even when none is required.
    let (rogue, rogue_key) = (pem("rogue.pem"), pem("rogue.key"));
    mosq_pub_fails(
        &broker,
        port,
        &[
            "--cafile", &ca, "--cert", &rogue, "--key", &rogue_key, "-t", "o", "-m", "x", "-q", "1",
        ],
    );
}

fn identity_as_username_from_client_certificate() {
    let ca = pem("ca.pem");
    // Only the user device-1 may use devices/device-1/#; the certificate's CN is it.
    let (broker, port, _acl) = identity_broker();
    let (cert, key) = (pem("client.pem"), pem("client.key"));
    // The CONNECT's user name is not what counts: the certificate's CN is.
    let tls = [
        "--cafile",
        &ca,
        "--cert",
        &cert,
        "--key",
        &key,
        "-u",
        "someone-else",
        "-P",
        "x",
    ];
    relay(&broker, port, &tls, "devices/device-1/t");
}

fn min_tls_version_13_refuses_a_tls12_client() {
    let (broker, port) = tls_broker(None, "min_tls_version = \"1.3\"");
    let (st, out) = s_client(port, &["-tls1_2"]);
    assert!(!st.is_some_and(|s| s.success()), "TLS 1.2 accepted: {out}");
    wait_log(&broker, "TLS handshake failed", 1, Duration::from_secs(5));
    let ca = pem("ca.pem");
    let (st, out) = s_client(port, &["-tls1_3"]);
    assert!(st.is_some_and(|s| s.success()), "TLS 1.3 refused: {out}");
    relay(
        &broker,
        port,
        &["--cafile", &ca, "--tls-version", "tlsv1.3"],
        "v13",
    );
}

/// Subscribers kept connected across the rotation (issue #14 asks for 100).
const ROTATION_CLIENTS: usize = 100;
/// They are started this many at a time: under the broker's `max_pending_per_ip` (64),
/// beyond which it closes connections still in their handshake.
const ROTATION_WAVE: usize = 25;
/// The longest all of them may take to subscribe (a few seconds, normally).
const ROTATION_SUBSCRIBED_WITHIN: Duration = Duration::from_secs(30);

/// The `mosquitto_sub` options of the rotation's subscriber `id`: it waits for one
/// message, 40 s at most (longer than the subscribing and the reload together).
fn rotation_sub_args<'a>(ca: &'a str, id: &'a str) -> [&'a str; 12] {
    [
        "--cafile", ca, "-i", id, "-t", "rot/t", "-q", "1", "-C", "1", "-W", "40",
    ]
}

fn rotation_on_sighup_keeps_100_clients_and_serves_the_new_certificate() {
    let certs = OwnCerts::new();
    let (broker, port) = tls_broker(Some(&certs), "");
    let ca = pem("ca.pem");
    let (st, out) = s_client(port, &[]);
    assert!(st.is_some_and(|s| s.success()), "{out}");
    assert!(out.contains("CN = mote-server-1"), "{out}");
    let ids: Vec<String> = (0..ROTATION_CLIENTS).map(|i| format!("rot-{i}")).collect();
    let deadline = Instant::now() + ROTATION_SUBSCRIBED_WITHIN;
    // Each subscriber is in `subs` from its start: if the test fails half way, dropping
    // `subs` kills and reaps every one started so far.
    let mut subs: Vec<Proc> = Vec::with_capacity(ROTATION_CLIENTS);
    for wave in ids.chunks(ROTATION_WAVE) {
        let first = subs.len();
        for id in wave {
            subs.push(common::mosq_sub_on(port, &rotation_sub_args(&ca, id)));
        }
        for (sub, id) in subs[first..].iter_mut().zip(wave) {
            let left = deadline.saturating_duration_since(Instant::now());
            common::wait_subscribed(sub, &broker, &rotation_sub_args(&ca, id), left);
        }
    }
    wait_log(
        &broker,
        "client connected",
        ROTATION_CLIENTS,
        Duration::from_secs(5),
    );
    // A new certificate (same CA, new key), in place, then SIGHUP.
    certs.replace(
        "server.key",
        &std::fs::read(pki().join("server2.key")).unwrap(),
    );
    certs.replace(
        "server.pem",
        &std::fs::read(pki().join("server2.pem")).unwrap(),
    );
    hangup(&broker);
    wait_log(
        &broker,
        "TLS certificates reloaded",
        1,
        Duration::from_secs(5),
    );
    let (st, out) = s_client(port, &[]);
    assert!(st.is_some_and(|s| s.success()), "{out}");
    assert!(out.contains("CN = mote-server-2"), "new handshakes: {out}");
    // Nobody was dropped: the subscribers are the only connections so far, and all
    // receive.
    assert_eq!(
        log_count(&broker, "client disconnected"),
        0,
        "{}",
        broker.log()
    );
    mosq_pub_ok(
        &broker,
        port,
        &["--cafile", &ca, "-t", "rot/t", "-q", "1", "-m", "after"],
    );
    // `messages` waits for each to exit (`-C 1`: after its message), which reaps it.
    for sub in &mut subs {
        assert_eq!(messages(sub, &broker), vec!["after".to_owned()]);
    }
    // The subscribers and one publisher connected, each once: no reconnection.
    assert_eq!(
        log_count(&broker, "client connected"),
        ROTATION_CLIENTS + 1,
        "{}",
        broker.log()
    );
}

fn garbage_certificate_on_sighup_keeps_the_old_one() {
    let certs = OwnCerts::new();
    let (broker, port) = tls_broker(Some(&certs), "");
    let ca = pem("ca.pem");
    certs.replace(
        "server.pem",
        b"-----BEGIN CERTIFICATE-----\nnot base64 at all!\n",
    );
    hangup(&broker);
    wait_log(
        &broker,
        "TLS certificates not reloaded",
        1,
        Duration::from_secs(5),
    );
    let (st, out) = s_client(port, &[]);
    assert!(st.is_some_and(|s| s.success()), "{out}");
    assert!(out.contains("CN = mote-server-1"), "{out}");
    relay(&broker, port, &["--cafile", &ca], "still/serving");
    // A key that does not match the certificate is refused as well.
    certs.replace(
        "server.pem",
        &std::fs::read(pki().join("server.pem")).unwrap(),
    );
    certs.replace(
        "server.key",
        &std::fs::read(pki().join("server2.key")).unwrap(),
    );
    hangup(&broker);
    wait_log(
        &broker,
        "TLS certificates not reloaded",
        2,
        Duration::from_secs(5),
    );
    mosq_pub_ok(&broker, port, &["--cafile", &ca, "-t", "x", "-m", "y"]);
}

fn garbage_instead_of_client_hello_closes_only_that_socket() {
    let (broker, port) = tls_broker(None, "");
    let ca = pem("ca.pem");
    let mut sub = mosq_sub(
        &broker,
        port,
        &["--cafile", &ca, "-t", "g", "-C", "1", "-W", "10"],
    );
    let mut raw = TcpStream::connect(("127.0.0.1", port)).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\x10\x20garbage")
        .unwrap();
    let mut buf = [0u8; 512];
    let started = Instant::now();
    // The broker may answer with an alert; then it closes.
    loop {
        match raw.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => assert!(started.elapsed() < Duration::from_secs(5), "not closed"),
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "not closed in time"
    );
    wait_log(&broker, "TLS handshake failed", 1, Duration::from_secs(5));
    mosq_pub_ok(&broker, port, &["--cafile", &ca, "-t", "g", "-m", "alive"]);
    assert_eq!(messages(&mut sub, &broker), vec!["alive".to_owned()]);
}

fn silent_client_closed_at_the_connect_timeout() {
    let (broker, port) = tls_broker(None, "[mqtt]\nconnect_timeout_ms = 300");
    let mut raw = TcpStream::connect(("127.0.0.1", port)).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 64];
    assert!(matches!(raw.read(&mut buf), Ok(0) | Err(_)));
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(3),
        "closed after {waited:?}"
    );
    wait_log(
        &broker,
        "TLS handshake not done within the connect timeout",
        1,
        Duration::from_secs(2),
    );
}

fn plain_listener_unchanged_next_to_tls() {
    let (broker, port) = tls_broker(None, "");
    let mut sub = mosq_sub(
        &broker,
        broker.port(),
        &["-t", "mix", "-C", "1", "-W", "10"],
    );
    let ca = pem("ca.pem");
    // Published over TLS, received over plain TCP.
    mosq_pub_ok(
        &broker,
        port,
        &["--cafile", &ca, "-t", "mix", "-m", "across"],
    );
    assert_eq!(messages(&mut sub, &broker), vec!["across".to_owned()]);
    // The TLS port does not speak plain MQTT.
    mosq_pub_fails(&broker, port, &["-t", "mix", "-m", "x", "-q", "1"]);
}

/// paho-mqtt 2.x over TLS (`tls_set` with the CA): connect, subscribe, publish, receive.
const PAHO_TLS: &str = r#"
import sys, threading
import paho.mqtt.client as mqtt
port, ca, only12 = int(sys.argv[1]), sys.argv[2], sys.argv[3] == "1.2"
got = threading.Event()
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="paho-tls", protocol=mqtt.MQTTv5)
if only12:
    import ssl
    ctx = ssl.create_default_context(cafile=ca)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    c.tls_set_context(ctx)
else:
    c.tls_set(ca_certs=ca)
topic = "paho/tls/" + sys.argv[3]
c.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
c.on_subscribe = lambda c, u, mid, rcs, p: c.publish(topic, b"hello", qos=1)
def on_message(c, u, m):
    print("got", m.topic, m.payload.decode(), flush=True)
    got.set()
c.on_message = on_message
c.connect("127.0.0.1", port, 30)
c.loop_start()
ok = got.wait(10)
c.disconnect()
c.loop_stop()
sys.exit(0 if ok else 1)
"#;

fn paho_tls_set_connects_and_receives() {
    let (broker, port) = tls_broker(None, "");
    // With paho's defaults (TLS 1.3 here), then with a context that stops at TLS 1.2.
    for (tls, version) in [("any", "TLSv1_3"), ("1.2", "TLSv1_2")] {
        let child = spawn(
            Command::new("python3")
                .args(["-c", PAHO_TLS])
                .arg(port.to_string())
                .arg(pem("ca.pem"))
                .arg(tls),
        );
        let (st, out, err) = child.wait_output(CLIENT_LIMIT);
        assert!(
            st.is_some_and(|s| s.success()),
            "paho over TLS ({tls}) failed ({st:?})\n{out}\n{err}\nbroker log:\n{}",
            broker.log()
        );
        assert!(out.contains(&format!("got paho/tls/{tls} hello")), "{out}");
        wait_connected(&broker, "paho-tls", Some(version));
    }
}

// ---------------------------------------------------------------------------------------
// Revocation (CRL)
// ---------------------------------------------------------------------------------------

/// Why a client certificate is refused: as the broker's failed-handshake line says it,
/// and the TLS alert the client reports (OpenSSL's words, in mosquitto's output).
struct Refusal {
    log: &'static str,
    alert: &'static str,
}

/// The certificate is on the CRL.
const REVOKED: Refusal = Refusal {
    log: "invalid peer certificate: Revoked",
    alert: "alert certificate revoked",
};

/// The CRL of its issuer is past its `nextUpdate` (rustls sends `unknown_ca`).
const CRL_EXPIRED: Refusal = Refusal {
    log: "certificate revocation list expired",
    alert: "alert unknown ca",
};

/// A connection with certificate `name` of `ca` that must be refused during the TLS
/// handshake: the client fails with the TLS alert of `why`, never sees a CONNACK, and
/// the broker logs one more failed handshake saying `why`.
#[track_caller]
fn refused_at_handshake(broker: &Broker, port: u16, ca: &CrlCa, name: &str, why: &Refusal) {
    let (alert, why) = (why.alert, why.log);
    let before = log_count(broker, why);
    let mut args = ca.tls(name);
    args.extend(["-d", "-i", "refused", "-t", "crl/x", "-m", "x", "-q", "1"].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = mosq_pub_fails(broker, port, &args);
    assert!(!out.contains("CONNACK"), "{name} got a CONNACK: {out}");
    assert!(out.contains(alert), "{name}: no {alert:?} in: {out}");
    wait_log(broker, why, before + 1, Duration::from_secs(5));
    assert!(
        broker
            .log()
            .lines()
            .filter(|l| l.contains(why))
            .all(|l| l.contains("TLS handshake failed")),
        "{}",
        broker.log()
    );
    assert!(
        !broker.log().contains("client=\"refused\""),
        "a refused client reached MQTT; log:\n{}",
        broker.log()
    );
}

/// `mosquitto_pub -l` with certificate `name`: one connection that publishes each line
/// written to its stdin to `topic`, until stdin is closed.
fn line_publisher(port: u16, ca: &CrlCa, name: &str, id: &str, topic: &str) -> mote_tests::Reaped {
    let child = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(ca.tls(name))
        .args(["-i", id, "-t", topic, "-q", "1", "-l"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    mote_tests::Reaped(child)
}

/// Mosquitto-style options of `ca.tls(name)` plus `rest`, as `&str`s.
fn with_tls<'a>(tls: &'a [String], rest: &[&'a str]) -> Vec<&'a str> {
    tls.iter()
        .map(String::as_str)
        .chain(rest.iter().copied())
        .collect()
}

fn crl_refuses_the_revoked_client_and_serves_the_good_one() {
    let ca = CrlCa::new();
    ca.revoke("first");
    ca.write_crl(&[]);
    let (broker, port) = tls_broker(None, &ca.listener());
    let good = ca.tls("second");
    relay(&broker, port, &with_tls(&good, &[]), "crl/good");
    refused_at_handshake(&broker, port, &ca, "first", &REVOKED);
    // TLS 1.2 checks it too (mosquitto's clients negotiate 1.3 here).
    let (cert, key) = (ca.path("first.pem"), ca.path("first.key"));
    let (st, out) = s_client(port, &["-tls1_2", "-cert", &cert, "-key", &key]);
    assert!(!st.is_some_and(|s| s.success()), "TLS 1.2 accepted: {out}");
    wait_log(&broker, REVOKED.log, 2, Duration::from_secs(5));
    // The relay's two clients, nobody else.
    assert_eq!(
        log_count(&broker, "client connected"),
        2,
        "{}",
        broker.log()
    );
}

fn crl_revocation_on_sighup_refuses_new_connections_keeps_established_ones() {
    let ca = CrlCa::new();
    ca.revoke("first");
    ca.write_crl(&[]);
    let (broker, port) = tls_broker(None, &ca.listener());
    let second = ca.tls("second");
    // `second` connects twice, before it is revoked: a subscriber and a publisher.
    let mut sub = mosq_sub(
        &broker,
        port,
        &with_tls(
            &second,
            &[
                "-i",
                "second-sub",
                "-t",
                "crl/live",
                "-q",
                "1",
                "-C",
                "1",
                "-W",
                "20",
            ],
        ),
    );
    let mut publisher = line_publisher(port, &ca, "second", "second-pub", "crl/live");
    wait_connected(&broker, "second-pub", None);
    // Revoke it too, write the CRL anew, SIGHUP.
    ca.revoke("second");
    ca.write_crl(&[]);
    hangup(&broker);
    wait_log(
        &broker,
        "TLS certificates reloaded",
        1,
        Duration::from_secs(5),
    );
    // A new connection with it is refused...
    refused_at_handshake(&broker, port, &ca, "second", &REVOKED);
    // ...the established ones stay: the publisher still publishes, the subscriber
    // still receives.
    let mut stdin = publisher.0.stdin.take().unwrap();
    stdin.write_all(b"after-revocation\n").unwrap();
    stdin.flush().unwrap();
    assert_eq!(
        messages(&mut sub, &broker),
        vec!["after-revocation".to_owned()]
    );
    assert!(
        !broker
            .log()
            .lines()
            .any(|l| l.contains("client disconnected") && l.contains("client=\"second-pub\"")),
        "the established publisher was dropped; log:\n{}",
        broker.log()
    );
    // Closing its stdin ends it; it exits 0 only if its connection was still good.
    drop(stdin);
    let end = Instant::now() + CLIENT_LIMIT;
    let status = loop {
        match publisher.0.try_wait().unwrap() {
            Some(st) => break st,
            None if Instant::now() < end => std::thread::sleep(Duration::from_millis(20)),
            None => panic!("the publisher did not exit; log:\n{}", broker.log()),
        }
    };
    assert!(
        status.success(),
        "the established publisher failed ({status}); log:\n{}",
        broker.log()
    );
    assert_eq!(
        log_count(&broker, "client connected"),
        2,
        "nobody reconnected; log:\n{}",
        broker.log()
    );
}

fn crl_file_change_picked_up_without_sighup() {
    let ca = CrlCa::new();
    let (broker, port) = tls_broker(None, &ca.listener());
    let first = ca.tls("first");
    mosq_pub_ok(
        &broker,
        port,
        &with_tls(&first, &["-t", "w", "-m", "x", "-q", "1"]),
    );
    ca.revoke("first");
    ca.write_crl(&[]);
    // Checked every 2 s, read once unchanged at two checks in a row.
    wait_log(
        &broker,
        "TLS certificates reloaded",
        1,
        Duration::from_secs(10),
    );
    assert!(
        broker.log().contains("why=\"files changed\""),
        "{}",
        broker.log()
    );
    refused_at_handshake(&broker, port, &ca, "first", &REVOKED);
    let second = ca.tls("second");
    mosq_pub_ok(
        &broker,
        port,
        &with_tls(&second, &["-t", "w", "-m", "x", "-q", "1"]),
    );
}

fn bad_crl_file_on_sighup_keeps_the_crl_in_force() {
    let ca = CrlCa::new();
    ca.revoke("first");
    ca.write_crl(&[]);
    let (broker, port) = tls_broker(None, &ca.listener());
    let crl = ca.path("ca.crl");
    for bad in [
        &b"not a CRL\n"[..],
        b"-----BEGIN X509 CRL-----\nMAMCAQE=\n-----END X509 CRL-----\n",
    ] {
        let n = log_count(&broker, "TLS certificates not reloaded");
        std::fs::write(&crl, bad).unwrap();
        hangup(&broker);
        wait_log(
            &broker,
            "TLS certificates not reloaded",
            n + 1,
            Duration::from_secs(5),
        );
        let line = broker
            .log()
            .lines()
            .rfind(|l| l.contains("TLS certificates not reloaded"))
            .unwrap()
            .to_owned();
        assert!(
            line.contains("ca.crl"),
            "the line names the CRL file: {line}"
        );
        // The CRL in force still refuses `first` and serves `second`.
        refused_at_handshake(&broker, port, &ca, "first", &REVOKED);
        let second = ca.tls("second");
        mosq_pub_ok(
            &broker,
            port,
            &with_tls(&second, &["-t", "b", "-m", "x", "-q", "1"]),
        );
    }
    assert_eq!(
        log_count(&broker, "TLS certificates reloaded"),
        0,
        "{}",
        broker.log()
    );
}

fn expired_crl_refuses_client_certificates_with_a_clear_log_line() {
    let ca = CrlCa::new();
    ca.write_crl(&[
        "-crl_lastupdate",
        "20200101000000Z",
        "-crl_nextupdate",
        "20200102000000Z",
    ]);
    let (broker, port) = tls_broker(None, &ca.listener());
    // Said once at load...
    wait_log(&broker, "CRL expired", 1, Duration::from_secs(5));
    // ...and at each refused handshake: a certificate nobody revoked is refused too.
    refused_at_handshake(&broker, port, &ca, "second", &CRL_EXPIRED);
    // A fresh CRL (renewal) is picked up and the certificate accepted again.
    ca.write_crl(&[]);
    hangup(&broker);
    wait_log(
        &broker,
        "TLS certificates reloaded",
        1,
        Duration::from_secs(5),
    );
    let second = ca.tls("second");
    mosq_pub_ok(
        &broker,
        port,
        &with_tls(&second, &["-t", "e", "-m", "x", "-q", "1"]),
    );
}

fn bad_crl_file_at_start_stops_the_broker() {
    let ca = CrlCa::new();
    let crl = ca.path("ca.crl");
    for (content, why) in [
        (&b""[..], "no CRL"),
        (
            b"-----BEGIN X509 CRL-----\nMAMCAQE=\n-----END X509 CRL-----\n",
            "with the CRLs of",
        ),
    ] {
        std::fs::write(&crl, content).unwrap();
        let toml = format!(
            "[[listener]]\ntransport = \"tls\"\naddress = \"127.0.0.1:0\"\n\
             cert_file = {:?}\nkey_file = {:?}\n{}\n",
            pem("server.pem"),
            pem("server.key"),
            ca.listener()
        );
        let config = mote_tests::TempFile::new("mote-crl-config", ".toml", toml.as_bytes());
        let child = spawn(
            Command::new(mote_tests::mote_bin())
                .args(["--memory", "--mqtt", "127.0.0.1:0", "--config"])
                .arg(&config.path),
        );
        let (st, out, err) = child.wait_output(Duration::from_secs(10));
        assert!(
            st.is_some_and(|s| !s.success()),
            "started with a bad CRL file ({st:?})\n{out}\n{err}"
        );
        assert!(
            err.contains("listener[0]") && err.contains(&crl) && err.contains(why),
            "the error names the listener, the file and why:\n{err}"
        );
        assert!(!err.contains("listening"), "{err}");
    }
}
