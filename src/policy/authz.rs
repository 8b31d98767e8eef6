//! `kind = "authz"`: decides whether an authenticated caller may make this
//! request, from what authentication policies recorded (`principal`,
//! `consumer`, `claims`). It runs after them.
//!
//! No principal at all → 401 (RFC 9110 §15.5.2, with a `Bearer` challenge);
//! authenticated but not allowed → 403 (§15.5.4), with
//! `WWW-Authenticate: Bearer error="insufficient_scope", scope="..."` when
//! scopes were what was missing (RFC 6750 §3.1). With no requirement at all
//! the policy just demands that some authentication succeeded.
//!
//! ```toml
//! [policy.admins]
//! kind = "authz"
//! require_scopes = ["admin"]           # from `scope` (space-separated) or `scp`
//! require_roles = ["ops"]              # from `roles` (or roles_claim = "realm_access.roles")
//! require_claims = { tenant = "acme" }
//! allow_consumers = ["alice"]          # api_key consumers
//! match = "all"                        # or "any"
//! methods = ["POST", "DELETE"]         # only these methods are checked
//! ```

use std::collections::BTreeMap;

use http::{HeaderValue, Method, StatusCode, header};
use serde::Deserialize;
use serde_json::Value;
use toml::Spanned;

use super::jwt::lookup_claim;
use super::{Rejection, SpecError, Verdict, env_string};
use crate::model::RequestContext;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuthz {
    #[allow(dead_code)]
    kind: String,
    #[serde(default)]
    require_scopes: Vec<Spanned<String>>,
    #[serde(default)]
    require_roles: Vec<Spanned<String>>,
    roles_claim: Option<Spanned<String>>,
    #[serde(default)]
    require_claims: BTreeMap<String, Spanned<toml::Value>>,
    #[serde(default)]
    allow_consumers: Vec<Spanned<String>>,
    #[serde(default)]
    allow_principals: Vec<Spanned<String>>,
    #[serde(rename = "match")]
    mode: Option<Spanned<String>>,
    #[serde(default)]
    methods: Vec<Spanned<String>>,
    realm: Option<Spanned<String>>,
}

/// Whether every requirement or any one of them must hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    All,
    Any,
}

/// Validated `authz` policy config.
#[derive(Debug, Clone)]
pub struct AuthzSpec {
    scopes: Vec<String>,
    roles: Vec<String>,
    roles_claim: String,
    /// Claim path and the values any one of which satisfies it.
    claims: Vec<(String, Vec<String>)>,
    consumers: Vec<String>,
    principals: Vec<String>,
    mode: Mode,
    /// Empty: every method.
    methods: Vec<Method>,
    realm: String,
}

pub(super) fn parse(table: toml::de::ValueDeserializer<'_>) -> Result<AuthzSpec, SpecError> {
    let raw = RawAuthz::deserialize(table).map_err(SpecError::from_toml)?;
    let strings = |list: &[Spanned<String>], key: &str| -> Result<Vec<String>, SpecError> {
        list.iter()
            .map(|s| {
                let text = env_string(s, key)?;
                if text.is_empty() {
                    return Err(SpecError::at(s.span(), key, "must not be empty"));
                }
                Ok(text)
            })
            .collect()
    };
    let scopes = strings(&raw.require_scopes, "require_scopes")?;
    for (scope, raw_scope) in scopes.iter().zip(&raw.require_scopes) {
        // RFC 6749 §3.3: a scope token is printable ASCII without space, `"` or `\`.
        if !scope.bytes().all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b)) {
            return Err(SpecError::at(raw_scope.span(), "require_scopes", format!("`{scope}` is not a scope token")));
        }
    }
    let mut claims = Vec::new();
    for (name, value) in &raw.require_claims {
        let key = format!("require_claims.{name}");
        let one = |v: &toml::Value| -> Result<String, SpecError> {
            match v {
                toml::Value::String(s) => Ok(s.clone()),
                toml::Value::Integer(i) => Ok(i.to_string()),
                toml::Value::Boolean(b) => Ok(b.to_string()),
                _ => Err(SpecError::at(value.span(), &key, "must be a string, integer, boolean or a list of them")),
            }
        };
        let accepted = match value.get_ref() {
            toml::Value::Array(items) => items.iter().map(one).collect::<Result<Vec<_>, _>>()?,
            other => vec![one(other)?],
        };
        claims.push((name.clone(), accepted));
    }
    let mode = match &raw.mode {
        None => Mode::All,
        Some(m) => match m.get_ref().as_str() {
            "all" => Mode::All,
            "any" => Mode::Any,
            other => {
                return Err(SpecError::at(
                    m.span(),
                    "match",
                    format!("`{other}` is not a mode; use \"all\" or \"any\""),
                ));
            }
        },
    };
    let mut methods = Vec::new();
    for m in &raw.methods {
        let method = Method::from_bytes(m.get_ref().to_ascii_uppercase().as_bytes())
            .map_err(|_| SpecError::at(m.span(), "methods", format!("`{}` is not a method", m.get_ref())))?;
        methods.push(method);
    }
    let realm = match &raw.realm {
        Some(r) => super::jwt::quotable(&env_string(r, "realm")?).map_err(|m| SpecError::at(r.span(), "realm", m))?,
        None => "tollgate".to_string(),
    };
    Ok(AuthzSpec {
        scopes,
        roles: strings(&raw.require_roles, "require_roles")?,
        roles_claim: raw.roles_claim.map_or_else(|| "roles".to_string(), |c| c.into_inner()),
        claims,
        consumers: strings(&raw.allow_consumers, "allow_consumers")?,
        principals: strings(&raw.allow_principals, "allow_principals")?,
        mode,
        methods,
        realm,
    })
}

