//! The plugin's tables (`migrations/<backend>/0001_calls.sql`; telephony.md section 4):
//! `phone_calls` and `phone_call_messages`, and reads of the daemon's tenancy tables
//! (`business_numbers`, `businesses`).
//!
//! Both backends take `$1`, `$2`, ... placeholders, but PostgreSQL's `TIMESTAMP` and `JSONB`
//! columns refuse a text parameter, and sqlx's `Any` driver (the host's) cannot read them: a
//! statement therefore writes them with `CAST($n AS TIMESTAMP)` / `CAST($n AS JSONB)` on
//! PostgreSQL (plain `$n` on SQLite, whose columns are `TEXT`: [`Backend`]), and reads them as
//! `CAST(col AS TEXT)` on both. Timestamps are written as ISO 8601 UTC text from the plugin's
//! clock (`time`), never from the database's, so both backends hold the same instants.
//! A nullable non-text parameter is never bound as NULL (the host binds NULL as text, which
//! PostgreSQL refuses for a `FLOAT` column): `NULLIF($n, -1.0)` turns a sentinel into NULL.

use crate::time;
use gatewayd_plugin::{SqlValue, store};
use serde_json::{Value, json};

/// Which database the daemon runs on: decides how timestamps and JSON are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// Parameter `$n` (ISO 8601 text) as a timestamp column value.
    fn ts(self, n: usize) -> String {
        match self {
            Backend::Sqlite => format!("${n}"),
            Backend::Postgres => format!("CAST(${n} AS TIMESTAMP)"),
        }
    }

    /// Parameter `$n` (JSON text or NULL) as a `metadata` column value.
    fn json(self, n: usize) -> String {
        match self {
            Backend::Sqlite => format!("${n}"),
            Backend::Postgres => format!("CAST(${n} AS JSONB)"),
        }
    }
}

/// The daemon's database, found once per instance with one statement both run without error:
/// a comparison is a `boolean` on PostgreSQL (as text `true`) and an integer on SQLite (`1`).
/// Err: the store failed, or answered something else; nothing is cached then.
pub(crate) fn backend() -> Result<Backend, String> {
    static CACHED: std::sync::OnceLock<Backend> = std::sync::OnceLock::new();
    if let Some(b) = CACHED.get() {
        return Ok(*b);
    }
    let rows = store::query(BACKEND_PROBE, &[]).map_err(|e| format!("finding the database backend: {e}"))?;
    let answer = rows.first().and_then(|r| r.first()).and_then(store::text);
    let found = backend_from_probe(answer)
        .ok_or_else(|| format!("finding the database backend: unexpected answer {answer:?}"))?;
    Ok(*CACHED.get_or_init(|| found))
}

const BACKEND_PROBE: &str = "SELECT CAST(1 = 1 AS TEXT)";

fn backend_from_probe(answer: Option<&str>) -> Option<Backend> {
    match answer? {
        "1" => Some(Backend::Sqlite),
        "true" => Some(Backend::Postgres),
        _ => None,
    }
}

fn text(s: &str) -> SqlValue {
    SqlValue::Text(s.to_string())
}

fn opt_text(s: Option<&str>) -> SqlValue {
    s.map_or(SqlValue::Null, text)
}

fn col_text(row: &[SqlValue], i: usize) -> Option<String> {
    row.get(i).and_then(store::text).map(str::to_string)
}

fn col_int(row: &[SqlValue], i: usize) -> Option<i64> {
    row.get(i).and_then(store::integer)
}

/// At most `max` characters of `s` (values bound for `VARCHAR(n)` columns).
pub(crate) fn clip(s: &str, max: usize) -> &str {
    s.char_indices().nth(max).map_or(s, |(i, _)| &s[..i])
}

/// Statuses of `phone_calls.status` (telephony.md section 2 `call_status_update`).
pub(crate) const STATUSES: [&str; 4] = ["incoming", "answered", "in_progress", "ended"];

