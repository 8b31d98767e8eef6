//! The shared policy table: each case is written once and run for every
//! downstream protocol (HTTP/1.1, h2c, HTTP/2 over TLS, HTTP/3 over QUIC
//! with aioquic's client); a policy must give the same answer whatever
//! protocol the client spoke. The WebSocket and gRPC bridges run the same
//! kinds of cases in websocket_policies.rs and grpc_policy.rs.

mod common;

use std::net::SocketAddr;

use common::transport::write_cert;
use common::*;

/// A downstream protocol a case runs over, as curl spells it.
#[derive(Debug, Clone, Copy)]
enum Protocol {
    Http1,
    H2c,
    H2Tls,
    H3,
}

const PROTOCOLS: [Protocol; 4] = [Protocol::Http1, Protocol::H2c, Protocol::H2Tls, Protocol::H3];

/// What a case expects of one response header.
#[allow(dead_code)] // variants are used by rows added per policy kind
enum Expect {
    Absent,
    Equals(&'static str),
    StartsWith(&'static str),
}

/// One row of the table.
struct Case {
    name: &'static str,
    /// `[policy.NAME]` blocks.
    policies: &'static str,
    /// Policy names attached to the route.
    attach: &'static [&'static str],
    method: &'static str,
    path: &'static str,
    request_headers: &'static [(&'static str, &'static str)],
    status: u16,
    response_headers: &'static [(&'static str, Expect)],
    /// Whether the backend must (Some(true)) or must not (Some(false)) see the request.
    reaches_backend: bool,
    /// Headers the backend must see (Some(value)) or must not see (None).
    backend_headers: &'static [(&'static str, Option<&'static str>)],
}

/// A running gateway for one case: a cleartext and a TLS listener, both
/// routing to one echo backend through the case's policies.
struct Rig {
    tollgate: Tollgate,
    backend: Backend,
    tls_addr: SocketAddr,
}

impl Rig {
    fn start(case: &Case) -> Rig {
        let backend = Backend::fixed("backend says hi");
        let cert_dir = tempfile::tempdir().unwrap();
        let cert = write_cert(cert_dir.path(), "gw", "localhost", &["localhost"]);
        let plain: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let tls_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let attach: Vec<String> = case.attach.iter().map(|p| format!("\"{p}\"")).collect();
        let config = format!(
            "[[listener]]\nname = \"plain\"\nbind = \"{plain}\"\n\n\
             [[listener]]\nname = \"tls\"\nbind = \"{tls_addr}\"\ntls = {{ cert = \"{}\", key = \"{}\" }}\nhttp3 = true\n\n\
             [[upstream]]\nname = \"echo\"\ntargets = [\"{}\"]\n\n\
             [[route]]\nname = \"guarded\"\nmatch = {{ path_prefix = \"/\" }}\nupstream = \"echo\"\npolicies = [{}]\n\n{}\n",
            cert.cert.display(),
            cert.key.display(),
            backend.addr,
            attach.join(", "),
            case.policies,
        );
        let tollgate = Tollgate::start(&config, plain);
        std::mem::forget(cert_dir); // the certificate files must outlive the process; the OS temp dir is cleaned later
        Rig { tollgate, backend, tls_addr }
    }

    fn request(&self, case: &Case, protocol: Protocol) -> (u16, String, Vec<u8>) {
        let url = match protocol {
            Protocol::Http1 | Protocol::H2c => self.tollgate.url(case.path),
            Protocol::H2Tls => format!("https://localhost:{}{}", self.tls_addr.port(), case.path),
            Protocol::H3 => return self.request_h3(case),
        };
        let resolve = format!("localhost:{}:127.0.0.1", self.tls_addr.port());
        let mut args: Vec<String> = match protocol {
            Protocol::Http1 => vec!["--http1.1".into()],
            Protocol::H2c => vec!["--http2-prior-knowledge".into()],
            Protocol::H2Tls => vec!["--http2".into(), "-k".into(), "--resolve".into(), resolve],
            Protocol::H3 => unreachable!("sent by request_h3"),
        };
        args.extend(["-X".into(), case.method.into()]);
        for (name, value) in case.request_headers {
            args.extend(["-H".into(), format!("{name}: {value}")]);
        }
        args.push(url);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        curl_full(&refs)
    }

