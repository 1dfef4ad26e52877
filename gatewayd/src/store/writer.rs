//! SQLite group commit: every write goes through one connection, owned by one task that runs
//! the writes queued meanwhile as one transaction.
//!
//! SQLite has a single writer. With a pool, concurrent writers meet the database lock and wait
//! in SQLite's busy handler, which sleeps 1, 2, 5, 10 ... ms between tries: under load that
//! sleep, not the insert, is the latency, and every statement pays its own commit. Here writers
//! queue instead; the task takes up to [`MAX_BATCH`] queued statements and runs them between
//! `BEGIN IMMEDIATE` and `COMMIT`, and answers each caller only after the commit, so a
//! statement reported done is durable to the same degree as an autocommit one
//! (`synchronous = NORMAL` in WAL mode).
//!
//! sqlx runs SQLite on a worker thread of its own; each statement sent there is a round trip
//! between threads, which on a loaded machine costs far more than the insert. A batch is
//! therefore sent as one multi-statement query (`BEGIN IMMEDIATE; s1; s2; ...; COMMIT;`): its
//! `$n` placeholders are rewritten to positional `?` with the values in order (see
//! [`positional`]; worked out once per distinct SQL text), and the results are split again at
//! each statement's end. A statement that
//! cannot be rewritten safely (other placeholder styles, several statements) runs on its own.
//!
//! A failing statement must not take its batch neighbours with it: the batch is rolled back and
//! its statements are run again one by one, each in its own transaction, so each caller gets
//! exactly the result its statement would have had alone. Nothing was answered before the
//! rollback, so nothing a caller saw is undone.

use super::{Value, bind, row_values};
use futures_util::TryStreamExt;
use parking_lot::Mutex;
use sqlx::{AnyConnection, Either, Executor};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// Statements run in one transaction, at most. sqlx's SQLite worker hands results over through
/// a 50-item channel; a batch yields at most `2 * MAX_BATCH + 2` items (one row per statement
/// plus each statement's end), which stays within it.
pub const MAX_BATCH: usize = 24;

/// Writes waiting for the writer task, at most; further writers wait for room.
const QUEUE: usize = 4096;

/// What a write returns: its rows (`RETURNING`, else none) and the number of rows it changed.
#[derive(Debug, Default)]
pub struct Outcome {
    pub rows: Vec<Vec<Value>>,
    pub affected: u64,
}

/// A statement's text and, when it can join a batch, its positional form (see [`positional`]).
/// Worked out once per distinct SQL text.
struct Statement {
    sql: String,
    /// Positional text and the parameter each `?` takes (1-based).
    positional: Option<(String, Vec<usize>)>,
}

/// Distinct statements remembered, at most; the cache starts over when full (a plugin that
/// builds SQL text per call must not grow it without bound).
const STATEMENTS: usize = 1024;

struct Request {
    statement: Arc<Statement>,
    params: Vec<Value>,
    /// Taken when the request is answered.
    reply: Option<oneshot::Sender<Result<Outcome, sqlx::Error>>>,
}

impl Request {
    /// Can run inside a multi-statement batch: it has a positional form and every `$n` it
    /// uses has a value.
    fn batchable(&self) -> bool {
        self.statement.positional.as_ref().is_some_and(|(_, order)| order.iter().all(|&n| n <= self.params.len()))
    }
}

/// The handle callers queue writes on; cheap to clone. The task ends when every handle is gone.
#[derive(Clone)]
pub struct Writer {
    queue: mpsc::Sender<Request>,
    statements: Arc<Mutex<HashMap<String, Arc<Statement>>>>,
}

impl Writer {
    /// Start the writer task on `conn` (a connection of its own, used for nothing else).
    pub fn spawn(conn: AnyConnection) -> Writer {
        let (queue, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(conn, rx));
        Writer { queue, statements: Arc::default() }
    }

    /// Run one write; returns after its transaction committed (or failed).
    pub async fn write(&self, sql: &str, params: Vec<Value>) -> Result<Outcome, sqlx::Error> {
        let (reply, answer) = oneshot::channel();
        let request = Request { statement: self.statement(sql), params, reply: Some(reply) };
        self.queue.send(request).await.map_err(|_| sqlx::Error::PoolClosed)?;
        answer.await.map_err(|_| sqlx::Error::PoolClosed)?
    }

    fn statement(&self, sql: &str) -> Arc<Statement> {
        let mut statements = self.statements.lock();
        if let Some(s) = statements.get(sql) {
            return s.clone();
        }
        if statements.len() >= STATEMENTS {
            statements.clear();
        }
        let statement = Arc::new(Statement { sql: sql.to_string(), positional: positional(sql) });
        statements.insert(sql.to_string(), statement.clone());
        statement
    }
}

