//! Importing links from a CSV file (or JSON lines) uploaded in the admin app: the file format of
//! `shortener links import`, each link created through the writer like any other create (custom
//! code, the signed-in key as its creator), so the outbox, invalidation and ownership hold.
//!
//! The upload is bounded (`ADMIN_IMPORT_MAX_BYTES`); the import then runs as a background job,
//! at most `ADMIN_IMPORT_JOBS` at once on an instance (one more gets a 429 page), and its status
//! page refreshes itself (`<meta http-equiv="refresh">`, no script) with the rows done and
//! rejected until it ends. The instance remembers the last [`KEPT_JOBS`] jobs; a job's page is
//! shown only to the key that started it.

use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use askama::Template;
use axum::{
    extract::{multipart::MultipartRejection, Multipart, Path, State},
    http::StatusCode,
    response::{IntoResponse, Redirect, Response},
    Extension,
};
use futures_util::future::join_all;
use tokio::sync::Semaphore;

use super::{render, session::Signed, Layout, Page};
use crate::{
    auth::sessions::random_token,
    db::writer::{Change, Outcome},
    links::{import, target::OwnOrigin},
    state::AppState,
};

/// Finished and running jobs remembered per instance.
pub const KEPT_JOBS: usize = 100;
/// Creates submitted to the writer at once by one job (the writer commits them together).
const CHUNK: usize = 256;
/// What the import form may add to its file (boundaries, part headers, the CSRF token): the
/// request body limit is the file's plus this; the file itself is checked against its own.
pub const FORM_OVERHEAD: usize = 4096;
/// Rejected lines whose reason a job's page lists.
const SHOWN_ERRORS: usize = 20;

/// One import.
pub struct Job {
    id: String,
    key_id: i64,
    file_name: String,
    lines: u64,
    done: AtomicU64,
    rejected: AtomicU64,
    processed: AtomicU64,
    finished: AtomicBool,
    errors: Mutex<Vec<String>>,
}

impl Job {
    fn reject(&self, line: u64, why: String) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
        let mut e = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        if e.len() < SHOWN_ERRORS {
            e.push(format!("line {line}: {why}"));
        }
    }
}

/// The import jobs of this instance.
pub struct Imports {
    running: Arc<Semaphore>,
    jobs: Mutex<VecDeque<Arc<Job>>>,
}

impl Imports {
    /// Room for `concurrent` jobs at once.
    pub fn new(concurrent: usize) -> Arc<Self> {
        Arc::new(Imports { running: Arc::new(Semaphore::new(concurrent)), jobs: Mutex::new(VecDeque::new()) })
    }

    fn find(&self, id: &str) -> Option<Arc<Job>> {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner()).iter().find(|j| j.id == id).cloned()
    }

    fn keep(&self, job: Arc<Job>) {
        let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        if jobs.len() >= KEPT_JOBS {
            // The oldest finished job goes; running ones are at most ADMIN_IMPORT_JOBS.
            if let Some(at) = jobs.iter().position(|j| j.finished.load(Ordering::Relaxed)) {
                jobs.remove(at);
            }
        }
        jobs.push_back(job);
    }
}

#[derive(Template)]
#[template(path = "admin/import.html", config = "src/http/admin/askama.toml")]
struct ImportTemplate {
    layout: Layout,
    max_mib: String,
    error: Option<String>,
}

fn form_page(state: &AppState, signed: &Signed, status: StatusCode, error: Option<String>) -> Response {
    let t = ImportTemplate {
        layout: Layout::signed("Import links", &signed.0),
        max_mib: format!("{:.0}", state.config.admin.import_max_bytes as f64 / (1024.0 * 1024.0)),
        error,
    };
    render(status, &t)
}

/// `GET /admin/import`.
pub async fn import_page(State(state): State<AppState>, signed: Signed) -> Response {
    form_page(&state, &signed, StatusCode::OK, None)
}

