//! The inspector's JSON endpoints: whether a key is needed and accepted, the node's status and
//! counters, a page of the topic list, one topic. Each is a few atomic loads or one hub
//! message, cheap enough for a page polling every second or two.

use std::sync::atomic::{AtomicU64, Ordering};

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};
use switchboard_core::Topic;

use super::{error, json, query};
use crate::http::health::{auth_mode, publish_mode};
use crate::http::{refusal, AppState};
use crate::hub::admin::{InspectTopic, ListTopics, MAX_PAGE};

/// Rows of the topic list when the request names no `limit`.
pub const DEFAULT_PAGE: usize = 50;

/// `GET /admin/api/auth`: `{"required": bool, "accepted": bool}`, always 200, so the page can
/// tell "ask for the key" from "the key is wrong" without a failed request in the browser's
/// console. It says no more than a refused request would.
pub(in crate::http) async fn auth(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let required = state.security.requires_api_key();
    let presented = req.headers().contains_key(header::AUTHORIZATION);
    // refusal() counts a refused key in switchboard_unauthorized_total; a page asking whether
    // it needs a key at all is not refused anything.
    let accepted = !required || (presented && refusal(&req, &state).is_none());
    json(
        StatusCode::OK,
        &json!({ "required": required, "accepted": accepted }),
    )
}

/// `GET /admin/api/status`: the node, its gauges and its counters (rates are the page's:
/// differences of counters over its own clock).
pub(in crate::http) async fn status(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    if let Some(refused) = super::refused(&req, &state) {
        return refused;
    }
    let metrics = &state.metrics;
    let load = |value: &AtomicU64| value.load(Ordering::Relaxed);
    let bridged = state.backend != "memory";
    let bridge = match (bridged, metrics.is_bridge_up()) {
        (false, _) => "none",
        (true, true) => "up",
        (true, false) => "down",
    };
    // The same judgement as /readyz.
    let not_ready = if state.shutting_down.load(Ordering::Relaxed) {
        Some("shutting down".to_owned())
    } else if bridge == "down" {
        Some(format!(
            "the {} bridge is down; delivering on this node only, reconnecting",
            state.backend
        ))
    } else {
        None
    };
    let inspector = if state.security.requires_api_key() {
        "api_key"
    } else {
        "open"
    };
    let body = json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": state.inspector.uptime().as_secs(),
        "backend": state.backend,
        "bridge": bridge,
        "ready": not_ready.is_none(),
        "reason": not_ready,
        "auth": auth_mode(&state.security),
        "publish": publish_mode(&state.security),
        "inspector": inspector,
        "gauges": {
            "connections": load(&metrics.connections),
            "sessions": load(&metrics.sessions),
            "tails": state.inspector.tails().count(),
            "topics": load(&metrics.topics),
            "subscriptions": load(&metrics.subscriptions),
            "presence_members": load(&metrics.presence_members),
        },
        "counters": {
            "frames_in": load(&metrics.frames_in),
            "frames_out": load(&metrics.frames_out),
            "publishes": load(&metrics.publishes),
            "slow_consumer_disconnects": load(&metrics.slow_consumer_disconnects),
            "protocol_errors": load(&metrics.protocol_errors),
            "unauthorized": load(&metrics.unauthorized),
            "rate_limited": load(&metrics.rate_limited),
            "refused_connections": load(&metrics.refused_connections),
            "bridge_reconnects": load(&metrics.bridge_reconnects),
            "bridge_published": load(&metrics.bridge_published),
            "bridge_received": load(&metrics.bridge_received),
            "bridge_lost": load(&metrics.bridge_lost),
            "bridge_dropped": load(&metrics.bridge_dropped),
        },
    });
    json(StatusCode::OK, &body)
}

/// A `400` naming the query parameter that is wrong.
pub(super) fn bad(code: &str, message: impl std::fmt::Display) -> HttpResponse {
    error(StatusCode::BAD_REQUEST, code, message)
}

/// The hub has stopped: the node is shutting down.
fn stopped() -> HttpResponse {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "the hub is not running",
    )
}

/// A query parameter the request got wrong: its error code and what is wrong.
pub(super) type Wrong = (&'static str, String);

/// A number query parameter, or its default; `code` names the error.
fn number(
    req: &HttpRequest,
    name: &str,
    code: &'static str,
    default: usize,
) -> Result<usize, Wrong> {
    match query(req, name) {
        None => Ok(default),
        Some(value) => value
            .parse()
            .map_err(|_| (code, format!("{name} is a whole number, not {value:?}"))),
    }
}

/// `GET /admin/api/topics?filter=..&offset=..&limit=..`: one page of the topics with local
/// subscribers, most subscribers first (then by name).
pub(in crate::http) async fn topics(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    if let Some(refused) = super::refused(&req, &state) {
        return refused;
    }
    let filter = query(&req, "filter").unwrap_or_default();
    let (offset, limit) = match (
        number(&req, "offset", "invalid_offset", 0),
        number(&req, "limit", "invalid_limit", DEFAULT_PAGE),
    ) {
        (Ok(offset), Ok(limit)) => (offset, limit.min(MAX_PAGE)),
        (Err((code, message)), _) | (_, Err((code, message))) => return bad(code, message),
    };
    let Ok(page) = state
        .hub
        .send(ListTopics {
            filter: filter.clone(),
            offset,
            limit,
        })
        .await
    else {
        return stopped();
    };
    let topics: Vec<Value> = page
        .rows
        .iter()
        .map(|(topic, subscribers)| json!({"topic": topic.as_str(), "subscribers": subscribers}))
        .collect();
    json(
        StatusCode::OK,
        &json!({
            "total": page.total,
            "matched": page.matched,
            "filter": filter,
            "offset": offset,
            "limit": limit,
            "topics": topics,
        }),
    )
}

/// The `topic` query parameter as a topic.
pub(super) fn topic_param(req: &HttpRequest) -> Result<Topic, Wrong> {
    let Some(name) = query(req, "topic") else {
        return Err((
            "invalid_topic",
            "the topic query parameter is required".into(),
        ));
    };
    Topic::try_from(name).map_err(|err| ("invalid_topic", format!("invalid topic: {err}")))
}

/// `GET /admin/api/topic?topic=..`: the topic's local subscribers, the inspector tails among
/// them, and whether it keeps history and tracks presence.
pub(in crate::http) async fn topic(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    if let Some(refused) = super::refused(&req, &state) {
        return refused;
    }
    let topic = match topic_param(&req) {
        Ok(topic) => topic,
        Err((code, message)) => return bad(code, message),
    };
    let Ok(detail) = state
        .hub
        .send(InspectTopic {
            topic: topic.clone(),
        })
        .await
    else {
        return stopped();
    };
    let history = detail
        .history
        .map(|retention| json!({"size": retention.size, "ttl_seconds": retention.ttl.as_secs()}));
    json(
        StatusCode::OK,
        &json!({
            "topic": topic.as_str(),
            "subscribers": detail.subscribers,
            "tails": state.inspector.tails().on(&topic),
            "history": history,
            "presence": detail.presence,
        }),
    )
}
