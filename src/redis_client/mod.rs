//! The Redis client: the topology (one node, a Sentinel-watched master, or a Cluster), a shared
//! connection for the request path, time budgets, and the circuit breaker. It knows how to
//! reach Redis and when to trust it, not what is stored there: the link cache (`cache::redis`),
//! the invalidation bus (`invalidation`) and the rate limiter are its users, and [`names`] is
//! the one place for every key and channel name. Users get a [`Conn`] whatever the topology.
//!
//! # Topologies
//! - **One node** (`REDIS_URL`): a deadpool-redis pool; the request path holds one of its
//!   multiplexed connections (below).
//! - **Sentinel** (`REDIS_SENTINELS`, `REDIS_SENTINEL_MASTER`): the supervisor asks the
//!   Sentinels, in order, for the master's address (`SENTINEL get-master-addr-by-name`),
//!   connects, and checks with `ROLE` that the node is a master. The client resolves the
//!   address itself rather than through redis-rs's Sentinel client because it must know when
//!   the address changes: that is a failover. A broken connection, or a `READONLY` answer (a
//!   demoted master), drops the connection, and the next one is made to whatever the Sentinels
//!   name then.
//! - **Cluster** (`REDIS_CLUSTER_NODES`): one redis-rs cluster connection, which routes each
//!   command by slot; redirections are followed and counted in [`Conn`]. Every script's keys
//!   share a slot, and batched reads are per slot ([`names`]).
//!
//! Sentinel and Cluster nodes are reached as `config::NodeAccess` says: `rediss://` with
//! `REDIS_TLS` (rustls, the system's CA roots), with `REDIS_PASSWORD` (and `REDIS_USERNAME`) on
//! the data nodes and `REDIS_SENTINEL_PASSWORD` on the Sentinels. One node's `REDIS_URL` carries
//! its own.
//!
//! # A failover is an outage
//! A promoted replica may lack the last writes of its master, among them invalidations whose
//! `DEL` was acknowledged. So in Sentinel and Cluster, any connection error, a changed master
//! address, or a replica seen promoted (`CLUSTER NODES`, at every supervisor tick) distrusts
//! Redis exactly as a failed invalidation does: nothing is read from Redis until the outbox
//! (which keeps every change for `invalidation::OUTBOX_RETAIN` after it landed) has been
//! replayed against the new topology. Those are counted in `shortener_redis_failovers_total`.
//! With one node the same holds for another process answering at the same address (its
//! `run_id` changed: a restart, or a managed failover behind a DNS name), though not counted as
//! a failover.
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

mod conn;
pub mod names;

use std::{
    collections::HashMap,
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
use redis::{
    aio::{MultiplexedConnection, PubSub},
    cluster::ClusterClient,
    cluster_routing::{RoutingInfo, SingleNodeRoutingInfo},
    ErrorKind, RedisError, RedisResult,
};
use serde::Serialize;
use tokio::sync::{watch, Notify};

use crate::{
    config::{self, Topology},
    observe::Metrics,
};
pub use conn::{ClusterConn, Conn};
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
    /// Failovers noticed (Sentinel: the master's address changed; Cluster: a replica became a
    /// master), each followed by a replay before Redis is trusted again.
    pub failovers: AtomicU64,
    /// `MOVED` answers followed (Cluster).
    pub redirections_moved: AtomicU64,
    /// `ASK` answers followed (Cluster).
    pub redirections_ask: AtomicU64,
}

/// How this client reaches Redis.
enum Target {
    Single { pool: Pool, url: String },
    Sentinel { sentinels: Vec<String>, master_name: String },
    Cluster { client: Box<ClusterClient>, nodes: Vec<String> },
}

/// The request path's connection: a pool's (held out of it) or one of our own.
enum Shared {
    Pooled(Connection),
    Own(Conn),
}

/// The client. One per process, shared through `Arc`.
pub struct RedisClient {
    target: Target,
    /// Credentials and TLS of Sentinel and Cluster nodes.
    nodes: config::NodeAccess,
    shared: RwLock<Option<Shared>>,
    /// Sentinel: the master's address at the last connection (`host:port`).
    master: Mutex<Option<String>>,
    /// One node: the `run_id` of the process at the last connection.
    run_id: Mutex<Option<String>>,
    /// Cluster: every node id at the last look, and whether it was a master serving slots.
    cluster_roles: Mutex<Option<HashMap<String, bool>>>,
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
    pub stats: Arc<ClientStats>,
}

