//! HTTP/3 from a real browser: headless Chromium, forced onto QUIC for the
//! origin `https://localhost:PORT` (a TLS listener with `http3 = true`),
//! loads a page that Tollgate fetches from an HTTP/1.1 backend, and the page
//! calls gRPC-Web (`@connectrpc/connect-web`, same origin) that Tollgate
//! sends to a `grpcio` backend. Chromium trusts the test certificate by its
//! public key and has no TCP to fall back to, so every request is HTTP/3 or
//! fails. The page and the driver are tests/peers/node/browser/h3_page.js and
//! tests/peers/node/h3_browser.mjs (bundled with esbuild on every run).

mod common;
mod grpc_support;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::browser_kit;
use common::transport::{free_addr, write_cert};
use common::*;
use grpc_support::*;
use serde_json::{Value, json};

/// An HTTP/1.1 backend serving the files of `dir` (`/` is `index.html`).
fn page_backend(dir: PathBuf) -> Backend {
    let dir = Arc::new(dir);
    Backend::start(move |req| {
        let dir = Arc::clone(&dir);
        async move {
            let name = match req.uri().path() {
                "/" => "index.html",
                path => path.trim_start_matches('/'),
            };
            let content_type = match name.rsplit_once('.') {
                Some((_, "html")) => "text/html; charset=utf-8",
                Some((_, "js")) => "text/javascript",
                _ => "application/octet-stream",
            };
            let file = (!name.contains('/')).then(|| std::fs::read(dir.join(name)).ok()).flatten();
            let response = hyper::Response::builder();
            match file {
                Some(bytes) => response.header("content-type", content_type).body(full(bytes)).unwrap(),
                None => response.status(404).body(full("not found")).unwrap(),
            }
        }
    })
}

/// Runs the browser driver: bundles the page into `site`, opens `url` in
/// Chromium forced onto QUIC for its origin, trusting `cert`, and runs the
/// page's calls; Chromium's NetLog goes to `netlog`.
fn browser_over_quic(site: &Path, cert: &Path, url: &str, netlog: &Path) -> Value {
    browser_kit::run_driver(
        "h3_browser.mjs",
        &[site.as_os_str(), cert.as_os_str(), OsStr::new(url), netlog.as_os_str()],
    )
}

/// Access-log lines (`target: access`) of listener `web`.
fn access_lines(tollgate: &Tollgate) -> Vec<String> {
    let log = tollgate.log();
    log.lines().filter(|l| l.contains(" access: ") && l.contains("listener=web ")).map(str::to_string).collect()
}

