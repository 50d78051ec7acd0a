//! All SQL lives here: connection options, the read pool, the single writer, and the queries,
//! for both backends: SQLite (the default, one machine) and PostgreSQL (several instances).
//!
//! SQLite runs in WAL mode: readers never block the writer and vice versa. Reads go through a
//! pool sized to the cores with a bounded acquire wait (a saturated pool sheds load with 503
//! instead of queueing without bound). All writes of the server go through one connection owned
//! by [`writer::Writer`], which commits concurrent changes together (group commit).
//!
//! PostgreSQL: one pool for reads and the writer; the writer still commits each batch as one
//! transaction, so group commit is the same. Several instances each have their own writer; what
//! they must agree on is written into the SQL (`ON CONFLICT` for codes, `clicks = clicks + n`,
//! an advisory lock that orders the outbox; see `links`).
//!
//! # One set of queries
//! Queries are written once, with `$N` placeholders, which both drivers read (statements with
//! long generated lists use SQLite's plain `?`: see `links::placeholders`). [`Db`] (a pool)
//! and [`Conn`] (a connection) are enums over the two backends, and the [`on_db!`] macro runs
//! the same query text against whichever is inside; the few statements whose SQL differs
//! (SQLite's `json_each` against PostgreSQL's `unnest`, `last_insert_rowid()` against
//! `RETURNING`) match on the backend themselves.

pub mod copy;
pub mod keys;
pub mod links;
pub mod listing;
pub mod sessions;
pub mod writer;

use std::{path::Path, str::FromStr, time::Duration};
use tokio::sync::watch;

use sqlx::{
    postgres::{PgConnectOptions, PgPoolOptions},
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
    ConnectOptions, PgConnection, PgPool, SqliteConnection, SqlitePool,
};

/// The embedded migrations for SQLite (`migrations/sqlite/`).
pub static SQLITE_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
/// The embedded migrations for PostgreSQL (`migrations/postgres/`).
pub static POSTGRES_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Which database a `DATABASE_URL` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `sqlite://PATH` or a plain path.
    Sqlite,
    /// `postgres://…` or `postgresql://…`.
    Postgres,
}

impl Backend {
    /// The backend of `url` (config has already refused other schemes).
    pub fn of(url: &str) -> Backend {
        let lower = url.get(..11).unwrap_or(url).to_ascii_lowercase();
        if lower.starts_with("postgres://") || lower.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            Backend::Sqlite
        }
    }

    /// `sqlite` or `postgres` (health output, logs).
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// A pool of either backend. Cheap to clone.
#[derive(Clone, Debug)]
pub enum Db {
    /// SQLite's read pool (its connections refuse to write).
    Sqlite(SqlitePool),
    /// PostgreSQL's pool (reads and the writer).
    Postgres(PgPool),
}

/// A connection of either backend, borrowed for one statement or one transaction.
pub enum Conn<'c> {
    /// SQLite.
    Sqlite(&'c mut SqliteConnection),
    /// PostgreSQL.
    Postgres(&'c mut PgConnection),
}

impl Conn<'_> {
    /// Which backend this is.
    pub fn backend(&self) -> Backend {
        match self {
            Conn::Sqlite(_) => Backend::Sqlite,
            Conn::Postgres(_) => Backend::Postgres,
        }
    }
}

/// Runs `$body` with `$c` bound to the pool or connection inside a [`Db`] or a `&mut`
/// [`Conn`], once per backend: the same query text, compiled for each driver.
#[macro_export]
macro_rules! on_db {
    (pool $db:expr, $c:ident => $body:expr) => {
        match $db {
            $crate::db::Db::Sqlite($c) => $body,
            $crate::db::Db::Postgres($c) => $body,
        }
    };
    (conn $conn:expr, $c:ident => $body:expr) => {
        match $conn {
            $crate::db::Conn::Sqlite(c) => {
                let $c: &mut sqlx::SqliteConnection = &mut **c;
                $body
            }
            $crate::db::Conn::Postgres(c) => {
                let $c: &mut sqlx::PgConnection = &mut **c;
                $body
            }
        }
    };
}
pub use on_db;

impl Db {
    /// Which backend this is.
    pub fn backend(&self) -> Backend {
        match self {
            Db::Sqlite(_) => Backend::Sqlite,
            Db::Postgres(_) => Backend::Postgres,
        }
    }

    /// (connections open, of which idle): `/health/db`.
    pub fn pool_stats(&self) -> (u32, usize) {
        on_db!(pool self, p => (p.size(), p.num_idle()))
    }

