//! Connections: one task per accepted TCP connection, and what an idle keep-alive connection
//! costs. This module serves any hyper service ([`MakeService`]: one per connection, given the
//! peer address) and imports nothing of the crate; which requests go where is `http`'s.
//!
//! # What is hyper-util's, and what is ours
//! Not hyper-util's `auto` builder: it detects HTTP/2 by its preface as we do, but hands out no
//! `into_parts`, and parking an idle HTTP/1 connection (below) needs exactly that, so the HTTP/1
//! side drives `hyper::server::conn::http1` itself and the preface is peeked at here. Not
//! hyper-util's `GracefulShutdown` either: it watches one hyper connection future per
//! connection, while ours alternates between a parked socket and a hyper connection, and must
//! close a parked or silent one at once rather than wait for it; the drain below is the same
//! idea (a watch channel whose receivers are the live connections). The runtime glue
//! (`TokioIo`, `TokioExecutor`, `TokioTimer`) is hyper-util's.
//!
//! # Why not `serve_connection` for the connection's whole life
//! hyper keeps its per-connection state for as long as the connection is open: an 8 KiB write
//! buffer, a read buffer that grows to 16 KiB after the first request, the dispatcher and its
//! boxed in-flight slot. That is about 18 KB of resident memory per open connection (measured with
//! 10,000 idle keep-alive connections), most of it spent on connections that are doing nothing
//! but waiting for the person behind them to click the next link. At the deployment's 50,000
//! concurrent connections that is 900 MB of a 4 GiB VM.
//!
//! So a connection alternates between two states:
//! - **parked**: only the socket, a timer and this task (about 1.3 KB) are held, while the
//!   task waits for the socket to become readable;
//! - **active**: a hyper HTTP/1 connection is built over the socket and serves until it is idle
//!   again — no request in flight, the response flushed, and hyper waiting on an empty socket.
//!   Then `into_parts` takes the socket back (with any bytes hyper read but did not use, replayed
//!   to the next connection) and the task parks again.
//!
//! Measured the same way, a parked connection costs about 2 KB of resident memory; and the hot
//! path got cheaper, not dearer: building hyper's state per request from a few recently freed,
//! cache-warm buffers costs less than keeping hyper's buffers (up to 24 KiB) for every
//! connection (`loadtest/`).
//!
//! A request whose body hyper may still be reading (one that came with a body) keeps the hyper
//! connection until a later request without a body shows the stream is back at a message
//! boundary; an HTTP/2 connection (prior knowledge, `PRI` preface) is served by hyper for its
//! whole life.
//!
//! Most requests do not need hyper at all: a woken connection reads what is there itself, and a
//! plain `GET`/`HEAD` head that came whole is answered by the server's [`Direct`] (the redirects)
//! and written back without a hyper connection being built; anything else is handed to hyper
//! with the bytes replayed ([`direct`]). The turn, the timeouts and the drain apply alike.
//!
//! # Timeouts
//! Two limits, one timer per connection ([`Timeouts`]):
//! - `head` (`HEADER_READ_TIMEOUT_MS`) bounds the wait for a request head: from the accept for
//!   the first request, and from the moment the first bytes of a later one are read. It closes
//!   slowloris clients, and connections that never send anything.
//! - `idle` (`KEEPALIVE_TIMEOUT_MS`) bounds a keep-alive connection between requests, with
//!   nothing of the next one read: counted from the end of the previous request. It is longer,
//!   because a person who clicks a link every ten seconds or so should keep their connection.
//!
//! The timer is re-armed only when it fires, rather than registered and cancelled on every
//! request; the one exception is a later head that does not come whole at once, whose (earlier)
//! head deadline the timer is moved to. A response
//! still being written keeps the connection as long as the client keeps reading it; one that
//! reads nothing for a whole timeout is closed. Every accepted connection is under this timer,
//! whatever it sent: nothing at all (the first bytes are peeked at with the timer armed), part of
//! an HTTP/1 head or of the HTTP/2 preface, or an HTTP/2 connection with no stream open, which is
//! closed between one and two idle timeouts after its last stream ended (a stream is counted from its
//! head until hyper is done with its response, or until its request future is dropped when the
//! client resets it).
//!
//! # Turns
//! Under a saturating load every open connection has a request waiting, and each one the I/O
//! driver reports readable is a task in the runtime's queue. With 16,000 connections a process,
//! the service's own round trips (a Redis reply, a database read, a returning ping) waited
//! behind all of them, seconds at a time: their timeouts fired, the Redis breaker opened and
//! lookups that should have been cheap went to the database, which answered 503 when its pool
//! was held by tasks waiting their turn. So at most [`TURNS`] HTTP/1 connections read and handle
//! a request at once; the others wait for a turn on a fair semaphore, outside the queue, after
//! one cheap poll. A turn is held from the wake-up until nothing is being handled (the request
//! answered, or its head found incomplete): a slow reader or a slowloris client holds none, and
//! an idle service never waits for one. HTTP/2 connections are not counted. The wait for a turn
//! is part of reading the request's head: it runs under the head timeout from the moment the
//! request was seen, not under what was left of the keep-alive wait before it.
//!
//! # HTTP/2 resets
//! A stream the client resets while its handler is pending costs that handler's work up to the
//! reset, and does not count against `max_concurrent_streams`, so a client could keep any number
//! of handlers busy by opening and resetting streams. hyper's limits bound two kinds per
//! connection, each ending in a GOAWAY: streams reset before hyper took them (20 at once) and
//! streams the server reset itself, refused ones included (1,024 in the connection's life). The
//! third kind, streams reset while their handler was pending, is counted here ("abandoned"):
//! after [`MAX_ABANDONED`] of them the connection gets a GOAWAY, and after twice as many it is
//! closed (the slack is for resets already on their way when the GOAWAY was sent).
//! A stream reset after its answer was sent costs what any request costs.
//!
//! Measured with `loadtest/h2_resets.sh` (release build, 10,000 streams on one connection, reset
//! by `examples/h2_resets.rs`): each reset right behind its HEADERS, hyper's GOAWAY comes after
//! 150 to 1,800 of them, under 10 ms of CPU; reset 2 ms after its HEADERS while Redis is stalled,
//! so that every handler is still pending, ours comes after 101 (10 ms of CPU, where all 10,000
//! went through before, 720 ms); reset 2 ms after, once the answer is out, all 10,000 go through
//! for what 10,000 requests at the same pace cost (0.7 to 1.6 s of CPU either way).
//!
//! # Shutdown
//! Every task holds a receiver of the connection shutdown channel. Shutdown never closes a
//! keep-alive connection under a client that may be sending its next request at that moment,
//! which the client would see as a reset: an HTTP/1 connection with nothing in flight (parked,
//! never used yet, or with only part of a head read) waits up to [`IDLE_DRAIN`] for one more
//! request, answers it with `Connection: close` and closes; one that stays quiet that long is
//! closed then. A request in
//! flight is finished and its response carries `Connection: close` (hyper's graceful shutdown);
//! HTTP/2 gets a GOAWAY, and a client that does not answer the GOAWAY's ping is not waited for:
//! once no stream is in flight and nothing has been written for [`CLOSE_GRACE`], its connection
//! is closed. The head timeout still applies throughout, so a silent client holds shutdown no
//! longer than [`IDLE_DRAIN`]. The accept loop (the caller's) stops accepting first: connections
//! that arrive meanwhile wait in the listening socket's backlog for whichever process serves it
//! next. The server waits until every receiver is gone.

