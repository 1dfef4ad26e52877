//! The daemon as an operator sees it: `check`, config errors naming the key, `migrate`, a
//! graceful stop on SIGTERM, and its media threads' scheduling.

use gatewayd_e2e::*;
use std::process::Command;

fn gatewayd(args: &[&str], config: &std::path::Path) -> std::process::Output {
    Command::new(gatewayd_bin()).args(args).arg("--config").arg(config).output().expect("run gatewayd")
}

#[test]
fn default_config_checks() {
    plugin_file("signaling");
    let out = gatewayd(&["check"], &workspace().join("config/gatewayd.toml"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("config ok"));
}

/// Write the default config with `edit` applied and return `gatewayd check`'s exit code and
/// stderr.
fn check_edited(edit: impl Fn(String) -> String) -> (i32, String) {
    let dir = tempdir::TempDir::new("gatewayd-config");
    let default = std::fs::read_to_string(workspace().join("config/gatewayd.toml")).unwrap();
    // Keep the config's relative paths (plugins, prompts) valid from the temp dir.
    let text = edit(default).replace("\"../", &format!("\"{}/", workspace().display()));
    let path = dir.path().join("gatewayd.toml");
    std::fs::write(&path, text).unwrap();
    let out = gatewayd(&["check"], &path);
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn config_errors_name_the_key() {
    let (code, err) = check_edited(|t| t.replace("[storage]\n", "[storage]\nbogus_key = 1\n"));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("unknown field `bogus_key`"), "{err}");

    let (code, err) = check_edited(|t| t.replace("address = \"127.0.0.1:8000\"", "address = \"nowhere\""));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("address"), "{err}");

    let (code, err) = check_edited(|t| t.replacen("event_timeout_ms = 200\n", "event_timeout_ms = 0\n", 1));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("plugins.signaling.limits.event_timeout_ms: must be at least 1"), "{err}");

    let (code, err) = check_edited(|t| t.replace("plugin = \"signaling\"", "plugin = \"nope\""));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("routes[0].plugin: no plugin named `nope`"), "{err}");

    let (code, err) = check_edited(|t| t.replace("signaling.wasm", "missing.wasm"));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("plugins.signaling.file") && err.contains("does not exist"), "{err}");

    let (code, err) =
        check_edited(|t| t.replacen("secret = \"gatewayd-development-secret-change-me\"", "secret = \"short\"", 1));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("auth.keys[0]: secret must be at least 16 bytes"), "{err}");

    let (code, err) = check_edited(|t| t.replacen("algorithm = \"HS256\"", "algorithm = \"none\"", 1));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("algorithm `none` is not supported"), "{err}");
}

#[test]
fn a_bad_config_stops_start_up() {
    let dir = tempdir::TempDir::new("gatewayd-config");
    let path = dir.path().join("gatewayd.toml");
    std::fs::write(&path, "[listeners.main]\naddress = \"127.0.0.1:1\"\nport = 3\n").unwrap();
    let out = gatewayd(&["run"], &path);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown field `port`"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_is_idempotent_on_both_backends() {
    for db in [Db::Sqlite, Db::Postgres] {
        let mut d = Daemon::start(DaemonOptions { db, ..Default::default() }).await.unwrap();
        // The daemon migrated at start-up; `migrate` again is a no-op that succeeds.
        assert_eq!(d.cli(&["migrate"]).unwrap().trim(), "migrations applied", "{db:?}");
        d.cli(&["tenant", "add-business", "b1"]).unwrap();
        let err = d.cli(&["tenant", "add-business", "b1"]).unwrap_err().to_string();
        assert!(err.contains("business b1 already exists"), "{db:?}: {err}");
        let err = d.cli(&["tenant", "add-membership", "--agent", "ghost", "--business", "b1"]).unwrap_err().to_string();
        assert!(err.contains("agent ghost does not exist"), "{db:?}: {err}");
        // A failing import adds nothing.
        let bad = d.dir.path().join("bad.json");
        std::fs::write(&bad, r#"{"businesses":[{"id":"b2"}],"agents":[{"id":"a1","user_id":"1"}],"memberships":[{"agent_id":"a1","business_id":"nope"}]}"#).unwrap();
        assert!(d.cli(&["tenant", "import", bad.to_str().unwrap()]).is_err());
        let list: serde_json::Value = serde_json::from_str(&d.cli(&["tenant", "list"]).unwrap()).unwrap();
        assert_eq!(list["businesses"].as_array().unwrap().len(), 1, "{db:?}: import was not rolled back: {list}");
        assert!(list["agents"].as_array().unwrap().is_empty(), "{db:?}: {list}");
        assert!(d.stop().unwrap().success());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_websockets_with_1001_and_exits() {
    let mut d = Daemon::start(DaemonOptions::default()).await.unwrap();
    let mut c = Client::connect(&d.ws_url("/ws/faults/")).await.unwrap();
    c.send_text("hi").await.unwrap();
    assert_eq!(c.recv_text().await.unwrap(), "echo:hi");
    let stopping = std::thread::spawn({
        let pid = d.pid();
        move || Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap()
    });
    assert_eq!(c.recv_close().await.unwrap(), (1001, "server shutting down".into()));
    stopping.join().unwrap();
    assert!(d.wait().unwrap().success());
}

/// Scheduling policy and real-time priority of each `gatewayd-media` thread of `pid` (proc(5)
/// fields 41 and 40 of its task's stat file; SCHED_RR = 2).
fn media_thread_scheduling(pid: u32) -> Vec<(u64, u64)> {
    let mut found = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() != "gatewayd-media" {
            continue;
        }
        let stat = task.path().join("stat");
        found.push((proc_stat_field(&stat, 41).unwrap(), proc_stat_field(&stat, 40).unwrap()));
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_threads_run_under_sched_rr_by_default_and_not_when_set_to_0() {
    let d = Daemon::start(DaemonOptions::default()).await.unwrap();
    let threads = media_thread_scheduling(d.pid());
    // Default thread count: half the CPUs, at least one.
    let expected = (std::thread::available_parallelism().unwrap().get() / 2).max(1);
    assert_eq!(threads.len(), expected, "media threads: {threads:?}");
    assert!(threads.iter().all(|&t| t == (2, 20)), "default: SCHED_RR at priority 20, got {threads:?}");
    drop(d);
    let d =
        Daemon::start(DaemonOptions { extra_toml: "[media]\nrealtime_priority = 0\n".into(), ..Default::default() })
            .await
            .unwrap();
    let threads = media_thread_scheduling(d.pid());
    assert!(!threads.is_empty() && threads.iter().all(|&(policy, _)| policy == 0), "normal scheduling: {threads:?}");
}