    /// Closes the pool (shutdown).
    pub async fn close(&self) {
        on_db!(pool self, p => p.close().await)
    }
}

/// A database failure as the rest of the service sees it.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The database is saturated, locked or unreachable: shed the request (503), retry later.
    #[error("database busy")]
    Busy,
    /// Anything else.
    #[error(transparent)]
    Sql(sqlx::Error),
}

impl From<sqlx::Error> for DbError {
    fn from(e: sqlx::Error) -> Self {
        if is_transient(&e) {
            DbError::Busy
        } else {
            DbError::Sql(e)
        }
    }
}

/// Whether `e` says "not now" rather than "never": a saturated pool, a busy or locked SQLite, a
/// PostgreSQL that is unreachable, restarting, out of connections, or that aborted a
/// transaction to break a deadlock. Such a request is answered 503 and may be retried.
pub fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => true,
        sqlx::Error::Database(d) => {
            let code = d.code();
            is_busy_code(code.as_deref()) || is_pg_transient(code.as_deref())
        }
        _ => false,
    }
}

fn is_busy_code(code: Option<&str>) -> bool {
    // SQLITE_BUSY (5), SQLITE_LOCKED (6) and their extended codes.
    matches!(code.and_then(|c| c.parse::<i32>().ok()), Some(c) if (c & 0xff) == 5 || (c & 0xff) == 6)
}

/// PostgreSQL SQLSTATEs that mean "try again": connection exceptions (08), insufficient
/// resources (53), operator intervention such as a shutdown (57P0x), serialization failure and
/// deadlock (40001, 40P01), lock and statement timeouts (55P03, 57014).
fn is_pg_transient(code: Option<&str>) -> bool {
    // SQLite's codes are numbers of at most four digits; PostgreSQL's SQLSTATEs have five
    // characters.
    match code {
        Some(c) if c.len() == 5 => {
            c.starts_with("08")
                || c.starts_with("53")
                || c.starts_with("57P")
                || matches!(c, "40001" | "40P01" | "55P03" | "57014")
        }
        _ => false,
    }
}

/// Whether a failed batch may be tried again at once: PostgreSQL broke a deadlock between two
/// instances' writers, or a serialization failure; the other transaction went through.
pub fn is_retryable_conflict(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if matches!(d.code().as_deref(), Some("40P01" | "40001")))
}

/// Base options for every connection: WAL, foreign keys, bounded busy wait. The file and its
/// folder are created when missing.
pub fn connect_options(url: &str, busy_timeout: Duration) -> Result<SqliteConnectOptions, sqlx::Error> {
    let url = if url.starts_with("sqlite:") { url.to_string() } else { format!("sqlite://{url}") };
    let opts = SqliteConnectOptions::from_str(&url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .foreign_keys(true)
        .busy_timeout(busy_timeout)
        .disable_statement_logging();
    ensure_parent_dir(opts.get_filename())?;
    Ok(opts)
}

fn ensure_parent_dir(file: &Path) -> Result<(), sqlx::Error> {
    if file.as_os_str().is_empty() || file.to_string_lossy().starts_with(':') {
        return Ok(()); // in-memory
    }
    if let Some(parent) = file.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(sqlx::Error::Io)?;
    }
    Ok(())
}

/// The writer's connection: SQLite's one write connection, or the PostgreSQL pool it takes a
/// connection from for each batch (so a restarted server is reached again by the next batch).
pub enum WriterConn {
    /// SQLite.
    Sqlite(SqliteConnection),
    /// PostgreSQL.
    Postgres(PgPool),
}

/// Opens what the service needs of the database at `url`, after running its migrations: the
/// read pool ([`Db`]) and the writer's connection.
pub async fn open(
    url: &str,
    read_pool_size: u32,
    acquire_timeout: Duration,
    busy_timeout: Duration,
) -> Result<(Db, WriterConn), sqlx::Error> {
    match Backend::of(url) {
        Backend::Sqlite => {
            let writer = open_writer(url, busy_timeout).await?;
            let pool = open_read_pool(url, read_pool_size, acquire_timeout, busy_timeout).await?;
            Ok((Db::Sqlite(pool), WriterConn::Sqlite(writer)))
        }
        Backend::Postgres => {
            let pool = open_pg_pool(url, read_pool_size + 1, acquire_timeout, busy_timeout).await?;
            migrate_pg(&pool).await?;
            Ok((Db::Postgres(pool.clone()), WriterConn::Postgres(pool)))
        }
    }
}

