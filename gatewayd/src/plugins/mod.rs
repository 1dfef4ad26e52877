//! The Wasm plugin runtime (DESIGN sections 2 and 3).
//!
//! Mechanism, chosen by measurement (docs/architecture.md): each plugin version keeps a pool of
//! warm instances. An event takes an idle instance (or instantiates one from the pre-linked
//! `InstancePre`), hands it the session state, runs under a CPU-time budget (plugins/budget.rs) and a memory cap, and
//! gives the instance back. An instance that traps, runs out of time or memory is dropped; the
//! next event gets a fresh one. Because session state lives in the host (property 1), any warm
//! instance serves any session, and a new version can take over between two events (property 2).
//!
//! Hot reload (property 2): [`Runtime::reload`] builds a new [`Version`] off the hot path
//! (compile on a blocking thread, link, run `init` on a fresh instance) and swaps it in
//! atomically; events already running finish on the old version, the next event uses the new
//! one. A version that fails any step is rejected and counted; the old one keeps serving.
//!
//! Ordering (property 4) is the caller's job: a connection runs its events one after another
//! under its session lock (`server::websocket`), while different connections dispatch
//! concurrently on all runtime threads.

mod bindings;
mod budget;
pub(crate) mod host;
#[doc(hidden)]
pub mod host_files;
mod kv;
pub mod stats;
mod timers;

use crate::bus::{Bus, ConnId, Outbound, SessionCell};
use crate::config::{Capabilities, PluginConfig, PluginLimits};
use crate::store::Store;
use anyhow::Context;
use bindings::Protocol;
pub use bindings::exports::gatewayd::plugin::handler::{ConnectInfo, HttpRequest, HttpResponse};
use host::HostState;
use parking_lot::{Mutex, RwLock};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::Semaphore;
use wasmtime::component::{Component, Linker};
use wasmtime::{Engine, Store as WasmStore};

use budget::{Budget, EPOCH_TICK, INSTANTIATE_LIMIT, Verdict};

/// An event delivered to a plugin.
#[derive(Debug)]
pub enum Event {
    Open(ConnectInfo),
    Text(ConnId, String),
    Binary(ConnId, Vec<u8>),
    Close(ConnId, u16),
    Timer { key: String, payload: String },
    Http(HttpRequest),
    // A media event of a call on a media route.
    Media(ConnId, crate::media::MediaEvent),
}

impl Event {
    /// The event's kind (`open`, `text`, ...) and its connection, if it has one (for logs).
    fn describe(&self) -> (&'static str, Option<ConnId>) {
        match self {
            Event::Open(info) => ("open", Some(info.id)),
            Event::Text(id, _) => ("text", Some(*id)),
            Event::Binary(id, _) => ("binary", Some(*id)),
            Event::Close(id, _) => ("close", Some(*id)),
            Event::Timer { .. } => ("timer", None),
            Event::Http(_) => ("http", None),
            Event::Media(id, _) => ("media", Some(*id)),
        }
    }
}

/// Why an event did not complete. The daemon and other sessions are unaffected.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum Fault {
    #[error("plugin trapped: {0}")]
    Trap(String),
    #[error("plugin exceeded its time limit of {0} ms")]
    Timeout(u64),
    #[error("plugin exceeded its memory limit of {0} MiB")]
    Memory(u64),
    #[error("plugin could not be instantiated: {0}")]
    Instantiate(String),
}

impl Fault {
    /// Stable code for error messages sent to clients.
    pub fn code(&self) -> &'static str {
        match self {
            Fault::Trap(_) => "plugin_trap",
            Fault::Timeout(_) => "plugin_timeout",
            Fault::Memory(_) => "plugin_memory",
            Fault::Instantiate(_) => "plugin_unavailable",
        }
    }
}

/// The state of the session an event belongs to, moved into the event and back out.
#[derive(Debug, Default)]
pub struct Session {
    pub conn: Option<ConnId>,
    pub state: Option<String>,
}

