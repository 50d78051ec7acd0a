//! Queries on `admin_sessions`: the admin web app's sign-in sessions. Only the SHA-256 of a
//! session token is stored. Reads take the read pool; every change goes through the writer
//! ([`SessionChange`] inside `writer::Change::Session`), like every other write of the server.

use sqlx::FromRow;

use super::{keys::ApiKeyRow, on_db, Conn, Db, DbError};

/// A session and the key it was opened with, as one read finds them.
#[derive(Debug, Clone, FromRow)]
pub struct SessionRow {
    /// The per-session CSRF token.
    pub csrf_token: String,
    /// Epoch milliseconds of the sign-in.
    pub created_at: i64,
    /// Epoch milliseconds of the last request seen (written at most once a minute).
    pub last_seen_at: i64,
    /// The key's id.
    pub id: i64,
    /// The key's name.
    pub name: String,
    /// The key's first characters.
    pub key_prefix: String,
    /// The key is exempt from rate limits.
    pub unlimited: bool,
    /// The key manages every link.
    pub admin: bool,
    /// When the key was created.
    pub key_created_at: i64,
    /// When the key was revoked, if it was.
    pub revoked_at: Option<i64>,
}

impl SessionRow {
    /// The key of this session.
    pub fn key(&self) -> ApiKeyRow {
        ApiKeyRow {
            id: self.id,
            name: self.name.clone(),
            key_prefix: self.key_prefix.clone(),
            unlimited: self.unlimited,
            admin: self.admin,
            created_at: self.key_created_at,
            revoked_at: self.revoked_at,
        }
    }
}

/// The session whose token hashes to `token_hash`, with its key.
pub async fn find_session_by_hash(db: &Db, token_hash: &[u8]) -> Result<Option<SessionRow>, DbError> {
    const SQL: &str = "SELECT s.csrf_token, s.created_at, s.last_seen_at, k.id, k.name, k.key_prefix, k.unlimited,
                              k.admin, k.created_at AS key_created_at, k.revoked_at
                       FROM admin_sessions s JOIN api_keys k ON k.id = s.key_id WHERE s.token_hash = $1";
    Ok(on_db!(pool db, p => sqlx::query_as::<_, SessionRow>(SQL).bind(token_hash).fetch_optional(p).await)?)
}

/// A change to `admin_sessions`, applied by the writer.
#[derive(Debug, Clone)]
pub enum SessionChange {
    /// A new session.
    Insert {
        /// SHA-256 of the token.
        token_hash: Vec<u8>,
        /// The key signed in with.
        key_id: i64,
        /// The session's CSRF token.
        csrf_token: String,
        /// Epoch milliseconds.
        now: i64,
    },
    /// A request was seen.
    Touch {
        /// SHA-256 of the token.
        token_hash: Vec<u8>,
        /// Epoch milliseconds.
        now: i64,
    },
    /// Sign-out, or a session found expired.
    Delete {
        /// SHA-256 of the token.
        token_hash: Vec<u8>,
    },
    /// Deletes at most `limit` sessions idle since before `idle_before` or opened before
    /// `opened_before` (bounded, so a large backlog never makes one long transaction).
    DeleteExpired {
        /// Epoch milliseconds.
        idle_before: i64,
        /// Epoch milliseconds.
        opened_before: i64,
        /// Most rows deleted.
        limit: i64,
    },
}

/// Applies a session change inside the writer's transaction; returns the rows it touched.
pub async fn apply_session_change(conn: &mut Conn<'_>, change: &SessionChange) -> Result<u64, sqlx::Error> {
    let done = match change {
        SessionChange::Insert { token_hash, key_id, csrf_token, now } => on_db!(conn conn, c => sqlx::query(
            "INSERT INTO admin_sessions (token_hash, key_id, csrf_token, created_at, last_seen_at) VALUES ($1, $2, $3, $4, $4)"
        )
        .bind(token_hash)
        .bind(key_id)
        .bind(csrf_token)
        .bind(now)
        .execute(c)
        .await?
        .rows_affected()),
        SessionChange::Touch { token_hash, now } => on_db!(conn conn, c => sqlx::query(
            "UPDATE admin_sessions SET last_seen_at = $1 WHERE token_hash = $2 AND last_seen_at < $1"
        )
        .bind(now)
        .bind(token_hash)
        .execute(c)
        .await?
        .rows_affected()),
        SessionChange::Delete { token_hash } => on_db!(conn conn, c => sqlx::query(
            "DELETE FROM admin_sessions WHERE token_hash = $1"
        )
        .bind(token_hash)
        .execute(c)
        .await?
        .rows_affected()),
        SessionChange::DeleteExpired { idle_before, opened_before, limit } => on_db!(conn conn, c => sqlx::query(
            "DELETE FROM admin_sessions WHERE token_hash IN (
                 SELECT token_hash FROM admin_sessions WHERE last_seen_at < $1
                 UNION SELECT token_hash FROM admin_sessions WHERE created_at < $2
                 LIMIT $3)"
        )
        .bind(idle_before)
        .bind(opened_before)
        .bind(limit)
        .execute(c)
        .await?
        .rows_affected()),
    };
    Ok(done)
}
