//! chat.md end to end: the real daemon with the chat plugin, a real HTTP client (hyper) and a
//! real WebSocket client, on SQLite and on the local PostgreSQL server.

use anyhow::{Result, anyhow};
use bytes::Bytes;
use gatewayd_e2e::*;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use std::time::Duration;

const B1: &str = "c1000000-0000-4000-8000-000000000001";
const B2: &str = "c2000000-0000-4000-8000-000000000002";
const D1: &str = "c1d00000-0000-4000-8000-000000000001";
const A1: &str = "ca100000-0000-4000-8000-000000000001"; // user 820: B1
const A2: &str = "ca200000-0000-4000-8000-000000000002"; // user 821: B2
const A3: &str = "ca300000-0000-4000-8000-000000000003"; // user 822: no membership

/// Smallest valid PNG header and some bytes: `infer` recognises image/png.
const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x06\0\0\0\x1f\x15\xc4\x89rest-of-image";
const PDF: &[u8] = b"%PDF-1.4\n1 0 obj << >> endobj\ntrailer << >>\n%%EOF\n";

async fn world_with(db: Db, max_file_bytes: usize, extra_config: &str) -> Daemon {
    let opts = DaemonOptions {
        db,
        extra_toml: chat_toml("media", max_file_bytes, &["image/png", "image/jpeg", "application/pdf"], extra_config),
        auth_extra: format!("signing = {{ algorithm = \"HS256\", secret = \"{TEST_SECRET}\" }}"),
        ..DaemonOptions::default()
    };
    let d = Daemon::start(opts).await.expect("daemon starts");
    let cmds: Vec<Vec<&str>> = vec![
        vec!["add-business", B1, "--name", "Acme"],
        vec!["add-business", B2, "--name", "Globex"],
        vec!["add-department", D1, "--business", B1],
        vec!["add-agent", A1, "--user-id", "820"],
        vec!["add-agent", A2, "--user-id", "821"],
        vec!["add-agent", A3, "--user-id", "822"],
        vec!["add-membership", "--agent", A1, "--business", B1],
        vec!["add-membership", "--agent", A2, "--business", B2],
    ];
    for c in cmds {
        let mut args = vec!["tenant"];
        args.extend(c);
        d.cli(&args).expect("tenant command");
    }
    d
}

async fn world(db: Db) -> Daemon {
    world_with(db, 65_536, "").await
}

/// A response: status, headers, body.
struct Response {
    status: u16,
    headers: hyper::HeaderMap,
    body: Vec<u8>,
}

impl Response {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&self.body)))
    }
}

