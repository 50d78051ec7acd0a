//! [`AppState`]: the handles every handler may use. Cloning it is one reference-count bump.

use std::{ops::Deref, path::PathBuf, sync::Arc, time::Instant};

use axum::http::HeaderValue;
use sqlx::SqlitePool;

use crate::{clicks::Clicks, config::Config, db::writer::Writer, links::resolve::Resolver, observe::Metrics};

/// Shared state of one running service.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

/// What [`AppState`] holds.
pub struct Inner {
    /// The configuration the service started with.
    pub config: Config,
    /// The read pool (API reads, key lookups, health).
    pub db: SqlitePool,
    /// The read-through resolver (L1, Redis, SQLite) and its counters.
    pub resolver: Arc<Resolver>,
    /// The single writer (group commit).
    pub writer: Writer,
    /// The click buffer.
    pub clicks: Arc<Clicks>,
    /// Recently verified API keys.
    pub key_cache: Arc<crate::http::auth::KeyCache>,
    /// The rate limiter.
    pub limiter: Arc<crate::ratelimit::RateLimiter>,
    /// The Prometheus registry of this instance.
    pub metrics: Arc<Metrics>,
    /// The SQLite file (empty for an in-memory database), for readiness checks.
    pub db_file: PathBuf,
    /// Its inode when the service opened it: a replaced file makes the service unready.
    pub db_inode: Option<u64>,
    /// When the service started.
    pub started: Instant,
    /// `Cache-Control` of permanent redirects, built once from the configuration.
    pub permanent_cache_control: HeaderValue,
    /// What a target URL must not point at: the public base and the bound address.
    pub own_origin: crate::links::target::OwnOrigin,
}

impl AppState {
    /// Wraps the parts.
    pub fn new(inner: Inner) -> Self {
        AppState(Arc::new(inner))
    }
}

impl Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}
