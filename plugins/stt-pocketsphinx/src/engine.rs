//! The decoder of this instance: loaded once (by the first session, or the host's warm-up
//! session) and reused by every later session, which only switches its search (LM or grammar).
//!
//! A component instance is single-threaded, so the engine lives in a thread-local (natively,
//! each test thread has its own). Sessions are told apart by id: the engine remembers whose
//! grammar is compiled and whose utterance is in progress, so sessions that interleave in one
//! instance never decode with another's grammar; a second session that starts speaking while
//! another is mid-utterance gets `unavailable`.

use std::cell::{Cell, RefCell};

use gatewayd_plugin::speech::{ErrorKind, SpeechError};

use crate::config::{Config, decoder_value};
use crate::ffi::{Decoder, DecoderConfig, Segment};
use crate::grammar::Search;

/// The n-gram search `ps_init` creates from the `lm` parameter.
const LM_SEARCH: &str = "_default";
/// The two searches sessions' grammars are compiled into: a new grammar goes into the one that
/// is not active (PocketSphinx frees a replaced search without clearing its active pointer, so
/// the active search must never be replaced).
const GRAMMAR_SEARCHES: [&str; 2] = ["grammar0", "grammar1"];
/// The model's sample rate (the en-us model is 16 kHz only).
pub const SAMPLE_RATE: u32 = 16_000;
/// At most this many segments (words and fillers) are read from a finished utterance.
pub const MAX_SEGMENTS: usize = 1024;

thread_local! {
    static ENGINE: RefCell<Option<Engine>> = const { RefCell::new(None) };
    /// A configuration whose models failed to load, and why: not retried (the files are
    /// read-only, so a retry would fail the same way at the same cost).
    static FAILED: RefCell<Option<(Config, String)>> = const { RefCell::new(None) };
    static LOADS: Cell<u64> = const { Cell::new(0) };
    static NEXT_SESSION: Cell<u64> = const { Cell::new(1) };
}

/// How many times this thread (instance) loaded the models.
pub fn loads() -> u64 {
    LOADS.get()
}

/// A fresh session id.
pub(crate) fn session_id() -> u64 {
    NEXT_SESSION.replace(NEXT_SESSION.get() + 1)
}

/// What a finished utterance decoded to.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Decoded {
    /// The raw hypothesis (dictionary words, fillers included).
    pub hyp: String,
    /// Posterior probability of the hypothesis, 0.0 to 1.0.
    pub confidence: f32,
    /// The best path's segments.
    pub segments: Vec<Segment>,
}

/// The loaded decoder and which session uses what.
pub(crate) struct Engine {
    config: Config,
    decoder: Decoder,
    /// Whose grammar each of [`GRAMMAR_SEARCHES`] holds.
    grammars: [Option<u64>; 2],
    /// The active search: `None` the LM (or nothing yet), `Some(i)` `GRAMMAR_SEARCHES[i]`.
    active: Option<usize>,
    /// The session with an utterance in progress.
    utterance_of: Option<u64>,
}

fn unavailable(message: String) -> SpeechError {
    SpeechError::new(ErrorKind::Unavailable, message)
}

/// Run `f` on this instance's engine for `config`, loading the models first when none are
/// loaded (or, in tests, when they were loaded for another configuration). Errors: the load's
/// (`config`), the same error at no cost once a load failed.
pub(crate) fn with_engine<R>(config: &Config, f: impl FnOnce(&mut Engine) -> R) -> Result<R, SpeechError> {
    let load_error = |e: &str| SpeechError::new(ErrorKind::Config, format!("loading the PocketSphinx model: {e}"));
    ENGINE.with_borrow_mut(|slot| {
        if slot.as_ref().is_none_or(|engine| engine.config != *config) {
            if let Some((_, e)) = FAILED.with_borrow(|failed| failed.clone()).filter(|(c, _)| c == config) {
                return Err(load_error(&e));
            }
            // Free the old models before loading new ones (memory is capped).
            *slot = None;
            match Engine::load(config) {
                Ok(engine) => {
                    LOADS.set(LOADS.get() + 1);
                    *slot = Some(engine);
                }
                Err(e) => {
                    FAILED.set(Some((config.clone(), e.clone())));
                    return Err(load_error(&e));
                }
            }
        }
        Ok(f(slot.as_mut().expect("engine loaded")))
    })
}

/// Run `f` on the engine if one is loaded for `config` (session teardown: never loads).
pub(crate) fn with_loaded<R>(config: &Config, f: impl FnOnce(&mut Engine) -> R) -> Option<R> {
    ENGINE.with_borrow_mut(|slot| slot.as_mut().filter(|engine| engine.config == *config).map(f))
}

