//! Table rights on SQLite, enforced by SQLite itself (docs/security.md "Plugin tables").
//!
//! SQLite has no users; it has an authorizer: a callback that `sqlite3_prepare` consults for
//! every table and column a statement reads or writes, every schema change, `PRAGMA`,
//! `ATTACH` and function call, and that can refuse the statement (`SQLITE_AUTH`, "not
//! authorized"). Every connection the process opens gets one (an automatic extension, as
//! [`super::deadline`]), together with the SQL function `gatewayd_identity(key, plugin, mode)`
//! that tells it who the connection's statements run for:
//!
//! - the daemon (the start-up state): anything;
//! - a plugin: read its own tables and the shared tenant tables ([`SHARED`]), write its own
//!   tables, nothing else: no schema change, `PRAGMA`, `ATTACH`, temporary objects, virtual
//!   tables or extension loading;
//! - a plugin's migration: the same plus creating tables, views, indexes and triggers, and
//!   altering or dropping its own.
//!
//! The function takes the process's random key as its first argument (bound as a parameter,
//! never in SQL text), so a plugin cannot call it to become someone else. A plugin's
//! connections are its own (`Store::for_plugin`): a statement prepared (and cached) for one
//! plugin is never run for another.
//!
//! Who owns a table is the daemon's table `plugin_objects` (name, plugin), loaded into
//! [`Owners`] at start and kept up to date as plugin migrations create and drop tables. Table
//! names are compared case-insensitively, as SQLite does.

use parking_lot::RwLock;
use std::collections::{HashMap, HashSet};
use std::ffi::{CStr, c_char, c_int, c_void};
use std::sync::{Arc, LazyLock, Once};

use libsqlite3_sys as ffi;

/// Daemon tables every plugin with the `store` capability may read: tenancy (signaling.md).
pub const SHARED: &[&str] = &["businesses", "departments", "agents", "agent_memberships", "business_numbers"];

/// SQL functions no plugin may call (files, extensions, tokenizer pointers).
const FORBIDDEN_FUNCTIONS: &[&str] = &["load_extension", "fts3_tokenizer", "readfile", "writefile", "edit"];

/// The process's key for `gatewayd_identity`: a random (v4) UUID, 122 random bits, hex.
static KEY: LazyLock<String> = LazyLock::new(|| uuid::Uuid::new_v4().simple().to_string());

/// Which plugin owns each table and view (lower-case names), process-wide.
static OWNERS: LazyLock<RwLock<HashMap<String, Arc<str>>>> = LazyLock::new(Default::default);

/// Every table and view of the database (lower-case names): a name read that is none of these
/// is a common table expression or a subquery of the statement itself.
static TABLES: LazyLock<RwLock<HashSet<String>>> = LazyLock::new(Default::default);

/// Who a connection's statements run for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Identity {
    Daemon,
    Plugin(Arc<str>),
    /// A migration of this plugin: it may also change its schema.
    Migrating(Arc<str>),
}

/// What one connection's hooks share: its identity and the tables created by the migration
/// running on it (owned by the plugin from their creation on, recorded after it commits).
struct Connection {
    identity: parking_lot::Mutex<(Identity, HashSet<String>)>,
}

/// The `mode` argument of `gatewayd_identity`: `0` plugin, `1` migration (`plugin` ''
/// = the daemon).
pub const MODE_PLUGIN: i64 = 0;
pub const MODE_MIGRATION: i64 = 1;

/// The SQL that sets a connection's identity; bind [`key`], the plugin name ('' for the
/// daemon) and a mode.
pub const SET_IDENTITY: &str = "SELECT gatewayd_identity($1, $2, $3)";

/// The key to bind as `gatewayd_identity`'s first argument.
pub fn key() -> &'static str {
    &KEY
}

/// Install the hooks for every SQLite connection opened from now on (idempotent).
pub fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: `on_open` has the signature SQLite expects of an extension entry point.
        let rc = unsafe { ffi::sqlite3_auto_extension(Some(on_open)) };
        if rc != ffi::SQLITE_OK {
            tracing::error!(rc, "SQLite authorizer could not be installed");
        }
    });
}

