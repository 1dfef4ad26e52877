//! Text-to-speech provider running CMU Flite 2.2 inside the plugin (in-process plan).
//!
//! Flite's C library, its US English text processing and the CMU lexicon are compiled into the
//! component (`build.rs`); the voices are not. A voice is a clustergen `.flitevox` file (made by
//! `scripts/speech/flite.sh` with the native `flite -voicedump`) read at run time from
//! `data_dir`, the read-only directory the host preopens at `/data`. A voice is loaded once per
//! instance and shared by its sessions (the host keeps warm instances).
//!
//! `synthesize` splits the text into sentences (long ones into phrases, [`text`]); `pull-audio`
//! synthesises the next piece only when the audio of the previous one is all pulled, so the
//! first audio comes after one sentence, not the whole text. Output: PCM s16le, mono, at the
//! voice's rate (16000 Hz for the CMU US voices); the host resamples to the call's format.
//!
//! Configuration (`[plugins.<name>.config]`, every key optional): `data_dir` (`/data`), `voice`
//! (`cmu_us_slt.flitevox`, the voice of sessions that name none). Session options: `voice` a
//! file name in `data_dir` (`.flitevox` may be left off; no path), `speed` 0.25 to 4.0 (Flite's
//! `duration_stretch` is `1/speed`), `language` English only; `model` and `extra` are ignored.
//!
//! Costs in Wasm (wasmtime, fuel on; this class of machine): loading the 2.5 MB slt voice is
//! 3.4e7 fuel, done by the first session's constructor (the host's load budget); a `pull-audio`
//! that synthesises a piece costs about 2.8e8 fuel per second of speech (0.9e9 for a 3 s
//! sentence, at most 1.7e9 for the longest piece, [`text::MAX_PIECE_WEIGHT`]), other pulls
//! almost nothing. At the host's 8e6 fuel per ms of `limits.event_timeout_ms` that is at most
//! about 220 ms; `config/gatewayd.toml` gives 1000. Linear memory stays under 10 MB (peak, any
//! text).
//!
//! Flite's internal errors abort (a trap: the host ends the stream and drops the instance).
//! Voice files are checked by their header before Flite reads them; any text is safe (the
//! tests feed it random text).

pub mod engine;
pub mod text;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use gatewayd_plugin::speech::tts::{InProcessTts, TtsOptions, TtsPlan};
use gatewayd_plugin::speech::{AudioFormat, CloseAction, Disconnect, ErrorKind, SpeechError, TtsProvider};
use serde::Deserialize;

use engine::{EngineError, Voice};

/// The longest text `synthesize` accepts, in bytes.
pub const MAX_TEXT_BYTES: usize = 4096;
/// The longest voice name, in bytes.
pub const MAX_VOICE_BYTES: usize = 128;
/// The speeds accepted (`duration_stretch` 4.0 to 0.25).
pub const SPEED_RANGE: std::ops::RangeInclusive<f32> = 0.25..=4.0;
/// The suffix of voice files.
pub const VOICE_SUFFIX: &str = ".flitevox";

/// The provider's configuration.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The directory of voice files as the plugin sees it (the host's read-only `/data`
    /// preopen). Native tests point it at `build/models/flite`.
    pub data_dir: String,
    /// The voice of sessions that name none: a file name in `data_dir`.
    pub voice: String,
}

impl Default for Config {
    fn default() -> Self {
        Config { data_dir: "/data".into(), voice: "cmu_us_slt.flitevox".into() }
    }
}

impl Config {
    /// Check the values serde cannot.
    pub fn validate(&self) -> Result<(), String> {
        if self.data_dir.is_empty() {
            return Err("data_dir must not be empty".into());
        }
        voice_file_name(&self.voice).map(drop).map_err(|e| format!("voice: {}", e.message))
    }

