//! The host side of the plugin contract: the state a plugin instance's store carries, and the
//! implementation of every imported interface (`connections`, `session`, `kv`, `timers`,
//! `store`, `config`, `log`). Each call is checked against the calling plugin's namespace and
//! capabilities. The `media` interface is in `host/media.rs`.

mod media;

use super::bindings::Protocol;
use super::bindings::gatewayd::plugin::{auth, config, connections, kv, log, session, store, timers, types};
use super::{Event, Plugin, Services, Session};
use crate::bus::{ConnId, Outbound};
use crate::config::{Capabilities, StoreAccess};
use crate::store::{Access, Value};
use bytes::Bytes;
use std::sync::{Arc, Weak};
use std::time::Duration;
use types::SqlValue;
use wasmtime::ResourceLimiter;
use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// The data of one instance's store.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: MemoryLimiter,
    plugin: Weak<Plugin>,
    name: Arc<str>,
    services: Arc<Services>,
    /// The plugin's own database connections (see `Plugin::store`).
    store: Option<crate::store::Store>,
    store_access: StoreAccess,
    files: Option<crate::config::FilesCapability>,
    issue: Option<crate::config::IssueCapability>,
    config_json: Arc<str>,
    /// The session of the event being run.
    scope: Session,
    /// CPU time the guest used against the current call's limit.
    budget: super::budget::Budget,
}

/// Caps linear memory; remembers a refused growth so the fault can be named.
pub(crate) struct MemoryLimiter {
    pub(crate) max_bytes: usize,
    pub(crate) hit: bool,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.max_bytes {
            self.hit = true;
            return Err(wasmtime::format_err!("memory limit of {} MiB exceeded", self.max_bytes >> 20));
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

impl HostState {
    pub(super) fn new(
        plugin: &Arc<Plugin>,
        memory_mb: u64,
        capabilities: &Capabilities,
        config_json: Arc<str>,
    ) -> HostState {
        HostState {
            wasi: WasiCtx::builder().inherit_stderr().build(),
            table: ResourceTable::new(),
            limiter: MemoryLimiter { max_bytes: (memory_mb as usize) << 20, hit: false },
            plugin: Arc::downgrade(plugin),
            name: plugin.name.clone(),
            services: plugin.services.clone(),
            store: plugin.store.read().clone(),
            store_access: capabilities.store,
            files: capabilities.files.clone(),
            issue: capabilities.issue.clone(),
            config_json,
            scope: Session::default(),
            budget: super::budget::Budget::default(),
        }
    }

    pub(super) fn limiter(&mut self) -> &mut dyn ResourceLimiter {
        &mut self.limiter
    }

    pub(super) fn memory_limit_hit(&self) -> bool {
        self.limiter.hit
    }

    pub(super) fn budget_mut(&mut self) -> &mut super::budget::Budget {
        &mut self.budget
    }

    pub(super) fn begin(&mut self, session: Session) {
        self.scope = session;
    }

    pub(super) fn end(&mut self) -> Session {
        std::mem::take(&mut self.scope)
    }

    /// The plugin this instance belongs to (for host interfaces in sibling modules).
    pub(super) fn plugin(&self) -> Option<Arc<Plugin>> {
        self.plugin.upgrade()
    }

    /// The `files` capability of this plugin version, if granted.
    pub(super) fn files_capability_config(&self) -> Option<&crate::config::FilesCapability> {
        self.files.as_ref()
    }

    /// True when `id` is a connection of this plugin; plugins cannot touch other plugins'
    /// connections.
    fn owns(&self, id: ConnId) -> bool {
        self.services.bus.served_by(id, &self.name)
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// Add WASI (no files, no sockets, no environment) and the gatewayd interfaces.
pub(super) fn add_to_linker(linker: &mut Linker<HostState>) -> anyhow::Result<()> {
    wasmtime_wasi::p2::add_to_linker_async(linker).map_err(|e| anyhow::anyhow!("linking WASI: {e}"))?;
    Protocol::add_to_linker::<HostState, HasSelf<HostState>>(linker, |s| s)
        .map_err(|e| anyhow::anyhow!("linking gatewayd: {e}"))?;
    Ok(())
}

impl types::Host for HostState {}

impl connections::Host for HostState {
    fn send_text(&mut self, id: ConnId, text: String) -> bool {
        self.owns(id) && self.services.bus.send(id, Outbound::Text(Bytes::from(text)))
    }

    fn send_binary(&mut self, id: ConnId, data: Vec<u8>) -> bool {
        self.owns(id) && self.services.bus.send(id, Outbound::Binary(Bytes::from(data)))
    }

    fn close(&mut self, id: ConnId, code: u16, reason: String) {
        if self.owns(id) {
            let code = if (1000..=4999).contains(&code) { code } else { 1011 };
            self.services.bus.send(id, Outbound::Close(code, reason));
        }
    }

    fn bind(&mut self, id: ConnId, address: String) {
        self.services.bus.bind(&self.name, id, &address);
    }

    fn unbind(&mut self, id: ConnId, address: String) {
        self.services.bus.unbind(&self.name, id, &address);
    }

    fn send_to(&mut self, address: String, text: String) -> u32 {
        self.services.bus.send_to(&self.name, &address, Bytes::from(text))
    }

    fn count(&mut self, address: String) -> u32 {
        self.services.bus.count(&self.name, &address)
    }
}

impl session::Host for HostState {
    fn get(&mut self) -> Option<String> {
        self.scope.state.clone()
    }

    fn set(&mut self, state: String) {
        if self.scope.conn.is_some() {
            self.scope.state = Some(state);
        }
    }
}

impl kv::Host for HostState {
    fn get(&mut self, key: String) -> Option<String> {
        self.plugin.upgrade()?.kv.get(&key)
    }

    fn set(&mut self, key: String, value: String, ttl_ms: Option<u32>) {
        if let Some(p) = self.plugin.upgrade() {
            p.kv.set(key, value, ttl_ms);
        }
    }

    fn take(&mut self, key: String) -> Option<String> {
        self.plugin.upgrade()?.kv.take(&key)
    }

    fn compare_and_swap(
        &mut self,
        key: String,
        expected: Option<String>,
        value: Option<String>,
        ttl_ms: Option<u32>,
    ) -> bool {
        self.plugin.upgrade().is_some_and(|p| p.kv.compare_and_swap(key, expected.as_deref(), value, ttl_ms))
    }
}

impl timers::Host for HostState {
    fn set(&mut self, key: String, delay_ms: u32, payload: String, connection: Option<ConnId>) {
        let Some(plugin) = self.plugin.upgrade() else { return };
        if connection.is_some_and(|c| !self.owns(c)) {
            return;
        }
        let weak = self.plugin.clone();
        let fired_key = key.clone();
        let task = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(delay_ms.into())).await;
            let Some(plugin) = weak.upgrade() else { return };
            plugin.timers.fired(&fired_key, tokio::task::id());
            let event = Event::Timer { key: fired_key, payload };
            match connection {
                Some(conn) => {
                    // Dropped when the connection has closed meanwhile.
                    if let Some(cell) = plugin.services.bus.session(conn) {
                        let _ = plugin.dispatch_in_session(conn, &cell, event).await;
                    }
                }
                None => {
                    let (result, _) = plugin.dispatch(event, Session::default()).await;
                    if let Err(fault) = result {
                        tracing::warn!(plugin = %plugin.name, error = %fault, "timer event failed");
                    }
                }
            }
        });
        plugin.timers.arm(key, task.abort_handle());
    }

    fn cancel(&mut self, key: String) -> bool {
        self.plugin.upgrade().is_some_and(|p| p.timers.cancel(&key))
    }
}

impl store::Host for HostState {
    async fn query(&mut self, sql: String, params: Vec<SqlValue>) -> Result<Vec<Vec<SqlValue>>, String> {
        let (db, access) = self.database(&sql)?;
        let rows =
            db.query(&sql, params.into_iter().map(from_wit).collect(), access).await.map_err(|e| e.to_string())?;
        Ok(rows.into_iter().map(|r| r.into_iter().map(to_wit).collect()).collect())
    }

