//! The chat tables (this plugin's migrations, `plugins/chat/migrations`): `chat_sessions` and
//! `chat_timeline`. Placeholders are `$1`, `$2`, ... on SQLite and PostgreSQL; integers are
//! BIGINT on PostgreSQL.

use gatewayd_plugin::{SqlValue, store};

fn text(s: &str) -> SqlValue {
    SqlValue::Text(s.to_string())
}

fn opt_text(s: Option<&str>) -> SqlValue {
    s.map(text).unwrap_or(SqlValue::Null)
}

fn col_text(row: &[SqlValue], i: usize) -> Option<String> {
    row.get(i).and_then(store::text).map(str::to_string)
}

fn col_int(row: &[SqlValue], i: usize) -> i64 {
    row.get(i).and_then(store::integer).unwrap_or(0)
}

/// A chat session row.
#[derive(Debug, Clone)]
pub struct Session {
    pub id: String,
    pub business_id: String,
    pub visitor_id: String,
    pub active: bool,
}

const SESSION_COLUMNS: &str = "id, business_id, visitor_id, active";

fn session_from(row: &[SqlValue]) -> Option<Session> {
    Some(Session {
        id: col_text(row, 0)?,
        business_id: col_text(row, 1)?,
        visitor_id: col_text(row, 2)?,
        active: col_int(row, 3) == 1,
    })
}

/// The session `id`, if it exists.
pub fn session(id: &str) -> Result<Option<Session>, String> {
    let rows = store::query(&format!("SELECT {SESSION_COLUMNS} FROM chat_sessions WHERE id = $1"), &[text(id)])?;
    Ok(rows.first().and_then(|r| session_from(r)))
}

pub fn business_exists(id: &str) -> Result<bool, String> {
    Ok(!store::query("SELECT 1 FROM businesses WHERE id = $1", &[text(id)])?.is_empty())
}

pub fn department_in_business(department: &str, business: &str) -> Result<bool, String> {
    let rows = store::query(
        "SELECT 1 FROM departments WHERE id = $1 AND business_id = $2",
        &[text(department), text(business)],
    )?;
    Ok(!rows.is_empty())
}

/// What `start_session` needs to know about the visitor.
pub struct NewSession<'a> {
    pub business_id: &'a str,
    pub department_id: Option<&'a str>,
    /// `ext:<external_customer_id>` or `guest:<visitor_id>`.
    pub visitor_key: &'a str,
    /// Used when a new session is created (an existing one keeps its own).
    pub visitor_id: &'a str,
    pub external_customer_id: Option<&'a str>,
}

/// The visitor's active session in the business, created if there is none. The partial
/// unique index `chat_sessions_one_active` makes this safe under concurrent starts: a losing
/// insert does nothing and the winner's row is read back. Returns (session, created).
pub fn start_session(new: &NewSession, created_at: &str) -> Result<(Session, bool), String> {
    let find = || -> Result<Option<Session>, String> {
        let rows = store::query(
            &format!(
                "SELECT {SESSION_COLUMNS} FROM chat_sessions WHERE business_id = $1 AND visitor_key = $2 AND active = 1"
            ),
            &[text(new.business_id), text(new.visitor_key)],
        )?;
        Ok(rows.first().and_then(|r| session_from(r)))
    };
    for _ in 0..3 {
        if let Some(s) = find()? {
            return Ok((s, false));
        }
        let id = uuid::Uuid::new_v4().to_string();
        let inserted = store::execute(
            "INSERT INTO chat_sessions (id, business_id, department_id, visitor_key, visitor_id, external_customer_id, active, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, 1, $7) ON CONFLICT DO NOTHING",
            &[
                text(&id),
                text(new.business_id),
                opt_text(new.department_id),
                text(new.visitor_key),
                text(new.visitor_id),
                opt_text(new.external_customer_id),
                text(created_at),
            ],
        )?;
        if inserted == 1 {
            let session = Session {
                id,
                business_id: new.business_id.to_string(),
                visitor_id: new.visitor_id.to_string(),
                active: true,
            };
            return Ok((session, true));
        }
    }
    Err("could not start a session (concurrent ends and starts)".into())
}

