//! [`AppState`]: the handles every handler may use. Cloning it is one reference-count bump.

use std::{ops::Deref, path::PathBuf, sync::Arc, time::Instant};

use crate::db::Db;
use axum::http::HeaderValue;

use crate::{clicks::Clicks, config::Config, db::writer::Writer, links::resolve::Resolver, observe::Metrics};

/// Shared state of one running service.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

/// What [`AppState`] holds.
pub struct Inner {
    /// The configuration the service started with.
    pub config: Config,
    /// The read pool (API reads, key lookups, health).
    pub db: Db,
    /// The read-through resolver (L1, Redis, SQLite) and its counters.
    pub resolver: Arc<Resolver>,
    /// The single writer (group commit).
    pub writer: Writer,
    /// The click buffer.
    pub clicks: Arc<Clicks>,
    /// Recently verified API keys.
    pub key_cache: Arc<crate::auth::KeyCache>,
    /// The rate limiter.
    pub limiter: Arc<crate::ratelimit::RateLimiter>,
    /// The Prometheus registry of this instance.
    pub metrics: Arc<Metrics>,
    /// Connections open and accepted (kept by `net`).
    pub connections: Arc<crate::net::ConnStats>,
    /// The SQLite file (empty for an in-memory database), for readiness checks.
    pub db_file: PathBuf,
    /// Its inode when the service opened it: a replaced file makes the service unready.
    pub db_inode: Option<u64>,
    /// When the service started.
    pub started: Instant,
    /// `Cache-Control` of permanent redirects, built once from the configuration.
    pub permanent_cache_control: HeaderValue,
    /// The last `INFO` fields `/health/redis` showed, and when they were asked.
    pub redis_info: tokio::sync::Mutex<Option<(Instant, serde_json::Map<String, serde_json::Value>)>>,
    /// What a target URL must not point at: the public base and the bound address.
    pub own_origin: crate::links::target::OwnOrigin,
}

impl AppState {
    /// Wraps the parts.
    pub fn new(inner: Inner) -> Self {
        AppState(Arc::new(inner))
    }

    /// Copies every component's counters into the registry (on every scrape of `/metrics`).
    pub fn export_metrics(&self) {
        let m = &self.metrics;
        self.resolver.export_metrics(m);
        self.clicks.export_metrics(m);
        self.writer.stats.export_metrics(m);
        self.key_cache.export_metrics(m);
        self.limiter.export_metrics(m);
        let pool = |s: &'static str| vec![metrics::Label::new("state", s)];
        m.gauge("shortener_db_read_pool_connections", pool("open")).set(f64::from(self.db.pool_stats().0));
        m.gauge("shortener_db_read_pool_connections", pool("idle")).set(self.db.pool_stats().1 as f64);
        m.gauge("shortener_uptime_seconds", vec![]).set(self.started.elapsed().as_secs_f64());
        let conns = &self.connections;
        m.gauge("shortener_connections_open", vec![]).set(conns.open.load(std::sync::atomic::Ordering::Relaxed) as f64);
        m.copy_counter("shortener_connections_accepted_total", vec![], &conns.accepted);
        m.copy_counter("shortener_connections_waited_for_turn_total", vec![], &conns.waited_for_turn);
        m.copy_counter("shortener_connections_direct_answers_total", vec![], &conns.direct);
    }
}

impl Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}
