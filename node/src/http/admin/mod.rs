//! The inspector: a web page at `/admin` to look at a running node and poke it, and the JSON
//! endpoints behind it (documented in docs/node.md, "Inspector", for scripts too).
//!
//! Everything the page needs is compiled into the binary and served from `/admin/...` under a
//! strict Content-Security-Policy (no inline script or style, nothing from elsewhere). The
//! page itself shows nothing on its own: every endpoint it reads checks the API key exactly
//! as `POST /api/publish` does (`Authorization: Bearer <key>`), and on a node without one it
//! says the node is open.
//!
//! # Layout
//! - [`assets`]: the page, its script, style and icon, and the headers they are served with.
//! - [`api`]: `GET /admin/api/auth`, `/status`, `/topics`, `/topic`: small JSON answers from
//!   the node's counters and the hub ([`crate::hub::admin`]).
//! - [`tail`]: `GET /admin/api/tail`, a topic's messages as Server-Sent Events, from a hub
//!   client registered like a socket (bounded the same way) that can neither push nor appear
//!   in presence.

pub mod api;
pub mod assets;
pub mod tail;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, HttpResponseBuilder};

use crate::http::{refusal, AppState};
use tail::Tails;

/// The policy every inspector response carries: scripts, styles, images and requests from
/// the node itself only, no inline code, no framing, no form posts, no `<base>`.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

/// What the inspector keeps for the node's life (part of [`super::AppState`]).
#[derive(Debug, Clone)]
pub struct Inspector {
    /// When the node started.
    started: Instant,
    /// The tails open now.
    tails: Arc<Tails>,
}

impl Default for Inspector {
    fn default() -> Self {
        Self::new()
    }
}

impl Inspector {
    /// The inspector of a node starting now.
    #[must_use]
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            tails: Arc::new(Tails::default()),
        }
    }

    /// How long the node has run.
    #[must_use]
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// The tails open now.
    #[must_use]
    pub fn tails(&self) -> &Arc<Tails> {
        &self.tails
    }
}

/// The headers every inspector response carries: the policy, no type sniffing, no referrer,
/// no framing.
const SECURITY_HEADERS: [(HeaderName, &str); 4] = [
    (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::REFERRER_POLICY, "no-referrer"),
    (header::X_FRAME_OPTIONS, "DENY"),
];

/// Adds [`SECURITY_HEADERS`].
fn secured(mut response: HttpResponseBuilder) -> HttpResponseBuilder {
    for header in SECURITY_HEADERS {
        response.insert_header(header);
    }
    response
}

/// Checks the API key as every `/api/` route does: the `401` to
/// send, with the inspector's headers, when it is missing or wrong.
fn refused(req: &HttpRequest, state: &AppState) -> Option<HttpResponse> {
    let mut refused = refusal(req, state)?;
    let headers = refused.headers_mut();
    for (name, value) in SECURITY_HEADERS {
        headers.insert(name, HeaderValue::from_static(value));
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Some(refused)
}

/// The value of query parameter `name` (the first one), if any.
fn query(req: &HttpRequest, name: &str) -> Option<String> {
    form_urlencoded::parse(req.query_string().as_bytes())
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
}

/// A JSON answer with the inspector's headers, never cached.
fn json(status: actix_web::http::StatusCode, body: &serde_json::Value) -> HttpResponse {
    secured(HttpResponse::build(status))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(body)
}

/// A JSON error answer, `{"error": {"code", "message"}}`, with the inspector's headers.
fn error(
    status: actix_web::http::StatusCode,
    code: &str,
    message: impl std::fmt::Display,
) -> HttpResponse {
    json(
        status,
        &serde_json::json!({"error": {"code": code, "message": message.to_string()}}),
    )
}
