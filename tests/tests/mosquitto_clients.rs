//! End-to-end scenarios through Debian's `mosquitto_pub`/`mosquitto_sub` (2.0.x), each
//! against its own `mote` broker on a free port, over MQTT 3.1, 3.1.1 and 5.0.
//!
//! Run by `mote_tests::harness` (`harness = false`): without `mosquitto_pub`,
//! `mosquitto_sub` or `stdbuf` every test here is reported as ignored, with the reason,
//! and under `CI=true` it fails.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{messages, mosq_pub, mosq_sub, mosq_sub_nowait, wait_messages, Proc};
use mote_tests::harness::{Suite, MOSQUITTO_PUB, MOSQUITTO_SUB, STDBUF};
use mote_tests::Broker;

fn main() -> std::process::ExitCode {
    Suite::new()
        .tests(
            &[MOSQUITTO_PUB, MOSQUITTO_SUB, STDBUF],
            mote_tests::tests![
                pubsub_qos_0_1_2_mqttv31,
                pubsub_qos_0_1_2_mqttv311,
                pubsub_qos_0_1_2_mqttv5,
                pubsub_across_protocol_versions,
                wildcards_and_dollar_topics,
                sys_topics_are_published_but_not_matched_by_hash,
                retained_message_flag_and_deletion,
                will_published_when_client_is_killed,
                will_not_published_on_normal_disconnect,
                will_delay_interval_v5,
                will_delay_cancelled_by_reconnect_v5,
                persistent_session_mqttv311_gets_messages_sent_while_offline,
                persistent_session_mqttv5_gets_messages_sent_while_offline,
                v5_properties_pass_through,
                deny_subscribe_refused,
                shared_subscription_splits_messages,
                overlapping_subscriptions_deliver_one_copy,
                message_expiry_while_offline_v5,
                session_takeover_ends_first_client_v5,
            ],
        )
        .run()
}

const VERSIONS: [&str; 3] = ["mqttv31", "mqttv311", "mqttv5"];

/// Waits for `p` to exit by itself (10 s at most) and returns its message lines.
fn finish(p: &mut Proc, broker: &Broker) -> Vec<String> {
    let st = p.wait_exit(Duration::from_secs(10));
    assert!(
        st.is_some(),
        "mosquitto_sub did not exit\n{}\nbroker log:\n{}",
        p.dump(),
        broker.log()
    );
    messages(p)
}

