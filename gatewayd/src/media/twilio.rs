//! Twilio Media Streams framing (telephony.md section 5 "Media Streams"; Twilio's "Media
//! Streams - WebSocket Messages"), sans-IO.
//!
//! On a route with `framing = "twilio"` every message is a JSON text frame with an `event`:
//! Twilio sends `connected`, `start` (with `streamSid`), `media` (`media.payload`: base64
//! mu-law 8 kHz), `mark` (the echo of a mark we sent, once the audio before it has played),
//! `dtmf` and `stop`; we send `media`, `mark` and `clear`, each carrying the `streamSid`.
//!
//! The media engine takes `media` and `mark` itself ([`parse`]); `start` sets the stream's id
//! (and answers the call); everything else is the plugin's. [`Marks`] remembers the marks sent
//! and not yet echoed, so a mark is reported when Twilio has played it, and never when its echo
//! follows a `clear` (Twilio returns the pending marks of a cleared buffer at once).

use base64::Engine as _;
use bytes::Bytes;
use serde::Deserialize;
use std::borrow::Cow;
use std::collections::VecDeque;

/// Marks sent and not yet echoed, per call; beyond it the oldest is forgotten (never reported).
pub const MAX_PENDING_MARKS: usize = 64;
/// Longest mark name we send (Twilio's limit is not documented; names are the plugin's).
pub const MAX_MARK_BYTES: usize = 256;

/// An inbound Media Streams message, as far as the media engine cares.
#[derive(Debug, PartialEq)]
pub enum Inbound {
    /// `media`: caller audio, mu-law bytes (20 ms = 160 bytes, though Twilio does not promise
    /// a size).
    Media(Vec<u8>),
    /// `mark`: Twilio played everything before the mark of this name.
    Mark(String),
    /// `start`: the stream's id; the message also goes to the plugin.
    Start { stream_sid: String },
    /// Anything else (`connected`, `dtmf`, `stop`, unknown events, not JSON): the plugin's.
    Other,
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow)]
    event: Cow<'a, str>,
    #[serde(borrow, default)]
    media: Option<MediaBody<'a>>,
    #[serde(default)]
    mark: Option<MarkBody>,
    #[serde(rename = "streamSid", default)]
    stream_sid: Option<String>,
    #[serde(default)]
    start: Option<StartBody>,
}

#[derive(Deserialize)]
struct MediaBody<'a> {
    #[serde(borrow)]
    payload: Cow<'a, str>,
}

#[derive(Deserialize)]
struct MarkBody {
    name: String,
}

#[derive(Deserialize)]
struct StartBody {
    #[serde(rename = "streamSid", default)]
    stream_sid: Option<String>,
}

/// Classify one text message. Err: a `media` message without a decodable base64 payload, or a
/// `mark`/`start` without its name/stream id (the reason, for a `frame-rejected` event).
pub fn parse(text: &str) -> Result<Inbound, String> {
    let Ok(message) = serde_json::from_str::<Message>(text) else { return Ok(Inbound::Other) };
    match &*message.event {
        "media" => {
            let payload = message.media.ok_or("a media message without `media.payload`")?.payload;
            let audio = base64::engine::general_purpose::STANDARD
                .decode(payload.as_bytes())
                .map_err(|e| format!("a media payload that is not base64: {e}"))?;
            if audio.is_empty() {
                return Err("an empty media payload".into());
            }
            Ok(Inbound::Media(audio))
        }
        "mark" => Ok(Inbound::Mark(message.mark.ok_or("a mark message without `mark.name`")?.name)),
        "start" => {
            let sid = message.start.and_then(|s| s.stream_sid).or(message.stream_sid);
            Ok(Inbound::Start { stream_sid: sid.ok_or("a start message without `streamSid`")? })
        }
        _ => Ok(Inbound::Other),
    }
}

