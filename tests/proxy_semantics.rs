//! What a reverse proxy must do to headers and bodies on the way through
//! (RFC 9110 §7.6, RFC 7239), and how upstream failures are answered —
//! checked on what a real backend received and what curl / nghttp got back.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::core_kit::*;
use common::*;
use hyper::{Method, Response};

/// The only request `backend` has seen so far.
fn only_request(backend: &Backend) -> SeenRequest {
    let seen = backend.requests();
    assert_eq!(seen.len(), 1, "expected exactly one backend request, got {seen:?}");
    seen.into_iter().next().unwrap()
}

fn seen_header(seen: &SeenRequest, name: &str) -> Option<String> {
    seen.headers.get(name).map(|v| v.to_str().unwrap().to_string())
}

#[test]
fn hop_by_hop_request_headers_are_not_forwarded() {
    let backend = Backend::fixed("ok");
    let tollgate = start_proxy(backend.addr, "", "", "");
    // curl refuses to put connection-specific headers on an HTTP/2 request, so this is HTTP/1.1 only.
    let (code, _, _) = curl_proto(
        Proto::Http1,
        &[
            "-H",
            "Connection: keep-alive, X-Secret-Hop, Host, X-Request-Id",
            "-H",
            "X-Request-Id: client-chosen-id",
            "-H",
            "X-Secret-Hop: hidden",
            "-H",
            "Keep-Alive: timeout=5",
            "-H",
            "TE: gzip, trailers",
            "-H",
            "Upgrade: websocket-not-really",
            "-H",
            "Proxy-Connection: keep-alive",
            "-H",
            "X-End-To-End: kept",
            &tollgate.url("/h"),
        ],
    );
    assert_eq!(code, 200);
    let seen = only_request(&backend);
    for hop in ["x-secret-hop", "keep-alive", "upgrade", "proxy-connection"] {
        assert_eq!(seen_header(&seen, hop), None, "`{hop}` reached the backend: {:?}", seen.headers);
    }
    // The client's own `TE` and `Connection` stop here; this hop says only
    // that it takes trailers (which it passes on), as a connection option.
    assert_eq!(seen_header(&seen, "te").as_deref(), Some("trailers"));
    assert_eq!(seen_header(&seen, "connection").as_deref(), Some("te"));
    assert_eq!(seen_header(&seen, "x-end-to-end").as_deref(), Some("kept"));
    // Listing them in `Connection` does not change the host the backend sees or lose the request id.
    assert_eq!(seen_header(&seen, "host"), Some(tollgate.addr.to_string()), "{:?}", seen.headers);
    assert_eq!(seen_header(&seen, "x-request-id").as_deref(), Some("client-chosen-id"), "{:?}", seen.headers);
}

#[test]
fn hop_by_hop_response_headers_are_not_returned() {
    let backend = Backend::start(|_req| async {
        Response::builder()
            .header("connection", "x-backend-hop")
            .header("x-backend-hop", "hidden")
            .header("keep-alive", "timeout=5")
            .header("proxy-connection", "keep-alive")
            .header("upgrade", "nothing")
            .header("x-end-to-end", "kept")
            .body(full("ok"))
            .unwrap()
    });
    let tollgate = start_proxy(backend.addr, "", "", "");
    for proto in Proto::ALL {
        let (code, headers, body) = curl_proto(proto, &[&tollgate.url("/h")]);
        assert_eq!((code, body.as_slice()), (200, &b"ok"[..]), "{proto:?}: {headers}");
        for hop in ["x-backend-hop", "keep-alive", "proxy-connection", "upgrade"] {
            assert_eq!(header_value(&headers, hop), None, "{proto:?}: `{hop}` returned to the client:\n{headers}");
        }
        assert!(
            header_value(&headers, "connection").is_none_or(|c| !c.contains("x-backend-hop")),
            "{proto:?}: {headers}"
        );
        assert_eq!(header_value(&headers, "x-end-to-end").as_deref(), Some("kept"), "{proto:?}");
    }
}

