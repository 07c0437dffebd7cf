//! The access rules in the core (docs/security.md): refused subscriptions and
//! publishes, per-message checks, wills, retained messages, session ownership and a new
//! policy applied to the live state. The user is what the runtime authenticated: here
//! the CONNECT's user name, as without a password file.

use super::*;

const RULES: &str = "\
user alice
readwrite a/#
deny read secret/#
read #
client dev-9
write dev/%c/#
everyone
readwrite pub/#
";

fn core_with(rules: &str) -> Core {
    let mut core = core();
    let acl = acl::Acl::parse(rules, &[]).unwrap();
    let mut fx = Effects::default();
    core.set_acl(Arc::new(acl), &|_| false, Instant::now(), &mut fx);
    core
}

#[allow(clippy::too_many_arguments)]
fn login(
    core: &mut Core,
    protocol: Protocol,
    id: &str,
    user: Option<&str>,
    clean: bool,
    expiry: Option<u32>,
    will: Option<Will<'_>>,
    now: Instant,
) -> (Option<Client>, Vec<u8>) {
    let props = PropValues {
        session_expiry_interval: expiry,
        ..PropValues::default()
    };
    let mut c = connect_packet(protocol, id, clean, Properties::Values(&props));
    c.username = user;
    c.will = will;
    connect_with(core, &c, now)
}

fn user(core: &mut Core, protocol: Protocol, id: &str, name: Option<&str>) -> Client {
    login(core, protocol, id, name, true, None, None, Instant::now())
        .0
        .unwrap()
}

fn topics(got: &[Got]) -> Vec<&str> {
    got.iter().map(|g| g.0.as_str()).collect()
}

#[test]
fn subscriptions_are_refused_per_rule_in_both_versions() {
    let t0 = Instant::now();
    let mut core = core_with(RULES);
    for protocol in [Protocol::V311, Protocol::V5] {
        let mut a = user(&mut core, protocol, "a1", Some("alice"));
        let codes = subscribe(
            &mut core,
            &mut a,
            &[
                ("a/#", q(QoS::AtLeastOnce)),
                ("secret/x", q(QoS::AtLeastOnce)),
                ("$SYS/#", q(QoS::AtMostOnce)),
            ],
            None,
            t0,
        );
        let no = if protocol.is_v5() { 0x87 } else { 0x80 };
        assert_eq!(codes, [1, no, no], "{protocol:?}");
        // Anonymous: only the rules for everyone.
        let mut anon = user(&mut core, protocol, "n1", None);
        let codes = subscribe(
            &mut core,
            &mut anon,
            &[("pub/+", q(QoS::AtMostOnce)), ("a/b", q(QoS::AtMostOnce))],
            None,
            t0,
        );
        assert_eq!(codes, [0, no]);
    }
    assert_eq!(core.stats.subscribe_denied, 6);
}

#[test]
fn a_partly_allowed_wildcard_gets_only_what_its_user_may_read() {
    let t0 = Instant::now();
    let mut core = core_with(RULES);
    let mut a = user(&mut core, Protocol::V5, "a1", Some("alice"));
    assert_eq!(
        subscribe(&mut core, &mut a, &[("#", q(QoS::AtMostOnce))], None, t0),
        [0]
    );
    let mut p = user(&mut core, Protocol::V5, "dev-9", Some("alice"));
    for t in ["a/1", "secret/x", "pub/y"] {
        publish(&mut core, &mut p, t, b"m", QoS::AtMostOnce, 0, t0);
    }
    let got = received(&mut core, &mut a, t0);
    assert_eq!(topics(&got), ["a/1", "pub/y"]);
}

#[test]
fn refused_publishes_are_not_routed_and_v5_is_told() {
    let t0 = Instant::now();
    let mut core = core_with(RULES);
    let mut reader = user(&mut core, Protocol::V5, "r", Some("alice"));
    subscribe(
        &mut core,
        &mut reader,
        &[("#", q(QoS::AtLeastOnce))],
        None,
        t0,
    );
    // dev-9's client rules let it write dev/dev-9/...; alice's then let it write a/#.
    let mut v5 = user(&mut core, Protocol::V5, "dev-9", Some("bob"));
    assert_eq!(puback(&mut core, &mut v5, "dev/dev-9/t", 1, t0), Some(0));
    assert_eq!(puback(&mut core, &mut v5, "dev/other/t", 2, t0), Some(0x87));
    assert_eq!(puback(&mut core, &mut v5, "a/x", 3, t0), Some(0x87));
    let mut v3 = user(&mut core, Protocol::V311, "n3", None);
    // 3.1.1 cannot be told: acknowledged, not routed.
    assert_eq!(puback(&mut core, &mut v3, "q/x", 1, t0), Some(0));
    let got = received(&mut core, &mut reader, t0);
    assert_eq!(topics(&got), ["dev/dev-9/t"]);
    assert_eq!(core.stats.publish_denied, 3);
}

