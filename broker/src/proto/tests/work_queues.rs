//! Work queues (`$queue/NAME`) on the core alone: competing consumers, prefetch,
//! acknowledgements in any order, redelivery when a consumer goes, 3.1.1 and QoS 0
//! consumers, a full queue.

use super::*;

/// Acknowledges a received QoS 1 PUBLISH (what the core sends meanwhile stays in
/// `c.out` for the next [`received`]).
fn ack(core: &mut Core, c: &mut Client, packet_id: u16, now: Instant) {
    send(core, c, &Packet::PubAck(Ack::new(packet_id)), now).unwrap();
}

fn enqueue(core: &mut Core, p: &mut Client, queue: &str, n: u32, now: Instant) {
    for i in 0..n {
        let id = u16::try_from(i % 60_000).unwrap() + 1;
        publish(
            core,
            p,
            queue,
            format!("job-{i}").as_bytes(),
            QoS::AtLeastOnce,
            id,
            now,
        );
    }
}

/// An MQTT 5 client that consumes `queue` at QoS 1.
fn consumer(core: &mut Core, id: &str, queue: &str, now: Instant) -> Client {
    let mut c = connect(core, Protocol::V5, id, true, None, now);
    assert_eq!(
        subscribe(core, &mut c, &[(queue, q(QoS::AtLeastOnce))], None, now),
        [1]
    );
    c
}

/// The default visibility timeout.
fn visibility() -> Duration {
    Duration::from_secs(MqttConfig::default().queue_visibility_timeout_secs)
}

fn payload(m: &Got) -> String {
    String::from_utf8(m.1.clone()).unwrap()
}

#[test]
fn each_job_goes_to_one_consumer_at_most_prefetch_at_a_time() {
    let mut core = core();
    let now = Instant::now();
    let mut a = connect(&mut core, Protocol::V5, "worker-a", true, None, now);
    let mut b = connect(&mut core, Protocol::V5, "worker-b", true, None, now);
    assert_eq!(
        subscribe(
            &mut core,
            &mut a,
            &[("$queue/jobs", q(QoS::AtLeastOnce))],
            None,
            now
        ),
        [1]
    );
    assert_eq!(
        subscribe(
            &mut core,
            &mut b,
            &[("$queue/jobs", q(QoS::AtLeastOnce))],
            None,
            now
        ),
        [1]
    );
    let mut p = connect(&mut core, Protocol::V5, "producer", true, None, now);
    enqueue(&mut core, &mut p, "$queue/jobs", 50, now);

    let mut seen = std::collections::BTreeSet::new();
    for _round in 0..20 {
        let got_a = received(&mut core, &mut a, now);
        let got_b = received(&mut core, &mut b, now);
        assert!(got_a.len() <= 10 && got_b.len() <= 10, "prefetch 10");
        if got_a.is_empty() && got_b.is_empty() {
            break;
        }
        // Acknowledge in reverse order: PUBACKs may come in any order.
        for (c, got) in [(&mut a, got_a), (&mut b, got_b)] {
            for m in got.iter().rev() {
                assert!(seen.insert(payload(m)), "{} delivered twice", payload(m));
                assert_eq!(m.0, "$queue/jobs");
                assert!(!m.4, "first delivery: no DUP");
                ack(&mut core, c, m.3, now);
            }
        }
    }
    assert_eq!(seen.len(), 50, "every job exactly once");
}

#[test]
fn a_consumer_that_goes_leaves_its_unacknowledged_jobs_to_the_others_flagged_dup() {
    let mut core = core();
    let now = Instant::now();
    let mut a = connect(&mut core, Protocol::V5, "worker-a", true, None, now);
    subscribe(
        &mut core,
        &mut a,
        &[("$queue/jobs", q(QoS::AtLeastOnce))],
        None,
        now,
    );
    let mut p = connect(&mut core, Protocol::V5, "producer", true, None, now);
    enqueue(&mut core, &mut p, "$queue/jobs", 12, now);
    let got = received(&mut core, &mut a, now);
    assert_eq!(got.len(), 10);
    for m in &got[..3] {
        ack(&mut core, &mut a, m.3, now);
    }
    // The acknowledgements made room: the last two jobs came too.
    let more = received(&mut core, &mut a, now);
    assert_eq!(more.len(), 2);
    // The worker dies with 9 unacknowledged; a new one comes.
    let mut fx = Effects::default();
    core.disconnected(&a.id, a.conn, End::Abnormal, now, &mut fx);
    let mut b = connect(&mut core, Protocol::V311, "worker-b", true, None, now);
    subscribe(
        &mut core,
        &mut b,
        &[("$queue/jobs", q(QoS::AtLeastOnce))],
        None,
        now,
    );
    let mut again = Vec::new();
    loop {
        let got_b = received(&mut core, &mut b, now);
        if got_b.is_empty() {
            break;
        }
        for m in &got_b {
            ack(&mut core, &mut b, m.3, now);
            again.push((payload(m), m.4));
        }
    }
    let redelivered: Vec<&(String, bool)> = again.iter().filter(|(_, dup)| *dup).collect();
    assert_eq!(
        redelivered.len(),
        9,
        "the nine unacknowledged, flagged DUP: {again:?}"
    );
    assert_eq!(again.len(), 9, "and nothing else");
    let first: Vec<String> = got[3..].iter().chain(&more).map(payload).collect();
    let redone: Vec<String> = redelivered.iter().map(|(p, _)| p.clone()).collect();
    assert_eq!(redone, first, "in their order, first");
}