/// Daemon services the host interfaces use.
pub struct Services {
    pub bus: Arc<Bus>,
    pub store: Option<Store>,
    pub jwt: Arc<crate::auth::Keys>,
    pub metrics: Arc<stats::Metrics>,
    /// The media engine (calls on media routes).
    pub media: Arc<crate::media::MediaEngine>,
    /// Speech on calls, and the speech provider plugins (`speech::Calls`, `speech::Providers`).
    pub speech: Arc<crate::speech::Calls>,
}

/// One compiled, linked and initialised version of a plugin: its component and everything
/// from the config that a reload may change.
struct Version {
    pre: bindings::ProtocolPre<HostState>,
    /// The component's `schema` export, when it has one (its own tables).
    schema: Option<bindings::schema_owner::SchemaOwnerIndices>,
    /// The component's `speech-handler` export, when it has one (speech events of calls).
    speech: Option<bindings::speech_listener::SpeechListenerIndices>,
    idle: Mutex<Vec<Warm>>,
    running: Semaphore,
    limits: PluginLimits,
    capabilities: Capabilities,
    /// The plugin's config table as JSON (`config.get`).
    config_json: Arc<str>,
    /// CPU time the plugin's own code may use per event or `init` (`event_timeout_ms`).
    event_limit: Duration,
    /// How a connection is told of a fault (`[plugins.<name>] fault_report`).
    fault_report: crate::config::FaultReport,
    /// Identity of this version: the component file and config it was built from.
    info: VersionInfo,
}

/// What identifies and describes a loaded version (shown by `/metrics` and `gatewayd plugins`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionInfo {
    pub file: PathBuf,
    /// First 12 hex digits of the SHA-256 of the component file.
    pub hash: String,
    /// SHA-256 (12 hex digits) of the config table, limits and capabilities.
    pub config_hash: String,
    pub loaded_at: SystemTime,
}

fn short_hash(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().take(6).map(|b| format!("{b:02x}")).collect()
}

fn config_hash(config: &PluginConfig) -> String {
    short_hash(
        format!("{:?}|{:?}|{:?}|{:?}", config.config, config.limits, config.capabilities, config.fault_report)
            .as_bytes(),
    )
}

struct Warm {
    store: WasmStore<HostState>,
    instance: wasmtime::component::Instance,
    bindings: Protocol,
    /// The `speech-handler` export, when the component has one.
    speech: Option<bindings::speech_listener::SpeechListener>,
}

/// A named plugin: its current version plus what outlives versions (kv, timers, stats).
pub struct Plugin {
    name: Arc<str>,
    current: RwLock<Arc<Version>>,
    kv: kv::Kv,
    timers: timers::Timers,
    services: Arc<Services>,
    /// The plugin's own connections to the database, with its rights
    /// ([`Store::for_plugin`]); opened when a version with the `store` capability loads.
    store: RwLock<Option<Store>>,
    engine: Engine,
    stats: stats::PluginStats,
}

/// All loaded plugins, sharing one engine and linker.
pub struct Runtime {
    engine: Engine,
    linker: Linker<HostState>,
    /// By name; a reload adds and removes entries.
    plugins: RwLock<HashMap<String, Arc<Plugin>>>,
    services: Arc<Services>,
}

impl Runtime {
    /// Build the engine and host linker, then load every configured plugin. Each plugin is
    /// compiled, linked and its `init` run on a fresh instance; any failure stops start-up.
    pub async fn load(configs: &BTreeMap<String, PluginConfig>, services: Arc<Services>) -> anyhow::Result<Runtime> {
        let mut cfg = wasmtime::Config::new();
        cfg.epoch_interruption(true).wasm_component_model(true);
        let engine = Engine::new(&cfg).map_err(|e| anyhow::anyhow!("wasmtime engine: {e}"))?;
        start_epoch_ticker(&engine);
        let mut linker = Linker::new(&engine);
        host::add_to_linker(&mut linker)?;
        let rt = Runtime { engine, linker, plugins: RwLock::new(HashMap::new()), services };
        for (name, config) in configs {
            if is_provider(config).await {
                rt.load_provider(name, config).await?;
                continue;
            }
            let plugin = rt.load_plugin(name, config).await?;
            rt.plugins.write().insert(name.clone(), plugin);
        }
        Ok(rt)
    }

