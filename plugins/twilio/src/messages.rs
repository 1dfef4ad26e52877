//! The messages the dashboard socket sends (telephony.md section 2 "From Backend to Frontend"
//! and section 6 "Error Handling"), field for field, and the addresses they go to.

use serde_json::{Value, json};

/// `telephony_error.error_code` (telephony.md section 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorCode {
    /// The socket or a message was refused: no identity, a call that is not the agent's, a
    /// malformed or out-of-bounds message, an unknown type, the rate limit, a storage failure.
    ConnectionFailed,
    /// Text could not be spoken: the call is not live (no media stream), `say` refused it, or
    /// the TTS provider failed mid-utterance.
    TtsError,
    /// Speech recognition failed, could not start, or relayed audio was refused.
    SttError,
    /// Reserved by the spec for Twilio failures; the plugin does not send it (Twilio's own
    /// errors reach the daemon, not the plugin).
    #[allow(dead_code)]
    TwilioError,
}

impl ErrorCode {
    /// The spec's spelling.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ErrorCode::ConnectionFailed => "CONNECTION_FAILED",
            ErrorCode::TtsError => "TTS_ERROR",
            ErrorCode::SttError => "STT_ERROR",
            ErrorCode::TwilioError => "TWILIO_ERROR",
        }
    }
}

/// The address every dashboard socket opened for one call is bound to.
pub(crate) fn call_address(call_id: &str) -> String {
    format!("call:{call_id}")
}

/// The address every organisation-feed socket of an agent of `business_id` is bound to.
pub(crate) fn business_address(business_id: &str) -> String {
    format!("biz:{business_id}")
}

/// `call_status_update` (section 2), any status but `incoming`.
pub(crate) fn call_status_update(call_id: &str, status: &str, timestamp: &str) -> Value {
    json!({"type": "call_status_update", "call_id": call_id, "status": status, "timestamp": timestamp})
}

/// `call_status_update` with status `incoming` and the numbers (section 3 "When Phone Call
/// Arrives").
pub(crate) fn call_incoming(call_id: &str, customer_number: &str, organization_number: &str, timestamp: &str) -> Value {
    json!({
        "type": "call_status_update",
        "call_id": call_id,
        "status": "incoming",
        "customer_number": customer_number,
        "organization_number": organization_number,
        "timestamp": timestamp,
    })
}

/// A recognised span of the caller's speech, as `customer_transcript` describes it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TranscriptOut<'a> {
    pub text: &'a str,
    pub is_final: bool,
    pub confidence: f64,
    pub language: Option<&'a str>,
}

/// `customer_transcript` (section 2); `detected_language` only when the provider reported one.
pub(crate) fn customer_transcript(call_id: &str, t: &TranscriptOut<'_>, timestamp: &str) -> Value {
    let mut m = json!({
        "type": "customer_transcript",
        "call_id": call_id,
        "transcript": t.text,
        "is_final": t.is_final,
        "confidence": t.confidence,
        "timestamp": timestamp,
    });
    if let Some(language) = t.language {
        m["detected_language"] = json!(language);
    }
    m
}

/// A provider's confidence (0.0 to 1.0, `f32`) rounded to 4 decimals, so 0.95 reads 0.95 and
/// not 0.949999988079071.
pub(crate) fn round_confidence(c: f32) -> f64 {
    if !c.is_finite() {
        return 0.0;
    }
    (f64::from(c.clamp(0.0, 1.0)) * 10_000.0).round() / 10_000.0
}

/// `agent_tts_audio` (section 2): what the caller heard, base64 mu-law 8 kHz.
pub(crate) fn agent_tts_audio(call_id: &str, audio_base64: &str, message: &str, timestamp: &str) -> Value {
    json!({
        "type": "agent_tts_audio",
        "call_id": call_id,
        "audio_data": audio_base64,
        "message": message,
        "timestamp": timestamp,
    })
}

/// `telephony_connected` (section 2).
pub(crate) fn telephony_connected(call_id: &str) -> Value {
    json!({"type": "telephony_connected", "call_id": call_id, "status": "ready"})
}

/// `pong` (section 2).
pub(crate) fn pong() -> Value {
    json!({"type": "pong"})
}

/// `telephony_error` (section 6).
pub(crate) fn telephony_error(call_id: &str, code: ErrorCode, message: &str, timestamp: &str) -> Value {
    json!({
        "type": "telephony_error",
        "call_id": call_id,
        "error_code": code.as_str(),
        "message": message,
        "timestamp": timestamp,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_carry_exactly_the_spec_fields() {
        let ts = "2024-01-01T12:00:00.000Z";
        assert_eq!(
            call_incoming("c1", "+1234567890", "+0987654321", ts),
            json!({"type": "call_status_update", "call_id": "c1", "status": "incoming",
                   "customer_number": "+1234567890", "organization_number": "+0987654321", "timestamp": ts})
        );
        assert_eq!(
            call_status_update("c1", "answered", ts),
            json!({"type": "call_status_update", "call_id": "c1", "status": "answered", "timestamp": ts})
        );
        let t = TranscriptOut { text: "Hello", is_final: true, confidence: 0.95, language: Some("en") };
        assert_eq!(
            customer_transcript("c1", &t, ts),
            json!({"type": "customer_transcript", "call_id": "c1", "transcript": "Hello", "is_final": true,
                   "confidence": 0.95, "detected_language": "en", "timestamp": ts})
        );
        let t = TranscriptOut { language: None, is_final: false, ..t };
        assert!(customer_transcript("c1", &t, ts).get("detected_language").is_none());
        assert_eq!(
            agent_tts_audio("c1", "AAA=", "Hi", ts),
            json!({"type": "agent_tts_audio", "call_id": "c1", "audio_data": "AAA=", "message": "Hi", "timestamp": ts})
        );
        assert_eq!(
            telephony_connected("c1"),
            json!({"type": "telephony_connected", "call_id": "c1", "status": "ready"})
        );
        assert_eq!(pong(), json!({"type": "pong"}));
        assert_eq!(
            telephony_error("c1", ErrorCode::TtsError, "no", ts),
            json!({"type": "telephony_error", "call_id": "c1", "error_code": "TTS_ERROR", "message": "no", "timestamp": ts})
        );
    }

    #[test]
    fn confidence_is_rounded_and_bounded() {
        assert_eq!(round_confidence(0.95_f32), 0.95);
        assert_eq!(round_confidence(1.5), 1.0);
        assert_eq!(round_confidence(f32::NAN), 0.0);
    }

    #[test]
    fn error_codes_are_spelled_as_the_spec() {
        let all = [ErrorCode::ConnectionFailed, ErrorCode::TtsError, ErrorCode::SttError, ErrorCode::TwilioError];
        let names: Vec<_> = all.iter().map(|c| c.as_str()).collect();
        assert_eq!(names, ["CONNECTION_FAILED", "TTS_ERROR", "STT_ERROR", "TWILIO_ERROR"]);
    }
}
