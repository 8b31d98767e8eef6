//! `kind = "cors"`: Cross-Origin Resource Sharing, answered by the gateway
//! (the CORS protocol of the Fetch standard, §3.2).
//!
//! - A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`)
//!   is answered here with 204 and never reaches the backend. For an origin
//!   that is not allowed the 204 carries no `Access-Control-Allow-*` headers,
//!   so the browser refuses the real request; this is what tower-http, nginx
//!   recipes and Envoy (which lets such requests through untouched) give a
//!   browser too, and it tells a probing script nothing a 403 would not.
//! - Every other response on the route (the backend's or one the gateway made,
//!   such as a 401) gets `Access-Control-Allow-Origin` and friends when the
//!   request's `Origin` is allowed. The gateway owns CORS on such routes:
//!   `Access-Control-Allow-Origin`, `-Credentials` and `-Expose-Headers` sent
//!   by the backend are replaced.
//! - `*` is never sent with credentials (browsers refuse it): the origin is
//!   echoed with `Vary: Origin`, and `allow_origins = ["*"]` together with
//!   `allow_credentials = true` is a config error, since it would let every
//!   site read credentialed responses (CWE-942).
//!
//! ```toml
//! [policy.browser]
//! kind = "cors"
//! allow_origins = ["https://app.example", "https://*.example.com"]
//! allow_methods = ["GET", "POST"]
//! allow_headers = ["content-type", "x-grpc-web", "x-user-agent", "grpc-timeout"]
//! expose_headers = ["grpc-status", "grpc-message"]   # gRPC-Web needs these
//! allow_credentials = true
//! max_age = "10m"
//! ```

use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE, ACCESS_CONTROL_REQUEST_HEADERS,
    ACCESS_CONTROL_REQUEST_METHOD, ORIGIN, VARY,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use serde::Deserialize;
use toml::Spanned;

use super::{SpecError, Verdict, env_string};
use crate::model::RequestContext;

/// Browsers cap the preflight cache anyway (Firefox at 24 h, Chromium at 2 h).
const MAX_AGE_LIMIT_SECS: u64 = 86_400;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCors {
    #[allow(dead_code)]
    kind: String,
    allow_origins: Spanned<Vec<Spanned<String>>>,
    allow_methods: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    allow_headers: Vec<Spanned<String>>,
    #[serde(default)]
    expose_headers: Vec<Spanned<String>>,
    allow_credentials: Option<Spanned<bool>>,
    /// Seconds as an integer, or a duration string like `"10m"`.
    max_age: Option<Spanned<toml::Value>>,
}

/// One entry of `allow_origins`.
#[derive(Debug, Clone)]
enum OriginRule {
    /// `"*"`: any origin.
    Any,
    /// `"https://app.example"`, compared ignoring ASCII case.
    Exact(String),
    /// `"https://*.example.com"`: `prefix`, then one or more host characters
    /// (letters, digits, `-`, `.`), then `suffix`.
    Pattern { prefix: String, suffix: String },
}

