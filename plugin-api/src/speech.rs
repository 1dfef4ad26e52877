//! Speech providers: STT and TTS plugins (`plugin-api/wit/speech.wit`, worlds `stt-provider`
//! and `tts-provider`). Enabled by the SDK's `speech` feature.
//!
//! A remote provider is sans-IO: it never opens a socket and never sees call audio or an API
//! key. It returns plans (URL, headers with secret references, first messages, keepalive, the
//! audio format and framing the vendor wants), turns vendor messages into neutral events and
//! commands into vendor messages, and classifies failures. See
//! `docs/writing-a-speech-provider.md`.
//!
//! ```text
//! use gatewayd_plugin::speech::{self, stt::*, *};
//!
//! struct MyVendor { options: SttOptions, offered: Vec<AudioFormat> }
//! impl speech::SttProvider for MyVendor {
//!     fn new(options: SttOptions, offered: Vec<AudioFormat>) -> Self { MyVendor { options, offered } }
//!     fn plan(&mut self) -> Result<SttPlan, SpeechError> { ... }
//!     fn on_message(&mut self, message: WsMessage) -> Vec<SttEvent> { ... }
//!     fn command(&mut self, command: SttCommand) -> CommandOutput { ... }
//!     fn on_close(&mut self, reason: Disconnect) -> CloseAction { ... }
//! }
//! gatewayd_plugin::stt_provider!(MyVendor);
//! ```
//!
//! A session is a component resource: one value of the plugin's type lives for the whole
//! stream (across reconnects), so it may keep per-stream state in its fields.

use serde::de::DeserializeOwned;

/// Raw bindings of the `stt-provider` world. `log` and `config` are the protocol world's
/// (`crate::log`, `crate::config` work in provider plugins too).
pub mod stt_bindings {
    wit_bindgen::generate!({
        world: "stt-provider",
        path: "wit",
        pub_export_macro: true,
        export_macro_name: "export_stt_provider",
        default_bindings_module: "gatewayd_plugin::speech::stt_bindings",
        with: {
            "gatewayd:plugin/log@0.1.0": crate::gatewayd::plugin::log,
            "gatewayd:plugin/config@0.1.0": crate::gatewayd::plugin::config,
        },
        additional_derives: [PartialEq],
        generate_all,
    });
}

/// Raw bindings of the `tts-provider` world; the shared speech types are `stt_bindings`'.
pub mod tts_bindings {
    wit_bindgen::generate!({
        world: "tts-provider",
        path: "wit",
        pub_export_macro: true,
        export_macro_name: "export_tts_provider",
        default_bindings_module: "gatewayd_plugin::speech::tts_bindings",
        with: {
            "gatewayd:plugin/log@0.1.0": crate::gatewayd::plugin::log,
            "gatewayd:plugin/config@0.1.0": crate::gatewayd::plugin::config,
            "gatewayd:plugin/speech-types@0.1.0": crate::speech::stt_bindings::gatewayd::plugin::speech_types,
        },
        additional_derives: [PartialEq],
        generate_all,
    });
}

pub use stt_bindings::gatewayd::plugin::speech_types::{
    AudioEncoding, AudioExtract, AudioFormat, AudioFraming, CloseAction, Disconnect, ErrorKind, Header, HeaderValue,
    HttpFailure, JsonAudio, Keepalive, RequestPlan, SecretRef, SpeechError, TextWrap, WsClose, WsConnection, WsMessage,
};

/// Speech-to-text types (`gatewayd:plugin/stt`).
pub mod stt {
    pub use super::stt_bindings::exports::gatewayd::plugin::stt::{
        CommandOutput, InProcessStt, SttCommand, SttEvent, SttMetadata, SttOptions, SttPlan, Transcript, Word, WsStt,
    };
}

/// Text-to-speech types (`gatewayd:plugin/tts`).
pub mod tts {
    pub use super::tts_bindings::exports::gatewayd::plugin::tts::{
        CancelPlan, CharTiming, HttpTts, InProcessTts, TtsEvent, TtsOptions, TtsPlan, WsTts,
    };
}

