//! `Outbound` against real loopback vendors: a TLS server (rcgen CA and leaf for 127.0.0.1 and
//! localhost) speaking WebSocket (fastwebsockets through a hyper upgrade) and chunked HTTP, a
//! silent listener, and a raw HTTP server that watches its connection close.

use super::*;
use crate::config::Capabilities;
use bytes::Bytes;
use fastwebsockets::{Frame, OpCode, Payload};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::Incoming;
use hyper::{Request, Response};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// Failure bound for anything that should happen at once (the machine is shared and busy).
const WITHIN: Duration = Duration::from_secs(30);
/// A timeout under test: short, since the tests wait for it to pass.
const SHORT_MS: u64 = 300;

async fn within<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(WITHIN, f).await.expect("no answer within the failure bound")
}

/// A test certificate authority, its PEM in a file, and a server config for 127.0.0.1 and
/// localhost signed by it.
struct Ca {
    file: PathBuf,
    server: Arc<rustls::ServerConfig>,
}

impl Ca {
    fn new() -> Ca {
        let mut params = CertificateParams::new(Vec::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, "gatewayd outbound test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        let issuer = Issuer::new(params, key);

        let mut leaf = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        leaf.distinguished_name.push(DnType::CommonName, "vendor");
        leaf.use_authority_key_identifier_extension = true;
        let leaf_key = KeyPair::generate().unwrap();
        let cert = leaf.signed_by(&leaf_key, &issuer).unwrap().pem();
        let certs = CertificateDer::pem_slice_iter(cert.as_bytes()).collect::<Result<Vec<_>, _>>().unwrap();
        let key = PrivateKeyDer::from_pem_slice(leaf_key.serialize_pem().as_bytes()).unwrap();
        let mut server =
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(certs, key)
                .unwrap();
        server.alpn_protocols = vec![b"http/1.1".to_vec()];

        let file = std::env::temp_dir().join(format!("gatewayd-net-ca-{}.pem", uuid::Uuid::new_v4().simple()));
        std::fs::write(&file, pem).unwrap();
        Ca { file, server: Arc::new(server) }
    }

    /// A client config trusting only this CA.
    fn client(&self) -> Arc<rustls::ClientConfig> {
        tls::client_config(false, Some(&self.file)).unwrap()
    }
}

impl Drop for Ca {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.file);
    }
}

/// A request the vendor received.
#[derive(Debug)]
struct Seen {
    /// Path and query.
    target: String,
    headers: hyper::HeaderMap,
    body: Bytes,
}

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// The fake vendor: TLS on 127.0.0.1, every request reported on `seen`.
struct Vendor {
    port: u16,
    seen: mpsc::UnboundedReceiver<Seen>,
}

async fn vendor(ca: &Ca) -> Vendor {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, seen) = mpsc::unbounded_channel();
    let acceptor = tokio_rustls::TlsAcceptor::from(ca.server.clone());
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let service = hyper::service::service_fn(move |req| handle(req, tx.clone()));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    Vendor { port, seen }
}

fn chunks(parts: Vec<Bytes>, then_stall: bool) -> Body {
    let frames = futures_util::stream::iter(parts.into_iter().map(|b| Ok(hyper::body::Frame::data(b))));
    if then_stall {
        StreamBody::new(futures_util::StreamExt::chain(frames, futures_util::stream::pending())).boxed_unsync()
    } else {
        StreamBody::new(frames).boxed_unsync()
    }
}

