//! `GET /api/presence?topic=..`: who is on a topic, on every node, for backends (the API key
//! guards it like publishing). The answer is phoenix.js' own format: `{key: {"metas": [...]}}`.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};
use switchboard_core::Topic;

use super::{error, refusal, AppState};
use crate::hub::presence::ListPresence;

pub(super) async fn presence(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    if let Some(refused) = refusal(&req, &state) {
        return refused;
    }
    let topic = form_urlencoded::parse(req.query_string().as_bytes())
        .find(|(key, _)| key == "topic")
        .map(|(_, value)| value.into_owned());
    let Some(topic) = topic else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_topic",
            "the topic query parameter is required",
        );
    };
    let topic = match Topic::try_from(topic) {
        Ok(topic) => topic,
        Err(err) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_topic",
                format!("invalid topic: {err}"),
            )
        }
    };
    if !state.presence.applies(&topic) {
        return error(
            StatusCode::NOT_FOUND,
            "no_presence",
            format!(
                "topic {:?} tracks no presence (presence = true in [channels.{}] turns it on)",
                topic.as_str(),
                topic.namespace()
            ),
        );
    }
    match state
        .hub
        .send(ListPresence {
            topic: topic.clone(),
        })
        .await
    {
        Ok(Ok(list)) => {
            // The hub's list is valid JSON (built by the core); a failure reads as empty.
            let presences: Value = serde_json::from_str(list.get()).unwrap_or_else(|_| json!({}));
            let keys = presences.as_object().map_or(0, serde_json::Map::len);
            let members: usize = presences
                .as_object()
                .map(|keys| {
                    keys.values()
                        .map(|p| p["metas"].as_array().map_or(0, Vec::len))
                        .sum()
                })
                .unwrap_or(0);
            HttpResponse::Ok().json(json!({
                "topic": topic.as_str(),
                "keys": keys,
                "members": members,
                "presences": presences,
            }))
        }
        Ok(Err(reason)) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "presence_unavailable",
            format!("the presence list cannot be read now: {reason}"),
        ),
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the node is shutting down",
        ),
    }
}
