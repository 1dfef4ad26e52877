//! signaling.md end to end: the real daemon, real sockets, a real WebSocket client, on SQLite
//! and on the local PostgreSQL server.

use gatewayd_e2e::*;
use serde_json::{Value, json};
use std::time::Duration;

const B1: &str = "8c3d5e71-5d14-4f7b-a6f9-2c90b3c5b8e1";
const B2: &str = "b2000000-0000-4000-8000-000000000002";
const D1A: &str = "7d9a1f32-8c1d-4c29-9e0a-e2a4f7b5c3d1";
const D1B: &str = "d1b00000-0000-4000-8000-00000000001b";
const D2: &str = "d2000000-0000-4000-8000-000000000002";
const A1: &str = "a1a2f3b4-5678-49aa-9cde-001122334455"; // user 720: B1/D1A
const A2: &str = "a2000000-0000-4000-8000-000000000002"; // user 721: B1/D1A, B1/D1B, B2/D2
const A3: &str = "a3000000-0000-4000-8000-000000000003"; // user 722: no membership
const A4: &str = "a4000000-0000-4000-8000-000000000004"; // user 723: B2, business-wide
const G1: &str = "2b1b2a9e-4a0a-4e1a-95d6-a6e4b9d9d1b2";

/// Start a daemon and create the tenants above with the `gatewayd tenant` CLI.
async fn world(db: Db, opts: DaemonOptions) -> Daemon {
    let d = Daemon::start(DaemonOptions { db, ..opts }).await.expect("daemon starts");
    let cmds: Vec<Vec<&str>> = vec![
        vec!["add-business", B1, "--name", "Acme"],
        vec!["add-business", B2, "--name", "Globex"],
        vec!["add-department", D1A, "--business", B1, "--name", "Sales"],
        vec!["add-department", D1B, "--business", B1, "--name", "Support"],
        vec!["add-department", D2, "--business", B2],
        vec!["add-agent", A1, "--user-id", "720", "--name", "Ada Lovelace"],
        vec!["add-agent", A2, "--user-id", "721"],
        vec!["add-agent", A3, "--user-id", "722"],
        vec!["add-agent", A4, "--user-id", "723"],
        vec!["add-membership", "--agent", A1, "--business", B1, "--department", D1A],
        vec!["add-membership", "--agent", A2, "--business", B1, "--department", D1A],
        vec!["add-membership", "--agent", A2, "--business", B1, "--department", D1B],
        vec!["add-membership", "--agent", A2, "--business", B2, "--department", D2],
        vec!["add-membership", "--agent", A4, "--business", B2],
    ];
    for c in cmds {
        let mut args = vec!["tenant"];
        args.extend(c);
        d.cli(&args).expect("tenant command");
    }
    d
}

async fn guest(d: &Daemon, guest_id: &str, business: Option<&str>) -> Client {
    let q = match business {
        Some(b) => format!("/ws/signaling/?guest_id={guest_id}&business_id={b}"),
        None => format!("/ws/signaling/?guest_id={guest_id}"),
    };
    Client::connect(&d.ws_url(&q)).await.expect("guest connects")
}

async fn agent(d: &Daemon, user_id: Value, extra_query: &str) -> Client {
    let url = d.ws_url(&format!("/ws/signaling/?token={}{extra_query}", agent_token(user_id)));
    Client::connect(&url).await.expect("agent connects")
}

/// Agent 720 and guest G1 of business B1, both past `connection_established`.
async fn pair(d: &Daemon) -> (Client, Client) {
    let mut a = agent(d, json!(720), "").await;
    assert_eq!(a.recv_json().await.unwrap()["type"], "connection_established");
    let mut g = guest(d, G1, Some(B1)).await;
    assert_eq!(g.recv_json().await.unwrap()["type"], "connection_established");
    (a, g)
}

