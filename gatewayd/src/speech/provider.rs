//! [`Provider`]: a speech provider plugin loaded from its component, ready to start sessions.
//!
//! Each stream or request gets its own instance ([`Instance`]: a `wasmtime::Store` of its own)
//! holding the plugin's session resource for the stream's life. Every call into Wasm runs with
//! a fuel budget ([`Limits::fuel_per_call`], a deterministic bound on the guest's work) and the
//! instance's linear memory is capped; a trap, running out of fuel or memory ends that stream
//! with an error, never the daemon, and the instance is not used again.

use super::SpeechFailure;
use super::bindings::{self, SpeechHost, stt, tts};
use crate::config::{Capabilities, ConfigError};
use crate::net::Outbound;
use anyhow::Context;
use rustls::ClientConfig;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use wasmtime::component::{Component, Linker};
use wasmtime::{Engine, Store, Trap};

/// The wasmtime engine speech providers run on: component model and fuel metering on. Build one
/// per daemon and share it (compiled components belong to it).
#[derive(Clone)]
pub struct SpeechEngine {
    engine: Engine,
    linker: Arc<Linker<SpeechHost>>,
}

impl SpeechEngine {
    /// A new engine and its linker (WASI with nothing granted, `log`, `config`). Errors:
    /// wasmtime could not build the engine or link the imports.
    pub fn new() -> anyhow::Result<SpeechEngine> {
        let mut config = wasmtime::Config::new();
        config.wasm_component_model(true).consume_fuel(true);
        let engine = Engine::new(&config).map_err(|e| anyhow::anyhow!("wasmtime engine: {e}"))?;
        let linker = Arc::new(bindings::linker(&engine)?);
        Ok(SpeechEngine { engine, linker })
    }
}

/// Bounds of one provider instance.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Linear memory of one instance, in bytes.
    pub memory_bytes: usize,
    /// Fuel (about one unit per Wasm instruction) one call into the plugin may use: the CPU
    /// limit per vendor message, command or plan. The default, 50 million, is about 50 ms of
    /// guest code on this class of machine; a Deepgram result message takes well under 1%.
    pub fuel_per_call: u64,
    /// Fuel for instantiating a component (its start functions) and for the session's
    /// constructor.
    pub instantiate_fuel: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { memory_bytes: 64 << 20, fuel_per_call: 50_000_000, instantiate_fuel: 500_000_000 }
    }
}

/// Which world a provider's component implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    /// `stt-provider`: speech-to-text.
    Stt,
    /// `tts-provider`: text-to-speech.
    Tts,
}

enum Pre {
    Stt(stt::SttProviderPre<SpeechHost>),
    Tts(tts::TtsProviderPre<SpeechHost>),
}

/// A loaded speech provider plugin: its pre-linked component, configuration and outbound
/// network. Share it behind an `Arc`; every stream takes a fresh instance of it.
pub struct Provider {
    name: Arc<str>,
    config_json: Arc<str>,
    pre: Pre,
    outbound: Arc<Outbound>,
    limits: Limits,
    idle_timeout_ms: u64,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider").field("name", &self.name).field("kind", &self.kind()).finish_non_exhaustive()
    }
}

impl Provider {
    /// Load plugin `name` from the component `file`: compile it (on a blocking thread), find
    /// which world it implements, link it, build its outbound network from `capabilities`
    /// (TLS `tls`) and run its `init` on a fresh instance with `config_json` (the
    /// `[plugins.<name>.config]` table as a JSON object).
    ///
    /// Errors: unreadable or invalid component, a component of neither speech world, imports
    /// the host does not offer, a bad `connect` entry, a trap in `init` or `init` refusing the
    /// configuration (its message).
    pub async fn load(
        engine: &SpeechEngine,
        name: &str,
        file: &Path,
        config_json: &str,
        capabilities: &Capabilities,
        tls: Arc<ClientConfig>,
    ) -> anyhow::Result<Provider> {
        let component = {
            let (engine, path) = (engine.engine.clone(), file.to_path_buf());
            tokio::task::spawn_blocking(move || Component::from_file(&engine, &path))
                .await
                .context("compiling the component")?
                .map_err(|e| anyhow::anyhow!("plugin `{name}`: cannot load {}: {e}", file.display()))?
        };
        let instance_pre = engine
            .linker
            .instantiate_pre(&component)
            .map_err(|e| anyhow::anyhow!("plugin `{name}`: cannot link {}: {e}", file.display()))?;
        let pre = match stt::SttProviderPre::new(instance_pre.clone()) {
            Ok(pre) => Pre::Stt(pre),
            Err(stt_error) => match tts::TtsProviderPre::new(instance_pre) {
                Ok(pre) => Pre::Tts(pre),
                Err(tts_error) => anyhow::bail!(
                    "plugin `{name}`: {} is neither an stt-provider ({stt_error}) nor a tts-provider ({tts_error})",
                    file.display()
                ),
            },
        };
        let outbound = Outbound::new(name, capabilities, tls).map_err(|e: ConfigError| anyhow::anyhow!("{e}"))?;
        let provider = Provider {
            name: name.into(),
            config_json: config_json.into(),
            pre,
            outbound: Arc::new(outbound),
            limits: Limits::default(),
            idle_timeout_ms: capabilities.idle_timeout_ms,
        };
        provider.init().await.map_err(|e| anyhow::anyhow!("plugin `{name}`: init: {e}"))?;
        Ok(provider)
    }

