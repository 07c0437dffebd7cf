"""Persistent sessions: a subscriber with Clean Session 0 (3.1.1) / Clean Start 0 plus a
Session Expiry Interval (v5) goes away; QoS 1 and QoS 2 messages published meanwhile
arrive after it reconnects (without subscribing again), in order, with Session Present 1.
QoS 0 messages may or may not be queued. A later Clean Start 1 connect discards it all."""

import motepaho as mp


def main():
    p = mp.parser(__doc__)
    p.add_argument("--count", type=int, default=10)
    args = p.parse_args()
    run = mp.Run(args, "session")
    v = args.version
    cid = f"session-sub-{v}"
    topic1 = f"session/v{v}/q1"
    topic2 = f"session/v{v}/q2"
    n = args.count

    def sub_client(clean):
        return mp.Client(cid, v, clean=clean, session_expiry=None if clean else 60)

    # No earlier session can exist; then the persistent one.
    mp.forget(cid, v, args.port)
    s1 = sub_client(False)
    sp, rc, _ = s1.connect(args.port)
    run.eq("first_connack", (sp, rc), (False, 0))
    run.eq("suback", s1.subscribe([(topic1, 1), (topic2, 2)]), [1, 2])
    s1.disconnect()

    pub = mp.Client(f"session-pub-{v}", v)
    pub.connect(args.port)
    for i in range(n):
        pub.publish(topic1, f"q1-{i}", qos=1)
        pub.publish(topic2, f"q2-{i}", qos=2)
    mp.pump([pub], lambda: len(pub.acked) >= 2 * n, 5.0)
    run.eq("publisher_flows_completed", len(pub.acked), 2 * n)

    s2 = sub_client(False)
    sp, rc, _ = s2.connect(args.port)
    run.eq("resume_connack", (sp, rc), (True, 0))
    mp.pump([s2], lambda: len(s2.messages) >= 2 * n, 5.0)
    mp.settle([s2], 0.5)
    got = s2.take()
    q1 = [(m.text(), m.qos) for m in got if m.topic == topic1]
    q2 = [(m.text(), m.qos) for m in got if m.topic == topic2]
    run.eq("queued_qos1_in_order", q1, [(f"q1-{i}", 1) for i in range(n)])
    run.eq("queued_qos2_in_order", q2, [(f"q2-{i}", 2) for i in range(n)])
    run.eq("nothing_else", len(got), 2 * n)

    # The subscription survived: a live publish arrives too.
    pub.publish_wait(topic1, "live", qos=1)
    mp.pump([s2], lambda: s2.messages, 3.0)
    run.eq("subscription_kept", [m.text() for m in s2.take()], ["live"])
    s2.disconnect()

    # Clean start discards the session: no Session Present, no subscription left.
    s3 = sub_client(True)
    sp, rc, _ = s3.connect(args.port)
    run.eq("clean_connack", (sp, rc), (False, 0))
    pub.publish_wait(topic1, "after-clean", qos=1)
    mp.settle([s3, pub], 0.7)
    run.eq("clean_start_dropped_subscriptions", [m.text() for m in s3.take()], [])
    s3.disconnect()
    pub.disconnect()
    run.finish()


if __name__ == "__main__":
    main()
