"""A consumer group of three paho MQTT 5 members on `$share/g/$stream/s5` (start
`earliest`, so the group begins at the stream's first message): 300 messages across ten
keys (topics `$stream/s5/k0`..`k9`; the key is the topic), half appended before the
members subscribe and half after. Every message is delivered exactly once across the
group (members acknowledge each), each member receives each key's messages in
increasing offset order, so does the group as a whole while keys move between members
as they join, and the offsets follow the publisher's order."""

import motepaho as mp

STREAM = "$stream/s5"
COUNT = 300
KEYS = 10


def uprops(m):
    return {k: v for (k, v) in m.props.get("UserProperty", [])}


def offset(m):
    v = uprops(m).get("mote-offset")
    return int(v) if v is not None else None


def main():
    p = mp.parser(__doc__, versions=False)
    args = p.parse_args()
    run = mp.Run(args, "streams_group")
    port = args.port

    pub = mp.Client("s5-pub", "5")
    pub.connect(port)

    def publish(i):
        return pub.publish(f"{STREAM}/k{i % KEYS}", f"{i}", qos=1)

    first = [publish(i) for i in range(COUNT // 2)]
    mp.pump([pub], lambda: all(m in pub.acked for m in first), 10.0)
    run.eq("first_half_acknowledged", sorted(m for m in first if m in pub.acked), sorted(first))

    members = []
    for i in range(3):
        c = mp.Client(f"s5-member{i}", "5")
        c.connect(port)
        props = mp.Properties(mp.PacketTypes.SUBSCRIBE)
        props.UserProperty = ("stream-offset", "earliest")
        run.eq(f"suback_member{i}", c.subscribe(f"$share/g/{STREAM}", 1, props=props), [1])
        members.append(c)

    received = [[] for _ in members]

    def collect():
        for i, c in enumerate(members):
            received[i].extend(c.take())
        return sum(len(r) for r in received) >= COUNT

    second = [publish(i) for i in range(COUNT // 2, COUNT)]
    mp.pump(members + [pub], collect, 20.0)
    mp.settle(members + [pub], 0.8)
    collect()
    run.eq("second_half_acknowledged", sorted(m for m in second if m in pub.acked),
           sorted(second))

    offsets = [offset(m) for r in received for m in r]
    run.check("every_delivery_has_an_offset", all(o is not None for o in offsets))
    run.eq("every_message_exactly_once", sorted(o for o in offsets if o is not None),
           list(range(COUNT)))
    run.eq("offsets_follow_publish_order",
           [(m.topic, m.text()) for r in received for m in r if offset(m) is not None
            and (m.topic, m.text()) != (f"{STREAM}/k{offset(m) % KEYS}", f"{offset(m)}")],
           [])
    bad = {}
    for i, r in enumerate(received):
        per_key = {}
        for m in r:
            per_key.setdefault(m.topic, []).append(offset(m))
        for key, offs in per_key.items():
            if offs != sorted(offs) or len(offs) != len(set(offs)):
                bad[f"member{i} {key}"] = offs
    run.eq("each_members_offsets_increase_per_key", bad, {})
    # Across the group too: a key that moves to another member waits until its old
    # member acknowledged what it held (paho acknowledges after the callback that stamps
    # `at`), so each key's deliveries, in the order they arrived, go up in offset.
    moved_early = {}
    for key in {m.topic for r in received for m in r}:
        offs = [offset(m) for m in sorted((m for r in received for m in r if m.topic == key),
                                          key=lambda m: m.at)]
        if offs != sorted(offs):
            moved_early[key] = offs
    run.eq("each_key_in_offset_order_across_the_group", moved_early, {})
    run.eq("no_redelivery_without_a_departure",
           [offset(m) for r in received for m in r if m.dup], [])
    run.info(per_member=[len(r) for r in received],
             keys_per_member=[sorted({m.topic for m in r}) for r in received])
    for c in members + [pub]:
        c.disconnect()
    run.finish()


if __name__ == "__main__":
    main()