#[test]
fn a_qos0_consumer_acknowledges_on_receipt() {
    let mut core = core();
    let now = Instant::now();
    let mut a = connect(&mut core, Protocol::V5, "fire-and-forget", true, None, now);
    subscribe(
        &mut core,
        &mut a,
        &[("$queue/logs", q(QoS::AtMostOnce))],
        None,
        now,
    );
    let mut p = connect(&mut core, Protocol::V5, "producer", true, None, now);
    enqueue(&mut core, &mut p, "$queue/logs/app", 25, now);
    let mut total = 0;
    loop {
        let got = received(&mut core, &mut a, now);
        if got.is_empty() {
            break;
        }
        assert!(got.iter().all(|m| m.2 == QoS::AtMostOnce));
        total += got.len();
    }
    assert_eq!(total, 25);
}

#[test]
fn a_full_queue_refuses_with_quota_exceeded_and_bad_names_are_refused() {
    let cfg = MqttConfig {
        max_queued_messages: 3,
        ..MqttConfig::default()
    };
    let mut core = Core::new(Arc::new(cfg), Clock::new(Instant::now(), 1_700_000_000_000));
    let now = Instant::now();
    let mut p = connect(&mut core, Protocol::V5, "producer", true, None, now);
    let mut codes = Vec::new();
    for i in 0..5u16 {
        let pk = Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: "$queue/small",
            packet_id: i + 1,
            properties: Properties::default(),
            payload: b"x",
        });
        send(&mut core, &mut p, &pk, now).unwrap();
        each_packet(&p.out.split(), Protocol::V5, |pk| {
            if let Packet::PubAck(a) = pk {
                codes.push(a.reason);
            }
        });
    }
    assert_eq!(
        codes,
        [0, 0, 0, reason::QUOTA_EXCEEDED, reason::QUOTA_EXCEEDED]
    );
    let mut c = connect(&mut core, Protocol::V5, "consumer", true, None, now);
    let bad = [
        ("$queue/bad name", q(QoS::AtLeastOnce)),
        ("$queue/jobs/#", q(QoS::AtLeastOnce)),
        ("$share/g/$queue/jobs", q(QoS::AtLeastOnce)),
    ];
    let codes = subscribe(&mut core, &mut c, &bad, None, now);
    assert_eq!(codes, [reason::TOPIC_FILTER_INVALID; 3]);
    // The queues' own store sessions cannot be taken over by a client.
    let (refused, _) = connect_with(
        &mut core,
        &connect_packet(Protocol::V5, "$queue/small", false, Properties::default()),
        now,
    );
    assert!(refused.is_none());
}

/// A v5 PUBACK with a reason code of 0x80 or more sends a job back to the queue (a
/// redelivery, flagged DUP); 0x99 sends it to `NAME.dlq` at once.
#[test]
fn a_v5_consumer_refuses_jobs_with_reason_codes() {
    let mut core = core();
    let now = Instant::now();
    let mut w = consumer(&mut core, "worker", "$queue/jobs", now);
    let mut p = connect(&mut core, Protocol::V5, "producer", true, None, now);
    enqueue(&mut core, &mut p, "$queue/jobs", 2, now);
    let got = received(&mut core, &mut w, now);
    assert_eq!(got.len(), 2);
    let mut nack = Ack::new(got[0].3);
    nack.reason = reason::UNSPECIFIED_ERROR;
    send(&mut core, &mut w, &Packet::PubAck(nack), now).unwrap();
    let mut poison = Ack::new(got[1].3);
    poison.reason = reason::PAYLOAD_FORMAT_INVALID;
    send(&mut core, &mut w, &Packet::PubAck(poison), now).unwrap();
    // job-0 comes back, flagged DUP; job-1 is in the dead-letter queue.
    let again = received(&mut core, &mut w, now);
    assert_eq!(again.len(), 1);
    assert_eq!(payload(&again[0]), "job-0");
    assert!(again[0].4, "a redelivery is flagged DUP");
    ack(&mut core, &mut w, again[0].3, now);
    let mut d = connect(&mut core, Protocol::V311, "dlq-reader", true, None, now);
    subscribe(
        &mut core,
        &mut d,
        &[("$queue/jobs.dlq", q(QoS::AtLeastOnce))],
        None,
        now,
    );
    let dead = received(&mut core, &mut d, now);
    assert_eq!(dead.iter().map(payload).collect::<Vec<_>>(), ["job-1"]);
    let stats = core.queue_stats();
    let jobs = stats.iter().find(|(n, _)| n == "jobs").unwrap().1;
    assert_eq!((jobs.depth, jobs.inflight, jobs.dead_lettered), (0, 0, 1));
}

/// A job whose consumers keep dying with it is dead-lettered after
/// `MAX_DELIVERIES` deliveries, instead of taking every worker down forever.
#[test]
fn a_job_delivered_max_deliveries_times_is_dead_lettered() {
    let mut core = core();
    let now = Instant::now();
    let mut p = connect(&mut core, Protocol::V5, "producer", true, None, now);
    enqueue(&mut core, &mut p, "$queue/jobs", 1, now);
    for round in 0..MqttConfig::default().queue_max_deliveries {
        let mut w = connect(&mut core, Protocol::V5, "worker", true, None, now);
        subscribe(
            &mut core,
            &mut w,
            &[("$queue/jobs", q(QoS::AtLeastOnce))],
            None,
            now,
        );
        let got = received(&mut core, &mut w, now);
        assert_eq!(got.len(), 1, "delivery {}", round + 1);
        assert_eq!(got[0].4, round > 0, "DUP from the second delivery on");
        let mut fx = Effects::default();
        core.disconnected(&w.id, w.conn, End::Abnormal, now, &mut fx);
    }
    let mut w = consumer(&mut core, "worker", "$queue/jobs", now);
    assert!(
        received(&mut core, &mut w, now).is_empty(),
        "not delivered a sixth time"
    );
    let mut d = connect(&mut core, Protocol::V5, "dlq-reader", true, None, now);
    subscribe(
        &mut core,
        &mut d,
        &[("$queue/jobs.dlq", q(QoS::AtLeastOnce))],
        None,
        now,
    );
    let dead = received(&mut core, &mut d, now);
    assert_eq!(dead.iter().map(payload).collect::<Vec<_>>(), ["job-0"]);
}

