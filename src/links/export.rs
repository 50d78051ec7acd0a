//! Exporting links: every link of a scope as CSV or JSON lines, streamed page by page.
//!
//! # Format
//! One record a link, ordered by code, with the fields [`COLUMNS`]: what it takes to recreate
//! the link exactly (`code`, `url`, `redirect_status`, `created_at`, `expires_at`), then two
//! informational ones that an import ignores (`clicks`: clicks flushed to the database, without
//! those still buffered in a running process; `created_by`: the creating key's name). Times are
//! RFC 3339 in UTC with milliseconds, as stored.
//! - CSV: a header row, then RFC 4180 (fields quoted when they hold a comma, a quote or a line
//!   break, quotes doubled; CRLF line ends). No expiry or no creator is an empty field.
//! - JSON lines: one object a line (`\n`), the same fields; no expiry or no creator is `null`.
//!
//! `shortener links import` reads both back (see `cli`), so export → import → export gives the
//! same bytes (but for `clicks` and `created_by`, which an import does not carry).
//!
//! # Streaming
//! [`export_stream`] reads [`PAGE`] links at a time by keyset pagination (`ORDER BY short_code`,
//! one range scan a page, a read connection held only for one page) and yields each page as one
//! chunk: memory stays that of a page whatever the number of links, and a slow reader simply
//! slows the reads (the next page is read when the previous chunk was taken). It is not a
//! snapshot: a link created or deleted during an export may or may not be in it, every other
//! link is in it once. A database error ends the stream with that error after the pages already
//! yielded; an HTTP response has sent its status by then, so the client sees a truncated body.

use bytes::Bytes;
use futures_util::Stream;
use serde::{Deserialize, Serialize};

use crate::{
    db::{
        self,
        links::{LinkRow, Scope},
        Db, DbError,
    },
    time_util::to_rfc3339,
};

/// Links read (and yielded as one chunk) at a time.
pub const PAGE: u32 = 1000;

/// The fields of a record, in order (the CSV header).
pub const COLUMNS: [&str; 7] = ["code", "url", "redirect_status", "created_at", "expires_at", "clicks", "created_by"];

/// An export format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// CSV with a header row (`text/csv`).
    Csv,
    /// One JSON object a line (`application/x-ndjson`).
    Jsonl,
}

impl ExportFormat {
    /// `csv` or `jsonl` (ASCII case-insensitive; `ndjson` too); `None` for anything else.
    pub fn parse(s: &str) -> Option<ExportFormat> {
        if s.eq_ignore_ascii_case("csv") {
            Some(ExportFormat::Csv)
        } else if s.eq_ignore_ascii_case("jsonl") || s.eq_ignore_ascii_case("ndjson") {
            Some(ExportFormat::Jsonl)
        } else {
            None
        }
    }

    /// The media type of an export in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            ExportFormat::Csv => "text/csv; charset=utf-8",
            ExportFormat::Jsonl => "application/x-ndjson",
        }
    }

    /// The file name extension, without the dot.
    pub fn extension(self) -> &'static str {
        match self {
            ExportFormat::Csv => "csv",
            ExportFormat::Jsonl => "jsonl",
        }
    }
}

/// One exported link (a JSON line; a CSV record has the same fields in the same order).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportRecord {
    /// The short code.
    pub code: String,
    /// The target URL, as stored.
    pub url: String,
    /// 301, 302, 307 or 308.
    pub redirect_status: i64,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339, or none.
    pub expires_at: Option<String>,
    /// Clicks flushed to the database (informational).
    #[serde(default)]
    pub clicks: i64,
    /// The creating key's name, if it has one and the key still exists (informational).
    #[serde(default)]
    pub created_by: Option<String>,
}

impl ExportRecord {
    fn new(row: LinkRow, created_by: Option<String>) -> Self {
        ExportRecord {
            redirect_status: row.redirect_status,
            created_at: to_rfc3339(row.created_at),
            expires_at: row.expires_at.map(to_rfc3339),
            clicks: row.clicks,
            created_by,
            code: row.short_code,
            url: row.original_url,
        }
    }
}

