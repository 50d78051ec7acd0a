//! The link cache in Redis: codes' answers, read in batches, written back through the
//! stale-set guard. Reaching Redis, budgets and the breaker are the client's
//! (`redis_client`); invalidating is the bus's (`invalidation`).
//!
//! # Batching
//! Reads, fill leases and write-backs each go through a `Batcher` (`crate::batch`): everything waiting goes out
//! as one `MGET` or one script call over many codes (up to 512 a call, 4 calls in flight). Under
//! load a Redis hit costs a small fraction of a command; idle, a call carries one code and goes
//! out at once. A failed or timed-out call is a miss (or "unavailable") for every code in it.
//! In a Redis Cluster a script's keys must share a slot: the lease and fill scripts then run
//! once per hash-tag bucket of the batch (`redis_client::names`), concurrently, and an `MGET`
//! is split by slot by the cluster connection.
//!
//! # Trust
//! The cache is read and written back to only while the client trusts Redis
//! (`RedisClient::readable`: the breaker is closed and no invalidation may be missing).
//!
//! # The stale-set guard
//! A fill takes a lease (a random token under `lease:{code}`) in the same script that re-checks
//! the value, reads SQLite, then writes the value only if its lease is still there (both scripts
//! take many codes per call, and each code is checked on its own). An
//! invalidation deletes the value and the lease in one `DEL`, so a fill that started before the
//! change cannot land after it, whatever order the commands reach Redis in.

use std::{
    collections::HashMap,
    future::Future,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, OnceLock, Weak,
    },
    time::Duration,
};

use metrics::Label;
use redis::Script;

use super::Resolved;
use crate::{batch::Batcher, observe::Metrics, redis_client::RedisClient};

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

/// The answers of a batched call, one per item: `None` for every item when the call failed (or
/// did not answer for each item).
fn per_item<T>(got: Option<Vec<T>>, n: usize) -> Vec<Option<T>> {
    match got {
        Some(values) if values.len() == n => values.into_iter().map(Some).collect(),
        _ => std::iter::repeat_with(|| None).take(n).collect(),
    }
}

/// Counters of the link cache.
#[derive(Default, Debug)]
pub struct LinkCacheStats {
    /// Write-backs refused because the code changed meanwhile (the guard at work).
    pub fills_rejected: AtomicU64,
    /// Write-backs that landed.
    pub fills: AtomicU64,
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

/// The link cache. One per process, shared through `Arc`.
pub struct LinkCache {
    client: Arc<RedisClient>,
    lease_script: Script,
    fill_script: Script,
    /// This cache, for the batching task (which must not keep it alive).
    me: Weak<LinkCache>,
    /// Coalesces concurrent reads into `MGET`s; started on first use.
    gets: OnceLock<Batcher<String, GetOutcome>>,
    /// Coalesces concurrent lease requests (code, token) into one script call.
    leases: OnceLock<Batcher<(String, String), GetOutcome>>,
    /// Coalesces concurrent write-backs into one script call; `None` when the call failed.
    fills: OnceLock<Batcher<FillItem, Option<bool>>>,
    /// The stale-set guard; off only in tests that show the race it closes
    /// ([`LinkCache::disable_guard`]).
    guard: AtomicBool,
    /// Counters, for `/health` and `/metrics`.
    pub stats: LinkCacheStats,
}

impl LinkCache {
    /// The cache over `client`.
    pub fn new(client: Arc<RedisClient>) -> Arc<Self> {
        Arc::new_cyclic(|me| LinkCache {
            client,
            lease_script: Script::new(LEASE_SCRIPT),
            fill_script: Script::new(FILL_SCRIPT),
            me: me.clone(),
            gets: OnceLock::new(),
            leases: OnceLock::new(),
            fills: OnceLock::new(),
            guard: AtomicBool::new(true),
            stats: LinkCacheStats::default(),
        })
    }

    /// Turns the stale-set guard off (tests only: it shows the race the guard closes).
    pub fn disable_guard(&self) {
        self.guard.store(false, Ordering::Relaxed);
    }

    /// The client under this cache.
    pub fn client(&self) -> &Arc<RedisClient> {
        &self.client
    }

    fn readable(&self) -> bool {
        self.client.readable()
    }

    fn link_key(&self, code: &str) -> String {
        self.client.names().link(code)
    }

    fn lease_key(&self, code: &str) -> String {
        self.client.names().lease(code)
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

    /// Starts (on first use) a batching task that calls `run` on this cache; the task holds the
    /// cache weakly, so it ends with the cache.
    fn batcher<'a, I, O, F, Fut>(&self, cell: &'a OnceLock<Batcher<I, O>>, run: F) -> &'a Batcher<I, O>
    where
        I: Send + 'static,
        O: Send + 'static,
        F: Fn(Arc<LinkCache>, Vec<I>) -> Fut + Send + Sync + Copy + 'static,
        Fut: Future<Output = Vec<O>> + Send,
    {
        cell.get_or_init(|| {
            let me = self.me.clone();
            Batcher::spawn(BATCH_MAX, move |items: Vec<I>| {
                let cache = me.upgrade();
                async move {
                    match cache {
                        Some(cache) => run(cache, items).await,
                        None => Vec::new(),
                    }
                }
            })
        })
    }

    fn get_batcher(&self) -> &Batcher<String, GetOutcome> {
        self.batcher(&self.gets, |cache, keys| async move { cache.mget(keys).await })
    }

