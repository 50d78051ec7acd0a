//! Queries on `link_mappings`, `link_clicks_daily` and `cache_invalidations`. Reads take the
//! read pool ([`Db`]); writes take the writer's connection ([`Conn`]).

use sqlx::FromRow;

use super::{on_db, Backend, Conn, Db, DbError};

/// One link as stored.
#[derive(Debug, Clone, FromRow, PartialEq, Eq)]
pub struct LinkRow {
    /// The short code (primary key).
    pub short_code: String,
    /// The target URL, exactly as it is sent in `Location`.
    pub original_url: String,
    /// 301, 302, 307 or 308.
    pub redirect_status: i64,
    /// Epoch milliseconds.
    pub created_at: i64,
    /// Epoch milliseconds of the last change.
    pub updated_at: i64,
    /// Epoch milliseconds after which the link answers 410; `None` = never.
    pub expires_at: Option<i64>,
    /// Clicks flushed to the database.
    pub clicks: i64,
    /// Epoch milliseconds of the last flushed click.
    pub last_clicked_at: Option<i64>,
    /// The id of the key that created the link; `None` for imported or hand-inserted rows
    /// (those belong to admin keys).
    pub created_by: Option<i64>,
}

/// Which links a query may see or change: an admin key's scope is every link, an ordinary key's
/// the links it created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every link.
    Every,
    /// Only links created by this key id.
    CreatedBy(i64),
}

impl Scope {
    /// Whether a link created by `created_by` is in this scope.
    pub fn covers(self, created_by: Option<i64>) -> bool {
        match self {
            Scope::Every => true,
            Scope::CreatedBy(id) => created_by == Some(id),
        }
    }

    /// The binds of a scoped statement's `($n OR created_by = $n+1)`: (every?, key id).
    fn binds(self) -> (bool, i64) {
        match self {
            Scope::Every => (true, 0),
            Scope::CreatedBy(id) => (false, id),
        }
    }
}

/// What the redirect path needs of a link.
#[derive(Debug, Clone, FromRow, PartialEq, Eq)]
pub struct Target {
    /// The target URL.
    pub original_url: String,
    /// 301, 302, 307 or 308.
    pub redirect_status: i64,
    /// Epoch milliseconds; `None` = never expires.
    pub expires_at: Option<i64>,
}

/// Most values one `IN (…)` list or multi-row `VALUES` carries (SQLite allows 32,766 parameters a
/// statement, PostgreSQL 65,535).
const MAX_LIST: usize = 10_000;

/// `rows` placeholder groups of `width`, comma-separated, the first numbered `first`:
/// `$1, $2, $3` (width 1) or `($1, $2), ($3, $4)` on PostgreSQL, plain `?, ?, ?` on SQLite
/// (every caller's list holds all of its statement's parameters, in order).
///
/// Not `$N` or `?N` on SQLite, though sqlx reads both: SQLite keeps a numbered or named
/// parameter's name in a list that it searches from the start for each one (when parsing `$N`,
/// and when sqlx asks each parameter's name to bind it), so a 4,000-row insert (28,000
/// parameters) cost seconds (an import ran at 1,000 links/s). A plain `?` has no name.
pub(crate) fn placeholders(backend: Backend, first: usize, rows: usize, width: usize) -> String {
    if backend == Backend::Sqlite {
        let group = if width > 1 { format!("({})", vec!["?"; width].join(", ")) } else { "?".to_string() };
        return vec![group.as_str(); rows].join(", ");
    }
    let mut out = String::with_capacity(rows * (width * 6 + 4));
    for r in 0..rows {
        if r > 0 {
            out.push_str(", ");
        }
        if width > 1 {
            out.push('(');
        }
        for k in 0..width {
            if k > 0 {
                out.push_str(", ");
            }
            out.push('$');
            out.push_str(&(first + r * width + k).to_string());
        }
        if width > 1 {
            out.push(')');
        }
    }
    out
}

