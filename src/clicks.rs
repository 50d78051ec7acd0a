//! Click counting without a database write per redirect.
//!
//! The hot path adds one to an atomic counter that lives in the cached link itself
//! ([`crate::cache::CachedLink::pending_clicks`]): no lock, no allocation. The first click on a
//! cached link since it was last drained also registers the link in a list (a short mutex, once
//! per link per flush interval, not per click). The flusher drains that list every
//! `CLICK_FLUSH_INTERVAL_MS`, or sooner when `CLICK_FLUSH_MAX_PENDING` links are waiting, and
//! hands the totals to the writer, which adds them to `link_mappings.clicks` and
//! `link_clicks_daily` in one transaction (shared with whatever else it is committing).
//!
//! A flush that fails keeps its counts and retries on the next tick; graceful shutdown flushes
//! last. A crash (`kill -9`) loses at most the clicks of the last flush interval.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use aho_corasick::AhoCorasick;
use tokio::sync::{watch, Notify};

use crate::{
    cache::CachedLink,
    db::writer::{Change, ClickBatch, Outcome, Writer},
    time_util::now_ms,
};

const REGISTRY_SHARDS: usize = 32;

/// Registered links of one shard, by code.
type RegistryShard = Mutex<HashMap<Box<str>, Arc<CachedLink>>>;

/// Counters of the click pipeline.
#[derive(Default, Debug)]
pub struct ClickStats {
    /// Clicks counted by redirects.
    pub recorded: AtomicU64,
    /// Requests not counted because their User-Agent looked like a bot.
    pub bots_skipped: AtomicU64,
    /// Clicks written to SQLite.
    pub flushed: AtomicU64,
    /// Flush transactions that committed.
    pub flushes: AtomicU64,
    /// Flushes that failed (their counts were kept for the next one).
    pub flush_failures: AtomicU64,
}

/// The click buffer and its flusher's state. One per process.
pub struct Clicks {
    enabled: bool,
    bots: Option<AhoCorasick>,
    /// One cached link per code whose counter holds clicks; other copies of the same code (an
    /// L1 refill, or every Redis hit when L1 is off) hand their clicks to it, so this stays one
    /// entry per clicked code however the link was served.
    /// Sharded by code so that two cores rarely want the same lock (with L1 off, every redirect
    /// registers).
    registered: Box<[RegistryShard]>,
    /// Totals taken from links but not yet committed (a flush in progress, or one that failed).
    carry: Mutex<HashMap<Box<str>, (u64, i64)>>,
    max_pending: usize,
    /// Codes registered since the last flush (to flush early when many wait).
    pending_links: AtomicU64,
    interval: Duration,
    wake: Notify,
    flush_lock: tokio::sync::Mutex<()>,
    /// Counters.
    pub stats: ClickStats,
}

impl Clicks {
    /// Copies the click counters into `m`.
    pub fn export_metrics(&self, m: &crate::observe::Metrics) {
        let c = &self.stats;
        m.copy_counter("shortener_clicks_recorded_total", vec![], &c.recorded);
        m.copy_counter("shortener_clicks_flushed_total", vec![], &c.flushed);
        m.copy_counter("shortener_click_flushes_total", vec![], &c.flushes);
        m.copy_counter("shortener_click_flush_failures_total", vec![], &c.flush_failures);
        m.copy_counter("shortener_clicks_bots_skipped_total", vec![], &c.bots_skipped);
        // Links with clicks not yet in the database: registered since the last flush, plus those
        // a failed flush carries to the next one. 0 means nothing is buffered.
        let carried = self.carry.lock().unwrap_or_else(|e| e.into_inner()).len() as u64;
        let pending = self.pending_links.load(Ordering::Relaxed) + carried;
        m.gauge("shortener_clicks_pending_links", vec![]).set(pending as f64);
    }

