//! One line of a link import — CSV `code,url` (an optional `code,url` header) or a JSON line
//! `{"code":…,"url":…}` — checked the way every link is: a code-shaped code and a target URL
//! [`super::target::parse_target`] accepts. The admin app's import page reads its files with it;
//! `shortener links import` reads the same lines, and also the export's full records (status and
//! times), which this refuses rather than drop their fields.

use super::{code, target};

/// Parses one line into (code, url); `Ok(None)` for blank lines and the CSV header.
pub fn parse_line(line: &str, jsonl: bool, own: &target::OwnOrigin) -> Result<Option<(String, String)>, String> {
    let line = line.trim_end_matches(['\r', '\n']);
    if line.trim().is_empty() {
        return Ok(None);
    }
    let (c, u) = if jsonl {
        // Unknown fields are refused, not dropped: a line of a full export (status, times) must
        // not come back as a plain 302 link without a word.
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Row {
            code: String,
            url: String,
        }
        let r: Row = serde_json::from_str(line).map_err(|e| e.to_string())?;
        (r.code, r.url)
    } else {
        let (c, u) = line.split_once(',').ok_or("expected code,url")?;
        let (c, u) = (c.trim().trim_matches('"'), u.trim().trim_matches('"'));
        if c.eq_ignore_ascii_case("code") || c.eq_ignore_ascii_case("short_code") {
            return Ok(None);
        }
        (c.to_string(), u.to_string())
    };
    if !code::is_code_shaped(&c) {
        return Err(format!("invalid code {c:?}"));
    }
    let url = target::parse_target(&u, own).map_err(|e| e.message)?;
    Ok(Some((c, url)))
}
