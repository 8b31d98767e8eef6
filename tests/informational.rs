//! Interim 1xx responses from a backend (RFC 9110 §15.2) do not break the exchange.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;

use common::*;

/// A backend written on raw TCP, since hyper's server cannot send 103.
fn early_hints_backend() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(4) {
            let mut stream = stream.unwrap();
            let mut buf = [0u8; 4096];
            let mut seen = Vec::new();
            while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = stream.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                seen.extend_from_slice(&buf[..n]);
            }
            let _ = stream.write_all(
                b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n\
                  HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nfinal",
            );
        }
    });
    addr
}

#[test]
fn a_103_early_hints_before_the_final_response_is_consumed_and_the_200_relayed() {
    let backend = early_hints_backend();
    let tollgate = Tollgate::start_with(&format!(
        "[[upstream]]\nname = \"b\"\ntargets = [\"{backend}\"]\n\n[[route]]\nname = \"all\"\nupstream = \"b\"\n"
    ));
    for flags in [&["--http1.1"][..], &["--http2-prior-knowledge"][..]] {
        let mut args = flags.to_vec();
        let url = tollgate.url("/page");
        args.push(&url);
        let (code, _, body) = curl_full(&args);
        assert_eq!(code, 200, "{flags:?}");
        assert_eq!(body, b"final", "{flags:?}");
    }
}
