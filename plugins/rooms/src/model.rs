//! Durable state of the rooms protocol in the daemon's database (`store`, this plugin's
//! migrations `plugins/rooms/migrations`): rooms (each of a business), participants
//! and sessions (one per participant stay).
//!
//! Every function is one or two parameterised statements with `$n` placeholders, valid on both
//! SQLite and PostgreSQL, or one `store.batch` where statements must commit together. Errors
//! are the store's text, turned into `INTERNAL_ERROR` by callers.

use crate::errors::ApiError;
use gatewayd_plugin::{SqlValue, store};
use serde_json::{Value, json};

type Result<T> = std::result::Result<T, ApiError>;

/// Room states (spec: Connection States, `ROOM_STATES`).
pub mod room_status {
    /// Made by `POST /rooms`; nobody has joined yet.
    pub const CREATED: &str = "created";
    /// Someone is in the room, but fewer than two participants are `connected`.
    pub const WAITING: &str = "waiting";
    /// At least two participants are `connected`.
    pub const ACTIVE: &str = "active";
    /// The last participant left; terminal (joins are refused with `ROOM_CLOSED`).
    pub const CLOSED: &str = "closed";
    /// Every valid value, for the `status` filter of `GET /rooms`.
    pub const ALL: [&str; 4] = [CREATED, WAITING, ACTIVE, CLOSED];
}

/// Participant states (spec: Connection States, `PARTICIPANT_STATES`).
pub mod participant_status {
    /// Joined; WebRTC negotiation not finished yet.
    pub const CONNECTING: &str = "connecting";
    /// An offer/answer exchange involving the participant completed.
    pub const CONNECTED: &str = "connected";
    /// Its WebSocket dropped; it may resume within the grace period.
    pub const DISCONNECTED: &str = "disconnected";
    /// Gone for good (left, removed, timed out, grace expired, room deleted).
    pub const LEFT: &str = "left";
}

/// The current time as RFC 3339 UTC with microseconds, e.g. `2026-02-10T17:00:00.000000Z`
/// (fine enough that rooms created one after the other list in creation order).
pub fn now() -> String {
    let t = time::OffsetDateTime::now_utc();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.microsecond()
    )
}

/// Whole seconds from `start` to `end` (RFC 3339 texts); 0 when either does not parse.
pub fn seconds_between(start: &str, end: &str) -> i64 {
    use time::format_description::well_known::Rfc3339;
    match (time::OffsetDateTime::parse(start, &Rfc3339), time::OffsetDateTime::parse(end, &Rfc3339)) {
        (Ok(s), Ok(e)) => (e - s).whole_seconds().max(0),
        _ => 0,
    }
}

/// A new random identifier (UUID v4, hyphenated).
pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn text(s: &str) -> SqlValue {
    SqlValue::Text(s.to_string())
}

fn query(sql: &str, params: &[SqlValue]) -> Result<Vec<Vec<SqlValue>>> {
    store::query(sql, params).map_err(ApiError::internal)
}

fn execute(sql: &str, params: &[SqlValue]) -> Result<u64> {
    store::execute(sql, params).map_err(ApiError::internal)
}

/// Statements as one transaction (`store.batch`); each one's changed-row count.
fn transaction(statements: Vec<(&str, Vec<SqlValue>)>) -> Result<Vec<u64>> {
    store::transaction(statements)
        .map(|done| done.iter().map(|r| r.affected).collect())
        .map_err(|e| ApiError::internal(format!("transaction rolled back at statement {}: {}", e.index, e.message)))
}

fn col_text(row: &[SqlValue], i: usize) -> String {
    row.get(i).and_then(store::text).unwrap_or_default().to_string()
}

fn col_opt_text(row: &[SqlValue], i: usize) -> Option<String> {
    row.get(i).and_then(store::text).map(str::to_string)
}

/// An integer column (counts come back as integers on both backends; text is tolerated).
fn col_int(row: &[SqlValue], i: usize) -> i64 {
    match row.get(i) {
        Some(SqlValue::Integer(n)) => *n,
        Some(SqlValue::Real(f)) => *f as i64,
        Some(SqlValue::Boolean(b)) => i64::from(*b),
        Some(SqlValue::Text(s)) => s.parse().unwrap_or(0),
        _ => 0,
    }
}

