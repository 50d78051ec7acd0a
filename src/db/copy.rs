//! `shortener db copy`: moves an installation from one database to another (SQLite to
//! PostgreSQL, back, or between two of one kind) and proves the result: every key (id, hash,
//! rights, revocation), every link (every column, clicks and creator included) and every daily
//! click row, then row counts and checksums of both sides.
//!
//! # How it copies
//! Table by table, keys first (links name them in `created_by`), in primary-key order, a page of
//! `batch` rows at a time (keyset pagination: one range scan per page, memory flat whatever the
//! size). The source is read inside one read-only snapshot (a SQLite read transaction, a
//! PostgreSQL `REPEATABLE READ` transaction), so the tables copied agree with each other even if
//! the source is written meanwhile. Each page is written to the target in a transaction of its
//! own, with multi-row statements:
//! - an upsert keyed by primary key (`ON CONFLICT … DO UPDATE` setting every column to the
//!   source's value: a second run overwrites, it never adds — clicks are never doubled);
//! - a delete of the target's rows in the page's key range that the source no longer has (and,
//!   after the last page, of every row past it), so the target becomes a mirror: a re-run after
//!   the source changed brings over changes and deletions alike.
//!
//! Running it twice therefore gives the same target, and a copy interrupted half way is finished
//! by running it again. The outbox of cache invalidations (`cache_invalidations`) is not copied:
//! it is about the caches of the source's instances; [`CopySummary::pending_invalidations`] says
//! when it was not empty.
//!
//! # How it verifies
//! [`verify`] reads both sides in primary-key order (both order codes byte by byte: PostgreSQL's
//! codes are `COLLATE "C"`) and hashes the canonical text of every row — a JSON array of its
//! columns, booleans as `true`/`false` and bytes as hex, so that SQLite's integer booleans and
//! PostgreSQL's `BOOLEAN` give the same text — with SHA-256, per table.

use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use sqlx::FromRow;

use super::{links::placeholders, links::LinkRow, on_db, Backend, Conn, OwnedConn};

/// The tables a copy carries, in the order it copies them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// `api_keys`.
    Keys,
    /// `link_mappings`.
    Links,
    /// `link_clicks_daily`.
    Daily,
}

impl Table {
    /// Every table, keys before the links that name them.
    pub const ALL: [Table; 3] = [Table::Keys, Table::Links, Table::Daily];

    /// The table's SQL name.
    pub fn name(self) -> &'static str {
        match self {
            Table::Keys => "api_keys",
            Table::Links => "link_mappings",
            Table::Daily => "link_clicks_daily",
        }
    }

    fn columns(self) -> &'static [&'static str] {
        match self {
            Table::Keys => &["id", "name", "key_hash", "key_prefix", "unlimited", "admin", "created_at", "revoked_at"],
            Table::Links => &[
                "short_code",
                "original_url",
                "redirect_status",
                "created_at",
                "updated_at",
                "expires_at",
                "clicks",
                "last_clicked_at",
                "created_by",
            ],
            Table::Daily => &["short_code", "day", "clicks"],
        }
    }

    fn key(self) -> &'static [&'static str] {
        match self {
            Table::Keys => &["id"],
            Table::Links => &["short_code"],
            Table::Daily => &["short_code", "day"],
        }
    }

    fn select(self) -> String {
        format!("SELECT {} FROM {}", self.columns().join(", "), self.name())
    }
}

/// One API key as stored, every column.
#[derive(Debug, Clone, FromRow, PartialEq, Eq)]
struct KeyRecord {
    id: i64,
    name: String,
    key_hash: Vec<u8>,
    key_prefix: String,
    unlimited: bool,
    admin: bool,
    created_at: i64,
    revoked_at: Option<i64>,
}

/// One daily click row.
#[derive(Debug, Clone, FromRow, PartialEq, Eq)]
struct DailyRecord {
    short_code: String,
    day: String,
    clicks: i64,
}

