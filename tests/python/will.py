"""Will messages. Modes:
  abnormal      socket closed without DISCONNECT -> will published (v5: with its properties)
  kill          the client process is SIGKILLed -> will published
  keepalive     the client stops talking -> after 1.5 x keepalive the will is published
                (v5: the client got DISCONNECT 0x8D first)
  normal        DISCONNECT (reason 0) -> no will
  reason4       v5 DISCONNECT with reason 0x04 -> will published
  delay         v5 Will Delay Interval 2 s -> will not before 2 s, but soon after
  delay-cancel  v5 reconnecting within the will delay -> no will
  delay-expiry  v5 Will Delay 30 s, Session Expiry 1 s -> will after ~1 s
  retained      a will with RETAIN 1: live subscribers get it (RETAIN 0), and it is kept
                as the topic's retained message for later subscribers (RETAIN 1)
"""

import os
import signal
import subprocess
import sys
import time

import motepaho as mp

MODES = ["abnormal", "kill", "keepalive", "normal", "reason4", "delay", "delay-cancel",
         "delay-expiry", "retained"]


def will_args(v, topic, delay=None, retain=False):
    props = None
    if v == "5":
        props = mp.Properties(mp.PacketTypes.WILLMESSAGE)
        props.ContentType = "text/plain"
        props.UserProperty = [("why", "gone"), ("why", "really")]
        if delay is not None:
            props.WillDelayInterval = delay
    return {"topic": topic, "payload": "client died", "qos": 1, "retain": retain,
            "properties": props}


def child(args):
    """The process that gets killed: connect with a will, say so, then wait to die."""
    c = mp.Client(f"will-kill-{args.version}", args.version,
                  will=will_args(args.version, args.topic))
    c.connect(args.port)
    print("ready", flush=True)
    mp.pump([c], lambda: False, 30.0)


def main():
    p = mp.parser(__doc__)
    p.add_argument("--mode", choices=MODES, required=True)
    p.add_argument("--child", action="store_true")
    p.add_argument("--topic", default=None)
    args = p.parse_args()
    v = args.version
    topic = args.topic or f"will/v{v}/{args.mode}"
    args.topic = topic
    if args.child:
        child(args)
        return
    run = mp.Run(args, f"will-{args.mode}")
    if v != "5" and args.mode in ("reason4", "delay", "delay-cancel", "delay-expiry"):
        run.check("mode_needs_v5", False, mode=args.mode)
        run.finish()

    watcher = mp.Client(f"will-watch-{v}-{args.mode}", v)
    watcher.connect(args.port)
    watcher.subscribe(topic, 1)
    cid = f"will-{v}-{args.mode}"

    def check_will(msgs, wait_start):
        run.eq("will_payloads", [m.text() for m in msgs], ["client died"])
        if msgs:
            m = msgs[0]
            run.eq("will_qos", m.qos, 1)
            run.eq("will_retain", m.retain, False)
            if v == "5":
                run.eq("will_content_type", m.props.get("ContentType"), "text/plain")
                run.eq("will_user_properties", m.props.get("UserProperty"),
                       [("why", "gone"), ("why", "really")])
            return m.at - wait_start
        return None

    if args.mode == "kill":
        proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--port", str(args.port),
             "--version", v, "--mode", "kill", "--child", "--topic", topic],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            line = proc.stdout.readline().strip()
            run.eq("child_ready", line, "ready")
            mp.settle([watcher], 0.2)
            t0 = time.monotonic()
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.wait(timeout=5)
        mp.pump([watcher], lambda: watcher.messages, 5.0)
        mp.settle([watcher], 0.3)
        check_will(watcher.take(), t0)
        run.finish()

    keepalive = 1 if args.mode == "keepalive" else 60
    delay = {"delay": 2, "delay-cancel": 2, "delay-expiry": 30}.get(args.mode)
    expiry = {"delay": 30, "delay-cancel": 30, "delay-expiry": 1}.get(args.mode)
    c = mp.Client(cid, v, will=will_args(v, topic, delay, args.mode == "retained"),
                  keepalive=keepalive, session_expiry=expiry)
    run.eq("connack", c.connect(args.port)[1], 0)
    mp.settle([watcher, c], 0.1)
    t0 = time.monotonic()

    if args.mode == "abnormal":
        c.drop()
        mp.pump([watcher], lambda: watcher.messages, 5.0)
        mp.settle([watcher], 0.3)
        check_will(watcher.take(), t0)
    elif args.mode == "keepalive":
        # Stop pumping `c`: no PINGREQ goes out. The broker must close after 1.5 s.
        mp.pump([watcher], lambda: watcher.messages, 6.0)
        mp.settle([watcher], 0.2)
        waited = check_will(watcher.take(), t0)
        if waited is not None:
            run.check("will_after_keepalive_grace", 1.2 <= waited <= 4.0, waited=waited)
        if v == "5":
            mp.pump([c], lambda: c.closed, 2.0)
            run.eq("keepalive_disconnect_reason",
                   [(s, r) for s, r, _ in c.disconnects][:1], [(True, 0x8D)])
    elif args.mode == "normal":
        c.disconnect()
        mp.settle([watcher], 1.5)
        run.eq("no_will_after_normal_disconnect", [m.text() for m in watcher.take()], [])
    elif args.mode == "reason4":
        c.disconnect(reasoncode=mp.ReasonCode(mp.PacketTypes.DISCONNECT, identifier=4))
        mp.pump([watcher], lambda: watcher.messages, 5.0)
        mp.settle([watcher], 0.3)
        check_will(watcher.take(), t0)
    elif args.mode == "delay":
        c.drop()
        mp.pump([watcher], lambda: watcher.messages, 6.0)
        mp.settle([watcher], 0.2)
        waited = check_will(watcher.take(), t0)
        if waited is not None:
            run.check("will_after_delay", 1.8 <= waited <= 4.5, waited=waited)
    elif args.mode == "delay-cancel":
        c.drop()
        mp.settle([watcher], 0.5)
        again = mp.Client(cid, v, session_expiry=30, keepalive=60)
        again.clean = False
        sp = again.connect(args.port)
        run.eq("reconnect_session_present", sp[0], True)
        mp.settle([watcher, again], 3.0)
        run.eq("no_will_after_reconnect_within_delay",
               [m.text() for m in watcher.take()], [])
        again.disconnect()
        mp.settle([watcher], 0.5)
        run.eq("no_will_after_normal_disconnect", [m.text() for m in watcher.take()], [])
    elif args.mode == "retained":
        c.drop()
        mp.pump([watcher], lambda: watcher.messages, 5.0)
        mp.settle([watcher], 0.3)
        check_will(watcher.take(), t0)
        late = mp.Client(f"will-late-{v}", v)
        late.connect(args.port)
        late.subscribe(topic, 1)
        mp.pump([late], lambda: late.messages, 3.0)
        mp.settle([late], 0.3)
        run.eq("will_kept_as_retained", [(m.text(), m.retain) for m in late.take()],
               [("client died", True)])
        late.disconnect()
    elif args.mode == "delay-expiry":
        c.drop()
        mp.pump([watcher], lambda: watcher.messages, 6.0)
        mp.settle([watcher], 0.2)
        waited = check_will(watcher.take(), t0)
        if waited is not None:
            run.check("will_when_session_expires", 0.8 <= waited <= 3.5, waited=waited)
    watcher.disconnect()
    run.finish()


if __name__ == "__main__":
    main()
