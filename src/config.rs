//! Configuration: every setting the service reads, typed, from the environment only. A leaf:
//! it imports nothing of the crate, so every module may depend on it.
//!
//! `.env` is loaded by `main` before this runs (when present). A wrong value stops startup with
//! a message that names the variable; secrets never appear in `Debug` output.

use std::{fmt, net::SocketAddr, str::FromStr, time::Duration};

use url::Url;

use ipnet::IpNet;

/// A configuration error: always names the variable and what was wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("invalid {var}={value:?}: {reason}")]
pub struct ConfigError {
    /// The environment variable.
    pub var: &'static str,
    /// The value found (redacted for secrets).
    pub value: String,
    /// Why it was refused.
    pub reason: String,
}

/// Every setting of the service. Built by [`Config::from_env`]; tests build it with
/// [`Config::for_tests`] and change fields directly.
#[derive(Clone)]
pub struct Config {
    /// `LISTEN_ADDR`: where the HTTP server binds. Default `127.0.0.1:8080`.
    pub listen_addr: SocketAddr,
    /// `LISTEN_BACKLOG`: the listen(2) backlog. Default 4096 (the kernel caps it at `somaxconn`).
    pub listen_backlog: u32,
    /// `DATABASE_URL`: SQLite URL or path. Default `sqlite://data/shortener.db`; the file and its
    /// folder are created when missing.
    pub database_url: String,
    /// `DB_READ_POOL_SIZE`: read connections. Default: 2 per core, at least 4.
    pub db_read_pool_size: u32,
    /// `DB_ACQUIRE_TIMEOUT_MS`: longest wait for a read connection before the request is shed
    /// with 503. Default 1000.
    pub db_acquire_timeout: Duration,
    /// `DB_BUSY_TIMEOUT_MS`: SQLite busy timeout. Default 5000.
    pub db_busy_timeout: Duration,
    /// `WRITE_BATCH_MAX`: most changes the writer commits in one transaction. Default 512.
    pub write_batch_max: usize,
    /// `REDIS_ENABLED`: false runs on L1 + SQLite only. Default true.
    pub redis_enabled: bool,
    /// `REDIS_URL`: default `redis://127.0.0.1:6379`. May carry a password (redacted in Debug).
    pub redis_url: String,
    /// `REDIS_KEY_PREFIX`: namespace of every key this service writes. Default `shortener:`.
    pub redis_key_prefix: String,
    /// `REDIS_POOL_SIZE`: deadpool-redis pool size. Default 8.
    pub redis_pool_size: usize,
    /// `REDIS_TIMEOUT_MS`: budget of one Redis call on the request path. Default 25: a loopback
    /// round trip takes well under a millisecond, but under a full load the reply can wait
    /// behind thousands of runnable requests on two cores, and a process must not mistake its
    /// own queueing for a Redis failure (that would send the load to SQLite, which costs more).
    pub redis_timeout: Duration,
    /// `REDIS_CONNECT_TIMEOUT_MS`: budget to open (or check out) a connection. Default 250.
    pub redis_connect_timeout: Duration,
    /// `REDIS_BREAKER_THRESHOLD`: consecutive failures that open the breaker. Default 5.
    pub redis_breaker_threshold: u32,
    /// `REDIS_PROBE_INTERVAL_MS`: how often a probe checks an unhealthy Redis. Default 500.
    pub redis_probe_interval: Duration,
    /// `PUBLIC_BASE_URL`: base of `short_url`, e.g. `https://s.example.com`. Default
    /// `http://LISTEN_ADDR`.
    pub public_base_url: Url,
    /// `L1_CAPACITY`: entries in the in-process cache; 0 disables it. Default 100000.
    pub l1_capacity: u64,
    /// `L1_TTL_MS`: life of an L1 entry. Changes reach every instance's L1 at once (locally,
    /// and through Redis pub/sub for the others); the TTL is the backstop for an announcement
    /// lost while an instance was not subscribed. Default 60000.
    pub l1_ttl: Duration,
    /// `NEGATIVE_CACHE_TTL_SECS`: life of a "no such code" entry in Redis. Default 60.
    pub negative_ttl: Duration,
    /// `CODE_LENGTH`: length of random codes. Default 7 (62^7 ≈ 3.5e12 codes).
    pub code_length: usize,
    /// `PERMANENT_REDIRECT_MAX_AGE_SECS`: `Cache-Control: private, max-age=N` on 301/308 so
    /// browsers don't pin them forever. Default 3600.
    pub permanent_redirect_max_age: u64,
    /// `MAX_BODY_BYTES`: largest accepted request body. Default 16384.
    pub max_body_bytes: usize,
    /// `REQUEST_TIMEOUT_MS`: a request still unanswered after this gets 503. Default 10000.
    pub request_timeout: Duration,
    /// `HEADER_READ_TIMEOUT_MS`: a client must send its request head within this, counted from the
    /// accept or the previous answer (so it is also the keep-alive idle limit). Default 10000.
    pub header_read_timeout: Duration,
    /// `SHUTDOWN_TIMEOUT_SECS`: how long in-flight requests may take after SIGTERM. Default 20.
    pub shutdown_timeout: Duration,
    /// `CLICK_COUNTING`: count clicks on GET redirects. Default true.
    pub click_counting: bool,
    /// `CLICK_FLUSH_INTERVAL_MS`: how often buffered clicks are written. Default 30000.
    pub click_flush_interval: Duration,
    /// `CLICK_FLUSH_MAX_PENDING`: flush early when this many links have buffered clicks.
    /// Default 1000000.
    pub click_flush_max_pending: usize,
    /// `CLICK_BOT_FILTER`: don't count requests whose User-Agent matches a bot pattern.
    /// Default true.
    pub click_bot_filter: bool,
    /// `CLICK_BOT_PATTERNS`: comma-separated, case-insensitive User-Agent fragments. Default:
    /// [`crate::clicks::DEFAULT_BOT_PATTERNS`].
    pub click_bot_patterns: Vec<String>,
    /// `AUTH_CACHE_TTL_MS`: how long a verified API key is trusted without a database read.
    /// Revocations are announced through Redis and apply at once while it is up. Default 2000;
    /// 0 = look every key up.
    pub auth_cache_ttl: Duration,
    /// `METRICS_TOKEN`: the operator endpoints (`/metrics`, `/health/db`, `/health/redis`,
    /// `/health/cache`) answer only clients on loopback; when this is set they answer instead
    /// any client with `Authorization: Bearer <token>`, and no other.
    pub metrics_token: Option<String>,
    /// `CACHE_WARM_TOP_N`: at startup, load the N most-clicked links into the caches (in the
    /// background; readiness does not wait). Default 0 (off).
    pub cache_warm_top_n: u32,
    /// `RATE_LIMIT_CREATE_PER_MINUTE`: link creations per API key. Default 60; 0 = off.
    pub rate_create_per_key: Limit,
    /// `RATE_LIMIT_CREATE_PER_IP_PER_MINUTE`: link creations per client IP. Default 120; 0 = off.
    pub rate_create_per_ip: Limit,
    /// `RATE_LIMIT_API_PER_IP_PER_MINUTE`: every `/api` call per client IP. Default 1200; 0 = off.
    pub rate_api_per_ip: Limit,
    /// `RATE_LIMIT_REDIRECT_PER_IP_PER_MINUTE`: redirects per client IP. Default 0 (off): a load
    /// test or a large NAT must not trip it; turn it on under attack.
    pub rate_redirect_per_ip: Limit,
    /// `RATE_LIMIT_AUTH_FAILURES_PER_IP_PER_MINUTE`: failed authentications (unknown or revoked
    /// API keys) per client IP; past it, the address gets 429 without its keys being looked up.
    /// Default 30; 0 = off.
    pub rate_auth_failures_per_ip: Limit,
    /// `TRUSTED_PROXIES`: comma-separated addresses/CIDRs whose `X-Forwarded-For` is believed.
    /// Default none.
    pub trusted_proxies: Vec<IpNet>,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("listen_addr", &self.listen_addr)
            .field("listen_backlog", &self.listen_backlog)
            .field("database_url", &self.database_url)
            .field("db_read_pool_size", &self.db_read_pool_size)
            .field("redis_enabled", &self.redis_enabled)
            .field("redis_url", &redact_url(&self.redis_url))
            .field("redis_key_prefix", &self.redis_key_prefix)
            .field("redis_timeout", &self.redis_timeout)
            .field("public_base_url", &self.public_base_url.as_str())
            .field("l1_capacity", &self.l1_capacity)
            .field("l1_ttl", &self.l1_ttl)
            .field("metrics_token", &self.metrics_token.as_ref().map(|_| "REDACTED"))
            .finish_non_exhaustive()
    }
}

