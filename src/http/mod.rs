//! Routers and handlers only: parse the request, call the domain, shape the response; and the
//! one decision the connection layer leaves to us, which requests skip the router
//! ([`Surface::is_direct`]).
//!
//! # Direct redirects
//! A `GET`/`HEAD` of a code-shaped single segment goes straight to the redirect handler, without
//! the router's per-request work (route lookup, matched-path extension, boxed-service clone,
//! body conversion). The decision is derived from the same route table the router is built from
//! ([`Table`]): a segment that starts a route is never direct, so a route added at a code-shaped
//! path (`GET /stats`) is served by its handler. Every such segment must also be a reserved word
//! (`links::code::RESERVED`), so that no custom code can hide behind a route; a test checks the
//! two lists against each other. A layer added to the router does not run for direct redirects:
//! what a redirect needs is in `redirect::follow`. A plain head of such a request (no body, no
//! `Connection: close`, no query: `net::direct`) does not even reach hyper: the connection layer
//! parses it and asks [`DirectRedirects`], which answers through `redirect::follow_direct` — the
//! same answer.
//!
//! The redirect route carries no tower middleware at all: it is the hot path, it bounds its own
//! waits (the Redis budget, the SQLite acquire timeout), and it sets its own `x-request-id` and
//! records its metrics through pre-registered handles. The API and health routes get a request
//! id, request tracing (one info line per request, with the id in every line of its span),
//! metrics by route and status, and — for the API — a body limit and a timeout answered as 503.

pub mod admin;
pub mod auth;
pub mod health;
pub mod limits;
pub mod links;
pub mod openapi;
pub mod redirect;

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Instant,
};

use axum::{
    body::Body,
    extract::{ConnectInfo, DefaultBodyLimit, MatchedPath, Request, State},
    http::{HeaderName, HeaderValue, Method},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post, MethodRouter},
    Router,
};
use hyper::body::Incoming;
use tower_http::{
    request_id::{MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer},
    trace::{DefaultOnResponse, TraceLayer},
};

use crate::{error::ApiError, links::code, state::AppState};

/// The request id header.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Request ids: a random per-process prefix and a counter (`3f9a1c0e-1b`): unique, cheap, and
/// they sort by arrival within a process.
#[derive(Clone, Copy, Default)]
pub struct RequestIds;

static PREFIX: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
static COUNTER: AtomicU64 = AtomicU64::new(0);
const ID_BLOCK_SIZE: u64 = 1024;

thread_local! {
    static ID_BLOCK: std::cell::Cell<(u64, u64)> = const { std::cell::Cell::new((0, 0)) };
}

/// A fresh request id (hex written by hand into a stack buffer: this runs on every redirect).
pub fn next_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let prefix = *PREFIX.get_or_init(rand::random::<u32>);
    // Each thread takes ids from the shared counter a thousand at a time: unique without one
    // contended atomic per request.
    let n = ID_BLOCK.with(|b| {
        let (next, end) = b.get();
        let (next, end) = if next == end {
            let start = COUNTER.fetch_add(ID_BLOCK_SIZE, Ordering::Relaxed);
            (start, start + ID_BLOCK_SIZE)
        } else {
            (next, end)
        };
        b.set((next + 1, end));
        next
    });
    let mut buf = [0u8; 8 + 1 + 16];
    for (i, b) in buf[..8].iter_mut().enumerate() {
        *b = HEX[((prefix >> (28 - 4 * i)) & 0xf) as usize];
    }
    buf[8] = b'-';
    let digits = (64 - n.leading_zeros()).div_ceil(4).max(1) as usize;
    for i in 0..digits {
        buf[9 + i] = HEX[((n >> (4 * (digits - 1 - i))) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&buf[..9 + digits]).expect("hex is a valid header value")
}

impl MakeRequestId for RequestIds {
    fn make_request_id<B>(&mut self, _: &axum::http::Request<B>) -> Option<RequestId> {
        Some(RequestId::new(next_request_id()))
    }
}

/// The method as a metric label: one of the methods the API knows, or `other` — any token is a
/// valid HTTP method, and a label per made-up method would let clients grow the registry.
fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Counts and times every non-redirect request by matched route, method and status. Every
/// label comes from a closed set: routes from the route table (`unmatched` otherwise), methods
/// from [`method_label`], statuses from what the handlers answer.
async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req.extensions().get::<MatchedPath>().map_or("unmatched", |p| p.as_str()).to_string();
    let method = method_label(req.method());
    let resp = next.run(req).await;
    state.metrics.record_route(&route, method, resp.status(), started.elapsed());
    resp
}

/// Answers an API request still unanswered after `REQUEST_TIMEOUT_MS` with a 503 in the API's
/// envelope, with `Retry-After` (the handler's future is dropped).
async fn api_timeout(State(state): State<AppState>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(state.config.http.request_timeout, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => ApiError::Unavailable(1).into_response(),
    }
}

