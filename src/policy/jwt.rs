//! `kind = "jwt"`: a signed JSON Web Token (RFC 7519) presented as a bearer
//! token (`Authorization: Bearer ...`, RFC 6750 §2.1) authenticates the request.
//!
//! Keys come from a shared `secret` (HS256/384/512), an inline `jwk`, a
//! `jwks_file`, or a `jwks_url` fetched over HTTP or HTTPS and cached: refreshed every
//! `jwks_refresh` in the background, and at once when a token names a `kid`
//! we don't know (at most once per `jwks_min_refresh`, so tokens with made-up
//! `kid`s cannot hammer the issuer). Every key is bound at load to the
//! algorithms its type allows (an RSA key only verifies RS*/PS*, a secret
//! only HS*), intersected with `algorithms`: that is what stops algorithm
//! confusion (RFC 8725 §2.1, §3.1), and `none` is never accepted.
//!
//! An `https://` JWKS is what makes the keys trustworthy at all (whoever can
//! answer for the URL chooses which tokens pass), so the server certificate is
//! verified against Mozilla's roots (`webpki-roots`), or only against
//! `jwks_ca` for an internal IdP, with the URL's host as SNI and name to check.
//!
//! ```toml
//! [policy.jwt]
//! kind = "jwt"
//! jwks_url = "https://idp.example/.well-known/jwks.json"
//! issuer = "https://issuer.example"
//! audience = "tollgate"
//! forward_claims = { sub = "x-user", email = "x-email" }
//! strip_authorization = true
//! ```

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri, header};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use rustls::pki_types::ServerName;
use serde::Deserialize;
use serde_json::Value;
use toml::Spanned;

use super::{Rejection, SpecError, Verdict, env_string};
use crate::model::RequestContext;

/// Every algorithm we can verify (ring has no P-521).
const ALL_ALGORITHMS: [Algorithm; 12] = [
    Algorithm::HS256,
    Algorithm::HS384,
    Algorithm::HS512,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// A JWKS document larger than this is refused (real ones are a few KB).
const MAX_JWKS_BYTES: usize = 1 << 20;

/// `"value"` or `["value", ...]`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn to_vec(&self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJwt {
    #[allow(dead_code)]
    kind: String,
    secret: Option<Spanned<String>>,
    jwk: Option<Spanned<toml::Table>>,
    jwks_file: Option<Spanned<String>>,
    jwks_url: Option<Spanned<String>>,
    jwks_ca: Option<Spanned<String>>,
    jwks_refresh: Option<Spanned<String>>,
    jwks_min_refresh: Option<Spanned<String>>,
    jwks_timeout: Option<Spanned<String>>,
    #[serde(default)]
    algorithms: Vec<Spanned<String>>,
    issuer: Option<Spanned<OneOrMany>>,
    audience: Option<Spanned<OneOrMany>>,
    leeway: Option<Spanned<String>>,
    principal_claim: Option<Spanned<String>>,
    #[serde(default)]
    forward_claims: BTreeMap<String, Spanned<String>>,
    strip_authorization: Option<bool>,
    optional: Option<bool>,
    realm: Option<Spanned<String>>,
}

/// A verification key bound to the algorithms it may verify.
#[derive(Clone)]
struct VerifyKey {
    kid: Option<String>,
    algorithms: Vec<Algorithm>,
    key: DecodingKey,
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyKey").field("kid", &self.kid).field("algorithms", &self.algorithms).finish()
    }
}

/// Where and how often to fetch a remote JWKS.
#[derive(Debug, Clone)]
struct RemoteSpec {
    url: Uri,
    /// `Some` for an `https://` URL: the connector, its trust loaded at config load.
    tls: Option<JwksTls>,
    refresh: Duration,
    min_refresh: Duration,
    timeout: Duration,
}

/// TLS for an `https://` JWKS: ALPN `http/1.1` (we speak nothing else to
/// the IdP), trusting `jwks_ca` or else the webpki roots.
#[derive(Clone)]
struct JwksTls {
    connector: tokio_rustls::TlsConnector,
    /// Where the trust came from, for `Debug` and logs.
    trust: Arc<str>,
}

impl std::fmt::Debug for JwksTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksTls").field("trust", &self.trust).finish_non_exhaustive()
    }
}

impl JwksTls {
    /// Trusts the certificates in `ca`, or Mozilla's roots when there is none.
    fn new(ca: Option<&str>) -> Result<Self, std::io::Error> {
        use crate::upstream::tls::{client_config, load_roots};
        let (roots, trust) = match ca {
            Some(path) => (load_roots(std::path::Path::new(path))?, path.into()),
            None => {
                let mut roots = rustls::RootCertStore::empty();
                roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
                (roots, "webpki-roots".into())
            }
        };
        let config = client_config(roots, b"http/1.1")?;
        Ok(Self { connector: tokio_rustls::TlsConnector::from(Arc::new(config)), trust })
    }
}

/// Validated `jwt` policy config.
#[derive(Debug, Clone)]
pub struct JwtSpec {
    keys: Arc<[VerifyKey]>,
    remote: Option<RemoteSpec>,
    /// The allow-list: a token whose `alg` is not here is refused before any key is tried.
    algorithms: Vec<Algorithm>,
    /// One prepared validation per allowed algorithm.
    validations: Vec<(Algorithm, Validation)>,
    principal_claim: String,
    forward: Vec<(String, HeaderName)>,
    strip_authorization: bool,
    optional: bool,
    realm: String,
}