    /// Load (or reload) speech provider `name` from `config` into the speech registry
    /// (`speech::Providers`): compiled, linked and its `init` run before it replaces the
    /// version serving; streams already running keep theirs. Returns whether it changed.
    async fn load_provider(&self, name: &str, config: &PluginConfig) -> anyhow::Result<bool> {
        let started = Instant::now();
        let bytes = tokio::fs::read(&config.file)
            .await
            .map_err(|e| anyhow::anyhow!("plugin `{name}`: cannot read {}: {e}", config.file.display()))?;
        let providers = self.services.speech.providers();
        let info = VersionInfo {
            file: config.file.clone(),
            hash: short_hash(&bytes),
            config_hash: config_hash(config),
            loaded_at: SystemTime::now(),
        };
        let old = providers.version(name);
        if old.as_ref().is_some_and(|o| o.hash == info.hash && o.config_hash == info.config_hash && o.file == info.file)
        {
            return Ok(false);
        }
        let config_json = serde_json::to_string(&config.config).context("plugin config to JSON")?;
        let provider = crate::speech::Provider::load(
            providers.engine(),
            name,
            &config.file,
            &config_json,
            &config.capabilities,
            crate::speech::Limits::from_config(&config.limits),
            providers.tls(),
        )
        .await?;
        let kind = provider.kind();
        let provider = Arc::new(provider);
        provider.prewarm();
        providers.insert(name, provider, info.clone());
        stats::PluginStats::new(&self.services.metrics, name).loaded(started.elapsed(), &info, old.as_ref());
        tracing::info!(plugin = %name, kind = ?kind, file = %config.file.display(), version = %info.hash, ms = started.elapsed().as_millis() as u64, "speech provider loaded");
        Ok(true)
    }

    /// Build plugin `name` from `config` and run its `init`; it serves once the caller adds it.
    async fn load_plugin(&self, name: &str, config: &PluginConfig) -> anyhow::Result<Arc<Plugin>> {
        let started = Instant::now();
        let version = self.build(name, config).await?;
        let store = self.plugin_store(name, config, None).await?;
        let plugin = Arc::new(Plugin {
            name: name.into(),
            current: RwLock::new(Arc::new(version)),
            kv: kv::Kv::default(),
            timers: timers::Timers::default(),
            services: self.services.clone(),
            store: RwLock::new(store),
            engine: self.engine.clone(),
            stats: stats::PluginStats::new(&self.services.metrics, name),
        });
        let version = plugin.current.read().clone();
        plugin.migrate(&version).await.with_context(|| format!("plugin `{name}`: schema refused"))?;
        plugin.init(&version).await.with_context(|| format!("plugin `{name}`: init failed"))?;
        plugin.stats.loaded(started.elapsed(), &version.info, None);
        tracing::info!(plugin = %name, file = %config.file.display(), version = %plugin.version().hash, ms = started.elapsed().as_millis() as u64, "plugin loaded");
        Ok(plugin)
    }

    /// The plugin's own store when `config` gives it the `store` capability and the daemon has
    /// a database: `current` if it has one already, else newly opened.
    async fn plugin_store(
        &self,
        name: &str,
        config: &PluginConfig,
        current: Option<Store>,
    ) -> anyhow::Result<Option<Store>> {
        let (Some(daemon), true) =
            (&self.services.store, config.capabilities.store != crate::config::StoreAccess::None)
        else {
            return Ok(current);
        };
        match current {
            Some(store) => Ok(Some(store)),
            None => Ok(Some(
                daemon.for_plugin(name).await.with_context(|| format!("plugin `{name}`: its database access"))?,
            )),
        }
    }

