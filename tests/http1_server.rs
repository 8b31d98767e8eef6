//! Our HTTP/1.1 server connection (`listen::http1`) against what clients of
//! every age send: pipelined requests, HTTP/1.0 with and without keep-alive,
//! request smuggling attempts, a response that breaks off part-way. Raw
//! sockets where curl cannot say it (pipelining, smuggling), curl elsewhere.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::Bytes;
use common::core_kit::*;
use common::*;
use hyper::Response;

/// Reads from `stream` until `count` complete responses with a
/// Content-Length body have arrived; returns them.
fn read_responses(stream: &mut TcpStream, count: usize) -> Vec<(String, String)> {
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut wire = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(responses) = split_responses(&wire, count) {
            return responses;
        }
        match stream.read(&mut buf) {
            Ok(0) => panic!("closed after {:?}", String::from_utf8_lossy(&wire)),
            Ok(n) => wire.extend_from_slice(&buf[..n]),
            Err(e) => panic!("{e} after {:?}", String::from_utf8_lossy(&wire)),
        }
    }
}

/// `count` (head, body) pairs from the start of `wire`, once all are complete.
fn split_responses(wire: &[u8], count: usize) -> Option<Vec<(String, String)>> {
    let text = String::from_utf8_lossy(wire);
    let mut rest: &str = &text;
    let mut out = Vec::new();
    while out.len() < count {
        let (head, after) = rest.split_once("\r\n\r\n")?;
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: ").or_else(|| l.strip_prefix("Content-Length: ")))
            .map(|v| v.trim().parse().unwrap())
            .unwrap_or(0);
        if after.len() < length {
            return None;
        }
        out.push((head.to_string(), after[..length].to_string()));
        rest = &after[length..];
    }
    Some(out)
}

