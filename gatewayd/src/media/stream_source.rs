//! Streamed audio into a call (streamed TTS): a [`StreamWriter`] for the producer, a
//! [`StreamSource`] for the call's mixer, joined by a bounded channel of 20 ms frames.
//!
//! The producer writes PCM as it arrives, in pieces of any length, at any rate (or G.711 /
//! L16 bytes); the writer converts it to the call's rate with a [`StreamResampler`] in the
//! producer's task (never on the media clock) and sends whole frames, waiting while
//! [`STREAM_FRAMES`] are already queued (a producer faster than real time is held back, at
//! most [`WRITE_TIMEOUT`] per frame). [`StreamWriter::finish`] sends the tail.
//!
//! At each slot the source plays its next frame. Before its first frame it plays nothing (the
//! vendor's first-byte latency is not an underrun). After that, a slot that finds no frame
//! ready plays silence, never waits, and counts an underrun. When the writer has finished (or
//! was dropped) and every frame has been played, the stream's mark, if any, is reached. A call's
//! `clear` (barge-in) drops the source: nothing more of it plays from the next slot on, its mark
//! is never reached, and the writer's next write fails with [`StreamError::Closed`].

use super::codec::{alaw_to_linear, ulaw_to_linear};
use super::format::CodecName;
use super::mixer::Source;
use super::playout::Reached;
use super::resample::StreamResampler;
use std::time::Duration;
use tokio::sync::mpsc::{self, error::TryRecvError};

/// Frames (20 ms each, so 1 s) a stream may have queued ahead of the call.
pub const STREAM_FRAMES: usize = 50;

/// Longest a write waits for room in the queue. The call frees a frame every 20 ms, so only a
/// call that stopped ticking makes a write wait this long.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a write to a stream failed. The stream is over either way.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// The call dropped the stream: cleared (barge-in), hung up or ended.
    #[error("the stream was closed by the call (cleared or hung up)")]
    Closed,
    /// No room in the queue for [`WRITE_TIMEOUT`].
    #[error("the call took no audio for {WRITE_TIMEOUT:?}")]
    Stalled,
    /// The audio could not be converted (the resampler's message).
    #[error("stream audio: {0}")]
    Audio(String),
}

/// The producer's end of a stream.
pub struct StreamWriter {
    tx: mpsc::Sender<Vec<i16>>,
    resampler: StreamResampler,
    /// How [`StreamWriter::write_bytes`] reads bytes.
    encoding: CodecName,
    /// Samples in one frame at the call's rate.
    frame_samples: usize,
    /// Audio at the call's rate not yet sent (less than a frame between writes).
    pending: Vec<i16>,
    /// L16: the first byte of a sample split between two writes.
    odd_byte: Option<u8>,
}

/// The call's end of a stream: a mixer source.
pub struct StreamSource {
    rx: mpsc::Receiver<Vec<i16>>,
    frame_samples: usize,
    /// The frame for the next slot, when one has been received.
    next: Vec<i16>,
    /// A frame has been played.
    started: bool,
    /// The writer is gone and every frame it sent has been received.
    ended: bool,
    /// Reported, or about to be, once every frame has been played.
    mark: Option<String>,
    /// The end has been reported: the call forgets the source.
    done: bool,
    /// Slots that found no frame ready after the stream started.
    underruns: u64,
}

/// Open a stream into a call at `call_rate` Hz: audio is written as `encoding` (`pcmu`, `pcma`,
/// or `l16` for little-endian 16-bit bytes and for [`StreamWriter::write`]) at `rate` Hz.
/// `mark` is reached when the stream's audio has all been sent. Err: a rate out of range or
/// Opus.
pub fn open(
    call_rate: u32,
    encoding: CodecName,
    rate: u32,
    mark: Option<String>,
) -> Result<(StreamWriter, StreamSource), String> {
    if encoding == CodecName::Opus {
        return Err("a stream takes pcmu, pcma or l16 audio, not opus".into());
    }
    let resampler = StreamResampler::new(rate, call_rate)?;
    let frame_samples = (call_rate / super::format::FRAMES_PER_SECOND) as usize;
    let (tx, rx) = mpsc::channel(STREAM_FRAMES);
    let writer = StreamWriter {
        tx,
        resampler,
        encoding,
        frame_samples,
        pending: Vec::with_capacity(frame_samples * 2),
        odd_byte: None,
    };
    let source = StreamSource {
        rx,
        frame_samples,
        next: Vec::new(),
        started: false,
        ended: false,
        mark,
        done: false,
        underruns: 0,
    };
    Ok((writer, source))
}

