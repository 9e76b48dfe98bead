//! `GET /api/history?topic=..&since=..&limit=..`: a topic's publications after a position,
//! for backends (the API key guards it like publishing).

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};
use switchboard_core::history::Position;
use switchboard_core::Topic;

use super::{error, refusal, AppState};
use crate::hub::ReadHistory;

/// The most publications one request returns.
pub const MAX_LIMIT: u32 = 10_000;

pub(super) async fn history(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    if let Some(refused) = refusal(&req, &state) {
        return refused;
    }
    let mut topic = None;
    let mut since = None;
    let mut limit = None;
    for (key, value) in form_urlencoded::parse(req.query_string().as_bytes()) {
        match key.as_ref() {
            "topic" => topic = Some(value.into_owned()),
            "since" => since = Some(value.into_owned()),
            "limit" => limit = Some(value.into_owned()),
            _ => {}
        }
    }
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
    let since: Option<Position> = match since.as_deref().map(str::parse).transpose() {
        Ok(since) => since,
        Err(err) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_since",
                format!("invalid since: {err}"),
            )
        }
    };
    let limit = match limit.as_deref().map(str::parse::<u32>).transpose() {
        Ok(limit) => limit.unwrap_or(100).min(MAX_LIMIT),
        Err(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_limit",
                format!("limit is a number from 0 to {MAX_LIMIT}"),
            )
        }
    };
    let after = since.as_ref().map_or(0, |since| since.offset);
    let read = match state
        .hub
        .send(ReadHistory {
            topic: topic.clone(),
            after,
            limit,
        })
        .await
    {
        Ok(Ok(read)) => read,
        Ok(Err(reason)) if reason.contains("keeps no history") => {
            return error(StatusCode::NOT_FOUND, "no_history", reason);
        }
        Ok(Err(reason)) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "history_unavailable",
                reason,
            )
        }
        Err(_) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the hub is not running",
            )
        }
    };
    // A `since` of another epoch, or older than the history reaches, cannot be served from:
    // say so rather than hand back a stream with a hole.
    let recoverable = since.as_ref().is_none_or(|since| {
        since.epoch == read.epoch
            && since.offset <= read.latest
            && since.offset + 1 >= read.earliest
    });
    let publications: Vec<Value> = if recoverable {
        read.publications
            .iter()
            .map(|p| {
                let payload: Value = serde_json::from_str(p.payload.get()).unwrap_or(Value::Null);
                json!({ "position": p.position.to_string(), "event": p.event, "payload": payload })
            })
            .collect()
    } else {
        Vec::new()
    };
    let mut body = json!({
        "topic": topic.as_str(),
        "position": Position::new(read.latest, read.epoch.clone()).to_string(),
        "publications": publications,
    });
    if since.is_some() {
        body["recovered"] = recoverable.into();
    }
    HttpResponse::Ok().json(body)
}
