//! The agent dashboard socket `/api/ws/telephony/stream` (telephony.md sections 1, 2, 6, 7;
//! brief, Plugin behaviour 6).
//!
//! Open (`?token=..&call_id=..&language=..&model=..&client_type=telephony`; the host verifies
//! the token): the claims must name an agent, else `telephony_error` CONNECTION_FAILED and
//! close 1008. Without `call_id` the socket is the organisation feed: every event of every call
//! of the agent's businesses (bound to `biz:<business_id>` for each). With `call_id` it follows
//! that call only (bound to `call:<call_id>`), which must belong to one of the agent's
//! businesses, else `telephony_error` CONNECTION_FAILED "call not found" and close 1008 (another
//! tenant's call is never revealed to exist). `language`, `model` and `client_type` are
//! accepted and not used: speech providers are the daemon's configuration.
//!
//! Messages (each takes a token of the socket's bucket, `rate_per_sec` / `rate_burst`; an
//! empty bucket answers CONNECTION_FAILED and drops the message):
//! - `init_telephony_stream` -> `telephony_connected` {call_id: the socket's call, or ""}.
//! - `ping` -> `pong`.
//! - `agent_message` {call_id, message}: said into the live call, stored (`tts_audio`,
//!   `agent`); `agent_tts_audio` follows once the caller heard it.
//! - `update_call_status` {call_id, status answered|in_progress|ended}: stored and sent to the
//!   call's dashboards; `ended` also closes the call's media stream.
//! - `audio_data` {call_id, audio_data, sample_rate, encoding MULAW|LINEAR16}: handed to the
//!   call's transcription as caller audio.
//!
//! `call_id` may be left out on a socket opened for a call (it is that call). Errors:
//! [`ClientError`] and the handlers below; every error is a `telephony_error` to this socket
//! only, and the socket stays open.

use crate::calls::{self, EndedBy, SpeakError};
use crate::config::Config;
use crate::db::{self, Call, NewMessage};
use crate::identity::{Agent, Denied};
use crate::messages::{self, ErrorCode};
use crate::{live, time};
use base64::Engine as _;
use gatewayd_plugin::{ConnectInfo, ConnectionId, conn, log, media, rate};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// The socket's path (telephony.md section 1).
pub(crate) const PATH: &str = "/api/ws/telephony/stream";

/// Largest decoded `audio_data`, bytes (the host's `feed-caller-audio` bound).
pub(crate) const MAX_AUDIO_BYTES: usize = 1 << 20;

/// Who is on a dashboard socket and what it follows, kept in its session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct DashboardState {
    pub agent_id: String,
    /// `sender_name` of its messages.
    pub sender_name: String,
    /// The agent's businesses when the socket opened.
    pub businesses: Vec<String>,
    /// The call the socket was opened for; none: the organisation feed.
    pub call_id: Option<String>,
    /// The socket's message bucket (`None`: full) as of `at_ms`.
    pub tokens: Option<f64>,
    pub at_ms: u64,
}

/// A refused message: its `telephony_error`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ClientError {
    pub code: ErrorCode,
    pub message: String,
    /// The call the message named, when it named one readably.
    pub call_id: Option<String>,
}

impl ClientError {
    fn new(code: ErrorCode, message: impl Into<String>) -> ClientError {
        ClientError { code, message: message.into(), call_id: None }
    }

    fn field(message: impl Into<String>) -> ClientError {
        ClientError::new(ErrorCode::ConnectionFailed, message)
    }

    fn about(mut self, call_id: &str) -> ClientError {
        self.call_id = Some(call_id.to_string());
        self
    }
}

/// A status an agent may set (`update_call_status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AgentStatus {
    Answered,
    InProgress,
    Ended,
}

impl AgentStatus {
    fn as_str(self) -> &'static str {
        match self {
            AgentStatus::Answered => "answered",
            AgentStatus::InProgress => "in_progress",
            AgentStatus::Ended => "ended",
        }
    }
}

