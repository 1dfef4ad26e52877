//! The streaming HTTP client: HTTP/1.1 through hyper over the checked TCP/TLS stream, the
//! response body read chunk by chunk as the vendor sends it.
//!
//! Connections are kept alive: a response read to its end gives its connection back to the
//! plugin's [`Pool`], and the next request to the same scheme, host and port reuses it, so a
//! call's second sentence does not wait for a TCP and TLS handshake to the vendor (one or two
//! round trips over the internet). A response dropped before its end closes its connection
//! (the vendor sees the request cancelled) and is never reused.

use super::secrets::build_headers;
use super::{AbortOnDrop, Header, Outbound, OutboundError, Phase, Secrets, StreamPermit, Target, http_error, snippet};
use bytes::Bytes;
use futures_util::Stream;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Longest an idle connection is kept for reuse (vendors close theirs after about a minute;
/// a connection closed meanwhile is detected, or its request retried once on a new one).
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(20);

/// Idle connections kept per scheme, host and port.
pub const MAX_IDLE_PER_HOST: usize = 64;

/// Largest request body a plan may carry (1 MiB; a synthesis request is a few KiB of JSON).
pub const MAX_REQUEST_BODY_BYTES: usize = 1024 * 1024;

/// What a plugin asks for: one HTTP request to a vendor.
#[derive(Debug, Clone, Default)]
pub struct HttpPlan {
    /// `GET`, `POST`, ... (not `CONNECT`).
    pub method: String,
    /// `http://` or `https://` URL, query included.
    pub url: String,
    /// Request headers (not hop-by-hop, `host`, `content-length`, `expect`).
    pub headers: Vec<Header>,
    /// Request body (at most [`MAX_REQUEST_BODY_BYTES`]); `Content-Length` is set from it.
    pub body: Vec<u8>,
}

/// A response whose head has arrived; the body streams from [`HttpResponse::body`].
#[derive(Debug)]
pub struct HttpResponse {
    /// HTTP status code.
    pub status: u16,
    /// Response headers.
    pub headers: HeaderMap,
    /// The body, chunk by chunk.
    pub body: HttpBody,
}

impl HttpResponse {
    /// This response if its status is below 400; else `Status` with the start of the vendor's
    /// body (read for at most `idle_timeout_ms`), and the connection closed.
    pub async fn error_for_status(mut self) -> Result<HttpResponse, OutboundError> {
        if self.status < 400 {
            return Ok(self);
        }
        let deadline = Instant::now() + self.body.idle;
        let mut bytes = Vec::new();
        while bytes.len() < super::MAX_ERROR_BODY_BYTES {
            match tokio::time::timeout_at(deadline, self.body.next_chunk()).await {
                Ok(Some(Ok(chunk))) => bytes.extend_from_slice(&chunk),
                _ => break,
            }
        }
        Err(OutboundError::Status { status: self.status, body: snippet(&bytes, &self.body.secrets) })
    }
}

/// A response body. Holds the connection and one of the plugin's `max_streams` slots; dropping
/// it closes the connection at once (the vendor sees the request cancelled).
pub struct HttpBody {
    incoming: Incoming,
    idle: Duration,
    max: u64,
    received: u64,
    secrets: Arc<Secrets>,
    /// The connection: its request half and its driver. Given back to `pool` when the body
    /// ends cleanly and the vendor keeps the connection open; else dropped, which closes it.
    connection: Option<Connection>,
    /// Where the connection goes back to, when it may be reused.
    pool: Option<(Arc<Pool>, PoolKey)>,
    _permit: StreamPermit,
}

impl std::fmt::Debug for HttpBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpBody").field("received", &self.received).field("max", &self.max).finish()
    }
}

