//! Our HTTP/2 code in both roles against hyper-h2, for the parts of RFC 9113
//! that curl, nghttp, h2load and grpcio never exercise.
//!
//! Server (`src/http2/server.rs`, `listen::http2`), with hyper-h2 as the
//! client (tests/peers/h2_client.py): padded DATA, header blocks continued
//! over CONTINUATION frames, a zero initial window raised later by SETTINGS,
//! request trailers, one reset stream among live ones, responses larger than
//! the client's default windows, a larger frame size, PRIORITY frames, split
//! cookies, a body that contradicts its `content-length`, HEAD, a shrunk HPACK
//! table, `host` standing in for `:authority`, a one-byte window, a client's
//! GOAWAY, a client reset mid-download, response trailers, and fields the
//! client's HPACK encoder indexed, through many table evictions, a response
//! head past the client's frame size, a plain CONNECT, and an `:authority`
//! with user info.
//!
//! Client (`src/http2/client.rs`, gRPC upstreams), with hyper-h2 as the
//! backend (tests/peers/h2_backend.py): padded DATA, a zero initial window
//! raised later, a response head over our limit, a shrunk HPACK table,
//! streams reset before an answer (mapped to gRPC statuses), response fields
//! the backend's HPACK encoder indexed, a stream limit of one.

mod common;
mod grpc_support;

use std::process::Command;
use std::time::Duration;

use common::core_kit::*;
use common::transport::run_with_timeout;
use common::*;
use grpc_support::*;
use http_body_util::BodyExt;
use hyper::Response;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// The client's body pattern (`pattern` in the script).
fn pattern(size: usize) -> Vec<u8> {
    (0..size).map(|i| (i % 251) as u8).collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// A backend that reports what it received: for a request with a body, its
/// length, SHA-256 and trailers as JSON; `GET /big/N` answers N pattern
/// bytes; `GET /header-size` the length of `x-big`; `GET /echo-id` the value
/// of `x-id`; `GET /trailers` a chunked body with trailers; `GET /big-head` a
/// 40,000-byte response field.
fn reporting_backend() -> Backend {
    Backend::start(|req| async move {
        let path = req.uri().path().to_string();
        if let Some(size) = path.strip_prefix("/big/") {
            return Response::new(full(pattern(size.parse().unwrap())));
        }
        if path == "/trailers" {
            let frames: Vec<Result<http_body::Frame<bytes::Bytes>, Box<dyn std::error::Error + Send + Sync>>> = vec![
                Ok(http_body::Frame::data(bytes::Bytes::from_static(b"abc"))),
                Ok(http_body::Frame::trailers(http::HeaderMap::from_iter([(
                    http::HeaderName::from_static("x-checksum"),
                    http::HeaderValue::from_static("900150983cd24fb0"),
                )]))),
            ];
            let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
            return Response::builder().header("trailer", "x-checksum").body(body.boxed()).unwrap();
        }
        if path == "/big-head" {
            return Response::builder().header("x-big", "h".repeat(40_000)).body(full("small")).unwrap();
        }
        if path == "/echo-id" {
            let id = req.headers().get("x-id").map(|v| v.as_bytes().to_vec()).unwrap_or_default();
            return Response::new(full(id));
        }
        if path == "/header-size" {
            let size = req.headers().get("x-big").map_or(0, |v| v.len());
            return Response::new(full(size.to_string()));
        }
        let collected = match req.into_body().collect().await {
            Ok(collected) => collected,
            Err(e) => return Response::new(full(format!("{{\"error\": \"{e}\"}}"))),
        };
        let trailers: serde_json::Map<String, Value> = collected
            .trailers()
            .map(|t| t.iter().map(|(k, v)| (k.to_string(), json!(v.to_str().unwrap_or("")))).collect())
            .unwrap_or_default();
        let body = collected.to_bytes();
        let report = json!({"len": body.len(), "sha256": sha256_hex(&body), "trailers": trailers});
        Response::new(full(report.to_string()))
    })
}

/// Runs `scenario` (see the script's docstring) on one h2c connection.
fn h2_client(tollgate: &Tollgate, scenario: Value) -> Value {
    let out = run_with_timeout(
        Command::new(".venv/bin/python").args([
            "tests/peers/h2_client.py",
            &tollgate.addr.ip().to_string(),
            &tollgate.addr.port().to_string(),
            &scenario.to_string(),
        ]),
        Duration::from_secs(90),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!("h2 client gave no report ({e}): stdout {stdout} stderr {}", String::from_utf8_lossy(&out.stderr))
    })
}

