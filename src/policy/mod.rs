//! The shared policy pipeline: named `[policy.NAME]` blocks with a `kind`,
//! attached to a listener (all its routes) or a route, run on the internal
//! request model so they apply to every downstream protocol alike.
//!
//! Each kind is one file: its config (parsed and checked once at load) and
//! its per-request work. Policies on a request always run in this fixed order,
//! cheapest rejection first, whatever order the config lists them in:
//!
//! | order | kinds | why here |
//! |---|---|---|
//! | – | listener limits: `max_requests_per_ip`, `request_timeout` (not policies; `listen::limits`) | before every policy: one hash lookup keyed by the connection's peer, so a flood is refused before any policy work |
//! | 0 | `ip_filter` | costs a lookup; settles the client address (trusted `X-Forwarded-For`/`Forwarded`) that later policies key on; with `on_connect` on a listener it also runs at accept time, before TLS |
//! | 5 | `cors` | a preflight carries no credentials, so it is answered (204, no backend) before auth |
//! | 10 | `mtls` | authentication; the certificate was verified at the handshake, so this only reads it |
//! | 12 | `api_key` | authentication; one hash per request |
//! | 14 | `jwt` | authentication; a signature check, maybe a JWKS fetch. When several authenticate, the JWT `sub` wins as principal |
//! | 20 | `authz` | needs what authentication recorded (principal, consumer, claims) |
//! | 25 | `rate_limit` | after authentication and authz: it may key on the consumer or a claim, and refused requests never spend a budget |
//! | 30 | `headers` | last on the request, so it can use `{principal}` and the backend sees the final headers; first on the response |
//!
//! On the way back every policy of the request gets to edit the response
//! (in reverse order), including responses the gateway made itself, so e.g.
//! CORS headers reach a browser on a 401 too.

pub mod api_key;
pub mod authz;
pub mod cors;
pub mod headers;
pub mod ip_filter;
pub mod jwt;
pub mod mtls;
pub mod rate_limit;
pub mod token_cache;

use std::ops::Range;
use std::sync::Arc;

use http::{HeaderMap, StatusCode};

use crate::model::RequestContext;

/// A request refused by a policy; becomes a response in `error.rs`.
#[derive(Debug, Clone)]
pub struct Rejection {
    pub status: StatusCode,
    /// Stable machine-readable code (`ip_denied`, `rate_limited`, ...).
    pub code: &'static str,
    pub message: String,
    /// Extra response headers (`WWW-Authenticate`, `Retry-After`, ...).
    pub headers: HeaderMap,
}

impl Rejection {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), headers: HeaderMap::new() }
    }
}

/// What a policy decided about a request.
pub enum Verdict {
    /// Go on to the next policy.
    Continue,
    /// Refuse the request with an error response.
    Reject(Rejection),
    /// Answer the request here (e.g. a CORS preflight), with this status and headers.
    Respond(StatusCode, HeaderMap),
}

/// One configured policy, ready to run.
pub enum Policy {
    Headers(headers::HeadersPolicy),
    ApiKey(api_key::ApiKeyPolicy),
    Jwt(jwt::JwtPolicy),
    Mtls(mtls::MtlsPolicy),
    Authz(authz::AuthzPolicy),
    IpFilter(ip_filter::IpFilterPolicy),
    Cors(cors::CorsPolicy),
    RateLimit(rate_limit::RateLimitPolicy),
}

impl Policy {
    /// Builds a policy from its validated spec.
    pub fn new(spec: &PolicySpec) -> Self {
        match spec {
            PolicySpec::Headers(s) => Policy::Headers(headers::HeadersPolicy::new(s)),
            PolicySpec::ApiKey(s) => Policy::ApiKey(api_key::ApiKeyPolicy::new(s)),
            PolicySpec::Jwt(s) => Policy::Jwt(jwt::JwtPolicy::new(s)),
            PolicySpec::Mtls(s) => Policy::Mtls(mtls::MtlsPolicy::new(s)),
            PolicySpec::Authz(s) => Policy::Authz(authz::AuthzPolicy::new(s)),
            PolicySpec::IpFilter(s) => Policy::IpFilter(ip_filter::IpFilterPolicy::new(s)),
            PolicySpec::Cors(s) => Policy::Cors(cors::CorsPolicy::new(s)),
            PolicySpec::RateLimit(s) => Policy::RateLimit(rate_limit::RateLimitPolicy::new(s)),
        }
    }

