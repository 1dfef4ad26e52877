//! What happens to a call whichever side starts it (webhook, media stream, dashboard): events
//! to its dashboards, ending it, speaking into it.

use crate::db::{self, Call};
use crate::messages::{self, ErrorCode};
use crate::{live, time};
use gatewayd_plugin::{ConnectionId, conn, log, media};
use serde_json::Value;

/// Send an event of a call to its dashboards: the sockets opened for the call (`call:<id>`)
/// and the organisation feeds of its business (`biz:<id>`). A socket is bound to one or the
/// other, never both, so each gets it once.
pub(crate) fn broadcast(call_id: &str, business_id: &str, event: &Value) {
    conn::send_json_to(&messages::call_address(call_id), event);
    conn::send_json_to(&messages::business_address(business_id), event);
}

/// A `telephony_error` about a call, to its dashboards.
pub(crate) fn broadcast_error(call_id: &str, business_id: &str, code: ErrorCode, message: &str) {
    broadcast(call_id, business_id, &messages::telephony_error(call_id, code, message, &time::now_iso()));
}

/// Who ends a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EndedBy {
    /// Its current media stream (`stop`, or the socket closed): transcription is stopped on it.
    Stream(ConnectionId),
    /// Twilio's status callback or an agent: the live stream, if any, is closed (Twilio then
    /// ends the call, `<Connect>` having nothing after it).
    Other,
}

/// End `call` (status `ended`, `end_time`, `duration`), once: only the first end broadcasts
/// `call_status_update` `ended`. The call's live stream is let go either way.
pub(crate) fn end(call: &Call, duration: Option<i64>, by: EndedBy) -> Result<(), String> {
    let now = time::now_ms();
    let changed = db::end_call(call, now, duration)?;
    if changed {
        let event = messages::call_status_update(&call.call_id, "ended", &time::iso_from_ms(now));
        broadcast(&call.call_id, &call.business_id, &event);
        log::info(&format!("twilio: call {} ({}) ended", call.call_id, call.call_sid));
    }
    let live = live::take(&call.call_id);
    match by {
        EndedBy::Stream(id) => {
            if let Err(e) = media::stop_transcribing(id) {
                log::debug(&format!("twilio: stop transcribing call {}: {e}", call.call_id));
            }
        }
        EndedBy::Other => {
            if let Some(live) = live {
                conn::close(live.conn, 1000, "call ended");
            }
        }
    }
    Ok(())
}

/// Why [`speak`] did not queue the text.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum SpeakError {
    /// No media stream carries the call.
    NotLive,
    /// The host refused `say` (its reason).
    Refused(String),
}

impl std::fmt::Display for SpeakError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SpeakError::NotLive => f.write_str("the call is not live: no media stream is connected"),
            SpeakError::Refused(why) => write!(f, "the text could not be spoken: {why}"),
        }
    }
}

/// Say `text` into the call on its current stream with a fresh mark: when the mark comes back
/// (the caller heard it), the stream sends `agent_tts_audio` (`stream::on_mark`).
pub(crate) fn speak(call_id: &str, text: &str) -> Result<(), SpeakError> {
    let (stream, mark) = live::queue(call_id, text).ok_or(SpeakError::NotLive)?;
    media::say_text(stream, text, Some(&mark)).map_err(|e| {
        live::forget(call_id, &mark);
        SpeakError::Refused(e)
    })
}
