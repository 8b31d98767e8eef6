//! The shared policy table: each case is written once and run for every
//! downstream protocol (HTTP/1.1, h2c, HTTP/2 over TLS); a policy must give
//! the same answer whatever protocol the client spoke. Later bridges
//! (WebSocket, gRPC, gRPC-Web, HTTP/3) add their protocols to `PROTOCOLS`.

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
}

const PROTOCOLS: [Protocol; 3] = [Protocol::Http1, Protocol::H2c, Protocol::H2Tls];

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
             [[listener]]\nname = \"tls\"\nbind = \"{tls_addr}\"\ntls = {{ cert = \"{}\", key = \"{}\" }}\n\n\
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
        };
        let resolve = format!("localhost:{}:127.0.0.1", self.tls_addr.port());
        let mut args: Vec<String> = match protocol {
            Protocol::Http1 => vec!["--http1.1".into()],
            Protocol::H2c => vec!["--http2-prior-knowledge".into()],
            Protocol::H2Tls => vec!["--http2".into(), "-k".into(), "--resolve".into(), resolve],
        };
        args.extend(["-X".into(), case.method.into()]);
        for (name, value) in case.request_headers {
            args.extend(["-H".into(), format!("{name}: {value}")]);
        }
        args.push(url);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        curl_full(&refs)
    }
}

fn run(case: &Case) {
    let rig = Rig::start(case);
    for protocol in PROTOCOLS {
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
                    assert!(
                        value.as_deref().is_some_and(|h| h.starts_with(v)),
                        "{name} should start with {v}; {context}"
                    )
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