pub(super) fn parse(table: toml::de::ValueDeserializer<'_>) -> Result<JwtSpec, SpecError> {
    let raw = RawJwt::deserialize(table).map_err(SpecError::from_toml)?;
    let algorithms = allowed_algorithms(&raw.algorithms)?;

    let mut keys = Vec::new();
    if let Some(secret) = &raw.secret {
        keys.push(secret_key(&env_string(secret, "secret")?, &raw.algorithms, &algorithms, secret.span())?);
    }
    if let Some(jwk) = &raw.jwk {
        let json = serde_json::to_value(jwk.get_ref())
            .map_err(|e| SpecError::at(jwk.span(), "jwk", format!("not a JWK: {e}")))?;
        let parsed: Jwk =
            serde_json::from_value(json).map_err(|e| SpecError::at(jwk.span(), "jwk", format!("not a JWK: {e}")))?;
        match verify_key(&parsed, &algorithms, true) {
            Ok(Some(key)) => keys.push(key),
            Ok(None) => return Err(SpecError::at(jwk.span(), "jwk", "no allowed algorithm can use this key")),
            Err(m) => return Err(SpecError::at(jwk.span(), "jwk", m)),
        }
    }
    if let Some(file) = &raw.jwks_file {
        let path = env_string(file, "jwks_file")?;
        let bytes = std::fs::read(&path)
            .map_err(|e| SpecError::at(file.span(), "jwks_file", format!("cannot read `{path}`: {e}")))?;
        let (found, skipped) =
            parse_jwks(&bytes, &algorithms, true).map_err(|m| SpecError::at(file.span(), "jwks_file", m))?;
        for why in skipped {
            tracing::warn!(file = %path, "JWKS key skipped: {why}");
        }
        if found.is_empty() {
            return Err(SpecError::at(file.span(), "jwks_file", "has no key usable with the allowed algorithms"));
        }
        keys.extend(found);
    }
    let remote = match &raw.jwks_url {
        None => {
            if let Some(ca) = &raw.jwks_ca {
                return Err(SpecError::at(ca.span(), "jwks_ca", "is only used with an https:// `jwks_url`"));
            }
            None
        }
        Some(url) => {
            let text = env_string(url, "jwks_url")?;
            let uri: Uri =
                text.parse().map_err(|_| SpecError::at(url.span(), "jwks_url", format!("`{text}` is not a URL")))?;
            let https = match uri.scheme_str() {
                Some("https") => true,
                Some("http") => false,
                _ => return Err(SpecError::at(url.span(), "jwks_url", "must be an https:// or http:// URL")),
            };
            if uri.host().is_none_or(str::is_empty) {
                return Err(SpecError::at(url.span(), "jwks_url", format!("`{text}` has no host")));
            }
            let tls = match (&raw.jwks_ca, https) {
                (Some(ca), false) => {
                    return Err(SpecError::at(ca.span(), "jwks_ca", "is only used with an https:// `jwks_url`"));
                }
                (None, false) => None,
                (None, true) => Some(
                    JwksTls::new(None).map_err(|e| SpecError::at(url.span(), "jwks_url", format!("TLS setup: {e}")))?,
                ),
                (Some(ca), true) => {
                    let path = env_string(ca, "jwks_ca")?;
                    let tls = JwksTls::new(Some(&path))
                        .map_err(|e| SpecError::at(ca.span(), "jwks_ca", format!("cannot use `{path}`: {e}")))?;
                    Some(tls)
                }
            };
            if let Some(host) = uri.host()
                && https
                && ServerName::try_from(bare_host(host).to_string()).is_err()
            {
                return Err(SpecError::at(url.span(), "jwks_url", format!("`{host}` cannot be a TLS server name")));
            }
            Some(RemoteSpec {
                url: uri,
                tls,
                refresh: duration(&raw.jwks_refresh, "jwks_refresh", Duration::from_secs(300))?,
                min_refresh: duration(&raw.jwks_min_refresh, "jwks_min_refresh", Duration::from_secs(30))?,
                timeout: duration(&raw.jwks_timeout, "jwks_timeout", Duration::from_secs(5))?,
            })
        }
    };
    if keys.is_empty() && remote.is_none() {
        return Err(SpecError {
            span: None,
            key: "secret".into(),
            message: "needs a key: `secret`, `jwk`, `jwks_file` or `jwks_url`".into(),
        });
    }

    let leeway = duration(&raw.leeway, "leeway", Duration::from_secs(60))?.as_secs();
    let issuers = raw.issuer.as_ref().map(|i| i.get_ref().to_vec());
    let audiences = raw.audience.as_ref().map(|a| a.get_ref().to_vec());
    let validations = algorithms
        .iter()
        .map(|&alg| {
            let mut v = Validation::new(alg);
            v.leeway = leeway;
            v.validate_exp = true;
            v.validate_nbf = true;
            // The library checks iss/aud only when present; configured means required.
            if let Some(iss) = &issuers {
                v.set_issuer(iss);
                v.required_spec_claims.insert("iss".into());
            }
            match &audiences {
                Some(aud) => {
                    v.set_audience(aud);
                    v.required_spec_claims.insert("aud".into());
                }
                None => v.validate_aud = false,
            }
            (alg, v)
        })
        .collect();

    let mut forward = Vec::new();
    for (claim, name) in &raw.forward_claims {
        let header = HeaderName::try_from(name.get_ref().as_str()).map_err(|_| {
            SpecError::at(
                name.span(),
                &format!("forward_claims.{claim}"),
                format!("`{}` is not a header name", name.get_ref()),
            )
        })?;
        if header == header::AUTHORIZATION || header == header::HOST {
            return Err(SpecError::at(name.span(), &format!("forward_claims.{claim}"), "cannot overwrite this header"));
        }
        forward.push((claim.clone(), header));
    }
    let realm = match &raw.realm {
        Some(r) => quotable(&env_string(r, "realm")?).map_err(|m| SpecError::at(r.span(), "realm", m))?,
        None => "tollgate".to_string(),
    };

    Ok(JwtSpec {
        keys: keys.into(),
        remote,
        algorithms,
        validations,
        principal_claim: raw.principal_claim.map_or_else(|| "sub".to_string(), |c| c.into_inner()),
        forward,
        strip_authorization: raw.strip_authorization.unwrap_or(false),
        optional: raw.optional.unwrap_or(false),
        realm,
    })
}

