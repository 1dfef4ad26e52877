//! Speech-to-text provider running PocketSphinx 5.1.1 (BSD-2-Clause, compiled from C into this
//! component) in-process: the host pushes 16 kHz PCM, the plugin endpoints and decodes it.
//!
//! - Models: read from `data_dir` (`/data`, the read-only directory the host grants with
//!   `[plugins.<name>.capabilities] data_dir`): the acoustic model directory `hmm`, the n-gram
//!   LM `lm`, the dictionary `dict` ([`config::Config`]). `scripts/speech/pocketsphinx.sh`
//!   installs the US English model.
//! - One decoder per instance ([`engine`]), loaded by the first session's constructor (the
//!   host's warm-up session) and reused by every later session: a session only chooses its
//!   search. A model that does not load makes `plan` fail with `config`.
//! - Per stream ([`stream`]): PocketSphinx's VAD endpointer finds speech (`speech-started`),
//!   each speech segment is one decoder utterance (`interim` results once per batch while the
//!   text changes: no words, confidence 0), and its end gives a `final` (posterior confidence,
//!   words with times and confidences; fillers and `(2)` pronunciation marks removed) then
//!   `utterance-end`. `finalize` and `close` end the utterance at once (`from-finalize`; an
//!   empty final when nothing was heard). Each `plan` starts a new stream (times from 0) and
//!   restarts cepstral mean normalisation. The decoder keeps other state from one utterance to
//!   the next (its noise estimate among it), so a stream decodes exactly as it would alone only
//!   in a fresh instance: the host gives each stream an instance of its own.
//! - Errors are `speech-error`s, never panics: bad options and grammars `bad-request`, a
//!   missing 16 kHz PCM offer or a non-English language `unsupported`, a model that does not
//!   load `config`, a second stream speaking while another is mid-utterance in the same
//!   instance `unavailable` (the host runs one stream per instance).
//! - Per stream search ([`grammar`]): `extra` `grammar=<JSGF>`, else a grammar of the
//!   `keyterms` as alternatives (an IVR menu: "sales" or "support"), else the n-gram LM. A
//!   grammar word missing from the dictionary is a `bad-request` from `plan` naming it.
//!
//! Options: `language` must be English (`en`, `en-*`) or absent; `model` is ignored (the
//! configured model is the only one); `endpointing-ms` sets the endpointer window (clamped to
//! 90..=3000 ms); `utterance-end-ms` is not used (an utterance ends with its final).

pub mod config;
pub mod engine;
mod ffi;
pub mod grammar;
mod stream;

use config::Config;
use gatewayd_plugin::speech::stt::{CommandOutput, InProcessStt, SttCommand, SttEvent, SttOptions, SttPlan};
use gatewayd_plugin::speech::{AudioFormat, CloseAction, Disconnect, ErrorKind, SpeechError, SttProvider, WsMessage};
use grammar::Search;
use stream::Stream;

/// The format `push-audio` takes: the en-us model is 16 kHz only.
pub const FORMAT: AudioFormat = AudioFormat::pcm_mono(engine::SAMPLE_RATE);
/// Audio per `push-audio` call, ms.
pub const BATCH_MS: u32 = 200;
/// The largest batch `push-audio` takes: 10 s of samples.
pub const MAX_BATCH_SAMPLES: usize = 10 * engine::SAMPLE_RATE as usize;
/// At most this many `extra` parameters.
pub const MAX_EXTRA: usize = 8;

/// One recognition stream.
pub struct PocketSphinx {
    config: Result<Config, String>,
    options: SttOptions,
    offered: Vec<AudioFormat>,
    session: u64,
    /// The decoding state, from `plan` (or the first audio) on.
    stream: Option<Stream>,
    /// A `close` command ended the stream.
    closed: bool,
}

fn load_config() -> Result<Config, String> {
    let config: Config = gatewayd_plugin::config::load()?;
    config.validate().map(|()| config).map_err(|e| format!("plugin config: {e}"))
}

fn bad_request(message: String) -> SpeechError {
    SpeechError::new(ErrorKind::BadRequest, message)
}

impl PocketSphinx {
    /// A stream with an already loaded configuration (`Err`: why it is invalid). Loads the
    /// models unless this instance has them (errors are kept for [`SttProvider::plan`]).
    pub fn with_config(config: Result<Config, String>, options: SttOptions, offered: Vec<AudioFormat>) -> PocketSphinx {
        if let Ok(config) = &config {
            // The host's warm-up session exists for this; a failure is reported by `plan`.
            let _ = engine::with_engine(config, |_| ());
        }
        PocketSphinx { config, options, offered, session: engine::session_id(), stream: None, closed: false }
    }

    fn config(&self) -> Result<&Config, SpeechError> {
        self.config.as_ref().map_err(|e| SpeechError::new(ErrorKind::Config, e.clone()))
    }

