//! `/api/v1/links …`: create, read, list, update, delete, export; a link's QR code.
//!
//! Every handler works within the caller's scope ([`crate::db::keys::ApiKeyRow::scope`]): an
//! ordinary key manages the links it created, an admin key every link. A link outside the scope
//! answers exactly as one that does not exist (404), so a key cannot even learn which codes
//! other keys use; update and delete carry the scope into the writer's statement, so the check
//! and the change are one atomic step.

use axum::{
    extract::{
        rejection::{PathRejection, QueryRejection},
        Path, Query, State,
    },
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::{ApiJson, Caller};
use crate::{
    db::{
        self,
        keys::ApiKeyRow,
        links::{LinkPatch, LinkRow},
        writer::{Change, Outcome},
    },
    error::ApiError,
    links::export::ExportFormat,
    links::{
        code::{self, CodeError},
        target,
    },
    qr::{self, QrError, QrFormat},
    state::AppState,
    time_util::{now_ms, parse_rfc3339, to_rfc3339},
};

/// Body of `POST /api/v1/links`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateLink {
    /// Target URL: `http` or `https` with a host, at most 2,048 bytes, not this service.
    #[schema(format = "uri", max_length = 2048, pattern = "^[Hh][Tt][Tt][Pp][Ss]?://")]
    pub url: String,
    /// Custom code (optional): `[A-Za-z0-9_-]{3,64}`, not a reserved word.
    #[serde(default)]
    #[schema(pattern = "^[A-Za-z0-9_-]{3,64}$")]
    pub code: Option<String>,
    /// RFC 3339 expiry (optional), in the future.
    #[serde(default)]
    #[schema(format = DateTime)]
    pub expires_at: Option<String>,
    /// 301, 302 (default), 307 or 308.
    #[serde(default)]
    #[schema(minimum = 301, maximum = 308)]
    pub redirect_status: Option<u16>,
}

/// Body of `PATCH /api/v1/links/{code}`. `"expires_at": null` removes the expiry.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchLink {
    /// New target URL (the rules of `CreateLink.url`).
    #[serde(default)]
    #[schema(format = "uri", max_length = 2048, pattern = "^[Hh][Tt][Tt][Pp][Ss]?://")]
    pub url: Option<String>,
    /// New expiry (RFC 3339); `null` = never.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<Option<String>>,
    /// New redirect status: 301, 302, 307 or 308.
    #[serde(default)]
    #[schema(minimum = 301, maximum = 308)]
    pub redirect_status: Option<u16>,
}

/// Tells an absent field (`None`) from an explicit `null` (`Some(None)`).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// A link as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct LinkView {
    /// The short code.
    pub code: String,
    /// The full short URL (`PUBLIC_BASE_URL` + code).
    pub short_url: String,
    /// The target URL.
    pub url: String,
    /// The redirect status.
    pub redirect_status: i64,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
    /// RFC 3339, or null for never.
    #[schema(required = true)]
    pub expires_at: Option<String>,
    /// Clicks: flushed to the database plus still buffered in this process.
    pub clicks: u64,
    /// RFC 3339 of the last flushed click, or null.
    #[schema(required = true)]
    pub last_clicked_at: Option<String>,
    /// The name of the key that created the link; null for imported or hand-inserted links
    /// (which belong to admin keys) and for links of a key that no longer exists.
    #[schema(required = true)]
    pub created_by: Option<String>,
}

impl LinkView {
    fn new(state: &AppState, row: LinkRow, created_by: Option<String>) -> Self {
        let pending = state.clicks.pending_for(&row.short_code);
        LinkView {
            created_by,
            clicks: u64::try_from(row.clicks).unwrap_or(0) + pending,
            last_clicked_at: row.last_clicked_at.map(to_rfc3339),
            short_url: format!("{}{}", state.config.http.public_base_url, row.short_code),
            code: row.short_code,
            url: row.original_url,
            redirect_status: row.redirect_status,
            created_at: to_rfc3339(row.created_at),
            updated_at: to_rfc3339(row.updated_at),
            expires_at: row.expires_at.map(to_rfc3339),
        }
    }
}

