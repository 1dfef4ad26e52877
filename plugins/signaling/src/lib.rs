//! The signaling protocol (`shared/specs/signaling.md`): guest/agent call invitations scoped by
//! business and department.
//!
//! Routing is by address: a guest connection is bound to `guest/<business>/<guest_id>`, an agent
//! connection to `agent/<business>/<agent_id>`. Because the business is part of every address,
//! no message can reach another business. Pending invites live in the host's key/value state
//! under `invite/<business>/<room>/<caller>/<target>`, with a timer that expires them.
//!
//! Where the spec is silent this plugin answers as `docs/protocols/signaling.md` documents.

mod identity;
mod protocol;

use gatewayd_plugin::{ConnectInfo, ConnectionId, Protocol, conn, kv, session, timers};
use identity::{Identity, Role};
use protocol::{ErrorMsg, Inbound, Party};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// `[plugins.signaling.config]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Config {
    /// How long an invite may ring before both sides get `call.timeout`, in seconds.
    invite_timeout_secs: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config { invite_timeout_secs: 30 }
    }
}

/// A pending invite, stored in kv until answered or expired.
#[derive(Serialize, Deserialize)]
struct PendingInvite {
    business_id: String,
    room_id: String,
    caller: Endpoint,
    target: Endpoint,
}

/// One side of a call: a guest id or an agent id within the invite's business.
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
#[serde(tag = "role", content = "id", rename_all = "lowercase")]
enum Endpoint {
    Guest(String),
    Agent(String),
}

impl Endpoint {
    fn address(&self, business: &str) -> String {
        match self {
            Endpoint::Guest(id) => identity::guest_address(business, id),
            Endpoint::Agent(id) => identity::agent_address(business, id),
        }
    }
    fn key_part(&self) -> String {
        match self {
            Endpoint::Guest(id) => format!("guest:{id}"),
            Endpoint::Agent(id) => format!("agent:{id}"),
        }
    }
    /// The `to_*_id` field naming this endpoint.
    fn recipient_field(&self) -> (&'static str, &str) {
        match self {
            Endpoint::Guest(id) => ("to_guest_id", id),
            Endpoint::Agent(id) => ("to_agent_id", id),
        }
    }
    /// The `from_*_id` field naming this endpoint.
    fn sender_field(&self) -> (&'static str, &str) {
        match self {
            Endpoint::Guest(id) => ("from_guest_id", id),
            Endpoint::Agent(id) => ("from_agent_id", id),
        }
    }
}

fn invite_key(business: &str, room: &str, caller: &Endpoint, target: &Endpoint) -> String {
    format!("invite/{business}/{room}/{}/{}", caller.key_part(), target.key_part())
}

struct Signaling;

impl Protocol for Signaling {
    fn init() -> Result<(), String> {
        gatewayd_plugin::config::load::<Config>().map(|_| ())
    }

    fn on_open(info: ConnectInfo) {
        match identity::resolve(&info) {
            Ok(me) => {
                me.bind(info.id);
                conn::send_json(info.id, &me.connection_established());
                session::save(&me);
            }
            Err(refusal) => conn::close(info.id, refusal.code, &refusal.reason),
        }
    }

    fn on_text(id: ConnectionId, text: String) {
        let Some(mut me) = session::load::<Identity>() else {
            // No identity means on_open refused the connection; it is closing.
            return;
        };
        let result = match protocol::parse(&text) {
            Ok(Inbound::Ping) => {
                conn::send_json(id, &json!({"type": "pong"}));
                Ok(())
            }
            Ok(Inbound::Invite { to, business_id, room_id, caller_display }) => {
                invite(id, &mut me, to, business_id, room_id, caller_display)
            }
            Ok(Inbound::Response { to, business_id, room_id, accept }) => {
                respond(id, &me, to, business_id, room_id, accept)
            }
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            conn::send_json(id, &e);
        }
    }

    fn on_timer(key: String, _payload: String) {
        // An invite rang for `invite_timeout_secs` without an answer.
        let Some(inv) = kv::take_json::<PendingInvite>(&key) else { return };
        let (to_name, to_id) = inv.target.recipient_field();
        conn::send_json_to(
            &inv.caller.address(&inv.business_id),
            &json!({"type": "call.timeout", to_name: to_id, "business_id": inv.business_id, "room_id": inv.room_id}),
        );
        let (from_name, from_id) = inv.caller.sender_field();
        conn::send_json_to(
            &inv.target.address(&inv.business_id),
            &json!({"type": "call.timeout", from_name: from_id, "business_id": inv.business_id, "room_id": inv.room_id}),
        );
    }
}

