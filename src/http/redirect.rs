//! `GET`/`HEAD /{code}` — the hot path, kept tiny: shape check, resolve, answer. No allocation
//! on an L1 hit beyond the response itself.

use axum::{
    body::Body,
    extract::{Request, State},
    http::{header, request::Parts, HeaderValue, Method, StatusCode},
    response::{IntoResponse, Response},
};

use std::time::Instant;

use super::{next_request_id, X_REQUEST_ID};
use crate::{cache::Resolved, links::code, state::AppState, time_util::now_ms};

const NOT_FOUND_PAGE: &str =
    "<!doctype html><title>Not found</title><h1>Not found</h1><p>This short link does not exist.</p>\n";
const GONE_PAGE: &str =
    "<!doctype html><title>Link expired</title><h1>Link expired</h1><p>This short link has expired.</p>\n";
const BUSY_PAGE: &str =
    "<!doctype html><title>Busy</title><h1>Try again</h1><p>The service is busy; please retry in a moment.</p>\n";
const LIMITED_PAGE: &str = "<!doctype html><title>Too many requests</title><h1>Slow down</h1><p>Too many requests from your address; please retry shortly.</p>\n";
const HOME_PAGE: &str = "<!doctype html><title>shortener</title><h1>shortener</h1><p>A URL shortener. Short links live at /{code}; the API at /api/v1.</p>\n";

fn page(status: StatusCode, body: &'static str) -> Response {
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// Follows a short link (the router's handler for `/{code}`).
#[utoipa::path(method(get, head), path = "/{code}", tag = "redirect", operation_id = "follow_link",
    params(("code" = String, Path, description = "The short code.")),
    responses(
        (status = 301, description = "Moved permanently (the link's status), with `Cache-Control: private, max-age=PERMANENT_REDIRECT_MAX_AGE_SECS`.",
            headers(("Location" = String, description = "The target URL."), ("Cache-Control" = String))),
        (status = 302, description = "Found: the default status of a link.", headers(("Location" = String, description = "The target URL."))),
        (status = 307, description = "Temporary redirect (the link's status).", headers(("Location" = String, description = "The target URL."))),
        (status = 308, description = "Permanent redirect (the link's status), with `Cache-Control` as for 301.",
            headers(("Location" = String, description = "The target URL."), ("Cache-Control" = String))),
        (status = 404, description = "No such link, or not a code: a plain page.", content_type = "text/html; charset=utf-8", body = String),
        (status = 410, description = "The link has expired: a plain page.", content_type = "text/html; charset=utf-8", body = String),
        (status = 429, description = "`RATE_LIMIT_REDIRECT_PER_IP_PER_MINUTE` is set and this address used it up: a plain page.",
            content_type = "text/html; charset=utf-8", body = String, headers(("Retry-After" = u64, description = "Seconds to wait."))),
        (status = 503, description = "Neither the caches nor the database could answer in time: a plain page.",
            content_type = "text/html; charset=utf-8", body = String, headers(("Retry-After" = u64, description = "Seconds to wait."))),
    ))]
pub async fn follow_link(State(state): State<AppState>, req: Request) -> Response {
    let (req, _body) = req.into_parts();
    follow(&state, &req).await
}

/// The redirect for a request's head: what [`follow_link`] answers.
pub async fn follow(state: &AppState, req: &Parts) -> Response {
    let started = Instant::now();
    let resp = match super::limits::check_redirect(state, req).await {
        Some(refused) => {
            let mut resp = page(StatusCode::TOO_MANY_REQUESTS, LIMITED_PAGE);
            refused.write_headers(resp.headers_mut());
            resp
        }
        None => {
            let user_agent = req.headers.get(header::USER_AGENT).map(HeaderValue::as_bytes);
            let click = || req.method == Method::GET && state.clicks.counts(user_agent);
            answer(state, &req.uri.path()[1..], click).await
        }
    };
    finish(state, resp, req.headers.get(&X_REQUEST_ID).cloned(), started)
}

/// The redirect for a request the connection layer parsed itself (`net::direct`): a `GET` (whose
/// User-Agent `bot` judged) or a `HEAD` of `/{code}`, with the request id it came with. The same
/// answer as [`follow`]'s, for a service without a redirect limit (which [`follow`] alone
/// applies).
pub async fn follow_direct(state: &AppState, code: &str, get: bool, bot: bool, id: Option<HeaderValue>) -> Response {
    let started = Instant::now();
    let resp = answer(state, code, || get && state.clicks.counts_judged(bot)).await;
    finish(state, resp, id, started)
}

/// The request id (the client's, if it sent a short enough one) and the metrics.
fn finish(state: &AppState, mut resp: Response, id: Option<HeaderValue>, started: Instant) -> Response {
    let id = match id {
        Some(v) if v.len() <= 128 => v,
        _ => next_request_id(),
    };
    resp.headers_mut().insert(X_REQUEST_ID.clone(), id);
    state.metrics.record_redirect(resp.status(), started.elapsed());
    resp
}

/// The answer for `code`; `click` is asked once the link is found: whether to count it.
async fn answer(state: &AppState, code: &str, click: impl FnOnce() -> bool) -> Response {
    if !code::is_code_shaped(code) || code::is_never_a_link(code) {
        return page(StatusCode::NOT_FOUND, NOT_FOUND_PAGE);
    }
    match state.resolver.resolve(code).await {
        Ok(Resolved::Found(link)) => {
            if link.expires_at.is_some_and(|e| e <= now_ms()) {
                return page(StatusCode::GONE, GONE_PAGE);
            }
            if click() {
                state.clicks.record(&link);
            }
            let mut resp = Response::new(Body::empty());
            *resp.status_mut() = link.status;
            let h = resp.headers_mut();
            h.insert(header::LOCATION, link.location.clone());
            if matches!(link.status, StatusCode::MOVED_PERMANENTLY | StatusCode::PERMANENT_REDIRECT) {
                h.insert(header::CACHE_CONTROL, state.permanent_cache_control.clone());
            }
            resp
        }
        Ok(Resolved::Missing) => page(StatusCode::NOT_FOUND, NOT_FOUND_PAGE),
        Err(_) => {
            let mut resp = page(StatusCode::SERVICE_UNAVAILABLE, BUSY_PAGE);
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            resp
        }
    }
}

/// Anything that is not a route: a plain 404 page.
pub async fn not_found() -> Response {
    let mut resp = page(StatusCode::NOT_FOUND, NOT_FOUND_PAGE);
    resp.headers_mut().insert(X_REQUEST_ID.clone(), next_request_id());
    resp
}

/// `/`: a one-line page saying what this is.
#[utoipa::path(get, path = "/", tag = "redirect", operation_id = "home",
    responses((status = 200, description = "A one-line page saying what this is.", content_type = "text/html; charset=utf-8", body = String)))]
pub async fn home() -> impl IntoResponse {
    page(StatusCode::OK, HOME_PAGE)
}
