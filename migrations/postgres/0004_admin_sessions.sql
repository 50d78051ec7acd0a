-- The admin web app (/admin): sessions, and indexes for its list of links (see
-- migrations/sqlite/0005_admin_sessions.sql for what each is for).
CREATE TABLE admin_sessions (
    token_hash   BYTEA   PRIMARY KEY,
    key_id       BIGINT  NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    csrf_token   TEXT    NOT NULL,
    created_at   BIGINT  NOT NULL,
    last_seen_at BIGINT  NOT NULL
);
CREATE INDEX admin_sessions_by_last_seen ON admin_sessions (last_seen_at);
CREATE INDEX admin_sessions_by_created ON admin_sessions (created_at);

CREATE INDEX link_mappings_by_created ON link_mappings (created_at, short_code);
CREATE INDEX link_mappings_by_creator_created ON link_mappings (created_by, created_at, short_code);
