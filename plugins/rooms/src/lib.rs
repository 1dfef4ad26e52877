//! The rooms protocol (`shared/specs/rooms.md`): voice rooms whose participants negotiate
//! peer-to-peer WebRTC media through the gateway.
//!
//! - REST under `/api/v1` ([`rest`]): rooms, participants, sessions.
//! - WebSocket ([`ws`]): `auth`, `room:join` / `room:leave`, relayed `webrtc:*` messages,
//!   `room:mute`, and the added `room:stats` report.
//! - State machines ([`lifecycle`]) over durable rows in the daemon's database ([`model`]).
//! - Authorization ([`access`]): every room belongs to a business; only its agents reach it.
//! - Bounds ([`limits`]): id/name/display-string lengths and a per-connection message rate.
//!
//! Routing is by bus address: a connection in a room is bound to `room/<room>` and to
//! `room/<room>/participant/<participant>`. Where the spec is silent this plugin answers as
//! `docs/protocols/rooms.md` documents.

pub mod access;
pub mod errors;
pub mod lifecycle;
pub mod limits;
pub mod model;
pub mod rest;
pub mod ws;

use gatewayd_plugin::{ConnectInfo, ConnectionId, HttpRequest, HttpResponse, Protocol};

struct Rooms;

impl Protocol for Rooms {
    fn init() -> Result<(), String> {
        lifecycle::Config::load_checked().map(|_| ())
    }

    /// Rooms' tables (`plugins/rooms/migrations/<backend>/`): rooms, participants, sessions,
    /// and the business each belongs to.
    fn migrations(backend: &str) -> Vec<gatewayd_plugin::Migration> {
        gatewayd_plugin::migrations!(backend, "../migrations", [1 => "0001_rooms", 2 => "0002_business"])
    }

    fn on_open(info: ConnectInfo) {
        ws::open(&info);
    }

    fn on_text(id: ConnectionId, text: String) {
        ws::text(id, &text);
    }

    fn on_binary(id: ConnectionId, _data: Vec<u8>) {
        ws::binary(id);
    }

    fn on_close(id: ConnectionId, _code: u16) {
        ws::close(id);
    }

    fn on_timer(key: String, _payload: String) {
        if let Some(pid) = key.strip_prefix(lifecycle::CONNECT_TIMER) {
            ws::connect_timer(pid);
        } else if let Some(pid) = key.strip_prefix(lifecycle::GRACE_TIMER)
            && let Err(e) = lifecycle::grace_expired(pid)
        {
            gatewayd_plugin::log::warn(&format!("rooms: grace timer of {pid}: {}", e.message));
        }
    }

    fn on_http(request: HttpRequest) -> HttpResponse {
        rest::handle(request)
    }
}

gatewayd_plugin::protocol_plugin!(Rooms);

/// The decoders of client bytes, for the fuzz targets (`fuzz-targets/`); not an API.
#[doc(hidden)]
pub mod fuzzing {
    use serde_json::Value;

    /// Decode one WebSocket text frame, plus the checks a `room:stats` report gets before any
    /// state is touched. Returns whether it decoded.
    pub fn ws_message(text: &str) -> bool {
        match crate::ws::decode(text) {
            Ok(msg) if msg.get("type").and_then(Value::as_str) == Some("room:stats") => {
                crate::ws::checked_stats(&msg).is_ok()
            }
            Ok(_) => true,
            Err(e) => {
                let _ = e.to_event().to_string();
                false
            }
        }
    }

    /// Decode a REST body as `POST /rooms` and `PATCH /rooms/:id` do: the object, its `name`,
    /// its `settings` merged (RFC 7386) into the room's current settings and checked.
    pub fn rest_body(body: &[u8]) -> bool {
        let Ok(body) = crate::rest::parse_body(body) else { return false };
        if crate::rest::name_field(&body, false).is_err() {
            return false;
        }
        let Some(patch) = body.get("settings") else { return true };
        let mut settings = serde_json::json!({"max_participants": 4, "kept": {"a": 1}});
        crate::rest::merge(&mut settings, patch);
        crate::rest::check_settings(&settings).is_ok() && crate::rest::check_settings(patch).is_ok()
    }
}
