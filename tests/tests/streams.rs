//! Replayable streams `$stream/NAME` (docs/streams.md), end to end against the real
//! broker: dense offsets and timestamps, every start (`earliest`, `latest`, an offset, a
//! time; the `stream-offset` property and the `@START` topic form), filters and declared
//! streams, consumer groups (each message once, per-key order, the committed offset kept
//! across a consumer's restart, a broker restart and SIGKILL), persistent readers,
//! retention by size, the `$SYS` figures, mosquitto_sub and paho clients, and a reader
//! far behind paced by its Receive Maximum without the broker buffering the backlog.
//!
//! Raw-socket tests speak through `mote_codec` (`tests/common`); the paho tests run
//! `tests/python/streams_*.py`. Run by `mote_tests::harness` (`harness = false`): a test
//! whose outside tool (python3 with paho-mqtt 2.x, mosquitto_sub, `/proc`) is missing is
//! reported as ignored, with the reason, and under `CI=true` it fails.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{connect_packet, connect_with, Frame, Msg, Raw, Recv, QUIET, WAIT};
use mote_codec::{
    reason, Connect, Packet, PropList, PropValues, Properties, Protocol, QoS, SubOptions,
    Subscribe, SubscribeFilter,
};
use mote_tests::harness::{Suite, MOSQUITTO_SUB, PAHO, PROC_STATUS};
use mote_tests::{python_script, run_script, spawn, Broker, TempDir};

fn main() -> std::process::ExitCode {
    Suite::new()
        .tests(
            &[],
            mote_tests::tests![
                two_consumer_groups_each_read_every_message_once,
                a_user_property_key_keeps_each_key_at_one_member_in_order,
                a_group_resumes_at_its_committed_offset_after_a_consumer_restart,
                committed_offsets_survive_a_broker_restart,
                acknowledged_appends_survive_sigkill_with_dense_offsets,
                retention_by_size_keeps_the_newest_messages_dense,
                sys_topics_show_offsets_and_group_lag,
                declared_streams_filters_and_auto_create_off,
                publishes_of_every_qos_are_appended_without_retain_or_expiry,
                a_memory_stream_is_bounded_by_max_bytes,
                the_mote_stream_command_lists_streams_and_groups,
                a_stream_replays_over_http_as_server_sent_events,
            ],
        )
        .tests(
            &[PAHO],
            mote_tests::tests![
                paho_v5_replays_from_every_kind_of_start,
                paho_group_of_three_reads_every_message_once_in_key_order,
                paho_persistent_reader_keeps_its_position_v5,
                paho_persistent_reader_keeps_its_position_v311,
            ],
        )
        .tests(
            &[PAHO, MOSQUITTO_SUB],
            mote_tests::tests![topic_form_starts_and_filters_for_mqtt311],
        )
        .tests(
            &[MOSQUITTO_SUB],
            mote_tests::tests![mosquitto_sub_replays_a_stream],
        )
        .tests(
            &[PROC_STATUS],
            mote_tests::tests![a_reader_far_behind_is_paced_without_buffering_the_backlog],
        )
        .run()
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// Runs `script` against `broker` with `args` (watchdog `secs`), asserting it passed
/// every check and ran each of `checks`.
fn run_py(broker: &Broker, script: &str, args: &[&str], checks: &[&str], secs: u64) {
    let mut cmd = python_script(script);
    cmd.arg("--port")
        .arg(broker.port().to_string())
        .args(["--timeout", &secs.to_string()])
        .args(args);
    run_script(
        &mut cmd,
        Duration::from_secs(secs + 3),
        &format!("{script} {args:?}"),
        checks,
        broker,
    );
}

/// A raw MQTT connection that keeps the PUBLISH packets it meets while waiting for a
/// SUBACK or a PUBACK (a stream may start delivering at once), so that none is lost.
struct Client {
    raw: Raw,
    queued: VecDeque<Msg>,
    last_id: u16,
}

impl Client {
    /// Connects with `c`; returns the client and the CONNACK's session-present flag.
    #[track_caller]
    fn open(addr: SocketAddr, c: &Connect<'_>) -> (Client, bool) {
        let (raw, ack) = connect_with(addr, c);
        let present = common::connack(&ack).0;
        (
            Client {
                raw,
                queued: VecDeque::new(),
                last_id: 0,
            },
            present,
        )
    }

    /// A clean-start connection.
    #[track_caller]
    fn new(broker: &Broker, protocol: Protocol, id: &str) -> Client {
        Client::open(broker.addr, &connect_packet(protocol, id, true)).0
    }

    fn v5(&self) -> bool {
        self.raw.protocol == Protocol::V5
    }

    fn next_id(&mut self) -> u16 {
        self.last_id = self.last_id % u16::MAX + 1;
        self.last_id
    }

    /// The next frame that is not a PUBLISH (those are queued); it must be of packet
    /// type `kind`.
    #[track_caller]
    fn expect_control(&mut self, kind: u8) -> Frame {
        let end = Instant::now() + WAIT;
        loop {
            match self.raw.recv(end.saturating_duration_since(Instant::now())) {
                Recv::Frame(f) if f.kind() == 3 => self.queued.push_back(f.publish()),
                Recv::Frame(f) => {
                    assert_eq!(f.kind(), kind, "unexpected packet: {}", f.describe());
                    return f;
                }
                other => panic!("expected packet type {kind}, got {other:?}"),
            }
        }
    }

    /// Subscribes to one filter, with (MQTT 5) the `stream-offset` user property when
    /// `start` is given; returns the SUBACK codes.
    #[track_caller]
    fn subscribe(&mut self, filter: &str, qos: QoS, start: Option<&str>) -> Vec<u8> {
        let id = self.next_id();
        let user: Vec<(&str, &str)> = start.map(|s| ("stream-offset", s)).into_iter().collect();
        let values = PropValues {
            user_properties: PropList::Slice(&user),
            ..PropValues::default()
        };
        let entries = [SubscribeFilter {
            filter,
            options: SubOptions::qos(qos),
        }];
        let properties = if self.v5() {
            Properties::Values(&values)
        } else {
            assert!(start.is_none(), "no user properties in MQTT 3.1.1");
            Properties::default()
        };
        self.raw.send(&Packet::Subscribe(Subscribe {
            packet_id: id,
            properties,
            filters: mote_codec::List::Slice(&entries),
        }));
        let f = self.expect_control(9);
        match f.packet() {
            Packet::SubAck(a) => {
                assert_eq!(a.packet_id, id, "SUBACK packet id");
                a.codes.to_vec()
            }
            _ => unreachable!(),
        }
    }

    /// Subscribes and asserts QoS 1 was granted.
    #[track_caller]
    fn read_from(&mut self, filter: &str, start: Option<&str>) {
        let codes = self.subscribe(filter, QoS::AtLeastOnce, start);
        assert_eq!(codes, [1], "SUBACK for {filter} (start {start:?})");
    }

    /// Publishes with QoS 1 and returns the PUBACK's reason code (0 in 3.1.1).
    #[track_caller]
    fn publish(&mut self, topic: &str, payload: &[u8]) -> u8 {
        self.publish_with(topic, payload, Properties::default())
    }

    /// Publishes with QoS 1 and `properties`; returns the PUBACK's reason code.
    #[track_caller]
    fn publish_with(&mut self, topic: &str, payload: &[u8], properties: Properties<'_>) -> u8 {
        let id = self.next_id();
        self.raw.send(&Packet::Publish(mote_codec::Publish {
            properties,
            ..common::publish(topic, payload, QoS::AtLeastOnce, id)
        }));
        let f = self.expect_control(4);
        match f.packet() {
            Packet::PubAck(a) => {
                assert_eq!(a.packet_id, id, "PUBACK packet id");
                a.reason
            }
            _ => unreachable!(),
        }
    }

    /// Appends with QoS 1 and asserts the PUBACK says success.
    #[track_caller]
    fn append(&mut self, topic: &str, payload: &[u8]) {
        let code = self.publish(topic, payload);
        assert_eq!(
            code,
            reason::SUCCESS,
            "PUBACK of {topic} {:?}",
            String::from_utf8_lossy(payload)
        );
    }

    /// Appends `count` messages with QoS 1, up to `window` unacknowledged; the i-th goes
    /// to `topic` with `payload(first + i)`. Asserts every PUBACK says success.
    #[track_caller]
    fn append_many(
        &mut self,
        topic: &str,
        first: u32,
        count: u32,
        window: usize,
        payload: &dyn Fn(u32) -> Vec<u8>,
    ) {
        let mut in_flight = HashSet::new();
        let mut next = first;
        let end = first + count;
        while next < end || !in_flight.is_empty() {
            while next < end && in_flight.len() < window {
                let id = self.next_id();
                self.raw
                    .publish(topic, &payload(next), QoS::AtLeastOnce, id);
                in_flight.insert(id);
                next += 1;
            }
            let f = self.expect_control(4);
            let Packet::PubAck(a) = f.packet() else {
                unreachable!()
            };
            assert_eq!(a.reason, reason::SUCCESS, "PUBACK {}", f.describe());
            assert!(in_flight.remove(&a.packet_id), "PUBACK for an unknown id");
        }
    }

    /// The next PUBLISH within `timeout`, `None` when none comes.
    #[track_caller]
    fn next_msg(&mut self, timeout: Duration) -> Option<Msg> {
        if let Some(m) = self.queued.pop_front() {
            return Some(m);
        }
        match self.raw.recv(timeout) {
            Recv::Frame(f) if f.kind() == 3 => Some(f.publish()),
            Recv::Frame(f) => panic!("unexpected packet among messages: {}", f.describe()),
            Recv::Timeout => None,
            Recv::Closed => panic!("the broker closed the connection"),
        }
    }

    /// Exactly the next `n` messages (within `WAIT` in all), acknowledging each when
    /// `ack`.
    #[track_caller]
    fn read(&mut self, n: usize, ack: bool) -> Vec<Msg> {
        let end = Instant::now() + WAIT;
        let mut got = Vec::new();
        while got.len() < n {
            match self.next_msg(end.saturating_duration_since(Instant::now())) {
                Some(m) => {
                    if ack {
                        self.ack(&m);
                    }
                    got.push(m);
                }
                None => panic!(
                    "{n} messages expected, {} arrived: {:?}",
                    got.len(),
                    show(&got)
                ),
            }
        }
        got
    }

    /// What arrives until nothing has for `QUIET` (the caller expects nothing).
    fn quiet(&mut self) -> Vec<Msg> {
        let mut got = Vec::new();
        while let Some(m) = self.next_msg(QUIET) {
            self.ack(&m);
            got.push(m);
        }
        got
    }

    /// Acknowledges a QoS 1 delivery.
    fn ack(&mut self, m: &Msg) {
        self.raw.ack(m);
    }

    /// DISCONNECT (reason 0), then waits for the close.
    fn disconnect(self) {
        self.raw.disconnect();
    }
}

/// The value of user property `key` of a delivery.
fn prop<'a>(m: &'a Msg, key: &str) -> Option<&'a str> {
    m.user_properties
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// The `mote-offset` of an MQTT 5 delivery.
#[track_caller]
fn offset(m: &Msg) -> u64 {
    let v = prop(m, "mote-offset")
        .unwrap_or_else(|| panic!("no mote-offset on {:?}", show(std::slice::from_ref(m))));
    v.parse()
        .unwrap_or_else(|_| panic!("mote-offset {v:?} is not a number"))
}