pub mod direct;
pub mod listen;

pub use direct::{Direct, Head, NoDirect};

use std::{
    convert::Infallible,
    future::{poll_fn, Future},
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        atomic::{
            AtomicBool, AtomicU32, AtomicU64,
            Ordering::{Acquire, Relaxed, Release},
        },
        Arc,
    },
    task::{ready, Context, Poll},
    time::Duration,
};

use hyper::{
    body::{Body as HttpBody, Bytes, Frame, Incoming, SizeHint},
    server::conn::{http1, http2},
    service::Service,
    Request, Response,
};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    sync::{watch, Semaphore, SemaphorePermit},
    time::{Instant, Sleep},
};

/// The error type a response body may fail with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Makes the service that answers one connection's requests; called once per connection (and
/// the service is kept across the connection's parks). A closure
/// `Fn(SocketAddr) -> impl Service<…>` is one.
pub trait MakeService: Send + Sync + 'static {
    /// The response body.
    type Body: HttpBody<Data = Bytes, Error: Into<BoxError>> + Send + Unpin + 'static;
    /// The service.
    type Service: Service<Request<Incoming>, Response = Response<Self::Body>, Error = Infallible, Future: Send + 'static>
        + Send
        + 'static;
    /// The service for a connection from `peer`.
    fn make(&self, peer: SocketAddr) -> Self::Service;
}

impl<F, S, B> MakeService for F
where
    F: Fn(SocketAddr) -> S + Send + Sync + 'static,
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
    B: HttpBody<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    type Body = B;
    type Service = S;

    fn make(&self, peer: SocketAddr) -> S {
        self(peer)
    }
}

/// Streams an HTTP/2 client may reset while their handler is pending, in one connection's life,
/// before the connection gets a GOAWAY. A browser cancels a request now and then; a handler here
/// is pending for milliseconds, so a reset that lands in that window is rare.
pub const MAX_ABANDONED: u64 = 100;