/// The backend's JSON report from a result's body.
fn backend_report(result: &Value) -> Value {
    serde_json::from_str(result["body_text"].as_str().unwrap()).unwrap_or_else(|e| panic!("{e}: {result}"))
}

#[test]
fn responses_larger_than_the_clients_default_windows_arrive_whole() {
    // Found by this suite: a response whose body had all been handed over
    // while its tail still waited for the client's window was dropped with
    // the stream, and the download stalled at 65,535 bytes.
    let backend = reporting_backend();
    let tollgate = start_proxy(backend.addr, "", "", "");
    let sizes = [65_536, 100_000, 1_000_000];
    let requests: Vec<Value> = sizes.iter().map(|n| json!({"path": format!("/big/{n}")})).collect();
    let report = h2_client(&tollgate, json!({"requests": requests}));
    for (result, len) in report["results"].as_array().unwrap().iter().zip(sizes) {
        assert_eq!(result["status"], 200, "{report}");
        assert_eq!(result["body_len"], len, "{report}");
        assert_eq!(result["body_sha256"], sha256_hex(&pattern(len)));
    }
}

#[test]
fn padded_data_frames_reach_the_backend_whole_and_their_padding_is_credited_back() {
    let backend = reporting_backend();
    let tollgate = start_proxy(backend.addr, "", "", "");
    // 4,096 frames of 512 bytes, each with 255 bytes of padding: ~1 MiB of
    // padding, as much as the connection window. Unless the server gives
    // padding back as it reads it, the upload stalls half-way.
    let size = 2 * 1024 * 1024;
    let report = h2_client(
        &tollgate,
        json!({"requests": [{"method": "POST", "path": "/upload", "body_size": size, "chunk": 512, "pad": 255}]}),
    );
    let result = &report["results"][0];
    assert_eq!(result["status"], 200, "{report}");
    let seen = backend_report(result);
    assert_eq!(seen["len"], size, "{seen}");
    assert_eq!(seen["sha256"], result["sent_sha256"], "{seen}");
    assert_eq!(report["closed"], Value::Null, "{report}");
}

#[test]
fn a_header_block_continued_over_continuation_frames_is_read_whole() {
    let backend = reporting_backend();
    let tollgate = start_proxy(backend.addr, "max_header_bytes = 65536", "", "");
    // 40,000 bytes do not fit in one 16 KiB frame: HEADERS, then CONTINUATION.
    let big = "a".repeat(40_000);
    let report = h2_client(
        &tollgate,
        json!({"requests": [{"path": "/header-size", "headers": [["x-big", big]]}], "after": [{"path": "/big/5"}]}),
    );
    assert_eq!(report["results"][0]["status"], 200, "{report}");
    assert_eq!(report["results"][0]["body_text"], "40000");
    // The connection's HPACK state is intact afterwards.
    assert_eq!(report["results"][1]["status"], 200);
    assert_eq!(report["results"][1]["body_len"], 5);
}

#[test]
fn a_continued_header_block_over_the_limit_gets_431_and_the_connection_goes_on() {
    let backend = reporting_backend();
    let tollgate = start_proxy(backend.addr, "max_header_bytes = 16384", "", "");
    let big = "a".repeat(40_000);
    let report = h2_client(
        &tollgate,
        json!({"requests": [{"path": "/header-size", "headers": [["x-big", big]]}], "after": [{"path": "/big/5"}]}),
    );
    assert_eq!(report["results"][0]["status"], 431, "{report}");
    assert_eq!(report["results"][1]["status"], 200, "{report}");
    assert_eq!(report["results"][1]["body_len"], 5);
    assert!(backend.requests().iter().all(|r| r.uri != "/header-size"), "the oversized request reached the backend");
}

#[test]
fn a_client_that_opens_with_a_zero_window_gets_data_only_once_it_raises_it() {
    let backend = reporting_backend();
    let tollgate = start_proxy(backend.addr, "", "", "");
    let size = 1024 * 1024;
    let report = h2_client(
        &tollgate,
        json!({
            "initial_window_size": 0,
            "raise_window_after_ms": 500,
            "requests": [{"path": format!("/big/{size}")}, {"path": "/big/1000"}],
        }),
    );
    // Flow control holds every DATA byte back while the window is zero...
    assert_eq!(report["data_before_raise"], 0, "{report}");
    // ...and the SETTINGS change opens the window of streams already open (§6.9.2).
    for (result, len) in report["results"].as_array().unwrap().iter().zip([size, 1000]) {
        assert_eq!(result["status"], 200, "{report}");
        assert_eq!(result["body_len"], len);
        assert_eq!(result["body_sha256"], sha256_hex(&pattern(len)));
    }
}

