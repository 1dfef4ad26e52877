//! [`Provider`]: a speech provider plugin loaded from its component, ready to start sessions.
//!
//! Each stream or request gets its own instance ([`Instance`]: a `wasmtime::Store` of its own)
//! holding the plugin's session resource for the stream's life. Every call into Wasm runs with
//! a fuel budget ([`Limits::fuel_per_call`], a deterministic bound on the guest's work) and the
//! instance's linear memory is capped; a trap, running out of fuel or memory ends that stream
//! with an error, never the daemon, and the instance is not used again.
//!
//! Local engines (issue #12: a recogniser or synthesiser inside the plugin, an `in-process`
//! plan) load a model of tens of megabytes when their first session is made, which takes tens
//! to hundreds of milliseconds. At load the provider is probed: a session with default options
//! is made and asked for its plan; if the plan is in-process, the provider is *local*: the
//! probe's instance (its model loaded, the session dropped) is kept warm, and the provider keeps
//! [`WARM_INSTANCES`] such instances ready, refilled in the background as streams take them, so
//! a new call does not wait for a model load. Everything a local provider runs (warming, its
//! streams' calls into Wasm) runs on tokio's blocking pool ([`on_blocking`]), never on a runtime
//! worker, so a long decode never delays call media, sockets or other plugins.

use super::SpeechFailure;
use super::bindings::{self, SpeechHost, stt, tts, types};
use crate::config::{Capabilities, ConfigError};
use crate::net::Outbound;
use anyhow::Context;
use parking_lot::Mutex;
use rustls::ClientConfig;
use std::path::{Path, PathBuf};
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

/// Fuel per ms of a CPU limit: fuel counts guest work (about one unit per Wasm instruction),
/// and compiled guest code ran 7 to 9 thousand million units per second on this project's
/// 2-core benchmark machine (Flite synthesising), so a limit of N ms allows about N ms of guest
/// code there, whatever else the machine is doing (fuel does not depend on the clock).
pub const FUEL_PER_MS: u64 = 8_000_000;

/// Instances a local provider keeps warm (model loaded), besides those streams use.
pub const WARM_INSTANCES: usize = 2;

/// The formats the host offers an STT session, its preference first: the call's own (G.711
/// mu-law, 8000 Hz), then 16-bit PCM at 16000 Hz (recognisers' usual rate; resampled) and 8000 Hz.
pub(super) const STT_OFFERED: [(types::AudioEncoding, u32); 3] = [
    (types::AudioEncoding::Mulaw, 8000),
    (types::AudioEncoding::PcmS16le, 16000),
    (types::AudioEncoding::PcmS16le, 8000),
];

/// The output formats the host wants of a TTS session, its preference first: the call's own,
/// then 16-bit PCM at 8000, 16000 and 24000 Hz (resampled to the call's rate).
pub(super) const TTS_WANTED: [(types::AudioEncoding, u32); 4] = [
    (types::AudioEncoding::Mulaw, 8000),
    (types::AudioEncoding::PcmS16le, 8000),
    (types::AudioEncoding::PcmS16le, 16000),
    (types::AudioEncoding::PcmS16le, 24000),
];

/// `formats` as WIT audio formats (mono).
pub(super) fn formats<const N: usize>(formats: [(types::AudioEncoding, u32); N]) -> [types::AudioFormat; N] {
    formats.map(|(encoding, sample_rate)| types::AudioFormat { encoding, sample_rate, channels: 1 })
}

/// Bounds of one provider instance.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Linear memory of one instance, in bytes.
    pub memory_bytes: usize,
    /// Fuel (about one unit per Wasm instruction) one call into the plugin may use: the CPU
    /// limit per vendor message, command, plan, batch of audio or pull of synthesised audio.
    /// The default, 50 million, is about 6 ms of guest code ([`FUEL_PER_MS`]); a Deepgram
    /// result message takes well under 1%.
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