/// Writes `records` in `format`, after the CSV header if `header`.
pub fn encode(records: &[ExportRecord], format: ExportFormat, header: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(records.len() * 128 + 128);
    match format {
        ExportFormat::Csv => {
            let mut w = csv::WriterBuilder::new().terminator(csv::Terminator::CRLF).from_writer(&mut out);
            // Writing to memory cannot fail, and every field is a string or a number.
            if header {
                w.write_record(COLUMNS).expect("CSV into memory");
            }
            for r in records {
                let status = r.redirect_status.to_string();
                let clicks = r.clicks.to_string();
                w.write_record([
                    r.code.as_str(),
                    r.url.as_str(),
                    status.as_str(),
                    r.created_at.as_str(),
                    r.expires_at.as_deref().unwrap_or(""),
                    clicks.as_str(),
                    r.created_by.as_deref().unwrap_or(""),
                ])
                .expect("CSV into memory");
            }
            w.flush().expect("CSV into memory");
        }
        ExportFormat::Jsonl => {
            for r in records {
                serde_json::to_writer(&mut out, r).expect("JSON of strings and numbers");
                out.push(b'\n');
            }
        }
    }
    out
}

/// A page of links after `after` with their creators' names.
async fn page(db: &Db, scope: Scope, after: Option<&str>) -> Result<Vec<ExportRecord>, DbError> {
    let rows = db::links::find_links_page(db, scope, after, PAGE).await?;
    let mut ids: Vec<i64> = rows.iter().filter_map(|r| r.created_by).collect();
    ids.sort_unstable();
    ids.dedup();
    let names = db::keys::find_key_names(db, &ids).await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let name = r.created_by.and_then(|id| names.get(&id).cloned());
            ExportRecord::new(r, name)
        })
        .collect())
}

/// Every link in `scope` (an admin key's: [`Scope::Every`]; another key's: its own) as `format`,
/// one chunk a page of [`PAGE`] links, the CSV header in the first chunk (which an empty export
/// is made of alone; a JSON lines export of no links yields one empty chunk). After an error the
/// stream ends. See the module doc.
pub fn export_stream(
    db: Db,
    scope: Scope,
    format: ExportFormat,
) -> impl Stream<Item = Result<Bytes, DbError>> + Send + 'static {
    // State: the code to continue after (`None` before the first page), and whether to go on.
    futures_util::stream::unfold((db, None::<String>, true), move |(db, after, more)| async move {
        if !more {
            return None;
        }
        let first = after.is_none();
        match page(&db, scope, after.as_deref()).await {
            Err(e) => Some((Err(e), (db, after, false))),
            Ok(records) => {
                let full = records.len() == PAGE as usize;
                let next = records.last().map(|r| r.code.clone());
                if records.is_empty() && !first {
                    // The previous page was full and was the last one.
                    return None;
                }
                let chunk = Bytes::from(encode(&records, format, first));
                Some((Ok(chunk), (db, next.or(after), full)))
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(code: &str, url: &str, expires: Option<&str>, by: Option<&str>) -> ExportRecord {
        ExportRecord {
            code: code.into(),
            url: url.into(),
            redirect_status: 308,
            created_at: "2026-01-02T03:04:05.006Z".into(),
            expires_at: expires.map(Into::into),
            clicks: 7,
            created_by: by.map(Into::into),
        }
    }

    #[test]
    fn csv_has_a_header_and_quotes_only_fields_that_need_it() {
        let out = encode(
            &[
                record("abc", "https://example.com/a,b?q=\"x\"", None, Some("ci, bot")),
                record("def", "https://example.com/", Some("2030-01-01T00:00:00Z"), None),
            ],
            ExportFormat::Csv,
            true,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "code,url,redirect_status,created_at,expires_at,clicks,created_by\r\n\
             abc,\"https://example.com/a,b?q=\"\"x\"\"\",308,2026-01-02T03:04:05.006Z,,7,\"ci, bot\"\r\n\
             def,https://example.com/,308,2026-01-02T03:04:05.006Z,2030-01-01T00:00:00Z,7,\r\n"
        );
    }

    #[test]
    fn json_lines_are_one_object_a_line_with_nulls_for_none() {
        let out = encode(&[record("abc", "https://example.com/ä", None, None)], ExportFormat::Jsonl, true);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().count(), 1);
        assert!(text.ends_with('\n'));
        let back: ExportRecord = serde_json::from_str(text.trim_end()).unwrap();
        assert_eq!(back, record("abc", "https://example.com/ä", None, None));
        assert!(text.contains(r#""expires_at":null"#), "{text}");
    }

    #[test]
    fn formats_parse_case_insensitively() {
        assert_eq!(ExportFormat::parse("CSV"), Some(ExportFormat::Csv));
        assert_eq!(ExportFormat::parse("jsonl"), Some(ExportFormat::Jsonl));
        assert_eq!(ExportFormat::parse("ndjson"), Some(ExportFormat::Jsonl));
        assert_eq!(ExportFormat::parse("xml"), None);
    }
}