const COLUMNS: &str =
    "short_code, original_url, redirect_status, created_at, updated_at, expires_at, clicks, last_clicked_at, created_by";

/// The redirect path's fallback read for many codes at once (the resolver batches concurrent
/// misses): one statement, a primary-key probe per code. Codes without a link are absent.
pub async fn find_targets_by_codes(db: &Db, codes: &[String]) -> Result<Vec<(String, Target)>, DbError> {
    let mut found = Vec::with_capacity(codes.len());
    for chunk in codes.chunks(MAX_LIST) {
        let list = placeholders(db.backend(), 1, chunk.len(), 1);
        let sql = format!(
            "SELECT short_code, original_url, redirect_status, expires_at FROM link_mappings WHERE short_code IN ({list})"
        );
        let rows = on_db!(pool db, p => {
            // Not cached: the text varies with the batch size.
            let mut q = sqlx::query_as::<_, (String, String, i64, Option<i64>)>(&sql).persistent(false);
            for code in chunk {
                q = q.bind(code);
            }
            q.fetch_all(p).await
        })
        .inspect_err(|e| tracing::debug!(error = %e, codes = chunk.len(), "link lookup failed"))?;
        for (code, original_url, redirect_status, expires_at) in rows {
            found.push((code, Target { original_url, redirect_status, expires_at }));
        }
    }
    Ok(found)
}

/// The whole link, for the API.
pub async fn find_link_by_code(db: &Db, code: &str) -> Result<Option<LinkRow>, DbError> {
    let sql = format!("SELECT {COLUMNS} FROM link_mappings WHERE short_code = $1");
    Ok(on_db!(pool db, p => sqlx::query_as::<_, LinkRow>(&sql).bind(code).fetch_optional(p).await)?)
}

/// A page of the links in `scope`, ordered by code, starting after `after` (keyset pagination:
/// stable under concurrent inserts, one range scan per page: of the primary key for every link,
/// of `link_mappings_by_creator` for one key's).
pub async fn find_links_page(db: &Db, scope: Scope, after: Option<&str>, limit: u32) -> Result<Vec<LinkRow>, DbError> {
    let after = after.unwrap_or("");
    let limit = i64::from(limit);
    Ok(match scope {
        Scope::Every => {
            let sql = format!("SELECT {COLUMNS} FROM link_mappings WHERE short_code > $1 ORDER BY short_code LIMIT $2");
            on_db!(pool db, p => sqlx::query_as::<_, LinkRow>(&sql).bind(after).bind(limit).fetch_all(p).await)?
        }
        Scope::CreatedBy(id) => {
            let sql = format!(
                "SELECT {COLUMNS} FROM link_mappings WHERE created_by = $1 AND short_code > $2 ORDER BY short_code LIMIT $3"
            );
            on_db!(pool db, p => sqlx::query_as::<_, LinkRow>(&sql).bind(id).bind(after).bind(limit).fetch_all(p).await)?
        }
    })
}

/// A partial update: `None` leaves a field as it is; `expires_at: Some(None)` clears expiry.
#[derive(Debug, Clone, Default)]
pub struct LinkPatch {
    /// New target URL.
    pub url: Option<String>,
    /// New expiry (`Some(None)` = never).
    pub expires_at: Option<Option<i64>>,
    /// New redirect status.
    pub redirect_status: Option<i64>,
}

/// Applies a patch; `None` when there is no such link in `scope`.
pub async fn update_link(
    conn: &mut Conn<'_>,
    code: &str,
    scope: Scope,
    patch: &LinkPatch,
    now: i64,
) -> Result<Option<LinkRow>, sqlx::Error> {
    let (every, id) = scope.binds();
    let sql = format!(
        "UPDATE link_mappings SET
            original_url = COALESCE($1, original_url),
            redirect_status = COALESCE($2, redirect_status),
            expires_at = CASE WHEN $3 THEN $4 ELSE expires_at END,
            updated_at = $5
         WHERE short_code = $6 AND ($7 OR created_by = $8) RETURNING {COLUMNS}"
    );
    on_db!(conn conn, c => sqlx::query_as::<_, LinkRow>(&sql)
        .bind(patch.url.as_deref())
        .bind(patch.redirect_status)
        .bind(patch.expires_at.is_some())
        .bind(patch.expires_at.flatten())
        .bind(now)
        .bind(code)
        .bind(every)
        .bind(id)
        .fetch_optional(c)
        .await)
}

