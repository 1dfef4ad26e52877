//! One-shot plugin timers (`gatewayd:plugin/timers`). A timer is a sleeping task; re-arming a
//! key aborts the previous one. Timers belong to the plugin, not to a version, so a timer armed
//! by one version fires into whichever version is current.

use dashmap::DashMap;
use tokio::task::AbortHandle;

#[derive(Default)]
pub struct Timers {
    armed: DashMap<String, AbortHandle>,
}

impl Timers {
    /// Register `handle` as the timer `key`, aborting one already armed under that key.
    pub fn arm(&self, key: String, handle: AbortHandle) {
        if let Some(old) = self.armed.insert(key, handle) {
            old.abort();
        }
    }

    /// Disarm `key`; false when nothing was armed.
    pub fn cancel(&self, key: &str) -> bool {
        match self.armed.remove(key) {
            Some((_, h)) => {
                h.abort();
                true
            }
            None => false,
        }
    }

    /// Forget `key` once its timer has fired, unless it was re-armed meanwhile.
    pub fn fired(&self, key: &str, handle_id: tokio::task::Id) {
        self.armed.remove_if(key, |_, h| h.id() == handle_id);
    }
}
