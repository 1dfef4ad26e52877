//! DESIGN property 3: a plugin that traps, loops forever or exhausts memory ends only its own
//! event, with an error to that session; the daemon, other sessions and other plugins carry on,
//! and session state (held by the host) survives.

use gatewayd_e2e::*;
use serde_json::Value;
use std::time::{Duration, Instant};

async fn faults_client(d: &Daemon) -> Client {
    Client::connect(&d.ws_url("/ws/faults/")).await.expect("connect to the fault-test plugin")
}

async fn expect_fault(c: &mut Client, command: &str, code: &str) {
    c.send_text(command).await.unwrap();
    let v: Value = c.recv_json().await.unwrap();
    assert_eq!(v["type"], "error", "{command}: {v}");
    assert_eq!(v["code"], code, "{command}: {v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trap_loop_and_oom_end_only_their_event() {
    let mut d = Daemon::start(DaemonOptions::default()).await.unwrap();
    let mut victim = faults_client(&d).await;
    let mut bystander = faults_client(&d).await;
    let mut guest = Client::connect(&d.ws_url("/ws/signaling/?guest_id=g1")).await.unwrap();
    assert_eq!(guest.recv_json().await.unwrap()["type"], "connection_established");

    victim.send_text("count").await.unwrap();
    assert_eq!(victim.recv_text().await.unwrap(), "count:1");

    expect_fault(&mut victim, "trap", "plugin_trap").await;
    // The session goes on, with its state: the counter kept in the host survived the trap.
    victim.send_text("count").await.unwrap();
    assert_eq!(victim.recv_text().await.unwrap(), "count:2");

    // A runaway loop is stopped at the 100 ms deadline; meanwhile another session is served.
    let started = Instant::now();
    victim.send_text("loop").await.unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    bystander.send_text("hello").await.unwrap();
    assert_eq!(bystander.recv_text().await.unwrap(), "echo:hello");
    let v: Value = victim.recv_json().await.unwrap();
    assert_eq!(v["code"], "plugin_timeout", "{v}");
    // 100 ms of the plugin's own CPU time; the wall time that takes depends on the machine's load.
    assert!(started.elapsed() < PATIENCE, "loop took {:?} to stop", started.elapsed());

    expect_fault(&mut victim, "oom", "plugin_memory").await;
    victim.send_text("count").await.unwrap();
    assert_eq!(victim.recv_text().await.unwrap(), "count:3");

    // Other plugins and the daemon are untouched.
    guest.send_text(r#"{"type":"ping"}"#).await.unwrap();
    assert_eq!(guest.recv_json().await.unwrap()["type"], "pong");
    bystander.send_text("again").await.unwrap();
    assert_eq!(bystander.recv_text().await.unwrap(), "echo:again");
    assert!(d.is_running());
    let logs = d.logs().join("\n");
    assert!(logs.contains("instance discarded"), "faults are logged:\n{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_faults_in_parallel_leave_the_daemon_serving() {
    let d = Daemon::start(DaemonOptions::default()).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let url = d.ws_url("/ws/faults/");
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect(&url).await.unwrap();
            for cmd in ["trap", "oom", "loop"] {
                c.send_text(cmd).await.unwrap();
                let v: Value = c.recv_json().await.unwrap();
                assert_eq!(v["type"], "error", "client {i} {cmd}: {v}");
            }
            c.send_text("ok").await.unwrap();
            assert_eq!(c.recv_text().await.unwrap(), "echo:ok");
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_needs_the_capability() {
    let d = Daemon::start(DaemonOptions::default()).await.unwrap();
    let mut c = faults_client(&d).await;
    c.send_text("store-read").await.unwrap();
    let reply = c.recv_text().await.unwrap();
    assert_eq!(reply, "store-error:forbidden: plugin `fault-test` has no store capability");
}

/// The fault report takes the plugin's protocol's shape (`[plugins.<name>] fault_report`):
/// `event`-keyed for an ivr.md-like protocol, nothing at all with `none`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_reports_take_the_protocols_shape() {
    let mut extra = String::new();
    for (name, report) in [("faults-event", "event"), ("faults-silent", "none")] {
        extra.push_str(&format!(
            "[[routes]]\nlistener = \"main\"\npath = \"/ws/{name}/\"\nkind = \"websocket\"\nplugin = \"{name}\"\n\n\
             [plugins.{name}]\nfile = \"{file}\"\nfault_report = \"{report}\"\n\n",
            file = plugin_file("fault-test").display(),
        ));
    }
    let d = Daemon::start(DaemonOptions { extra_toml: extra, ..DaemonOptions::default() }).await.unwrap();
    let mut event = Client::connect(&d.ws_url("/ws/faults-event/")).await.unwrap();
    event.send_text("trap").await.unwrap();
    let v: Value = event.recv_json().await.unwrap();
    assert_eq!((v["event"].as_str(), v["code"].as_str()), (Some("error"), Some("plugin_trap")), "{v}");
    assert!(v.get("type").is_none(), "{v}");

    let mut silent = Client::connect(&d.ws_url("/ws/faults-silent/")).await.unwrap();
    silent.send_text("trap").await.unwrap();
    silent.send_text("count").await.unwrap();
    // The first thing it hears is the answer to `count`: the trap was not reported.
    assert_eq!(silent.recv_text().await.unwrap(), "count:1");
    // Logged with the plugin, the event's kind and its connection (the log is read from the
    // daemon's stderr as it comes).
    let started = Instant::now();
    let line = loop {
        let logs = d.logs();
        if let Some(l) = logs.iter().find(|l| l.contains("event failed") && l.contains("faults-silent")) {
            break l.clone();
        }
        assert!(started.elapsed() < PATIENCE, "no `event failed` line for faults-silent: {logs:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(line.contains("text") && line.contains("connection"), "{line}");
}
