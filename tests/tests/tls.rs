//! TLS listeners end to end: the real daemon with `[listeners.<name>.tls]`, certificates from a
//! test CA generated here (rcgen), and rustls clients that trust only that CA. `https://`
//! requests to `/healthz` and a plugin route, `wss://` messages, an IVR call over `wss://`, a
//! plain-HTTP client and a silent client on a TLS port, and certificate reloads (SIGHUP and
//! file change) that keep open connections and give new handshakes the new certificate.

use gatewayd_e2e::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::json;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Generous bound for anything that should happen at once (the machine is shared).
const WITHIN: Duration = Duration::from_secs(20);

/// A test certificate authority.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        Ca { pem, issuer: Issuer::new(params, key) }
    }

    /// A server certificate for `localhost` and 127.0.0.1: (certificate PEM, key PEM).
    fn leaf(&self) -> (String, String) {
        let mut params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, "gatewayd test server");
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().unwrap();
        (params.signed_by(&key, &self.issuer).unwrap().pem(), key.serialize_pem())
    }

    /// A client config trusting only this CA, offering ALPN `http/1.1`.
    fn client(&self) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(self.pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

/// A TLS connection to `addr` (server name `localhost`) trusting only `ca`.
async fn connect(addr: SocketAddr, ca: &Ca) -> anyhow::Result<Tls> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from("localhost").unwrap();
    Ok(tokio::time::timeout(WITHIN, ca.client().connect(name, tcp)).await??)
}

/// A `wss://` client on `path`.
async fn wss(addr: SocketAddr, path: &str, ca: &Ca) -> Client {
    let tls = connect(addr, ca).await.expect("TLS handshake");
    Client::handshake_over(tls, &format!("wss://{addr}{path}"), &[]).await.unwrap().expect("handshake accepted")
}

/// Certificate and key files a daemon's listener uses.
struct Files {
    _dir: tempdir::TempDir,
    cert: PathBuf,
    key: PathBuf,
    /// Hard links to the same two files from another directory: writing through them changes
    /// the files without an event in the watched directory (to test SIGHUP alone).
    cert_link: PathBuf,
    key_link: PathBuf,
}

impl Files {
    fn new(ca: &Ca) -> Files {
        let dir = tempdir::TempDir::new("gatewayd-tls");
        let (tls, hidden) = (dir.path().join("tls"), dir.path().join("hidden"));
        std::fs::create_dir_all(&tls).unwrap();
        std::fs::create_dir_all(&hidden).unwrap();
        let f = Files {
            cert: tls.join("cert.pem"),
            key: tls.join("key.pem"),
            cert_link: hidden.join("cert.pem"),
            key_link: hidden.join("key.pem"),
            _dir: dir,
        };
        f.write(ca, false);
        std::fs::hard_link(&f.cert, &f.cert_link).unwrap();
        std::fs::hard_link(&f.key, &f.key_link).unwrap();
        f
    }

    /// Write a new leaf of `ca` in place (through the hard links when `hidden`).
    fn write(&self, ca: &Ca, hidden: bool) {
        let (cert, key) = ca.leaf();
        let (cert_path, key_path) = if hidden { (&self.cert_link, &self.key_link) } else { (&self.cert, &self.key) };
        std::fs::write(cert_path, cert).unwrap();
        std::fs::write(key_path, key).unwrap();
    }

    /// The `[listeners.<listener>.tls]` table.
    fn table(&self, listener: &str) -> String {
        format!(
            "\n[listeners.{listener}.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            self.cert.display(),
            self.key.display()
        )
    }
}

/// A daemon whose main listener speaks TLS, with the rooms plugin's REST API also routed on it
/// (a plugin HTTP route over https).
async fn daemon(files: &Files) -> Daemon {
    let extra = format!(
        "{}\n[[routes]]\nlistener = \"main\"\npath = \"/api/v1\"\nprefix = true\nkind = \"http\"\nplugin = \"rooms\"\nauth = \"optional\"\n",
        files.table("main")
    );
    Daemon::start(DaemonOptions { extra_toml: extra, ..Default::default() }).await.expect("daemon starts")
}

