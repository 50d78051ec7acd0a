//! Configuration: every setting the service reads, typed, from the environment only, in one
//! struct per concern ([`Http`], [`Db`], [`Redis`], [`Cache`], [`Links`], [`Clicks`],
//! [`Limits`], [`Auth`], [`Admin`]). A leaf: it imports nothing of the crate, so every module may depend on
//! it, and each takes only its own part.
//!
//! `.env` is loaded by `main` before this runs (when present). Every default is written once,
//! in [`Config::from_source`]: tests start from the same defaults ([`Config::for_tests`]). A
//! wrong value stops startup with a message that names the variable; secrets never appear in
//! `Debug` output.

use std::{fmt, net::SocketAddr, str::FromStr, time::Duration};

use ipnet::IpNet;
use url::Url;

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
#[derive(Clone, Debug)]
pub struct Config {
    /// The HTTP server.
    pub http: Http,
    /// The database.
    pub db: Db,
    /// Redis.
    pub redis: Redis,
    /// The caches in front of the database.
    pub cache: Cache,
    /// Links: codes and redirects.
    pub links: Links,
    /// Click counting.
    pub clicks: Clicks,
    /// Rate limits and who the client is.
    pub limits: Limits,
    /// API keys and operator access.
    pub auth: Auth,
    /// The admin web app (`/admin`).
    pub admin: Admin,
}

/// The HTTP server.
#[derive(Clone)]
pub struct Http {
    /// `LISTEN_ADDR`: where the HTTP server binds. Default `127.0.0.1:8080`.
    pub listen_addr: SocketAddr,
    /// `LISTEN_BACKLOG`: the listen(2) backlog. Default 4096 (the kernel caps it at `somaxconn`).
    pub listen_backlog: u32,
    /// `PUBLIC_BASE_URL`: base of `short_url`, e.g. `https://s.example.com`. Default
    /// `http://LISTEN_ADDR`.
    pub public_base_url: Url,
    /// `MAX_BODY_BYTES`: largest accepted request body. Default 16384.
    pub max_body_bytes: usize,
    /// `REQUEST_TIMEOUT_MS`: a request still unanswered after this gets 503. Default 10000.
    pub request_timeout: Duration,
    /// `HEADER_READ_TIMEOUT_MS`: a client must send a request head whole within this, counted
    /// from the accept for the first request and from its first bytes for a later one.
    /// Default 10000.
    pub header_read_timeout: Duration,
    /// `KEEPALIVE_TIMEOUT_MS`: how long an idle keep-alive connection waits for the next request
    /// to begin, counted from the previous answer. Default 75000 (longer than the 60 s idle
    /// timeout of the usual load balancers, and than a person's pause between two links).
    pub keepalive_timeout: Duration,
    /// `SHUTDOWN_TIMEOUT_SECS`: how long in-flight requests may take after SIGTERM. Default 20.
    pub shutdown_timeout: Duration,
}

impl fmt::Debug for Http {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Http")
            .field("listen_addr", &self.listen_addr)
            .field("listen_backlog", &self.listen_backlog)
            .field("public_base_url", &self.public_base_url.as_str())
            .field("header_read_timeout", &self.header_read_timeout)
            .field("keepalive_timeout", &self.keepalive_timeout)
            .finish_non_exhaustive()
    }
}

/// The database.
#[derive(Clone)]
pub struct Db {
    /// `DATABASE_URL`: `sqlite://PATH` (or a plain path) or `postgres://USER:PASSWORD@HOST/DB`.
    /// Default `sqlite://data/shortener.db`; a SQLite file and its folder are created when
    /// missing. May carry a password (redacted in Debug and in messages).
    pub url: String,
    /// `DB_READ_POOL_SIZE`: read connections (SQLite); on PostgreSQL the pool has this many
    /// plus one for the writer. Default: 2 per core, at least 4.
    pub read_pool_size: u32,
    /// `DB_ACQUIRE_TIMEOUT_MS`: longest wait for a read connection before the request is shed
    /// with 503. Default 1000.
    pub acquire_timeout: Duration,
    /// `DB_BUSY_TIMEOUT_MS`: SQLite busy timeout; on PostgreSQL the `lock_timeout` and
    /// `statement_timeout` of every connection. Default 5000.
    pub busy_timeout: Duration,
    /// `WRITE_BATCH_MAX`: most changes the writer commits in one transaction. Default 512.
    pub write_batch_max: usize,
}

impl fmt::Debug for Db {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Db")
            .field("url", &redact_url(&self.url))
            .field("read_pool_size", &self.read_pool_size)
            .field("acquire_timeout", &self.acquire_timeout)
            .field("busy_timeout", &self.busy_timeout)
            .field("write_batch_max", &self.write_batch_max)
            .finish()
    }
}

