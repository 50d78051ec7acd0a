//! Builds the service (pools, caches, writer, router), binds, serves, and shuts down
//! gracefully. [`build`] returns an [`Application`] whose address is already bound, so tests
//! and the `serve` command alike learn the real port before serving.
//!
//! The accept loop is our own rather than `axum::serve`. axum 0.8.9's `serve` accepts any
//! listener, so a backlog and TCP options could be set on a socket handed to it; what it does not
//! have is a header-read timeout against slowloris clients (and a deadline for every other state
//! of a connection), a clear log line instead of a spin when the process runs out of file
//! descriptors, and connections that hold almost no memory while idle ([`crate::net`]).

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use axum::http::HeaderValue;
use futures_util::future::BoxFuture;
use tokio::{
    net::{TcpListener, TcpSocket, TcpStream},
    sync::watch,
    task::JoinHandle,
};

use crate::{
    cache::{local::L1, redis::LinkCache},
    clicks::Clicks,
    config::Config,
    db::{self, writer::Writer},
    http,
    invalidation::{Bus, Listeners, Outbox},
    links::resolve::{Hooks, Resolver},
    observe::Metrics,
    ratelimit::RateLimiter,
    redis_client::RedisClient,
    state::{AppState, Inner},
};

/// Any startup failure, with a message that says what failed.
pub type StartupError = Box<dyn std::error::Error + Send + Sync>;

/// A built, bound service, ready to run.
pub struct Application {
    addrs: Vec<SocketAddr>,
    inherited: usize,
    listeners: Vec<TcpListener>,
    surface: Arc<http::Surface>,
    state: AppState,
    shutdown_tx: watch::Sender<bool>,
    background: Vec<JoinHandle<()>>,
    /// The invalidation listener's thread, with Redis; it stops when this is dropped.
    _control: Option<ControlThread>,
}

/// A runtime on a thread of its own for the invalidation listener (its subscription, pings and
/// confirmations) and the outbox reader. Both keep L1 trusted (`invalidation`), and on the
/// request path's runtime, overloaded, they waited behind thousands of ready connections: pings
/// came back too late and outbox reads came seconds apart, so L1 stopped being trusted and
/// started over, every lookup fell through to Redis and SQLite, and a saturating load of 50,000
/// connections got slower answers and 503s. Here they are as prompt as Redis and the database,
/// whatever the request path is doing. Their callbacks touch only thread-safe state (L1, the
/// key cache, the bus's maps).
struct ControlThread {
    handle: tokio::runtime::Handle,
    /// Dropped: the thread's runtime stops, cancelling whatever still runs on it.
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl ControlThread {
    fn start() -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new().name("shortener-bus".into()).spawn(move || {
            runtime.block_on(async {
                let _ = stopped.await;
            });
        })?;
        Ok(ControlThread { handle, _stop: stop })
    }
}

/// The invalidation bus's view of the database's outbox.
struct DbOutbox(db::Db);

impl Outbox for DbOutbox {
    fn queued_after(&self, after: i64, limit: i64) -> BoxFuture<'_, Result<Vec<(i64, String)>, String>> {
        Box::pin(
            async move { db::links::find_invalidations_after(&self.0, after, limit).await.map_err(|e| e.to_string()) },
        )
    }
}

/// Opens the database (running migrations), the caches and the writer, and binds the listener.
/// Redis being unreachable is not an error: the service starts on L1 + SQLite and keeps trying.
pub async fn build(config: Config) -> Result<Application, StartupError> {
    build_with(config, Hooks::default()).await
}

/// [`build`] with test hooks in place (tests only: production builds take none).
pub async fn build_with(config: Config, hooks: Hooks) -> Result<Application, StartupError> {
    build_on(config, hooks, Vec::new()).await
}

