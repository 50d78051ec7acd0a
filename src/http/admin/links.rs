//! The admin app's link pages: the list (search, sort, keyset pages), create, a link's page
//! (fields, clicks chart, QR code), edit and delete.
//!
//! Every change goes through the same writer as the API (`Change::Create`, `Update`, `Delete`),
//! with the signed-in key's scope carried into the statement, so invalidation, the outbox and
//! the ownership rules are the API's: an admin key manages every link, any other key its own,
//! and a link outside the scope is a 404 page exactly like one that does not exist.

use askama::Template;
use axum::{
    extract::{
        rejection::{FormRejection, QueryRejection},
        Path, Query, State,
    },
    http::StatusCode,
    response::{IntoResponse, Redirect, Response},
    Form,
};
use serde::Deserialize;
use time::{format_description::BorrowedFormatItem, macros::format_description, OffsetDateTime, PrimitiveDateTime};

use super::{chart, render, session::Signed, Layout, Page};
use crate::{
    db::{
        self,
        keys::ApiKeyRow,
        links::LinkRow,
        listing::{self, Cursor, Filter, Sort},
        writer::{Change, Outcome},
    },
    http::limits,
    links::export::ExportFormat,
    links::{
        code::{self, CodeError},
        target,
    },
    qr::{self, QrFormat},
    state::AppState,
    time_util::{day_of, now_ms},
};

/// Links per page of the list.
pub const PAGE_SIZE: u32 = 50;
/// Most links one page of a URL-substring search examines (see `db::listing`).
pub const URL_SCAN_BUDGET: u32 = 100_000;

const SHOWN: &[BorrowedFormatItem<'static>] = format_description!("[year]-[month]-[day] [hour]:[minute] UTC");
const INPUT: &[BorrowedFormatItem<'static>] = format_description!("[year]-[month]-[day]T[hour]:[minute]");
const INPUT_SECS: &[BorrowedFormatItem<'static>] = format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]");

/// Epoch milliseconds as `2026-12-01 16:40 UTC`.
fn shown_time(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .ok()
        .and_then(|t| t.format(SHOWN).ok())
        .unwrap_or_else(|| ms.to_string())
}

/// Epoch milliseconds as a `datetime-local` input's value (UTC).
fn input_time(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000)).ok().and_then(|t| t.format(INPUT).ok()).unwrap_or_default()
}

/// A `datetime-local` value (read as UTC) or an RFC 3339 timestamp, as epoch milliseconds.
fn parse_input_time(raw: &str) -> Option<i64> {
    let raw = raw.trim();
    PrimitiveDateTime::parse(raw, INPUT)
        .or_else(|_| PrimitiveDateTime::parse(raw, INPUT_SECS))
        .ok()
        .map(|t| (t.assume_utc().unix_timestamp_nanos() / 1_000_000) as i64)
        .or_else(|| crate::time_util::parse_rfc3339(raw))
}

/// A link as the pages show it.
pub struct LinkItem {
    /// The code.
    pub code: String,
    /// `PUBLIC_BASE_URL` + code.
    pub short_url: String,
    /// The target.
    pub url: String,
    /// 301, 302, 307 or 308.
    pub status: i64,
    /// When it was created.
    pub created: String,
    /// The same, without the zone (the list's column says UTC).
    pub created_short: String,
    /// When it was last changed.
    pub updated: String,
    /// When it expires, or "never".
    pub expires: String,
    /// Whether it has expired.
    pub expired: bool,
    /// Clicks, flushed and still buffered here.
    pub clicks: u64,
    /// The creating key's name, or "—".
    pub owner: String,
}

fn item(state: &AppState, row: LinkRow, owner: Option<String>) -> LinkItem {
    let pending = state.clicks.pending_for(&row.short_code);
    LinkItem {
        short_url: format!("{}{}", state.config.http.public_base_url, row.short_code),
        clicks: u64::try_from(row.clicks).unwrap_or(0) + pending,
        created: shown_time(row.created_at),
        created_short: shown_time(row.created_at).trim_end_matches(" UTC").to_string(),
        updated: shown_time(row.updated_at),
        expires: row.expires_at.map_or_else(|| "never".to_string(), shown_time),
        expired: row.expires_at.is_some_and(|e| e <= now_ms()),
        status: row.redirect_status,
        owner: owner.unwrap_or_else(|| "—".to_string()),
        code: row.short_code,
        url: row.original_url,
    }
}

/// The items of `rows`, each with its creator's name (one query for the names).
async fn items(state: &AppState, me: &ApiKeyRow, rows: Vec<LinkRow>) -> Result<Vec<LinkItem>, Page> {
    let mut ids: Vec<i64> = rows.iter().filter_map(|r| r.created_by).filter(|id| *id != me.id).collect();
    ids.sort_unstable();
    ids.dedup();
    let names = db::keys::find_key_names(&state.db, &ids).await?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let owner = match row.created_by {
                Some(id) if id == me.id => Some(me.name.clone()),
                Some(id) => names.get(&id).cloned(),
                None => None,
            };
            item(state, row, owner)
        })
        .collect())
}