    /// A buffer; `bot_patterns: None` counts every GET.
    pub fn new(enabled: bool, bot_patterns: Option<&[String]>, interval: Duration, max_pending: usize) -> Self {
        let bots = bot_patterns.filter(|p| !p.is_empty()).and_then(|p| {
            AhoCorasick::builder()
                .ascii_case_insensitive(true)
                .build(p)
                .map_err(|e| tracing::error!(error = %e, "CLICK_BOT_PATTERNS unusable; counting every GET"))
                .ok()
        });
        Clicks {
            enabled,
            bots,
            registered: (0..REGISTRY_SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            carry: Mutex::new(HashMap::new()),
            max_pending: max_pending.max(1),
            pending_links: AtomicU64::new(0),
            interval,
            wake: Notify::new(),
            flush_lock: tokio::sync::Mutex::new(()),
            stats: ClickStats::default(),
        }
    }

    /// Whether a request with this User-Agent is a person's click.
    #[inline]
    pub fn counts(&self, user_agent: Option<&[u8]>) -> bool {
        self.enabled && self.counts_judged(self.is_bot(user_agent))
    }

    /// Whether this User-Agent is a bot's (`BOT_USER_AGENTS`), without counting anything: for a
    /// request whose User-Agent will be gone by the time [`Clicks::counts_judged`] is asked.
    #[inline]
    pub fn is_bot(&self, user_agent: Option<&[u8]>) -> bool {
        match (&self.bots, user_agent) {
            (Some(ac), Some(ua)) => ac.is_match(ua),
            _ => false,
        }
    }

    /// [`Clicks::counts`] of a request whose User-Agent [`Clicks::is_bot`] has judged.
    #[inline]
    pub fn counts_judged(&self, bot: bool) -> bool {
        if !self.enabled {
            return false;
        }
        if bot {
            self.stats.bots_skipped.fetch_add(1, Ordering::Relaxed);
        }
        !bot
    }

    /// Counts one click on a link (hot path: one atomic add; a short lock on the first click of
    /// this cached copy since the last flush).
    #[inline]
    pub fn record(&self, link: &Arc<CachedLink>) {
        if link.pending_clicks.fetch_add(1, Ordering::Relaxed) == 0 {
            self.register(link);
        }
    }

    fn shard(&self, code: &str) -> &RegistryShard {
        &self.registered[(crate::cache::local::fnv(code) >> 7) as usize % REGISTRY_SHARDS]
    }

    fn register(&self, link: &Arc<CachedLink>) {
        let mut reg = self.shard(&link.code).lock().unwrap_or_else(|e| e.into_inner());
        match reg.get(&link.code) {
            Some(holder) if Arc::ptr_eq(holder, link) => {}
            Some(holder) => {
                // Another copy holds this code's clicks: move ours there. `swap` takes every
                // click added to this copy so far; a later one finds 0 and comes back here.
                let n = link.pending_clicks.swap(0, Ordering::Relaxed);
                holder.pending_clicks.fetch_add(n, Ordering::Relaxed);
            }
            None => {
                reg.insert(link.code.clone(), link.clone());
                drop(reg);
                if self.pending_links.fetch_add(1, Ordering::Relaxed) + 1 == self.max_pending as u64 {
                    self.wake.notify_one();
                }
            }
        }
    }

    /// Clicks counted for `code` in this process and not yet in SQLite.
    pub fn pending_for(&self, code: &str) -> u64 {
        let reg: u64 = {
            let reg = self.shard(code).lock().unwrap_or_else(|e| e.into_inner());
            reg.get(code).map_or(0, |l| l.pending_clicks.load(Ordering::Relaxed))
        };
        let carried = self.carry.lock().unwrap_or_else(|e| e.into_inner()).get(code).map_or(0, |c| c.0);
        reg + carried
    }

    /// Buffered clicks of every code (for pages of links).
    pub fn pending_snapshot(&self) -> HashMap<Box<str>, u64> {
        let mut out: HashMap<Box<str>, u64> = HashMap::new();
        for shard in self.registered.iter() {
            for l in shard.lock().unwrap_or_else(|e| e.into_inner()).values() {
                *out.entry(l.code.clone()).or_default() += l.pending_clicks.load(Ordering::Relaxed);
            }
        }
        for (code, (n, _)) in self.carry.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            *out.entry(code.clone()).or_default() += n;
        }
        out
    }

