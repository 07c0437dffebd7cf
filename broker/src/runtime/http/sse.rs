//! HTTP subscribe as Server-Sent Events: `GET /api/v1/subscribe?filter=...`.
//!
//! - Each message is one `message` event whose data is one JSON line (topic, qos,
//!   retain, properties, payload rendered by [`super::event`]) and whose id counts up.
//! - Without `client_id` the stream is a clean MQTT session: QoS 0 by default, and when
//!   the reader falls `http.sse_buffer` events behind, QoS 0 messages are dropped and a
//!   `dropped` event says how many so far.
//! - With `client_id` the stream is backed by that MQTT session (QoS 1, kept for
//!   `session_expiry` seconds): messages published while no stream is open are queued
//!   by the broker. The last events sent are kept (up to `http.sse_buffer`, 256 KiB), so
//!   a reconnect with `Last-Event-ID` (header, or `last_event_id` parameter) gets
//!   exactly the events after that id: none lost, none twice. A `Last-Event-ID` older
//!   than what is kept gets a `dropped` event naming how many were lost.
//! - Keep-alive comments every `http.sse_keepalive_secs`.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use mote_codec::QoS;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use super::link::{Incoming, Link, LinkConfig, Subscription};
use super::{link_error, ApiError, Conn, Credentials, HttpState};
use crate::json::{is_event, render_payload, Format};

/// Filters one stream may name.
const MAX_FILTERS: usize = 100;

/// Named sessions whose recent events are kept (the oldest is forgotten first).
const MAX_SESSIONS: usize = 1000;

/// Bytes of recent events kept per named session.
const RING_BYTES: usize = 256 * 1024;

/// Default lifetime of a named session, seconds.
const DEFAULT_SESSION_EXPIRY: u32 = 3600;

/// The recent events of named sessions, by client id.
#[derive(Debug, Default)]
pub(super) struct Sessions {
    map: Mutex<Rings>,
}

/// Rings by client id, and the ids in the order they were first seen.
type Rings = (ahash::HashMap<String, Arc<Mutex<Ring>>>, VecDeque<String>);

impl Sessions {
    fn ring(&self, client_id: &str) -> Arc<Mutex<Ring>> {
        let mut guard = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let (map, order) = &mut *guard;
        if let Some(r) = map.get(client_id) {
            return r.clone();
        }
        if map.len() >= MAX_SESSIONS {
            if let Some(old) = order.pop_front() {
                map.remove(&old);
            }
        }
        // Ids of a new ring start past every id an earlier ring of this client id
        // (before a restart, or before it was forgotten) can have sent.
        let base = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
            .saturating_mul(1000);
        let r = Arc::new(Mutex::new(Ring {
            base,
            last: base,
            ..Ring::default()
        }));
        map.insert(client_id.to_owned(), r.clone());
        order.push_back(client_id.to_owned());
        r
    }
}

/// A named session's recent events.
#[derive(Debug, Default)]
struct Ring {
    /// Ids start after this (the ring's creation time in µs): an id below it was sent
    /// before the ring existed.
    base: u64,
    /// The id of the last event sent.
    last: u64,
    events: VecDeque<(u64, Arc<str>)>,
    bytes: usize,
}

impl Ring {
    fn push(&mut self, data: Arc<str>, max_events: usize) -> u64 {
        self.last += 1;
        self.bytes += data.len();
        self.events.push_back((self.last, data));
        while self.events.len() > max_events || self.bytes > RING_BYTES {
            match self.events.pop_front() {
                Some((_, d)) => self.bytes -= d.len(),
                None => break,
            }
        }
        self.last
    }

    /// Events after `id`, and how many after it are no longer kept; `None` when `id`
    /// is not one of this ring's (sent before it existed, or never).
    #[allow(clippy::type_complexity)]
    fn after(&self, id: u64) -> Option<(Vec<(u64, Arc<str>)>, u64)> {
        if id < self.base || id > self.last {
            return None;
        }
        let first_kept = self.events.front().map_or(self.last + 1, |(s, _)| *s);
        let lost = first_kept
            .saturating_sub(id + 1)
            .min(self.last.saturating_sub(id));
        let replay = self
            .events
            .iter()
            .filter(|(s, _)| *s > id)
            .cloned()
            .collect();
        Some((replay, lost))
    }
}