    /// The case's request over HTTP/3, answered in curl's shape.
    fn request_h3(&self, case: &Case) -> (u16, String, Vec<u8>) {
        let headers: Vec<[&str; 2]> = case.request_headers.iter().map(|(n, v)| [*n, *v]).collect();
        let result = h3_kit::h3_request(
            self.tls_addr,
            serde_json::json!({ "method": case.method, "path": case.path, "headers": headers }),
        );
        let status = result["status"].as_u64().unwrap_or(0) as u16;
        (status, h3_kit::as_header_dump(&result), result["body_text"].as_str().unwrap_or("").as_bytes().to_vec())
    }
}

fn run(case: &Case) {
    let rig = Rig::start(case);
    for protocol in PROTOCOLS {
        check(&rig, case, protocol);
    }
}

/// Like [`run`] for cases whose answer depends on earlier requests (rate
/// limits): per protocol, a fresh gateway gets the case's request `before`
/// times (answers unchecked), then the next answer is checked.
fn run_after(before: usize, case: &Case) {
    for protocol in PROTOCOLS {
        let rig = Rig::start(case);
        for _ in 0..before {
            rig.request(case, protocol);
        }
        check(&rig, case, protocol);
    }
}

/// Sends the case's request once over `protocol` and checks the answer.
fn check(rig: &Rig, case: &Case, protocol: Protocol) {
    let before = rig.backend.requests().len();
    let (status, headers, body) = rig.request(case, protocol);
    let context = format!(
        "case `{}` over {protocol:?}: headers:\n{headers}\nbody: {}",
        case.name,
        String::from_utf8_lossy(&body)
    );
    assert_eq!(status, case.status, "{context}");
    for (name, expect) in case.response_headers {
        let value = header_value(&headers, name);
        match expect {
            Expect::Absent => assert!(value.is_none(), "{name} should be absent; {context}"),
            Expect::Equals(v) => assert_eq!(value.as_deref(), Some(*v), "{name}; {context}"),
            Expect::StartsWith(v) => {
                assert!(value.as_deref().is_some_and(|h| h.starts_with(v)), "{name} should start with {v}; {context}")
            }
        }
    }
    let seen = rig.backend.requests();
    assert_eq!(seen.len() > before, case.reaches_backend, "backend reached?; {context}");
    if case.reaches_backend {
        let last = &seen[seen.len() - 1].headers;
        for (name, expect) in case.backend_headers {
            let got = last.get(*name).map(|v| v.to_str().unwrap().to_string());
            assert_eq!(got.as_deref(), *expect, "backend header {name}; {context}");
        }
    }
}

const STAMP: &str = "[policy.stamp]\nkind = \"headers\"\n\
    request_set = { x-client = \"{client_ip}\", x-route = \"{route}\" }\n\
    request_remove = [\"x-secret\"]\n\
    response_set = { x-served-by = \"tollgate {request_id}\" }\n\
    response_remove = [\"x-powered-by\"]\n";

#[test]
fn headers_policy_edits_request_and_response_headers_on_every_protocol() {
    run(&Case {
        name: "headers edit both ways",
        policies: STAMP,
        attach: &["stamp"],
        method: "GET",
        path: "/anything",
        request_headers: &[("x-secret", "hunter2"), ("x-kept", "yes")],
        status: 200,
        response_headers: &[("x-served-by", Expect::StartsWith("tollgate ")), ("x-powered-by", Expect::Absent)],
        reaches_backend: true,
        backend_headers: &[
            ("x-secret", None),
            ("x-kept", Some("yes")),
            ("x-client", Some("127.0.0.1")),
            ("x-route", Some("guarded")),
        ],
    });
}

// ---------------------------------------------------------------------------
// ip_filter: every case here comes from 127.0.0.1; cases from other source
// addresses (loopback aliases, ::1, PROXY protocol) are in policy_ip_cors.rs.
// ---------------------------------------------------------------------------