/// The number a payload starts with (payloads here are `N` or `N` padded).
#[track_caller]
fn num(m: &Msg) -> u64 {
    let digits: String = m
        .payload
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .map(|&b| char::from(b))
        .collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("payload {:?} is not numbered", m.payload))
}

/// Messages as (topic, payload, offset, dup), for failure messages.
fn show(msgs: &[Msg]) -> Vec<(String, String, Option<String>, bool)> {
    msgs.iter()
        .map(|m| {
            let mut p = String::from_utf8_lossy(&m.payload).into_owned();
            p.truncate(24);
            (
                m.topic.clone(),
                p,
                prop(m, "mote-offset").map(str::to_owned),
                m.dup,
            )
        })
        .collect()
}

/// The offsets of MQTT 5 deliveries.
fn offsets(msgs: &[Msg]) -> Vec<u64> {
    msgs.iter().map(offset).collect()
}

/// The payload numbers of deliveries.
fn nums(msgs: &[Msg]) -> Vec<u64> {
    msgs.iter().map(num).collect()
}

/// Payload `i` (its number), as the small tests use.
fn small(i: u32) -> Vec<u8> {
    i.to_string().into_bytes()
}

/// Reads from every member of a group, acknowledging each message, until `total`
/// arrived across them (within 15 s), then until all are quiet; appends each member's
/// messages to `into`.
#[track_caller]
fn gather(members: &mut [Client], total: usize, into: &mut [Vec<Msg>]) {
    let end = Instant::now() + Duration::from_secs(15);
    let count = |into: &[Vec<Msg>]| into.iter().map(Vec::len).sum::<usize>();
    let start = count(into);
    while count(into) - start < total && Instant::now() < end {
        for (c, got) in members.iter_mut().zip(into.iter_mut()) {
            if let Some(m) = c.next_msg(Duration::from_millis(10)) {
                c.ack(&m);
                got.push(m);
            }
        }
    }
    for (c, got) in members.iter_mut().zip(into.iter_mut()) {
        got.extend(c.quiet());
    }
}

/// Options of a CONNECT with properties (kept for the life of the test process).
fn with_props(c: Connect<'static>, props: PropValues<'static>) -> Connect<'static> {
    let props: &'static PropValues<'static> = Box::leak(Box::new(props));
    Connect {
        properties: Properties::Values(props),
        ..c
    }
}

/// The latest values published under `$SYS/broker/streams/`, by the rest of the topic.
struct Sys {
    client: Client,
    seen: BTreeMap<String, String>,
}

impl Sys {
    #[track_caller]
    fn watch(broker: &Broker, id: &str) -> Sys {
        let mut client = Client::new(broker, Protocol::V311, id);
        let codes = client.subscribe("$SYS/broker/streams/#", QoS::AtMostOnce, None);
        assert_eq!(codes, [0], "SUBACK for $SYS/broker/streams/#");
        Sys {
            client,
            seen: BTreeMap::new(),
        }
    }

    /// Waits (at most `secs`; `$SYS` is published every second in these tests) until
    /// `ok` holds for the latest values.
    #[track_caller]
    fn wait(&mut self, what: &str, secs: u64, ok: impl Fn(&BTreeMap<String, String>) -> bool) {
        let end = Instant::now() + Duration::from_secs(secs);
        loop {
            if ok(&self.seen) {
                return;
            }
            assert!(
                Instant::now() < end,
                "$SYS/broker/streams: {what} not reached; latest values: {:#?}",
                self.seen
            );
            if let Some(m) = self.client.next_msg(Duration::from_millis(200)) {
                let key = m
                    .topic
                    .strip_prefix("$SYS/broker/streams/")
                    .unwrap_or(&m.topic)
                    .to_owned();
                self.seen
                    .insert(key, String::from_utf8_lossy(&m.payload).into_owned());
            }
        }
    }

    /// Waits until each `(key, value)` of `want` is the latest.
    #[track_caller]
    fn expect(&mut self, want: &[(&str, &str)]) {
        self.wait(&format!("{want:?}"), 10, |seen| {
            want.iter()
                .all(|(k, v)| seen.get(*k).map(String::as_str) == Some(*v))
        });
    }

    /// The latest value of `key` as a number.
    fn number(&self, key: &str) -> Option<i64> {
        self.seen.get(key).and_then(|v| v.trim().parse().ok())
    }
}

// ---------------------------------------------------------------------------------------
// paho-mqtt
// ---------------------------------------------------------------------------------------

/// paho MQTT 5: `earliest`, `latest`, offset 2, `@UNIX_MS` between the third and fourth
/// message; `mote-offset` and `mote-timestamp` on every delivery; the publisher's
/// properties kept; the property beats the topic form; QoS 2 granted 1, QoS 0 read at 0;
/// every reader goes on with new appends (`tests/python/streams_replay.py`).
fn paho_v5_replays_from_every_kind_of_start() {
    let broker = Broker::start();
    run_py(
        &broker,
        "streams_replay.py",
        &[],
        &[
            "publishes_acknowledged_0x00",
            "suback_earliest",
            "earliest_payloads",
            "earliest_offsets",
            "earliest_topics",
            "earliest_qos",
            "timestamps_present",
            "timestamps_plausible",
            "timestamps_around_the_gap",
            "publisher_properties_kept",
            "offset_2_payloads",
            "offset_2_offsets",
            "offset_2_same_timestamps",
            "time_start_payloads",
            "time_start_offsets",
            "property_wins_over_topic_form",
            "qos2_granted_qos1",
            "qos2_reader_gets_qos1",
            "qos0_reader",
            "latest_gets_nothing_of_the_past",
            "default_start_gets_nothing_of_the_past",
            "earliest_reader_gets_new_appends",
            "latest_reader_gets_new_appends",
            "no_start_reader_gets_new_appends",
            "time_reader_gets_new_appends",
        ],
        20,
    );
}

