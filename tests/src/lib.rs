//! Test harness: start the real `gatewayd` binary on free loopback ports with a temporary config
//! and state directory, and talk to it with real WebSocket and HTTP clients.
//!
//! Nothing is mocked. The binary is `target/release/gatewayd` next to the test executable (or
//! `$GATEWAYD_BIN`), plugins are `build/plugins/*.wasm` (built by `make build`); a missing piece
//! fails the test with the command that builds it. PostgreSQL tests use `$GATEWAYD_TEST_PG`
//! (default `postgres://postgres@127.0.0.1:5432/postgres`) and fail loudly when it is down.

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use fastwebsockets::{Frame, OpCode, Payload, Role, WebSocket};
use http_body_util::{BodyExt, Empty};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpStream;

/// How long a test waits for something the daemon must do (an answer, a broadcast, a close).
/// Generous on purpose: a test must pass on a busy machine, so no wait for a required event
/// may be tight; only "nothing arrives" windows ([`Client::expect_silence`]) are short.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// The sum of the `/metrics` lines starting with `series` (name and labels as printed; 0 when
/// there is none).
pub async fn metric(d: &Daemon, series: &str) -> f64 {
    let (_, body) = d.admin_get("/metrics").await.expect("metrics");
    body.lines()
        .filter(|l| l.starts_with(series))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

/// Poll `check` until it is true; fails the test after [`PATIENCE`].
pub async fn wait_for<F, Fut>(mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = std::time::Instant::now();
    while !check().await {
        assert!(start.elapsed() < PATIENCE, "condition not reached in {PATIENCE:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// HS256 secret of every test config.
pub const TEST_SECRET: &str = "gatewayd-test-secret-0123456789abcdef";

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// The `gatewayd` binary under test.
pub fn gatewayd_bin() -> PathBuf {
    if let Ok(p) = std::env::var("GATEWAYD_BIN") {
        return PathBuf::from(p);
    }
    // target/<profile>/deps/<test-exe> -> target/<profile>/gatewayd
    let exe = std::env::current_exe().expect("current_exe");
    let bin = exe.parent().and_then(Path::parent).expect("test exe in target/<profile>/deps").join("gatewayd");
    assert!(
        bin.is_file(),
        "{} is missing: run `make build` (or `cargo build --release -p gatewayd`) first",
        bin.display()
    );
    bin
}

/// A plugin component built by `make plugins`.
pub fn plugin_file(name: &str) -> PathBuf {
    let p = workspace().join("build/plugins").join(format!("{name}.wasm"));
    assert!(p.is_file(), "{} is missing: run `make plugins` first", p.display());
    p
}

/// A free loopback port (bound then released; the daemon binds it right after), never one this
/// test process was handed before.
pub fn free_port() -> u16 {
    free_ports::<1>()[0]
}

/// `N` distinct free loopback ports, none handed out earlier in this test process (so two
/// daemons, or a daemon and an extra listener, picked at different moments never get the
/// same port while the first has not bound it yet).
pub fn free_ports<const N: usize>() -> [u16; N] {
    static HANDED_OUT: Mutex<std::collections::BTreeSet<u16>> = Mutex::new(std::collections::BTreeSet::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    // Every listener stays bound until all ports are picked, so the OS offers a new port each
    // time, also after one that was handed out before.
    let mut held = Vec::new();
    let mut ports = Vec::with_capacity(N);
    while ports.len() < N {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        if handed_out.insert(port) {
            ports.push(port);
        }
        held.push(listener);
    }
    std::array::from_fn(|i| ports[i])
}

/// Numeric field `n` (numbered as in proc(5), 4 and up) of a `/proc/<pid>/stat` or
/// `/proc/<pid>/task/<tid>/stat` file, e.g. 14 utime, 15 stime (clock ticks), 40 rt_priority,
/// 41 policy.
pub fn proc_stat_field(stat_file: &Path, n: usize) -> Result<u64> {
    let stat = std::fs::read_to_string(stat_file)?;
    // Fields after the command name (which may contain spaces) start after the last ')', with
    // field 3 (state).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).ok_or_else(|| anyhow!("bad stat file {}", stat_file.display()))?;
    let field = rest.split_whitespace().nth(n.checked_sub(3).ok_or_else(|| anyhow!("field {n}"))?);
    Ok(field.ok_or_else(|| anyhow!("no field {n} in {}", stat_file.display()))?.parse()?)
}

/// Which database a test daemon uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

/// A fresh PostgreSQL database for one test, dropped when this is dropped.
pub struct PgDatabase {
    pub url: String,
    admin_url: String,
    name: String,
}

impl PgDatabase {
    /// Create `gw_test_<random>` on the local server. Panics (the test fails) if the server is
    /// not reachable: PostgreSQL tests never skip.
    pub async fn create() -> PgDatabase {
        let admin_url =
            std::env::var("GATEWAYD_TEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let name = format!("gw_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&admin_url)
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL at {admin_url} is required for this test: {e}"));
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.expect("CREATE DATABASE");
        let base = admin_url.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin_url);
        PgDatabase { url: format!("{base}/{name}"), admin_url, name }
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let (admin, name, url) = (self.admin_url.clone(), self.name.clone(), self.url.clone());
        // Best effort, on a thread of its own: Drop may run inside a runtime. The plugins'
        // roles (cluster-wide, named after this database) go with it.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let mut roles: Vec<String> = Vec::new();
                if let Ok(mut c) = <sqlx::PgConnection as sqlx::Connection>::connect(&url).await {
                    roles =
                        sqlx::query_scalar("SELECT role FROM plugin_roles").fetch_all(&mut c).await.unwrap_or_default();
                }
                if let Ok(mut c) = <sqlx::PgConnection as sqlx::Connection>::connect(&admin).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut c).await;
                    for role in roles {
                        let _ = sqlx::query(&format!("DROP ROLE IF EXISTS \"{role}\"")).execute(&mut c).await;
                    }
                }
            })
        })
        .join();
    }
}

