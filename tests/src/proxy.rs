//! A TCP proxy that injects network faults between a node and its backend (or anything else).
//!
//! [`FaultProxy::start`] listens on a free port of 127.0.0.1 and forwards every connection it
//! accepts to a target address. It runs on its own thread with its own single-threaded tokio
//! runtime, so a test whose runtime is busy or blocked does not stall it, and it is controlled
//! from any thread through `&self` methods that switch its [`Mode`] for the connections it
//! holds as well as for new ones:
//!
//! - [`pass`](FaultProxy::pass) (the default): bytes flow both ways as they arrive.
//! - [`delay`](FaultProxy::delay): each chunk is written this long after the proxy read it;
//!   order is kept per direction, and reading goes on meanwhile (a delay line, not a
//!   throttle).
//! - [`black_hole`](FaultProxy::black_hole): connections stay established and nothing moves
//!   in either direction. The proxy simply stops reading, which is what a real partition
//!   looks like to both ends: their connections stay up, what they send is acknowledged by
//!   nobody above TCP, their send buffers fill and writes eventually block. New connections
//!   are accepted (the kernel completes the handshake) and go nowhere: the proxy does not
//!   even connect them to the target yet. Nothing is discarded: when forwarding resumes, the
//!   bytes that waited in the socket buffers (and a chunk the proxy had read) are delivered,
//!   as TCP delivers them once a partition heals, and connections accepted during the black
//!   hole connect to the target then. That includes connections a client gave up on and
//!   closed meanwhile (the proxy saw no FIN, having stopped reading): what it sent before
//!   closing arrives late, as a real peer's retransmissions would. To heal without such late
//!   bytes, [`cut_existing`](FaultProxy::cut_existing) before [`pass`](FaultProxy::pass).
//! - [`cut`](FaultProxy::cut): every connection is reset (`SO_LINGER` 0, so both ends see
//!   `ECONNRESET`, not an orderly EOF), and new connections are accepted and reset at once
//!   until the mode changes.
//! - [`cut_existing`](FaultProxy::cut_existing): the connections held now are reset; new
//!   ones are served in the current mode.
//!
//! Both cuts apply to every connection established before the call, including those the
//! kernel completed but the proxy had not picked up yet (a cut takes them from the listen
//! queue first), and return once those connections are closed. A connection whose peer
//! resets it, or whose target refuses it, is reset on the other side too; an orderly close
//! (EOF) is passed on as a half-close. Dropping the proxy stops it and closes everything.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};

use crate::PATIENCE;

/// The most bytes the proxy reads at once.
const CHUNK_BYTES: usize = 16 * 1024;

/// Chunks read but not yet written, per direction (bounds memory under a long delay).
const QUEUED_CHUNKS: usize = 256;

/// What the proxy does with the bytes of its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forward bytes both ways as they arrive.
    Pass,
    /// Forward each chunk this long after it was read, in order.
    Delay(Duration),
    /// Keep connections open and forward nothing.
    BlackHole,
    /// Reset every connection, including new ones.
    Cut,
}

impl Mode {
    /// Whether bytes move in this mode.
    const fn forwards(self) -> bool {
        matches!(self, Self::Pass | Self::Delay(_))
    }
}

/// The mode, and how many times connections were cut: a connection accepted under an older
/// `epoch` is reset.
#[derive(Debug, Clone, Copy)]
struct State {
    mode: Mode,
    epoch: u64,
}

/// What the proxy thread and the controlling handle share.
#[derive(Debug)]
struct Shared {
    state: watch::Sender<State>,
    accepted: AtomicU64,
    next_id: AtomicU64,
    /// Open connections: id → the epoch they were accepted in. Also held around every
    /// `accept` and every change of the state, so each connection is accepted in the epoch
    /// current when the kernel handed it over.
    open: Mutex<HashMap<u64, u64>>,
}

