//! Connection admission at the edge: per-listener and per-address caps, the process's descriptor
//! budget, trusted proxies (`X-Forwarded-For`), and the edge's counters in `/metrics`.
//!
//! A connection is admitted at accept, before hyper reads a byte, and holds a [`Permit`] until
//! its socket closes (a WebSocket keeps it after the upgrade). Refusal is cheap: one
//! non-blocking write of a fixed 503 answer and a close. Three bounds apply, in order:
//! 1. the process: client connections of all listeners stay below `RLIMIT_NOFILE` minus a
//!    reserve, so the admin listener, the database, plugin files and the accept loop itself
//!    always have descriptors ([`Budget`]);
//! 2. the listener's `max_connections`;
//! 3. the listener's `max_connections_per_ip`, by peer address, or for a connection from a
//!    trusted proxy by the client address its `X-Forwarded-For` names (checked per request).
//!
//! Metrics (see `docs/operating.md`):
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `gatewayd_edge_refused_total` | counter | listener, reason (`process`, `listener`, `address`) |
//! | `gatewayd_edge_accept_errors_total` | counter | listener, kind (`descriptors`, `other`) |
//! | `gatewayd_edge_closed_total` | counter | reason (`message_too_big`, `protocol`, `idle`, `write_timeout`, `slow_consumer`, `header_timeout`, `body_timeout`) |
//! | `gatewayd_edge_open_connections` | gauge | listener |

use crate::config::ListenerConfig;
use ipnet::IpNet;
use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerReason {
    listener: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerKind {
    listener: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabel {
    listener: String,
}

/// Why the daemon ended a client connection itself (label of `gatewayd_edge_closed_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// A WebSocket message over `max_message_bytes` (1009).
    MessageTooBig,
    /// A WebSocket protocol violation (1002, 1007).
    Protocol,
    /// A WebSocket client silent for `idle_timeout_ms` (1001).
    Idle,
    /// An outbound frame took longer than `write_timeout_ms`.
    WriteTimeout,
    /// The send queue was full (1008).
    SlowConsumer,
    /// Request headers not complete within `header_timeout_ms` (or an idle keep-alive).
    HeaderTimeout,
    /// A request body not complete within `body_timeout_ms` (408).
    BodyTimeout,
}

impl CloseReason {
    fn label(self) -> &'static str {
        match self {
            CloseReason::MessageTooBig => "message_too_big",
            CloseReason::Protocol => "protocol",
            CloseReason::Idle => "idle",
            CloseReason::WriteTimeout => "write_timeout",
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::HeaderTimeout => "header_timeout",
            CloseReason::BodyTimeout => "body_timeout",
        }
    }
}

/// The edge's metrics, registered in the daemon's registry.
#[derive(Default)]
pub struct EdgeMetrics {
    refused: Family<ListenerReason, Counter>,
    accept_errors: Family<ListenerKind, Counter>,
    closed: Family<Reason, Counter>,
    open: Family<ListenerLabel, Gauge>,
}

impl EdgeMetrics {
    /// Register the edge metrics (prefix `gatewayd_edge_`) in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "edge_refused",
            "Connections refused at the edge, by listener and reason (process, listener, address)",
            self.refused.clone(),
        );
        registry.register(
            "edge_accept_errors",
            "accept() failures by listener and kind (descriptors: EMFILE/ENFILE, other)",
            self.accept_errors.clone(),
        );
        registry.register("edge_closed", "Client connections the daemon ended itself, by reason", self.closed.clone());
        registry.register("edge_open_connections", "Open client connections by listener", self.open.clone());
    }

    /// Count a connection the daemon ended itself.
    pub fn closed(&self, reason: CloseReason) {
        self.closed.get_or_create(&Reason { reason: reason.label().into() }).inc();
    }

    /// Count a failed `accept()`; `descriptors` when the process or system ran out of them.
    pub fn accept_error(&self, listener: &str, descriptors: bool) {
        let kind = if descriptors { "descriptors" } else { "other" };
        self.accept_errors.get_or_create(&ListenerKind { listener: listener.into(), kind: kind.into() }).inc();
    }

    fn refused(&self, listener: &str, why: Refusal) {
        let reason = match why {
            Refusal::Process => "process",
            Refusal::Listener => "listener",
            Refusal::Address => "address",
        };
        self.refused.get_or_create(&ListenerReason { listener: listener.into(), reason: reason.into() }).inc();
    }
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The process's descriptor budget for client connections is used up.
    Process,
    /// The listener's `max_connections` is reached.
    Listener,
    /// The client address's `max_connections_per_ip` is reached.
    Address,
}

/// The process-wide budget of client connections: `RLIMIT_NOFILE` minus a reserve.
pub struct Budget {
    max: usize,
    open: AtomicUsize,
}

impl Budget {
    /// A budget of `max` client connections.
    pub fn new(max: usize) -> Arc<Budget> {
        Arc::new(Budget { max, open: AtomicUsize::new(0) })
    }