#[test]
fn request_trailers_reach_an_http1_backend_without_fields_unfit_for_trailers() {
    let backend = reporting_backend();
    let tollgate = start_proxy(backend.addr, "", "", "");
    let size = 100_000;
    // A late `content-length` or `host` could make a backend that merges
    // trailers into the head re-read the request (RFC 9110 §6.5.1).
    let report = h2_client(
        &tollgate,
        json!({"requests": [{
            "method": "POST", "path": "/with-trailers", "body_size": size,
            "trailers": [["x-checksum", "c0ffee"], ["content-length", "5"], ["host", "internal"]],
        }]}),
    );
    let result = &report["results"][0];
    assert_eq!(result["status"], 200, "{report}");
    let seen = backend_report(result);
    assert_eq!(seen["len"], size);
    assert_eq!(seen["sha256"], result["sent_sha256"]);
    assert_eq!(seen["trailers"], json!({"x-checksum": "c0ffee"}), "{seen}");
}

#[test]
fn a_reset_upload_leaves_the_other_streams_and_the_connection_working() {
    let backend = reporting_backend();
    let tollgate = start_proxy(backend.addr, "", "", "");
    let report = h2_client(
        &tollgate,
        json!({
            "requests": [
                {"method": "POST", "path": "/abandoned", "body_size": 1024 * 1024, "reset_after_bytes": 65536},
                {"method": "POST", "path": "/kept", "body_size": 256 * 1024},
                {"path": "/big/100000"},
            ],
            "after": [{"path": "/big/10"}],
        }),
    );
    let results = report["results"].as_array().unwrap();
    assert_eq!(results[0]["we_reset"], true, "{report}");
    let kept = backend_report(&results[1]);
    assert_eq!(kept["len"], 256 * 1024);
    assert_eq!(kept["sha256"], results[1]["sent_sha256"]);
    assert_eq!(results[2]["body_len"], 100_000);
    assert_eq!(results[3]["status"], 200);
    assert_eq!(report["ping_ack"], true, "PING is answered with its own payload");
    assert_eq!(report["closed"], Value::Null, "{report}");
}

#[test]
fn a_client_that_allows_larger_frames_gets_them_and_a_whole_body() {
    let backend = reporting_backend();
    let tollgate = start_proxy(backend.addr, "", "", "");
    let size = 1_000_000;
    let report = h2_client(
        &tollgate,
        json!({"max_frame_size": 65_536, "requests": [{"path": format!("/big/{size}")}], "after": [{"path": "/big/300000"}]}),
    );
    for (result, len) in report["results"].as_array().unwrap().iter().zip([size, 300_000]) {
        assert_eq!(result["body_len"], len, "{report}");
        assert_eq!(result["body_sha256"], sha256_hex(&pattern(len)));
        let largest = result["largest_data_frame"].as_u64().unwrap();
        assert!(largest <= 65_536, "a DATA frame of {largest} bytes");
    }
    assert_eq!(report["closed"], Value::Null, "{report}");
}

#[test]
fn priority_frames_for_open_and_idle_streams_are_accepted_and_ignored() {
    let backend = reporting_backend();
    let tollgate = start_proxy(backend.addr, "", "", "");
    // PRIORITY is deprecated (RFC 9113 §5.3.2) but still legal on any stream,
    // idle ones included; it must neither open a stream nor fail one.
    let report = h2_client(
        &tollgate,
        json!({
            "prioritize_idle": 21,
            "requests": [{"path": "/big/70000", "priority_weight": 1}, {"path": "/big/5", "priority_weight": 256}],
            "after": [{"path": "/big/5"}],
        }),
    );
    for (result, len) in report["results"].as_array().unwrap().iter().zip([70_000, 5, 5]) {
        assert_eq!(result["status"], 200, "{report}");
        assert_eq!(result["body_len"], len, "{report}");
    }
    assert_eq!(report["closed"], Value::Null, "{report}");
}

#[test]
fn cookies_split_over_several_fields_reach_an_http1_backend_as_one() {
    let backend = reporting_backend();
    let tollgate = start_proxy(backend.addr, "", "", "");
    // HTTP/2 clients split `cookie` for compression (RFC 9113 §8.2.3); an
    // HTTP/1.1 request may carry only one `Cookie` field (RFC 6265 §5.4).
    let report = h2_client(
        &tollgate,
        json!({"requests": [{"path": "/big/1", "headers": [["cookie", "a=1"], ["cookie", "b=2"], ["cookie", "c=3"]]}]}),
    );
    assert_eq!(report["results"][0]["status"], 200, "{report}");
    let seen = backend.requests();
    let cookies: Vec<_> = seen[0].headers.get_all("cookie").iter().map(|v| v.to_str().unwrap().to_string()).collect();
    assert_eq!(cookies, ["a=1; b=2; c=3"]);
}