/// Options for a test daemon.
pub struct DaemonOptions {
    pub db: Db,
    /// Extra TOML appended to the generated config (routes, plugins, tables).
    pub extra_toml: String,
    /// `[plugins.signaling.config]` body.
    pub signaling_config: String,
    /// `[plugins.signaling.limits]` body.
    pub signaling_limits: String,
    /// Extra keys of the `[auth]` table (audience, issuer).
    pub auth_extra: String,
    /// The fault-test component to load (default `build/plugins/fault-test.wasm`).
    pub fault_test_file: Option<PathBuf>,
    /// Extra keys of `[plugins.fault-test.config]` (e.g. `tables = true`).
    pub fault_test_config: String,
    /// The signaling component to load (default `build/plugins/signaling.wasm`).
    pub signaling_file: Option<PathBuf>,
    /// Extra environment variables for the daemon process.
    pub env: Vec<(String, String)>,
    /// `[plugins.rooms.config]` body (the rooms listener is always on, see [`Daemon::rooms_addr`]).
    pub rooms_config: String,
    /// Extra keys of `[listeners.main]` (limits, timeouts, caps). `max_message_bytes` is 16384
    /// unless given here.
    pub main_listener: String,
    /// Extra keys of `[daemon]`.
    pub daemon_extra: String,
    /// The open-file limit (`ulimit -n`) the daemon starts with.
    pub nofile_limit: Option<u64>,
    /// Extra keys of `[storage]` (e.g. `statement_timeout_ms`).
    pub storage_extra: String,
    /// `[storage] url` to use instead of the one `db` picks (e.g. a PostgreSQL server the test
    /// started itself).
    pub database_url: Option<String>,
}

