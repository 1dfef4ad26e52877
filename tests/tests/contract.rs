//! The plugin contract's compatibility promise (issue #11 item 1, `plugin-api/wit/gatewayd.wit`
//! "Versioning"): within `gatewayd:plugin@0.1.0` the contract only grows (`store.batch`,
//! `schema`, `media.transcribe`/`say`, `speech-handler`), so a component built against it
//! before those additions keeps loading and working after them.
//!
//! The witness is `tests/legacy-protocol`: built with plain `wit-bindgen` against a frozen copy
//! of the contract as it was before speech (no SDK, `protocol` world only, no optional
//! exports). Today's daemon loads it and serves it on a plain route and on a media route.

use gatewayd_e2e::{Client, Daemon, DaemonOptions, Incoming, PATIENCE, plugin_file};
use std::time::{Duration, Instant};

/// Bytes of one 20 ms mu-law frame at 8000 Hz.
const FRAME: usize = 160;

async fn daemon() -> Daemon {
    let extra = format!(
        r#"
[[routes]]
listener = "main"
path = "/ws/legacy/"
kind = "websocket"
plugin = "legacy"
auth = "none"

[[routes]]
listener = "main"
path = "/ws/legacy-call/"
kind = "websocket"
plugin = "legacy"
auth = "none"
media = {{ codec = "pcmu", rate = 8000 }}

[plugins.legacy]
file = "{file}"
"#,
        file = plugin_file("legacy-protocol").display()
    );
    Daemon::start(DaemonOptions { extra_toml: extra, ..DaemonOptions::default() }).await.expect("daemon starts")
}

/// The next text message; binary ones meanwhile are appended to `heard`.
async fn next_text(client: &mut Client, heard: &mut Vec<u8>) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match client.recv_within(deadline.saturating_duration_since(Instant::now())).await.expect("a message") {
            Incoming::Text(t) => return t,
            Incoming::Binary(b) => heard.extend_from_slice(&b),
            Incoming::Closed(code, reason) => panic!("closed: {code} {reason}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_built_against_the_contract_before_speech_loads_and_serves() {
    let d = daemon().await;

    // A plain route: text and binary come back unchanged.
    let mut client = Client::connect(&d.ws_url("/ws/legacy/")).await.expect("connect");
    client.send_text("hello from 0.1.0").await.unwrap();
    assert_eq!(next_text(&mut client, &mut Vec::new()).await, "hello from 0.1.0");
    client.send_binary(&[1, 2, 3]).await.unwrap();
    match client.recv_within(PATIENCE).await.expect("echo") {
        Incoming::Binary(b) => assert_eq!(b, vec![1, 2, 3]),
        other => panic!("expected the binary echo, got {other:?}"),
    }

    // A media route: the old `media` functions and the old `media-event` export still work.
    let mut call = Client::connect(&d.ws_url("/ws/legacy-call/")).await.expect("connect");
    let mut heard = Vec::new();
    call.send_text("answer").await.unwrap();
    assert_eq!(next_text(&mut call, &mut heard).await, "answered");
    let spoken: Vec<u8> = (0..FRAME * 10).map(|i| 0x10 + (i % 64) as u8).collect();
    for frame in spoken.chunks(FRAME) {
        call.send_binary(frame).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Echo on: the caller hears its own audio back, byte for byte.
    let deadline = Instant::now() + PATIENCE;
    while !heard.windows(spoken.len()).any(|w| w == &spoken[..]) {
        assert!(Instant::now() < deadline, "the echo of 10 frames did not come back ({} bytes heard)", heard.len());
        match call.recv_within(PATIENCE).await.expect("echoed audio") {
            Incoming::Binary(b) => heard.extend_from_slice(&b),
            other => panic!("expected audio, got {other:?}"),
        }
    }
    call.send_text("mark:old-mark").await.unwrap();
    assert_eq!(next_text(&mut call, &mut heard).await, "mark:old-mark");
    assert_eq!(d.admin_get("/healthz").await.unwrap().0, 200);
}
