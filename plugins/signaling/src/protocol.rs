//! Wire messages of `signaling.md` and the error/timeout messages this gateway adds where the
//! spec is silent (documented in `docs/protocols/signaling.md`).

use serde::Serialize;
use serde_json::{Map, Value};

/// A parsed client message. Fields are checked per type in [`parse`].
#[derive(Debug, PartialEq)]
pub enum Inbound {
    /// `{"type":"ping"}` (spec: Notes, Ping/Pong).
    Ping,
    /// `call.invite` (spec section 2) with exactly one of `to_guest_id` / `to_agent_id`.
    Invite { to: Party, business_id: String, room_id: String, caller_display: Option<String> },
    /// `call.response` (spec section 5).
    Response { to: Party, business_id: String, room_id: String, accept: bool },
}

/// The other side a message names: `to_guest_id` or `to_agent_id`.
#[derive(Debug, Clone, PartialEq)]
pub enum Party {
    Guest(String),
    Agent(String),
}

/// An `error` message: `{"type":"error","code":...,"message":...}`.
#[derive(Debug, Serialize, PartialEq)]
pub struct ErrorMsg {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub code: &'static str,
    pub message: String,
}

impl ErrorMsg {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        ErrorMsg { kind: "error", code, message: message.into() }
    }
}

/// Parse one text frame. Errors are ready to send back.
pub fn parse(text: &str) -> Result<Inbound, ErrorMsg> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| ErrorMsg::new("invalid_json", format!("message is not valid JSON: {e}")))?;
    let Value::Object(obj) = value else {
        return Err(ErrorMsg::new("invalid_json", "message must be a JSON object"));
    };
    let kind = match obj.get("type") {
        Some(Value::String(t)) => t.as_str(),
        Some(_) => return Err(ErrorMsg::new("invalid_field", "`type` must be a string")),
        None => return Err(ErrorMsg::new("missing_field", "`type` is required")),
    };
    match kind {
        "ping" => Ok(Inbound::Ping),
        "call.invite" => Ok(Inbound::Invite {
            to: party(&obj)?,
            business_id: string_field(&obj, "business_id")?,
            room_id: string_field(&obj, "room_id")?,
            caller_display: match obj.get("caller_display") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(s.clone()),
                Some(_) => return Err(ErrorMsg::new("invalid_field", "`caller_display` must be a string")),
            },
        }),
        "call.response" => Ok(Inbound::Response {
            to: party(&obj)?,
            business_id: string_field(&obj, "business_id")?,
            room_id: string_field(&obj, "room_id")?,
            accept: match obj.get("accept") {
                Some(Value::Bool(b)) => *b,
                Some(_) => return Err(ErrorMsg::new("invalid_field", "`accept` must be true or false")),
                None => return Err(ErrorMsg::new("missing_field", "`accept` is required")),
            },
        }),
        other => Err(ErrorMsg::new("unknown_type", format!("unknown message type `{}`", truncate(other)))),
    }
}

/// Length bounds on what a parsed message carries: every id at most `max_id_bytes`,
/// `caller_display` at most `max_display_bytes`. Err: `field_too_long`, naming the field (never
/// echoing it).
pub fn check_bounds(message: &Inbound, max_id_bytes: usize, max_display_bytes: usize) -> Result<(), ErrorMsg> {
    let (to, business_id, room_id, display) = match message {
        Inbound::Ping => return Ok(()),
        Inbound::Invite { to, business_id, room_id, caller_display } => {
            (to, business_id, room_id, caller_display.as_deref())
        }
        Inbound::Response { to, business_id, room_id, .. } => (to, business_id, room_id, None),
    };
    let to = match to {
        Party::Guest(id) => ("to_guest_id", id),
        Party::Agent(id) => ("to_agent_id", id),
    };
    for (name, value) in [to, ("business_id", business_id), ("room_id", room_id)] {
        if value.len() > max_id_bytes {
            return Err(ErrorMsg::new("field_too_long", format!("`{name}` is longer than {max_id_bytes} bytes")));
        }
    }
    if display.is_some_and(|d| d.len() > max_display_bytes) {
        return Err(ErrorMsg::new(
            "field_too_long",
            format!("`caller_display` is longer than {max_display_bytes} bytes"),
        ));
    }
    Ok(())
}