/// Deletes a link in `scope` and its daily click rows; false when there was no such link.
pub async fn delete_link(conn: &mut Conn<'_>, code: &str, scope: Scope) -> Result<bool, sqlx::Error> {
    let (every, id) = scope.binds();
    let deleted = on_db!(conn conn, c => sqlx::query(
        "DELETE FROM link_mappings WHERE short_code = $1 AND ($2 OR created_by = $3)"
    )
    .bind(code)
    .bind(every)
    .bind(id)
    .execute(c)
    .await?
    .rows_affected());
    if deleted == 0 {
        return Ok(false);
    }
    on_db!(conn conn, c => sqlx::query("DELETE FROM link_clicks_daily WHERE short_code = $1").bind(code).execute(c).await.map(drop))?;
    Ok(true)
}

/// Adds buffered clicks — (code, count, last click epoch ms) — to their links and to their rows
/// for `day`; codes whose link no longer exists are skipped. Two statements per 20,000 codes,
/// each taking the whole chunk as fixed-shape parameters (SQLite: one JSON text read with
/// `json_each`; PostgreSQL: three arrays read with `unnest`): the statements' text is fixed
/// (prepared once, no SQL to parse per flush). A statement per code meant two round trips per
/// clicked code, which under a load spread over 100,000 codes was a third of the service's CPU.
pub async fn add_clicks(conn: &mut Conn<'_>, batch: &[(String, u64, i64)], day: &str) -> Result<(), sqlx::Error> {
    for chunk in batch.chunks(20_000) {
        let rows: Vec<(&str, i64, i64)> =
            chunk.iter().map(|(code, n, last)| (code.as_str(), i64::try_from(*n).unwrap_or(i64::MAX), *last)).collect();
        match conn {
            Conn::Sqlite(c) => add_clicks_sqlite(c, &rows, day).await?,
            Conn::Postgres(c) => add_clicks_pg(c, &rows, day).await?,
        }
    }
    Ok(())
}