/// How long an HTTP/2 connection that has been sent a GOAWAY may go with no stream in flight and
/// nothing written before it is closed. A client that answers the GOAWAY's ping is closed by
/// hyper within a round trip; this bounds one that never does.
pub const CLOSE_GRACE: Duration = Duration::from_millis(250);

/// How long, once shutdown has begun, an HTTP/1 connection with nothing in flight is kept for
/// the request its client may already be sending. A client that sends requests back to back (a
/// load test, a page fetching its assets) gets its next one answered, with `Connection: close`,
/// well within it, and reconnects to whichever process serves the socket next; a person who
/// clicks every few seconds is unlikely to click inside the moment the connection closes.
pub const IDLE_DRAIN: Duration = Duration::from_millis(500);

/// The connection deadlines (see the module's "Timeouts").
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// A request head must come whole within this: from the accept for the first, from its
    /// first bytes for a later one.
    pub head: Duration,
    /// A keep-alive connection may wait this long for the first bytes of its next request.
    pub idle: Duration,
}

/// HTTP/1 connections taking their turn at once: reading a request and handling it. One whose
/// request has come while all turns are taken waits for one, off the runtime's queue (see the
/// module's "Turns").
pub const TURNS: usize = 512;

/// Connection counters, shared with whoever exports them.
#[derive(Default)]
pub struct ConnStats {
    /// Connections open now (accepted, not yet closed).
    pub open: AtomicU64,
    /// Connections accepted, ever.
    pub accepted: AtomicU64,
    /// Requests that waited for a turn, ever.
    pub waited_for_turn: AtomicU64,
    /// Requests answered directly, without hyper (see [`direct`]), ever.
    pub direct: AtomicU64,
}

/// Counts a connection as open for the life of its task.
struct Open(Arc<ConnStats>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Relaxed);
    }
}

/// What every connection task shares.
pub struct Server<M, D = NoDirect> {
    make: M,
    /// Answers plain requests without hyper (see [`direct`]).
    direct: D,
    h1: http1::Builder,
    /// The same, without keep-alive: for requests that arrive during shutdown.
    h1_closing: http1::Builder,
    stats: Arc<ConnStats>,
    h2: http2::Builder<TokioExecutor>,
    timeouts: Timeouts,
    /// [`TURNS`] permits: an HTTP/1 connection holds one from the moment its request is readable
    /// until that request is answered (or shown to be incomplete).
    turns: Semaphore,
    /// Set before `shutdown` is sent: tasks read this on every wake instead of polling their
    /// `changed()` future, which takes the channel's waiter lock each time it is polled.
    stopping: AtomicBool,
    /// Every task holds a receiver; the drain is over when the last one is gone.
    shutdown: watch::Sender<bool>,
}

impl<M: MakeService> Server<M> {
    /// Serves the services `make` makes, under `timeouts`; `stats` are kept up to date.
    pub fn new(make: M, timeouts: Timeouts, stats: Arc<ConnStats>) -> Arc<Self> {
        Server::with_direct(make, NoDirect, timeouts, stats)
    }
}

impl<M: MakeService, D: Direct> Server<M, D> {
    /// As [`Server::new`], and `direct` answers the plain requests it takes (see [`direct`]).
    pub fn with_direct(make: M, direct: D, timeouts: Timeouts, stats: Arc<ConnStats>) -> Arc<Self> {
        let mut h1 = http1::Builder::new();
        h1.keep_alive(true);
        let mut h1_closing = h1.clone();
        h1_closing.keep_alive(false);
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .max_concurrent_streams(256)
            // Streams reset by the client before hyper took them; more at once is a GOAWAY
            // (h2's default, set here so that it is seen).
            .max_pending_accept_reset_streams(20)
            // Streams reset by the server, refused ones included; more in the connection's life
            // is a GOAWAY (hyper's default).
            .max_local_error_reset_streams(1024);
        let (shutdown, _) = watch::channel(false);
        let stopping = AtomicBool::new(false);
        let turns = Semaphore::new(TURNS);
        Arc::new(Server { make, direct, h1, h1_closing, stats, h2, timeouts, turns, stopping, shutdown })
    }

    /// Serves an accepted connection on a task of its own.
    pub fn spawn(self: &Arc<Self>, stream: TcpStream, peer: SocketAddr) {
        let rx = self.shutdown.subscribe();
        self.stats.accepted.fetch_add(1, Relaxed);
        self.stats.open.fetch_add(1, Relaxed);
        let (open, server) = (Open(self.stats.clone()), self.clone());
        tokio::spawn(async move {
            serve(server, stream, peer, rx).await;
            drop(open);
        });
    }

    /// Drains: idle connections get [`IDLE_DRAIN`] for one last request, active ones finish
    /// theirs, all answer with `Connection: close`; waits up to `timeout` for all of them. False
    /// if some were still open then.
    pub async fn shutdown(&self, timeout: Duration) -> bool {
        self.begin_shutdown();
        tokio::time::timeout(timeout, self.shutdown.closed()).await.is_ok()
    }

