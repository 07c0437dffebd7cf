"""v5 subscription options, one case per run:
  subid   overlapping subscriptions with Subscription Identifiers: one delivery at the
          highest granted QoS carrying every matching identifier; a subscription without
          an identifier adds none; identifiers survive a re-subscribe with a new one.
  nolocal No Local: a client does not get its own publications on that subscription,
          but gets other clients' and its own on subscriptions without No Local.
  rap     Retain As Published: forwarded RETAIN stays 1 only with the option.
  rh      Retain Handling 0 (always), 1 (only for a new subscription), 2 (never).
"""

import motepaho as mp


def sub_props(ident):
    p = mp.Properties(mp.PacketTypes.SUBSCRIBE)
    p.SubscriptionIdentifier = ident
    return p


def case_subid(run, port):
    c = mp.Client("subid-sub", "5")
    pub = mp.Client("subid-pub", "5")
    c.connect(port)
    pub.connect(port)
    run.eq("suback_1", c.subscribe("sid/+/x", 0, props=sub_props(1)), [0])
    run.eq("suback_2", c.subscribe("sid/#", 2, props=sub_props(2)), [2])
    run.eq("suback_3", c.subscribe("sid/a/+", 1, props=sub_props(268435455)), [1])
    run.eq("suback_noid", c.subscribe("sid/a/x", 0), [0])
    run.eq("suback_other", c.subscribe("other/#", 1, props=sub_props(7)), [1])

    pub.publish_wait("sid/a/x", "all-four", qos=2)
    mp.pump([c], lambda: c.messages, 3.0)
    mp.settle([c], 0.4)
    got = c.take()
    run.eq("one_delivery_for_overlap", [m.text() for m in got], ["all-four"])
    if got:
        run.eq("highest_qos", got[0].qos, 2)
        run.eq("all_identifiers", sorted(got[0].props.get("SubscriptionIdentifier", [])),
               [1, 2, 268435455])

    pub.publish_wait("sid/b/x", "two", qos=1)
    mp.pump([c], lambda: c.messages, 3.0)
    mp.settle([c], 0.3)
    got = c.take()
    run.eq("partial_overlap", [(m.text(), m.qos, sorted(m.props.get("SubscriptionIdentifier", [])))
                               for m in got], [("two", 1, [1, 2])])

    pub.publish_wait("sid/zzz", "one", qos=1)
    mp.pump([c], lambda: c.messages, 3.0)
    mp.settle([c], 0.3)
    got = c.take()
    run.eq("single_match", [(m.text(), m.props.get("SubscriptionIdentifier")) for m in got],
           [("one", [2])])

    # Re-subscribing replaces the identifier.
    c.subscribe("sid/#", 2, props=sub_props(9))
    pub.publish_wait("sid/zzz", "replaced", qos=1)
    mp.pump([c], lambda: c.messages, 3.0)
    mp.settle([c], 0.3)
    got = c.take()
    run.eq("identifier_replaced", [(m.text(), m.props.get("SubscriptionIdentifier")) for m in got],
           [("replaced", [9])])
    # Re-subscribing without one removes it.
    c.subscribe("sid/#", 2)
    pub.publish_wait("sid/zzz", "removed", qos=1)
    mp.pump([c], lambda: c.messages, 3.0)
    mp.settle([c], 0.3)
    got = c.take()
    run.eq("identifier_removed", [(m.text(), m.props.get("SubscriptionIdentifier")) for m in got],
           [("removed", None)])
    c.disconnect()
    pub.disconnect()


