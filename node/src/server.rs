//! Starting the node and shutting it down gracefully.

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher as _, Hasher as _};

use actix::{Actor as _, Addr, Arbiter, AsyncContext as _, Recipient};
use actix_http::{HttpService, Protocol};
use actix_service::{fn_service, map_config, IntoServiceFactory as _, ServiceFactoryExt as _};
use actix_web::dev::AppConfig;
use actix_web::rt::net::TcpStream;
use actix_web::{web, App};
use anyhow::Context as _;
use switchboard_core::bridge::BridgeConfig;
use tracing::{info, warn};

use crate::bridge::envelope::Format;
use crate::bridge::postgres::{self, PostgresBackend};
use crate::bridge::redis::RedisBackend;
use crate::bridge::{Backend as Adapter, BridgeActor, PresenceLink};
use crate::config::{Backend, Config};
use crate::connections::{self, automatic_limit, raise_open_file_limit, ConnectionSlots};
use crate::http::{self, AppState};
use crate::hub::presence::{self, LeavePresence};
use crate::hub::upstream::{MessageLimit, Upstream};
use crate::hub::{CloseAll, Hub};
use crate::messages::Drain;
use crate::metrics::Metrics;
use crate::security::Security;
use crate::transport::stall::Stall;

/// Connections waiting to be accepted.
const BACKLOG: i32 = 2048;

/// The listening socket on `addr`, with address reuse and a deep accept queue.
fn listen(addr: SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )
    .context("cannot create the listening socket")?;
    socket
        .set_reuse_address(true)
        .context("cannot set SO_REUSEADDR")?;
    socket
        .bind(&addr.into())
        .with_context(|| format!("cannot listen on {addr}"))?;
    socket
        .listen(BACKLOG)
        .with_context(|| format!("cannot listen on {addr}"))?;
    socket
        .set_nonblocking(true)
        .context("cannot make the listening socket non-blocking")?;
    Ok(socket.into())
}

/// Runs the node until Ctrl-C or SIGTERM, then closes every socket with 1001, lets the
/// bridge publish what it accepted, and returns.
///
/// # Errors
/// Binding the address, or the HTTP server failing.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::default());
    let backend = config.backend()?;
    let security = Security::from_config(&config).map_err(anyhow::Error::msg)?;
    if backend == Backend::Memory && (config.redis_url.is_some() || config.database_url.is_some()) {
        warn!("PUBSUB_BACKEND=memory: the configured Redis/database URL is ignored; this node delivers to its own sockets only");
    }
    if security.requires_token() {
        info!("sockets need a token; channel rules enforced");
    } else {
        warn!("OPEN NODE: no --token-secret, so any socket may join and push to any topic; set one before exposing this node");
    }
    if security.requires_api_key() {
        info!("POST /api/publish needs the API key");
    } else if security.requires_token() {
        warn!("OPEN PUBLISHING (--open-publish): anyone who reaches the node may POST /api/publish to any topic");
    } else {
        info!("POST /api/publish is open (no --api-key)");
    }
    let open_files = raise_open_file_limit();
    let max_connections = match config.max_connections {
        0 => automatic_limit(open_files),
        limit => limit,
    };
    info!(max_connections, open_files, "connection limit");
    let client_ip_header = config
        .client_ip_header
        .as_deref()
        .map(actix_web::http::header::HeaderName::try_from)
        .transpose()
        .context("invalid --client-ip-header")?;
    let (hub, drain_bridge) = start_hub(&config, &backend, &metrics)?;
    let shutting_down = Arc::new(AtomicBool::new(false));
    let state = AppState {
        hub: hub.clone(),
        metrics: metrics.clone(),
        limits: Arc::new(config.connection_limits()),
        send_buffer_bytes: config.send_buffer_bytes,
        max_publish_bytes: config.max_publish_bytes,
        shutting_down: shutting_down.clone(),
        backend: backend.name(),
        security: Arc::new(security),
        slots: ConnectionSlots::new(connections::Limits {
            node: max_connections,
            per_user: config.max_connections_per_user,
            per_address: config.max_connections_per_address,
        }),
        client_ip_header,
        presence: Arc::new(config.presence_rules()),
        inspector: http::admin::Inspector::new(),
    };
    let data = web::Data::new(state);
    let listener = listen(config.bind)?;
    let addr = listener
        .local_addr()
        .context("the listening socket has no address")?;
    let write_timeout = config.write_timeout;
    let server = actix_server::Server::build()
        .listen("switchboard", listener, move || {
            let app = App::new().app_data(data.clone()).configure(http::routes);
            let service = HttpService::build()
                // Drop a connection as soon as its response (a WebSocket after the close
                // handshake) has been written, instead of waiting for the client to hang up.
                .client_disconnect_timeout(Duration::ZERO)
                .local_addr(addr)
                .finish(map_config(
                    app.into_factory()
                        .map_err(|err: actix_web::Error| err.error_response()),
                    |_| AppConfig::default(),
                ));
            fn_service(move |io: TcpStream| async move {
                let socket = socket2::SockRef::from(&io);
                // Frames are small and latency matters: never wait for Nagle's algorithm.
                let _ = socket.set_tcp_nodelay(true);
                let _ = socket.set_tcp_user_timeout(Some(write_timeout));
                let peer = io.peer_addr().ok();
                Ok((Stall::new(io, write_timeout), Protocol::Http1, peer))
            })
            .and_then(service)
        })
        .with_context(|| format!("cannot serve on {addr}"))?
        .disable_signals()
        .shutdown_timeout(1)
        .run();
    let addrs = [addr];
    announce(&addrs);
    info!(addrs = ?addrs, "listening");
    let handle = server.handle();
    let shutdown_timeout = config.shutdown_timeout;
    actix_web::rt::spawn(async move {
        wait_for_signal().await;
        shutting_down.store(true, Ordering::Relaxed);
        info!("shutting down");
        let deadline = Instant::now() + shutdown_timeout.saturating_sub(Duration::from_millis(500));
        close_sockets(&hub, &metrics, deadline).await;
        // This node's presence members leave every list now, not at the TTL.
        let left = deadline.saturating_duration_since(Instant::now());
        let _ = actix_web::rt::time::timeout(left, hub.send(LeavePresence)).await;
        handle.stop(true).await;
        if let Some(drain) = drain_bridge {
            publish_what_was_accepted(&drain, deadline).await;
        }
    });
    server.await.context("HTTP server failed")?;
    info!("stopped");
    Ok(())
}

