//! The local message bus: live connections by id, and the named addresses plugins bind them to.
//!
//! Every connection has a bounded [`Outbox`] of outbound frames drained by its writer task;
//! senders never wait on a socket. A client that stops reading fills its outbox (bounded in
//! frames and in bytes) and is disconnected (close 1008) rather than growing memory. Addresses are namespaced by plugin, so two plugins
//! never see each other's connections.

use bytes::Bytes;
use dashmap::DashMap;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::Notify;

/// A connection id, unique for the daemon's lifetime (`connection-id` in the WIT contract).
pub type ConnId = u64;

/// A frame queued for a connection's writer task.
#[derive(Debug)]
pub enum Outbound {
    Text(Bytes),
    Binary(Bytes),
    Pong(Bytes),
    /// A server ping (idle connections, see `server::websocket`).
    Ping(Bytes),
    /// Send a close frame with this code and reason, then stop writing.
    Close(u16, String),
}

impl Outbound {
    /// Payload bytes this frame holds while it waits.
    fn size(&self) -> usize {
        match self {
            Outbound::Text(b) | Outbound::Binary(b) | Outbound::Pong(b) | Outbound::Ping(b) => b.len(),
            Outbound::Close(_, reason) => reason.len(),
        }
    }
}

/// The frames waiting in an [`Outbox`] and their payload bytes.
#[derive(Default)]
struct Queue {
    frames: VecDeque<Outbound>,
    bytes: usize,
}

/// A connection's outbound queue: bounded, allocated only while frames wait (an idle
/// connection holds no buffer), single consumer (the writer task).
pub struct Outbox {
    queue: Mutex<Queue>,
    /// At most this many frames wait.
    capacity: usize,
    /// At most this many payload bytes wait (one larger frame is accepted into an empty queue).
    capacity_bytes: usize,
    ready: Notify,
    /// Set when the queue overflowed: the writer closes with 1008 at once.
    overflowed: AtomicBool,
    /// Set when no more frames will come: the writer drains and stops.
    closed: AtomicBool,
}

/// Why [`Outbox::push`] refused a frame.
#[derive(Debug, PartialEq, Eq)]
pub enum PushError {
    /// The consumer is too slow; the connection is being closed with 1008.
    Full,
    /// The connection is closing.
    Closed,
}

/// What the writer should do next.
#[derive(Debug)]
pub enum Next {
    Frame(Outbound),
    /// Close with 1008: the client does not read.
    Overflowed,
    /// Everything is sent and nothing more will come.
    Done,
}

/// Queue capacity kept after a burst drains; more is released.
const OUTBOX_KEEP: usize = 8;

impl Outbox {
    /// An outbox that holds at most `capacity` frames and `capacity_bytes` payload bytes (a
    /// single frame larger than that is accepted when nothing else waits).
    pub fn new(capacity: usize, capacity_bytes: usize) -> Outbox {
        Outbox {
            queue: Mutex::new(Queue::default()),
            capacity,
            capacity_bytes,
            ready: Notify::new(),
            overflowed: AtomicBool::new(false),
            closed: AtomicBool::new(false),
        }
    }

    /// Queue a frame for the writer.
    pub fn push(&self, frame: Outbound) -> Result<(), PushError> {
        if self.closed.load(Ordering::Acquire) || self.overflowed.load(Ordering::Acquire) {
            return Err(PushError::Closed);
        }
        let size = frame.size();
        let mut q = self.queue.lock();
        let full = q.frames.len() >= self.capacity
            || (!q.frames.is_empty() && q.bytes.saturating_add(size) > self.capacity_bytes);
        if full {
            drop(q);
            self.overflowed.store(true, Ordering::Release);
            self.ready.notify_one();
            return Err(PushError::Full);
        }
        q.bytes += size;
        q.frames.push_back(frame);
        drop(q);
        self.ready.notify_one();
        Ok(())
    }

    /// Frames queued and not yet taken by the writer.
    pub fn queued_frames(&self) -> usize {
        self.queue.lock().frames.len()
    }

    /// No more frames: the writer sends what is queued and stops.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.ready.notify_one();
    }

    /// The next thing for the (single) writer to do.
    pub async fn next(&self) -> Next {
        loop {
            if self.overflowed.load(Ordering::Acquire) {
                return Next::Overflowed;
            }
            {
                let mut q = self.queue.lock();
                if let Some(frame) = q.frames.pop_front() {
                    q.bytes -= frame.size();
                    if q.frames.is_empty() && q.frames.capacity() > OUTBOX_KEEP {
                        q.frames.shrink_to(OUTBOX_KEEP);
                    }
                    return Next::Frame(frame);
                }
                if self.closed.load(Ordering::Acquire) {
                    return Next::Done;
                }
            }
            self.ready.notified().await;
        }
    }
}

