//! The PocketSphinx C API this plugin uses (hand-written declarations of `pocketsphinx.h`,
//! `pocketsphinx/endpointer.h`, `pocketsphinx/logmath.h`) and owning wrappers that keep every
//! `unsafe` call in this module.
//!
//! Errors: PocketSphinx reports failures by a NULL or negative return and log lines; the log
//! goes through `csrc/shim.c`, which keeps the ERROR lines since [`clear_errors`] for
//! [`errors`].

#![allow(unsafe_code)]

use std::ffi::{CStr, CString, c_char, c_double, c_int, c_void};
use std::ptr::NonNull;

#[repr(C)]
struct PsConfig {
    _private: [u8; 0],
}
#[repr(C)]
struct PsDecoder {
    _private: [u8; 0],
}
#[repr(C)]
struct PsEndpointer {
    _private: [u8; 0],
}
#[repr(C)]
struct PsSeg {
    _private: [u8; 0],
}
#[repr(C)]
struct LogMath {
    _private: [u8; 0],
}

unsafe extern "C" {
    fn ps_config_init(defn: *const c_void) -> *mut PsConfig;
    fn ps_config_free(config: *mut PsConfig) -> c_int;
    fn ps_config_set_str(config: *mut PsConfig, name: *const c_char, val: *const c_char) -> *const c_void;
    fn ps_config_int(config: *mut PsConfig, name: *const c_char) -> std::ffi::c_long;
    fn ps_init(config: *mut PsConfig) -> *mut PsDecoder;
    fn ps_free(ps: *mut PsDecoder) -> c_int;
    fn ps_get_config(ps: *mut PsDecoder) -> *mut PsConfig;
    fn ps_get_logmath(ps: *mut PsDecoder) -> *mut LogMath;
    fn ps_set_cmn(ps: *mut PsDecoder, cmn: *const c_char) -> c_int;
    fn ps_lookup_word(ps: *mut PsDecoder, word: *const c_char) -> *mut c_char;
    fn ps_add_jsgf_string(ps: *mut PsDecoder, name: *const c_char, jsgf: *const c_char) -> c_int;
    fn ps_activate_search(ps: *mut PsDecoder, name: *const c_char) -> c_int;
    fn ps_start_utt(ps: *mut PsDecoder) -> c_int;
    fn ps_process_raw(
        ps: *mut PsDecoder,
        data: *const i16,
        n_samples: usize,
        no_search: c_int,
        full_utt: c_int,
    ) -> c_int;
    fn ps_end_utt(ps: *mut PsDecoder) -> c_int;
    fn ps_get_hyp(ps: *mut PsDecoder, out_best_score: *mut i32) -> *const c_char;
    fn ps_get_prob(ps: *mut PsDecoder) -> i32;
    fn ps_seg_iter(ps: *mut PsDecoder) -> *mut PsSeg;
    fn ps_seg_next(seg: *mut PsSeg) -> *mut PsSeg;
    fn ps_seg_word(seg: *mut PsSeg) -> *const c_char;
    fn ps_seg_frames(seg: *mut PsSeg, out_sf: *mut c_int, out_ef: *mut c_int);
    fn ps_seg_prob(seg: *mut PsSeg, out_ascr: *mut i32, out_lscr: *mut i32, out_lback: *mut i32) -> i32;
    fn ps_seg_free(seg: *mut PsSeg);
    fn logmath_exp(lmath: *mut LogMath, logb_p: c_int) -> c_double;
    fn ckd_free(ptr: *mut c_void);

    fn ps_endpointer_init(
        window: c_double,
        ratio: c_double,
        mode: c_int,
        sample_rate: c_int,
        frame_length: c_double,
    ) -> *mut PsEndpointer;
    fn ps_endpointer_free(ep: *mut PsEndpointer) -> c_int;
    fn ps_endpointer_process(ep: *mut PsEndpointer, frame: *const i16) -> *const i16;
    fn ps_endpointer_end_stream(
        ep: *mut PsEndpointer,
        frame: *const i16,
        nsamp: usize,
        out_nsamp: *mut usize,
    ) -> *const i16;
    fn ps_endpointer_in_speech(ep: *mut PsEndpointer) -> c_int;
    fn ps_endpointer_speech_start(ep: *mut PsEndpointer) -> c_double;
    fn ps_endpointer_speech_end(ep: *mut PsEndpointer) -> c_double;
    fn ps_endpointer_vad(ep: *mut PsEndpointer) -> *mut c_void;
    fn ps_vad_frame_size(vad: *mut c_void) -> usize;

    fn gw_ps_install_log();
    fn gw_ps_errors() -> *const c_char;
    fn gw_ps_clear_errors();
}

