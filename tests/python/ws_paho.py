"""paho-mqtt over WebSocket (transport="websockets"): QoS 0, 1 and 2 round trips between
clients on the two WebSocket paths, with a TCP subscriber alongside, and a retained
message set, delivered and cleared over WebSocket.

`--port` is the broker's HTTP listener, `--tcp-port` its MQTT listener. The subscriber
uses `--sub-path`, the publisher `--pub-path` (defaults: /mqtt and /)."""

import motepaho as mp


class WsClient(mp.Client):
    """A motepaho client whose transport is a WebSocket on `path`."""

    def __init__(self, client_id, version, path, **kw):
        super().__init__(client_id, version, **kw)
        # paho-mqtt 2.x: the transport may be set while no connection is open.
        self.c.transport = "websockets"
        self.c.ws_set_options(path=path)


def main():
    p = mp.parser(__doc__)
    p.add_argument("--tcp-port", type=int, required=True)
    p.add_argument("--sub-path", default="/mqtt")
    p.add_argument("--pub-path", default="/")
    p.add_argument("--count", type=int, default=10)
    args = p.parse_args()
    run = mp.Run(args, "ws_paho")
    v = args.version

    sub = WsClient(f"ws-paho-sub-{v}", v, args.sub_path)
    pub = WsClient(f"ws-paho-pub-{v}", v, args.pub_path)
    tcp = mp.Client(f"ws-paho-tcp-{v}", v)
    run.eq("sub_connack", sub.connect(args.port)[1], 0)
    run.eq("pub_connack", pub.connect(args.port)[1], 0)
    run.eq("tcp_connack", tcp.connect(args.tcp_port)[1], 0)
    run.check("transport", sub.c.transport == "websockets" and pub.c.transport == "websockets",
              sub=sub.c.transport, pub=pub.c.transport)

    clients = [sub, pub, tcp]
    for qos in (0, 1, 2):
        topic = f"ws/paho/v{v}/q{qos}"
        run.eq(f"q{qos}_suback", sub.subscribe(topic, qos), [qos])
        run.eq(f"q{qos}_tcp_suback", tcp.subscribe(topic, qos), [qos])
        sent = [f"q{qos}-msg-{i}" for i in range(args.count)]
        pub.acked.clear()
        for s in sent:
            pub.publish(topic, s, qos=qos)
        mp.pump(clients, lambda: len(sub.messages) >= len(sent) and len(tcp.messages) >= len(sent)
                and (qos == 0 or len(pub.acked) >= len(sent)), 8.0)
        mp.settle(clients, 0.3)
        got, got_tcp = sub.take(), tcp.take()
        run.eq(f"q{qos}_payloads_in_order", [m.text() for m in got], sent)
        run.eq(f"q{qos}_delivered_qos", sorted({m.qos for m in got}), [qos])
        run.eq(f"q{qos}_retain_flag", sorted({m.retain for m in got}), [False])
        run.eq(f"q{qos}_tcp_payloads_in_order", [m.text() for m in got_tcp], sent)
        run.eq(f"q{qos}_tcp_delivered_qos", sorted({m.qos for m in got_tcp}), [qos])
        if qos > 0:
            run.eq(f"q{qos}_publisher_flows_completed", len(pub.acked), len(sent))

    # A message published over the WebSocket by the TCP client's peer, with properties.
    if v == "5":
        topic = "ws/paho/v5/props"
        run.eq("props_suback", sub.subscribe(topic, 1), [1])
        props = mp.Properties(mp.PacketTypes.PUBLISH)
        props.ContentType = "text/plain"
        props.UserProperty = [("over", "websocket")]
        pub.publish(topic, "with properties", qos=1, props=props)
        mp.pump(clients, lambda: len(sub.messages) >= 1, 5.0)
        got = sub.take()
        run.check("v5_properties_over_ws",
                  len(got) == 1 and got[0].props.get("ContentType") == "text/plain"
                  and ("over", "websocket") in [tuple(x) for x in got[0].props.get("UserProperty", [])],
                  got=[m.as_json() for m in got])

    # Retained: set over WebSocket, delivered to a new WebSocket and a new TCP subscriber
    # with RETAIN 1, then cleared over WebSocket.
    topic = f"ws/paho/v{v}/retained"
    pub.acked.clear()
    mid = pub.publish_wait(topic, "kept", qos=1, retain=True)
    run.check("retained_published", mid in pub.acked)
    late = WsClient(f"ws-paho-late-{v}", v, args.sub_path)
    late_tcp = mp.Client(f"ws-paho-late-tcp-{v}", v)
    run.eq("late_connack", late.connect(args.port)[1], 0)
    run.eq("late_tcp_connack", late_tcp.connect(args.tcp_port)[1], 0)
    late.subscribe(topic, 1)
    late_tcp.subscribe(topic, 1)
    mp.pump([late, late_tcp], lambda: late.messages and late_tcp.messages, 5.0)
    mp.settle([late, late_tcp], 0.2)
    got, got_tcp = late.take(), late_tcp.take()
    run.eq("retained_to_new_ws_subscriber", [(m.text(), m.retain) for m in got], [("kept", True)])
    run.eq("retained_to_new_tcp_subscriber", [(m.text(), m.retain) for m in got_tcp], [("kept", True)])
    pub.publish_wait(topic, b"", qos=1, retain=True)
    mp.settle([late, late_tcp, pub], 0.2)
    # The clearing message itself reaches live subscribers; drop it.
    late.take()
    late_tcp.take()
    after = WsClient(f"ws-paho-after-{v}", v, args.pub_path)
    run.eq("after_connack", after.connect(args.port)[1], 0)
    after.subscribe(topic, 1)
    mp.settle([after], 0.5)
    run.eq("retained_cleared", [m.text() for m in after.take()], [])

    for c in (sub, pub, tcp, late, late_tcp, after):
        c.disconnect()
    run.finish()


if __name__ == "__main__":
    main()