/// Three paho MQTT 5 members of `$share/g/$stream/s5` (start `earliest`), 300 messages
/// over ten keys, half before they join: each message exactly once across the group,
/// each member's offsets increasing per key, and each key's deliveries in offset order
/// across the group as keys move to members that join (`tests/python/streams_group.py`).
fn paho_group_of_three_reads_every_message_once_in_key_order() {
    let broker = Broker::start();
    run_py(
        &broker,
        "streams_group.py",
        &[],
        &[
            "first_half_acknowledged",
            "suback_member0",
            "suback_member2",
            "second_half_acknowledged",
            "every_delivery_has_an_offset",
            "every_message_exactly_once",
            "offsets_follow_publish_order",
            "each_members_offsets_increase_per_key",
            "each_key_in_offset_order_across_the_group",
            "no_redelivery_without_a_departure",
        ],
        30,
    );
}

fn persistent_reader(version: &str) {
    let broker = Broker::start();
    let mut checks = vec![
        "declared",
        "first_connect_no_session",
        "suback",
        "first_read_from_earliest",
        "session_present",
        "resumes_after_the_acknowledged",
        "unacknowledged_resent_with_dup",
        "new_appends_not_dup",
        "session_present_again",
        "appended_while_away",
        "appended_while_away_not_dup",
        "resubscribe_without_start_keeps_position",
    ];
    if version == "5" {
        checks.push("resubscribe_with_start_moves_position");
    }
    run_py(
        &broker,
        "streams_persistent.py",
        &["--version", version],
        &checks,
        25,
    );
}

/// A persistent MQTT 5 reader (Session Expiry 3600, paho manual acks) acknowledges 5 of
/// 10 and reconnects without subscribing: offsets 5.. come (the unacknowledged with
/// DUP), then what was appended while it was away; subscribing again without a start
/// keeps the position, with one moves it (`tests/python/streams_persistent.py`).
fn paho_persistent_reader_keeps_its_position_v5() {
    persistent_reader("5");
}

/// The same with a 3.1.1 clean-session-0 reader.
fn paho_persistent_reader_keeps_its_position_v311() {
    persistent_reader("311");
}

// ---------------------------------------------------------------------------------------
// MQTT 3.1.1: the topic form; filters; mosquitto_sub
// ---------------------------------------------------------------------------------------

/// Runs `mosquitto_sub ARGS` against `broker` until it exits (10 s at most) and
/// returns its stdout lines; asserts it exited 0.
#[track_caller]
fn mosquitto_sub(broker: &Broker, args: &[&str]) -> Vec<String> {
    let port = broker.port().to_string();
    let (status, out, err) = spawn(
        Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &port, "-W", "10"])
            .args(args),
    )
    .wait_output(Duration::from_secs(12));
    assert!(
        status.is_some_and(|s| s.success()),
        "mosquitto_sub {args:?}: {status:?}\n--- stdout\n{out}\n--- stderr\n{err}\n\
         --- broker log (tail)\n{}",
        mote_tests::tail(&broker.log(), 30)
    );
    out.lines().map(str::to_owned).collect()
}

/// MQTT 3.1.1 clients name the start in the topic: paho 3.1.1 readers of
/// `$stream/s2/@earliest`, `@3`, `@@UNIX_MS`, `@1000` (past the end) and `@latest`
/// (`tests/python/streams_v311.py`), then `mosquitto_sub -V mqttv311` from `@3`. A
/// stream declared over MQTT with a `filter` (`$admin/stream/s3`, v5 PUBACK 0x00)
/// appends ordinary publishes with their own topics, which ordinary subscribers still
/// get; `$stream/s3/@earliest/dev/a/+` reads only the matching ones, and so does
/// `$stream/s3/dev/a/+` (no start: the declared `default_offset`, `earliest`).
fn topic_form_starts_and_filters_for_mqtt311() {
    let broker = Broker::start();
    run_py(
        &broker,
        "streams_v311.py",
        &[],
        &[
            "suback_earliest",
            "earliest_replays_all",
            "deliveries_keep_the_message_topic",
            "deliveries_at_qos1",
            "offset_3_replays_from_3",
            "time_start_replays_from_2",
            "latest_gets_nothing_of_the_past",
            "past_the_end_gets_nothing_of_the_past",
            "earliest_reader_gets_the_new_append",
            "offset_3_reader_gets_the_new_append",
            "time_reader_gets_the_new_append",
            "past_end_reader_gets_the_new_append",
            "latest_reader_gets_the_new_append",
        ],
        20,
    );
    // The script left p0..p5 in $stream/s2.
    let lines = mosquitto_sub(
        &broker,
        &[
            "-V",
            "mqttv311",
            "-q",
            "1",
            "-v",
            "-t",
            "$stream/s2/@3",
            "-C",
            "3",
        ],
    );
    assert_eq!(
        lines,
        ["$stream/s2 p3", "$stream/s2 p4", "$stream/s2 p5"],
        "mosquitto_sub -V mqttv311 -t '$stream/s2/@3'"
    );

    // A declared stream with a filter.
    let mut admin = Client::new(&broker, Protocol::V5, "s3-admin");
    let decl = br#"{"filter": "dev/#", "default_offset": "earliest"}"#;
    assert_eq!(
        admin.publish("$admin/stream/s3", decl),
        reason::SUCCESS,
        "declared"
    );
    let mut plain = Client::new(&broker, Protocol::V311, "s3-plain");
    plain.read_from("dev/#", None);
    let mut p = Client::new(&broker, Protocol::V311, "s3-pub");
    for (topic, body) in [("dev/a/t", "t1"), ("dev/b/t", "t2"), ("dev/a/h", "h1")] {
        p.append(topic, body.as_bytes());
    }
    let got = plain.read(3, true);
    let pairs = |msgs: &[Msg]| -> Vec<(String, String)> {
        msgs.iter()
            .map(|m| {
                (
                    m.topic.clone(),
                    String::from_utf8_lossy(&m.payload).into_owned(),
                )
            })
            .collect()
    };
    let own = |v: &[(&str, &str)]| -> Vec<(String, String)> {
        v.iter()
            .map(|(t, b)| (t.to_string(), b.to_string()))
            .collect()
    };
    assert_eq!(
        pairs(&got),
        own(&[("dev/a/t", "t1"), ("dev/b/t", "t2"), ("dev/a/h", "h1")]),
        "an ordinary subscriber of dev/# still gets everything"
    );
    assert_eq!(pairs(&plain.quiet()), own(&[]));

    let mut v5 = Client::new(&broker, Protocol::V5, "s3-v5");
    v5.read_from("$stream/s3/@earliest/dev/a/+", None);
    let got = v5.read(2, true);
    assert_eq!(
        pairs(&got),
        own(&[("dev/a/t", "t1"), ("dev/a/h", "h1")]),
        "$stream/s3/@earliest/dev/a/+ reads the dev/a ones, with their own topics"
    );
    assert_eq!(offsets(&got), [0, 2], "offsets in the whole stream");
    assert_eq!(show(&v5.quiet()), []);

    let mut v311 = Client::new(&broker, Protocol::V311, "s3-v311");
    v311.read_from("$stream/s3/dev/a/+", None);
    let got = v311.read(2, true);
    assert_eq!(
        pairs(&got),
        own(&[("dev/a/t", "t1"), ("dev/a/h", "h1")]),
        "$stream/s3/dev/a/+ with the declared default_offset earliest"
    );
    assert_eq!(show(&v311.quiet()), []);

    let lines = mosquitto_sub(
        &broker,
        &[
            "-V",
            "mqttv311",
            "-q",
            "1",
            "-v",
            "-t",
            "$stream/s3/@earliest/dev/a/+",
            "-C",
            "2",
        ],
    );
    assert_eq!(
        lines,
        ["dev/a/t t1", "dev/a/h h1"],
        "mosquitto_sub on the filter form"
    );
}

