//! The inspector's routes through the node's whole actix app (its real routes, a real hub):
//! the key is checked on every endpoint, the topic list is paged and filtered, tails come and
//! go, and every answer carries the inspector's headers.

use std::pin::pin;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use actix::Actor as _;
use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{Service, ServiceResponse};
use actix_web::http::{header, StatusCode};
use actix_web::test::{call_service, init_service, read_body, read_body_json, TestRequest};
use actix_web::web::Bytes;
use actix_web::{web, App};
use serde_json::{json, Value};

use super::{Inspector, CONTENT_SECURITY_POLICY};
use crate::config::Config;
use crate::connections::{self, ConnectionSlots};
use crate::http::{routes, AppState};
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::security::Security;

const KEY: &str = "the-inspector-key";

/// The state of a node started with `args` (in memory), its hub running.
fn state(args: &[&str]) -> AppState {
    // unwrap: the arguments are this file's own.
    let config =
        Config::load_from(std::iter::once("switchboard").chain(args.iter().copied())).unwrap();
    // unwrap: as above.
    let security = Security::from_config(&config).unwrap();
    let metrics = Arc::new(Metrics::default());
    let hub = Hub::new(
        config.max_topics_per_socket,
        metrics.clone(),
        None,
        config.history_rules(),
    )
    .start();
    AppState {
        hub,
        metrics,
        limits: Arc::new(config.connection_limits()),
        send_buffer_bytes: config.send_buffer_bytes,
        max_publish_bytes: config.max_publish_bytes,
        shutting_down: Arc::new(AtomicBool::new(false)),
        backend: "memory",
        security: Arc::new(security),
        slots: ConnectionSlots::new(connections::Limits {
            node: 100,
            per_user: 0,
            per_address: 0,
        }),
        client_ip_header: None,
        presence: Arc::new(config.presence_rules()),
        inspector: Inspector::new(),
    }
}

/// The node's app, as a test calls it.
trait TestApp:
    Service<actix_http::Request, Response = ServiceResponse<BoxBody>, Error = actix_web::Error>
{
}

impl<S> TestApp for S where
    S: Service<actix_http::Request, Response = ServiceResponse<BoxBody>, Error = actix_web::Error>
{
}

/// The node's app over `state`.
async fn app(state: AppState) -> impl TestApp {
    init_service(App::new().app_data(web::Data::new(state)).configure(routes)).await
}

/// `GET path`, with `Authorization: <authorization>` when given.
fn get(path: &str, authorization: Option<&str>) -> actix_http::Request {
    let request = TestRequest::get().uri(path);
    match authorization {
        Some(value) => request.insert_header((header::AUTHORIZATION, value)),
        None => request,
    }
    .to_request()
}

fn bearer() -> Option<&'static str> {
    Some("Bearer the-inspector-key")
}

/// Asserts `response` carries the inspector's headers.
fn assert_secured(response: &ServiceResponse<BoxBody>, what: &str) {
    let headers = response.headers();
    assert_eq!(
        headers
            .get(header::CONTENT_SECURITY_POLICY)
            .map(|value| value.to_str().ok()),
        Some(Some(CONTENT_SECURITY_POLICY)),
        "{what}"
    );
    assert_eq!(
        headers.get(header::X_FRAME_OPTIONS).map(|v| v.as_bytes()),
        Some(&b"DENY"[..]),
        "{what}"
    );
}

/// The next chunk of a streamed body.
async fn next_chunk(body: &mut BoxBody) -> Option<Bytes> {
    let mut body = pin!(body);
    std::future::poll_fn(|cx| body.as_mut().poll_next(cx))
        .await
        // unwrap: an inspector body cannot fail.
        .map(|chunk| chunk.unwrap())
}

/// Opens a tail of `topic`; the response, with its `subscribed` event read.
async fn open_tail(app: &impl TestApp, topic: &str) -> BoxBody {
    let response = call_service(
        app,
        get(&format!("/admin/api/tail?topic={topic}"), bearer()),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK, "tail {topic}");
    assert_eq!(
        response
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.as_bytes()),
        Some(&b"text/event-stream"[..])
    );
    let mut body = response.into_body();
    // unwrap: a tail starts with its `subscribed` event.
    let first = next_chunk(&mut body).await.unwrap();
    assert!(
        first.starts_with(b"event: subscribed\ndata: {"),
        "{first:?}"
    );
    body
}

