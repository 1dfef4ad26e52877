//! The state of one live call: sources -> mixer -> sinks, its codec and pacer.
//!
//! Sources ([`super::mixer::Source`]): the play queue (files, bytes, DTMF tones, marks), the
//! echo of the caller, streams ([`super::stream_source`], e.g. streamed TTS; one at a time, in
//! the order they were opened, so a call's utterances never overlap). Sinks: the wire
//! (each mixed frame encoded and sent to the caller), the recorder (both directions, queued to
//! a writer thread) and taps of the caller's audio ([`super::tap`]). No sink can hold up a slot:
//! the wire is the connection's bounded outbox, the recorder and the taps are bounded queues
//! that drop and count when full.
//!
//! A call has no task of its own. The connection's reader hands it the caller's frames
//! ([`Call::frame`]), the plugin's media calls change it ([`Call::command`]), and the media
//! [`super::clock`] calls [`Call::tick`] once per 20 ms slot: all three under the call's lock,
//! each for a few microseconds. So a frame costs no task wake-up on the way in, and a slot no
//! timer of its own; a command takes effect before the next slot.

use super::MediaEvent;
use super::codec::Codec;
use super::echo::EchoBuffer;
use super::format::{CodecName, FRAME, Format, Framing};
use super::mixer::{Mixer, Source};
use super::pacer::Pacer;
use super::playout::{PlayQueue, Reached};
use super::recording::Recorder;
use super::stats::CallStats;
use super::stream_source::{self, StreamSource, StreamWriter};
use super::tap::{PcmTap, PendingTap, Taps};
use super::twilio;
use crate::bus::{Bus, ConnId, Outbound};
use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// A plugin's media call, applied to the call at once.
pub enum Command {
    /// Queue audio at the session rate.
    Play(Arc<[i16]>),
    /// Queue a mark.
    Mark(String),
    /// Drop everything queued (barge-in), echo backlog included.
    Clear,
    /// Turn echo of the caller's audio on or off.
    Echo(bool),
    /// Start (replacing any running one) or stop recording.
    Record(Option<Recorder>),
}

/// Streams a call may have open: the one playing and those waiting for it to end.
pub const MAX_STREAMS: usize = 4;

/// Utterances whose audio a call keeps for `said-audio` (the oldest goes first).
pub const MAX_SAID: usize = 4;
/// Longest audio kept of one utterance (`said-audio`), in 20 ms frames: 30 s.
pub const MAX_SAID_FRAMES: usize = 1500;

/// The wire side of a Twilio Media Stream: its id (from `start`; nothing is sent before it)
/// and the marks sent and not yet echoed.
#[derive(Default)]
struct TwilioWire {
    stream_sid: Option<Arc<str>>,
    marks: twilio::Marks,
}

/// The audio of finished `say` utterances (`said-audio`), as sent on the wire.
#[derive(Default)]
struct SaidAudio {
    /// The utterance playing now.
    current: Vec<u8>,
    /// Finished utterances by mark, oldest first.
    kept: VecDeque<(String, Vec<u8>)>,
}

/// One answered call.
pub struct Call {
    id: ConnId,
    format: Format,
    codec: Codec,
    bus: Arc<Bus>,
    stats: Arc<CallStats>,
    events: mpsc::UnboundedSender<MediaEvent>,
    recorder: Option<Recorder>,
    queue: PlayQueue,
    echo: bool,
    echo_buf: EchoBuffer,
    /// Open streams in the order they were opened; only the first plays.
    streams: VecDeque<StreamSource>,
    mixer: Mixer,
    taps: Taps,
    /// Caller audio not yet written to the recording.
    to_record: VecDeque<i16>,
    /// Fixed-size codecs: the start of a frame whose rest has not arrived (fewer bytes than a
    /// frame; see [`Call::audio`]).
    partial: Vec<u8>,
    /// Reused buffers: decoded caller frame, outgoing frame, encoded outgoing frame.
    pcm: Vec<i16>,
    out: Vec<i16>,
    reached: Vec<Reached>,
    pacer: Pacer,
    delays: DelayHistogram,
    /// Twilio framing (`framing = "twilio"`); none: binary audio messages.
    twilio: Option<TwilioWire>,
    /// `keep_said_audio`: the audio of utterances with a mark.
    said: Option<SaidAudio>,
}

