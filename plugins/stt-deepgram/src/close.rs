//! How a Deepgram connection ended: done, reconnect or fail.
//!
//! Documented by Deepgram: a handshake failure is an HTTP 4xx/5xx answer to the upgrade; a
//! mid-stream error is a close frame "with a pre-defined status code followed by a UTF-8-encoded
//! payload"; 10 s without audio or KeepAlive closes with NET-0001; after `CloseStream` the
//! server sends its last results and Metadata, then closes.
//!
//! Assumed (from memory of the troubleshooting page, to verify against the live service):
//! NET-0001 comes with code 1011; `1008 DATA-0000` means audio Deepgram cannot decode (fatal:
//! the same audio would fail again); `1011 NET-0000` means no result in time (transient); the
//! refused upgrade's body is `{"err_code":..,"err_msg":..,"request_id":..}`.

use gatewayd_plugin::speech::{CloseAction, Disconnect, ErrorKind, SpeechError, classify_refusal};

/// The vendor's message in a refused upgrade's JSON body (`err_msg`, else `message`, else
/// `description`), with its `err_code` when there is one.
fn vendor_message(body: &serde_json::Value) -> Option<String> {
    let text = ["err_msg", "message", "description"].iter().find_map(|k| body[k].as_str())?;
    Some(match body["err_code"].as_str() {
        Some(code) => format!("{code}: {text}"),
        None => text.to_string(),
    })
}

/// Classify `reason`. `closing`: a `CloseStream` was sent, so any end is the stream's end.
pub fn classify(reason: &Disconnect, closing: bool) -> CloseAction {
    if closing && !matches!(reason, Disconnect::Refused(_)) {
        return CloseAction::Done;
    }
    match reason {
        Disconnect::Refused(failure) => classify_refusal(failure, vendor_message),
        Disconnect::Dropped(why) => {
            CloseAction::Reconnect(SpeechError::new(ErrorKind::Unavailable, format!("connection dropped: {why}")))
        }
        Disconnect::Closed(close) => {
            let what = format!("Deepgram closed the stream: {} {}", close.code, close.reason);
            let error = |kind| SpeechError::new(kind, what.clone());
            if close.reason.contains("NET-0001") {
                // Documented: idle for 10 s. Transient: the host keeps the next one alive.
                CloseAction::Reconnect(error(ErrorKind::Timeout))
            } else if close.reason.contains("DATA-0000") {
                // Assumed: undecodable audio; resending the same audio fails the same way.
                CloseAction::Fail(error(ErrorKind::BadRequest))
            } else {
                match close.code {
                    // Protocol error, unsupported or invalid data, policy, too big, extension:
                    // what we send is wrong, so a new connection would fail the same way.
                    1002 | 1003 | 1007 | 1008 | 1009 | 1010 => CloseAction::Fail(error(ErrorKind::BadRequest)),
                    // A normal close we did not ask for, going away, internal error (NET-0000
                    // included), restart, try again later, and anything else: transient.
                    _ => CloseAction::Reconnect(error(ErrorKind::Unavailable)),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatewayd_plugin::speech::{HttpFailure, WsClose};

    fn closed(code: u16, reason: &str) -> Disconnect {
        Disconnect::Closed(WsClose { code, reason: reason.into() })
    }

    fn refused(status: u16, body: &str) -> Disconnect {
        Disconnect::Refused(HttpFailure {
            status,
            content_type: Some("application/json".into()),
            body: body.as_bytes().to_vec(),
        })
    }

    #[track_caller]
    fn fails(action: CloseAction, kind: ErrorKind, text: &str) {
        match action {
            CloseAction::Fail(e) => assert!(e.kind == kind && e.message.contains(text), "{e:?}"),
            other => panic!("expected fail, got {other:?}"),
        }
    }

    #[track_caller]
    fn reconnects(action: CloseAction, kind: ErrorKind) {
        match action {
            CloseAction::Reconnect(e) => assert_eq!(e.kind, kind, "{e:?}"),
            other => panic!("expected reconnect, got {other:?}"),
        }
    }

    #[test]
    fn refused_upgrades_carry_the_vendors_message() {
        let body = r#"{"err_code":"INVALID_AUTH","err_msg":"Invalid credentials.","request_id":"r"}"#;
        fails(classify(&refused(401, body), false), ErrorKind::Auth, "HTTP 401: INVALID_AUTH: Invalid credentials.");
        fails(classify(&refused(403, r#"{"message":"no access"}"#), false), ErrorKind::Auth, "no access");
        fails(classify(&refused(400, "bad model"), false), ErrorKind::BadRequest, "HTTP 400: bad model");
        fails(classify(&refused(402, ""), false), ErrorKind::Quota, "(no body)");
        reconnects(classify(&refused(429, ""), false), ErrorKind::RateLimited);
        reconnects(classify(&refused(503, "<html>"), false), ErrorKind::Unavailable);
        // A refusal is a refusal even while closing.
        fails(classify(&refused(401, ""), true), ErrorKind::Auth, "401");
    }

    #[test]
    fn mid_stream_closes() {
        reconnects(classify(&closed(1011, "NET-0001"), false), ErrorKind::Timeout);
        fails(classify(&closed(1008, "DATA-0000"), false), ErrorKind::BadRequest, "DATA-0000");
        reconnects(classify(&closed(1011, "NET-0000"), false), ErrorKind::Unavailable);
        fails(classify(&closed(1009, ""), false), ErrorKind::BadRequest, "1009");
        reconnects(classify(&closed(1000, ""), false), ErrorKind::Unavailable);
        reconnects(classify(&closed(1012, ""), false), ErrorKind::Unavailable);
        reconnects(classify(&Disconnect::Dropped("reset".into()), false), ErrorKind::Unavailable);
    }

    #[test]
    fn after_close_stream_every_end_is_done() {
        assert_eq!(classify(&closed(1000, ""), true), CloseAction::Done);
        assert_eq!(classify(&closed(1011, "NET-0000"), true), CloseAction::Done);
        assert_eq!(classify(&Disconnect::Dropped("eof".into()), true), CloseAction::Done);
    }
}
