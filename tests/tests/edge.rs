//! The edge under attack: every limit and timeout of `[listeners.<name>]` reproduced with the
//! attack it stops, against the real daemon over raw TCP (docs/operating.md lists them).
//!
//! Memory is measured as the daemon's resident set (`VmRSS`) before and after an attack; the
//! bounds asserted are far below what the attack cost before the limit existed (noted per test)
//! and far above allocator noise.

use anyhow::{Context, Result, bail};
use gatewayd_e2e::{Daemon, DaemonOptions, PATIENCE, metric};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A client frame: masked (unless `unmasked`), `fin`, `opcode`, `payload`.
fn frame(fin: bool, opcode: u8, payload: &[u8], unmasked: bool) -> Vec<u8> {
    let mut f = vec![(u8::from(fin) << 7) | opcode];
    let m = if unmasked { 0 } else { 0x80 };
    match payload.len() {
        n @ 0..=125 => f.push(m | n as u8),
        n @ 126..=65535 => {
            f.push(m | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(m | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if unmasked {
        f.extend_from_slice(payload);
    } else {
        let key = [0x12, 0x34, 0x56, 0x78];
        f.extend_from_slice(&key);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    }
    f
}

/// Open a TCP connection from `source` (a loopback address) to `addr`.
async fn connect_from(source: &str, addr: SocketAddr) -> Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(format!("{source}:0").parse()?)?;
    Ok(tokio::time::timeout(Duration::from_secs(10), socket.connect(addr)).await.context("connect")??)
}

/// A WebSocket handshake on a raw TCP stream; returns the stream right after the 101.
async fn upgrade(mut tcp: TcpStream, addr: SocketAddr, path: &str, extra_headers: &str) -> Result<TcpStream> {
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra_headers}\r\n"
    );
    tcp.write_all(request.as_bytes()).await?;
    let head = read_head(&mut tcp).await?;
    if !head.starts_with("HTTP/1.1 101") {
        bail!("handshake refused: {head}");
    }
    Ok(tcp)
}

/// Read an HTTP response head (up to the blank line), byte by byte so nothing after it is lost.
async fn read_head(tcp: &mut TcpStream) -> Result<String> {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(20), tcp.read(&mut b)).await.context("response head")??;
        if n == 0 {
            bail!("connection closed after {:?}", String::from_utf8_lossy(&head));
        }
        head.push(b[0]);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

/// A server frame: (opcode, payload).
async fn read_frame(tcp: &mut TcpStream) -> Result<(u8, Vec<u8>)> {
    let mut h = [0u8; 2];
    tcp.read_exact(&mut h).await?;
    let len = match h[1] & 0x7f {
        126 => u64::from(tcp.read_u16().await?),
        127 => tcp.read_u64().await?,
        n => u64::from(n),
    };
    assert_eq!(h[1] & 0x80, 0, "server frames are not masked");
    let mut payload = vec![0; len as usize];
    tcp.read_exact(&mut payload).await?;
    Ok((h[0] & 0x0f, payload))
}

/// Read frames until the server's close frame; returns its code.
async fn read_close(tcp: &mut TcpStream) -> Result<u16> {
    let wait = async {
        loop {
            match read_frame(tcp).await? {
                (8, p) if p.len() >= 2 => return Ok(u16::from_be_bytes([p[0], p[1]])),
                (8, _) => return Ok(1005),
                _ => continue,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), wait).await.context("no close frame")?
}

/// Wait (bounded) until the server closes `tcp`; returns how long it took.
async fn until_closed(tcp: &mut TcpStream, within: Duration) -> Result<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(within.saturating_sub(start.elapsed()), tcp.read(&mut buf)).await {
            Err(_) => bail!("still open after {within:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(start.elapsed()),
            Ok(Ok(_)) => continue,
        }
    }
}

/// The daemon's resident set, bytes.
fn rss(d: &Daemon) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", d.pid())).expect("daemon status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS");
    kb * 1024
}

async fn daemon(main_listener: &str) -> Daemon {
    Daemon::start(DaemonOptions { main_listener: main_listener.into(), ..Default::default() }).await.unwrap()
}

