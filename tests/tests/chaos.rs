//! Chaos (issue #14 item 5). A chat message is *acknowledged* when its sender received its
//! broadcast, which the chat plugin sends only after the insert committed. Under continuous
//! chat load:
//! - `kill -9` of the daemon loses no acknowledged message, and stores none twice (SQLite and
//!   PostgreSQL);
//! - a restart of a PostgreSQL server the test starts itself (own data directory, port and
//!   socket directory; never the machine's server) costs errors for a few seconds and no
//!   acknowledged write, and the daemon recovers on its own without crashing;
//! - a full disk under the media directory (a tmpfs the test mounts) answers uploads with a clear
//!   `507 storage_full` JSON error, leaves no partial file and no timeline entry without its
//!   file, and uploads work again once space is freed.
//!
//! Figures are printed (`cargo test ... -- --nocapture`) and kept in docs/reliability.md.

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use gatewayd_e2e::*;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const B1: &str = "c1000000-0000-4000-8000-000000000001";
const A1: &str = "ca100000-0000-4000-8000-000000000001"; // user 820: member of B1
/// Chat sessions under load; each has a visitor and an agent sending.
const SESSIONS: usize = 4;
/// How long anything the daemon must do may take on a loaded machine.
const PATIENCE: Duration = Duration::from_secs(60);

/// A daemon serving the chat plugin, with business B1 and its agent (user 820).
async fn chat_daemon(mut opts: DaemonOptions, media_dir: &Path) -> Daemon {
    opts.extra_toml = chat_toml(
        &media_dir.display().to_string(),
        262_144,
        &["image/png", "application/pdf"],
        "rate_per_sec = 100000.0\nrate_burst = 100000.0",
    );
    opts.auth_extra = format!("signing = {{ algorithm = \"HS256\", secret = \"{TEST_SECRET}\" }}");
    let d = Daemon::start(opts).await.expect("daemon starts");
    for c in [
        vec!["tenant", "add-business", B1, "--name", "Acme"],
        vec!["tenant", "add-agent", A1, "--user-id", "820"],
        vec!["tenant", "add-membership", "--agent", A1, "--business", B1],
    ] {
        d.cli(&c).expect("tenant command");
    }
    d
}

/// Start a chat session: (session_id, visitor token).
async fn start_session(d: &Daemon) -> (String, String) {
    let r = http_request(d.addr, "POST", "/chat/start-session/", None, Some(&json!({"business": B1})))
        .await
        .expect("start-session");
    assert_eq!(r.status, 200, "{}", r.body);
    let s = |k: &str| r.body["data"][k].as_str().unwrap_or_else(|| panic!("data.{k} in {}", r.body)).to_string();
    (s("session_id"), s("token"))
}

/// Join a session's socket with `Sec-WebSocket-Protocol: Bearer, <token>`.
async fn join(url: &str, token: &str) -> Result<Client> {
    let protocol = format!("Bearer, {token}");
    let mut c = Client::connect_with(url, &[("Sec-WebSocket-Protocol", protocol.as_str())])
        .await?
        .map_err(|r| anyhow!("refused: {} {}", r.status, r.body))?;
    match c.recv_within(PATIENCE).await? {
        Incoming::Text(t) if t.contains("connection_established") => Ok(c),
        other => bail!("expected connection_established, got {other:?}"),
    }
}

/// Every text message of a session's history, oldest first (agent token, all pages).
async fn history_texts(d: &Daemon, session_id: &str, agent: &str) -> Vec<String> {
    let mut texts = Vec::new();
    let mut after = 0;
    loop {
        let path = format!("/chat/history/{session_id}/?limit=500&after={after}");
        let r = http_request(d.addr, "GET", &path, Some(agent), None).await.expect("history");
        assert_eq!(r.status, 200, "{}", r.body);
        for e in r.body["data"].as_array().expect("data") {
            if e["type"] == "message" && e["data"]["type"] == "text" {
                texts.push(e["data"]["content"].as_str().expect("content").to_string());
            }
        }
        match r.body["next_after"].as_i64() {
            Some(n) => after = n,
            None => return texts,
        }
    }
}

/// A message its sender saw broadcast back (its content).
type Acked = String;

