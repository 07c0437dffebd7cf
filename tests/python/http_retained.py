"""Retained messages over HTTP and the plain endpoints.

`--case retained`: five retained topics published over HTTP are listed by
`GET /api/v1/retained?filter=...&limit=2` in three pages linked by `next`/`after`, each
topic exactly once, in order, with payload, QoS and properties, and nothing outside the
filter (nor a `$SYS` topic under the default filter `#`);
`DELETE /api/v1/retained/{topic}` answers 204, after which the topic is neither listed
nor sent to a new MQTT subscriber.
`--case endpoints`: `/healthz`, `/readyz`, `/api/v1/stats`, `/ui/` (HTML), and `/`
without a WebSocket upgrade redirecting to `/ui/`."""

from http_common import client, mp, parser, wait_until

TOPICS = ["ret/a/1", "ret/a/2", "ret/b", "ret/c/d/e", "ret/z"]


def list_all(run, http, flt, limit):
    """Every page of the listing of `flt`; returns (pages, items)."""
    pages, items, after = [], [], None
    for _ in range(10):
        params = {"filter": flt, "limit": limit}
        if after is not None:
            params["after"] = after
        r = http.get("/api/v1/retained", params=params)
        if r.status_code != 200:
            run.check("list_status_200", False, status=r.status_code, body=r.text)
            break
        body = r.json()
        pages.append([m["topic"] for m in body["data"]])
        items.extend(body["data"])
        after = body.get("next")
        if after is None:
            break
    return pages, items


def retained(run, http, port):
    for i, t in enumerate(TOPICS):
        r = http.post("/api/v1/publish", json={
            "topic": t, "payload": f"v{i}", "qos": 1, "retain": True,
            "properties": {"content_type": "text/plain", "user_properties": [["i", str(i)]]}})
        run.eq(f"retain_{t}_accepted", r.status_code in (200, 202), True, status=r.status_code)
    http.post("/api/v1/publish", json={"topic": "other/x", "payload": "o", "qos": 1,
                                       "retain": True})

    pages, items = list_all(run, http, "ret/#", 2)
    run.eq("three_pages_of_2_2_1", [len(p) for p in pages], [2, 2, 1], pages=pages)
    run.eq("each_topic_once_in_order", [m["topic"] for m in items], TOPICS)
    run.eq("payloads", [m.get("payload") for m in items], [f"v{i}" for i in range(5)])
    run.eq("payload_encoding_text", {m.get("payload_encoding") for m in items}, {"text"})
    run.eq("qos", {m.get("qos") for m in items}, {1})
    run.eq("properties", [m.get("properties") for m in items],
           [{"content_type": "text/plain", "user_properties": [["i", str(i)]]}
            for i in range(5)])

    r = http.get("/api/v1/retained", params={"filter": "ret/+/1"})
    run.eq("single_level_filter", [m["topic"] for m in r.json()["data"]], ["ret/a/1"])
    r = http.get("/api/v1/retained")
    listed = [m["topic"] for m in r.json()["data"]]
    run.eq("default_filter_lists_all_but_sys", sorted(listed), sorted(TOPICS + ["other/x"]))

    r = http.delete("/api/v1/retained/ret/b")
    run.eq("delete_status_204", r.status_code, 204, body=r.text)
    run.eq("delete_empty_body", r.content, b"")
    _, items = list_all(run, http, "ret/#", 2)
    run.eq("deleted_not_listed", [m["topic"] for m in items],
           [t for t in TOPICS if t != "ret/b"])
    sub = mp.Client("http-retained-sub", "5")
    sub.connect(port)
    sub.subscribe("ret/#", 1)
    mp.pump([sub], lambda: len(sub.messages) >= 4, 3.0)
    mp.settle([sub], 0.3)
    run.eq("deleted_not_sent_to_new_subscriber", sorted(m.topic for m in sub.take()),
           sorted(t for t in TOPICS if t != "ret/b"))
    sub.disconnect()
    r = http.delete("/api/v1/retained/ret/%2B")
    run.eq("delete_wildcard_400", r.status_code, 400, body=r.text)


def endpoints(run, http):
    r = http.get("/healthz")
    run.eq("healthz_200", r.status_code, 200)
    r = http.get("/readyz")
    run.eq("readyz_200", r.status_code, 200, body=r.text)
    r = http.get("/api/v1/stats")
    run.eq("stats_200", r.status_code, 200)
    s = r.json()
    run.check("stats_fields", all(k in s for k in (
        "version", "uptime_secs", "connections", "clients_connected", "sessions",
        "subscriptions", "retained", "messages")), body=s)
    run.check("stats_messages_fields",
              all(isinstance(s.get("messages", {}).get(k), int)
                  for k in ("received", "delivered", "dropped", "queued")), body=s)
    before = s["messages"]["received"]
    http.post("/api/v1/publish", json={"topic": "stats/x", "payload": "x", "qos": 1})
    got = wait_until(lambda: http.get("/api/v1/stats").json()["messages"]["received"] > before,
                     3.0)
    run.check("stats_received_counts_a_publish", got)

    r = http.get("/ui/")
    run.eq("ui_200", r.status_code, 200)
    run.check("ui_is_html", r.headers.get("content-type", "").startswith("text/html"),
              content_type=r.headers.get("content-type"))
    run.check("ui_body_is_html", "<html" in r.text.lower(), start=r.text[:80])
    r = http.get("/ui")
    run.check("ui_without_slash_redirects", r.status_code in (301, 308)
              and r.headers.get("location") == "/ui/", status=r.status_code,
              location=r.headers.get("location"))
    r = http.get("/")
    run.check("root_redirects_to_ui", r.status_code in (302, 303, 307)
              and r.headers.get("location") == "/ui/", status=r.status_code,
              location=r.headers.get("location"))
    r = http.get("/", follow_redirects=True)
    run.check("root_followed_is_the_dashboard", r.status_code == 200
              and r.headers.get("content-type", "").startswith("text/html"),
              status=r.status_code, url=str(r.url))


def main():
    p = parser(__doc__)
    p.add_argument("--case", choices=["retained", "endpoints"], required=True)
    args = p.parse_args()
    run = mp.Run(args, f"http_retained {args.case}")
    http = client(args)
    if args.case == "retained":
        retained(run, http, args.port)
    else:
        endpoints(run, http)
    http.close()
    run.finish()


if __name__ == "__main__":
    main()