async fn add_clicks_sqlite(
    conn: &mut sqlx::SqliteConnection,
    rows: &[(&str, i64, i64)],
    day: &str,
) -> Result<(), sqlx::Error> {
    // Codes are unique within a flush, but summing keeps this right if they were not.
    const CLICKED: &str = "WITH s AS (SELECT value ->> 0 AS code, SUM(value ->> 1) AS n, MAX(value ->> 2) AS last
                           FROM json_each($1) GROUP BY 1)";
    let json = serde_json::to_string(rows).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    sqlx::query(&format!(
        "{CLICKED} INSERT INTO link_clicks_daily (short_code, day, clicks)
         SELECT s.code, $2, s.n FROM s JOIN link_mappings m ON m.short_code = s.code WHERE true
         ON CONFLICT (short_code, day) DO UPDATE SET clicks = clicks + excluded.clicks"
    ))
    .bind(&json)
    .bind(day)
    .execute(&mut *conn)
    .await?;
    sqlx::query(&format!(
        "{CLICKED} UPDATE link_mappings SET clicks = clicks + s.n, last_clicked_at = MAX(COALESCE(last_clicked_at, 0), s.last)
         FROM s WHERE link_mappings.short_code = s.code"
    ))
    .bind(&json)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn add_clicks_pg(conn: &mut sqlx::PgConnection, rows: &[(&str, i64, i64)], day: &str) -> Result<(), sqlx::Error> {
    const CLICKED: &str = "WITH s AS (SELECT code, SUM(n)::bigint AS n, MAX(last) AS last
                           FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS t(code, n, last) GROUP BY code)";
    let codes: Vec<&str> = rows.iter().map(|r| r.0).collect();
    let counts: Vec<i64> = rows.iter().map(|r| r.1).collect();
    let lasts: Vec<i64> = rows.iter().map(|r| r.2).collect();
    // Several instances flush clicks of the same links: each takes the rows' locks in code order
    // first, so two flushes wait for each other instead of deadlocking.
    sqlx::query("SELECT 1 FROM link_mappings WHERE short_code = ANY($1) ORDER BY short_code FOR UPDATE")
        .bind(&codes)
        .execute(&mut *conn)
        .await?;
    sqlx::query(&format!(
        "{CLICKED} INSERT INTO link_clicks_daily (short_code, day, clicks)
         SELECT s.code, $4, s.n FROM s JOIN link_mappings m ON m.short_code = s.code
         ON CONFLICT (short_code, day) DO UPDATE SET clicks = link_clicks_daily.clicks + excluded.clicks"
    ))
    .bind(&codes)
    .bind(&counts)
    .bind(&lasts)
    .bind(day)
    .execute(&mut *conn)
    .await?;
    sqlx::query(&format!(
        "{CLICKED} UPDATE link_mappings
         SET clicks = link_mappings.clicks + s.n,
             last_clicked_at = GREATEST(COALESCE(link_mappings.last_clicked_at, 0), s.last)
         FROM s WHERE link_mappings.short_code = s.code"
    ))
    .bind(&codes)
    .bind(&counts)
    .bind(&lasts)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Daily click counts of a link from `since_day` (YYYY-MM-DD) on.
pub async fn find_clicks_daily(db: &Db, code: &str, since_day: &str) -> Result<Vec<(String, i64)>, DbError> {
    const SQL: &str = "SELECT day, clicks FROM link_clicks_daily WHERE short_code = $1 AND day >= $2 ORDER BY day";
    Ok(on_db!(pool db, p => sqlx::query_as(SQL).bind(code).bind(since_day).fetch_all(p).await)?)
}

/// A link to insert.
#[derive(Debug, Clone)]
pub struct NewLink<'a> {
    /// The code.
    pub code: &'a str,
    /// The target URL.
    pub url: &'a str,
    /// Redirect status.
    pub status: i64,
    /// Expiry, epoch milliseconds.
    pub expires_at: Option<i64>,
    /// The creating key.
    pub created_by: Option<i64>,
    /// When it was created, epoch milliseconds; `None` = at insert (`now`). An import of an
    /// export sets it, so a link keeps its creation time across databases.
    pub created_at: Option<i64>,
}

impl NewLink<'_> {
    /// The row this link is once inserted at `now`.
    pub fn row(&self, now: i64) -> LinkRow {
        LinkRow {
            short_code: self.code.to_string(),
            original_url: self.url.to_string(),
            redirect_status: self.status,
            created_at: self.created_at.unwrap_or(now),
            updated_at: now,
            expires_at: self.expires_at,
            clicks: 0,
            last_clicked_at: None,
            created_by: self.created_by,
        }
    }
}

/// Binds one [`NewLink`]'s columns in `insert_sql`'s order (code, url, status, created, updated,
/// expiry, creator) to a query or scalar query: the two have `bind` but no trait in common.
macro_rules! bind_new_link {
    ($q:expr, $r:expr, $now:expr) => {
        $q.bind($r.code)
            .bind($r.url)
            .bind($r.status)
            .bind($r.created_at.unwrap_or($now))
            .bind($now)
            .bind($r.expires_at)
            .bind($r.created_by)
    };
}