async fn spec_flow(db: Db) {
    let d = world(db, DaemonOptions::default()).await;
    let mut a = agent(&d, json!(720), "").await;
    assert_eq!(
        a.recv_json().await.unwrap(),
        json!({"type": "connection_established", "user_id": 720, "agent_id": A1, "department_id": D1A, "business_id": B1})
    );
    let mut g = guest(&d, G1, Some(B1)).await;
    assert_eq!(
        g.recv_json().await.unwrap(),
        json!({"type": "connection_established", "guest_id": G1, "business_id": B1})
    );

    // Agent -> guest, guest accepts.
    a.send_json(&json!({"type": "call.invite", "to_guest_id": G1, "business_id": B1, "room_id": "room_abc123", "caller_display": "Ada Lovelace"}))
        .await
        .unwrap();
    assert_eq!(
        a.recv_json().await.unwrap(),
        json!({"type": "invite.sent", "to_guest_id": G1, "business_id": B1, "room_id": "room_abc123"})
    );
    assert_eq!(
        g.recv_json().await.unwrap(),
        json!({"type": "call.ring", "from_agent_id": A1, "business_id": B1, "room_id": "room_abc123", "caller_display": "Ada Lovelace"})
    );
    g.send_json(&json!({"type": "call.response", "to_agent_id": A1, "business_id": B1, "room_id": "room_abc123", "accept": true}))
        .await
        .unwrap();
    assert_eq!(
        g.recv_json().await.unwrap(),
        json!({"type": "response.sent", "to_agent_id": A1, "business_id": B1, "room_id": "room_abc123", "accept": true})
    );
    assert_eq!(
        a.recv_json().await.unwrap(),
        json!({"type": "call.accepted", "from_guest_id": G1, "business_id": B1, "room_id": "room_abc123"})
    );

    // Guest -> agent, agent declines.
    g.send_json(&json!({"type": "call.invite", "to_agent_id": A1, "business_id": B1, "room_id": "room_2", "caller_display": "Visitor #42"}))
        .await
        .unwrap();
    assert_eq!(
        g.recv_json().await.unwrap(),
        json!({"type": "invite.sent", "to_agent_id": A1, "business_id": B1, "room_id": "room_2"})
    );
    assert_eq!(
        a.recv_json().await.unwrap(),
        json!({"type": "call.ring", "from_guest_id": G1, "business_id": B1, "room_id": "room_2", "caller_display": "Visitor #42"})
    );
    a.send_json(
        &json!({"type": "call.response", "to_guest_id": G1, "business_id": B1, "room_id": "room_2", "accept": false}),
    )
    .await
    .unwrap();
    assert_eq!(
        a.recv_json().await.unwrap(),
        json!({"type": "response.sent", "to_guest_id": G1, "business_id": B1, "room_id": "room_2", "accept": false})
    );
    assert_eq!(
        g.recv_json().await.unwrap(),
        json!({"type": "call.declined", "from_agent_id": A1, "business_id": B1, "room_id": "room_2"})
    );

    // Ping/pong on both.
    for c in [&mut a, &mut g] {
        c.send_json(&json!({"type": "ping"})).await.unwrap();
        assert_eq!(c.recv_json().await.unwrap(), json!({"type": "pong"}));
    }
    // Nothing else was sent to anyone.
    a.expect_silence(Duration::from_millis(200)).await.unwrap();
    g.expect_silence(Duration::from_millis(200)).await.unwrap();
}

async fn invite_agent_by_user_id(db: Db) {
    let d = world(db, DaemonOptions::default()).await;
    let (mut a, mut g) = pair(&d).await;
    // The spec's own example names the agent by user id ("44"); here user 720 is agent A1.
    g.send_json(&json!({"type": "call.invite", "to_agent_id": "720", "business_id": B1, "room_id": "r1", "caller_display": "Visitor #42"}))
        .await
        .unwrap();
    assert_eq!(
        g.recv_json().await.unwrap(),
        json!({"type": "invite.sent", "to_agent_id": A1, "business_id": B1, "room_id": "r1"})
    );
    assert_eq!(a.recv_json().await.unwrap()["type"], "call.ring");
    a.send_json(
        &json!({"type": "call.response", "to_guest_id": G1, "business_id": B1, "room_id": "r1", "accept": true}),
    )
    .await
    .unwrap();
    assert_eq!(a.recv_json().await.unwrap()["type"], "response.sent");
    assert_eq!(
        g.recv_json().await.unwrap(),
        json!({"type": "call.accepted", "from_agent_id": A1, "business_id": B1, "room_id": "r1"})
    );
}

