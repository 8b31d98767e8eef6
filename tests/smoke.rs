//! The default config and the simplest proxy path, through the real binary.

mod common;

use common::*;

/// Tollgate with one route sending everything to `backend`.
fn proxy_to(backend: &Backend) -> Tollgate {
    Tollgate::start_with(&format!(
        "[[upstream]]\nname = \"b\"\ntargets = [\"{}\"]\n\n[[route]]\nname = \"all\"\nmatch = {{ path_prefix = \"/\" }}\nupstream = \"b\"\n",
        backend.addr
    ))
}

#[test]
fn proxies_http1_and_h2c_prior_knowledge_to_an_http1_backend() {
    let backend = Backend::fixed("hello from backend");
    let tollgate = proxy_to(&backend);
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

/// A cleartext connection whose first bytes arrive one at a time: the
/// listener cannot tell HTTP/1.1 from the HTTP/2 preface until enough have
/// come, and must neither guess nor lose them.
#[test]
fn the_protocol_is_told_apart_when_the_first_bytes_trickle_in() {
    use std::io::{Read, Write};
    use std::time::Duration;
    let backend = Backend::fixed("trickled");
    let tollgate = proxy_to(&backend);
    let trickle = |first: &[u8], rest: &[u8], to_end: bool| {
        let mut stream = std::net::TcpStream::connect(tollgate.addr).unwrap();
        stream.set_nodelay(true).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        for byte in first {
            stream.write_all(&[*byte]).unwrap();
            std::thread::sleep(Duration::from_millis(30));
        }
        stream.write_all(rest).unwrap();
        let mut reply = vec![0u8; 4096];
        if to_end {
            reply.clear();
            stream.read_to_end(&mut reply).unwrap();
        } else {
            let n = stream.read(&mut reply).unwrap();
            reply.truncate(n);
        }
        reply
    };
    // "P", "R", "I" are also how `PRI * HTTP/2.0` starts; "PU" is not.
    let reply = trickle(b"PU", b"T /t HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", true);
    let text = String::from_utf8_lossy(&reply);
    assert!(text.starts_with("HTTP/1.1 200") && text.ends_with("trickled"), "{text}");
    // The HTTP/2 preface in pieces: the server's first frame is its SETTINGS.
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let settings = [0u8, 0, 0, 4, 0, 0, 0, 0, 0];
    let reply = trickle(&preface[..6], &[&preface[6..], &settings[..]].concat(), false);
    assert!(reply.len() >= 9 && reply[3] == 4, "an HTTP/2 SETTINGS frame first: {reply:?}");
}
