//! What an event's time limit measures: the CPU time of the plugin's own code (DESIGN
//! property 3), not the wall time around it.
//!
//! A wall-clock deadline fails healthy events on a busy machine: the thread running the guest
//! can wait on the run queue for longer than the whole limit, and a cold instance pays for its
//! instantiation and first page faults. So each store carries a [`Budget`]: the store's call
//! hook opens a segment when control enters guest code (`CallingWasm`, `ReturningFromHost`) and
//! closes it when control leaves (`CallingHost`, `ReturningFromWasm`), adding the thread CPU
//! time the segment used. Within a segment the guest runs on one thread (an async host call
//! suspends the fiber only between `CallingHost` and `ReturningFromHost`), so the sum is the
//! guest's own CPU time: host calls (database, files), instantiation and time spent waiting
//! for a CPU do not count.
//!
//! The epoch ticker still drives the checks: a store's epoch deadline is set to the remaining
//! budget in ticks; when it is reached, the deadline callback asks [`Budget::on_deadline`],
//! which either extends the deadline by what is left or interrupts the guest. A separate wall
//! bound (10 times the limit, at least [`MIN_WALL_LIMIT`]) still ends an event whose guest
//! keeps calling the host in a loop, since host time is not charged to the CPU budget.

use std::time::{Duration, Instant};

/// Time between two epoch ticks (the ticker thread in `plugins::start_epoch_ticker`).
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// The least wall time an event may take in all, host calls included.
pub const MIN_WALL_LIMIT: Duration = Duration::from_secs(10);

/// CPU time instantiating a component may use (its start functions); generous, since it is
/// not part of any event's limit.
pub const INSTANTIATE_LIMIT: Duration = Duration::from_secs(5);

/// The CPU time the guest code of one call (an event, `init`, or an instantiation) has used
/// against its limit.
#[derive(Debug)]
pub struct Budget {
    limit: Duration,
    wall_limit: Duration,
    started: Instant,
    used: Duration,
    /// Thread CPU time when the open guest segment began.
    segment: Option<Duration>,
}

/// What to do when the epoch deadline is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The guest may go on for this many more ticks before the next check.
    Continue(u64),
    /// The guest used its budget (or the wall bound passed): interrupt it.
    Interrupt,
}

impl Default for Budget {
    fn default() -> Self {
        Budget::new(INSTANTIATE_LIMIT, Instant::now())
    }
}

impl Budget {
    /// A fresh budget of `limit` CPU time, starting at `now`.
    pub fn new(limit: Duration, now: Instant) -> Budget {
        Budget {
            limit,
            wall_limit: (limit * 10).max(MIN_WALL_LIMIT),
            started: now,
            used: Duration::ZERO,
            segment: None,
        }
    }

    /// Ticks until the first check: the whole limit (CPU time never runs ahead of wall time
    /// on one thread, so checking after the limit in wall time misses nothing).
    pub fn initial_ticks(&self) -> u64 {
        ticks(self.limit)
    }

    /// Guest CPU time used so far.
    #[cfg(test)]
    pub fn used(&self) -> Duration {
        self.used
    }

    /// Control entered guest code; `cpu` is the current thread's CPU time.
    pub fn enter_guest(&mut self, cpu: Duration) {
        self.segment = Some(cpu);
    }

    /// Control left guest code; `cpu` is the current thread's CPU time.
    pub fn leave_guest(&mut self, cpu: Duration) {
        if let Some(start) = self.segment.take() {
            self.used += cpu.saturating_sub(start);
        }
    }

    /// The epoch deadline was reached at `now`, with thread CPU time `cpu`.
    pub fn on_deadline(&mut self, cpu: Duration, now: Instant) -> Verdict {
        let open = self.segment.map(|start| cpu.saturating_sub(start)).unwrap_or_default();
        let used = self.used + open;
        if used >= self.limit || now.saturating_duration_since(self.started) >= self.wall_limit {
            return Verdict::Interrupt;
        }
        Verdict::Continue(ticks(self.limit - used))
    }
}

/// Epoch ticks covering `d` (at least one).
fn ticks(d: Duration) -> u64 {
    (d.as_micros().div_ceil(EPOCH_TICK.as_micros()) as u64).max(1)
}

/// CPU time the calling thread has used (`CLOCK_THREAD_CPUTIME_ID`, user and system).
pub fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant Linux supports.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn host_calls_and_waiting_are_not_charged() {
        let t0 = Instant::now();
        let mut b = Budget::new(100 * MS, t0);
        assert_eq!(b.initial_ticks(), 20);
        // 30 ms of guest CPU, then a host call that takes 5 s of wall time (and 1 s of CPU on
        // other threads' behalf), then 30 ms more of guest CPU.
        b.enter_guest(Duration::from_secs(7));
        b.leave_guest(Duration::from_secs(7) + 30 * MS);
        b.enter_guest(Duration::from_secs(8));
        // The deadline fires 5 s of wall time later, mid-segment, 30 ms into it.
        let v = b.on_deadline(Duration::from_secs(8) + 30 * MS, t0 + Duration::from_secs(5));
        assert_eq!(v, Verdict::Continue(8), "40 ms of the 100 ms left: 8 ticks");
        b.leave_guest(Duration::from_secs(8) + 30 * MS);
        assert_eq!(b.used(), 60 * MS);
    }

    #[test]
    fn a_cold_start_is_not_charged() {
        // Instantiation runs under its own budget; the event's budget starts afterwards, so
        // however long instantiating took (here 3 s of CPU), the event has its whole limit.
        let t0 = Instant::now();
        let mut inst = Budget::new(INSTANTIATE_LIMIT, t0);
        inst.enter_guest(Duration::ZERO);
        assert_eq!(inst.on_deadline(Duration::from_secs(3), t0 + Duration::from_secs(3)), Verdict::Continue(400));
        inst.leave_guest(Duration::from_secs(3));
        let t1 = t0 + Duration::from_secs(3);
        let mut event = Budget::new(100 * MS, t1);
        event.enter_guest(Duration::from_secs(3));
        assert_eq!(event.on_deadline(Duration::from_secs(3) + 99 * MS, t1 + 100 * MS), Verdict::Continue(1));
        assert_eq!(event.on_deadline(Duration::from_secs(3) + 100 * MS, t1 + 105 * MS), Verdict::Interrupt);
    }

    #[test]
    fn a_runaway_guest_is_interrupted_and_the_wall_bound_holds() {
        let t0 = Instant::now();
        let mut b = Budget::new(100 * MS, t0);
        b.enter_guest(Duration::ZERO);
        assert_eq!(b.on_deadline(150 * MS, t0 + 150 * MS), Verdict::Interrupt);
        // A guest that only calls the host: little CPU, but the wall bound ends it.
        let mut b = Budget::new(100 * MS, t0);
        b.enter_guest(Duration::ZERO);
        b.leave_guest(MS);
        b.enter_guest(MS);
        assert!(matches!(b.on_deadline(2 * MS, t0 + Duration::from_secs(9)), Verdict::Continue(_)));
        assert_eq!(b.on_deadline(2 * MS, t0 + Duration::from_secs(10)), Verdict::Interrupt);
    }

    #[test]
    fn thread_cpu_time_advances_with_work_not_with_sleep() {
        let a = thread_cpu_time();
        std::thread::sleep(50 * MS);
        let b = thread_cpu_time();
        assert!(b - a < 40 * MS, "sleeping used {:?} of CPU", b - a);
        let mut x = 0u64;
        while thread_cpu_time() - b < 5 * MS {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        assert!(thread_cpu_time() - b >= 5 * MS);
    }
}