#[test]
fn chromium_forced_onto_quic_loads_a_page_and_calls_grpc_web_all_over_http3() {
    let grpc = GrpcBackend::start("b1");
    let site = tempfile::tempdir().unwrap();
    let pages = page_backend(site.path().to_path_buf());
    let keys = tempfile::tempdir().unwrap();
    let cert = write_cert(keys.path(), "localhost", "localhost", &["localhost"]);
    let addr = free_addr();
    let config = format!(
        "[[listener]]\nname = \"web\"\nbind = \"{addr}\"\ntls = {{ cert = \"{cert}\", key = \"{key}\" }}\nhttp3 = true\n\n\
         [[upstream]]\nname = \"pages\"\nprotocol = \"http1\"\ntargets = [\"{pages}\"]\n\n\
         [[route]]\nname = \"pages\"\nmatch = {{ path_prefix = \"/\" }}\nupstream = \"pages\"\n\n{grpc}",
        cert = cert.cert.display(),
        key = cert.key.display(),
        pages = pages.addr,
        grpc = grpc_config(&[grpc.addr], "", ""),
    );
    let tollgate = Tollgate::start(&config, addr);
    assert!(tollgate.wait_for_log("listening for HTTP/3", Duration::from_secs(10)), "{}", tollgate.log());

    let url = format!("https://localhost:{}/", addr.port());
    let out = browser_over_quic(site.path(), &cert.cert, &url, &keys.path().join("netlog.json"));
    // Access lines are written when a response body ends: wait for all five.
    let deadline = Instant::now() + Duration::from_secs(5);
    while access_lines(&tollgate).len() < 5 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = tollgate.log();
    let context = format!("{out:#}\n{log}");
    if !out["error"].is_null() {
        // Keep Chromium's whole NetLog for whoever investigates (chrome://net-export/ reads it).
        let kept = std::env::temp_dir().join(format!("tollgate-http3-browser-{}.netlog.json", std::process::id()));
        let _ = std::fs::copy(keys.path().join("netlog.json"), &kept);
        panic!("the page failed (why: `netlog` below; whole NetLog in {}): {context}", kept.display());
    }

    // Chromium's side: one QUIC (RFC 9000) session, the certificate checked
    // and accepted for localhost, and never a TCP connection to the origin.
    let netlog = &out["netlog"];
    assert!(netlog["quic_sessions"].as_u64().is_some_and(|n| n >= 1), "{context}");
    assert_eq!(netlog["versions"], json!(["RFCv1"]), "{context}");
    assert_eq!(netlog["certificates"], json!([["localhost"]]), "{context}");
    let tcp = netlog["tcp_connects"].as_array().unwrap().iter().filter_map(Value::as_str);
    assert_eq!(tcp.filter(|a| a.ends_with(&format!(":{}", addr.port()))).count(), 0, "{context}");

    // The page and everything it fetched came over HTTP/3, by resource timing...
    assert_eq!(out["navigation"]["name"], url.as_str(), "{context}");
    assert_eq!(out["navigation"]["nextHopProtocol"], "h3", "{context}");
    let resources = out["resources"].as_array().unwrap();
    let names: Vec<&str> = resources.iter().filter_map(|r| r["name"].as_str()).collect();
    for path in ["h3_page.js", "test.Echo/Proto", "test.Echo/ProtoStream", "test.Echo/Fail"] {
        assert!(names.contains(&format!("{url}{path}").as_str()), "no resource entry for {path}: {context}");
    }
    assert!(resources.iter().all(|r| r["nextHopProtocol"] == "h3"), "{context}");
    // ...and by what the network stack reported for each response.
    let responses = out["responses"].as_array().unwrap();
    assert_eq!(responses.len(), 5, "{context}");
    assert!(responses.iter().all(|r| r["protocol"] == "h3" && r["status"] == 200), "{context}");

    // Unary: the reply, the head (Tollgate's Via names the HTTP/3 hop) and the OK trailer.
    let unary = &out["result"]["unary"];
    assert_eq!(unary["text"], "echo:over quic", "{context}");
    assert_eq!(unary["headers"]["content-type"], "application/grpc-web", "{context}");
    assert_eq!(unary["headers"]["via"], "3 tollgate", "{context}");
    assert_eq!(unary["trailers"]["grpc-status"], "0", "{context}");
    // Server streaming: every message in order, each as it was sent (the
    // backend spaces them 300 ms apart), then the OK trailer.
    let stream = &out["result"]["stream"];
    assert_eq!(stream["messages"], json!(["0:h3", "1:h3", "2:h3"]), "{context}");
    assert_eq!(stream["trailers"]["grpc-status"], "0", "{context}");
    let arrivals: Vec<f64> = stream["arrivals_ms"].as_array().unwrap().iter().filter_map(Value::as_f64).collect();
    assert!(arrivals.len() == 3 && arrivals[2] - arrivals[0] >= 400.0, "streamed, not buffered: {context}");
    // The backend's error in the trailer frame: FAILED_PRECONDITION (9), its
    // grpc-message, and the google.rpc.Status message connect-web decodes.
    let fail = &out["result"]["fail"];
    assert_eq!(fail["code"], 9, "{context}");
    assert_eq!(fail["message"], "oops", "{context}");
    assert_eq!(fail["metadata"]["grpc-status"], "9", "{context}");
    assert_eq!(fail["metadata"]["grpc-message"], "precondition failed: 100%25 broken", "{context}");

    // Tollgate's side: exactly these five requests, each one HTTP/3, complete.
    let lines = access_lines(&tollgate);
    assert_eq!(lines.len(), 5, "{context}");
    for (method, path, route) in [
        ("GET", "/", "pages"),
        ("GET", "/h3_page.js", "pages"),
        ("POST", "/test.Echo/Proto", "grpc"),
        ("POST", "/test.Echo/ProtoStream", "grpc"),
        ("POST", "/test.Echo/Fail", "grpc"),
    ] {
        let needle = format!("protocol=\"HTTP/3\" method={method} path={path} route={route} ");
        let line = lines.iter().find(|l| l.contains(&needle));
        assert!(line.is_some_and(|l| l.contains("status=200") && l.contains("completed=true")), "{needle}: {log}");
    }
    // The unary call the page made is the one Tollgate logged as HTTP/3.
    let request_id = unary["headers"]["x-request-id"].as_str().unwrap_or("missing");
    let logged = lines.iter().find(|l| l.contains(&format!("request_id=\"{request_id}\"")));
    assert!(logged.is_some_and(|l| l.contains("path=/test.Echo/Proto ")), "{request_id}: {log}");

    // The HTTP/1.1 backend got both page requests, marked as having come in over HTTP/3 and TLS.
    let seen = pages.requests();
    assert_eq!(seen.iter().map(|r| r.uri.as_str()).collect::<Vec<_>>(), ["/", "/h3_page.js"], "{context}");
    for request in &seen {
        assert_eq!(request.headers.get("via").and_then(|v| v.to_str().ok()), Some("3 tollgate"), "{context}");
        assert_eq!(request.headers.get("x-forwarded-proto").and_then(|v| v.to_str().ok()), Some("https"));
    }
}