impl OriginRule {
    fn matches(&self, origin: &str) -> bool {
        match self {
            OriginRule::Any => true,
            OriginRule::Exact(exact) => origin.eq_ignore_ascii_case(exact),
            OriginRule::Pattern { prefix, suffix } => {
                origin.len() > prefix.len() + suffix.len()
                    && origin.is_char_boundary(prefix.len())
                    && origin.is_char_boundary(origin.len() - suffix.len())
                    && origin[..prefix.len()].eq_ignore_ascii_case(prefix)
                    && origin[origin.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
                    && origin[prefix.len()..origin.len() - suffix.len()]
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            }
        }
    }
}

/// A preflight answer list: fixed at load, or `"*"` mirrored from the request.
#[derive(Debug, Clone)]
enum AllowList {
    Fixed(HeaderValue),
    /// Echo what the preflight asked for. Used for `"*"` because the
    /// wildcard value means nothing to browsers on credentialed requests and
    /// never covers `Authorization` (Fetch §3.2.3).
    Mirror,
}

/// Validated `cors` policy config.
#[derive(Debug, Clone)]
pub struct CorsSpec {
    origins: Vec<OriginRule>,
    methods: AllowList,
    headers: Option<AllowList>,
    expose: Option<HeaderValue>,
    credentials: bool,
    max_age: Option<HeaderValue>,
}

/// Reads and checks one `[policy.NAME]` of this kind, precomputing the
/// header values every response will carry.
pub(super) fn parse(table: toml::de::ValueDeserializer<'_>) -> Result<CorsSpec, SpecError> {
    let raw = RawCors::deserialize(table).map_err(SpecError::from_toml)?;
    let credentials = raw.allow_credentials.as_ref().is_some_and(|c| *c.get_ref());

    let mut origins = Vec::new();
    for entry in raw.allow_origins.get_ref() {
        let text = env_string(entry, "allow_origins")?;
        let rule = origin_rule(&text).map_err(|m| SpecError::at(entry.span(), "allow_origins", m))?;
        if matches!(rule, OriginRule::Any) && credentials {
            return Err(SpecError::at(
                entry.span(),
                "allow_origins",
                "`*` with `allow_credentials = true` would let every site read credentialed responses; \
                 list the origins (patterns like \"https://*.example.com\" work)",
            ));
        }
        origins.push(rule);
    }
    if origins.is_empty() {
        return Err(SpecError::at(raw.allow_origins.span(), "allow_origins", "needs at least one origin"));
    }

    let methods = match &raw.allow_methods {
        None => AllowList::Fixed(HeaderValue::from_static("GET, HEAD, POST")),
        Some(list) => {
            let mut names = Vec::new();
            for m in list {
                let text = m.get_ref().trim().to_ascii_uppercase();
                if Method::from_bytes(text.as_bytes()).is_err() {
                    return Err(SpecError::at(m.span(), "allow_methods", format!("`{text}` is not a method")));
                }
                names.push(text);
            }
            join_list(names, list, "allow_methods")?
        }
    };
    let headers = match raw.allow_headers.is_empty() {
        true => None,
        false => {
            Some(join_list(header_names(&raw.allow_headers, "allow_headers")?, &raw.allow_headers, "allow_headers")?)
        }
    };
    let expose = match raw.expose_headers.is_empty() {
        true => None,
        false => {
            let names = header_names(&raw.expose_headers, "expose_headers")?;
            if credentials && let Some(star) = raw.expose_headers.iter().find(|h| h.get_ref().trim() == "*") {
                return Err(SpecError::at(
                    star.span(),
                    "expose_headers",
                    "`*` is a literal header name on credentialed requests (Fetch §3.2.3); list the headers",
                ));
            }
            Some(header_value(&names.join(", "), &raw.expose_headers, "expose_headers")?)
        }
    };
    let max_age = match &raw.max_age {
        None => None,
        Some(v) => Some(max_age(v)?),
    };
    Ok(CorsSpec { origins, methods, headers, expose, credentials, max_age })
}

/// Checks an `allow_origins` entry: `*`, `null`, or `scheme://host[:port]`
/// with at most one `*` in the host or port.
fn origin_rule(text: &str) -> Result<OriginRule, String> {
    let text = text.trim();
    if text == "*" {
        return Ok(OriginRule::Any);
    }
    if text == "null" {
        // Sandboxed frames and file: pages; only ever allowed by name.
        return Ok(OriginRule::Exact(text.to_string()));
    }
    let Some((scheme, rest)) = text.split_once("://") else {
        return Err(format!("`{text}` is not an origin; write scheme://host[:port], e.g. \"https://app.example\""));
    };
    if scheme.is_empty() || !scheme.bytes().all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b)) {
        return Err(format!("`{text}` has no valid scheme"));
    }
    if rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ']) {
        return Err(format!(
            "`{text}` is not an origin: an origin is scheme://host[:port], with no path or trailing `/`"
        ));
    }
    match rest.matches('*').count() {
        0 => Ok(OriginRule::Exact(text.to_ascii_lowercase())),
        1 => {
            let star = scheme.len() + 3 + rest.find('*').unwrap_or(0);
            Ok(OriginRule::Pattern {
                prefix: text[..star].to_ascii_lowercase(),
                suffix: text[star + 1..].to_ascii_lowercase(),
            })
        }
        _ => Err(format!("`{text}` has more than one `*`")),
    }
}

