//! Queries on `api_keys`. Keys are shown once at creation; only their SHA-256 is stored.

use rand::Rng;
use sha2::{Digest, Sha256};
use sqlx::FromRow;

use super::{on_db, Conn, Db, DbError};

/// An API key as the API sees it after authentication.
#[derive(Debug, Clone, FromRow)]
pub struct ApiKeyRow {
    /// Row id (recorded as `created_by` on links).
    pub id: i64,
    /// The operator-given name.
    pub name: String,
    /// First characters of the key.
    pub key_prefix: String,
    /// Exempt from rate limits.
    pub unlimited: bool,
    /// Manages every link, not only the ones it created.
    pub admin: bool,
    /// Epoch milliseconds.
    pub created_at: i64,
    /// Epoch milliseconds; `Some` = revoked.
    pub revoked_at: Option<i64>,
}

/// Hashes a presented key for lookup.
pub fn hash_key(key: &str) -> Vec<u8> {
    Sha256::digest(key.as_bytes()).to_vec()
}

/// A new random key: `sk_` and 32 base62 characters (≈190 bits).
pub fn generate_key() -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::rng();
    let body: String = (0..32).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char).collect();
    format!("sk_{body}")
}

/// Looks a key up by its hash.
pub async fn find_key_by_hash(db: &Db, hash: &[u8]) -> Result<Option<ApiKeyRow>, DbError> {
    const SQL: &str =
        "SELECT id, name, key_prefix, unlimited, admin, created_at, revoked_at FROM api_keys WHERE key_hash = $1";
    Ok(on_db!(pool db, p => sqlx::query_as::<_, ApiKeyRow>(SQL).bind(hash).fetch_optional(p).await)?)
}

/// What a new key may do.
#[derive(Debug, Clone, Copy, Default)]
pub struct KeyRights {
    /// Exempt from rate limits.
    pub unlimited: bool,
    /// Manages every link.
    pub admin: bool,
}

/// Creates a key; returns the plaintext key (shown once). Fails when the name is taken.
pub async fn insert_key(conn: &mut Conn<'_>, name: &str, rights: KeyRights, now: i64) -> Result<String, sqlx::Error> {
    const SQL: &str =
        "INSERT INTO api_keys (name, key_hash, key_prefix, unlimited, admin, created_at) VALUES ($1, $2, $3, $4, $5, $6)";
    let key = generate_key();
    on_db!(conn conn, c => sqlx::query(SQL)
        .bind(name)
        .bind(hash_key(&key))
        .bind(&key[..7])
        .bind(rights.unlimited)
        .bind(rights.admin)
        .bind(now)
        .execute(c)
        .await
        .map(drop))?;
    Ok(key)
}

/// All keys, oldest first.
pub async fn find_keys(conn: &mut Conn<'_>) -> Result<Vec<ApiKeyRow>, sqlx::Error> {
    const SQL: &str = "SELECT id, name, key_prefix, unlimited, admin, created_at, revoked_at FROM api_keys ORDER BY id";
    on_db!(conn conn, c => sqlx::query_as::<_, ApiKeyRow>(SQL).fetch_all(c).await)
}

/// Revokes a key by name; false when no active key has that name.
pub async fn revoke_key(conn: &mut Conn<'_>, name: &str, now: i64) -> Result<bool, sqlx::Error> {
    const SQL: &str = "UPDATE api_keys SET revoked_at = $1 WHERE name = $2 AND revoked_at IS NULL";
    let done = on_db!(conn conn, c => sqlx::query(SQL).bind(now).bind(name).execute(c).await?.rows_affected());
    Ok(done > 0)
}

/// The names of the keys with these ids (ids of keys that no longer exist are absent).
pub async fn find_key_names(db: &Db, ids: &[i64]) -> Result<std::collections::HashMap<i64, String>, DbError> {
    if ids.is_empty() {
        return Ok(Default::default());
    }
    let sql = format!(
        "SELECT id, name FROM api_keys WHERE id IN ({})",
        super::links::placeholders(db.backend(), 1, ids.len(), 1)
    );
    let rows = on_db!(pool db, p => {
        let mut q = sqlx::query_as::<_, (i64, String)>(&sql).persistent(false);
        for id in ids {
            q = q.bind(id);
        }
        q.fetch_all(p).await
    })?;
    Ok(rows.into_iter().collect())
}

impl ApiKeyRow {
    /// The links this key manages: every link for an admin key, its own for any other.
    pub fn scope(&self) -> super::links::Scope {
        if self.admin {
            super::links::Scope::Every
        } else {
            super::links::Scope::CreatedBy(self.id)
        }
    }
}