/// What the bus holds for a live connection.
pub struct ConnEntry {
    outbox: Arc<Outbox>,
    /// The plugin serving the connection (address namespace).
    plugin: Arc<str>,
    addresses: Mutex<Vec<String>>,
    /// The connection's session state; holding the lock is what orders its events.
    session: Arc<SessionCell>,
}

/// A connection's session state (property 1: it lives in the host). Events of the session run
/// while holding this lock, one after another (property 4).
pub type SessionCell = tokio::sync::Mutex<Option<String>>;

/// The parts of a connection the bus needs at registration.
pub struct ConnParts {
    pub plugin: Arc<str>,
    pub outbox: Arc<Outbox>,
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
    pub fn register(&self, parts: ConnParts) -> ConnId {
        let ConnParts { plugin, outbox, session } = parts;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.conns.insert(id, Arc::new(ConnEntry { outbox, plugin, addresses: Mutex::new(Vec::new()), session }));
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

    /// Queue a frame for connection `id`. False when it is gone or its outbox is full (then
    /// it is closed with 1008, as a client that does not read).
    pub fn send(&self, id: ConnId, frame: Outbound) -> bool {
        let Some(outbox) = self.conns.get(&id).map(|e| e.outbox.clone()) else { return false };
        outbox.push(frame).is_ok()
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

    /// How many connections are bound to `address` in `plugin`'s namespace.
    pub fn count(&self, plugin: &str, address: &str) -> u32 {
        self.addresses.get(&address_key(plugin, address)).map_or(0, |ids| ids.len() as u32)
    }

    /// Ask every live connection to close with `code` and `reason`.
    pub fn close_all(&self, code: u16, reason: &str) {
        for entry in self.conns.iter() {
            let _ = entry.outbox.push(Outbound::Close(code, reason.to_string()));
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

    fn parts(outbox: Arc<Outbox>) -> ConnParts {
        ConnParts { plugin: "sig".into(), outbox, session: Arc::default() }
    }

    fn text(s: &'static str) -> Outbound {
        Outbound::Text(Bytes::from_static(s.as_bytes()))
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
    }

    #[test]
    fn addresses_are_per_plugin_and_cleaned_up() {
        let bus = Bus::new();
        let outbox = Arc::new(Outbox::new(8, 1 << 20));
        let a = bus.register(parts(outbox.clone()));
        assert!(bus.bind("sig", a, "guest/b/1"));
        assert!(!bus.bind("chat", a, "guest/b/1"), "another plugin cannot bind it");
        assert_eq!(bus.send_to("chat", "guest/b/1", Bytes::from_static(b"x")), 0);
        assert_eq!(bus.count("sig", "guest/b/1"), 1);
        assert_eq!(bus.send_to("sig", "guest/b/1", Bytes::from_static(b"x")), 1);
        assert!(matches!(block_on(outbox.next()), Next::Frame(Outbound::Text(t)) if &t[..] == b"x"));
        bus.unregister(a);
        assert_eq!(bus.send_to("sig", "guest/b/1", Bytes::from_static(b"x")), 0);
        assert!(bus.addresses.is_empty());
    }

    #[test]
    fn a_full_outbox_refuses_and_overflows() {
        let outbox = Outbox::new(2, 1 << 20);
        assert_eq!(outbox.push(text("1")), Ok(()));
        assert_eq!(outbox.push(text("2")), Ok(()));
        assert_eq!(outbox.push(text("3")), Err(PushError::Full));
        assert_eq!(outbox.push(text("4")), Err(PushError::Closed));
        assert!(matches!(block_on(outbox.next()), Next::Overflowed));
    }

    #[test]
    fn an_outbox_is_bounded_in_bytes_too() {
        let outbox = Outbox::new(100, 10);
        assert_eq!(
            outbox.push(Outbound::Binary(Bytes::from(vec![0; 25]))),
            Ok(()),
            "one large frame into an empty queue"
        );
        assert_eq!(outbox.push(text("x")), Err(PushError::Full));
        assert!(matches!(block_on(outbox.next()), Next::Overflowed));

        let outbox = Outbox::new(100, 10);
        for _ in 0..10 {
            assert_eq!(outbox.push(text("x")), Ok(()));
        }
        assert!(matches!(block_on(outbox.next()), Next::Frame(_)));
        assert_eq!(outbox.push(text("y")), Ok(()), "a drained frame frees its bytes");
        assert_eq!(outbox.push(text("z")), Err(PushError::Full));
    }

    #[test]
    fn a_closed_outbox_drains_then_ends() {
        let outbox = Outbox::new(4, 1 << 20);
        outbox.push(text("1")).unwrap();
        outbox.close();
        assert_eq!(outbox.push(text("2")), Err(PushError::Closed));
        assert!(matches!(block_on(outbox.next()), Next::Frame(_)));
        assert!(matches!(block_on(outbox.next()), Next::Done));
    }
}
