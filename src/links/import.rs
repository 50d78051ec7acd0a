//! One line of a link import — CSV `code,url` (an optional `code,url` header) or a JSON line
//! `{"code":…,"url":…}` — checked the way every link is: a code-shaped code and a target URL
//! [`super::target::parse_target`] accepts. Used by `shortener links import` and the admin app's
//! import page, so both accept exactly the same files.

use super::{code, target};

/// Parses one line into (code, url); `Ok(None)` for blank lines and the CSV header.
pub fn parse_line(line: &str, jsonl: bool, own: &target::OwnOrigin) -> Result<Option<(String, String)>, String> {
    let line = line.trim_end_matches(['\r', '\n']);
    if line.trim().is_empty() {
        return Ok(None);
    }
    let (c, u) = if jsonl {
        #[derive(serde::Deserialize)]
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