/// `call.invite` (spec sections 2-4): acknowledge to the caller, then ring the target.
///
/// Order matters: the pending invite is recorded and `invite.sent` queued *before* the ring, so
/// a target that answers at once can never make `call.accepted` overtake `invite.sent`.
fn invite(
    id: ConnectionId,
    me: &mut Identity,
    to: Party,
    business_id: String,
    room_id: String,
    caller_display: Option<String>,
) -> Result<(), ErrorMsg> {
    me.check_business(id, &business_id)?;
    let caller = me.endpoint();
    let target = match (&me.role, to) {
        (Role::Agent { .. }, Party::Guest(guest_id)) => Endpoint::Guest(guest_id),
        (Role::Guest { .. }, Party::Agent(named)) => online_agent(&business_id, &named),
        (Role::Agent { .. }, Party::Agent(_)) => {
            return Err(ErrorMsg::new("invalid_target", "agents invite guests: use `to_guest_id`"));
        }
        (Role::Guest { .. }, Party::Guest(_)) => {
            return Err(ErrorMsg::new("invalid_target", "guests invite agents: use `to_agent_id`"));
        }
    };
    let target_address = target.address(&business_id);
    let offline = || {
        let (name, target_id) = target.recipient_field();
        ErrorMsg::new("target_offline", format!("`{name}` {target_id} is not connected"))
    };
    if conn::count(&target_address) == 0 {
        return Err(offline());
    }
    let key = invite_key(&business_id, &room_id, &caller, &target);
    let timeout_ms = invite_timeout_ms();
    let pending = PendingInvite {
        business_id: business_id.clone(),
        room_id: room_id.clone(),
        caller: caller.clone(),
        target: target.clone(),
    };
    // The kv entry outlives the timer a little so the timer always finds it.
    kv::put_json(&key, &pending, Some(timeout_ms.saturating_add(60_000)));
    timers::set(&key, timeout_ms, "", None);
    let (to_name, to_id) = target.recipient_field();
    conn::send_json(
        id,
        &json!({"type": "invite.sent", to_name: to_id, "business_id": business_id, "room_id": room_id}),
    );

    let (from_name, from_id) = caller.sender_field();
    let mut ring = json!({"type": "call.ring", from_name: from_id, "business_id": business_id, "room_id": room_id});
    if let Some(display) = &caller_display {
        ring["caller_display"] = json!(display);
    }
    if conn::send_json_to(&target_address, &ring) == 0 {
        // The target left between the presence check and the ring.
        kv::take(&key);
        timers::cancel(&key);
        return Err(offline());
    }
    Ok(())
}

/// The agent a guest names by agent id or, as the spec's own example does, by user id: the
/// agent id if someone is connected under it, else the agent of that user id, if known.
fn online_agent(business_id: &str, named: &str) -> Endpoint {
    let by_agent_id = Endpoint::Agent(named.to_string());
    if conn::count(&by_agent_id.address(business_id)) > 0 {
        return by_agent_id;
    }
    match identity::agent_for_user(business_id, named) {
        Some(agent_id) => Endpoint::Agent(agent_id),
        None => by_agent_id,
    }
}

/// `call.response` (spec sections 5-7): must answer a pending invite of the same business and
/// room from the party it names.
fn respond(
    id: ConnectionId,
    me: &Identity,
    to: Party,
    business_id: String,
    room_id: String,
    accept: bool,
) -> Result<(), ErrorMsg> {
    if me.business_id.as_deref() != Some(business_id.as_str()) {
        return Err(ErrorMsg::new(
            "wrong_business",
            format!("business_id {business_id} is not this connection's business"),
        ));
    }
    let target = me.endpoint();
    let candidates: Vec<Endpoint> = match (&me.role, to) {
        (Role::Agent { .. }, Party::Guest(g)) => vec![Endpoint::Guest(g)],
        (Role::Guest { .. }, Party::Agent(a)) => {
            let mut v = vec![Endpoint::Agent(a.clone())];
            if let Some(agent_id) = identity::agent_for_user(&business_id, &a) {
                v.push(Endpoint::Agent(agent_id));
            }
            v
        }
        _ => return Err(ErrorMsg::new("invalid_target", "a response goes to the party that invited you")),
    };
    let found = candidates.into_iter().find_map(|caller| {
        let key = invite_key(&business_id, &room_id, &caller, &target);
        kv::take_json::<PendingInvite>(&key).map(|inv| (key, inv))
    });
    let Some((key, inv)) = found else {
        return Err(ErrorMsg::new("no_pending_invite", format!("no pending invite in room {room_id} from that party")));
    };
    timers::cancel(&key);
    let (from_name, from_id) = target.sender_field();
    let outcome = json!({
        "type": if accept { "call.accepted" } else { "call.declined" },
        from_name: from_id,
        "business_id": business_id,
        "room_id": room_id,
    });
    if conn::send_json_to(&inv.caller.address(&business_id), &outcome) == 0 {
        let (name, caller_id) = inv.caller.recipient_field();
        return Err(ErrorMsg::new("target_offline", format!("`{name}` {caller_id} is no longer connected")));
    }
    let (to_name, to_id) = inv.caller.recipient_field();
    conn::send_json(
        id,
        &json!({"type": "response.sent", to_name: to_id, "business_id": business_id, "room_id": room_id, "accept": accept}),
    );
    Ok(())
}

fn invite_timeout_ms() -> u32 {
    let secs = gatewayd_plugin::config::load::<Config>().map(|c| c.invite_timeout_secs).unwrap_or(30);
    secs.saturating_mul(1000)
}

gatewayd_plugin::protocol_plugin!(Signaling);

/// The decoder of client bytes, for the fuzz targets (`fuzz-targets/`); not an API.
#[doc(hidden)]
pub mod fuzzing {
    /// Parse one client text frame as `on_text` does and serialize the error it would send.
    /// Returns whether the frame parsed.
    pub fn message(text: &str) -> bool {
        match crate::protocol::parse(text) {
            Ok(_) => true,
            Err(e) => {
                let _ = serde_json::to_string(&e);
                false
            }
        }
    }
}