/// Counters shared by the senders of a [`Load`].
#[derive(Default)]
struct Counters {
    acked: AtomicU64,
    /// `error` answers (the store failed: the message was not broadcast).
    errors: AtomicU64,
    /// When the latest acknowledgement arrived.
    last_ack: std::sync::Mutex<Option<Instant>>,
    stop: AtomicBool,
}

/// Chat load: in every session, the visitor and the agent each send one message after another
/// on their own socket, each waiting for its own broadcast (the acknowledgement) or an error.
struct Load {
    counters: Arc<Counters>,
    senders: Vec<tokio::task::JoinHandle<(String, Vec<Acked>)>>,
}

impl Load {
    async fn start(d: &Daemon, sessions: &[(String, String)], agent: &str) -> Load {
        let counters = Arc::new(Counters::default());
        let mut senders = Vec::new();
        for (n, (sid, visitor)) in sessions.iter().enumerate() {
            let url = d.ws_url(&format!("/ws/visitor-chat/?session_id={sid}"));
            for (who, token) in [("v", visitor.as_str()), ("a", agent)] {
                let client = join(&url, token).await.expect("join");
                let (sid, tag, counters) = (sid.clone(), format!("s{n}{who}"), counters.clone());
                senders.push(tokio::spawn(async move { (sid, send_until_stopped(client, tag, counters).await) }));
            }
        }
        Load { counters, senders }
    }

    fn acked(&self) -> u64 {
        self.counters.acked.load(Ordering::Relaxed)
    }

    fn errors(&self) -> u64 {
        self.counters.errors.load(Ordering::Relaxed)
    }

