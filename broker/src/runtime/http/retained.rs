//! Retained messages over HTTP: `GET /api/v1/retained?filter=&limit=&after=` (a page
//! in topic-tree order, with where the next one starts) and
//! `DELETE /api/v1/retained/{topic}`.
//!
//! Listing checks the HTTP client's credentials as a CONNECT would, and shows only the
//! topics the access rules let that user read. Deleting publishes an empty retained
//! message through MQTT, so the rules for writing apply.

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::link::MsgProps;
use super::{publish, ApiError, Conn, Credentials, HttpState};
use crate::json::{is_event, render_payload, Format};
use crate::proto::acl::{Access, Who};

/// Default and largest page.
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    /// Default `#`.
    #[serde(default)]
    filter: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
    /// The `next` of the previous page.
    #[serde(default)]
    after: Option<String>,
    /// `auto` (default) or `base64`.
    #[serde(default)]
    format: Option<String>,
}

/// `GET /api/v1/retained`.
pub(super) async fn list(
    State(state): State<HttpState>,
    Extension(conn): Extension<Conn>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad("BAD_REQUEST", e.body_text()))?;
    let creds = Credentials::from_headers(&headers)?;
    let filter = q.filter.unwrap_or_else(|| "#".to_owned());
    if !mote_codec::topic::is_valid_filter(&filter) || filter.starts_with("$share/") {
        return Err(ApiError::bad(
            "BAD_FILTER",
            "filter must be an MQTT topic filter (not a shared one)",
        ));
    }
    let format = Format::parse(q.format.as_deref())?;
    publish::authenticate(&state, &creds, &conn).await?;
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
    let (page, next) = state
        .shared
        .lock()
        .retained_page(&filter, q.after.as_deref(), limit);
    let policy = state.shared.auth.policy();
    // A token's user and rules, as its MQTT link got them.
    let rights = state
        .shared
        .auth
        .rights(creds.username.as_deref(), creds.password.as_deref());
    let who = Who {
        user: rights.user.as_deref(),
        client: "",
        grant: rights.grant.as_deref(),
    };
    let data: Vec<Value> = page
        .iter()
        .filter(|m| policy.acl.allows(who, Access::Read, &m.topic))
        .map(|m| {
            let mut o = Map::new();
            o.insert("topic".into(), json!(&*m.topic));
            o.insert("qos".into(), json!(m.qos as u8));
            let props = MsgProps {
                payload_format_indicator: m.payload_format_indicator,
                message_expiry_interval: None,
                content_type: m.content_type.as_deref().map(str::to_owned),
                response_topic: m.response_topic.as_deref().map(str::to_owned),
                correlation_data: m.correlation_data.clone(),
                user_properties: m.user_property_pairs(),
            };
            let is_event = is_event(
                props.content_type.as_deref(),
                &m.topic,
                &state.shared.config.mqtt.event_topics,
            );
            o.insert("properties".into(), json!(props));
            render_payload(&m.payload, is_event, format, &mut o);
            Value::Object(o)
        })
        .collect();
    Ok(Json(json!({"data": data, "next": next})).into_response())
}

/// `DELETE /api/v1/retained/{topic}`: 204.
pub(super) async fn remove(
    State(state): State<HttpState>,
    Extension(conn): Extension<Conn>,
    headers: HeaderMap,
    Path(topic): Path<String>,
) -> Result<Response, ApiError> {
    let creds = Credentials::from_headers(&headers)?;
    publish::delete_retained(&state, &creds, &conn, topic).await
}

impl Format {
    /// The `format` query parameter.
    pub(super) fn parse(v: Option<&str>) -> Result<Format, ApiError> {
        match v {
            None | Some("auto") => Ok(Format::Auto),
            Some("base64") => Ok(Format::Base64),
            Some(other) => Err(ApiError::bad(
                "BAD_FORMAT",
                format!("format must be auto or base64 (got {other:?})"),
            )),
        }
    }
}
