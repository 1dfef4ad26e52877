-- Tenancy: businesses, their departments, agents and agent memberships (signaling.md).
CREATE TABLE businesses (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL DEFAULT '',
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE TABLE departments (
    id          TEXT PRIMARY KEY,
    business_id TEXT NOT NULL REFERENCES businesses(id) ON DELETE CASCADE,
    name        TEXT NOT NULL DEFAULT '',
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX departments_business ON departments(business_id);

-- An agent is the telephony identity of an authenticated user (the JWT's user_id).
CREATE TABLE agents (
    id           TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL UNIQUE,
    display_name TEXT NOT NULL DEFAULT '',
    created_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

-- department_id NULL: a business-wide membership.
CREATE TABLE agent_memberships (
    agent_id      TEXT NOT NULL REFERENCES agents(id) ON DELETE CASCADE,
    business_id   TEXT NOT NULL REFERENCES businesses(id) ON DELETE CASCADE,
    department_id TEXT REFERENCES departments(id) ON DELETE CASCADE,
    created_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE UNIQUE INDEX agent_memberships_unique ON agent_memberships(agent_id, business_id, COALESCE(department_id, ''));
CREATE INDEX agent_memberships_business ON agent_memberships(business_id);
