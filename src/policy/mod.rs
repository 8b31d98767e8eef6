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
//! | 1 | `ip_filter` | costs a lookup; settles the client address later policies key on |
//! | 2 | `cors` | a preflight carries no credentials, so it is answered before auth |
//! | 3 | `headers` (request side) | so later policies and the backend see the rewritten request |
//!
//! On the way back every policy of the request gets to edit the response
//! (in reverse order), including responses the gateway made itself, so e.g.
//! CORS headers reach a browser on a 401 too.

pub mod headers;

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
}

impl Policy {
    /// Builds a policy from its validated spec.
    pub fn new(spec: &PolicySpec) -> Self {
        match spec {
            PolicySpec::Headers(s) => Policy::Headers(headers::HeadersPolicy::new(s)),
        }
    }

    /// Position in the fixed run order (see the module doc).
    pub fn order(&self) -> u8 {
        match self {
            Policy::Headers(_) => 30,
        }
    }

    /// Runs on the request head before it is routed upstream.
    pub async fn on_request(&self, parts: &mut http::request::Parts, ctx: &mut RequestContext) -> Verdict {
        match self {
            Policy::Headers(p) => p.on_request(parts, ctx),
        }
    }

    /// Runs on every response to a request this policy saw.
    pub fn on_response(&self, headers: &mut HeaderMap, status: StatusCode, ctx: &RequestContext) {
        match self {
            Policy::Headers(p) => p.on_response(headers, status, ctx),
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
pub const KINDS: &[&str] = &["headers"];

/// Parses the table of one `[policy.NAME]` of the given `kind`.
pub fn parse_spec(kind: &str, table: toml::de::ValueDeserializer<'_>) -> Result<PolicySpec, SpecError> {
    match kind {
        "headers" => headers::parse(table).map(PolicySpec::Headers),
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
