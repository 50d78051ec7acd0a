//! Rate limiting shared through Redis, with a per-process fallback.
//!
//! Algorithm: GCRA (the generic cell rate algorithm, a leaky bucket that stores one number per
//! key: the "theoretical arrival time"). A limit of `L` per period `P` lets a burst of `L`
//! through and then one request every `P / L`. In Redis it is one Lua script — one round trip,
//! atomic, on Redis' clock so every instance agrees — and the key expires by itself when the
//! bucket is full again. When Redis is unavailable (breaker open, call failed) the same limit
//! applies per process from memory, and that is logged: nothing fails open silently.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use axum::http::{HeaderMap, HeaderValue};
use ipnet::IpNet;
use redis::Script;

use crate::{
    redis_client::{Names, RedisClient},
    time_util::now_us,
};

const GCRA_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local period = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
local ahead = new_tat - now
if ahead > period then
  return {0, tat - now, ahead - period}
end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil(ahead / 1000))
return {1, ahead, 0}
";

/// The least time a limit check waits for Redis. More than a redirect's budget: a check that
/// times out may already have been counted in Redis and is then decided again from this
/// process' memory, so under a burst (hundreds of API calls at once on two cores) a short budget
/// lets more through than the limit. An API call can afford the wait; while Redis is down the
/// breaker is open and checks go to memory at once.
const LIMIT_BUDGET: Duration = Duration::from_secs(2);

pub use crate::config::{parse_trusted, Limit};

/// GCRA's two numbers of a limit, in microseconds: a millisecond clock could not express more
/// than 1,000 requests a second.
fn interval_us(limit: &Limit) -> i64 {
    (limit.period.as_micros() as i64 / i64::from(limit.limit.max(1))).max(1)
}

fn period_us(limit: &Limit) -> i64 {
    limit.period.as_micros() as i64
}

/// Which limit (names match the metrics labels).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Link creation per API key.
    CreatePerKey = 0,
    /// Link creation per client IP.
    CreatePerIp = 1,
    /// Every `/api` call per client IP.
    ApiPerIp = 2,
    /// Redirects per client IP.
    RedirectPerIp = 3,
    /// Failed authentications (unknown or revoked keys) per client IP.
    AuthFailuresPerIp = 4,
}

impl Kind {
    fn key_part(self) -> &'static str {
        ["ck", "ci", "ai", "ri", "af"][self as usize]
    }
}

/// The answer to one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// The limit.
    pub limit: u32,
    /// Requests left in the current burst.
    pub remaining: u32,
    /// Seconds until the bucket is full again.
    pub reset_secs: u64,
    /// Seconds until a request is allowed again (0 when allowed).
    pub retry_after_secs: u64,
}

impl Decision {
    fn from_gcra(limit: Limit, allowed: bool, ahead_us: i64, wait_us: i64) -> Self {
        let interval = interval_us(&limit);
        let room = (period_us(&limit) - ahead_us).max(0);
        Decision {
            allowed,
            limit: limit.limit,
            remaining: u32::try_from(room / interval).unwrap_or(u32::MAX).min(limit.limit),
            reset_secs: ceil_secs(ahead_us),
            retry_after_secs: if allowed { 0 } else { ceil_secs(wait_us).max(1) },
        }
    }

    /// Adds `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset` (and `Retry-After` when
    /// refused).
    pub fn write_headers(&self, h: &mut HeaderMap) {
        h.insert("ratelimit-limit", HeaderValue::from(self.limit));
        h.insert("ratelimit-remaining", HeaderValue::from(self.remaining));
        h.insert("ratelimit-reset", HeaderValue::from(self.reset_secs));
        if !self.allowed {
            h.insert("retry-after", HeaderValue::from(self.retry_after_secs));
        }
    }

    /// The more restrictive of two decisions (for the headers of a request checked twice).
    pub fn tighter(self, other: Decision) -> Decision {
        match (self.allowed, other.allowed) {
            (false, true) => self,
            (true, false) => other,
            _ if other.remaining < self.remaining => other,
            _ => self,
        }
    }
}

fn ceil_secs(us: i64) -> u64 {
    u64::try_from((us.max(0) + 999_999) / 1_000_000).unwrap_or(0)
}

/// The limiter. One per process.
pub struct RateLimiter {
    redis: Option<Arc<RedisClient>>,
    names: Names,
    script: Script,
    local: Mutex<HashMap<String, i64>>,
    local_fallbacks: AtomicU64,
    last_fallback_log: Mutex<Option<Instant>>,
    /// `TRUSTED_PROXIES`: peers whose `X-Forwarded-For` is believed.
    trusted: Vec<IpNet>,
}

impl RateLimiter {
    /// A limiter that uses `redis` when it is up.
    pub fn new(redis: Option<Arc<RedisClient>>, prefix: &str, trusted: Vec<IpNet>) -> Self {
        RateLimiter {
            redis,
            names: Names::new(prefix),
            script: Script::new(GCRA_SCRIPT),
            local: Mutex::new(HashMap::new()),
            local_fallbacks: AtomicU64::new(0),
            last_fallback_log: Mutex::new(None),
            trusted,
        }
    }