impl Default for DaemonOptions {
    fn default() -> Self {
        DaemonOptions {
            db: Db::Sqlite,
            extra_toml: String::new(),
            signaling_config: "invite_timeout_secs = 30".into(),
            signaling_limits: String::new(),
            auth_extra: String::new(),
            fault_test_file: None,
            fault_test_config: String::new(),
            signaling_file: None,
            env: Vec::new(),
            rooms_config: String::new(),
            main_listener: String::new(),
            daemon_extra: String::new(),
            nofile_limit: None,
            storage_extra: String::new(),
            database_url: None,
        }
    }
}

/// A running `gatewayd` process with its own state directory and ports.
pub struct Daemon {
    child: Option<Child>,
    pub dir: tempdir::TempDir,
    pub config_path: PathBuf,
    pub addr: SocketAddr,
    /// The admin listener (`/healthz`, `/readyz`, `/metrics`).
    pub admin_addr: SocketAddr,
    /// The rooms listener: REST under `/api/v1`, WebSocket at `/ws`.
    pub rooms_addr: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
    /// The thread copying the running process's stderr into `logs`.
    log_reader: Option<std::thread::JoinHandle<()>>,
    /// `[storage] url` as the test can use it (SQLite: an absolute path).
    pub database_url: String,
    _pg: Option<PgDatabase>,
    nofile_limit: Option<u64>,
    /// Extra environment of the daemon (and of [`Daemon::cli`] commands on its config).
    env: Vec<(String, String)>,
}

/// A temporary directory removed on drop (tiny; avoids a dependency).
pub mod offline;
pub mod speech_providers;
pub mod twilio;
pub mod webdriver;
pub mod wer;

pub mod tempdir {
    use std::path::{Path, PathBuf};

    pub struct TempDir(PathBuf);