fn col_json(row: &[SqlValue], i: usize) -> Value {
    row.get(i).and_then(store::text).and_then(|s| serde_json::from_str(s).ok()).unwrap_or(Value::Null)
}

/// A JSON object column; `{}` when NULL or unreadable.
fn col_object(row: &[SqlValue], i: usize) -> Value {
    match col_json(row, i) {
        v @ Value::Object(_) => v,
        _ => json!({}),
    }
}

/// A row of `rooms`.
#[derive(Debug, Clone)]
pub struct Room {
    pub id: String,
    pub name: String,
    pub status: String,
    /// The room's settings document (`max_participants`, `voice`, anything else clients store).
    pub settings: Value,
    pub created_at: String,
    pub updated_at: String,
    /// The business the room belongs to (its creator's); `None` for a room made before rooms
    /// had businesses that the migration could not attribute: no agent may use it.
    pub business_id: Option<String>,
}

const ROOM_COLUMNS: &str = "id, name, status, settings, created_at, updated_at, business_id";
/// Columns of [`ROOM_COLUMNS`].
const ROOM_COLUMN_COUNT: usize = 7;

impl Room {
    fn from_row(row: &[SqlValue]) -> Room {
        Room {
            id: col_text(row, 0),
            name: col_text(row, 1),
            status: col_text(row, 2),
            settings: col_object(row, 3),
            created_at: col_text(row, 4),
            updated_at: col_text(row, 5),
            business_id: col_opt_text(row, 6),
        }
    }

    /// `settings.max_participants`, when set to a positive integer.
    pub fn max_participants(&self) -> Option<i64> {
        self.settings.get("max_participants").and_then(Value::as_i64).filter(|n| *n > 0)
    }

    /// The spec's room object (Create Room response) plus `business_id`; with
    /// `participants_count` as in Get Room.
    pub fn to_json(&self, participants_count: Option<i64>) -> Value {
        let mut v = json!({
            "id": self.id,
            "name": self.name,
            "status": self.status,
            "settings": self.settings,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "business_id": self.business_id,
        });
        if let Some(n) = participants_count {
            v["participants_count"] = json!(n);
        }
        v
    }
}

/// Insert a new room (status `created`, in `room.business_id`) made by agent `created_by`.
pub fn insert_room(room: &Room, created_by: &str) -> Result<()> {
    execute(
        "INSERT INTO rooms (id, name, status, settings, created_by, created_at, updated_at, business_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        &[
            text(&room.id),
            text(&room.name),
            text(&room.status),
            text(&room.settings.to_string()),
            text(created_by),
            text(&room.created_at),
            text(&room.updated_at),
            text(room.business_id.as_deref().unwrap_or_default()),
        ],
    )?;
    Ok(())
}

/// The room `id`, if it exists.
pub fn get_room(id: &str) -> Result<Option<Room>> {
    let rows = query(&format!("SELECT {ROOM_COLUMNS} FROM rooms WHERE id = $1"), &[text(id)])?;
    Ok(rows.first().map(|r| Room::from_row(r)))
}

/// Save a room's name and settings (and bump `updated_at`).
pub fn update_room(room: &Room) -> Result<()> {
    execute(
        "UPDATE rooms SET name = $1, settings = $2, updated_at = $3 WHERE id = $4",
        &[text(&room.name), text(&room.settings.to_string()), text(&room.updated_at), text(&room.id)],
    )?;
    Ok(())
}

/// Set a room's status (and bump `updated_at`).
pub fn set_room_status(id: &str, status: &str) -> Result<()> {
    execute("UPDATE rooms SET status = $1, updated_at = $2 WHERE id = $3", &[text(status), text(&now()), text(id)])?;
    Ok(())
}

/// Delete a room and its participants, together. Sessions are kept as history.
pub fn delete_room(id: &str) -> Result<()> {
    transaction(vec![
        ("DELETE FROM room_participants WHERE room_id = $1", vec![text(id)]),
        ("DELETE FROM rooms WHERE id = $1", vec![text(id)]),
    ])?;
    Ok(())
}

const LIVE: &str = "status <> 'left'";

/// Participants of `room_id` that have not left (connecting, connected or disconnected).
pub fn count_live(room_id: &str) -> Result<i64> {
    let rows =
        query(&format!("SELECT COUNT(*) FROM room_participants WHERE room_id = $1 AND {LIVE}"), &[text(room_id)])?;
    Ok(rows.first().map(|r| col_int(r, 0)).unwrap_or(0))
}

