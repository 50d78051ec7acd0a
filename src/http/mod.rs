//! Routers and handlers only: parse the request, call the domain, shape the response.
//!
//! The redirect route carries no middleware at all (it is the hot path and bounds its own
//! waits: the Redis budget and the SQLite acquire timeout). The API gets a body limit, a request
//! timeout answered as 503, and request tracing.

pub mod auth;
pub mod health;
pub mod links;
pub mod redirect;

use axum::{
    extract::DefaultBodyLimit,
    http::StatusCode,
    routing::{get, post},
    Router,
};
use tower_http::{timeout::TimeoutLayer, trace::TraceLayer};

use crate::{error::ApiError, state::AppState};

/// The whole HTTP surface.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/links", post(links::create_link).get(links::list_links))
        .route("/links/{code}", get(links::get_link).patch(links::update_link).delete(links::delete_link))
        .route("/links/{code}/clicks", get(links::get_link_clicks))
        .fallback(|| async { ApiError::NotFound })
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        .layer(TimeoutLayer::with_status_code(StatusCode::SERVICE_UNAVAILABLE, state.config.request_timeout))
        .layer(TraceLayer::new_for_http());

    Router::new()
        .route("/{code}", get(redirect::follow_link))
        .route("/", get(redirect::home))
        .route("/health", get(health::liveness))
        .route("/health/cache", get(health::cache))
        .nest("/api/v1", api)
        .fallback(redirect::not_found)
        .with_state(state)
}
