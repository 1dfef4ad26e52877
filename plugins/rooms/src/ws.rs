//! The WebSocket face (spec: WebSocket API): client events in, server events out.
//!
//! A connection may be in several rooms; its session state maps room id -> participant id.
//! Every failure answers the sender only, with a `room:error` event.
//!
//! Authorization ([`crate::access`]): the connection may connect without a token (as the spec
//! allows) but must be an agent before `room:join`: by a token at the handshake or in an
//! `auth` message. It joins as that agent only (`agentId` must be its `agents.id`), only rooms
//! of that agent's businesses (others are `ROOM_NOT_FOUND`), so a seat is resumed only by the
//! agent that held it. Every message first passes the connection's rate ([`crate::limits`]).

use crate::access::{self, Caller};
use crate::errors::{self, ApiError};
use crate::lifecycle::{self, Config, JoinRequest, participant_address, room_address};
use crate::limits::{self, Bounds, Bucket, Verdict};
use crate::model::{self, Participant, session_status};
use gatewayd_plugin::{ConnectInfo, ConnectionId, conn, session};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

/// Per-connection state, held by the host between events.
#[derive(Serialize, Deserialize, Default, Debug)]
#[serde(default)]
pub struct ConnState {
    /// The agent the connection authenticated as (handshake token or `auth` message); `None`
    /// until then, and `room:join` is refused.
    pub agent: Option<Caller>,
    /// Rooms joined on this connection: room id -> participant id.
    pub rooms: BTreeMap<String, String>,
    /// The connection's message-rate bucket.
    pub bucket: Bucket,
}

/// Close code for a connection that keeps sending over its rate (policy violation).
pub const CLOSE_RATE: u16 = 1008;

/// A new connection: resolve the handshake token's agent, if a token came. A token that names
/// no agent gets `room:error` `INVALID_TOKEN` at once; the connection stays open and may still
/// authenticate with an `auth` message.
pub fn open(info: &ConnectInfo) {
    let mut state = ConnState::default();
    if let Some(claims) = info.claims.as_deref().and_then(|c| serde_json::from_str::<Value>(c).ok()) {
        match access::resolve(&claims) {
            Ok(caller) => state.agent = Some(caller),
            Err(e) => {
                conn::send_json(info.id, &e.to_event());
            }
        }
    }
    session::save(&state);
}

/// One client text frame: counted against the rate, then handled.
pub fn text(id: ConnectionId, text: &str) {
    with_rate(id, |state, config| handle(id, state, text, &config.bounds()));
}

/// A binary frame: counted against the rate; the protocol is JSON text only
/// (`INVALID_REQUEST`).
pub fn binary(id: ConnectionId) {
    with_rate(id, |_, _| Err(ApiError::invalid("binary frames are not part of this protocol: send JSON text")));
}

/// Take a token from the connection's bucket, then run `f` (its error goes to the client); over
/// the rate, answer `RATE_LIMITED` instead, or close with [`CLOSE_RATE`] when sustained.
fn with_rate(id: ConnectionId, f: impl FnOnce(&mut ConnState, &Config) -> Result<(), ApiError>) {
    let mut state: ConnState = session::load().unwrap_or_default();
    let config = Config::get();
    match state.bucket.take(&config.rate(), limits::now_ms()) {
        Verdict::Pass => {
            if let Err(e) = f(&mut state, &config) {
                conn::send_json(id, &e.to_event());
            }
        }
        Verdict::Refuse => {
            let e = ApiError::new(
                errors::RATE_LIMITED,
                429,
                format!(
                    "more than {} messages per second (burst {}): message dropped",
                    config.message_rate_per_sec, config.message_burst
                ),
            );
            conn::send_json(id, &e.to_event());
        }
        Verdict::Close => conn::close(id, CLOSE_RATE, "message rate exceeded"),
    }
    session::save(&state);
}

/// The socket closed: every participant it held becomes `disconnected`.
pub fn close(id: ConnectionId) {
    let state: ConnState = session::load().unwrap_or_default();
    for participant_id in state.rooms.values() {
        let result = model::get_participant(participant_id)
            .and_then(|p| p.map(|p| lifecycle::disconnect(&p, id)).unwrap_or(Ok(())));
        if let Err(e) = result {
            gatewayd_plugin::log::warn(&format!("rooms: disconnect of {participant_id} failed: {}", e.message));
        }
    }
}