/// The views of `rows`, each with the name of the key that created it (the caller's own name
/// without a query; one query for the names of every other creator among them).
async fn views(state: &AppState, caller: &ApiKeyRow, rows: Vec<LinkRow>) -> Result<Vec<LinkView>, ApiError> {
    let mut others: Vec<i64> = rows.iter().filter_map(|r| r.created_by).filter(|id| *id != caller.id).collect();
    others.sort_unstable();
    others.dedup();
    let names = db::keys::find_key_names(&state.db, &others).await?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let name = match row.created_by {
                Some(id) if id == caller.id => Some(caller.name.clone()),
                Some(id) => names.get(&id).cloned(),
                None => None,
            };
            LinkView::new(state, row, name)
        })
        .collect())
}

/// One link's view.
async fn view(state: &AppState, caller: &ApiKeyRow, row: LinkRow) -> Result<LinkView, ApiError> {
    Ok(views(state, caller, vec![row]).await?.pop().expect("one row, one view"))
}

/// The link `code` if the caller manages it; 404 for one that does not exist and for one that
/// belongs to another key alike.
async fn find_managed(state: &AppState, caller: &ApiKeyRow, code: &str) -> Result<LinkRow, ApiError> {
    db::links::find_link_by_code(&state.db, code)
        .await?
        .filter(|row| caller.scope().covers(row.created_by))
        .ok_or(ApiError::NotFound)
}

fn parse_status(s: Option<u16>) -> Result<Option<i64>, ApiError> {
    match s {
        None => Ok(None),
        Some(s @ (301 | 302 | 307 | 308)) => Ok(Some(i64::from(s))),
        Some(other) => Err(ApiError::invalid(
            "invalid_redirect_status",
            format!("redirect_status must be 301, 302, 307 or 308, not {other}"),
        )),
    }
}

fn parse_expiry(raw: &str) -> Result<i64, ApiError> {
    parse_rfc3339(raw).ok_or_else(|| {
        ApiError::invalid("invalid_expires_at", "expires_at must be an RFC 3339 timestamp, e.g. 2030-01-01T00:00:00Z")
    })
}

fn parse_url(state: &AppState, raw: &str) -> Result<String, ApiError> {
    target::parse_target(raw, &state.own_origin).map_err(|e| ApiError::Invalid(e.code, e.message))
}

fn path_code(code: &str) -> Result<&str, ApiError> {
    if code::is_code_shaped(code) {
        Ok(code)
    } else {
        Err(ApiError::NotFound)
    }
}

/// `POST /api/v1/links` → 201 with the link.
#[utoipa::path(post, path = "/api/v1/links", tag = "links", operation_id = "create_link",
    request_body = CreateLink,
    responses(
        (status = 201, description = "The link was created.", body = LinkView),
        (status = 409, description = "The custom code is taken.", body = crate::error::ErrorBody),
        (status = 422, description = "An invalid URL, code, expiry, status or field.", body = crate::error::ErrorBody),
    ))]
pub async fn create_link(
    State(state): State<AppState>,
    Caller(key): Caller,
    ApiJson(body): ApiJson<CreateLink>,
) -> Result<impl IntoResponse, ApiError> {
    let url = parse_url(&state, &body.url)?;
    let custom = match body.code.as_deref() {
        None => None,
        Some(c) => Some(
            code::parse_custom(c)
                .map_err(|e| match e {
                    CodeError::Shape => ApiError::invalid(
                        "invalid_code",
                        "code must be 3 to 64 characters of A-Z, a-z, 0-9, '_' or '-'",
                    ),
                    CodeError::Reserved => ApiError::invalid("reserved_code", format!("{c:?} is reserved")),
                })?
                .to_string(),
        ),
    };
    let expires_at = match body.expires_at.as_deref() {
        None => None,
        Some(raw) => {
            let at = parse_expiry(raw)?;
            if at <= now_ms() {
                return Err(ApiError::invalid("invalid_expires_at", "expires_at must be in the future"));
            }
            Some(at)
        }
    };
    let status = parse_status(body.redirect_status)?.unwrap_or(302);
    let change = Change::Create { code: custom, url, status, expires_at, created_by: Some(key.id) };
    match state.writer.submit(change).await? {
        Outcome::Created(row) => {
            tracing::info!(link.code = %row.short_code, key.name = %key.name, "link created");
            Ok((StatusCode::CREATED, Json(LinkView::new(&state, row, Some(key.name.clone())))))
        }
        Outcome::Taken => Err(ApiError::Conflict),
        other => Err(ApiError::Internal(format!("unexpected create outcome {other:?}"))),
    }
}

