//! `/health` (liveness) and `/health/cache` (redirect-path counters).

use axum::{extract::State, Json};
use serde_json::{json, Value};

use crate::{links::resolve::CacheReport, state::AppState};

/// `GET /health`: 200 while the process serves.
pub async fn liveness() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// `GET /health/cache`: hits per tier, misses, SQLite reads, ratios.
pub async fn cache(State(state): State<AppState>) -> Json<CacheReport> {
    Json(state.resolver.report())
}
