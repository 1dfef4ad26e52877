//! PostgreSQL: a database role and a schema per plugin, so the database itself confines a
//! plugin to its own tables (docs/security.md "Plugin tables").
//!
//! For plugin `chat` on database `gatewayd` the daemon keeps:
//! - the role `gatewayd_<8 hex of the database name's SHA-256>_chat` (roles are cluster-wide;
//!   the hash keeps two databases' plugins apart), `LOGIN` with a password derived from the
//!   database's own secret (`daemon_secrets`, which no plugin role can read) by HMAC-SHA256,
//!   so every daemon on one database (cluster mode) computes the same one;
//! - the schema `plugin_chat`, owned by that role: its tables go there (it is first on the
//!   role's search path);
//! - grants: `SELECT, REFERENCES` on the shared tenant tables, `SELECT, INSERT, UPDATE` on the
//!   ledger `plugin_migrations` (row-level security: its own rows only), `SELECT` on
//!   `plugin_roles`. Nothing else: another plugin's schema is out of reach (`permission
//!   denied`), and the role cannot switch to another (a `LOGIN` role, not a `SET ROLE`, which a
//!   plugin statement could undo).
//!
//! Creating roles needs `CREATEROLE` (or a superuser) for the daemon's database user, and
//! `pg_hba.conf` must let the plugin roles log in from where the daemon runs with a password.

use super::{Store, authorizer};
use anyhow::Context;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use sqlx::{AnyConnection, Connection, Executor, Row};

/// How a plugin's connections log in.
#[derive(Debug)]
pub struct Login {
    pub role: String,
    /// The daemon's URL with the role's user name and password.
    pub url: String,
}

/// The schema of `plugin`: `plugin_` and its name with every character but `a-z0-9` as `_`.
pub fn schema(plugin: &str) -> String {
    format!("plugin_{}", sanitize(plugin))
}

fn sanitize(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_lowercase() || c.is_ascii_digit() { c } else { '_' }).collect()
}

/// The role of `plugin` on database `database` (at most 63 bytes, PostgreSQL's limit).
pub fn role(database: &str, plugin: &str) -> String {
    let hash: String = Sha256::digest(database.as_bytes()).iter().take(4).map(|b| format!("{b:02x}")).collect();
    let mut role = format!("gatewayd_{hash}_{}", sanitize(plugin));
    role.truncate(63);
    role
}

/// Create (or bring up to date) `plugin`'s role, schema and grants, adopt its tables from
/// before plugin-owned schema ([`super::plugin_schema::LEGACY_TABLES`]: moved from `public`
/// into its schema, owned by its role), and return how it logs in. Idempotent; safe to run
/// from several daemons at once.
pub async fn provision(daemon: &Store, plugin: &str) -> anyhow::Result<Login> {
    let mut conn = AnyConnection::connect(&daemon.url).await.context("connecting to PostgreSQL")?;
    let result = provision_on(&mut conn, &daemon.url, plugin).await;
    let _ = conn.close().await;
    result.with_context(|| format!("setting up the database role of plugin `{plugin}` (docs/operating.md)"))
}

async fn provision_on(conn: &mut AnyConnection, url: &str, plugin: &str) -> anyhow::Result<Login> {
    let database: String =
        sqlx::query("SELECT CAST(current_database() AS TEXT)").fetch_one(&mut *conn).await?.try_get(0)?;
    let role = role(&database, plugin);
    let schema = schema(plugin);
    sqlx::query("INSERT INTO daemon_secrets (name, value) VALUES ('plugin_roles', $1) ON CONFLICT (name) DO NOTHING")
        .bind(format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple()))
        .execute(&mut *conn)
        .await?;
    let secret: String = sqlx::query("SELECT value FROM daemon_secrets WHERE name = 'plugin_roles'")
        .fetch_one(&mut *conn)
        .await?
        .try_get(0)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(role.as_bytes());
    let password: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();

    // Identifiers are ours (sanitised); the password is hex: neither needs more quoting.
    let exists =
        sqlx::query("SELECT 1 FROM pg_roles WHERE rolname = $1").bind(&role).fetch_optional(&mut *conn).await?;
    if exists.is_none() {
        let created = conn.execute(format!("CREATE ROLE \"{role}\" LOGIN PASSWORD '{password}'").as_str()).await;
        // Another daemon may have created it meanwhile (42710 duplicate_object).
        if let Err(e) = created
            && e.as_database_error().and_then(|d| d.code()).as_deref() != Some("42710")
        {
            return Err(e).context("CREATE ROLE (the daemon's database user needs CREATEROLE)");
        }
    }
    conn.execute(
        format!("ALTER ROLE \"{role}\" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD '{password}'").as_str(),
    )
    .await
    .context("ALTER ROLE (the daemon's database user needs CREATEROLE)")?;
    let shared = authorizer::SHARED.join(", ");
    for statement in [
        format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\" AUTHORIZATION \"{role}\""),
        format!("GRANT USAGE ON SCHEMA public TO \"{role}\""),
        format!("GRANT SELECT, REFERENCES ON {shared} TO \"{role}\""),
        format!("GRANT SELECT, INSERT, UPDATE ON plugin_migrations TO \"{role}\""),
        format!("GRANT SELECT ON plugin_roles TO \"{role}\""),
    ] {
        // Two daemons creating the same schema at once: one of them sees 42P06 or 23505.
        if let Err(e) = conn.execute(statement.as_str()).await {
            let code = e.as_database_error().and_then(|d| d.code()).unwrap_or_default();
            if !(statement.starts_with("CREATE SCHEMA") && (code == "42P06" || code == "23505")) {
                return Err(e).context(statement);
            }
        }
    }
    sqlx::query("INSERT INTO plugin_roles (role, plugin) VALUES ($1, $2) ON CONFLICT DO NOTHING")
        .bind(&role)
        .bind(plugin)
        .execute(&mut *conn)
        .await?;
    for table in super::plugin_schema::legacy_tables(plugin) {
        let in_public: Option<String> = sqlx::query("SELECT CAST(to_regclass($1) AS TEXT)")
            .bind(format!("public.{table}"))
            .fetch_one(&mut *conn)
            .await?
            .try_get(0)?;
        if in_public.is_some() {
            conn.execute(format!("ALTER TABLE public.\"{table}\" SET SCHEMA \"{schema}\"").as_str()).await?;
            conn.execute(format!("ALTER TABLE \"{schema}\".\"{table}\" OWNER TO \"{role}\"").as_str()).await?;
            tracing::info!(
                plugin,
                table,
                schema,
                "table from before plugin-owned schema moved into its plugin's schema"
            );
        }
    }
    let mut login = url::Url::parse(url).context("the storage URL")?;
    login.set_username(&role).map_err(|()| anyhow::anyhow!("the storage URL cannot carry a user name"))?;
    login.set_password(Some(&password)).map_err(|()| anyhow::anyhow!("the storage URL cannot carry a password"))?;
    Ok(Login { role, url: login.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_sanitised_and_bounded() {
        assert_eq!(schema("fault-test"), "plugin_fault_test");
        let r = role("gatewayd", "chat");
        assert!(r.starts_with("gatewayd_") && r.ends_with("_chat") && r.len() == "gatewayd_".len() + 8 + 5, "{r}");
        assert_ne!(role("a", "chat"), role("b", "chat"));
        assert_eq!(role("a", &"x".repeat(100)).len(), 63);
    }
}