/// The methods a method router answers, from its `Allow` header value (axum keeps it for its
/// 405 answers and shows it only through `Debug`: `allow_header: Bytes(b"GET,HEAD")`). A test
/// checks the routes found this way against the OpenAPI document, so a change of that format
/// fails it rather than going unseen.
fn methods_of(method_router: &MethodRouter<AppState>) -> Vec<Method> {
    let debug = format!("{method_router:?}");
    if debug.contains("allow_header: Skip") {
        // `any(…)`: every method. Recorded as `ANY`, which no document names, so the check
        // fails for it instead of missing the route.
        return vec![Method::from_bytes(b"ANY").expect("a valid method token")];
    }
    let allow = debug.split("allow_header: Bytes(b\"").nth(1).and_then(|rest| rest.split('"').next()).unwrap_or("");
    allow.split(',').filter(|m| !m.is_empty()).filter_map(|m| Method::from_bytes(m.as_bytes()).ok()).collect()
}

/// Routes being declared: the first path segment of each (the table the router and the
/// direct-dispatch decision are both made from), and every (method, path) pair (what the
/// OpenAPI document is checked against).
pub struct Table {
    router: Router<AppState>,
    segments: Vec<&'static str>,
    routes: Vec<(Method, String)>,
}

impl Table {
    /// An empty table.
    pub fn new() -> Self {
        Table { router: Router::new(), segments: Vec::new(), routes: Vec::new() }
    }

    fn note(&mut self, path: &'static str) {
        let first = path.trim_start_matches('/').split('/').next().unwrap_or("");
        if !first.is_empty() && !first.starts_with('{') && !self.segments.contains(&first) {
            self.segments.push(first);
        }
    }

    /// Adds a route.
    pub fn route(mut self, path: &'static str, method_router: MethodRouter<AppState>) -> Self {
        self.note(path);
        self.routes.extend(methods_of(&method_router).into_iter().map(|m| (m, path.to_string())));
        self.router = self.router.route(path, method_router);
        self
    }

    /// Adds a router under a prefix. Its routes cannot be seen from here, so they are not in
    /// [`Table::routes`]: use [`Table::nest_table`] for routes of ours.
    pub fn nest(mut self, path: &'static str, router: Router<AppState>) -> Self {
        self.note(path);
        self.router = self.router.nest(path, router);
        self
    }

    /// Adds another table's routes under a prefix (recorded with it).
    pub fn nest_table(mut self, path: &'static str, other: Table) -> Self {
        self.note(path);
        self.routes.extend(other.routes.into_iter().map(|(m, p)| (m, format!("{path}{p}"))));
        self.router = self.router.nest(path, other.router);
        self
    }

    /// Adds another table's routes.
    pub fn merge(mut self, other: Table) -> Self {
        for s in other.segments {
            self.note(s);
        }
        self.routes.extend(other.routes);
        self.router = self.router.merge(other.router);
        self
    }

    /// Applies `f` to the router (layers); the routes stay as they are.
    pub fn map_router(mut self, f: impl FnOnce(Router<AppState>) -> Router<AppState>) -> Self {
        self.router = f(self.router);
        self
    }

    /// The first segment of every route (`health`, `metrics`, `api`, …).
    pub fn segments(&self) -> &[&'static str] {
        &self.segments
    }

    /// Every (method, path) declared, nested routes with their prefix (`GET /api/v1/links`);
    /// axum's `get` answers `HEAD` too, and is recorded with both.
    pub fn routes(&self) -> &[(Method, String)] {
        &self.routes
    }
}

impl Default for Table {
    fn default() -> Self {
        Table::new()
    }
}

