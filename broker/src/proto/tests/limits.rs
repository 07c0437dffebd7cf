//! Per-user limits (`auth.limits`, `proto/login.rs`, docs/security.md): the limits a
//! login brings replace `[mqtt]`'s for its session, field by field; a user without any,
//! and an anonymous client, keep `[mqtt]`'s. (The PUBLISH rate is the connection's, in
//! the runtime: `tests/tests/limits.rs` shows it from outside.)

use super::*;
use crate::config::UserLimits;
use crate::proto::login::{Limits, LimitsByUser, Login};

/// A login as `user` with `limits` of its own (`None`: `[mqtt]`'s).
fn login(user: Option<&str>, limits: Option<Limits>) -> Login {
    Login {
        limits: limits.map(Arc::new),
        ..Login::from(user.map(Arc::from))
    }
}

fn core_with(cfg: MqttConfig) -> Core {
    Core::new(Arc::new(cfg), Clock::new(Instant::now(), 1_700_000_000_000))
}

/// SUBACK codes of five new filters.
fn subscribe_five(core: &mut Core, c: &mut Client, now: Instant) -> Vec<u8> {
    let five = ["a", "b", "c", "d", "e"].map(|f| (f, q(QoS::AtLeastOnce)));
    subscribe(core, c, &five, None, now)
}

#[test]
fn subscriptions_per_client_differ_by_user() {
    let mut core = core_with(MqttConfig {
        max_subscriptions_per_client: 2,
        ..MqttConfig::default()
    });
    let now = Instant::now();
    let backend = Limits {
        max_subscriptions: Some(4),
        ..Limits::default()
    };
    // A user's entry that does not set this limit leaves `[mqtt]`'s.
    let other = Limits {
        max_queued_messages: Some(1_000),
        ..Limits::default()
    };
    for (protocol, refused) in [
        (Protocol::V5, reason::QUOTA_EXCEEDED),
        (Protocol::V311, 0x80),
    ] {
        let cases = [
            (
                "backend",
                Some("backend"),
                Some(backend),
                [1, 1, 1, 1, refused],
            ),
            (
                "device",
                Some("device"),
                None,
                [1, 1, refused, refused, refused],
            ),
            (
                "other",
                Some("other"),
                Some(other),
                [1, 1, refused, refused, refused],
            ),
            ("anon", None, None, [1, 1, refused, refused, refused]),
        ];
        for (id, user, limits, expected) in cases {
            let id = format!("{id}-{protocol:?}");
            let mut c = connect_as(&mut core, protocol, &id, None, login(user, limits), now)
                .0
                .unwrap();
            let codes = subscribe_five(&mut core, &mut c, now);
            assert_eq!(codes, expected, "{id}");
            // Replacing a subscription it holds is not a new one.
            let again = subscribe(&mut core, &mut c, &[("a", q(QoS::AtMostOnce))], None, now);
            assert_eq!(again, [0], "{id}");
        }
    }
}

/// Connects a persistent subscriber to the topic `id` as `login`, then publishes `n`
/// QoS 1 messages of `size` bytes there without letting it drain; what it then receives.
fn queued_for(core: &mut Core, id: &str, login: Login, n: u16, size: usize) -> usize {
    let now = Instant::now();
    let mut sub = connect_as(core, Protocol::V5, id, Some(600), login, now)
        .0
        .unwrap();
    subscribe(core, &mut sub, &[(id, q(QoS::AtLeastOnce))], None, now);
    let mut p = connect(core, Protocol::V5, &format!("pub-{id}"), true, None, now);
    let payload = vec![b'x'; size];
    for i in 1..=n {
        publish(core, &mut p, id, &payload, QoS::AtLeastOnce, i, now);
    }
    received(core, &mut sub, now).len()
}

#[test]
fn queued_messages_differ_by_user() {
    let mut core = core_with(MqttConfig {
        max_queued_messages: 3,
        ..MqttConfig::default()
    });
    let backend = Limits {
        max_queued_messages: Some(8),
        ..Limits::default()
    };
    let got = queued_for(
        &mut core,
        "backend",
        login(Some("backend"), Some(backend)),
        10,
        8,
    );
    assert_eq!(got, 8, "the backend's own limit");
    assert_eq!(core.shards["backend"].drops().overflow, 2);
    let got = queued_for(&mut core, "device", login(Some("device"), None), 10, 8);
    assert_eq!(got, 3, "[mqtt]'s limit");
    assert_eq!(core.shards["device"].drops().overflow, 7);
    let got = queued_for(&mut core, "anon", login(None, None), 10, 8);
    assert_eq!(got, 3, "anonymous: [mqtt]'s limit");
}

#[test]
fn queued_bytes_differ_by_user() {
    let mut core = core();
    // Room for two messages of 10,000 bytes (a message costs its payload and a few
    // hundred bytes of bookkeeping), not three.
    let device = Limits {
        max_queued_bytes: Some(25_000),
        ..Limits::default()
    };
    let got = queued_for(
        &mut core,
        "device",
        login(Some("device"), Some(device)),
        6,
        10_000,
    );
    assert_eq!(got, 2, "the device's own byte limit");
    let got = queued_for(
        &mut core,
        "backend",
        login(Some("backend"), None),
        6,
        10_000,
    );
    assert_eq!(got, 6, "[mqtt]'s byte limit (64 MiB)");
}

