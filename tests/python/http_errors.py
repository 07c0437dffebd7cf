"""Refused HTTP requests and their error bodies.

`--case bad_request`: malformed requests to every endpoint get 400 with a JSON body
`{"code", "message"}` (both non-empty strings) and publish nothing.
`--case too_large`: a body larger than `mqtt.max_packet_size` (`--max-packet-size`) is
refused with 413 by every publish form, and one just under it is published.
`--case too_large_body`: that 413 carries the same JSON error body as every other
refusal of the API.
`--case array_body`: a JSON array where the message object belongs (`["topic",
"payload"]`, serde's positional form of a struct) is refused with 400, not published."""

import base64

from http_common import client, mp, parser


def is_error_body(r):
    """True when `r` has the API's error body: JSON `{"code": str, "message": str}`."""
    try:
        body = r.json()
    except ValueError:
        return False
    return (isinstance(body, dict)
            and isinstance(body.get("code"), str) and body["code"] != ""
            and isinstance(body.get("message"), str) and body["message"] != "")


def refused(run, name, r, status, code=None):
    """Checks status, error body and (when given) the error code of a refusal."""
    run.eq(f"{name}_status_{status}", r.status_code, status, body=r.text)
    run.check(f"{name}_error_body", is_error_body(r), body=r.text)
    if code is not None:
        got = r.json().get("code") if is_error_body(r) else None
        run.eq(f"{name}_code", got, code)


def bad_request(run, http, sub):
    post = lambda body: http.post(  # noqa: E731
        "/api/v1/publish", content=body, headers={"Content-Type": "application/json"})
    refused(run, "bad_json", post(b'{"topic": "err/a", "payload": '), 400, "BAD_REQUEST")
    refused(run, "not_json", post(b'topic=err/a'), 400, "BAD_REQUEST")
    refused(run, "json_string", post(b'"err/a"'), 400, "BAD_REQUEST")
    refused(run, "wildcard_plus_topic", http.post(
        "/api/v1/publish", json={"topic": "err/+", "payload": "x"}), 400, "BAD_TOPIC")
    refused(run, "wildcard_hash_topic", http.post(
        "/api/v1/publish", json={"topic": "err/#", "payload": "x"}), 400, "BAD_TOPIC")
    refused(run, "empty_topic", http.post(
        "/api/v1/publish", json={"topic": "", "payload": "x"}), 400, "BAD_TOPIC")
    refused(run, "qos_3", http.post(
        "/api/v1/publish", json={"topic": "err/a", "payload": "x", "qos": 3}), 400, "BAD_QOS")
    refused(run, "unknown_field", http.post(
        "/api/v1/publish", json={"topic": "err/a", "payload": "x", "colour": "red"}), 400,
        "BAD_REQUEST")
    refused(run, "unknown_property", http.post(
        "/api/v1/publish", json={"topic": "err/a", "properties": {"colour": "red"}}), 400)
    refused(run, "bad_base64", http.post("/api/v1/publish", json={
        "topic": "err/a", "payload": "not base64!", "payload_encoding": "base64"}), 400,
        "BAD_PAYLOAD")
    refused(run, "bad_payload_encoding", http.post("/api/v1/publish", json={
        "topic": "err/a", "payload": "x", "payload_encoding": "hex"}), 400,
        "BAD_PAYLOAD_ENCODING")
    refused(run, "user_property_not_string", http.post("/api/v1/publish", json={
        "topic": "err/a", "properties": {"user_properties": {"n": 1}}}), 400, "BAD_PROPERTIES")
    refused(run, "utf8_indicator_with_binary_payload", http.post("/api/v1/publish", json={
        "topic": "err/a", "payload": base64.b64encode(b"\xff\xfe").decode(),
        "payload_encoding": "base64", "properties": {"payload_format_indicator": True}}), 400,
        "BAD_PAYLOAD")
    refused(run, "bad_authorization_header", http.post(
        "/api/v1/publish", json={"topic": "err/a"}, headers={"Authorization": "Bearer x"}),
        400, "BAD_CREDENTIALS")
    # Raw form.
    refused(run, "raw_wildcard_topic", http.post("/api/v1/publish/err/%2B", content=b"x"), 400,
            "BAD_TOPIC")
    refused(run, "raw_qos_3", http.post("/api/v1/publish/err/a?qos=3", content=b"x"), 400,
            "BAD_QOS")
    refused(run, "raw_unknown_parameter", http.post(
        "/api/v1/publish/err/a?colour=red", content=b"x"), 400)
    # Bulk.
    refused(run, "bulk_not_an_array", http.post(
        "/api/v1/publish/bulk", json={"topic": "err/a"}), 400, "BAD_REQUEST")
    # Subscribe and retained.
    refused(run, "sse_no_filter", http.get("/api/v1/subscribe"), 400, "BAD_FILTER")
    refused(run, "sse_bad_filter", http.get(
        "/api/v1/subscribe", params={"filter": "err/#/x"}), 400, "BAD_FILTER")
    refused(run, "sse_unknown_parameter", http.get(
        "/api/v1/subscribe", params={"filter": "err/#", "colour": "red"}), 400)
    refused(run, "sse_bad_last_event_id", http.get(
        "/api/v1/subscribe", params={"filter": "err/#"}, headers={"Last-Event-ID": "x"}), 400,
        "BAD_LAST_EVENT_ID")
    refused(run, "retained_bad_filter", http.get(
        "/api/v1/retained", params={"filter": "err/#/x"}), 400, "BAD_FILTER")
    refused(run, "retained_shared_filter", http.get(
        "/api/v1/retained", params={"filter": "$share/g/err/#"}), 400, "BAD_FILTER")

    mp.settle([sub], 0.5)
    run.eq("nothing_published", [m.topic for m in sub.take()], [])


