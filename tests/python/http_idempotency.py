"""Idempotent retries of HTTP publishes (`Idempotency-Key`): a retry with the same key
and body gets the first answer again (same status and body, header
`idempotent-replayed: true`) and publishes nothing more, so an MQTT subscriber gets
exactly one message; the same key with another body is refused with 422; two requests
with one key racing each other publish once; the raw form and a 202 answer are
remembered too."""

import threading

from http_common import client, mp, parser


def main():
    args = parser(__doc__).parse_args()
    run = mp.Run(args, "http_idempotency")
    http = client(args)
    sub = mp.Client("http-idem-sub", "5")
    sub.connect(args.port)
    sub.subscribe("idem/#", 1)

    def delivered(seconds=0.5):
        """What the subscriber got, waiting `seconds` for late duplicates."""
        mp.settle([sub], seconds)
        return [(m.topic, m.text()) for m in sub.take()]

    msg = {"topic": "idem/a", "payload": "once", "qos": 1}
    key = {"Idempotency-Key": "key-1"}
    first = http.post("/api/v1/publish", json=msg, headers=key)
    run.eq("first_status_200", first.status_code, 200, body=first.text)
    run.eq("first_not_replayed", first.headers.get("idempotent-replayed"), None)
    second = http.post("/api/v1/publish", json=msg, headers=key)
    run.eq("retry_same_status", second.status_code, first.status_code)
    run.eq("retry_same_body", second.json(), first.json())
    run.eq("retry_replayed_header", second.headers.get("idempotent-replayed"), "true")
    run.eq("exactly_one_message", delivered(), [("idem/a", "once")])

    other = http.post("/api/v1/publish", json={**msg, "payload": "other"}, headers=key)
    run.eq("same_key_other_body_422", other.status_code, 422, body=other.text)
    body = other.json() if other.headers.get("content-type", "").startswith("application/json") \
        else {}
    run.check("same_key_other_body_error_body",
              isinstance(body.get("code"), str) and isinstance(body.get("message"), str),
              body=other.text)
    run.eq("same_key_other_body_publishes_nothing", delivered(), [])

    # A key is not shared between forms: the raw form with the same key is another request.
    raw_key = {"Idempotency-Key": "key-raw", "Content-Type": "text/plain"}
    r1 = http.post("/api/v1/publish/idem/raw?qos=1", content=b"raw-once", headers=raw_key)
    r2 = http.post("/api/v1/publish/idem/raw?qos=1", content=b"raw-once", headers=raw_key)
    run.eq("raw_statuses", (r1.status_code, r2.status_code), (200, 200))
    run.eq("raw_same_body", r2.json(), r1.json())
    run.eq("raw_replayed_header", r2.headers.get("idempotent-replayed"), "true")
    run.eq("raw_exactly_one_message", delivered(), [("idem/raw", "raw-once")])
    r3 = http.post("/api/v1/publish/idem/raw?qos=2", content=b"raw-once", headers=raw_key)
    run.eq("raw_same_key_other_qos_422", r3.status_code, 422, body=r3.text)

    # A 202 (nobody subscribed) is an answer too, and is replayed.
    nobody = {"topic": "nobody/idem", "payload": "x", "qos": 1}
    a = http.post("/api/v1/publish", json=nobody, headers={"Idempotency-Key": "key-202"})
    b = http.post("/api/v1/publish", json=nobody, headers={"Idempotency-Key": "key-202"})
    run.eq("answer_202_replayed", (a.status_code, b.status_code,
                                   b.headers.get("idempotent-replayed")), (202, 202, "true"))

    # Racing retries: both get the one answer, one message is published.
    answers = []
    race = {"topic": "idem/race", "payload": "race", "qos": 2}

    def post():
        with client(args) as c:
            r = c.post("/api/v1/publish", json=race, headers={"Idempotency-Key": "key-race"})
            answers.append((r.status_code, r.json().get("id"),
                            r.headers.get("idempotent-replayed")))

    threads = [threading.Thread(target=post) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    run.eq("race_all_answered", len(answers), 4)
    run.eq("race_one_id", len({a[1] for a in answers}), 1, answers=answers)
    run.eq("race_one_first_answer", sorted(a[2] or "first" for a in answers),
           ["first", "true", "true", "true"], answers=answers)
    run.eq("race_exactly_one_message", delivered(), [("idem/race", "race")])

    # Without a key a retry is a new publish.
    http.post("/api/v1/publish", json={"topic": "idem/nokey", "payload": "n", "qos": 1})
    http.post("/api/v1/publish", json={"topic": "idem/nokey", "payload": "n", "qos": 1})
    run.eq("without_key_twice", delivered(), [("idem/nokey", "n")] * 2)

    r = http.post("/api/v1/publish", json=msg, headers={"Idempotency-Key": "k" * 300})
    run.eq("key_too_long_400", r.status_code, 400, body=r.text)

    sub.disconnect()
    http.close()
    run.finish()


if __name__ == "__main__":
    main()
