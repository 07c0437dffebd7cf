//! HTTP publish: `POST /api/v1/publish` (JSON, the shape of EMQX's v5 publish API),
//! `POST /api/v1/publish/bulk` (an array of those) and `POST /api/v1/publish/{topic}`
//! (the body is the payload).
//!
//! - QoS 1/2 answer once the broker acknowledged the message, that is once it is
//!   durable, as PUBACK does: 200 `{"id"}`, or 202 with reason code 0x10 when nobody
//!   is subscribed. Refusals map the PUBACK's reason code to a 4xx/5xx status.
//! - Publishing goes through pooled MQTT links, one per set of credentials, made again
//!   when the access policy is reloaded (so a changed password takes effect).
//! - An `Idempotency-Key` header makes a retry safe: the first answer is kept (for
//!   `http.idempotency_ttl_secs`, at most `http.idempotency_keys` keys) and a retry with
//!   the same key and body gets it again without publishing twice.

use std::collections::VecDeque;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use base64::Engine as _;
use mote_codec::QoS;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::OnceCell;

use super::link::{Link, LinkConfig, LinkError, MsgProps, OutMessage};
use super::{error, link_error, ApiError, Conn, Credentials, HttpState};
use crate::proto::acl::{Access, Who};
use crate::runtime::auth::Policy;

/// The v5 reason code "no matching subscribers".
const NO_MATCHING_SUBSCRIBERS: u8 = 0x10;

/// Longest `Idempotency-Key` accepted.
const MAX_KEY_LEN: usize = 255;

/// One message of the JSON forms.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PublishBody {
    topic: String,
    #[serde(default)]
    payload: String,
    /// `plain` (default) or `base64`.
    #[serde(default)]
    payload_encoding: Option<String>,
    #[serde(default)]
    qos: Option<u8>,
    #[serde(default)]
    retain: Option<bool>,
    #[serde(default)]
    properties: Option<PropsBody>,
    /// Accepted for EMQX compatibility and ignored: the publisher is the HTTP client.
    #[serde(default)]
    #[allow(dead_code)]
    clientid: Option<String>,
}

/// The `properties` object.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PropsBody {
    /// `true`/`false` (EMQX) or 0/1.
    #[serde(default)]
    payload_format_indicator: Option<Value>,
    #[serde(default)]
    message_expiry_interval: Option<u32>,
    #[serde(default)]
    response_topic: Option<String>,
    /// As text.
    #[serde(default)]
    correlation_data: Option<String>,
    #[serde(default)]
    content_type: Option<String>,
    /// An object of name → value (EMQX), or an array of `[name, value]` pairs (which
    /// keeps order and repeated names).
    #[serde(default)]
    user_properties: Option<Value>,
}

/// A request that cannot be published as asked.
type Bad = ApiError;

fn bad(code: &'static str, message: &str) -> Bad {
    ApiError::bad(code, message)
}

fn parse_qos(q: Option<u8>) -> Result<QoS, Bad> {
    match q.unwrap_or(0) {
        0 => Ok(QoS::AtMostOnce),
        1 => Ok(QoS::AtLeastOnce),
        2 => Ok(QoS::ExactlyOnce),
        n => Err(bad("BAD_QOS", &format!("qos must be 0, 1 or 2 (got {n})"))),
    }
}

fn check_topic(topic: &str) -> Result<(), Bad> {
    if mote_codec::topic::is_valid_name(topic) && topic.len() <= usize::from(u16::MAX) {
        Ok(())
    } else {
        Err(bad(
            "BAD_TOPIC",
            "the topic must be a non-empty MQTT topic name without wildcards",
        ))
    }
}

