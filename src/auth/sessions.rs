//! Sign-in sessions of the admin web app: opening one for a verified key, checking one on every
//! request, closing one.
//!
//! A session is a random 256-bit token in the browser's cookie; the database holds only its
//! SHA-256 (`admin_sessions`, shared by every instance). A session is valid while its key is not
//! revoked (read together with the session on every request, so a revocation ends every session
//! of the key at once, on every instance), for `ADMIN_SESSION_IDLE_SECS` after its last request
//! and at most `ADMIN_SESSION_MAX_SECS` after sign-in. Each session has its own CSRF token that
//! every state-changing form carries; it is compared in constant time. Every sign-in also deletes
//! up to [`PURGE_BATCH`] expired sessions, so the table stays bounded by the sign-in rate without
//! a background task.

use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::{
    config,
    db::{
        keys::ApiKeyRow,
        sessions::{self, SessionChange},
        writer::{Change, Writer},
        Db, DbError,
    },
    time_util::now_ms,
};

/// Most expired sessions one sign-in deletes.
pub const PURGE_BATCH: i64 = 500;

/// A valid session.
#[derive(Debug, Clone)]
pub struct Session {
    /// The key the session was opened with.
    pub key: ApiKeyRow,
    /// The session's CSRF token.
    pub csrf_token: String,
    /// SHA-256 of the cookie's token.
    pub token_hash: Vec<u8>,
}

/// Why a presented session token was not accepted.
#[derive(Debug)]
pub enum SessionError {
    /// No session has this token (never had, signed out, or cleaned up).
    Unknown,
    /// The session expired (idle or absolute limit).
    Expired,
    /// The session's key was revoked.
    Revoked,
    /// The database could not answer.
    Db(DbError),
}

impl From<DbError> for SessionError {
    fn from(e: DbError) -> Self {
        SessionError::Db(e)
    }
}

/// 32 random bytes as 64 hex characters.
pub fn random_token() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// What is stored of a token.
pub fn hash_token(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// Equality of two secrets in time that depends on neither their contents nor their lengths.
pub fn secrets_equal(a: &[u8], b: &[u8]) -> bool {
    let (a, b) = (Sha256::digest(a), Sha256::digest(b));
    a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Opens a session for a verified key: returns the cookie's token. Deletes a bounded batch of
/// expired sessions first.
pub async fn open_session(writer: &Writer, cfg: &config::Admin, key: &ApiKeyRow) -> Result<String, DbError> {
    let now = now_ms();
    writer
        .submit(Change::Session(SessionChange::DeleteExpired {
            idle_before: now - millis(cfg.session_idle),
            opened_before: now - millis(cfg.session_max),
            limit: PURGE_BATCH,
        }))
        .await?;
    let token = random_token();
    writer
        .submit(Change::Session(SessionChange::Insert {
            token_hash: hash_token(&token),
            key_id: key.id,
            csrf_token: random_token(),
            now,
        }))
        .await?;
    Ok(token)
}

/// Checks the session of a cookie's token; a valid one's last use is recorded (at most every
/// minute, or a quarter of the idle limit if that is shorter), an expired one is deleted.
pub async fn check_session(
    db: &Db,
    writer: &Writer,
    cfg: &config::Admin,
    token: &str,
) -> Result<Session, SessionError> {
    let token_hash = hash_token(token);
    let row = sessions::find_session_by_hash(db, &token_hash).await?.ok_or(SessionError::Unknown)?;
    let now = now_ms();
    if now - row.last_seen_at >= millis(cfg.session_idle) || now - row.created_at >= millis(cfg.session_max) {
        writer.submit(Change::Session(SessionChange::Delete { token_hash })).await?;
        return Err(SessionError::Expired);
    }
    if row.revoked_at.is_some() {
        return Err(SessionError::Revoked);
    }
    let touch_every = millis(cfg.session_idle / 4).min(60_000);
    if now - row.last_seen_at >= touch_every {
        writer.submit(Change::Session(SessionChange::Touch { token_hash: token_hash.clone(), now })).await?;
    }
    Ok(Session { key: row.key(), csrf_token: row.csrf_token, token_hash })
}

/// Ends a session (sign-out).
pub async fn close_session(writer: &Writer, token_hash: &[u8]) -> Result<(), DbError> {
    writer.submit(Change::Session(SessionChange::Delete { token_hash: token_hash.to_vec() })).await?;
    Ok(())
}

impl Session {
    /// Whether a form's CSRF token is this session's.
    pub fn csrf_matches(&self, presented: &str) -> bool {
        secrets_equal(presented.as_bytes(), self.csrf_token.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_hex_and_only_their_hash_is_kept() {
        let (a, b) = (random_token(), random_token());
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(hash_token(&a).len(), 32);
        assert!(secrets_equal(a.as_bytes(), a.as_bytes()));
        assert!(!secrets_equal(a.as_bytes(), b.as_bytes()));
        assert!(!secrets_equal(b"", a.as_bytes()));
    }
}