/// Hides the password of a `redis://user:pass@host` URL.
pub fn redact_url(raw: &str) -> String {
    match Url::parse(raw) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("REDACTED"));
            u.to_string()
        }
        Ok(u) => u.to_string(),
        Err(_) => "<unparseable>".to_string(),
    }
}

fn lookup(var: &'static str) -> Option<String> {
    std::env::var(var).ok().filter(|v| !v.trim().is_empty())
}

fn parse<T: FromStr>(var: &'static str, default: T) -> Result<T, ConfigError>
where
    T::Err: fmt::Display,
{
    match lookup(var) {
        None => Ok(default),
        Some(v) => v.trim().parse().map_err(|e: T::Err| ConfigError { var, value: v.clone(), reason: e.to_string() }),
    }
}

fn millis(var: &'static str, default: u64) -> Result<Duration, ConfigError> {
    parse(var, default).map(Duration::from_millis)
}

fn boolean(var: &'static str, default: bool) -> Result<bool, ConfigError> {
    match lookup(var) {
        None => Ok(default),
        Some(v) => match v.trim().to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(true),
            "0" | "false" | "no" | "off" => Ok(false),
            _ => Err(ConfigError { var, value: v, reason: "expected true or false".into() }),
        },
    }
}

fn check(ok: bool, var: &'static str, value: impl fmt::Display, reason: &str) -> Result<(), ConfigError> {
    if ok {
        Ok(())
    } else {
        Err(ConfigError { var, value: value.to_string(), reason: reason.into() })
    }
}