/// `GET /admin/api/topics?<query>` with the key: the status and the body.
async fn page(app: &impl TestApp, query: &str) -> (StatusCode, Value) {
    let response = call_service(app, get(&format!("/admin/api/topics?{query}"), bearer())).await;
    (response.status(), read_body_json(response).await)
}

async fn status_of(app: &impl TestApp) -> Value {
    read_body_json(call_service(app, get("/admin/api/status", bearer())).await).await
}

#[actix_web::test]
async fn every_endpoint_refuses_a_missing_or_wrong_key() {
    let app = app(state(&["--api-key", KEY])).await;
    let endpoints = [
        "/admin/api/status",
        "/admin/api/topics",
        "/admin/api/topics?filter=room&offset=0&limit=10",
        "/admin/api/topic?topic=room:1",
        "/admin/api/tail?topic=room:1",
        // The page reads these too.
        "/api/presence?topic=room:1",
        "/api/history?topic=room:1",
    ];
    let wrong = [
        None,
        Some("Bearer not-the-key"),
        Some("Bearer "),
        Some("the-inspector-key"),
        Some("Basic dGhlLWluc3BlY3Rvci1rZXk="),
    ];
    for endpoint in endpoints {
        for authorization in wrong {
            let response = call_service(&app, get(endpoint, authorization)).await;
            let what = format!("{endpoint} with {authorization:?}");
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{what}");
            if endpoint.starts_with("/admin/") {
                assert_secured(&response, &what);
            }
            let body: Value = read_body_json(response).await;
            assert_eq!(body["error"]["code"], "unauthorized", "{what}");
        }
    }
    for endpoint in &endpoints[..4] {
        let response = call_service(&app, get(endpoint, bearer())).await;
        assert_eq!(response.status(), StatusCode::OK, "{endpoint} with the key");
        assert_secured(&response, endpoint);
    }
    drop(open_tail(&app, "room:1").await);
}

#[actix_web::test]
async fn auth_says_whether_a_key_is_needed_and_whether_it_is_right() {
    let keyed = app(state(&["--api-key", KEY])).await;
    for (authorization, accepted) in [
        (None, false),
        (Some("Bearer wrong"), false),
        (bearer(), true),
    ] {
        let response = call_service(&keyed, get("/admin/api/auth", authorization)).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_secured(&response, "auth");
        let body: Value = read_body_json(response).await;
        assert_eq!(
            body,
            json!({"required": true, "accepted": accepted}),
            "{authorization:?}"
        );
    }
    assert_eq!(status_of(&keyed).await["inspector"], "api_key");

    let open = app(state(&[])).await;
    let body: Value = read_body_json(call_service(&open, get("/admin/api/auth", None)).await).await;
    assert_eq!(body, json!({"required": false, "accepted": true}));
    let status: Value =
        read_body_json(call_service(&open, get("/admin/api/status", None)).await).await;
    assert_eq!(
        (&status["inspector"], &status["publish"], &status["ready"]),
        (&json!("open"), &json!("open"), &json!(true))
    );
}