    async fn execute(&mut self, sql: String, params: Vec<SqlValue>) -> Result<u64, String> {
        let (db, access) = self.database(&sql)?;
        db.execute(&sql, params.into_iter().map(from_wit).collect(), access).await.map_err(|e| e.to_string())
    }

    /// Every statement passes [`HostState::database`]'s checks and the plugin needs
    /// read-write access, before anything runs; then the writer runs them as one transaction.
    async fn batch(
        &mut self,
        statements: Vec<store::Statement>,
    ) -> Result<Vec<store::StatementResult>, store::BatchError> {
        let refuse = |index: usize, message: String| store::BatchError { index: index as u32, message };
        if statements.len() > MAX_BATCH_STATEMENTS {
            return Err(refuse(
                MAX_BATCH_STATEMENTS,
                format!("too_many: a batch holds at most {MAX_BATCH_STATEMENTS} statements, not {}", statements.len()),
            ));
        }
        let mut db = None;
        for (i, s) in statements.iter().enumerate() {
            let (store, access) = self.database(&s.sql).map_err(|e| refuse(i, e))?;
            if access != Access::ReadWrite {
                return Err(refuse(
                    i,
                    format!("forbidden: plugin `{}` has store = \"read\"; a batch needs \"read-write\"", self.name),
                ));
            }
            db = Some(store);
        }
        let Some(db) = db else { return Ok(Vec::new()) };
        let statements =
            statements.into_iter().map(|s| (s.sql, s.params.into_iter().map(from_wit).collect())).collect();
        let outcomes = db.execute_in_transaction(statements).await.map_err(|(i, e)| refuse(i, e.to_string()))?;
        Ok(outcomes
            .into_iter()
            .map(|o| store::StatementResult {
                rows: o.rows.into_iter().map(|r| r.into_iter().map(to_wit).collect()).collect(),
                affected: o.affected,
            })
            .collect())
    }
}

/// Statements in one `store.batch`, at most (`too_many` beyond): a batch holds the writer (on
/// SQLite, the database's only writer) until it commits.
const MAX_BATCH_STATEMENTS: usize = 64;

impl HostState {
    /// The database and what this plugin's `store` capability allows, if `sql` may be run for
    /// it at all: one statement, not one that would change the daemon's connections.
    fn database(&self, sql: &str) -> Result<(crate::store::Store, Access), String> {
        let access = match self.store_access {
            StoreAccess::None => return Err(format!("forbidden: plugin `{}` has no store capability", self.name)),
            StoreAccess::Read => Access::Read,
            StoreAccess::ReadWrite => Access::ReadWrite,
        };
        let shape = crate::store::sql::shape(sql);
        if !shape.single {
            return Err("one_statement: send one statement per call (no `;` but at the end, nothing left open)".into());
        }
        if crate::store::plugin_schema::FORBIDDEN.contains(&shape.head.as_str()) {
            return Err(format!(
                "forbidden: `{}` statements are not available to plugins: they would change the daemon's shared \
                 connections (each statement commits on its own)",
                shape.head
            ));
        }
        let db = self.store.clone().ok_or_else(|| "no database is configured".to_string())?;
        Ok((db, access))
    }
}

fn from_wit(v: SqlValue) -> Value {
    match v {
        SqlValue::Null => Value::Null,
        SqlValue::Integer(i) => Value::Integer(i),
        SqlValue::Real(f) => Value::Real(f),
        SqlValue::Text(s) => Value::Text(s),
        SqlValue::Blob(b) => Value::Blob(b),
        SqlValue::Boolean(b) => Value::Boolean(b),
    }
}

fn to_wit(v: Value) -> SqlValue {
    match v {
        Value::Null => SqlValue::Null,
        Value::Integer(i) => SqlValue::Integer(i),
        Value::Real(f) => SqlValue::Real(f),
        Value::Text(s) => SqlValue::Text(s),
        Value::Blob(b) => SqlValue::Blob(b),
        Value::Boolean(b) => SqlValue::Boolean(b),
    }
}

impl config::Host for HostState {
    fn get(&mut self) -> String {
        self.config_json.to_string()
    }
}

impl auth::Host for HostState {
    fn verify(&mut self, token: String) -> Result<String, String> {
        match self.services.jwt.verify(&token, Some(&self.name)) {
            Ok(claims) => Ok(serde_json::Value::Object(claims).to_string()),
            Err(e) => Err(format!("{}: {e}", e.code())),
        }
    }