async fn expect_refused(d: &Daemon, user_id: Value, query: &str, code: u16, reason_has: &str) {
    let mut c = agent(d, user_id.clone(), query).await;
    let (got, reason) = c.recv_close().await.unwrap_or_else(|e| panic!("user {user_id} {query}: {e}"));
    assert_eq!(got, code, "user {user_id} {query}: {reason}");
    assert!(reason.contains(reason_has), "user {user_id} {query}: reason {reason:?} lacks {reason_has:?}");
}

async fn expect_resolved(d: &Daemon, user_id: Value, query: &str, agent_id: &str, business: &str, department: Value) {
    let mut c = agent(d, user_id.clone(), query).await;
    assert_eq!(
        c.recv_json().await.unwrap(),
        json!({"type": "connection_established", "user_id": user_id, "agent_id": agent_id, "department_id": department, "business_id": business}),
        "user {user_id} {query}"
    );
}

async fn membership_rules(db: Db) {
    let d = world(db, DaemonOptions::default()).await;
    // Exactly one membership overall: resolved without parameters.
    expect_resolved(&d, json!(720), "", A1, B1, json!(D1A)).await;
    expect_resolved(&d, json!(723), "", A4, B2, Value::Null).await;
    // department_id given: must match one of the agent's departments.
    expect_resolved(&d, json!(721), &format!("&department_id={D1B}"), A2, B1, json!(D1B)).await;
    expect_resolved(&d, json!(721), &format!("&department_id={D1A}&business_id={B1}"), A2, B1, json!(D1A)).await;
    expect_refused(&d, json!(720), &format!("&department_id={D1B}"), 4003, "not a member of department").await;
    expect_refused(&d, json!(721), &format!("&department_id={D2}&business_id={B1}"), 4003, "is not in business").await;
    // else business_id: must match exactly one membership.
    expect_resolved(&d, json!(721), &format!("&business_id={B2}"), A2, B2, json!(D2)).await;
    expect_refused(&d, json!(721), &format!("&business_id={B1}"), 4003, "2 memberships in business").await;
    expect_refused(&d, json!(720), &format!("&business_id={B2}"), 4003, "not a member of business").await;
    // else exactly one membership overall.
    expect_refused(&d, json!(721), "", 4003, "3 memberships").await;
    expect_refused(&d, json!(722), "", 4003, "not an agent of any business").await;
    expect_refused(&d, json!(999), "", 4003, "not an agent of any business").await;
    // A string user id in the token is the same user.
    expect_resolved(&d, json!("720"), "", A1, B1, json!(D1A)).await;
    // A token without user_id or sub.
    let no_user = token(&json!({"exp": jsonwebtoken::get_current_timestamp() + 60}));
    let mut c = Client::connect(&d.ws_url(&format!("/ws/signaling/?token={no_user}"))).await.unwrap();
    assert_eq!(c.recv_close().await.unwrap(), (4003, "token has no user_id".into()));
}