/// One HTTP/1.1 request over a fresh TCP connection (hyper client).
async fn request(d: &Daemon, method: &str, path: &str, headers: &[(&str, String)], body: Vec<u8>) -> Result<Response> {
    let stream = tokio::net::TcpStream::connect(d.addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut req = hyper::Request::builder().method(method).uri(path).header("host", d.addr.to_string());
    for (k, v) in headers {
        req = req.header(*k, v.as_str());
    }
    let resp = sender.send_request(req.body(Full::new(Bytes::from(body)))?).await?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await?.to_bytes().to_vec();
    Ok(Response { status, headers, body })
}

fn bearer(token: &str) -> (&'static str, String) {
    ("authorization", format!("Bearer {token}"))
}

async fn get(d: &Daemon, path: &str, token: Option<&str>) -> Response {
    let headers: Vec<_> = token.map(bearer).into_iter().collect();
    request(d, "GET", path, &headers, Vec::new()).await.expect("GET")
}

async fn post_json(d: &Daemon, path: &str, token: Option<&str>, body: &Value) -> Response {
    let mut headers = vec![("content-type", "application/json".to_string())];
    headers.extend(token.map(bearer));
    request(d, "POST", path, &headers, body.to_string().into_bytes()).await.expect("POST")
}

/// A started session: (session_id, visitor_id, visitor token).
async fn start(d: &Daemon, body: Value, token: Option<&str>) -> (String, String, String) {
    let r = post_json(d, "/chat/start-session/", token, &body).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(v["message"], "Chat session started successfully");
    assert_eq!(v["data"]["active"], true);
    let s = |k: &str| v["data"][k].as_str().unwrap_or_else(|| panic!("data.{k} in {v}")).to_string();
    (s("session_id"), s("visitor_id"), s("token"))
}

/// A multipart part: (field name, file name, bytes, content type).
type Part<'a> = (&'a str, Option<&'a str>, &'a [u8], Option<&'a str>);

fn multipart(parts: &[Part]) -> (String, Vec<u8>) {
    let boundary = "gatewaydtestboundary7MA4YWxkTrZu0gW";
    let mut body = Vec::new();
    for (name, file_name, data, ctype) in parts {
        body.extend_from_slice(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"").as_bytes());
        if let Some(f) = file_name {
            body.extend_from_slice(b"; filename=\"");
            body.extend_from_slice(f.as_bytes());
            body.extend_from_slice(b"\"");
        }
        body.extend_from_slice(b"\r\n");
        if let Some(c) = ctype {
            body.extend_from_slice(format!("Content-Type: {c}\r\n").as_bytes());
        }
        body.extend_from_slice(b"\r\n");
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

async fn upload(d: &Daemon, token: Option<&str>, parts: &[Part<'_>]) -> Response {
    let (ctype, body) = multipart(parts);
    let mut headers = vec![("content-type", ctype)];
    headers.extend(token.map(bearer));
    request(d, "POST", "/chat/upload-file/", &headers, body).await.expect("upload")
}

/// Connect to the chat socket with `Sec-WebSocket-Protocol: Bearer, <token>`.
async fn connect(d: &Daemon, query: &str, token: Option<&str>) -> Result<Client> {
    let url = d.ws_url(&format!("/ws/visitor-chat/{query}"));
    let protocol = token.map(|t| format!("Bearer, {t}"));
    let headers: Vec<(&str, &str)> = protocol.iter().map(|p| ("Sec-WebSocket-Protocol", p.as_str())).collect();
    Client::connect_with(&url, &headers).await?.map_err(|r| anyhow!("refused: {} {}", r.status, r.body))
}

/// Connect and expect `connection_established`.
async fn join(d: &Daemon, session_id: &str, token: &str) -> Client {
    let mut c = connect(d, &format!("?session_id={session_id}"), Some(token)).await.expect("connects");
    assert_eq!(c.protocol.as_deref(), Some("Bearer"), "the server selects Bearer and never echoes the token");
    assert_eq!(c.recv_json().await.unwrap(), json!({"type": "connection_established", "session_id": session_id}));
    c
}

/// RFC 3339 UTC with milliseconds: `2025-07-02T12:00:00.000Z`.
fn assert_timestamp(v: &Value) {
    let t = v.as_str().unwrap_or_else(|| panic!("timestamp in {v}"));
    let b = t.as_bytes();
    let ok = t.len() == 24
        && b[4] == b'-'
        && b[10] == b'T'
        && b[19] == b'.'
        && b[23] == b'Z'
        && t.chars().filter(|c| c.is_ascii_digit()).count() == 17;
    assert!(ok, "not RFC 3339 UTC with milliseconds: {t}");
}

fn history_types(v: &Value) -> Vec<String> {
    v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| match e["type"].as_str().unwrap() {
            "message" => format!("message:{}", e["data"]["type"].as_str().unwrap()),
            t => t.to_string(),
        })
        .collect()
}

async fn spec_flow(db: Db) {
    let d = world(db).await;
    let (sid, visitor_id, vt) = start(&d, json!({"business": B1, "department": D1}), None).await;
    let at = agent_token(json!(820));
    let mut visitor = join(&d, &sid, &vt).await;
    let mut agent = join(&d, &sid, &at).await;

    // Text: stored, then broadcast to both with sender_id and timestamp.
    visitor.send_json(&json!({"type": "text", "content": "Hello, I need help!"})).await.unwrap();
    for c in [&mut visitor, &mut agent] {
        let m = c.recv_json().await.unwrap();
        assert_eq!(m["type"], "text");
        assert_eq!(m["content"], "Hello, I need help!");
        assert_eq!(m["sender_id"], visitor_id.as_str());
        assert_timestamp(&m["timestamp"]);
        assert_eq!(m.as_object().unwrap().len(), 4, "exactly the spec's fields: {m}");
    }
    agent.send_json(&json!({"type": "text", "content": "How can I help?"})).await.unwrap();
    for c in [&mut visitor, &mut agent] {
        let m = c.recv_json().await.unwrap();
        assert_eq!(m["sender_id"], A1);
    }

    // File: upload over HTTP, then send its URL on the socket.
    let r = upload(
        &d,
        Some(&vt),
        &[("file", Some("example.png"), PNG, Some("image/png")), ("message", None, b"null", None)],
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let up = r.json();
    assert_eq!(up["message"], "File uploaded successfully");
    assert_eq!(up["data"]["file_name"], "example.png");
    let url = up["data"]["file"].as_str().unwrap().to_string();
    assert!(url.starts_with("http://chat.test/chat/media/") && url.ends_with(".png"), "{url}");
    visitor.send_json(&json!({"type": "file", "file": url, "is_audio": false})).await.unwrap();
    for c in [&mut visitor, &mut agent] {
        let m = c.recv_json().await.unwrap();
        assert_eq!(m["type"], "file");
        assert_eq!(m["file"], url.as_str());
        assert_eq!(m["file_name"], "example.png");
        assert_eq!(m["is_audio"], false);
        assert_eq!(m["sender_id"], visitor_id.as_str());
        assert_timestamp(&m["timestamp"]);
    }
    // A URL that is not an upload of this session is refused.
    visitor.send_json(&json!({"type": "file", "file": "http://evil.test/x.pdf"})).await.unwrap();
    assert_eq!(visitor.recv_json().await.unwrap()["code"], "unknown_file");

    // The file is served back to the agent and the visitor with its sniffed type.
    let path = url.trim_start_matches("http://chat.test");
    for t in [&at, &vt] {
        let m = get(&d, path, Some(t)).await;
        assert_eq!(m.status, 200);
        assert_eq!(m.headers["content-type"], "image/png");
        assert_eq!(m.headers["x-content-type-options"], "nosniff");
        assert_eq!(m.body, PNG);
    }
    assert_eq!(get(&d, path, None).await.status, 401);
    assert_eq!(get(&d, &format!("{path}?token={vt}"), None).await.status, 200, "?token= works for <img src>");

    // History: messages and attachments in order, in the spec's envelope.
    let h = get(&d, &format!("/chat/history/{sid}/"), Some(&at)).await;
    assert_eq!(h.status, 200);
    let h = h.json();
    assert_eq!(h["message"], "Chat timeline fetched successfully");
    assert_eq!(history_types(&h), ["message:text", "message:text", "attachment", "message:file"]);
    assert_eq!(h["data"][0]["data"]["content"], "Hello, I need help!");
    assert_eq!(h["data"][2]["data"]["uploaded_by_end_user"], visitor_id.as_str());
    assert_eq!(h["data"][3]["data"]["file_name"], "example.png");
    assert_eq!(h["next_after"], Value::Null);
    assert_eq!(get(&d, &format!("/chat/history/{sid}/"), Some(&vt)).await.status, 200);

    // The agent ends the session on the socket: everyone gets session_ended, then 4006.
    agent.send_json(&json!({"type": "end_session"})).await.unwrap();
    for c in [&mut visitor, &mut agent] {
        let m = c.recv_json().await.unwrap();
        assert_eq!(m["type"], "session_ended");
        assert_eq!(m["message"], "The session has ended.");
        assert_timestamp(&m["timestamp"]);
        assert_eq!(c.recv_close().await.unwrap().0, 4006);
    }
    // Coming back to an ended session: the spec's error, then 4006.
    let mut again = connect(&d, &format!("?session_id={sid}"), Some(&vt)).await.unwrap();
    assert_eq!(
        again.recv_json().await.unwrap(),
        json!({"type": "error", "message": "This session has ended. No further communication is allowed."})
    );
    assert_eq!(again.recv_close().await.unwrap().0, 4006);
    // Uploads to an ended session are refused; the history stays readable.
    let r = upload(&d, Some(&vt), &[("file", Some("late.png"), PNG, None)]).await;
    assert_eq!(r.status, 409);
    assert_eq!(get(&d, &format!("/chat/history/{sid}/"), Some(&vt)).await.json()["data"].as_array().unwrap().len(), 4);
}

async fn close_codes(db: Db) {
    let d = world(db).await;
    let (sid, _, vt) = start(&d, json!({"business": B1}), None).await;
    let (other_sid, _, other_vt) = start(&d, json!({"business": B1}), None).await;
    let cases: Vec<(String, Option<String>, u16)> = vec![
        (String::new(), Some(vt.clone()), 4001),
        ("?session_id=".into(), Some(vt.clone()), 4001),
        ("?session_id=not-a-uuid".into(), Some(vt.clone()), 4002),
        (format!("?session_id={}", uuid::Uuid::new_v4()), Some(vt.clone()), 4002),
        (format!("?session_id={sid}"), None, 4003),
        (format!("?session_id={sid}"), Some(other_vt.clone()), 4003),
        (format!("?session_id={sid}"), Some(agent_token(json!(821))), 4003),
        (format!("?session_id={sid}"), Some(agent_token(json!(822))), 4003),
        (format!("?session_id={sid}"), Some(agent_token(json!(999))), 4003),
    ];
    for (query, token, code) in cases {
        let mut c = connect(&d, &query, token.as_deref()).await.unwrap();
        assert_eq!(c.recv_close().await.unwrap().0, code, "{query} with {token:?}");
    }
    // The right people still get in.
    join(&d, &other_sid, &other_vt).await;
    join(&d, &sid, &agent_token(json!(820))).await;
    // An invalid or expired token is refused by the daemon, never reaching the plugin: after the
    // upgrade, with chat.md's 4003 (`refused_token_close`), since a browser cannot see a 401.
    let bad = token_with(&json!({"user_id": 820, "exp": 4_102_444_800u64}), "another-secret-0123456789abcdef");
    let expired = token(&json!({"user_id": 820, "exp": 1_000_000_000u64}));
    for (what, t) in [("bad signature", bad), ("expired", expired)] {
        let mut c = connect(&d, &format!("?session_id={sid}"), Some(&t)).await.unwrap();
        let (code, reason) = c.recv_close().await.unwrap();
        assert_eq!(code, 4003, "{what}: {reason}");
        assert!(reason.starts_with("token_"), "{what}: {reason}");
    }
    // The same through `Sec-WebSocket-Protocol: Bearer, <jwt>`, as a browser sends it.
    let url = d.ws_url(&format!("/ws/visitor-chat/?session_id={sid}"));
    let offered = format!("Bearer, {}", token(&json!({"user_id": 820, "exp": 1_000_000_000u64})));
    let mut c = Client::connect_with(&url, &[("sec-websocket-protocol", &offered)]).await.unwrap().unwrap();
    assert_eq!(c.protocol.as_deref(), Some("Bearer"));
    assert_eq!(c.recv_close().await.unwrap().0, 4003);
}

async fn one_active_session(db: Db) {
    let d = world(db).await;
    // An external customer gets the same session back while it is active.
    let (s1, v1, _) = start(&d, json!({"business": B1, "external_customer_id": "cust-42"}), None).await;
    let (s2, v2, _) = start(&d, json!({"business": B1, "external_customer_id": "cust-42"}), None).await;
    assert_eq!((&s1, &v1), (&s2, &v2));
    // Another business is another session.
    let (s3, _, _) = start(&d, json!({"business": B2, "external_customer_id": "cust-42"}), None).await;
    assert_ne!(s1, s3);
    // A guest is recognised by its visitor token; without one it is a new guest.
    let (g1, gv1, gt1) = start(&d, json!({"business": B1}), None).await;
    let (g2, gv2, _) = start(&d, json!({"business": B1}), Some(&gt1)).await;
    assert_eq!((&g1, &gv1), (&g2, &gv2));
    let (g3, gv3, _) = start(&d, json!({"business": B1}), None).await;
    assert_ne!(g1, g3);
    assert_ne!(gv1, gv3);
    // Concurrent starts still yield one session.
    let starts = (0..8).map(|_| start(&d, json!({"business": B1, "external_customer_id": "cust-race"}), None));
    let ids: std::collections::BTreeSet<String> =
        futures_util::future::join_all(starts).await.into_iter().map(|(s, _, _)| s).collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    // Once ended (the visitor leaves), a start opens a new session for the same guest.
    let r = post_json(&d, &format!("/chat/end-session/{g1}/"), Some(&gt1), &json!({})).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["data"], json!({"session_id": g1, "active": false}));
    let (g4, gv4, _) = start(&d, json!({"business": B1}), Some(&gt1)).await;
    assert_ne!(g4, g1);
    assert_eq!(gv4, gv1, "same guest, new session");
    // Bad requests.
    for (body, status) in [
        (json!({"business": uuid::Uuid::new_v4().to_string()}), 404),
        (json!({"business": B1, "department": uuid::Uuid::new_v4().to_string()}), 404),
        (json!({"department": D1}), 400),
    ] {
        let r = post_json(&d, "/chat/start-session/", None, &body).await;
        assert_eq!(r.status, status, "{body}");
        assert!(r.json()["error"].is_string());
    }
    assert_eq!(get(&d, "/chat/start-session/", None).await.status, 405);
    assert_eq!(post_json(&d, "/chat/start-session", None, &json!({"business": B1})).await.status, 404);
    assert_eq!(get(&d, "/chat/nothing-here/", None).await.status, 404);
}

async fn upload_limits(db: Db) {
    let d = world_with(db, 4096, "").await;
    let (sid, visitor_id, vt) = start(&d, json!({"business": B1}), None).await;
    // Size limit from the files capability.
    let mut big = PNG.to_vec();
    big.resize(5000, 0);
    let r = upload(&d, Some(&vt), &[("file", Some("big.png"), &big, Some("image/png"))]).await;
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["error"], "file_too_large");
    // Spoofed content types: the header and name say PNG, the bytes are HTML.
    let r =
        upload(&d, Some(&vt), &[("file", Some("x.png"), b"<html><script>alert(1)</script></html>", Some("image/png"))])
            .await;
    assert_eq!(r.status, 415);
    assert_eq!(r.json()["error"], "unsupported_file_type");
    // Recognised but not allowed (a ZIP claiming to be a PDF).
    let r = upload(&d, Some(&vt), &[("file", Some("x.pdf"), b"PK\x03\x04\x14\0\0\0\0\0rest", Some("application/pdf"))])
        .await;
    assert_eq!(r.status, 415);
    // A PDF sent as image/png is stored and served as a PDF.
    let r = upload(&d, Some(&vt), &[("file", Some("doc.png"), PDF, Some("image/png"))]).await;
    assert_eq!(r.status, 200);
    let url = r.json()["data"]["file"].as_str().unwrap().to_string();
    assert!(url.ends_with(".pdf"), "{url}");
    let m = get(&d, url.trim_start_matches("http://chat.test"), Some(&vt)).await;
    assert_eq!(m.headers["content-type"], "application/pdf");
    assert_eq!(m.headers["content-disposition"], "attachment");
    // Hostile file names are refused.
    for name in ["../../etc/passwd.png", "a/b.png", "a\\b.png", "..", "bell\x07.png", "tab\t.png"] {
        let r = upload(&d, Some(&vt), &[("file", Some(name), PNG, None)]).await;
        assert_eq!(r.status, 400, "{name:?}: {}", String::from_utf8_lossy(&r.body));
    }
    let r = upload(&d, Some(&vt), &[("file", Some("nul\0.png"), PNG, None)]).await;
    assert_eq!(r.status, 400);
    // Nothing escaped the media directory.
    assert!(!d.dir.path().join("etc").exists());
    // Identity fields must name the caller.
    let r = upload(
        &d,
        Some(&vt),
        &[("file", Some("a.png"), PNG, None), ("uploaded_by_end_user", None, b"someone-else", None)],
    )
    .await;
    assert_eq!(r.status, 403);
    let r = upload(
        &d,
        Some(&vt),
        &[("file", Some("a.png"), PNG, None), ("uploaded_by_end_user", None, visitor_id.as_bytes(), None)],
    )
    .await;
    assert_eq!(r.status, 200);
    // Agents name the session; unknown related messages are refused; no token is 401.
    let at = agent_token(json!(820));
    let r = upload(&d, Some(&at), &[("file", Some("a.png"), PNG, None)]).await;
    assert_eq!(r.status, 400);
    let r = upload(
        &d,
        Some(&at),
        &[
            ("file", Some("a.png"), PNG, None),
            ("session_id", None, sid.as_bytes(), None),
            ("uploaded_by_agent", None, A1.as_bytes(), None),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let r = upload(&d, Some(&vt), &[("file", Some("a.png"), PNG, None), ("message", None, b"999999", None)]).await;
    assert_eq!(r.status, 400);
    assert_eq!(upload(&d, None, &[("file", Some("a.png"), PNG, None)]).await.status, 401);
    let r =
        request(&d, "POST", "/chat/upload-file/", &[bearer(&vt), ("content-type", "text/plain".into())], b"x".to_vec())
            .await
            .unwrap();
    assert_eq!(r.status, 400);
}

async fn other_business_refused(db: Db) {
    let d = world(db).await;
    let (sid, _, vt) = start(&d, json!({"business": B1}), None).await;
    let r = upload(&d, Some(&vt), &[("file", Some("a.png"), PNG, None)]).await;
    let path = r.json()["data"]["file"].as_str().unwrap().trim_start_matches("http://chat.test").to_string();
    let (_, _, other_vt) = start(&d, json!({"business": B1}), None).await;
    for t in [agent_token(json!(821)), other_vt.clone()] {
        assert_eq!(get(&d, &format!("/chat/history/{sid}/"), Some(&t)).await.status, 403);
        assert_eq!(get(&d, &path, Some(&t)).await.status, 403);
        let r = upload(&d, Some(&t), &[("file", Some("a.png"), PNG, None), ("session_id", None, sid.as_bytes(), None)])
            .await;
        assert_eq!(r.status, 403);
        assert_eq!(post_json(&d, &format!("/chat/end-session/{sid}/"), Some(&t), &json!({})).await.status, 403);
        let mut c = connect(&d, &format!("?session_id={sid}"), Some(&t)).await.unwrap();
        assert_eq!(c.recv_close().await.unwrap().0, 4003);
    }
    // An agent without a membership is refused too; no token is 401.
    assert_eq!(get(&d, &format!("/chat/history/{sid}/"), Some(&agent_token(json!(822)))).await.status, 403);
    assert_eq!(get(&d, &format!("/chat/history/{sid}/"), None).await.status, 401);
    assert_eq!(get(&d, &format!("/chat/history/{}/", uuid::Uuid::new_v4()), Some(&vt)).await.status, 404);
    // The session is still active and its own agent gets in.
    join(&d, &sid, &agent_token(json!(820))).await;
}

async fn http_end_and_history_pages(db: Db) {
    let d = world(db).await;
    let (sid, _, vt) = start(&d, json!({"business": B1}), None).await;
    let at = agent_token(json!(820));
    let mut visitor = join(&d, &sid, &vt).await;
    for i in 0..7 {
        visitor.send_json(&json!({"type": "text", "content": format!("m{i}")})).await.unwrap();
        assert_eq!(visitor.recv_json().await.unwrap()["content"], format!("m{i}"));
    }
    // Pages of 3: ordered, complete, no overlap.
    let mut seen = Vec::new();
    let mut after = 0;
    loop {
        let h = get(&d, &format!("/chat/history/{sid}/?limit=3&after={after}"), Some(&at)).await.json();
        for e in h["data"].as_array().unwrap() {
            seen.push(e["data"]["content"].as_str().unwrap().to_string());
        }
        match h["next_after"].as_i64() {
            Some(n) => after = n,
            None => break,
        }
    }
    assert_eq!(seen, (0..7).map(|i| format!("m{i}")).collect::<Vec<_>>());
    assert_eq!(get(&d, &format!("/chat/history/{sid}/?limit=0"), Some(&at)).await.status, 400);
    // The agent ends it over HTTP: the visitor gets session_ended and 4006.
    let r = post_json(&d, &format!("/chat/end-session/{sid}/"), Some(&at), &json!({})).await;
    assert_eq!(r.status, 200);
    assert_eq!(visitor.recv_json().await.unwrap()["type"], "session_ended");
    assert_eq!(visitor.recv_close().await.unwrap().0, 4006);
    assert_eq!(post_json(&d, &format!("/chat/end-session/{sid}/"), Some(&at), &json!({})).await.status, 409);
}

async fn message_limits(db: Db) {
    // A refill rate so low (one token per 1,000 s) that no token comes back during the test,
    // however slow the machine: the counts below are exact.
    let d = world_with(db, 65_536, "max_message_chars = 10\nrate_per_sec = 0.001\nrate_burst = 5.0").await;
    let (sid, _, vt) = start(&d, json!({"business": B1}), None).await;
    let mut v = join(&d, &sid, &vt).await;
    v.send_json(&json!({"type": "text", "content": "01234567890"})).await.unwrap();
    let e = v.recv_json().await.unwrap();
    assert_eq!((e["type"].as_str(), e["code"].as_str()), (Some("error"), Some("message_too_long")));
    v.send_text("not json").await.unwrap();
    assert_eq!(v.recv_json().await.unwrap()["code"], "invalid_message");
    v.send_json(&json!({"type": "shout"})).await.unwrap();
    assert_eq!(v.recv_json().await.unwrap()["code"], "unknown_type");
    // Every frame takes a token: 2 are left of the burst of 5. The next 2 messages pass, the
    // other 4 are refused.
    let mut answers = Vec::new();
    for i in 0..6 {
        v.send_json(&json!({"type": "text", "content": format!("r{i}")})).await.unwrap();
        let m = v.recv_json().await.unwrap();
        answers.push(match m["type"].as_str() {
            Some("error") => m["code"].as_str().unwrap().to_string(),
            _ => m["content"].as_str().unwrap().to_string(),
        });
    }
    assert_eq!(answers, ["r0", "r1", "rate_limited", "rate_limited", "rate_limited", "rate_limited"]);
    // The connection stays usable once the bucket refills: reload the plugin with a fast
    // refill (1,000 tokens/s) and wait a little; waiting longer only adds tokens.
    let config = std::fs::read_to_string(&d.config_path).unwrap();
    std::fs::write(&d.config_path, config.replace("rate_per_sec = 0.001", "rate_per_sec = 1000.0")).unwrap();
    let reloaded = std::time::Instant::now();
    while !d.logs().iter().any(|l| l.contains("plugin reloaded") && l.contains("chat")) {
        assert!(
            reloaded.elapsed() < Duration::from_secs(60),
            "the chat plugin was not reloaded:\n{}",
            d.logs().join("\n")
        );
        let _ = std::process::Command::new("kill").args(["-HUP", &d.pid().to_string()]).status();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    v.send_json(&json!({"type": "text", "content": "later"})).await.unwrap();
    assert_eq!(v.recv_json().await.unwrap()["content"], "later");
}

async fn no_loss_across_sigterm(db: Db) {
    let mut d = world_with(db, 65_536, "rate_burst = 50.0").await;
    let (sid, _, vt) = start(&d, json!({"business": B1}), None).await;
    let at = agent_token(json!(820));
    let mut v = join(&d, &sid, &vt).await;
    let mut a = join(&d, &sid, &at).await;
    // An attachment and a file message first, so the restart covers every timeline kind.
    let r = upload(&d, Some(&vt), &[("file", Some("before.pdf"), PDF, None)]).await;
    let url = r.json()["data"]["file"].as_str().unwrap().to_string();
    v.send_json(&json!({"type": "file", "file": url, "is_audio": true})).await.unwrap();
    for c in [&mut v, &mut a] {
        assert_eq!(c.recv_json().await.unwrap()["type"], "file");
    }
    let mut acked = Vec::new();
    for i in 0..20 {
        v.send_json(&json!({"type": "text", "content": format!("n{i}")})).await.unwrap();
    }
    // Stop as soon as the agent has seen the last broadcast.
    for _ in 0..20 {
        acked.push(a.recv_json().await.unwrap()["content"].as_str().unwrap().to_string());
    }
    let status = d.stop().unwrap();
    assert!(status.success(), "{status}");
    d.restart().await.unwrap();
    let h = get(&d, &format!("/chat/history/{sid}/"), Some(&at)).await.json();
    assert_eq!(history_types(&h)[..2], ["attachment", "message:file"]);
    assert_eq!(h["data"][1]["data"]["is_audio"], true);
    let stored: Vec<String> =
        h["data"].as_array().unwrap()[2..].iter().map(|e| e["data"]["content"].as_str().unwrap().to_string()).collect();
    assert_eq!(stored, acked, "every acknowledged message is in the history, in order");
    // And the session carries on after the restart.
    let mut v = join(&d, &sid, &vt).await;
    v.send_json(&json!({"type": "text", "content": "after"})).await.unwrap();
    assert_eq!(v.recv_json().await.unwrap()["content"], "after");
}

/// The files in the test daemon's media directory (hidden `.part` files included: none may
/// be left over).
fn media_files(d: &Daemon) -> std::collections::BTreeSet<String> {
    match std::fs::read_dir(d.dir.path().join("media")) {
        Ok(entries) => entries.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect(),
        Err(_) => Default::default(),
    }
}

/// The stored name of an upload's URL.
fn stored_name(r: &Response) -> String {
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let url = r.json()["data"]["file"].as_str().unwrap().to_string();
    url.rsplit('/').next().unwrap().to_string()
}

/// A PNG of exactly `len` bytes (the header, then padding).
fn png(len: usize) -> Vec<u8> {
    let mut v = PNG.to_vec();
    v.resize(len, 0);
    v
}

async fn uploads_over_the_session_quota_are_refused(db: Db) {
    let d = world_with(db, 65_536, "max_uploads_per_session = 3\nmax_upload_bytes_per_session = 1000").await;
    // Count: three files, then 403; nothing of the refused ones is kept.
    let (_, _, vt) = start(&d, json!({"business": B1}), None).await;
    let mut kept = std::collections::BTreeSet::new();
    for _ in 0..3 {
        kept.insert(stored_name(&upload(&d, Some(&vt), &[("file", Some("a.png"), PNG, None)]).await));
    }
    for _ in 0..5 {
        let r = upload(&d, Some(&vt), &[("file", Some("a.png"), PNG, None)]).await;
        assert_eq!(r.status, 403, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.json()["error"], "session_upload_quota");
        assert!(r.json()["message"].as_str().unwrap().contains("at most 3 files and 1000 bytes"));
    }
    assert_eq!(media_files(&d), kept);
    // Bytes: 600 fit, 600 more do not (and count nothing), a small one still fits.
    let (_, _, vt2) = start(&d, json!({"business": B1}), None).await;
    kept.insert(stored_name(&upload(&d, Some(&vt2), &[("file", Some("b.png"), &png(600), None)]).await));
    let r = upload(&d, Some(&vt2), &[("file", Some("b.png"), &png(600), None)]).await;
    assert_eq!((r.status, r.json()["error"].as_str()), (403, Some("session_upload_quota")));
    kept.insert(stored_name(&upload(&d, Some(&vt2), &[("file", Some("c.png"), &png(400), None)]).await));
    assert_eq!(media_files(&d), kept);
    // Concurrent uploads to a fresh session cannot pass the cap together: exactly 3 of 12 pass.
    let (sid3, _, vt3) = start(&d, json!({"business": B1}), None).await;
    let uploads = (0..12).map(|_| upload(&d, Some(&vt3), &[("file", Some("d.png"), PNG, None)]));
    let statuses: Vec<u16> = futures_util::future::join_all(uploads).await.iter().map(|r| r.status).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 3, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 403).count(), 9, "{statuses:?}");
    assert_eq!(media_files(&d).len(), kept.len() + 3, "exactly the accepted files are on disk");
    let h = get(&d, &format!("/chat/history/{sid3}/"), Some(&vt3)).await.json();
    assert_eq!(history_types(&h), ["attachment"; 3], "exactly the accepted uploads are in the timeline");
}

async fn uploads_over_the_ip_quota_get_429(db: Db) {
    let config = "max_uploads_per_ip = 4\nmax_upload_bytes_per_ip = 2000\nupload_ip_window_secs = 3600";
    let d = world_with(db, 65_536, config).await;
    // Two sessions from one address share its window.
    let (_, _, vt1) = start(&d, json!({"business": B1}), None).await;
    let (_, _, vt2) = start(&d, json!({"business": B1}), None).await;
    for vt in [&vt1, &vt1, &vt2] {
        assert_eq!(upload(&d, Some(vt), &[("file", Some("a.png"), &png(600), None)]).await.status, 200);
    }
    // 1,800 bytes so far: 600 more would pass 2,000.
    let r = upload(&d, Some(&vt2), &[("file", Some("a.png"), &png(600), None)]).await;
    assert_eq!(r.status, 429, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["error"], "upload_rate_limited");
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=3600).contains(&retry), "{retry}");
    // A small one fits the bytes (the refused one counted nothing); the fifth file does not.
    assert_eq!(upload(&d, Some(&vt2), &[("file", Some("a.png"), PNG, None)]).await.status, 200);
    let r = upload(&d, Some(&vt1), &[("file", Some("a.png"), PNG, None)]).await;
    assert_eq!((r.status, r.json()["error"].as_str()), (429, Some("upload_rate_limited")));
    assert_eq!(media_files(&d).len(), 4);
    // Refused uploads disturbed nothing else: the session still chats.
    let (sid, _, _) = start(&d, json!({"business": B1}), Some(&vt1)).await;
    let mut v = join(&d, &sid, &vt1).await;
    v.send_json(&json!({"type": "text", "content": "still here"})).await.unwrap();
    assert_eq!(v.recv_json().await.unwrap()["content"], "still here");
}

