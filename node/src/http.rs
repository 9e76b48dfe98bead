//! HTTP routes: the WebSocket endpoint, publishing, health, readiness and metrics.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use actix::Addr;
use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt as _;
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;
use switchboard_core::{Payload, Topic};
use tracing::debug;

use crate::connections::ConnectionSlots;
use crate::hub::{Hub, Publish, Published, UpstreamOutcome};
use crate::metrics::{self, Metrics};
use crate::security::Security;
use crate::session::{SessionLimits, WsSession};
use crate::transport;

/// The only protocol version spoken: Phoenix Channels V2 JSON.
pub const PROTOCOL_VSN: &str = "2.0.0";

/// The event a publish without one is delivered as.
pub const DEFAULT_EVENT: &str = "message";

/// What every handler shares.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The topic hub.
    pub hub: Addr<Hub>,
    /// The node's metrics.
    pub metrics: Arc<Metrics>,
    /// Limits every session applies.
    pub limits: Arc<SessionLimits>,
    /// Largest publish body.
    pub max_publish_bytes: usize,
    /// Set once shutdown has begun.
    pub shutting_down: Arc<AtomicBool>,
    /// The backend's name (`memory`, `redis`).
    pub backend: &'static str,
    /// Tokens, channel rules, API key, origins.
    pub security: Arc<Security>,
    /// The connection limit.
    pub slots: ConnectionSlots,
}

/// Registers every route.
pub fn routes(config: &mut web::ServiceConfig) {
    config
        .route("/socket/websocket", web::get().to(socket))
        .route("/api/publish", web::post().to(publish))
        .route("/api/publish", web::route().to(method_not_allowed))
        .route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .route("/metrics", web::get().to(metrics))
        .default_service(web::to(not_found));
}

/// A JSON error body: `{"error":{"code":..,"message":..}}`.
fn error(status: StatusCode, code: &str, message: impl std::fmt::Display) -> HttpResponse {
    HttpResponse::build(status).json(json!({
        "error": { "code": code, "message": message.to_string() }
    }))
}

/// The socket's query parameters. Parsed leniently, as phoenix.js clients expect: unknown
/// or malformed parameters are ignored and the first `vsn` and `token` win.
#[derive(Debug, Default)]
struct SocketQuery {
    vsn: Option<String>,
    token: Option<String>,
}

impl SocketQuery {
    fn parse(query: &str) -> Self {
        let mut parsed = Self::default();
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            let slot = match key.as_ref() {
                "vsn" => &mut parsed.vsn,
                "token" => &mut parsed.token,
                _ => continue,
            };
            if slot.is_none() {
                *slot = Some(value.into_owned());
            }
        }
        parsed
    }
}

async fn socket(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let query = SocketQuery::parse(req.query_string());
    match query.vsn.as_deref() {
        Some(PROTOCOL_VSN) => {}
        Some(other) => {
            return error(
                StatusCode::BAD_REQUEST,
                "unsupported_vsn",
                format!(
                    "protocol version {other:?} is not supported; use vsn=2.0.0 (Phoenix V2 JSON)"
                ),
            )
        }
        None => {
            return error(
                StatusCode::BAD_REQUEST,
                "missing_vsn",
                "the vsn query parameter is required; use vsn=2.0.0 (Phoenix V2 JSON)",
            )
        }
    }
    if state.shutting_down.load(Ordering::Relaxed) {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the node is shutting down",
        );
    }
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .map(|value| value.to_str().unwrap_or("\u{fffd}"));
    if !state.security.origin_allowed(origin) {
        metrics::add(&state.metrics.unauthorized, 1);
        return error(
            StatusCode::FORBIDDEN,
            "origin_not_allowed",
            "this origin may not open a socket here",
        );
    }
    let identity = match state.security.authenticate(query.token.as_deref()) {
        Ok(identity) => identity,
        Err(reason) => {
            metrics::add(&state.metrics.unauthorized, 1);
            debug!(%reason, "socket refused");
            return error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a valid token is required (the token query parameter)",
            );
        }
    };
    let Some(slot) = state.slots.try_acquire() else {
        metrics::add(&state.metrics.refused_connections, 1);
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_connections",
            format!(
                "the node holds its limit of {} connections; retry later or elsewhere",
                state.slots.limit()
            ),
        );
    };
    let session = WsSession::new(
        state.hub.clone(),
        state.limits.clone(),
        state.metrics.clone(),
        state.security.clone(),
        identity,
        slot,
    );
    match transport::upgrade(session, &req, payload, state.limits.max_frame_bytes) {
        Ok(response) => response,
        Err(err) => error(
            StatusCode::BAD_REQUEST,
            "not_a_websocket_upgrade",
            format!("{err}; connect with a WebSocket client"),
        ),
    }
}

