"""Retained messages: a new subscription gets the retained message with RETAIN 1; a live
subscription gets it with RETAIN 0 (3.1.1 always, v5 without Retain As Published); an
empty retained payload deletes it, is still delivered to current subscribers, and a later
subscription gets nothing; a newer retained message replaces the older one."""

import motepaho as mp


def main():
    p = mp.parser(__doc__)
    args = p.parse_args()
    run = mp.Run(args, "retained")
    v = args.version
    topic = f"retained/v{v}/t"

    live = mp.Client(f"ret-live-{v}", v)
    pub = mp.Client(f"ret-pub-{v}", v)
    live.connect(args.port)
    pub.connect(args.port)
    live.subscribe(topic, 1)

    pub.publish_wait(topic, "first", qos=1, retain=True)
    pub.publish_wait(topic, "second", qos=1, retain=True)
    mp.pump([live], lambda: len(live.messages) >= 2, 3.0)
    got = live.take()
    run.eq("live_sub_gets_both", [m.text() for m in got], ["first", "second"])
    run.eq("live_sub_retain_flag_cleared", [m.retain for m in got], [False, False])

    late = mp.Client(f"ret-late-{v}", v)
    late.connect(args.port)
    late.subscribe(topic, 1)
    mp.pump([late], lambda: len(late.messages) >= 1, 3.0)
    mp.settle([late], 0.3)
    got = late.take()
    run.eq("new_sub_gets_latest_retained", [m.text() for m in got], ["second"])
    run.eq("new_sub_retain_flag_set", [m.retain for m in got], [True])
    run.eq("new_sub_qos", [m.qos for m in got], [1])

    # Wildcard subscription also gets the retained message.
    wild = mp.Client(f"ret-wild-{v}", v)
    wild.connect(args.port)
    wild.subscribe(f"retained/v{v}/#", 0)
    mp.pump([wild], lambda: len(wild.messages) >= 1, 3.0)
    got = wild.take()
    run.eq("wildcard_sub_gets_retained", [(m.text(), m.retain, m.qos) for m in got],
           [("second", True, 0)])
    wild.disconnect()

    # Delete with an empty payload: delivered to the live subscriber, not stored.
    pub.publish_wait(topic, b"", qos=1, retain=True)
    mp.pump([live, late], lambda: live.messages and late.messages, 3.0)
    got_live = live.take()
    got_late = late.take()
    run.eq("delete_delivered_to_live_subscribers",
           [(m.payload, m.retain) for m in got_live + got_late],
           [(b"", False), (b"", False)])

    after = mp.Client(f"ret-after-{v}", v)
    after.connect(args.port)
    after.subscribe(topic, 1)
    mp.settle([after], 0.7)
    run.eq("deleted_retained_not_sent", [m.text() for m in after.take()], [])

    # A non-retained publish does not replace the retained message.
    pub.publish_wait(topic, "third", qos=1, retain=True)
    pub.publish_wait(topic, "not-retained", qos=1, retain=False)
    again = mp.Client(f"ret-again-{v}", v)
    again.connect(args.port)
    again.subscribe(topic, 1)
    mp.pump([again], lambda: len(again.messages) >= 1, 3.0)
    mp.settle([again], 0.3)
    run.eq("plain_publish_keeps_retained", [(m.text(), m.retain) for m in again.take()],
           [("third", True)])
    # Clean up so the topic holds nothing.
    pub.publish_wait(topic, b"", qos=1, retain=True)
    for c in (live, pub, late, after, again):
        c.disconnect()
    run.finish()


if __name__ == "__main__":
    main()