/// The scopes a token grants: `scope` (space-separated, RFC 8693 §4.2 /
/// RFC 9068 §2.2.3) and `scp` (a list or a string, as Azure AD and Okta send).
fn granted_scopes(claims: &Value) -> Vec<&str> {
    let mut out = Vec::new();
    for name in ["scope", "scp"] {
        match claims.get(name) {
            Some(Value::String(s)) => out.extend(s.split(' ').filter(|s| !s.is_empty())),
            Some(Value::Array(items)) => out.extend(items.iter().filter_map(Value::as_str)),
            _ => {}
        }
    }
    out
}

/// Whether a claim holds `wanted`: equal, or an element of a list claim.
fn claim_has(value: Option<&Value>, wanted: &str) -> bool {
    let scalar = |v: &Value| match v {
        Value::String(s) => s == wanted,
        Value::Number(n) => n.to_string() == wanted,
        Value::Bool(b) => b.to_string() == wanted,
        _ => false,
    };
    match value {
        Some(Value::Array(items)) => items.iter().any(scalar),
        Some(v) => scalar(v),
        None => false,
    }
}

/// The running policy.
pub struct AuthzPolicy {
    spec: AuthzSpec,
}

impl AuthzPolicy {
    /// Wraps the validated spec.
    pub fn new(spec: &AuthzSpec) -> Self {
        Self { spec: spec.clone() }
    }

