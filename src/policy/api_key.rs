//! `kind = "api_key"`: a static key in a header or query parameter names the
//! calling consumer.
//!
//! Only SHA-256 digests of the keys are kept in memory, and a presented key
//! is compared against every stored digest in constant time, so neither a
//! memory dump nor response timing gives a key away. Keys are listed inline
//! (`consumer = "key"`, usually through `${ENV}`) or in a file of
//! `consumer:sha256hex` lines, so the file holds no secret at all.
//!
//! ```toml
//! [policy.keys]
//! kind = "api_key"
//! header = "x-api-key"              # or query = "api_key" (both: header wins)
//! keys = { alice = "${ALICE_KEY}" }
//! keys_file = "/etc/tollgate/keys"  # lines `bob:9f86d081884c7d65...`
//! strip_key = true                  # don't forward the key upstream
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;

use http::{HeaderName, HeaderValue, StatusCode, header};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};
use toml::Spanned;

use super::{Rejection, SpecError, Verdict, env_string};
use crate::model::RequestContext;

/// Shortest inline key accepted: a key is a password that never rotates by
/// itself, so anything guessable defeats the policy.
const MIN_KEY_LEN: usize = 16;

/// Header read when neither `header` nor `query` is configured.
const DEFAULT_HEADER: &str = "x-api-key";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApiKey {
    #[allow(dead_code)]
    kind: String,
    header: Option<Spanned<String>>,
    query: Option<Spanned<String>>,
    #[serde(default)]
    keys: BTreeMap<String, Spanned<String>>,
    keys_file: Option<Spanned<String>>,
    strip_key: Option<bool>,
    optional: Option<bool>,
    realm: Option<Spanned<String>>,
}

/// One accepted key: its digest and the consumer it names.
#[derive(Debug, Clone)]
struct StoredKey {
    digest: [u8; 32],
    consumer: Arc<str>,
}

/// Validated `api_key` policy config.
#[derive(Debug, Clone)]
pub struct ApiKeySpec {
    header: Option<HeaderName>,
    query: Option<String>,
    keys: Arc<[StoredKey]>,
    strip_key: bool,
    optional: bool,
    /// The `WWW-Authenticate` challenge sent with a 401.
    challenge: HeaderValue,
}

pub(super) fn parse(table: toml::de::ValueDeserializer<'_>) -> Result<ApiKeySpec, SpecError> {
    let raw = RawApiKey::deserialize(table).map_err(SpecError::from_toml)?;
    let header = match &raw.header {
        Some(h) => Some(
            HeaderName::try_from(h.get_ref().as_str())
                .map_err(|_| SpecError::at(h.span(), "header", format!("`{}` is not a header name", h.get_ref())))?,
        ),
        None if raw.query.is_none() => Some(HeaderName::from_static(DEFAULT_HEADER)),
        None => None,
    };
    let query = match &raw.query {
        Some(q) if q.get_ref().is_empty() => return Err(SpecError::at(q.span(), "query", "must not be empty")),
        Some(q) => Some(q.get_ref().clone()),
        None => None,
    };

    let mut keys: Vec<StoredKey> = Vec::new();
    let mut add = |key: StoredKey, span: std::ops::Range<usize>, at: &str| -> Result<(), SpecError> {
        // Load time, not per request: a plain comparison is fine here.
        if let Some(other) = keys.iter().find(|k| k.digest == key.digest) {
            return Err(SpecError::at(
                span,
                at,
                format!("consumers `{}` and `{}` have the same key", other.consumer, key.consumer),
            ));
        }
        keys.push(key);
        Ok(())
    };
    for (consumer, value) in &raw.keys {
        let key = env_string(value, "keys")?;
        if key.len() < MIN_KEY_LEN {
            return Err(SpecError::at(
                value.span(),
                &format!("keys.{consumer}"),
                format!("key is shorter than {MIN_KEY_LEN} characters; use a long random key"),
            ));
        }
        let stored =
            StoredKey { digest: Sha256::digest(key.as_bytes()).into(), consumer: Arc::from(consumer.as_str()) };
        add(stored, value.span(), &format!("keys.{consumer}"))?;
    }
    if let Some(file) = &raw.keys_file {
        let path = env_string(file, "keys_file")?;
        let text = std::fs::read_to_string(&path)
            .map_err(|e| SpecError::at(file.span(), "keys_file", format!("cannot read `{path}`: {e}")))?;
        for stored in parse_keys_file(&text).map_err(|m| SpecError::at(file.span(), "keys_file", m))? {
            add(stored, file.span(), "keys_file")?;
        }
    }
    if keys.is_empty() {
        return Err(SpecError { span: None, key: "keys".into(), message: "needs `keys` or `keys_file`".into() });
    }

    let realm = match &raw.realm {
        Some(r) => super::jwt::quotable(&env_string(r, "realm")?).map_err(|m| SpecError::at(r.span(), "realm", m))?,
        None => "tollgate".to_string(),
    };
    let source = match (&header, &query) {
        (Some(h), _) => format!("header=\"{h}\""),
        (None, Some(q)) => format!("query=\"{}\"", q.replace(['"', '\\'], "")),
        (None, None) => unreachable!("a default header is set"),
    };
    let challenge = HeaderValue::try_from(format!("ApiKey realm=\"{realm}\", {source}")).map_err(|_| SpecError {
        span: None,
        key: "query".into(),
        message: "not usable in a header".into(),
    })?;

    Ok(ApiKeySpec {
        header,
        query,
        keys: keys.into(),
        strip_key: raw.strip_key.unwrap_or(false),
        optional: raw.optional.unwrap_or(false),
        challenge,
    })
}

