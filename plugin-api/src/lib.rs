//! Guest SDK for gatewayd plugins.
//!
//! A plugin is a `cdylib` crate built for `wasm32-wasip2`. It implements [`Protocol`] (every
//! handler has a default, so implement only the events you care about) and registers itself
//! with [`protocol_plugin!`]:
//!
//! ```text
//! use gatewayd_plugin::{Protocol, ConnectionId, conn};
//!
//! struct Echo;
//! impl Protocol for Echo {
//!     fn on_text(id: ConnectionId, text: String) {
//!         conn::send_text(id, &text);
//!     }
//! }
//! gatewayd_plugin::protocol_plugin!(Echo);
//! ```
//!
//! The raw bindings of the WIT contract (`plugin-api/wit/gatewayd.wit`) are re-exported under
//! [`gatewayd`]; the helpers here add typed JSON and typed session state on top of them.
//!
//! Speech providers (STT and TTS plugins, `wit/speech.wit`) use the module `speech`, enabled by
//! this crate's `speech` feature: traits `SttProvider` and `TtsProvider`, registered with
//! [`stt_provider!`](crate::stt_provider) and [`tts_provider!`](crate::tts_provider).

#![allow(clippy::too_many_arguments)]
// The copy of this file that `gatewayd plugin new` writes beside a new plugin has a manifest
// without the `speech` feature; this keeps `#[cfg(feature = "speech")]` below from warning there.
#![allow(unexpected_cfgs)]

wit_bindgen::generate!({
    world: "plugin",
    path: "wit",
    pub_export_macro: true,
    export_macro_name: "export_protocol",
    default_bindings_module: "gatewayd_plugin",
    generate_all,
});

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use exports::gatewayd::plugin::handler::Guest;
pub use exports::gatewayd::plugin::schema::{Guest as SchemaGuest, Migration};
pub use exports::gatewayd::plugin::speech_handler::Guest as SpeechGuest;
pub use gatewayd::plugin::media::MediaEvent;
pub use gatewayd::plugin::speech_events::{SpeechEvent, SpeechFailure, Transcript};
pub use gatewayd::plugin::types::{ConnectInfo, ConnectionId, HttpRequest, HttpResponse, SqlValue};

/// Re-exported so plugins need no direct serde_json dependency for simple cases.
pub use serde_json;

// Speech providers (worlds `stt-provider`, `tts-provider`): behind the `speech` feature, so the
// SDK copy that `gatewayd plugin new` writes (this file and gatewayd.wit only) builds as before.
#[cfg(feature = "speech")]
pub mod speech;

/// The events a protocol plugin can handle. Every method has a do-nothing default
/// (`on_http` answers 404), so a plugin implements only what its protocol uses.
///
/// Each call is one event. Nothing survives between events inside the instance: keep
/// per-connection state with [`session`], plugin-wide state with [`kv`], durable data with
/// [`store`].
pub trait Protocol {
    /// Validate configuration when the plugin is loaded; an error rejects this version.
    fn init() -> Result<(), String> {
        Ok(())
    }
    /// A WebSocket connection was accepted on one of the plugin's routes.
    fn on_open(_info: ConnectInfo) {}
    /// A text message arrived on connection `id`.
    fn on_text(_id: ConnectionId, _text: String) {}
    /// A binary message arrived on connection `id`.
    fn on_binary(_id: ConnectionId, _data: Vec<u8>) {}
    /// Connection `id` closed with `code` (1006: dropped without a close frame).
    fn on_close(_id: ConnectionId, _code: u16) {}
    /// A timer armed with [`timers::set`] fired.
    fn on_timer(_key: String, _payload: String) {}
    /// An HTTP request arrived on one of the plugin's routes.
    fn on_http(_request: HttpRequest) -> HttpResponse {
        http::json(404, &serde_json::json!({"error": "not_found", "message": "no such endpoint"}))
    }
    /// A call on one of the plugin's media routes reported a media event (see [`media`]).
    fn on_media(_id: ConnectionId, _event: MediaEvent) {}
    /// Speech on call `id` (see [`media::transcribe`] and [`media::say`]): transcripts in
    /// order, speech started / utterance end, `stopped`, and STT / TTS errors.
    fn on_speech(_id: ConnectionId, _event: SpeechEvent) {}
    /// The plugin's own tables: its migrations for `backend` (`"sqlite"` or `"postgres"`), in
    /// ascending version order, applied by the daemon when it loads the plugin (see
    /// [`Migration`] and docs/security.md "Plugin tables"). Default: no tables.
    ///
    /// ```text
    /// fn migrations(backend: &str) -> Vec<Migration> {
    ///     gatewayd_plugin::migrations!(backend, "../migrations", [1 => "0001_visits"])
    /// }
    /// ```
    fn migrations(_backend: &str) -> Vec<Migration> {
        Vec::new()
    }
}