/// The most rows a page may have: the target's `NOT IN` list of a daily page takes two
/// parameters a row, and SQLite allows 32,766 a statement.
pub const MAX_BATCH: usize = 10_000;

/// Most parameters one multi-row statement takes (SQLite's limit is 32,766, PostgreSQL's 65,535).
const MAX_PARAMS: usize = 30_000;

/// Where a copy is, after each page: reported to the caller, which draws it.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// The table being copied.
    pub table: Table,
    /// Rows of that table copied so far.
    pub table_done: u64,
    /// Rows of that table in the source's snapshot.
    pub table_total: u64,
    /// Rows of every table copied so far.
    pub done: u64,
    /// Rows of every table in the source's snapshot.
    pub total: u64,
}

/// What a copy did.
#[derive(Debug, Clone)]
pub struct CopySummary {
    /// Rows copied, per table (in [`Table::ALL`] order).
    pub copied: Vec<(Table, u64)>,
    /// Rows the target had that the source has not, deleted, per table.
    pub deleted: Vec<(Table, u64)>,
    /// Cache invalidations queued in the source and not yet applied (not copied: see the
    /// module doc). Non-zero means the source's Redis may still hold entries it should not.
    pub pending_invalidations: i64,
    /// How long the copy took (verification not included).
    pub elapsed: Duration,
}

/// A table's row count and checksum on one side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digest256 {
    /// Rows.
    pub rows: u64,
    /// SHA-256 of the rows' canonical text in primary-key order, lowercase hex.
    pub sha256: String,
}

/// One table of a verification.
#[derive(Debug, Clone)]
pub struct TableCheck {
    /// The table.
    pub table: Table,
    /// The source's rows.
    pub source: Digest256,
    /// The target's rows.
    pub target: Digest256,
}

impl TableCheck {
    /// Whether both sides hold the same rows.
    pub fn same(&self) -> bool {
        self.source == self.target
    }
}

/// Why a copy could not run.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// The arguments name no sensible copy.
    #[error("{0}")]
    Usage(String),
    /// The database said no.
    #[error("{what}: {source}")]
    Sql {
        /// What was being done ("reading link_mappings from the source", …).
        what: String,
        /// The error.
        source: sqlx::Error,
    },
}

fn sql_err(what: impl Into<String>) -> impl FnOnce(sqlx::Error) -> CopyError {
    let what = what.into();
    move |source| CopyError::Sql { what, source }
}

/// Opens both sides (after checking they are two different databases and that a SQLite source
/// exists: a missing file would be created empty and copied as such). Both are migrated: the
/// target gets the schema, the source is brought to this binary's schema, which is a no-op for an
/// installation already running it.
async fn open_both(from: &str, to: &str) -> Result<(OwnedConn, OwnedConn), CopyError> {
    if same_database(from, to) {
        return Err(CopyError::Usage("--from and --to name the same database".into()));
    }
    if Backend::of(from) == Backend::Sqlite {
        let file = sqlite_file(from);
        if !file.exists() {
            return Err(CopyError::Usage(format!("the source database file {} does not exist", file.display())));
        }
    }
    let src = OwnedConn::open(from).await.map_err(sql_err("opening the source"))?;
    let dst = OwnedConn::open(to).await.map_err(sql_err("opening the target"))?;
    Ok((src, dst))
}

fn sqlite_file(url: &str) -> std::path::PathBuf {
    let path = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")).unwrap_or(url);
    std::path::PathBuf::from(path.split('?').next().unwrap_or(path))
}

fn same_database(a: &str, b: &str) -> bool {
    match (Backend::of(a), Backend::of(b)) {
        (Backend::Sqlite, Backend::Sqlite) => {
            let (fa, fb) = (sqlite_file(a), sqlite_file(b));
            fa == fb || matches!((fa.canonicalize(), fb.canonicalize()), (Ok(x), Ok(y)) if x == y)
        }
        (Backend::Postgres, Backend::Postgres) => a == b,
        _ => false,
    }
}