#[test]
fn ip_filter_denies_a_denied_client_with_403_before_the_backend() {
    run(&Case {
        name: "ip_filter deny wins over allow",
        policies: "[policy.edge]\nkind = \"ip_filter\"\nallow = [\"127.0.0.0/8\", \"::1/128\"]\ndeny = [\"127.0.0.1/32\"]\n",
        attach: &["edge"],
        method: "GET",
        path: "/anything",
        request_headers: &[],
        status: 403,
        response_headers: &[("content-type", Expect::Equals("application/json"))],
        reaches_backend: false,
        backend_headers: &[],
    });
}

#[test]
fn ip_filter_ignores_x_forwarded_for_from_an_untrusted_peer() {
    // A client claiming a denied address in X-Forwarded-For is still judged by its socket.
    let policies = format!(
        "[policy.edge]\nkind = \"ip_filter\"\nallow = [\"127.0.0.0/8\"]\ndeny = [\"203.0.113.0/24\"]\n\n{STAMP}"
    );
    run(&Case {
        name: "spoofed X-Forwarded-For ignored",
        policies: leak(policies),
        attach: &["edge", "stamp"],
        method: "GET",
        path: "/anything",
        request_headers: &[("x-forwarded-for", "203.0.113.9")],
        status: 200,
        response_headers: &[],
        reaches_backend: true,
        backend_headers: &[("x-client", Some("127.0.0.1")), ("x-forwarded-for", Some("203.0.113.9, 127.0.0.1"))],
    });
}

#[test]
fn ip_filter_believes_x_forwarded_for_from_a_trusted_proxy() {
    run(&Case {
        name: "trusted proxy's X-Forwarded-For decides",
        policies: "[policy.edge]\nkind = \"ip_filter\"\ndeny = [\"203.0.113.0/24\"]\ntrusted_proxies = [\"127.0.0.1\"]\n",
        attach: &["edge"],
        method: "GET",
        path: "/anything",
        request_headers: &[("x-forwarded-for", "203.0.113.9")],
        status: 403,
        response_headers: &[],
        reaches_backend: false,
        backend_headers: &[],
    });
}

#[test]
fn ip_filter_walks_x_forwarded_for_right_to_left_and_later_policies_see_the_client() {
    // The leftmost entry is the client's own claim; the first untrusted hop from the right is the client.
    let policies = format!(
        "[policy.edge]\nkind = \"ip_filter\"\ndeny = [\"203.0.113.0/24\"]\ntrusted_proxies = [\"127.0.0.0/8\"]\n\n{STAMP}"
    );
    run(&Case {
        name: "right-to-left X-Forwarded-For",
        policies: leak(policies),
        attach: &["stamp", "edge"],
        method: "GET",
        path: "/anything",
        request_headers: &[("x-forwarded-for", "203.0.113.9, 198.51.100.7, 127.0.0.5")],
        status: 200,
        response_headers: &[],
        reaches_backend: true,
        backend_headers: &[("x-client", Some("198.51.100.7"))],
    });
}

#[test]
fn ip_filter_reads_rfc7239_forwarded_when_configured() {
    run(&Case {
        name: "Forwarded for= with IPv6",
        policies: "[policy.edge]\nkind = \"ip_filter\"\ndeny = [\"2001:db8::/32\"]\n\
                   trusted_proxies = [\"127.0.0.1\"]\nclient_ip_header = \"forwarded\"\n",
        attach: &["edge"],
        method: "GET",
        path: "/anything",
        request_headers: &[("forwarded", "for=\"[2001:db8::7]:4711\";proto=https")],
        status: 403,
        response_headers: &[],
        reaches_backend: false,
        backend_headers: &[],
    });
}

// ---------------------------------------------------------------------------
// cors
// ---------------------------------------------------------------------------

