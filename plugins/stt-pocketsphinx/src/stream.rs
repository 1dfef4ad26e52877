//! One recognition stream: 16 kHz samples in, neutral events out. The endpointer (its own per
//! stream) finds speech; speech frames go to the shared decoder ([`crate::engine`]) as one
//! utterance per speech segment.
//!
//! Times are ms from the start of the audio of this connection (the last `plan`), counted in
//! samples, so they are exact whatever the batch size.

use gatewayd_plugin::speech::stt::{SttEvent, Transcript, Word};
use gatewayd_plugin::speech::{ErrorKind, SpeechError};

use crate::config::Config;
use crate::engine::{self, Decoded, SAMPLE_RATE};
use crate::ffi::Endpointer;
use crate::grammar::{Search, base_word, clean_text, is_filler};

/// Why an utterance ends.
#[derive(Debug, Clone, Copy, PartialEq)]
enum End {
    /// The endpointer heard the speech end.
    Endpoint,
    /// `max_utterance_ms` of speech: cut, and the speech goes on in a new decoder utterance.
    TooLong,
    /// A `finalize` (or `close`) command.
    Finalize,
}

/// The utterance in progress.
#[derive(Debug)]
struct Utterance {
    /// Its start, in samples from the stream start.
    start: u64,
    /// Samples decoded in it.
    fed: u64,
    /// The last interim text sent.
    interim: String,
}

/// The decoding state of one connection.
pub(crate) struct Stream {
    session: u64,
    search: Search,
    interim_results: bool,
    endpointer: Endpointer,
    window_s: f64,
    /// Samples received that do not fill an endpointer frame yet.
    carry: Vec<i16>,
    /// Samples received on this connection.
    received: u64,
    /// Where the current endpointer's time 0 is, in samples from the stream start (it is
    /// replaced after each finalize).
    endpointer_base: u64,
    utterance: Option<Utterance>,
    /// After a `TooLong` cut: where the next speech frame starts (the speech goes on).
    resume_at: Option<u64>,
    /// Scratch for one speech frame.
    frame: Vec<i16>,
    /// The noise floor's generator (`Config::noise_floor`).
    noise: NoiseFloor,
}

/// A faint, deterministic noise floor (`Config::noise_floor`): uniform noise of the given
/// amplitude from a xorshift32 generator, restarted with the same seed for every stream.
#[derive(Debug)]
struct NoiseFloor {
    state: u32,
}

impl NoiseFloor {
    fn new() -> NoiseFloor {
        NoiseFloor { state: 0x9E37_79B9 }
    }

    /// Add noise of amplitude `amplitude` to `samples` (saturating).
    fn add(&mut self, amplitude: u16, samples: &mut [i16]) {
        if amplitude == 0 {
            return;
        }
        let span = 2 * u32::from(amplitude) + 1;
        for s in samples {
            let mut x = self.state;
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            self.state = x;
            let noise = (x % span) as i32 - i32::from(amplitude);
            *s = (i32::from(*s) + noise).clamp(i32::from(i16::MIN), i32::from(i16::MAX)) as i16;
        }
    }
}

fn ms(samples: u64) -> u32 {
    u32::try_from(samples * 1000 / u64::from(SAMPLE_RATE)).unwrap_or(u32::MAX)
}

fn secs_to_samples(secs: f64) -> u64 {
    if secs.is_finite() && secs > 0.0 { (secs * f64::from(SAMPLE_RATE)).round() as u64 } else { 0 }
}

fn new_endpointer(config: &Config, window_s: f64) -> Result<Endpointer, SpeechError> {
    Endpointer::new(window_s, config.endpoint_ratio, config.vad_mode, SAMPLE_RATE)
        .map_err(|e| SpeechError::new(ErrorKind::Config, format!("endpointer: {e}")))
}

