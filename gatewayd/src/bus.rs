//! The local message bus: live connections by id, and the named addresses plugins bind them to.
//!
//! Every connection has a bounded queue of outbound frames drained by its writer task; senders
//! never wait on a socket. A client that stops reading fills its queue and is disconnected
//! (close 1008) rather than growing memory. Addresses are namespaced by plugin, so two plugins
//! never see each other's connections.

use bytes::Bytes;
use dashmap::DashMap;
use parking_lot::Mutex;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::{Notify, mpsc};

/// A connection id, unique for the daemon's lifetime (`connection-id` in the WIT contract).
pub type ConnId = u64;

/// A frame queued for a connection's writer task.
#[derive(Debug)]
pub enum Outbound {
    Text(Bytes),
    Binary(Bytes),
    Pong(Bytes),
    /// Send a close frame with this code and reason, then stop writing.
    Close(u16, String),
}

/// What the bus holds for a live connection.
pub struct ConnEntry {
    tx: mpsc::Sender<Outbound>,
    /// The plugin serving the connection (address namespace).
    plugin: Arc<str>,
    addresses: Mutex<Vec<String>>,
    /// Wakes the writer to close the connection with 1008 when the queue overflows.
    kill: Arc<Notify>,
    /// The connection's session state; holding the lock is what orders its events.
    session: Arc<SessionCell>,
}

/// A connection's session state (property 1: it lives in the host). Events of the session run
/// while holding this lock, one after another (property 4).
pub type SessionCell = tokio::sync::Mutex<Option<String>>;

/// The parts of a connection the bus needs at registration.
pub struct ConnParts {
    pub plugin: Arc<str>,
    pub tx: mpsc::Sender<Outbound>,
    pub kill: Arc<Notify>,
    pub session: Arc<SessionCell>,
}

/// The registry of live connections and their addresses.
#[derive(Default)]
pub struct Bus {
    next_id: AtomicU64,
    conns: DashMap<ConnId, Arc<ConnEntry>>,
    /// `<plugin>\0<address>` -> connections bound to it.
    addresses: DashMap<String, Vec<ConnId>>,
}

fn address_key(plugin: &str, address: &str) -> String {
    let mut k = String::with_capacity(plugin.len() + 1 + address.len());
    k.push_str(plugin);
    k.push('\0');
    k.push_str(address);
    k
}

impl Bus {
    pub fn new() -> Bus {
        Bus { next_id: AtomicU64::new(1), ..Default::default() }
    }

    /// Register a new connection served by `plugin`; returns its id.
    /// `parts.kill` is notified when the connection must be dropped as a slow consumer.
    pub fn register(&self, parts: ConnParts) -> ConnId {
        let ConnParts { plugin, tx, kill, session } = parts;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.conns.insert(id, Arc::new(ConnEntry { tx, plugin, addresses: Mutex::new(Vec::new()), kill, session }));
        id
    }

    /// Forget a connection and every address it held.
    pub fn unregister(&self, id: ConnId) {
        if let Some((_, entry)) = self.conns.remove(&id) {
            for address in entry.addresses.lock().drain(..) {
                self.addresses.remove_if_mut(&address, |_, ids| {
                    ids.retain(|c| *c != id);
                    ids.is_empty()
                });
            }
        }
    }

    /// Number of live connections.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// Queue a frame for connection `id`. False when it is gone or its queue is full (then
    /// it is told to close with 1008, as a client that does not read).
    pub fn send(&self, id: ConnId, frame: Outbound) -> bool {
        let Some(entry) = self.conns.get(&id).map(|e| Arc::clone(e.value())) else { return false };
        Self::push(&entry, frame)
    }

