//! `POST /api/publish`: a producer publishes to a topic on every node.

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt as _;
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;
use switchboard_core::presence;
use switchboard_core::{Payload, Topic};

use super::{error, refusal, AppState};
use crate::hub::{Publish, Published, UpstreamOutcome};
use crate::messages::{DEFAULT_EVENT, RESERVED_PREFIX};

/// The body of `POST /api/publish`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody {
    topic: String,
    #[serde(default)]
    event: Option<String>,
    payload: Box<RawValue>,
}

pub(super) async fn publish(
    req: HttpRequest,
    mut body: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    if let Some(refused) = refusal(&req, &state) {
        return refused;
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|len| len > state.max_publish_bytes as u64) {
        return too_large(state.max_publish_bytes);
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
            // The HTTP layer would read and discard the rest of a chunked body to keep the
            // connection; while the body is still held it closes the connection instead.
            actix_web::rt::spawn(async move {
                actix_web::rt::time::sleep(std::time::Duration::from_secs(1)).await;
                drop(body);
            });
            return too_large(state.max_publish_bytes);
        }
        bytes.extend_from_slice(&chunk);
    }
    let parsed = parse_publish(&bytes).and_then(|publish| {
        if state.presence.applies(&publish.topic)
            && presence::SERVER_EVENTS.contains(&publish.event.as_str())
        {
            return Err((
                "invalid_event",
                format!(
                    "event {:?} is sent by the server only on a topic with presence",
                    publish.event
                ),
            ));
        }
        Ok(publish)
    });
    let publish = match parsed {
        Ok(publish) => publish,
        Err((code, message)) => return error(StatusCode::BAD_REQUEST, code, message),
    };
    match state.hub.send(publish).await {
        Ok(published) => answer(&published, state.backend),
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the hub is not running",
        ),
    }
}

/// `413 body_too_large`, closing the connection: the rest of the body is never read, so a
/// client cannot make the node take more than the limit (a streamed body included).
fn too_large(limit: usize) -> HttpResponse {
    let mut response = error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        format!("the body is over the limit of {limit} bytes"),
    );
    response
        .head_mut()
        .set_connection_type(actix_web::http::ConnectionType::Close);
    response
}

/// The HTTP answer to what a publish did.
fn answer(published: &Published, backend: &str) -> HttpResponse {
    let recipients = published.recipients;
    match &published.upstream {
        UpstreamOutcome::NotConfigured | UpstreamOutcome::Sent => {
            let mut body = json!({ "ok": true, "recipients": recipients });
            if let Some(position) = &published.position {
                body["position"] = position.to_string().into();
            }
            HttpResponse::Ok().json(body)
        }
        UpstreamOutcome::TooLarge(too_large) => HttpResponse::PayloadTooLarge().json(json!({
            "error": {
                "code": "payload_too_large_for_backend",
                "message": too_large.to_string(),
                "limit": too_large.max_bytes,
                "size": too_large.size,
            },
            "recipients": 0,
        })),
        UpstreamOutcome::Refused(reason) => HttpResponse::ServiceUnavailable().json(json!({
            "error": {
                "code": "upstream_refused",
                "message": format!(
                    "the {backend} backend refused the message ({reason}): delivered to \
                     {recipients} subscriber(s) on this node only"
                ),
            },
            "recipients": recipients,
        })),
        _ => HttpResponse::ServiceUnavailable().json(json!({
            "error": {
                "code": "upstream_unavailable",
                "message": format!(
                    "the {backend} backend is unreachable: delivered to {recipients} \
                     subscriber(s) on this node only"
                ),
            },
            "recipients": recipients,
        })),
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
    if event.starts_with(RESERVED_PREFIX) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn code(body: &str) -> &'static str {
        parse_publish(body.as_bytes()).unwrap_err().0
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
