//! Per-plugin metrics (prometheus-client), kept across versions and exposed by `/metrics`:
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `gatewayd_plugin_events_total` | counter | plugin |
//! | `gatewayd_plugin_faults_total` | counter | plugin, kind (`trap`, `timeout`, `memory`, `unavailable`) |
//! | `gatewayd_plugin_event_duration_seconds` | histogram | plugin |
//! | `gatewayd_plugin_reloads_total` | counter | plugin, result (`ok`, `rejected`) |
//! | `gatewayd_plugin_load_seconds` | gauge | plugin (latest compile + link + init) |
//! | `gatewayd_plugin_version_info` | gauge (1) | plugin, version (SHA-256 prefix), file |
//! | `gatewayd_connections` | gauge | |
//! | `gatewayd_edge_*` | see `server::limits` | |
//! | `gatewayd_speech_*` | see `speech::metrics` | |
//!
//! Each plugin clones its metric handles once, so recording an event touches no registry lock.

use super::{Fault, VersionInfo};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

/// Upper bounds of the event-duration buckets, in seconds.
pub const DURATION_BUCKETS: [f64; 16] =
    [2e-6, 5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 1e-1, 1.0];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginLabel {
    plugin: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    plugin: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    plugin: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    plugin: String,
    version: String,
    file: String,
}

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

/// The daemon's metrics registry.
pub struct Metrics {
    registry: Registry,
    events: Family<PluginLabel, Counter>,
    faults: Family<KindLabel, Counter>,
    durations: Family<PluginLabel, Histogram, fn() -> Histogram>,
    reloads: Family<ResultLabel, Counter>,
    load_seconds: Family<PluginLabel, Gauge<f64, AtomicU64>>,
    versions: Family<VersionLabel, Gauge>,
    /// Live WebSocket connections.
    pub connections: Gauge,
    /// Admission, refusals and closes at the edge (`server::limits`).
    pub edge: std::sync::Arc<crate::server::limits::EdgeMetrics>,
    /// Speech provider health (`speech::metrics`).
    pub speech: std::sync::Arc<crate::speech::metrics::SpeechMetrics>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("gatewayd");
        let events = Family::default();
        let faults = Family::default();
        let durations = Family::new_with_constructor(duration_histogram as fn() -> Histogram);
        let reloads = Family::default();
        let load_seconds = Family::default();
        let versions = Family::default();
        let connections = Gauge::default();
        registry.register("plugin_events", "Events dispatched to a plugin", events.clone());
        registry.register(
            "plugin_faults",
            "Events a plugin failed: trap, timeout, memory, unavailable",
            faults.clone(),
        );
        registry.register("plugin_event_duration_seconds", "Time to run one plugin event", durations.clone());
        registry.register("plugin_reloads", "Plugin reloads by result (ok, rejected)", reloads.clone());
        registry.register("plugin_load_seconds", "Latest compile + link + init time of a plugin", load_seconds.clone());
        registry.register("plugin_version_info", "The loaded version of each plugin", versions.clone());
        registry.register("connections", "Live WebSocket connections", connections.clone());
        let edge = std::sync::Arc::new(crate::server::limits::EdgeMetrics::default());
        edge.register(&mut registry);
        let speech = std::sync::Arc::new(crate::speech::metrics::SpeechMetrics::register(&mut registry));
        Metrics { registry, events, faults, durations, reloads, load_seconds, versions, connections, edge, speech }
    }
}

impl Metrics {
    /// The registry in Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

/// One plugin's metric handles.
pub struct PluginStats {
    name: String,
    events: Counter,
    traps: Counter,
    timeouts: Counter,
    memory: Counter,
    unavailable: Counter,
    durations: Histogram,
    reloads_ok: Counter,
    reloads_rejected: Counter,
    load_seconds: Gauge<f64, AtomicU64>,
    versions: Family<VersionLabel, Gauge>,
}

impl PluginStats {
    pub fn new(metrics: &Metrics, plugin: &str) -> PluginStats {
        let p = PluginLabel { plugin: plugin.to_string() };
        let kind = |k: &str| {
            metrics.faults.get_or_create_owned(&KindLabel { plugin: plugin.to_string(), kind: k.to_string() })
        };
        let result = |r: &str| {
            metrics.reloads.get_or_create_owned(&ResultLabel { plugin: plugin.to_string(), result: r.to_string() })
        };
        PluginStats {
            name: plugin.to_string(),
            events: metrics.events.get_or_create_owned(&p),
            traps: kind("trap"),
            timeouts: kind("timeout"),
            memory: kind("memory"),
            unavailable: kind("unavailable"),
            durations: metrics.durations.get_or_create_owned(&p),
            reloads_ok: result("ok"),
            reloads_rejected: result("rejected"),
            load_seconds: metrics.load_seconds.get_or_create_owned(&p),
            versions: metrics.versions.clone(),
        }
    }

    /// Count one event that took `elapsed` and ended with `fault`, if any.
    pub fn record(&self, elapsed: Duration, fault: Option<&Fault>) {
        self.events.inc();
        self.durations.observe(elapsed.as_secs_f64());
        if let Some(f) = fault {
            match f {
                Fault::Trap(_) => &self.traps,
                Fault::Timeout(_) => &self.timeouts,
                Fault::Memory(_) => &self.memory,
                Fault::Instantiate(_) => &self.unavailable,
            }
            .inc();
        }
    }

    /// A version finished loading in `took`; it replaces `old` (if any) as the one serving.
    pub fn loaded(&self, took: Duration, new: &VersionInfo, old: Option<&VersionInfo>) {
        self.load_seconds.set(took.as_secs_f64());
        if let Some(old) = old {
            self.versions.remove(&self.version_label(old));
            self.reloads_ok.inc();
        }
        self.versions.get_or_create(&self.version_label(new)).set(1);
    }

    pub fn reload_rejected(&self) {
        self.reloads_rejected.inc();
    }

    fn version_label(&self, v: &VersionInfo) -> VersionLabel {
        VersionLabel { plugin: self.name.clone(), version: v.hash.clone(), file: v.file.display().to_string() }
    }
}