/// A job not acknowledged within the visibility timeout goes to another consumer (DUP,
/// delivery count 2); the first consumer's late PUBACK acknowledges nothing and frees
/// its packet id; the second one's acknowledgement finishes the job.
#[test]
fn a_job_held_past_the_visibility_timeout_goes_to_another_consumer() {
    let mut core = core();
    let t0 = Instant::now();
    let mut slow = consumer(&mut core, "slow", "$queue/jobs", t0);
    let mut p = connect(&mut core, Protocol::V5, "producer", true, None, t0);
    enqueue(&mut core, &mut p, "$queue/jobs", 1, t0);
    let held = received(&mut core, &mut slow, t0);
    assert_eq!(held.len(), 1);
    let mut fast = consumer(&mut core, "fast", "$queue/jobs", t0);
    assert!(
        received(&mut core, &mut fast, t0).is_empty(),
        "held by slow"
    );

    let before = t0 + visibility() - Duration::from_secs(1);
    let mut fx = Effects::default();
    core.handle_timeout(before, &mut fx);
    assert!(
        received(&mut core, &mut fast, before).is_empty(),
        "not visible yet"
    );
    let after = t0 + visibility();
    core.handle_timeout(after, &mut fx);
    let again = received(&mut core, &mut fast, after);
    assert_eq!(again.len(), 1, "visible again, to the other consumer");
    assert!(received(&mut core, &mut slow, after).is_empty());
    assert_eq!(payload(&again[0]), "job-0");
    assert!(again[0].4, "a redelivery is flagged DUP");
    // The slow consumer's late PUBACK changes nothing but its own place.
    ack(&mut core, &mut slow, held[0].3, after);
    let stats = core.queue_stats();
    assert_eq!(stats[0].1.inflight, 1, "the copy is still held");
    ack(&mut core, &mut fast, again[0].3, after);
    let stats = core.queue_stats();
    assert_eq!((stats[0].1.depth, stats[0].1.inflight), (0, 0));
    // Nothing comes back later: the timer of the acknowledged copy is gone.
    let later = after + visibility() * 2;
    core.handle_timeout(later, &mut fx);
    assert!(received(&mut core, &mut fast, later).is_empty());
    assert!(received(&mut core, &mut slow, later).is_empty());
}

/// With one consumer the job comes back to it; acknowledging the stale delivery late does
/// not cancel the copy's own timeout.
#[test]
fn a_lone_consumer_gets_its_timed_out_job_again_and_the_copy_keeps_its_timeout() {
    let mut core = core();
    let t0 = Instant::now();
    let mut w = consumer(&mut core, "lone", "$queue/jobs", t0);
    let mut p = connect(&mut core, Protocol::V5, "producer", true, None, t0);
    enqueue(&mut core, &mut p, "$queue/jobs", 1, t0);
    let first = received(&mut core, &mut w, t0);
    let mut fx = Effects::default();
    let t1 = t0 + visibility();
    core.handle_timeout(t1, &mut fx);
    let second = received(&mut core, &mut w, t1);
    assert_eq!(second.len(), 1);
    assert!(second[0].4);
    assert_ne!(
        second[0].3, first[0].3,
        "a new packet id: the first is still in flight"
    );
    ack(&mut core, &mut w, first[0].3, t1);
    let t2 = t1 + visibility();
    core.handle_timeout(t2, &mut fx);
    let third = received(&mut core, &mut w, t2);
    assert_eq!(third.len(), 1, "the copy timed out too");
    ack(&mut core, &mut w, third[0].3, t2);
    assert_eq!(
        core.queue_stats()[0].1.inflight,
        1,
        "the second is stale, unacknowledged"
    );
    ack(&mut core, &mut w, second[0].3, t2);
    assert_eq!(core.queue_stats()[0].1.inflight, 0);
}

/// Publishes a consumer's control topic at QoS 1 and returns the PUBACK's reason code
/// (other packets stay in `c.out`).
fn control(core: &mut Core, c: &mut Client, topic: &str, now: Instant) -> u8 {
    publish_acked(core, c, topic, b"", now).0
}

