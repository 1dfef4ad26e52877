//! An example custom IVR on the `ivr.md` protocol (docs/writing-an-ivr-plugin.md walks
//! through it): answer, play the greeting; digit 1 and 2 play their own prompts, any other
//! digit plays the greeting again; after a prompt, silence re-prompts once, then hangs up.
//!
//! Prompts are audio files named in the config (`[plugins.ivr-menu.media.files]`); the host
//! plays them paced in real time and reports the `prompt-end` mark once a prompt has actually
//! been sent, which is when the silence timer starts.
//!
//! Its own table, `ivr_menu_choices` (`migrations/<backend>/0001_choices.sql`, applied by the
//! daemon when it loads the plugin), keeps every digit a caller chose, with the `store =
//! "read-write"` capability; without it the menu works the same and keeps nothing.

use gatewayd_ivr_protocol::{self as protocol, ClientEvent, ProtocolError};
use gatewayd_plugin::{
    ConnectionId, MediaEvent, Migration, Protocol, SqlValue, config, log, media, session, store, timers,
};
use serde::{Deserialize, Serialize};

/// `[plugins.ivr-menu.config]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Config {
    /// Silence after a prompt before re-prompting (then hanging up), ms.
    no_input_ms: u32,
    /// Re-prompts on silence before hanging up.
    max_reprompts: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config { no_input_ms: 5000, max_reprompts: 1 }
    }
}

/// Host-held call state.
#[derive(Serialize, Deserialize, Default)]
struct Call {
    in_call: bool,
    /// The `incoming_call`'s `sessionId`.
    session_id: String,
    /// Silent re-prompts so far.
    reprompts: u32,
}

/// Mark queued after every prompt.
const PROMPT_END: &str = "prompt-end";

/// Replace whatever is playing with prompt `name` (file name from the config).
fn play(id: ConnectionId, name: &str) {
    timers::cancel(&protocol::timer_key(id, "no-input"));
    let _ = media::clear(id);
    if let Err(e) = media::play_file(id, name).and_then(|_| media::mark(id, PROMPT_END)) {
        protocol::send_error(id, &ProtocolError::new("media_unavailable", e));
    }
}

/// Keep a caller's choice in the plugin's own table (when it has the `store` capability).
fn remember(call: &Call, digit: char) {
    let sql = "INSERT INTO ivr_menu_choices (session_id, digit, chosen_at_ms) VALUES ($1, $2, $3)";
    let now = gatewayd_plugin::rate::now_ms() as i64;
    let params = [SqlValue::Text(call.session_id.clone()), SqlValue::Text(digit.to_string()), SqlValue::Integer(now)];
    if let Err(e) = store::execute(sql, &params) {
        log::debug(&format!("choice not kept: {e}"));
    }
}

struct Menu;

impl Protocol for Menu {
    fn init() -> Result<(), String> {
        config::load::<Config>().map(|_| ())
    }

    /// The plugin's own table (`migrations/<backend>/`).
    fn migrations(backend: &str) -> Vec<Migration> {
        gatewayd_plugin::migrations!(backend, "../migrations", [1 => "0001_choices"])
    }

    fn on_text(id: ConnectionId, text: String) {
        let mut call: Call = session::load().unwrap_or_default();
        match protocol::parse(&text, call.in_call) {
            Err(e) => protocol::send_error(id, &e),
            Ok(ClientEvent::IncomingCall { session_id, .. }) => {
                if let Err(e) = media::answer(id) {
                    return protocol::send_error(id, &ProtocolError::new("media_unavailable", e));
                }
                call.in_call = true;
                call.session_id = session_id;
                session::save(&call);
                protocol::send_answer(id);
                play(id, "greeting");
            }
            Ok(ClientEvent::Dtmf { digit }) => {
                call.reprompts = 0;
                session::save(&call);
                remember(&call, digit);
                match digit {
                    '1' => play(id, "option1"),
                    '2' => play(id, "option2"),
                    _ => play(id, "greeting"),
                }
            }
            Ok(ClientEvent::Hangup) => {
                let _ = media::hangup(id);
                gatewayd_plugin::conn::close(id, 1000, "caller hung up");
            }
        }
    }

    fn on_binary(id: ConnectionId, _data: Vec<u8>) {
        protocol::send_error(id, &protocol::audio_before_call());
    }

    fn on_media(id: ConnectionId, event: MediaEvent) {
        match event {
            MediaEvent::Mark(name) if name == PROMPT_END => {
                let c: Config = config::load().unwrap_or_default();
                timers::set(&protocol::timer_key(id, "no-input"), c.no_input_ms, "", Some(id));
            }
            MediaEvent::FrameRejected(reason) => protocol::send_error(id, &protocol::bad_frame(&reason)),
            _ => {}
        }
    }

    fn on_timer(key: String, _payload: String) {
        let Some((id, "no-input")) = protocol::parse_timer_key(&key) else { return };
        let c: Config = config::load().unwrap_or_default();
        let mut call: Call = session::load().unwrap_or_default();
        if call.reprompts < c.max_reprompts {
            call.reprompts += 1;
            session::save(&call);
            play(id, "greeting");
        } else {
            protocol::send_hangup_and_close(id);
        }
    }

    fn on_close(id: ConnectionId, _code: u16) {
        timers::cancel(&protocol::timer_key(id, "no-input"));
    }
}

gatewayd_plugin::protocol_plugin!(Menu);
