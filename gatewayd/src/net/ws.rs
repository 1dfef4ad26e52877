//! The WebSocket client: an HTTP/1.1 upgrade through hyper over the checked TCP/TLS stream (so
//! a refusal such as 401 reports the vendor's status and message), then fastwebsockets.

use super::secrets::build_headers;
use super::{Header, Outbound, OutboundError, Phase, StreamPermit, Target, error_snippet, http_error};
use base64::Engine;
use bytes::Bytes;
use fastwebsockets::{Frame, OpCode, Payload, Role, WebSocket};
use http_body_util::Empty;
use hyper::header::{self, HeaderValue};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use sha1::{Digest, Sha1};
use std::time::Duration;
use tokio::time::Instant;

/// Largest WebSocket message accepted from a vendor, all its fragments together: 1 MiB (a
/// vendor's JSON results are a few KiB; base64 audio chunks tens of KiB). Beyond it the read
/// fails with `TooLarge` and the connection is dropped.
pub const MAX_WS_MESSAGE_BYTES: usize = 1024 * 1024;
/// Most subprotocols one plan may offer.
const MAX_SUBPROTOCOLS: usize = 16;

/// What a plugin asks for: a WebSocket to a vendor.
#[derive(Debug, Clone, Default)]
pub struct WsPlan {
    /// `ws://` or `wss://` URL, query included (e.g. Deepgram's `?model=nova-3&encoding=mulaw`).
    pub url: String,
    /// Extra request headers (not hop-by-hop, `host` or `sec-websocket-*`).
    pub headers: Vec<Header>,
    /// `Sec-WebSocket-Protocol` values offered, in preference order (tokens).
    pub subprotocols: Vec<String>,
}

/// One message from the vendor, fragments joined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsMessage {
    /// A text message (valid UTF-8).
    Text(String),
    /// A binary message.
    Binary(Bytes),
    /// The vendor closed (the close is answered automatically); nothing more will be read.
    Close {
        /// The close code, if it sent one.
        code: Option<u16>,
        /// The reason (lossy UTF-8).
        reason: String,
    },
}

/// An open WebSocket to a vendor. Holds one of the plugin's `max_streams` slots until dropped.
/// Pings are answered automatically; a read waits at most `idle_timeout_ms` for a frame and a
/// write at most as long for the socket. After an error or a close, every call is `Closed`.
pub struct WsConnection {
    ws: WebSocket<TokioIo<Upgraded>>,
    subprotocol: Option<String>,
    idle: Duration,
    /// A close was received or a read failed: nothing more to read.
    read_closed: bool,
    /// A close was sent or a write failed: nothing more to write.
    write_closed: bool,
    permit: StreamPermit,
}

impl std::fmt::Debug for WsConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsConnection")
            .field("subprotocol", &self.subprotocol)
            .field("read_closed", &self.read_closed)
            .finish()
    }
}

impl WsConnection {
    /// The subprotocol the vendor chose among the plan's, if any.
    pub fn subprotocol(&self) -> Option<&str> {
        self.subprotocol.as_deref()
    }

    /// The next message. Errors: `Timeout{Idle}` (nothing for `idle_timeout_ms`), `TooLarge`
    /// (over [`MAX_WS_MESSAGE_BYTES`]), `WebSocket` (protocol error, reset), `Closed`.
    pub async fn recv(&mut self) -> Result<WsMessage, OutboundError> {
        if self.read_closed {
            return Err(OutboundError::Closed);
        }
        let result = self.recv_inner().await;
        if matches!(result, Err(_) | Ok(WsMessage::Close { .. })) {
            // A received close was answered already (auto close); a failed read broke the
            // stream: either way nothing more is sent.
            self.read_closed = true;
            self.write_closed = true;
        }
        result
    }

