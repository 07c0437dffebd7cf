"""HTTP subscribe as Server-Sent Events (`GET /api/v1/subscribe`), read with httpx.

`--case basic`: a message published by `mosquitto_pub` (MQTT 5, with properties)
arrives as `event: message` with an `id:` and the JSON data (topic, qos, retain,
properties, payload); a binary payload arrives as base64; `format=base64` renders
every payload as base64; `qos=1` streams deliver at QoS 1; a retained message arrives
with `retain: true`; several `filter`s in one stream.
`--case events`: a `SensorEvent` (postcard bytes) published on `mote/events/dev1` by
an MQTT 3.1.1 client arrives as `payload_encoding: "json"` with the decoded object; an
invalid one arrives as base64 with `decode_error` (never dropped); an MQTT 5 message
with content type `application/x-mote-event` on another topic is decoded too.
`--case resume`: a stream with `client_id` reads exactly 50 of 100 QoS 1 messages and
closes; 40 more are published while no stream is open (the broker queues them); a new
stream with `Last-Event-ID` of the 50th gets 51..100, each exactly once, in order, with
consecutive ids.
`--case resume_too_old` (a broker with `http.sse_buffer = 10`): a `Last-Event-ID` older
than the events kept gets a `dropped` event (reason `resume`) naming how many were
lost, then the kept ones and the rest, without a gap.
`--case slow`: an unnamed QoS 0 stream whose client reads nothing while 20,000 messages
of 1 KiB are published; meanwhile other clients publish and subscribe (MQTT and HTTP)
as usual; when it reads, a `dropped` event with a positive count comes, and the stream
goes on."""

import subprocess
import time

import httpx

from http_common import Sse, client, mp, parser, stats, wait_until

SENSOR_EVENT = bytes([0x01, 0x05, 0xE8, 0x07, 0x02, 0x03, 0x00, 0x00, 0xAC, 0x41])
SENSOR_JSON = {"device": 1, "seq": 5, "timestamp_ms": 1000, "channel": 2,
               "value": {"type": "f32", "value": 21.5}}


def mosquitto_pub(args, *argv):
    subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(args.port), *argv],
                   check=True, timeout=10, stdin=subprocess.DEVNULL)


def basic(run, args, http):
    s = Sse(http, [("filter", "sse/basic/#"), ("filter", "sse/other")])
    run.eq("stream_200", s.status, 200)
    run.check("content_type_event_stream",
              s.response.headers.get("content-type", "").startswith("text/event-stream"),
              content_type=s.response.headers.get("content-type"))
    mosquitto_pub(args, "-V", "5", "-q", "1", "-t", "sse/basic/a", "-m", "hello sse",
                  "-D", "publish", "user-property", "k", "v",
                  "-D", "publish", "content-type", "text/plain",
                  "-D", "publish", "response-topic", "sse/reply",
                  "-D", "publish", "correlation-data", "c1")
    e = s.next_event()
    run.check("mosquitto_pub_message_arrives", e is not None)
    if e is not None:
        run.eq("event_name_message", e["event"], "message")
        run.check("event_has_numeric_id", e["id"] is not None and e["id"].isdigit(), id=e["id"])
        run.eq("event_data", e["data"], {
            "topic": "sse/basic/a", "qos": 0, "retain": False,
            "properties": {"content_type": "text/plain", "response_topic": "sse/reply",
                           "correlation_data": "YzE=", "user_properties": [["k", "v"]]},
            "payload_encoding": "text", "payload": "hello sse"})
    mosquitto_pub(args, "-V", "311", "-t", "sse/other", "-m", "second filter")
    e2 = s.next_event()
    run.eq("second_filter_arrives", e2 and (e2["data"]["topic"], e2["data"]["payload"]),
           ("sse/other", "second filter"))
    run.check("ids_increase", e and e2 and int(e2["id"]) > int(e["id"]),
              ids=[x and x["id"] for x in (e, e2)])
    # Binary payload: base64.
    pub = mp.Client("sse-basic-pub", "5")
    pub.connect(args.port)
    pub.publish_wait("sse/basic/bin", b"\xff\x00\xfe", qos=1)
    e = s.next_event()
    run.eq("binary_payload_base64", e and (e["data"]["payload_encoding"], e["data"]["payload"]),
           ("base64", "/wD+"))
    s.close()

    # format=base64, qos=1.
    s = Sse(http, {"filter": "sse/basic/#", "format": "base64", "qos": 1})
    pub.publish_wait("sse/basic/q1", "text", qos=1)
    e = s.next_event()
    run.eq("format_base64", e and (e["data"]["payload_encoding"], e["data"]["payload"]),
           ("base64", "dGV4dA=="))
    run.eq("qos1_stream_delivers_qos1", e and e["data"]["qos"], 1)
    s.close()

    # A retained message is sent on subscribe, flagged.
    pub.publish_wait("sse/kept", "kept", qos=1, retain=True)
    s = Sse(http, {"filter": "sse/kept"})
    e = s.next_event()
    run.eq("retained_on_subscribe", e and (e["data"]["payload"], e["data"]["retain"]),
           ("kept", True))
    s.close()
    pub.publish_wait("sse/kept", b"", qos=1, retain=True)
    pub.disconnect()