    /// Allows, or refuses with 401 (unauthenticated) or 403 (not allowed).
    pub fn on_request(&self, parts: &mut http::request::Parts, ctx: &mut RequestContext) -> Verdict {
        let spec = &self.spec;
        if !spec.methods.is_empty() && !spec.methods.contains(&parts.method) {
            return Verdict::Continue;
        }
        if ctx.principal.is_none() && ctx.consumer.is_none() && ctx.claims.is_none() {
            let mut rejection =
                Rejection::new(StatusCode::UNAUTHORIZED, "unauthenticated", "authentication is required");
            if let Ok(v) = HeaderValue::try_from(format!("Bearer realm=\"{}\"", spec.realm)) {
                rejection.headers.insert(header::WWW_AUTHENTICATE, v);
            }
            return Verdict::Reject(rejection);
        }
        let no_claims = Value::Null;
        let claims = ctx.claims.as_deref().unwrap_or(&no_claims);
        let granted = granted_scopes(claims);
        let missing_scopes: Vec<&str> =
            spec.scopes.iter().map(String::as_str).filter(|s| !granted.contains(s)).collect();
        let roles = lookup_claim(claims, &spec.roles_claim);
        let role_split: Vec<&str> = match roles {
            Some(Value::String(s)) => s.split([' ', ',']).filter(|r| !r.is_empty()).collect(),
            _ => Vec::new(),
        };
        let has_role = |r: &String| claim_has(roles, r) || role_split.contains(&r.as_str());

        // Each listed scope, role and claim is one requirement; each allow-list is one.
        let mut results: Vec<bool> = Vec::new();
        results.extend(spec.scopes.iter().map(|s| !missing_scopes.contains(&s.as_str())));
        results.extend(spec.roles.iter().map(has_role));
        results.extend(
            spec.claims
                .iter()
                .map(|(name, accepted)| accepted.iter().any(|a| claim_has(lookup_claim(claims, name), a))),
        );
        if !spec.consumers.is_empty() {
            results.push(ctx.consumer.as_deref().is_some_and(|c| spec.consumers.iter().any(|a| a == c)));
        }
        if !spec.principals.is_empty() {
            results.push(ctx.principal.as_deref().is_some_and(|p| spec.principals.iter().any(|a| a == p)));
        }
        let allowed = match spec.mode {
            Mode::All => results.iter().all(|r| *r),
            Mode::Any => results.is_empty() || results.iter().any(|r| *r),
        };
        if allowed {
            return Verdict::Continue;
        }
        let mut rejection = Rejection::new(StatusCode::FORBIDDEN, "forbidden", "not allowed to access this resource");
        if !missing_scopes.is_empty() {
            rejection.message = format!("missing scope: {}", missing_scopes.join(" "));
            // RFC 6750 §3: `scope` lists the scopes needed (all of them, in `all` mode).
            let needed = if spec.mode == Mode::All { spec.scopes.join(" ") } else { missing_scopes.join(" ") };
            let challenge = format!(
                "Bearer realm=\"{}\", error=\"insufficient_scope\", error_description=\"missing scope\", scope=\"{needed}\"",
                spec.realm
            );
            if let Ok(v) = HeaderValue::try_from(challenge) {
                rejection.headers.insert(header::WWW_AUTHENTICATE, v);
            }
        }
        Verdict::Reject(rejection)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn policy(text: &str) -> AuthzPolicy {
        match crate::policy::spec_from_str(&format!("kind = \"authz\"\n{text}")).unwrap() {
            crate::policy::PolicySpec::Authz(s) => AuthzPolicy::new(&s),
            _ => unreachable!("an authz table"),
        }
    }

    fn decide(p: &AuthzPolicy, method: &str, claims: Option<Value>, consumer: Option<&str>) -> (u16, Option<String>) {
        let (mut parts, ()) = http::Request::builder().method(method).uri("/").body(()).unwrap().into_parts();
        let mut ctx = crate::policy::test_context();
        ctx.principal = claims.as_ref().and_then(|c| c["sub"].as_str()).map(Arc::from);
        ctx.claims = claims.map(Arc::new);
        ctx.consumer = consumer.map(Arc::from);
        match p.on_request(&mut parts, &mut ctx) {
            Verdict::Continue => (200, None),
            Verdict::Reject(r) => {
                (r.status.as_u16(), r.headers.get(header::WWW_AUTHENTICATE).map(|v| v.to_str().unwrap().to_string()))
            }
            Verdict::Respond(..) => unreachable!(),
        }
    }

    #[test]
    fn scopes_from_scope_and_scp() {
        let p = policy("require_scopes = [\"read\", \"write\"]");
        let both = serde_json::json!({"sub": "a", "scope": "read write"});
        assert_eq!(decide(&p, "GET", Some(both), None).0, 200);
        let scp = serde_json::json!({"sub": "a", "scp": ["write", "read"]});
        assert_eq!(decide(&p, "GET", Some(scp), None).0, 200);
        let partial = serde_json::json!({"sub": "a", "scope": "read"});
        let (status, challenge) = decide(&p, "GET", Some(partial), None);
        assert_eq!(status, 403);
        let challenge = challenge.unwrap();
        assert!(challenge.contains("error=\"insufficient_scope\"") && challenge.contains("scope=\"read write\""));
        assert_eq!(decide(&p, "GET", None, None), (401, Some("Bearer realm=\"tollgate\"".into())));
    }

    #[test]
    fn any_and_all_over_roles_claims_consumers() {
        let all =
            policy("require_roles = [\"ops\"]\nrequire_claims = { tenant = [\"acme\", \"umbrella\"], level = 3 }");
        let ok = serde_json::json!({"sub": "a", "roles": ["dev", "ops"], "tenant": "acme", "level": 3});
        assert_eq!(decide(&all, "GET", Some(ok), None).0, 200);
        let wrong_tenant = serde_json::json!({"sub": "a", "roles": "ops", "tenant": "evil", "level": 3});
        assert_eq!(decide(&all, "GET", Some(wrong_tenant), None), (403, None));
        let any = policy("match = \"any\"\nrequire_roles = [\"admin\"]\nallow_consumers = [\"alice\"]");
        assert_eq!(decide(&any, "GET", None, Some("alice")).0, 200);
        assert_eq!(decide(&any, "GET", None, Some("bob")).0, 403);
        let nested = policy("roles_claim = \"realm_access.roles\"\nrequire_roles = [\"admin\"]");
        let keycloak = serde_json::json!({"sub": "a", "realm_access": {"roles": ["admin"]}});
        assert_eq!(decide(&nested, "GET", Some(keycloak), None).0, 200);
    }

    #[test]
    fn methods_limit_where_it_applies() {
        let p = policy("methods = [\"post\", \"DELETE\"]\nrequire_scopes = [\"write\"]");
        assert_eq!(decide(&p, "GET", None, None).0, 200);
        assert_eq!(decide(&p, "POST", None, None).0, 401);
        assert_eq!(decide(&p, "DELETE", Some(serde_json::json!({"sub": "a", "scope": "write"})), None).0, 200);
        let bare = policy("");
        assert_eq!(decide(&bare, "GET", None, Some("x")).0, 200);
        assert!(crate::policy::spec_from_str("kind = \"authz\"\nmatch = \"some\"").is_err());
        assert!(crate::policy::spec_from_str("kind = \"authz\"\nrequire_scopes = [\"a b\"]").is_err());
    }
}
