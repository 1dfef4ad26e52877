//! Plugin-owned schema (issue #15, docs/security.md "Plugin tables"): a plugin ships its
//! migrations, the daemon applies them with the plugin's own rights when it loads the plugin,
//! and the database confines the plugin to its own tables. The fault-test plugin (config
//! `tables = true`) owns `fault_notes`; its `v2` build adds a column; config `extra_migration`
//! adds a hostile or broken migration. Every case on SQLite and PostgreSQL.

use gatewayd_e2e::*;
use sqlx::{AnyConnection, Connection, Row};

/// The fault-test plugin may read and write the store and keeps a table; chat runs beside it.
async fn daemon(db: Db, media: &std::path::Path, faults: Option<std::path::PathBuf>) -> Daemon {
    let opts = DaemonOptions {
        db,
        extra_toml: format!(
            "{}\n[plugins.fault-test.capabilities]\nstore = \"read-write\"\n",
            chat_toml(&media.display().to_string(), 1 << 20, &["image/png"], "")
        ),
        fault_test_config: "tables = true".into(),
        auth_extra: format!("signing = {{ algorithm = \"HS256\", secret = \"{TEST_SECRET}\" }}"),
        fault_test_file: faults,
        ..DaemonOptions::default()
    };
    let d = Daemon::start(opts).await.expect("daemon starts");
    d.cli(&["tenant", "add-business", "b-1", "--name", "Acme"]).unwrap();
    d.cli(&["tenant", "add-business", "b-2", "--name", "Globex"]).unwrap();
    d
}

/// A connection of the test's own (the operator's: no plugin rights apply).
async fn operator(d: &Daemon) -> AnyConnection {
    sqlx::any::install_default_drivers();
    AnyConnection::connect(&d.database_url).await.expect("the test database")
}

async fn count(conn: &mut AnyConnection, sql: &str) -> i64 {
    sqlx::query(sql).fetch_one(&mut *conn).await.unwrap_or_else(|e| panic!("{sql}: {e}")).get::<i64, _>(0)
}

/// Where a plugin's table lives, as the operator names it.
fn table(db: Db, plugin_schema: &str, name: &str) -> String {
    match db {
        Db::Sqlite => name.to_string(),
        Db::Postgres => format!("{plugin_schema}.{name}"),
    }
}

async fn ask(c: &mut Client, command: &str) -> String {
    c.send_text(command).await.unwrap();
    c.recv_text().await.unwrap()
}

