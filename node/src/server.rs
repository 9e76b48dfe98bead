//! Starting the node and shutting it down gracefully.

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{Actor as _, Addr, Arbiter, AsyncContext as _};
use actix_web::{web, App, HttpServer};
use anyhow::Context as _;
use tracing::{info, warn};

use crate::config::{Backend, Config};
use crate::connections::{automatic_limit, raise_open_file_limit, ConnectionSlots};
use crate::http::{self, AppState};
use crate::hub::{CloseAll, Hub};
use crate::metrics::Metrics;
use crate::postgres_bridge::{self, PostgresBridge};
use crate::redis_bridge::RedisBridge;
use crate::security::Security;
use crate::session::{close, SessionLimits};
use crate::upstream::{origin_id, Upstream};

/// A socket whose sent data stays unacknowledged this long (a peer that stopped reading, or
/// vanished) is dropped by the kernel. This is what finally frees a slow consumer whose
/// session cannot even be polled to send its close frame.
pub const STALLED_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the node until Ctrl-C or SIGTERM, then closes every socket with 1001 and returns.
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
    let open_files = raise_open_file_limit();
    let max_connections = match config.max_connections {
        0 => automatic_limit(open_files),
        limit => limit,
    };
    info!(max_connections, open_files, "connection limit");
    let hub = start_hub(&config, &backend, &metrics)?;
    let shutting_down = Arc::new(AtomicBool::new(false));
    let state = AppState {
        hub: hub.clone(),
        metrics: metrics.clone(),
        limits: Arc::new(SessionLimits {
            max_frame_bytes: config.max_frame_bytes,
            idle_timeout: config.idle_timeout,
            send_buffer_bytes: config.send_buffer_bytes,
            max_topic_bytes: config.max_topic_bytes,
            push_rate: config.push_rate,
            push_burst: config.push_burst,
            bridged: backend != Backend::Memory,
            upstream_limit: matches!(backend, Backend::Postgres { .. })
                .then_some(postgres_bridge::MESSAGE_LIMIT),
        }),
        max_publish_bytes: config.max_publish_bytes,
        shutting_down: shutting_down.clone(),
        backend: match backend {
            Backend::Redis { .. } => "redis",
            Backend::Postgres { .. } => "postgres",
            _ => "memory",
        },
        security: Arc::new(security),
        slots: ConnectionSlots::new(max_connections),
    };
    let data = web::Data::new(state);
    let server = HttpServer::new(move || App::new().app_data(data.clone()).configure(http::routes))
        .on_connect(|connection, _| {
            if let Some(stream) = connection.downcast_ref::<actix_web::rt::net::TcpStream>() {
                let socket = socket2::SockRef::from(stream);
                // Frames are small and latency matters: never wait for Nagle's algorithm.
                let _ = socket.set_tcp_nodelay(true);
                let _ = socket.set_tcp_user_timeout(Some(STALLED_WRITE_TIMEOUT));
            }
        })
        // Drop a connection as soon as its response (a WebSocket after the close handshake)
        // has been written, instead of waiting for the client to hang up first.
        .client_disconnect_timeout(Duration::ZERO)
        .disable_signals()
        .shutdown_timeout(1)
        .bind(config.bind)
        .with_context(|| format!("cannot listen on {}", config.bind))?;
    let addrs = server.addrs();
    announce(&addrs);
    info!(addrs = ?addrs, "listening");
    let server = server.run();
    let handle = server.handle();
    actix_web::rt::spawn(async move {
        wait_for_signal().await;
        shutting_down.store(true, Ordering::Relaxed);
        info!("shutting down");
        drain(&hub, &metrics, config.shutdown_timeout).await;
        handle.stop(true).await;
    });
    server.await.context("HTTP server failed")?;
    info!("stopped");
    Ok(())
}

/// Starts the hub, and the bridge actor on its own thread when a backend is configured.
fn start_hub(
    config: &Config,
    backend: &Backend,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Addr<Hub>> {
    let max_topics = config.max_topics_per_socket;
    match backend {
        Backend::Redis { url, prefix } => {
            let origin = origin_id();
            info!(%origin, prefix = %prefix, "sharing topics through redis");
            // Check the URL before the actors start, so a bad one fails here, clearly.
            redis::Client::open(url.as_str()).context("invalid --redis-url")?;
            let (url, prefix, metrics) = (url.clone(), prefix.clone(), metrics.clone());
            Ok(Hub::create(move |ctx| {
                let hub = ctx.address();
                let bridge_metrics = metrics.clone();
                let bridge = RedisBridge::start_in_arbiter(&Arbiter::new().handle(), move |_| {
                    // The URL was checked above, so this cannot fail.
                    RedisBridge::new(&url, prefix, origin, hub, bridge_metrics)
                        .expect("redis URL checked at start-up")
                });
                Hub::new(max_topics, metrics, Some(Upstream::of("redis", &bridge)))
            }))
        }
        Backend::Postgres { url, prefix } => {
            let origin = origin_id();
            info!(%origin, prefix = %prefix, "sharing topics through postgres");
            // Check the URL before the actors start, so a bad one fails here, clearly.
            postgres_bridge::parse_url(url).context("invalid --database-url")?;
            let (url, prefix, metrics) = (url.clone(), prefix.clone(), metrics.clone());
            Ok(Hub::create(move |ctx| {
                let hub = ctx.address();
                let bridge_metrics = metrics.clone();
                let bridge =
                    PostgresBridge::start_in_arbiter(&Arbiter::new().handle(), move |_| {
                        // The URL was checked above, so this cannot fail.
                        PostgresBridge::new(&url, prefix, origin, hub, bridge_metrics)
                            .expect("database URL checked at start-up")
                    });
                let upstream = Upstream::of("postgres", &bridge)
                    .with_max_message_bytes(postgres_bridge::MESSAGE_LIMIT.max_bytes);
                Hub::new(max_topics, metrics, Some(upstream))
            }))
        }
        _ => Ok(Hub::new(max_topics, metrics.clone(), None).start()),
    }
}

/// Tells every session to close with 1001 and waits until they have, or `timeout` is near.
async fn drain(hub: &Addr<Hub>, metrics: &Metrics, timeout: Duration) {
    let deadline = Instant::now() + timeout.saturating_sub(Duration::from_secs(1));
    let (code, reason) = close::SHUTDOWN;
    if hub.send(CloseAll { code, reason }).await.is_err() {
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
