-- Telephony tenancy (telephony.md section 7): each business gets a number of its own (the
-- spec's integer `tenant_id` column), and its phone numbers map calls to it.
ALTER TABLE businesses ADD COLUMN tenant_id SERIAL;
CREATE UNIQUE INDEX businesses_tenant_id ON businesses(tenant_id);

-- The organisation's numbers (E.164, as Twilio sends `To`).
CREATE TABLE business_numbers (
    number      TEXT PRIMARY KEY,
    business_id TEXT NOT NULL REFERENCES businesses(id) ON DELETE CASCADE,
    created_at  TEXT NOT NULL DEFAULT (to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'))
);
CREATE INDEX business_numbers_business ON business_numbers(business_id);
