//! A minimal HTTP/1.1 client over tokio: one request per connection (`Connection: close`),
//! byte-exact control over what is sent, and a response read by `Content-Length`, chunked
//! encoding or end of stream.
//!
//! A full client library would hide exactly what these tests need to see (an early 413, a
//! `400` to a malformed upgrade) and would cost a TLS-free but still large build; this is about
//! a hundred lines.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::PATIENCE;

/// A received HTTP response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// The status code, e.g. `200`.
    pub status: u16,
    /// Header names (lower-cased) and values, in the order received.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first header called `name` (case-insensitive).
    #[must_use]
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as text (lossy UTF-8).
    #[must_use]
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON.
    ///
    /// # Panics
    /// When the body is not JSON; the message shows status and body.
    #[must_use]
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "expected a JSON body ({e}); got status {} body {:?}",
                self.status,
                self.text()
            )
        })
    }
}

/// Sends one request and reads the whole response.
///
/// `headers` are added after `Host` and `Connection: close` (left out when `headers` has its
/// own `Connection`); `Content-Length` is added when
/// `body` is not empty or the method is `POST`. A failure to write the body is ignored (a
/// server may answer early and close), so the response can still be read.
///
/// # Errors
/// Connection failures, a response that does not arrive within [`PATIENCE`], or one that is
/// not HTTP.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<HttpResponse> {
    tokio::time::timeout(PATIENCE, exchange(addr, method, path, headers, body))
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no complete HTTP response to {method} {path} within {PATIENCE:?}"),
            )
        })?
}

async fn exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<HttpResponse> {
    let mut stream = TcpStream::connect(addr).await?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n");
    if !headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("connection"))
    {
        head.push_str("Connection: close\r\n");
    }
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() || method.eq_ignore_ascii_case("POST") {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    // The server may reject from the head alone (413) and close; still read its answer.
    let _ = stream.write_all(body).await;

    let mut buf = Vec::new();
    let mut chunk = [0_u8; 16 * 1024];
    loop {
        if let Some(response) = parse(&buf, false)? {
            return Ok(response);
        }
        match stream.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            // A reset after the response was sent still leaves a usable response.
            Err(e) if !buf.is_empty() => {
                return parse(&buf, true)?.ok_or(e);
            }
            Err(e) => return Err(e),
        }
    }
    parse(&buf, true)?.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!(
                "connection closed before a complete response: {:?}",
                String::from_utf8_lossy(&buf)
            ),
        )
    })
}

/// Parses `buf` as a response; `None` while more bytes are needed. With `at_eof`, a body
/// without length runs to the end.
fn parse(buf: &[u8], at_eof: bool) -> io::Result<Option<HttpResponse>> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
    let Some(head_end) = find(buf, b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| bad("head is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| bad(&format!("bad status line {status_line:?}")))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let rest = &buf[head_end + 4..];
    let response = |body: Vec<u8>| HttpResponse {
        status,
        headers: headers.clone(),
        body,
    };
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };

    if status == 101 || status == 204 || status == 304 || (100..200).contains(&status) {
        return Ok(Some(response(Vec::new())));
    }
    if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        return Ok(dechunk(rest)?.map(response));
    }
    if let Some(len) = header("content-length") {
        let len: usize = len.parse().map_err(|_| bad("bad content-length"))?;
        return Ok((rest.len() >= len).then(|| response(rest[..len].to_vec())));
    }
    Ok(at_eof.then(|| response(rest.to_vec())))
}

/// Decodes a chunked body; `None` until the terminating chunk has arrived.
fn dechunk(mut rest: &[u8]) -> io::Result<Option<Vec<u8>>> {
    let mut body = Vec::new();
    loop {
        let Some(line_end) = find(rest, b"\r\n") else {
            return Ok(None);
        };
        let size_text = String::from_utf8_lossy(&rest[..line_end]);
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad chunk size {size_text:?}"),
            )
        })?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(Some(body));
        }
        if rest.len() < size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// One kept-alive HTTP/1.1 connection, for requests that must reuse a connection opened
/// earlier (for example one made before the node began shutting down).
#[derive(Debug)]
pub struct KeepAlive {
    stream: TcpStream,
    addr: SocketAddr,
    buf: Vec<u8>,
}

impl KeepAlive {
    /// Opens a connection to `addr`.
    ///
    /// # Errors
    /// When the connection fails.
    pub async fn open(addr: SocketAddr) -> io::Result<Self> {
        Ok(Self {
            stream: TcpStream::connect(addr).await?,
            addr,
            buf: Vec::new(),
        })
    }