impl StreamWriter {
    /// Write 16-bit samples at the stream's rate. Waits while the queue is full (see
    /// [`WRITE_TIMEOUT`]). Not cancel-safe: a write dropped while waiting loses its audio.
    pub async fn write(&mut self, samples: &[i16]) -> Result<(), StreamError> {
        if self.tx.is_closed() {
            return Err(StreamError::Closed);
        }
        self.resampler.push(samples, &mut self.pending).map_err(StreamError::Audio)?;
        self.send_whole_frames().await
    }

    /// Write audio bytes in the stream's encoding (G.711: one byte a sample; L16: little-endian
    /// pairs, a sample may be split between two writes). As [`StreamWriter::write`].
    pub async fn write_bytes(&mut self, audio: &[u8]) -> Result<(), StreamError> {
        let samples: Vec<i16> = match self.encoding {
            CodecName::Pcmu => audio.iter().map(|&b| ulaw_to_linear(b)).collect(),
            CodecName::Pcma => audio.iter().map(|&b| alaw_to_linear(b)).collect(),
            CodecName::L16 | CodecName::Opus => {
                let mut bytes = audio;
                let mut samples = Vec::with_capacity(audio.len() / 2 + 1);
                if let (Some(first), Some((&second, rest))) = (self.odd_byte, bytes.split_first()) {
                    samples.push(i16::from_le_bytes([first, second]));
                    self.odd_byte = None;
                    bytes = rest;
                }
                let mut pairs = bytes.chunks_exact(2);
                samples.extend((&mut pairs).map(|b| i16::from_le_bytes([b[0], b[1]])));
                if let [last] = pairs.remainder() {
                    self.odd_byte = Some(*last);
                }
                samples
            }
        };
        self.write(&samples).await
    }

    /// End the stream: send the resampler's tail and the last, partial frame (the call pads it
    /// with silence). The stream's mark is reached once all of it has been sent. Dropping the
    /// writer instead ends the stream without the tail.
    pub async fn finish(mut self) -> Result<(), StreamError> {
        self.resampler.flush(&mut self.pending).map_err(StreamError::Audio)?;
        self.send_whole_frames().await?;
        if !self.pending.is_empty() {
            let last = std::mem::take(&mut self.pending);
            self.send(last).await?;
        }
        Ok(())
    }

    /// The call has dropped the stream (cleared, hung up): writes will fail.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Resolves when the call drops the stream: a producer selects on it to stop (barge-in).
    pub async fn closed(&self) {
        self.tx.closed().await
    }

    async fn send_whole_frames(&mut self) -> Result<(), StreamError> {
        let n = self.frame_samples;
        let whole = self.pending.len() / n * n;
        if whole == 0 {
            return Ok(());
        }
        let rest = self.pending.split_off(whole);
        let frames = std::mem::replace(&mut self.pending, rest);
        for frame in frames.chunks_exact(n) {
            self.send(frame.to_vec()).await?;
        }
        Ok(())
    }

    async fn send(&self, frame: Vec<i16>) -> Result<(), StreamError> {
        match tokio::time::timeout(WRITE_TIMEOUT, self.tx.send(frame)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(StreamError::Closed),
            Err(_) => Err(StreamError::Stalled),
        }
    }
}

impl StreamSource {
    /// The stream carries a mark it has not reached yet.
    pub fn has_mark(&self) -> bool {
        self.mark.is_some()
    }

    /// The stream has ended and its end (mark) was reported: the call can forget it.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Underruns since the last call: slots that played silence for want of audio.
    pub fn take_underruns(&mut self) -> u64 {
        std::mem::take(&mut self.underruns)
    }

    /// Receive the next frame if one is ready; note the end of the stream.
    fn pull(&mut self) {
        while self.next.is_empty() && !self.ended {
            match self.rx.try_recv() {
                Ok(frame) => self.next = frame,
                Err(TryRecvError::Empty) => return,
                Err(TryRecvError::Disconnected) => self.ended = true,
            }
        }
    }
}