#[test]
fn a_will_to_a_topic_its_user_may_not_write_is_not_published() {
    let t0 = Instant::now();
    let mut core = core_with(RULES);
    let mut reader = user(&mut core, Protocol::V5, "r", Some("alice"));
    subscribe(
        &mut core,
        &mut reader,
        &[("#", q(QoS::AtMostOnce))],
        None,
        t0,
    );
    for (id, name, topic) in [("w1", Some("alice"), "a/will"), ("w2", None, "a/will2")] {
        let will = Will {
            topic,
            payload: b"gone",
            qos: QoS::AtMostOnce,
            retain: false,
            properties: Properties::default(),
        };
        let (c, _) = login(
            &mut core,
            Protocol::V5,
            id,
            name,
            true,
            None,
            Some(will),
            t0,
        );
        let c = c.unwrap();
        let mut fx = Effects::default();
        core.disconnected(&c.id, c.conn, End::Abnormal, t0, &mut fx);
    }
    // alice may write a/#; anonymous may not.
    assert_eq!(topics(&received(&mut core, &mut reader, t0)), ["a/will"]);
}

#[test]
fn retained_messages_a_subscriber_may_not_read_are_not_sent() {
    let t0 = Instant::now();
    let mut core = core_with("readwrite #\nuser eve\ndeny read a/private\nread #\n");
    let mut p = user(&mut core, Protocol::V5, "p", Some("root"));
    for t in ["a/public", "a/private"] {
        let msg = Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: true,
            topic: t,
            packet_id: 0,
            properties: Properties::default(),
            payload: b"r",
        });
        send(&mut core, &mut p, &msg, t0).unwrap();
    }
    let mut eve = user(&mut core, Protocol::V5, "e", Some("eve"));
    subscribe(
        &mut core,
        &mut eve,
        &[("a/+", q(QoS::AtMostOnce))],
        None,
        t0,
    );
    assert_eq!(topics(&received(&mut core, &mut eve, t0)), ["a/public"]);
    let mut root = user(&mut core, Protocol::V5, "r2", Some("root"));
    subscribe(
        &mut core,
        &mut root,
        &[("a/+", q(QoS::AtMostOnce))],
        None,
        t0,
    );
    let mut got = topics(&received(&mut core, &mut root, t0))
        .into_iter()
        .map(str::to_owned)
        .collect::<Vec<_>>();
    got.sort();
    assert_eq!(got, ["a/private", "a/public"]);
}

#[test]
fn another_user_does_not_resume_a_session() {
    let t0 = Instant::now();
    let mut core = core_with("readwrite #\n");
    let (alice, _) = login(
        &mut core,
        Protocol::V5,
        "shared-id",
        Some("alice"),
        true,
        Some(3600),
        None,
        t0,
    );
    let mut alice = alice.unwrap();
    subscribe(
        &mut core,
        &mut alice,
        &[("t", q(QoS::AtLeastOnce))],
        None,
        t0,
    );
    let mut fx = Effects::default();
    core.disconnected(&alice.id, alice.conn, End::Abnormal, t0, &mut fx);
    let mut p = user(&mut core, Protocol::V5, "p", Some("root"));
    publish(
        &mut core,
        &mut p,
        "t",
        b"for alice",
        QoS::AtLeastOnce,
        1,
        t0,
    );
    // bob with alice's client id and clean start 0: a new session, nothing queued.
    let (bob, bytes) = login(
        &mut core,
        Protocol::V5,
        "shared-id",
        Some("bob"),
        false,
        Some(3600),
        None,
        t0,
    );
    let mut bob = bob.unwrap();
    let mut present = None;
    each_packet(&bytes, Protocol::V5, |p| {
        if let Packet::ConnAck(a) = p {
            present = Some(a.session_present);
        }
    });
    assert_eq!(present, Some(false));
    assert!(received(&mut core, &mut bob, t0).is_empty());
    // alice herself would have resumed it: shown by a second pair.
    let (a2, _) = login(
        &mut core,
        Protocol::V5,
        "own",
        Some("alice"),
        true,
        Some(60),
        None,
        t0,
    );
    let a2 = a2.unwrap();
    core.disconnected(&a2.id, a2.conn, End::Abnormal, t0, &mut fx);
    let (again, bytes) = login(
        &mut core,
        Protocol::V5,
        "own",
        Some("alice"),
        false,
        Some(60),
        None,
        t0,
    );
    assert!(again.is_some());
    each_packet(&bytes, Protocol::V5, |p| {
        if let Packet::ConnAck(a) = p {
            present = Some(a.session_present);
        }
    });
    assert_eq!(present, Some(true));
}