impl PublishBody {
    fn into_message(self) -> Result<OutMessage, Bad> {
        check_topic(&self.topic)?;
        let payload = match self.payload_encoding.as_deref() {
            None | Some("plain") => Bytes::from(self.payload),
            Some("base64") => base64::engine::general_purpose::STANDARD
                .decode(self.payload.as_bytes())
                .map(Bytes::from)
                .map_err(|e| bad("BAD_PAYLOAD", &format!("payload is not base64: {e}")))?,
            Some(other) => {
                return Err(bad(
                    "BAD_PAYLOAD_ENCODING",
                    &format!("payload_encoding must be plain or base64 (got {other:?})"),
                ))
            }
        };
        let mut props = MsgProps::default();
        if let Some(p) = self.properties {
            props.payload_format_indicator = match p.payload_format_indicator {
                None | Some(Value::Null) => None,
                Some(Value::Bool(b)) => Some(u8::from(b)),
                Some(Value::Number(n)) if n.as_u64() == Some(0) || n.as_u64() == Some(1) => {
                    n.as_u64().map(|v| v as u8)
                }
                Some(_) => {
                    return Err(bad(
                        "BAD_PROPERTIES",
                        "payload_format_indicator must be true, false, 0 or 1",
                    ))
                }
            };
            if props.payload_format_indicator == Some(1) && std::str::from_utf8(&payload).is_err() {
                return Err(bad(
                    "BAD_PAYLOAD",
                    "payload_format_indicator says UTF-8 and the payload is not",
                ));
            }
            props.message_expiry_interval = p.message_expiry_interval;
            if let Some(t) = &p.response_topic {
                check_topic(t)
                    .map_err(|_| bad("BAD_PROPERTIES", "response_topic is not a topic name"))?;
            }
            props.response_topic = p.response_topic;
            props.correlation_data = p.correlation_data.map(Bytes::from);
            props.content_type = p.content_type;
            props.user_properties = match p.user_properties {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Object(m)) => m
                    .into_iter()
                    .map(|(k, v)| match v {
                        Value::String(s) => Ok((k, s)),
                        _ => Err(bad(
                            "BAD_PROPERTIES",
                            "user property values must be strings",
                        )),
                    })
                    .collect::<Result<_, _>>()?,
                Some(Value::Array(a)) => a
                    .into_iter()
                    .map(|pair| match pair {
                        Value::Array(kv) => match kv.as_slice() {
                            [Value::String(k), Value::String(v)] => Ok((k.clone(), v.clone())),
                            _ => Err(()),
                        },
                        _ => Err(()),
                    })
                    .collect::<Result<_, ()>>()
                    .map_err(|()| {
                        bad(
                            "BAD_PROPERTIES",
                            "user_properties must be an object or an array of [name, value]",
                        )
                    })?,
                Some(_) => {
                    return Err(bad(
                        "BAD_PROPERTIES",
                        "user_properties must be an object or an array of [name, value]",
                    ))
                }
            };
        }
        Ok(OutMessage {
            topic: self.topic,
            payload,
            qos: parse_qos(self.qos)?,
            retain: self.retain.unwrap_or(false),
            props,
        })
    }
}

/// Query of the raw form.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawQuery {
    #[serde(default)]
    qos: Option<u8>,
    #[serde(default)]
    retain: Option<bool>,
    /// Message expiry interval, seconds.
    #[serde(default)]
    expiry: Option<u32>,
}

/// An answer: status and JSON body.
#[derive(Debug, Clone)]
struct Answer {
    status: StatusCode,
    body: Value,
}

impl Answer {
    fn response(&self, replayed: bool) -> Response {
        let mut r = (self.status, Json(self.body.clone())).into_response();
        if replayed {
            r.headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"mote\""),
            );
        }
        r
    }

    fn error(e: &ApiError) -> Answer {
        Answer {
            status: e.status,
            body: json!({"code": e.code, "message": e.message}),
        }
    }

    /// Worth remembering for a retry: anything but a transient failure.
    fn is_final(&self) -> bool {
        !self.status.is_server_error()
    }
}

/// The pooled publishing links, one per set of credentials.
#[derive(Debug)]
pub(super) struct Publishers {
    links: Mutex<ahash::HashMap<Credentials, (Link, Arc<Policy>)>>,
    seq: std::sync::atomic::AtomicU64,
    /// Random per run: the links' client ids cannot be guessed by a client that would
    /// take them over.
    salt: u64,
    idempotency: Mutex<Idempotency>,
    keys: usize,
    ttl: Duration,
}

/// Remembered answers by key.
#[derive(Debug, Default)]
struct Idempotency {
    map: ahash::HashMap<String, Arc<Remembered>>,
    /// Keys in insertion order, for expiry and the size bound.
    order: VecDeque<(Instant, String)>,
}

#[derive(Debug)]
struct Remembered {
    /// A hash of the request (credentials, form and body): the same key with another
    /// request is refused.
    fingerprint: u64,
    answer: OnceCell<Answer>,
}

/// Links to the same credentials kept at most (the pool is bounded: one entry per
/// distinct user).
const MAX_LINKS: usize = 1024;

