-- Click counts (see migrations/sqlite/0002_clicks.sql): only ever incremented, never
-- overwritten, so several instances can share one database.

ALTER TABLE link_mappings ADD COLUMN clicks BIGINT NOT NULL DEFAULT 0;
-- Epoch milliseconds of the last counted click (at flush granularity).
ALTER TABLE link_mappings ADD COLUMN last_clicked_at BIGINT;

-- Clicks per link per UTC day, for charts. No foreign key: deleting a link deletes its rows.
CREATE TABLE link_clicks_daily (
    short_code  TEXT COLLATE "C" NOT NULL,
    day         TEXT    NOT NULL,  -- YYYY-MM-DD (UTC)
    clicks      BIGINT  NOT NULL DEFAULT 0,
    PRIMARY KEY (short_code, day)
);
