//! Plugin-wide key/value state (`gatewayd:plugin/kv`), held by the host so it survives
//! instances and plugin versions. Expired entries are invisible at once and swept lazily.

use dashmap::DashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Entries of one plugin.
#[derive(Default)]
pub struct Kv {
    entries: DashMap<String, Entry>,
    writes: AtomicU64,
}

struct Entry {
    value: String,
    expires: Option<Instant>,
}

impl Entry {
    fn live(&self, now: Instant) -> bool {
        self.expires.is_none_or(|t| t > now)
    }
}

/// Sweep expired entries once every this many writes.
const SWEEP_EVERY: u64 = 4096;

impl Kv {
    pub fn get(&self, key: &str) -> Option<String> {
        let now = Instant::now();
        self.entries.get(key).filter(|e| e.live(now)).map(|e| e.value.clone())
    }

    /// Store `value` under `key`, expiring after `ttl_ms` when given.
    pub fn set(&self, key: String, value: String, ttl_ms: Option<u32>) {
        let expires = ttl_ms.map(|ms| Instant::now() + Duration::from_millis(ms.into()));
        self.entries.insert(key, Entry { value, expires });
        if self.writes.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            let now = Instant::now();
            self.entries.retain(|_, e| e.live(now));
        }
    }

    /// Remove `key` and return its value if it was live. Atomic per key.
    pub fn take(&self, key: &str) -> Option<String> {
        let now = Instant::now();
        self.entries.remove(key).filter(|(_, e)| e.live(now)).map(|(_, e)| e.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn take_is_once_and_ttl_expires() {
        let kv = Kv::default();
        kv.set("a".into(), "1".into(), None);
        assert_eq!(kv.get("a").as_deref(), Some("1"));
        assert_eq!(kv.take("a").as_deref(), Some("1"));
        assert_eq!(kv.take("a"), None);
        kv.set("b".into(), "2".into(), Some(0));
        assert_eq!(kv.get("b"), None);
    }
}
