//! The HTTP listener (`[http] listen`, `--http`): MQTT over WebSocket, HTTP publish, SSE
//! subscribe, retained messages, Prometheus metrics, health checks and the dashboard
//! (`docs/http.md`).
//!
//! - Every HTTP socket is admitted through the same connection table as MQTT sockets
//!   (limits, eviction), and a request's headers must arrive within
//!   `http.header_timeout_secs`.
//! - A WebSocket upgrade runs the MQTT connection code on the same socket ([`ws`]).
//! - Publishing and subscribing go through MQTT links into the core ([`link`]), so
//!   credentials, access rules, durability and limits are those of MQTT.
//! - Credentials come from HTTP Basic authentication and are the MQTT user name and
//!   password.

mod link;
mod metrics;
mod publish;
mod queues;
mod retained;
mod sse;
mod ws;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{delete, get, post};
use axum::{Extension, Json, Router};
use base64::Engine as _;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::shared::{Shared, Transport};
use super::table::{Refused, Table};

/// How long a connection may finish its current request at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// The dashboard: one HTML file, no build step.
const UI_HTML: &str = include_str!("ui.html");

/// What every handler shares.
#[derive(Debug, Clone)]
pub(crate) struct HttpState {
    pub(crate) shared: Arc<Shared>,
    pub(crate) table: Arc<Table>,
    pub(crate) tracker: TaskTracker,
    pub(crate) shutdown: CancellationToken,
    pub(crate) started: Instant,
    publishers: Arc<publish::Publishers>,
    sse: Arc<sse::Sessions>,
    workers: Arc<queues::Workers>,
}

/// The socket a request came on.
#[derive(Debug, Clone)]
struct Conn {
    peer: SocketAddr,
    slot: ws::SharedSlot,
}

/// An HTTP client's MQTT credentials (HTTP Basic), if it gave any.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub(crate) struct Credentials {
    pub(crate) username: Option<String>,
    pub(crate) password: Option<Vec<u8>>,
}

impl Credentials {
    /// From the `Authorization: Basic` header; none when there is no such header.
    ///
    /// # Errors
    /// A 400 when the header is malformed.
    fn from_headers(headers: &HeaderMap) -> Result<Credentials, ApiError> {
        let Some(v) = headers.get(header::AUTHORIZATION) else {
            return Ok(Credentials::default());
        };
        let bad = || {
            ApiError::bad(
                "BAD_CREDENTIALS",
                "the Authorization header must be Basic with base64 of user:password",
            )
        };
        let v = v.to_str().map_err(|_| bad())?;
        let encoded = v
            .strip_prefix("Basic ")
            .or_else(|| v.strip_prefix("basic "))
            .ok_or_else(bad)?;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(|_| bad())?;
        let colon = raw.iter().position(|&b| b == b':').ok_or_else(bad)?;
        let user = String::from_utf8(raw[..colon].to_vec()).map_err(|_| bad())?;
        Ok(Credentials {
            username: Some(user),
            password: Some(raw[colon + 1..].to_vec()),
        })
    }
}

/// A refused request: its status and the JSON error body `{"code", "message"}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) code: &'static str,
    pub(crate) message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    /// A 400.
    pub(crate) fn bad(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        error(self.status, self.code, &self.message)
    }
}

/// A request body, or the error for one that could not be read (too large: 413).
pub(crate) fn body(
    b: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<axum::body::Bytes, ApiError> {
    b.map_err(|e| {
        let code = if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            "PAYLOAD_TOO_LARGE"
        } else {
            "BAD_BODY"
        };
        ApiError::new(e.status(), code, e.body_text())
    })
}

/// A JSON body that must be an object (serde would also read a struct from an array,
/// by position).
pub(crate) fn json_object<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let v: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad("BAD_REQUEST", format!("invalid JSON body: {e}")))?;
    if !v.is_object() {
        return Err(ApiError::bad(
            "BAD_REQUEST",
            "the JSON body must be an object",
        ));
    }
    serde_json::from_value(v)
        .map_err(|e| ApiError::bad("BAD_REQUEST", format!("invalid JSON body: {e}")))
}

/// A JSON error body: `{"code": CODE, "message": ...}`.
pub(crate) fn error(status: StatusCode, code: &str, message: &str) -> Response {
    let mut r = (status, Json(json!({"code": code, "message": message}))).into_response();
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Basic realm=\"mote\""),
        );
    }
    r
}

/// The error for a link that could not connect or went away.
pub(crate) fn link_error(e: &link::LinkError) -> ApiError {
    use link::LinkError;
    let unavailable = StatusCode::SERVICE_UNAVAILABLE;
    match e {
        LinkError::Refused(0x86 | 0x87 | 0x04 | 0x05) => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "NOT_AUTHORIZED",
            "bad user name or password, or not authorized",
        ),
        LinkError::Refused(0x8a) => ApiError::new(StatusCode::FORBIDDEN, "BANNED", "banned"),
        LinkError::Refused(code) => ApiError::new(
            unavailable,
            "REFUSED",
            format!("the broker refused the connection (reason {code:#04x})"),
        ),
        LinkError::Busy => ApiError::new(unavailable, "BUSY", e.to_string()),
        LinkError::TooLarge => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PACKET_TOO_LARGE",
            e.to_string(),
        ),
        LinkError::Closed => ApiError::new(unavailable, "UNAVAILABLE", e.to_string()),
    }
}