/// The migrations of a plugin that keeps them as files, one directory per backend:
/// `<dir>/sqlite/<file>.sql` and `<dir>/postgres/<file>.sql` (`<dir>` relative to the file
/// that uses the macro). Expands to a `Vec<Migration>` for `$backend` with the SQL compiled
/// into the component, each migration named by its file:
/// `migrations!(backend, "../migrations", [1 => "0001_sessions", 2 => "0002_quotas"])`.
#[macro_export]
macro_rules! migrations {
    ($backend:expr, $dir:literal, [$($version:literal => $file:literal),* $(,)?]) => {{
        let postgres = $backend == "postgres";
        let mut list: $crate::__sdk::Vec<$crate::Migration> = $crate::__sdk::Vec::new();
        $(
            list.push($crate::Migration {
                version: $version,
                name: $crate::__sdk::String::from($file),
                sql: $crate::__sdk::String::from(if postgres {
                    include_str!(concat!($dir, "/postgres/", $file, ".sql"))
                } else {
                    include_str!(concat!($dir, "/sqlite/", $file, ".sql"))
                }),
            });
        )*
        list
    }};
}

/// Register a [`Protocol`] implementation as the component's exported handler.
#[macro_export]
macro_rules! protocol_plugin {
    ($ty:ident) => {
        impl $crate::Guest for $ty {
            fn init() -> ::core::result::Result<(), $crate::__sdk::String> {
                <$ty as $crate::Protocol>::init()
            }
            fn on_open(info: $crate::ConnectInfo) {
                <$ty as $crate::Protocol>::on_open(info)
            }
            fn on_text(id: $crate::ConnectionId, text: $crate::__sdk::String) {
                <$ty as $crate::Protocol>::on_text(id, text)
            }
            fn on_binary(id: $crate::ConnectionId, data: $crate::__sdk::Vec<u8>) {
                <$ty as $crate::Protocol>::on_binary(id, data)
            }
            fn on_close(id: $crate::ConnectionId, code: u16) {
                <$ty as $crate::Protocol>::on_close(id, code)
            }
            fn on_timer(key: $crate::__sdk::String, payload: $crate::__sdk::String) {
                <$ty as $crate::Protocol>::on_timer(key, payload)
            }
            fn on_http(request: $crate::HttpRequest) -> $crate::HttpResponse {
                <$ty as $crate::Protocol>::on_http(request)
            }
            fn on_media(id: $crate::ConnectionId, event: $crate::MediaEvent) {
                <$ty as $crate::Protocol>::on_media(id, event)
            }
        }
        impl $crate::SchemaGuest for $ty {
            fn migrations(backend: $crate::__sdk::String) -> $crate::__sdk::Vec<$crate::Migration> {
                <$ty as $crate::Protocol>::migrations(&backend)
            }
        }
        impl $crate::SpeechGuest for $ty {
            fn on_speech(id: $crate::ConnectionId, event: $crate::SpeechEvent) {
                <$ty as $crate::Protocol>::on_speech(id, event)
            }
        }
        // The component's exports exist only in the Wasm build: host builds of plugins (unit
        // tests, fuzz targets) link several plugins into one binary, whose export symbols
        // would otherwise collide.
        #[cfg(target_arch = "wasm32")]
        $crate::export_protocol!($ty with_types_in $crate);
        /// Host builds only: the handlers, kept reachable (on Wasm they are the exports).
        #[cfg(not(target_arch = "wasm32"))]
        #[doc(hidden)]
        pub fn __protocol_handlers() -> impl ::core::any::Any {
            (
                <$ty as $crate::Guest>::init,
                <$ty as $crate::Guest>::on_open,
                <$ty as $crate::Guest>::on_text,
                <$ty as $crate::Guest>::on_binary,
                <$ty as $crate::Guest>::on_close,
                <$ty as $crate::Guest>::on_timer,
                <$ty as $crate::Guest>::on_http,
                <$ty as $crate::Guest>::on_media,
                <$ty as $crate::SchemaGuest>::migrations,
                <$ty as $crate::SpeechGuest>::on_speech,
            )
        }
    };
}