/// What a call needs at answer.
pub struct CallSetup {
    pub id: ConnId,
    pub format: Format,
    pub codec: Codec,
    pub bus: Arc<Bus>,
    pub stats: Arc<CallStats>,
    pub events: mpsc::UnboundedSender<MediaEvent>,
    pub recorder: Option<Recorder>,
    /// How audio travels on the socket, and the Twilio stream id when already known.
    pub framing: Framing,
    pub stream_sid: Option<Arc<str>>,
    /// Keep utterances' audio for `said-audio` (G.711 and L16 routes).
    pub keep_said_audio: bool,
}

impl Call {
    /// A call whose first slot is one frame from now.
    pub fn new(setup: CallSetup) -> Call {
        let n = setup.format.frame_samples();
        Call {
            id: setup.id,
            format: setup.format,
            codec: setup.codec,
            bus: setup.bus,
            stats: setup.stats,
            events: setup.events,
            recorder: setup.recorder,
            queue: PlayQueue::new(n),
            echo: false,
            echo_buf: EchoBuffer::default(),
            streams: VecDeque::new(),
            mixer: Mixer::new(n),
            taps: Taps::default(),
            to_record: VecDeque::new(),
            partial: Vec::new(),
            pcm: Vec::with_capacity(n),
            out: Vec::with_capacity(n),
            reached: Vec::new(),
            pacer: Pacer::new(Instant::now() + FRAME),
            delays: DelayHistogram::default(),
            twilio: (setup.framing == Framing::Twilio)
                .then(|| TwilioWire { stream_sid: setup.stream_sid, marks: twilio::Marks::default() }),
            said: (setup.keep_said_audio && setup.format.codec != CodecName::Opus).then(SaidAudio::default),
        }
    }

    /// Twilio's `start` named the stream: audio and marks are sent with its id from now on.
    pub fn set_stream_sid(&mut self, sid: Arc<str>) {
        if let Some(t) = self.twilio.as_mut() {
            t.stream_sid = Some(sid);
        }
    }

    /// Twilio echoed mark `name`: reported when we sent it and have not cleared since.
    pub fn mark_echoed(&mut self, name: &str) {
        if let Some(t) = self.twilio.as_mut()
            && t.marks.echoed(name)
        {
            let _ = self.events.send(MediaEvent::Mark(name.to_string()));
        }
    }

    /// Take the kept audio of the utterance whose mark was `mark` (`said-audio`).
    pub fn take_said_audio(&mut self, mark: &str) -> Option<Vec<u8>> {
        let said = self.said.as_mut()?;
        let i = said.kept.iter().position(|(m, _)| m == mark)?;
        said.kept.remove(i).map(|(_, audio)| audio)
    }

    /// Audio that stands for the caller's (`feed-caller-audio`): 20 ms frames at the call's
    /// rate, to the taps and the recording, not the echo.
    pub fn caller_pcm(&mut self, frame: &[i16]) {
        let n = self.format.frame_samples();
        if self.recorder.is_some() && self.to_record.len() < n * super::echo::MAX_FRAMES {
            self.to_record.extend(frame.iter().copied());
        }
        if !self.taps.is_empty() {
            let wire: Vec<u8> = match self.format.codec {
                CodecName::Pcmu => frame.iter().map(|&s| super::codec::linear_to_ulaw(s)).collect(),
                _ => Vec::new(),
            };
            let dropped = self.taps.feed(&wire, frame);
            CallStats::add(&self.stats.tap_dropped_frames, dropped);
        }
    }

    /// Send a text message of the Twilio framing, when the stream's id is known.
    fn send_twilio(&self, message: impl FnOnce(&str) -> Bytes) -> bool {
        match self.twilio.as_ref().and_then(|t| t.stream_sid.as_deref()) {
            Some(sid) => self.bus.send(self.id, Outbound::Text(message(sid))),
            None => false,
        }
    }