/// Binds `[http] listen`.
///
/// # Errors
/// When it cannot be bound.
pub(crate) async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot bind the HTTP listener {addr}: {e}"))
}

/// Serves the HTTP listener until `shutdown` is cancelled.
pub(crate) async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    table: Arc<Table>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let state = HttpState {
        publishers: Arc::new(publish::Publishers::new(&shared.config.http)),
        sse: Arc::new(sse::Sessions::default()),
        workers: Arc::new(queues::Workers::default()),
        shared,
        table,
        tracker: tracker.clone(),
        shutdown: shutdown.clone(),
        started: Instant::now(),
    };
    let router = router(state.clone());
    let header_timeout = Duration::from_secs(state.shared.config.http.header_timeout_secs);
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let slot = match state.table.admit(peer.ip()) {
            Ok(slot) => Arc::new(slot),
            Err(why) => {
                if why == Refused::Full {
                    tracing::warn!(%peer, "connection limit reached; refusing an HTTP connection");
                }
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let conn = Conn { peer, slot };
        let router = router.clone();
        let state = state.clone();
        tracker.spawn(async move {
            let _open = state.shared.transports.open(Transport::Http);
            let slot = conn.slot.clone();
            let service = hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
                conn.slot.connected();
                req.extensions_mut().insert(conn.clone());
                let mut router = router.clone();
                async move { tower_service::Service::call(&mut router, req.map(axum::body::Body::new)).await }
            });
            let http = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            let mut http = std::pin::pin!(http);
            tokio::select! {
                r = http.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(%peer, error = %e, "HTTP connection ended");
                    }
                }
                _ = slot.evicted() => tracing::info!(%peer, "HTTP connection evicted (connection table full)"),
                _ = state.shutdown.cancelled() => {
                    http.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(SHUTDOWN_GRACE, http).await;
                }
            }
        });
    }
}

/// The router: every endpoint of `docs/http.md`.
fn router(state: HttpState) -> Router {
    let mut r = Router::new()
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/", get(ui))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics::metrics))
        .route("/api/v1/stats", get(stats))
        .route("/api/v1/publish", post(publish::publish_json))
        .route("/api/v1/publish/bulk", post(publish::publish_bulk))
        .route("/api/v1/publish/{*topic}", post(publish::publish_raw))
        .route("/api/v1/subscribe", get(sse::subscribe))
        .route("/api/v1/retained", get(retained::list))
        .route("/api/v1/retained/{*topic}", delete(retained::remove))
        .route("/api/v1/queues/{name}/messages", post(queues::send))
        .route("/api/v1/queues/{name}/receive", post(queues::receive))
        .route(
            "/api/v1/queues/{name}/messages/{receipt}",
            delete(queues::delete),
        )
        .route(
            "/api/v1/queues/{name}/messages/{receipt}/visibility",
            post(queues::visibility),
        );
    for path in &state.shared.config.http.ws_paths {
        r = r.route(path, get(mqtt_ws));
    }
    if !state.shared.config.http.ws_paths.iter().any(|p| p == "/") {
        r = r.route("/", get(|| async { Redirect::temporary("/ui/") }));
    }
    let body_limit = state.shared.config.mqtt.max_packet_size as usize;
    r.fallback(|| async {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "no such endpoint (docs/http.md)",
        )
    })
    .layer(axum::extract::DefaultBodyLimit::max(body_limit))
    .with_state(state)
}

/// MQTT over WebSocket; a plain GET of `/` (no upgrade) goes to the dashboard.
async fn mqtt_ws(
    State(state): State<HttpState>,
    Extension(conn): Extension<Conn>,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
    req_path: axum::http::Uri,
) -> Response {
    match ws {
        Ok(ws) => ws::upgrade(ws, &state, conn.peer, conn.slot),
        Err(_) if req_path.path() == "/" => Redirect::temporary("/ui/").into_response(),
        Err(e) => error(
            StatusCode::BAD_REQUEST,
            "WEBSOCKET_EXPECTED",
            &format!("MQTT over WebSocket: {e}"),
        ),
    }
}

async fn ui() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        UI_HTML,
    )
        .into_response()
}

/// Ready once the store is open (it is, once this listener runs) and the journal has
/// not failed.
async fn ready(State(state): State<HttpState>) -> Response {
    match &state.shared.journal {
        Some(j) if j.failed() => (StatusCode::SERVICE_UNAVAILABLE, "store failed").into_response(),
        _ => "ready".into_response(),
    }
}

/// The counters the dashboard polls.
async fn stats(State(state): State<HttpState>) -> Response {
    let s = state.shared.lock().stats();
    let counts = state.shared.transports.counts();
    let connections: serde_json::Map<String, serde_json::Value> = Transport::ALL
        .iter()
        .zip(counts)
        .filter(|(t, _)| matches!(t, Transport::Tcp | Transport::Tls | Transport::Ws))
        .map(|(t, n)| (t.name().to_owned(), json!(n)))
        .collect();
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_secs": state.started.elapsed().as_secs(),
        "connections": connections,
        "clients_connected": s.clients_connected,
        "sessions": s.sessions,
        "subscriptions": s.subscriptions,
        "retained": s.retained,
        "messages": {
            "received": s.received,
            "delivered": s.delivered,
            "dropped": s.dropped_overflow,
            "queued": s.queued,
        },
    }))
    .into_response()
}