#[test]
fn a_body_shorter_than_its_content_length_resets_the_stream_and_spares_the_connection() {
    let backend = reporting_backend();
    let tollgate = start_proxy(backend.addr, "", "", "");
    let report = h2_client(
        &tollgate,
        json!({
            "requests": [{"method": "POST", "path": "/short", "headers": [["content-length", "100"]], "body_size": 50}],
            "after": [{"path": "/big/5"}],
        }),
    );
    // A malformed request (RFC 9113 §8.1.1): reset with PROTOCOL_ERROR, or
    // answered with an error, never passed on as a complete 50-byte body.
    let result = &report["results"][0];
    let reset = result["reset"] == 1;
    let refused = result["status"].as_u64().is_some_and(|s| s >= 400);
    assert!(reset || refused, "{report}");
    let took_it = serde_json::from_str::<Value>(result["body_text"].as_str().unwrap())
        .is_ok_and(|seen| seen["len"] == 50 && seen.get("error").is_none());
    assert!(!took_it, "the backend took the short body as whole: {report}");
    assert_eq!(report["results"][1]["status"], 200, "{report}");
}

#[test]
fn head_requests_and_a_zero_hpack_table_get_heads_without_bodies() {
    // Found by this suite: without the table size update hyper-h2 refused our
    // first response head after it set SETTINGS_HEADER_TABLE_SIZE to 0.
    let backend = reporting_backend();
    let tollgate = start_proxy(backend.addr, "", "", "");
    // A client may turn our dynamic HPACK table off (SETTINGS_HEADER_TABLE_SIZE
    // = 0): every response head must then decode without it.
    let report = h2_client(
        &tollgate,
        json!({
            "header_table_size": 0,
            "requests": [{"method": "HEAD", "path": "/big/1000"}, {"path": "/big/3"}],
            "after": [{"method": "HEAD", "path": "/big/1000"}, {"path": "/big/3"}],
        }),
    );
    let results = report["results"].as_array().unwrap();
    for head in [&results[0], &results[2]] {
        assert_eq!(head["status"], 200, "{report}");
        assert_eq!(head["body_len"], 0, "{report}");
        let length = head["headers"].as_array().unwrap().iter().find(|p| p[0] == "content-length");
        assert_eq!(length.map(|p| p[1].clone()), Some(json!("1000")), "{report}");
    }
    for get in [&results[1], &results[3]] {
        assert_eq!(get["body_len"], 3, "{report}");
    }
    assert_eq!(report["closed"], Value::Null, "{report}");
}

#[test]
fn a_request_with_host_instead_of_authority_is_routed_by_it() {
    let by_host = reporting_backend();
    let other = reporting_backend();
    let tollgate = Tollgate::start_with(&format!(
        "{}{}{}{}",
        upstream_toml("a", &[by_host.addr], ""),
        upstream_toml("b", &[other.addr], ""),
        route_toml("by-host", "host = \"api.example.test\"", "a", ""),
        route_toml("rest", "path_prefix = \"/\"", "b", "")
    ));
    // RFC 9113 §8.3.1: `host` may stand in for `:authority`.
    let report = h2_client(
        &tollgate,
        json!({"requests": [{"path": "/big/2", "authority": false, "headers": [["host", "api.example.test"]]}]}),
    );
    assert_eq!(report["results"][0]["status"], 200, "{report}");
    assert_eq!(by_host.requests().len(), 1, "{report}");
    assert_eq!(by_host.requests()[0].headers["host"], "api.example.test");
    assert!(other.requests().is_empty());
}

#[test]
fn an_authority_with_user_info_or_a_host_with_a_path_is_malformed_and_reaches_no_backend() {
    let backend = reporting_backend();
    let tollgate = start_proxy(backend.addr, "", "", "");
    let authority = format!("user@{}", tollgate.addr);
    // RFC 9113 §8.3.1: no user info in :authority; a `host` must be a host.
    let report = h2_client(
        &tollgate,
        json!({"requests": [
            {"path": "/big/2", "authority": authority},
            {"path": "/big/2", "authority": false, "headers": [["host", "example.test/evil"]]},
        ], "after": [{"path": "/big/3"}]}),
    );
    for refused in &report["results"].as_array().unwrap()[..2] {
        assert_eq!(refused["reset"], 1, "PROTOCOL_ERROR: {report}");
    }
    assert_eq!(report["results"][2]["body_len"], 3, "the connection goes on: {report}");
    assert_eq!(backend.requests().len(), 1, "only the good request reached the backend");
}

