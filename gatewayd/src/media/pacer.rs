//! Real-time pacing (sans-IO): one frame every 20 ms on a fixed schedule.
//!
//! Slot `n` is due at `origin + n * 20 ms`. The caller sleeps until [`Pacer::deadline`] and
//! calls [`Pacer::tick`] with the time it woke. A wake-up more than [`LATE`] after its slot is a
//! late frame; when the task fell a whole frame or more behind, the missed slots are skipped
//! (counted) instead of being sent in a burst, and the schedule carries on from the next slot.

use super::format::FRAME;
use std::time::Duration;
use tokio::time::Instant;

/// A frame sent more than this after its slot counts as late (half a frame).
pub const LATE: Duration = Duration::from_millis(10);

/// The schedule of one call.
#[derive(Debug)]
pub struct Pacer {
    origin: Instant,
    slot: u32,
}

/// The outcome of one wake-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tick {
    /// How long after its slot this frame goes out.
    pub delay: Duration,
    /// The delay is over [`LATE`].
    pub late: bool,
    /// Slots passed without a frame because the task was a frame or more behind.
    pub skipped: u32,
}

impl Pacer {
    /// A schedule whose first slot is `first`.
    pub fn new(first: Instant) -> Pacer {
        Pacer { origin: first, slot: 0 }
    }

    /// When the next frame is due.
    pub fn deadline(&self) -> Instant {
        self.origin + FRAME * self.slot
    }

    /// Account for a wake-up at `now` (at or after [`Pacer::deadline`]) and move to the next
    /// slot, skipping any that have already passed.
    pub fn tick(&mut self, now: Instant) -> Tick {
        let delay = now.saturating_duration_since(self.deadline());
        let skipped = (delay.as_micros() / FRAME.as_micros()) as u32;
        self.slot += 1 + skipped;
        Tick { delay, late: delay > LATE, skipped }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_time_ticks_follow_the_grid_without_drift() {
        let t0 = Instant::now();
        let mut p = Pacer::new(t0);
        for n in 0..1000u32 {
            assert_eq!(p.deadline(), t0 + FRAME * n);
            // Waking 3 ms late every time does not shift the grid.
            let tick = p.tick(p.deadline() + Duration::from_millis(3));
            assert_eq!(tick, Tick { delay: Duration::from_millis(3), late: false, skipped: 0 });
        }
    }

    #[test]
    fn a_stall_skips_slots_instead_of_bursting() {
        let t0 = Instant::now();
        let mut p = Pacer::new(t0);
        p.tick(t0);
        // Woke 65 ms after slot 1: late, slots 2..4 are gone, next is slot 5.
        let tick = p.tick(t0 + FRAME + Duration::from_millis(65));
        assert!(tick.late);
        assert_eq!(tick.skipped, 3);
        assert_eq!(p.deadline(), t0 + FRAME * 5);
        assert!(p.deadline() > t0 + FRAME + Duration::from_millis(65));
        let tick = p.tick(t0 + FRAME * 5 + Duration::from_millis(11));
        assert!(tick.late && tick.skipped == 0);
    }
}
