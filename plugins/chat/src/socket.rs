//! The WebSocket `/ws/visitor-chat/?session_id=<uuid>` (chat.md "WebSocket: Real-Time Chat").
//!
//! Open: 4001 without `session_id`, 4002 when it is not an existing session, 4003 when the
//! caller is neither that session's visitor nor an agent of its business, 4006 (after the
//! spec's `error`) when the session has ended. Then `connection_established`.
//!
//! Messages: `text` and `file` are stored first, then broadcast to every connection of the
//! session with `sender_id` and `timestamp`; `end_session` ends the session (agent or its
//! visitor). A message for an ended session gets the spec's `error` and close 4006.
//!
//! Every frame takes a token from its session's bucket (`rate_per_sec`, `rate_burst`), shared
//! by all the session's connections (`limits`): an empty bucket answers `error`
//! `rate_limited` and the frame is dropped; the connection stays open.

use crate::db::{self, Entry};
use crate::identity::Caller;
use crate::limits;
use crate::settings::Settings;
use crate::{now_rfc3339, session_address};
use gatewayd_plugin::{ConnectInfo, ConnectionId, conn, session};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

pub const CLOSE_MISSING_SESSION: u16 = 4001;
pub const CLOSE_INVALID_SESSION: u16 = 4002;
pub const CLOSE_UNAUTHORIZED: u16 = 4003;
pub const CLOSE_SESSION_ENDED: u16 = 4006;
pub const CLOSE_INTERNAL: u16 = 1011;

/// The spec's error text for anything sent after the session ended.
pub const SESSION_ENDED_ERROR: &str = "This session has ended. No further communication is allowed.";

/// Per-connection state, held by the host between events. (The message rate is the
/// session's, in kv: state of older versions with a per-connection bucket still decodes.)
#[derive(Serialize, Deserialize)]
struct ConnState {
    session_id: String,
    sender_id: String,
    role: String,
}

/// `{"type": "error", "code": code, "message": message}`.
pub fn send_error(id: ConnectionId, code: &str, message: &str) {
    conn::send_json(id, &json!({"type": "error", "code": code, "message": message}));
}

fn refuse_ended(id: ConnectionId) {
    conn::send_json(id, &json!({"type": "error", "message": SESSION_ENDED_ERROR}));
    conn::close(id, CLOSE_SESSION_ENDED, "Session has ended");
}

pub fn open(info: ConnectInfo) {
    let id = info.id;
    let Some(session_id) = info.query_param("session_id").filter(|s| !s.is_empty()) else {
        return conn::close(id, CLOSE_MISSING_SESSION, "Missing session_id");
    };
    if uuid::Uuid::parse_str(session_id).is_err() {
        return conn::close(id, CLOSE_INVALID_SESSION, "Invalid session_id");
    }
    let chat = match db::session(session_id) {
        Ok(Some(s)) => s,
        Ok(None) => return conn::close(id, CLOSE_INVALID_SESSION, "Invalid session_id"),
        Err(e) => return conn::close(id, CLOSE_INTERNAL, &format!("session lookup failed: {e}")),
    };
    let caller = match info.claims.as_deref().map(Caller::from_claims) {
        Some(Ok(c)) if c.may_access(&chat.id, &chat.business_id) => c,
        _ => return conn::close(id, CLOSE_UNAUTHORIZED, "Unauthorized access"),
    };
    if !chat.active {
        return refuse_ended(id);
    }
    session::save(&ConnState {
        session_id: chat.id.clone(),
        sender_id: caller.sender_id().to_string(),
        role: caller.role().to_string(),
    });
    conn::send_json(id, &json!({"type": "connection_established", "session_id": chat.id}));
    conn::bind(id, &session_address(&chat.id));
    // An end that raced with this open did not reach us: check once more after binding.
    if matches!(db::session(&chat.id), Ok(Some(s)) if !s.active) {
        refuse_ended(id);
    }
}

/// A client message. Unknown `type`s are refused with an `error`.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum ClientMessage {
    Text {
        content: String,
    },
    File {
        file: String,
        #[serde(default)]
        is_audio: bool,
    },
    EndSession,
}

