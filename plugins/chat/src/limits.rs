//! Rates and per-IP quotas held in the host's `kv` (docs/protocols/chat.md "Quotas and
//! bounds"): the per-session message bucket and the per-IP windows of `start-session` and
//! uploads. Every change is a read followed by `kv.compare-and-swap` (SDK `kv::update`), so
//! concurrent events on other instances can never both spend the last unit. The state is the
//! daemon's memory: a restart starts every window afresh. Per-session upload quotas are durable
//! and live in the store instead (`db::reserve_upload`).

use crate::settings::Settings;
use gatewayd_plugin::kv;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

pub use gatewayd_plugin::rate::now_ms;

/// The key part naming a client: an IPv4 address, or an IPv6 client's /64 (one subscriber is
/// routinely given a whole /64, so single IPv6 addresses would cost an attacker nothing).
pub fn client_key(ip: Option<IpAddr>) -> String {
    match ip.map(|ip| ip.to_canonical()) {
        Some(IpAddr::V4(v4)) => v4.to_string(),
        Some(IpAddr::V6(v6)) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
        None => "unknown".to_string(),
    }
}

/// A fixed window: what was counted since `start_ms`.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Debug)]
struct Window {
    start_ms: u64,
    count: u64,
    bytes: u64,
}

/// The caps of one window kind.
#[derive(Clone, Copy, Debug)]
pub struct WindowCaps {
    pub window_secs: u32,
    pub max_count: u64,
    pub max_bytes: u64,
}

/// A window refused the request: seconds until it resets (at least 1), for `Retry-After`.
#[derive(Debug, PartialEq)]
pub struct RetryAfter(pub u64);

/// Count one request of `bytes` in the window `key`, or refuse it when that would pass a cap.
/// A key changed under us too many times is refused as well (it is under heavy use).
pub fn window_take(key: &str, caps: WindowCaps, bytes: u64, now: u64) -> Result<(), RetryAfter> {
    let window_ms = u64::from(caps.window_secs) * 1000;
    let ttl = u32::try_from(window_ms).unwrap_or(u32::MAX);
    kv::update(key, Some(ttl), |current| {
        let w = current.and_then(|s| serde_json::from_str::<Window>(s).ok());
        let w = match w {
            Some(w) if now < w.start_ms.saturating_add(window_ms) => w,
            _ => Window { start_ms: now, count: 0, bytes: 0 },
        };
        let retry = RetryAfter(((w.start_ms + window_ms).saturating_sub(now)).div_ceil(1000).max(1));
        if w.count + 1 > caps.max_count || w.bytes.saturating_add(bytes) > caps.max_bytes {
            return (current.map(str::to_string), Err(retry));
        }
        let next = Window { count: w.count + 1, bytes: w.bytes + bytes, ..w };
        (serde_json::to_string(&next).ok(), Ok(()))
    })
    .unwrap_or(Err(RetryAfter(1)))
}

/// Give back what [`window_take`] counted, when the request it admitted then failed (the
/// window may have reset since: then there is nothing to give back).
pub fn window_release(key: &str, caps: WindowCaps, bytes: u64, now: u64) {
    let window_ms = u64::from(caps.window_secs) * 1000;
    let ttl = u32::try_from(window_ms).unwrap_or(u32::MAX);
    kv::update(key, Some(ttl), |current| {
        let next = match current.and_then(|s| serde_json::from_str::<Window>(s).ok()) {
            Some(w) if now < w.start_ms.saturating_add(window_ms) => {
                let w = Window { count: w.count.saturating_sub(1), bytes: w.bytes.saturating_sub(bytes), ..w };
                serde_json::to_string(&w).ok()
            }
            _ => current.map(str::to_string),
        };
        (next, ())
    });
}

/// The `start-session` window of a client.
pub fn start_caps(s: &Settings) -> WindowCaps {
    WindowCaps { window_secs: s.start_ip_window_secs, max_count: s.max_starts_per_ip, max_bytes: u64::MAX }
}

/// The upload window of a client.
pub fn upload_caps(s: &Settings) -> WindowCaps {
    WindowCaps {
        window_secs: s.upload_ip_window_secs,
        max_count: s.max_uploads_per_ip,
        max_bytes: s.max_upload_bytes_per_ip,
    }
}

/// The message bucket of one session, shared by all its connections.
#[derive(Serialize, Deserialize)]
struct Bucket {
    tokens: f64,
    at_ms: u64,
}

/// Take one message token from the bucket of `session_id` (absent: full). False when it is
/// empty (or under such contention that it could not be updated).
pub fn take_message_token(session_id: &str, s: &Settings, now: u64) -> bool {
    // Kept until a full refill: an absent bucket is a full one.
    let ttl = (s.rate_burst / s.rate_per_sec * 1000.0).ceil().clamp(1000.0, f64::from(u32::MAX)) as u32;
    kv::update(&format!("rate/{session_id}"), Some(ttl), |current| {
        let b = current.and_then(|v| serde_json::from_str::<Bucket>(v).ok());
        let (held, at_ms) = b.map_or((None, 0), |b| (Some(b.tokens), b.at_ms));
        let tokens = gatewayd_plugin::rate::refill(held, at_ms, now, s.rate_per_sec, s.rate_burst);
        if tokens < 1.0 {
            // Nothing changes: a refused frame neither spends nor advances the clock.
            return (current.map(str::to_string), false);
        }
        (serde_json::to_string(&Bucket { tokens: tokens - 1.0, at_ms: now }).ok(), true)
    })
    .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_are_counted_by_their_64() {
        let a = client_key("2001:db8:1:2:aaaa::1".parse().ok());
        let b = client_key("2001:db8:1:2:bbbb::2".parse().ok());
        assert_eq!(a, b);
        assert_eq!(a, "2001:db8:1:2::/64");
        assert_eq!(client_key("::ffff:192.0.2.7".parse().ok()), "192.0.2.7");
        assert_eq!(client_key(None), "unknown");
    }
}
