//! The mixer (sans-IO): a call's sources summed into the frame of each 20 ms slot.
//!
//! A [`Source`] yields one frame of 16-bit PCM at the call's rate per slot, or nothing: the play
//! queue (files, bytes, DTMF tones, marks), the echo of the caller, streamed audio
//! ([`super::stream_source`]). The [`Mixer`] adds the frames of the sources that played in 32
//! bits and clips the sum once to the 16-bit range (full scale instead of wrapping; the order of
//! the sources does not matter). A slot
//! where no source played yields no frame, so nothing is sent (the `ivr.md` wire carries only
//! audio that was played).

use super::playout::Reached;

/// Something that plays into a call, one 20 ms frame per slot.
pub trait Source {
    /// This slot's frame: fill `out` (cleared first) with exactly the call's frame size in
    /// samples and return true, or leave it empty and return false when the source has nothing
    /// to play in this slot.
    fn next_frame(&mut self, out: &mut Vec<i16>) -> bool;

    /// After the slot's frame was sent: what the source reached (marks whose audio has all
    /// been sent, the end of playback), appended to `into`.
    fn reached(&mut self, _into: &mut Vec<Reached>) {}
}

/// Sums a call's sources, one slot at a time.
pub struct Mixer {
    frame_samples: usize,
    /// One source's frame.
    scratch: Vec<i16>,
    /// The sum of the frames so far.
    sum: Vec<i32>,
}

impl Mixer {
    /// A mixer of frames of `frame_samples` samples (the call's rate / 50).
    pub fn new(frame_samples: usize) -> Mixer {
        Mixer { frame_samples, scratch: Vec::with_capacity(frame_samples), sum: vec![0; frame_samples] }
    }

    /// Mix one slot: ask each of `sources` for its frame, in order, and sum those that played
    /// into `out` (cleared first; left empty when none played). Returns how many played.
    pub fn mix<'a>(&mut self, sources: impl IntoIterator<Item = &'a mut dyn Source>, out: &mut Vec<i16>) -> usize {
        out.clear();
        let mut playing = 0;
        for source in sources {
            if !source.next_frame(&mut self.scratch) {
                continue;
            }
            // A source is trusted to give a whole frame; a short one is padded, a long one cut.
            self.scratch.resize(self.frame_samples, 0);
            if playing == 0 {
                self.sum.iter_mut().zip(&self.scratch).for_each(|(a, &b)| *a = b as i32);
            } else {
                self.sum.iter_mut().zip(&self.scratch).for_each(|(a, &b)| *a += b as i32);
            }
            playing += 1;
        }
        if playing > 0 {
            out.extend(self.sum.iter().map(|&s| s.clamp(i16::MIN as i32, i16::MAX as i32) as i16));
        }
        playing
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::echo::EchoBuffer;
    use crate::media::playout::PlayQueue;

    /// A source playing a fixed value for a number of slots.
    struct Constant(i16, usize);

    impl Source for Constant {
        fn next_frame(&mut self, out: &mut Vec<i16>) -> bool {
            out.clear();
            if self.1 == 0 {
                return false;
            }
            self.1 -= 1;
            out.resize(4, self.0);
            true
        }
    }

    #[test]
    fn frames_are_summed_with_clipping() {
        let mut m = Mixer::new(4);
        let mut out = vec![7; 9];
        let mut a = Constant(20_000, 2);
        let mut b = Constant(20_000, 1);
        let mut c = Constant(-3, 3);
        assert_eq!(m.mix([&mut a as &mut dyn Source, &mut b, &mut c], &mut out), 3);
        assert_eq!(out, [32767; 4], "20000 + 20000 - 3 clips at full scale, once");
        assert_eq!(m.mix([&mut a as &mut dyn Source, &mut b, &mut c], &mut out), 2);
        assert_eq!(out, [19_997; 4]);
        assert_eq!(m.mix([&mut a as &mut dyn Source, &mut b, &mut c], &mut out), 1);
        assert_eq!(out, [-3; 4], "a lone source passes untouched");
        assert_eq!(m.mix([&mut a as &mut dyn Source, &mut b, &mut c], &mut out), 0);
        assert!(out.is_empty(), "no source played: no frame");
        let mut a = Constant(-30_000, 1);
        let mut b = Constant(-30_000, 1);
        let mut c = Constant(30_000, 1);
        assert_eq!(m.mix([&mut a as &mut dyn Source, &mut b, &mut c], &mut out), 3);
        assert_eq!(out, [-30_000; 4], "clipped after the sum, not along the way");
        let mut a = Constant(-30_000, 1);
        let mut b = Constant(-30_000, 1);
        assert_eq!(m.mix([&mut a as &mut dyn Source, &mut b], &mut out), 2);
        assert_eq!(out, [-32768; 4]);
    }

    #[test]
    fn the_play_queue_and_the_echo_give_whole_frames() {
        let mut m = Mixer::new(4);
        let mut q = PlayQueue::new(4);
        q.push_audio(vec![100; 6].into());
        q.push_mark("m".into());
        let mut echo = EchoBuffer::default();
        assert!(echo.push(&[1, 2, 3, 4]));
        let mut out = Vec::new();
        assert_eq!(m.mix([&mut q as &mut dyn Source, &mut echo], &mut out), 2);
        assert_eq!(out, [101, 102, 103, 104]);
        let mut reached = Vec::new();
        Source::reached(&mut q, &mut reached);
        assert!(reached.is_empty());
        // The rest of the clip, padded to a frame; the echo has nothing this slot.
        assert_eq!(m.mix([&mut q as &mut dyn Source, &mut echo], &mut out), 1);
        assert_eq!(out, [100, 100, 0, 0]);
        Source::reached(&mut q, &mut reached);
        assert_eq!(reached, [Reached::Mark("m".into()), Reached::Finished]);
        assert_eq!(m.mix([&mut q as &mut dyn Source, &mut echo], &mut out), 0);
    }
}
