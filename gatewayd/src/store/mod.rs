//! Storage (DESIGN section 6): one sqlx code path for SQLite (default, WAL, a file under the
//! state directory) and PostgreSQL. Migrations live in `migrations/<backend>/` and are compiled
//! into the binary; they run at start-up and with `gatewayd migrate`.
//!
//! SQL uses `$1`, `$2`, ... placeholders, which both backends accept.
//!
//! On SQLite, reads use the pool and writes go through one connection with group commit
//! ([`writer`]); on PostgreSQL every statement uses the pool.

pub mod tenants;
pub mod writer;

use anyhow::Context;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyConnection, AnyPool, Connection, Row, TypeInfo, ValueRef};
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
    /// Writes (anything but one `SELECT`/`WITH`) go through group commit: one write connection
    /// on SQLite, [`postgres_writers`] on PostgreSQL.
    writer: writer::Writer,
}

/// SQLite settings of every connection. Pages are read through a memory map (no copy per
/// read; the OS page cache is shared by all connections).
const SQLITE_PRAGMAS: [&str; 5] = [
    "PRAGMA journal_mode = WAL",
    "PRAGMA busy_timeout = 5000",
    "PRAGMA foreign_keys = ON",
    "PRAGMA synchronous = NORMAL",
    "PRAGMA mmap_size = 268435456",
];

/// SQLite settings of the write connection: it never checkpoints; [`checkpoint_loop`] does, on
/// another connection, so copying the WAL into the database never stalls a write.
const SQLITE_WRITER_PRAGMAS: [&str; 1] = ["PRAGMA wal_autocheckpoint = 0"];

/// PostgreSQL write connections (group-commit writer tasks) beside a pool of `max_connections`:
/// half as many, at least one. Several batches commit in parallel, each with one WAL flush.
pub fn postgres_writers(max_connections: u32) -> u32 {
    (max_connections / 2).max(1)
}

/// Whether a statement run with `params` may be cached as a prepared statement. On PostgreSQL a
/// prepared statement keeps the parameter types of its first use, and a NULL is sent typed as
/// text: a statement first run with a NULL and cached would later misread an integer in that
/// slot. Statements with a NULL parameter are therefore not cached there; the others are.
fn may_cache(backend: Backend, params: &[Value]) -> bool {
    !(backend == Backend::Postgres && params.contains(&Value::Null))
}

/// How often the WAL is copied into the database (SQLite).
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// A single `SELECT`/`WITH` statement (a `;` is only allowed at the very end).
pub fn is_single_read(sql: &str) -> bool {
    let s = sql.trim().trim_end_matches(';');
    let head = s.split_whitespace().next().unwrap_or("").to_ascii_uppercase();
    (head == "SELECT" || head == "WITH") && !s.contains(';')
}

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

impl Store {
    /// Connect to `url` (`sqlite://<path>`, relative to `state_dir`, or `postgres://...`).
    /// SQLite files are created when missing and opened in WAL mode with foreign keys on;
    /// SQLite gets `max_connections` read connections plus one write connection; PostgreSQL a
    /// pool of `max_connections` plus [`postgres_writers`] write connections.
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
            // A SQLite connection is a file handle: a ping before each use is a wasted round
            // trip to its worker thread.
            .test_before_acquire(backend == Backend::Postgres)
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        sqlite_pragmas(conn).await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await
            .with_context(|| format!("connecting to the {backend:?} database"))?;
        let writer = match backend {
            Backend::Sqlite => {
                let mut conn = AnyConnection::connect(&url).await.context("opening the SQLite write connection")?;
                sqlite_pragmas(&mut conn).await?;
                for pragma in SQLITE_WRITER_PRAGMAS {
                    sqlx::query(pragma).execute(&mut conn).await?;
                }
                tokio::spawn(checkpoint_loop(pool.clone()));
                writer::Writer::spawn(vec![conn], backend, None)
            }
            Backend::Postgres => {
                let mut conns = Vec::new();
                for _ in 0..postgres_writers(max_connections) {
                    conns.push(AnyConnection::connect(&url).await.context("opening a PostgreSQL write connection")?);
                }
                writer::Writer::spawn(conns, backend, Some(url.clone()))
            }
        };
        Ok(Store { pool, backend, writer })
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

    /// Run a query; each row is its column values in select order. A write (anything but one
    /// `SELECT`/`WITH`) has committed when this returns.
    pub async fn query(&self, sql: &str, params: Vec<Value>) -> Result<Vec<Vec<Value>>, sqlx::Error> {
        if !is_single_read(sql) {
            return Ok(self.writer.write(sql, params).await?.rows);
        }
        let rows = self.prepare(sql, &params).fetch_all(&self.pool).await?;
        rows.iter().map(row_values).collect()
    }

    /// Run a statement; returns the number of rows affected, after it committed.
    pub async fn execute(&self, sql: &str, params: Vec<Value>) -> Result<u64, sqlx::Error> {
        if !is_single_read(sql) {
            return Ok(self.writer.write(sql, params).await?.affected);
        }
        Ok(self.prepare(sql, &params).execute(&self.pool).await?.rows_affected())
    }

    /// Bind `params` to `sql` (cached as a prepared statement when [`may_cache`] allows).
    fn prepare<'q>(&self, sql: &'q str, params: &'q [Value]) -> AnyQuery<'q> {
        bind(sqlx::query(sql).persistent(may_cache(self.backend, params)), params)
    }

    /// Run statements in one transaction; the first failure rolls all of them back and is
    /// returned with the index of the failing statement.
    pub async fn execute_in_transaction(&self, statements: Vec<(String, Vec<Value>)>) -> anyhow::Result<()> {
        let mut tx = self.pool.begin().await?;
        for (i, (sql, params)) in statements.iter().enumerate() {
            bind(sqlx::query(sql), params).execute(&mut *tx).await.with_context(|| format!("statement {i}"))?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await
    }
}

/// Checkpoint the WAL every [`CHECKPOINT_EVERY`] on a pool connection. `PASSIVE` copies what
/// it can without blocking the writer or readers; the writer restarts the WAL file once it has
/// all been copied. Ends when the pool is closed.
async fn checkpoint_loop(pool: AnyPool) {
    let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !pool.is_closed() {
        tick.tick().await;
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").execute(&pool).await {
            if pool.is_closed() {
                break;
            }
            tracing::warn!(error = %e, "WAL checkpoint failed");
        }
    }
}

async fn sqlite_pragmas(conn: &mut AnyConnection) -> Result<(), sqlx::Error> {
    for pragma in SQLITE_PRAGMAS {
        sqlx::query(pragma).execute(&mut *conn).await?;
    }
    Ok(())
}

type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

/// Bind `params` in order; text and blobs are bound by reference, not copied.
fn bind<'q>(mut q: AnyQuery<'q>, params: impl IntoIterator<Item = &'q Value>) -> AnyQuery<'q> {
    for p in params {
        q = match p {
            Value::Null => q.bind(Option::<&str>::None),
            Value::Integer(i) => q.bind(*i),
            Value::Real(f) => q.bind(*f),
            Value::Text(s) => q.bind(s.as_str()),
            Value::Blob(b) => q.bind(b.as_slice()),
            Value::Boolean(b) => q.bind(*b),
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
