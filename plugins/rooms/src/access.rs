//! Who may touch which room (issue #15): every room belongs to a business, and only agents of
//! that business may see or act on it, over REST and over the WebSocket.
//!
//! An agent is resolved from a verified token the way the signaling plugin resolves one: the
//! token's `user_id` claim (else `sub`), a string or a number, names `agents.user_id`; the
//! agent's businesses are those of its rows in `agent_memberships`. A token without such a
//! claim, or whose user is no agent of any business, is refused with `INVALID_TOKEN` (403).
//!
//! A room of another business is answered as if it did not exist (`ROOM_NOT_FOUND`), so room
//! ids of other tenants cannot be probed. Rooms with no business (made before rooms had one
//! and not attributable to a single business by the migration) belong to nobody.

use crate::errors::{self, ApiError};
use crate::model::{self, Room};
use gatewayd_plugin::{SqlValue, store};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// An authenticated agent: its `agents.id` and the businesses it is a member of.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Caller {
    /// `agents.id`: the identity that holds the seats it takes (`agentId` on the wire).
    pub agent_id: String,
    /// The distinct businesses of its memberships, sorted; never empty.
    pub businesses: Vec<String>,
}

/// Resolve verified token claims (a JSON object) to an agent. Errors: `INVALID_TOKEN` (403)
/// when the claims name no user or the user is no agent of any business; `INTERNAL_ERROR`.
pub fn resolve(claims: &Value) -> Result<Caller, ApiError> {
    let user = match claims.get("user_id").or_else(|| claims.get("sub")) {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => {
            return Err(ApiError::new(
                errors::INVALID_TOKEN,
                403,
                "the token is not an agent's: it has no user_id (or sub) claim",
            ));
        }
    };
    let rows = store::query(
        "SELECT a.id, m.business_id FROM agents a JOIN agent_memberships m ON m.agent_id = a.id \
         WHERE a.user_id = $1 ORDER BY m.business_id",
        &[SqlValue::Text(user.clone())],
    )
    .map_err(ApiError::internal)?;
    let mut agent_id = None;
    let mut businesses: Vec<String> = Vec::new();
    for row in &rows {
        if let (Some(a), Some(b)) = (row.first().and_then(store::text), row.get(1).and_then(store::text)) {
            agent_id.get_or_insert_with(|| a.to_string());
            if businesses.last().map(String::as_str) != Some(b) {
                businesses.push(b.to_string());
            }
        }
    }
    match agent_id {
        Some(agent_id) => Ok(Caller { agent_id, businesses }),
        None => Err(ApiError::new(errors::INVALID_TOKEN, 403, format!("user {user} is not an agent of any business"))),
    }
}

impl Caller {
    /// True when `room` belongs to one of the caller's businesses.
    pub fn may_use(&self, room: &Room) -> bool {
        room.business_id.as_ref().is_some_and(|b| self.businesses.contains(b))
    }

    /// The room `id` if it exists and belongs to one of the caller's businesses, else
    /// `ROOM_NOT_FOUND` (404) either way.
    pub fn room(&self, id: &str) -> Result<Room, ApiError> {
        match model::get_room(id)? {
            Some(room) if self.may_use(&room) => Ok(room),
            _ => Err(ApiError::room_not_found(id)),
        }
    }

    /// The business a new room goes to: `requested` (the body's `business_id`), which must be
    /// one of the caller's (else `FORBIDDEN`, 403), or the caller's only business (with
    /// several and none requested: `INVALID_REQUEST`, 400).
    pub fn business_for_new_room(&self, requested: Option<&str>) -> Result<String, ApiError> {
        match requested {
            Some(b) if self.businesses.iter().any(|mine| mine == b) => Ok(b.to_string()),
            Some(b) => Err(ApiError::new(
                errors::FORBIDDEN,
                403,
                format!("agent {} is not a member of business {b}", self.agent_id),
            )),
            None => match self.businesses.as_slice() {
                [only] => Ok(only.clone()),
                several => Err(ApiError::invalid(format!(
                    "agent {} is a member of {} businesses: pass `business_id`",
                    self.agent_id,
                    several.len()
                ))),
            },
        }
    }
}

/// True when agent `agent_id` (an `agents.id`) is a member of `business` now (read fresh from
/// `agent_memberships`, so a revoked membership takes effect at the next check).
pub fn is_member(agent_id: &str, business: &str) -> Result<bool, ApiError> {
    let rows = store::query(
        "SELECT 1 FROM agent_memberships WHERE agent_id = $1 AND business_id = $2",
        &[SqlValue::Text(agent_id.to_string()), SqlValue::Text(business.to_string())],
    )
    .map_err(ApiError::internal)?;
    Ok(!rows.is_empty())
}
