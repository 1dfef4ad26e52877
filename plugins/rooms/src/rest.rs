//! The REST face (spec: REST API) under `/api/v1`. Every endpoint needs an agent: a token the
//! daemon verified (`Authorization: Bearer`, `?token=`) whose `user_id` (or `sub`) is an agent
//! with a membership ([`crate::access`]). Without a token: 401 `INVALID_TOKEN`; with a token of
//! no agent: 403 `INVALID_TOKEN`. (A token the daemon refuses is answered by the daemon: 401
//! `token_invalid` / `token_expired` / `token_not_accepted`.) Rooms of businesses the agent is
//! not a member of do not exist for it (404 `ROOM_NOT_FOUND`, `SESSION_NOT_FOUND`).

use crate::access::{self, Caller};
use crate::errors::{self, ApiError};
use crate::lifecycle::{self, Config, JoinRequest};
use crate::limits::Bounds;
use crate::model::{self, Room, room_status, session_status};
use gatewayd_plugin::{HttpRequest, HttpResponse, http};
use serde_json::{Map, Value, json};

/// The spec's base path.
pub const BASE: &str = "/api/v1";
/// `limit` of `GET /rooms` when absent.
pub const DEFAULT_LIMIT: i64 = 20;
/// Largest `limit` of `GET /rooms`.
pub const MAX_LIMIT: i64 = 100;

type Reply = Result<HttpResponse, ApiError>;

/// Route one request.
pub fn handle(req: HttpRequest) -> HttpResponse {
    route(&req).unwrap_or_else(|e| e.to_http())
}

fn route(req: &HttpRequest) -> Reply {
    let rest = req.path.strip_prefix(BASE).unwrap_or("");
    let segments: Vec<&str> = rest.trim_end_matches('/').split('/').skip(1).collect();
    let method = req.method.as_str();
    let known = matches!(
        segments.as_slice(),
        ["rooms"] | ["rooms", _] | ["rooms", _, "participants"] | ["rooms", _, "participants", _] | ["sessions", _]
    );
    if !known || !req.path.starts_with(BASE) {
        return Err(ApiError::new(errors::NOT_FOUND, 404, format!("no endpoint {}", req.path)));
    }
    let caller = require_agent(req)?;
    let bounds = Config::get().bounds();
    for id in segments.iter().skip(1).step_by(2) {
        bounds.id("id", id)?;
    }
    match (method, segments.as_slice()) {
        ("POST", ["rooms"]) => create_room(req, &caller, &bounds),
        ("GET", ["rooms"]) => list_rooms(req, &caller),
        ("GET", ["rooms", id]) => room_with_count(&caller.room(id)?),
        ("PATCH", ["rooms", id]) => update_room(req, &caller.room(id)?, &bounds),
        ("DELETE", ["rooms", id]) => {
            lifecycle::delete_room(&caller.room(id)?)?;
            Ok(no_content())
        }
        ("POST", ["rooms", id, "participants"]) => join(req, &caller.room(id)?, &bounds),
        ("GET", ["rooms", id, "participants"]) => list_participants(&caller.room(id)?),
        ("DELETE", ["rooms", id, "participants", pid]) => remove_participant(&caller.room(id)?, pid),
        ("GET", ["sessions", id]) => match model::get_session(id, &caller.agent_id)? {
            Some(s) => Ok(http::json(200, &s)),
            None => Err(ApiError::new(errors::SESSION_NOT_FOUND, 404, format!("session {id} does not exist"))),
        },
        _ => Err(ApiError::new(errors::METHOD_NOT_ALLOWED, 405, format!("{method} is not allowed on {}", req.path))),
    }
}

/// The calling agent, from the request's verified claims (see [`access::resolve`]).
fn require_agent(req: &HttpRequest) -> Result<Caller, ApiError> {
    let Some(claims) = req.claims.as_deref().and_then(|c| serde_json::from_str::<Value>(c).ok()) else {
        return Err(ApiError::new(errors::INVALID_TOKEN, 401, "an agent token is required (Authorization: Bearer)"));
    };
    access::resolve(&claims)
}

fn no_content() -> HttpResponse {
    HttpResponse { status: 204, headers: vec![], body: vec![] }
}

fn body_object(req: &HttpRequest) -> Result<Map<String, Value>, ApiError> {
    parse_body(&req.body)
}

/// Decode a request body that must be a JSON object.
pub fn parse_body(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::invalid("the body must be a JSON object")),
        Err(e) => Err(ApiError::invalid(format!("the body is not valid JSON: {e}"))),
    }
}