#[test]
fn control_topics_nack_retry_touch_and_malformed() {
    let mut core = core();
    let t0 = Instant::now();
    let mut w = consumer(&mut core, "worker", "$queue/jobs", t0);
    let mut p = connect(&mut core, Protocol::V5, "producer", true, None, t0);
    enqueue(&mut core, &mut p, "$queue/jobs", 3, t0);
    let got = received(&mut core, &mut w, t0);
    let names: Vec<String> = got.iter().map(payload).collect();
    assert_eq!(names, ["job-0", "job-1", "job-2"]);
    let pid = |i: usize| got[i].3;

    // Malformed or naming nothing of this consumer.
    assert_eq!(control(&mut core, &mut w, "$queue/$nack/abc", t0), 0x90);
    assert_eq!(control(&mut core, &mut w, "$queue/$nack/1/2/3", t0), 0x90);
    assert_eq!(control(&mut core, &mut w, "$queue/$frob/1", t0), 0x90);
    assert_eq!(control(&mut core, &mut w, "$queue/$nack/4242", t0), 0x80);
    assert_eq!(
        control(&mut core, &mut p, &format!("$queue/$nack/{}", pid(0)), t0),
        0x80
    );

    // A nack: the job comes back at once (to the only consumer), flagged DUP; the PUBACK
    // that follows the nack acknowledges nothing.
    assert_eq!(
        control(&mut core, &mut w, &format!("$queue/$nack/{}", pid(0)), t0),
        0
    );
    ack(&mut core, &mut w, pid(0), t0);
    let again = received(&mut core, &mut w, t0);
    assert_eq!(again.iter().map(payload).collect::<Vec<_>>(), ["job-0"]);
    assert!(again[0].4, "DUP");
    ack(&mut core, &mut w, again[0].3, t0);

    // A nack with a retry delay: back after 30 s, not before.
    assert_eq!(
        control(
            &mut core,
            &mut w,
            &format!("$queue/$nack/{}/30", pid(1)),
            t0
        ),
        0
    );
    ack(&mut core, &mut w, pid(1), t0);
    let mut fx = Effects::default();
    let t29 = t0 + Duration::from_secs(29);
    core.handle_timeout(t29, &mut fx);
    assert!(
        received(&mut core, &mut w, t29).is_empty(),
        "not before its delay"
    );
    let t31 = t0 + Duration::from_secs(31);
    core.handle_timeout(t31, &mut fx);
    let back = received(&mut core, &mut w, t31);
    assert_eq!(back.iter().map(payload).collect::<Vec<_>>(), ["job-1"]);

    // A touch keeps job-2 past the default visibility timeout; job-1 (untouched) comes
    // back when its own runs out.
    let t1 = t0 + visibility() - Duration::from_secs(1);
    assert_eq!(
        control(
            &mut core,
            &mut w,
            &format!("$queue/$touch/{}/600", pid(2)),
            t1
        ),
        0
    );
    let late = t31 + visibility();
    core.handle_timeout(late, &mut fx);
    let timed_out = received(&mut core, &mut w, late);
    assert_eq!(timed_out.iter().map(payload).collect::<Vec<_>>(), ["job-1"]);
    // job-2 is still held; acknowledging it deletes it.
    ack(&mut core, &mut w, pid(2), late);
    ack(&mut core, &mut w, back[0].3, late);
    ack(&mut core, &mut w, timed_out[0].3, late);
    let stats = core.queue_stats();
    assert_eq!((stats[0].1.depth, stats[0].1.inflight), (0, 0));
    let much_later = t1 + Duration::from_secs(700);
    core.handle_timeout(much_later, &mut fx);
    assert!(received(&mut core, &mut w, much_later).is_empty());
}

#[test]
fn a_pulling_consumer_gets_only_what_it_granted() {
    let mut core = core();
    let now = Instant::now();
    let mut c = connect(&mut core, Protocol::V5, "puller", true, None, now);
    let users = [(queues::CREDIT_PROPERTY, "0")];
    let entries = [SubscribeFilter {
        filter: "$queue/jobs",
        options: q(QoS::AtLeastOnce),
    }];
    let sub = Packet::Subscribe(Subscribe {
        packet_id: 1,
        properties: Properties::Values(&PropValues {
            user_properties: PropList::Slice(&users),
            ..PropValues::default()
        }),
        filters: List::Slice(&entries),
    });
    send(&mut core, &mut c, &sub, now).unwrap();
    c.out.clear();
    let mut p = connect(&mut core, Protocol::V5, "producer", true, None, now);
    enqueue(&mut core, &mut p, "$queue/jobs", 5, now);
    assert!(
        received(&mut core, &mut c, now).is_empty(),
        "no credit, nothing sent"
    );
    assert_eq!(control(&mut core, &mut c, "$queue/$credit/jobs/2", now), 0);
    let got = received(&mut core, &mut c, now);
    assert_eq!(
        got.iter().map(payload).collect::<Vec<_>>(),
        ["job-0", "job-1"]
    );
    for m in &got {
        ack(&mut core, &mut c, m.3, now);
    }
    assert!(
        received(&mut core, &mut c, now).is_empty(),
        "acknowledging grants nothing"
    );
    assert_eq!(control(&mut core, &mut c, "$queue/$credit/jobs/1", now), 0);
    let got = received(&mut core, &mut c, now);
    assert_eq!(got.iter().map(payload).collect::<Vec<_>>(), ["job-2"]);
    // Credit names a queue this client consumes.
    assert_eq!(
        control(&mut core, &mut c, "$queue/$credit/other/1", now),
        0x80
    );
    assert_eq!(
        control(&mut core, &mut c, "$queue/$credit/bad name/1", now),
        0x90
    );
}

/// Publishes `body` to `topic` at QoS 1 from `c` and returns the PUBACK's reason code and
/// reason string (other packets stay in `c.out`).
fn publish_acked(
    core: &mut Core,
    c: &mut Client,
    topic: &str,
    body: &[u8],
    now: Instant,
) -> (u8, Option<String>) {
    let p = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic,
        packet_id: 998,
        properties: Properties::default(),
        payload: body,
    });
    send(core, c, &p, now).unwrap();
    let bytes = c.out.split().to_vec();
    let mut got = None;
    let mut rest = BytesMut::new();
    each_packet(&bytes, c.protocol, |p| match p {
        Packet::PubAck(a) if a.packet_id == 998 => {
            got = Some((
                a.reason,
                a.properties.values().reason_string.map(str::to_owned),
            ));
        }
        p => p.encode_to(c.protocol, &mut rest).unwrap(),
    });
    c.out = rest;
    got.expect("a PUBACK")
}