/// A pool of one connection of its own for the invalidation outbox's reader: its reads must not
/// wait behind the request path's, which on an overloaded service hold the read pool for
/// seconds (and a reader that misses the outbox for longer than it keeps its rows makes L1
/// start over). One more connection per instance on PostgreSQL.
pub async fn open_outbox_reader(
    url: &str,
    acquire_timeout: Duration,
    busy_timeout: Duration,
) -> Result<Db, sqlx::Error> {
    Ok(match Backend::of(url) {
        Backend::Sqlite => Db::Sqlite(open_read_pool(url, 1, acquire_timeout, busy_timeout).await?),
        Backend::Postgres => Db::Postgres(open_pg_pool(url, 1, acquire_timeout, busy_timeout).await?),
    })
}

/// Options of every PostgreSQL connection: lock and statement timeouts of `busy_timeout` (a
/// statement never waits without bound, the way SQLite's busy timeout bounds its waits), and
/// `synchronous_commit=on` whatever the server's default: a change is acknowledged only once
/// its commit is in the write-ahead log, so a crash of the server right after loses nothing
/// acknowledged (a server set to `off` would otherwise lose the last few hundred milliseconds).
pub fn pg_options(url: &str, busy_timeout: Duration) -> Result<PgConnectOptions, sqlx::Error> {
    let ms = busy_timeout.as_millis().to_string();
    Ok(PgConnectOptions::from_str(url)?
        .options([("lock_timeout", ms.as_str()), ("statement_timeout", ms.as_str()), ("synchronous_commit", "on")])
        .application_name("shortener")
        .disable_statement_logging())
}

/// A PostgreSQL pool of at most `size` connections, with a bounded acquire wait. Connections are
/// opened on demand and checked before use, so the pool finds a restarted server again.
pub async fn open_pg_pool(
    url: &str,
    size: u32,
    acquire_timeout: Duration,
    busy_timeout: Duration,
) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(size)
        .min_connections(1)
        .acquire_timeout(acquire_timeout)
        .idle_timeout(Some(Duration::from_secs(600)))
        .connect_with(pg_options(url, busy_timeout)?)
        .await
}

async fn migrate_pg(pool: &PgPool) -> Result<(), sqlx::Error> {
    // sqlx takes an advisory lock around the migrations, so instances starting together do not
    // race each other.
    POSTGRES_MIGRATOR.run(pool).await.map_err(|e| sqlx::Error::Migrate(Box::new(e)))
}

/// Opens the SQLite writer connection (synchronous=FULL: an acknowledged change survives power loss;
/// group commit pays one fsync per batch) and runs the migrations on it. Its page cache is 64 MiB
/// (SQLite's default is 2 MiB): inserts under random codes and click flushes touch B-tree pages
/// all over the file, and with the default cache most of them were read again from the OS on
/// every batch. Temporary B-trees (a flush's GROUP BY) stay in memory.
pub async fn open_writer(url: &str, busy_timeout: Duration) -> Result<SqliteConnection, sqlx::Error> {
    let mut conn = connect_options(url, busy_timeout)?
        .synchronous(SqliteSynchronous::Full)
        .pragma("cache_size", "-65536")
        .pragma("temp_store", "memory")
        .pragma("wal_autocheckpoint", WRITER_AUTOCHECKPOINT_PAGES)
        .pragma("journal_size_limit", "67108864")
        .connect()
        .await?;
    SQLITE_MIGRATOR.run(&mut conn).await.map_err(|e| sqlx::Error::Migrate(Box::new(e)))?;
    Ok(conn)
}

/// WAL pages after which the writer checkpoints by itself. A safety net: [`run_checkpointer`]
/// normally gets there first, off the writer's path. (SQLite's default is 1,000 pages, and the
/// checkpoints it ran inside commits were a seventh of the writer's time under a create load.)
const WRITER_AUTOCHECKPOINT_PAGES: &str = "16384";

/// Copies the WAL back into the database file every `interval`, on a connection of its own, so
/// the writer's commits do not. A page changed by many batches in between is copied once.
/// `PASSIVE`: it never waits for readers or the writer. Stops when `shutdown` fires.
pub async fn run_checkpointer(
    url: String,
    busy_timeout: Duration,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let opts = match connect_options(&url, busy_timeout) {
        Ok(o) => o,
        Err(e) => return tracing::warn!(error = %e, "checkpointer not started"),
    };
    let mut conn = match opts.connect().await {
        Ok(c) => c,
        Err(e) => return tracing::warn!(error = %e, "checkpointer not started; the writer checkpoints by itself"),
    };
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").execute(&mut conn).await {
                    tracing::warn!(error = %e, "WAL checkpoint failed; retrying");
                }
            }
            _ = shutdown.changed() => break,
        }
    }
}