#[doc(hidden)]
pub mod __stt {
    pub use super::stt_bindings::exports::gatewayd::plugin::stt::{Guest, GuestSttSession};
}

#[doc(hidden)]
pub mod __tts {
    pub use super::tts_bindings::exports::gatewayd::plugin::tts::{Guest, GuestTtsSession};
}

use stt::*;
use tts::*;

/// The largest vendor message a provider accepts, in bytes (256 KiB). A larger one is an
/// `error` event of kind `protocol`, never a panic.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;

/// The longest error message kept, in bytes (longer ones are cut at a character boundary).
pub const MAX_ERROR_MESSAGE_BYTES: usize = 1024;

/// A speech-to-text provider: one value per recognition stream, alive for the stream's life.
///
/// Registered with [`stt_provider!`](crate::stt_provider). Calls never re-enter: each method
/// runs to completion before the host calls the next.
pub trait SttProvider: Sized + 'static {
    /// Check the configuration when the plugin is loaded; an error rejects this version.
    fn init() -> Result<(), String> {
        Ok(())
    }
    /// A session for `options`; `offered` lists the formats the host can send, its preference
    /// first. Cannot fail: keep a configuration error and return it from [`Self::plan`].
    fn new(options: SttOptions, offered: Vec<AudioFormat>) -> Self;
    /// How to reach the vendor, in which format. Called before each (re)connection.
    fn plan(&mut self) -> Result<SttPlan, SpeechError>;
    /// A vendor text (or non-audio binary) message turned into events, in order.
    fn on_message(&mut self, message: WsMessage) -> Vec<SttEvent>;
    /// A host command turned into vendor messages.
    fn command(&mut self, command: SttCommand) -> CommandOutput;
    /// Classify how the connection ended.
    fn on_close(&mut self, reason: Disconnect) -> CloseAction;
    /// In-process engines only: at least 100 ms of samples in the plan's format. The default
    /// (remote providers) refuses with `unsupported`.
    fn push_audio(&mut self, _samples: Vec<i16>) -> Result<Vec<SttEvent>, SpeechError> {
        Err(SpeechError::new(ErrorKind::Unsupported, "push-audio: this provider streams audio to a vendor"))
    }
}

/// A text-to-speech provider: one value per voice on one call, alive for the session's life.
///
/// Registered with [`tts_provider!`](crate::tts_provider). Only [`Self::new`], [`Self::plan`]
/// and [`Self::on_close`] are required; the rest default to `unsupported` (or nothing to send),
/// so an HTTP provider implements [`Self::speak`] and a WebSocket one [`Self::push_text`].
pub trait TtsProvider: Sized + 'static {
    /// Check the configuration when the plugin is loaded; an error rejects this version.
    fn init() -> Result<(), String> {
        Ok(())
    }
    /// A session for `options`; `wanted` lists output formats, the host's preference first.
    /// Cannot fail: keep a configuration error and return it from [`Self::plan`].
    fn new(options: TtsOptions, wanted: Vec<AudioFormat>) -> Self;
    /// The mode and the output format.
    fn plan(&mut self) -> Result<TtsPlan, SpeechError>;
    /// HTTP mode: the request that speaks `text`.
    fn speak(&mut self, _text: String) -> Result<RequestPlan, SpeechError> {
        Err(SpeechError::new(ErrorKind::Unsupported, "speak: this provider is not in HTTP mode"))
    }
    /// WebSocket mode: messages sending `text` for utterance `context_id`.
    fn push_text(&mut self, _context_id: String, _text: String, _flush: bool) -> Result<Vec<WsMessage>, SpeechError> {
        Err(SpeechError::new(ErrorKind::Unsupported, "push-text: this provider is not in WebSocket mode"))
    }
    /// WebSocket mode: messages ending the input of `context_id`.
    fn finish(&mut self, _context_id: String) -> Vec<WsMessage> {
        Vec::new()
    }
    /// What stops `context_id` at the vendor (HTTP: nothing, the host drops the response).
    fn cancel(&mut self, _context_id: String) -> CancelPlan {
        CancelPlan { send: Vec::new(), reconnect: false }
    }
    /// A vendor message the host passed on, turned into events.
    fn on_message(&mut self, _message: WsMessage) -> Vec<TtsEvent> {
        Vec::new()
    }
    /// Classify how a connection or request ended.
    fn on_close(&mut self, reason: Disconnect) -> CloseAction;
    /// In-process mode: start synthesising `text`.
    fn synthesize(&mut self, _text: String) -> Result<(), SpeechError> {
        Err(SpeechError::new(ErrorKind::Unsupported, "synthesize: this provider is remote"))
    }
    /// In-process mode: up to `max_samples` output samples, `None` when done.
    fn pull_audio(&mut self, _max_samples: u32) -> Result<Option<Vec<i16>>, SpeechError> {
        Err(SpeechError::new(ErrorKind::Unsupported, "pull-audio: this provider is remote"))
    }
}