/// Redis.
#[derive(Clone)]
pub struct Redis {
    /// `REDIS_ENABLED`: false runs on L1 + SQLite only. Default true.
    pub enabled: bool,
    /// `REDIS_URL`: default `redis://127.0.0.1:6379`. May carry a password (redacted in Debug).
    /// With Sentinel or Cluster it is not set by the operator; it then holds the first node of
    /// `REDIS_CLUSTER_NODES` (a plain connection there reaches the whole cluster's classic
    /// pub/sub, which one-shot commands use), or is empty for Sentinel.
    pub url: String,
    /// Where Redis is: one node (`REDIS_URL`), a Sentinel-watched master (`REDIS_SENTINELS` +
    /// `REDIS_SENTINEL_MASTER`) or a Cluster (`REDIS_CLUSTER_NODES`). At most one may be set.
    pub topology: Topology,
    /// `REDIS_KEY_PREFIX`: namespace of every key this service writes. Default `shortener:`.
    pub key_prefix: String,
    /// `REDIS_POOL_SIZE`: deadpool-redis pool size. Default 8.
    pub pool_size: usize,
    /// `REDIS_TIMEOUT_MS`: budget of one Redis call on the request path. Default 25: a loopback
    /// round trip takes well under a millisecond, but under a full load the reply can wait
    /// behind thousands of runnable requests on two cores, and a process must not mistake its
    /// own queueing for a Redis failure (that would send the load to SQLite, which costs more).
    pub timeout: Duration,
    /// `REDIS_CONNECT_TIMEOUT_MS`: budget to open (or check out) a connection. Default 250.
    pub connect_timeout: Duration,
    /// `REDIS_BREAKER_THRESHOLD`: consecutive failures that open the breaker. Default 5.
    pub breaker_threshold: u32,
    /// `REDIS_PROBE_INTERVAL_MS`: how often a probe checks an unhealthy Redis. Default 500.
    pub probe_interval: Duration,
    /// How to reach the nodes of a Sentinel or Cluster topology (with one node, `REDIS_URL`
    /// says it all: `rediss://` for TLS, `redis://user:password@…`).
    pub nodes: NodeAccess,
}

/// Credentials and TLS for the nodes of a Sentinel or Cluster topology.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct NodeAccess {
    /// `REDIS_TLS`: TLS to every node (and Sentinel), verified against the system's CA roots
    /// (`SSL_CERT_FILE` names another bundle). Default false.
    pub tls: bool,
    /// `REDIS_USERNAME`: the ACL user of the data nodes (Redis 6+); unset = `default`.
    pub username: Option<String>,
    /// `REDIS_PASSWORD`: the data nodes' password (`requirepass`, or the ACL user's), if any.
    pub password: Option<String>,
    /// `REDIS_SENTINEL_PASSWORD`: the Sentinels' own password, if they have one.
    pub sentinel_password: Option<String>,
}

impl NodeAccess {
    /// The URL of data node `addr` (`host:port`), with the credentials.
    pub fn node_url(&self, addr: &str) -> String {
        self.url(addr, self.username.as_deref(), self.password.as_deref())
    }

    /// The URL of Sentinel `addr`, with the Sentinels' password.
    pub fn sentinel_url(&self, addr: &str) -> String {
        self.url(addr, None, self.sentinel_password.as_deref())
    }

    fn url(&self, addr: &str, user: Option<&str>, password: Option<&str>) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        let Some(password) = password else { return format!("{scheme}://{addr}") };
        let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>().replace('+', "%20");
        format!("{scheme}://{}:{}@{addr}", enc(user.unwrap_or("")), enc(password))
    }
}

impl fmt::Debug for NodeAccess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeAccess")
            .field("tls", &self.tls)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("sentinel_password", &self.sentinel_password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// How the service reaches Redis (`redis_client` is the one module that acts on it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Topology {
    /// One node at `REDIS_URL`.
    Single,
    /// A master found, and followed through failovers, by asking Sentinels.
    Sentinel {
        /// `REDIS_SENTINELS`: `host:port` of each Sentinel, asked in order.
        sentinels: Vec<String>,
        /// `REDIS_SENTINEL_MASTER`: the name the Sentinels monitor the master under.
        master: String,
    },
    /// A Redis Cluster.
    Cluster {
        /// `REDIS_CLUSTER_NODES`: `host:port` of some nodes (seeds: the rest is discovered).
        nodes: Vec<String>,
    },
}

impl Topology {
    /// `single`, `sentinel` or `cluster` (health output, logs).
    pub fn kind(&self) -> &'static str {
        match self {
            Topology::Single => "single",
            Topology::Sentinel { .. } => "sentinel",
            Topology::Cluster { .. } => "cluster",
        }
    }
}

/// `host:port,host:port` into its entries; each must have a host and a numeric port.
fn host_ports(var: &'static str, raw: &str) -> Result<Vec<String>, ConfigError> {
    let mut out = Vec::new();
    for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let ok = part.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
        check(ok, var, part, "expected host:port entries separated by commas")?;
        out.push(part.to_string());
    }
    check(!out.is_empty(), var, raw, "expected at least one host:port")?;
    Ok(out)
}