/// The query, parsed by hand: `filter` repeats.
#[derive(Debug, Default)]
struct Params {
    filters: Vec<String>,
    qos: Option<u8>,
    client_id: Option<String>,
    session_expiry: Option<u32>,
    format: Option<String>,
    last_event_id: Option<String>,
}

fn params(uri: &Uri) -> Result<Params, String> {
    let mut p = Params::default();
    for (k, v) in query_pairs(uri.query().unwrap_or(""))? {
        match k.as_str() {
            "filter" => p.filters.push(v),
            "qos" => p.qos = Some(v.parse().map_err(|_| "qos must be 0 or 1")?),
            "client_id" => p.client_id = Some(v),
            "session_expiry" => {
                p.session_expiry = Some(v.parse().map_err(|_| "session_expiry must be seconds")?)
            }
            "format" => p.format = Some(v),
            "last_event_id" => p.last_event_id = Some(v),
            other => return Err(format!("unknown parameter {other:?}")),
        }
    }
    Ok(p)
}

/// `application/x-www-form-urlencoded` pairs.
fn query_pairs(q: &str) -> Result<Vec<(String, String)>, String> {
    serde_urlencoded::from_str(q).map_err(|e| format!("bad query: {e}"))
}

/// `GET /api/v1/subscribe`.
pub(super) async fn subscribe(
    State(state): State<HttpState>,
    Extension(conn): Extension<Conn>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    let creds = Credentials::from_headers(&headers)?;
    let p = params(&uri).map_err(|e| ApiError::bad("BAD_REQUEST", e))?;
    if p.filters.is_empty() || p.filters.len() > MAX_FILTERS {
        return Err(ApiError::bad(
            "BAD_FILTER",
            format!("give 1 to {MAX_FILTERS} filter parameters"),
        ));
    }
    if let Some(f) = p
        .filters
        .iter()
        .find(|f| !mote_codec::topic::is_valid_filter(f))
    {
        return Err(ApiError::bad(
            "BAD_FILTER",
            format!("{f:?} is not an MQTT topic filter"),
        ));
    }
    let format = Format::parse(p.format.as_deref())?;
    let last_event_id = match headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or(p.last_event_id)
        .map(|v| v.trim().parse::<u64>())
    {
        None => None,
        Some(Ok(id)) => Some(id),
        Some(Err(_)) => {
            return Err(ApiError::bad(
                "BAD_LAST_EVENT_ID",
                "Last-Event-ID must be the id of an event this endpoint sent",
            ))
        }
    };
    let cfg = &state.shared.config.http;
    let named = p.client_id.is_some();
    let qos = match (named, p.qos) {
        (true, _) => QoS::AtLeastOnce,
        (false, None | Some(0)) => QoS::AtMostOnce,
        (false, Some(1)) => QoS::AtLeastOnce,
        (false, Some(_)) => return Err(ApiError::bad("BAD_QOS", "qos must be 0 or 1")),
    };
    let client_id = p
        .client_id
        .clone()
        .unwrap_or_else(|| format!("sse-{:016x}", ahash::RandomState::new().hash_one(conn.peer)));
    let (tx, rx) = mpsc::channel(cfg.sse_buffer);
    let link_cfg = LinkConfig {
        client_id: client_id.clone(),
        clean_start: !named,
        session_expiry: if named {
            p.session_expiry.unwrap_or(DEFAULT_SESSION_EXPIRY)
        } else {
            0
        },
        username: creds.username.clone(),
        password: creds.password.clone(),
        receive_maximum: cfg.sse_window,
        peer: conn.peer,
        max_buffered_bytes: cfg.sse_buffer_bytes,
    };
    let link = Link::connect(&state, link_cfg, Some(tx))
        .await
        .map_err(|e| link_error(&e))?;
    let sub = Subscription {
        filters: p.filters.iter().map(|f| (f.clone(), qos)).collect(),
        user_properties: Vec::new(),
    };
    match link.subscribe(sub).await {
        Ok(codes) if codes.iter().all(|&c| c < 0x80) => {}
        Ok(codes) => {
            let refused: Vec<Value> = p
                .filters
                .iter()
                .zip(codes)
                .filter(|(_, c)| *c >= 0x80)
                .map(|(f, c)| json!({"filter": f, "reason_code": c}))
                .collect();
            let status = if refused.iter().any(|r| r["reason_code"] == 0x87) {
                StatusCode::FORBIDDEN
            } else {
                StatusCode::BAD_REQUEST
            };
            return Ok((
                status,
                axum::Json(json!({"code": "SUBSCRIBE_REFUSED", "message": "the broker refused a filter", "refused": refused})),
            )
                .into_response());
        }
        Err(e) => return Err(link_error(&e)),
    }
    let ring = named.then(|| state.sse.ring(&client_id));
    let mut pending = VecDeque::new();
    if let (Some(ring), Some(id)) = (&ring, last_event_id) {
        let known = ring.lock().unwrap_or_else(|p| p.into_inner()).after(id);
        match known {
            // Sent before this broker run (or before the client id was forgotten): what
            // was on its way then cannot be replayed. Queued messages still come.
            None => pending.push_back(
                Event::default().event("reset").data(
                    json!({"reason": "unknown Last-Event-ID: events sent before it may be lost"})
                        .to_string(),
                ),
            ),
            Some((replay, lost)) => {
                if lost > 0 {
                    pending.push_back(
                        Event::default()
                            .event("dropped")
                            .data(json!({"dropped": lost, "reason": "resume"}).to_string()),
                    );
                }
                for (seq, data) in replay {
                    pending.push_back(
                        Event::default()
                            .event("message")
                            .id(seq.to_string())
                            .data(&*data),
                    );
                }
            }
        }
    }
    let stream = Stream {
        link,
        rx,
        ring,
        pending,
        next_id: 0,
        reported_dropped: 0,
        max_events: cfg.sse_buffer,
        format,
        event_topics: state.shared.config.mqtt.event_topics.clone(),
        shutdown: state.shutdown.clone(),
    };
    let events = futures_util::stream::unfold(stream, |mut s| async move {
        let e = s.next().await?;
        Some((Ok::<_, Infallible>(e), s))
    });
    Ok(Sse::new(events)
        .keep_alive(
            KeepAlive::new()
                .interval(Duration::from_secs(cfg.sse_keepalive_secs))
                .text("keep-alive"),
        )
        .into_response())
}

