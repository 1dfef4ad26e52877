//! The REST face (spec: REST API) under `/api/v1`. Every endpoint needs an agent JWT: a token
//! the daemon verified (`Authorization: Bearer`, `?token=`) whose claims carry `user_id` or
//! `agent_id`. Without a token: 401 `INVALID_TOKEN`; with a token lacking both: 403
//! `INVALID_TOKEN`. (A token the daemon refuses is answered by the daemon: 401 `token_invalid`
//! / `token_expired` / `token_not_accepted`.)

use crate::errors::{self, ApiError};
use crate::lifecycle::{self, JoinRequest};
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
    require_agent(req)?;
    match (method, segments.as_slice()) {
        ("POST", ["rooms"]) => create_room(req),
        ("GET", ["rooms"]) => list_rooms(req),
        ("GET", ["rooms", id]) => get_room(id),
        ("PATCH", ["rooms", id]) => update_room(req, id),
        ("DELETE", ["rooms", id]) => {
            lifecycle::delete_room(id)?;
            Ok(no_content())
        }
        ("POST", ["rooms", id, "participants"]) => join(req, id),
        ("GET", ["rooms", id, "participants"]) => list_participants(id),
        ("DELETE", ["rooms", id, "participants", pid]) => remove_participant(id, pid),
        ("GET", ["sessions", id]) => match model::get_session(id)? {
            Some(s) => Ok(http::json(200, &s)),
            None => Err(ApiError::new(errors::SESSION_NOT_FOUND, 404, format!("session {id} does not exist"))),
        },
        _ => Err(ApiError::new(errors::METHOD_NOT_ALLOWED, 405, format!("{method} is not allowed on {}", req.path))),
    }
}

/// The caller's agent identity (`agent_id`, else `user_id`, as text).
fn require_agent(req: &HttpRequest) -> Result<String, ApiError> {
    let Some(claims) = req.claims.as_deref().and_then(|c| serde_json::from_str::<Value>(c).ok()) else {
        return Err(ApiError::new(errors::INVALID_TOKEN, 401, "an agent token is required (Authorization: Bearer)"));
    };
    match claims.get("agent_id").or_else(|| claims.get("user_id")) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Number(n)) => Ok(n.to_string()),
        _ => {
            Err(ApiError::new(errors::INVALID_TOKEN, 403, "the token is not an agent's: it has no user_id or agent_id"))
        }
    }
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

/// `POST /rooms` -> 201 with the room (status `created`).
fn create_room(req: &HttpRequest) -> Reply {
    let body = body_object(req)?;
    let name = name_field(&body, true)?.unwrap_or_default();
    let settings = body.get("settings").cloned().unwrap_or_else(|| json!({}));
    check_settings(&settings)?;
    let now = model::now();
    let room = Room {
        id: model::new_id(),
        name,
        status: room_status::CREATED.into(),
        settings,
        created_at: now.clone(),
        updated_at: now,
    };
    model::insert_room(&room, require_agent(req).ok().as_deref())?;
    Ok(http::json(201, &room.to_json(None)))
}

fn room_with_count(room: &Room) -> Reply {
    Ok(http::json(200, &room.to_json(Some(model::count_live(&room.id)?))))
}

/// `GET /rooms/:id` -> 200 with `participants_count` (participants not `left`).
fn get_room(id: &str) -> Reply {
    room_with_count(&model::require_room(id)?)
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
/// newest first.
fn list_rooms(req: &HttpRequest) -> Reply {
    let status = query_param(req, "status");
    if let Some(s) = status
        && !room_status::ALL.contains(&s)
    {
        return Err(ApiError::invalid(format!("`status` must be one of {}", room_status::ALL.join(", "))));
    }
    let limit = int_param(req, "limit", DEFAULT_LIMIT, MAX_LIMIT)?;
    let offset = int_param(req, "offset", 0, i64::MAX)?;
    let (rooms, total) = model::list_rooms(status, limit, offset)?;
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
fn update_room(req: &HttpRequest, id: &str) -> Reply {
    let body = body_object(req)?;
    let mut room = model::require_room(id)?;
    if let Some(name) = name_field(&body, false)? {
        room.name = name;
    }
    if let Some(patch) = body.get("settings") {
        if !patch.is_object() {
            return Err(ApiError::invalid("`settings` must be an object"));
        }
        merge(&mut room.settings, patch);
        check_settings(&room.settings)?;
    }
    room.updated_at = model::now();
    model::update_room(&room)?;
    room_with_count(&room)
}

/// `POST /rooms/:id/participants` -> 201 with the participant (`connecting`). It has no
/// connection until a WebSocket `room:join` with the same `agentId` resumes it.
fn join(req: &HttpRequest, room_id: &str) -> Reply {
    let body = body_object(req)?;
    let agent_id = match body.get("agent_id") {
        Some(Value::String(s)) if !s.is_empty() => s.as_str(),
        _ => return Err(ApiError::invalid("`agent_id` must be a non-empty string")),
    };
    let metadata = match body.get("metadata") {
        None | Some(Value::Null) => json!({}),
        Some(m @ Value::Object(_)) => m.clone(),
        Some(_) => return Err(ApiError::invalid("`metadata` must be an object")),
    };
    let p = lifecycle::join(JoinRequest { room_id, agent_id, metadata, connection: None })?;
    Ok(http::json(201, &p.to_json()))
}

/// `GET /rooms/:id/participants` -> 200 `{data}`: participants not `left`, in join order.
fn list_participants(room_id: &str) -> Reply {
    let room = model::require_room(room_id)?;
    let data: Vec<Value> = model::live_participants(&room.id)?.iter().map(model::Participant::to_list_item).collect();
    Ok(http::json(200, &json!({"data": data})))
}

/// `DELETE /rooms/:id/participants/:pid` -> 204; the room gets `room:participant-left` with
/// reason `user_left`. Errors: `ROOM_NOT_FOUND`, `NOT_IN_ROOM`.
fn remove_participant(room_id: &str, participant_id: &str) -> Reply {
    let room = model::require_room(room_id)?;
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
