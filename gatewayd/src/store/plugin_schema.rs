//! Plugin-owned schema: the migrations a plugin ships (WIT `schema.migrations`), applied when
//! the daemon loads the plugin (docs/security.md "Plugin tables").
//!
//! The ledger is the daemon's table `plugin_migrations` (plugin, version, name, SHA-256 of the
//! SQL, when: ms since the epoch). Each pending migration runs as ONE transaction together with
//! its ledger row, with the plugin's own rights ([`run`]): it is wholly applied and recorded,
//! or not at all, and it can only create and change the plugin's own tables. Every statement is
//! checked as a plugin's statements are (no transaction control, no `PRAGMA`/`SET`/`ATTACH`,
//! ...: [`FORBIDDEN`]) and has the statement time limit.
//!
//! A plugin version is refused when its list is malformed ([`MAX_MIGRATIONS`],
//! [`MAX_SQL_BYTES`], ascending versions), when a migration the ledger holds has changed, or
//! when a pending one fails. Versions in the ledger that the plugin no longer lists (a rollback
//! to an older plugin) are kept and logged: migrations are additive, so an older version runs
//! on the newer schema.

use super::{Backend, Store, StoreError, Value, authorizer, sql};
use sha2::{Digest, Sha256};
use sqlx::{AnyConnection, Connection, Executor, Row};

/// One migration of a plugin (WIT `schema.migration`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    /// 1..=[`MAX_VERSION`], strictly ascending in a plugin's list.
    pub version: u32,
    /// Description, at most [`MAX_NAME_BYTES`].
    pub name: String,
    /// Statements separated by `;`, at most [`MAX_SQL_BYTES`].
    pub sql: String,
}

/// Migrations one plugin may list.
pub const MAX_MIGRATIONS: usize = 200;
/// Highest version number.
pub const MAX_VERSION: u32 = 1000;
/// Longest migration name, in bytes.
pub const MAX_NAME_BYTES: usize = 100;
/// Largest migration, in bytes of SQL.
pub const MAX_SQL_BYTES: usize = 256 * 1024;
/// Statements in one migration, at most (each runs in the migration's one transaction).
pub const MAX_STATEMENTS: usize = 500;

/// Statements neither a plugin's calls nor its migrations may run, by first keyword:
/// transaction control (each migration already is one transaction; a plugin's statements share
/// the daemon's connections and, on SQLite, write transactions), session state and files
/// (settings, extensions, attached databases, `COPY` and `VACUUM INTO` files), procedural
/// blocks that may commit.
pub const FORBIDDEN: &[&str] = &[
    "BEGIN",
    "COMMIT",
    "END",
    "ROLLBACK",
    "ABORT",
    "START",
    "SAVEPOINT",
    "RELEASE",
    "PREPARE",
    "PRAGMA",
    "ATTACH",
    "DETACH",
    "VACUUM",
    "SET",
    "RESET",
    "DISCARD",
    "LOAD",
    "COPY",
    "DO",
    "CALL",
    "LISTEN",
    "UNLISTEN",
];

/// Checksum of a migration kept in the ledger for migrations the daemon ran before they moved
/// into their plugin (daemon migration 0007): whatever the plugin ships for that version
/// matches it once, and its own checksum replaces it.
const ADOPTED: &str = "adopted";

/// Why a plugin's schema was refused. The message names the migration.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("migration list refused: {0}")]
    Invalid(String),
    #[error("migration {version} ({name}) changed since it was applied (SHA-256 {applied}, now {now})")]
    Changed { version: u32, name: String, applied: String, now: String },
    #[error("migration {version} ({name}) failed at statement {index}: {error}")]
    Failed { version: u32, name: String, index: usize, error: StoreError },
    #[error("reading the migration ledger: {0}")]
    Ledger(StoreError),
}

/// What [`apply`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Versions applied now.
    pub applied: Vec<u32>,
    /// Versions in the ledger the plugin no longer lists.
    pub unknown: Vec<u32>,
}

