"""v5 limits the client sets, which the broker must respect towards it:
  receive-max  Receive Maximum 2 (manual acks): at most 2 QoS 1/2 deliveries are
               unacknowledged at a time; each acknowledgement lets the next one through;
               all arrive once, in order.
  max-packet   Maximum Packet Size 256: a larger message is skipped for this client (as
               if delivered), smaller ones before and after still arrive, the
               connection stays up, and a client without the limit gets all of them.
"""

import motepaho as mp


def case_receive_max(run, port, qos):
    props = mp.Properties(mp.PacketTypes.CONNECT)
    props.ReceiveMaximum = 2
    sub = mp.Client(f"rmax-sub-{qos}", "5", connect_props=props, manual_ack=True)
    pub = mp.Client(f"rmax-pub-{qos}", "5")
    sub.connect(port)
    pub.connect(port)
    sub.subscribe("rmax/t", qos)
    n = 7
    for i in range(n):
        pub.publish("rmax/t", f"m{i}", qos=qos)
    mp.pump([sub, pub], lambda: len(pub.acked) >= n and len(sub.messages) >= 2, 5.0)
    mp.settle([sub, pub], 0.6)
    run.eq("window_of_two", [m.text() for m in sub.messages], ["m0", "m1"])
    acked = 0
    steps = []
    while acked < n and acked < len(sub.messages):
        m = sub.messages[acked]
        sub.c.ack(m.mid, m.qos)
        acked += 1
        want = min(acked + 2, n)
        mp.pump([sub], lambda: len(sub.messages) >= want, 3.0)
        mp.settle([sub], 0.15)
        steps.append(len(sub.messages))
    run.eq("one_more_per_ack", steps, [min(k + 2, n) for k in range(1, n + 1)])
    run.eq("all_in_order_once", [m.text() for m in sub.messages], [f"m{i}" for i in range(n)])
    run.eq("no_dup_flags", [m.dup for m in sub.messages], [False] * n)
    sub.disconnect()
    pub.disconnect()


def case_max_packet(run, port):
    props = mp.Properties(mp.PacketTypes.CONNECT)
    props.MaximumPacketSize = 256
    small = mp.Client("mps-small", "5", connect_props=props)
    big = mp.Client("mps-big", "5")
    pub = mp.Client("mps-pub", "5")
    for c in (small, big, pub):
        c.connect(port)
    small.subscribe("mps/#", 1)
    big.subscribe("mps/#", 1)
    pub.publish_wait("mps/a", "before", qos=1)
    pub.publish_wait("mps/a", "x" * 1000, qos=1)
    pub.publish_wait("mps/a", "y" * 300, qos=0)
    pub.publish_wait("mps/a", "after", qos=1)
    mp.pump([small, big], lambda: len(big.messages) >= 4 and len(small.messages) >= 2, 3.0)
    mp.settle([small, big], 0.4)
    run.eq("limited_client_skips_large", [m.text() for m in small.take()], ["before", "after"])
    run.eq("limited_client_still_connected", (small.closed, small.disconnects), (False, []))
    run.eq("other_client_gets_all", [len(m.payload) for m in big.take()], [6, 1000, 300, 5])
    # A retained message too large for the client is skipped on subscribe as well.
    pub.publish_wait("mps/r", "z" * 500, qos=1, retain=True)
    mp.settle([small, big], 0.2)
    small.take()
    big.take()
    small.subscribe("mps/r", 1)
    small.publish_wait("mps/ping", "ok", qos=1)
    mp.pump([small], lambda: small.messages, 3.0)
    mp.settle([small], 0.3)
    run.eq("large_retained_skipped", [m.text() for m in small.take()], ["ok"])
    pub.publish_wait("mps/r", b"", qos=1, retain=True)
    for c in (small, big, pub):
        c.disconnect()


def main():
    p = mp.parser(__doc__, versions=False)
    p.add_argument("--case", choices=["receive-max", "max-packet"], required=True)
    p.add_argument("--qos", type=int, choices=[1, 2], default=1)
    args = p.parse_args()
    run = mp.Run(args, f"flow-{args.case}")
    if args.case == "receive-max":
        case_receive_max(run, args.port, args.qos)
    else:
        case_max_packet(run, args.port)
    run.finish()


if __name__ == "__main__":
    main()
