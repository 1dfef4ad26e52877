//! The rooms protocol (`shared/specs/rooms.md`): voice rooms whose participants negotiate
//! peer-to-peer WebRTC media through the gateway.
//!
//! - REST under `/api/v1` ([`rest`]): rooms, participants, sessions.
//! - WebSocket ([`ws`]): `auth`, `room:join` / `room:leave`, relayed `webrtc:*` messages,
//!   `room:mute`, and the added `room:stats` report.
//! - State machines ([`lifecycle`]) over durable rows in the daemon's database ([`model`]).
//!
//! Routing is by bus address: a connection in a room is bound to `room/<room>` and to
//! `room/<room>/participant/<participant>`. Where the spec is silent this plugin answers as
//! `docs/protocols/rooms.md` documents.

pub mod errors;
pub mod lifecycle;
pub mod model;
pub mod rest;
pub mod ws;

use gatewayd_plugin::{ConnectInfo, ConnectionId, HttpRequest, HttpResponse, Protocol};

struct Rooms;

impl Protocol for Rooms {
    fn init() -> Result<(), String> {
        gatewayd_plugin::config::load::<lifecycle::Config>().map(|_| ())
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
