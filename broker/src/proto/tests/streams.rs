//! Streams (`$stream/NAME`) on the core alone (kept in memory): replay from a start,
//! readers paced by their window, consumer groups with per-key order, commits, members
//! leaving, retention.

use super::*;

fn ack(core: &mut Core, c: &mut Client, packet_id: u16, now: Instant) {
    send(core, c, &Packet::PubAck(Ack::new(packet_id)), now).unwrap();
}

/// Appends `n` messages `{prefix}{i}` to `topic` (QoS 1).
fn append(core: &mut Core, p: &mut Client, topic: &str, prefix: &str, n: u32, now: Instant) {
    for i in 0..n {
        let id = u16::try_from(i % 60_000).unwrap() + 1;
        let body = format!("{prefix}{i}");
        publish(core, p, topic, body.as_bytes(), QoS::AtLeastOnce, id, now);
    }
}

/// A 3.1.1 client reading `filter` (a stream, or a group of one) at QoS 1.
fn reader(core: &mut Core, id: &str, filter: &str, now: Instant) -> Client {
    let mut c = connect(core, Protocol::V311, id, true, None, now);
    assert_eq!(
        subscribe(core, &mut c, &[(filter, q(QoS::AtLeastOnce))], None, now),
        [1]
    );
    c
}

fn body(m: &Got) -> String {
    String::from_utf8(m.1.clone()).unwrap()
}

/// Reads everything `c` is sent, acknowledging as it goes, until nothing more comes.
fn read_all(core: &mut Core, c: &mut Client, now: Instant) -> Vec<String> {
    let mut all = Vec::new();
    loop {
        let got = received(core, c, now);
        if got.is_empty() {
            return all;
        }
        for m in &got {
            all.push(body(m));
            if m.2 != QoS::AtMostOnce {
                ack(core, c, m.3, now);
            }
        }
    }
}

fn numbered(prefix: &str, range: std::ops::Range<u32>) -> Vec<String> {
    range.map(|i| format!("{prefix}{i}")).collect()
}

#[test]
fn readers_replay_from_earliest_an_offset_or_latest_and_reading_deletes_nothing() {
    let mut core = core();
    let now = Instant::now();
    let mut p = connect(&mut core, Protocol::V5, "producer", true, None, now);
    append(&mut core, &mut p, "$stream/s", "m", 10, now);

    let mut a = connect(&mut core, Protocol::V311, "a", true, None, now);
    let codes = subscribe(
        &mut core,
        &mut a,
        &[("$stream/s/@earliest", q(QoS::ExactlyOnce))],
        None,
        now,
    );
    assert_eq!(codes, [1], "a stream is read at QoS 1 at most");
    assert_eq!(read_all(&mut core, &mut a, now), numbered("m", 0..10));

    let mut b = reader(&mut core, "b", "$stream/s/@7", now);
    assert_eq!(read_all(&mut core, &mut b, now), numbered("m", 7..10));

    // The default start is `latest`: only what comes after the SUBSCRIBE.
    let mut c = reader(&mut core, "c", "$stream/s", now);
    assert!(read_all(&mut core, &mut c, now).is_empty());
    append(&mut core, &mut p, "$stream/s", "n", 2, now);
    assert_eq!(read_all(&mut core, &mut c, now), numbered("n", 0..2));
    // The others, caught up, get the new ones too.
    assert_eq!(read_all(&mut core, &mut a, now), numbered("n", 0..2));

    let st = core.stream_stats();
    assert_eq!(st.len(), 1);
    assert_eq!((st[0].1.first_offset, st[0].1.last_offset), (0, Some(11)));
}

#[test]
fn a_reader_far_behind_is_sent_one_window_at_a_time() {
    let mut core = core();
    let now = Instant::now();
    let mut p = connect(&mut core, Protocol::V5, "producer", true, None, now);
    append(&mut core, &mut p, "$stream/big", "m", 5000, now);
    let mut r = reader(&mut core, "r", "$stream/big/@earliest", now);
    let window = usize::from(MqttConfig::default().max_inflight);
    let first = received(&mut core, &mut r, now);
    assert_eq!(first.len(), window, "one window, not the backlog");
    assert_eq!(core.shards.get("r").unwrap().queued_len(), 0);
    // Nothing more until acknowledged.
    assert!(received(&mut core, &mut r, now).is_empty());
    for m in &first {
        ack(&mut core, &mut r, m.3, now);
    }
    let rest = read_all(&mut core, &mut r, now);
    assert_eq!(rest.len(), 5000 - window);
    assert_eq!(rest.last().map(String::as_str), Some("m4999"));
}