    /// When the next frame is due.
    pub fn deadline(&self) -> Instant {
        self.pacer.deadline()
    }

    pub fn command(&mut self, command: Command) {
        match command {
            Command::Play(samples) => self.queue.push_audio(samples),
            Command::Mark(name) => self.queue.push_mark(name),
            Command::Clear => {
                self.queue.clear();
                self.echo_buf.clear();
                // Dropping a stream's source closes it: its writer's next write fails.
                self.streams.clear();
                if let Some(said) = self.said.as_mut() {
                    said.current.clear();
                }
                // Twilio drops what it has buffered; the echoes of pending marks mean nothing.
                self.send_twilio(twilio::clear);
                if let Some(t) = self.twilio.as_mut() {
                    t.marks.clear();
                }
            }
            Command::Echo(on) => {
                self.echo = on;
                if !on {
                    self.echo_buf.clear();
                }
            }
            Command::Record(r) => {
                if let Some(old) = std::mem::replace(&mut self.recorder, r) {
                    old.finish();
                }
                self.to_record.clear();
            }
        }
    }

    /// The call's audio format.
    pub fn format(&self) -> Format {
        self.format
    }

    /// Open a stream into the call: audio written to the returned writer as `encoding`
    /// (`pcmu`, `pcma`, `l16`) at `rate` Hz plays once the streams opened before it have
    /// ended (from the next slot on when there are none), mixed with the play queue and the
    /// echo; `mark` is reported when all of it has been sent. Until it plays, its writer may
    /// fill its queue ([`stream_source::STREAM_FRAMES`]) ahead: the next utterance's vendor
    /// request runs while the current one plays (a writer waiting for room longer than
    /// [`stream_source::WRITE_TIMEOUT`] fails `Stalled`, so open a stream ahead of the one
    /// playing only when that one has at most about a second left to play, as the speech
    /// speaker does: it opens the next once the current one's audio has all been written).
    /// Err: see [`stream_source::open`], or
    /// [`MAX_STREAMS`] streams already open.
    pub fn open_stream(
        &mut self,
        encoding: CodecName,
        rate: u32,
        mark: Option<String>,
    ) -> Result<StreamWriter, String> {
        let (writer, source) = stream_source::open(self.format.rate, encoding, rate, mark)?;
        self.add_stream(source)?;
        Ok(writer)
    }

    /// Play a stream opened with [`stream_source::open`] at this call's rate (so the resampler
    /// is built outside the call's lock), after the streams opened before it. Err:
    /// [`MAX_STREAMS`] streams already open.
    pub fn add_stream(&mut self, source: StreamSource) -> Result<(), String> {
        if self.streams.len() >= MAX_STREAMS {
            return Err(format!("call {} already has {MAX_STREAMS} streams open", self.id));
        }
        self.streams.push_back(source);
        Ok(())
    }

    /// Tap the caller's audio, decoded and converted to `rate` Hz (see [`super::tap`]).
    /// Err: a rate that is not a multiple of 50 Hz or out of range, or too many taps.
    pub fn tap(&mut self, rate: u32) -> Result<PcmTap, String> {
        self.taps.attach(PendingTap::new(self.format.rate, rate)?)
    }

    /// Tap the caller's frames as received (G.711 mu-law routes only: one 160-byte frame per
    /// 20 ms at 8 kHz). Err: another codec, or too many taps.
    pub fn tap_mulaw(&mut self) -> Result<mpsc::Receiver<Bytes>, String> {
        if self.format.codec != CodecName::Pcmu {
            return Err(format!("call {} carries {}, not pcmu: use a decoded tap", self.id, self.format.codec.name()));
        }
        self.taps.add_wire()
    }

    /// Attach a decoded-audio tap built for this call's rate outside the call's lock. Err: too
    /// many taps.
    pub fn attach_tap(&mut self, tap: PendingTap) -> Result<PcmTap, String> {
        self.taps.attach(tap)
    }

