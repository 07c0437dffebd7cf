"""The topic form of a stream's start, for MQTT 3.1.1 clients (no user properties):
paho 3.1.1 readers of `$stream/s2/@earliest`, `$stream/s2/@3`, `$stream/s2/@@UNIX_MS`
and `$stream/s2/@latest` replay what a 3.1.1 publisher appended, in order, each message
with its own topic; every reader goes on with what is appended after it caught up.

Leaves `$stream/s2` holding p0..p5 (the caller reads it again with mosquitto_sub)."""

import time

import motepaho as mp

STREAM = "$stream/s2"


def now_ms():
    return int(time.time() * 1000)


def main():
    p = mp.parser(__doc__, versions=False)
    args = p.parse_args()
    run = mp.Run(args, "streams_v311")
    port = args.port

    pub = mp.Client("s2-pub", "311")
    pub.connect(port)
    t_mid = None
    for i in range(5):
        if i == 2:
            time.sleep(0.05)
            t_mid = now_ms()
            time.sleep(0.05)
        pub.publish_wait(STREAM, f"p{i}", qos=1)
        time.sleep(0.02)

    def reader(name, start, qos=1):
        r = mp.Client(name, "311")
        r.connect(port)
        codes = r.subscribe(f"{STREAM}/@{start}", qos)
        return r, codes

    def read(r, n):
        mp.pump([r], lambda: len(r.messages) >= n, 5.0)
        mp.settle([r], 0.4)
        return r.take()

    early, codes = reader("s2-earliest", "earliest")
    run.eq("suback_earliest", codes, [1])
    got = read(early, 5)
    run.eq("earliest_replays_all", [m.text() for m in got], [f"p{i}" for i in range(5)])
    run.eq("deliveries_keep_the_message_topic", [m.topic for m in got], [STREAM] * 5)
    run.eq("deliveries_at_qos1", [m.qos for m in got], [1] * 5)

    three, codes = reader("s2-from-3", "3")
    run.eq("suback_offset_3", codes, [1])
    run.eq("offset_3_replays_from_3", [m.text() for m in read(three, 2)], ["p3", "p4"])

    at, codes = reader("s2-from-time", f"@{t_mid}")
    run.eq("suback_time", codes, [1])
    run.eq("time_start_replays_from_2", [m.text() for m in read(at, 3)], ["p2", "p3", "p4"])

    # Offset 1000 is past the end: the next appended.
    past, codes = reader("s2-past-end", "1000")
    run.eq("suback_past_end", codes, [1])
    late, codes = reader("s2-latest", "latest")
    run.eq("suback_latest", codes, [1])
    mp.settle([past, late], 0.5)
    run.eq("latest_gets_nothing_of_the_past", [m.text() for m in late.take()], [])
    run.eq("past_the_end_gets_nothing_of_the_past", [m.text() for m in past.take()], [])

    readers = [early, three, at, past, late]
    pub.publish_wait(STREAM, "p5", qos=1)
    mp.pump(readers, lambda: all(len(r.messages) >= 1 for r in readers), 5.0)
    mp.settle(readers, 0.4)
    for name, r in [("earliest", early), ("offset_3", three), ("time", at),
                    ("past_end", past), ("latest", late)]:
        run.eq(f"{name}_reader_gets_the_new_append", [m.text() for m in r.take()], ["p5"])
    for c in readers + [pub]:
        c.disconnect()
    run.finish()


if __name__ == "__main__":
    main()
