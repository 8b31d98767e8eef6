//! The access log (one line per request, text and JSON) and the process
//! lifecycle on SIGTERM: stop accepting, drain in-flight requests, exit 0,
//! and cut requests that outlast `shutdown_grace`.

mod common;

use std::collections::HashMap;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::core_kit::*;
use common::*;
use hyper::Response;

/// A backend answering paths containing `/slow` after 150 ms, others at once.
fn timed_backend() -> Backend {
    Backend::start(|req| async move {
        if req.uri().path().contains("/slow") {
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        Response::new(full(format!("answer for {}", req.uri().path())))
    })
}

/// Waits until the log holds `count` lines that `is_access` accepts, and returns them.
fn wait_for_access_lines(tollgate: &Tollgate, count: usize, is_access: impl Fn(&str) -> bool) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let lines: Vec<String> = tollgate.log().lines().filter(|l| is_access(l)).map(str::to_string).collect();
        if lines.len() >= count || Instant::now() > deadline {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `key=value` fields of a text-format line after `access: `, quotes removed.
fn text_fields(line: &str) -> HashMap<String, String> {
    let (_, fields) = line.split_once(" access: ").unwrap_or_else(|| panic!("not an access line: {line}"));
    fields
        .split_whitespace()
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
        .collect()
}

/// One request per case: (protocol, path, request id) → (status, body length).
fn make_requests(tollgate: &Tollgate, cases: &[(Proto, &str, &str)]) -> Vec<(u16, usize)> {
    cases
        .iter()
        .map(|(proto, path, id)| {
            let header = format!("X-Request-Id: {id}");
            let (code, _, body) = curl_proto(*proto, &["-H", &header, &tollgate.url(path)]);
            (code, body.len())
        })
        .collect()
}

const CASES: &[(Proto, &str, &str)] = &[
    (Proto::Http1, "/api/fast", "log-h1-fast"),
    (Proto::H2c, "/api/slow", "log-h2-slow"),
    (Proto::Http1, "/nowhere", "log-h1-404"),
];

/// One upstream `b` behind route `api` (`/api/`), and `[log]` with `format` plus `log_keys`.
fn logging_config(backend: &Backend, format: &str, log_keys: &str) -> String {
    format!(
        "{}{}[log]\nformat = \"{format}\"\nlevel = \"info\"\n{log_keys}\n",
        upstream_toml("b", &[backend.addr], ""),
        route_toml("api", r#"path_prefix = "/api/""#, "b", "")
    )
}

#[test]
fn text_access_log_has_one_line_per_request_with_its_facts() {
    let backend = timed_backend();
    let tollgate = Tollgate::start_with(&logging_config(&backend, "text", ""));
    let answers = make_requests(&tollgate, CASES);
    let lines = wait_for_access_lines(&tollgate, CASES.len(), |l| l.contains(" access: "));
    assert_eq!(lines.len(), CASES.len(), "log:\n{}", tollgate.log());
    for ((proto, path, id), (status, body_len)) in CASES.iter().zip(answers) {
        let matching: Vec<&String> = lines.iter().filter(|l| l.contains(id)).collect();
        assert_eq!(matching.len(), 1, "request {id} should have exactly one access line:\n{lines:#?}");
        let f = text_fields(matching[0]);
        assert_eq!(f["request_id"], *id);
        assert_eq!(f["path"], *path);
        assert_eq!(f["status"], status.to_string());
        assert_eq!(f["bytes"], body_len.to_string(), "bytes counts the response body: {f:?}");
        assert_eq!(f["protocol"], if *proto == Proto::H2c { "HTTP/2" } else { "HTTP/1.1" });
        let duration: f64 = f["duration_ms"].parse().unwrap();
        if status == 404 {
            assert_eq!((f["route"].as_str(), f["upstream"].as_str()), ("-", "-"));
            assert_eq!(f["error"], "no_route");
        } else {
            assert_eq!((f["route"].as_str(), f["upstream"].as_str()), ("api", "b"));
            assert_eq!(f["target"], backend.addr.to_string());
        }
        if path.contains("slow") {
            assert!(duration >= 150.0, "duration_ms {duration} shorter than the backend's delay");
        }
        assert!(duration < 5000.0, "{duration}");
    }
}

#[test]
fn json_access_log_lines_parse_and_carry_typed_fields() {
    let backend = timed_backend();
    let tollgate = Tollgate::start_with(&logging_config(&backend, "json", ""));
    let answers = make_requests(&tollgate, CASES);
    let is_access = |l: &str| serde_json::from_str::<serde_json::Value>(l).is_ok_and(|v| v["target"] == "access");
    let lines = wait_for_access_lines(&tollgate, CASES.len(), is_access);
    assert_eq!(lines.len(), CASES.len(), "log:\n{}", tollgate.log());
    // Every line the process wrote is JSON, not just the access lines.
    for line in tollgate.log().lines().filter(|l| !l.trim().is_empty()) {
        assert!(serde_json::from_str::<serde_json::Value>(line).is_ok(), "not JSON: {line}");
    }
    let records: Vec<serde_json::Value> = lines.iter().map(|l| serde_json::from_str(l).unwrap()).collect();
    for ((_, path, id), (status, body_len)) in CASES.iter().zip(answers) {
        let matching: Vec<&serde_json::Value> = records.iter().filter(|r| r["request_id"] == *id).collect();
        assert_eq!(matching.len(), 1, "{records:#?}");
        let r = matching[0];
        assert_eq!(r["level"], "INFO");
        assert_eq!(r["path"], *path);
        assert_eq!(r["status"].as_u64(), Some(u64::from(status)), "{r}");
        assert_eq!(r["bytes"].as_u64(), Some(body_len as u64), "{r}");
        let duration = r["duration_ms"].as_f64().unwrap_or_else(|| panic!("duration_ms is not a number: {r}"));
        assert!(duration >= 0.0);
        if status == 404 {
            assert_eq!((r["route"].as_str(), r["upstream"].as_str()), (Some("-"), Some("-")), "{r}");
        } else {
            assert_eq!((r["route"].as_str(), r["upstream"].as_str()), (Some("api"), Some("b")), "{r}");
        }
        if path.contains("slow") {
            assert!(duration >= 150.0, "{r}");
        }
    }
}

#[test]
fn access_log_false_writes_no_access_lines() {
    let backend = timed_backend();
    let tollgate = Tollgate::start_with(&logging_config(&backend, "text", "access_log = false"));
    let (code, _, _) = curl_full(&["-H", "X-Request-Id: not-logged", &tollgate.url("/api/x")]);
    assert_eq!(code, 200);
    std::thread::sleep(Duration::from_millis(200));
    assert!(!tollgate.log().contains(" access: "), "{}", tollgate.log());
}

/// Starts curl for `url` over `proto` on its own thread.
fn curl_in_background(proto: Proto, url: String) -> std::thread::JoinHandle<(u16, String, Vec<u8>)> {
    std::thread::spawn(move || curl_proto_unchecked(proto, &url))
}

/// curl without asserting the protocol (a cut request has no status line).
fn curl_proto_unchecked(proto: Proto, url: &str) -> (u16, String, Vec<u8>) {
    curl_full(&[proto.curl_flag(), "--max-time", "15", url])
}

/// Waits until the backend has received `n` requests.
fn wait_for_backend(backend: &Backend, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while backend.requests().len() < n {
        assert!(Instant::now() < deadline, "the backend never got the request");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits until a new TCP connection to `addr` is refused.
fn wait_until_refused(addr: std::net::SocketAddr, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

#[test]
fn sigterm_refuses_new_connections_drains_in_flight_requests_and_exits_zero() {
    let payload = pattern_bytes(100_000);
    let served = payload.clone();
    let backend = Backend::start(move |_req| {
        let body = served.clone();
        async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Response::new(full(body))
        }
    });
    for proto in Proto::ALL {
        let mut tollgate = start_proxy(backend.addr, "", "", "");
        let already_seen = backend.requests().len();
        let in_flight = curl_in_background(proto, tollgate.url("/slow-download"));
        wait_for_backend(&backend, already_seen + 1);

        let signalled = Instant::now();
        tollgate.signal("TERM");
        assert!(
            wait_until_refused(tollgate.addr, Duration::from_millis(500)),
            "{proto:?}: still accepting connections after SIGTERM"
        );

        let (code, headers, body) = in_flight.join().unwrap();
        assert_eq!(code, 200, "{proto:?}: the in-flight request was cut: {headers}\n{}", tollgate.log());
        assert!(body == payload, "{proto:?}: {} bytes of {}", body.len(), payload.len());

        let status = tollgate.wait_exit(Duration::from_secs(5)).expect("tollgate exited after draining");
        assert!(status.success(), "{proto:?}: exit status {status:?}\n{}", tollgate.log());
        let took = signalled.elapsed();
        assert!(took < Duration::from_secs(3), "{proto:?}: shutdown took {took:?}");
        let log = tollgate.log();
        assert!(log.contains("all connections drained"), "{log}");
        assert!(log.contains("path=/slow-download") && log.contains("completed=true"), "{log}");
    }
}

#[test]
fn shutdown_grace_cuts_requests_that_outlast_it() {
    let backend = Backend::start(|_req| async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        Response::new(full("too late"))
    });
    let mut tollgate = Tollgate::start_with(&format!(
        "{}{}[runtime]\nshutdown_grace = \"500ms\"\n",
        upstream_toml("b", &[backend.addr], ""),
        route_toml("all", r#"path_prefix = "/""#, "b", "")
    ));
    let in_flight = curl_in_background(Proto::Http1, tollgate.url("/very-slow"));
    wait_for_backend(&backend, 1);

    let signalled = Instant::now();
    tollgate.signal("TERM");
    let status = tollgate.wait_exit(Duration::from_secs(3)).expect("tollgate exits once the grace period is over");
    let took = signalled.elapsed();
    assert!(took >= Duration::from_millis(450), "exited before the grace period: {took:?}");
    assert!(took < Duration::from_secs(2), "grace period not enforced: {took:?}");
    assert!(status.success(), "{status:?}\n{}", tollgate.log());
    assert!(tollgate.log().contains("grace period over"), "{}", tollgate.log());

    let (code, _, body) = in_flight.join().unwrap();
    assert_ne!(code, 200, "the request outlived the grace period");
    assert!(body.is_empty() || body != b"too late");
}

#[test]
fn a_static_file_served_whole_is_logged_completed_on_every_protocol() {
    let site = tempfile::tempdir().unwrap();
    std::fs::write(site.path().join("page.bin"), vec![b'x'; 100_000]).unwrap();
    let tollgate = Tollgate::start_with(&format!(
        "[[route]]\nname = \"site\"\nmatch = {{ path_prefix = \"/\" }}\nstatic_dir = \"{}\"\n",
        site.path().display()
    ));
    for proto in Proto::ALL {
        let (code, _, body) = curl_proto(proto, &[&tollgate.url("/page.bin")]);
        assert_eq!((code, body.len()), (200, 100_000), "{proto:?}");
    }
    let lines = wait_for_access_lines(&tollgate, 2, |l| l.contains("path=/page.bin"));
    for line in &lines {
        // The file's body never says it ended; its declared length does.
        assert!(line.contains("bytes=100000") && line.contains("completed=true"), "{line}");
    }
}
