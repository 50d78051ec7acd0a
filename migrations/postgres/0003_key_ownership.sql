-- Key ownership (see migrations/sqlite/0003_key_ownership.sql): an admin key manages every
-- link; any other key the links it created.

ALTER TABLE api_keys ADD COLUMN admin BOOLEAN NOT NULL DEFAULT false;

-- A key's own links, in code order: the list of an ordinary key is one range scan of this index.
CREATE INDEX link_mappings_by_creator ON link_mappings (created_by, short_code);