    /// The budget for this process: raises the soft `RLIMIT_NOFILE` to the hard limit, then keeps
    /// `reserved` descriptors (default a tenth of it, at least 128) for everything that is not a
    /// client connection.
    pub fn for_process(reserved: Option<u64>) -> Arc<Budget> {
        let limit = raise_nofile_limit();
        let reserve = reserved.unwrap_or((limit / 10).max(128));
        Budget::new(limit.saturating_sub(reserve).max(1) as usize)
    }

    /// Client connections the process admits at most.
    pub fn max(&self) -> usize {
        self.max
    }

    fn take(&self) -> bool {
        take_one(&self.open, self.max)
    }
}

/// Raise the soft open-file limit to the hard one; returns the soft limit in force.
fn raise_nofile_limit() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit write/read only the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    lim.rlim_cur
}

/// Increment `counter` unless it is at `max`.
fn take_one(counter: &AtomicUsize, max: usize) -> bool {
    counter.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1)).is_ok()
}

/// Admission for one listener.
pub struct Admission {
    listener: String,
    max: usize,
    per_ip: usize,
    trusted: Vec<IpNet>,
    open: AtomicUsize,
    by_ip: Mutex<HashMap<IpAddr, usize>>,
    budget: Arc<Budget>,
    metrics: Arc<EdgeMetrics>,
    gauge: Gauge,
}

impl Admission {
    /// Admission for listener `name` with its configured caps, within the process `budget`.
    pub fn new(name: &str, config: &ListenerConfig, budget: Arc<Budget>, metrics: Arc<EdgeMetrics>) -> Arc<Admission> {
        let gauge = metrics.open.get_or_create(&ListenerLabel { listener: name.into() }).clone();
        Arc::new(Admission {
            listener: name.into(),
            max: config.max_connections,
            per_ip: config.max_connections_per_ip,
            trusted: config.trusted_proxies.clone(),
            open: AtomicUsize::new(0),
            by_ip: Mutex::new(HashMap::new()),
            budget,
            metrics,
            gauge,
        })
    }

    /// The edge metrics.
    pub fn metrics(&self) -> &Arc<EdgeMetrics> {
        &self.metrics
    }

    /// Whether `peer` is a trusted proxy of this listener.
    pub fn is_trusted(&self, peer: IpAddr) -> bool {
        self.trusted.iter().any(|net| net.contains(&canonical(peer)))
    }

    /// Admit a connection from `peer` at accept. A trusted proxy is not counted per address
    /// here: its requests are, by the client they forward ([`Admission::admit_forwarded`]).
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Permit, Refusal> {
        let peer = canonical(peer);
        if !self.budget.take() {
            return Err(self.refuse(Refusal::Process));
        }
        let mut permit = Permit { admission: self.clone(), address: None, counted: true };
        if !take_one(&self.open, self.max) {
            permit.counted = false;
            self.budget.open.fetch_sub(1, Ordering::AcqRel);
            return Err(self.refuse(Refusal::Listener));
        }
        self.gauge.inc();
        if !self.is_trusted(peer) {
            permit.address = Some(self.take_address(peer)?);
        }
        Ok(permit)
    }

    /// Count a request (and its WebSocket, if it upgrades) forwarded by a trusted proxy against
    /// the client address it names.
    pub fn admit_forwarded(self: &Arc<Self>, client: IpAddr) -> Result<AddressPermit, Refusal> {
        self.take_address(canonical(client))
    }

    fn take_address(self: &Arc<Self>, ip: IpAddr) -> Result<AddressPermit, Refusal> {
        let mut by_ip = self.by_ip.lock();
        let n = by_ip.entry(ip).or_insert(0);
        if *n >= self.per_ip {
            if *n == 0 {
                by_ip.remove(&ip);
            }
            drop(by_ip);
            return Err(self.refuse(Refusal::Address));
        }
        *n += 1;
        Ok(AddressPermit { admission: self.clone(), ip })
    }

    fn refuse(&self, why: Refusal) -> Refusal {
        self.metrics.refused(&self.listener, why);
        why
    }

    /// The client address of a request that arrived from `peer`: for a trusted proxy, the
    /// right-most `X-Forwarded-For` address that is not itself a trusted proxy (addresses left
    /// of it were written by the client and prove nothing); otherwise `peer`.
    pub fn client_ip(&self, peer: IpAddr, headers: &hyper::HeaderMap) -> IpAddr {
        if !self.is_trusted(peer) {
            return peer;
        }
        let hops: Vec<IpAddr> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .map(|s| s.parse::<IpAddr>().ok())
            .collect::<Option<Vec<_>>>()
            .unwrap_or_default();
        hops.into_iter().rev().find(|ip| !self.is_trusted(*ip)).unwrap_or(peer)
    }
}

