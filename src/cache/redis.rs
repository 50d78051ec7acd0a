//! The Redis tier: a deadpool-redis pool, a shared multiplexed connection for the request path,
//! time budgets, a circuit breaker, the stale-set guard's Lua scripts, and the replay of
//! invalidations that could not reach Redis.
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
//! # Batching
//! Reads, fill leases and write-backs each go through a [`Batcher`]: everything waiting goes out
//! as one `MGET` or one script call over many codes (up to 512 a call, 4 calls in flight). Under
//! load a Redis hit costs a small fraction of a command; idle, a call carries one code and goes
//! out at once. A failed or timed-out call is a miss (or "unavailable") for every code in it.
//!
//! # Trust
//! Redis is read only while it is `up` (breaker closed) and no invalidation may be missing from
//! it (`dirty_seq == clean_seq`). A failed invalidation bumps `dirty_seq` before the API answers;
//! the supervisor replays every queued invalidation from SQLite once Redis answers again, and only
//! then sets `clean_seq` to the value it saw before the replay and closes the breaker.
//!
//! # The stale-set guard
//! A fill takes a lease (a random token under `lease:{code}`) in the same script that re-checks
//! the value, reads SQLite, then writes the value only if its lease is still there (both scripts
//! take many codes per call, and each code is checked on its own). An
//! invalidation deletes the value and the lease in one `DEL`, so a fill that started before the
//! change cannot land after it, whatever order the commands reach Redis in.

use std::{
    future::Future,
    sync::{
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
        Arc, Mutex, OnceLock, RwLock, Weak,
    },
    time::{Duration, Instant},
};

use deadpool_redis::{Connection, Pool, Runtime};
use futures_util::future::BoxFuture;
use metrics::Label;
use redis::{aio::MultiplexedConnection, RedisResult, Script};
use serde::Serialize;
use tokio::sync::{watch, Notify};

use super::Resolved;
use crate::{batch::Batcher, config::Config};

/// Where the invalidations that may be missing from Redis are queued: the database's outbox
/// (`cache_invalidations`). The tier reads it to replay them before Redis is trusted again; the
/// database behind it is wired in by `startup`, so the tier knows no SQL.
pub trait Outbox: Send + Sync {
    /// Up to `limit` queued invalidations after row `after`, as (row id, code), in id order.
    fn queued_after(&self, after: i64, limit: i64) -> BoxFuture<'_, Result<Vec<(i64, String)>, String>>;
}

/// How long a fill's lease lives: a fill slower than this simply does not write back.
const LEASE_MS: u64 = 10_000;