/// Every route but the redirect's, with their layers.
fn routes(state: &AppState) -> Table {
    let api = Table::new()
        .route("/links", post(links::create_link).get(links::list_links))
        // A static segment wins over a parameter (matchit), whatever the order of declaration:
        // `/links/export` is the export, not the link `export` (see `links::code::RESERVED`).
        .route("/links/export", get(links::export_links))
        .route("/links/{code}", get(links::get_link).patch(links::update_link).delete(links::delete_link))
        .route("/links/{code}/clicks", get(links::get_link_clicks))
        .route("/links/{code}/qr", get(links::get_link_qr))
        // Public (no key needed), but behind the gate's per-address limit like every API call.
        .route("/openapi.json", get(openapi::get_openapi))
        .map_router(|r| {
            r.fallback(|| async { ApiError::NotFound })
                .layer(middleware::from_fn_with_state(state.clone(), limits::api_gate))
                .layer(DefaultBodyLimit::max(state.config.http.max_body_bytes))
                .layer(middleware::from_fn_with_state(state.clone(), api_timeout))
        });

    // Detail for operators only (see `limits::operator_gate`); `/health` and `/health/ready`
    // stay open for load balancers.
    let operator = Table::new()
        .route("/health/db", get(health::db))
        .route("/health/redis", get(health::redis))
        .route("/health/cache", get(health::cache))
        .route("/metrics", get(health::metrics))
        .map_router(|r| r.route_layer(middleware::from_fn_with_state(state.clone(), limits::operator_gate)));

    Table::new()
        .route("/", get(redirect::home))
        .route("/health", get(health::liveness))
        .route("/health/ready", get(health::readiness))
        .merge(operator)
        .nest_table("/api/v1", api)
        // HTML pages, not API routes: outside Table::routes and the OpenAPI document.
        .nest("/admin", admin::router(state))
        .map_router(|r| {
            r.route_layer(middleware::from_fn_with_state(state.clone(), track))
                .layer(
                    TraceLayer::new_for_http()
                        .make_span_with(|req: &Request| {
                            let id = req.headers().get(&X_REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("-");
                            tracing::info_span!("request", request_id = %id, http.method = %req.method(), http.path = %req.uri().path())
                        })
                        .on_request(())
                        .on_response(DefaultOnResponse::new().level(tracing::Level::INFO).latency_unit(tower_http::LatencyUnit::Micros)),
                )
                .layer(PropagateRequestIdLayer::new(X_REQUEST_ID.clone()))
                .layer(SetRequestIdLayer::new(X_REQUEST_ID.clone(), RequestIds))
        })
}

/// The whole HTTP surface: the router, and what it takes to skip it for redirects.
pub struct Surface {
    router: Router,
    state: AppState,
    /// First path segments of the routes: never sent direct.
    routed: Vec<&'static str>,
    /// Every (method, path) the router answers.
    routes: Vec<(Method, String)>,
    /// Attach the peer address to direct redirects too (a per-address redirect limit needs it).
    tag_redirects: bool,
}

impl Surface {
    /// The service's routes.
    pub fn new(state: AppState) -> Arc<Self> {
        Self::with_routes(state, |t| t)
    }

    /// The service's routes and whatever `extend` adds to them (before the redirect route, so
    /// an added route wins over a code of the same name).
    pub fn with_routes(state: AppState, extend: impl FnOnce(Table) -> Table) -> Arc<Self> {
        let table = extend(routes(&state));
        let routed = table.segments().to_vec();
        let mut routes = table.routes().to_vec();
        routes.extend([(Method::GET, "/{code}".to_string()), (Method::HEAD, "/{code}".to_string())]);
        let router = Router::new()
            .route("/{code}", get(redirect::follow_link))
            .merge(table.router)
            .fallback(redirect::not_found)
            .with_state(state.clone());
        let tag_redirects = state.config.limits.redirect_per_ip.enabled();
        Arc::new(Surface { router, state, routed, routes, tag_redirects })
    }

    /// The router (every request that is not a direct redirect).
    pub fn router(&self) -> &Router {
        &self.router
    }

    /// The first path segment of every route: never a direct redirect.
    pub fn routed_segments(&self) -> &[&'static str] {
        &self.routed
    }

    /// Every (method, path) the service answers, the redirect's `GET`/`HEAD /{code}` included
    /// (what the OpenAPI document must cover).
    pub fn routes(&self) -> &[(Method, String)] {
        &self.routes
    }

    /// Whether a request is one the router would send to the redirect handler — `GET` or
    /// `HEAD` of a code-shaped single segment that is neither reserved nor the start of a route
    /// — so it may go to [`redirect::follow`] directly.
    #[inline]
    pub fn is_direct(&self, method: &Method, path: &str) -> bool {
        (*method == Method::GET || *method == Method::HEAD)
            && path.strip_prefix('/').is_some_and(|seg| {
                code::is_code_shaped(seg)
                    && !code::is_never_a_link(seg)
                    && !self.routed.iter().any(|r| r.eq_ignore_ascii_case(seg))
            })
    }

    /// What the connection layer answers without hyper (see [`DirectRedirects`]).
    pub fn direct_redirects(self: &Arc<Self>) -> DirectRedirects {
        DirectRedirects(self.clone())
    }

    /// The service for one connection from `peer` (what the connection layer serves).
    pub fn connection_service(
        self: &Arc<Self>,
        peer: SocketAddr,
    ) -> impl hyper::service::Service<
        hyper::Request<Incoming>,
        Response = Response,
        Error = Infallible,
        Future: Send + 'static,
    > + Send
           + 'static {
        let surface = self.clone();
        hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            let direct = surface.is_direct(req.method(), req.uri().path());
            // The peer address is attached to every request the router sees (the API's limits
            // and the operator endpoints' loopback rule read it), but to a direct redirect only
            // when a per-address redirect limit needs it: inserting it would cost an allocation
            // per redirect.
            if surface.tag_redirects || !direct {
                req.extensions_mut().insert(ConnectInfo(peer));
            }
            let surface = surface.clone();
            async move {
                Ok(if direct {
                    redirect::follow(&surface.state, &req.into_parts().0).await
                } else {
                    match tower::ServiceExt::oneshot(surface.router.clone(), req.map(Body::new)).await {
                        Ok(r) => r,
                        Err(never) => match never {},
                    }
                })
            }
        })
    }
}

