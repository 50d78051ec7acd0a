//! The read-through: L1 → Redis → SQLite, with single-flight, negative caching and the
//! stale-set guard (see `cache::local` and `cache::redis` for how each guard works).
//!
//! 1. L1 hit → done.
//! 2. Redis `GET` under its budget (only while Redis is trusted) → done on a hit.
//! 3. Otherwise join the code's flight, or start one. A flight re-checks L1, re-checks Redis
//!    while taking a fill lease (one script), reads SQLite once, writes the answer back through
//!    the guard, fills L1 through the epoch guard, and only then answers its waiters — so a
//!    request that arrives just after a flight finished finds the answer cached.
//!
//! A flight belongs to the epoch it started in: a request that arrives after a change to the
//! code does not join a flight that may have read the old row, it starts its own.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, OnceLock,
    },
    time::Duration,
};

use crate::db::Db;
use serde::Serialize;
use tokio::sync::{Notify, OnceCell, Semaphore};

use crate::{
    batch::Batcher,
    cache::{
        local::L1,
        redis::{Lease, LinkCache, Lookup},
        Resolved,
    },
    db::{self, writer::Announce, DbError},
    invalidation::Bus,
    observe::Metrics,
    striped::Striped,
};
use futures_util::future::BoxFuture;
use metrics::Label;

/// Why a code could not be resolved: the database is saturated or failing (the redirect path
/// answers 503 with `Retry-After`).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct ResolveError(pub String);

/// Counters of the redirect path (monotonic).
#[derive(Default, Debug)]
pub struct CacheStats {
    /// Answered from L1.
    pub l1_hits: Striped,
    /// Answered from Redis.
    pub redis_hits: Striped,
    /// Missed both caches (each such request once).
    pub misses: Striped,
    /// SQLite reads made by the redirect path.
    pub db_lookups: Striped,
    /// Answers that were cached "no such code" entries.
    pub negative_hits: Striped,
    /// Requests that waited on another request's flight instead of reading SQLite.
    pub flight_waits: Striped,
    /// Lookups that failed (database busy or broken).
    pub errors: Striped,
}

/// `/health/cache`'s view of the counters.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CacheReport {
    /// Answered from L1.
    pub l1_hits: u64,
    /// Answered from Redis.
    pub redis_hits: u64,
    /// Missed both caches.
    pub misses: u64,
    /// SQLite reads by the redirect path.
    pub db_lookups: u64,
    /// (l1_hits + redis_hits) / all lookups; 0 when there were none.
    pub hit_ratio: f64,
    /// l1_hits / all lookups.
    pub l1_hit_ratio: f64,
    /// redis_hits / lookups that reached Redis' turn (all minus L1 hits).
    pub redis_hit_ratio: f64,
    /// Cached "no such code" answers served.
    pub negative_hits: u64,
    /// Requests that shared another request's SQLite read.
    pub single_flight_waits: u64,
    /// Write-backs the stale-set guard refused.
    pub write_backs_rejected: u64,
    /// Write-backs that landed in Redis.
    pub write_backs: u64,
    /// Entries in L1 (approximate).
    pub l1_entries: u64,
    /// Whether L1 is on.
    pub l1_enabled: bool,
    /// Whether L1 may be served now: always with one instance, and with Redis while this
    /// instance's invalidation subscription keeps up.
    pub l1_trusted: bool,
    /// Whether Redis is on in this configuration.
    pub redis_enabled: bool,
    /// Redis breaker: `closed`, `open`, `replaying`, or `disabled`.
    pub redis_breaker: &'static str,
}

/// The writer's announcements of committed changes land here: Redis forgets the codes (and the
/// other instances hear of it through pub/sub), then this process' L1 does.
impl Announce for Resolver {
    fn committed<'a>(&'a self, codes: &'a [String], ids: &'a [i64]) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if let Some(bus) = &self.bus {
                bus.invalidate(codes, ids).await;
            }
            for code in codes {
                self.forget_locally(code);
            }
        })
    }

    fn take_applied(&self) -> Vec<i64> {
        self.bus.as_ref().map(|b| b.take_acked()).unwrap_or_default()
    }

    fn requeue_applied(&self, ids: Vec<i64>) {
        if let Some(bus) = &self.bus {
            bus.requeue_acked(ids);
        }
    }
}

