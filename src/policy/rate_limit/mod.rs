//! `kind = "rate_limit"`: GCRA (a token bucket without a refill timer) per
//! key, in memory ([`local`], `governor`) or shared by every instance through
//! Redis ([`redis`]).
//!
//! ```toml
//! [policy.per-client]
//! kind = "rate_limit"
//! key = "client_ip"          # "consumer", "route", "header:NAME", "claim:NAME"
//! rate = "100/s"             # "N/s", "N/m", "N/h"
//! burst = 20                 # bucket size; default: N of the rate
//! store = "memory"           # or "redis", with redis = "redis://127.0.0.1:6379"
//! ```
//!
//! Every answer carries the draft-ietf-httpapi-ratelimit-headers-06 fields
//! `RateLimit-Limit` (the bucket size), `RateLimit-Remaining` and
//! `RateLimit-Reset` (seconds until the bucket is full again); a refusal is
//! 429 `rate_limited` with `Retry-After` (RFC 9110 §10.2.3: seconds until
//! one request will be allowed, RFC 6585 §4 for 429). The numbers are found
//! on the request and kept in `RequestContext::rate_limit` (a few bytes) for
//! the response side, which adds them to whatever response the request gets.

pub mod local;
pub mod redis;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use serde::Deserialize;
use toml::Spanned;

use self::redis::RedisStore;
use super::{Rejection, SpecError, Verdict, env_string};
use crate::config::{Rate, parse_duration, parse_rate};
use crate::model::RequestContext;
use local::LocalLimiter;

/// `RateLimit-Limit`: the bucket size (draft-ietf-httpapi-ratelimit-headers-06).
pub const RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
/// `RateLimit-Remaining`: requests that may be sent right now.
pub const RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
/// `RateLimit-Reset`: seconds until the bucket is full again.
pub const RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

/// Default `max_keys`: buckets one in-memory policy may hold (about 100 B each).
const DEFAULT_MAX_KEYS: usize = 100_000;
/// Default `redis_timeout`: a loopback or LAN Redis answers in well under 1 ms.
const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(100);
/// Header and claim values longer than this are hashed into the bucket key,
/// so a client cannot make the gateway store (or send Redis) huge keys.
const MAX_RAW_KEY: usize = 64;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRateLimit {
    #[allow(dead_code)]
    kind: String,
    key: Option<Spanned<String>>,
    rate: Spanned<String>,
    burst: Option<Spanned<i64>>,
    store: Option<Spanned<String>>,
    redis: Option<Spanned<String>>,
    redis_timeout: Option<Spanned<String>>,
    on_redis_error: Option<Spanned<String>>,
    max_keys: Option<Spanned<i64>>,
}

/// What a request is counted by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// The client address (`ip_filter` may have settled it from a trusted proxy).
    ClientIp,
    /// The `api_key` consumer; the client IP when there is none.
    Consumer,
    /// The matched route's name: one bucket shared by all clients of a route.
    Route,
    /// A request header's (first) value; the client IP when absent.
    Header(HeaderName),
    /// A top-level claim of the verified token; the client IP when absent.
    Claim(String),
}

/// What happens to requests while Redis cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnRedisError {
    /// Fail open: let requests through, without RateLimit fields.
    Allow,
    /// Fail closed: 503 `rate_limit_unavailable`.
    Deny,
    /// Enforce the same limit per instance until Redis is back.
    Local,
}

impl OnRedisError {
    fn as_str(self) -> &'static str {
        match self {
            OnRedisError::Allow => "allow",
            OnRedisError::Deny => "deny",
            OnRedisError::Local => "local",
        }
    }
}

/// Where the buckets live.
#[derive(Debug, Clone)]
pub enum StoreSpec {
    /// Per instance, in process (`local`).
    Memory,
    /// Shared through Redis (`redis`), with the outage behaviour.
    Redis { client: ::redis::Client, timeout: Duration, on_error: OnRedisError },
}

/// Validated `rate_limit` policy config.
#[derive(Debug, Clone)]
pub struct RateLimitSpec {
    /// The `[policy.NAME]` name: namespaces shared buckets in Redis.
    pub name: String,
    /// What a bucket belongs to.
    pub key: KeySource,
    /// How fast a bucket refills.
    pub rate: Rate,
    /// Bucket size: requests allowed at once.
    pub burst: u32,
    pub store: StoreSpec,
    /// In-memory buckets kept before the table is reset (bounded memory).
    pub max_keys: usize,
}

