//! A write deadline for client connections: a peer that takes no data for too long while the
//! node has data for it is cut off by the node itself.
//!
//! The WebSocket library runs a session inside its HTTP response and polls it only while the
//! socket takes data, so a client that stops reading cannot even be sent its close frame. The
//! kernel would drop such a connection only after `TCP_USER_TIMEOUT`, and only once sent data
//! is unacknowledged, which a peer with a full receive window does not cause. [`Stall`] wraps
//! the TCP stream under the HTTP server: when a write has made no progress for the deadline,
//! the write fails, the server drops the connection, and the session ends.

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::rt::net::TcpStream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// A TCP stream whose writes fail once they have been blocked for `deadline`.
#[derive(Debug)]
pub struct Stall {
    io: TcpStream,
    deadline: Duration,
    /// Running while a write is blocked; reset by any progress.
    blocked: Option<Pin<Box<Sleep>>>,
}

impl Stall {
    /// Wraps `io` with a write deadline.
    #[must_use]
    pub const fn new(io: TcpStream, deadline: Duration) -> Self {
        Self {
            io,
            deadline,
            blocked: None,
        }
    }

    /// The wrapped stream.
    #[must_use]
    pub const fn get_ref(&self) -> &TcpStream {
        &self.io
    }

    /// Maps a write attempt's outcome: progress resets the deadline; a blocked write fails once
    /// it has been blocked for the whole deadline.
    fn guard<T>(
        &mut self,
        cx: &mut Context<'_>,
        attempt: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match attempt {
            Poll::Ready(result) => {
                self.blocked = None;
                Poll::Ready(result)
            }
            Poll::Pending => {
                let deadline = self.deadline;
                let timer = self
                    .blocked
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(deadline)));
                if timer.as_mut().poll(cx).is_ready() {
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("the peer took no data for {deadline:?}"),
                    )))
                } else {
                    Poll::Pending
                }
            }
        }
    }
}

impl AsyncRead for Stall {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Stall {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let attempt = Pin::new(&mut self.io).poll_write(cx, buf);
        self.guard(cx, attempt)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let attempt = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.guard(cx, attempt)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let attempt = Pin::new(&mut self.io).poll_flush(cx);
        self.guard(cx, attempt)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let attempt = Pin::new(&mut self.io).poll_shutdown(cx);
        self.guard(cx, attempt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt as _;

    #[actix_web::test]
    async fn a_peer_that_stops_reading_fails_the_write_after_the_deadline() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        // The peer accepts and never reads.
        let _peer = std::thread::spawn(move || {
            let (socket, _) = listener.accept().unwrap();
            std::thread::sleep(Duration::from_secs(5));
            drop(socket);
        });
        let io = TcpStream::connect(addr).await.unwrap();
        let mut stall = Stall::new(io, Duration::from_millis(300));
        let chunk = vec![0_u8; 64 * 1024];
        let started = std::time::Instant::now();
        let err = loop {
            if let Err(err) = stall.write_all(&chunk).await {
                break err;
            }
            assert!(
                started.elapsed() < Duration::from_secs(4),
                "never timed out"
            );
        };
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[actix_web::test]
    async fn progress_keeps_the_connection() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let reader = std::thread::spawn(move || {
            let (mut socket, _) = listener.accept().unwrap();
            let mut sink = Vec::new();
            io::Read::read_to_end(&mut socket, &mut sink).unwrap();
            sink.len()
        });
        let io = TcpStream::connect(addr).await.unwrap();
        let mut stall = Stall::new(io, Duration::from_millis(300));
        for _ in 0..64 {
            stall.write_all(&[1_u8; 16 * 1024]).await.unwrap();
        }
        stall.shutdown().await.unwrap();
        drop(stall);
        assert_eq!(reader.join().unwrap(), 64 * 16 * 1024);
    }
}
