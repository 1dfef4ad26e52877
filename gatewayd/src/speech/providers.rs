//! [`Providers`]: the speech provider plugins of the config, by name.
//!
//! A `[plugins.<name>]` entry whose component exports `gatewayd:plugin/stt` or
//! `gatewayd:plugin/tts` ([`component_kind`]) is a provider: `plugins::Runtime` loads it with
//! [`super::Provider::load`] and keeps it here instead of routing to it. A hot reload swaps
//! the `Arc<Provider>` under its name: streams already running keep the version they started
//! with, the next stream takes the new one. Calls pick a provider with [`Providers::choose`]:
//! the plugin's explicit name, else the route's `speech` choice, else `[speech]`.

use super::{Provider, ProviderKind};
use crate::config::SpeechChoice;
use parking_lot::RwLock;
use rustls::ClientConfig;
use std::collections::HashMap;
use std::sync::Arc;

/// Which speech world a component implements, by its top-level exports; `None` for any other
/// component (a protocol plugin) or bytes that are not a component.
pub fn component_kind(bytes: &[u8]) -> Option<ProviderKind> {
    use wasmparser::{Parser, Payload};
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(bytes) {
        match payload.ok()? {
            Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
            Payload::End(_) if depth > 0 => depth -= 1,
            Payload::End(_) => return None,
            Payload::ComponentExportSection(exports) if depth == 0 => {
                for export in exports {
                    let name = export.ok()?.name.name;
                    let interface = name.split('@').next().unwrap_or(name);
                    match interface {
                        "gatewayd:plugin/stt" => return Some(ProviderKind::Stt),
                        "gatewayd:plugin/tts" => return Some(ProviderKind::Tts),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    None
}

/// A loaded provider and what identifies its version (for reloads).
struct Loaded {
    provider: Arc<Provider>,
    version: crate::plugins::VersionInfo,
}

/// The registry of loaded providers and the daemon-wide defaults.
pub struct Providers {
    engine: super::SpeechEngine,
    tls: RwLock<Arc<ClientConfig>>,
    loaded: RwLock<HashMap<String, Loaded>>,
    defaults: RwLock<SpeechChoice>,
}

impl Providers {
    /// An empty registry whose providers' outbound TLS is `tls`.
    pub fn new(tls: Arc<ClientConfig>) -> anyhow::Result<Providers> {
        Ok(Providers {
            engine: super::SpeechEngine::new()?,
            tls: RwLock::new(tls),
            loaded: RwLock::new(HashMap::new()),
            defaults: RwLock::new(SpeechChoice::default()),
        })
    }

    /// The engine providers are compiled for.
    pub fn engine(&self) -> &super::SpeechEngine {
        &self.engine
    }

    /// The outbound TLS configuration for providers loaded from now on.
    pub fn tls(&self) -> Arc<ClientConfig> {
        self.tls.read().clone()
    }

    /// Replace the outbound TLS configuration (a reload changed `[network]`); providers loaded
    /// afterwards use it.
    pub fn set_tls(&self, tls: Arc<ClientConfig>) {
        *self.tls.write() = tls;
    }

    /// Set `[speech]`.
    pub fn set_defaults(&self, defaults: SpeechChoice) {
        *self.defaults.write() = defaults;
    }

    /// Add or replace provider `name`; returns the version it replaced.
    pub fn insert(
        &self,
        name: &str,
        provider: Arc<Provider>,
        version: crate::plugins::VersionInfo,
    ) -> Option<crate::plugins::VersionInfo> {
        self.loaded.write().insert(name.to_string(), Loaded { provider, version }).map(|old| old.version)
    }

    /// Forget providers not in `keep`; returns their names.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) -> Vec<String> {
        let mut removed = Vec::new();
        self.loaded.write().retain(|name, _| {
            let k = keep(name);
            if !k {
                removed.push(name.clone());
            }
            k
        });
        removed
    }

    /// The version of provider `name`, when loaded.
    pub fn version(&self, name: &str) -> Option<crate::plugins::VersionInfo> {
        self.loaded.read().get(name).map(|l| l.version.clone())
    }

    /// Names and versions of every loaded provider.
    pub fn list(&self) -> Vec<(String, ProviderKind, crate::plugins::VersionInfo)> {
        let mut list: Vec<_> =
            self.loaded.read().iter().map(|(n, l)| (n.clone(), l.provider.kind(), l.version.clone())).collect();
        list.sort_by(|a, b| a.0.cmp(&b.0));
        list
    }

    /// The provider of `kind` a call uses: `explicit` (the plugin named it), else `route`'s
    /// choice, else `[speech]`'s. Err (for the plugin): none configured, no such provider, or
    /// one of the other kind.
    pub fn choose(
        &self,
        kind: ProviderKind,
        explicit: Option<&str>,
        route: &SpeechChoice,
    ) -> Result<Arc<Provider>, String> {
        let (key, what) = match kind {
            ProviderKind::Stt => ("stt", "speech-to-text"),
            ProviderKind::Tts => ("tts", "text-to-speech"),
        };
        let pick = |c: &SpeechChoice| match kind {
            ProviderKind::Stt => c.stt.clone(),
            ProviderKind::Tts => c.tts.clone(),
        };
        let name = explicit
            .map(str::to_string)
            .or_else(|| pick(route))
            .or_else(|| pick(&self.defaults.read()))
            .ok_or_else(|| format!("no {what} provider: name one, or set [speech] {key} in the config"))?;
        let loaded = self.loaded.read();
        let provider =
            &loaded.get(&name).ok_or_else(|| format!("no {what} provider named `{name}` is loaded"))?.provider;
        if provider.kind() != kind {
            return Err(format!("plugin `{name}` is not a {what} provider"));
        }
        Ok(provider.clone())
    }
}