/// A `phone_calls` row.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Call {
    pub id: i64,
    pub call_id: String,
    pub call_sid: String,
    pub customer_number: String,
    pub organization_number: String,
    pub status: String,
    /// ISO 8601 UTC with milliseconds.
    pub start_time: String,
    pub end_time: Option<String>,
    pub duration: Option<i64>,
    pub tenant_id: i64,
    pub business_id: String,
}

impl Call {
    pub(crate) fn ended(&self) -> bool {
        self.status == "ended"
    }

    /// The REST representation (`GET /api/telephony/calls`).
    pub(crate) fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "call_id": self.call_id,
            "call_sid": self.call_sid,
            "customer_number": self.customer_number,
            "organization_number": self.organization_number,
            "status": self.status,
            "start_time": self.start_time,
            "end_time": self.end_time,
            "duration": self.duration,
            "tenant_id": self.tenant_id,
            "business_id": self.business_id,
        })
    }
}

const CALL_COLUMNS: &str = "id, call_id, call_sid, customer_number, organization_number, status, \
     CAST(start_time AS TEXT), CAST(end_time AS TEXT), duration, tenant_id, business_id";

fn call_from(r: &[SqlValue]) -> Option<Call> {
    Some(Call {
        id: col_int(r, 0)?,
        call_id: col_text(r, 1)?,
        call_sid: col_text(r, 2)?,
        customer_number: col_text(r, 3).unwrap_or_default(),
        organization_number: col_text(r, 4).unwrap_or_default(),
        status: col_text(r, 5)?,
        start_time: time::normalize(&col_text(r, 6).unwrap_or_default()),
        end_time: col_text(r, 7).map(|t| time::normalize(&t)),
        duration: col_int(r, 8),
        tenant_id: col_int(r, 9).unwrap_or_default(),
        business_id: col_text(r, 10)?,
    })
}

/// The business a called number belongs to (`business_numbers`, the daemon's table).
pub(crate) fn business_for_number(number: &str) -> Result<Option<String>, String> {
    let rows = store::query("SELECT business_id FROM business_numbers WHERE number = $1", &[text(number)])?;
    Ok(rows.first().and_then(|r| col_text(r, 0)))
}

/// What the voice webhook knows of a new call.
pub(crate) struct NewCall<'a> {
    pub call_id: &'a str,
    pub call_sid: &'a str,
    pub customer_number: &'a str,
    pub organization_number: &'a str,
    pub business_id: &'a str,
    pub start_time: &'a str,
}

/// The two statements of [`create_call`]: insert unless the `CallSid` is known (its unique
/// index; `ON CONFLICT DO NOTHING` also settles two webhooks racing), taking `tenant_id` from
/// the business; then read the `CallSid`'s row back.
fn create_call_sql(b: Backend) -> [String; 2] {
    [
        format!(
            "INSERT INTO phone_calls (call_id, call_sid, customer_number, organization_number, status, start_time, \
             tenant_id, business_id, created_at, updated_at) \
             SELECT $1, $2, $3, $4, 'incoming', {ts}, b.tenant_id, b.id, {ts}, {ts} FROM businesses b \
             WHERE b.id = $6 AND b.tenant_id IS NOT NULL ON CONFLICT DO NOTHING",
            ts = b.ts(5)
        ),
        format!("SELECT {CALL_COLUMNS} FROM phone_calls WHERE call_sid = $1"),
    ]
}

/// Record a call idempotently, in one transaction. Returns the `CallSid`'s row and whether
/// this call created it; `None` when there is no row: the business does not exist or has no
/// `tenant_id`.
pub(crate) fn create_call(new: &NewCall<'_>) -> Result<Option<(Call, bool)>, String> {
    let [insert, select] = create_call_sql(backend()?);
    let results = store::transaction([
        (
            insert,
            vec![
                text(new.call_id),
                text(new.call_sid),
                text(clip(new.customer_number, 20)),
                text(clip(new.organization_number, 20)),
                text(new.start_time),
                text(new.business_id),
            ],
        ),
        (select, vec![text(new.call_sid)]),
    ])
    .map_err(|e| format!("statement {}: {}", e.index, e.message))?;
    let created = results.first().is_some_and(|r| r.affected == 1);
    Ok(results.get(1).and_then(|r| r.rows.first()).and_then(|r| call_from(r)).map(|c| (c, created)))
}

