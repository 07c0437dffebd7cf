//! MQTT over WebSocket (`[http]`, `broker/src/runtime/http/ws.rs`) end to end with clients
//! we did not write: mqtt.js (npm `mqtt` 5) and raw frames from the npm `ws` package
//! (`tests/ws/*.mjs`), Python paho-mqtt with `transport="websockets"`
//! (`tests/python/ws_paho.py`), with `mosquitto_pub` / `mosquitto_sub` on TCP on the
//! other end.
//!
//! - QoS 0, 1 and 2 from mqtt.js (3.1.1 and 5.0) to `mosquitto_sub`, and from
//!   `mosquitto_pub` to mqtt.js; a 256 KiB payload both ways (and in 16 KiB frames);
//! - frames holding several packets, packets spanning frames and fragmented messages;
//! - a text frame closes the connection (and publishes the will); the broker serves on;
//! - both paths (`/mqtt`, `/`), `Sec-WebSocket-Protocol` negotiation, MQTT 3.1;
//! - paho-mqtt over WebSocket: QoS round trips, properties, retained messages;
//! - a persistent session resumed over WebSocket, wills on a dropped connection and on
//!   a Close frame, none after DISCONNECT; a WebSocket that never sends CONNECT is closed
//!   after the connect timeout.
//!
//! The Node scripts and `ws_paho.py` print one JSON line per check and a final result
//! line, exit 0 only when every check passed, and each test here names the checks that
//! must have passed, so a script that silently skipped one fails. `npm ci` runs in
//! `tests/ws` (once per run) when its `node_modules` is missing or older than its lock
//! file. Every test also asserts that the broker's log holds no panic.
//!
//! Run by `mote_tests::harness` (`harness = false`): without node, npm, a working
//! `npm ci`, the mosquitto clients, `stdbuf` or paho-mqtt a test is reported as ignored,
//! with the reason, and under `CI=true` it fails.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use common::{messages, mosq_pub, mosq_sub, wait_messages, Proc};
use mote_tests::harness::{
    cannot_run, Need, Suite, MOSQUITTO_PUB, MOSQUITTO_SUB, NODE, NPM, PAHO, STDBUF,
};
use mote_tests::{assert_checks, python_script, run_script, tail, Broker, Reaped, TempFile};

/// mqtt.js and ws installed in `tests/ws/node_modules` (by `npm ci` if needed).
const WS_PACKAGES: Need = Need::Check {
    what: "mqtt.js and ws in tests/ws/node_modules",
    check: ws_packages,
};

fn main() -> std::process::ExitCode {
    let node = [NODE, NPM, WS_PACKAGES];
    let node_mosq = [NODE, NPM, WS_PACKAGES, MOSQUITTO_PUB, MOSQUITTO_SUB, STDBUF];
    Suite::new()
        .tests(
            &node_mosq,
            mote_tests::tests![
                mqttjs_v311_qos0_ws_to_tcp,
                mqttjs_v311_qos1_ws_to_tcp,
                mqttjs_v311_qos2_ws_to_tcp,
                mqttjs_v5_qos0_ws_to_tcp,
                mqttjs_v5_qos1_ws_to_tcp,
                mqttjs_v5_qos2_ws_to_tcp,
                mqttjs_v311_qos0_tcp_to_ws,
                mqttjs_v311_qos1_tcp_to_ws,
                mqttjs_v311_qos2_tcp_to_ws,
                mqttjs_v5_qos0_tcp_to_ws,
                mqttjs_v5_qos1_tcp_to_ws,
                mqttjs_v5_qos2_tcp_to_ws,
                large_payload_ws_to_tcp_intact,
                large_payload_tcp_to_ws_intact,
                text_frame_closes_the_connection_and_the_broker_serves_on,
                persistent_session_resumed_over_ws_v311,
                persistent_session_resumed_over_ws_v5,
                will_when_ws_connection_dropped_v311,
                will_when_ws_connection_dropped_v5,
                will_on_ws_close_frame_without_disconnect,
                no_will_after_disconnect_over_ws,
            ],
        )
        .tests(
            &node,
            mote_tests::tests![
                packets_spanning_frames_and_frames_holding_packets,
                paths_and_subprotocol_negotiation,
                ws_close_frame_from_client_is_answered,
                silent_ws_client_closed_after_connect_timeout,
            ],
        )
        .tests(
            &[PAHO],
            mote_tests::tests![paho_over_ws_v311, paho_over_ws_v5],
        )
        .run()
}