/// Starts a read-only snapshot: every read until its `COMMIT` ([`super::commit`]) sees the
/// database as it was at the first one.
async fn begin_snapshot(conn: &mut Conn<'_>) -> Result<(), sqlx::Error> {
    match conn {
        // Deferred: a read transaction whose snapshot is taken by its first read (WAL).
        Conn::Sqlite(c) => sqlx::query("BEGIN").execute(&mut **c).await.map(drop),
        Conn::Postgres(c) => {
            sqlx::query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").execute(&mut **c).await.map(drop)
        }
    }
}

async fn count(conn: &mut Conn<'_>, table: &str) -> Result<i64, sqlx::Error> {
    let sql = format!("SELECT COUNT(*) FROM {table}");
    on_db!(conn conn, c => sqlx::query_scalar::<_, i64>(&sql).fetch_one(c).await)
}

/// Where the next page of a table starts (the last key of the page before).
#[derive(Debug, Clone)]
enum Cursor {
    /// The first page.
    Start,
    /// After this key id.
    Id(i64),
    /// After this code.
    Code(String),
    /// After this (code, day).
    CodeDay(String, String),
}

/// A page of rows of one table.
enum Page {
    Keys(Vec<KeyRecord>),
    Links(Vec<LinkRow>),
    Daily(Vec<DailyRecord>),
}

impl Page {
    fn len(&self) -> usize {
        match self {
            Page::Keys(r) => r.len(),
            Page::Links(r) => r.len(),
            Page::Daily(r) => r.len(),
        }
    }

    /// The cursor after this page's last row (`Start` for an empty page).
    fn last(&self) -> Cursor {
        match self {
            Page::Keys(r) => r.last().map_or(Cursor::Start, |k| Cursor::Id(k.id)),
            Page::Links(r) => r.last().map_or(Cursor::Start, |l| Cursor::Code(l.short_code.clone())),
            Page::Daily(r) => r.last().map_or(Cursor::Start, |d| Cursor::CodeDay(d.short_code.clone(), d.day.clone())),
        }
    }

    /// Feeds every row's canonical text into `hash`.
    fn hash_into(&self, hash: &mut Sha256) {
        let mut line = String::new();
        let mut put = |v: serde_json::Value| {
            line.clear();
            line.push_str(&v.to_string());
            line.push('\n');
            hash.update(line.as_bytes());
        };
        match self {
            Page::Keys(rows) => {
                for k in rows {
                    put(serde_json::json!([
                        k.id,
                        k.name,
                        hex::encode(&k.key_hash),
                        k.key_prefix,
                        k.unlimited,
                        k.admin,
                        k.created_at,
                        k.revoked_at
                    ]));
                }
            }
            Page::Links(rows) => {
                for l in rows {
                    put(serde_json::json!([
                        l.short_code,
                        l.original_url,
                        l.redirect_status,
                        l.created_at,
                        l.updated_at,
                        l.expires_at,
                        l.clicks,
                        l.last_clicked_at,
                        l.created_by
                    ]));
                }
            }
            Page::Daily(rows) => {
                for d in rows {
                    put(serde_json::json!([d.short_code, d.day, d.clicks]));
                }
            }
        }
    }
}

/// `WHERE` of a key range: keys after `after` (none: from the first) and up to `upto` (none: to
/// the last), numbering parameters from `$first`. Row values (`(a, b) > ($1, $2)`) compare
/// lexicographically on both backends, in the same order as `ORDER BY a, b`.
fn range_sql(backend: Backend, table: Table, after: &Cursor, upto: Option<&Cursor>, first: usize) -> (String, usize) {
    let key = table.key();
    let cols = if key.len() == 1 { key[0].to_string() } else { format!("({})", key.join(", ")) };
    let mut next = first;
    // One group of placeholders: `$1`, or `($1, $2)` for a composite key.
    let group = |n: &mut usize| {
        let p = placeholders(backend, *n, 1, key.len());
        *n += key.len();
        p
    };
    let mut parts = Vec::new();
    if !matches!(after, Cursor::Start) {
        parts.push(format!("{cols} > {}", group(&mut next)));
    }
    if upto.is_some() {
        parts.push(format!("{cols} <= {}", group(&mut next)));
    }
    let sql = if parts.is_empty() { "true".to_string() } else { parts.join(" AND ") };
    (sql, next)
}

