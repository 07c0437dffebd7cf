//! What a login hands the core (`proto/login.rs`, docs/security.md): a token's rules
//! held to with or without a rules file, decided again when a session resumes under
//! other rules; the connection closed by a timer when its credential expires; client ids
//! bound to users; a reload that leaves token users alone.

use super::*;
use crate::proto::acl::{Acl, Grant};
use crate::proto::login::{ClientIds, Login};

/// A token's login: `user`, with `grant` (read, write, both), expiring at `expires`.
fn token(user: &str, grant: Option<(&[&str], &[&str], &[&str])>, expires: Instant) -> Login {
    Login {
        user: Some(Arc::from(user)),
        grant: grant.map(|(r, w, b)| Arc::new(Grant::new(r, w, b).unwrap())),
        expires: Some(expires),
        limits: None,
    }
}

/// The CONNACK's code in `bytes`.
fn connack_code(bytes: &[u8], protocol: Protocol) -> u8 {
    let mut code = None;
    each_packet(bytes, protocol, |p| {
        if let Packet::ConnAck(a) = p {
            code = Some(a.code);
        }
    });
    code.unwrap()
}

fn topics(got: &[Got]) -> Vec<&str> {
    got.iter().map(|g| g.0.as_str()).collect()
}

#[test]
fn a_grant_is_held_to_without_a_rules_file() {
    let t0 = Instant::now();
    let mut core = core();
    let far = t0 + Duration::from_secs(3600);
    let grant: (&[&str], &[&str], &[&str]) = (&["cmd/%u/#"], &["sensors/%c/#"], &[]);
    let (dev, bytes) = connect_as(
        &mut core,
        Protocol::V5,
        "c1",
        None,
        token("dev1", Some(grant), far),
        t0,
    );
    assert_eq!(connack_code(&bytes, Protocol::V5), 0);
    let mut dev = dev.unwrap();
    let codes = subscribe(
        &mut core,
        &mut dev,
        &[
            ("cmd/dev1/#", q(QoS::AtLeastOnce)),
            ("other/#", q(QoS::AtLeastOnce)),
            ("#", q(QoS::AtMostOnce)),
        ],
        None,
        t0,
    );
    assert_eq!(
        codes,
        vec![1, reason::NOT_AUTHORIZED, reason::NOT_AUTHORIZED]
    );
    // A token without rules, like any other client, has what the (absent) file gives.
    let mut free = connect_as(
        &mut core,
        Protocol::V5,
        "c2",
        None,
        token("dev2", None, far),
        t0,
    )
    .0
    .unwrap();
    assert_eq!(
        subscribe(
            &mut core,
            &mut free,
            &[("#", q(QoS::AtLeastOnce))],
            None,
            t0
        ),
        vec![1]
    );
    assert_eq!(
        puback(&mut core, &mut dev, "sensors/c1/t", 1, t0).unwrap(),
        0
    );
    assert_eq!(
        puback(&mut core, &mut dev, "sensors/c2/t", 2, t0).unwrap(),
        reason::NOT_AUTHORIZED
    );
    assert_eq!(
        puback(&mut core, &mut dev, "cmd/dev1/x", 3, t0).unwrap(),
        reason::NOT_AUTHORIZED
    );
    assert_eq!(
        topics(&received(&mut core, &mut free, t0)),
        vec!["sensors/c1/t"]
    );
    let mut other = connect_as(&mut core, Protocol::V5, "c3", None, Login::default(), t0)
        .0
        .unwrap();
    assert_eq!(
        puback(&mut core, &mut other, "cmd/dev1/go", 1, t0).unwrap(),
        0
    );
    assert_eq!(
        topics(&received(&mut core, &mut dev, t0)),
        vec!["cmd/dev1/go"]
    );
}

#[test]
fn the_connection_closes_when_its_credential_expires() {
    let t0 = Instant::now();
    let mut core = core();
    let at = t0 + Duration::from_secs(10);
    let (c, _) = connect_as(
        &mut core,
        Protocol::V5,
        "c1",
        Some(60),
        token("dev1", None, at),
        t0,
    );
    let c = c.unwrap();
    assert!(
        core.poll_timeout().is_some_and(|t| t <= at),
        "no timer for the expiry"
    );
    let mut fx = Effects::default();
    core.handle_timeout(at - Duration::from_millis(1), &mut fx);
    assert_eq!(c.kick.get(), 0, "closed before its token expired");
    core.handle_timeout(at, &mut fx);
    assert_eq!(c.kick.get(), reason::MAXIMUM_CONNECT_TIME);
    assert_eq!(fx.wake.len(), 1, "its connection is woken to close");

    // A connection that ended, or was taken over by a login without an expiry, is not
    // closed by the old deadline.
    let (old, _) = connect_as(
        &mut core,
        Protocol::V311,
        "c2",
        None,
        token("dev2", None, at),
        t0,
    );
    let old = old.unwrap();
    let password = Login::from(Some(Arc::from("dev2")));
    let (new, _) = connect_as(&mut core, Protocol::V311, "c2", None, password, t0);
    assert_eq!(old.kick.get(), reason::SESSION_TAKEN_OVER);
    let new = new.unwrap();
    let mut fx = Effects::default();
    core.handle_timeout(at + Duration::from_secs(1), &mut fx);
    assert_eq!(new.kick.get(), 0);
    let gone = connect_as(
        &mut core,
        Protocol::V5,
        "c3",
        Some(60),
        token("dev3", None, at),
        t0,
    )
    .0
    .unwrap();
    core.disconnected(
        &gone.id,
        gone.conn,
        End::Normal { will: false },
        t0,
        &mut Effects::default(),
    );
    let (back, _) = connect_as(
        &mut core,
        Protocol::V5,
        "c3",
        Some(60),
        Login::from(Some(Arc::from("dev3"))),
        t0,
    );
    let back = back.unwrap();
    core.handle_timeout(at + Duration::from_secs(2), &mut Effects::default());
    assert_eq!(back.kick.get(), 0);
}