pub fn text(id: ConnectionId, text: &str) {
    let Some(state) = session::load::<ConnState>() else {
        return conn::close(id, CLOSE_INTERNAL, "connection state lost");
    };
    let settings = Settings::load().unwrap_or_default();
    if !limits::take_message_token(&state.session_id, &settings, limits::now_ms()) {
        let message = format!(
            "Too many messages in this session: at most {} per second (bursts of {}), all its connections together.",
            settings.rate_per_sec, settings.rate_burst
        );
        return send_error(id, "rate_limited", &message);
    }
    let message = match parse(text) {
        Ok(m) => m,
        Err((code, message)) => return send_error(id, code, &message),
    };
    let result = match message {
        ClientMessage::Text { content } => send_text(id, &state, &settings, content),
        ClientMessage::File { file, .. } if file.len() > settings.max_file_url_bytes => {
            let message = format!("`file` is longer than {} bytes.", settings.max_file_url_bytes);
            send_error(id, "field_too_long", &message);
            Ok(())
        }
        ClientMessage::File { file, is_audio } => send_file(id, &state, file, is_audio),
        ClientMessage::EndSession => match crate::end_session(&state.session_id, &state.sender_id) {
            Ok(true) => Ok(()),
            Ok(false) => {
                refuse_ended(id);
                Ok(())
            }
            Err(e) => Err(e),
        },
    };
    if let Err(e) = result {
        send_error(id, "internal_error", &format!("The message could not be stored: {e}"));
    }
}

/// Decode one client text frame. Err: the `error` event's code and message.
pub(crate) fn parse(text: &str) -> Result<ClientMessage, (&'static str, String)> {
    let message = match serde_json::from_str::<Value>(text) {
        Ok(v) => match v.get("type").and_then(Value::as_str) {
            Some("text" | "file" | "end_session") => serde_json::from_value::<ClientMessage>(v),
            Some(other) => return Err(("unknown_type", format!("Unknown message type `{}`.", truncate(other, 64)))),
            None => return Err(("invalid_message", "A message needs a string `type`.".into())),
        },
        Err(_) => return Err(("invalid_message", "Messages must be JSON objects.".into())),
    };
    message.map_err(|e| ("invalid_message", format!("Invalid message: {e}.")))
}

/// At most `max` characters of `s` (client text echoed in an error).
fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

fn send_text(id: ConnectionId, state: &ConnState, settings: &Settings, content: String) -> Result<(), String> {
    if content.trim().is_empty() {
        send_error(id, "invalid_message", "`content` must not be empty.");
        return Ok(());
    }
    if content.chars().count() > settings.max_message_chars {
        let message = format!("Message too long: at most {} characters.", settings.max_message_chars);
        send_error(id, "message_too_long", &message);
        return Ok(());
    }
    let timestamp = now_rfc3339();
    let entry =
        Entry { message_type: Some("text".into()), content: Some(content.clone()), ..message_entry(state, &timestamp) };
    store_then_broadcast(
        id,
        state,
        &entry,
        json!({
            "type": "text",
            "content": content,
            "sender_id": state.sender_id,
            "timestamp": timestamp,
        }),
    )
}

fn send_file(id: ConnectionId, state: &ConnState, file: String, is_audio: bool) -> Result<(), String> {
    // The URL must be one `upload-file` returned for this session: `.../chat/media/<name>`.
    let name = file.rsplit_once("/chat/media/").map(|(_, n)| n).unwrap_or("");
    let attachment = match db::attachment(name)? {
        Some(a) if a.session_id == state.session_id => a,
        _ => {
            send_error(id, "unknown_file", "`file` must be a URL returned by /chat/upload-file/ for this session.");
            return Ok(());
        }
    };
    let timestamp = now_rfc3339();
    let file_name = attachment.file_name.unwrap_or_default();
    let entry = Entry {
        message_type: Some("file".into()),
        file_url: Some(file.clone()),
        file_name: Some(file_name.clone()),
        stored_name: None,
        is_audio,
        ..message_entry(state, &timestamp)
    };
    store_then_broadcast(
        id,
        state,
        &entry,
        json!({
            "type": "file",
            "file": file,
            "file_name": file_name,
            "is_audio": is_audio,
            "sender_id": state.sender_id,
            "timestamp": timestamp,
        }),
    )
}

fn message_entry(state: &ConnState, timestamp: &str) -> Entry {
    Entry {
        session_id: state.session_id.clone(),
        kind: "message".into(),
        sender_id: state.sender_id.clone(),
        sender_role: state.role.clone(),
        created_at: timestamp.to_string(),
        ..Entry::default()
    }
}

/// Store first; only a stored message is broadcast (nothing acknowledged can be lost).
fn store_then_broadcast(id: ConnectionId, state: &ConnState, entry: &Entry, broadcast: Value) -> Result<(), String> {
    match db::append(entry)? {
        Some(_) => {
            conn::send_json_to(&session_address(&state.session_id), &broadcast);
        }
        None => refuse_ended(id),
    }
    Ok(())
}