/// `GET /api/v1/links/{code}`.
#[utoipa::path(get, path = "/api/v1/links/{code}", tag = "links", operation_id = "get_link", params(("code" = String, Path, description = "The short code.")),
    responses(
        (status = 200, description = "The link.", body = LinkView),
        (status = 404, description = "No such link in the caller's scope.", body = crate::error::ErrorBody),
    ))]
pub async fn get_link(
    State(state): State<AppState>,
    Caller(key): Caller,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<LinkView>, ApiError> {
    let Path(code) = path?;
    let code = path_code(&code)?;
    let row = find_managed(&state, &key, code).await?;
    Ok(Json(view(&state, &key, row).await?))
}

/// Query of `GET /api/v1/links`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Page size, 1..=1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// A page of links.
#[derive(Debug, Serialize, ToSchema)]
pub struct LinkPage {
    /// The caller's links (an admin key's: every link), ordered by code.
    pub links: Vec<LinkView>,
    /// Pass as `cursor` to get the next page; null on the last page.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

/// `GET /api/v1/links?limit=&cursor=`: the caller's links (an admin key's: every link).
#[utoipa::path(get, path = "/api/v1/links", tag = "links", operation_id = "list_links", params(ListQuery),
    responses(
        (status = 200, description = "A page of the caller's links (an admin key's: every link), ordered by code.", body = LinkPage),
    ))]
pub async fn list_links(
    State(state): State<AppState>,
    Caller(key): Caller,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<LinkPage>, ApiError> {
    let Query(q) = query?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::BadRequest("bad_query", "limit must be between 1 and 1000".into()));
    }
    if let Some(c) = q.cursor.as_deref() {
        if !code::is_code_shaped(c) {
            return Err(ApiError::BadRequest("bad_query", "cursor is not one this API returned".into()));
        }
    }
    let rows = db::links::find_links_page(&state.db, key.scope(), q.cursor.as_deref(), limit).await?;
    let next_cursor = (rows.len() == limit as usize).then(|| rows.last().map(|r| r.short_code.clone())).flatten();
    Ok(Json(LinkPage { links: views(&state, &key, rows).await?, next_cursor }))
}

/// `PATCH /api/v1/links/{code}` (url, expires_at, redirect_status) → the updated link.
#[utoipa::path(patch, path = "/api/v1/links/{code}", tag = "links", operation_id = "update_link", params(("code" = String, Path, description = "The short code.")),
    request_body = PatchLink,
    responses(
        (status = 200, description = "The updated link.", body = LinkView),
        (status = 404, description = "No such link in the caller's scope.", body = crate::error::ErrorBody),
        (status = 422, description = "An invalid URL, expiry, status or field.", body = crate::error::ErrorBody),
    ))]
pub async fn update_link(
    State(state): State<AppState>,
    Caller(key): Caller,
    path: Result<Path<String>, PathRejection>,
    ApiJson(body): ApiJson<PatchLink>,
) -> Result<Json<LinkView>, ApiError> {
    let Path(code) = path?;
    let code = path_code(&code)?.to_string();
    let patch = LinkPatch {
        url: body.url.as_deref().map(|u| parse_url(&state, u)).transpose()?,
        expires_at: match body.expires_at {
            None => None,
            Some(None) => Some(None),
            Some(Some(raw)) => Some(Some(parse_expiry(&raw)?)),
        },
        redirect_status: parse_status(body.redirect_status)?,
    };
    if patch.url.is_none() && patch.expires_at.is_none() && patch.redirect_status.is_none() {
        let row = find_managed(&state, &key, &code).await?;
        return Ok(Json(view(&state, &key, row).await?));
    }
    match state.writer.submit(Change::Update { code, scope: key.scope(), patch }).await? {
        Outcome::Updated(row) => {
            tracing::info!(link.code = %row.short_code, key.name = %key.name, "link updated");
            Ok(Json(view(&state, &key, row).await?))
        }
        Outcome::NotFound => Err(ApiError::NotFound),
        other => Err(ApiError::Internal(format!("unexpected update outcome {other:?}"))),
    }
}

/// `DELETE /api/v1/links/{code}` → 204.
#[utoipa::path(delete, path = "/api/v1/links/{code}", tag = "links", operation_id = "delete_link", params(("code" = String, Path, description = "The short code.")),
    responses(
        (status = 204, description = "The link is gone, from every cache too."),
        (status = 404, description = "No such link in the caller's scope.", body = crate::error::ErrorBody),
    ))]
