//! The admin app's list of links: search, sort and keyset pagination that stay fast at a million
//! links (figures in docs/performance.md).
//!
//! Every order is walked by keyset, never `OFFSET`: `code` on the primary key, `newest` and
//! `oldest` on `link_mappings_by_created (created_at, short_code)` — or, for an ordinary key's
//! own links, on `link_mappings_by_creator (created_by, short_code)` and
//! `link_mappings_by_creator_created (created_by, created_at, short_code)`. A page is one range
//! scan of `limit + 1` index entries.
//!
//! A code-prefix search is a range of the primary key (`prefix <= code < prefix + '{'`: `{`
//! sorts after every character a code may have), so it is always listed in code order.
//!
//! A URL-substring search cannot use a B-tree index. It is bounded instead: each page examines
//! at most `scan_budget` links of the chosen order (a materialized window), keeps the matches,
//! and when the window ends before the page is full, the next cursor points at the window's last
//! link, so "next page" goes on scanning where this one stopped. A page therefore never costs
//! more than `scan_budget` rows, whatever the table's size.

use sqlx::FromRow;

use super::{
    links::{LinkRow, Scope},
    on_db, Db, DbError,
};

/// The orders of the list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sort {
    /// Newest first (created_at, then code, descending).
    Newest,
    /// Oldest first.
    Oldest,
    /// By code, ascending.
    Code,
}

/// What to search for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    /// Every link.
    None,
    /// Codes starting with this (already code-shaped characters only).
    CodePrefix(String),
    /// Target URLs containing this, ASCII case-insensitively.
    UrlContains(String),
}

/// Where a page starts: after the link with this key in the page's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// `created_at` of that link (unused for [`Sort::Code`]).
    pub created_at: i64,
    /// Its code.
    pub code: String,
}

/// One page of the list.
#[derive(Debug, Clone)]
pub struct ListPage {
    /// The links, in the page's order.
    pub rows: Vec<LinkRow>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<Cursor>,
    /// For a URL search whose scan window ended before the page was full: how many links were
    /// examined (the next page goes on from there).
    pub scan_stopped_after: Option<u64>,
}

enum Bind {
    I(i64),
    S(String),
}

#[derive(FromRow)]
struct Windowed {
    #[sqlx(flatten)]
    row: LinkRow,
    hit: i64,
    examined: i64,
}

const COLUMNS: &str =
    "short_code, original_url, redirect_status, created_at, updated_at, expires_at, clicks, last_clicked_at, created_by";

/// Escapes `%`, `_` and `\` for a `LIKE … ESCAPE '\'` pattern.
fn like_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    for ch in s.chars() {
        if matches!(ch, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(ch);
    }
    out
}