    async fn recv_inner(&mut self) -> Result<WsMessage, OutboundError> {
        let mut partial: Option<(OpCode, Vec<u8>)> = None;
        loop {
            let frame = tokio::time::timeout(self.idle, self.ws.read_frame())
                .await
                .map_err(|_| OutboundError::Timeout { phase: Phase::Idle, ms: self.idle.as_millis() as u64 })?
                .map_err(ws_error)?;
            match (frame.opcode, &mut partial) {
                (OpCode::Text | OpCode::Binary, None) if frame.fin => {
                    return message(frame.opcode, frame.payload.to_vec());
                }
                (OpCode::Text | OpCode::Binary, None) => partial = Some((frame.opcode, frame.payload.to_vec())),
                (OpCode::Continuation, Some((opcode, bytes))) => {
                    if bytes.len() + frame.payload.len() > MAX_WS_MESSAGE_BYTES {
                        return Err(too_large());
                    }
                    bytes.extend_from_slice(&frame.payload);
                    if frame.fin {
                        return message(*opcode, std::mem::take(bytes));
                    }
                }
                (OpCode::Close, _) => {
                    let p = &frame.payload[..];
                    let code = (p.len() >= 2).then(|| u16::from_be_bytes([p[0], p[1]]));
                    let reason = String::from_utf8_lossy(p.get(2..).unwrap_or_default()).into_owned();
                    return Ok(WsMessage::Close { code, reason });
                }
                (OpCode::Ping | OpCode::Pong, _) => {}
                _ => return Err(OutboundError::WebSocket("fragments out of order".into())),
            }
        }
    }

    /// Send a text message.
    pub async fn send_text(&mut self, text: &str) -> Result<(), OutboundError> {
        self.send(Frame::text(Payload::Borrowed(text.as_bytes()))).await
    }

    /// Send a binary message (e.g. audio).
    pub async fn send_binary(&mut self, data: &[u8]) -> Result<(), OutboundError> {
        self.send(Frame::binary(Payload::Borrowed(data))).await
    }

    /// Send a close frame (`code`, `reason` cut to 123 bytes); nothing more can be sent. Read
    /// on to get the vendor's close (bounded by the idle timeout), or drop.
    pub async fn close(&mut self, code: u16, reason: &str) -> Result<(), OutboundError> {
        let mut end = reason.len().min(123);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        let result = self.send(Frame::close(code, &reason.as_bytes()[..end])).await;
        self.write_closed = true;
        result
    }

    async fn send(&mut self, frame: Frame<'_>) -> Result<(), OutboundError> {
        if self.write_closed {
            return Err(OutboundError::Closed);
        }
        let result = match tokio::time::timeout(self.idle, self.ws.write_frame(frame)).await {
            Ok(r) => r.map_err(ws_error),
            Err(_) => Err(OutboundError::Timeout { phase: Phase::Idle, ms: self.idle.as_millis() as u64 }),
        };
        if result.is_err() {
            self.write_closed = true;
            self.read_closed = true;
        }
        result
    }

    /// The fastwebsockets socket (message size bound, auto pong and close set) and the stream
    /// slot, e.g. to split it into read and write halves. Keep the permit as long as the socket.
    pub fn into_parts(self) -> (WebSocket<TokioIo<Upgraded>>, StreamPermit) {
        (self.ws, self.permit)
    }
}

fn message(opcode: OpCode, bytes: Vec<u8>) -> Result<WsMessage, OutboundError> {
    if bytes.len() > MAX_WS_MESSAGE_BYTES {
        return Err(too_large());
    }
    match opcode {
        OpCode::Text => String::from_utf8(bytes)
            .map(WsMessage::Text)
            .map_err(|_| OutboundError::WebSocket("text message is not UTF-8".into())),
        _ => Ok(WsMessage::Binary(bytes.into())),
    }
}

fn too_large() -> OutboundError {
    OutboundError::TooLarge { what: "message", max: MAX_WS_MESSAGE_BYTES as u64 }
}

fn ws_error(e: fastwebsockets::WebSocketError) -> OutboundError {
    match e {
        fastwebsockets::WebSocketError::FrameTooLarge => too_large(),
        e => OutboundError::WebSocket(e.to_string()),
    }
}

