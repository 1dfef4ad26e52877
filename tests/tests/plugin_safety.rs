//! A hostile plugin (issue #15): the fault-test plugin runs whatever SQL and token requests a
//! client sends it (`sql-query:`, `sql-execute:`, `sql-batch:`, `issue:`, `verify:`), standing
//! in for a plugin that tries every bypass of its capabilities. Each bypass must be refused by
//! the database or the host, on SQLite and on PostgreSQL, and nothing may change.

use gatewayd_e2e::*;

/// Capabilities of the fault-test plugin, appended to the test config.
fn fault_test_capabilities(body: &str) -> String {
    format!("[plugins.fault-test.capabilities]\n{body}\n")
}

/// With `store = "read-write"` the plugin keeps its own table, `fault_notes`.
async fn daemon(db: Db, capabilities: &str, storage_extra: &str) -> Daemon {
    let tables = capabilities.contains("read-write");
    let opts = DaemonOptions {
        db,
        extra_toml: fault_test_capabilities(capabilities),
        fault_test_config: if tables { "tables = true".into() } else { String::new() },
        storage_extra: storage_extra.to_string(),
        auth_extra: format!("signing = {{ algorithm = \"HS256\", secret = \"{TEST_SECRET}\" }}"),
        ..DaemonOptions::default()
    };
    let d = Daemon::start(opts).await.expect("daemon starts");
    d.cli(&["tenant", "add-business", "b-1", "--name", "Acme"]).unwrap();
    d.cli(&["tenant", "add-business", "b-2", "--name", "Globex"]).unwrap();
    d
}

/// Send one command to the plugin, return its reply.
async fn ask(c: &mut Client, command: &str) -> String {
    c.send_text(command).await.unwrap();
    c.recv_text().await.unwrap()
}

fn businesses(d: &Daemon) -> usize {
    let list: serde_json::Value = serde_json::from_str(&d.cli(&["tenant", "list"]).unwrap()).unwrap();
    list["businesses"].as_array().unwrap().len()
}