/// A decoded, bounded dashboard message.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Command {
    Init,
    Ping,
    AgentMessage { call_id: String, message: String },
    UpdateCallStatus { call_id: String, status: AgentStatus },
    AudioData { call_id: String, audio: Vec<u8>, codec: &'static str, rate: u32 },
}

/// The bounds [`parse`] checks.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub max_id_bytes: usize,
    pub max_message_chars: usize,
}

/// Decode and check one message. `socket_call` is the call the socket was opened for (the
/// default `call_id`).
///
/// Errors, all CONNECTION_FAILED: not a JSON object, no string `type`, "unknown message type",
/// `call_id` missing on the feed (or not a string, or longer than `max_id_bytes`), `message`
/// missing, empty or longer than `max_message_chars` characters, `status` not one of
/// answered/in_progress/ended, `audio_data` missing, not base64, empty or over 1 MiB decoded,
/// `encoding` not MULAW/LINEAR16, `sample_rate` not 1..=48000, LINEAR16 of an odd length.
pub(crate) fn parse(text: &str, socket_call: Option<&str>, limits: Limits) -> Result<Command, ClientError> {
    let value: Value = serde_json::from_str(text)
        .map_err(|_| ClientError::field("invalid message: messages are JSON objects with a `type`"))?;
    let Some(m) = value.as_object() else {
        return Err(ClientError::field("invalid message: messages are JSON objects with a `type`"));
    };
    let Some(kind) = m.get("type").and_then(Value::as_str) else {
        return Err(ClientError::field("invalid message: `type` must be a string"));
    };
    let call_id = || call_id(m, socket_call, limits);
    Ok(match kind {
        "init_telephony_stream" => Command::Init,
        "ping" => Command::Ping,
        "agent_message" => {
            let call_id = call_id()?;
            let message = match m.get("message") {
                Some(Value::String(s)) => s.trim(),
                _ => return Err(ClientError::field("`message` must be a string").about(&call_id)),
            };
            if message.is_empty() {
                return Err(ClientError::field("`message` must not be empty").about(&call_id));
            }
            if message.chars().count() > limits.max_message_chars {
                let why = format!("`message` is longer than {} characters", limits.max_message_chars);
                return Err(ClientError::field(why).about(&call_id));
            }
            Command::AgentMessage { message: message.to_string(), call_id }
        }
        "update_call_status" => {
            let call_id = call_id()?;
            let status = match m.get("status").and_then(Value::as_str) {
                Some("answered") => AgentStatus::Answered,
                Some("in_progress") => AgentStatus::InProgress,
                Some("ended") => AgentStatus::Ended,
                _ => {
                    return Err(ClientError::field("`status` must be answered, in_progress or ended").about(&call_id));
                }
            };
            Command::UpdateCallStatus { call_id, status }
        }
        "audio_data" => {
            let call_id = call_id()?;
            let (audio, codec, rate) = audio(m).map_err(|e| ClientError::field(e).about(&call_id))?;
            Command::AudioData { call_id, audio, codec, rate }
        }
        _ => return Err(ClientError::field("unknown message type")),
    })
}

/// The message's `call_id`, else the socket's.
fn call_id(m: &Map<String, Value>, socket_call: Option<&str>, limits: Limits) -> Result<String, ClientError> {
    let given = match m.get("call_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.trim().is_empty() => None,
        Some(Value::String(s)) => Some(s.trim()),
        Some(_) => return Err(ClientError::field("`call_id` must be a string")),
    };
    match given.or(socket_call) {
        None => Err(ClientError::field("`call_id` is required")),
        Some(c) if c.len() > limits.max_id_bytes => {
            Err(ClientError::field(format!("`call_id` is longer than {} bytes", limits.max_id_bytes)))
        }
        Some(c) => Ok(c.to_string()),
    }
}

