//! Storage (DESIGN section 6): one sqlx code path for SQLite (default, WAL, a file under the
//! state directory) and PostgreSQL. The daemon's migrations live in `migrations/<backend>/` and
//! are compiled into the binary; they run at start-up and with `gatewayd migrate`. Plugins ship
//! their own, applied when the plugin loads ([`plugin_schema`]).
//!
//! SQL uses `$1`, `$2`, ... placeholders, which both backends accept.
//!
//! Reads (one `SELECT`/`WITH` statement) use the pool; writes go through group commit
//! ([`writer`]): one write connection on SQLite, a few on PostgreSQL.
//!
//! The pool's connections are read-only at the database, so a statement that only looks like a
//! read cannot write (`WITH d AS (DELETE ...) SELECT ...`): SQLite runs them with
//! `PRAGMA query_only`, PostgreSQL with `default_transaction_read_only` (and every session
//! setting a statement changed, e.g. with `set_config`, is reset when the connection returns to
//! the pool). Every statement, read or write, has a time limit
//! (`[storage] statement_timeout_ms`): PostgreSQL's `statement_timeout`, and on SQLite an
//! interrupt from a progress handler ([`deadline`]). An expired statement is cancelled at the
//! database and fails with [`StoreError::Timeout`].

pub mod authorizer;
pub mod deadline;
pub mod plugin_schema;
pub mod roles;
pub mod sql;
pub mod tenants;
pub mod writer;

use anyhow::Context;
use futures_util::TryStreamExt;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyConnection, AnyPool, Connection, Executor, Row, TypeInfo, ValueRef};
use std::path::Path;
use std::sync::Arc;

/// Which database the pool talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// What a caller may do with [`Store::query`] and [`Store::execute`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Reads only: anything but one `SELECT`/`WITH` is refused, and the statement runs on a
    /// connection the database keeps read-only.
    Read,
    ReadWrite,
}

/// Why a statement failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The statement ran longer than `[storage] statement_timeout_ms` and was cancelled at the
    /// database; nothing it did was kept.
    #[error("statement_timeout: the statement ran longer than {} ms and was cancelled", .0.map_or(0, |d| d.as_millis()))]
    Timeout(Option<std::time::Duration>),
    /// A write with read access (refused before it ran, or by the database).
    #[error("read_only: this statement writes, and only reads are allowed")]
    ReadOnly,
    /// The database refused a table or action the statement's plugin has no right to (another
    /// plugin's tables, a daemon table, a schema change outside a migration): SQLite's
    /// authorizer, PostgreSQL's privileges (docs/security.md "Plugin tables").
    #[error("forbidden: the database refused it for this plugin ({0})")]
    Forbidden(String),
    #[error("{0}")]
    Database(#[from] sqlx::Error),
}