def events(run, args, http):
    s = Sse(http, [("filter", "mote/events/#"), ("filter", "devices/#")])
    dev = mp.Client("dev1", "311")
    dev.connect(args.port)
    dev.publish_wait("mote/events/dev1", SENSOR_EVENT, qos=1)
    e = s.next_event()
    run.check("event_arrives", e is not None)
    if e is not None:
        d = e["data"]
        run.eq("event_payload_encoding_json", d.get("payload_encoding"), "json")
        run.eq("event_decoded", d.get("payload"), SENSOR_JSON)
        run.eq("event_no_decode_error", "decode_error" in d, False)
        run.eq("event_topic", d.get("topic"), "mote/events/dev1")

    bad = bytes([0x01, 0x05, 0xE8])
    dev.publish_wait("mote/events/dev1", bad, qos=1)
    e = s.next_event()
    run.check("bad_event_not_dropped", e is not None and e["event"] == "message")
    if e is not None:
        d = e["data"]
        run.eq("bad_event_base64", (d.get("payload_encoding"), d.get("payload")),
               ("base64", "AQXo"))
        run.check("bad_event_decode_error", isinstance(d.get("decode_error"), str)
                  and d["decode_error"] != "", data=d)
    # Trailing bytes are an error too, not a silently shortened event.
    dev.publish_wait("mote/events/dev1", SENSOR_EVENT + b"\x00", qos=1)
    e = s.next_event()
    run.check("trailing_bytes_decode_error", e is not None and "decode_error" in e["data"],
              data=e and e["data"])
    dev.disconnect()

    v5 = mp.Client("dev2", "5")
    v5.connect(args.port)
    props = mp.Properties(mp.PacketTypes.PUBLISH)
    props.ContentType = "application/x-mote-event"
    v5.publish_wait("devices/dev2", SENSOR_EVENT, qos=1, props=props)
    e = s.next_event()
    run.eq("content_type_event_decoded", e and (e["data"].get("payload_encoding"),
                                                e["data"].get("payload")), ("json", SENSOR_JSON))
    v5.publish_wait("devices/dev2", SENSOR_EVENT, qos=1)
    e = s.next_event()
    run.eq("other_topic_without_content_type_is_base64",
           e and e["data"].get("payload_encoding"), "base64")
    v5.disconnect()
    s.close()