impl Stream {
    /// A stream for `session` decoding with `search`; `window_ms` is the endpointer window.
    pub(crate) fn new(
        config: &Config,
        session: u64,
        search: Search,
        interim_results: bool,
        window_ms: u32,
    ) -> Result<Stream, SpeechError> {
        let window_s = f64::from(window_ms) / 1000.0;
        let endpointer = new_endpointer(config, window_s)?;
        Ok(Stream {
            session,
            search,
            interim_results,
            frame: Vec::with_capacity(endpointer.frame_size()),
            endpointer,
            window_s,
            carry: Vec::new(),
            received: 0,
            endpointer_base: 0,
            utterance: None,
            resume_at: None,
            noise: NoiseFloor::new(),
        })
    }

    /// Decode a batch of samples; the events it produced, in order.
    pub(crate) fn push(&mut self, config: &Config, samples: &[i16]) -> Result<Vec<SttEvent>, SpeechError> {
        let mut events = Vec::new();
        self.received += samples.len() as u64;
        let start = self.carry.len();
        self.carry.extend_from_slice(samples);
        self.noise.add(config.noise_floor, &mut self.carry[start..]);
        let frame_size = self.endpointer.frame_size();
        let mut offset = 0;
        let mut result = Ok(());
        while self.carry.len() - offset >= frame_size {
            let frame = std::mem::take(&mut self.carry);
            result = self.step(config, &frame[offset..offset + frame_size], &mut events);
            self.carry = frame;
            offset += frame_size;
            if result.is_err() {
                break;
            }
        }
        self.carry.drain(..offset);
        result?;
        if self.interim_results
            && let Some(utterance) = &mut self.utterance
        {
            let text = clean_text(&engine::with_engine(config, |e| e.partial(self.session))?);
            if !text.is_empty() && text != utterance.interim {
                utterance.interim = text.clone();
                events.push(SttEvent::Interim(Transcript {
                    text,
                    confidence: 0.0,
                    languages: Vec::new(),
                    start_ms: ms(utterance.start),
                    duration_ms: ms(utterance.fed),
                    words: Vec::new(),
                    speech_final: false,
                    from_finalize: false,
                }));
            }
        }
        Ok(events)
    }

    /// One endpointer frame.
    fn step(&mut self, config: &Config, frame: &[i16], events: &mut Vec<SttEvent>) -> Result<(), SpeechError> {
        let Some(speech) = self.endpointer.process(frame) else { return Ok(()) };
        self.frame.clear();
        self.frame.extend_from_slice(speech);
        if self.utterance.is_none() {
            let start = match self.resume_at.take() {
                Some(at) => at,
                None => {
                    let start = self.endpointer_base + secs_to_samples(self.endpointer.speech_start());
                    events.push(SttEvent::SpeechStarted(ms(start)));
                    start
                }
            };
            self.begin(config, start)?;
        }
        let session = self.session;
        engine::with_engine(config, |e| e.process(session, &self.frame))??;
        let utterance = self.utterance.as_mut().expect("utterance begun");
        utterance.fed += self.frame.len() as u64;
        if !self.endpointer.in_speech() {
            let end = self.endpointer_base + secs_to_samples(self.endpointer.speech_end());
            self.end(config, End::Endpoint, end, events)?;
        } else if utterance.fed * 1000 >= u64::from(config.max_utterance_ms) * u64::from(SAMPLE_RATE) {
            let end = utterance.start + utterance.fed;
            self.end(config, End::TooLong, end, events)?;
            self.resume_at = Some(end);
        }
        Ok(())
    }

    fn begin(&mut self, config: &Config, start: u64) -> Result<(), SpeechError> {
        let (session, search) = (self.session, &self.search);
        engine::with_engine(config, |e| e.begin(session, search))??;
        self.utterance = Some(Utterance { start, fed: 0, interim: String::new() });
        Ok(())
    }

