//! Room and participant state machines (spec: Connection States), shared by the REST and the
//! WebSocket faces, and the bus addresses events are routed by.
//!
//! Participant: `connecting` -(offer/answer completed)-> `connected`; either -(socket
//! dropped)-> `disconnected` -(rejoin within the grace period)-> `connecting`; any -(leave,
//! removal, `CONNECTION_TIMEOUT`, grace expired, room deleted)-> `left`.
//!
//! Room: `created` -(first join)-> `waiting` -(two participants connected)-> `active`
//! -(fewer than two connected)-> `waiting`; `waiting`/`active` -(last participant left)->
//! `closed` (terminal, with a `room:closed` event).

use crate::errors::{self, ApiError};
use crate::limits::{Bounds, Rate};
use crate::model::{self, Participant, Room, participant_status, room_status, session_status};
use gatewayd_plugin::{ConnectionId, conn, kv, timers};
use serde::Deserialize;
use serde_json::{Value, json};

/// `[plugins.rooms.config]`.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Seconds a participant may stay `connecting` while another participant is in the room
    /// before it gets `CONNECTION_TIMEOUT` and is removed.
    pub connection_timeout_secs: u32,
    /// Seconds a `disconnected` participant may take to rejoin and resume; then it has left.
    pub reconnect_grace_secs: u32,
    /// WebSocket messages per second a connection may send, sustained (> 0; fractions allowed).
    pub message_rate_per_sec: f64,
    /// WebSocket messages a connection may send at once beyond the rate (>= 1).
    pub message_burst: u32,
    /// Refused (over-rate) messages, decaying at a tenth of the rate, after which the
    /// connection is closed with 1008; 0 = never close.
    pub max_refused_messages: u32,
    /// Longest id a client may send, in bytes (see [`Bounds`]).
    pub max_id_len: usize,
    /// Longest room `name`, in characters.
    pub max_name_chars: usize,
    /// Longest `metadata.display_name`, in characters.
    pub max_display_name_chars: usize,
    /// Largest participant `metadata`, serialized, in bytes.
    pub max_metadata_bytes: usize,
    /// Largest room `settings`, serialized, in bytes.
    pub max_settings_bytes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            connection_timeout_secs: 30,
            reconnect_grace_secs: 30,
            message_rate_per_sec: 20.0,
            message_burst: 60,
            max_refused_messages: 100,
            max_id_len: 128,
            max_name_chars: 200,
            max_display_name_chars: 128,
            max_metadata_bytes: 4096,
            max_settings_bytes: 8192,
        }
    }
}

impl Config {
    /// The plugin's config (defaults when unreadable; `init` has validated it).
    pub fn get() -> Config {
        gatewayd_plugin::config::load().unwrap_or_default()
    }

    /// Load and check the config (at `init`: an error rejects the plugin version).
    pub fn load_checked() -> Result<Config, String> {
        let c: Config = gatewayd_plugin::config::load()?;
        if !(c.message_rate_per_sec.is_finite() && c.message_rate_per_sec > 0.0) {
            return Err("rooms: `message_rate_per_sec` must be a positive number".into());
        }
        if c.message_burst == 0 {
            return Err("rooms: `message_burst` must be at least 1".into());
        }
        let sizes = [
            ("max_id_len", c.max_id_len),
            ("max_name_chars", c.max_name_chars),
            ("max_display_name_chars", c.max_display_name_chars),
            ("max_metadata_bytes", c.max_metadata_bytes),
            ("max_settings_bytes", c.max_settings_bytes),
        ];
        if let Some((name, _)) = sizes.iter().find(|(_, v)| *v == 0) {
            return Err(format!("rooms: `{name}` must be at least 1"));
        }
        Ok(c)
    }

    /// The message rate of a connection.
    pub fn rate(&self) -> Rate {
        Rate {
            per_sec: self.message_rate_per_sec,
            burst: f64::from(self.message_burst),
            max_refused: f64::from(self.max_refused_messages),
        }
    }

