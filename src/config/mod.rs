//! Configuration: loaded raw from TOML, validated once, then an immutable
//! typed snapshot shared as `Arc<Config>`.
//!
//! `raw` mirrors the file; `load` checks every cross-reference and value and
//! reports `file:line: key: what is wrong` before anything binds.

mod error;
mod raw;
mod units;
mod validate;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::uri::Authority;
use http::{HeaderName, HeaderValue, Method};

pub use error::ConfigError;
pub use units::{Rate, expand_env, parse_duration, parse_rate};

/// Reads, parses and validates a config file.
pub fn load(path: &std::path::Path) -> Result<Config, ConfigError> {
    let error = |line, message| ConfigError { file: path.to_path_buf(), line, key: "config".into(), message };
    let bytes = std::fs::read(path).map_err(|e| error(None, format!("cannot read file: {e}")))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        // Say where: a stray byte from a copy and paste is hard to find in a whole file.
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let line = valid.iter().filter(|&&b| b == b'\n').count() + 1;
        let column = valid.len() - valid.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1) + 1;
        error(Some(line), format!("not UTF-8 text (TOML must be): a stray byte at column {column}"))
    })?;
    parse(path, &text)
}

/// Parses and validates config text that came from `path`.
pub fn parse(path: &std::path::Path, text: &str) -> Result<Config, ConfigError> {
    validate::validate(path, text)
}

/// A validated configuration snapshot.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where it was read from, for messages.
    pub source: PathBuf,
    pub runtime: RuntimeConfig,
    pub log: LogConfig,
    pub admin: Option<AdminConfig>,
    pub listeners: Vec<ListenerConfig>,
    pub upstreams: Vec<UpstreamConfig>,
    /// Routes in match order (see `route` for the precedence rules).
    pub routes: Vec<RouteConfig>,
    /// `[policy.NAME]` blocks, by name.
    pub policies: Vec<(String, crate::policy::PolicySpec)>,
}

/// `[runtime]`: how the process runs.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Tokio worker threads; defaults to the number of cores.
    pub worker_threads: usize,
    /// How long SIGTERM waits for in-flight requests before closing them.
    pub shutdown_grace: Duration,
    /// How the event loop gathers events under load (see [`crate::gather`]).
    pub gather: crate::gather::Gather,
}

/// Access and diagnostic log format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// `[log]`.
#[derive(Debug, Clone)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `tracing` filter directive, e.g. `info` or `tollgate=debug`.
    pub level: String,
    /// One line per request at target `access`.
    pub access_log: bool,
}

/// `[admin]`: status page and health endpoint.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub bind: SocketAddr,
}

/// `[[listener]]`: one bound socket serving HTTP/1.1 and HTTP/2.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    pub name: String,
    pub bind: SocketAddr,
    pub tls: Option<TlsConfig>,
    pub limits: ListenerLimits,
    /// Policies applied to every request on this listener.
    pub policies: Vec<String>,
    /// Every connection starts with a PROXY protocol v1 or v2 header whose
    /// source address becomes the peer. Only for listeners that nothing but
    /// the proxy can reach: the header is believed because this says so.
    pub proxy_protocol: bool,
    /// Runs of slashes in request paths become one before routing (see
    /// `pipeline::normalize`); on by default, as in nginx.
    pub merge_slashes: bool,
    /// QUIC + HTTP/3 on the same port number over UDP; `None` when off.
    pub http3: Option<Http3Config>,
}

/// HTTP/3 settings of a TLS listener (`http3 = true`, tuned by `quic = {...}`).
#[derive(Debug, Clone)]
pub struct Http3Config {
    /// Accept 0-RTT early data. Off by default: early data can be replayed, so
    /// when on, only safe methods (GET, HEAD, OPTIONS) are served from it and
    /// others get 425 Too Early (RFC 8470).
    pub zero_rtt: bool,
    /// Validate every client address with a Retry packet before any
    /// handshake work (RFC 9000 §8.1): one more round trip, no spoofed floods.
    pub retry: bool,
    /// `ma=` of the `Alt-Svc` header TCP responses carry; zero sends none.
    pub alt_svc_max_age: Duration,
    /// Concurrent request streams per connection (QUIC MAX_STREAMS).
    pub max_concurrent_streams: u32,
    /// Accept WebTransport sessions (on WebSocket routes); on by default.
    pub webtransport: bool,
}