    /// Compile and link a version of plugin `name` (not yet initialised).
    async fn build(&self, name: &str, config: &PluginConfig) -> anyhow::Result<Version> {
        let bytes = tokio::fs::read(&config.file)
            .await
            .map_err(|e| anyhow::anyhow!("plugin `{name}`: cannot read {}: {e}", config.file.display()))?;
        let hash = short_hash(&bytes);
        let engine = self.engine.clone();
        let component = tokio::task::spawn_blocking(move || Component::new(&engine, &bytes))
            .await?
            .map_err(|e| anyhow::anyhow!("plugin `{name}`: cannot compile {}: {e}", config.file.display()))?;
        let pre = self.linker.instantiate_pre(&component).map_err(|e| {
            anyhow::anyhow!("plugin `{name}`: does not fit the gatewayd:plugin@0.1.0 protocol world: {e}")
        })?;
        let schema = bindings::schema_owner::SchemaOwnerIndices::new(&pre).ok();
        let speech = bindings::speech_listener::SpeechListenerIndices::new(&pre).ok();
        let pre = bindings::ProtocolPre::new(pre).map_err(|e| anyhow::anyhow!("plugin `{name}`: {e}"))?;
        let config_json = serde_json::to_string(&config.config).context("plugin config to JSON")?;
        Ok(Version {
            pre,
            schema,
            speech,
            idle: Mutex::new(Vec::new()),
            running: Semaphore::new(config.limits.max_instances),
            limits: config.limits.clone(),
            capabilities: config.capabilities.clone(),
            config_json: config_json.into(),
            event_limit: Duration::from_millis(config.limits.event_timeout_ms),
            fault_report: config.fault_report,
            info: VersionInfo {
                file: config.file.clone(),
                hash,
                config_hash: config_hash(config),
                loaded_at: SystemTime::now(),
            },
        })
    }

    /// The plugin named `name`.
    pub fn plugin(&self, name: &str) -> Option<Arc<Plugin>> {
        self.plugins.read().get(name).cloned()
    }

    /// All plugins.
    pub fn plugins(&self) -> Vec<Arc<Plugin>> {
        self.plugins.read().values().cloned().collect()
    }

    /// Apply the plugin tables of a new config. A plugin whose component file or config changed
    /// is built and initialised off the hot path, then swapped in; a failure leaves its current
    /// version serving and is logged and counted. A plugin new in the config is loaded (a failure
    /// is logged and reported; the daemon goes on without it); a plugin gone from the config is
    /// dropped: it serves no new connection (its routes go with the new route table) and its
    /// open connections keep it until they close.
    pub async fn reload(&self, all: &BTreeMap<String, PluginConfig>) -> ReloadReport {
        let mut report = ReloadReport::default();
        let mut configs = BTreeMap::new();
        let mut providers = BTreeMap::new();
        for (name, config) in all {
            if is_provider(config).await {
                providers.insert(name.clone(), config);
            } else {
                configs.insert(name.clone(), config.clone());
            }
        }
        let configs = &configs;
        self.reload_providers(&providers, &mut report).await;
        let added: Vec<&String> = configs.keys().filter(|n| !self.plugins.read().contains_key(*n)).collect();
        for name in added {
            match self.load_plugin(name, &configs[name]).await {
                Ok(plugin) => {
                    tracing::info!(plugin = %name, "plugin added");
                    self.plugins.write().insert(name.clone(), plugin);
                    report.added.push(name.clone());
                }
                Err(e) => {
                    tracing::error!(plugin = %name, error = %format!("{e:#}"), "new plugin not loaded");
                    report.failed.push((name.clone(), format!("{e:#}")));
                }
            }
        }
        self.plugins.write().retain(|name, _| {
            let keep = configs.contains_key(name);
            if !keep {
                tracing::info!(plugin = %name, "plugin removed: open connections keep it until they close");
                report.removed.push(name.clone());
            }
            keep
        });
        let current: Vec<(String, Arc<Plugin>)> =
            self.plugins.read().iter().map(|(n, p)| (n.clone(), p.clone())).collect();
        for (name, plugin) in current {
            let Some(config) = configs.get(&name) else { continue };
            if report.added.contains(&name) {
                continue;
            }
            match self.reload_plugin(&plugin, config).await {
                Ok(true) => report.reloaded.push(name.clone()),
                Ok(false) => {}
                Err(e) => {
                    plugin.stats.reload_rejected();
                    tracing::error!(plugin = %name, error = %format!("{e:#}"), "reload rejected; the current version keeps serving");
                    report.failed.push((name.clone(), format!("{e:#}")));
                }
            }
        }
        report
    }

