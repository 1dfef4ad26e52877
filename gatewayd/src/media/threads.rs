//! The media threads: a tokio runtime of their own that hosts the calls' connections (socket,
//! reader, writer) and the media clocks that tick them (`[media]` in the config).
//!
//! On the daemon's main runtime a call's 20 ms tick would queue behind whatever else that
//! worker runs: HTTP requests, plugin events (a Wasm event may run for milliseconds), database
//! replies. Here a tick waits for nothing but other ticks, and the frame it produces is written
//! to the socket by a writer on the same runtime. The threads steal work from each other, so a
//! thread the OS preempts does not hold up the calls queued on it.
//!
//! With `realtime_priority` set, the threads run under `SCHED_RR` at that priority (what
//! telephony servers such as FreeSWITCH do for their media threads), so busy normal-priority
//! processes on the same cores cannot delay a frame. It needs `CAP_SYS_NICE` or an
//! `RLIMIT_RTPRIO` of at least that priority (systemd: `LimitRTPRIO=`); without either the
//! threads keep normal scheduling and a warning is logged.
//!
//! A real-time thread runs the instant anything it waits for is ready, so it would wake for
//! each caller frame, each tap and each plugin reply on its own, and preempt whichever thread
//! shares its core each time (at 500 transcribed calls: 9,000 wake-ups and 3,700 preemptions of
//! the main runtime's workers a second). With `coalesce_us`, a thread that wakes waits that long
//! (500 µs by default, asleep) before it runs, then handles everything that arrived meanwhile in
//! one pass, as a network card coalesces interrupts: a frame waits at most that much longer,
//! against a 20 ms slot (docs/benchmarks.md, Speech).

use super::clock::Clock;
use crate::config::MediaConfig;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::runtime::{Handle, Runtime};

/// The media runtime and its clocks.
pub struct MediaThreads {
    runtime: Option<Runtime>,
    handle: Handle,
    /// One clock per thread; calls are spread over them round-robin.
    clocks: Vec<Arc<Clock>>,
    next: AtomicUsize,
}

impl MediaThreads {
    /// Start `config.threads` media threads (at least one), under `SCHED_RR` at
    /// `config.realtime_priority` (1..=99) when it is not 0, each waiting `config.coalesce_us`
    /// after a wake-up before it runs (see the module's documentation).
    pub fn start(config: &MediaConfig) -> std::io::Result<MediaThreads> {
        let (threads, realtime_priority) = (config.threads.max(1), config.realtime_priority);
        let coalesce = Duration::from_micros(u64::from(config.coalesce_us));
        let started = AtomicUsize::new(0);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("gatewayd-media")
            .on_thread_start(move || {
                if realtime_priority > 0 {
                    set_realtime(started.fetch_add(1, Ordering::Relaxed), realtime_priority);
                }
            })
            .on_thread_unpark(move || {
                if !coalesce.is_zero() {
                    std::thread::sleep(coalesce);
                }
            })
            .enable_all()
            .build()?;
        let clocks = {
            let _on_media_runtime = runtime.enter();
            (0..threads).map(|_| Clock::start()).collect()
        };
        Ok(MediaThreads { handle: runtime.handle().clone(), runtime: Some(runtime), clocks, next: AtomicUsize::new(0) })
    }

    /// The media runtime.
    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }

    /// The clock for a new call.
    pub fn clock(&self) -> &Clock {
        &self.clocks[self.next.fetch_add(1, Ordering::Relaxed) % self.clocks.len()]
    }
}

impl Drop for MediaThreads {
    fn drop(&mut self) {
        // Dropped from async code at shutdown: do not wait for the calls' tasks.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Put the calling thread under `SCHED_RR` at `priority`; log why when the OS refuses.
fn set_realtime(thread: usize, priority: u8) {
    let param = libc::sched_param { sched_priority: i32::from(priority) };
    // SAFETY: pid 0 is the calling thread; `param` is a valid sched_param for the call.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_RR, &param) };
    if rc == 0 {
        tracing::debug!(thread, priority, "media thread runs under SCHED_RR");
    } else {
        let error = std::io::Error::last_os_error();
        tracing::warn!(thread, priority, %error, "media thread keeps normal scheduling: SCHED_RR refused (needs CAP_SYS_NICE or LimitRTPRIO)");
    }
}