/// Writes disguised as reads, statements that would change shared connections, several
/// statements in one text: all refused for a `store = "read"` plugin, and the rows stay.
async fn read_capability_is_enforced(db: Db) {
    let d = daemon(db, r#"store = "read""#, "").await;
    let mut c = Client::connect(&d.ws_url("/ws/faults/")).await.unwrap();
    let ok = ask(&mut c, "sql-query:SELECT COUNT(*) FROM businesses").await;
    assert!(ok.starts_with("rows:"), "{ok}");

    let mut attempts = vec![
        ("sql-query:WITH x AS (SELECT 1) DELETE FROM businesses", "read_only"),
        ("sql-execute:DELETE FROM businesses", "read_only"),
        ("sql-execute:/**/COMMIT", "forbidden"),
        ("sql-execute:-- hidden\nBEGIN", "forbidden"),
        ("sql-query:SELECT 1; DELETE FROM businesses", "one_statement"),
        ("sql-query:SELECT 1 /* ; DELETE FROM businesses", "one_statement"),
        ("sql-execute:PRAGMA query_only = OFF", "forbidden"),
        ("sql-execute:ATTACH DATABASE '/tmp/gatewayd-hostile.db' AS x", "forbidden"),
    ];
    if db == Db::Postgres {
        attempts.extend([
            ("sql-query:WITH d AS (DELETE FROM businesses RETURNING id) SELECT COUNT(*) FROM d", "read_only"),
            ("sql-query:SELECT set_config('default_transaction_read_only', 'off', false)", "rows:"),
            // Every connection of the pool had its setting changed and reset: still read-only.
            ("sql-query:WITH d AS (DELETE FROM businesses RETURNING id) SELECT COUNT(*) FROM d", "read_only"),
            ("sql-query:SELECT set_config('statement_timeout', '0', false)", "rows:"),
        ]);
    }
    for _round in 0..3 {
        for (command, expected) in &attempts {
            let reply = ask(&mut c, command).await;
            // A write to a tenant table is refused twice over on SQLite: by the read-only
            // connection and, first, by the authorizer (plugins never write tenant tables).
            let refused = reply.starts_with(&format!("store-error:{expected}"))
                || (*expected == "read_only" && db == Db::Sqlite && reply.starts_with("store-error:forbidden"));
            assert!(refused || (expected.ends_with(':') && reply.starts_with(expected)), "{command} -> {reply}");
        }
    }
    // store.batch needs read-write: refused before anything runs, even a first harmless read.
    let reply = ask(&mut c, "sql-batch:SELECT 1\n---\nDELETE FROM businesses").await;
    assert!(reply.starts_with("batch-error:0:forbidden"), "{reply}");
    assert_eq!(businesses(&d), 2, "nothing was deleted");
    assert!(!std::path::Path::new("/tmp/gatewayd-hostile.db").exists());
}

/// The number of rows in the fault-test plugin's own table.
async fn notes(c: &mut Client) -> usize {
    let reply = ask(c, "sql-query:SELECT id FROM fault_notes").await;
    reply.matches("Text(").count()
}

/// `store.batch` checks every statement as `execute` does before any runs, and commits all of
/// them or none.
async fn batches_are_checked_and_atomic(db: Db) {
    let d = daemon(db, r#"store = "read-write""#, "").await;
    let mut c = Client::connect(&d.ws_url("/ws/faults/")).await.unwrap();
    let add = |id: &str| format!("INSERT INTO fault_notes (id) VALUES ('{id}')");
    let reply = ask(&mut c, &format!("sql-batch:{}\n---\n{}", add("b-1"), add("b-2"))).await;
    assert!(reply.starts_with("results:[1, 1]:"), "{reply}");
    for (statements, expected) in [
        (vec![add("b-3"), "/**/COMMIT".into()], "batch-error:1:forbidden"),
        (vec![add("b-3"), "SELECT 1; DELETE FROM businesses".into()], "batch-error:1:one_statement"),
        (vec![add("b-3"), "PRAGMA query_only = OFF".into()], "batch-error:1:forbidden"),
        // The database refuses statement 1 (b-1 exists): statement 0 is rolled back.
        (vec![add("b-3"), add("b-1")], "batch-error:1:"),
        (vec![add("b-3"); 65], "batch-error:64:too_many"),
    ] {
        let reply = ask(&mut c, &format!("sql-batch:{}", statements.join("\n---\n"))).await;
        assert!(reply.starts_with(expected), "{statements:?} -> {reply}");
        assert_eq!(notes(&mut c).await, 2, "{statements:?} kept something");
    }
    let reply =
        ask(&mut c, &format!("sql-batch:{}\n---\n{}\n---\nSELECT COUNT(*) FROM fault_notes", add("b-3"), add("b-4")))
            .await;
    // Each insert changed one row; the count inside the transaction sees both.
    assert!(reply.starts_with("results:[1, 1, ") && reply.ends_with("Integer(4)]])"), "{reply}");
    assert_eq!(notes(&mut c).await, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_are_checked_and_atomic_on_sqlite() {
    batches_are_checked_and_atomic(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_are_checked_and_atomic_on_postgres() {
    batches_are_checked_and_atomic(Db::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_capability_is_enforced_on_sqlite() {
    read_capability_is_enforced(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_capability_is_enforced_on_postgres() {
    read_capability_is_enforced(Db::Postgres).await;
}

/// More slow queries than the pool has connections: each is cancelled at the database after
/// `statement_timeout_ms` with a clear error inside its event, and then the pool serves again
/// (the signaling plugin reads tenants through it).
async fn slow_queries_are_cancelled(db: Db, slow: &str) {
    let d = daemon(db, r#"store = "read-write""#, "statement_timeout_ms = 300\nmax_connections = 4").await;
    let mut clients = Vec::new();
    for _ in 0..8 {
        let mut c = Client::connect(&d.ws_url("/ws/faults/")).await.unwrap();
        c.send_text(&format!("sql-query:{slow}")).await.unwrap();
        clients.push(c);
    }
    // A slow write on the writer connection(s) too.
    let mut writer = Client::connect(&d.ws_url("/ws/faults/")).await.unwrap();
    let slow_write = format!("sql-execute:INSERT INTO fault_notes (id, body) SELECT 'n-slow', CAST(({slow}) AS TEXT)");
    writer.send_text(&slow_write).await.unwrap();
    for c in clients.iter_mut().chain(std::iter::once(&mut writer)) {
        let reply = c.recv_text().await.unwrap();
        assert!(reply.starts_with("store-error:statement_timeout"), "{reply}");
    }
    let ok = ask(&mut clients[0], "sql-query:SELECT COUNT(*) FROM businesses").await;
    assert!(ok.starts_with("rows:"), "{ok}");
    let ok = ask(&mut clients[1], "sql-execute:INSERT INTO fault_notes (id, body) VALUES ('n-3', 'Initech')").await;
    assert_eq!(ok, "affected:1");
    assert_eq!(notes(&mut clients[1]).await, 1, "the slow insert left nothing behind");
    let mut guest = Client::connect(&d.ws_url("/ws/signaling/?guest_id=g1")).await.unwrap();
    assert_eq!(guest.recv_json().await.unwrap()["type"], "connection_established");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_queries_are_cancelled_on_sqlite() {
    let endless = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT COUNT(*) FROM c";
    slow_queries_are_cancelled(Db::Sqlite, endless).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_queries_are_cancelled_on_postgres() {
    slow_queries_are_cancelled(Db::Postgres, "SELECT COUNT(*) FROM pg_sleep(60)").await;
}

/// `auth.issue` needs the capability; with it, only its claims, its lifetime and its own
/// audience, and the daemon accepts such a token for that plugin only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issued_tokens_are_confined_to_their_plugin() {
    let d = daemon(Db::Sqlite, "", "").await;
    let mut c = Client::connect(&d.ws_url("/ws/faults/")).await.unwrap();
    let reply = ask(&mut c, r#"issue:60:{"user_id":820}"#).await;
    assert!(reply.starts_with("issue-error:forbidden"), "{reply}");
    drop(c);
    drop(d);

    let capability = r#"issue = { audience = "faults", claims = ["sub"], max_ttl_secs = 600 }"#;
    let d = daemon(Db::Sqlite, capability, "").await;
    d.cli(&["tenant", "add-agent", "a-1", "--user-id", "820"]).unwrap();
    d.cli(&["tenant", "add-membership", "--agent", "a-1", "--business", "b-1"]).unwrap();
    let mut c = Client::connect(&d.ws_url("/ws/faults/")).await.unwrap();
    let reply = ask(&mut c, r#"issue:60:{"user_id":820}"#).await;
    assert!(reply.starts_with("issue-error:bad_claims"), "{reply}");
    let reply = ask(&mut c, r#"issue:601:{"sub":"x"}"#).await;
    assert!(reply.starts_with("issue-error:bad_ttl"), "{reply}");
    let reply = ask(&mut c, r#"issue:60:{"sub":"x","aud":"gatewayd"}"#).await;
    assert!(reply.starts_with("issue-error:bad_claims"), "{reply}");
    let reply = ask(&mut c, r#"issue:60:{"sub":"agent-820"}"#).await;
    let token = reply.strip_prefix("token:").unwrap_or_else(|| panic!("{reply}")).to_string();

    // Its own plugin accepts it ...
    let claims = ask(&mut c, &format!("verify:{token}")).await;
    assert!(claims.starts_with("claims:") && claims.contains(r#""aud":"faults""#), "{claims}");
    // ... signaling (and its routes) do not, though the signature is the daemon's own.
    let refused = Client::connect_with(&d.ws_url(&format!("/ws/signaling/?token={token}")), &[]).await.unwrap();
    let refused = refused.err().expect("signaling refuses another plugin's token");
    assert_eq!(refused.status, 401);
    assert!(refused.body.contains("token_not_accepted"), "{}", refused.body);
    // An agent token of the daemon's issuer still works there.
    let agent = agent_token(serde_json::json!(820));
    let mut ok = Client::connect(&d.ws_url(&format!("/ws/signaling/?token={agent}"))).await.unwrap();
    assert_eq!(ok.recv_json().await.unwrap()["type"], "connection_established");
}