async fn handle(mut req: Request<Incoming>, seen: mpsc::UnboundedSender<Seen>) -> Result<Response<Body>, Infallible> {
    let target = req.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default();
    let headers = req.headers().clone();
    let path = req.uri().path().to_string();
    if path == "/ws" {
        let _ = seen.send(Seen { target, headers: headers.clone(), body: Bytes::new() });
        let (mut response, upgrade) = fastwebsockets::upgrade::upgrade(&mut req).unwrap();
        let offered = headers.get("sec-websocket-protocol").and_then(|v| v.to_str().ok()).unwrap_or("");
        if offered.split(',').any(|p| p.trim() == "vendor.v1") {
            response.headers_mut().insert("sec-websocket-protocol", "vendor.v1".parse().unwrap());
        }
        tokio::spawn(async move {
            let mut ws = upgrade.await.unwrap();
            while let Ok(frame) = ws.read_frame().await {
                match frame.opcode {
                    OpCode::Text if &frame.payload[..] == b"fragments" => {
                        ws.write_frame(Frame::new(false, OpCode::Text, None, Payload::Borrowed(b"hello ")))
                            .await
                            .unwrap();
                        ws.write_frame(Frame::new(true, OpCode::Continuation, None, Payload::Borrowed(b"world")))
                            .await
                            .unwrap();
                    }
                    OpCode::Text | OpCode::Binary => ws.write_frame(frame).await.unwrap(),
                    OpCode::Close => break,
                    _ => {}
                }
            }
        });
        return Ok(response.map(|b| b.boxed_unsync()));
    }
    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let _ = seen.send(Seen { target, headers, body });
    let response = match path.as_str() {
        "/ws401" => Response::builder()
            .status(401)
            .body(Full::from(r#"{"err_msg":"Invalid credentials: test-key"}"#).boxed_unsync()),
        "/stream" => Response::builder().body(chunks(vec!["one".into(), "two".into(), "three".into()], false)),
        "/stall" => Response::builder().body(chunks(vec!["first".into()], true)),
        "/big" => Response::builder().body(chunks(vec![Bytes::from(vec![b'x'; 1000]); 3], false)),
        _ => Response::builder().status(404).body(Empty::new().boxed_unsync()),
    };
    Ok(response.unwrap())
}

/// A resolver that counts lookups and answers `answer`.
#[derive(Default)]
struct CountingResolver {
    calls: AtomicUsize,
    answer: Vec<IpAddr>,
}

impl Resolve for CountingResolver {
    fn resolve<'a>(
        &'a self,
        _host: &'a str,
        port: u16,
    ) -> futures_util::future::BoxFuture<'a, std::io::Result<Vec<SocketAddr>>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let found = self.answer.iter().map(|ip| SocketAddr::new(*ip, port)).collect();
        Box::pin(async move { Ok(found) })
    }
}

/// An `Outbound` for `connect`, secret `api_key = test-key`, short timeouts, `tls`, and the
/// counting resolver `resolver`.
fn outbound(
    connect: &[String],
    tls: Arc<rustls::ClientConfig>,
    resolver: &Arc<CountingResolver>,
    tweak: impl FnOnce(&mut Capabilities),
) -> Outbound {
    let mut caps = Capabilities {
        connect: connect.to_vec(),
        secrets: [("api_key", "test-key")].into_iter().collect(),
        connect_timeout_ms: 10_000,
        first_byte_timeout_ms: 10_000,
        idle_timeout_ms: 10_000,
        ..Capabilities::default()
    };
    tweak(&mut caps);
    Outbound::new("stt-test", &caps, tls).unwrap().with_resolver(resolver.clone())
}

fn ws_plan(url: String) -> WsPlan {
    WsPlan { url, headers: vec![Header::secret("Authorization", "api_key", "Token {}")], subprotocols: vec![] }
}

fn get(url: String) -> HttpPlan {
    HttpPlan { method: "GET".into(), url, headers: vec![], body: vec![] }
}

