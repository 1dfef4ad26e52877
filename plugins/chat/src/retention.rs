//! A session's uploaded files are removed when it ends (`file_retention_secs = 0`, the
//! default) or that many seconds later, through the host's `files.delete`.
//!
//! A timer per ended session does the removal on time; a sweep on every end-session and every
//! such timer catches what a restart (timers live in memory) or a failed removal left behind.
//! A session is marked `files_removed` only once all its files are gone, so a failure is
//! retried by the next sweep. After removal the history still lists the attachments; their
//! URLs answer 404.

use crate::db;
use crate::settings::Settings;
use gatewayd_plugin::{files, log, timers};
use std::time::{Duration, SystemTime};

/// Timer keys: `purge/<session_id>`.
const TIMER_PREFIX: &str = "purge/";
/// Sessions one sweep handles at most (the rest wait for the next one).
const SWEEP_BATCH: u32 = 16;

/// After `session_id` ended: remove its files now, or arm the timer that will.
pub fn after_end(session_id: &str, settings: &Settings) {
    if settings.file_retention_secs == 0 {
        if let Err(e) = purge(session_id) {
            log::warn(&format!("chat: removing the files of session {session_id} failed (retried later): {e}"));
        }
    } else {
        let delay_ms = settings.file_retention_secs.saturating_mul(1000);
        timers::set(&format!("{TIMER_PREFIX}{session_id}"), delay_ms, session_id, None);
    }
    sweep(settings);
}

/// A timer fired: when it is a retention timer, remove that session's files, then sweep.
pub fn on_timer(key: &str, settings: &Settings) {
    let Some(session_id) = key.strip_prefix(TIMER_PREFIX) else { return };
    if let Err(e) = purge(session_id) {
        log::warn(&format!("chat: removing the files of session {session_id} failed (retried later): {e}"));
    }
    sweep(settings);
}

/// Remove the files of ended sessions whose retention has passed and that still have them.
fn sweep(settings: &Settings) {
    let cutoff = SystemTime::now() - Duration::from_secs(settings.file_retention_secs.into());
    let cutoff = humantime::format_rfc3339_millis(cutoff).to_string();
    let due = match db::sessions_with_expired_files(&cutoff, SWEEP_BATCH) {
        Ok(d) => d,
        Err(e) => return log::warn(&format!("chat: the file retention sweep failed: {e}")),
    };
    for session_id in due {
        if let Err(e) = purge(&session_id) {
            log::warn(&format!("chat: removing the files of session {session_id} failed (retried later): {e}"));
        }
    }
}

/// Remove every file of the ended session `session_id`; mark it done only when all are gone.
fn purge(session_id: &str) -> Result<(), String> {
    for name in db::attachment_names(session_id)? {
        match files::delete(&name) {
            Ok(_) => {}
            // A name the host cannot have produced: there is no file to remove.
            Err(e) if e.starts_with("not_found") => {}
            Err(e) => return Err(e),
        }
    }
    db::mark_files_removed(session_id)
}