impl RedisClient {
    /// Builds the pool (or the cluster client); connects nothing yet (the supervisor does).
    pub fn new(s: &config::Redis) -> Result<Arc<Self>, String> {
        let target = match &s.topology {
            Topology::Single => Target::Single {
                pool: deadpool_redis::Config::from_url(s.url.clone())
                    .builder()
                    .map_err(|e| format!("REDIS_URL: {e}"))?
                    .max_size(s.pool_size)
                    .runtime(Runtime::Tokio1)
                    .wait_timeout(Some(s.connect_timeout))
                    .create_timeout(Some(s.connect_timeout))
                    .recycle_timeout(Some(s.connect_timeout))
                    .build()
                    .map_err(|e| format!("REDIS_URL: {e}"))?,
                url: s.url.clone(),
            },
            Topology::Sentinel { sentinels, master } => {
                Target::Sentinel { sentinels: sentinels.clone(), master_name: master.clone() }
            }
            Topology::Cluster { nodes } => Target::Cluster {
                // No retries of its own: redirections are followed (and counted) by `Conn`, and
                // connection errors must reach the breaker (module doc).
                client: Box::new(
                    ClusterClient::builder(nodes.iter().map(|n| s.nodes.node_url(n)).collect::<Vec<_>>())
                        .retries(0)
                        .connection_timeout(s.connect_timeout)
                        .build()
                        .map_err(|e| format!("REDIS_CLUSTER_NODES: {e}"))?,
                ),
                nodes: nodes.clone(),
            },
        };
        let names = match s.topology {
            Topology::Cluster { .. } => Names::for_cluster(&s.key_prefix),
            _ => Names::new(&s.key_prefix),
        };
        Ok(Arc::new(RedisClient {
            target,
            nodes: s.nodes.clone(),
            shared: RwLock::new(None),
            master: Mutex::new(None),
            run_id: Mutex::new(None),
            cluster_roles: Mutex::new(None),
            names,
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
            stats: Arc::new(ClientStats::default()),
        }))
    }