/// The call `call_id`.
pub(crate) fn call(call_id: &str) -> Result<Option<Call>, String> {
    let rows = store::query(&format!("SELECT {CALL_COLUMNS} FROM phone_calls WHERE call_id = $1"), &[text(call_id)])?;
    Ok(rows.first().and_then(|r| call_from(r)))
}

/// The call whose Twilio `CallSid` is `call_sid`.
pub(crate) fn call_by_sid(call_sid: &str) -> Result<Option<Call>, String> {
    let rows = store::query(&format!("SELECT {CALL_COLUMNS} FROM phone_calls WHERE call_sid = $1"), &[text(call_sid)])?;
    Ok(rows.first().and_then(|r| call_from(r)))
}

/// `incoming` -> `answered` (the media stream started). False: it was not `incoming`.
pub(crate) fn mark_answered(call_id: &str, now: &str) -> Result<bool, String> {
    let sql = format!(
        "UPDATE phone_calls SET status = 'answered', updated_at = {} WHERE call_id = $1 AND status = 'incoming'",
        backend()?.ts(2)
    );
    Ok(store::execute(&sql, &[text(call_id), text(now)])? == 1)
}

/// Set a call's status (not `ended`: [`end_call`]). False: the call has ended (or is unknown).
pub(crate) fn set_status(call_id: &str, status: &str, now: &str) -> Result<bool, String> {
    let sql = format!(
        "UPDATE phone_calls SET status = $2, updated_at = {} WHERE call_id = $1 AND status <> 'ended'",
        backend()?.ts(3)
    );
    Ok(store::execute(&sql, &[text(call_id), text(status), text(now)])? == 1)
}

fn end_call_sql(b: Backend) -> String {
    format!(
        "UPDATE phone_calls SET status = 'ended', end_time = {ts}, duration = $3, updated_at = {ts} \
         WHERE call_id = $1 AND status <> 'ended'",
        ts = b.ts(2)
    )
}

/// End a call at `now_ms`: status `ended`, `end_time`, `duration` (given, e.g. Twilio's
/// `CallDuration`, or the seconds since `start_time`). False: it had already ended.
pub(crate) fn end_call(call: &Call, now_ms: u64, duration: Option<i64>) -> Result<bool, String> {
    let duration = duration
        .unwrap_or_else(|| time::parse_ms(&call.start_time).map_or(0, |start| time::duration_secs(start, now_ms)));
    let params = [text(&call.call_id), text(&time::iso_from_ms(now_ms)), SqlValue::Integer(duration)];
    Ok(store::execute(&end_call_sql(backend()?), &params)? == 1)
}

/// A `phone_call_messages` row to add.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct NewMessage<'a> {
    pub call_id: &'a str,
    /// `transcript`, `tts_audio` or `dtmf`.
    pub message_type: &'a str,
    pub content: &'a str,
    /// `customer` or `agent`.
    pub sender_type: &'a str,
    pub sender_name: Option<&'a str>,
    pub confidence: Option<f64>,
    pub detected_language: Option<&'a str>,
    pub is_final: bool,
    pub metadata: Option<Value>,
    /// ISO 8601: `created_at` and `updated_at` (the same instant as the broadcast's timestamp).
    pub at: &'a str,
}

fn insert_message_sql(b: Backend) -> String {
    format!(
        "INSERT INTO phone_call_messages (call_id, message_type, content, sender_type, sender_name, confidence, \
         detected_language, is_final, metadata, business_id, created_at, updated_at) \
         SELECT $1, $2, $3, $4, $5, NULLIF($6, -1.0), $7, $8, {json}, business_id, {ts}, {ts} \
         FROM phone_calls WHERE call_id = $1",
        json = b.json(9),
        ts = b.ts(10)
    )
}

