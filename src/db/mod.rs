//! All SQL lives here: connection options, the read pool, the single writer, and the queries.
//!
//! SQLite runs in WAL mode: readers never block the writer and vice versa. Reads go through a
//! pool sized to the cores with a bounded acquire wait (a saturated pool sheds load with 503
//! instead of queueing without bound). All writes of the server go through one connection owned
//! by [`writer::Writer`], which commits concurrent changes together (group commit).

pub mod keys;
pub mod links;
pub mod writer;

use std::{path::Path, str::FromStr, time::Duration};
use tokio::sync::watch;

use sqlx::{
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
    ConnectOptions, SqliteConnection, SqlitePool,
};

/// The embedded migrations (`migrations/`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// A database failure as the rest of the service sees it.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The database is saturated or locked: shed the request (503), retry later.
    #[error("database busy")]
    Busy,
    /// Anything else.
    #[error(transparent)]
    Sql(sqlx::Error),
}

impl From<sqlx::Error> for DbError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::PoolTimedOut => DbError::Busy,
            sqlx::Error::Database(d) if is_busy_code(d.code().as_deref()) => DbError::Busy,
            _ => DbError::Sql(e),
        }
    }
}

fn is_busy_code(code: Option<&str>) -> bool {
    // SQLITE_BUSY (5), SQLITE_LOCKED (6) and their extended codes.
    matches!(code.and_then(|c| c.parse::<i32>().ok()), Some(c) if (c & 0xff) == 5 || (c & 0xff) == 6)
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

/// Opens the writer connection (synchronous=FULL: an acknowledged change survives power loss;
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
    MIGRATOR.run(&mut conn).await.map_err(|e| sqlx::Error::Migrate(Box::new(e)))?;
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
    let conn = open_writer(url, Duration::from_secs(5)).await?;
    drop(conn);
    Ok(())
}