    /// Position in the fixed run order (see the module doc).
    pub fn order(&self) -> u8 {
        match self {
            Policy::Headers(_) => 30,
            Policy::Mtls(_) => 10,
            Policy::ApiKey(_) => 12,
            Policy::Jwt(_) => 14,
            Policy::Authz(_) => 20,
            Policy::IpFilter(_) => 0,
            Policy::Cors(_) => 5,
            Policy::RateLimit(_) => 25,
        }
    }

    /// Runs on the request head before it is routed upstream.
    pub async fn on_request(&self, parts: &mut http::request::Parts, ctx: &mut RequestContext) -> Verdict {
        match self {
            Policy::Headers(p) => p.on_request(parts, ctx),
            Policy::ApiKey(p) => p.on_request(parts, ctx),
            Policy::Jwt(p) => p.on_request(parts, ctx).await,
            Policy::Mtls(p) => p.on_request(parts, ctx),
            Policy::Authz(p) => p.on_request(parts, ctx),
            Policy::IpFilter(p) => p.on_request(parts, ctx),
            Policy::Cors(p) => p.on_request(parts, ctx),
            Policy::RateLimit(p) => p.on_request(parts, ctx).await,
        }
    }

    /// Whether a new connection from `peer` may go on to TLS and HTTP: only
    /// `ip_filter` policies with `on_connect = true` look at it.
    pub fn admits_connection(&self, peer: std::net::IpAddr) -> bool {
        match self {
            Policy::IpFilter(p) => p.admits_connection(peer),
            _ => true,
        }
    }

    /// Runs on every response to a request this policy saw.
    pub fn on_response(&self, headers: &mut HeaderMap, status: StatusCode, ctx: &RequestContext) {
        match self {
            Policy::Headers(p) => p.on_response(headers, status, ctx),
            Policy::ApiKey(_) | Policy::Jwt(_) | Policy::Mtls(_) | Policy::Authz(_) => {}
            Policy::IpFilter(_) => {}
            Policy::Cors(p) => p.on_response(headers, status, ctx),
            Policy::RateLimit(p) => p.on_response(headers, status, ctx),
        }
    }
}

/// The policies of one listener + route, in run order.
#[derive(Clone, Default)]
pub struct PolicyChain {
    policies: Arc<[Arc<Policy>]>,
}

impl PolicyChain {
    /// Orders `policies` (listener's first, then route's; duplicates dropped) by kind.
    pub fn new(named: Vec<(String, Arc<Policy>)>) -> Self {
        let mut seen = std::collections::HashSet::new();
        let mut policies: Vec<Arc<Policy>> =
            named.into_iter().filter(|(name, _)| seen.insert(name.clone())).map(|(_, p)| p).collect();
        policies.sort_by_key(|p| p.order());
        Self { policies: policies.into() }
    }

    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// Runs each policy's request side until one does not continue.
    pub async fn on_request(&self, parts: &mut http::request::Parts, ctx: &mut RequestContext) -> Verdict {
        for policy in self.policies.iter() {
            match policy.on_request(parts, ctx).await {
                Verdict::Continue => {}
                other => return other,
            }
        }
        Verdict::Continue
    }

    /// Whether every policy lets a connection from `peer` in (checked at
    /// accept time, before any TLS or HTTP work).
    pub fn admits_connection(&self, peer: std::net::IpAddr) -> bool {
        self.policies.iter().all(|p| p.admits_connection(peer))
    }

    /// Runs every policy's response side, last first.
    pub fn on_response(&self, headers: &mut HeaderMap, status: StatusCode, ctx: &RequestContext) {
        for policy in self.policies.iter().rev() {
            policy.on_response(headers, status, ctx);
        }
    }
}

/// A policy's validated configuration.
#[derive(Debug, Clone)]
pub enum PolicySpec {
    Headers(headers::HeadersSpec),
    ApiKey(api_key::ApiKeySpec),
    Jwt(jwt::JwtSpec),
    Mtls(mtls::MtlsSpec),
    Authz(authz::AuthzSpec),
    IpFilter(ip_filter::IpFilterSpec),
    Cors(cors::CorsSpec),
    RateLimit(rate_limit::RateLimitSpec),
}

