//! `kind = "mtls"`: the TLS client certificate authenticates the request.
//!
//! The listener verifies the certificate against its CA bundle during the
//! handshake (`tls = { ..., client_auth = { ca = "ca.pem", mode = "request" } }`);
//! this policy turns what was verified into the principal and can forward
//! it to the backend. On a `mode = "request"` listener a client may connect
//! without a certificate; this policy then refuses the request with 403: a
//! 401 must carry an HTTP challenge (RFC 9110 §15.5.2) and TLS client
//! authentication has none.
//!
//! ```toml
//! [policy.clients]
//! kind = "mtls"
//! principal = "cn"                       # or "subject", "dns", "uri"
//! forward_subject = "x-client-subject"   # RFC 4514 string, e.g. CN=alice,O=Acme
//! forward_sans = "x-client-san"          # DNS and URI SANs, comma-separated
//! ```

use std::sync::Arc;

use http::{HeaderName, HeaderValue, StatusCode};
use serde::Deserialize;
use toml::Spanned;

use super::{Rejection, SpecError, Verdict};
use crate::model::{ClientCert, RequestContext};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMtls {
    #[allow(dead_code)]
    kind: String,
    principal: Option<Spanned<String>>,
    forward_subject: Option<Spanned<String>>,
    forward_sans: Option<Spanned<String>>,
    optional: Option<bool>,
}

/// Which part of the certificate names the principal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PrincipalFrom {
    CommonName,
    Subject,
    Dns,
    Uri,
}

/// Validated `mtls` policy config.
#[derive(Debug, Clone)]
pub struct MtlsSpec {
    principal: PrincipalFrom,
    forward_subject: Option<HeaderName>,
    forward_sans: Option<HeaderName>,
    optional: bool,
}

pub(super) fn parse(table: toml::de::ValueDeserializer<'_>) -> Result<MtlsSpec, SpecError> {
    let raw = RawMtls::deserialize(table).map_err(SpecError::from_toml)?;
    let principal = match &raw.principal {
        None => PrincipalFrom::CommonName,
        Some(p) => match p.get_ref().as_str() {
            "cn" => PrincipalFrom::CommonName,
            "subject" => PrincipalFrom::Subject,
            "dns" => PrincipalFrom::Dns,
            "uri" => PrincipalFrom::Uri,
            other => {
                return Err(SpecError::at(
                    p.span(),
                    "principal",
                    format!("`{other}` is not a certificate field; use \"cn\", \"subject\", \"dns\" or \"uri\""),
                ));
            }
        },
    };
    let header = |value: &Option<Spanned<String>>, key: &str| -> Result<Option<HeaderName>, SpecError> {
        value
            .as_ref()
            .map(|v| {
                HeaderName::try_from(v.get_ref().as_str())
                    .map_err(|_| SpecError::at(v.span(), key, format!("`{}` is not a header name", v.get_ref())))
            })
            .transpose()
    };
    Ok(MtlsSpec {
        principal,
        forward_subject: header(&raw.forward_subject, "forward_subject")?,
        forward_sans: header(&raw.forward_sans, "forward_sans")?,
        optional: raw.optional.unwrap_or(false),
    })
}

/// The running policy.
pub struct MtlsPolicy {
    spec: MtlsSpec,
}

impl MtlsPolicy {
    /// Wraps the validated spec.
    pub fn new(spec: &MtlsSpec) -> Self {
        Self { spec: spec.clone() }
    }