async fn tokens_refused_at_handshake(db: Db) {
    let d = world(db, DaemonOptions::default()).await;
    let now = jsonwebtoken::get_current_timestamp();
    let cases = [
        ("expired", token(&json!({"user_id": 720, "exp": now - 10})), "token_expired"),
        (
            "wrong key",
            token_with(&json!({"user_id": 720, "exp": now + 60}), "some-other-secret-0123456789abcdef"),
            "token_invalid",
        ),
        ("no exp", token(&json!({"user_id": 720})), "token_invalid"),
        // {"alg":"none"} . {"user_id":720,"exp":4102444800} . (no signature)
        (
            "alg none",
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJ1c2VyX2lkIjo3MjAsImV4cCI6NDEwMjQ0NDgwMH0.".to_string(),
            "token_invalid",
        ),
        ("garbage", "not-a-jwt".to_string(), "token_invalid"),
    ];
    for (what, tok, code) in &cases {
        let r = Client::connect_with(&d.ws_url(&format!("/ws/signaling/?token={tok}")), &[]).await.unwrap();
        let refused = r.err().unwrap_or_else(|| panic!("{what}: handshake was accepted"));
        assert_eq!(refused.status, 401, "{what}");
        let body: Value = serde_json::from_str(&refused.body).unwrap();
        assert_eq!(body["error"], *code, "{what}: {body}");
    }
    // Sec-WebSocket-Protocol: Bearer, <jwt> -> accepted, only `Bearer` is selected.
    let tok = agent_token(json!(720));
    let protocol = format!("Bearer, {tok}");
    let mut c = Client::connect_with(&d.ws_url("/ws/signaling/"), &[("Sec-WebSocket-Protocol", &protocol)])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c.protocol.as_deref(), Some("Bearer"));
    assert_eq!(c.recv_json().await.unwrap()["agent_id"], A1);
    // Authorization: Bearer <jwt>
    let auth = format!("Bearer {tok}");
    let mut c = Client::connect_with(&d.ws_url("/ws/signaling/"), &[("Authorization", &auth)]).await.unwrap().unwrap();
    assert_eq!(c.recv_json().await.unwrap()["agent_id"], A1);
    // Tokens never reach the logs.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let logs = d.logs().join("\n");
    for (what, tok, _) in &cases {
        assert!(!logs.contains(tok.as_str()), "{what} token leaked into logs");
    }
    assert!(!logs.contains(&tok), "valid token leaked into logs");
}

async fn audience_and_issuer(db: Db) {
    let d = world(
        db,
        DaemonOptions {
            auth_extra: "audience = \"gatewayd\"\nissuer = \"https://auth.test/\"".into(),
            ..Default::default()
        },
    )
    .await;
    let exp = jsonwebtoken::get_current_timestamp() + 60;
    let cases = [
        (json!({"user_id": 720, "exp": exp, "aud": "gatewayd", "iss": "https://auth.test/"}), None),
        (json!({"user_id": 720, "exp": exp, "aud": "other", "iss": "https://auth.test/"}), Some("token_not_accepted")),
        (json!({"user_id": 720, "exp": exp, "iss": "https://auth.test/"}), Some("token_not_accepted")),
        (
            json!({"user_id": 720, "exp": exp, "aud": "gatewayd", "iss": "https://evil.test/"}),
            Some("token_not_accepted"),
        ),
    ];
    for (claims, refusal) in cases {
        let r =
            Client::connect_with(&d.ws_url(&format!("/ws/signaling/?token={}", token(&claims))), &[]).await.unwrap();
        match (r, refusal) {
            (Ok(mut c), None) => assert_eq!(c.recv_json().await.unwrap()["agent_id"], A1),
            (Err(r), Some(code)) => {
                assert_eq!(r.status, 401, "{claims}");
                assert_eq!(serde_json::from_str::<Value>(&r.body).unwrap()["error"], code, "{claims}");
            }
            (Ok(_), Some(_)) => panic!("{claims} was accepted"),
            (Err(r), None) => panic!("{claims} was refused: {}", r.body),
        }
    }
}

