//! `$SYS/broker/...`: the broker's counters published as retained messages.

use super::*;

/// What the runtime knows and the core does not: sockets before CONNECT, the
/// connections the connection table refused or evicted, and how long the core's lock is
/// held.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct RuntimeStats {
    /// Sockets open that have not completed CONNECT.
    pub(crate) pending: usize,
    /// Connections refused (table full, or a per-address limit).
    pub(crate) refused: u64,
    /// Connections evicted to make room (idle or pre-CONNECT).
    pub(crate) evicted: u64,
    /// Logins refused (bad credentials, anonymous not allowed, throttled).
    pub(crate) logins_refused: u64,
    /// Longest hold of the core's lock since start, microseconds.
    pub(crate) hold_max_us: u64,
    /// 99.9th percentile of the core's lock hold times (bucket upper bound), microseconds.
    pub(crate) hold_p999_us: u64,
    /// Time the core's lock was held in all since start, microseconds.
    pub(crate) held_us: u64,
}

/// Work queues whose counters `$SYS` carries at most (in name order).
const SYS_QUEUES: usize = 1000;

/// The broker's counters at one moment (the HTTP stats endpoint and metrics).
#[derive(Debug, Clone, Default)]
pub(crate) struct CoreStats {
    /// Clients with a live connection (queue and delayed-message stores excluded).
    pub(crate) clients_connected: usize,
    /// Sessions, live or not.
    pub(crate) sessions: usize,
    pub(crate) subscriptions: usize,
    pub(crate) retained: usize,
    pub(crate) retained_bytes: usize,
    pub(crate) received: u64,
    pub(crate) delivered: u64,
    pub(crate) dropped_overflow: u64,
    pub(crate) expired: u64,
    pub(crate) denied_publish: u64,
    pub(crate) denied_subscribe: u64,
    pub(crate) queued: usize,
    pub(crate) queued_memory: usize,
    pub(crate) spilled: usize,
    pub(crate) delayed: usize,
    /// Per work queue: name, depth, in flight, consumers, dead-lettered.
    pub(crate) queues: Vec<(String, QueueStats)>,
    /// Per stream: name, offsets, size, groups.
    pub(crate) streams: Vec<(String, streams::StreamStats)>,
}

impl Core {
    /// The counters, for the HTTP listener. O(sessions).
    pub(crate) fn stats(&self) -> CoreStats {
        let is_store = |k: &str| k.starts_with(queues::QUEUE_PREFIX) || k == delayed::STORE_ID;
        let (mut online, mut sessions, mut queued, mut expired) = (0, 0, 0, 0);
        for (k, s) in self.shards.iter() {
            queued += s.queued_len();
            expired += s.drops().expired;
            if !is_store(k) {
                sessions += 1;
                online += usize::from(s.online());
            }
        }
        CoreStats {
            clients_connected: online,
            sessions,
            subscriptions: self.subs.len(),
            retained: self.retained.len(),
            retained_bytes: self.retained_bytes,
            received: self.stats.publish_received,
            delivered: self.stats.deliveries,
            dropped_overflow: self.stats.dropped_overflow,
            expired,
            denied_publish: self.stats.publish_denied,
            denied_subscribe: self.stats.subscribe_denied,
            queued,
            queued_memory: self.queued_memory(),
            spilled: self.spilled().0,
            delayed: self.delayed.len(),
            queues: self.queue_stats().into_iter().take(SYS_QUEUES).collect(),
            streams: self.stream_stats().into_iter().take(SYS_QUEUES).collect(),
        }
    }

    /// Up to `limit` retained messages whose topics match `filter`, after `after`, and
    /// where the next page starts (`None`: this was the last).
    pub(crate) fn retained_page(
        &self,
        filter: &str,
        after: Option<&str>,
        limit: usize,
    ) -> (Vec<Arc<Message>>, Option<String>) {
        let mut page = Vec::new();
        let after = after.map(retained::Cursor::after);
        let next = self
            .retained
            .for_each_match(filter, after.as_ref(), limit, |_, m| page.push(m.clone()));
        (page, next.and_then(|c| c.topic().map(str::to_owned)))
    }

