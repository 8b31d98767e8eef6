//! gRPC-Web through Tollgate to a real `grpcio` server: curl as the
//! browser-side client over HTTP/1.1 and h2c, binary and `-text`, unary and
//! server streaming (message by message), trailer frames, malformed bodies,
//! gateway errors, and CORS from the `cors` policy.

mod common;
mod grpc_support;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::*;
use grpc_support::*;

const PROTOCOLS: [&str; 2] = ["--http1.1", "--http2-prior-knowledge"];

/// POSTs `body` as `content_type` to `path`: (status, headers, body).
fn web_call(
    tollgate: &Tollgate,
    protocol: &str,
    path: &str,
    content_type: &str,
    body: &[u8],
) -> (u16, String, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(dir.path(), "req", body);
    let data = format!("@{}", file.display());
    let ct = format!("content-type: {content_type}");
    let url = tollgate.url(path);
    curl_full(&[protocol, "-H", &ct, "-H", "x-grpc-web: 1", "--data-binary", &data, "--max-time", "10", &url])
}

/// The status and message of a gRPC-Web response: from the trailer frame,
/// or from the head for a trailers-only answer.
fn status_of(headers: &str, frames: &[(u8, Vec<u8>)]) -> (String, String) {
    if let Some((_, block)) = frames.iter().find(|(flag, _)| *flag == 0x80) {
        let lines = trailer_lines(block);
        let get = |name: &str| {
            lines.iter().find_map(|l| l.strip_prefix(&format!("{name}: ")).map(str::to_string)).unwrap_or_default()
        };
        return (get("grpc-status"), get("grpc-message"));
    }
    (
        header_value(headers, "grpc-status").unwrap_or_default(),
        header_value(headers, "grpc-message").unwrap_or_default(),
    )
}

#[test]
fn binary_unary_call_over_http1_and_h2() {
    let backend = GrpcBackend::start("b1");
    let tollgate = Tollgate::start_with(&grpc_config(&[backend.addr], "", ""));
    for protocol in PROTOCOLS {
        let (code, headers, body) =
            web_call(&tollgate, protocol, "/test.Echo/Unary", "application/grpc-web+proto", &frame(b"hello"));
        assert_eq!(code, 200, "{protocol}: {headers}");
        assert!(header_value(&headers, "content-type").unwrap().starts_with("application/grpc-web"), "{headers}");
        let frames = frames(&body);
        assert_eq!(frames.len(), 2, "{protocol}: one message, one trailer frame: {frames:?}");
        assert_eq!(frames[0], (0, b"echo:hello".to_vec()));
        assert_eq!(frames[1].0, 0x80);
        assert!(trailer_lines(&frames[1].1).contains(&"grpc-status: 0".to_string()), "{frames:?}");
    }
}

#[test]
fn text_server_stream_over_http1_and_h2() {
    let backend = GrpcBackend::start("b1");
    let tollgate = Tollgate::start_with(&grpc_config(&[backend.addr], "", ""));
    let request = base64::engine::general_purpose::STANDARD.encode(frame(b"3"));
    for protocol in PROTOCOLS {
        let (code, headers, body) =
            web_call(&tollgate, protocol, "/test.Echo/ServerStream", "application/grpc-web-text", request.as_bytes());
        assert_eq!(code, 200, "{protocol}: {headers}");
        assert_eq!(header_value(&headers, "content-type").as_deref(), Some("application/grpc-web-text"));
        let frames = frames(&decode_text(&body));
        let messages: Vec<&[u8]> = frames.iter().filter(|f| f.0 == 0).map(|f| &f.1[..]).collect();
        assert_eq!(messages, [&b"msg-0"[..], b"msg-1", b"msg-2"], "{protocol}");
        assert_eq!(status_of(&headers, &frames).0, "0");
    }
}

