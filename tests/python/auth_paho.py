"""Logins and access rules as paho-mqtt 2.x sees them (docs/security.md).

The broker has a password file holding `--user` with `--password`, and access rules that
give that user `readwrite ok/#` and `read ro/#`, nothing else. Checks:

- the right user name and password connect (reason code 0);
- a wrong password and an unknown user are refused with 0x86, no user name with 0x87.
  paho reports a 3.1.1 return code as the matching v5 reason code (4 -> 0x86,
  5 -> 0x87); the return code itself is read from paho's log line
  `Received CONNACK (flags, rc)` and checked too;
- the broker closes a refused connection;
- SUBSCRIBE [ok/#, ro/#, no/#] is granted 1, 1 and refused 0x87 (3.1.1: 0x80);
- PUBLISH QoS 1 to ro/a (read-only): v5 PUBACK 0x87, 3.1.1 acknowledged as usual; it
  is not delivered to the client's own ro/# subscription, while ok/a and ok/b are.
"""

import re

import motepaho as mp

V311_CONNACK = re.compile(r"Received CONNACK \((\d+), (\d+)\)")


def attempt(args, client_id, user, password):
    """One login; returns (reason code, 3.1.1 return code or None, client)."""
    c = mp.Client(client_id, args.version)
    if user is not None:
        c.c.username_pw_set(user, password)
    _, rc, _ = c.connect(args.port)
    raw = None
    if args.version == "311":
        for line in c.log:
            m = V311_CONNACK.search(line)
            if m:
                raw = int(m.group(2))
    return rc, raw, c


def main():
    p = mp.parser(__doc__)
    p.add_argument("--user", required=True)
    p.add_argument("--password", required=True)
    args = p.parse_args()
    run = mp.Run(args, "auth_paho")
    v5 = args.version == "5"

    refusals = [
        ("wrong_password", args.user, args.password + "-wrong", 0x86, 4),
        ("unknown_user", "nobody-" + args.user, args.password, 0x86, 4),
        ("no_user_name", None, None, 0x87, 5),
    ]
    for i, (name, user, password, want, want311) in enumerate(refusals):
        rc, raw, c = attempt(args, f"refused-{i}", user, password)
        run.eq(name, rc, want)
        if not v5:
            run.eq(f"{name}_return_code", raw, want311)
        mp.pump([c], lambda: c.closed, 3.0)
        run.check(f"{name}_closed", c.closed)

    rc, _, c = attempt(args, "allowed", args.user, args.password)
    run.eq("login", rc, 0)
    denied = 0x87 if v5 else 0x80
    run.eq("suback", c.subscribe([("ok/#", 1), ("ro/#", 1), ("no/#", 1)]), [1, 1, denied])

    codes = {}

    def on_publish(cl, userdata, mid, reason_code, properties):
        codes[mid] = reason_code.value
        c.acked.add(mid)

    c.c.on_publish = on_publish
    sent = {}
    for topic in ["ok/a", "ro/a", "ok/b"]:
        mid = c.publish(topic, topic, qos=1)
        sent[topic] = mid
        mp.pump([c], lambda: mid in codes or c.closed, 5.0)
    run.eq("puback_allowed", codes.get(sent["ok/a"]), 0)
    run.eq("puback_denied", codes.get(sent["ro/a"]), 0x87 if v5 else 0)
    mp.pump([c], lambda: any(m.topic == "ok/b" for m in c.messages), 5.0)
    mp.settle([c], 0.3)
    run.eq("delivered", [m.topic for m in c.take()], ["ok/a", "ok/b"])
    run.eq("still_connected", (c.closed, c.disconnects), (False, []))
    c.disconnect()
    run.finish()


if __name__ == "__main__":
    main()