impl StoreError {
    /// The database's own error, when it is one (constraint violations and the like).
    pub fn as_database_error(&self) -> Option<&dyn sqlx::error::DatabaseError> {
        match self {
            StoreError::Database(e) => e.as_database_error(),
            _ => None,
        }
    }
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
    /// Read-only connections (see the module docs).
    pool: AnyPool,
    backend: Backend,
    /// The URL migrations connect to (PostgreSQL: without the pool's settings).
    url: String,
    statement_timeout: Option<std::time::Duration>,
    /// Writes (anything but one `SELECT`/`WITH`) go through group commit: one write connection
    /// on SQLite, [`postgres_writers`] on PostgreSQL.
    writer: writer::Writer,
    /// The plugin this store's connections run statements for ([`Store::for_plugin`]); `None`:
    /// the daemon's own store.
    plugin: Option<Arc<str>>,
    /// Read connections at most (scoped stores get as many).
    max_connections: u32,
    /// SQLite: taken by every writer of this database around its transactions (the daemon's
    /// and each plugin's), so writers queue here rather than in SQLite's sleeping busy handler.
    write_lock: Arc<tokio::sync::Mutex<()>>,
    /// PostgreSQL: the URL write connections use (the login, start-up settings).
    writer_url: Option<String>,
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

/// PostgreSQL: back to the session's start-up settings (`statement_timeout`, read-only) and
/// no advisory locks held. Simple query protocol (two statements).
const RESET_SESSION: &str = "RESET ALL; SELECT pg_advisory_unlock_all()";

/// How often the WAL is copied into the database (SQLite).
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// A single `SELECT`/`WITH` statement (a `;` is only allowed at the very end). Routing only:
/// such a statement runs on the read-only pool, which refuses it if it writes.
pub fn is_single_read(sql: &str) -> bool {
    let shape = sql::shape(sql);
    shape.single && (shape.head == "SELECT" || shape.head == "WITH")
}

/// The daemon's migrations. Versions 2 to 6 were chat's and rooms' tables; they moved into those
/// plugins ([`plugin_schema`]) and are missing here on purpose: a database that applied them
/// keeps them, and version 7 records them in the plugins' ledger.
fn migrator(backend: Backend) -> sqlx::migrate::Migrator {
    let mut migrator = match backend {
        Backend::Sqlite => sqlx::migrate!("../migrations/sqlite"),
        Backend::Postgres => sqlx::migrate!("../migrations/postgres"),
    };
    migrator.set_ignore_missing(true);
    migrator
}

impl Store {
    /// Connect to `url` (`sqlite://<path>`, relative to `state_dir`, or `postgres://...`).
    /// SQLite files are created when missing and opened in WAL mode with foreign keys on;
    /// SQLite gets `max_connections` read connections plus one write connection; PostgreSQL a
    /// pool of `max_connections` plus [`postgres_writers`] write connections. Statements run
    /// longer than `statement_timeout` are cancelled (`None`: no limit).
    pub async fn connect(
        url: &str,
        state_dir: &Path,
        max_connections: u32,
        statement_timeout: Option<std::time::Duration>,
    ) -> anyhow::Result<Store> {
        sqlx::any::install_default_drivers();
        deadline::install();
        authorizer::install();
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
        let base = Base { backend, url, max_connections, statement_timeout, write_lock: Arc::default() };
        let daemon_url = base.url.clone();
        let store = base.open(None, &daemon_url, postgres_writers(max_connections)).await?;
        deadline::set_limit(statement_timeout);
        Ok(store)
    }

    /// A store whose connections run statements for `plugin`, with the rights the database
    /// gives it: its own tables and reads of the shared tenant tables (docs/security.md
    /// "Plugin tables"). SQLite: connections of its own whose authorizer knows the plugin
    /// ([`authorizer`]), sharing the database's write lock. PostgreSQL: connections logged in
    /// as the plugin's role, with its schema first on the search path ([`roles`]); the role
    /// and schema are created (or checked) first, which needs `CREATEROLE`.
    pub async fn for_plugin(&self, plugin: &str) -> anyhow::Result<Store> {
        let base = self.base();
        match self.backend {
            Backend::Sqlite => {
                plugin_schema::adopt_legacy_sqlite(self, plugin).await?;
                base.open(Some(plugin.into()), &self.url, 1).await
            }
            Backend::Postgres => {
                let login = roles::provision(self, plugin).await?;
                let writers = (postgres_writers(self.max_connections) / 2).max(1);
                base.open(Some(plugin.into()), &login.url, writers).await.with_context(|| {
                    format!("connecting as the role `{}` of plugin `{plugin}` (docs/operating.md)", login.role)
                })
            }
        }
    }

    fn base(&self) -> Base {
        Base {
            backend: self.backend,
            url: self.url.clone(),
            max_connections: self.max_connections,
            statement_timeout: self.statement_timeout,
            write_lock: self.write_lock.clone(),
        }
    }

    /// The plugin this store runs statements for (`None`: the daemon).
    pub fn plugin(&self) -> Option<&str> {
        self.plugin.as_deref()
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Apply pending migrations of this backend, on a connection of their own with no
    /// statement time limit (a migration may rewrite a large table). Run it at start-up, before
    /// anything else uses the store: on SQLite the limit is lifted process-wide meanwhile.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        let migrator = migrator(self.backend);
        deadline::set_limit(None);
        let result = async {
            let mut conn = AnyConnection::connect(&self.url).await.context("opening the migration connection")?;
            if self.backend == Backend::Sqlite {
                sqlite_pragmas(&mut conn).await?;
            }
            migrator.run(&mut conn).await.context("applying migrations")?;
            if self.backend == Backend::Sqlite {
                let tables: Vec<String> =
                    sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")
                        .fetch_all(&mut conn)
                        .await?;
                let rows = sqlx::query("SELECT name, plugin FROM plugin_objects").fetch_all(&mut conn).await?;
                let owners =
                    rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect::<Result<Vec<_>, sqlx::Error>>()?;
                authorizer::load(tables, owners);
            }
            conn.close().await?;
            anyhow::Ok(())
        }
        .await;
        deadline::set_limit(self.statement_timeout);
        result
    }

