//! Who is calling: a visitor (a gateway-issued visitor token, scoped to one session) or an
//! agent (the daemon's JWT: `user_id` (or `sub`) -> `agents` -> `agent_memberships`, read-only,
//! as signaling resolves them).

use gatewayd_plugin::{SqlValue, store};
use serde_json::{Value, json};

/// Claim naming the visitor (its `sender_id`) in a visitor token.
const VISITOR_CLAIM: &str = "chat_visitor_id";
/// Claim naming the one session a visitor token is good for.
const SESSION_CLAIM: &str = "chat_session_id";

#[derive(Debug, Clone)]
pub enum Caller {
    Visitor { visitor_id: String, session_id: String, business_id: String },
    Agent { agent_id: String, businesses: Vec<String> },
}

/// Why a caller was refused: `unauthorized` (no usable identity) or `forbidden`.
#[derive(Debug)]
pub struct Denied(pub String);

impl Caller {
    /// Resolve the caller from verified JWT claims (JSON object text).
    pub fn from_claims(claims: &str) -> Result<Caller, Denied> {
        let claims: Value =
            serde_json::from_str(claims).map_err(|_| Denied("token claims are not an object".into()))?;
        if let Some(visitor_id) = claims.get(VISITOR_CLAIM).and_then(Value::as_str) {
            let text = |k: &str| claims.get(k).and_then(Value::as_str).map(str::to_string);
            return match (text(SESSION_CLAIM), text("business_id")) {
                (Some(session_id), Some(business_id)) => {
                    Ok(Caller::Visitor { visitor_id: visitor_id.to_string(), session_id, business_id })
                }
                _ => Err(Denied("visitor token lacks its session".into())),
            };
        }
        let user_id = match claims.get("user_id").or_else(|| claims.get("sub")) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => return Err(Denied("token has no user_id".into())),
        };
        let rows = store::query(
            "SELECT a.id, m.business_id FROM agents a JOIN agent_memberships m ON m.agent_id = a.id \
             WHERE a.user_id = $1 ORDER BY m.business_id",
            &[SqlValue::Text(user_id.clone())],
        )
        .map_err(|e| Denied(format!("agent lookup failed: {e}")))?;
        let mut agent_id = None;
        let mut businesses = Vec::new();
        for r in &rows {
            if let (Some(a), Some(b)) = (r.first().and_then(store::text), r.get(1).and_then(store::text)) {
                agent_id = Some(a.to_string());
                if !businesses.iter().any(|x| x == b) {
                    businesses.push(b.to_string());
                }
            }
        }
        match agent_id {
            Some(agent_id) => Ok(Caller::Agent { agent_id, businesses }),
            None => Err(Denied(format!("user {user_id} is not an agent of any business"))),
        }
    }

    /// May this caller see and speak in `session` of `business_id`?
    pub fn may_access(&self, session_id: &str, business_id: &str) -> bool {
        match self {
            Caller::Visitor { session_id: s, business_id: b, .. } => s == session_id && b == business_id,
            Caller::Agent { businesses, .. } => businesses.iter().any(|b| b == business_id),
        }
    }

    /// The `sender_id` of this caller's messages: the visitor id or the agent id.
    pub fn sender_id(&self) -> &str {
        match self {
            Caller::Visitor { visitor_id, .. } => visitor_id,
            Caller::Agent { agent_id, .. } => agent_id,
        }
    }

    /// `visitor` or `agent`.
    pub fn role(&self) -> &'static str {
        match self {
            Caller::Visitor { .. } => "visitor",
            Caller::Agent { .. } => "agent",
        }
    }
}

/// Claims of a visitor token for `visitor_id` in `session_id` of `business_id`.
pub fn visitor_claims(visitor_id: &str, session_id: &str, business_id: &str) -> Value {
    json!({
        "sub": format!("chat-visitor:{visitor_id}"),
        VISITOR_CLAIM: visitor_id,
        SESSION_CLAIM: session_id,
        "business_id": business_id,
    })
}
