//! Latency histograms and the `name: value unit` report lines.

use hdrhistogram::Histogram;
use std::time::Duration;

/// Latencies recorded in nanoseconds (1 ns to 60 s, 3 significant digits), printed in µs.
pub struct Latencies(Histogram<u64>);

impl Default for Latencies {
    fn default() -> Self {
        Latencies(Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds"))
    }
}

impl Latencies {
    pub fn record(&mut self, d: Duration) {
        self.0.saturating_record((d.as_nanos() as u64).max(1));
    }

    pub fn merge(&mut self, other: &Latencies) {
        self.0.add(&other.0).expect("same bounds");
    }

    /// Count, p50, p90, p99, p99.9 and max in µs, as JSON (`{"count":…,"p50_us":…,…}`).
    pub fn to_json(&self) -> serde_json::Value {
        let us = |v: u64| (v as f64 / 100.0).round() / 10.0;
        serde_json::json!({
            "count": self.0.len(),
            "p50_us": us(self.0.value_at_quantile(0.50)),
            "p90_us": us(self.0.value_at_quantile(0.90)),
            "p99_us": us(self.0.value_at_quantile(0.99)),
            "p999_us": us(self.0.value_at_quantile(0.999)),
            "max_us": us(self.0.max()),
        })
    }

    /// Print p50, p90, p99, p99.9 and max of `name` in µs.
    pub fn print(&self, name: &str) {
        println!("{name}_count: {}", self.0.len());
        for (label, q) in [("p50", 0.50), ("p90", 0.90), ("p99", 0.99), ("p999", 0.999)] {
            println!("{name}_{label}: {:.1} us", self.0.value_at_quantile(q) as f64 / 1000.0);
        }
        println!("{name}_max: {:.1} us", self.0.max() as f64 / 1000.0);
    }
}

/// Resident set size of process `pid`, in KiB (from /proc).
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS for pid {pid}"))
}

/// CPU time a process used since [`CpuMeter::start`], as a share of one core.
pub struct CpuMeter {
    pid: u32,
    ticks: u64,
    at: std::time::Instant,
}

impl CpuMeter {
    pub fn start(pid: u32) -> anyhow::Result<CpuMeter> {
        Ok(CpuMeter { pid, ticks: cpu_ticks(pid)?, at: std::time::Instant::now() })
    }

    /// Percent of one core used since `start` (100 = one core busy all the time).
    pub fn percent(&self) -> anyhow::Result<f64> {
        let used = (cpu_ticks(self.pid)? - self.ticks) as f64 / CLOCK_TICKS;
        Ok(used / self.at.elapsed().as_secs_f64() * 100.0)
    }
}

/// Clock ticks per second of `/proc/<pid>/stat` times (USER_HZ; 100 on Linux).
const CLOCK_TICKS: f64 = 100.0;

/// utime + stime of process `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::path::PathBuf::from(format!("/proc/{pid}/stat"));
    Ok(gatewayd_e2e::proc_stat_field(&stat, 14)? + gatewayd_e2e::proc_stat_field(&stat, 15)?)
}