    /// Drains the buffer into the carry map and commits it through the writer. On failure the
    /// counts stay in the carry map for the next attempt.
    pub async fn flush(&self, writer: &Writer) -> bool {
        let _one_at_a_time = self.flush_lock.lock().await;
        let now = now_ms();
        self.pending_links.store(0, Ordering::Relaxed);
        let drained: Vec<Arc<CachedLink>> = self
            .registered
            .iter()
            .flat_map(|s| std::mem::take(&mut *s.lock().unwrap_or_else(|e| e.into_inner())).into_values())
            .collect();
        let recorded: u64 = {
            let mut carry = self.carry.lock().unwrap_or_else(|e| e.into_inner());
            let mut n = 0;
            for link in drained {
                let c = link.pending_clicks.swap(0, Ordering::Relaxed);
                if c > 0 {
                    let e = carry.entry(link.code.clone()).or_insert((0, now));
                    e.0 += c;
                    e.1 = now;
                    n += c;
                }
            }
            n
        };
        self.stats.recorded.fetch_add(recorded, Ordering::Relaxed);
        let batch: ClickBatch = {
            let carry = self.carry.lock().unwrap_or_else(|e| e.into_inner());
            if carry.is_empty() {
                return true;
            }
            carry.iter().map(|(code, (n, last))| (code.to_string(), *n, *last)).collect()
        };
        let total: u64 = batch.iter().map(|b| b.1).sum();
        match writer.submit(Change::Clicks { batch: batch.clone(), day: crate::time_util::day_of(now) }).await {
            Ok(Outcome::ClicksAdded) => {
                let mut carry = self.carry.lock().unwrap_or_else(|e| e.into_inner());
                for (code, n, _) in &batch {
                    if let Some(e) = carry.get_mut(code.as_str()) {
                        e.0 -= n;
                        if e.0 == 0 {
                            carry.remove(code.as_str());
                        }
                    }
                }
                self.stats.flushed.fetch_add(total, Ordering::Relaxed);
                self.stats.flushes.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(clicks.flushed = total, clicks.links = batch.len(), "clicks flushed");
                true
            }
            other => {
                self.stats.flush_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(clicks.pending = total, result = ?other.err(), "click flush failed; counts kept for the next flush");
                false
            }
        }
    }