pub(super) fn parse(table: toml::de::ValueDeserializer<'_>) -> Result<RateLimitSpec, SpecError> {
    let raw = RawRateLimit::deserialize(table).map_err(SpecError::from_toml)?;
    let rate = parse_rate(&env_string(&raw.rate, "rate")?).map_err(|m| SpecError::at(raw.rate.span(), "rate", m))?;
    let key = match &raw.key {
        None => KeySource::ClientIp,
        Some(k) => key_source(k.get_ref()).ok_or_else(|| {
            SpecError::at(
                k.span(),
                "key",
                format!(
                    "`{}` is not a rate limit key; use \"client_ip\", \"consumer\", \"route\", \"header:NAME\" or \"claim:NAME\"",
                    k.get_ref()
                ),
            )
        })?,
    };
    let burst = match &raw.burst {
        None => rate.count,
        Some(b) if (1..=1_000_000_000).contains(b.get_ref()) => *b.get_ref() as u32,
        Some(b) => return Err(SpecError::at(b.span(), "burst", "must be between 1 and 1000000000")),
    };
    let max_keys = match &raw.max_keys {
        None => DEFAULT_MAX_KEYS,
        Some(m) if (1..=100_000_000).contains(m.get_ref()) => *m.get_ref() as usize,
        Some(m) => return Err(SpecError::at(m.span(), "max_keys", "must be between 1 and 100000000")),
    };
    let redis_only = [
        ("redis_timeout", raw.redis_timeout.as_ref().map(|v| v.span())),
        ("on_redis_error", raw.on_redis_error.as_ref().map(|v| v.span())),
    ];
    let store = match raw.store.as_ref().map(|s| (s.get_ref().as_str(), s.span())) {
        None | Some(("memory", _)) => {
            if let Some(url) = &raw.redis {
                return Err(SpecError::at(url.span(), "redis", "needs store = \"redis\""));
            }
            if let Some((key, Some(span))) = redis_only.into_iter().find(|(_, s)| s.is_some()) {
                return Err(SpecError::at(span, key, "needs store = \"redis\""));
            }
            StoreSpec::Memory
        }
        Some(("redis", span)) => {
            let Some(url) = &raw.redis else {
                return Err(SpecError::at(span, "redis", "store = \"redis\" needs redis = \"redis://HOST:PORT\""));
            };
            let text = env_string(url, "redis")?;
            let client = ::redis::Client::open(text.as_str())
                .map_err(|e| SpecError::at(url.span(), "redis", format!("`{text}` is not a Redis URL: {e}")))?;
            let timeout = match &raw.redis_timeout {
                None => DEFAULT_REDIS_TIMEOUT,
                Some(t) => parse_duration(&env_string(t, "redis_timeout")?)
                    .ok()
                    .filter(|d| !d.is_zero())
                    .ok_or_else(|| SpecError::at(t.span(), "redis_timeout", "must be a duration such as \"100ms\""))?,
            };
            let on_error = match raw.on_redis_error.as_ref().map(|v| (v.get_ref().as_str(), v.span())) {
                None | Some(("allow", _)) => OnRedisError::Allow,
                Some(("deny", _)) => OnRedisError::Deny,
                Some(("local", _)) => OnRedisError::Local,
                Some((other, span)) => {
                    return Err(SpecError::at(
                        span,
                        "on_redis_error",
                        format!("`{other}` is not a choice; use \"allow\", \"deny\" or \"local\""),
                    ));
                }
            };
            StoreSpec::Redis { client, timeout, on_error }
        }
        Some((other, span)) => {
            return Err(SpecError::at(span, "store", format!("`{other}` is not a store; use \"memory\" or \"redis\"")));
        }
    };
    Ok(RateLimitSpec { name: String::new(), key, rate, burst, store, max_keys })
}

fn key_source(text: &str) -> Option<KeySource> {
    Some(match text {
        "client_ip" => KeySource::ClientIp,
        "consumer" => KeySource::Consumer,
        "route" => KeySource::Route,
        _ => {
            if let Some(name) = text.strip_prefix("header:") {
                KeySource::Header(HeaderName::try_from(name).ok()?)
            } else {
                let claim = text.strip_prefix("claim:")?;
                if claim.is_empty() {
                    return None;
                }
                KeySource::Claim(claim.to_string())
            }
        }
    })
}

/// The bucket a request is counted in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RateKey {
    /// A client address: no allocation per request.
    Ip(IpAddr),
    /// A consumer, route, header or claim value (long values hashed).
    Text(Box<[u8]>),
}

