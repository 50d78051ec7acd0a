//! The gates in front of handlers: the API's rate limits and authentication, the operator
//! endpoints' access rule, and the optional per-IP redirect limit.
//!
//! The API gate does the cheap checks first: a key already verified in memory, then the per-IP
//! limit of every call (`RATE_LIMIT_API_PER_IP_PER_MINUTE`), and only then a key's database
//! read. A presented key that fails (unknown or revoked) counts against its address's
//! `RATE_LIMIT_AUTH_FAILURES_PER_IP_PER_MINUTE`; past it the address gets 429 with
//! `Retry-After`, answered from memory. Unlimited keys skip the API limits once verified (from
//! memory: on a call whose key is not cached yet, the per-IP limit applies). Health checks are
//! never limited.

use std::net::{IpAddr, SocketAddr};

use axum::{
    extract::{ConnectInfo, Request, State},
    http::{request::Parts, HeaderMap, Method},
    middleware::Next,
    response::{IntoResponse, Response},
};
use sha2::{Digest, Sha256};

use super::auth::{self, Caller};
use crate::{
    db::keys::{self, ApiKeyRow},
    error::ApiError,
    ratelimit::{Decision, Kind, Limit},
    state::AppState,
};

async fn check(state: &AppState, kind: Kind, subject: &str, limit: Limit, acc: &mut Option<Decision>) -> bool {
    let d = state.limiter.check(kind, subject, limit).await;
    if !d.allowed {
        state.metrics.rate_limited[kind as usize].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    *acc = Some(acc.map_or(d, |a| a.tighter(d)));
    d.allowed
}

/// The client address as the limits see it (`X-Forwarded-For` only from trusted proxies).
pub(crate) fn client_ip(state: &AppState, extensions: &axum::http::Extensions, headers: &HeaderMap) -> Option<IpAddr> {
    let peer = extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
    state.limiter.client_ip(peer, headers)
}

/// Verifies a presented key that is not verified in memory, counting a failure against `ip`.
pub(crate) async fn authenticate_presented(
    state: &AppState,
    ip: Option<IpAddr>,
    hash: &[u8],
    decision: &mut Option<Decision>,
) -> Result<ApiKeyRow, ApiError> {
    if let Some(secs) = ip.and_then(|ip| state.key_cache.blocked_for(ip)) {
        state.metrics.rate_limited[Kind::AuthFailuresPerIp as usize].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return Err(ApiError::TooManyRequests(secs));
    }
    let failure = match auth::verify(state, hash).await {
        Ok(key) => return Ok(key),
        Err(e @ (ApiError::Unauthorized | ApiError::Forbidden)) => e,
        Err(other) => return Err(other),
    };
    let limit = state.config.limits.auth_failures_per_ip;
    if let (true, Some(ip)) = (limit.enabled(), ip) {
        let mut d = None;
        if !check(state, Kind::AuthFailuresPerIp, &ip.to_string(), limit, &mut d).await {
            let d = d.expect("check records its decision");
            state.key_cache.block(ip, d.retry_after_secs);
            *decision = Some(decision.map_or(d, |a| a.tighter(d)));
            return Err(ApiError::TooManyRequests(d.retry_after_secs));
        }
    }
    Err(failure)
}

/// Middleware on `/api/v1`.
/// The create limits (`RATE_LIMIT_CREATE_PER_KEY_PER_MINUTE`, then per address) for one create
/// by `key` from `ip`; unlimited keys pass. Shared by the API gate and the admin app's create
/// form, so a signed-in browser creates no faster than the same key through the API.
pub(crate) async fn create_allowed(
    state: &AppState,
    key: &ApiKeyRow,
    ip: Option<&str>,
    decision: &mut Option<Decision>,
) -> bool {
    let cfg = &state.config;
    if key.unlimited {
        return true;
    }
    let mut allowed = true;
    if cfg.limits.create_per_key.enabled() {
        allowed &= check(state, Kind::CreatePerKey, &key.id.to_string(), cfg.limits.create_per_key, decision).await;
    }
    if let (true, true, Some(ip)) = (allowed, cfg.limits.create_per_ip.enabled(), ip) {
        allowed &= check(state, Kind::CreatePerIp, ip, cfg.limits.create_per_ip, decision).await;
    }
    allowed
}

pub async fn api_gate(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let cfg = &state.config;
    let ip = client_ip(&state, req.extensions(), req.headers());
    let ip_text = ip.map(|ip| ip.to_string());
    let hash = auth::bearer_token(req.headers()).map(keys::hash_key);
    // Memory only: no I/O before the per-IP limit.
    let known = hash.as_deref().and_then(|h| state.key_cache.get(h));
    let mut decision = None;
    let mut allowed = true;
    if !known.as_ref().is_some_and(|k| k.unlimited) {
        if let (true, Some(ip)) = (cfg.limits.api_per_ip.enabled(), ip_text.as_deref()) {
            allowed &= check(&state, Kind::ApiPerIp, ip, cfg.limits.api_per_ip, &mut decision).await;
        }
    }
    let caller = match (allowed, known, hash) {
        (false, ..) => Err(ApiError::TooManyRequests(decision.map_or(1, |d| d.retry_after_secs))),
        (true, Some(key), _) => Ok(Some(key)),
        // No key: the handler answers 401 (or 404 for a path that is not a route) without I/O.
        (true, None, None) => Ok(None),
        (true, None, Some(hash)) => authenticate_presented(&state, ip, &hash, &mut decision).await.map(Some),
    };
    let mut resp = match caller {
        Err(e) => e.into_response(),
        Ok(caller) => {
            // Inside the nested API router the path is seen without its `/api/v1` prefix.
            let is_create = req.method() == Method::POST
                && matches!(req.uri().path().trim_end_matches('/'), "/links" | "/api/v1/links");
            if is_create {
                if let Some(key) = caller.as_ref() {
                    allowed &= create_allowed(&state, key, ip_text.as_deref(), &mut decision).await;
                }
            }
            if let Some(key) = caller {
                req.extensions_mut().insert(Caller(key));
            }
            match (allowed, decision) {
                (false, Some(d)) => ApiError::TooManyRequests(d.retry_after_secs).into_response(),
                _ => next.run(req).await,
            }
        }
    };
    if let Some(d) = decision {
        d.write_headers(resp.headers_mut());
    }
    resp
}

/// Equality of two secrets in time that depends on neither their contents nor their lengths
/// (both are hashed to 32 bytes first, then every byte is compared).
fn secrets_equal(a: &[u8], b: &[u8]) -> bool {
    let (a, b) = (Sha256::digest(a), Sha256::digest(b));
    a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Middleware on the operator endpoints (`/metrics`, `/health/db`, `/health/redis`,
/// `/health/cache`): without `METRICS_TOKEN`, only clients on loopback (the client address as
/// the rate limiter sees it, so a request a trusted proxy forwards counts as its origin's);
/// with it, any client presenting it as a bearer token, and no other.
pub async fn operator_gate(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let allowed = match &state.config.auth.metrics_token {
        Some(token) => {
            let presented = auth::bearer_token(req.headers()).unwrap_or("");
            if !secrets_equal(presented.as_bytes(), token.as_bytes()) {
                return ApiError::Unauthorized.into_response();
            }
            true
        }
        None => client_ip(&state, req.extensions(), req.headers()).is_some_and(is_loopback),
    };
    if !allowed {
        return ApiError::OperatorOnly.into_response();
    }
    next.run(req).await
}

/// Loopback, IPv4-mapped IPv6 loopback included.
fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
    }
}

/// The per-IP redirect limit, when on: `Some(decision)` for a request it refuses.
pub async fn check_redirect(state: &AppState, req: &Parts) -> Option<Decision> {
    let limit = state.config.limits.redirect_per_ip;
    if !limit.enabled() {
        return None;
    }
    let ip = client_ip(state, &req.extensions, &req.headers)?.to_string();
    let mut d = None;
    if check(state, Kind::RedirectPerIp, &ip, limit, &mut d).await {
        None
    } else {
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_equal_only_when_identical() {
        assert!(secrets_equal(b"s3cret", b"s3cret"));
        assert!(!secrets_equal(b"s3cret", b"s3creT"));
        assert!(!secrets_equal(b"s3cret", b"s3cret2"));
        assert!(!secrets_equal(b"", b"s3cret"));
    }

    #[test]
    fn loopback_includes_v4_mapped_v6() {
        for ip in ["127.0.0.1", "127.9.8.7", "::1", "::ffff:127.0.0.1"] {
            assert!(is_loopback(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["10.0.0.1", "::ffff:10.0.0.1", "2001:db8::1", "0.0.0.0"] {
            assert!(!is_loopback(ip.parse().unwrap()), "{ip}");
        }
    }
}