    /// `GET path` on this connection. The response must carry a length (`Content-Length` or
    /// chunked), as kept-alive responses do.
    ///
    /// # Errors
    /// When the connection fails or closes before a complete response, or nothing arrives
    /// within [`PATIENCE`].
    pub async fn get(&mut self, path: &str) -> io::Result<HttpResponse> {
        let head = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", self.addr);
        self.stream.write_all(head.as_bytes()).await?;
        self.buf.clear();
        let read = async {
            let mut chunk = [0_u8; 16 * 1024];
            loop {
                if let Some(response) = parse(&self.buf, false)? {
                    return Ok(response);
                }
                match self.stream.read(&mut chunk).await? {
                    0 => {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "connection closed before a complete response",
                        ))
                    }
                    n => self.buf.extend_from_slice(&chunk[..n]),
                }
            }
        };
        tokio::time::timeout(PATIENCE, read).await.map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no response to GET {path} within {PATIENCE:?}"),
            )
        })?
    }
}

/// `GET path`.
///
/// # Panics
/// When no response arrives (the message names the request and the error).
pub async fn get(addr: SocketAddr, path: &str) -> HttpResponse {
    request(addr, "GET", path, &[], &[])
        .await
        .unwrap_or_else(|e| panic!("GET {path} on {addr} failed: {e}"))
}

/// `POST path` with a JSON content type and `body` as given (not re-encoded, so it may be
/// malformed on purpose).
///
/// # Panics
/// When no response arrives.
pub async fn post_json(addr: SocketAddr, path: &str, body: &str) -> HttpResponse {
    request(
        addr,
        "POST",
        path,
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    )
    .await
    .unwrap_or_else(|e| panic!("POST {path} on {addr} failed: {e}"))
}

/// `POST /api/publish` with `{"topic", "event"?, "payload"}`.
///
/// # Panics
/// When no response arrives.
pub async fn publish(
    addr: SocketAddr,
    topic: &str,
    event: Option<&str>,
    payload: &Value,
) -> HttpResponse {
    let mut body = serde_json::json!({ "topic": topic, "payload": payload });
    if let Some(event) = event {
        body["event"] = Value::from(event);
    }
    post_json(addr, "/api/publish", &body.to_string()).await
}

/// Parses Prometheus text format into `name{labels}` → value (comments skipped).
#[must_use]
pub fn parse_metrics(text: &str) -> HashMap<String, f64> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(|line| {
            // The name may carry labels with spaces inside quotes; the value is the first
            // field after the closing brace or the name.
            let split_at = line
                .rfind('}')
                .map_or_else(|| line.find(' '), |i| Some(i + 1))?;
            let (name, rest) = line.split_at(split_at);
            let value = rest.split_whitespace().next()?.parse::<f64>().ok()?;
            Some((name.trim().to_owned(), value))
        })
        .collect()
}

/// Polls `probe` every 50 ms until it returns `Some`, or panics after `timeout` with `what`
/// and the last value it saw.
///
/// # Panics
/// On timeout.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match probe().await {
            Ok(value) => return value,
            Err(last) if tokio::time::Instant::now() >= deadline => {
                panic!("timed out after {timeout:?} waiting for {what}; last seen: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_content_length_and_chunked_bodies() {
        let plain = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        let r = parse(plain, false).unwrap().unwrap();
        assert_eq!((r.status, r.text().as_str()), (200, "ok"));

        let chunked = b"HTTP/1.1 400 Bad Request\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        let r = parse(chunked, false).unwrap().unwrap();
        assert_eq!((r.status, r.text().as_str()), (400, "abcde"));
        assert!(parse(&chunked[..chunked.len() - 7], false)
            .unwrap()
            .is_none());

        let until_eof = b"HTTP/1.1 200 OK\r\n\r\nabc";
        assert!(parse(until_eof, false).unwrap().is_none());
        assert_eq!(parse(until_eof, true).unwrap().unwrap().text(), "abc");
    }

    #[test]
    fn parses_prometheus_text() {
        let text = "# HELP a thing\n# TYPE a gauge\na 3\nb_total{x=\"y z\"} 4.5\n\n";
        let m = parse_metrics(text);
        assert_eq!(m["a"], 3.0);
        assert_eq!(m["b_total{x=\"y z\"}"], 4.5);
    }
}
