//! The media engine (DESIGN sections 3.5 and 4): codecs, resampling, 20 ms framing, real-time
//! pacing, the play queue, echo, streamed audio, DTMF tones, the mixer, recording, taps of the
//! caller's audio and per-call statistics.
//!
//! Plugins steer calls with media calls (`gatewayd:plugin/media`: answer, play, clear, mark,
//! send-dtmf, echo, record, hangup) and receive media events (mark reached, play finished,
//! frame rejected); audio itself never crosses into Wasm.
//!
//! Layout: the pure parts are sans-IO and unit-tested on their own ([`codec`], [`resample`],
//! [`format`], [`playout`], [`pacer`], [`echo`], [`dtmf`], [`mixer`]); [`call`] is the state of
//! one live call (sources -> [`mixer`] -> sinks) that ties them to a connection, ticked every
//! 20 ms by a [`clock`] on the [`threads`] media runtime. Host code (speech) reaches a call's
//! audio through [`stream_source`] (audio into the call) and [`tap`] (the caller's audio out);
//! [`recording`] writes WAV files on threads of their own. [`MediaEngine`] is the registry the
//! WebSocket server, the plugin host and the speech bridge use.

pub mod call;
pub mod clock;
pub mod codec;
pub mod dtmf;
pub mod echo;
pub mod files;
pub mod format;
pub mod mixer;
pub mod pacer;
pub mod playout;
pub mod recording;
pub mod resample;
pub mod stats;
pub mod stream_source;
pub mod tap;
pub mod threads;
pub mod twilio;

use crate::bus::{Bus, ConnId};
use call::{Call, CallSetup, Command};
use clock::CallCell;
use codec::{Codec, OPUS_MAX_PACKET};
use dashmap::DashMap;
use format::{CodecName, Format, Framing};
use parking_lot::Mutex;
use stats::CallStats;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::mpsc;

/// What a call reports to its plugin (`media-event` in the WIT contract, and the speech
/// events of `speech-handler.on-speech`, delivered in the same order).
#[derive(Debug, Clone, PartialEq)]
pub enum MediaEvent {
    /// Everything queued before `mark(name)` has been sent to the caller.
    Mark(String),
    /// The play queue ran empty after playing audio.
    PlayFinished,
    /// A caller frame was refused (why): wrong size for the route's format, or undecodable.
    FrameRejected(String),
    /// Speech on the call (transcripts, speech errors: `speech::calls`).
    Speech(crate::speech::CallSpeechEvent),
}

/// What happened to a caller's binary frame.
#[derive(Debug)]
pub enum FrameOutcome {
    /// The call is not answered (or has been hung up): the frame is the plugin's business.
    NotAnswered,
    /// Taken by the call (or dropped and counted when its echo buffer was full).
    Accepted,
    /// Refused, with the reason, to be reported to the plugin.
    Rejected(String),
    /// Refused and counted, not reported: the call's last report was less than
    /// [`REJECT_REPORT_EVERY`] ago.
    RejectedQuietly,
}

/// Refused caller audio is reported to the plugin at most this often per call (a client that
/// sends only bad chunks raises one plugin event a second, not fifty).
pub const REJECT_REPORT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Per-plugin media settings (`[plugins.<name>.media]`).
#[derive(Debug, Clone, Default)]
pub struct PluginMedia {
    /// Directory for `record` files; recording is refused without one.
    pub recordings_dir: Option<PathBuf>,
    /// Record every call from `answer` on.
    pub record_calls: bool,
    /// Keep utterances' audio for `said-audio`.
    pub keep_said_audio: bool,
}

/// What the media engine made of a text message on a media route.
#[derive(Debug)]
pub enum TextOutcome {
    /// The plugin's (`on-text`): binary framing, or a Twilio message other than `media`/`mark`.
    Plugin,
    /// Taken by the engine (Twilio `media` or `mark`).
    Taken,
    /// A bad Twilio `media`/`mark`, to be reported to the plugin (`frame-rejected`).
    Rejected(String),
}

impl From<FrameOutcome> for TextOutcome {
    /// Twilio audio was handled like a binary frame: taken (or dropped before the call was
    /// answered: never the plugin's, it is JSON audio), or refused and reported.
    fn from(outcome: FrameOutcome) -> TextOutcome {
        match outcome {
            FrameOutcome::Rejected(reason) => TextOutcome::Rejected(reason),
            _ => TextOutcome::Taken,
        }
    }
}