/// Replace what is known of the database (start-up, after the daemon's migrations): every
/// table and view, and the plugin owning each of the rows of `plugin_objects`.
pub fn load(tables: impl IntoIterator<Item = String>, owners: impl IntoIterator<Item = (String, String)>) {
    *TABLES.write() = tables.into_iter().map(|t| t.to_ascii_lowercase()).collect();
    *OWNERS.write() = owners.into_iter().map(|(name, plugin)| (name.to_ascii_lowercase(), plugin.into())).collect();
}

/// Record tables created (`Some(plugin)`) or dropped (`None`) by a committed migration.
pub fn set_owner(table: &str, plugin: Option<&str>) {
    let table = table.to_ascii_lowercase();
    match plugin {
        Some(p) => {
            TABLES.write().insert(table.clone());
            OWNERS.write().insert(table, p.into());
        }
        None => {
            TABLES.write().remove(&table);
            OWNERS.write().remove(&table);
        }
    }
}

/// Is `name` a table or view of the database (or one of SQLite's own, `sqlite_*`, or a pragma
/// or statistics table)? Otherwise a read of it is of the statement's own CTE or subquery.
fn is_table(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    name.starts_with("sqlite_") || name.starts_with("pragma_") || name == "dbstat" || TABLES.read().contains(&name)
}

/// The plugin owning `table`, if any.
pub fn owner(table: &str) -> Option<Arc<str>> {
    OWNERS.read().get(&table.to_ascii_lowercase()).cloned()
}

unsafe extern "C" fn on_open(
    db: *mut ffi::sqlite3,
    _err: *mut *mut c_char,
    _api: *const ffi::sqlite3_api_routines,
) -> c_int {
    let state = Arc::new(Connection { identity: parking_lot::Mutex::new((Identity::Daemon, HashSet::new())) });
    // The function owns one reference (released by `drop_state` when the connection closes);
    // the authorizer borrows it, and cannot outlive the connection.
    let ptr = Arc::into_raw(state) as *mut c_void;
    // SAFETY: `db` is the connection being opened; `ptr` stays valid until `drop_state`.
    unsafe {
        let rc = ffi::sqlite3_create_function_v2(
            db,
            c"gatewayd_identity".as_ptr(),
            3,
            ffi::SQLITE_UTF8 | ffi::SQLITE_DIRECTONLY,
            ptr,
            Some(set_identity),
            None,
            None,
            Some(drop_state),
        );
        if rc != ffi::SQLITE_OK {
            return rc;
        }
        ffi::sqlite3_set_authorizer(db, Some(authorize), ptr)
    }
}

unsafe extern "C" fn drop_state(ptr: *mut c_void) {
    // SAFETY: the reference `on_open` leaked for the function.
    drop(unsafe { Arc::from_raw(ptr as *const Connection) });
}

/// `gatewayd_identity(key, plugin, mode)`: wrong key -> an error, nothing changes.
unsafe extern "C" fn set_identity(ctx: *mut ffi::sqlite3_context, argc: c_int, argv: *mut *mut ffi::sqlite3_value) {
    // SAFETY: SQLite passes `argc` values and the user data given at registration.
    unsafe {
        let state = &*(ffi::sqlite3_user_data(ctx) as *const Connection);
        let args = std::slice::from_raw_parts(argv, argc as usize);
        let text = |v: *mut ffi::sqlite3_value| {
            let p = ffi::sqlite3_value_text(v);
            if p.is_null() { String::new() } else { CStr::from_ptr(p as *const c_char).to_string_lossy().into_owned() }
        };
        if args.len() != 3 || text(args[0]) != *KEY {
            ffi::sqlite3_result_error(ctx, c"gatewayd_identity: refused".as_ptr(), -1);
            return;
        }
        let plugin = text(args[1]);
        let identity = match (plugin.is_empty(), ffi::sqlite3_value_int64(args[2])) {
            (true, _) => Identity::Daemon,
            (false, MODE_MIGRATION) => Identity::Migrating(plugin.into()),
            (false, _) => Identity::Plugin(plugin.into()),
        };
        *state.identity.lock() = (identity, HashSet::new());
        ffi::sqlite3_result_null(ctx);
    }
}