/// Check `migrations` of `plugin` against the ledger and apply the pending ones, in order.
/// The first failure stops: what ran before it stays applied (each migration is its own
/// transaction), the failing one left nothing.
///
/// `store` is the plugin's own ([`Store::for_plugin`]): its migrations run with its rights;
/// `daemon` is the daemon's, which reads the ledger.
pub async fn apply(daemon: &Store, store: &Store, migrations: &[Migration]) -> Result<Applied, SchemaError> {
    let plugin =
        store.plugin().ok_or_else(|| SchemaError::Invalid("the daemon's store runs no plugin migrations".into()))?;
    let scripts = check(migrations)?;
    let ledger = daemon
        .query(
            "SELECT version, checksum FROM plugin_migrations WHERE plugin = $1 ORDER BY version",
            vec![Value::Text(plugin.into())],
            super::Access::Read,
        )
        .await
        .map_err(SchemaError::Ledger)?;
    let applied: Vec<(u32, String)> = ledger
        .into_iter()
        .filter_map(|row| match row.as_slice() {
            [Value::Integer(v), Value::Text(c)] => Some((*v as u32, c.clone())),
            _ => None,
        })
        .collect();
    let mut report = Applied {
        unknown: applied.iter().map(|(v, _)| *v).filter(|v| !migrations.iter().any(|m| m.version == *v)).collect(),
        ..Applied::default()
    };
    for (m, statements) in migrations.iter().zip(scripts) {
        let now = checksum(&m.sql);
        let failed = |(index, error)| SchemaError::Failed { version: m.version, name: m.name.clone(), index, error };
        match applied.iter().find(|(v, _)| *v == m.version) {
            Some((_, c)) if *c == now => {}
            Some((_, c)) if c == ADOPTED => {
                let record = (
                    "UPDATE plugin_migrations SET checksum = $1, name = $2 WHERE plugin = $3 AND version = $4"
                        .to_string(),
                    vec![Value::Text(now), Value::Text(m.name.clone()), Value::Text(plugin.into()), version(m)],
                );
                run(store, plugin, Vec::new(), record).await.map_err(failed)?;
            }
            Some((_, c)) => {
                return Err(SchemaError::Changed { version: m.version, name: m.name.clone(), applied: c.clone(), now });
            }
            None => {
                let record = (
                    "INSERT INTO plugin_migrations (plugin, version, name, checksum, applied_at_ms) \
                     VALUES ($1, $2, $3, $4, $5)"
                        .to_string(),
                    vec![
                        Value::Text(plugin.into()),
                        version(m),
                        Value::Text(m.name.clone()),
                        Value::Text(now),
                        timestamp(),
                    ],
                );
                run(store, plugin, statements, record).await.map_err(failed)?;
                report.applied.push(m.version);
            }
        }
    }
    Ok(report)
}

