//! rooms.md end to end: the real daemon, a real HTTP client for the REST API and the harness's
//! real WebSocket client, on SQLite and on the local PostgreSQL server.
//!
//! Rooms belong to a business: every test daemon gets the tenants of [`TENANTS`] (business
//! `acme` with most agents, `globex` with `outsider`, `both` in the two), imported with the
//! `gatewayd tenant import` CLI, and every client is one of those agents.

use gatewayd_e2e::*;
use serde_json::{Value, json};
use std::time::Duration;

const ACME: &str = "acme";
const GLOBEX: &str = "globex";

/// Agents (`agents.id`, which is the `agentId` they join as) and their token's `user_id`.
/// All are members of `acme` except `outsider` (`globex` only), `both` (both) and `nobody`
/// (no membership).
const AGENTS: &[(&str, u64)] = &[
    ("manager", 900),
    ("alpha", 901),
    ("beta", 902),
    ("gamma", 903),
    ("agent-alpha-001", 904),
    ("agent-beta-001", 905),
    ("agent-gamma", 906),
    ("late", 907),
    ("outsider", 950),
    ("both", 960),
    ("nobody", 970),
];

/// Agents `rush-0` .. `rush-9` (users 910 ..), all of `acme`.
const RUSH: usize = 10;

/// The tenants every test daemon starts with, as `gatewayd tenant import` reads them.
fn tenants() -> Value {
    let mut agents: Vec<(String, u64)> = AGENTS.iter().map(|(a, u)| (a.to_string(), *u)).collect();
    agents.extend((0..RUSH).map(|i| (format!("rush-{i}"), 910 + i as u64)));
    let mut memberships = Vec::new();
    for (agent, _) in &agents {
        let businesses: &[&str] = match agent.as_str() {
            "outsider" => &[GLOBEX],
            "both" => &[ACME, GLOBEX],
            "nobody" => &[],
            _ => &[ACME],
        };
        for b in businesses {
            memberships.push(json!({"agent_id": agent, "business_id": b}));
        }
    }
    json!({
        "businesses": [{"id": ACME, "name": "Acme"}, {"id": GLOBEX, "name": "Globex"}],
        "agents": agents.iter().map(|(a, u)| json!({"id": a, "user_id": u})).collect::<Vec<_>>(),
        "memberships": memberships,
    })
}

/// The token `user_id` of agent `agent`.
fn user_of(agent: &str) -> u64 {
    if let Some(i) = agent.strip_prefix("rush-") {
        return 910 + i.parse::<u64>().unwrap();
    }
    AGENTS.iter().find(|(a, _)| *a == agent).unwrap_or_else(|| panic!("no test agent {agent}")).1
}

/// A valid token of agent `agent`.
fn token_of(agent: &str) -> String {
    agent_token(json!(user_of(agent)))
}

/// A daemon with the given `[plugins.rooms.config]` body and the tenants of [`tenants`].
async fn daemon(db: Db, rooms_config: &str) -> Daemon {
    let d = Daemon::start(DaemonOptions { db, rooms_config: rooms_config.into(), ..Default::default() })
        .await
        .expect("daemon starts");
    import_tenants(&d);
    d
}

fn import_tenants(d: &Daemon) {
    let file = d.dir.path().join("tenants.json");
    std::fs::write(&file, tenants().to_string()).unwrap();
    d.cli(&["tenant", "import", file.to_str().unwrap()]).expect("tenant import");
}

fn manager() -> String {
    token_of("manager")
}

/// A REST call as `manager` (an agent of `acme`).
async fn api(d: &Daemon, method: &str, path: &str, body: Option<Value>) -> HttpAnswer {
    api_as(d, "manager", method, path, body).await
}

/// A REST call as agent `agent`.
async fn api_as(d: &Daemon, agent: &str, method: &str, path: &str, body: Option<Value>) -> HttpAnswer {
    http_request(d.rooms_addr, method, &format!("/api/v1{path}"), Some(&token_of(agent)), body.as_ref())
        .await
        .expect("http request")
}

async fn create_room(d: &Daemon, body: Value) -> Value {
    let r = api(d, "POST", "/rooms", Some(body)).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    r.body
}

