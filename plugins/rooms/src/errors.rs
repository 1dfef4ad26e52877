//! Error codes (spec: Error Codes) and the few this gateway adds where the spec is silent
//! (`docs/protocols/rooms.md`). One error value serves both faces of the protocol: REST answers
//! `{"error": code, "message": text}` with [`ApiError::status`]; WebSocket clients get
//! `{"type": "room:error", "code": code, "message": text}`.

use gatewayd_plugin::{HttpResponse, http};
use serde_json::json;

/// `ROOM_NOT_FOUND`: room does not exist (404).
pub const ROOM_NOT_FOUND: &str = "ROOM_NOT_FOUND";
/// `ROOM_FULL`: room has reached `settings.max_participants` (409).
pub const ROOM_FULL: &str = "ROOM_FULL";
/// `ALREADY_JOINED`: already in the room (409).
pub const ALREADY_JOINED: &str = "ALREADY_JOINED";
/// `NOT_IN_ROOM`: not currently in the room (404 on REST).
pub const NOT_IN_ROOM: &str = "NOT_IN_ROOM";
/// `INVALID_TOKEN`: authentication failed or is missing (401), or the token is not an agent's
/// or is for another agent (403).
pub const INVALID_TOKEN: &str = "INVALID_TOKEN";
/// `WEBCRTC_ERROR` (spelled as in the spec): WebRTC negotiation failed, e.g. the addressed
/// participant is not connected to the room.
pub const WEBCRTC_ERROR: &str = "WEBCRTC_ERROR";
/// `CONNECTION_TIMEOUT`: a participant did not complete its connection in time.
pub const CONNECTION_TIMEOUT: &str = "CONNECTION_TIMEOUT";
/// Added: the room is `closed` (terminal) and takes no participants (409).
pub const ROOM_CLOSED: &str = "ROOM_CLOSED";
/// Added: a malformed request body or WebSocket message (400).
pub const INVALID_REQUEST: &str = "INVALID_REQUEST";
/// Added: `GET /sessions/:id` for an unknown session (404).
pub const SESSION_NOT_FOUND: &str = "SESSION_NOT_FOUND";
/// Added: unknown REST endpoint (404) or method (405).
pub const NOT_FOUND: &str = "NOT_FOUND";
/// Added: unknown REST endpoint method (405).
pub const METHOD_NOT_ALLOWED: &str = "METHOD_NOT_ALLOWED";
/// Added: the caller's agent may not do this: `business_id` of `POST /rooms` is not one of its
/// businesses, or `agent_id` of `POST /rooms/:id/participants` is no agent of the room's
/// business (403).
pub const FORBIDDEN: &str = "FORBIDDEN";
/// Added: the connection sent more messages than `[plugins.rooms.config]`
/// `message_rate_per_sec` / `message_burst` allow; the message was dropped (WebSocket only;
/// 429 as a status).
pub const RATE_LIMITED: &str = "RATE_LIMITED";
/// Added: the database failed (500).
pub const INTERNAL_ERROR: &str = "INTERNAL_ERROR";

/// A protocol error: code, HTTP status and a human-readable message.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// One of the codes above.
    pub code: &'static str,
    /// The HTTP status of the REST form (the WebSocket form has none).
    pub status: u16,
    /// Human-readable text; never holds a token.
    pub message: String,
}

impl ApiError {
    /// An error with `code`, REST `status` and `message`.
    pub fn new(code: &'static str, status: u16, message: impl Into<String>) -> ApiError {
        ApiError { code, status, message: message.into() }
    }

    pub fn room_not_found(room_id: &str) -> ApiError {
        ApiError::new(ROOM_NOT_FOUND, 404, format!("room {room_id} does not exist"))
    }

    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(INVALID_REQUEST, 400, message)
    }

    /// A store failure; the text goes to the log, the client gets a generic message.
    pub fn internal(detail: String) -> ApiError {
        gatewayd_plugin::log::error(&format!("rooms: store error: {detail}"));
        ApiError::new(INTERNAL_ERROR, 500, "the room store failed; try again")
    }

    /// The REST form: `{"error": code, "message": text}` with the status.
    pub fn to_http(&self) -> HttpResponse {
        http::json(self.status, &json!({"error": self.code, "message": self.message}))
    }

    /// The WebSocket form: a `room:error` event.
    pub fn to_event(&self) -> serde_json::Value {
        json!({"type": "room:error", "code": self.code, "message": self.message})
    }
}