pub fn name_field(body: &Map<String, Value>, required: bool) -> Result<Option<String>, ApiError> {
    match body.get("name") {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(Some(s.clone())),
        None if !required => Ok(None),
        _ => Err(ApiError::invalid("`name` must be a non-empty string")),
    }
}

/// `settings` must be an object; `max_participants`, when present, a positive integer (or null).
pub fn check_settings(settings: &Value) -> Result<(), ApiError> {
    let Value::Object(s) = settings else { return Err(ApiError::invalid("`settings` must be an object")) };
    match s.get("max_participants") {
        None | Some(Value::Null) => Ok(()),
        Some(v) if v.as_u64().is_some_and(|n| n > 0) => Ok(()),
        Some(_) => Err(ApiError::invalid("`settings.max_participants` must be a positive integer")),
    }
}

/// `POST /rooms` -> 201 with the room (status `created`), in the business `business_id` of the
/// body (one of the caller's) or the caller's only business.
fn create_room(req: &HttpRequest, caller: &Caller, bounds: &Bounds) -> Reply {
    let body = body_object(req)?;
    let name = name_field(&body, true)?.unwrap_or_default();
    bounds.name(&name)?;
    let settings = body.get("settings").cloned().unwrap_or_else(|| json!({}));
    check_settings(&settings)?;
    bounds.settings(&settings)?;
    let requested = match body.get("business_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(b)) if !b.is_empty() => Some(bounds.id("business_id", b)?),
        Some(_) => return Err(ApiError::invalid("`business_id` must be a non-empty string")),
    };
    let business = caller.business_for_new_room(requested)?;
    let now = model::now();
    let room = Room {
        id: model::new_id(),
        name,
        status: room_status::CREATED.into(),
        settings,
        created_at: now.clone(),
        updated_at: now,
        business_id: Some(business),
    };
    model::insert_room(&room, &caller.agent_id)?;
    Ok(http::json(201, &room.to_json(None)))
}

/// `GET /rooms/:id` -> 200 with `participants_count` (participants not `left`).
fn room_with_count(room: &Room) -> Reply {
    Ok(http::json(200, &room.to_json(Some(model::count_live(&room.id)?))))
}

fn query_param<'a>(req: &'a HttpRequest, name: &str) -> Option<&'a str> {
    req.query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

fn int_param(req: &HttpRequest, name: &str, default: i64, max: i64) -> Result<i64, ApiError> {
    match query_param(req, name) {
        None => Ok(default),
        Some(v) => match v.parse::<i64>() {
            Ok(n) if (0..=max).contains(&n) => Ok(n),
            _ => Err(ApiError::invalid(format!("`{name}` must be an integer from 0 to {max}"))),
        },
    }
}

/// `GET /rooms?status=&limit=&offset=` -> 200 `{data, pagination: {limit, offset, total}}`,
/// newest first: the rooms of the caller's businesses only.
fn list_rooms(req: &HttpRequest, caller: &Caller) -> Reply {
    let status = query_param(req, "status");
    if let Some(s) = status
        && !room_status::ALL.contains(&s)
    {
        return Err(ApiError::invalid(format!("`status` must be one of {}", room_status::ALL.join(", "))));
    }
    let limit = int_param(req, "limit", DEFAULT_LIMIT, MAX_LIMIT)?;
    let offset = int_param(req, "offset", 0, i64::MAX)?;
    let (rooms, total) = model::list_rooms(&caller.agent_id, status, limit, offset)?;
    let data: Vec<Value> = rooms
        .iter()
        .map(|(r, count)| {
            json!({"id": r.id, "name": r.name, "status": r.status, "participants_count": count, "created_at": r.created_at})
        })
        .collect();
    Ok(http::json(200, &json!({"data": data, "pagination": {"limit": limit, "offset": offset, "total": total}})))
}