    /// The length bounds.
    pub fn bounds(&self) -> Bounds {
        Bounds {
            max_id_len: self.max_id_len,
            max_name_chars: self.max_name_chars,
            max_display_name_chars: self.max_display_name_chars,
            max_metadata_bytes: self.max_metadata_bytes,
            max_settings_bytes: self.max_settings_bytes,
        }
    }
}

/// Every connection in room `room_id` is bound to this address.
pub fn room_address(room_id: &str) -> String {
    format!("room/{room_id}")
}

/// The connection holding participant `participant_id` of room `room_id` is bound to this.
/// Naming the room too means a relay can only reach participants of the sender's room.
pub fn participant_address(room_id: &str, participant_id: &str) -> String {
    format!("room/{room_id}/participant/{participant_id}")
}

/// Timer that fires `CONNECTION_TIMEOUT` for a participant still `connecting`.
pub const CONNECT_TIMER: &str = "connect/";
/// Timer that ends a `disconnected` participant's stay when its grace period is over.
pub const GRACE_TIMER: &str = "grace/";

fn arm_connect_timer(p: &Participant, connection: Option<ConnectionId>) {
    let ms = Config::get().connection_timeout_secs.saturating_mul(1000);
    timers::set(&format!("{CONNECT_TIMER}{}", p.id), ms, "", connection);
}

/// A `room:participant-joined` event for `p`.
pub fn participant_summary(p: &Participant) -> Value {
    json!({"id": p.id, "agentId": p.agent_id, "display_name": p.display_name(), "status": p.status})
}

/// What a join asks for. The caller has checked that `agent_id` may use `room` (see
/// [`crate::access`]).
pub struct JoinRequest<'a> {
    /// The room, as read by the authorization check.
    pub room: &'a Room,
    /// The agent (`agents.id`) the seat belongs to: only a connection authenticated as this
    /// agent resumes it.
    pub agent_id: &'a str,
    /// Free-form participant metadata (bounded by the caller).
    pub metadata: Value,
    /// The WebSocket joining, or `None` for `POST /rooms/:id/participants`.
    pub connection: Option<ConnectionId>,
}

/// Join a room, or resume the agent's live participant that no connection holds (created over
/// REST, or `disconnected` within its grace period). The others get
/// `room:participant-joined`; the joining connection is bound to the room's addresses.
///
/// Errors: `ROOM_NOT_FOUND`, `ROOM_CLOSED`, `ALREADY_JOINED` (the agent's participant is held by
/// a connection, or exists at all for a REST join), `ROOM_FULL`.
pub fn join(req: JoinRequest<'_>) -> Result<Participant, ApiError> {
    let room = req.room;
    if room.status == room_status::CLOSED {
        return Err(ApiError::new(errors::ROOM_CLOSED, 409, format!("room {} is closed", room.id)));
    }
    let participant = match model::live_participant_of_agent(&room.id, req.agent_id)? {
        Some(mut existing) => {
            let Some(connection) = req.connection.filter(|_| !is_held(&existing)) else {
                return Err(ApiError::new(
                    errors::ALREADY_JOINED,
                    409,
                    format!("agent {} is already in room {} as participant {}", req.agent_id, room.id, existing.id),
                ));
            };
            model::set_participant_connection(&existing.id, participant_status::CONNECTING, Some(connection))?;
            timers::cancel(&format!("{GRACE_TIMER}{}", existing.id));
            existing.status = participant_status::CONNECTING.into();
            existing.connection_id = Some(connection);
            existing
        }
        None => {
            let p = Participant {
                id: model::new_id(),
                room_id: room.id.clone(),
                agent_id: req.agent_id.to_string(),
                status: participant_status::CONNECTING.into(),
                metadata: req.metadata,
                muted: false,
                connection_id: req.connection,
                session_id: model::new_id(),
                joined_at: model::now(),
            };
            if !model::insert_participant(&p, room.business_id.as_deref(), room.max_participants())? {
                return Err(ApiError::new(
                    errors::ROOM_FULL,
                    409,
                    format!(
                        "room {} has reached its maximum of {} participants",
                        room.id,
                        room.max_participants().unwrap_or(0)
                    ),
                ));
            }
            p
        }
    };
    arm_connect_timer(&participant, req.connection);
    refresh_room_status(&room.id)?;
    conn::send_json_to(
        &room_address(&room.id),
        &json!({"type": "room:participant-joined", "participant": participant_summary(&participant)}),
    );
    if let Some(c) = req.connection {
        conn::bind(c, &room_address(&room.id));
        conn::bind(c, &participant_address(&room.id, &participant.id));
        kv::set(&held_key(&participant.id), &c.to_string(), None);
    }
    Ok(participant)
}

