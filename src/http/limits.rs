//! The rate-limit gate in front of `/api` (per client IP for every call, per key and per IP for
//! link creation) and the optional per-IP redirect limit. Unlimited keys skip the API limits;
//! health checks and `/metrics` are never limited.

use std::net::SocketAddr;

use axum::{
    extract::{ConnectInfo, Request, State},
    http::{request::Parts, Method},
    middleware::Next,
    response::{IntoResponse, Response},
};

use super::auth::{authenticate, Caller};
use crate::{
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

/// Middleware on `/api/v1`.
pub async fn api_gate(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let cfg = &state.config;
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
    let ip = state.limiter.client_ip(peer, req.headers()).map(|ip| ip.to_string());
    let caller = authenticate(req.headers(), &state).await.ok();
    let unlimited = caller.as_ref().is_some_and(|k| k.unlimited);
    // Inside the nested API router the path is seen without its `/api/v1` prefix.
    let is_create =
        req.method() == Method::POST && matches!(req.uri().path().trim_end_matches('/'), "/links" | "/api/v1/links");
    let mut decision = None;
    let mut allowed = true;
    if !unlimited {
        if let (true, Some(ip)) = (cfg.rate_api_per_ip.enabled(), ip.as_deref()) {
            allowed &= check(&state, Kind::ApiPerIp, ip, cfg.rate_api_per_ip, &mut decision).await;
        }
        if allowed && is_create {
            if let (true, Some(key)) = (cfg.rate_create_per_key.enabled(), caller.as_ref()) {
                allowed &=
                    check(&state, Kind::CreatePerKey, &key.id.to_string(), cfg.rate_create_per_key, &mut decision)
                        .await;
            }
            if let (true, true, Some(ip)) = (allowed, cfg.rate_create_per_ip.enabled(), ip.as_deref()) {
                allowed &= check(&state, Kind::CreatePerIp, ip, cfg.rate_create_per_ip, &mut decision).await;
            }
        }
    }
    if let Some(key) = caller {
        req.extensions_mut().insert(Caller(key));
    }
    let mut resp = match (allowed, decision) {
        (false, Some(d)) => ApiError::TooManyRequests(d.retry_after_secs).into_response(),
        _ => next.run(req).await,
    };
    if let Some(d) = decision {
        d.write_headers(resp.headers_mut());
    }
    resp
}

/// The per-IP redirect limit, when on: `Some(decision)` for a request it refuses.
pub async fn check_redirect(state: &AppState, req: &Parts) -> Option<Decision> {
    let limit = state.config.rate_redirect_per_ip;
    if !limit.enabled() {
        return None;
    }
    let peer = req.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
    let ip = state.limiter.client_ip(peer, &req.headers)?.to_string();
    let mut d = None;
    if check(state, Kind::RedirectPerIp, &ip, limit, &mut d).await {
        None
    } else {
        d
    }
}