fn header_names(list: &[Spanned<String>], key: &str) -> Result<Vec<String>, SpecError> {
    list.iter()
        .map(|h| {
            let text = h.get_ref().trim();
            if text == "*" {
                return Ok(text.to_string());
            }
            HeaderName::try_from(text)
                .map(|n| n.as_str().to_string())
                .map_err(|_| SpecError::at(h.span(), key, format!("`{text}` is not a header name")))
        })
        .collect()
}

/// `"*"` alone → mirror; otherwise the names joined as one header value.
fn join_list(names: Vec<String>, list: &[Spanned<String>], key: &str) -> Result<AllowList, SpecError> {
    if let Some(i) = names.iter().position(|n| n == "*") {
        if names.len() > 1 {
            return Err(SpecError::at(list[i].span(), key, "`*` already allows everything; list it alone"));
        }
        return Ok(AllowList::Mirror);
    }
    Ok(AllowList::Fixed(header_value(&names.join(", "), list, key)?))
}

fn header_value(text: &str, list: &[Spanned<String>], key: &str) -> Result<HeaderValue, SpecError> {
    HeaderValue::try_from(text).map_err(|_| {
        let span = list.first().map(|s| s.span()).unwrap_or(0..0);
        SpecError::at(span, key, "not a valid header value")
    })
}

fn max_age(value: &Spanned<toml::Value>) -> Result<HeaderValue, SpecError> {
    let secs = match value.get_ref() {
        toml::Value::Integer(n) if *n >= 0 => *n as u64,
        toml::Value::String(s) => {
            crate::config::parse_duration(s).map_err(|m| SpecError::at(value.span(), "max_age", m))?.as_secs()
        }
        _ => {
            return Err(SpecError::at(value.span(), "max_age", "write seconds (600) or a duration (\"10m\")"));
        }
    };
    if secs > MAX_AGE_LIMIT_SECS {
        return Err(SpecError::at(
            value.span(),
            "max_age",
            format!("at most {MAX_AGE_LIMIT_SECS} seconds (browsers cap it lower anyway)"),
        ));
    }
    Ok(HeaderValue::from(secs))
}

/// The running policy.
pub struct CorsPolicy {
    spec: CorsSpec,
    /// `Access-Control-Allow-Origin: *` rather than the echoed origin.
    wildcard: bool,
}

impl CorsPolicy {
    /// Builds the running policy; whether it answers `*` is settled here once.
    pub fn new(spec: &CorsSpec) -> Self {
        let wildcard = !spec.credentials && spec.origins.iter().any(|o| matches!(o, OriginRule::Any));
        Self { spec: spec.clone(), wildcard }
    }

    fn allows(&self, origin: &HeaderValue) -> bool {
        origin.to_str().is_ok_and(|o| self.spec.origins.iter().any(|rule| rule.matches(o)))
    }

    /// Answers preflights (204, never forwarded); lets everything else through.
    pub fn on_request(&self, parts: &http::request::Parts, _ctx: &mut RequestContext) -> Verdict {
        if parts.method != Method::OPTIONS {
            return Verdict::Continue;
        }
        let (Some(origin), Some(method)) =
            (parts.headers.get(ORIGIN), parts.headers.get(ACCESS_CONTROL_REQUEST_METHOD))
        else {
            return Verdict::Continue;
        };
        let mut headers = HeaderMap::new();
        // The answer depends on these too, for any cache in between.
        headers.insert(VARY, HeaderValue::from_static("Access-Control-Request-Method, Access-Control-Request-Headers"));
        if self.allows(origin) {
            let methods = match &self.spec.methods {
                AllowList::Fixed(v) => v.clone(),
                AllowList::Mirror => method.clone(),
            };
            headers.insert(ACCESS_CONTROL_ALLOW_METHODS, methods);
            let requested = parts.headers.get(ACCESS_CONTROL_REQUEST_HEADERS);
            match (&self.spec.headers, requested) {
                (Some(AllowList::Fixed(v)), _) => {
                    headers.insert(ACCESS_CONTROL_ALLOW_HEADERS, v.clone());
                }
                (Some(AllowList::Mirror), Some(asked)) => {
                    headers.insert(ACCESS_CONTROL_ALLOW_HEADERS, asked.clone());
                }
                _ => {}
            }
            if let Some(age) = &self.spec.max_age {
                headers.insert(ACCESS_CONTROL_MAX_AGE, age.clone());
            }
        }
        // Allow-Origin and -Credentials are added on the response side, like on every response.
        Verdict::Respond(StatusCode::NO_CONTENT, headers)
    }

