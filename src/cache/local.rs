//! L1: a bounded in-process cache with a short TTL, plus the per-code epochs that guard it.
//!
//! # Why not a general-purpose cache crate
//! The redirect hot path spends most of its own time here. A profile of the first version
//! (moka) showed about 10% of the service's CPU in the cache's bookkeeping — frequency sketch,
//! access-order deques, pending-task maintenance — which buys admission and eviction precision
//! this cache does not need. L1 entries are small, short-lived copies of Redis. So: 64 shards,
//! each a `RwLock<HashMap>` (std's randomly seeded hasher: codes come from clients, so the map
//! must resist collision flooding); a hit is a shared read lock, a hash probe, an expiry check
//! and an `Arc` clone. When a shard is full, an insert first drops expired entries, then entries
//! not read since the last sweep (a CLOCK-style reference bit), so eviction is amortised O(1)
//! and keeps what is being read.
//!
//! # The guard
//! A fill reads the epoch of its code *before* it reads Redis or SQLite, and inserts only if the
//! epoch is still the same, checked under the shard's write lock. A writer (or the invalidation
//! listener, for another instance's change) bumps the epoch *after* the database commit and the
//! Redis delete, and then removes the entry under the same lock. Either the fill's insert comes
//! first (and the removal removes it), or the bump does (and the fill sees it and inserts
//! nothing): an old value is never visible once the invalidation has returned, whether the fill
//! took it from SQLite or from Redis.
//!
//! # Trust
//! With several instances, an entry can be made stale by another instance's change, which
//! reaches this one as a pub/sub message. The listener proves that it is keeping up by receiving
//! its own pings (every message published before a ping is delivered before it): each ping
//! extends [`L1::trust_until`], and a lost subscription ends the trust at once
//! ([`L1::distrust`]). While the trust has lapsed, L1 answers nothing (lookups go to Redis and
//! SQLite) — so a writer that waited that long for an instance that did not confirm its change
//! knows that instance can no longer serve the old value from memory.

use std::{
    collections::{hash_map::RandomState, HashMap},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        RwLock,
    },
    time::{Duration, Instant},
};

use super::Resolved;

const EPOCH_SLOTS: usize = 4096;
const SHARDS: usize = 64;

struct Slot {
    value: Resolved,
    /// Milliseconds since `L1::born` after which the entry is gone.
    expires_ms: u64,
    /// Read since the last sweep of its shard.
    referenced: AtomicBool,
}

type Shard = RwLock<HashMap<Box<str>, Slot, RandomState>>;

/// The in-process cache. With capacity 0 it stores nothing but still keeps epochs.
pub struct L1 {
    shards: Box<[Shard]>,
    shard_capacity: usize,
    ttl_ms: u64,
    negative_ttl_ms: u64,
    born: Instant,
    epochs: Box<[AtomicU64]>,
    /// The epoch guard; off only in tests that show the race it closes ([`L1::without_guard`]).
    guard: bool,
    /// Milliseconds since `born` until which entries may be served (`u64::MAX`: always, when no
    /// other instance can change a link behind this one's back).
    trusted_until_ms: AtomicU64,
    /// Lookups refused because the trust had lapsed.
    pub untrusted_lookups: AtomicU64,
}

impl L1 {
    /// A cache of about `capacity` entries (0 = disabled); negative entries live at most
    /// `negative_ttl`.
    pub fn new(capacity: u64, ttl: Duration, negative_ttl: Duration) -> Self {
        let enabled = capacity > 0;
        let shard_capacity = (capacity as usize).div_ceil(SHARDS).max(1);
        let hasher = RandomState::new();
        L1 {
            shards: (0..if enabled { SHARDS } else { 0 })
                .map(|_| RwLock::new(HashMap::with_hasher(hasher.clone())))
                .collect(),
            shard_capacity,
            ttl_ms: ttl.as_millis() as u64,
            negative_ttl_ms: ttl.min(negative_ttl).as_millis() as u64,
            born: Instant::now(),
            epochs: (0..EPOCH_SLOTS).map(|_| AtomicU64::new(0)).collect(),
            guard: true,
            trusted_until_ms: AtomicU64::new(u64::MAX),
            untrusted_lookups: AtomicU64::new(0),
        }
    }