/// `audio_data`, `encoding`, `sample_rate` -> (audio, host codec, rate).
fn audio(m: &Map<String, Value>) -> Result<(Vec<u8>, &'static str, u32), String> {
    let Some(data) = m.get("audio_data").and_then(Value::as_str) else {
        return Err("`audio_data` must be a base64 string".into());
    };
    if data.len() > MAX_AUDIO_BYTES.div_ceil(3) * 4 {
        return Err(format!("`audio_data` is larger than {MAX_AUDIO_BYTES} bytes"));
    }
    let audio = base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .map_err(|_| "`audio_data` is not valid base64".to_string())?;
    if audio.is_empty() {
        return Err("`audio_data` is empty".into());
    }
    let codec = match m.get("encoding") {
        None | Some(Value::Null) => "pcmu",
        Some(Value::String(e)) if e.eq_ignore_ascii_case("MULAW") => "pcmu",
        Some(Value::String(e)) if e.eq_ignore_ascii_case("LINEAR16") => "l16",
        Some(_) => return Err("`encoding` must be MULAW or LINEAR16".into()),
    };
    let rate = match m.get("sample_rate") {
        None | Some(Value::Null) => 8000,
        Some(v) => match v.as_u64() {
            Some(r @ 1..=48_000) => r as u32,
            _ => return Err("`sample_rate` must be an integer from 1 to 48000".into()),
        },
    };
    if codec == "l16" && audio.len() % 2 != 0 {
        return Err("LINEAR16 `audio_data` must hold whole 16-bit samples".into());
    }
    Ok((audio, codec, rate))
}

/// Take one token from a bucket of `burst` refilled at `per_sec` (`tokens` as of `at_ms`,
/// `None`: full). Returns the tokens left, or `None` when the bucket is empty (a refused
/// message neither spends nor advances the bucket).
pub(crate) fn take_token(tokens: Option<f64>, at_ms: u64, now_ms: u64, per_sec: f64, burst: f64) -> Option<f64> {
    let available = rate::refill(tokens, at_ms, now_ms, per_sec, burst);
    (available >= 1.0).then_some(available - 1.0)
}

fn send_error(id: ConnectionId, call_id: &str, code: ErrorCode, message: &str) {
    conn::send_json(id, &messages::telephony_error(call_id, code, message, &time::now_iso()));
}

/// Refuse the socket: `telephony_error` CONNECTION_FAILED, then close.
fn refuse(id: ConnectionId, call_id: &str, close_code: u16, message: &str) {
    send_error(id, call_id, ErrorCode::ConnectionFailed, message);
    conn::close(id, close_code, message);
}

/// A dashboard socket opened. Returns its state (none: refused and closing).
pub(crate) fn open(info: &ConnectInfo) -> Option<DashboardState> {
    let id = info.id;
    let config = match Config::load() {
        Ok(c) => c,
        Err(e) => {
            refuse(id, "", 1011, "the telephony plugin is misconfigured");
            log::error(&e);
            return None;
        }
    };
    let Some(claims) = info.claims.as_deref() else {
        refuse(id, "", 1008, "authentication required: a token is needed");
        return None;
    };
    let agent = match Agent::from_claims(claims) {
        Ok(a) => a,
        Err(Denied::NotAnAgent(why)) => {
            refuse(id, "", 1008, &format!("not an agent: {why}"));
            return None;
        }
        Err(e @ Denied::Lookup(_)) => {
            log::error(&format!("twilio: dashboard {id}: {e}"));
            refuse(id, "", 1011, "agent lookup failed");
            return None;
        }
    };
    let call_id = info.query_param("call_id").map(str::trim).filter(|c| !c.is_empty()).map(str::to_string);
    match &call_id {
        Some(c) if c.len() > config.max_id_bytes => {
            refuse(id, "", 1008, "call not found");
            return None;
        }
        Some(c) => match db::call(c) {
            Ok(Some(call)) if agent.may_access(&call.business_id) => conn::bind(id, &messages::call_address(c)),
            Ok(_) => {
                refuse(id, c, 1008, "call not found");
                return None;
            }
            Err(e) => {
                log::error(&format!("twilio: dashboard {id}: reading call {c}: {e}"));
                refuse(id, c, 1011, "storage error");
                return None;
            }
        },
        None => {
            for b in &agent.businesses {
                conn::bind(id, &messages::business_address(b));
            }
        }
    }
    Some(DashboardState {
        sender_name: agent.sender_name().to_string(),
        agent_id: agent.agent_id,
        businesses: agent.businesses,
        call_id,
        tokens: None,
        at_ms: 0,
    })
}