def resume(run, args, http):
    pub = mp.Client("sse-resume-pub", "5")
    pub.connect(args.port)
    baseline = stats(http)["clients_connected"]
    params = {"filter": "resume/#", "client_id": "sse-resume"}

    def publish(numbers):
        mids = [pub.publish("resume/n", str(n), qos=1) for n in numbers]
        mp.pump([pub], lambda: all(m in pub.acked for m in mids), 10.0)
        return all(m in pub.acked for m in mids)

    s1 = Sse(http, params)
    run.eq("first_stream_200", s1.status, 200)
    run.check("published_1_to_60", publish(range(1, 61)))
    first = s1.events(50)
    run.eq("first_stream_1_to_50", [int(e["data"]["payload"]) for e in first],
           list(range(1, 51)))
    ids = [int(e["id"]) for e in first]
    run.eq("first_stream_ids_consecutive", ids, list(range(ids[0], ids[0] + len(ids))) if ids
           else [])
    last_id = first[-1]["id"] if first else "0"
    s1.close()
    closed = wait_until(lambda: stats(http)["clients_connected"] == baseline, 10.0)
    run.check("broker_saw_the_stream_close", closed)

    run.check("published_61_to_100_while_closed", publish(range(61, 101)))
    queued = stats(http)["messages"]["queued"]
    run.check("broker_queued_them", queued >= 40, queued=queued)

    s2 = Sse(http, params, headers={"Last-Event-ID": last_id})
    run.eq("resumed_stream_200", s2.status, 200)
    got, other = [], []

    def read_until(stream, n):
        """Reads `stream` until the message numbered `n` (or a stall)."""
        while (e := stream.next_event()) is not None:
            (got if e["event"] == "message" else other).append(e)
            if e["event"] == "message" and e["data"]["payload"] == str(n):
                return

    read_until(s2, 100)
    # A duplicate would come before a message published after the last one (the broker
    # resends what was unacknowledged first): read up to such a sentinel, 101.
    run.check("published_sentinel_101", publish([101]))
    read_until(s2, 101)
    numbers = [int(e["data"]["payload"]) for e in got]
    run.eq("resumed_51_to_100_once_in_order", numbers, list(range(51, 102)),
           missing=sorted(set(range(51, 101)) - set(numbers)),
           twice=sorted({n for n in numbers if numbers.count(n) > 1}))
    ids = [int(e["id"]) for e in got]
    run.eq("resumed_ids_follow_the_last_one", ids,
           list(range(int(last_id) + 1, int(last_id) + 1 + len(ids))))
    run.eq("no_dropped_event", [(e["event"], e["data"]) for e in other], [])
    s2.close()

    # The query parameter `last_event_id` resumes the same way.
    closed = wait_until(lambda: stats(http)["clients_connected"] == baseline, 10.0)
    run.check("broker_saw_the_second_close", closed)
    run.check("published_102_to_103", publish(range(102, 104)))
    s3 = Sse(http, {**params, "last_event_id": str(int(last_id) + 48)})
    got.clear()
    read_until(s3, 103)
    run.eq("last_event_id_parameter_resumes",
           [int(e["data"]["payload"]) for e in got], [99, 100, 101, 102, 103])
    s3.close()
    pub.disconnect()


def resume_too_old(run, args, http):
    pub = mp.Client("sse-old-pub", "5")
    pub.connect(args.port)
    baseline = stats(http)["clients_connected"]
    params = {"filter": "old/#", "client_id": "sse-old"}
    s1 = Sse(http, params)
    mids = [pub.publish("old/n", str(n), qos=1) for n in range(1, 41)]
    mp.pump([pub], lambda: all(m in pub.acked for m in mids), 10.0)
    first = s1.events(30)
    # A fresh named session numbers its events consecutively from a base (above every
    # id of an earlier broker run), in the order published.
    base = int(first[0]["id"]) - 1 if first else 0
    run.eq("ids_are_message_numbers", [(int(e["id"]) - base, e["data"]["payload"]) for e in first],
           [(n, str(n)) for n in range(1, 31)])
    s1.close()
    run.check("broker_saw_the_stream_close",
              wait_until(lambda: stats(http)["clients_connected"] == baseline, 10.0))

    s2 = Sse(http, params, headers={"Last-Event-ID": str(base + 5)})
    evs = []
    while (e := s2.next_event()) is not None:
        evs.append(e)
        if e["event"] == "message" and e["data"]["payload"] == "40":
            break
    s2.close()
    run.check("first_event_is_dropped", bool(evs) and evs[0]["event"] == "dropped",
              first=evs[:1])
    msgs = [e for e in evs if e["event"] == "message"]
    numbers = [int(e["data"]["payload"]) for e in msgs]
    first_kept = numbers[0] if numbers else None
    if evs and evs[0]["event"] == "dropped" and first_kept is not None:
        run.eq("dropped_names_the_lost_events", evs[0]["data"],
               {"dropped": first_kept - 6, "reason": "resume"})
    run.check("kept_at_most_sse_buffer_events", first_kept is not None and first_kept >= 21,
              first_kept=first_kept)
    run.info(first_kept=first_kept)
    run.eq("then_every_later_message_once_in_order", numbers,
           list(range(first_kept, 41)) if first_kept else [])
    run.eq("ids_still_message_numbers", [int(e["id"]) - base for e in msgs], numbers)
    # An id this broker never sent (an earlier run's): a `reset` event, then what is
    # queued.
    s3 = Sse(http, params, headers={"Last-Event-ID": "3"})
    pub.publish("old/n", "41", qos=1)
    evs = [s3.next_event(), s3.next_event()]
    s3.close()
    run.eq("unknown_id_gets_reset_then_messages",
           [e and e["event"] for e in evs], ["reset", "message"])
    run.eq("after_reset_the_new_message", evs[1] and evs[1]["data"]["payload"], "41")
    pub.disconnect()


