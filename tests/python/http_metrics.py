"""`GET /metrics` read by Prometheus's own parser
(`prometheus_client.parser.text_string_to_metric_families`): every family is named
`mote_...`; every counter sample ends in `_total`; no label names a client or a topic
(unbounded cardinality); `mote_messages_received_total` grows with a publish;
`mote_connections{transport="http"}` is there. With `--histogram` (a broker with an
on-disk store) the store's sync-duration histogram is well formed: cumulative buckets,
`+Inf` equal to `_count`."""

from prometheus_client.parser import text_string_to_metric_families

from http_common import client, mp, parser, wait_until

FORBIDDEN_LABELS = {"client", "client_id", "clientid", "topic", "user", "username"}


def scrape(http):
    r = http.get("/metrics")
    return r, list(text_string_to_metric_families(r.text))


def sample(families, name, labels=None):
    for f in families:
        for s in f.samples:
            if s.name == name and (labels is None or s.labels == labels):
                return s.value
    return None


def main():
    p = parser(__doc__)
    p.add_argument("--histogram", action="store_true")
    args = p.parse_args()
    run = mp.Run(args, "http_metrics")
    http = client(args)

    r, families = scrape(http)
    run.eq("status_200", r.status_code, 200)
    run.check("content_type_prometheus_text",
              r.headers.get("content-type", "").startswith("text/plain"),
              content_type=r.headers.get("content-type"))
    run.check("parsed_some_families", len(families) >= 10, families=len(families))
    run.eq("names_start_with_mote",
           [f.name for f in families if not f.name.startswith("mote_")], [])
    bad_counters = [s.name for f in families if f.type == "counter" for s in f.samples
                    if not s.name.endswith("_total")]
    run.eq("counter_samples_end_in_total", bad_counters, [])
    run.check("has_counters", any(f.type == "counter" for f in families))
    labels = {k for f in families for s in f.samples for k in s.labels}
    run.eq("no_client_or_topic_labels", sorted(labels & FORBIDDEN_LABELS), [],
           labels=sorted(labels))
    run.eq("every_family_has_help", [f.name for f in families if not f.documentation], [])
    http_conns = sample(families, "mote_connections", {"transport": "http"})
    run.check("connections_http_present", http_conns is not None and http_conns >= 1,
              value=http_conns)
    for t in ("tcp", "ws", "internal"):
        run.check(f"connections_{t}_present",
                  sample(families, "mote_connections", {"transport": t}) is not None)

    held = sample(families, "mote_core_lock_held_seconds_total")
    before = sample(families, "mote_messages_received_total")
    run.check("received_total_present", before is not None)
    pub = mp.Client("http-metrics-pub", "5")
    pub.connect(args.port)
    pub.publish_wait("metrics/x", "x", qos=1)
    http.post("/api/v1/publish", json={"topic": "metrics/y", "payload": "y", "qos": 1})
    after = wait_until(
        lambda: (sample(scrape(http)[1], "mote_messages_received_total") or 0) >= (before or 0) + 2,
        3.0)
    run.check("received_total_grows_with_publishes", after, before=before,
              now=sample(scrape(http)[1], "mote_messages_received_total"))
    held_after = sample(scrape(http)[1], "mote_core_lock_held_seconds_total")
    run.check("core_lock_held_grows", held is not None and held_after is not None and held_after > held,
              before=held, after=held_after)
    pub.disconnect()

    if args.histogram:
        _, families = scrape(http)
        h = [f for f in families if f.name == "mote_store_sync_duration_seconds"]
        run.eq("histogram_present", [f.type for f in h], ["histogram"])
        if h:
            buckets = [(s.labels["le"], s.value) for s in h[0].samples
                       if s.name.endswith("_bucket")]
            counts = [v for _, v in buckets]
            run.check("histogram_buckets_cumulative", counts == sorted(counts), buckets=buckets)
            run.eq("histogram_last_bucket_inf", buckets[-1][0] if buckets else None, "+Inf")
            total = sample(families, "mote_store_sync_duration_seconds_count")
            run.eq("histogram_inf_equals_count", buckets[-1][1] if buckets else None, total)
            run.check("histogram_counted_syncs", (total or 0) > 0, count=total)
    http.close()
    run.finish()


if __name__ == "__main__":
    main()