/// End `p`'s stay (status `left`): the room (including `p`, while still bound) gets
/// `room:participant-left` with `reason`; the room closes if it was the last one; then the
/// holding connection is unbound. False when `p` had already left.
pub fn leave(p: &Participant, reason: &str, session_end: &str) -> Result<bool, ApiError> {
    if !model::end_stay(p, reason, session_end)? {
        return Ok(false);
    }
    cancel_timers(&p.id);
    let closed = refresh_room_status(&p.room_id)?;
    stream_stopped_on_exit(p);
    conn::send_json_to(
        &room_address(&p.room_id),
        &json!({"type": "room:participant-left", "participantId": p.id, "reason": reason}),
    );
    if closed {
        announce_closed(&p.room_id);
    }
    if let Some(c) = p.connection_id {
        unbind(c, p);
    }
    Ok(true)
}

/// kv key naming the connection that holds a participant. kv lives in the daemon's memory, so
/// after a restart no participant is held (its stored `connection_id` is stale) and its agent
/// can take it over again; across plugin reloads it stays.
fn held_key(participant_id: &str) -> String {
    format!("held/{participant_id}")
}

/// Is `p` held by a live connection of this daemon run?
fn is_held(p: &Participant) -> bool {
    p.connection_id.is_some_and(|c| kv::get(&held_key(&p.id)) == Some(c.to_string()))
}

/// Unbind `p`'s addresses from connection `c`, if `c` (still) holds it.
fn unbind(c: ConnectionId, p: &Participant) {
    if kv::get(&held_key(&p.id)) != Some(c.to_string()) {
        return;
    }
    kv::take(&held_key(&p.id));
    conn::unbind(c, &room_address(&p.room_id));
    conn::unbind(c, &participant_address(&p.room_id, &p.id));
}

fn cancel_timers(participant_id: &str) {
    timers::cancel(&format!("{CONNECT_TIMER}{participant_id}"));
    timers::cancel(&format!("{GRACE_TIMER}{participant_id}"));
}

/// The socket holding `p` closed: `p` becomes `disconnected`, the room gets
/// `room:participant-left` with reason `disconnected`, and the grace period starts (with a
/// grace of 0 the stay ends at once).
pub fn disconnect(p: &Participant, connection: ConnectionId) -> Result<(), ApiError> {
    if !p.is_live() || p.connection_id != Some(connection) {
        return Ok(());
    }
    unbind(connection, p);
    let grace_secs = Config::get().reconnect_grace_secs;
    if grace_secs == 0 {
        leave(p, "disconnected", session_status::DISCONNECTED)?;
        return Ok(());
    }
    model::set_participant_connection(&p.id, participant_status::DISCONNECTED, None)?;
    timers::cancel(&format!("{CONNECT_TIMER}{}", p.id));
    timers::set(&format!("{GRACE_TIMER}{}", p.id), grace_secs.saturating_mul(1000), "", None);
    refresh_room_status(&p.room_id)?;
    stream_stopped_on_exit(p);
    conn::send_json_to(
        &room_address(&p.room_id),
        &json!({"type": "room:participant-left", "participantId": p.id, "reason": "disconnected"}),
    );
    Ok(())
}

/// `p` (as it was before leaving or dropping) was streaming, i.e. `connected` and not muted:
/// the room gets `voice:stream-stopped` before `room:participant-left`.
fn stream_stopped_on_exit(p: &Participant) {
    if p.status == participant_status::CONNECTED && !p.muted {
        conn::send_json_to(&room_address(&p.room_id), &json!({"type": "voice:stream-stopped", "participantId": p.id}));
    }
}

