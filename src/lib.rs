//! `shortener` — a self-hosted URL shortener built for one small VM and real traffic.
//!
//! Module map. Dependencies point one way, down this list (`.ci/module_cycles.py` fails CI on an
//! import cycle between these modules):
//!
//! - [`cli`]: the command line (`serve`, `migrate`, `keys …`, `links …`).
//! - [`startup`]: builds pools and state, runs migrations, binds, serves, shuts down gracefully;
//!   the one place that wires components to each other (the writer's announcements to the
//!   caches, the Redis tier's view of the outbox, test hooks).
//! - [`http`]: routers and handlers only — the redirect hot path, the link API, health — the
//!   gates in front of them (limits, authentication, operator endpoints), and the one decision
//!   which requests skip the router ([`http::Surface`]).
//! - [`state`]: [`state::AppState`], the handles every handler may use.
//! - `error`: `error::ApiError`, the one JSON error envelope of the API.
//! - The domain: [`links`] (short codes, target URLs, the read-through resolver), `auth` (key
//!   verification and what is remembered about presented keys), `clicks` (counting without a
//!   database write per redirect, and its flusher), [`ratelimit`] (GCRA limits shared through
//!   Redis, with a per-process fallback), [`qr`] (QR code images of a text, SVG or PNG).
//! - [`cache`]: what the caches hold ([`cache::Resolved`]), the in-process L1 and the link cache
//!   in Redis (batched reads, guarded write-backs); `invalidation`: the bus that carries every
//!   change to every cache and waits for every instance to confirm it (publish, confirmations,
//!   pings and L1 trust, listen, replay from the outbox, revocation acknowledgements).
//! - `redis_client`: reaching Redis (pool, budgets, the breaker) and, in `redis_client::names`,
//!   every key and channel name.
//! - [`db`]: all SQL — pools, the group-committing writer, link and key queries. It knows no
//!   cache: the writer announces committed changes through [`db::writer::Announce`].
//! - Leaves: [`config`] (every setting, from the environment), `observe` (the Prometheus
//!   registry; each component exports its own metrics into it), `batch` (coalescing concurrent
//!   calls), `striped` (per-thread counters), [`time_util`], [`telemetry`] (logs to stderr),
//!   [`net`] (connections: park, timeouts, drain, HTTP/1 and HTTP/2 for any hyper service;
//!   sockets inherited by socket activation).
//!
//! `pub` modules are what the binary, the CLI, the examples and the tests use; the others are
//! `pub(crate)`.

pub(crate) mod auth;
pub(crate) mod batch;
pub mod cache;
pub mod cli;
pub(crate) mod clicks;
pub mod config;
pub mod db;
pub(crate) mod error;
pub mod http;
pub(crate) mod invalidation;
pub mod links;
pub mod net;
pub(crate) mod observe;
pub mod qr;
pub mod ratelimit;
pub(crate) mod redis_client;
pub mod startup;
pub mod state;
pub(crate) mod striped;
pub mod telemetry;
pub mod time_util;
