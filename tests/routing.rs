//! Route matching (host, path, method, headers), the documented precedence,
//! path rewriting and the no-route answer — each scenario run over HTTP/1.1
//! and h2c with curl against the real binary.

mod common;

use common::core_kit::*;
use common::*;
use http_body_util::BodyExt;
use hyper::Response;

/// A backend answering `"<label> <path-and-query>"`, so a test sees which
/// route was taken and what path the backend received. It reads the request
/// body first, as real services do (see `no_matching_route...` for why it matters).
fn labelled(label: &str) -> Backend {
    let label = label.to_string();
    Backend::start(move |req| {
        let text = format!("{label} {}", req.uri());
        async move {
            let _ = req.into_body().collect().await;
            Response::new(full(text))
        }
    })
}

/// Routes deliberately written least specific first: file order must not decide.
/// Each tuple is (route name, match table, extra route keys).
const ROUTES: &[(&str, &str, &str)] = &[
    ("catch_all", "", ""),
    ("host_wild", r#"host = "*.example.com""#, ""),
    ("host_exact", r#"host = "api.example.com""#, ""),
    ("regex", r#"path_regex = "/users/[0-9]+""#, ""),
    ("regex_api", r#"path_regex = "/api/v1/[a-z]+""#, ""),
    ("api", r#"path_prefix = "/api/""#, ""),
    ("api_canary", r#"path_prefix = "/api/", headers = { x-env = "canary" }"#, ""),
    ("api_post", r#"path_prefix = "/api/", method = ["POST", "PUT"]"#, ""),
    ("api_v2", r#"path_prefix = "/api/v2/""#, ""),
    ("health", r#"path = "/api/health""#, ""),
    ("strip", r#"path_prefix = "/strip/""#, "strip_prefix = true"),
    ("moved", r#"path_prefix = "/old/""#, r#"rewrite = "/new/""#),
    ("exact_rewrite", r#"path = "/legacy""#, r#"rewrite = "/modern/index""#),
    ("regex_rewrite", r#"path_regex = "/u/([0-9]+)""#, r#"rewrite = "/users/$1/profile""#),
];

/// One backend per route and a tollgate routing to them.
fn start_routing() -> (Tollgate, Vec<Backend>) {
    let mut config = String::new();
    let mut backends = Vec::new();
    for (name, matcher, extra) in ROUTES {
        let backend = labelled(name);
        config.push_str(&upstream_toml(&format!("up_{name}"), &[backend.addr], ""));
        config.push_str(&route_toml(name, matcher, &format!("up_{name}"), extra));
        backends.push(backend);
    }
    (Tollgate::start_with(&config), backends)
}

/// GETs (or `args`) `path` over `proto` and returns the backend's answer.
fn routed(tollgate: &Tollgate, proto: Proto, path: &str, args: &[&str]) -> String {
    let url = tollgate.url(path);
    let mut all: Vec<&str> = args.to_vec();
    all.push(&url);
    let (code, headers, body) = curl_proto(proto, &all);
    assert_eq!(code, 200, "{proto:?} {args:?} {path}: {headers}{}", String::from_utf8_lossy(&body));
    String::from_utf8(body).unwrap()
}

#[test]
fn path_exact_prefix_and_regex_routes_match_by_specificity_not_file_order() {
    let (tollgate, _backends) = start_routing();
    for proto in Proto::ALL {
        // Exact path beats every prefix that also covers it.
        assert_eq!(routed(&tollgate, proto, "/api/health", &[]), "health /api/health");
        // An exact path matches only itself.
        assert_eq!(routed(&tollgate, proto, "/api/health/x", &[]), "api /api/health/x");
        // Longer prefix beats shorter, whatever the file order.
        assert_eq!(routed(&tollgate, proto, "/api/v2/items?q=1", &[]), "api_v2 /api/v2/items?q=1");
        assert_eq!(routed(&tollgate, proto, "/api/items", &[]), "api /api/items");
        // Regex is anchored: it matches the whole path only.
        assert_eq!(routed(&tollgate, proto, "/users/42", &[]), "regex /users/42");
        assert_eq!(routed(&tollgate, proto, "/users/42/posts", &[]), "catch_all /users/42/posts");
        assert_eq!(routed(&tollgate, proto, "/users/abc", &[]), "catch_all /users/abc");
        // A prefix beats a regex when both match; a route with no path condition comes last.
        assert_eq!(routed(&tollgate, proto, "/api/v1/special", &[]), "api /api/v1/special");
        assert_eq!(routed(&tollgate, proto, "/nothing/special", &[]), "catch_all /nothing/special");
    }
}

#[test]
fn host_routes_match_exact_before_wildcard_and_wildcard_skips_the_apex() {
    let (tollgate, _backends) = start_routing();
    for proto in Proto::ALL {
        // Exact host wins over the wildcard and over any path route; case and port are ignored.
        assert_eq!(routed(&tollgate, proto, "/api/health", &["-H", "Host: api.example.com"]), "host_exact /api/health");
        assert_eq!(routed(&tollgate, proto, "/x", &["-H", "Host: API.Example.COM:8443"]), "host_exact /x");
        // Any subdomain, however deep, takes the wildcard.
        assert_eq!(routed(&tollgate, proto, "/x", &["-H", "Host: www.example.com"]), "host_wild /x");
        assert_eq!(routed(&tollgate, proto, "/x", &["-H", "Host: a.b.example.com"]), "host_wild /x");
        // The apex and look-alike domains do not.
        assert_eq!(routed(&tollgate, proto, "/x", &["-H", "Host: example.com"]), "catch_all /x");
        assert_eq!(routed(&tollgate, proto, "/x", &["-H", "Host: badexample.com"]), "catch_all /x");
    }
}

#[test]
fn method_and_header_conditions_select_routes_and_method_ranks_above_headers() {
    let (tollgate, _backends) = start_routing();
    for proto in Proto::ALL {
        assert_eq!(routed(&tollgate, proto, "/api/items", &["-X", "POST", "-d", "x"]), "api_post /api/items");
        assert_eq!(routed(&tollgate, proto, "/api/items", &["-X", "PUT", "-d", "x"]), "api_post /api/items");
        assert_eq!(routed(&tollgate, proto, "/api/items", &["-X", "DELETE"]), "api /api/items");
        assert_eq!(routed(&tollgate, proto, "/api/items", &["-H", "X-Env: canary"]), "api_canary /api/items");
        // Header values must match exactly.
        assert_eq!(routed(&tollgate, proto, "/api/items", &["-H", "X-Env: canary2"]), "api /api/items");
        // Both hold: a method condition ranks above header conditions.
        assert_eq!(
            routed(&tollgate, proto, "/api/items", &["-X", "POST", "-d", "x", "-H", "X-Env: canary"]),
            "api_post /api/items"
        );
        // A more specific path still beats a method or header condition.
        assert_eq!(routed(&tollgate, proto, "/api/v2/a", &["-X", "POST", "-d", "x"]), "api_v2 /api/v2/a");
    }
}

#[test]
fn strip_prefix_and_rewrite_change_the_forwarded_path_and_keep_the_query() {
    let (tollgate, _backends) = start_routing();
    for proto in Proto::ALL {
        assert_eq!(routed(&tollgate, proto, "/strip/a/b?x=1", &[]), "strip /a/b?x=1");
        assert_eq!(routed(&tollgate, proto, "/strip/", &[]), "strip /");
        assert_eq!(routed(&tollgate, proto, "/old/page?y=2", &[]), "moved /new/page?y=2");
        assert_eq!(routed(&tollgate, proto, "/legacy?z=3", &[]), "exact_rewrite /modern/index?z=3");
        assert_eq!(routed(&tollgate, proto, "/u/7?a=b", &[]), "regex_rewrite /users/7/profile?a=b");
    }
}

#[test]
fn no_matching_route_is_a_json_404_carrying_the_request_id() {
    let backend = Backend::fixed("never");
    let tollgate = Tollgate::start_with(&format!(
        "{}{}",
        upstream_toml("b", &[backend.addr], ""),
        route_toml("only", r#"path = "/only", method = "GET""#, "b", "")
    ));
    for proto in Proto::ALL {
        let mut cases = vec![vec![]];
        if proto == Proto::Http1 {
            // Over h2 the 404 is complete before curl sends its DATA frame, so
            // tollgate ends the stream with RST_STREAM(NO_ERROR) (RFC 9113 §8.1),
            // which Debian's curl 7.88 wrongly reports as a PROTOCOL_ERROR.
            cases.push(vec!["-X", "POST", "-d", "x"]);
        }
        for args in cases {
            let url = tollgate.url(if args.is_empty() { "/elsewhere" } else { "/only" });
            let mut all = args.clone();
            all.push(&url);
            let (code, headers, body) = curl_proto(proto, &all);
            assert_eq!(code, 404, "{proto:?} {args:?}: {headers}");
            assert_eq!(header_value(&headers, "content-type").as_deref(), Some("application/json"));
            let value = json(&body);
            assert_eq!(value["error"], "no_route", "{value}");
            let id = header_value(&headers, "x-request-id").expect("x-request-id on a 404");
            assert!(!id.is_empty());
            assert_eq!(value["request_id"], id.as_str(), "{value}");
        }
        // A client-chosen id is the one reported.
        let (code, headers, body) = curl_proto(proto, &["-H", "X-Request-Id: lost-42", &tollgate.url("/nope")]);
        assert_eq!(code, 404);
        assert_eq!(header_value(&headers, "x-request-id").as_deref(), Some("lost-42"));
        assert_eq!(json(&body)["request_id"], "lost-42");
    }
    assert!(backend.requests().is_empty(), "an unrouted request reached the backend");
}

#[test]
fn paths_are_normalized_before_routing_so_a_dot_segment_cannot_slip_past_a_routes_policy() {
    // `/admin` is closed to loopback clients; `/public` is open. Both reach one backend.
    let backend = labelled("backend");
    let tollgate = Tollgate::start_with(&format!(
        "{}{}{}\n[policy.closed]\nkind = \"ip_filter\"\ndeny = [\"127.0.0.0/8\", \"::1/128\"]\n",
        upstream_toml("b", &[backend.addr], ""),
        route_toml("admin", r#"path_prefix = "/admin""#, "b", "policies = [\"closed\"]"),
        route_toml("public", r#"path_prefix = "/public""#, "b", "")
    ));
    for proto in Proto::ALL {
        // Each would reach `/admin` at a backend that resolves dot segments or merges slashes.
        for sneaky in ["/public/../admin", "/public/%2e%2e/admin", "/public/.%2E/admin", "/public//../admin"] {
            let (code, _, body) = curl_proto(proto, &["--path-as-is", &tollgate.url(sneaky)]);
            assert_eq!(code, 403, "{proto:?} {sneaky}: {}", String::from_utf8_lossy(&body));
        }
        // The backend gets the path routing saw.
        assert_eq!(
            routed(&tollgate, proto, "/public/a/./b/../c?q=/../x", &["--path-as-is"]),
            "backend /public/a/c?q=/../x"
        );
        assert_eq!(routed(&tollgate, proto, "/public//%7euser", &["--path-as-is"]), "backend /public/~user");
        // Escapes that only a decoding backend would read as slashes cannot hide a dot segment.
        for hidden in ["/public/..%2fadmin", "/public/..%5cadmin", "/public/%zz", "/public/a.txt%00.png"] {
            let (code, _, body) = curl_proto(proto, &["--path-as-is", &tollgate.url(hidden)]);
            assert_eq!(code, 400, "{proto:?} {hidden}: {}", String::from_utf8_lossy(&body));
            assert!(String::from_utf8_lossy(&body).contains("\"error\":\"bad_request\""));
        }
    }
    assert!(backend_requests_never_named(&backend, "admin"));
}

/// True when no request the backend saw had `segment` in its path.
fn backend_requests_never_named(backend: &Backend, segment: &str) -> bool {
    backend.requests().iter().all(|r| !r.uri.to_string().contains(segment))
}
