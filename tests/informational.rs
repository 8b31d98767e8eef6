//! Interim 1xx responses from a backend (RFC 9110 §15.2): a proxy forwards
//! the ones it did not ask for (103 Early Hints, 102) ahead of the final
//! response, to HTTP/1.1, HTTP/2 and HTTP/3 clients, never to HTTP/1.0
//! ones, and a backend's 100 Continue (the listener answers `Expect` itself)
//! stays here.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;

use serde_json::json;

use common::h3_kit::{h3_listener, h3_request};
use common::transport::{free_addr, write_cert};
use common::*;

/// A backend written on raw TCP, since hyper's server cannot send 103: a
/// 100, a 103 with a preload link, then the final 200.
fn early_hints_backend() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut buf = [0u8; 4096];
            let mut seen = Vec::new();
            while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                }
            }
            let _ = stream.write_all(
                b"HTTP/1.1 100 Continue\r\n\r\n\
                  HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n\
                  HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nfinal",
            );
        }
    });
    addr
}

/// The status lines of every head curl printed (`-D`), in order.
fn status_lines(headers: &str) -> Vec<String> {
    headers.lines().filter(|l| l.starts_with("HTTP/")).map(|l| l.trim().to_string()).collect()
}

#[test]
fn a_103_early_hints_reaches_http1_and_http2_clients_before_the_200_and_a_100_does_not() {
    let backend = early_hints_backend();
    let tollgate = Tollgate::start_with(&format!(
        "[[upstream]]\nname = \"b\"\ntargets = [\"{backend}\"]\n\n[[route]]\nname = \"all\"\nupstream = \"b\"\n"
    ));
    let url = tollgate.url("/page");
    let cases = [
        ("--http1.1", vec!["HTTP/1.1 103 Early Hints", "HTTP/1.1 200 OK"]),
        ("--http2-prior-knowledge", vec!["HTTP/2 103", "HTTP/2 200"]),
        // RFC 9110 §15.2: no 1xx to an HTTP/1.0 client.
        ("--http1.0", vec!["HTTP/1.1 200 OK"]),
    ];
    for (flag, expected) in cases {
        let (code, headers, body) = curl_full(&[flag, &url]);
        assert_eq!((code, &body[..]), (200, &b"final"[..]), "{flag}");
        assert_eq!(status_lines(&headers), expected, "{flag}: {headers}");
        if expected.len() == 2 {
            let hints = headers.split("\r\n\r\n").next().unwrap().to_ascii_lowercase();
            assert!(hints.contains("link: </style.css>; rel=preload"), "{flag}: {headers}");
        }
    }
}

#[test]
fn a_103_early_hints_reaches_an_http3_client_before_the_200() {
    let backend = early_hints_backend();
    let certs = tempfile::tempdir().unwrap();
    let cert = write_cert(certs.path(), "gw", "localhost", &["localhost", "127.0.0.1"]);
    let addr = free_addr();
    let config = format!(
        "{}\n[[upstream]]\nname = \"b\"\ntargets = [\"{backend}\"]\n\n[[route]]\nname = \"all\"\nupstream = \"b\"\n",
        h3_listener("edge", addr, &cert.cert, &cert.key, "")
    );
    let _tollgate = Tollgate::start(&config, addr);
    let r = h3_request(addr, json!({ "path": "/page" }));
    assert_eq!((r["status"].as_u64(), r["body_text"].as_str()), (Some(200), Some("final")), "{r}");
    assert_eq!(r["interim"].as_array().map(Vec::len), Some(1), "only the 103, not the 100: {r}");
    assert_eq!(r["interim"][0][0], 103, "{r}");
    assert_eq!(r["interim"][0][1][0], json!(["link", "</style.css>; rel=preload"]), "{r}");
}

#[test]
fn early_hints_reach_the_client_while_the_backend_still_works_on_the_final_response() {
    // The backend sends its 103 and then waits: the final response goes out
    // only once the client has read the hints, so they must travel early.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let backend = listener.local_addr().unwrap();
    let (go, wait) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        let Ok((mut stream, _)) = listener.accept() else { return };
        let mut buf = [0u8; 4096];
        let _ = stream.read(&mut buf);
        let _ = stream.write_all(b"HTTP/1.1 103 Early Hints\r\nLink: </app.js>; rel=preload\r\n\r\n");
        if wait.recv_timeout(std::time::Duration::from_secs(10)).is_ok() {
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\npage");
        }
    });
    let tollgate = Tollgate::start_with(&format!(
        "[[upstream]]\nname = \"b\"\ntargets = [\"{backend}\"]\n\n[[route]]\nname = \"all\"\nupstream = \"b\"\n"
    ));
    let mut client = std::net::TcpStream::connect(tollgate.addr).unwrap();
    client.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
    client.write_all(b"GET /page HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = client.read(&mut buf).expect("the 103 arrives while the backend waits");
        assert!(n > 0, "closed before the hints: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    let hints = String::from_utf8_lossy(&seen).to_ascii_lowercase();
    assert!(hints.starts_with("http/1.1 103 early hints\r\n"), "{hints}");
    assert!(hints.contains("link: </app.js>; rel=preload"), "{hints}");
    go.send(()).unwrap();
    let mut rest = Vec::new();
    while !rest.ends_with(b"page") {
        match client.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => rest.extend_from_slice(&buf[..n]),
        }
    }
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.starts_with("HTTP/1.1 200 OK\r\n") && rest.ends_with("page"), "{rest}");
}