impl Shared {
    fn open(&self) -> MutexGuard<'_, HashMap<u64, u64>> {
        // A panic while holding the lock cannot leave a map of plain integers inconsistent.
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A fault-injecting TCP proxy on 127.0.0.1 in front of one target address (see the
/// [module documentation](self)). Stops and closes every connection on drop.
pub struct FaultProxy {
    addr: SocketAddr,
    target: SocketAddr,
    shared: Arc<Shared>,
    /// The listening socket (a second descriptor of the proxy thread's), to take waiting
    /// connections from the listen queue before a cut.
    listener: std::net::TcpListener,
    /// Where those connections go: the proxy thread serves (or resets) them.
    handoff: mpsc::UnboundedSender<Vec<Accepted<std::net::TcpStream>>>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultProxy")
            .field("addr", &self.addr)
            .field("target", &self.target)
            .field("mode", &self.mode())
            .field("open", &self.open_connections())
            .finish_non_exhaustive()
    }
}

impl FaultProxy {
    /// Starts a proxy on a free port of 127.0.0.1 forwarding to `target`, in [`Mode::Pass`].
    /// The target need not be up yet: each connection connects to it when it is accepted (or
    /// when forwarding resumes), and is reset if the target refuses.
    ///
    /// # Panics
    /// When no port can be bound or the proxy thread cannot start.
    #[must_use]
    pub fn start(target: SocketAddr) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap_or_else(|e| panic!("the fault proxy cannot bind 127.0.0.1: {e}"));
        listener
            .set_nonblocking(true)
            .unwrap_or_else(|e| panic!("the fault proxy's listener cannot be non-blocking: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("the fault proxy's listener has no address: {e}"));
        let control = listener
            .try_clone()
            .unwrap_or_else(|e| panic!("cannot duplicate the fault proxy's listener: {e}"));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("cannot build the fault proxy's runtime: {e}"));
        let shared = Arc::new(Shared {
            state: watch::Sender::new(State {
                mode: Mode::Pass,
                epoch: 0,
            }),
            accepted: AtomicU64::new(0),
            next_id: AtomicU64::new(0),
            open: Mutex::default(),
        });
        let (stop, stopped) = oneshot::channel();
        let (handoff, handed) = mpsc::unbounded_channel();
        let thread_shared = Arc::clone(&shared);
        let thread = thread::Builder::new()
            .name(format!("fault-proxy-{}", addr.port()))
            .spawn(move || {
                let accepting = accept_loop(listener, target, thread_shared, handed, stopped);
                runtime.block_on(accepting);
                // Dropping the runtime drops every connection task, closing its sockets.
                drop(runtime);
            })
            .unwrap_or_else(|e| panic!("cannot start the fault proxy thread: {e}"));
        Self {
            addr,
            target,
            shared,
            listener: control,
            handoff,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// The address clients connect to (127.0.0.1 and [`port`](Self::port)).
    #[must_use]
    pub const fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The port clients connect to.
    #[must_use]
    pub const fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The address connections are forwarded to.
    #[must_use]
    pub const fn target(&self) -> SocketAddr {
        self.target
    }

    /// The current mode.
    #[must_use]
    pub fn mode(&self) -> Mode {
        self.shared.state.borrow().mode
    }

    /// How many connections the proxy accepted since it started (including those a cut reset
    /// at once).
    #[must_use]
    pub fn connections_accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::Relaxed)
    }

    /// How many connections the proxy holds open now.
    #[must_use]
    pub fn open_connections(&self) -> usize {
        self.shared.open().len()
    }

    /// Forward bytes both ways as they arrive (held connections resume at once).
    pub fn pass(&self) {
        self.set_mode(Mode::Pass);
    }

    /// Forward each chunk `delay` after the proxy read it, keeping the order per direction.
    /// Chunks already read wait until `delay` after they were read.
    pub fn delay(&self, delay: Duration) {
        self.set_mode(Mode::Delay(delay));
    }

    /// Keep every connection open and forward nothing in either direction; accept new
    /// connections and forward nothing for them either. Bytes sent meanwhile are delivered
    /// when forwarding resumes (see the [module documentation](self)).
    pub fn black_hole(&self) {
        self.set_mode(Mode::BlackHole);
    }

    /// Reset every connection, and reset new ones as soon as they are accepted until the
    /// mode changes. Returns once the connections held at the call are closed.
    ///
    /// # Panics
    /// When they are not closed within [`PATIENCE`] (the proxy thread is stuck).
    pub fn cut(&self) {
        let epoch = self.change(|state| {
            state.mode = Mode::Cut;
            state.epoch += 1;
        });
        self.wait_closed_before(epoch);
    }

    /// Reset the connections held now and keep serving new ones in the current mode. Returns
    /// once they are closed.
    ///
    /// # Panics
    /// When they are not closed within [`PATIENCE`] (the proxy thread is stuck).
    pub fn cut_existing(&self) {
        let epoch = self.change(|state| state.epoch += 1);
        self.wait_closed_before(epoch);
    }

    fn set_mode(&self, mode: Mode) {
        let _ = self.change(|state| state.mode = mode);
    }

