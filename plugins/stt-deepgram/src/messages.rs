//! Deepgram live (v1) server messages turned into neutral events.
//!
//! Shapes from the Deepgram SDK's `listen/v1/types` (Results, SpeechStarted, UtteranceEnd,
//! Metadata). Times are float seconds from the start of the audio sent on the connection.
//! The `Error` message shape is assumed (not in the SDK types read).

use gatewayd_plugin::speech::stt::{SttEvent, SttMetadata, Transcript, Word};
use gatewayd_plugin::speech::{ErrorKind, SpeechError, WsMessage, decode_json, secs_to_ms};
use serde::Deserialize;

/// One server message, by its `type`.
#[derive(Deserialize)]
#[serde(tag = "type")]
enum Message {
    Results(Results),
    SpeechStarted {
        #[serde(default)]
        timestamp: f64,
    },
    UtteranceEnd {
        #[serde(default)]
        last_word_end: f64,
    },
    Metadata {
        #[serde(default)]
        request_id: String,
        #[serde(default)]
        duration: f64,
    },
    /// Assumed shape: `{"type":"Error","description":..,"message":..,"variant":..}`.
    Error {
        #[serde(default)]
        description: Option<String>,
        #[serde(default)]
        message: Option<String>,
    },
    #[serde(other)]
    Unknown,
}

#[derive(Deserialize)]
struct Results {
    #[serde(default)]
    is_final: bool,
    #[serde(default)]
    speech_final: bool,
    #[serde(default)]
    from_finalize: bool,
    #[serde(default)]
    start: f64,
    #[serde(default)]
    duration: f64,
    channel: Channel,
}

#[derive(Deserialize)]
struct Channel {
    #[serde(default)]
    alternatives: Vec<Alternative>,
}

#[derive(Deserialize)]
struct Alternative {
    #[serde(default)]
    transcript: String,
    #[serde(default)]
    confidence: f64,
    #[serde(default)]
    languages: Vec<String>,
    #[serde(default)]
    words: Vec<DgWord>,
}

#[derive(Deserialize)]
struct DgWord {
    word: String,
    #[serde(default)]
    start: f64,
    #[serde(default)]
    end: f64,
    #[serde(default)]
    confidence: f64,
    #[serde(default)]
    punctuated_word: Option<String>,
    #[serde(default)]
    speaker: Option<u32>,
}

/// The events of one vendor message. `interim_wanted`: false drops interim results (they are
/// still asked of Deepgram when `utterance_end_ms` needs them). A binary, malformed or
/// oversized message is one `error` event of kind `protocol`; an unknown `type` gives none.
pub fn events(message: WsMessage, interim_wanted: bool) -> Vec<SttEvent> {
    let text = match message {
        WsMessage::Text(text) => text,
        WsMessage::Binary(data) => {
            let e = format!("unexpected binary message of {} bytes", data.len());
            return vec![SttEvent::Error(SpeechError::new(ErrorKind::Protocol, e))];
        }
    };
    let message = match decode_json::<Message>(&text) {
        Ok(message) => message,
        Err(e) => return vec![SttEvent::Error(e)],
    };
    match message {
        Message::Results(results) => {
            let transcript = transcript(
                results.start,
                results.duration,
                results.speech_final,
                results.from_finalize,
                results.channel,
            );
            if results.is_final {
                vec![SttEvent::Final(transcript)]
            } else if interim_wanted {
                vec![SttEvent::Interim(transcript)]
            } else {
                Vec::new()
            }
        }
        Message::SpeechStarted { timestamp } => vec![SttEvent::SpeechStarted(secs_to_ms(timestamp))],
        Message::UtteranceEnd { last_word_end } => vec![SttEvent::UtteranceEnd(secs_to_ms(last_word_end))],
        Message::Metadata { request_id, duration } => {
            vec![SttEvent::Metadata(SttMetadata { request_id, audio_ms: secs_to_ms(duration) })]
        }
        Message::Error { description, message } => {
            let text = description.or(message).unwrap_or_else(|| "error without a description".into());
            vec![SttEvent::Error(SpeechError::new(ErrorKind::BadRequest, format!("Deepgram: {text}")))]
        }
        Message::Unknown => Vec::new(),
    }
}

