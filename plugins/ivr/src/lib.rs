//! The inbound-call IVR (`shared/specs/ivr.md`), the spec's documented flow: answer at once,
//! send DTMF "1" (200 ms) two seconds later, echo the caller's audio, hang up ten seconds
//! after the DTMF. Every delay is configurable (`[plugins.ivr.config]`).
//!
//! The audio path is the host's: after `media.answer`, the caller's binary frames go to the
//! media engine, which echoes them back paced at one frame per 20 ms. This plugin sees only
//! the JSON events, its timers and media events. The wire format and the error answers are in
//! `gatewayd-ivr-protocol`, shared with custom IVR plugins.

use gatewayd_ivr_protocol::{self as protocol, ClientEvent, ProtocolError};
use gatewayd_plugin::{ConnectionId, MediaEvent, Protocol, config, log, media, session, timers};
use serde::{Deserialize, Serialize};

/// `[plugins.ivr.config]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Delay from `answer` to the server's `dtmf` event, ms.
    pub dtmf_delay_ms: u32,
    /// The digit the server sends (0-9, *, #).
    pub dtmf_digit: char,
    /// Its tone duration, ms (at most 1000).
    pub dtmf_duration_ms: u32,
    /// Delay from the `dtmf` event to the server's `hangup`, ms.
    pub hangup_after_ms: u32,
    /// Echo the caller's audio from `answer` on.
    pub echo: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config { dtmf_delay_ms: 2000, dtmf_digit: '1', dtmf_duration_ms: 200, hangup_after_ms: 10_000, echo: true }
    }
}

/// What the plugin remembers about a call (host-held session state).
#[derive(Serialize, Deserialize, Default)]
struct Call {
    in_call: bool,
    caller_id: String,
    did_number: String,
    session_id: String,
}

struct Ivr;

fn settings() -> Config {
    config::load().unwrap_or_default()
}

impl Protocol for Ivr {
    fn init() -> Result<(), String> {
        let c: Config = config::load()?;
        if c.dtmf_duration_ms > 1000 || !(c.dtmf_digit.is_ascii_digit() || matches!(c.dtmf_digit, '*' | '#')) {
            return Err("dtmf_digit must be 0-9, * or # and dtmf_duration_ms at most 1000".into());
        }
        Ok(())
    }

    fn on_text(id: ConnectionId, text: String) {
        let mut call: Call = session::load().unwrap_or_default();
        match protocol::parse(&text, call.in_call) {
            Err(e) => protocol::send_error(id, &e),
            Ok(ClientEvent::IncomingCall { caller_id, did_number, session_id }) => {
                if let Err(e) = media::answer(id) {
                    protocol::send_error(id, &ProtocolError::new("media_unavailable", e));
                    return;
                }
                log::info(&format!("call {session_id} from {caller_id} to {did_number}: answered"));
                call = Call { in_call: true, caller_id, did_number, session_id };
                session::save(&call);
                protocol::send_answer(id);
                let c = settings();
                if c.echo {
                    let _ = media::echo(id, true);
                }
                timers::set(&protocol::timer_key(id, "dtmf"), c.dtmf_delay_ms, "", Some(id));
            }
            Ok(ClientEvent::Dtmf { digit }) => log::info(&format!("call {}: caller pressed {digit}", call.session_id)),
            Ok(ClientEvent::Hangup) => {
                log::info(&format!("call {}: caller hung up", call.session_id));
                let _ = media::hangup(id);
                gatewayd_plugin::conn::close(id, 1000, "caller hung up");
            }
        }
    }

    fn on_binary(id: ConnectionId, _data: Vec<u8>) {
        // Frames reach the plugin only while no media session runs: before the answer.
        protocol::send_error(id, &protocol::audio_before_call());
    }

    fn on_media(id: ConnectionId, event: MediaEvent) {
        if let MediaEvent::FrameRejected(reason) = event {
            protocol::send_error(id, &protocol::bad_frame(&reason));
        }
    }

    fn on_timer(key: String, _payload: String) {
        let Some((id, what)) = protocol::parse_timer_key(&key) else { return };
        let c = settings();
        match what {
            "dtmf" => {
                protocol::send_dtmf(id, c.dtmf_digit, c.dtmf_duration_ms);
                timers::set(&protocol::timer_key(id, "hangup"), c.hangup_after_ms, "", Some(id));
            }
            "hangup" => protocol::send_hangup_and_close(id),
            _ => {}
        }
    }

    fn on_close(id: ConnectionId, _code: u16) {
        timers::cancel(&protocol::timer_key(id, "dtmf"));
        timers::cancel(&protocol::timer_key(id, "hangup"));
    }
}

gatewayd_plugin::protocol_plugin!(Ivr);
