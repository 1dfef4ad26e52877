//! Group commit: writes are queued to writer tasks, each owning a connection of its own, that
//! run the writes queued meanwhile as one transaction. SQLite has one writer task; PostgreSQL
//! several (see `Store::connect`), taking batches off the same queue.
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
//! On PostgreSQL the cost that batching saves is the commit: with `synchronous_commit = on`
//! every autocommit statement waits for its own WAL flush. A batch runs as `BEGIN`, each
//! statement in turn (one round trip each), `COMMIT`: one flush for the batch.
//!
//! A failing statement must not take its batch neighbours with it: the batch is rolled back and
//! its statements are run again one by one, each in its own transaction, so each caller gets
//! exactly the result its statement would have had alone. Nothing was answered before the
//! rollback, so nothing a caller saw is undone.

use super::{Backend, Value, bind, row_values};
use futures_util::TryStreamExt;
use parking_lot::Mutex;
use sqlx::{AnyConnection, Either, Executor};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// Statements run in one transaction, at most. sqlx's SQLite worker hands results over through
/// a 50-item channel; a batch yields at most `2 * MAX_BATCH + 2` items (one row per statement
/// plus each statement's end), which stays within it. (PostgreSQL batches are sent statement by
/// statement; the same bound keeps their row locks short.)
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

/// What is queued: a write, which may join a batch, or a transaction of several statements,
/// which runs alone.
enum Job {
    Write(Request),
    Transaction(Transaction),
}

/// Statements that commit together or not at all.
struct Transaction {
    statements: Vec<(String, Vec<Value>)>,
    reply: oneshot::Sender<Result<Vec<Outcome>, (usize, sqlx::Error)>>,
}

struct Request {
    statement: Arc<Statement>,
    params: Vec<Value>,
    /// Taken when the request is answered.
    reply: Option<oneshot::Sender<Result<Outcome, sqlx::Error>>>,
}

impl Request {
    /// Can run inside a batch. SQLite: it has a positional form and every `$n` it uses has a
    /// value (the batch is one multi-statement text). PostgreSQL: always (statements are sent
    /// one by one).
    fn batchable(&self, backend: Backend) -> bool {
        backend == Backend::Postgres
            || self
                .statement
                .positional
                .as_ref()
                .is_some_and(|(_, order)| order.iter().all(|&n| n <= self.params.len()))
    }
}

/// The handle callers queue writes on; cheap to clone. The task ends when every handle is gone.
#[derive(Clone)]
pub struct Writer {
    queue: mpsc::Sender<Job>,
    statements: Arc<Mutex<HashMap<String, Arc<Statement>>>>,
}

impl Writer {
    /// Start one writer task per connection in `conns` (connections of their own, used for
    /// nothing else); they take batches off one queue. SQLite must get exactly one. With
    /// `reconnect_to` (PostgreSQL), a task whose connection broke opens a new one there.
    /// With `write_lock` (SQLite), each task holds it while it runs what it took off the queue:
    /// several writers of one database (the daemon's, each plugin's) then take turns here
    /// instead of meeting SQLite's lock and sleeping in its busy handler.
    pub fn spawn(
        conns: Vec<AnyConnection>,
        backend: Backend,
        reconnect_to: Option<String>,
        write_lock: Option<Arc<tokio::sync::Mutex<()>>>,
    ) -> Writer {
        let (queue, rx) = mpsc::channel(QUEUE);
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        for conn in conns {
            tokio::spawn(run(conn, rx.clone(), backend, reconnect_to.clone(), write_lock.clone()));
        }
        Writer { queue, statements: Arc::default() }
    }

    /// Run one write; returns after its transaction committed (or failed).
    pub async fn write(&self, sql: &str, params: Vec<Value>) -> Result<Outcome, sqlx::Error> {
        let (reply, answer) = oneshot::channel();
        let request = Request { statement: self.statement(sql), params, reply: Some(reply) };
        self.queue.send(Job::Write(request)).await.map_err(|_| sqlx::Error::PoolClosed)?;
        answer.await.map_err(|_| sqlx::Error::PoolClosed)?
    }