/// `POST /admin/import` (multipart: `csrf`, `file`): starts a job, shows its page.
pub async fn start_import(
    State(state): State<AppState>,
    Extension(imports): Extension<Arc<Imports>>,
    signed: Signed,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Response, Page> {
    let mut multipart = multipart.map_err(|e| Page::BadRequest(e.body_text()))?;
    let (mut csrf, mut file, mut file_name) = (String::new(), None, String::new());
    let too_large = || {
        Page::TooLarge(format!(
            "The file is larger than {} bytes (ADMIN_IMPORT_MAX_BYTES).",
            state.config.admin.import_max_bytes
        ))
    };
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => return Err(too_large()),
            Err(e) => return Err(Page::BadRequest(e.body_text())),
        };
        match field.name() {
            Some("csrf") => csrf = field.text().await.map_err(|e| Page::BadRequest(e.body_text()))?,
            Some("file") => {
                file_name = field.file_name().unwrap_or("upload").chars().take(100).collect();
                let bytes = field.bytes().await.map_err(|e| {
                    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                        too_large()
                    } else {
                        Page::BadRequest(e.body_text())
                    }
                })?;
                if bytes.len() > state.config.admin.import_max_bytes {
                    return Err(too_large());
                }
                file = Some(bytes);
            }
            _ => {}
        }
    }
    signed.check_csrf(&csrf)?;
    let Some(bytes) = file.filter(|b| !b.is_empty()) else {
        return Ok(form_page(
            &state,
            &signed,
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("Choose a file to import.".into()),
        ));
    };
    let Ok(text) = String::from_utf8(bytes.to_vec()) else {
        return Ok(form_page(
            &state,
            &signed,
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("The file is not UTF-8 text.".into()),
        ));
    };
    if text.trim_start().starts_with("code,url,redirect_status,") {
        let why = "This is an export file with every field; import it with `shortener links import`, which restores them all.";
        return Ok(form_page(&state, &signed, StatusCode::UNPROCESSABLE_ENTITY, Some(why.into())));
    }
    let Ok(permit) = imports.running.clone().try_acquire_owned() else {
        return Err(Page::TooMany(5));
    };
    let jsonl = file_name.ends_with(".jsonl") || file_name.ends_with(".ndjson");
    let job = Arc::new(Job {
        id: random_token()[..16].to_string(),
        key_id: signed.0.key.id,
        file_name,
        lines: text.lines().count() as u64,
        done: AtomicU64::new(0),
        rejected: AtomicU64::new(0),
        processed: AtomicU64::new(0),
        finished: AtomicBool::new(false),
        errors: Mutex::new(Vec::new()),
    });
    imports.keep(job.clone());
    tracing::info!(import.id = %job.id, import.lines = job.lines, key.name = %signed.0.key.name, "admin import started");
    let id = job.id.clone();
    tokio::spawn(async move {
        run(&state, &job, &text, jsonl).await;
        job.finished.store(true, Ordering::Relaxed);
        tracing::info!(import.id = %job.id, import.done = job.done.load(Ordering::Relaxed),
            import.rejected = job.rejected.load(Ordering::Relaxed), "admin import finished");
        drop(permit);
    });
    Ok(Redirect::to(&format!("/admin/import/{id}")).into_response())
}

async fn run(state: &AppState, job: &Job, text: &str, jsonl: bool) {
    let own: &OwnOrigin = &state.own_origin;
    let mut chunk: Vec<(u64, String, String)> = Vec::with_capacity(CHUNK);
    for (i, line) in text.lines().enumerate() {
        let n = i as u64 + 1;
        match import::parse_line(line, jsonl, own) {
            Ok(Some((code, url))) => chunk.push((n, code, url)),
            Ok(None) => {}
            Err(why) => job.reject(n, why),
        }
        job.processed.store(n, Ordering::Relaxed);
        if chunk.len() >= CHUNK {
            submit(state, job, std::mem::take(&mut chunk)).await;
        }
    }
    submit(state, job, chunk).await;
    job.processed.store(job.lines, Ordering::Relaxed);
}

async fn submit(state: &AppState, job: &Job, rows: Vec<(u64, String, String)>) {
    let outcomes = join_all(rows.into_iter().map(|(n, code, url)| async move {
        let change =
            Change::Create { code: Some(code), url, status: 302, expires_at: None, created_by: Some(job.key_id) };
        (n, state.writer.submit(change).await)
    }))
    .await;
    for (n, outcome) in outcomes {
        match outcome {
            Ok(Outcome::Created(_)) => {
                job.done.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Outcome::Taken) => job.reject(n, "this code is already taken".into()),
            Ok(other) => job.reject(n, format!("unexpected outcome {other:?}")),
            Err(e) => job.reject(n, format!("not stored ({e}); import it again")),
        }
    }
}

#[derive(Template)]
#[template(path = "admin/import_status.html", config = "src/http/admin/askama.toml")]
struct StatusTemplate {
    layout: Layout,
    file_name: String,
    lines: u64,
    processed: u64,
    done: u64,
    rejected: u64,
    percent: u64,
    finished: bool,
    errors: Vec<String>,
}

/// `GET /admin/import/{id}`: a job's progress; refreshes itself while it runs.
pub async fn show_import(
    Extension(imports): Extension<Arc<Imports>>,
    signed: Signed,
    Path(id): Path<String>,
) -> Result<Response, Page> {
    let job = imports.find(&id).filter(|j| j.key_id == signed.0.key.id).ok_or(Page::NotFound)?;
    let processed = job.processed.load(Ordering::Relaxed);
    let finished = job.finished.load(Ordering::Relaxed);
    let t = StatusTemplate {
        layout: Layout::signed(if finished { "Import finished" } else { "Importing…" }, &signed.0),
        file_name: job.file_name.clone(),
        lines: job.lines,
        processed,
        done: job.done.load(Ordering::Relaxed),
        rejected: job.rejected.load(Ordering::Relaxed),
        percent: (processed * 100).checked_div(job.lines).unwrap_or(100),
        finished,
        errors: job.errors.lock().unwrap_or_else(|e| e.into_inner()).clone(),
    };
    Ok(render(StatusCode::OK, &t))
}
