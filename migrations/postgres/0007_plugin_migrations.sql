-- Plugin-owned schema (docs/security.md "Plugin tables"): the ledger of the migrations each
-- plugin shipped and the daemon applied when it loaded the plugin. checksum: SHA-256 (hex) of
-- the migration's SQL; applied_at_ms: ms since the Unix epoch.
CREATE TABLE plugin_migrations (
    plugin        TEXT NOT NULL,
    version       BIGINT NOT NULL,
    name          TEXT NOT NULL,
    checksum      TEXT NOT NULL,
    applied_at_ms BIGINT NOT NULL,
    PRIMARY KEY (plugin, version)
);

-- Chat's and rooms' tables were daemon migrations 0002-0006 until they moved into their
-- plugins (plugins/chat/migrations, plugins/rooms/migrations). A database that ran them
-- records them as those plugins' migrations, with the checksum 'adopted': whatever the plugin
-- ships for that version is taken as what ran, and its checksum replaces 'adopted'.
INSERT INTO plugin_migrations (plugin, version, name, checksum, applied_at_ms)
SELECT p.plugin, p.version, p.name, 'adopted', (extract(epoch FROM now()) * 1000)::bigint
FROM (
    SELECT 'chat' AS plugin, 1 AS version, '0001_sessions' AS name, 2 AS daemon_version
    UNION ALL SELECT 'chat', 2, '0002_attachment_index', 4
    UNION ALL SELECT 'chat', 3, '0003_quotas', 5
    UNION ALL SELECT 'rooms', 1, '0001_rooms', 3
    UNION ALL SELECT 'rooms', 2, '0002_business', 6
) p
WHERE EXISTS (SELECT 1 FROM _sqlx_migrations m WHERE m.version = p.daemon_version AND m.success);

-- Each plugin's database role (gatewayd/src/store/roles.rs). Plugin roles may read it.
CREATE TABLE plugin_roles (
    role   TEXT PRIMARY KEY,
    plugin TEXT NOT NULL UNIQUE
);

-- The daemon's own secrets: 'plugin_roles' derives the plugin roles' passwords. No plugin
-- role is granted anything on it.
CREATE TABLE daemon_secrets (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- A plugin's role applies its migrations and writes their ledger rows itself (in the same
-- transaction); it may read and write its own rows only.
ALTER TABLE plugin_migrations ENABLE ROW LEVEL SECURITY;
CREATE POLICY plugin_own_rows ON plugin_migrations
    USING (plugin = (SELECT r.plugin FROM plugin_roles r WHERE r.role = current_user))
    WITH CHECK (plugin = (SELECT r.plugin FROM plugin_roles r WHERE r.role = current_user));
