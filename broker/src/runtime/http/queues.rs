//! Work queues over HTTP, SQS-style, so that a backend without an MQTT library can be a
//! producer or a worker (`docs/http.md`):
//!
//! - `POST /api/v1/queues/{name}/messages`: send (`delay_seconds` for a delayed job);
//! - `POST /api/v1/queues/{name}/receive`: receive up to `max_messages`, waiting up to
//!   `wait_seconds` for the first (long polling), each with a receipt handle;
//! - `DELETE /api/v1/queues/{name}/messages/{receipt}`: done (the PUBACK);
//! - `POST /api/v1/queues/{name}/messages/{receipt}/visibility`: a new visibility
//!   timeout; 0 gives the job back at once (a nack).
//!
//! A worker is an MQTT consumer of `$queue/NAME` kept per user and queue: it pulls
//! (`$queue/$credit`, see `docs/queues.md`), so the broker sends it only what a receive
//! asks for, and every queue rule (one consumer per job, visibility timeout, redelivery,
//! dead letters, durability) is the broker's own. A receipt names that consumer and the
//! job's packet id; it stops being valid when the job's visibility timeout runs out (the
//! job is then another's), and when the consumer's link ends (its jobs went back to the
//! queue).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use base64::Engine as _;
use mote_codec::QoS;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::link::{Incoming, Link, LinkConfig, MsgProps, OutMessage, Subscription};
use super::{link_error, ApiError, Conn, Credentials, HttpState};
use crate::runtime::auth::Policy;

/// Jobs one HTTP worker may hold unacknowledged (its link's Receive Maximum).
const WINDOW: u16 = 100;

/// Most messages one receive returns.
const MAX_RECEIVE: usize = 100;

/// Longest long poll.
const MAX_WAIT: Duration = Duration::from_secs(20);

/// Once a receive has a message, it returns when no other came for this long.
const GATHER: Duration = Duration::from_millis(20);

/// HTTP workers kept, one per user and queue.
const MAX_CONSUMERS: usize = 1024;

/// A queue name, checked as the broker checks it.
fn queue_name(name: &str) -> Result<&str, ApiError> {
    if crate::config::is_queue_name(name) {
        Ok(name)
    } else {
        Err(ApiError::bad(
            "BAD_QUEUE",
            "a queue name is 1 to 64 of A-Z a-z 0-9 _ . -",
        ))
    }
}

/// The HTTP workers.
#[derive(Debug, Default)]
pub(super) struct Workers {
    map: Mutex<ahash::HashMap<(Credentials, String), Arc<Worker>>>,
    next: AtomicU64,
}

/// One user's worker on one queue.
#[derive(Debug)]
struct Worker {
    link: Link,
    queue: String,
    /// In receipts: another worker's (or a former one's) receipts are not this one's.
    epoch: u64,
    /// Deliveries not yet handed out (late ones of an earlier receive); one receive at a
    /// time.
    rx: tokio::sync::Mutex<mpsc::Receiver<Incoming>>,
    /// Handed-out jobs by packet id, with when their visibility timeout runs out.
    held: Mutex<ahash::HashMap<u16, Instant>>,
    policy: Arc<Policy>,
}