    /// One `MGET` for all `keys`: one command however many redirects are waiting on Redis (so
    /// at most one command per Redis hit, usually far fewer).
    async fn mget(&self, keys: Vec<String>) -> Vec<GetOutcome> {
        let n = keys.len();
        let got = self.client.run(|mut c| async move { redis::cmd("MGET").arg(&keys).query_async(&mut c).await }).await;
        per_item(got, n)
    }

    /// Re-checks the value and, if absent, takes a fill lease, in one round trip (shared with
    /// every other lease requested meanwhile). With the guard off (tests only) it only re-checks.
    pub async fn lease(&self, code: &str) -> Lease {
        let guard = self.guard.load(Ordering::Relaxed);
        if !self.readable() {
            return Lease::Unavailable;
        }
        let token = rand::random::<u64>().to_string();
        let got = if guard {
            let batcher = self.batcher(&self.leases, |cache, items| async move { cache.lease_many(items).await });
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

    /// The items' indices grouped so that each group's keys share a slot: one group unless in
    /// a Cluster.
    fn slot_groups<T>(&self, items: &[T], code: impl Fn(&T) -> &str) -> Vec<Vec<usize>> {
        let names = self.client.names();
        if !self.client.is_cluster() {
            return vec![(0..items.len()).collect()];
        }
        let mut by_bucket: HashMap<u32, Vec<usize>> = HashMap::new();
        for (i, item) in items.iter().enumerate() {
            by_bucket.entry(names.bucket(code(item)).unwrap_or(0)).or_default().push(i);
        }
        by_bucket.into_values().collect()
    }

    /// Runs `call` on each slot group of `items` at once and puts the answers back in order.
    async fn per_slot<T: Clone, O: Clone, F, Fut>(
        &self,
        items: Vec<T>,
        code: impl Fn(&T) -> &str,
        call: F,
    ) -> Vec<Option<O>>
    where
        F: Fn(Vec<T>) -> Fut,
        Fut: Future<Output = Vec<Option<O>>>,
    {
        let groups = self.slot_groups(&items, code);
        if groups.len() == 1 {
            return call(items).await;
        }
        let calls = groups.iter().map(|g| call(g.iter().map(|&i| items[i].clone()).collect()));
        let answers = futures_util::future::join_all(calls).await;
        let mut out: Vec<Option<O>> = vec![None; items.len()];
        for (g, answer) in groups.iter().zip(answers) {
            for (&i, v) in g.iter().zip(answer) {
                out[i] = v;
            }
        }
        out
    }

    async fn lease_many(&self, items: Vec<(String, String)>) -> Vec<GetOutcome> {
        self.per_slot(items, |i| &i.0, |group| self.lease_slot(group)).await
    }

    async fn lease_slot(&self, items: Vec<(String, String)>) -> Vec<GetOutcome> {
        let n = items.len();
        let mut inv = self.lease_script.prepare_invoke();
        for (code, _) in &items {
            inv.key(self.link_key(code)).key(self.lease_key(code));
        }
        for (_, token) in &items {
            inv.arg(token);
        }
        inv.arg(LEASE_MS);
        let got = self.client.run(|mut c| async move { inv.invoke_async(&mut c).await }).await;
        per_item(got, n)
    }

    /// Writes a fill back if its lease still holds (or unconditionally with the guard off), in
    /// one round trip shared with every other fill meanwhile. Negative answers expire after
    /// `negative_ttl`. Returns whether it landed.
    pub async fn fill(&self, code: &str, token: &str, value: &Resolved, negative_ttl: Duration) -> bool {
        let guard = self.guard.load(Ordering::Relaxed);
        if !self.readable() {
            return false;
        }
        let ttl_ms = match value {
            Resolved::Found(_) => 0,
            Resolved::Missing => negative_ttl.as_millis().max(1) as u64,
        };
        let landed = if guard {
            let batcher = self.batcher(&self.fills, |cache, items| async move { cache.fill_many(items).await });
            batcher.call((code.to_string(), token.to_string(), value.encode(), ttl_ms)).await.flatten()
        } else {
            let (key, encoded) = (self.link_key(code), value.encode());
            self.client
                .run(|mut c| async move {
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
        self.per_slot(items, |i| &i.0, |group| self.fill_slot(group)).await
    }

    async fn fill_slot(&self, items: Vec<FillItem>) -> Vec<Option<bool>> {
        let n = items.len();
        let mut inv = self.fill_script.prepare_invoke();
        for (code, token, encoded, ttl_ms) in &items {
            inv.key(self.link_key(code)).key(self.lease_key(code));
            inv.arg(token).arg(encoded).arg(*ttl_ms);
        }
        let got: Option<Vec<i64>> = self.client.run(|mut c| async move { inv.invoke_async(&mut c).await }).await;
        per_item(got.map(|landed| landed.into_iter().map(|l| l == 1).collect()), n)
    }

    /// Copies the cache's counters into `m`.
    pub fn export_metrics(&self, m: &Metrics) {
        let result = |r: &'static str| vec![Label::new("result", r)];
        m.copy_counter("shortener_cache_write_backs_total", result("landed"), &self.stats.fills);
        m.copy_counter("shortener_cache_write_backs_total", result("rejected"), &self.stats.fills_rejected);
    }
}