/// `mosquitto_sub -t '$stream/s10/@earliest' -C 3` (3.1.1, its default) prints the first
/// three payloads; at QoS 0 too; and MQTT 5 with `-D subscribe user-property
/// stream-offset 3` prints the last two, with their `mote-offset`.
fn mosquitto_sub_replays_a_stream() {
    let broker = Broker::start();
    let mut p = Client::new(&broker, Protocol::V311, "s10-pub");
    for i in 0..5 {
        p.append("$stream/s10", format!("p{i}").as_bytes());
    }
    let lines = mosquitto_sub(
        &broker,
        &["-q", "1", "-t", "$stream/s10/@earliest", "-C", "3"],
    );
    assert_eq!(lines, ["p0", "p1", "p2"], "QoS 1 reader");
    let lines = mosquitto_sub(&broker, &["-t", "$stream/s10/@earliest", "-C", "3"]);
    assert_eq!(lines, ["p0", "p1", "p2"], "QoS 0 reader");
    let lines = mosquitto_sub(
        &broker,
        &[
            "-V",
            "mqttv5",
            "-q",
            "1",
            "-t",
            "$stream/s10",
            "-D",
            "subscribe",
            "user-property",
            "stream-offset",
            "3",
            "-F",
            "%p|%P",
            "-C",
            "2",
        ],
    );
    assert_eq!(lines.len(), 2, "{lines:?}");
    for (line, (payload, off)) in lines.iter().zip([("p3", "3"), ("p4", "4")]) {
        let (body, props) = line.split_once('|').unwrap_or((line, ""));
        assert_eq!(body, payload, "{lines:?}");
        assert!(
            props.contains(&format!("mote-offset:{off}")),
            "user properties of {payload}: {props:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Consumer groups
// ---------------------------------------------------------------------------------------

/// Two groups of the same stream read it independently: `$share/g1/$stream/s4` (two v5
/// members, start property `earliest`) and `$share/g2/$stream/s4/@earliest` (two 3.1.1
/// members) each get all 20 messages appended before they joined and the 10 after,
/// once each across their members.
fn two_consumer_groups_each_read_every_message_once() {
    let broker = Broker::start();
    let mut p = Client::new(&broker, Protocol::V5, "s4-pub");
    p.append_many("$stream/s4", 0, 20, 10, &small);
    let mut g1: Vec<Client> = (0..2)
        .map(|i| {
            let mut c = Client::new(&broker, Protocol::V5, &format!("s4-g1-{i}"));
            c.read_from("$share/g1/$stream/s4", Some("earliest"));
            c
        })
        .collect();
    let mut g2: Vec<Client> = (0..2)
        .map(|i| {
            let mut c = Client::new(&broker, Protocol::V311, &format!("s4-g2-{i}"));
            c.read_from("$share/g2/$stream/s4/@earliest", None);
            c
        })
        .collect();
    let mut got1 = vec![Vec::new(), Vec::new()];
    let mut got2 = vec![Vec::new(), Vec::new()];
    gather(&mut g1, 20, &mut got1);
    gather(&mut g2, 20, &mut got2);
    p.append_many("$stream/s4", 20, 10, 10, &small);
    gather(&mut g1, 10, &mut got1);
    gather(&mut g2, 10, &mut got2);
    for (name, got) in [("g1", &got1), ("g2", &got2)] {
        let mut all: Vec<u64> = got.iter().flat_map(|m| nums(m)).collect();
        all.sort_unstable();
        assert_eq!(
            all,
            (0..30).collect::<Vec<u64>>(),
            "group {name}: every message once; per member: {:?}",
            got.iter().map(|m| show(m)).collect::<Vec<_>>()
        );
    }
    for m in got1.iter().flatten() {
        assert_eq!(offset(m), num(m), "mote-offset of message {}", num(m));
        assert_eq!(m.topic, "$stream/s4");
    }
}

/// A stream declared with `key = "user:dev"`: a group's two members (both online before
/// anything is appended, so no key moves) get each `dev` value's messages at one member,
/// in offset order, whatever topics they were published to; a message without `dev`
/// is keyed by its topic. Every message once.
fn a_user_property_key_keeps_each_key_at_one_member_in_order() {
    let broker = Broker::start();
    let mut p = Client::new(&broker, Protocol::V5, "sk-pub");
    let decl = br#"{"key": "user:dev", "default_offset": "earliest"}"#;
    assert_eq!(
        p.publish("$admin/stream/sk", decl),
        reason::SUCCESS,
        "declared"
    );
    let mut members: Vec<Client> = (0..2)
        .map(|i| {
            let mut c = Client::new(&broker, Protocol::V5, &format!("sk-m{i}"));
            c.read_from("$share/gk/$stream/sk", None);
            c
        })
        .collect();
    const COUNT: u32 = 80;
    for i in 0..COUNT {
        let topic = format!("$stream/sk/t{}", i % 5);
        let dev = format!("d{}", i % 8);
        let user = [("dev", dev.as_str())];
        let values = PropValues {
            user_properties: PropList::Slice(&user),
            ..PropValues::default()
        };
        // Every 10th has no `dev`: keyed by its topic, `$stream/sk/tN`.
        let props = if i % 10 == 9 {
            Properties::default()
        } else {
            Properties::Values(&values)
        };
        let code = p.publish_with(&topic, &small(i), props);
        assert_eq!(code, reason::SUCCESS, "append {i}");
    }
    let mut got = vec![Vec::new(), Vec::new()];
    gather(&mut members, COUNT as usize, &mut got);
    let mut all: Vec<u64> = got.iter().flat_map(|m| offsets(m)).collect();
    all.sort_unstable();
    assert_eq!(
        all,
        (0..u64::from(COUNT)).collect::<Vec<u64>>(),
        "every message once"
    );
    // key -> (member, offsets in arrival order at that member)
    let mut keys: BTreeMap<String, Vec<(usize, u64)>> = BTreeMap::new();
    for (i, msgs) in got.iter().enumerate() {
        for m in msgs {
            assert_eq!(num(m), offset(m), "payload of offset {}", offset(m));
            let key = prop(m, "dev").map_or_else(|| m.topic.clone(), |d| format!("dev={d}"));
            keys.entry(key).or_default().push((i, offset(m)));
        }
    }
    for (key, seen) in &keys {
        let members: HashSet<usize> = seen.iter().map(|(i, _)| *i).collect();
        assert_eq!(members.len(), 1, "key {key} went to both members: {seen:?}");
        let offs: Vec<u64> = seen.iter().map(|(_, o)| *o).collect();
        let mut sorted = offs.clone();
        sorted.sort_unstable();
        assert_eq!(offs, sorted, "key {key} out of order");
    }
    eprintln!(
        "per member: {:?} messages; keys: {:?}",
        got.iter().map(Vec::len).collect::<Vec<_>>(),
        keys.iter()
            .map(|(k, v)| (k.as_str(), v[0].0))
            .collect::<Vec<_>>()
    );
}

/// A group's committed offset outlives its member: a v5 member (clean start) takes 20,
/// acknowledges the first 10 and disconnects; a new member naming start `earliest`
/// (ignored: the group exists) gets exactly offsets 10..19, flagged DUP (given back);
/// it acknowledges 10..14 and leaves, and a 3.1.1 member naming no start gets 15..19,
/// then what is appended next.
fn a_group_resumes_at_its_committed_offset_after_a_consumer_restart() {
    let broker = Broker::start();
    let mut p = Client::new(&broker, Protocol::V5, "s5c-pub");
    p.append_many("$stream/s5c", 0, 20, 10, &small);
    let group = "$share/cg/$stream/s5c";

    let mut a = Client::new(&broker, Protocol::V5, "s5c-a");
    a.read_from(group, Some("earliest"));
    let got = a.read(20, false);
    assert_eq!(offsets(&got), (0..20).collect::<Vec<u64>>(), "first member");
    assert_eq!(nums(&got), (0..20).collect::<Vec<u64>>());
    for m in &got[..10] {
        a.ack(m);
    }
    a.disconnect();

    let mut b = Client::new(&broker, Protocol::V5, "s5c-b");
    b.read_from(group, Some("earliest"));
    let got = b.read(10, false);
    assert_eq!(
        offsets(&got),
        (10..20).collect::<Vec<u64>>(),
        "the group goes on from its committed offset: {:?}",
        show(&got)
    );
    assert!(
        got.iter().all(|m| m.dup),
        "given back by the member that left: DUP {:?}",
        show(&got)
    );
    assert_eq!(show(&b.quiet()), [], "nothing before the committed offset");
    for m in &got[..5] {
        b.ack(m);
    }
    b.disconnect();

    let mut c = Client::new(&broker, Protocol::V311, "s5c-c");
    c.read_from(group, None);
    let got = c.read(5, true);
    assert_eq!(nums(&got), [15, 16, 17, 18, 19], "{:?}", show(&got));
    assert_eq!(show(&c.quiet()), []);
    p.append_many("$stream/s5c", 20, 5, 5, &small);
    let got = c.read(5, true);
    assert_eq!(nums(&got), [20, 21, 22, 23, 24]);
    assert_eq!(show(&c.quiet()), []);
}

/// Across a broker restart (SIGTERM, same data directory): a group whose member
/// acknowledged 10 of 20 goes on at exactly 10 with a new member (start `earliest`
/// ignored), and a persistent 3.1.1 reader of `$stream/s6/@earliest` (clean session 0)
/// that acknowledged 12 goes on at 12 on reconnecting, without subscribing again (its
/// `@earliest` not applied again). Both then get what is appended next.
fn committed_offsets_survive_a_broker_restart() {
    let dir = TempDir::new("mote-streams-restart");
    let args = ["--data-dir", dir.path.to_str().unwrap()];
    let mut broker = Broker::start_with(&args, None);
    let mut p = Client::new(&broker, Protocol::V5, "s6-pub");
    p.append_many("$stream/s6", 0, 20, 10, &small);
    p.disconnect();

    let mut a = Client::new(&broker, Protocol::V5, "s6-a");
    a.read_from("$share/g6/$stream/s6", Some("earliest"));
    let got = a.read(20, false);
    assert_eq!(offsets(&got), (0..20).collect::<Vec<u64>>());
    for m in &got[..10] {
        a.ack(m);
    }
    a.disconnect();

    let (mut r, present) = Client::open(
        broker.addr,
        &connect_packet(Protocol::V311, "s6-reader", false),
    );
    assert!(!present, "a new session");
    r.read_from("$stream/s6/@earliest", None);
    let got = r.read(20, false);
    assert_eq!(nums(&got), (0..20).collect::<Vec<u64>>());
    for m in &got[..12] {
        r.ack(m);
    }
    r.disconnect();
    // Let the broker handle the DISCONNECTs and acknowledgements before it is stopped.
    std::thread::sleep(Duration::from_millis(300));
    let status = broker.terminate();
    assert!(
        status.is_some_and(|s| s.success()),
        "graceful stop: {status:?}\n{}",
        mote_tests::tail(&broker.log(), 30)
    );

    let broker = Broker::start_with(&args, None);
    let mut b = Client::new(&broker, Protocol::V5, "s6-b");
    b.read_from("$share/g6/$stream/s6", Some("earliest"));
    let got = b.read(10, true);
    assert_eq!(
        offsets(&got),
        (10..20).collect::<Vec<u64>>(),
        "the group's committed offset after a restart: {:?}",
        show(&got)
    );
    assert_eq!(show(&b.quiet()), []);

    let (mut r, present) = Client::open(
        broker.addr,
        &connect_packet(Protocol::V311, "s6-reader", false),
    );
    assert!(present, "the reader's session survived the restart");
    let got = r.read(8, true);
    assert_eq!(
        nums(&got),
        (12..20).collect::<Vec<u64>>(),
        "the reader's position after a restart: {:?}",
        show(&got)
    );
    assert_eq!(show(&r.quiet()), []);

    let mut p = Client::new(&broker, Protocol::V5, "s6-pub2");
    p.append_many("$stream/s6", 20, 2, 2, &small);
    assert_eq!(offsets(&b.read(2, true)), [20, 21], "offsets go on");
    assert_eq!(nums(&r.read(2, true)), [20, 21]);
}

/// Publishes `count` numbered messages (payload `r2-N`) with QoS 1, up to 50 in flight,
/// until the broker goes away; records in `acked` the numbers whose PUBACK arrived.
fn produce_until_killed(mut raw: Raw, count: u32, acked: &Mutex<Vec<u32>>) {
    let mut in_flight: HashMap<u16, u32> = HashMap::new();
    let mut next = 0u32;
    loop {
        while next < count && in_flight.len() < 50 {
            let id = (next % 60_000) as u16 + 1;
            let body = format!("r2-{next}");
            let publish = Packet::Publish(common::publish(
                "$stream/s6k",
                body.as_bytes(),
                QoS::AtLeastOnce,
                id,
            ));
            if !raw.send_raw(&common::encode(&publish, Protocol::V5)) {
                return;
            }
            in_flight.insert(id, next);
            next += 1;
        }
        if in_flight.is_empty() {
            return;
        }
        match raw.recv(Duration::from_secs(5)) {
            Recv::Frame(f) if f.kind() == 4 => {
                let Packet::PubAck(a) = f.packet() else {
                    unreachable!()
                };
                assert_eq!(a.reason, 0, "append refused");
                if let Some(n) = in_flight.remove(&a.packet_id) {
                    acked.lock().unwrap().push(n);
                }
            }
            Recv::Frame(_) => {}
            Recv::Closed | Recv::Timeout => return,
        }
    }
}

/// SIGKILL: 300 acknowledged appends are all there after a restart, offsets dense
/// 0..299; a group that acknowledged 50 and then sat idle for a second resumes at 50;
/// appends go on at 300. Then SIGKILL while a publisher appends with 50 in flight:
/// every acknowledged append is there, the stream is still dense, what was appended
/// is a prefix of what was sent, in order (no hole, no reuse), and the next append takes
/// the offset after the last kept.
fn acknowledged_appends_survive_sigkill_with_dense_offsets() {
    const N: u32 = 300;
    let dir = TempDir::new("mote-streams-kill");
    let args = ["--data-dir", dir.path.to_str().unwrap()];
    let mut broker = Broker::start_with(&args, None);
    let mut p = Client::new(&broker, Protocol::V5, "s6k-pub");
    p.append_many("$stream/s6k", 0, N, 50, &small);
    let mut g = Client::new(&broker, Protocol::V5, "s6k-g");
    g.read_from("$share/gk/$stream/s6k", Some("earliest"));
    let got = g.read(50, true);
    assert_eq!(offsets(&got), (0..50).collect::<Vec<u64>>());
    // The commits are journaled without waiting; a second is plenty for them to be.
    std::thread::sleep(Duration::from_secs(1));
    broker.kill();
    drop((p, g));

    let mut broker = Broker::start_with(&args, None);
    let mut r = Client::new(&broker, Protocol::V5, "s6k-reader");
    r.read_from("$stream/s6k", Some("earliest"));
    let got = r.read(N as usize, true);
    assert_eq!(
        offsets(&got),
        (0..u64::from(N)).collect::<Vec<u64>>(),
        "dense"
    );
    assert_eq!(
        nums(&got),
        (0..u64::from(N)).collect::<Vec<u64>>(),
        "payloads"
    );
    assert_eq!(show(&r.quiet()), []);
    let mut g = Client::new(&broker, Protocol::V5, "s6k-g2");
    g.read_from("$share/gk/$stream/s6k", None);
    let got = g.read(usize::try_from(N - 50).unwrap(), true);
    assert_eq!(
        offsets(&got),
        (50..u64::from(N)).collect::<Vec<u64>>(),
        "the group resumes at the offset it had committed a second before the kill"
    );
    assert_eq!(show(&g.quiet()), []);
    let mut p = Client::new(&broker, Protocol::V5, "s6k-pub2");
    p.append_many("$stream/s6k", N, 2, 2, &small);
    assert_eq!(offsets(&r.read(2, true)), [300, 301], "offsets go on at N");
    assert_eq!(offsets(&g.read(2, true)), [300, 301]);
    drop((r, g, p));

    // SIGKILL while appending.
    let acked = Arc::new(Mutex::new(Vec::new()));
    let producer = {
        let raw = common::connect(broker.addr, Protocol::V5, "s6k-flood");
        let acked = acked.clone();
        std::thread::spawn(move || produce_until_killed(raw, 20_000, &acked))
    };
    let end = Instant::now() + Duration::from_secs(30);
    while acked.lock().unwrap().len() < 500 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(2));
    }
    broker.kill();
    producer.join().unwrap();
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 500,
        "only {} appends before the kill",
        acked.len()
    );

    let broker = Broker::start_with(&args, None);
    let mut r = Client::new(&broker, Protocol::V5, "s6k-reader2");
    r.read_from("$stream/s6k", Some("302"));
    let mut got = Vec::new();
    while let Some(m) = r.next_msg(Duration::from_secs(1)) {
        r.ack(&m);
        got.push(m);
    }
    let kept = got.len() as u64;
    assert_eq!(
        offsets(&got),
        (302..302 + kept).collect::<Vec<u64>>(),
        "offsets dense after a kill mid-append"
    );
    let sent: Vec<String> = (0..kept).map(|i| format!("r2-{i}")).collect();
    let bodies: Vec<String> = got
        .iter()
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect();
    assert_eq!(
        bodies, sent,
        "what was kept is what was sent first, in order"
    );
    let max_acked = u64::from(*acked.iter().max().unwrap());
    assert!(
        kept > max_acked,
        "acknowledged appends lost: r2-{max_acked} was acknowledged, {kept} kept"
    );
    let mut p = Client::new(&broker, Protocol::V5, "s6k-pub3");
    p.append("$stream/s6k", b"after");
    let m = r.read(1, true).pop().unwrap();
    assert_eq!(
        (offset(&m), &m.payload[..]),
        (302 + kept, &b"after"[..]),
        "the next append takes the offset after the last kept, never one reused"
    );
}