fn duration(value: &Option<Spanned<String>>, key: &str, default: Duration) -> Result<Duration, SpecError> {
    match value {
        None => Ok(default),
        Some(v) => crate::config::parse_duration(&env_string(v, key)?).map_err(|m| SpecError::at(v.span(), key, m)),
    }
}

/// Text that may sit inside a quoted auth-param: printable ASCII without `"`
/// or `\` (RFC 6750 §3 restricts `error_description` to the same set).
pub(super) fn quotable(text: &str) -> Result<String, String> {
    if text.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\') {
        Ok(text.to_string())
    } else {
        Err("must be printable ASCII without `\"` or `\\`".into())
    }
}

/// The `algorithms` allow-list, or every algorithm we support.
fn allowed_algorithms(raw: &[Spanned<String>]) -> Result<Vec<Algorithm>, SpecError> {
    if raw.is_empty() {
        return Ok(ALL_ALGORITHMS.to_vec());
    }
    let mut out = Vec::new();
    for name in raw {
        let text = name.get_ref();
        if text.eq_ignore_ascii_case("none") {
            return Err(SpecError::at(name.span(), "algorithms", "`none` is never accepted (RFC 8725 §3.1)"));
        }
        match Algorithm::from_str(text) {
            Ok(alg) if ALL_ALGORITHMS.contains(&alg) => out.push(alg),
            _ => {
                return Err(SpecError::at(
                    name.span(),
                    "algorithms",
                    format!(
                        "`{text}` is not supported; use HS256/384/512, RS256/384/512, PS256/384/512, ES256, ES384 or EdDSA"
                    ),
                ));
            }
        }
    }
    Ok(out)
}

/// The HMAC algorithms a secret is long enough for: RFC 7518 §3.2 asks for
/// a key at least as long as the hash output.
fn hmac_algorithms(secret_len: usize) -> Vec<Algorithm> {
    [(Algorithm::HS256, 32), (Algorithm::HS384, 48), (Algorithm::HS512, 64)]
        .into_iter()
        .filter(|(_, min)| secret_len >= *min)
        .map(|(alg, _)| alg)
        .collect()
}

fn secret_key(
    secret: &str,
    raw_algorithms: &[Spanned<String>],
    allowed: &[Algorithm],
    span: std::ops::Range<usize>,
) -> Result<VerifyKey, SpecError> {
    let fits = hmac_algorithms(secret.len());
    // An HS algorithm named explicitly must be one the secret is long enough for.
    for name in raw_algorithms {
        if let Ok(alg) = Algorithm::from_str(name.get_ref())
            && matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
            && !fits.contains(&alg)
        {
            return Err(SpecError::at(
                span,
                "secret",
                format!("{alg:?} needs a secret of at least {} bytes (RFC 7518 §3.2)", hmac_min_len(alg)),
            ));
        }
    }
    let algorithms: Vec<Algorithm> = fits.into_iter().filter(|a| allowed.contains(a)).collect();
    if algorithms.is_empty() {
        return Err(SpecError::at(
            span,
            "secret",
            "is shorter than 32 bytes or no HS algorithm is allowed (RFC 7518 §3.2 wants at least the hash size)",
        ));
    }
    Ok(VerifyKey { kid: None, algorithms, key: DecodingKey::from_secret(secret.as_bytes()) })
}

fn hmac_min_len(alg: Algorithm) -> usize {
    match alg {
        Algorithm::HS384 => 48,
        Algorithm::HS512 => 64,
        _ => 32,
    }
}

