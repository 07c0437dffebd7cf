"""Unacknowledged deliveries of a persistent session are re-sent on reconnect, first, in
their original order. The subscriber (manual acks) receives three messages, completes
none of their flows, loses its connection and reconnects with Clean Start 0.

QoS 1: the three PUBLISHes come again with DUP 1, then the one published meanwhile.
QoS 2: paho sent PUBREC (it delays only PUBCOMP), so the broker must re-send the three
PUBRELs (same packet ids, in order) and must not deliver those messages again."""

import re

import motepaho as mp


def main():
    p = mp.parser(__doc__)
    p.add_argument("--qos", type=int, choices=[1, 2], required=True)
    args = p.parse_args()
    run = mp.Run(args, "redeliver")
    v = args.version
    cid = f"redeliver-{v}-{args.qos}"
    topic = f"redeliver/v{v}/q{args.qos}"

    mp.forget(cid, v, args.port)

    s1 = mp.Client(cid, v, clean=False, session_expiry=60, manual_ack=True)
    s1.connect(args.port)
    s1.subscribe(topic, args.qos)
    pub = mp.Client(f"redeliver-pub-{v}-{args.qos}", v)
    pub.connect(args.port)
    for i in range(3):
        pub.publish(topic, f"m{i}", qos=args.qos)
    mp.pump([s1, pub], lambda: len(s1.messages) >= 3 and len(pub.acked) >= 3, 5.0)
    first = s1.take()
    run.eq("first_delivery", [(m.text(), m.dup) for m in first],
           [("m0", False), ("m1", False), ("m2", False)])
    first_mids = [m.mid for m in first]
    s1.drop()
    mp.settle([pub], 0.3)  # let the broker see the connection end
    # One more while away: it must come after the re-sent ones.
    pub.publish_wait(topic, "m3", qos=args.qos)

    s2 = mp.Client(cid, v, clean=False, session_expiry=60)
    sp, rc, _ = s2.connect(args.port)
    run.eq("resume_connack", (sp, rc), (True, 0))
    expected = ["m0", "m1", "m2", "m3"] if args.qos == 1 else ["m3"]
    mp.pump([s2], lambda: len(s2.messages) >= len(expected), 5.0)
    mp.settle([s2], 0.5)
    got = s2.take()
    run.eq("redelivered_in_order_then_new", [m.text() for m in got], expected)
    run.eq("dup_flags", [m.dup for m in got], [True] * (len(expected) - 1) + [False])
    run.eq("qos", sorted({m.qos for m in got}), [args.qos])
    if args.qos == 1:
        run.eq("same_packet_ids", [m.mid for m in got[:3]], first_mids)
    else:
        # The order of packets as paho logged them: three PUBRELs, then the new PUBLISH
        # (whose own PUBREL follows).
        seq = []
        for line in s2.log:
            m = re.match(r"Received PUBREL \(Mid: (\d+)\)", line)
            if m:
                seq.append(("PUBREL", int(m.group(1))))
            elif line.startswith("Received PUBLISH"):
                seq.append(("PUBLISH", None))
        run.eq("pubrels_resent_first_in_order", seq[:4],
               [("PUBREL", i) for i in first_mids] + [("PUBLISH", None)])
    # Completed now (paho acks automatically): nothing is re-sent on the next resume.
    s2.disconnect()
    s3 = mp.Client(cid, v, clean=False, session_expiry=60)
    sp, rc, _ = s3.connect(args.port)
    run.eq("second_resume_connack", (sp, rc), (True, 0))
    mp.settle([s3], 0.7)
    run.eq("nothing_resent_after_ack", [m.text() for m in s3.take()], [])
    run.eq("no_pubrel_resent_after_ack",
           [line for line in s3.log if line.startswith("Received PUBREL")], [])
    s3.disconnect()
    mp.forget(cid, v, args.port)
    pub.disconnect()
    run.finish()


if __name__ == "__main__":
    main()
