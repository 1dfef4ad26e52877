-- telephony.md section 4 "Database Schema Requirements": the spec's columns and types exactly,
-- plus business_id (the business the call belongs to: its business_numbers row of `To`, or the
-- config's default_business). Timestamps are UTC. Statements cast timestamps from ISO 8601
-- text when writing and read them back as text (CAST(start_time AS TEXT)).
CREATE TABLE phone_calls (
    id SERIAL PRIMARY KEY,
    call_id VARCHAR(255) UNIQUE NOT NULL,
    call_sid VARCHAR(255) UNIQUE NOT NULL,
    customer_number VARCHAR(20) NOT NULL,
    organization_number VARCHAR(20) NOT NULL,
    status VARCHAR(50) NOT NULL,
    start_time TIMESTAMP NOT NULL,
    end_time TIMESTAMP,
    duration INTEGER,
    tenant_id INTEGER NOT NULL,
    business_id VARCHAR(255) NOT NULL,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
);
-- GET /api/telephony/calls: a business's calls, newest first, optionally only those not ended.
CREATE INDEX phone_calls_business ON phone_calls(business_id, status);

-- message_type: 'transcript' (customer speech, finals only), 'tts_audio' (agent text spoken to
-- the caller, the welcome message included), 'dtmf' (a key the caller pressed).
-- sender_type: 'customer' or 'agent'.
CREATE TABLE phone_call_messages (
    id SERIAL PRIMARY KEY,
    call_id VARCHAR(255) NOT NULL,
    message_type VARCHAR(50) NOT NULL,
    content TEXT NOT NULL,
    sender_type VARCHAR(50) NOT NULL,
    sender_name VARCHAR(255),
    confidence FLOAT,
    detected_language VARCHAR(10),
    is_final BOOLEAN DEFAULT true,
    metadata JSONB,
    business_id VARCHAR(255) NOT NULL,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
);
CREATE INDEX phone_call_messages_call ON phone_call_messages(call_id, id);
