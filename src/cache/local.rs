//! L1: a bounded in-process cache with a short TTL, plus the per-code epochs that guard it.
//!
//! The guard: a fill reads the epoch of its code *before* it reads Redis or SQLite, inserts,
//! then reads the epoch again and removes its own insert if the epoch moved. A writer bumps the
//! epoch *after* the database commit and the Redis delete, and only then removes the L1 entry.
//! Either the writer's removal comes after the fill's insert (and removes it), or the bump came
//! before the fill's re-check (and the fill removes itself): an old value never outlives an
//! acknowledged change, whether the fill took it from SQLite or from Redis.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use moka::{sync::Cache, Expiry};

use crate::links::Resolved;

const EPOCH_SLOTS: usize = 4096;

/// The in-process cache. With capacity 0 it stores nothing but still keeps epochs.
pub struct L1 {
    cache: Option<Cache<Box<str>, Resolved>>,
    epochs: Box<[AtomicU64]>,
}

struct TtlByKind {
    positive: Duration,
    negative: Duration,
}

impl Expiry<Box<str>, Resolved> for TtlByKind {
    fn expire_after_create(&self, _: &Box<str>, value: &Resolved, _: Instant) -> Option<Duration> {
        Some(match value {
            Resolved::Found(_) => self.positive,
            Resolved::Missing => self.negative,
        })
    }
}

impl L1 {
    /// A cache of `capacity` entries (0 = disabled); negative entries live at most `negative_ttl`.
    pub fn new(capacity: u64, ttl: Duration, negative_ttl: Duration) -> Self {
        let cache = (capacity > 0).then(|| {
            Cache::builder()
                .max_capacity(capacity)
                .expire_after(TtlByKind { positive: ttl, negative: ttl.min(negative_ttl) })
                .build()
        });
        L1 { cache, epochs: (0..EPOCH_SLOTS).map(|_| AtomicU64::new(0)).collect() }
    }

    /// Whether L1 stores anything.
    pub fn enabled(&self) -> bool {
        self.cache.is_some()
    }

    /// Looks a code up.
    #[inline]
    pub fn get(&self, code: &str) -> Option<Resolved> {
        self.cache.as_ref()?.get(code)
    }

    /// The current epoch of a code; read it before reading a lower tier.
    #[inline]
    pub fn epoch(&self, code: &str) -> u64 {
        self.epochs[slot(code)].load(Ordering::SeqCst)
    }

    /// Inserts a value read at `epoch`, unless a change to the code came in between.
    pub fn fill(&self, code: &str, value: Resolved, epoch: u64, guard: bool) {
        let Some(cache) = &self.cache else { return };
        if guard && self.epoch(code) != epoch {
            return;
        }
        cache.insert(code.into(), value);
        if guard && self.epoch(code) != epoch {
            cache.invalidate(code);
        }
    }

    /// Forgets a code after a change: bump the epoch first, then remove.
    pub fn invalidate(&self, code: &str) {
        self.epochs[slot(code)].fetch_add(1, Ordering::SeqCst);
        if let Some(cache) = &self.cache {
            cache.invalidate(code);
        }
    }

    /// Number of entries (approximate).
    pub fn len(&self) -> u64 {
        self.cache.as_ref().map_or(0, |c| {
            c.run_pending_tasks();
            c.entry_count()
        })
    }

    /// Whether L1 is empty (approximate).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops every entry (tests and cache warm-up tools).
    pub fn clear(&self) {
        for e in self.epochs.iter() {
            e.fetch_add(1, Ordering::SeqCst);
        }
        if let Some(cache) = &self.cache {
            cache.invalidate_all();
        }
    }
}

/// FNV-1a over the code's bytes: cheap, and good enough to spread codes over the slots.
#[inline]
fn slot(code: &str) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in code.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h as usize) % EPOCH_SLOTS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fill_that_raced_an_invalidation_does_not_stay() {
        let l1 = L1::new(100, Duration::from_secs(60), Duration::from_secs(60));
        let seen = l1.epoch("abc");
        l1.invalidate("abc");
        l1.fill("abc", Resolved::Missing, seen, true);
        assert!(l1.get("abc").is_none());
        l1.fill("abc", Resolved::Missing, l1.epoch("abc"), true);
        assert!(l1.get("abc").is_some());
    }

    #[test]
    fn capacity_zero_stores_nothing() {
        let l1 = L1::new(0, Duration::from_secs(60), Duration::from_secs(60));
        l1.fill("abc", Resolved::Missing, l1.epoch("abc"), true);
        assert!(l1.get("abc").is_none());
        assert!(!l1.enabled());
    }
}