/// The direct redirects (`net::direct`): a plain `GET`/`HEAD` the connection layer parsed itself
/// goes to [`redirect::follow_direct`] when [`Surface::is_direct`] says the router would send it
/// to the redirect handler. Not with a per-address redirect limit: that one reads the peer
/// address and the forwarding headers the way the router's requests carry them, so those
/// requests go through hyper and [`redirect::follow`].
pub struct DirectRedirects(Arc<Surface>);

impl crate::net::Direct for DirectRedirects {
    type Body = Body;

    fn answer(
        &self,
        _peer: SocketAddr,
        head: &crate::net::Head<'_>,
    ) -> Option<impl std::future::Future<Output = Response> + Send + 'static + use<>> {
        let surface = &self.0;
        if surface.tag_redirects || !surface.is_direct(&head.method, head.path) {
            return None;
        }
        let state = surface.state.clone();
        let get = head.method == Method::GET;
        // Judged now: the User-Agent is in the connection's read buffer, gone once this returns.
        let bot = get && state.clicks.is_bot(head.header(&axum::http::header::USER_AGENT));
        let id = head.header(&X_REQUEST_ID).and_then(|v| HeaderValue::from_bytes(v).ok());
        let code: Box<str> = head.path[1..].into();
        Some(async move { redirect::follow_direct(&state, &code, get, bot, id).await })
    }
}

/// Log lines of one surface's export: when it starts, and when the database fails after the
/// first chunk.
pub(crate) struct ExportLog {
    pub started: &'static str,
    pub ended_early: &'static str,
}

/// Every link `key` manages as a download in `format`: the streamed body and its
/// `Content-Disposition`, for the API's and the admin app's export alike. The first chunk is read
/// before anything is sent, so a database that cannot answer fails the request (503) rather than
/// sending an empty file; a later failure ends the download, and is logged.
pub(crate) async fn export_download(
    state: &AppState,
    key: &crate::db::keys::ApiKeyRow,
    format: crate::links::export::ExportFormat,
    log: ExportLog,
) -> Result<(Body, String), crate::db::DbError> {
    use futures_util::StreamExt;
    let mut stream = Box::pin(crate::links::export::export_stream(state.db.clone(), key.scope(), format));
    let first = stream.next().await.transpose()?.unwrap_or_default();
    let key_name = key.name.clone();
    let ended_early = log.ended_early;
    let rest = stream
        .map(move |chunk| chunk.inspect_err(|e| tracing::error!(error = %e, key.name = %key_name, "{ended_early}")));
    let body = Body::from_stream(futures_util::stream::once(async { Ok(first) }).chain(rest));
    tracing::info!(key.name = %key.name, export.format = format.extension(), "{}", log.started);
    Ok((body, format!("attachment; filename=\"links.{}\"", format.extension())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_method_routers_methods_are_read_from_its_allow_header() {
        let router: MethodRouter<AppState> = get(|| async {}).post(|| async {}).delete(|| async {});
        assert_eq!(methods_of(&router), [Method::GET, Method::HEAD, Method::POST, Method::DELETE]);
        let any: MethodRouter<AppState> = axum::routing::any(|| async {});
        assert_eq!(methods_of(&any), [Method::from_bytes(b"ANY").unwrap()]);
    }

    #[test]
    fn made_up_methods_share_one_label() {
        for m in ["FOO", "GETX", "get", "PROPFIND", "TRACE", "CONNECT"] {
            assert_eq!(method_label(&Method::from_bytes(m.as_bytes()).unwrap()), "other", "{m}");
        }
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::DELETE), "DELETE");
    }

    #[test]
    fn request_ids_are_prefix_dash_counter_in_hex_and_unique() {
        let a = next_request_id();
        let b = next_request_id();
        assert_ne!(a, b);
        let s = a.to_str().unwrap();
        let (prefix, n) = s.split_once('-').unwrap();
        assert_eq!(prefix.len(), 8);
        assert!(u64::from_str_radix(n, 16).is_ok(), "{s}");
        assert_eq!(format!("{:08x}", PREFIX.get().unwrap()), prefix);
    }
}
