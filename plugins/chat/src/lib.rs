//! chat.md: live chat between website visitors and a business's agents (spec: shared
//! `specs/chat.md`; every decision where the spec is silent is in docs/protocols/chat.md).
//!
//! - HTTP (`http`): `POST /chat/start-session/`, `POST /chat/upload-file/`,
//!   `GET /chat/history/<session_id>/`, `POST /chat/end-session/<session_id>/`,
//!   `GET /chat/media/<name>` (the URL `upload-file` returns).
//! - WebSocket (`socket`): `/ws/visitor-chat/?session_id=<uuid>`.
//!
//! Durable state is in the store (`db`: sessions, timeline, per-session upload counts);
//! per-connection state (who) in the host's session; rates and per-IP windows in the host's kv
//! (`limits`); files in the host's media directory, removed when their session ends
//! (`retention`). Nothing survives in the instance between events.

mod db;
mod http;
mod identity;
mod limits;
mod retention;
mod settings;
mod socket;
mod upload;

use gatewayd_plugin::{ConnectInfo, ConnectionId, HttpRequest, HttpResponse, Protocol};

struct Chat;

impl Protocol for Chat {
    fn init() -> Result<(), String> {
        settings::Settings::load().map(|_| ())
    }

    /// Chat's tables (`plugins/chat/migrations/<backend>/`): sessions and their timeline, the
    /// attachment index, upload quotas.
    fn migrations(backend: &str) -> Vec<gatewayd_plugin::Migration> {
        gatewayd_plugin::migrations!(backend, "../migrations", [
            1 => "0001_sessions",
            2 => "0002_attachment_index",
            3 => "0003_quotas",
        ])
    }

    fn on_open(info: ConnectInfo) {
        socket::open(info)
    }

    fn on_text(id: ConnectionId, text: String) {
        socket::text(id, &text)
    }

    fn on_binary(id: ConnectionId, _data: Vec<u8>) {
        socket::send_error(id, "unsupported_frame", "Binary frames are not accepted; send JSON text.");
    }

    fn on_timer(key: String, _payload: String) {
        if let Ok(settings) = settings::Settings::load() {
            retention::on_timer(&key, &settings);
        }
    }

    fn on_http(request: HttpRequest) -> HttpResponse {
        http::handle(request)
    }
}

gatewayd_plugin::protocol_plugin!(Chat);

/// The decoders of client bytes, for the fuzz targets (`fuzz-targets/`); not an API.
#[doc(hidden)]
pub mod fuzzing {
    /// Decode one WebSocket text frame as `on_text` does. Returns whether it decoded.
    pub fn socket_message(text: &str) -> bool {
        crate::socket::parse(text).is_ok()
    }

    /// Decode a `POST /chat/start-session/` body. Returns whether it decoded.
    pub fn start_session_body(body: &[u8]) -> bool {
        crate::http::parse_start_request(body).is_ok()
    }

    /// Parse a `POST /chat/upload-file/` body with its `content-type` header as the upload
    /// handler does, and check the client file name it carries. Returns whether both passed.
    pub fn upload_form(content_type: &str, body: Vec<u8>) -> bool {
        match crate::upload::parse(content_type, body) {
            Ok(form) => match form.file {
                Some((Some(name), _)) => crate::upload::check_file_name(&name, 255).is_ok(),
                _ => true,
            },
            Err(_) => false,
        }
    }
}

/// The current time as RFC 3339 UTC with milliseconds, e.g. `2025-07-02T12:00:00.000Z`.
pub(crate) fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

/// The bus address every connection of a chat session is bound to.
pub(crate) fn session_address(session_id: &str) -> String {
    format!("session/{session_id}")
}

/// End `session_id` (if active): mark it ended, remove its files (or arm their retention
/// timer, `retention`), broadcast the spec's `session_ended` to its connections and close them
/// with 4006. Returns false when it was not active.
pub(crate) fn end_session(session_id: &str, ended_by: &str) -> Result<bool, String> {
    if !db::end_session(session_id, ended_by, &now_rfc3339())? {
        return Ok(false);
    }
    // Files first: once `session_ended` (or the HTTP answer) arrives, they are gone.
    retention::after_end(session_id, &settings::Settings::load().unwrap_or_default());
    let address = session_address(session_id);
    gatewayd_plugin::conn::send_json_to(
        &address,
        &serde_json::json!({"type": "session_ended", "message": "The session has ended.", "timestamp": now_rfc3339()}),
    );
    gatewayd_plugin::addresses::close_all(&address, socket::CLOSE_SESSION_ENDED, "Session has ended");
    Ok(true)
}
