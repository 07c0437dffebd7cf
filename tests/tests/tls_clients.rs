//! The TLS listener (`docs/tls.md`) as two other clients see it, end to end against the
//! `mote` binary on loopback (issue #14):
//!
//! - `openssl s_client`: the handshake's details over TLS 1.3 and 1.2 (the chain
//!   verified, the version, ALPN `mqtt`, the certificate served), a TLS 1.2 client
//!   refused by a 1.3-only listener, and mTLS (refused without a client certificate; with
//!   one, a raw MQTT 3.1.1 CONNECT written through the TLS connection gets its CONNACK);
//! - rumqttc 0.24 over rustls (`Transport::tls_with_config`): QoS 1 from one client to
//!   another over TLS 1.3, and mTLS where the certificate's CN is the user name the
//!   access rules see (`use_identity_as_username`).
//!
//! Certificates are made at run time with `openssl` (`common/certs.rs`). Run by
//! `mote_tests::harness` (`harness = false`): without `openssl` a test is reported as
//! ignored, with the reason, and under `CI=true` it fails.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::certs::{
    identity_broker, log_count, mtls_required, openssl, pem, pki, s_client, tls_broker,
    wait_connected, wait_log, OPENSSL,
};
use mote_tests::harness::Suite;
use mote_tests::Reaped;
use rumqttc::{
    AsyncClient, Event, Incoming, MqttOptions, QoS, SubscribeReasonCode, TlsConfiguration,
    Transport,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle as TaskHandle;

fn main() -> std::process::ExitCode {
    let code = Suite::new()
        .tests(
            &[OPENSSL],
            mote_tests::tests![
                s_client_tls13_verifies_the_chain_and_agrees_alpn_mqtt,
                s_client_tls12_verifies_the_chain_and_agrees_alpn_mqtt,
                s_client_tls12_refused_by_a_tls13_only_listener,
                s_client_without_certificate_refused_by_mtls,
                s_client_with_a_signed_certificate_gets_a_connack,
            ],
        )
        .async_tests(
            &[OPENSSL],
            mote_tests::async_tests![
                rumqttc_qos1_over_tls13_reaches_a_tls_subscriber,
                rumqttc_mtls_identity_is_the_user_name_of_the_access_rules,
            ],
        )
        .run();
    common::certs::remove_pki();
    code
}

/// Generous bound for anything that should happen "now".
const SOON: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------
// openssl s_client
// ---------------------------------------------------------------------------------------

/// The subject of the PKI's certificate `name` as openssl prints it (`CN = ...`).
fn subject_of(name: &str) -> String {
    let out = openssl(pki(), &["x509", "-in", name, "-noout", "-subject"]);
    out.trim()
        .strip_prefix("subject=")
        .unwrap_or_else(|| panic!("no subject= in {out:?}"))
        .to_owned()
}

/// Asserts what `openssl s_client -alpn mqtt` printed about a handshake that succeeded:
/// the chain was verified against the test CA, `protocol` was negotiated, ALPN `mqtt`
/// was agreed, and the certificate served is the server's own (`server.pem`), at depth 0
/// of the chain, by its subject and its bytes.
#[track_caller]
fn assert_handshake(st: Option<ExitStatus>, out: &str, protocol: &str) {
    assert!(
        st.is_some_and(|s| s.success()),
        "s_client failed ({st:?}): {out}"
    );
    assert!(out.contains("Verify return code: 0 (ok)"), "{out}");
    assert!(
        out.contains(&format!("New, {protocol}, Cipher is")),
        "not {protocol}: {out}"
    );
    assert!(out.contains("ALPN protocol: mqtt"), "{out}");
    let subject = subject_of("server.pem");
    assert!(
        out.contains(&format!(" 0 s:{subject}\n")),
        "chain's depth 0 is not {subject}: {out}"
    );
    assert!(out.contains(&format!("\nsubject={subject}\n")), "{out}");
    let served = out
        .split_once("-----BEGIN CERTIFICATE-----")
        .and_then(|(_, rest)| rest.split_once("-----END CERTIFICATE-----"))
        .map(|(body, _)| body.trim())
        .unwrap_or_else(|| panic!("no certificate served: {out}"));
    let own = std::fs::read_to_string(pki().join("server.pem")).unwrap();
    assert!(
        own.contains(served),
        "the served certificate is not server.pem: {out}"
    );
}

fn s_client_tls13_verifies_the_chain_and_agrees_alpn_mqtt() {
    let (broker, port) = tls_broker(None, "");
    let (st, out) = s_client(port, &["-alpn", "mqtt", "-tls1_3"]);
    assert_handshake(st, &out, "TLSv1.3");
    assert_eq!(log_count(&broker, "TLS handshake failed"), 0);
}

fn s_client_tls12_verifies_the_chain_and_agrees_alpn_mqtt() {
    let (broker, port) = tls_broker(None, "");
    let (st, out) = s_client(port, &["-alpn", "mqtt", "-tls1_2"]);
    assert_handshake(st, &out, "TLSv1.2");
    assert!(out.contains("Protocol  : TLSv1.2"), "{out}");
    assert_eq!(log_count(&broker, "TLS handshake failed"), 0);
}

fn s_client_tls12_refused_by_a_tls13_only_listener() {
    let (broker, port) = tls_broker(None, "min_tls_version = \"1.3\"");
    let (st, out) = s_client(port, &["-alpn", "mqtt", "-tls1_2"]);
    assert!(!st.is_some_and(|s| s.success()), "TLS 1.2 accepted: {out}");
    // Refused at the ClientHello: an alert, and no certificate ever served.
    assert!(out.contains("alert protocol version"), "{out}");
    assert!(!out.contains("BEGIN CERTIFICATE"), "{out}");
    wait_log(&broker, "TLS handshake failed", 1, SOON);
    // The same listener, the same client, over TLS 1.3.
    let (st, out) = s_client(port, &["-alpn", "mqtt", "-tls1_3"]);
    assert_handshake(st, &out, "TLSv1.3");
}

/// `openssl s_client` kept running with its stdin open: bytes written to it go through
/// the TLS connection, and what comes back is copied to its stdout (after its text about
/// the handshake). Killed and reaped on drop.
struct Interactive {
    child: Reaped,
    stdin: Option<ChildStdin>,
    /// Its stdout and stderr, as they come.
    out: Arc<Mutex<Vec<u8>>>,
    /// The threads copying them into `out`, until the end of the pipes.
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Interactive {
    /// `openssl s_client` against the TLS port, trusting the test CA, with `args`.
    fn start(port: u16, args: &[&str]) -> Interactive {
        let mut child = Command::new("openssl")
            .args(["s_client", "-connect"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["-CAfile", &pem("ca.pem"), "-verify_return_error"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = Arc::new(Mutex::new(Vec::new()));
        let stdout: Box<dyn Read + Send> = Box::new(child.stdout.take().unwrap());
        let stderr: Box<dyn Read + Send> = Box::new(child.stderr.take().unwrap());
        let readers = [stdout, stderr]
            .map(|mut pipe| {
                let out = out.clone();
                // Ends at the end of the pipe, when the child is gone.
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    while let Ok(n @ 1..) = pipe.read(&mut buf) {
                        out.lock().unwrap().extend_from_slice(&buf[..n]);
                    }
                })
            })
            .into();
        let stdin = child.stdin.take();
        Interactive {
            child: Reaped(child),
            stdin,
            out,
            readers,
        }
    }

    /// Waits (at most `limit`) until `needle` is in its output.
    fn wait_for(&self, needle: &[u8], limit: Duration) -> bool {
        let end = Instant::now() + limit;
        loop {
            if self
                .out
                .lock()
                .unwrap()
                .windows(needle.len())
                .any(|w| w == needle)
            {
                return true;
            }
            if Instant::now() >= end {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Writes `bytes` into the TLS connection.
    fn send(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().unwrap();
        stdin.write_all(bytes).unwrap();
        stdin.flush().unwrap();
    }

    /// Waits (at most `limit`) for it to exit, with its stdin closed if `close` (else
    /// left open, so that only the peer can end it); `None` if it still runs. Once it
    /// exited, its whole output is in `out`.
    fn wait_exit(&mut self, close: bool, limit: Duration) -> Option<ExitStatus> {
        if close {
            self.stdin = None;
        }
        let end = Instant::now() + limit;
        loop {
            if let Some(st) = self.child.0.try_wait().unwrap() {
                for r in self.readers.drain(..) {
                    let _ = r.join();
                }
                return Some(st);
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Its output so far, as text (for messages).
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().unwrap()).into_owned()
    }
}

fn s_client_without_certificate_refused_by_mtls() {
    let (broker, port) = tls_broker(None, &mtls_required());
    for (n, version) in [(1, "-tls1_3"), (2, "-tls1_2")] {
        // Its stdin stays open: only the broker's refusal can end it. (With TLS 1.3 the
        // client thinks the handshake done before the broker has seen that no
        // certificate came; the refusal is the alert that follows.)
        let mut client = Interactive::start(port, &["-alpn", "mqtt", version]);
        let st = client.wait_exit(false, SOON);
        let out = client.text();
        assert!(
            st.is_some_and(|s| !s.success()),
            "{version}: not refused ({st:?}): {out}"
        );
        assert!(
            out.contains("alert certificate required"),
            "{version}: {out}"
        );
        wait_log(
            &broker,
            "TLS handshake failed; closing error=peer sent no certificates",
            n,
            SOON,
        );
    }
    assert_eq!(log_count(&broker, "client connected"), 0);
}

/// An MQTT 3.1.1 CONNECT written by hand (not by the codec under test): clean session,
/// keep alive 30 s, client id `s-client`.
#[rustfmt::skip]
const CONNECT_311: &[u8] = &[
    // CONNECT, remaining length 20.
    0x10, 20,
    // Protocol name "MQTT", level 4 (3.1.1), flags 0x02 (clean session), keep alive 30.
    0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 30,
    // Client id.
    0, 8, b's', b'-', b'c', b'l', b'i', b'e', b'n', b't',
];
/// CONNACK: session present 0, return code 0 (accepted).
const CONNACK_OK: &[u8] = &[0x20, 0x02, 0x00, 0x00];
/// DISCONNECT.
const DISCONNECT: &[u8] = &[0xE0, 0x00];

fn s_client_with_a_signed_certificate_gets_a_connack() {
    let (broker, port) = tls_broker(None, &mtls_required());
    let (cert, key) = (pem("client.pem"), pem("client.key"));
    let mut client = Interactive::start(
        port,
        &["-alpn", "mqtt", "-tls1_3", "-cert", &cert, "-key", &key],
    );
    assert!(
        client.wait_for(b"Verify return code: 0 (ok)", SOON),
        "no handshake: {}",
        client.text()
    );
    client.send(CONNECT_311);
    assert!(
        client.wait_for(CONNACK_OK, SOON),
        "no CONNACK 20 02 00 00: {}\nbroker log:\n{}",
        client.text(),
        broker.log()
    );
    wait_connected(&broker, "s-client", Some("TLSv1_3"));
    assert!(
        broker.log().contains("client connected protocol=V311"),
        "{}",
        broker.log()
    );
    // A DISCONNECT and the end of its stdin: it leaves, normally.
    client.send(DISCONNECT);
    wait_log(&broker, "client disconnected end=Normal", 1, SOON);
    assert!(
        client.wait_exit(true, SOON).is_some(),
        "s_client still runs: {}",
        client.text()
    );
    assert_eq!(log_count(&broker, "TLS handshake failed"), 0);
}

// ---------------------------------------------------------------------------------------
// rumqttc over rustls
// ---------------------------------------------------------------------------------------

/// A rumqttc MQTT 3.1.1 client over TLS whose event loop runs in a task of its own,
/// sending what it reports (the error that ended it last) to `events`.
struct TlsClient {
    client: AsyncClient,
    events: mpsc::UnboundedReceiver<Result<Event, String>>,
    task: TaskHandle<()>,
}

impl Drop for TlsClient {
    fn drop(&mut self) {
        // Ends the event loop, which closes the connection.
        self.task.abort();
    }
}

/// The bytes of the PKI's file `name`.
fn pki_file(name: &str) -> Vec<u8> {
    std::fs::read(Path::new(&pem(name))).unwrap()
}

/// The options of `id` on the TLS port: the test CA trusted, ALPN `mqtt` asked for, the
/// client certificate `cert` (its `.pem` and `.key`) if any, `user`'s user name (and a
/// password) if any.
fn tls_options(port: u16, id: &str, cert: Option<&str>, user: Option<&str>) -> MqttOptions {
    let mut opts = MqttOptions::new(id, "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(30));
    if let Some(user) = user {
        opts.set_credentials(user, "not-checked");
    }
    opts.set_transport(Transport::tls_with_config(TlsConfiguration::Simple {
        ca: pki_file("ca.pem"),
        alpn: Some(vec![b"mqtt".to_vec()]),
        client_auth: cert.map(|c| (pki_file(&format!("{c}.pem")), pki_file(&format!("{c}.key")))),
    }));
    opts
}

/// Connects with [`tls_options`] and returns once the CONNACK came (panics when it does
/// not).
async fn tls_client(port: u16, id: &str, cert: Option<&str>, user: Option<&str>) -> TlsClient {
    let opts = tls_options(port, id, cert, user);
    let (client, mut event_loop) = AsyncClient::new(opts, 100);
    let (tx, events) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        loop {
            let ev = event_loop.poll().await.map_err(|e| e.to_string());
            let end = ev.is_err();
            if tx.send(ev).is_err() || end {
                break;
            }
        }
    });
    let mut c = TlsClient {
        client,
        events,
        task,
    };
    c.next(|p| matches!(p, Incoming::ConnAck(_)).then_some(()))
        .await;
    c
}

impl TlsClient {
    /// The first packet from the broker that `pick` takes (within [`SOON`]), skipping the
    /// others; panics on a timeout or when the connection fails.
    async fn next<T>(&mut self, mut pick: impl FnMut(Incoming) -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + SOON;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Err(_) => panic!("nothing expected came within {SOON:?}"),
                Ok(None) => panic!("the event loop ended"),
                Ok(Some(Err(e))) => panic!("connection failed: {e}"),
                Ok(Some(Ok(Event::Incoming(p)))) => {
                    if let Some(t) = pick(p) {
                        return t;
                    }
                }
                Ok(Some(Ok(Event::Outgoing(_)))) => {}
            }
        }
    }

    /// Subscribes to `filter` at QoS 1 and returns the SUBACK's return code.
    async fn subscribe(&mut self, filter: &str) -> SubscribeReasonCode {
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .unwrap();
        self.next(|p| match p {
            Incoming::SubAck(a) => Some(a.return_codes[0]),
            _ => None,
        })
        .await
    }

    /// Publishes `payload` to `topic` at QoS 1 and waits for the PUBACK.
    async fn publish_qos1(&mut self, topic: &str, payload: &str) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.as_bytes().to_vec())
            .await
            .unwrap();
        self.next(|p| matches!(p, Incoming::PubAck(_)).then_some(()))
            .await;
    }

    /// Asserts the next PUBLISH received is `payload` on `topic` at QoS 1.
    async fn expect_qos1(&mut self, topic: &str, payload: &str) {
        let got = self
            .next(|p| match p {
                Incoming::Publish(m) => Some((m.topic, m.qos, m.payload.to_vec())),
                _ => None,
            })
            .await;
        let want = (
            topic.to_owned(),
            QoS::AtLeastOnce,
            payload.as_bytes().to_vec(),
        );
        assert_eq!(got, want);
    }
}

async fn rumqttc_qos1_over_tls13_reaches_a_tls_subscriber() {
    // A 1.3-only listener: rustls' client would settle for 1.2 elsewhere.
    let (broker, port) = tls_broker(None, "min_tls_version = \"1.3\"");
    let mut sub = tls_client(port, "rumqttc-sub", None, None).await;
    assert_eq!(
        sub.subscribe("tls/rumqttc").await,
        SubscribeReasonCode::Success(QoS::AtLeastOnce)
    );
    let mut publisher = tls_client(port, "rumqttc-pub", None, None).await;
    publisher.publish_qos1("tls/rumqttc", "over rustls").await;
    sub.expect_qos1("tls/rumqttc", "over rustls").await;
    wait_connected(&broker, "rumqttc-sub", Some("TLSv1_3"));
    wait_connected(&broker, "rumqttc-pub", Some("TLSv1_3"));
}

async fn rumqttc_mtls_identity_is_the_user_name_of_the_access_rules() {
    // Only the user device-1 may use devices/device-1/#: the certificate's CN.
    let (broker, port, _acl) = identity_broker();
    // The CONNECT names another user; the certificate (CN device-1) is what counts.
    let mut dev = tls_client(port, "rumqttc-dev", Some("client"), Some("someone-else")).await;
    assert_eq!(
        dev.subscribe("devices/device-1/#").await,
        SubscribeReasonCode::Success(QoS::AtLeastOnce)
    );
    assert_eq!(
        dev.subscribe("devices/someone-else/#").await,
        SubscribeReasonCode::Failure,
        "the CONNECT's user name was used"
    );
    dev.publish_qos1("devices/device-1/t", "mine").await;
    dev.expect_qos1("devices/device-1/t", "mine").await;
    wait_connected(&broker, "rumqttc-dev", Some("TLSv1_3"));
    // Without a certificate rumqttc does not get in.
    let before = log_count(&broker, "TLS handshake failed");
    let opts = tls_options(port, "rumqttc-nocert", None, None);
    let (_client, mut event_loop) = AsyncClient::new(opts, 10);
    let first = tokio::time::timeout(SOON, event_loop.poll()).await;
    assert!(
        matches!(first, Ok(Err(_))),
        "a client without a certificate: {first:?}"
    );
    wait_log(&broker, "TLS handshake failed", before + 1, SOON);
    assert!(
        !broker.log().contains("client=\"rumqttc-nocert\""),
        "{}",
        broker.log()
    );
}