    /// Wait until `n` messages in all were acknowledged.
    async fn wait_for_acks(&self, n: u64) {
        let started = Instant::now();
        while self.acked() < n {
            assert!(started.elapsed() < PATIENCE, "only {} of {n} messages acknowledged in {PATIENCE:?}", self.acked());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stop sending; the acknowledged messages, by session.
    async fn finish(self) -> HashMap<String, Vec<Acked>> {
        self.counters.stop.store(true, Ordering::Relaxed);
        let mut by_session: HashMap<String, Vec<Acked>> = HashMap::new();
        for s in self.senders {
            let (sid, acked) = s.await.expect("sender task");
            by_session.entry(sid).or_default().extend(acked);
        }
        by_session
    }
}

/// Send `<tag>-<i>` for i = 0, 1, ... until stopped or the connection ends.
async fn send_until_stopped(mut c: Client, tag: String, counters: Arc<Counters>) -> Vec<Acked> {
    let mut acked = Vec::new();
    for i in 0.. {
        if counters.stop.load(Ordering::Relaxed) {
            break;
        }
        let content = format!("{tag}-{i}");
        if c.send_json(&json!({"type": "text", "content": content})).await.is_err() {
            break;
        }
        loop {
            let v: Value = match c.recv_within(PATIENCE).await {
                Ok(Incoming::Text(t)) => serde_json::from_str(&t).expect("JSON from the daemon"),
                // The daemon is gone (killed) or closed the socket: this sender is done.
                _ => return acked,
            };
            match v["type"].as_str() {
                Some("text") if v["content"] == content.as_str() => {
                    let now = Instant::now();
                    acked.push(content);
                    *counters.last_ack.lock().unwrap() = Some(now);
                    counters.acked.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Some("error") => {
                    assert_eq!(v["code"], "internal_error", "{v}");
                    counters.errors.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    break;
                }
                // The other participant's broadcast.
                _ => {}
            }
        }
    }
    acked
}

/// Every acknowledged message is in its session's history exactly once, and nothing is stored
/// twice. Returns (acknowledged, stored) counts.
async fn assert_acked_stored_once(d: &Daemon, acked: &HashMap<String, Vec<Acked>>, agent: &str) -> (usize, usize) {
    let (mut n_acked, mut n_stored) = (0, 0);
    for (sid, messages) in acked {
        let stored = history_texts(d, sid, agent).await;
        let mut count: HashMap<&str, usize> = HashMap::new();
        for s in &stored {
            *count.entry(s.as_str()).or_default() += 1;
        }
        let twice: Vec<_> = count.iter().filter(|(_, n)| **n > 1).collect();
        assert!(twice.is_empty(), "session {sid}: stored more than once: {twice:?}");
        let lost: Vec<_> = messages.iter().filter(|m| !count.contains_key(m.as_str())).collect();
        assert!(lost.is_empty(), "session {sid}: acknowledged but not in the history: {lost:?}");
        n_acked += messages.len();
        n_stored += stored.len();
    }
    (n_acked, n_stored)
}

/// A new message on a fresh connection is acknowledged (the daemon serves again).
async fn assert_serves(d: &Daemon, session_id: &str, agent: &str, content: &str) {
    let url = d.ws_url(&format!("/ws/visitor-chat/?session_id={session_id}"));
    let mut c = join(&url, agent).await.expect("join after the fault");
    c.send_json(&json!({"type": "text", "content": content})).await.unwrap();
    loop {
        match c.recv_within(PATIENCE).await.expect("an answer") {
            Incoming::Text(t) if t.contains(content) => return,
            Incoming::Text(_) => {}
            other => panic!("expected the broadcast of {content}, got {other:?}"),
        }
    }
}

fn assert_no_panic(d: &Daemon) {
    let logs = d.logs();
    assert!(!logs.iter().any(|l| l.contains("panicked")), "the daemon panicked:\n{}", logs.join("\n"));
}

async fn kill_9_during_chat_load(db: Db) {
    let mut d = chat_daemon(DaemonOptions { db, ..DaemonOptions::default() }, Path::new("media")).await;
    let agent = agent_token(json!(820));
    let mut sessions = Vec::new();
    for _ in 0..SESSIONS {
        sessions.push(start_session(&d).await);
    }
    let load = Load::start(&d, &sessions, &agent).await;
    // Mid-load: the senders keep sending until the connections die with the process.
    load.wait_for_acks(200).await;
    let killed_at = load.acked();
    d.crash_and_restart().await.expect("restart after SIGKILL");
    let acked = load.finish().await;
    let (n_acked, n_stored) = assert_acked_stored_once(&d, &acked, &agent).await;
    println!(
        "{db:?}: SIGKILL after {killed_at} acknowledged; {n_acked} acknowledged in all, {n_stored} stored, none lost, none twice"
    );
    assert_serves(&d, &sessions[0].0, &agent, "after-the-crash").await;
    assert_no_panic(&d);
}

on_both_backends!(kill_9_during_chat_load);

/// A PostgreSQL server of the test's own: data directory, port and socket directory in a temp
/// directory; stopped and removed on drop, also when the test fails. As root, `initdb` and
/// `postgres` run as the `postgres` OS user (they refuse to run as root).
struct PgServer {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    as_postgres: bool,
}

impl PgServer {
    fn start() -> Result<PgServer> {
        let bin = pg_bin_dir()?;
        let dir = std::env::temp_dir().join(format!("gatewayd-chaos-pg-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir)?;
        let as_postgres = run(Command::new("id").arg("-u"))?.trim() == "0";
        let server = PgServer { dir, bin, port: free_port(), as_postgres };
        if as_postgres {
            run(Command::new("chown").args(["postgres:postgres"]).arg(&server.dir))?;
        }
        server.cmd(
            "initdb",
            &["-D", &server.data(), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C", "-N"],
        )?;
        server.start_server()?;
        Ok(server)
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Run `<bin>/<tool> args`, as the `postgres` user when we are root.
    fn cmd(&self, tool: &str, args: &[&str]) -> Result<String> {
        let tool = self.bin.join(tool);
        let mut c = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&tool);
            c
        } else {
            Command::new(&tool)
        };
        run(c.args(args).current_dir(&self.dir))
    }

    fn start_server(&self) -> Result<()> {
        let opts = format!("-p {} -k {} -c listen_addresses=127.0.0.1", self.port, self.dir.display());
        let log = self.dir.join("server.log").display().to_string();
        self.cmd("pg_ctl", &["-D", &self.data(), "-l", &log, "-o", &opts, "-w", "-t", "60", "start"]).map(|_| ())
    }

    /// Stop like a crash (`immediate`: no checkpoint; the next start recovers from the WAL).
    fn stop_server(&self) -> Result<()> {
        self.cmd("pg_ctl", &["-D", &self.data(), "-m", "immediate", "-w", "-t", "60", "stop"]).map(|_| ())
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = self.stop_server();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The newest `/usr/lib/postgresql/<version>/bin` with `initdb` (or `$GATEWAYD_TEST_PG_BIN`).
fn pg_bin_dir() -> Result<PathBuf> {
    if let Ok(p) = std::env::var("GATEWAYD_TEST_PG_BIN") {
        return Ok(PathBuf::from(p));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .context("PostgreSQL server binaries (/usr/lib/postgresql/<version>/bin) are required")?
        .filter_map(|e| e.ok())
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin)| bin.join("initdb").is_file())
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).ok_or_else(|| anyhow!("no /usr/lib/postgresql/<version>/bin/initdb"))
}

/// Run a command; its stdout, or an error with its output.
fn run(c: &mut Command) -> Result<String> {
    let out = c.output().with_context(|| format!("running {c:?}"))?;
    if !out.status.success() {
        bail!(
            "{c:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_during_chat_load() {
    let pg = PgServer::start().expect("a PostgreSQL server of the test's own");
    let opts = DaemonOptions { db: Db::Postgres, database_url: Some(pg.url()), ..DaemonOptions::default() };
    let mut d = chat_daemon(opts, Path::new("media")).await;
    let agent = agent_token(json!(820));
    let mut sessions = Vec::new();
    for _ in 0..SESSIONS {
        sessions.push(start_session(&d).await);
    }
    let load = Load::start(&d, &sessions, &agent).await;
    load.wait_for_acks(200).await;

    let (acked_before, errors_before) = (load.acked(), load.errors());
    pg.stop_server().expect("stopping the test's PostgreSQL server");
    let down_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    pg.start_server().expect("starting the test's PostgreSQL server again");
    let up_at = Instant::now();
    let acked_while_down = load.acked() - acked_before;

    // The daemon recovers on its own: acknowledgements resume within a generous bound.
    let recovery = loop {
        if let Some(at) = load.counters.last_ack.lock().unwrap().filter(|at| *at > up_at) {
            break at - up_at;
        }
        assert!(up_at.elapsed() < Duration::from_secs(30), "no message acknowledged within 30 s of the restart");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    load.wait_for_acks(load.acked() + 100).await;
    let errors = load.errors() - errors_before;
    let acked = load.finish().await;
    assert!(d.is_running(), "the daemon exited:\n{}", d.logs().join("\n"));
    assert_no_panic(&d);
    // No acknowledged write lost (before, during or after the outage), none stored twice.
    let (n_acked, n_stored) = assert_acked_stored_once(&d, &acked, &agent).await;
    assert_serves(&d, &sessions[0].0, &agent, "after-the-restart").await;
    println!(
        "PostgreSQL stopped (immediate) for {:?}: {acked_while_down} acknowledged meanwhile (already in flight), \
         {errors} error answers, first acknowledgement {recovery:?} after the server was back; \
         {n_acked} acknowledged in all, {n_stored} stored, none lost, none twice",
        up_at - down_at
    );
    drop(d);
    drop(pg);
}

/// A tmpfs of `size_kib` mounted on a fresh temp directory; unmounted and removed on drop.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(size_kib: u64) -> Result<Tmpfs> {
        let dir = std::env::temp_dir().join(format!("gatewayd-chaos-media-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir)?;
        let tmpfs = Tmpfs { dir };
        run(Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size_kib}k"), "tmpfs"]).arg(&tmpfs.dir))
            .context("mounting a small tmpfs for the media directory (needs root or CAP_SYS_ADMIN)")?;
        Ok(tmpfs)
    }

    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.dir)
            .expect("media dir")
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A PNG header followed by `len` bytes of `fill` (`infer` recognises image/png).
fn png(len: usize, fill: u8) -> Vec<u8> {
    let mut v = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x06\0\0\0\x1f\x15\xc4\x89".to_vec();
    v.resize(v.len() + len, fill);
    v
}

/// `POST /chat/upload-file/` with one `file` part; (status, JSON body).
async fn upload(d: &Daemon, token: &str, data: &[u8]) -> Result<(u16, Value)> {
    let boundary = "gatewaydchaosboundary0123456789";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\nContent-Type: image/png\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(data);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let stream = tokio::net::TcpStream::connect(d.addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = hyper::Request::post("/chat/upload-file/")
        .header("host", d.addr.to_string())
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", format!("multipart/form-data; boundary={boundary}"))
        .body(Full::new(Bytes::from(body)))?;
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await?.to_bytes();
    let body = serde_json::from_slice(&bytes)
        .with_context(|| format!("{status}: not JSON: {}", String::from_utf8_lossy(&bytes)))?;
    Ok((status, body))
}

/// The stored name of a media URL `http://chat.test/chat/media/<name>`.
fn stored_name(url: &str) -> String {
    url.rsplit('/').next().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_on_uploads() {
    // 1 MiB of file system, 640 KiB of it taken by other data: room for a few 60 KiB uploads.
    let media = Tmpfs::mount(1024).expect("a small file system for the media directory");
    let ballast = media.dir.join("ballast");
    std::fs::write(&ballast, vec![7u8; 640 * 1024]).unwrap();
    let d = chat_daemon(DaemonOptions::default(), &media.dir).await;
    let (sid, visitor) = start_session(&d).await;
    let agent = agent_token(json!(820));

    let mut stored = Vec::new();
    let full = loop {
        assert!(stored.len() < 40, "1 MiB never filled up: {} uploads stored", stored.len());
        let (status, body) = upload(&d, &visitor, &png(60 * 1024, stored.len() as u8)).await.expect("an HTTP answer");
        match status {
            200 => stored.push(stored_name(body["data"]["file"].as_str().expect("data.file"))),
            _ => break (status, body),
        }
    };
    println!("full after {} uploads of 60 KiB: {} {}", stored.len(), full.0, full.1);
    assert!(!stored.is_empty(), "no upload fitted");
    assert_eq!(full.0, 507, "{}", full.1);
    assert_eq!(full.1["error"], "storage_full", "{}", full.1);
    // More uploads while full: the same clear answer, and the daemon keeps serving.
    for i in 0..3 {
        let (status, body) = upload(&d, &visitor, &png(60 * 1024, 200 + i)).await.unwrap();
        assert_eq!((status, body["error"].as_str()), (507, Some("storage_full")), "{body}");
    }

    // Nothing half-written is left: the directory holds the ballast and the stored files only.
    let mut expected: Vec<String> = stored.iter().cloned().chain(["ballast".to_string()]).collect();
    expected.sort();
    assert_eq!(media.names(), expected, "no partial file in the media directory");
    // Every attachment in the history has its file, whole.
    let attachments = history_attachments(&d, &sid, &agent).await;
    assert_eq!(attachments.len(), stored.len(), "one timeline entry per stored upload: {attachments:?}");
    for (name, size) in &attachments {
        let on_disk = std::fs::metadata(media.dir.join(name)).map(|m| m.len());
        assert_eq!(on_disk.ok(), Some(*size), "{name}: the file of a timeline entry");
    }

    // Space freed: uploads work again, and the file is served back.
    std::fs::remove_file(&ballast).unwrap();
    let data = png(60 * 1024, 99);
    let (status, body) = upload(&d, &visitor, &data).await.unwrap();
    assert_eq!(status, 200, "{body}");
    let name = stored_name(body["data"]["file"].as_str().unwrap());
    assert_eq!(std::fs::read(media.dir.join(&name)).unwrap(), data);
    assert_eq!(history_attachments(&d, &sid, &agent).await.len(), stored.len() + 1);
    assert_no_panic(&d);
    drop(d);
}

/// (stored name, size) of every attachment in a session's history.
async fn history_attachments(d: &Daemon, session_id: &str, agent: &str) -> Vec<(String, u64)> {
    let r = http_request(d.addr, "GET", &format!("/chat/history/{session_id}/?limit=500"), Some(agent), None)
        .await
        .expect("history");
    assert_eq!(r.status, 200, "{}", r.body);
    r.body["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter(|e| e["type"] == "attachment")
        .map(|e| (stored_name(e["data"]["file"].as_str().unwrap()), e["data"]["size"].as_u64().unwrap()))
        .collect()
}