/// A text message on a dashboard socket. Returns the updated state.
pub(crate) fn on_text(id: ConnectionId, mut state: DashboardState, text: &str) -> DashboardState {
    let config = Config::load().unwrap_or_default();
    let socket_call = state.call_id.clone().unwrap_or_default();
    let now = time::now_ms();
    match take_token(state.tokens, state.at_ms, now, config.rate_per_sec, config.rate_burst) {
        Some(left) => {
            state.tokens = Some(left);
            state.at_ms = now;
        }
        None => {
            let message = format!(
                "rate limited: at most {} messages per second (bursts of {}); the message was dropped",
                config.rate_per_sec, config.rate_burst
            );
            send_error(id, &socket_call, ErrorCode::ConnectionFailed, &message);
            return state;
        }
    }
    let limits = Limits { max_id_bytes: config.max_id_bytes, max_message_chars: config.max_message_chars };
    let result = match parse(text, state.call_id.as_deref(), limits) {
        Ok(Command::Init) => {
            conn::send_json(id, &messages::telephony_connected(&socket_call));
            Ok(())
        }
        Ok(Command::Ping) => {
            conn::send_json(id, &messages::pong());
            Ok(())
        }
        Ok(Command::AgentMessage { call_id, message }) => agent_message(&state, &call_id, &message),
        Ok(Command::UpdateCallStatus { call_id, status }) => update_call_status(&call_id, status, &state),
        Ok(Command::AudioData { call_id, audio, codec, rate }) => audio_data(&state, &call_id, &audio, codec, rate),
        Err(e) => Err(e),
    };
    if let Err(e) = result {
        send_error(id, e.call_id.as_deref().unwrap_or(&socket_call), e.code, &e.message);
    }
    state
}

/// The call `call_id` if it belongs to one of the agent's businesses; CONNECTION_FAILED "call
/// not found" otherwise, whether it exists or not.
fn agents_call(state: &DashboardState, call_id: &str) -> Result<Call, ClientError> {
    match db::call(call_id) {
        Ok(Some(call)) if state.businesses.contains(&call.business_id) => Ok(call),
        Ok(_) => Err(ClientError::field("call not found").about(call_id)),
        Err(e) => Err(storage_error(call_id, &e)),
    }
}

fn storage_error(call_id: &str, e: &str) -> ClientError {
    log::error(&format!("twilio: call {call_id}: {e}"));
    ClientError::field("storage error: the request could not be completed").about(call_id)
}

/// `agent_message`: TTS_ERROR when the call has ended or is not live, or `say` refused it;
/// nothing is stored then. Said, then stored (`tts_audio`, `agent`, the agent's name).
fn agent_message(state: &DashboardState, call_id: &str, message: &str) -> Result<(), ClientError> {
    let call = agents_call(state, call_id)?;
    let tts = |m: String| ClientError::new(ErrorCode::TtsError, m).about(call_id);
    if call.ended() {
        return Err(tts("the call has ended: the message was not spoken".into()));
    }
    calls::speak(call_id, message).map_err(|e| match e {
        SpeakError::NotLive => {
            tts("the call is not live: no media stream is connected, the message was not spoken".into())
        }
        e @ SpeakError::Refused(_) => tts(e.to_string()),
    })?;
    let stored = NewMessage {
        call_id,
        message_type: "tts_audio",
        content: message,
        sender_type: "agent",
        sender_name: Some(&state.sender_name),
        confidence: None,
        detected_language: None,
        is_final: true,
        metadata: Some(json!({"agent_id": state.agent_id})),
        at: &time::now_iso(),
    };
    match db::insert_message(&stored) {
        Ok(_) => Ok(()),
        Err(e) => {
            log::error(&format!("twilio: call {call_id}: storing an agent message failed: {e}"));
            Err(ClientError::field("the message is being spoken but could not be stored").about(call_id))
        }
    }
}