    /// The provider part of [`Runtime::reload`].
    async fn reload_providers(&self, configs: &BTreeMap<String, &PluginConfig>, report: &mut ReloadReport) {
        let registry = self.services.speech.providers();
        for name in registry.retain(|name| configs.contains_key(name)) {
            tracing::info!(plugin = %name, "speech provider removed: running streams keep it until they end");
            report.removed.push(name);
        }
        for (name, config) in configs {
            let new = registry.version(name).is_none();
            match self.load_provider(name, config).await {
                Ok(true) if new => report.added.push(name.clone()),
                Ok(true) => report.reloaded.push(name.clone()),
                Ok(false) => {}
                Err(e) => {
                    stats::PluginStats::new(&self.services.metrics, name).reload_rejected();
                    tracing::error!(plugin = %name, error = %format!("{e:#}"), "speech provider not (re)loaded; the current version, if any, keeps serving");
                    report.failed.push((name.clone(), format!("{e:#}")));
                }
            }
        }
    }

    async fn reload_plugin(&self, plugin: &Arc<Plugin>, config: &PluginConfig) -> anyhow::Result<bool> {
        let current = plugin.version();
        let bytes =
            tokio::fs::read(&config.file).await.with_context(|| format!("reading {}", config.file.display()))?;
        if short_hash(&bytes) == current.hash
            && config_hash(config) == current.config_hash
            && config.file == current.file
        {
            return Ok(false);
        }
        let started = Instant::now();
        let version = Arc::new(self.build(&plugin.name, config).await?);
        let current_store = plugin.store.read().clone();
        let store = self.plugin_store(&plugin.name, config, current_store).await?;
        *plugin.store.write() = store;
        plugin.migrate(&version).await.context("schema refused")?;
        plugin.init(&version).await.context("init failed")?;
        let old = std::mem::replace(&mut *plugin.current.write(), version.clone());
        plugin.stats.loaded(started.elapsed(), &version.info, Some(&old.info));
        tracing::info!(plugin = %plugin.name, from = %old.info.hash, to = %plugin.version().hash, ms = started.elapsed().as_millis() as u64, "plugin reloaded");
        Ok(true)
    }
}

/// Whether `config`'s component is a speech provider (it exports `gatewayd:plugin/stt` or
/// `tts`). A file that cannot be read is not: loading it as a protocol plugin reports why.
async fn is_provider(config: &PluginConfig) -> bool {
    tokio::fs::read(&config.file).await.is_ok_and(|bytes| crate::speech::component_kind(&bytes).is_some())
}

/// What a [`Runtime::reload`] did.
#[derive(Debug, Default)]
pub struct ReloadReport {
    pub reloaded: Vec<String>,
    /// Plugins new in the config, loaded.
    pub added: Vec<String>,
    /// Plugins gone from the config, dropped.
    pub removed: Vec<String>,
    /// Plugin name and why its new version was rejected.
    pub failed: Vec<(String, String)>,
}

