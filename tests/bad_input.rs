//! Malformed and oversized requests are refused with the right status,
//! never reach the backend, and never take the process down.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::core_kit::*;
use common::*;
use http_body_util::BodyExt;
use hyper::Response;

/// A tollgate in front of an echo backend with an 8 KiB header limit and a
/// 1000-byte body limit.
fn start_limited() -> (Tollgate, Backend) {
    let backend = echo_backend();
    let tollgate = start_proxy(backend.addr, "max_header_bytes = 8192\nmax_body_bytes = 1000", "", "");
    (tollgate, backend)
}

/// The status code of the first response in raw HTTP/1.1 bytes.
fn raw_status(response: &str) -> u16 {
    response
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP/1.1 response: {response:?}"))
}

#[test]
fn malformed_request_lines_and_headers_get_400_and_never_reach_the_backend() {
    let (mut tollgate, backend) = start_limited();
    let cases: &[&[u8]] = &[
        b"GARBAGE\r\n\r\n",
        b"GET /\r\n\r\n",
        b"GET / HTTP/9.9\r\nHost: t\r\n\r\n",
        b"GET /a b HTTP/1.1\r\nHost: t\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: t\r\nNo colon in this header\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: t\r\nBad Name: v\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: t\r\nX-Ctl: a\x01b\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello",
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: abc\r\n\r\n",
        // RFC 9112 §3.2: asterisk-form is for OPTIONS, authority-form for CONNECT.
        b"GET * HTTP/1.1\r\nHost: t\r\n\r\n",
        b"GET t:443 HTTP/1.1\r\nHost: t\r\n\r\n",
        // RFC 9110 §4.2.1: an http URI with an empty host is invalid.
        b"GET / HTTP/1.1\r\nHost:\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: :80\r\n\r\n",
    ];
    for case in cases {
        let response = raw_exchange(tollgate.addr, case);
        assert_eq!(raw_status(&response), 400, "for {:?}:\n{response}", String::from_utf8_lossy(case));
        assert_alive_and_serving(&mut tollgate, "/after-bad-input");
    }
    // Only the good requests in between got through.
    let seen = backend.requests();
    assert_eq!(seen.len(), cases.len(), "{seen:?}");
    assert!(seen.iter().all(|r| r.uri == "/after-bad-input"), "{seen:?}");
}

#[test]
fn malformed_chunked_body_is_blamed_on_the_client_with_400_not_502() {
    let (mut tollgate, _backend) = start_limited();
    for body in ["zz\r\nhello\r\n0\r\n\r\n", "5\r\nhello\r\n3\r\nabcdefgh\r\n0\r\n\r\n"] {
        let request = format!("POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n{body}");
        let response = raw_exchange(tollgate.addr, request.as_bytes());
        assert_eq!(raw_status(&response), 400, "for {body:?}:\n{response}");
        assert!(response.contains("\"error\":\"bad_request\""), "{response}");
        assert_alive_and_serving(&mut tollgate, "/after-bad-body");
    }
}

#[test]
fn header_block_over_max_header_bytes_gets_431_on_http1() {
    let (mut tollgate, backend) = start_limited();
    let big = format!("X-Big: {}", "a".repeat(10_000));
    let (code, headers, _) = curl_proto(Proto::Http1, &["-H", &big, &tollgate.url("/big")]);
    assert_eq!(code, 431, "{headers}");
    // Many small headers that add up count too.
    let mut args: Vec<String> = (0..60).map(|i| format!("X-Filler-{i}: {}", "b".repeat(150))).collect();
    args = args.into_iter().flat_map(|h| ["-H".to_string(), h]).collect();
    args.push(tollgate.url("/many"));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, headers, _) = curl_proto(Proto::Http1, &refs);
    assert_eq!(code, 431, "{headers}");
    assert!(backend.requests().is_empty(), "an oversized header block reached the backend");
    // Just under the limit is fine.
    let fits = format!("X-Fits: {}", "c".repeat(6000));
    let (code, _, _) = curl_proto(Proto::Http1, &["-H", &fits, &tollgate.url("/fits")]);
    assert_eq!(code, 200);
    assert_alive_and_serving(&mut tollgate, "/after");
}

