//! The fault proxy against a plain echo server: each mode does what it says, for the
//! connections it holds and for new ones.
//!
//! Everything here is blocking `std::net` on plain threads: the proxy must work whatever the
//! caller's threads are doing, with no tokio runtime of the test's own.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use switchboard_e2e::proxy::Mode;
use switchboard_e2e::FaultProxy;

/// How long a test waits for an answer that should come.
const ANSWER: Duration = Duration::from_secs(5);

/// How long a test waits to be sure no answer comes.
const SILENCE: Duration = Duration::from_millis(500);

/// An echo server on a free port; counts its open connections.
struct Echo {
    addr: SocketAddr,
    open: Arc<AtomicUsize>,
}

impl Echo {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&open);
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let counter = Arc::clone(&counter);
                counter.fetch_add(1, Ordering::SeqCst);
                thread::spawn(move || {
                    let mut buf = [0_u8; 4096];
                    loop {
                        match stream.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if stream.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    counter.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Self { addr, open }
    }

    fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
}

fn connect(proxy: &FaultProxy) -> TcpStream {
    let stream = TcpStream::connect(proxy.addr()).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

/// Reads exactly `len` bytes within `timeout`, or says what happened instead.
fn read_exact_within(
    stream: &mut TcpStream,
    len: usize,
    timeout: Duration,
) -> Result<Vec<u8>, String> {
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    let mut buf = [0_u8; 4096];
    while got.len() < len {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("timeout after {} of {len} bytes", got.len()));
        }
        stream.set_read_timeout(Some(left)).unwrap();
        let want = (len - got.len()).min(buf.len());
        match stream.read(&mut buf[..want]) {
            Ok(0) => return Err(format!("EOF after {} of {len} bytes", got.len())),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => return Err(format!("error after {} of {len} bytes: {e}", got.len())),
        }
    }
    Ok(got)
}

/// Sends `message` and expects it back within [`ANSWER`].
fn echoes(stream: &mut TcpStream, message: &[u8]) {
    stream.write_all(message).unwrap();
    let got = read_exact_within(stream, message.len(), ANSWER).unwrap();
    assert_eq!(got, message);
}

/// Expects no byte for [`SILENCE`], and the connection still open.
fn silent(stream: &mut TcpStream) {
    match read_exact_within(stream, 1, SILENCE) {
        Err(why) if why.starts_with("timeout") => {}
        other => panic!("expected silence on an open connection, got {other:?}"),
    }
}

/// Expects the connection to end (EOF or reset) within [`ANSWER`]; whether it was a reset.
fn ends(stream: &mut TcpStream) -> bool {
    stream.set_read_timeout(Some(ANSWER)).unwrap();
    let mut buf = [0_u8; 64];
    match stream.read(&mut buf) {
        Ok(0) => false,
        Err(e) if e.kind() == ErrorKind::ConnectionReset => true,
        other => panic!("expected the connection to end, got {other:?}"),
    }
}