/// Audio handed to a call with `feed-caller-audio` at once, at most: 1 s (what a tap holds,
/// [`tap::TAP_FRAMES`]), so none of it is dropped on the way to a recogniser.
pub const MAX_FED_MS: usize = 1000;

/// A connection on a media route.
struct Entry {
    plugin: Arc<str>,
    format: Format,
    framing: Framing,
    /// The Twilio stream id from `start`, once it came.
    stream_sid: Mutex<Option<Arc<str>>>,
    events: mpsc::UnboundedSender<MediaEvent>,
    live: Mutex<Option<Live>>,
}

/// The running media session of an answered call.
struct Live {
    call: Arc<CallCell>,
    stats: Arc<CallStats>,
    /// When refused audio was last reported to the plugin.
    reported_at: Option<std::time::Instant>,
}

impl Live {
    /// Count refused caller audio; report it (`Rejected`) at most once per
    /// [`REJECT_REPORT_EVERY`].
    fn refuse(&mut self, reason: String) -> FrameOutcome {
        CallStats::add(&self.stats.rejected_frames, 1);
        let now = std::time::Instant::now();
        if self.reported_at.is_some_and(|at| now.duration_since(at) < REJECT_REPORT_EVERY) {
            return FrameOutcome::RejectedQuietly;
        }
        self.reported_at = Some(now);
        FrameOutcome::Rejected(reason)
    }

    /// End the call: the clock forgets it, its figures are logged.
    fn end(self) {
        if let Some(call) = self.call.lock().take() {
            call.finish();
        }
    }
}

/// The registry of calls. One per daemon.
pub struct MediaEngine {
    bus: Arc<Bus>,
    calls: DashMap<ConnId, Arc<Entry>>,
    files: files::FileLibrary,
    plugins: DashMap<String, PluginMedia>,
    threads: threads::MediaThreads,
}

impl MediaEngine {
    pub fn new(bus: Arc<Bus>, threads: threads::MediaThreads) -> MediaEngine {
        MediaEngine {
            bus,
            calls: DashMap::new(),
            files: files::FileLibrary::default(),
            plugins: DashMap::new(),
            threads,
        }
    }

