"""A plain stream reader in a persistent session (MQTT 5 Session Expiry 3600, 3.1.1
clean session 0) keeps its position: it reads `$stream/s7` (declared with
`default_offset` `earliest`) from the start, acknowledges (paho manual_ack) the first
5 of 10 and disconnects; two more are appended while it is away; reconnecting without
subscribing again it gets offsets 5..11, the 5 it had not acknowledged flagged DUP, the
2 new ones not. One more appended while it is away comes on the next reconnect;
subscribing again without a start then keeps the position (nothing comes, where the
stream's default start would replay everything); MQTT 5: subscribing again with a start
(`stream-offset` 10) moves it."""

import motepaho as mp

STREAM = "$stream/s7"


def uprops(m):
    return {k: v for (k, v) in m.props.get("UserProperty", [])}


def offset(m):
    v = uprops(m).get("mote-offset")
    return int(v) if v is not None else None


def main():
    p = mp.parser(__doc__)
    args = p.parse_args()
    run = mp.Run(args, "streams_persistent")
    port = args.port
    v = args.version
    v5 = v == "5"
    rid = f"s7-reader-{v}"
    mp.forget(rid, v, port)

    # The stream's default start is `earliest`: a reader naming no start replays all.
    admin = mp.Client(f"s7-admin-{v}", "5")
    reasons = {}

    def on_publish(c, u, mid, rc, props):
        admin.acked.add(mid)
        reasons[mid] = rc.value

    admin.c.on_publish = on_publish
    admin.connect(port)
    mid = admin.publish_wait("$admin/stream/s7", '{"default_offset": "earliest"}', qos=1)
    run.eq("declared", reasons.get(mid), 0)
    admin.disconnect()

    pub = mp.Client(f"s7-pub-{v}", v)
    pub.connect(port)
    for i in range(10):
        pub.publish_wait(STREAM, f"m{i}", qos=1)

    def reader():
        r = mp.Client(rid, v, clean=False, session_expiry=3600 if v5 else None,
                      manual_ack=True)
        r.connect(port)
        return r

    def read(r, n, quiet=0.5):
        mp.pump([r], lambda: len(r.messages) >= n, 5.0)
        mp.settle([r], quiet)
        return r.take()

    def ids(msgs):
        """(payload, offset) of each message; the offset only in MQTT 5."""
        return [(m.text(), offset(m)) if v5 else m.text() for m in msgs]

    def want(nums):
        return [(f"m{i}", i) if v5 else f"m{i}" for i in nums]

    r = reader()
    run.eq("first_connect_no_session", r.connack[0], False)
    if v5:
        props = mp.Properties(mp.PacketTypes.SUBSCRIBE)
        props.UserProperty = ("stream-offset", "earliest")
        codes = r.subscribe(STREAM, 1, props=props)
    else:
        # No user properties in 3.1.1, and no start in the filter (a start there would
        # move the position on every SUBSCRIBE): the stream's default, `earliest`.
        codes = r.subscribe(STREAM, 1)
    run.eq("suback", codes, [1])
    got = read(r, 10)
    run.eq("first_read_from_earliest", ids(got), want(range(10)))
    for m in got[:5]:
        r.c.ack(m.mid, m.qos)
    mp.settle([r], 0.3)
    r.disconnect()

    for i in (10, 11):
        pub.publish_wait(STREAM, f"m{i}", qos=1)

    r = reader()
    run.eq("session_present", r.connack[0], True)
    got = read(r, 7)
    run.eq("resumes_after_the_acknowledged", ids(got), want(range(5, 12)))
    run.eq("unacknowledged_resent_with_dup", [m.dup for m in got[:5]], [True] * 5)
    run.eq("new_appends_not_dup", [m.dup for m in got[5:]], [False] * 2)
    for m in got:
        r.c.ack(m.mid, m.qos)
    mp.settle([r], 0.3)
    r.disconnect()

    pub.publish_wait(STREAM, "m12", qos=1)
    r = reader()
    run.eq("session_present_again", r.connack[0], True)
    got = read(r, 1)
    run.eq("appended_while_away", ids(got), want([12]))
    run.eq("appended_while_away_not_dup", [m.dup for m in got], [False])
    for m in got:
        r.c.ack(m.mid, m.qos)
    mp.settle([r], 0.3)
    # Subscribing again without a start keeps the position (past m12): nothing comes,
    # where going back to the stream's default (`earliest`) would replay all 13.
    run.eq("suback_again", r.subscribe(STREAM, 1), [1])
    mp.settle([r], 0.8)
    run.eq("resubscribe_without_start_keeps_position", ids(r.take()), [])
    if v5:
        props = mp.Properties(mp.PacketTypes.SUBSCRIBE)
        props.UserProperty = ("stream-offset", "10")
        run.eq("suback_with_start", r.subscribe(STREAM, 1, props=props), [1])
        got = read(r, 3)
        run.eq("resubscribe_with_start_moves_position", ids(got), want([10, 11, 12]))
        for m in got:
            r.c.ack(m.mid, m.qos)
    mp.settle([r], 0.3)
    r.disconnect()
    mp.forget(rid, v, port)
    pub.disconnect()
    run.finish()


if __name__ == "__main__":
    main()