/// PocketSphinx's log, formatted by `csrc/shim.c`: WARN lines are logged at debug level (they
/// are routine: "final result does not match the grammar"), ERROR and FATAL at warn (the
/// plugin also returns them as errors).
///
/// # Safety
/// `message` is a NUL-terminated string (the shim's buffer).
#[unsafe(no_mangle)]
unsafe extern "C" fn gw_ps_log(level: c_int, message: *const c_char) {
    if message.is_null() {
        return;
    }
    // SAFETY: the shim passes its NUL-terminated stack buffer.
    let message = unsafe { CStr::from_ptr(message) }.to_string_lossy();
    log_line(level >= 3, &message);
}

#[cfg(target_arch = "wasm32")]
fn log_line(error: bool, message: &str) {
    let line = format!("pocketsphinx: {message}");
    if error { gatewayd_plugin::log::warn(&line) } else { gatewayd_plugin::log::debug(&line) }
}

#[cfg(not(target_arch = "wasm32"))]
fn log_line(error: bool, message: &str) {
    if error {
        eprintln!("pocketsphinx: {message}");
    }
}

/// The PocketSphinx ERROR messages on this thread since [`clear_errors`], joined with `; `
/// and without their `ERROR: "file.c", line N: ` prefix ("" when none).
pub(crate) fn errors() -> String {
    // SAFETY: the shim returns its own NUL-terminated buffer.
    let text = unsafe { CStr::from_ptr(gw_ps_errors()) }.to_string_lossy().into_owned();
    text.lines().map(strip_location).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("; ")
}

/// `ERROR: "jsgf.c", line 329: Undefined rule` -> `Undefined rule`.
fn strip_location(line: &str) -> &str {
    let rest = line.strip_prefix("ERROR: ").or_else(|| line.strip_prefix("FATAL: ")).unwrap_or(line);
    match rest.find(", line ").map(|i| &rest[i + ", line ".len()..]) {
        Some(tail) if rest.starts_with('"') => tail.split_once(": ").map_or(tail, |(_, msg)| msg).trim(),
        _ => rest.trim(),
    }
}

/// Forget the errors so far (before a call whose failure we want to explain).
pub(crate) fn clear_errors() {
    // SAFETY: no arguments; writes the shim's buffer.
    unsafe { gw_ps_clear_errors() }
}

/// A C string for PocketSphinx; text with a NUL byte is an error.
fn cstring(text: &str) -> Result<CString, String> {
    CString::new(text).map_err(|_| format!("`{}` contains a NUL byte", text.escape_debug()))
}

/// What a failed call logged, or `fallback` when it logged nothing.
fn failure(fallback: &str) -> String {
    let logged = errors();
    if logged.is_empty() { fallback.to_string() } else { logged }
}

/// A decoder configuration being built (`ps_config_t`).
pub(crate) struct DecoderConfig(NonNull<PsConfig>);

impl DecoderConfig {
    /// The defaults of every PocketSphinx parameter.
    pub(crate) fn new() -> Result<DecoderConfig, String> {
        // SAFETY: routes the library's log through the shim (idempotent), then a NULL argument
        // asks for the default parameter set.
        unsafe { gw_ps_install_log() };
        NonNull::new(unsafe { ps_config_init(std::ptr::null()) })
            .map(DecoderConfig)
            .ok_or_else(|| "pocketsphinx: cannot create a configuration".to_string())
    }