    impl TempDir {
        pub fn new(prefix: &str) -> TempDir {
            let p = std::env::temp_dir().join(format!("{prefix}-{}", uuid::Uuid::new_v4().simple()));
            std::fs::create_dir_all(&p).expect("create temp dir");
            TempDir(p)
        }
        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl Daemon {
    /// Start a daemon serving signaling on `/ws/signaling/` (and the fault-test plugin on
    /// `/ws/faults/`), and wait until it accepts connections.
    pub async fn start(opts: DaemonOptions) -> Result<Daemon> {
        let dir = tempdir::TempDir::new("gatewayd-test");
        let [port, admin_port, rooms_port] = free_ports();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let admin_addr: SocketAddr = format!("127.0.0.1:{admin_port}").parse()?;
        let rooms_addr: SocketAddr = format!("127.0.0.1:{rooms_port}").parse()?;
        let (url, pg) = match (&opts.database_url, opts.db) {
            (Some(url), _) => (url.clone(), None),
            (None, Db::Sqlite) => ("sqlite://gatewayd.db".to_string(), None),
            (None, Db::Postgres) => {
                let pg = PgDatabase::create().await;
                (pg.url.clone(), Some(pg))
            }
        };
        let config = format!(
            r#"
[daemon]
state_dir = "{state}"
log_level = "info,gatewayd=debug"
{daemon_extra}

[storage]
url = "{url}"
{storage_extra}

[auth]
leeway_secs = 0
{auth_extra}
[[auth.keys]]
algorithm = "HS256"
secret = "{TEST_SECRET}"

[admin]
address = "{admin_addr}"

[listeners.main]
address = "{addr}"
{message_bytes}
{main_listener}

[[routes]]
listener = "main"
path = "/ws/signaling/"
kind = "websocket"
plugin = "signaling"
auth = "optional"

[[routes]]
listener = "main"
path = "/ws/faults/"
kind = "websocket"
plugin = "fault-test"
auth = "none"

[plugins.signaling]
file = "{signaling}"
[plugins.signaling.capabilities]
store = "read"
[plugins.signaling.limits]
{limits}
[plugins.signaling.config]
{sigconf}

[plugins.fault-test]
file = "{faults}"
[plugins.fault-test.limits]
event_timeout_ms = 100
memory_mb = 16
[plugins.fault-test.config]
fail_init = false
{fault_test_config}

{rooms}
{extra}
"#,
            state = dir.path().join("state").display(),
            signaling = opts.signaling_file.clone().unwrap_or_else(|| plugin_file("signaling")).display(),
            faults = opts.fault_test_file.clone().unwrap_or_else(|| plugin_file("fault-test")).display(),
            fault_test_config = opts.fault_test_config,
            limits = opts.signaling_limits,
            sigconf = opts.signaling_config,
            extra = opts.extra_toml,
            auth_extra = opts.auth_extra,
            rooms = rooms_toml(rooms_addr, &opts.rooms_config),
            main_listener = opts.main_listener,
            // 16 KiB unless the test sets its own (as config/gatewayd.toml's 64 KiB).
            message_bytes =
                if opts.main_listener.contains("max_message_bytes") { "" } else { "max_message_bytes = 16384" },
            daemon_extra = opts.daemon_extra,
            storage_extra = opts.storage_extra,
        );
        let config_path = dir.path().join("gatewayd.toml");
        std::fs::write(&config_path, config)?;
        let database_url = match url.strip_prefix("sqlite://") {
            Some(file) if !file.starts_with('/') => {
                format!("sqlite://{}", dir.path().join("state").join(file).display())
            }
            _ => url.clone(),
        };
        let mut daemon = Daemon {
            child: None,
            database_url,
            dir,
            config_path,
            addr,
            admin_addr,
            rooms_addr,
            logs: Arc::default(),
            log_reader: None,
            _pg: pg,
            nofile_limit: opts.nofile_limit,
            env: opts.env.clone(),
        };
        daemon.spawn()?;
        daemon.wait_ready().await?;
        Ok(daemon)
    }

    fn spawn(&mut self) -> Result<()> {
        let env = self.env.clone();
        let mut command = match self.nofile_limit {
            None => Command::new(gatewayd_bin()),
            Some(n) => {
                // The shell lowers its limit and becomes the daemon (same pid).
                let mut sh = Command::new("sh");
                sh.arg("-c").arg(format!("ulimit -n {n} && exec \"$0\" \"$@\"")).arg(gatewayd_bin());
                sh
            }
        };
        let mut child = command
            .args(["run", "--config"])
            .arg(&self.config_path)
            .env_remove("RUST_LOG")
            .env_remove("NOTIFY_SOCKET")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawning gatewayd")?;
        let stderr = child.stderr.take().expect("piped stderr");
        let logs = self.logs.clone();
        self.log_reader = Some(std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if std::env::var_os("GATEWAYD_TEST_LOG").is_some() {
                    eprintln!("[gatewayd] {line}");
                }
                logs.lock().unwrap().push(line);
            }
        }));
        self.child = Some(child);
        Ok(())
    }

    async fn wait_ready(&mut self) -> Result<()> {
        // Generous: start-up compiles every plugin, which takes long on a busy machine.
        for _ in 0..1200 {
            if let Some(status) = self.child.as_mut().expect("spawned").try_wait()? {
                // Its stderr is closed: the reader has every line once it ends.
                if let Some(reader) = self.log_reader.take() {
                    let _ = reader.join();
                }
                bail!("gatewayd exited with {status} during start-up:\n{}", self.logs().join("\n"));
            }
            if self.logs().iter().any(|l| l.contains("gatewayd ready")) && TcpStream::connect(self.addr).await.is_ok() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("gatewayd did not become ready in 60 s:\n{}", self.logs().join("\n"))
    }

    /// GET `path` on the admin listener; returns (status, body).
    pub async fn admin_get(&self, path: &str) -> Result<(u16, String)> {
        http_get(self.admin_addr, path).await
    }

    /// Everything the daemon logged so far.
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// Run a `gatewayd` subcommand against this daemon's config; returns stdout, or an error
    /// with stderr when the command fails.
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(gatewayd_bin())
            .arg("--config")
            .arg(&self.config_path)
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()?;
        if !out.status.success() {
            bail!("gatewayd {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8(out.stdout)?)
    }

    /// `ws://<addr><path_and_query>`.
    pub fn ws_url(&self, path_and_query: &str) -> String {
        format!("ws://{}{}", self.addr, path_and_query)
    }

    /// Stop with SIGTERM and wait for the exit status.
    pub fn stop(&mut self) -> Result<std::process::ExitStatus> {
        let mut child = self.child.take().ok_or_else(|| anyhow!("not running"))?;
        let pid = child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status()?;
        Ok(child.wait()?)
    }

    /// Process id of the daemon.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Wait for the daemon to exit (after a signal sent elsewhere).
    pub fn wait(&mut self) -> Result<std::process::ExitStatus> {
        let mut child = self.child.take().ok_or_else(|| anyhow!("not running"))?;
        Ok(child.wait()?)
    }

    /// Start the daemon again on the same config, state and port (after [`Daemon::stop`]).
    pub async fn restart(&mut self) -> Result<()> {
        self.logs.lock().unwrap().clear();
        self.spawn()?;
        self.wait_ready().await
    }

    /// Kill the process with SIGKILL (no shutdown work at all), then start it again on the same
    /// config, database and ports, and wait until it is ready.
    pub async fn crash_and_restart(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        self.logs.lock().unwrap().clear();
        self.spawn()?;
        self.wait_ready().await
    }

    /// Is the process still alive?
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }
}