/// A participant's connection timer fired (it runs in that connection's session).
pub fn connect_timer(participant_id: &str) {
    match lifecycle::connect_timer_fired(participant_id) {
        Ok(Some(room_id)) => {
            if let Some(mut state) = session::load::<ConnState>() {
                state.rooms.remove(&room_id);
                session::save(&state);
            }
        }
        Ok(None) => {}
        Err(e) => gatewayd_plugin::log::warn(&format!("rooms: connection timer of {participant_id}: {}", e.message)),
    }
}

/// Decode one client text frame: a JSON object with a non-empty string `type`.
pub fn decode(text: &str) -> Result<Map<String, Value>, ApiError> {
    let msg: Map<String, Value> = match serde_json::from_str(text) {
        Ok(Value::Object(m)) => m,
        Ok(_) => return Err(ApiError::invalid("a message is a JSON object")),
        Err(e) => return Err(ApiError::invalid(format!("message is not valid JSON: {e}"))),
    };
    required_str(&msg, "type")?;
    Ok(msg)
}

/// Fields holding ids, bounded by `max_id_len` in every message.
const ID_FIELDS: [&str; 3] = ["roomId", "agentId", "participantId"];

fn handle(id: ConnectionId, state: &mut ConnState, text: &str, bounds: &Bounds) -> Result<(), ApiError> {
    let msg = decode(text)?;
    for field in ID_FIELDS {
        if let Some(Value::String(v)) = msg.get(field) {
            bounds.id(field, v)?;
        }
    }
    match required_str(&msg, "type")? {
        "auth" => auth(state, required_str(&msg, "token")?),
        "room:join" => join(id, state, &msg, bounds),
        "room:leave" => {
            let p = my_participant(state, &msg)?;
            lifecycle::leave(&p, "user_left", session_status::COMPLETED)?;
            state.rooms.remove(&p.room_id);
            Ok(())
        }
        "webrtc:offer" => relay(state, &msg, "offer"),
        "webrtc:answer" => relay(state, &msg, "answer"),
        "webrtc:ice-candidate" => relay(state, &msg, "candidate"),
        "room:mute" => mute(state, &msg),
        "room:stats" => stats(state, &msg),
        other => Err(ApiError::invalid(format!("unknown message type `{other}`"))),
    }
}

fn required_str<'a>(msg: &'a Map<String, Value>, field: &str) -> Result<&'a str, ApiError> {
    match msg.get(field) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        Some(_) => Err(ApiError::invalid(format!("`{field}` must be a non-empty string"))),
        None => Err(ApiError::invalid(format!("`{field}` is required"))),
    }
}

fn optional_str<'a>(msg: &'a Map<String, Value>, field: &str) -> Result<Option<&'a str>, ApiError> {
    match msg.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(_) => required_str(msg, field).map(Some),
    }
}

/// `auth`: verify the token with the daemon's keys and resolve its agent. Success is silent;
/// failure is `INVALID_TOKEN` (a bad token; a token of no agent; a token of another agent
/// while the connection holds seats) and leaves the connection as it was.
fn auth(state: &mut ConnState, token: &str) -> Result<(), ApiError> {
    let claims = gatewayd_plugin::auth::verify(token)
        .map_err(|why| ApiError::new(errors::INVALID_TOKEN, 401, format!("token refused: {why}")))?;
    let caller = access::resolve(&claims)?;
    if let Some(current) = &state.agent
        && current.agent_id != caller.agent_id
        && !state.rooms.is_empty()
    {
        return Err(ApiError::new(
            errors::INVALID_TOKEN,
            403,
            format!(
                "this connection holds seats of agent {}: leave them before authenticating as another agent",
                current.agent_id
            ),
        ));
    }
    state.agent = Some(caller);
    Ok(())
}

