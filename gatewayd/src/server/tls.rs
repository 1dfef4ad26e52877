//! TLS termination for a listener (`[listeners.<name>.tls]`): rustls with the ring provider,
//! TLS 1.2 and 1.3, ALPN `http/1.1`.
//!
//! A listener's certificate lives in an `Arc<ServerConfig>` behind a lock. Each handshake takes
//! the config current when it starts; a reload (SIGHUP, or a change of the certificate or key
//! file) swaps in a new one for the handshakes after it. Open connections keep the session
//! they negotiated, so a reload drops nothing. A reload that cannot load the files (missing,
//! unparsable, key not matching the certificate) logs an error and keeps the old certificate.

use crate::config::{ConfigError, TlsConfig};
use parking_lot::RwLock;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::io::{self, Read};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// How long a client has to complete the TLS handshake; one that stalls is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest certificate or key file read, in bytes.
const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// A server-side TLS stream over a listener's TCP connection.
pub type TlsStream = tokio_rustls::server::TlsStream<Transport>;

/// A listener's TLS state: the rustls config built from its current certificate and key.
pub struct Tls {
    /// Listener name, for errors and logs.
    listener: String,
    current: RwLock<Arc<ServerConfig>>,
}

impl Tls {
    /// Load the certificate chain and key named by `files` (start-up). Errors name the key at
    /// fault, e.g. `listeners.main.tls.key_file: ...`.
    pub fn load(listener: &str, files: &TlsConfig) -> Result<Tls, ConfigError> {
        let config = server_config(listener, files)?;
        Ok(Tls { listener: listener.to_string(), current: RwLock::new(Arc::new(config)) })
    }

    /// Read the files again (reload, also when their paths are unchanged). New handshakes use
    /// the new certificate; open connections are untouched. On failure the error is logged
    /// and the current certificate stays. Returns whether the certificate was replaced.
    pub fn reload(&self, files: &TlsConfig) -> bool {
        match server_config(&self.listener, files) {
            Ok(config) => {
                *self.current.write() = Arc::new(config);
                tracing::info!(listener = %self.listener, cert = %files.cert_file.display(), "TLS certificate reloaded");
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "TLS certificate not reloaded; the current certificate stays");
                false
            }
        }
    }

    /// An acceptor for one handshake, with the current certificate.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current.read().clone())
    }
}

/// Complete the server side of a TLS handshake on `tcp` within [`HANDSHAKE_TIMEOUT`].
///
/// Errors: the client's handshake failed (e.g. it spoke plain HTTP, or does not trust the
/// certificate), the connection closed, or the timeout passed (`TimedOut`).
pub async fn handshake(acceptor: tokio_rustls::TlsAcceptor, tcp: TcpStream) -> io::Result<TlsStream> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(Transport(Some(tcp)))).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out")),
    }
}

/// Check that the TLS files of every listener load (`gatewayd check`).
pub fn check(config: &crate::config::Config) -> Result<(), ConfigError> {
    for (name, l) in &config.listeners {
        if let Some(files) = &l.tls {
            server_config(name, files)?;
        }
    }
    Ok(())
}

fn server_config(listener: &str, files: &TlsConfig) -> Result<ServerConfig, ConfigError> {
    let key_path = |key: &str| format!("listeners.{listener}.tls.{key}");
    let err = |key: &str, message: String| ConfigError { path: key_path(key), message };
    let cannot_read = |key: &str, path: &Path, e: io::Error| err(key, format!("cannot read {}: {e}", path.display()));
    let pem = read_pem(&files.cert_file).map_err(|e| cannot_read("cert_file", &files.cert_file, e))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err("cert_file", format!("{}: {e}", files.cert_file.display())))?;
    if certs.is_empty() {
        return Err(err("cert_file", format!("{}: no CERTIFICATE in the PEM file", files.cert_file.display())));
    }
    let pem = read_pem(&files.key_file).map_err(|e| cannot_read("key_file", &files.key_file, e))?;
    let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        let e = match e {
            rustls::pki_types::pem::Error::NoItemsFound => "no private key (PKCS#8, RSA or EC PEM section)".into(),
            e => e.to_string(),
        };
        err("key_file", format!("{}: {e}", files.key_file.display()))
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError { path: format!("listeners.{listener}.tls"), message: e.to_string() })?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| ConfigError {
            path: format!("listeners.{listener}.tls"),
            message: format!("certificate and key do not go together: {e}"),
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The whole file; one larger than [`MAX_PEM_BYTES`] is an `InvalidData` error.
fn read_pem(path: &Path) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)?.take(MAX_PEM_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        let message = format!("larger than {MAX_PEM_BYTES} bytes");
        return Err(io::Error::new(io::ErrorKind::InvalidData, message));
    }
    Ok(bytes)
}

