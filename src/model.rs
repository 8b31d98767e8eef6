//! The one internal request model: `http::Request<Body>` plus a
//! [`RequestContext`] in its extensions, whatever protocol the client spoke.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::Version;

/// The protocol a request arrived on. Policies should not branch on it; it
/// exists for logs, metrics and the few re-encodings that must know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownstreamProtocol {
    Http1,
    Http2,
}

impl DownstreamProtocol {
    /// The protocol implied by a request's HTTP version.
    pub fn from_version(version: Version) -> Self {
        if version == Version::HTTP_2 { Self::Http2 } else { Self::Http1 }
    }

    /// Short name used in logs and `Via` (`1.1`, `2`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http1 => "HTTP/1.1",
            Self::Http2 => "HTTP/2",
        }
    }
}

/// What the TLS handshake told us about a connection.
#[derive(Debug, Clone, Default)]
pub struct TlsInfo {
    /// The SNI name the client asked for.
    pub server_name: Option<String>,
    /// The negotiated ALPN protocol (`h2`, `http/1.1`).
    pub alpn: Option<Vec<u8>>,
    /// `TLSv1_2` or `TLSv1_3`.
    pub version: Option<&'static str>,
}

/// Facts about the listener a connection came in on, shared by its connections.
#[derive(Debug)]
pub struct ListenerInfo {
    /// The listener's name from config.
    pub name: Arc<str>,
    /// Request body limit for routes that set none of their own.
    pub max_body_bytes: Option<u64>,
}

/// Facts about one accepted connection, shared by all its requests.
#[derive(Debug)]
pub struct ConnectionInfo {
    pub listener: Arc<ListenerInfo>,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// `None` for cleartext connections.
    pub tls: Option<TlsInfo>,
}

impl ConnectionInfo {
    /// `https` when the connection is TLS, else `http` (for X-Forwarded-Proto).
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }
}

/// Per-request facts every stage can read; lives in the request's extensions
/// until the pipeline takes it out to log the request.
#[derive(Debug, Clone)]
pub struct RequestContext {
    /// Kept from the client's `X-Request-Id` or generated; echoed back.
    pub id: Arc<str>,
    pub connection: Arc<ConnectionInfo>,
    pub protocol: DownstreamProtocol,
    pub start: Instant,
    /// Name of the matched route.
    pub route: Option<Arc<str>>,
    /// Name of the upstream and the chosen target.
    pub upstream: Option<Arc<str>>,
    pub target: Option<Arc<str>>,
    /// The authenticated principal, set by authentication policies.
    pub principal: Option<Arc<str>>,
}
