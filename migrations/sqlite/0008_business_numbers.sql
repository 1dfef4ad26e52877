-- Telephony tenancy (telephony.md section 7): each business gets a number of its own (the
-- spec's integer `tenant_id` column), and its phone numbers map calls to it.
ALTER TABLE businesses ADD COLUMN tenant_id INTEGER;
UPDATE businesses SET tenant_id = rowid;
CREATE UNIQUE INDEX businesses_tenant_id ON businesses(tenant_id);
-- A business added later gets the next number.
CREATE TRIGGER businesses_assign_tenant_id AFTER INSERT ON businesses WHEN NEW.tenant_id IS NULL
BEGIN
    UPDATE businesses SET tenant_id = (SELECT COALESCE(MAX(tenant_id), 0) + 1 FROM businesses)
    WHERE id = NEW.id;
END;

-- The organisation's numbers (E.164, as Twilio sends `To`).
CREATE TABLE business_numbers (
    number      TEXT PRIMARY KEY,
    business_id TEXT NOT NULL REFERENCES businesses(id) ON DELETE CASCADE,
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX business_numbers_business ON business_numbers(business_id);
