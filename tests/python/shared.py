"""Shared subscriptions `$share/g/...` across two paho clients: each message goes to
exactly one member (none lost, none twice), both members take part, a plain subscriber
still gets everything, a second group gets its own copy, retained messages are not sent
on subscribe to a shared subscription; after one member unsubscribes the other gets all."""

import motepaho as mp


def case_reroute(run, args):
    """A member whose session ends with QoS 1 messages unacknowledged: those go to the
    other member (MQTT 5 §4.8.2 SHOULD); a QoS 2 delivery that began with it is never
    re-sent to another member (MUST NOT)."""
    v = args.version
    topic = f"shared/v{v}/reroute"
    pub = mp.Client(f"shr-rr-pub-{v}", v)
    pub.connect(args.port)
    # a: session ends with its connection; acknowledges nothing.
    a = mp.Client(f"shr-rr-a-{v}", v, manual_ack=True)
    b = mp.Client(f"shr-rr-b-{v}", v)
    for c in (a, b):
        c.connect(args.port)
    a.subscribe(f"$share/rr/{topic}", 2)
    b.subscribe(f"$share/rr/{topic}", 2)
    sent1 = [f"q1-{i}" for i in range(6)]
    for s in sent1:
        pub.publish(topic, s, qos=1)
    mp.pump([pub, a, b], lambda: len(a.messages) + len(b.messages) >= len(sent1), 5.0)
    mp.settle([pub, a, b], 0.3)
    held_by_a = [m.text() for m in a.take()]
    run.check("a_holds_some_unacked", len(held_by_a) > 0, a=held_by_a)
    a.drop()
    mp.pump([b], lambda: len(b.messages) >= len(sent1), 5.0)
    mp.settle([b], 0.5)
    got_b = [m.text() for m in b.take()]
    run.eq("qos1_unacked_rerouted_to_other_member", sorted(got_b), sorted(sent1))
    run.eq("no_duplicates_at_b", len(got_b), len(set(got_b)))

    # QoS 2: a2 receives (paho sends PUBREC, holds PUBCOMP) and goes away.
    a2 = mp.Client(f"shr-rr-a2-{v}", v, manual_ack=True)
    a2.connect(args.port)
    a2.subscribe(f"$share/rr/{topic}", 2)
    sent2 = [f"q2-{i}" for i in range(6)]
    for s in sent2:
        pub.publish(topic, s, qos=2)
    mp.pump([pub, a2, b], lambda: len(a2.messages) + len(b.messages) >= len(sent2), 5.0)
    mp.settle([pub, a2, b], 0.3)
    held_by_a2 = [m.text() for m in a2.take()]
    got_b = [m.text() for m in b.take()]
    run.check("a2_holds_some", len(held_by_a2) > 0, a2=held_by_a2)
    a2.drop()
    mp.settle([b], 1.0)
    got_b += [m.text() for m in b.take()]
    run.eq("begun_qos2_not_resent_elsewhere", sorted(set(got_b) & set(held_by_a2)), [])
    run.eq("rest_of_qos2_at_b", sorted(got_b), sorted(set(sent2) - set(held_by_a2)))
    for c in (b, pub):
        c.disconnect()


def main():
    p = mp.parser(__doc__)
    p.add_argument("--count", type=int, default=40)
    p.add_argument("--qos", type=int, choices=[0, 1, 2], default=1)
    p.add_argument("--case", choices=["spread", "reroute"], default="spread")
    args = p.parse_args()
    run = mp.Run(args, f"shared-{args.case}")
    if args.case == "reroute":
        case_reroute(run, args)
        run.finish()
    v = args.version
    topic = f"shared/v{v}/jobs"
    n = args.count

    pub = mp.Client(f"shr-pub-{v}", v)
    pub.connect(args.port)
    pub.publish_wait(topic, "retained-one", qos=1, retain=True)

    a = mp.Client(f"shr-a-{v}", v)
    b = mp.Client(f"shr-b-{v}", v)
    g2 = mp.Client(f"shr-g2-{v}", v)
    plain = mp.Client(f"shr-plain-{v}", v)
    for c in (a, b, g2, plain):
        c.connect(args.port)
    run.eq("suback_a", a.subscribe(f"$share/g/{topic}", args.qos), [args.qos])
    run.eq("suback_b", b.subscribe(f"$share/g/{topic}", args.qos), [args.qos])
    run.eq("suback_g2", g2.subscribe(f"$share/other/{topic}", args.qos), [args.qos])
    plain.subscribe(topic, args.qos)
    everyone = [pub, a, b, g2, plain]
    mp.settle(everyone, 0.5)
    run.eq("no_retained_for_shared",
           [m.text() for m in a.take() + b.take() + g2.take()], [])
    run.eq("retained_for_plain", [m.text() for m in plain.take()], ["retained-one"])

    sent = [f"job-{i}" for i in range(n)]
    for s in sent:
        pub.publish(topic, s, qos=args.qos)
    mp.pump(everyone, lambda: len(a.messages) + len(b.messages) >= n
            and len(g2.messages) >= n and len(plain.messages) >= n, 8.0)
    mp.settle(everyone, 0.5)
    ga = [m.text() for m in a.take()]
    gb = [m.text() for m in b.take()]
    run.info(a=len(ga), b=len(gb))
    run.eq("each_exactly_once", sorted(ga + gb, key=lambda s: int(s.split("-")[1])), sent)
    run.eq("disjoint", sorted(set(ga) & set(gb)), [])
    run.check("both_members_used", len(ga) > 0 and len(gb) > 0, a=len(ga), b=len(gb))
    run.eq("member_order_kept_a", ga, [s for s in sent if s in set(ga)])
    run.eq("member_order_kept_b", gb, [s for s in sent if s in set(gb)])
    run.eq("other_group_gets_all", [m.text() for m in g2.take()], sent)
    run.eq("plain_gets_all", [m.text() for m in plain.take()], sent)

    # After b unsubscribes, a is the only member and gets everything.
    b.unsubscribe(f"$share/g/{topic}")
    for s in sent[:10]:
        pub.publish(topic, s, qos=args.qos)
    mp.pump(everyone, lambda: len(a.messages) >= 10, 5.0)
    mp.settle(everyone, 0.3)
    run.eq("sole_member_gets_all", [m.text() for m in a.take()], sent[:10])
    run.eq("unsubscribed_member_gets_none", [m.text() for m in b.take()], [])
    pub.publish_wait(topic, b"", qos=1, retain=True)
    for c in everyone:
        c.disconnect()
    run.finish()


if __name__ == "__main__":
    main()
