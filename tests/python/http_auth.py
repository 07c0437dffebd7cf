"""HTTP Basic credentials are the MQTT user name and password, and the access rules are
MQTT's, on a broker with a password file, `allow_anonymous = false` and rules that let
`--user` read and write `open/#` only (and `--admin` everything).

`--case rules`: without credentials, or with a wrong password, publish, subscribe and
the retained listing answer 401 with `WWW-Authenticate: Basic` and the JSON error body
(health checks stay open); good credentials publish (200) and subscribe; a publish
(QoS 1 and 2, JSON and raw) to a topic the rules deny is 403 and reaches nobody; an SSE
subscription to a denied filter is 403; the retained listing shows only what the user
may read; deleting a retained message the user may not write is 403.
`--case qos0_denied`: a QoS 0 publish to a denied topic is refused with 403 too (HTTP
has a response to carry the refusal, unlike MQTT's QoS 0).
`--case replay_credentials`: a retry with the `Idempotency-Key` of the user's earlier
publish but a wrong password is refused with 401, not given the remembered answer."""

from http_common import Sse, client, mp, parser


def unauthorized(run, name, r):
    run.eq(f"{name}_401", r.status_code, 401, body=r.text)
    run.check(f"{name}_www_authenticate_basic",
              r.headers.get("www-authenticate", "").startswith("Basic"),
              header=r.headers.get("www-authenticate"))
    run.check(f"{name}_error_body",
              r.headers.get("content-type", "").startswith("application/json")
              and isinstance(r.json().get("code"), str), body=r.text)


def forbidden(run, name, r):
    run.eq(f"{name}_403", r.status_code, 403, body=r.text)
    ok = r.headers.get("content-type", "").startswith("application/json")
    run.check(f"{name}_error_body", ok and isinstance(r.json().get("code"), str), body=r.text)


def admin_client(args, cid):
    c = mp.Client(cid, "5")
    c.c.username_pw_set(args.admin, args.admin_password)
    c.connect(args.port)
    if c.connack is None or c.connack[1] != 0:
        raise RuntimeError(f"admin login refused: {c.connack}")
    return c