/// Opens the read pool: `size` connections, opened up front, that refuse to write.
pub async fn open_read_pool(
    url: &str,
    size: u32,
    acquire_timeout: Duration,
    busy_timeout: Duration,
) -> Result<SqlitePool, sqlx::Error> {
    let opts = connect_options(url, busy_timeout)?.pragma("query_only", "ON");
    SqlitePoolOptions::new()
        .max_connections(size)
        .min_connections(size)
        .acquire_timeout(acquire_timeout)
        .idle_timeout(None)
        .max_lifetime(None)
        .test_before_acquire(false)
        .connect_with(opts)
        .await
}

/// Runs the migrations on a fresh connection (the `migrate` command).
pub async fn migrate(url: &str) -> Result<(), sqlx::Error> {
    match Backend::of(url) {
        Backend::Sqlite => drop(open_writer(url, Duration::from_secs(5)).await?),
        Backend::Postgres => {
            let pool = open_pg_pool(url, 1, Duration::from_secs(10), Duration::from_secs(60)).await?;
            migrate_pg(&pool).await?;
            pool.close().await;
        }
    }
    Ok(())
}

/// A read pool of one connection for one-shot commands that only read (`links export`), after
/// running the migrations.
pub async fn open_for_reading(url: &str) -> Result<Db, sqlx::Error> {
    migrate(url).await?;
    Ok(match Backend::of(url) {
        Backend::Sqlite => Db::Sqlite(open_read_pool(url, 1, Duration::from_secs(10), Duration::from_secs(10)).await?),
        Backend::Postgres => {
            Db::Postgres(open_pg_pool(url, 1, Duration::from_secs(10), Duration::from_secs(60)).await?)
        }
    })
}

/// A connection for one-shot commands (the CLI), after running the migrations. Owned, of either
/// backend; [`OwnedConn::conn`] borrows it as a [`Conn`].
pub enum OwnedConn {
    /// SQLite.
    Sqlite(SqliteConnection),
    /// PostgreSQL.
    Postgres(PgConnection),
}

impl OwnedConn {
    /// Migrates the database at `url` and connects to it.
    pub async fn open(url: &str) -> Result<OwnedConn, sqlx::Error> {
        migrate(url).await?;
        Ok(match Backend::of(url) {
            Backend::Sqlite => OwnedConn::Sqlite(connect_options(url, Duration::from_secs(10))?.connect().await?),
            Backend::Postgres => OwnedConn::Postgres(pg_options(url, Duration::from_secs(60))?.connect().await?),
        })
    }

    /// Borrows it for statements.
    pub fn conn(&mut self) -> Conn<'_> {
        match self {
            OwnedConn::Sqlite(c) => Conn::Sqlite(c),
            OwnedConn::Postgres(c) => Conn::Postgres(c),
        }
    }
}

/// Starts a write transaction: `BEGIN IMMEDIATE` on SQLite (takes the write lock at once, so
/// no statement in it waits for a lock later), `BEGIN` on PostgreSQL.
pub async fn begin(conn: &mut Conn<'_>) -> Result<(), sqlx::Error> {
    match conn {
        Conn::Sqlite(c) => sqlx::query("BEGIN IMMEDIATE").execute(&mut **c).await.map(drop),
        Conn::Postgres(c) => sqlx::query("BEGIN").execute(&mut **c).await.map(drop),
    }
}

/// Commits the transaction [`begin`] started.
pub async fn commit(conn: &mut Conn<'_>) -> Result<(), sqlx::Error> {
    on_db!(conn conn, c => sqlx::query("COMMIT").execute(c).await.map(drop))
}

/// Rolls it back (errors are ignored: a broken connection has no transaction left).
pub async fn rollback(conn: &mut Conn<'_>) {
    let _ = on_db!(conn conn, c => sqlx::query("ROLLBACK").execute(c).await.map(drop));
}

/// Ends the transaction [`begin`] started with what was done in it: commits when `done` is
/// `Ok` (and returns it only if the commit went through), rolls back otherwise. A failed
/// `COMMIT` is rolled back too: SQLite leaves the transaction open when its commit is busy.
pub async fn end<T>(conn: &mut Conn<'_>, done: Result<T, sqlx::Error>) -> Result<T, sqlx::Error> {
    let failed = match done {
        Ok(value) => match commit(conn).await {
            Ok(()) => return Ok(value),
            Err(e) => e,
        },
        Err(e) => e,
    };
    rollback(conn).await;
    Err(failed)
}