    /// `single`, `sentinel` or `cluster`.
    pub fn topology(&self) -> &'static str {
        match self.target {
            Target::Single { .. } => "single",
            Target::Sentinel { .. } => "sentinel",
            Target::Cluster { .. } => "cluster",
        }
    }

    /// Whether this is a Redis Cluster (scripts then run once per slot: see `names`).
    pub fn is_cluster(&self) -> bool {
        matches!(self.target, Target::Cluster { .. })
    }

    /// Where Redis is, for logs (passwords hidden).
    pub fn describe(&self) -> String {
        match &self.target {
            Target::Single { url, .. } => config::redact_url(url),
            Target::Sentinel { sentinels, master_name } => {
                format!("sentinel master {master_name} via {}", sentinels.join(","))
            }
            Target::Cluster { nodes, .. } => format!("cluster via {}", nodes.join(",")),
        }
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

    /// The one-node pool (`REDIS_URL` only).
    fn pool(&self) -> Option<&Pool> {
        match &self.target {
            Target::Single { pool, .. } => Some(pool),
            _ => None,
        }
    }

    /// A connection for occasional commands (health, INFO): the pool's with one node, the
    /// request path's otherwise. Not for the request path.
    pub async fn side_connection(&self) -> RedisResult<Conn> {
        match self.pool() {
            Some(pool) => match tokio::time::timeout(self.connect_timeout, pool.get()).await {
                // Multiplexed: the clone stays usable after the pool takes the original back.
                Ok(Ok(c)) => Ok(Conn::Node(MultiplexedConnection::clone(&c))),
                Ok(Err(e)) => Err(io_error(&e.to_string())),
                Err(_) => Err(io_error("connect timed out")),
            },
            None => self.conn().ok_or_else(|| io_error("not connected")),
        }
    }

    /// A subscription and a connection of its own for the invalidation bus, both on the node
    /// whose pub/sub carries the bus's channels (see `invalidation`'s doc for why one node): one
    /// node's, the current master's, or in a Cluster the master serving the bus channels' slot
    /// (`names`), where every instance's pings and announcements are executed, in one order.
    pub async fn bus_connections(&self) -> RedisResult<(PubSub, Conn)> {
        let url = match &self.target {
            Target::Single { url, .. } => url.clone(),
            Target::Sentinel { .. } => self.nodes.node_url(&self.resolve_master().await?),
            Target::Cluster { nodes, .. } => self.nodes.node_url(&self.bus_node(nodes).await?),
        };
        let client = redis::Client::open(url)?;
        let ps = client.get_async_pubsub().await?;
        let mut control = client.get_multiplexed_async_connection().await?;
        if !matches!(self.target, Target::Single { .. }) {
            // A demoted master would still carry pub/sub, but no longer the others' messages.
            let role: Vec<redis::Value> = redis::cmd("ROLE").query_async(&mut control).await?;
            if !matches!(role.first(), Some(redis::Value::BulkString(r)) if r == b"master") {
                return Err(RedisError::from((ErrorKind::ReadOnly, "bus node is not a master")));
            }
        }
        Ok((ps, Conn::Node(control)))
    }

    /// The master serving the bus channels' slot, asked of the seed nodes in order.
    async fn bus_node(&self, nodes: &[String]) -> RedisResult<String> {
        let channel = self.names.invalidation_channel();
        let ask = |node: &String| {
            let (url, channel) = (self.nodes.node_url(node), &channel);
            async move {
                let mut c = redis::Client::open(url)?.get_multiplexed_async_connection().await?;
                let slot: u16 = redis::cmd("CLUSTER").arg("KEYSLOT").arg(channel).query_async(&mut c).await?;
                let ranges: Vec<redis::Value> = redis::cmd("CLUSTER").arg("SLOTS").query_async(&mut c).await?;
                for r in ranges {
                    if let Some((start, end, master)) = slot_range(&r) {
                        if (start..=end).contains(&slot) {
                            return Ok(master);
                        }
                    }
                }
                Err(io_error("the bus slot is not served"))
            }
        };
        self.first_answer(nodes, ask, "no cluster node answered", "cluster node timed out").await
    }

    /// Sentinel: the master's address, from the first Sentinel that knows it.
    async fn resolve_master(&self) -> RedisResult<String> {
        let Target::Sentinel { sentinels, master_name } = &self.target else {
            return Err(io_error("not a Sentinel topology"));
        };
        let ask = |s: &String| {
            let url = self.nodes.sentinel_url(s);
            async move {
                let mut c = redis::Client::open(url)?.get_multiplexed_async_connection().await?;
                let addr: Option<(String, u16)> =
                    redis::cmd("SENTINEL").arg("get-master-addr-by-name").arg(master_name).query_async(&mut c).await?;
                addr.map(|(h, p)| format!("{h}:{p}"))
                    .ok_or_else(|| RedisError::from((ErrorKind::MasterNameNotFoundBySentinel, "unknown master name")))
            }
        };
        self.first_answer(sentinels, ask, "no sentinel answered", "sentinel timed out").await
    }

    /// The first answer `ask` gets from `addrs`, asked in order, each within the connect
    /// timeout; with none, the last failure (`none` when there was no address).
    async fn first_answer<T, F, Fut>(&self, addrs: &[String], ask: F, none: &str, timed_out: &str) -> RedisResult<T>
    where
        F: Fn(&String) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let mut last = io_error(none);
        for addr in addrs {
            match tokio::time::timeout(self.connect_timeout, ask(addr)).await {
                Ok(Ok(answer)) => return Ok(answer),
                Ok(Err(e)) => last = e,
                Err(_) => last = io_error(timed_out),
            }
        }
        Err(last)
    }

    /// Opens the request path's connection for the topology. With Sentinel, a master address
    /// other than the last one is a failover: Redis is distrusted before the connection is
    /// used, so nothing is read from the new master before the replay.
    async fn connect(&self) -> RedisResult<Shared> {
        match &self.target {
            Target::Single { pool, .. } => {
                let mut c = pool.get().await.map_err(|e| io_error(&e.to_string()))?;
                // Behind one address there may be another process than last time: a restart, or
                // a managed failover behind a DNS name (ElastiCache's primary endpoint). Either
                // may lack acknowledged invalidations: distrust until the replay, as after an
                // outage.
                let info: String = redis::cmd("INFO").arg("server").query_async(&mut *c).await?;
                if let Some(run_id) = info.lines().find_map(|l| l.strip_prefix("run_id:")).map(str::trim) {
                    let previous = self.run_id.lock().unwrap_or_else(|e| e.into_inner()).replace(run_id.to_string());
                    if previous.is_some_and(|p| p != run_id) {
                        self.distrust();
                        tracing::warn!(
                            "another redis process answers (restart or failover): replaying invalidations before trusting it"
                        );
                    }
                }
                Ok(Shared::Pooled(c))
            }
            Target::Sentinel { master_name, .. } => {
                let addr = self.resolve_master().await?;
                let previous = self.master.lock().unwrap_or_else(|e| e.into_inner()).replace(addr.clone());
                if previous.as_ref().is_some_and(|p| *p != addr) {
                    self.on_failover(&format!("sentinel master {master_name} moved to {addr}"));
                }
                let mut c = redis::Client::open(self.nodes.node_url(&addr))?.get_multiplexed_async_connection().await?;
                let role: Vec<redis::Value> = redis::cmd("ROLE").query_async(&mut c).await?;
                if !matches!(role.first(), Some(redis::Value::BulkString(r)) if r == b"master") {
                    // The Sentinels have not caught up yet (or the node was demoted): ask again.
                    return Err(RedisError::from((ErrorKind::ReadOnly, "the node Sentinel named is not a master")));
                }
                Ok(Shared::Own(Conn::Node(c)))
            }
            Target::Cluster { client, .. } => {
                let c = client.get_async_connection().await?;
                Ok(Shared::Own(Conn::Cluster(ClusterConn::new(c, self.stats.clone()))))
            }
        }
    }

    /// A failover was noticed: count it, and distrust Redis until the outbox is replayed.
    fn on_failover(&self, what: &str) {
        self.stats.failovers.fetch_add(1, Ordering::Relaxed);
        self.distrust();
        tracing::warn!(
            redis.topology = self.topology(),
            what,
            "redis failover: replaying invalidations before trusting redis again"
        );
    }

    /// Cluster: compares the nodes' roles with the last look; a node that was a replica and now
    /// serves slots as a master is a failover.
    async fn watch_cluster_roles(&self) {
        if !self.is_cluster() {
            return;
        }
        let got: Option<String> =
            self.run(|mut c| async move { redis::cmd("CLUSTER").arg("NODES").query_async(&mut c).await }).await;
        let Some(nodes) = got else { return };
        let roles = cluster_roles(&nodes);
        let mut last = self.cluster_roles.lock().unwrap_or_else(|e| e.into_inner());
        let promoted: Vec<&String> = match last.as_ref() {
            Some(before) => {
                roles.iter().filter(|(id, m)| **m && before.get(*id) == Some(&false)).map(|(id, _)| id).collect()
            }
            None => Vec::new(),
        };
        if !promoted.is_empty() {
            let what = format!("{} replica(s) promoted", promoted.len());
            self.on_failover(&what);
        }
        // Nodes are asked at random, and one may not have noticed a promotion yet: a node once
        // seen a master stays one here, so that its promotion is counted once.
        let roles = match last.as_ref() {
            Some(before) => roles.iter().map(|(id, m)| (id.clone(), *m || before.get(id) == Some(&true))).collect(),
            None => roles,
        };
        *last = Some(roles);
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

    fn conn(&self) -> Option<Conn> {
        let guard = self.shared.read().unwrap_or_else(|e| e.into_inner());
        guard.as_ref().map(|s| match s {
            Shared::Pooled(c) => Conn::Node(MultiplexedConnection::clone(c)),
            Shared::Own(c) => c.clone(),
        })
    }

    fn discard_connection(&self) {
        let old = self.shared.write().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(Shared::Pooled(c)) = old {
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
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        self.run_within(Duration::ZERO, call).await
    }

    /// [`RedisClient::run`] with a budget of at least `floor`: for calls whose answer is worth
    /// more than their latency (the rate limiter's: a check that times out may still have been
    /// counted in Redis, and is then decided again from local memory).
    pub async fn run_within<T, F, Fut>(&self, floor: Duration, call: F) -> Option<T>
    where
        F: FnOnce(Conn) -> Fut,
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
                let failing_over = broken
                    || matches!(
                        e.kind(),
                        ErrorKind::ReadOnly
                            | ErrorKind::ClusterDown
                            | ErrorKind::MasterDown
                            | ErrorKind::ClusterConnectionNotFound
                    );
                tracing::debug!(error = %e, redis.failing_over = failing_over, "redis call failed");
                match self.target {
                    Target::Single { .. } => self.on_failure(false, broken, &e),
                    // A failover may be under way: no read until the replay (module doc), and
                    // the connection is dropped. The next Sentinel one goes to the master named
                    // then; the next cluster one reads the slot map afresh (redis-rs would only
                    // reconnect to the dead node's address, never learning of the promotion,
                    // since a promoted replica is never asked and so never answers MOVED).
                    Target::Sentinel { .. } | Target::Cluster { .. } => {
                        if failing_over {
                            self.distrust();
                        }
                        self.on_failure(false, failing_over, &e);
                    }
                }
                None
            }
            Err(_) => {
                tracing::debug!(redis.budget_ms = self.budget().max(floor).as_millis() as u64, "redis call timed out");
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
            // Sentinel asks the Sentinels first, then connects: two budgets.
            match tokio::time::timeout(self.connect_timeout * 2, self.connect()).await {
                Ok(Ok(c)) => {
                    *self.shared.write().unwrap_or_else(|e| e.into_inner()) = Some(c);
                }
                Ok(Err(e)) => return self.note_down(&e),
                Err(_) => return self.note_down(&"connect timed out"),
            }
        }
        self.watch_cluster_roles().await;
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
        let pong = if self.is_cluster() {
            self.cluster_whole().await
        } else {
            let pong: Option<String> =
                self.run(|mut c| async move { redis::cmd("PING").query_async(&mut c).await }).await;
            pong.is_some()
        };
        if !pong {
            tracing::debug!("redis probe failed; still untrusted");
            self.renew_cluster_connection();
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
            Err(e) => {
                tracing::warn!(error = %e, "redis invalidation replay failed; will retry");
                self.renew_cluster_connection();
            }
        }
    }

    /// Cluster: whether every slot is served and every master serving slots answers itself.
    /// Before the replay that makes Redis trusted again, that is what "Redis answers" means: a
    /// master that was just killed is still listed for its slots until the cluster notices, and
    /// its replica may be promoted only after that; a replay before it would not reach the
    /// promoted replica, which may lack the last invalidations.
    async fn cluster_whole(&self) -> bool {
        let Some(Conn::Cluster(mut c)) = self.conn() else { return false };
        let check = async move {
            let info: String = redis::cmd("CLUSTER").arg("INFO").query_async(&mut Conn::Cluster(c.clone())).await?;
            if !info.lines().any(|l| l.trim() == "cluster_state:ok") {
                return Err(io_error("cluster_state is not ok"));
            }
            let ranges: Vec<redis::Value> =
                redis::cmd("CLUSTER").arg("SLOTS").query_async(&mut Conn::Cluster(c.clone())).await?;
            let mut masters: Vec<String> = ranges.iter().filter_map(slot_range).map(|(_, _, m)| m).collect();
            masters.sort();
            masters.dedup();
            for m in masters {
                let Some((host, port)) = m.rsplit_once(':').and_then(|(h, p)| Some((h.to_string(), p.parse().ok()?)))
                else {
                    return Err(io_error("unparseable master address"));
                };
                // To that node itself: the connection would otherwise answer from another one.
                let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host, port });
                c.route(&redis::cmd("PING"), route).await?;
            }
            Ok::<_, RedisError>(())
        };
        match tokio::time::timeout(self.budget(), check).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "redis cluster not whole yet");
                false
            }
            Err(_) => false,
        }
    }

    /// Cluster: drops the connection so that the next tick builds one with the slot map read
    /// afresh. A connection made while a master was failing keeps that master's address for its
    /// slots, and while it recovers its map it holds every command back; a new one is cheaper
    /// than waiting for it (and only an untrusted Redis pays this).
    fn renew_cluster_connection(&self) {
        if self.is_cluster() {
            self.discard_connection();
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
        m.copy_counter("shortener_redis_failovers_total", vec![], &s.failovers);
        m.copy_counter("shortener_redis_redirections_total", vec![Label::new("kind", "moved")], &s.redirections_moved);
        m.copy_counter("shortener_redis_redirections_total", vec![Label::new("kind", "ask")], &s.redirections_ask);
        if let Some(pool) = self.pool() {
            let status = pool.status();
            m.gauge("shortener_redis_pool_connections", vec![Label::new("state", "open")]).set(status.size as f64);
            m.gauge("shortener_redis_pool_connections", vec![Label::new("state", "idle")]).set(status.available as f64);
            m.gauge("shortener_redis_pool_waiting", vec![]).set(status.waiting as f64);
        }
    }

    /// A point-in-time view for `/health/redis`.
    pub async fn snapshot(&self) -> RedisSnapshot {
        let started = Instant::now();
        let conn = self.side_connection().await.ok();
        let ping = match conn.clone() {
            Some(mut c) => tokio::time::timeout(self.connect_timeout, redis::cmd("PING").query_async::<()>(&mut c))
                .await
                .is_ok_and(|r| r.is_ok()),
            None => false,
        };
        let ping_ms = ping.then(|| started.elapsed().as_secs_f64() * 1000.0);
        let topology = match conn {
            Some(c) if ping => self.topology_view(c).await,
            _ => TopologyView { kind: self.topology(), ..TopologyView::default() },
        };
        let status = self.pool().map(|p| p.status());
        RedisSnapshot {
            reachable: ping,
            ping_ms,
            breaker: self.breaker().as_str(),
            pool_size: status.map_or(0, |s| s.size),
            pool_available: status.map_or(0, |s| s.available),
            pool_waiting: status.map_or(0, |s| s.waiting),
            errors: self.stats.errors.load(Ordering::Relaxed),
            timeouts: self.stats.timeouts.load(Ordering::Relaxed),
            breaker_opened: self.stats.breaker_opened.load(Ordering::Relaxed),
            failovers: self.stats.failovers.load(Ordering::Relaxed),
            redirections_moved: self.stats.redirections_moved.load(Ordering::Relaxed),
            redirections_ask: self.stats.redirections_ask.load(Ordering::Relaxed),
            topology,
        }
    }

    /// What `/health/redis` shows of the topology, asked over `c`.
    async fn topology_view(&self, mut c: Conn) -> TopologyView {
        let budget = self.connect_timeout;
        let mut view = TopologyView { kind: self.topology(), ..TopologyView::default() };
        match &self.target {
            Target::Single { .. } | Target::Sentinel { .. } => {
                let role =
                    tokio::time::timeout(budget, redis::cmd("ROLE").query_async::<Vec<redis::Value>>(&mut c)).await;
                if let Ok(Ok(role)) = role {
                    view.role = role.first().and_then(|r| redis::from_redis_value::<String>(r).ok());
                }
                if let Target::Sentinel { master_name, .. } = &self.target {
                    view.master_name = Some(master_name.clone());
                    view.current_master = self.master.lock().unwrap_or_else(|e| e.into_inner()).clone();
                }
            }
            Target::Cluster { .. } => {
                let info =
                    tokio::time::timeout(budget, redis::cmd("CLUSTER").arg("INFO").query_async::<String>(&mut c)).await;
                if let Ok(Ok(info)) = info {
                    for line in info.lines() {
                        match line.split_once(':') {
                            Some(("cluster_state", v)) => view.cluster_state = Some(v.trim().to_string()),
                            Some(("cluster_slots_ok", v)) => view.slots_covered = v.trim().parse().ok(),
                            Some(("cluster_slots_assigned", v)) => view.slots_assigned = v.trim().parse().ok(),
                            _ => {}
                        }
                    }
                }
                let nodes =
                    tokio::time::timeout(budget, redis::cmd("CLUSTER").arg("NODES").query_async::<String>(&mut c))
                        .await;
                if let Ok(Ok(nodes)) = nodes {
                    view.masters = Some(cluster_masters(&nodes));
                }
            }
        }
        view
    }

    /// Runs `INFO all` on one node: the node, the master, or in a Cluster one master chosen by
    /// the connection (the figures are that node's).
    pub async fn info(&self) -> RedisResult<String> {
        let mut c = self.side_connection().await?;
        let cmd = {
            let mut cmd = redis::cmd("INFO");
            cmd.arg("all");
            cmd
        };
        if let Conn::Cluster(cc) = &mut c {
            let v = cc.route(&cmd, RoutingInfo::SingleNode(SingleNodeRoutingInfo::RandomPrimary)).await?;
            return redis::from_redis_value(&v);
        }
        cmd.query_async(&mut c).await
    }

    /// Deletes every key of this service's namespace (load tests and operators' cold starts).
    /// One node or the master only: a Cluster's keys are spread over its masters.
    pub async fn flush_namespace(&self) -> RedisResult<u64> {
        if self.is_cluster() {
            return Err(io_error("flush_namespace does not scan a cluster's masters"));
        }
        let mut c = self.side_connection().await?;
        let mut cursor: u64 = 0;
        let mut deleted = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(self.names.everything())
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut c)
                .await?;
            if !keys.is_empty() {
                deleted += redis::cmd("UNLINK").arg(&keys).query_async::<u64>(&mut c).await?;
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
    /// Failovers noticed.
    pub failovers: u64,
    /// `MOVED` redirections followed.
    pub redirections_moved: u64,
    /// `ASK` redirections followed.
    pub redirections_ask: u64,
    /// The topology as seen now.
    pub topology: TopologyView,
}

/// The topology as `/health/redis` shows it; fields that do not apply are left out.
#[derive(Debug, Default, Serialize)]
pub struct TopologyView {
    /// `single`, `sentinel` or `cluster`.
    pub kind: &'static str,
    /// The connected node's `ROLE` (`master` when all is well).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Sentinel: the monitored master's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub master_name: Option<String>,
    /// Sentinel: the master's address the client is connected to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_master: Option<String>,
    /// Cluster: `cluster_state` (`ok` or `fail`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_state: Option<String>,
    /// Cluster: slots served (`cluster_slots_ok`, of 16384).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slots_covered: Option<u32>,
    /// Cluster: slots assigned to some master.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slots_assigned: Option<u32>,
    /// Cluster: each master's address and how many slots it serves.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub masters: Option<Vec<ClusterMaster>>,
}

/// One master of a Cluster.
#[derive(Debug, Serialize)]
pub struct ClusterMaster {
    /// `host:port`.
    pub addr: String,
    /// Slots it serves.
    pub slots: u32,
}

fn io_error(what: &str) -> RedisError {
    RedisError::from(std::io::Error::other(what.to_string()))
}

/// One entry of `CLUSTER SLOTS`: first slot, last slot, master's `host:port`.
fn slot_range(v: &redis::Value) -> Option<(u16, u16, String)> {
    let redis::Value::Array(parts) = v else { return None };
    let start: u16 = redis::from_redis_value(parts.first()?).ok()?;
    let end: u16 = redis::from_redis_value(parts.get(1)?).ok()?;
    let redis::Value::Array(master) = parts.get(2)? else { return None };
    let host: String = redis::from_redis_value(master.first()?).ok()?;
    let port: u16 = redis::from_redis_value(master.get(1)?).ok()?;
    Some((start, end, format!("{host}:{port}")))
}

/// `CLUSTER NODES` lines: `<id> <addr>@<bus> <flags> <master> <ping> <pong> <epoch> <link> <slots>…`.
fn cluster_lines(nodes: &str) -> impl Iterator<Item = Vec<&str>> {
    nodes.lines().map(|l| l.split(' ').collect::<Vec<_>>()).filter(|f| f.len() >= 8)
}

/// Each node id, and whether it is a master that serves slots (and is not failed).
fn cluster_roles(nodes: &str) -> HashMap<String, bool> {
    cluster_lines(nodes)
        .map(|f| {
            let flags = f[2];
            let master = flags.split(',').any(|x| x == "master") && !flags.contains("fail") && f.len() > 8;
            (f[0].to_string(), master)
        })
        .collect()
}

/// The masters that serve slots, with their slot counts.
fn cluster_masters(nodes: &str) -> Vec<ClusterMaster> {
    let mut out: Vec<ClusterMaster> = cluster_lines(nodes)
        .filter(|f| f[2].split(',').any(|x| x == "master") && !f[2].contains("fail"))
        .map(|f| {
            let slots = f[8..]
                .iter()
                .filter(|r| !r.starts_with('['))
                .map(|r| match r.split_once('-') {
                    Some((a, b)) => b.parse::<u32>().unwrap_or(0).saturating_sub(a.parse().unwrap_or(0)) + 1,
                    None => u32::from(!r.is_empty()),
                })
                .sum();
            let addr = f[1].split('@').next().unwrap_or(f[1]).to_string();
            ClusterMaster { addr, slots }
        })
        .filter(|m| m.slots > 0)
        .collect();
    out.sort_by(|a, b| a.addr.cmp(&b.addr));
    out
}