#[test]
fn queues_are_declared_over_mqtt_idempotently_and_kept_retained() {
    let mut core = core();
    let now = Instant::now();
    let mut admin = connect(&mut core, Protocol::V5, "admin", true, None, now);
    let decl = br#"{"prefetch": 2, "max_deliveries": 1}"#;
    assert_eq!(
        publish_acked(&mut core, &mut admin, "$admin/queue/jobs", decl, now),
        (0, None)
    );
    assert_eq!(
        publish_acked(&mut core, &mut admin, "$admin/queue/jobs", decl, now),
        (0, None)
    );
    let (code, why) = publish_acked(
        &mut core,
        &mut admin,
        "$admin/queue/jobs",
        br#"{"prefetch": 3}"#,
        now,
    );
    assert_eq!(code, 0x83);
    assert!(why.unwrap().contains("other settings"));
    let (code, why) = publish_acked(&mut core, &mut admin, "$admin/queue/jobs2", b"{nope", now);
    assert_eq!(code, 0x99);
    assert!(why.unwrap().contains("bad declaration"));
    let (code, _) = publish_acked(
        &mut core,
        &mut admin,
        "$admin/queue/jobs3",
        br#"{"speed": 1}"#,
        now,
    );
    assert_eq!(code, 0x99, "unknown keys are refused");
    let (code, _) = publish_acked(&mut core, &mut admin, "$admin/queue/bad name", b"{}", now);
    assert_eq!(code, 0x83);
    // The accepted declaration is the topic's retained message (it survives a restart).
    let (page, _) = core.retained_page("$admin/queue/#", None, 10);
    let kept: Vec<(&str, &[u8])> = page.iter().map(|m| (&*m.topic, &m.payload[..])).collect();
    assert_eq!(kept, [("$admin/queue/jobs", &decl[..])]);

    // Its settings hold: a prefetch of 2, dead-lettered after one delivery.
    let mut w = consumer(&mut core, "w", "$queue/jobs", now);
    let mut p = connect(&mut core, Protocol::V5, "p", true, None, now);
    enqueue(&mut core, &mut p, "$queue/jobs", 3, now);
    let got = received(&mut core, &mut w, now);
    assert_eq!(got.len(), 2, "prefetch 2");
    core.disconnected(&w.id, w.conn, End::Abnormal, now, &mut Effects::default());
    let stats = core.queue_stats();
    let dlq = stats
        .iter()
        .find(|(n, _)| n == "jobs.dlq")
        .map(|s| s.1.depth);
    assert_eq!(
        dlq,
        Some(2),
        "one delivery at most: both held jobs dead-lettered"
    );
}