async fn guest_connection_rules(db: Db) {
    let d = world(db, DaemonOptions::default()).await;
    let mut c = Client::connect(&d.ws_url("/ws/signaling/")).await.unwrap();
    assert_eq!(c.recv_close().await.unwrap(), (4001, "guest_id or token is required".into()));
    let mut c = Client::connect(&d.ws_url("/ws/signaling/?guest_id=g9&business_id=nope")).await.unwrap();
    assert_eq!(c.recv_close().await.unwrap(), (4004, "unknown business_id nope".into()));
    // A guest without business_id is scoped by its first invite.
    let mut a = agent(&d, json!(720), "").await;
    a.recv_json().await.unwrap();
    let mut g = guest(&d, "g-free", None).await;
    assert_eq!(
        g.recv_json().await.unwrap(),
        json!({"type": "connection_established", "guest_id": "g-free", "business_id": null})
    );
    g.send_json(&json!({"type": "call.invite", "to_agent_id": A1, "business_id": B1, "room_id": "r"})).await.unwrap();
    assert_eq!(g.recv_json().await.unwrap()["type"], "invite.sent");
    assert_eq!(
        a.recv_json().await.unwrap(),
        json!({"type": "call.ring", "from_guest_id": "g-free", "business_id": B1, "room_id": "r"})
    );
    // ... and from then on belongs to B1: an invite for B2 is refused, agents of B1 reach it.
    g.send_json(&json!({"type": "call.invite", "to_agent_id": A4, "business_id": B2, "room_id": "r"})).await.unwrap();
    assert_eq!(g.recv_json().await.unwrap()["code"], "wrong_business");
    a.send_json(&json!({"type": "call.invite", "to_guest_id": "g-free", "business_id": B1, "room_id": "r2"}))
        .await
        .unwrap();
    assert_eq!(a.recv_json().await.unwrap()["type"], "invite.sent");
    assert_eq!(g.recv_json().await.unwrap()["type"], "call.ring");
}

async fn error(c: &mut Client, msg: Value) -> (String, String) {
    c.send_json(&msg).await.unwrap();
    let e = c.recv_json().await.unwrap();
    assert_eq!(e["type"], "error", "{e}");
    (e["code"].as_str().unwrap().to_string(), e["message"].as_str().unwrap().to_string())
}

async fn errors_where_the_spec_is_silent(db: Db) {
    let d = world(db, DaemonOptions::default()).await;
    let (mut a, mut g) = pair(&d).await;
    a.send_text("{not json").await.unwrap();
    assert_eq!(a.recv_json().await.unwrap()["code"], "invalid_json");
    a.send_text("[1,2]").await.unwrap();
    assert_eq!(a.recv_json().await.unwrap()["code"], "invalid_json");
    assert_eq!(error(&mut a, json!({"type": "call.hold"})).await.0, "unknown_type");
    assert_eq!(error(&mut a, json!({"no_type": 1})).await.0, "missing_field");
    let (code, message) = error(&mut a, json!({"type": "call.invite", "to_guest_id": G1, "room_id": "r"})).await;
    assert_eq!((code.as_str(), message.as_str()), ("missing_field", "`business_id` is required"));
    assert_eq!(
        error(&mut a, json!({"type": "call.invite", "to_guest_id": G1, "business_id": B1})).await.0,
        "missing_field"
    );
    assert_eq!(
        error(&mut a, json!({"type": "call.invite", "business_id": B1, "room_id": "r"})).await.0,
        "missing_field"
    );
    assert_eq!(
        error(
            &mut a,
            json!({"type": "call.response", "to_guest_id": G1, "business_id": B1, "room_id": "r", "accept": "yes"})
        )
        .await
        .0,
        "invalid_field"
    );
    // Wrong business: the agent belongs to B1 only.
    assert_eq!(
        error(&mut a, json!({"type": "call.invite", "to_guest_id": G1, "business_id": B2, "room_id": "r"})).await.0,
        "wrong_business"
    );
    assert_eq!(
        error(&mut g, json!({"type": "call.invite", "to_agent_id": A1, "business_id": B2, "room_id": "r"})).await.0,
        "wrong_business"
    );
    // Target offline.
    let (code, message) =
        error(&mut a, json!({"type": "call.invite", "to_guest_id": "nobody", "business_id": B1, "room_id": "r"})).await;
    assert_eq!(code, "target_offline");
    assert!(message.contains("nobody"), "{message}");
    assert_eq!(
        error(&mut g, json!({"type": "call.invite", "to_agent_id": A2, "business_id": B1, "room_id": "r"})).await.0,
        "target_offline"
    );
    // Wrong direction.
    assert_eq!(
        error(&mut a, json!({"type": "call.invite", "to_agent_id": A2, "business_id": B1, "room_id": "r"})).await.0,
        "invalid_target"
    );
    // A response with no pending invite, and one for another room.
    assert_eq!(
        error(
            &mut g,
            json!({"type": "call.response", "to_agent_id": A1, "business_id": B1, "room_id": "r", "accept": true})
        )
        .await
        .0,
        "no_pending_invite"
    );
    a.send_json(&json!({"type": "call.invite", "to_guest_id": G1, "business_id": B1, "room_id": "room-x"}))
        .await
        .unwrap();
    assert_eq!(a.recv_json().await.unwrap()["type"], "invite.sent");
    assert_eq!(g.recv_json().await.unwrap()["type"], "call.ring");
    assert_eq!(
        error(
            &mut g,
            json!({"type": "call.response", "to_agent_id": A1, "business_id": B1, "room_id": "room-y", "accept": true})
        )
        .await
        .0,
        "no_pending_invite"
    );
    // The right room still works after the mistakes, and only once.
    let answer =
        json!({"type": "call.response", "to_agent_id": A1, "business_id": B1, "room_id": "room-x", "accept": true});
    g.send_json(&answer).await.unwrap();
    assert_eq!(g.recv_json().await.unwrap()["type"], "response.sent");
    assert_eq!(a.recv_json().await.unwrap()["type"], "call.accepted");
    assert_eq!(error(&mut g, answer).await.0, "no_pending_invite");
    // Errors never closed anything.
    a.send_json(&json!({"type": "ping"})).await.unwrap();
    assert_eq!(a.recv_json().await.unwrap(), json!({"type": "pong"}));
}