    /// Set `name` to `value` (parsed by the parameter's type). Unknown names and values that do
    /// not parse are errors.
    pub(crate) fn set(&mut self, name: &str, value: &str) -> Result<(), String> {
        let (cname, cvalue) = (cstring(name)?, cstring(value)?);
        clear_errors();
        // SAFETY: valid config and NUL-terminated strings; the config copies the value.
        let set = unsafe { ps_config_set_str(self.0.as_ptr(), cname.as_ptr(), cvalue.as_ptr()) };
        if set.is_null() {
            Err(format!("pocketsphinx parameter `{name}` = `{value}` is unknown or invalid"))
        } else {
            Ok(())
        }
    }
}

impl Drop for DecoderConfig {
    fn drop(&mut self) {
        // SAFETY: releases our reference; a decoder built from it holds its own.
        unsafe { ps_config_free(self.0.as_ptr()) };
    }
}

/// A loaded decoder (`ps_decoder_t`): acoustic model, dictionary, searches.
pub(crate) struct Decoder {
    ps: NonNull<PsDecoder>,
    /// Feature frames per second (`frate`, 100): segment frames to time.
    frame_rate: u32,
}

/// One recognised word of a finished utterance.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Segment {
    /// The dictionary word (`<s>`, `<sil>`, `[NOISE]`, `word(2)` included).
    pub word: String,
    /// First frame, from the utterance start.
    pub start_frame: i32,
    /// Last frame (inclusive).
    pub end_frame: i32,
    /// Posterior probability, 0.0 to 1.0 (1.0 when the search computes none).
    pub confidence: f32,
}

impl Decoder {
    /// Load the models `config` names. Errors: what PocketSphinx logged (missing file, bad
    /// model).
    pub(crate) fn new(config: &DecoderConfig) -> Result<Decoder, String> {
        clear_errors();
        // SAFETY: a valid config; the decoder retains it.
        let ps = NonNull::new(unsafe { ps_init(config.0.as_ptr()) })
            .ok_or_else(|| failure("pocketsphinx: the decoder could not be initialised"))?;
        let name = cstring("frate")?;
        // SAFETY: valid decoder; its config always has `frate`.
        let frame_rate = unsafe { ps_config_int(ps_get_config(ps.as_ptr()), name.as_ptr()) };
        Ok(Decoder { ps, frame_rate: u32::try_from(frame_rate).ok().filter(|&r| r > 0).unwrap_or(100) })
    }

    /// Feature frames per second.
    pub(crate) fn frame_rate(&self) -> u32 {
        self.frame_rate
    }

    /// Set the live cepstral mean estimate (comma-separated values).
    pub(crate) fn set_cmn(&mut self, cmn: &str) -> Result<(), String> {
        let ccmn = cstring(cmn)?;
        clear_errors();
        // SAFETY: valid decoder and string (parsed, not kept).
        let rc = unsafe { ps_set_cmn(self.ps.as_ptr(), ccmn.as_ptr()) };
        if rc < 0 { Err(failure("cannot set the cepstral mean")) } else { Ok(()) }
    }

    /// Whether the dictionary has `word`.
    pub(crate) fn has_word(&mut self, word: &str) -> bool {
        let Ok(cword) = cstring(word) else { return false };
        // SAFETY: valid decoder and string; the result is ours to free with ckd_free.
        let phones = unsafe { ps_lookup_word(self.ps.as_ptr(), cword.as_ptr()) };
        if phones.is_null() {
            return false;
        }
        // SAFETY: allocated by PocketSphinx's allocator.
        unsafe { ckd_free(phones.cast()) };
        true
    }

    /// Parse `jsgf` and make it the search `name` (replacing one of that name, which must not
    /// be the active search). Errors: the parser's or the search's messages (syntax, an
    /// undefined rule, a word not in the dictionary); on an error the search may have been
    /// replaced all the same, so it must not be activated.
    pub(crate) fn add_jsgf(&mut self, name: &str, jsgf: &str) -> Result<(), String> {
        let (cname, cjsgf) = (cstring(name)?, cstring(jsgf)?);
        clear_errors();
        // SAFETY: valid decoder and strings (copied by the parser).
        let rc = unsafe { ps_add_jsgf_string(self.ps.as_ptr(), cname.as_ptr(), cjsgf.as_ptr()) };
        // An undefined rule is logged as an error but compiled (without it): refuse it too.
        let logged = errors();
        if rc < 0 || !logged.is_empty() {
            Err(if logged.is_empty() { "the grammar could not be compiled".into() } else { logged })
        } else {
            Ok(())
        }
    }