    /// A chunk of caller audio (checked by the media engine to hold whole samples, or one Opus
    /// packet). Fixed-size codecs (G.711, L16) are re-framed: a chunk may carry any number of
    /// samples, its bytes are cut into 20 ms frames, and a remainder shorter than a frame waits
    /// for the next chunk. Returns the number of whole frames taken.
    pub fn audio(&mut self, chunk: &[u8]) -> usize {
        let Some(frame_bytes) = self.codec.frame_bytes(self.format.frame_samples()) else {
            self.frame(chunk);
            return 1;
        };
        let mut rest = chunk;
        let mut frames = 0;
        if !self.partial.is_empty() {
            let take = (frame_bytes - self.partial.len()).min(rest.len());
            self.partial.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.partial.len() < frame_bytes {
                return 0;
            }
            let frame = std::mem::take(&mut self.partial);
            self.frame(&frame);
            self.partial = frame;
            self.partial.clear();
            frames += 1;
        }
        let mut whole = rest.chunks_exact(frame_bytes);
        for frame in &mut whole {
            self.frame(frame);
            frames += 1;
        }
        self.partial.extend_from_slice(whole.remainder());
        frames
    }

    /// One caller frame of the call's size: decode it for the echo and the recording.
    fn frame(&mut self, frame: &[u8]) {
        let n = self.format.frame_samples();
        if self.codec.decode(frame, n, &mut self.pcm).is_err() {
            CallStats::add(&self.stats.rejected_frames, 1);
            let _ = self.events.send(MediaEvent::FrameRejected("undecodable audio frame".into()));
            return;
        }
        if self.recorder.is_some() && self.to_record.len() < n * super::echo::MAX_FRAMES {
            self.to_record.extend(self.pcm.iter().copied());
        }
        if !self.taps.is_empty() {
            let dropped = self.taps.feed(frame, &self.pcm);
            CallStats::add(&self.stats.tap_dropped_frames, dropped);
        }
        if self.echo && !self.echo_buf.push(&self.pcm) {
            CallStats::add(&self.stats.dropped_frames, 1);
        }
    }

    /// One 20 ms slot, at `now` (at or after [`Call::deadline`]): mix the sources' frames
    /// (play queue, echo, streams), send the mix, queue both directions for the recording,
    /// then report the marks the sent audio has reached.
    pub fn tick(&mut self, now: Instant) {
        let n = self.format.frame_samples();
        let tick = self.pacer.tick(now);
        let sources = [&mut self.queue as &mut dyn Source, &mut self.echo_buf]
            .into_iter()
            .chain(self.streams.front_mut().map(|s| s as &mut dyn Source));
        self.mixer.mix(sources, &mut self.out);
        CallStats::add(&self.stats.dropped_frames, self.echo_buf.take_trimmed() as u64);
        if !self.out.is_empty() {
            let mut wire = Vec::with_capacity(n * 2);
            self.codec.encode(&self.out, &mut wire);
            let len = wire.len() as u64;
            if let Some(said) = self.said.as_mut()
                && self.streams.front().is_some_and(StreamSource::has_mark)
                && said.current.len() < MAX_SAID_FRAMES * wire.len()
            {
                said.current.extend_from_slice(&wire);
            }
            let sent = match &self.twilio {
                Some(_) => self.send_twilio(|sid| twilio::media(sid, &wire)),
                None => self.bus.send(self.id, Outbound::Binary(Bytes::from(wire))),
            };
            if sent {
                let s = &self.stats;
                CallStats::add(&s.frames_out, 1);
                CallStats::add(&s.bytes_out, len);
                CallStats::add(&s.late_frames, tick.late as u64);
                CallStats::add(&s.skipped_slots, tick.skipped as u64);
                s.max_delay_us.fetch_max(tick.delay.as_micros() as u64, Relaxed);
                self.delays.record(tick.delay);
            }
        }
        if let Some(r) = self.recorder.as_mut() {
            let take = self.to_record.len().min(n);
            let inbound: Vec<i16> = self.to_record.drain(..take).collect();
            if !r.write_block(&inbound, &self.out, n) {
                CallStats::add(&self.stats.recording_dropped_blocks, 1);
            }
        }
        self.reached.clear();
        self.queue.reached(&mut self.reached);
        // Only the playing stream reaches anything: a waiting one's mark (even an empty
        // stream's) comes after the marks of those before it.
        if let Some(s) = self.streams.front_mut() {
            let before = self.reached.len();
            s.reached(&mut self.reached);
            CallStats::add(&self.stats.stream_underruns, s.take_underruns());
            if s.is_done() {
                self.streams.pop_front();
            }
            if let Some(said) = self.said.as_mut() {
                for r in &self.reached[before..] {
                    if let Reached::Mark(name) = r {
                        if said.kept.len() == MAX_SAID {
                            said.kept.pop_front();
                        }
                        said.kept.push_back((name.clone(), std::mem::take(&mut said.current)));
                    }
                }
            }
        }
        let mut reached = std::mem::take(&mut self.reached);
        for r in reached.drain(..) {
            let event = match r {
                // On Twilio a mark is sent on the wire and reported when Twilio echoes it.
                Reached::Mark(name) if self.twilio.is_some() => {
                    if self.send_twilio(|sid| twilio::mark(sid, &name))
                        && let Some(t) = self.twilio.as_mut()
                    {
                        t.marks.sent(name);
                    }
                    continue;
                }
                Reached::Mark(name) => MediaEvent::Mark(name),
                Reached::Finished => MediaEvent::PlayFinished,
            };
            let _ = self.events.send(event);
        }
        self.reached = reached;
    }