def case_nolocal(run, port):
    c = mp.Client("nolocal-a", "5")
    other = mp.Client("nolocal-b", "5")
    c.connect(port)
    other.connect(port)
    run.eq("suback_nolocal", c.subscribe("nl/t", options=mp.SubscribeOptions(qos=1, noLocal=True)), [1])
    run.eq("suback_local", c.subscribe("nl/u", options=mp.SubscribeOptions(qos=1)), [1])
    c.publish_wait("nl/t", "own-on-nolocal", qos=1)
    c.publish_wait("nl/u", "own-on-normal", qos=1)
    other.publish_wait("nl/t", "other-on-nolocal", qos=1)
    mp.pump([c, other], lambda: len(c.messages) >= 2, 3.0)
    mp.settle([c, other], 0.5)
    run.eq("received", sorted(m.text() for m in c.take()), ["other-on-nolocal", "own-on-normal"])
    # Overlap: No Local on one filter does not suppress a match on another filter.
    c.subscribe("nl/#", 1)
    c.publish_wait("nl/t", "own-overlap", qos=1)
    mp.pump([c], lambda: c.messages, 3.0)
    mp.settle([c], 0.3)
    run.eq("overlap_without_nolocal_delivers", [m.text() for m in c.take()], ["own-overlap"])
    c.disconnect()
    other.disconnect()


def case_rap(run, port):
    keep = mp.Client("rap-keep", "5")
    clear = mp.Client("rap-clear", "5")
    pub = mp.Client("rap-pub", "5")
    for cl in (keep, clear, pub):
        cl.connect(port)
    keep.subscribe("rap/t", options=mp.SubscribeOptions(qos=1, retainAsPublished=True))
    clear.subscribe("rap/t", options=mp.SubscribeOptions(qos=1, retainAsPublished=False))
    pub.publish_wait("rap/t", "retained", qos=1, retain=True)
    pub.publish_wait("rap/t", "plain", qos=1, retain=False)
    mp.pump([keep, clear], lambda: len(keep.messages) >= 2 and len(clear.messages) >= 2, 3.0)
    run.eq("rap_keeps_flag", [(m.text(), m.retain) for m in keep.take()],
           [("retained", True), ("plain", False)])
    run.eq("no_rap_clears_flag", [(m.text(), m.retain) for m in clear.take()],
           [("retained", False), ("plain", False)])
    # Retained messages sent because of a new subscription carry RETAIN 1 either way.
    late = mp.Client("rap-late", "5")
    late.connect(port)
    late.subscribe("rap/t", options=mp.SubscribeOptions(qos=1, retainAsPublished=False))
    mp.pump([late], lambda: late.messages, 3.0)
    run.eq("on_subscribe_retain_set", [(m.text(), m.retain) for m in late.take()],
           [("retained", True)])
    pub.publish_wait("rap/t", b"", qos=1, retain=True)
    for cl in (keep, clear, pub, late):
        cl.disconnect()


def case_rh(run, port):
    pub = mp.Client("rh-pub", "5")
    c = mp.Client("rh-sub", "5")
    pub.connect(port)
    c.connect(port)
    pub.publish_wait("rh/t", "kept", qos=1, retain=True)

    def sub(filter_, rh):
        c.subscribe(filter_, options=mp.SubscribeOptions(qos=1, retainHandling=rh))
        mp.settle([c], 0.4)
        return [(m.text(), m.retain) for m in c.take()]

    run.eq("rh0_new", sub("rh/t", 0), [("kept", True)])
    run.eq("rh0_existing", sub("rh/t", 0), [("kept", True)])
    run.eq("rh1_new", sub("rh/+", 1), [("kept", True)])
    run.eq("rh1_existing", sub("rh/+", 1), [])
    run.eq("rh2_new", sub("rh/#", 2), [])
    run.eq("rh2_existing", sub("rh/#", 2), [])
    # After unsubscribing, RH 1 counts the subscription as new again.
    c.unsubscribe("rh/+")
    run.eq("rh1_after_unsubscribe", sub("rh/+", 1), [("kept", True)])
    pub.publish_wait("rh/t", b"", qos=1, retain=True)
    mp.settle([c], 0.3)
    c.disconnect()
    pub.disconnect()


def main():
    p = mp.parser(__doc__, versions=False)
    p.add_argument("--case", choices=["subid", "nolocal", "rap", "rh"], required=True)
    args = p.parse_args()
    run = mp.Run(args, f"subopts-{args.case}")
    {"subid": case_subid, "nolocal": case_nolocal, "rap": case_rap, "rh": case_rh}[args.case](
        run, args.port)
    run.finish()


if __name__ == "__main__":
    main()
