//! Outbound network as a capability: the daemon opens every socket a provider plugin's plan
//! asks for, within that plugin's `[plugins.<name>.capabilities]` (docs/security.md).
//!
//! A speech provider plugin is sans-IO: it returns a plan ([`WsPlan`], [`HttpPlan`]: URL,
//! headers, subprotocols, body) and the host carries it out through the plugin's [`Outbound`]:
//! - the URL's `host:port` must be in `connect`, checked before any DNS lookup; names resolve
//!   to public addresses only, and the socket goes to the checked address ([`allow`]'s rule);
//! - every wait is timed: connect (lookup + TCP + TLS + WebSocket upgrade), first byte (HTTP
//!   response head), idle (no byte from the vendor);
//! - at most `max_streams` WebSockets and HTTP requests of the plugin are open at once;
//! - headers may name secrets from `secret_env` the host fills in ([`Header::secret`]); the
//!   plugin never sees the value, and no error or log prints it;
//! - TLS is rustls (ring) with the platform roots plus `[network] extra_ca_file` ([`tls`]).
//!
//! Modules: `allow` (allowlist, DNS, address ranges), `secrets` (secrets and plan headers),
//! `tls`, `ws` (WebSocket client), `http` (streaming HTTP client), `error`.

pub mod allow;
mod error;
mod http;
pub mod secrets;
pub mod tls;
mod ws;

#[cfg(test)]
mod tests;

pub use allow::{Allowlist, Endpoint, Resolve, SystemResolver, is_public};
pub use error::{OutboundError, Phase};
pub use http::{HttpBody, HttpPlan, HttpResponse, MAX_IDLE_PER_HOST, MAX_REQUEST_BODY_BYTES, POOL_IDLE_TIMEOUT};
pub use secrets::{Header, HeaderValueSpec, Secret, Secrets};
pub use ws::{MAX_WS_MESSAGE_BYTES, WsConnection, WsMessage, WsPlan};

use crate::config::{Capabilities, ConfigError};
use http_body_util::BodyExt;
use rustls::ClientConfig;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use url::{Host, Url};

/// Default `connect_timeout_ms`: lookup, TCP, TLS and the WebSocket upgrade answer together.
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 10_000;
/// Default `first_byte_timeout_ms`: from sending an HTTP request to its response head.
pub const DEFAULT_FIRST_BYTE_TIMEOUT_MS: u64 = 10_000;
/// Default `idle_timeout_ms`: the longest the vendor may send nothing on an open stream.
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 30_000;
/// Default `max_streams`: WebSockets plus HTTP requests of one plugin open at once.
pub const DEFAULT_MAX_STREAMS: usize = 128;
/// Default `max_response_bytes`: an HTTP response body's total size (16 MiB).
pub const DEFAULT_MAX_RESPONSE_BYTES: u64 = 16 * 1024 * 1024;
/// The start of a vendor's error body kept in [`OutboundError::Status`], in bytes.
pub const MAX_ERROR_BODY_BYTES: usize = 4096;

/// A provider plugin's outbound network: its allowlist, limits, secrets and stream count.
/// Cheap to share behind an `Arc`; every method takes `&self`.
pub struct Outbound {
    plugin: String,
    allow: Allowlist,
    connect_timeout: Duration,
    first_byte_timeout: Duration,
    idle_timeout: Duration,
    max_streams: usize,
    max_response_bytes: u64,
    secrets: Arc<Secrets>,
    tls: Arc<ClientConfig>,
    resolver: Arc<dyn Resolve>,
    streams: Arc<Semaphore>,
    pool: Arc<http::Pool>,
}

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbound")
            .field("plugin", &self.plugin)
            .field("allow", &self.allow)
            .field("max_streams", &self.max_streams)
            .field("secrets", &self.secrets)
            .finish_non_exhaustive()
    }
}