/// Store a message of an existing call (its `business_id` copied from the call). False: no
/// such call.
pub(crate) fn insert_message(m: &NewMessage<'_>) -> Result<bool, String> {
    let params = [
        text(m.call_id),
        text(m.message_type),
        text(m.content),
        text(m.sender_type),
        opt_text(m.sender_name.map(|n| clip(n, 255))),
        SqlValue::Real(m.confidence.unwrap_or(-1.0)),
        opt_text(m.detected_language.map(|l| clip(l, 10))),
        SqlValue::Boolean(m.is_final),
        opt_text(m.metadata.as_ref().map(Value::to_string).as_deref()),
        text(m.at),
    ];
    Ok(store::execute(&insert_message_sql(backend()?), &params)? == 1)
}

/// Which calls `GET /api/telephony/calls` lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CallFilter<'a> {
    All,
    /// Not ended (`?status=active`).
    Active,
    /// One status exactly.
    Status(&'a str),
}

fn calls_sql(businesses: usize, filter: CallFilter<'_>) -> String {
    let list: Vec<String> = (1..=businesses).map(|i| format!("${i}")).collect();
    let (condition, limit) = match filter {
        CallFilter::All => (String::new(), businesses + 1),
        CallFilter::Active => (" AND status <> 'ended'".to_string(), businesses + 1),
        CallFilter::Status(_) => (format!(" AND status = ${}", businesses + 1), businesses + 2),
    };
    format!(
        "SELECT {CALL_COLUMNS} FROM phone_calls WHERE business_id IN ({}){condition} ORDER BY id DESC LIMIT ${limit}",
        list.join(", ")
    )
}

/// The newest `limit` calls of `businesses` (none: no calls).
pub(crate) fn calls(businesses: &[String], filter: CallFilter<'_>, limit: u32) -> Result<Vec<Call>, String> {
    if businesses.is_empty() {
        return Ok(Vec::new());
    }
    let mut params: Vec<SqlValue> = businesses.iter().map(|b| text(b)).collect();
    if let CallFilter::Status(s) = filter {
        params.push(text(s));
    }
    params.push(SqlValue::Integer(i64::from(limit)));
    let rows = store::query(&calls_sql(businesses.len(), filter), &params)?;
    Ok(rows.iter().filter_map(|r| call_from(r)).collect())
}

/// A `phone_call_messages` row, as the REST history shows it.
pub(crate) fn message_json(r: &[SqlValue]) -> Value {
    let is_final = match r.get(8) {
        Some(SqlValue::Boolean(b)) => *b,
        Some(SqlValue::Integer(i)) => *i != 0,
        _ => true,
    };
    let confidence = match r.get(6) {
        Some(SqlValue::Real(c)) => json!(c),
        Some(SqlValue::Integer(c)) => json!(*c as f64),
        _ => Value::Null,
    };
    let metadata = col_text(r, 9).and_then(|m| serde_json::from_str::<Value>(&m).ok()).unwrap_or(Value::Null);
    json!({
        "id": col_int(r, 0),
        "call_id": col_text(r, 1),
        "message_type": col_text(r, 2),
        "content": col_text(r, 3),
        "sender_type": col_text(r, 4),
        "sender_name": col_text(r, 5),
        "confidence": confidence,
        "detected_language": col_text(r, 7),
        "is_final": is_final,
        "metadata": metadata,
        "created_at": col_text(r, 10).map(|t| time::normalize(&t)),
    })
}

