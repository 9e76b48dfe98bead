//! A node whose log reader goes away (`switchboard 2>&1 | head`, a restarted log shipper)
//! keeps serving and still shuts down cleanly on SIGTERM.

use std::io::{BufRead as _, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use switchboard_e2e::{node, Client};

#[tokio::test(flavor = "multi_thread")]
async fn a_closed_log_pipe_neither_crashes_the_node_nor_blocks_shutdown() {
    let mut child = node::command()
        .args(["--bind", "127.0.0.1:0"])
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the node");
    // The log reader goes away at once: every log line from now on meets a broken pipe.
    drop(child.stderr.take());
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut lines = BufReader::new(stdout).lines();
    let first = lines
        .next()
        .expect("a first line")
        .expect("readable stdout");
    let addr = first
        .strip_prefix("switchboard listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
        .to_owned();
    // Keep draining stdout so only stderr is broken.
    std::thread::spawn(move || for _ in lines {});

    let url = format!("ws://{addr}/socket/websocket?vsn=2.0.0");
    let mut client = Client::connect(&url).await;
    client.join_ok("room:logs").await;
    client.send_text("not a frame").await;
    let (code, _) = client.expect_close().await;
    assert_eq!(code, 1007, "the node still answers while its logs fail");

    let mut survivor = Client::connect(&url).await;
    survivor.join_ok("room:logs").await;
    let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid fits"));
    let started = Instant::now();
    kill(pid, Signal::SIGTERM).expect("send SIGTERM");
    let (code, reason) = survivor.expect_close().await;
    assert_eq!((code, reason.as_str()), (1001, "server shutting down"));
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the node") {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the node did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit status {status:?}");
}