// ---------------------------------------------------------------------------------------
// Retention, $SYS
// ---------------------------------------------------------------------------------------

/// Payload of message `i` of the retention test: its number, padded to 200 bytes.
/// Waits (30 s at most) until `$SYS` shows stream `name` cut by retention: its first
/// offset above 0, at most `max_bytes` kept, its last offset `last`; returns the first
/// offset shown.
#[track_caller]
fn trimmed(sys: &mut Sys, name: &str, max_bytes: i64, last: i64) -> i64 {
    let key = |k: &str| format!("{name}/{k}");
    sys.wait(
        &format!("{name}: first_offset > 0, bytes <= {max_bytes}, last_offset {last}"),
        30,
        |s: &BTreeMap<String, String>| {
            let n = |k: &str| s.get(&key(k)).and_then(|v| v.trim().parse::<i64>().ok());
            n("first_offset").is_some_and(|f| f > 0)
                && n("bytes").is_some_and(|b| b <= max_bytes)
                && n("last_offset") == Some(last)
        },
    );
    sys.number(&key("first_offset")).unwrap()
}

/// Reads stream `name` from the earliest with MQTT 5 client `id`, acknowledging each,
/// until nothing comes for a second.
fn read_everything(broker: &Broker, id: &str, name: &str) -> Vec<Msg> {
    let mut r = Client::new(broker, Protocol::V5, id);
    r.read_from(&format!("$stream/{name}"), Some("earliest"));
    let mut got = Vec::new();
    while let Some(m) = r.next_msg(Duration::from_secs(1)) {
        r.ack(&m);
        got.push(m);
    }
    got
}