/// Binds a cursor's key values (nothing for `Start`) to a query of either driver.
macro_rules! bind_cursor {
    ($q:expr, $cursor:expr) => {
        match $cursor {
            Cursor::Start => $q,
            Cursor::Id(id) => $q.bind(*id),
            Cursor::Code(code) => $q.bind(code.clone()),
            Cursor::CodeDay(code, day) => $q.bind(code.clone()).bind(day.clone()),
        }
    };
}

/// The page of `table` after `after`, at most `limit` rows, in primary-key order.
async fn read_page(conn: &mut Conn<'_>, table: Table, after: &Cursor, limit: usize) -> Result<Page, sqlx::Error> {
    let backend = conn.backend();
    let (range, next) = range_sql(backend, table, after, None, 1);
    let sql = format!(
        "{} WHERE {range} ORDER BY {} LIMIT {}",
        table.select(),
        table.key().join(", "),
        placeholders(backend, next, 1, 1)
    );
    let limit = limit as i64;
    Ok(match table {
        Table::Keys => Page::Keys(on_db!(conn conn, c => {
            let q = sqlx::query_as::<_, KeyRecord>(&sql);
            bind_cursor!(q, after).bind(limit).fetch_all(c).await
        })?),
        Table::Links => Page::Links(on_db!(conn conn, c => {
            let q = sqlx::query_as::<_, LinkRow>(&sql);
            bind_cursor!(q, after).bind(limit).fetch_all(c).await
        })?),
        Table::Daily => Page::Daily(on_db!(conn conn, c => {
            let q = sqlx::query_as::<_, DailyRecord>(&sql);
            bind_cursor!(q, after).bind(limit).fetch_all(c).await
        })?),
    })
}

/// Deletes the target's rows in (`after`, `upto`] (`upto` none: to the end) whose keys are not in
/// `page`: rows the source no longer has. Returns how many.
async fn delete_absent(
    conn: &mut Conn<'_>,
    table: Table,
    after: &Cursor,
    upto: Option<&Cursor>,
    page: &Page,
) -> Result<u64, sqlx::Error> {
    let backend = conn.backend();
    let (range, next) = range_sql(backend, table, after, upto, 1);
    let mut sql = format!("DELETE FROM {} WHERE {range}", table.name());
    if page.len() > 0 {
        let list = placeholders(backend, next, page.len(), table.key().len());
        match table {
            Table::Daily => sql.push_str(&format!(" AND (short_code, day) NOT IN (VALUES {list})")),
            _ => sql.push_str(&format!(" AND {} NOT IN ({list})", table.key()[0])),
        }
    }
    let done = on_db!(conn conn, c => {
        // Not cached: the text varies with the page size.
        let q = sqlx::query(&sql).persistent(false);
        let mut q = bind_cursor!(q, after);
        if let Some(upto) = upto {
            q = bind_cursor!(q, upto);
        }
        match page {
            Page::Keys(rows) => {
                for r in rows {
                    q = q.bind(r.id);
                }
            }
            Page::Links(rows) => {
                for r in rows {
                    q = q.bind(r.short_code.as_str());
                }
            }
            Page::Daily(rows) => {
                for r in rows {
                    q = q.bind(r.short_code.as_str()).bind(r.day.as_str());
                }
            }
        }
        q.execute(c).await?.rows_affected()
    });
    Ok(done)
}