    /// Tells every connection that shutdown has begun, without waiting. Call it before closing
    /// the listener, so that no request answered after the close is answered with keep-alive.
    pub fn begin_shutdown(&self) {
        self.stopping.store(true, Release);
        self.shutdown.send_replace(true);
    }
}

/// Whether shutdown was asked for. The `changed()` future is polled once, to register the task's
/// waker (a tokio task's waker stays the same for its life); after that a wake-up is checked
/// against `Server::stopping`.
struct StopSignal<'a, F> {
    changed: Pin<&'a mut F>,
    stopping: &'a AtomicBool,
    registered: bool,
}

impl<F: Future> StopSignal<'_, F> {
    fn requested(&mut self, cx: &mut Context<'_>) -> bool {
        if self.stopping.load(Acquire) {
            return true;
        }
        if !self.registered {
            self.registered = true;
            if self.changed.as_mut().poll(cx).is_ready() {
                return true;
            }
        }
        false
    }

    /// Whether shutdown was asked for, without registering for the news.
    fn requested_now(&self) -> bool {
        self.stopping.load(Acquire)
    }
}

/// Serves one accepted connection until it closes, times out, or shutdown.
async fn serve<M: MakeService, D: Direct>(
    server: Arc<Server<M, D>>,
    stream: TcpStream,
    peer: SocketAddr,
    mut shutdown: watch::Receiver<bool>,
) {
    let flags = Arc::new(Flags::default());
    let changed = shutdown.changed();
    tokio::pin!(changed);
    let mut stop = StopSignal { changed, stopping: &server.stopping, registered: false };
    let mut stopped = false;
    // Shutting down, waiting for the request a quiet HTTP/1 client may be sending: armed once,
    // when the task first sees the shutdown.
    let mut drain: Option<Pin<Box<Sleep>>> = None;
    let mut clock = HeadClock::new(server.timeouts);
    let timer = tokio::time::sleep_until(clock.deadline());
    tokio::pin!(timer);

    let mut stream = stream;
    let mut leftover = Bytes::new();
    let mut first = true;
    // The first bytes, peeked at: HTTP/2 with prior knowledge starts with `PRI * HTTP/2.0`, and no
    // HTTP/1 method is `PRI`. (A client whose first packet holds fewer than three bytes is served
    // as HTTP/1.)
    let mut sniffed = [0u8; 3];
    // Made once and handed back by `into_parts` at every park: no per-request clones of the
    // shared handles it holds.
    let mut svc = Some(service(&server, peer, &flags));
    loop {
        // Parked.
        if leftover.is_empty() {
            let woke = poll_fn(|cx| {
                // Readiness first: a request that has arrived is served, even during shutdown.
                // The first time, the bytes themselves: a fresh socket can be reported readable
                // before a byte has arrived, and a wait for them must not escape the timer.
                let readable = if first {
                    stream.poll_peek(cx, &mut ReadBuf::new(&mut sniffed)).map(|r| r.is_ok_and(|n| n > 0))
                } else {
                    stream.poll_read_ready(cx).map(|r| r.is_ok())
                };
                if let Poll::Ready(readable) = readable {
                    return Poll::Ready(if readable { Wake::Readable } else { Wake::Stop });
                }
                if drain.is_none() && stop.requested(cx) {
                    drain = Some(Box::pin(tokio::time::sleep(IDLE_DRAIN)));
                }
                if drain.as_mut().is_some_and(|d| d.as_mut().poll(cx).is_ready())
                    || clock.expired(timer.as_mut(), &flags, cx)
                {
                    return Poll::Ready(Wake::Stop);
                }
                Poll::Pending
            })
            .await;
            if matches!(woke, Wake::Stop) {
                return;
            }
        }
        if std::mem::take(&mut first) && sniffed == *b"PRI" {
            // Boxed: the parked state of every HTTP/1 connection should not carry its size.
            return Box::pin(serve_h2(&server, stream, peer, &mut stop, &mut clock, timer.as_mut())).await;
        }

        // A turn: the request is there to be read and handled.
        let mut turn = match server.turns.try_acquire() {
            Ok(permit) => Some(permit),
            Err(_) => {
                server.stats.waited_for_turn.fetch_add(1, Relaxed);
                // Bytes of the next request are there (or the client has gone): the wait for a
                // turn is part of reading its head, under the head timeout from now rather than
                // what was left of the keep-alive wait it ended.
                clock.head_begun(timer.as_mut(), Instant::now());
                match wait_for_turn(&server.turns, &mut clock, timer.as_mut(), &flags).await {
                    Some(permit) => Some(permit),
                    None => return,
                }
            }
        };

        // Active. With a partial head left over, this hyper connection keeps the socket at least
        // until that request starts: parking in the middle of a head would copy it out and back
        // once per packet. Shutting down, it serves one request without keep-alive (hyper says
        // `Connection: close` and closes once the response is out).
        let closing = drain.is_some() || stop.requested_now();
        if closing && drain.is_none() {
            drain = Some(Box::pin(tokio::time::sleep(IDLE_DRAIN)));
        }
        // A plain head, whole in the first read, may be answered without hyper (see `direct`).
        if leftover.is_empty() {
            // Boxed, as hyper's connection is: the parked state does not carry the answer's. (Made
            // in a statement of its own: what `read` returns is gone before the await.)
            let direct = match direct::read(&stream, peer, &server.direct) {
                direct::Read::Nothing => {
                    drop(turn);
                    clock.nothing_read();
                    continue;
                }
                direct::Read::Gone => return,
                direct::Read::Hyper(read) => {
                    leftover = read;
                    None
                }
                direct::Read::Direct { answer, rest, head } => {
                    flags.started.fetch_add(1, Relaxed);
                    server.stats.direct.fetch_add(1, Relaxed);
                    let (patience, stopping, turn) = (server.timeouts.head, &server.stopping, turn.take());
                    let written = Box::pin(direct::answer_and_write(
                        &mut stream,
                        answer,
                        head,
                        closing,
                        stopping,
                        patience,
                        turn,
                    ));
                    Some((written, rest))
                }
            };
            if let Some((written, rest)) = direct {
                match written.await {
                    direct::Written::Close => return,
                    direct::Written::KeepAlive => {
                        clock.observe(&flags, Instant::now());
                        // A pipelined request goes to hyper, at once.
                        leftover = rest;
                        continue;
                    }
                }
            }
        }
        let hold = (!leftover.is_empty()).then(|| flags.started.load(Relaxed));
        // Requests seen before this hyper connection: while it is still the same after hyper has
        // read, the head it read from is not whole, and the head timeout applies to it.
        let started = flags.started.load(Relaxed);
        let mut head_begun = false;
        let io = TokioIo::new(Tracked { stream, leftover, flags: flags.clone() });
        let Some(service) = svc.take() else { return };
        let builder = if closing { &server.h1_closing } else { &server.h1 };
        // Boxed: the parked state (the task's future, kept for every open connection) does not
        // carry hyper's connection state, only the active one does.
        let mut conn = Box::new(builder.serve_connection(io, service));
        let outcome = poll_fn(|cx| {
            if Pin::new(&mut *conn).poll(cx).is_ready() {
                return Poll::Ready(Outcome::Closed);
            }
            if !head_begun && flags.started.load(Relaxed) == started {
                head_begun = true;
                clock.head_begun(timer.as_mut(), Instant::now());
            }
            // Nothing is being handled: the request was answered (its response may still be on
            // its way to a slow reader), or its head has not come whole. Neither needs a turn.
            if turn.is_some() && flags.in_flight.load(Relaxed) == 0 {
                turn = None;
            }
            // Only after hyper has read what is there (the leftover included): a graceful
            // shutdown of a connection that has not read yet would close it unanswered.
            if !closing && !stopped && stop.requested(cx) {
                // Nothing in flight: park, and give the client `IDLE_DRAIN` for its next request.
                // A head that has come in part is replayed to a connection without keep-alive,
                // which answers it once the rest comes (within `IDLE_DRAIN`).
                if flags.idle() {
                    return Poll::Ready(Outcome::Idle);
                }
                stopped = true;
                Pin::new(&mut *conn).graceful_shutdown();
                if Pin::new(&mut *conn).poll(cx).is_ready() {
                    return Poll::Ready(Outcome::Closed);
                }
            }
            // Shut down with a request in flight (or a body being read): once that is answered,
            // a head that has not come whole is not waited for.
            if stopped && flags.quiet() {
                return Poll::Ready(Outcome::Closed);
            }
            // Shutting down, no request has started on this connection within `IDLE_DRAIN`
            // (nothing, or only part of a head, came): close.
            if closing && flags.quiet() && drain.as_mut().is_some_and(|d| d.as_mut().poll(cx).is_ready()) {
                return Poll::Ready(Outcome::Closed);
            }
            if !closing && !stopped && flags.idle() && hold.is_none_or(|h| flags.started.load(Relaxed) != h) {
                return Poll::Ready(Outcome::Idle);
            }
            if clock.expired(timer.as_mut(), &flags, cx) {
                return Poll::Ready(Outcome::Closed);
            }
            Poll::Pending
        })
        .await;
        match outcome {
            Outcome::Closed => return,
            Outcome::Idle => {
                clock.observe(&flags, Instant::now());
                let parts = (*conn).into_parts();
                svc = Some(parts.service);
                let tracked = parts.io.into_inner();
                stream = tracked.stream;
                // Bytes hyper read past the last request (a pipelined or partial head), copied
                // out: an empty view would still hold hyper's whole read buffer.
                leftover = unread(&parts.read_buf, &tracked.leftover);
                if leftover.is_empty() {
                    clock.nothing_read();
                }
            }
        }
    }
}