pub async fn delete_link(
    State(state): State<AppState>,
    Caller(key): Caller,
    path: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let Path(code) = path?;
    let code = path_code(&code)?.to_string();
    match state.writer.submit(Change::Delete { code: code.clone(), scope: key.scope() }).await? {
        Outcome::Deleted => {
            tracing::info!(link.code = %code, key.name = %key.name, "link deleted");
            Ok(StatusCode::NO_CONTENT)
        }
        Outcome::NotFound => Err(ApiError::NotFound),
        other => Err(ApiError::Internal(format!("unexpected delete outcome {other:?}"))),
    }
}

/// Query of `GET /api/v1/links/{code}/clicks`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ClicksQuery {
    /// How many days back, including today (1..=366, default 30).
    #[param(minimum = 1, maximum = 366)]
    pub days: Option<u32>,
}

/// One day of clicks.
#[derive(Debug, Serialize, ToSchema)]
pub struct DayClicks {
    /// `YYYY-MM-DD` (UTC).
    pub day: String,
    /// Clicks that day.
    pub clicks: u64,
}

/// The daily series of a link.
#[derive(Debug, Serialize, ToSchema)]
pub struct ClickSeries {
    /// The link.
    pub code: String,
    /// Every day of the range, oldest first, zero-filled.
    pub days: Vec<DayClicks>,
    /// Sum over the range.
    pub total: u64,
}

/// `GET /api/v1/links/{code}/clicks?days=N`: clicks per UTC day, today included (today also
/// counts clicks still buffered in this process).
#[utoipa::path(get, path = "/api/v1/links/{code}/clicks", tag = "links", operation_id = "get_link_clicks",
    params(("code" = String, Path, description = "The short code."), ClicksQuery),
    responses(
        (status = 200, description = "Clicks per UTC day, oldest first.", body = ClickSeries),
        (status = 404, description = "No such link in the caller's scope.", body = crate::error::ErrorBody),
    ))]
pub async fn get_link_clicks(
    State(state): State<AppState>,
    Caller(key): Caller,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<ClicksQuery>, QueryRejection>,
) -> Result<Json<ClickSeries>, ApiError> {
    let Path(code) = path?;
    let code = path_code(&code)?;
    let Query(q) = query?;
    let days = q.days.unwrap_or(30);
    if !(1..=366).contains(&days) {
        return Err(ApiError::BadRequest("bad_query", "days must be between 1 and 366".into()));
    }
    find_managed(&state, &key, code).await?;
    let now = now_ms();
    let range: Vec<String> =
        (0..i64::from(days)).rev().map(|back| crate::time_util::day_of(now - back * 86_400_000)).collect();
    let stored: std::collections::HashMap<String, i64> =
        db::links::find_clicks_daily(&state.db, code, &range[0]).await?.into_iter().collect();
    let pending = state.clicks.pending_for(code);
    let last = range.len() - 1;
    let days: Vec<DayClicks> = range
        .into_iter()
        .enumerate()
        .map(|(i, day)| {
            let flushed = stored.get(&day).copied().map_or(0, |n| u64::try_from(n).unwrap_or(0));
            DayClicks { clicks: flushed + if i == last { pending } else { 0 }, day }
        })
        .collect();
    let total = days.iter().map(|d| d.clicks).sum();
    Ok(Json(ClickSeries { code: code.to_string(), days, total }))
}

/// Query of `GET /api/v1/links/{code}/qr`. Both are taken as text, so that a size that is not a
/// number is a 422 like one out of range, not a query the API could not read.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct QrQuery {
    /// `svg` (default) or `png`; anything else is a 422.
    #[param(example = "png")]
    pub format: Option<String>,
    /// Image side in pixels, 64..=2048 (default 256); anything else, a non-number included, is
    /// a 422.
    #[param(example = "256")]
    pub size: Option<String>,
}

/// `Cache-Control` of a QR image: it depends only on the short URL, which never changes for a
/// code, but it is answered to an authenticated caller only, so no shared cache may keep it.
const QR_CACHE_CONTROL: &str = "private, max-age=3600";