fn party(obj: &Map<String, Value>) -> Result<Party, ErrorMsg> {
    match (obj.get("to_guest_id"), obj.get("to_agent_id")) {
        (Some(_), Some(_)) => {
            Err(ErrorMsg::new("invalid_field", "give either `to_guest_id` or `to_agent_id`, not both"))
        }
        (Some(_), None) => Ok(Party::Guest(string_field(obj, "to_guest_id")?)),
        (None, Some(_)) => Ok(Party::Agent(string_field(obj, "to_agent_id")?)),
        (None, None) => Err(ErrorMsg::new("missing_field", "`to_guest_id` or `to_agent_id` is required")),
    }
}

/// A required identifier field. The spec's ids are opaque: strings, or numbers (user ids).
fn string_field(obj: &Map<String, Value>, name: &'static str) -> Result<String, ErrorMsg> {
    match obj.get(name) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(Value::Number(n)) => Ok(n.to_string()),
        Some(Value::String(_)) => Err(ErrorMsg::new("invalid_field", format!("`{name}` must not be empty"))),
        Some(Value::Null) | None => Err(ErrorMsg::new("missing_field", format!("`{name}` is required"))),
        Some(_) => Err(ErrorMsg::new("invalid_field", format!("`{name}` must be a string"))),
    }
}

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(64) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_specs_invite_and_response() {
        let m = parse(
            r#"{"type":"call.invite","to_agent_id":"44","business_id":"b","room_id":"r","caller_display":"Visitor #42"}"#,
        );
        assert_eq!(
            m,
            Ok(Inbound::Invite {
                to: Party::Agent("44".into()),
                business_id: "b".into(),
                room_id: "r".into(),
                caller_display: Some("Visitor #42".into())
            })
        );
        let m = parse(r#"{"type":"call.response","to_guest_id":"g","business_id":"b","room_id":"r","accept":true}"#);
        assert_eq!(
            m,
            Ok(Inbound::Response {
                to: Party::Guest("g".into()),
                business_id: "b".into(),
                room_id: "r".into(),
                accept: true
            })
        );
    }

    #[test]
    fn long_ids_and_displays_are_refused_without_echo() {
        let long = "r".repeat(30_000);
        let m = parse(&format!(r#"{{"type":"call.invite","to_agent_id":"44","business_id":"b","room_id":"{long}"}}"#))
            .unwrap();
        let e = check_bounds(&m, 128, 256).unwrap_err();
        assert_eq!((e.code, e.message.as_str()), ("field_too_long", "`room_id` is longer than 128 bytes"));
        let m = parse(&format!(
            r#"{{"type":"call.invite","to_guest_id":"{}","business_id":"b","room_id":"r"}}"#,
            "g".repeat(129)
        ))
        .unwrap();
        assert_eq!(check_bounds(&m, 128, 256).unwrap_err().message, "`to_guest_id` is longer than 128 bytes");
        let m = parse(&format!(
            r#"{{"type":"call.invite","to_agent_id":"44","business_id":"b","room_id":"r","caller_display":"{}"}}"#,
            "d".repeat(257)
        ))
        .unwrap();
        assert_eq!(check_bounds(&m, 128, 256).unwrap_err().message, "`caller_display` is longer than 256 bytes");
        let m = parse(&format!(
            r#"{{"type":"call.response","to_guest_id":"g","business_id":"{}","room_id":"r","accept":true}}"#,
            "b".repeat(129)
        ))
        .unwrap();
        assert_eq!(check_bounds(&m, 128, 256).unwrap_err().message, "`business_id` is longer than 128 bytes");
        // At the bounds exactly: accepted.
        let m = parse(&format!(
            r#"{{"type":"call.invite","to_agent_id":"{}","business_id":"b","room_id":"r","caller_display":"{}"}}"#,
            "a".repeat(128),
            "d".repeat(256)
        ))
        .unwrap();
        assert_eq!(check_bounds(&m, 128, 256), Ok(()));
    }

    #[test]
    fn names_what_is_wrong() {
        assert_eq!(parse("nope").unwrap_err().code, "invalid_json");
        assert_eq!(parse("[1]").unwrap_err().code, "invalid_json");
        assert_eq!(parse(r#"{"type":"call.dance"}"#).unwrap_err().code, "unknown_type");
        let e = parse(r#"{"type":"call.invite","to_guest_id":"g","room_id":"r"}"#).unwrap_err();
        assert_eq!((e.code, e.message.as_str()), ("missing_field", "`business_id` is required"));
        let e = parse(r#"{"type":"call.response","to_guest_id":"g","business_id":"b","room_id":"r","accept":"yes"}"#)
            .unwrap_err();
        assert_eq!(e.code, "invalid_field");
        let e = parse(r#"{"type":"call.invite","business_id":"b","room_id":"r"}"#).unwrap_err();
        assert_eq!(e.code, "missing_field");
    }
}