/// Binds a JWK to the algorithms its type allows (and its `alg`, if it names
/// one), within `allowed`. `Ok(None)` when the key is not for signatures or
/// no allowed algorithm fits it.
fn verify_key(jwk: &Jwk, allowed: &[Algorithm], symmetric_ok: bool) -> Result<Option<VerifyKey>, String> {
    if jwk.common.public_key_use == Some(PublicKeyUse::Encryption) {
        return Ok(None);
    }
    let family: Vec<Algorithm> = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => vec![
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
        ],
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => vec![Algorithm::ES256],
            EllipticCurve::P384 => vec![Algorithm::ES384],
            _ => return Err(format!("curve {:?} is not supported (P-256, P-384)", p.curve)),
        },
        AlgorithmParameters::OctetKeyPair(p) => match p.curve {
            EllipticCurve::Ed25519 => vec![Algorithm::EdDSA],
            _ => return Err(format!("curve {:?} is not supported (Ed25519)", p.curve)),
        },
        AlgorithmParameters::OctetKey(p) => {
            if !symmetric_ok {
                return Err("symmetric (`oct`) keys are not taken from a URL".into());
            }
            let len = p.value.trim_end_matches('=').len() * 3 / 4;
            hmac_algorithms(len)
        }
    };
    let family = match jwk.common.key_algorithm {
        None => family,
        Some(named) => {
            let alg =
                Algorithm::from_str(&named.to_string()).map_err(|_| format!("`alg` {named} is not for signatures"))?;
            if !family.contains(&alg) {
                return Err(format!("`alg` {named} does not fit the key type"));
            }
            vec![alg]
        }
    };
    let algorithms: Vec<Algorithm> = family.into_iter().filter(|a| allowed.contains(a)).collect();
    if algorithms.is_empty() {
        return Ok(None);
    }
    let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("unusable key: {e}"))?;
    Ok(Some(VerifyKey { kid: jwk.common.key_id.clone(), algorithms, key }))
}

/// The usable keys of a JWKS document (RFC 7517 §5) and why the others were skipped.
fn parse_jwks(
    bytes: &[u8],
    allowed: &[Algorithm],
    symmetric_ok: bool,
) -> Result<(Vec<VerifyKey>, Vec<String>), String> {
    let doc: Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
    let list = doc.get("keys").and_then(Value::as_array).ok_or("not a JWKS: no `keys` array")?;
    let mut keys = Vec::new();
    let mut skipped = Vec::new();
    for (i, entry) in list.iter().enumerate() {
        let name = entry.get("kid").and_then(Value::as_str).map_or_else(|| format!("#{i}"), |k| format!("`{k}`"));
        match serde_json::from_value::<Jwk>(entry.clone()) {
            Err(e) => skipped.push(format!("key {name}: {e}")),
            Ok(jwk) => match verify_key(&jwk, allowed, symmetric_ok) {
                Ok(Some(key)) => keys.push(key),
                Ok(None) => {}
                Err(m) => skipped.push(format!("key {name}: {m}")),
            },
        }
    }
    Ok((keys, skipped))
}

/// Why a token was refused; the description goes into `WWW-Authenticate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    Malformed,
    AlgorithmNotAllowed,
    UnknownKey,
    BadSignature,
    Expired,
    NotYetValid,
    WrongIssuer,
    WrongAudience,
    MissingClaim,
}

impl TokenError {
    /// Safe for `error_description` (RFC 6750 §3: no `"` or `\`).
    pub fn description(self) -> &'static str {
        match self {
            TokenError::Malformed => "malformed token",
            TokenError::AlgorithmNotAllowed => "token algorithm not allowed",
            TokenError::UnknownKey => "no key to verify the token",
            TokenError::BadSignature => "token signature does not verify",
            TokenError::Expired => "token expired",
            TokenError::NotYetValid => "token not valid yet",
            TokenError::WrongIssuer => "token issuer not accepted",
            TokenError::WrongAudience => "token audience not accepted",
            TokenError::MissingClaim => "token lacks a required claim",
        }
    }

    fn from_library(kind: &ErrorKind) -> Self {
        match kind {
            ErrorKind::InvalidSignature => TokenError::BadSignature,
            ErrorKind::ExpiredSignature => TokenError::Expired,
            ErrorKind::ImmatureSignature => TokenError::NotYetValid,
            ErrorKind::InvalidIssuer => TokenError::WrongIssuer,
            ErrorKind::InvalidAudience => TokenError::WrongAudience,
            ErrorKind::MissingRequiredClaim(_) => TokenError::MissingClaim,
            ErrorKind::InvalidAlgorithm => TokenError::AlgorithmNotAllowed,
            _ => TokenError::Malformed,
        }
    }
}

/// A remote JWKS, cached and refreshed.
struct RemoteJwks {
    spec: RemoteSpec,
    algorithms: Vec<Algorithm>,
    keys: ArcSwap<RemoteKeys>,
    /// When a fetch was last tried; the lock also makes fetches single-flight.
    last_attempt: tokio::sync::Mutex<Option<Instant>>,
    refreshing: AtomicBool,
}

#[derive(Default)]
struct RemoteKeys {
    keys: Vec<VerifyKey>,
    /// When these keys were fetched; `None` before the first success.
    fetched: Option<Instant>,
}

/// Why fetching a JWKS failed.
#[derive(Debug)]
enum JwksError {
    Connect(std::io::Error),
    /// The handshake failed, most often because the certificate does not
    /// chain to the trusted roots or does not name the host.
    Tls(std::io::Error),
    Http(hyper::Error),
    Status(StatusCode),
    Body,
    Timeout,
    Document(String),
}