/// Deletes the target's keys that hold the name or hash of one of `keys` under another id: the
/// upsert would break the uniqueness of names and hashes. That happens when the target was used
/// on its own before (a first deploy there makes an `admin` key) or keys were renamed between two
/// copies. A key deleted here that the source has, under its own id, comes back with its page.
async fn delete_clashing_keys(conn: &mut Conn<'_>, keys: &[KeyRecord]) -> Result<u64, sqlx::Error> {
    let mut done = 0;
    for chunk in keys.chunks(MAX_PARAMS / 3) {
        // `VALUES` names its columns column1, column2, … on both backends.
        let sql = format!(
            "DELETE FROM api_keys WHERE EXISTS (SELECT 1 FROM (VALUES {}) AS s
             WHERE (s.column2 = api_keys.name OR s.column3 = api_keys.key_hash) AND s.column1 <> api_keys.id)",
            placeholders(conn.backend(), 1, chunk.len(), 3)
        );
        done += on_db!(conn conn, c => {
            let mut q = sqlx::query(&sql).persistent(false);
            for k in chunk {
                q = q.bind(k.id).bind(k.name.as_str()).bind(k.key_hash.as_slice());
            }
            q.execute(c).await?.rows_affected()
        });
    }
    Ok(done)
}

/// `INSERT … VALUES (…), … ON CONFLICT (key) DO UPDATE SET` every other column to the new value.
fn upsert_sql(backend: Backend, table: Table, rows: usize) -> String {
    let cols = table.columns();
    let key = table.key();
    let set: Vec<String> = cols.iter().filter(|c| !key.contains(c)).map(|c| format!("{c} = excluded.{c}")).collect();
    format!(
        "INSERT INTO {} ({}) VALUES {} ON CONFLICT ({}) DO UPDATE SET {}",
        table.name(),
        cols.join(", "),
        placeholders(backend, 1, rows, cols.len()),
        key.join(", "),
        set.join(", ")
    )
}

/// Writes a page into the target: every row inserted or overwritten with the source's values.
async fn upsert_page(conn: &mut Conn<'_>, page: &Page) -> Result<(), sqlx::Error> {
    let backend = conn.backend();
    match page {
        Page::Keys(rows) => {
            for chunk in rows.chunks(MAX_PARAMS / Table::Keys.columns().len()) {
                let sql = upsert_sql(backend, Table::Keys, chunk.len());
                on_db!(conn conn, c => {
                    let mut q = sqlx::query(&sql).persistent(false);
                    for k in chunk {
                        q = q
                            .bind(k.id)
                            .bind(k.name.as_str())
                            .bind(k.key_hash.as_slice())
                            .bind(k.key_prefix.as_str())
                            .bind(k.unlimited)
                            .bind(k.admin)
                            .bind(k.created_at)
                            .bind(k.revoked_at);
                    }
                    q.execute(c).await.map(drop)
                })?;
            }
        }
        Page::Links(rows) => {
            for chunk in rows.chunks(MAX_PARAMS / Table::Links.columns().len()) {
                let sql = upsert_sql(backend, Table::Links, chunk.len());
                on_db!(conn conn, c => {
                    let mut q = sqlx::query(&sql).persistent(false);
                    for l in chunk {
                        q = q
                            .bind(l.short_code.as_str())
                            .bind(l.original_url.as_str())
                            .bind(l.redirect_status)
                            .bind(l.created_at)
                            .bind(l.updated_at)
                            .bind(l.expires_at)
                            .bind(l.clicks)
                            .bind(l.last_clicked_at)
                            .bind(l.created_by);
                    }
                    q.execute(c).await.map(drop)
                })?;
            }
        }
        Page::Daily(rows) => {
            for chunk in rows.chunks(MAX_PARAMS / Table::Daily.columns().len()) {
                let sql = upsert_sql(backend, Table::Daily, chunk.len());
                on_db!(conn conn, c => {
                    let mut q = sqlx::query(&sql).persistent(false);
                    for d in chunk {
                        q = q.bind(d.short_code.as_str()).bind(d.day.as_str()).bind(d.clicks);
                    }
                    q.execute(c).await.map(drop)
                })?;
            }
        }
    }
    Ok(())
}

