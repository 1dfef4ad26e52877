//! Who is on a connection: a guest (by `guest_id`, scoped by `business_id`) or an agent (by JWT,
//! resolved to exactly one membership). Spec: "WebSocket URLs" and its notes.

use crate::Endpoint;
use crate::protocol::ErrorMsg;
use gatewayd_plugin::{ConnectInfo, ConnectionId, SqlValue, conn, kv, session, store};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Close codes for refused connections (the spec names none; see docs/protocols/signaling.md).
pub const CLOSE_MISSING_IDENTITY: u16 = 4001;
/// A URL parameter (`guest_id`, `business_id`, `department_id`) is longer than `max_id_bytes`.
pub const CLOSE_PARAMETER_TOO_LONG: u16 = 4002;
pub const CLOSE_MEMBERSHIP: u16 = 4003;
pub const CLOSE_UNKNOWN_BUSINESS: u16 = 4004;
pub const CLOSE_INTERNAL: u16 = 1011;

/// Why a connection is refused: sent as the WebSocket close code and reason.
pub struct Refusal {
    pub code: u16,
    pub reason: String,
}

fn refuse(code: u16, reason: impl Into<String>) -> Refusal {
    Refusal { code, reason: reason.into() }
}

/// The session state of a signaling connection.
#[derive(Serialize, Deserialize)]
pub struct Identity {
    pub role: Role,
    /// The business every message of this connection is scoped to. `None` only for a guest
    /// that connected without `business_id` and has not invited anyone yet.
    pub business_id: Option<String>,
    /// Keys of the invites this connection sent that may still be pending (pruned against kv
    /// before each invite), for `max_pending_invites_per_connection`.
    #[serde(default)]
    pub pending: Vec<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Role {
    Guest {
        guest_id: String,
    },
    Agent {
        agent_id: String,
        /// The JWT's user id as it appeared in the token (number or string).
        user_id: Value,
        department_id: Option<String>,
    },
}

pub fn guest_address(business: &str, guest_id: &str) -> String {
    format!("guest/{business}/{guest_id}")
}

pub fn agent_address(business: &str, agent_id: &str) -> String {
    format!("agent/{business}/{agent_id}")
}

fn user_key(business: &str, user_id: &str) -> String {
    format!("user-agent/{business}/{user_id}")
}

/// The agent id of the agent with `user_id` in `business`, if that agent has connected.
pub fn agent_for_user(business: &str, user_id: &str) -> Option<String> {
    kv::get(&user_key(business, user_id))
}

/// Resolve the connection's identity from its query and JWT claims. A URL id longer than
/// `max_id_bytes` is refused with [`CLOSE_PARAMETER_TOO_LONG`] before anything is looked up.
pub fn resolve(info: &ConnectInfo, max_id_bytes: usize) -> Result<Identity, Refusal> {
    for name in ["guest_id", "business_id", "department_id"] {
        if info.query_param(name).is_some_and(|v| v.len() > max_id_bytes) {
            return Err(refuse(CLOSE_PARAMETER_TOO_LONG, format!("{name} is longer than {max_id_bytes} bytes")));
        }
    }
    let business_id = info.query_param("business_id").filter(|s| !s.is_empty());
    match &info.claims {
        Some(claims) => resolve_agent(claims, info.query_param("department_id").filter(|s| !s.is_empty()), business_id),
        None => {
            let guest_id = info
                .query_param("guest_id")
                .filter(|s| !s.is_empty())
                .ok_or_else(|| refuse(CLOSE_MISSING_IDENTITY, "guest_id or token is required"))?;
            if let Some(b) = business_id
                && !business_exists(b).map_err(|e| refuse(CLOSE_INTERNAL, e))?
            {
                return Err(refuse(CLOSE_UNKNOWN_BUSINESS, format!("unknown business_id {b}")));
            }
            Ok(Identity {
                role: Role::Guest { guest_id: guest_id.to_string() },
                business_id: business_id.map(str::to_string),
                pending: Vec::new(),
            })
        }
    }
}

struct Membership {
    agent_id: String,
    business_id: String,
    department_id: Option<String>,
}

/// Agent membership resolution, exactly as the spec's notes order it:
/// `department_id` if provided (must match), else `business_id` (must match exactly one
/// membership), else exactly one membership overall.
fn resolve_agent(claims: &str, department: Option<&str>, business: Option<&str>) -> Result<Identity, Refusal> {
    let claims: Value =
        serde_json::from_str(claims).map_err(|_| refuse(CLOSE_MEMBERSHIP, "token claims are not an object"))?;
    let user_id = claims
        .get("user_id")
        .or_else(|| claims.get("sub"))
        .filter(|v| v.is_string() || v.is_number())
        .cloned()
        .ok_or_else(|| refuse(CLOSE_MEMBERSHIP, "token has no user_id"))?;
    let user_key_text = match &user_id {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let rows = store::query(
        "SELECT a.id, m.business_id, m.department_id FROM agents a \
         JOIN agent_memberships m ON m.agent_id = a.id WHERE a.user_id = $1 \
         ORDER BY m.business_id, m.department_id",
        &[SqlValue::Text(user_key_text.clone())],
    )
    .map_err(|e| refuse(CLOSE_INTERNAL, format!("membership lookup failed: {e}")))?;
    let memberships: Vec<Membership> = rows
        .iter()
        .filter_map(|r| {
            Some(Membership {
                agent_id: store::text(r.first()?)?.to_string(),
                business_id: store::text(r.get(1)?)?.to_string(),
                department_id: r.get(2).and_then(store::text).map(str::to_string),
            })
        })
        .collect();
    if memberships.is_empty() {
        return Err(refuse(CLOSE_MEMBERSHIP, format!("user {user_key_text} is not an agent of any business")));
    }
    let chosen: Vec<&Membership> = if let Some(d) = department {
        let m: Vec<_> = memberships.iter().filter(|m| m.department_id.as_deref() == Some(d)).collect();
        if m.is_empty() {
            return Err(refuse(CLOSE_MEMBERSHIP, format!("agent is not a member of department {d}")));
        }
        if let Some(b) = business
            && m.iter().all(|m| m.business_id != b)
        {
            return Err(refuse(CLOSE_MEMBERSHIP, format!("department {d} is not in business {b}")));
        }
        m
    } else if let Some(b) = business {
        let m: Vec<_> = memberships.iter().filter(|m| m.business_id == b).collect();
        match m.len() {
            0 => return Err(refuse(CLOSE_MEMBERSHIP, format!("agent is not a member of business {b}"))),
            1 => m,
            n => {
                return Err(refuse(
                    CLOSE_MEMBERSHIP,
                    format!("agent has {n} memberships in business {b}; pass department_id"),
                ));
            }
        }
    } else if memberships.len() == 1 {
        memberships.iter().collect()
    } else {
        return Err(refuse(
            CLOSE_MEMBERSHIP,
            format!("agent has {} memberships; pass department_id or business_id", memberships.len()),
        ));
    };
    let m = chosen[0];
    Ok(Identity {
        role: Role::Agent { agent_id: m.agent_id.clone(), user_id, department_id: m.department_id.clone() },
        business_id: Some(m.business_id.clone()),
        pending: Vec::new(),
    })
}

fn business_exists(id: &str) -> Result<bool, String> {
    store::query("SELECT 1 FROM businesses WHERE id = $1", &[SqlValue::Text(id.to_string())])
        .map(|rows| !rows.is_empty())
}

impl Identity {
    /// Bind the addresses this identity is reachable at.
    pub fn bind(&self, id: ConnectionId) {
        let Some(business) = &self.business_id else { return };
        match &self.role {
            Role::Guest { guest_id } => conn::bind(id, &guest_address(business, guest_id)),
            Role::Agent { agent_id, user_id, .. } => {
                conn::bind(id, &agent_address(business, agent_id));
                let user = match user_id {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                kv::set(&user_key(business, &user), agent_id, None);
            }
        }
    }

    /// The spec's section 1 message, in the guest or agent shape.
    pub fn connection_established(&self) -> Value {
        match &self.role {
            Role::Guest { guest_id } => json!({
                "type": "connection_established",
                "guest_id": guest_id,
                "business_id": self.business_id,
            }),
            Role::Agent { agent_id, user_id, department_id } => json!({
                "type": "connection_established",
                "user_id": user_id,
                "agent_id": agent_id,
                "department_id": department_id,
                "business_id": self.business_id,
            }),
        }
    }

    pub fn endpoint(&self) -> Endpoint {
        match &self.role {
            Role::Guest { guest_id } => Endpoint::Guest(guest_id.clone()),
            Role::Agent { agent_id, .. } => Endpoint::Agent(agent_id.clone()),
        }
    }

    /// `business_id` must be the sender's. A guest that connected without one is scoped to the
    /// business of its first invite (which must exist); from then on it is bound like any guest.
    pub fn check_business(&mut self, id: ConnectionId, business: &str) -> Result<(), ErrorMsg> {
        match &self.business_id {
            Some(b) if b == business => Ok(()),
            Some(_) => Err(ErrorMsg::new(
                "wrong_business",
                format!("business_id {business} is not this connection's business"),
            )),
            None => {
                match business_exists(business) {
                    Ok(true) => {}
                    Ok(false) => {
                        return Err(ErrorMsg::new("unknown_business", format!("unknown business_id {business}")));
                    }
                    Err(e) => return Err(ErrorMsg::new("internal_error", e)),
                }
                self.business_id = Some(business.to_string());
                self.bind(id);
                session::save(self);
                Ok(())
            }
        }
    }
}