/// The topology named by the environment; more than one (or half of Sentinel's pair) is an error
/// naming the variables, so a deployment never silently runs against the wrong Redis.
fn topology(src: &Source<'_>) -> Result<Topology, ConfigError> {
    let url = src.lookup("REDIS_URL");
    let sentinels = src.lookup("REDIS_SENTINELS");
    let master = src.lookup("REDIS_SENTINEL_MASTER");
    let cluster = src.lookup("REDIS_CLUSTER_NODES");
    let set = [url.is_some(), sentinels.is_some() || master.is_some(), cluster.is_some()];
    if set.iter().filter(|s| **s).count() > 1 {
        return Err(ConfigError {
            var: "REDIS_URL, REDIS_SENTINELS, REDIS_CLUSTER_NODES",
            value: [("REDIS_URL", set[0]), ("REDIS_SENTINELS/REDIS_SENTINEL_MASTER", set[1]), ("REDIS_CLUSTER_NODES", set[2])]
                .iter()
                .filter(|(_, on)| *on)
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(" and "),
            reason: "set exactly one of REDIS_URL (one node), REDIS_SENTINELS with REDIS_SENTINEL_MASTER (Sentinel) or REDIS_CLUSTER_NODES (Cluster)".into(),
        });
    }
    match (sentinels, master, cluster) {
        (Some(s), Some(m), _) => {
            Ok(Topology::Sentinel { sentinels: host_ports("REDIS_SENTINELS", &s)?, master: m.trim().to_string() })
        }
        (Some(_), None, _) => Err(ConfigError {
            var: "REDIS_SENTINEL_MASTER",
            value: String::new(),
            reason: "REDIS_SENTINELS is set: name the master the Sentinels monitor".into(),
        }),
        (None, Some(m), _) => Err(ConfigError {
            var: "REDIS_SENTINELS",
            value: String::new(),
            reason: format!("REDIS_SENTINEL_MASTER is set ({m}): list the Sentinels as host:port,…"),
        }),
        (None, None, Some(c)) => Ok(Topology::Cluster { nodes: host_ports("REDIS_CLUSTER_NODES", &c)? }),
        (None, None, None) => Ok(Topology::Single),
    }
}

impl fmt::Debug for Redis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redis")
            .field("enabled", &self.enabled)
            .field("url", &redact_url(&self.url))
            .field("topology", &self.topology)
            .field("key_prefix", &self.key_prefix)
            .field("pool_size", &self.pool_size)
            .field("timeout", &self.timeout)
            .field("nodes", &self.nodes)
            .finish_non_exhaustive()
    }
}

/// The caches in front of the database.
#[derive(Clone, Debug)]
pub struct Cache {
    /// `L1_CAPACITY`: entries in the in-process cache; 0 disables it. Default 100000.
    pub l1_capacity: u64,
    /// `L1_TTL_MS`: life of an L1 entry. Changes reach every instance's L1 at once (locally,
    /// and through Redis pub/sub for the others); the TTL is the backstop for an announcement
    /// lost while an instance was not subscribed. Default 60000.
    pub l1_ttl: Duration,
    /// `NEGATIVE_CACHE_TTL_SECS`: life of a "no such code" entry in Redis. Default 60.
    pub negative_ttl: Duration,
    /// `CACHE_WARM_TOP_N`: at startup, load the N most-clicked links into the caches (in the
    /// background; readiness does not wait). Default 0 (off).
    pub warm_top_n: u32,
}

/// Links: codes and redirects.
#[derive(Clone, Debug)]
pub struct Links {
    /// `CODE_LENGTH`: length of random codes. Default 7 (62^7 ≈ 3.5e12 codes).
    pub code_length: usize,
    /// `PERMANENT_REDIRECT_MAX_AGE_SECS`: `Cache-Control: private, max-age=N` on 301/308 so
    /// browsers don't pin them forever. Default 3600.
    pub permanent_redirect_max_age: u64,
}

/// Click counting.
#[derive(Clone, Debug)]
pub struct Clicks {
    /// `CLICK_COUNTING`: count clicks on GET redirects. Default true.
    pub counting: bool,
    /// `CLICK_FLUSH_INTERVAL_MS`: how often buffered clicks are written. Default 30000.
    pub flush_interval: Duration,
    /// `CLICK_FLUSH_MAX_PENDING`: flush early when this many links have buffered clicks.
    /// Default 1000000.
    pub flush_max_pending: usize,
    /// `CLICK_BOT_FILTER`: don't count requests whose User-Agent matches a bot pattern.
    /// Default true.
    pub bot_filter: bool,
    /// `CLICK_BOT_PATTERNS`: comma-separated, case-insensitive User-Agent fragments. Default:
    /// [`DEFAULT_BOT_PATTERNS`].
    pub bot_patterns: Vec<String>,
}

/// Rate limits, and who the client is.
#[derive(Clone, Debug)]
pub struct Limits {
    /// `RATE_LIMIT_CREATE_PER_MINUTE`: link creations per API key. Default 60; 0 = off.
    pub create_per_key: Limit,
    /// `RATE_LIMIT_CREATE_PER_IP_PER_MINUTE`: link creations per client IP. Default 120; 0 = off.
    pub create_per_ip: Limit,
    /// `RATE_LIMIT_API_PER_IP_PER_MINUTE`: every `/api` call per client IP. Default 1200; 0 = off.
    pub api_per_ip: Limit,
    /// `RATE_LIMIT_REDIRECT_PER_IP_PER_MINUTE`: redirects per client IP. Default 0 (off): a load
    /// test or a large NAT must not trip it; turn it on under attack.
    pub redirect_per_ip: Limit,
    /// `RATE_LIMIT_AUTH_FAILURES_PER_IP_PER_MINUTE`: failed authentications (unknown or revoked
    /// API keys) per client IP; past it, the address gets 429 without its keys being looked up.
    /// Default 30; 0 = off.
    pub auth_failures_per_ip: Limit,
    /// `TRUSTED_PROXIES`: comma-separated addresses/CIDRs whose `X-Forwarded-For` is believed.
    /// Default none.
    pub trusted_proxies: Vec<IpNet>,
}