/// The link `code` if the signed-in key manages it; a 404 page otherwise (missing or not ours).
async fn find_managed(state: &AppState, me: &ApiKeyRow, raw: &str) -> Result<LinkRow, Page> {
    if !code::is_code_shaped(raw) {
        return Err(Page::NotFound);
    }
    db::links::find_link_by_code(&state.db, raw)
        .await?
        .filter(|row| me.scope().covers(row.created_by))
        .ok_or(Page::NotFound)
}

/// Query of the list.
#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct ListQuery {
    /// The search text.
    pub q: String,
    /// `code` (prefix) or `url` (substring).
    pub field: String,
    /// `newest`, `oldest` or `code`.
    pub sort: String,
    /// Where the page starts (`created_at.code` of the previous page's last link).
    pub after: String,
    /// A link just deleted (the confirmation message).
    pub deleted: String,
}

#[derive(Template)]
#[template(path = "admin/list.html", config = "src/http/admin/askama.toml")]
struct ListTemplate {
    layout: Layout,
    links: Vec<LinkItem>,
    q: String,
    field: String,
    sort: String,
    next_url: Option<String>,
    first_url: Option<String>,
    scan_note: Option<String>,
    notice: Option<String>,
    show_owner: bool,
}

fn query_url(q: &str, field: &str, sort: &str, after: Option<&Cursor>) -> String {
    let mut ser = url::form_urlencoded::Serializer::new(String::new());
    if !q.is_empty() {
        ser.append_pair("q", q).append_pair("field", field);
    }
    ser.append_pair("sort", sort);
    if let Some(c) = after {
        ser.append_pair("after", &format!("{}.{}", c.created_at, c.code));
    }
    format!("/admin/links?{}", ser.finish())
}

fn parse_cursor(raw: &str) -> Result<Option<Cursor>, Page> {
    if raw.is_empty() {
        return Ok(None);
    }
    let bad = || Page::BadRequest("This page link is not one this site made.".into());
    let (t, c) = raw.split_once('.').ok_or_else(bad)?;
    let created_at = t.parse::<i64>().map_err(|_| bad())?;
    if !code::is_code_shaped(c) {
        return Err(bad());
    }
    Ok(Some(Cursor { created_at, code: c.to_string() }))
}

/// `GET /admin/links?q=&field=&sort=&after=`: the signed-in key's links (an admin key's: every
/// link, with its owner).
pub async fn list_links(
    State(state): State<AppState>,
    signed: Signed,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, Page> {
    let q = query.map(|Query(q)| q).unwrap_or_default();
    let sort = match q.sort.as_str() {
        "oldest" => Sort::Oldest,
        "code" => Sort::Code,
        _ => Sort::Newest,
    };
    let sort_name = match sort {
        Sort::Newest => "newest",
        Sort::Oldest => "oldest",
        Sort::Code => "code",
    };
    let text = q.q.trim().to_string();
    let field = if q.field == "url" { "url" } else { "code" };
    let filter = if text.is_empty() {
        Filter::None
    } else if field == "url" {
        Filter::UrlContains(text.chars().take(200).collect())
    } else if text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') && text.len() <= 64 {
        Filter::CodePrefix(text.clone())
    } else {
        // No code has such characters: nothing matches.
        Filter::CodePrefix("\u{7f}".into())
    };
    let after = parse_cursor(&q.after)?;
    let me = &signed.0.key;
    let page =
        listing::find_links_listing(&state.db, me.scope(), sort, &filter, after.as_ref(), PAGE_SIZE, URL_SCAN_BUDGET)
            .await?;
    let scan_note = page.scan_stopped_after.map(|n| {
        format!("Searched {n} links without filling this page; \u{201c}More results\u{201d} searches the next {n}.")
    });
    let t = ListTemplate {
        layout: Layout::signed("Links", &signed.0),
        next_url: page.next.as_ref().map(|c| query_url(&text, field, sort_name, Some(c))),
        first_url: after.as_ref().map(|_| query_url(&text, field, sort_name, None)),
        links: items(&state, me, page.rows).await?,
        q: text,
        field: field.to_string(),
        sort: if matches!(filter, Filter::CodePrefix(_)) { "code".into() } else { sort_name.to_string() },
        scan_note,
        notice: (!q.deleted.is_empty() && code::is_code_shaped(&q.deleted))
            .then(|| format!("Link {} deleted.", q.deleted)),
        show_owner: me.admin,
    };
    Ok(render(StatusCode::OK, &t))
}