fn padded200(i: u32) -> Vec<u8> {
    let mut p = format!("{i:06}").into_bytes();
    p.resize(200, b'.');
    p
}

/// `$admin/stream/s8` with `max_bytes` 200000 and `segment_bytes` 20000, then 2000
/// messages of 200 bytes (400 KB): the oldest segments go. A reader from `earliest`
/// gets the newest messages only, dense, at most `max_bytes` of payload, from the
/// `first_offset` `$SYS` shows; a reader from offset 0 starts at the first kept; a group
/// created before the appends (committed offset 0) goes on from the first kept and its
/// first delivery says how many offsets it skipped (`mote-skipped`).
fn retention_by_size_keeps_the_newest_messages_dense() {
    const COUNT: u32 = 2000;
    let dir = TempDir::new("mote-streams-retention");
    let broker = Broker::start_with(
        &["--data-dir", dir.path.to_str().unwrap(), "--fsync", "never"],
        Some("[mqtt]\nsys_interval_secs = 1\n"),
    );
    let mut admin = Client::new(&broker, Protocol::V5, "s8-admin");
    let decl = br#"{"max_bytes": 200000, "segment_bytes": 20000}"#;
    assert_eq!(
        admin.publish("$admin/stream/s8", decl),
        reason::SUCCESS,
        "declared"
    );
    // A group that exists before anything is appended, then has no member.
    let mut old = Client::new(&broker, Protocol::V5, "s8-old");
    old.read_from("$share/old/$stream/s8", Some("earliest"));
    assert_eq!(show(&old.quiet()), []);
    old.disconnect();

    let mut p = Client::new(&broker, Protocol::V5, "s8-pub");
    p.append_many("$stream/s8", 0, COUNT, 50, &padded200);

    // Retention runs now and then (docs/streams.md gives no period): 30 s at most.
    let mut sys = Sys::watch(&broker, "s8-sys");
    let first_sys = trimmed(&mut sys, "s8", 200_000, i64::from(COUNT) - 1);
    let got = read_everything(&broker, "s8-reader", "s8");
    assert!(!got.is_empty(), "nothing kept");
    let first = offset(&got[0]);
    let kept = got.len() as u64;
    assert!(first > 0, "retention dropped nothing");
    assert_eq!(
        offsets(&got),
        (first..u64::from(COUNT)).collect::<Vec<u64>>(),
        "the newest messages, dense"
    );
    assert_eq!(nums(&got), offsets(&got), "payloads match their offsets");
    assert!(
        kept * 200 <= 200_000,
        "{kept} messages of 200 bytes kept, over max_bytes"
    );
    assert!(
        kept >= 300,
        "only {kept} kept: retention dropped far more than max_bytes asks"
    );
    assert_eq!(
        i64::try_from(first).unwrap(),
        first_sys,
        "the first delivered is $SYS first_offset"
    );
    assert_eq!(
        prop(&got[0], "mote-skipped"),
        None,
        "a reader starting at earliest skipped nothing"
    );
    sys.expect(&[("s8/messages", kept.to_string().as_str())]);

    let mut zero = Client::new(&broker, Protocol::V5, "s8-zero");
    zero.read_from("$stream/s8", Some("0"));
    let m = zero.read(1, true).pop().unwrap();
    assert_eq!(
        offset(&m),
        first,
        "offset 0 is before the first kept: the first kept"
    );

    let mut again = Client::new(&broker, Protocol::V5, "s8-old2");
    again.read_from("$share/old/$stream/s8", None);
    let mut got = Vec::new();
    while let Some(m) = again.next_msg(Duration::from_secs(1)) {
        again.ack(&m);
        got.push(m);
    }
    assert_eq!(
        offsets(&got),
        (first..u64::from(COUNT)).collect::<Vec<u64>>(),
        "the group goes on from the first kept"
    );
    assert_eq!(
        prop(&got[0], "mote-skipped"),
        Some(first.to_string().as_str()),
        "the group's first delivery says it skipped offsets 0..{first}"
    );
    assert!(
        got[1..].iter().all(|m| prop(m, "mote-skipped").is_none()),
        "mote-skipped on the first delivery only"
    );
}

/// `$SYS/broker/streams/NAME/{first_offset,last_offset,messages,bytes}` and
/// `.../groups/GROUP/{committed,lag}`: a declared empty stream shows last_offset -1; 7
/// messages with a group that acknowledged 4 show last 6, committed 4, lag 3; then
/// acknowledging the rest and appending 3 more (delivered, not acknowledged) shows
/// last 9, committed 7, lag 3.
fn sys_topics_show_offsets_and_group_lag() {
    let broker = Broker::start_with(&["--memory"], Some("[mqtt]\nsys_interval_secs = 1\n"));
    let mut admin = Client::new(&broker, Protocol::V5, "s9-admin");
    assert_eq!(
        admin.publish("$admin/stream/empty9", b"{}"),
        reason::SUCCESS
    );
    let mut p = Client::new(&broker, Protocol::V5, "s9-pub");
    p.append_many("$stream/s9", 0, 7, 7, &padded200);
    let mut g = Client::new(&broker, Protocol::V5, "s9-member");
    g.read_from("$share/g9/$stream/s9", Some("earliest"));
    let got = g.read(7, false);
    assert_eq!(offsets(&got), (0..7).collect::<Vec<u64>>());
    for m in &got[..4] {
        g.ack(m);
    }
    let mut sys = Sys::watch(&broker, "s9-sys");
    sys.expect(&[
        ("empty9/last_offset", "-1"),
        ("empty9/messages", "0"),
        ("s9/first_offset", "0"),
        ("s9/last_offset", "6"),
        ("s9/messages", "7"),
        ("s9/groups/g9/committed", "4"),
        ("s9/groups/g9/lag", "3"),
    ]);
    let bytes = sys.number("s9/bytes").unwrap_or(-1);
    assert!(
        (7 * 200..1_000_000).contains(&bytes),
        "s9/bytes {bytes} for 7 messages of 200 bytes"
    );
    for m in &got[4..] {
        g.ack(m);
    }
    sys.expect(&[("s9/groups/g9/committed", "7"), ("s9/groups/g9/lag", "0")]);
    p.append_many("$stream/s9", 7, 3, 3, &padded200);
    let got = g.read(3, false);
    assert_eq!(offsets(&got), [7, 8, 9]);
    sys.expect(&[
        ("s9/last_offset", "9"),
        ("s9/messages", "10"),
        ("s9/groups/g9/committed", "7"),
        ("s9/groups/g9/lag", "3"),
    ]);
}