/// The body of `POST /api/publish`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody {
    topic: String,
    #[serde(default)]
    event: Option<String>,
    payload: Box<RawValue>,
}

async fn publish(
    req: HttpRequest,
    mut body: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok());
    if !state.security.api_key_accepted(authorization) {
        metrics::add(&state.metrics.unauthorized, 1);
        return HttpResponse::Unauthorized()
            .insert_header((header::WWW_AUTHENTICATE, "Bearer"))
            .json(json!({"error": {
                "code": "unauthorized",
                "message": "publishing needs the API key as `Authorization: Bearer <key>`",
            }}));
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|len| len > state.max_publish_bytes as u64) {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!(
                "the body is over the limit of {} bytes",
                state.max_publish_bytes
            ),
        );
    }
    let mut bytes = web::BytesMut::new();
    while let Some(chunk) = body.next().await {
        let Ok(chunk) = chunk else {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_body",
                "the request body could not be read",
            );
        };
        if bytes.len() + chunk.len() > state.max_publish_bytes {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!(
                    "the body is over the limit of {} bytes",
                    state.max_publish_bytes
                ),
            );
        }
        bytes.extend_from_slice(&chunk);
    }
    let publish = match parse_publish(&bytes) {
        Ok(publish) => publish,
        Err((code, message)) => return error(StatusCode::BAD_REQUEST, code, message),
    };
    match state.hub.send(publish).await {
        Ok(Published {
            recipients,
            upstream: UpstreamOutcome::Unavailable,
        }) => HttpResponse::ServiceUnavailable().json(json!({
            "error": {
                "code": "upstream_unavailable",
                "message": format!(
                    "the {} backend is unreachable: delivered to {recipients} subscriber(s) on this node only",
                    state.backend
                ),
            },
            "recipients": recipients,
        })),
        Ok(Published {
            upstream: UpstreamOutcome::TooLarge(too_large),
            ..
        }) => HttpResponse::PayloadTooLarge().json(json!({
            "error": {
                "code": "payload_too_large_for_backend",
                "message": too_large.to_string(),
                "limit": too_large.max_bytes,
                "size": too_large.size,
            },
            "recipients": 0,
        })),
        Ok(Published { recipients, .. }) => {
            HttpResponse::Ok().json(json!({ "ok": true, "recipients": recipients }))
        }
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the hub is not running",
        ),
    }
}

/// Validates a publish body; the error is `(code, message)`.
fn parse_publish(bytes: &[u8]) -> Result<Publish, (&'static str, String)> {
    const SHAPE: &str = r#"expected {"topic": string, "event"?: string, "payload": any JSON}"#;
    if let Err(err) = serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
        return Err(("invalid_json", format!("the body is not valid JSON: {err}")));
    }
    if bytes.trim_ascii_start().first() != Some(&b'{') {
        return Err((
            "invalid_body",
            format!("the body must be a JSON object; {SHAPE}"),
        ));
    }
    let body: PublishBody =
        serde_json::from_slice(bytes).map_err(|err| ("invalid_body", format!("{err}; {SHAPE}")))?;
    let topic = Topic::try_from(body.topic)
        .map_err(|err| ("invalid_topic", format!("invalid topic: {err}")))?;
    let event = body.event.unwrap_or_else(|| DEFAULT_EVENT.to_owned());
    if event.is_empty() {
        return Err(("invalid_event", "event is empty".into()));
    }
    if event.starts_with("phx_") {
        return Err((
            "invalid_event",
            format!("event {event:?} is reserved by the protocol"),
        ));
    }
    Ok(Publish {
        topic,
        event,
        payload: Payload::from_raw_value(body.payload),
    })
}

