//! `GET /socket/websocket`: checks the version, the node's state, the origin, the token and
//! the connection limit, then upgrades to a WebSocket served by a session.

use std::sync::atomic::Ordering;

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use switchboard_core::connection::Connection;
use switchboard_core::Time;
use tracing::debug;

use super::{error, AppState};
use crate::connections::{client_address, Refused};
use crate::metrics;
use crate::session::WsSession;
use crate::transport;

/// The only protocol version spoken: Phoenix Channels V2 JSON.
pub const PROTOCOL_VSN: &str = "2.0.0";

/// The socket's query parameters. Parsed leniently, as phoenix.js clients expect: unknown
/// or malformed parameters are ignored and the first `vsn`, `token` and `user` win.
#[derive(Debug, Default)]
struct SocketQuery {
    vsn: Option<String>,
    token: Option<String>,
    /// On an open node, the client's presence key (phoenix.js: `params: {user: "ada"}`).
    user: Option<String>,
}

impl SocketQuery {
    fn parse(query: &str) -> Self {
        let mut parsed = Self::default();
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            let slot = match key.as_ref() {
                "vsn" => &mut parsed.vsn,
                "token" => &mut parsed.token,
                "user" => &mut parsed.user,
                _ => continue,
            };
            if slot.is_none() {
                *slot = Some(value.into_owned());
            }
        }
        parsed
    }
}

pub(super) async fn socket(
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
    let header = state
        .client_ip_header
        .as_ref()
        .and_then(|name| req.headers().get(name))
        .and_then(|value| value.to_str().ok());
    let address = client_address(req.peer_addr().map(|peer| peer.ip()), header);
    let slot = match state.slots.try_acquire(identity.user.as_deref(), address) {
        Ok(slot) => slot,
        Err(refused) => {
            metrics::add(&state.metrics.refused_connections, 1);
            let (status, code) = match refused {
                Refused::Node(_) => (StatusCode::SERVICE_UNAVAILABLE, "too_many_connections"),
                Refused::User(_) => (
                    StatusCode::TOO_MANY_REQUESTS,
                    "too_many_connections_for_user",
                ),
                _ => (
                    StatusCode::TOO_MANY_REQUESTS,
                    "too_many_connections_from_address",
                ),
            };
            debug!(?address, user = ?identity.user, %refused, "socket refused");
            return error(status, code, refused);
        }
    };
    // Who the socket is on presence topics: the token's sub, or on an open node what the
    // client calls itself (the user parameter).
    let key = if state.security.is_open() {
        query.user.filter(|user| !user.is_empty())
    } else {
        identity.user.clone()
    };
    let presence = switchboard_core::presence::Identity {
        key,
        info: identity.info,
    };
    let mut engine = Connection::new(
        state.limits.clone(),
        state.security.rules().clone(),
        identity.user,
        Time::ZERO,
    )
    .with_presence(state.presence.clone(), presence);
    if let Some(valid_for) = identity.valid_for {
        // Closed with 3005 when the token stops being accepted.
        engine = engine.with_expiry(Time::ZERO + valid_for);
    }
    let session = WsSession::new(
        state.hub.clone(),
        engine,
        state.send_buffer_bytes,
        state.metrics.clone(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_query_is_lenient_and_first_wins() {
        let query = SocketQuery::parse("vsn=2.0.0&%zz=%&vsn=1.0.0&token=a%2Bb");
        assert_eq!(query.vsn.as_deref(), Some("2.0.0"));
        assert_eq!(query.token.as_deref(), Some("a+b"));
        assert_eq!(SocketQuery::parse("").vsn, None);
    }
}