impl Outbound {
    /// The outbound network of plugin `plugin` from its validated capabilities (secrets already
    /// read by [`crate::config::Config::parse`]), with TLS from [`tls::client_config`] and the
    /// system resolver. Errors: a bad `connect` entry (only if `caps` was not validated).
    pub fn new(plugin: &str, caps: &Capabilities, tls: Arc<ClientConfig>) -> Result<Outbound, ConfigError> {
        let allow = Allowlist::parse(&caps.connect).map_err(|(i, message)| ConfigError {
            path: format!("plugins.{plugin}.capabilities.connect[{i}]"),
            message,
        })?;
        Ok(Outbound {
            plugin: plugin.to_string(),
            allow,
            connect_timeout: Duration::from_millis(caps.connect_timeout_ms),
            first_byte_timeout: Duration::from_millis(caps.first_byte_timeout_ms),
            idle_timeout: Duration::from_millis(caps.idle_timeout_ms),
            max_streams: caps.max_streams,
            max_response_bytes: caps.max_response_bytes,
            secrets: Arc::new(caps.secrets.clone()),
            tls,
            resolver: Arc::new(SystemResolver),
            streams: Arc::new(Semaphore::new(caps.max_streams)),
            pool: Arc::default(),
        })
    }

    /// The same with another resolver (tests count and steer lookups with it).
    pub fn with_resolver(mut self, resolver: Arc<dyn Resolve>) -> Outbound {
        self.resolver = resolver;
        self
    }

    /// The plugin this belongs to.
    pub fn plugin(&self) -> &str {
        &self.plugin
    }

    /// Streams (WebSockets and HTTP requests) open now, connecting ones included.
    pub fn open_streams(&self) -> usize {
        self.max_streams - self.streams.available_permits()
    }

    /// Idle HTTP connections kept alive for reuse ([`http::POOL_IDLE_TIMEOUT`]).
    pub fn idle_connections(&self) -> usize {
        self.pool.idle()
    }

    /// Open a WebSocket as `plan` says; see [`WsPlan`] and [`WsConnection`].
    ///
    /// Errors: `BadHeader`/`UnknownSecret`/`BadPlan` (nothing attempted), `NotAllowed` (no
    /// lookup made), `TooManyStreams`, `Dns`, `PrivateAddress`, `Connect`, `Tls`,
    /// `Timeout{Connect}` (lookup to upgrade answer over `connect_timeout_ms`), `Status` (the
    /// vendor answered the upgrade with another status: its code and the start of its body),
    /// `Http`, `WebSocket` (a bad handshake answer).
    pub async fn connect_ws(&self, plan: WsPlan) -> Result<WsConnection, OutboundError> {
        ws::connect(self, plan).await
    }

    /// Send an HTTP request as `plan` says and return once the response head arrives; the
    /// body streams from [`HttpResponse::body`]. Any status is returned as is
    /// ([`HttpResponse::error_for_status`] turns 4xx/5xx into `Status`). Dropping the response
    /// or its body before its end closes the connection, which cancels the request at the
    /// vendor; a body read to its end leaves the connection open for the next request to the
    /// same scheme, host and port (keep-alive, see the `http` module).
    ///
    /// Errors: as [`Outbound::connect_ws`] up to the connection, then `Timeout{FirstByte}`,
    /// `TooLarge` (request body over [`MAX_REQUEST_BODY_BYTES`]), `Http`.
    pub async fn request(&self, plan: HttpPlan) -> Result<HttpResponse, OutboundError> {
        http::request(self, plan).await
    }

    /// One stream slot, or `TooManyStreams` at once.
    fn permit(&self) -> Result<StreamPermit, OutboundError> {
        self.streams
            .clone()
            .try_acquire_owned()
            .map(StreamPermit)
            .map_err(|_| OutboundError::TooManyStreams { max: self.max_streams })
    }

    fn connect_timeout(&self) -> OutboundError {
        OutboundError::Timeout { phase: Phase::Connect, ms: self.connect_timeout.as_millis() as u64 }
    }