#[test]
fn forwarding_headers_describe_the_client_and_the_hop() {
    let backend =
        Backend::start(|_req| async { Response::builder().header("via", "1.1 backend").body(full("ok")).unwrap() });
    let tollgate = start_proxy(backend.addr, "", "", "");
    for proto in Proto::ALL {
        // First hop: nothing forwarded yet; the host has a port, so Forwarded quotes it (RFC 7239 §4).
        let (code, headers, _) = curl_proto(proto, &[&tollgate.url("/f")]);
        assert_eq!(code, 200);
        let seen = backend.requests().pop().unwrap();
        let authority = tollgate.addr.to_string();
        assert_eq!(seen_header(&seen, "x-forwarded-for").as_deref(), Some("127.0.0.1"), "{proto:?}");
        assert_eq!(seen_header(&seen, "x-forwarded-proto").as_deref(), Some("http"), "{proto:?}");
        assert_eq!(
            seen_header(&seen, "forwarded"),
            Some(format!("for=127.0.0.1;proto=http;host=\"{authority}\"")),
            "{proto:?}"
        );
        assert_eq!(seen_header(&seen, "via").as_deref(), Some(proto.via()), "{proto:?}");
        // The response's Via lists the backend's hop, then ours.
        assert_eq!(header_value(&headers, "via"), Some(format!("1.1 backend, {}", proto.via())), "{proto:?}");

        // Behind another proxy: lists are appended to, and a spoofed proto is overwritten.
        let (code, _, _) = curl_proto(
            proto,
            &[
                "-H",
                "Host: shop.example.test",
                "-H",
                "X-Forwarded-For: 203.0.113.9",
                "-H",
                "X-Forwarded-Proto: https",
                "-H",
                "Forwarded: for=203.0.113.9",
                "-H",
                "Via: 1.1 edge",
                &tollgate.url("/f"),
            ],
        );
        assert_eq!(code, 200);
        let seen = backend.requests().pop().unwrap();
        assert_eq!(seen_header(&seen, "x-forwarded-for").as_deref(), Some("203.0.113.9, 127.0.0.1"));
        assert_eq!(seen_header(&seen, "x-forwarded-proto").as_deref(), Some("http"));
        assert_eq!(
            seen_header(&seen, "forwarded").as_deref(),
            Some("for=203.0.113.9, for=127.0.0.1;proto=http;host=shop.example.test")
        );
        assert_eq!(seen_header(&seen, "via"), Some(format!("1.1 edge, {}", proto.via())));
        assert_eq!(seen_header(&seen, "x-forwarded-host").as_deref(), Some("shop.example.test"));
    }
}

#[test]
fn a_route_adds_only_the_forwarding_fields_it_lists_and_can_leave_the_request_id_alone() {
    let backend =
        Backend::start(|_req| async { Response::builder().header("via", "1.1 backend").body(full("ok")).unwrap() });
    let nothing_there: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let lean = "forward_headers = [\"X-Forwarded-For\"]\nrequest_id_header = false";
    let tollgate = Tollgate::start_with(&format!(
        "{}{}{}{}",
        upstream_toml("b", &[backend.addr], ""),
        upstream_toml("gone", &[nothing_there], ""),
        route_toml("lean", "path_prefix = \"/\"", "b", lean),
        route_toml("down", "path_prefix = \"/down\"", "gone", lean),
    ));
    for proto in Proto::ALL {
        let (code, headers, _) = curl_proto(proto, &[&tollgate.url("/f")]);
        assert_eq!(code, 200, "{proto:?}");
        let seen = backend.requests().pop().unwrap();
        assert_eq!(seen_header(&seen, "x-forwarded-for").as_deref(), Some("127.0.0.1"), "{proto:?}");
        for absent in ["x-forwarded-proto", "x-forwarded-host", "forwarded", "via", "x-request-id"] {
            assert_eq!(seen_header(&seen, absent), None, "{proto:?}: {absent} was added");
        }
        // No Via of ours on the response either, and no request id.
        assert_eq!(header_value(&headers, "via").as_deref(), Some("1.1 backend"), "{proto:?}");
        assert_eq!(header_value(&headers, "x-request-id"), None, "{proto:?}: {headers}");

        // What the client sent of the kinds left out passes through unchanged.
        let (code, _, _) = curl_proto(
            proto,
            &[
                "-H",
                "X-Forwarded-Proto: https",
                "-H",
                "Via: 1.1 edge",
                "-H",
                "X-Request-Id: client-id-9",
                "-H",
                "X-Forwarded-For: 203.0.113.9",
                &tollgate.url("/f"),
            ],
        );
        assert_eq!(code, 200);
        let seen = backend.requests().pop().unwrap();
        assert_eq!(seen_header(&seen, "x-forwarded-proto").as_deref(), Some("https"), "{proto:?}");
        assert_eq!(seen_header(&seen, "via").as_deref(), Some("1.1 edge"), "{proto:?}");
        assert_eq!(seen_header(&seen, "x-request-id").as_deref(), Some("client-id-9"), "{proto:?}");
        assert_eq!(seen_header(&seen, "x-forwarded-for").as_deref(), Some("203.0.113.9, 127.0.0.1"), "{proto:?}");

        // Tollgate's own error response still names the request.
        let (code, headers, body) = curl_proto(proto, &[&tollgate.url("/down")]);
        assert_eq!(code, 502, "{proto:?}");
        let id = header_value(&headers, "x-request-id").expect("an error response carries the request id");
        assert_eq!(json(&body)["request_id"], id.as_str());
    }
}

