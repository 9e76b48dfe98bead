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

pub(super) async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render())
}
