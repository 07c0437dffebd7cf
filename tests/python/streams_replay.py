"""Replayable streams `$stream/NAME` read by paho MQTT 5 clients: five messages
published with QoS 1 (PUBACK 0x00 each) are replayed from `earliest`, from offset 2,
from a time between the third and the fourth (`@UNIX_MS`) and from `latest` (only what
comes after the SUBACK), each delivery carrying the user properties `mote-offset` and
`mote-timestamp`; the publisher's v5 properties are kept; the `stream-offset` property
wins over the topic form; a QoS 2 subscription is granted QoS 1 and a QoS 0 one reads
at QoS 0; readers that caught up go on with what is appended next."""

import time

import motepaho as mp

STREAM = "$stream/s1"


def now_ms():
    return int(time.time() * 1000)


def uprops(m):
    """The user properties of a message, as a dict (the last value of a repeated key)."""
    return {k: v for (k, v) in m.props.get("UserProperty", [])}


def offset(m):
    v = uprops(m).get("mote-offset")
    return int(v) if v is not None else None


def stamp(m):
    v = uprops(m).get("mote-timestamp")
    return int(v) if v is not None else None


def start_props(start):
    props = mp.Properties(mp.PacketTypes.SUBSCRIBE)
    props.UserProperty = ("stream-offset", start)
    return props


def main():
    p = mp.parser(__doc__, versions=False)
    args = p.parse_args()
    run = mp.Run(args, "streams_replay")
    port = args.port

    pub = mp.Client("s1-pub", "5")
    reasons = {}

    def on_publish(c, u, mid, rc, props):
        pub.acked.add(mid)
        reasons[mid] = rc.value

    pub.c.on_publish = on_publish
    pub.connect(port)

    t_begin = now_ms()
    mids = []
    t_mid = None
    for i in range(5):
        props = None
        if i == 1:
            props = mp.Properties(mp.PacketTypes.PUBLISH)
            props.ContentType = "text/plain"
            props.ResponseTopic = "resp/s1"
            props.CorrelationData = b"cid-1"
            props.UserProperty = ("app", "x")
        if i == 3:
            # The time between message 2 (acknowledged, so appended) and message 3.
            time.sleep(0.05)
            t_mid = now_ms()
            time.sleep(0.05)
        mids.append(pub.publish_wait(STREAM, f"m{i}", qos=1, props=props))
        time.sleep(0.05)
    t_end = now_ms()
    run.eq("publishes_acknowledged_0x00", [reasons.get(m) for m in mids], [0] * 5)

    def reader(name, start, qos=1, topic=STREAM):
        r = mp.Client(name, "5")
        r.connect(port)
        props = start_props(start) if start is not None else None
        codes = r.subscribe(topic, qos, props=props)
        return r, codes

    def read(r, n, quiet=0.4):
        mp.pump([r], lambda: len(r.messages) >= n, 5.0)
        mp.settle([r], quiet)
        return r.take()

    # earliest: all five, in order, with dense offsets and plausible timestamps.
    early, codes = reader("s1-earliest", "earliest")
    run.eq("suback_earliest", codes, [1])
    got = read(early, 5)
    run.eq("earliest_payloads", [m.text() for m in got], [f"m{i}" for i in range(5)])
    run.eq("earliest_offsets", [offset(m) for m in got], [0, 1, 2, 3, 4])
    run.eq("earliest_topics", [m.topic for m in got], [STREAM] * 5)
    run.eq("earliest_qos", [m.qos for m in got], [1] * 5)
    stamps = [stamp(m) for m in got]
    run.check("timestamps_present", all(s is not None for s in stamps), stamps=stamps)
    if all(s is not None for s in stamps):
        run.check("timestamps_plausible",
                  all(t_begin - 1000 <= s <= t_end + 1000 for s in stamps)
                  and stamps == sorted(stamps),
                  stamps=stamps, begin=t_begin, end=t_end)
        run.check("timestamps_around_the_gap", stamps[2] < t_mid <= stamps[3],
                  stamps=stamps, t_mid=t_mid)
    m1 = got[1] if len(got) > 1 else None
    run.check("publisher_properties_kept",
              m1 is not None
              and m1.props.get("ContentType") == "text/plain"
              and m1.props.get("ResponseTopic") == "resp/s1"
              and m1.props.get("CorrelationData") == "cid-1"
              and uprops(m1).get("app") == "x",
              props=m1.props if m1 else None)

    # A numeric offset.
    two, codes = reader("s1-from-2", "2")
    run.eq("suback_offset_2", codes, [1])
    got = read(two, 3)
    run.eq("offset_2_payloads", [m.text() for m in got], ["m2", "m3", "m4"])
    run.eq("offset_2_offsets", [offset(m) for m in got], [2, 3, 4])
    run.eq("offset_2_same_timestamps", [stamp(m) for m in got], stamps[2:])

    # A time: the first message at or after it is message 3.
    at, codes = reader("s1-from-time", f"@{t_mid}")
    run.eq("suback_time", codes, [1])
    got = read(at, 2)
    run.eq("time_start_payloads", [m.text() for m in got], ["m3", "m4"])
    run.eq("time_start_offsets", [offset(m) for m in got], [3, 4])

    # The property wins over the topic form: `@0` in the topic, `3` in the property.
    both, codes = reader("s1-both", "3", topic=STREAM + "/@0")
    run.eq("suback_property_and_topic_form", codes, [1])
    got = read(both, 2)
    run.eq("property_wins_over_topic_form", [offset(m) for m in got], [3, 4])

    # QoS 2 is granted QoS 1; QoS 0 reads at QoS 0.
    q2, codes = reader("s1-qos2", "earliest", qos=2)
    run.eq("qos2_granted_qos1", codes, [1])
    got = read(q2, 5)
    run.eq("qos2_reader_gets_qos1", [(offset(m), m.qos) for m in got],
           [(i, 1) for i in range(5)])
    q0, codes = reader("s1-qos0", "earliest", qos=0)
    run.eq("suback_qos0", codes, [0])
    got = read(q0, 5)
    run.eq("qos0_reader", [(offset(m), m.qos) for m in got], [(i, 0) for i in range(5)])

    # latest, and no start at all (the default_offset of an auto-created stream is
    # latest): nothing of the past.
    late, codes = reader("s1-latest", "latest")
    run.eq("suback_latest", codes, [1])
    plain, codes = reader("s1-no-start", None)
    run.eq("suback_no_start", codes, [1])
    everyone = [early, two, at, both, q2, q0, late, plain]
    mp.settle(everyone, 0.5)
    run.eq("latest_gets_nothing_of_the_past", [m.text() for m in late.take()], [])
    run.eq("default_start_gets_nothing_of_the_past", [m.text() for m in plain.take()], [])
    for r in everyone:
        r.take()

    # Appended after every SUBACK: every reader gets it, offsets going on at 5.
    for i in (5, 6):
        mids.append(pub.publish_wait(STREAM, f"m{i}", qos=1))
    mp.pump(everyone + [pub], lambda: all(len(r.messages) >= 2 for r in everyone), 5.0)
    mp.settle(everyone + [pub], 0.4)
    for name, r in [("earliest", early), ("offset_2", two), ("time", at),
                    ("property", both), ("qos2", q2), ("qos0", q0), ("latest", late),
                    ("no_start", plain)]:
        got = r.take()
        run.eq(f"{name}_reader_gets_new_appends",
               [(m.text(), offset(m)) for m in got], [("m5", 5), ("m6", 6)])
    for c in everyone + [pub]:
        c.disconnect()
    run.finish()


if __name__ == "__main__":
    main()