#[tokio::test]
async fn websocket_over_tls_carries_the_secret_header_and_messages() {
    let ca = Ca::new();
    let mut v = vendor(&ca).await;
    let resolver = Arc::new(CountingResolver::default());
    let connect = [format!("127.0.0.1:{}", v.port), format!("localhost:{}", v.port)];
    let out = outbound(&connect, ca.client(), &resolver, |_| {});

    let mut plan = ws_plan(format!("wss://127.0.0.1:{}/ws?model=nova-3&encoding=mulaw", v.port));
    plan.subprotocols = vec!["other".into(), "vendor.v1".into()];
    plan.headers.push(Header::literal("x-request-id", "r1"));
    let mut ws = within(out.connect_ws(plan)).await.unwrap();
    assert_eq!(ws.subprotocol(), Some("vendor.v1"));
    let seen = within(v.seen.recv()).await.unwrap();
    assert_eq!(seen.target, "/ws?model=nova-3&encoding=mulaw");
    assert_eq!(seen.headers["authorization"], "Token test-key");
    assert_eq!(seen.headers["x-request-id"], "r1");
    assert_eq!(seen.headers["host"], format!("127.0.0.1:{}", v.port).as_str());
    assert_eq!(out.open_streams(), 1);

    ws.send_text("hello").await.unwrap();
    assert_eq!(within(ws.recv()).await.unwrap(), WsMessage::Text("hello".into()));
    ws.send_binary(&[1, 2, 3]).await.unwrap();
    assert_eq!(within(ws.recv()).await.unwrap(), WsMessage::Binary(Bytes::from_static(&[1, 2, 3])));
    ws.send_text("fragments").await.unwrap();
    assert_eq!(within(ws.recv()).await.unwrap(), WsMessage::Text("hello world".into()));
    ws.close(1000, "done").await.unwrap();
    assert_eq!(within(ws.recv()).await.unwrap(), WsMessage::Close { code: Some(1000), reason: "done".into() });
    assert_eq!(ws.recv().await.unwrap_err().code(), "closed");
    assert_eq!(ws.send_text("late").await.unwrap_err().code(), "closed");
    drop(ws);
    assert_eq!(out.open_streams(), 0);

    // `localhost` goes to loopback without a lookup, and the certificate's DNS name matches.
    let mut ws = within(out.connect_ws(ws_plan(format!("wss://localhost:{}/ws", v.port)))).await.unwrap();
    assert_eq!(ws.subprotocol(), None);
    ws.send_text("again").await.unwrap();
    assert_eq!(within(ws.recv()).await.unwrap(), WsMessage::Text("again".into()));
    assert_eq!(resolver.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn streamed_http_body_arrives_in_chunks_with_the_request_body_and_secret() {
    let ca = Ca::new();
    let mut v = vendor(&ca).await;
    let resolver = Arc::new(CountingResolver::default());
    let out = outbound(&[format!("127.0.0.1:{}", v.port)], ca.client(), &resolver, |_| {});
    let plan = HttpPlan {
        method: "POST".into(),
        url: format!("https://127.0.0.1:{}/stream?output_format=ulaw_8000", v.port),
        headers: vec![
            Header::secret("xi-api-key", "api_key", "{}"),
            Header::literal("content-type", "application/json"),
        ],
        body: br#"{"text":"hello"}"#.to_vec(),
    };
    let mut response = within(out.request(plan)).await.unwrap();
    assert_eq!(response.status, 200);
    let mut body = Vec::new();
    while let Some(chunk) = within(response.body.next_chunk()).await {
        body.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(body, b"onetwothree");
    assert_eq!(response.body.received(), 11);
    let seen = within(v.seen.recv()).await.unwrap();
    assert_eq!(seen.target, "/stream?output_format=ulaw_8000");
    assert_eq!(seen.headers["xi-api-key"], "test-key");
    assert_eq!(seen.headers["content-length"], "16");
    assert_eq!(&seen.body[..], br#"{"text":"hello"}"#);

    // 4xx as an error: status and the vendor's message.
    let response = within(out.request(get(format!("https://127.0.0.1:{}/ws401", v.port)))).await.unwrap();
    let e = within(response.error_for_status()).await.unwrap_err();
    assert_eq!(e.to_string(), r#"the vendor answered 401: {"err_msg":"Invalid credentials: <redacted>"}"#);
}

#[tokio::test]
async fn refused_host_is_never_looked_up() {
    let resolver = Arc::new(CountingResolver { answer: vec!["8.8.8.8".parse().unwrap()], ..Default::default() });
    let tls = tls::client_config(false, None).unwrap();
    let out = outbound(&["api.vendor.test:443".into()], tls, &resolver, |_| {});
    for (url, host) in [
        ("wss://evil.test/ws", "evil.test:443"),
        ("wss://api.vendor.test:8443/ws", "api.vendor.test:8443"),
        ("ws://api.vendor.test/ws", "api.vendor.test:80"),
        ("wss://127.0.0.1/ws", "127.0.0.1:443"),
    ] {
        let e = within(out.connect_ws(ws_plan(url.into()))).await.unwrap_err();
        assert_eq!(e.to_string(), format!("{host} is not in the plugin's `connect` allowlist"), "{url}");
    }
    let e = within(out.request(get("https://evil.test/speech".into()))).await.unwrap_err();
    assert_eq!(e.code(), "not_allowed");
    let e = within(out.request(get("https://user:pw@api.vendor.test/".into()))).await.unwrap_err();
    assert_eq!(e.code(), "bad_plan");
    assert_eq!(resolver.calls.load(Ordering::SeqCst), 0);
    assert_eq!(out.open_streams(), 0);
}

#[tokio::test]
async fn name_resolving_to_private_addresses_is_refused_after_the_lookup() {
    let ca = Ca::new();
    let mut v = vendor(&ca).await;
    let answer = vec!["127.0.0.1".parse().unwrap(), "10.0.0.7".parse().unwrap(), "fd00::1".parse().unwrap()];
    let resolver = Arc::new(CountingResolver { answer, ..Default::default() });
    let out = outbound(&[format!("vendor.test:{}", v.port)], ca.client(), &resolver, |_| {});
    let e = within(out.connect_ws(ws_plan(format!("wss://vendor.test:{}/ws", v.port)))).await.unwrap_err();
    assert_eq!(e.to_string(), "vendor.test resolved to 127.0.0.1, a private or reserved address");
    let e = within(out.request(get(format!("https://vendor.test:{}/stream", v.port)))).await.unwrap_err();
    assert_eq!(e.code(), "private_address");
    assert_eq!(resolver.calls.load(Ordering::SeqCst), 2);
    assert!(v.seen.try_recv().is_err(), "the vendor on loopback was reached");
}

#[tokio::test]
async fn untrusted_certificate_is_refused_without_the_extra_ca() {
    let ca = Ca::new();
    let v = vendor(&ca).await;
    let resolver = Arc::new(CountingResolver::default());
    let connect = [format!("127.0.0.1:{}", v.port)];
    let platform_only = outbound(&connect, tls::client_config(true, None).unwrap(), &resolver, |_| {});
    let e = within(platform_only.connect_ws(ws_plan(format!("wss://127.0.0.1:{}/ws", v.port)))).await.unwrap_err();
    assert_eq!(e.code(), "tls", "{e}");
    let e = within(platform_only.request(get(format!("https://127.0.0.1:{}/stream", v.port)))).await.unwrap_err();
    assert_eq!(e.code(), "tls", "{e}");
    assert_eq!(platform_only.open_streams(), 0);

    let with_ca = outbound(&connect, tls::client_config(true, Some(&ca.file)).unwrap(), &resolver, |_| {});
    within(with_ca.connect_ws(ws_plan(format!("wss://127.0.0.1:{}/ws", v.port)))).await.unwrap();
}

#[tokio::test]
async fn upgrade_refusal_reports_the_status_and_the_vendors_message() {
    let ca = Ca::new();
    let v = vendor(&ca).await;
    let resolver = Arc::new(CountingResolver::default());
    let out = outbound(&[format!("127.0.0.1:{}", v.port)], ca.client(), &resolver, |_| {});
    let e = within(out.connect_ws(ws_plan(format!("wss://127.0.0.1:{}/ws401", v.port)))).await.unwrap_err();
    let OutboundError::Status { status, body } = &e else { panic!("{e}") };
    assert_eq!((*status, body.as_str()), (401, r#"{"err_msg":"Invalid credentials: <redacted>"}"#));
    assert!(!e.to_string().contains("test-key"));
    assert_eq!(out.open_streams(), 0);
}

/// A listener that accepts and never says anything; it keeps the sockets open.
async fn silent_listener() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            held.push(tcp);
        }
    });
    port
}

#[tokio::test]
async fn silent_vendor_times_out_at_connect_and_first_byte() {
    let port = silent_listener().await;
    let resolver = Arc::new(CountingResolver::default());
    let tls = tls::client_config(false, None).unwrap();
    let out = outbound(&[format!("127.0.0.1:{port}")], tls, &resolver, |c| {
        c.connect_timeout_ms = SHORT_MS;
        c.first_byte_timeout_ms = SHORT_MS;
    });
    let connect = OutboundError::Timeout { phase: Phase::Connect, ms: SHORT_MS }.to_string();
    // TLS handshake never answered.
    let e = within(out.connect_ws(ws_plan(format!("wss://127.0.0.1:{port}/ws")))).await.unwrap_err();
    assert_eq!(e.to_string(), connect);
    // Upgrade request never answered.
    let e = within(out.connect_ws(ws_plan(format!("ws://127.0.0.1:{port}/ws")))).await.unwrap_err();
    assert_eq!(e.to_string(), connect);
    // HTTP request never answered.
    let e = within(out.request(get(format!("http://127.0.0.1:{port}/speech")))).await.unwrap_err();
    assert_eq!(e.to_string(), format!("first byte timed out after {SHORT_MS} ms"));
    assert_eq!(out.open_streams(), 0);
}

#[tokio::test]
async fn max_streams_refuses_at_once_and_frees_on_drop() {
    let ca = Ca::new();
    let v = vendor(&ca).await;
    let resolver = Arc::new(CountingResolver::default());
    let out = outbound(&[format!("127.0.0.1:{}", v.port)], ca.client(), &resolver, |c| c.max_streams = 2);
    let ws = within(out.connect_ws(ws_plan(format!("wss://127.0.0.1:{}/ws", v.port)))).await.unwrap();
    let stalled = within(out.request(get(format!("https://127.0.0.1:{}/stall", v.port)))).await.unwrap();
    assert_eq!(out.open_streams(), 2);
    let e = within(out.connect_ws(ws_plan(format!("wss://127.0.0.1:{}/ws", v.port)))).await.unwrap_err();
    assert_eq!(e.to_string(), "2 outbound streams are already open (max_streams)");
    let e = within(out.request(get(format!("https://127.0.0.1:{}/stream", v.port)))).await.unwrap_err();
    assert_eq!(e.code(), "too_many_streams");
    drop(ws);
    within(out.connect_ws(ws_plan(format!("wss://127.0.0.1:{}/ws", v.port)))).await.unwrap();
    drop(stalled);
    assert_eq!(out.open_streams(), 0);
}

#[tokio::test]
async fn idle_vendor_ends_the_body_and_the_byte_cap_holds() {
    let ca = Ca::new();
    let v = vendor(&ca).await;
    let resolver = Arc::new(CountingResolver::default());
    let out = outbound(&[format!("127.0.0.1:{}", v.port)], ca.client(), &resolver, |c| {
        c.idle_timeout_ms = SHORT_MS;
        c.max_response_bytes = 2500;
    });
    let mut response = within(out.request(get(format!("https://127.0.0.1:{}/stall", v.port)))).await.unwrap();
    assert_eq!(&within(response.body.next_chunk()).await.unwrap().unwrap()[..], b"first");
    let e = within(response.body.next_chunk()).await.unwrap().unwrap_err();
    assert_eq!(e.to_string(), format!("idle timed out after {SHORT_MS} ms"));
    assert!(response.body.next_chunk().await.is_none());
    drop(response);

    let response = within(out.request(get(format!("https://127.0.0.1:{}/big", v.port)))).await.unwrap();
    let chunks: Vec<_> = within(futures_util::StreamExt::collect::<Vec<_>>(response.body.into_stream())).await;
    let (last, ok) = chunks.split_last().unwrap();
    assert!(ok.iter().all(|c| c.is_ok()));
    assert_eq!(last.as_ref().unwrap_err().to_string(), "response body larger than 2500 bytes");
    assert_eq!(out.open_streams(), 0);
}

#[tokio::test]
async fn dropping_the_body_closes_the_connection_at_the_vendor() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (closed_tx, mut closed) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = tcp.read(&mut buf).await.unwrap();
            assert!(n > 0, "the client closed before its request");
            head.extend_from_slice(&buf[..n]);
        }
        tcp.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\naudio\r\n").await.unwrap();
        // Wait for the client to go away: end of stream or a reset.
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let _ = closed_tx.send(String::from_utf8_lossy(&head).into_owned());
    });
    let resolver = Arc::new(CountingResolver::default());
    let out = outbound(&[format!("127.0.0.1:{port}")], tls::client_config(false, None).unwrap(), &resolver, |_| {});
    let mut plan = get(format!("http://127.0.0.1:{port}/v1/audio/speech"));
    plan.headers = vec![Header::secret("authorization", "api_key", "Bearer {}")];
    let mut response = within(out.request(plan)).await.unwrap();
    assert_eq!(&within(response.body.next_chunk()).await.unwrap().unwrap()[..], b"audio");
    assert!(closed.try_recv().is_err(), "the connection closed before the body was dropped");
    drop(response);
    let head = within(closed).await.unwrap();
    assert!(head.starts_with("GET /v1/audio/speech HTTP/1.1\r\n"), "{head}");
    assert!(head.contains("\r\nauthorization: Bearer test-key\r\n"), "{head}");
    assert_eq!(out.open_streams(), 0);
}

