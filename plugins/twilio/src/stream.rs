//! The Twilio Media Streams socket (telephony.md section 3 "When Call is Answered", "When
//! Customer Speaks"; brief, Plugin behaviour 2-4). The host takes `media` and `mark` messages
//! itself (audio to the media engine; a played mark becomes [`on_mark`]); `connected`, `start`,
//! `dtmf`, `stop` and anything else reach [`on_text`] as Twilio sent them.
//!
//! - `start`: `start.customParameters.call_id` must name a call whose `call_sid` is
//!   `start.callSid`, not ended; otherwise the socket is closed with 1008. A second stream of a
//!   call replaces the first (closed with 1000 "replaced by a new stream"; its close does not
//!   end the call). The first stream of a call moves it `incoming` -> `answered`
//!   (`call_status_update`), starts transcription (interim results on) and speaks the
//!   `welcome_message` (stored as an agent `tts_audio` message); a replacing stream only
//!   restarts transcription.
//! - Transcripts: `customer_transcript` to the call's dashboards (empty ones are dropped);
//!   finals are stored (`transcript`, `customer`). Barge-in: `live::barge_in`.
//! - A mark coming back: `agent_tts_audio` with what the caller heard (`media::said_audio`).
//! - `dtmf`: stored (`dtmf`, `customer`, the digit) and logged.
//! - `stop`, or the socket closing while it still carries the call: the call ends; closing
//!   without `stop` is first reported as `telephony_error` `TWILIO_ERROR`.

use crate::calls::{self, EndedBy};
use crate::config::Config;
use crate::db::{self, NewMessage};
use crate::messages::{self, ErrorCode, TranscriptOut};
use crate::{live, time};
use base64::Engine as _;
use gatewayd_plugin::{ConnectionId, MediaEvent, SpeechEvent, Transcript, conn, log, media};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// What a stream connection carries, kept in its session.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct StreamState {
    /// Set by an accepted `start`.
    pub call: Option<StreamCall>,
}

/// The call a stream carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct StreamCall {
    pub call_id: String,
    pub business_id: String,
    pub stream_sid: String,
    /// Twilio sent `stop`: the call was ended then, its close changes nothing more.
    #[serde(default)]
    pub stopped: bool,
}

/// A Twilio Media Streams message that reaches the plugin.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum TwilioEvent {
    Connected,
    Start {
        /// `start.customParameters.call_id` (the TwiML's `<Parameter>`).
        call_id: Option<String>,
        call_sid: String,
        stream_sid: String,
    },
    Dtmf {
        digit: String,
    },
    Stop,
    /// Any other `event` (the host keeps `media` and `mark`).
    Other(String),
}

/// Decode one Twilio message. Err: why it is not one.
pub(crate) fn parse(text: &str) -> Result<TwilioEvent, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let s = |v: &Value, path: &[&str]| -> Option<String> {
        path.iter().try_fold(v, |v, k| v.get(k)).and_then(Value::as_str).map(str::to_string)
    };
    let event = s(&v, &["event"]).ok_or("no `event`")?;
    Ok(match event.as_str() {
        "connected" => TwilioEvent::Connected,
        "start" => TwilioEvent::Start {
            call_id: s(&v, &["start", "customParameters", "call_id"]),
            call_sid: s(&v, &["start", "callSid"]).ok_or("`start` without `start.callSid`")?,
            stream_sid: s(&v, &["start", "streamSid"]).or_else(|| s(&v, &["streamSid"])).unwrap_or_default(),
        },
        "dtmf" => TwilioEvent::Dtmf { digit: s(&v, &["dtmf", "digit"]).ok_or("`dtmf` without `dtmf.digit`")? },
        "stop" => TwilioEvent::Stop,
        _ => TwilioEvent::Other(event),
    })
}

/// A prefix of client text for a log line.
fn excerpt(s: &str) -> &str {
    db::clip(s, 200)
}

