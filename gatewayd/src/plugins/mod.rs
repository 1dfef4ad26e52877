//! The Wasm plugin runtime (DESIGN sections 2 and 3).
//!
//! Mechanism, chosen by measurement (docs/architecture.md): each plugin version keeps a pool of
//! warm instances. An event takes an idle instance (or instantiates one from the pre-linked
//! `InstancePre`), hands it the session state, runs under an epoch deadline and a memory cap, and
//! gives the instance back. An instance that traps, runs out of time or memory is dropped; the
//! next event gets a fresh one. Because session state lives in the host (property 1), any warm
//! instance serves any session, and a new version can take over between two events (property 2).
//!
//! Ordering (property 4) is the caller's job: a connection runs its events one after another
//! under its session lock (`server::websocket`), while different connections dispatch
//! concurrently on all runtime threads.

mod bindings;
mod host;
mod kv;
mod timers;

use crate::bus::{Bus, ConnId, Outbound, SessionCell};
use crate::config::{Capabilities, PluginConfig, PluginLimits};
use crate::store::Store;
use anyhow::Context;
use bindings::Protocol;
pub use bindings::exports::gatewayd::plugin::handler::{ConnectInfo, HttpRequest, HttpResponse};
use host::HostState;
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use wasmtime::component::{Component, Linker};
use wasmtime::{Engine, Store as WasmStore};

/// Epoch ticks: one every `EPOCH_TICK`; an event's deadline is a number of ticks.
const EPOCH_TICK: Duration = Duration::from_millis(5);

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
    pub jwt: Arc<crate::auth::JwtVerifier>,
    /// The media engine (calls on media routes).
    pub media: Arc<crate::media::MediaEngine>,
}

/// One compiled, linked and initialised version of a plugin.
struct Version {
    pre: bindings::ProtocolPre<HostState>,
    idle: Mutex<Vec<Warm>>,
    running: Semaphore,
    limits: PluginLimits,
    deadline_ticks: u64,
}

struct Warm {
    store: WasmStore<HostState>,
    bindings: Protocol,
}

/// A named plugin: its current version plus the state that outlives versions (kv, timers).
pub struct Plugin {
    name: Arc<str>,
    capabilities: Capabilities,
    config_json: String,
    current: RwLock<Arc<Version>>,
    kv: kv::Kv,
    timers: timers::Timers,
    services: Arc<Services>,
    engine: Engine,
}

/// All loaded plugins, sharing one engine and linker.
pub struct Runtime {
    engine: Engine,
    linker: Linker<HostState>,
    plugins: HashMap<String, Arc<Plugin>>,
}

impl Runtime {
    /// Build the engine and host linker, then load every configured plugin. Each plugin is
    /// compiled, linked and its `init` run on a fresh instance; any failure stops start-up.
    pub async fn load(
        configs: &std::collections::BTreeMap<String, PluginConfig>,
        services: Arc<Services>,
    ) -> anyhow::Result<Runtime> {
        let mut cfg = wasmtime::Config::new();
        cfg.epoch_interruption(true).wasm_component_model(true);
        let engine = Engine::new(&cfg).map_err(|e| anyhow::anyhow!("wasmtime engine: {e}"))?;
        start_epoch_ticker(&engine);
        let mut linker = Linker::new(&engine);
        host::add_to_linker(&mut linker)?;
        let mut rt = Runtime { engine, linker, plugins: HashMap::new() };
        for (name, config) in configs {
            let plugin = rt.load_plugin(name, config, services.clone()).await?;
            rt.plugins.insert(name.clone(), plugin);
        }
        Ok(rt)
    }

    async fn load_plugin(
        &self,
        name: &str,
        config: &PluginConfig,
        services: Arc<Services>,
    ) -> anyhow::Result<Arc<Plugin>> {
        let started = Instant::now();
        let config_json = serde_json::to_string(&config.config).context("plugin config to JSON")?;
        let version = self.compile(name, config).await?;
        let plugin = Arc::new(Plugin {
            name: name.into(),
            capabilities: config.capabilities.clone(),
            config_json,
            current: RwLock::new(Arc::new(version)),
            kv: kv::Kv::default(),
            timers: timers::Timers::default(),
            services,
            engine: self.engine.clone(),
        });
        plugin.init().await.with_context(|| format!("plugin `{name}`: init failed"))?;
        tracing::info!(plugin = name, file = %config.file.display(), ms = started.elapsed().as_millis() as u64, "plugin loaded");
        Ok(plugin)
    }