    /// Records the certificate's identity, or refuses a request without one.
    pub fn on_request(&self, parts: &mut http::request::Parts, ctx: &mut RequestContext) -> Verdict {
        // The backend must never see client-made copies of these headers.
        for name in [&self.spec.forward_subject, &self.spec.forward_sans].into_iter().flatten() {
            parts.headers.remove(name);
        }
        let cert = ctx.connection.tls.as_ref().and_then(|t| t.client_cert.clone());
        let Some(cert) = cert else {
            if self.spec.optional {
                return Verdict::Continue;
            }
            return Verdict::Reject(Rejection::new(
                StatusCode::FORBIDDEN,
                "client_certificate_required",
                "a TLS client certificate is required",
            ));
        };
        if ctx.principal.is_none() {
            ctx.principal = Some(Arc::from(self.principal_of(&cert)));
        }
        if let Some(name) = &self.spec.forward_subject
            && let Ok(value) = HeaderValue::try_from(cert.subject.as_str())
        {
            parts.headers.insert(name, value);
        }
        if let Some(name) = &self.spec.forward_sans {
            let sans: Vec<&str> = cert.dns_names.iter().chain(&cert.uris).map(String::as_str).collect();
            if !sans.is_empty()
                && let Ok(value) = HeaderValue::try_from(sans.join(","))
            {
                parts.headers.insert(name, value);
            }
        }
        Verdict::Continue
    }

    /// The configured field, falling back to the whole subject when the
    /// certificate lacks it.
    fn principal_of<'a>(&self, cert: &'a ClientCert) -> &'a str {
        let chosen = match self.spec.principal {
            PrincipalFrom::CommonName => cert.common_name.as_deref(),
            PrincipalFrom::Subject => None,
            PrincipalFrom::Dns => cert.dns_names.first().map(String::as_str),
            PrincipalFrom::Uri => cert.uris.first().map(String::as_str),
        };
        chosen.unwrap_or(&cert.subject)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TlsInfo;

    fn policy(text: &str) -> MtlsPolicy {
        match crate::policy::spec_from_str(&format!("kind = \"mtls\"\n{text}")).unwrap() {
            crate::policy::PolicySpec::Mtls(s) => MtlsPolicy::new(&s),
            _ => unreachable!("an mtls table"),
        }
    }

    fn context(cert: Option<ClientCert>) -> RequestContext {
        let mut ctx = crate::policy::test_context();
        let tls = TlsInfo { client_cert: cert.map(Arc::new), ..TlsInfo::default() };
        let old = &ctx.connection;
        ctx.connection =
            Arc::new(crate::model::ConnectionInfo::new(Arc::clone(&old.listener), old.peer, old.local, Some(tls)));
        ctx
    }

    fn alice() -> ClientCert {
        ClientCert {
            subject: "CN=alice,O=Acme".into(),
            common_name: Some("alice".into()),
            dns_names: vec!["alice.example".into()],
            uris: vec!["spiffe://acme/alice".into()],
        }
    }

    #[test]
    fn principal_and_headers_come_from_the_certificate() {
        let p = policy("principal = \"uri\"\nforward_subject = \"x-client-subject\"\nforward_sans = \"x-client-san\"");
        let (mut parts, ()) =
            http::Request::get("/").header("x-client-subject", "CN=forged").body(()).unwrap().into_parts();
        let mut ctx = context(Some(alice()));
        assert!(matches!(p.on_request(&mut parts, &mut ctx), Verdict::Continue));
        assert_eq!(ctx.principal.as_deref(), Some("spiffe://acme/alice"));
        assert_eq!(parts.headers["x-client-subject"], "CN=alice,O=Acme");
        assert_eq!(parts.headers["x-client-san"], "alice.example,spiffe://acme/alice");
    }

    #[test]
    fn no_certificate_is_403_unless_optional() {
        let (mut parts, ()) =
            http::Request::get("/").header("x-client-subject", "CN=forged").body(()).unwrap().into_parts();
        let strict = policy("forward_subject = \"x-client-subject\"");
        match strict.on_request(&mut parts, &mut context(None)) {
            Verdict::Reject(r) => assert_eq!(r.status, 403),
            _ => panic!("a request without a certificate must be refused"),
        }
        let relaxed = policy("optional = true\nforward_subject = \"x-client-subject\"");
        let mut ctx = context(None);
        assert!(matches!(relaxed.on_request(&mut parts, &mut ctx), Verdict::Continue));
        assert!(ctx.principal.is_none());
        assert!(parts.headers.get("x-client-subject").is_none(), "a forged header must not pass");
        assert!(crate::policy::spec_from_str("kind = \"mtls\"\nprincipal = \"serial\"").is_err());
    }
}
