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
    let row = keys::find_key_by_hash(&state.db, &keys::hash_key(presented)).await?.ok_or(ApiError::Unauthorized)?;
    if row.revoked_at.is_some() {
        return Err(ApiError::Forbidden);
    }
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