const CORS: &str = "[policy.browser]\nkind = \"cors\"\n\
    allow_origins = [\"https://app.example\", \"https://*.example.com\"]\n\
    allow_methods = [\"GET\", \"POST\"]\n\
    allow_headers = [\"content-type\", \"x-grpc-web\"]\n\
    expose_headers = [\"grpc-status\", \"grpc-message\"]\n\
    allow_credentials = true\n\
    max_age = 600\n";

#[test]
fn cors_preflight_is_answered_by_the_gateway() {
    run(&Case {
        name: "CORS preflight from an allowed origin",
        policies: CORS,
        attach: &["browser"],
        method: "OPTIONS",
        path: "/api/items",
        request_headers: &[
            ("origin", "https://app.example"),
            ("access-control-request-method", "POST"),
            ("access-control-request-headers", "content-type"),
        ],
        status: 204,
        response_headers: &[
            ("access-control-allow-origin", Expect::Equals("https://app.example")),
            ("access-control-allow-credentials", Expect::Equals("true")),
            ("access-control-allow-methods", Expect::Equals("GET, POST")),
            ("access-control-allow-headers", Expect::Equals("content-type, x-grpc-web")),
            ("access-control-max-age", Expect::Equals("600")),
            ("vary", Expect::Equals("Origin")),
        ],
        reaches_backend: false,
        backend_headers: &[],
    });
}

#[test]
fn cors_preflight_from_a_disallowed_origin_gets_no_allow_headers() {
    run(&Case {
        name: "CORS preflight from another origin",
        policies: CORS,
        attach: &["browser"],
        method: "OPTIONS",
        path: "/api/items",
        request_headers: &[("origin", "https://evil.example"), ("access-control-request-method", "POST")],
        status: 204,
        response_headers: &[
            ("access-control-allow-origin", Expect::Absent),
            ("access-control-allow-credentials", Expect::Absent),
            ("access-control-allow-methods", Expect::Absent),
        ],
        reaches_backend: false,
        backend_headers: &[],
    });
}

#[test]
fn cors_actual_request_from_a_pattern_origin_gets_allow_and_expose_headers() {
    run(&Case {
        name: "CORS actual request",
        policies: CORS,
        attach: &["browser"],
        method: "POST",
        path: "/api/items",
        request_headers: &[("origin", "https://shop.example.com")],
        status: 200,
        response_headers: &[
            ("access-control-allow-origin", Expect::Equals("https://shop.example.com")),
            ("access-control-allow-credentials", Expect::Equals("true")),
            ("access-control-expose-headers", Expect::Equals("grpc-status, grpc-message")),
            ("vary", Expect::Equals("Origin")),
        ],
        reaches_backend: true,
        backend_headers: &[("origin", Some("https://shop.example.com"))],
    });
}

#[test]
fn cors_wildcard_without_credentials_sends_a_star_and_no_vary() {
    run(&Case {
        name: "CORS any origin",
        policies: "[policy.open]\nkind = \"cors\"\nallow_origins = [\"*\"]\n",
        attach: &["open"],
        method: "GET",
        path: "/public",
        request_headers: &[("origin", "https://anyone.example")],
        status: 200,
        response_headers: &[
            ("access-control-allow-origin", Expect::Equals("*")),
            ("access-control-allow-credentials", Expect::Absent),
            ("vary", Expect::Absent),
        ],
        reaches_backend: true,
        backend_headers: &[],
    });
}

#[test]
fn cors_options_without_a_request_method_is_not_a_preflight() {
    run(&Case {
        name: "plain OPTIONS goes to the backend",
        policies: CORS,
        attach: &["browser"],
        method: "OPTIONS",
        path: "/api/items",
        request_headers: &[("origin", "https://app.example")],
        status: 200,
        response_headers: &[("access-control-allow-origin", Expect::Equals("https://app.example"))],
        reaches_backend: true,
        backend_headers: &[],
    });
}

