//! API authentication: `Authorization: Bearer <key>`. 401 without a known key, 403 for a
//! revoked one. Keys are looked up by SHA-256 on every call (one indexed read), so a key revoked
//! from the command line stops working at once.

use axum::{
    extract::{FromRequest, FromRequestParts, Request},
    http::{header, request::Parts},
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

/// Recently verified keys, so that a busy client does not cost a database read per call.
/// Only keys that were valid are kept, for `AUTH_CACHE_TTL_MS`; `shortener keys revoke`
/// announces revocations through Redis and every instance then forgets all cached keys, so a
/// revocation takes effect at once while Redis is up, and within the TTL otherwise.
pub struct KeyCache {
    ttl: std::time::Duration,
    map: std::sync::Mutex<std::collections::HashMap<Vec<u8>, (ApiKeyRow, std::time::Instant)>>,
}

impl KeyCache {
    /// A cache keeping keys for `ttl` (zero disables it).
    pub fn new(ttl: std::time::Duration) -> Self {
        KeyCache { ttl, map: Default::default() }
    }

    fn get(&self, hash: &[u8]) -> Option<ApiKeyRow> {
        if self.ttl.is_zero() {
            return None;
        }
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.get(hash).filter(|(_, at)| at.elapsed() < self.ttl).map(|(row, _)| row.clone())
    }

    fn put(&self, hash: Vec<u8>, row: ApiKeyRow) {
        if self.ttl.is_zero() {
            return;
        }
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= 10_000 {
            let ttl = self.ttl;
            map.retain(|_, (_, at)| at.elapsed() < ttl);
        }
        map.insert(hash, (row, std::time::Instant::now()));
    }

    /// Forgets every key (a key was revoked somewhere).
    pub fn clear(&self) {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

/// Checks the `Authorization: Bearer` key of a request.
pub async fn authenticate(headers: &axum::http::HeaderMap, state: &AppState) -> Result<ApiKeyRow, ApiError> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, key) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| key.trim())
        })
        .filter(|k| !k.is_empty())
        .ok_or(ApiError::Unauthorized)?;
    let hash = keys::hash_key(presented);
    if let Some(row) = state.key_cache.get(&hash) {
        return Ok(row);
    }
    let row = keys::find_key_by_hash(&state.db, &hash).await?.ok_or(ApiError::Unauthorized)?;
    if row.revoked_at.is_some() {
        return Err(ApiError::Forbidden);
    }
    state.key_cache.put(hash, row.clone());
    Ok(row)
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