    /// Needs `capabilities.issue`: only its claim names, at most its lifetime, always its
    /// audience.
    fn issue(&mut self, claims: String, ttl_secs: u32) -> Result<String, String> {
        let Some(cap) = &self.issue else {
            return Err(format!("forbidden: plugin `{}` has no `issue` capability", self.name));
        };
        let Ok(serde_json::Value::Object(claims)) = serde_json::from_str(&claims) else {
            return Err("bad_claims: claims must be a JSON object".into());
        };
        if let Some(name) = claims.keys().find(|k| !cap.claims.contains(k)) {
            return Err(format!("bad_claims: `{name}` is not among capabilities.issue.claims"));
        }
        if ttl_secs > cap.max_ttl_secs {
            return Err(format!("bad_ttl: at most {} s (capabilities.issue.max_ttl_secs)", cap.max_ttl_secs));
        }
        self.services.jwt.issue(claims, ttl_secs, &cap.audience)
    }
}

impl log::Host for HostState {
    fn log(&mut self, level: log::Level, message: String) {
        let plugin = &*self.name;
        match level {
            log::Level::Trace => tracing::trace!(plugin, "{message}"),
            log::Level::Debug => tracing::debug!(plugin, "{message}"),
            log::Level::Info => tracing::info!(plugin, "{message}"),
            log::Level::Warn => tracing::warn!(plugin, "{message}"),
            log::Level::Error => tracing::error!(plugin, "{message}"),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn read_capability_allows_one_select() {
        assert!(crate::store::is_single_read(" select 1;"));
        assert!(crate::store::is_single_read("WITH x AS (SELECT 1) SELECT * FROM x"));
        assert!(!crate::store::is_single_read("SELECT 1; DELETE FROM agents"));
        assert!(!crate::store::is_single_read("DELETE FROM agents"));
    }

    #[test]
    fn connection_statements_are_listed_by_head() {
        for sql in [" begin immediate", "COMMIT;", "savepoint a", "/**/COMMIT", "-- x\nPRAGMA query_only = OFF"] {
            let head = crate::store::sql::shape(sql).head;
            assert!(crate::store::plugin_schema::FORBIDDEN.contains(&head.as_str()), "{sql}");
        }
        for sql in ["INSERT INTO ended (x) VALUES (1)", "SELECT 1", "WITH d AS (DELETE FROM t) SELECT 1"] {
            let head = crate::store::sql::shape(sql).head;
            assert!(!crate::store::plugin_schema::FORBIDDEN.contains(&head.as_str()), "{sql}");
        }
    }
}