    /// Checks (and, if allowed, counts) one request against `limit` for `subject`.
    pub async fn check(&self, kind: Kind, subject: &str, limit: Limit) -> Decision {
        let key = self.names.rate_limit(kind.key_part(), subject);
        if let Some(redis) = self.redis.as_ref().filter(|r| r.is_up()) {
            let (interval, period) = (interval_us(&limit), period_us(&limit));
            let script = &self.script;
            let got: Option<(i64, i64, i64)> = redis
                .run_within(LIMIT_BUDGET, |mut c| {
                    let key = key.clone();
                    async move { script.key(key).arg(interval).arg(period).invoke_async(&mut c).await }
                })
                .await;
            if let Some((allowed, ahead, wait)) = got {
                return Decision::from_gcra(limit, allowed == 1, ahead, wait);
            }
        }
        self.note_fallback();
        self.check_locally(&key, limit)
    }

    fn note_fallback(&self) {
        if self.redis.is_none() {
            return; // Redis disabled by configuration: local limiting is the design, not a fallback.
        }
        self.local_fallbacks.fetch_add(1, Ordering::Relaxed);
        let mut last = self.last_fallback_log.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
            *last = Some(Instant::now());
            tracing::warn!(
                ratelimit.fallbacks = self.local_fallbacks.load(Ordering::Relaxed),
                "rate limiting from this process' memory: Redis is unavailable, limits are per instance until it returns"
            );
        }
    }

    fn check_locally(&self, key: &str, limit: Limit) -> Decision {
        let now = now_us();
        let mut map = self.local.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() > 100_000 {
            map.retain(|_, tat| *tat > now);
        }
        let tat = map.get(key).copied().unwrap_or(now).max(now);
        let new_tat = tat + interval_us(&limit);
        let ahead = new_tat - now;
        if ahead > period_us(&limit) {
            return Decision::from_gcra(limit, false, tat - now, ahead - period_us(&limit));
        }
        map.insert(key.to_string(), new_tat);
        Decision::from_gcra(limit, true, ahead, 0)
    }

    /// Times a check fell back to local memory.
    pub fn local_fallbacks(&self) -> u64 {
        self.local_fallbacks.load(Ordering::Relaxed)
    }

    /// Copies the limiter's counters into `m`.
    pub fn export_metrics(&self, m: &crate::observe::Metrics) {
        m.copy_counter("shortener_rate_limit_local_fallbacks_total", vec![], &self.local_fallbacks);
    }

    /// The client's address: the socket peer, or — only when the peer is a trusted proxy — the
    /// right-most `X-Forwarded-For` entry that is not itself a trusted proxy.
    pub fn client_ip(&self, peer: Option<SocketAddr>, headers: &HeaderMap) -> Option<IpAddr> {
        let peer = peer?.ip();
        if !self.is_trusted(peer) {
            return Some(peer);
        }
        let mut client = peer;
        for value in headers.get_all("x-forwarded-for").iter().rev() {
            let Ok(v) = value.to_str() else { return Some(client) };
            for hop in v.rsplit(',') {
                match hop.trim().parse::<IpAddr>() {
                    Ok(ip) if self.is_trusted(ip) => client = ip,
                    Ok(ip) => return Some(ip),
                    Err(_) => return Some(client),
                }
            }
        }
        Some(client)
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.trusted.iter().any(|n| n.contains(&ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(trusted: &str) -> RateLimiter {
        RateLimiter::new(None, "t:", parse_trusted(trusted).unwrap())
    }

    #[test]
    fn gcra_allows_a_burst_of_the_limit_then_refuses_with_a_retry_time() {
        let l = limiter("");
        let limit = Limit { limit: 3, period: Duration::from_secs(3) };
        let d: Vec<Decision> = (0..4).map(|_| l.check_locally("k", limit)).collect();
        assert_eq!(d.iter().filter(|d| d.allowed).count(), 3);
        assert_eq!(d[0].remaining, 2);
        assert_eq!(d[2].remaining, 0);
        assert!(!d[3].allowed);
        assert_eq!(d[3].retry_after_secs, 1);
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4, 10.0.0.5"));
        let peer: SocketAddr = "10.0.0.9:5000".parse().unwrap();
        assert_eq!(limiter("").client_ip(Some(peer), &h), Some(peer.ip()));
        assert_eq!(limiter("10.0.0.0/8").client_ip(Some(peer), &h), Some("1.2.3.4".parse().unwrap()));
        assert_eq!(limiter("10.0.0.9").client_ip(Some(peer), &h), Some("10.0.0.5".parse().unwrap()));
        assert!(parse_trusted("nonsense").is_err());
    }
}

#[cfg(test)]
mod high_rate_tests {
    use super::*;

    #[test]
    fn limits_above_a_thousand_a_second_are_honoured() {
        let l = RateLimiter::new(None, "t:", Vec::new());
        let limit = Limit::per_minute(1_000_000_000);
        assert!((0..100_000).all(|_| l.check_locally("k", limit).allowed));
    }
}