    /// Flushes every interval (or sooner when many links wait) until `shutdown` changes. The
    /// final flush at shutdown is the caller's (it must happen before the writer stops).
    pub async fn run_flusher(&self, writer: Writer, mut shutdown: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.interval) => {}
                _ = self.wake.notified() => {}
                _ = shutdown.changed() => return,
            }
            if !self.flush(&writer).await {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// The flusher's own behaviour, against a real SQLite file and the real writer: when it runs is
/// the test's choice, which the HTTP suite cannot make.
#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use futures_util::future::BoxFuture;
    use sqlx::ConnectOptions;

    use super::*;
    use crate::{
        cache::Resolved,
        db::{
            self,
            links::Scope,
            writer::{Announce, Change},
        },
    };

    /// No caches to tell: these tests have none.
    struct NoCaches;

    impl Announce for NoCaches {
        fn committed<'a>(&'a self, _: &'a [String], _: &'a [i64]) -> BoxFuture<'a, ()> {
            Box::pin(async {})
        }
        fn take_applied(&self) -> Vec<i64> {
            Vec::new()
        }
        fn requeue_applied(&self, _: Vec<i64>) {}
    }

    struct Fixture {
        url: String,
        writer: Writer,
        _stop: watch::Sender<bool>,
        _dir: tempfile::TempDir,
    }

    /// A migrated database in a temp dir and its writer (busy timeout 100 ms).
    async fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("clicks.db").display());
        let conn = db::open_writer(&url, Duration::from_millis(100)).await.unwrap();
        let (stop, rx) = watch::channel(false);
        let (writer, _task) = Writer::spawn(
            crate::db::WriterConn::Sqlite(conn),
            Arc::new(NoCaches),
            Arc::new(|| "unused".to_string()),
            512,
            rx,
        );
        Fixture { url, writer, _stop: stop, _dir: dir }
    }

    impl Fixture {
        async fn conn(&self) -> sqlx::SqliteConnection {
            db::connect_options(&self.url, Duration::from_secs(5)).unwrap().connect().await.unwrap()
        }

        /// Creates the link and returns what a cache would hold for it.
        async fn create(&self, code: &str) -> Arc<CachedLink> {
            let url = format!("https://example.com/{code}");
            let change = Change::Create {
                code: Some(code.into()),
                url: url.clone(),
                status: 302,
                expires_at: None,
                created_by: None,
            };
            self.writer.submit(change).await.unwrap();
            match Resolved::from_parts(code, &url, 302, None).unwrap() {
                Resolved::Found(link) => link,
                Resolved::Missing => unreachable!("from_parts of a valid row"),
            }
        }

        async fn db_clicks(&self) -> HashMap<String, i64> {
            sqlx::query_as::<_, (String, i64)>("SELECT short_code, clicks FROM link_mappings")
                .fetch_all(&mut self.conn().await)
                .await
                .unwrap()
                .into_iter()
                .collect()
        }

        /// What the API reports for a link: flushed plus still buffered.
        async fn reported(&self, clicks: &Clicks, code: &str) -> u64 {
            self.db_clicks().await.get(code).copied().unwrap_or(0) as u64 + clicks.pending_for(code)
        }
    }

    fn clicks(interval: Duration) -> Arc<Clicks> {
        Arc::new(Clicks::new(true, None, interval, 10_000))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_flusher_writes_100k_clicks_on_1000_codes_in_a_handful_of_transactions() {
        let f = fixture().await;
        let clicks = clicks(Duration::from_secs(1));
        let mut links = Vec::new();
        for i in 0..1000 {
            links.push(f.create(&format!("bulk{i}")).await);
        }
        let (stop, rx) = watch::channel(false);
        let flusher = {
            let (c, w) = (clicks.clone(), f.writer.clone());
            tokio::spawn(async move { c.run_flusher(w, rx).await })
        };
        let before = clicks.stats.flushes.load(Ordering::Relaxed);
        for _ in 0..100 {
            for l in &links {
                clicks.record(l);
            }
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while f.db_clicks().await.values().sum::<i64>() != 100_000 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(f.db_clicks().await.values().sum::<i64>(), 100_000, "clicks flushed");
        let txs = clicks.stats.flushes.load(Ordering::Relaxed) - before;
        assert!((1..=5).contains(&txs), "{txs} flush transactions for 100,000 clicks");
        assert!(f.db_clicks().await.values().all(|n| *n == 100));
        let _ = stop.send(true);
        flusher.await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn deleting_a_link_with_pending_clicks_does_not_fail_the_flush() {
        let f = fixture().await;
        let clicks = clicks(Duration::from_secs(3600));
        let (doomed, keeper) = (f.create("doomed").await, f.create("keeper").await);
        for _ in 0..5 {
            clicks.record(&doomed);
            clicks.record(&keeper);
        }
        f.writer.submit(Change::Delete { code: "doomed".into(), scope: Scope::Every }).await.unwrap();
        assert!(clicks.flush(&f.writer).await);
        assert_eq!(clicks.stats.flush_failures.load(Ordering::Relaxed), 0);
        let got = f.db_clicks().await;
        assert_eq!(got.get("keeper"), Some(&5));
        assert!(!got.contains_key("doomed"));
        // Re-created under the same code, it starts from zero.
        f.create("doomed").await;
        assert_eq!(f.reported(&clicks, "doomed").await, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_flush_keeps_its_counts_and_a_later_one_writes_them() {
        let f = fixture().await;
        let clicks = clicks(Duration::from_secs(3600));
        let locked = f.create("locked").await;
        for _ in 0..7 {
            clicks.record(&locked);
        }
        // Another connection holds the write lock: the flush cannot commit.
        let mut blocker = f.conn().await;
        sqlx::query("BEGIN IMMEDIATE").execute(&mut blocker).await.unwrap();
        assert!(!clicks.flush(&f.writer).await);
        assert_eq!(clicks.stats.flush_failures.load(Ordering::Relaxed), 1);
        assert_eq!(f.reported(&clicks, "locked").await, 7, "counts kept while the flush failed");
        sqlx::query("ROLLBACK").execute(&mut blocker).await.unwrap();

        clicks.record(&locked);
        assert!(clicks.flush(&f.writer).await);
        assert_eq!(f.db_clicks().await["locked"], 8);
        assert_eq!(f.reported(&clicks, "locked").await, 8);
    }
}