/// The grace period of a `disconnected` participant is over: its stay ends (the room was told
/// at the disconnect; no second `room:participant-left`).
pub fn grace_expired(participant_id: &str) -> Result<(), ApiError> {
    let Some(p) = model::get_participant(participant_id)? else { return Ok(()) };
    if p.status == participant_status::DISCONNECTED
        && model::end_stay(&p, "disconnected", session_status::DISCONNECTED)?
        && refresh_room_status(&p.room_id)?
    {
        announce_closed(&p.room_id);
    }
    Ok(())
}

/// The connection timer of a participant fired. Still `connecting` with someone to negotiate
/// with: it gets `room:error` `CONNECTION_TIMEOUT` and leaves with reason
/// `connection_timeout`; alone in the room, the timer is re-armed. Returns the room it left.
pub fn connect_timer_fired(participant_id: &str) -> Result<Option<String>, ApiError> {
    let Some(p) = model::get_participant(participant_id)? else { return Ok(None) };
    if p.status != participant_status::CONNECTING {
        return Ok(None);
    }
    if model::count_live(&p.room_id)? <= 1 {
        arm_connect_timer(&p, p.connection_id);
        return Ok(None);
    }
    let error = ApiError::new(
        errors::CONNECTION_TIMEOUT,
        408,
        format!("participant {} did not complete its connection in time", p.id),
    );
    conn::send_json_to(&participant_address(&p.room_id, &p.id), &error.to_event());
    leave(&p, "connection_timeout", session_status::TIMED_OUT)?;
    Ok(Some(p.room_id))
}

/// `participant_id` completed an offer/answer exchange: `connecting` -> `connected`, and, when
/// not muted, the room gets `voice:stream-started`.
pub fn connected(participant_id: &str) -> Result<(), ApiError> {
    if !model::mark_connected(participant_id)? {
        return Ok(());
    }
    timers::cancel(&format!("{CONNECT_TIMER}{participant_id}"));
    let Some(p) = model::get_participant(participant_id)? else { return Ok(()) };
    refresh_room_status(&p.room_id)?;
    if !p.muted {
        conn::send_json_to(&room_address(&p.room_id), &json!({"type": "voice:stream-started", "participantId": p.id}));
    }
    Ok(())
}

/// Recompute a room's status from its participants (see the module docs). True when this
/// moved it to `closed`: the caller then sends [`announce_closed`] after its own events.
pub fn refresh_room_status(room_id: &str) -> Result<bool, ApiError> {
    let Some(room) = model::get_room(room_id)? else { return Ok(false) };
    if room.status == room_status::CLOSED {
        return Ok(false);
    }
    let (live, connected) = model::count_live_and_connected(room_id)?;
    let status = match (live, connected) {
        (0, _) if room.status == room_status::CREATED => room_status::CREATED,
        (0, _) => room_status::CLOSED,
        (_, c) if c >= 2 => room_status::ACTIVE,
        _ => room_status::WAITING,
    };
    if status != room.status {
        model::set_room_status(room_id, status)?;
    }
    Ok(status != room.status && status == room_status::CLOSED)
}

/// `room:closed` with reason `all_participants_left` to everyone still bound to the room.
pub fn announce_closed(room_id: &str) {
    conn::send_json_to(
        &room_address(room_id),
        &json!({"type": "room:closed", "roomId": room_id, "reason": "all_participants_left"}),
    );
}

/// `DELETE /rooms/:id` (the caller has checked access): every live participant's stay ends (`room:closed` with reason
/// `room_deleted` to the room first), then the room and its participants are deleted.
pub fn delete_room(room: &Room) -> Result<(), ApiError> {
    conn::send_json_to(
        &room_address(&room.id),
        &json!({"type": "room:closed", "roomId": room.id, "reason": "room_deleted"}),
    );
    for p in model::live_participants(&room.id)? {
        model::end_stay(&p, "room_deleted", session_status::COMPLETED)?;
        cancel_timers(&p.id);
        if let Some(c) = p.connection_id {
            unbind(c, &p);
        }
    }
    model::delete_room(&room.id)
}