impl Config {
    /// Reads every setting from the environment; see the field docs for names and defaults.
    pub fn from_env() -> Result<Self, ConfigError> {
        let listen_addr: SocketAddr = parse("LISTEN_ADDR", SocketAddr::from(([127, 0, 0, 1], 8080)))?;
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get()) as u32;
        let public_base_url = match lookup("PUBLIC_BASE_URL") {
            None => default_base_url(listen_addr),
            Some(v) => {
                parse_base_url(&v).map_err(|reason| ConfigError { var: "PUBLIC_BASE_URL", value: v.clone(), reason })?
            }
        };
        let redis_url = lookup("REDIS_URL").unwrap_or_else(|| "redis://127.0.0.1:6379".into());
        check(
            redis_url.starts_with("redis://")
                || redis_url.starts_with("rediss://")
                || redis_url.starts_with("redis+unix://")
                || redis_url.starts_with("unix://"),
            "REDIS_URL",
            redact_url(&redis_url),
            "expected a redis:// URL",
        )?;
        let cfg = Config {
            listen_addr,
            listen_backlog: parse("LISTEN_BACKLOG", 4096)?,
            database_url: lookup("DATABASE_URL").unwrap_or_else(|| "sqlite://data/shortener.db".into()),
            db_read_pool_size: parse("DB_READ_POOL_SIZE", (cores * 2).max(4))?,
            db_acquire_timeout: millis("DB_ACQUIRE_TIMEOUT_MS", 1000)?,
            db_busy_timeout: millis("DB_BUSY_TIMEOUT_MS", 5000)?,
            write_batch_max: parse("WRITE_BATCH_MAX", 512)?,
            redis_enabled: boolean("REDIS_ENABLED", true)?,
            redis_url,
            redis_key_prefix: lookup("REDIS_KEY_PREFIX").unwrap_or_else(|| "shortener:".into()),
            redis_pool_size: parse("REDIS_POOL_SIZE", 8)?,
            redis_timeout: millis("REDIS_TIMEOUT_MS", 25)?,
            redis_connect_timeout: millis("REDIS_CONNECT_TIMEOUT_MS", 250)?,
            redis_breaker_threshold: parse("REDIS_BREAKER_THRESHOLD", 5)?,
            redis_probe_interval: millis("REDIS_PROBE_INTERVAL_MS", 500)?,
            public_base_url,
            l1_capacity: parse("L1_CAPACITY", 100_000)?,
            l1_ttl: millis("L1_TTL_MS", 60_000)?,
            negative_ttl: parse("NEGATIVE_CACHE_TTL_SECS", 60).map(Duration::from_secs)?,
            code_length: parse("CODE_LENGTH", 7)?,
            permanent_redirect_max_age: parse("PERMANENT_REDIRECT_MAX_AGE_SECS", 3600)?,
            max_body_bytes: parse("MAX_BODY_BYTES", 16 * 1024)?,
            request_timeout: millis("REQUEST_TIMEOUT_MS", 10_000)?,
            header_read_timeout: millis("HEADER_READ_TIMEOUT_MS", 10_000)?,
            shutdown_timeout: parse("SHUTDOWN_TIMEOUT_SECS", 20).map(Duration::from_secs)?,
            click_counting: boolean("CLICK_COUNTING", true)?,
            click_flush_interval: millis("CLICK_FLUSH_INTERVAL_MS", 30_000)?,
            click_flush_max_pending: parse("CLICK_FLUSH_MAX_PENDING", 1_000_000)?,
            click_bot_filter: boolean("CLICK_BOT_FILTER", true)?,
            click_bot_patterns: match lookup("CLICK_BOT_PATTERNS") {
                Some(v) => v.split(',').map(|p| p.trim().to_string()).filter(|p| !p.is_empty()).collect(),
                None => default_bot_patterns(),
            },
            metrics_token: lookup("METRICS_TOKEN"),
            auth_cache_ttl: millis("AUTH_CACHE_TTL_MS", 2000)?,
            rate_create_per_key: Limit::per_minute(parse("RATE_LIMIT_CREATE_PER_MINUTE", 60)?),
            rate_create_per_ip: Limit::per_minute(parse("RATE_LIMIT_CREATE_PER_IP_PER_MINUTE", 120)?),
            rate_api_per_ip: Limit::per_minute(parse("RATE_LIMIT_API_PER_IP_PER_MINUTE", 1200)?),
            rate_redirect_per_ip: Limit::per_minute(parse("RATE_LIMIT_REDIRECT_PER_IP_PER_MINUTE", 0)?),
            rate_auth_failures_per_ip: Limit::per_minute(parse("RATE_LIMIT_AUTH_FAILURES_PER_IP_PER_MINUTE", 30)?),
            trusted_proxies: match lookup("TRUSTED_PROXIES") {
                None => Vec::new(),
                Some(v) => parse_trusted(&v).map_err(|reason| ConfigError {
                    var: "TRUSTED_PROXIES",
                    value: v.clone(),
                    reason,
                })?,
            },
            cache_warm_top_n: parse("CACHE_WARM_TOP_N", 0)?,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks ranges that the types alone don't.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check((5..=64).contains(&self.code_length), "CODE_LENGTH", self.code_length, "must be 5..=64")?;
        check(self.db_read_pool_size >= 1, "DB_READ_POOL_SIZE", self.db_read_pool_size, "must be at least 1")?;
        check(self.redis_pool_size >= 1, "REDIS_POOL_SIZE", self.redis_pool_size, "must be at least 1")?;
        check(!self.redis_timeout.is_zero(), "REDIS_TIMEOUT_MS", 0, "must be above 0")?;
        check(self.redis_breaker_threshold >= 1, "REDIS_BREAKER_THRESHOLD", 0, "must be at least 1")?;
        check(self.write_batch_max >= 1, "WRITE_BATCH_MAX", 0, "must be at least 1")?;
        check(self.max_body_bytes >= 256, "MAX_BODY_BYTES", self.max_body_bytes, "must be at least 256")?;
        check(!self.click_flush_interval.is_zero(), "CLICK_FLUSH_INTERVAL_MS", 0, "must be above 0")?;
        check(!self.l1_ttl.is_zero(), "L1_TTL_MS", 0, "must be above 0 (use L1_CAPACITY=0 to disable L1)")?;
        check(
            self.header_read_timeout >= Duration::from_millis(100),
            "HEADER_READ_TIMEOUT_MS",
            self.header_read_timeout.as_millis(),
            "must be at least 100",
        )?;
        Ok(())
    }