async fn no_cross_business_reach(db: Db) {
    let d = world(db, DaemonOptions::default()).await;
    // Agent A4 is in B2 only; guest G1 is in B1.
    let mut a4 = agent(&d, json!(723), "").await;
    assert_eq!(a4.recv_json().await.unwrap()["business_id"], B2);
    let mut g = guest(&d, G1, Some(B1)).await;
    g.recv_json().await.unwrap();
    // Naming the B1 guest under B2 finds nobody; naming B1 is refused.
    assert_eq!(
        error(&mut a4, json!({"type": "call.invite", "to_guest_id": G1, "business_id": B2, "room_id": "r"})).await.0,
        "target_offline"
    );
    assert_eq!(
        error(&mut a4, json!({"type": "call.invite", "to_guest_id": G1, "business_id": B1, "room_id": "r"})).await.0,
        "wrong_business"
    );
    // The B1 guest cannot ring the B2 agent, by agent id or by user id.
    assert_eq!(
        error(&mut g, json!({"type": "call.invite", "to_agent_id": A4, "business_id": B1, "room_id": "r"})).await.0,
        "target_offline"
    );
    assert_eq!(
        error(&mut g, json!({"type": "call.invite", "to_agent_id": "723", "business_id": B1, "room_id": "r"})).await.0,
        "target_offline"
    );
    // A guest with the same id in B2 is a different guest.
    let mut g_b2 = guest(&d, G1, Some(B2)).await;
    g_b2.recv_json().await.unwrap();
    a4.send_json(&json!({"type": "call.invite", "to_guest_id": G1, "business_id": B2, "room_id": "r"})).await.unwrap();
    assert_eq!(a4.recv_json().await.unwrap()["type"], "invite.sent");
    assert_eq!(g_b2.recv_json().await.unwrap()["business_id"], B2);
    g.expect_silence(Duration::from_millis(300)).await.unwrap();
}