/// Register an [`SttProvider`] as the component's `stt` export (resource `stt-session`).
#[macro_export]
macro_rules! stt_provider {
    ($ty:ident) => {
        /// The exported `stt-session` resource: one provider value per stream. Calls never
        /// re-enter, so the borrow never fails.
        #[doc(hidden)]
        pub struct __GatewaydSttSession(::core::cell::RefCell<$ty>);

        impl $crate::speech::__stt::GuestSttSession for __GatewaydSttSession {
            fn new(
                options: $crate::speech::stt::SttOptions,
                offered: $crate::__sdk::Vec<$crate::speech::AudioFormat>,
            ) -> Self {
                Self(::core::cell::RefCell::new(<$ty as $crate::speech::SttProvider>::new(options, offered)))
            }
            fn plan(&self) -> ::core::result::Result<$crate::speech::stt::SttPlan, $crate::speech::SpeechError> {
                <$ty as $crate::speech::SttProvider>::plan(&mut self.0.borrow_mut())
            }
            fn on_message(
                &self,
                message: $crate::speech::WsMessage,
            ) -> $crate::__sdk::Vec<$crate::speech::stt::SttEvent> {
                <$ty as $crate::speech::SttProvider>::on_message(&mut self.0.borrow_mut(), message)
            }
            fn command(&self, command: $crate::speech::stt::SttCommand) -> $crate::speech::stt::CommandOutput {
                <$ty as $crate::speech::SttProvider>::command(&mut self.0.borrow_mut(), command)
            }
            fn on_close(&self, reason: $crate::speech::Disconnect) -> $crate::speech::CloseAction {
                <$ty as $crate::speech::SttProvider>::on_close(&mut self.0.borrow_mut(), reason)
            }
            fn push_audio(
                &self,
                samples: $crate::__sdk::Vec<i16>,
            ) -> ::core::result::Result<
                $crate::__sdk::Vec<$crate::speech::stt::SttEvent>,
                $crate::speech::SpeechError,
            > {
                <$ty as $crate::speech::SttProvider>::push_audio(&mut self.0.borrow_mut(), samples)
            }
        }

        #[doc(hidden)]
        pub struct __GatewaydStt;

        impl $crate::speech::__stt::Guest for __GatewaydStt {
            type SttSession = __GatewaydSttSession;
            fn init() -> ::core::result::Result<(), $crate::__sdk::String> {
                <$ty as $crate::speech::SttProvider>::init()
            }
        }

        // Exports exist only in the Wasm build (see `protocol_plugin!`).
        #[cfg(target_arch = "wasm32")]
        $crate::speech::stt_bindings::export_stt_provider!(__GatewaydStt with_types_in $crate::speech::stt_bindings);
        /// Host builds only: the session's methods, kept reachable (on Wasm they are the exports).
        #[cfg(not(target_arch = "wasm32"))]
        #[doc(hidden)]
        pub fn __stt_provider_handlers() -> impl ::core::any::Any {
            use $crate::speech::__stt::GuestSttSession as _;
            (
                <__GatewaydStt as $crate::speech::__stt::Guest>::init,
                __GatewaydSttSession::new,
                __GatewaydSttSession::plan,
                __GatewaydSttSession::on_message,
                __GatewaydSttSession::command,
                __GatewaydSttSession::on_close,
                __GatewaydSttSession::push_audio,
            )
        }
    };
}

