//! An example custom IVR on the `ivr.md` protocol (docs/writing-an-ivr-plugin.md walks
//! through it): answer, play the greeting; digit 1 and 2 play their own prompts, any other
//! digit plays the greeting again; after a prompt, silence re-prompts once, then hangs up.
//!
//! With `listen = true` it also listens ("say sales or press 1"): the caller's speech is
//! transcribed with the menu's words as keyterms (an offline recogniser turns them into a
//! grammar, so it hears only those words), and a final transcript holding one of them acts as
//! that word's digit; speech with none of them plays the greeting again.
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
    ConnectionId, MediaEvent, Migration, Protocol, SpeechEvent, SqlValue, config, log, media, session, store, timers,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `[plugins.ivr-menu.config]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Config {
    /// Silence after a prompt before re-prompting (then hanging up), ms.
    no_input_ms: u32,
    /// Re-prompts on silence before hanging up.
    max_reprompts: u32,
    /// Listen for `words` too (needs a speech-to-text provider: `[speech] stt`).
    listen: bool,
    /// Spoken words and the digit each stands for (`sales = "1"`), lower case.
    words: BTreeMap<String, char>,
}

impl Default for Config {
    fn default() -> Self {
        let words = [("sales".to_string(), '1'), ("support".to_string(), '2')].into();
        Config { no_input_ms: 5000, max_reprompts: 1, listen: false, words }
    }
}

impl Config {
    /// The digit the first menu word in `heard` stands for.
    fn digit_heard(&self, heard: &str) -> Option<char> {
        heard.split(|c: char| !c.is_alphanumeric()).find_map(|w| self.words.get(&w.to_lowercase()).copied())
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

/// The caller chose `digit` (pressed, or said its word).
fn choose(id: ConnectionId, call: &mut Call, digit: char) {
    call.reprompts = 0;
    session::save(call);
    remember(call, digit);
    match digit {
        '1' => play(id, "option1"),
        '2' => play(id, "option2"),
        _ => play(id, "greeting"),
    }
}

/// Start listening for the menu's words, when the config asks; without a provider the menu
/// goes on with the keypad alone.
fn listen(id: ConnectionId) {
    let c: Config = config::load().unwrap_or_default();
    if !c.listen {
        return;
    }
    let options = media::TranscribeOptions {
        provider: None,
        language: None,
        interim_results: false,
        keyterms: c.words.keys().cloned().collect(),
    };
    if let Err(e) = media::transcribe(id, &options) {
        log::warn(&format!("cannot listen, keypad only: {e}"));
    }
}

struct Menu;

impl Protocol for Menu {
    fn init() -> Result<(), String> {
        let c = config::load::<Config>()?;
        for (word, digit) in &c.words {
            if word.is_empty() || word.len() > 64 || !word.chars().all(|ch| ch.is_alphanumeric() && !ch.is_uppercase())
            {
                return Err(format!("words: `{word}` must be one lower-case word of at most 64 bytes"));
            }
            if !matches!(digit, '0'..='9' | '*' | '#') {
                return Err(format!("words.{word}: `{digit}` is not a DTMF digit"));
            }
        }
        Ok(())
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
                listen(id);
            }
            Ok(ClientEvent::Dtmf { digit }) => choose(id, &mut call, digit),
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

    fn on_speech(id: ConnectionId, event: SpeechEvent) {
        match event {
            SpeechEvent::Transcript(t) if t.is_final && !t.text.trim().is_empty() => {
                let c: Config = config::load().unwrap_or_default();
                let mut call: Call = session::load().unwrap_or_default();
                // Speech with no menu word is answered like a digit with no entry.
                choose(id, &mut call, c.digit_heard(&t.text).unwrap_or('?'));
            }
            SpeechEvent::SttError(f) => log::warn(&format!("listening failed, keypad only: {}: {}", f.code, f.message)),
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