#[test]
fn header_list_over_the_limit_fails_cleanly_on_http2() {
    let (mut tollgate, backend) = start_limited();
    let big = format!("X-Big: {}", "a".repeat(10_000));
    let out = curl(&[
        "--http2-prior-knowledge",
        "-v",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-H",
        &big,
        &tollgate.url("/big"),
    ]);
    let code = String::from_utf8_lossy(&out.stdout).to_string();
    let verbose = String::from_utf8_lossy(&out.stderr);
    // The h2 server answers an over-long header list with 431 on that stream
    // (RFC 9113 §10.5.1) instead of tearing the connection down.
    assert_eq!(code, "431", "{verbose}");
    assert!(backend.requests().is_empty(), "an oversized header list reached the backend");
    // The same connection still serves a normal request after it. (curl 7.88
    // cannot reuse an h2c prior-knowledge connection, so this uses the h2 crate.)
    let statuses = h2_big_then_small(tollgate.addr);
    assert_eq!(statuses, [Ok(431), Ok(200)]);
    assert_alive_and_serving(&mut tollgate, "/after");
}

/// On one HTTP/2 connection (the `h2` crate as client): a request with a
/// 10 KB header, then a plain one. Returns each response status or error.
fn h2_big_then_small(addr: std::net::SocketAddr) -> [Result<u16, String>; 2] {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async move {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (client, connection) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let requests = [
            http::Request::get(format!("http://{addr}/big")).header("x-big", "a".repeat(10_000)).body(()).unwrap(),
            http::Request::get(format!("http://{addr}/small")).body(()).unwrap(),
        ];
        let mut statuses = Vec::new();
        let mut client = client;
        for request in requests {
            let status = async {
                client = client.clone().ready().await.map_err(|e| e.to_string())?;
                let (response, _) = client.send_request(request, true).map_err(|e| e.to_string())?;
                let response = tokio::time::timeout(Duration::from_secs(5), response)
                    .await
                    .map_err(|_| "timed out".to_string())?
                    .map_err(|e| e.to_string())?;
                Ok(response.status().as_u16())
            };
            statuses.push(status.await);
        }
        [statuses.remove(0), statuses.remove(0)]
    })
}

/// What an HTTP/2 upload got back.
struct H2Answer {
    status: u16,
    headers: http::HeaderMap,
    body: Vec<u8>,
}

/// POSTs `body` on a fresh h2c connection with the `h2` crate as client,
/// declaring its length only when `content_length`. A server may answer
/// before the upload ends and reset the stream with NO_ERROR (RFC 9113 §8.1);
/// the h2 crate handles that as the RFC says, Debian's curl 7.88 reports an error.
fn h2_upload(addr: std::net::SocketAddr, path: &str, body: &[u8], content_length: bool) -> H2Answer {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async move {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (client, connection) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let mut client = client.ready().await.unwrap();
        let mut request = http::Request::post(format!("http://{addr}{path}"));
        if content_length {
            request = request.header("content-length", body.len());
        }
        let (response, mut upload) = client.send_request(request.body(()).unwrap(), false).unwrap();
        let pieces: Vec<&[u8]> = body.chunks(1000).collect();
        for (i, piece) in pieces.iter().enumerate() {
            // An error here means the server already answered and reset the stream.
            if upload.send_data(bytes::Bytes::copy_from_slice(piece), i + 1 == pieces.len()).is_err() {
                break;
            }
        }
        let response = tokio::time::timeout(Duration::from_secs(5), response).await.unwrap().unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let mut received = response.into_body();
        let mut body = Vec::new();
        while let Some(chunk) = received.data().await {
            let chunk = chunk.unwrap();
            let _ = received.flow_control().release_capacity(chunk.len());
            body.extend_from_slice(&chunk);
        }
        H2Answer { status, headers, body }
    })
}