impl HttpBody {
    /// The next chunk of the body as it arrives, `None` at its end. Errors (after which it
    /// returns `None` and the connection is closed): `Timeout{Idle}` (no byte for
    /// `idle_timeout_ms`), `TooLarge` (over `max_response_bytes` in total), `Http` (reset,
    /// malformed chunking).
    pub async fn next_chunk(&mut self) -> Option<Result<Bytes, OutboundError>> {
        self.connection.as_ref()?;
        loop {
            let error = match tokio::time::timeout(self.idle, self.incoming.frame()).await {
                Err(_) => OutboundError::Timeout { phase: Phase::Idle, ms: self.idle.as_millis() as u64 },
                Ok(None) => {
                    if let (Some(connection), Some((pool, key))) = (self.connection.take(), self.pool.take()) {
                        pool.put(key, connection);
                    }
                    return None;
                }
                Ok(Some(Err(e))) => http_error(e),
                Ok(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) if data.is_empty() => continue,
                    Ok(data) => {
                        self.received += data.len() as u64;
                        if self.received <= self.max {
                            return Some(Ok(data));
                        }
                        OutboundError::TooLarge { what: "response body", max: self.max }
                    }
                    Err(_trailers) => continue,
                },
            };
            self.connection = None;
            return Some(Err(error));
        }
    }

    /// Bytes of body received so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// The body as a stream of chunks (same items as [`HttpBody::next_chunk`]).
    pub fn into_stream(self) -> impl Stream<Item = Result<Bytes, OutboundError>> + Send {
        futures_util::stream::unfold(self, |mut body| async move { body.next_chunk().await.map(|c| (c, body)) })
    }
}

pub(super) async fn request(out: &Outbound, plan: HttpPlan) -> Result<HttpResponse, OutboundError> {
    let mut headers = build_headers(&out.secrets, &plan.headers)?;
    let method = hyper::Method::from_bytes(plan.method.as_bytes())
        .ok()
        .filter(|m| *m != hyper::Method::CONNECT)
        .ok_or_else(|| OutboundError::BadPlan(format!("bad method `{}`", plan.method)))?;
    if plan.body.len() > MAX_REQUEST_BODY_BYTES {
        return Err(OutboundError::TooLarge { what: "request body", max: MAX_REQUEST_BODY_BYTES as u64 });
    }
    let target = Target::parse(&plan.url, "http", "https")?;
    let endpoint = out.allow.check(&target.host(), target.port)?;
    let permit = out.permit()?;
    headers.insert(
        header::HOST,
        HeaderValue::from_str(&target.authority()).map_err(|_| OutboundError::BadPlan("bad URL host".into()))?,
    );
    let path =
        target.request_target().parse::<hyper::Uri>().map_err(|_| OutboundError::BadPlan("bad URL path".into()))?;
    let body = Bytes::from(plan.body);
    let make_request = || {
        let mut request = hyper::Request::new(Full::new(body.clone()));
        *request.method_mut() = method.clone();
        *request.uri_mut() = path.clone();
        *request.headers_mut() = headers.clone();
        request
    };
    let key = PoolKey { secure: target.secure, host: endpoint.host.to_string(), port: target.port };

    // A kept-alive connection first; if the vendor closed it meanwhile (the request never
    // reached it), once more on a new one.
    let (mut connection, response) = match out.pool.take(&key) {
        Some(mut connection) => match send(out, &mut connection, make_request()).await {
            Err(e) if e.stale => {
                let mut connection = connect(out, &endpoint, target.secure).await?;
                let response = send(out, &mut connection, make_request()).await.map_err(|e| e.error)?;
                (connection, response)
            }
            result => (connection, result.map_err(|e| e.error)?),
        },
        None => {
            let mut connection = connect(out, &endpoint, target.secure).await?;
            let response = send(out, &mut connection, make_request()).await.map_err(|e| e.error)?;
            (connection, response)
        }
    };
    let (parts, incoming) = response.into_parts();
    let reusable = parts.version == hyper::Version::HTTP_11
        && !parts.headers.get_all(header::CONNECTION).iter().any(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
    connection.since = Instant::now();
    Ok(HttpResponse {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: HttpBody {
            incoming,
            idle: out.idle_timeout,
            max: out.max_response_bytes,
            received: 0,
            secrets: out.secrets.clone(),
            connection: Some(connection),
            pool: reusable.then(|| (out.pool.clone(), key)),
            _permit: permit,
        },
    })
}

/// A new connection to `endpoint`, its HTTP/1.1 handshake done, within the connect timeout.
async fn connect(out: &Outbound, endpoint: &super::Endpoint, secure: bool) -> Result<Connection, OutboundError> {
    let deadline = Instant::now() + out.connect_timeout;
    let timed = |_| out.connect_timeout();
    let io = tokio::time::timeout_at(deadline, out.open(endpoint, secure)).await.map_err(timed)??;
    let (sender, conn) = tokio::time::timeout_at(deadline, hyper::client::conn::http1::handshake(TokioIo::new(io)))
        .await
        .map_err(timed)?
        .map_err(http_error)?;
    let driver = AbortOnDrop::spawn(async move {
        let _ = conn.await;
    });
    Ok(Connection { sender, _driver: driver, since: Instant::now() })
}

/// Why a request failed, and whether it failed because a kept-alive connection had been
/// closed by the vendor before the request reached it (then it may be sent again).
struct SendError {
    error: OutboundError,
    stale: bool,
}

/// Send `request` on `connection` and wait for the response head (first-byte timeout).
async fn send(
    out: &Outbound,
    connection: &mut Connection,
    request: hyper::Request<Full<Bytes>>,
) -> Result<hyper::Response<Incoming>, SendError> {
    let timeout = || OutboundError::Timeout { phase: Phase::FirstByte, ms: out.first_byte_timeout.as_millis() as u64 };
    match tokio::time::timeout(out.first_byte_timeout, connection.sender.send_request(request)).await {
        Err(_) => Err(SendError { error: timeout(), stale: false }),
        Ok(Ok(response)) => Ok(response),
        Ok(Err(e)) => {
            let stale = e.is_canceled() || e.is_closed() || e.is_incomplete_message();
            Err(SendError { error: http_error(e), stale })
        }
    }
}

/// One HTTP/1.1 connection: the request half and the task driving the socket (aborted, and
/// the socket closed, when this is dropped).
struct Connection {
    sender: SendRequest<Full<Bytes>>,
    _driver: AbortOnDrop,
    /// When it last finished a response (or was opened).
    since: Instant,
}

/// Which connections may serve a request: same scheme, host (as checked by the allowlist)
/// and port. One pool per plugin, so a connection never crosses plugins.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct PoolKey {
    secure: bool,
    host: String,
    port: u16,
}