/// Takes fill leases for many codes at once. KEYS: value and lease key of each code, in pairs;
/// ARGV: each code's token, then the lease time. For each code: its value if there is one (then
/// no lease is taken), otherwise `false` after setting the lease.
const LEASE_SCRIPT: &str = r"
local out = {}
local ttl = ARGV[#ARGV]
for i = 1, #KEYS, 2 do
  local v = redis.call('GET', KEYS[i])
  if v then
    out[#out + 1] = v
  else
    redis.call('SET', KEYS[i + 1], ARGV[(i + 1) / 2], 'PX', ttl)
    out[#out + 1] = false
  end
end
return out
";

/// Writes many fills back, each only if its lease still holds. KEYS: value and lease key of
/// each code, in pairs; ARGV: token, value and time to live (0 = none) of each code, in threes.
/// Returns 1 (landed) or 0 (lease gone: the code changed meanwhile) for each code.
const FILL_SCRIPT: &str = r"
local out = {}
for i = 1, #KEYS / 2 do
  local key, lease = KEYS[2 * i - 1], KEYS[2 * i]
  local token, value, ttl = ARGV[3 * i - 2], ARGV[3 * i - 1], ARGV[3 * i]
  if redis.call('GET', lease) == token then
    redis.call('DEL', lease)
    if ttl == '0' then
      redis.call('SET', key, value)
    else
      redis.call('SET', key, value, 'PX', ttl)
    end
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
";

/// Most codes one `MGET`, lease or fill script call carries.
const BATCH_MAX: usize = 512;

/// A fill to write back: code, lease token, encoded value, time to live in ms (0 = none).
type FillItem = (String, String, String, u64);

/// A key's value, or `None` when the call failed.
type GetOutcome = Option<Option<String>>;

/// The counter on which running instances acknowledge the key revocation announced with `nonce`.
pub fn revocation_acks_key(prefix: &str, nonce: &str) -> String {
    format!("{prefix}keys:ack:{nonce}")
}

/// The answers of a batched call, one per item: `None` for every item when the call failed (or
/// did not answer for each item).
fn per_item<T>(got: Option<Vec<T>>, n: usize) -> Vec<Option<T>> {
    match got {
        Some(values) if values.len() == n => values.into_iter().map(Some).collect(),
        _ => std::iter::repeat_with(|| None).take(n).collect(),
    }
}

/// Counters of the Redis tier.
#[derive(Default, Debug)]
pub struct RedisStats {
    /// Calls that failed with an error.
    pub errors: AtomicU64,
    /// Calls that ran out of their budget.
    pub timeouts: AtomicU64,
    /// Times the breaker opened.
    pub breaker_opened: AtomicU64,
    /// Write-backs refused because the code changed meanwhile (the guard at work).
    pub fills_rejected: AtomicU64,
    /// Write-backs that landed.
    pub fills: AtomicU64,
    /// Invalidations replayed after an outage.
    pub replayed: AtomicU64,
}

/// Outcome of a read.
pub enum Lookup {
    /// Redis holds an answer.
    Hit(Resolved),
    /// Redis holds nothing for the code.
    Miss,
    /// Redis is not to be asked (breaker open, untrusted, no connection) or failed.
    Unavailable,
}

/// Outcome of taking a fill lease.
pub enum Lease {
    /// The value appeared meanwhile.
    Hit(Resolved),
    /// The lease token to present at fill time.
    Token(String),
    /// Redis is not usable.
    Unavailable,
}

/// The Redis tier. One per process, shared through `Arc`.
pub struct RedisTier {
    pool: Pool,
    shared: RwLock<Option<Connection>>,
    prefix: String,
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
    acked: Mutex<Vec<i64>>,
    wake: Notify,
    lease_script: Script,
    fill_script: Script,
    last_change: Mutex<Instant>,
    /// This tier, for the batching task (which must not keep it alive).
    me: Weak<RedisTier>,
    /// Coalesces concurrent reads into `MGET`s; started on first use.
    gets: OnceLock<Batcher<String, GetOutcome>>,
    /// Coalesces concurrent lease requests (code, token) into one script call.
    leases: OnceLock<Batcher<(String, String), GetOutcome>>,
    /// Coalesces concurrent write-backs into one script call; `None` when the call failed.
    fills: OnceLock<Batcher<FillItem, Option<bool>>>,
    /// Counters, for `/health` and `/metrics`.
    pub stats: RedisStats,
}

impl RedisTier {
    /// Builds the pool; connects nothing yet (the supervisor does).
    pub fn new(cfg: &Config) -> Result<Arc<Self>, String> {
        let pool = deadpool_redis::Config::from_url(cfg.redis_url.clone())
            .builder()
            .map_err(|e| format!("REDIS_URL: {e}"))?
            .max_size(cfg.redis_pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(cfg.redis_connect_timeout))
            .create_timeout(Some(cfg.redis_connect_timeout))
            .recycle_timeout(Some(cfg.redis_connect_timeout))
            .build()
            .map_err(|e| format!("REDIS_URL: {e}"))?;
        Ok(Arc::new_cyclic(|me| RedisTier {
            me: me.clone(),
            gets: OnceLock::new(),
            leases: OnceLock::new(),
            fills: OnceLock::new(),
            pool,
            shared: RwLock::new(None),
            prefix: cfg.redis_key_prefix.clone(),
            timeout: cfg.redis_timeout,
            connect_timeout: cfg.redis_connect_timeout,
            probe_interval: cfg.redis_probe_interval,
            threshold: cfg.redis_breaker_threshold,
            up: AtomicBool::new(false),
            failures: AtomicU32::new(0),
            born: Instant::now(),
            last_success_ms: AtomicU64::new(0),
            rtt_ewma_us: AtomicU64::new(0),
            // Start untrusted: invalidations of an earlier run may be queued.
            dirty_seq: AtomicU64::new(1),
            clean_seq: AtomicU64::new(0),
            acked: Mutex::new(Vec::new()),
            wake: Notify::new(),
            lease_script: Script::new(LEASE_SCRIPT),
            fill_script: Script::new(FILL_SCRIPT),
            last_change: Mutex::new(Instant::now()),
            stats: RedisStats::default(),
        }))
    }

    /// The budget to open a connection (`REDIS_CONNECT_TIMEOUT_MS`).
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// The pool, for occasional commands (health, INFO). Not for the request path.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The key of a code's cached answer.
    pub fn link_key(&self, code: &str) -> String {
        format!("{}l:{code}", self.prefix)
    }

    fn lease_key(&self, code: &str) -> String {
        format!("{}lease:{code}", self.prefix)
    }

    /// Whether Redis may be read and written back to now.
    #[inline]
    pub fn readable(&self) -> bool {
        self.up.load(Ordering::Acquire)
            && self.dirty_seq.load(Ordering::SeqCst) == self.clean_seq.load(Ordering::SeqCst)
    }

    /// Breaker state for health output: `closed`, `open`, or `replaying` (up, but invalidations
    /// are still being applied).
    pub fn breaker_state(&self) -> &'static str {
        if !self.up.load(Ordering::Acquire) {
            "open"
        } else if !self.readable() {
            "replaying"
        } else {
            "closed"
        }
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

    /// Milliseconds since this tier was built (a cheap, monotonic clock for the breaker).
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

    /// [`RedisTier::run`] with a budget of at least `floor`: for calls whose answer is worth
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

    /// Whether the breaker is closed (Redis answers), whatever the invalidation state.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Reads a code's cached answer.
    pub async fn get(&self, code: &str) -> Lookup {
        if !self.readable() {
            return Lookup::Unavailable;
        }
        let got = self.get_batcher().call(self.link_key(code)).await.flatten();
        match got {
            None => Lookup::Unavailable,
            Some(None) => Lookup::Miss,
            Some(Some(raw)) => match Resolved::decode(code, &raw) {
                Some(v) => Lookup::Hit(v),
                None => Lookup::Miss,
            },
        }
    }

    /// Starts (on first use) a batching task that calls `run` on this tier; the task holds the
    /// tier weakly, so it ends with the tier.
    fn batcher<'a, I, O, F, Fut>(&self, cell: &'a OnceLock<Batcher<I, O>>, run: F) -> &'a Batcher<I, O>
    where
        I: Send + 'static,
        O: Send + 'static,
        F: Fn(Arc<RedisTier>, Vec<I>) -> Fut + Send + Sync + Copy + 'static,
        Fut: Future<Output = Vec<O>> + Send,
    {
        cell.get_or_init(|| {
            let me = self.me.clone();
            Batcher::spawn(BATCH_MAX, move |items: Vec<I>| {
                let tier = me.upgrade();
                async move {
                    match tier {
                        Some(tier) => run(tier, items).await,
                        None => Vec::new(),
                    }
                }
            })
        })
    }

    fn get_batcher(&self) -> &Batcher<String, GetOutcome> {
        self.batcher(&self.gets, |tier, keys| async move { tier.mget(keys).await })
    }

    /// One `MGET` for all `keys`: one command however many redirects are waiting on Redis (so
    /// at most one command per Redis hit, usually far fewer).
    async fn mget(&self, keys: Vec<String>) -> Vec<GetOutcome> {
        let n = keys.len();
        let got = self.run(|mut c| async move { redis::cmd("MGET").arg(&keys).query_async(&mut c).await }).await;
        per_item(got, n)
    }

    /// Re-checks the value and, if absent, takes a fill lease, in one round trip (shared with
    /// every other lease requested meanwhile). With the guard off (tests only) it only re-checks.
    pub async fn lease(&self, code: &str, guard: bool) -> Lease {
        if !self.readable() {
            return Lease::Unavailable;
        }
        let token = rand::random::<u64>().to_string();
        let got = if guard {
            let batcher = self.batcher(&self.leases, |tier, items| async move { tier.lease_many(items).await });
            batcher.call((code.to_string(), token.clone())).await.flatten()
        } else {
            self.get_batcher().call(self.link_key(code)).await.flatten()
        };
        match got {
            None => Lease::Unavailable,
            Some(Some(raw)) => Resolved::decode(code, &raw).map_or(Lease::Token(token), Lease::Hit),
            Some(None) => Lease::Token(token),
        }
    }

    async fn lease_many(&self, items: Vec<(String, String)>) -> Vec<GetOutcome> {
        let n = items.len();
        let mut inv = self.lease_script.prepare_invoke();
        for (code, _) in &items {
            inv.key(self.link_key(code)).key(self.lease_key(code));
        }
        for (_, token) in &items {
            inv.arg(token);
        }
        inv.arg(LEASE_MS);
        let got = self.run(|mut c| async move { inv.invoke_async(&mut c).await }).await;
        per_item(got, n)
    }

    /// Writes a fill back if its lease still holds (or unconditionally with the guard off), in
    /// one round trip shared with every other fill meanwhile. Negative answers expire after
    /// `negative_ttl`. Returns whether it landed.
    pub async fn fill(&self, code: &str, token: &str, value: &Resolved, negative_ttl: Duration, guard: bool) -> bool {
        if !self.readable() {
            return false;
        }
        let ttl_ms = match value {
            Resolved::Found(_) => 0,
            Resolved::Missing => negative_ttl.as_millis().max(1) as u64,
        };
        let landed = if guard {
            let batcher = self.batcher(&self.fills, |tier, items| async move { tier.fill_many(items).await });
            batcher.call((code.to_string(), token.to_string(), value.encode(), ttl_ms)).await.flatten()
        } else {
            let (key, encoded) = (self.link_key(code), value.encode());
            self.run(|mut c| async move {
                let mut cmd = redis::cmd("SET");
                cmd.arg(&key).arg(&encoded);
                if ttl_ms > 0 {
                    cmd.arg("PX").arg(ttl_ms);
                }
                cmd.query_async::<()>(&mut c).await
            })
            .await
            .map(|_| true)
        };
        match landed {
            Some(true) => {
                self.stats.fills.fetch_add(1, Ordering::Relaxed);
                true
            }
            Some(false) => {
                self.stats.fills_rejected.fetch_add(1, Ordering::Relaxed);
                false
            }
            None => false,
        }
    }

    async fn fill_many(&self, items: Vec<FillItem>) -> Vec<Option<bool>> {
        let n = items.len();
        let mut inv = self.fill_script.prepare_invoke();
        for (code, token, encoded, ttl_ms) in &items {
            inv.key(self.link_key(code)).key(self.lease_key(code));
            inv.arg(token).arg(encoded).arg(*ttl_ms);
        }
        let got: Option<Vec<i64>> = self.run(|mut c| async move { inv.invoke_async(&mut c).await }).await;
        per_item(got.map(|landed| landed.into_iter().map(|l| l == 1).collect()), n)
    }

    /// Deletes the cached answers (and any fill leases) of changed codes. `ids` are their rows
    /// in `cache_invalidations`; when the delete lands they are queued for removal, otherwise
    /// Redis is marked untrusted until the supervisor replayed them. Returns whether it landed.
    pub async fn invalidate(&self, codes: &[String], ids: &[i64]) -> bool {
        if codes.is_empty() {
            return true;
        }
        let landed = self.up.load(Ordering::Acquire) && self.delete_codes(codes).await;
        if landed {
            self.acked.lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(ids);
        } else {
            self.dirty_seq.fetch_add(1, Ordering::SeqCst);
            self.wake.notify_one();
        }
        landed
    }

    /// Deletes the codes' entries and leases, and announces the codes to the other instances
    /// (their L1 caches), in one round trip.
    async fn delete_codes(&self, codes: &[String]) -> bool {
        let mut pipe = redis::pipe();
        let del = pipe.cmd("DEL");
        for code in codes {
            del.arg(self.link_key(code)).arg(self.lease_key(code));
        }
        pipe.ignore().cmd("PUBLISH").arg(self.invalidation_channel()).arg(codes.join(" ")).ignore();
        self.run(|mut c| async move { pipe.query_async::<()>(&mut c).await }).await.is_some()
    }

    /// The pub/sub channel on which every change is announced.
    pub fn invalidation_channel(&self) -> String {
        format!("{}invalidate", self.prefix)
    }

    /// The pub/sub channel on which `shortener keys revoke` announces revocations.
    pub fn keys_channel(&self) -> String {
        format!("{}keys", self.prefix)
    }

    /// Keeps a subscription to the invalidation channel and calls `forget` for every code
    /// another instance (or this one) changed, and `forget_keys` when an API key was revoked.
    /// After every (re)subscription `forget_all` runs:
    /// announcements made while unsubscribed are lost, so L1 starts over (the L1 TTL bounds
    /// staleness for whatever slips through a broken subscription).
    pub async fn listen_for_invalidations(
        &self,
        url: &str,
        forget: impl Fn(&str),
        forget_keys: impl Fn(),
        forget_all: impl Fn(),
        subscribed: tokio::sync::oneshot::Sender<()>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut subscribed = Some(subscribed);
        use futures_util::StreamExt;
        let client = match redis::Client::open(url) {
            Ok(c) => c,
            Err(e) => return tracing::warn!(error = %e, "invalidation listener not started"),
        };
        let channel = self.invalidation_channel();
        let keys_channel = self.keys_channel();
        loop {
            if let Ok(Ok(mut ps)) = tokio::time::timeout(self.connect_timeout, client.get_async_pubsub()).await {
                if ps.subscribe(&[&channel, &keys_channel]).await.is_ok() {
                    forget_all();
                    if let Some(tx) = subscribed.take() {
                        let _ = tx.send(());
                    }
                    tracing::debug!(redis.channel = %channel, "subscribed to invalidations");
                    let mut messages = ps.on_message();
                    loop {
                        tokio::select! {
                            msg = messages.next() => match msg {
                                Some(msg) => {
                                    if msg.get_channel_name() == keys_channel {
                                        forget_keys();
                                        self.acknowledge_revocation(msg.get_payload::<String>().ok()).await;
                                    } else if let Ok(payload) = msg.get_payload::<String>() {
                                        payload.split(' ').filter(|c| !c.is_empty()).for_each(&forget);
                                    }
                                }
                                None => break,
                            },
                            _ = shutdown.changed() => return,
                        }
                    }
                    tracing::debug!("invalidation subscription lost; resubscribing");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(self.probe_interval) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Tells the `keys revoke` command that this instance has forgotten its verified keys: it
    /// waits for one acknowledgement per subscriber. The payload is `<name> <nonce>`.
    async fn acknowledge_revocation(&self, payload: Option<String>) {
        let Some(nonce) = payload.as_deref().and_then(|p| p.rsplit_once(' ')).map(|(_, n)| n.to_string()) else {
            return;
        };
        let key = revocation_acks_key(&self.prefix, &nonce);
        let acked: Option<()> = self
            .run(|mut c| async move {
                redis::pipe()
                    .cmd("INCR")
                    .arg(&key)
                    .ignore()
                    .cmd("EXPIRE")
                    .arg(&key)
                    .arg(60)
                    .ignore()
                    .query_async(&mut c)
                    .await
            })
            .await;
        if acked.is_none() {
            tracing::warn!("could not acknowledge a key revocation (it is applied here all the same)");
        }
    }

    /// Takes the ids of invalidations Redis acknowledged (the writer deletes their rows).
    pub fn take_acked(&self) -> Vec<i64> {
        std::mem::take(&mut *self.acked.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Puts back acknowledged ids whose cleanup transaction failed.
    pub fn requeue_acked(&self, ids: Vec<i64>) {
        self.acked.lock().unwrap_or_else(|e| e.into_inner()).extend(ids);
    }

    /// Keeps a connection checked out, probes while unhealthy, replays invalidations, and closes
    /// the breaker. Runs until `shutdown` changes.
    pub async fn supervise(&self, outbox: Arc<dyn Outbox>, mut shutdown: watch::Receiver<bool>) {
        loop {
            self.tick(&*outbox).await;
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
    pub async fn tick(&self, outbox: &dyn Outbox) {
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
        match self.replay(outbox).await {
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

    /// Re-applies every queued invalidation. Rows stay until the writer deletes them (it takes
    /// the acknowledged ids), so this walks them by id.
    async fn replay(&self, outbox: &dyn Outbox) -> Result<u64, String> {
        let mut after = 0i64;
        let mut total = 0u64;
        loop {
            let rows = outbox.queued_after(after, 500).await?;
            let Some(last) = rows.last() else { break };
            after = last.0;
            let codes: Vec<String> = rows.iter().map(|r| r.1.clone()).collect();
            if !self.delete_codes(&codes).await {
                return Err("redis delete failed".into());
            }
            total += codes.len() as u64;
            let ids: Vec<i64> = rows.iter().map(|r| r.0).collect();
            self.acked.lock().unwrap_or_else(|e| e.into_inner()).extend(ids);
        }
        self.stats.replayed.fetch_add(total, Ordering::Relaxed);
        Ok(total)
    }

    /// Copies the tier's counters and gauges into `m`.
    pub fn export_metrics(&self, m: &crate::observe::Metrics) {
        let s = &self.stats;
        m.copy_counter("shortener_redis_errors_total", vec![], &s.errors);
        m.copy_counter("shortener_redis_timeouts_total", vec![], &s.timeouts);
        m.copy_counter("shortener_redis_breaker_opened_total", vec![], &s.breaker_opened);
        m.copy_counter("shortener_redis_invalidations_replayed_total", vec![], &s.replayed);
        m.copy_counter("shortener_cache_write_backs_total", vec![Label::new("result", "landed")], &s.fills);
        m.copy_counter("shortener_cache_write_backs_total", vec![Label::new("result", "rejected")], &s.fills_rejected);
        let state_value = match self.breaker_state() {
            "closed" => 0.0,
            "replaying" => 1.0,
            _ => 2.0,
        };
        m.gauge("shortener_redis_breaker_state", vec![]).set(state_value);
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
            breaker: self.breaker_state(),
            pool_size: status.size,
            pool_available: status.available,
            pool_waiting: status.waiting,
            errors: self.stats.errors.load(Ordering::Relaxed),
            timeouts: self.stats.timeouts.load(Ordering::Relaxed),
            breaker_opened: self.stats.breaker_opened.load(Ordering::Relaxed),
            replayed: self.stats.replayed.load(Ordering::Relaxed),
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
                .arg(format!("{}*", self.prefix))
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

/// What `/health/redis` shows of the tier.
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
    /// Invalidations replayed after outages.
    pub replayed: u64,
}