async fn wait_for_log(d: &Daemon, text: &str) {
    let deadline = tokio::time::Instant::now() + WITHIN;
    while !d.logs().iter().any(|l| l.contains(text)) {
        assert!(tokio::time::Instant::now() < deadline, "no log line with {text:?}:\n{}", d.logs().join("\n"));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn sighup(d: &Daemon) {
    let status = std::process::Command::new("kill").args(["-HUP", &d.pid().to_string()]).status().unwrap();
    assert!(status.success());
}

async fn healthz(addr: SocketAddr, ca: &Ca) -> anyhow::Result<HttpAnswer> {
    http_request_over(connect(addr, ca).await?, &addr.to_string(), "GET", "/healthz", None, None).await
}

/// The handshake with a client trusting only `ca` fails because the server's certificate is
/// not from `ca`.
async fn assert_untrusted(addr: SocketAddr, ca: &Ca) {
    let Err(e) = connect(addr, ca).await else { panic!("a client trusting only the other CA must be refused") };
    let e = e.to_string();
    assert!(e.contains("invalid peer certificate"), "{e}");
}

/// An echo on the fault-test route: `text` in, `echo:text` out.
async fn assert_echo(c: &mut Client, text: &str) {
    c.send_text(text).await.unwrap();
    assert_eq!(c.recv_text().await.unwrap(), format!("echo:{text}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_and_wss_end_to_end() {
    let ca = Ca::new("gatewayd test CA");
    let files = Files::new(&ca);
    let d = daemon(&files).await;

    let tls = connect(d.addr, &ca).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]), "ALPN http/1.1");
    let r = http_request_over(tls, &d.addr.to_string(), "GET", "/healthz", None, None).await.unwrap();
    assert_eq!((r.status, r.body.clone()), (200, json!({"status": "ok"})));

    // A plugin HTTP route (rooms REST) over https: create a room, read it back (as user 900,
    // an agent of a business: rooms belong to one).
    d.cli(&["tenant", "add-business", "b-tls"]).unwrap();
    d.cli(&["tenant", "add-agent", "agent-900", "--user-id", "900"]).unwrap();
    d.cli(&["tenant", "add-membership", "--agent", "agent-900", "--business", "b-tls"]).unwrap();
    let token = agent_token(json!(900));
    let body = json!({"name": "tls room"});
    let host = d.addr.to_string();
    let tls = connect(d.addr, &ca).await.unwrap();
    let r = http_request_over(tls, &host, "POST", "/api/v1/rooms", Some(&token), Some(&body)).await.unwrap();
    assert_eq!(r.status, 201, "{:?}", r.body);
    let id = r.body["id"].as_str().expect("room id").to_string();
    let path = format!("/api/v1/rooms/{id}");
    let tls = connect(d.addr, &ca).await.unwrap();
    let r = http_request_over(tls, &host, "GET", &path, Some(&token), None).await.unwrap();
    assert_eq!((r.status, r.body["name"].as_str()), (200, Some("tls room")), "{:?}", r.body);

    // wss:// to the echo route, with messages spanning several TLS records.
    let mut c = wss(d.addr, "/ws/faults/", &ca).await;
    assert_echo(&mut c, "hello over tls").await;
    assert_echo(&mut c, &"x".repeat(15_000)).await;
    c.send_text("count").await.unwrap();
    assert_eq!(c.recv_text().await.unwrap(), "count:1");

    // wss:// to the signaling route: a guest is greeted, a ping gets a pong.
    let guest = "2b1b2a9e-4a0a-4e1a-95d6-a6e4b9d9d1b2";
    let mut s = wss(d.addr, &format!("/ws/signaling/?guest_id={guest}"), &ca).await;
    let hello = s.recv_json().await.unwrap();
    assert_eq!((hello["type"].as_str(), hello["guest_id"].as_str()), (Some("connection_established"), Some(guest)));
    s.send_json(&json!({"type": "ping"})).await.unwrap();
    assert_eq!(s.recv_json().await.unwrap(), json!({"type": "pong"}));
    c.close(1000).await.unwrap();
    assert_eq!(c.recv_close().await.unwrap().0, 1000);
    assert_tls_streams_detached(&d);
}

/// Upgraded TLS connections were taken out of hyper's wrapper (split into halves; a call moved
/// to the media runtime), not served through the generic fallback.
fn assert_tls_streams_detached(d: &Daemon) {
    let logs = d.logs().join("\n");
    assert!(!logs.contains("neither TCP nor TLS"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_and_stalled_handshakes_are_dropped_and_the_daemon_keeps_serving() {
    let ca = Ca::new("gatewayd test CA");
    let files = Files::new(&ca);
    let d = daemon(&files).await;

    // A client that never starts the handshake is dropped after the handshake timeout (10 s).
    let mut silent = TcpStream::connect(d.addr).await.unwrap();

    // Plain HTTP to the TLS port: an error for the client, at once (no hang).
    let plain = tokio::time::timeout(WITHIN, http_get(d.addr, "/healthz")).await.expect("plain HTTP does not hang");
    assert!(plain.is_err(), "plain HTTP must not get an answer: {plain:?}");
    // The same with raw bytes: the server ends the connection.
    let mut raw = TcpStream::connect(d.addr).await.unwrap();
    raw.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(WITHIN, raw.read_to_end(&mut buf)).await.expect("the server closes");
    assert!(read.is_err() || !buf.starts_with(b"HTTP/"), "no plaintext answer: {:?}", String::from_utf8_lossy(&buf));

    // Meanwhile TLS clients are served.
    assert_eq!(healthz(d.addr, &ca).await.unwrap().status, 200);
    let mut c = wss(d.addr, "/ws/faults/", &ca).await;
    assert_echo(&mut c, "still here").await;

    let mut byte = [0u8; 1];
    let end = tokio::time::timeout(Duration::from_secs(40), silent.read(&mut byte)).await;
    assert!(matches!(end, Ok(Ok(0)) | Ok(Err(_))), "the silent client is disconnected: {end:?}");
    assert_eq!(healthz(d.addr, &ca).await.unwrap().status, 200);
}

/// Shared by the two reload tests: `replace` installs a CA2 certificate and triggers a reload.
async fn reload_keeps_connections_and_swaps_the_certificate(sighup_only: bool) {
    let (ca1, ca2) = (Ca::new("gatewayd test CA 1"), Ca::new("gatewayd test CA 2"));
    let files = Files::new(&ca1);
    let d = daemon(&files).await;

    // Connections opened before the reload: a WebSocket and a keep-alive HTTP connection.
    let mut ws = wss(d.addr, "/ws/faults/", &ca1).await;
    assert_echo(&mut ws, "before").await;
    let (mut http, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(connect(d.addr, &ca1).await.unwrap()))
            .await
            .unwrap();
    tokio::spawn(conn);
    let get = || {
        hyper::Request::get("/healthz")
            .header("host", "localhost")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap()
    };
    assert_eq!(http.send_request(get()).await.unwrap().status(), 200);
    assert_untrusted(d.addr, &ca2).await;

    if sighup_only {
        // A bad key first: the reload fails and the current certificate stays.
        std::fs::write(&files.key_link, "not a key").unwrap();
        sighup(&d);
        wait_for_log(&d, "TLS certificate not reloaded").await;
        assert_eq!(healthz(d.addr, &ca1).await.unwrap().status, 200, "old certificate kept");
        assert_untrusted(d.addr, &ca2).await;

        files.write(&ca2, true);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(healthz(d.addr, &ca1).await.unwrap().status, 200, "nothing reloads before SIGHUP");
        sighup(&d);
        wait_for_log(&d, "TLS certificate reloaded").await;
        let logs = d.logs().join("\n");
        assert!(!logs.contains("file change: reloading"), "only SIGHUP reloaded:\n{logs}");
    } else {
        files.write(&ca2, false);
        let deadline = tokio::time::Instant::now() + WITHIN;
        while healthz(d.addr, &ca2).await.is_err() {
            assert!(tokio::time::Instant::now() < deadline, "no reload:\n{}", d.logs().join("\n"));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        wait_for_log(&d, "file change: reloading").await;
    }

    // New handshakes present the new certificate.
    assert_eq!(healthz(d.addr, &ca2).await.unwrap().status, 200);
    assert_untrusted(d.addr, &ca1).await;
    let mut fresh = wss(d.addr, "/ws/faults/", &ca2).await;
    assert_echo(&mut fresh, "after").await;
    // The connections from before keep working.
    assert_echo(&mut ws, "still open").await;
    assert_eq!(http.send_request(get()).await.unwrap().status(), 200);
    ws.send_text("count").await.unwrap();
    assert_eq!(ws.recv_text().await.unwrap(), "count:1", "same session as before the reload");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate_without_dropping_connections() {
    reload_keeps_connections_and_swaps_the_certificate(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_certificate_file_is_reloaded_without_dropping_connections() {
    reload_keeps_connections_and_swaps_the_certificate(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ivr_call_over_wss_answers_and_echoes_audio() {
    let ca = Ca::new("gatewayd test CA");
    let files = Files::new(&ca);
    let port = free_port();
    let extra = format!(
        r#"
[listeners.ivr]
address = "127.0.0.1:{port}"
max_message_bytes = 4096
{tls}
[[routes]]
listener = "ivr"
path = "/"
kind = "websocket"
plugin = "ivr"
auth = "none"
media = {{ codec = "l16", rate = 8000 }}

[plugins.ivr]
file = "{ivr}"
[plugins.ivr.config]
dtmf_delay_ms = 600000
"#,
        tls = files.table("ivr"),
        ivr = plugin_file("ivr").display(),
    );
    let d = Daemon::start(DaemonOptions { extra_toml: extra, ..Default::default() }).await.expect("daemon starts");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut c = wss(addr, "/", &ca).await;
    let call =
        json!({"event": "incoming_call", "callerId": "+15551230000", "didNumber": "+18005550100", "sessionId": "tls"});
    c.send_json(&call).await.unwrap();
    assert_eq!(c.recv_json().await.unwrap(), json!({"event": "answer"}));
    // 20 ms frames of L16 at 8 kHz (320 bytes) come back exactly, in order.
    let frames: Vec<Vec<u8>> = (0..25).map(|n| (0..320).map(|i| ((n * 31 + i * 7) % 251) as u8).collect()).collect();
    for f in &frames {
        c.send_binary(f).await.unwrap();
    }
    for (n, f) in frames.iter().enumerate() {
        match c.recv_within(Duration::from_secs(5)).await.unwrap() {
            Incoming::Binary(b) => assert_eq!(&b, f, "frame {n}"),
            other => panic!("expected audio, got {other:?}"),
        }
    }
    c.close(1000).await.unwrap();
    assert_tls_streams_detached(&d);
}
