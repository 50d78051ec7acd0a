-- The admin web app (/admin): sessions, and indexes for its list of links.
--
-- A session is a random token in the browser's cookie; only its SHA-256 is stored, so a copy of
-- the database does not let anyone in. Several instances share this table, so a session
-- started on one is valid on every other. A session ends when its key is revoked (checked on
-- every request), after ADMIN_SESSION_IDLE_SECS without a request, ADMIN_SESSION_MAX_SECS after
-- sign-in, or at sign-out; expired rows are deleted in bounded batches.
CREATE TABLE admin_sessions (
    token_hash   BLOB    PRIMARY KEY NOT NULL,
    key_id       INTEGER NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    -- The per-session token every state-changing form carries (compared in constant time).
    csrf_token   TEXT    NOT NULL,
    created_at   INTEGER NOT NULL,
    last_seen_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX admin_sessions_by_last_seen ON admin_sessions (last_seen_at);
CREATE INDEX admin_sessions_by_created ON admin_sessions (created_at);

-- The list's "newest" and "oldest" orders, walked by keyset (created_at, short_code): one
-- range scan per page for every link, and for one key's links.
CREATE INDEX link_mappings_by_created ON link_mappings (created_at, short_code);
CREATE INDEX link_mappings_by_creator_created ON link_mappings (created_by, created_at, short_code);