#[actix_web::test]
async fn the_topic_list_is_paged_and_filtered_and_tails_are_counted_until_they_close() {
    let app = app(state(&["--api-key", KEY])).await;
    let mut tails = Vec::new();
    for (topic, count) in [("b:1", 2), ("a:1", 2), ("c:1", 3), ("a:2", 1)] {
        for _ in 0..count {
            tails.push(open_tail(&app, topic).await);
        }
    }
    let rows = |body: &Value| -> Vec<String> {
        body["topics"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|row| {
                format!(
                    "{}={}",
                    row["topic"].as_str().unwrap_or("?"),
                    row["subscribers"]
                )
            })
            .collect()
    };

    let (status, first) = page(&app, "limit=2").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(rows(&first), ["c:1=3", "a:1=2"]);
    assert_eq!(
        (
            &first["total"],
            &first["matched"],
            &first["offset"],
            &first["limit"]
        ),
        (&json!(4), &json!(4), &json!(0), &json!(2))
    );
    let (_, second) = page(&app, "limit=2&offset=2").await;
    assert_eq!(rows(&second), ["b:1=2", "a:2=1"]);
    let (_, past) = page(&app, "limit=2&offset=4").await;
    assert_eq!(rows(&past), Vec::<String>::new());
    let (_, filtered) = page(&app, "filter=a%3A").await;
    assert_eq!(rows(&filtered), ["a:1=2", "a:2=1"]);
    assert_eq!(
        (&filtered["total"], &filtered["matched"]),
        (&json!(4), &json!(2))
    );
    let (_, capped) = page(&app, "limit=100000").await;
    assert_eq!(capped["limit"], crate::hub::admin::MAX_PAGE);
    for (query, code) in [
        ("limit=-1", "invalid_limit"),
        ("offset=ten", "invalid_offset"),
    ] {
        let (status, body) = page(&app, query).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}");
        assert_eq!(body["error"]["code"], code, "{query}");
    }

    let topic: Value =
        read_body_json(call_service(&app, get("/admin/api/topic?topic=c:1", bearer())).await).await;
    assert_eq!(
        topic,
        json!({"topic": "c:1", "subscribers": 3, "tails": 3, "history": null, "presence": false})
    );
    for bad in [
        "/admin/api/topic",
        "/admin/api/topic?topic=",
        "/admin/api/tail?topic=",
    ] {
        let response = call_service(&app, get(bad, bearer())).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
    let status = status_of(&app).await;
    assert_eq!(
        (
            &status["gauges"]["tails"],
            &status["gauges"]["connections"],
            &status["gauges"]["topics"]
        ),
        (&json!(8), &json!(0), &json!(4))
    );

    // A closed tail leaves the hub: its topic goes when its last tail does.
    drop(tails);
    let mut gone = json!(null);
    for _ in 0..100 {
        gone = status_of(&app).await;
        if gone["gauges"]["topics"] == 0 && gone["gauges"]["sessions"] == 0 {
            break;
        }
        actix_web::rt::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(
        (
            &gone["gauges"]["tails"],
            &gone["gauges"]["topics"],
            &gone["gauges"]["sessions"]
        ),
        (&json!(0), &json!(0), &json!(0))
    );
}

#[actix_web::test]
async fn tails_are_bounded_per_node() {
    let app = app(state(&["--api-key", KEY])).await;
    let mut tails = Vec::new();
    for _ in 0..super::tail::MAX_TAILS {
        tails.push(open_tail(&app, "busy:1").await);
    }
    let response = call_service(&app, get("/admin/api/tail?topic=busy:1", bearer())).await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let body: Value = read_body_json(response).await;
    assert_eq!(body["error"]["code"], "too_many_tails");
    tails.pop();
    drop(open_tail(&app, "busy:1").await);
}

#[actix_web::test]
async fn the_page_and_its_files_are_served_with_the_policy_and_revalidated() {
    let app = app(state(&["--api-key", KEY])).await;
    for (path, content_type) in [
        ("/admin", "text/html; charset=utf-8"),
        ("/admin/", "text/html; charset=utf-8"),
        ("/admin/admin.js", "text/javascript; charset=utf-8"),
        ("/admin/admin.css", "text/css; charset=utf-8"),
        ("/admin/favicon.svg", "image/svg+xml"),
    ] {
        // The page itself needs no key: it shows nothing until its requests are answered.
        let response = call_service(&app, get(path, None)).await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert_secured(&response, path);
        assert_eq!(
            response
                .headers()
                .get(header::CONTENT_TYPE)
                .map(|v| v.as_bytes()),
            Some(content_type.as_bytes()),
            "{path}"
        );
        // unwrap: every file has an entity tag.
        let etag = response.headers().get(header::ETAG).cloned().unwrap();
        assert!(!read_body(response).await.is_empty());
        let again = TestRequest::get()
            .uri(path)
            .insert_header((header::IF_NONE_MATCH, etag))
            .to_request();
        let response = call_service(&app, again).await;
        assert_eq!(response.status(), StatusCode::NOT_MODIFIED, "{path}");
        assert!(read_body(response).await.is_empty());
    }
    let response = call_service(&app, get("/admin/secrets.json", None)).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_secured(&response, "a missing file");
}