/// Mark the session ended. False when it was not active.
pub fn end_session(id: &str, ended_by: &str, ended_at: &str) -> Result<bool, String> {
    let n = store::execute(
        "UPDATE chat_sessions SET active = 0, ended_at = $2, ended_by = $3 WHERE id = $1 AND active = 1",
        &[text(id), text(ended_at), text(ended_by)],
    )?;
    Ok(n == 1)
}

/// One timeline entry: a `message` (`text` or `file`) or an `attachment` (uploaded file).
#[derive(Debug, Clone, Default)]
pub struct Entry {
    pub seq: i64,
    pub session_id: String,
    pub kind: String,
    pub message_type: Option<String>,
    pub content: Option<String>,
    pub file_url: Option<String>,
    pub file_name: Option<String>,
    pub stored_name: Option<String>,
    pub content_type: Option<String>,
    pub size_bytes: i64,
    pub is_audio: bool,
    pub related_message: Option<String>,
    pub sender_id: String,
    pub sender_role: String,
    pub created_at: String,
}

const ENTRY_COLUMNS: &str = "seq, session_id, kind, message_type, content, file_url, file_name, stored_name, \
     content_type, size_bytes, is_audio, related_message, sender_id, sender_role, created_at";

fn entry_from(r: &[SqlValue]) -> Entry {
    Entry {
        seq: col_int(r, 0),
        session_id: col_text(r, 1).unwrap_or_default(),
        kind: col_text(r, 2).unwrap_or_default(),
        message_type: col_text(r, 3),
        content: col_text(r, 4),
        file_url: col_text(r, 5),
        file_name: col_text(r, 6),
        stored_name: col_text(r, 7),
        content_type: col_text(r, 8),
        size_bytes: col_int(r, 9),
        is_audio: col_int(r, 10) == 1,
        related_message: col_text(r, 11),
        sender_id: col_text(r, 12).unwrap_or_default(),
        sender_role: col_text(r, 13).unwrap_or_default(),
        created_at: col_text(r, 14).unwrap_or_default(),
    }
}

/// Store `e` in its session if the session is still active, in one statement (so nothing is
/// stored after the end). Returns the entry's sequence number, or None when the session has
/// ended. The write is committed when this returns: callers broadcast only afterwards.
pub fn append(e: &Entry) -> Result<Option<i64>, String> {
    let rows = store::query(
        "INSERT INTO chat_timeline (session_id, kind, message_type, content, file_url, file_name, stored_name, \
         content_type, size_bytes, is_audio, related_message, sender_id, sender_role, created_at) \
         SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14 \
         WHERE EXISTS (SELECT 1 FROM chat_sessions WHERE id = $1 AND active = 1) RETURNING seq",
        &[
            text(&e.session_id),
            text(&e.kind),
            opt_text(e.message_type.as_deref()),
            opt_text(e.content.as_deref()),
            opt_text(e.file_url.as_deref()),
            opt_text(e.file_name.as_deref()),
            opt_text(e.stored_name.as_deref()),
            opt_text(e.content_type.as_deref()),
            SqlValue::Integer(e.size_bytes),
            SqlValue::Integer(i64::from(e.is_audio)),
            opt_text(e.related_message.as_deref()),
            text(&e.sender_id),
            text(&e.sender_role),
            text(&e.created_at),
        ],
    )?;
    Ok(rows.first().map(|r| col_int(r, 0)))
}

/// Up to `limit` entries of a session with `seq > after`, in order.
pub fn timeline(session_id: &str, after: i64, limit: u32) -> Result<Vec<Entry>, String> {
    let rows = store::query(
        &format!("SELECT {ENTRY_COLUMNS} FROM chat_timeline WHERE session_id = $1 AND seq > $2 ORDER BY seq LIMIT $3"),
        &[text(session_id), SqlValue::Integer(after), SqlValue::Integer(i64::from(limit))],
    )?;
    Ok(rows.iter().map(|r| entry_from(r)).collect())
}

