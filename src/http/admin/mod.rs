//! The admin web app at `/admin`: server-rendered HTML (askama templates in `templates/admin/`
//! beside this file, found through `askama.toml` here),
//! CSS and the one small script embedded in the binary, every page usable without JavaScript.
//!
//! - [`session`]: sign-in with an API key, the session cookie, sign-out, and the extractor every
//!   other page takes ([`session::Signed`]).
//! - [`links`]: the list (search, sort, keyset pages), create, a link's page (chart, QR), edit,
//!   delete — through the same writer and ownership rules as the API.
//! - [`chart`]: the clicks-per-day chart, an SVG drawn here.
//! - [`import`]: CSV uploads imported as a bounded background job with a self-refreshing page.
//!
//! Every response (pages, errors, assets) carries `Cache-Control: no-store`, a strict
//! `Content-Security-Policy` (no inline script or style at all: the stylesheet and the copy
//! button's script are files of their own), `X-Frame-Options: DENY` and `Referrer-Policy:
//! same-origin` ([`headers`]). Failures are HTML pages ([`Page`]), never JSON.

pub mod chart;
pub mod import;
pub mod links;
pub mod session;

use askama::Template;
use axum::{
    extract::{DefaultBodyLimit, Request},
    http::{header, HeaderValue, StatusCode},
    middleware::{self, Next},
    response::{Html, IntoResponse, Redirect, Response},
    routing::{get, post},
    Router,
};
use tower_http::timeout::TimeoutLayer;

use crate::{db::DbError, error::ApiError, state::AppState};

/// The stylesheet, embedded.
const CSS: &str = include_str!("admin.css");
/// The copy button's script, embedded (the only script; pages work without it).
const COPY_JS: &str = include_str!("copy.js");

/// `Content-Security-Policy` of every admin response.
pub const CSP: &str = "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self' data:; \
                       form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The admin routes (nested under `/admin`).
pub fn router(state: &AppState) -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/admin/links") }))
        .route("/sign-in", get(session::sign_in_page).post(session::sign_in))
        .route("/sign-out", post(session::sign_out))
        .route("/links", get(links::list_links).post(links::create_link))
        .route("/links/new", get(links::new_link_page))
        .route("/links/{code}", get(links::show_link))
        .route("/links/{code}/edit", get(links::edit_link_page).post(links::update_link))
        .route("/links/{code}/delete", get(links::delete_link_page).post(links::delete_link))
        .route("/links/{code}/{file}", get(links::get_link_qr))
        .route(
            "/import",
            get(import::import_page)
                .post(import::start_import)
                .layer(DefaultBodyLimit::max(state.config.admin.import_max_bytes + import::FORM_OVERHEAD)),
        )
        .route("/import/{id}", get(import::show_import))
        .route("/{file}", get(links::export_links))
        .route("/admin.css", get(|| async { ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], CSS) }))
        .route("/copy.js", get(|| async { ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], COPY_JS) }))
        .fallback(|| async { Page::NotFound })
        .layer(axum::Extension(import::Imports::new(state.config.admin.import_jobs)))
        .layer(DefaultBodyLimit::max(state.config.http.max_body_bytes))
        .layer(TimeoutLayer::with_status_code(StatusCode::SERVICE_UNAVAILABLE, state.config.http.request_timeout))
        .layer(middleware::from_fn(headers))
}

/// Adds the admin app's security and caching headers to every response.
async fn headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    // A 503 of the timeout layer has no body; give it the error page.
    if resp.status() == StatusCode::SERVICE_UNAVAILABLE && !resp.headers().contains_key(header::CONTENT_TYPE) {
        resp = Page::Unavailable(1).into_response();
    }
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    resp
}

/// What every page's frame shows: the title, and who is signed in (with the sign-out form's
/// CSRF token).
#[derive(Debug, Clone, Default)]
pub struct Layout {
    /// The page's `<title>` and `<h1>`.
    pub title: String,
    /// The signed-in key's name; `None` on the sign-in and error pages.
    pub key_name: Option<String>,
    /// Whether the signed-in key is an admin key.
    pub admin: bool,
    /// The session's CSRF token (the sign-out form).
    pub csrf: String,
}