    /// Set up `plugin`'s media: read its audio files and create its recordings directory.
    pub fn configure_plugin(
        &self,
        plugin: &str,
        files: &std::collections::BTreeMap<String, PathBuf>,
        settings: PluginMedia,
    ) -> Result<(), String> {
        for (name, file) in files {
            self.files.load(plugin, name, file).map_err(|e| format!("plugins.{plugin}.media.files.{name}: {e}"))?;
        }
        if let Some(dir) = &settings.recordings_dir {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("plugins.{plugin}.media.recordings_dir: {}: {e}", dir.display()))?;
        }
        self.plugins.insert(plugin.to_string(), settings);
        Ok(())
    }

    /// Register connection `id` of `plugin` on a media route with wire `format`; media events
    /// go to `events`. The call has no media session until the plugin answers.
    pub fn register(
        &self,
        id: ConnId,
        plugin: &str,
        format: Format,
        framing: Framing,
        events: mpsc::UnboundedSender<MediaEvent>,
    ) {
        let entry = Entry {
            plugin: plugin.into(),
            format,
            framing,
            stream_sid: Mutex::new(None),
            events,
            live: Mutex::new(None),
        };
        self.calls.insert(id, Arc::new(entry));
    }

    /// The media runtime, where calls' connections run.
    pub fn runtime(&self) -> tokio::runtime::Handle {
        self.threads.handle()
    }

    /// Forget connection `id`; its media session, if any, ends.
    pub fn unregister(&self, id: ConnId) {
        if let Some((_, entry)) = self.calls.remove(&id)
            && let Some(live) = entry.live.lock().take()
        {
            live.end();
        }
    }

    fn call(&self, id: ConnId, plugin: &str) -> Result<Arc<Entry>, String> {
        match self.calls.get(&id) {
            Some(c) if &*c.plugin == plugin => Ok(c.clone()),
            _ => Err(format!("connection {id} is not a call on one of this plugin's media routes")),
        }
    }

    /// Start the media session of call `id` (answer). Answering twice is not an error.
    pub fn answer(&self, id: ConnId, plugin: &str) -> Result<(), String> {
        let call = self.call(id, plugin)?;
        let mut live = call.live.lock();
        if live.is_some() {
            return Ok(());
        }
        let codec = Codec::new(call.format).map_err(|e| e.to_string())?;
        let recorder = match self.plugins.get(plugin).filter(|p| p.record_calls) {
            Some(_) => Some(self.new_recorder(id, &call)?),
            None => None,
        };
        let stats = Arc::new(CallStats::default());
        let setup = CallSetup {
            id,
            format: call.format,
            codec,
            bus: self.bus.clone(),
            stats: stats.clone(),
            events: call.events.clone(),
            recorder,
            framing: call.framing,
            stream_sid: call.stream_sid.lock().clone(),
            keep_said_audio: self.plugins.get(plugin).is_some_and(|p| p.keep_said_audio),
        };
        let cell = Arc::new(CallCell::new(Some(Call::new(setup))));
        self.threads.clock().add(cell.clone());
        *live = Some(Live { call: cell, stats, reported_at: None });
        Ok(())
    }

    /// Hand a caller's binary message (any number of whole samples; one packet for Opus) to
    /// its call, which cuts it into 20 ms frames ([`Call::audio`]).
    pub fn push_frame(&self, id: ConnId, chunk: &[u8]) -> FrameOutcome {
        let Some(call) = self.calls.get(&id).map(|c| c.clone()) else { return FrameOutcome::NotAnswered };
        let mut live = call.live.lock();
        let Some(live) = live.as_mut() else { return FrameOutcome::NotAnswered };
        if let Err(reason) = check_chunk(call.format, chunk.len()) {
            return live.refuse(reason);
        }
        CallStats::add(&live.stats.bytes_in, chunk.len() as u64);
        if let Some(c) = live.call.lock().as_mut() {
            let frames = c.audio(chunk);
            CallStats::add(&live.stats.frames_in, frames as u64);
        }
        FrameOutcome::Accepted
    }

    /// A text message of connection `id`, if it is a call: on a Twilio route `media` goes to
    /// the call (dropped and counted before it is answered), a `mark` echo is matched against
    /// the marks sent, and `start` sets the stream's id and answers the call before the plugin
    /// sees it (see [`twilio`]).
    pub fn push_text(&self, id: ConnId, text: &str) -> TextOutcome {
        let Some(call) = self.calls.get(&id).map(|c| c.clone()) else { return TextOutcome::Plugin };
        if call.framing != Framing::Twilio {
            return TextOutcome::Plugin;
        }
        match twilio::parse(text) {
            Ok(twilio::Inbound::Media(audio)) => self.push_frame(id, &audio).into(),
            Ok(twilio::Inbound::Mark(name)) => {
                let _ = self.with_call(id, |c| {
                    c.mark_echoed(&name);
                    Ok(())
                });
                TextOutcome::Taken
            }
            Ok(twilio::Inbound::Start { stream_sid }) => {
                let sid: Arc<str> = stream_sid.into();
                *call.stream_sid.lock() = Some(sid.clone());
                match self.answer(id, &call.plugin) {
                    Ok(()) => {
                        let _ = self.with_call(id, |c| {
                            c.set_stream_sid(sid);
                            Ok(())
                        });
                    }
                    Err(e) => tracing::warn!(call = id, error = %e, "could not answer a Twilio stream"),
                }
                TextOutcome::Plugin
            }
            Ok(twilio::Inbound::Other) => TextOutcome::Plugin,
            // Refused like a bad binary frame: counted, reported at most once a second.
            Err(reason) => match call.live.lock().as_mut() {
                Some(live) => live.refuse(reason).into(),
                None => TextOutcome::Taken,
            },
        }
    }

    /// Take the audio of call `id`'s finished utterance with mark `mark` (`said-audio`).
    pub fn said_audio(&self, id: ConnId, plugin: &str, mark: &str) -> Option<Vec<u8>> {
        self.call(id, plugin).ok()?;
        self.with_call(id, |c| Ok(c.take_said_audio(mark))).ok().flatten()
    }

    /// Hand `audio` (`pcmu`, `pcma` or `l16` little-endian at `rate` Hz) to call `id` as the
    /// caller's (`feed-caller-audio`): resampled to the call's rate and cut into 20 ms frames
    /// for its taps and recording. Err: not an answered call of `plugin`, a bad codec or rate,
    /// more than [`MAX_FED_MS`] of audio.
    pub fn feed_caller_audio(
        &self,
        id: ConnId,
        plugin: &str,
        audio: &[u8],
        codec: &str,
        rate: u32,
    ) -> Result<(), String> {
        let format = self.call(id, plugin)?.format;
        if !(1..=48_000).contains(&rate) {
            return Err(format!("rate {rate} Hz is out of range (1..=48000)"));
        }
        let samples = decode_linear(audio, codec)?;
        if samples.len() > rate as usize * MAX_FED_MS / 1000 {
            let ms = samples.len() as u64 * 1000 / u64::from(rate);
            return Err(format!("{ms} ms of audio at once; at most {MAX_FED_MS} ms (send it as it is captured)"));
        }
        let samples = resample::resample_clip(&samples, rate, format.rate)?;
        let n = format.frame_samples();
        self.with_call(id, |c| {
            for chunk in samples.chunks(n) {
                let mut frame = chunk.to_vec();
                frame.resize(n, 0);
                c.caller_pcm(&frame);
            }
            Ok(())
        })
    }

    fn command(&self, id: ConnId, plugin: &str, command: Command) -> Result<(), String> {
        let call = self.call(id, plugin)?;
        let live = call.live.lock();
        let live = live.as_ref().ok_or_else(|| format!("call {id} is not answered"))?;
        let mut call = live.call.lock();
        call.as_mut().ok_or_else(|| format!("call {id} has ended"))?.command(command);
        Ok(())
    }

    /// Queue `plugin`'s audio file `name`.
    pub fn play_file(&self, id: ConnId, plugin: &str, name: &str) -> Result<(), String> {
        let rate = self.call(id, plugin)?.format.rate;
        let samples = self.files.get(plugin, name, rate)?;
        self.command(id, plugin, Command::Play(samples))
    }

    /// Queue raw audio in `codec` at `rate` Hz (`pcmu`, `pcma`, `l16` little-endian).
    pub fn play_bytes(&self, id: ConnId, plugin: &str, audio: &[u8], codec: &str, rate: u32) -> Result<(), String> {
        let session_rate = self.call(id, plugin)?.format.rate;
        let samples = decode_linear(audio, codec)?;
        if rate == 0 || rate > 192_000 {
            return Err(format!("rate {rate} Hz is out of range"));
        }
        let samples = resample::resample_clip(&samples, rate, session_rate)?;
        self.command(id, plugin, Command::Play(samples.into()))
    }

    /// Queue DTMF tones for `digits`, each `duration_ms` long.
    pub fn send_dtmf(&self, id: ConnId, plugin: &str, digits: &str, duration_ms: u32) -> Result<(), String> {
        let rate = self.call(id, plugin)?.format.rate;
        let samples = dtmf::tones(digits, duration_ms, rate)?;
        self.command(id, plugin, Command::Play(samples.into()))
    }

    pub fn clear(&self, id: ConnId, plugin: &str) -> Result<(), String> {
        self.command(id, plugin, Command::Clear)
    }

    pub fn mark(&self, id: ConnId, plugin: &str, name: String) -> Result<(), String> {
        self.command(id, plugin, Command::Mark(name))
    }

    pub fn echo(&self, id: ConnId, plugin: &str, on: bool) -> Result<(), String> {
        self.command(id, plugin, Command::Echo(on))
    }

    /// Start recording call `id` (returns the file's path) or stop (returns an empty string).
    pub fn record(&self, id: ConnId, plugin: &str, on: bool) -> Result<String, String> {
        if !on {
            return self.command(id, plugin, Command::Record(None)).map(|_| String::new());
        }
        let call = self.call(id, plugin)?;
        let recorder = self.new_recorder(id, &call)?;
        let path = recorder.path().display().to_string();
        self.command(id, plugin, Command::Record(Some(recorder)))?;
        Ok(path)
    }

    fn new_recorder(&self, id: ConnId, call: &Entry) -> Result<recording::Recorder, String> {
        let dir = self
            .plugins
            .get(&*call.plugin)
            .and_then(|p| p.recordings_dir.clone())
            .ok_or_else(|| format!("recording needs [plugins.{}.media] recordings_dir", call.plugin))?;
        let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis();
        recording::Recorder::create(&dir.join(format!("{}-{id}-{stamp}.wav", call.plugin)), call.format.rate)
    }

    /// End call `id`'s media session (queued audio is dropped). Later frames go to the plugin.
    pub fn hangup(&self, id: ConnId, plugin: &str) -> Result<(), String> {
        if let Some(live) = self.call(id, plugin)?.live.lock().take() {
            live.end();
        }
        Ok(())
    }

    /// Run `f` on connection `id`'s live call. Err: not a call on a media route, not
    /// answered, or ended.
    fn with_call<T>(&self, id: ConnId, f: impl FnOnce(&mut Call) -> Result<T, String>) -> Result<T, String> {
        let entry = self.calls.get(&id).map(|c| c.clone()).ok_or_else(|| format!("connection {id} is not a call"))?;
        let live = entry.live.lock();
        let live = live.as_ref().ok_or_else(|| format!("call {id} is not answered"))?;
        let mut call = live.call.lock();
        f(call.as_mut().ok_or_else(|| format!("call {id} has ended"))?)
    }

    /// Where call `id` of `plugin` reports its events (to be dispatched to the plugin in
    /// order). Err: not a call of `plugin`.
    pub fn event_sender(&self, id: ConnId, plugin: &str) -> Result<mpsc::UnboundedSender<MediaEvent>, String> {
        Ok(self.call(id, plugin)?.events.clone())
    }

    /// The wire format of connection `id`, if it is a call on a media route.
    pub fn format(&self, id: ConnId) -> Option<Format> {
        self.calls.get(&id).map(|c| c.format)
    }

    /// Open a stream of audio into answered call `id` (e.g. streamed TTS): PCM written to the
    /// returned writer as `encoding` (`pcmu`, `pcma`, `l16`) at `rate` Hz (1..=192000) is
    /// converted to the call's rate and played from the next slot on, mixed with the play
    /// queue and the echo; `mark` is reported as [`MediaEvent::Mark`] once all of it has been
    /// sent. `clear` drops the stream (see [`stream_source`]). Err: not an answered call, an
    /// unknown encoding, a rate out of range, or [`call::MAX_STREAMS`] streams already.
    pub fn open_stream(
        &self,
        id: ConnId,
        encoding: &str,
        rate: u32,
        mark: Option<String>,
    ) -> Result<stream_source::StreamWriter, String> {
        let format = self.format(id).ok_or_else(|| format!("connection {id} is not a call"))?;
        let encoding = CodecName::parse(encoding).ok_or_else(|| format!("unknown audio encoding `{encoding}`"))?;
        // The resampler is built here, not under the call's lock.
        let (writer, source) = stream_source::open(format.rate, encoding, rate, mark)?;
        self.with_call(id, |c| c.add_stream(source))?;
        Ok(writer)
    }

    /// Tap answered call `id`'s caller audio: decoded 20 ms frames converted to `rate_hz`
    /// (a multiple of 50, e.g. 16000 for a recogniser), through a queue of
    /// [`tap::TAP_FRAMES`] frames that drops (counted in the call's stats) when the reader is
    /// behind. Err: not an answered call, a bad rate, or [`tap::MAX_TAPS`] taps already.
    pub fn tap(&self, id: ConnId, rate_hz: u32) -> Result<tap::PcmTap, String> {
        let format = self.format(id).ok_or_else(|| format!("connection {id} is not a call"))?;
        let pending = tap::PendingTap::new(format.rate, rate_hz)?;
        self.with_call(id, |c| c.attach_tap(pending))
    }

    /// Tap answered call `id`'s caller frames untouched, when its route carries G.711 mu-law
    /// (160 bytes per 20 ms at 8 kHz); dropping and counting as [`MediaEngine::tap`]. Err: not
    /// an answered call, another codec, or too many taps.
    pub fn tap_mulaw(&self, id: ConnId) -> Result<mpsc::Receiver<bytes::Bytes>, String> {
        self.with_call(id, |c| c.tap_mulaw())
    }

    /// Statistics of call `id`'s media session, while it runs.
    pub fn stats(&self, id: ConnId) -> Option<stats::StatsSnapshot> {
        let call = self.calls.get(&id)?.clone();
        let live = call.live.lock();
        live.as_ref().map(|l| l.stats.snapshot())
    }
}

