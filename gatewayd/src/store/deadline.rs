//! A statement timeout for SQLite, which has none of its own (PostgreSQL's is its
//! `statement_timeout` setting, see `Store::connect`).
//!
//! Every SQLite connection the process opens gets two hooks, installed by an automatic
//! extension (`sqlite3_auto_extension`, so connections opened by sqlx need no access to the
//! raw handle): a statement trace that notes when each statement starts running, and a
//! progress handler, called every [`CHECK_EVERY_OPS`] virtual-machine instructions, that
//! interrupts the statement once it has run longer than the limit. An interrupted statement
//! fails with SQLite's `interrupted` error and its transaction is rolled back by SQLite; the
//! connection stays usable.
//!
//! sqlx runs each SQLite connection on a worker thread of its own, and both hooks run on that
//! thread while it steps a statement, so the start time lives in a thread-local.
//!
//! The limit is process-wide ([`set_limit`]); 0 turns it off (migrations run without one).

use std::cell::Cell;
use std::ffi::{c_char, c_int, c_uint, c_void};
use std::sync::Once;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use libsqlite3_sys as ffi;

/// Instructions between two looks at the clock: about 0.1 ms of work.
const CHECK_EVERY_OPS: c_int = 10_000;

/// The limit in milliseconds; 0 = none.
static LIMIT_MS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// When the statement being stepped on this thread started.
    static STARTED: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Install the hooks for every SQLite connection opened from now on (idempotent).
pub fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: `on_open` has the signature SQLite expects of an extension entry point.
        let rc = unsafe { ffi::sqlite3_auto_extension(Some(on_open)) };
        if rc != ffi::SQLITE_OK {
            tracing::error!(rc, "SQLite statement timeout could not be installed");
        }
    });
}

/// Set the longest a statement may run; `None` or zero: no limit.
pub fn set_limit(limit: Option<Duration>) {
    LIMIT_MS.store(limit.map_or(0, |d| d.as_millis().max(1) as u64), Ordering::Relaxed);
}

/// The current limit.
pub fn limit() -> Option<Duration> {
    match LIMIT_MS.load(Ordering::Relaxed) {
        0 => None,
        ms => Some(Duration::from_millis(ms)),
    }
}

/// The automatic extension: runs inside `sqlite3_open*` of each new connection.
unsafe extern "C" fn on_open(
    db: *mut ffi::sqlite3,
    _err: *mut *mut c_char,
    _api: *const ffi::sqlite3_api_routines,
) -> c_int {
    // SAFETY: `db` is the connection being opened; the callbacks keep no pointer to it.
    unsafe {
        ffi::sqlite3_trace_v2(db, ffi::SQLITE_TRACE_STMT as c_uint, Some(on_trace), std::ptr::null_mut());
        ffi::sqlite3_progress_handler(db, CHECK_EVERY_OPS, Some(on_progress), std::ptr::null_mut());
    }
    ffi::SQLITE_OK
}

/// `SQLITE_TRACE_STMT`: a statement starts running (`x` is its SQL text), or a trigger
/// program inside it starts (`x` is a `-- trigger` comment: part of the same statement).
unsafe extern "C" fn on_trace(mask: c_uint, _ctx: *mut c_void, _stmt: *mut c_void, x: *mut c_void) -> c_int {
    if mask == ffi::SQLITE_TRACE_STMT as c_uint {
        // SAFETY: for SQLITE_TRACE_STMT, `x` is a NUL-terminated string (or null).
        let trigger =
            !x.is_null() && unsafe { std::ffi::CStr::from_ptr(x as *const c_char) }.to_bytes().starts_with(b"--");
        if !trigger {
            STARTED.set(Some(Instant::now()));
        }
    }
    0
}

/// Non-zero interrupts the running statement.
unsafe extern "C" fn on_progress(_ctx: *mut c_void) -> c_int {
    let Some(limit) = limit() else { return 0 };
    STARTED.get().is_some_and(|started| started.elapsed() > limit) as c_int
}

/// True when `e` is SQLite's "interrupted": the statement ran over the limit.
pub fn is_interrupt(e: &sqlx::Error) -> bool {
    e.as_database_error().and_then(|d| d.code()).is_some_and(|c| c == "9")
}