#[test]
fn ip_filter_runs_before_cors_and_its_403_still_carries_cors_headers() {
    // The preflight is refused by ip_filter (first in the order), and the
    // browser can still read why: every policy edits the response on the way back.
    let policies = format!("[policy.edge]\nkind = \"ip_filter\"\ndeny = [\"127.0.0.1\"]\n\n{CORS}");
    run(&Case {
        name: "ip_filter before cors",
        policies: leak(policies),
        attach: &["browser", "edge"],
        method: "OPTIONS",
        path: "/api/items",
        request_headers: &[("origin", "https://app.example"), ("access-control-request-method", "POST")],
        status: 403,
        response_headers: &[
            ("access-control-allow-origin", Expect::Equals("https://app.example")),
            ("access-control-allow-methods", Expect::Absent),
        ],
        reaches_backend: false,
        backend_headers: &[],
    });
}

// ---------------------------------------------------------------------------
// Authentication (api_key, jwt) and authz. Tokens are made here with the
// `jsonwebtoken` crate and leaked to `'static` so rows keep their shape; mTLS,
// JWKS rotation and the other key types are in policy_auth.rs.
// ---------------------------------------------------------------------------

const KEYS: &str = "[policy.keys]\nkind = \"api_key\"\nheader = \"x-api-key\"\nquery = \"api_key\"\n\
    keys = { alice = \"alice-key-0123456789\", bob = \"bob-key-0123456789ab\" }\nstrip_key = true\n";

/// Shows the principal the auth policies recorded to the backend (headers run after auth).
const WHO: &str = "[policy.who]\nkind = \"headers\"\nrequest_set = { x-principal = \"{principal}\" }\n";

const TABLE_SECRET: &str = "table-secret-0123456789abcdef-0123";

const JWT: &str = "[policy.jwt]\nkind = \"jwt\"\nsecret = \"table-secret-0123456789abcdef-0123\"\n\
    issuer = \"https://issuer.test\"\naudience = \"tollgate\"\nleeway = \"0s\"\n\
    forward_claims = { sub = \"x-user\", email = \"x-email\" }\nstrip_authorization = true\n";

fn leak(text: String) -> &'static str {
    Box::leak(text.into_boxed_str())
}

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// `Bearer <HS256 token>` over `claims`, with `iss`, `aud` and a future `exp` filled in unless given.
fn bearer(mut claims: serde_json::Value) -> &'static str {
    let object = claims.as_object_mut().unwrap();
    object.entry("iss").or_insert("https://issuer.test".into());
    object.entry("aud").or_insert("tollgate".into());
    object.entry("exp").or_insert((unix_now() + 600).into());
    let key = jsonwebtoken::EncodingKey::from_secret(TABLE_SECRET.as_bytes());
    let token =
        jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256), &claims, &key).unwrap();
    leak(format!("Bearer {token}"))
}

#[test]
fn api_key_in_a_header_names_the_consumer_and_is_stripped() {
    run(&Case {
        name: "api_key header",
        policies: leak(format!("{KEYS}\n{WHO}")),
        attach: &["keys", "who"],
        method: "GET",
        path: "/anything",
        request_headers: &[("x-api-key", "bob-key-0123456789ab")],
        status: 200,
        response_headers: &[("www-authenticate", Expect::Absent)],
        reaches_backend: true,
        backend_headers: &[("x-api-key", None), ("x-principal", Some("bob"))],
    });
}

#[test]
fn api_key_in_the_query_is_accepted_and_removed_before_forwarding() {
    let rig_case = Case {
        name: "api_key query",
        policies: leak(format!("{KEYS}\n{WHO}")),
        attach: &["keys", "who"],
        method: "GET",
        path: "/items?page=2&api_key=alice-key-0123456789",
        request_headers: &[],
        status: 200,
        response_headers: &[],
        reaches_backend: true,
        backend_headers: &[("x-principal", Some("alice"))],
    };
    run(&rig_case);
}

#[test]
fn api_key_missing_or_wrong_is_401_with_a_challenge_and_the_same_message() {
    for (name, headers) in
        [("api_key missing", &[][..]), ("api_key wrong", &[("x-api-key", "alice-key-0123456780")][..])]
    {
        run(&Case {
            name,
            policies: KEYS,
            attach: &["keys"],
            method: "GET",
            path: "/anything",
            request_headers: headers,
            status: 401,
            response_headers: &[(
                "www-authenticate",
                Expect::Equals("ApiKey realm=\"tollgate\", header=\"x-api-key\""),
            )],
            reaches_backend: false,
            backend_headers: &[],
        });
    }
}