impl Layout {
    /// A signed-in page's frame.
    pub fn signed(title: impl Into<String>, s: &crate::auth::sessions::Session) -> Self {
        Layout {
            title: title.into(),
            key_name: Some(s.key.name.clone()),
            admin: s.key.admin,
            csrf: s.csrf_token.clone(),
        }
    }
}

/// Renders a template as an HTML response with `status`.
pub fn render(status: StatusCode, t: &impl Template) -> Response {
    match t.render() {
        Ok(body) => (status, Html(body)).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "admin template failed to render");
            (StatusCode::INTERNAL_SERVER_ERROR, Html("<!doctype html><title>Error</title><p>Internal error.</p>"))
                .into_response()
        }
    }
}

#[derive(Template)]
#[template(path = "admin/error.html", config = "src/http/admin/askama.toml")]
struct ErrorTemplate<'a> {
    layout: Layout,
    message: &'a str,
    detail: String,
}

/// Every failure of an admin page, answered as an HTML page with the right status.
#[derive(Debug)]
pub enum Page {
    /// 400: the request cannot be understood.
    BadRequest(String),
    /// 403: a form without its CSRF token, or with a wrong one.
    Csrf,
    /// 404: no such page, or a link that does not exist or belongs to another key.
    NotFound,
    /// 413: an upload larger than allowed.
    TooLarge(String),
    /// 429: too many attempts; retry after the given seconds.
    TooMany(u64),
    /// 503: the database is saturated or down; retry after the given seconds.
    Unavailable(u64),
    /// 500: a fault (logged, not shown).
    Internal(String),
}

impl IntoResponse for Page {
    fn into_response(self) -> Response {
        let (status, message, detail) = match &self {
            Page::BadRequest(m) => (StatusCode::BAD_REQUEST, "Bad request", m.clone()),
            Page::Csrf => (
                StatusCode::FORBIDDEN,
                "Form expired or not sent from this site",
                "The form did not carry this session's security token. Go back, reload the page and try again.".into(),
            ),
            Page::NotFound => (
                StatusCode::NOT_FOUND,
                "Not found",
                "There is no such page, or no link with this code that you manage.".into(),
            ),
            Page::TooLarge(m) => (StatusCode::PAYLOAD_TOO_LARGE, "Too large", m.clone()),
            Page::TooMany(s) => {
                (StatusCode::TOO_MANY_REQUESTS, "Too many attempts", format!("Please wait {s} seconds and try again."))
            }
            Page::Unavailable(s) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "Temporarily unavailable",
                format!("The service is busy. Please try again in {s} seconds."),
            ),
            Page::Internal(e) => {
                tracing::error!(error = %e, "admin page failed");
                (StatusCode::INTERNAL_SERVER_ERROR, "Something went wrong", "The error was logged.".into())
            }
        };
        let t = ErrorTemplate { layout: Layout { title: message.to_string(), ..Layout::default() }, message, detail };
        let mut resp = render(status, &t);
        if let Page::TooMany(s) | Page::Unavailable(s) = self {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        resp
    }
}

impl From<DbError> for Page {
    fn from(e: DbError) -> Self {
        match e {
            DbError::Busy => Page::Unavailable(1),
            DbError::Sql(e) => Page::Internal(e.to_string()),
        }
    }
}

impl From<ApiError> for Page {
    fn from(e: ApiError) -> Self {
        match e {
            ApiError::NotFound => Page::NotFound,
            ApiError::TooManyRequests(s) => Page::TooMany(s),
            ApiError::Unavailable(s) => Page::Unavailable(s),
            ApiError::BadRequest(_, m) | ApiError::Invalid(_, m) => Page::BadRequest(m),
            other => Page::Internal(other.to_string()),
        }
    }
}
