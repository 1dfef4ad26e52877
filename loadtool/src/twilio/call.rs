//! The sockets of one simulated call: the signed webhooks (voice, status callback), the Media
//! Stream upgrade, and the task that reads what the gateway sends on the stream. Every wait is
//! bounded by the configured timeout.

use super::wire::{self, CallIds, Endpoints, FromGateway, Twiml, TwimlError};
use crate::ivr::{Ws, detach};
use bytes::Bytes;
use fastwebsockets::{Frame, OpCode, WebSocketRead, WebSocketWrite};
use http_body_util::BodyExt as _;
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

pub type WsWrite = WebSocketWrite<tokio::net::tcp::OwnedWriteHalf>;
pub type WsRead = WebSocketRead<tokio::net::tcp::OwnedReadHalf>;

/// What every call of a run shares.
#[derive(Clone)]
pub struct CallConfig {
    pub endpoints: Endpoints,
    pub auth_token: String,
    pub from: String,
    pub to: String,
    pub account_sid: Option<String>,
    /// Bound of every wait (an HTTP answer, an upgrade, a reply).
    pub timeout: Duration,
}

/// Why a call failed; [`CallError::code`] is stable (the JSON report's `error_code`).
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The voice webhook did not answer 200 (403: the signature; 404: no such route).
    #[error("the voice webhook {url} answered {status}: {body}")]
    Webhook { url: String, status: u16, body: String },
    /// The webhook's answer is not TwiML this simulator can play.
    #[error("the voice webhook's answer: {0}")]
    Twiml(#[from] TwimlError),
    /// The TwiML rejected the call (`<Reject>`, `<Hangup>`).
    #[error("the gateway refused the call: <{verb}/>{}", reason.as_deref().map(|r| format!(" (reason {r})")).unwrap_or_default())]
    Refused { verb: String, reason: Option<String> },
    /// The Media Stream WebSocket upgrade got another status than 101.
    #[error("the Media Stream upgrade to {url} was refused: {status} {body}")]
    UpgradeRefused { url: String, status: u16, body: String },
    /// The gateway closed the Media Stream before the call ended, with a code other than
    /// 1000/1001 (1008: it does not know the call).
    #[error("the gateway closed the Media Stream: {code} {reason}")]
    StreamClosed { code: u16, reason: String },
    /// The status callback did not answer 2xx.
    #[error("the status callback {url} answered {status}: {body}")]
    StatusCallback { url: String, status: u16, body: String },
    /// The dashboard socket refused the token or the call, or never said it was ready.
    #[error("the dashboard socket: {0}")]
    Dashboard(String),
    /// A wait outlasted `--timeout-secs`.
    #[error("{what}: no answer within {secs} s")]
    Timeout { what: &'static str, secs: f64 },
    /// A connection failed (refused, reset) or an argument is unusable.
    #[error("{what}: {source:#}")]
    Io { what: &'static str, source: anyhow::Error },
}

impl CallError {
    pub fn code(&self) -> &'static str {
        match self {
            CallError::Webhook { .. } => "webhook_status",
            CallError::Twiml(_) => "twiml_invalid",
            CallError::Refused { .. } => "call_refused",
            CallError::UpgradeRefused { .. } => "upgrade_refused",
            CallError::StreamClosed { .. } => "stream_closed",
            CallError::StatusCallback { .. } => "status_callback",
            CallError::Dashboard(_) => "dashboard",
            CallError::Timeout { .. } => "timeout",
            CallError::Io { .. } => "io",
        }
    }
}

/// Run `f` within `cfg.timeout`; `what` names the wait in the error.
pub async fn bounded<T, F>(cfg: &CallConfig, what: &'static str, f: F) -> Result<T, CallError>
where
    F: Future<Output = anyhow::Result<T>>,
{
    match tokio::time::timeout(cfg.timeout, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(CallError::Io { what, source }),
        Err(_) => Err(CallError::Timeout { what, secs: cfg.timeout.as_secs_f64() }),
    }
}

/// An HTTP answer.
pub struct HttpReply {
    pub status: u16,
    pub body: String,
}

/// POST `form` to `path` on the daemon, signed for its public URL, as Twilio does.
async fn post_signed(cfg: &CallConfig, path: &str, form: &[(String, String)]) -> anyhow::Result<HttpReply> {
    let url = cfg.endpoints.public_url(path);
    let signature = wire::signature(&cfg.auth_token, &url, form);
    let stream = tokio::net::TcpStream::connect(&cfg.endpoints.authority).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = hyper::Request::post(path)
        .header("Host", &cfg.endpoints.authority)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .header("X-Twilio-Signature", signature)
        .header("User-Agent", "TwilioProxy/1.1 (gatewayd-load)")
        .body(http_body_util::Full::new(Bytes::from(wire::form_body(form))))?;
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok(HttpReply { status, body: String::from_utf8_lossy(&body).into_owned() })
}

/// The webhook's answer: where to stream, with what.
#[derive(Debug, Clone)]
pub struct Answer {
    pub stream_url: String,
    pub parameters: Vec<(String, String)>,
    /// The `call_id` parameter, when the TwiML has one.
    pub call_id: Option<String>,
    /// Webhook POST -> TwiML read.
    pub took: Duration,
}

/// Ring: POST the incoming-call webhook and read the TwiML.
pub async fn ring(cfg: &CallConfig, ids: &CallIds) -> Result<Answer, CallError> {
    let form = wire::voice_form(ids, &cfg.from, &cfg.to);
    let at = Instant::now();
    let reply = bounded(cfg, "the voice webhook", post_signed(cfg, wire::VOICE_PATH, &form)).await?;
    let took = at.elapsed();
    if reply.status != 200 {
        return Err(CallError::Webhook {
            url: cfg.endpoints.public_url(wire::VOICE_PATH),
            status: reply.status,
            body: reply.body,
        });
    }
    match wire::parse_twiml(&reply.body)? {
        Twiml::Refused { verb, reason } => Err(CallError::Refused { verb, reason }),
        Twiml::Stream { url, parameters } => {
            let call_id = parameters.iter().find(|(k, _)| k == "call_id").map(|(_, v)| v.clone());
            Ok(Answer { stream_url: url, parameters, call_id, took })
        }
    }
}

/// Open the Media Stream the TwiML named, with its signature (of the URL alone).
pub async fn open_stream(cfg: &CallConfig, stream_url: &str) -> Result<Ws, CallError> {
    let target = cfg
        .endpoints
        .stream_target(stream_url)
        .map_err(|source| CallError::Io { what: "the Media Stream url", source })?;
    let signature = wire::signature(&cfg.auth_token, stream_url, &[]);
    let answer = bounded(cfg, "the Media Stream upgrade", async {
        gatewayd_e2e::Client::connect_with(&target, &[("X-Twilio-Signature", &signature)]).await
    })
    .await?;
    match answer {
        Ok(client) => detach(client).map_err(|source| CallError::Io { what: "the Media Stream", source }),
        Err(refused) => Err(CallError::UpgradeRefused { url: target, status: refused.status, body: refused.body }),
    }
}

/// POST the status callback that says the call completed after `duration_secs`; the status
/// it got (2xx).
pub async fn status_callback(cfg: &CallConfig, ids: &CallIds, duration_secs: u64) -> Result<u16, CallError> {
    let form = wire::status_form(ids, &cfg.from, &cfg.to, duration_secs);
    let reply = bounded(cfg, "the status callback", post_signed(cfg, wire::STATUS_PATH, &form)).await?;
    if !(200..300).contains(&reply.status) {
        return Err(CallError::StatusCallback {
            url: cfg.endpoints.public_url(wire::STATUS_PATH),
            status: reply.status,
            body: reply.body,
        });
    }
    Ok(reply.status)
}

/// What the reader of a stream passes on.
#[derive(Debug)]
pub enum Heard {
    /// A text message of the gateway, read (media only when asked for).
    Message(FromGateway),
    /// The gateway pinged: answer with a pong of this payload.
    Ping(Vec<u8>),
    /// The gateway closed the stream (1005 when it gave no code).
    Closed { code: u16, reason: String },
    /// The connection broke (reset, protocol error).
    Broken(String),
}

/// Read the gateway's messages until it closes or `stop` completes: every message but media goes to
/// `tx`; media goes too with `forward_media`; each media message's arrival time is kept in
/// the returned list (at most `max_times`).
pub async fn read_stream(
    mut rd: WsRead,
    tx: mpsc::UnboundedSender<Heard>,
    forward_media: bool,
    max_times: usize,
    stop: impl Future<Output = ()>,
) -> Vec<Instant> {
    let mut times = Vec::with_capacity(max_times.min(100_000));
    // The read half cannot write: pongs go to the writer as `Heard::Ping`, and a close is
    // answered by the writer when it sees `Heard::Closed`.
    let pongs = tx.clone();
    let mut obligated = move |f: Frame<'_>| {
        if f.opcode == OpCode::Pong {
            let _ = pongs.send(Heard::Ping(f.payload.to_vec()));
        }
        async { Ok::<_, std::io::Error>(()) }
    };
    tokio::pin!(stop);
    loop {
        let frame = tokio::select! {
            biased;
            f = rd.read_frame(&mut obligated) => f,
            _ = &mut stop => break,
        };
        let frame = match frame {
            Ok(f) => f,
            Err(e) => {
                let _ = tx.send(Heard::Broken(e.to_string()));
                break;
            }
        };
        match frame.opcode {
            OpCode::Text => {
                let at = Instant::now();
                let text = String::from_utf8_lossy(&frame.payload);
                let message = wire::parse_from_gateway(&text);
                if let FromGateway::Media { .. } = message {
                    if times.len() < max_times {
                        times.push(at);
                    }
                    if !forward_media {
                        // Counted by the caller from `times`.
                        continue;
                    }
                }
                if tx.send(Heard::Message(message)).is_err() {
                    break;
                }
            }
            OpCode::Binary => {
                // Twilio takes text frames only (31950).
                let _ = tx.send(Heard::Message(FromGateway::Invalid(format!(
                    "a binary frame of {} bytes",
                    frame.payload.len()
                ))));
            }
            OpCode::Close => {
                let p = &frame.payload;
                let code = if p.len() >= 2 { u16::from_be_bytes([p[0], p[1]]) } else { 1005 };
                let reason = String::from_utf8_lossy(p.get(2..).unwrap_or(&[])).into_owned();
                let _ = tx.send(Heard::Closed { code, reason });
                break;
            }
            _ => {}
        }
    }
    times
}

/// Write a text message.
pub async fn send_text(wr: &mut WsWrite, text: String) -> anyhow::Result<()> {
    wr.write_frame(Frame::text(fastwebsockets::Payload::Owned(text.into_bytes()))).await?;
    Ok(())
}

/// Answer a ping.
pub async fn send_pong(wr: &mut WsWrite, payload: Vec<u8>) -> anyhow::Result<()> {
    wr.write_frame(Frame::pong(fastwebsockets::Payload::Owned(payload))).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_are_stable_and_messages_say_what_failed() {
        let e = CallError::Webhook { url: "http://h/v".into(), status: 403, body: "{}".into() };
        assert_eq!(
            (e.code(), e.to_string().as_str()),
            ("webhook_status", "the voice webhook http://h/v answered 403: {}")
        );
        let e = CallError::Refused { verb: "Reject".into(), reason: None };
        assert_eq!((e.code(), e.to_string().as_str()), ("call_refused", "the gateway refused the call: <Reject/>"));
        let e = CallError::Refused { verb: "Reject".into(), reason: Some("busy".into()) };
        assert_eq!(e.to_string(), "the gateway refused the call: <Reject/> (reason busy)");
        let e = CallError::from(TwimlError::NoStream("none".into()));
        assert_eq!(e.code(), "twiml_invalid");
        assert_eq!(e.to_string(), "the voice webhook's answer: the TwiML has no <Connect><Stream> (verbs: none)");
        let e = CallError::Timeout { what: "the voice webhook", secs: 10.0 };
        assert_eq!(e.to_string(), "the voice webhook: no answer within 10 s");
    }
}