impl Limits {
    /// The limits of `[plugins.<name>.limits]`: `memory_mb` caps linear memory; the CPU limits
    /// become fuel, [`FUEL_PER_MS`] units per ms: `event_timeout_ms` for each call into the
    /// plugin (a vendor message, a batch of audio, a pull of synthesised audio),
    /// `load_timeout_ms` for instantiating and for a session's constructor, where a local
    /// engine loads its model.
    pub fn from_config(limits: &crate::config::PluginLimits) -> Limits {
        Limits {
            memory_bytes: (limits.memory_mb as usize).saturating_mul(1 << 20),
            fuel_per_call: limits.event_timeout_ms.max(1).saturating_mul(FUEL_PER_MS),
            instantiate_fuel: limits.load_timeout_ms.max(1).saturating_mul(FUEL_PER_MS),
        }
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

/// An instance ready for a session.
enum Warm {
    Stt(Instance<stt::SttProvider>),
    Tts(Instance<tts::TtsProvider>),
}

/// A loaded speech provider plugin: its pre-linked component, configuration and outbound
/// network. Share it behind an `Arc`; every stream takes an instance of its own (a warm one
/// for a local engine).
pub struct Provider {
    name: Arc<str>,
    config_json: Arc<str>,
    pre: Pre,
    outbound: Arc<Outbound>,
    limits: Limits,
    idle_timeout_ms: u64,
    data_dir: Option<PathBuf>,
    /// The probe found an in-process plan: a local engine.
    local: bool,
    /// Warm instances of a local engine.
    warm: Mutex<WarmPool>,
}

/// A local engine's warm instances.
#[derive(Default)]
struct WarmPool {
    /// Ready for a session.
    ready: Vec<Warm>,
    /// Being made on the blocking pool.
    making: usize,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider").field("name", &self.name).field("kind", &self.kind()).finish_non_exhaustive()
    }
}

impl Provider {
    /// Load plugin `name` from the component `file`: compile it (on a blocking thread), find
    /// which world it implements, link it, build its outbound network from `capabilities`
    /// (TLS `tls`; `data_dir` readable at `/data`), run its `init` on a fresh instance with
    /// `config_json` (the `[plugins.<name>.config]` table as a JSON object) within `limits`,
    /// then probe it: a local engine's probe instance (model loaded) is kept warm.
    ///
    /// Errors: unreadable or invalid component, a component of neither speech world, imports
    /// the host does not offer, a bad `connect` entry, a `data_dir` that is not a readable
    /// directory, a trap in `init` or `init` refusing the configuration (its message), a local
    /// engine whose probe failed (a model that does not load).
    pub async fn load(
        engine: &SpeechEngine,
        name: &str,
        file: &Path,
        config_json: &str,
        capabilities: &Capabilities,
        limits: Limits,
        tls: Arc<ClientConfig>,
    ) -> anyhow::Result<Provider> {
        if let Some(dir) = &capabilities.data_dir
            && !dir.is_dir()
        {
            anyhow::bail!("plugin `{name}`: data_dir {} is not a directory", dir.display());
        }
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
            limits,
            idle_timeout_ms: capabilities.idle_timeout_ms,
            data_dir: capabilities.data_dir.clone(),
            local: false,
            warm: Mutex::default(),
        };
        provider.init().await.map_err(|e| anyhow::anyhow!("plugin `{name}`: init: {e}"))?;
        let provider = on_blocking(async move {
            let probe = provider.probe().await;
            (provider, probe)
        })
        .await
        .map_err(|e| anyhow::anyhow!("plugin `{name}`: probe: {e}"))?;
        let (mut provider, probe) = provider;
        if let Some(warm) = probe.map_err(|e| anyhow::anyhow!("plugin `{name}`: loading its engine: {e}"))? {
            provider.local = true;
            provider.warm.get_mut().ready.push(warm);
        }
        Ok(provider)
    }

    /// Make a session with default options and ask for its plan. `Ok(Some(instance))`: the
    /// plan is in-process (a local engine), and the instance, its session dropped, is warm.
    /// `Ok(None)`: a remote provider (or one whose plan needs options; its streams report
    /// that). Errors: a local engine failed to make its session (the model did not load).
    async fn probe(&self) -> Result<Option<Warm>, SpeechFailure> {
        match &self.pre {
            Pre::Stt(_) => {
                let mut i = self.instantiate_stt().await?;
                let options = stt::exports::gatewayd::plugin::stt::SttOptions {
                    language: None,
                    model: None,
                    interim_results: false,
                    endpointing_ms: None,
                    utterance_end_ms: None,
                    keyterms: Vec::new(),
                    extra: Vec::new(),
                };
                i.refuel_for_constructor();
                let r = i
                    .bindings
                    .gatewayd_plugin_stt()
                    .stt_session()
                    .call_constructor(&mut i.store, &options, &formats(STT_OFFERED))
                    .await;
                let handle = i.check(r)?;
                i.refuel();
                let r = i.bindings.gatewayd_plugin_stt().stt_session().call_plan(&mut i.store, handle).await;
                let local = matches!(i.check(r)?, Ok(stt::exports::gatewayd::plugin::stt::SttPlan::InProcess(_)));
                let r = handle.resource_drop_async(&mut i.store).await;
                i.check(r)?;
                Ok(local.then_some(Warm::Stt(i)))
            }
            Pre::Tts(_) => {
                let mut i = self.instantiate_tts().await?;
                let options = tts::exports::gatewayd::plugin::tts::TtsOptions {
                    voice: String::new(),
                    model: None,
                    language: None,
                    speed: None,
                    extra: Vec::new(),
                };
                i.refuel_for_constructor();
                let r = i
                    .bindings
                    .gatewayd_plugin_tts()
                    .tts_session()
                    .call_constructor(&mut i.store, &options, &formats(TTS_WANTED))
                    .await;
                let handle = i.check(r)?;
                i.refuel();
                let r = i.bindings.gatewayd_plugin_tts().tts_session().call_plan(&mut i.store, handle).await;
                let local = matches!(i.check(r)?, Ok(tts::exports::gatewayd::plugin::tts::TtsPlan::InProcess(_)));
                let r = handle.resource_drop_async(&mut i.store).await;
                i.check(r)?;
                Ok(local.then_some(Warm::Tts(i)))
            }
        }
    }

