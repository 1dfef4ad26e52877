//! The state of one live call: its codec, play queue, echo buffer, recorder and pacer.
//!
//! A call has no task of its own. The connection's reader hands it the caller's frames
//! ([`Call::frame`]), the plugin's media calls change it ([`Call::command`]), and the media
//! [`super::clock`] calls [`Call::tick`] once per 20 ms slot: all three under the call's lock,
//! each for a few microseconds. So a frame costs no task wake-up on the way in, and a slot no
//! timer of its own; a command takes effect before the next slot.

use super::MediaEvent;
use super::codec::Codec;
use super::echo::EchoBuffer;
use super::format::{FRAME, Format};
use super::pacer::Pacer;
use super::playout::{PlayQueue, Reached};
use super::recording::Recorder;
use super::stats::CallStats;
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
            to_record: VecDeque::new(),
            partial: Vec::new(),
            pcm: Vec::with_capacity(n),
            out: Vec::with_capacity(n),
            reached: Vec::new(),
            pacer: Pacer::new(Instant::now() + FRAME),
            delays: DelayHistogram::default(),
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
        if self.echo && !self.echo_buf.push(&self.pcm) {
            CallStats::add(&self.stats.dropped_frames, 1);
        }
    }

    /// One 20 ms slot, at `now` (at or after [`Call::deadline`]): mix the next queued frame
    /// with the next echoed one, send it, record both directions, then report the marks the
    /// sent audio has reached.
    pub fn tick(&mut self, now: Instant) {
        let n = self.format.frame_samples();
        let tick = self.pacer.tick(now);
        let played = self.queue.next_frame(&mut self.out);
        let (echoed, trimmed) = self.echo_buf.pop();
        CallStats::add(&self.stats.dropped_frames, trimmed as u64);
        if let Some(e) = echoed {
            if played {
                self.out.iter_mut().zip(&e).for_each(|(o, &s)| *o = o.saturating_add(s));
            } else {
                self.out = e;
            }
        }
        if !self.out.is_empty() {
            let mut wire = Vec::with_capacity(n * 2);
            self.codec.encode(&self.out, &mut wire);
            let len = wire.len() as u64;
            if self.bus.send(self.id, Outbound::Binary(Bytes::from(wire))) {
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
            r.write_block(&inbound, &self.out, n);
        }
        self.reached.clear();
        self.queue.reached(&mut self.reached);
        for r in self.reached.drain(..) {
            let event = match r {
                Reached::Mark(name) => MediaEvent::Mark(name),
                Reached::Finished => MediaEvent::PlayFinished,
            };
            let _ = self.events.send(event);
        }
    }

    /// The call ends (hang-up or connection closed): close the recording, log the figures.
    pub fn finish(mut self) {
        if let Some(r) = self.recorder.take() {
            r.finish();
        }
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
            max_delay_us = s.max_delay_us,
            p99_delay_ms = self.delays.quantile_ms(0.99),
            "media call ended"
        );
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
    use super::DelayHistogram;
    use std::time::Duration;

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
