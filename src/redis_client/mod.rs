//! The Redis client: a deadpool-redis pool, a shared multiplexed connection for the request
//! path, time budgets, and the circuit breaker. It knows how to reach Redis and when to trust
//! it, not what is stored there: the link cache (`cache::redis`), the invalidation bus
//! (`invalidation`) and the rate limiter are its users, and [`names`] is the one place for every
//! key and channel name.
//!
//! # Why a shared connection
//! A pool checkout runs deadpool-redis's recycle check (`UNWATCH` + `PING`), which would double
//! the round trips of every redirect. The request path instead clones one multiplexed
//! connection, checked out of the pool and held; redis-rs pipelines concurrent commands over it.
//! A call that times out or fails on I/O discards that connection (redis-rs does not reconnect
//! after a timeout, and a paused Redis keeps the TCP connection open), and the supervisor checks
//! a new one out. Requests never wait on a connect: without a connection they treat Redis as a
//! miss.
//!
//! # Trust
//! Redis is read only while the breaker is [`Breaker::Closed`]: it answers (`up`) and no write
//! its readers rely on may be missing from it. A user that could not apply such a write (an
//! invalidation) calls [`RedisClient::distrust`] before it answers; the supervisor then calls
//! its [`Restore`] (the invalidation bus replays the queued invalidations) once Redis answers
//! again, and only then trusts Redis again (`Replaying` until then).

pub mod names;

use std::{
    future::Future,
    sync::{
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
        Arc, Mutex, RwLock,
    },
    time::{Duration, Instant},
};

use deadpool_redis::{Connection, Pool, Runtime};
use futures_util::future::BoxFuture;
use metrics::Label;
use redis::{aio::MultiplexedConnection, RedisResult};
use serde::Serialize;
use tokio::sync::{watch, Notify};

use crate::{config, observe::Metrics};
pub use names::Names;

/// The breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Breaker {
    /// Redis answers and is trusted.
    Closed,
    /// Redis answers, but writes its readers rely on are still being re-applied.
    Replaying,
    /// Redis does not answer (or failed for a whole budget): not asked until a probe succeeds.
    Open,
}

impl Breaker {
    /// `closed`, `replaying` or `open` (health output).
    pub fn as_str(self) -> &'static str {
        match self {
            Breaker::Closed => "closed",
            Breaker::Replaying => "replaying",
            Breaker::Open => "open",
        }
    }

    /// The `shortener_redis_breaker_state` gauge: 0 closed, 1 replaying, 2 open.
    fn gauge(self) -> f64 {
        match self {
            Breaker::Closed => 0.0,
            Breaker::Replaying => 1.0,
            Breaker::Open => 2.0,
        }
    }
}

/// What the supervisor runs before it trusts Redis again after an outage: re-applies whatever
/// could not reach Redis meanwhile. Returns how many writes it re-applied.
pub trait Restore: Send + Sync {
    /// Re-applies the missing writes; an error leaves Redis untrusted (retried at the next tick).
    fn restore(&self) -> BoxFuture<'_, Result<u64, String>>;
}

/// Counters of the client.
#[derive(Default, Debug)]
pub struct ClientStats {
    /// Calls that failed with an error.
    pub errors: AtomicU64,
    /// Calls that ran out of their budget.
    pub timeouts: AtomicU64,
    /// Times the breaker opened.
    pub breaker_opened: AtomicU64,
}

/// The client. One per process, shared through `Arc`.
pub struct RedisClient {
    pool: Pool,
    shared: RwLock<Option<Connection>>,
    names: Names,
    timeout: Duration,
    connect_timeout: Duration,
    probe_interval: Duration,
    threshold: u32,
    up: AtomicBool,
    failures: AtomicU32,
    born: Instant,
    last_success_ms: AtomicU64,
    rtt_ewma_us: AtomicU64,
    dirty_seq: AtomicU64,
    clean_seq: AtomicU64,
    wake: Notify,
    last_change: Mutex<Instant>,
    /// Counters, for `/health` and `/metrics`.
    pub stats: ClientStats,
}

