//! WebSocket conformance: Autobahn|Testsuite's fuzzing client (`wstest -m fuzzingclient`)
//! against the real daemon, on a route served by the exact-echo plugin (`plugins/echo`).
//!
//! Cases 1-7 (framing, pings, reserved bits, opcodes, fragmentation, UTF-8, close), 9 (limits
//! and performance: up to 16 MiB messages) and 10 (auto-fragmentation); 12 and 13 (compression)
//! are left out because the daemon does not negotiate permessage-deflate. Every case must end
//! `OK`, `NON-STRICT` or `INFORMATIONAL`, both for its behaviour and for its close.
//!
//! `wstest` comes from the `autobahntestsuite` package (Python 2.7), installed by
//! `make test-setup` into a virtualenv; `$GATEWAYD_WSTEST` names another binary. The HTML and
//! JSON reports are kept in `<target dir>/autobahn-report/` (the test prints the path).

use gatewayd_e2e::*;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Where `make test-setup` installs the test suite.
const DEFAULT_WSTEST: &str = "/var/cache/gatewayd-ci/autobahn-venv/bin/wstest";

/// The cases run (`wstest` patterns).
const CASES: [&str; 9] = ["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "9.*", "10.*"];

/// Verdicts that pass (Autobahn's own classification).
const PASSING: [&str; 3] = ["OK", "NON-STRICT", "INFORMATIONAL"];

/// A whole run takes a few minutes; beyond this it is stuck.
const RUN_TIMEOUT: Duration = Duration::from_secs(20 * 60);

/// Case 9.1.6 and 9.2.6 send 16 MiB messages; the limit leaves room for them.
const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024 + 64 * 1024;

fn wstest() -> PathBuf {
    let path = PathBuf::from(std::env::var("GATEWAYD_WSTEST").unwrap_or_else(|_| DEFAULT_WSTEST.into()));
    assert!(
        path.is_file(),
        "{} is missing: run `make test-setup` (installs Autobahn|Testsuite into a Python 2.7 virtualenv), \
         or set GATEWAYD_WSTEST to a wstest binary",
        path.display()
    );
    path
}

/// `<target dir>/autobahn-report`, next to the daemon binary's profile directory.
fn report_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test-exe> -> target
    let target = exe.ancestors().nth(3).expect("test exe in target/<profile>/deps");
    target.join("autobahn-report")
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let dest = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &dest)?;
        } else {
            std::fs::copy(entry.path(), dest)?;
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autobahn_fuzzing_client_cases_all_pass() {
    let wstest = wstest();
    let [port] = free_ports();
    let echo = plugin_file("echo");
    let extra = format!(
        r#"
[listeners.conformance]
address = "127.0.0.1:{port}"
max_message_bytes = {MAX_MESSAGE_BYTES}
send_queue_frames = 4096
send_queue_bytes = 67108864

[[routes]]
listener = "conformance"
path = "/ws/echo/"
kind = "websocket"
plugin = "echo"
auth = "none"

[plugins.echo]
file = "{echo}"
[plugins.echo.limits]
event_timeout_ms = 10000
memory_mb = 256
"#,
        echo = echo.display()
    );
    let d = Daemon::start(DaemonOptions { extra_toml: extra, ..DaemonOptions::default() }).await.unwrap();

    let work = d.dir.path().join("autobahn");
    std::fs::create_dir_all(&work).unwrap();
    let spec = json!({
        "outdir": work.join("reports").display().to_string(),
        "servers": [{"agent": "gatewayd", "url": format!("ws://127.0.0.1:{port}/ws/echo/")}],
        "cases": CASES,
        "exclude-cases": [],
        "exclude-agent-cases": {},
    });
    let spec_path = work.join("fuzzingclient.json");
    std::fs::write(&spec_path, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();

    let started = Instant::now();
    let log_path = work.join("wstest.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = Command::new(&wstest)
        .args(["-m", "fuzzingclient", "-s"])
        .arg(&spec_path)
        .current_dir(&work)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("running {}: {e}", wstest.display()));
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > RUN_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "wstest did not finish in {RUN_TIMEOUT:?}; its log:\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let elapsed = started.elapsed();
    let wstest_log = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(status.success(), "wstest exited with {status}:\n{wstest_log}");

    // Keep the reports where the lead (and CI logs) can find them.
    let kept = report_dir();
    let _ = std::fs::remove_dir_all(&kept);
    copy_dir(&work.join("reports"), &kept).unwrap();
    std::fs::copy(&log_path, kept.join("wstest.log")).unwrap();

    let index: Value = serde_json::from_slice(
        &std::fs::read(work.join("reports/index.json"))
            .unwrap_or_else(|e| panic!("no reports/index.json ({e}); wstest said:\n{wstest_log}")),
    )
    .unwrap();
    let cases = index["gatewayd"].as_object().expect("index.json has the agent's cases");
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut failing = Vec::new();
    for (case, result) in cases {
        let behavior = result["behavior"].as_str().unwrap_or("?");
        let close = result["behaviorClose"].as_str().unwrap_or("?");
        *counts.entry(behavior.to_string()).or_default() += 1;
        if !PASSING.contains(&behavior) || !PASSING.contains(&close) {
            failing.push(format!(
                "  case {case}: behavior {behavior}, behaviorClose {close}, remote close code {}",
                result["remoteCloseCode"]
            ));
        }
    }
    // Case ids sort as numbers (1.1.10 after 1.1.9).
    failing.sort_by_key(|l| {
        l.split_whitespace().nth(1).unwrap_or("").split('.').map(|p| p.parse::<u32>().unwrap_or(0)).collect::<Vec<_>>()
    });
    println!(
        "autobahn: {} cases in {:.0} s, behaviors {counts:?}; report in {}",
        cases.len(),
        elapsed.as_secs_f64(),
        kept.display()
    );
    assert!(cases.len() >= 290, "only {} cases ran:\n{wstest_log}", cases.len());
    assert!(
        failing.is_empty(),
        "{} of {} Autobahn cases failed (report: {}/index.html):\n{}",
        failing.len(),
        cases.len(),
        kept.display(),
        failing.join("\n")
    );
    assert!(d.logs().iter().all(|l| !l.contains("panicked")), "the daemon panicked:\n{}", d.logs().join("\n"));
}