/// A text message on a stream connection.
pub(crate) fn on_text(id: ConnectionId, state: StreamState, text: &str) -> StreamState {
    match parse(text) {
        Err(e) => {
            log::warn(&format!("twilio: stream {id}: ignored a message ({e}): {}", excerpt(text)));
            state
        }
        Ok(TwilioEvent::Connected) => state,
        Ok(TwilioEvent::Start { call_id, call_sid, stream_sid }) => start(id, state, call_id, &call_sid, &stream_sid),
        Ok(TwilioEvent::Dtmf { digit }) => {
            dtmf(&state, &digit);
            state
        }
        Ok(TwilioEvent::Stop) => match state.call {
            Some(call) if !call.stopped => {
                stream_gone(id, &call, Gone::Stopped);
                // Still the call's: the last transcripts, asked for by stop-transcribing, follow.
                StreamState { call: Some(StreamCall { stopped: true, ..call }) }
            }
            _ => state,
        },
        Ok(TwilioEvent::Other(event)) => {
            log::debug(&format!("twilio: stream {id}: ignored event `{}`", excerpt(&event)));
            state
        }
    }
}

fn start(
    id: ConnectionId,
    state: StreamState,
    call_id: Option<String>,
    call_sid: &str,
    stream_sid: &str,
) -> StreamState {
    if let Some(current) = &state.call {
        log::warn(&format!("twilio: stream {id}: a second `start` ignored (it carries call {})", current.call_id));
        return state;
    }
    let config = Config::load().unwrap_or_default();
    let refuse = |code: u16, reason: &str, detail: String| {
        log::warn(&format!("twilio: stream {id} refused: {detail}"));
        conn::close(id, code, reason);
        state.clone()
    };
    let call_id = call_id.unwrap_or_default();
    if call_id.is_empty() || call_id.len() > config.max_id_bytes {
        return refuse(1008, "unknown call", format!("`start` without a valid call_id parameter (CallSid {call_sid})"));
    }
    let call = match db::call(&call_id) {
        Ok(Some(c)) if c.call_sid == call_sid => c,
        Ok(_) => return refuse(1008, "unknown call", format!("no call {call_id} with CallSid {}", excerpt(call_sid))),
        Err(e) => return refuse(1011, "storage error", format!("reading call {call_id}: {e}")),
    };
    if call.ended() {
        return refuse(1008, "call has ended", format!("call {call_id} has ended"));
    }
    let state = StreamState {
        call: Some(StreamCall {
            call_id: call.call_id.clone(),
            business_id: call.business_id.clone(),
            stream_sid: stream_sid.to_string(),
            stopped: false,
        }),
    };
    if let Some(previous) = live::attach(&call.call_id, id, stream_sid) {
        log::info(&format!("twilio: call {call_id}: stream {id} replaces stream {previous}"));
        conn::close(previous, 1000, "replaced by a new stream");
    }
    if let Err(e) = media::answer(id) {
        log::warn(&format!("twilio: call {call_id}: answer: {e}"));
    }
    let now = time::now_iso();
    let first = match db::mark_answered(&call_id, &now) {
        Ok(first) => first,
        Err(e) => {
            log::error(&format!("twilio: call {call_id}: recording the answer failed: {e}"));
            false
        }
    };
    if first {
        calls::broadcast(&call_id, &call.business_id, &messages::call_status_update(&call_id, "answered", &now));
    }
    if config.echo
        && let Err(e) = media::echo(id, true)
    {
        log::warn(&format!("twilio: call {call_id}: echo: {e}"));
    }
    let options = media::TranscribeOptions {
        provider: None,
        language: config.language.clone(),
        interim_results: true,
        keyterms: config.keyterms.clone(),
    };
    if config.transcribe
        && let Err(e) = media::transcribe(id, &options)
    {
        log::warn(&format!("twilio: call {call_id}: transcription did not start: {e}"));
        let message = format!("transcription could not start: {e}");
        calls::broadcast_error(&call_id, &call.business_id, ErrorCode::SttError, &message);
    }
    let welcome = config.welcome_message.trim();
    if first && !welcome.is_empty() {
        speak_welcome(&call_id, &call.business_id, welcome);
    }
    state
}

fn speak_welcome(call_id: &str, business_id: &str, text: &str) {
    if let Err(e) = calls::speak(call_id, text) {
        log::warn(&format!("twilio: call {call_id}: the welcome message was not spoken: {e}"));
        let message = format!("the welcome message was not spoken: {e}");
        return calls::broadcast_error(call_id, business_id, ErrorCode::TtsError, &message);
    }
    let message = NewMessage {
        call_id,
        message_type: "tts_audio",
        content: text,
        sender_type: "agent",
        sender_name: None,
        confidence: None,
        detected_language: None,
        is_final: true,
        metadata: Some(json!({"source": "welcome_message"})),
        at: &time::now_iso(),
    };
    if let Err(e) = db::insert_message(&message) {
        log::error(&format!("twilio: call {call_id}: storing the welcome message failed: {e}"));
    }
}