/// Waits for a turn, under the connection's deadline; `None`: the deadline passed first.
async fn wait_for_turn<'a>(
    turns: &'a Semaphore,
    clock: &mut HeadClock,
    mut timer: Pin<&mut Sleep>,
    flags: &Flags,
) -> Option<SemaphorePermit<'a>> {
    let permit = turns.acquire();
    tokio::pin!(permit);
    poll_fn(|cx| {
        if let Poll::Ready(p) = permit.as_mut().poll(cx) {
            // The semaphore is never closed.
            return Poll::Ready(p.ok());
        }
        if clock.expired(timer.as_mut(), flags, cx) {
            return Poll::Ready(None);
        }
        Poll::Pending
    })
    .await
}

enum Wake {
    Readable,
    Stop,
}

enum Outcome {
    Idle,
    Closed,
}

/// What hyper read but did not use, then what it had not yet read of the previous leftover.
fn unread(read_but_unused: &[u8], not_read: &[u8]) -> Bytes {
    if read_but_unused.is_empty() && not_read.is_empty() {
        return Bytes::new();
    }
    let mut all = Vec::with_capacity(read_but_unused.len() + not_read.len());
    all.extend_from_slice(read_but_unused);
    all.extend_from_slice(not_read);
    Bytes::from(all)
}

