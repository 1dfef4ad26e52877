//! Issue #15 item 6: a plugin written outside the repository. `gatewayd plugin new ivr` writes
//! a crate into an empty directory; it builds with one command against the SDK the daemon
//! carries; its `gatewayd.toml` added to a running daemon's config and a reload (no restart)
//! load it and serve a call on its route.

use gatewayd_e2e::*;
use serde_json::json;
use std::process::Command;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scaffolded_ivr_plugin_builds_and_serves_a_call_after_a_reload() {
    let port = free_port();
    let extra = format!("[listeners.ivr]\naddress = \"127.0.0.1:{port}\"\n");
    let d = Daemon::start(DaemonOptions { extra_toml: extra, ..DaemonOptions::default() }).await.unwrap();

    // 1. Scaffold, outside any workspace.
    let outside = tempdir::TempDir::new("gatewayd-plugin-author");
    let out = d.cli(&["plugin", "new", "ivr", "my-ivr", "--dir", &outside.path().display().to_string()]).unwrap();
    let root = outside.path().join("my-ivr");
    assert!(out.contains(&root.display().to_string()), "{out}");
    assert!(d.cli(&["plugin", "new", "ivr", "my-ivr", "--dir", &outside.path().display().to_string()]).is_err());

    // 2. One command builds it. Dependencies are cached between runs in a target directory of
    // their own; the component is then where the generated config expects it.
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => std::path::PathBuf::from(dir).join("plugin-sdk-test"),
        None => workspace().join("target/plugin-sdk-test"),
    };
    let status = Command::new(env!("CARGO"))
        .args(["build", "--release"])
        .current_dir(&root)
        .env("CARGO_TARGET_DIR", &target)
        .status()
        .expect("cargo runs");
    assert!(status.success(), "the scaffolded crate builds with `cargo build --release`");
    let built = target.join("wasm32-wasip2/release/my_ivr.wasm");
    let expected = root.join("target/wasm32-wasip2/release/my_ivr.wasm");
    std::fs::create_dir_all(expected.parent().unwrap()).unwrap();
    std::fs::copy(&built, &expected).unwrap();

    // 3. Its config added to the running daemon, then a reload: loaded without a restart.
    let snippet = std::fs::read_to_string(root.join("gatewayd.toml")).unwrap();
    let mut config = std::fs::read_to_string(&d.config_path).unwrap();
    config.push_str(&snippet);
    std::fs::write(&d.config_path, config).unwrap();
    let pid = d.pid().to_string();
    assert!(Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());

    // 4. A call: answered, the greeting prompt is heard, a digit plays its option, hangup.
    let url = format!("ws://127.0.0.1:{port}/my-ivr");
    let mut call = None;
    for _ in 0..(PATIENCE.as_millis() / 50) {
        // The route appears when the reload is done; until then the path is not found.
        if let Ok(Ok(c)) = Client::connect_with(&url, &[]).await {
            call = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut c = call.expect("the new plugin's route is served after the reload");
    c.send_json(
        &json!({"event": "incoming_call", "callerId": "+15551230000", "didNumber": "+18005550100", "sessionId": "s1"}),
    )
    .await
    .unwrap();
    assert_eq!(c.recv_json().await.unwrap(), json!({"event": "answer"}));
    let mut audible = 0;
    for _ in 0..10 {
        match c.recv_within(PATIENCE).await.unwrap() {
            Incoming::Binary(frame) => {
                assert_eq!(frame.len(), 320, "20 ms of L16 at 8 kHz");
                audible += frame.chunks_exact(2).any(|s| i16::from_le_bytes([s[0], s[1]]) != 0) as usize;
            }
            other => panic!("expected the greeting's audio, got {other:?}"),
        }
    }
    assert!(audible > 0, "the greeting prompt is heard");
    // A choice, kept in the plugin's own table (created from its migration at the reload).
    c.send_json(&json!({"event": "dtmf", "digit": "1"})).await.unwrap();
    c.send_json(&json!({"event": "hangup"})).await.unwrap();
    loop {
        match c.recv_within(PATIENCE).await.unwrap() {
            Incoming::Closed(code, _) => {
                assert_eq!(code, 1000);
                break;
            }
            Incoming::Binary(_) => continue,
            other => panic!("{other:?}"),
        }
    }
    assert!(d.logs().iter().any(|l| l.contains("plugin added") && l.contains("my-ivr")), "{:#?}", d.logs());
    sqlx::any::install_default_drivers();
    let mut db = <sqlx::AnyConnection as sqlx::Connection>::connect(&d.database_url).await.unwrap();
    let digits: Vec<String> = sqlx::query_scalar("SELECT digit FROM my_ivr_choices WHERE session_id = 's1'")
        .fetch_all(&mut db)
        .await
        .unwrap();
    assert_eq!(digits, ["1"], "the choice is in the plugin's own table");
}
