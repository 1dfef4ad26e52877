//! The echo buffer (sans-IO): the caller's decoded frames waiting for their outgoing slot.
//!
//! A caller in real time leaves at most one frame waiting between two slots. After jitter, a
//! stall or a burst, frames can stay behind for good (input and output run at the same rate),
//! adding 20 ms per frame to every echo. When frames have been waiting at every slot for
//! [`TRIM_AFTER_SLOTS`] (5 s) in a row, the backlog that stood all that time (the smallest
//! depth seen) is dropped, oldest first, to win that delay back at once, except one frame:
//! that one is the jitter slack a single late caller frame leaves behind, and trimming it would
//! lose a frame of a call whose frames all arrived (measured: every frame the Twilio benchmark's
//! callers missed was such a trim, docs/benchmarks.md). A burst followed by silence drains and
//! is never trimmed; beyond [`MAX_FRAMES`] frames are refused.

use std::collections::VecDeque;

/// Frames the buffer holds at most (one second).
pub const MAX_FRAMES: usize = 50;
/// Consecutive slots with a standing backlog before one frame is dropped (5 s).
pub const TRIM_AFTER_SLOTS: u32 = 250;

/// Echoed frames of one call.
#[derive(Default)]
pub struct EchoBuffer {
    frames: VecDeque<Vec<i16>>,
    /// Consecutive slots that left frames waiting.
    standing: u32,
    /// Frames trimmed while playing as a mixer source, not yet counted by the call.
    trimmed: usize,
    /// The fewest frames left waiting at any of those slots.
    least_waiting: usize,
}

impl EchoBuffer {
    /// Queue a frame; false (frame dropped) when the buffer is full.
    pub fn push(&mut self, frame: &[i16]) -> bool {
        if self.frames.len() >= MAX_FRAMES {
            return false;
        }
        self.frames.push_back(frame.to_vec());
        true
    }

    /// The frame for this slot, if any, and how many standing frames were trimmed.
    pub fn pop(&mut self) -> (Option<Vec<i16>>, usize) {
        let frame = self.frames.pop_front();
        let waiting = self.frames.len();
        if waiting == 0 {
            self.standing = 0;
            return (frame, 0);
        }
        self.least_waiting = if self.standing == 0 { waiting } else { self.least_waiting.min(waiting) };
        self.standing += 1;
        if self.standing < TRIM_AFTER_SLOTS {
            return (frame, 0);
        }
        // One frame stays: the slack of one late frame (20 ms more echo delay at most).
        let trimmed = self.least_waiting.saturating_sub(1);
        self.frames.drain(..trimmed);
        self.standing = 0;
        (frame, trimmed)
    }

    pub fn clear(&mut self) {
        self.frames.clear();
        self.standing = 0;
    }

    /// Frames trimmed since the last call, when playing as a mixer source.
    pub fn take_trimmed(&mut self) -> usize {
        std::mem::take(&mut self.trimmed)
    }
}

impl super::mixer::Source for EchoBuffer {
    fn next_frame(&mut self, out: &mut Vec<i16>) -> bool {
        out.clear();
        let (frame, trimmed) = self.pop();
        self.trimmed += trimmed;
        match frame {
            Some(f) => {
                out.extend_from_slice(&f);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_drains_whole() {
        let mut e = EchoBuffer::default();
        for n in 0..MAX_FRAMES {
            assert!(e.push(&[n as i16]));
        }
        assert!(!e.push(&[99]), "full");
        for n in 0..MAX_FRAMES {
            assert_eq!(e.pop(), (Some(vec![n as i16]), 0));
        }
        assert_eq!(e.pop(), (None, 0));
    }

    #[test]
    fn one_standing_frame_is_jitter_slack_and_never_trimmed() {
        let mut e = EchoBuffer::default();
        e.push(&[0]);
        // One frame in, one out per slot, with one extra frame standing behind (a caller frame
        // that once came late): every frame is still echoed, in order.
        for expected in 0..3 * TRIM_AFTER_SLOTS as i16 {
            e.push(&[expected + 1]);
            assert_eq!(e.pop(), (Some(vec![expected]), 0));
        }
    }

    #[test]
    fn a_standing_burst_is_trimmed_at_once() {
        let mut e = EchoBuffer::default();
        // A burst of 10 frames, then one frame in and one out per slot: 10 stand behind.
        for n in 0..10 {
            e.push(&[n]);
        }
        let mut next = 10;
        for slot in 1..=TRIM_AFTER_SLOTS {
            e.push(&[next]);
            next += 1;
            let (frame, trimmed) = e.pop();
            assert!(frame.is_some());
            assert_eq!(trimmed, if slot == TRIM_AFTER_SLOTS { 9 } else { 0 }, "slot {slot}");
        }
        // Back to one frame of slack: the slot's frame is the one before the one just in.
        e.push(&[next]);
        assert_eq!(e.pop(), (Some(vec![next - 1]), 0));
    }
}