async fn serve_h2<M: MakeService, D: Direct, F: Future>(
    server: &Arc<Server<M, D>>,
    stream: TcpStream,
    peer: SocketAddr,
    stop: &mut StopSignal<'_, F>,
    clock: &mut HeadClock,
    mut timer: Pin<&mut Sleep>,
) {
    let flags = Arc::new(Flags::default());
    let io = TokioIo::new(Tracked { stream, leftover: Bytes::new(), flags: flags.clone() });
    let mut conn = server.h2.serve_connection(io, service(server, peer, &flags));
    let mut closing = false;
    poll_fn(|cx| {
        if Pin::new(&mut conn).poll(cx).is_ready() {
            return Poll::Ready(());
        }
        let abandoned = flags.abandoned.load(Relaxed);
        if abandoned >= 2 * MAX_ABANDONED {
            // Told to go away, and still resetting pending streams.
            return Poll::Ready(());
        }
        let abusive = abandoned >= MAX_ABANDONED;
        if !closing && (stop.requested(cx) || abusive) {
            if abusive {
                tracing::debug!(%peer, http2.abandoned = abandoned, "a client keeps resetting pending streams: GOAWAY");
            }
            closing = true;
            Pin::new(&mut conn).graceful_shutdown();
            if Pin::new(&mut conn).poll(cx).is_ready() {
                return Poll::Ready(());
            }
            // No stream ever (the preface may not even be whole): nothing to finish.
            if flags.started.load(Relaxed) == 0 {
                return Poll::Ready(());
            }
            clock.close_soon(timer.as_mut(), &flags);
        }
        // No stream open for the head timeout (a stalled preface included), or, closing, for
        // `CLOSE_GRACE`: close.
        if clock.expired(timer.as_mut(), &flags, cx) {
            return Poll::Ready(());
        }
        Poll::Pending
    })
    .await
}

/// The service hyper calls for each request: the connection's own service, plus the
/// bookkeeping `Flags` needs.
fn service<M: MakeService, D>(
    server: &Server<M, D>,
    peer: SocketAddr,
    flags: &Arc<Flags>,
) -> impl Service<Request<Incoming>, Response = Response<TrackedBody<M::Body>>, Error = Infallible, Future: Send + 'static>
       + Send
       + 'static {
    let (inner, flags) = (server.make.make(peer), flags.clone());
    hyper::service::service_fn(move |req: Request<Incoming>| {
        let mut in_flight = flags.on_request(req.body().is_end_stream());
        let answer = inner.call(req);
        async move {
            let resp = match answer.await {
                Ok(r) => r,
                Err(never) => match never {},
            };
            in_flight.answered = true;
            Ok(resp.map(|inner| TrackedBody { inner, _in_flight: in_flight }))
        }
    })
}