#[test]
fn body_over_the_limit_with_content_length_gets_413_before_the_backend_is_contacted() {
    let (mut tollgate, backend) = start_limited();
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(dir.path(), "big.bin", &pattern_bytes(5000));
    let (code, headers, body) =
        curl_proto(Proto::Http1, &["--data-binary", &format!("@{}", file.display()), &tollgate.url("/upload")]);
    assert_eq!(code, 413, "{headers}");
    let value = json(&body);
    assert_eq!(value["error"], "body_too_large", "{value}");
    assert_eq!(value["request_id"], header_value(&headers, "x-request-id").unwrap().as_str());
    let h2 = h2_upload(tollgate.addr, "/upload", &pattern_bytes(5000), true);
    assert_eq!(h2.status, 413);
    assert_eq!(json(&h2.body)["request_id"], h2.headers["x-request-id"].to_str().unwrap());
    // With `Expect: 100-continue` the body is refused before curl sends it.
    let out = curl(&[
        "--http1.1",
        "-v",
        "-H",
        "Expect: 100-continue",
        "--expect100-timeout",
        "10",
        "--data-binary",
        &format!("@{}", file.display()),
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{size_upload}",
        &tollgate.url("/upload"),
    ]);
    let verbose = String::from_utf8_lossy(&out.stderr);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "413 0", "{verbose}");
    assert!(!verbose.contains("100 Continue"), "{verbose}");
    assert!(backend.requests().is_empty(), "the backend was contacted: {:?}", backend.requests());
    // A body at the limit passes.
    let exact = write_file(dir.path(), "exact.bin", &pattern_bytes(1000));
    let (code, _, body) = curl_full(&["--data-binary", &format!("@{}", exact.display()), &tollgate.url("/ok")]);
    assert_eq!((code, body.len()), (200, 1000));
    assert_alive_and_serving(&mut tollgate, "/after");
}

#[test]
fn chunked_body_over_the_limit_gets_413_while_streaming() {
    // A backend that records the size of every body it read to the end.
    let complete_bodies = Arc::new(Mutex::new(Vec::new()));
    let recorded = Arc::clone(&complete_bodies);
    let backend = Backend::start(move |req| {
        let recorded = Arc::clone(&recorded);
        async move {
            let body = req.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
            if !body.is_empty() {
                recorded.lock().unwrap().push(body.len());
            }
            Response::new(full(body))
        }
    });
    let mut tollgate = start_proxy(backend.addr, "max_body_bytes = 1000", "", "");
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(dir.path(), "big.bin", &pattern_bytes(200_000));
    let started = Instant::now();
    let (code, headers, body) = curl_proto(
        Proto::Http1,
        &["-H", "Transfer-Encoding: chunked", "--data-binary", &format!("@{}", file.display()), &tollgate.url("/up")],
    );
    assert_eq!(code, 413, "{headers}{}", String::from_utf8_lossy(&body));
    assert_eq!(json(&body)["error"], "body_too_large");
    // HTTP/2 without content-length: the limit can only be enforced while streaming.
    let h2 = h2_upload(tollgate.addr, "/up", &pattern_bytes(200_000), false);
    assert_eq!(h2.status, 413, "{}", String::from_utf8_lossy(&h2.body));
    assert_eq!(json(&h2.body)["error"], "body_too_large");
    assert!(started.elapsed() < Duration::from_secs(5));
    // The backend never got a complete oversized body: the stream was cut once 1000 bytes went by.
    assert_eq!(*complete_bodies.lock().unwrap(), Vec::<usize>::new());
    // A chunked body under the limit still passes.
    let small = write_file(dir.path(), "small.bin", &pattern_bytes(999));
    let (code, _, body) = curl_full(&[
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        &format!("@{}", small.display()),
        &tollgate.url("/ok"),
    ]);
    assert_eq!((code, body.len()), (200, 999));
    assert_eq!(*complete_bodies.lock().unwrap(), vec![999]);
    assert_alive_and_serving(&mut tollgate, "/after");
}

#[test]
fn route_body_limit_overrides_the_listener_limit() {
    let backend = echo_backend();
    let tollgate = Tollgate::start_with(&format!(
        "max_body_bytes = 1000\n{}{}{}",
        upstream_toml("b", &[backend.addr], ""),
        route_toml("uploads", r#"path_prefix = "/uploads/""#, "b", "max_body_bytes = 10000"),
        route_toml("rest", r#"path_prefix = "/""#, "b", "")
    ));
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(dir.path(), "mid.bin", &pattern_bytes(5000));
    let data = format!("@{}", file.display());
    let (code, _, body) = curl_full(&["--data-binary", &data, &tollgate.url("/uploads/a")]);
    assert_eq!((code, body.len()), (200, 5000));
    let (code, _, _) = curl_full(&["--data-binary", &data, &tollgate.url("/other")]);
    assert_eq!(code, 413);
}
