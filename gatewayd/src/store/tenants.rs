//! Tenancy administration: businesses, departments, agents and memberships. These are the rows
//! the signaling plugin reads to resolve an agent's membership; `gatewayd tenant ...` drives
//! these functions.

use super::{Access, Store, Value};
use anyhow::{Context, bail};
use serde_json::{Value as Json, json};

fn text(s: &str) -> Value {
    Value::Text(s.to_string())
}

async fn exists(store: &Store, table: &str, id: &str) -> anyhow::Result<bool> {
    let sql = format!("SELECT 1 FROM {table} WHERE id = $1");
    Ok(!store.query(&sql, vec![text(id)], Access::ReadWrite).await?.is_empty())
}

async fn insert(store: &Store, what: &str, id: &str, sql: &str, params: Vec<Value>) -> anyhow::Result<()> {
    store.execute(sql, params, Access::ReadWrite).await.map(|_| ()).map_err(|e| match e.as_database_error() {
        Some(db) if db.is_unique_violation() => anyhow::anyhow!("{what} {id} already exists"),
        _ => anyhow::Error::new(e).context(format!("adding {what} {id}")),
    })
}

pub async fn add_business(store: &Store, id: &str, name: &str) -> anyhow::Result<()> {
    insert(store, "business", id, "INSERT INTO businesses (id, name) VALUES ($1, $2)", vec![text(id), text(name)]).await
}

pub async fn add_department(store: &Store, id: &str, business: &str, name: &str) -> anyhow::Result<()> {
    if !exists(store, "businesses", business).await? {
        bail!("business {business} does not exist");
    }
    insert(
        store,
        "department",
        id,
        "INSERT INTO departments (id, business_id, name) VALUES ($1, $2, $3)",
        vec![text(id), text(business), text(name)],
    )
    .await
}

pub async fn add_agent(store: &Store, id: &str, user_id: &str, display_name: &str) -> anyhow::Result<()> {
    insert(
        store,
        "agent",
        id,
        "INSERT INTO agents (id, user_id, display_name) VALUES ($1, $2, $3)",
        vec![text(id), text(user_id), text(display_name)],
    )
    .await
}

/// Add a membership of `agent` in `business`, optionally in one of its departments.
pub async fn add_membership(
    store: &Store,
    agent: &str,
    business: &str,
    department: Option<&str>,
) -> anyhow::Result<()> {
    if !exists(store, "agents", agent).await? {
        bail!("agent {agent} does not exist");
    }
    if !exists(store, "businesses", business).await? {
        bail!("business {business} does not exist");
    }
    if let Some(d) = department {
        let rows =
            store.query("SELECT business_id FROM departments WHERE id = $1", vec![text(d)], Access::ReadWrite).await?;
        match rows.first().and_then(|r| r.first()) {
            None => bail!("department {d} does not exist"),
            Some(Value::Text(b)) if b != business => bail!("department {d} belongs to business {b}, not {business}"),
            _ => {}
        }
    }
    let what = match department {
        Some(d) => format!("{agent} in business {business}, department {d}"),
        None => format!("{agent} in business {business}"),
    };
    insert(
        store,
        "membership of agent",
        &what,
        "INSERT INTO agent_memberships (agent_id, business_id, department_id) VALUES ($1, $2, $3)",
        vec![text(agent), text(business), department.map(text).unwrap_or(Value::Null)],
    )
    .await
}

/// Map phone `number` (E.164, as Twilio sends `To`) to `business`: calls to it are that
/// business's (telephony.md).
pub async fn add_number(store: &Store, number: &str, business: &str) -> anyhow::Result<()> {
    if !number.starts_with('+') || number.len() < 3 || !number[1..].bytes().all(|b| b.is_ascii_digit()) {
        bail!("number {number} is not E.164 (+ and digits, e.g. +14155550100)");
    }
    if !exists(store, "businesses", business).await? {
        bail!("business {business} does not exist");
    }
    insert(
        store,
        "number",
        number,
        "INSERT INTO business_numbers (number, business_id) VALUES ($1, $2)",
        vec![text(number), text(business)],
    )
    .await
}