async fn method_not_allowed() -> HttpResponse {
    HttpResponse::MethodNotAllowed()
        .insert_header((header::ALLOW, "POST"))
        .json(json!({"error": {
            "code": "method_not_allowed",
            "message": "publish with POST /api/publish",
        }}))
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok\n")
}

async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let backend = state.backend;
    let bridged = backend != "memory";
    let bridge = match (bridged, state.metrics.is_bridge_up()) {
        (false, _) => "none",
        (true, true) => "up",
        (true, false) => "down",
    };
    if state.shutting_down.load(Ordering::Relaxed) {
        HttpResponse::ServiceUnavailable().json(json!({
            "status": "not_ready", "reason": "shutting down", "backend": backend, "bridge": bridge,
            "auth": auth_mode(&state.security),
        }))
    } else if bridge == "down" {
        HttpResponse::ServiceUnavailable().json(json!({
            "status": "not_ready",
            "reason": format!("the {backend} bridge is down; delivering on this node only, reconnecting"),
            "backend": backend,
            "bridge": bridge,
            "auth": auth_mode(&state.security),
        }))
    } else {
        HttpResponse::Ok().json(json!({
            "status": "ready",
            "backend": backend,
            "bridge": bridge,
            "auth": auth_mode(&state.security),
        }))
    }
}

/// How sockets are admitted, for `/readyz`: `token`, or `open` (development: anyone may
/// join and push anywhere).
const fn auth_mode(security: &Security) -> &'static str {
    if security.requires_token() {
        "token"
    } else {
        "open"
    }
}

async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render())
}

async fn not_found(req: HttpRequest) -> HttpResponse {
    error(
        StatusCode::NOT_FOUND,
        "not_found",
        format!(
            "no route for {} {}; see /socket/websocket, /api/publish, /healthz, /readyz, /metrics",
            req.method(),
            req.path()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(body: &str) -> &'static str {
        parse_publish(body.as_bytes()).unwrap_err().0
    }

    #[test]
    fn socket_query_is_lenient_and_first_wins() {
        let query = SocketQuery::parse("vsn=2.0.0&%zz=%&vsn=1.0.0&token=a%2Bb");
        assert_eq!(query.vsn.as_deref(), Some("2.0.0"));
        assert_eq!(query.token.as_deref(), Some("a+b"));
        assert_eq!(SocketQuery::parse("").vsn, None);
    }

    #[test]
    fn publish_body_defaults_the_event() {
        let publish = parse_publish(br#"{"topic":"auditlog:1","payload":{"a":1}}"#).unwrap();
        assert_eq!(publish.event, "message");
        assert_eq!(publish.payload.get(), r#"{"a":1}"#);
    }

    #[test]
    fn publish_body_errors_name_the_problem() {
        assert_eq!(code("{"), "invalid_json");
        assert_eq!(code(r#"{"topic":"t"}"#), "invalid_body");
        assert_eq!(code(r#"{"topic":1,"payload":1}"#), "invalid_body");
        assert_eq!(
            code(r#"{"topic":"t","payload":1,"extra":1}"#),
            "invalid_body"
        );
        assert_eq!(code(r#"{"topic":"","payload":1}"#), "invalid_topic");
        assert_eq!(
            code(r#"{"topic":"t","event":"","payload":1}"#),
            "invalid_event"
        );
        assert_eq!(
            code(r#"{"topic":"t","event":"phx_reply","payload":1}"#),
            "invalid_event"
        );
        let (_, message) = parse_publish(br#"{"topic":"t"}"#).unwrap_err();
        assert!(message.contains("missing field `payload`"), "{message}");
    }
}