/// Parses `consumer:sha256hex` lines; blank lines and `#` comments are skipped.
fn parse_keys_file(text: &str) -> Result<Vec<StoredKey>, String> {
    let mut keys = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (consumer, hex) =
            line.rsplit_once(':').ok_or_else(|| format!("line {}: expected `consumer:sha256hex`", n + 1))?;
        let consumer = consumer.trim();
        if consumer.is_empty() {
            return Err(format!("line {}: the consumer name is empty", n + 1));
        }
        let digest = decode_sha256_hex(hex.trim())
            .ok_or_else(|| format!("line {}: `{}` is not 64 hex digits (a SHA-256 digest)", n + 1, hex.trim()))?;
        keys.push(StoredKey { digest, consumer: Arc::from(consumer) });
    }
    Ok(keys)
}

fn decode_sha256_hex(hex: &str) -> Option<[u8; 32]> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

/// Decodes `%XX` escapes and `+` (application/x-www-form-urlencoded).
fn form_decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    out
}

/// Why no usable key was found in a request.
enum Presented {
    Missing,
    Repeated,
    Key(Vec<u8>),
}

/// The running policy.
pub struct ApiKeyPolicy {
    spec: ApiKeySpec,
}

impl ApiKeyPolicy {
    /// Wraps the validated spec; all precomputation happened at load.
    pub fn new(spec: &ApiKeySpec) -> Self {
        Self { spec: spec.clone() }
    }

