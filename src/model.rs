//! The one internal request model: `http::Request<Body>` plus a
//! [`RequestContext`] in its extensions, whatever protocol the client spoke.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{HeaderValue, Version};

/// The protocol a request arrived on. Policies should not branch on it; it
/// exists for logs, metrics and the few re-encodings that must know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownstreamProtocol {
    Http1,
    Http2,
    Http3,
}

impl DownstreamProtocol {
    /// The protocol implied by a request's HTTP version.
    pub fn from_version(version: Version) -> Self {
        match version {
            Version::HTTP_2 => Self::Http2,
            Version::HTTP_3 => Self::Http3,
            _ => Self::Http1,
        }
    }

    /// Name used in logs (`HTTP/1.1`, `HTTP/2`, `HTTP/3`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http1 => "HTTP/1.1",
            Self::Http2 => "HTTP/2",
            Self::Http3 => "HTTP/3",
        }
    }
}

/// What the TLS handshake told us about a connection.
#[derive(Debug, Clone, Default)]
pub struct TlsInfo {
    /// The SNI name the client asked for.
    pub server_name: Option<String>,
    /// The negotiated ALPN protocol (`h2`, `http/1.1`, `h3`).
    pub alpn: Option<Vec<u8>>,
    /// `TLSv1_2` or `TLSv1_3`.
    pub version: Option<&'static str>,
    /// The client certificate the handshake verified against the listener's
    /// CA (`client_auth`), read once per connection for the `mtls` policy.
    pub client_cert: Option<Arc<ClientCert>>,
}

/// The identity in a verified TLS client certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientCert {
    /// The subject as an RFC 4514 string (`CN=alice,O=Acme`), ASCII only.
    pub subject: String,
    /// The subject's common name, if it has one.
    pub common_name: Option<String>,
    /// DNS names from subjectAltName.
    pub dns_names: Vec<String>,
    /// URIs from subjectAltName (SPIFFE IDs live here).
    pub uris: Vec<String>,
}

/// Facts about the listener a connection came in on, shared by its connections.
#[derive(Debug)]
pub struct ListenerInfo {
    /// The listener's name from config.
    pub name: Arc<str>,
    /// Request body limit for routes that set none of their own.
    pub max_body_bytes: Option<u64>,
    /// Per-client connection and request limits (DDoS protection).
    pub limits: crate::listen::limits::ClientLimits,
    /// Merge runs of slashes when normalizing request paths.
    pub merge_slashes: bool,
}

/// Facts about one accepted connection, shared by all its requests.
#[derive(Debug)]
pub struct ConnectionInfo {
    pub listener: Arc<ListenerInfo>,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// `None` for cleartext connections.
    pub tls: Option<TlsInfo>,
    /// The peer IP as a header value, made once per connection for `X-Forwarded-For`.
    pub peer_ip_header: HeaderValue,
    /// `for=...;proto=...` (RFC 7239), made once per connection for `Forwarded`.
    pub forwarded_for: String,
    /// The whole `Forwarded` element for the first host seen on this
    /// connection (nearly always the only one), made once and then shared.
    pub forwarded_cache: std::sync::OnceLock<(HeaderValue, HeaderValue)>,
}

impl ConnectionInfo {
    /// Describes a new connection, precomputing what every request on it forwards.
    pub fn new(listener: Arc<ListenerInfo>, peer: SocketAddr, local: SocketAddr, tls: Option<TlsInfo>) -> Self {
        let ip = peer.ip();
        let proto = if tls.is_some() { "https" } else { "http" };
        let forwarded_for = match ip {
            std::net::IpAddr::V4(v4) => format!("for={v4};proto={proto}"),
            std::net::IpAddr::V6(v6) => format!("for=\"[{v6}]\";proto={proto}"),
        };
        let peer_ip_header = HeaderValue::from_str(&ip.to_string()).expect("an IP address is a valid header value");
        Self { listener, peer, local, tls, peer_ip_header, forwarded_for, forwarded_cache: Default::default() }
    }

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
    pub id: HeaderValue,
    pub connection: Arc<ConnectionInfo>,
    pub protocol: DownstreamProtocol,
    /// Name of the matched route.
    pub route: Option<Arc<str>>,
    /// Name of the upstream and the chosen target.
    pub upstream: Option<Arc<str>>,
    pub target: Option<Arc<str>>,
    /// The client's address: the peer, or the address a trusted proxy
    /// reported (set by `ip_filter`); rate limits and logs key on it.
    pub client_ip: std::net::IpAddr,
    /// The authenticated principal (JWT subject, certificate subject), set by authentication policies.
    pub principal: Option<Arc<str>>,
    /// The API consumer name (api_key policies), if any.
    pub consumer: Option<Arc<str>>,
    /// Verified token claims, for authorization and claim-keyed rate limits.
    pub claims: Option<Arc<serde_json::Value>>,
    /// The tightest `rate_limit` decision made on the request, kept so the
    /// response side can add the RateLimit fields (a few bytes, `Copy`).
    pub rate_limit: Option<crate::policy::rate_limit::RateLimitStatus>,
    /// The request's `Origin` (RFC 6454 §7), kept so `cors` can answer on
    /// the response side, where the request headers are gone.
    pub origin: Option<HeaderValue>,
}

impl RequestContext {
    /// The request id as text (ids are checked to be visible ASCII).
    pub fn id_str(&self) -> &str {
        self.id.to_str().unwrap_or("-")
    }
}

/// Something a listener hands, once, to whoever answers the request, after
/// the answer is out: an upgraded HTTP/1.1 connection, a WebTransport
/// session. It travels in the request's extensions, which must be
/// cloneable; only one clone takes the value.
pub struct Handoff<T>(Arc<std::sync::Mutex<Option<tokio::sync::oneshot::Receiver<T>>>>);

impl<T> Clone for Handoff<T> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<T> Handoff<T> {
    /// A pending hand-off and the sender the listener fulfils it with.
    pub fn new() -> (Self, tokio::sync::oneshot::Sender<T>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (Self(Arc::new(std::sync::Mutex::new(Some(rx)))), tx)
    }

    /// Waits for the value; `None` if the listener dropped its sender (the
    /// answer was something else, or the connection failed first) or
    /// another clone took it.
    pub async fn wait(self) -> Option<T> {
        let receiver = self.0.lock().unwrap_or_else(|e| e.into_inner()).take()?;
        receiver.await.ok()
    }
}
