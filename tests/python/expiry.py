"""v5 Message Expiry towards an offline subscriber: of the QoS 1 messages queued for a
persistent session, those whose Message Expiry Interval ran out while it was away are
not delivered; the others arrive with the remaining interval (original minus time
waited), and messages without an expiry arrive without one. Retained messages expire
the same way."""

import time

import motepaho as mp


def main():
    p = mp.parser(__doc__, versions=False)
    p.add_argument("--wait", type=float, default=2.5)
    args = p.parse_args()
    run = mp.Run(args, "expiry")
    cid = "expiry-sub"
    topic = "expiry/t"
    mp.forget(cid, "5", args.port)
    s1 = mp.Client(cid, "5", clean=False, session_expiry=60)
    s1.connect(args.port)
    s1.subscribe(topic, 1)
    s1.disconnect()

    pub = mp.Client("expiry-pub", "5")
    pub.connect(args.port)

    def expiring(secs):
        pr = mp.Properties(mp.PacketTypes.PUBLISH)
        pr.MessageExpiryInterval = secs
        return pr

    pub.publish_wait(topic, "short-1", qos=1, props=expiring(1))
    pub.publish_wait(topic, "long-60", qos=1, props=expiring(60))
    pub.publish_wait(topic, "none", qos=1)
    pub.publish_wait(topic, "short-2", qos=2, props=expiring(2))
    t_pub = time.monotonic()
    mp.settle([pub], args.wait)
    waited = time.monotonic() - t_pub

    s2 = mp.Client(cid, "5", clean=False, session_expiry=60)
    sp, rc, _ = s2.connect(args.port)
    run.eq("resume_connack", (sp, rc), (True, 0))
    mp.pump([s2], lambda: len(s2.messages) >= 2, 3.0)
    mp.settle([s2], 0.5)
    got = s2.take()
    run.eq("only_unexpired_delivered", [m.text() for m in got], ["long-60", "none"])
    by = {m.text(): m for m in got}
    if "long-60" in by:
        left = by["long-60"].props.get("MessageExpiryInterval")
        # Remaining = 60 - waited, which the broker may round up to whole seconds.
        run.check("remaining_interval_forwarded",
                  left is not None and 60 - waited - 1 <= left <= 60 - int(waited),
                  got=left, waited=waited)
    if "none" in by:
        run.eq("no_expiry_stays_none", by["none"].props.get("MessageExpiryInterval"), None)

    # A live subscriber gets an unexpired message immediately, with the interval.
    pub.publish_wait(topic, "live", qos=1, props=expiring(30))
    mp.pump([s2], lambda: s2.messages, 3.0)
    got = s2.take()
    run.eq("live_delivery", [m.text() for m in got], ["live"])
    if got:
        left = got[0].props.get("MessageExpiryInterval")
        run.check("live_interval", left in (29, 30), got=left)
    s2.disconnect()
    mp.forget(cid, "5", args.port)

    # A retained message expires too: not sent on subscribe once its interval ran out,
    # and sent with the remaining interval before that.
    pub.publish_wait("expiry/retained/short", "short", qos=1, retain=True, props=expiring(1))
    pub.publish_wait("expiry/retained/long", "long", qos=1, retain=True, props=expiring(60))
    mp.settle([pub], 2.2)
    late = mp.Client("expiry-late", "5")
    late.connect(args.port)
    late.subscribe("expiry/retained/#", 1)
    mp.pump([late], lambda: late.messages, 3.0)
    mp.settle([late], 0.4)
    got = late.take()
    run.eq("expired_retained_not_sent", [(m.text(), m.retain) for m in got], [("long", True)])
    if got:
        left = got[0].props.get("MessageExpiryInterval")
        run.check("retained_remaining_interval", left is not None and 56 <= left <= 58, got=left)
    pub.publish_wait("expiry/retained/long", b"", qos=1, retain=True)
    late.disconnect()
    pub.disconnect()
    run.finish()


if __name__ == "__main__":
    main()
