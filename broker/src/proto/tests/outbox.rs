//! The PUBLISH packets a drain stages for encoding after the core's lock
//! (`session::Outbox`) are, byte for byte, those it writes at once: topic aliases given
//! and reused, a message over the client's Maximum Packet Size dropped, subscription
//! identifiers, QoS 0 and 1 in one window, a work queue's job (encoded at once,
//! after what was staged before it), and payloads large enough to be spliced into the
//! output rather than copied (`OutBuf`), with and without properties.

use super::*;
use crate::proto::session::{OutBuf, Outbox};

/// What three subscribers are sent over three rounds of publishes, drained at once
/// (`deferred` false) or staged and encoded after the call, as the runtime does: one
/// v5 with topic aliases, a 2,000-byte Maximum Packet Size and a subscription identifier,
/// one plain v5, one 3.1.1.
fn sent(deferred: bool) -> [Vec<u8>; 3] {
    let mut core = core();
    let now = Instant::now();
    let props = PropValues {
        topic_alias_maximum: Some(2),
        maximum_packet_size: Some(2000),
        receive_maximum: Some(4),
        ..PropValues::default()
    };
    let packet = connect_packet(Protocol::V5, "sub", true, Properties::Values(&props));
    let mut sub = connect_with(&mut core, &packet, now).0.unwrap();
    let filters = [
        ("t/#", q(QoS::AtLeastOnce)),
        ("$queue/jobs", q(QoS::AtLeastOnce)),
    ];
    assert_eq!(
        subscribe(&mut core, &mut sub, &filters, Some(7), now),
        [1, 1]
    );
    let mut plain = connect(&mut core, Protocol::V5, "plain", true, None, now);
    let mut old = connect(&mut core, Protocol::V311, "old", true, None, now);
    for c in [&mut plain, &mut old] {
        assert_eq!(subscribe(&mut core, c, &filters[..1], None, now), [1]);
    }
    let mut p = connect(&mut core, Protocol::V5, "pub", true, None, now);
    let mut all: [Vec<u8>; 3] = Default::default();
    for round in 0..3u16 {
        for (i, topic) in (0u16..).zip(["t/a", "t/b", "t/c", "t/a", "t/d"]) {
            let qos = if i % 2 == 0 {
                QoS::AtMostOnce
            } else {
                QoS::AtLeastOnce
            };
            // Over the first subscriber's Maximum Packet Size; large enough to be
            // spliced rather than copied (`OutBuf`), for it too; small.
            let payload = match (round, i) {
                (1, 4) => vec![b'x'; 2500],
                (2, 2) | (2, 3) => vec![b'a' + (i as u8); 1500],
                _ => format!("{round}-{i}").into_bytes(),
            };
            publish(
                &mut core,
                &mut p,
                topic,
                &payload,
                qos,
                round * 10 + i + 1,
                now,
            );
        }
        publish(
            &mut core,
            &mut p,
            "$queue/jobs",
            b"job",
            QoS::AtLeastOnce,
            100 + round,
            now,
        );
        for (c, all) in [&mut sub, &mut plain, &mut old].into_iter().zip(&mut all) {
            for _ in 0..2 {
                drain_and_ack(&mut core, c, deferred, all, now);
            }
        }
    }
    all
}

/// Drains `c` (as [`sent`] says) into `all`, and acknowledges its QoS 1 PUBLISHes
/// without a drain of their own: the next drain sends the rest.
fn drain_and_ack(core: &mut Core, c: &mut Client, deferred: bool, all: &mut Vec<u8>, now: Instant) {
    if deferred {
        let mut outbox = Outbox::default();
        let r = core.drain_deferred(&c.id, c.conn, now, &mut c.out, &mut outbox);
        // Large payloads spliced, as the connection writes them, then laid out flat.
        let mut spliced = OutBuf::from(std::mem::take(&mut c.out));
        outbox.write(&mut spliced);
        c.out = spliced.flatten();
        r.unwrap();
    } else {
        core.drain(&c.id, c.conn, now, &mut c.out).unwrap();
    }
    let bytes = c.out.split().to_vec();
    let mut ids = Vec::new();
    each_packet(&bytes, c.protocol, |p| {
        if let Packet::Publish(p) = p {
            if p.qos != QoS::AtMostOnce {
                ids.push(p.packet_id);
            }
        }
    });
    for id in ids {
        let ack = Packet::PubAck(Ack::new(id));
        let mut fx = Effects::default();
        core.handle_only(&c.id, c.conn, &ack, now, &mut c.out, &mut fx)
            .unwrap();
    }
    all.extend(bytes);
}

#[test]
fn staged_publishes_are_the_bytes_written_at_once() {
    let [at_once, plain, old] = sent(false);
    assert_eq!(sent(true), [at_once.clone(), plain.clone(), old.clone()]);
    for (bytes, protocol) in [(&plain, Protocol::V5), (&old, Protocol::V311)] {
        let mut n = 0;
        each_packet(bytes, protocol, |p| {
            n += usize::from(matches!(p, Packet::Publish(_)))
        });
        assert_eq!(n, 15, "every message to t/#, the large one too");
    }
    // What the comparison covered.
    let (mut aliased, mut large, mut jobs, mut ids, mut qos0) = (0, 0, 0, 0, 0);
    let mut spliced = 0;
    each_packet(&at_once, Protocol::V5, |p| {
        let Packet::Publish(p) = p else { return };
        aliased += usize::from(p.topic.is_empty() && p.properties.topic_alias().is_some());
        large += usize::from(p.payload.len() == 2500);
        spliced += usize::from(p.payload.len() == 1500);
        jobs += usize::from(p.payload == b"job");
        ids += usize::from(
            p.properties
                .subscription_identifiers()
                .iter()
                .any(|i| i == 7),
        );
        qos0 += usize::from(p.qos == QoS::AtMostOnce);
    });
    assert!(aliased > 0, "a topic was sent as its alias alone");
    assert_eq!(large, 0, "over the Maximum Packet Size: dropped");
    assert_eq!(
        spliced, 2,
        "spliced payloads behind a topic alias and properties"
    );
    assert_eq!(jobs, 3, "every job");
    assert!(
        ids >= 12 && qos0 >= 6,
        "{ids} with the subscription id, {qos0} at QoS 0"
    );
}

/// A message whose last delivery a PUBACK ended is set aside to be freed after the
/// lock; one still in flight is not.
#[test]
fn messages_done_with_under_the_lock_are_set_aside() {
    let mut core = core();
    let now = Instant::now();
    let mut p = connect(&mut core, Protocol::V5, "pub", true, None, now);
    let mut sub = connect_receiving(&mut core, "sub", 10, now);
    assert_eq!(
        subscribe(
            &mut core,
            &mut sub,
            &[("t", q(QoS::AtLeastOnce))],
            None,
            now
        ),
        [1]
    );
    publish(&mut core, &mut p, "t", b"y", QoS::AtLeastOnce, 1, now);
    let got = received(&mut core, &mut sub, now);
    assert_eq!(got.len(), 1);
    assert!(core.take_spent().topics().is_empty(), "in flight: kept");
    let ack = Packet::PubAck(Ack::new(got[0].3));
    let mut fx = Effects::default();
    core.handle_only(&sub.id, sub.conn, &ack, now, &mut sub.out, &mut fx)
        .unwrap();
    assert_eq!(core.take_spent().topics(), ["t"]);
}