impl RateKey {
    fn text(bytes: &[u8]) -> Self {
        if bytes.len() <= MAX_RAW_KEY {
            return RateKey::Text(bytes.into());
        }
        RateKey::Text(format!("#{:016x}:{}", fnv1a(bytes), bytes.len()).into_bytes().into())
    }

    /// Appends this key to a Redis key prefix (`ip:ADDR` or `k:VALUE`).
    fn write_redis_key(&self, out: &mut Vec<u8>) {
        match self {
            RateKey::Ip(ip) => out.extend_from_slice(format!("ip:{ip}").as_bytes()),
            RateKey::Text(t) => {
                out.extend_from_slice(b"k:");
                out.extend_from_slice(t);
            }
        }
    }
}

/// 64-bit FNV-1a: stable across processes and versions, unlike std's hasher,
/// so every instance maps a long value to the same Redis key.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

/// One rate-limit decision, in the units the response fields use. Small and
/// `Copy`: it rides in `RequestContext::rate_limit` from request to response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitStatus {
    /// Whether the request was let through.
    pub allowed: bool,
    /// Bucket size (`RateLimit-Limit`).
    pub limit: u32,
    /// Requests left right now (`RateLimit-Remaining`).
    pub remaining: u32,
    /// Seconds until the bucket is full again (`RateLimit-Reset`).
    pub reset_secs: u32,
    /// When refused: seconds until one request will be allowed (`Retry-After`).
    pub retry_after_secs: u32,
}

impl RateLimitStatus {
    /// A request let through with `remaining` left, full again after `reset`.
    pub fn allowed(limit: u32, remaining: u32, reset: Duration) -> Self {
        Self { allowed: true, limit, remaining, reset_secs: ceil_secs(reset), retry_after_secs: 0 }
    }

    /// A request refused; one is allowed again after `retry_after`.
    pub fn denied(limit: u32, retry_after: Duration, reset: Duration) -> Self {
        let retry_after_secs = ceil_secs(retry_after).max(1);
        Self {
            allowed: false,
            limit,
            remaining: 0,
            reset_secs: ceil_secs(reset).max(retry_after_secs),
            retry_after_secs,
        }
    }

    /// Whichever of two decisions leaves the client less room (the draft
    /// advises reporting the policy closest to exhaustion).
    fn tighter(self, other: Option<Self>) -> Self {
        match other {
            Some(o) if (o.allowed, o.remaining) < (self.allowed, self.remaining) => o,
            _ => self,
        }
    }

    /// Writes the RateLimit fields.
    pub fn write_headers(&self, headers: &mut HeaderMap) {
        headers.insert(RATELIMIT_LIMIT, HeaderValue::from(self.limit));
        headers.insert(RATELIMIT_REMAINING, HeaderValue::from(self.remaining));
        headers.insert(RATELIMIT_RESET, HeaderValue::from(self.reset_secs));
    }

    /// The 429 for a refused request, with `Retry-After`.
    pub fn rejection(&self, message: impl Into<String>) -> Rejection {
        let mut rejection = Rejection::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message);
        rejection.headers.insert(http::header::RETRY_AFTER, HeaderValue::from(self.retry_after_secs));
        rejection
    }
}

/// Whole seconds, rounded up (a client waiting that long will be let in).
fn ceil_secs(d: Duration) -> u32 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    secs.min(u64::from(u32::MAX)) as u32
}

enum Store {
    Local(Arc<LocalLimiter<RateKey>>),
    Redis { redis: Box<RedisStore>, on_error: OnRedisError, fallback: Option<Arc<LocalLimiter<RateKey>>> },
}

/// The running policy: its key extractor and its store.
pub struct RateLimitPolicy {
    key: KeySource,
    store: Store,
    message: String,
}

impl RateLimitPolicy {
    /// Builds the store once per config snapshot (a reload starts fresh local buckets).
    pub fn new(spec: &RateLimitSpec) -> Self {
        let local = || LocalLimiter::new(&spec.name, spec.rate, spec.burst, spec.max_keys);
        let store = match &spec.store {
            StoreSpec::Memory => Store::Local(local()),
            StoreSpec::Redis { client, timeout, on_error } => Store::Redis {
                redis: Box::new(
                    RedisStore::new(&spec.name, client.clone(), spec.rate.interval(), spec.burst, *timeout)
                        .with_fallback_name(on_error.as_str()),
                ),
                on_error: *on_error,
                fallback: (*on_error == OnRedisError::Local).then(local),
            },
        };
        Self { key: spec.key.clone(), store, message: format!("rate limit of {} exceeded", spec.rate) }
    }

