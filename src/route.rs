//! Route matching and path rewriting.
//!
//! Precedence (routes are sorted once at config load, then the first match
//! wins, so a request's route never depends on file order unless two routes
//! are equally specific):
//! 1. host: exact host before `*.suffix` (longer suffix first) before no host;
//! 2. path: exact path before prefix (longer prefix first) before regex before no path;
//! 3. routes with a method condition before those without;
//! 4. more header conditions before fewer;
//! 5. file order.

use http::Request;
use http::uri::PathAndQuery;

use crate::config::{HostMatch, PathMatch, RouteConfig, RouteMatch};

/// Sorts routes into match order (stable, so ties keep file order).
pub fn sort_by_precedence(routes: &mut [RouteConfig]) {
    routes.sort_by_key(|r| precedence_key(&r.matcher));
}

fn precedence_key(
    m: &RouteMatch,
) -> (u8, std::cmp::Reverse<usize>, u8, std::cmp::Reverse<usize>, u8, std::cmp::Reverse<usize>) {
    let (host_rank, host_len) = match &m.host {
        Some(HostMatch::Exact(h)) => (0, h.len()),
        Some(HostMatch::Suffix(s)) => (1, s.len()),
        None => (2, 0),
    };
    let (path_rank, path_len) = match &m.path {
        Some(PathMatch::Exact(p)) => (0, p.len()),
        Some(PathMatch::Prefix(p)) => (1, p.len()),
        Some(PathMatch::Regex(_)) => (2, 0),
        None => (3, 0),
    };
    let method_rank = if m.methods.is_empty() { 1 } else { 0 };
    (
        host_rank,
        std::cmp::Reverse(host_len),
        path_rank,
        std::cmp::Reverse(path_len),
        method_rank,
        std::cmp::Reverse(m.headers.len()),
    )
}

/// The host a request is for, lowercase and without the port: the URI
/// authority (HTTP/2 `:authority`, absolute-form) or else the `Host` header.
pub fn request_host<B>(req: &Request<B>) -> Option<&str> {
    let raw = match req.uri().authority() {
        Some(a) => a.as_str(),
        None => req.headers().get(http::header::HOST)?.to_str().ok()?,
    };
    Some(strip_port(raw))
}

fn strip_port(host: &str) -> &str {
    // The host part ends before an ASCII `:` (or at the end): a char boundary.
    &host[..crate::http1::fields::split_port(host.as_bytes()).0.len()]
}

/// True when the request satisfies every condition of `m`.
pub fn matches<B>(m: &RouteMatch, req: &Request<B>) -> bool {
    if let Some(host_match) = &m.host {
        let Some(host) = request_host(req) else {
            return false;
        };
        let ok = match host_match {
            HostMatch::Exact(h) => host.eq_ignore_ascii_case(h),
            HostMatch::Suffix(s) => {
                host.len() > s.len()
                    && host.get(host.len() - s.len()..).is_some_and(|tail| tail.eq_ignore_ascii_case(s))
            }
        };
        if !ok {
            return false;
        }
    }
    if let Some(path_match) = &m.path {
        let path = req.uri().path();
        let ok = match path_match {
            PathMatch::Exact(p) => path == p,
            PathMatch::Prefix(p) => path.starts_with(p.as_str()),
            PathMatch::Regex(re) => re.is_match(path),
        };
        if !ok {
            return false;
        }
    }
    if !m.methods.is_empty() && !m.methods.contains(req.method()) {
        return false;
    }
    m.headers.iter().all(|(name, value)| req.headers().get_all(name).iter().any(|v| v == value))
}

/// The path-and-query to send upstream after `strip_prefix` / `rewrite`.
pub fn rewrite_path(route: &RouteConfig, original: &PathAndQuery) -> PathAndQuery {
    let path = original.path();
    let new_path = match (&route.matcher.path, &route.rewrite, route.strip_prefix) {
        (Some(PathMatch::Prefix(prefix)), None, true) => {
            let rest = &path[prefix.len().min(path.len())..];
            if rest.starts_with('/') { rest.to_string() } else { format!("/{rest}") }
        }
        (Some(PathMatch::Prefix(prefix)), Some(to), _) => {
            format!("{to}{}", &path[prefix.len().min(path.len())..])
        }
        (Some(PathMatch::Exact(_)), Some(to), _) => to.clone(),
        (Some(PathMatch::Regex(re)), Some(to), _) => re.replace(path, to.as_str()).into_owned(),
        _ => return original.clone(),
    };
    let joined = match original.query() {
        Some(q) => format!("{new_path}?{q}"),
        None => new_path,
    };
    PathAndQuery::try_from(joined).unwrap_or_else(|_| original.clone())
}

