"""Work queues over HTTP, SQS-style (`docs/http.md`), beside an MQTT worker of the same
queue (paho-mqtt 2.x, MQTT 5).

Checks: send and receive in order with receipts and delivery counts; an HTTP worker is
sent only what it asked for (an MQTT worker of the same queue gets the rest); delete is
the acknowledgement (twice: 410); visibility 0 gives a job back (the MQTT worker gets
it, delivery count 2); a short visibility timeout makes the job come back and its old
receipt answer 410; long polling returns when a job arrives; a delayed send; bad
requests answer 400."""

import threading
import time

from http_common import client, mp, parser

Q = "/api/v1/queues/hq"


def send(http, body, **kw):
    return http.post(f"{Q}/messages", json={"body": body, **kw})


def receive(http, **kw):
    r = http.post(f"{Q}/receive", json=kw, timeout=30.0)
    return r.status_code, (r.json().get("messages", []) if r.status_code == 200 else r.text)


def main():
    args = parser(__doc__).parse_args()
    run = mp.Run(args, "http_queues")
    http = client(args)

    codes = [send(http, f"job-{i}").status_code for i in range(5)]
    run.eq("send_200", codes, [200] * 5)
    status, got = receive(http, max_messages=3, wait_seconds=2)
    run.eq("receive_200", status, 200, body=got)
    run.eq("receive_three_in_order", [m["body"] for m in got], ["job-0", "job-1", "job-2"])
    run.eq("first_delivery_count_1", [m["delivery_count"] for m in got], [1, 1, 1])
    run.eq("receipts_distinct", len({m["receipt"] for m in got}), 3)
    receipts = [m["receipt"] for m in got]

    # An MQTT worker of the same queue: the HTTP worker pulls, so the two jobs it did
    # not ask for are the MQTT worker's, and nothing it holds.
    w = mp.Client("http-queues-mqtt-worker", "5")
    w.connect(args.port)
    w.subscribe("$queue/hq", 1)
    mp.pump([w], lambda: len(w.messages) >= 2, 5.0)
    mp.settle([w], 0.3)
    run.eq("mqtt_worker_gets_the_rest", sorted(m.text() for m in w.take()), ["job-3", "job-4"])

    r = http.delete(f"{Q}/messages/{receipts[0]}")
    run.eq("delete_204", r.status_code, 204, body=r.text)
    r = http.delete(f"{Q}/messages/{receipts[0]}")
    run.eq("delete_twice_410", r.status_code, 410, body=r.text)
    run.eq("delete_twice_code", r.json().get("code"), "RECEIPT_EXPIRED")

    r = http.post(f"{Q}/messages/{receipts[1]}/visibility", json={"timeout": 0})
    run.eq("visibility_0_200", r.status_code, 200, body=r.text)
    mp.pump([w], lambda: len(w.messages) >= 1, 5.0)
    back = w.take()
    run.eq("given_back_job_to_mqtt_worker", [m.text() for m in back], ["job-1"])
    run.eq("given_back_delivery_count_2",
           [dict(m.props.get("UserProperty", [])).get("mote-delivery-count")
            for m in back], ["2"])
    r = http.delete(f"{Q}/messages/{receipts[1]}")
    run.eq("given_back_receipt_410", r.status_code, 410, body=r.text)
    r = http.post(f"{Q}/messages/{receipts[2]}/visibility", json={"timeout": 600})
    run.eq("visibility_extend_200", r.status_code, 200, body=r.text)
    r = http.delete(f"{Q}/messages/{receipts[2]}")
    run.eq("delete_after_extend_204", r.status_code, 204, body=r.text)
    w.disconnect()

    # A visibility timeout that runs out: the job comes back, the old receipt is gone.
    send(http, "short")
    status, got = receive(http, max_messages=1, wait_seconds=2, visibility_timeout=1)
    run.eq("short_received", [m["body"] for m in got], ["short"])
    time.sleep(1.6)
    status, again = receive(http, max_messages=1, wait_seconds=3)
    run.eq("short_back_after_timeout", [m["body"] for m in again], ["short"])
    run.eq("short_back_delivery_count_2", [m["delivery_count"] for m in again], [2])
    if got:
        r = http.delete(f"{Q}/messages/{got[0]['receipt']}")
        run.eq("timed_out_receipt_410", r.status_code, 410, body=r.text)
    if again:
        r = http.delete(f"{Q}/messages/{again[0]['receipt']}")
        run.eq("new_receipt_204", r.status_code, 204, body=r.text)

    # Long polling: a receive waiting on an empty queue returns once a job arrives.
    timer = threading.Timer(0.7, lambda: send(client(args), "awaited"))
    timer.start()
    t0 = time.monotonic()
    status, got = receive(http, max_messages=5, wait_seconds=10)
    took = time.monotonic() - t0
    timer.join()
    run.eq("long_poll_gets_the_job", [m["body"] for m in got], ["awaited"])
    run.check("long_poll_returns_early", 0.5 <= took < 5.0, seconds=round(took, 2))
    for m in got:
        http.delete(f"{Q}/messages/{m['receipt']}")
    status, got = receive(http, max_messages=1, wait_seconds=0)
    run.eq("empty_queue_returns_nothing", (status, got), (200, []))

    # A delayed send is not there at once, and is after its delay.
    send(http, "delayed", delay_seconds=1)
    status, got = receive(http, max_messages=1, wait_seconds=0)
    run.eq("delayed_not_yet", got, [])
    status, got = receive(http, max_messages=1, wait_seconds=5)
    run.eq("delayed_arrives", [m["body"] for m in got], ["delayed"])
    for m in got:
        http.delete(f"{Q}/messages/{m['receipt']}")

    r = http.post("/api/v1/queues/bad name/receive", json={})
    run.eq("bad_queue_name_400", r.status_code, 400, body=r.text)
    r = http.post(f"{Q}/receive", json={"max_messages": 0})
    run.eq("bad_max_messages_400", r.status_code, 400, body=r.text)
    r = http.delete(f"{Q}/messages/not-a-receipt")
    run.eq("bad_receipt_400", r.status_code, 400, body=r.text)
    r = http.post(f"{Q}/messages", json={"body": "x", "bogus": 1})
    run.eq("unknown_field_400", r.status_code, 400, body=r.text)
    run.finish()


if __name__ == "__main__":
    main()