#[test]
fn request_id_is_kept_from_the_client_or_generated_and_echoed() {
    let backend = Backend::fixed("ok");
    let tollgate = start_proxy(backend.addr, "", "", "");
    let mut generated = Vec::new();
    for proto in Proto::ALL {
        let (code, headers, _) = curl_proto(proto, &["-H", "X-Request-Id: client-id-7", &tollgate.url("/r")]);
        assert_eq!(code, 200);
        assert_eq!(header_value(&headers, "x-request-id").as_deref(), Some("client-id-7"), "{proto:?}");
        let seen = backend.requests().pop().unwrap();
        assert_eq!(seen_header(&seen, "x-request-id").as_deref(), Some("client-id-7"), "{proto:?}");

        for _ in 0..2 {
            let (code, headers, _) = curl_proto(proto, &[&tollgate.url("/r")]);
            assert_eq!(code, 200);
            let id = header_value(&headers, "x-request-id").expect("a generated x-request-id");
            assert_eq!(id.len(), 32, "{id}");
            assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
            let seen = backend.requests().pop().unwrap();
            assert_eq!(seen_header(&seen, "x-request-id").as_ref(), Some(&id), "the backend saw another id");
            generated.push(id);
        }

        // An unreasonable client id (too long) is replaced, not trusted.
        let long = format!("X-Request-Id: {}", "a".repeat(300));
        let (_, headers, _) = curl_proto(proto, &["-H", &long, &tollgate.url("/r")]);
        let replaced = header_value(&headers, "x-request-id");
        assert_eq!(replaced.as_ref().map(|v| v.len()), Some(32));
        assert_eq!(seen_header(&backend.requests().pop().unwrap(), "x-request-id"), replaced);
    }
    let unique: std::collections::HashSet<_> = generated.iter().collect();
    assert_eq!(unique.len(), generated.len(), "generated ids repeat: {generated:?}");
}