    /// Run a query; each row is its column values in select order. A write (anything but one
    /// `SELECT`/`WITH`) has committed when this returns. A statement that looks like a read but
    /// writes is refused by the read-only pool and, with `access` [`Access::ReadWrite`], run
    /// again by the writer.
    pub async fn query(&self, sql: &str, params: Vec<Value>, access: Access) -> Result<Vec<Vec<Value>>, StoreError> {
        Ok(self.run(sql, params, access).await?.rows)
    }

    /// Run a statement; returns the number of rows affected, after it committed (see
    /// [`Store::query`]).
    pub async fn execute(&self, sql: &str, params: Vec<Value>, access: Access) -> Result<u64, StoreError> {
        Ok(self.run(sql, params, access).await?.affected)
    }

    async fn run(&self, sql: &str, params: Vec<Value>, access: Access) -> Result<writer::Outcome, StoreError> {
        if is_single_read(sql) {
            match self.read(sql, &params).await {
                Err(e) if access == Access::ReadWrite && self.is_read_only_violation(&e) => {}
                other => return other.map_err(|e| self.error(e)),
            }
        } else if access == Access::Read {
            return Err(StoreError::ReadOnly);
        }
        self.writer.write(sql, params).await.map_err(|e| self.error(e))
    }

    async fn read(&self, sql: &str, params: &[Value]) -> Result<writer::Outcome, sqlx::Error> {
        let mut conn = self.pool.acquire().await?;
        let mut outcome = writer::Outcome::default();
        let mut results = conn.fetch_many(self.prepare(sql, params));
        while let Some(item) = results.try_next().await? {
            match item {
                sqlx::Either::Right(row) => outcome.rows.push(row_values(&row)?),
                sqlx::Either::Left(done) => outcome.affected += done.rows_affected(),
            }
        }
        Ok(outcome)
    }

    /// The database refused a write on a read-only connection (SQLite `SQLITE_READONLY`,
    /// PostgreSQL `25006 read_only_sql_transaction`).
    fn is_read_only_violation(&self, e: &sqlx::Error) -> bool {
        let code = e.as_database_error().and_then(|d| d.code()).unwrap_or_default();
        match self.backend {
            Backend::Sqlite => code.parse::<i32>().is_ok_and(|c| c & 0xff == 8),
            Backend::Postgres => code == "25006",
        }
    }

    fn error(&self, e: sqlx::Error) -> StoreError {
        let code = e.as_database_error().and_then(|d| d.code()).unwrap_or_default();
        match self.backend {
            Backend::Sqlite if deadline::is_interrupt(&e) => StoreError::Timeout(self.statement_timeout),
            Backend::Postgres if code == "57014" => StoreError::Timeout(self.statement_timeout),
            _ if self.is_read_only_violation(&e) => StoreError::ReadOnly,
            Backend::Sqlite if code.parse::<i32>().is_ok_and(|c| c & 0xff == 23) => forbidden(&e),
            Backend::Postgres if code == "42501" => forbidden(&e),
            _ => StoreError::Database(e),
        }
    }

    /// Bind `params` to `sql` (cached as a prepared statement when [`may_cache`] allows).
    fn prepare<'q>(&self, sql: &'q str, params: &'q [Value]) -> AnyQuery<'q> {
        bind(sqlx::query(sql).persistent(may_cache(self.backend, params)), params)
    }

    /// Run statements in one transaction on the writer (SQLite `BEGIN IMMEDIATE`; PostgreSQL
    /// `BEGIN`, READ COMMITTED); returns each statement's rows and changed-row count after the
    /// commit. The first failure rolls all of them back and is returned with the index of the
    /// failing statement (0-based).
    pub async fn execute_in_transaction(
        &self,
        statements: Vec<(String, Vec<Value>)>,
    ) -> Result<Vec<writer::Outcome>, (usize, StoreError)> {
        self.writer.transaction(statements).await.map_err(|(i, e)| (i, self.error(e)))
    }