async fn end_session_removes_the_files(db: Db) {
    let d = world(db).await;
    let (sid, _, vt) = start(&d, json!({"business": B1}), None).await;
    let (other_sid, _, other_vt) = start(&d, json!({"business": B1}), None).await;
    let a = stored_name(&upload(&d, Some(&vt), &[("file", Some("a.png"), PNG, None)]).await);
    let b = stored_name(&upload(&d, Some(&vt), &[("file", Some("b.pdf"), PDF, None)]).await);
    let kept = stored_name(&upload(&d, Some(&other_vt), &[("file", Some("c.png"), PNG, None)]).await);
    assert_eq!(media_files(&d), [a.clone(), b.clone(), kept.clone()].into());
    assert_eq!(get(&d, &format!("/chat/media/{a}"), Some(&vt)).await.status, 200);
    // Ending over HTTP removes that session's files at once, and only those.
    let r = post_json(&d, &format!("/chat/end-session/{sid}/"), Some(&vt), &json!({})).await;
    assert_eq!(r.status, 200);
    assert_eq!(media_files(&d), [kept.clone()].into());
    assert_eq!(get(&d, &format!("/chat/media/{a}"), Some(&vt)).await.status, 404);
    assert_eq!(get(&d, &format!("/chat/media/{kept}"), Some(&other_vt)).await.status, 200);
    // The history still lists what was uploaded.
    let h = get(&d, &format!("/chat/history/{sid}/"), Some(&vt)).await.json();
    assert_eq!(history_types(&h), ["attachment", "attachment"]);
    // Ending on the socket does the same.
    let mut v = join(&d, &other_sid, &other_vt).await;
    v.send_json(&json!({"type": "end_session"})).await.unwrap();
    assert_eq!(v.recv_json().await.unwrap()["type"], "session_ended");
    assert_eq!(v.recv_close().await.unwrap().0, 4006);
    assert!(media_files(&d).is_empty(), "{:?}", media_files(&d));
    // Uploading to an ended session keeps nothing.
    let r = upload(&d, Some(&vt), &[("file", Some("late.png"), PNG, None)]).await;
    assert_eq!(r.status, 409);
    assert!(media_files(&d).is_empty());
}

