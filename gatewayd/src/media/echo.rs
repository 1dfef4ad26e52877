//! The echo buffer (sans-IO): the caller's decoded frames waiting for their outgoing slot.
//!
//! A caller in real time leaves at most one frame waiting between two slots. After jitter or
//! a stall, one frame more can stay behind for good (input and output run at the same rate),
//! adding 20 ms to every echo. When frames have been waiting at every slot for
//! [`TRIM_AFTER_SLOTS`] (5 s) in a row, the oldest one is dropped to win that delay back. A
//! burst drains in under a second and is never trimmed; beyond [`MAX_FRAMES`] frames are refused.

use std::collections::VecDeque;

/// Frames the buffer holds at most (one second).
pub const MAX_FRAMES: usize = 50;
/// Consecutive slots with a standing backlog before one frame is dropped (5 s).
pub const TRIM_AFTER_SLOTS: u32 = 250;

/// Echoed frames of one call.
#[derive(Default)]
pub struct EchoBuffer {
    frames: VecDeque<Vec<i16>>,
    standing: u32,
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

    /// The frame for this slot, if any, and whether a standing frame was trimmed.
    pub fn pop(&mut self) -> (Option<Vec<i16>>, bool) {
        let frame = self.frames.pop_front();
        let mut trimmed = false;
        if self.frames.is_empty() {
            self.standing = 0;
        } else {
            self.standing += 1;
            if self.standing >= TRIM_AFTER_SLOTS {
                self.frames.pop_front();
                self.standing = 0;
                trimmed = true;
            }
        }
        (frame, trimmed)
    }

    pub fn clear(&mut self) {
        self.frames.clear();
        self.standing = 0;
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
            assert_eq!(e.pop(), (Some(vec![n as i16]), false));
        }
        assert_eq!(e.pop(), (None, false));
    }

    #[test]
    fn a_standing_frame_is_trimmed_after_five_seconds() {
        let mut e = EchoBuffer::default();
        e.push(&[0]);
        let mut next = 1;
        let mut trims = 0;
        // One frame in, one out per slot, with one extra frame standing behind.
        for _ in 0..TRIM_AFTER_SLOTS + 10 {
            e.push(&[next]);
            next += 1;
            let (frame, trimmed) = e.pop();
            assert!(frame.is_some());
            trims += trimmed as u32;
        }
        assert_eq!(trims, 1);
        // Back to real time: the slot's frame is the one that just came in.
        e.push(&[next]);
        assert_eq!(e.pop(), (Some(vec![next]), false));
    }
}