/// Run one migration's `statements` with the plugin's rights and `record` (its ledger row)
/// in ONE transaction, on a connection of its own. Errors carry the index of the failing
/// statement (`statements.len()`: the ledger row or the commit).
///
/// SQLite: under the database's write lock, as the plugin in migration mode
/// ([`authorizer`]); then, as the daemon, the tables and views it created are recorded as the
/// plugin's in `plugin_objects` (and those it dropped forgotten) before the commit.
/// PostgreSQL: logged in as the plugin's role (its schema first on the search path); the
/// ledger's row-level security lets the role write its own rows only.
async fn run(
    store: &Store,
    plugin: &str,
    statements: Vec<String>,
    record: (String, Vec<Value>),
) -> Result<(), (usize, StoreError)> {
    let n = statements.len();
    let db = |i: usize| move |e: sqlx::Error| (i, store.error(e));
    let url = match store.backend {
        Backend::Sqlite => store.url.clone(),
        Backend::Postgres => store.writer_url.clone().unwrap_or_else(|| store.url.clone()),
    };
    let mut conn = AnyConnection::connect(&url).await.map_err(db(0))?;
    if store.backend == Backend::Sqlite {
        super::sqlite_pragmas(&mut conn).await.map_err(db(0))?;
    }
    let _turn = match store.backend {
        Backend::Sqlite => Some(store.write_lock.lock().await),
        Backend::Postgres => None,
    };
    let begin = match store.backend {
        Backend::Sqlite => "BEGIN IMMEDIATE",
        Backend::Postgres => "BEGIN",
    };
    let result = async {
        conn.execute(begin).await.map_err(db(0))?;
        let before = match store.backend {
            Backend::Sqlite => Some(objects(&mut conn).await.map_err(db(0))?),
            Backend::Postgres => None,
        };
        if before.is_some() {
            identity(&mut conn, plugin, authorizer::MODE_MIGRATION).await.map_err(db(0))?;
        }
        for (i, sql) in statements.iter().enumerate() {
            conn.execute(sqlx::query(sql)).await.map_err(db(i))?;
        }
        let mut changes = Vec::new();
        if let Some(before) = before {
            identity(&mut conn, "", authorizer::MODE_PLUGIN).await.map_err(db(n))?;
            let after = objects(&mut conn).await.map_err(db(n))?;
            for name in after.difference(&before) {
                conn.execute(
                    sqlx::query("INSERT INTO plugin_objects (name, plugin) VALUES ($1, $2)").bind(name).bind(plugin),
                )
                .await
                .map_err(db(n))?;
                changes.push((name.clone(), Some(plugin)));
            }
            for name in before.difference(&after) {
                conn.execute(sqlx::query("DELETE FROM plugin_objects WHERE name = $1").bind(name))
                    .await
                    .map_err(db(n))?;
                changes.push((name.clone(), None));
            }
        }
        conn.execute(super::bind(sqlx::query(&record.0), &record.1)).await.map_err(db(n))?;
        conn.execute("COMMIT").await.map_err(db(n))?;
        Ok(changes)
    }
    .await;
    match result {
        Ok(changes) => {
            for (name, owner) in changes {
                authorizer::set_owner(&name, owner);
            }
            let _ = conn.close().await;
            Ok(())
        }
        Err(e) => {
            let _ = conn.execute("ROLLBACK").await;
            Err(e)
        }
    }
}

/// Tables that daemon migrations 2 to 6 created before chat and rooms shipped their own
/// (daemon migration 7 records those migrations in the plugins' ledger).
pub const LEGACY_TABLES: &[(&str, &[&str])] =
    &[("chat", &["chat_sessions", "chat_timeline"]), ("rooms", &["rooms", "room_participants", "room_sessions"])];

/// The legacy tables of `plugin`, if any ([`LEGACY_TABLES`]).
pub fn legacy_tables(plugin: &str) -> &'static [&'static str] {
    LEGACY_TABLES.iter().find(|(p, _)| *p == plugin).map_or(&[], |(_, t)| t)
}

/// SQLite: record `plugin`'s [`LEGACY_TABLES`] as its own when the database has them and
/// nobody owns them yet (a database from before plugin-owned schema).
pub(super) async fn adopt_legacy_sqlite(daemon: &Store, plugin: &str) -> Result<(), StoreError> {
    for table in legacy_tables(plugin) {
        if authorizer::owner(table).is_some() {
            continue;
        }
        let adopted = daemon
            .execute(
                "INSERT INTO plugin_objects (name, plugin) SELECT name, $2 FROM sqlite_master \
                 WHERE type = 'table' AND name = $1 AND name NOT IN (SELECT name FROM plugin_objects)",
                vec![Value::Text(table.to_string()), Value::Text(plugin.into())],
                super::Access::ReadWrite,
            )
            .await?;
        if adopted > 0 {
            authorizer::set_owner(table, Some(plugin));
            tracing::info!(plugin, table, "table from before plugin-owned schema adopted by its plugin");
        }
    }
    Ok(())
}