/// Per-listener protection against oversized or slow clients.
#[derive(Debug, Clone)]
pub struct ListenerLimits {
    /// Largest request header block (HTTP/1.1 read buffer, HTTP/2 header list); over it → 431.
    pub max_header_bytes: usize,
    /// Most header fields in one request (HTTP/1.1).
    pub max_headers: usize,
    /// Largest request body; over it → 413. `None` means unlimited.
    pub max_body_bytes: Option<u64>,
    /// Time a client has to send a complete header block (slowloris guard).
    pub header_read_timeout: Duration,
    /// Most open connections on this listener; `None` means unlimited.
    pub max_connections: Option<usize>,
    /// HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS.
    pub h2_max_concurrent_streams: u32,
    /// Most open connections from one client IP; `None` means unlimited.
    pub max_connections_per_ip: Option<usize>,
    /// Requests per client IP (GCRA, burst = N) before 429; `None` means unlimited.
    pub max_requests_per_ip: Option<Rate>,
    /// From the request head to the response head, upstream included; then 504.
    pub request_timeout: Option<Duration>,
    /// Longest wait for the next piece of a plain HTTP client's request body
    /// (not gRPC's); then 408 (a stalled upload must not hold a backend).
    pub body_timeout: Duration,
    /// Longest a response may wait for the client to take more of it (its
    /// socket full, or its HTTP/2 window shut); then the connection (HTTP/1.1)
    /// or the stream (HTTP/2) ends: a client that stops reading must not hold
    /// a backend ("slow read").
    pub send_timeout: Duration,
    /// A connection with no new request for this long is closed gracefully (GOAWAY on HTTP/2).
    pub idle_timeout: Duration,
    /// Streams a client may reset before the server answered them (less one
    /// per answer), before the connection is closed with GOAWAY (HTTP/2
    /// rapid reset, CVE-2023-44487).
    pub h2_max_pending_accept_reset_streams: usize,
    /// Streams the server may reset for the client's protocol errors before
    /// GOAWAY (reset floods provoked by the client).
    pub h2_max_local_error_reset_streams: usize,
}

/// TLS termination settings; certificates are picked by SNI.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub certs: Vec<CertPair>,
    pub min_version: TlsVersion,
    /// Client certificates to ask for (mTLS); `None` asks for none.
    pub client_auth: Option<ClientAuthConfig>,
}

/// `client_auth = { ca = "ca.pem", mode = "require" }`: verify client
/// certificates against this CA bundle during the handshake.
#[derive(Debug, Clone)]
pub struct ClientAuthConfig {
    /// PEM bundle of the CAs client certificates must chain to.
    pub ca: PathBuf,
    pub mode: ClientAuthMode,
}

/// Whether a client without a certificate may still connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuthMode {
    /// The handshake fails without a valid certificate.
    Require,
    /// A certificate is asked for and verified if sent; the `mtls` policy
    /// decides per route whether one was needed.
    Request,
}

/// Lowest TLS version a listener accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

/// A certificate chain and its private key, as PEM files.
#[derive(Debug, Clone)]
pub struct CertPair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Wire protocol towards an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    Http1,
    /// gRPC over HTTP/2, h2c (prior knowledge) or TLS (`tls`): multiplexed
    /// connections, trailers, `grpc-timeout` (see `upstream::grpc`).
    Grpc,
}

/// How a target is chosen for each request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    RoundRobin,
    LeastRequest,
    Random,
    Hash,
}

/// What `balance = "hash"` hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    ClientIp,
    Header(HeaderName),
}

/// One backend address with its share of traffic.
#[derive(Debug, Clone)]
pub struct TargetConfig {
    pub authority: Authority,
    pub weight: u32,
}

/// `[[upstream]]`: a named group of targets and how to talk to them.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub name: String,
    pub protocol: UpstreamProtocol,
    pub targets: Vec<TargetConfig>,
    pub balance: Balance,
    pub hash_key: HashKey,
    pub connect_timeout: Duration,
    /// From the request being sent to the response head arriving; over it → 504.
    pub first_byte_timeout: Duration,
    /// Pooled keep-alive connections idle this long are closed.
    pub idle_timeout: Duration,
    /// Most connections in use per target; `None` means unlimited.
    pub max_connections_per_target: Option<usize>,
    pub max_idle_per_target: usize,
    /// Consecutive connect failures that eject a target.
    pub eject_after: u32,
    /// How long an ejected target sits out before it is tried again.
    pub eject_for: Duration,
    /// TLS to the targets (gRPC upstreams only); `None` is cleartext.
    pub tls: Option<UpstreamTls>,
    /// HTTP/2 connections per target a gRPC upstream spreads its calls over.
    pub grpc_connections_per_target: usize,
}

/// `tls = { ca, server_name }` of a gRPC upstream: backends are verified
/// against this CA, never skipped, and must negotiate `h2` by ALPN.
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    /// PEM file of the certificates trusted for the backends.
    pub ca: PathBuf,
    /// The name the backends' certificates must carry; default each target's host.
    pub server_name: Option<String>,
}

/// How a route matches the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    /// `api.example.com` (compared lowercase, port ignored).
    Exact(String),
    /// `*.example.com` stored as `.example.com`: any subdomain, not the apex.
    Suffix(String),
}

/// How a route matches the path.
#[derive(Debug, Clone)]
pub enum PathMatch {
    Exact(String),
    Prefix(String),
    Regex(regex::Regex),
}