impl RedisClient {
    /// Builds the pool; connects nothing yet (the supervisor does).
    pub fn new(s: &config::Redis) -> Result<Arc<Self>, String> {
        let pool = deadpool_redis::Config::from_url(s.url.clone())
            .builder()
            .map_err(|e| format!("REDIS_URL: {e}"))?
            .max_size(s.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(s.connect_timeout))
            .create_timeout(Some(s.connect_timeout))
            .recycle_timeout(Some(s.connect_timeout))
            .build()
            .map_err(|e| format!("REDIS_URL: {e}"))?;
        Ok(Arc::new(RedisClient {
            pool,
            shared: RwLock::new(None),
            names: Names::new(&s.key_prefix),
            timeout: s.timeout,
            connect_timeout: s.connect_timeout,
            probe_interval: s.probe_interval,
            threshold: s.breaker_threshold,
            up: AtomicBool::new(false),
            failures: AtomicU32::new(0),
            born: Instant::now(),
            last_success_ms: AtomicU64::new(0),
            rtt_ewma_us: AtomicU64::new(0),
            // Start untrusted: writes of an earlier run may be queued.
            dirty_seq: AtomicU64::new(1),
            clean_seq: AtomicU64::new(0),
            wake: Notify::new(),
            last_change: Mutex::new(Instant::now()),
            stats: ClientStats::default(),
        }))
    }

    /// The names of every key and channel.
    pub fn names(&self) -> &Names {
        &self.names
    }

    /// The budget to open a connection (`REDIS_CONNECT_TIMEOUT_MS`).
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// How often the supervisor probes, and listeners retry.
    pub fn probe_interval(&self) -> Duration {
        self.probe_interval
    }

    /// The pool, for occasional commands (health, INFO). Not for the request path.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Whether Redis may be read and written back to now.
    #[inline]
    pub fn readable(&self) -> bool {
        self.up.load(Ordering::Acquire)
            && self.dirty_seq.load(Ordering::SeqCst) == self.clean_seq.load(Ordering::SeqCst)
    }

    /// Whether Redis answers, trusted or not.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// The breaker's state.
    pub fn breaker(&self) -> Breaker {
        if !self.up.load(Ordering::Acquire) {
            Breaker::Open
        } else if !self.readable() {
            Breaker::Replaying
        } else {
            Breaker::Closed
        }
    }

    /// Stops trusting Redis until the supervisor's [`Restore`] has run: a write that readers
    /// rely on could not be applied.
    pub fn distrust(&self) {
        self.dirty_seq.fetch_add(1, Ordering::SeqCst);
        self.wake.notify_one();
    }

    fn conn(&self) -> Option<MultiplexedConnection> {
        let guard = self.shared.read().unwrap_or_else(|e| e.into_inner());
        guard.as_ref().map(|c| MultiplexedConnection::clone(c))
    }

    fn discard_connection(&self) {
        let old = self.shared.write().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(c) = old {
            // Out of the pool for good: the pool opens a fresh one on the next checkout.
            drop(Connection::take(c));
        }
        self.wake.notify_one();
    }

    /// Milliseconds since this client was built (a cheap, monotonic clock for the breaker).
    fn clock_ms(&self) -> u64 {
        self.born.elapsed().as_millis() as u64
    }

    /// The budget of the next call: `REDIS_TIMEOUT_MS`, or four times the recent round trip
    /// when this process is so loaded that replies queue behind its own work (capped at twenty
    /// times the configured budget). A paused Redis produces no replies, so it cannot stretch
    /// the budget: the average only moves on successes.
    fn budget(&self) -> Duration {
        let recent = Duration::from_micros(self.rtt_ewma_us.load(Ordering::Relaxed) * 4);
        recent.clamp(self.timeout, self.timeout * 20)
    }

