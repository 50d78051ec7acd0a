-- Click counts. Redirects never write the database: clicks are buffered in memory and added
-- here in batches (src/clicks.rs). Counts are only ever incremented (clicks = clicks + n), never
-- overwritten, so several instances can share one database.

ALTER TABLE link_mappings ADD COLUMN clicks INTEGER NOT NULL DEFAULT 0;
-- Epoch milliseconds of the last counted click (at flush granularity).
ALTER TABLE link_mappings ADD COLUMN last_clicked_at INTEGER;

-- Clicks per link per UTC day, for charts. No foreign key: a flush may carry clicks for a link
-- deleted meanwhile; the writer only adds a day row when the link still exists, and deleting a
-- link deletes its day rows.
CREATE TABLE link_clicks_daily (
    short_code  TEXT    NOT NULL,
    day         TEXT    NOT NULL,  -- YYYY-MM-DD (UTC)
    clicks      INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (short_code, day)
) WITHOUT ROWID;