fn dtmf(state: &StreamState, digit: &str) {
    let Some(call) = &state.call else {
        return log::warn("twilio: a `dtmf` before `start` ignored");
    };
    let digit = db::clip(digit.trim(), 8);
    log::info(&format!("twilio: call {}: caller pressed {digit}", call.call_id));
    let message = NewMessage {
        call_id: &call.call_id,
        message_type: "dtmf",
        content: digit,
        sender_type: "customer",
        sender_name: None,
        confidence: None,
        detected_language: None,
        is_final: true,
        metadata: None,
        at: &time::now_iso(),
    };
    if let Err(e) = db::insert_message(&message) {
        log::error(&format!("twilio: call {}: storing a DTMF digit failed: {e}", call.call_id));
    }
}

/// How a stream went away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gone {
    /// Twilio sent `stop`.
    Stopped,
    /// The socket closed without `stop`, with this close code (1006: no close frame).
    Closed(u16),
}

/// Stream `id` stopped (`stop`) or closed: the call ends if the stream still carries it. A
/// stream lost without `stop` while it carried the call (Twilio always sends `stop` first when
/// a call ends) is reported to the call's dashboards as `TWILIO_ERROR` before the call ends.
fn stream_gone(id: ConnectionId, call: &StreamCall, how: Gone) {
    let detached = live::detach(&call.call_id, id);
    if detached == live::Detached::Replaced {
        return log::debug(&format!("twilio: call {}: replaced stream {id} {how:?}", call.call_id));
    }
    if let (live::Detached::Current, Gone::Closed(code)) = (detached, how) {
        log::warn(&format!("twilio: call {}: the Media Stream closed without `stop` (code {code})", call.call_id));
        let message = format!(
            "the Media Stream closed without Twilio's stop (close code {code}): the call's audio is lost and the call has ended"
        );
        calls::broadcast_error(&call.call_id, &call.business_id, ErrorCode::TwilioError, &message);
    }
    match db::call(&call.call_id) {
        Ok(Some(row)) => {
            if let Err(e) = calls::end(&row, None, EndedBy::Stream(id)) {
                log::error(&format!("twilio: call {}: ending it failed: {e}", call.call_id));
            }
        }
        Ok(None) => log::warn(&format!("twilio: call {} vanished", call.call_id)),
        Err(e) => log::error(&format!("twilio: call {}: reading it failed: {e}", call.call_id)),
    }
}

/// The stream connection closed with `code` (without `stop`, or after it).
pub(crate) fn on_close(id: ConnectionId, code: u16, state: &StreamState) {
    if let Some(call) = state.call.as_ref().filter(|c| !c.stopped) {
        stream_gone(id, call, Gone::Closed(code));
    }
}

/// A media event of the stream.
pub(crate) fn on_media(id: ConnectionId, state: &StreamState, event: MediaEvent) {
    let Some(call) = &state.call else { return };
    match event {
        MediaEvent::Mark(mark) => on_mark(id, call, &mark),
        MediaEvent::FrameRejected(why) => log::debug(&format!("twilio: call {}: frame rejected: {why}", call.call_id)),
        MediaEvent::PlayFinished => {}
    }
}

/// An utterance's mark came back (Twilio played it): `agent_tts_audio` with the audio the
/// caller heard (empty `audio_data` when the host kept none: `keep_said_audio` off).
fn on_mark(id: ConnectionId, call: &StreamCall, mark: &str) {
    let Some(utterance) = live::played(&call.call_id, id, mark) else {
        return log::debug(&format!("twilio: call {}: mark {} is no utterance of ours", call.call_id, excerpt(mark)));
    };
    let audio = media::said_audio(id, mark).unwrap_or_else(|| {
        log::debug(&format!("twilio: call {}: no audio kept for {mark} (keep_said_audio?)", call.call_id));
        Vec::new()
    });
    let audio = base64::engine::general_purpose::STANDARD.encode(audio);
    let event = messages::agent_tts_audio(&call.call_id, &audio, &utterance.text, &time::now_iso());
    calls::broadcast(&call.call_id, &call.business_id, &event);
}