#[test]
fn pipelined_requests_are_answered_in_order_on_one_connection() {
    let backend = Backend::start(|req| async move { Response::new(full(format!("you asked for {}", req.uri()))) });
    let tollgate = start_proxy(backend.addr, "", "", "");
    let mut stream = TcpStream::connect(tollgate.addr).unwrap();
    // Three requests in one write, the second with a body.
    stream
        .write_all(
            b"GET /one HTTP/1.1\r\nHost: t\r\n\r\n\
              POST /two HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello\
              GET /three HTTP/1.1\r\nHost: t\r\n\r\n",
        )
        .unwrap();
    let responses = read_responses(&mut stream, 3);
    let bodies: Vec<&str> = responses.iter().map(|(_, body)| body.as_str()).collect();
    assert_eq!(bodies, ["you asked for /one", "you asked for /two", "you asked for /three"]);
    assert!(responses.iter().all(|(head, _)| head.starts_with("HTTP/1.1 200 OK\r\n")), "{responses:?}");
    // Still open for a fourth.
    stream.write_all(b"GET /four HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    assert_eq!(read_responses(&mut stream, 1)[0].1, "you asked for /four");
}

#[test]
fn an_http10_client_gets_a_close_delimited_body_when_the_length_is_unknown() {
    // The backend streams its body chunked, so the length is unknown when the head goes out.
    let backend = Backend::start(|_req| async move {
        let chunks = (0..50).map(|i| Bytes::from(format!("line {i}\n"))).collect();
        Response::new(ChunkedBody::boxed_from(chunks))
    });
    let tollgate = start_proxy(backend.addr, "", "", "");
    let (code, headers, body) = curl_full(&["--http1.0", &tollgate.url("/stream")]);
    assert_eq!(code, 200, "{headers}");
    let expected: String = (0..50).map(|i| format!("line {i}\n")).collect();
    assert_eq!(String::from_utf8(body).unwrap(), expected);
    assert!(header_value(&headers, "transfer-encoding").is_none(), "HTTP/1.0 has no chunked coding: {headers}");
    assert_eq!(header_value(&headers, "connection").as_deref(), Some("close"), "{headers}");
}

#[test]
fn an_http10_client_asking_for_keep_alive_keeps_its_connection() {
    let backend = Backend::fixed("hello");
    let tollgate = start_proxy(backend.addr, "", "", "");
    let mut stream = TcpStream::connect(tollgate.addr).unwrap();
    for path in ["/a", "/b"] {
        stream.write_all(format!("GET {path} HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").as_bytes()).unwrap();
        let (head, body) = read_responses(&mut stream, 1).remove(0);
        assert_eq!(body, "hello");
        assert!(head.to_ascii_lowercase().contains("\r\nconnection: keep-alive"), "{head}");
    }
    // Without keep-alive, the connection closes after the response.
    let response = raw_exchange(tollgate.addr, b"GET /c HTTP/1.0\r\n\r\n");
    assert!(response.ends_with("hello"), "{response}");
}

#[test]
fn smuggling_and_host_confusion_attempts_get_400_and_never_reach_the_backend() {
    let backend = echo_backend();
    let mut tollgate = start_proxy(backend.addr, "", "", "");
    let cases: &[&[u8]] = &[
        // Both framings: a front end reading one and a back end the other disagree on where this ends.
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n",
        // A final coding other than chunked cannot be delimited.
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        // HTTP/1.0 has no Transfer-Encoding.
        b"POST / HTTP/1.0\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        // Two Hosts: routing and the backend could each pick a different one (RFC 9112 §3.2).
        b"GET / HTTP/1.1\r\nHost: public\r\nHost: internal\r\n\r\n",
        // HTTP/1.1 without Host.
        b"GET / HTTP/1.1\r\nX-A: 1\r\n\r\n",
        // Chunked applied twice, split over two fields.
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        // A Host that is not a host: routing and the backend could read it differently.
        b"GET / HTTP/1.1\r\nHost: public/../internal\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: user@internal\r\n\r\n",
    ];
    for case in cases {
        let response = raw_exchange(tollgate.addr, case);
        assert!(response.starts_with("HTTP/1.1 400 "), "for {:?}:\n{response}", String::from_utf8_lossy(case));
        assert!(response.contains("\"error\":\"bad_request\""), "{response}");
        assert!(!response.contains("smuggled"), "{response}");
    }
    assert!(backend.requests().is_empty(), "{:?}", backend.requests());
    assert_alive_and_serving(&mut tollgate, "/after");
}

#[test]
fn a_transfer_coding_we_do_not_decode_gets_501_and_never_reaches_the_backend() {
    let backend = echo_backend();
    let mut tollgate = start_proxy(backend.addr, "", "", "");
    // Passing the body on would mean dropping the gzip with the hop-by-hop
    // field: the backend would get compressed bytes it was never told of.
    for codings in ["gzip, chunked", "gzip\r\nTransfer-Encoding: chunked"] {
        let request =
            format!("POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: {codings}\r\n\r\n3\r\nabc\r\n0\r\n\r\n");
        let response = raw_exchange(tollgate.addr, request.as_bytes());
        assert!(response.starts_with("HTTP/1.1 501 "), "for {codings:?}:\n{response}");
        assert!(response.contains("\"error\":\"not_implemented\""), "{response}");
    }
    assert!(backend.requests().is_empty(), "{:?}", backend.requests());
    assert_alive_and_serving(&mut tollgate, "/after");
}

#[test]
fn a_request_line_longer_than_the_head_limit_gets_414_not_431() {
    let backend = echo_backend();
    let mut tollgate = start_proxy(backend.addr, "max_header_bytes = 8192", "", "");
    let long_target = format!("GET /{} HTTP/1.1\r\nHost: t\r\n\r\n", "a".repeat(20_000));
    let response = raw_exchange(tollgate.addr, long_target.as_bytes());
    assert!(response.starts_with("HTTP/1.1 414 "), "{response}");
    // A short line with too many header bytes is still the header block's fault.
    let long_header = format!("GET / HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n", "b".repeat(20_000));
    let response = raw_exchange(tollgate.addr, long_header.as_bytes());
    assert!(response.starts_with("HTTP/1.1 431 "), "{response}");
    assert!(backend.requests().is_empty(), "{:?}", backend.requests());
    assert_alive_and_serving(&mut tollgate, "/after");
}

#[test]
fn responses_we_make_ourselves_carry_a_date() {
    let backend = Backend::fixed("x");
    let tollgate = start_proxy(backend.addr, "", "", "");
    // The 200 passes the backend's Date on; the 404 (no route) is made by Tollgate, which adds its own.
    let tollgate_404 = Tollgate::start_with(&format!(
        "{}{}",
        upstream_toml("b", &[backend.addr], ""),
        route_toml("only", "path_prefix = \"/only\"", "b", "")
    ));
    for (proxy, path, status) in [(&tollgate, "/x", 200), (&tollgate_404, "/nowhere", 404)] {
        let (code, headers, _) = curl_proto(Proto::Http1, &[&proxy.url(path)]);
        assert_eq!(code, status, "{headers}");
        let date = header_value(&headers, "date").unwrap_or_else(|| panic!("no Date: {headers}"));
        let parsed = httpdate::parse_http_date(&date).unwrap_or_else(|e| panic!("{date:?}: {e}"));
        let skew = std::time::SystemTime::now().duration_since(parsed).unwrap_or_default();
        assert!(skew < Duration::from_secs(5), "{date}");
    }
}

#[test]
fn a_backend_that_dies_mid_body_leaves_the_client_with_an_incomplete_response() {
    // Declares 1000 bytes, sends 10, then closes the connection.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(2) {
            let mut stream = stream.unwrap();
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789");
        }
    });
    let tollgate = start_proxy(addr, "", "", "");
    for flag in ["--http1.1", "--http1.0"] {
        let out = curl(&["-o", "/dev/null", "-w", "%{http_code} %{size_download}", flag, &tollgate.url("/cut")]);
        let summary = String::from_utf8_lossy(&out.stdout);
        // curl 18: "transfer closed with outstanding read data remaining".
        assert_eq!(out.status.code(), Some(18), "{flag}: a short body must not look complete ({summary})");
        assert!(summary.starts_with("200 "), "{summary}");
    }
}

#[test]
fn a_client_still_uploading_when_refused_gets_the_refusal_not_a_reset() {
    // The body limit refuses this upload from its Content-Length, before the
    // body is read. A client that sends the whole body anyway (no `Expect`)
    // must still be able to finish writing and read the 413: closing on the
    // unread bytes would reset the connection under it.
    let backend = echo_backend();
    let tollgate = start_proxy(backend.addr, "max_body_bytes = 1000", "", "");
    let body = vec![b'x'; 4 << 20];
    for _ in 0..3 {
        let mut stream = TcpStream::connect(tollgate.addr).unwrap();
        stream.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
        let head = format!("POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n", body.len());
        stream.write_all(head.as_bytes()).unwrap();
        let written = stream.write_all(&body);
        let mut response = String::new();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let read = stream.read_to_string(&mut response);
        assert!(written.is_ok() && read.is_ok(), "write {written:?}, read {read:?}, got {response:?}");
        assert!(response.starts_with("HTTP/1.1 413 "), "{response}");
        assert!(response.contains("body_too_large"), "{response}");
    }
    assert!(backend.requests().is_empty());
}