async fn run(mut conn: AnyConnection, mut rx: mpsc::Receiver<Request>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        // Statements that cannot join a batch run alone, in queue order.
        let mut start = 0;
        while start < batch.len() {
            let len = batch[start..].iter().take_while(|r| r.batchable()).count().max(1);
            run_group(&mut conn, &mut batch[start..start + len]).await;
            start += len;
        }
        batch.clear();
    }
    let _ = sqlx::Connection::close(conn).await;
}

/// Run `group` (one statement, or several batchable ones) and answer each.
async fn run_group(conn: &mut AnyConnection, group: &mut [Request]) {
    if group.len() > 1 {
        match run_batch(conn, group).await {
            Ok(outcomes) => {
                for (request, outcome) in group.iter_mut().zip(outcomes) {
                    answer(request, Ok(outcome));
                }
                return;
            }
            Err(e) => {
                tracing::debug!(error = %e, statements = group.len(), "write batch rolled back; retrying one by one");
                let _ = conn.execute("ROLLBACK").await;
            }
        }
    }
    for request in group.iter_mut() {
        // A text with several statements answers like sqlx's fetch_all/execute: all rows, the
        // sum of the changes.
        let outcome = run_statements(conn, &request.statement.sql, &request.params).await.map(|outcomes| {
            outcomes.into_iter().fold(Outcome::default(), |mut all, o| {
                all.rows.extend(o.rows);
                all.affected += o.affected;
                all
            })
        });
        answer(request, outcome);
    }
}

fn answer(request: &mut Request, outcome: Result<Outcome, sqlx::Error>) {
    if let Some(reply) = request.reply.take() {
        let _ = reply.send(outcome);
    }
}

/// The whole batch as one multi-statement query in one transaction. On error the transaction
/// may still be open: the caller rolls it back.
async fn run_batch(conn: &mut AnyConnection, batch: &[Request]) -> Result<Vec<Outcome>, sqlx::Error> {
    let mut sql = String::from("BEGIN IMMEDIATE;\n");
    let mut params = Vec::new();
    for r in batch {
        let (text, order) = r.statement.positional.as_ref().expect("only batchable statements are batched");
        sql.push_str(text);
        sql.push_str(";\n");
        params.extend(order.iter().map(|&n| &r.params[n - 1]));
    }
    sql.push_str("COMMIT;");
    let mut outcomes = run_statements(conn, &sql, params).await?;
    if outcomes.len() != batch.len() + 2 {
        let message = format!("write batch: {} results for {} statements", outcomes.len(), batch.len() + 2);
        return Err(sqlx::Error::Protocol(message));
    }
    // Drop BEGIN's and COMMIT's.
    outcomes.pop();
    outcomes.remove(0);
    Ok(outcomes)
}

/// Run `sql` and return the outcome of each statement in it. The SQLite driver runs every
/// statement of a query string in turn (sqlx 0.8); a statement's rows come before the `Left`
/// that ends it.
async fn run_statements<'q>(
    conn: &mut AnyConnection,
    sql: &'q str,
    params: impl IntoIterator<Item = &'q Value>,
) -> Result<Vec<Outcome>, sqlx::Error> {
    let mut results = conn.fetch_many(bind(sqlx::query(sql), params));
    let mut outcomes = Vec::new();
    let mut current = Outcome::default();
    while let Some(item) = results.try_next().await? {
        match item {
            Either::Right(row) => current.rows.push(row_values(&row)?),
            Either::Left(done) => {
                current.affected = done.rows_affected();
                outcomes.push(std::mem::take(&mut current));
            }
        }
    }
    Ok(outcomes)
}