    /// The bucket this request counts against.
    fn key(&self, parts: &http::request::Parts, ctx: &RequestContext) -> RateKey {
        let ip = RateKey::Ip(ctx.client_ip);
        match &self.key {
            KeySource::ClientIp => ip,
            KeySource::Consumer => ctx.consumer.as_deref().map_or(ip, |c| RateKey::text(c.as_bytes())),
            KeySource::Route => RateKey::text(ctx.route.as_deref().unwrap_or("").as_bytes()),
            KeySource::Header(name) => parts.headers.get(name).map_or(ip, |v| RateKey::text(v.as_bytes())),
            KeySource::Claim(name) => match ctx.claims.as_deref().and_then(|c| c.get(name)) {
                None | Some(serde_json::Value::Null) => ip,
                Some(serde_json::Value::String(s)) => RateKey::text(s.as_bytes()),
                Some(other) => RateKey::text(other.to_string().as_bytes()),
            },
        }
    }

    /// Takes one request from the request's bucket; 429 when it is empty.
    /// Async only for the Redis store, whose call is bounded by `redis_timeout`.
    pub async fn on_request(&self, parts: &mut http::request::Parts, ctx: &mut RequestContext) -> Verdict {
        let key = self.key(parts, ctx);
        let status = match &self.store {
            Store::Local(limiter) => limiter.check(&key),
            Store::Redis { redis, on_error, fallback } => match redis.check(&key).await {
                Some(status) => status,
                None => match (on_error, fallback) {
                    (OnRedisError::Local, Some(limiter)) => limiter.check(&key),
                    (OnRedisError::Deny, _) => {
                        let mut rejection = Rejection::new(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "rate_limit_unavailable",
                            "the rate limit store is unavailable",
                        );
                        rejection.headers.insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
                        return Verdict::Reject(rejection);
                    }
                    _ => return Verdict::Continue,
                },
            },
        };
        ctx.rate_limit = Some(status.tighter(ctx.rate_limit));
        if status.allowed { Verdict::Continue } else { Verdict::Reject(status.rejection(self.message.clone())) }
    }

    /// Adds the RateLimit fields to whatever response the request got
    /// (backend's, 429, or another policy's refusal after this one counted it).
    pub fn on_response(&self, headers: &mut HeaderMap, _status: StatusCode, ctx: &RequestContext) {
        if let Some(status) = &ctx.rate_limit {
            status.write_headers(headers);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_and_reject_nonsense() {
        assert_eq!(key_source("client_ip"), Some(KeySource::ClientIp));
        assert_eq!(key_source("header:x-api-key"), Some(KeySource::Header(HeaderName::from_static("x-api-key"))));
        assert_eq!(key_source("claim:sub"), Some(KeySource::Claim("sub".into())));
        for bad in ["ip", "header:", "header:bad name", "claim:", ""] {
            assert_eq!(key_source(bad), None, "{bad}");
        }
    }

    #[test]
    fn long_values_are_hashed_into_short_stable_keys() {
        let long = vec![b'a'; 10_000];
        let RateKey::Text(k) = RateKey::text(&long) else { panic!() };
        assert!(k.len() < 40);
        assert_eq!(RateKey::text(&long), RateKey::text(&long));
        assert_ne!(RateKey::text(&long), RateKey::text(&long[1..]));
        assert_eq!(RateKey::text(b"alice"), RateKey::Text(b"alice"[..].into()));
    }

    #[test]
    fn status_rounds_up_and_keeps_the_tighter_decision() {
        let ok = RateLimitStatus::allowed(10, 4, Duration::from_millis(1500));
        assert_eq!((ok.reset_secs, ok.retry_after_secs), (2, 0));
        let no = RateLimitStatus::denied(10, Duration::from_millis(10), Duration::from_millis(10));
        assert_eq!((no.retry_after_secs, no.reset_secs, no.remaining), (1, 1, 0));
        assert_eq!(ok.tighter(Some(no)), no);
        assert_eq!(no.tighter(Some(ok)), no);
        let tighter = RateLimitStatus::allowed(10, 1, Duration::ZERO);
        assert_eq!(ok.tighter(Some(tighter)), tighter);
        assert_eq!(ok.tighter(None), ok);
    }
}
