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

    /// When the live value of `key` is `expected` (`None`: no live entry), replace it with
    /// `value` (`None`: remove it), expiring after `ttl_ms` when given, and return true; else
    /// change nothing and return false. Atomic per key (the map's shard lock is held).
    pub fn compare_and_swap(
        &self,
        key: String,
        expected: Option<&str>,
        value: Option<String>,
        ttl_ms: Option<u32>,
    ) -> bool {
        use dashmap::mapref::entry::Entry as Slot;
        let now = Instant::now();
        let expires = ttl_ms.map(|ms| now + Duration::from_millis(ms.into()));
        match self.entries.entry(key) {
            Slot::Occupied(mut slot) => {
                let current = slot.get().live(now).then(|| slot.get().value.as_str());
                if current != expected {
                    return false;
                }
                match value {
                    Some(value) => *slot.get_mut() = Entry { value, expires },
                    None => {
                        slot.remove();
                    }
                }
            }
            Slot::Vacant(slot) => {
                if expected.is_some() {
                    return false;
                }
                if let Some(value) = value {
                    slot.insert(Entry { value, expires });
                }
            }
        }
        self.writes.fetch_add(1, Ordering::Relaxed);
        true
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

    #[test]
    fn compare_and_swap_changes_only_the_expected_value() {
        let kv = Kv::default();
        assert!(kv.compare_and_swap("c".into(), None, Some("1".into()), None), "absent is expected as None");
        assert!(!kv.compare_and_swap("c".into(), None, Some("9".into()), None), "no longer absent");
        assert!(!kv.compare_and_swap("c".into(), Some("0"), Some("9".into()), None), "stale expectation");
        assert!(kv.compare_and_swap("c".into(), Some("1"), Some("2".into()), None));
        assert_eq!(kv.get("c").as_deref(), Some("2"));
        assert!(kv.compare_and_swap("c".into(), Some("2"), None, None), "None removes");
        assert_eq!(kv.get("c"), None);
        // An expired entry counts as absent.
        kv.set("d".into(), "old".into(), Some(0));
        assert!(!kv.compare_and_swap("d".into(), Some("old"), Some("x".into()), None));
        assert!(kv.compare_and_swap("d".into(), None, Some("new".into()), None));
        assert_eq!(kv.get("d").as_deref(), Some("new"));
    }

    #[test]
    fn concurrent_increments_are_not_lost() {
        let kv = std::sync::Arc::new(Kv::default());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let kv = kv.clone();
                std::thread::spawn(move || {
                    for _ in 0..500 {
                        loop {
                            let current = kv.get("n");
                            let next = current.as_deref().map_or(0, |v| v.parse::<u32>().unwrap()) + 1;
                            if kv.compare_and_swap("n".into(), current.as_deref(), Some(next.to_string()), None) {
                                break;
                            }
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(kv.get("n").as_deref(), Some("2000"));
    }
}
