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
//! at most `scan_budget` links of the chosen order (a window, read as a stream, so a page of a
//! common match stops once it is full), keeps the matches, and when the window ends before the
//! page is full, the next cursor points at the window's last link (found by a second walk of the
//! index alone), so "next page" goes on where this one stopped. A page therefore never reads
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
    let mut conds = Vec::new();
    if let Scope::CreatedBy(id) = scope {
        conds.push(format!("created_by = {}", push(&mut binds, Bind::I(id))));
    }
    if let Some(c) = after {
        conds.push(match sort {
            Sort::Code => format!("short_code > {}", push(&mut binds, Bind::S(c.code.clone()))),
            Sort::Newest => {
                format!(
                    "(created_at, short_code) < ({}, {})",
                    push(&mut binds, Bind::I(c.created_at)),
                    push(&mut binds, Bind::S(c.code.clone()))
                )
            }
            Sort::Oldest => {
                format!(
                    "(created_at, short_code) > ({}, {})",
                    push(&mut binds, Bind::I(c.created_at)),
                    push(&mut binds, Bind::S(c.code.clone()))
                )
            }
        });
    }
    if let Filter::CodePrefix(p) = filter {
        conds.push(format!("short_code >= {}", push(&mut binds, Bind::S(p.clone()))));
        conds.push(format!("short_code < {}", push(&mut binds, Bind::S(format!("{p}{{")))));
    }
    let where_ = if conds.is_empty() { String::new() } else { format!("WHERE {}", conds.join(" AND ")) };
    let order = match sort {
        Sort::Code => "short_code",
        Sort::Newest => "created_at DESC, short_code DESC",
        Sort::Oldest => "created_at, short_code",
    };
    let page = i64::from(limit) + 1;
    let cursor_of = |r: &LinkRow| Cursor { created_at: r.created_at, code: r.short_code.clone() };

    if let Filter::UrlContains(needle) = filter {
        // The matches within the window, read as a stream: a page of a common match stops as
        // soon as it is full, a rare one reads the whole window. No outer ORDER BY: it would
        // make both engines read the whole window to sort it; a subquery scanned without a join
        // keeps its order on both (SQLite's co-routine, PostgreSQL's subquery scan), and the
        // rows are put in order again here.
        let window_binds = binds.len();
        let budget = push(&mut binds, Bind::I(i64::from(scan_budget)));
        let pattern = push(&mut binds, Bind::S(format!("%{}%", like_escape(&needle.to_ascii_lowercase()))));
        let page_arg = push(&mut binds, Bind::I(page));
        let sql = format!(
            "SELECT {COLUMNS} FROM (SELECT {COLUMNS} FROM link_mappings {where_} ORDER BY {order} LIMIT {budget}) AS w
             WHERE LOWER(original_url) LIKE {pattern} ESCAPE '\\' LIMIT {page_arg}"
        );
        let window: Vec<Bind> = binds[..window_binds]
            .iter()
            .map(|b| match b {
                Bind::I(v) => Bind::I(*v),
                Bind::S(v) => Bind::S(v.clone()),
            })
            .collect();
        let mut hits: Vec<LinkRow> = run(db, &sql, binds).await?;
        sort_rows(&mut hits, sort);
        if hits.len() as i64 == page {
            hits.pop();
            let next = hits.last().map(cursor_of);
            return Ok(ListPage { rows: hits, next, scan_stopped_after: None });
        }
        // The page is not full: either the window reached the end of the order, or the next page
        // goes on after the window's last link (found on the index alone).
        let mut binds = window;
        let offset = format!("${}", binds.len() + 1);
        binds.push(Bind::I(i64::from(scan_budget) - 1));
        let sql = format!("SELECT {COLUMNS} FROM link_mappings {where_} ORDER BY {order} LIMIT 1 OFFSET {offset}");
        let end: Vec<LinkRow> = run(db, &sql, binds).await?;
        return Ok(match end.first() {
            Some(last) => {
                ListPage { rows: hits, next: Some(cursor_of(last)), scan_stopped_after: Some(u64::from(scan_budget)) }
            }
            None => ListPage { rows: hits, next: None, scan_stopped_after: None },
        });
    }

    let page_arg = push(&mut binds, Bind::I(page));
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

/// Adds a bind; its placeholder.
fn push(binds: &mut Vec<Bind>, b: Bind) -> String {
    binds.push(b);
    format!("${}", binds.len())
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

    #[tokio::test]
    async fn a_url_search_walks_every_match_once_across_scan_windows_in_each_order() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let mut w = crate::db::open_writer(&url, std::time::Duration::from_secs(5)).await.unwrap();
        for i in 0..40 {
            sqlx::query("INSERT INTO link_mappings (short_code, original_url, created_at) VALUES ($1, $2, $3)")
                .bind(format!("c{i:02}"))
                .bind(format!("https://example.com/{}/{i}", if i % 3 == 0 { "Hit" } else { "miss" }))
                .bind(1000 + i / 4)
                .execute(&mut w)
                .await
                .unwrap();
        }
        let pool =
            crate::db::open_read_pool(&url, 1, std::time::Duration::from_secs(1), std::time::Duration::from_secs(1))
                .await
                .unwrap();
        let db = Db::Sqlite(pool);
        let filter = Filter::UrlContains("hit".into());
        for (sort, reversed) in [(Sort::Code, false), (Sort::Oldest, false), (Sort::Newest, true)] {
            let (mut seen, mut after, mut stopped) = (Vec::new(), None, 0);
            for _ in 0..50 {
                let p = find_links_listing(&db, Scope::Every, sort, &filter, after.as_ref(), 4, 7).await.unwrap();
                stopped += usize::from(p.scan_stopped_after.is_some());
                seen.extend(p.rows.into_iter().map(|r| r.short_code));
                match p.next {
                    Some(c) => after = Some(c),
                    None => break,
                }
            }
            let mut want: Vec<String> = (0..40).filter(|i| i % 3 == 0).map(|i| format!("c{i:02}")).collect();
            if reversed {
                want.reverse();
            }
            assert_eq!(seen, want, "{sort:?}");
            assert!(stopped > 0, "{sort:?}: some window ended before its page was full");
        }
    }

    #[test]
    fn like_patterns_match_the_wildcards_literally() {
        assert_eq!(like_escape("100%_a\\b"), "100\\%\\_a\\\\b");
        assert_eq!(like_escape("example.com/x"), "example.com/x");
    }
}
