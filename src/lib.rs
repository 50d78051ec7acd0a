//! `shortener` — a self-hosted URL shortener built for one small VM and real traffic.
//!
//! Module map, in reading order:
//!
//! - [`config`]: every setting, read from the environment ([`config::Config::from_env`]).
//! - [`telemetry`]: tracing setup (`LOG_FORMAT=json|pretty`), logs to stderr.
//! - [`startup`]: builds pools and state, runs migrations, binds, serves, shuts down gracefully.
//! - [`serve`]: one task per connection; hyper is held only while a connection is busy.
//! - [`state`]: [`state::AppState`], the handles every handler may use.
//! - [`error`]: [`error::ApiError`], the one JSON error envelope of the API.
//! - [`http`]: routers and handlers only — the redirect hot path, the link API, health.
//! - [`links`]: the domain — short codes, target URLs, and the read-through resolver.
//! - [`cache`]: the in-process L1 and the Redis tier (pool, budgets, breaker, Lua scripts).
//! - [`db`]: all SQL — pools, the group-committing writer, link and key queries.
//! - [`clicks`]: click counting without a database write per redirect, and its flusher.
//! - [`observe`]: the Prometheus registry and what `/metrics` shows.
//! - [`ratelimit`]: GCRA limits shared through Redis, with a per-process fallback.
//! - [`striped`]: per-thread counters for the hot path.
//! - [`batch`]: coalescing of concurrent Redis and SQLite calls into batches (the miss path).
//! - [`cli`]: the command line (`serve`, `migrate`, `keys …`, `links …`).

pub mod auth;
pub mod batch;
pub mod cache;
pub mod cli;
pub mod clicks;
pub mod config;
pub mod db;
pub mod error;
pub mod http;
pub mod links;
pub mod observe;
pub mod ratelimit;
pub mod serve;
pub mod startup;
pub mod state;
pub mod striped;
pub mod telemetry;
pub mod time_util;
