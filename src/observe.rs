//! Metrics: one Prometheus registry per service instance (no global recorder, so several
//! instances in one process — the tests — never mix their numbers). This module is the registry
//! only: each component copies its own counters in (`export_metrics` beside the counters), so
//! nothing here knows the components.
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

    /// The exposition text. Components copy their own counters in first (each has an
    /// `export_metrics`; `AppState::export_metrics` calls them all).
    pub fn render(&self) -> String {
        for (counter, seen) in self.redirect_count.iter().zip(&self.redirect_seen) {
            counter.absolute(seen.get());
        }
        for (i, name) in RATE_LIMIT_NAMES.iter().enumerate() {
            let refused = self.rate_limited[i].load(Ordering::Relaxed);
            self.set_counter("shortener_rate_limited_total", vec![Label::new("limit", *name)], refused);
        }
        self.handle.render()
    }

    /// A counter's absolute value copied from an atomic kept elsewhere.
    pub fn copy_counter(&self, name: &'static str, labels: Vec<Label>, value: &AtomicU64) {
        self.set_counter(name, labels, value.load(Ordering::Relaxed));
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