impl Workers {
    /// The worker of `creds` on `queue`, connected and subscribed if it was not.
    async fn worker(
        &self,
        state: &HttpState,
        creds: &Credentials,
        conn: &Conn,
        queue: &str,
    ) -> Result<Arc<Worker>, ApiError> {
        let policy = state.shared.auth.policy();
        let key = (creds.clone(), queue.to_owned());
        {
            let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(w) = map.get(&key) {
                if !w.link.is_closed() && Arc::ptr_eq(&w.policy, &policy) {
                    return Ok(w.clone());
                }
            }
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let epoch = ahash::RandomState::new().hash_one(n) | 1;
        let (tx, rx) = mpsc::channel(usize::from(WINDOW));
        let cfg = LinkConfig {
            client_id: format!("http-worker-{epoch:016x}"),
            clean_start: true,
            session_expiry: 0,
            username: creds.username.clone(),
            password: creds.password.clone(),
            receive_maximum: WINDOW,
            peer: conn.peer,
            max_buffered_bytes: usize::MAX,
        };
        let link = Link::connect(state, cfg, Some(tx))
            .await
            .map_err(|e| link_error(&e))?;
        // Subscribed pulling, with no credit: nothing comes before a receive asks.
        let sub = Subscription {
            filters: vec![(format!("$queue/{queue}"), QoS::AtLeastOnce)],
            user_properties: vec![("mote-credit".to_owned(), "0".to_owned())],
        };
        match link.subscribe(sub).await {
            Ok(codes) if codes.first().is_some_and(|&c| c < 0x80) => {}
            Ok(codes) => {
                let status = if codes.first() == Some(&0x87) {
                    StatusCode::FORBIDDEN
                } else {
                    StatusCode::BAD_REQUEST
                };
                return Err(ApiError::new(
                    status,
                    "SUBSCRIBE_REFUSED",
                    format!("the broker refused to consume this queue ({codes:02x?})"),
                ));
            }
            Err(e) => return Err(link_error(&e)),
        }
        let w = Arc::new(Worker {
            link,
            queue: queue.to_owned(),
            epoch,
            rx: tokio::sync::Mutex::new(rx),
            held: Mutex::default(),
            policy,
        });
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_CONSUMERS {
            map.retain(|_, w| !w.link.is_closed() && !w.held_is_empty());
            if map.len() >= MAX_CONSUMERS {
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "BUSY",
                    "too many HTTP workers",
                ));
            }
        }
        map.insert(key, w.clone());
        Ok(w)
    }

    /// The worker a receipt names, if it is still this user's worker on `queue`.
    fn by_receipt(&self, creds: &Credentials, queue: &str, epoch: u64) -> Option<Arc<Worker>> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&(creds.clone(), queue.to_owned()))
            .filter(|w| w.epoch == epoch && !w.link.is_closed())
            .cloned()
    }
}

impl Worker {
    fn held_is_empty(&self) -> bool {
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }

    /// Publishes a control topic about this worker's jobs; the PUBACK's reason code.
    async fn control(&self, topic: String) -> Result<u8, ApiError> {
        let m = OutMessage {
            topic,
            payload: Bytes::new(),
            qos: QoS::AtLeastOnce,
            retain: false,
            props: MsgProps::default(),
        };
        match self.link.publish(m).await {
            Ok(ack) => Ok(ack.reason),
            Err(e) => Err(link_error(&e)),
        }
    }

    /// Frees the packet ids of jobs whose visibility ran out (the broker gave them to
    /// another already; the PUBACK acknowledges nothing).
    async fn sweep(&self) {
        let now = Instant::now();
        let expired: Vec<u16> = {
            let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
            let gone: Vec<u16> = held
                .iter()
                .filter(|(_, &until)| until + Duration::from_secs(1) <= now)
                .map(|(&pid, _)| pid)
                .collect();
            for pid in &gone {
                held.remove(pid);
            }
            gone
        };
        for pid in expired {
            let _ = self.link.ack(pid).await;
        }
    }

    fn receipt(&self, packet_id: u16) -> String {
        format!("{:016x}.{packet_id}", self.epoch)
    }
}

/// A receipt: the worker's epoch and the job's packet id.
fn parse_receipt(r: &str) -> Option<(u64, u16)> {
    let (epoch, pid) = r.split_once('.')?;
    Some((
        u64::from_str_radix(epoch, 16).ok()?,
        pid.parse().ok().filter(|&p| p != 0)?,
    ))
}