#[doc(hidden)]
pub mod __sdk {
    pub use std::string::String;
    pub use std::vec::Vec;
}

/// Sending to clients (`gatewayd:plugin/connections`).
pub mod conn {
    use super::*;
    pub use gatewayd::plugin::connections::{bind, close, count, send_binary, send_text, send_to, unbind};

    /// Serialize `message` to JSON and queue it on connection `id`. False when it is gone.
    pub fn send_json<T: Serialize + ?Sized>(id: ConnectionId, message: &T) -> bool {
        send_text(id, &to_json(message))
    }

    /// Serialize `message` to JSON and send it to every connection bound to `address`.
    /// Returns how many connections received it.
    pub fn send_json_to<T: Serialize + ?Sized>(address: &str, message: &T) -> u32 {
        send_to(address, &to_json(message))
    }

    fn to_json<T: Serialize + ?Sized>(message: &T) -> String {
        // Serializing plain data structures to a String cannot fail.
        serde_json::to_string(message).unwrap_or_else(|_| String::from("{}"))
    }
}

/// Typed per-connection state (`gatewayd:plugin/session`), stored by the host as JSON.
pub mod session {
    use super::*;
    use gatewayd::plugin::session as raw;

    /// The current session's state, or `None` when unset or not of type `T`.
    pub fn load<T: DeserializeOwned>() -> Option<T> {
        raw::get().and_then(|s| serde_json::from_str(&s).ok())
    }

    /// Replace the current session's state.
    pub fn save<T: Serialize>(state: &T) {
        if let Ok(s) = serde_json::to_string(state) {
            raw::set(&s);
        }
    }
}

/// Plugin-wide shared state (`gatewayd:plugin/kv`), typed as JSON.
pub mod kv {
    use super::*;
    pub use gatewayd::plugin::kv::{compare_and_swap, get, set, take};

    /// How many times [`update`] re-reads a key that other events keep changing.
    pub const UPDATE_ATTEMPTS: usize = 64;

    /// Read-modify-write `key` atomically: `f` gets the live value (`None`: absent) and returns
    /// the new value (`None`: remove) with a result; the new value is written with
    /// [`compare_and_swap`] (expiring after `ttl_ms` when given) and `f` runs again on the fresh
    /// value whenever another event changed the key in between. When `f` returns the value it
    /// was given, nothing is written. Returns `f`'s result, or `None` when the key changed under
    /// it [`UPDATE_ATTEMPTS`] times in a row (callers treat that as "busy, refused").
    pub fn update<R>(
        key: &str,
        ttl_ms: Option<u32>,
        mut f: impl FnMut(Option<&str>) -> (Option<String>, R),
    ) -> Option<R> {
        for _ in 0..UPDATE_ATTEMPTS {
            let current = get(key);
            let (next, result) = f(current.as_deref());
            if next == current || compare_and_swap(key, current.as_deref(), next.as_deref(), ttl_ms) {
                return Some(result);
            }
        }
        None
    }

    /// Store `value` as JSON under `key`, optionally expiring after `ttl_ms` milliseconds.
    pub fn put_json<T: Serialize>(key: &str, value: &T, ttl_ms: Option<u32>) {
        if let Ok(s) = serde_json::to_string(value) {
            set(key, &s, ttl_ms);
        }
    }