/// (participants not left, participants `connected`) of `room_id`.
pub fn count_live_and_connected(room_id: &str) -> Result<(i64, i64)> {
    let rows = query(
        "SELECT status, COUNT(*) FROM room_participants WHERE room_id = $1 AND status <> 'left' GROUP BY status",
        &[text(room_id)],
    )?;
    let live = rows.iter().map(|r| col_int(r, 1)).sum();
    let connected =
        rows.iter().filter(|r| col_text(r, 0) == participant_status::CONNECTED).map(|r| col_int(r, 1)).sum();
    Ok((live, connected))
}

/// One page of the rooms of agent `agent_id`'s businesses (newest first), each with its
/// `participants_count`, and the total matching.
pub fn list_rooms(agent_id: &str, status: Option<&str>, limit: i64, offset: i64) -> Result<(Vec<(Room, i64)>, i64)> {
    let count_sql = format!("(SELECT COUNT(*) FROM room_participants p WHERE p.room_id = rooms.id AND p.{LIVE})");
    let mine = "business_id IN (SELECT m.business_id FROM agent_memberships m WHERE m.agent_id = $1)";
    let (filter, mut params) = match status {
        Some(s) => (format!("WHERE {mine} AND status = $2"), vec![text(agent_id), text(s)]),
        None => (format!("WHERE {mine}"), vec![text(agent_id)]),
    };
    let total_rows = query(&format!("SELECT COUNT(*) FROM rooms {filter}"), &params)?;
    let total = total_rows.first().map(|r| col_int(r, 0)).unwrap_or(0);
    let n = params.len();
    params.push(SqlValue::Integer(limit));
    params.push(SqlValue::Integer(offset));
    let rows = query(
        &format!(
            "SELECT {ROOM_COLUMNS}, {count_sql} FROM rooms {filter} ORDER BY created_at DESC, id LIMIT ${} OFFSET ${}",
            n + 1,
            n + 2
        ),
        &params,
    )?;
    Ok((rows.iter().map(|r| (Room::from_row(r), col_int(r, ROOM_COLUMN_COUNT))).collect(), total))
}

/// A row of `room_participants`.
#[derive(Debug, Clone)]
pub struct Participant {
    pub id: String,
    pub room_id: String,
    pub agent_id: String,
    pub status: String,
    /// Free-form metadata from the join (`display_name`, `capabilities`, ...).
    pub metadata: Value,
    pub muted: bool,
    /// The daemon connection holding the participant, when one does.
    pub connection_id: Option<u64>,
    pub session_id: String,
    pub joined_at: String,
}

const PARTICIPANT_COLUMNS: &str =
    "id, room_id, agent_id, status, metadata, muted, connection_id, session_id, joined_at";

impl Participant {
    fn from_row(row: &[SqlValue]) -> Participant {
        Participant {
            id: col_text(row, 0),
            room_id: col_text(row, 1),
            agent_id: col_text(row, 2),
            status: col_text(row, 3),
            metadata: col_object(row, 4),
            muted: col_int(row, 5) != 0,
            connection_id: match row.get(6) {
                Some(SqlValue::Null) | None => None,
                _ => u64::try_from(col_int(row, 6)).ok(),
            },
            session_id: col_text(row, 7),
            joined_at: col_text(row, 8),
        }
    }

    /// `metadata.display_name`, or null.
    pub fn display_name(&self) -> Value {
        self.metadata.get("display_name").cloned().unwrap_or(Value::Null)
    }

    /// Not `left`.
    pub fn is_live(&self) -> bool {
        self.status != participant_status::LEFT
    }

    /// The Join Room (REST) response object, plus `session_id` and `muted`.
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "room_id": self.room_id,
            "agent_id": self.agent_id,
            "status": self.status,
            "metadata": self.metadata,
            "muted": self.muted,
            "session_id": self.session_id,
            "joined_at": self.joined_at,
        })
    }

    /// An item of List Participants, plus `muted`.
    pub fn to_list_item(&self) -> Value {
        json!({
            "id": self.id,
            "agent_id": self.agent_id,
            "status": self.status,
            "display_name": self.display_name(),
            "muted": self.muted,
            "joined_at": self.joined_at,
        })
    }
}