async fn files_are_kept_for_the_retention(db: Db) {
    // A retention far longer than the test: the files outlive the end, and are still served.
    let d = world_with(db, 65_536, "file_retention_secs = 3600").await;
    let (sid, _, vt) = start(&d, json!({"business": B1}), None).await;
    let a = stored_name(&upload(&d, Some(&vt), &[("file", Some("a.png"), PNG, None)]).await);
    assert_eq!(post_json(&d, &format!("/chat/end-session/{sid}/"), Some(&vt), &json!({})).await.status, 200);
    assert_eq!(media_files(&d), [a.clone()].into());
    assert_eq!(get(&d, &format!("/chat/media/{a}"), Some(&vt)).await.status, 200);
    drop(d);
    // A retention of 1 s: gone once it has passed (the deadline is generous: the machine is
    // loaded; the assertion is only that it happens).
    let d = world_with(db, 65_536, "file_retention_secs = 1").await;
    let (sid, _, vt) = start(&d, json!({"business": B1}), None).await;
    let a = stored_name(&upload(&d, Some(&vt), &[("file", Some("a.png"), PNG, None)]).await);
    assert_eq!(post_json(&d, &format!("/chat/end-session/{sid}/"), Some(&vt), &json!({})).await.status, 200);
    let t0 = std::time::Instant::now();
    while media_files(&d).contains(&a) {
        assert!(t0.elapsed() < PATIENCE, "the file outlived its retention");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(get(&d, &format!("/chat/media/{a}"), Some(&vt)).await.status, 404);
}

async fn start_session_over_the_ip_rate_gets_429(db: Db) {
    let d = world_with(db, 65_536, "max_starts_per_ip = 5\nstart_ip_window_secs = 3600").await;
    // A refused request counts too: 1 bad + 2 good, then 2 of 10 concurrent ones pass.
    assert_eq!(post_json(&d, "/chat/start-session/", None, &json!({"department": D1})).await.status, 400);
    let (sid, _, vt) = start(&d, json!({"business": B1}), None).await;
    start(&d, json!({"business": B1}), None).await;
    let body = json!({"business": B1});
    let starts = (0..10).map(|_| post_json(&d, "/chat/start-session/", None, &body));
    let answers = futures_util::future::join_all(starts).await;
    let statuses: Vec<u16> = answers.iter().map(|r| r.status).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 2, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 8, "{statuses:?}");
    let refused = answers.iter().find(|r| r.status == 429).unwrap();
    assert_eq!(refused.json()["error"], "rate_limited");
    assert_eq!(refused.headers["content-type"], "application/json");
    let retry: u64 = refused.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=3600).contains(&retry), "{retry}");
    // Sessions already started are not disturbed.
    let mut v = join(&d, &sid, &vt).await;
    v.send_json(&json!({"type": "text", "content": "hello"})).await.unwrap();
    assert_eq!(v.recv_json().await.unwrap()["content"], "hello");
    // A client-sent address header is dropped, never believed.
    let r = request(
        &d,
        "POST",
        "/chat/start-session/",
        &[("content-type", "application/json".into()), ("x-gatewayd-remote-addr", "203.0.113.9:1".into())],
        json!({"business": B1}).to_string().into_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 429);
}

