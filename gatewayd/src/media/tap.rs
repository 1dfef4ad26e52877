//! Taps: the caller's audio copied out of a call, for a recogniser (STT) or any other listener.
//!
//! A call feeds its taps each caller frame as it is taken ([`Taps::feed`]), through bounded
//! channels of [`TAP_FRAMES`] frames, with `try_send`: a tap whose reader is slow loses the frame
//! and the call counts it; the call never waits for a tap. A tap whose reader is gone is
//! forgotten. Two kinds:
//!
//! - [`PcmTap`]: decoded 16-bit frames, converted to the tap's rate by a
//!   [`StreamResampler`] in the reader's task (e.g. 8 kHz telephony to a 16 kHz recogniser), and
//!   handed out as 20 ms frames at that rate;
//! - a wire tap ([`Taps::add_wire`]): the caller's frames exactly as received, for a recogniser
//!   that takes the route's format (G.711 mu-law at 8 kHz) untouched.
//!
//! A tap ends (its reader gets `None`) when the call ends.

use super::format::FRAMES_PER_SECOND;
use super::resample::StreamResampler;
use bytes::Bytes;
use std::sync::Arc;
use tokio::sync::mpsc::{self, error::TrySendError};

/// Frames (20 ms each, so 1 s) a tap holds for its reader before it drops.
pub const TAP_FRAMES: usize = 50;

/// Taps one call may have at a time (both kinds together).
pub const MAX_TAPS: usize = 8;

/// The taps of one call (the call's side).
#[derive(Default)]
pub struct Taps {
    pcm: Vec<mpsc::Sender<Arc<[i16]>>>,
    wire: Vec<mpsc::Sender<Bytes>>,
}

impl Taps {
    /// Taps still read (a tap whose reader is gone counts until the next frame or the next add).
    pub fn len(&self) -> usize {
        self.pcm.len() + self.wire.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Add a decoded-audio tap for a call at `call_rate` Hz, delivering at `rate` Hz. Err: a
    /// rate out of range, or [`MAX_TAPS`] taps already.
    pub fn add_pcm(&mut self, call_rate: u32, rate: u32) -> Result<PcmTap, String> {
        self.attach(PendingTap::new(call_rate, rate)?)
    }

    /// Connect a tap built beforehand (its resampler set up outside the call's lock). Err:
    /// [`MAX_TAPS`] taps already.
    pub fn attach(&mut self, tap: PendingTap) -> Result<PcmTap, String> {
        self.room()?;
        let (tx, rx) = mpsc::channel(TAP_FRAMES);
        self.pcm.push(tx);
        Ok(PcmTap { rx: Some(rx), ..tap.0 })
    }

    /// Add a tap of the caller's wire frames as received. Err: [`MAX_TAPS`] taps already.
    pub fn add_wire(&mut self) -> Result<mpsc::Receiver<Bytes>, String> {
        self.room()?;
        let (tx, rx) = mpsc::channel(TAP_FRAMES);
        self.wire.push(tx);
        Ok(rx)
    }

    fn room(&mut self) -> Result<(), String> {
        self.pcm.retain(|t| !t.is_closed());
        self.wire.retain(|t| !t.is_closed());
        if self.len() >= MAX_TAPS {
            return Err(format!("a call has at most {MAX_TAPS} taps"));
        }
        Ok(())
    }

    /// One caller frame: `wire` as received, `pcm` decoded. Returns how many taps were full
    /// and lost it. Never waits.
    pub fn feed(&mut self, wire: &[u8], pcm: &[i16]) -> u64 {
        let mut dropped = 0;
        if !self.wire.is_empty() {
            let frame = Bytes::copy_from_slice(wire);
            self.wire.retain(|t| match t.try_send(frame.clone()) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) => {
                    dropped += 1;
                    true
                }
                Err(TrySendError::Closed(_)) => false,
            });
        }
        if !self.pcm.is_empty() {
            let frame: Arc<[i16]> = pcm.into();
            self.pcm.retain(|t| match t.try_send(frame.clone()) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) => {
                    dropped += 1;
                    true
                }
                Err(TrySendError::Closed(_)) => false,
            });
        }
        dropped
    }
}

