//! Publisher backpressure on the core: a publish that fills an online subscriber past
//! half its queue limits pauses the publisher's connection, within a budget per
//! congestion episode; draining below a quarter ends the episode.

use super::*;

fn core_with_queue(max_messages: usize) -> Core {
    let cfg = MqttConfig {
        max_queued_messages: max_messages,
        max_inflight: 10,
        ..MqttConfig::default()
    };
    Core::new(Arc::new(cfg), Clock::new(Instant::now(), 1_700_000_000_000))
}

/// Publishes `n` QoS 0 messages to `t`; returns after how many the publisher was told
/// to pause (taking the pause).
fn publish_until_paused(
    core: &mut Core,
    p: &mut Client,
    t: &str,
    n: u32,
    now: Instant,
) -> Option<(u32, Instant)> {
    for i in 1..=n {
        publish(core, p, t, b"x", QoS::AtMostOnce, 0, now);
        if let Some(until) = core.take_pause() {
            return Some((i, until));
        }
    }
    None
}

#[test]
fn a_publisher_is_paused_at_half_a_subscribers_queue_and_released_when_it_drained() {
    let mut core = core_with_queue(100);
    let now = Instant::now();
    let mut s = connect(&mut core, Protocol::V311, "slow", true, None, now);
    subscribe(&mut core, &mut s, &[("t", q(QoS::AtMostOnce))], None, now);
    let mut p = connect(&mut core, Protocol::V311, "fast", true, None, now);
    let budget = Duration::from_millis(MqttConfig::default().publisher_backpressure_ms);
    assert_eq!(
        publish_until_paused(&mut core, &mut p, "t", 100, now),
        Some((50, now + budget))
    );
    // Still congested: every publish to it pauses again, within the same episode.
    let later = now + budget / 2;
    assert_eq!(
        publish_until_paused(&mut core, &mut p, "t", 1, later),
        Some((1, now + budget))
    );
    // It drained: the episode is over, the next publishes go on unpaused.
    assert_eq!(received(&mut core, &mut s, later).len(), 51);
    assert!(!core.shards.any_congested());
    assert_eq!(
        publish_until_paused(&mut core, &mut p, "t", 49, later),
        None
    );
    assert!(core.stats.publishers_paused >= 2);
}

#[test]
fn a_subscriber_congested_past_the_budget_no_longer_pauses_and_its_limits_apply() {
    let mut core = core_with_queue(100);
    let now = Instant::now();
    let mut s = connect(&mut core, Protocol::V311, "stuck", true, None, now);
    subscribe(&mut core, &mut s, &[("t", q(QoS::AtMostOnce))], None, now);
    let mut p = connect(&mut core, Protocol::V311, "fast", true, None, now);
    assert!(publish_until_paused(&mut core, &mut p, "t", 100, now).is_some());
    // It never reads: once the budget is spent its publishers go on, and what does not
    // fit its queue is dropped (counted), never queued without bound.
    let budget = Duration::from_millis(MqttConfig::default().publisher_backpressure_ms);
    let after = now + budget;
    assert_eq!(
        publish_until_paused(&mut core, &mut p, "t", 500, after),
        None
    );
    assert_eq!(core.shards.get("stuck").unwrap().queued_len(), 100);
    assert!(core.stats.dropped_overflow > 0);
}

#[test]
fn a_publisher_with_its_own_queue_congested_or_a_subscriber_offline_never_pauses() {
    let mut core = core_with_queue(100);
    let now = Instant::now();
    // a and b subscribe to each other's topics at QoS 1 and acknowledge nothing: past
    // their inflight windows, deliveries wait in their queues.
    let mut a = connect(&mut core, Protocol::V311, "a", true, None, now);
    subscribe(
        &mut core,
        &mut a,
        &[("to-a", q(QoS::AtLeastOnce))],
        None,
        now,
    );
    let mut b = connect(&mut core, Protocol::V311, "b", true, None, now);
    subscribe(
        &mut core,
        &mut b,
        &[("to-b", q(QoS::AtLeastOnce))],
        None,
        now,
    );
    for i in 0..70u16 {
        publish(
            &mut core,
            &mut b,
            "to-a",
            b"x",
            QoS::AtLeastOnce,
            i + 1,
            now,
        );
    }
    let _ = core.take_pause();
    // a's own queue is past half: a publishing to b is not paused (it must go on reading
    // its acknowledgements, or the two would wait for each other).
    for i in 0..100u16 {
        publish(
            &mut core,
            &mut a,
            "to-b",
            b"x",
            QoS::AtLeastOnce,
            i + 1,
            now,
        );
        assert_eq!(core.take_pause(), None);
    }
    // An offline persistent subscriber (nobody drains it) pauses nobody.
    let mut o = connect(&mut core, Protocol::V5, "offline", true, Some(3600), now);
    subscribe(
        &mut core,
        &mut o,
        &[("to-o", q(QoS::AtLeastOnce))],
        None,
        now,
    );
    let mut fx = Effects::default();
    core.disconnected(&o.id, o.conn, End::Abnormal, now, &mut fx);
    let mut p = connect(&mut core, Protocol::V311, "p", true, None, now);
    for i in 0..100u16 {
        publish(
            &mut core,
            &mut p,
            "to-o",
            b"x",
            QoS::AtLeastOnce,
            i + 1,
            now,
        );
    }
    assert_eq!(core.take_pause(), None);
}