/// Starts the hub, and the bridge actor on its own thread when a backend is configured;
/// returns the hub and where to tell the bridge to drain at shutdown.
fn start_hub(
    config: &Config,
    backend: &Backend,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<(Addr<Hub>, Option<Recipient<Drain>>)> {
    let max_topics = config.max_topics_per_socket;
    let origin = origin_id();
    let bridge_config = config.bridge(jitter_seed());
    let history = config.history_rules();
    let presence = !config.presence_rules().is_empty();
    match backend {
        Backend::Redis { url } => {
            let mut adapter =
                RedisBackend::new(url, &config.channel_prefix, config.envelope, &history)
                    .context("invalid --redis-url")?;
            if presence {
                adapter = adapter.with_presence();
            }
            info!(%origin, prefix = %config.channel_prefix, envelope = ?config.envelope, "sharing topics through redis");
            let format = Format::new(config.envelope, "redis", origin.clone());
            Ok(start_bridged(
                adapter,
                bridge_config,
                format,
                None,
                config,
                metrics,
                &origin,
            ))
        }
        Backend::Postgres { url } => {
            let mut adapter = PostgresBackend::new(url, &config.channel_prefix, &history)
                .context("invalid --database-url")?;
            if presence {
                adapter = adapter.with_presence();
            }
            info!(%origin, prefix = %config.channel_prefix, envelope = ?config.envelope, "sharing topics through postgres");
            let format = Format::new(config.envelope, "postgres", origin.clone());
            Ok(start_bridged(
                adapter,
                bridge_config,
                format,
                Some(postgres::MAX_PAYLOAD_BYTES),
                config,
                metrics,
                &origin,
            ))
        }
        _ => Ok((
            Hub::new(max_topics, metrics.clone(), None, history)
                .with_presence(config.presence_rules(), origin, config.presence_ttl)
                .start(),
            None,
        )),
    }
}

/// The hub and a bridge through `adapter` on its own arbiter, wired to each other through
/// recipients.
fn start_bridged<B: Adapter + Send>(
    adapter: B,
    bridge_config: BridgeConfig,
    format: Format,
    max_message_bytes: Option<usize>,
    config: &Config,
    metrics: &Arc<Metrics>,
    origin: &str,
) -> (Addr<Hub>, Option<Recipient<Drain>>) {
    let max_topics = config.max_topics_per_socket;
    let history = config.history_rules();
    let name = adapter.name();
    let subscribe_timeout = config.subscribe_timeout;
    let limit = max_message_bytes.map(|max_bytes| {
        let format = format.clone();
        MessageLimit {
            backend: name,
            max_bytes,
            measure: Arc::new(move |topic, event, payload| {
                format.encoded_len(topic, event, payload)
            }),
        }
    });
    let metrics = metrics.clone();
    let mut drain = None;
    let presence = config.presence_rules();
    let presence_ttl = config.presence_ttl;
    let node = origin.to_owned();
    let hub = Hub::create(|ctx| {
        let incoming = ctx.address().recipient();
        let lost = ctx.address().recipient();
        let bridge_metrics = metrics.clone();
        let link = (!presence.is_empty()).then(|| PresenceLink {
            changed: ctx.address().recipient(),
            up: ctx.address().recipient(),
            held: ctx.address().recipient(),
            node: node.clone(),
            every: presence::heartbeat_every(presence_ttl),
            liveness: presence::liveness(presence_ttl),
        });
        let bridge = BridgeActor::start_in_arbiter(&Arbiter::new().handle(), move |_| {
            let bridge = BridgeActor::new(adapter, bridge_config, format, incoming, bridge_metrics)
                .with_link_watch(lost);
            match link {
                Some(link) => bridge.with_presence(link),
                None => bridge,
            }
        });
        drain = Some(bridge.clone().recipient());
        let mut upstream = Upstream::of(name, subscribe_timeout, &bridge);
        if let Some(limit) = limit {
            upstream = upstream.with_limit(limit);
        }
        Hub::new(max_topics, metrics, Some(upstream), history).with_presence(
            presence,
            node,
            presence_ttl,
        )
    });
    (hub, drain)
}

/// A seed for this process's reconnect jitter.
fn jitter_seed() -> u64 {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.finish()
}

/// Tells every session to close with 1001 and waits until they have, or the deadline.
async fn close_sockets(hub: &Addr<Hub>, metrics: &Metrics, deadline: Instant) {
    if hub.send(CloseAll).await.is_err() {
        warn!("hub already stopped");
    }
    while metrics.connections.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
        actix_web::rt::time::sleep(Duration::from_millis(20)).await;
    }
    let left = metrics.connections.load(Ordering::Relaxed);
    if left > 0 {
        warn!(
            left,
            "sockets still open at the shutdown deadline; dropping them"
        );
    }
}