impl Publishers {
    pub(super) fn new(cfg: &crate::config::HttpConfig) -> Publishers {
        Publishers {
            links: Mutex::default(),
            seq: Default::default(),
            salt: ahash::RandomState::new().hash_one(std::process::id()),
            idempotency: Mutex::default(),
            keys: cfg.idempotency_keys,
            ttl: Duration::from_secs(cfg.idempotency_ttl_secs),
        }
    }

    /// A connected link for `creds`: the pooled one while it lives and the access
    /// policy has not been reloaded, else a new one.
    async fn link(
        &self,
        state: &HttpState,
        creds: &Credentials,
        conn: &Conn,
    ) -> Result<Link, LinkError> {
        let policy = state.shared.auth.policy();
        {
            let links = self.links.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((l, p)) = links.get(creds) {
                if !l.is_closed() && Arc::ptr_eq(p, &policy) {
                    return Ok(l.clone());
                }
            }
        }
        let n = self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let cfg = LinkConfig {
            client_id: format!("http-publish-{:016x}-{n}", self.salt),
            clean_start: true,
            session_expiry: 0,
            username: creds.username.clone(),
            password: creds.password.clone(),
            receive_maximum: 1,
            peer: conn.peer,
            max_buffered_bytes: usize::MAX,
        };
        let link = Link::connect(state, cfg, None).await?;
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        if links.len() >= MAX_LINKS {
            links.retain(|_, (l, p)| !l.is_closed() && Arc::ptr_eq(p, &policy));
            if links.len() >= MAX_LINKS {
                // Many distinct users: this one is not pooled.
                return Ok(link);
            }
        }
        links.insert(creds.clone(), (link.clone(), policy));
        Ok(link)
    }

    /// Publishes `m` (retrying once on a fresh link when the pooled one had closed).
    async fn publish(
        &self,
        state: &HttpState,
        creds: &Credentials,
        conn: &Conn,
        m: OutMessage,
    ) -> Answer {
        let mut tries = 0;
        loop {
            tries += 1;
            let link = match self.link(state, creds, conn).await {
                Ok(l) => l,
                Err(e) => return Answer::error(&link_error(&e)),
            };
            // The broker refuses a QoS 0 publish the rules deny without a word (there
            // is no PUBACK): the HTTP answer asks the same rules first.
            if !may_write(state, creds, &m.topic) {
                return Answer::error(&ApiError::new(
                    StatusCode::FORBIDDEN,
                    "NOT_AUTHORIZED",
                    "not authorized to publish to this topic",
                ));
            }
            match link.publish(m.clone()).await {
                Ok(ack) => return answer(ack.reason, ack.reason_string.as_deref()),
                Err(LinkError::Closed) if tries < 2 => continue,
                Err(e) => return Answer::error(&link_error(&e)),
            }
        }
    }

    /// Publishes a work queue's job (the answer as for a publish).
    pub(super) async fn send_job(
        &self,
        state: &HttpState,
        creds: &Credentials,
        conn: &Conn,
        m: OutMessage,
    ) -> Response {
        self.publish(state, creds, conn, m).await.response(false)
    }

    /// Publishes, or replays the answer remembered for `key`.
    async fn publish_once(
        &self,
        state: &HttpState,
        creds: &Credentials,
        conn: &Conn,
        key: Option<String>,
        fingerprint: u64,
        m: OutMessage,
    ) -> Response {
        let Some(key) = key else {
            return self.publish(state, creds, conn, m).await.response(false);
        };
        // Credentials first: a remembered answer is only for whom the broker accepts.
        if let Err(e) = self.link(state, creds, conn).await {
            return link_error(&e).into_response();
        }
        let entry = {
            let mut idem = self.idempotency.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            while let Some((at, _)) = idem.order.front() {
                if now.duration_since(*at) < self.ttl && idem.order.len() < self.keys {
                    break;
                }
                if let Some((_, k)) = idem.order.pop_front() {
                    idem.map.remove(&k);
                }
            }
            match idem.map.get(&key) {
                Some(e) => e.clone(),
                None => {
                    let e = Arc::new(Remembered {
                        fingerprint,
                        answer: OnceCell::new(),
                    });
                    idem.map.insert(key.clone(), e.clone());
                    idem.order.push_back((now, key));
                    e
                }
            }
        };
        if entry.fingerprint != fingerprint {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "IDEMPOTENCY_KEY_REUSED",
                "this Idempotency-Key was used for another request",
            );
        }
        // In a task of its own: a requester that goes away mid-publish does not cancel
        // it, and its answer is kept for the retry.
        let (st, cr, cn) = (state.clone(), creds.clone(), conn.clone());
        let task = state.tracker.spawn(async move {
            let mut first = false;
            let got = entry
                .answer
                .get_or_try_init(|| async {
                    first = true;
                    let a = st.publishers.publish(&st, &cr, &cn, m).await;
                    if a.is_final() {
                        Ok(a)
                    } else {
                        Err(a)
                    }
                })
                .await
                .cloned();
            (got, first)
        });
        match task.await {
            Ok((Ok(a), first)) => a.response(!first),
            Ok((Err(a), _)) => a.response(false),
            Err(_) => error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "INTERNAL",
                "the publish failed unexpectedly",
            ),
        }
    }
}