/// A route proxying to upstream `u` with `matcher` and every other key at
/// its default, for unit tests.
#[cfg(test)]
pub(crate) fn test_route(name: &str, matcher: RouteMatch) -> RouteConfig {
    RouteConfig {
        name: name.into(),
        matcher,
        action: crate::config::RouteAction::Proxy { upstream: "u".into() },
        strip_prefix: false,
        rewrite: None,
        preserve_host: true,
        forward_headers: crate::config::ForwardHeaders::ALL,
        request_id_header: true,
        grpc_json: None,
        max_body_bytes: None,
        policies: Vec::new(),
        websocket: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str, matcher: RouteMatch) -> RouteConfig {
        test_route(name, matcher)
    }

    fn req(host: &str, path: &str) -> Request<()> {
        Request::builder().uri(path).header("host", host).body(()).unwrap()
    }

    fn first_match<'a>(routes: &'a [RouteConfig], r: &Request<()>) -> Option<&'a str> {
        routes.iter().find(|route| matches(&route.matcher, r)).map(|route| route.name.as_str())
    }

    #[test]
    fn more_specific_routes_win_regardless_of_file_order() {
        let mut routes = vec![
            route("any", RouteMatch::default()),
            route("prefix", RouteMatch { path: Some(PathMatch::Prefix("/api/".into())), ..Default::default() }),
            route(
                "longer-prefix",
                RouteMatch { path: Some(PathMatch::Prefix("/api/v2/".into())), ..Default::default() },
            ),
            route("exact", RouteMatch { path: Some(PathMatch::Exact("/api/health".into())), ..Default::default() }),
            route(
                "wildcard-host",
                RouteMatch { host: Some(HostMatch::Suffix(".example.com".into())), ..Default::default() },
            ),
            route(
                "exact-host",
                RouteMatch { host: Some(HostMatch::Exact("api.example.com".into())), ..Default::default() },
            ),
        ];
        sort_by_precedence(&mut routes);
        assert_eq!(first_match(&routes, &req("other", "/api/health")), Some("exact"));
        assert_eq!(first_match(&routes, &req("other", "/api/v2/x")), Some("longer-prefix"));
        assert_eq!(first_match(&routes, &req("other", "/api/x")), Some("prefix"));
        assert_eq!(first_match(&routes, &req("other", "/x")), Some("any"));
        assert_eq!(first_match(&routes, &req("API.example.com:8080", "/api/x")), Some("exact-host"));
        assert_eq!(first_match(&routes, &req("www.example.com", "/api/x")), Some("wildcard-host"));
    }

    #[test]
    fn the_port_is_stripped_from_names_and_address_literals() {
        for (raw, host) in [("a.test:8080", "a.test"), ("a.test", "a.test"), ("[::1]:443", "[::1]"), ("[::1]", "[::1]")]
        {
            assert_eq!(strip_port(raw), host);
        }
    }

    #[test]
    fn wildcard_host_does_not_match_the_apex() {
        let m = RouteMatch { host: Some(HostMatch::Suffix(".example.com".into())), ..Default::default() };
        assert!(matches(&m, &req("a.b.example.com", "/")));
        assert!(!matches(&m, &req("example.com", "/")));
        assert!(!matches(&m, &req("badexample.com", "/")));
    }

    #[test]
    fn regex_matches_the_whole_path() {
        let re = regex::Regex::new("^(?:/users/[0-9]+)$").unwrap();
        let m = RouteMatch { path: Some(PathMatch::Regex(re)), ..Default::default() };
        assert!(matches(&m, &req("h", "/users/42")));
        assert!(!matches(&m, &req("h", "/users/42/x")));
    }

    #[test]
    fn method_and_header_conditions_must_all_hold() {
        let m = RouteMatch {
            methods: vec![http::Method::POST],
            headers: vec![(http::HeaderName::from_static("x-env"), http::HeaderValue::from_static("canary"))],
            ..Default::default()
        };
        let mut r = Request::builder().method("POST").uri("/").header("x-env", "canary").body(()).unwrap();
        assert!(matches(&m, &r));
        *r.method_mut() = http::Method::GET;
        assert!(!matches(&m, &r));
    }

    #[test]
    fn strip_prefix_and_rewrite_keep_the_query() {
        let mut r = route("p", RouteMatch { path: Some(PathMatch::Prefix("/api".into())), ..Default::default() });
        r.strip_prefix = true;
        assert_eq!(rewrite_path(&r, &"/api/users?x=1".parse().unwrap()), "/users?x=1");
        assert_eq!(rewrite_path(&r, &"/api".parse().unwrap()), "/");
        r.strip_prefix = false;
        r.rewrite = Some("/v2".into());
        assert_eq!(rewrite_path(&r, &"/api/users?x=1".parse().unwrap()), "/v2/users?x=1");
        let re = regex::Regex::new("^(?:/u/([0-9]+))$").unwrap();
        let mut r = route("r", RouteMatch { path: Some(PathMatch::Regex(re)), ..Default::default() });
        r.rewrite = Some("/users/$1/profile".into());
        assert_eq!(rewrite_path(&r, &"/u/7?a=b".parse().unwrap()), "/users/7/profile?a=b");
    }
}