/// What the connection task needs to know about the hyper connection it cannot look into.
#[derive(Default)]
struct Flags {
    /// Requests whose response body has not yet been fully handed to hyper ([`InFlight`]).
    in_flight: AtomicU32,
    /// Requests whose future was dropped before it answered, ever: an HTTP/2 stream the client
    /// reset while its handler was pending (or a connection that went away under a request).
    abandoned: AtomicU64,
    /// Requests seen (heads parsed), ever.
    started: AtomicU64,
    /// The last read found the socket empty.
    read_blocked: AtomicBool,
    /// The last write or flush could not complete.
    write_blocked: AtomicBool,
    /// Bytes written to the socket, ever (progress of a slow reader).
    written: AtomicU64,
    /// A request came with a body hyper may still be reading; cleared by a later request
    /// without one (hyper parses the next head only at a message boundary).
    body_pending: AtomicBool,
}

impl Flags {
    fn on_request(self: &Arc<Self>, without_body: bool) -> InFlight {
        self.started.fetch_add(1, Relaxed);
        self.in_flight.fetch_add(1, Relaxed);
        self.body_pending.store(!without_body, Relaxed);
        InFlight { flags: self.clone(), answered: false }
    }

    /// Nothing in flight, nothing to write, and the socket read empty.
    fn quiet(&self) -> bool {
        self.read_blocked.load(Relaxed) && self.in_flight.load(Relaxed) == 0 && !self.write_blocked.load(Relaxed)
    }

    /// hyper has nothing to do until the client sends more: it can be taken apart.
    fn idle(&self) -> bool {
        self.quiet() && !self.body_pending.load(Relaxed)
    }
}

/// One request in `Flags::in_flight`, from its head until hyper is done with its response body
/// (it travels in the request future, then in the [`TrackedBody`]), or until the request future
/// is dropped unanswered, which also counts it as abandoned.
struct InFlight {
    flags: Arc<Flags>,
    answered: bool,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if !self.answered {
            self.flags.abandoned.fetch_add(1, Relaxed);
        }
        self.flags.in_flight.fetch_sub(1, Relaxed);
    }
}

/// The connection's deadline: `head` after the accept, or after the first bytes of a later
/// request were read; `idle` after its last request was answered, while nothing of the next one
/// has been read. While a request is being served there is none.
struct HeadClock {
    since: Instant,
    timeouts: Timeouts,
    /// Between requests with nothing of the next one read: `since + idle` is the deadline.
    between: bool,
    /// `since` before [`HeadClock::head_begun`], for a wake-up that read nothing after all.
    idle_since: Option<Instant>,
    /// `Flags::started` when `since` was last set (`u64::MAX`: set it at the next look).
    seen: u64,
    /// `Flags::written` when the timer last fired.
    written: u64,
    /// Closing (an HTTP/2 GOAWAY sent): the deadline is `CLOSE_GRACE` with nothing in flight and
    /// nothing written.
    closing: bool,
}

impl HeadClock {
    fn new(timeouts: Timeouts) -> Self {
        HeadClock {
            since: Instant::now(),
            timeouts,
            between: false,
            idle_since: None,
            seen: 0,
            written: 0,
            closing: false,
        }
    }

    /// If a request came since the clock last looked, the wait for the next one starts now.
    fn observe(&mut self, flags: &Flags, now: Instant) {
        let started = flags.started.load(Relaxed);
        if started != self.seen {
            self.seen = started;
            self.since = now;
            self.between = true;
            self.idle_since = None;
        }
    }

    fn deadline(&self) -> Instant {
        self.since + if self.between { self.timeouts.idle } else { self.timeouts.head }
    }

    /// Bytes of the next request were read at `at`, not its whole head: from then on the head
    /// timeout applies, and the timer is moved to it if that is sooner.
    fn head_begun(&mut self, mut timer: Pin<&mut Sleep>, at: Instant) {
        if !self.between || self.closing {
            return;
        }
        self.between = false;
        self.idle_since = Some(self.since);
        self.since = at;
        let deadline = self.deadline();
        if deadline < timer.deadline() {
            timer.as_mut().reset(deadline);
        }
    }

    /// The connection is parking with nothing of a request read (a wake-up for no bytes, or
    /// only the blank lines a client may send between requests): still between requests.
    fn nothing_read(&mut self) {
        if let Some(since) = self.idle_since.take() {
            self.since = since;
            self.between = true;
        }
    }

    /// From now on the connection is closed once nothing is in flight and nothing has been
    /// written for `CLOSE_GRACE`.
    fn close_soon(&mut self, mut timer: Pin<&mut Sleep>, flags: &Flags) {
        self.closing = true;
        self.written = flags.written.load(Relaxed);
        timer.as_mut().reset(Instant::now() + CLOSE_GRACE);
    }