#[test]
fn a_one_byte_window_gets_the_body_one_byte_per_frame_and_whole() {
    let backend = reporting_backend();
    let tollgate = start_proxy(backend.addr, "", "", "");
    let report = h2_client(&tollgate, json!({"initial_window_size": 1, "requests": [{"path": "/big/3000"}]}));
    let result = &report["results"][0];
    assert_eq!(result["body_len"], 3000, "{report}");
    assert_eq!(result["body_sha256"], sha256_hex(&pattern(3000)));
    assert_eq!(result["largest_data_frame"], 1, "{report}");
}

#[test]
fn a_client_goaway_lets_its_open_streams_finish() {
    let backend = reporting_backend();
    let tollgate = start_proxy(backend.addr, "", "", "");
    let report = h2_client(
        &tollgate,
        json!({"goaway_after_requests": true, "requests": [{"path": "/big/500000"}, {"path": "/big/10"}]}),
    );
    for (result, len) in report["results"].as_array().unwrap().iter().zip([500_000, 10]) {
        assert_eq!(result["status"], 200, "{report}");
        assert_eq!(result["body_len"], len, "{report}");
        assert_eq!(result["body_sha256"], sha256_hex(&pattern(len)));
    }
}

#[test]
fn a_client_reset_mid_download_ends_that_stream_only() {
    let backend = reporting_backend();
    let tollgate = start_proxy(backend.addr, "", "", "");
    let report = h2_client(
        &tollgate,
        json!({
            "requests": [{"path": "/big/4000000", "reset_after_response_bytes": 100_000}, {"path": "/big/300000"}],
            "after": [{"path": "/big/7"}],
        }),
    );
    let results = report["results"].as_array().unwrap();
    assert_eq!(results[0]["we_reset"], true, "{report}");
    assert_eq!(results[1]["body_len"], 300_000, "{report}");
    assert_eq!(results[2]["body_len"], 7, "{report}");
    assert_eq!(report["closed"], Value::Null, "{report}");
}

#[test]
fn response_trailers_from_a_chunked_http1_backend_reach_the_client() {
    let backend = reporting_backend();
    let tollgate = start_proxy(backend.addr, "", "", "");
    let report = h2_client(&tollgate, json!({"requests": [{"path": "/trailers", "headers": [["te", "trailers"]]}]}));
    let result = &report["results"][0];
    assert_eq!(result["body_text"], "abc", "{report}");
    assert_eq!(result["trailers"], json!([["x-checksum", "900150983cd24fb0"]]), "{report}");
}

#[test]
fn header_fields_indexed_by_the_clients_hpack_encoder_decode_right_through_evictions() {
    let backend = reporting_backend();
    let tollgate = start_proxy(backend.addr, "", "", "");
    // hyper-h2 indexes what it sends in its dynamic table (4,096 bytes): 120
    // distinct 300-byte values evict one another again and again, and a
    // repeated field is sent as a reference to its entry. Printable ASCII of
    // every kind exercises the Huffman code.
    let alphabet: Vec<char> = (0x21u8..0x7f).map(char::from).collect();
    let value = |i: usize| -> String {
        (0..300).map(|j| alphabet[(i * 7919 + j * 31 + j * j) % alphabet.len()]).collect::<String>() + &i.to_string()
    };
    let request =
        |i: usize| json!({"path": "/echo-id", "headers": [["x-id", value(i)], ["x-common", "the same every time"]]});
    let report = h2_client(
        &tollgate,
        json!({"requests": (0..60).map(request).collect::<Vec<_>>(), "after": (60..120).map(request).collect::<Vec<_>>()}),
    );
    for (i, result) in report["results"].as_array().unwrap().iter().enumerate() {
        assert_eq!(result["status"], 200, "{i}: {report}");
        assert_eq!(result["body_text"], value(i), "request {i}");
    }
    assert!(backend.requests().iter().all(|r| r.headers["x-common"] == "the same every time"));
}

