"""UNSUBSCRIBE: after UNSUBACK nothing more arrives on that filter while other
subscriptions keep working; UNSUBACK comes even when nothing was subscribed (v5: reason
0x11 No subscription existed, 0x00 for a removed one, in filter order)."""

import motepaho as mp


def main():
    p = mp.parser(__doc__)
    args = p.parse_args()
    run = mp.Run(args, "unsubscribe")
    v = args.version
    c = mp.Client(f"unsub-{v}", v)
    pub = mp.Client(f"unsub-pub-{v}", v)
    c.connect(args.port)
    pub.connect(args.port)
    c.subscribe([(f"unsub/v{v}/a", 1), (f"unsub/v{v}/b", 1), (f"unsub/v{v}/#", 0)])
    pub.publish_wait(f"unsub/v{v}/a", "a1", qos=1)
    mp.pump([c], lambda: c.messages, 3.0)
    mp.settle([c], 0.2)
    run.eq("before", [(m.text(), m.qos) for m in c.take()], [("a1", 1)])

    codes = c.unsubscribe([f"unsub/v{v}/a", f"unsub/v{v}/none", f"unsub/v{v}/#"])
    if v == "5":
        run.eq("unsuback_codes", codes, [0x00, 0x11, 0x00])
    else:
        run.eq("unsuback_received", codes is not None, True)
    pub.publish_wait(f"unsub/v{v}/a", "a2", qos=1)
    pub.publish_wait(f"unsub/v{v}/b", "b1", qos=1)
    mp.pump([c], lambda: c.messages, 3.0)
    mp.settle([c], 0.5)
    run.eq("after", [m.text() for m in c.take()], ["b1"])

    codes = c.unsubscribe(f"unsub/v{v}/never")
    if v == "5":
        run.eq("unsuback_nothing_subscribed", codes, [0x11])
    else:
        run.eq("unsuback_nothing_subscribed", codes is not None, True)
    c.unsubscribe(f"unsub/v{v}/b")
    pub.publish_wait(f"unsub/v{v}/b", "b2", qos=1)
    mp.settle([c], 0.5)
    run.eq("all_gone", [m.text() for m in c.take()], [])
    run.eq("still_connected", c.closed, False)
    c.disconnect()
    pub.disconnect()
    run.finish()


if __name__ == "__main__":
    main()