def too_large(run, http, sub, limit):
    payload = "x" * (limit + 100)
    r = http.post("/api/v1/publish", json={"topic": "err/big", "payload": payload, "qos": 1})
    run.eq("json_over_limit_413", r.status_code, 413, body=r.text[:200])
    r = http.post("/api/v1/publish/err/big?qos=1", content=payload.encode())
    run.eq("raw_over_limit_413", r.status_code, 413, body=r.text[:200])
    r = http.post("/api/v1/publish/bulk",
                  json=[{"topic": "err/big", "payload": payload[: limit // 2]}] * 3)
    run.eq("bulk_over_limit_413", r.status_code, 413, body=r.text[:200])
    mp.settle([sub], 0.5)
    run.eq("nothing_published", [m.topic for m in sub.take()], [])
    # Under the limit (with room for the packet's headers): published.
    small = "y" * (limit // 2)
    r = http.post("/api/v1/publish/err/small?qos=1", content=small.encode())
    run.eq("raw_under_limit_200", r.status_code, 200, body=r.text[:200])
    mp.pump([sub], lambda: sub.messages, 3.0)
    run.eq("under_limit_delivered", [len(m.payload) for m in sub.take()], [len(small)])


def too_large_body(run, http, limit):
    payload = "x" * (limit + 100)
    r = http.post("/api/v1/publish", json={"topic": "err/big", "payload": payload})
    refused(run, "json_over_limit", r, 413)
    r = http.post("/api/v1/publish/err/big", content=payload.encode())
    refused(run, "raw_over_limit", r, 413)


def array_body(run, http, sub):
    r = http.post("/api/v1/publish", json=["err/array", "positional"])
    refused(run, "array_instead_of_object", r, 400, "BAD_REQUEST")
    r = http.post("/api/v1/publish/bulk", json=[["err/array", "positional"]])
    refused(run, "bulk_item_array_instead_of_object", r, 400, "BAD_REQUEST")
    mp.settle([sub], 0.5)
    run.eq("array_bodies_publish_nothing", [(m.topic, m.text()) for m in sub.take()], [])


def main():
    p = parser(__doc__)
    p.add_argument("--case", choices=["bad_request", "too_large", "too_large_body", "array_body"],
                   required=True)
    p.add_argument("--max-packet-size", type=int, default=4096)
    args = p.parse_args()
    run = mp.Run(args, f"http_errors {args.case}")
    http = client(args)
    sub = mp.Client("http-errors-sub", "5")
    sub.connect(args.port)
    sub.subscribe("err/#", 1)
    if args.case == "bad_request":
        bad_request(run, http, sub)
    elif args.case == "too_large":
        too_large(run, http, sub, args.max_packet_size)
    elif args.case == "too_large_body":
        too_large_body(run, http, args.max_packet_size)
    else:
        array_body(run, http, sub)
    sub.disconnect()
    http.close()
    run.finish()


if __name__ == "__main__":
    main()