/// Waits `ms` milliseconds (to be sure something does *not* arrive).
fn settle(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

fn pubsub_every_qos(version: &str) {
    let broker = Broker::start();
    let mut subs = Vec::new();
    for qos in 0..=2 {
        let topic = format!("pq/{version}/{qos}");
        let q = qos.to_string();
        let sub = mosq_sub(
            &broker,
            &[
                "-V",
                version,
                "-q",
                &q,
                "-t",
                &topic,
                "-C",
                "1",
                "-W",
                "10",
                "-F",
                "%q %r %t %p",
            ],
        );
        subs.push((qos, topic, sub));
    }
    for (qos, topic, _) in &subs {
        let q = qos.to_string();
        let payload = format!("hello-{version}-{qos}");
        mosq_pub(
            &broker,
            &["-V", version, "-q", &q, "-t", topic, "-m", &payload],
        );
    }
    for (qos, topic, sub) in &mut subs {
        let got = finish(sub, &broker);
        assert_eq!(
            got,
            vec![format!("{qos} 0 {topic} hello-{version}-{qos}")],
            "{version} QoS {qos}\n{}",
            sub.dump()
        );
    }
}

fn pubsub_qos_0_1_2_mqttv31() {
    pubsub_every_qos("mqttv31");
}

fn pubsub_qos_0_1_2_mqttv311() {
    pubsub_every_qos("mqttv311");
}

fn pubsub_qos_0_1_2_mqttv5() {
    pubsub_every_qos("mqttv5");
}

fn pubsub_across_protocol_versions() {
    let broker = Broker::start();
    let mut subs: Vec<(&str, Proc)> = VERSIONS
        .iter()
        .map(|v| {
            let sub = mosq_sub(
                &broker,
                &["-V", v, "-q", "2", "-t", "x/+", "-C", "3", "-W", "10", "-v"],
            );
            (*v, sub)
        })
        .collect();
    for v in VERSIONS {
        mosq_pub(
            &broker,
            &["-V", v, "-q", "1", "-t", &format!("x/{v}"), "-m", v],
        );
    }
    for (v, sub) in &mut subs {
        let mut got = finish(sub, &broker);
        got.sort();
        assert_eq!(
            got,
            vec![
                "x/mqttv31 mqttv31",
                "x/mqttv311 mqttv311",
                "x/mqttv5 mqttv5"
            ],
            "subscriber {v}"
        );
    }
}

fn wildcards_and_dollar_topics() {
    let broker = Broker::start();
    let filters = ["w/#", "w/+/c", "#", "+/x", "+", "$test/#", "$test/+"];
    let mut subs: Vec<Proc> = filters
        .iter()
        .map(|f| mosq_sub(&broker, &["-t", f, "-v", "-W", "10"]))
        .collect();
    for t in ["w/b/c", "w/b/d", "w", "w/b/c/d", "/x", "$test/x", "q"] {
        mosq_pub(&broker, &["-q", "1", "-t", t, "-m", "m"]);
    }
    let expected: [&[&str]; 7] = [
        // `w/#` also matches the parent level `w`.
        &["w", "w/b/c", "w/b/c/d", "w/b/d"],
        &["w/b/c"],
        // `#` matches everything except topics starting with `$` (MQTT-4.7.2-1),
        // including the broker's retained `$SYS/...` counters.
        &["/x", "q", "w", "w/b/c", "w/b/c/d", "w/b/d"],
        // `+` matches the empty first level of `/x`, but not `$test`.
        &["/x"],
        &["q", "w"],
        &["$test/x"],
        &["$test/x"],
    ];
    for (sub, want) in subs.iter_mut().zip(expected) {
        wait_messages(sub, want.len(), Duration::from_secs(5));
    }
    settle(300);
    for ((f, sub), want) in filters.iter().zip(&mut subs).zip(expected) {
        let mut got: Vec<String> = messages(sub)
            .iter()
            .map(|l| l.trim_end_matches(" m").to_owned())
            .collect();
        got.sort();
        assert_eq!(got, want, "filter {f}\n{}", sub.dump());
    }
}

fn sys_topics_are_published_but_not_matched_by_hash() {
    let broker = Broker::start();
    let mut sys = mosq_sub(
        &broker,
        &["-t", "$SYS/broker/version", "-v", "-C", "1", "-W", "5"],
    );
    let got = finish(&mut sys, &broker);
    assert_eq!(got.len(), 1, "{}", sys.dump());
    assert!(got[0].starts_with("$SYS/broker/version mote"), "{got:?}");
    let mut all = mosq_sub(&broker, &["-t", "#", "-v", "-W", "2"]);
    let got = finish(&mut all, &broker);
    assert!(got.is_empty(), "`#` received {got:?}");
}

fn retained_message_flag_and_deletion() {
    let broker = Broker::start();
    let mut live311 = mosq_sub(
        &broker,
        &["-V", "mqttv311", "-t", "r/t", "-F", "%r %t %p", "-W", "10"],
    );
    let mut live5 = mosq_sub(
        &broker,
        &["-V", "mqttv5", "-t", "r/t", "-F", "%r %t %p", "-W", "10"],
    );
    mosq_pub(&broker, &["-r", "-q", "1", "-t", "r/t", "-m", "keep"]);
    for v in VERSIONS {
        let mut late = mosq_sub(
            &broker,
            &["-V", v, "-t", "r/#", "-F", "%r %t %p", "-C", "1", "-W", "5"],
        );
        assert_eq!(
            finish(&mut late, &broker),
            vec!["1 r/t keep"],
            "{v}: a new subscription gets the retained message with RETAIN 1"
        );
    }
    // An empty retained payload deletes the retained message and is still delivered to
    // existing subscriptions (MQTT-3.3.1-10, v5 §3.3.1.3).
    mosq_pub(&broker, &["-r", "-q", "1", "-t", "r/t", "-n"]);
    for (name, live) in [("3.1.1", &mut live311), ("5", &mut live5)] {
        assert!(
            wait_messages(live, 2, Duration::from_secs(5)),
            "{}",
            live.dump()
        );
        let got: Vec<String> = messages(live)
            .iter()
            .map(|l| l.trim_end().to_owned())
            .collect();
        // Forwarded on an established subscription: RETAIN 0 (MQTT-3.3.1-9; v5 without
        // Retain As Published, MQTT-3.3.1-12).
        assert_eq!(got, vec!["0 r/t keep", "0 r/t"], "live {name} subscriber");
    }
    let mut after = mosq_sub(&broker, &["-t", "r/#", "-v", "-W", "1"]);
    let got = finish(&mut after, &broker);
    assert!(got.is_empty(), "retained message not deleted: {got:?}");
    // And the empty message itself was not stored as retained.
    mosq_pub(&broker, &["-r", "-t", "r/other", "-m", "x"]);
    let mut again = mosq_sub(&broker, &["-t", "r/#", "-v", "-C", "1", "-W", "5"]);
    assert_eq!(finish(&mut again, &broker), vec!["r/other x"]);
}

fn will_published_when_client_is_killed() {
    let broker = Broker::start();
    let mut observer = mosq_sub(&broker, &["-V", "mqttv5", "-t", "will/#", "-v", "-W", "12"]);
    for (i, v) in VERSIONS.iter().enumerate() {
        let id = format!("willer-{i}");
        let topic = format!("will/{v}");
        let payload = format!("gone-{v}");
        let mut willer = mosq_sub(
            &broker,
            &[
                "-V",
                v,
                "-i",
                &id,
                "-t",
                "nothing",
                "--will-topic",
                &topic,
                "--will-payload",
                &payload,
            ],
        );
        assert!(messages(&observer).len() == i, "will sent too early");
        willer.kill();
        assert!(
            wait_messages(&mut observer, i + 1, Duration::from_secs(5)),
            "no will after SIGKILL of a {v} client\n{}\nbroker log:\n{}",
            observer.dump(),
            broker.log()
        );
        assert_eq!(messages(&observer)[i], format!("{topic} {payload}"));
    }
}

fn will_not_published_on_normal_disconnect() {
    let broker = Broker::start();
    let mut observer = mosq_sub(&broker, &["-V", "mqttv5", "-t", "wn/#", "-v", "-W", "10"]);
    for v in VERSIONS {
        // mosquitto_pub ends with DISCONNECT (v5 reason 0x00): the will is discarded
        // (MQTT-3.1.2-10, MQTT-3.14.4-3).
        mosq_pub(
            &broker,
            &[
                "-V",
                v,
                "-t",
                "elsewhere",
                "-m",
                "x",
                "--will-topic",
                &format!("wn/{v}"),
                "--will-payload",
                "must-not-appear",
            ],
        );
    }
    settle(500);
    mosq_pub(&broker, &["-t", "wn/sentinel", "-m", "end"]);
    assert!(wait_messages(&mut observer, 1, Duration::from_secs(5)));
    settle(200);
    assert_eq!(messages(&observer), vec!["wn/sentinel end"]);
}

fn will_delay_interval_v5() {
    let broker = Broker::start();
    let mut observer = mosq_sub(&broker, &["-V", "mqttv5", "-t", "wd/t", "-v", "-W", "12"]);
    let mut willer = mosq_sub(
        &broker,
        &[
            "-V",
            "mqttv5",
            "-i",
            "delayed-willer",
            "-x",
            "10",
            "-t",
            "nothing",
            "--will-topic",
            "wd/t",
            "--will-payload",
            "late",
            "-D",
            "will",
            "will-delay-interval",
            "2",
        ],
    );
    willer.kill();
    let t0 = Instant::now();
    assert!(
        wait_messages(&mut observer, 1, Duration::from_secs(6)),
        "will never published\n{}\nbroker log:\n{}",
        observer.dump(),
        broker.log()
    );
    let after = t0.elapsed();
    assert_eq!(messages(&observer), vec!["wd/t late"]);
    assert!(
        after >= Duration::from_millis(1800) && after <= Duration::from_millis(4000),
        "will with delay 2 s published after {after:?}"
    );
}

fn will_delay_cancelled_by_reconnect_v5() {
    let broker = Broker::start();
    let mut observer = mosq_sub(&broker, &["-V", "mqttv5", "-t", "wc/#", "-v", "-W", "12"]);
    let mut willer = mosq_sub(
        &broker,
        &[
            "-V",
            "mqttv5",
            "-c",
            "-i",
            "cancelled-willer",
            "-x",
            "10",
            "-t",
            "nothing",
            "--will-topic",
            "wc/t",
            "--will-payload",
            "must-not-appear",
            "-D",
            "will",
            "will-delay-interval",
            "2",
        ],
    );
    willer.kill();
    // Back within the delay, resuming the session: the will must not be sent
    // (MQTT 5 §3.1.3.2.2).
    let _back = mosq_sub(
        &broker,
        &[
            "-V",
            "mqttv5",
            "-c",
            "-i",
            "cancelled-willer",
            "-x",
            "10",
            "-t",
            "nothing",
        ],
    );
    settle(3000);
    mosq_pub(&broker, &["-t", "wc/sentinel", "-m", "end"]);
    assert!(wait_messages(&mut observer, 1, Duration::from_secs(5)));
    settle(200);
    assert_eq!(messages(&observer), vec!["wc/sentinel end"]);
}

fn persistent_session(version: &str, session_args: &[&str]) {
    let broker = Broker::start();
    let id = format!("persist-{version}");
    let mut first: Vec<&str> = vec![
        "-V", version, "-c", "-i", &id, "-q", "1", "-t", "ps/#", "-E",
    ];
    first.extend_from_slice(session_args);
    let mut s = mosq_sub(&broker, &first);
    assert!(
        s.wait_exit(Duration::from_secs(5)).is_some(),
        "-E did not exit\n{}",
        s.dump()
    );
    for i in 1..=3 {
        mosq_pub(
            &broker,
            &[
                "-V",
                version,
                "-q",
                "1",
                "-t",
                "ps/t",
                "-m",
                &format!("m{i}"),
            ],
        );
    }
    let mut second: Vec<&str> = vec![
        "-V", version, "-c", "-i", &id, "-q", "1", "-t", "ps/#", "-C", "3", "-W", "5", "-v",
    ];
    second.extend_from_slice(session_args);
    let mut s = mosq_sub_nowait(&broker, &second);
    assert_eq!(
        finish(&mut s, &broker),
        vec!["ps/t m1", "ps/t m2", "ps/t m3"],
        "{version}\n{}",
        s.dump()
    );
}

fn persistent_session_mqttv311_gets_messages_sent_while_offline() {
    persistent_session("mqttv311", &[]);
}

fn persistent_session_mqttv5_gets_messages_sent_while_offline() {
    persistent_session("mqttv5", &["-x", "60"]);
}

fn v5_properties_pass_through() {
    let broker = Broker::start();
    let mut sub = mosq_sub(
        &broker,
        &[
            "-V",
            "mqttv5",
            "-t",
            "pp/t",
            "-F",
            "%P|%C|%R|%D|%t|%p",
            "-C",
            "1",
            "-W",
            "5",
        ],
    );
    mosq_pub(
        &broker,
        &[
            "-V",
            "mqttv5",
            "-q",
            "1",
            "-t",
            "pp/t",
            "-m",
            "body",
            "-D",
            "publish",
            "user-property",
            "k",
            "v",
            "-D",
            "publish",
            "user-property",
            "a",
            "b",
            "-D",
            "publish",
            "user-property",
            "k",
            "w",
            "-D",
            "publish",
            "content-type",
            "text/x",
            "-D",
            "publish",
            "response-topic",
            "resp/t",
            "-D",
            "publish",
            "correlation-data",
            "corr-123",
        ],
    );
    // User properties keep their order and repeated names (MQTT-3.3.2-18).
    assert_eq!(
        finish(&mut sub, &broker),
        vec!["k:v a:b k:w|text/x|resp/t|corr-123|pp/t|body"]
    );
}

fn deny_subscribe_config() -> Broker {
    Broker::start_with(
        &["--memory"],
        Some("[mqtt]\nmax_keepalive = 60\ndeny_subscribe = [\"test/nosubscribe\"]\n"),
    )
}

fn deny_subscribe_refused() {
    let broker = deny_subscribe_config();
    for v in ["mqttv311", "mqttv5"] {
        let mut p = mosq_sub_nowait(&broker, &["-V", v, "-t", "test/nosubscribe", "-W", "8"]);
        let exited = p.wait_exit(Duration::from_secs(5));
        assert!(
            exited.is_some(),
            "{v}: mosquitto_sub stayed subscribed\n{}",
            p.dump()
        );
        // 3.1.1: 0x80 Failure; MQTT 5: 0x87 Not authorized (docs/security.md).
        let code = if v == "mqttv5" { 135 } else { 128 };
        let want = format!("Subscribed (mid: 1): {code}");
        assert!(
            p.stdout_lines().contains(&want),
            "{v}: SUBACK should carry {code}\n{}",
            p.dump()
        );
        assert!(
            p.stderr_lines().iter().any(|l| l.contains("denied")),
            "{v}\n{}",
            p.dump()
        );
    }
    // Other filters are fine on the same broker.
    let mut ok = mosq_sub(&broker, &["-t", "test/ok", "-v", "-C", "1", "-W", "5"]);
    mosq_pub(&broker, &["-t", "test/ok", "-m", "yes"]);
    assert_eq!(finish(&mut ok, &broker), vec!["test/ok yes"]);
}

fn shared_subscription_splits_messages() {
    let broker = Broker::start();
    let member_args = [
        "-V",
        "mqttv5",
        "-q",
        "1",
        "-t",
        "$share/g/jobs",
        "-v",
        "-W",
        "12",
    ];
    let mut a = mosq_sub(&broker, &member_args);
    let mut b = mosq_sub(&broker, &member_args);
    let mut plain = mosq_sub(
        &broker,
        &["-V", "mqttv5", "-q", "1", "-t", "jobs", "-v", "-W", "12"],
    );
    for i in 0..20 {
        mosq_pub(
            &broker,
            &[
                "-V",
                "mqttv5",
                "-q",
                "1",
                "-t",
                "jobs",
                "-m",
                &format!("job-{i}"),
            ],
        );
    }
    assert!(
        wait_messages(&mut plain, 20, Duration::from_secs(5)),
        "{}",
        plain.dump()
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while messages(&a).len() + messages(&b).len() < 20 && Instant::now() < deadline {
        settle(20);
    }
    settle(300);
    let (ga, gb) = (messages(&a), messages(&b));
    assert!(
        !ga.is_empty() && !gb.is_empty(),
        "both members get work: {ga:?} / {gb:?}"
    );
    let mut all: Vec<String> = ga.iter().chain(&gb).cloned().collect();
    all.sort();
    let mut want: Vec<String> = (0..20).map(|i| format!("jobs job-{i}")).collect();
    want.sort();
    assert_eq!(all, want, "each message exactly once across the group");
    assert_eq!(messages(&plain).len(), 20);
    a.kill();
    b.kill();
}

fn overlapping_subscriptions_deliver_one_copy() {
    let broker = Broker::start();
    let mut subs: Vec<Proc> = ["mqttv311", "mqttv5"]
        .iter()
        .map(|v| {
            mosq_sub(
                &broker,
                &[
                    "-V", v, "-q", "1", "-t", "a/#", "-t", "a/+", "-v", "-W", "10",
                ],
            )
        })
        .collect();
    mosq_pub(&broker, &["-q", "1", "-t", "a/b", "-m", "one"]);
    mosq_pub(&broker, &["-q", "1", "-t", "a/c", "-m", "two"]);
    for s in &mut subs {
        assert!(wait_messages(s, 2, Duration::from_secs(5)), "{}", s.dump());
    }
    settle(400);
    for s in &subs {
        assert_eq!(messages(s), vec!["a/b one", "a/c two"], "{}", s.dump());
    }
}

fn message_expiry_while_offline_v5() {
    let broker = Broker::start();
    let session = [
        "-V", "mqttv5", "-c", "-x", "60", "-i", "expiring", "-q", "1", "-t", "me/t",
    ];
    let mut s = mosq_sub(&broker, &[&session[..], &["-E"]].concat());
    assert!(
        s.wait_exit(Duration::from_secs(5)).is_some(),
        "{}",
        s.dump()
    );
    mosq_pub(
        &broker,
        &[
            "-V",
            "mqttv5",
            "-q",
            "1",
            "-t",
            "me/t",
            "-m",
            "short",
            "-D",
            "publish",
            "message-expiry-interval",
            "1",
        ],
    );
    mosq_pub(
        &broker,
        &[
            "-V",
            "mqttv5",
            "-q",
            "1",
            "-t",
            "me/t",
            "-m",
            "long",
            "-D",
            "publish",
            "message-expiry-interval",
            "60",
        ],
    );
    settle(2200);
    let mut s = mosq_sub_nowait(
        &broker,
        &[&session[..], &["-F", "%p %E", "-W", "3"]].concat(),
    );
    assert!(
        wait_messages(&mut s, 1, Duration::from_secs(5)),
        "{}",
        s.dump()
    );
    settle(300);
    let got = messages(&s);
    assert_eq!(got.len(), 1, "expired message delivered: {got:?}");
    let (payload, expiry) = got[0].split_once(' ').unwrap();
    assert_eq!(payload, "long");
    // The remaining interval is forwarded, not the original (MQTT-3.3.2-6).
    let expiry: u32 = expiry.parse().unwrap();
    assert!(
        (55..=58).contains(&expiry),
        "forwarded expiry {expiry}, expected 60 minus ~2 s"
    );
}

fn session_takeover_ends_first_client_v5() {
    let broker = Broker::start();
    let args = ["-V", "mqttv5", "-i", "twin", "-t", "tk/t", "-v", "-W", "10"];
    let mut first = mosq_sub(&broker, &args);
    let mut second = mosq_sub(&broker, &args);
    assert!(
        first.wait_exit(Duration::from_secs(5)).is_some(),
        "first client still running\n{}",
        first.dump()
    );
    assert!(
        first
            .stdout_lines()
            .iter()
            .chain(&first.stderr_lines())
            .any(|l| l.contains("DISCONNECT (142)")),
        "first client should be told 0x8E (session taken over)\n{}",
        first.dump()
    );
    mosq_pub(&broker, &["-t", "tk/t", "-m", "to-second"]);
    assert!(
        wait_messages(&mut second, 1, Duration::from_secs(5)),
        "{}",
        second.dump()
    );
    assert_eq!(messages(&second), vec!["tk/t to-second"]);
}