/// The attachment stored as `stored_name`, if any.
pub fn attachment(stored_name: &str) -> Result<Option<Entry>, String> {
    let rows = store::query(
        &format!("SELECT {ENTRY_COLUMNS} FROM chat_timeline WHERE stored_name = $1 AND kind = 'attachment'"),
        &[text(stored_name)],
    )?;
    Ok(rows.first().map(|r| entry_from(r)))
}

/// Does message `seq` exist in the session?
pub fn message_exists(session_id: &str, seq: i64) -> Result<bool, String> {
    let rows = store::query(
        "SELECT 1 FROM chat_timeline WHERE session_id = $1 AND seq = $2 AND kind = 'message'",
        &[text(session_id), SqlValue::Integer(seq)],
    )?;
    Ok(!rows.is_empty())
}

/// What [`reserve_upload`] found.
#[derive(Debug, PartialEq)]
pub enum Reservation {
    /// Counted: the upload may be stored (give it back with [`release_upload`] if it is not).
    Reserved,
    /// The session has ended (or does not exist): nothing counted.
    Ended,
    /// One more file, or `size` more bytes, would pass the session's caps: nothing counted.
    OverQuota,
}

/// Count an upload of `size` bytes against its session's caps, in one conditional UPDATE: on
/// SQLite the single writer orders them, on PostgreSQL the row lock makes a concurrent
/// reservation re-check the caps against the row it committed, so concurrent uploads can never
/// pass a cap together.
pub fn reserve_upload(session_id: &str, size: u64, max_count: u64, max_bytes: u64) -> Result<Reservation, String> {
    let int = |v: u64| SqlValue::Integer(i64::try_from(v).unwrap_or(i64::MAX));
    let n = store::execute(
        "UPDATE chat_sessions SET upload_count = upload_count + 1, upload_bytes = upload_bytes + $2 \
         WHERE id = $1 AND active = 1 AND upload_count + 1 <= $3 AND upload_bytes + $2 <= $4",
        &[text(session_id), int(size), int(max_count), int(max_bytes)],
    )?;
    if n == 1 {
        return Ok(Reservation::Reserved);
    }
    Ok(match session(session_id)? {
        Some(s) if s.active => Reservation::OverQuota,
        _ => Reservation::Ended,
    })
}

/// Give back a reservation whose file was not kept.
pub fn release_upload(session_id: &str, size: u64) -> Result<(), String> {
    store::execute(
        "UPDATE chat_sessions SET upload_count = upload_count - 1, upload_bytes = upload_bytes - $2 WHERE id = $1",
        &[text(session_id), SqlValue::Integer(i64::try_from(size).unwrap_or(i64::MAX))],
    )?;
    Ok(())
}

/// The stored names of a session's attachments.
pub fn attachment_names(session_id: &str) -> Result<Vec<String>, String> {
    let rows = store::query(
        "SELECT stored_name FROM chat_timeline WHERE session_id = $1 AND kind = 'attachment' AND stored_name IS NOT NULL",
        &[text(session_id)],
    )?;
    Ok(rows.iter().filter_map(|r| col_text(r, 0)).collect())
}

/// Record that an ended session's files are gone.
pub fn mark_files_removed(session_id: &str) -> Result<(), String> {
    store::execute("UPDATE chat_sessions SET files_removed = 1 WHERE id = $1 AND active = 0", &[text(session_id)])?;
    Ok(())
}

/// Up to `limit` ended sessions whose files are still kept and that ended at or before
/// `ended_before` (RFC 3339 UTC with milliseconds, which sorts as text).
pub fn sessions_with_expired_files(ended_before: &str, limit: u32) -> Result<Vec<String>, String> {
    let rows = store::query(
        "SELECT id FROM chat_sessions WHERE active = 0 AND files_removed = 0 AND ended_at <= $1 ORDER BY ended_at LIMIT $2",
        &[text(ended_before), SqlValue::Integer(i64::from(limit))],
    )?;
    Ok(rows.iter().filter_map(|r| col_text(r, 0)).collect())
}