/// `Sec-WebSocket-Accept` for `key` (RFC 6455 section 4.2.2).
fn accept_key(key: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

pub(super) async fn connect(out: &Outbound, plan: WsPlan) -> Result<WsConnection, OutboundError> {
    let mut headers = build_headers(&out.secrets, &plan.headers)?;
    if plan.subprotocols.len() > MAX_SUBPROTOCOLS || !plan.subprotocols.iter().all(|p| is_token(p)) {
        return Err(OutboundError::BadPlan(format!("subprotocols must be at most {MAX_SUBPROTOCOLS} tokens")));
    }
    let target = Target::parse(&plan.url, "ws", "wss")?;
    let endpoint = out.allow.check(&target.host(), target.port)?;
    let permit = out.permit()?;
    let deadline = Instant::now() + out.connect_timeout;
    let timed = |_| out.connect_timeout();

    let io = tokio::time::timeout_at(deadline, out.open(&endpoint, target.secure)).await.map_err(timed)??;
    let (mut sender, conn) = tokio::time::timeout_at(deadline, hyper::client::conn::http1::handshake(TokioIo::new(io)))
        .await
        .map_err(timed)?
        .map_err(http_error)?;
    let driver = super::AbortOnDrop::spawn(async move {
        let _ = conn.with_upgrades().await;
    });

    let key = fastwebsockets::handshake::generate_key();
    let value = |s: &str| HeaderValue::from_str(s).map_err(|_| OutboundError::BadPlan("bad URL host".into()));
    headers.insert(header::HOST, value(&target.authority())?);
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::SEC_WEBSOCKET_KEY, value(&key)?);
    headers.insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
    if !plan.subprotocols.is_empty() {
        headers.insert(header::SEC_WEBSOCKET_PROTOCOL, value(&plan.subprotocols.join(", "))?);
    }
    let mut request = hyper::Request::new(Empty::<Bytes>::new());
    *request.uri_mut() = target.request_target().parse().map_err(|_| OutboundError::BadPlan("bad URL path".into()))?;
    *request.headers_mut() = headers;

    let mut response =
        tokio::time::timeout_at(deadline, sender.send_request(request)).await.map_err(timed)?.map_err(http_error)?;
    let status = response.status();
    if status != hyper::StatusCode::SWITCHING_PROTOCOLS {
        let body = error_snippet(response.into_body(), deadline, &out.secrets).await;
        return Err(OutboundError::Status { status: status.as_u16(), body });
    }
    let h = response.headers();
    let has = |name: header::HeaderName, token: &str| {
        h.get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    if !has(header::UPGRADE, "websocket") || !has(header::CONNECTION, "upgrade") {
        return Err(OutboundError::WebSocket("101 without Upgrade: websocket and Connection: upgrade".into()));
    }
    if h.get(header::SEC_WEBSOCKET_ACCEPT).and_then(|v| v.to_str().ok()) != Some(accept_key(&key).as_str()) {
        return Err(OutboundError::WebSocket("wrong Sec-WebSocket-Accept".into()));
    }
    let subprotocol = match h.get(header::SEC_WEBSOCKET_PROTOCOL) {
        None => None,
        Some(v) => match v.to_str().ok().filter(|p| plan.subprotocols.iter().any(|o| o == p)) {
            Some(p) => Some(p.to_string()),
            None => return Err(OutboundError::WebSocket("the vendor chose a subprotocol not offered".into())),
        },
    };
    let upgraded = tokio::time::timeout_at(deadline, hyper::upgrade::on(&mut response))
        .await
        .map_err(timed)?
        .map_err(http_error)?;
    driver.detach();
    let mut ws = WebSocket::after_handshake(TokioIo::new(upgraded), Role::Client);
    ws.set_max_message_size(MAX_WS_MESSAGE_BYTES);
    ws.set_auto_close(true);
    ws.set_auto_pong(true);
    Ok(WsConnection { ws, subprotocol, idle: out.idle_timeout, read_closed: false, write_closed: false, permit })
}

#[cfg(test)]
mod tests {
    #[test]
    fn accept_key_matches_rfc_6455_example() {
        assert_eq!(super::accept_key("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }
}