/// API keys and operator access.
#[derive(Clone)]
pub struct Auth {
    /// `AUTH_CACHE_TTL_MS`: how long a verified API key is trusted without a database read.
    /// Revocations are announced through Redis and apply at once while it is up. Default 2000;
    /// 0 = look every key up.
    pub cache_ttl: Duration,
    /// `METRICS_TOKEN`: the operator endpoints (`/metrics`, `/health/db`, `/health/redis`,
    /// `/health/cache`) answer only clients on loopback; when this is set they answer instead
    /// any client with `Authorization: Bearer <token>`, and no other.
    pub metrics_token: Option<String>,
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Auth")
            .field("cache_ttl", &self.cache_ttl)
            .field("metrics_token", &self.metrics_token.as_ref().map(|_| "REDACTED"))
            .finish()
    }
}

/// The admin web app (`/admin`).
#[derive(Clone, Debug)]
pub struct Admin {
    /// `ADMIN_SESSION_IDLE_SECS`: a session unused for this long ends. Default 1800.
    pub session_idle: Duration,
    /// `ADMIN_SESSION_MAX_SECS`: a session ends this long after sign-in, used or not. Default
    /// 43200.
    pub session_max: Duration,
    /// `ADMIN_IMPORT_MAX_BYTES`: largest CSV file the import form accepts. Default 16777216.
    pub import_max_bytes: usize,
    /// `ADMIN_IMPORT_JOBS`: imports that may run at once (across the sessions of this
    /// instance); one more is refused with 429 until one ends. Default 2.
    pub import_jobs: usize,
}

/// Hides the password of a `redis://user:pass@host` or `postgres://user:pass@host/db` URL. A
/// plain file path (`DATABASE_URL=data/links.db`) has none to hide and is shown as it is;
/// anything else that does not parse is not shown at all.
pub fn redact_url(raw: &str) -> String {
    match Url::parse(raw) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("REDACTED"));
            u.to_string()
        }
        Ok(u) => u.to_string(),
        Err(url::ParseError::RelativeUrlWithoutBase) if !raw.contains('@') => raw.to_string(),
        Err(_) => "<unparseable>".to_string(),
    }
}

/// Where settings are read from: the environment, or (for tests) nothing, which gives every
/// default. An empty or blank value counts as unset (`.env.production` lists every variable).
struct Source<'a>(&'a dyn Fn(&str) -> Option<String>);

impl Source<'_> {
    fn lookup(&self, var: &'static str) -> Option<String> {
        (self.0)(var).filter(|v| !v.trim().is_empty())
    }

    fn parse<T: FromStr>(&self, var: &'static str, default: T) -> Result<T, ConfigError>
    where
        T::Err: fmt::Display,
    {
        match self.lookup(var) {
            None => Ok(default),
            Some(v) => {
                v.trim().parse().map_err(|e: T::Err| ConfigError { var, value: v.clone(), reason: e.to_string() })
            }
        }
    }

    fn millis(&self, var: &'static str, default: u64) -> Result<Duration, ConfigError> {
        self.parse(var, default).map(Duration::from_millis)
    }

    fn secs(&self, var: &'static str, default: u64) -> Result<Duration, ConfigError> {
        self.parse(var, default).map(Duration::from_secs)
    }

    fn per_minute(&self, var: &'static str, default: u32) -> Result<Limit, ConfigError> {
        self.parse(var, default).map(Limit::per_minute)
    }

    fn boolean(&self, var: &'static str, default: bool) -> Result<bool, ConfigError> {
        match self.lookup(var) {
            None => Ok(default),
            Some(v) => match v.trim().to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "on" => Ok(true),
                "0" | "false" | "no" | "off" => Ok(false),
                _ => Err(ConfigError { var, value: v, reason: "expected true or false".into() }),
            },
        }
    }
}

