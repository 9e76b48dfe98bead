//! The WebSocket glue: everything that knows the WebSocket library lives here.
//!
//! `actix-web-actors` is deprecated upstream in favour of `actix-ws`; moving means rewriting
//! this file. Sessions use only what it exports: the context type, the incoming message types
//! and [`upgrade`].

use actix_web::{web, HttpRequest, HttpResponse};
use actix_web_actors::ws;

pub use actix_http::ws::Item;
pub use actix_web_actors::ws::{CloseCode, CloseReason, Message, ProtocolError};

use crate::session::WsSession;

/// The context a session actor runs in.
pub type SocketContext = ws::WebsocketContext<WsSession>;

/// Largest close reason the WebSocket protocol allows, in bytes.
const MAX_CLOSE_REASON_BYTES: usize = 123;

/// Upgrades `req` to a WebSocket served by `session`, refusing messages over
/// `max_frame_bytes` at the codec.
///
/// # Errors
/// The handshake error (not a WebSocket upgrade request) as an HTTP error response.
pub fn upgrade(
    session: WsSession,
    req: &HttpRequest,
    payload: web::Payload,
    max_frame_bytes: usize,
) -> Result<HttpResponse, actix_web::Error> {
    ws::WsResponseBuilder::new(session, req, payload)
        .frame_size(max_frame_bytes)
        .start()
}

/// Sends a close frame with `code` and `reason` (cut to the protocol's 123 bytes on a
/// character boundary).
pub fn close(ctx: &mut SocketContext, code: u16, reason: &str) {
    let mut end = reason.len().min(MAX_CLOSE_REASON_BYTES);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    ctx.close(Some(CloseReason {
        code: CloseCode::from(code),
        description: Some(reason[..end].to_owned()),
    }));
}
