-- The invalidation outbox is also read by running instances whose Redis subscription is lost
-- (they forget every code queued after the last row they saw; src/invalidation/mod.rs). That
-- needs ids that only grow: without AUTOINCREMENT, SQLite reuses the highest id once its row is
-- deleted, and a reader would skip the new row. Same columns, same rows.
CREATE TABLE cache_invalidations_new (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    short_code  TEXT    NOT NULL,
    queued_at   INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER))
);
INSERT INTO cache_invalidations_new (id, short_code, queued_at)
    SELECT id, short_code, queued_at FROM cache_invalidations;
DROP TABLE cache_invalidations;
ALTER TABLE cache_invalidations_new RENAME TO cache_invalidations;