impl std::fmt::Display for JwksError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JwksError::Connect(e) => write!(f, "cannot connect: {e}"),
            JwksError::Tls(e) => write!(f, "TLS handshake failed: {e}"),
            JwksError::Http(e) => write!(f, "HTTP error: {e}"),
            JwksError::Status(s) => write!(f, "answered {s}"),
            JwksError::Body => write!(f, "body broken or over {MAX_JWKS_BYTES} bytes"),
            JwksError::Timeout => write!(f, "timed out"),
            JwksError::Document(m) => f.write_str(m),
        }
    }
}

impl RemoteJwks {
    /// The cached keys; fetches first if none were ever fetched, and starts a
    /// background refresh when they are older than `jwks_refresh`.
    async fn current(self: &Arc<Self>) -> Arc<RemoteKeys> {
        let keys = self.keys.load_full();
        match keys.fetched {
            None => {
                self.refresh().await;
                return self.keys.load_full();
            }
            Some(at) if at.elapsed() >= self.spec.refresh => self.refresh_in_background(),
            Some(_) => {}
        }
        keys
    }

    fn refresh_in_background(self: &Arc<Self>) {
        if self.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = Arc::clone(self);
        tokio::spawn(async move {
            this.refresh().await;
            this.refreshing.store(false, Ordering::Release);
        });
    }

    /// Fetches the JWKS unless a fetch was tried less than `jwks_min_refresh`
    /// ago (then whoever tried it has already stored its result). On failure
    /// the old keys stay in use.
    async fn refresh(&self) {
        let mut last = self.last_attempt.lock().await;
        if last.is_some_and(|at| at.elapsed() < self.spec.min_refresh) {
            return;
        }
        *last = Some(Instant::now());
        let url = &self.spec.url;
        // The timeout covers connect, handshake, request and body alike.
        // Boxed: the fetch (TCP, TLS, HTTP/1.1) is rare and its state large;
        // unboxed it would sit in every request's future on a JWT route.
        let fetching = Box::pin(fetch(url, self.spec.tls.as_ref()));
        let fetched = match tokio::time::timeout(self.spec.timeout, fetching).await {
            Err(_) => Err(JwksError::Timeout),
            Ok(result) => result,
        };
        match fetched.and_then(|bytes| parse_jwks(&bytes, &self.algorithms, false).map_err(JwksError::Document)) {
            Ok((keys, skipped)) => {
                for why in skipped {
                    tracing::warn!(%url, "JWKS key skipped: {why}");
                }
                tracing::info!(%url, keys = keys.len(), "JWKS fetched");
                self.keys.store(Arc::new(RemoteKeys { keys, fetched: Some(Instant::now()) }));
            }
            Err(e) => {
                let trust = self.spec.tls.as_ref().map(|t| &*t.trust);
                tracing::warn!(%url, error = %e, trust, "JWKS fetch failed; keeping the keys we have");
            }
        }
    }
}

/// A URL host without the brackets of an IPv6 literal.
fn bare_host(host: &str) -> &str {
    host.trim_start_matches('[').trim_end_matches(']')
}

/// GET `url` over HTTP/1.1 (hyper's client connection), through TLS when
/// `tls` is given, the body capped.
async fn fetch(url: &Uri, tls: Option<&JwksTls>) -> Result<Bytes, JwksError> {
    let host = bare_host(url.host().unwrap_or_default());
    let port = url.port_u16().unwrap_or(if tls.is_some() { 443 } else { 80 });
    let stream = tokio::net::TcpStream::connect((host, port)).await.map_err(JwksError::Connect)?;
    match tls {
        None => get(url, stream).await,
        Some(tls) => {
            // SNI and the name checked against the certificate: the URL's host (parse checked it fits).
            let name = ServerName::try_from(host.to_string()).map_err(|e| JwksError::Tls(std::io::Error::other(e)))?;
            let stream = tls.connector.connect(name, stream).await.map_err(JwksError::Tls)?;
            get(url, stream).await
        }
    }
}

/// One HTTP/1.1 GET of `url` on an established connection.
async fn get<S>(url: &Uri, io: S) -> Result<Bytes, JwksError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use http_body_util::{BodyExt, Empty, Limited};
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io)).await.map_err(JwksError::Http)?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let host = url.host().unwrap_or_default();
    let authority = url.authority().map_or(host, |a| a.as_str());
    let request = http::Request::get(url.path_and_query().map_or("/", |p| p.as_str()))
        .header(header::HOST, authority)
        .header(header::ACCEPT, "application/json")
        .header(header::USER_AGENT, "tollgate")
        .body(Empty::<Bytes>::new())
        .map_err(|e| JwksError::Document(e.to_string()))?;
    let response = sender.send_request(request).await.map_err(JwksError::Http)?;
    if response.status() != StatusCode::OK {
        return Err(JwksError::Status(response.status()));
    }
    let body = Limited::new(response.into_body(), MAX_JWKS_BYTES).collect().await.map_err(|_| JwksError::Body)?;
    Ok(body.to_bytes())
}