/// Inserts many links; codes that are taken (or repeated within `rows`: the first wins) are
/// skipped. Returns the rows that were inserted. Runs inside the writer's transaction.
///
/// SQLite: no `RETURNING`. sqlx's SQLite driver hands every result row from its worker thread to
/// the task separately, and a thousand rows meant about a thousand thread wake-ups per batch
/// (most of a create's CPU in the profile). Instead one query finds the codes that are taken
/// (normally none), the rest go in with one `INSERT`, and the rows are built from what was
/// inserted. The caller holds the write lock (`BEGIN IMMEDIATE`), so nothing can take a code in
/// between.
///
/// PostgreSQL: writers of other instances commit beside this one, so "taken" is only known by
/// the insert itself: `ON CONFLICT DO NOTHING RETURNING short_code` (a conflicting insert of
/// another transaction in flight is waited for, then decides).
pub async fn insert_links(conn: &mut Conn<'_>, rows: &[NewLink<'_>], now: i64) -> Result<Vec<LinkRow>, sqlx::Error> {
    let mut seen = std::collections::HashSet::new();
    let unique: Vec<&NewLink<'_>> = rows.iter().filter(|r| seen.insert(r.code)).collect();
    if let Conn::Postgres(c) = conn {
        let mut inserted = Vec::with_capacity(unique.len());
        for chunk in unique.chunks(MAX_ROWS_PER_INSERT) {
            let (sql, _) = insert_sql(Backend::Postgres, chunk.len(), " RETURNING short_code");
            let mut q = sqlx::query_scalar::<_, String>(&sql).persistent(false);
            for r in chunk {
                q = bind_new_link!(q, r, now);
            }
            let codes: std::collections::HashSet<String> = q.fetch_all(&mut **c).await?.into_iter().collect();
            inserted.extend(chunk.iter().filter(|r| codes.contains(r.code)).map(|r| r.row(now)));
        }
        return Ok(inserted);
    }
    let mut taken: std::collections::HashSet<String> = std::collections::HashSet::new();
    for chunk in unique.chunks(MAX_LIST) {
        let sql = format!(
            "SELECT short_code FROM link_mappings WHERE short_code IN ({})",
            placeholders(conn.backend(), 1, chunk.len(), 1)
        );
        taken.extend(on_db!(conn conn, c => {
            let mut q = sqlx::query_scalar::<_, String>(&sql).persistent(false);
            for r in chunk {
                q = q.bind(r.code);
            }
            q.fetch_all(c).await
        })?);
    }
    let fresh: Vec<&NewLink<'_>> = unique.into_iter().filter(|r| !taken.contains(r.code)).collect();
    for chunk in fresh.chunks(MAX_ROWS_PER_INSERT) {
        if insert_links_skipping_taken(conn, chunk, now).await? != chunk.len() as u64 {
            return Err(sqlx::Error::Protocol("a code was taken while the write lock was held".into()));
        }
    }
    Ok(fresh.into_iter().map(|r| r.row(now)).collect())
}

/// Most rows one `INSERT` takes: 7 parameters a row, and SQLite allows 32,766 a statement.
pub const MAX_ROWS_PER_INSERT: usize = 4000;

/// The multi-row insert of `n` links, skipping taken codes, with `tail` appended.
fn insert_sql(backend: Backend, n: usize, tail: &str) -> (String, usize) {
    let values = placeholders(backend, 1, n, 7);
    (
        format!(
            "INSERT INTO link_mappings (short_code, original_url, redirect_status, created_at, updated_at, expires_at, created_by)
             VALUES {values} ON CONFLICT (short_code) DO NOTHING{tail}"
        ),
        n * 7,
    )
}