    /// Remove and return the entry `key` decoded from JSON.
    pub fn take_json<T: DeserializeOwned>(key: &str) -> Option<T> {
        take(key).and_then(|s| serde_json::from_str(&s).ok())
    }

    /// Read the entry `key` decoded from JSON.
    pub fn get_json<T: DeserializeOwned>(key: &str) -> Option<T> {
        get(key).and_then(|s| serde_json::from_str(&s).ok())
    }
}

/// One-shot timers (`gatewayd:plugin/timers`).
pub mod timers {
    pub use super::gatewayd::plugin::timers::{cancel, set};
}

/// SQL on the daemon's database (`gatewayd:plugin/store`); placeholders are `$1`, `$2`, ...
pub mod store {
    use super::SqlValue;
    pub use super::gatewayd::plugin::store::{BatchError, Statement, StatementResult, batch, execute, query};

    /// Run `statements` (SQL text and its parameters) as one transaction on the daemon's
    /// writer: either every statement is committed and each one's result comes back in order,
    /// or nothing is kept and the error names the 0-based index of the statement that failed.
    /// Needs `store = "read-write"`; at most 64 statements. See the WIT's `store.batch`.
    ///
    /// ```text
    /// // Take a seat only while the room has one free, atomically on both backends:
    /// let done = store::transaction(vec![
    ///     ("UPDATE rooms SET updated_at = updated_at WHERE id = $1", vec![room.clone()]),
    ///     ("INSERT INTO seats (room_id, who) SELECT $1, $2 WHERE \
    ///       (SELECT COUNT(*) FROM seats WHERE room_id = $1) < $3", vec![room, who, max]),
    /// ])?;
    /// let seated = done[1].affected == 1;
    /// ```
    pub fn transaction<S: Into<String>>(
        statements: impl IntoIterator<Item = (S, Vec<SqlValue>)>,
    ) -> Result<Vec<StatementResult>, BatchError> {
        let statements: Vec<Statement> =
            statements.into_iter().map(|(sql, params)| Statement { sql: sql.into(), params }).collect();
        batch(&statements)
    }

    /// The value as text, when it is text.
    pub fn text(v: &SqlValue) -> Option<&str> {
        match v {
            SqlValue::Text(s) => Some(s),
            _ => None,
        }
    }

    /// The value as an integer, when it is an integer.
    pub fn integer(v: &SqlValue) -> Option<i64> {
        match v {
            SqlValue::Integer(i) => Some(*i),
            _ => None,
        }
    }
}

/// The plugin's `[plugins.<name>.config]` table.
pub mod config {
    use super::*;

    /// Decode the plugin's config table into `T` (use `#[serde(default)]` for optional keys).
    ///
    /// The table never changes during an instance's life: a reload with a changed table builds
    /// new instances. A plugin may therefore decode it once (in a `static OnceLock`) and keep it.
    pub fn load<T: DeserializeOwned>() -> Result<T, String> {
        serde_json::from_str(&gatewayd::plugin::config::get()).map_err(|e| format!("plugin config: {e}"))
    }
}

/// Verify a token presented inside a protocol message (`gatewayd:plugin/auth`).
pub mod auth {
    /// The token's claims as JSON, or `"<code>: <why>"` when refused.
    pub fn verify(token: &str) -> Result<serde_json::Value, String> {
        let claims = super::gatewayd::plugin::auth::verify(token)?;
        serde_json::from_str(&claims).map_err(|e| format!("token_invalid: {e}"))
    }
}

/// Logging through the daemon's log (`gatewayd:plugin/log`).
pub mod log {
    pub use super::gatewayd::plugin::log::{Level, log};

    pub fn info(message: &str) {
        log(Level::Info, message)
    }
    pub fn warn(message: &str) {
        log(Level::Warn, message)
    }
    pub fn error(message: &str) {
        log(Level::Error, message)
    }
    pub fn debug(message: &str) {
        log(Level::Debug, message)
    }
}