#[test]
fn client_ids_are_bound_to_their_users() {
    let t0 = Instant::now();
    let mut core = core();
    let ids = ClientIds::parse(&["%u-*".to_owned()]).unwrap();
    let acl = Acl::allow_all(&[]).with_client_ids(Some(ids));
    core.set_acl(Arc::new(acl), &|_| false, t0, &mut Effects::default());
    let as_user = |u: &str| Login::from(Some(Arc::from(u)));
    let (bob, bytes) = connect_as(
        &mut core,
        Protocol::V5,
        "bob-1",
        Some(60),
        as_user("bob"),
        t0,
    );
    assert_eq!(connack_code(&bytes, Protocol::V5), 0);
    let bob = bob.unwrap();
    for (protocol, want) in [
        (Protocol::V5, reason::CLIENT_IDENTIFIER_NOT_VALID),
        (Protocol::V311, reason::v3::IDENTIFIER_REJECTED),
    ] {
        let (none, bytes) =
            connect_as(&mut core, protocol, "bob-1", Some(60), as_user("alice"), t0);
        assert!(none.is_none());
        assert_eq!(connack_code(&bytes, protocol), want);
        let (none, bytes) =
            connect_as(&mut core, protocol, "bob-1", Some(60), Login::default(), t0);
        assert!(none.is_none());
        assert_eq!(connack_code(&bytes, protocol), want);
    }
    // Bob's connection and session are untouched.
    assert_eq!(bob.kick.get(), 0);
    assert!(core.shards.get("bob-1").is_some_and(|s| s.online()));
    let (alice, bytes) = connect_as(
        &mut core,
        Protocol::V311,
        "alice-1",
        None,
        as_user("alice"),
        t0,
    );
    assert_eq!(connack_code(&bytes, Protocol::V311), 0);
    assert!(alice.is_some());
}

#[test]
fn a_resumed_session_is_decided_under_its_new_grant() {
    let t0 = Instant::now();
    let mut core = core();
    let far = t0 + Duration::from_secs(3600);
    let wide: (&[&str], &[&str], &[&str]) = (&[], &[], &["a/#", "b/#"]);
    let (dev, _) = connect_as(
        &mut core,
        Protocol::V5,
        "d",
        Some(600),
        token("dev", Some(wide), far),
        t0,
    );
    let mut dev = dev.unwrap();
    let codes = subscribe(
        &mut core,
        &mut dev,
        &[("a/#", q(QoS::AtLeastOnce)), ("b/#", q(QoS::AtLeastOnce))],
        None,
        t0,
    );
    assert_eq!(codes, vec![1, 1]);
    core.disconnected(
        &dev.id,
        dev.conn,
        End::Abnormal,
        t0,
        &mut Effects::default(),
    );
    // The next token gives only a/#: b/# goes before anything is delivered.
    let narrow: (&[&str], &[&str], &[&str]) = (&[], &[], &["a/#"]);
    let (dev, bytes) = connect_as(
        &mut core,
        Protocol::V5,
        "d",
        Some(600),
        token("dev", Some(narrow), far),
        t0,
    );
    assert_eq!(bytes[2], 1, "session present");
    let mut dev = dev.unwrap();
    let mut pubr = connect_as(&mut core, Protocol::V5, "p", None, Login::default(), t0)
        .0
        .unwrap();
    publish(&mut core, &mut pubr, "b/x", b"1", QoS::AtLeastOnce, 1, t0);
    publish(&mut core, &mut pubr, "a/x", b"2", QoS::AtLeastOnce, 2, t0);
    assert_eq!(topics(&received(&mut core, &mut dev, t0)), vec!["a/x"]);
    assert_eq!(core.shards.get("d").unwrap().subscriptions().count(), 1);
}

#[test]
fn a_reload_leaves_token_users_connected() {
    let t0 = Instant::now();
    let mut core = core();
    let far = t0 + Duration::from_secs(3600);
    let (tok, _) = connect_as(
        &mut core,
        Protocol::V5,
        "t",
        None,
        token("dev", None, far),
        t0,
    );
    let (pw, _) = connect_as(
        &mut core,
        Protocol::V5,
        "p",
        None,
        Login::from(Some(Arc::from("dev"))),
        t0,
    );
    let applied = core.set_acl(
        Arc::new(Acl::allow_all(&[])),
        &|_| true,
        t0,
        &mut Effects::default(),
    );
    assert_eq!(applied.disconnected, 1);
    assert_eq!(tok.unwrap().kick.get(), 0);
    assert_eq!(pw.unwrap().kick.get(), reason::NOT_AUTHORIZED);
}