    /// A configuration for tests: loopback port 0, the given database and Redis, small budgets.
    pub fn for_tests(database_url: &str, redis_url: Option<&str>) -> Self {
        Config {
            listen_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            listen_backlog: 1024,
            database_url: database_url.to_string(),
            db_read_pool_size: 4,
            db_acquire_timeout: Duration::from_millis(2000),
            db_busy_timeout: Duration::from_millis(5000),
            write_batch_max: 512,
            redis_enabled: redis_url.is_some(),
            redis_url: redis_url.unwrap_or("redis://127.0.0.1:1").to_string(),
            redis_key_prefix: "shortener:".into(),
            redis_pool_size: 4,
            redis_timeout: Duration::from_millis(250),
            redis_connect_timeout: Duration::from_millis(250),
            redis_breaker_threshold: 3,
            redis_probe_interval: Duration::from_millis(100),
            public_base_url: Url::parse("http://sho.rt/").expect("static url"),
            l1_capacity: 10_000,
            l1_ttl: Duration::from_secs(10),
            negative_ttl: Duration::from_secs(60),
            code_length: 7,
            permanent_redirect_max_age: 3600,
            max_body_bytes: 16 * 1024,
            request_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(2),
            shutdown_timeout: Duration::from_secs(10),
            click_counting: true,
            click_flush_interval: Duration::from_millis(200),
            click_flush_max_pending: 10_000,
            click_bot_filter: true,
            click_bot_patterns: default_bot_patterns(),
            metrics_token: None,
            auth_cache_ttl: Duration::from_millis(2000),
            rate_create_per_key: Limit::per_minute(0),
            rate_create_per_ip: Limit::per_minute(0),
            rate_api_per_ip: Limit::per_minute(0),
            rate_redirect_per_ip: Limit::per_minute(0),
            rate_auth_failures_per_ip: Limit::per_minute(0),
            trusted_proxies: Vec::new(),
            cache_warm_top_n: 0,
        }
    }
}

