"""CONNACK as paho sees it: connects once with the given keep alive (and optional
Session Expiry / client id), prints the CONNACK properties, and checks each
`--expect NAME=INT` (a property paho names NAME, e.g. ReceiveMaximum) and `--absent NAME`.
With `--check-keepalive` it also checks paho adopted the Server Keep Alive; with
`--stay SECS` that the connection then survives that long."""

import motepaho as mp


def main():
    p = mp.parser(__doc__)
    p.add_argument("--keepalive", type=int, default=60)
    p.add_argument("--client-id", default="connack-probe")
    p.add_argument("--session-expiry", type=int, default=None)
    p.add_argument("--expect", action="append", default=[], metavar="NAME=INT")
    p.add_argument("--absent", action="append", default=[], metavar="NAME")
    p.add_argument("--check-keepalive", action="store_true")
    p.add_argument("--stay", type=float, default=0.0,
                   help="then stay connected this long (paho pinging as told)")
    args = p.parse_args()
    run = mp.Run(args, "connack")
    c = mp.Client(args.client_id, args.version, keepalive=args.keepalive,
                  session_expiry=args.session_expiry)
    sp, rc, props = c.connect(args.port)
    run.info(connack_properties=props)
    run.eq("reason_code", rc, 0)
    run.eq("session_present", sp, False)
    for e in args.expect:
        name, _, value = e.partition("=")
        want = int(value) if value.lstrip("-").isdigit() else value
        run.eq(f"property_{name}", props.get(name), want)
    for name in args.absent:
        run.check(f"absent_{name}", name not in props, got=props.get(name))
    if args.check_keepalive:
        ska = props.get("ServerKeepAlive")
        run.eq("paho_uses_server_keepalive", c.c._keepalive, ska if ska is not None else args.keepalive)
    # The connection works: a ping round trip within the (possibly overridden) keep alive.
    c.subscribe("connack/probe", 0)
    c.publish("connack/probe", "x")
    mp.pump([c], lambda: c.messages, 3.0)
    run.eq("usable", [m.text() for m in c.take()], ["x"])
    if args.stay > 0:
        mp.settle([c], args.stay)
        run.eq("still_connected_after_stay", (c.closed, c.disconnects), (False, []))
    c.disconnect()
    run.finish()


if __name__ == "__main__":
    main()
