-- The link table, the API keys and the queue of cache invalidations.
--
-- Times are INTEGER milliseconds since the Unix epoch (UTC): compact, ordered, and compared
-- without parsing. The default expression is written with julianday() so that any SQLite
-- (including an operator's sqlite3 shell) can insert rows.

CREATE TABLE api_keys (
    id          INTEGER PRIMARY KEY,
    name        TEXT    NOT NULL UNIQUE,
    -- SHA-256 of the whole key. Keys are 190 random bits, so a fast hash is enough: nobody
    -- can brute-force them, and a lookup by hash is one index probe.
    key_hash    BLOB    NOT NULL UNIQUE,
    -- The first characters of the key, shown by `keys list` so operators can tell keys apart.
    key_prefix  TEXT    NOT NULL,
    -- 1 = exempt from rate limits.
    unlimited   INTEGER NOT NULL DEFAULT 0 CHECK (unlimited IN (0, 1)),
    created_at  INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)),
    revoked_at  INTEGER
);

-- short_code and original_url are the original schema's columns; every other column has a
-- default, so a row inserted with only those two is a valid 302 link that never expires.
-- WITHOUT ROWID: the table is read by primary key on every cache miss, and this layout makes
-- that one B-tree probe instead of two.
CREATE TABLE link_mappings (
    short_code      TEXT    PRIMARY KEY NOT NULL,
    original_url    TEXT    NOT NULL,
    redirect_status INTEGER NOT NULL DEFAULT 302 CHECK (redirect_status IN (301, 302, 307, 308)),
    created_at      INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)),
    updated_at      INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)),
    -- NULL = never expires.
    expires_at      INTEGER,
    -- The key that created the link (NULL for imported or hand-inserted rows).
    created_by      INTEGER REFERENCES api_keys (id) ON DELETE SET NULL
) WITHOUT ROWID;

-- Cache invalidations not yet known to have reached Redis. A change to a link inserts a row
-- here in the same transaction, so an invalidation survives a crash and a Redis outage; rows
-- are deleted once Redis acknowledged the delete. While any row may be unapplied, the service
-- does not trust Redis for reads (see src/cache/redis.rs).
CREATE TABLE cache_invalidations (
    id          INTEGER PRIMARY KEY,
    short_code  TEXT    NOT NULL,
    queued_at   INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER))
);