/// Longest a Node script or paho script may run (their watchdogs fire first).
const SCRIPT_LIMIT: Duration = Duration::from_secs(25);
/// The scripts' own watchdog, seconds.
const SCRIPT_TIMEOUT: &str = "20";
/// `npm ci` of two small packages (and their dependencies).
const NPM_LIMIT: Duration = Duration::from_secs(5 * 60);

// ---------------------------------------------------------------------------------------
// Node, npm and the scripts
// ---------------------------------------------------------------------------------------

fn ws_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("ws")
}

/// Runs `npm ci` in `tests/ws` when `node_modules` is missing or older than
/// `package-lock.json` (npm writes `node_modules/.package-lock.json` on every install);
/// once per test process, whatever the number of tests asking.
fn ws_packages() -> Result<(), String> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(install_ws_packages).clone()
}

fn install_ws_packages() -> Result<(), String> {
    let dir = ws_dir();
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let installed = mtime(&dir.join("node_modules/.package-lock.json"));
    let wanted = mtime(&dir.join("package-lock.json"));
    let fresh = ["mqtt", "ws"].iter().all(|p| {
        dir.join("node_modules")
            .join(p)
            .join("package.json")
            .exists()
    }) && matches!((installed, wanted), (Some(i), Some(w)) if i >= w);
    if fresh {
        return Ok(());
    }
    eprintln!("websocket: running `npm ci` in {}", dir.display());
    let child = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| cannot_run("npm", &e, "Node.js 20+ with npm"))?;
    match Reaped(child).wait_output(NPM_LIMIT) {
        (Some(st), _, _) if st.success() => Ok(()),
        (st, out, err) => {
            // npm's first error lines say why (ECONNREFUSED, ENOTFOUND, ...); the rest is
            // a stack trace.
            let why: Vec<&str> = err
                .lines()
                .chain(out.lines())
                .filter(|l| l.starts_with("npm error") || l.starts_with("npm ERR!"))
                .take(3)
                .collect();
            Err(format!(
                "`npm ci` in {} failed ({}): mqtt.js and ws are not installed; it needs the \
                 npm registry (offline: run `npm ci` in tests/ws where the registry is \
                 reachable, or set a mirror with `npm config set registry URL`): {}",
                dir.display(),
                st.map_or_else(
                    || format!("no exit within {NPM_LIMIT:?}"),
                    |s| s.to_string()
                ),
                why.join(" | ")
            ))
        }
    }
}

/// Starts `node tests/ws/SCRIPT ARGS... --timeout 20`, its output collected as it runs.
fn node(script: &str, args: &[&str]) -> Proc {
    Proc::spawn(
        Command::new("node")
            .arg(ws_dir().join(script))
            .args(args)
            .args(["--timeout", SCRIPT_TIMEOUT])
            .current_dir(ws_dir()),
    )
}

/// Waits for a script's `{"ready": ...}` line; panics with its output when it does not
/// come within 10 s.
#[track_caller]
fn wait_ready(p: &mut Proc, what: &str, broker: &Broker) {
    assert!(
        p.wait_line(
            |l| l.starts_with(r#"{"ready":true"#),
            Duration::from_secs(10)
        ),
        "{what}: never ready\n{}\n--- broker log (tail)\n{}",
        p.dump(),
        tail(&broker.log(), 40)
    );
}

/// Waits for the script to end and asserts that it passed every check it ran and ran
/// each of `checks` (JSON.stringify's spelling: no spaces).
#[track_caller]
fn finish(mut p: Proc, what: &str, checks: &[&str], broker: &Broker) {
    let status = p.wait_exit(SCRIPT_LIMIT);
    let lines = p.stdout_lines();
    let context = || {
        format!(
            "{what}\n{}\n--- broker log (tail)\n{}",
            p.dump(),
            tail(&broker.log(), 40)
        )
    };
    let what = format!("{what} (status {status:?})");
    assert_checks(
        &what,
        status.is_some_and(|s| s.success()),
        &lines.join("\n"),
        checks,
        &context,
    );
}

/// Asserts that the broker's log holds no panic.
#[track_caller]
fn assert_no_panic(broker: &Broker) {
    let log = broker.log();
    assert!(
        !log.contains("panicked"),
        "the broker panicked:\n{}",
        tail(&log, 60)
    );
}

/// `ws://HTTP_ADDR/PATH`.
fn ws_url(broker: &Broker, path: &str) -> String {
    format!("ws://{}{path}", broker.http_addr())
}

/// `ws://HTTP_ADDR` (the raw scripts add the path).
fn ws_base(broker: &Broker) -> String {
    format!("ws://{}", broker.http_addr())
}

// ---------------------------------------------------------------------------------------
// mosquitto clients
// ---------------------------------------------------------------------------------------

/// mosquitto's `-V` for mqtt.js's protocolVersion.
fn mosq_version(version: &str) -> &'static str {
    if version == "5" {
        "mqttv5"
    } else {
        "mqttv311"
    }
}