    /// Whether the head deadline has passed. The timer stays armed for the deadline as it was
    /// when it was last armed, and is re-armed only when it fires: a busy connection costs no
    /// timer work per request. (A request answered without the task parking afterwards — one
    /// that came with a body, or any HTTP/2 stream — is seen late, when the timer fires, so such a
    /// connection may stay open up to twice the timeout.) Closing, the deadline is instead
    /// `CLOSE_GRACE` with nothing in flight and nothing written.
    fn expired(&mut self, mut timer: Pin<&mut Sleep>, flags: &Flags, cx: &mut Context<'_>) -> bool {
        while timer.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            if self.closing {
                let written = flags.written.load(Relaxed);
                let busy = flags.in_flight.load(Relaxed) > 0 || written != self.written;
                self.written = written;
                if !busy {
                    return true;
                }
                timer.as_mut().reset(now + CLOSE_GRACE);
                continue;
            }
            self.observe(flags, now);
            // Busy: a response not yet handed to hyper, or one still being written to a client
            // that keeps reading. (A client that stopped reading for a whole timeout is not
            // busy: it is closed like an idle one.)
            let written = flags.written.load(Relaxed);
            let writing = flags.write_blocked.load(Relaxed) && written != self.written;
            self.written = written;
            if flags.in_flight.load(Relaxed) > 0 || writing {
                // No head is awaited while a request is served; the wait for the next one
                // starts when the task next looks (at its park, or at the next firing).
                self.seen = u64::MAX;
                timer.as_mut().reset(now + self.timeouts.head.min(self.timeouts.idle));
            } else if self.deadline() <= now {
                return true;
            } else {
                timer.as_mut().reset(self.deadline());
            }
        }
        false
    }
}

/// The socket as hyper sees it: replays `leftover` first, and records whether the last read or
/// write would block.
struct Tracked {
    stream: TcpStream,
    leftover: Bytes,
    flags: Arc<Flags>,
}

impl AsyncRead for Tracked {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.leftover.is_empty() {
            let n = self.leftover.len().min(buf.remaining());
            let chunk = self.leftover.split_to(n);
            buf.put_slice(&chunk);
            self.flags.read_blocked.store(false, Relaxed);
            return Poll::Ready(Ok(()));
        }
        let this = &mut *self;
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Pending => {
                this.flags.read_blocked.store(true, Relaxed);
                Poll::Pending
            }
            ready => {
                this.flags.read_blocked.store(false, Relaxed);
                ready
            }
        }
    }
}

impl Tracked {
    fn note<T>(&self, p: Poll<T>) -> Poll<T> {
        self.flags.write_blocked.store(p.is_pending(), Relaxed);
        p
    }

    fn note_written(&self, p: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
        if let Poll::Ready(Ok(n)) = p {
            self.flags.written.fetch_add(n as u64, Relaxed);
        }
        self.note(p)
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let p = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.note_written(p)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let p = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.note_written(p)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let p = Pin::new(&mut self.stream).poll_flush(cx);
        self.note(p)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // A connection being closed is never parked.
        self.flags.body_pending.store(true, Relaxed);
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// A response body that keeps its request in flight until hyper is done with it (it drops the
/// body once the last frame is encoded).
pub struct TrackedBody<B> {
    inner: B,
    _in_flight: InFlight,
}

impl<B: HttpBody<Data = Bytes> + Unpin> HttpBody for TrackedBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        Poll::Ready(ready!(Pin::new(&mut self.inner).poll_frame(cx)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a parked connection's task holds is the `serve` future itself: it must not carry an
    /// active hyper connection's state (that is boxed while active), only the socket, the timer
    /// and the bookkeeping.
    #[tokio::test]
    async fn a_parked_connection_holds_a_small_future() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (stream, peer) = listener.accept().await.unwrap();
        let make = |_peer: SocketAddr| {
            hyper::service::service_fn(|_req: Request<Incoming>| async {
                Ok::<_, Infallible>(Response::new(String::new()))
            })
        };
        let timeouts = Timeouts { head: Duration::from_secs(1), idle: Duration::from_secs(1) };
        // A direct answer whose future is large: boxed while it runs, like hyper's connection.
        let server = Server::with_direct(make, LargeAnswers, timeouts, Arc::default());
        let rx = server.shutdown.subscribe();
        let future = serve(server.clone(), stream, peer, rx);
        let size = std::mem::size_of_val(&future);
        eprintln!("serve future: {size} bytes");
        assert!(size <= 1024, "a parked connection's future is {size} bytes");
        drop((future, client));
    }

    /// Answers every plain head directly, with a future of more than 8 KB.
    struct LargeAnswers;

    impl Direct for LargeAnswers {
        type Body = String;

        fn answer(
            &self,
            _: SocketAddr,
            _: &Head<'_>,
        ) -> Option<impl Future<Output = Response<String>> + Send + 'static + use<>> {
            Some(async {
                let scratch = std::hint::black_box([7u8; 8192]);
                tokio::task::yield_now().await;
                Response::new(scratch[8191].to_string())
            })
        }
    }
}
