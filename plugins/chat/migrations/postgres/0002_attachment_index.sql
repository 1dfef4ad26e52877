-- Only attachments have a stored file name: index those alone, so storing a chat message
-- (stored_name NULL) does not also insert into this index. Lookups are by
-- `stored_name = $1`, which implies NOT NULL, so they still use it.
DROP INDEX chat_timeline_stored_name;
CREATE UNIQUE INDEX chat_timeline_stored_name ON chat_timeline(stored_name) WHERE stored_name IS NOT NULL;