/// JSON Merge Patch (RFC 7386): objects merge recursively, `null` removes a key.
pub fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    if let Value::Object(t) = target {
        for (k, v) in patch {
            if v.is_null() {
                t.remove(k);
            } else {
                merge(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// `PATCH /rooms/:id` -> 200 with the room: `name` replaced, `settings` merged (RFC 7386).
fn update_room(req: &HttpRequest, room: &Room, bounds: &Bounds) -> Reply {
    let body = body_object(req)?;
    let mut room = room.clone();
    if let Some(name) = name_field(&body, false)? {
        bounds.name(&name)?;
        room.name = name;
    }
    if let Some(patch) = body.get("settings") {
        if !patch.is_object() {
            return Err(ApiError::invalid("`settings` must be an object"));
        }
        merge(&mut room.settings, patch);
        check_settings(&room.settings)?;
        bounds.settings(&room.settings)?;
    }
    room.updated_at = model::now();
    model::update_room(&room)?;
    room_with_count(&room)
}

/// `POST /rooms/:id/participants` -> 201 with the participant (`connecting`). `agent_id` must
/// be an agent (`agents.id`) of the room's business (else 403 `FORBIDDEN`); the seat is that
/// agent's: it has no connection until a WebSocket authenticated as that agent joins the room
/// and resumes it.
fn join(req: &HttpRequest, room: &Room, bounds: &Bounds) -> Reply {
    let body = body_object(req)?;
    let agent_id = match body.get("agent_id") {
        Some(Value::String(s)) if !s.is_empty() => bounds.id("agent_id", s)?,
        _ => return Err(ApiError::invalid("`agent_id` must be a non-empty string")),
    };
    let metadata = match body.get("metadata") {
        None | Some(Value::Null) => json!({}),
        Some(Value::Object(m)) => {
            bounds.metadata(m)?;
            Value::Object(m.clone())
        }
        Some(_) => return Err(ApiError::invalid("`metadata` must be an object")),
    };
    let business = room.business_id.as_deref().unwrap_or_default();
    if !access::is_member(agent_id, business)? {
        return Err(ApiError::new(
            errors::FORBIDDEN,
            403,
            format!("agent {agent_id} is not an agent of the room's business"),
        ));
    }
    let p = lifecycle::join(JoinRequest { room, agent_id, metadata, connection: None })?;
    Ok(http::json(201, &p.to_json()))
}

/// `GET /rooms/:id/participants` -> 200 `{data}`: participants not `left`, in join order.
fn list_participants(room: &Room) -> Reply {
    let data: Vec<Value> = model::live_participants(&room.id)?.iter().map(model::Participant::to_list_item).collect();
    Ok(http::json(200, &json!({"data": data})))
}

/// `DELETE /rooms/:id/participants/:pid` -> 204; the room gets `room:participant-left` with
/// reason `user_left`. Errors: `ROOM_NOT_FOUND`, `NOT_IN_ROOM`.
fn remove_participant(room: &Room, participant_id: &str) -> Reply {
    let room_id = &room.id;
    match model::get_participant(participant_id)? {
        Some(p) if p.room_id == room.id && p.is_live() => {
            lifecycle::leave(&p, "user_left", session_status::COMPLETED)?;
            Ok(no_content())
        }
        _ => Err(ApiError::new(
            errors::NOT_IN_ROOM,
            404,
            format!("participant {participant_id} is not in room {room_id}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::merge;
    use serde_json::json;

    /// The examples of RFC 7386 section 3.
    #[test]
    fn merge_patch_follows_rfc_7386() {
        let cases = [
            (json!({"a": "b"}), json!({"a": "c"}), json!({"a": "c"})),
            (json!({"a": "b"}), json!({"b": "c"}), json!({"a": "b", "b": "c"})),
            (json!({"a": "b"}), json!({"a": null}), json!({})),
            (json!({"a": "b", "b": "c"}), json!({"a": null}), json!({"b": "c"})),
            (json!({"a": ["b"]}), json!({"a": "c"}), json!({"a": "c"})),
            (json!({"a": "c"}), json!({"a": ["b"]}), json!({"a": ["b"]})),
            (json!({"a": {"b": "c"}}), json!({"a": {"b": "d", "c": null}}), json!({"a": {"b": "d"}})),
            (json!({"a": [{"b": "c"}]}), json!({"a": [1]}), json!({"a": [1]})),
            (json!(["a", "b"]), json!(["c", "d"]), json!(["c", "d"])),
            (json!({"a": "b"}), json!(["c"]), json!(["c"])),
            (json!({"a": "foo"}), json!(null), json!(null)),
            (json!({"a": "foo"}), json!("bar"), json!("bar")),
            (json!({"e": null}), json!({"a": 1}), json!({"e": null, "a": 1})),
            (json!([1, 2]), json!({"a": "b", "c": null}), json!({"a": "b"})),
            (json!({}), json!({"a": {"bb": {"ccc": null}}}), json!({"a": {"bb": {}}})),
        ];
        for (mut target, patch, want) in cases {
            merge(&mut target, &patch);
            assert_eq!(target, want, "patch {patch}");
        }
    }
}
