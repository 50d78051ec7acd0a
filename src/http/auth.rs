//! API authentication at the HTTP edge: `Authorization: Bearer <key>` (401 without a known key,
//! 403 for a revoked one), and the extractors that answer in the API's JSON envelope. What a key
//! may do and how keys are verified and remembered is the `auth` domain module's.

use axum::{
    extract::{FromRequest, FromRequestParts, Request},
    http::{header, request::Parts, HeaderMap},
    Json,
};
use serde::de::DeserializeOwned;

use crate::{
    auth::AuthError,
    db::keys::{self, ApiKeyRow},
    error::ApiError,
    state::AppState,
};

/// The authenticated caller.
#[derive(Clone)]
pub struct Caller(pub ApiKeyRow);

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

/// Checks a presented key by its hash (memory first, then the database).
pub async fn verify(state: &AppState, hash: &[u8]) -> Result<ApiKeyRow, ApiError> {
    state.key_cache.verify(&state.db, hash).await.map_err(ApiError::from)
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Unknown => ApiError::Unauthorized,
            AuthError::Revoked => ApiError::Forbidden,
            AuthError::Db(e) => ApiError::from(e),
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
