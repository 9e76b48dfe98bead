//! The client transport: the WebSocket glue (everything that knows the WebSocket library
//! lives here) and the write deadline under every client connection ([`stall`]).
//!
//! `actix-web-actors` is deprecated upstream in favour of `actix-ws`; moving means rewriting
//! this file. Sessions use only what it exports: the context type, the incoming message types
//! and [`upgrade`]. It knows nothing of the session itself (any actor that handles the
//! socket's messages can be served), so the session layer sits above it.

pub mod stall;

use actix::{Actor, StreamHandler};
use actix_web::{web, HttpRequest, HttpResponse};
use actix_web_actors::ws;

pub use actix_http::ws::Item;
pub use actix_web_actors::ws::{CloseCode, CloseReason, Message, ProtocolError};

/// The context an actor serving a socket runs in.
pub type SocketContext<A> = ws::WebsocketContext<A>;

/// Largest close reason the WebSocket protocol allows, in bytes.
const MAX_CLOSE_REASON_BYTES: usize = 123;

/// Upgrades `req` to a WebSocket served by `session`, refusing messages over
/// `max_frame_bytes` at the codec.
///
/// # Errors
/// The handshake error (not a WebSocket upgrade request) as an HTTP error response.
pub fn upgrade<A>(
    session: A,
    req: &HttpRequest,
    payload: web::Payload,
    max_frame_bytes: usize,
) -> Result<HttpResponse, actix_web::Error>
where
    A: Actor<Context = SocketContext<A>> + StreamHandler<Result<Message, ProtocolError>>,
{
    ws::WsResponseBuilder::new(session, req, payload)
        .frame_size(max_frame_bytes)
        .start()
}

/// Sends a close frame with `code` and `reason` (cut to the protocol's 123 bytes on a
/// character boundary).
pub fn close<A>(ctx: &mut SocketContext<A>, code: u16, reason: &str)
where
    A: Actor<Context = SocketContext<A>>,
{
    let mut end = reason.len().min(MAX_CLOSE_REASON_BYTES);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    ctx.close(Some(CloseReason {
        code: CloseCode::from(code),
        description: Some(reason[..end].to_owned()),
    }));
}
