//! Sign-in, sign-out and the session every other admin page requires.
//!
//! The sign-in form takes an API key, verified like the API's bearer keys — the same key
//! memory, and the same per-address limit of failed attempts (`RATE_LIMIT_AUTH_FAILURES_PER_IP_PER_MINUTE`):
//! a wrong key counts as a failed authentication, and a blocked address gets a 429 page with
//! `Retry-After`. The form itself carries a pre-session token (a double-submit cookie), so
//! another site cannot sign a browser in under its own key.
//!
//! The session cookie is `HttpOnly`, `SameSite=Strict`, `Path=/admin`, and `Secure` when
//! `PUBLIC_BASE_URL` is https. A request without a valid session is sent to the sign-in page,
//! which says why (expired, signed out, key revoked).

use axum::{
    extract::{
        rejection::{FormRejection, QueryRejection},
        FromRequestParts, Query, State,
    },
    http::{header, request::Parts, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Redirect, Response},
    Form,
};
use serde::Deserialize;

use super::{render, Layout, Page};
use crate::{
    auth::sessions::{self, Session, SessionError},
    db::keys,
    error::ApiError,
    http::limits,
    state::AppState,
};

/// The session cookie.
pub const COOKIE: &str = "shortener_admin";
/// The sign-in form's pre-session cookie.
pub const PRE_COOKIE: &str = "shortener_admin_pre";

/// The value of cookie `name` in a request.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
}

fn set_cookie(state: &AppState, name: &str, value: &str, max_age: Option<u64>) -> HeaderValue {
    let secure = if state.config.http.public_base_url.scheme() == "https" { "; Secure" } else { "" };
    let age = max_age.map_or(String::new(), |s| format!("; Max-Age={s}"));
    HeaderValue::from_str(&format!("{name}={value}; Path=/admin; HttpOnly; SameSite=Strict{age}{secure}"))
        .expect("tokens are hex")
}

/// A request with a valid session; any other is sent to the sign-in page.
pub struct Signed(pub Session);

impl FromRequestParts<AppState> for Signed {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let Some(token) = cookie(&parts.headers, COOKIE) else {
            return Err(Redirect::to("/admin/sign-in").into_response());
        };
        match sessions::check_session(&state.db, &state.writer, &state.config.admin, token).await {
            Ok(s) => Ok(Signed(s)),
            Err(SessionError::Unknown | SessionError::Expired) => {
                Err(Redirect::to("/admin/sign-in?m=expired").into_response())
            }
            Err(SessionError::Revoked) => Err(Redirect::to("/admin/sign-in?m=revoked").into_response()),
            Err(SessionError::Db(e)) => Err(Page::from(e).into_response()),
        }
    }
}

impl Signed {
    /// Refuses a form whose CSRF token is not this session's.
    pub fn check_csrf(&self, presented: &str) -> Result<(), Page> {
        if self.0.csrf_matches(presented) {
            Ok(())
        } else {
            Err(Page::Csrf)
        }
    }
}

#[derive(askama::Template)]
#[template(path = "admin/sign_in.html", config = "src/http/admin/askama.toml")]
struct SignInTemplate {
    layout: Layout,
    pre: String,
    message: Option<&'static str>,
    error: Option<&'static str>,
}

/// Query of the sign-in page.
#[derive(Debug, Deserialize, Default)]
pub struct SignInQuery {
    /// Why the visitor is here: `expired`, `revoked`, `signed-out`.
    #[serde(default)]
    pub m: Option<String>,
}

fn sign_in_response(
    state: &AppState,
    status: StatusCode,
    message: Option<&'static str>,
    error: Option<&'static str>,
) -> Response {
    let pre = sessions::random_token();
    let t = SignInTemplate {
        layout: Layout { title: "Sign in".into(), ..Layout::default() },
        pre: pre.clone(),
        message,
        error,
    };
    let mut resp = render(status, &t);
    resp.headers_mut().append(header::SET_COOKIE, set_cookie(state, PRE_COOKIE, &pre, Some(3600)));
    resp
}

/// `GET /admin/sign-in`.
pub async fn sign_in_page(
    State(state): State<AppState>,
    query: Result<Query<SignInQuery>, QueryRejection>,
) -> Response {
    let message = match query.ok().and_then(|Query(q)| q.m).as_deref() {
        Some("expired") => Some("Your session has ended. Please sign in again."),
        Some("revoked") => Some("The key of your session has been revoked. Sign in with another key."),
        Some("signed-out") => Some("You are signed out."),
        _ => None,
    };
    sign_in_response(&state, StatusCode::OK, message, None)
}

/// The sign-in form.
#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct SignInForm {
    /// The API key.
    pub key: String,
    /// The pre-session token.
    pub pre: String,
}

/// `POST /admin/sign-in`: verifies the key, opens a session, sends the browser to the list.
pub async fn sign_in(
    State(state): State<AppState>,
    parts: axum::http::request::Parts,
    form: Result<Form<SignInForm>, FormRejection>,
) -> Result<Response, Page> {
    let Form(form) = form.map_err(|e| Page::BadRequest(e.body_text()))?;
    let pre_ok = cookie(&parts.headers, PRE_COOKIE)
        .is_some_and(|c| !form.pre.is_empty() && sessions::secrets_equal(c.as_bytes(), form.pre.as_bytes()));
    if !pre_ok {
        return Err(Page::Csrf);
    }
    let presented = form.key.trim();
    if presented.is_empty() {
        return Ok(sign_in_response(&state, StatusCode::UNPROCESSABLE_ENTITY, None, Some("Enter an API key.")));
    }
    let ip = limits::client_ip(&state, &parts.extensions, &parts.headers);
    let mut decision = None;
    let key = match limits::authenticate_presented(&state, ip, &keys::hash_key(presented), &mut decision).await {
        Ok(key) => key,
        Err(ApiError::Unauthorized) => {
            return Ok(sign_in_response(&state, StatusCode::UNAUTHORIZED, None, Some("This key is not valid.")));
        }
        Err(ApiError::Forbidden) => {
            return Ok(sign_in_response(&state, StatusCode::FORBIDDEN, None, Some("This key has been revoked.")));
        }
        Err(e) => return Err(e.into()),
    };
    let token = sessions::open_session(&state.writer, &state.config.admin, &key).await?;
    tracing::info!(key.name = %key.name, "admin signed in");
    let mut resp = Redirect::to("/admin/links").into_response();
    resp.headers_mut().append(header::SET_COOKIE, set_cookie(&state, COOKIE, &token, None));
    resp.headers_mut().append(header::SET_COOKIE, set_cookie(&state, PRE_COOKIE, "gone", Some(0)));
    Ok(resp)
}

/// A form that carries only its CSRF token.
#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct CsrfForm {
    /// The session's CSRF token.
    pub csrf: String,
}

/// `POST /admin/sign-out`: deletes the session.
pub async fn sign_out(
    State(state): State<AppState>,
    signed: Signed,
    form: Result<Form<CsrfForm>, FormRejection>,
) -> Result<Response, Page> {
    let Form(form) = form.map_err(|e| Page::BadRequest(e.body_text()))?;
    signed.check_csrf(&form.csrf)?;
    sessions::close_session(&state.writer, &signed.0.token_hash).await?;
    let mut resp = Redirect::to("/admin/sign-in?m=signed-out").into_response();
    resp.headers_mut().append(header::SET_COOKIE, set_cookie(&state, COOKIE, "gone", Some(0)));
    Ok(resp)
}
