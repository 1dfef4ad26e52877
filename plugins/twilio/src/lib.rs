//! telephony.md: Twilio phone calls with live transcripts and agent replies (spec: shared
//! `specs/telephony.md`; the design: the Twilio brief, "Plugin behaviour" 1-7).
//!
//! A call's life:
//! 1. Twilio posts the voice webhook (`http`): the call is recorded (`db`, `phone_calls`,
//!    status `incoming`), its business's dashboards hear `call_status_update` `incoming`, and
//!    the TwiML connects the call to the Media Streams route with its `call_id` as a parameter.
//! 2. Twilio opens the media stream (`stream`): the call is `answered`, transcription starts,
//!    the welcome message is spoken. The host moves the audio and speaks Twilio's framing; the
//!    plugin steers (`media`).
//! 3. The caller speaks: `customer_transcript` to the dashboards, finals stored; speech over
//!    playback clears it (barge-in, `live`).
//! 4. An agent types on the dashboard socket (`dashboard`): the text is spoken into the call
//!    and stored; once the caller heard it, `agent_tts_audio` carries the audio.
//! 5. `stop`, the stream closing, Twilio's status callback or an agent ends the call (`calls`).
//!
//! State: durable rows in the plugin's tables (`migrations/`, `db`); which stream carries a
//! live call and what it is saying in the host's `kv` (`live`); who a connection is in its
//! session ([`ConnState`]). Dashboards are reached by address: `call:<call_id>` (a socket
//! opened for one call) and `biz:<business_id>` (organisation feeds). Nothing survives in the
//! instance between events but the decoded config and the database backend.

mod calls;
mod config;
mod dashboard;
mod db;
mod form;
mod http;
mod identity;
mod live;
mod messages;
mod stream;
mod time;
mod twiml;

use gatewayd_plugin::{
    ConnectInfo, ConnectionId, HttpRequest, HttpResponse, MediaEvent, Migration, Protocol, SpeechEvent, conn, log,
    session,
};
use serde::{Deserialize, Serialize};

/// What a connection is, kept in its session by the host.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum ConnState {
    /// A Twilio Media Streams connection.
    Stream(stream::StreamState),
    /// An agent dashboard socket.
    Dashboard(dashboard::DashboardState),
}

struct Twilio;

impl Protocol for Twilio {
    fn init() -> Result<(), String> {
        config::Config::load().map(|_| ())
    }

    /// `phone_calls` and `phone_call_messages` (`migrations/<backend>/0001_calls.sql`).
    fn migrations(backend: &str) -> Vec<Migration> {
        gatewayd_plugin::migrations!(backend, "../migrations", [1 => "0001_calls"])
    }

    fn on_open(info: ConnectInfo) {
        let stream_path = config::Config::load().map(|c| c.stream_path).unwrap_or_default();
        if info.path == stream_path {
            session::save(&ConnState::Stream(stream::StreamState::default()));
        } else if info.path == dashboard::PATH {
            if let Some(state) = dashboard::open(&info) {
                session::save(&ConnState::Dashboard(state));
            }
        } else {
            log::warn(&format!("twilio: no socket at {} (is the route's path the config's?)", info.path));
            conn::close(info.id, 1008, "no such endpoint");
        }
    }

    fn on_text(id: ConnectionId, text: String) {
        match session::load::<ConnState>() {
            Some(ConnState::Stream(s)) => session::save(&ConnState::Stream(stream::on_text(id, s, &text))),
            Some(ConnState::Dashboard(d)) => session::save(&ConnState::Dashboard(dashboard::on_text(id, d, &text))),
            None => conn::close(id, 1011, "connection state lost"),
        }
    }

    fn on_binary(id: ConnectionId, _data: Vec<u8>) {
        match session::load::<ConnState>() {
            Some(ConnState::Dashboard(d)) => {
                let message = messages::telephony_error(
                    d.call_id.as_deref().unwrap_or_default(),
                    messages::ErrorCode::ConnectionFailed,
                    "binary frames are not accepted: send JSON text (audio as audio_data)",
                    &time::now_iso(),
                );
                conn::send_json(id, &message);
            }
            _ => log::debug(&format!("twilio: stream {id}: a binary frame ignored")),
        }
    }

    fn on_close(id: ConnectionId, code: u16) {
        if let Some(ConnState::Stream(s)) = session::load::<ConnState>() {
            stream::on_close(id, code, &s);
        }
    }

    fn on_http(request: HttpRequest) -> HttpResponse {
        http::handle(request)
    }

    fn on_media(id: ConnectionId, event: MediaEvent) {
        if let Some(ConnState::Stream(s)) = session::load::<ConnState>() {
            stream::on_media(id, &s, event);
        }
    }

    fn on_speech(id: ConnectionId, event: SpeechEvent) {
        if let Some(ConnState::Stream(s)) = session::load::<ConnState>() {
            stream::on_speech(id, &s, event);
        }
    }
}

gatewayd_plugin::protocol_plugin!(Twilio);

/// The plugin's decoders of untrusted bytes, for the fuzz targets (`fuzz/`), run natively.
pub mod fuzzing {
    /// A dashboard socket message, decoded and checked as `on_text` does (on a feed socket and
    /// on one opened for a call). Returns whether it decoded on the feed.
    pub fn dashboard_message(text: &str) -> bool {
        let limits = crate::dashboard::Limits { max_id_bytes: 255, max_message_chars: 1000 };
        let _ = crate::dashboard::parse(text, Some("call-1"), limits);
        crate::dashboard::parse(text, None, limits).is_ok()
    }

    /// A Media Streams message as it reaches the plugin (`connected`, `start`, `dtmf`, `stop`).
    pub fn stream_message(text: &str) -> bool {
        crate::stream::parse(text).is_ok()
    }

    /// A webhook body (form), and the TwiML answer built from its values: the XML stays well
    /// formed whatever the values (every value is escaped). Returns the form's pairs.
    pub fn webhook_form(body: &[u8]) -> usize {
        let form = crate::form::Form::parse(body);
        for (name, value) in &form.0 {
            for s in [name, value] {
                let escaped = crate::twiml::escape(s);
                assert!(!escaped.contains(['<', '>', '"', '\'']), "escaped: {escaped:?}");
            }
        }
        form.0.len()
    }
}