    pub async fn close(&self) {
        self.pool.close().await
    }
}

/// What opening connections to the daemon's database needs (shared by the daemon's store and
/// the plugins' scoped ones).
struct Base {
    backend: Backend,
    /// The daemon's URL (SQLite: the file, `mode=rwc`).
    url: String,
    max_connections: u32,
    statement_timeout: Option<std::time::Duration>,
    write_lock: Arc<tokio::sync::Mutex<()>>,
}

impl Base {
    /// Open a store's connections at `connect_url` (a plugin's role on PostgreSQL), running
    /// statements for `plugin` (`None`: the daemon). PostgreSQL gets `pg_writers` write
    /// connections.
    async fn open(self, plugin: Option<Arc<str>>, connect_url: &str, pg_writers: u32) -> anyhow::Result<Store> {
        let backend = self.backend;
        // PostgreSQL settings go in the start-up packet: they are the session defaults that
        // `RESET ALL` returns to. A plugin's schema comes first on its search path.
        let timeout_ms = self.statement_timeout.map_or(0, |d| d.as_millis().max(1));
        let with_options = |options: &[(&str, String)]| {
            let mut u = connect_url.to_string();
            for (i, (k, v)) in options.iter().enumerate() {
                let sep = if i == 0 && !connect_url.contains('?') { '?' } else { '&' };
                u.push_str(&format!("{sep}options[{k}]={v}"));
            }
            u
        };
        let (read_url, write_url) = match backend {
            Backend::Sqlite => (connect_url.to_string(), connect_url.to_string()),
            Backend::Postgres => {
                let mut common = vec![("statement_timeout", timeout_ms.to_string())];
                if let Some(p) = &plugin {
                    common.push(("search_path", format!("{}%2Cpublic", roles::schema(p))));
                }
                let mut read = common.clone();
                read.push(("default_transaction_read_only", "on".to_string()));
                (with_options(&read), with_options(&common))
            }
        };
        let identity = plugin.clone();
        let pool = AnyPoolOptions::new()
            .max_connections(self.max_connections)
            // A SQLite connection is a file handle: a ping before each use is a wasted round
            // trip to its worker thread.
            .test_before_acquire(backend == Backend::Postgres)
            .after_connect(move |conn, _meta| {
                let identity = identity.clone();
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        sqlite_pragmas(conn).await?;
                        sqlx::query("PRAGMA query_only = ON").execute(&mut *conn).await?;
                        if let Some(p) = &identity {
                            set_identity(conn, p, authorizer::MODE_PLUGIN).await?;
                        }
                    }
                    Ok(())
                })
            })
            .after_release(move |conn, _meta| {
                Box::pin(async move {
                    // Undo what a statement may have changed in the session: settings
                    // (`set_config(...)`), advisory locks. Simple query protocol.
                    if backend == Backend::Postgres {
                        conn.execute(RESET_SESSION).await?;
                    }
                    Ok(true)
                })
            })
            .connect(&read_url)
            .await
            .with_context(|| format!("connecting to the {backend:?} database"))?;
        let writer = match backend {
            Backend::Sqlite => {
                let mut conn =
                    AnyConnection::connect(connect_url).await.context("opening the SQLite write connection")?;
                sqlite_pragmas(&mut conn).await?;
                for pragma in SQLITE_WRITER_PRAGMAS {
                    sqlx::query(pragma).execute(&mut conn).await?;
                }
                match &plugin {
                    Some(p) => set_identity(&mut conn, p, authorizer::MODE_PLUGIN).await?,
                    None => {
                        // The daemon's store checkpoints the WAL for everyone.
                        tokio::spawn(checkpoint_loop(pool.clone()));
                    }
                }
                writer::Writer::spawn(vec![conn], backend, None, Some(self.write_lock.clone()))
            }
            Backend::Postgres => {
                let mut conns = Vec::new();
                for _ in 0..pg_writers {
                    conns.push(
                        AnyConnection::connect(&write_url).await.context("opening a PostgreSQL write connection")?,
                    );
                }
                writer::Writer::spawn(conns, backend, Some(write_url.clone()), None)
            }
        };
        Ok(Store {
            pool,
            backend,
            url: self.url,
            statement_timeout: self.statement_timeout,
            writer,
            plugin,
            max_connections: self.max_connections,
            write_lock: self.write_lock,
            writer_url: (backend == Backend::Postgres).then_some(write_url),
        })
    }
}

fn forbidden(e: &sqlx::Error) -> StoreError {
    StoreError::Forbidden(e.as_database_error().map_or_else(|| e.to_string(), |d| d.message().to_string()))
}

/// SQLite: make `conn` run its statements for `plugin` ([`authorizer`]).
async fn set_identity(conn: &mut AnyConnection, plugin: &str, mode: i64) -> Result<(), sqlx::Error> {
    sqlx::query(authorizer::SET_IDENTITY)
        .bind(authorizer::key())
        .bind(plugin)
        .bind(mode)
        .execute(&mut *conn)
        .await
        .map(|_| ())
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