    /// The call ends (hang-up or connection closed): close the recording (the returned handle
    /// joins its writer thread; dropping it lets the thread finish alone), end the streams and
    /// taps, log the figures.
    pub fn finish(mut self) -> Option<std::thread::JoinHandle<super::recording::RecordingSummary>> {
        let recording = self.recorder.take().map(Recorder::finish);
        let s = self.stats.snapshot();
        tracing::info!(
            conn = self.id,
            frames_in = s.frames_in,
            frames_out = s.frames_out,
            bytes_in = s.bytes_in,
            bytes_out = s.bytes_out,
            late_frames = s.late_frames,
            skipped_slots = s.skipped_slots,
            dropped_frames = s.dropped_frames,
            rejected_frames = s.rejected_frames,
            stream_underruns = s.stream_underruns,
            tap_dropped_frames = s.tap_dropped_frames,
            recording_dropped_blocks = s.recording_dropped_blocks,
            max_delay_us = s.max_delay_us,
            p99_delay_ms = self.delays.quantile_ms(0.99),
            "media call ended"
        );
        recording
    }
}

/// Delays of a call's sent frames behind their slots, in 1 ms buckets (the last one holds
/// everything from 63 ms up).
pub struct DelayHistogram {
    buckets: [u32; 64],
    count: u32,
}

impl Default for DelayHistogram {
    fn default() -> Self {
        DelayHistogram { buckets: [0; 64], count: 0 }
    }
}

impl DelayHistogram {
    pub fn record(&mut self, delay: std::time::Duration) {
        self.buckets[(delay.as_millis() as usize).min(63)] += 1;
        self.count += 1;
    }

    /// The upper bound, in ms, of the bucket holding quantile `q` (0 when nothing was sent).
    pub fn quantile_ms(&self, q: f64) -> u32 {
        let target = (self.count as f64 * q).ceil() as u32;
        let mut seen = 0;
        for (ms, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= target && seen > 0 {
                return ms as u32 + 1;
            }
        }
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::{ConnParts, Next, Outbox};
    use std::time::Duration;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
    }

    /// A call on a connection of its own, with what it sends and reports.
    struct Fixture {
        call: Call,
        outbox: Arc<Outbox>,
        stats: Arc<CallStats>,
        events: mpsc::UnboundedReceiver<MediaEvent>,
    }

    fn fixture(codec: CodecName, recorder: Option<Recorder>) -> Fixture {
        fixture_framed(codec, recorder, Framing::Binary, false)
    }