/// IPv4-mapped IPv6 addresses count as their IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// A connection's place in its listener's and the process's counts; released on drop.
pub struct Permit {
    admission: Arc<Admission>,
    address: Option<AddressPermit>,
    counted: bool,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.counted {
            self.admission.open.fetch_sub(1, Ordering::AcqRel);
            self.admission.budget.open.fetch_sub(1, Ordering::AcqRel);
            self.admission.gauge.dec();
        }
        self.address.take();
    }
}

/// A connection's (or forwarded request's) place in its client address's count.
pub struct AddressPermit {
    admission: Arc<Admission>,
    ip: IpAddr,
}

impl Drop for AddressPermit {
    fn drop(&mut self) {
        let mut by_ip = self.admission.by_ip.lock();
        if let Some(n) = by_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                by_ip.remove(&self.ip);
            }
        }
    }
}

/// The fixed answer to a refused connection: written without waiting, then the socket closes.
pub const REFUSED_RESPONSE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: 71\r\nconnection: close\r\n\r\n{\"error\":\"over_capacity\",\"message\":\"too many connections, retry later\"}";

#[cfg(test)]
mod tests {
    use super::*;

    fn listener(max: usize, per_ip: usize, trusted: &[&str]) -> ListenerConfig {
        let toml = format!(
            "address = \"127.0.0.1:1\"\nmax_connections = {max}\nmax_connections_per_ip = {per_ip}\ntrusted_proxies = [{}]",
            trusted.iter().map(|t| format!("\"{t}\"")).collect::<Vec<_>>().join(",")
        );
        toml::from_str(&toml).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_refused_response_declares_its_exact_length() {
        let text = std::str::from_utf8(REFUSED_RESPONSE).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())));
        serde_json::from_str::<serde_json::Value>(body).unwrap();
    }

    #[test]
    fn caps_apply_per_address_per_listener_and_per_process_and_free_on_drop() {
        let metrics = Arc::new(EdgeMetrics::default());
        let budget = Budget::new(5);
        let a = Admission::new("a", &listener(4, 2, &[]), budget.clone(), metrics.clone());
        let b = Admission::new("b", &listener(10, 10, &[]), budget.clone(), metrics.clone());
        let p1 = a.admit(ip("10.0.0.1")).unwrap();
        let _p2 = a.admit(ip("10.0.0.1")).unwrap();
        assert_eq!(a.admit(ip("10.0.0.1")).err(), Some(Refusal::Address));
        assert_eq!(a.admit(ip("::ffff:10.0.0.1")).err(), Some(Refusal::Address), "mapped IPv6 is the same client");
        let _p3 = a.admit(ip("10.0.0.2")).unwrap();
        let _p4 = a.admit(ip("10.0.0.3")).unwrap();
        assert_eq!(a.admit(ip("10.0.0.4")).err(), Some(Refusal::Listener));
        let _q1 = b.admit(ip("10.0.0.4")).unwrap();
        assert_eq!(b.admit(ip("10.0.0.5")).err(), Some(Refusal::Process));
        drop(p1);
        assert!(a.admit(ip("10.0.0.1")).is_ok(), "a dropped permit frees every count");
        // p2, p3, p4 and q1 are still held; the permit just taken was dropped again.
        assert_eq!(budget.open.load(Ordering::Acquire), 4);
        assert!(a.by_ip.lock().values().all(|n| *n > 0));
    }

    #[test]
    fn forwarded_clients_are_counted_by_the_address_a_trusted_proxy_names() {
        let metrics = Arc::new(EdgeMetrics::default());
        let a = Admission::new("a", &listener(100, 1, &["10.1.0.0/16", "192.0.2.7"]), Budget::new(100), metrics);
        // The proxy itself is not limited per address.
        let _c1 = a.admit(ip("10.1.2.3")).unwrap();
        let _c2 = a.admit(ip("10.1.2.3")).unwrap();
        let mut h = hyper::HeaderMap::new();
        h.insert("x-forwarded-for", "6.6.6.6, 198.51.100.9, 192.0.2.7".parse().unwrap());
        assert_eq!(a.client_ip(ip("10.1.2.3"), &h), ip("198.51.100.9"), "right-most untrusted hop");
        assert_eq!(
            a.client_ip(ip("203.0.113.1"), &h),
            ip("203.0.113.1"),
            "untrusted peers cannot claim another address"
        );
        h.insert("x-forwarded-for", "garbage".parse().unwrap());
        assert_eq!(a.client_ip(ip("10.1.2.3"), &h), ip("10.1.2.3"), "unparsable header: the peer counts");
        let f = a.admit_forwarded(ip("198.51.100.9")).unwrap();
        assert_eq!(a.admit_forwarded(ip("198.51.100.9")).err(), Some(Refusal::Address));
        drop(f);
        assert!(a.admit_forwarded(ip("198.51.100.9")).is_ok());
    }
}