/// `{"event":"media","streamSid":..,"media":{"payload":<base64 mu-law>}}`. Sent once per call
/// per 20 ms, so it is written straight into one buffer (base64 needs no JSON escaping; the
/// stream id is escaped as a JSON string) rather than built as a `serde_json::Value`.
pub fn media(stream_sid: &str, mulaw: &[u8]) -> Bytes {
    let sid = serde_json::to_string(stream_sid).expect("a string serializes");
    let mut out = String::with_capacity(64 + sid.len() + mulaw.len().div_ceil(3) * 4);
    out.push_str(r#"{"event":"media","streamSid":"#);
    out.push_str(&sid);
    out.push_str(r#","media":{"payload":""#);
    base64::engine::general_purpose::STANDARD.encode_string(mulaw, &mut out);
    out.push_str(r#""}}"#);
    Bytes::from(out)
}

/// `{"event":"mark","streamSid":..,"mark":{"name":..}}`.
pub fn mark(stream_sid: &str, name: &str) -> Bytes {
    Bytes::from(serde_json::json!({"event": "mark", "streamSid": stream_sid, "mark": {"name": name}}).to_string())
}

/// `{"event":"clear","streamSid":..}`: Twilio drops the audio it has buffered.
pub fn clear(stream_sid: &str) -> Bytes {
    Bytes::from(serde_json::json!({"event": "clear", "streamSid": stream_sid}).to_string())
}

/// Marks sent to Twilio and not yet echoed.
#[derive(Debug, Default)]
pub struct Marks {
    pending: VecDeque<String>,
}

impl Marks {
    /// A mark was sent. Returns false (and forgets the oldest) when [`MAX_PENDING_MARKS`] were
    /// already waiting.
    pub fn sent(&mut self, name: String) -> bool {
        let room = self.pending.len() < MAX_PENDING_MARKS;
        if !room {
            self.pending.pop_front();
        }
        self.pending.push_back(name);
        room
    }

    /// Twilio echoed `name`: true when it was sent and not cleared since (it is reported).
    /// Twilio echoes in order, so earlier marks still pending are dropped with it.
    pub fn echoed(&mut self, name: &str) -> bool {
        match self.pending.iter().position(|m| m == name) {
            Some(i) => {
                self.pending.drain(..=i);
                true
            }
            None => false,
        }
    }

    /// A `clear` was sent: whatever echoes of the pending marks come later were not played.
    pub fn clear(&mut self) {
        self.pending.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_twilios_messages() {
        let media = r#"{"event":"media","sequenceNumber":"3","media":{"track":"inbound","chunk":"1","timestamp":"5","payload":"/38A"},"streamSid":"MZ1"}"#;
        assert_eq!(parse(media), Ok(Inbound::Media(vec![0xff, 0x7f, 0x00])));
        let mark = r#"{"event":"mark","sequenceNumber":"4","streamSid":"MZ1","mark":{"name":"said-1"}}"#;
        assert_eq!(parse(mark), Ok(Inbound::Mark("said-1".into())));
        let start = r#"{"event":"start","sequenceNumber":"1","start":{"accountSid":"AC1","streamSid":"MZ1","callSid":"CA1","tracks":["inbound"],"customParameters":{"call_id":"c1"},"mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}},"streamSid":"MZ1"}"#;
        assert_eq!(parse(start), Ok(Inbound::Start { stream_sid: "MZ1".into() }));
        for other in
            [r#"{"event":"connected","protocol":"Call","version":"1.0.0"}"#, r#"{"event":"stop"}"#, "not json", "{}"]
        {
            assert_eq!(parse(other), Ok(Inbound::Other), "{other}");
        }
        assert!(parse(r#"{"event":"media","media":{"payload":"***"}}"#).unwrap_err().contains("base64"));
        assert!(parse(r#"{"event":"media"}"#).is_err());
        assert!(parse(r#"{"event":"media","media":{"payload":""}}"#).is_err());
        assert!(parse(r#"{"event":"mark"}"#).is_err());
        assert!(parse(r#"{"event":"start","start":{}}"#).is_err());
    }

    #[test]
    fn outbound_messages_round_trip() {
        let m: serde_json::Value = serde_json::from_slice(&media("MZ9", &[0xff; 160])).unwrap();
        assert_eq!(m["event"], "media");
        assert_eq!(m["streamSid"], "MZ9");
        assert_eq!(parse(&serde_json::to_string(&m).unwrap()), Ok(Inbound::Media(vec![0xff; 160])));
        let k: serde_json::Value = serde_json::from_slice(&mark("MZ9", "a\"b")).unwrap();
        assert_eq!(k["mark"]["name"], "a\"b");
        let c: serde_json::Value = serde_json::from_slice(&clear("MZ9")).unwrap();
        assert_eq!((c["event"].as_str(), c["streamSid"].as_str()), (Some("clear"), Some("MZ9")));
    }

    #[test]
    fn marks_are_reported_once_on_echo_and_never_after_a_clear() {
        let mut marks = Marks::default();
        assert!(marks.sent("a".into()) && marks.sent("b".into()));
        assert!(marks.echoed("a"));
        assert!(!marks.echoed("a"), "once");
        assert!(!marks.echoed("never-sent"));
        marks.clear();
        assert!(!marks.echoed("b"), "echoed after a clear: not played");
        for i in 0..MAX_PENDING_MARKS + 1 {
            marks.sent(i.to_string());
        }
        assert!(!marks.echoed("0"), "the oldest was forgotten");
        assert!(marks.echoed(&MAX_PENDING_MARKS.to_string()));
    }
}