    /// Adds `Access-Control-Allow-Origin` (and `-Credentials`, `-Expose-Headers`)
    /// to every response whose request came from an allowed origin.
    pub fn on_response(&self, headers: &mut HeaderMap, _status: StatusCode, ctx: &RequestContext) {
        headers.remove(ACCESS_CONTROL_ALLOW_ORIGIN);
        headers.remove(ACCESS_CONTROL_ALLOW_CREDENTIALS);
        headers.remove(ACCESS_CONTROL_EXPOSE_HEADERS);
        if !self.wildcard && !varies_by_origin(headers) {
            // Tells caches the answer differs per origin, even to requests without one.
            headers.append(VARY, HeaderValue::from_static("Origin"));
        }
        let Some(origin) = ctx.origin.as_ref().filter(|o| self.allows(o)) else { return };
        let allow = if self.wildcard { HeaderValue::from_static("*") } else { origin.clone() };
        headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, allow);
        if self.spec.credentials {
            headers.insert(ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
        }
        if let Some(expose) = &self.spec.expose {
            headers.insert(ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone());
        }
    }
}

/// Whether `Vary` already names `Origin` (or is `*`).
fn varies_by_origin(headers: &HeaderMap) -> bool {
    headers.get_all(VARY).iter().any(|v| {
        v.to_str().is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case("origin") || t.trim() == "*"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(toml_text: &str) -> Result<CorsSpec, SpecError> {
        let text = format!("kind = \"cors\"\n{toml_text}");
        let doc = toml::de::DeTable::parse(&text).unwrap();
        let span = doc.span();
        parse(toml::Spanned::new(span, toml::de::DeValue::Table(doc.into_inner())).into())
    }

    fn policy(toml_text: &str) -> CorsPolicy {
        CorsPolicy::new(&spec(toml_text).unwrap())
    }

    fn origin(s: &'static str) -> HeaderValue {
        HeaderValue::from_static(s)
    }

    #[test]
    fn origins_match_exactly_or_by_pattern() {
        let p = policy("allow_origins = [\"https://App.example\", \"https://*.example.com\", \"http://localhost:*\"]");
        assert!(p.allows(&origin("https://app.example")));
        assert!(!p.allows(&origin("http://app.example")));
        assert!(!p.allows(&origin("https://app.example.evil")));
        assert!(p.allows(&origin("https://a.example.com")));
        assert!(p.allows(&origin("https://a.b.example.com")));
        assert!(!p.allows(&origin("https://example.com")));
        assert!(!p.allows(&origin("https://evil.com/.example.com")));
        assert!(!p.allows(&origin("https://evil.com:1@x.example.com")));
        assert!(!p.allows(&origin("https://aexample.com")));
        assert!(p.allows(&origin("http://localhost:5173")));
        assert!(!p.allows(&origin("null")));
    }

    #[test]
    fn bad_configs_are_located_errors() {
        let e = spec("allow_origins = [\"https://app.example/\"]").unwrap_err();
        assert_eq!(e.key, "allow_origins");
        assert!(e.span.is_some());
        let e = spec("allow_origins = [\"*\"]\nallow_credentials = true").unwrap_err();
        assert!(e.message.contains("every site"), "{}", e.message);
        assert_eq!(spec("allow_origins = []").unwrap_err().key, "allow_origins");
        assert_eq!(spec("allow_origins = [\"*\"]\nallow_methods = [\"GE T\"]").unwrap_err().key, "allow_methods");
        assert_eq!(spec("allow_origins = [\"*\"]\nallow_headers = [\"a b\"]").unwrap_err().key, "allow_headers");
        assert_eq!(spec("allow_origins = [\"*\"]\nmax_age = 100000").unwrap_err().key, "max_age");
        assert_eq!(spec("allow_origins = [\"*\"]\nmax_age = \"soon\"").unwrap_err().key, "max_age");
        let e = spec("allow_origins = [\"https://a.example\"]\nallow_credentials = true\nexpose_headers = [\"*\"]");
        assert_eq!(e.unwrap_err().key, "expose_headers");
        assert!(spec("allow_origins = [\"*\"]\nallow_origin = []").unwrap_err().message.contains("unknown field"));
    }

    fn request(method: &str, headers: &[(&'static str, &'static str)]) -> http::request::Parts {
        let mut builder = http::Request::builder().method(method).uri("/x");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap().into_parts().0
    }

    #[test]
    fn preflights_are_answered_and_other_requests_pass() {
        let p = policy("allow_origins = [\"https://app.example\"]\nallow_headers = [\"*\"]\nmax_age = 60");
        let mut ctx = super::super::test_context();
        let preflight = request(
            "OPTIONS",
            &[
                ("origin", "https://app.example"),
                ("access-control-request-method", "PUT"),
                ("access-control-request-headers", "authorization"),
            ],
        );
        let Verdict::Respond(status, headers) = p.on_request(&preflight, &mut ctx) else { panic!("not answered") };
        assert_eq!(status, StatusCode::NO_CONTENT);
        assert_eq!(headers[ACCESS_CONTROL_ALLOW_METHODS], "GET, HEAD, POST");
        assert_eq!(headers[ACCESS_CONTROL_ALLOW_HEADERS], "authorization");
        assert_eq!(headers[ACCESS_CONTROL_MAX_AGE], "60");

        let other =
            request("OPTIONS", &[("origin", "https://other.example"), ("access-control-request-method", "PUT")]);
        let Verdict::Respond(_, headers) = p.on_request(&other, &mut ctx) else { panic!("not answered") };
        assert!(!headers.contains_key(ACCESS_CONTROL_ALLOW_METHODS));

        for not_preflight in [request("OPTIONS", &[("origin", "https://app.example")]), request("GET", &[])] {
            assert!(matches!(p.on_request(&not_preflight, &mut ctx), Verdict::Continue));
        }
    }

    #[test]
    fn responses_get_allow_origin_only_for_allowed_origins_and_backend_values_are_replaced() {
        let p = policy("allow_origins = [\"https://app.example\"]\nallow_credentials = true");
        let mut ctx = super::super::test_context();
        let mut headers = HeaderMap::new();
        headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
        headers.insert(VARY, HeaderValue::from_static("accept-encoding"));
        p.on_response(&mut headers, StatusCode::OK, &ctx);
        assert!(!headers.contains_key(ACCESS_CONTROL_ALLOW_ORIGIN), "no Origin: nothing allowed");
        assert_eq!(headers.get_all(VARY).iter().count(), 2);

        ctx.origin = Some(origin("https://app.example"));
        let mut headers = HeaderMap::new();
        headers.insert(VARY, HeaderValue::from_static("Origin"));
        p.on_response(&mut headers, StatusCode::UNAUTHORIZED, &ctx);
        assert_eq!(headers[ACCESS_CONTROL_ALLOW_ORIGIN], "https://app.example");
        assert_eq!(headers[ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
        assert_eq!(headers.get_all(VARY).iter().count(), 1, "Vary: Origin not repeated");
    }

    #[test]
    fn max_age_takes_seconds_or_a_duration() {
        assert_eq!(spec("allow_origins = [\"*\"]\nmax_age = 600").unwrap().max_age.unwrap(), "600");
        assert_eq!(spec("allow_origins = [\"*\"]\nmax_age = \"10m\"").unwrap().max_age.unwrap(), "600");
    }
}