#[test]
fn overflow_policies_retention_delay_and_filter() {
    let mut core = core();
    let now = Instant::now();
    let decl = |json: &str| serde_json::from_str::<crate::config::QueueDecl>(json).unwrap();
    core.declare_queue(
        "drop",
        decl(r#"{"max_messages": 2, "overflow": "drop_oldest"}"#),
        now,
    )
    .unwrap();
    core.declare_queue(
        "dead",
        decl(r#"{"max_messages": 2, "overflow": "dead_letter"}"#),
        now,
    )
    .unwrap();
    core.declare_queue("reject", decl(r#"{"max_messages": 2}"#), now)
        .unwrap();
    core.declare_queue("short", decl(r#"{"retention": 60}"#), now)
        .unwrap();
    core.declare_queue("later", decl(r#"{"delay": 30}"#), now)
        .unwrap();
    core.declare_queue("readings", decl(r#"{"filter": "sensors/#"}"#), now)
        .unwrap();
    let mut p = connect(&mut core, Protocol::V5, "p", true, None, now);
    for q in ["drop", "dead", "reject"] {
        let codes: Vec<u8> = (0..3)
            .map(|i| {
                publish_acked(
                    &mut core,
                    &mut p,
                    &format!("$queue/{q}"),
                    format!("m{i}").as_bytes(),
                    now,
                )
                .0
            })
            .collect();
        let want: &[u8] = if q == "reject" {
            &[0, 0, 0x97]
        } else {
            &[0, 0, 0]
        };
        assert_eq!(codes, want, "{q}");
    }
    let depth = |core: &Core, name: &str| {
        core.queue_stats()
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|s| s.1.depth)
    };
    assert_eq!(depth(&core, "drop"), Some(2));
    assert_eq!(depth(&core, "dead"), Some(2));
    assert_eq!(
        depth(&core, "dead.dlq"),
        Some(1),
        "the oldest moved to the dead letters"
    );
    let mut w = consumer(&mut core, "w", "$queue/drop", now);
    let names: Vec<String> = received(&mut core, &mut w, now)
        .iter()
        .map(payload)
        .collect();
    assert_eq!(names, ["m1", "m2"], "the oldest was dropped");

    // Retention: a job nobody took within 60 s is gone.
    publish_acked(&mut core, &mut p, "$queue/short", b"stale", now);
    let t61 = now + Duration::from_secs(61);
    subscribe(
        &mut core,
        &mut w,
        &[("$queue/short", q(QoS::AtLeastOnce))],
        None,
        t61,
    );
    assert!(
        received(&mut core, &mut w, t61).is_empty(),
        "expired unconsumed"
    );
    assert_eq!(depth(&core, "short"), Some(0));

    // Delay: a job of `later` waits 30 s before a consumer can have it.
    subscribe(
        &mut core,
        &mut w,
        &[("$queue/later", q(QoS::AtLeastOnce))],
        None,
        now,
    );
    assert_eq!(
        publish_acked(&mut core, &mut p, "$queue/later", b"soon", now).0,
        0
    );
    assert!(received(&mut core, &mut w, now).is_empty());
    let t31 = now + Duration::from_secs(31);
    core.handle_timeout(t31, &mut Effects::default());
    let names: Vec<String> = received(&mut core, &mut w, t31)
        .iter()
        .map(payload)
        .collect();
    assert_eq!(names, ["soon"]);

    // Filter: the queue collects matching publishes, QoS 0 ones included, and their
    // publishers hear of a receiver.
    subscribe(
        &mut core,
        &mut w,
        &[("$queue/readings", q(QoS::AtLeastOnce))],
        None,
        t31,
    );
    let mut dev = connect(&mut core, Protocol::V5, "dev", true, None, t31);
    publish(
        &mut core,
        &mut dev,
        "sensors/a",
        b"21.5",
        QoS::AtMostOnce,
        0,
        t31,
    );
    assert_eq!(
        publish_acked(&mut core, &mut dev, "sensors/b", b"22.0", t31).0,
        0
    );
    assert_eq!(
        publish_acked(&mut core, &mut dev, "other/c", b"x", t31).0,
        0x10
    );
    let got = received(&mut core, &mut w, t31);
    let jobs: Vec<(String, String, QoS)> =
        got.iter().map(|m| (m.0.clone(), payload(m), m.2)).collect();
    assert_eq!(
        jobs,
        [
            ("sensors/a".to_owned(), "21.5".to_owned(), QoS::AtLeastOnce),
            ("sensors/b".to_owned(), "22.0".to_owned(), QoS::AtLeastOnce),
        ]
    );
}

#[test]
fn without_auto_create_only_declared_queues_exist() {
    let mut core = core();
    core.set_auto_create_queues(false, 1000);
    let now = Instant::now();
    let decl = crate::config::QueueDecl::default();
    core.declare_queue("known", decl, now).unwrap();
    let mut p = connect(&mut core, Protocol::V5, "p", true, None, now);
    assert_eq!(
        publish_acked(&mut core, &mut p, "$queue/unknown", b"x", now).0,
        0x10
    );
    assert_eq!(
        publish_acked(&mut core, &mut p, "$queue/known", b"x", now).0,
        0
    );
    // Delayed into it: not kept either (it would reach nobody when due).
    assert_eq!(
        publish_acked(&mut core, &mut p, "$delayed/5/$queue/unknown", b"x", now).0,
        0x10
    );
    assert_eq!(core.delayed.len(), 0);
    let mut w = connect(&mut core, Protocol::V5, "w", true, None, now);
    let codes = subscribe(
        &mut core,
        &mut w,
        &[
            ("$queue/unknown", q(QoS::AtLeastOnce)),
            ("$queue/known", q(QoS::AtLeastOnce)),
        ],
        None,
        now,
    );
    assert_eq!(codes, [0x8f, 1]);
    assert_eq!(received(&mut core, &mut w, now).len(), 1);
}

/// Drains `c` and returns each PUBLISH's payload and user properties.
fn received_with_users(
    core: &mut Core,
    c: &mut Client,
    now: Instant,
) -> Vec<(String, Vec<(String, String)>)> {
    let _ = core.drain(&c.id, c.conn, now, &mut c.out);
    let bytes = c.out.split().to_vec();
    let mut v = Vec::new();
    each_packet(&bytes, c.protocol, |p| {
        if let Packet::Publish(p) = p {
            let users = p
                .properties
                .user_properties()
                .iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
            v.push((String::from_utf8(p.payload.to_vec()).unwrap(), users));
        }
    });
    v
}

#[test]
fn jobs_carry_their_id_and_dead_letters_their_reason() {
    let mut core = core();
    let now = Instant::now();
    let mut w = consumer(&mut core, "w", "$queue/jobs", now);
    let mut p = connect(&mut core, Protocol::V5, "p", true, None, now);
    enqueue(&mut core, &mut p, "$queue/jobs", 1, now);
    let _ = core.drain(&w.id, w.conn, now, &mut w.out);
    let bytes = w.out.clone().to_vec();
    let got = received_with_users(&mut core, &mut w, now);
    let users = &got[0].1;
    let id = users
        .iter()
        .find(|(k, _)| k == "mote-id")
        .map(|(_, v)| v.clone())
        .unwrap();
    assert_eq!(id.len(), 16, "{users:?}");
    assert!(users.contains(&("mote-delivery-count".to_owned(), "1".to_owned())));
    // Refused as poison (0x99): dead-lettered with the same id and the reason.
    let mut pid = 0;
    each_packet(&bytes, w.protocol, |p| {
        if let Packet::Publish(p) = p {
            pid = p.packet_id;
        }
    });
    let mut nack = Ack::new(pid);
    nack.reason = 0x99;
    send(&mut core, &mut w, &Packet::PubAck(nack), now).unwrap();
    let mut d = consumer(&mut core, "d", "$queue/jobs.dlq", now);
    let dead = received_with_users(&mut core, &mut d, now);
    assert_eq!(dead.len(), 1);
    let users = &dead[0].1;
    assert!(users.contains(&("mote-id".to_owned(), id)), "{users:?}");
    assert!(
        users.contains(&("mote-dead-reason".to_owned(), "refused".to_owned())),
        "{users:?}"
    );
}

#[test]
fn a_refused_job_goes_to_another_consumer_first() {
    let mut core = core();
    let now = Instant::now();
    let mut a = consumer(&mut core, "a", "$queue/jobs", now);
    let mut p = connect(&mut core, Protocol::V5, "p", true, None, now);
    enqueue(&mut core, &mut p, "$queue/jobs", 1, now);
    let held = received(&mut core, &mut a, now);
    let mut b = consumer(&mut core, "b", "$queue/jobs", now);
    // a refuses it with a reason code: a and b then hold nothing, and a (the first
    // consumer) would be picked; the refusal makes it b.
    let mut refuse = Ack::new(held[0].3);
    refuse.reason = 0x80;
    send(&mut core, &mut a, &Packet::PubAck(refuse), now).unwrap();
    let to_b = received(&mut core, &mut b, now);
    assert_eq!(to_b.iter().map(payload).collect::<Vec<_>>(), ["job-0"]);
    assert!(received(&mut core, &mut a, now).is_empty());
    // b refuses it with a nack: it goes back to a.
    assert_eq!(
        control(
            &mut core,
            &mut b,
            &format!("$queue/$nack/{}", to_b[0].3),
            now
        ),
        0
    );
    ack(&mut core, &mut b, to_b[0].3, now);
    let back = received(&mut core, &mut a, now);
    assert_eq!(back.iter().map(payload).collect::<Vec<_>>(), ["job-0"]);
    assert!(received(&mut core, &mut b, now).is_empty());
}

#[test]
fn redrive_moves_dead_letters_back_with_a_fresh_count() {
    let mut core = core();
    let now = Instant::now();
    let mut w = consumer(&mut core, "w", "$queue/jobs", now);
    let mut p = connect(&mut core, Protocol::V5, "p", true, None, now);
    enqueue(&mut core, &mut p, "$queue/jobs", 2, now);
    // Both refused as poison: dead letters.
    for m in received(&mut core, &mut w, now) {
        let mut poison = Ack::new(m.3);
        poison.reason = 0x99;
        send(&mut core, &mut w, &Packet::PubAck(poison), now).unwrap();
    }
    let depth = |core: &Core, name: &str| {
        core.queue_stats()
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|s| s.1.depth)
    };
    assert_eq!(depth(&core, "jobs.dlq"), Some(2));
    let (code, why) = publish_acked(&mut core, &mut p, "$admin/queue/jobs/redrive", b"", now);
    assert_eq!((code, why.as_deref()), (0, Some("moved 2")));
    assert_eq!(depth(&core, "jobs.dlq"), Some(0));
    let back = received_with_users(&mut core, &mut w, now);
    assert_eq!(
        back.iter().map(|m| m.0.as_str()).collect::<Vec<_>>(),
        ["job-0", "job-1"]
    );
    for (_, users) in &back {
        assert!(
            users.contains(&("mote-delivery-count".to_owned(), "1".to_owned())),
            "{users:?}"
        );
        assert!(
            !users.iter().any(|(k, _)| k == "mote-dead-reason"),
            "{users:?}"
        );
    }
    // Not a queue with dead letters.
    let (code, _) = publish_acked(&mut core, &mut p, "$admin/queue/jobs.dlq/redrive", b"", now);
    assert_eq!(code, 0x83);
    // A redrive is not kept as a declaration.
    let (page, _) = core.retained_page("$admin/#", None, 10);
    assert!(page.is_empty());
}

#[test]
fn queues_made_on_first_use_are_capped() {
    let mut core = core();
    let now = Instant::now();
    core.set_auto_create_queues(true, 2);
    let _a = consumer(&mut core, "w1", "$queue/a", now);
    let _b = consumer(&mut core, "w2", "$queue/b", now);
    let mut c = connect(&mut core, Protocol::V5, "w3", true, None, now);
    let codes = subscribe(
        &mut core,
        &mut c,
        &[("$queue/c", q(QoS::AtLeastOnce))],
        None,
        now,
    );
    assert_eq!(codes, [reason::TOPIC_FILTER_INVALID]);
    // The queues there are still work.
    let mut p = connect(&mut core, Protocol::V5, "producer", true, None, now);
    enqueue(&mut core, &mut p, "$queue/a", 1, now);
    assert_eq!(core.queue_stats().len(), 2);
}

#[test]
fn queue_stats_count_the_jobs_waiting_out_a_delay() {
    let mut core = core();
    let now = Instant::now();
    let mut p = connect(&mut core, Protocol::V5, "p", true, None, now);
    enqueue(&mut core, &mut p, "$queue/later", 1, now);
    enqueue(&mut core, &mut p, "$delayed/60/$queue/later", 2, now);
    let st = core.queue_stats();
    let later = st
        .iter()
        .find(|(n, _)| n == "later")
        .map(|(_, s)| s)
        .unwrap();
    assert_eq!((later.depth, later.delayed), (1, 2));
}

#[test]
fn consumers_with_nothing_outstanding_take_turns() {
    // One job at a time, each acknowledged before the next (a low rate): the least
    // loaded is a tie every time, and the consumers must take turns rather than the
    // first listed taking every job.
    let mut core = core();
    let now = Instant::now();
    let mut workers: Vec<Client> = (0..4)
        .map(|i| consumer(&mut core, &format!("w{i}"), "$queue/rr", now))
        .collect();
    let mut p = connect(&mut core, Protocol::V5, "producer", true, None, now);
    let mut counts = [0usize; 4];
    for i in 0..40u16 {
        publish(
            &mut core,
            &mut p,
            "$queue/rr",
            b"job",
            QoS::AtLeastOnce,
            i + 1,
            now,
        );
        let mut got = 0;
        for (w, c) in workers.iter_mut().enumerate() {
            for m in received(&mut core, c, now) {
                ack(&mut core, c, m.3, now);
                counts[w] += 1;
                got += 1;
            }
        }
        assert_eq!(got, 1, "job {i} delivered once");
    }
    assert_eq!(counts, [10, 10, 10, 10]);
}

/// A journal in memory whose durable position moves only when the test says (a slow
/// fsync).
#[derive(Debug, Default)]
struct HeldJournal {
    appended: std::sync::atomic::AtomicU64,
    durable: std::sync::atomic::AtomicU64,
}

impl durable::Journal for HeldJournal {
    fn append_with(&self, encode: &mut dyn FnMut(&mut Vec<u8>)) -> u64 {
        encode(&mut Vec::new());
        self.appended
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1
    }
    fn waits(&self) -> bool {
        true
    }
    fn durable(&self) -> u64 {
        self.durable.load(std::sync::atomic::Ordering::Relaxed)
    }
    fn since_snapshot(&self) -> u64 {
        0
    }
    fn snapshot_begin(&self) {}
    fn snapshot_chunk(&self, _framed: Vec<u8>) {}
    fn snapshot_end(&self) {}
}

#[derive(Debug)]
struct NoTails;

impl durable::TailStore for NoTails {
    fn create(&self) -> std::io::Result<Box<dyn durable::QueueTail>> {
        Err(std::io::Error::other("no spill files here"))
    }
}

#[test]
fn a_job_reaches_a_worker_before_its_enqueue_is_durable_but_its_producer_waits() {
    // Work queues are at least once: a job goes out as soon as it is enqueued, as
    // RabbitMQ hands them out; only the producer's acknowledgement waits for the fsync.
    // An ordinary persistent subscriber of the same topic still gets the message only
    // once it is durable.
    let now = Instant::now();
    let journal = Arc::new(HeldJournal::default());
    let mut core = Core::with_journal(
        Arc::new(MqttConfig::default()),
        journal.clone(),
        Arc::new(NoTails),
        usize::MAX,
        Clock::new(now, 1_700_000_000_000),
    );
    let mut w = consumer(&mut core, "worker", "$queue/fast", now);
    let mut p = connect(&mut core, Protocol::V5, "producer", true, None, now);
    let _ = core.take_wait_lsn();
    publish(
        &mut core,
        &mut p,
        "$queue/fast",
        b"job-0",
        QoS::AtLeastOnce,
        1,
        now,
    );
    let wait = core.take_wait_lsn();
    assert!(wait > journal.durable(), "the PUBACK waits for the enqueue");
    let got = received(&mut core, &mut w, now);
    assert_eq!(got.len(), 1, "the worker has the job before the fsync");
    assert_eq!(payload(&got[0]), "job-0");
    // Acknowledged, the next job goes out at once too, still before any fsync.
    publish(
        &mut core,
        &mut p,
        "$queue/fast",
        b"job-1",
        QoS::AtLeastOnce,
        2,
        now,
    );
    ack(&mut core, &mut w, got[0].3, now);
    let got = received(&mut core, &mut w, now);
    assert_eq!(got.iter().map(payload).collect::<Vec<_>>(), ["job-1"]);

    // A persistent subscriber: held until durable.
    let mut s = connect(&mut core, Protocol::V311, "plain", false, None, now);
    subscribe(
        &mut core,
        &mut s,
        &[("plain/t", q(QoS::AtLeastOnce))],
        None,
        now,
    );
    publish(&mut core, &mut p, "plain/t", b"m", QoS::AtLeastOnce, 3, now);
    assert!(received(&mut core, &mut s, now).is_empty());
    journal.durable.store(
        journal.appended.load(std::sync::atomic::Ordering::Relaxed),
        std::sync::atomic::Ordering::Relaxed,
    );
    assert_eq!(received(&mut core, &mut s, now).len(), 1);
}

#[test]
fn a_consumer_that_unsubscribes_keeps_its_jobs_packet_ids_until_it_acknowledges_them() {
    // MQTT-3.3.4-9 and MQTT-2.2.1-3: jobs in flight when a connected consumer leaves
    // its queue go back to the queue, but the client still holds their packet ids and
    // they still count against its Receive Maximum until it acknowledges them.
    let mut core = core();
    let now = Instant::now();
    let mut w = connect_receiving(&mut core, "worker", 12, now);
    let subs = [
        ("$queue/jobs", q(QoS::AtLeastOnce)),
        ("news", q(QoS::AtLeastOnce)),
    ];
    assert_eq!(subscribe(&mut core, &mut w, &subs, None, now), [1, 1]);
    let mut p = connect(&mut core, Protocol::V5, "producer", true, None, now);
    enqueue(&mut core, &mut p, "$queue/jobs", 10, now);
    let jobs = received(&mut core, &mut w, now);
    assert_eq!(jobs.len(), 10, "the prefetch");
    let job_ids: std::collections::BTreeSet<u16> = jobs.iter().map(|m| m.3).collect();

    unsubscribe(&mut core, &mut w, "$queue/jobs", 7, now);
    publish_n(&mut core, &mut p, "news", 5, 100, now);
    let news = received(&mut core, &mut w, now);
    assert_eq!(news.len(), 2, "12 in flight at most, 10 of them the jobs");
    assert!(
        news.iter().all(|m| !job_ids.contains(&m.3)),
        "no job's packet id reused before its PUBACK: {news:?}"
    );

    // Another consumer gets the jobs; the worker's PUBACKs acknowledge nothing but
    // free their ids, and the rest of the news comes.
    let mut other = consumer(&mut core, "other", "$queue/jobs", now);
    let again = received(&mut core, &mut other, now);
    assert_eq!(again.len(), 10);
    assert!(again.iter().all(|m| m.4), "flagged DUP");
    for id in &job_ids {
        ack(&mut core, &mut w, *id, now);
    }
    let rest = received(&mut core, &mut w, now);
    assert_eq!(rest.len(), 3, "{rest:?}");
    for m in &again {
        ack(&mut core, &mut other, m.3, now);
    }
    assert!(
        received(&mut core, &mut other, now).is_empty(),
        "each job once more"
    );
}
