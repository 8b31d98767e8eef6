//! The shared policy table's gRPC and gRPC-Web rows: the same policies as
//! tests/policy_table.rs, answered as gRPC statuses (trailers-only, HTTP
//! 200) to native gRPC over h2c and to gRPC-Web over HTTP/1.1 and h2c, with
//! the policy's own headers (challenge, Retry-After) kept.

mod common;
mod grpc_support;

use common::*;
use grpc_support::*;

/// A client protocol a row runs over.
#[derive(Debug, Clone, Copy)]
enum Client {
    GrpcH2c,
    GrpcWebHttp1,
    GrpcWebH2c,
}

const CLIENTS: [Client; 3] = [Client::GrpcH2c, Client::GrpcWebHttp1, Client::GrpcWebH2c];

/// One unary call to `test.Echo/Unary`: (HTTP status, grpc-status, headers incl. trailers).
fn call(tollgate: &Tollgate, client: Client, headers: &[&str]) -> (u16, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let data = format!("@{}", write_file(dir.path(), "req", &frame(b"row")).display());
    let (protocol, content_type) = match client {
        Client::GrpcH2c => ("--http2-prior-knowledge", "content-type: application/grpc"),
        Client::GrpcWebHttp1 => ("--http1.1", "content-type: application/grpc-web"),
        Client::GrpcWebH2c => ("--http2-prior-knowledge", "content-type: application/grpc-web"),
    };
    let url = tollgate.url("/test.Echo/Unary");
    let mut args = vec![protocol, "-H", content_type, "-H", "te: trailers", "--data-binary", &data];
    for h in headers {
        args.extend(["-H", h]);
    }
    args.push(&url);
    let (code, head, body) = curl_full(&args);
    let status = header_value(&head, "grpc-status").unwrap_or_else(|| {
        // gRPC-Web: the status is in the trailer frame at the end of the body.
        let frames = frames(&body);
        let block = frames.iter().find(|f| f.0 == 0x80).map(|f| trailer_lines(&f.1)).unwrap_or_default();
        block.iter().find_map(|l| l.strip_prefix("grpc-status: ").map(str::to_string)).unwrap_or_default()
    });
    (code, status, head)
}

fn gateway(backend: &GrpcBackend, attach: &str, policies: &str) -> Tollgate {
    Tollgate::start_with(&grpc_config(&[backend.addr], &format!("policies = [{attach}]"), policies))
}

const JWT: &str = "[policy.jwt]\nkind = \"jwt\"\nsecret = \"table-secret-0123456789abcdef-0123\"\n\
    issuer = \"https://issuer.test\"\naudience = \"tollgate\"\nstrip_authorization = true\n";

fn token() -> String {
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 600;
    let claims = serde_json::json!({"sub": "alice", "iss": "https://issuer.test", "aud": "tollgate", "exp": exp});
    let key = jsonwebtoken::EncodingKey::from_secret(b"table-secret-0123456789abcdef-0123");
    jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256), &claims, &key).unwrap()
}

#[test]
fn jwt_missing_is_unauthenticated_and_a_valid_token_passes() {
    let backend = GrpcBackend::start("b1");
    let tollgate = gateway(&backend, "\"jwt\"", JWT);
    let auth = format!("authorization: Bearer {}", token());
    for client in CLIENTS {
        let (code, status, head) = call(&tollgate, client, &[]);
        assert_eq!((code, status.as_str()), (200, "16"), "{client:?}: {head}");
        assert!(header_value(&head, "www-authenticate").is_some_and(|c| c.starts_with("Bearer")), "{head}");
        let (code, status, head) = call(&tollgate, client, &[&auth]);
        assert_eq!((code, status.as_str()), (200, "0"), "{client:?}: {head}");
    }
}

#[test]
fn ip_filter_denial_is_permission_denied() {
    let backend = GrpcBackend::start("b1");
    let tollgate = gateway(&backend, "\"edge\"", "[policy.edge]\nkind = \"ip_filter\"\ndeny = [\"127.0.0.1/32\"]\n");
    for client in CLIENTS {
        let (code, status, head) = call(&tollgate, client, &[]);
        assert_eq!((code, status.as_str()), (200, "7"), "{client:?}: {head}");
        assert!(header_value(&head, "grpc-message").is_some_and(|m| !m.is_empty()));
    }
}

#[test]
fn rate_limit_refusal_is_resource_exhausted_with_retry_after() {
    let backend = GrpcBackend::start("b1");
    for client in CLIENTS {
        // A fresh gateway (fresh bucket) per client protocol.
        let tollgate = gateway(&backend, "\"rl\"", "[policy.rl]\nkind = \"rate_limit\"\nrate = \"1/h\"\n");
        let (_, first, head) = call(&tollgate, client, &[]);
        assert_eq!(first, "0", "{client:?}: {head}");
        let (code, status, head) = call(&tollgate, client, &[]);
        assert_eq!((code, status.as_str()), (200, "8"), "{client:?}: {head}");
        assert!(header_value(&head, "retry-after").is_some(), "{head}");
    }
}