impl Engine {
    fn load(config: &Config) -> Result<Engine, String> {
        let mut params = DecoderConfig::new()?;
        let [hmm, lm, dict] = config.model_paths();
        params.set("hmm", &hmm)?;
        if !config.lm.is_empty() {
            params.set("lm", &lm)?;
        }
        params.set("dict", &dict)?;
        // WASI has no mmap: read model files into memory.
        params.set("mmap", "no")?;
        params.set("samprate", &SAMPLE_RATE.to_string())?;
        params.set("cmninit", &config.cmninit)?;
        // No second (flat-lexicon) pass unless `decoder` asks for it: it runs when an utterance
        // ends, for time growing with the utterance (0.7 s natively after 24 s of speech,
        // against 50 ms without), which delays every final and makes the CPU of one call into
        // the plugin unbounded; without it decoding takes about a fifth less CPU.
        params.set("fwdflat", "no")?;
        for (name, value) in &config.decoder {
            let value = decoder_value(value).ok_or_else(|| format!("decoder parameter `{name}` is not a scalar"))?;
            params.set(name, &value)?;
        }
        let decoder = Decoder::new(&params)?;
        Ok(Engine { config: config.clone(), decoder, grammars: [None; 2], active: None, utterance_of: None })
    }

    /// Restart live cepstral mean normalisation from the configured means (a new stream).
    pub(crate) fn reset_cmn(&mut self) -> Result<(), SpeechError> {
        self.decoder.set_cmn(&self.config.cmninit).map_err(unavailable)
    }

    /// Whether the dictionary has `word`.
    pub(crate) fn has_word(&mut self, word: &str) -> bool {
        self.decoder.has_word(word)
    }

    /// Feature frames per second (word times).
    pub(crate) fn frame_rate(&self) -> u32 {
        self.decoder.frame_rate()
    }

    /// Make `search` the active search for `session`, compiling its grammar unless it is the
    /// one compiled. Errors: another session is mid-utterance (`unavailable`); the grammar does
    /// not compile (`bad_request`, the parser's message: syntax, a word not in the dictionary).
    pub(crate) fn use_search(&mut self, session: u64, search: &Search) -> Result<(), SpeechError> {
        if let Some(other) = self.utterance_of.filter(|&s| s != session) {
            return Err(unavailable(format!("another stream (session {other}) is decoding in this instance")));
        }
        if self.utterance_of == Some(session) {
            return Ok(()); // Searches only change between utterances.
        }
        match search {
            Search::Lm if self.config.lm.is_empty() => Err(SpeechError::new(
                ErrorKind::BadRequest,
                "no n-gram LM is configured (lm = \"\"): a stream needs keyterms or a grammar",
            )),
            Search::Lm => {
                if self.active.is_some() {
                    self.decoder.activate(LM_SEARCH).map_err(unavailable)?;
                    self.active = None;
                }
                Ok(())
            }
            Search::Grammar(jsgf) => {
                let slot = match self.grammars.iter().position(|&owner| owner == Some(session)) {
                    Some(slot) => slot,
                    None => {
                        let slot = if self.active == Some(0) { 1 } else { 0 };
                        self.grammars[slot] = None;
                        self.decoder
                            .add_jsgf(GRAMMAR_SEARCHES[slot], jsgf)
                            .map_err(|e| SpeechError::new(ErrorKind::BadRequest, format!("grammar: {e}")))?;
                        self.grammars[slot] = Some(session);
                        slot
                    }
                };
                if self.active != Some(slot) {
                    self.decoder.activate(GRAMMAR_SEARCHES[slot]).map_err(unavailable)?;
                    self.active = Some(slot);
                }
                Ok(())
            }
        }
    }

    /// Start an utterance for `session` with `search`.
    pub(crate) fn begin(&mut self, session: u64, search: &Search) -> Result<(), SpeechError> {
        self.use_search(session, search)?;
        self.decoder.start_utt().map_err(unavailable)?;
        self.utterance_of = Some(session);
        Ok(())
    }

    /// Decode `samples` in `session`'s utterance.
    pub(crate) fn process(&mut self, session: u64, samples: &[i16]) -> Result<(), SpeechError> {
        if self.utterance_of != Some(session) {
            return Err(unavailable("the utterance was lost (the decoder was reloaded)".into()));
        }
        self.decoder.process(samples).map_err(unavailable)
    }

    /// The partial hypothesis of `session`'s utterance ("" when none or not in one).
    pub(crate) fn partial(&mut self, session: u64) -> String {
        if self.utterance_of == Some(session) { self.decoder.hyp() } else { String::new() }
    }

    /// End `session`'s utterance and read its result.
    pub(crate) fn finish(&mut self, session: u64) -> Result<Decoded, SpeechError> {
        if self.utterance_of != Some(session) {
            return Err(unavailable("the utterance was lost (the decoder was reloaded)".into()));
        }
        self.utterance_of = None;
        self.decoder.end_utt().map_err(unavailable)?;
        let hyp = self.decoder.hyp();
        let confidence = if hyp.is_empty() { 0.0 } else { self.decoder.confidence() };
        let segments = self.decoder.segments(MAX_SEGMENTS);
        Ok(Decoded { hyp, confidence, segments })
    }

    /// End `session`'s utterance, if it has one, discarding the result (a dropped session).
    pub(crate) fn abandon(&mut self, session: u64) {
        if self.utterance_of == Some(session) {
            self.utterance_of = None;
            let _ = self.decoder.end_utt();
        }
    }
}