/// One limit: `limit` requests per `period`. A limit of 0 is off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// Requests allowed per period (and the largest burst).
    pub limit: u32,
    /// The period.
    pub period: Duration,
}

impl Limit {
    /// `n` per minute.
    pub fn per_minute(n: u32) -> Self {
        Limit { limit: n, period: Duration::from_secs(60) }
    }

    /// Whether the limit is on.
    pub fn enabled(&self) -> bool {
        self.limit > 0
    }
}

/// Parses `TRUSTED_PROXIES`: comma-separated addresses or CIDR ranges.
pub fn parse_trusted(raw: &str) -> Result<Vec<IpNet>, String> {
    raw.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| format!("{s:?} is not an address or CIDR range"))
        })
        .collect()
}

fn default_bot_patterns() -> Vec<String> {
    crate::clicks::DEFAULT_BOT_PATTERNS.iter().map(|s| s.to_string()).collect()
}

fn default_base_url(addr: SocketAddr) -> Url {
    Url::parse(&format!("http://{addr}/")).expect("a socket address forms a valid URL")
}

/// Parses `PUBLIC_BASE_URL`: http(s), a host, no query or fragment; always ends with `/`.
pub fn parse_base_url(raw: &str) -> Result<Url, String> {
    let mut u = Url::parse(raw.trim()).map_err(|e| e.to_string())?;
    if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() {
        return Err("expected an http(s) URL with a host".into());
    }
    if u.query().is_some() || u.fragment().is_some() {
        return Err("must not have a query or fragment".into());
    }
    if !u.path().ends_with('/') {
        let p = format!("{}/", u.path());
        u.set_path(&p);
    }
    Ok(u)
}