/// The create and edit forms' fields.
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(default)]
pub struct LinkForm {
    /// The session's CSRF token.
    pub csrf: String,
    /// Target URL.
    pub url: String,
    /// Custom code (create only; blank = random).
    pub code: String,
    /// Expiry (`datetime-local`, UTC); blank = never.
    pub expires_at: String,
    /// 301, 302, 307 or 308.
    pub redirect_status: String,
}

/// Messages next to the form's fields.
#[derive(Debug, Default)]
pub struct FieldErrors {
    /// The URL field's.
    pub url: Option<String>,
    /// The code field's.
    pub code: Option<String>,
    /// The expiry field's.
    pub expires_at: Option<String>,
    /// The status field's.
    pub redirect_status: Option<String>,
}

impl FieldErrors {
    fn any(&self) -> bool {
        self.url.is_some() || self.code.is_some() || self.expires_at.is_some() || self.redirect_status.is_some()
    }
}

#[derive(Template)]
#[template(path = "admin/link_form.html", config = "src/http/admin/askama.toml")]
struct FormTemplate {
    layout: Layout,
    /// `None` for create; the code for edit.
    editing: Option<String>,
    action: String,
    form: LinkForm,
    errors: FieldErrors,
}

impl FormTemplate {
    fn status_selected(&self, s: &str) -> bool {
        let current = if self.form.redirect_status.is_empty() { "302" } else { self.form.redirect_status.as_str() };
        current == s
    }
}

/// What a valid form says.
struct Parsed {
    url: String,
    code: Option<String>,
    expires_at: Option<i64>,
    status: i64,
}

fn parse_form(state: &AppState, f: &LinkForm, creating: bool) -> Result<Parsed, FieldErrors> {
    let mut errors = FieldErrors::default();
    let url = match target::parse_target(f.url.trim(), &state.own_origin) {
        Ok(u) => Some(u),
        Err(e) => {
            errors.url = Some(if f.url.trim().is_empty() { "Enter the URL to shorten.".into() } else { e.message });
            None
        }
    };
    let code = match f.code.trim() {
        "" => None,
        c if creating => match code::parse_custom(c) {
            Ok(c) => Some(c.to_string()),
            Err(CodeError::Shape) => {
                errors.code = Some("A code has 3 to 64 characters: letters, digits, '_' or '-'.".into());
                None
            }
            Err(CodeError::Reserved) => {
                errors.code = Some(format!("\u{201c}{c}\u{201d} is reserved; choose another code."));
                None
            }
        },
        _ => None,
    };
    let expires_at = match f.expires_at.trim() {
        "" => None,
        raw => match parse_input_time(raw) {
            Some(at) if at > now_ms() => Some(at),
            Some(_) => {
                errors.expires_at = Some("The expiry must be in the future.".into());
                None
            }
            None => {
                errors.expires_at = Some("Enter a date and time, e.g. 2030-01-01T12:00 (UTC).".into());
                None
            }
        },
    };
    let status = match f.redirect_status.trim() {
        "" => 302,
        s => match s.parse::<i64>() {
            Ok(s @ (301 | 302 | 307 | 308)) => s,
            _ => {
                errors.redirect_status = Some("Choose 301, 302, 307 or 308.".into());
                302
            }
        },
    };
    match url {
        Some(url) if !errors.any() => Ok(Parsed { url, code, expires_at, status }),
        _ => Err(errors),
    }
}

/// `GET /admin/links/new`.
pub async fn new_link_page(signed: Signed) -> Response {
    let t = FormTemplate {
        layout: Layout::signed("New link", &signed.0),
        editing: None,
        action: "/admin/links".into(),
        form: LinkForm::default(),
        errors: FieldErrors::default(),
    };
    render(StatusCode::OK, &t)
}