/// Declaring: TOML (`[stream.sensors]` with a filter and `default_offset = "earliest"`)
/// and over MQTT (`$admin/stream/NAME`, kept across a restart, refused with 0x83 or 0x99
/// when the JSON or a key is bad, a re-declaration changing the settings and keeping the
/// messages); with `auto_create = false` an undeclared stream does not exist (PUBLISH:
/// PUBACK 0x10; SUBSCRIBE: 0x8F). Publishes matching the filter are appended with
/// their own topics, beside `$stream/sensors/...` ones; `$stream/sensors/FILTER` reads
/// the matching ones.
fn declared_streams_filters_and_auto_create_off() {
    let dir = TempDir::new("mote-streams-decl");
    let args = ["--data-dir", dir.path.to_str().unwrap()];
    let config = "[streams]\nauto_create = false\n\n[stream.sensors]\n\
                  filter = \"sensors/#\"\ndefault_offset = \"earliest\"\n";
    let mut broker = Broker::start_with(&args, Some(config));
    let mut c = Client::new(&broker, Protocol::V5, "decl-client");
    assert_eq!(
        c.publish("$stream/nope", b"x"),
        reason::NO_MATCHING_SUBSCRIBERS,
        "PUBLISH to an undeclared stream"
    );
    assert_eq!(
        c.subscribe("$stream/nope", QoS::AtLeastOnce, Some("earliest")),
        [reason::TOPIC_FILTER_INVALID],
        "SUBSCRIBE to an undeclared stream"
    );

    for (topic, body) in [
        ("sensors/a/temp", "20"),
        ("other/x", "no"),
        ("sensors/b/hum", "50"),
    ] {
        c.publish(topic, body.as_bytes());
    }
    c.append("$stream/sensors/direct", b"d");
    let mut r = Client::new(&broker, Protocol::V5, "decl-reader");
    r.read_from("$stream/sensors", None);
    let got = r.read(3, true);
    let seen = |msgs: &[Msg]| -> Vec<(String, String, u64)> {
        msgs.iter()
            .map(|m| {
                (
                    m.topic.clone(),
                    String::from_utf8_lossy(&m.payload).into_owned(),
                    offset(m),
                )
            })
            .collect()
    };
    let want = |v: &[(&str, &str, u64)]| -> Vec<(String, String, u64)> {
        v.iter()
            .map(|(t, b, o)| (t.to_string(), b.to_string(), *o))
            .collect()
    };
    assert_eq!(
        seen(&got),
        want(&[
            ("sensors/a/temp", "20", 0),
            ("sensors/b/hum", "50", 1),
            ("$stream/sensors/direct", "d", 2),
        ]),
        "the TOML stream, from its default_offset earliest"
    );
    assert_eq!(show(&r.quiet()), []);
    let mut f = Client::new(&broker, Protocol::V5, "decl-filter");
    f.read_from("$stream/sensors/sensors/+/temp", None);
    assert_eq!(seen(&f.read(1, true)), want(&[("sensors/a/temp", "20", 0)]));
    assert_eq!(show(&f.quiet()), []);

    // Over MQTT.
    let decl = br#"{"default_offset": "earliest"}"#;
    assert_eq!(
        c.publish("$admin/stream/mq", decl),
        reason::SUCCESS,
        "declared"
    );
    for (name, body) in [
        ("bad1", &b"{not json"[..]),
        ("bad2", &br#"{"colour": "red"}"#[..]),
        ("bad3", &br#"{"default_offset": "sometime"}"#[..]),
    ] {
        let code = c.publish(&format!("$admin/stream/{name}"), body);
        assert!(
            code == reason::IMPLEMENTATION_SPECIFIC_ERROR || code == reason::PAYLOAD_FORMAT_INVALID,
            "declaration {:?} answered 0x{code:02x}",
            String::from_utf8_lossy(body)
        );
        assert_eq!(
            c.publish(&format!("$stream/{name}"), b"x"),
            reason::NO_MATCHING_SUBSCRIBERS,
            "a refused declaration created no stream {name}"
        );
    }
    c.append("$stream/mq", b"m0");
    c.append("$stream/mq", b"m1");
    drop((c, r, f));
    std::thread::sleep(Duration::from_millis(200));
    broker.terminate();

    let broker = Broker::start_with(&args, Some(config));
    let mut r = Client::new(&broker, Protocol::V5, "decl-reader2");
    r.read_from("$stream/mq", None);
    let got = r.read(2, true);
    assert_eq!(
        seen(&got),
        want(&[("$stream/mq", "m0", 0), ("$stream/mq", "m1", 1)]),
        "the MQTT declaration and its messages came back after a restart"
    );
    // Re-declaring changes the settings and keeps the messages.
    let mut c = Client::new(&broker, Protocol::V5, "decl-client2");
    let decl = br#"{"default_offset": "latest"}"#;
    assert_eq!(
        c.publish("$admin/stream/mq", decl),
        reason::SUCCESS,
        "re-declared"
    );
    let mut late = Client::new(&broker, Protocol::V5, "decl-late");
    late.read_from("$stream/mq", None);
    assert_eq!(show(&late.quiet()), [], "the new default_offset: latest");
    let mut early = Client::new(&broker, Protocol::V5, "decl-early");
    early.read_from("$stream/mq", Some("earliest"));
    assert_eq!(offsets(&early.read(2, true)), [0, 1], "messages kept");
    c.append("$stream/mq", b"m2");
    assert_eq!(offsets(&late.read(1, true)), [2]);
    assert_eq!(offsets(&r.read(1, true)), [2]);
}

/// QoS 0 and QoS 2 publishes are appended as QoS 1 ones are, in the order they came; a
/// retained publish with a 1 s message expiry is still read 1.5 s later, without the
/// retain flag (the stream keeps neither; retention alone removes messages).
fn publishes_of_every_qos_are_appended_without_retain_or_expiry() {
    let broker = Broker::start();
    let mut p = Client::new(&broker, Protocol::V5, "sa-pub");
    p.raw.publish("$stream/sa", b"q0", QoS::AtMostOnce, 0);
    p.raw
        .publish_acked(&common::publish("$stream/sa", b"q2", QoS::ExactlyOnce, 7));
    let expiry = PropValues {
        message_expiry_interval: Some(1),
        ..PropValues::default()
    };
    p.raw.publish_acked(&mote_codec::Publish {
        retain: true,
        properties: Properties::Values(&expiry),
        ..common::publish("$stream/sa", b"r1", QoS::AtLeastOnce, 8)
    });
    std::thread::sleep(Duration::from_millis(1500));
    let mut r = Client::new(&broker, Protocol::V5, "sa-reader");
    r.read_from("$stream/sa", Some("earliest"));
    let got = r.read(3, true);
    let seen: Vec<(u64, &[u8], QoS, bool)> = got
        .iter()
        .map(|m| (offset(m), &m.payload[..], m.qos, m.retain))
        .collect();
    assert_eq!(
        seen,
        [
            (0, &b"q0"[..], QoS::AtLeastOnce, false),
            (1, &b"q2"[..], QoS::AtLeastOnce, false),
            (2, &b"r1"[..], QoS::AtLeastOnce, false),
        ],
        "(offset, payload, QoS, retain)"
    );
    assert_eq!(show(&r.quiet()), []);
}

/// With `--memory`, a stream is bounded by its `max_bytes` as on disk: 1000 messages of
/// 200 bytes into a stream of at most 50000 bytes keep only the newest, dense, and a
/// reader from `earliest` starts at the first kept (`$SYS` `first_offset`).
fn a_memory_stream_is_bounded_by_max_bytes() {
    const COUNT: u32 = 1000;
    let config = "[mqtt]\nsys_interval_secs = 1\n\n[stream.mem]\nmax_bytes = 50000\n\
                  segment_bytes = 10000\n";
    let broker = Broker::start_with(&["--memory"], Some(config));
    let mut p = Client::new(&broker, Protocol::V5, "mem-pub");
    p.append_many("$stream/mem", 0, COUNT, 50, &padded200);
    let mut sys = Sys::watch(&broker, "mem-sys");
    let first_sys = trimmed(&mut sys, "mem", 50_000, i64::from(COUNT) - 1);
    let got = read_everything(&broker, "mem-reader", "mem");
    assert!(!got.is_empty(), "nothing kept");
    let first = offset(&got[0]);
    assert_eq!(
        i64::try_from(first).unwrap(),
        first_sys,
        "from $SYS first_offset"
    );
    assert_eq!(
        offsets(&got),
        (first..u64::from(COUNT)).collect::<Vec<u64>>(),
        "the newest messages, dense"
    );
    assert_eq!(nums(&got), offsets(&got), "payloads match their offsets");
    assert!(
        got.len() * 200 <= 50_000,
        "{} messages of 200 bytes kept, over max_bytes",
        got.len()
    );
}

/// `mote stream ls` lists every stream with its figures (first and last offset,
/// messages) and `mote stream stats NAME` its groups (committed offset, lag), read from
/// a running broker as `mote queue` does (`--broker ADDR`); `mote stream declare`
/// declares (a stream whose `default_offset` then holds) and refuses bad settings.
fn the_mote_stream_command_lists_streams_and_groups() {
    let broker = Broker::start_with(&["--memory"], Some("[mqtt]\nsys_interval_secs = 1\n"));
    let addr = broker.addr.to_string();
    let mote = |args: &[&str]| {
        let out = Command::new(mote_tests::mote_bin())
            .args(["stream", "--broker", &addr])
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
    let mut p = Client::new(&broker, Protocol::V5, "cli-pub");
    p.append_many("$stream/clis", 0, 7, 7, &small);
    let mut g = Client::new(&broker, Protocol::V5, "cli-member");
    g.read_from("$share/clig/$stream/clis", Some("earliest"));
    let got = g.read(7, false);
    for m in &got[..4] {
        g.ack(m);
    }
    // A line whose first field is `first` and whose other fields hold `values` in this
    // order (the order docs/streams.md lists the figures in), among others.
    let has_row = |out: &str, first: &str, values: &[&str]| {
        out.lines().any(|l| {
            let mut fields = l.split_whitespace();
            fields.next() == Some(first) && values.iter().all(|v| fields.any(|f| f == *v))
        })
    };
    let end = Instant::now() + Duration::from_secs(10);
    let (ok, out, err) = loop {
        let (ok, out, err) = mote(&["ls"]);
        if !ok || has_row(&out, "clis", &["0", "6", "7"]) || Instant::now() > end {
            break (ok, out, err);
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(ok, "mote stream ls failed: {err}");
    assert!(
        has_row(&out, "clis", &["0", "6", "7"]),
        "mote stream ls: no row `clis` with first 0, last 6, 7 messages:\n{out}"
    );
    let end = Instant::now() + Duration::from_secs(10);
    let (ok, out, err) = loop {
        let (ok, out, err) = mote(&["stats", "clis"]);
        if !ok || has_row(&out, "clig", &["4", "3"]) || Instant::now() > end {
            break (ok, out, err);
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(ok, "mote stream stats clis failed: {err}");
    assert!(
        has_row(&out, "clig", &["4", "3"]),
        "mote stream stats clis: no row `clig` with committed 4, lag 3:\n{out}"
    );
    // `declare` is the `$admin/stream/NAME` publish; bad settings fail.
    let (ok, out, err) = mote(&["declare", "clid", r#"{"default_offset": "earliest"}"#]);
    assert!(ok, "mote stream declare: {out} {err}");
    let (ok, _, _) = mote(&["declare", "clibad", r#"{"bogus": 1}"#]);
    assert!(!ok, "mote stream declare with an unknown key succeeded");
    p.append_many("$stream/clid", 0, 2, 2, &small);
    let mut r = Client::new(&broker, Protocol::V5, "cli-reader");
    r.read_from("$stream/clid", None);
    assert_eq!(
        offsets(&r.read(2, true)),
        [0, 1],
        "declared with default_offset earliest"
    );
}

// ---------------------------------------------------------------------------------------
// A reader far behind
// ---------------------------------------------------------------------------------------

/// Messages and size of the far-behind test: 100 MB of stream.
const FAR_COUNT: u32 = 50_000;
const FAR_SIZE: usize = 2048;
/// Growth of the broker's anonymous resident memory allowed over the whole run.
const FAR_GROWTH: u64 = 60 * 1024 * 1024;

fn far_payload(i: u32) -> Vec<u8> {
    let mut p = format!("{i:08}").into_bytes();
    p.resize(FAR_SIZE, b'x');
    p
}

/// A `/proc/PID/status` figure in bytes (`RssAnon`, `VmRSS`, `VmHWM`).
fn status_bytes(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The broker's memory: `RssAnon` (what it allocated; file pages it maps or reads are
/// the kernel's cache, not a buffer of its own), `VmRSS` where there is no `RssAnon`.
fn anon(pid: u32) -> u64 {
    status_bytes(pid, "RssAnon:")
        .or_else(|| status_bytes(pid, "VmRSS:"))
        .unwrap_or(0)
}

/// 50,000 messages of 2 KB (100 MB) appended, then a reader with Receive Maximum 10
/// reads them all from `earliest`, in order, with dense offsets; it never has more than
/// 10 unacknowledged (checked every 5,000 messages by holding 10 and seeing nothing more
/// come), and the broker's resident memory grows by less than 60 MB over the whole run:
/// the backlog is read from disk as acknowledgements come, never held in memory.
fn a_reader_far_behind_is_paced_without_buffering_the_backlog() {
    let dir = TempDir::new("mote-streams-far");
    let broker = Broker::start_with(
        &["--data-dir", dir.path.to_str().unwrap(), "--fsync", "never"],
        None,
    );
    let pid = broker.pid().unwrap();
    let base = anon(pid);
    let peak = Arc::new(Mutex::new(base));
    let stop = Arc::new(AtomicBool::new(false));
    // Ends the sampler however the test ends.
    struct Stop(Arc<AtomicBool>);
    impl Drop for Stop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let _stop = Stop(stop.clone());
    let sampler = {
        let (peak, stop) = (peak.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let now = anon(pid);
                let mut p = peak.lock().unwrap();
                *p = (*p).max(now);
                drop(p);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };

    let started = Instant::now();
    let mut p = Client::new(&broker, Protocol::V5, "far-pub");
    p.append_many("$stream/far", 0, FAR_COUNT, 100, &far_payload);
    let appended = started.elapsed();
    let after_append = anon(pid);
    let append_peak = *peak.lock().unwrap();

    let connect = with_props(
        connect_packet(Protocol::V5, "far-reader", true),
        PropValues {
            receive_maximum: Some(10),
            ..PropValues::default()
        },
    );
    let (mut r, _) = Client::open(broker.addr, &connect);
    r.read_from("$stream/far", Some("earliest"));
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut next = 0u32;
    let mut held: Vec<Msg> = Vec::new();
    while next < FAR_COUNT {
        assert!(Instant::now() < deadline, "only {next} read in 300 s");
        let m = r
            .next_msg(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("the reader stalled at offset {next}"));
        assert_eq!(offset(&m), u64::from(next), "offsets in order, dense");
        assert!(m.payload == far_payload(next), "payload of {next}");
        next += 1;
        let checkpoint = next % 5000;
        if (1..=10).contains(&checkpoint) {
            // Hold 10 unacknowledged: the 11th must not come.
            held.push(m);
            if held.len() == 10 {
                assert!(
                    r.next_msg(Duration::from_millis(300)).is_none(),
                    "an 11th message with 10 unacknowledged at offset {next}"
                );
                for h in held.drain(..) {
                    r.ack(&h);
                }
            }
        } else {
            r.ack(&m);
        }
    }
    assert_eq!(show(&r.quiet()), [], "nothing after the last");
    let read = started.elapsed() - appended;
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let peak = *peak.lock().unwrap();
    let mib = |b: u64| b as f64 / 1048576.0;
    let report = format!(
        "broker memory (RssAnon): {:.1} MiB at start, {:.1} MiB peak while appending, \
         {:.1} MiB after appending, {:.1} MiB peak over the run (VmRSS now {:.1} MiB); \
         appended in {appended:?}, read in {read:?}",
        mib(base),
        mib(append_peak),
        mib(after_append),
        mib(peak),
        mib(status_bytes(pid, "VmRSS:").unwrap_or(0)),
    );
    eprintln!("{report}");
    assert!(
        peak.saturating_sub(base) < FAR_GROWTH,
        "the broker's memory grew by {:.1} MiB for a {} MB stream: {report}",
        mib(peak.saturating_sub(base)),
        u64::from(FAR_COUNT) * FAR_SIZE as u64 / 1_000_000
    );
}

/// `GET /api/v1/subscribe?filter=$stream/NAME/@earliest` replays a stream as
/// Server-Sent Events (the HTTP listener's SSE reads through an in-process MQTT 5
/// link, so stream readers come for free), each event carrying `mote-offset`.
fn a_stream_replays_over_http_as_server_sent_events() {
    use std::io::{BufRead, BufReader, Write};
    let broker = Broker::start_http();
    let mut p = Client::new(&broker, Protocol::V5, "sse-producer");
    for i in 0..3 {
        p.append("$stream/web", format!("ev{i}").as_bytes());
    }
    let mut sock = std::net::TcpStream::connect(broker.http_addr()).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        sock,
        "GET /api/v1/subscribe?filter=%24stream%2Fweb%2F%40earliest HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    .unwrap();
    let mut events = Vec::new();
    for line in BufReader::new(sock).lines() {
        let line = line.expect("SSE stream ended early");
        if let Some(data) = line.strip_prefix("data: ") {
            events.push(data.to_owned());
            if events.len() == 3 {
                break;
            }
        }
    }
    for (i, e) in events.iter().enumerate() {
        assert!(e.contains(&format!("\"payload\":\"ev{i}\"")), "{e}");
        assert!(e.contains(&format!("[\"mote-offset\",\"{i}\"]")), "{e}");
    }
}