#[test]
fn a_new_policy_removes_refused_subscriptions_and_disconnects_removed_users() {
    let t0 = Instant::now();
    let mut core = core_with("readwrite #\n");
    let mut a = user(&mut core, Protocol::V5, "a", Some("alice"));
    let mut b = user(&mut core, Protocol::V5, "b", Some("bob"));
    subscribe(
        &mut core,
        &mut a,
        &[("x/#", q(QoS::AtMostOnce)), ("y", q(QoS::AtMostOnce))],
        None,
        t0,
    );
    subscribe(&mut core, &mut b, &[("#", q(QoS::AtMostOnce))], None, t0);
    let rules = "user alice\nread y\nuser bob\ndeny read x/secret\nreadwrite #\n";
    let acl = acl::Acl::parse(rules, &[]).unwrap();
    let mut fx = Effects::default();
    let applied = core.set_acl(Arc::new(acl), &|u| u == "carol", t0, &mut fx);
    assert_eq!(applied.removed, 1, "alice's x/# goes");
    assert_eq!(applied.checked, 1, "bob's # is checked from now on");
    assert_eq!(applied.disconnected, 0);
    let mut p = user(&mut core, Protocol::V5, "p", Some("bob"));
    for t in ["x/1", "x/secret", "y"] {
        publish(&mut core, &mut p, t, b"m", QoS::AtMostOnce, 0, t0);
    }
    assert_eq!(topics(&received(&mut core, &mut a, t0)), ["y"]);
    assert_eq!(topics(&received(&mut core, &mut b, t0)), ["x/1", "y"]);
    // bob is removed from the users: his connection is told to close with 0x87.
    let acl = acl::Acl::parse(rules, &[]).unwrap();
    let applied = core.set_acl(Arc::new(acl), &|u| u == "bob", t0, &mut fx);
    assert_eq!(applied.disconnected, 2, "both of bob's connections");
    assert_eq!(b.kick.get(), reason::NOT_AUTHORIZED);
    assert_eq!(a.kick.get(), 0);
}

#[test]
fn the_reserved_namespaces_follow_the_rules() {
    // `$admin/` (queue and stream declarations, redrive), `$stream/` (readers and
    // appends) and `$queue/` are topics like any other to the rules: only a rule naming
    // them opens them (`#` does not, as for `$SYS/`).
    let rules = "\
user ops
readwrite $admin/#
readwrite $stream/#
readwrite $queue/#
everyone
readwrite #
";
    let t0 = Instant::now();
    let mut core = core_with(rules);
    let mut dev = user(&mut core, Protocol::V5, "dev", Some("dev"));
    let mut ops = user(&mut core, Protocol::V5, "ops", Some("ops"));
    for (i, topic) in ["$admin/queue/jobs", "$admin/stream/orders"]
        .into_iter()
        .enumerate()
    {
        let id = i as u16 + 1;
        let dev_code = puback_of(&mut core, &mut dev, topic, b"{}", id, t0);
        assert_eq!(dev_code, Some(0x87), "dev {topic}");
        let ops_code = puback_of(&mut core, &mut ops, topic, b"{}", id, t0);
        assert_eq!(ops_code, Some(0), "ops {topic}");
    }
    assert_eq!(
        puback(&mut core, &mut dev, "$stream/orders", 3, t0),
        Some(0x87)
    );
    assert_eq!(
        puback(&mut core, &mut dev, "$queue/jobs", 4, t0),
        Some(0x87)
    );
    assert_eq!(
        puback(&mut core, &mut ops, "$stream/orders", 3, t0),
        Some(0)
    );
    assert_eq!(puback(&mut core, &mut ops, "$queue/jobs", 4, t0), Some(0));
    let filters = [
        ("$stream/orders/@earliest", q(QoS::AtLeastOnce)),
        ("$queue/jobs", q(QoS::AtLeastOnce)),
        ("$admin/#", q(QoS::AtMostOnce)),
    ];
    let codes = subscribe(&mut core, &mut dev, &filters, None, t0);
    assert_eq!(codes, [0x87, 0x87, 0x87]);
    let codes = subscribe(&mut core, &mut ops, &filters, None, t0);
    assert!(codes.iter().all(|c| *c < 0x80), "ops: {codes:02x?}");
    assert_eq!(core.stats.subscribe_denied, 3);
    assert_eq!(core.stats.publish_denied, 4);
}