    /// The same with other instance limits (for streams started from now on).
    pub fn with_limits(mut self, limits: Limits) -> Provider {
        self.limits = limits;
        self
    }

    /// The plugin's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Which world it implements.
    pub fn kind(&self) -> ProviderKind {
        match self.pre {
            Pre::Stt(_) => ProviderKind::Stt,
            Pre::Tts(_) => ProviderKind::Tts,
        }
    }

    /// Its outbound network (allowlist, secrets, stream count).
    pub fn outbound(&self) -> &Arc<Outbound> {
        &self.outbound
    }

    /// `idle_timeout_ms` of its capabilities: how long a write to the vendor may make no
    /// progress, in ms.
    pub fn idle_timeout_ms(&self) -> u64 {
        self.idle_timeout_ms
    }

    /// The instance limits.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    async fn init(&self) -> Result<(), String> {
        match &self.pre {
            Pre::Stt(_) => {
                let mut i = self.instantiate_stt().await.map_err(|e| e.message)?;
                i.refuel();
                let r = i.bindings.gatewayd_plugin_stt().call_init(&mut i.store).await;
                i.check(r).map_err(|e| e.message)?
            }
            Pre::Tts(_) => {
                let mut i = self.instantiate_tts().await.map_err(|e| e.message)?;
                i.refuel();
                let r = i.bindings.gatewayd_plugin_tts().call_init(&mut i.store).await;
                i.check(r).map_err(|e| e.message)?
            }
        }
    }

    fn store(&self) -> Store<SpeechHost> {
        let host = SpeechHost::new(self.name.clone(), self.config_json.clone(), self.limits.memory_bytes);
        let mut store = Store::new(self.engine(), host);
        store.limiter(|s| s.limiter());
        let _ = store.set_fuel(self.limits.instantiate_fuel);
        store
    }

    fn engine(&self) -> &Engine {
        match &self.pre {
            Pre::Stt(p) => p.engine(),
            Pre::Tts(p) => p.engine(),
        }
    }

    /// A fresh instance of an STT provider. Errors: not an STT provider, instantiation failed.
    pub(super) async fn instantiate_stt(&self) -> Result<Instance<stt::SttProvider>, SpeechFailure> {
        let Pre::Stt(pre) = &self.pre else {
            return Err(SpeechFailure::unsupported(format!("plugin `{}` is not an stt-provider", self.name)));
        };
        let mut store = self.store();
        let bindings = pre.instantiate_async(&mut store).await.map_err(|e| fault(&self.name, &store, e))?;
        Ok(Instance { store, bindings, plugin: self.name.clone(), fuel: self.limits })
    }

    /// A fresh instance of a TTS provider. Errors: not a TTS provider, instantiation failed.
    pub(super) async fn instantiate_tts(&self) -> Result<Instance<tts::TtsProvider>, SpeechFailure> {
        let Pre::Tts(pre) = &self.pre else {
            return Err(SpeechFailure::unsupported(format!("plugin `{}` is not a tts-provider", self.name)));
        };
        let mut store = self.store();
        let bindings = pre.instantiate_async(&mut store).await.map_err(|e| fault(&self.name, &store, e))?;
        Ok(Instance { store, bindings, plugin: self.name.clone(), fuel: self.limits })
    }
}

/// One instance of a provider, for one stream. After a fault it refuses every call.
pub(super) struct Instance<B> {
    pub store: Store<SpeechHost>,
    pub bindings: B,
    plugin: Arc<str>,
    fuel: Limits,
}

impl<B> Instance<B> {
    /// Give the next call into the plugin a fresh budget of `fuel_per_call`.
    pub fn refuel(&mut self) {
        let _ = self.store.set_fuel(self.fuel.fuel_per_call);
    }

    /// Give the next call the instantiation budget (the session's constructor).
    pub fn refuel_for_constructor(&mut self) {
        let _ = self.store.set_fuel(self.fuel.instantiate_fuel);
    }

    /// The result of a call into the plugin. Errors: the plugin trapped, ran out of fuel or
    /// memory (the instance is then unusable).
    pub fn check<T>(&self, result: wasmtime::Result<T>) -> Result<T, SpeechFailure> {
        result.map_err(|e| fault(&self.plugin, &self.store, e))
    }
}

/// Name a wasmtime error of `plugin`'s call: out of fuel, memory, or another trap.
fn fault(plugin: &str, store: &Store<SpeechHost>, e: wasmtime::Error) -> SpeechFailure {
    if store.data().memory_limit_hit() {
        return SpeechFailure::new("plugin_memory", format!("plugin `{plugin}` exceeded its memory limit"));
    }
    match e.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => {
            SpeechFailure::new("plugin_cpu", format!("plugin `{plugin}` exceeded its CPU limit (fuel) for one call"))
        }
        _ => SpeechFailure::new("plugin_trap", format!("plugin `{plugin}` trapped: {e}")),
    }
}

/// How long a connection must live, or whether it must bring a message, not to count as an
/// accept-then-close (see `stt`).
pub(super) const QUICK_CLOSE: Duration = Duration::from_secs(2);
