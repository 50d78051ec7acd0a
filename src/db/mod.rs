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
/// group commit pays one fsync per batch) and runs the migrations on it.
pub async fn open_writer(url: &str, busy_timeout: Duration) -> Result<SqliteConnection, sqlx::Error> {
    let mut conn = connect_options(url, busy_timeout)?.synchronous(SqliteSynchronous::Full).connect().await?;
    MIGRATOR.run(&mut conn).await.map_err(|e| sqlx::Error::Migrate(Box::new(e)))?;
    Ok(conn)
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