/// `update_call_status`: `answered` / `in_progress` on a call that has ended is refused
/// (CONNECTION_FAILED "the call has ended"); `ended` ends it (once; again is no error).
fn update_call_status(call_id: &str, status: AgentStatus, state: &DashboardState) -> Result<(), ClientError> {
    let call = agents_call(state, call_id)?;
    if status == AgentStatus::Ended {
        return calls::end(&call, None, EndedBy::Other).map_err(|e| storage_error(call_id, &e));
    }
    let now = time::now_iso();
    match db::set_status(call_id, status.as_str(), &now) {
        Ok(true) => {
            let event = messages::call_status_update(call_id, status.as_str(), &now);
            calls::broadcast(call_id, &call.business_id, &event);
            Ok(())
        }
        Ok(false) => Err(ClientError::field("the call has ended").about(call_id)),
        Err(e) => Err(storage_error(call_id, &e)),
    }
}

/// `audio_data`: STT_ERROR when the call has ended or is not live, or the host refused the
/// audio.
fn audio_data(state: &DashboardState, call_id: &str, audio: &[u8], codec: &str, rate: u32) -> Result<(), ClientError> {
    let call = agents_call(state, call_id)?;
    let stt = |m: String| ClientError::new(ErrorCode::SttError, m).about(call_id);
    if call.ended() {
        return Err(stt("the call has ended: the audio was dropped".into()));
    }
    let Some(live) = live::get(call_id) else {
        return Err(stt("the call is not live: no media stream is connected, the audio was dropped".into()));
    };
    media::feed_caller_audio(live.conn, audio, codec, rate).map_err(|e| stt(format!("the audio was refused: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits { max_id_bytes: 16, max_message_chars: 10 };

    fn err(text: &str, socket_call: Option<&str>) -> (ErrorCode, String, Option<String>) {
        let e = parse(text, socket_call, LIMITS).unwrap_err();
        (e.code, e.message, e.call_id)
    }

    #[test]
    fn spec_messages_decode() {
        let init = r#"{"type":"init_telephony_stream","call_id":"","language":"auto","model":"nova-2","client_type":"telephony"}"#;
        assert_eq!(parse(init, None, LIMITS), Ok(Command::Init));
        assert_eq!(parse(r#"{"type":"ping"}"#, None, LIMITS), Ok(Command::Ping));
        let m = r#"{"type":"agent_message","call_id":"c1","message":" Hello! ","language":"auto","timestamp":"2024-01-01T12:00:00Z"}"#;
        assert_eq!(
            parse(m, None, LIMITS),
            Ok(Command::AgentMessage { call_id: "c1".into(), message: "Hello!".into() })
        );
        let s =
            r#"{"type":"update_call_status","call_id":"c1","status":"in_progress","timestamp":"2024-01-01T12:00:00Z"}"#;
        assert_eq!(
            parse(s, None, LIMITS),
            Ok(Command::UpdateCallStatus { call_id: "c1".into(), status: AgentStatus::InProgress })
        );
        let a = r#"{"type":"audio_data","call_id":"c1","audio_data":"/39/fw==","sample_rate":8000,"encoding":"MULAW"}"#;
        assert_eq!(
            parse(a, None, LIMITS),
            Ok(Command::AudioData {
                call_id: "c1".into(),
                audio: vec![0xff, 0x7f, 0x7f, 0x7f],
                codec: "pcmu",
                rate: 8000
            })
        );
        let l =
            r#"{"type":"audio_data","call_id":"c1","audio_data":"AAAAAA==","sample_rate":16000,"encoding":"linear16"}"#;
        assert!(matches!(parse(l, None, LIMITS), Ok(Command::AudioData { codec: "l16", rate: 16000, .. })));
    }

    #[test]
    fn a_call_socket_supplies_the_call_id_and_the_feed_must_name_one() {
        let m = r#"{"type":"agent_message","message":"hi"}"#;
        assert_eq!(
            parse(m, Some("c9"), LIMITS),
            Ok(Command::AgentMessage { call_id: "c9".into(), message: "hi".into() })
        );
        assert_eq!(err(m, None), (ErrorCode::ConnectionFailed, "`call_id` is required".into(), None));
        let other = r#"{"type":"agent_message","call_id":"c2","message":"hi"}"#;
        assert!(
            matches!(parse(other, Some("c9"), LIMITS), Ok(Command::AgentMessage { call_id, .. }) if call_id == "c2")
        );
    }

    #[test]
    fn malformed_and_out_of_bounds_messages_are_connection_failed() {
        let cases = [
            ("nope", "invalid message: messages are JSON objects with a `type`"),
            ("[]", "invalid message: messages are JSON objects with a `type`"),
            (r#"{"type":5}"#, "invalid message: `type` must be a string"),
            (r#"{"type":"dance"}"#, "unknown message type"),
            (r#"{"type":"agent_message","call_id":"c1"}"#, "`message` must be a string"),
            (r#"{"type":"agent_message","call_id":"c1","message":"   "}"#, "`message` must not be empty"),
            (
                r#"{"type":"agent_message","call_id":"c1","message":"ééééééééééé"}"#,
                "`message` is longer than 10 characters",
            ),
            (
                r#"{"type":"agent_message","call_id":"c1234567890123456","message":"x"}"#,
                "`call_id` is longer than 16 bytes",
            ),
            (r#"{"type":"agent_message","call_id":7,"message":"x"}"#, "`call_id` must be a string"),
            (
                r#"{"type":"update_call_status","call_id":"c1","status":"incoming"}"#,
                "`status` must be answered, in_progress or ended",
            ),
            (r#"{"type":"audio_data","call_id":"c1"}"#, "`audio_data` must be a base64 string"),
            (r#"{"type":"audio_data","call_id":"c1","audio_data":"***"}"#, "`audio_data` is not valid base64"),
            (r#"{"type":"audio_data","call_id":"c1","audio_data":""}"#, "`audio_data` is empty"),
            (
                r#"{"type":"audio_data","call_id":"c1","audio_data":"AAA=","encoding":"OPUS"}"#,
                "`encoding` must be MULAW or LINEAR16",
            ),
            (
                r#"{"type":"audio_data","call_id":"c1","audio_data":"AAA=","sample_rate":96000}"#,
                "`sample_rate` must be an integer from 1 to 48000",
            ),
            (
                r#"{"type":"audio_data","call_id":"c1","audio_data":"AAAA","encoding":"LINEAR16"}"#,
                "LINEAR16 `audio_data` must hold whole 16-bit samples",
            ),
        ];
        for (text, message) in cases {
            let (code, got, _) = err(text, None);
            assert_eq!((code, got.as_str()), (ErrorCode::ConnectionFailed, message), "{text}");
        }
        // Field errors name the call they were about.
        assert_eq!(err(r#"{"type":"agent_message","call_id":"c1","message":""}"#, None).2.as_deref(), Some("c1"));
        let huge = format!(r#"{{"type":"audio_data","call_id":"c1","audio_data":"{}"}}"#, "A".repeat(1_398_108));
        assert_eq!(err(&huge, None).1, "`audio_data` is larger than 1048576 bytes");
    }

    #[test]
    fn the_bucket_allows_a_burst_then_the_rate() {
        let (per_sec, burst) = (20.0, 40.0);
        let mut tokens = None;
        for _ in 0..40 {
            tokens = Some(take_token(tokens, 0, 0, per_sec, burst).expect("within the burst"));
        }
        assert_eq!(take_token(tokens, 0, 0, per_sec, burst), None);
        // 50 ms later one token has come back.
        assert!(take_token(tokens, 0, 50, per_sec, burst).is_some());
        assert_eq!(take_token(tokens, 0, 49, per_sec, burst), None);
    }
}