async fn room_status(d: &Daemon, room: &str) -> String {
    let r = api(d, "GET", &format!("/rooms/{room}"), None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.body["status"].as_str().unwrap().to_string()
}

async fn participants(d: &Daemon, room: &str) -> Vec<Value> {
    let r = api(d, "GET", &format!("/rooms/{room}/participants"), None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.body["data"].as_array().unwrap().clone()
}

/// A WebSocket with no token.
async fn anonymous(d: &Daemon) -> Client {
    Client::connect(&format!("ws://{}/ws", d.rooms_addr)).await.expect("ws connects")
}

/// A WebSocket authenticated at the handshake (`?token=`) as agent `agent`.
async fn ws(d: &Daemon, agent: &str) -> Client {
    Client::connect(&format!("ws://{}/ws?token={}", d.rooms_addr, token_of(agent))).await.expect("ws connects")
}

/// `room:join` and its `room:joined`.
async fn join(c: &mut Client, room: &str, agent: &str) -> Value {
    c.send_json(&json!({"type": "room:join", "roomId": room, "agentId": agent, "metadata": {"display_name": agent}}))
        .await
        .unwrap();
    let joined = c.recv_json().await.unwrap();
    assert_eq!(joined["type"], "room:joined", "{joined}");
    joined
}

/// Send `msg` and expect a `room:error` with `code`.
async fn expect_error(c: &mut Client, msg: Value, code: &str) {
    c.send_json(&msg).await.unwrap();
    let e = c.recv_json().await.unwrap();
    assert_eq!(e["type"], "room:error", "{e}");
    assert_eq!(e["code"], code, "{e}");
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{e}");
}

fn assert_error(r: &HttpAnswer, status: u16, code: &str) {
    assert_eq!(r.status, status, "{:?}", r.body);
    assert_eq!(r.body["error"], code, "{:?}", r.body);
    assert!(r.body["message"].as_str().is_some_and(|m| !m.is_empty()), "{:?}", r.body);
}

/// A room with WebSocket participants `alpha` (a) and `beta` (b).
struct Pair {
    room: String,
    a: Client,
    pa: String,
    /// alpha's session id (from `room:joined`).
    sa: String,
    b: Client,
    pb: String,
}

fn field(v: &Value, name: &str) -> String {
    v[name].as_str().unwrap_or_else(|| panic!("no `{name}` in {v}")).to_string()
}

/// `alpha` and `beta` join a fresh room over WebSocket.
async fn two_in_room(d: &Daemon, settings: Value) -> Pair {
    let room = field(&create_room(d, json!({"name": "pair", "settings": settings})).await, "id");
    let mut a = ws(d, "alpha").await;
    let ja = join(&mut a, &room, "alpha").await;
    assert_eq!(ja["status"], "connecting");
    assert_eq!(ja["participants"], json!([]));
    let (pa, sa) = (field(&ja, "participantId"), field(&ja, "sessionId"));
    let mut b = ws(d, "beta").await;
    let jb = join(&mut b, &room, "beta").await;
    let pb = field(&jb, "participantId");
    assert_eq!(
        jb["participants"],
        json!([{"id": pa, "agentId": "alpha", "display_name": "alpha", "status": "connecting"}])
    );
    assert_eq!(
        a.recv_json().await.unwrap(),
        json!({"type": "room:participant-joined", "participant": {"id": pb, "agentId": "beta", "display_name": "beta", "status": "connecting"}})
    );
    Pair { room, a, pa, sa, b, pb }
}

/// beta offers to alpha, alpha answers: `newly_connected` (of alpha, beta, in that order) move
/// from `connecting` to `connected`, and the room hears `voice:stream-started` for each.
async fn negotiate(a: &mut Client, pa: &str, b: &mut Client, pb: &str, room: &str, newly_connected: &[&str]) {
    let offer = json!({"type": "offer", "sdp": "v=0\r\no=- 1 0 IN IP4 0.0.0.0\r\n"});
    relay((b, pb), a, room, Some(pa), "offer", &offer).await;
    let answer = json!({"type": "answer", "sdp": "v=0\r\no=- 2 0 IN IP4 0.0.0.0\r\n"});
    relay((a, pa), b, room, Some(pb), "answer", &answer).await;
    // The answer completes the negotiation: sender first, then the receiver.
    for c in [a, b] {
        for p in newly_connected {
            assert_eq!(c.recv_json().await.unwrap(), json!({"type": "voice:stream-started", "participantId": p}));
        }
    }
}

/// `from` (client, participant id) sends `webrtc:<kind>` with `payload` to `target` (none:
/// everyone else); `to` receives it with `fromParticipantId`.
async fn relay(
    from: (&mut Client, &str),
    to: &mut Client,
    room: &str,
    target: Option<&str>,
    kind: &str,
    payload: &Value,
) {
    let field = if kind == "ice-candidate" { "candidate" } else { kind };
    let mut msg = json!({"type": format!("webrtc:{kind}"), "roomId": room, field: payload});
    if let Some(t) = target {
        msg["participantId"] = json!(t);
    }
    from.0.send_json(&msg).await.unwrap();
    assert_eq!(
        to.recv_json().await.unwrap(),
        json!({"type": format!("webrtc:{kind}"), "fromParticipantId": from.1, "roomId": room, field: payload})
    );
}

async fn rest_rooms(db: Db) {
    let d = daemon(db, "").await;
    let settings = json!({"max_participants": 2, "voice": {"codec": "opus", "bitrate": 64000}});
    let room = create_room(&d, json!({"name": "Agent Conversation", "settings": settings})).await;
    let id = room["id"].as_str().unwrap();
    assert_eq!(uuid::Uuid::parse_str(id).unwrap().get_version_num(), 4);
    assert_eq!(room["name"], "Agent Conversation");
    assert_eq!(room["status"], "created");
    assert_eq!(room["settings"], settings);
    assert_eq!(room["created_at"], room["updated_at"]);
    assert!(room["created_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(room["business_id"], ACME, "added: the creating agent's business");
    assert_eq!(room.as_object().unwrap().len(), 7, "{room}");

    let got = api(&d, "GET", &format!("/rooms/{id}"), None).await;
    assert_eq!(got.status, 200);
    let mut expected = room.clone();
    expected["participants_count"] = json!(0);
    assert_eq!(got.body, expected);

    // Update: name replaced, settings merged (RFC 7386: null removes a key).
    let patch =
        json!({"name": "Updated Room Name", "settings": {"recording": {"enabled": true}, "voice": {"bitrate": null}}});
    let up = api(&d, "PATCH", &format!("/rooms/{id}"), Some(patch)).await;
    assert_eq!(up.status, 200, "{:?}", up.body);
    assert_eq!(up.body["name"], "Updated Room Name");
    assert_eq!(
        up.body["settings"],
        json!({"max_participants": 2, "voice": {"codec": "opus"}, "recording": {"enabled": true}})
    );
    assert_eq!(up.body["participants_count"], 0);
    assert_eq!(up.body["created_at"], room["created_at"]);
    assert!(up.body["updated_at"].as_str().unwrap() >= room["updated_at"].as_str().unwrap());
    assert_eq!(api(&d, "GET", &format!("/rooms/{id}"), None).await.body, up.body);

    // List: newest first, status filter, limit/offset with total.
    let second = create_room(&d, json!({"name": "second"})).await;
    assert_eq!(second["settings"], json!({}));
    let third = create_room(&d, json!({"name": "third", "settings": {}})).await;
    let all = api(&d, "GET", "/rooms?limit=2", None).await;
    assert_eq!(all.status, 200);
    assert_eq!(all.body["pagination"], json!({"limit": 2, "offset": 0, "total": 3}));
    let ids: Vec<&str> = all.body["data"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [third["id"].as_str().unwrap(), second["id"].as_str().unwrap()]);
    assert_eq!(
        all.body["data"][0],
        json!({"id": third["id"], "name": "third", "status": "created", "participants_count": 0, "created_at": third["created_at"]})
    );
    let page2 = api(&d, "GET", "/rooms?limit=2&offset=2", None).await;
    assert_eq!(page2.body["pagination"], json!({"limit": 2, "offset": 2, "total": 3}));
    assert_eq!(page2.body["data"].as_array().unwrap().len(), 1);
    assert_eq!(page2.body["data"][0]["id"], id);
    let default_page = api(&d, "GET", "/rooms", None).await;
    assert_eq!(default_page.body["pagination"], json!({"limit": 20, "offset": 0, "total": 3}));
    let created = api(&d, "GET", "/rooms?status=created&limit=10", None).await;
    assert_eq!(created.body["pagination"]["total"], 3);
    let active = api(&d, "GET", "/rooms?status=active&limit=10", None).await;
    assert_eq!(active.body, json!({"data": [], "pagination": {"limit": 10, "offset": 0, "total": 0}}));

    // Delete.
    let del = api(&d, "DELETE", &format!("/rooms/{id}"), None).await;
    assert_eq!((del.status, del.body), (204, Value::Null));
    assert_error(&api(&d, "GET", &format!("/rooms/{id}"), None).await, 404, "ROOM_NOT_FOUND");
    assert_error(&api(&d, "DELETE", &format!("/rooms/{id}"), None).await, 404, "ROOM_NOT_FOUND");
    assert_error(&api(&d, "PATCH", &format!("/rooms/{id}"), Some(json!({"name": "x"}))).await, 404, "ROOM_NOT_FOUND");
    assert_eq!(api(&d, "GET", "/rooms", None).await.body["pagination"]["total"], 2);
}

async fn rest_bad_requests(db: Db) {
    let d = daemon(db, "").await;
    let bad_bodies = [
        json!({}),
        json!({"name": ""}),
        json!({"name": 5}),
        json!({"name": "r", "settings": []}),
        json!({"name": "r", "settings": {"max_participants": 0}}),
        json!({"name": "r", "settings": {"max_participants": "two"}}),
        json!(["not", "an", "object"]),
    ];
    for body in bad_bodies {
        assert_error(&api(&d, "POST", "/rooms", Some(body)).await, 400, "INVALID_REQUEST");
    }
    let raw = http_request(d.rooms_addr, "POST", "/api/v1/rooms", Some(&manager()), None).await.unwrap();
    assert_error(&raw, 400, "INVALID_REQUEST");
    for q in ["status=open", "limit=-1", "limit=101", "limit=ten", "offset=-3"] {
        assert_error(&api(&d, "GET", &format!("/rooms?{q}"), None).await, 400, "INVALID_REQUEST");
    }
    let room = create_room(&d, json!({"name": "r"})).await;
    let id = room["id"].as_str().unwrap();
    assert_error(
        &api(&d, "PATCH", &format!("/rooms/{id}"), Some(json!({"settings": {"max_participants": -1}}))).await,
        400,
        "INVALID_REQUEST",
    );
    assert_error(
        &api(&d, "PATCH", &format!("/rooms/{id}"), Some(json!({"settings": 3}))).await,
        400,
        "INVALID_REQUEST",
    );
    assert_eq!(api(&d, "GET", &format!("/rooms/{id}"), None).await.body["settings"], json!({}));
    for body in [json!({}), json!({"agent_id": ""}), json!({"agent_id": "a", "metadata": "x"})] {
        assert_error(&api(&d, "POST", &format!("/rooms/{id}/participants"), Some(body)).await, 400, "INVALID_REQUEST");
    }
    assert_error(&api(&d, "GET", "/nothing", None).await, 404, "NOT_FOUND");
    assert_error(&api(&d, "GET", &format!("/rooms/{id}/other"), None).await, 404, "NOT_FOUND");
    assert_error(&api(&d, "PUT", &format!("/rooms/{id}"), None).await, 405, "METHOD_NOT_ALLOWED");
    assert_error(&api(&d, "GET", "/sessions/nope", None).await, 404, "SESSION_NOT_FOUND");
}

async fn rest_needs_an_agent_token(db: Db) {
    let d = daemon(db, "").await;
    let body = json!({"name": "r"});
    let none = http_request(d.rooms_addr, "POST", "/api/v1/rooms", None, Some(&body)).await.unwrap();
    assert_error(&none, 401, "INVALID_TOKEN");
    // Tokens of no agent with a membership: no user claim, an unknown user, an agent of no
    // business, an `agent_id` claim alone (the agent is resolved from `user_id`/`sub` only).
    let exp = jsonwebtoken::get_current_timestamp() + 60;
    for claims in [
        json!({"exp": exp}),
        json!({"sub": "svc", "exp": exp}),
        json!({"user_id": 123456, "exp": exp}),
        json!({"user_id": user_of("nobody"), "exp": exp}),
        json!({"agent_id": "alpha", "exp": exp}),
    ] {
        let r = http_request(d.rooms_addr, "GET", "/api/v1/rooms", Some(&token(&claims)), None).await.unwrap();
        assert_error(&r, 403, "INVALID_TOKEN");
    }
    // `sub` names the user as well as `user_id` does, as a string too.
    let by_sub = token(&json!({"sub": user_of("alpha").to_string(), "exp": exp}));
    let r = http_request(d.rooms_addr, "GET", "/api/v1/rooms", Some(&by_sub), None).await.unwrap();
    assert_eq!(r.status, 200, "{:?}", r.body);
    // A token that is present must be valid: the daemon refuses it before the plugin.
    let forged = token_with(
        &json!({"user_id": 1, "exp": jsonwebtoken::get_current_timestamp() + 60}),
        "another-secret-0123456789",
    );
    let r = http_request(d.rooms_addr, "GET", "/api/v1/rooms", Some(&forged), None).await.unwrap();
    assert_eq!((r.status, r.body["error"].as_str()), (401, Some("token_invalid")));
    let via_query =
        http_request(d.rooms_addr, "GET", &format!("/api/v1/rooms?token={}", manager()), None, None).await.unwrap();
    assert_eq!(via_query.status, 200);
    let created = create_room(&d, json!({"name": "r"})).await;
    let id = created["id"].as_str().unwrap();
    for (method, path) in [
        ("GET", format!("/api/v1/rooms/{id}")),
        ("PATCH", format!("/api/v1/rooms/{id}")),
        ("DELETE", format!("/api/v1/rooms/{id}")),
        ("POST", format!("/api/v1/rooms/{id}/participants")),
        ("GET", format!("/api/v1/rooms/{id}/participants")),
        ("DELETE", format!("/api/v1/rooms/{id}/participants/x")),
        ("GET", "/api/v1/sessions/x".to_string()),
    ] {
        let r = http_request(d.rooms_addr, method, &path, None, Some(&json!({}))).await.unwrap();
        assert_error(&r, 401, "INVALID_TOKEN");
    }
    assert_eq!(room_status(&d, id).await, "created");
}

async fn rest_participants(db: Db) {
    let d = daemon(db, "").await;
    let room = create_room(&d, json!({"name": "r", "settings": {"max_participants": 2}})).await;
    let id = room["id"].as_str().unwrap();
    let metadata = json!({"display_name": "Agent Alpha", "capabilities": ["opus", "dtmf"]});
    let r = api(
        &d,
        "POST",
        &format!("/rooms/{id}/participants"),
        Some(json!({"agent_id": "agent-alpha-001", "metadata": metadata})),
    )
    .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let alpha = r.body;
    assert_eq!(alpha["room_id"], id);
    assert_eq!(alpha["agent_id"], "agent-alpha-001");
    assert_eq!(alpha["status"], "connecting");
    assert_eq!(alpha["metadata"], metadata);
    assert_eq!(alpha["muted"], false);
    assert!(alpha["joined_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(room_status(&d, id).await, "waiting");

    assert_error(
        &api(&d, "POST", &format!("/rooms/{id}/participants"), Some(json!({"agent_id": "agent-alpha-001"}))).await,
        409,
        "ALREADY_JOINED",
    );
    let beta = api(&d, "POST", &format!("/rooms/{id}/participants"), Some(json!({"agent_id": "agent-beta-001"}))).await;
    assert_eq!(beta.status, 201);
    assert_error(
        &api(&d, "POST", &format!("/rooms/{id}/participants"), Some(json!({"agent_id": "agent-gamma"}))).await,
        409,
        "ROOM_FULL",
    );
    assert_error(
        &api(&d, "POST", "/rooms/no-such-room/participants", Some(json!({"agent_id": "x"}))).await,
        404,
        "ROOM_NOT_FOUND",
    );
    assert_error(&api(&d, "GET", "/rooms/no-such-room/participants", None).await, 404, "ROOM_NOT_FOUND");

    let list = participants(&d, id).await;
    assert_eq!(
        list,
        vec![
            json!({"id": alpha["id"], "agent_id": "agent-alpha-001", "status": "connecting", "display_name": "Agent Alpha", "muted": false, "joined_at": alpha["joined_at"]}),
            json!({"id": beta.body["id"], "agent_id": "agent-beta-001", "status": "connecting", "display_name": null, "muted": false, "joined_at": beta.body["joined_at"]}),
        ]
    );
    assert_eq!(api(&d, "GET", &format!("/rooms/{id}"), None).await.body["participants_count"], 2);

    // Leave.
    let aid = alpha["id"].as_str().unwrap();
    let left = api(&d, "DELETE", &format!("/rooms/{id}/participants/{aid}"), None).await;
    assert_eq!((left.status, left.body), (204, Value::Null));
    assert_error(&api(&d, "DELETE", &format!("/rooms/{id}/participants/{aid}"), None).await, 404, "NOT_IN_ROOM");
    assert_error(&api(&d, "DELETE", "/rooms/no-such-room/participants/x", None).await, 404, "ROOM_NOT_FOUND");
    assert_eq!(participants(&d, id).await.len(), 1);
    // The seat is free again, and the same agent may join anew as a new participant.
    let again =
        api(&d, "POST", &format!("/rooms/{id}/participants"), Some(json!({"agent_id": "agent-alpha-001"}))).await;
    assert_eq!(again.status, 201);
    assert_ne!(again.body["id"], alpha["id"]);

    // Sessions: one per stay, ended with the stay.
    let s = api(&d, "GET", &format!("/sessions/{}", alpha["session_id"].as_str().unwrap()), None).await;
    assert_eq!(s.status, 200);
    assert_eq!(s.body["id"], alpha["session_id"]);
    assert_eq!(s.body["room_id"], id);
    assert_eq!(s.body["participant_id"], alpha["id"]);
    assert_eq!(s.body["start_time"], alpha["joined_at"]);
    assert_eq!(s.body["status"], "completed");
    assert!(s.body["end_time"].as_str().unwrap() >= s.body["start_time"].as_str().unwrap());
    assert_eq!(s.body["duration"], 0);
    assert_eq!(s.body["stats"], Value::Null);
    let live = api(&d, "GET", &format!("/sessions/{}", again.body["session_id"].as_str().unwrap()), None).await;
    assert_eq!((live.body["status"].as_str(), live.body["end_time"].as_str()), (Some("active"), None));

    // The last one leaving closes the room for good.
    for p in participants(&d, id).await {
        let pid = p["id"].as_str().unwrap();
        assert_eq!(api(&d, "DELETE", &format!("/rooms/{id}/participants/{pid}"), None).await.status, 204);
    }
    assert_eq!(room_status(&d, id).await, "closed");
    assert_error(
        &api(&d, "POST", &format!("/rooms/{id}/participants"), Some(json!({"agent_id": "late"}))).await,
        409,
        "ROOM_CLOSED",
    );
    let closed = api(&d, "GET", "/rooms?status=closed", None).await;
    assert_eq!(closed.body["pagination"]["total"], 1);
    assert_eq!(closed.body["data"][0]["participants_count"], 0);
}

async fn ws_flow(db: Db) {
    let d = daemon(db, "").await;
    let Pair { room, mut a, pa, sa: session_a, mut b, pb } = two_in_room(&d, json!({})).await;
    assert_eq!(room_status(&d, &room).await, "waiting");
    let statuses: Vec<Value> = participants(&d, &room).await.iter().map(|p| p["status"].clone()).collect();
    assert_eq!(statuses, [json!("connecting"), json!("connecting")]);

    negotiate(&mut a, &pa, &mut b, &pb, &room, &[&pa, &pb]).await;
    assert_eq!(room_status(&d, &room).await, "active");
    let statuses: Vec<Value> = participants(&d, &room).await.iter().map(|p| p["status"].clone()).collect();
    assert_eq!(statuses, [json!("connected"), json!("connected")]);
    let listed = api(&d, "GET", "/rooms?status=active", None).await;
    assert_eq!(listed.body["data"][0]["participants_count"], 2);

    // ICE: addressed, and to every other participant when none is addressed.
    let cand = json!({"candidate": "candidate:1 1 udp 2113937151 192.168.1.100 54321 typ host", "sdpMid": "audio", "sdpMLineIndex": 0});
    relay((&mut a, &pa), &mut b, &room, Some(&pb), "ice-candidate", &cand).await;
    relay((&mut b, &pb), &mut a, &room, None, "ice-candidate", &cand).await;
    // Naming oneself is the same as naming nobody.
    b.send_json(
        &json!({"type": "webrtc:offer", "roomId": room, "participantId": pb, "offer": {"type": "offer", "sdp": "x"}}),
    )
    .await
    .unwrap();
    assert_eq!(a.recv_json().await.unwrap()["fromParticipantId"], pb);
    b.expect_silence(Duration::from_millis(200)).await.unwrap();

    // Mute / unmute: the whole room hears it.
    a.send_json(&json!({"type": "room:mute", "roomId": room, "participantId": pa, "muted": true})).await.unwrap();
    for c in [&mut a, &mut b] {
        assert_eq!(c.recv_json().await.unwrap(), json!({"type": "voice:stream-stopped", "participantId": pa}));
    }
    assert_eq!(participants(&d, &room).await[0]["muted"], true);
    a.send_json(&json!({"type": "room:mute", "roomId": room, "muted": false})).await.unwrap();
    for c in [&mut a, &mut b] {
        assert_eq!(c.recv_json().await.unwrap(), json!({"type": "voice:stream-started", "participantId": pa}));
    }
    assert_eq!(participants(&d, &room).await[0]["muted"], false);

    // Stats reported by the client land in the session.
    let stats = json!({"voice_packets_sent": 45000, "voice_packets_received": 44500, "bytes_sent": 36000000,
        "bytes_received": 35600000, "packet_loss_percent": 0.3, "avg_latency_ms": 42});
    a.send_json(&json!({"type": "room:stats", "roomId": room, "participantId": pa, "stats": stats})).await.unwrap();
    let s = wait_for_stats(&d, &session_a).await;
    assert_eq!(s["stats"], stats);
    assert_eq!(s["status"], "active");
    a.send_json(&json!({"type": "room:stats", "roomId": room, "stats": {"avg_latency_ms": 40}})).await.unwrap();
    a.expect_silence(Duration::from_millis(200)).await.unwrap();
    assert_eq!(
        api(&d, "GET", &format!("/sessions/{session_a}"), None).await.body["stats"],
        json!({"avg_latency_ms": 40})
    );

    // Leave: everyone (the leaver too) sees it; the last one closes the room.
    a.send_json(&json!({"type": "room:leave", "roomId": room, "participantId": pa})).await.unwrap();
    let stopped = json!({"type": "voice:stream-stopped", "participantId": pa});
    let left = json!({"type": "room:participant-left", "participantId": pa, "reason": "user_left"});
    for c in [&mut a, &mut b] {
        assert_eq!(c.recv_json().await.unwrap(), stopped);
        assert_eq!(c.recv_json().await.unwrap(), left);
    }
    assert_eq!(room_status(&d, &room).await, "waiting");
    let s = api(&d, "GET", &format!("/sessions/{session_a}"), None).await.body;
    assert_eq!(s["status"], "completed");
    assert!(s["duration"].as_i64().unwrap() >= 0);
    assert_eq!(s["stats"], json!({"avg_latency_ms": 40}));
    b.send_json(&json!({"type": "room:leave", "roomId": room, "participantId": pb})).await.unwrap();
    assert_eq!(b.recv_json().await.unwrap(), json!({"type": "voice:stream-stopped", "participantId": pb}));
    assert_eq!(
        b.recv_json().await.unwrap(),
        json!({"type": "room:participant-left", "participantId": pb, "reason": "user_left"})
    );
    assert_eq!(
        b.recv_json().await.unwrap(),
        json!({"type": "room:closed", "roomId": room, "reason": "all_participants_left"})
    );
    a.expect_silence(Duration::from_millis(200)).await.unwrap();
    assert_eq!(room_status(&d, &room).await, "closed");
    expect_error(&mut a, json!({"type": "room:join", "roomId": room, "agentId": "alpha"}), "ROOM_CLOSED").await;
}

/// Poll `f` until `done` holds of its value (timers fire late on a busy machine), at most
/// [`PATIENCE`]; returns the last value.
async fn eventually<T, F, Fut>(mut f: F, done: impl Fn(&T) -> bool) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let started = std::time::Instant::now();
    loop {
        let v = f().await;
        if done(&v) || started.elapsed() > PATIENCE {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_for_stats(d: &Daemon, session: &str) -> Value {
    let started = std::time::Instant::now();
    while started.elapsed() < PATIENCE {
        let s = api(d, "GET", &format!("/sessions/{session}"), None).await.body;
        if !s["stats"].is_null() {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("stats of session {session} never arrived");
}

async fn ws_errors(db: Db) {
    let d = daemon(db, "").await;
    let Pair { room, mut a, pa, mut b, pb, .. } = two_in_room(&d, json!({"max_participants": 2})).await;
    // ROOM_FULL, ROOM_NOT_FOUND, ALREADY_JOINED.
    let mut c = ws(&d, "gamma").await;
    expect_error(&mut c, json!({"type": "room:join", "roomId": room, "agentId": "gamma"}), "ROOM_FULL").await;
    expect_error(&mut c, json!({"type": "room:join", "roomId": "no-such-room", "agentId": "gamma"}), "ROOM_NOT_FOUND")
        .await;
    expect_error(&mut a, json!({"type": "room:join", "roomId": room, "agentId": "alpha"}), "ALREADY_JOINED").await;
    // Another connection of a held agent.
    let mut beta_again = ws(&d, "beta").await;
    expect_error(&mut beta_again, json!({"type": "room:join", "roomId": room, "agentId": "beta"}), "ALREADY_JOINED")
        .await;
    // NOT_IN_ROOM: every room-scoped message from outside the room.
    let offer = json!({"type": "offer", "sdp": "x"});
    for msg in [
        json!({"type": "room:leave", "roomId": room, "participantId": pa}),
        json!({"type": "webrtc:offer", "roomId": room, "participantId": pa, "offer": offer}),
        json!({"type": "webrtc:answer", "roomId": room, "participantId": pa, "answer": {"type": "answer", "sdp": "x"}}),
        json!({"type": "webrtc:ice-candidate", "roomId": room, "candidate": {"candidate": "c"}}),
        json!({"type": "room:mute", "roomId": room, "participantId": pa, "muted": true}),
        json!({"type": "room:stats", "roomId": room, "stats": {"bytes_sent": 1}}),
    ] {
        expect_error(&mut c, msg, "NOT_IN_ROOM").await;
    }
    // Naming somebody else's participant where one's own is meant.
    expect_error(&mut a, json!({"type": "room:leave", "roomId": room, "participantId": pb}), "NOT_IN_ROOM").await;
    expect_error(
        &mut a,
        json!({"type": "room:mute", "roomId": room, "participantId": pb, "muted": true}),
        "NOT_IN_ROOM",
    )
    .await;
    // WEBCRTC_ERROR: nobody to deliver to.
    expect_error(
        &mut a,
        json!({"type": "webrtc:offer", "roomId": room, "participantId": "not-a-participant", "offer": offer}),
        "WEBCRTC_ERROR",
    )
    .await;
    // Malformed messages.
    for bad in [
        json!({"type": "room:join", "roomId": room}),
        json!({"type": "room:join", "roomId": 5, "agentId": "x"}),
        json!({"type": "room:join", "roomId": room, "agentId": "x", "metadata": []}),
        json!({"type": "webrtc:offer", "roomId": room, "participantId": pb}),
        json!({"type": "webrtc:answer", "roomId": room, "answer": "sdp"}),
        json!({"type": "room:mute", "roomId": room}),
        json!({"type": "room:stats", "roomId": room, "stats": {"bytes_sent": -1}}),
        json!({"type": "room:stats", "roomId": room, "stats": {"jitter": 1}}),
        json!({"type": "room:stats", "roomId": room, "stats": {}}),
        json!({"type": "room:dance"}),
        json!({"no": "type"}),
        json!([1, 2]),
    ] {
        expect_error(&mut a, bad, "INVALID_REQUEST").await;
    }
    a.send_text("not json").await.unwrap();
    assert_eq!(a.recv_json().await.unwrap()["code"], "INVALID_REQUEST");
    a.send_binary(b"\x00\x01").await.unwrap();
    assert_eq!(a.recv_json().await.unwrap()["code"], "INVALID_REQUEST");
    // Nobody else was disturbed, and the room still works.
    b.expect_silence(Duration::from_millis(200)).await.unwrap();
    c.expect_silence(Duration::from_millis(50)).await.unwrap();
    a.send_json(&json!({"type": "webrtc:ice-candidate", "roomId": room, "candidate": {"candidate": "c"}}))
        .await
        .unwrap();
    assert_eq!(b.recv_json().await.unwrap()["fromParticipantId"], pa);
    // Broadcast with nobody else connected.
    b.send_json(&json!({"type": "room:leave", "roomId": room})).await.unwrap();
    assert_eq!(b.recv_json().await.unwrap()["type"], "room:participant-left");
    assert_eq!(a.recv_json().await.unwrap()["participantId"], pb);
    expect_error(
        &mut a,
        json!({"type": "webrtc:ice-candidate", "roomId": room, "candidate": {"candidate": "c"}}),
        "WEBCRTC_ERROR",
    )
    .await;
    expect_error(
        &mut a,
        json!({"type": "webrtc:offer", "roomId": room, "participantId": pb, "offer": offer}),
        "WEBCRTC_ERROR",
    )
    .await;
}

/// The WebSocket needs an agent before `room:join`: a token at the handshake or in an `auth`
/// message (rooms.md lets it come either way); it joins as that agent only.
async fn ws_auth(db: Db) {
    let d = daemon(db, "").await;
    let room = field(&create_room(&d, json!({"name": "auth"})).await, "id");
    let exp = jsonwebtoken::get_current_timestamp() + 600;
    let mut c = anonymous(&d).await;
    // No token yet: no join, whatever agent it names.
    expect_error(&mut c, json!({"type": "room:join", "roomId": room, "agentId": "agent-alpha-001"}), "INVALID_TOKEN")
        .await;
    for bad in [
        "garbage".to_string(),
        token_with(&json!({"user_id": user_of("agent-alpha-001"), "exp": exp}), "another-secret-0123456789"),
        token(&json!({"user_id": user_of("agent-alpha-001"), "exp": jsonwebtoken::get_current_timestamp() - 10})),
        // Valid, but no agent of any business.
        token(&json!({"user_id": user_of("nobody"), "exp": exp})),
        token(&json!({"agent_id": "agent-alpha-001", "exp": exp})),
    ] {
        expect_error(&mut c, json!({"type": "auth", "token": bad}), "INVALID_TOKEN").await;
    }
    expect_error(&mut c, json!({"type": "auth"}), "INVALID_REQUEST").await;
    // Refused tokens left the connection anonymous.
    expect_error(&mut c, json!({"type": "room:join", "roomId": room, "agentId": "agent-alpha-001"}), "INVALID_TOKEN")
        .await;
    // A valid token binds the connection to its agent (silently).
    c.send_json(&json!({"type": "auth", "token": token_of("agent-alpha-001")})).await.unwrap();
    expect_error(&mut c, json!({"type": "room:join", "roomId": room, "agentId": "agent-beta-001"}), "INVALID_TOKEN")
        .await;
    join(&mut c, &room, "agent-alpha-001").await;
    // Holding a seat, the connection cannot become another agent.
    expect_error(&mut c, json!({"type": "auth", "token": token_of("agent-beta-001")}), "INVALID_TOKEN").await;
    // The same through the handshake (Sec-WebSocket-Protocol: Bearer, <jwt>).
    let t = token_of("agent-beta-001");
    let mut b = Client::connect_with(
        &format!("ws://{}/ws", d.rooms_addr),
        &[("Sec-WebSocket-Protocol", &format!("Bearer, {t}"))],
    )
    .await
    .unwrap()
    .expect("handshake accepted");
    assert_eq!(b.protocol.as_deref(), Some("Bearer"));
    expect_error(&mut b, json!({"type": "room:join", "roomId": room, "agentId": "agent-alpha-001"}), "INVALID_TOKEN")
        .await;
    join(&mut b, &room, "agent-beta-001").await;
    assert_eq!(c.recv_json().await.unwrap()["type"], "room:participant-joined");
    // A handshake token of no agent: told at once, and the connection may still `auth`.
    let mut n = Client::connect(&format!("ws://{}/ws?token={}", d.rooms_addr, token_of("nobody"))).await.unwrap();
    let told = n.recv_json().await.unwrap();
    assert_eq!((told["type"].as_str(), told["code"].as_str()), (Some("room:error"), Some("INVALID_TOKEN")), "{told}");
    n.send_json(&json!({"type": "auth", "token": token_of("agent-gamma")})).await.unwrap();
    join(&mut n, &room, "agent-gamma").await;
    // A bad handshake token is refused before the plugin.
    let refused = Client::connect_with(&format!("ws://{}/ws?token=garbage", d.rooms_addr), &[]).await.unwrap();
    assert_eq!(refused.err().map(|r| r.status), Some(401));
}

/// Rooms belong to the creating agent's business; agents of other businesses can neither see
/// nor touch them, over REST or the WebSocket.
async fn rooms_belong_to_their_business(db: Db) {
    let d = daemon(db, "").await;
    let acme_room = create_room(&d, json!({"name": "acme only"})).await;
    assert_eq!(acme_room["business_id"], ACME);
    let id = field(&acme_room, "id");
    let pa = field(
        &api(&d, "POST", &format!("/rooms/{id}/participants"), Some(json!({"agent_id": "alpha"}))).await.body,
        "id",
    );

    // `outsider` (globex): the room does not exist for it.
    let listed = api_as(&d, "outsider", "GET", "/rooms", None).await;
    assert_eq!(listed.body, json!({"data": [], "pagination": {"limit": 20, "offset": 0, "total": 0}}));
    for (method, path, body) in [
        ("GET", format!("/rooms/{id}"), None),
        ("PATCH", format!("/rooms/{id}"), Some(json!({"name": "taken"}))),
        ("DELETE", format!("/rooms/{id}"), None),
        ("POST", format!("/rooms/{id}/participants"), Some(json!({"agent_id": "outsider"}))),
        ("GET", format!("/rooms/{id}/participants"), None),
        ("DELETE", format!("/rooms/{id}/participants/{pa}"), None),
    ] {
        assert_error(&api_as(&d, "outsider", method, &path, body).await, 404, "ROOM_NOT_FOUND");
    }
    let mut o = ws(&d, "outsider").await;
    expect_error(&mut o, json!({"type": "room:join", "roomId": id, "agentId": "outsider"}), "ROOM_NOT_FOUND").await;
    // Its session is not found either, however it was learnt.
    let alpha_session = {
        let mut a = ws(&d, "alpha").await;
        field(&join(&mut a, &id, "alpha").await, "sessionId")
    };
    assert_eq!(api(&d, "GET", &format!("/sessions/{alpha_session}"), None).await.status, 200);
    assert_error(
        &api_as(&d, "outsider", "GET", &format!("/sessions/{alpha_session}"), None).await,
        404,
        "SESSION_NOT_FOUND",
    );
    // Nothing was changed by the refused calls.
    let room = api(&d, "GET", &format!("/rooms/{id}"), None).await.body;
    assert_eq!((room["name"].as_str(), room["participants_count"].as_i64()), (Some("acme only"), Some(1)));

    // A seat over REST only for an agent of the room's business.
    assert_error(
        &api(&d, "POST", &format!("/rooms/{id}/participants"), Some(json!({"agent_id": "outsider"}))).await,
        403,
        "FORBIDDEN",
    );
    assert_error(
        &api(&d, "POST", &format!("/rooms/{id}/participants"), Some(json!({"agent_id": "nobody-at-all"}))).await,
        403,
        "FORBIDDEN",
    );

    // An agent of several businesses names one; only its own.
    assert_error(&api_as(&d, "both", "POST", "/rooms", Some(json!({"name": "which?"}))).await, 400, "INVALID_REQUEST");
    let g = api_as(&d, "both", "POST", "/rooms", Some(json!({"name": "globex room", "business_id": GLOBEX}))).await;
    assert_eq!((g.status, g.body["business_id"].as_str()), (201, Some(GLOBEX)), "{:?}", g.body);
    let gid = field(&g.body, "id");
    assert_error(
        &api(&d, "POST", "/rooms", Some(json!({"name": "not mine", "business_id": GLOBEX}))).await,
        403,
        "FORBIDDEN",
    );
    let m = api(&d, "POST", "/rooms", Some(json!({"name": "named", "business_id": ACME}))).await;
    assert_eq!(m.status, 201);
    // Listing: each agent sees its businesses' rooms only.
    let ids = |r: &HttpAnswer| -> Vec<String> {
        r.body["data"].as_array().unwrap().iter().map(|x| x["id"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(ids(&api_as(&d, "outsider", "GET", "/rooms", None).await), std::slice::from_ref(&gid));
    assert_eq!(ids(&api(&d, "GET", "/rooms", None).await), [field(&m.body, "id"), id.clone()]);
    let both = api_as(&d, "both", "GET", "/rooms", None).await;
    assert_eq!(ids(&both), [field(&m.body, "id"), gid.clone(), id.clone()]);
    assert_eq!(both.body["pagination"]["total"], 3);
    // And `outsider` may use the globex room.
    join(&mut o, &gid, "outsider").await;
    assert_eq!(api_as(&d, "outsider", "DELETE", &format!("/rooms/{gid}"), None).await.status, 204);
}

/// A seat is resumed only by the agent that held it: after alpha's socket drops, a socket
/// without a token, one of another agent, and one of another business cannot take it; alpha's
/// next socket does. A seat made over REST for an agent waits for that agent alone.
async fn seats_are_resumed_only_by_their_agent(db: Db) {
    let d = daemon(db, "").await;
    let Pair { room, a, pa, sa, mut b, .. } = two_in_room(&d, json!({})).await;
    drop(a);
    assert_eq!(b.recv_json().await.unwrap()["reason"], "disconnected");
    let claim = json!({"type": "room:join", "roomId": room, "agentId": "alpha"});
    let mut anon = anonymous(&d).await;
    expect_error(&mut anon, claim.clone(), "INVALID_TOKEN").await;
    let mut gamma = ws(&d, "gamma").await;
    expect_error(&mut gamma, claim.clone(), "INVALID_TOKEN").await;
    let mut outsider = ws(&d, "outsider").await;
    expect_error(&mut outsider, claim.clone(), "INVALID_TOKEN").await;
    // An outsider that re-authenticates with a forged or foreign token gets nowhere either.
    let exp = jsonwebtoken::get_current_timestamp() + 60;
    let forged = token_with(&json!({"user_id": user_of("alpha"), "exp": exp}), "another-secret-0123456789");
    expect_error(&mut outsider, json!({"type": "auth", "token": forged}), "INVALID_TOKEN").await;
    expect_error(&mut outsider, claim.clone(), "INVALID_TOKEN").await;
    b.expect_silence(Duration::from_millis(200)).await.unwrap();
    let list = participants(&d, &room).await;
    assert_eq!((list[0]["id"].as_str(), list[0]["status"].as_str()), (Some(pa.as_str()), Some("disconnected")));
    // alpha itself, authenticating by message this time, resumes its seat and session.
    let mut a = anonymous(&d).await;
    a.send_json(&json!({"type": "auth", "token": token_of("alpha")})).await.unwrap();
    let again = join(&mut a, &room, "alpha").await;
    assert_eq!((again["participantId"].as_str(), again["sessionId"].as_str()), (Some(pa.as_str()), Some(sa.as_str())));
    assert_eq!(b.recv_json().await.unwrap()["participant"]["id"], pa);

    // A REST seat for agent-alpha-001 is not beta's to take, only agent-alpha-001's.
    let seat = api(&d, "POST", &format!("/rooms/{room}/participants"), Some(json!({"agent_id": "agent-alpha-001"})))
        .await
        .body;
    let mut other = ws(&d, "agent-beta-001").await;
    expect_error(
        &mut other,
        json!({"type": "room:join", "roomId": room, "agentId": "agent-alpha-001"}),
        "INVALID_TOKEN",
    )
    .await;
    let mut owner = ws(&d, "agent-alpha-001").await;
    assert_eq!(join(&mut owner, &room, "agent-alpha-001").await["participantId"], seat["id"]);
}

/// Each connection has its own message rate: the burst passes, the next messages get
/// `RATE_LIMITED` (and are dropped), and sustained excess closes the connection with 1008.
/// The rate is one message per 1,000 s, so the machine's speed cannot refill the bucket.
async fn room_messages_are_rate_limited(db: Db) {
    let d = daemon(db, "message_rate_per_sec = 0.001\nmessage_burst = 3\nmax_refused_messages = 2").await;
    let room = field(&create_room(&d, json!({"name": "chatty"})).await, "id");
    let mut a = ws(&d, "alpha").await;
    join(&mut a, &room, "alpha").await;
    // Two more within the burst: handled (answered as usual).
    expect_error(&mut a, json!({"type": "room:dance"}), "INVALID_REQUEST").await;
    expect_error(&mut a, json!({"type": "room:leave", "roomId": "elsewhere"}), "NOT_IN_ROOM").await;
    // Over the rate: dropped, with RATE_LIMITED (this leave is not carried out).
    expect_error(&mut a, json!({"type": "room:leave", "roomId": room}), "RATE_LIMITED").await;
    expect_error(&mut a, json!({"type": "room:mute", "roomId": room, "muted": true}), "RATE_LIMITED").await;
    assert_eq!(participants(&d, &room).await[0]["muted"], false);
    assert_eq!(participants(&d, &room).await.len(), 1);
    // Still over: closed.
    a.send_json(&json!({"type": "room:dance"})).await.unwrap();
    assert_eq!(a.recv_close().await.unwrap().0, 1008);
    // Another connection has a bucket of its own.
    let mut b = ws(&d, "beta").await;
    join(&mut b, &room, "beta").await;
    expect_error(&mut b, json!({"type": "room:dance"}), "INVALID_REQUEST").await;
}

/// Ids, names and display strings have length bounds (defaults): over them is
/// `INVALID_REQUEST` and nothing is stored.
async fn lengths_are_bounded(db: Db) {
    let d = daemon(db, "").await;
    let long_name = "n".repeat(201);
    assert_error(&api(&d, "POST", "/rooms", Some(json!({"name": long_name}))).await, 400, "INVALID_REQUEST");
    let ok = create_room(&d, json!({"name": "é".repeat(200)})).await;
    let id = field(&ok, "id");
    assert_error(
        &api(&d, "PATCH", &format!("/rooms/{id}"), Some(json!({"name": "n".repeat(201)}))).await,
        400,
        "INVALID_REQUEST",
    );
    let big = json!({"blob": "x".repeat(9000)});
    assert_error(
        &api(&d, "POST", "/rooms", Some(json!({"name": "r", "settings": big.clone()}))).await,
        400,
        "INVALID_REQUEST",
    );
    assert_error(
        &api(&d, "PATCH", &format!("/rooms/{id}"), Some(json!({"settings": big}))).await,
        400,
        "INVALID_REQUEST",
    );
    let long_id = "r".repeat(129);
    assert_error(&api(&d, "GET", &format!("/rooms/{long_id}"), None).await, 400, "INVALID_REQUEST");
    assert_error(
        &api(
            &d,
            "POST",
            &format!("/rooms/{id}/participants"),
            Some(json!({"agent_id": "alpha", "metadata": {"display_name": "d".repeat(129)}})),
        )
        .await,
        400,
        "INVALID_REQUEST",
    );
    assert_error(
        &api(
            &d,
            "POST",
            &format!("/rooms/{id}/participants"),
            Some(json!({"agent_id": "alpha", "metadata": {"notes": "m".repeat(5000)}})),
        )
        .await,
        400,
        "INVALID_REQUEST",
    );
    let mut a = ws(&d, "alpha").await;
    for bad in [
        json!({"type": "room:join", "roomId": long_id, "agentId": "alpha"}),
        json!({"type": "room:join", "roomId": id, "agentId": "a".repeat(129)}),
        json!({"type": "room:join", "roomId": id, "agentId": "alpha", "metadata": {"display_name": "d".repeat(129)}}),
        json!({"type": "room:join", "roomId": id, "agentId": "alpha", "metadata": {"display_name": 7}}),
        json!({"type": "room:leave", "roomId": id, "participantId": "p".repeat(129)}),
    ] {
        expect_error(&mut a, bad, "INVALID_REQUEST").await;
    }
    assert!(participants(&d, &id).await.is_empty());
    let joined = join(&mut a, &id, "alpha").await;
    assert_eq!(joined["roomId"], id);
    assert_eq!(participants(&d, &id).await[0]["display_name"], "alpha");
}

/// A database made before rooms had businesses upgrades in place: rooms whose creator names
/// an agent of one business join that business; the others belong to nobody until an operator
/// assigns one.
async fn existing_rooms_upgrade_in_place(db: Db) {
    let dir = tempdir::TempDir::new("gatewayd-rooms-upgrade");
    let pg = match db {
        Db::Postgres => Some(PgDatabase::create().await),
        Db::Sqlite => None,
    };
    let url = match &pg {
        Some(pg) => pg.url.clone(),
        None => format!("sqlite://{}", dir.path().join("old.db").display()),
    };
    sqlx::any::install_default_drivers();
    let connect_url = if pg.is_some() { url.clone() } else { format!("{url}?mode=rwc") };
    let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&connect_url).await.unwrap();
    // The migrations before rooms had businesses (0001-0004), as an older daemon applied them,
    // when chat's and rooms' tables were still daemon migrations (the same SQL as those
    // plugins' migrations now).
    let backend = if pg.is_some() { "postgres" } else { "sqlite" };
    let old = dir.path().join("migrations");
    std::fs::create_dir_all(&old).unwrap();
    for (from, to) in [
        ("migrations/{b}/0001_tenants.sql", "0001_tenants.sql"),
        ("plugins/chat/migrations/{b}/0001_sessions.sql", "0002_chat.sql"),
        ("plugins/rooms/migrations/{b}/0001_rooms.sql", "0003_rooms.sql"),
        ("plugins/chat/migrations/{b}/0002_attachment_index.sql", "0004_chat_attachment_index.sql"),
    ] {
        std::fs::copy(workspace().join(from.replace("{b}", backend)), old.join(to)).unwrap();
    }
    sqlx::migrate::Migrator::new(old.as_path()).await.unwrap().run(&mut conn).await.unwrap();
    let now = "2026-01-01T00:00:00.000000Z";
    let statements = [
        "INSERT INTO businesses (id, name) VALUES ('acme', 'Acme'), ('globex', 'Globex')".to_string(),
        "INSERT INTO agents (id, user_id) VALUES ('manager', '900'), ('both', '960')".to_string(),
        "INSERT INTO agent_memberships (agent_id, business_id) VALUES ('manager', 'acme'), ('both', 'acme'), \
         ('both', 'globex')"
            .to_string(),
        // Made with a user_id claim, with an agent_id claim, by nobody known, by an agent of
        // two businesses, with no token.
        format!(
            "INSERT INTO rooms (id, name, status, settings, created_by, created_at, updated_at) VALUES \
             ('by-user', 'u', 'created', '{{}}', '900', '{now}', '{now}'), \
             ('by-agent', 'a', 'created', '{{}}', 'manager', '{now}', '{now}'), \
             ('by-stranger', 's', 'created', '{{}}', '555', '{now}', '{now}'), \
             ('by-both', 'b', 'created', '{{}}', '960', '{now}', '{now}'), \
             ('anonymous', 'n', 'created', '{{}}', NULL, '{now}', '{now}')"
        ),
    ];
    for sql in &statements {
        sqlx::query(sql).execute(&mut conn).await.unwrap();
    }
    let d = Daemon::start(DaemonOptions { db, database_url: Some(url), ..Default::default() })
        .await
        .expect("daemon starts on the old database");
    let manager_sees = api(&d, "GET", "/rooms", None).await;
    let mut ids: Vec<&str> =
        manager_sees.body["data"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap()).collect();
    ids.sort();
    assert_eq!(ids, ["by-agent", "by-user"]);
    assert_eq!(api(&d, "GET", "/rooms/by-user", None).await.body["business_id"], ACME);
    for orphan in ["by-stranger", "by-both", "anonymous"] {
        assert_error(&api(&d, "GET", &format!("/rooms/{orphan}"), None).await, 404, "ROOM_NOT_FOUND");
        assert_error(&api_as(&d, "both", "GET", &format!("/rooms/{orphan}"), None).await, 404, "ROOM_NOT_FOUND");
    }
    // The operator assigns a business; the room is then that business's. On PostgreSQL the
    // table moved into the rooms plugin's schema.
    let table = if pg.is_some() { "plugin_rooms.rooms" } else { "rooms" };
    sqlx::query(&format!("UPDATE {table} SET business_id = 'globex' WHERE id = 'by-both'"))
        .execute(&mut conn)
        .await
        .unwrap();
    assert_eq!(api_as(&d, "both", "GET", "/rooms/by-both", None).await.status, 200);
    assert_error(&api(&d, "GET", "/rooms/by-both", None).await, 404, "ROOM_NOT_FOUND");
    drop(d);
    drop(pg);
}

async fn disconnect_and_resume(db: Db) {
    let d = daemon(db, "reconnect_grace_secs = 1").await;
    let Pair { room, mut a, pa, mut b, pb, .. } = two_in_room(&d, json!({})).await;
    negotiate(&mut a, &pa, &mut b, &pb, &room, &[&pa, &pb]).await;
    assert_eq!(room_status(&d, &room).await, "active");

    // beta's socket drops: beta is disconnected, alpha is told, the room waits.
    drop(b);
    assert_eq!(a.recv_json().await.unwrap(), json!({"type": "voice:stream-stopped", "participantId": pb}));
    assert_eq!(
        a.recv_json().await.unwrap(),
        json!({"type": "room:participant-left", "participantId": pb, "reason": "disconnected"})
    );
    let list = participants(&d, &room).await;
    assert_eq!(list[1]["id"], pb);
    assert_eq!(list[1]["status"], "disconnected");
    assert_eq!(room_status(&d, &room).await, "waiting");

    // Rejoining within the grace period resumes the same participant and session.
    let mut b = ws(&d, "beta").await;
    let again = join(&mut b, &room, "beta").await;
    assert_eq!(again["participantId"], pb);
    assert_eq!(again["status"], "connecting");
    assert_eq!(again["participants"][0]["id"], pa);
    assert_eq!(
        a.recv_json().await.unwrap(),
        json!({"type": "room:participant-joined", "participant": {"id": pb, "agentId": "beta", "display_name": "beta", "status": "connecting"}})
    );
    let sb = field(&again, "sessionId");
    // alpha stayed connected; only beta connects anew.
    negotiate(&mut a, &pa, &mut b, &pb, &room, &[&pb]).await;
    assert_eq!(room_status(&d, &room).await, "active");

    // Dropped again and not back within the grace period: beta has left for good.
    b.close(1000).await.unwrap();
    assert_eq!(a.recv_json().await.unwrap()["type"], "voice:stream-stopped");
    assert_eq!(a.recv_json().await.unwrap()["reason"], "disconnected");
    // The grace timer fires after 1 s; how late depends on the machine's load: poll.
    let list = eventually(|| participants(&d, &room), |l| l.len() == 1).await;
    assert_eq!(list.len(), 1, "{list:?}");
    let s = api(&d, "GET", &format!("/sessions/{sb}"), None).await.body;
    assert_eq!(s["status"], "disconnected");
    assert!(s["end_time"].is_string());
    a.expect_silence(Duration::from_millis(100)).await.unwrap();
    let mut b = ws(&d, "beta").await;
    let fresh = join(&mut b, &room, "beta").await;
    assert_ne!(fresh["participantId"], pb);

    // The last participant's socket dropping and its grace expiring closes the room.
    drop(a);
    drop(b);
    assert_eq!(eventually(|| room_status(&d, &room), |s| s == "closed").await, "closed");
}

async fn connection_timeout(db: Db) {
    // 4 s: long enough for a pair to negotiate on a busy machine (the last part below).
    let d = daemon(db, "connection_timeout_secs = 4").await;
    // Alone, nobody to connect to: no timeout.
    let room = field(&create_room(&d, json!({"name": "t"})).await, "id");
    let mut a = ws(&d, "alpha").await;
    let ja = join(&mut a, &room, "alpha").await;
    let pa = field(&ja, "participantId");
    // Past the timeout: alone, the timer re-arms.
    a.expect_silence(Duration::from_millis(4500)).await.unwrap();
    // A peer arrives and alpha never completes a negotiation.
    let mut b = ws(&d, "beta").await;
    let pb = field(&join(&mut b, &room, "beta").await, "participantId");
    assert_eq!(a.recv_json().await.unwrap()["type"], "room:participant-joined");
    let e = a.recv_within(PATIENCE).await.unwrap();
    let Incoming::Text(e) = e else { panic!("{e:?}") };
    let e: Value = serde_json::from_str(&e).unwrap();
    assert_eq!(e["type"], "room:error");
    assert_eq!(e["code"], "CONNECTION_TIMEOUT");
    let left = json!({"type": "room:participant-left", "participantId": pa, "reason": "connection_timeout"});
    assert_eq!(a.recv_json().await.unwrap(), left);
    assert_eq!(b.recv_json().await.unwrap(), left);
    let s = api(&d, "GET", &format!("/sessions/{}", field(&ja, "sessionId")), None).await.body;
    assert_eq!(s["status"], "timed_out");
    // alpha is out of the room; beta, alone again, waits.
    expect_error(
        &mut a,
        json!({"type": "webrtc:offer", "roomId": room, "participantId": pb, "offer": {"sdp": "x"}}),
        "NOT_IN_ROOM",
    )
    .await;
    let list = participants(&d, &room).await;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["id"], pb);
    b.expect_silence(Duration::from_millis(4500)).await.unwrap();

    // A pair that negotiates in time is never timed out.
    let Pair { room, mut a, pa, mut b, pb, .. } = two_in_room(&d, json!({})).await;
    negotiate(&mut a, &pa, &mut b, &pb, &room, &[&pa, &pb]).await;
    a.expect_silence(Duration::from_millis(4500)).await.unwrap();
    b.expect_silence(Duration::from_millis(10)).await.unwrap();
    assert_eq!(room_status(&d, &room).await, "active");
}

async fn rest_and_websocket_together(db: Db) {
    let d = daemon(db, "").await;
    // A participant created over REST is resumed by the WebSocket join of its agent.
    let room = field(&create_room(&d, json!({"name": "mixed"})).await, "id");
    let r = api(
        &d,
        "POST",
        &format!("/rooms/{room}/participants"),
        Some(json!({"agent_id": "alpha", "metadata": {"display_name": "A"}})),
    )
    .await;
    let pa = field(&r.body, "id");
    let mut a = ws(&d, "alpha").await;
    let ja = join(&mut a, &room, "alpha").await;
    assert_eq!(ja["participantId"], pa);
    assert_eq!(ja["sessionId"], r.body["session_id"]);
    let mut b = ws(&d, "beta").await;
    let pb = field(&join(&mut b, &room, "beta").await, "participantId");
    assert_eq!(a.recv_json().await.unwrap()["participant"]["id"], pb);

    // REST removal: the room (the removed one included) hears it; the removed socket is out.
    assert_eq!(api(&d, "DELETE", &format!("/rooms/{room}/participants/{pb}"), None).await.status, 204);
    let left = json!({"type": "room:participant-left", "participantId": pb, "reason": "user_left"});
    assert_eq!(b.recv_json().await.unwrap(), left);
    assert_eq!(a.recv_json().await.unwrap(), left);
    expect_error(
        &mut b,
        json!({"type": "webrtc:ice-candidate", "roomId": room, "candidate": {"candidate": "c"}}),
        "NOT_IN_ROOM",
    )
    .await;
    // Removed, it may join again as a new participant.
    let pb2 = field(&join(&mut b, &room, "beta").await, "participantId");
    assert_ne!(pb2, pb);
    assert_eq!(a.recv_json().await.unwrap()["participant"]["id"], pb2);

    // Deleting the room closes it for everyone in it.
    assert_eq!(api(&d, "DELETE", &format!("/rooms/{room}"), None).await.status, 204);
    let closed = json!({"type": "room:closed", "roomId": room, "reason": "room_deleted"});
    assert_eq!(a.recv_json().await.unwrap(), closed);
    assert_eq!(b.recv_json().await.unwrap(), closed);
    expect_error(&mut a, json!({"type": "room:leave", "roomId": room}), "NOT_IN_ROOM").await;
    expect_error(&mut a, json!({"type": "room:join", "roomId": room, "agentId": "alpha"}), "ROOM_NOT_FOUND").await;
    let s = api(&d, "GET", &format!("/sessions/{}", field(&ja, "sessionId")), None).await.body;
    assert_eq!(s["status"], "completed");
}

/// A daemon crash loses every connection without a close: after the restart the agents can
/// take their participants over again (same participant, same session).
async fn crash_restart_resumes(db: Db) {
    let mut d = daemon(db, "").await;
    let room = field(&create_room(&d, json!({"name": "crash"})).await, "id");
    let mut a = ws(&d, "alpha").await;
    let ja = join(&mut a, &room, "alpha").await;
    d.crash_and_restart().await.expect("daemon restarts");
    let mut a = ws(&d, "alpha").await;
    let again = join(&mut a, &room, "alpha").await;
    assert_eq!(again["participantId"], ja["participantId"]);
    assert_eq!(again["sessionId"], ja["sessionId"]);
    // Held again now: a second connection for the same agent is refused.
    let mut other = ws(&d, "alpha").await;
    expect_error(&mut other, json!({"type": "room:join", "roomId": room, "agentId": "alpha"}), "ALREADY_JOINED").await;
}

/// Ten agents each join three rooms (of 1, 2 and 5 seats) at once: exactly as many get in as
/// each room has seats, the rest get `ROOM_FULL`, on both backends (the capacity check, the
/// insert and its session are one `store.batch` transaction; see `model::insert_participant`).
async fn concurrent_joins_fill_exactly_to_capacity(db: Db) {
    let d = daemon(db, "").await;
    let capacities = [1usize, 2, 5];
    let mut rooms = Vec::new();
    for max in capacities {
        let body = json!({"name": format!("rush of {max}"), "settings": {"max_participants": max}});
        rooms.push(field(&create_room(&d, body).await, "id"));
    }
    let mut clients = Vec::new();
    for i in 0..RUSH {
        clients.push(ws(&d, &format!("rush-{i}")).await);
    }
    // Every join is sent before any answer is read.
    for room in &rooms {
        for (i, c) in clients.iter_mut().enumerate() {
            c.send_json(&json!({"type": "room:join", "roomId": room, "agentId": format!("rush-{i}")})).await.unwrap();
        }
    }
    let mut joined = vec![0usize; rooms.len()];
    let mut full = 0;
    for c in clients.iter_mut() {
        // Each client gets one outcome per join, among notices of other joiners (skipped).
        let mut outcomes = 0;
        while outcomes < rooms.len() {
            let m = c.recv_json().await.unwrap();
            match m["type"].as_str() {
                Some("room:participant-joined") => continue,
                Some("room:joined") => {
                    let i = rooms.iter().position(|r| m["roomId"] == r.as_str()).expect("a room of this test");
                    joined[i] += 1;
                }
                _ => {
                    assert_eq!(m["code"], "ROOM_FULL", "{m}");
                    full += 1;
                }
            }
            outcomes += 1;
        }
    }
    assert_eq!(joined, capacities, "joined per room");
    assert_eq!(full, RUSH * rooms.len() - capacities.iter().sum::<usize>());
    for (room, max) in rooms.iter().zip(capacities) {
        assert_eq!(participants(&d, room).await.len(), max);
        let r = api(&d, "GET", &format!("/rooms/{room}"), None).await;
        assert_eq!(r.body["participants_count"], max);
    }
}

/// Two rooms never hear each other.
async fn rooms_are_isolated(db: Db) {
    let d = daemon(db, "").await;
    let Pair { room: r1, mut a, pa, b: mut b1, .. } = two_in_room(&d, json!({})).await;
    let Pair { room: r2, a: mut a2, pa: pa2, b: mut b2, .. } = two_in_room(&d, json!({})).await;
    // alpha of room 1 names a participant of room 2: not reachable from room 1.
    expect_error(
        &mut a,
        json!({"type": "webrtc:offer", "roomId": r1, "participantId": pa2, "offer": {"sdp": "x"}}),
        "WEBCRTC_ERROR",
    )
    .await;
    // Nor may it speak in room 2.
    expect_error(
        &mut a,
        json!({"type": "webrtc:ice-candidate", "roomId": r2, "candidate": {"candidate": "c"}}),
        "NOT_IN_ROOM",
    )
    .await;
    a.send_json(&json!({"type": "webrtc:ice-candidate", "roomId": r1, "candidate": {"candidate": "c"}})).await.unwrap();
    assert_eq!(b1.recv_json().await.unwrap()["fromParticipantId"], pa);
    a2.expect_silence(Duration::from_millis(200)).await.unwrap();
    b2.expect_silence(Duration::from_millis(10)).await.unwrap();
}

on_both_backends!(
    rest_rooms,
    rest_bad_requests,
    rest_needs_an_agent_token,
    rest_participants,
    ws_flow,
    ws_errors,
    ws_auth,
    disconnect_and_resume,
    connection_timeout,
    rest_and_websocket_together,
    rooms_are_isolated,
    crash_restart_resumes,
    rooms_belong_to_their_business,
    seats_are_resumed_only_by_their_agent,
    room_messages_are_rate_limited,
    lengths_are_bounded,
    existing_rooms_upgrade_in_place,
    concurrent_joins_fill_exactly_to_capacity,
);