    /// Whether the provider is a local engine (its plan is in-process): its streams run on the
    /// blocking pool.
    pub fn is_local(&self) -> bool {
        self.local
    }

    /// Keep [`WARM_INSTANCES`] ready: start making the missing ones on the blocking pool.
    /// Does nothing for a remote provider. Must be called within a tokio runtime.
    pub fn prewarm(self: &Arc<Self>) {
        if !self.local {
            return;
        }
        let missing = {
            let mut pool = self.warm.lock();
            let missing = WARM_INSTANCES.saturating_sub(pool.ready.len() + pool.making);
            pool.making += missing;
            missing
        };
        for _ in 0..missing {
            let provider = self.clone();
            tokio::spawn(async move {
                let made = on_blocking({
                    let provider = provider.clone();
                    async move { provider.probe().await }
                })
                .await;
                let mut pool = provider.warm.lock();
                pool.making -= 1;
                match made {
                    Ok(Ok(Some(warm))) => pool.ready.push(warm),
                    Ok(Ok(None)) => {}
                    Ok(Err(e)) | Err(e) => {
                        tracing::warn!(
                            plugin = provider.name(),
                            code = e.code,
                            "warming an instance failed: {}",
                            e.message
                        )
                    }
                }
            });
        }
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

    fn store(&self) -> Result<Store<SpeechHost>, SpeechFailure> {
        let host = SpeechHost::new(
            self.name.clone(),
            self.config_json.clone(),
            self.limits.memory_bytes,
            self.data_dir.as_deref(),
        )
        .map_err(|e| SpeechFailure::new("config", format!("plugin `{}`: {e}", self.name)))?;
        let mut store = Store::new(self.engine(), host);
        store.limiter(|s| s.limiter());
        let _ = store.set_fuel(self.limits.instantiate_fuel);
        Ok(store)
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
        let mut store = self.store()?;
        let bindings = pre.instantiate_async(&mut store).await.map_err(|e| fault(&self.name, &store, e))?;
        Ok(Instance { store, bindings, plugin: self.name.clone(), fuel: self.limits })
    }

    /// A fresh instance of a TTS provider. Errors: not a TTS provider, instantiation failed.
    pub(super) async fn instantiate_tts(&self) -> Result<Instance<tts::TtsProvider>, SpeechFailure> {
        let Pre::Tts(pre) = &self.pre else {
            return Err(SpeechFailure::unsupported(format!("plugin `{}` is not a tts-provider", self.name)));
        };
        let mut store = self.store()?;
        let bindings = pre.instantiate_async(&mut store).await.map_err(|e| fault(&self.name, &store, e))?;
        Ok(Instance { store, bindings, plugin: self.name.clone(), fuel: self.limits })
    }

    /// An STT instance for a new stream: a warm one when there is one (then the pool is
    /// refilled in the background), else a fresh one.
    pub(super) async fn stt_instance(self: &Arc<Self>) -> Result<Instance<stt::SttProvider>, SpeechFailure> {
        let warm = self.take_warm(|w| matches!(w, Warm::Stt(_)));
        match warm {
            Some(Warm::Stt(i)) => Ok(i),
            _ => self.instantiate_stt().await,
        }
    }

    /// A TTS instance for a new request, as [`Self::stt_instance`].
    pub(super) async fn tts_instance(self: &Arc<Self>) -> Result<Instance<tts::TtsProvider>, SpeechFailure> {
        let warm = self.take_warm(|w| matches!(w, Warm::Tts(_)));
        match warm {
            Some(Warm::Tts(i)) => Ok(i),
            _ => self.instantiate_tts().await,
        }
    }

    fn take_warm(self: &Arc<Self>, fits: impl Fn(&Warm) -> bool) -> Option<Warm> {
        if !self.local {
            return None;
        }
        let warm = self.warm.lock().ready.pop().filter(fits);
        self.prewarm();
        warm
    }
}

/// Run `future` on tokio's blocking pool (a thread of its own, driven with `block_on`), so
/// that Wasm work of a local engine (loading a model, decoding a batch, synthesising a
/// sentence) never holds a runtime worker. Must be called within a tokio runtime. Errors: the
/// future panicked (`plugin_trap`).
pub(super) async fn on_blocking<T: Send + 'static>(
    future: impl std::future::Future<Output = T> + Send + 'static,
) -> Result<T, SpeechFailure> {
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || handle.block_on(future))
        .await
        .map_err(|e| SpeechFailure::new("plugin_trap", format!("speech work on the blocking pool failed: {e}")))
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
