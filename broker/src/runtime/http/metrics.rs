//! `GET /metrics`: Prometheus text format (0.0.4).
//!
//! Naming follows Prometheus' rules: the `mote_` prefix, `_total` on counters, base
//! units (seconds, bytes), and no label whose values a client chooses (no client id,
//! no topic); the one exception is `queue`, whose names the operator declares, capped
//! at the 1,000 that `$SYS` also carries.

use std::fmt::Write as _;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::HttpState;
use crate::runtime::shared::Transport;
use crate::store::journal::SYNC_BUCKETS_US;

/// Writes one metric family.
struct Family<'a> {
    out: &'a mut String,
}

impl Family<'_> {
    fn head(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn one(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
        self.head(name, kind, help);
        let _ = writeln!(self.out, "{name} {value}");
    }
}

/// Escapes a label value.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

pub(super) async fn metrics(State(state): State<HttpState>) -> Response {
    let s = state.shared.lock().stats();
    let (refused, evicted) = state.table.stats();
    let (pending, _) = state.table.counts();
    let mut out = String::with_capacity(4096);
    let mut f = Family { out: &mut out };
    f.one(
        "mote_uptime_seconds",
        "gauge",
        "Seconds since the HTTP listener started.",
        state.started.elapsed().as_secs_f64(),
    );
    f.head(
        "mote_connections",
        "gauge",
        "Open connections by transport (internal: the HTTP listener's own MQTT links).",
    );
    for (t, n) in Transport::ALL.iter().zip(state.shared.transports.counts()) {
        let _ = writeln!(f.out, "mote_connections{{transport=\"{}\"}} {n}", t.name());
    }
    let (received, sent) = state.shared.transports.bytes();
    for (name, help, values) in [
        (
            "mote_received_bytes_total",
            "Bytes received from connected clients, by transport.",
            received,
        ),
        (
            "mote_sent_bytes_total",
            "Bytes sent to connected clients, by transport.",
            sent,
        ),
    ] {
        f.head(name, "counter", help);
        for (t, n) in Transport::ALL.iter().zip(values) {
            let _ = writeln!(f.out, "{name}{{transport=\"{}\"}} {n}", t.name());
        }
    }
    let (hold_max_us, _) = state.shared.hold_times();
    f.one(
        "mote_core_lock_held_seconds_total",
        "counter",
        "Seconds the core's lock was held, in all: its rate is the share of one core the \
         protocol core's own work takes, the broker's ceiling while one lock serves every \
         connection.",
        state.shared.held_us() as f64 / 1e6,
    );
    f.one(
        "mote_core_lock_hold_max_seconds",
        "gauge",
        "The longest single hold of the core's lock since start.",
        hold_max_us as f64 / 1e6,
    );
    f.one(
        "mote_connections_pending",
        "gauge",
        "Sockets that have not completed CONNECT (HTTP sockets before their first request).",
        pending,
    );
    f.one(
        "mote_connections_refused_total",
        "counter",
        "Connections refused by the connection table.",
        refused,
    );
    f.one(
        "mote_connections_evicted_total",
        "counter",
        "Connections evicted to make room.",
        evicted,
    );
    f.one(
        "mote_logins_refused_total",
        "counter",
        "CONNECTs refused for bad credentials or throttling.",
        state.shared.auth.logins_refused(),
    );
    f.one(
        "mote_clients_connected",
        "gauge",
        "Clients with a live session.",
        s.clients_connected,
    );
    f.one(
        "mote_sessions",
        "gauge",
        "Sessions, live or not.",
        s.sessions,
    );
    f.one(
        "mote_subscriptions",
        "gauge",
        "Subscriptions.",
        s.subscriptions,
    );
    f.one(
        "mote_retained_messages",
        "gauge",
        "Retained messages.",
        s.retained,
    );
    f.one(
        "mote_retained_bytes",
        "gauge",
        "Bytes of retained messages.",
        s.retained_bytes,
    );
    f.one(
        "mote_messages_received_total",
        "counter",
        "PUBLISH packets received.",
        s.received,
    );
    f.one(
        "mote_messages_delivered_total",
        "counter",
        "Messages delivered to subscribers.",
        s.delivered,
    );
    f.head(
        "mote_messages_dropped_total",
        "counter",
        "Messages dropped, by reason.",
    );
    for (reason, n) in [
        ("queue_full", s.dropped_overflow),
        ("expired", s.expired),
        ("publish_denied", s.denied_publish),
    ] {
        let _ = writeln!(
            f.out,
            "mote_messages_dropped_total{{reason=\"{reason}\"}} {n}"
        );
    }
    f.one(
        "mote_subscriptions_denied_total",
        "counter",
        "Subscriptions refused by the access rules.",
        s.denied_subscribe,
    );
    f.one(
        "mote_messages_queued",
        "gauge",
        "Messages queued for sessions.",
        s.queued,
    );
    f.one(
        "mote_queued_memory_bytes",
        "gauge",
        "Bytes of queued messages held in memory.",
        s.queued_memory,
    );
    f.one(
        "mote_messages_spilled",
        "gauge",
        "Queued messages kept on disk instead of memory.",
        s.spilled,
    );
    f.one(
        "mote_messages_delayed",
        "gauge",
        "Delayed publishes waiting.",
        s.delayed,
    );
    if !s.queues.is_empty() {
        for (name, help, get) in [
            (
                "mote_queue_depth",
                "Work queue messages waiting.",
                (|q: &crate::proto::QueueStats| q.depth) as fn(&_) -> u64,
            ),
            (
                "mote_queue_inflight",
                "Work queue messages held by consumers.",
                |q| q.inflight,
            ),
            ("mote_queue_consumers", "Work queue consumers.", |q| {
                q.consumers
            }),
        ] {
            f.head(name, "gauge", help);
            for (q, stats) in &s.queues {
                let _ = writeln!(f.out, "{name}{{queue=\"{}\"}} {}", label(q), get(stats));
            }
        }
        f.head(
            "mote_queue_dead_lettered_total",
            "counter",
            "Work queue messages dead-lettered.",
        );
        for (q, stats) in &s.queues {
            let _ = writeln!(
                f.out,
                "mote_queue_dead_lettered_total{{queue=\"{}\"}} {}",
                label(q),
                stats.dead_lettered
            );
        }
    }
    if !s.streams.is_empty() {
        for (name, help, get) in [
            (
                "mote_stream_messages",
                "Messages a stream keeps.",
                (|s: &crate::proto::streams::StreamStats| s.messages) as fn(&_) -> u64,
            ),
            ("mote_stream_bytes", "Bytes a stream keeps.", |s| s.bytes),
            (
                "mote_stream_first_offset",
                "A stream's first offset kept.",
                |s| s.first_offset,
            ),
        ] {
            f.head(name, "gauge", help);
            for (n, stats) in &s.streams {
                let _ = writeln!(f.out, "{name}{{stream=\"{}\"}} {}", label(n), get(stats));
            }
        }
        f.head(
            "mote_stream_group_lag",
            "gauge",
            "Messages a consumer group has not committed yet.",
        );
        for (n, stats) in &s.streams {
            for (group, _, lag) in &stats.groups {
                let _ = writeln!(
                    f.out,
                    "mote_stream_group_lag{{stream=\"{}\",group=\"{}\"}} {lag}",
                    label(n),
                    label(group)
                );
            }
        }
    }
    if let Some(j) = &state.shared.journal {
        let (buckets, sum_us) = j.sync_latency.read();
        f.head(
            "mote_store_sync_duration_seconds",
            "histogram",
            "Duration of the store's write-and-sync of a batch of records.",
        );
        let mut cumulative = 0;
        for (bound, n) in SYNC_BUCKETS_US.iter().zip(buckets) {
            cumulative += n;
            let _ = writeln!(
                f.out,
                "mote_store_sync_duration_seconds_bucket{{le=\"{}\"}} {cumulative}",
                *bound as f64 / 1e6
            );
        }
        cumulative += buckets[SYNC_BUCKETS_US.len()];
        let _ = writeln!(
            f.out,
            "mote_store_sync_duration_seconds_bucket{{le=\"+Inf\"}} {cumulative}"
        );
        let _ = writeln!(
            f.out,
            "mote_store_sync_duration_seconds_sum {}",
            sum_us as f64 / 1e6
        );
        let _ = writeln!(f.out, "mote_store_sync_duration_seconds_count {cumulative}");
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response()
}