impl Source for StreamSource {
    fn next_frame(&mut self, out: &mut Vec<i16>) -> bool {
        out.clear();
        self.pull();
        if !self.next.is_empty() {
            std::mem::swap(out, &mut self.next);
            self.next.clear();
            out.resize(self.frame_samples, 0);
            self.started = true;
            return true;
        }
        if self.ended || !self.started {
            return false;
        }
        self.underruns += 1;
        out.resize(self.frame_samples, 0);
        true
    }

    fn reached(&mut self, into: &mut Vec<Reached>) {
        self.pull();
        if self.ended && self.next.is_empty() && !self.done {
            self.done = true;
            if let Some(mark) = self.mark.take() {
                into.push(Reached::Mark(mark));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
    }

    /// Play one slot: the frame (if any) and what was reached after it.
    fn slot(s: &mut StreamSource) -> (Option<Vec<i16>>, Vec<Reached>) {
        let mut out = Vec::new();
        let played = s.next_frame(&mut out).then_some(out);
        let mut reached = Vec::new();
        s.reached(&mut reached);
        (played, reached)
    }

    #[test]
    fn chunks_of_any_size_at_24_khz_play_as_8_khz_frames_of_the_right_length() {
        let (mut w, mut s) = open(8000, CodecName::L16, 24000, Some("said".into())).unwrap();
        // 12,345 samples at 24 kHz: 4,115 at 8 kHz, 25.7 frames of 160.
        let x: Vec<i16> = (0..12_345)
            .map(|i| (8000.0 * (2.0 * std::f64::consts::PI * 440.0 * i as f64 / 24000.0).sin()) as i16)
            .collect();
        block_on(async {
            for piece in x.chunks(997) {
                w.write(piece).await.unwrap();
            }
            w.finish().await.unwrap();
        });
        let mut frames = 0;
        let mut reached = Vec::new();
        for _ in 0..40 {
            let (frame, r) = slot(&mut s);
            if let Some(f) = frame {
                assert_eq!(f.len(), 160);
                frames += 1;
            }
            reached.extend(r);
            if s.is_done() {
                break;
            }
        }
        assert_eq!(frames, 26, "ceil(4115 / 160) frames");
        assert_eq!(reached, [Reached::Mark("said".into())], "the mark comes with the last frame");
        assert_eq!(s.take_underruns(), 0);
    }

    #[test]
    fn a_slot_without_audio_plays_silence_and_counts_an_underrun() {
        let (mut w, mut s) = open(8000, CodecName::L16, 8000, Some("end".into())).unwrap();
        assert_eq!(slot(&mut s), (None, vec![]), "before the first audio: nothing, no underrun");
        assert_eq!(s.take_underruns(), 0);
        block_on(w.write(&[5; 160])).unwrap();
        assert_eq!(slot(&mut s), (Some(vec![5; 160]), vec![]));
        assert_eq!(slot(&mut s), (Some(vec![0; 160]), vec![]), "starved: silence, not a wait");
        assert_eq!(slot(&mut s), (Some(vec![0; 160]), vec![]));
        assert_eq!(s.take_underruns(), 2);
        // Bytes, with a sample split across two writes.
        block_on(w.write_bytes(&[7, 0, 7])).unwrap();
        block_on(w.write_bytes(&vec![0; 317])).unwrap();
        let (frame, _) = slot(&mut s);
        let frame = frame.unwrap();
        assert_eq!((frame[0], frame[1], frame[2]), (7, 7, 0));
        assert_eq!(s.take_underruns(), 0);
        drop(w);
        assert_eq!(slot(&mut s), (None, vec![Reached::Mark("end".into())]), "a dropped writer ends the stream");
        assert!(s.is_done());
    }

    #[test]
    fn a_dropped_source_fails_the_writer_at_once() {
        let (mut w, s) = open(16000, CodecName::Pcmu, 8000, None).unwrap();
        block_on(w.write_bytes(&[0xFF; 160])).unwrap();
        drop(s);
        assert!(w.is_closed());
        assert_eq!(block_on(w.write(&[0; 160])), Err(StreamError::Closed));
        assert!(open(8000, CodecName::Opus, 8000, None).is_err());
        assert!(open(8000, CodecName::L16, 0, None).is_err());
    }
}
