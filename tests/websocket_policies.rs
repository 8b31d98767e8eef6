//! The shared policy table's pattern, for WebSocket: each case is written
//! once and run over every way a WebSocket can arrive (HTTP/1.1 Upgrade,
//! RFC 8441 extended CONNECT over h2c and over TLS), on a tunnel route
//! and a message-mode route. A policy must refuse the upgrade exactly as it
//! refuses a plain request (same status, same headers) and the backend must
//! never see it; an admitted upgrade switches protocols.

mod common;
mod ws_support;

use std::net::SocketAddr;

use common::transport::write_cert;
use common::*;
use ws_support::*;

/// How the WebSocket arrives.
#[derive(Debug, Clone, Copy)]
enum Downstream {
    Http1Upgrade,
    H2cConnect,
    H2TlsConnect,
}

const DOWNSTREAMS: [Downstream; 3] = [Downstream::Http1Upgrade, Downstream::H2cConnect, Downstream::H2TlsConnect];

/// Which bridge the route uses.
const MODES: [&str; 2] = ["tunnel", "http"];

/// One row.
struct Case {
    name: &'static str,
    policies: &'static str,
    attach: &'static [&'static str],
    request_headers: &'static [(&'static str, &'static str)],
    /// Upgrades to send (answers unchecked) before the checked one.
    before: usize,
    /// 101 (HTTP/1.1) / 200 (HTTP/2) means admitted; otherwise the refusal status.
    admitted: bool,
    status: u16,
    /// A response header that must be present on the refusal.
    header: Option<&'static str>,
}

struct Rig {
    tollgate: Tollgate,
    backend: EchoBackend,
    tls_addr: SocketAddr,
    _certs: tempfile::TempDir,
}

impl Rig {
    async fn start(case: &Case, mode: &str) -> Rig {
        let backend = EchoBackend::start().await;
        let certs = tempfile::tempdir().unwrap();
        let cert = write_cert(certs.path(), "gw", "localhost", &["localhost"]);
        let plain: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let tls_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let attach: Vec<String> = case.attach.iter().map(|p| format!("\"{p}\"")).collect();
        let config = format!(
            "[[listener]]\nname = \"plain\"\nbind = \"{plain}\"\n\n\
             [[listener]]\nname = \"tls\"\nbind = \"{tls_addr}\"\ntls = {{ cert = \"{}\", key = \"{}\" }}\n\n\
             [[upstream]]\nname = \"echo\"\ntargets = [\"{}\"]\n\n\
             [[route]]\nname = \"guarded\"\nmatch = {{ path_prefix = \"/\" }}\nupstream = \"echo\"\n\
             websocket = \"{mode}\"\npolicies = [{}]\n\n{}\n",
            cert.cert.display(),
            cert.key.display(),
            backend.addr,
            attach.join(", "),
            case.policies,
        );
        Rig { tollgate: Tollgate::start(&config, plain), backend, tls_addr, _certs: certs }
    }

    /// Sends the upgrade; returns the status and response headers as text.
    async fn upgrade(&self, case: &Case, downstream: Downstream) -> (u16, String) {
        match downstream {
            Downstream::Http1Upgrade => {
                let (head, _) = upgrade_raw(self.tollgate.addr, "/ws", case.request_headers).await;
                (status_of(&head), head)
            }
            Downstream::H2cConnect => {
                let (status, headers, _) = connect_h2c(self.tollgate.addr, "/ws", case.request_headers).await;
                (status, format!("{headers:?}"))
            }
            Downstream::H2TlsConnect => {
                let tls = tls_h2(self.tls_addr).await;
                let authority = format!("localhost:{}", self.tls_addr.port());
                let (status, headers, _) = connect_h2(tls, &authority, "https", "/ws", case.request_headers).await;
                (status, format!("{headers:?}"))
            }
        }
    }
}

/// Runs the case for every mode × downstream, a fresh gateway each time
/// (so rate-limit budgets start full).
async fn run(case: &Case) {
    for mode in MODES {
        for downstream in DOWNSTREAMS {
            let rig = Rig::start(case, mode).await;
            for _ in 0..case.before {
                rig.upgrade(case, downstream).await;
            }
            let heads_before = rig.backend.seen.lock().unwrap().heads.len();
            let (status, headers) = rig.upgrade(case, downstream).await;
            let context = format!("case `{}` in {mode} mode over {downstream:?}: {headers}", case.name);
            let expected = match (case.admitted, downstream) {
                (true, Downstream::Http1Upgrade) => 101,
                (true, _) => 200,
                (false, _) => case.status,
            };
            assert_eq!(status, expected, "{context}\n{}", rig.tollgate.log());
            if let Some(name) = case.header {
                assert!(headers.to_ascii_lowercase().contains(name), "{name} missing; {context}");
            }
            if !case.admitted && mode == "tunnel" {
                assert_eq!(rig.backend.seen.lock().unwrap().heads.len(), heads_before, "backend reached; {context}");
            }
        }
    }
}

const SECRET: &str = "table-secret-0123456789abcdef-0123";

fn bearer(sub: &str) -> &'static str {
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 600;
    let claims = serde_json::json!({"sub": sub, "exp": exp});
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    Box::leak(format!("Bearer {token}").into_boxed_str())
}

const JWT: &str = "[policy.jwt]\nkind = \"jwt\"\nsecret = \"table-secret-0123456789abcdef-0123\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_refuses_an_upgrade_without_a_token_with_401_and_a_challenge() {
    run(&Case {
        name: "jwt missing",
        policies: JWT,
        attach: &["jwt"],
        request_headers: &[],
        before: 0,
        admitted: false,
        status: 401,
        header: Some("www-authenticate"),
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_admits_an_upgrade_with_a_valid_token() {
    let auth = bearer("alice");
    let headers: &'static [(&'static str, &'static str)] = Box::leak(Box::new([("authorization", auth)]));
    run(&Case {
        name: "jwt valid",
        policies: JWT,
        attach: &["jwt"],
        request_headers: headers,
        before: 0,
        admitted: true,
        status: 0,
        header: None,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_refuses_the_upgrade_past_the_burst_with_429() {
    run(&Case {
        name: "third upgrade of 2/h",
        policies: "[policy.rl]\nkind = \"rate_limit\"\nrate = \"2/h\"\n",
        attach: &["rl"],
        request_headers: &[],
        before: 2,
        admitted: false,
        status: 429,
        header: Some("retry-after"),
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_filter_refuses_a_denied_client_upgrade_with_403() {
    run(&Case {
        name: "ip_filter deny",
        policies: "[policy.edge]\nkind = \"ip_filter\"\ndeny = [\"127.0.0.1/32\"]\n",
        attach: &["edge"],
        request_headers: &[],
        before: 0,
        admitted: false,
        status: 403,
        header: None,
    })
    .await;
}