/// The participant `id`, if it exists.
pub fn get_participant(id: &str) -> Result<Option<Participant>> {
    let rows = query(&format!("SELECT {PARTICIPANT_COLUMNS} FROM room_participants WHERE id = $1"), &[text(id)])?;
    Ok(rows.first().map(|r| Participant::from_row(r)))
}

/// The participant of `agent_id` in `room_id` that has not left, if any.
pub fn live_participant_of_agent(room_id: &str, agent_id: &str) -> Result<Option<Participant>> {
    let rows = query(
        &format!(
            "SELECT {PARTICIPANT_COLUMNS} FROM room_participants WHERE room_id = $1 AND agent_id = $2 AND {LIVE} \
             ORDER BY joined_at DESC LIMIT 1"
        ),
        &[text(room_id), text(agent_id)],
    )?;
    Ok(rows.first().map(|r| Participant::from_row(r)))
}

/// Participants of `room_id` that have not left, in join order.
pub fn live_participants(room_id: &str) -> Result<Vec<Participant>> {
    let rows = query(
        &format!(
            "SELECT {PARTICIPANT_COLUMNS} FROM room_participants WHERE room_id = $1 AND {LIVE} ORDER BY joined_at, id"
        ),
        &[text(room_id)],
    )?;
    Ok(rows.iter().map(|r| Participant::from_row(r)).collect())
}

/// Insert a new participant (status `connecting`) and its session (status `active`, in
/// `business`), unless `max` is set and the room already holds `max` live participants: then
/// `Ok(false)` and nothing is written.
///
/// One transaction (`store.batch`) of three statements, atomic on both backends:
/// 1. a no-op update of the room's row: on PostgreSQL it locks the row, so joins of one room
///    queue here until the one before commits (on SQLite the writer's `BEGIN IMMEDIATE`
///    already serialises every write);
/// 2. the insert, only while fewer than `max` live participants are counted. Under READ
///    COMMITTED each statement sees every row committed before it started, so after the lock
///    the count includes the previous joiner: two joins racing for the last seat end with
///    exactly one in;
/// 3. the session, only if step 2 inserted.
pub fn insert_participant(p: &Participant, business: Option<&str>, max: Option<i64>) -> Result<bool> {
    let participant = vec![
        text(&p.id),
        text(&p.room_id),
        text(&p.agent_id),
        text(&p.status),
        text(&p.metadata.to_string()),
        connection_param(p.connection_id),
        text(&p.session_id),
        text(&p.joined_at),
        SqlValue::Integer(max.unwrap_or(i64::MAX)),
    ];
    let insert = format!(
        "INSERT INTO room_participants (id, room_id, agent_id, status, metadata, connection_id, session_id, joined_at) \
         SELECT $1, $2, $3, $4, $5, NULLIF($6, -1), $7, $8 \
         WHERE (SELECT COUNT(*) FROM room_participants WHERE room_id = $2 AND {LIVE}) < $9"
    );
    let affected = transaction(vec![
        ("UPDATE rooms SET updated_at = updated_at WHERE id = $1", vec![text(&p.room_id)]),
        (insert.as_str(), participant),
        (
            "INSERT INTO room_sessions (id, room_id, participant_id, start_time, status, business_id) \
             SELECT $1, $2, $3, $4, 'active', $5 WHERE EXISTS (SELECT 1 FROM room_participants WHERE id = $3)",
            vec![
                text(&p.session_id),
                text(&p.room_id),
                text(&p.id),
                text(&p.joined_at),
                text(business.unwrap_or_default()),
            ],
        ),
    ])?;
    Ok(affected.get(1) == Some(&1))
}

/// A connection id as a SQL parameter that is always an integer: -1 for none, turned into NULL
/// by `NULLIF($n, -1)` in the statement. (A NULL parameter is bound as text; PostgreSQL caches
/// a prepared statement's parameter types, so one statement must never see both.)
fn connection_param(connection: Option<u64>) -> SqlValue {
    SqlValue::Integer(connection.and_then(|c| i64::try_from(c).ok()).unwrap_or(-1))
}

/// Set a participant's status and the connection holding it.
pub fn set_participant_connection(id: &str, status: &str, connection: Option<u64>) -> Result<()> {
    execute(
        "UPDATE room_participants SET status = $1, connection_id = NULLIF($2, -1) WHERE id = $3",
        &[text(status), connection_param(connection), text(id)],
    )?;
    Ok(())
}

