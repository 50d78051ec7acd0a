//! Queries on `link_mappings`. Reads take the read pool; writes take the writer's connection.

use sqlx::{FromRow, SqliteConnection, SqlitePool};

use super::DbError;

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

const COLUMNS: &str =
    "short_code, original_url, redirect_status, created_at, updated_at, expires_at, clicks, last_clicked_at";

/// The redirect path's fallback read: one primary-key probe.
pub async fn find_target_by_code(pool: &SqlitePool, code: &str) -> Result<Option<Target>, DbError> {
    Ok(sqlx::query_as::<_, Target>(
        "SELECT original_url, redirect_status, expires_at FROM link_mappings WHERE short_code = ?",
    )
    .bind(code)
    .fetch_optional(pool)
    .await?)
}

/// The whole link, for the API.
pub async fn find_link_by_code(pool: &SqlitePool, code: &str) -> Result<Option<LinkRow>, DbError> {
    Ok(sqlx::query_as::<_, LinkRow>(&format!("SELECT {COLUMNS} FROM link_mappings WHERE short_code = ?"))
        .bind(code)
        .fetch_optional(pool)
        .await?)
}

/// A page of links ordered by code, starting after `after` (keyset pagination: stable under
/// concurrent inserts, one index range scan per page).
pub async fn find_links_page(pool: &SqlitePool, after: Option<&str>, limit: u32) -> Result<Vec<LinkRow>, DbError> {
    Ok(sqlx::query_as::<_, LinkRow>(&format!(
        "SELECT {COLUMNS} FROM link_mappings WHERE short_code > ? ORDER BY short_code LIMIT ?"
    ))
    .bind(after.unwrap_or(""))
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await?)
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

/// Applies a patch; `None` when there is no such link.
pub async fn update_link(
    conn: &mut SqliteConnection,
    code: &str,
    patch: &LinkPatch,
    now: i64,
) -> Result<Option<LinkRow>, sqlx::Error> {
    sqlx::query_as::<_, LinkRow>(&format!(
        "UPDATE link_mappings SET
            original_url = COALESCE(?, original_url),
            redirect_status = COALESCE(?, redirect_status),
            expires_at = CASE WHEN ? THEN ? ELSE expires_at END,
            updated_at = ?
         WHERE short_code = ? RETURNING {COLUMNS}"
    ))
    .bind(patch.url.as_deref())
    .bind(patch.redirect_status)
    .bind(patch.expires_at.is_some())
    .bind(patch.expires_at.flatten())
    .bind(now)
    .bind(code)
    .fetch_optional(conn)
    .await
}

/// Deletes a link and its daily click rows; false when there was no link.
pub async fn delete_link(conn: &mut SqliteConnection, code: &str) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("DELETE FROM link_mappings WHERE short_code = ?").bind(code).execute(&mut *conn).await?;
    sqlx::query("DELETE FROM link_clicks_daily WHERE short_code = ?").bind(code).execute(&mut *conn).await?;
    Ok(done.rows_affected() > 0)
}

/// Adds `n` clicks to a link and to its row for `day`; false (and nothing written) when the
/// link no longer exists.
pub async fn add_clicks(
    conn: &mut SqliteConnection,
    code: &str,
    n: u64,
    last: i64,
    day: &str,
) -> Result<bool, sqlx::Error> {
    let n = i64::try_from(n).unwrap_or(i64::MAX);
    let done = sqlx::query(
        "UPDATE link_mappings SET clicks = clicks + ?, last_clicked_at = MAX(COALESCE(last_clicked_at, 0), ?)
         WHERE short_code = ?",
    )
    .bind(n)
    .bind(last)
    .bind(code)
    .execute(&mut *conn)
    .await?;
    if done.rows_affected() == 0 {
        return Ok(false);
    }
    sqlx::query(
        "INSERT INTO link_clicks_daily (short_code, day, clicks) VALUES (?, ?, ?)
         ON CONFLICT (short_code, day) DO UPDATE SET clicks = clicks + excluded.clicks",
    )
    .bind(code)
    .bind(day)
    .bind(n)
    .execute(&mut *conn)
    .await?;
    Ok(true)
}

/// Daily click counts of a link from `since_day` (YYYY-MM-DD) on.
pub async fn find_clicks_daily(pool: &SqlitePool, code: &str, since_day: &str) -> Result<Vec<(String, i64)>, DbError> {
    Ok(sqlx::query_as("SELECT day, clicks FROM link_clicks_daily WHERE short_code = ? AND day >= ? ORDER BY day")
        .bind(code)
        .bind(since_day)
        .fetch_all(pool)
        .await?)
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
}