#[test]
fn a_response_head_larger_than_the_clients_frame_size_goes_out_continued() {
    let backend = reporting_backend();
    let tollgate = start_proxy(backend.addr, "", "", "");
    // 40,000 bytes of head: HEADERS and CONTINUATION frames within the
    // client's 16 KiB frame size, which hyper-h2 holds us to.
    let report = h2_client(&tollgate, json!({"requests": [{"path": "/big-head"}], "after": [{"path": "/big/4"}]}));
    let result = &report["results"][0];
    assert_eq!(result["status"], 200, "{report}");
    let big = result["headers"].as_array().unwrap().iter().find(|p| p[0] == "x-big").map(|p| p[1].clone());
    assert_eq!(big, Some(json!("h".repeat(40_000))));
    assert_eq!(result["body_text"], "small");
    assert_eq!(report["results"][1]["body_len"], 4, "{report}");
}

#[test]
fn a_plain_connect_is_refused_cleanly_and_the_connection_goes_on() {
    let backend = reporting_backend();
    let tollgate = start_proxy(backend.addr, "", "", "");
    // Tollgate is not a forward proxy: a CONNECT with only :authority
    // (RFC 9113 §8.5) matches no route, and nothing reaches a backend.
    let report = h2_client(
        &tollgate,
        json!({"requests": [{"method": "CONNECT", "target": "example.com:443"}], "after": [{"path": "/big/2"}]}),
    );
    assert_eq!(report["results"][0]["status"], 404, "{report}");
    assert_eq!(report["results"][1]["body_len"], 2, "{report}");
    assert_eq!(backend.requests().len(), 1, "only the GET reached the backend");
}

/// A gRPC route `g` to the hyper-h2 echo backend started with `options`.
fn through_grpc_route(options: Value) -> (GrpcBackend, Tollgate) {
    let backend = GrpcBackend::start_h2_echo(&options);
    let tollgate = Tollgate::start_with(&grpc_config(&[backend.addr], "", ""));
    (backend, tollgate)
}

fn grpc_call(body_size: usize) -> Value {
    json!({
        "method": "POST", "path": "/test.Echo/Any", "body_size": body_size,
        "headers": [["content-type", "application/grpc"], ["te", "trailers"]],
    })
}

fn header<'a>(result: &'a Value, name: &str) -> Option<&'a str> {
    result["headers"].as_array()?.iter().find(|p| p[0] == name).and_then(|p| p[1].as_str())
}

#[test]
fn padded_data_from_a_grpc_backend_is_read_whole_and_its_padding_credited_back() {
    // 4,096 frames of 512 bytes each with 255 bytes of padding: ~1 MiB of
    // padding, which our client must hand back as window like data.
    let (_backend, tollgate) = through_grpc_route(json!({"pad": 255, "chunk": 512}));
    let size = 2 * 1024 * 1024;
    let report = h2_client(&tollgate, json!({"requests": [grpc_call(size)]}));
    let result = &report["results"][0];
    assert_eq!(result["status"], 200, "{report}");
    assert_eq!(header(result, "x-body-len"), Some(size.to_string().as_str()), "{report}");
    assert_eq!(result["body_len"], size);
    assert_eq!(result["body_sha256"], result["sent_sha256"]);
    let trailers = result["trailers"].to_string();
    assert!(trailers.contains("[\"grpc-status\",\"0\"]") && trailers.contains(&size.to_string()), "{report}");
}

#[test]
fn a_grpc_backend_that_opens_with_a_zero_window_gets_the_request_once_it_raises_it() {
    let (_backend, tollgate) = through_grpc_route(json!({"initial_window_size": 0, "raise_window_after_ms": 300}));
    let size = 200_000;
    let report = h2_client(&tollgate, json!({"requests": [grpc_call(size), grpc_call(10)]}));
    for (result, len) in report["results"].as_array().unwrap().iter().zip([size, 10]) {
        assert_eq!(result["status"], 200, "{report}");
        assert_eq!(header(result, "x-data-before-raise"), Some("0"), "DATA sent into a zero window: {report}");
        assert_eq!(header(result, "x-body-len"), Some(len.to_string().as_str()), "{report}");
        assert_eq!(result["body_sha256"], result["sent_sha256"]);
    }
}

#[test]
fn a_grpc_response_head_over_our_limit_fails_the_call_with_a_status_not_a_hang() {
    // 20,000 bytes of one field: past the 16 KiB header list we announce.
    let (_backend, tollgate) = through_grpc_route(json!({"big_header": 20_000}));
    let report = h2_client(&tollgate, json!({"requests": [grpc_call(10)]}));
    let result = &report["results"][0];
    let status = header(result, "grpc-status")
        .or_else(|| result["trailers"].as_array()?.iter().find(|p| p[0] == "grpc-status")?[1].as_str());
    assert!(status.is_some_and(|s| s != "0"), "{report}");
    assert_eq!(result["body_len"], 0, "{report}");
}