#[test]
fn max_forwards_counts_down_on_options_and_trace_and_the_gateway_answers_at_zero_and_for_options_star() {
    // RFC 9110 §7.6.2: each hop lowers the count; the hop that gets 0 answers
    // as the final recipient and the request goes no further.
    let backend = Backend::fixed("from the backend");
    let tollgate = start_proxy(backend.addr, "", "", "");
    let url = tollgate.url("/probe?q=1");
    for proto in Proto::ALL {
        let (code, headers, body) = curl_proto(proto, &["-X", "OPTIONS", "-H", "Max-Forwards: 0", &url]);
        assert_eq!((code, body.as_slice()), (200, &b""[..]), "{proto:?}: {headers}");
        let trace = ["-X", "TRACE", "-H", "Max-Forwards: 0", "-H", "Cookie: session=secret", "-H", "X-Probe: 7", &url];
        let (code, headers, body) = curl_proto(proto, &trace);
        assert_eq!(code, 200, "{proto:?}");
        assert_eq!(header_value(&headers, "content-type").as_deref(), Some("message/http"), "{proto:?}");
        let reflected = String::from_utf8(body).unwrap();
        assert!(reflected.starts_with("TRACE /probe?q=1 HTTP/"), "{proto:?}: {reflected}");
        assert!(reflected.contains("x-probe: 7\r\n"), "{proto:?}: {reflected}");
        assert!(reflected.contains("host: 127.0.0.1:"), "{proto:?}: {reflected}");
        assert!(!reflected.contains("secret"), "credentials are not reflected: {reflected}");
        assert!(backend.requests().is_empty(), "{proto:?}: a request at 0 went on to the backend");

        let (code, _, body) = curl_proto(proto, &["-X", "TRACE", "-H", "Max-Forwards: 5", &url]);
        assert_eq!((code, body.as_slice()), (200, &b"from the backend"[..]), "{proto:?}");
        let seen = only_request(&backend);
        assert_eq!(seen_header(&seen, "max-forwards").as_deref(), Some("4"), "{proto:?}");
        // Other methods carry the field on untouched.
        let (code, _, _) = curl_proto(proto, &["-H", "Max-Forwards: 0", &url]);
        assert_eq!(code, 200, "{proto:?}");
        let seen = backend.requests().pop().unwrap();
        assert_eq!((seen.method.as_str(), seen_header(&seen, "max-forwards").as_deref()), ("GET", Some("0")));
        let (code, _, _) = curl_proto(proto, &["-X", "OPTIONS", "-H", "Max-Forwards: many", &url]);
        assert_eq!(code, 400, "{proto:?}: a count that is not a number");
        backend.clear();
        // `OPTIONS *` is about the server in general; no route leads from `*` to a backend.
        let (code, _, body) = curl_proto(proto, &["-X", "OPTIONS", "--request-target", "*", &tollgate.url("/")]);
        assert_eq!((code, body.as_slice()), (200, &b""[..]), "{proto:?}");
        assert!(backend.requests().is_empty(), "{proto:?}");
    }
    // Its absolute form, with no path (RFC 9112 §3.2.4), is the same question;
    // with a path it is about that resource and goes on.
    let host = tollgate.addr;
    let answer = raw_exchange(
        host,
        format!("OPTIONS http://{host} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(backend.requests().is_empty(), "{answer}");
    let answer = raw_exchange(
        host,
        format!("OPTIONS http://{host}/ HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    assert!(answer.contains("from the backend"), "{answer}");
    assert_eq!(only_request(&backend).uri, "/");
}

#[test]
fn host_is_preserved_by_default() {
    let backend = Backend::fixed("ok");
    let tollgate = start_proxy(backend.addr, "", "", "");
    for proto in Proto::ALL {
        let (code, _, _) = curl_proto(proto, &["-H", "Host: app.example.test:8443", &tollgate.url("/")]);
        assert_eq!(code, 200);
        let seen = backend.requests().pop().unwrap();
        // For h2 curl sends the Host as :authority; the HTTP/1.1 backend must get it as Host.
        assert_eq!(seen_header(&seen, "host").as_deref(), Some("app.example.test:8443"), "{proto:?}");
    }
}

#[test]
fn preserve_host_false_sends_the_target_address() {
    let backend = Backend::fixed("ok");
    let tollgate = start_proxy(backend.addr, "", "", "preserve_host = false");
    for proto in Proto::ALL {
        let (code, _, _) = curl_proto(proto, &["-H", "Host: app.example.test", &tollgate.url("/")]);
        assert_eq!(code, 200);
        let seen = backend.requests().pop().unwrap();
        assert_eq!(seen_header(&seen, "host"), Some(backend.addr.to_string()), "{proto:?}");
        // The original host is still available to the backend.
        assert_eq!(seen_header(&seen, "x-forwarded-host").as_deref(), Some("app.example.test"));
    }
}

#[test]
fn head_returns_no_body_and_keeps_the_content_length() {
    let backend = Backend::start(|req| async move {
        if req.method() == Method::HEAD {
            Response::builder().header("content-length", "1234").body(full(Bytes::new())).unwrap()
        } else {
            Response::new(full(vec![b'z'; 1234]))
        }
    });
    let tollgate = start_proxy(backend.addr, "", "", "");
    for proto in Proto::ALL {
        let (code, headers, _) = curl_proto(proto, &["-I", &tollgate.url("/doc")]);
        assert_eq!(code, 200, "{proto:?}: {headers}");
        assert_eq!(header_value(&headers, "content-length").as_deref(), Some("1234"), "{proto:?}:\n{headers}");
        assert_eq!(backend.requests().pop().unwrap().method, "HEAD");

        let (code, headers, body) = curl_proto(proto, &[&tollgate.url("/doc")]);
        assert_eq!((code, body.len()), (200, 1234));
        assert_eq!(header_value(&headers, "content-length").as_deref(), Some("1234"));
    }
    // On the wire: a HEAD answer ends with its header block, and the next
    // response on the same connection follows right after it.
    let wire = raw_exchange(
        tollgate.addr,
        b"HEAD /doc HTTP/1.1\r\nHost: t\r\n\r\nGET /after HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    let (head, after) = wire.split_once("\r\n\r\n").expect("a complete HEAD response");
    assert!(head.starts_with("HTTP/1.1 200"), "{wire}");
    assert!(head.to_ascii_lowercase().contains("content-length: 1234"), "{head}");
    assert!(after.starts_with("HTTP/1.1 200"), "bytes after the HEAD response head:\n{after:.200}");
    assert!(after.ends_with(&"z".repeat(1234)), "{after:.200}");
}

#[test]
fn expect_100_continue_upload_is_answered_and_arrives_intact() {
    let backend = echo_backend();
    let tollgate = start_proxy(backend.addr, "", "", "");
    let dir = tempfile::tempdir().unwrap();
    let payload = pattern_bytes(2 * 1024 * 1024 + 17);
    let file = write_file(dir.path(), "upload.bin", &payload);
    let out_path = dir.path().join("echo.bin");
    let started = Instant::now();
    // A generous expect timeout: if tollgate never sent 100 Continue, curl would
    // sit out all 10 s before sending the body anyway.
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
        out_path.to_str().unwrap(),
        "-w",
        "%{http_code}",
        &tollgate.url("/upload"),
    ]);
    let elapsed = started.elapsed();
    let verbose = String::from_utf8_lossy(&out.stderr);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200", "{verbose}");
    assert!(verbose.contains("< HTTP/1.1 100 Continue"), "no interim 100 response:\n{verbose}");
    assert!(elapsed < Duration::from_secs(5), "upload waited for the expect timeout ({elapsed:?})");
    let echoed = std::fs::read(&out_path).unwrap();
    assert!(echoed == payload, "echoed {} bytes differ from the {} sent", echoed.len(), payload.len());
    let seen = only_request(&backend);
    assert_eq!(seen_header(&seen, "expect"), None, "Expect is answered by tollgate, not forwarded");
}

#[test]
fn chunked_request_body_streams_to_the_backend_intact() {
    let backend = streaming_echo_backend();
    let tollgate = start_proxy(backend.addr, "", "", "");
    let dir = tempfile::tempdir().unwrap();
    let payload = pattern_bytes(300_000);
    let file = write_file(dir.path(), "upload.bin", &payload);
    for proto in Proto::ALL {
        let (code, headers, body) = curl_proto(
            proto,
            &[
                "-H",
                "Transfer-Encoding: chunked",
                "--data-binary",
                &format!("@{}", file.display()),
                &tollgate.url("/c"),
            ],
        );
        assert_eq!(code, 200, "{proto:?}: {headers}");
        assert!(body == payload, "{proto:?}: {} bytes back, {} sent", body.len(), payload.len());
        let seen = backend.requests().pop().unwrap();
        if proto == Proto::Http1 {
            // A body of unknown length is streamed on, not buffered to learn its length.
            assert_eq!(seen_header(&seen, "transfer-encoding").as_deref(), Some("chunked"), "{:?}", seen.headers);
            assert_eq!(seen_header(&seen, "content-length"), None);
            assert_eq!(header_value(&headers, "transfer-encoding").as_deref(), Some("chunked"), "{headers}");
        }
    }
}

#[test]
fn equal_content_lengths_from_a_client_reach_the_backend_as_one_number() {
    let backend = streaming_echo_backend();
    let tollgate = start_proxy(backend.addr, "", "", "");
    for proto in Proto::ALL {
        // RFC 9110 §8.6: `3, 3` means 3; the backend must not be left to guess.
        let args = ["-H", "Content-Length: 3, 3", "--data-binary", "abc", &tollgate.url("/l")];
        let (code, headers, body) = curl_proto(proto, &args);
        assert_eq!((code, &body[..]), (200, &b"abc"[..]), "{proto:?}: {headers}");
        let seen = backend.requests().pop().unwrap();
        let lengths: Vec<_> = seen.headers.get_all("content-length").iter().collect();
        assert_eq!(lengths, ["3"], "{proto:?}");
    }
}

#[test]
fn chunked_response_body_arrives_intact() {
    let payload = pattern_bytes(64 * 4096 + 123);
    let chunks: Vec<Bytes> = payload.chunks(4096).map(Bytes::copy_from_slice).collect();
    let backend = Backend::start(move |_req| {
        let chunks = chunks.clone();
        async move { Response::new(ChunkedBody::boxed_from(chunks)) }
    });
    let tollgate = start_proxy(backend.addr, "", "", "");
    for proto in Proto::ALL {
        let (code, headers, body) = curl_proto(proto, &[&tollgate.url("/stream")]);
        assert_eq!(code, 200);
        assert!(body == payload, "{proto:?}: {} bytes, expected {}", body.len(), payload.len());
        assert_eq!(header_value(&headers, "content-length"), None, "{proto:?}: {headers}");
        if proto == Proto::Http1 {
            assert_eq!(header_value(&headers, "transfer-encoding").as_deref(), Some("chunked"), "{headers}");
        }
    }
}

#[test]
fn unreachable_backend_is_a_json_502_with_the_request_id() {
    let nothing_there: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let tollgate = start_proxy(nothing_there, "", "", "");
    for proto in Proto::ALL {
        let started = Instant::now();
        let (code, headers, body) = curl_proto(proto, &[&tollgate.url("/down")]);
        assert_eq!(code, 502, "{proto:?}: {headers}");
        assert!(started.elapsed() < Duration::from_secs(3), "a refused connect should fail fast");
        assert_eq!(header_value(&headers, "content-type").as_deref(), Some("application/json"));
        let value = json(&body);
        assert_eq!(value["error"], "upstream_unreachable", "{value}");
        assert_eq!(value["request_id"], header_value(&headers, "x-request-id").unwrap().as_str());
    }
}

#[test]
fn backend_slower_than_first_byte_timeout_is_a_json_504() {
    let backend = Backend::start(|_req| async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        Response::new(full("too late"))
    });
    let tollgate = start_proxy(backend.addr, "", "first_byte_timeout = \"300ms\"", "");
    for proto in Proto::ALL {
        let started = Instant::now();
        let (code, headers, body) = curl_proto(proto, &["-H", "X-Request-Id: slow-1", &tollgate.url("/slow")]);
        let elapsed = started.elapsed();
        assert_eq!(code, 504, "{proto:?}: {headers}");
        assert!(elapsed >= Duration::from_millis(300), "answered before the timeout: {elapsed:?}");
        assert!(elapsed < Duration::from_secs(2), "the timeout did not cut the wait: {elapsed:?}");
        let value = json(&body);
        assert_eq!(value["error"], "upstream_timeout", "{value}");
        assert_eq!(value["request_id"], "slow-1");
    }
}

#[test]
fn nghttp_h2c_request_gets_proxied_with_forwarding_headers() {
    let backend = echo_backend();
    let tollgate = start_proxy(backend.addr, "", "", "");
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(dir.path(), "data.txt", b"posted by nghttp");
    let out = std::process::Command::new("nghttp")
        .args(["-v", "-H", "x-request-id: nghttp-abc", "-d"])
        .arg(&file)
        .arg(tollgate.url("/via-nghttp?x=1"))
        .output()
        .expect("nghttp is installed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    // nghttp speaks HTTP/2 with prior knowledge: the frames prove it, the headers prove the proxying.
    assert!(stdout.contains("recv SETTINGS frame"), "{stdout}");
    assert!(stdout.contains(":status: 200"), "{stdout}");
    assert!(stdout.contains("x-request-id: nghttp-abc"), "{stdout}");
    assert!(stdout.contains("via: 2 tollgate"), "{stdout}");
    assert!(stdout.contains("posted by nghttp"), "echoed body missing:\n{stdout}");
    let seen = only_request(&backend);
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.uri, "/via-nghttp?x=1");
    assert_eq!(seen_header(&seen, "host"), Some(tollgate.addr.to_string()));
    assert_eq!(seen_header(&seen, "via").as_deref(), Some("2 tollgate"));
    assert_eq!(seen_header(&seen, "x-request-id").as_deref(), Some("nghttp-abc"));
}
