//! `/health…` (liveness, readiness, SQLite, Redis, cache) and `/metrics` (Prometheus).
//!
//! Health endpoints are never rate limited and never touch the redirect path's counters.
//! `/health` and `/health/ready` are open (load balancers ask them); the others are for
//! operators (`limits::operator_gate`), and none of them shows a file path, a URL or a secret.
//! Redis' `INFO` is asked at most once a second, however often `/health/redis` is.

use std::{
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::Path,
    time::{Duration, Instant},
};

use axum::{
    extract::State,
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use serde_json::{json, Value};

use crate::{
    db,
    links::resolve::CacheReport,
    redis_client::{Breaker, RedisClient},
    state::AppState,
};

/// `GET /health`: 200 while the process serves.
#[utoipa::path(get, path = "/health", tag = "health", operation_id = "liveness",
    responses((status = 200, description = "The process serves.", body = crate::http::openapi::Liveness)))]
pub async fn liveness() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Why the database is not usable, if it is not: the file must still be the one we opened,
/// readable, and answer a query within a second.
async fn check_db(state: &AppState) -> Result<f64, String> {
    let path = &state.db_file;
    if !path.as_os_str().is_empty() {
        // The messages name no path: readiness is public, and the file's place is the
        // operator's business (it is in the log at startup).
        let meta = std::fs::metadata(path).map_err(|e| format!("database file: {}", e.kind()))?;
        if !meta.is_file() {
            return Err("database file is not a file".into());
        }
        // Root ignores permission bits, so check them: a database nobody may read is broken
        // even if this process could still read it.
        if meta.permissions().mode() & 0o444 == 0 {
            return Err("database file is not readable".into());
        }
        if let Some(ino) = state.db_inode {
            if meta.ino() != ino {
                return Err("database file was replaced".into());
            }
        }
    }
    let started = Instant::now();
    match tokio::time::timeout(Duration::from_secs(1), db::links::probe(&state.db)).await {
        Ok(Ok(_)) => Ok(started.elapsed().as_secs_f64() * 1000.0),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("query timed out".into()),
    }
}

fn redis_status(state: &AppState) -> &'static str {
    match &state.resolver.redis {
        None => "disabled",
        Some(r) if r.client().breaker() == Breaker::Closed => "ok",
        Some(_) => "degraded",
    }
}

/// `GET /health/ready`: 200 while the database answers (Redis down is `"redis":"degraded"`,
/// still 200: the service serves without it); 503 when it does not.
#[utoipa::path(get, path = "/health/ready", tag = "health", operation_id = "readiness",
    responses(
        (status = 200, description = "The database answers (Redis may be degraded: the service serves without it).", body = crate::http::openapi::Readiness),
        (status = 503, description = "The database does not answer, or its file was replaced or made unreadable.", body = crate::http::openapi::Readiness),
    ))]
pub async fn readiness(State(state): State<AppState>) -> Response {
    let redis = redis_status(&state);
    match check_db(&state).await {
        Ok(_) => Json(json!({"status": "ok", "db": "ok", "redis": redis})).into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "readiness: database unusable");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"status": "unavailable", "db": "error", "db_error": e, "redis": redis})),
            )
                .into_response()
        }
    }
}

fn file_len(p: &Path) -> Option<u64> {
    std::fs::metadata(p).ok().map(|m| m.len())
}

/// `GET /health/db`: backend, status, pool sizes, query latency, and for SQLite the file and
/// WAL sizes (no path, no URL: nothing that could carry a secret).
#[utoipa::path(get, path = "/health/db", tag = "operator", operation_id = "health_db",
    responses(
        (status = 200, description = "The database answers.", body = crate::http::openapi::DbHealth),
        (status = 503, description = "The database does not answer.", body = crate::http::openapi::DbHealth),
        (status = 401, description = "`METRICS_TOKEN` is set and the request does not present it as a bearer token.", body = crate::error::ErrorBody),
        (status = 403, description = "`METRICS_TOKEN` is not set and the client is not on loopback.", body = crate::error::ErrorBody),
    ))]
pub async fn db(State(state): State<AppState>) -> Response {
    let check = check_db(&state).await;
    let path = &state.db_file;
    let mut wal_path = path.clone().into_os_string();
    wal_path.push("-wal");
    let wal = file_len(Path::new(&wal_path));
    let (size, idle) = state.db.pool_stats();
    let backend = state.db.backend();
    // PostgreSQL: one pool for reads and the writer, one more connection than the reads get.
    let max = match backend {
        db::Backend::Sqlite => state.config.db.read_pool_size,
        db::Backend::Postgres => state.config.db.read_pool_size + 1,
    };
    let body = json!({
        "status": if check.is_ok() { "ok" } else { "error" },
        "backend": backend.as_str(),
        "error": check.as_ref().err(),
        "query_ms": check.as_ref().ok(),
        "db_bytes": file_len(path),
        "wal_bytes": wal,
        "read_pool": {
            "max": max,
            "size": size,
            "idle": idle,
        },
        "writer": {"connections": 1, "batch_max": state.config.db.write_batch_max},
    });
    let status = if check.is_ok() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(body)).into_response()
}

/// Fields of `INFO` that `/health/redis` reports.
const INFO_FIELDS: &[&str] = &[
    "redis_version",
    "used_memory",
    "used_memory_human",
    "maxmemory",
    "maxmemory_human",
    "maxmemory_policy",
    "evicted_keys",
    "keyspace_hits",
    "keyspace_misses",
    "connected_clients",
];