/// Waits until the bridge has published everything it accepted, or the deadline.
async fn publish_what_was_accepted(drain: &Recipient<Drain>, deadline: Instant) {
    let left = deadline.saturating_duration_since(Instant::now());
    match actix_web::rt::time::timeout(left, drain.send(Drain)).await {
        Ok(_) => info!("every accepted message reached the backend"),
        Err(_) => {
            warn!("the backend did not take every accepted message before the shutdown deadline");
        }
    }
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(err) => {
                    warn!(%err, "cannot listen for SIGTERM; only Ctrl-C stops the node");
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// Prints where the node listens and how to connect, on standard output. The first line is
/// stable for scripts: `switchboard listening on http://ADDR`.
#[allow(clippy::print_stdout)] // Telling the user how to connect is this function's job.
fn announce(addrs: &[SocketAddr]) {
    let Some(addr) = addrs.first() else { return };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "switchboard listening on http://{addr}");
    let _ = writeln!(
        out,
        "  WebSocket (Phoenix V2): ws://{addr}/socket/websocket?vsn=2.0.0\n  \
         phoenix.js:             new Socket(\"ws://{addr}/socket\").connect()\n  \
         publish:                curl -s http://{addr}/api/publish -H 'content-type: application/json' \
         -d '{{\"topic\":\"room:lobby\",\"payload\":{{\"body\":\"hi\"}}}}'\n  \
         health, metrics:        http://{addr}/readyz  http://{addr}/metrics"
    );
    let _ = out.flush();
}

/// A random id for this process, drawn once at start (never configured), so a node can
/// recognise and drop its own messages when they come back from the shared channel.
#[must_use]
pub fn origin_id() -> String {
    // The standard library seeds RandomState from the operating system's randomness.
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    format!("{:016x}", hasher.finish())
}