/// Waits until `probe` holds, for up to [`ANSWER`].
fn eventually(what: &str, probe: impl Fn() -> bool) {
    let started = Instant::now();
    while !probe() {
        assert!(started.elapsed() < ANSWER, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn pass_forwards_both_ways_and_counts_connections() {
    let echo = Echo::start();
    let proxy = FaultProxy::start(echo.addr);
    assert_eq!(proxy.mode(), Mode::Pass);
    assert_eq!(proxy.addr().port(), proxy.port());
    let mut a = connect(&proxy);
    let mut b = connect(&proxy);
    echoes(&mut a, b"hello");
    echoes(&mut b, b"world");
    // A larger transfer, in order.
    let big: Vec<u8> = (0..200_000_u32).map(|i| (i % 251) as u8).collect();
    let mut reader = a.try_clone().unwrap();
    let expected = big.clone();
    let check = thread::spawn(move || read_exact_within(&mut reader, expected.len(), ANSWER));
    a.write_all(&big).unwrap();
    assert_eq!(check.join().unwrap().unwrap(), big);
    assert_eq!(proxy.connections_accepted(), 2);
    assert_eq!(proxy.open_connections(), 2);
    assert_eq!(echo.open(), 2);

    // An orderly close reaches the server, and the proxy forgets the connection.
    drop(a);
    eventually("one open connection", || {
        proxy.open_connections() == 1 && echo.open() == 1
    });
}

#[test]
fn delay_holds_each_chunk_and_keeps_the_order() {
    let echo = Echo::start();
    let proxy = FaultProxy::start(echo.addr);
    let mut stream = connect(&proxy);
    echoes(&mut stream, b"warm");

    let delay = Duration::from_millis(300);
    proxy.delay(delay);
    assert_eq!(proxy.mode(), Mode::Delay(delay));
    let sent = Instant::now();
    echoes(&mut stream, b"slow");
    let round_trip = sent.elapsed();
    // Delayed on the way there and on the way back.
    assert!(round_trip >= 2 * delay, "round trip {round_trip:?}");

    // Many small writes: the delay line keeps them in order and does not add up the delays.
    let sent = Instant::now();
    let mut expected = Vec::new();
    for i in 0..50_u8 {
        let chunk = [b'a' + i % 26; 3];
        stream.write_all(&chunk).unwrap();
        expected.extend_from_slice(&chunk);
        thread::sleep(Duration::from_millis(2));
    }
    let got = read_exact_within(&mut stream, expected.len(), ANSWER).unwrap();
    assert_eq!(got, expected);
    let elapsed = sent.elapsed();
    assert!(elapsed >= 2 * delay, "{elapsed:?}");
    assert!(elapsed < 10 * delay, "the delays added up: {elapsed:?}");

    // Back to pass: prompt again on the same connection.
    proxy.pass();
    let sent = Instant::now();
    echoes(&mut stream, b"fast");
    assert!(sent.elapsed() < delay, "{:?}", sent.elapsed());
}

#[test]
fn a_black_hole_keeps_connections_open_and_answers_nothing_until_pass() {
    let echo = Echo::start();
    let proxy = FaultProxy::start(echo.addr);
    let mut old = connect(&proxy);
    echoes(&mut old, b"before");

    proxy.black_hole();
    assert_eq!(proxy.mode(), Mode::BlackHole);
    old.write_all(b"lost?").unwrap();
    silent(&mut old);
    // New connections are accepted and go nowhere: not even to the server.
    let mut new = connect(&proxy);
    new.write_all(b"anyone?").unwrap();
    silent(&mut new);
    assert_eq!(proxy.connections_accepted(), 2);
    assert_eq!(proxy.open_connections(), 2);
    assert_eq!(echo.open(), 1);
    // Both still open: the client can write more.
    old.write_all(b"!").unwrap();

    // Nothing was dropped: what waited is delivered when forwarding resumes.
    proxy.pass();
    assert_eq!(read_exact_within(&mut old, 6, ANSWER).unwrap(), b"lost?!");
    assert_eq!(read_exact_within(&mut new, 7, ANSWER).unwrap(), b"anyone?");
    echoes(&mut old, b"after");
    echoes(&mut new, b"after");
    echoes(&mut connect(&proxy), b"fresh");
}

#[test]
fn cut_resets_every_connection_and_new_ones_until_pass() {
    let echo = Echo::start();
    let proxy = FaultProxy::start(echo.addr);
    let mut a = connect(&proxy);
    let mut b = connect(&proxy);
    echoes(&mut a, b"a");
    echoes(&mut b, b"b");

    proxy.cut();
    assert_eq!(proxy.mode(), Mode::Cut);
    // `cut` returns once they are closed.
    assert_eq!(proxy.open_connections(), 0);
    assert!(ends(&mut a), "expected a reset, not an orderly EOF");
    assert!(ends(&mut b), "expected a reset, not an orderly EOF");
    // The server's side is closed too.
    eventually("the server's connections to close", || echo.open() == 0);

    // New connections are accepted and closed at once.
    let mut refused = connect(&proxy);
    let _ = refused.write_all(b"x");
    let _ = ends(&mut refused);
    assert_eq!(proxy.connections_accepted(), 3);
    assert_eq!(echo.open(), 0);

    proxy.pass();
    echoes(&mut connect(&proxy), b"back");
    assert_eq!(proxy.open_connections(), 1);
}

#[test]
fn cut_existing_resets_held_connections_and_serves_new_ones() {
    let echo = Echo::start();
    let proxy = FaultProxy::start(echo.addr);
    let mut old = connect(&proxy);
    echoes(&mut old, b"old");

    proxy.cut_existing();
    assert_eq!(proxy.mode(), Mode::Pass);
    assert!(ends(&mut old));
    echoes(&mut connect(&proxy), b"new");

    // In a black hole, cutting the held connections leaves the black hole in place.
    proxy.black_hole();
    let mut held = connect(&proxy);
    proxy.cut_existing();
    assert!(ends(&mut held));
    let mut next = connect(&proxy);
    next.write_all(b"?").unwrap();
    silent(&mut next);
    proxy.pass();
    assert_eq!(read_exact_within(&mut next, 1, ANSWER).unwrap(), b"?");
}

#[test]
fn a_target_that_refuses_resets_the_client_and_drop_closes_everything() {
    // Nothing listens on the target: the client's connection is reset.
    let unused = TcpListener::bind("127.0.0.1:0").unwrap();
    let nowhere = unused.local_addr().unwrap();
    drop(unused);
    let proxy = FaultProxy::start(nowhere);
    let mut stream = connect(&proxy);
    assert!(ends(&mut stream));

    let echo = Echo::start();
    let proxy = FaultProxy::start(echo.addr);
    let addr = proxy.addr();
    let mut stream = connect(&proxy);
    echoes(&mut stream, b"bye");
    drop(proxy);
    let _ = ends(&mut stream);
    eventually("the server's connection to close", || echo.open() == 0);
    assert!(TcpStream::connect(addr).is_err(), "the proxy still listens");
}
