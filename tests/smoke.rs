//! The default config and the simplest proxy path, through the real binary.

mod common;

use common::*;

#[test]
fn proxies_http1_and_h2c_prior_knowledge_to_an_http1_backend() {
    let backend = Backend::fixed("hello from backend");
    let tollgate = Tollgate::start_with(&format!(
        "[[upstream]]\nname = \"b\"\ntargets = [\"{}\"]\n\n[[route]]\nname = \"all\"\nmatch = {{ path_prefix = \"/\" }}\nupstream = \"b\"\n",
        backend.addr
    ));
    let (code, headers, body) = curl_full(&[&tollgate.url("/x")]);
    assert_eq!(code, 200);
    assert_eq!(body, b"hello from backend");
    assert!(header_value(&headers, "x-request-id").is_some());
    let (code, headers, body) = curl_full(&["--http2-prior-knowledge", &tollgate.url("/y")]);
    assert_eq!(code, 200, "{headers}");
    assert!(headers.starts_with("HTTP/2"), "{headers}");
    assert_eq!(body, b"hello from backend");
    let seen = backend.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].uri, "/y");
}