/// `GET /api/v1/links/{code}/qr?format=svg|png&size=N`: an image of the QR code of the link's
/// `short_url`, for the keys that may read the link (others get 404, as for the link itself).
#[utoipa::path(get, path = "/api/v1/links/{code}/qr", tag = "links", operation_id = "get_link_qr",
    params(("code" = String, Path, description = "The short code."), QrQuery),
    responses(
        (status = 200, description = "The QR code of the link's `short_url`, `size`×`size` pixels.",
            content((String = "image/svg+xml"), (crate::http::openapi::Binary = "image/png")),
            headers(
                ("Cache-Control" = String, description = "`private, max-age=3600`"),
                ("Content-Disposition" = String, description = "`inline; filename=\"CODE.svg\"` (or `.png`)"),
            )),
        (status = 404, description = "No such link in the caller's scope.", body = crate::error::ErrorBody),
        (status = 422, description = "A format other than svg or png, or a size that is not a number in 64..=2048.", body = crate::error::ErrorBody),
    ))]
pub async fn get_link_qr(
    State(state): State<AppState>,
    Caller(key): Caller,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<QrQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Path(code) = path?;
    let code = path_code(&code)?;
    let Query(q) = query?;
    let format = match q.format.as_deref() {
        None => QrFormat::Svg,
        Some(f) => {
            QrFormat::parse(f).ok_or_else(|| ApiError::invalid("invalid_format", "format must be svg or png"))?
        }
    };
    let size_error = || ApiError::invalid("invalid_size", QrError::Size.to_string());
    let size = match q.size.as_deref() {
        None => qr::DEFAULT_SIZE,
        Some(s) => {
            s.parse::<u32>().ok().filter(|n| (qr::MIN_SIZE..=qr::MAX_SIZE).contains(n)).ok_or_else(size_error)?
        }
    };
    let row = find_managed(&state, &key, code).await?;
    let short_url = format!("{}{}", state.config.http.public_base_url, row.short_code);
    // Up to 2048×2048 pixels: a few milliseconds of CPU, kept off the runtime's workers.
    let image = tokio::task::spawn_blocking(move || qr::render(&short_url, format, size))
        .await
        .map_err(|e| ApiError::Internal(format!("QR rendering task failed: {e}")))?
        .map_err(|e| match e {
            QrError::Size => size_error(),
            QrError::TooLong => ApiError::invalid("qr_too_long", e.to_string()),
        })?;
    let disposition = format!("inline; filename=\"{}.{}\"", row.short_code, format.extension());
    Ok((
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(format.content_type())),
            (header::CACHE_CONTROL, HeaderValue::from_static(QR_CACHE_CONTROL)),
            (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
            (header::CONTENT_DISPOSITION, HeaderValue::from_str(&disposition).expect("a code is a valid header value")),
        ],
        image,
    )
        .into_response())
}

/// Query of `GET /api/v1/links/export`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ExportQuery {
    /// `csv` (default) or `jsonl` (also `ndjson`); anything else is a 422.
    #[param(example = "jsonl")]
    pub format: Option<String>,
}

/// `GET /api/v1/links/export?format=csv|jsonl`: every link in the caller's scope (an admin
/// key's: every link), streamed (`links::export`). The first page is read before the status is
/// sent, so a database that fails at once is answered as any other call (503 when busy); one
/// that fails later ends the body early, logged here.
#[utoipa::path(get, path = "/api/v1/links/export", tag = "links", operation_id = "export_links", params(ExportQuery),
    responses(
        (status = 200, description = "Every link in the caller's scope, ordered by code, streamed: CSV with a header row \
            (`code,url,redirect_status,created_at,expires_at,clicks,created_by`), or one JSON object a line with the same fields.",
            content((String = "text/csv; charset=utf-8"), (String = "application/x-ndjson")),
            headers(("Content-Disposition" = String, description = "`attachment; filename=\"links.csv\"` (or `links.jsonl`)"))),
        (status = 422, description = "A format other than csv or jsonl.", body = crate::error::ErrorBody),
    ))]
pub async fn export_links(
    State(state): State<AppState>,
    Caller(key): Caller,
    query: Result<Query<ExportQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query?;
    let format = match q.format.as_deref() {
        None => ExportFormat::Csv,
        Some(f) => {
            ExportFormat::parse(f).ok_or_else(|| ApiError::invalid("invalid_format", "format must be csv or jsonl"))?
        }
    };
    let log = super::ExportLog { started: "export started", ended_early: "export ended early: database error" };
    let (body, disposition) = super::export_download(&state, &key, format, log).await?;
    Ok((
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(format.content_type())),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            (header::CONTENT_DISPOSITION, HeaderValue::from_str(&disposition).expect("an ASCII file name")),
        ],
        body,
    )
        .into_response())
}