/// A plain HTTP/1.1 vendor on 127.0.0.1 that counts its connections and answers each request
/// on a connection in turn: `/stall` with one chunk of a body that never ends, anything else
/// with `audio` (and `connection: close` for `/close`). With `hang_up`, a connection answers
/// one request and closes when the next one arrives, unanswered: the race of a vendor's idle
/// timeout with a client reusing the connection.
async fn keep_alive_vendor(hang_up: bool) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else { return };
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                for served in 0.. {
                    let mut chunk = [0u8; 4096];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tcp.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    buf.drain(..end);
                    if hang_up && served == 1 {
                        return;
                    }
                    let answer: &[u8] = if head.starts_with("GET /stall ") {
                        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\naudio\r\n"
                    } else if head.starts_with("GET /close ") {
                        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\naudio"
                    } else {
                        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\naudio"
                    };
                    if tcp.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, accepted)
}

/// Read `response`'s body to its end.
async fn read_all(mut response: HttpResponse) -> Vec<u8> {
    let mut body = Vec::new();
    while let Some(chunk) = within(response.body.next_chunk()).await {
        body.extend_from_slice(&chunk.unwrap());
    }
    body
}

#[tokio::test]
async fn a_body_read_to_its_end_leaves_its_connection_for_the_next_request() {
    let (port, accepted) = keep_alive_vendor(false).await;
    let resolver = Arc::new(CountingResolver::default());
    let out = outbound(&[format!("127.0.0.1:{port}")], tls::client_config(false, None).unwrap(), &resolver, |_| {});
    let url = |path: &str| format!("http://127.0.0.1:{port}{path}");
    for _ in 0..3 {
        assert_eq!(read_all(within(out.request(get(url("/speech")))).await.unwrap()).await, b"audio");
        assert_eq!(out.idle_connections(), 1);
        assert_eq!(out.open_streams(), 0, "an idle connection holds no stream slot");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "three requests on one connection");

    // A body dropped before its end closes its connection: the next request opens another.
    let mut stalled = within(out.request(get(url("/stall")))).await.unwrap();
    assert_eq!(out.idle_connections(), 0, "the stalled request took the idle connection");
    assert_eq!(&within(stalled.body.next_chunk()).await.unwrap().unwrap()[..], b"audio");
    drop(stalled);
    assert_eq!(read_all(within(out.request(get(url("/speech")))).await.unwrap()).await, b"audio");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);

    // `connection: close` from the vendor: not kept.
    assert_eq!(read_all(within(out.request(get(url("/close")))).await.unwrap()).await, b"audio");
    assert_eq!(out.idle_connections(), 0);
    assert_eq!(read_all(within(out.request(get(url("/speech")))).await.unwrap()).await, b"audio");
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_kept_connection_the_vendor_closed_is_replaced_without_an_error() {
    let (port, accepted) = keep_alive_vendor(true).await;
    let resolver = Arc::new(CountingResolver::default());
    let out = outbound(&[format!("127.0.0.1:{port}")], tls::client_config(false, None).unwrap(), &resolver, |_| {});
    let url = format!("http://127.0.0.1:{port}/speech");
    // Each kept connection is closed by the vendor as the next request arrives on it: that
    // request is sent again on a new connection, and every request succeeds.
    for i in 1..=5 {
        assert_eq!(read_all(within(out.request(get(url.clone()))).await.unwrap()).await, b"audio", "request {i}");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 5);
}
