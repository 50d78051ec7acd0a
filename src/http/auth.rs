//! API authentication: `Authorization: Bearer <key>`. 401 without a known key, 403 for a
//! revoked one.
//!
//! A verified key is trusted for `AUTH_CACHE_TTL_MS` without a database read; `shortener keys
//! revoke` announces revocations through Redis and every instance then forgets its cached keys,
//! so a revocation applies at once while Redis is up and within the TTL otherwise. A key that
//! failed (unknown or revoked) is remembered for [`FAILED_KEY_TTL`], so a flood of one bad token
//! costs one database read, not one per request; and a client address that ran out of failed
//! attempts (`RATE_LIMIT_AUTH_FAILURES_PER_IP_PER_MINUTE`, counted in `limits`) is refused from
//! memory until its `Retry-After` has passed. Every map here is bounded.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

use axum::{
    extract::{FromRequest, FromRequestParts, Request},
    http::{header, request::Parts, HeaderMap},
    Json,
};
use serde::de::DeserializeOwned;

use crate::{
    db::keys::{self, ApiKeyRow},
    error::ApiError,
    state::AppState,
};

/// The authenticated caller.
#[derive(Clone)]
pub struct Caller(pub ApiKeyRow);

/// How long a key that failed is answered from memory.
pub const FAILED_KEY_TTL: Duration = Duration::from_secs(10);

/// Most entries of each map below: past it, expired entries are dropped, and if that is not
/// enough the map starts over (a flood of distinct tokens or addresses cannot grow memory).
const MAX_ENTRIES: usize = 10_000;

/// Inserts into a bounded map of entries that expire.
fn insert_bounded<K: std::hash::Hash + Eq, V>(
    map: &mut HashMap<K, (V, Instant)>,
    key: K,
    value: V,
    expired: impl Fn(&V, Instant) -> bool,
) {
    if map.len() >= MAX_ENTRIES {
        map.retain(|_, (v, at)| !expired(v, *at));
        if map.len() >= MAX_ENTRIES {
            map.clear();
        }
    }
    map.insert(key, (value, Instant::now()));
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What this process remembers about presented keys: recently verified ones (for
/// `AUTH_CACHE_TTL_MS`; zero disables that), recently failed ones, and client addresses that are
/// refused for too many failures.
pub struct KeyCache {
    ttl: Duration,
    verified: Mutex<HashMap<Vec<u8>, (ApiKeyRow, Instant)>>,
    /// Failed key hashes: whether the key was revoked (403) rather than unknown (401).
    failed: Mutex<HashMap<Vec<u8>, (bool, Instant)>>,
    /// Addresses refused until the instant stored as the entry's value.
    blocked: Mutex<HashMap<IpAddr, (Instant, Instant)>>,
    /// Keys looked up in the database (neither verified nor failed in memory).
    pub lookups: std::sync::atomic::AtomicU64,
}

impl KeyCache {
    /// A cache keeping verified keys for `ttl` (zero disables that part).
    pub fn new(ttl: Duration) -> Self {
        KeyCache {
            ttl,
            verified: Default::default(),
            failed: Default::default(),
            blocked: Default::default(),
            lookups: Default::default(),
        }
    }

    /// A verified key, from memory only.
    pub fn get(&self, hash: &[u8]) -> Option<ApiKeyRow> {
        if self.ttl.is_zero() {
            return None;
        }
        lock(&self.verified).get(hash).filter(|(_, at)| at.elapsed() < self.ttl).map(|(row, _)| row.clone())
    }

    fn put(&self, hash: Vec<u8>, row: ApiKeyRow) {
        if self.ttl.is_zero() {
            return;
        }
        let ttl = self.ttl;
        insert_bounded(&mut lock(&self.verified), hash, row, |_, at| at.elapsed() >= ttl);
    }

    /// The error a key that failed recently gets again, from memory only.
    fn failure(&self, hash: &[u8]) -> Option<ApiError> {
        let map = lock(&self.failed);
        let (revoked, _) = map.get(hash).filter(|(_, at)| at.elapsed() < FAILED_KEY_TTL)?;
        Some(if *revoked { ApiError::Forbidden } else { ApiError::Unauthorized })
    }

    fn put_failure(&self, hash: Vec<u8>, revoked: bool) {
        insert_bounded(&mut lock(&self.failed), hash, revoked, |_, at| at.elapsed() >= FAILED_KEY_TTL);
    }

    /// Seconds until `ip` may try a key again, if it is refused for too many failures.
    pub fn blocked_for(&self, ip: IpAddr) -> Option<u64> {
        let now = Instant::now();
        let map = lock(&self.blocked);
        let (until, _) = map.get(&ip).filter(|(until, _)| *until > now)?;
        Some((*until - now).as_secs_f64().ceil() as u64)
    }

    /// Refuses `ip`'s unverified keys for `secs` seconds.
    pub fn block(&self, ip: IpAddr, secs: u64) {
        let now = Instant::now();
        insert_bounded(&mut lock(&self.blocked), ip, now + Duration::from_secs(secs.max(1)), |until, _| *until <= now);
    }

    /// Forgets every verified and failed key (a key was revoked somewhere, or created).
    pub fn clear(&self) {
        lock(&self.verified).clear();
        lock(&self.failed).clear();
    }
}

/// The bearer token of a request, if it carries one.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, key) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| key.trim())
        })
        .filter(|k| !k.is_empty())
}