fn receipt_gone() -> ApiError {
    ApiError::new(
        StatusCode::GONE,
        "RECEIPT_EXPIRED",
        "this receipt is no longer valid: its visibility timeout ran out, or the job was \
         deleted or given back",
    )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SendBody {
    body: String,
    /// `plain` (default) or `base64`.
    #[serde(default)]
    body_encoding: Option<String>,
    /// Seconds before the job becomes visible (a delayed publish).
    #[serde(default)]
    delay_seconds: Option<u32>,
    #[serde(default)]
    content_type: Option<String>,
    #[serde(default)]
    user_properties: Option<ahash::HashMap<String, String>>,
}

/// `POST /api/v1/queues/{name}/messages`.
pub(super) async fn send(
    State(state): State<HttpState>,
    Extension(conn): Extension<Conn>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let body = super::body(body)?;
    let creds = Credentials::from_headers(&headers)?;
    let name = queue_name(&name)?;
    let b: SendBody = super::json_object(&body)?;
    let payload = match b.body_encoding.as_deref() {
        None | Some("plain") => Bytes::from(b.body),
        Some("base64") => base64::engine::general_purpose::STANDARD
            .decode(b.body.as_bytes())
            .map(Bytes::from)
            .map_err(|e| ApiError::bad("BAD_BODY", format!("body is not base64: {e}")))?,
        Some(other) => {
            return Err(ApiError::bad(
                "BAD_BODY_ENCODING",
                format!("body_encoding must be plain or base64 (got {other:?})"),
            ))
        }
    };
    let topic = match b.delay_seconds.filter(|&d| d > 0) {
        Some(d) => format!("$delayed/{d}/$queue/{name}"),
        None => format!("$queue/{name}"),
    };
    let mut user_properties: Vec<(String, String)> =
        b.user_properties.unwrap_or_default().into_iter().collect();
    user_properties.sort();
    let m = OutMessage {
        topic,
        payload,
        qos: QoS::AtLeastOnce,
        retain: false,
        props: MsgProps {
            content_type: b.content_type,
            user_properties,
            ..MsgProps::default()
        },
    };
    Ok(state.publishers.send_job(&state, &creds, &conn, m).await)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ReceiveBody {
    /// 1 to 100; default 1.
    #[serde(default)]
    max_messages: Option<usize>,
    /// 0 to 20; default 0 (return at once).
    #[serde(default)]
    wait_seconds: Option<u64>,
    /// Seconds the jobs stay invisible to others; default the broker's
    /// `queue_visibility_timeout_secs`.
    #[serde(default)]
    visibility_timeout: Option<u32>,
}

/// `POST /api/v1/queues/{name}/receive`.
pub(super) async fn receive(
    State(state): State<HttpState>,
    Extension(conn): Extension<Conn>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let body = super::body(body)?;
    let creds = Credentials::from_headers(&headers)?;
    let name = queue_name(&name)?;
    let b: ReceiveBody = if body.is_empty() {
        ReceiveBody::default()
    } else {
        super::json_object(&body)?
    };
    let max = b.max_messages.unwrap_or(1);
    if !(1..=MAX_RECEIVE).contains(&max) {
        return Err(ApiError::bad(
            "BAD_MAX_MESSAGES",
            format!("max_messages must be 1 to {MAX_RECEIVE}"),
        ));
    }
    let wait = Duration::from_secs(b.wait_seconds.unwrap_or(0)).min(MAX_WAIT);
    let visibility = b.visibility_timeout.map_or(
        state.shared.config.mqtt.queue_visibility_timeout_secs,
        u64::from,
    );
    if visibility == 0 {
        return Err(ApiError::bad(
            "BAD_VISIBILITY",
            "visibility_timeout must be at least 1 second",
        ));
    }
    let w = state.workers.worker(&state, &creds, &conn, name).await?;
    w.sweep().await;
    let mut rx = w.rx.lock().await;
    let mut got: Vec<Incoming> = Vec::new();
    while got.len() < max {
        match rx.try_recv() {
            Ok(m) => {
                w.link.taken(m.payload.len());
                got.push(m);
            }
            Err(_) => break,
        }
    }
    let room = usize::from(WINDOW).saturating_sub(w.held.lock().map_or(0, |h| h.len()));
    let want = max.saturating_sub(got.len()).min(room);
    if want > 0 {
        w.control(format!("$queue/$credit/{}/{want}", w.queue))
            .await?;
        let deadline = Instant::now() + wait;
        loop {
            let until = if got.is_empty() {
                deadline
            } else {
                (Instant::now() + GATHER).min(deadline)
            };
            tokio::select! {
                m = rx.recv() => match m {
                    Some(m) => {
                        w.link.taken(m.payload.len());
                        got.push(m);
                    }
                    None => return Err(link_error(&super::link::LinkError::Closed)),
                },
                _ = tokio::time::sleep_until(until) => break,
            }
            if got.len() >= max {
                break;
            }
        }
        // What the broker sends after this waits in `rx` for the next receive.
        w.control(format!("$queue/$credit/{}/0", w.queue)).await?;
    }
    drop(rx);
    let until = Instant::now() + Duration::from_secs(visibility);
    let mut messages = Vec::with_capacity(got.len());
    for m in got {
        // The broker's visibility timer started when it sent the job; it starts again
        // now that the worker has it.
        let _ = w
            .control(format!("$queue/$touch/{}/{visibility}", m.packet_id))
            .await;
        w.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(m.packet_id, until);
        let mut props = m.props;
        let count = props
            .user_properties
            .iter()
            .position(|(k, _)| k == "mote-delivery-count")
            .map(|i| props.user_properties.remove(i))
            .and_then(|(_, v)| v.parse::<u64>().ok())
            .unwrap_or(1);
        let (encoding, body) = match std::str::from_utf8(&m.payload) {
            Ok(s) => ("plain", json!(s)),
            Err(_) => (
                "base64",
                json!(base64::engine::general_purpose::STANDARD.encode(&m.payload)),
            ),
        };
        messages.push(json!({
            "receipt": w.receipt(m.packet_id),
            "body": body,
            "body_encoding": encoding,
            "delivery_count": count,
            "topic": m.topic,
            "properties": props,
        }));
    }
    Ok(Json(json!({ "messages": messages })).into_response())
}

/// The worker and packet id of a receipt this user holds on `name`.
fn held_job(
    state: &HttpState,
    creds: &Credentials,
    name: &str,
    receipt: &str,
) -> Result<(Arc<Worker>, u16), ApiError> {
    let (epoch, pid) = parse_receipt(receipt)
        .ok_or_else(|| ApiError::bad("BAD_RECEIPT", "not a receipt handle"))?;
    let w = state
        .workers
        .by_receipt(creds, name, epoch)
        .ok_or_else(receipt_gone)?;
    let live = w
        .held
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&pid)
        .is_some_and(|&until| Instant::now() < until);
    if live {
        Ok((w, pid))
    } else {
        Err(receipt_gone())
    }
}

/// `DELETE /api/v1/queues/{name}/messages/{receipt}`: the job is done.
pub(super) async fn delete(
    State(state): State<HttpState>,
    Path((name, receipt)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let creds = Credentials::from_headers(&headers)?;
    let name = queue_name(&name)?;
    let (w, pid) = held_job(&state, &creds, name, &receipt)?;
    if w.held
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&pid)
        .is_none()
    {
        return Err(receipt_gone());
    }
    w.link.ack(pid).await.map_err(|e| link_error(&e))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct VisibilityBody {
    /// Seconds from now; 0 gives the job back to the queue at once.
    timeout: u32,
}

/// `POST /api/v1/queues/{name}/messages/{receipt}/visibility`.
pub(super) async fn visibility(
    State(state): State<HttpState>,
    Path((name, receipt)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let body = super::body(body)?;
    let creds = Credentials::from_headers(&headers)?;
    let b: VisibilityBody = super::json_object(&body)?;
    let name = queue_name(&name)?;
    let (w, pid) = held_job(&state, &creds, name, &receipt)?;
    if b.timeout == 0 {
        let code = w.control(format!("$queue/$nack/{pid}")).await?;
        if code >= 0x80 {
            return Err(receipt_gone());
        }
        // Frees the packet id (the nack already gave the job back).
        w.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&pid);
        w.link.ack(pid).await.map_err(|e| link_error(&e))?;
        return Ok(Json(json!({"visible": true})).into_response());
    }
    let code = w
        .control(format!("$queue/$touch/{pid}/{}", b.timeout))
        .await?;
    if code >= 0x80 {
        return Err(receipt_gone());
    }
    let until = Instant::now() + Duration::from_secs(u64::from(b.timeout));
    w.held
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(pid, until);
    Ok(Json(json!({"visible_in_seconds": b.timeout})).into_response())
}