async fn sockets_of_one_session_share_one_rate(db: Db) {
    // No token comes back during the test (one per 1,000 s), so the counts are exact.
    let d = world_with(db, 65_536, "rate_per_sec = 0.001\nrate_burst = 6.0").await;
    let (sid, _, vt) = start(&d, json!({"business": B1}), None).await;
    let mut socks = [join(&d, &sid, &vt).await, join(&d, &sid, &vt).await, join(&d, &sid, &vt).await];
    let mut answers = Vec::new();
    for i in 0..12 {
        let sender = i % socks.len();
        socks[sender].send_json(&json!({"type": "text", "content": format!("m{i}")})).await.unwrap();
        let m = socks[sender].recv_json().await.unwrap();
        if m["type"] == "error" {
            answers.push(m["code"].as_str().unwrap().to_string());
            continue;
        }
        answers.push(m["content"].as_str().unwrap().to_string());
        for (j, c) in socks.iter_mut().enumerate() {
            if j != sender {
                assert_eq!(c.recv_json().await.unwrap()["content"], m["content"]);
            }
        }
    }
    let mut expected: Vec<String> = (0..6).map(|i| format!("m{i}")).collect();
    expected.extend(std::iter::repeat_n("rate_limited".to_string(), 6));
    assert_eq!(answers, expected, "6 messages in all, not 6 per socket");
    // A new socket on the same session gets no fresh allowance; another session does.
    let mut late = join(&d, &sid, &vt).await;
    late.send_json(&json!({"type": "text", "content": "late"})).await.unwrap();
    assert_eq!(late.recv_json().await.unwrap()["code"], "rate_limited");
    let (other, _, other_vt) = start(&d, json!({"business": B1}), None).await;
    let mut o = join(&d, &other, &other_vt).await;
    o.send_json(&json!({"type": "text", "content": "other"})).await.unwrap();
    assert_eq!(o.recv_json().await.unwrap()["content"], "other");
}