#[test]
fn a_grpc_backend_that_shrinks_its_hpack_table_decodes_every_call() {
    // Found by this suite: our encoder never indexes, but a peer that lowers
    // SETTINGS_HEADER_TABLE_SIZE must still be told so (RFC 7541 §4.2), or
    // hyper-h2 refuses the next header block.
    let (_backend, tollgate) = through_grpc_route(json!({"header_table_size": 0}));
    let report = h2_client(&tollgate, json!({"requests": [grpc_call(10), grpc_call(20)], "after": [grpc_call(30)]}));
    for (result, len) in report["results"].as_array().unwrap().iter().zip([10, 20, 30]) {
        assert_eq!(result["status"], 200, "{report}");
        assert_eq!(header(result, "x-body-len"), Some(len.to_string().as_str()), "{report}");
    }
}

#[test]
fn a_grpc_backends_reset_before_answering_maps_to_the_grpc_status_for_its_code() {
    // gRPC's HTTP/2 mapping (PROTOCOL-HTTP2.md, "Errors").
    let cases = [("Refused", 7, "14"), ("Cancel", 8, "1"), ("Calm", 11, "8"), ("Internal", 2, "13")];
    let reset_paths: serde_json::Map<String, Value> =
        cases.iter().map(|(name, code, _)| (format!("/test.Echo/{name}"), json!(code))).collect();
    let (_backend, tollgate) = through_grpc_route(json!({"reset_paths": reset_paths}));
    let calls: Vec<Value> = cases
        .iter()
        .map(|(name, _, _)| {
            let mut call = grpc_call(10);
            call["path"] = json!(format!("/test.Echo/{name}"));
            call
        })
        .collect();
    let report = h2_client(&tollgate, json!({"requests": calls, "after": [grpc_call(10)]}));
    let results = report["results"].as_array().unwrap();
    for ((name, _, status), result) in cases.iter().zip(results) {
        assert_eq!(header(result, "grpc-status"), Some(*status), "{name}: {report}");
    }
    // The connection to the backend and the client's connection go on.
    assert_eq!(header(&results[4], "x-body-len"), Some("10"), "{report}");
}

#[test]
fn a_call_the_backend_refused_unprocessed_is_sent_again_and_succeeds() {
    // RFC 9113 §8.7: a refused stream (REFUSED_STREAM, or above a GOAWAY's
    // last stream) was not processed, so it may be retried; gRPC calls this
    // a transparent retry. The whole request is still at hand for a unary call.
    for options in [json!({"refuse_first": 2}), json!({"goaway_first": true})] {
        let (_backend, tollgate) = through_grpc_route(options.clone());
        let report = h2_client(&tollgate, json!({"requests": [grpc_call(100)]}));
        let result = &report["results"][0];
        assert_eq!(result["status"], 200, "{options}: {report}");
        assert_eq!(header(result, "x-body-len"), Some("100"), "{options}: {report}");
        let trailers = result["trailers"].as_array().unwrap();
        assert!(trailers.iter().any(|p| p[0] == "grpc-status" && p[1] == "0"), "{options}: {report}");
    }
}

#[test]
fn response_fields_a_grpc_backend_indexed_decode_right_through_evictions() {
    // The backend's HPACK encoder indexes every response field; 120 distinct
    // 300-byte values cycle through its 4,096-byte table.
    let (_backend, tollgate) = through_grpc_route(json!({}));
    let value = |i: usize| format!("{}-{i}", "v".repeat(300));
    let call = |i: usize| {
        let mut call = grpc_call(5);
        call["headers"].as_array_mut().unwrap().push(json!(["x-id", value(i)]));
        call
    };
    let report = h2_client(
        &tollgate,
        json!({"requests": (0..60).map(call).collect::<Vec<_>>(), "after": (60..120).map(call).collect::<Vec<_>>()}),
    );
    for (i, result) in report["results"].as_array().unwrap().iter().enumerate() {
        assert_eq!(header(result, "x-echo-id"), Some(value(i).as_str()), "call {i}: {report}");
    }
}

#[test]
fn calls_past_a_grpc_backends_stream_limit_wait_their_turn_and_all_succeed() {
    // The backend takes one stream at a time per connection and holds each
    // answer 50 ms: the other calls wait inside Tollgate, never opened
    // past the limit (which hyper-h2 would refuse).
    let (_backend, tollgate) = through_grpc_route(json!({"max_concurrent_streams": 1, "hold_ms": 50}));
    let calls: Vec<Value> = (0..12).map(|i| grpc_call(100 + i)).collect();
    let report = h2_client(&tollgate, json!({"requests": calls}));
    for (i, result) in report["results"].as_array().unwrap().iter().enumerate() {
        assert_eq!(result["status"], 200, "{report}");
        assert_eq!(header(result, "x-body-len"), Some((100 + i).to_string().as_str()), "{report}");
        assert_eq!(header(result, "x-concurrent"), Some("1"), "{report}");
    }
}