    /// Resolve (per the allowlist rule), connect TCP and, for `secure`, do the TLS handshake.
    /// Not timed: callers bound it with their connect deadline.
    async fn open(&self, endpoint: &Endpoint, secure: bool) -> Result<Box<dyn Io>, OutboundError> {
        let addresses = allow::addresses(&*self.resolver, endpoint).await?;
        let mut last = None;
        let mut tcp = None;
        for address in addresses {
            match TcpStream::connect(address).await {
                Ok(s) => {
                    tcp = Some(s);
                    break;
                }
                Err(source) => last = Some(OutboundError::Connect { address, source }),
            }
        }
        let Some(tcp) = tcp else {
            return Err(last.expect("at least one address was tried"));
        };
        let _ = tcp.set_nodelay(true);
        if secure {
            Ok(Box::new(tls::handshake(self.tls.clone(), &endpoint.host, tcp).await?))
        } else {
            Ok(Box::new(tcp))
        }
    }
}

/// A slot of the plugin's `max_streams`, held by an open stream and freed when dropped.
#[derive(Debug)]
pub struct StreamPermit(#[allow(dead_code)] OwnedSemaphorePermit);

/// A byte stream to a vendor: TCP or TLS over TCP.
pub(crate) trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// Aborts a spawned task (a hyper connection driver) when dropped, which closes its socket.
struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl AbortOnDrop {
    fn spawn(task: impl Future<Output = ()> + Send + 'static) -> AbortOnDrop {
        AbortOnDrop(Some(tokio::spawn(task)))
    }

    /// Let the task run to its end (a WebSocket driver after the upgrade handed off the socket).
    fn detach(mut self) {
        self.0.take();
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

/// A plan's URL, checked: scheme, no credentials, host and port.
struct Target {
    url: Url,
    secure: bool,
    port: u16,
}

impl Target {
    /// Parse `url`, whose scheme must be `plain` or `secure` (`ws`/`wss`, `http`/`https`).
    fn parse(url: &str, plain: &str, secure: &str) -> Result<Target, OutboundError> {
        let bad = |m: String| OutboundError::BadPlan(m);
        let url = Url::parse(url).map_err(|e| bad(format!("URL: {e}")))?;
        let is_secure = url.scheme() == secure;
        if !is_secure && url.scheme() != plain {
            return Err(bad(format!("the URL's scheme must be {plain}:// or {secure}://")));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(bad("the URL must not carry credentials (use a secret header)".into()));
        }
        if url.host().is_none() {
            return Err(bad("the URL has no host".into()));
        }
        let port = url.port_or_known_default().ok_or_else(|| bad("the URL has no port".into()))?;
        Ok(Target { url, secure: is_secure, port })
    }

    fn host(&self) -> Host<&str> {
        self.url.host().expect("checked in parse")
    }

    /// The `Host` header: host, and the port when the URL has one.
    fn authority(&self) -> String {
        let host = self.url.host_str().expect("checked in parse");
        match self.url.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_string(),
        }
    }

    /// Path and query, for the request line.
    fn request_target(&self) -> &str {
        &self.url[url::Position::BeforePath..url::Position::AfterQuery]
    }
}

/// The start of `body` (at most [`MAX_ERROR_BODY_BYTES`]) as lossy UTF-8, read until `deadline`.
async fn error_snippet(mut body: hyper::body::Incoming, deadline: Instant, secrets: &Secrets) -> String {
    let mut bytes = Vec::new();
    while bytes.len() < MAX_ERROR_BODY_BYTES {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    bytes.extend_from_slice(data);
                }
            }
            _ => break,
        }
    }
    snippet(&bytes, secrets)
}

fn snippet(bytes: &[u8], secrets: &Secrets) -> String {
    let bytes = &bytes[..bytes.len().min(MAX_ERROR_BODY_BYTES)];
    secrets.redact(String::from_utf8_lossy(bytes).trim())
}

/// A hyper error as text.
fn http_error(e: hyper::Error) -> OutboundError {
    OutboundError::Http(e.to_string())
}