/// The chat routes and plugin of a test config (like `config/gatewayd.toml`): uploads go to
/// `media_dir` (relative to the config file, or absolute), at most `max_file_bytes` each, of
/// `allowed_types`; `extra_config` is appended to `[plugins.chat.config]`.
pub fn chat_toml(media_dir: &str, max_file_bytes: usize, allowed_types: &[&str], extra_config: &str) -> String {
    format!(
        r#"
[[routes]]
listener = "main"
path = "/chat/"
prefix = true
kind = "http"
plugin = "chat"
auth = "optional"

[[routes]]
name = "visitor-chat"
listener = "main"
path = "/ws/visitor-chat/"
kind = "websocket"
plugin = "chat"
auth = "optional"
refused_token_close = 4003

[plugins.chat]
file = "{file}"
[plugins.chat.limits]
event_timeout_ms = 2000
memory_mb = 64
[plugins.chat.capabilities]
store = "read-write"
[plugins.chat.capabilities.issue]
audience = "gatewayd-chat-visitor"
claims = ["sub", "chat_visitor_id", "chat_session_id", "business_id"]
[plugins.chat.capabilities.files]
dir = "{media_dir}"
max_bytes = {max_file_bytes}
allowed_types = {types:?}
[plugins.chat.config]
public_base_url = "http://chat.test"
{extra_config}
"#,
        file = plugin_file("chat").display(),
        types = allowed_types,
    )
}

/// The rooms listener, routes and plugin of a test config (like `config/gatewayd.toml`).
fn rooms_toml(addr: SocketAddr, config: &str) -> String {
    format!(
        r#"
[listeners.rooms]
address = "{addr}"
max_message_bytes = 65536

[[routes]]
listener = "rooms"
path = "/api/v1"
prefix = true
kind = "http"
plugin = "rooms"
auth = "optional"

[[routes]]
listener = "rooms"
path = "/ws"
kind = "websocket"
plugin = "rooms"
auth = "optional"

[plugins.rooms]
file = "{file}"
[plugins.rooms.capabilities]
store = "read-write"
[plugins.rooms.limits]
event_timeout_ms = 2000
[plugins.rooms.config]
{config}
"#,
        file = plugin_file("rooms").display(),
    )
}

/// An HTTP answer: status and the body parsed as JSON (`Value::Null` when empty).
#[derive(Debug)]
pub struct HttpAnswer {
    pub status: u16,
    pub body: Value,
}

/// A real HTTP/1.1 request with hyper's client to `addr`: `method path`, an optional bearer
/// token and an optional JSON body.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<&Value>,
) -> Result<HttpAnswer> {
    http_request_over(TcpStream::connect(addr).await?, &addr.to_string(), method, path, bearer, body).await
}