/// [`build_with`] serving `inherited` listening sockets (socket activation); with none, it binds
/// `LISTEN_ADDR` itself.
pub async fn build_on(
    config: Config,
    hooks: Hooks,
    inherited: Vec<crate::net::listen::Inherited>,
) -> Result<Application, StartupError> {
    let shown_url = crate::config::redact_url(&config.db.url);
    let (read_pool, writer_conn) =
        db::open(&config.db.url, config.db.read_pool_size, config.db.acquire_timeout, config.db.busy_timeout)
            .await
            .map_err(|e| format!("opening database {shown_url}: {e}"))?;
    tracing::info!(db.backend = read_pool.backend().as_str(), db.url = %shown_url, "database open");

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut background = Vec::new();

    let redis = if config.redis.enabled {
        let client = RedisClient::new(&config.redis)?;
        let bus = Bus::new(client.clone(), Arc::new(DbOutbox(read_pool.clone())));
        client.tick(&*bus).await;
        if client.readable() {
            tracing::info!(redis.at = %client.describe(), "redis connected");
        } else {
            tracing::warn!(
                redis.at = %client.describe(),
                "redis not reachable at startup: serving from L1 and SQLite, retrying in the background"
            );
        }
        let (c, restore, rx) = (client.clone(), bus.clone(), shutdown_rx.clone());
        background.push(tokio::spawn(async move { c.supervise(restore, rx).await }));
        Some((LinkCache::new(client), bus))
    } else {
        tracing::info!("redis disabled (REDIS_ENABLED=false): serving from L1 and SQLite");
        None
    };

    let resolver = Arc::new(
        Resolver::new(
            {
                let l1 = L1::new(config.cache.l1_capacity, config.cache.l1_ttl, config.cache.negative_ttl);
                // With Redis, other instances may change links behind this one's back: L1 is
                // served only while the invalidation listener keeps up (`invalidation`).
                if redis.is_some() {
                    l1.shared()
                } else {
                    l1
                }
            },
            redis,
            read_pool.clone(),
            config.cache.negative_ttl,
        )
        .with_hooks(hooks),
    );
    let key_cache = Arc::new(crate::auth::KeyCache::new(config.auth.cache_ttl));
    let mut control = None;
    if let (Some(cache), Some(bus)) = (resolver.redis.clone(), resolver.bus.clone()) {
        let (r, k, rx) = (resolver.clone(), key_cache.clone(), shutdown_rx.clone());
        let outbox_bus = bus.clone();
        let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
        let connect_timeout = cache.client().connect_timeout();
        let thread = ControlThread::start().map_err(|e| format!("starting the invalidation listener's thread: {e}"))?;
        background.push(thread.handle.spawn(async move {
            let listeners = Listeners {
                forget: |code: &str| r.forget_locally(code),
                forget_keys: || k.clear(),
                forget_all: || {
                    r.l1.clear();
                    k.clear();
                },
                trust_until: |until| {
                    r.l1.trust_until(until);
                },
                distrust: || r.l1.distrust(),
            };
            bus.listen(listeners, subscribed_tx, rx).await
        }));
        {
            // On the listener's thread too: a read that waits behind an overloaded request path
            // for longer than the outbox keeps its rows makes L1 start over.
            let outbox = db::open_outbox_reader(&config.db.url, config.db.acquire_timeout, config.db.busy_timeout)
                .await
                .map(DbOutbox)
                .map_err(|e| format!("opening database {shown_url} for the outbox reader: {e}"))?;
            let (r, b, rx) = (resolver.clone(), outbox_bus, shutdown_rx.clone());
            background.push(thread.handle.spawn(async move {
                b.watch_outbox(
                    &outbox,
                    |code: &str| r.forget_locally(code),
                    || r.l1.clear(),
                    |until| {
                        r.l1.trust_until(until);
                    },
                    rx,
                )
                .await
            }));
        }
        control = Some(thread);
        // Subscribe before serving: the first subscription clears L1 (bumping every epoch), and
        // doing that under traffic would split in-progress single-flights in two; and L1 is
        // trusted once the first ping has come back. Bounded: an unreachable Redis does not hold
        // startup back (L1 then waits for it).
        let _ = tokio::time::timeout(connect_timeout, subscribed).await;
    }
    let code_length = config.links.code_length;
    let new_code: crate::db::writer::NewCode = Arc::new(move || crate::links::code::generate(code_length));
    let (writer, writer_task) =
        Writer::spawn(writer_conn, resolver.clone(), new_code, config.db.write_batch_max, shutdown_rx.clone());
    background.push(writer_task);
    // SQLite's file (its checks in /health and its checkpointer); none on PostgreSQL.
    let db_file = match read_pool.backend() {
        db::Backend::Sqlite => {
            db::connect_options(&config.db.url, config.db.busy_timeout)?.get_filename().to_path_buf()
        }
        db::Backend::Postgres => std::path::PathBuf::new(),
    };
    if !db_file.as_os_str().is_empty() && !db_file.to_string_lossy().starts_with(':') {
        let (url, busy, rx) = (config.db.url.clone(), config.db.busy_timeout, shutdown_rx.clone());
        background.push(tokio::spawn(db::run_checkpointer(url, busy, Duration::from_millis(500), rx)));
    }

    let clicks = Arc::new(Clicks::new(
        config.clicks.counting,
        config.clicks.bot_filter.then_some(config.clicks.bot_patterns.as_slice()),
        config.clicks.flush_interval,
        config.clicks.flush_max_pending,
    ));
    {
        let (c, w, rx) = (clicks.clone(), writer.clone(), shutdown_rx.clone());
        background.push(tokio::spawn(async move { c.run_flusher(w, rx).await }));
    }

    let inherited_count = inherited.len();
    let listeners = if inherited.is_empty() {
        vec![bind(config.http.listen_addr, config.http.listen_backlog)
            .map_err(|e| format!("binding LISTEN_ADDR={}: {e}", config.http.listen_addr))?]
    } else {
        let mut listeners = Vec::with_capacity(inherited.len());
        for socket in inherited {
            socket.listener.set_nonblocking(true)?;
            listeners.push(TcpListener::from_std(socket.listener)?);
        }
        listeners
    };
    let addrs = listeners.iter().map(|l| l.local_addr()).collect::<Result<Vec<_>, _>>()?;
    let addr = addrs[0];
    let db_inode = std::fs::metadata(&db_file).ok().map(|m| std::os::unix::fs::MetadataExt::ino(&m));
    let metrics = Arc::new(Metrics::new());
    {
        let (m, mut rx) = (metrics.clone(), shutdown_rx.clone());
        background.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(5)) => m.upkeep(),
                    _ = rx.changed() => return,
                }
            }
        }));
    }
    let warm_top_n = config.cache.warm_top_n;
    let limiter = Arc::new(RateLimiter::new(
        resolver.redis.as_ref().map(|c| c.client().clone()),
        &config.redis.key_prefix,
        config.limits.trusted_proxies.clone(),
    ));
    let permanent_cache_control =
        HeaderValue::from_str(&format!("private, max-age={}", config.links.permanent_redirect_max_age))?;
    let own_origin = crate::links::target::OwnOrigin::new(&config.http.public_base_url, addr);
    let state = AppState::new(Inner {
        config,
        db: read_pool,
        resolver,
        writer,
        clicks,
        limiter,
        key_cache,
        redis_info: Default::default(),
        metrics,
        connections: Default::default(),
        db_file,
        db_inode,
        started: std::time::Instant::now(),
        permanent_cache_control,
        own_origin,
    });
    let surface = http::Surface::new(state.clone());
    if warm_top_n > 0 {
        let s = state.clone();
        tokio::spawn(async move { warm_caches(&s, warm_top_n).await });
    }
    Ok(Application {
        addrs,
        inherited: inherited_count,
        listeners,
        surface,
        state,
        shutdown_tx,
        background,
        _control: control,
    })
}