const MIB: u64 = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_sent_in_continuation_frames_is_refused_with_1009_once_it_crosses_the_limit() {
    // Before the frame guard, one socket sending 60 KB continuation frames grew the daemon from
    // 78 MB to 1.2 GB in 5 s: the 64 KiB limit was checked per frame.
    let d = daemon("").await; // max_message_bytes = 16384
    let before = rss(&d);
    let mut ws = upgrade(TcpStream::connect(d.addr).await.unwrap(), d.addr, "/ws/faults/", "").await.unwrap();
    let chunk = vec![b'a'; 15_000];
    ws.write_all(&frame(false, 1, &chunk, false)).await.unwrap();
    let mut sent = 1;
    // Keep flooding until the daemon stops reading (at most 30 MB).
    while sent < 2_000 {
        match tokio::time::timeout(Duration::from_secs(5), ws.write_all(&frame(false, 0, &chunk, false))).await {
            Ok(Ok(())) => sent += 1,
            _ => break,
        }
    }
    assert_eq!(read_close(&mut ws).await.unwrap(), 1009);
    let grown = rss(&d).saturating_sub(before);
    assert!(grown < 16 * MIB, "daemon grew {grown} bytes after {sent} frames");
    assert!(metric(&d, "gatewayd_edge_closed_total{reason=\"message_too_big\"}").await >= 1.0);
    // The daemon goes on serving.
    let mut c = gatewayd_e2e::Client::connect(&d.ws_url("/ws/faults/")).await.unwrap();
    c.send_text("hello").await.unwrap();
    assert_eq!(c.recv_text().await.unwrap(), "echo:hello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmasked_client_frames_and_overlong_close_reasons_are_closed_with_1002() {
    let d = daemon("").await;
    let mut ws = upgrade(TcpStream::connect(d.addr).await.unwrap(), d.addr, "/ws/faults/", "").await.unwrap();
    ws.write_all(&frame(true, 1, b"count", false)).await.unwrap();
    assert_eq!(read_frame(&mut ws).await.unwrap(), (1, b"count:1".to_vec()));
    ws.write_all(&frame(true, 1, b"count", true)).await.unwrap();
    assert_eq!(read_close(&mut ws).await.unwrap(), 1002);

    // Autobahn 7.3.6: a close frame with a 124-byte reason (payload 126 > 125).
    let mut ws = upgrade(TcpStream::connect(d.addr).await.unwrap(), d.addr, "/ws/faults/", "").await.unwrap();
    let mut payload = 1000u16.to_be_bytes().to_vec();
    payload.extend(std::iter::repeat_n(b'r', 124));
    ws.write_all(&frame(true, 8, &payload, false)).await.unwrap();
    assert_eq!(read_close(&mut ws).await.unwrap(), 1002);
    assert!(metric(&d, "gatewayd_edge_closed_total{reason=\"protocol\"}").await >= 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_and_idle_keep_alive_connections_are_dropped_after_the_header_timeout() {
    let d = daemon("header_timeout_ms = 1000").await;
    // Half a request line, then nothing (slowloris).
    let mut slow = TcpStream::connect(d.addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    // A keep-alive connection that answered one request and then stays idle.
    let mut idle = TcpStream::connect(d.addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    assert!(read_head(&mut idle).await.unwrap().starts_with("HTTP/1.1 200"));
    // A connection that never sends a byte.
    let mut silent = TcpStream::connect(d.addr).await.unwrap();
    for (name, tcp) in [("slow", &mut slow), ("idle", &mut idle), ("silent", &mut silent)] {
        // Dropped after ~1 s; the bound only guards against "never".
        until_closed(tcp, Duration::from_secs(20)).await.unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    assert!(metric(&d, "gatewayd_edge_closed_total{reason=\"header_timeout\"}").await >= 2.0);
}

/// The rooms REST API, also routed on the main listener (whose limits the test sets).
const ROOMS_ON_MAIN: &str = r#"
[[routes]]
listener = "main"
path = "/api/v1"
prefix = true
kind = "http"
plugin = "rooms"
auth = "optional"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_declared_too_large_is_refused_at_once_and_a_stalled_body_gets_408() {
    let d = Daemon::start(DaemonOptions {
        main_listener: "body_timeout_ms = 1000\nmax_body_bytes = 65536".into(),
        extra_toml: ROOMS_ON_MAIN.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    // 100 MB declared: 413 before a byte of the body is read (it never comes).
    let mut big = TcpStream::connect(d.addr).await.unwrap();
    big.write_all(b"POST /api/v1/rooms HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000000\r\n\r\n{")
        .await
        .unwrap();
    let head = read_head(&mut big).await.unwrap();
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");

    // A body under the limit that stalls half-way: 408 with a JSON error, then the connection
    // is closed (its unread rest makes it unusable).
    let mut stalled = TcpStream::connect(d.addr).await.unwrap();
    stalled
        .write_all(b"POST /api/v1/rooms HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"name\":")
        .await
        .unwrap();
    let head = read_head(&mut stalled).await.unwrap();
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    let mut body = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), stalled.read_to_string(&mut body)).await;
    assert!(body.contains("\"error\":\"body_timeout\""), "{body}");
    assert!(metric(&d, "gatewayd_edge_closed_total{reason=\"body_timeout\"}").await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_websocket_is_pinged_then_closed_with_1001_and_one_that_answers_stays() {
    let d = daemon("idle_timeout_ms = 1000").await;
    let mut silent = upgrade(TcpStream::connect(d.addr).await.unwrap(), d.addr, "/ws/faults/", "").await.unwrap();
    // The raw client never answers: first a ping, then the close.
    let (opcode, _) = tokio::time::timeout(Duration::from_secs(20), read_frame(&mut silent)).await.unwrap().unwrap();
    assert_eq!(opcode, 9, "a ping first");
    assert_eq!(read_close(&mut silent).await.unwrap(), 1001);
    assert!(metric(&d, "gatewayd_edge_closed_total{reason=\"idle\"}").await >= 1.0);

    // A client that answers pings (as browsers do) stays connected across many idle timeouts.
    let d = daemon("idle_timeout_ms = 2000").await;
    let mut c = gatewayd_e2e::Client::connect(&d.ws_url("/ws/faults/")).await.unwrap();
    // recv_within reads (and so answers pings) for the whole window; nothing else arrives.
    let got = c.recv_within(Duration::from_secs(7)).await;
    assert!(got.is_err(), "only pings, answered by the client: {got:?}");
    c.send_text("count").await.unwrap();
    assert_eq!(c.recv_text().await.unwrap(), "count:1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_never_read_are_dropped_when_their_queue_holds_send_queue_bytes() {
    // Before the byte bound, each such client held up to send_queue_frames (1,024) frames: with
    // 15 KB replies, 15 MB each; five of them 75 MB.
    let d = daemon("send_queue_bytes = 65536").await;
    let before = rss(&d);
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let ws = upgrade(TcpStream::connect(d.addr).await.unwrap(), d.addr, "/ws/faults/", "").await.unwrap();
        tasks.push(tokio::spawn(async move {
            let mut ws = ws;
            let message = frame(true, 1, &[b'x'; 15_000], false);
            // Write and never read, until the daemon stops reading too (at most 1,500 x 15 KB).
            for _ in 0..1_500 {
                match tokio::time::timeout(Duration::from_secs(5), ws.write_all(&message)).await {
                    Ok(Ok(())) => {}
                    _ => break,
                }
            }
            ws
        }));
    }
    let mut sockets = Vec::new();
    for t in tasks {
        sockets.push(t.await.unwrap());
    }
    let grown = rss(&d).saturating_sub(before);
    assert!(grown < 40 * MIB, "daemon grew {grown} bytes");
    assert!(metric(&d, "gatewayd_edge_closed_total{reason=\"slow_consumer\"}").await >= 5.0);
    // Each of them, when it finally reads, finds its replies and then close 1008, unless the
    // kernel reset the socket first (the daemon closed it with the client's frames unread).
    for mut ws in sockets {
        match read_close(&mut ws).await {
            Ok(code) => assert_eq!(code, 1008),
            Err(e) => assert!(e.to_string().contains("eof") || e.to_string().contains("reset"), "{e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_per_address_and_listener_caps_are_refused_with_503() {
    let d = daemon("max_connections = 30\nmax_connections_per_ip = 10\nheader_timeout_ms = 60000").await;
    // The harness's readiness probe was a connection too: wait until the daemon has seen it
    // close, so the counts below start from zero.
    let open = "gatewayd_edge_open_connections{listener=\"main\"}";
    let start = Instant::now();
    while metric(&d, open).await > 0.0 {
        assert!(start.elapsed() < PATIENCE, "the readiness probe's connection never closed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut held = Vec::new();
    for _ in 0..10 {
        held.push(connect_from("127.0.0.1", d.addr).await.unwrap());
    }
    // The eleventh from the same address is refused at once, with a JSON 503.
    let mut refused = connect_from("127.0.0.1", d.addr).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(20), refused.read_to_string(&mut answer)).await.unwrap().unwrap();
    assert!(answer.starts_with("HTTP/1.1 503") && answer.contains("over_capacity"), "{answer}");
    // Another address is served.
    let mut other = connect_from("127.0.0.2", d.addr).await.unwrap();
    other.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    assert!(read_head(&mut other).await.unwrap().starts_with("HTTP/1.1 200"));
    held.push(other);
    // Fill the listener (30) from other addresses; the next one is refused whatever its address.
    for i in 0..19 {
        held.push(connect_from(&format!("127.0.0.{}", 3 + i % 3), d.addr).await.unwrap());
    }
    let mut full = connect_from("127.0.0.9", d.addr).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(20), full.read_to_string(&mut answer)).await.unwrap().unwrap();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(metric(&d, "gatewayd_edge_refused_total{listener=\"main\",reason=\"address\"}").await >= 1.0);
    assert!(metric(&d, "gatewayd_edge_refused_total{listener=\"main\",reason=\"listener\"}").await >= 1.0);
    // Closing connections frees their places (the daemon notices the close on its next read).
    held.truncate(0);
    let start = Instant::now();
    loop {
        let mut c = connect_from("127.0.0.1", d.addr).await.unwrap();
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        if read_head(&mut c).await.map(|h| h.starts_with("HTTP/1.1 200")).unwrap_or(false) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "places never freed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_the_forwarded_client_is_capped_not_the_proxy() {
    let d = daemon("max_connections_per_ip = 2\ntrusted_proxies = [\"127.0.0.1/32\"]").await;
    let via = |client: &str| format!("X-Forwarded-For: {client}\r\n");
    let mut sockets = Vec::new();
    for _ in 0..2 {
        let tcp = TcpStream::connect(d.addr).await.unwrap();
        sockets.push(upgrade(tcp, d.addr, "/ws/faults/", &via("198.51.100.7")).await.unwrap());
    }
    // A third socket for the same client: 429 with a JSON body.
    let tcp = TcpStream::connect(d.addr).await.unwrap();
    let err = upgrade(tcp, d.addr, "/ws/faults/", &via("198.51.100.7")).await.unwrap_err().to_string();
    assert!(err.contains("429"), "{err}");
    // Another client through the same proxy, and a client forging the header left of it.
    let tcp = TcpStream::connect(d.addr).await.unwrap();
    sockets.push(upgrade(tcp, d.addr, "/ws/faults/", &via("198.51.100.8")).await.unwrap());
    let tcp = TcpStream::connect(d.addr).await.unwrap();
    let err = upgrade(tcp, d.addr, "/ws/faults/", &via("10.9.9.9, 198.51.100.7")).await.unwrap_err().to_string();
    assert!(err.contains("429"), "the right-most untrusted hop counts: {err}");
    // From an untrusted peer the header is ignored: 127.0.0.2 is capped by its own address.
    for _ in 0..2 {
        let tcp = connect_from("127.0.0.2", d.addr).await.unwrap();
        sockets.push(upgrade(tcp, d.addr, "/ws/faults/", &via("198.51.100.99")).await.unwrap());
    }
    let mut third = connect_from("127.0.0.2", d.addr).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(20), third.read_to_string(&mut answer)).await.unwrap().unwrap();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_descriptors_exhausted_by_idle_sockets_the_admin_answers_and_new_clients_get_in_after_the_timeout() {
    // Before: 20,000 idle TCP connections took every descriptor; accept failed with EMFILE and
    // nothing answered, /healthz included. Here the daemon has 512 descriptors: its client
    // budget is 512 - 128 reserved.
    let d = Daemon::start(DaemonOptions {
        nofile_limit: Some(512),
        main_listener: "header_timeout_ms = 3000".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let before = rss(&d);
    let mut idle = Vec::new();
    for i in 0..1_000 {
        // Spread over addresses so the per-address cap is not what stops them.
        if let Ok(tcp) = connect_from(&format!("127.0.1.{}", 1 + i % 200), d.addr).await {
            idle.push(tcp);
        }
    }
    // The admin listener answers while the budget is used up.
    let start = Instant::now();
    let (status, _) = tokio::time::timeout(Duration::from_secs(20), d.admin_get("/healthz")).await.unwrap().unwrap();
    assert_eq!(status, 200);
    let admin_latency = start.elapsed();
    assert!(metric(&d, "gatewayd_edge_refused_total{listener=\"main\",reason=\"process\"}").await >= 1.0);
    // A fresh signaling client gets in once the idle sockets have timed out (header timeout).
    let start = Instant::now();
    let connected = loop {
        match gatewayd_e2e::Client::connect(&d.ws_url("/ws/signaling/?guest_id=2b1b2a9e-4a0a-4e1a-95d6-a6e4b9d9d1b2&business_id=8c3d5e71-5d14-4f7b-a6f9-2c90b3c5b8e1")).await {
            Ok(c) => break c,
            Err(_) if start.elapsed() < Duration::from_secs(60) => tokio::time::sleep(Duration::from_millis(250)).await,
            Err(e) => panic!("no signaling connection within 60 s: {e}"),
        }
    };
    drop(connected);
    eprintln!(
        "descriptor exhaustion: {} sockets opened, admin /healthz in {admin_latency:?}, fresh signaling client after {:?}, RSS {} -> {} KiB",
        idle.len(),
        start.elapsed(),
        before / 1024,
        rss(&d) / 1024
    );
    assert_eq!(metric(&d, "gatewayd_edge_accept_errors_total{listener=\"main\",kind=\"descriptors\"}").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_accept_runs_out_of_descriptors_the_loop_survives_logs_once_and_recovers() {
    // No reserve: client connections can take every descriptor, so accept() fails with EMFILE.
    let mut d = Daemon::start(DaemonOptions {
        nofile_limit: Some(256),
        daemon_extra: "reserved_descriptors = 0".into(),
        main_listener: "header_timeout_ms = 2000".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut idle = Vec::new();
    for i in 0..600 {
        if let Ok(tcp) = connect_from(&format!("127.0.2.{}", 1 + i % 100), d.addr).await {
            idle.push(tcp);
        }
    }
    // The idle sockets time out; the daemon serves again.
    let start = Instant::now();
    loop {
        let ok = async {
            let mut c = TcpStream::connect(d.addr).await?;
            c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await?;
            anyhow::Ok(read_head(&mut c).await?.starts_with("HTTP/1.1 200"))
        };
        if tokio::time::timeout(Duration::from_secs(5), ok).await.ok().and_then(Result::ok) == Some(true) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "never served again");
    }
    drop(idle);
    assert!(d.is_running(), "the daemon survived");
    let logs = d.logs();
    let logged = logs.iter().filter(|l| l.contains("out of file descriptors")).count();
    let recovered = logs.iter().filter(|l| l.contains("descriptors available again")).count();
    let errors = metric(&d, "gatewayd_edge_accept_errors_total{listener=\"main\",kind=\"descriptors\"}").await;
    eprintln!("EMFILE: {errors} failed accepts, logged {logged} times, recovered {recovered} times");
    assert!(logged >= 1 && errors >= 1.0, "the shortage is logged and counted");
    assert!(logged <= recovered + 1, "logged once per episode: {logged} logs, {recovered} recoveries");
}
