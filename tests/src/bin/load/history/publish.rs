//! Publishing a counted number of messages over pipelined `POST /api/publish`, each answered
//! 200, with payloads of a fixed size.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

use super::{PAYLOAD_BYTES, PUBLISH_TIMEOUT};
use crate::{http_response, HTTP_PIPELINE};

/// A payload of exactly [`PAYLOAD_BYTES`] bytes of JSON: `{"s":"<seq, 6 digits>","x":"xx.."}`.
pub(super) fn fixed_payload(seq: u64) -> String {
    let head = format!(r#"{{"s":"{seq:06}","x":""#);
    let pad = PAYLOAD_BYTES.saturating_sub(head.len() + 2);
    format!("{head}{}\"}}", "x".repeat(pad))
}

// ---- publishing a count --------------------------------------------------------------------

/// Publishes `count` messages with `POST /api/publish` over `connections` keep-alive
/// connections, each pipelining up to [`HTTP_PIPELINE`] requests: message `n` goes to
/// `topic(n)` with [`fixed_payload`]`(n)`, on connection `n % connections` (so one
/// connection publishes a topic's messages in order). The seconds it took; an error unless
/// every answer was 200.
pub(super) async fn publish_counted(
    addr: SocketAddr,
    count: u64,
    connections: usize,
    topic: Rc<dyn Fn(u64) -> String>,
) -> Result<f64, String> {
    let started = Instant::now();
    let connections = connections.max(1) as u64;
    let tasks: Vec<_> = (0..connections)
        .map(|c| {
            let topic = Rc::clone(&topic);
            let mine: Vec<u64> = (c..count).step_by(connections as usize).collect();
            tokio::task::spawn_local(async move { publish_on_one(addr, &mine, &*topic).await })
        })
        .collect();
    for task in tasks {
        task.await.map_err(|e| format!("publisher task: {e}"))??;
    }
    Ok(started.elapsed().as_secs_f64())
}

async fn publish_on_one(
    addr: SocketAddr,
    messages: &[u64],
    topic: &dyn Fn(u64) -> String,
) -> Result<(), String> {
    let deadline = Instant::now() + PUBLISH_TIMEOUT;
    let socket = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    let stream = socket
        .connect(addr)
        .await
        .map_err(|e| format!("HTTP connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (mut read, mut write) = stream.into_split();
    let (mut sent, mut answered) = (0_usize, 0_usize);
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut chunk = vec![0_u8; 16 * 1024];
    let mut request = Vec::with_capacity(64 * 1024);
    while answered < messages.len() {
        let room = (HTTP_PIPELINE as usize).saturating_sub(sent - answered);
        let batch = room.min(messages.len() - sent);
        if batch > 0 {
            request.clear();
            for &n in &messages[sent..sent + batch] {
                let body = format!(
                    r#"{{"topic":"{}","event":"m","payload":{}}}"#,
                    topic(n),
                    fixed_payload(n)
                );
                request.extend_from_slice(
                    format!(
                        "POST /api/publish HTTP/1.1\r\nHost: {addr}\r\nContent-Type: \
                         application/json\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    )
                    .as_bytes(),
                );
            }
            write
                .write_all(&request)
                .await
                .map_err(|e| format!("HTTP write: {e}"))?;
            sent += batch;
        }
        let n = match tokio::time::timeout_at(deadline.into(), read.read(&mut chunk)).await {
            Err(_) => {
                return Err(format!(
                    "{answered} of {} publishes answered",
                    messages.len()
                ))
            }
            Ok(Ok(0)) => return Err("HTTP connection closed".into()),
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return Err(format!("HTTP read: {e}")),
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut used = 0;
        while let Some((status, len)) = http_response(&buf[used..]) {
            if status != 200 {
                return Err(format!(
                    "publish answered {}",
                    String::from_utf8_lossy(&buf[used..used + len])
                ));
            }
            used += len;
            answered += 1;
        }
        buf.drain(..used);
    }
    Ok(())
}
