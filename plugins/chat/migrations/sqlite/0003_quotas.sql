-- chat quotas (docs/protocols/chat.md "Quotas and bounds"): what a session has uploaded, counted
-- by one conditional UPDATE per upload so concurrent uploads can never pass the caps together,
-- and whether its files have been removed (at end-session, or after file_retention_secs).
ALTER TABLE chat_sessions ADD COLUMN upload_count INTEGER NOT NULL DEFAULT 0;
ALTER TABLE chat_sessions ADD COLUMN upload_bytes INTEGER NOT NULL DEFAULT 0;
ALTER TABLE chat_sessions ADD COLUMN files_removed INTEGER NOT NULL DEFAULT 0;
-- Ended sessions whose files are still kept, for the retention sweep.
CREATE INDEX chat_sessions_files_kept ON chat_sessions(ended_at) WHERE active = 0 AND files_removed = 0;
