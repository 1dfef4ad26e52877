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

/// `[plugins.signaling.config]` (config/gatewayd.toml documents each key; the bounds are in
/// docs/protocols/signaling.md "Quotas and bounds").
#[derive(Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields, default)]
struct Config {
    /// How long an invite may ring before both sides get `call.timeout`, in seconds.
    invite_timeout_secs: u32,
    /// Longest id a client sends (`guest_id`, `business_id`, `department_id` in the URL;
    /// `business_id`, `room_id`, `to_guest_id`, `to_agent_id` in messages), bytes.
    max_id_bytes: usize,
    /// Longest `caller_display`, bytes.
    max_display_bytes: usize,
    /// Invites one connection may have pending (ringing) at once.
    max_pending_invites_per_connection: usize,
    /// Invites one guest (a `guest_id` in a business, all its connections together) may have
    /// pending at once.
    max_pending_invites_per_guest: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            invite_timeout_secs: 30,
            max_id_bytes: 128,
            max_display_bytes: 256,
            max_pending_invites_per_connection: 10,
            max_pending_invites_per_guest: 5,
        }
    }
}

impl Config {
    /// The config table, decoded and checked once per instance (a reload with a changed table
    /// builds new instances).
    fn load() -> Result<Config, String> {
        static CACHED: std::sync::OnceLock<Result<Config, String>> = std::sync::OnceLock::new();
        CACHED
            .get_or_init(|| {
                let c: Config = gatewayd_plugin::config::load()?;
                let bounds = [
                    c.max_id_bytes,
                    c.max_display_bytes,
                    c.max_pending_invites_per_connection,
                    c.max_pending_invites_per_guest,
                ];
                if c.invite_timeout_secs == 0 || bounds.contains(&0) {
                    return Err("signaling config: invite_timeout_secs and the max_* bounds must be > 0".into());
                }
                Ok(c)
            })
            .clone()
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
        Config::load().map(|_| ())
    }

    fn on_open(info: ConnectInfo) {
        let max_id_bytes = Config::load().unwrap_or_default().max_id_bytes;
        match identity::resolve(&info, max_id_bytes) {
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
        let config = Config::load().unwrap_or_default();
        let parsed = protocol::parse(&text)
            .and_then(|m| protocol::check_bounds(&m, config.max_id_bytes, config.max_display_bytes).map(|()| m));
        let result = match parsed {
            Ok(Inbound::Ping) => {
                conn::send_json(id, &json!({"type": "pong"}));
                Ok(())
            }
            Ok(Inbound::Invite { to, business_id, room_id, caller_display }) => {
                invite(id, &mut me, &config, to, business_id, room_id, caller_display)
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
///
/// Caps (`too_many_invites`): `max_pending_invites_per_connection` (exact: a connection's events
/// run one at a time, and it alone adds to its list) and, for a guest, the per-guest cap across
/// all its connections (a list in kv, changed by compare-and-swap). Inviting the same target to
/// the same room again re-arms that invite and counts once.
fn invite(
    id: ConnectionId,
    me: &mut Identity,
    config: &Config,
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
    let timeout_ms = config.invite_timeout_secs.saturating_mul(1000);
    // The kv entry outlives the timer a little so the timer always finds it.
    let lifetime_ms = timeout_ms.saturating_add(60_000);
    let already_pending = kv::get(&key).is_some();
    me.pending.retain(|k| kv::get(k).is_some());
    if !me.pending.contains(&key) && me.pending.len() >= config.max_pending_invites_per_connection {
        let cap = config.max_pending_invites_per_connection;
        return Err(ErrorMsg::new(
            "too_many_invites",
            format!("this connection already has {cap} pending invites; wait for an answer or the timeout"),
        ));
    }
    let pending = PendingInvite {
        business_id: business_id.clone(),
        room_id: room_id.clone(),
        caller: caller.clone(),
        target: target.clone(),
    };
    kv::put_json(&key, &pending, Some(lifetime_ms));
    if let (Endpoint::Guest(guest_id), false) = (&caller, already_pending)
        && let Err(e) = count_guest_invite(&business_id, guest_id, &key, config, lifetime_ms)
    {
        kv::take(&key);
        return Err(e);
    }
    if !me.pending.contains(&key) {
        me.pending.push(key.clone());
    }
    session::save(&*me);
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

/// Add the invite `key` to the pending list of a guest (all its connections), unless the
/// guest already has `max_pending_invites_per_guest` live ones. Entries whose invite is gone
/// (answered, expired, withdrawn) are dropped first. The list is changed by compare-and-swap,
/// so two connections of one guest cannot both take the last place.
fn count_guest_invite(
    business_id: &str,
    guest_id: &str,
    key: &str,
    config: &Config,
    lifetime_ms: u32,
) -> Result<(), ErrorMsg> {
    let cap = config.max_pending_invites_per_guest;
    let list_key = format!("pending-guest/{business_id}/{guest_id}");
    let outcome = kv::update(&list_key, Some(lifetime_ms), |current| {
        let mut keys: Vec<String> = current.and_then(|v| serde_json::from_str(v).ok()).unwrap_or_default();
        keys.retain(|k| k == key || kv::get(k).is_some());
        if !keys.iter().any(|k| k == key) {
            if keys.len() >= cap {
                return (current.map(str::to_string), false);
            }
            keys.push(key.to_string());
        }
        (serde_json::to_string(&keys).ok(), true)
    });
    match outcome {
        Some(true) => Ok(()),
        Some(false) => Err(ErrorMsg::new(
            "too_many_invites",
            format!("guest {guest_id} already has {cap} pending invites; wait for an answer or the timeout"),
        )),
        None => Err(ErrorMsg::new("too_many_invites", "this guest's invites are changing too fast; try again")),
    }
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
