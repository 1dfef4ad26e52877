//! The Flite engine: FFI to the compiled-in C library and the instance's loaded voices.
//!
//! Flite keeps global state and is not thread-safe, so every call into it is made under one
//! lock ([`ENGINE`]); in Wasm there is one thread and the lock is never contended, natively it
//! keeps parallel tests apart. Voices are loaded once per instance and kept for its life (the
//! host reuses warm instances across sessions), at most [`MAX_VOICES`] of them.

use std::collections::HashMap;
use std::ffi::{CString, c_char, c_float, c_int, c_short};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// How many distinct voice files one instance keeps loaded (each is 2 to 4 MB of memory).
pub const MAX_VOICES: usize = 8;

/// The first bytes of a clustergen voice file (`flite -voicedump`).
const VOX_MAGIC: &[u8] = b"CMU_FLITE_CG_VOXDATA-v2.0";

/// Flite's `cst_voice` (opaque).
#[repr(C)]
struct CstVoice {
    _private: [u8; 0],
}

/// Flite's `cst_utterance` (opaque).
#[repr(C)]
struct CstUtterance {
    _private: [u8; 0],
}

// csrc/shim.c
unsafe extern "C" {
    fn gw_flite_init();
    fn gw_flite_voice_load(path: *const c_char) -> *mut CstVoice;
    fn gw_flite_voice_rate(voice: *const CstVoice) -> c_int;
    fn gw_flite_synth(voice: *mut CstVoice, text: *const c_char, stretch: c_float) -> *mut CstUtterance;
    fn gw_flite_utt_samples(utt: *mut CstUtterance, samples: *mut *const c_short) -> c_int;
    fn gw_flite_utt_free(utt: *mut CstUtterance);
}

/// Why a voice could not be loaded or a text not synthesised.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EngineError {
    /// The voice file does not exist (or cannot be opened): the request named an unknown voice,
    /// or the configured default is missing.
    #[error("voice file {0} not found")]
    VoiceNotFound(PathBuf),
    /// The file exists but is not a Flite clustergen voice (`CMU_FLITE_CG_VOXDATA-v2.0`), or
    /// Flite refused it.
    #[error("{0} is not a Flite clustergen voice (.flitevox)")]
    VoiceInvalid(PathBuf),
    /// The instance already holds [`MAX_VOICES`] voices.
    #[error("too many voices loaded in one instance (at most {MAX_VOICES})")]
    TooManyVoices,
    /// Flite produced no utterance for a text.
    #[error("flite failed to synthesise the text")]
    Synthesis,
}

/// A loaded voice: a handle into the instance's voice table, valid for the instance's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Voice {
    index: usize,
    /// Output rate, in Hz (16000 for the CMU US voices).
    pub sample_rate: u32,
}

/// A `cst_voice` owned by the engine. Only touched under [`ENGINE`]'s lock.
struct VoicePtr(*mut CstVoice);

// SAFETY: the pointer is only dereferenced (by Flite) while ENGINE's lock is held, so it is
// never used from two threads at once; Flite has no thread-affine state.
unsafe impl Send for VoicePtr {}

#[derive(Default)]
struct Engine {
    initialised: bool,
    by_path: HashMap<PathBuf, Voice>,
    voices: Vec<VoicePtr>,
}

static ENGINE: Mutex<Option<Engine>> = Mutex::new(None);

fn with_engine<T>(f: impl FnOnce(&mut Engine) -> T) -> T {
    // A panic never happens under the lock (no code here panics), but a poisoned lock holds a
    // consistent table either way.
    let mut guard = ENGINE.lock().unwrap_or_else(|e| e.into_inner());
    let engine = guard.get_or_insert_with(Engine::default);
    if !engine.initialised {
        // SAFETY: registers the compiled-in language and lexicon; idempotent, under the lock.
        unsafe { gw_flite_init() };
        engine.initialised = true;
    }
    f(engine)
}

/// The voice in the file at `path`, loaded on first use and then shared by every session of the
/// instance. The file is checked before Flite sees it (Flite aborts on some malformed input).
pub fn voice(path: &Path) -> Result<Voice, EngineError> {
    with_engine(|engine| {
        if let Some(voice) = engine.by_path.get(path) {
            return Ok(*voice);
        }
        if engine.voices.len() >= MAX_VOICES {
            return Err(EngineError::TooManyVoices);
        }
        check_voice_file(path)?;
        let invalid = || EngineError::VoiceInvalid(path.to_path_buf());
        let c_path = CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| invalid())?;
        // SAFETY: a NUL-terminated path; Flite returns an owned voice or NULL.
        let ptr = unsafe { gw_flite_voice_load(c_path.as_ptr()) };
        if ptr.is_null() {
            return Err(invalid());
        }
        // SAFETY: a voice Flite just returned.
        let rate = unsafe { gw_flite_voice_rate(ptr) };
        // A voice that loads is kept even when unusable: Flite has no safe way to free a
        // loaded clustergen voice. Unusable voices are refused again on each request.
        let rate = u32::try_from(rate).ok().filter(|r| (8000..=48000).contains(r));
        engine.voices.push(VoicePtr(ptr));
        let Some(sample_rate) = rate else { return Err(invalid()) };
        let voice = Voice { index: engine.voices.len() - 1, sample_rate };
        engine.by_path.insert(path.to_path_buf(), voice);
        Ok(voice)
    })
}

/// Whether `path` is a readable clustergen voice file (by its first bytes), without loading it.
pub fn check_voice_file(path: &Path) -> Result<(), EngineError> {
    let mut file = File::open(path).map_err(|_| EngineError::VoiceNotFound(path.to_path_buf()))?;
    let mut magic = [0u8; VOX_MAGIC.len()];
    match file.read_exact(&mut magic) {
        Ok(()) if magic == VOX_MAGIC => Ok(()),
        _ => Err(EngineError::VoiceInvalid(path.to_path_buf())),
    }
}

/// `text` (one sentence or phrase, no NUL) spoken by `voice`, durations scaled by `stretch`
/// (1.0: the voice's pace). Mono samples at `voice.sample_rate`; empty when the text has
/// nothing to say.
pub fn synthesize(voice: Voice, text: &str, stretch: f32) -> Result<Vec<i16>, EngineError> {
    let text = CString::new(text).map_err(|_| EngineError::Synthesis)?;
    with_engine(|engine| {
        let ptr = engine.voices.get(voice.index).ok_or(EngineError::Synthesis)?.0;
        // SAFETY: a loaded voice and a NUL-terminated text, under the lock.
        let utt = unsafe { gw_flite_synth(ptr, text.as_ptr(), stretch) };
        if utt.is_null() {
            return Err(EngineError::Synthesis);
        }
        let mut samples: *const c_short = std::ptr::null();
        // SAFETY: `utt` is live; the samples it points at live until gw_flite_utt_free.
        let n = unsafe { gw_flite_utt_samples(utt, &mut samples) };
        let out = match usize::try_from(n) {
            Ok(n) if n > 0 && !samples.is_null() => {
                // SAFETY: Flite's wave holds `n` mono samples at `samples`.
                unsafe { std::slice::from_raw_parts(samples, n) }.to_vec()
            }
            _ => Vec::new(),
        };
        // SAFETY: frees the utterance and its wave; `out` is a copy.
        unsafe { gw_flite_utt_free(utt) };
        Ok(out)
    })
}