/// Rewrite one statement's `$n` placeholders to positional `?`: returns the new text and, for
/// each `?` in order, the 1-based number of the parameter it takes (`$1 ... $1` gives `[1, 1]`).
/// None when the statement is not one statement with only `$n` placeholders: it contains a
/// `;` before its end, or `?`, `?NNN`, `:name`, `@name` or `$name` parameters. String literals,
/// quoted identifiers and comments are skipped.
pub fn positional(sql: &str) -> Option<(String, Vec<usize>)> {
    let body = sql.trim_end().trim_end_matches(';').trim_end();
    let b = body.as_bytes();
    let mut out = String::with_capacity(body.len());
    let mut order = Vec::new();
    let mut i = 0;
    let mut copied = 0;
    while i < b.len() {
        match b[i] {
            q @ (b'\'' | b'"' | b'`') => {
                i += 1;
                while i < b.len() {
                    if b[i] == q {
                        // A doubled quote is an escaped one.
                        if b.get(i + 1) == Some(&q) {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
                if i >= b.len() {
                    return None;
                }
                i += 1;
            }
            b'[' => i += body[i..].find(']')? + 1,
            b'-' if b.get(i + 1) == Some(&b'-') => i += body[i..].find('\n').unwrap_or(body.len() - i),
            b'/' if b.get(i + 1) == Some(&b'*') => i += body[i + 2..].find("*/")? + 4,
            b';' | b'?' => return None,
            b':' | b'@' if b.get(i + 1).is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_') => return None,
            b'$' => {
                let digits = b[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
                let part_of_name = i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_' || b[i - 1] == b'$');
                if part_of_name {
                    i += 1;
                    continue;
                }
                let follows = b.get(i + 1 + digits);
                if digits == 0 || follows.is_some_and(|c| c.is_ascii_alphabetic() || *c == b'_') {
                    return None;
                }
                let n: usize = body[i + 1..i + 1 + digits].parse().ok().filter(|&n| n > 0)?;
                out.push_str(&body[copied..i]);
                out.push('?');
                order.push(n);
                i += 1 + digits;
                copied = i;
            }
            _ => i += 1,
        }
    }
    out.push_str(&body[copied..]);
    Some((out, order))
}

#[cfg(test)]
mod tests {
    use super::positional;
    use crate::store::{Store, Value};

    #[test]
    fn placeholders_become_positional() {
        let (sql, order) = positional("INSERT INTO t (a, b) SELECT $2, $1 WHERE x = $2;").unwrap();
        assert_eq!(sql, "INSERT INTO t (a, b) SELECT ?, ? WHERE x = ?");
        assert_eq!(order, vec![2, 1, 2]);
        let (sql, order) = positional("UPDATE t SET v = '$1;?' || \"c$2\" -- $3;\n WHERE k = $10").unwrap();
        assert_eq!(sql, "UPDATE t SET v = '$1;?' || \"c$2\" -- $3;\n WHERE k = ?");
        assert_eq!(order, vec![10]);
        assert_eq!(positional("UPDATE t SET v = 'it''s $1' WHERE k = $1").unwrap().1, vec![1]);
        assert_eq!(positional("DELETE FROM t /* $9 */ WHERE a$1 = $2").unwrap().1, vec![2]);
        for refused in [
            "INSERT INTO t VALUES (?)",
            "INSERT INTO t VALUES (?1)",
            "INSERT INTO t VALUES (:a)",
            "INSERT INTO t VALUES (@a)",
            "INSERT INTO t VALUES ($a)",
            "DELETE FROM t; DELETE FROM u",
            "INSERT INTO t VALUES ('unterminated",
            "INSERT INTO t VALUES ($0)",
        ] {
            assert!(positional(refused).is_none(), "{refused}");
        }
    }

    /// Concurrent writes are batched; a failing one fails alone and the others commit.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_write_fails_alone() {
        let dir = std::env::temp_dir().join(format!("gatewayd-writer-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::connect("sqlite://w.db", &dir, 2).await.unwrap();
        store.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT NOT NULL)", vec![]).await.unwrap();
        let tasks: Vec<_> = (0..400i64)
            .map(|i| {
                let store = store.clone();
                // Every tenth insert reuses key 0: only the first of those can succeed.
                let k = if i % 10 == 0 { 0 } else { i };
                tokio::spawn(async move {
                    let sql = "INSERT INTO t (k, v) VALUES ($1, $2) RETURNING k";
                    (k, store.query(sql, vec![Value::Integer(k), Value::Text(format!("v{i}"))]).await)
                })
            })
            .collect();
        let (mut ok, mut refused) = (0, 0);
        for t in tasks {
            match t.await.unwrap() {
                (k, Ok(rows)) => {
                    assert_eq!(rows, vec![vec![Value::Integer(k)]]);
                    ok += 1;
                }
                (0, Err(e)) => {
                    assert!(e.to_string().contains("UNIQUE"), "{e}");
                    refused += 1;
                }
                (k, Err(e)) => panic!("insert {k} failed: {e}"),
            }
        }
        assert_eq!((ok, refused), (361, 39));
        let count = store.query("SELECT COUNT(*) FROM t", vec![]).await.unwrap();
        assert_eq!(count, vec![vec![Value::Integer(361)]], "every acknowledged write is committed, nothing else");
        let affected = store.execute("UPDATE t SET v = 'x' WHERE k < 10", vec![]).await.unwrap();
        assert_eq!(affected, 9 + 1);
        store.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }
}
