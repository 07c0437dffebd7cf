"""Publish/subscribe round trip at one QoS: every message arrives once, in order, at
min(publish QoS, subscription QoS), with RETAIN 0."""

import motepaho as mp


def main():
    p = mp.parser(__doc__)
    p.add_argument("--qos", type=int, choices=[0, 1, 2], required=True)
    p.add_argument("--sub-qos", type=int, choices=[0, 1, 2], default=None)
    p.add_argument("--count", type=int, default=20)
    args = p.parse_args()
    run = mp.Run(args, "pubsub")
    sub_qos = args.qos if args.sub_qos is None else args.sub_qos
    topic = f"pubsub/v{args.version}/q{args.qos}"

    sub = mp.Client(f"pubsub-sub-{args.version}-{args.qos}", args.version)
    pub = mp.Client(f"pubsub-pub-{args.version}-{args.qos}", args.version)
    run.eq("sub_connack", sub.connect(args.port)[1], 0)
    run.eq("pub_connack", pub.connect(args.port)[1], 0)
    run.eq("suback", sub.subscribe(topic, sub_qos), [sub_qos])

    sent = [f"msg-{i}" for i in range(args.count)]
    for s in sent:
        pub.publish(topic, s, qos=args.qos)
    mp.pump([sub, pub], lambda: len(sub.messages) >= len(sent) and len(pub.acked) >= len(sent), 8.0)
    mp.settle([sub, pub], 0.3)
    msgs = sub.take()
    run.eq("payloads_in_order", [m.text() for m in msgs], sent)
    expect_qos = min(args.qos, sub_qos)
    run.eq("delivered_qos", sorted({m.qos for m in msgs}), [expect_qos])
    run.eq("retain_flag", sorted({m.retain for m in msgs}), [False])
    run.eq("topic", sorted({m.topic for m in msgs}), [topic])
    if args.qos > 0:
        run.eq("publisher_flows_completed", len(pub.acked), len(sent))
    sub.disconnect()
    pub.disconnect()
    run.finish()


if __name__ == "__main__":
    main()