/// The scheme of a `DATABASE_URL` (`sqlite` in `sqlite://…`), or none for a plain file path.
fn database_url_scheme(url: &str) -> Option<&str> {
    let (scheme, _) = url.split_once(':')?;
    let mut chars = scheme.chars();
    let is_scheme = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    is_scheme.then_some(scheme)
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
        Self::from_source(&|var| std::env::var(var).ok())
    }

    /// Reads every setting through `get` (a variable's value, if set). The one place where
    /// defaults are written.
    pub fn from_source(get: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let src = Source(get);
        let listen_addr: SocketAddr = src.parse("LISTEN_ADDR", SocketAddr::from(([127, 0, 0, 1], 8080)))?;
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get()) as u32;
        let public_base_url = match src.lookup("PUBLIC_BASE_URL") {
            None => default_base_url(listen_addr),
            Some(v) => {
                parse_base_url(&v).map_err(|reason| ConfigError { var: "PUBLIC_BASE_URL", value: v.clone(), reason })?
            }
        };
        let redis_topology = topology(&src)?;
        let redis_nodes = NodeAccess {
            tls: src.boolean("REDIS_TLS", false)?,
            username: src.lookup("REDIS_USERNAME").filter(|v| !v.is_empty()),
            password: src.lookup("REDIS_PASSWORD").filter(|v| !v.is_empty()),
            sentinel_password: src.lookup("REDIS_SENTINEL_PASSWORD").filter(|v| !v.is_empty()),
        };
        if redis_topology == Topology::Single {
            // One node: the URL carries both; two places for one setting would disagree.
            for (var, set) in [
                ("REDIS_TLS", redis_nodes.tls),
                ("REDIS_USERNAME", redis_nodes.username.is_some()),
                ("REDIS_PASSWORD", redis_nodes.password.is_some()),
                ("REDIS_SENTINEL_PASSWORD", redis_nodes.sentinel_password.is_some()),
            ] {
                check(
                    !set,
                    var,
                    "(set)",
                    "applies to REDIS_SENTINELS or REDIS_CLUSTER_NODES; with REDIS_URL put it in the URL (rediss://user:password@host:port)",
                )?;
            }
        }
        check(
            redis_nodes.username.is_none() || redis_nodes.password.is_some(),
            "REDIS_USERNAME",
            "(set)",
            "needs REDIS_PASSWORD",
        )?;
        let redis_url = match &redis_topology {
            Topology::Single => src.lookup("REDIS_URL").unwrap_or_else(|| "redis://127.0.0.1:6379".into()),
            Topology::Sentinel { .. } => String::new(),
            Topology::Cluster { nodes } => redis_nodes.node_url(&nodes[0]),
        };
        check(
            redis_url.is_empty()
                || redis_url.starts_with("redis://")
                || redis_url.starts_with("rediss://")
                || redis_url.starts_with("redis+unix://")
                || redis_url.starts_with("unix://"),
            "REDIS_URL",
            redact_url(&redis_url),
            "expected a redis:// URL",
        )?;
        let cfg = Config {
            http: Http {
                listen_addr,
                listen_backlog: src.parse("LISTEN_BACKLOG", 4096)?,
                public_base_url,
                max_body_bytes: src.parse("MAX_BODY_BYTES", 16 * 1024)?,
                request_timeout: src.millis("REQUEST_TIMEOUT_MS", 10_000)?,
                header_read_timeout: src.millis("HEADER_READ_TIMEOUT_MS", 10_000)?,
                keepalive_timeout: src.millis("KEEPALIVE_TIMEOUT_MS", 75_000)?,
                shutdown_timeout: src.secs("SHUTDOWN_TIMEOUT_SECS", 20)?,
            },
            db: Db {
                url: src.lookup("DATABASE_URL").unwrap_or_else(|| "sqlite://data/shortener.db".into()),
                read_pool_size: src.parse("DB_READ_POOL_SIZE", (cores * 2).max(4))?,
                acquire_timeout: src.millis("DB_ACQUIRE_TIMEOUT_MS", 1000)?,
                busy_timeout: src.millis("DB_BUSY_TIMEOUT_MS", 5000)?,
                write_batch_max: src.parse("WRITE_BATCH_MAX", 512)?,
            },
            redis: Redis {
                enabled: src.boolean("REDIS_ENABLED", true)?,
                url: redis_url,
                topology: redis_topology,
                key_prefix: src.lookup("REDIS_KEY_PREFIX").unwrap_or_else(|| "shortener:".into()),
                pool_size: src.parse("REDIS_POOL_SIZE", 8)?,
                timeout: src.millis("REDIS_TIMEOUT_MS", 25)?,
                connect_timeout: src.millis("REDIS_CONNECT_TIMEOUT_MS", 250)?,
                breaker_threshold: src.parse("REDIS_BREAKER_THRESHOLD", 5)?,
                probe_interval: src.millis("REDIS_PROBE_INTERVAL_MS", 500)?,
                nodes: redis_nodes,
            },
            cache: Cache {
                l1_capacity: src.parse("L1_CAPACITY", 100_000)?,
                l1_ttl: src.millis("L1_TTL_MS", 60_000)?,
                negative_ttl: src.secs("NEGATIVE_CACHE_TTL_SECS", 60)?,
                warm_top_n: src.parse("CACHE_WARM_TOP_N", 0)?,
            },
            links: Links {
                code_length: src.parse("CODE_LENGTH", 7)?,
                permanent_redirect_max_age: src.parse("PERMANENT_REDIRECT_MAX_AGE_SECS", 3600)?,
            },
            clicks: Clicks {
                counting: src.boolean("CLICK_COUNTING", true)?,
                flush_interval: src.millis("CLICK_FLUSH_INTERVAL_MS", 30_000)?,
                flush_max_pending: src.parse("CLICK_FLUSH_MAX_PENDING", 1_000_000)?,
                bot_filter: src.boolean("CLICK_BOT_FILTER", true)?,
                bot_patterns: match src.lookup("CLICK_BOT_PATTERNS") {
                    Some(v) => v.split(',').map(|p| p.trim().to_string()).filter(|p| !p.is_empty()).collect(),
                    None => default_bot_patterns(),
                },
            },
            limits: Limits {
                create_per_key: src.per_minute("RATE_LIMIT_CREATE_PER_MINUTE", 60)?,
                create_per_ip: src.per_minute("RATE_LIMIT_CREATE_PER_IP_PER_MINUTE", 120)?,
                api_per_ip: src.per_minute("RATE_LIMIT_API_PER_IP_PER_MINUTE", 1200)?,
                redirect_per_ip: src.per_minute("RATE_LIMIT_REDIRECT_PER_IP_PER_MINUTE", 0)?,
                auth_failures_per_ip: src.per_minute("RATE_LIMIT_AUTH_FAILURES_PER_IP_PER_MINUTE", 30)?,
                trusted_proxies: match src.lookup("TRUSTED_PROXIES") {
                    None => Vec::new(),
                    Some(v) => parse_trusted(&v).map_err(|reason| ConfigError {
                        var: "TRUSTED_PROXIES",
                        value: v.clone(),
                        reason,
                    })?,
                },
            },
            auth: Auth {
                cache_ttl: src.millis("AUTH_CACHE_TTL_MS", 2000)?,
                metrics_token: src.lookup("METRICS_TOKEN"),
            },
            admin: Admin {
                session_idle: src.secs("ADMIN_SESSION_IDLE_SECS", 1800)?,
                session_max: src.secs("ADMIN_SESSION_MAX_SECS", 43_200)?,
                import_max_bytes: src.parse("ADMIN_IMPORT_MAX_BYTES", 16 * 1024 * 1024)?,
                import_jobs: src.parse("ADMIN_IMPORT_JOBS", 2)?,
            },
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks ranges that the types alone don't.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let code_length = self.links.code_length;
        check((5..=64).contains(&code_length), "CODE_LENGTH", code_length, "must be 5..=64")?;
        let pool = self.db.read_pool_size;
        check(pool >= 1, "DB_READ_POOL_SIZE", pool, "must be at least 1")?;
        check(self.redis.pool_size >= 1, "REDIS_POOL_SIZE", self.redis.pool_size, "must be at least 1")?;
        check(!self.redis.timeout.is_zero(), "REDIS_TIMEOUT_MS", 0, "must be above 0")?;
        check(self.redis.breaker_threshold >= 1, "REDIS_BREAKER_THRESHOLD", 0, "must be at least 1")?;
        check(self.db.write_batch_max >= 1, "WRITE_BATCH_MAX", 0, "must be at least 1")?;
        let body = self.http.max_body_bytes;
        check(body >= 256, "MAX_BODY_BYTES", body, "must be at least 256")?;
        check(!self.clicks.flush_interval.is_zero(), "CLICK_FLUSH_INTERVAL_MS", 0, "must be above 0")?;
        check(!self.cache.l1_ttl.is_zero(), "L1_TTL_MS", 0, "must be above 0 (use L1_CAPACITY=0 to disable L1)")?;
        // A scheme this build does not serve would otherwise be taken for a file name (a folder
        // named `postgres:` in the working directory).
        let scheme = database_url_scheme(&self.db.url);
        check(
            scheme.is_none_or(|s| ["sqlite", "postgres", "postgresql"].iter().any(|k| s.eq_ignore_ascii_case(k))),
            "DATABASE_URL",
            crate::config::redact_url(&self.db.url),
            "has a scheme this build does not serve: use sqlite://PATH (or a plain file path) or postgres://USER:PASSWORD@HOST/DB",
        )?;
        let idle = self.admin.session_idle.as_secs();
        check(idle >= 1, "ADMIN_SESSION_IDLE_SECS", idle, "must be at least 1")?;
        let max = self.admin.session_max.as_secs();
        check(max >= idle, "ADMIN_SESSION_MAX_SECS", max, "must be at least ADMIN_SESSION_IDLE_SECS")?;
        check(self.admin.import_jobs >= 1, "ADMIN_IMPORT_JOBS", 0, "must be at least 1")?;
        for (timeout, name) in [
            (self.http.header_read_timeout, "HEADER_READ_TIMEOUT_MS"),
            (self.http.keepalive_timeout, "KEEPALIVE_TIMEOUT_MS"),
        ] {
            check(timeout >= Duration::from_millis(100), name, timeout.as_millis(), "must be at least 100")?;
        }
        Ok(())
    }

    /// A configuration for tests: the defaults, on loopback port 0, with the given database and
    /// Redis, short budgets and intervals so that tests run fast, and no rate limits.
    pub fn for_tests(database_url: &str, redis_url: Option<&str>) -> Self {
        let mut c = Self::from_source(&|_| None).expect("the defaults are valid");
        c.http.listen_addr = SocketAddr::from(([127, 0, 0, 1], 0));
        c.http.listen_backlog = 1024;
        c.http.public_base_url = Url::parse("http://sho.rt/").expect("static url");
        c.http.header_read_timeout = Duration::from_secs(2);
        c.http.keepalive_timeout = Duration::from_secs(2);
        c.http.shutdown_timeout = Duration::from_secs(10);
        c.db.url = database_url.to_string();
        c.db.read_pool_size = 4;
        c.db.acquire_timeout = Duration::from_millis(2000);
        c.redis.enabled = redis_url.is_some();
        c.redis.url = redis_url.unwrap_or("redis://127.0.0.1:1").to_string();
        c.redis.pool_size = 4;
        c.redis.timeout = Duration::from_millis(250);
        c.redis.breaker_threshold = 3;
        c.redis.probe_interval = Duration::from_millis(100);
        c.cache.l1_capacity = 10_000;
        c.cache.l1_ttl = Duration::from_secs(10);
        c.clicks.flush_interval = Duration::from_millis(200);
        c.clicks.flush_max_pending = 10_000;
        let off = Limit::per_minute(0);
        c.limits = Limits {
            create_per_key: off,
            create_per_ip: off,
            api_per_ip: off,
            redirect_per_ip: off,
            auth_failures_per_ip: off,
            trusted_proxies: Vec::new(),
        };
        c
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

/// User-Agent fragments of crawlers and link unfurlers; their requests are not clicks.
pub const DEFAULT_BOT_PATTERNS: &[&str] = &[
    "bot",
    "crawl",
    "spider",
    "slurp",
    "facebookexternalhit",
    "facebookcatalog",
    "whatsapp",
    "telegram",
    "slack",
    "discord",
    "embedly",
    "preview",
    "skype",
    "vkshare",
    "pinterest",
    "redditbot",
    "quora link",
    "outbrain",
    "bitlybot",
    "tumblr",
    "nuzzel",
    "w3c_validator",
    "headlesschrome",
    "lighthouse",
];

fn default_bot_patterns() -> Vec<String> {
    DEFAULT_BOT_PATTERNS.iter().map(|s| s.to_string()).collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn from(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let vars: Vec<(String, String)> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::from_source(&move |var| vars.iter().find(|(k, _)| k == var).map(|(_, v)| v.clone()))
    }

    #[test]
    fn cluster_and_sentinel_nodes_get_tls_and_percent_encoded_credentials() {
        let c = from(&[
            ("REDIS_CLUSTER_NODES", "n1:6379,n2:6379"),
            ("REDIS_TLS", "true"),
            ("REDIS_USERNAME", "app"),
            ("REDIS_PASSWORD", "p@ss word/:x"),
        ])
        .unwrap();
        assert_eq!(c.redis.nodes.node_url("n2:6379"), "rediss://app:p%40ss%20word%2F%3Ax@n2:6379");
        let parsed = url::Url::parse(&c.redis.nodes.node_url("n2:6379")).unwrap();
        assert_eq!(
            parsed.password().map(|p| url::form_urlencoded::parse(format!("p={p}").as_bytes())
                .next()
                .unwrap()
                .1
                .into_owned()),
            Some("p@ss word/:x".into())
        );
        assert_eq!(c.redis.url, "rediss://app:p%40ss%20word%2F%3Ax@n1:6379");
        assert!(!format!("{:?}", c.redis).contains("p@ss"), "{:?}", c.redis);

        let c = from(&[
            ("REDIS_SENTINELS", "s1:26379"),
            ("REDIS_SENTINEL_MASTER", "cache"),
            ("REDIS_PASSWORD", "data"),
            ("REDIS_SENTINEL_PASSWORD", "watch"),
        ])
        .unwrap();
        assert_eq!(c.redis.nodes.node_url("m:6379"), "redis://:data@m:6379");
        assert_eq!(c.redis.nodes.sentinel_url("s1:26379"), "redis://:watch@s1:26379");
        let plain = from(&[("REDIS_CLUSTER_NODES", "n1:6379")]).unwrap();
        assert_eq!(plain.redis.nodes.node_url("n1:6379"), "redis://n1:6379");
    }

    #[test]
    fn node_credentials_and_tls_are_refused_with_one_node_and_a_user_needs_a_password() {
        for var in ["REDIS_TLS", "REDIS_PASSWORD", "REDIS_USERNAME", "REDIS_SENTINEL_PASSWORD"] {
            let value = if var == "REDIS_TLS" { "true" } else { "x" };
            let e = from(&[("REDIS_URL", "redis://a:6379"), (var, value)]).unwrap_err();
            assert_eq!(e.var, var);
            assert!(e.reason.contains("REDIS_URL"), "{}", e.reason);
        }
        let e = from(&[("REDIS_CLUSTER_NODES", "n1:6379"), ("REDIS_USERNAME", "app")]).unwrap_err();
        assert_eq!(e.var, "REDIS_USERNAME");
    }

    #[test]
    fn urls_are_shown_without_their_password_and_plain_paths_as_they_are() {
        assert_eq!(redact_url("postgres://u:hunter2@db/links"), "postgres://u:REDACTED@db/links");
        assert_eq!(redact_url("redis://:hunter2@cache:6379"), "redis://:REDACTED@cache:6379");
        assert_eq!(redact_url("sqlite://data/x.db"), "sqlite://data/x.db");
        assert_eq!(redact_url("data/links.db"), "data/links.db");
        assert_eq!(redact_url("/var/lib/shortener/links.db"), "/var/lib/shortener/links.db");
        assert_eq!(redact_url("//u:hunter2@db/links"), "<unparseable>");
    }

    #[test]
    fn a_database_url_with_a_scheme_not_served_stops_startup_naming_the_variable() {
        for bad in ["mysql://u:secret@db/links", "redis://u:secret@db/0", "mssql://sa:secret@db/links"] {
            let e = from(&[("DATABASE_URL", bad)]).unwrap_err().to_string();
            assert!(e.contains("DATABASE_URL") && !e.contains("secret"), "{e}");
        }
        for ok in [
            "sqlite://data/x.db",
            "sqlite::memory:",
            "data/x.db",
            "/var/lib/x.db",
            "SQLITE:///x.db",
            "postgres://u:p@db/links",
            "postgresql://db/links",
        ] {
            assert!(from(&[("DATABASE_URL", ok)]).is_ok(), "{ok}");
        }
    }

    #[test]
    fn each_concern_reads_its_own_variables_and_blank_ones_are_unset() {
        let c = from(&[
            ("LISTEN_ADDR", "0.0.0.0:9000"),
            ("REDIS_URL", "redis://cache:6380"),
            ("L1_CAPACITY", "5"),
            ("RATE_LIMIT_API_PER_IP_PER_MINUTE", "7"),
            ("METRICS_TOKEN", "  "),
            ("TRUSTED_PROXIES", ""),
        ])
        .unwrap();
        assert_eq!(c.http.listen_addr, "0.0.0.0:9000".parse().unwrap());
        assert_eq!(c.http.public_base_url.as_str(), "http://0.0.0.0:9000/");
        assert_eq!(c.redis.url, "redis://cache:6380");
        assert_eq!(c.cache.l1_capacity, 5);
        assert_eq!(c.limits.api_per_ip, Limit::per_minute(7));
        assert!(c.auth.metrics_token.is_none());
        assert!(c.limits.trusted_proxies.is_empty());
        assert_eq!(c.limits.auth_failures_per_ip, Limit::per_minute(30));
    }

    #[test]
    fn a_wrong_value_names_its_variable() {
        for (var, value) in [("L1_CAPACITY", "lots"), ("REDIS_ENABLED", "maybe"), ("HEADER_READ_TIMEOUT_MS", "5")] {
            let e = from(&[(var, value)]).unwrap_err();
            assert_eq!(e.var, var);
            assert!(e.to_string().contains(var), "{e}");
        }
    }

    #[test]
    fn more_than_one_redis_topology_stops_startup_naming_the_variables() {
        for vars in [
            &[("REDIS_URL", "redis://a:6379"), ("REDIS_CLUSTER_NODES", "b:7000")][..],
            &[("REDIS_URL", "redis://a:6379"), ("REDIS_SENTINELS", "s:26379"), ("REDIS_SENTINEL_MASTER", "m")][..],
            &[("REDIS_CLUSTER_NODES", "b:7000"), ("REDIS_SENTINELS", "s:26379"), ("REDIS_SENTINEL_MASTER", "m")][..],
        ] {
            let e = from(vars).unwrap_err().to_string();
            assert!(
                e.contains("REDIS_URL") && e.contains("REDIS_SENTINELS") && e.contains("REDIS_CLUSTER_NODES"),
                "{e}"
            );
        }
        let e = from(&[("REDIS_SENTINELS", "s:26379")]).unwrap_err();
        assert_eq!(e.var, "REDIS_SENTINEL_MASTER");
        let e = from(&[("REDIS_SENTINEL_MASTER", "m")]).unwrap_err();
        assert_eq!(e.var, "REDIS_SENTINELS");
        let e = from(&[("REDIS_CLUSTER_NODES", "b:seven")]).unwrap_err();
        assert_eq!(e.var, "REDIS_CLUSTER_NODES");
    }

    #[test]
    fn each_redis_topology_is_read_from_its_own_variables() {
        assert_eq!(from(&[]).unwrap().redis.topology, Topology::Single);
        let c = from(&[("REDIS_SENTINELS", "s1:26379, s2:26380"), ("REDIS_SENTINEL_MASTER", "cache")]).unwrap();
        assert_eq!(
            c.redis.topology,
            Topology::Sentinel { sentinels: vec!["s1:26379".into(), "s2:26380".into()], master: "cache".into() }
        );
        let c = from(&[("REDIS_CLUSTER_NODES", "n1:7000,n2:7001")]).unwrap();
        assert_eq!(c.redis.topology, Topology::Cluster { nodes: vec!["n1:7000".into(), "n2:7001".into()] });
        assert_eq!(c.redis.url, "redis://n1:7000");
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let c = from(&[("REDIS_URL", "redis://u:hunter2@cache:6379"), ("METRICS_TOKEN", "t0ken")]).unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2") && !shown.contains("t0ken"), "{shown}");
    }
}