#[test]
fn api_key_header_repeated_is_400() {
    run(&Case {
        name: "api_key repeated",
        policies: KEYS,
        attach: &["keys"],
        method: "GET",
        path: "/anything",
        request_headers: &[("x-api-key", "alice-key-0123456789"), ("x-api-key", "bob-key-0123456789ab")],
        status: 400,
        response_headers: &[],
        reaches_backend: false,
        backend_headers: &[],
    });
}

#[test]
fn jwt_valid_token_forwards_claims_replaces_forged_copies_and_strips_authorization() {
    let token = bearer(serde_json::json!({"sub": "alice", "email": "alice@example.test"}));
    run(&Case {
        name: "jwt valid",
        policies: leak(format!("{JWT}\n{WHO}")),
        attach: &["jwt", "who"],
        method: "GET",
        path: "/anything",
        request_headers: leak_headers(vec![("authorization", token), ("x-user", "mallory"), ("x-email", "m@evil")]),
        status: 200,
        response_headers: &[],
        reaches_backend: true,
        backend_headers: &[
            ("authorization", None),
            ("x-user", Some("alice")),
            ("x-email", Some("alice@example.test")),
            ("x-principal", Some("alice")),
        ],
    });
}

#[test]
fn jwt_forged_claim_headers_never_reach_the_backend_even_without_the_claim() {
    let token = bearer(serde_json::json!({"sub": "alice"}));
    run(&Case {
        name: "jwt without email claim",
        policies: JWT,
        attach: &["jwt"],
        method: "GET",
        path: "/anything",
        request_headers: leak_headers(vec![("authorization", token), ("x-email", "m@evil")]),
        status: 200,
        response_headers: &[],
        reaches_backend: true,
        backend_headers: &[("x-email", None), ("x-user", Some("alice"))],
    });
}

fn leak_headers(headers: Vec<(&'static str, &'static str)>) -> &'static [(&'static str, &'static str)] {
    Box::leak(headers.into_boxed_slice())
}

#[test]
fn jwt_missing_token_is_401_with_a_bare_bearer_challenge() {
    run(&Case {
        name: "jwt missing",
        policies: JWT,
        attach: &["jwt"],
        method: "GET",
        path: "/anything",
        request_headers: &[("authorization", "Basic YWxpY2U6cHc=")],
        status: 401,
        response_headers: &[("www-authenticate", Expect::Equals("Bearer realm=\"tollgate\""))],
        reaches_backend: false,
        backend_headers: &[],
    });
}

#[test]
fn jwt_bad_tokens_are_401_invalid_token_with_a_reason() {
    let cases: [(&'static str, &'static str, &'static str); 6] = [
        ("expired", bearer(serde_json::json!({"sub": "a", "exp": unix_now() - 60})), "token expired"),
        ("not yet valid", bearer(serde_json::json!({"sub": "a", "nbf": unix_now() + 600})), "token not valid yet"),
        (
            "wrong issuer",
            bearer(serde_json::json!({"sub": "a", "iss": "https://evil.test"})),
            "token issuer not accepted",
        ),
        (
            "wrong audience",
            bearer(serde_json::json!({"sub": "a", "aud": "someone-else"})),
            "token audience not accepted",
        ),
        // {"alg":"none"} with the claims a valid token would carry, and no signature.
        (
            "alg none",
            leak(format!(
                "Bearer eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.",
                bearer(serde_json::json!({"sub": "a"})).split('.').nth(1).unwrap()
            )),
            "token algorithm not allowed",
        ),
        ("malformed", "Bearer not-a-jwt", "malformed token"),
    ];
    for (name, token, reason) in cases {
        let challenge =
            leak(format!("Bearer realm=\"tollgate\", error=\"invalid_token\", error_description=\"{reason}\""));
        run(&Case {
            name,
            policies: JWT,
            attach: &["jwt"],
            method: "GET",
            path: "/anything",
            request_headers: leak_headers(vec![("authorization", token)]),
            status: 401,
            response_headers: Box::leak(Box::new([("www-authenticate", Expect::Equals(challenge))])),
            reaches_backend: false,
            backend_headers: &[],
        });
    }
}

#[test]
fn jwt_signed_with_another_secret_is_401() {
    let key = jsonwebtoken::EncodingKey::from_secret(b"another-secret-0123456789abcdef-01");
    let claims =
        serde_json::json!({"sub": "a", "iss": "https://issuer.test", "aud": "tollgate", "exp": unix_now() + 600});
    let token =
        jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256), &claims, &key).unwrap();
    run(&Case {
        name: "jwt wrong key",
        policies: JWT,
        attach: &["jwt"],
        method: "GET",
        path: "/anything",
        request_headers: leak_headers(vec![("authorization", leak(format!("Bearer {token}")))]),
        status: 401,
        response_headers: &[(
            "www-authenticate",
            Expect::StartsWith("Bearer realm=\"tollgate\", error=\"invalid_token\""),
        )],
        reaches_backend: false,
        backend_headers: &[],
    });
}