    fn fixture_framed(
        codec: CodecName,
        recorder: Option<Recorder>,
        framing: Framing,
        keep_said_audio: bool,
    ) -> Fixture {
        let bus = Arc::new(Bus::new());
        let outbox = Arc::new(Outbox::new(1000, 1 << 20));
        let id = bus.register(ConnParts { plugin: "ivr".into(), outbox: outbox.clone(), session: Arc::default() });
        let format = Format::new(codec, 8000).unwrap();
        let stats = Arc::new(CallStats::default());
        let (tx, events) = mpsc::unbounded_channel();
        let setup = CallSetup {
            id,
            format,
            codec: Codec::new(format).unwrap(),
            bus,
            stats: stats.clone(),
            events: tx,
            recorder,
            framing,
            stream_sid: None,
            keep_said_audio,
        };
        Fixture { call: Call::new(setup), outbox, stats, events }
    }

    impl Fixture {
        /// Run the next slot (on time); the L16 frame it sent, if any.
        fn slot(&mut self) -> Option<Vec<i16>> {
            let sent = self.stats.frames_out.load(Relaxed);
            let due = self.call.deadline();
            self.call.tick(due);
            if self.stats.frames_out.load(Relaxed) == sent {
                return None;
            }
            match block_on(self.outbox.next()) {
                Next::Frame(Outbound::Binary(b)) => {
                    Some(b.chunks_exact(2).map(|p| i16::from_le_bytes([p[0], p[1]])).collect())
                }
                _ => panic!("a binary frame"),
            }
        }

        /// Every text message sent so far, parsed.
        fn texts(&mut self) -> Vec<serde_json::Value> {
            let mut out = Vec::new();
            while self.outbox.queued_frames() > 0 {
                match block_on(self.outbox.next()) {
                    Next::Frame(Outbound::Text(t)) => out.push(serde_json::from_slice(&t).unwrap()),
                    _ => panic!("a text frame"),
                }
            }
            out
        }

        fn events(&mut self) -> Vec<MediaEvent> {
            std::iter::from_fn(|| self.events.try_recv().ok()).collect()
        }
    }

    fn l16(samples: &[i16]) -> Vec<u8> {
        samples.iter().flat_map(|s| s.to_le_bytes()).collect()
    }

    #[test]
    fn a_stream_is_mixed_with_the_queue_and_its_mark_follows_its_last_frame() {
        let mut f = fixture(CodecName::L16, None);
        f.call.command(Command::Play(vec![100; 320].into()));
        let mut w = f.call.open_stream(CodecName::L16, 8000, Some("said".into())).unwrap();
        block_on(async {
            w.write(&[10; 400]).await.unwrap();
            w.finish().await.unwrap();
        });
        assert_eq!(f.slot(), Some(vec![110; 160]));
        assert_eq!(f.slot(), Some(vec![110; 160]));
        assert_eq!(f.events(), [MediaEvent::PlayFinished]);
        let mut last = vec![10; 80];
        last.resize(160, 0);
        assert_eq!(f.slot(), Some(last), "the stream's last frame, padded");
        assert_eq!(f.events(), [MediaEvent::Mark("said".into())]);
        assert_eq!(f.slot(), None);
        assert_eq!(f.stats.stream_underruns.load(Relaxed), 0);
    }

    #[test]
    fn streams_play_one_after_another_in_the_order_they_were_opened() {
        let mut f = fixture(CodecName::L16, None);
        let mut first = f.call.open_stream(CodecName::L16, 8000, Some("first".into())).unwrap();
        let mut second = f.call.open_stream(CodecName::L16, 8000, Some("second".into())).unwrap();
        let empty = f.call.open_stream(CodecName::L16, 8000, Some("empty".into())).unwrap();
        block_on(async {
            // The later streams are written first: they wait for their turn, unmixed.
            second.write(&[2; 320]).await.unwrap();
            second.finish().await.unwrap();
            empty.finish().await.unwrap();
            first.write(&[1; 320]).await.unwrap();
            first.finish().await.unwrap();
        });
        assert_eq!(f.slot(), Some(vec![1; 160]));
        assert_eq!(f.slot(), Some(vec![1; 160]));
        assert_eq!(f.events(), [MediaEvent::Mark("first".into())]);
        assert_eq!(f.slot(), Some(vec![2; 160]), "the next stream plays in the very next slot");
        assert_eq!(f.slot(), Some(vec![2; 160]));
        assert_eq!(f.events(), [MediaEvent::Mark("second".into())]);
        assert_eq!(f.slot(), None);
        assert_eq!(f.events(), [MediaEvent::Mark("empty".into())], "an empty stream's mark keeps its place");
        assert_eq!(f.stats.stream_underruns.load(Relaxed), 0, "waiting is not starving");
    }