/// A plugin uses its own tables and reads the tenant tables; another plugin's tables, the
/// daemon's tables (for writing) and the daemon's bookkeeping are refused by the database.
async fn plugins_are_confined_to_their_own_tables(db: Db) {
    let media = tempdir::TempDir::new("gatewayd-schema-media");
    let d = daemon(db, media.path(), None).await;
    let chat_sessions = table(db, "plugin_chat", "chat_sessions");
    let mut op = operator(&d).await;
    sqlx::query(&format!(
        "INSERT INTO {chat_sessions} (id, business_id, visitor_key, visitor_id, created_at) \
         VALUES ('s-1', 'b-1', 'guest:v', 'v', '2026-01-01T00:00:00Z')"
    ))
    .execute(&mut op)
    .await
    .unwrap();

    let mut c = Client::connect(&d.ws_url("/ws/faults/")).await.unwrap();
    for (command, expected) in [
        ("sql-execute:INSERT INTO fault_notes (id, body) VALUES ('n-1', 'mine')", "affected:1"),
        ("sql-query:SELECT body FROM fault_notes", "Text(\"mine\")"),
        ("sql-query:SELECT COUNT(*) FROM businesses", "Integer(2)"),
        ("sql-query:SELECT COUNT(*) FROM agents a JOIN agent_memberships m ON m.agent_id = a.id", "rows:"),
    ] {
        let reply = ask(&mut c, command).await;
        assert!(reply.contains(expected), "{command} -> {reply}");
    }

    let chat = |sql: &str| sql.replace("{chat}", &table(db, "plugin_chat", "chat_sessions"));
    let mut refused = vec![
        chat("sql-query:SELECT * FROM {chat}"),
        chat("sql-execute:DELETE FROM {chat}"),
        chat("sql-execute:UPDATE {chat} SET active = 0"),
        chat("sql-query:SELECT COUNT(*) FROM fault_notes WHERE id IN (SELECT id FROM {chat})"),
        chat("sql-batch:INSERT INTO fault_notes (id) VALUES ('n-2')\n---\nDELETE FROM {chat}"),
        "sql-execute:INSERT INTO businesses (id) VALUES ('b-evil')".into(),
        "sql-execute:UPDATE agents SET display_name = 'evil'".into(),
        "sql-execute:DELETE FROM agent_memberships".into(),
        "sql-execute:DELETE FROM plugin_migrations WHERE plugin = 'chat'".into(),
    ];
    match db {
        Db::Sqlite => refused.extend(
            [
                "sql-query:SELECT name FROM sqlite_master",
                "sql-query:SELECT * FROM plugin_objects",
                // Schema changes happen in migrations only. (On PostgreSQL the plugin's role
                // owns its schema, so it may change its own tables at any time.)
                "sql-execute:CREATE TABLE evil AS SELECT * FROM businesses",
                "sql-execute:DROP TABLE fault_notes",
                "sql-execute:ALTER TABLE fault_notes ADD COLUMN evil TEXT",
                "sql-execute:CREATE INDEX evil ON fault_notes(body)",
                "sql-execute:CREATE TEMP TABLE evil (a INTEGER)",
                "sql-execute:CREATE VIEW evil AS SELECT * FROM chat_sessions",
                "sql-query:SELECT load_extension('/tmp/evil')",
            ]
            .map(String::from),
        ),
        Db::Postgres => refused.extend(
            [
                "sql-query:SELECT * FROM daemon_secrets",
                "sql-query:SELECT set_config('role', 'postgres', false)",
                "sql-execute:CREATE TABLE public.evil (a INTEGER)",
                "sql-query:SELECT * FROM plugin_rooms.rooms",
            ]
            .map(String::from),
        ),
    }
    for command in &refused {
        let reply = ask(&mut c, command).await;
        assert!(reply.starts_with("store-error:") || reply.starts_with("batch-error:1:"), "{command} -> {reply}");
    }
    // The refusals that name a table it may not use say so (not "no such table").
    let reply = ask(&mut c, "sql-execute:INSERT INTO businesses (id) VALUES ('b-evil')").await;
    assert!(reply.starts_with("store-error:forbidden"), "{reply}");
    if db == Db::Sqlite {
        let reply = ask(&mut c, "sql-query:SELECT * FROM chat_sessions").await;
        assert!(reply.starts_with("store-error:forbidden"), "{reply}");
    } else {
        // The ledger shows a plugin its own rows only.
        let reply = ask(&mut c, "sql-query:SELECT DISTINCT plugin FROM plugin_migrations").await;
        assert!(reply.contains("Text(\"fault-test\")") && reply.matches("Text(").count() == 1, "{reply}");
    }

    assert_eq!(count(&mut op, &format!("SELECT COUNT(*) FROM {chat_sessions} WHERE active = 1")).await, 1);
    assert_eq!(count(&mut op, "SELECT COUNT(*) FROM businesses").await, 2);
    assert_eq!(count(&mut op, "SELECT COUNT(*) FROM agents WHERE display_name = 'evil'").await, 0);
    assert_eq!(count(&mut op, "SELECT COUNT(*) FROM plugin_migrations WHERE plugin = 'chat'").await, 3);
    // chat itself still works on its tables.
    let body = serde_json::json!({"business": "b-1"});
    let started = http_request(d.addr, "POST", "/chat/start-session/", None, Some(&body)).await.unwrap();
    assert_eq!(started.status, 200, "{}", started.body);
    assert_eq!(count(&mut op, &format!("SELECT COUNT(*) FROM {chat_sessions}")).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_are_confined_to_their_own_tables_on_sqlite() {
    plugins_are_confined_to_their_own_tables(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_are_confined_to_their_own_tables_on_postgres() {
    plugins_are_confined_to_their_own_tables(Db::Postgres).await;
}

/// Replace `target` atomically (write beside it, then rename), as deployments should.
fn replace_file(target: &std::path::Path, bytes: &[u8]) {
    let tmp = target.with_extension("tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, target).unwrap();
}

/// Migrations run once, in order, on load and on hot reload; a version whose migration fails,
/// reaches beyond its own tables, or changed since it was applied is refused, leaves nothing,
/// and the running version keeps serving.
async fn migrations_apply_once_and_bad_ones_are_refused(db: Db) {
    let media = tempdir::TempDir::new("gatewayd-schema-media");
    let files = tempdir::TempDir::new("gatewayd-schema-plugins");
    let faults = files.path().join("fault-test.wasm");
    std::fs::copy(plugin_file("fault-test"), &faults).unwrap();
    let d = daemon(db, media.path(), Some(faults.clone())).await;
    let mut op = operator(&d).await;
    let ledger = "SELECT COUNT(*) FROM plugin_migrations WHERE plugin = 'fault-test'";
    assert_eq!(count(&mut op, ledger).await, 1);
    let mut c = Client::connect(&d.ws_url("/ws/faults/")).await.unwrap();
    assert_eq!(ask(&mut c, "sql-execute:INSERT INTO fault_notes (id) VALUES ('kept')").await, "affected:1");

    // v2 ships migration 2: applied by the hot reload, the row kept.
    replace_file(&faults, &std::fs::read(plugin_file("fault-test-v2")).unwrap());
    let ok = "gatewayd_plugin_reloads_total{plugin=\"fault-test\",result=\"ok\"}";
    wait_for(|| async { metric(&d, ok).await >= 1.0 }).await;
    assert_eq!(ask(&mut c, "version").await, "version:2");
    let reply = ask(&mut c, "sql-query:SELECT id, v2 FROM fault_notes").await;
    assert!(reply.contains("Text(\"kept\"), SqlValue::Null"), "{reply}");
    assert_eq!(count(&mut op, ledger).await, 2);

    let rejected = "gatewayd_plugin_reloads_total{plugin=\"fault-test\",result=\"rejected\"}";
    let config = std::fs::read_to_string(&d.config_path).unwrap();
    let chat = table(db, "plugin_chat", "chat_sessions");
    let half = table(db, "plugin_fault_test", "half");
    let hostile = [
        "CREATE INDEX evil ON agents(display_name)".to_string(),
        "ALTER TABLE businesses ADD COLUMN evil TEXT".into(),
        "DROP TABLE agents".into(),
        format!("CREATE TABLE copied AS SELECT * FROM {chat}"),
        format!("DELETE FROM {chat}"),
        // Fails half-way: the table it created first must not stay.
        "CREATE TABLE half (a INTEGER); INSERT INTO no_such_table VALUES (1)".into(),
        "CREATE TABLE t (a INTEGER); COMMIT".into(),
    ];
    for (n, sql) in hostile.iter().enumerate() {
        let with = config.replace("tables = true", &format!("tables = true\nextra_migration = \"\"\"{sql}\"\"\""));
        replace_file(&d.config_path, with.as_bytes());
        wait_for(|| async { metric(&d, rejected).await >= (n + 1) as f64 }).await;
        assert_eq!(ask(&mut c, "version").await, "version:2", "{sql}: the running version serves");
        assert_eq!(count(&mut op, ledger).await, 2, "{sql}: not recorded");
    }
    let logs = d.logs().join("\n");
    assert!(logs.contains("schema refused"), "{logs}");
    let exists = match db {
        Db::Sqlite => "SELECT COUNT(*) FROM sqlite_master WHERE name IN ('half', 'copied', 't', 'evil')".to_string(),
        Db::Postgres => format!("SELECT COUNT(to_regclass('{half}'))"),
    };
    assert_eq!(count(&mut op, &exists).await, 0, "a refused migration left nothing");
    assert_eq!(count(&mut op, &format!("SELECT COUNT(*) FROM {chat}")).await, 0);
    assert_eq!(count(&mut op, "SELECT COUNT(*) FROM businesses").await, 2);

    // A good migration 3 is applied; changing it afterwards is refused.
    let good =
        config.replace("tables = true", "tables = true\nextra_migration = \"CREATE TABLE fault_more (a INTEGER)\"");
    replace_file(&d.config_path, good.as_bytes());
    wait_for(|| async { metric(&d, ok).await >= 2.0 }).await;
    assert_eq!(count(&mut op, ledger).await, 3);
    assert_eq!(ask(&mut c, "sql-execute:INSERT INTO fault_more (a) VALUES (1)").await, "affected:1");
    let changed = good.replace("fault_more (a INTEGER)", "fault_more (a INTEGER, b TEXT)");
    replace_file(&d.config_path, changed.as_bytes());
    let before = hostile.len() as f64;
    wait_for(|| async { metric(&d, rejected).await > before }).await;
    assert!(d.logs().join("\n").contains("changed since it was applied"));
    let reply = ask(&mut c, "sql-query:SELECT a FROM fault_more").await;
    assert!(reply.contains("Integer(1)"), "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_apply_once_and_bad_ones_are_refused_on_sqlite() {
    migrations_apply_once_and_bad_ones_are_refused(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_apply_once_and_bad_ones_are_refused_on_postgres() {
    migrations_apply_once_and_bad_ones_are_refused(Db::Postgres).await;
}

/// A component built against the contract before `schema` existed (world `protocol` only:
/// `tests/assets/compat/echo-before-schema.wasm`, the echo plugin as built before this change)
/// still loads beside plugins that own tables, and serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn components_from_before_the_schema_export_still_load() {
    let old = workspace().join("tests/assets/compat/echo-before-schema.wasm");
    let extra = format!(
        "[[routes]]\nlistener = \"main\"\npath = \"/ws/old-echo/\"\nkind = \"websocket\"\nplugin = \"old-echo\"\n\
         auth = \"none\"\n\n[plugins.old-echo]\nfile = \"{}\"\n[plugins.old-echo.capabilities]\nstore = \"read-write\"\n",
        old.display()
    );
    let d = Daemon::start(DaemonOptions {
        extra_toml: extra,
        fault_test_config: "tables = true".into(),
        ..Default::default()
    })
    .await
    .expect("the old component loads");
    let mut c = Client::connect(&d.ws_url("/ws/old-echo/")).await.unwrap();
    c.send_text("still here").await.unwrap();
    assert_eq!(c.recv_text().await.unwrap(), "still here");
}
