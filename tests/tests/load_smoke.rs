//! The load tool (`src/bin/load.rs`) still works: `load smoke` starts its own node, connects
//! ~50 clients, publishes over sockets and HTTP for a few seconds and exits non-zero when a
//! delivery is missing, a join is refused or a connection is closed. Running it here keeps the
//! tool from rotting between measurement sessions.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Far above the smoke run's few seconds, so only a hung tool trips it.
const LIMIT: Duration = Duration::from_secs(60);

#[test]
fn load_smoke_delivers_everything() {
    let node = switchboard_e2e::node::require_binary();
    let mut child = Command::new(env!("CARGO_BIN_EXE_load"))
        .args(["smoke", "--node-bin"])
        .arg(&node)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the load binary starts");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for load works") {
            break status;
        }
        if started.elapsed() > LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("load smoke did not finish within {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stdout.take() {
        let _ = pipe.read_to_string(&mut stdout);
    }
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    assert!(
        status.success() && stdout.contains("ok: nothing lost or refused"),
        "load smoke failed ({status}) after {:?}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        started.elapsed()
    );
    assert!(
        stdout.contains("smoke socket") && stdout.contains("smoke http own-shared"),
        "load smoke did not report both phases:\n{stdout}"
    );
}