    /// Make the search `name` the active one (between utterances only).
    pub(crate) fn activate(&mut self, name: &str) -> Result<(), String> {
        let cname = cstring(name)?;
        clear_errors();
        // SAFETY: valid decoder and string.
        let rc = unsafe { ps_activate_search(self.ps.as_ptr(), cname.as_ptr()) };
        if rc < 0 { Err(failure(&format!("no search `{name}`"))) } else { Ok(()) }
    }

    pub(crate) fn start_utt(&mut self) -> Result<(), String> {
        clear_errors();
        // SAFETY: valid decoder.
        let rc = unsafe { ps_start_utt(self.ps.as_ptr()) };
        if rc < 0 { Err(failure("cannot start an utterance")) } else { Ok(()) }
    }

    /// Decode `samples` (16-bit mono at the model's rate) as part of the current utterance.
    pub(crate) fn process(&mut self, samples: &[i16]) -> Result<(), String> {
        clear_errors();
        // SAFETY: valid decoder; the slice outlives the call, which copies what it keeps.
        let rc = unsafe { ps_process_raw(self.ps.as_ptr(), samples.as_ptr(), samples.len(), 0, 0) };
        if rc < 0 { Err(failure("decoding failed")) } else { Ok(()) }
    }

    pub(crate) fn end_utt(&mut self) -> Result<(), String> {
        clear_errors();
        // SAFETY: valid decoder.
        let rc = unsafe { ps_end_utt(self.ps.as_ptr()) };
        if rc < 0 { Err(failure("cannot end the utterance")) } else { Ok(()) }
    }

    /// The current best hypothesis (partial during an utterance), raw words separated by
    /// spaces; "" when none.
    pub(crate) fn hyp(&mut self) -> String {
        let mut score = 0i32;
        // SAFETY: valid decoder; the string belongs to the search until the next call.
        let hyp = unsafe { ps_get_hyp(self.ps.as_ptr(), &mut score) };
        if hyp.is_null() { String::new() } else { unsafe { CStr::from_ptr(hyp) }.to_string_lossy().into_owned() }
    }

    /// The posterior probability of the last utterance's hypothesis, 0.0 to 1.0.
    pub(crate) fn confidence(&mut self) -> f32 {
        // SAFETY: valid decoder; logmath belongs to it.
        let prob = unsafe { ps_get_prob(self.ps.as_ptr()) };
        self.exp(prob)
    }

    fn exp(&mut self, log_prob: i32) -> f32 {
        if log_prob > 0 {
            return 0.0;
        }
        // SAFETY: valid decoder; logmath belongs to it.
        let p = unsafe { logmath_exp(ps_get_logmath(self.ps.as_ptr()), log_prob) };
        if p.is_finite() { p.clamp(0.0, 1.0) as f32 } else { 0.0 }
    }

    /// The segments (words, fillers) of the last utterance's best path, at most `max`.
    pub(crate) fn segments(&mut self, max: usize) -> Vec<Segment> {
        let mut out = Vec::new();
        // SAFETY: valid decoder; each iterator step is used once and the iterator freed when
        // stopped early (ps_seg_next frees it at the end).
        let mut seg = unsafe { ps_seg_iter(self.ps.as_ptr()) };
        while !seg.is_null() {
            if out.len() == max {
                unsafe { ps_seg_free(seg) };
                break;
            }
            let word = unsafe { ps_seg_word(seg) };
            let word = if word.is_null() {
                String::new()
            } else {
                unsafe { CStr::from_ptr(word) }.to_string_lossy().into_owned()
            };
            let (mut start_frame, mut end_frame) = (0, 0);
            unsafe { ps_seg_frames(seg, &mut start_frame, &mut end_frame) };
            let prob = unsafe { ps_seg_prob(seg, std::ptr::null_mut(), std::ptr::null_mut(), std::ptr::null_mut()) };
            out.push(Segment { word, start_frame, end_frame, confidence: self.exp(prob) });
            seg = unsafe { ps_seg_next(seg) };
        }
        out
    }
}

