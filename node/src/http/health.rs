//! `/healthz` (the process runs), `/readyz` (the node delivers everywhere) and `/metrics`.

use std::sync::atomic::Ordering;

use actix_web::{web, HttpResponse};
use serde_json::json;

use super::AppState;
use crate::security::Security;

pub(super) async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok\n")
}

pub(super) async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let backend = state.backend;
    let bridged = backend != "memory";
    let bridge = match (bridged, state.metrics.is_bridge_up()) {
        (false, _) => "none",
        (true, true) => "up",
        (true, false) => "down",
    };
    let mut body = json!({
        "status": "ready",
        "backend": backend,
        "bridge": bridge,
        "auth": auth_mode(&state.security),
        "publish": publish_mode(&state.security),
    });
    let not_ready = if state.shutting_down.load(Ordering::Relaxed) {
        Some("shutting down".to_owned())
    } else if bridge == "down" {
        Some(format!(
            "the {backend} bridge is down; delivering on this node only, reconnecting"
        ))
    } else {
        None
    };
    match not_ready {
        Some(reason) => {
            body["status"] = "not_ready".into();
            body["reason"] = reason.into();
            HttpResponse::ServiceUnavailable().json(body)
        }
        None => HttpResponse::Ok().json(body),
    }
}

/// How sockets are admitted, for `/readyz`: `token`, or `open` (development: anyone may
/// join and push anywhere).
pub const fn auth_mode(security: &Security) -> &'static str {
    if security.requires_token() {
        "token"
    } else {
        "open"
    }
}

/// Who may `POST /api/publish`, for `/readyz`: `api_key`, or `open` (anyone).
pub const fn publish_mode(security: &Security) -> &'static str {
    if security.requires_api_key() {
        "api_key"
    } else {
        "open"
    }
}

pub(super) async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render())
}
