//! Per-call media statistics, updated by the call's tasks and read when the call ends.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Counters of one call. Frames are 20 ms; bytes are wire bytes.
#[derive(Debug, Default)]
pub struct CallStats {
    /// Frames received from the client and accepted.
    pub frames_in: AtomicU64,
    pub bytes_in: AtomicU64,
    /// Frames sent to the client.
    pub frames_out: AtomicU64,
    pub bytes_out: AtomicU64,
    /// Outgoing frames sent more than half a frame after their slot (see `pacer::LATE`).
    pub late_frames: AtomicU64,
    /// Outgoing slots skipped because the call's task fell a frame or more behind.
    pub skipped_slots: AtomicU64,
    /// Incoming frames dropped: the call's inbound queue or echo buffer was full, or a standing
    /// echo backlog was trimmed.
    pub dropped_frames: AtomicU64,
    /// Incoming frames refused: wrong size or undecodable.
    pub rejected_frames: AtomicU64,
    /// Largest delay of an outgoing frame behind its slot, microseconds.
    pub max_delay_us: AtomicU64,
    /// Slots where a started stream had no audio ready and played silence.
    pub stream_underruns: AtomicU64,
    /// Caller frames a tap lost because its reader was behind (one per tap and frame).
    pub tap_dropped_frames: AtomicU64,
    /// Recording blocks (20 ms) dropped because the writer thread was behind.
    pub recording_dropped_blocks: AtomicU64,
}

/// A plain copy of [`CallStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatsSnapshot {
    pub frames_in: u64,
    pub bytes_in: u64,
    pub frames_out: u64,
    pub bytes_out: u64,
    pub late_frames: u64,
    pub skipped_slots: u64,
    pub dropped_frames: u64,
    pub rejected_frames: u64,
    pub max_delay_us: u64,
    pub stream_underruns: u64,
    pub tap_dropped_frames: u64,
    pub recording_dropped_blocks: u64,
}

impl CallStats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    /// A consistent-enough copy (each counter is read once).
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            frames_in: self.frames_in.load(Relaxed),
            bytes_in: self.bytes_in.load(Relaxed),
            frames_out: self.frames_out.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
            late_frames: self.late_frames.load(Relaxed),
            skipped_slots: self.skipped_slots.load(Relaxed),
            dropped_frames: self.dropped_frames.load(Relaxed),
            rejected_frames: self.rejected_frames.load(Relaxed),
            max_delay_us: self.max_delay_us.load(Relaxed),
            stream_underruns: self.stream_underruns.load(Relaxed),
            tap_dropped_frames: self.tap_dropped_frames.load(Relaxed),
            recording_dropped_blocks: self.recording_dropped_blocks.load(Relaxed),
        }
    }
}
