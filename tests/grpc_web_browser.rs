//! gRPC-Web from a real browser: `@connectrpc/connect-web` in headless
//! Chromium, on a page served by one Tollgate listener, calls a `grpcio`
//! backend through the gRPC-Web route of another listener (another origin),
//! so every call goes through a real CORS preflight answered by the `cors`
//! policy. The page and the driver are tests/peers/node/browser/page.js and
//! tests/peers/node/grpc_web_browser.mjs; the driver bundles the page with
//! esbuild on every run (nothing generated is committed) and also builds the
//! shipped browser example, config/examples/grpc-web-page.

mod common;
mod grpc_support;

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::browser_kit;
use common::transport::free_addr;
use common::*;
use grpc_support::*;
use serde_json::{Value, json};

/// Runs the browser driver: bundles the page into `site`, opens each of
/// `pages` in Chromium and calls the API at `api` from it.
fn browser_calls(site: &Path, api: &str, pages: &[String]) -> Value {
    let mut args = vec![site.as_os_str(), OsStr::new(api)];
    args.extend(pages.iter().map(OsStr::new));
    browser_kit::run_driver("grpc_web_browser.mjs", &args)
}

/// Access-log lines of listener `api` for `method` on `path`.
fn api_lines(tollgate: &Tollgate, method: &str, path: &str) -> Vec<String> {
    let needle = format!("method={method} path={path} ");
    tollgate.log().lines().filter(|l| l.contains("listener=api") && l.contains(&needle)).map(str::to_string).collect()
}

#[test]
fn connect_web_in_chromium_calls_across_origins_through_cors_and_other_origins_are_refused() {
    let backend = GrpcBackend::start("b1");
    let site = tempfile::tempdir().unwrap();
    let (api, page): (SocketAddr, SocketAddr) = (free_addr(), free_addr());
    let page_origin = format!("http://{page}");
    let config = format!(
        "[[listener]]\nname = \"api\"\nbind = \"{api}\"\n\n\
         [[listener]]\nname = \"page\"\nbind = \"{page}\"\n\n\
         [[upstream]]\nname = \"down\"\nprotocol = \"grpc\"\ntargets = [\"{down}\"]\nconnect_timeout = \"1s\"\n\n\
         [[route]]\nname = \"down\"\nmatch = {{ path_prefix = \"/down.Svc/\" }}\nupstream = \"down\"\npolicies = [\"web\"]\n\n\
         [[route]]\nname = \"page\"\nmatch = {{ path_prefix = \"/\" }}\nstatic_dir = \"{site}\"\n\n\
         [policy.web]\nkind = \"cors\"\nallow_origins = [\"{page_origin}\"]\nallow_methods = [\"POST\"]\n\
         allow_headers = [\"content-type\", \"x-grpc-web\", \"x-user-agent\", \"grpc-timeout\"]\n\
         expose_headers = [\"grpc-status\", \"grpc-message\"]\n\n{grpc}",
        down = free_addr(),
        site = site.path().display(),
        grpc = grpc_config(&[backend.addr], "policies = [\"web\"]", ""),
    );
    let tollgate = Tollgate::start(&config, api);
    assert!(wait_for_port(page, Duration::from_secs(10)), "page listener: {}", tollgate.log());

    // The same page from two origins: 127.0.0.1 is allowed, localhost is not.
    let other_origin = format!("http://localhost:{}/", page.port());
    let out = browser_calls(site.path(), &tollgate.url(""), &[format!("{page_origin}/"), other_origin]);
    let log = tollgate.log();
    let allowed = &out["pages"][0]["result"];
    let context = format!("{out:#}\n{log}");

    // Unary: the reply, the response headers the page may read, and the trailers.
    assert_eq!(allowed["unary"]["text"], "echo:hello", "{context}");
    let content_type = allowed["unary"]["headers"]["content-type"].as_str().unwrap_or_default();
    assert!(content_type.starts_with("application/grpc-web"), "{context}");
    assert_eq!(allowed["unary"]["trailers"]["grpc-status"], "0", "{context}");
    // The browser filtered the head by CORS: headers Tollgate adds but the policy does not expose stay hidden.
    assert!(allowed["unary"]["headers"].get("x-request-id").is_none(), "{context}");
    // Server streaming: every message in order, then the OK trailer.
    assert_eq!(allowed["stream"]["messages"], json!(["0:s", "1:s", "2:s"]), "{context}");
    assert_eq!(allowed["stream"]["trailers"]["grpc-status"], "0", "{context}");
    // The backend's error, in the trailer frame: FAILED_PRECONDITION (9),
    // grpc-message as sent (percent-encoded), and the google.rpc.Status of
    // grpc-status-details-bin, whose message connect-web reports.
    assert_eq!(allowed["fail"]["code"], 9, "{context}");
    assert_eq!(allowed["fail"]["metadata"]["grpc-status"], "9", "{context}");
    assert_eq!(allowed["fail"]["metadata"]["grpc-message"], "precondition failed: 100%25 broken", "{context}");
    assert_eq!(allowed["fail"]["message"], "oops", "{context}");
    // Tollgate's own error, trailers-only: the status is in the response head,
    // which a page on another origin reads only through expose_headers.
    assert_eq!(allowed["down"]["code"], 14, "UNAVAILABLE: {context}");
    assert!(allowed["down"]["message"].as_str().is_some_and(|m| m.contains("unreachable")), "{context}");
    assert_eq!(allowed["down"]["metadata"]["grpc-status"], "14", "{context}");

    // Every call was cross-origin: a preflight answered by the policy, then the call.
    for path in ["/test.Echo/Proto", "/test.Echo/ProtoStream", "/test.Echo/Fail", "/down.Svc/Call"] {
        let preflights = api_lines(&tollgate, "OPTIONS", path);
        assert!(!preflights.is_empty() && preflights.iter().all(|l| l.contains("status=204")), "{path}: {log}");
        assert_eq!(api_lines(&tollgate, "POST", path).len(), 1, "{path}: {log}");
    }

    // The other origin: the preflight gets no Access-Control-Allow-Origin, so
    // Chromium refuses every call (a network error to fetch) and never sends it.
    let refused = &out["pages"][1];
    for call in ["unary", "stream", "fail", "down"] {
        assert_eq!(refused["result"][call]["code"], 2, "{call} must fail as a network error (UNKNOWN): {context}");
        assert_eq!(refused["result"][call]["message"], "Failed to fetch", "{call}: {context}");
    }
    let blocked = refused["console"].as_array().unwrap().iter().filter_map(Value::as_str);
    let blocked = blocked.filter(|m| m.contains(&format!("from origin 'http://localhost:{}'", page.port())));
    assert!(blocked.filter(|m| m.contains("blocked by CORS policy")).count() >= 4, "{context}");

    assert!(out["example_bundle_bytes"].as_u64().is_some_and(|n| n > 0), "config/examples/grpc-web-page builds");
}