    #[test]
    fn twilio_framing_sends_json_media_and_reports_marks_on_echo_only() {
        use base64::Engine as _;
        let mut f = fixture_framed(CodecName::Pcmu, None, Framing::Twilio, true);
        f.call.command(Command::Play(vec![1000; 160].into()));
        f.call.tick(f.call.deadline());
        assert!(f.texts().is_empty(), "nothing is sent before `start` names the stream");
        f.call.set_stream_sid("MZ1".into());
        let mut w = f.call.open_stream(CodecName::L16, 8000, Some("said-1".into())).unwrap();
        block_on(async {
            w.write(&[500; 320]).await.unwrap();
            w.finish().await.unwrap();
        });
        f.call.tick(f.call.deadline());
        f.call.tick(f.call.deadline());
        let sent = f.texts();
        assert_eq!(sent.len(), 3, "two media messages, then the mark: {sent:?}");
        let audio: Vec<u8> = sent[..2]
            .iter()
            .flat_map(|m| {
                assert_eq!((m["event"].as_str(), m["streamSid"].as_str()), (Some("media"), Some("MZ1")));
                base64::engine::general_purpose::STANDARD.decode(m["media"]["payload"].as_str().unwrap()).unwrap()
            })
            .collect();
        assert_eq!(audio, vec![super::super::codec::linear_to_ulaw(500); 320]);
        assert_eq!(sent[2]["mark"]["name"], "said-1");
        assert!(
            !f.events().iter().any(|e| matches!(e, MediaEvent::Mark(_))),
            "a mark is reported when Twilio echoes it, not when sent"
        );
        f.call.mark_echoed("said-1");
        assert_eq!(f.events(), [MediaEvent::Mark("said-1".into())]);
        assert_eq!(f.call.take_said_audio("said-1"), Some(audio), "what the phone heard");
        assert_eq!(f.call.take_said_audio("said-1"), None, "taken once");

        // A mark pending at a clear: Twilio's late echo of it is not "played".
        f.call.command(Command::Play(vec![1; 160].into()));
        f.call.command(Command::Mark("cut".into()));
        f.call.tick(f.call.deadline());
        f.call.command(Command::Clear);
        let sent = f.texts();
        assert_eq!(sent.last().unwrap()["event"], "clear");
        assert_eq!(sent[sent.len() - 2]["mark"]["name"], "cut");
        f.call.mark_echoed("cut");
        assert!(!f.events().iter().any(|e| matches!(e, MediaEvent::Mark(_))), "echoed after a clear");
    }

    #[test]
    fn fed_caller_audio_reaches_the_taps_not_the_echo() {
        let mut f = fixture(CodecName::Pcmu, None);
        let mut tap = f.call.tap(8000).unwrap();
        f.call.command(Command::Echo(true));
        f.call.caller_pcm(&[1200; 160]);
        let frame = block_on(tap.recv()).unwrap();
        assert_eq!(frame.len(), 160);
        assert_eq!(f.slot(), None, "not echoed to the caller");
    }

    #[test]
    fn clear_drops_a_stream_within_one_frame() {
        let mut f = fixture(CodecName::L16, None);
        let mut w = f.call.open_stream(CodecName::L16, 8000, Some("never".into())).unwrap();
        block_on(w.write(&[7; 160 * 20])).unwrap();
        assert_eq!(f.slot(), Some(vec![7; 160]));
        f.call.command(Command::Clear);
        assert_eq!(f.slot(), None, "the next slot has nothing of it");
        assert_eq!(block_on(w.write(&[7; 160])), Err(stream_source::StreamError::Closed));
        assert!(f.events().is_empty(), "a cleared stream's mark is never reached");
    }