/// The TCP connection under a TLS session. Unlike a bare `TcpStream` inside tokio-rustls'
/// stream, it can move to another runtime's I/O driver after the handshake (a call moves to
/// the media runtime): [`Transport::take_socket`] on the old runtime, [`Transport::attach`] on
/// the new one. While detached, I/O fails with `NotConnected`.
pub struct Transport(Option<TcpStream>);

impl Transport {
    /// Deregister the socket from this runtime's I/O driver and hand it out.
    pub fn take_socket(&mut self) -> io::Result<std::net::TcpStream> {
        self.0.take().ok_or_else(not_connected)?.into_std()
    }

    /// Register `socket` with the I/O driver of the runtime this is called on.
    pub fn attach(&mut self, socket: std::net::TcpStream) -> io::Result<()> {
        self.0 = Some(TcpStream::from_std(socket)?);
        Ok(())
    }

    fn tcp(&mut self) -> io::Result<Pin<&mut TcpStream>> {
        self.0.as_mut().map(Pin::new).ok_or_else(not_connected)
    }
}

fn not_connected() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "socket is moving between runtimes")
}

impl AsyncRead for Transport {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().tcp() {
            Ok(tcp) => tcp.poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut().tcp() {
            Ok(tcp) => tcp.poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().tcp() {
            Ok(tcp) => tcp.poll_write_vectored(cx, bufs),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().tcp() {
            Ok(tcp) => tcp.poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().tcp() {
            Ok(tcp) => tcp.poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory with a self-signed certificate (`cert.pem`, `key.pem`) and a second key.
    struct Dir(std::path::PathBuf);

    impl Dir {
        fn new() -> Dir {
            let dir = std::env::temp_dir().join(format!("gatewayd-tls-unit-{}", uuid::Uuid::new_v4().simple()));
            std::fs::create_dir_all(&dir).unwrap();
            let rcgen::CertifiedKey { cert, signing_key } =
                rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
            std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
            std::fs::write(dir.join("key.pem"), signing_key.serialize_pem()).unwrap();
            std::fs::write(dir.join("other-key.pem"), rcgen::KeyPair::generate().unwrap().serialize_pem()).unwrap();
            Dir(dir)
        }

        fn files(&self, cert: &str, key: &str) -> TlsConfig {
            TlsConfig { cert_file: self.0.join(cert), key_file: self.0.join(key) }
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn load_error(files: &TlsConfig) -> String {
        let Err(e) = Tls::load("main", files) else { panic!("load must fail") };
        e.to_string()
    }

    #[test]
    fn loads_a_certificate_with_alpn_http1() {
        let dir = Dir::new();
        let tls = Tls::load("main", &dir.files("cert.pem", "key.pem")).unwrap();
        assert_eq!(tls.acceptor().config().alpn_protocols, vec![b"http/1.1".to_vec()]);
    }

    #[test]
    fn errors_name_the_key_at_fault() {
        let dir = Dir::new();
        std::fs::write(dir.0.join("junk.pem"), "junk").unwrap();
        let e = load_error(&dir.files("missing.pem", "key.pem"));
        assert!(e.starts_with("listeners.main.tls.cert_file: cannot read "), "{e}");
        let e = load_error(&dir.files("junk.pem", "key.pem"));
        assert!(e.starts_with("listeners.main.tls.cert_file: ") && e.contains("no CERTIFICATE"), "{e}");
        let e = load_error(&dir.files("cert.pem", "cert.pem"));
        assert!(e.starts_with("listeners.main.tls.key_file: ") && e.contains("no private key"), "{e}");
        let e = load_error(&dir.files("cert.pem", "other-key.pem"));
        assert!(e.starts_with("listeners.main.tls: certificate and key do not go together"), "{e}");
        std::fs::write(dir.0.join("huge.pem"), vec![b'-'; MAX_PEM_BYTES as usize + 1]).unwrap();
        let e = load_error(&dir.files("huge.pem", "key.pem"));
        assert!(
            e.starts_with("listeners.main.tls.cert_file: cannot read ") && e.ends_with("larger than 1048576 bytes"),
            "{e}"
        );
    }

    #[test]
    fn a_failed_reload_keeps_the_certificate() {
        let dir = Dir::new();
        let tls = Tls::load("main", &dir.files("cert.pem", "key.pem")).unwrap();
        let before = tls.acceptor().config().clone();
        assert!(!tls.reload(&dir.files("cert.pem", "other-key.pem")));
        assert!(Arc::ptr_eq(&before, tls.acceptor().config()), "unchanged after a failed reload");
        assert!(tls.reload(&dir.files("cert.pem", "key.pem")));
        assert!(!Arc::ptr_eq(&before, tls.acceptor().config()), "replaced after a good reload");
    }
}