/// The `INFO` fields of [`INFO_FIELDS`], asked of Redis at most once a second: callers within
/// a second of the last answer share it, and concurrent callers wait for one `INFO`.
async fn redis_info(state: &AppState, client: &RedisClient) -> serde_json::Map<String, Value> {
    let mut cached = state.redis_info.lock().await;
    if let Some((at, info)) = cached.as_ref() {
        if at.elapsed() < INFO_CACHE_TTL {
            return info.clone();
        }
    }
    let mut info = serde_json::Map::new();
    if let Ok(Ok(mut c)) = tokio::time::timeout(Duration::from_millis(500), client.pool().get()).await {
        let raw: Result<String, _> = tokio::time::timeout(
            Duration::from_millis(500),
            redis::cmd("INFO").arg("all").query_async::<String>(&mut *c),
        )
        .await
        .unwrap_or_else(|_| Err(redis::RedisError::from((redis::ErrorKind::IoError, "INFO timed out"))));
        if let Ok(raw) = raw {
            for line in raw.lines() {
                if let Some((k, v)) = line.split_once(':') {
                    if INFO_FIELDS.contains(&k) {
                        let v = v.trim();
                        info.insert(k.to_string(), v.parse::<i64>().map_or_else(|_| json!(v), |n| json!(n)));
                    }
                }
            }
        }
    }
    *cached = Some((Instant::now(), info.clone()));
    info
}

/// How long one `INFO` answer serves `/health/redis`.
const INFO_CACHE_TTL: Duration = Duration::from_secs(1);

/// `GET /health/redis`: reachability, ping, pool, breaker, and memory/eviction figures from
/// `INFO`, with warnings when Redis is not set up as an LRU cache.
#[utoipa::path(get, path = "/health/redis", tag = "operator", operation_id = "health_redis",
    responses(
        (status = 200, description = "Redis as this instance sees it (`status` is `disabled` when Redis is off, and then the only field).", body = crate::http::openapi::RedisHealth),
        (status = 401, description = "`METRICS_TOKEN` is set and the request does not present it as a bearer token.", body = crate::error::ErrorBody),
        (status = 403, description = "`METRICS_TOKEN` is not set and the client is not on loopback.", body = crate::error::ErrorBody),
    ))]
pub async fn redis(State(state): State<AppState>) -> Json<Value> {
    let Some(client) = state.resolver.redis.as_ref().map(|c| c.client().clone()) else {
        return Json(json!({"status": "disabled"}));
    };
    let snap = client.snapshot().await;
    let replayed = state.resolver.bus.as_ref().map_or(0, |b| b.replayed.load(std::sync::atomic::Ordering::Relaxed));
    let mut info = if snap.reachable { redis_info(&state, &client).await } else { serde_json::Map::new() };
    let mut warnings = Vec::new();
    if snap.reachable {
        if info.get("maxmemory").and_then(Value::as_i64) == Some(0) {
            warnings.push("maxmemory is 0: Redis will grow without bound instead of evicting (set maxmemory 200mb)");
        }
        if let Some(p) = info.get("maxmemory_policy").and_then(Value::as_str) {
            if !p.starts_with("allkeys-") {
                warnings.push("maxmemory-policy is not allkeys-*: a full Redis refuses writes instead of evicting (use allkeys-lru)");
            }
        }
        let hits = info.get("keyspace_hits").and_then(Value::as_i64).unwrap_or(0);
        let misses = info.get("keyspace_misses").and_then(Value::as_i64).unwrap_or(0);
        if hits + misses > 0 {
            info.insert("keyspace_hit_ratio".into(), json!(hits as f64 / (hits + misses) as f64));
        }
    }
    let status = match (snap.reachable, snap.breaker) {
        (true, "closed") => "ok",
        _ => "degraded",
    };
    Json(json!({
        "status": status,
        "reachable": snap.reachable,
        "ping_ms": snap.ping_ms,
        "breaker": snap.breaker,
        "breaker_opened": snap.breaker_opened,
        "errors": snap.errors,
        "timeouts": snap.timeouts,
        "invalidations_replayed": replayed,
        "pool": {"max": state.config.redis.pool_size, "size": snap.pool_size, "available": snap.pool_available, "waiting": snap.pool_waiting},
        "info": info,
        "warnings": warnings,
    }))
}

/// `GET /health/cache`: hits per tier, misses, SQLite reads, ratios, guard activity.
#[utoipa::path(get, path = "/health/cache", tag = "operator", operation_id = "health_cache",
    responses(
        (status = 200, description = "Hits per tier, misses, database reads, guard activity.", body = CacheReport),
        (status = 401, description = "`METRICS_TOKEN` is set and the request does not present it as a bearer token.", body = crate::error::ErrorBody),
        (status = 403, description = "`METRICS_TOKEN` is not set and the client is not on loopback.", body = crate::error::ErrorBody),
    ))]
pub async fn cache(State(state): State<AppState>) -> Json<CacheReport> {
    Json(state.resolver.report())
}

/// `GET /metrics`: Prometheus text format (who may ask: `limits::operator_gate`).
#[utoipa::path(get, path = "/metrics", tag = "operator", operation_id = "metrics",
    responses(
        (status = 200, description = "Prometheus text format.", content_type = "text/plain; version=0.0.4; charset=utf-8", body = String),
        (status = 401, description = "`METRICS_TOKEN` is set and the request does not present it as a bearer token.", body = crate::error::ErrorBody),
        (status = 403, description = "`METRICS_TOKEN` is not set and the client is not on loopback.", body = crate::error::ErrorBody),
    ))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    state.export_metrics();
    let mut resp = state.metrics.render().into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    resp
}