#[test]
fn a_group_shares_a_stream_keeps_each_key_in_order_and_commits_what_was_acknowledged() {
    let mut core = core();
    let now = Instant::now();
    let mut p = connect(&mut core, Protocol::V5, "producer", true, None, now);
    for i in 0..300u32 {
        let topic = format!("$stream/s5/k{}", i % 10);
        let body = format!("k{}:{i}", i % 10);
        let id = u16::try_from(i).unwrap() + 1;
        publish(
            &mut core,
            &mut p,
            &topic,
            body.as_bytes(),
            QoS::AtLeastOnce,
            id,
            now,
        );
    }
    let filter = "$share/g/$stream/s5/@earliest";
    let mut members: Vec<Client> = ["m1", "m2", "m3"]
        .iter()
        .map(|id| {
            let mut c = connect(&mut core, Protocol::V311, id, true, None, now);
            assert_eq!(
                subscribe(
                    &mut core,
                    &mut c,
                    &[(filter, q(QoS::AtLeastOnce))],
                    None,
                    now
                ),
                [1]
            );
            c
        })
        .collect();
    let mut seen = std::collections::BTreeSet::new();
    let mut keys_at: HashMap<String, usize> = HashMap::new();
    let mut last: HashMap<String, u32> = HashMap::new();
    for _ in 0..100 {
        let mut any = false;
        for (i, c) in members.iter_mut().enumerate() {
            let got = received(&mut core, c, now);
            // Acknowledge in reverse: PUBACKs may come in any order.
            for m in got.iter().rev() {
                ack(&mut core, c, m.3, now);
            }
            for m in &got {
                any = true;
                let b = body(m);
                let (key, n) = b.split_once(':').unwrap();
                let n: u32 = n.parse().unwrap();
                assert!(seen.insert(n), "{b} twice");
                if let Some(prev) = last.insert(key.to_owned(), n) {
                    assert!(prev < n, "{key}: {n} after {prev}");
                }
                keys_at.insert(key.to_owned(), i);
            }
        }
        if !any {
            break;
        }
    }
    assert_eq!(seen.len(), 300, "every message once");
    let spread: std::collections::HashSet<usize> = keys_at.values().copied().collect();
    assert!(spread.len() > 1, "keys spread over the members");
    let st = core.stream_stats();
    assert_eq!(st[0].1.groups, vec![("g".to_owned(), 300, 0)]);
}

#[test]
fn a_member_that_leaves_gives_its_unacknowledged_messages_to_the_group_flagged_dup() {
    let mut core = core();
    let now = Instant::now();
    let mut p = connect(&mut core, Protocol::V5, "producer", true, None, now);
    append(&mut core, &mut p, "$stream/s", "m", 20, now);
    let filter = "$share/g/$stream/s/@earliest";
    let mut a = reader(&mut core, "a", filter, now);
    let got = received(&mut core, &mut a, now);
    assert_eq!(got.len(), 20);
    for m in &got[..5] {
        ack(&mut core, &mut a, m.3, now);
    }
    let mut fx = Effects::default();
    core.disconnected(&a.id, a.conn, End::Abnormal, now, &mut fx);
    assert_eq!(
        core.stream_stats()[0].1.groups,
        vec![("g".to_owned(), 5, 15)]
    );
    // A new member: the group's start is not applied again; it goes on at 5.
    let mut b = reader(&mut core, "b", filter, now);
    let again = received(&mut core, &mut b, now);
    assert_eq!(
        again.iter().map(body).collect::<Vec<_>>(),
        numbered("m", 5..20)
    );
    assert!(again.iter().all(|m| m.4), "sent before: DUP");
}

#[test]
fn a_filter_after_the_start_reads_a_subset_and_declared_filters_collect_publishes() {
    let mut core = core();
    let now = Instant::now();
    let decl = crate::config::StreamDecl {
        filter: Some("dev/#".to_owned()),
        default_offset: Some(crate::config::DefaultOffset::Earliest),
        ..Default::default()
    };
    core.declare_stream("s3", decl, now).unwrap();
    let mut sub = reader(&mut core, "plain", "dev/#", now);
    let mut p = connect(&mut core, Protocol::V5, "producer", true, None, now);
    for (i, t) in ["dev/a/t", "dev/b/t", "dev/a/h"].iter().enumerate() {
        let id = u16::try_from(i).unwrap() + 1;
        publish(
            &mut core,
            &mut p,
            t,
            t.as_bytes(),
            QoS::AtLeastOnce,
            id,
            now,
        );
    }
    assert_eq!(
        read_all(&mut core, &mut sub, now).len(),
        3,
        "ordinary subscribers still get them"
    );
    let mut r = reader(&mut core, "r", "$stream/s3/dev/a/+", now);
    assert_eq!(read_all(&mut core, &mut r, now), ["dev/a/t", "dev/a/h"]);
    // Malformed stream filters are refused.
    let codes = subscribe(
        &mut core,
        &mut r,
        &[
            ("$stream/s3/@soon", q(QoS::AtLeastOnce)),
            ("$stream/+", q(QoS::AtLeastOnce)),
        ],
        None,
        now,
    );
    assert_eq!(codes, [0x80, 0x80]);
}