/// One page into the target, in one transaction: clashing keys out, absent rows out, rows in.
async fn write_page(
    conn: &mut Conn<'_>,
    table: Table,
    after: &Cursor,
    upto: Option<&Cursor>,
    page: &Page,
) -> Result<u64, sqlx::Error> {
    super::begin(conn).await?;
    let written = async {
        let mut deleted = 0;
        if let Page::Keys(keys) = page {
            deleted += delete_clashing_keys(conn, keys).await?;
        }
        deleted += delete_absent(conn, table, after, upto, page).await?;
        upsert_page(conn, page).await?;
        Ok::<_, sqlx::Error>(deleted)
    }
    .await;
    super::end(conn, written).await
}

/// PostgreSQL hands out key ids from an identity sequence, which copied rows (inserted with their
/// ids) do not move: set it past the highest id, so the next `keys create` does not collide.
/// SQLite takes the highest id + 1 by itself.
async fn move_key_sequence(conn: &mut Conn<'_>) -> Result<(), sqlx::Error> {
    if let Conn::Postgres(c) = conn {
        sqlx::query(
            "SELECT setval(pg_get_serial_sequence('api_keys', 'id'), COALESCE(MAX(id), 1), MAX(id) IS NOT NULL)
             FROM api_keys",
        )
        .execute(&mut **c)
        .await?;
    }
    Ok(())
}

/// Copies every key, link and daily click row from `from` to `to` (database URLs of either
/// backend), `batch` rows a page (at most [`MAX_BATCH`]); `progress` is called after every page.
/// The target is migrated first. Idempotent: see the module doc.
pub async fn copy(
    from: &str,
    to: &str,
    batch: usize,
    progress: &mut dyn FnMut(Progress),
) -> Result<CopySummary, CopyError> {
    let batch = batch.clamp(1, MAX_BATCH);
    let started = Instant::now();
    let (mut src_owned, mut dst_owned) = open_both(from, to).await?;
    let (mut src, mut dst) = (src_owned.conn(), dst_owned.conn());
    begin_snapshot(&mut src).await.map_err(sql_err("starting a snapshot of the source"))?;
    let mut totals = Vec::new();
    for table in Table::ALL {
        let n =
            count(&mut src, table.name()).await.map_err(sql_err(format!("counting {} in the source", table.name())))?;
        totals.push(n.max(0) as u64);
    }
    let pending_invalidations =
        count(&mut src, "cache_invalidations").await.map_err(sql_err("counting cache_invalidations in the source"))?;
    let total: u64 = totals.iter().sum();
    let (mut copied, mut deleted, mut done) = (Vec::new(), Vec::new(), 0u64);
    for (table, table_total) in Table::ALL.into_iter().zip(totals) {
        let (mut table_done, mut table_deleted) = (0u64, 0u64);
        let mut after = Cursor::Start;
        progress(Progress { table, table_done, table_total, done, total });
        loop {
            let page = read_page(&mut src, table, &after, batch)
                .await
                .map_err(sql_err(format!("reading {} from the source", table.name())))?;
            // A full page may have a successor: its range ends at its last key. A short one is
            // the last: its range runs to the end, so the target's rows past it go too.
            let full = page.len() == batch;
            let last = page.last();
            let upto = full.then_some(&last);
            table_deleted += write_page(&mut dst, table, &after, upto, &page)
                .await
                .map_err(sql_err(format!("writing {} to the target", table.name())))?;
            table_done += page.len() as u64;
            done += page.len() as u64;
            progress(Progress { table, table_done, table_total, done, total });
            if !full {
                break;
            }
            after = last;
        }
        if table == Table::Keys {
            move_key_sequence(&mut dst).await.map_err(sql_err("moving the target's key id sequence"))?;
        }
        copied.push((table, table_done));
        deleted.push((table, table_deleted));
    }
    super::commit(&mut src).await.map_err(sql_err("ending the snapshot of the source"))?;
    Ok(CopySummary { copied, deleted, pending_invalidations, elapsed: started.elapsed() })
}