/// Delete a row by id from one of the tenancy tables (memberships and departments cascade).
pub async fn remove(store: &Store, table: &str, id: &str) -> anyhow::Result<()> {
    let table_name = match table {
        "business" => "businesses",
        "department" => "departments",
        "agent" => "agents",
        "number" => "business_numbers",
        other => bail!("unknown kind {other}"),
    };
    let key = if table == "number" { "number" } else { "id" };
    let n =
        store.execute(&format!("DELETE FROM {table_name} WHERE {key} = $1"), vec![text(id)], Access::ReadWrite).await?;
    if n == 0 {
        bail!("{table} {id} does not exist");
    }
    Ok(())
}

pub async fn remove_membership(
    store: &Store,
    agent: &str,
    business: &str,
    department: Option<&str>,
) -> anyhow::Result<()> {
    let n = store
        .execute(
            "DELETE FROM agent_memberships WHERE agent_id = $1 AND business_id = $2 AND COALESCE(department_id, '') = $3",
            vec![text(agent), text(business), text(department.unwrap_or(""))],
            Access::ReadWrite,
        )
        .await?;
    if n == 0 {
        bail!("no such membership");
    }
    Ok(())
}

/// Everything, as one JSON document (for `gatewayd tenant list`).
pub async fn list(store: &Store) -> anyhow::Result<Json> {
    let as_json = |v: &Value| match v {
        Value::Text(s) => json!(s),
        Value::Null => Json::Null,
        Value::Integer(i) => json!(i),
        other => json!(format!("{other:?}")),
    };
    let mut out = serde_json::Map::new();
    for (key, sql, cols) in [
        ("businesses", "SELECT id, name, tenant_id FROM businesses ORDER BY id", &["id", "name", "tenant_id"][..]),
        (
            "departments",
            "SELECT id, business_id, name FROM departments ORDER BY id",
            &["id", "business_id", "name"][..],
        ),
        ("agents", "SELECT id, user_id, display_name FROM agents ORDER BY id", &["id", "user_id", "display_name"][..]),
        (
            "memberships",
            "SELECT agent_id, business_id, department_id FROM agent_memberships ORDER BY agent_id, business_id",
            &["agent_id", "business_id", "department_id"][..],
        ),
        ("numbers", "SELECT number, business_id FROM business_numbers ORDER BY number", &["number", "business_id"][..]),
    ] {
        let rows = store.query(sql, vec![], Access::ReadWrite).await.with_context(|| format!("listing {key}"))?;
        let items: Vec<Json> = rows
            .iter()
            .map(|r| Json::Object(cols.iter().zip(r).map(|(c, v)| (c.to_string(), as_json(v))).collect()))
            .collect();
        out.insert(key.to_string(), Json::Array(items));
    }
    Ok(Json::Object(out))
}

/// Import businesses, departments, agents and memberships from a document shaped like the
/// output of [`list`], in one transaction: everything is added or nothing is.
pub async fn import(store: &Store, doc: &Json) -> anyhow::Result<usize> {
    let field = |item: &Json, name: &str| -> Value {
        match item.get(name) {
            Some(Json::String(s)) => Value::Text(s.clone()),
            Some(Json::Number(n)) => Value::Text(n.to_string()),
            _ => Value::Null,
        }
    };
    let mut statements: Vec<(String, Vec<Value>)> = Vec::new();
    for (key, sql, cols) in [
        ("businesses", "INSERT INTO businesses (id, name) VALUES ($1, COALESCE($2, ''))", &["id", "name"][..]),
        (
            "departments",
            "INSERT INTO departments (id, business_id, name) VALUES ($1, $2, COALESCE($3, ''))",
            &["id", "business_id", "name"][..],
        ),
        (
            "agents",
            "INSERT INTO agents (id, user_id, display_name) VALUES ($1, $2, COALESCE($3, ''))",
            &["id", "user_id", "display_name"][..],
        ),
        (
            "memberships",
            "INSERT INTO agent_memberships (agent_id, business_id, department_id) VALUES ($1, $2, $3)",
            &["agent_id", "business_id", "department_id"][..],
        ),
        (
            "numbers",
            "INSERT INTO business_numbers (number, business_id) VALUES ($1, $2)",
            &["number", "business_id"][..],
        ),
    ] {
        for item in doc.get(key).and_then(Json::as_array).map(Vec::as_slice).unwrap_or_default() {
            statements.push((sql.to_string(), cols.iter().map(|c| field(item, c)).collect()));
        }
    }
    let n = statements.len();
    store
        .execute_in_transaction(statements)
        .await
        .map_err(|(i, e)| anyhow::Error::new(e).context(format!("import rolled back at statement {i}")))?;
    Ok(n)
}