#[test]
fn retention_drops_the_oldest_and_a_reader_behind_goes_on_from_the_first_kept() {
    let mut core = core();
    let now = Instant::now();
    let decl = crate::config::StreamDecl {
        max_bytes: Some(20_000),
        ..Default::default()
    };
    core.declare_stream("r", decl, now).unwrap();
    let mut p = connect(&mut core, Protocol::V5, "producer", true, None, now);
    append(&mut core, &mut p, "$stream/r", "m", 10, now);
    let mut slow = reader(&mut core, "slow", "$stream/r/@earliest", now);
    let got = received(&mut core, &mut slow, now);
    assert_eq!(got.len(), 10);
    for m in &got {
        ack(&mut core, &mut slow, m.3, now);
    }
    // 1,000 more than the stream keeps; the reader falls behind meanwhile.
    let mut fx = Effects::default();
    core.disconnected(&slow.id, slow.conn, End::Abnormal, now, &mut fx);
    append(&mut core, &mut p, "$stream/r", "x", 1000, now);
    core.trim_streams(now);
    let st = core.stream_stats();
    let first = st[0].1.first_offset;
    assert!(first > 10 && st[0].1.bytes <= 20_000, "{:?}", st[0].1);
    let mut g = reader(&mut core, "g", "$share/g/$stream/r/@earliest", now);
    let all = read_all(&mut core, &mut g, now);
    let kept = usize::try_from(1010 - first).unwrap();
    assert_eq!(all.len(), kept, "the newest, dense");
    assert_eq!(all.last().map(String::as_str), Some("x999"));
}

#[test]
fn streams_made_on_first_use_are_capped_and_the_next_publish_is_told_quota_exceeded() {
    let mut core = core();
    let now = Instant::now();
    core.set_auto_create_streams(true, 2);
    let mut p = connect(&mut core, Protocol::V5, "producer", true, None, now);
    let mut codes = Vec::new();
    for (i, name) in ["a", "b", "c", "a"].iter().enumerate() {
        let topic = format!("$stream/{name}");
        let pkt = Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: &topic,
            packet_id: u16::try_from(i).unwrap() + 1,
            properties: Properties::default(),
            payload: b"x",
        });
        send(&mut core, &mut p, &pkt, now).unwrap();
        let bytes = p.out.split().to_vec();
        each_packet(&bytes, Protocol::V5, |pk| {
            if let Packet::PubAck(a) = pk {
                codes.push(a.reason);
            }
        });
    }
    assert_eq!(codes, [0, 0, reason::QUOTA_EXCEEDED, 0]);
    let mut r = connect(&mut core, Protocol::V5, "r", true, None, now);
    let got = subscribe(
        &mut core,
        &mut r,
        &[("$stream/d", q(QoS::AtLeastOnce))],
        None,
        now,
    );
    assert_eq!(got, [reason::TOPIC_FILTER_INVALID]);
    assert_eq!(core.stream_stats().len(), 2);
}

#[test]
fn retention_by_age_drops_what_is_older_than_the_stream_keeps() {
    let mut core = core();
    let now = Instant::now();
    let decl = crate::config::StreamDecl {
        retention: Some(3600),
        default_offset: Some(crate::config::DefaultOffset::Earliest),
        ..Default::default()
    };
    core.declare_stream("aged", decl, now).unwrap();
    let mut p = connect(&mut core, Protocol::V5, "producer", true, None, now);
    append(&mut core, &mut p, "$stream/aged", "old", 10, now);
    let later = now + Duration::from_secs(2 * 3600);
    append(&mut core, &mut p, "$stream/aged", "new", 3, later);
    core.trim_streams(later);
    assert_eq!(core.stream_stats()[0].1.first_offset, 10);
    let mut r = reader(&mut core, "r", "$stream/aged", later);
    assert_eq!(read_all(&mut core, &mut r, later), numbered("new", 0..3));
}