fn transcript(start: f64, duration: f64, speech_final: bool, from_finalize: bool, channel: Channel) -> Transcript {
    let best = channel.alternatives.into_iter().next();
    let (text, confidence, languages, words) = match best {
        Some(a) => (a.transcript, a.confidence, a.languages, a.words),
        None => (String::new(), 0.0, Vec::new(), Vec::new()),
    };
    Transcript {
        text,
        confidence: confidence.clamp(0.0, 1.0) as f32,
        languages,
        start_ms: secs_to_ms(start),
        duration_ms: secs_to_ms(duration),
        words: words
            .into_iter()
            .map(|w| Word {
                text: w.word,
                punctuated: w.punctuated_word,
                start_ms: secs_to_ms(w.start),
                end_ms: secs_to_ms(w.end),
                confidence: w.confidence.clamp(0.0, 1.0) as f32,
                speaker: w.speaker,
            })
            .collect(),
        speech_final,
        from_finalize,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatewayd_plugin::speech::MAX_MESSAGE_BYTES;

    fn text(s: &str) -> WsMessage {
        WsMessage::Text(s.into())
    }

    /// The research notes' Results example (section 3.1), field for field.
    const RESULTS: &str = r#"{"type":"Results","channel_index":[0,1],"duration":1.02,"start":0.0,
 "is_final":true,"speech_final":true,"from_finalize":false,
 "channel":{"alternatives":[{"transcript":"hello world","confidence":0.98,
   "languages":["en"],
   "words":[{"word":"hello","start":0.08,"end":0.4,"confidence":0.99,"punctuated_word":"Hello","speaker":0}]}]},
 "metadata":{"request_id":"uuid","model_info":{"name":"general-nova-3","version":"x","arch":"nova-3"},"model_uuid":"uuid"}}"#;

    #[test]
    fn a_final_result_carries_text_confidence_language_words_and_flags() {
        let events = events(text(RESULTS), true);
        let [SttEvent::Final(t)] = events.as_slice() else { panic!("{events:?}") };
        assert_eq!(t.text, "hello world");
        assert_eq!(t.confidence, 0.98);
        assert_eq!(t.languages, ["en"]);
        assert_eq!((t.start_ms, t.duration_ms, t.speech_final, t.from_finalize), (0, 1020, true, false));
        assert_eq!(
            t.words,
            [Word {
                text: "hello".into(),
                punctuated: Some("Hello".into()),
                start_ms: 80,
                end_ms: 400,
                confidence: 0.99,
                speaker: Some(0),
            }]
        );
    }

    #[test]
    fn interim_results_are_interim_and_can_be_dropped() {
        let interim =
            RESULTS.replace(r#""is_final":true,"speech_final":true"#, r#""is_final":false,"speech_final":false"#);
        let events_on = events(text(&interim), true);
        let [SttEvent::Interim(t)] = events_on.as_slice() else { panic!("{events_on:?}") };
        assert_eq!((t.text.as_str(), t.speech_final), ("hello world", false));
        assert!(events(text(&interim), false).is_empty());
    }

    #[test]
    fn an_empty_final_answering_finalize_is_kept() {
        let m = r#"{"type":"Results","start":2.5,"duration":0.0,"is_final":true,"speech_final":false,
            "from_finalize":true,"channel":{"alternatives":[{"transcript":"","confidence":0.0,"words":[]}]}}"#;
        let events = events(text(m), true);
        let [SttEvent::Final(t)] = events.as_slice() else { panic!("{events:?}") };
        assert_eq!((t.text.as_str(), t.start_ms, t.from_finalize), ("", 2500, true));
        assert!(t.languages.is_empty() && t.words.is_empty());
        // No alternatives at all: an empty transcript, not an error.
        let m = r#"{"type":"Results","is_final":true,"channel":{"alternatives":[]}}"#;
        assert!(matches!(events_of(m).as_slice(), [SttEvent::Final(t)] if t.text.is_empty()));
    }

    fn events_of(m: &str) -> Vec<SttEvent> {
        events(text(m), true)
    }

    #[test]
    fn speech_started_utterance_end_and_metadata() {
        assert_eq!(
            events_of(r#"{"type":"SpeechStarted","channel":[0,1],"timestamp":0.52}"#),
            [SttEvent::SpeechStarted(520)]
        );
        assert_eq!(
            events_of(r#"{"type":"UtteranceEnd","channel":[0,1],"last_word_end":2.34}"#),
            [SttEvent::UtteranceEnd(2340)]
        );
        let m = r#"{"type":"Metadata","transaction_key":"deprecated","request_id":"r-1","sha256":"ab",
            "created":"2024-08-29T22:37:55.202Z","duration":12.5,"channels":1}"#;
        assert_eq!(events_of(m), [SttEvent::Metadata(SttMetadata { request_id: "r-1".into(), audio_ms: 12500 })]);
    }

    #[test]
    fn vendor_errors_unknown_types_and_bad_messages() {
        let e = events_of(r#"{"type":"Error","description":"bad audio","variant":"x"}"#);
        assert!(
            matches!(e.as_slice(), [SttEvent::Error(e)] if e.kind == ErrorKind::BadRequest && e.message.contains("bad audio"))
        );
        assert!(events_of(r#"{"type":"SomethingNew","x":1}"#).is_empty());
        for bad in [
            "not json",
            "{}",
            r#"{"type":"Results"}"#,
            r#"{"type":"Results","channel":{"alternatives":[{"words":[{}]}]}}"#,
        ] {
            let e = events_of(bad);
            assert!(matches!(e.as_slice(), [SttEvent::Error(e)] if e.kind == ErrorKind::Protocol), "{bad}: {e:?}");
        }
        let e = events(WsMessage::Binary(vec![0; 4]), true);
        assert!(matches!(e.as_slice(), [SttEvent::Error(e)] if e.kind == ErrorKind::Protocol));
    }

    #[test]
    fn an_oversized_message_is_an_error_event() {
        let huge = format!(
            r#"{{"type":"Results","is_final":true,"pad":"{}","channel":{{"alternatives":[]}}}}"#,
            "x".repeat(MAX_MESSAGE_BYTES)
        );
        let e = events_of(&huge);
        assert!(
            matches!(e.as_slice(), [SttEvent::Error(e)] if e.kind == ErrorKind::Protocol && e.message.contains("bound"))
        );
    }

    #[test]
    fn out_of_range_numbers_are_clamped() {
        let m = r#"{"type":"Results","is_final":true,"start":-1,"duration":1e300,
            "channel":{"alternatives":[{"transcript":"x","confidence":7}]}}"#;
        let e = events_of(m);
        let [SttEvent::Final(t)] = e.as_slice() else { panic!("{e:?}") };
        assert_eq!((t.start_ms, t.duration_ms, t.confidence), (0, u32::MAX, 1.0));
    }
}