/// `room:join` -> `room:joined` to the joiner (with the others already there), and
/// `room:participant-joined` to the others.
///
/// Errors besides [`lifecycle::join`]'s: `INVALID_TOKEN` (401: the connection is no agent yet;
/// 403: `agentId` is not the connection's agent), `ROOM_NOT_FOUND` for a room of another
/// business, `INVALID_REQUEST` (bounds).
fn join(id: ConnectionId, state: &mut ConnState, msg: &Map<String, Value>, bounds: &Bounds) -> Result<(), ApiError> {
    let room_id = required_str(msg, "roomId")?;
    let agent_id = required_str(msg, "agentId")?;
    let metadata = match msg.get("metadata") {
        None | Some(Value::Null) => json!({}),
        Some(Value::Object(m)) => {
            bounds.metadata(m)?;
            Value::Object(m.clone())
        }
        Some(_) => return Err(ApiError::invalid("`metadata` must be an object")),
    };
    let Some(caller) = &state.agent else {
        return Err(ApiError::new(
            errors::INVALID_TOKEN,
            401,
            "authenticate as an agent before room:join: an `auth` message or a token at the handshake",
        ));
    };
    if caller.agent_id != agent_id {
        return Err(ApiError::new(
            errors::INVALID_TOKEN,
            403,
            format!("this connection's token is for agent {}, not {agent_id}", caller.agent_id),
        ));
    }
    let room = match model::get_room(room_id)? {
        Some(room)
            if room.business_id.as_deref().map(|b| access::is_member(agent_id, b)).transpose()? == Some(true) =>
        {
            room
        }
        _ => return Err(ApiError::room_not_found(room_id)),
    };
    if let Some(pid) = state.rooms.get(room_id) {
        if model::get_participant(pid)?.is_some_and(|p| p.is_live()) {
            return Err(ApiError::new(
                errors::ALREADY_JOINED,
                409,
                format!("this connection is already in room {room_id} as participant {pid}"),
            ));
        }
        state.rooms.remove(room_id);
    }
    let others: Vec<Value> = model::live_participants(room_id)?
        .iter()
        .filter(|p| p.agent_id != agent_id)
        .map(lifecycle::participant_summary)
        .collect();
    let p = lifecycle::join(JoinRequest { room: &room, agent_id, metadata, connection: Some(id) })?;
    state.rooms.insert(p.room_id.clone(), p.id.clone());
    conn::send_json(
        id,
        &json!({
            "type": "room:joined",
            "roomId": p.room_id,
            "participantId": p.id,
            "status": p.status,
            "sessionId": p.session_id,
            "participants": others,
        }),
    );
    Ok(())
}

/// The sender's live participant in the message's `roomId` (`participantId`, when given, must
/// name it). Errors: `NOT_IN_ROOM`.
fn my_participant(state: &mut ConnState, msg: &Map<String, Value>) -> Result<Participant, ApiError> {
    let room_id = required_str(msg, "roomId")?;
    let p = held_participant(state, room_id)?;
    match optional_str(msg, "participantId")? {
        Some(named) if named != p.id => Err(ApiError::new(
            errors::NOT_IN_ROOM,
            404,
            format!("participant {named} is not this connection's participant in room {room_id}"),
        )),
        _ => Ok(p),
    }
}

/// This connection's live participant in `room_id`. Errors: `NOT_IN_ROOM`.
fn held_participant(state: &mut ConnState, room_id: &str) -> Result<Participant, ApiError> {
    if let Some(pid) = state.rooms.get(room_id)
        && let Some(p) = model::get_participant(pid)?.filter(Participant::is_live)
    {
        return Ok(p);
    }
    state.rooms.remove(room_id);
    Err(ApiError::new(errors::NOT_IN_ROOM, 404, format!("this connection is not in room {room_id}")))
}