/// Row count and checksum of every table of `from` and `to`, each side read in one snapshot.
pub async fn verify(from: &str, to: &str) -> Result<Vec<TableCheck>, CopyError> {
    let (mut src_owned, mut dst_owned) = open_both(from, to).await?;
    let (mut src, mut dst) = (src_owned.conn(), dst_owned.conn());
    let source = digest_all(&mut src).await.map_err(sql_err("checksumming the source"))?;
    let target = digest_all(&mut dst).await.map_err(sql_err("checksumming the target"))?;
    Ok(Table::ALL
        .into_iter()
        .zip(source.into_iter().zip(target))
        .map(|(table, (source, target))| TableCheck { table, source, target })
        .collect())
}

async fn digest_all(conn: &mut Conn<'_>) -> Result<Vec<Digest256>, sqlx::Error> {
    begin_snapshot(conn).await?;
    let mut out = Vec::new();
    for table in Table::ALL {
        let mut hash = Sha256::new();
        let (mut rows, mut after) = (0u64, Cursor::Start);
        loop {
            let page = read_page(conn, table, &after, 5_000).await?;
            page.hash_into(&mut hash);
            rows += page.len() as u64;
            if page.len() < 5_000 {
                break;
            }
            after = page.last();
        }
        out.push(Digest256 { rows, sha256: hex::encode(hash.finalize()) });
    }
    super::commit(conn).await?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_compare_whole_keys() {
        let code = Cursor::Code("abc".into());
        let pg = Backend::Postgres;
        assert_eq!(range_sql(pg, Table::Links, &Cursor::Start, None, 1), ("true".to_string(), 1));
        assert_eq!(
            range_sql(pg, Table::Links, &code, Some(&code), 1),
            ("short_code > $1 AND short_code <= $2".into(), 3)
        );
        let day = Cursor::CodeDay("abc".into(), "2026-01-01".into());
        assert_eq!(
            range_sql(pg, Table::Daily, &day, None, 1),
            ("(short_code, day) > ($1, $2)".into(), 3),
            "a composite key compares as a row value"
        );
        assert_eq!(
            range_sql(Backend::Sqlite, Table::Daily, &day, Some(&day), 1),
            ("(short_code, day) > (?, ?) AND (short_code, day) <= (?, ?)".into(), 5),
            "SQLite's placeholders are anonymous, in binding order"
        );
    }

    #[test]
    fn an_upsert_overwrites_every_column_but_the_key() {
        let sql = upsert_sql(Backend::Postgres, Table::Daily, 2);
        assert_eq!(
            sql,
            "INSERT INTO link_clicks_daily (short_code, day, clicks) VALUES ($1, $2, $3), ($4, $5, $6) \
             ON CONFLICT (short_code, day) DO UPDATE SET clicks = excluded.clicks"
        );
        assert!(upsert_sql(Backend::Sqlite, Table::Daily, 2).contains("VALUES (?, ?, ?), (?, ?, ?) ON CONFLICT"));
    }

    #[test]
    fn only_two_paths_to_one_file_are_the_same_database() {
        assert!(same_database("sqlite:///tmp/a.db", "sqlite:///tmp/a.db"));
        assert!(!same_database("sqlite:///tmp/a.db", "sqlite:///tmp/b.db"));
        assert!(!same_database("sqlite:///tmp/a.db", "postgres://u@h/a"));
        assert!(same_database("postgres://u@h/a", "postgres://u@h/a"));
    }
}