/// Messages of a call with `id > after`, oldest first, at most `limit`.
pub(crate) fn messages(call_id: &str, after: i64, limit: u32) -> Result<Vec<Value>, String> {
    let rows = store::query(
        "SELECT id, call_id, message_type, content, sender_type, sender_name, confidence, detected_language, \
         is_final, CAST(metadata AS TEXT), CAST(created_at AS TEXT) FROM phone_call_messages \
         WHERE call_id = $1 AND id > $2 ORDER BY id LIMIT $3",
        &[text(call_id), SqlValue::Integer(after), SqlValue::Integer(i64::from(limit))],
    )?;
    Ok(rows.iter().map(|r| message_json(r)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_statements_cast_timestamps_and_json_and_sqlite_ones_do_not() {
        let [insert, _] = create_call_sql(Backend::Postgres);
        assert!(insert.contains("'incoming', CAST($5 AS TIMESTAMP), b.tenant_id"));
        let [insert, select] = create_call_sql(Backend::Sqlite);
        assert!(insert.contains("'incoming', $5, b.tenant_id") && !insert.contains("CAST"));
        assert!(insert.ends_with("ON CONFLICT DO NOTHING"));
        assert!(select.contains("CAST(start_time AS TEXT)"));
        assert!(insert_message_sql(Backend::Postgres).contains("NULLIF($6, -1.0), $7, $8, CAST($9 AS JSONB)"));
        assert!(insert_message_sql(Backend::Sqlite).contains("$8, $9, business_id, $10, $10"));
        assert!(end_call_sql(Backend::Postgres).contains("end_time = CAST($2 AS TIMESTAMP), duration = $3"));
    }

    #[test]
    fn the_probe_tells_the_backends_apart() {
        assert_eq!(backend_from_probe(Some("1")), Some(Backend::Sqlite));
        assert_eq!(backend_from_probe(Some("true")), Some(Backend::Postgres));
        assert_eq!(backend_from_probe(Some("t")), None);
        assert_eq!(backend_from_probe(None), None);
    }

    #[test]
    fn call_lists_bind_every_business_and_the_filter() {
        assert_eq!(
            calls_sql(2, CallFilter::Active),
            format!(
                "SELECT {CALL_COLUMNS} FROM phone_calls WHERE business_id IN ($1, $2) AND status <> 'ended' ORDER BY id DESC LIMIT $3"
            )
        );
        assert!(
            calls_sql(1, CallFilter::Status("ended")).ends_with("IN ($1) AND status = $2 ORDER BY id DESC LIMIT $3")
        );
        assert!(calls_sql(3, CallFilter::All).ends_with("IN ($1, $2, $3) ORDER BY id DESC LIMIT $4"));
    }

    #[test]
    fn rows_read_back_the_same_on_both_backends() {
        let row = |start: &str| {
            vec![
                SqlValue::Integer(7),
                text("c1"),
                text("CA1"),
                text("+1"),
                text("+2"),
                text("answered"),
                text(start),
                SqlValue::Null,
                SqlValue::Null,
                SqlValue::Integer(3),
                text("acme"),
            ]
        };
        let sqlite = call_from(&row("2024-01-01T12:00:00.250Z")).unwrap();
        let postgres = call_from(&row("2024-01-01 12:00:00.25")).unwrap();
        assert_eq!(sqlite, postgres);
        assert_eq!(sqlite.start_time, "2024-01-01T12:00:00.250Z");
        assert!(!sqlite.ended());
        let message = |is_final: SqlValue| {
            vec![
                SqlValue::Integer(1),
                text("c1"),
                text("transcript"),
                text("hi"),
                text("customer"),
                SqlValue::Null,
                SqlValue::Real(0.9),
                text("en"),
                is_final,
                text(r#"{"start_ms":0}"#),
                text("2024-01-01 12:00:00"),
            ]
        };
        let a = message_json(&message(SqlValue::Integer(1)));
        assert_eq!(a, message_json(&message(SqlValue::Boolean(true))));
        assert_eq!(a["is_final"], json!(true));
        assert_eq!(a["metadata"], json!({"start_ms": 0}));
        assert_eq!(a["created_at"], json!("2024-01-01T12:00:00.000Z"));
    }

    #[test]
    fn clip_cuts_at_a_character_boundary() {
        assert_eq!(clip("+1234567890", 20), "+1234567890");
        assert_eq!(clip("ééé", 2), "éé");
    }
}