/// Move a participant from `connecting` to `connected`; true when this call changed it.
pub fn mark_connected(id: &str) -> Result<bool> {
    let n = execute(
        "UPDATE room_participants SET status = 'connected' WHERE id = $1 AND status = 'connecting'",
        &[text(id)],
    )?;
    Ok(n > 0)
}

/// Record the participant's mute state.
pub fn set_muted(id: &str, muted: bool) -> Result<()> {
    execute("UPDATE room_participants SET muted = $1 WHERE id = $2", &[SqlValue::Integer(i64::from(muted)), text(id)])?;
    Ok(())
}

/// End a participant's stay: status `left` with `reason`, its session ended with
/// `session_status`. False when it had already left.
pub fn end_stay(p: &Participant, reason: &str, session_status: &str) -> Result<bool> {
    let at = now();
    let n = execute(
        "UPDATE room_participants SET status = 'left', connection_id = NULL, left_at = $1, left_reason = $2 \
         WHERE id = $3 AND status <> 'left'",
        &[text(&at), text(reason), text(&p.id)],
    )?;
    if n == 0 {
        return Ok(false);
    }
    execute(
        "UPDATE room_sessions SET end_time = $1, status = $2 WHERE id = $3 AND end_time IS NULL",
        &[text(&at), text(session_status), text(&p.session_id)],
    )?;
    Ok(true)
}

/// Session statuses.
pub mod session_status {
    /// The stay goes on.
    pub const ACTIVE: &str = "active";
    /// Ended by `room:leave`, REST leave, or the room being deleted.
    pub const COMPLETED: &str = "completed";
    /// Ended by `CONNECTION_TIMEOUT`.
    pub const TIMED_OUT: &str = "timed_out";
    /// Ended because the participant did not come back within the grace period.
    pub const DISCONNECTED: &str = "disconnected";
}

/// Store the latest client-reported stats of a session.
pub fn set_session_stats(session_id: &str, stats: &Value) -> Result<()> {
    execute(
        "UPDATE room_sessions SET stats = $1, stats_at = $2 WHERE id = $3",
        &[text(&stats.to_string()), text(&now()), text(session_id)],
    )?;
    Ok(())
}

/// The Get Session object for `id`, if it exists and belongs to a business of agent
/// `agent_id`. `duration` is whole seconds from start to end (to now while active); `stats` is
/// the latest report or null.
pub fn get_session(id: &str, agent_id: &str) -> Result<Option<Value>> {
    let rows = query(
        "SELECT id, room_id, participant_id, start_time, end_time, status, stats, stats_at FROM room_sessions \
         WHERE id = $1 AND business_id IN (SELECT m.business_id FROM agent_memberships m WHERE m.agent_id = $2)",
        &[text(id), text(agent_id)],
    )?;
    Ok(rows.first().map(|r| {
        let start = col_text(r, 3);
        let end = col_opt_text(r, 4);
        let duration = seconds_between(&start, end.as_deref().unwrap_or(&now()));
        json!({
            "id": col_text(r, 0),
            "room_id": col_text(r, 1),
            "participant_id": col_text(r, 2),
            "start_time": start,
            "end_time": end,
            "duration": duration,
            "status": col_text(r, 5),
            "stats": col_json(r, 6),
            "stats_updated_at": col_opt_text(r, 7),
        })
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc_3339_utc_with_microseconds() {
        let t = now();
        assert_eq!(t.len(), "2026-02-10T17:00:00.000000Z".len(), "{t}");
        assert!(t.ends_with('Z') && t.as_bytes()[10] == b'T', "{t}");
        assert_eq!(seconds_between(&t, &t), 0);
    }

    #[test]
    fn durations_are_whole_seconds() {
        assert_eq!(seconds_between("2026-02-10T17:00:00Z", "2026-02-10T17:30:00Z"), 1800);
        assert_eq!(seconds_between("2026-02-10T17:00:00.900Z", "2026-02-10T17:00:02.100Z"), 1);
        assert_eq!(seconds_between("2026-02-10T17:00:05Z", "2026-02-10T17:00:00Z"), 0);
        assert_eq!(seconds_between("garbage", "2026-02-10T17:00:00Z"), 0);
    }
}