/// Knobs that let tests widen races the service must survive; the default (all off) is
/// production. Set through `startup::build_with`, never from the configuration.
#[derive(Clone, Default)]
pub struct Hooks {
    /// Pauses a cache fill between its SQLite read and its write-back.
    pub fill_pause: Option<Arc<FillPause>>,
    /// Turns the stale-set guard off, so a test can show that it sees the race without it.
    pub disable_write_back_guard: bool,
}

/// A test hook that holds a fill between its SQLite read and its write-back.
pub struct FillPause {
    armed: AtomicBool,
    /// Notified when an armed fill has read SQLite and is holding.
    pub reached: Notify,
    release: Semaphore,
}

impl Default for FillPause {
    fn default() -> Self {
        FillPause { armed: AtomicBool::new(false), reached: Notify::new(), release: Semaphore::new(0) }
    }
}

impl FillPause {
    /// Makes the next fill hold.
    pub fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    /// Lets the held fill go on.
    pub fn release(&self) {
        self.release.add_permits(1);
    }

    async fn hold_if_armed(&self) {
        if self.armed.swap(false, Ordering::SeqCst) {
            self.reached.notify_one();
            if let Ok(p) = self.release.acquire().await {
                p.forget();
            }
        }
    }
}

type Flight = Arc<OnceCell<Result<Resolved, ResolveError>>>;

/// Flights in progress (or just finished), by code, with the epoch each started in.
struct FlightTable {
    map: HashMap<Box<str>, FlightEntry>,
    sweep_at: usize,
}

struct FlightEntry {
    epoch: u64,
    flight: Flight,
    done_at: Option<std::time::Instant>,
}

/// Most codes one batched SQLite read asks for.
const READ_BATCH_MAX: usize = 512;

/// The flight table is swept no smaller than this.
const FLIGHT_SWEEP_MIN: usize = 4096;

/// How long a finished flight can still be joined (see `Resolver::retire_flight`). Short next
/// to `L1_TTL_MS`, which bounds staleness across instances.
const FLIGHT_GRACE: Duration = Duration::from_secs(1);

/// How long a redirect read that found the database busy waits before its one retry.
const BUSY_RETRY_AFTER: Duration = Duration::from_millis(20);

/// Resolves codes. One per process.
pub struct Resolver {
    /// The in-process tier.
    pub l1: L1,
    /// The link cache in Redis, when Redis is enabled.
    pub redis: Option<Arc<LinkCache>>,
    /// The invalidation bus, when Redis is enabled.
    pub bus: Option<Arc<Bus>>,
    db: Db,
    /// Coalesces concurrent SQLite reads of flights into one query; started on first use.
    reads: OnceLock<Batcher<String, Result<Option<db::links::Target>, DbError>>>,
    flights: Mutex<FlightTable>,
    negative_ttl: Duration,
    fill_pause: Option<Arc<FillPause>>,
    /// Counters.
    pub stats: CacheStats,
}

impl Resolver {
    /// Wires the tiers together.
    pub fn new(l1: L1, redis: Option<(Arc<LinkCache>, Arc<Bus>)>, db: Db, negative_ttl: Duration) -> Self {
        let (redis, bus) = redis.unzip();
        Resolver {
            l1,
            redis,
            bus,
            db,
            reads: OnceLock::new(),
            flights: Mutex::new(FlightTable { map: HashMap::new(), sweep_at: FLIGHT_SWEEP_MIN }),
            negative_ttl,
            fill_pause: None,
            stats: CacheStats::default(),
        }
    }

    /// The same resolver with test hooks in place.
    pub fn with_hooks(mut self, hooks: Hooks) -> Self {
        if hooks.disable_write_back_guard {
            self.l1 = self.l1.without_guard();
            if let Some(redis) = &self.redis {
                redis.disable_guard();
            }
        }
        self.fill_pause = hooks.fill_pause;
        self
    }

    /// Copies the redirect path's counters (and the Redis tier's) into `m`.
    pub fn export_metrics(&self, m: &Metrics) {
        let tier = |t: &str| vec![Label::new("tier", t.to_string())];
        m.set_counter("shortener_cache_lookups_total", tier("l1"), self.stats.l1_hits.get());
        m.set_counter("shortener_cache_lookups_total", tier("redis"), self.stats.redis_hits.get());
        m.set_counter("shortener_cache_lookups_total", tier("miss"), self.stats.misses.get());
        m.set_counter("shortener_db_lookups_total", vec![], self.stats.db_lookups.get());
        m.set_counter("shortener_cache_negative_hits_total", vec![], self.stats.negative_hits.get());
        m.set_counter("shortener_single_flight_waits_total", vec![], self.stats.flight_waits.get());
        m.set_counter("shortener_lookup_errors_total", vec![], self.stats.errors.get());
        m.gauge("shortener_l1_entries", vec![]).set(self.l1.len() as f64);
        m.gauge("shortener_l1_trusted", vec![]).set(if self.l1.trusted() { 1.0 } else { 0.0 });
        m.copy_counter("shortener_l1_untrusted_lookups_total", vec![], &self.l1.untrusted_lookups);
        if let Some(redis) = &self.redis {
            redis.export_metrics(m);
            redis.client().export_metrics(m);
        }
        if let Some(bus) = &self.bus {
            bus.export_metrics(m);
        }
    }

