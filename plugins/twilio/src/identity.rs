//! Who is on the dashboard socket or calling the REST endpoints: an agent, from the verified
//! JWT's `user_id` (or `sub`) -> `agents.user_id` -> `agent_memberships` (the daemon's
//! tenancy tables, read-only), as plugins/chat resolves agents. telephony.md section 7
//! "Authorization": an agent sees the calls of the businesses it is a member of, nothing else.

use gatewayd_plugin::{SqlValue, store};
use serde_json::Value;

/// An agent and the businesses whose calls it may see and act on.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Agent {
    pub agent_id: String,
    /// `agents.display_name` (may be empty).
    pub display_name: String,
    pub businesses: Vec<String>,
}

/// Why claims did not resolve to an agent.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Denied {
    /// No `user_id`/`sub` claim, or the user is no agent of any business.
    NotAnAgent(String),
    /// The lookup failed (the store's error).
    Lookup(String),
}

impl std::fmt::Display for Denied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Denied::NotAnAgent(why) => write!(f, "not an agent: {why}"),
            Denied::Lookup(e) => write!(f, "agent lookup failed: {e}"),
        }
    }
}

/// The user a token names: claim `user_id`, else `sub` (a string or a number).
pub(crate) fn user_id(claims: &Value) -> Option<String> {
    match claims.get("user_id").or_else(|| claims.get("sub"))? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The agent of `rows` (`agents.id`, `agents.display_name`, `agent_memberships.business_id`
/// per membership), businesses without repeats, in order.
fn agent_from_rows(rows: &[Vec<SqlValue>]) -> Option<Agent> {
    let mut agent: Option<Agent> = None;
    for r in rows {
        let (Some(id), Some(business)) = (r.first().and_then(store::text), r.get(2).and_then(store::text)) else {
            continue;
        };
        let a = agent.get_or_insert_with(|| Agent {
            agent_id: id.to_string(),
            display_name: r.get(1).and_then(store::text).unwrap_or_default().to_string(),
            businesses: Vec::new(),
        });
        if !a.businesses.iter().any(|b| b == business) {
            a.businesses.push(business.to_string());
        }
    }
    agent
}

impl Agent {
    /// Resolve verified JWT claims (a JSON object's text) to an agent.
    pub(crate) fn from_claims(claims: &str) -> Result<Agent, Denied> {
        let claims: Value =
            serde_json::from_str(claims).map_err(|_| Denied::NotAnAgent("token claims are not an object".into()))?;
        let user = user_id(&claims).ok_or_else(|| Denied::NotAnAgent("the token has no user_id".into()))?;
        let rows = store::query(
            "SELECT a.id, a.display_name, m.business_id FROM agents a JOIN agent_memberships m ON m.agent_id = a.id \
             WHERE a.user_id = $1 ORDER BY m.business_id",
            &[SqlValue::Text(user.clone())],
        )
        .map_err(Denied::Lookup)?;
        agent_from_rows(&rows).ok_or_else(|| Denied::NotAnAgent(format!("user {user} is not an agent of any business")))
    }

    /// May this agent see and act on calls of `business_id`?
    pub(crate) fn may_access(&self, business_id: &str) -> bool {
        self.businesses.iter().any(|b| b == business_id)
    }

    /// `sender_name` of the agent's messages: its display name, else its id.
    pub(crate) fn sender_name(&self) -> &str {
        if self.display_name.trim().is_empty() { &self.agent_id } else { &self.display_name }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_user_is_user_id_else_sub() {
        assert_eq!(user_id(&json!({"user_id": "u1", "sub": "s"})).as_deref(), Some("u1"));
        assert_eq!(user_id(&json!({"sub": 42})).as_deref(), Some("42"));
        assert_eq!(user_id(&json!({"sub": ""})), None);
        assert_eq!(user_id(&json!({"name": "x"})), None);
    }

    #[test]
    fn memberships_collapse_into_one_agent_with_its_businesses() {
        let t = |s: &str| SqlValue::Text(s.into());
        let rows =
            vec![vec![t("a1"), t(""), t("acme")], vec![t("a1"), t(""), t("acme")], vec![t("a1"), t(""), t("globex")]];
        let agent = agent_from_rows(&rows).unwrap();
        assert_eq!(agent.businesses, ["acme", "globex"]);
        assert_eq!(agent.sender_name(), "a1");
        assert!(agent.may_access("globex") && !agent.may_access("initech"));
        assert_eq!(agent_from_rows(&[]), None);
        let named = Agent { display_name: "Ann".into(), ..agent };
        assert_eq!(named.sender_name(), "Ann");
    }
}
