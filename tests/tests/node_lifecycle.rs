//! Starting, configuring and stopping the node: the address line, `--help`, flags,
//! environment variables and the TOML file with their precedence, and graceful shutdown on
//! SIGTERM (docs/node.md, "Running", "Configuration", "Shutdown").

use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;
use switchboard_e2e::{http, node, Client, CloseOutcome, Node, PhxFrame};

/// The contract's shutdown bound plus room for a noisy machine.
const SHUTDOWN_SLACK: Duration = Duration::from_secs(3);

/// A TOML file in the temp dir, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, contents: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "switchboard-e2e-{}-{name}.toml",
            std::process::id()
        ));
        std::fs::write(&path, contents).expect("write temp config");
        Self(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("temp path is UTF-8")
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Joins topics until one is refused: how many were accepted (at most `max`).
async fn topic_limit(node: &Node, max: usize) -> usize {
    let mut client = node.connect().await;
    for i in 0..max {
        let reply = client.join(&format!("limit:{i}")).await;
        if reply.status() != "ok" {
            assert_eq!(reply.reason(), "too many channels joined", "{reply}");
            return i;
        }
    }
    max
}

#[test]
fn the_first_stdout_line_says_where_the_node_listens() {
    let node = Node::start(&[]);
    let lines = node.stdout_lines();
    let expected = format!("switchboard listening on http://{}", node.addr());
    assert_eq!(lines.first(), Some(&expected), "stdout: {lines:?}");
    assert_eq!(node.addr().ip().to_string(), "127.0.0.1");
    assert_ne!(
        node.addr().port(),
        0,
        "port 0 is replaced by the port picked"
    );
}

#[test]
fn help_lists_every_option_with_its_environment_variable() {
    let output = node::command()
        .arg("--help")
        .output()
        .expect("run switchboard --help");
    assert!(output.status.success(), "--help exits 0: {output:?}");
    let help = String::from_utf8_lossy(&output.stdout);
    for (flag, env) in [
        ("--bind", "BIND"),
        ("--config", "CONFIG"),
        ("--max-frame-bytes", "MAX_FRAME_BYTES"),
        ("--max-topics-per-socket", "MAX_TOPICS_PER_SOCKET"),
        ("--idle-timeout", "IDLE_TIMEOUT"),
        ("--send-buffer-bytes", "SEND_BUFFER_BYTES"),
        ("--max-publish-bytes", "MAX_PUBLISH_BYTES"),
        ("--shutdown-timeout", "SHUTDOWN_TIMEOUT"),
    ] {
        assert!(
            help.contains(flag),
            "--help does not mention {flag}:\n{help}"
        );
        assert!(help.contains(env), "--help does not mention {env}:\n{help}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bind_can_come_from_the_environment() {
    let node = Node::start_exactly(&[], &[("BIND", "127.0.0.1:0")]);
    assert_ne!(node.addr().port(), 0);
    let mut client = node.connect().await;
    assert_eq!(client.heartbeat().await.status(), "ok");
}

#[tokio::test(flavor = "multi_thread")]
async fn max_topics_per_socket_from_the_environment_takes_effect() {
    let node = Node::start_with_env(&[], &[("MAX_TOPICS_PER_SOCKET", "2")]);
    assert_eq!(topic_limit(&node, 10).await, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn options_from_a_toml_file_take_effect_with_dashes_or_underscores() {
    let dashes = TempFile::new(
        "dashes",
        "max-topics-per-socket = 2\nidle-timeout = \"1s\"\n",
    );
    let node = Node::start(&["--config", dashes.path()]);
    assert_eq!(topic_limit(&node, 10).await, 2);
    let mut idle = node.connect().await;
    idle.set_timeout(Duration::from_secs(20));
    assert_eq!(idle.expect_close().await, (1000, "idle timeout".to_owned()));
    drop(node);

    let underscores = TempFile::new(
        "underscores",
        "max_topics_per_socket = 3\nmax_publish_bytes = 100\n",
    );
    let node = Node::start(&["--config", underscores.path()]);
    assert_eq!(topic_limit(&node, 10).await, 3);
    let body = json!({"topic": "room:a", "payload": "x".repeat(200)}).to_string();
    let response = http::post_json(node.addr(), "/api/publish", &body).await;
    assert_eq!(response.status, 413, "{}", response.text());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_config_file_can_be_named_by_the_config_environment_variable() {
    let file = TempFile::new("by-env", "max-topics-per-socket = 2\n");
    let node = Node::start_with_env(&[], &[("CONFIG", file.path())]);
    assert_eq!(topic_limit(&node, 10).await, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flag_beats_the_environment_which_beats_the_file() {
    let file = TempFile::new("precedence", "max-topics-per-socket = 2\n");

    let env_over_file = Node::start_with_env(
        &["--config", file.path()],
        &[("MAX_TOPICS_PER_SOCKET", "3")],
    );
    assert_eq!(topic_limit(&env_over_file, 10).await, 3);
    drop(env_over_file);

    let flag_over_env = Node::start_with_env(
        &["--config", file.path(), "--max-topics-per-socket", "4"],
        &[("MAX_TOPICS_PER_SOCKET", "3")],
    );
    assert_eq!(topic_limit(&flag_over_env, 10).await, 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_closes_every_socket_with_1001_and_exits_0() {
    let mut node = Node::start(&[]);
    let mut clients = Vec::new();
    for i in 0..3 {
        let mut client = node.connect().await;
        if i > 0 {
            client.join_ok("room:a").await;
        }
        clients.push(client);
    }
    node.wait_metric_eq("switchboard_connections", 3.0).await;

    node.sigterm();
    let closes = futures_util::future::join_all(clients.iter_mut().map(|c| async {
        c.set_timeout(Duration::from_secs(15));
        c.expect_close().await
    }))
    .await;
    for close in closes {
        assert_eq!(close, (1001, "server shutting down".to_owned()));
    }

    let exit = node.wait_exit(Duration::from_secs(15));
    assert!(exit.status.success(), "exit status {:?}", exit.status);
    assert!(
        exit.elapsed < Duration::from_secs(5) + SHUTDOWN_SLACK,
        "exit took {:?}; the default shutdown timeout is 5 s",
        exit.elapsed
    );

    // The port is closed: nobody is accepting any more.
    assert!(Client::try_connect(&node.ws_url()).await.is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_exits_within_the_shutdown_timeout_even_if_a_client_never_answers() {
    let mut node = Node::start(&["--shutdown-timeout", "1s"]);
    // This client never reads, so it never answers the close handshake.
    let mut deaf = Client::connect_with_recv_buffer(&node.ws_url(), 4096).await;
    deaf.join_ok("room:a").await;
    let mut polite = node.connect().await;
    polite.join_ok("room:a").await;
    node.wait_metric_eq("switchboard_connections", 2.0).await;

    node.sigterm();
    polite.set_timeout(Duration::from_secs(15));
    assert_eq!(
        polite.expect_close().await,
        (1001, "server shutting down".to_owned())
    );
    let exit = node.wait_exit(Duration::from_secs(15));

    assert!(exit.status.success(), "exit status {:?}", exit.status);
    assert!(
        exit.elapsed < Duration::from_secs(1) + SHUTDOWN_SLACK,
        "exit took {:?} with --shutdown-timeout 1s",
        exit.elapsed
    );
    // When it reads at last, the deaf client finds the close (or a closed connection).
    match deaf.wait_end(Duration::from_secs(10)).await {
        CloseOutcome::Close(code, reason) => {
            assert_eq!((code, reason.as_str()), (1001, "server shutting down"));
        }
        CloseOutcome::Ended(_) => {}
        CloseOutcome::CloseWithoutCode => panic!("close frame without a code"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn readyz_never_says_ready_once_shutdown_has_begun() {
    let mut node = Node::start(&["--shutdown-timeout", "3s"]);
    // A client that never answers the close keeps the node in its shutdown phase a while.
    let mut deaf = Client::connect_with_recv_buffer(&node.ws_url(), 4096).await;
    deaf.join_ok("room:a").await;
    let mut kept = http::KeepAlive::open(node.addr()).await.expect("connect");
    let before = kept.get("/readyz").await.expect("readyz before shutdown");
    assert_eq!(before.status, 200, "{}", before.text());

    node.sigterm();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // New connections are no longer accepted; a connection made earlier gets 503 or is
    // closed. Either way the node must not claim to be ready.
    match kept.get("/readyz").await {
        Ok(response) => {
            assert_eq!(response.status, 503, "{}", response.text());
            assert_eq!(response.json()["status"], "not_ready");
        }
        Err(e) => assert_ne!(
            e.kind(),
            std::io::ErrorKind::TimedOut,
            "the kept-alive connection hung: {e}"
        ),
    }
    let exit = node.wait_exit(Duration::from_secs(15));
    assert!(exit.status.success(), "exit status {:?}", exit.status);
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_timeout_from_the_environment_takes_effect() {
    let node = Node::start_with_env(&[], &[("IDLE_TIMEOUT", "500ms")]);
    let mut client = node.connect().await;
    client.set_timeout(Duration::from_secs(20));
    assert_eq!(
        client.expect_close().await,
        (1000, "idle timeout".to_owned())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_with_no_clients_exits_0_promptly() {
    let mut node = Node::start(&[]);
    assert_eq!(node.get("/readyz").await.status, 200);
    let exit = node.terminate();
    assert!(exit.status.success(), "exit status {:?}", exit.status);
    assert!(
        exit.elapsed < Duration::from_secs(5) + SHUTDOWN_SLACK,
        "exit took {:?}",
        exit.elapsed
    );
}