/// `match = { ... }`: every given condition must hold.
#[derive(Debug, Clone, Default)]
pub struct RouteMatch {
    pub host: Option<HostMatch>,
    pub path: Option<PathMatch>,
    /// Empty means any method.
    pub methods: Vec<Method>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// What a matched route does with the request.
#[derive(Debug, Clone)]
pub enum RouteAction {
    /// Reverse-proxy to the named upstream.
    Proxy { upstream: String },
    /// Serve files from a directory.
    Static { dir: PathBuf },
}

/// `[[route]]`.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub name: String,
    pub matcher: RouteMatch,
    pub action: RouteAction,
    /// Remove the matched `path_prefix` before forwarding.
    pub strip_prefix: bool,
    /// Replace the matched part of the path (prefix, exact path or regex
    /// match, with `$1`-style groups for regex) by this.
    pub rewrite: Option<String>,
    /// Forward the client's `Host` (default) instead of the target address.
    pub preserve_host: bool,
    /// The forwarding fields this route's requests gain upstream (`Via`
    /// also on its responses); the client's own fields of a kind left out
    /// pass through unchanged.
    pub forward_headers: ForwardHeaders,
    /// `X-Request-Id` set on the upstream request and the proxied response.
    /// Off, Tollgate neither adds nor replaces it; the id still names the
    /// request in the access log and in Tollgate's own error responses.
    pub request_id_header: bool,
    /// HTTP/JSON requests transcoded to the gRPC upstream's methods
    /// (`grpc_json = { descriptors, services }`); gRPC and gRPC-Web
    /// requests on the route pass through as before.
    pub grpc_json: Option<tollgate_grpc_json::Transcoder>,
    /// Overrides the listener's body limit for this route.
    pub max_body_bytes: Option<u64>,
    /// Policies applied to this route (after the listener's).
    pub policies: Vec<String>,
    /// WebSocket requests on this route are bridged (`websocket = ...`);
    /// `None` proxies them like any request (the upgrade headers are dropped).
    pub websocket: Option<WebSocketRoute>,
}

/// One of the fields a proxy adds to say where a request came from.
/// The discriminant is the field's bit in [`ForwardHeaders`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardHeader {
    XForwardedFor = 0,
    XForwardedProto = 1,
    XForwardedHost = 2,
    /// RFC 7239.
    Forwarded = 3,
    /// RFC 9110 §7.6.3, on requests and responses.
    Via = 4,
}

impl ForwardHeader {
    /// Every kind, in the order they are written.
    pub const ALL: [ForwardHeader; 5] =
        [Self::XForwardedFor, Self::XForwardedProto, Self::XForwardedHost, Self::Forwarded, Self::Via];

    /// The field name, as written in `forward_headers`.
    pub fn name(self) -> &'static str {
        match self {
            Self::XForwardedFor => "x-forwarded-for",
            Self::XForwardedProto => "x-forwarded-proto",
            Self::XForwardedHost => "x-forwarded-host",
            Self::Forwarded => "forwarded",
            Self::Via => "via",
        }
    }
}

/// A set of [`ForwardHeader`]s, one bit each: the per-request check is a mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwardHeaders(u8);

impl ForwardHeaders {
    /// All five: the default, what a client-facing gateway usually owes its backends.
    pub const ALL: ForwardHeaders = ForwardHeaders(0b1_1111);
    /// None at all.
    pub const NONE: ForwardHeaders = ForwardHeaders(0);

    /// This set with `field` added.
    pub fn with(self, field: ForwardHeader) -> Self {
        Self(self.0 | 1 << field as u8)
    }

    /// Whether `field` is in the set.
    pub fn contains(self, field: ForwardHeader) -> bool {
        self.0 & 1 << field as u8 != 0
    }

    /// The set as bits, bit `i` for `ForwardHeader::ALL[i]`.
    pub fn bits(self) -> u8 {
        self.0
    }
}

/// What a route does with WebSocket clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebSocketMode {
    /// `"tunnel"`: frames relayed to a WebSocket backend over HTTP/1.1.
    Tunnel,
    /// `"http"`: each message becomes an HTTP/1.1 request to a plain backend.
    Http,
}

/// `websocket = "tunnel" | "http"` and the `websocket_*` keys of a route.
#[derive(Debug, Clone)]
pub struct WebSocketRoute {
    pub mode: WebSocketMode,
    /// Largest message after reassembly; over it the sender gets close 1009.
    pub max_message_bytes: usize,
    /// Largest single frame; over it the sender gets close 1009.
    pub max_frame_bytes: usize,
    /// No frame either way for this long closes the connection with 1001.
    pub idle_timeout: std::time::Duration,
    /// Ping a silent client this often (tunnel mode); `None` (`"0s"`) never.
    pub ping_interval: Option<std::time::Duration>,
    /// Message mode: the request method (default POST).
    pub method: Method,
    /// Message mode: the request path; default the upgrade request's (rewritten) path.
    pub path: Option<String>,
    /// Message mode: extra request headers.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Message mode: requests in flight per connection; replies stay in order.
    pub in_flight: usize,
    /// Message mode: a path opened with a long-lived GET whose server-sent
    /// events are pushed to the client.
    pub push_path: Option<String>,
}