    /// Whether the default voice file is in `data_dir` and is a voice (by its first bytes; it
    /// is not loaded).
    pub fn check_default_voice(&self) -> Result<(), String> {
        let path = self.voice_path(&self.voice).map_err(|e| e.message)?;
        engine::check_voice_file(&path).map_err(|e| format!("plugin config: voice: {e}"))
    }

    /// The path of the voice file `name` (a bare file name) in `data_dir`.
    pub fn voice_path(&self, name: &str) -> Result<PathBuf, SpeechError> {
        Ok(Path::new(&self.data_dir).join(voice_file_name(name)?))
    }
}

/// `name` as a voice file name: letters, digits, `.`, `_` and `-`, not starting with `.` (so
/// no `/`, no `..`), at most [`MAX_VOICE_BYTES`]; [`VOICE_SUFFIX`] is added when missing.
/// Errors: `bad-request`.
pub fn voice_file_name(name: &str) -> Result<String, SpeechError> {
    let valid = !name.is_empty()
        && name.len() <= MAX_VOICE_BYTES
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !valid {
        return Err(bad_request(format!(
            "voice `{}` is not a voice file name (letters, digits, `.`, `_`, `-`; no path)",
            name.escape_debug()
        )));
    }
    Ok(if name.ends_with(VOICE_SUFFIX) { name.to_string() } else { format!("{name}{VOICE_SUFFIX}") })
}

fn load_config() -> Result<Config, String> {
    let config: Config = gatewayd_plugin::config::load()?;
    config.validate().map(|()| config).map_err(|e| format!("plugin config: {e}"))
}

fn bad_request(message: impl Into<String>) -> SpeechError {
    SpeechError::new(ErrorKind::BadRequest, message)
}

/// One Flite voice on one call.
pub struct Flite {
    config: Result<Config, String>,
    options: TtsOptions,
    /// The session's voice, once resolved.
    voice: Option<Voice>,
    /// Pieces of the current text not synthesised yet.
    pending: VecDeque<String>,
    /// Audio of the piece being pulled, and how much of it was pulled.
    buffer: Vec<i16>,
    pulled: usize,
    /// Pieces synthesised by this session.
    synthesised: usize,
}

impl Flite {
    /// A session with an already loaded configuration (`Err`: why it is invalid).
    pub fn with_config(config: Result<Config, String>, options: TtsOptions) -> Flite {
        Flite { config, options, voice: None, pending: VecDeque::new(), buffer: Vec::new(), pulled: 0, synthesised: 0 }
    }

    fn config(&self) -> Result<&Config, SpeechError> {
        self.config.as_ref().map_err(|e| SpeechError::new(ErrorKind::Config, e.clone()))
    }

    /// The session's voice, loaded (or found loaded) on first use; the options are checked
    /// first. Errors: `config` (bad configuration, or the default voice missing or invalid),
    /// `bad-request` (a bad or unknown voice name, speed or language).
    pub fn voice(&mut self) -> Result<Voice, SpeechError> {
        if let Some(voice) = self.voice {
            return Ok(voice);
        }
        let config = self.config()?;
        self.stretch()?;
        if let Some(language) = &self.options.language {
            let l = language.to_ascii_lowercase();
            if l != "en" && !l.starts_with("en-") {
                return Err(bad_request(format!("language `{language}`: this Flite build speaks English only")));
            }
        }
        let requested = !self.options.voice.is_empty();
        let name = if requested { &self.options.voice } else { &config.voice };
        let path = config.voice_path(name)?;
        let voice = engine::voice(&path).map_err(|e| match e {
            EngineError::VoiceNotFound(_) if requested => bad_request(format!("unknown voice `{name}`: {e}")),
            EngineError::TooManyVoices => bad_request(e.to_string()),
            _ => SpeechError::new(ErrorKind::Config, e.to_string()),
        })?;
        self.voice = Some(voice);
        Ok(voice)
    }