/// One SSE stream's state.
struct Stream {
    link: Link,
    rx: mpsc::Receiver<Incoming>,
    ring: Option<Arc<Mutex<Ring>>>,
    /// Events to send before new ones (a resume's replay).
    pending: VecDeque<Event>,
    /// Ids of an unnamed stream.
    next_id: u64,
    reported_dropped: u64,
    max_events: usize,
    format: Format,
    event_topics: Vec<String>,
    shutdown: tokio_util::sync::CancellationToken,
}

impl Stream {
    /// The next event; `None` ends the stream (the link closed, or shutdown).
    async fn next(&mut self) -> Option<Event> {
        if let Some(e) = self.pending.pop_front() {
            return Some(e);
        }
        let dropped = self.link.dropped();
        if dropped > self.reported_dropped {
            self.reported_dropped = dropped;
            return Some(
                Event::default()
                    .event("dropped")
                    .data(json!({"dropped": dropped}).to_string()),
            );
        }
        let m = tokio::select! {
            m = self.rx.recv() => m?,
            _ = self.shutdown.cancelled() => return None,
        };
        self.link.taken(m.payload.len());
        let data: Arc<str> = self.render(&m).into();
        // Acknowledged as it is handed to the socket; a resume replays from the ring
        // what the reader may not have received.
        if m.qos != QoS::AtMostOnce && self.link.ack(m.packet_id).await.is_err() {
            return None;
        }
        let id = match &self.ring {
            Some(r) => r
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(data.clone(), self.max_events),
            None => {
                self.next_id += 1;
                self.next_id
            }
        };
        Some(
            Event::default()
                .event("message")
                .id(id.to_string())
                .data(&*data),
        )
    }

    fn render(&self, m: &Incoming) -> String {
        let is_event = is_event(
            m.props.content_type.as_deref(),
            &m.topic,
            &self.event_topics,
        );
        let mut o = Map::new();
        o.insert("topic".into(), json!(m.topic));
        o.insert("qos".into(), json!(m.qos as u8));
        o.insert("retain".into(), json!(m.retain));
        o.insert("properties".into(), json!(m.props));
        render_payload(&m.payload, is_event, self.format, &mut o);
        Value::Object(o).to_string()
    }
}
