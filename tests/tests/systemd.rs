//! The shipped unit `systemd/gatewayd.service`: `systemd-analyze verify` passes and
//! `systemd-analyze security --offline=yes` scores 2.0 or lower. Needs systemd-analyze
//! (installed by .ci/run); fails, never skips, without it.

use gatewayd_e2e::*;
use std::process::Command;

/// The unit with ExecStart/ExecStartPre pointing at the binary under test.
fn unit_under_test(dir: &std::path::Path) -> std::path::PathBuf {
    let unit = std::fs::read_to_string(workspace().join("systemd/gatewayd.service")).unwrap();
    let path = dir.join("gatewayd.service");
    std::fs::write(&path, unit.replace("/usr/bin/gatewayd", &gatewayd_bin().display().to_string())).unwrap();
    path
}

fn analyze(args: &[&str]) -> std::process::Output {
    Command::new("systemd-analyze").args(args).output().expect("systemd-analyze is required (apt-get install systemd)")
}

#[test]
fn unit_verifies() {
    let dir = tempdir::TempDir::new("gatewayd-unit");
    let unit = unit_under_test(dir.path());
    let out = analyze(&["verify", unit.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify failed: {stderr}");
    assert!(!stderr.contains("gatewayd.service:"), "verify complained: {stderr}");
}

#[test]
fn unit_security_exposure_is_at_most_2() {
    let dir = tempdir::TempDir::new("gatewayd-unit");
    let unit = unit_under_test(dir.path());
    let out = analyze(&["security", "--offline=yes", unit.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let score: f64 = stdout
        .lines()
        .find_map(|l| l.split("Overall exposure level for gatewayd.service:").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no overall exposure level in:\n{stdout}"));
    println!("systemd-analyze security exposure: {score}");
    assert!(score <= 2.0, "exposure {score} > 2.0:\n{stdout}");
}
