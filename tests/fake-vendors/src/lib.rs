//! Loopback fake speech vendors for tests: each one a TLS server on 127.0.0.1 with a
//! certificate from a test CA made at start-up ([`TestCa`]; give the daemon its PEM as
//! `[network] extra_ca_file`), speaking the vendor's documented protocol (see
//! `shared/research/speech-and-twilio.md` section 3) and recording what it received.
//!
//! - [`deepgram::DeepgramFake`]: Deepgram live, `wss://.../v1/listen`.
//! - [`tts::TtsFake`]: ElevenLabs `POST /v1/text-to-speech/{voice}/stream` and OpenAI
//!   `POST /v1/audio/speech`, chunked audio at a 50 ms cadence.
//!
//! Every record is bounded ([`MAX_RECORDED_BYTES`], [`MAX_RECORDED_ITEMS`]). Tests wait on the
//! record with `wait_until` (a condition and a failure bound), never with sleeps.

pub mod deepgram;
pub mod tts;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The most audio bytes a fake records (16 MiB); beyond it bytes are counted, not kept.
pub const MAX_RECORDED_BYTES: usize = 16 << 20;
/// The most messages or requests a fake records.
pub const MAX_RECORDED_ITEMS: usize = 10_000;
/// How long `wait_until` waits before it panics (the machine may be busy).
pub const WAIT_LIMIT: Duration = Duration::from_secs(30);
/// The API key the fakes accept unless told otherwise.
pub const TEST_KEY: &str = "test-key";

/// A test certificate authority and a server certificate it signed for `127.0.0.1` and
/// `localhost`.
pub struct TestCa {
    /// The CA certificate, PEM (what a client trusts).
    pub ca_pem: String,
    /// A rustls server config with the leaf certificate, ALPN `http/1.1`.
    pub server: Arc<rustls::ServerConfig>,
}

impl TestCa {
    /// A fresh CA and leaf (ring provider).
    pub fn new() -> TestCa {
        let mut params = CertificateParams::new(Vec::new()).expect("CA params");
        params.distinguished_name.push(DnType::CommonName, "gatewayd fake vendors CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("CA key");
        let ca_pem = params.self_signed(&key).expect("CA certificate").pem();
        let issuer = Issuer::new(params, key);
        let mut leaf =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).expect("leaf params");
        leaf.distinguished_name.push(DnType::CommonName, "fake vendor");
        leaf.use_authority_key_identifier_extension = true;
        let leaf_key = KeyPair::generate().expect("leaf key");
        let cert = leaf.signed_by(&leaf_key, &issuer).expect("leaf certificate").pem();
        let certs = CertificateDer::pem_slice_iter(cert.as_bytes()).collect::<Result<Vec<_>, _>>().expect("leaf PEM");
        let key = PrivateKeyDer::from_pem_slice(leaf_key.serialize_pem().as_bytes()).expect("key PEM");
        let mut server =
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("TLS versions")
                .with_no_client_auth()
                .with_single_cert(certs, key)
                .expect("server certificate");
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        TestCa { ca_pem, server: Arc::new(server) }
    }
}

impl Default for TestCa {
    fn default() -> Self {
        TestCa::new()
    }
}

/// A record shared between a fake's connections and the test.
pub(crate) struct Shared<R> {
    tx: watch::Sender<R>,
}

impl<R: Clone> Shared<R> {
    pub(crate) fn new(record: R) -> Arc<Shared<R>> {
        Arc::new(Shared { tx: watch::Sender::new(record) })
    }

    pub(crate) fn update(&self, f: impl FnOnce(&mut R)) {
        self.tx.send_modify(f);
    }

    pub(crate) fn snapshot(&self) -> R {
        self.tx.borrow().clone()
    }

    /// Wait until `pred` holds of the record (at most [`WAIT_LIMIT`]); panics naming `what`.
    pub(crate) async fn wait_until(&self, what: &str, pred: impl Fn(&R) -> bool) -> R {
        let mut rx = self.tx.subscribe();
        match tokio::time::timeout(WAIT_LIMIT, rx.wait_for(|r| pred(r))).await {
            Ok(Ok(r)) => r.clone(),
            _ => panic!("fake vendor: {what} did not happen within {WAIT_LIMIT:?}"),
        }
    }
}

/// Serve `service` over TLS on `listener` until the task is aborted.
pub(crate) fn serve<F, Fut>(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    service: F,
) -> tokio::task::JoinHandle<()>
where
    F: Fn(std::net::SocketAddr, hyper::Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<hyper::Response<Body>, std::convert::Infallible>> + Send + 'static,
{
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, peer)) = listener.accept().await else { return };
            // A streaming vendor writes small pieces (a result, a 50 ms chunk): without this,
            // Nagle's algorithm holds each behind the peer's delayed ACK (up to 40 ms).
            let _ = tcp.set_nodelay(true);
            let (acceptor, service) = (acceptor.clone(), service.clone());
            tokio::spawn(async move {
                let Ok(Ok(tls)) = tokio::time::timeout(WAIT_LIMIT, acceptor.accept(tcp)).await else { return };
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(
                        hyper_util::rt::TokioIo::new(tls),
                        hyper::service::service_fn(move |req| service(peer, req)),
                    )
                    .with_upgrades()
                    .await;
            });
        }
    })
}

/// A body error (a scripted break of a response).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A response body.
pub type Body = http_body_util::combinators::BoxBody<bytes::Bytes, BoxError>;

/// An empty or fixed body as a [`Body`].
pub(crate) fn boxed<B>(body: B) -> Body
where
    B: hyper::body::Body<Data = bytes::Bytes, Error = std::convert::Infallible> + Send + Sync + 'static,
{
    use http_body_util::BodyExt;
    body.map_err(|never| match never {}).boxed()
}

/// A JSON response with `status`.
pub(crate) fn json(status: u16, value: serde_json::Value) -> hyper::Response<Body> {
    hyper::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(boxed(http_body_util::Full::from(value.to_string())))
        .expect("response")
}
