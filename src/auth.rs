//! API keys as the domain sees them: verifying a presented key, and what this process
//! remembers about presented keys (the ownership rules themselves are [`ApiKeyRow::scope`]).
//!
//! A verified key is trusted for `AUTH_CACHE_TTL_MS` without a database read; `shortener keys
//! revoke` announces revocations through Redis and every instance then forgets its cached keys,
//! so a revocation applies at once while Redis is up and within the TTL otherwise. A key that
//! failed (unknown or revoked) is remembered for [`FAILED_KEY_TTL`], so a flood of one bad token
//! costs one database read, not one per request; and a client address that ran out of failed
//! attempts (`RATE_LIMIT_AUTH_FAILURES_PER_IP_PER_MINUTE`, counted by the HTTP gate) is refused
//! from memory until its `Retry-After` has passed. Every map here is bounded.
//!
//! [`sessions`]: the admin web app's sign-in sessions.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{atomic::AtomicU64, Mutex},
    time::{Duration, Instant},
};

pub mod sessions;

use crate::db::Db;

use crate::db::{
    keys::{self, ApiKeyRow},
    DbError,
};

/// Why a presented key was not accepted.
#[derive(Debug)]
pub enum AuthError {
    /// No key has this hash.
    Unknown,
    /// The key was revoked.
    Revoked,
    /// The database could not answer.
    Db(DbError),
}

/// How long a key that failed is answered from memory.
pub const FAILED_KEY_TTL: Duration = Duration::from_secs(10);

/// Most entries of each map below: past it, expired entries are dropped, and if that is not
/// enough the map starts over (a flood of distinct tokens or addresses cannot grow memory).
const MAX_ENTRIES: usize = 10_000;

/// Inserts into a bounded map of entries that expire.
fn insert_bounded<K: std::hash::Hash + Eq, V>(
    map: &mut HashMap<K, (V, Instant)>,
    key: K,
    value: V,
    expired: impl Fn(&V, Instant) -> bool,
) {
    if map.len() >= MAX_ENTRIES {
        map.retain(|_, (v, at)| !expired(v, *at));
        if map.len() >= MAX_ENTRIES {
            map.clear();
        }
    }
    map.insert(key, (value, Instant::now()));
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What this process remembers about presented keys: recently verified ones (for
/// `AUTH_CACHE_TTL_MS`; zero disables that), recently failed ones, and client addresses that are
/// refused for too many failures.
pub struct KeyCache {
    ttl: Duration,
    verified: Mutex<HashMap<Vec<u8>, (ApiKeyRow, Instant)>>,
    /// Failed key hashes: whether the key was revoked (403) rather than unknown (401).
    failed: Mutex<HashMap<Vec<u8>, (bool, Instant)>>,
    /// Addresses refused until the instant stored as the entry's value.
    blocked: Mutex<HashMap<IpAddr, (Instant, Instant)>>,
    /// Keys looked up in the database (neither verified nor failed in memory).
    pub lookups: AtomicU64,
}

impl KeyCache {
    /// A cache keeping verified keys for `ttl` (zero disables that part).
    pub fn new(ttl: Duration) -> Self {
        KeyCache {
            ttl,
            verified: Default::default(),
            failed: Default::default(),
            blocked: Default::default(),
            lookups: Default::default(),
        }
    }

    /// A verified key, from memory only.
    pub fn get(&self, hash: &[u8]) -> Option<ApiKeyRow> {
        if self.ttl.is_zero() {
            return None;
        }
        lock(&self.verified).get(hash).filter(|(_, at)| at.elapsed() < self.ttl).map(|(row, _)| row.clone())
    }

    fn put(&self, hash: Vec<u8>, row: ApiKeyRow) {
        if self.ttl.is_zero() {
            return;
        }
        let ttl = self.ttl;
        insert_bounded(&mut lock(&self.verified), hash, row, |_, at| at.elapsed() >= ttl);
    }

    /// The error a key that failed recently gets again, from memory only.
    fn failure(&self, hash: &[u8]) -> Option<AuthError> {
        let map = lock(&self.failed);
        let (revoked, _) = map.get(hash).filter(|(_, at)| at.elapsed() < FAILED_KEY_TTL)?;
        Some(if *revoked { AuthError::Revoked } else { AuthError::Unknown })
    }

    fn put_failure(&self, hash: Vec<u8>, revoked: bool) {
        insert_bounded(&mut lock(&self.failed), hash, revoked, |_, at| at.elapsed() >= FAILED_KEY_TTL);
    }

    /// Seconds until `ip` may try a key again, if it is refused for too many failures.
    pub fn blocked_for(&self, ip: IpAddr) -> Option<u64> {
        let now = Instant::now();
        let map = lock(&self.blocked);
        let (until, _) = map.get(&ip).filter(|(until, _)| *until > now)?;
        Some((*until - now).as_secs_f64().ceil() as u64)
    }

    /// Refuses `ip`'s unverified keys for `secs` seconds.
    pub fn block(&self, ip: IpAddr, secs: u64) {
        let now = Instant::now();
        insert_bounded(&mut lock(&self.blocked), ip, now + Duration::from_secs(secs.max(1)), |until, _| *until <= now);
    }

    /// Checks a presented key by its hash: memory first (verified keys, then recent failures),
    /// the database only for a key seen neither way.
    pub async fn verify(&self, db: &Db, hash: &[u8]) -> Result<ApiKeyRow, AuthError> {
        if let Some(row) = self.get(hash) {
            return Ok(row);
        }
        if let Some(e) = self.failure(hash) {
            return Err(e);
        }
        self.lookups.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match keys::find_key_by_hash(db, hash).await.map_err(AuthError::Db)? {
            None => {
                self.put_failure(hash.to_vec(), false);
                Err(AuthError::Unknown)
            }
            Some(row) if row.revoked_at.is_some() => {
                self.put_failure(hash.to_vec(), true);
                Err(AuthError::Revoked)
            }
            Some(row) => {
                self.put(hash.to_vec(), row.clone());
                Ok(row)
            }
        }
    }

    /// Copies this memory's counters into `m`.
    pub fn export_metrics(&self, m: &crate::observe::Metrics) {
        m.copy_counter("shortener_auth_key_lookups_total", vec![], &self.lookups);
    }

    /// Forgets every verified and failed key (a key was revoked somewhere, or created).
    pub fn clear(&self) {
        lock(&self.verified).clear();
        lock(&self.failed).clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_of_distinct_failed_keys_and_addresses_stays_within_the_bound() {
        let cache = KeyCache::new(Duration::from_secs(60));
        for i in 0..(3 * MAX_ENTRIES as u32) {
            cache.put_failure(i.to_be_bytes().to_vec(), false);
            cache.block(IpAddr::from(i.to_be_bytes()), 60);
        }
        assert!(lock(&cache.failed).len() <= MAX_ENTRIES);
        assert!(lock(&cache.blocked).len() <= MAX_ENTRIES);
        // The newest entries are still answered from memory.
        let last = 3 * MAX_ENTRIES as u32 - 1;
        assert!(matches!(cache.failure(&last.to_be_bytes()), Some(AuthError::Unknown)));
        assert!(cache.blocked_for(IpAddr::from(last.to_be_bytes())).is_some());
    }

    #[test]
    fn a_revoked_key_fails_as_forbidden_and_clear_forgets_failures() {
        let cache = KeyCache::new(Duration::from_secs(60));
        cache.put_failure(b"revoked".to_vec(), true);
        assert!(matches!(cache.failure(b"revoked"), Some(AuthError::Revoked)));
        cache.clear();
        assert!(cache.failure(b"revoked").is_none());
    }
}
