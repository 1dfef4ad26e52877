//! Host-side bindings of `plugin-api/wit/speech.wit` (worlds `stt-provider` and
//! `tts-provider`) and the host state of a provider instance: WASI with nothing granted but the
//! read-only `data_dir` capability at `/data` (local engines' models), the
//! `log` import (to `tracing`, tagged with the plugin's name) and the `config` import (the
//! plugin's `[plugins.<name>.config]` table as JSON). Exports are async (called on a fiber, so
//! fuel and the memory cap apply without blocking a runtime thread).

use crate::plugins::host::MemoryLimiter;
use std::path::Path;
use std::sync::Arc;
use wasmtime::ResourceLimiter;
use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxView, WasiView};

/// Where a provider sees its `data_dir` capability (model and voice files), read-only.
pub const DATA_DIR_GUEST_PATH: &str = "/data";

/// The `stt-provider` world.
pub mod stt {
    wasmtime::component::bindgen!({
        world: "stt-provider",
        path: "../plugin-api/wit",
        exports: { default: async },
        additional_derives: [PartialEq],
    });
}

/// The `tts-provider` world; `log`, `config` and `speech-types` are `stt`'s.
pub mod tts {
    wasmtime::component::bindgen!({
        world: "tts-provider",
        path: "../plugin-api/wit",
        exports: { default: async },
        additional_derives: [PartialEq],
        with: {
            "gatewayd:plugin/log": super::stt::gatewayd::plugin::log,
            "gatewayd:plugin/config": super::stt::gatewayd::plugin::config,
            "gatewayd:plugin/speech-types": super::stt::gatewayd::plugin::speech_types,
        },
    });
}

pub use stt::gatewayd::plugin::speech_types as types;
use stt::gatewayd::plugin::{config, log};

/// The data of one provider instance's store.
pub struct SpeechHost {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: MemoryLimiter,
    plugin: Arc<str>,
    config_json: Arc<str>,
}

impl SpeechHost {
    /// State for an instance of `plugin` with `config_json`, a linear memory cap of
    /// `memory_bytes` and, when `data_dir` is given, that directory readable (not writable) at
    /// `/data` ([`DATA_DIR_GUEST_PATH`]). Errors: the directory cannot be opened.
    pub fn new(
        plugin: Arc<str>,
        config_json: Arc<str>,
        memory_bytes: usize,
        data_dir: Option<&Path>,
    ) -> anyhow::Result<SpeechHost> {
        let mut wasi = WasiCtx::builder();
        if let Some(dir) = data_dir {
            wasi.preopened_dir(dir, DATA_DIR_GUEST_PATH, FsPerms::ReadOnly)
                .map_err(|e| anyhow::anyhow!("data_dir {}: {e}", dir.display()))?;
        }
        Ok(SpeechHost {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            limiter: MemoryLimiter { max_bytes: memory_bytes, hit: false },
            plugin,
            config_json,
        })
    }

    /// The memory limiter (for `Store::limiter`).
    pub fn limiter(&mut self) -> &mut dyn ResourceLimiter {
        &mut self.limiter
    }

    /// Whether a memory growth was refused (to name the fault).
    pub fn memory_limit_hit(&self) -> bool {
        self.limiter.hit
    }
}

impl WasiView for SpeechHost {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl types::Host for SpeechHost {}

impl log::Host for SpeechHost {
    fn log(&mut self, level: log::Level, message: String) {
        let plugin = &*self.plugin;
        match level {
            log::Level::Trace => tracing::trace!(plugin, "{message}"),
            log::Level::Debug => tracing::debug!(plugin, "{message}"),
            log::Level::Info => tracing::info!(plugin, "{message}"),
            log::Level::Warn => tracing::warn!(plugin, "{message}"),
            log::Level::Error => tracing::error!(plugin, "{message}"),
        }
    }
}

impl config::Host for SpeechHost {
    fn get(&mut self) -> String {
        self.config_json.to_string()
    }
}

/// A linker with WASI (nothing granted) and the provider worlds' imports (`log`, `config`,
/// `speech-types`); both worlds import the same interfaces, so one linker serves both.
pub fn linker(engine: &wasmtime::Engine) -> anyhow::Result<Linker<SpeechHost>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(|e| anyhow::anyhow!("linking WASI: {e}"))?;
    stt::SttProvider::add_to_linker::<SpeechHost, HasSelf<SpeechHost>>(&mut linker, |s| s)
        .map_err(|e| anyhow::anyhow!("linking the speech imports: {e}"))?;
    Ok(linker)
}
