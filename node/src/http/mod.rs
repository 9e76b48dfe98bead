//! HTTP routes: the WebSocket endpoint, publishing, health, readiness and metrics.
//!
//! # Layout
//! - [`socket`]: `GET /socket/websocket`, the WebSocket upgrade.
//! - [`publish`]: `POST /api/publish`.
//! - [`history`]: `GET /api/history`.
//! - [`presence`]: `GET /api/presence`.
//! - [`health`]: `/healthz`, `/readyz`, `/metrics`.
//! - [`admin`]: the inspector, `/admin` and its JSON endpoints under `/admin/api/`.

pub mod admin;
pub mod health;
pub mod history;
pub mod presence;
pub mod publish;
pub mod socket;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use actix::Addr;
use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;
use switchboard_core::connection::Limits;
use switchboard_core::presence::PresenceRules;

use crate::connections::ConnectionSlots;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::security::Security;

/// What every handler shares.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The topic hub.
    pub hub: Addr<Hub>,
    /// The node's metrics.
    pub metrics: Arc<Metrics>,
    /// Limits every connection applies.
    pub limits: Arc<Limits>,
    /// Unsent bytes a socket may have queued.
    pub send_buffer_bytes: usize,
    /// Largest publish body.
    pub max_publish_bytes: usize,
    /// Set once shutdown has begun.
    pub shutting_down: Arc<AtomicBool>,
    /// The backend's name (`memory`, `redis`, `postgres`).
    pub backend: &'static str,
    /// Tokens, channel rules, API key, origins.
    pub security: Arc<Security>,
    /// The connection limits.
    pub slots: ConnectionSlots,
    /// The header a trusted proxy puts the client's address in, if one is configured.
    pub client_ip_header: Option<header::HeaderName>,
    /// Which topics track presence.
    pub presence: Arc<PresenceRules>,
    /// The inspector's start time and open tails.
    pub inspector: admin::Inspector,
}

/// Registers every route.
pub fn routes(config: &mut web::ServiceConfig) {
    config
        .route("/socket/websocket", web::get().to(socket::socket))
        .route("/api/publish", web::post().to(publish::publish))
        .route("/api/publish", web::route().to(method_not_allowed))
        .route("/api/history", web::get().to(history::history))
        .route("/api/presence", web::get().to(presence::presence))
        .route("/healthz", web::get().to(health::healthz))
        .route("/readyz", web::get().to(health::readyz))
        .route("/metrics", web::get().to(health::metrics))
        .route("/admin", web::get().to(admin::assets::page))
        .route("/admin/", web::get().to(admin::assets::page))
        .route("/admin/api/auth", web::get().to(admin::api::auth))
        .route("/admin/api/status", web::get().to(admin::api::status))
        .route("/admin/api/topics", web::get().to(admin::api::topics))
        .route("/admin/api/topic", web::get().to(admin::api::topic))
        .route("/admin/api/tail", web::get().to(admin::tail::tail))
        .route("/admin/{file}", web::get().to(admin::assets::file))
        .default_service(web::to(not_found));
}

/// A JSON error body: `{"error":{"code":..,"message":..}}`.
fn error(status: StatusCode, code: &str, message: impl std::fmt::Display) -> HttpResponse {
    HttpResponse::build(status).json(json!({
        "error": { "code": code, "message": message.to_string() }
    }))
}

/// Checks the API key of an API request: the response to send when it is refused.
fn refusal(req: &HttpRequest, state: &AppState) -> Option<HttpResponse> {
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok());
    if state.security.api_key_accepted(authorization) {
        return None;
    }
    crate::metrics::add(&state.metrics.unauthorized, 1);
    Some(
        HttpResponse::Unauthorized()
            .insert_header((header::WWW_AUTHENTICATE, "Bearer"))
            .json(json!({"error": {
                "code": "unauthorized",
                "message": "this API needs the API key as `Authorization: Bearer <key>`",
            }})),
    )
}

async fn method_not_allowed() -> HttpResponse {
    HttpResponse::MethodNotAllowed()
        .insert_header((header::ALLOW, "POST"))
        .json(json!({"error": {
            "code": "method_not_allowed",
            "message": "publish with POST /api/publish",
        }}))
}

async fn not_found(req: HttpRequest) -> HttpResponse {
    error(
        StatusCode::NOT_FOUND,
        "not_found",
        format!(
            "no route for {} {}; see /socket/websocket, /api/publish, /api/history, /api/presence, /healthz, \
             /readyz, /metrics, /admin",
            req.method(),
            req.path()
        ),
    )
}
