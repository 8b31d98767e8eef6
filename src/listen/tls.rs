//! TLS termination with rustls: ALPN `h2` + `http/1.1`, TLS 1.2/1.3, the
//! certificate chosen by SNI among those configured, and optionally client
//! certificates verified against a CA bundle (mTLS, `client_auth`).

use std::sync::Arc;

use rustls::ServerConfig;
use rustls::crypto::ring::sign::any_supported_type;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::config::{CertPair, ClientAuthConfig, ClientAuthMode, TlsConfig, TlsVersion};

/// Why a TLS configuration could not be built.
#[derive(Debug)]
pub enum TlsError {
    /// The certificate file has no PEM certificate in it, or cannot be read.
    Certificate { path: String, reason: String },
    /// The key file has no usable private key.
    Key { path: String, reason: String },
    /// rustls refused the combination.
    Rustls(rustls::Error),
    /// The `client_auth.ca` bundle has no usable CA certificate.
    ClientCa { path: String, reason: String },
}

impl std::fmt::Display for TlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TlsError::Certificate { path, reason } => write!(f, "certificate `{path}`: {reason}"),
            TlsError::Key { path, reason } => write!(f, "private key `{path}`: {reason}"),
            TlsError::Rustls(e) => write!(f, "TLS setup: {e}"),
            TlsError::ClientCa { path, reason } => write!(f, "client CA bundle `{path}`: {reason}"),
        }
    }
}

impl std::error::Error for TlsError {}

/// Builds the rustls server config for a listener.
pub fn server_config(tls: &TlsConfig) -> Result<Arc<ServerConfig>, TlsError> {
    let keys = tls.certs.iter().map(load_pair).collect::<Result<Vec<_>, _>>()?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = match tls.min_version {
        TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(versions)
        .map_err(TlsError::Rustls)?;
    let builder = match &tls.client_auth {
        None => builder.with_no_client_auth(),
        Some(auth) => builder.with_client_cert_verifier(client_verifier(auth, provider)?),
    };
    let mut config = builder.with_cert_resolver(Arc::new(SniResolver { keys }));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Verifies client certificates against the `client_auth.ca` bundle
/// (webpki path building, as for server certificates); in `request` mode a
/// client may also connect without one.
fn client_verifier(
    auth: &ClientAuthConfig,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    let path = auth.ca.display().to_string();
    let fail = |reason: String| TlsError::ClientCa { path: path.clone(), reason };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&auth.ca).map_err(|e| fail(e.to_string()))? {
        roots.add(cert.map_err(|e| fail(e.to_string()))?).map_err(|e| fail(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(fail("no PEM certificate found".into()));
    }
    let builder = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
    let builder = match auth.mode {
        ClientAuthMode::Require => builder,
        ClientAuthMode::Request => builder.allow_unauthenticated(),
    };
    builder.build().map_err(|e| fail(e.to_string()))
}

fn load_pair(pair: &CertPair) -> Result<Arc<CertifiedKey>, TlsError> {
    let cert_path = pair.cert.display().to_string();
    let key_path = pair.key.display().to_string();
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&pair.cert)
        .map_err(|e| TlsError::Certificate { path: cert_path.clone(), reason: e.to_string() })?
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Certificate { path: cert_path.clone(), reason: e.to_string() })?;
    if chain.is_empty() {
        return Err(TlsError::Certificate { path: cert_path, reason: "no PEM certificate found".into() });
    }
    let key = PrivateKeyDer::from_pem_file(&pair.key)
        .map_err(|e| TlsError::Key { path: key_path.clone(), reason: e.to_string() })?;
    let signing_key = any_supported_type(&key).map_err(|e| TlsError::Key { path: key_path, reason: e.to_string() })?;
    let certified = CertifiedKey::new(chain, signing_key);
    certified.keys_match().map_err(|e| TlsError::Key {
        path: pair.key.display().to_string(),
        reason: format!("does not match the certificate: {e}"),
    })?;
    Ok(Arc::new(certified))
}

/// Picks the first certificate valid for the SNI name; the first configured
/// certificate answers clients that send no SNI or an unknown name.
#[derive(Debug)]
struct SniResolver {
    keys: Vec<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if self.keys.len() > 1
            && let Some(name) = hello.server_name()
            && let Ok(server_name) = ServerName::try_from(name)
        {
            let found = self.keys.iter().find(|key| {
                key.end_entity_cert()
                    .ok()
                    .and_then(|der| webpki::EndEntityCert::try_from(der).ok())
                    .is_some_and(|cert| cert.verify_is_valid_for_subject_name(&server_name).is_ok())
            });
            if let Some(key) = found {
                return Some(Arc::clone(key));
            }
        }
        self.keys.first().cloned()
    }
}