/// Loads the most-clicked links through the normal read-through path (so every guard applies),
/// 16 at a time, giving up after 30 s. Runs in the background: readiness never waits for it.
async fn warm_caches(state: &AppState, top_n: u32) {
    let started = std::time::Instant::now();
    let codes = match db::links::find_most_clicked_codes(&state.db, top_n).await {
        Ok(c) => c,
        Err(e) => return tracing::warn!(error = %e, "cache warm-up skipped"),
    };
    let n = codes.len();
    let work = async {
        for chunk in codes.chunks(16) {
            let mut set = tokio::task::JoinSet::new();
            for code in chunk {
                let (s, code) = (state.clone(), code.clone());
                set.spawn(async move {
                    let _ = s.resolver.resolve(&code).await;
                });
            }
            while set.join_next().await.is_some() {}
        }
    };
    if tokio::time::timeout(Duration::from_secs(30), work).await.is_err() {
        tracing::warn!(cache.warm_links = n, "cache warm-up stopped after 30 s");
    } else {
        tracing::info!(cache.warm_links = n, cache.warm_ms = started.elapsed().as_millis() as u64, "caches warmed");
    }
}

fn bind(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

fn tune(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(60))
        .with_interval(Duration::from_secs(10))
        .with_retries(6);
    let _ = socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive);
}

