//! TLS for outbound connections: rustls with the ring provider, trusting the platform's roots
//! (`rustls-native-certs`) plus the optional `[network] extra_ca_file`.

use super::OutboundError;
use crate::config::ConfigError;
use rustls::ClientConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use tokio::net::TcpStream;

/// Largest `extra_ca_file` read, in bytes.
pub const MAX_CA_FILE_BYTES: u64 = 1024 * 1024;

/// The client config every provider shares: platform roots (when `platform_roots`) plus the
/// certificates of `extra_ca_file`; TLS 1.2 and 1.3, ALPN `http/1.1`.
///
/// Errors name `network.extra_ca_file`: unreadable, larger than [`MAX_CA_FILE_BYTES`], not PEM,
/// no certificate in it. Platform roots that fail to load are logged and skipped (a machine
/// without a CA bundle then trusts only the extra file).
pub fn client_config(platform_roots: bool, extra_ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, ConfigError> {
    let mut roots = rustls::RootCertStore::empty();
    if platform_roots {
        let found = rustls_native_certs::load_native_certs();
        for e in &found.errors {
            tracing::warn!(error = %e, "platform CA certificates: some could not be loaded");
        }
        let (added, ignored) = roots.add_parsable_certificates(found.certs);
        if added == 0 {
            tracing::warn!(ignored, "no platform CA certificates; outbound TLS trusts only [network] extra_ca_file");
        }
    }
    if let Some(path) = extra_ca_file {
        for cert in extra_roots(path)? {
            roots.add(cert).map_err(|e| ca_error(format!("{}: {e}", path.display())))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError { path: "network".into(), message: e.to_string() })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The certificates of a PEM file (`gatewayd check` calls this too).
pub fn extra_roots(path: &Path) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let mut pem = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_CA_FILE_BYTES + 1).read_to_end(&mut pem))
        .map_err(|e| ca_error(format!("cannot read {}: {e}", path.display())))?;
    if pem.len() as u64 > MAX_CA_FILE_BYTES {
        return Err(ca_error(format!("{}: larger than {MAX_CA_FILE_BYTES} bytes", path.display())));
    }
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ca_error(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(ca_error(format!("{}: no CERTIFICATE in the PEM file", path.display())));
    }
    Ok(certs)
}

fn ca_error(message: String) -> ConfigError {
    ConfigError { path: "network.extra_ca_file".into(), message }
}

/// The TLS handshake on `tcp` for `host` (SNI for a name; an IP literal is checked against the
/// certificate's IP addresses and sends no SNI). Not timed here: the caller's connect deadline
/// covers it.
pub(super) async fn handshake(
    config: Arc<ClientConfig>,
    host: &url::Host<String>,
    tcp: TcpStream,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, OutboundError> {
    let name = match host {
        url::Host::Domain(d) => ServerName::try_from(d.clone()),
        url::Host::Ipv4(ip) => Ok(ServerName::IpAddress(std::net::IpAddr::V4(*ip).into())),
        url::Host::Ipv6(ip) => Ok(ServerName::IpAddress(std::net::IpAddr::V6(*ip).into())),
    }
    .map_err(|e| OutboundError::Tls { host: host.to_string(), message: e.to_string() })?;
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| OutboundError::Tls { host: host.to_string(), message: e.to_string() })
}