/// Decode `pcmu`, `pcma` or `l16` (little-endian) bytes to linear samples. Err: another codec,
/// or L16 with an odd number of bytes.
fn decode_linear(audio: &[u8], codec: &str) -> Result<Vec<i16>, String> {
    Ok(match CodecName::parse(codec) {
        Some(CodecName::Pcmu) => audio.iter().map(|&b| codec::ulaw_to_linear(b)).collect(),
        Some(CodecName::Pcma) => audio.iter().map(|&b| codec::alaw_to_linear(b)).collect(),
        Some(CodecName::L16) if audio.len().is_multiple_of(2) => {
            audio.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect()
        }
        Some(CodecName::L16) => return Err("l16 audio must have an even number of bytes".into()),
        _ => return Err(format!("audio must be pcmu, pcma or l16, not `{codec}`")),
    })
}

/// Is a caller frame of `len` bytes acceptable for `format`?
/// A caller chunk must hold whole samples (G.711: any non-empty chunk; L16: an even number of
/// bytes) or, for Opus, be one packet.
fn check_chunk(format: Format, len: usize) -> Result<(), String> {
    let sample_bytes = match format.codec {
        CodecName::Pcmu | CodecName::Pcma => 1,
        CodecName::L16 => 2,
        CodecName::Opus if (1..=OPUS_MAX_PACKET).contains(&len) => return Ok(()),
        CodecName::Opus => return Err(format!("an Opus packet of {len} bytes (1..={OPUS_MAX_PACKET} expected)")),
    };
    if len > 0 && len.is_multiple_of(sample_bytes) {
        Ok(())
    } else {
        Err(format!(
            "a chunk of {len} bytes; this call's audio is {} at {} Hz: whole {sample_bytes}-byte samples expected",
            format.codec.name(),
            format.rate
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_must_hold_whole_samples() {
        let l16 = Format::new(CodecName::L16, 8000).unwrap();
        for ok in [2, 160, 320, 640, 4000] {
            assert!(check_chunk(l16, ok).is_ok(), "{ok}");
        }
        let e = check_chunk(l16, 321).unwrap_err();
        assert!(e.contains("321 bytes") && e.contains("l16 at 8000 Hz") && e.contains("2-byte samples"), "{e}");
        assert!(check_chunk(l16, 0).is_err());
        assert!(check_chunk(Format::new(CodecName::Pcmu, 8000).unwrap(), 1).is_ok());
        assert!(check_chunk(Format::new(CodecName::Pcma, 8000).unwrap(), 0).is_err());
        let opus = Format::new(CodecName::Opus, 48000).unwrap();
        assert!(check_chunk(opus, 1).is_ok() && check_chunk(opus, 1275).is_ok());
        assert!(check_chunk(opus, 0).is_err() && check_chunk(opus, 1276).is_err());
    }

    #[test]
    fn streams_and_taps_by_connection_on_the_media_clock() {
        use crate::bus::{ConnParts, Outbox};
        use std::time::Duration;
        const WAIT: Duration = Duration::from_secs(10);
        let bus = Arc::new(Bus::new());
        let outbox = Arc::new(Outbox::new(1000, 1 << 20));
        let id = bus.register(ConnParts { plugin: "ivr".into(), outbox, session: Arc::default() });
        let engine = MediaEngine::new(
            bus,
            threads::MediaThreads::start(&crate::config::MediaConfig {
                threads: 1,
                realtime_priority: 0,
                coalesce_us: 0,
            })
            .unwrap(),
        );
        let (tx, mut events) = mpsc::unbounded_channel();
        engine.register(id, "ivr", Format::new(CodecName::Pcmu, 8000).unwrap(), Framing::Binary, tx);
        assert!(engine.tap(id, 16000).unwrap_err().contains("not answered"));
        assert!(engine.tap(id + 1, 16000).is_err() && engine.open_stream(id + 1, "l16", 8000, None).is_err());
        engine.answer(id, "ivr").unwrap();
        let mut tap = engine.tap(id, 16000).unwrap();
        let mut raw = engine.tap_mulaw(id).unwrap();
        assert!(engine.open_stream(id, "opus", 8000, None).is_err());
        let mut stream = engine.open_stream(id, "l16", 24000, Some("spoken".into())).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            assert!(matches!(engine.push_frame(id, &[0x80; 160]), FrameOutcome::Accepted));
            assert_eq!(tokio::time::timeout(WAIT, raw.recv()).await.unwrap().unwrap(), vec![0x80; 160]);
            // 100 ms at 24 kHz, streamed in odd pieces, then its mark from the clock.
            for piece in vec![1000i16; 2400].chunks(333) {
                stream.write(piece).await.unwrap();
            }
            stream.finish().await.unwrap();
            let event = tokio::time::timeout(WAIT, events.recv()).await.unwrap();
            assert_eq!(event, Some(MediaEvent::Mark("spoken".into())));
            engine.hangup(id, "ivr").unwrap();
            let mut frames = 0;
            while let Some(frame) = tokio::time::timeout(WAIT, tap.recv()).await.unwrap() {
                assert_eq!(frame.len(), 320);
                frames += 1;
            }
            assert_eq!(frames, 1, "one caller frame, at 16 kHz; the tap ends with the call");
        });
        assert!(engine.tap(id, 16000).is_err(), "hung up");
    }
}