/// Checks a presented key by its hash: memory first (verified keys, then recent failures), the
/// database only for a key seen neither way.
pub async fn verify(state: &AppState, hash: &[u8]) -> Result<ApiKeyRow, ApiError> {
    if let Some(row) = state.key_cache.get(hash) {
        return Ok(row);
    }
    if let Some(e) = state.key_cache.failure(hash) {
        return Err(e);
    }
    state.key_cache.lookups.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    match keys::find_key_by_hash(&state.db, hash).await? {
        None => {
            state.key_cache.put_failure(hash.to_vec(), false);
            Err(ApiError::Unauthorized)
        }
        Some(row) if row.revoked_at.is_some() => {
            state.key_cache.put_failure(hash.to_vec(), true);
            Err(ApiError::Forbidden)
        }
        Some(row) => {
            state.key_cache.put(hash.to_vec(), row.clone());
            Ok(row)
        }
    }
}

/// Checks the `Authorization: Bearer` key of a request.
pub async fn authenticate(headers: &HeaderMap, state: &AppState) -> Result<ApiKeyRow, ApiError> {
    let presented = bearer_token(headers).ok_or(ApiError::Unauthorized)?;
    verify(state, &keys::hash_key(presented)).await
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        // The API gate authenticated already (to exempt unlimited keys); don't look twice.
        if let Some(c) = parts.extensions.get::<Caller>() {
            return Ok(c.clone());
        }
        authenticate(&parts.headers, state).await.map(Caller)
    }
}

/// `Json<T>` whose rejections are the API's JSON errors (400 malformed, 422 wrong shape or
/// unknown field, 413 too large, 415 not JSON).
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        Json::<T>::from_request(req, state).await.map(|Json(v)| ApiJson(v)).map_err(ApiError::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_of_distinct_failed_keys_and_addresses_stays_within_the_bound() {
        let cache = KeyCache::new(Duration::from_secs(60));
        for i in 0..(3 * MAX_ENTRIES as u32) {
            cache.put_failure(i.to_be_bytes().to_vec(), false);
            cache.block(IpAddr::from(i.to_be_bytes()), 60);
        }
        assert!(lock(&cache.failed).len() <= MAX_ENTRIES);
        assert!(lock(&cache.blocked).len() <= MAX_ENTRIES);
        // The newest entries are still answered from memory.
        let last = 3 * MAX_ENTRIES as u32 - 1;
        assert!(matches!(cache.failure(&last.to_be_bytes()), Some(ApiError::Unauthorized)));
        assert!(cache.blocked_for(IpAddr::from(last.to_be_bytes())).is_some());
    }

    #[test]
    fn a_revoked_key_fails_as_forbidden_and_clear_forgets_failures() {
        let cache = KeyCache::new(Duration::from_secs(60));
        cache.put_failure(b"revoked".to_vec(), true);
        assert!(matches!(cache.failure(b"revoked"), Some(ApiError::Forbidden)));
        cache.clear();
        assert!(cache.failure(b"revoked").is_none());
    }
}