    /// Run `statements` as one transaction of their own; returns each one's outcome after the
    /// commit, or the index of the first that failed (nothing was kept).
    pub async fn transaction(
        &self,
        statements: Vec<(String, Vec<Value>)>,
    ) -> Result<Vec<Outcome>, (usize, sqlx::Error)> {
        let (reply, answer) = oneshot::channel();
        let closed = || (0, sqlx::Error::PoolClosed);
        self.queue.send(Job::Transaction(Transaction { statements, reply })).await.map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
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

/// One writer task: take what is queued (holding the queue only while waiting for it), run it,
/// answer, repeat.
async fn run(
    mut conn: AnyConnection,
    rx: Arc<tokio::sync::Mutex<mpsc::Receiver<Job>>>,
    backend: Backend,
    reconnect_to: Option<String>,
    write_lock: Option<Arc<tokio::sync::Mutex<()>>>,
) {
    let mut jobs = Vec::with_capacity(MAX_BATCH);
    let mut writes = Vec::with_capacity(MAX_BATCH);
    while rx.lock().await.recv_many(&mut jobs, MAX_BATCH).await > 0 {
        let _turn = match &write_lock {
            Some(lock) => Some(lock.lock().await),
            None => None,
        };
        let mut failed = false;
        for job in jobs.drain(..) {
            match job {
                Job::Write(request) => writes.push(request),
                Job::Transaction(t) => {
                    failed |= !run_writes(&mut conn, &mut writes, backend).await;
                    failed |= !run_explicit(&mut conn, t, backend).await;
                }
            }
        }
        failed |= !run_writes(&mut conn, &mut writes, backend).await;
        if backend == Backend::Postgres {
            // A statement may have changed the session (`SELECT set_config(...)`, advisory
            // locks): back to the start-up settings before the next batch.
            failed |= conn.execute(super::RESET_SESSION).await.is_err();
        }
        if failed && let Some(url) = &reconnect_to {
            reconnect_if_broken(&mut conn, url).await;
        }
    }
    let _ = sqlx::Connection::close(conn).await;
}

/// Run and answer queued writes, in order, batching what can be batched; empties `writes`.
/// False when any failed.
async fn run_writes(conn: &mut AnyConnection, writes: &mut Vec<Request>, backend: Backend) -> bool {
    // Statements that cannot join a batch run alone, in queue order.
    let mut start = 0;
    let mut all_ok = true;
    while start < writes.len() {
        let len = writes[start..].iter().take_while(|r| r.batchable(backend)).count().max(1);
        all_ok &= run_group(conn, &mut writes[start..start + len], backend).await;
        start += len;
    }
    writes.clear();
    all_ok
}

/// A [`Transaction`]: its statements one by one between `BEGIN` and `COMMIT`; the first
/// failure rolls back. False when it failed.
async fn run_explicit(conn: &mut AnyConnection, t: Transaction, backend: Backend) -> bool {
    let begin = match backend {
        Backend::Sqlite => "BEGIN IMMEDIATE",
        Backend::Postgres => "BEGIN",
    };
    let result = async {
        conn.execute(begin).await.map_err(|e| (0, e))?;
        let mut outcomes = Vec::with_capacity(t.statements.len());
        for (i, (sql, params)) in t.statements.iter().enumerate() {
            let persistent = super::may_cache(backend, params);
            let outcome = run_statements(conn, sql, params, persistent).await.map_err(|e| (i, e))?;
            outcomes.push(outcome.into_iter().fold(Outcome::default(), merge));
        }
        conn.execute("COMMIT").await.map_err(|e| (t.statements.len().saturating_sub(1), e))?;
        Ok(outcomes)
    }
    .await;
    if result.is_err() {
        let _ = conn.execute("ROLLBACK").await;
    }
    let ok = result.is_ok();
    let _ = t.reply.send(result);
    ok
}

/// Outcomes of the statements of one text, as one: all rows, the sum of the changes.
fn merge(mut all: Outcome, o: Outcome) -> Outcome {
    all.rows.extend(o.rows);
    all.affected += o.affected;
    all
}

/// After a failed write: when the connection no longer answers a ping (the server restarted,
/// the network dropped), open a new one, retrying every second. Writes wait in the queue
/// meanwhile (other writer tasks go on serving them).
async fn reconnect_if_broken(conn: &mut AnyConnection, url: &str) {
    if sqlx::Connection::ping(conn).await.is_ok() {
        return;
    }
    loop {
        match <AnyConnection as sqlx::Connection>::connect(url).await {
            Ok(new) => {
                tracing::info!("database write connection re-opened");
                *conn = new;
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "database write connection lost; retrying in 1 s");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
    }
}

/// Run `group` (one statement, or several batchable ones) and answer each; false when any
/// statement failed.
async fn run_group(conn: &mut AnyConnection, group: &mut [Request], backend: Backend) -> bool {
    if group.len() > 1 {
        let batch = match backend {
            Backend::Sqlite => run_batch(conn, group).await,
            Backend::Postgres => run_transaction(conn, group).await,
        };
        match batch {
            Ok(outcomes) => {
                for (request, outcome) in group.iter_mut().zip(outcomes) {
                    answer(request, Ok(outcome));
                }
                return true;
            }
            Err(e) => {
                tracing::debug!(error = %e, statements = group.len(), "write batch rolled back; retrying one by one");
                let _ = conn.execute("ROLLBACK").await;
            }
        }
    }
    let mut all_ok = true;
    for request in group.iter_mut() {
        let outcome = run_alone(conn, request, backend).await;
        all_ok &= outcome.is_ok();
        answer(request, outcome);
    }
    all_ok
}

/// One request's statement text on its own; a text with several statements answers like
/// sqlx's fetch_all/execute: all rows, the sum of the changes.
async fn run_alone(conn: &mut AnyConnection, request: &Request, backend: Backend) -> Result<Outcome, sqlx::Error> {
    let outcomes =
        run_statements(conn, &request.statement.sql, &request.params, super::may_cache(backend, &request.params))
            .await?;
    Ok(outcomes.into_iter().fold(Outcome::default(), merge))
}

/// PostgreSQL: the batch's statements one by one between `BEGIN` and `COMMIT`. On error the
/// transaction may still be open: the caller rolls it back.
async fn run_transaction(conn: &mut AnyConnection, batch: &[Request]) -> Result<Vec<Outcome>, sqlx::Error> {
    conn.execute("BEGIN").await?;
    let mut outcomes = Vec::with_capacity(batch.len());
    for request in batch {
        outcomes.push(run_alone(conn, request, Backend::Postgres).await?);
    }
    conn.execute("COMMIT").await?;
    Ok(outcomes)
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
    let mut outcomes = run_statements(conn, &sql, params, true).await?;
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
    persistent: bool,
) -> Result<Vec<Outcome>, sqlx::Error> {
    let mut results = conn.fetch_many(bind(sqlx::query(sql).persistent(persistent), params));
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
    // SQL whitespace only: SQLite would not take a Unicode space after the `;` for one.
    let space = |c: char| c.is_ascii() && super::sql::is_space(c as u8);
    let body = sql.trim_end_matches(space).trim_end_matches(';').trim_end_matches(space);
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
    use crate::store::{Access, Store, Value};

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
    async fn a_failing_write_fails_alone_on_sqlite() {
        let dir = std::env::temp_dir().join(format!("gatewayd-writer-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::connect("sqlite://w.db", &dir, 2, None).await.unwrap();
        a_failing_write_fails_alone(store).await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The same on PostgreSQL (four writer tasks, batches committing in parallel), in a fresh
    /// database on the local server (`GATEWAYD_TEST_PG` names another admin URL). Fails when
    /// the server is not reachable.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_write_fails_alone_on_postgres() {
        let (mut admin, name, url) = postgres_database("batches").await;
        let store = Store::connect(&url, &std::env::temp_dir(), 8, None).await.unwrap();
        a_failing_write_fails_alone(store).await;
        sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)")).execute(&mut admin).await.unwrap();
    }

    /// A fresh database on the local PostgreSQL server; returns (admin connection, its name,
    /// its URL). Panics when the server is not reachable.
    async fn postgres_database(tag: &str) -> (sqlx::AnyConnection, String, String) {
        use sqlx::Connection;
        sqlx::any::install_default_drivers();
        let admin_url =
            std::env::var("GATEWAYD_TEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let mut admin = sqlx::AnyConnection::connect(&admin_url)
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL at {admin_url} is required for this test: {e}"));
        let name = format!("gw_writer_{tag}_{}", std::process::id());
        sqlx::query(&format!("DROP DATABASE IF EXISTS {name}")).execute(&mut admin).await.unwrap();
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut admin).await.unwrap();
        let base = admin_url.rsplit_once('/').map_or(admin_url.as_str(), |(b, _)| b);
        let url = format!("{base}/{name}");
        (admin, name, url)
    }

    /// A writer whose connection the server dropped opens a new one: after at most a failed
    /// write or two, writes succeed again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_postgres_writer_reconnects_after_its_connection_is_dropped() {
        let (mut admin, name, url) = postgres_database("reconnect").await;
        let store = Store::connect(&url, &std::env::temp_dir(), 2, None).await.unwrap();
        store.execute("CREATE TABLE t (k BIGINT PRIMARY KEY)", vec![], Access::ReadWrite).await.unwrap();
        let kill = format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'");
        sqlx::query(&kill).execute(&mut admin).await.unwrap();
        let mut failed = 0;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match store.execute("INSERT INTO t (k) VALUES ($1)", vec![Value::Integer(failed)], Access::ReadWrite).await
            {
                Ok(n) => {
                    assert_eq!(n, 1);
                    break;
                }
                Err(e) => {
                    assert!(std::time::Instant::now() < deadline, "writes still fail after 10 s: {e}");
                    failed += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
        assert!(failed <= 2, "{failed} writes failed before the writer reconnected");
        store.close().await;
        sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)")).execute(&mut admin).await.unwrap();
    }

    /// A transaction returns each statement's rows and count; a failing statement rolls back
    /// the ones before it and is named by its index.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn transactions_commit_together_on_sqlite() {
        let dir = std::env::temp_dir().join(format!("gatewayd-tx-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::connect("sqlite://tx.db", &dir, 2, None).await.unwrap();
        transactions_commit_together(store).await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The same on PostgreSQL, where several writer tasks run transactions in parallel.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn transactions_commit_together_on_postgres() {
        let (mut admin, name, url) = postgres_database("tx").await;
        let store = Store::connect(&url, &std::env::temp_dir(), 8, None).await.unwrap();
        transactions_commit_together(store).await;
        sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)")).execute(&mut admin).await.unwrap();
    }

    async fn transactions_commit_together(store: Store) {
        let rw = Access::ReadWrite;
        store.execute("CREATE TABLE rooms (id BIGINT PRIMARY KEY, touched BIGINT NOT NULL)", vec![], rw).await.unwrap();
        store.execute("CREATE TABLE seats (room BIGINT NOT NULL, who BIGINT NOT NULL)", vec![], rw).await.unwrap();
        store.execute("INSERT INTO rooms (id, touched) VALUES (1, 0), (2, 0)", vec![], rw).await.unwrap();
        let text = |s: &str| s.to_string();
        let done = store
            .execute_in_transaction(vec![
                (
                    text("INSERT INTO seats (room, who) VALUES ($1, $2), ($1, $3)"),
                    vec![Value::Integer(2), Value::Integer(7), Value::Integer(8)],
                ),
                (text("SELECT who FROM seats WHERE room = $1 ORDER BY who"), vec![Value::Integer(2)]),
                (
                    text("UPDATE rooms SET touched = touched + 1 WHERE id = $1 RETURNING touched"),
                    vec![Value::Integer(2)],
                ),
            ])
            .await
            .unwrap();
        assert_eq!(done.len(), 3);
        assert_eq!(done[0].affected, 2);
        assert_eq!(done[1].rows, vec![vec![Value::Integer(7)], vec![Value::Integer(8)]], "sees the earlier statement");
        assert_eq!((done[2].affected, &done[2].rows), (1, &vec![vec![Value::Integer(1)]]));
        // A failure at statement 1 undoes statement 0.
        let (index, e) = store
            .execute_in_transaction(vec![
                (text("INSERT INTO seats (room, who) VALUES (2, 9)"), vec![]),
                (text("INSERT INTO nowhere (x) VALUES (1)"), vec![]),
            ])
            .await
            .unwrap_err();
        assert_eq!(index, 1, "{e}");
        let count = store.query("SELECT COUNT(*) FROM seats", vec![], rw).await.unwrap();
        assert_eq!(count, vec![vec![Value::Integer(2)]]);

        // The rooms pattern: lock the room's row, then insert only below capacity. Many at
        // once fill room 1 exactly to its 3 seats on both backends (on PostgreSQL, READ
        // COMMITTED: after the lock, the count sees every seat committed before).
        let tasks: Vec<_> = (0..40i64)
            .map(|who| {
                let store = store.clone();
                tokio::spawn(async move {
                    store
                        .execute_in_transaction(vec![
                            (text("UPDATE rooms SET touched = touched WHERE id = $1"), vec![Value::Integer(1)]),
                            (
                                text(
                                    "INSERT INTO seats (room, who) SELECT $1, $2 \
                                     WHERE (SELECT COUNT(*) FROM seats WHERE room = $1) < $3",
                                ),
                                vec![Value::Integer(1), Value::Integer(who), Value::Integer(3)],
                            ),
                        ])
                        .await
                        .map(|done| done[1].affected)
                        .map_err(|(i, e)| format!("{i}: {e}"))
                })
            })
            .collect();
        let mut seated = 0;
        for t in tasks {
            seated += t.await.unwrap().unwrap();
        }
        assert_eq!(seated, 3);
        let count = store.query("SELECT COUNT(*) FROM seats WHERE room = 1", vec![], rw).await.unwrap();
        assert_eq!(count, vec![vec![Value::Integer(3)]]);
        store.close().await;
    }

    async fn a_failing_write_fails_alone(store: Store) {
        store
            .execute("CREATE TABLE t (k BIGINT PRIMARY KEY, v TEXT NOT NULL)", vec![], Access::ReadWrite)
            .await
            .unwrap();
        let tasks: Vec<_> = (0..400i64)
            .map(|i| {
                let store = store.clone();
                // Every tenth insert reuses key 0: only the first of those can succeed.
                let k = if i % 10 == 0 { 0 } else { i };
                tokio::spawn(async move {
                    let sql = "INSERT INTO t (k, v) VALUES ($1, $2) RETURNING k";
                    (
                        k,
                        store
                            .query(sql, vec![Value::Integer(k), Value::Text(format!("v{i}"))], Access::ReadWrite)
                            .await,
                    )
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
                    assert!(e.to_string().to_lowercase().contains("unique"), "{e}");
                    refused += 1;
                }
                (k, Err(e)) => panic!("insert {k} failed: {e}"),
            }
        }
        assert_eq!((ok, refused), (361, 39));
        let count = store.query("SELECT COUNT(*) FROM t", vec![], Access::ReadWrite).await.unwrap();
        assert_eq!(count, vec![vec![Value::Integer(361)]], "every acknowledged write is committed, nothing else");
        let affected = store.execute("UPDATE t SET v = 'x' WHERE k < 10", vec![], Access::ReadWrite).await.unwrap();
        assert_eq!(affected, 9 + 1);
        store.close().await;
    }
}