/// Why the library could not read a token's header: an `alg` it does not
/// know (`none` included) fails to parse just like garbage does.
fn unparsed_header(token: &str) -> TokenError {
    use base64::Engine;
    let alg = token
        .split('.')
        .next()
        .and_then(|h| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(h.trim_end_matches('=')).ok())
        .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
        .is_some_and(|head| head.get("alg").is_some_and(Value::is_string));
    if alg { TokenError::AlgorithmNotAllowed } else { TokenError::Malformed }
}

/// What the `Authorization` header holds.
enum Bearer {
    Missing,
    Repeated,
    Token(String),
}

/// The bearer token (RFC 6750 §2.1; the scheme is case-insensitive, RFC 9110 §11.1).
fn bearer(headers: &HeaderMap) -> Bearer {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(first) = values.next() else { return Bearer::Missing };
    if values.next().is_some() {
        return Bearer::Repeated;
    }
    let Ok(text) = first.to_str() else { return Bearer::Missing };
    match text.trim().split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => Bearer::Token(token.trim().to_string()),
        _ => Bearer::Missing,
    }
}

/// A claim by name, or by a dotted path into nested objects
/// (`realm_access.roles`) when no top-level claim has that exact name.
pub(crate) fn lookup_claim<'a>(claims: &'a Value, path: &str) -> Option<&'a Value> {
    if let Some(v) = claims.get(path) {
        return Some(v);
    }
    if !path.contains('.') {
        return None;
    }
    path.split('.').try_fold(claims, |v, part| v.get(part))
}

