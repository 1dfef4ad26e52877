//! Storage (DESIGN section 6): one sqlx code path for SQLite (default, WAL, a file under the
//! state directory) and PostgreSQL. Migrations live in `migrations/<backend>/` and are compiled
//! into the binary; they run at start-up and with `gatewayd migrate`.
//!
//! SQL uses `$1`, `$2`, ... placeholders, which both backends accept.

pub mod tenants;

use anyhow::Context;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row, TypeInfo, ValueRef};
use std::path::Path;

/// Which database the pool talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A column or parameter value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
    Boolean(bool),
}

/// The daemon's database.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
}

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

impl Store {
    /// Connect to `url` (`sqlite://<path>`, relative to `state_dir`, or `postgres://...`).
    /// SQLite files are created when missing and opened in WAL mode with foreign keys on.
    pub async fn connect(url: &str, state_dir: &Path, max_connections: u32) -> anyhow::Result<Store> {
        sqlx::any::install_default_drivers();
        let (backend, url) = if let Some(path) = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")) {
            let (path, _) = path.split_once('?').unwrap_or((path, ""));
            let path = if Path::new(path).is_absolute() { Path::new(path).to_path_buf() } else { state_dir.join(path) };
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            }
            (Backend::Sqlite, format!("sqlite://{}?mode=rwc", path.display()))
        } else {
            (Backend::Postgres, url.to_string())
        };
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections)
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        for pragma in [
                            "PRAGMA journal_mode = WAL",
                            "PRAGMA busy_timeout = 5000",
                            "PRAGMA foreign_keys = ON",
                            "PRAGMA synchronous = NORMAL",
                        ] {
                            sqlx::query(pragma).execute(&mut *conn).await?;
                        }
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await
            .with_context(|| format!("connecting to the {backend:?} database"))?;
        Ok(Store { pool, backend })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Apply pending migrations of this backend.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        let migrator = match self.backend {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
        };
        migrator.run(&self.pool).await.context("applying migrations")
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Run a query; each row is its column values in select order.
    pub async fn query(&self, sql: &str, params: Vec<Value>) -> Result<Vec<Vec<Value>>, sqlx::Error> {
        let rows = self.prepare(sql, params).fetch_all(&self.pool).await?;
        rows.iter().map(row_values).collect()
    }

    /// Run a statement; returns the number of rows affected.
    pub async fn execute(&self, sql: &str, params: Vec<Value>) -> Result<u64, sqlx::Error> {
        Ok(self.prepare(sql, params).execute(&self.pool).await?.rows_affected())
    }

    /// Bind `params` to `sql`. On PostgreSQL a prepared statement keeps the parameter types of
    /// its first use, and a NULL is sent typed as text: a statement first run with a NULL and
    /// cached would later misread an integer in that slot. Statements with a NULL parameter are
    /// therefore not cached there; the others are.
    fn prepare<'q>(&self, sql: &'q str, params: Vec<Value>) -> AnyQuery<'q> {
        let persistent = !(self.backend == Backend::Postgres && params.contains(&Value::Null));
        bind(sqlx::query(sql).persistent(persistent), params)
    }

    /// Run statements in one transaction; the first failure rolls all of them back and is
    /// returned with the index of the failing statement.
    pub async fn execute_in_transaction(&self, statements: Vec<(String, Vec<Value>)>) -> anyhow::Result<()> {
        let mut tx = self.pool.begin().await?;
        for (i, (sql, params)) in statements.iter().enumerate() {
            bind(sqlx::query(sql), params.clone()).execute(&mut *tx).await.with_context(|| format!("statement {i}"))?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await
    }
}

type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

fn bind(mut q: AnyQuery<'_>, params: Vec<Value>) -> AnyQuery<'_> {
    for p in params {
        q = match p {
            Value::Null => q.bind(Option::<String>::None),
            Value::Integer(i) => q.bind(i),
            Value::Real(f) => q.bind(f),
            Value::Text(s) => q.bind(s),
            Value::Blob(b) => q.bind(b),
            Value::Boolean(b) => q.bind(b),
        };
    }
    q
}

fn row_values(row: &AnyRow) -> Result<Vec<Value>, sqlx::Error> {
    (0..row.columns().len())
        .map(|i| {
            let raw = row.try_get_raw(i)?;
            if raw.is_null() {
                return Ok(Value::Null);
            }
            let type_name = raw.type_info().name().to_ascii_uppercase();
            Ok(match type_name.as_str() {
                "BOOLEAN" | "BOOL" => Value::Boolean(row.try_get(i)?),
                "SMALLINT" | "INTEGER" | "INT" | "INT2" | "INT4" | "INT8" | "BIGINT" => Value::Integer(row.try_get(i)?),
                "REAL" | "DOUBLE" | "FLOAT4" | "FLOAT8" | "NUMERIC" => Value::Real(row.try_get(i)?),
                "BLOB" | "BYTEA" => Value::Blob(row.try_get(i)?),
                _ => Value::Text(row.try_get(i)?),
            })
        })
        .collect()
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({:?})", self.backend)
    }
}