async fn invite_times_out(db: Db) {
    let d = world(db, DaemonOptions { signaling_config: "invite_timeout_secs = 1".into(), ..Default::default() }).await;
    let (mut a, mut g) = pair(&d).await;
    a.send_json(&json!({"type": "call.invite", "to_guest_id": G1, "business_id": B1, "room_id": "late"}))
        .await
        .unwrap();
    assert_eq!(a.recv_json().await.unwrap()["type"], "invite.sent");
    assert_eq!(g.recv_json().await.unwrap()["type"], "call.ring");
    let t0 = std::time::Instant::now();
    assert_eq!(
        a.recv_json().await.unwrap(),
        json!({"type": "call.timeout", "to_guest_id": G1, "business_id": B1, "room_id": "late"})
    );
    assert_eq!(
        g.recv_json().await.unwrap(),
        json!({"type": "call.timeout", "from_agent_id": A1, "business_id": B1, "room_id": "late"})
    );
    // Fired (after ~1 s; how late depends on the machine's load, so the bound is generous).
    assert!(t0.elapsed() < PATIENCE);
    assert_eq!(
        error(
            &mut g,
            json!({"type": "call.response", "to_agent_id": A1, "business_id": B1, "room_id": "late", "accept": true})
        )
        .await
        .0,
        "no_pending_invite"
    );
}

/// Send `call.invite` from a guest to agent A1 in B1, room `room`; the answer's `type`, or the
/// error's code.
async fn guest_invite(g: &mut Client, room: &str) -> String {
    g.send_json(&json!({"type": "call.invite", "to_agent_id": A1, "business_id": B1, "room_id": room})).await.unwrap();
    let m = g.recv_json().await.unwrap();
    match m["type"].as_str() {
        Some("error") => m["code"].as_str().unwrap().to_string(),
        _ => m["type"].as_str().unwrap().to_string(),
    }
}

/// Read `n` rings at the agent and return their room ids in order.
async fn rings(a: &mut Client, n: usize) -> Vec<String> {
    let mut rooms = Vec::new();
    for _ in 0..n {
        let m = a.recv_json().await.unwrap();
        assert_eq!(m["type"], "call.ring", "{m}");
        rooms.push(m["room_id"].as_str().unwrap().to_string());
    }
    rooms
}

async fn pending_invites_are_capped_per_connection_and_per_guest(db: Db) {
    // A timeout far longer than the test: no invite expires on its own, however slow the machine.
    let config =
        "invite_timeout_secs = 3600\nmax_pending_invites_per_connection = 3\nmax_pending_invites_per_guest = 5";
    let d = world(db, DaemonOptions { signaling_config: config.into(), ..Default::default() }).await;
    let (mut a, mut g) = pair(&d).await;
    // The abuse: one unauthenticated guest firing invites. Three ring, the rest are refused.
    let mut answers = Vec::new();
    for i in 0..50 {
        answers.push(guest_invite(&mut g, &format!("r{i}")).await);
    }
    assert_eq!(answers[..3], ["invite.sent", "invite.sent", "invite.sent"]);
    assert!(answers[3..].iter().all(|a| a == "too_many_invites"), "{answers:?}");
    assert_eq!(rings(&mut a, 3).await, ["r0", "r1", "r2"]);
    a.expect_silence(Duration::from_millis(300)).await.unwrap();
    // Inviting the same room again re-arms that invite: it counts once.
    assert_eq!(guest_invite(&mut g, "r0").await, "invite.sent");
    assert_eq!(rings(&mut a, 1).await, ["r0"]);
    // A second connection of the same guest has a list of its own, but the guest's cap (5) holds
    // across both: two more, then refused.
    let mut g2 = guest(&d, G1, Some(B1)).await;
    g2.recv_json().await.unwrap();
    assert_eq!(guest_invite(&mut g2, "s0").await, "invite.sent");
    assert_eq!(guest_invite(&mut g2, "s1").await, "invite.sent");
    let (code, message) =
        error(&mut g2, json!({"type": "call.invite", "to_agent_id": A1, "business_id": B1, "room_id": "s2"})).await;
    assert_eq!(code, "too_many_invites");
    assert!(message.contains("5 pending invites"), "{message}");
    assert_eq!(rings(&mut a, 2).await, ["s0", "s1"]);
    // An answer frees a place, on the connection and for the guest.
    a.send_json(
        &json!({"type": "call.response", "to_guest_id": G1, "business_id": B1, "room_id": "r1", "accept": false}),
    )
    .await
    .unwrap();
    assert_eq!(a.recv_json().await.unwrap()["type"], "response.sent");
    for c in [&mut g, &mut g2] {
        assert_eq!(c.recv_json().await.unwrap()["type"], "call.declined");
    }
    assert_eq!(guest_invite(&mut g, "r3").await, "invite.sent");
    assert_eq!(rings(&mut a, 1).await, ["r3"]);
    assert_eq!(guest_invite(&mut g2, "s3").await, "too_many_invites");
    // Another guest is not affected, and the agent's own invites are its own.
    let mut other = guest(&d, "another-guest", Some(B1)).await;
    other.recv_json().await.unwrap();
    assert_eq!(guest_invite(&mut other, "o0").await, "invite.sent");
    assert_eq!(rings(&mut a, 1).await, ["o0"]);
    a.send_json(&json!({"type": "call.invite", "to_guest_id": "another-guest", "business_id": B1, "room_id": "x"}))
        .await
        .unwrap();
    assert_eq!(a.recv_json().await.unwrap()["type"], "invite.sent");
    assert_eq!(other.recv_json().await.unwrap()["type"], "call.ring");
}