/// Inserts many links; codes that are taken (or repeated within `rows`: the first wins) are
/// skipped. Returns the rows that were inserted.
///
/// No `RETURNING`: sqlx's SQLite driver hands every result row from its worker thread to the
/// task separately, and a thousand rows meant about a thousand thread wake-ups per batch (most
/// of a create's CPU in the profile). Instead one query finds the codes that are taken (normally
/// none), the rest go in with one `INSERT`, and the rows are built from what was inserted. The
/// caller holds the write lock (`BEGIN IMMEDIATE`), so nothing can take a code in between.
pub async fn insert_links(
    conn: &mut SqliteConnection,
    rows: &[NewLink<'_>],
    now: i64,
) -> Result<Vec<LinkRow>, sqlx::Error> {
    let mut taken: std::collections::HashSet<String> = std::collections::HashSet::new();
    for chunk in rows.chunks(10_000) {
        let placeholders = vec!["?"; chunk.len()].join(", ");
        let sql = format!("SELECT short_code FROM link_mappings WHERE short_code IN ({placeholders})");
        let mut q = sqlx::query_scalar::<_, String>(&sql).persistent(false);
        for r in chunk {
            q = q.bind(r.code);
        }
        taken.extend(q.fetch_all(&mut *conn).await?);
    }
    let mut seen = std::collections::HashSet::new();
    let fresh: Vec<&NewLink<'_>> = rows.iter().filter(|r| !taken.contains(r.code) && seen.insert(r.code)).collect();
    // 7 parameters a row; SQLite allows 32766 a statement.
    for chunk in fresh.chunks(4000) {
        let values = vec!["(?, ?, ?, ?, ?, ?, ?)"; chunk.len()].join(", ");
        let sql = format!(
            "INSERT INTO link_mappings (short_code, original_url, redirect_status, created_at, updated_at, expires_at, created_by)
             VALUES {values} ON CONFLICT (short_code) DO NOTHING"
        );
        // Not cached: the text varies with the batch size.
        let mut q = sqlx::query(&sql).persistent(false);
        for r in chunk {
            q = q.bind(r.code).bind(r.url).bind(r.status).bind(now).bind(now).bind(r.expires_at).bind(r.created_by);
        }
        let done = q.execute(&mut *conn).await?;
        if done.rows_affected() != chunk.len() as u64 {
            return Err(sqlx::Error::Protocol("a code was taken while the write lock was held".into()));
        }
    }
    Ok(fresh
        .into_iter()
        .map(|r| LinkRow {
            short_code: r.code.to_string(),
            original_url: r.url.to_string(),
            redirect_status: r.status,
            created_at: now,
            updated_at: now,
            expires_at: r.expires_at,
            clicks: 0,
            last_clicked_at: None,
        })
        .collect())
}

/// Queues cache invalidations for `codes` in the current transaction; returns their ids. Rowids
/// of one multi-row insert into a table without AUTOINCREMENT are consecutive, ending at
/// `last_insert_rowid()` (and the caller holds the write lock), so no `RETURNING` is needed.
pub async fn insert_invalidations(
    conn: &mut SqliteConnection,
    codes: &[String],
    now: i64,
) -> Result<Vec<i64>, sqlx::Error> {
    let mut ids = Vec::with_capacity(codes.len());
    for chunk in codes.chunks(10_000) {
        let values = vec!["(?, ?)"; chunk.len()].join(", ");
        let sql = format!("INSERT INTO cache_invalidations (short_code, queued_at) VALUES {values}");
        let mut q = sqlx::query(&sql).persistent(false);
        for c in chunk {
            q = q.bind(c).bind(now);
        }
        let last = q.execute(&mut *conn).await?.last_insert_rowid();
        ids.extend((last - chunk.len() as i64 + 1)..=last);
    }
    Ok(ids)
}

/// Removes invalidations that Redis acknowledged.
pub async fn delete_invalidations(conn: &mut SqliteConnection, ids: &[i64]) -> Result<(), sqlx::Error> {
    for chunk in ids.chunks(500) {
        let placeholders = vec!["?"; chunk.len()].join(",");
        let sql = format!("DELETE FROM cache_invalidations WHERE id IN ({placeholders})");
        let mut q = sqlx::query(&sql);
        for id in chunk {
            q = q.bind(id);
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

/// Queued invalidations with an id above `after`, oldest first: (id, code).
pub async fn find_invalidations_after(
    pool: &SqlitePool,
    after: i64,
    limit: i64,
) -> Result<Vec<(i64, String)>, DbError> {
    Ok(sqlx::query_as("SELECT id, short_code FROM cache_invalidations WHERE id > ? ORDER BY id LIMIT ?")
        .bind(after)
        .bind(limit)
        .fetch_all(pool)
        .await?)
}

/// The codes of the `n` most-clicked links (cache warm-up).
pub async fn find_most_clicked_codes(pool: &SqlitePool, n: u32) -> Result<Vec<String>, DbError> {
    Ok(sqlx::query_scalar("SELECT short_code FROM link_mappings ORDER BY clicks DESC LIMIT ?")
        .bind(i64::from(n))
        .fetch_all(pool)
        .await?)
}

/// A read that touches the links table (readiness).
pub async fn probe(pool: &SqlitePool) -> Result<(), DbError> {
    sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM (SELECT 1 FROM link_mappings LIMIT 1)").fetch_one(pool).await?;
    Ok(())
}

/// Inserts many links in one transaction, skipping codes that exist; returns how many were new.
pub async fn insert_links_bulk(
    conn: &mut SqliteConnection,
    rows: &[(String, String)],
    now: i64,
) -> Result<u64, sqlx::Error> {
    let mut inserted = 0;
    sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await?;
    for (code, url) in rows {
        let r = sqlx::query(
            "INSERT INTO link_mappings (short_code, original_url, created_at, updated_at) VALUES (?, ?, ?, ?)
             ON CONFLICT (short_code) DO NOTHING",
        )
        .bind(code)
        .bind(url)
        .bind(now)
        .bind(now)
        .execute(&mut *conn)
        .await;
        match r {
            Ok(d) => inserted += d.rows_affected(),
            Err(e) => {
                let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
                return Err(e);
            }
        }
    }
    sqlx::query("COMMIT").execute(&mut *conn).await?;
    Ok(inserted)
}