#[test]
fn server_stream_reaches_the_client_message_by_message() {
    let backend = GrpcBackend::start("b1");
    let tollgate = Tollgate::start_with(&grpc_config(&[backend.addr], "", ""));
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(dir.path(), "req", &frame(b"4,400"));
    for protocol in PROTOCOLS {
        let mut child = Command::new("curl")
            .args(["-s", "-N", protocol, "-H", "content-type: application/grpc-web", "--data-binary"])
            .arg(format!("@{}", file.display()))
            .arg(tollgate.url("/test.Echo/ServerStream"))
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let start = Instant::now();
        let (mut all, mut arrivals) = (Vec::new(), Vec::new());
        let mut buf = [0u8; 4096];
        loop {
            let n = stdout.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
            let messages = frames_prefix(&all);
            while arrivals.len() < messages {
                arrivals.push(start.elapsed());
            }
        }
        child.wait().unwrap();
        assert_eq!(frames(&all).len(), 5, "{protocol}: four messages and the trailer frame");
        // Sent 400 ms apart: the first must be here long before the last.
        assert!(arrivals[3] - arrivals[0] > Duration::from_millis(800), "{protocol}: batched: {arrivals:?}");
    }
}

/// How many whole frames `body` starts with.
fn frames_prefix(mut body: &[u8]) -> usize {
    let mut n = 0;
    while body.len() >= 5 {
        let len = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
        if body.len() < 5 + len {
            break;
        }
        body = &body[5 + len..];
        n += 1;
    }
    n
}

#[test]
fn error_status_message_and_details_arrive_in_the_trailer_frame() {
    let backend = GrpcBackend::start("b1");
    let tollgate = Tollgate::start_with(&grpc_config(&[backend.addr], "", ""));
    for protocol in PROTOCOLS {
        let (code, headers, body) =
            web_call(&tollgate, protocol, "/test.Echo/Fail", "application/grpc-web", &frame(b""));
        assert_eq!(code, 200);
        let frames = frames(&body);
        let (status, message) = status_of(&headers, &frames);
        assert_eq!(status, "9", "{protocol}: {headers} {frames:?}");
        assert_eq!(message, "precondition failed: 100%25 broken");
        let trailers = frames.iter().find(|f| f.0 == 0x80).map(|f| trailer_lines(&f.1)).unwrap_or_default();
        let details = headers
            .lines()
            .chain(trailers.iter().map(String::as_str))
            .any(|l| l.starts_with("grpc-status-details-bin:"));
        assert!(details, "{protocol}: {headers} {trailers:?}");
    }
}

#[test]
fn malformed_bodies_get_a_clear_status_not_a_hang() {
    let backend = GrpcBackend::start("b1");
    let tollgate = Tollgate::start_with(&grpc_config(&[backend.addr], "", ""));
    let cases: [(&str, &[u8], &str, &str); 3] = [
        ("application/grpc-web-text", b"!!!!", "3", "not valid base64"),
        ("application/grpc-web", &[0x42, 0, 0, 0, 0], "13", "flag byte 0x42"),
        ("application/grpc-web", &[0, 0, 0, 0, 9, 1], "13", "ends inside a frame"),
    ];
    for protocol in PROTOCOLS {
        for (content_type, body, status, message) in cases {
            let start = Instant::now();
            let (code, headers, out) = web_call(&tollgate, protocol, "/test.Echo/Unary", content_type, body);
            assert_eq!(code, 200, "{protocol} {content_type}: {headers}");
            let body = if content_type.ends_with("-text") { decode_text(&out) } else { out };
            let (got, text) = status_of(&headers, &frames(&body));
            assert_eq!(got, status, "{protocol} {content_type} {body:?}: {headers}");
            assert!(text.contains(message), "{text}");
            assert!(start.elapsed() < Duration::from_secs(3));
        }
    }
}

#[test]
fn gateway_errors_are_grpc_web_statuses() {
    let tollgate = Tollgate::start_with(&grpc_config(&[common::transport::free_addr()], "", ""));
    for protocol in PROTOCOLS {
        let (code, headers, body) = web_call(&tollgate, protocol, "/other.Svc/M", "application/grpc-web", &frame(b""));
        assert_eq!((code, body.len()), (200, 0), "trailers-only");
        assert_eq!(header_value(&headers, "grpc-status").as_deref(), Some("12"), "{headers}");
        assert_eq!(header_value(&headers, "content-type").as_deref(), Some("application/grpc-web"));
        let (_, headers, _) = web_call(&tollgate, protocol, "/test.Echo/Unary", "application/grpc-web-text", b"");
        assert_eq!(header_value(&headers, "grpc-status").as_deref(), Some("14"), "{headers}");
    }
}