    /// Resolves a code that has the shape of one.
    pub async fn resolve(&self, code: &str) -> Result<Resolved, ResolveError> {
        if let Some(v) = self.l1.get(code) {
            self.stats.l1_hits.add(1);
            return Ok(self.count_negative(v));
        }
        let epoch = self.l1.epoch(code);
        if let Some(redis) = &self.redis {
            if let Lookup::Hit(v) = redis.get(code).await {
                self.stats.redis_hits.add(1);
                self.l1.fill(code, v.clone(), epoch);
                return Ok(self.count_negative(v));
            }
        }
        self.stats.misses.add(1);
        // A flight is an in-process copy too: joining one that started before a change this
        // instance has not heard of would answer the old target. While L1 is not trusted (the
        // invalidation subscription is lost or lagging), every miss reads for itself (the reads
        // are still batched into one query).
        let shared = self.l1.trusted();
        let flight = if shared { self.join_flight(code, epoch) } else { Arc::new(OnceCell::new()) };
        let mut led = false;
        let result = flight
            .get_or_init(|| {
                led = true;
                self.fetch(code, epoch)
            })
            .await
            .clone();
        if led {
            if shared {
                self.retire_flight(code, flight);
            }
        } else {
            self.stats.flight_waits.add(1);
        }
        result.map(|v| self.count_negative(v))
    }

    fn count_negative(&self, v: Resolved) -> Resolved {
        if matches!(v, Resolved::Missing) {
            self.stats.negative_hits.add(1);
        }
        v
    }

    fn join_flight(&self, code: &str, epoch: u64) -> Flight {
        let mut table = self.flights.lock().unwrap_or_else(|e| e.into_inner());
        match table.map.get(code) {
            // A flight of a later epoch started after the change that moved the epoch, so it
            // answers at least as new a target: a request from before the change may take it
            // (rather than replace it with an older flight, and the two alternate).
            Some(entry) if entry.epoch >= epoch && entry.done_at.is_none_or(|t| t.elapsed() < FLIGHT_GRACE) => {
                entry.flight.clone()
            }
            _ => {
                let f: Flight = Arc::new(OnceCell::new());
                table.map.insert(code.into(), FlightEntry { epoch, flight: f.clone(), done_at: None });
                f
            }
        }
    }

    /// A finished flight stays joinable for [`FLIGHT_GRACE`]: a request that missed the caches
    /// just before the fill landed, but reached the flight table just after the flight ended,
    /// takes the answer instead of reading SQLite again. That is safe because a flight is only
    /// joined at the epoch it started in, and every acknowledged change bumps the epoch first.
    /// Old entries are swept when the table has doubled since the last sweep (amortised O(1),
    /// no timer or task per flight).
    fn retire_flight(&self, code: &str, flight: Flight) {
        let mut table = self.flights.lock().unwrap_or_else(|e| e.into_inner());
        let now = std::time::Instant::now();
        if let Some(entry) = table.map.get_mut(code).filter(|e| Arc::ptr_eq(&e.flight, &flight)) {
            entry.done_at = Some(now);
        }
        if table.map.len() >= table.sweep_at {
            table.map.retain(|_, e| e.done_at.is_none_or(|t| now.duration_since(t) < FLIGHT_GRACE));
            table.sweep_at = (table.map.len() * 2).max(FLIGHT_SWEEP_MIN);
        }
    }