async fn long_ids_and_names_are_refused(db: Db) {
    let d = world(db).await;
    let long = "x".repeat(256);
    for (field, body) in [
        ("business", json!({"business": long})),
        ("department", json!({"business": B1, "department": long})),
        ("external_customer_id", json!({"business": B1, "external_customer_id": long})),
    ] {
        let r = post_json(&d, "/chat/start-session/", None, &body).await;
        assert_eq!((r.status, r.json()["error"].as_str()), (400, Some("field_too_long")), "{field}");
        assert_eq!(r.json()["message"], format!("`{field}` is longer than 255 bytes"));
    }
    let (sid, _, vt) = start(&d, json!({"business": B1, "external_customer_id": "x".repeat(255)}), None).await;
    let name = format!("{}.png", "n".repeat(252));
    let r = upload(&d, Some(&vt), &[("file", Some(&name), PNG, None)]).await;
    assert_eq!((r.status, r.json()["error"].as_str()), (400, Some("bad_file_name")));
    let r = upload(
        &d,
        Some(&vt),
        &[("file", Some("a.png"), PNG, None), ("uploaded_by_end_user", None, long.as_bytes(), None)],
    )
    .await;
    assert_eq!((r.status, r.json()["error"].as_str()), (400, Some("field_too_long")));
    assert!(media_files(&d).is_empty());
    let mut v = join(&d, &sid, &vt).await;
    let url = format!("http://chat.test/chat/media/{}", "u".repeat(2048));
    v.send_json(&json!({"type": "file", "file": url})).await.unwrap();
    let e = v.recv_json().await.unwrap();
    assert_eq!((e["type"].as_str(), e["code"].as_str()), (Some("error"), Some("field_too_long")));
    // An unknown type is named in the error, cut short.
    v.send_json(&json!({"type": "t".repeat(10_000)})).await.unwrap();
    let e = v.recv_json().await.unwrap();
    assert_eq!(e["code"], "unknown_type");
    assert!(e["message"].as_str().unwrap().len() < 100, "{e}");
    v.send_json(&json!({"type": "text", "content": "fine"})).await.unwrap();
    assert_eq!(v.recv_json().await.unwrap()["content"], "fine");
}

on_both_backends!(
    spec_flow,
    close_codes,
    one_active_session,
    upload_limits,
    other_business_refused,
    http_end_and_history_pages,
    message_limits,
    no_loss_across_sigterm,
    uploads_over_the_session_quota_are_refused,
    uploads_over_the_ip_quota_get_429,
    end_session_removes_the_files,
    files_are_kept_for_the_retention,
    start_session_over_the_ip_rate_gets_429,
    sockets_of_one_session_share_one_rate,
    long_ids_and_names_are_refused,
);