fn start_epoch_ticker(engine: &Engine) {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("gatewayd-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .expect("spawning the epoch thread");
}

impl Plugin {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The daemon services the plugin runs with.
    pub fn services(&self) -> &Arc<Services> {
        &self.services
    }

    /// Whether the current version exports `speech-handler` (hears speech events).
    pub(crate) fn hears_speech(&self) -> bool {
        self.current.read().speech.is_some()
    }

    /// The current version's description.
    pub fn version(&self) -> VersionInfo {
        self.current.read().info.clone()
    }

    /// Counters and timings of this plugin, across versions.
    pub fn stats(&self) -> &stats::PluginStats {
        &self.stats
    }

    /// Run `init` on a fresh instance of `version`; on success the instance joins its pool.
    async fn init(self: &Arc<Self>, version: &Version) -> anyhow::Result<()> {
        let mut warm = self.instantiate(version).await.map_err(|f| anyhow::anyhow!("{f}"))?;
        arm(&mut warm.store, version.event_limit);
        let result = warm.bindings.gatewayd_plugin_handler().call_init(&mut warm.store).await;
        match result {
            Ok(Ok(())) => {
                version.idle.lock().push(warm);
                Ok(())
            }
            Ok(Err(message)) => anyhow::bail!("{message}"),
            Err(e) => anyhow::bail!("{}", classify(&warm, e, &version.limits)),
        }
    }

    /// Apply the migrations `version` ships (its `schema` export) before it serves: see
    /// [`crate::store::plugin_schema`]. Without the `store` capability (or a database) they are
    /// skipped: the plugin could not use its tables anyway.
    async fn migrate(self: &Arc<Self>, version: &Version) -> anyhow::Result<()> {
        let Some(indices) = &version.schema else { return Ok(()) };
        let store = self.services.store.as_ref();
        let backend = match store.map(|s| s.backend()) {
            Some(crate::store::Backend::Postgres) => "postgres",
            _ => "sqlite",
        };
        let mut warm = self.instantiate(version).await.map_err(|f| anyhow::anyhow!("{f}"))?;
        let owner = indices.load(&mut warm.store, &warm.instance).map_err(|e| anyhow::anyhow!("{e}"))?;
        arm(&mut warm.store, version.event_limit);
        let listed = owner.gatewayd_plugin_schema().call_migrations(&mut warm.store, backend).await;
        let listed = listed.map_err(|e| anyhow::anyhow!("migrations: {}", classify(&warm, e, &version.limits)))?;
        if listed.is_empty() {
            return Ok(());
        }
        let own = self.store.read().clone();
        let (Some(daemon), Some(own), true) =
            (store, own, version.capabilities.store != crate::config::StoreAccess::None)
        else {
            // Its tables are of no use to it without the capability: it runs without them.
            tracing::info!(plugin = %self.name, migrations = listed.len(), "the plugin ships tables but has no store capability (or there is no database): not created");
            return Ok(());
        };
        let migrations: Vec<_> = listed
            .into_iter()
            .map(|m| crate::store::plugin_schema::Migration { version: m.version, name: m.name, sql: m.sql })
            .collect();
        let report = crate::store::plugin_schema::apply(daemon, &own, &migrations).await?;
        if !report.applied.is_empty() {
            tracing::info!(plugin = %self.name, versions = ?report.applied, "plugin migrations applied");
        }
        if !report.unknown.is_empty() {
            tracing::warn!(plugin = %self.name, versions = ?report.unknown, "the database has plugin migrations this version does not list (an older version?); it runs on the newer schema");
        }
        Ok(())
    }

    async fn instantiate(self: &Arc<Plugin>, version: &Version) -> Result<Warm, Fault> {
        let state = HostState::new(self, version.limits.memory_mb, &version.capabilities, version.config_json.clone());
        let mut store = WasmStore::new(&self.engine, state);
        store.limiter(|s| s.limiter());
        // Charge the guest's own CPU time only (plugins/budget.rs); instantiation has its own
        // generous bound, so a cold instance starts its first event with the whole limit.
        store.call_hook(|mut ctx, hook| {
            let cpu = budget::thread_cpu_time();
            let budget = ctx.data_mut().budget_mut();
            if hook.entering_host() {
                budget.leave_guest(cpu)
            } else {
                budget.enter_guest(cpu)
            }
            Ok(())
        });
        store.epoch_deadline_callback(|mut ctx| {
            let verdict = ctx.data_mut().budget_mut().on_deadline(budget::thread_cpu_time(), Instant::now());
            Ok(match verdict {
                Verdict::Continue(ticks) => wasmtime::UpdateDeadline::Continue(ticks),
                Verdict::Interrupt => wasmtime::UpdateDeadline::Interrupt,
            })
        });
        arm(&mut store, INSTANTIATE_LIMIT);
        let instance = version
            .pre
            .instance_pre()
            .instantiate_async(&mut store)
            .await
            .map_err(|e| Fault::Instantiate(format!("{e}")))?;
        let bindings = Protocol::new(&mut store, &instance).map_err(|e| Fault::Instantiate(format!("{e}")))?;
        let speech = match &version.speech {
            Some(indices) => Some(indices.load(&mut store, &instance).map_err(|e| Fault::Instantiate(format!("{e}")))?),
            None => None,
        };
        Ok(Warm { store, instance, bindings, speech })
    }

    /// Run one event. Returns the HTTP response for `Event::Http`, and always hands the
    /// session state back (updated by the plugin's `session.set` calls, if any).
    pub async fn dispatch(
        self: &Arc<Self>,
        event: Event,
        session: Session,
    ) -> (Result<Option<HttpResponse>, Fault>, Session) {
        let started = Instant::now();
        let (result, session) = self.dispatch_inner(event, session).await;
        self.stats.record(started.elapsed(), result.as_ref().err());
        (result, session)
    }

    async fn dispatch_inner(
        self: &Arc<Self>,
        event: Event,
        session: Session,
    ) -> (Result<Option<HttpResponse>, Fault>, Session) {
        let version = self.current.read().clone();
        let _permit = version.running.acquire().await.expect("semaphore is never closed");
        let pooled = version.idle.lock().pop();
        let mut warm = match pooled {
            Some(w) => w,
            None => match self.instantiate(&version).await {
                Ok(w) => w,
                Err(f) => return (Err(f), session),
            },
        };
        warm.store.data_mut().begin(session);
        arm(&mut warm.store, version.event_limit);
        let handler = warm.bindings.gatewayd_plugin_handler();
        let store = &mut warm.store;
        let (kind, conn) = event.describe();
        let result = match event {
            Event::Open(info) => handler.call_on_open(store, &info).await.map(|_| None),
            Event::Text(id, text) => handler.call_on_text(store, id, &text).await.map(|_| None),
            Event::Binary(id, data) => handler.call_on_binary(store, id, &data).await.map(|_| None),
            Event::Close(id, code) => handler.call_on_close(store, id, code).await.map(|_| None),
            Event::Timer { key, payload } => handler.call_on_timer(store, &key, &payload).await.map(|_| None),
            Event::Http(req) => handler.call_on_http(store, &req).await.map(Some),
            Event::Media(id, crate::media::MediaEvent::Speech(event)) => match &warm.speech {
                Some(listener) => {
                    let event = to_wit_speech(event);
                    listener.gatewayd_plugin_speech_handler().call_on_speech(store, id, &event).await.map(|_| None)
                }
                None => {
                    self.services.metrics.speech.dropped_event("no_handler", 1);
                    Ok(None)
                }
            },
            Event::Media(id, event) => match to_wit_media(event) {
                Some(event) => handler.call_on_media(store, id, &event).await.map(|_| None),
                None => Ok(None),
            },
        };
        let session = warm.store.data_mut().end();
        match result {
            Ok(response) => {
                version.idle.lock().push(warm);
                (Ok(response), session)
            }
            Err(e) => {
                let fault = classify(&warm, e, &version.limits);
                tracing::warn!(plugin = %self.name, event = kind, connection = ?conn, error = %fault, "event failed; instance discarded");
                (Err(fault), session)
            }
        }
    }
}

impl Plugin {
    /// Run a connection's event under its session lock, so events of one session never
    /// overlap or reorder. A fault is reported to that connection in the plugin's
    /// `fault_report` shape (default
    /// `{"type":"error","code":"plugin_trap"|"plugin_timeout"|"plugin_memory"|"plugin_unavailable","message":...}`)
    /// and the connection stays open.
    pub async fn dispatch_in_session(
        self: &Arc<Self>,
        conn: ConnId,
        cell: &SessionCell,
        event: Event,
    ) -> Result<(), Fault> {
        let mut guard = cell.lock().await;
        let (result, session) = self.dispatch(event, Session { conn: Some(conn), state: guard.take() }).await;
        *guard = session.state;
        drop(guard);
        if let Err(fault) = &result {
            let report = self.current.read().fault_report;
            if let Some(message) = report.message(fault.code(), &fault.to_string()) {
                self.services.bus.send(conn, Outbound::Text(message.into()));
            }
        }
        result.map(|_| ())
    }
}

/// Start a fresh budget of `limit` guest CPU time for the next call into `store`.
fn arm(store: &mut WasmStore<HostState>, limit: Duration) {
    let budget = Budget::new(limit, Instant::now());
    store.set_epoch_deadline(budget.initial_ticks());
    *store.data_mut().budget_mut() = budget;
}

fn to_wit_media(event: crate::media::MediaEvent) -> Option<bindings::gatewayd::plugin::media::MediaEvent> {
    use crate::media::MediaEvent;
    use bindings::gatewayd::plugin::media::MediaEvent as Wit;
    Some(match event {
        MediaEvent::Mark(name) => Wit::Mark(name),
        MediaEvent::PlayFinished => Wit::PlayFinished,
        MediaEvent::FrameRejected(reason) => Wit::FrameRejected(reason),
        MediaEvent::Speech(_) => return None,
    })
}

fn to_wit_speech(
    event: crate::speech::CallSpeechEvent,
) -> bindings::speech_listener::gatewayd::plugin::speech_events::SpeechEvent {
    use crate::speech::CallSpeechEvent;
    use bindings::speech_listener::gatewayd::plugin::speech_events::{SpeechEvent, SpeechFailure, Transcript};
    let failure = |f: crate::speech::SpeechFailure| SpeechFailure { code: f.code.to_string(), message: f.message };
    match event {
        CallSpeechEvent::SpeechStarted => SpeechEvent::SpeechStarted,
        CallSpeechEvent::Transcript(t) => SpeechEvent::Transcript(Transcript {
            text: t.text,
            is_final: t.is_final,
            speech_final: t.speech_final,
            confidence: t.confidence,
            language: t.language,
            start_ms: t.start_ms,
            duration_ms: t.duration_ms,
        }),
        CallSpeechEvent::UtteranceEnd => SpeechEvent::UtteranceEnd,
        CallSpeechEvent::SttError(f) => SpeechEvent::SttError(failure(f)),
        CallSpeechEvent::Stopped => SpeechEvent::Stopped,
        CallSpeechEvent::TtsError(f) => SpeechEvent::TtsError(failure(f)),
    }
}

fn classify(warm: &Warm, e: wasmtime::Error, limits: &PluginLimits) -> Fault {
    if warm.store.data().memory_limit_hit() {
        return Fault::Memory(limits.memory_mb);
    }
    match e.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::Interrupt) => Fault::Timeout(limits.event_timeout_ms),
        _ => Fault::Trap(format!("{e:#}").lines().next().unwrap_or_default().to_string()),
    }
}