/// `webrtc:offer` / `webrtc:answer` / `webrtc:ice-candidate`: relay `field` to the participant
/// named by `participantId`, or to every other participant when none (or the sender) is named,
/// with `fromParticipantId` and `roomId`. An answer completes the negotiation: sender and
/// receivers become `connected`. Errors: `NOT_IN_ROOM`, `WEBCRTC_ERROR` (nobody to deliver to).
fn relay(state: &mut ConnState, msg: &Map<String, Value>, field: &str) -> Result<(), ApiError> {
    let room_id = required_str(msg, "roomId")?;
    let payload = match msg.get(field) {
        Some(Value::Object(o)) => Value::Object(o.clone()),
        _ => return Err(ApiError::invalid(format!("`{field}` must be an object"))),
    };
    let me = held_participant(state, room_id)?;
    let kind = required_str(msg, "type")?;
    let out = json!({"type": kind, "fromParticipantId": me.id, "roomId": room_id, field: payload}).to_string();
    let targets: Vec<String> = match optional_str(msg, "participantId")?.filter(|t| *t != me.id) {
        Some(target) => {
            if conn::send_to(&participant_address(room_id, target), &out) == 0 {
                return Err(ApiError::new(
                    errors::WEBCRTC_ERROR,
                    409,
                    format!("participant {target} is not connected to room {room_id}"),
                ));
            }
            vec![target.to_string()]
        }
        None => {
            let others: Vec<String> = model::live_participants(room_id)?
                .into_iter()
                .filter(|p| p.id != me.id && p.connection_id.is_some())
                .filter(|p| conn::send_to(&participant_address(room_id, &p.id), &out) > 0)
                .map(|p| p.id)
                .collect();
            if others.is_empty() {
                return Err(ApiError::new(
                    errors::WEBCRTC_ERROR,
                    409,
                    format!("no other participant is connected to room {room_id}"),
                ));
            }
            others
        }
    };
    if field == "answer" {
        lifecycle::connected(&me.id)?;
        for t in &targets {
            lifecycle::connected(t)?;
        }
    }
    Ok(())
}

/// `room:mute`: record the state; the room (sender included) gets `voice:stream-stopped`
/// (muted) or `voice:stream-started` (unmuted).
fn mute(state: &mut ConnState, msg: &Map<String, Value>) -> Result<(), ApiError> {
    let muted = match msg.get("muted") {
        Some(Value::Bool(b)) => *b,
        _ => return Err(ApiError::invalid("`muted` must be true or false")),
    };
    let p = my_participant(state, msg)?;
    model::set_muted(&p.id, muted)?;
    let kind = if muted { "voice:stream-stopped" } else { "voice:stream-started" };
    conn::send_json_to(&room_address(&p.room_id), &json!({"type": kind, "participantId": p.id}));
    Ok(())
}

/// The stats a client may report with `room:stats` (spec: Get Session `stats`), with whether
/// each is an integer count (else any non-negative number).
pub const STATS_FIELDS: [(&str, bool); 6] = [
    ("voice_packets_sent", true),
    ("voice_packets_received", true),
    ("bytes_sent", true),
    ("bytes_received", true),
    ("packet_loss_percent", false),
    ("avg_latency_ms", false),
];

/// `room:stats` (added): `{"type":"room:stats","roomId":..,"stats":{..}}` with any of
/// [`STATS_FIELDS`]; the latest report replaces the session's stats. Silent on success.
fn stats(state: &mut ConnState, msg: &Map<String, Value>) -> Result<(), ApiError> {
    let clean = checked_stats(msg)?;
    let p = my_participant(state, msg)?;
    model::set_session_stats(&p.session_id, &Value::Object(clean))
}

/// The `stats` object of a `room:stats` message, checked against [`STATS_FIELDS`].
pub fn checked_stats(msg: &Map<String, Value>) -> Result<Map<String, Value>, ApiError> {
    let Some(Value::Object(reported)) = msg.get("stats") else {
        return Err(ApiError::invalid("`stats` must be an object"));
    };
    let mut clean = Map::new();
    for (name, value) in reported {
        let Some((_, integer)) = STATS_FIELDS.iter().find(|(f, _)| f == name) else {
            return Err(ApiError::invalid(format!("unknown stat `{name}`")));
        };
        let ok = if *integer { value.as_u64().is_some() } else { value.as_f64().is_some_and(|f| f >= 0.0) };
        if !ok {
            let kind = if *integer { "a non-negative integer" } else { "a non-negative number" };
            return Err(ApiError::invalid(format!("`{name}` must be {kind}")));
        }
        clean.insert(name.clone(), value.clone());
    }
    if clean.is_empty() {
        return Err(ApiError::invalid("`stats` names no stat"));
    }
    Ok(clean)
}