#[test]
fn a_member_that_leaves_hands_its_messages_to_a_waiting_member_at_once() {
    let mut core = core();
    let now = Instant::now();
    let mut p = connect(&mut core, Protocol::V5, "producer", true, None, now);
    append(&mut core, &mut p, "$stream/s", "m", 20, now);
    let filter = "$share/g/$stream/s/@earliest";
    let mut a = reader(&mut core, "a", filter, now);
    let mut b = reader(&mut core, "b", filter, now);
    // One key: one member holds all of it, the other waits.
    let (ga, gb) = (
        received(&mut core, &mut a, now),
        received(&mut core, &mut b, now),
    );
    assert_eq!(ga.len() + gb.len(), 20);
    let (mut owner, mut waiter) = if ga.is_empty() { (b, a) } else { (a, b) };
    let mut fx = Effects::default();
    core.disconnected(&owner.id, owner.conn, End::Abnormal, now, &mut fx);
    // No append and no drain of its own needed: they are queued for it at once (and
    // its connection woken), flagged DUP.
    assert_eq!(core.shards.get(&waiter.id).unwrap().queued_len(), 20);
    let again = received(&mut core, &mut waiter, now);
    assert_eq!(
        again.iter().map(body).collect::<Vec<_>>(),
        numbered("m", 0..20)
    );
    assert!(again.iter().all(|m| m.4));
    let _ = received(&mut core, &mut owner, now);
}

#[test]
fn a_member_that_stops_acknowledging_does_not_hold_back_the_keys_of_the_others() {
    let mut core = core();
    let now = Instant::now();
    // Both members join first (the group starts at `latest`), then 800 messages over
    // 8 keys come.
    let filter = "$share/g/$stream/hol";
    let mut stuck = reader(&mut core, "stuck", filter, now);
    let mut busy = reader(&mut core, "busy", filter, now);
    let mut p = connect(&mut core, Protocol::V5, "producer", true, None, now);
    for i in 0..800u32 {
        let topic = format!("$stream/hol/k{}", i % 8);
        let body = format!("k{}:{i}", i % 8);
        let id = u16::try_from(i % 60_000).unwrap() + 1;
        publish(
            &mut core,
            &mut p,
            &topic,
            body.as_bytes(),
            QoS::AtLeastOnce,
            id,
            now,
        );
    }
    let mut got: HashMap<String, Vec<u32>> = HashMap::new();
    let mut held = 0;
    for _ in 0..50 {
        held += received(&mut core, &mut stuck, now).len();
        let b = received(&mut core, &mut busy, now);
        if b.is_empty() {
            break;
        }
        for m in &b {
            let text = body(m);
            let (k, n) = text.split_once(':').unwrap();
            got.entry(k.to_owned())
                .or_default()
                .push(n.parse().unwrap());
            ack(&mut core, &mut busy, m.3, now);
        }
    }
    let window = usize::from(MqttConfig::default().max_inflight);
    assert_eq!(held, window, "the stuck member holds one window");
    assert!(!got.is_empty(), "some keys belong to the busy member");
    for (k, ns) in &got {
        assert_eq!(
            ns.len(),
            100,
            "{k}: every message of the busy member's keys"
        );
        assert!(ns.windows(2).all(|w| w[0] < w[1]), "{k} in order");
    }
}

#[test]
fn a_member_that_unsubscribes_keeps_its_packet_ids_until_it_acknowledges_them() {
    // MQTT-2.2.1-3 and MQTT-3.3.4-9, as for a work queue's consumer
    // (`work_queues.rs`): the group gets the messages back at once, but the client
    // still holds their packet ids until its PUBACKs, which then commit nothing.
    let mut core = core();
    let now = Instant::now();
    let mut p = connect(&mut core, Protocol::V5, "producer", true, None, now);
    append(&mut core, &mut p, "$stream/s", "m", 5, now);
    let filter = "$share/g/$stream/s/@earliest";
    let mut a = connect_receiving(&mut core, "a", 6, now);
    let subs = [(filter, q(QoS::AtLeastOnce)), ("news", q(QoS::AtLeastOnce))];
    assert_eq!(subscribe(&mut core, &mut a, &subs, None, now), [1, 1]);
    let got = received(&mut core, &mut a, now);
    assert_eq!(got.len(), 5);
    let held: std::collections::BTreeSet<u16> = got.iter().map(|m| m.3).collect();
    unsubscribe(&mut core, &mut a, filter, 9, now);
    publish_n(&mut core, &mut p, "news", 3, 100, now);
    let news = received(&mut core, &mut a, now);
    assert_eq!(news.len(), 1, "6 in flight at most, 5 of them the stream's");
    assert!(
        news.iter().all(|m| !held.contains(&m.3)),
        "no packet id reused before its PUBACK: {news:?}"
    );
    let mut b = reader(&mut core, "b", filter, now);
    let again = received(&mut core, &mut b, now);
    assert_eq!(
        again.iter().map(body).collect::<Vec<_>>(),
        numbered("m", 0..5)
    );
    for id in held {
        ack(&mut core, &mut a, id, now);
    }
    assert_eq!(
        received(&mut core, &mut a, now).len(),
        2,
        "the rest of the news"
    );
    assert_eq!(
        core.stream_stats()[0].1.groups,
        vec![("g".to_owned(), 0, 5)],
        "the first member's PUBACKs committed nothing"
    );
}