    /// Changes the state while holding the table of open connections (see [`Shared::open`]),
    /// after taking the connections waiting in the listen queue, which belong to the state
    /// before; the new epoch.
    fn change(&self, change: impl FnOnce(&mut State)) -> u64 {
        let mut open = self.shared.open();
        let waiting = accept_queued(&self.shared, &mut open, &self.listener);
        // Should the proxy thread be gone, the connections come back here; they are closed
        // (and leave the table) only once the lock is released.
        let unserved = if waiting.is_empty() {
            None
        } else {
            self.handoff.send(waiting).err()
        };
        let mut epoch = 0;
        self.shared.state.send_modify(|state| {
            change(state);
            epoch = state.epoch;
        });
        drop(open);
        drop(unserved);
        epoch
    }

    /// Waits until no connection accepted before `epoch` is open.
    fn wait_closed_before(&self, epoch: u64) {
        let started = Instant::now();
        loop {
            let left = self.shared.open().values().filter(|e| **e < epoch).count();
            if left == 0 {
                return;
            }
            assert!(
                started.elapsed() < PATIENCE,
                "the fault proxy on {} did not close {left} connections within {PATIENCE:?}",
                self.addr
            );
            thread::sleep(Duration::from_millis(1));
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Removes a connection from [`Shared::open`] when its task ends or is dropped.
struct OpenGuard {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        let _ = self.shared.open().remove(&self.id);
    }
}

/// An accepted connection: served with its guard and epoch, or reset (`None`: accepted
/// while the mode was [`Mode::Cut`]).
struct Accepted<S> {
    stream: S,
    serve: Option<(OpenGuard, u64)>,
}

/// Counts a connection just accepted and, unless the mode is [`Mode::Cut`], enters it in
/// `open` (the caller holds the lock of [`Shared::open`]) in the current epoch.
fn register<S>(shared: &Arc<Shared>, open: &mut HashMap<u64, u64>, stream: S) -> Accepted<S> {
    let state = *shared.state.borrow();
    let _ = shared.accepted.fetch_add(1, Ordering::Relaxed);
    let serve = (state.mode != Mode::Cut).then(|| {
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let _ = open.insert(id, state.epoch);
        let guard = OpenGuard {
            shared: Arc::clone(shared),
            id,
        };
        (guard, state.epoch)
    });
    Accepted { stream, serve }
}

/// Accepts every connection waiting in `listener`'s queue (the caller holds the lock of
/// [`Shared::open`]).
fn accept_queued(
    shared: &Arc<Shared>,
    open: &mut HashMap<u64, u64>,
    listener: &std::net::TcpListener,
) -> Vec<Accepted<std::net::TcpStream>> {
    let mut accepted = Vec::new();
    loop {
        match listener.accept() {
            Ok((stream, _)) => accepted.push(register(shared, open, stream)),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                ) => {}
            // Empty (`WouldBlock`), or out of file descriptors: the proxy thread retries.
            Err(_) => return accepted,
        }
    }
}

/// Accepts connections (and takes those a cut handed over) until `stopped` fires, one task
/// each.
async fn accept_loop(
    listener: std::net::TcpListener,
    target: SocketAddr,
    shared: Arc<Shared>,
    mut handed: mpsc::UnboundedReceiver<Vec<Accepted<std::net::TcpStream>>>,
    mut stopped: oneshot::Receiver<()>,
) {
    let Ok(listener) = TcpListener::from_std(listener) else {
        return;
    };
    // The `accept` system call runs inside `poll_accept`: holding the lock around that poll
    // (never across an await) puts each connection in the epoch current when it was taken.
    let accept = || {
        std::future::poll_fn(|cx| {
            let mut open = shared.open();
            listener
                .poll_accept(cx)
                .map(|accepted| accepted.map(|(stream, _)| register(&shared, &mut open, stream)))
        })
    };
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            Some(batch) = handed.recv() => {
                for Accepted { stream, serve } in batch {
                    let stream = stream
                        .set_nonblocking(true)
                        .and_then(|()| TcpStream::from_std(stream));
                    if let Ok(stream) = stream {
                        start_serving(Accepted { stream, serve }, target, &shared);
                    }
                }
            }
            accepted = accept() => match accepted {
                Ok(accepted) => start_serving(accepted, target, &shared),
                // Out of file descriptors or the like: let it pass rather than spin.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
        }
    }
}

/// Serves an accepted connection on a task of its own, or resets it.
fn start_serving(accepted: Accepted<TcpStream>, target: SocketAddr, shared: &Shared) {
    match accepted.serve {
        Some((guard, epoch)) => {
            let watch = shared.state.subscribe();
            let serving = serve(accepted.stream, target, watch, epoch, guard);
            drop(tokio::spawn(serving));
        }
        None => reset(accepted.stream),
    }
}

/// Closes `stream` with a reset (`SO_LINGER` 0) rather than an orderly FIN.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

/// Resolves when a connection accepted in `epoch` must be reset.
async fn cut_signal(mut state: watch::Receiver<State>, epoch: u64) {
    // An error means the proxy is going away: reset as well.
    let _ = state
        .wait_for(|s| s.epoch != epoch || s.mode == Mode::Cut)
        .await;
}

/// One accepted connection: connects to `target` once bytes may move, then relays until
/// both directions end, or resets both sides on a cut or an error.
async fn serve(
    mut client: TcpStream,
    target: SocketAddr,
    state: watch::Receiver<State>,
    epoch: u64,
    guard: OpenGuard,
) {
    let _ = client.set_nodelay(true);
    let cut = cut_signal(state.clone(), epoch);
    tokio::pin!(cut);
    let mut waiting = state.clone();
    let connect = async {
        // A black hole does not reach the target yet.
        let _ = waiting.wait_for(|s| s.mode.forwards()).await;
        TcpStream::connect(target).await
    };
    let upstream = tokio::select! {
        () = &mut cut => None,
        connected = connect => connected.ok(),
    };
    let Some(mut upstream) = upstream else {
        reset(client);
        drop(guard);
        return;
    };
    let _ = upstream.set_nodelay(true);
    let aborted = tokio::select! {
        () = &mut cut => true,
        relayed = relay(&mut client, &mut upstream, &state) => relayed.is_err(),
    };
    if aborted {
        reset(client);
        reset(upstream);
    }
    drop(guard);
}

/// Relays both directions until both have ended; an error in either ends both.
async fn relay(
    client: &mut TcpStream,
    upstream: &mut TcpStream,
    state: &watch::Receiver<State>,
) -> io::Result<()> {
    let (client_read, client_write) = client.split();
    let (upstream_read, upstream_write) = upstream.split();
    let _ = tokio::try_join!(
        pump(client_read, upstream_write, state.clone()),
        pump(upstream_read, client_write, state.clone()),
    )?;
    Ok(())
}

/// Bytes read by the proxy, waiting to be written.
struct Chunk {
    read_at: tokio::time::Instant,
    bytes: Vec<u8>,
}

/// One direction: a reader that reads while the mode forwards, a queue, and a writer that
/// writes each chunk when the mode lets it. EOF is passed on as a half-close.
async fn pump(
    mut from: ReadHalf<'_>,
    mut to: WriteHalf<'_>,
    state: watch::Receiver<State>,
) -> io::Result<()> {
    let (sender, mut queue) = mpsc::channel::<Chunk>(QUEUED_CHUNKS);
    let mut reader_state = state.clone();
    let read = async move {
        let mut buf = vec![0_u8; CHUNK_BYTES];
        loop {
            // Stop reading while nothing moves: the peer's bytes wait in the socket buffers.
            if reader_state.wait_for(|s| s.mode.forwards()).await.is_err() {
                return Ok(());
            }
            let n = tokio::select! {
                read = from.read(&mut buf) => read?,
                _ = reader_state.wait_for(|s| !s.mode.forwards()) => continue,
            };
            if n == 0 {
                // Dropping the sender lets the writer drain the queue and shut down.
                return Ok::<(), io::Error>(());
            }
            let chunk = Chunk {
                read_at: tokio::time::Instant::now(),
                bytes: buf[..n].to_vec(),
            };
            if sender.send(chunk).await.is_err() {
                return Ok(());
            }
        }
    };
    let mut writer_state = state;
    let write = async move {
        while let Some(chunk) = queue.recv().await {
            wait_turn(&mut writer_state, chunk.read_at).await;
            to.write_all(&chunk.bytes).await?;
        }
        to.shutdown().await
    };
    let _ = tokio::try_join!(read, write)?;
    Ok(())
}

/// Waits until a chunk read at `read_at` may be written in the current mode (re-evaluated
/// whenever the mode changes).
async fn wait_turn(state: &mut watch::Receiver<State>, read_at: tokio::time::Instant) {
    loop {
        let mode = state.borrow_and_update().mode;
        match mode {
            Mode::Pass => return,
            Mode::Delay(delay) => {
                tokio::select! {
                    () = tokio::time::sleep_until(read_at + delay) => return,
                    changed = state.changed() => {
                        if changed.is_err() {
                            // The proxy is going away; its runtime ends this task.
                            std::future::pending::<()>().await;
                        }
                    }
                }
            }
            Mode::BlackHole | Mode::Cut => {
                if state.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        }
    }
}