/// SQLite: the names of the database's tables and views (lower-case).
async fn objects(conn: &mut AnyConnection) -> Result<std::collections::BTreeSet<String>, sqlx::Error> {
    let rows =
        sqlx::query("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')").fetch_all(&mut *conn).await?;
    rows.iter().map(|r| r.try_get::<String, _>(0).map(|n| n.to_ascii_lowercase())).collect()
}

async fn identity(conn: &mut AnyConnection, plugin: &str, mode: i64) -> Result<(), sqlx::Error> {
    super::set_identity(conn, plugin, mode).await
}

/// Validate the list and split each migration into its statements.
fn check(migrations: &[Migration]) -> Result<Vec<Vec<String>>, SchemaError> {
    let invalid = |m: &str| Err(SchemaError::Invalid(m.to_string()));
    if migrations.len() > MAX_MIGRATIONS {
        return invalid(&format!("{} migrations (at most {MAX_MIGRATIONS})", migrations.len()));
    }
    let mut last = 0;
    let mut scripts = Vec::with_capacity(migrations.len());
    for m in migrations {
        let which = format!("migration {}", m.version);
        if m.version <= last || m.version > MAX_VERSION {
            return invalid(&format!("{which}: versions must ascend from 1 to at most {MAX_VERSION}"));
        }
        last = m.version;
        if m.name.len() > MAX_NAME_BYTES || m.name.chars().any(char::is_control) {
            return invalid(&format!("{which}: a name of at most {MAX_NAME_BYTES} bytes without control characters"));
        }
        if m.sql.len() > MAX_SQL_BYTES {
            return invalid(&format!("{which}: {} bytes of SQL (at most {MAX_SQL_BYTES})", m.sql.len()));
        }
        let Some(statements) = sql::split(&m.sql) else {
            return invalid(&format!("{which}: a literal, quoted name or comment is left open"));
        };
        if statements.is_empty() || statements.len() > MAX_STATEMENTS {
            return invalid(&format!("{which}: 1 to {MAX_STATEMENTS} statements"));
        }
        for (i, s) in statements.iter().enumerate() {
            let head = sql::shape(s).head;
            if FORBIDDEN.contains(&head.as_str()) {
                return invalid(&format!("{which}, statement {i}: `{head}` is not allowed in a migration"));
            }
        }
        scripts.push(statements.into_iter().map(str::to_string).collect());
    }
    Ok(scripts)
}

fn version(m: &Migration) -> Value {
    Value::Integer(m.version.into())
}

/// SHA-256 of a migration's SQL, hex.
fn checksum(sql: &str) -> String {
    Sha256::digest(sql.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// Now, in ms since the Unix epoch.
fn timestamp() -> Value {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    Value::Integer(now.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(version: u32, sql: &str) -> Migration {
        Migration { version, name: format!("m{version}"), sql: sql.into() }
    }

    #[test]
    fn lists_are_checked_before_anything_runs() {
        assert!(check(&[m(1, "CREATE TABLE a (x INTEGER)"), m(2, "CREATE INDEX i ON a(x);")]).is_ok());
        for bad in [
            vec![m(2, "SELECT 1"), m(1, "SELECT 1")],
            vec![m(0, "SELECT 1")],
            vec![m(1, "SELECT 1"), m(1, "SELECT 1")],
            vec![m(MAX_VERSION + 1, "SELECT 1")],
            vec![m(1, "CREATE TABLE a (x TEXT DEFAULT 'open)")],
            vec![m(1, " ; -- nothing")],
            vec![m(1, "CREATE TABLE a (x INTEGER); COMMIT; DROP TABLE agents")],
            vec![m(1, "/**/PRAGMA writable_schema = ON")],
            vec![m(1, "ATTACH DATABASE '/tmp/x' AS x")],
            vec![m(1, &"SELECT 1;".repeat(MAX_SQL_BYTES / 9 + 1))],
        ] {
            assert!(matches!(check(&bad), Err(SchemaError::Invalid(_))), "{bad:?}");
        }
    }
}