impl Drop for Decoder {
    fn drop(&mut self) {
        // SAFETY: we own the only reference.
        unsafe { ps_free(self.ps.as_ptr()) };
    }
}

/// PocketSphinx's VAD-based endpointer (`ps_endpointer_t`): fixed-size frames in, speech
/// frames out (delayed by its window), with speech start and end times.
pub(crate) struct Endpointer {
    ep: NonNull<PsEndpointer>,
    frame_size: usize,
}

impl Endpointer {
    /// An endpointer over a `window` s sliding window: speech starts when more than `ratio`
    /// of it is voiced and ends when less than `1 - ratio` is; `mode` 0 (loose) to 3 (strict);
    /// 30 ms frames at `sample_rate`.
    pub(crate) fn new(window: f64, ratio: f64, mode: u8, sample_rate: u32) -> Result<Endpointer, String> {
        clear_errors();
        // SAFETY: plain values.
        let ep =
            NonNull::new(unsafe { ps_endpointer_init(window, ratio, c_int::from(mode), sample_rate as c_int, 0.03) })
                .ok_or_else(|| failure("the endpointer could not be created"))?;
        // SAFETY: valid endpointer; its VAD lives as long as it does.
        let frame_size = unsafe { ps_vad_frame_size(ps_endpointer_vad(ep.as_ptr())) };
        Ok(Endpointer { ep, frame_size })
    }

    /// Samples per frame (480 at 16 kHz).
    pub(crate) fn frame_size(&self) -> usize {
        self.frame_size
    }

    /// Classify one frame of exactly [`Self::frame_size`] samples; returns a frame of speech
    /// to decode (an earlier one: the window's delay) while in speech.
    pub(crate) fn process(&mut self, frame: &[i16]) -> Option<&[i16]> {
        assert_eq!(frame.len(), self.frame_size, "endpointer frame size");
        // SAFETY: valid endpointer, a frame of the right size; the returned frame points into
        // the endpointer's buffer and stays valid until the next call (borrow of self).
        let out = unsafe { ps_endpointer_process(self.ep.as_ptr(), frame.as_ptr()) };
        if out.is_null() { None } else { Some(unsafe { std::slice::from_raw_parts(out, self.frame_size) }) }
    }

    /// End the stream: `tail` (at most one frame) is the last audio; returns the speech still
    /// buffered (none when not in speech).
    pub(crate) fn end_stream(&mut self, tail: &[i16]) -> Vec<i16> {
        let tail = &tail[..tail.len().min(self.frame_size)];
        let mut n = 0usize;
        // SAFETY: valid endpointer; `tail` is at most one frame; the result has `n` samples in
        // the endpointer's buffer, copied out at once.
        let out = unsafe { ps_endpointer_end_stream(self.ep.as_ptr(), tail.as_ptr(), tail.len(), &mut n) };
        if out.is_null() || n == 0 { Vec::new() } else { unsafe { std::slice::from_raw_parts(out, n) }.to_vec() }
    }

    pub(crate) fn in_speech(&self) -> bool {
        // SAFETY: valid endpointer.
        unsafe { ps_endpointer_in_speech(self.ep.as_ptr()) != 0 }
    }

    /// When the current (or last) speech segment started, in s from this endpointer's start.
    pub(crate) fn speech_start(&self) -> f64 {
        // SAFETY: valid endpointer.
        unsafe { ps_endpointer_speech_start(self.ep.as_ptr()) }
    }

    /// When the last speech segment ended, in s from this endpointer's start.
    pub(crate) fn speech_end(&self) -> f64 {
        // SAFETY: valid endpointer.
        unsafe { ps_endpointer_speech_end(self.ep.as_ptr()) }
    }
}

impl Drop for Endpointer {
    fn drop(&mut self) {
        // SAFETY: we own the only reference.
        unsafe { ps_endpointer_free(self.ep.as_ptr()) };
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn error_locations_are_stripped() {
        assert_eq!(
            super::strip_location("ERROR: \"jsgf.c\", line 329: Undefined rule in RHS: <g.x>"),
            "Undefined rule in RHS: <g.x>"
        );
        assert_eq!(super::strip_location("plain message"), "plain message");
    }
}