    /// The body of a flight: one SQLite read, written back through the guards.
    async fn fetch(&self, code: &str, epoch: u64) -> Result<Resolved, ResolveError> {
        if let Some(v) = self.l1.get(code) {
            return Ok(v);
        }
        let mut token = None;
        if let Some(redis) = &self.redis {
            match redis.lease(code).await {
                Lease::Hit(v) => {
                    self.l1.fill(code, v.clone(), epoch);
                    return Ok(v);
                }
                Lease::Token(t) => token = Some(t),
                Lease::Unavailable => {}
            }
        }
        self.stats.db_lookups.add(1);
        let row = self.read(code).await.map_err(|e| {
            self.stats.errors.add(1);
            match e {
                DbError::Busy => ResolveError("database busy".into()),
                DbError::Sql(e) => {
                    tracing::error!(error = %e, "redirect lookup failed");
                    ResolveError("database error".into())
                }
            }
        })?;
        let value = match row {
            None => Resolved::Missing,
            Some(t) => match Resolved::from_parts(code, &t.original_url, t.redirect_status, t.expires_at) {
                Some(v) => v,
                None => {
                    tracing::warn!(link.code = code, "stored link cannot be served (bad URL or status); answering 404");
                    Resolved::Missing
                }
            },
        };
        if let Some(pause) = &self.fill_pause {
            pause.hold_if_armed().await;
        }
        if let (Some(redis), Some(token)) = (&self.redis, token) {
            redis.fill(code, &token, &value, self.negative_ttl).await;
        }
        self.l1.fill(code, value.clone(), epoch);
        Ok(value)
    }

    /// Reads a code's link from SQLite, in one query with every other flight's read meanwhile:
    /// a query per code costs a pool checkout and two hand-offs to SQLite's thread, which under
    /// a cold load was most of a miss's cost.
    async fn read(&self, code: &str) -> Result<Option<db::links::Target>, DbError> {
        let batcher = self.reads.get_or_init(|| {
            let pool = self.db.clone();
            Batcher::spawn(READ_BATCH_MAX, move |codes: Vec<String>| {
                let pool = pool.clone();
                async move {
                    let mut read = db::links::find_targets_by_codes(&pool, &codes).await;
                    // Busy is most often a moment's contention (a pool held by tasks a saturated
                    // runtime has not polled yet, another process's write): one more try before
                    // every request of the batch is shed with a 503.
                    if matches!(read, Err(DbError::Busy)) {
                        tokio::time::sleep(BUSY_RETRY_AFTER).await;
                        read = db::links::find_targets_by_codes(&pool, &codes).await;
                    }
                    match read {
                        Ok(found) => {
                            // A code can be in a batch twice (flights of two epochs).
                            let found: HashMap<String, db::links::Target> = found.into_iter().collect();
                            codes.iter().map(|c| Ok(found.get(c).cloned())).collect()
                        }
                        Err(e) => {
                            // Every code of the batch gets the error (sqlx errors are not Clone).
                            let busy = matches!(e, DbError::Busy);
                            let detail = e.to_string();
                            let each = || match busy {
                                true => DbError::Busy,
                                false => DbError::Sql(sqlx::Error::Protocol(detail.clone())),
                            };
                            codes.iter().map(|_| Err(each())).collect()
                        }
                    }
                }
            })
        });
        batcher.call(code.to_string()).await.unwrap_or(Err(DbError::Busy))
    }

    /// Forgets a changed code in this process' L1 (the Redis side is the writer's job).
    pub fn forget_locally(&self, code: &str) {
        self.l1.invalidate(code);
    }

    /// The counters as `/health/cache` shows them.
    pub fn report(&self) -> CacheReport {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (l1, rh, miss) = (self.stats.l1_hits.get(), self.stats.redis_hits.get(), self.stats.misses.get());
        let total = l1 + rh + miss;
        let ratio = |n: u64, d: u64| if d == 0 { 0.0 } else { n as f64 / d as f64 };
        let (rejected, fills) =
            self.redis.as_ref().map_or((0, 0), |r| (get(&r.stats.fills_rejected), get(&r.stats.fills)));
        CacheReport {
            l1_hits: l1,
            redis_hits: rh,
            misses: miss,
            db_lookups: self.stats.db_lookups.get(),
            hit_ratio: ratio(l1 + rh, total),
            l1_hit_ratio: ratio(l1, total),
            redis_hit_ratio: ratio(rh, total - l1),
            negative_hits: self.stats.negative_hits.get(),
            single_flight_waits: self.stats.flight_waits.get(),
            write_backs_rejected: rejected,
            write_backs: fills,
            l1_entries: self.l1.len(),
            l1_enabled: self.l1.enabled(),
            l1_trusted: self.l1.trusted(),
            redis_enabled: self.redis.is_some(),
            redis_breaker: self.redis.as_ref().map_or("disabled", |r| r.client().breaker().as_str()),
        }
    }
}