const ADMINS: &str =
    "[policy.admins]\nkind = \"authz\"\nrequire_scopes = [\"admin\"]\nmethods = [\"POST\", \"DELETE\"]\n";

#[test]
fn authz_403_names_the_missing_scope_and_200_when_granted() {
    let reader = bearer(serde_json::json!({"sub": "a", "scope": "read"}));
    run(&Case {
        name: "authz insufficient scope",
        policies: leak(format!("{JWT}\n{ADMINS}")),
        attach: &["admins", "jwt"],
        method: "POST",
        path: "/anything",
        request_headers: leak_headers(vec![("authorization", reader)]),
        status: 403,
        response_headers: &[(
            "www-authenticate",
            Expect::Equals(
                "Bearer realm=\"tollgate\", error=\"insufficient_scope\", error_description=\"missing scope\", scope=\"admin\"",
            ),
        )],
        reaches_backend: false,
        backend_headers: &[],
    });
    let admin = bearer(serde_json::json!({"sub": "root", "scp": ["read", "admin"]}));
    run(&Case {
        name: "authz scope granted",
        policies: leak(format!("{JWT}\n{ADMINS}")),
        attach: &["admins", "jwt"],
        method: "DELETE",
        path: "/anything",
        request_headers: leak_headers(vec![("authorization", admin)]),
        status: 200,
        response_headers: &[],
        reaches_backend: true,
        backend_headers: &[("x-user", Some("root"))],
    });
}

#[test]
fn authz_401_when_nobody_authenticated_and_only_for_its_methods() {
    let optional_keys = leak(format!("{}optional = true\n\n{ADMINS}", KEYS));
    run(&Case {
        name: "authz unauthenticated POST",
        policies: optional_keys,
        attach: &["keys", "admins"],
        method: "POST",
        path: "/anything",
        request_headers: &[],
        status: 401,
        response_headers: &[("www-authenticate", Expect::Equals("Bearer realm=\"tollgate\""))],
        reaches_backend: false,
        backend_headers: &[],
    });
    run(&Case {
        name: "authz does not apply to GET",
        policies: optional_keys,
        attach: &["keys", "admins"],
        method: "GET",
        path: "/anything",
        request_headers: &[],
        status: 200,
        response_headers: &[],
        reaches_backend: true,
        backend_headers: &[],
    });
}

// ---------------------------------------------------------------------------
// rate_limit: answers that depend on earlier requests use `run_after`, which
// gives each protocol a fresh gateway (fresh buckets). Redis, several
// instances and outages are in policy_rate_limit.rs.
// ---------------------------------------------------------------------------

const PER_IP: &str = "[policy.rl]\nkind = \"rate_limit\"\nrate = \"5/h\"\n";

