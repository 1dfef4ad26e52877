//! Speech provider health in `/metrics` (prometheus-client, registered with the daemon's
//! registry by `plugins::stats::Metrics`):
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `gatewayd_speech_streams_open` | gauge | provider (STT streams and TTS requests running) |
//! | `gatewayd_speech_streams_total` | counter | provider, kind (`stt`, `tts`) |
//! | `gatewayd_speech_reconnects_total` | counter | provider |
//! | `gatewayd_speech_errors_total` | counter | provider, code (`auth`, `gave_up`, ...: `SpeechFailure::code`) |
//! | `gatewayd_speech_connect_seconds` | histogram | provider (STT: start to vendor socket open) |
//! | `gatewayd_speech_first_audio_seconds` | histogram | provider (TTS: request to first audio) |
//! | `gatewayd_speech_dropped_audio_bytes_total` | counter | provider (call audio lost: buffer full while disconnected, or the stream's input full) |
//! | `gatewayd_speech_dropped_events_total` | counter | reason (`channel_full`, `no_handler`) |

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds (5 ms to 10 s).
pub const LATENCY_BUCKETS: [f64; 11] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProviderLabel {
    provider: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    provider: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabel {
    provider: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// The speech metric families.
pub struct SpeechMetrics {
    open: Family<ProviderLabel, Gauge>,
    started: Family<KindLabel, Counter>,
    reconnects: Family<ProviderLabel, Counter>,
    errors: Family<CodeLabel, Counter>,
    connect: Family<ProviderLabel, Histogram, fn() -> Histogram>,
    first_audio: Family<ProviderLabel, Histogram, fn() -> Histogram>,
    dropped_audio: Family<ProviderLabel, Counter>,
    dropped_events: Family<ReasonLabel, Counter>,
}

impl SpeechMetrics {
    /// New families, registered in `registry` (prefixed `gatewayd_` by it).
    pub fn register(registry: &mut Registry) -> SpeechMetrics {
        let m = SpeechMetrics {
            open: Family::default(),
            started: Family::default(),
            reconnects: Family::default(),
            errors: Family::default(),
            connect: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            first_audio: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            dropped_audio: Family::default(),
            dropped_events: Family::default(),
        };
        registry.register("speech_streams_open", "STT streams and TTS requests running", m.open.clone());
        registry.register("speech_streams", "STT streams and TTS requests started", m.started.clone());
        registry.register("speech_reconnects", "STT streams reconnected to their vendor", m.reconnects.clone());
        registry.register("speech_errors", "Speech failures by code", m.errors.clone());
        registry.register("speech_connect_seconds", "STT: stream start to vendor socket open", m.connect.clone());
        registry.register("speech_first_audio_seconds", "TTS: request start to first audio", m.first_audio.clone());
        registry.register("speech_dropped_audio_bytes", "Call audio an STT stream lost", m.dropped_audio.clone());
        registry.register("speech_dropped_events", "Speech events not delivered to a plugin", m.dropped_events.clone());
        m
    }

    fn label(provider: &str) -> ProviderLabel {
        ProviderLabel { provider: provider.to_string() }
    }

    /// A stream of `kind` (`stt` or `tts`) started with `provider`; the returned guard keeps it
    /// counted as open until dropped.
    pub fn opened(&self, provider: &str, kind: &'static str) -> OpenGuard {
        self.started.get_or_create(&KindLabel { provider: provider.to_string(), kind: kind.to_string() }).inc();
        let gauge = self.open.get_or_create_owned(&Self::label(provider));
        gauge.inc();
        OpenGuard(gauge)
    }

    pub fn reconnect(&self, provider: &str) {
        self.reconnects.get_or_create(&Self::label(provider)).inc();
    }

    pub fn error(&self, provider: &str, code: &str) {
        self.errors.get_or_create(&CodeLabel { provider: provider.to_string(), code: code.to_string() }).inc();
    }

    pub fn connected(&self, provider: &str, took: Duration) {
        self.connect.get_or_create(&Self::label(provider)).observe(took.as_secs_f64());
    }

    pub fn first_audio(&self, provider: &str, took: Duration) {
        self.first_audio.get_or_create(&Self::label(provider)).observe(took.as_secs_f64());
    }

    pub fn dropped_audio(&self, provider: &str, bytes: u64) {
        if bytes > 0 {
            self.dropped_audio.get_or_create(&Self::label(provider)).inc_by(bytes);
        }
    }

    /// A speech event was not delivered: `channel_full` (the stream's event queue) or
    /// `no_handler` (the plugin's current version does not export `speech-handler`).
    pub fn dropped_event(&self, reason: &'static str, n: u64) {
        if n > 0 {
            self.dropped_events.get_or_create(&ReasonLabel { reason: reason.to_string() }).inc_by(n);
        }
    }
}

/// Counts a stream as open while alive.
pub struct OpenGuard(Gauge);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