/// A plugin's idle kept-alive connections: at most [`MAX_IDLE_PER_HOST`] per key, none older
/// than [`POOL_IDLE_TIMEOUT`]. Dropping it (the plugin reloaded) closes them.
#[derive(Default)]
pub(super) struct Pool {
    idle: parking_lot::Mutex<HashMap<PoolKey, Vec<Connection>>>,
}

impl Pool {
    /// The most recently used idle connection for `key` that is still open and ready.
    fn take(&self, key: &PoolKey) -> Option<Connection> {
        let mut idle = self.idle.lock();
        let list = idle.get_mut(key)?;
        while let Some(connection) = list.pop() {
            if connection.since.elapsed() < POOL_IDLE_TIMEOUT && connection.sender.is_ready() {
                return Some(connection);
            }
        }
        None
    }

    /// Keep `connection` for reuse, unless it was closed or `key` already has enough.
    fn put(&self, key: PoolKey, mut connection: Connection) {
        if connection.sender.is_closed() {
            return;
        }
        connection.since = Instant::now();
        let mut idle = self.idle.lock();
        let list = idle.entry(key).or_default();
        list.retain(|c| c.since.elapsed() < POOL_IDLE_TIMEOUT && !c.sender.is_closed());
        if list.len() < MAX_IDLE_PER_HOST {
            list.push(connection);
        }
    }

    /// Idle connections kept now.
    pub(super) fn idle(&self) -> usize {
        self.idle.lock().values().map(Vec::len).sum()
    }
}