    fn push(entry: &ConnEntry, frame: Outbound) -> bool {
        match entry.tx.try_send(frame) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                entry.kill.notify_one();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Bind `address` (in `plugin`'s namespace) to connection `id`. Only the plugin serving a
    /// connection may bind it; returns false otherwise or when the connection is gone.
    pub fn bind(&self, plugin: &str, id: ConnId, address: &str) -> bool {
        let Some(entry) = self.conns.get(&id).map(|e| Arc::clone(e.value())) else { return false };
        if &*entry.plugin != plugin {
            return false;
        }
        let key = address_key(plugin, address);
        let mut held = entry.addresses.lock();
        if held.contains(&key) {
            return true;
        }
        self.addresses.entry(key.clone()).or_default().push(id);
        held.push(key);
        true
    }

    /// Remove `address` from connection `id`.
    pub fn unbind(&self, plugin: &str, id: ConnId, address: &str) {
        let Some(entry) = self.conns.get(&id).map(|e| Arc::clone(e.value())) else { return };
        let key = address_key(plugin, address);
        entry.addresses.lock().retain(|a| *a != key);
        self.addresses.remove_if_mut(&key, |_, ids| {
            ids.retain(|c| *c != id);
            ids.is_empty()
        });
    }

    /// Queue `text` to every connection bound to `address`; returns how many took it.
    pub fn send_to(&self, plugin: &str, address: &str, text: Bytes) -> u32 {
        let ids: Vec<ConnId> = match self.addresses.get(&address_key(plugin, address)) {
            Some(ids) => ids.clone(),
            None => return 0,
        };
        ids.into_iter().filter(|id| self.send(*id, Outbound::Text(text.clone()))).count() as u32
    }

    /// Queue a close frame to every connection bound to `address`; returns how many took it.
    pub fn close_to(&self, plugin: &str, address: &str, code: u16, reason: &str) -> u32 {
        let ids: Vec<ConnId> = match self.addresses.get(&address_key(plugin, address)) {
            Some(ids) => ids.clone(),
            None => return 0,
        };
        ids.into_iter().filter(|id| self.send(*id, Outbound::Close(code, reason.to_string()))).count() as u32
    }

    /// The session cell of connection `id`, while it is live.
    pub fn session(&self, id: ConnId) -> Option<Arc<SessionCell>> {
        self.conns.get(&id).map(|e| e.session.clone())
    }

    /// Ask every live connection to close with `code` and `reason`.
    pub fn close_all(&self, code: u16, reason: &str) {
        for entry in self.conns.iter() {
            Self::push(entry.value(), Outbound::Close(code, reason.to_string()));
        }
    }

    /// Whether connection `id` is served by `plugin`.
    pub fn served_by(&self, id: ConnId, plugin: &str) -> bool {
        self.conns.get(&id).is_some_and(|e| &*e.plugin == plugin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(tx: mpsc::Sender<Outbound>, kill: Arc<Notify>) -> ConnParts {
        ConnParts { plugin: "sig".into(), tx, kill, session: Arc::default() }
    }

    #[test]
    fn addresses_are_per_plugin_and_cleaned_up() {
        let bus = Bus::new();
        let (tx, mut rx) = mpsc::channel(8);
        let a = bus.register(parts(tx, Arc::new(Notify::new())));
        assert!(bus.bind("sig", a, "guest/b/1"));
        assert!(!bus.bind("chat", a, "guest/b/1"), "another plugin cannot bind it");
        assert_eq!(bus.send_to("chat", "guest/b/1", Bytes::from_static(b"x")), 0);
        assert_eq!(bus.send_to("sig", "guest/b/1", Bytes::from_static(b"x")), 1);
        assert!(matches!(rx.try_recv(), Ok(Outbound::Text(t)) if &t[..] == b"x"));
        bus.unregister(a);
        assert_eq!(bus.send_to("sig", "guest/b/1", Bytes::from_static(b"x")), 0);
        assert!(bus.addresses.is_empty());
    }

    #[test]
    fn a_full_queue_refuses_and_asks_to_close() {
        let bus = Bus::new();
        let (tx, mut rx) = mpsc::channel(2);
        let kill = Arc::new(Notify::new());
        let a = bus.register(parts(tx, kill.clone()));
        assert!(bus.send(a, Outbound::Text(Bytes::from_static(b"1"))));
        assert!(bus.send(a, Outbound::Text(Bytes::from_static(b"2"))));
        assert!(!bus.send(a, Outbound::Text(Bytes::from_static(b"3"))));
        assert!(matches!(rx.try_recv(), Ok(Outbound::Text(_))));
        // The overflow left a permit: the writer's next wait returns at once.
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
            tokio::time::timeout(std::time::Duration::from_millis(100), kill.notified()).await.expect("kill notified")
        });
    }
}