/// The authorizer: `SQLITE_OK` or `SQLITE_DENY` for the connection's identity.
unsafe extern "C" fn authorize(
    ptr: *mut c_void,
    action: c_int,
    a: *const c_char,
    b: *const c_char,
    _db: *const c_char,
    _inner: *const c_char,
) -> c_int {
    // SAFETY: `ptr` is the connection's state (see `on_open`); the strings are SQLite's.
    let (state, a, b) = unsafe {
        let s = |p: *const c_char| if p.is_null() { None } else { CStr::from_ptr(p).to_str().ok() };
        (&*(ptr as *const Connection), s(a), s(b))
    };
    let mut guard = state.identity.lock();
    let (identity, created) = &mut *guard;
    let allowed = match identity {
        Identity::Daemon => true,
        Identity::Plugin(p) => decide(p, false, action, a, b, created),
        Identity::Migrating(p) => decide(p, true, action, a, b, created),
    };
    if allowed {
        ffi::SQLITE_OK
    } else {
        tracing::debug!(?identity, action, a, b, "SQLite authorizer refused");
        ffi::SQLITE_DENY
    }
}

/// May plugin `p` (in a migration: `migrating`) do `action` with SQLite's arguments `a`, `b`
/// (see the table of authorizer action codes in SQLite's C API)?
fn decide(
    p: &str,
    migrating: bool,
    action: c_int,
    a: Option<&str>,
    b: Option<&str>,
    created: &mut HashSet<String>,
) -> bool {
    let owns = |table: Option<&str>| {
        table.is_some_and(|t| {
            let t = t.to_ascii_lowercase();
            created.contains(&t) || OWNERS.read().get(&t).is_some_and(|o| **o == *p)
        })
    };
    let shared = |table: Option<&str>| table.is_some_and(|t| SHARED.iter().any(|s| s.eq_ignore_ascii_case(t)));
    // SQLite's own bookkeeping while a migration changes the schema.
    let schema_table = |table: Option<&str>| {
        table.is_some_and(|t| {
            ["sqlite_master", "sqlite_schema", "sqlite_temp_master"].iter().any(|s| s.eq_ignore_ascii_case(t))
        })
    };
    match action {
        ffi::SQLITE_SELECT | ffi::SQLITE_RECURSIVE | ffi::SQLITE_TRANSACTION | ffi::SQLITE_SAVEPOINT => true,
        ffi::SQLITE_FUNCTION => b.is_some_and(|f| !FORBIDDEN_FUNCTIONS.iter().any(|x| x.eq_ignore_ascii_case(f))),
        ffi::SQLITE_READ => {
            owns(a)
                || shared(a)
                || (migrating && schema_table(a))
                || a.is_some_and(|t| !is_table(t) && !created.contains(&t.to_ascii_lowercase()))
        }
        ffi::SQLITE_INSERT | ffi::SQLITE_UPDATE | ffi::SQLITE_DELETE => {
            owns(a) || a.is_some_and(|t| t.eq_ignore_ascii_case("sqlite_sequence")) || (migrating && schema_table(a))
        }
        ffi::SQLITE_CREATE_TABLE | ffi::SQLITE_CREATE_VIEW if migrating => {
            // A name nobody owns is new (creating an existing one fails in SQLite itself).
            let free = a.is_some_and(|t| !shared(Some(t)) && OWNERS.read().get(&t.to_ascii_lowercase()).is_none());
            let ok = free || owns(a);
            if ok && let Some(t) = a {
                created.insert(t.to_ascii_lowercase());
            }
            ok
        }
        // Index and trigger changes name the table they belong to in `b`; table and view
        // changes name it in `a` (`ALTER TABLE`: `b`).
        ffi::SQLITE_CREATE_INDEX | ffi::SQLITE_DROP_INDEX | ffi::SQLITE_CREATE_TRIGGER | ffi::SQLITE_DROP_TRIGGER
            if migrating =>
        {
            owns(b)
        }
        ffi::SQLITE_DROP_TABLE | ffi::SQLITE_DROP_VIEW if migrating => owns(a),
        ffi::SQLITE_ALTER_TABLE if migrating => owns(b),
        // Rebuilding indexes and statistics changes no data (SQLite asks for REINDEX when an
        // index is created, naming the index).
        ffi::SQLITE_REINDEX | ffi::SQLITE_ANALYZE if migrating => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugins_touch_their_own_tables_and_read_the_shared_ones() {
        let mut created = HashSet::new();
        let d = |migrating, action, a: Option<&str>, b: Option<&str>, c: &mut HashSet<String>| {
            decide("alpha", migrating, action, a, b, c)
        };
        load(["t_auth_own", "t_auth_other", "agents", "plugin_migrations"].map(String::from), []);
        set_owner("t_auth_own", Some("alpha"));
        set_owner("t_auth_other", Some("beta"));
        assert!(d(false, ffi::SQLITE_READ, Some("T_AUTH_OWN"), Some("x"), &mut created));
        // A common table expression of the statement's own; SQLite's tables are not that.
        assert!(d(false, ffi::SQLITE_READ, Some("c"), Some(""), &mut created));
        assert!(!d(false, ffi::SQLITE_READ, Some("sqlite_master"), Some("sql"), &mut created));
        assert!(!d(false, ffi::SQLITE_READ, Some("pragma_table_info"), Some("name"), &mut created));
        assert!(d(false, ffi::SQLITE_UPDATE, Some("t_auth_own"), Some("x"), &mut created));
        assert!(d(false, ffi::SQLITE_READ, Some("agents"), Some("id"), &mut created));
        assert!(!d(false, ffi::SQLITE_DELETE, Some("agents"), None, &mut created));
        assert!(!d(false, ffi::SQLITE_READ, Some("t_auth_other"), Some("x"), &mut created));
        assert!(!d(false, ffi::SQLITE_INSERT, Some("t_auth_other"), None, &mut created));
        assert!(!d(false, ffi::SQLITE_READ, Some("plugin_migrations"), Some("plugin"), &mut created));
        assert!(!d(false, ffi::SQLITE_PRAGMA, Some("query_only"), None, &mut created));
        assert!(!d(false, ffi::SQLITE_ATTACH, Some("/tmp/x"), None, &mut created));
        assert!(!d(false, ffi::SQLITE_FUNCTION, None, Some("load_extension"), &mut created));
        assert!(!d(false, ffi::SQLITE_CREATE_TABLE, Some("t_auth_new"), None, &mut created));
        assert!(!d(false, ffi::SQLITE_CREATE_TEMP_TABLE, Some("t_auth_new"), None, &mut created));
        // A migration creates new tables and indexes on them, never on others' tables.
        assert!(d(true, ffi::SQLITE_CREATE_TABLE, Some("t_auth_new"), None, &mut created));
        assert!(d(true, ffi::SQLITE_CREATE_INDEX, Some("i"), Some("t_auth_new"), &mut created));
        assert!(d(true, ffi::SQLITE_INSERT, Some("t_auth_new"), None, &mut created));
        assert!(!d(true, ffi::SQLITE_CREATE_TABLE, Some("t_auth_other"), None, &mut created));
        assert!(!d(true, ffi::SQLITE_CREATE_TABLE, Some("agents"), None, &mut created));
        assert!(!d(true, ffi::SQLITE_CREATE_INDEX, Some("i"), Some("t_auth_other"), &mut created));
        assert!(!d(true, ffi::SQLITE_CREATE_TRIGGER, Some("t"), Some("agents"), &mut created));
        assert!(!d(true, ffi::SQLITE_DROP_TABLE, Some("t_auth_other"), None, &mut created));
        assert!(!d(true, ffi::SQLITE_ALTER_TABLE, Some("main"), Some("businesses"), &mut created));
        assert!(d(true, ffi::SQLITE_ALTER_TABLE, Some("main"), Some("t_auth_own"), &mut created));
    }
}