    /// Flite's `duration_stretch` for the session's speed.
    fn stretch(&self) -> Result<f32, SpeechError> {
        match self.options.speed {
            None => Ok(1.0),
            Some(speed) if SPEED_RANGE.contains(&speed) => Ok(1.0 / speed),
            Some(speed) => Err(bad_request(format!("speed {speed} is outside 0.25..=4.0"))),
        }
    }

    /// How many pieces (sentences or phrases) this session has synthesised.
    pub fn pieces_synthesised(&self) -> usize {
        self.synthesised
    }

    /// How many pieces of the current text are still to be synthesised.
    pub fn pieces_pending(&self) -> usize {
        self.pending.len()
    }
}

impl TtsProvider for Flite {
    /// Checks the configuration and that the default voice file is there and is a voice (by its
    /// first bytes). The voice is loaded by the first session's constructor, under the host's
    /// load budget, not here (init runs under the per-call budget).
    fn init() -> Result<(), String> {
        load_config()?.check_default_voice()
    }

    /// Loads the session's voice now, if this instance has not yet (the host gives the
    /// constructor its load budget and keeps instances warm); an error is returned by `plan`.
    /// Flite has one output (PCM at the voice's rate), so `wanted` is not consulted: the host
    /// resamples PCM at any rate.
    fn new(options: TtsOptions, _wanted: Vec<AudioFormat>) -> Self {
        let mut session = Flite::with_config(load_config(), options);
        let _ = session.voice();
        session
    }

    fn plan(&mut self) -> Result<TtsPlan, SpeechError> {
        let voice = self.voice()?;
        Ok(TtsPlan::InProcess(InProcessTts { output: AudioFormat::pcm_mono(voice.sample_rate) }))
    }

    /// Drops any earlier text and queues `text`'s pieces; nothing is synthesised yet.
    /// Errors: `bad-request` (empty, nothing speakable, over [`MAX_TEXT_BYTES`]), and
    /// [`Flite::voice`]'s.
    fn synthesize(&mut self, text: String) -> Result<(), SpeechError> {
        self.voice()?;
        self.pending.clear();
        self.buffer.clear();
        self.pulled = 0;
        if text.len() > MAX_TEXT_BYTES {
            return Err(bad_request(format!("text of {} bytes is over {MAX_TEXT_BYTES}", text.len())));
        }
        let pieces = text::split(&text);
        if pieces.is_empty() {
            return Err(bad_request("nothing to say: the text has no words"));
        }
        self.pending = pieces.into();
        Ok(())
    }

    /// Up to `max_samples` samples of the current piece, synthesising the next piece when the
    /// current one is all pulled; `None` when the text is all spoken (or none was given).
    /// Errors: `bad-request` (`max_samples` 0), `unavailable` (Flite failed on a piece; the
    /// rest of the text is dropped).
    fn pull_audio(&mut self, max_samples: u32) -> Result<Option<Vec<i16>>, SpeechError> {
        if max_samples == 0 {
            return Err(bad_request("pull-audio: max-samples is 0"));
        }
        while self.pulled == self.buffer.len() {
            let Some(piece) = self.pending.pop_front() else {
                self.buffer = Vec::new();
                self.pulled = 0;
                return Ok(None);
            };
            let voice = self.voice()?;
            let stretch = self.stretch()?;
            self.buffer = engine::synthesize(voice, &piece, stretch).map_err(|e| {
                self.pending.clear();
                SpeechError::new(ErrorKind::Unavailable, format!("{e}: `{piece}`"))
            })?;
            self.pulled = 0;
            self.synthesised += 1;
        }
        let n = (max_samples as usize).min(self.buffer.len() - self.pulled);
        let chunk = self.buffer[self.pulled..self.pulled + n].to_vec();
        self.pulled += n;
        Ok(Some(chunk))
    }

    /// No connection in-process: nothing to classify.
    fn on_close(&mut self, _reason: Disconnect) -> CloseAction {
        CloseAction::Done
    }
}

gatewayd_plugin::tts_provider!(Flite);

#[cfg(test)]
mod tests;