/// A speech event of the stream's call.
pub(crate) fn on_speech(id: ConnectionId, state: &StreamState, event: SpeechEvent) {
    let Some(call) = &state.call else { return };
    match event {
        SpeechEvent::Transcript(t) => on_transcript(id, call, &t),
        SpeechEvent::SttError(f) => {
            log::warn(&format!("twilio: call {}: STT failed: {} {}", call.call_id, f.code, f.message));
            let message = format!("speech recognition failed ({}): {}", f.code, f.message);
            calls::broadcast_error(&call.call_id, &call.business_id, ErrorCode::SttError, &message);
        }
        SpeechEvent::TtsError(f) => {
            log::warn(&format!("twilio: call {}: TTS failed: {} {}", call.call_id, f.code, f.message));
            let message = format!("speech synthesis failed ({}): {}", f.code, f.message);
            calls::broadcast_error(&call.call_id, &call.business_id, ErrorCode::TtsError, &message);
        }
        SpeechEvent::SpeechStarted | SpeechEvent::UtteranceEnd | SpeechEvent::Stopped => {}
    }
}

fn on_transcript(id: ConnectionId, call: &StreamCall, t: &Transcript) {
    let text = t.text.trim();
    if text.is_empty() {
        return;
    }
    let config = Config::load().unwrap_or_default();
    if config.barge_in_min_ms > 0 {
        let min = config.barge_in_min_ms;
        let dropped = live::barge(&call.call_id, id, |playing| live::barge_in(playing, text, t.duration_ms, min));
        if !dropped.is_empty() {
            log::info(&format!("twilio: call {}: barge-in, {} utterance(s) cleared", call.call_id, dropped.len()));
            if let Err(e) = media::clear(id) {
                log::warn(&format!("twilio: call {}: clear: {e}", call.call_id));
            }
        }
    }
    let now = time::now_iso();
    let out = TranscriptOut {
        text,
        is_final: t.is_final,
        confidence: messages::round_confidence(t.confidence),
        language: t.language.as_deref().filter(|l| !l.is_empty()),
    };
    if t.is_final {
        let message = NewMessage {
            call_id: &call.call_id,
            message_type: "transcript",
            content: text,
            sender_type: "customer",
            sender_name: None,
            confidence: Some(out.confidence),
            detected_language: out.language,
            is_final: true,
            metadata: Some(
                json!({"start_ms": t.start_ms, "duration_ms": t.duration_ms, "speech_final": t.speech_final}),
            ),
            at: &now,
        };
        if let Err(e) = db::insert_message(&message) {
            log::error(&format!("twilio: call {}: storing a transcript failed: {e}", call.call_id));
        }
    }
    calls::broadcast(&call.call_id, &call.business_id, &messages::customer_transcript(&call.call_id, &out, &now));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twilio_messages_decode() {
        let start = r#"{"event":"start","sequenceNumber":"1","streamSid":"MZ1",
            "start":{"accountSid":"AC1","streamSid":"MZ1","callSid":"CA1","tracks":["inbound"],
            "customParameters":{"call_id":"c-1"},
            "mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}}}"#;
        assert_eq!(
            parse(start),
            Ok(TwilioEvent::Start { call_id: Some("c-1".into()), call_sid: "CA1".into(), stream_sid: "MZ1".into() })
        );
        let dtmf =
            r#"{"event":"dtmf","sequenceNumber":"5","streamSid":"MZ1","dtmf":{"track":"inbound_track","digit":"1"}}"#;
        assert_eq!(parse(dtmf), Ok(TwilioEvent::Dtmf { digit: "1".into() }));
        assert_eq!(parse(r#"{"event":"connected","protocol":"Call","version":"1.0.0"}"#), Ok(TwilioEvent::Connected));
        assert_eq!(parse(r#"{"event":"stop","stop":{"callSid":"CA1"}}"#), Ok(TwilioEvent::Stop));
        assert_eq!(parse(r#"{"event":"media"}"#), Ok(TwilioEvent::Other("media".into())));
    }

    #[test]
    fn a_start_without_parameters_has_no_call_id_and_junk_is_refused() {
        let start = r#"{"event":"start","start":{"callSid":"CA1","streamSid":"MZ1"}}"#;
        assert!(matches!(parse(start), Ok(TwilioEvent::Start { call_id: None, .. })));
        assert!(parse(r#"{"event":"start","start":{}}"#).is_err());
        assert!(parse(r#"{"event":"dtmf"}"#).is_err());
        assert!(parse("[1,2]").is_err());
        assert!(parse("not json").is_err());
    }
}