/// Whether the access rules let `creds` publish to `topic` (a delayed publish's target
/// for `$delayed/...`), as the broker decides it.
fn may_write(state: &HttpState, creds: &Credentials, topic: &str) -> bool {
    let acl = state.shared.auth.policy().acl.clone();
    let rights = state
        .shared
        .auth
        .rights(creds.username.as_deref(), creds.password.as_deref());
    if !acl.checks(rights.grant.as_deref()) {
        return true;
    }
    let written = match crate::proto::delayed::parse(topic, 0) {
        Some(Ok(due)) => due.topic,
        _ => topic,
    };
    let who = Who {
        user: rights.user.as_deref(),
        client: "",
        grant: rights.grant.as_deref(),
    };
    acl.allows(who, Access::Write, written)
}

/// The answer to a publish acknowledged with `reason`.
fn answer(reason: u8, reason_string: Option<&str>) -> Answer {
    let (status, code, text) = match reason {
        0x00 => {
            return Answer {
                status: StatusCode::OK,
                body: json!({"id": message_id()}),
            }
        }
        NO_MATCHING_SUBSCRIBERS => {
            return Answer {
                status: StatusCode::ACCEPTED,
                body: json!({"reason_code": reason, "message": "no matching subscribers"}),
            }
        }
        0x87 => (
            StatusCode::FORBIDDEN,
            "NOT_AUTHORIZED",
            "not authorized to publish to this topic",
        ),
        0x90 => (StatusCode::BAD_REQUEST, "BAD_TOPIC", "topic name invalid"),
        0x95 => (
            StatusCode::PAYLOAD_TOO_LARGE,
            "PACKET_TOO_LARGE",
            "packet too large",
        ),
        0x97 => (
            StatusCode::TOO_MANY_REQUESTS,
            "QUOTA_EXCEEDED",
            "quota exceeded",
        ),
        0x99 => (
            StatusCode::BAD_REQUEST,
            "BAD_PAYLOAD",
            "payload format invalid",
        ),
        0x9a => (
            StatusCode::BAD_REQUEST,
            "RETAIN_NOT_SUPPORTED",
            "retain not supported",
        ),
        0x9b => (
            StatusCode::BAD_REQUEST,
            "QOS_NOT_SUPPORTED",
            "QoS not supported",
        ),
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            "REFUSED",
            "the broker refused the message",
        ),
    };
    Answer {
        status,
        body: json!({
            "code": code,
            "message": reason_string.unwrap_or(text),
            "reason_code": reason,
        }),
    }
}

/// An id for the answer: unique per broker run (the broker's own message id is not
/// known to the publisher).
fn message_id() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{:016x}", n ^ 0x6d6f_7465_0000_0000)
}

/// The `Idempotency-Key` header, checked.
fn idempotency_key(headers: &HeaderMap, creds: &Credentials) -> Result<Option<String>, Bad> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let v = v
        .to_str()
        .ok()
        .filter(|v| !v.is_empty() && v.len() <= MAX_KEY_LEN)
        .ok_or_else(|| {
            bad(
                "BAD_IDEMPOTENCY_KEY",
                "Idempotency-Key must be 1 to 255 visible ASCII characters",
            )
        })?;
    // Keys are per user: two users' equal keys never meet.
    Ok(Some(format!(
        "{}\u{0}{v}",
        creds.username.as_deref().unwrap_or("")
    )))
}

fn fingerprint(parts: &[&[u8]]) -> u64 {
    // Fixed keys: the fingerprint is compared within this process only.
    let mut h = ahash::RandomState::with_seeds(1, 2, 3, 4).build_hasher();
    for p in parts {
        p.hash(&mut h);
    }
    h.finish()
}

