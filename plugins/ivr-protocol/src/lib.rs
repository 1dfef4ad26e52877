//! The `ivr.md` wire protocol: client events in, server events out, and the error answer for
//! bad input. Shared by the default IVR and custom IVR plugins (e.g. `plugins/ivr-menu`).
//!
//! Client -> server (JSON text, keyed by `"event"`): `incoming_call`, `dtmf`, `hangup`.
//! Server -> client: `answer`, `dtmf` (digit, duration <= 1000 ms), `hangup`, and — where the
//! spec is silent — `{"event":"error","code":...,"message":...}` for bad input (see
//! docs/protocols/ivr.md). Binary frames are audio and belong to the host's media engine.

use gatewayd_plugin::{ConnectionId, conn};
use serde::Deserialize;
use serde_json::json;

/// A valid client event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    IncomingCall { caller_id: String, did_number: String, session_id: String },
    Dtmf { digit: char },
    Hangup,
}

/// Bad input: the `code` and `message` of the error event sent back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError {
    pub code: &'static str,
    pub message: String,
}

impl ProtocolError {
    pub fn new(code: &'static str, message: impl Into<String>) -> ProtocolError {
        ProtocolError { code, message: message.into() }
    }
}

#[derive(Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
enum Wire {
    #[serde(rename_all = "camelCase")]
    IncomingCall {
        caller_id: String,
        did_number: String,
        session_id: String,
    },
    Dtmf {
        digit: String,
    },
    Hangup {},
}

/// Digits a caller may press (`ivr.md`: 0-9, *, #, A-D).
pub fn is_dtmf_digit(c: char) -> bool {
    c.is_ascii_digit() || matches!(c, '*' | '#' | 'A'..='D')
}

/// Parse one text message. `in_call` says whether `incoming_call` was already accepted on
/// this connection: a second one, or `dtmf`/`hangup` before the first, is refused.
pub fn parse(text: &str, in_call: bool) -> Result<ClientEvent, ProtocolError> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| ProtocolError::new("invalid_json", format!("not JSON: {e}")))?;
    let event = value
        .get("event")
        .and_then(|e| e.as_str())
        .ok_or_else(|| ProtocolError::new("invalid_message", "a message is a JSON object with a string \"event\""))?
        .to_string();
    if !matches!(event.as_str(), "incoming_call" | "dtmf" | "hangup") {
        return Err(ProtocolError::new("unknown_event", format!("unknown event `{event}`")));
    }
    let wire: Wire =
        serde_json::from_value(value).map_err(|e| ProtocolError::new("invalid_message", format!("`{event}`: {e}")))?;
    let parsed = match wire {
        Wire::IncomingCall { caller_id, did_number, session_id } => {
            ClientEvent::IncomingCall { caller_id, did_number, session_id }
        }
        Wire::Dtmf { digit } => {
            let mut chars = digit.chars();
            match (chars.next(), chars.next()) {
                (Some(c), None) if is_dtmf_digit(c) => ClientEvent::Dtmf { digit: c },
                _ => return Err(ProtocolError::new("invalid_digit", format!("`{digit}` is not one of 0-9 * # A-D"))),
            }
        }
        Wire::Hangup {} => ClientEvent::Hangup,
    };
    match (&parsed, in_call) {
        (ClientEvent::IncomingCall { .. }, true) => {
            Err(ProtocolError::new("already_in_call", "incoming_call was already received on this connection"))
        }
        (ClientEvent::Dtmf { .. } | ClientEvent::Hangup, false) => {
            Err(ProtocolError::new("no_call", format!("`{event}` before incoming_call")))
        }
        _ => Ok(parsed),
    }
}

/// Send `{"event":"error","code":...,"message":...}`.
pub fn send_error(id: ConnectionId, e: &ProtocolError) {
    conn::send_json(id, &json!({"event": "error", "code": e.code, "message": e.message}));
}

/// Send `{"event":"answer"}`.
pub fn send_answer(id: ConnectionId) {
    conn::send_json(id, &json!({"event": "answer"}));
}

/// Send `{"event":"dtmf","digit":...,"duration":...}` (digit 0-9 * #, duration at most 1000 ms).
pub fn send_dtmf(id: ConnectionId, digit: char, duration_ms: u32) {
    conn::send_json(id, &json!({"event": "dtmf", "digit": digit.to_string(), "duration": duration_ms.min(1000)}));
}

/// Send `{"event":"hangup"}` and close the connection normally (1000).
pub fn send_hangup_and_close(id: ConnectionId) {
    conn::send_json(id, &json!({"event": "hangup"}));
    let _ = gatewayd_plugin::media::hangup(id);
    conn::close(id, 1000, "call ended");
}

/// The answer to audio that arrived before the call was answered.
pub fn audio_before_call() -> ProtocolError {
    ProtocolError::new("audio_before_call", "binary audio is accepted only after incoming_call has been answered")
}

/// The answer to a frame the media engine refused (`reason` from the host).
pub fn bad_frame(reason: &str) -> ProtocolError {
    ProtocolError::new("bad_frame", reason)
}

/// Timer keys are plugin-wide: scope them to the connection.
pub fn timer_key(id: ConnectionId, what: &str) -> String {
    format!("{id}/{what}")
}

/// The connection and name of a key made by [`timer_key`].
pub fn parse_timer_key(key: &str) -> Option<(ConnectionId, &str)> {
    let (id, what) = key.split_once('/')?;
    Some((id.parse().ok()?, what))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_spec_events() {
        let call = r#"{"event":"incoming_call","callerId":"+1555","didNumber":"+1800","sessionId":"s1"}"#;
        assert_eq!(
            parse(call, false),
            Ok(ClientEvent::IncomingCall {
                caller_id: "+1555".into(),
                did_number: "+1800".into(),
                session_id: "s1".into()
            })
        );
        assert_eq!(parse(r##"{"event":"dtmf","digit":"#"}"##, true), Ok(ClientEvent::Dtmf { digit: '#' }));
        assert_eq!(parse(r#"{"event":"hangup"}"#, true), Ok(ClientEvent::Hangup));
    }

    #[test]
    fn refuses_bad_input_with_a_code() {
        let code = |t: &str, in_call| parse(t, in_call).unwrap_err().code;
        assert_eq!(code("nope", true), "invalid_json");
        assert_eq!(code("[1]", true), "invalid_message");
        assert_eq!(code(r#"{"event":"transfer"}"#, true), "unknown_event");
        assert_eq!(code(r#"{"event":"dtmf","digit":"E"}"#, true), "invalid_digit");
        assert_eq!(code(r#"{"event":"dtmf","digit":"12"}"#, true), "invalid_digit");
        assert_eq!(code(r#"{"event":"dtmf","digit":1}"#, true), "invalid_message");
        assert_eq!(code(r#"{"event":"dtmf","digit":"1"}"#, false), "no_call");
        assert_eq!(
            code(r#"{"event":"incoming_call","callerId":"a","didNumber":"b","sessionId":"c"}"#, true),
            "already_in_call"
        );
        assert_eq!(code(r#"{"event":"incoming_call","callerId":"a"}"#, false), "invalid_message");
    }

    #[test]
    fn timer_keys_round_trip() {
        assert_eq!(parse_timer_key(&timer_key(42, "dtmf")), Some((42, "dtmf")));
    }
}