    /// The same cache, serving entries only while [`L1::trust_until`] says so (it starts
    /// untrusted): for an instance that shares its links with others.
    pub fn shared(self) -> Self {
        self.trusted_until_ms.store(0, Ordering::SeqCst);
        self
    }

    /// Entries may be served until `deadline` (never shortens the trust).
    pub fn trust_until(&self, deadline: Instant) -> u64 {
        let ms = deadline.saturating_duration_since(self.born).as_millis() as u64;
        self.trusted_until_ms.fetch_max(ms, Ordering::SeqCst);
        ms
    }

    /// No entry may be served until the next [`L1::trust_until`].
    pub fn distrust(&self) {
        self.trusted_until_ms.store(0, Ordering::SeqCst);
    }

    /// Whether entries may be served now.
    pub fn trusted(&self) -> bool {
        self.now_ms() < self.trusted_until_ms.load(Ordering::SeqCst)
    }

    /// The same cache with the epoch guard off (tests only: it shows the race the guard closes).
    pub fn without_guard(mut self) -> Self {
        self.guard = false;
        self
    }

    /// Whether L1 stores anything.
    pub fn enabled(&self) -> bool {
        !self.shards.is_empty()
    }

    #[inline]
    fn now_ms(&self) -> u64 {
        self.born.elapsed().as_millis() as u64
    }

    #[inline]
    fn shard(&self, code: &str) -> &Shard {
        &self.shards[(fnv(code) >> 7) as usize % SHARDS]
    }