def rules(run, args):
    anon = client(args)
    wrong = client(args, auth=(args.user, args.password + "-wrong"))
    user = client(args, auth=(args.user, args.password))
    watcher = admin_client(args, "http-auth-watcher")
    run.eq("watcher_suback", watcher.subscribe("#", 1), [1])

    msg = {"topic": "open/a", "payload": "x", "qos": 1}
    unauthorized(run, "anonymous_publish", anon.post("/api/v1/publish", json=msg))
    unauthorized(run, "anonymous_raw_publish", anon.post("/api/v1/publish/open/a", content=b"x"))
    unauthorized(run, "anonymous_subscribe",
                 anon.get("/api/v1/subscribe", params={"filter": "open/#"}))
    unauthorized(run, "anonymous_retained", anon.get("/api/v1/retained"))
    unauthorized(run, "wrong_password_publish", wrong.post("/api/v1/publish", json=msg))
    run.eq("healthz_needs_no_credentials", anon.get("/healthz").status_code, 200)
    mp.settle([watcher], 0.3)
    run.eq("refused_requests_published_nothing", [m.topic for m in watcher.take()], [])

    r = user.post("/api/v1/publish", json=msg)
    run.eq("good_credentials_200", r.status_code, 200, body=r.text)
    r = user.post("/api/v1/publish/open/raw?qos=1", content=b"raw")
    run.eq("good_credentials_raw_200", r.status_code, 200, body=r.text)
    mp.pump([watcher], lambda: len(watcher.messages) >= 2, 3.0)
    run.eq("good_credentials_delivered", [(m.topic, m.text()) for m in watcher.take()],
           [("open/a", "x"), ("open/raw", "raw")])

    for qos in (1, 2):
        forbidden(run, f"denied_topic_q{qos}", user.post(
            "/api/v1/publish", json={"topic": "secret/a", "payload": "s", "qos": qos}))
    forbidden(run, "denied_topic_raw", user.post("/api/v1/publish/secret/a?qos=1", content=b"s"))
    r = user.post("/api/v1/publish/bulk", json=[{"topic": "secret/a", "payload": "s", "qos": 1}])
    run.eq("denied_topic_bulk_item_403", [x.get("status") for x in r.json()], [403], body=r.text)
    mp.settle([watcher], 0.3)
    run.eq("denied_publishes_reach_nobody", [m.topic for m in watcher.take()], [])

    r = user.get("/api/v1/subscribe", params={"filter": "secret/#"})
    forbidden(run, "sse_denied_filter", r)
    run.eq("sse_denied_filter_named", r.json().get("refused"),
           [{"filter": "secret/#", "reason_code": 135}])
    r = user.get("/api/v1/subscribe", params=[("filter", "open/#"), ("filter", "secret/#")])
    run.eq("sse_one_denied_filter_of_two_403", r.status_code, 403, body=r.text)

    stream = Sse(user, {"filter": "open/#"})
    run.eq("sse_allowed_filter_200", stream.status, 200)
    watcher.publish_wait("open/sse", "to-sse", qos=1)
    got = stream.events(1)
    run.eq("sse_allowed_filter_receives", [e["data"].get("payload") for e in got], ["to-sse"])
    stream.close()
    anon_stream = anon.get("/api/v1/subscribe", params={"filter": "open/#"})
    run.eq("sse_anonymous_401", anon_stream.status_code, 401)

    watcher.publish_wait("secret/kept", "s", qos=1, retain=True)
    watcher.publish_wait("open/kept", "o", qos=1, retain=True)
    watcher.take()
    r = user.get("/api/v1/retained")
    run.eq("retained_listing_shows_only_readable",
           [m["topic"] for m in r.json().get("data", [])], ["open/kept"])
    r = user.delete("/api/v1/retained/secret/kept")
    forbidden(run, "delete_denied_retained", r)
    admin = client(args, auth=(args.admin, args.admin_password))
    r = admin.get("/api/v1/retained", params={"filter": "secret/#"})
    run.eq("denied_delete_kept_the_message", [m["topic"] for m in r.json().get("data", [])],
           ["secret/kept"])
    r = user.delete("/api/v1/retained/open/kept")
    run.eq("delete_allowed_retained_204", r.status_code, 204, body=r.text)

    watcher.disconnect()
    for c in (anon, wrong, user, admin):
        c.close()


def qos0_denied(run, args):
    user = client(args, auth=(args.user, args.password))
    watcher = admin_client(args, "http-auth-watcher-q0")
    watcher.subscribe("secret/q0", 1)
    r = user.post("/api/v1/publish", json={"topic": "secret/q0", "payload": "s"})
    forbidden(run, "denied_topic_q0_json", r)
    r = user.post("/api/v1/publish/secret/q0", content=b"s")
    forbidden(run, "denied_topic_q0_raw", r)
    mp.settle([watcher], 0.3)
    run.eq("denied_q0_reaches_nobody", [m.topic for m in watcher.take()], [])
    watcher.disconnect()
    user.close()


def replay_credentials(run, args):
    user = client(args, auth=(args.user, args.password))
    wrong = client(args, auth=(args.user, args.password + "-wrong"))
    msg = {"topic": "open/idem", "payload": "x", "qos": 1}
    key = {"Idempotency-Key": "auth-key-1"}
    r = user.post("/api/v1/publish", json=msg, headers=key)
    run.check("first_publish_accepted", r.status_code in (200, 202), status=r.status_code)
    r = wrong.post("/api/v1/publish", json=msg, headers=key)
    unauthorized(run, "replay_with_wrong_password", r)
    run.eq("replay_with_wrong_password_not_replayed", r.headers.get("idempotent-replayed"), None)
    r = user.post("/api/v1/publish", json=msg, headers=key)
    run.eq("replay_with_right_password_replayed", r.headers.get("idempotent-replayed"), "true")
    user.close()
    wrong.close()


def main():
    p = parser(__doc__)
    p.add_argument("--case", choices=["rules", "qos0_denied", "replay_credentials"], required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--admin", required=True)
    p.add_argument("--admin-password", required=True)
    args = p.parse_args()
    run = mp.Run(args, f"http_auth {args.case}")
    {"rules": rules, "qos0_denied": qos0_denied,
     "replay_credentials": replay_credentials}[args.case](run, args)
    run.finish()


if __name__ == "__main__":
    main()
