"""Session takeover: a second connection with the same client id ends the first one.
Cases:
  resume   The first connection (persistent session, with a will) is taken over by a
           Clean Start 0 connection: the first is closed (v5: after DISCONNECT 0x8E
           Session taken over), its will is published (takeover is not a normal
           disconnect), the new one gets Session Present 1 and the session's
           subscriptions; a later Clean Start 1 takeover starts from nothing.
  expired  The first connection has a session that ends with its connection (3.1.1
           Clean Session 1 / v5 Session Expiry 0). Closing it for the takeover ends that
           session (MQTT 5 §3.1.4 steps 3-4), so a Clean Start 0 takeover gets Session
           Present 0 and none of the old subscriptions.
"""

import motepaho as mp


def case_resume(run, args):
    v = args.version
    cid = f"takeover-{v}"
    topic = f"takeover/v{v}/t"
    will_topic = f"takeover/v{v}/will"

    watcher = mp.Client(f"takeover-watch-{v}", v)
    watcher.connect(args.port)
    watcher.subscribe(will_topic, 1)
    pub = mp.Client(f"takeover-pub-{v}", v)
    pub.connect(args.port)

    mp.forget(cid, v, args.port)
    first = mp.Client(cid, v, clean=False, session_expiry=60,
                      will={"topic": will_topic, "payload": "first gone", "qos": 1})
    run.eq("first_connack", first.connect(args.port)[:2], (False, 0))
    first.subscribe(topic, 1)

    second = mp.Client(cid, v, clean=False, session_expiry=60)
    sp, rc, _ = second.connect(args.port)
    run.eq("second_connack", (sp, rc), (True, 0))
    mp.pump([first, second, watcher], lambda: first.closed, 3.0)
    run.eq("first_closed", first.closed, True)
    if v == "5":
        run.eq("first_disconnect_reason", [(s, r) for s, r, _ in first.disconnects],
               [(True, 0x8E)])
    else:
        # 3.1.1 has no server DISCONNECT: the connection just ends.
        run.eq("first_disconnect_not_from_server", [s for s, _, _ in first.disconnects],
               [False])

    mp.pump([watcher, second], lambda: watcher.messages, 3.0)
    mp.settle([watcher, second], 0.3)
    run.eq("will_of_first_published", [m.text() for m in watcher.take()], ["first gone"])

    pub.publish_wait(topic, "to-second", qos=1)
    mp.pump([second], lambda: second.messages, 3.0)
    mp.settle([second, first], 0.3)
    run.eq("second_gets_session_messages", [m.text() for m in second.take()], ["to-second"])
    run.eq("first_gets_nothing", [m.text() for m in first.take()], [])
    run.eq("second_still_connected", second.closed, False)

    # A clean takeover: the new connection starts without the old subscriptions.
    third = mp.Client(cid, v, clean=True)
    sp, rc, _ = third.connect(args.port)
    run.eq("clean_takeover_connack", (sp, rc), (False, 0))
    mp.pump([second, third], lambda: second.closed, 3.0)
    run.eq("second_closed", second.closed, True)
    pub.publish_wait(topic, "after-clean", qos=1)
    mp.settle([third], 0.5)
    run.eq("clean_takeover_no_subscriptions", [m.text() for m in third.take()], [])
    for c in (third, watcher, pub):
        c.disconnect()


def case_expired(run, args):
    v = args.version
    cid = f"takeover-exp-{v}"
    topic = f"takeover-exp/v{v}/t"
    pub = mp.Client(f"takeover-exp-pub-{v}", v)
    pub.connect(args.port)
    mp.forget(cid, v, args.port)
    first = mp.Client(cid, v, clean=True)  # session ends with the connection
    run.eq("first_connack", first.connect(args.port)[:2], (False, 0))
    first.subscribe(topic, 1)

    second = mp.Client(cid, v, clean=False, session_expiry=60)
    sp, rc, _ = second.connect(args.port)
    run.eq("takeover_connack_no_session", (sp, rc), (False, 0))
    mp.pump([first, second], lambda: first.closed, 3.0)
    run.eq("first_closed", first.closed, True)
    pub.publish_wait(topic, "old-subscription", qos=1)
    mp.settle([second], 0.5)
    run.eq("old_subscriptions_gone", [m.text() for m in second.take()], [])
    second.disconnect()
    mp.forget(cid, v, args.port)
    pub.disconnect()


def main():
    p = mp.parser(__doc__)
    p.add_argument("--case", choices=["resume", "expired"], default="resume")
    args = p.parse_args()
    run = mp.Run(args, f"takeover-{args.case}")
    {"resume": case_resume, "expired": case_expired}[args.case](run, args)
    run.finish()


if __name__ == "__main__":
    main()