    fn on_success(&self, rtt: Duration) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
        let now = self.clock_ms();
        if self.last_success_ms.load(Ordering::Relaxed) != now {
            self.last_success_ms.store(now, Ordering::Relaxed);
        }
        let old = self.rtt_ewma_us.load(Ordering::Relaxed);
        let sample = rtt.as_micros() as u64;
        let new = if sample > old { old + (sample - old) / 8 } else { old - (old - sample) / 8 };
        if new != old {
            self.rtt_ewma_us.store(new, Ordering::Relaxed);
        }
    }

    fn on_failure(&self, timed_out: bool, broken: bool, detail: &dyn std::fmt::Display) {
        if timed_out {
            self.stats.timeouts.fetch_add(1, Ordering::Relaxed);
        } else {
            self.stats.errors.fetch_add(1, Ordering::Relaxed);
        }
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        // Open only when calls keep failing *and* nothing succeeded for a whole budget: on a
        // saturated process a few calls can time out in a row while others still come back,
        // and sending that load to SQLite would only make it worse.
        let silent_for = self.clock_ms().saturating_sub(self.last_success_ms.load(Ordering::Relaxed));
        let dead = broken || silent_for >= self.budget().as_millis() as u64;
        let opened = n >= self.threshold && dead && self.up.swap(false, Ordering::AcqRel);
        if opened {
            self.stats.breaker_opened.fetch_add(1, Ordering::Relaxed);
            *self.last_change.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
            tracing::warn!(redis.failures = n, redis.silent_ms = silent_for, error = %detail, "redis breaker open: serving from L1 and SQLite");
        }
        // A single timeout on a multiplexed connection does not desynchronise it (the late reply
        // is matched to its dropped request and discarded), so the connection is kept through
        // isolated slow calls. It is rebuilt when it is broken, or when the breaker opens: a
        // paused Redis keeps the socket open, and redis-rs would wait on it forever.
        if broken || opened {
            self.discard_connection();
        }
    }

    /// Runs one call on the shared connection under the time budget, with breaker accounting.
    /// `None` on any trouble.
    pub async fn run<T, F, Fut>(&self, call: F) -> Option<T>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        self.run_within(Duration::ZERO, call).await
    }

    /// [`RedisClient::run`] with a budget of at least `floor`: for calls whose answer is worth
    /// more than their latency (the rate limiter's: a check that times out may still have been
    /// counted in Redis, and is then decided again from local memory).
    pub async fn run_within<T, F, Fut>(&self, floor: Duration, call: F) -> Option<T>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let conn = self.conn()?;
        let started = Instant::now();
        match tokio::time::timeout(self.budget().max(floor), call(conn)).await {
            Ok(Ok(v)) => {
                self.on_success(started.elapsed());
                Some(v)
            }
            Ok(Err(e)) => {
                let broken = e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error();
                self.on_failure(false, broken, &e);
                None
            }
            Err(_) => {
                self.on_failure(true, false, &"timed out");
                None
            }
        }
    }

    /// Keeps a connection checked out, probes while unhealthy, runs `restore` before trusting
    /// Redis again, and closes the breaker. Runs until `shutdown` changes.
    pub async fn supervise(&self, restore: Arc<dyn Restore>, mut shutdown: watch::Receiver<bool>) {
        loop {
            self.tick(&*restore).await;
            tokio::select! {
                _ = self.wake.notified() => {
                    // A burst of failures wakes us many times; pace the reconnects.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                _ = tokio::time::sleep(self.probe_interval) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// One supervisor step; also run once at startup so a healthy Redis is trusted at once.
    pub async fn tick(&self, restore: &dyn Restore) {
        if self.conn().is_none() {
            match tokio::time::timeout(self.connect_timeout, self.pool.get()).await {
                Ok(Ok(c)) => {
                    *self.shared.write().unwrap_or_else(|e| e.into_inner()) = Some(c);
                }
                Ok(Err(e)) => return self.note_down(&e),
                Err(_) => return self.note_down(&"connect timed out"),
            }
        }
        if self.readable() {
            // A heartbeat, so that a Redis that died while idle is noticed without traffic
            // (readiness and rate limiting then report and act on it at once).
            let alive: Option<String> =
                self.run(|mut c| async move { redis::cmd("PING").query_async(&mut c).await }).await;
            if alive.is_none() && self.conn().is_none() {
                self.note_down(&"heartbeat failed");
            }
            return;
        }
        let pong: Option<String> = self.run(|mut c| async move { redis::cmd("PING").query_async(&mut c).await }).await;
        if pong.is_none() {
            return;
        }
        let target = self.dirty_seq.load(Ordering::SeqCst);
        match restore.restore().await {
            Ok(n) => {
                self.clean_seq.store(target, Ordering::SeqCst);
                self.failures.store(0, Ordering::Relaxed);
                if !self.up.swap(true, Ordering::AcqRel) {
                    let down_for = self.last_change.lock().unwrap_or_else(|e| e.into_inner()).elapsed();
                    *self.last_change.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
                    tracing::info!(
                        redis.replayed = n,
                        redis.down_ms = down_for.as_millis() as u64,
                        "redis breaker closed: redis trusted again"
                    );
                } else if n > 0 {
                    tracing::info!(redis.replayed = n, "redis invalidations replayed");
                }
            }
            Err(e) => tracing::warn!(error = %e, "redis invalidation replay failed; will retry"),
        }
    }

    fn note_down(&self, e: &dyn std::fmt::Display) {
        if self.up.swap(false, Ordering::AcqRel) {
            self.stats.breaker_opened.fetch_add(1, Ordering::Relaxed);
            *self.last_change.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
            tracing::warn!(error = %e, "redis unreachable: breaker open, serving from L1 and SQLite");
        } else {
            tracing::debug!(error = %e, "redis still unreachable");
        }
    }

    /// Copies the client's counters and gauges into `m`.
    pub fn export_metrics(&self, m: &Metrics) {
        let s = &self.stats;
        m.copy_counter("shortener_redis_errors_total", vec![], &s.errors);
        m.copy_counter("shortener_redis_timeouts_total", vec![], &s.timeouts);
        m.copy_counter("shortener_redis_breaker_opened_total", vec![], &s.breaker_opened);
        m.gauge("shortener_redis_breaker_state", vec![]).set(self.breaker().gauge());
        let status = self.pool().status();
        m.gauge("shortener_redis_pool_connections", vec![Label::new("state", "open")]).set(status.size as f64);
        m.gauge("shortener_redis_pool_connections", vec![Label::new("state", "idle")]).set(status.available as f64);
        m.gauge("shortener_redis_pool_waiting", vec![]).set(status.waiting as f64);
    }

    /// A point-in-time view for `/health/redis`.
    pub async fn snapshot(&self) -> RedisSnapshot {
        let started = Instant::now();
        let ping = match tokio::time::timeout(self.connect_timeout, self.pool.get()).await {
            Ok(Ok(mut c)) => redis::cmd("PING").query_async::<String>(&mut *c).await.is_ok(),
            _ => false,
        };
        let status = self.pool.status();
        RedisSnapshot {
            reachable: ping,
            ping_ms: ping.then(|| started.elapsed().as_secs_f64() * 1000.0),
            breaker: self.breaker().as_str(),
            pool_size: status.size,
            pool_available: status.available,
            pool_waiting: status.waiting,
            errors: self.stats.errors.load(Ordering::Relaxed),
            timeouts: self.stats.timeouts.load(Ordering::Relaxed),
            breaker_opened: self.stats.breaker_opened.load(Ordering::Relaxed),
        }
    }

    /// Deletes every key of this service's namespace (load tests and operators' cold starts).
    pub async fn flush_namespace(&self) -> RedisResult<u64> {
        let mut c = self.pool.get().await.map_err(|e| redis::RedisError::from(std::io::Error::other(e.to_string())))?;
        let mut cursor: u64 = 0;
        let mut deleted = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(self.names.everything())
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut *c)
                .await?;
            if !keys.is_empty() {
                deleted += redis::cmd("UNLINK").arg(&keys).query_async::<u64>(&mut *c).await?;
            }
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
    }
}

/// What `/health/redis` shows of the client.
#[derive(Debug, Serialize)]
pub struct RedisSnapshot {
    /// A PING through the pool answered.
    pub reachable: bool,
    /// That PING's round trip.
    pub ping_ms: Option<f64>,
    /// `closed`, `open` or `replaying`.
    pub breaker: &'static str,
    /// Connections open in the pool.
    pub pool_size: usize,
    /// Idle connections in the pool.
    pub pool_available: usize,
    /// Callers waiting for a connection.
    pub pool_waiting: usize,
    /// Calls that failed.
    pub errors: u64,
    /// Calls that ran out of budget.
    pub timeouts: u64,
    /// Times the breaker opened.
    pub breaker_opened: u64,
}
