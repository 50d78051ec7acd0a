//! The API's one error envelope: `{"error":{"code":"…","message":"…"}}` with the right status.
//!
//! Client mistakes get a 4xx that says what was wrong. Server faults are logged once here and
//! shown to the client only as an opaque `internal` error; an overloaded dependency is a 503 with
//! `Retry-After`, never a 500.

use axum::{
    extract::rejection::{JsonRejection, PathRejection, QueryRejection},
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use serde::Serialize;

/// The body of every API error: `{"error":{"code":"…","message":"…"}}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// The inside of [`ErrorBody`].
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// A stable, machine-readable code (`not_found`, `invalid_url`, `rate_limited`, …).
    pub code: String,
    /// A sentence for people.
    pub message: String,
}

/// Every error the API answers with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request cannot be understood (malformed JSON, bad query).
    #[error("{1}")]
    BadRequest(&'static str, String),
    /// 422: understood but not acceptable (invalid URL, code, timestamp …).
    #[error("{1}")]
    Invalid(&'static str, String),
    /// 401: no or unknown API key.
    #[error("missing or unknown API key")]
    Unauthorized,
    /// 403: the key was revoked.
    #[error("this API key has been revoked")]
    Forbidden,
    /// 403: an operator endpoint asked from an address other than loopback, with no
    /// `METRICS_TOKEN` set that could let it in.
    #[error("this endpoint answers only clients on loopback unless METRICS_TOKEN is set")]
    OperatorOnly,
    /// 404: no such link.
    #[error("no link with this code")]
    NotFound,
    /// 409: the custom code is taken.
    #[error("this code is already taken")]
    Conflict,
    /// 413: the body is larger than `MAX_BODY_BYTES`.
    #[error("request body is too large")]
    PayloadTooLarge,
    /// 415: the body is not JSON.
    #[error("expected Content-Type: application/json")]
    UnsupportedMediaType,
    /// 429: a rate limit was hit; retry after the given seconds.
    #[error("rate limit exceeded")]
    TooManyRequests(u64),
    /// 503: a dependency is saturated or down; retry after the given seconds.
    #[error("service temporarily unavailable")]
    Unavailable(u64),
    /// 500: a bug or an unexpected fault; details are logged, not shown.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(..) => StatusCode::BAD_REQUEST,
            ApiError::Invalid(..) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden | ApiError::OperatorOnly => StatusCode::FORBIDDEN,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::Conflict => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable machine-readable code of this error.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(c, _) | ApiError::Invalid(c, _) => c,
            ApiError::Unauthorized => "unauthorized",
            ApiError::Forbidden => "forbidden",
            ApiError::OperatorOnly => "operator_only",
            ApiError::NotFound => "not_found",
            ApiError::Conflict => "code_taken",
            ApiError::PayloadTooLarge => "payload_too_large",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::TooManyRequests(_) => "rate_limited",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal(_) => "internal",
        }
    }

    /// A 422 with the given code and message.
    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::Invalid(code, message.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(detail) = &self {
            tracing::error!(error.detail = %detail, "internal error answered as 500");
        }
        let status = self.status();
        let body = Json(ErrorBody { error: ErrorDetail { code: self.code().to_string(), message: self.to_string() } });
        let mut resp = (status, body).into_response();
        if let ApiError::TooManyRequests(s) | ApiError::Unavailable(s) = self {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s.max(1)));
        }
        if matches!(self, ApiError::Unauthorized) {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if matches!(self, ApiError::PayloadTooLarge) {
            // The rest of the body is never read, so the connection cannot carry another
            // request: say so, or a client may send its next request on it while it closes.
            resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        match r {
            JsonRejection::JsonDataError(e) => ApiError::Invalid("invalid_body", e.body_text()),
            JsonRejection::JsonSyntaxError(e) => ApiError::BadRequest("malformed_json", e.body_text()),
            JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType,
            other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge,
            other => ApiError::BadRequest("bad_body", other.body_text()),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::BadRequest("bad_query", r.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        ApiError::BadRequest("bad_path", r.body_text())
    }
}

impl From<crate::db::DbError> for ApiError {
    fn from(e: crate::db::DbError) -> Self {
        match e {
            crate::db::DbError::Busy => ApiError::Unavailable(1),
            crate::db::DbError::Sql(e) => ApiError::Internal(e.to_string()),
        }
    }
}
