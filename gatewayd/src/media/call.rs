//! The task of one live call: it owns the codec, the play queue, the echo buffer and the
//! recorder, and sends one frame per 20 ms slot (see [`super::pacer`]).
//!
//! Inputs arrive on two queues: commands from the plugin's media calls (unbounded; a handful
//! per call) and the caller's frames (bounded; a frame that finds it full is dropped and
//! counted). Commands are served first, so `clear` takes effect before the next slot.

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

/// Caller frames waiting to be processed by the call's task, at most.
pub const INBOUND_QUEUE_FRAMES: usize = 64;

/// A plugin's media call, forwarded to the call's task.
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

/// What a call task needs.
pub struct CallTask {
    pub id: ConnId,
    pub format: Format,
    pub codec: Codec,
    pub bus: Arc<Bus>,
    pub stats: Arc<CallStats>,
    pub events: mpsc::UnboundedSender<MediaEvent>,
    pub commands: mpsc::UnboundedReceiver<Command>,
    pub frames: mpsc::Receiver<Bytes>,
    pub recorder: Option<Recorder>,
}

impl CallTask {
    /// Run until the call is hung up or its connection closes (a queue's senders are gone).
    pub async fn run(mut self) {
        let n = self.format.frame_samples();
        let mut queue = PlayQueue::new(n);
        let mut echo = false;
        let mut echo_buf = EchoBuffer::default();
        // Caller audio not yet written to the recording.
        let mut to_record: VecDeque<i16> = VecDeque::new();
        let (mut pcm, mut out, mut reached) = (Vec::with_capacity(n), Vec::with_capacity(n), Vec::new());
        let mut pacer = Pacer::new(Instant::now() + FRAME);
        let mut delays = DelayHistogram::default();
        let sleep = tokio::time::sleep_until(pacer.deadline());
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                biased;
                cmd = self.commands.recv() => match cmd {
                    None => break,
                    Some(Command::Play(samples)) => queue.push_audio(samples),
                    Some(Command::Mark(name)) => queue.push_mark(name),
                    Some(Command::Clear) => {
                        queue.clear();
                        echo_buf.clear();
                    }
                    Some(Command::Echo(on)) => {
                        echo = on;
                        if !on {
                            echo_buf.clear();
                        }
                    }
                    Some(Command::Record(r)) => {
                        if let Some(old) = std::mem::replace(&mut self.recorder, r) {
                            old.finish();
                        }
                        to_record.clear();
                    }
                },
                _ = &mut sleep => {
                    if let Some(delay) = self.tick(&mut pacer, &mut queue, &mut echo_buf, &mut to_record, &mut out, &mut reached) {
                        delays.record(delay);
                    }
                    sleep.as_mut().reset(pacer.deadline());
                }
                frame = self.frames.recv() => match frame {
                    None => break,
                    Some(frame) => {
                        if self.codec.decode(&frame, n, &mut pcm).is_err() {
                            CallStats::add(&self.stats.rejected_frames, 1);
                            let _ = self.events.send(MediaEvent::FrameRejected("undecodable audio frame".into()));
                            continue;
                        }
                        if self.recorder.is_some() && to_record.len() < n * super::echo::MAX_FRAMES {
                            to_record.extend(pcm.iter().copied());
                        }
                        if echo && !echo_buf.push(&pcm) {
                            CallStats::add(&self.stats.dropped_frames, 1);
                        }
                    }
                },
            }
        }
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
            p99_delay_ms = delays.quantile_ms(0.99),
            "media call ended"
        );
    }

    /// One 20 ms slot: mix the next queued frame with the next echoed one, send it, record
    /// both directions, then report the marks the sent audio has reached. Returns the sent
    /// frame's delay behind its slot, when a frame was sent.
    fn tick(
        &mut self,
        pacer: &mut Pacer,
        queue: &mut PlayQueue,
        echo_buf: &mut EchoBuffer,
        to_record: &mut VecDeque<i16>,
        out: &mut Vec<i16>,
        reached: &mut Vec<Reached>,
    ) -> Option<std::time::Duration> {
        let n = self.format.frame_samples();
        let tick = pacer.tick(Instant::now());
        let mut sent = None;
        let played = queue.next_frame(out);
        let (echoed, trimmed) = echo_buf.pop();
        CallStats::add(&self.stats.dropped_frames, trimmed as u64);
        if let Some(e) = echoed {
            if played {
                out.iter_mut().zip(&e).for_each(|(o, &s)| *o = o.saturating_add(s));
            } else {
                *out = e;
            }
        }
        if !out.is_empty() {
            let mut wire = Vec::with_capacity(n * 2);
            self.codec.encode(out, &mut wire);
            let len = wire.len() as u64;
            if self.bus.send(self.id, Outbound::Binary(Bytes::from(wire))) {
                let s = &self.stats;
                CallStats::add(&s.frames_out, 1);
                CallStats::add(&s.bytes_out, len);
                CallStats::add(&s.late_frames, tick.late as u64);
                CallStats::add(&s.skipped_slots, tick.skipped as u64);
                s.max_delay_us.fetch_max(tick.delay.as_micros() as u64, Relaxed);
                sent = Some(tick.delay);
            }
        }
        if let Some(r) = self.recorder.as_mut() {
            let take = to_record.len().min(n);
            let inbound: Vec<i16> = to_record.drain(..take).collect();
            r.write_block(&inbound, out, n);
        }
        reached.clear();
        queue.reached(reached);
        for r in reached.drain(..) {
            let event = match r {
                Reached::Mark(name) => MediaEvent::Mark(name),
                Reached::Finished => MediaEvent::PlayFinished,
            };
            let _ = self.events.send(event);
        }
        sent
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