/// Register a [`TtsProvider`] as the component's `tts` export (resource `tts-session`).
#[macro_export]
macro_rules! tts_provider {
    ($ty:ident) => {
        /// The exported `tts-session` resource: one provider value per session. Calls never
        /// re-enter, so the borrow never fails.
        #[doc(hidden)]
        pub struct __GatewaydTtsSession(::core::cell::RefCell<$ty>);

        impl $crate::speech::__tts::GuestTtsSession for __GatewaydTtsSession {
            fn new(
                options: $crate::speech::tts::TtsOptions,
                wanted: $crate::__sdk::Vec<$crate::speech::AudioFormat>,
            ) -> Self {
                Self(::core::cell::RefCell::new(<$ty as $crate::speech::TtsProvider>::new(options, wanted)))
            }
            fn plan(&self) -> ::core::result::Result<$crate::speech::tts::TtsPlan, $crate::speech::SpeechError> {
                <$ty as $crate::speech::TtsProvider>::plan(&mut self.0.borrow_mut())
            }
            fn speak(
                &self,
                text: $crate::__sdk::String,
            ) -> ::core::result::Result<$crate::speech::RequestPlan, $crate::speech::SpeechError> {
                <$ty as $crate::speech::TtsProvider>::speak(&mut self.0.borrow_mut(), text)
            }
            fn push_text(
                &self,
                context_id: $crate::__sdk::String,
                text: $crate::__sdk::String,
                flush: bool,
            ) -> ::core::result::Result<$crate::__sdk::Vec<$crate::speech::WsMessage>, $crate::speech::SpeechError>
            {
                <$ty as $crate::speech::TtsProvider>::push_text(&mut self.0.borrow_mut(), context_id, text, flush)
            }
            fn finish(&self, context_id: $crate::__sdk::String) -> $crate::__sdk::Vec<$crate::speech::WsMessage> {
                <$ty as $crate::speech::TtsProvider>::finish(&mut self.0.borrow_mut(), context_id)
            }
            fn cancel(&self, context_id: $crate::__sdk::String) -> $crate::speech::tts::CancelPlan {
                <$ty as $crate::speech::TtsProvider>::cancel(&mut self.0.borrow_mut(), context_id)
            }
            fn on_message(
                &self,
                message: $crate::speech::WsMessage,
            ) -> $crate::__sdk::Vec<$crate::speech::tts::TtsEvent> {
                <$ty as $crate::speech::TtsProvider>::on_message(&mut self.0.borrow_mut(), message)
            }
            fn on_close(&self, reason: $crate::speech::Disconnect) -> $crate::speech::CloseAction {
                <$ty as $crate::speech::TtsProvider>::on_close(&mut self.0.borrow_mut(), reason)
            }
            fn synthesize(&self, text: $crate::__sdk::String) -> ::core::result::Result<(), $crate::speech::SpeechError> {
                <$ty as $crate::speech::TtsProvider>::synthesize(&mut self.0.borrow_mut(), text)
            }
            fn pull_audio(
                &self,
                max_samples: u32,
            ) -> ::core::result::Result<
                ::core::option::Option<$crate::__sdk::Vec<i16>>,
                $crate::speech::SpeechError,
            > {
                <$ty as $crate::speech::TtsProvider>::pull_audio(&mut self.0.borrow_mut(), max_samples)
            }
        }

        #[doc(hidden)]
        pub struct __GatewaydTts;

        impl $crate::speech::__tts::Guest for __GatewaydTts {
            type TtsSession = __GatewaydTtsSession;
            fn init() -> ::core::result::Result<(), $crate::__sdk::String> {
                <$ty as $crate::speech::TtsProvider>::init()
            }
        }

        // Exports exist only in the Wasm build (see `protocol_plugin!`).
        #[cfg(target_arch = "wasm32")]
        $crate::speech::tts_bindings::export_tts_provider!(__GatewaydTts with_types_in $crate::speech::tts_bindings);
        /// Host builds only: the session's methods, kept reachable (on Wasm they are the exports).
        #[cfg(not(target_arch = "wasm32"))]
        #[doc(hidden)]
        pub fn __tts_provider_handlers() -> impl ::core::any::Any {
            use $crate::speech::__tts::GuestTtsSession as _;
            (
                <__GatewaydTts as $crate::speech::__tts::Guest>::init,
                __GatewaydTtsSession::new,
                __GatewaydTtsSession::plan,
                __GatewaydTtsSession::speak,
                __GatewaydTtsSession::push_text,
                __GatewaydTtsSession::finish,
                __GatewaydTtsSession::cancel,
                __GatewaydTtsSession::on_message,
                __GatewaydTtsSession::on_close,
                __GatewaydTtsSession::synthesize,
                __GatewaydTtsSession::pull_audio,
            )
        }
    };
}