    /// Publishes the broker's counters under `$SYS/broker/` (retained, QoS 0).
    pub(crate) fn publish_sys(
        &mut self,
        uptime: Duration,
        runtime: RuntimeStats,
        now: Instant,
        fx: &mut Effects,
    ) {
        let st = self.stats();
        let values: [(&str, String); 26] = [
            ("version", format!("mote {}", env!("CARGO_PKG_VERSION"))),
            ("uptime", format!("{} seconds", uptime.as_secs())),
            ("clients/connected", st.clients_connected.to_string()),
            ("clients/total", st.sessions.to_string()),
            ("subscriptions/count", st.subscriptions.to_string()),
            ("retained/count", st.retained.to_string()),
            ("retained/bytes", st.retained_bytes.to_string()),
            ("retained/refused", self.stats.retained_refused.to_string()),
            ("messages/received", st.received.to_string()),
            ("messages/delivered", st.delivered.to_string()),
            ("messages/queued", st.queued.to_string()),
            ("messages/dropped", st.dropped_overflow.to_string()),
            ("messages/expired", st.expired.to_string()),
            ("messages/spilled", st.spilled.to_string()),
            ("messages/denied", st.denied_publish.to_string()),
            ("messages/delayed", st.delayed.to_string()),
            ("subscriptions/denied", st.denied_subscribe.to_string()),
            ("memory/queued", st.queued_memory.to_string()),
            ("clients/pending", runtime.pending.to_string()),
            ("connections/refused", runtime.refused.to_string()),
            ("clients/login_refused", runtime.logins_refused.to_string()),
            ("connections/evicted", runtime.evicted.to_string()),
            ("core/hold_max_us", runtime.hold_max_us.to_string()),
            ("core/hold_p999_us", runtime.hold_p999_us.to_string()),
            ("core/held_us", runtime.held_us.to_string()),
            (
                "publishers/paused",
                self.stats.publishers_paused.to_string(),
            ),
        ];
        for (name, value) in values {
            let topic = format!("$SYS/broker/{name}");
            self.publish_system(&topic, Bytes::from(value), true, now, fx);
        }
        for (name, stats) in st.streams {
            let last = stats.last_offset.map_or("-1".to_owned(), |l| l.to_string());
            let values = [
                ("first_offset", stats.first_offset.to_string()),
                ("last_offset", last),
                ("messages", stats.messages.to_string()),
                ("bytes", stats.bytes.to_string()),
            ];
            for (key, value) in values {
                let topic = format!("$SYS/broker/streams/{name}/{key}");
                self.publish_system(&topic, Bytes::from(value), true, now, fx);
            }
            for (group, committed, lag) in stats.groups {
                for (key, value) in [("committed", committed), ("lag", lag)] {
                    let topic = format!("$SYS/broker/streams/{name}/groups/{group}/{key}");
                    self.publish_system(&topic, Bytes::from(value.to_string()), true, now, fx);
                }
            }
        }
        for (name, stats) in st.queues {
            for (key, value) in [
                ("depth", stats.depth),
                ("inflight", stats.inflight),
                ("consumers", stats.consumers),
                ("dead_lettered", stats.dead_lettered),
                ("delayed", stats.delayed),
            ] {
                let topic = format!("$SYS/broker/queues/{name}/{key}");
                self.publish_system(&topic, Bytes::from(value.to_string()), true, now, fx);
            }
        }
    }

    /// Publishes a broker-originated message (e.g. `$SYS`).
    pub(crate) fn publish_system(
        &mut self,
        topic: &str,
        payload: Bytes,
        retain: bool,
        now: Instant,
        fx: &mut Effects,
    ) {
        let msg = Message {
            mid: self.mid(),
            topic: Arc::from(topic),
            payload,
            qos: QoS::AtMostOnce,
            retain,
            payload_format_indicator: None,
            content_type: None,
            response_topic: None,
            correlation_data: None,
            user_properties: encode_user_properties(&Properties::default()),
            expires_at: None,
            publisher: None,
            stored_epoch: std::sync::atomic::AtomicU64::new(0),
        };
        self.publish(Arc::new(msg), now, fx);
    }
}