/// Inserts at most [`MAX_ROWS_PER_INSERT`] links with one statement, skipping codes that are
/// taken; returns how many went in. Outside a transaction the statement commits on its own, all
/// or nothing, so a batch of creates is one round trip.
pub async fn insert_links_skipping_taken(
    conn: &mut Conn<'_>,
    rows: &[&NewLink<'_>],
    now: i64,
) -> Result<u64, sqlx::Error> {
    assert!(rows.len() <= MAX_ROWS_PER_INSERT, "too many rows for one INSERT");
    if rows.is_empty() {
        return Ok(0);
    }
    let (sql, _) = insert_sql(conn.backend(), rows.len(), "");
    on_db!(conn conn, c => {
        // Not cached: the text varies with the batch size.
        let mut q = sqlx::query(&sql).persistent(false);
        for r in rows {
            q = bind_new_link!(q, r, now);
        }
        Ok(q.execute(c).await?.rows_affected())
    })
}

/// Of `rows`, inserted at `now` by [`insert_links_skipping_taken`], the codes whose stored link
/// is a different one: those codes were taken before. (A stored row equal to ours in URL, status,
/// expiry, creator and creation millisecond is ours, or indistinguishable from it.)
pub async fn find_taken_by_others(
    conn: &mut Conn<'_>,
    rows: &[&NewLink<'_>],
    now: i64,
) -> Result<Vec<String>, sqlx::Error> {
    let mut stored = std::collections::HashMap::new();
    for chunk in rows.chunks(MAX_LIST) {
        let sql = format!(
            "SELECT short_code, original_url, redirect_status, created_at, expires_at, created_by
             FROM link_mappings WHERE short_code IN ({})",
            placeholders(conn.backend(), 1, chunk.len(), 1)
        );
        let found = on_db!(conn conn, c => {
            let mut q = sqlx::query_as::<_, (String, String, i64, i64, Option<i64>, Option<i64>)>(&sql).persistent(false);
            for r in chunk {
                q = q.bind(r.code);
            }
            q.fetch_all(c).await
        })?;
        for (code, url, status, created, expires, by) in found {
            stored.insert(code, (url, status, created, expires, by));
        }
    }
    Ok(rows
        .iter()
        .filter(|r| match stored.get(r.code) {
            Some((url, status, created, expires, by)) => {
                !(url == r.url
                    && *status == r.status
                    && *created == r.created_at.unwrap_or(now)
                    && *expires == r.expires_at
                    && *by == r.created_by)
            }
            // Not there at all: nothing took it, but it did not go in either.
            None => true,
        })
        .map(|r| r.code.to_string())
        .collect())
}

/// The advisory lock that PostgreSQL writers hold from their first outbox insert to their
/// commit ("shortener outbox" in ASCII, folded to 63 bits).
const OUTBOX_LOCK: i64 = 0x7368_6f72_7462_6f78;

/// Queues cache invalidations for `codes` in the current transaction; returns their ids.
///
/// SQLite: rowids of one multi-row insert are consecutive, ending at `last_insert_rowid()` (the
/// caller holds the write lock), so no `RETURNING` is needed.
///
/// PostgreSQL: writers of several instances insert here at once, and identity values are taken
/// at insert but become visible at commit, so without care a reader could see id 10 before id 9
/// commits and then skip 9 for good (readers ask for ids above the last one they saw). Each
/// writer takes a transaction-scoped advisory lock before its first insert and keeps it until it
/// commits, so ids become visible in the order they were taken. Only batches that change
/// existing links take it; creates under random codes never do.
pub async fn insert_invalidations(conn: &mut Conn<'_>, codes: &[String], now: i64) -> Result<Vec<i64>, sqlx::Error> {
    let mut ids = Vec::with_capacity(codes.len());
    if codes.is_empty() {
        return Ok(ids);
    }
    if let Conn::Postgres(c) = conn {
        sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(OUTBOX_LOCK).execute(&mut **c).await?;
    }
    for chunk in codes.chunks(MAX_LIST) {
        let values = placeholders(conn.backend(), 1, chunk.len(), 2);
        match conn {
            Conn::Sqlite(c) => {
                let sql = format!("INSERT INTO cache_invalidations (short_code, queued_at) VALUES {values}");
                let mut q = sqlx::query(&sql).persistent(false);
                for code in chunk {
                    q = q.bind(code).bind(now);
                }
                let last = q.execute(&mut **c).await?.last_insert_rowid();
                ids.extend((last - chunk.len() as i64 + 1)..=last);
            }
            Conn::Postgres(c) => {
                let sql =
                    format!("INSERT INTO cache_invalidations (short_code, queued_at) VALUES {values} RETURNING id");
                let mut q = sqlx::query_scalar::<_, i64>(&sql).persistent(false);
                for code in chunk {
                    q = q.bind(code).bind(now);
                }
                let mut got = q.fetch_all(&mut **c).await?;
                got.sort_unstable();
                ids.extend(got);
            }
        }
    }
    Ok(ids)
}

/// Removes invalidations that Redis acknowledged.
pub async fn delete_invalidations(conn: &mut Conn<'_>, ids: &[i64]) -> Result<(), sqlx::Error> {
    for chunk in ids.chunks(500) {
        let sql = format!(
            "DELETE FROM cache_invalidations WHERE id IN ({})",
            placeholders(conn.backend(), 1, chunk.len(), 1)
        );
        on_db!(conn conn, c => {
            let mut q = sqlx::query(&sql);
            for id in chunk {
                q = q.bind(id);
            }
            q.execute(c).await.map(drop)
        })?;
    }
    Ok(())
}

/// Queued invalidations with an id above `after`, oldest first: (id, code).
pub async fn find_invalidations_after(db: &Db, after: i64, limit: i64) -> Result<Vec<(i64, String)>, DbError> {
    const SQL: &str = "SELECT id, short_code FROM cache_invalidations WHERE id > $1 ORDER BY id LIMIT $2";
    Ok(on_db!(pool db, p => sqlx::query_as(SQL).bind(after).bind(limit).fetch_all(p).await)?)
}

/// The codes of the `n` most-clicked links (cache warm-up).
pub async fn find_most_clicked_codes(db: &Db, n: u32) -> Result<Vec<String>, DbError> {
    const SQL: &str = "SELECT short_code FROM link_mappings ORDER BY clicks DESC LIMIT $1";
    Ok(on_db!(pool db, p => sqlx::query_scalar(SQL).bind(i64::from(n)).fetch_all(p).await)?)
}

/// A read that touches the links table (readiness).
pub async fn probe(db: &Db) -> Result<(), DbError> {
    const SQL: &str = "SELECT COUNT(*) FROM (SELECT 1 FROM link_mappings LIMIT 1) AS one";
    on_db!(pool db, p => sqlx::query_scalar::<_, i64>(SQL).fetch_one(p).await)?;
    Ok(())
}

/// Inserts many links (302, no expiry, no creator) in one transaction, skipping codes that
/// exist; returns how many were new.
pub async fn insert_links_bulk(conn: &mut Conn<'_>, rows: &[(String, String)], now: i64) -> Result<u64, sqlx::Error> {
    let links: Vec<NewLink<'_>> = rows
        .iter()
        .map(|(code, url)| NewLink { code, url, status: 302, expires_at: None, created_by: None, created_at: None })
        .collect();
    insert_imported_links(conn, &links, now).await
}

/// Inserts many links, each as given (status, expiry, creation time, creator), in one
/// transaction, skipping codes that exist; returns how many were new (`links import`).
/// Multi-row statements: a statement per link made an import of 600,000 links take 46 s.
pub async fn insert_imported_links(conn: &mut Conn<'_>, links: &[NewLink<'_>], now: i64) -> Result<u64, sqlx::Error> {
    let refs: Vec<&NewLink<'_>> = links.iter().collect();
    super::begin(conn).await?;
    let done = async {
        let mut inserted = 0;
        for chunk in refs.chunks(MAX_ROWS_PER_INSERT) {
            inserted += insert_links_skipping_taken(conn, chunk, now).await?;
        }
        Ok(inserted)
    }
    .await;
    super::end(conn, done).await
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn fresh_db() -> (tempfile::TempDir, sqlx::SqliteConnection) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let conn = crate::db::open_writer(&url, std::time::Duration::from_secs(5)).await.unwrap();
        (dir, conn)
    }

    fn link<'a>(code: &'a str, url: &'a str) -> NewLink<'a> {
        NewLink { code, url, status: 302, expires_at: None, created_by: None, created_at: None }
    }

    #[test]
    fn placeholders_are_numbered_on_postgres_and_plain_on_sqlite() {
        assert_eq!(placeholders(Backend::Postgres, 1, 2, 2), "($1, $2), ($3, $4)");
        assert_eq!(placeholders(Backend::Postgres, 3, 3, 1), "$3, $4, $5");
        assert_eq!(placeholders(Backend::Sqlite, 1, 2, 2), "(?, ?), (?, ?)");
        assert_eq!(placeholders(Backend::Sqlite, 1, 3, 1), "?, ?, ?");
    }

    #[tokio::test]
    async fn a_batch_insert_skips_taken_codes_and_the_taken_ones_are_found() {
        let (_dir, mut conn) = fresh_db().await;
        let earlier = link("taken01", "https://example.com/earlier");
        assert_eq!(insert_links_skipping_taken(&mut Conn::Sqlite(&mut conn), &[&earlier], 1).await.unwrap(), 1);

        let rows = [
            link("fresh01", "https://example.com/a"),
            link("taken01", "https://example.com/b"),
            link("fresh02", "https://example.com/c"),
        ];
        let refs: Vec<&NewLink<'_>> = rows.iter().collect();
        assert_eq!(insert_links_skipping_taken(&mut Conn::Sqlite(&mut conn), &refs, 2).await.unwrap(), 2);
        assert_eq!(
            find_taken_by_others(&mut Conn::Sqlite(&mut conn), &refs, 2).await.unwrap(),
            vec!["taken01".to_string()]
        );
        // The earlier link is untouched.
        let url: String = sqlx::query_scalar("SELECT original_url FROM link_mappings WHERE short_code = 'taken01'")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(url, "https://example.com/earlier");
    }

    #[tokio::test]
    async fn clicks_add_up_per_link_and_day_and_skip_deleted_links() {
        let (_dir, mut conn) = fresh_db().await;
        let rows = [link("clk0001", "https://example.com/1"), link("clk0002", "https://example.com/2")];
        let refs: Vec<&NewLink<'_>> = rows.iter().collect();
        insert_links_skipping_taken(&mut Conn::Sqlite(&mut conn), &refs, 1).await.unwrap();
        let batch =
            vec![("clk0001".to_string(), 3, 100), ("gone000".to_string(), 5, 100), ("clk0002".to_string(), 1, 50)];
        add_clicks(&mut Conn::Sqlite(&mut conn), &batch, "2026-11-22").await.unwrap();
        add_clicks(&mut Conn::Sqlite(&mut conn), &[("clk0001".to_string(), 2, 90)], "2026-11-22").await.unwrap();
        add_clicks(&mut Conn::Sqlite(&mut conn), &[("clk0001".to_string(), 4, 200)], "2026-11-23").await.unwrap();
        let totals: Vec<(String, i64, Option<i64>)> =
            sqlx::query_as("SELECT short_code, clicks, last_clicked_at FROM link_mappings ORDER BY short_code")
                .fetch_all(&mut conn)
                .await
                .unwrap();
        assert_eq!(totals, vec![("clk0001".into(), 9, Some(200)), ("clk0002".into(), 1, Some(50))]);
        let daily: Vec<(String, String, i64)> =
            sqlx::query_as("SELECT short_code, day, clicks FROM link_clicks_daily ORDER BY short_code, day")
                .fetch_all(&mut conn)
                .await
                .unwrap();
        assert_eq!(
            daily,
            vec![
                ("clk0001".into(), "2026-11-22".into(), 5),
                ("clk0001".into(), "2026-11-23".into(), 4),
                ("clk0002".into(), "2026-11-22".into(), 1),
            ]
        );
    }
}
