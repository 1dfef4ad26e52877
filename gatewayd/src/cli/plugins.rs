//! `gatewayd plugins`: ask the running daemon (its admin listener's `/metrics`) how each plugin
//! is doing, and print one line per plugin.

use anyhow::{Context, bail};
use http_body_util::{BodyExt, Empty};
use std::collections::BTreeMap;
use std::net::SocketAddr;

/// One sample of the Prometheus text format: name, labels, value.
#[derive(Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parse Prometheus text exposition (comments skipped).
pub fn parse_metrics(text: &str) -> Vec<Sample> {
    text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()).filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let (head, value) = line.rsplit_once(' ')?;
    let value = value.parse().ok()?;
    let (name, labels) = match head.split_once('{') {
        None => (head.to_string(), BTreeMap::new()),
        Some((name, rest)) => (name.to_string(), parse_labels(rest.strip_suffix('}')?)?),
    };
    Some(Sample { name, labels, value })
}

fn parse_labels(mut s: &str) -> Option<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    while !s.is_empty() {
        let (key, rest) = s.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => value.push(chars.next()?.1),
                (_, c) => value.push(c),
            }
        };
        labels.insert(key.trim_start_matches(',').to_string(), value);
        s = &rest[end + 1..];
        s = s.strip_prefix(',').unwrap_or(s);
    }
    Some(labels)
}

/// Quantile `q` from cumulative `(upper bound, count)` buckets, interpolating inside the bucket
/// as Prometheus' `histogram_quantile` does. Seconds; `None` when there are no observations.
pub fn quantile(cumulative: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = cumulative.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut prev = (0.0, 0.0);
    for &(upper, count) in cumulative {
        if count >= rank {
            if upper.is_infinite() {
                return Some(prev.0);
            }
            let within = if count > prev.1 { (rank - prev.1) / (count - prev.1) } else { 1.0 };
            return Some(prev.0 + (upper - prev.0) * within);
        }
        prev = (upper, count);
    }
    Some(prev.0)
}

async fn fetch(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to the admin listener {addr}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = hyper::Request::get(path).header("host", addr.to_string()).body(Empty::<bytes::Bytes>::new())?;
    let resp = sender.send_request(req).await?;
    if !resp.status().is_success() {
        bail!("{path}: HTTP {}", resp.status());
    }
    Ok(String::from_utf8(resp.into_body().collect().await?.to_bytes().to_vec())?)
}

/// Print a line per plugin: version, events, faults, p50/p99 event time, reloads, load time.
pub async fn run(admin: SocketAddr) -> anyhow::Result<()> {
    let samples = parse_metrics(&fetch(admin, "/metrics").await?);
    let mut names: Vec<&str> = samples.iter().filter_map(|s| s.labels.get("plugin").map(String::as_str)).collect();
    names.sort();
    names.dedup();
    let get = |metric: &str, plugin: &str, extra: Option<(&str, &str)>| -> f64 {
        samples
            .iter()
            .filter(|s| s.name == metric && s.labels.get("plugin").map(String::as_str) == Some(plugin))
            .filter(|s| extra.is_none_or(|(k, v)| s.labels.get(k).map(String::as_str) == Some(v)))
            .map(|s| s.value)
            .sum()
    };
    println!(
        "{:<16} {:<13} {:>10} {:>6} {:>8} {:>7} {:>10} {:>10} {:>9} {:>9} {:>8}",
        "PLUGIN",
        "VERSION",
        "EVENTS",
        "TRAPS",
        "TIMEOUTS",
        "MEMORY",
        "P50_US",
        "P99_US",
        "RELOADS",
        "REJECTED",
        "LOAD_MS"
    );
    for p in names {
        let version = samples
            .iter()
            .find(|s| s.name == "gatewayd_plugin_version_info" && s.labels.get("plugin").map(String::as_str) == Some(p))
            .and_then(|s| s.labels.get("version").cloned())
            .unwrap_or_else(|| "-".into());
        let mut buckets: Vec<(f64, f64)> = samples
            .iter()
            .filter(|s| {
                s.name == "gatewayd_plugin_event_duration_seconds_bucket"
                    && s.labels.get("plugin").map(String::as_str) == Some(p)
            })
            .filter_map(|s| Some((s.labels.get("le")?.replace("+Inf", "inf").parse::<f64>().ok()?, s.value)))
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        let us = |q| quantile(&buckets, q).map_or("-".to_string(), |s| format!("{:.1}", s * 1e6));
        println!(
            "{:<16} {:<13} {:>10} {:>6} {:>8} {:>7} {:>10} {:>10} {:>9} {:>9} {:>8.1}",
            p,
            version,
            get("gatewayd_plugin_events_total", p, None),
            get("gatewayd_plugin_faults_total", p, Some(("kind", "trap"))),
            get("gatewayd_plugin_faults_total", p, Some(("kind", "timeout"))),
            get("gatewayd_plugin_faults_total", p, Some(("kind", "memory"))),
            us(0.5),
            us(0.99),
            get("gatewayd_plugin_reloads_total", p, Some(("result", "ok"))),
            get("gatewayd_plugin_reloads_total", p, Some(("result", "rejected"))),
            get("gatewayd_plugin_load_seconds", p, None) * 1e3,
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_labels_and_quantiles() {
        let text = "# HELP x y\ngatewayd_plugin_event_duration_seconds_bucket{le=\"0.001\",plugin=\"a,b\\\"c\"} 50\n\
                    gatewayd_plugin_event_duration_seconds_bucket{le=\"0.002\",plugin=\"a,b\\\"c\"} 100\n\
                    gatewayd_plugin_event_duration_seconds_bucket{le=\"+Inf\",plugin=\"a,b\\\"c\"} 100\n";
        let s = parse_metrics(text);
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].labels["plugin"], "a,b\"c");
        let p50 = quantile(&[(0.001, 50.0), (0.002, 100.0), (f64::INFINITY, 100.0)], 0.5).unwrap();
        assert!((p50 - 0.001).abs() < 1e-12, "{p50}");
        let p99 = quantile(&[(0.001, 50.0), (0.002, 100.0), (f64::INFINITY, 100.0)], 0.99).unwrap();
        assert!(p99 > 0.0019 && p99 <= 0.002, "{p99}");
    }
}
