//! `kind = "headers"`: add, set or remove request and response headers.
//! Values may use `{request_id}`, `{client_ip}`, `{principal}`, `{route}`;
//! they are parsed once at load into literal and variable parts.
//!
//! ```toml
//! [policy.stamp]
//! kind = "headers"
//! request_set = { x-client-ip = "{client_ip}" }
//! request_remove = ["x-internal-debug"]
//! response_add = { x-served-by = "tollgate {request_id}" }
//! response_remove = ["server"]
//! ```

use std::collections::BTreeMap;

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use serde::Deserialize;
use toml::Spanned;

use super::{SpecError, Verdict, env_string};
use crate::model::RequestContext;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeaders {
    #[allow(dead_code)]
    kind: String,
    #[serde(default)]
    request_add: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    request_set: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    request_remove: Vec<Spanned<String>>,
    #[serde(default)]
    response_add: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    response_set: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    response_remove: Vec<Spanned<String>>,
}

/// A header value, possibly with per-request variables.
#[derive(Debug, Clone)]
enum Template {
    Fixed(HeaderValue),
    Parts(Vec<Part>),
}

#[derive(Debug, Clone)]
enum Part {
    Text(String),
    RequestId,
    ClientIp,
    Principal,
    Route,
}

/// One edit of a header map.
#[derive(Debug, Clone)]
enum Edit {
    Add(HeaderName, Template),
    Set(HeaderName, Template),
    Remove(HeaderName),
}

/// Validated `headers` policy config.
#[derive(Debug, Clone)]
pub struct HeadersSpec {
    request: Vec<Edit>,
    response: Vec<Edit>,
}

pub(super) fn parse(table: toml::de::ValueDeserializer<'_>) -> Result<HeadersSpec, SpecError> {
    let raw = RawHeaders::deserialize(table).map_err(SpecError::from_toml)?;
    let mut request = Vec::new();
    let mut response = Vec::new();
    for name in &raw.request_remove {
        request.push(Edit::Remove(header_name(name.get_ref(), name.span(), "request_remove")?));
    }
    for name in &raw.response_remove {
        response.push(Edit::Remove(header_name(name.get_ref(), name.span(), "response_remove")?));
    }
    for (key, map, is_request, set) in [
        ("request_set", &raw.request_set, true, true),
        ("request_add", &raw.request_add, true, false),
        ("response_set", &raw.response_set, false, true),
        ("response_add", &raw.response_add, false, false),
    ] {
        for (name, value) in map {
            let header = header_name(name, value.span(), key)?;
            let template = template(&env_string(value, key)?, value.span(), key)?;
            let edit = if set { Edit::Set(header, template) } else { Edit::Add(header, template) };
            if is_request { request.push(edit) } else { response.push(edit) }
        }
    }
    Ok(HeadersSpec { request, response })
}

fn header_name(name: &str, span: std::ops::Range<usize>, key: &str) -> Result<HeaderName, SpecError> {
    HeaderName::try_from(name).map_err(|_| SpecError::at(span, key, format!("`{name}` is not a header name")))
}

fn template(text: &str, span: std::ops::Range<usize>, key: &str) -> Result<Template, SpecError> {
    let mut parts = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else { break };
        let var = match &rest[open + 1..open + close] {
            "request_id" => Part::RequestId,
            "client_ip" => Part::ClientIp,
            "principal" => Part::Principal,
            "route" => Part::Route,
            _ => {
                parts.push(Part::Text(rest[..open + close + 1].to_string()));
                rest = &rest[open + close + 1..];
                continue;
            }
        };
        if open > 0 {
            parts.push(Part::Text(rest[..open].to_string()));
        }
        parts.push(var);
        rest = &rest[open + close + 1..];
    }
    if !rest.is_empty() {
        parts.push(Part::Text(rest.to_string()));
    }
    if parts.iter().all(|p| matches!(p, Part::Text(_))) {
        let value = HeaderValue::try_from(text).map_err(|_| SpecError::at(span, key, "not a valid header value"))?;
        return Ok(Template::Fixed(value));
    }
    Ok(Template::Parts(parts))
}

impl Template {
    fn render(&self, ctx: &RequestContext) -> Option<HeaderValue> {
        match self {
            Template::Fixed(v) => Some(v.clone()),
            Template::Parts(parts) => {
                let mut out = String::new();
                for part in parts {
                    match part {
                        Part::Text(t) => out.push_str(t),
                        Part::RequestId => out.push_str(ctx.id_str()),
                        Part::ClientIp => out.push_str(&ctx.client_ip.to_string()),
                        Part::Principal => out.push_str(ctx.principal.as_deref().unwrap_or("")),
                        Part::Route => out.push_str(ctx.route.as_deref().unwrap_or("")),
                    }
                }
                HeaderValue::try_from(out).ok()
            }
        }
    }
}

fn apply(edits: &[Edit], headers: &mut HeaderMap, ctx: &RequestContext) {
    for edit in edits {
        match edit {
            Edit::Remove(name) => {
                headers.remove(name);
            }
            Edit::Set(name, t) => {
                if let Some(v) = t.render(ctx) {
                    headers.insert(name, v);
                }
            }
            Edit::Add(name, t) => {
                if let Some(v) = t.render(ctx) {
                    headers.append(name, v);
                }
            }
        }
    }
}

/// The running policy.
pub struct HeadersPolicy {
    spec: HeadersSpec,
}

impl HeadersPolicy {
    pub fn new(spec: &HeadersSpec) -> Self {
        Self { spec: spec.clone() }
    }

    pub fn on_request(&self, parts: &mut http::request::Parts, ctx: &mut RequestContext) -> Verdict {
        apply(&self.spec.request, &mut parts.headers, ctx);
        Verdict::Continue
    }

    pub fn on_response(&self, headers: &mut HeaderMap, _status: StatusCode, ctx: &RequestContext) {
        apply(&self.spec.response, headers, ctx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_keep_unknown_braces_as_text() {
        match template("a {nope} b", 0..1, "k").unwrap() {
            Template::Fixed(v) => assert_eq!(v, "a {nope} b"),
            Template::Parts(_) => panic!("no variables"),
        }
        match template("id={request_id};", 0..1, "k").unwrap() {
            Template::Parts(p) => assert_eq!(p.len(), 3),
            Template::Fixed(_) => panic!("has a variable"),
        }
    }
}