#[test]
fn cors_preflight_and_exposed_grpc_headers_for_browsers() {
    let backend = GrpcBackend::start("b1");
    let cors = "[policy.web]\nkind = \"cors\"\nallow_origins = [\"http://app.test\"]\n\
                allow_headers = [\"content-type\", \"x-grpc-web\", \"x-user-agent\", \"grpc-timeout\"]\n\
                expose_headers = [\"grpc-status\", \"grpc-message\"]\n";
    let tollgate = Tollgate::start_with(&grpc_config(&[backend.addr], "policies = [\"web\"]", cors));
    let url = tollgate.url("/test.Echo/Unary");
    let (code, headers, _) = curl_full(&[
        "-X",
        "OPTIONS",
        "-H",
        "origin: http://app.test",
        "-H",
        "access-control-request-method: POST",
        "-H",
        "access-control-request-headers: content-type,x-grpc-web",
        &url,
    ]);
    assert!(code == 204 || code == 200, "{headers}");
    assert_eq!(header_value(&headers, "access-control-allow-origin").as_deref(), Some("http://app.test"));
    assert!(header_value(&headers, "access-control-allow-headers").unwrap().contains("x-grpc-web"));

    let dir = tempfile::tempdir().unwrap();
    let data = format!("@{}", write_file(dir.path(), "req", &frame(b"hi")).display());
    let (code, headers, body) = curl_full(&[
        "-H",
        "origin: http://app.test",
        "-H",
        "content-type: application/grpc-web+proto",
        "--data-binary",
        &data,
        &url,
    ]);
    assert_eq!(code, 200);
    assert_eq!(header_value(&headers, "access-control-allow-origin").as_deref(), Some("http://app.test"));
    let exposed = header_value(&headers, "access-control-expose-headers").unwrap_or_default();
    assert!(exposed.contains("grpc-status") && exposed.contains("grpc-message"), "{headers}");
    assert_eq!(frames(&body)[0], (0, b"echo:hi".to_vec()));
}

/// Runs tests/peers/node/grpc_web_client.mjs (connect-web or connect-node).
fn node_client(base_url: &str, kind: &str) -> serde_json::Value {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/node");
    assert!(dir.join("node_modules/@connectrpc").exists(), "run scripts/test.sh once (it npm-installs the Node peers)");
    let run = || {
        Command::new("node")
            .arg(dir.join("grpc_web_client.mjs"))
            .args([base_url, kind])
            .stdin(Stdio::null())
            .output()
            .expect("node is installed")
    };
    let mut out = run();
    // connect-node's HTTP/1.1 agent does not retry a request written to a
    // keep-alive socket the server closed at that moment (EPIPE/ECONNRESET);
    // seen once on a loaded CI machine. One more run, then it must pass.
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() && (stderr.contains("EPIPE") || stderr.contains("ECONNRESET")) {
        out = run();
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|_| panic!("{kind}: no JSON: {stdout}\n{}", String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn connect_clients_over_fetch_http1_and_http2() {
    let backend = GrpcBackend::start("b1");
    let tollgate = Tollgate::start_with(&grpc_config(&[backend.addr], "", ""));
    // web: connect-web on Node's fetch (HTTP/1.1); node1/node2: connect-node's gRPC-Web transport.
    for kind in ["web", "node1", "node2"] {
        let out = node_client(&tollgate.url(""), kind);
        assert_eq!(out["unary"], "echo:hello", "{kind}: {out}");
        assert_eq!(out["trailers"]["grpc-status"], "0", "{kind}: {out}");
        assert_eq!(out["stream"], serde_json::json!(["0:s", "1:s", "2:s"]), "{kind}: {out}");
        let times: Vec<u64> = out["times"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap()).collect();
        assert!(times[2] - times[0] >= 450, "{kind}: messages batched: {times:?}");
        // FAILED_PRECONDITION, with the google.rpc.Status from grpc-status-details-bin.
        assert_eq!(out["fail"], serde_json::json!({"code": 9, "message": "oops"}), "{kind}: {out}");
    }
    assert!(tollgate.wait_for_log("protocol=\"HTTP/2\" method=POST path=/test.Echo/Proto", Duration::from_secs(5)));
}