/// The call of a tap has ended and all its audio has been handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the tapped call has ended")]
pub struct TapEnded;

/// A decoded-audio tap not yet connected to its call ([`Taps::attach`]).
pub struct PendingTap(PcmTap);

impl PendingTap {
    /// A tap of a call at `call_rate` Hz delivering at `rate` Hz. Err: a rate out of range
    /// or not a multiple of 50 Hz (20 ms frames of whole samples).
    pub fn new(call_rate: u32, rate: u32) -> Result<PendingTap, String> {
        PcmTap::new(call_rate, rate).map(PendingTap)
    }
}

/// The reader's end of a decoded-audio tap.
pub struct PcmTap {
    /// None before it is attached and after the call ended.
    rx: Option<mpsc::Receiver<Arc<[i16]>>>,
    resampler: StreamResampler,
    /// Samples in a 20 ms frame at the tap's rate.
    frame_samples: usize,
    /// Converted audio not yet handed out.
    ready: Vec<i16>,
    /// The call has ended and the resampler's tail is in `ready`.
    ended: bool,
}

impl std::fmt::Debug for PcmTap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PcmTap")
            .field("rate", &self.rate())
            .field("ready", &self.ready.len())
            .field("ended", &self.ended)
            .finish()
    }
}

impl PcmTap {
    fn new(call_rate: u32, rate: u32) -> Result<PcmTap, String> {
        if !rate.is_multiple_of(FRAMES_PER_SECOND) {
            return Err(format!("a tap's rate must be a multiple of {FRAMES_PER_SECOND} Hz, not {rate}"));
        }
        let resampler = StreamResampler::new(call_rate, rate)?;
        let frame_samples = (rate / FRAMES_PER_SECOND) as usize;
        Ok(PcmTap { rx: None, resampler, frame_samples, ready: Vec::with_capacity(frame_samples * 2), ended: false })
    }

    /// The tap's rate, Hz.
    pub fn rate(&self) -> u32 {
        self.resampler.to_rate()
    }

    /// The next 20 ms frame of the caller's audio at the tap's rate (rate / 50 samples), or
    /// `None` once the call has ended and everything has been handed out (the last frame is
    /// padded with silence). Frames the tap dropped while full are simply missing. Cancel-safe.
    pub async fn recv(&mut self) -> Option<Vec<i16>> {
        loop {
            if let Some(frame) = self.take_frame() {
                return Some(frame);
            }
            if self.ended {
                return None;
            }
            let frame = match self.rx.as_mut() {
                Some(rx) => rx.recv().await,
                None => None,
            };
            self.convert(frame);
        }
    }

    /// As [`PcmTap::recv`], without waiting: `Ok(None)` when no frame is ready yet,
    /// `Err(TapEnded)` once the call has ended and everything has been handed out.
    pub fn try_recv(&mut self) -> Result<Option<Vec<i16>>, TapEnded> {
        loop {
            if let Some(frame) = self.take_frame() {
                return Ok(Some(frame));
            }
            if self.ended {
                return Err(TapEnded);
            }
            let frame = match self.rx.as_mut().map(|rx| rx.try_recv()) {
                Some(Ok(frame)) => Some(frame),
                Some(Err(mpsc::error::TryRecvError::Empty)) => return Ok(None),
                _ => None,
            };
            self.convert(frame);
        }
    }

    /// A whole frame, or at the end the padded rest; None when neither is ready.
    fn take_frame(&mut self) -> Option<Vec<i16>> {
        let n = self.frame_samples;
        if self.ready.len() >= n {
            let rest = self.ready.split_off(n);
            return Some(std::mem::replace(&mut self.ready, rest));
        }
        if self.ended && !self.ready.is_empty() {
            let mut last = std::mem::take(&mut self.ready);
            last.resize(n, 0);
            return Some(last);
        }
        None
    }