/// A claim as header text: strings as they are, numbers and booleans
/// printed, arrays joined with `,`, objects as JSON; bytes outside printable
/// ASCII are percent-encoded so any claim makes a valid header.
fn claim_header(value: &Value) -> Option<HeaderValue> {
    let text = match value {
        Value::Null => return None,
        Value::String(s) => s.clone(),
        Value::Array(items) => items
            .iter()
            .map(|i| match i {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    };
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    HeaderValue::try_from(out).ok()
}

/// The running policy.
pub struct JwtPolicy {
    spec: JwtSpec,
    remote: Option<Arc<RemoteJwks>>,
    /// Tokens verified in the last minute (see `token_cache`).
    verified: super::token_cache::TokenCache,
}

impl JwtPolicy {
    /// Prepares the key cache; with a runtime at hand the remote JWKS is
    /// fetched right away, so the first request does not wait for it.
    pub fn new(spec: &JwtSpec) -> Self {
        let remote = spec.remote.as_ref().map(|r| {
            Arc::new(RemoteJwks {
                spec: r.clone(),
                algorithms: spec.algorithms.clone(),
                keys: ArcSwap::from_pointee(RemoteKeys::default()),
                last_attempt: tokio::sync::Mutex::new(None),
                refreshing: AtomicBool::new(false),
            })
        });
        if let (Some(remote), Ok(runtime)) = (&remote, tokio::runtime::Handle::try_current()) {
            let remote = Arc::clone(remote);
            runtime.spawn(async move { remote.refresh().await });
        }
        Self { spec: spec.clone(), remote, verified: Default::default() }
    }

    /// Verifies the bearer token, records principal and claims, forwards the chosen claims.
    pub async fn on_request(&self, parts: &mut http::request::Parts, ctx: &mut RequestContext) -> Verdict {
        // Whatever happens next, the backend must never see client-made copies.
        for (_, name) in &self.spec.forward {
            parts.headers.remove(name);
        }
        let token = match bearer(&parts.headers) {
            Bearer::Token(token) => token,
            Bearer::Missing if self.spec.optional => return Verdict::Continue,
            // RFC 6750 §3.1: no error code when the request has no credentials at all.
            Bearer::Missing => {
                return Verdict::Reject(self.reject(StatusCode::UNAUTHORIZED, None, "a bearer token is required"));
            }
            Bearer::Repeated => {
                return Verdict::Reject(self.reject(
                    StatusCode::BAD_REQUEST,
                    Some(("invalid_request", "more than one Authorization header")),
                    "more than one Authorization header",
                ));
            }
        };
        let claims = match self.verify_cached(&token).await {
            Ok(claims) => claims,
            Err(e) => {
                tracing::debug!(request_id = ctx.id_str(), error = e.description(), "JWT refused");
                return Verdict::Reject(self.reject(
                    StatusCode::UNAUTHORIZED,
                    Some(("invalid_token", e.description())),
                    e.description(),
                ));
            }
        };
        if let Some(principal) = lookup_claim(&claims, &self.spec.principal_claim).and_then(Value::as_str) {
            ctx.principal = Some(Arc::from(principal));
        }
        for (claim, name) in &self.spec.forward {
            if let Some(value) = lookup_claim(&claims, claim).and_then(claim_header) {
                parts.headers.insert(name, value);
            }
        }
        if self.spec.strip_authorization {
            parts.headers.remove(header::AUTHORIZATION);
        }
        ctx.claims = Some(claims);
        Verdict::Continue
    }

    /// [`JwtPolicy::verify`], remembering tokens that pass for a short while.
    async fn verify_cached(&self, token: &str) -> Result<Arc<Value>, TokenError> {
        let now = jsonwebtoken::get_current_timestamp();
        if let Some(claims) = self.verified.get(token, now) {
            return Ok(claims);
        }
        let claims = Arc::new(self.verify(token).await?);
        let leeway = self.spec.validations.first().map_or(0, |(_, v)| v.leeway);
        self.verified.put(token, Arc::clone(&claims), now, leeway);
        Ok(claims)
    }

    /// Checks the token against the keys that may verify its `alg` (and `kid`).
    pub async fn verify(&self, token: &str) -> Result<Value, TokenError> {
        let head = jsonwebtoken::decode_header(token).map_err(|_| unparsed_header(token))?;
        if !self.spec.algorithms.contains(&head.alg) {
            return Err(TokenError::AlgorithmNotAllowed);
        }
        let validation = &self.spec.validations.iter().find(|(a, _)| *a == head.alg).expect("one per allowed alg").1;
        let kid = head.kid.as_deref();
        let mut remote_keys = match &self.remote {
            Some(remote) => Some(remote.current().await),
            None => None,
        };
        let knows_kid = |remote: &Option<Arc<RemoteKeys>>| {
            let kid = kid.expect("asked only with a kid");
            self.spec
                .keys
                .iter()
                .chain(remote.iter().flat_map(|r| r.keys.iter()))
                .any(|k| k.kid.as_deref() == Some(kid))
        };
        if let (Some(remote), Some(_)) = (&self.remote, kid)
            && !knows_kid(&remote_keys)
        {
            // A new `kid` usually means the issuer rotated keys: look again (rate-limited).
            remote.refresh().await;
            remote_keys = Some(remote.keys.load_full());
        }
        let candidates = self
            .spec
            .keys
            .iter()
            .chain(remote_keys.iter().flat_map(|r| r.keys.iter()))
            .filter(|k| k.algorithms.contains(&head.alg))
            .filter(|k| match (kid, &k.kid) {
                (Some(wanted), Some(has)) => wanted == has,
                _ => true,
            });
        let mut tried = false;
        for key in candidates {
            tried = true;
            match jsonwebtoken::decode::<Value>(token, &key.key, validation) {
                Ok(data) => return Ok(data.claims),
                Err(e) if matches!(e.kind(), ErrorKind::InvalidSignature) => continue,
                Err(e) => return Err(TokenError::from_library(e.kind())),
            }
        }
        Err(if tried { TokenError::BadSignature } else { TokenError::UnknownKey })
    }

    /// A rejection with a `Bearer` challenge (RFC 6750 §3).
    fn reject(&self, status: StatusCode, error: Option<(&str, &str)>, message: &str) -> Rejection {
        let code = if status == StatusCode::BAD_REQUEST { "invalid_request" } else { "unauthenticated" };
        let mut rejection = Rejection::new(status, code, message);
        let mut challenge = format!("Bearer realm=\"{}\"", self.spec.realm);
        if let Some((error, description)) = error {
            challenge.push_str(&format!(", error=\"{error}\", error_description=\"{description}\""));
        }
        if let Ok(value) = HeaderValue::try_from(challenge) {
            rejection.headers.insert(header::WWW_AUTHENTICATE, value);
        }
        rejection
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn spec(text: &str) -> Result<JwtSpec, SpecError> {
        match crate::policy::spec_from_str(text)? {
            crate::policy::PolicySpec::Jwt(s) => Ok(s),
            _ => unreachable!("a jwt table"),
        }
    }

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn hs256(claims: &Value) -> String {
        encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
    }

    fn policy(extra: &str) -> JwtPolicy {
        JwtPolicy::new(&spec(&format!("kind = \"jwt\"\nsecret = \"{SECRET}\"\n{extra}")).unwrap())
    }

    #[tokio::test]
    async fn verifies_and_checks_time_issuer_audience() {
        let p = policy("issuer = \"https://issuer\"\naudience = [\"tollgate\", \"other\"]\nleeway = \"0s\"");
        let good = serde_json::json!({"sub": "alice", "exp": now() + 60, "iss": "https://issuer", "aud": "tollgate"});
        assert_eq!(p.verify(&hs256(&good)).await.unwrap()["sub"], "alice");
        let mut expired = good.clone();
        expired["exp"] = (now() - 10).into();
        assert_eq!(p.verify(&hs256(&expired)).await, Err(TokenError::Expired));
        let mut early = good.clone();
        early["nbf"] = (now() + 600).into();
        assert_eq!(p.verify(&hs256(&early)).await, Err(TokenError::NotYetValid));
        let mut iss = good.clone();
        iss["iss"] = "https://evil".into();
        assert_eq!(p.verify(&hs256(&iss)).await, Err(TokenError::WrongIssuer));
        let mut aud = good.clone();
        aud["aud"] = "someone-else".into();
        assert_eq!(p.verify(&hs256(&aud)).await, Err(TokenError::WrongAudience));
        let mut no_aud = good.clone();
        no_aud.as_object_mut().unwrap().remove("aud");
        assert_eq!(p.verify(&hs256(&no_aud)).await, Err(TokenError::MissingClaim));
        let mut no_exp = good;
        no_exp.as_object_mut().unwrap().remove("exp");
        assert_eq!(p.verify(&hs256(&no_exp)).await, Err(TokenError::MissingClaim));
    }

    #[tokio::test]
    async fn refuses_none_wrong_keys_and_garbage() {
        let p = policy("");
        // {"alg":"none","typ":"JWT"} . {"sub":"a","exp":9999999999} . (no signature)
        let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhIiwiZXhwIjo5OTk5OTk5OTk5fQ.";
        assert_eq!(p.verify(none).await, Err(TokenError::AlgorithmNotAllowed));
        let other = encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"sub": "a", "exp": now() + 60}),
            &EncodingKey::from_secret(b"another secret that is long enough!!"),
        )
        .unwrap();
        assert_eq!(p.verify(&other).await, Err(TokenError::BadSignature));
        assert_eq!(p.verify("not.a.token").await, Err(TokenError::Malformed));
        assert_eq!(p.verify("").await, Err(TokenError::Malformed));
        // An allowed-list without HS refuses an HS token before trying any key.
        let rs_only = JwtPolicy::new(
            &spec("kind = \"jwt\"\nalgorithms = [\"RS256\"]\njwks_url = \"http://127.0.0.1:9/jwks\"\njwks_timeout = \"100ms\"")
                .unwrap(),
        );
        let token = hs256(&serde_json::json!({"sub": "a", "exp": now() + 60}));
        assert_eq!(rs_only.verify(&token).await, Err(TokenError::AlgorithmNotAllowed));
    }

    #[test]
    fn config_errors_are_located_and_explained() {
        let short = spec("kind = \"jwt\"\nsecret = \"short\"").unwrap_err();
        assert!(short.message.contains("RFC 7518"), "{}", short.message);
        let hs512 = spec(&format!("kind = \"jwt\"\nsecret = \"{SECRET}\"\nalgorithms = [\"HS512\"]")).unwrap_err();
        assert!(hs512.message.contains("64 bytes"), "{}", hs512.message);
        assert!(spec("kind = \"jwt\"\nalgorithms = [\"none\"]\nsecret = \"x\"").unwrap_err().message.contains("never"));
        assert!(spec("kind = \"jwt\"").unwrap_err().message.contains("needs a key"));
        assert!(spec("kind = \"jwt\"\njwks_url = \"ftp://idp/jwks\"").unwrap_err().message.contains("https://"));
        let https = spec("kind = \"jwt\"\njwks_url = \"https://idp.example/jwks\"").unwrap();
        assert!(https.remote.unwrap().tls.is_some_and(|t| &*t.trust == "webpki-roots"));
        let no_ca =
            spec("kind = \"jwt\"\njwks_url = \"https://idp/jwks\"\njwks_ca = \"/nonexistent/ca.pem\"").unwrap_err();
        assert!(no_ca.key == "jwks_ca" && no_ca.message.contains("/nonexistent/ca.pem"), "{no_ca:?}");
        let plain_ca = spec("kind = \"jwt\"\njwks_url = \"http://idp/jwks\"\njwks_ca = \"ca.pem\"").unwrap_err();
        assert!(plain_ca.key == "jwks_ca" && plain_ca.message.contains("https://"), "{plain_ca:?}");
        let bad_jwk = spec("kind = \"jwt\"\njwk = { kty = \"EC\", crv = \"P-521\", x = \"AA\", y = \"AA\" }");
        assert!(bad_jwk.unwrap_err().message.contains("not supported"));
    }

    #[test]
    fn keys_are_bound_to_their_family() {
        let jwks = br#"{"keys": [
            {"kty": "oct", "k": "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY", "kid": "sym"},
            {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo", "kid": "ed"},
            {"kty": "EC", "crv": "P-256", "kid": "enc", "use": "enc",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty": "RSA", "n": "AQAB", "e": "AQAB", "alg": "ES256", "kid": "confused"}
        ]}"#;
        let (keys, skipped) = parse_jwks(jwks, &ALL_ALGORITHMS, false).unwrap();
        assert_eq!(keys.len(), 1, "{keys:?}");
        assert_eq!(keys[0].algorithms, vec![Algorithm::EdDSA]);
        assert_eq!(skipped.len(), 2, "{skipped:?}"); // the URL's `oct` key and the RSA key claiming ES256
        let (keys, _) = parse_jwks(jwks, &ALL_ALGORITHMS, true).unwrap();
        assert_eq!(keys[0].algorithms, vec![Algorithm::HS256]);
    }

    #[test]
    fn claims_become_header_values() {
        let claims =
            serde_json::json!({"a": "x y", "n": 5, "l": ["p", "q"], "u": "José", "realm_access": {"roles": ["r"]}});
        assert_eq!(claim_header(&claims["a"]).unwrap(), "x y");
        assert_eq!(claim_header(&claims["n"]).unwrap(), "5");
        assert_eq!(claim_header(&claims["l"]).unwrap(), "p,q");
        assert_eq!(claim_header(&claims["u"]).unwrap(), "Jos%C3%A9");
        assert_eq!(lookup_claim(&claims, "realm_access.roles").unwrap()[0], "r");
        assert!(lookup_claim(&claims, "missing.path").is_none());
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_and_single() {
        let mut headers = HeaderMap::new();
        assert!(matches!(bearer(&headers), Bearer::Missing));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("bEaReR abc"));
        assert!(matches!(bearer(&headers), Bearer::Token(t) if t == "abc"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert!(matches!(bearer(&headers), Bearer::Missing));
        headers.append(header::AUTHORIZATION, HeaderValue::from_static("Bearer abc"));
        assert!(matches!(bearer(&headers), Bearer::Repeated));
    }
}