/// Runs `mosquitto_pub -l ARGS...` with `lines` on its stdin (one message per line, one
/// connection, so they are published in order) and asserts it succeeded.
#[track_caller]
fn mosq_pub_lines(broker: &Broker, args: &[&str], lines: &[String]) {
    let port = broker.port().to_string();
    let mut cmd = Command::new("mosquitto_pub");
    cmd.args(["-h", "127.0.0.1", "-p", &port])
        .args(args)
        .arg("-l")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = Reaped(cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}")));
    {
        let mut stdin = child.0.stdin.take().unwrap();
        let mut text = lines.join("\n");
        text.push('\n');
        stdin.write_all(text.as_bytes()).unwrap();
        // Dropped here: end of input, mosquitto_pub finishes its flows and disconnects.
    }
    let (st, out, err) = child.wait_output(Duration::from_secs(10));
    assert!(
        st.is_some_and(|s| s.success()),
        "mosquitto_pub -l {args:?} failed: {st:?}\n{out}\n{err}\nbroker log:\n{}",
        tail(&broker.log(), 40)
    );
}

/// `prefix-0` … `prefix-(n-1)`.
fn payloads(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

// ---------------------------------------------------------------------------------------
// 1. mqtt.js <-> mosquitto at QoS 0, 1, 2
// ---------------------------------------------------------------------------------------

/// Messages per QoS run.
const COUNT: usize = 5;

/// mqtt.js publishes over WebSocket; `mosquitto_sub` on TCP gets every payload, once, in
/// order, at the published QoS.
fn ws_to_tcp(version: &str, qos: u8) {
    let broker = Broker::start_http();
    let topic = format!("ws/out/v{version}/q{qos}");
    let mut sub = mosq_sub(
        &broker,
        &[
            "-V",
            mosq_version(version),
            "-t",
            &topic,
            "-q",
            "2",
            "-F",
            "%q %t %p",
        ],
    );
    let qos_s = qos.to_string();
    let url = ws_url(&broker, "/mqtt");
    let pubr = node(
        "mqttjs.mjs",
        &[
            "publish",
            "--url",
            &url,
            "--version",
            version,
            "--topic",
            &topic,
            "--qos",
            &qos_s,
            "--count",
            "5",
            "--prefix",
            "out",
        ],
    );
    let mut checks = vec!["connack", "subprotocol", "published"];
    match qos {
        1 => checks.push("pubacks"),
        2 => checks.extend(["pubrecs", "pubcomps"]),
        _ => {}
    }
    finish(pubr, "mqttjs publish", &checks, &broker);
    assert!(
        wait_messages(&mut sub, COUNT, Duration::from_secs(5)),
        "mosquitto_sub got {} of {COUNT} messages\n{}\nbroker log:\n{}",
        messages(&sub).len(),
        sub.dump(),
        tail(&broker.log(), 40)
    );
    std::thread::sleep(Duration::from_millis(300));
    let expected: Vec<String> = payloads("out", COUNT)
        .into_iter()
        .map(|p| format!("{qos} {topic} {p}"))
        .collect();
    assert_eq!(
        messages(&sub),
        expected,
        "mosquitto_sub output (QoS topic payload)"
    );
    assert_no_panic(&broker);
}

/// `mosquitto_pub` on TCP publishes; mqtt.js over WebSocket gets every payload, once, in
/// order, at the published QoS, and completes the receiving half of each flow.
fn tcp_to_ws(version: &str, qos: u8) {
    let broker = Broker::start_http();
    let topic = format!("ws/in/v{version}/q{qos}");
    let qos_s = qos.to_string();
    let url = ws_url(&broker, "/mqtt");
    let mut subr = node(
        "mqttjs.mjs",
        &[
            "subscribe",
            "--url",
            &url,
            "--version",
            version,
            "--topic",
            &topic,
            "--qos",
            &qos_s,
            "--count",
            "5",
            "--prefix",
            "in",
        ],
    );
    wait_ready(&mut subr, "mqttjs subscribe", &broker);
    mosq_pub_lines(
        &broker,
        &["-V", mosq_version(version), "-t", &topic, "-q", &qos_s],
        &payloads("in", COUNT),
    );
    let mut checks = vec![
        "connack",
        "subprotocol",
        "suback",
        "payloads_in_order",
        "delivered_qos",
        "topic",
        "retain_flag",
        "no_extra_messages",
        "text_frames_received",
    ];
    match qos {
        1 => checks.push("pubacks_sent"),
        2 => checks.extend(["pubrels_received", "pubcomps_sent"]),
        _ => {}
    }
    finish(subr, "mqttjs subscribe", &checks, &broker);
    assert_no_panic(&broker);
}

fn mqttjs_v311_qos0_ws_to_tcp() {
    ws_to_tcp("4", 0);
}
fn mqttjs_v311_qos1_ws_to_tcp() {
    ws_to_tcp("4", 1);
}
fn mqttjs_v311_qos2_ws_to_tcp() {
    ws_to_tcp("4", 2);
}
fn mqttjs_v5_qos0_ws_to_tcp() {
    ws_to_tcp("5", 0);
}
fn mqttjs_v5_qos1_ws_to_tcp() {
    ws_to_tcp("5", 1);
}
fn mqttjs_v5_qos2_ws_to_tcp() {
    ws_to_tcp("5", 2);
}
fn mqttjs_v311_qos0_tcp_to_ws() {
    tcp_to_ws("4", 0);
}
fn mqttjs_v311_qos1_tcp_to_ws() {
    tcp_to_ws("4", 1);
}
fn mqttjs_v311_qos2_tcp_to_ws() {
    tcp_to_ws("4", 2);
}
fn mqttjs_v5_qos0_tcp_to_ws() {
    tcp_to_ws("5", 0);
}
fn mqttjs_v5_qos1_tcp_to_ws() {
    tcp_to_ws("5", 1);
}
fn mqttjs_v5_qos2_tcp_to_ws() {
    tcp_to_ws("5", 2);
}

// ---------------------------------------------------------------------------------------
// 2. A 256 KiB payload both ways
// ---------------------------------------------------------------------------------------

/// The large payload's size.
const BIG: usize = 256 * 1024;

/// 256 KiB of every byte value (xorshift, fixed seed), in a temp file.
fn big_payload() -> (Vec<u8>, TempFile) {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let bytes: Vec<u8> = (0..BIG)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    let file = TempFile::new("mote-ws-big", ".bin", &bytes);
    (bytes, file)
}

/// FNV-1a, 64 bits: a hash to compare payloads by in failure messages.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Lowercase hex, as `mosquitto_sub -F %x` prints a payload.
fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// A 256 KiB payload from mqtt.js (v5), then as one PUBLISH in 17 frames of 16 KiB from
/// `ws`, reaches `mosquitto_sub` on TCP byte for byte.
fn large_payload_ws_to_tcp_intact() {
    let broker = Broker::start_http();
    let (bytes, file) = big_payload();
    let path = file.path.to_str().unwrap();
    let topic = "ws/big/out";
    let mut sub = mosq_sub(&broker, &["-t", topic, "-q", "1", "-F", "%x"]);

    let url = ws_url(&broker, "/mqtt");
    let p = node(
        "mqttjs.mjs",
        &[
            "big-publish",
            "--url",
            &url,
            "--version",
            "5",
            "--topic",
            topic,
            "--file",
            path,
        ],
    );
    finish(
        p,
        "mqttjs big-publish",
        &["connack", "big_published"],
        &broker,
    );
    let base = ws_base(&broker);
    let p = node(
        "raw.mjs",
        &[
            "big-split",
            "--base",
            &base,
            "--topic",
            topic,
            "--file",
            path,
        ],
    );
    finish(p, "raw big-split", &["big_split_acked"], &broker);

    assert!(
        wait_messages(&mut sub, 2, Duration::from_secs(10)),
        "mosquitto_sub got {} of 2 large messages\nbroker log:\n{}",
        messages(&sub).len(),
        tail(&broker.log(), 40)
    );
    std::thread::sleep(Duration::from_millis(300));
    let want = hex(&bytes);
    let got = messages(&sub);
    assert_eq!(got.len(), 2, "messages on mosquitto_sub");
    for (i, m) in got.iter().enumerate() {
        assert!(
            *m == want,
            "large message {i} differs: {} hex chars, FNV-1a {:016x}; sent {} hex chars, \
             FNV-1a {:016x}",
            m.len(),
            fnv1a(m.as_bytes()),
            want.len(),
            fnv1a(want.as_bytes())
        );
    }
    assert_no_panic(&broker);
}

/// A 256 KiB payload from `mosquitto_pub -f` reaches mqtt.js (3.1.1) over WebSocket with
/// the same length and SHA-256.
fn large_payload_tcp_to_ws_intact() {
    let broker = Broker::start_http();
    let (_bytes, file) = big_payload();
    let path = file.path.to_str().unwrap();
    let topic = "ws/big/in";
    let url = ws_url(&broker, "/mqtt");
    let mut p = node(
        "mqttjs.mjs",
        &[
            "big-subscribe",
            "--url",
            &url,
            "--version",
            "4",
            "--topic",
            topic,
            "--file",
            path,
        ],
    );
    wait_ready(&mut p, "mqttjs big-subscribe", &broker);
    mosq_pub(&broker, &["-t", topic, "-q", "1", "-f", path]);
    finish(
        p,
        "mqttjs big-subscribe",
        &[
            "connack",
            "suback",
            "big_received",
            "big_length",
            "big_sha256",
            "no_extra_messages",
        ],
        &broker,
    );
    assert_no_panic(&broker);
}

// ---------------------------------------------------------------------------------------
// 3. Packets and frames
// ---------------------------------------------------------------------------------------

/// CONNECT+SUBSCRIBE in one frame; a PUBLISH in 3 frames, in 3 fragments of one
/// message, one byte per frame; 2½ packets in a frame; 100 PUBLISHes in a frame; a
/// WebSocket ping answered.
fn packets_spanning_frames_and_frames_holding_packets() {
    let broker = Broker::start_http();
    let base = ws_base(&broker);
    let p = node("raw.mjs", &["frames", "--base", &base]);
    finish(
        p,
        "raw frames",
        &[
            "one_frame_connack",
            "one_frame_suback",
            "split_publish_acked",
            "split_publish_delivered",
            "coalesced_publishes_delivered",
            "coalesced_pingresp",
            "bytewise_publish",
            "fragmented_message_publish",
            "ws_ping_answered",
            "hundred_in_one_frame_acked",
            "hundred_in_one_frame_delivered",
            "server_frames_all_binary",
            "closed_after_disconnect",
        ],
        &broker,
    );
    assert_no_panic(&broker);
}

// ---------------------------------------------------------------------------------------
// 4. Text frames
// ---------------------------------------------------------------------------------------

/// A text frame after CONNACK, and one before CONNECT, close the connection within 2 s
/// (the first publishing its will); another WebSocket client and TCP clients are
/// served as before.
fn text_frame_closes_the_connection_and_the_broker_serves_on() {
    let broker = Broker::start_http();
    let base = ws_base(&broker);
    let p = node("raw.mjs", &["text", "--base", &base]);
    finish(
        p,
        "raw text",
        &[
            "connack:ws-raw-text",
            "text_frame_closes_within_2s",
            "will_after_text_frame",
            "text_frame_before_connect_closes_within_2s",
            "other_client_fine:text",
        ],
        &broker,
    );
    let mut sub = mosq_sub(&broker, &["-t", "ws/after-text", "-q", "1"]);
    mosq_pub(
        &broker,
        &["-t", "ws/after-text", "-q", "1", "-m", "tcp still fine"],
    );
    assert!(
        wait_messages(&mut sub, 1, Duration::from_secs(5)),
        "TCP round trip after the text frames failed\n{}",
        sub.dump()
    );
    assert_eq!(messages(&sub), ["tcp still fine"]);
    assert!(
        broker.log().contains("text frame on an MQTT WebSocket"),
        "the broker did not log the text frame:\n{}",
        tail(&broker.log(), 40)
    );
    assert_no_panic(&broker);
}

// ---------------------------------------------------------------------------------------
// 5. Paths and sub-protocols
// ---------------------------------------------------------------------------------------

/// On `/mqtt` and `/`: `Sec-WebSocket-Protocol` is `mqtt` when `mqtt` is offered (alone
/// or after `mqttv3.1`), `mqttv3.1` when only that is offered, absent when nothing is
/// offered (served all the same); each answers CONNECT (MQTT 3.1 on `mqttv3.1`). A path
/// outside `http.ws_paths` is not upgraded. mqtt.js negotiates `mqtt` (3.1.1) on `/` and
/// `mqttv3.1` (MQTT 3.1) on `/mqtt`.
fn paths_and_subprotocol_negotiation() {
    let broker = Broker::start_http();
    let base = ws_base(&broker);
    let mut checks = Vec::new();
    for path in ["/mqtt", "/"] {
        for offer in ["mqtt", "mqttv3.1", "mqttv3.1+mqtt", "none"] {
            checks.push(format!("protocol:{path}:{offer}"));
            checks.push(format!("connack:{path}:{offer}"));
        }
    }
    checks.push("unknown_path_not_upgraded".to_owned());
    let checks: Vec<&str> = checks.iter().map(String::as_str).collect();
    let p = node("raw.mjs", &["subprotocols", "--base", &base]);
    finish(p, "raw subprotocols", &checks, &broker);

    for (path, version) in [("/", "4"), ("/mqtt", "3")] {
        let url = ws_url(&broker, path);
        let topic = format!("ws/paths/v{version}");
        let p = node(
            "mqttjs.mjs",
            &[
                "publish",
                "--url",
                &url,
                "--version",
                version,
                "--topic",
                &topic,
                "--qos",
                "1",
                "--count",
                "2",
                "--prefix",
                "p",
            ],
        );
        finish(
            p,
            &format!("mqttjs publish v{version} on {path}"),
            &["connack", "subprotocol", "published", "pubacks"],
            &broker,
        );
    }
    assert_no_panic(&broker);
}

// ---------------------------------------------------------------------------------------
// 6. paho-mqtt over WebSocket
// ---------------------------------------------------------------------------------------

fn paho_over_ws(version: &str) {
    let broker = Broker::start_http();
    let http = broker.http_addr().port().to_string();
    let tcp = broker.port().to_string();
    let mut cmd = python_script("ws_paho.py");
    cmd.args(["--port", &http, "--tcp-port", &tcp, "--version", version])
        .args(["--timeout", SCRIPT_TIMEOUT]);
    let mut checks = vec![
        "sub_connack".to_owned(),
        "pub_connack".to_owned(),
        "tcp_connack".to_owned(),
        "transport".to_owned(),
        "retained_published".to_owned(),
        "retained_to_new_ws_subscriber".to_owned(),
        "retained_to_new_tcp_subscriber".to_owned(),
        "retained_cleared".to_owned(),
    ];
    for q in 0..3 {
        for c in [
            "suback",
            "tcp_suback",
            "payloads_in_order",
            "delivered_qos",
            "retain_flag",
            "tcp_payloads_in_order",
            "tcp_delivered_qos",
        ] {
            checks.push(format!("q{q}_{c}"));
        }
        if q > 0 {
            checks.push(format!("q{q}_publisher_flows_completed"));
        }
    }
    if version == "5" {
        checks.push("v5_properties_over_ws".to_owned());
    }
    let checks: Vec<&str> = checks.iter().map(String::as_str).collect();
    run_script(
        &mut cmd,
        SCRIPT_LIMIT,
        &format!("ws_paho.py --version {version}"),
        &checks,
        &broker,
    );
    // The WebSocket clients really came in over the HTTP listener.
    let log = broker.log();
    for id in ["ws-paho-sub", "ws-paho-pub", "ws-paho-late"] {
        let needle = format!(r#"transport="ws" client="{id}-{version}""#);
        assert!(
            log.contains(&needle),
            "no WebSocket connection of {id}-{version} in the broker log:\n{}",
            tail(&log, 40)
        );
    }
    assert_no_panic(&broker);
}

fn paho_over_ws_v311() {
    paho_over_ws("311");
}

fn paho_over_ws_v5() {
    paho_over_ws("5");
}

// ---------------------------------------------------------------------------------------
// 7. Sessions and wills
// ---------------------------------------------------------------------------------------

/// mqtt.js subscribes at QoS 1 in a persistent session (clean=false; v5: session expiry
/// 300 s) over WebSocket and disconnects; `mosquitto_pub` publishes 3 QoS 1 messages on
/// TCP; mqtt.js reconnects over WebSocket, finds its session and gets the 3, in order.
fn persistent_session(version: &str) {
    let broker = Broker::start_http();
    let url = ws_url(&broker, "/mqtt");
    let id = format!("ws-session-{version}");
    let topic = format!("ws/session/v{version}");
    let p = node(
        "mqttjs.mjs",
        &[
            "session-prepare",
            "--url",
            &url,
            "--version",
            version,
            "--client-id",
            &id,
            "--topic",
            &topic,
        ],
    );
    finish(
        p,
        "mqttjs session-prepare",
        &["connack", "session_present_first", "suback", "disconnected"],
        &broker,
    );
    mosq_pub_lines(
        &broker,
        &["-V", mosq_version(version), "-t", &topic, "-q", "1"],
        &payloads("offline", 3),
    );
    let p = node(
        "mqttjs.mjs",
        &[
            "session-resume",
            "--url",
            &url,
            "--version",
            version,
            "--client-id",
            &id,
            "--topic",
            &topic,
            "--count",
            "3",
            "--prefix",
            "offline",
        ],
    );
    finish(
        p,
        "mqttjs session-resume",
        &[
            "connack",
            "session_present_on_resume",
            "payloads_in_order",
            "delivered_qos",
            "topic",
            "no_extra_messages",
        ],
        &broker,
    );
    assert_no_panic(&broker);
}

fn persistent_session_resumed_over_ws_v311() {
    persistent_session("4");
}

fn persistent_session_resumed_over_ws_v5() {
    persistent_session("5");
}

/// mqtt.js connects over WebSocket with a will, then its process is killed: the TCP
/// connection under the WebSocket ends without DISCONNECT or Close frame, and
/// `mosquitto_sub` on TCP gets the will.
fn will_when_dropped(version: &str) {
    let broker = Broker::start_http();
    let topic = format!("ws/will/v{version}");
    let payload = format!("ws client v{version} gone");
    let mut sub = mosq_sub(&broker, &["-t", &topic, "-q", "1", "-v"]);
    let url = ws_url(&broker, "/mqtt");
    let id = format!("ws-will-{version}");
    let mut p = node(
        "mqttjs.mjs",
        &[
            "will",
            "--url",
            &url,
            "--version",
            version,
            "--client-id",
            &id,
            "--topic",
            &topic,
            "--payload",
            &payload,
        ],
    );
    wait_ready(&mut p, "mqttjs will", &broker);
    assert!(
        messages(&sub).is_empty(),
        "a will before the connection dropped: {:?}",
        messages(&sub)
    );
    p.kill();
    assert!(
        wait_messages(&mut sub, 1, Duration::from_secs(5)),
        "no will after the WebSocket client was killed\n{}\nbroker log:\n{}",
        sub.dump(),
        tail(&broker.log(), 40)
    );
    assert_eq!(messages(&sub), [format!("{topic} {payload}")]);
    assert_no_panic(&broker);
}

fn will_when_ws_connection_dropped_v311() {
    will_when_dropped("4");
}

fn will_when_ws_connection_dropped_v5() {
    will_when_dropped("5");
}

/// A WebSocket Close frame without MQTT DISCONNECT ends the connection abnormally (MQTT
/// 3.1.1 §3.1.2.5): the will is published.
fn will_on_ws_close_frame_without_disconnect() {
    let broker = Broker::start_http();
    let topic = "ws/will/close";
    let mut sub = mosq_sub(&broker, &["-t", topic, "-q", "1", "-v"]);
    let base = ws_base(&broker);
    let p = node(
        "raw.mjs",
        &[
            "close",
            "--base",
            &base,
            "--client-id",
            "ws-will-close",
            "--topic",
            topic,
            "--payload",
            "closed without disconnect",
        ],
    );
    finish(
        p,
        "raw close",
        &["connack:ws-will-close", "closed_after_close_frame"],
        &broker,
    );
    assert!(
        wait_messages(&mut sub, 1, Duration::from_secs(5)),
        "no will after a Close frame without DISCONNECT\n{}\nbroker log:\n{}",
        sub.dump(),
        tail(&broker.log(), 40)
    );
    assert_eq!(
        messages(&sub),
        [format!("{topic} closed without disconnect")]
    );
    assert_no_panic(&broker);
}

/// RFC 6455 §5.5.1: "If an endpoint receives a Close frame and did not previously send a
/// Close frame, the endpoint MUST send a Close frame in response". The client's `ws`
/// reports the code of the Close it got back (1000 echoed), 1006 when the TCP connection
/// just ended.
fn ws_close_frame_from_client_is_answered() {
    let broker = Broker::start_http();
    let base = ws_base(&broker);
    let p = node(
        "raw.mjs",
        &[
            "close",
            "--base",
            &base,
            "--client-id",
            "ws-close-answer",
            "--topic",
            "ws/close/answer",
            "--payload",
            "x",
            "--expect-close-reply",
        ],
    );
    finish(
        p,
        "raw close --expect-close-reply",
        &[
            "connack:ws-close-answer",
            "closed_after_close_frame",
            "close_frame_answered",
        ],
        &broker,
    );
    assert_no_panic(&broker);
}

/// After a normal DISCONNECT over WebSocket no will is published.
fn no_will_after_disconnect_over_ws() {
    let broker = Broker::start_http();
    let topic = "ws/will/none";
    let sub = mosq_sub(&broker, &["-t", topic, "-q", "1", "-v"]);
    let url = ws_url(&broker, "/mqtt");
    let p = node(
        "mqttjs.mjs",
        &[
            "will",
            "--url",
            &url,
            "--version",
            "5",
            "--client-id",
            "ws-will-none",
            "--topic",
            topic,
            "--payload",
            "must not appear",
            "--disconnect",
        ],
    );
    finish(
        p,
        "mqttjs will --disconnect",
        &["connack", "disconnected_normally"],
        &broker,
    );
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        messages(&sub).is_empty(),
        "a will after DISCONNECT: {:?}",
        messages(&sub)
    );
    assert_no_panic(&broker);
}

// ---------------------------------------------------------------------------------------
// 8. The connect timeout
// ---------------------------------------------------------------------------------------

/// With `connect_timeout_ms = 1000`, a WebSocket that sends no CONNECT is closed between
/// 0.9 s and 2.5 s after it opened, having received nothing; a WebSocket client that did
/// connect is kept.
fn silent_ws_client_closed_after_connect_timeout() {
    let broker = Broker::start_with(
        &["--memory", "--http", "127.0.0.1:0"],
        Some("[mqtt]\nconnect_timeout_ms = 1000\n"),
    );
    let base = ws_base(&broker);
    let p = node(
        "raw.mjs",
        &[
            "silent", "--base", &base, "--min-ms", "900", "--max-ms", "2500",
        ],
    );
    finish(
        p,
        "raw silent",
        &[
            "connack:ws-raw-busy",
            "silent_closed",
            "silent_closed_after_connect_timeout",
            "silent_received_nothing",
            "connected_client_kept",
        ],
        &broker,
    );
    assert!(
        broker
            .log()
            .contains("no CONNECT within the connect timeout"),
        "the broker did not log the connect timeout:\n{}",
        tail(&broker.log(), 40)
    );
    assert_no_panic(&broker);
}