    /// Convert a received call frame, or (None) end the tap with the resampler's tail.
    fn convert(&mut self, frame: Option<Arc<[i16]>>) {
        if self.ended {
            return;
        }
        let result = match frame {
            Some(frame) => self.resampler.push(&frame, &mut self.ready),
            None => {
                self.ended = true;
                self.rx = None;
                self.resampler.flush(&mut self.ready)
            }
        };
        if let Err(error) = result {
            tracing::warn!(%error, "tap resampler failed; tap ended");
            self.ended = true;
            self.rx = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
    }

    /// Every frame left in `tap` until the call's end.
    fn drain(tap: &mut PcmTap) -> Vec<Vec<i16>> {
        block_on(async {
            let mut frames = Vec::new();
            while let Some(f) = tokio::time::timeout(std::time::Duration::from_secs(10), tap.recv()).await.unwrap() {
                frames.push(f);
            }
            frames
        })
    }

    #[test]
    fn a_slow_reader_loses_frames_counted_and_never_holds_up_the_call() {
        let mut taps = Taps::default();
        let mut tap = taps.add_pcm(8000, 8000).unwrap();
        let mut wire = taps.add_wire().unwrap();
        let mut dropped = 0;
        // Nobody reads while 200 frames go by: each feed returns at once, the excess is counted.
        for n in 0..200 {
            dropped += taps.feed(&[n as u8; 160], &[n as i16; 160]);
        }
        assert_eq!(dropped, 2 * (200 - TAP_FRAMES as u64));
        // The reader catches up: the first TAP_FRAMES frames, in order; the rest were dropped.
        for n in 0..TAP_FRAMES {
            assert_eq!(block_on(wire.recv()).unwrap(), vec![n as u8; 160]);
            assert_eq!(tap.try_recv(), Ok(Some(vec![n as i16; 160])));
        }
        assert_eq!(tap.try_recv(), Ok(None), "nothing more yet");
        assert_eq!(taps.feed(&[1; 160], &[1; 160]), 0, "room again");
        drop(taps);
        assert_eq!(drain(&mut tap), vec![vec![1; 160]]);
        assert_eq!(tap.try_recv(), Err(TapEnded), "the call ended");
    }

    #[test]
    fn an_8_khz_call_tapped_at_16_khz_gives_twice_the_samples_in_20_ms_frames() {
        let mut taps = Taps::default();
        let mut tap = taps.add_pcm(8000, 16000).unwrap();
        assert_eq!(tap.rate(), 16000);
        let tone: Vec<i16> = (0..1600)
            .map(|i| (8000.0 * (2.0 * std::f64::consts::PI * 500.0 * i as f64 / 8000.0).sin()) as i16)
            .collect();
        for frame in tone.chunks(160) {
            assert_eq!(taps.feed(&[0; 160], frame), 0);
        }
        drop(taps);
        let frames = drain(&mut tap);
        assert!(frames.iter().all(|f| f.len() == 320));
        assert_eq!(frames.len(), 10, "3,200 samples at 16 kHz");
        let up: Vec<i16> = frames.concat();
        let whole = crate::media::resample::resample_clip(&tone, 8000, 16000).unwrap();
        let worst = whole.iter().zip(&up).map(|(a, b)| (*a as i32 - *b as i32).abs()).max().unwrap();
        assert!(worst <= 2, "streamed tap vs whole-clip conversion: largest difference {worst}");
    }

    #[test]
    fn taps_are_bounded_and_forgotten_when_their_reader_goes() {
        let mut taps = Taps::default();
        let mut readers: Vec<_> = (0..MAX_TAPS).map(|_| taps.add_wire().unwrap()).collect();
        assert!(taps.add_pcm(8000, 16000).is_err());
        readers.pop();
        assert!(taps.add_pcm(8000, 16000).is_ok_and(|t| t.rate() == 16000), "a closed tap makes room");
        assert_eq!(taps.len(), MAX_TAPS);
        // The tap just added was dropped at once: the next frame forgets it.
        taps.feed(&[0; 160], &[0; 160]);
        assert_eq!(taps.len(), MAX_TAPS - 1);
        assert!(taps.add_pcm(8000, 16001).is_err(), "not a whole number of samples per 20 ms");
    }
}