impl AudioFormat {
    /// G.711 mu-law, 8000 Hz, mono: a phone call's own format.
    pub const MULAW_8000: AudioFormat = AudioFormat { encoding: AudioEncoding::Mulaw, sample_rate: 8000, channels: 1 };

    /// Mono PCM s16le at `sample_rate` Hz.
    pub const fn pcm_mono(sample_rate: u32) -> AudioFormat {
        AudioFormat { encoding: AudioEncoding::PcmS16le, sample_rate, channels: 1 }
    }
}

/// The first of `offered` (the host's preference order) that `accepts` takes, if any.
pub fn pick_format(offered: &[AudioFormat], accepts: impl Fn(&AudioFormat) -> bool) -> Option<AudioFormat> {
    offered.iter().find(|f| accepts(f)).copied()
}

impl SpeechError {
    /// An error of `kind`; `message` is cut to [`MAX_ERROR_MESSAGE_BYTES`] at a character
    /// boundary.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> SpeechError {
        let mut message = message.into();
        truncate_at_char(&mut message, MAX_ERROR_MESSAGE_BYTES);
        SpeechError { kind, message }
    }
}

/// Cut `s` to at most `max` bytes at a character boundary.
fn truncate_at_char(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

impl Header {
    /// A header with a literal value.
    pub fn literal(name: &str, value: impl Into<String>) -> Header {
        Header { name: name.into(), value: HeaderValue::Literal(value.into()) }
    }

    /// A header whose value the host builds from the secret `secret` and `template` (one `{}`).
    pub fn secret(name: &str, secret: &str, template: &str) -> Header {
        Header {
            name: name.into(),
            value: HeaderValue::Secret(SecretRef { name: secret.into(), template: template.into() }),
        }
    }
}

impl WsMessage {
    /// A text message with `value` serialized as JSON.
    pub fn json(value: &serde_json::Value) -> WsMessage {
        WsMessage::Text(value.to_string())
    }
}

/// A URL: `base` (scheme, host, optional port and path prefix; a trailing `/` is ignored), then
/// `segments` each percent-encoded as one path segment, then `query` pairs in order,
/// form-encoded (`a b` -> `a+b`). Errors (`config`): `base` is not an absolute `http(s)` or
/// `ws(s)` URL, or has a query or fragment.
pub fn build_url(base: &str, segments: &[&str], query: &[(&str, String)]) -> Result<String, SpeechError> {
    let mut url =
        url::Url::parse(base).map_err(|e| SpeechError::new(ErrorKind::Config, format!("base_url `{base}`: {e}")))?;
    if !matches!(url.scheme(), "http" | "https" | "ws" | "wss") || url.cannot_be_a_base() {
        return Err(SpeechError::new(ErrorKind::Config, format!("base_url `{base}`: not an http(s) or ws(s) URL")));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(SpeechError::new(ErrorKind::Config, format!("base_url `{base}`: has a query or fragment")));
    }
    {
        let mut path = url
            .path_segments_mut()
            .map_err(|()| SpeechError::new(ErrorKind::Config, format!("base_url `{base}`: cannot take a path")))?;
        path.pop_if_empty();
        path.extend(segments);
    }
    if !query.is_empty() {
        let mut pairs = url.query_pairs_mut();
        for (name, value) in query {
            pairs.append_pair(name, value);
        }
    }
    Ok(url.into())
}

/// Decode a vendor text message as JSON into `T`. Errors (`protocol`): over
/// [`MAX_MESSAGE_BYTES`], not JSON, or not of `T`'s shape.
pub fn decode_json<T: DeserializeOwned>(text: &str) -> Result<T, SpeechError> {
    if text.len() > MAX_MESSAGE_BYTES {
        return Err(SpeechError::new(
            ErrorKind::Protocol,
            format!("vendor message of {} bytes is over the {MAX_MESSAGE_BYTES}-byte bound", text.len()),
        ));
    }
    serde_json::from_str(text).map_err(|e| SpeechError::new(ErrorKind::Protocol, format!("vendor message: {e}")))
}

/// Seconds (a vendor's float) to whole milliseconds, rounded; negative or NaN gives 0 and
/// anything over `u32::MAX` ms (about 49 days) saturates.
pub fn secs_to_ms(secs: f64) -> u32 {
    let ms = (secs * 1000.0).round();
    if ms.is_nan() || ms <= 0.0 {
        0
    } else if ms >= u32::MAX as f64 {
        u32::MAX
    } else {
        ms as u32
    }
}

/// The error kind of a refused request by HTTP status: 401/403 `auth`, 402 `quota`, 408
/// `timeout`, 429 `rate-limited`, 5xx `unavailable`, any other `bad-request`.
pub fn status_kind(status: u16) -> ErrorKind {
    match status {
        401 | 403 => ErrorKind::Auth,
        402 => ErrorKind::Quota,
        408 => ErrorKind::Timeout,
        429 => ErrorKind::RateLimited,
        500..=599 => ErrorKind::Unavailable,
        _ => ErrorKind::BadRequest,
    }
}

/// Whether an error of `kind` is worth retrying (`rate-limited`, `unavailable`, `timeout`).
pub fn is_transient(kind: ErrorKind) -> bool {
    matches!(kind, ErrorKind::RateLimited | ErrorKind::Unavailable | ErrorKind::Timeout)
}

/// The usual classification of a refused request: the kind from [`status_kind`], the message
/// from `vendor_message` applied to the body's JSON (the vendor's own text), else the body as
/// text, else `HTTP <status>`; transient kinds reconnect, the others fail.
pub fn classify_refusal(
    failure: &HttpFailure,
    vendor_message: impl Fn(&serde_json::Value) -> Option<String>,
) -> CloseAction {
    let kind = status_kind(failure.status);
    let error =
        SpeechError::new(kind, format!("HTTP {}: {}", failure.status, refusal_message(failure, vendor_message)));
    if is_transient(kind) { CloseAction::Reconnect(error) } else { CloseAction::Fail(error) }
}

/// The vendor's message in a refused request's body (see [`classify_refusal`]).
pub fn refusal_message(failure: &HttpFailure, vendor_message: impl Fn(&serde_json::Value) -> Option<String>) -> String {
    let body = &failure.body[..failure.body.len().min(MAX_MESSAGE_BYTES)];
    if let Ok(json) = serde_json::from_slice::<serde_json::Value>(body)
        && let Some(message) = vendor_message(&json)
    {
        return message;
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() { String::from("(no body)") } else { text.to_string() }
}

impl Default for SttOptions {
    /// No language or model (the provider's defaults), interim results on, vendor defaults for
    /// endpointing, no utterance end, no keyterms.
    fn default() -> Self {
        SttOptions {
            language: None,
            model: None,
            interim_results: true,
            endpointing_ms: None,
            utterance_end_ms: None,
            keyterms: Vec::new(),
            extra: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_encode_segments_and_query() {
        let url =
            build_url("https://api.example.com/", &["v1", "voice id/x"], &[("a", "b c".into()), ("k", "x&y".into())])
                .unwrap();
        assert_eq!(url, "https://api.example.com/v1/voice%20id%2Fx?a=b+c&k=x%26y");
        let url = build_url("http://127.0.0.1:9000/prefix", &["v1"], &[]).unwrap();
        assert_eq!(url, "http://127.0.0.1:9000/prefix/v1");
        assert_eq!(build_url("not a url", &[], &[]).unwrap_err().kind, ErrorKind::Config);
        assert_eq!(build_url("ftp://x", &[], &[]).unwrap_err().kind, ErrorKind::Config);
        assert_eq!(build_url("https://x/?q=1", &[], &[]).unwrap_err().kind, ErrorKind::Config);
    }

    #[test]
    fn seconds_become_bounded_milliseconds() {
        assert_eq!(secs_to_ms(1.0205), 1021);
        assert_eq!(secs_to_ms(-3.0), 0);
        assert_eq!(secs_to_ms(f64::NAN), 0);
        assert_eq!(secs_to_ms(1e12), u32::MAX);
    }

    #[test]
    fn errors_are_cut_at_a_character_boundary() {
        let e = SpeechError::new(ErrorKind::Protocol, "é".repeat(MAX_ERROR_MESSAGE_BYTES));
        assert!(e.message.len() <= MAX_ERROR_MESSAGE_BYTES && e.message.len() >= MAX_ERROR_MESSAGE_BYTES - 1);
    }

    #[test]
    fn oversized_messages_are_protocol_errors() {
        let big = format!("\"{}\"", "a".repeat(MAX_MESSAGE_BYTES));
        assert_eq!(decode_json::<serde_json::Value>(&big).unwrap_err().kind, ErrorKind::Protocol);
        assert_eq!(decode_json::<serde_json::Value>("{").unwrap_err().kind, ErrorKind::Protocol);
    }

    #[test]
    fn refusals_are_classified_by_status() {
        let failure = |status, body: &str| HttpFailure { status, content_type: None, body: body.as_bytes().to_vec() };
        let msg = |v: &serde_json::Value| v["message"].as_str().map(str::to_string);
        match classify_refusal(&failure(401, r#"{"message":"bad key"}"#), msg) {
            CloseAction::Fail(e) => assert_eq!((e.kind, e.message.as_str()), (ErrorKind::Auth, "HTTP 401: bad key")),
            other => panic!("{other:?}"),
        }
        match classify_refusal(&failure(503, "busy"), msg) {
            CloseAction::Reconnect(e) => {
                assert_eq!((e.kind, e.message.as_str()), (ErrorKind::Unavailable, "HTTP 503: busy"))
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(classify_refusal(&failure(429, ""), msg), CloseAction::Reconnect(_)));
        assert!(matches!(
            classify_refusal(&failure(400, ""), msg),
            CloseAction::Fail(SpeechError { kind: ErrorKind::BadRequest, .. })
        ));
    }

    #[test]
    fn formats_are_picked_in_host_order() {
        let offered = [AudioFormat::MULAW_8000, AudioFormat::pcm_mono(16000)];
        assert_eq!(
            pick_format(&offered, |f| f.encoding == AudioEncoding::PcmS16le),
            Some(AudioFormat::pcm_mono(16000))
        );
        assert_eq!(pick_format(&offered, |_| true), Some(AudioFormat::MULAW_8000));
        assert_eq!(pick_format(&offered, |f| f.sample_rate == 48000), None);
    }
}
