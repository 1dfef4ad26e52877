//! rooms.md in real browsers: two headless Chromium pages (Debian's `chromium`, driven by
//! `chromedriver` over the WebDriver protocol with plain HTTP) open the rooms WebSocket through
//! the real gateway, join one room, exchange offer/answer/ICE through it and reach ICE
//! `connected`/`completed` with fake audio devices. Then one leaves (the other sees
//! `room:participant-left`) and the last one leaving gets `room:closed`.
//!
//! Needs `chromium` and `chromium-driver` (`.ci/run` installs them); fails when they are missing.

use gatewayd_e2e::webdriver::{Driver, Page};
use gatewayd_e2e::*;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PAGE: &str = include_str!("../assets/rooms_page.html");
/// Fake audio devices, granted without asking, and ICE over loopback.
const MEDIA_ARGS: &[&str] =
    &["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream", "--allow-loopback-in-peer-connection"];

/// The events the test page recorded (`window.events`).
async fn events(page: &Page<'_>) -> Vec<Value> {
    page.run("return window.events;", json!([])).await.as_array().cloned().unwrap_or_default()
}

/// Wait (up to [`PATIENCE`]) until an event satisfies `pred`; fails with the page's events.
async fn wait_event(page: &Page<'_>, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    page.wait_for(what, "return window.events;", |events| {
        events.as_array().and_then(|events| events.iter().find(|e| pred(e))).cloned()
    })
    .await
}

/// Wait (up to [`PATIENCE`]) for ICE `connected` or `completed`; fails at once on `failed`.
async fn wait_ice_connected(page: &Page<'_>) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let state = page.run("return window.ice;", json!([])).await.as_str().unwrap_or("").to_string();
        if state == "connected" || state == "completed" {
            return state;
        }
        assert!(
            Instant::now() < deadline && state != "failed",
            "ICE state {state} after {PATIENCE:?}; page events: {:?}",
            events(page).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Serve the test page on a loopback port (any path) until the test ends.
async fn serve_page() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut read = 0;
                while !buf[..read].windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf[read..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => read += n,
                    }
                    if read == buf.len() {
                        return;
                    }
                }
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    PAGE.len()
                );
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(PAGE.as_bytes()).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_browsers_connect_through_a_room() {
    let d = Daemon::start(DaemonOptions::default()).await.expect("daemon starts");
    // Rooms belong to a business: the creator (user 1) and the two browsers' agents (users 2
    // and 3) are agents of one.
    let tenants = json!({
        "businesses": [{"id": "acme"}],
        "agents": [{"id": "creator", "user_id": 1}, {"id": "alpha", "user_id": 2}, {"id": "beta", "user_id": 3}],
        "memberships": [
            {"agent_id": "creator", "business_id": "acme"},
            {"agent_id": "alpha", "business_id": "acme"},
            {"agent_id": "beta", "business_id": "acme"},
        ],
    });
    let file = d.dir.path().join("tenants.json");
    std::fs::write(&file, tenants.to_string()).unwrap();
    d.cli(&["tenant", "import", file.to_str().unwrap()]).expect("tenant import");
    let created = http_request(
        d.rooms_addr,
        "POST",
        "/api/v1/rooms",
        Some(&agent_token(json!(1))),
        Some(&json!({"name": "browser", "settings": {"max_participants": 2}})),
    )
    .await
    .unwrap();
    assert_eq!(created.status, 201);
    let room = created.body["id"].as_str().unwrap().to_string();
    let page_url = format!("http://{}/rooms.html", serve_page().await);
    // Each page connects with its agent's token (`?token=`, as a browser can).
    let ws_url = |user: u64| format!("ws://{}/ws?token={}", d.rooms_addr, agent_token(json!(user)));

    let driver = Driver::start().await;
    let profiles = tempdir::TempDir::new("gatewayd-chromium");
    let alpha = driver.browser(&profiles.path().join("alpha"), MEDIA_ARGS).await;
    let beta = driver.browser(&profiles.path().join("beta"), MEDIA_ARGS).await;
    for p in [&alpha, &beta] {
        p.goto(&page_url).await;
    }

    alpha.run("window.start(arguments[0], arguments[1], arguments[2]);", json!([ws_url(2), room, "alpha"])).await;
    let ja = wait_event(&alpha, "room:joined", |e| e["type"] == "room:joined").await;
    beta.run("window.start(arguments[0], arguments[1], arguments[2]);", json!([ws_url(3), room, "beta"])).await;
    let jb = wait_event(&beta, "room:joined", |e| e["type"] == "room:joined").await;
    let (pa, pb) = (ja["participantId"].clone(), jb["participantId"].clone());

    // alpha offers to beta on room:participant-joined; the answer and ICE go back through the
    // gateway until both peers are connected.
    let offer = wait_event(&beta, "webrtc:offer", |e| e["type"] == "webrtc:offer").await;
    assert_eq!(offer["fromParticipantId"], pa);
    assert!(offer["offer"]["sdp"].as_str().unwrap().contains("m=audio"));
    let answer = wait_event(&alpha, "webrtc:answer", |e| e["type"] == "webrtc:answer").await;
    assert_eq!(answer["fromParticipantId"], pb);
    let a_state = wait_ice_connected(&alpha).await;
    let b_state = wait_ice_connected(&beta).await;
    eprintln!("ICE: alpha {a_state}, beta {b_state}");
    for p in [&alpha, &beta] {
        let candidate = wait_event(p, "webrtc:ice-candidate", |e| e["type"] == "webrtc:ice-candidate").await;
        assert!(candidate["candidate"]["candidate"].as_str().unwrap().starts_with("candidate:"));
    }
    let listed =
        http_request(d.rooms_addr, "GET", &format!("/api/v1/rooms/{room}"), Some(&agent_token(json!(1))), None)
            .await
            .unwrap();
    assert_eq!(listed.body["status"], "active");

    // alpha leaves: beta sees it. beta, the last one, leaves: the room closes.
    alpha.run("window.leave();", json!([])).await;
    let left = wait_event(&beta, "room:participant-left", |e| e["type"] == "room:participant-left").await;
    assert_eq!(left, json!({"type": "room:participant-left", "participantId": pa, "reason": "user_left"}));
    beta.run("window.leave();", json!([])).await;
    let closed = wait_event(&beta, "room:closed", |e| e["type"] == "room:closed").await;
    assert_eq!(closed, json!({"type": "room:closed", "roomId": room, "reason": "all_participants_left"}));
    for p in [&alpha, &beta] {
        let errors: Vec<Value> =
            events(p).await.into_iter().filter(|e| e["type"] == "page-error" || e["type"] == "room:error").collect();
        assert!(errors.is_empty(), "{errors:?}");
    }
    alpha.close().await;
    beta.close().await;
}