/// A page of the links in `scope`, in `sort` order (code order for a code-prefix search), after
/// `after`, matching `filter`; a URL search examines at most `scan_budget` links.
pub async fn find_links_listing(
    db: &Db,
    scope: Scope,
    sort: Sort,
    filter: &Filter,
    after: Option<&Cursor>,
    limit: u32,
    scan_budget: u32,
) -> Result<ListPage, DbError> {
    let sort = if matches!(filter, Filter::CodePrefix(_)) { Sort::Code } else { sort };
    let mut binds = Vec::new();
    let mut arg = |b: Bind| {
        binds.push(b);
        format!("${}", binds.len())
    };
    let mut conds = Vec::new();
    if let Scope::CreatedBy(id) = scope {
        conds.push(format!("created_by = {}", arg(Bind::I(id))));
    }
    if let Some(c) = after {
        conds.push(match sort {
            Sort::Code => format!("short_code > {}", arg(Bind::S(c.code.clone()))),
            Sort::Newest => {
                format!("(created_at, short_code) < ({}, {})", arg(Bind::I(c.created_at)), arg(Bind::S(c.code.clone())))
            }
            Sort::Oldest => {
                format!("(created_at, short_code) > ({}, {})", arg(Bind::I(c.created_at)), arg(Bind::S(c.code.clone())))
            }
        });
    }
    if let Filter::CodePrefix(p) = filter {
        conds.push(format!("short_code >= {}", arg(Bind::S(p.clone()))));
        conds.push(format!("short_code < {}", arg(Bind::S(format!("{p}{{")))));
    }
    let where_ = if conds.is_empty() { String::new() } else { format!("WHERE {}", conds.join(" AND ")) };
    let (order, reverse) = match sort {
        Sort::Code => ("short_code", "short_code DESC"),
        Sort::Newest => ("created_at DESC, short_code DESC", "created_at, short_code"),
        Sort::Oldest => ("created_at, short_code", "created_at DESC, short_code DESC"),
    };
    let page = i64::from(limit) + 1;
    let cursor_of = |r: &LinkRow| Cursor { created_at: r.created_at, code: r.short_code.clone() };

    if let Filter::UrlContains(needle) = filter {
        let budget = arg(Bind::I(i64::from(scan_budget)));
        let pattern = arg(Bind::S(format!("%{}%", like_escape(&needle.to_ascii_lowercase()))));
        let page_arg = arg(Bind::I(page));
        let sql = format!(
            "WITH w AS MATERIALIZED (SELECT {COLUMNS} FROM link_mappings {where_} ORDER BY {order} LIMIT {budget})
             SELECT * FROM (SELECT {COLUMNS}, CAST(1 AS BIGINT) AS hit, CAST(0 AS BIGINT) AS examined FROM w
                            WHERE LOWER(original_url) LIKE {pattern} ESCAPE '\\' ORDER BY {order} LIMIT {page_arg}) AS hits
             UNION ALL
             SELECT * FROM (SELECT {COLUMNS}, CAST(0 AS BIGINT) AS hit, (SELECT COUNT(*) FROM w) AS examined FROM w
                            ORDER BY {reverse} LIMIT 1) AS window_end"
        );
        let got: Vec<Windowed> = run(db, &sql, binds).await?;
        let mut hits = Vec::new();
        let mut end = None;
        for w in got {
            if w.hit == 1 {
                hits.push(w.row);
            } else {
                end = Some((w.row, w.examined));
            }
        }
        sort_rows(&mut hits, sort);
        if hits.len() as i64 == page {
            hits.pop();
            let next = hits.last().map(cursor_of);
            return Ok(ListPage { rows: hits, next, scan_stopped_after: None });
        }
        return Ok(match end {
            Some((last, examined)) if examined >= i64::from(scan_budget) => {
                ListPage { rows: hits, next: Some(cursor_of(&last)), scan_stopped_after: Some(examined as u64) }
            }
            _ => ListPage { rows: hits, next: None, scan_stopped_after: None },
        });
    }

    let page_arg = arg(Bind::I(page));
    let sql = format!("SELECT {COLUMNS} FROM link_mappings {where_} ORDER BY {order} LIMIT {page_arg}");
    let mut rows: Vec<LinkRow> = run(db, &sql, binds).await?;
    let next = if rows.len() as i64 == page {
        rows.pop();
        rows.last().map(cursor_of)
    } else {
        None
    };
    Ok(ListPage { rows, next, scan_stopped_after: None })
}

fn sort_rows(rows: &mut [LinkRow], sort: Sort) {
    match sort {
        Sort::Code => rows.sort_by(|a, b| a.short_code.cmp(&b.short_code)),
        Sort::Newest => rows.sort_by(|a, b| (b.created_at, &b.short_code).cmp(&(a.created_at, &a.short_code))),
        Sort::Oldest => rows.sort_by(|a, b| (a.created_at, &a.short_code).cmp(&(b.created_at, &b.short_code))),
    }
}

async fn run<T>(db: &Db, sql: &str, binds: Vec<Bind>) -> Result<Vec<T>, DbError>
where
    T: Send + Unpin + for<'r> FromRow<'r, sqlx::sqlite::SqliteRow> + for<'r> FromRow<'r, sqlx::postgres::PgRow>,
{
    Ok(on_db!(pool db, p => {
        let mut q = sqlx::query_as::<_, T>(sql);
        for b in &binds {
            q = match b {
                Bind::I(v) => q.bind(*v),
                Bind::S(v) => q.bind(v.as_str()),
            };
        }
        q.fetch_all(p).await
    })?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_patterns_match_the_wildcards_literally() {
        assert_eq!(like_escape("100%_a\\b"), "100\\%\\_a\\\\b");
        assert_eq!(like_escape("example.com/x"), "example.com/x");
    }
}
