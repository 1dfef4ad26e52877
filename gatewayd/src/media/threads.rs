//! The media threads: each runs a single-threaded tokio runtime that hosts the call tasks and
//! the socket writers of media connections (`[media]` in the config).
//!
//! On the daemon's main runtime a call's 20 ms tick would queue behind whatever else that
//! worker runs: HTTP requests, plugin events (a Wasm event may run for milliseconds), database
//! replies. Here a tick waits for nothing but other ticks, and the frame it produces is written
//! to the socket by a writer on the same thread, without a cross-thread wake-up. Calls are
//! spread over the threads round-robin; each keeps its thread for its whole life.
//!
//! With `realtime_priority` set, the threads run under `SCHED_RR` at that priority (what
//! telephony servers such as FreeSWITCH do for their media threads), so busy normal-priority
//! processes on the same cores cannot delay a frame. It needs `CAP_SYS_NICE` or an
//! `RLIMIT_RTPRIO` of at least that priority (systemd: `LimitRTPRIO=`); without either the
//! threads keep normal scheduling and a warning is logged.

use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::runtime::Handle;

/// The media threads' runtimes.
pub struct MediaThreads {
    handles: Vec<Handle>,
    next: AtomicUsize,
}

impl MediaThreads {
    /// Start `threads` media threads (at least one), under `SCHED_RR` at `realtime_priority`
    /// (1..=99) when it is not 0.
    pub fn start(threads: usize, realtime_priority: u8) -> std::io::Result<MediaThreads> {
        let mut handles = Vec::with_capacity(threads.max(1));
        for i in 0..threads.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            handles.push(runtime.handle().clone());
            std::thread::Builder::new().name(format!("gatewayd-media-{i}")).spawn(move || {
                if realtime_priority > 0 {
                    set_realtime(i, realtime_priority);
                }
                // Runs until the process exits: call tasks end with their connections.
                runtime.block_on(std::future::pending::<()>());
            })?;
        }
        Ok(MediaThreads { handles, next: AtomicUsize::new(0) })
    }

    /// The runtime of the next call's thread (round-robin).
    pub fn pick(&self) -> Handle {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        self.handles[i].clone()
    }

    /// Number of media threads.
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
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
