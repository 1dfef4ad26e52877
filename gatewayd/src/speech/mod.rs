//! Speech providers, host side (issue #11): STT and TTS plugins (`plugin-api/wit/speech.wit`)
//! run sans-IO; the daemon carries out their plans.
//!
//! - [`Provider`] ([`provider`]): a provider component loaded and checked (`init`), with its
//!   outbound network ([`crate::net::Outbound`]). Every stream gets its own instance, with a
//!   fuel budget per call and a memory cap ([`Limits`]).
//! - [`SttStream`] ([`stt`]): call audio (G.711 mu-law, 8000 Hz, 20 ms frames of 160 bytes) to
//!   a vendor WebSocket, vendor messages to neutral events; keepalive, finalize/close,
//!   reconnect with backoff and replay of the audio buffered meanwhile.
//! - [`TtsRequest`] ([`tts`]): text to a vendor HTTP request whose streamed audio comes out as
//!   16-bit PCM at 8000 Hz; retried once if it failed before any audio; cancelled by dropping.
//! - [`convert`]: the audio conversions (media codecs and a streaming resampler).
//! - [`Providers`] ([`providers`]): the provider plugins of the config by name, swapped by hot
//!   reload, and how a call picks one.
//! - [`Calls`] ([`calls`]): speech on protocol plugins' calls (`media.transcribe`, `say`).
//! - [`metrics`]: provider health in `/metrics`.

pub mod bindings;
pub mod calls;
pub mod convert;
pub mod metrics;
pub mod provider;
pub mod providers;
mod socket;
pub mod stt;
pub mod tts;

#[cfg(test)]
mod tests;

pub use bindings::types::{AudioEncoding, AudioFormat, CloseAction, Disconnect, ErrorKind, SpeechError};
pub use calls::{CallSpeechEvent, Calls};
pub use provider::{Limits, Provider, ProviderKind, SpeechEngine};
pub use providers::{Providers, component_kind};
pub use stt::{SttInput, SttStats, SttStream, SttStreamEvent};
pub use tts::{TtsOutput, TtsRequest};

/// Why a speech stream or request failed, or what went wrong on it: a stable `code` for logs
/// and metrics and a message (the vendor's own when it sent one; never a secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpeechFailure {
    /// `auth`, `bad_request`, `quota`, `rate_limited`, `unavailable`, `timeout`, `protocol`,
    /// `unsupported`, `config` (the plugin's classification of a vendor error), or the host's:
    /// `plugin_trap`, `plugin_cpu`, `plugin_memory` (the plugin failed), `gave_up` (the vendor
    /// accepted then closed at once too often, or reconnecting failed too often).
    pub code: &'static str,
    /// Human-readable text.
    pub message: String,
}

impl SpeechFailure {
    /// A failure with `code` and `message`.
    pub fn new(code: &'static str, message: impl Into<String>) -> SpeechFailure {
        SpeechFailure { code, message: message.into() }
    }

    /// An `unsupported` failure.
    pub fn unsupported(message: impl Into<String>) -> SpeechFailure {
        SpeechFailure::new("unsupported", message)
    }
}

impl From<SpeechError> for SpeechFailure {
    fn from(e: SpeechError) -> SpeechFailure {
        SpeechFailure { code: kind_code(e.kind), message: e.message }
    }
}

impl std::fmt::Display for SpeechFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// The stable code of an error kind.
pub fn kind_code(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Auth => "auth",
        ErrorKind::BadRequest => "bad_request",
        ErrorKind::Quota => "quota",
        ErrorKind::RateLimited => "rate_limited",
        ErrorKind::Unavailable => "unavailable",
        ErrorKind::Timeout => "timeout",
        ErrorKind::Protocol => "protocol",
        ErrorKind::Unsupported => "unsupported",
        ErrorKind::Config => "config",
    }
}

/// A plan's headers as the outbound network takes them.
fn headers(headers: Vec<bindings::types::Header>) -> Vec<crate::net::Header> {
    use bindings::types::HeaderValue;
    headers
        .into_iter()
        .map(|h| crate::net::Header {
            name: h.name,
            value: match h.value {
                HeaderValue::Literal(v) => crate::net::HeaderValueSpec::Literal(v),
                HeaderValue::Secret(s) => crate::net::HeaderValueSpec::Secret { name: s.name, template: s.template },
            },
        })
        .collect()
}

/// How an outbound attempt failed, for the plugin's `on-close`: a refusal (status and the
/// start of the vendor's body, already redacted) or a drop (the host's description).
fn disconnect_of(e: &crate::net::OutboundError, content_type: Option<String>) -> Disconnect {
    match e {
        crate::net::OutboundError::Status { status, body } => Disconnect::Refused(bindings::types::HttpFailure {
            status: *status,
            content_type,
            body: body.as_bytes().to_vec(),
        }),
        other => Disconnect::Dropped(other.to_string()),
    }
}
