//! The streaming HTTP client: one request per connection (HTTP/1.1 through hyper over the
//! checked TCP/TLS stream), the response body read chunk by chunk as the vendor sends it.

use super::secrets::build_headers;
use super::{AbortOnDrop, Header, Outbound, OutboundError, Phase, Secrets, StreamPermit, Target, http_error, snippet};
use bytes::Bytes;
use futures_util::Stream;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

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
    /// Kept so hyper does not end the connection early; dropped with the body.
    _sender: SendRequest<Full<Bytes>>,
    driver: Option<AbortOnDrop>,
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
        self.driver.as_ref()?;
        loop {
            let error = match tokio::time::timeout(self.idle, self.incoming.frame()).await {
                Err(_) => OutboundError::Timeout { phase: Phase::Idle, ms: self.idle.as_millis() as u64 },
                Ok(None) => {
                    self.driver = None;
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
            self.driver = None;
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
    let deadline = Instant::now() + out.connect_timeout;
    let timed = |_| out.connect_timeout();

    let io = tokio::time::timeout_at(deadline, out.open(&endpoint, target.secure)).await.map_err(timed)??;
    let (mut sender, conn) = tokio::time::timeout_at(deadline, hyper::client::conn::http1::handshake(TokioIo::new(io)))
        .await
        .map_err(timed)?
        .map_err(http_error)?;
    let driver = AbortOnDrop::spawn(async move {
        let _ = conn.await;
    });

    headers.insert(
        header::HOST,
        HeaderValue::from_str(&target.authority()).map_err(|_| OutboundError::BadPlan("bad URL host".into()))?,
    );
    let mut request = hyper::Request::new(Full::new(Bytes::from(plan.body)));
    *request.method_mut() = method;
    *request.uri_mut() = target.request_target().parse().map_err(|_| OutboundError::BadPlan("bad URL path".into()))?;
    *request.headers_mut() = headers;

    let response = tokio::time::timeout(out.first_byte_timeout, sender.send_request(request))
        .await
        .map_err(|_| OutboundError::Timeout { phase: Phase::FirstByte, ms: out.first_byte_timeout.as_millis() as u64 })?
        .map_err(http_error)?;
    let (parts, incoming) = response.into_parts();
    Ok(HttpResponse {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: HttpBody {
            incoming,
            idle: out.idle_timeout,
            max: out.max_response_bytes,
            received: 0,
            secrets: out.secrets.clone(),
            _sender: sender,
            driver: Some(driver),
            _permit: permit,
        },
    })
}