    /// Looks a code up.
    #[inline]
    pub fn get(&self, code: &str) -> Option<Resolved> {
        if self.shards.is_empty() {
            return None;
        }
        let now = self.now_ms();
        if now >= self.trusted_until_ms.load(Ordering::Acquire) {
            self.untrusted_lookups.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let map = self.shard(code).read().unwrap_or_else(|e| e.into_inner());
        let slot = map.get(code)?;
        if slot.expires_ms <= now {
            return None;
        }
        if !slot.referenced.load(Ordering::Relaxed) {
            slot.referenced.store(true, Ordering::Relaxed);
        }
        Some(slot.value.clone())
    }

    /// The current epoch of a code; read it before reading a lower tier.
    #[inline]
    pub fn epoch(&self, code: &str) -> u64 {
        self.epochs[fnv(code) as usize % EPOCH_SLOTS].load(Ordering::SeqCst)
    }

    /// Inserts a value read at `epoch`, unless a change to the code came in between.
    pub fn fill(&self, code: &str, value: Resolved, epoch: u64) {
        let guard = self.guard;
        if self.shards.is_empty() || (guard && self.epoch(code) != epoch) {
            return;
        }
        let ttl = match value {
            Resolved::Found(_) => self.ttl_ms,
            Resolved::Missing => self.negative_ttl_ms,
        };
        let now = self.now_ms();
        // Up to a fifth shorter, varying by code and time: entries filled together (a warm-up,
        // a burst) do not all expire in the same millisecond and send one burst to Redis.
        let ttl = ttl - fnv(code).wrapping_add(now) % (ttl / 5).max(1);
        let mut map = self.shard(code).write().unwrap_or_else(|e| e.into_inner());
        // Under the lock that the invalidation's removal takes: see the module's doc.
        if guard && self.epoch(code) != epoch {
            return;
        }
        if map.len() >= self.shard_capacity && !map.contains_key(code) {
            Self::make_room(&mut map, self.shard_capacity, now);
        }
        map.insert(code.into(), Slot { value, expires_ms: now + ttl, referenced: AtomicBool::new(false) });
    }

    /// Drops expired entries; if that is not enough, drops entries not read since the last
    /// sweep and clears the reference bits of the rest (at least an eighth of the shard goes, so
    /// the next sweep is many inserts away).
    fn make_room(map: &mut HashMap<Box<str>, Slot, RandomState>, capacity: usize, now: u64) {
        map.retain(|_, s| s.expires_ms > now);
        let target = capacity - capacity / 8 - 1;
        if map.len() <= target {
            return;
        }
        let mut excess = map.len() - target;
        map.retain(|_, s| {
            if excess > 0 && !s.referenced.swap(false, Ordering::Relaxed) {
                excess -= 1;
                false
            } else {
                true
            }
        });
        if excess > 0 {
            // Everything was read since the last sweep: drop arbitrary entries.
            map.retain(|_, _| {
                if excess > 0 {
                    excess -= 1;
                    false
                } else {
                    true
                }
            });
        }
    }

    fn remove(&self, code: &str) {
        if !self.shards.is_empty() {
            self.shard(code).write().unwrap_or_else(|e| e.into_inner()).remove(code);
        }
    }

    /// Forgets a code after a change: bump the epoch first, then remove.
    pub fn invalidate(&self, code: &str) {
        self.epochs[fnv(code) as usize % EPOCH_SLOTS].fetch_add(1, Ordering::SeqCst);
        self.remove(code);
    }

    /// Number of entries (expired ones not yet swept included).
    pub fn len(&self) -> u64 {
        self.shards.iter().map(|s| s.read().unwrap_or_else(|e| e.into_inner()).len() as u64).sum()
    }

    /// Whether L1 is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops every entry.
    pub fn clear(&self) {
        for e in self.epochs.iter() {
            e.fetch_add(1, Ordering::SeqCst);
        }
        for s in self.shards.iter() {
            s.write().unwrap_or_else(|e| e.into_inner()).clear();
        }
    }
}

/// FNV-1a over the code's bytes: spreads codes over shards and epoch slots here and in the click
/// registry (never used as a map's hash, which is seeded).
#[inline]
pub fn fnv(code: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in code.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(code: &str) -> Resolved {
        Resolved::from_parts(code, "https://example.com/", 302, None).unwrap()
    }

    #[test]
    fn a_fill_that_raced_an_invalidation_does_not_stay() {
        let l1 = L1::new(100, Duration::from_secs(60), Duration::from_secs(60));
        let seen = l1.epoch("abc");
        l1.invalidate("abc");
        l1.fill("abc", Resolved::Missing, seen);
        assert!(l1.get("abc").is_none());
        l1.fill("abc", Resolved::Missing, l1.epoch("abc"));
        assert!(l1.get("abc").is_some());
    }

    #[test]
    fn capacity_zero_stores_nothing() {
        let l1 = L1::new(0, Duration::from_secs(60), Duration::from_secs(60));
        l1.fill("abc", Resolved::Missing, l1.epoch("abc"));
        assert!(l1.get("abc").is_none());
        assert!(!l1.enabled());
    }

    #[test]
    fn entries_expire_and_negative_entries_sooner() {
        let l1 = L1::new(100, Duration::from_millis(80), Duration::from_millis(20));
        l1.fill("pos", found("pos"), l1.epoch("pos"));
        l1.fill("neg", Resolved::Missing, l1.epoch("neg"));
        std::thread::sleep(Duration::from_millis(40));
        assert!(l1.get("pos").is_some());
        assert!(l1.get("neg").is_none());
        std::thread::sleep(Duration::from_millis(60));
        assert!(l1.get("pos").is_none());
    }

    #[test]
    fn a_full_cache_keeps_its_size_and_what_is_being_read() {
        let l1 = L1::new(6400, Duration::from_secs(60), Duration::from_secs(60));
        let hot: Vec<String> = (0..500).map(|i| format!("hot{i}")).collect();
        for c in &hot {
            l1.fill(c, found(c), l1.epoch(c));
        }
        for i in 0..50_000 {
            for c in hot.iter().skip(i % 10).step_by(10).take(5) {
                assert!(l1.get(c).is_some(), "{c} was evicted while hot");
            }
            let c = format!("cold{i}");
            l1.fill(&c, found(&c), l1.epoch(&c));
        }
        assert!(l1.len() <= 6400 + SHARDS as u64, "{} entries", l1.len());
    }
}