/// [`http_request`] over a connection the caller opened (e.g. TLS); `host` is the `Host` header.
pub async fn http_request_over<S>(
    io: S,
    host: &str,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<&Value>,
) -> Result<HttpAnswer>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(conn);
    let mut req = hyper::Request::builder().method(method).uri(path).header("Host", host);
    if let Some(t) = bearer {
        req = req.header("Authorization", format!("Bearer {t}"));
    }
    let payload = match body {
        Some(v) => {
            req = req.header("Content-Type", "application/json");
            Bytes::from(v.to_string())
        }
        None => Bytes::new(),
    };
    let resp = sender.send_request(req.body(http_body_util::Full::new(payload))?).await?;
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await?.to_bytes();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).with_context(|| format!("not JSON: {}", String::from_utf8_lossy(&bytes)))?
    };
    Ok(HttpAnswer { status, body })
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A plain HTTP GET; returns (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let stream = TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = hyper::Request::get(path).header("host", addr.to_string()).body(Empty::<Bytes>::new())?;
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// A signed HS256 token for the test key with `claims` (add `exp` yourself, or use [`agent_token`]).
pub fn token(claims: &Value) -> String {
    token_with(claims, TEST_SECRET)
}

/// A signed HS256 token with another secret.
pub fn token_with(claims: &Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("encode jwt")
}

/// A valid agent token for `user_id`, expiring in an hour.
pub fn agent_token(user_id: Value) -> String {
    token(&serde_json::json!({"user_id": user_id, "exp": jsonwebtoken::get_current_timestamp() + 3600}))
}

/// The answer to a WebSocket handshake that was not accepted.
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    pub body: String,
}

/// A real WebSocket client (fastwebsockets over hyper).
pub struct Client {
    ws: WebSocket<TokioIo<Upgraded>>,
    /// `Sec-WebSocket-Protocol` the server selected, if any.
    pub protocol: Option<String>,
}

/// How a read ended.
#[derive(Debug, PartialEq)]
pub enum Incoming {
    Text(String),
    Binary(Vec<u8>),
    Closed(u16, String),
}

impl Client {
    /// Connect to `url` (`ws://host:port/path?query`) with extra request headers.
    pub async fn connect_with(url: &str, headers: &[(&str, &str)]) -> Result<std::result::Result<Client, Refused>> {
        let uri: hyper::Uri = url.parse()?;
        let host = uri.host().ok_or_else(|| anyhow!("no host"))?.to_string();
        let port = uri.port_u16().unwrap_or(80);
        let stream = TcpStream::connect((host.as_str(), port)).await?;
        stream.set_nodelay(true)?;
        Client::handshake_over(stream, url, headers).await
    }