/// Calls on media routes (`gatewayd:plugin/media`): answer, play, clear, mark, DTMF, echo,
/// record, hang up, and speech: `transcribe` / `stop_transcribing` (results arrive in
/// [`Protocol::on_speech`]) and `say` (text spoken by a TTS provider; its mark arrives in
/// [`Protocol::on_media`]). The host moves the audio; the plugin only steers it.
pub mod media {
    pub use super::gatewayd::plugin::media::{
        SayOptions, TranscribeOptions, answer, clear, echo, feed_caller_audio, hangup, mark, play_bytes, play_file,
        record, said_audio, say, send_dtmf, stop_transcribing, transcribe,
    };

    /// Transcribe call `id` with the route's (or `[speech]`'s) STT provider, finals only, in
    /// the provider's default language.
    pub fn transcribe_default(id: super::ConnectionId) -> Result<(), String> {
        transcribe(
            id,
            &TranscribeOptions { provider: None, language: None, interim_results: false, keyterms: Vec::new() },
        )
    }

    /// Speak `text` into call `id` with the route's (or `[speech]`'s) TTS provider and its
    /// default voice; `mark` is reported when it has all been sent.
    pub fn say_text(id: super::ConnectionId, text: &str, mark: Option<&str>) -> Result<(), String> {
        say(id, text, &SayOptions { provider: None, voice: None, mark: mark.map(str::to_string) })
    }
}

/// HTTP response helpers.
pub mod http {
    use super::*;

    /// A JSON response with `content-type: application/json`.
    pub fn json<T: Serialize + ?Sized>(status: u16, body: &T) -> HttpResponse {
        HttpResponse {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: serde_json::to_vec(body).unwrap_or_default(),
        }
    }
}

impl HttpRequest {
    /// The first query parameter named `name`.
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// The first header named `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// The client's IP address, as the host reports it in `x-gatewayd-remote-addr` (behind a
    /// trusted proxy: the forwarded client). `None` only for a host that does not set it.
    pub fn client_ip(&self) -> Option<std::net::IpAddr> {
        let addr = self.header("x-gatewayd-remote-addr")?;
        addr.parse::<std::net::SocketAddr>().map(|a| a.ip()).ok().or_else(|| addr.parse().ok())
    }
}

impl ConnectInfo {
    /// The first query parameter named `name`.
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Sign tokens with the daemon's `[auth.signing]` key (`gatewayd:plugin/auth.issue`).
pub mod tokens {
    /// A token carrying `claims` (a JSON object), valid for `ttl_secs`; the host sets `exp`,
    /// `iat`, `aud` (the plugin's `capabilities.issue.audience`) and `iss` when configured.
    /// Needs `capabilities.issue`, whose `claims` lists every claim name allowed. Err:
    /// `"<code>: <why>"` with code `forbidden`, `bad_claims`, `bad_ttl` or `signing_disabled`.
    pub fn issue(claims: &serde_json::Value, ttl_secs: u32) -> Result<String, String> {
        super::gatewayd::plugin::auth::issue(&claims.to_string(), ttl_secs)
    }
}

/// The plugin's media directory, stored by the daemon (`gatewayd:plugin/files`).
pub mod files {
    pub use super::gatewayd::plugin::files::{StoredFile, delete, get, put};
}

/// Group operations on addresses (`gatewayd:plugin/addresses`).
pub mod addresses {
    pub use super::gatewayd::plugin::addresses::close_all;
}

/// Rate limiting helpers shared by plugins (token buckets kept in session state or `kv`).
pub mod rate {
    /// Milliseconds since the Unix epoch, from the host's wall clock.
    pub fn now_ms() -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
    }

    /// A token bucket's tokens at `now_ms`: `tokens` (as of `at_ms`; `None` = a new, full bucket)
    /// refilled at `per_sec` tokens a second, capped at `burst`. A clock going backwards adds
    /// nothing.
    pub fn refill(tokens: Option<f64>, at_ms: u64, now_ms: u64, per_sec: f64, burst: f64) -> f64 {
        match tokens {
            None => burst,
            Some(t) => (t + now_ms.saturating_sub(at_ms) as f64 / 1000.0 * per_sec).min(burst),
        }
    }
}
