//! Metrics: one Prometheus registry per service instance (no global recorder, so several
//! instances in one process — the tests — never mix their numbers).
//!
//! The redirect route records into pre-registered handles (an atomic add and a histogram
//! sample; no label lookup per request). API routes go through a middleware that labels by
//! matched route, method and status. Counters that the service already keeps as atomics (cache
//! tiers, Redis, clicks) are copied into the registry when `/metrics` is scraped.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use axum::http::StatusCode;
use metrics::{Counter, Gauge, Histogram, Key, Label, Metadata, Recorder};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

const META: Metadata<'static> = Metadata::new("shortener", metrics::Level::INFO, None);

/// Latency buckets (seconds): fine below a millisecond, where redirects live.
const BUCKETS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

const REDIRECT_STATUSES: [u16; 8] = [301, 302, 307, 308, 404, 410, 503, 0];

/// The registry and the hot path's handles.
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    redirect_count: [Counter; REDIRECT_STATUSES.len()],
    redirect_seen: [crate::striped::Striped; REDIRECT_STATUSES.len()],
    redirect_latency: [Histogram; REDIRECT_STATUSES.len()],
    route_handles: std::sync::RwLock<std::collections::HashMap<u64, (Counter, Histogram)>>,
    route_hasher: std::collections::hash_map::RandomState,
    /// Requests refused by a rate limit, by limit name (kept here so `/metrics` can show them).
    pub rate_limited: [AtomicU64; RATE_LIMIT_NAMES.len()],
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry.
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets(BUCKETS)
            .expect("static buckets are valid")
            .upkeep_timeout(Duration::from_secs(5))
            .build_recorder();
        let handle = recorder.handle();
        let redirect_count = REDIRECT_STATUSES.map(|s| {
            recorder.register_counter(
                &Key::from_parts("shortener_http_requests_total", route_labels("/{code}", "GET", s)),
                &META,
            )
        });
        let redirect_latency = REDIRECT_STATUSES.map(|s| {
            recorder.register_histogram(
                &Key::from_parts("shortener_http_request_duration_seconds", route_labels("/{code}", "GET", s)),
                &META,
            )
        });
        let m = Metrics {
            recorder,
            handle,
            redirect_count,
            redirect_seen: Default::default(),
            redirect_latency,
            route_handles: Default::default(),
            route_hasher: Default::default(),
            rate_limited: Default::default(),
        };
        m.gauge("shortener_build_info", vec![Label::new("version", env!("CARGO_PKG_VERSION"))]).set(1.0);
        m
    }

    /// Records one redirect-route answer.
    #[inline]
    pub fn record_redirect(&self, status: StatusCode, elapsed: Duration) {
        let i = REDIRECT_STATUSES.iter().position(|s| *s == status.as_u16()).unwrap_or(REDIRECT_STATUSES.len() - 1);
        self.redirect_seen[i].add(1);
        self.redirect_latency[i].record(elapsed.as_secs_f64());
    }

    /// Records one API (or health) answer. Handles are registered once per (route, method,
    /// status) and looked up by a hash afterwards, so a request allocates nothing here.
    pub fn record_route(&self, route: &str, method: &str, status: StatusCode, elapsed: Duration) {
        use std::hash::BuildHasher;
        let key = self.route_hasher.hash_one((route, method, status.as_u16()));
        let found = self.route_handles.read().unwrap_or_else(|e| e.into_inner()).get(&key).cloned();
        let (count, latency) = match found {
            Some(handles) => handles,
            None => {
                let labels = route_labels(route, method, status.as_u16());
                let handles = (
                    self.counter_with("shortener_http_requests_total", labels.clone()),
                    self.recorder
                        .register_histogram(&Key::from_parts("shortener_http_request_duration_seconds", labels), &META),
                );
                self.route_handles.write().unwrap_or_else(|e| e.into_inner()).insert(key, handles.clone());
                handles
            }
        };
        count.increment(1);
        latency.record(elapsed.as_secs_f64());
    }

    fn counter_with(&self, name: &'static str, labels: Vec<Label>) -> Counter {
        self.recorder.register_counter(&Key::from_parts(name, labels), &META)
    }

    /// A counter set to an absolute value (for counters kept elsewhere as atomics).
    pub fn set_counter(&self, name: &'static str, labels: Vec<Label>, value: u64) {
        self.counter_with(name, labels).absolute(value);
    }

    /// A gauge.
    pub fn gauge(&self, name: &'static str, labels: Vec<Label>) -> Gauge {
        self.recorder.register_gauge(&Key::from_parts(name, labels), &META)
    }

    /// Drains histogram samples into their buckets (run every few seconds).
    pub fn upkeep(&self) {
        self.handle.run_upkeep();
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        for (counter, seen) in self.redirect_count.iter().zip(&self.redirect_seen) {
            counter.absolute(seen.get());
        }
        self.handle.render()
    }
}