/// `POST /admin/links`: creates a link (random or custom code), then shows it.
pub async fn create_link(
    State(state): State<AppState>,
    signed: Signed,
    parts: axum::http::request::Parts,
    form: Result<Form<LinkForm>, FormRejection>,
) -> Result<Response, Page> {
    let Form(form) = form.map_err(|e| Page::BadRequest(e.body_text()))?;
    signed.check_csrf(&form.csrf)?;
    let again = |errors: FieldErrors, form: LinkForm| {
        let t = FormTemplate {
            layout: Layout::signed("New link", &signed.0),
            editing: None,
            action: "/admin/links".into(),
            form,
            errors,
        };
        render(StatusCode::UNPROCESSABLE_ENTITY, &t)
    };
    let p = match parse_form(&state, &form, true) {
        Ok(p) => p,
        Err(errors) => return Ok(again(errors, form)),
    };
    let key = &signed.0.key;
    // The API's create limits, for the same key and address.
    let ip = limits::client_ip(&state, &parts.extensions, &parts.headers).map(|ip| ip.to_string());
    let mut decision = None;
    if !limits::create_allowed(&state, key, ip.as_deref(), &mut decision).await {
        return Err(Page::TooMany(decision.map_or(1, |d| d.retry_after_secs)));
    }
    let change = Change::Create {
        code: p.code,
        url: p.url,
        status: p.status,
        expires_at: p.expires_at,
        created_by: Some(key.id),
    };
    match state.writer.submit(change).await? {
        Outcome::Created(row) => {
            tracing::info!(link.code = %row.short_code, key.name = %key.name, "link created (admin)");
            Ok(Redirect::to(&format!("/admin/links/{}?created=1", row.short_code)).into_response())
        }
        Outcome::Taken => {
            let errors = FieldErrors { code: Some("This code is already taken.".into()), ..FieldErrors::default() };
            Ok(again(errors, form))
        }
        other => Err(Page::Internal(format!("unexpected create outcome {other:?}"))),
    }
}

/// Query of a link's page.
#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct ShowQuery {
    /// 7, 30 or 90 (default 30).
    pub days: Option<u32>,
    /// Set after a create.
    pub created: Option<String>,
    /// Set after an edit.
    pub updated: Option<String>,
}

/// One day of the table under the chart.
pub struct DayRow {
    /// YYYY-MM-DD.
    pub day: String,
    /// Clicks.
    pub clicks: u64,
}

#[derive(Template)]
#[template(path = "admin/link.html", config = "src/http/admin/askama.toml")]
struct LinkTemplate {
    layout: Layout,
    link: LinkItem,
    days: u32,
    chart_svg: String,
    table: Vec<DayRow>,
    total: u64,
    notice: Option<&'static str>,
    qr_svg: Option<String>,
}

/// Side of the downloadable QR images, in pixels (print-sized).
pub const QR_DOWNLOAD_SIZE: u32 = 1024;