impl PolicySpec {
    /// Gives the spec its `[policy.NAME]` name, for kinds that need it
    /// (`rate_limit` namespaces its shared Redis buckets by it).
    pub fn named(self, name: &str) -> Self {
        match self {
            PolicySpec::RateLimit(mut s) => {
                s.name = name.to_string();
                PolicySpec::RateLimit(s)
            }
            other => other,
        }
    }
}

/// A policy config problem, located by byte span in the config file.
#[derive(Debug, Clone)]
pub struct SpecError {
    pub span: Option<Range<usize>>,
    /// Key inside the policy table, e.g. `allow`.
    pub key: String,
    pub message: String,
}

impl SpecError {
    pub fn at(span: Range<usize>, key: &str, message: impl Into<String>) -> Self {
        Self { span: Some(span), key: key.to_string(), message: message.into() }
    }

    /// From a serde error while reading the policy table.
    pub fn from_toml(err: toml::de::Error) -> Self {
        Self { span: err.span(), key: String::new(), message: err.message().trim().to_string() }
    }
}

/// Every kind a `[policy.NAME]` may have.
pub const KINDS: &[&str] = &["ip_filter", "cors", "mtls", "api_key", "jwt", "authz", "headers", "rate_limit"];

/// Parses the table of one `[policy.NAME]` of the given `kind`.
pub fn parse_spec(kind: &str, table: toml::de::ValueDeserializer<'_>) -> Result<PolicySpec, SpecError> {
    match kind {
        "headers" => headers::parse(table).map(PolicySpec::Headers),
        "api_key" => api_key::parse(table).map(PolicySpec::ApiKey),
        "jwt" => jwt::parse(table).map(PolicySpec::Jwt),
        "mtls" => mtls::parse(table).map(PolicySpec::Mtls),
        "authz" => authz::parse(table).map(PolicySpec::Authz),
        "ip_filter" => ip_filter::parse(table).map(PolicySpec::IpFilter),
        "cors" => cors::parse(table).map(PolicySpec::Cors),
        "rate_limit" => rate_limit::parse(table).map(PolicySpec::RateLimit),
        _ => Err(SpecError {
            span: None,
            key: "kind".into(),
            message: format!("unknown policy kind `{kind}`; use one of {}", KINDS.join(", ")),
        }),
    }
}

/// A string value from a policy table with `${ENV}` expanded.
pub fn env_string(value: &toml::Spanned<String>, key: &str) -> Result<String, SpecError> {
    crate::config::expand_env(value.get_ref()).map_err(|m| SpecError::at(value.span(), key, m))
}

/// Parses one policy table written as TOML text (its keys, `kind` included),
/// the way `config` hands it over; for unit tests of each kind.
#[cfg(test)]
pub(crate) fn spec_from_str(text: &str) -> Result<PolicySpec, SpecError> {
    use toml::de::{DeTable, DeValue, ValueDeserializer};
    let kind =
        toml::from_str::<toml::Table>(text).map_err(SpecError::from_toml)?["kind"].as_str().unwrap_or("").to_string();
    let table = DeTable::parse(text).map_err(SpecError::from_toml)?;
    let value = toml::Spanned::new(0..text.len(), DeValue::Table(table.into_inner()));
    parse_spec(&kind, ValueDeserializer::from(value))
}

/// A request context on a cleartext loopback connection, for unit tests.
#[cfg(test)]
pub(crate) fn test_context() -> RequestContext {
    use crate::model::{ConnectionInfo, DownstreamProtocol, ListenerInfo};
    let listener = Arc::new(ListenerInfo {
        name: Arc::from("test"),
        max_body_bytes: None,
        limits: Default::default(),
        merge_slashes: true,
    });
    let addr: std::net::SocketAddr = "127.0.0.1:1".parse().expect("an address");
    RequestContext {
        id: http::HeaderValue::from_static("test"),
        connection: Arc::new(ConnectionInfo::new(listener, addr, addr, None)),
        protocol: DownstreamProtocol::Http1,
        route: None,
        upstream: None,
        target: None,
        client_ip: addr.ip(),
        principal: None,
        consumer: None,
        claims: None,
        rate_limit: None,
        origin: None,
    }
}