    async fn compile(&self, name: &str, config: &PluginConfig) -> anyhow::Result<Version> {
        let engine = self.engine.clone();
        let file = config.file.clone();
        let component = tokio::task::spawn_blocking(move || Component::from_file(&engine, &file))
            .await?
            .map_err(|e| anyhow::anyhow!("plugin `{name}`: cannot compile {}: {e}", config.file.display()))?;
        let pre = self.linker.instantiate_pre(&component).map_err(|e| {
            anyhow::anyhow!("plugin `{name}`: does not fit the gatewayd:plugin@0.1.0 protocol world: {e}")
        })?;
        let pre = bindings::ProtocolPre::new(pre).map_err(|e| anyhow::anyhow!("plugin `{name}`: {e}"))?;
        let ticks = config.limits.event_timeout_ms.div_ceil(EPOCH_TICK.as_millis() as u64) + 1;
        Ok(Version {
            pre,
            idle: Mutex::new(Vec::new()),
            running: Semaphore::new(config.limits.max_instances),
            limits: config.limits.clone(),
            deadline_ticks: ticks,
        })
    }

    /// The plugin named `name`.
    pub fn plugin(&self, name: &str) -> Option<&Arc<Plugin>> {
        self.plugins.get(name)
    }
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

    async fn init(self: &Arc<Self>) -> anyhow::Result<()> {
        let version = self.current.read().clone();
        let mut warm = self.instantiate(&version).await.map_err(|f| anyhow::anyhow!("{f}"))?;
        warm.store.set_epoch_deadline(version.deadline_ticks);
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

    async fn instantiate(self: &Arc<Plugin>, version: &Version) -> Result<Warm, Fault> {
        let state = HostState::new(self, version.limits.memory_mb);
        let mut store = WasmStore::new(&self.engine, state);
        store.limiter(|s| s.limiter());
        store.epoch_deadline_trap();
        store.set_epoch_deadline(version.deadline_ticks);
        let bindings =
            version.pre.instantiate_async(&mut store).await.map_err(|e| Fault::Instantiate(format!("{e}")))?;
        Ok(Warm { store, bindings })
    }

    /// Run one event. Returns the HTTP response for `Event::Http`, and always hands the
    /// session state back (updated by the plugin's `session.set` calls, if any).
    pub async fn dispatch(
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
        warm.store.set_epoch_deadline(version.deadline_ticks);
        let handler = warm.bindings.gatewayd_plugin_handler();
        let store = &mut warm.store;
        let result = match event {
            Event::Open(info) => handler.call_on_open(store, &info).await.map(|_| None),
            Event::Text(id, text) => handler.call_on_text(store, id, &text).await.map(|_| None),
            Event::Binary(id, data) => handler.call_on_binary(store, id, &data).await.map(|_| None),
            Event::Close(id, code) => handler.call_on_close(store, id, code).await.map(|_| None),
            Event::Timer { key, payload } => handler.call_on_timer(store, &key, &payload).await.map(|_| None),
            Event::Http(req) => handler.call_on_http(store, &req).await.map(Some),
            Event::Media(id, event) => handler.call_on_media(store, id, &to_wit_media(event)).await.map(|_| None),
        };
        let session = warm.store.data_mut().end();
        match result {
            Ok(response) => {
                version.idle.lock().push(warm);
                (Ok(response), session)
            }
            Err(e) => {
                let fault = classify(&warm, e, &version.limits);
                tracing::warn!(plugin = %self.name, error = %fault, "event failed; instance discarded");
                (Err(fault), session)
            }
        }
    }
}

impl Plugin {
    /// Run a connection's event under its session lock, so events of one session never
    /// overlap or reorder. A fault is reported to that connection as
    /// `{"type":"error","code":"plugin_trap"|"plugin_timeout"|"plugin_memory"|"plugin_unavailable","message":...}`
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
            let message = serde_json::json!({"type": "error", "code": fault.code(), "message": fault.to_string()});
            self.services.bus.send(conn, Outbound::Text(message.to_string().into()));
        }
        result.map(|_| ())
    }
}

fn to_wit_media(event: crate::media::MediaEvent) -> bindings::gatewayd::plugin::media::MediaEvent {
    use crate::media::MediaEvent;
    use bindings::gatewayd::plugin::media::MediaEvent as Wit;
    match event {
        MediaEvent::Mark(name) => Wit::Mark(name),
        MediaEvent::PlayFinished => Wit::PlayFinished,
        MediaEvent::FrameRejected(reason) => Wit::FrameRejected(reason),
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