/// Route labels use `:param` for path parameters (`/api/v1/links/:code`): braces inside label
/// values are legal, but several exposition parsers mishandle them.
fn route_labels(route: &str, method: &str, status: u16) -> Vec<Label> {
    let status = if status == 0 { "other".to_string() } else { status.to_string() };
    let route = route.replace('{', ":").replace('}', "");
    vec![Label::new("route", route), Label::new("method", method.to_string()), Label::new("status", status)]
}

/// Names of the rate limits, in the order of [`Metrics::rate_limited`].
pub const RATE_LIMIT_NAMES: [&str; 5] =
    ["create_per_key", "create_per_ip", "api_per_ip", "redirect_per_ip", "auth_failures_per_ip"];

/// Fills the registry from the service's own counters; called on every scrape.
pub fn sync_from_state(state: &crate::state::AppState) {
    let m = &state.metrics;
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let r = &state.resolver;
    let tier = |t: &str| vec![Label::new("tier", t.to_string())];
    m.set_counter("shortener_cache_lookups_total", tier("l1"), r.stats.l1_hits.get());
    m.set_counter("shortener_cache_lookups_total", tier("redis"), r.stats.redis_hits.get());
    m.set_counter("shortener_cache_lookups_total", tier("miss"), r.stats.misses.get());
    m.set_counter("shortener_db_lookups_total", vec![], r.stats.db_lookups.get());
    m.set_counter("shortener_cache_negative_hits_total", vec![], r.stats.negative_hits.get());
    m.set_counter("shortener_single_flight_waits_total", vec![], r.stats.flight_waits.get());
    m.set_counter("shortener_lookup_errors_total", vec![], r.stats.errors.get());
    m.gauge("shortener_l1_entries", vec![]).set(r.l1.len() as f64);
    if let Some(redis) = &r.redis {
        let s = &redis.stats;
        m.set_counter("shortener_redis_errors_total", vec![], get(&s.errors));
        m.set_counter("shortener_redis_timeouts_total", vec![], get(&s.timeouts));
        m.set_counter("shortener_redis_breaker_opened_total", vec![], get(&s.breaker_opened));
        m.set_counter("shortener_redis_invalidations_replayed_total", vec![], get(&s.replayed));
        m.set_counter("shortener_cache_write_backs_total", vec![Label::new("result", "landed")], get(&s.fills));
        m.set_counter(
            "shortener_cache_write_backs_total",
            vec![Label::new("result", "rejected")],
            get(&s.fills_rejected),
        );
        let state_value = match redis.breaker_state() {
            "closed" => 0.0,
            "replaying" => 1.0,
            _ => 2.0,
        };
        m.gauge("shortener_redis_breaker_state", vec![]).set(state_value);
        let status = redis.pool().status();
        m.gauge("shortener_redis_pool_connections", vec![Label::new("state", "open")]).set(status.size as f64);
        m.gauge("shortener_redis_pool_connections", vec![Label::new("state", "idle")]).set(status.available as f64);
        m.gauge("shortener_redis_pool_waiting", vec![]).set(status.waiting as f64);
    }
    m.gauge("shortener_db_read_pool_connections", vec![Label::new("state", "open")]).set(f64::from(state.db.size()));
    m.gauge("shortener_db_read_pool_connections", vec![Label::new("state", "idle")]).set(state.db.num_idle() as f64);
    let c = &state.clicks.stats;
    m.set_counter("shortener_clicks_recorded_total", vec![], get(&c.recorded));
    m.set_counter("shortener_clicks_flushed_total", vec![], get(&c.flushed));
    m.set_counter("shortener_click_flushes_total", vec![], get(&c.flushes));
    m.set_counter("shortener_click_flush_failures_total", vec![], get(&c.flush_failures));
    m.set_counter("shortener_clicks_bots_skipped_total", vec![], get(&c.bots_skipped));
    for (i, name) in RATE_LIMIT_NAMES.iter().enumerate() {
        m.set_counter("shortener_rate_limited_total", vec![Label::new("limit", *name)], get(&m.rate_limited[i]));
    }
    m.set_counter("shortener_auth_key_lookups_total", vec![], get(&state.key_cache.lookups));
    let w = &state.writer.stats;
    m.set_counter("shortener_write_batches_total", vec![Label::new("result", "committed")], get(&w.batches));
    m.set_counter("shortener_write_batches_total", vec![Label::new("result", "rolled_back")], get(&w.failed));
    m.set_counter("shortener_write_changes_total", vec![], get(&w.changes));
    m.set_counter("shortener_write_transaction_microseconds_total", vec![], get(&w.commit_micros));
    m.gauge("shortener_uptime_seconds", vec![]).set(state.started.elapsed().as_secs_f64());
}