#[test]
fn the_limits_of_the_last_connect_apply() {
    let mut core = core_with(MqttConfig {
        max_subscriptions_per_client: 1,
        ..MqttConfig::default()
    });
    let now = Instant::now();
    let three = Limits {
        max_subscriptions: Some(3),
        ..Limits::default()
    };
    let mut c = connect_as(
        &mut core,
        Protocol::V5,
        "c",
        Some(600),
        login(Some("u"), Some(three)),
        now,
    )
    .0
    .unwrap();
    assert_eq!(
        subscribe_five(&mut core, &mut c, now),
        [1, 1, 1, 0x97, 0x97]
    );
    // The same user resumes its session without limits of its own (after a restart with
    // another configuration): the subscriptions it holds stay, new ones are refused.
    let mut c = connect_as(
        &mut core,
        Protocol::V5,
        "c",
        Some(600),
        login(Some("u"), None),
        now,
    )
    .0
    .unwrap();
    let more = subscribe(&mut core, &mut c, &[("f", q(QoS::AtLeastOnce))], None, now);
    assert_eq!(more, [0x97]);
    assert_eq!(core.shards["c"].subscription_count(), 3);
}

#[test]
fn the_configuration_example_resolves_per_user() {
    // docs/security.md's example, as `runtime/auth.rs` resolves it at CONNECT.
    let cfg = MqttConfig {
        max_publish_rate: 20,
        max_subscriptions_per_client: 50,
        ..MqttConfig::default()
    };
    let table = LimitsByUser::new(&[UserLimits {
        users: vec!["backend".to_owned(), "ingest-*".to_owned()],
        max_publish_rate: Some(0),
        max_subscriptions_per_client: Some(100_000),
        max_queued_messages: Some(1_000_000),
        ..UserLimits::default()
    }])
    .unwrap();
    let at = |user: Option<&str>| Login {
        limits: table.of(user),
        ..Login::from(user.map(Arc::from))
    };
    assert_eq!(at(Some("ingest-eu")).publish_rates(&cfg), (0, 0));
    assert_eq!(at(Some("backend")).publish_rates(&cfg), (0, 0));
    assert_eq!(at(Some("sensor-1")).publish_rates(&cfg), (20, 0));
    assert_eq!(at(None).publish_rates(&cfg), (20, 0));
    let mut core = core_with(cfg);
    let now = Instant::now();
    let mut ingest = connect_as(
        &mut core,
        Protocol::V5,
        "i",
        None,
        at(Some("ingest-eu")),
        now,
    )
    .0
    .unwrap();
    let filters: Vec<String> = (0..60).map(|i| format!("f/{i}")).collect();
    let many: Vec<(&str, SubOptions)> = filters
        .iter()
        .map(|f| (f.as_str(), q(QoS::AtMostOnce)))
        .collect();
    let codes = subscribe(&mut core, &mut ingest, &many, None, now);
    assert!(codes.iter().all(|&c| c == 0));
    let mut sensor = connect_as(
        &mut core,
        Protocol::V5,
        "s",
        None,
        at(Some("sensor-1")),
        now,
    )
    .0
    .unwrap();
    let codes = subscribe(&mut core, &mut sensor, &many, None, now);
    assert_eq!(codes.iter().filter(|&&c| c == 0x97).count(), 10);
}

#[test]
fn retained_messages_for_a_new_subscription_fill_the_users_own_queue() {
    let mut core = core_with(MqttConfig {
        max_queued_messages: 2,
        ..MqttConfig::default()
    });
    let now = Instant::now();
    for i in 0..6 {
        retain(&mut core, &format!("r/{i}"), now);
    }
    let backend = Limits {
        max_queued_messages: Some(10),
        ..Limits::default()
    };
    // One step queues what the queue has room for: all six within the backend's own
    // limit, two within `[mqtt]`'s for the device; the rest follow as it drains.
    for (id, limits, first) in [("backend", Some(backend), 6), ("device", None, 2)] {
        let mut c = connect_as(
            &mut core,
            Protocol::V5,
            id,
            None,
            login(Some(id), limits),
            now,
        )
        .0
        .unwrap();
        let codes = subscribe(
            &mut core,
            &mut c,
            &[("r/#", q(QoS::AtLeastOnce))],
            None,
            now,
        );
        assert_eq!(codes, [1], "{id}");
        let mut got = 0;
        each_packet(&c.out.split(), c.protocol, |p| {
            got += usize::from(matches!(p, Packet::Publish(_)));
        });
        assert_eq!(got, first, "{id}: retained messages of the first step");
    }
}

#[test]
fn publisher_backpressure_follows_the_subscribers_own_queue_limit() {
    // `[mqtt]` queues 1,000; the slow subscriber's user 100: the publisher is paused at
    // half of the user's limit (50), not of `[mqtt]`'s (500).
    let mut core = core_with(MqttConfig {
        max_queued_messages: 1000,
        max_inflight: 10,
        ..MqttConfig::default()
    });
    let now = Instant::now();
    let own = Limits {
        max_queued_messages: Some(100),
        ..Limits::default()
    };
    let mut s = connect_as(
        &mut core,
        Protocol::V311,
        "slow",
        None,
        login(Some("device"), Some(own)),
        now,
    )
    .0
    .unwrap();
    subscribe(&mut core, &mut s, &[("t", q(QoS::AtMostOnce))], None, now);
    let mut p = connect(&mut core, Protocol::V311, "fast", true, None, now);
    let paused_at = (1..=100).find(|_| {
        publish(&mut core, &mut p, "t", b"x", QoS::AtMostOnce, 0, now);
        core.take_pause().is_some()
    });
    assert_eq!(paused_at, Some(50));
    // Drained below a quarter of its own limit: the episode ends.
    assert_eq!(received(&mut core, &mut s, now).len(), 50);
    assert!(!core.shards.any_congested());
}