/// The QR code of `short_url` as SVG markup to put inside the page (without its XML
/// declaration, labelled for screen readers); `None` if it cannot be drawn.
async fn inline_qr(short_url: &str) -> Option<String> {
    let text = short_url.to_string();
    let svg =
        tokio::task::spawn_blocking(move || qr::render(&text, QrFormat::Svg, qr::DEFAULT_SIZE)).await.ok()?.ok()?;
    let svg = String::from_utf8(svg).ok()?;
    let at = svg.find("<svg")?;
    let label = format!(r#"<svg role="img" aria-label="QR code of {}" "#, short_url.replace('"', ""));
    Some(svg[at..].replacen("<svg ", &label, 1))
}

/// The daily clicks of a link over the last `days` days, today last (today includes clicks
/// still buffered in this process).
async fn series(state: &AppState, code: &str, days: u32) -> Result<Vec<(String, u64)>, Page> {
    let now = now_ms();
    let range: Vec<String> = (0..i64::from(days)).rev().map(|back| day_of(now - back * 86_400_000)).collect();
    let stored: std::collections::HashMap<String, i64> =
        db::links::find_clicks_daily(&state.db, code, &range[0]).await?.into_iter().collect();
    let pending = state.clicks.pending_for(code);
    let last = range.len() - 1;
    Ok(range
        .into_iter()
        .enumerate()
        .map(|(i, day)| {
            let flushed = stored.get(&day).copied().map_or(0, |n| u64::try_from(n).unwrap_or(0));
            let n = flushed + if i == last { pending } else { 0 };
            (day, n)
        })
        .collect())
}

/// `GET /admin/links/{code}?days=7|30|90`: the link, its clicks per day, its QR code.
pub async fn show_link(
    State(state): State<AppState>,
    signed: Signed,
    Path(code): Path<String>,
    query: Result<Query<ShowQuery>, QueryRejection>,
) -> Result<Response, Page> {
    let q = query.map(|Query(q)| q).unwrap_or_default();
    let days = q.days.filter(|d| matches!(d, 7 | 30 | 90)).unwrap_or(30);
    let me = &signed.0.key;
    let row = find_managed(&state, me, &code).await?;
    let link = items(&state, me, vec![row]).await?.pop().expect("one row, one item");
    let data = series(&state, &link.code, days).await?;
    let t = LinkTemplate {
        layout: Layout::signed(format!("Link {}", link.code), &signed.0),
        chart_svg: chart::clicks_svg(&data),
        total: data.iter().map(|d| d.1).sum(),
        table: data.into_iter().rev().map(|(day, clicks)| DayRow { day, clicks }).collect(),
        qr_svg: inline_qr(&link.short_url).await,
        days,
        link,
        notice: if q.created.is_some() {
            Some("Link created.")
        } else if q.updated.is_some() {
            Some("Link updated.")
        } else {
            None
        },
    };
    Ok(render(StatusCode::OK, &t))
}

/// `GET /admin/links/{code}/qr.png` and `…/qr.svg`: the QR code of the link's short URL as a
/// download, for the signed-in key's links only.
pub async fn get_link_qr(
    State(state): State<AppState>,
    signed: Signed,
    Path(file): Path<(String, String)>,
) -> Result<Response, Page> {
    let (code, file) = file;
    let format = file.strip_prefix("qr.").and_then(QrFormat::parse).ok_or(Page::NotFound)?;
    let row = find_managed(&state, &signed.0.key, &code).await?;
    let short_url = format!("{}{}", state.config.http.public_base_url, row.short_code);
    let image = tokio::task::spawn_blocking(move || qr::render(&short_url, format, QR_DOWNLOAD_SIZE))
        .await
        .map_err(|e| Page::Internal(e.to_string()))?
        .map_err(|e| Page::BadRequest(e.to_string()))?;
    let disposition = format!("attachment; filename=\"{}-qr.{}\"", row.short_code, format.extension());
    Ok((
        [
            (axum::http::header::CONTENT_TYPE, format.content_type().to_string()),
            (axum::http::header::CONTENT_DISPOSITION, disposition),
        ],
        image,
    )
        .into_response())
}

/// `GET /admin/export.csv` and `/admin/export.jsonl`: every link the signed-in key manages,
/// streamed by the export the API and the CLI use (`links::export`).
pub async fn export_links(
    State(state): State<AppState>,
    signed: Signed,
    Path(file): Path<String>,
) -> Result<Response, Page> {
    let format = file.strip_prefix("export.").and_then(ExportFormat::parse).ok_or(Page::NotFound)?;
    let key = &signed.0.key;
    // The first page is read before the status is sent: a database that cannot answer is a 503
    // page rather than an empty file.
    let log = crate::http::ExportLog { started: "admin export started", ended_early: "admin export ended early" };
    let (body, disposition) = crate::http::export_download(&state, key, format, log).await?;
    Ok((
        [
            (axum::http::header::CONTENT_TYPE, format.content_type().to_string()),
            (axum::http::header::CONTENT_DISPOSITION, disposition),
        ],
        body,
    )
        .into_response())
}

/// `GET /admin/links/{code}/edit`.
pub async fn edit_link_page(
    State(state): State<AppState>,
    signed: Signed,
    Path(code): Path<String>,
) -> Result<Response, Page> {
    let row = find_managed(&state, &signed.0.key, &code).await?;
    let t = FormTemplate {
        layout: Layout::signed(format!("Edit {}", row.short_code), &signed.0),
        action: format!("/admin/links/{}/edit", row.short_code),
        form: LinkForm {
            csrf: String::new(),
            url: row.original_url.clone(),
            code: String::new(),
            expires_at: row.expires_at.map(input_time).unwrap_or_default(),
            redirect_status: row.redirect_status.to_string(),
        },
        editing: Some(row.short_code),
        errors: FieldErrors::default(),
    };
    Ok(render(StatusCode::OK, &t))
}

/// `POST /admin/links/{code}/edit`: changes the URL, expiry and redirect status.
pub async fn update_link(
    State(state): State<AppState>,
    signed: Signed,
    Path(code): Path<String>,
    form: Result<Form<LinkForm>, FormRejection>,
) -> Result<Response, Page> {
    let Form(form) = form.map_err(|e| Page::BadRequest(e.body_text()))?;
    signed.check_csrf(&form.csrf)?;
    if !code::is_code_shaped(&code) {
        return Err(Page::NotFound);
    }
    let p = match parse_form(&state, &form, false) {
        Ok(p) => p,
        Err(errors) => {
            // Not found beats a field error: a foreign link must not be probed through it.
            find_managed(&state, &signed.0.key, &code).await?;
            let t = FormTemplate {
                layout: Layout::signed(format!("Edit {code}"), &signed.0),
                action: format!("/admin/links/{code}/edit"),
                editing: Some(code),
                form,
                errors,
            };
            return Ok(render(StatusCode::UNPROCESSABLE_ENTITY, &t));
        }
    };
    let key = &signed.0.key;
    let patch =
        db::links::LinkPatch { url: Some(p.url), expires_at: Some(p.expires_at), redirect_status: Some(p.status) };
    match state.writer.submit(Change::Update { code: code.clone(), scope: key.scope(), patch }).await? {
        Outcome::Updated(row) => {
            tracing::info!(link.code = %row.short_code, key.name = %key.name, "link updated (admin)");
            Ok(Redirect::to(&format!("/admin/links/{}?updated=1", row.short_code)).into_response())
        }
        Outcome::NotFound => Err(Page::NotFound),
        other => Err(Page::Internal(format!("unexpected update outcome {other:?}"))),
    }
}

#[derive(Template)]
#[template(path = "admin/delete.html", config = "src/http/admin/askama.toml")]
struct DeleteTemplate {
    layout: Layout,
    link: LinkItem,
}

/// `GET /admin/links/{code}/delete`: the confirmation page.
pub async fn delete_link_page(
    State(state): State<AppState>,
    signed: Signed,
    Path(code): Path<String>,
) -> Result<Response, Page> {
    let me = &signed.0.key;
    let row = find_managed(&state, me, &code).await?;
    let link = items(&state, me, vec![row]).await?.pop().expect("one row, one item");
    let t = DeleteTemplate { layout: Layout::signed(format!("Delete {}?", link.code), &signed.0), link };
    Ok(render(StatusCode::OK, &t))
}

/// `POST /admin/links/{code}/delete`.
pub async fn delete_link(
    State(state): State<AppState>,
    signed: Signed,
    Path(code): Path<String>,
    form: Result<Form<super::session::CsrfForm>, FormRejection>,
) -> Result<Response, Page> {
    let Form(form) = form.map_err(|e| Page::BadRequest(e.body_text()))?;
    signed.check_csrf(&form.csrf)?;
    if !code::is_code_shaped(&code) {
        return Err(Page::NotFound);
    }
    let key = &signed.0.key;
    match state.writer.submit(Change::Delete { code: code.clone(), scope: key.scope() }).await? {
        Outcome::Deleted => {
            tracing::info!(link.code = %code, key.name = %key.name, "link deleted (admin)");
            Ok(Redirect::to(&format!("/admin/links?deleted={code}")).into_response())
        }
        Outcome::NotFound => Err(Page::NotFound),
        other => Err(Page::Internal(format!("unexpected delete outcome {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_datetime_local_value_is_read_as_utc_and_shown_back_the_same() {
        let ms = parse_input_time("2030-01-02T03:04").unwrap();
        assert_eq!(input_time(ms), "2030-01-02T03:04");
        assert_eq!(shown_time(ms), "2030-01-02 03:04 UTC");
        assert_eq!(parse_input_time("2030-01-02T03:04:05Z"), Some(ms + 5000));
        assert_eq!(parse_input_time("tomorrow"), None);
    }

    #[test]
    fn list_cursors_round_trip_and_foreign_ones_are_refused() {
        let c = Cursor { created_at: 1_764_600_000_000, code: "abc-_9".into() };
        let url = query_url("", "code", "newest", Some(&c));
        let after = url.split("after=").nth(1).unwrap();
        assert_eq!(parse_cursor(after).unwrap(), Some(c));
        assert!(parse_cursor("x.abc").is_err());
        assert!(parse_cursor("1.a b").is_err());
    }
}