    /// The search the options ask for; `has_word` checks keyterm words. Errors: `bad_request`.
    fn search(&self, has_word: impl FnMut(&str) -> bool) -> Result<Search, SpeechError> {
        if self.options.extra.len() > MAX_EXTRA {
            return Err(bad_request(format!("at most {MAX_EXTRA} extra parameters")));
        }
        let mut grammar = None;
        for (name, value) in &self.options.extra {
            match name.as_str() {
                "grammar" if grammar.is_none() => grammar = Some(value),
                "grammar" => return Err(bad_request("more than one grammar".into())),
                other => return Err(bad_request(format!("unknown extra parameter `{other}` (known: grammar)"))),
            }
        }
        if let Some(jsgf) = grammar {
            grammar::check_grammar(jsgf)?;
            Ok(Search::Grammar(jsgf.clone()))
        } else if !self.options.keyterms.is_empty() {
            grammar::keyterms_grammar(&self.options.keyterms, has_word).map(Search::Grammar)
        } else {
            Ok(Search::Lm)
        }
    }

    /// A fresh stream: options checked, models loaded, the search compiled.
    fn open(&mut self) -> Result<Stream, SpeechError> {
        let config = self.config()?.clone();
        if !self.offered.contains(&FORMAT) {
            return Err(SpeechError::new(
                ErrorKind::Unsupported,
                "PocketSphinx needs 16 kHz mono PCM (the en-us model is 16 kHz only) and the host does not offer it",
            ));
        }
        if let Some(language) = &self.options.language {
            let lower = language.to_ascii_lowercase();
            if lower != "en" && !lower.starts_with("en-") {
                return Err(SpeechError::new(
                    ErrorKind::Unsupported,
                    format!("language `{language}`: the model is US English"),
                ));
            }
        }
        let window_ms = match self.options.endpointing_ms {
            Some(ms) if ms > 0 => ms.clamp(90, 3000),
            _ => config.endpoint_window_ms,
        };
        let session = self.session;
        let search = engine::with_engine(&config, |engine| {
            let search = self.search(|w| engine.has_word(w))?;
            engine.use_search(session, &search)?;
            engine.reset_cmn()?;
            Ok::<_, SpeechError>(search)
        })??;
        Stream::new(&config, session, search, self.options.interim_results, window_ms)
    }

    /// The stream, opened on first use when `plan` was not called.
    fn stream(&mut self) -> Result<&mut Stream, SpeechError> {
        if self.stream.is_none() {
            self.stream = Some(self.open()?);
        }
        Ok(self.stream.as_mut().expect("stream opened"))
    }

    /// End the utterance now; the events (a final, empty when nothing was heard).
    fn finalize(&mut self) -> Vec<SttEvent> {
        let config = match self.config() {
            Ok(config) => config.clone(),
            Err(e) => return vec![SttEvent::Error(e)],
        };
        match self.stream().and_then(|stream| stream.finalize(&config)) {
            Ok(events) => events,
            Err(e) => vec![SttEvent::Error(e)],
        }
    }
}

impl SttProvider for PocketSphinx {
    fn init() -> Result<(), String> {
        let config = load_config()?;
        // The models load with the first session; here only check they are there.
        for path in config.model_paths().into_iter().filter(|p| !p.is_empty()) {
            std::fs::metadata(&path).map_err(|e| format!("model file {path}: {e} (is data_dir granted?)"))?;
        }
        Ok(())
    }

    fn new(options: SttOptions, offered: Vec<AudioFormat>) -> Self {
        PocketSphinx::with_config(load_config(), options, offered)
    }

    fn plan(&mut self) -> Result<SttPlan, SpeechError> {
        // A plan starts a new stream (times from 0).
        self.drop_stream();
        self.closed = false;
        self.stream = Some(self.open()?);
        Ok(SttPlan::InProcess(InProcessStt { format: FORMAT, batch_ms: BATCH_MS }))
    }

    fn on_message(&mut self, _message: WsMessage) -> Vec<SttEvent> {
        Vec::new()
    }

    fn command(&mut self, command: SttCommand) -> CommandOutput {
        let events = if self.closed { Vec::new() } else { self.finalize() };
        if command == SttCommand::Close {
            self.closed = true;
            self.drop_stream();
        }
        CommandOutput { send: Vec::new(), events }
    }

    fn on_close(&mut self, _reason: Disconnect) -> CloseAction {
        CloseAction::Done
    }

    fn push_audio(&mut self, samples: Vec<i16>) -> Result<Vec<SttEvent>, SpeechError> {
        if self.closed {
            return Err(bad_request("push-audio after close".into()));
        }
        if samples.len() > MAX_BATCH_SAMPLES {
            return Err(bad_request(format!("batch of {} samples is over {MAX_BATCH_SAMPLES}", samples.len())));
        }
        let config = self.config()?.clone();
        self.stream()?.push(&config, &samples)
    }
}

impl PocketSphinx {
    fn drop_stream(&mut self) {
        if let (Some(mut stream), Ok(config)) = (self.stream.take(), self.config.as_ref()) {
            stream.abandon(config);
        }
    }
}

impl Drop for PocketSphinx {
    fn drop(&mut self) {
        self.drop_stream();
    }
}

gatewayd_plugin::stt_provider!(PocketSphinx);

#[cfg(test)]
mod tests;