async fn long_ids_are_refused(db: Db) {
    // Frames as large as config/gatewayd.toml allows (64 KiB), so a 30 KB id reaches the plugin.
    let opts = DaemonOptions { main_listener: "max_message_bytes = 65536".into(), ..Default::default() };
    let d = world(db, opts).await;
    let (mut a, mut g) = pair(&d).await;
    // The abuse: 30 KB room ids. Refused, naming the field, without echoing it; nothing rings.
    let room = "r".repeat(30_000);
    let (code, message) =
        error(&mut g, json!({"type": "call.invite", "to_agent_id": A1, "business_id": B1, "room_id": room})).await;
    assert_eq!((code.as_str(), message.as_str()), ("field_too_long", "`room_id` is longer than 128 bytes"));
    let display = "d".repeat(257);
    let invite =
        json!({"type": "call.invite", "to_agent_id": A1, "business_id": B1, "room_id": "r", "caller_display": display});
    assert_eq!(
        error(&mut g, invite).await,
        ("field_too_long".into(), "`caller_display` is longer than 256 bytes".into())
    );
    let long = "x".repeat(129);
    for (field, msg) in [
        ("to_guest_id", json!({"type": "call.invite", "to_guest_id": long, "business_id": B1, "room_id": "r"})),
        (
            "business_id",
            json!({"type": "call.response", "to_guest_id": G1, "business_id": long, "room_id": "r", "accept": true}),
        ),
    ] {
        let (code, message) = error(&mut a, msg).await;
        assert_eq!(code, "field_too_long");
        assert!(message.starts_with(&format!("`{field}`")), "{message}");
    }
    a.expect_silence(Duration::from_millis(300)).await.unwrap();
    // At the bounds: accepted.
    let invite = json!({"type": "call.invite", "to_agent_id": A1, "business_id": B1, "room_id": "r".repeat(128), "caller_display": "d".repeat(256)});
    g.send_json(&invite).await.unwrap();
    assert_eq!(g.recv_json().await.unwrap()["type"], "invite.sent");
    assert_eq!(a.recv_json().await.unwrap()["room_id"], "r".repeat(128));
    // Long ids in the URL close the connection with 4002 before anything is looked up.
    for query in [format!("guest_id={long}"), format!("guest_id=g&business_id={long}")] {
        let mut c = Client::connect(&d.ws_url(&format!("/ws/signaling/?{query}"))).await.unwrap();
        let (code, reason) = c.recv_close().await.unwrap();
        assert_eq!(code, 4002, "{reason}");
        assert!(reason.ends_with("is longer than 128 bytes"), "{reason}");
    }
}

on_both_backends!(
    spec_flow,
    invite_agent_by_user_id,
    membership_rules,
    tokens_refused_at_handshake,
    audience_and_issuer,
    guest_connection_rules,
    errors_where_the_spec_is_silent,
    no_cross_business_reach,
    invite_times_out,
    pending_invites_are_capped_per_connection_and_per_guest,
    long_ids_are_refused,
);