/// `POST /api/v1/publish`.
pub(super) async fn publish_json(
    State(state): State<HttpState>,
    Extension(conn): Extension<Conn>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let body = super::body(body)?;
    let creds = Credentials::from_headers(&headers)?;
    let key = idempotency_key(&headers, &creds)?;
    let msg: PublishBody = super::json_object(&body)?;
    let m = msg.into_message()?;
    let fp = fingerprint(&[b"json", &body]);
    Ok(state
        .publishers
        .publish_once(&state, &creds, &conn, key, fp, m)
        .await)
}

/// `POST /api/v1/publish/bulk`: an array; 200 with one result per message, in order
/// (each `{"id"}` or an error body with its `status`).
pub(super) async fn publish_bulk(
    State(state): State<HttpState>,
    Extension(conn): Extension<Conn>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let body = super::body(body)?;
    let creds = Credentials::from_headers(&headers)?;
    let items: Vec<serde_json::Value> = serde_json::from_slice(&body).map_err(|e| {
        bad(
            "BAD_REQUEST",
            &format!("invalid JSON body: an array of objects: {e}"),
        )
    })?;
    let msgs = items
        .iter()
        .map(|v| super::json_object::<PublishBody>(v.to_string().as_bytes()))
        .collect::<Result<Vec<_>, _>>()?;
    // Every message is checked before any is published.
    let msgs = msgs
        .into_iter()
        .map(PublishBody::into_message)
        .collect::<Result<Vec<_>, _>>()?;
    let mut results = Vec::with_capacity(msgs.len());
    for m in msgs {
        let a = state.publishers.publish(&state, &creds, &conn, m).await;
        let mut body = a.body;
        if let Value::Object(o) = &mut body {
            o.insert("status".into(), json!(a.status.as_u16()));
        }
        results.push(body);
    }
    Ok(Json(Value::Array(results)).into_response())
}

/// `POST /api/v1/publish/{topic}?qos=&retain=&expiry=`: the body is the payload; the
/// request's `Content-Type` becomes the message's (except the form and octet-stream
/// defaults of curl and browsers).
pub(super) async fn publish_raw(
    State(state): State<HttpState>,
    Extension(conn): Extension<Conn>,
    Path(topic): Path<String>,
    query: Result<Query<RawQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let body = super::body(body)?;
    let creds = Credentials::from_headers(&headers)?;
    let Query(q) = query.map_err(|e| bad("BAD_REQUEST", &e.body_text()))?;
    let key = idempotency_key(&headers, &creds)?;
    check_topic(&topic)?;
    let qos = parse_qos(q.qos)?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.starts_with("application/x-www-form-urlencoded")
                && !v.starts_with("application/octet-stream")
        })
        .map(str::to_owned);
    let fp = fingerprint(&[
        b"raw",
        topic.as_bytes(),
        &[qos as u8, u8::from(q.retain.unwrap_or(false))],
        content_type.as_deref().unwrap_or("").as_bytes(),
        &body,
    ]);
    let m = OutMessage {
        topic,
        payload: body,
        qos,
        retain: q.retain.unwrap_or(false),
        props: MsgProps {
            content_type,
            message_expiry_interval: q.expiry,
            ..MsgProps::default()
        },
    };
    Ok(state
        .publishers
        .publish_once(&state, &creds, &conn, key, fp, m)
        .await)
}

/// Deletes the retained message of `topic` (publishes an empty retained message).
pub(super) async fn delete_retained(
    state: &HttpState,
    creds: &Credentials,
    conn: &Conn,
    topic: String,
) -> Result<Response, ApiError> {
    check_topic(&topic)?;
    let m = OutMessage {
        topic,
        payload: Bytes::new(),
        qos: QoS::AtLeastOnce,
        retain: true,
        props: MsgProps::default(),
    };
    let a = state.publishers.publish(state, creds, conn, m).await;
    Ok(if a.status.is_success() {
        StatusCode::NO_CONTENT.into_response()
    } else {
        a.response(false)
    })
}

/// Checks `creds` by connecting (or reusing) a link: `Err` with the response when they
/// are refused.
pub(super) async fn authenticate(
    state: &HttpState,
    creds: &Credentials,
    conn: &Conn,
) -> Result<(), ApiError> {
    match state.publishers.link(state, creds, conn).await {
        Ok(_) => Ok(()),
        Err(e) => Err(link_error(&e)),
    }
}