#[test]
fn field_values_with_line_breaks_or_edge_whitespace_are_refused_before_any_backend() {
    // RFC 9113 §8.2.1. An HTTP/1.1 backend would read a CR LF in a value as
    // the start of another field, and trim whitespace this hop would keep.
    let backend = reporting_backend();
    let tollgate = start_proxy(backend.addr, "", "", "");
    let values = ["a\r\nx-injected: 1", "a\nx-injected: 1", "a\u{0}b", " padded", "padded\t"];
    let mut requests: Vec<Value> =
        values.iter().map(|v| json!({"path": "/echo-id", "headers": [["x-id", v]]})).collect();
    requests.push(json!({"path": "/echo-id", "headers": [["x-id", "inner space\tand tab"]]}));
    let report = h2_client(&tollgate, json!({"unchecked_headers": true, "requests": requests}));
    let results = report["results"].as_array().unwrap();
    for (result, value) in results.iter().zip(values) {
        assert_eq!(result["reset"], 1, "PROTOCOL_ERROR for {value:?}: {report}");
    }
    assert_eq!(results[5]["status"], 200, "{report}");
    assert_eq!(results[5]["body_text"], "inner space\tand tab", "{report}");
    assert_eq!(report["closed"], Value::Null, "the connection outlives a few malformed streams: {report}");
}

#[test]
fn a_host_field_naming_another_server_than_the_authority_is_refused() {
    // RFC 9113 §8.3.1: a `host` beside an `:authority` that names another
    // server makes the request malformed; the same server in other letters,
    // or with its scheme's default port spelled out, does not.
    let backend = reporting_backend();
    let tollgate = start_proxy(backend.addr, "", "", "");
    let authority = tollgate.addr.to_string();
    let with_host = |host: &str| json!({"path": "/echo-id", "headers": [["x-id", host], ["host", host]]});
    let refused =
        ["other.example".to_string(), "127.0.0.1".to_string(), format!("127.0.0.1:{}", tollgate.addr.port() + 1)];
    let mut requests: Vec<Value> = refused.iter().map(|h| with_host(h)).collect();
    requests.push(with_host(&authority));
    requests.push(json!({"path": "/echo-id", "authority": "app.example", "headers": [["x-id", "ok"], ["host", "APP.example:80"]]}));
    requests.push(json!({"path": "/echo-id", "headers": [["x-id", "empty"], ["host", ""]]}));
    let report = h2_client(&tollgate, json!({"unchecked_headers": true, "requests": requests}));
    let results = report["results"].as_array().unwrap();
    for (result, host) in results.iter().zip(&refused) {
        assert_eq!(result["reset"], 1, "PROTOCOL_ERROR for host {host:?}: {report}");
    }
    assert_eq!(results[3]["status"], 200, "{report}");
    assert_eq!(results[4]["status"], 200, "{report}");
    assert_eq!(results[5]["reset"], 1, "an empty host names no server: {report}");
    // The requests share one connection concurrently: they reach the backend in any order.
    let mut seen: Vec<String> =
        backend.requests().iter().map(|r| r.headers["x-id"].to_str().unwrap().to_string()).collect();
    seen.sort();
    let mut expected = [authority.clone(), "ok".to_string()];
    expected.sort();
    assert_eq!(seen, expected, "only the consistent requests reached the backend");
}

#[test]
fn a_flood_of_empty_data_frames_ends_the_connection_and_a_few_are_harmless() {
    // CVE-2019-9518: frames that carry nothing cost the server work and move nothing.
    let backend = reporting_backend();
    let tollgate = start_proxy(backend.addr, "", "", "");
    let upload = |empty: u32| json!({"method": "POST", "path": "/up", "body_size": 1000, "empty_frames": empty});
    let report = h2_client(&tollgate, json!({"requests": [upload(20)]}));
    assert_eq!(report["results"][0]["status"], 200, "{report}");
    assert_eq!(backend_report(&report["results"][0])["len"], 1000, "{report}");
    let report = h2_client(&tollgate, json!({"requests": [upload(10_000)]}));
    assert_eq!(report["closed"], 11, "GOAWAY with ENHANCE_YOUR_CALM: {report}");
}