    #[test]
    fn a_starved_stream_plays_silence_and_counts() {
        let mut f = fixture(CodecName::L16, None);
        let mut w = f.call.open_stream(CodecName::Pcmu, 8000, None).unwrap();
        assert_eq!(f.slot(), None, "no audio yet: nothing to send");
        block_on(w.write_bytes(&[0x80; 160])).unwrap();
        assert_eq!(f.slot(), Some(vec![32124; 160]));
        assert_eq!(f.slot(), Some(vec![0; 160]));
        assert_eq!(f.stats.stream_underruns.load(Relaxed), 1);
        for _ in 0..crate::media::call::MAX_STREAMS - 1 {
            f.call.open_stream(CodecName::L16, 8000, None).unwrap();
        }
        assert!(f.call.open_stream(CodecName::L16, 8000, None).is_err(), "bounded");
    }

    #[test]
    fn taps_get_the_callers_audio_and_a_slow_tap_costs_only_its_own_frames() {
        let mut f = fixture(CodecName::Pcmu, None);
        let mut pcm = f.call.tap(16000).unwrap();
        let mut raw = f.call.tap_mulaw().unwrap();
        let wire: Vec<u8> = (0..60 * 160).map(|i| (i / 160) as u8).collect();
        f.call.command(Command::Echo(true));
        // 60 frames at once, nobody reading the taps: the call takes them all.
        assert_eq!(f.call.audio(&wire), 60);
        assert_eq!(f.stats.tap_dropped_frames.load(Relaxed), 2 * (60 - crate::media::tap::TAP_FRAMES as u64));
        // The slots go on as ever (the echo plays).
        assert!(f.slot().is_some());
        for n in 0..crate::media::tap::TAP_FRAMES {
            assert_eq!(&block_on(raw.recv()).unwrap()[..], &wire[n * 160..(n + 1) * 160], "untouched, in order");
        }
        let frame = pcm.try_recv().unwrap().unwrap();
        assert_eq!(frame.len(), 320, "20 ms at 16 kHz");
        assert!(fixture(CodecName::L16, None).call.tap_mulaw().is_err());
    }

    #[test]
    fn recording_goes_through_the_writer_thread() {
        let dir = std::env::temp_dir().join(format!("gw-call-rec-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("call.wav");
        let mut f = fixture(CodecName::L16, Some(Recorder::create(&path, 8000).unwrap()));
        f.call.command(Command::Echo(true));
        for n in 1..=3i16 {
            f.call.audio(&l16(&[n; 160]));
            assert_eq!(f.slot(), Some(vec![n; 160]));
        }
        assert!(f.slot().is_none());
        let summary = f.call.finish().expect("recording").join().unwrap();
        assert_eq!((summary.blocks, summary.failed), (4, false));
        let samples: Vec<i16> = hound::WavReader::open(&path).unwrap().samples::<i16>().map(Result::unwrap).collect();
        let left: Vec<i16> = samples.iter().step_by(2).copied().collect();
        let right: Vec<i16> = samples.iter().skip(1).step_by(2).copied().collect();
        let expected: Vec<i16> = [vec![1; 160], vec![2; 160], vec![3; 160], vec![0; 160]].concat();
        assert_eq!(left, expected, "caller");
        assert_eq!(right, expected, "echo");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn delay_quantiles_are_bucket_upper_bounds() {
        let mut h = DelayHistogram::default();
        assert_eq!(h.quantile_ms(0.99), 0);
        for _ in 0..99 {
            h.record(Duration::from_micros(300));
        }
        h.record(Duration::from_millis(45));
        assert_eq!(h.quantile_ms(0.99), 1);
        assert_eq!(h.quantile_ms(1.0), 46);
        h.record(Duration::from_secs(2));
        assert_eq!(h.quantile_ms(1.0), 64, "the last bucket holds everything from 63 ms");
    }
}
