//! The media clock: one timer drives the 20 ms slots of many calls.
//!
//! A call's slots fall on a fixed grid (`first + n * 20 ms`), so they all fall in the same
//! millisecond of each 20 ms cycle. The clock keeps its calls in 20 buckets, one per
//! millisecond of the cycle, wakes once per millisecond, and ticks the calls of every
//! millisecond that has passed since its last wake-up. 1,000 calls cost 1,000 timer wake-ups a
//! second instead of 50,000, and a slot is served at most about 1 ms after it is due (the
//! resolution of tokio's timer, as with one timer per call). The delay of each frame behind its
//! own slot is still measured per call ([`super::pacer`]). A clock without calls sleeps.

use super::call::Call;
use parking_lot::Mutex;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::{Instant, MissedTickBehavior};

/// A live call, shared by its connection's reader, the plugin's media calls and the clock.
/// None once the call has ended; the clock then forgets it.
pub type CallCell = Mutex<Option<Call>>;

/// Milliseconds in a 20 ms cycle: one bucket each.
const BUCKETS: u64 = 20;

const MS: Duration = Duration::from_millis(1);

/// A set of calls and the task that ticks them (on the runtime that started it).
pub struct Clock {
    epoch: Instant,
    buckets: Mutex<Vec<Vec<Arc<CallCell>>>>,
    /// Calls in the buckets; the clock sleeps while there are none.
    calls: AtomicUsize,
    wake: Notify,
}

impl Clock {
    /// A clock ticking on the current tokio runtime.
    pub fn start() -> Arc<Clock> {
        let clock = Arc::new(Clock {
            epoch: Instant::now(),
            buckets: Mutex::new(vec![Vec::new(); BUCKETS as usize]),
            calls: AtomicUsize::new(0),
            wake: Notify::new(),
        });
        tokio::spawn(clock.clone().run());
        clock
    }

    /// Drive `call` from its next slot on.
    pub fn add(&self, call: Arc<CallCell>) {
        let Some(deadline) = call.lock().as_ref().map(Call::deadline) else { return };
        let bucket = self.millisecond(deadline) % BUCKETS;
        self.buckets.lock()[bucket as usize].push(call);
        self.calls.fetch_add(1, Ordering::AcqRel);
        self.wake.notify_one();
    }

    /// Whole milliseconds from the clock's epoch to `t`.
    fn millisecond(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_millis() as u64
    }

    async fn run(self: Arc<Self>) {
        let mut timer = tokio::time::interval_at(self.epoch + MS, MS);
        timer.set_missed_tick_behavior(MissedTickBehavior::Skip);
        // Every millisecond before `done` has been served.
        let mut done = 0u64;
        loop {
            if self.calls.load(Ordering::Acquire) == 0 {
                // No calls: no wake-ups until one is added.
                self.wake.notified().await;
                timer.reset();
                done = self.millisecond(Instant::now());
            }
            timer.tick().await;
            let now = self.millisecond(Instant::now());
            // The milliseconds that have fully passed; after a stall, each bucket once.
            for ms in done.max(now.saturating_sub(BUCKETS))..now {
                self.serve((ms % BUCKETS) as usize);
            }
            done = now;
        }
    }

    /// Tick the calls of `bucket` whose slot is due; forget the ended ones.
    fn serve(&self, bucket: usize) {
        let mut buckets = self.buckets.lock();
        buckets[bucket].retain(|cell| {
            let mut call = cell.lock();
            match call.as_mut() {
                None => {
                    self.calls.fetch_sub(1, Ordering::AcqRel);
                    false
                }
                Some(c) => {
                    let now = Instant::now();
                    if c.deadline() <= now {
                        c.tick(now);
                    }
                    true
                }
            }
        });
    }
}