impl Application {
    /// The bound address (the real port when `LISTEN_ADDR` asked for port 0); the first
    /// inherited socket's when there are several.
    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// Every address served.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// How many of the listening sockets were inherited (0: `LISTEN_ADDR` was bound here).
    pub fn inherited(&self) -> usize {
        self.inherited
    }

    /// The shared state (tests read counters through it).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `signal` completes, then drains: stops accepting, lets in-flight requests
    /// finish within `SHUTDOWN_TIMEOUT_SECS`, commits queued writes, stops background tasks and
    /// closes the pools.
    pub async fn run_until(self, signal: impl Future<Output = ()> + Send) -> std::io::Result<()> {
        // `_control` too: the listener runs on it until the background tasks below have ended.
        let Application { listeners, surface, state, shutdown_tx, background, _control, .. } = self;
        let cfg = &state.config;
        let direct = surface.direct_redirects();
        let server = crate::net::Server::with_direct(
            move |peer| surface.connection_service(peer),
            direct,
            crate::net::Timeouts { head: cfg.http.header_read_timeout, idle: cfg.http.keepalive_timeout },
            state.connections.clone(),
        );
        let mut fd_warnings = FdWarnings::default();
        tokio::pin!(signal);
        // Every listener is polled in turn, starting one further each time.
        let mut next = 0usize;
        let accept = |next: &mut usize| {
            let listeners = &listeners;
            let start = *next;
            *next = next.wrapping_add(1);
            std::future::poll_fn(move |cx| {
                for i in 0..listeners.len() {
                    let l = &listeners[(start + i) % listeners.len()];
                    if let std::task::Poll::Ready(r) = l.poll_accept(cx) {
                        return std::task::Poll::Ready(r);
                    }
                }
                std::task::Poll::Pending
            })
        };
        loop {
            tokio::select! {
                accepted = accept(&mut next) => match accepted {
                    Ok((stream, peer)) => {
                        tune(&stream);
                        server.spawn(stream, peer);
                    }
                    Err(e) => fd_warnings.on_accept_error(e).await,
                },
                _ = &mut signal => break,
            }
        }
        // Connections learn of the shutdown first: from here on every answer says
        // `Connection: close`. An inherited socket stays open in whoever else holds it (systemd,
        // other processes): connections keep arriving in its backlog for the next process.
        server.begin_shutdown();
        drop(listeners);
        tracing::info!("shutdown: stopped accepting, draining connections");
        if !server.shutdown(cfg.http.shutdown_timeout).await {
            tracing::warn!(
                shutdown.timeout_s = cfg.http.shutdown_timeout.as_secs(),
                "in-flight requests did not finish in time; closing them"
            );
        }
        // Clicks counted by the drained requests are written before the writer stops.
        for attempt in 1..=5 {
            if state.clicks.flush(&state.writer).await {
                break;
            }
            tracing::warn!(attempt, "final click flush failed; retrying");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let _ = shutdown_tx.send(true);
        for task in background {
            if tokio::time::timeout(cfg.http.shutdown_timeout, task).await.is_err() {
                tracing::warn!("a background task did not stop in time");
            }
        }
        state.db.close().await;
        tracing::info!("shut down gracefully");
        Ok(())
    }
}

/// Accept errors: running out of file descriptors is logged clearly (at most every 5 s, with a
/// count) and paced, instead of spinning or crashing; other errors are per-connection noise.
#[derive(Default)]
struct FdWarnings {
    last: Option<std::time::Instant>,
    suppressed: u64,
}

impl FdWarnings {
    async fn on_accept_error(&mut self, e: std::io::Error) {
        // EMFILE (24), ENFILE (23), ENOBUFS (105), ENOMEM (12) on Linux.
        let exhausted = matches!(e.raw_os_error(), Some(24 | 23 | 105 | 12));
        if !exhausted {
            tracing::debug!(error = %e, "accept failed");
            return;
        }
        let due = self.last.is_none_or(|t| t.elapsed() >= Duration::from_secs(5));
        if due {
            tracing::error!(
                error = %e,
                accept.suppressed = self.suppressed,
                "out of file descriptors: new connections wait in the backlog; raise LimitNOFILE / ulimit -n"
            );
            self.last = Some(std::time::Instant::now());
            self.suppressed = 0;
        } else {
            self.suppressed += 1;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
