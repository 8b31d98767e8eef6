//! TLS towards gRPC backends: rustls with the upstream's CA, ALPN `h2`
//! (RFC 9113 §3.2: HTTP/2 over TLS is negotiated by ALPN; gRPC needs it).
//! The client config is built by [`client_config`], which the `jwt` policy
//! shares for fetching an `https://` JWKS, so both verify servers alike.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::config::UpstreamTls;

/// A verified-TLS connector for one upstream, built once per config snapshot.
#[derive(Clone)]
pub struct UpstreamTlsConnector {
    connector: TlsConnector,
    /// The configured `server_name`, else each target's host is used.
    server_name: Option<ServerName<'static>>,
}

impl std::fmt::Debug for UpstreamTlsConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTlsConnector").field("server_name", &self.server_name).finish_non_exhaustive()
    }
}

impl UpstreamTlsConnector {
    /// Loads the CA file (validation already checked it holds a certificate).
    pub fn new(tls: &UpstreamTls) -> Result<Self, std::io::Error> {
        let config = client_config(load_roots(&tls.ca)?, b"h2")?;
        let server_name = match &tls.server_name {
            Some(name) => Some(ServerName::try_from(name.clone()).map_err(std::io::Error::other)?),
            None => None,
        };
        Ok(Self { connector: TlsConnector::from(Arc::new(config)), server_name })
    }

    /// Runs the handshake on `stream` to the target whose host is `host`;
    /// fails unless the backend agreed to `h2`.
    pub async fn connect(&self, host: &str, stream: TcpStream) -> Result<TlsStream<TcpStream>, std::io::Error> {
        let name = match &self.server_name {
            Some(name) => name.clone(),
            None => ServerName::try_from(host.to_string()).map_err(std::io::Error::other)?,
        };
        let tls = self.connector.connect(name, stream).await?;
        if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
            return Err(std::io::Error::other("the backend did not negotiate h2 by ALPN"));
        }
        Ok(tls)
    }
}

/// The certificates of a PEM file as trust anchors; a file with none is an
/// error, so a wrong path or format never means "trust nothing, fail later".
pub fn load_roots(path: &Path) -> Result<rustls::RootCertStore, std::io::Error> {
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path).map_err(std::io::Error::other)?;
    for cert in certs {
        roots.add(cert.map_err(std::io::Error::other)?).map_err(std::io::Error::other)?;
    }
    if roots.is_empty() {
        return Err(std::io::Error::other("no PEM certificate in it"));
    }
    Ok(roots)
}

/// A verifying rustls client config (ring, TLS 1.2/1.3, no client
/// certificate) offering the single ALPN protocol `alpn`.
pub fn client_config(roots: rustls::RootCertStore, alpn: &[u8]) -> Result<rustls::ClientConfig, std::io::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(config)
}

/// How a gRPC upstream's connections are carried.
#[derive(Debug, Clone)]
pub enum Transport {
    /// h2c with prior knowledge.
    Cleartext,
    /// TLS with ALPN `h2`.
    Tls(UpstreamTlsConnector),
    /// TLS was configured but its CA could not be loaded: every connect fails
    /// with this reason rather than falling back to cleartext.
    Unusable(Arc<str>),
}

impl Transport {
    /// The transport `tls` asks for, its CA loaded once here.
    pub fn new(upstream: &str, tls: Option<&UpstreamTls>) -> Self {
        match tls.map(UpstreamTlsConnector::new) {
            None => Transport::Cleartext,
            Some(Ok(connector)) => Transport::Tls(connector),
            Some(Err(e)) => {
                tracing::error!(upstream, error = %e, "upstream TLS CA unusable; calls will fail");
                Transport::Unusable(Arc::from(format!("upstream TLS CA unusable: {e}")))
            }
        }
    }
}
