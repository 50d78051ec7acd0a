-- Key ownership: a key manages the links it created; an admin key manages every link.
--
-- Existing keys stay ordinary keys and keep owning what they created (link_mappings.created_by
-- has recorded the creating key since the first migration). Links with no recorded creator
-- (imported, or rows inserted with only short_code and original_url) belong to admin keys.

-- 1 = may list, read, change and delete every link (`shortener keys create NAME --admin`).
ALTER TABLE api_keys ADD COLUMN admin INTEGER NOT NULL DEFAULT 0 CHECK (admin IN (0, 1));

-- A key's own links, in code order: the list of an ordinary key is one range scan of this index.
CREATE INDEX link_mappings_by_creator ON link_mappings (created_by, short_code);
