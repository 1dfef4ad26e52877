//! [`OutboundError`]: why an outbound stream could not be opened or ended early.

use std::net::IpAddr;

/// Which wait ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Lookup, TCP, TLS and (WebSocket) the upgrade answer: `connect_timeout_ms`.
    Connect,
    /// The HTTP response head after the request: `first_byte_timeout_ms`.
    FirstByte,
    /// No byte from the vendor for `idle_timeout_ms` (between body chunks, between WebSocket
    /// messages), or a write that made no progress for as long.
    Idle,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Phase::Connect => "connect",
            Phase::FirstByte => "first byte",
            Phase::Idle => "idle",
        })
    }
}

/// An outbound request or stream failed. `Display` never contains a secret: secrets stay in
/// headers, errors name them only by their config name, and a vendor's body is redacted.
#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    /// The URL's host and port are not in the plugin's `connect` list; nothing was looked up.
    #[error("{host}:{port} is not in the plugin's `connect` allowlist")]
    NotAllowed {
        /// Host as parsed from the URL.
        host: String,
        /// Port (explicit or the scheme's default).
        port: u16,
    },
    /// The name resolved only to private, loopback or otherwise non-public addresses.
    #[error("{host} resolved to {address}, a private or reserved address")]
    PrivateAddress {
        /// The name looked up.
        host: String,
        /// The first address it resolved to.
        address: IpAddr,
    },
    /// The lookup failed or found nothing.
    #[error("DNS lookup of {host} failed: {message}")]
    Dns {
        /// The name looked up.
        host: String,
        /// The resolver's error.
        message: String,
    },
    /// No TCP connection to any of the addresses (the last error).
    #[error("cannot connect to {address}: {source}")]
    Connect {
        /// The last address tried.
        address: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The TLS handshake failed (untrusted or mismatched certificate, protocol error).
    #[error("TLS with {host} failed: {message}")]
    Tls {
        /// The server name.
        host: String,
        /// rustls' reason.
        message: String,
    },
    /// A wait ran out; the stream is closed.
    #[error("{phase} timed out after {ms} ms")]
    Timeout {
        /// Which one.
        phase: Phase,
        /// Its limit.
        ms: u64,
    },
    /// The vendor refused: a WebSocket upgrade answered other than 101, or
    /// [`super::HttpResponse::error_for_status`] on a 4xx/5xx. `body` is the start of the
    /// vendor's body (at most [`super::MAX_ERROR_BODY_BYTES`], lossy UTF-8, secrets redacted).
    #[error("the vendor answered {status}: {body}")]
    Status {
        /// HTTP status code.
        status: u16,
        /// The vendor's message.
        body: String,
    },
    /// `max_streams` streams of this plugin are open; nothing was attempted.
    #[error("{max} outbound streams are already open (max_streams)")]
    TooManyStreams {
        /// The plugin's `max_streams`.
        max: usize,
    },
    /// A plan's header is not allowed or not valid (named, never its value).
    #[error("header `{name}`: {reason}")]
    BadHeader {
        /// The header's name as the plan wrote it.
        name: String,
        /// Why.
        reason: String,
    },
    /// A header refers to a secret not in the plugin's `secret_env`.
    #[error("unknown secret `{name}`")]
    UnknownSecret {
        /// The name referred to.
        name: String,
    },
    /// The URL is not an absolute `ws(s)://` (WebSocket) or `http(s)://` (HTTP) URL without
    /// credentials, or a subprotocol is not a token.
    #[error("bad plan: {0}")]
    BadPlan(String),
    /// A response body or WebSocket message, or a request body, is over its bound.
    #[error("{what} larger than {max} bytes")]
    TooLarge {
        /// `response body`, `message` or `request body`.
        what: &'static str,
        /// The bound.
        max: u64,
    },
    /// The HTTP exchange failed after connecting (connection reset, malformed response).
    #[error("HTTP: {0}")]
    Http(String),
    /// The WebSocket handshake answer was wrong or the connection broke the protocol.
    #[error("WebSocket: {0}")]
    WebSocket(String),
    /// The WebSocket was closed (a close was received or sent); nothing more to read or write.
    #[error("the WebSocket is closed")]
    Closed,
}

impl OutboundError {
    /// A stable machine code for logs, metrics and the plugin: `not_allowed`,
    /// `private_address`, `dns`, `connect`, `tls`, `timeout`, `status`, `too_many_streams`,
    /// `bad_header`, `unknown_secret`, `bad_plan`, `too_large`, `http`, `websocket`, `closed`.
    pub fn code(&self) -> &'static str {
        match self {
            OutboundError::NotAllowed { .. } => "not_allowed",
            OutboundError::PrivateAddress { .. } => "private_address",
            OutboundError::Dns { .. } => "dns",
            OutboundError::Connect { .. } => "connect",
            OutboundError::Tls { .. } => "tls",
            OutboundError::Timeout { .. } => "timeout",
            OutboundError::Status { .. } => "status",
            OutboundError::TooManyStreams { .. } => "too_many_streams",
            OutboundError::BadHeader { .. } => "bad_header",
            OutboundError::UnknownSecret { .. } => "unknown_secret",
            OutboundError::BadPlan(_) => "bad_plan",
            OutboundError::TooLarge { .. } => "too_large",
            OutboundError::Http(_) => "http",
            OutboundError::WebSocket(_) => "websocket",
            OutboundError::Closed => "closed",
        }
    }
}