    /// Finds the key, checks it, records the consumer and optionally strips the key.
    pub fn on_request(&self, parts: &mut http::request::Parts, ctx: &mut RequestContext) -> Verdict {
        let presented = self.presented(parts);
        let key = match presented {
            Presented::Key(key) => key,
            Presented::Missing if self.spec.optional => return Verdict::Continue,
            Presented::Missing => return Verdict::Reject(self.unauthenticated("missing")),
            // RFC 6750 §3.1 treats several credentials in one request as a malformed request.
            Presented::Repeated => {
                return Verdict::Reject(Rejection::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "the API key is given more than once",
                ));
            }
        };
        let Some(consumer) = self.lookup(&key) else {
            return Verdict::Reject(self.unauthenticated("unknown"));
        };
        ctx.consumer = Some(Arc::clone(&consumer));
        if ctx.principal.is_none() {
            ctx.principal = Some(consumer);
        }
        if self.spec.strip_key {
            self.strip(parts);
        }
        Verdict::Continue
    }

    /// The key from the header (first) or the query parameter.
    fn presented(&self, parts: &http::request::Parts) -> Presented {
        if let Some(name) = &self.spec.header {
            let mut values = parts.headers.get_all(name).iter();
            if let Some(first) = values.next() {
                if values.next().is_some() {
                    return Presented::Repeated;
                }
                return Presented::Key(first.as_bytes().to_vec());
            }
        }
        if let (Some(param), Some(query)) = (&self.spec.query, parts.uri.query()) {
            let mut found = None;
            for pair in query.split('&') {
                let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                if form_decode(name) == param.as_bytes() {
                    if found.is_some() {
                        return Presented::Repeated;
                    }
                    found = Some(form_decode(value));
                }
            }
            if let Some(key) = found {
                return Presented::Key(key);
            }
        }
        Presented::Missing
    }

    /// The consumer whose key digest equals the presented key's, looking at
    /// every stored digest whatever matched so timing tells nothing.
    fn lookup(&self, key: &[u8]) -> Option<Arc<str>> {
        let digest: [u8; 32] = Sha256::digest(key).into();
        let mut index = u32::MAX;
        for (i, stored) in self.spec.keys.iter().enumerate() {
            index.conditional_assign(&(i as u32), stored.digest.ct_eq(&digest));
        }
        self.spec.keys.get(index as usize).map(|k| Arc::clone(&k.consumer))
    }

    /// Removes the key so the backend never sees the credential.
    fn strip(&self, parts: &mut http::request::Parts) {
        if let Some(name) = &self.spec.header {
            parts.headers.remove(name);
        }
        let (Some(param), Some(pq)) = (&self.spec.query, parts.uri.path_and_query()) else { return };
        let Some(query) = pq.query() else { return };
        let kept: Vec<&str> = query
            .split('&')
            .filter(|pair| form_decode(pair.split_once('=').map_or(*pair, |(n, _)| n)) != param.as_bytes())
            .collect();
        let rebuilt = if kept.is_empty() { pq.path().to_string() } else { format!("{}?{}", pq.path(), kept.join("&")) };
        let mut uri = std::mem::take(&mut parts.uri).into_parts();
        uri.path_and_query = rebuilt.parse().ok();
        parts.uri = http::Uri::from_parts(uri).unwrap_or_default();
    }

    /// 401 with the same message for a missing and a wrong key (RFC 9110
    /// §15.5.2: a 401 carries a challenge).
    fn unauthenticated(&self, why: &'static str) -> Rejection {
        tracing::debug!(why, "API key refused");
        let mut rejection = Rejection::new(StatusCode::UNAUTHORIZED, "unauthenticated", "a valid API key is required");
        rejection.headers.insert(header::WWW_AUTHENTICATE, self.spec.challenge.clone());
        rejection
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(text: &str) -> Result<ApiKeySpec, SpecError> {
        match crate::policy::spec_from_str(text)? {
            crate::policy::PolicySpec::ApiKey(s) => Ok(s),
            _ => unreachable!("an api_key table"),
        }
    }

    #[test]
    fn keys_file_lines_hold_digests_only() {
        let keys =
            parse_keys_file("# team keys\n\nbob: 9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08\n")
                .unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(&*keys[0].consumer, "bob");
        assert_eq!(keys[0].digest, <[u8; 32]>::from(Sha256::digest(b"test")));
        assert!(parse_keys_file("bob:abc").unwrap_err().contains("line 1"));
        assert!(parse_keys_file("no separator here").is_err());
    }

    #[test]
    fn short_and_duplicate_keys_are_config_errors() {
        assert!(spec("kind = \"api_key\"\nkeys = { a = \"short\" }").unwrap_err().message.contains("shorter"));
        let dup = spec("kind = \"api_key\"\nkeys = { a = \"0123456789abcdef\", b = \"0123456789abcdef\" }");
        assert!(dup.unwrap_err().message.contains("same key"));
        assert!(spec("kind = \"api_key\"\nheader = \"x-key\"").unwrap_err().message.contains("keys"));
        assert!(spec("kind = \"api_key\"\nkeys = {}\nbogus = 1").is_err());
    }

    #[test]
    fn lookup_finds_the_consumer_of_a_key() {
        let policy = ApiKeyPolicy::new(
            &spec("kind = \"api_key\"\nkeys = { alice = \"alice-key-0123456789\", bob = \"bob-key-0123456789\" }")
                .unwrap(),
        );
        assert_eq!(policy.lookup(b"bob-key-0123456789").as_deref(), Some("bob"));
        assert_eq!(policy.lookup(b"alice-key-0123456789").as_deref(), Some("alice"));
        assert_eq!(policy.lookup(b"alice-key-012345678"), None);
        assert_eq!(policy.lookup(b""), None);
    }

    #[test]
    fn query_keys_are_form_decoded_and_stripped() {
        assert_eq!(form_decode("a%2Bb+c%zz%4"), b"a+b c%zz%4");
        let policy = ApiKeyPolicy::new(
            &spec("kind = \"api_key\"\nquery = \"api_key\"\nstrip_key = true\nkeys = { alice = \"alice key+0123456789\" }")
                .unwrap(),
        );
        let (mut parts, ()) =
            http::Request::get("/x?a=1&api_key=alice%20key%2B0123456789&b=2").body(()).unwrap().into_parts();
        match policy.presented(&parts) {
            Presented::Key(k) => assert_eq!(policy.lookup(&k).as_deref(), Some("alice")),
            _ => panic!("key in the query"),
        }
        policy.strip(&mut parts);
        assert_eq!(parts.uri, "/x?a=1&b=2");
        let (parts, ()) = http::Request::get("/x?api_key=a&api_key=b").body(()).unwrap().into_parts();
        assert!(matches!(policy.presented(&parts), Presented::Repeated));
    }
}