    /// End the utterance in progress at `end` (samples) and report it.
    fn end(&mut self, config: &Config, why: End, end: u64, events: &mut Vec<SttEvent>) -> Result<(), SpeechError> {
        let Some(utterance) = self.utterance.take() else { return Ok(()) };
        let session = self.session;
        let (decoded, frame_rate) = engine::with_engine(config, |e| e.finish(session).map(|d| (d, e.frame_rate())))??;
        let end = end.max(utterance.start);
        let transcript = transcript(&decoded, frame_rate, utterance.start, end, why);
        let last_word_end = transcript.words.last().map(|w| w.end_ms);
        let speech_final = transcript.speech_final;
        events.push(SttEvent::Final(transcript));
        if speech_final {
            events.push(SttEvent::UtteranceEnd(last_word_end.unwrap_or(ms(end))));
        }
        Ok(())
    }

    /// `finalize`: decode what the endpointer still holds, end the utterance and report it (an
    /// empty final when there was none); the endpointer starts afresh.
    pub(crate) fn finalize(&mut self, config: &Config) -> Result<Vec<SttEvent>, SpeechError> {
        let mut events = Vec::new();
        let in_speech = self.endpointer.in_speech();
        let speech_start = self.endpointer_base + secs_to_samples(self.endpointer.speech_start());
        let rest = self.endpointer.end_stream(&self.carry);
        self.carry.clear();
        self.endpointer = new_endpointer(config, self.window_s)?;
        self.endpointer_base = self.received;
        let mut result = Ok(());
        if in_speech && !rest.is_empty() {
            if self.utterance.is_none() {
                let start = self.resume_at.take().unwrap_or(speech_start);
                result = self.begin(config, start);
            }
            if result.is_ok() {
                let session = self.session;
                result = engine::with_engine(config, |e| e.process(session, &rest)).and_then(|r| r);
                if let Some(utterance) = &mut self.utterance {
                    utterance.fed += rest.len() as u64;
                }
            }
        }
        self.resume_at = None;
        match (&self.utterance, result) {
            (Some(utterance), Ok(())) => {
                let end = utterance.start + utterance.fed;
                self.end(config, End::Finalize, end, &mut events)?;
            }
            (_, Err(e)) => {
                self.abandon(config);
                return Err(e);
            }
            (None, Ok(())) => events.push(SttEvent::Final(Transcript {
                text: String::new(),
                confidence: 0.0,
                languages: Vec::new(),
                start_ms: ms(self.received),
                duration_ms: 0,
                words: Vec::new(),
                speech_final: false,
                from_finalize: true,
            })),
        }
        Ok(events)
    }

    /// Drop the utterance in progress without a result.
    pub(crate) fn abandon(&mut self, config: &Config) {
        if self.utterance.take().is_some() {
            let session = self.session;
            engine::with_loaded(config, |e| e.abandon(session));
        }
    }
}

/// The transcript of a decoded utterance that ran from `start` to `end` (samples).
fn transcript(decoded: &Decoded, frame_rate: u32, start: u64, end: u64, why: End) -> Transcript {
    let start_ms = ms(start);
    let frame_ms = |frame: i32| start_ms.saturating_add(u32::try_from(frame.max(0)).unwrap_or(0) * 1000 / frame_rate);
    let words = decoded
        .segments
        .iter()
        .filter(|s| !is_filler(&s.word))
        .map(|s| Word {
            text: base_word(&s.word).to_string(),
            punctuated: None,
            start_ms: frame_ms(s.start_frame),
            end_ms: frame_ms(s.end_frame.saturating_add(1)),
            confidence: s.confidence,
            speaker: None,
        })
        .collect();
    Transcript {
        text: clean_text(&decoded.hyp),
        confidence: decoded.confidence,
        languages: Vec::new(),
        start_ms,
        duration_ms: ms(end).saturating_sub(start_ms),
        words,
        speech_final: why != End::TooLong,
        from_finalize: why == End::Finalize,
    }
}