    /// The WebSocket handshake for `url` (`ws://` or `wss://host:port/path?query`; only host,
    /// port and path are used) over a connection the caller opened, e.g. a TLS stream.
    pub async fn handshake_over<S>(
        stream: S,
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<std::result::Result<Client, Refused>>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let uri: hyper::Uri = url.parse()?;
        let host = uri.host().ok_or_else(|| anyhow!("no host"))?.to_string();
        let port = uri.port_u16().unwrap_or(80);
        let mut req = hyper::Request::builder()
            .method("GET")
            .uri(uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"))
            .header("Host", format!("{host}:{port}"))
            .header("Upgrade", "websocket")
            .header("Connection", "upgrade")
            .header("Sec-WebSocket-Key", fastwebsockets::handshake::generate_key())
            .header("Sec-WebSocket-Version", "13");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Empty::<Bytes>::new())?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn.with_upgrades());
        let resp = sender.send_request(req).await?;
        if resp.status() != hyper::StatusCode::SWITCHING_PROTOCOLS {
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await?.to_bytes();
            return Ok(Err(Refused { status, body: String::from_utf8_lossy(&body).into_owned() }));
        }
        let protocol = resp.headers().get("sec-websocket-protocol").and_then(|v| v.to_str().ok()).map(str::to_string);
        let upgraded = hyper::upgrade::on(resp).await?;
        let mut ws = WebSocket::after_handshake(TokioIo::new(upgraded), Role::Client);
        ws.set_auto_close(true);
        ws.set_auto_pong(true);
        Ok(Ok(Client { ws, protocol }))
    }

    /// Connect and require the handshake to succeed.
    pub async fn connect(url: &str) -> Result<Client> {
        Client::connect_with(url, &[]).await?.map_err(|r| anyhow!("handshake refused: {} {}", r.status, r.body))
    }

    /// The underlying WebSocket (e.g. to split it into a reader and a writer).
    pub fn into_websocket(self) -> WebSocket<TokioIo<Upgraded>> {
        self.ws
    }

    pub async fn send_text(&mut self, text: &str) -> Result<()> {
        self.ws.write_frame(Frame::text(Payload::Borrowed(text.as_bytes()))).await?;
        Ok(())
    }

    pub async fn send_json(&mut self, v: &Value) -> Result<()> {
        self.send_text(&v.to_string()).await
    }

    pub async fn send_binary(&mut self, data: &[u8]) -> Result<()> {
        self.ws.write_frame(Frame::binary(Payload::Borrowed(data))).await?;
        Ok(())
    }

    /// Send a close frame with `code`.
    pub async fn close(&mut self, code: u16) -> Result<()> {
        self.ws.write_frame(Frame::close(code, b"")).await?;
        Ok(())
    }

    /// Next message or close, within `within`.
    pub async fn recv_within(&mut self, within: Duration) -> Result<Incoming> {
        let read = async {
            loop {
                let frame = self.ws.read_frame().await?;
                return Ok::<_, anyhow::Error>(match frame.opcode {
                    OpCode::Text => Incoming::Text(String::from_utf8(frame.payload.to_vec())?),
                    OpCode::Binary => Incoming::Binary(frame.payload.to_vec()),
                    OpCode::Close => {
                        let p = frame.payload.to_vec();
                        let code = if p.len() >= 2 { u16::from_be_bytes([p[0], p[1]]) } else { 1005 };
                        Incoming::Closed(code, String::from_utf8_lossy(p.get(2..).unwrap_or(&[])).into_owned())
                    }
                    _ => continue,
                });
            }
        };
        tokio::time::timeout(within, read).await.map_err(|_| anyhow!("nothing received within {within:?}"))?
    }

    /// Next text message as JSON (within [`PATIENCE`]); a close or binary frame is an error.
    pub async fn recv_json(&mut self) -> Result<Value> {
        match self.recv_within(PATIENCE).await? {
            Incoming::Text(t) => serde_json::from_str(&t).with_context(|| format!("not JSON: {t}")),
            other => bail!("expected a text message, got {other:?}"),
        }
    }

    /// Next text message (within [`PATIENCE`]).
    pub async fn recv_text(&mut self) -> Result<String> {
        match self.recv_within(PATIENCE).await? {
            Incoming::Text(t) => Ok(t),
            other => bail!("expected a text message, got {other:?}"),
        }
    }

    /// Expect the server to close the connection; returns (code, reason).
    pub async fn recv_close(&mut self) -> Result<(u16, String)> {
        match self.recv_within(PATIENCE).await? {
            Incoming::Closed(code, reason) => Ok((code, reason)),
            other => bail!("expected a close, got {other:?}"),
        }
    }

    /// Assert nothing arrives for `d`.
    pub async fn expect_silence(&mut self, d: Duration) -> Result<()> {
        match self.recv_within(d).await {
            Err(_) => Ok(()),
            Ok(m) => bail!("expected silence, got {m:?}"),
        }
    }
}

/// Define `sqlite::<case>` and `postgres::<case>` tests for each `async fn <case>(db: Db)` in
/// the calling file.
#[macro_export]
macro_rules! on_both_backends {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() { super::$case($crate::Db::Sqlite).await })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() { super::$case($crate::Db::Postgres).await })*
        }
    };
}