#[test]
fn rate_limit_reports_its_numbers_on_allowed_responses() {
    run_after(
        0,
        &Case {
            name: "RateLimit fields on a 200",
            policies: PER_IP,
            attach: &["rl"],
            method: "GET",
            path: "/anything",
            request_headers: &[],
            status: 200,
            // A bucket of 5 refilled one request per 720 s: one taken, full again in 720 s.
            response_headers: &[
                ("ratelimit-limit", Expect::Equals("5")),
                ("ratelimit-remaining", Expect::Equals("4")),
                ("ratelimit-reset", Expect::Equals("720")),
                ("retry-after", Expect::Absent),
            ],
            reaches_backend: true,
            backend_headers: &[],
        },
    );
}

#[test]
fn rate_limit_refuses_past_the_burst_with_429_and_retry_after() {
    run_after(
        5,
        &Case {
            name: "sixth request of 5/h",
            policies: PER_IP,
            attach: &["rl"],
            method: "POST",
            path: "/anything",
            request_headers: &[],
            status: 429,
            response_headers: &[
                ("content-type", Expect::Equals("application/json")),
                // 720 s to the next request, 3600 s to a full bucket (less the test's own run time).
                ("retry-after", Expect::StartsWith("7")),
                ("ratelimit-limit", Expect::Equals("5")),
                ("ratelimit-remaining", Expect::Equals("0")),
                ("ratelimit-reset", Expect::StartsWith("3")),
            ],
            reaches_backend: false,
            backend_headers: &[],
        },
    );
}

const KEYED_BY_CONSUMER: &str = "[policy.keys]\nkind = \"api_key\"\nkeys = { alice = \"alice-key-0123456789\" }\n\n\
    [policy.rl]\nkind = \"rate_limit\"\nkey = \"consumer\"\nrate = \"1/h\"\n";

#[test]
fn rate_limit_keyed_by_consumer_counts_the_authenticated_consumer() {
    run_after(
        1,
        &Case {
            name: "consumer over its budget",
            policies: KEYED_BY_CONSUMER,
            attach: &["rl", "keys"],
            method: "GET",
            path: "/anything",
            request_headers: &[("x-api-key", "alice-key-0123456789")],
            status: 429,
            response_headers: &[("retry-after", Expect::StartsWith("3")), ("ratelimit-limit", Expect::Equals("1"))],
            reaches_backend: false,
            backend_headers: &[],
        },
    );
}

#[test]
fn rate_limit_runs_after_authentication_so_refused_requests_spend_no_budget() {
    // Listed first, run after api_key: unauthenticated requests are 401, never 429.
    run_after(
        3,
        &Case {
            name: "unauthenticated requests stay 401",
            policies: KEYED_BY_CONSUMER,
            attach: &["rl", "keys"],
            method: "GET",
            path: "/anything",
            request_headers: &[],
            status: 401,
            response_headers: &[("ratelimit-limit", Expect::Absent), ("retry-after", Expect::Absent)],
            reaches_backend: false,
            backend_headers: &[],
        },
    );
}

#[test]
fn cors_answers_preflights_before_authentication() {
    // A browser never sends credentials on a preflight: cors (order 5) answers it before api_key (12).
    run(&Case {
        name: "preflight needs no API key",
        policies: leak(format!("{KEYS}\n{CORS}")),
        attach: &["keys", "browser"],
        method: "OPTIONS",
        path: "/api/items",
        request_headers: &[("origin", "https://app.example"), ("access-control-request-method", "POST")],
        status: 204,
        response_headers: &[("access-control-allow-origin", Expect::Equals("https://app.example"))],
        reaches_backend: false,
        backend_headers: &[],
    });
}

#[test]
fn cors_headers_reach_the_browser_on_an_authentication_401() {
    run(&Case {
        name: "401 readable cross-origin",
        policies: leak(format!("{KEYS}\n{CORS}")),
        attach: &["keys", "browser"],
        method: "GET",
        path: "/api/items",
        request_headers: &[("origin", "https://app.example")],
        status: 401,
        response_headers: &[
            ("access-control-allow-origin", Expect::Equals("https://app.example")),
            ("access-control-allow-credentials", Expect::Equals("true")),
        ],
        reaches_backend: false,
        backend_headers: &[],
    });
}
