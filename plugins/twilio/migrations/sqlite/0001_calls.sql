-- telephony.md section 4 "Database Schema Requirements", in SQLite's types: SERIAL is INTEGER
-- PRIMARY KEY AUTOINCREMENT, VARCHAR(n) and JSONB are TEXT, FLOAT is REAL, BOOLEAN is INTEGER
-- (0/1), TIMESTAMP is TEXT holding ISO 8601 UTC with milliseconds (2024-01-01T12:00:00.000Z).
-- Plus business_id (the business the call belongs to) on both tables.
CREATE TABLE phone_calls (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    call_id TEXT UNIQUE NOT NULL,
    call_sid TEXT UNIQUE NOT NULL,
    customer_number TEXT NOT NULL,
    organization_number TEXT NOT NULL,
    status TEXT NOT NULL,
    start_time TEXT NOT NULL,
    end_time TEXT,
    duration INTEGER,
    tenant_id INTEGER NOT NULL,
    business_id TEXT NOT NULL,
    created_at TEXT DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at TEXT DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
-- GET /api/telephony/calls: a business's calls, newest first, optionally only those not ended.
CREATE INDEX phone_calls_business ON phone_calls(business_id, status);

-- message_type: 'transcript' (customer speech, finals only), 'tts_audio' (agent text spoken to
-- the caller, the welcome message included), 'dtmf' (a key the caller pressed).
-- sender_type: 'customer' or 'agent'.
CREATE TABLE phone_call_messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    call_id TEXT NOT NULL,
    message_type TEXT NOT NULL,
    content TEXT NOT NULL,
    sender_type TEXT NOT NULL,
    sender_name TEXT,
    confidence REAL,
    detected_language TEXT,
    is_final INTEGER DEFAULT 1,
    metadata TEXT,
    business_id TEXT NOT NULL,
    created_at TEXT DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at TEXT DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX phone_call_messages_call ON phone_call_messages(call_id, id);