def slow(run, args, http):
    n, size = 20_000, 1000
    # 20 MB of events: more than the socket buffers of both ends hold while the client
    # reads nothing (httpx reads the body only when asked).
    slow_http = httpx.Client(base_url=http.base_url, timeout=10.0)
    s = Sse(slow_http, {"filter": "slow/#"}, read_timeout=10.0)
    run.eq("slow_stream_200", s.status, 200)

    pub = mp.Client("sse-slow-pub", "5")
    pub.connect(args.port)
    payload = b"p" * size
    t0 = time.monotonic()
    for i in range(n):
        pub.publish("slow/x", payload, qos=0)
        if i % 500 == 0:
            mp.pump([pub], lambda: False, 0.001)
    # The broker handles a client's packets in order: once this QoS 1 one is acknowledged,
    # every QoS 0 one before it has been routed.
    pub.publish_wait("slow/x", b"last", qos=1, timeout=30.0)
    run.info(published=n + 1, seconds=round(time.monotonic() - t0, 2))

    # The broker serves everyone else meanwhile.
    other = mp.Client("sse-slow-other", "5")
    other.connect(args.port)
    run.eq("other_client_subscribes", other.subscribe("resp/#", 1), [1])
    pub.publish_wait("resp/mqtt", "mqtt", qos=1)
    r = http.post("/api/v1/publish", json={"topic": "resp/http", "payload": "http", "qos": 1})
    run.eq("http_publish_200_meanwhile", r.status_code, 200, body=r.text)
    mp.pump([other], lambda: len(other.messages) >= 2, 5.0)
    run.eq("other_client_receives_meanwhile", sorted(m.text() for m in other.take()),
           ["http", "mqtt"])
    run.eq("healthz_meanwhile", http.get("/healthz").status_code, 200)
    s2 = Sse(http, {"filter": "resp/#"})
    other.publish_wait("resp/sse", "sse", qos=1)
    e = s2.next_event()
    run.eq("other_sse_stream_receives_meanwhile", e and e["data"]["payload"], "sse")
    s2.close()

    # Now read: a `dropped` event with a positive count comes.
    received, dropped = 0, None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        e = s.next_event()
        if e is None:
            break
        if e["event"] == "dropped":
            dropped = e["data"].get("dropped")
            break
        received += 1
    run.check("dropped_event_with_positive_count", isinstance(dropped, int) and dropped > 0,
              dropped=dropped, received_before=received)
    run.check("dropped_count_at_most_published", isinstance(dropped, int) and dropped <= n,
              dropped=dropped)
    run.info(received_before_dropped_event=received, dropped=dropped)
    # The stream goes on: a message published now arrives, after what was buffered.
    pub.publish_wait("slow/after", "after", qos=1)
    found = False
    while time.monotonic() < deadline:
        e = s.next_event()
        if e is None:
            break
        if e["event"] == "message" and e["data"]["topic"] == "slow/after":
            found = True
            break
        if e["event"] == "message":
            received += 1
        elif e["event"] == "dropped":
            dropped = e["data"].get("dropped")
    run.check("stream_goes_on_after_drops", found)
    # Nothing is lost silently: every message was either sent or counted as dropped.
    run.eq("every_message_sent_or_counted_dropped", received + (dropped or 0), n + 1,
           received=received, dropped=dropped)
    s.close()
    slow_http.close()
    pub.disconnect()
    other.disconnect()


def main():
    p = parser(__doc__)
    p.add_argument("--case", choices=["basic", "events", "resume", "resume_too_old", "slow"],
                   required=True)
    args = p.parse_args()
    run = mp.Run(args, f"http_sse {args.case}")
    http = client(args)
    case = {"basic": basic, "events": events, "resume": resume, "resume_too_old": resume_too_old,
            "slow": slow}[args.case]
    case(run, args, http)
    http.close()
    run.finish()


if __name__ == "__main__":
    main()
