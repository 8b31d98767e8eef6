//! Proxy header semantics (RFC 9110 §7.6): hop-by-hop headers removed in both
//! directions, `X-Forwarded-*`, `Forwarded` (RFC 7239) and `Via` added, and
//! the request re-shaped for an HTTP/1.1 upstream.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, Version};

use crate::body::Body;
use crate::config::RouteConfig;
use crate::error::ProxyError;
use crate::model::{DownstreamProtocol, RequestContext};

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static FORWARDED: HeaderName = HeaderName::from_static("forwarded");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Headers that describe one hop and must not be forwarded (RFC 9110 §7.6.1).
static HOP_BY_HOP: [&HeaderName; 8] = [
    &header::CONNECTION,
    &KEEP_ALIVE,
    &PROXY_CONNECTION,
    &header::PROXY_AUTHORIZATION,
    &header::TE,
    &header::TRAILER,
    &header::TRANSFER_ENCODING,
    &header::UPGRADE,
];

/// The hop-by-hop headers an HTTP/2 message can still carry: h2 refuses a
/// message with any of the others as malformed (RFC 9113 §8.2.2), and allows
/// TE only as `trailers`.
static HOP_BY_HOP_H2: [&HeaderName; 3] = [&header::PROXY_AUTHORIZATION, &header::TE, &header::TRAILER];

/// `Via` value for each hop we received on (RFC 9110 §7.6.3: received-protocol + pseudonym).
fn via(protocol: DownstreamProtocol) -> HeaderValue {
    match protocol {
        DownstreamProtocol::Http1 => HeaderValue::from_static("1.1 tollgate"),
        DownstreamProtocol::Http2 => HeaderValue::from_static("2 tollgate"),
        DownstreamProtocol::Http3 => HeaderValue::from_static("3 tollgate"),
    }
}

/// Appends to a list header, or sets it without formatting when absent
/// (the common case: one hash lookup, no allocation).
fn append_value(headers: &mut HeaderMap, name: &HeaderName, value: HeaderValue) {
    match headers.entry(name) {
        header::Entry::Vacant(slot) => {
            slot.insert(value);
        }
        header::Entry::Occupied(mut existing) => {
            if let Some(joined) = joined(existing.get(), value.to_str().unwrap_or_default()) {
                existing.insert(joined);
            }
        }
    }
}

/// `existing, value` as one list value; `None` when it cannot be a header value.
fn joined(existing: &HeaderValue, value: &str) -> Option<HeaderValue> {
    match existing.to_str() {
        Ok(e) if !e.is_empty() => HeaderValue::try_from(format!("{e}, {value}")).ok(),
        _ => HeaderValue::try_from(value).ok(),
    }
}

/// Removes hop-by-hop headers, including any named in `Connection`.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: one pass over the names costs less than
    // nine hashed removals.
    if !headers.keys().any(|name| HOP_BY_HOP.contains(&name)) {
        return;
    }
    let mut named: Vec<HeaderName> = Vec::new();
    for connection in headers.get_all(header::CONNECTION) {
        let tokens = connection.to_str().unwrap_or("").split(',');
        named.extend(tokens.filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok()));
    }
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// [`remove_hop_by_hop`] for a header map the h2 crate decoded: three
/// lookups instead of nine, since h2 already refused the rest.
pub fn remove_hop_by_hop_h2(headers: &mut HeaderMap) {
    if !headers.keys().any(|name| HOP_BY_HOP_H2.contains(&name)) {
        return;
    }
    for name in HOP_BY_HOP_H2 {
        headers.remove(name);
    }
}

/// Turns the client's request into the one sent upstream: path rewritten,
/// hop-by-hop headers gone, forwarding headers added, HTTP/1.1 shape.
pub fn prepare_request(
    mut parts: http::request::Parts,
    body: Body,
    ctx: &RequestContext,
    route: &RouteConfig,
) -> Result<Request<Body>, ProxyError> {
    let headers = &mut parts.headers;
    // Room for the fields added below, so the map grows (and rehashes) at most once.
    headers.reserve(6);
    // HTTP/2 and HTTP/3 carry the host as `:authority`; HTTP/1.1 in `Host`.
    let authority = match parts.uri.authority() {
        Some(a) => Some(HeaderValue::from_str(a.as_str()).map_err(|_| ProxyError::BadRequest("invalid :authority"))?),
        None => None,
    };
    let host = authority.clone().or_else(|| headers.get(header::HOST).cloned());
    if ctx.protocol == DownstreamProtocol::Http2 {
        remove_hop_by_hop_h2(headers);
    } else {
        remove_hop_by_hop(headers);
    }
    // We answered `Expect: 100-continue` ourselves when we started reading the body.
    headers.remove(header::EXPECT);
    // HTTP/2 and HTTP/3 may split `cookie` into several fields (RFC 9113 §8.2.3, RFC 9114 §4.2.1).
    if ctx.protocol != DownstreamProtocol::Http1 {
        join_cookies(headers);
    }

    let connection = &ctx.connection;
    append_value(headers, &X_FORWARDED_FOR, connection.peer_ip_header.clone());
    headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(connection.scheme()));
    if let Some(h) = &host
        && let header::Entry::Vacant(slot) = headers.entry(&X_FORWARDED_HOST)
    {
        slot.insert(h.clone());
    }
    append_list(headers, &FORWARDED, forwarded_element(&connection.forwarded_for, host.as_ref()));
    append_value(headers, &header::VIA, via(ctx.protocol));

    match (route.preserve_host, authority) {
        (true, Some(h)) => {
            headers.insert(header::HOST, h);
        }
        // The client's own Host is already in place.
        (true, None) => {}
        (false, _) => {
            headers.remove(header::HOST);
        }
    }

    let path = match parts.uri.path_and_query() {
        Some(pq) => crate::route::rewrite_path(route, pq),
        None => http::uri::PathAndQuery::from_static("/"),
    };
    parts.uri = http::Uri::from(path);
    parts.version = Version::HTTP_11;
    Ok(Request::from_parts(parts, body))
}

/// Cleans a backend response for the client: hop-by-hop headers removed, `Via` added.
pub fn prepare_response<B>(response: &mut Response<B>, protocol: DownstreamProtocol) {
    let headers = response.headers_mut();
    remove_hop_by_hop(headers);
    append_value(headers, &header::VIA, via(protocol));
}

/// [`prepare_response`] for a response that came over HTTP/2 (a gRPC
/// backend's), whose headers h2 has already checked.
pub fn prepare_h2_response<B>(response: &mut Response<B>, protocol: DownstreamProtocol) {
    let headers = response.headers_mut();
    remove_hop_by_hop_h2(headers);
    append_value(headers, &header::VIA, via(protocol));
}

/// One `Forwarded` element: the connection's `for=...;proto=...` plus
/// `;host=...`, quoted when it is not a token (RFC 7239 §4, §6).
fn forwarded_element(for_and_proto: &str, host: Option<&HeaderValue>) -> String {
    let mut out = String::with_capacity(for_and_proto.len() + host.map_or(0, |h| h.len() + 10));
    out.push_str(for_and_proto);
    if let Some(h) = host.and_then(|h| h.to_str().ok()) {
        if h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-') {
            out.push_str(";host=");
            out.push_str(h);
        } else {
            // A quoted-string, escaping as it goes (no intermediate strings).
            out.push_str(";host=\"");
            for c in h.chars() {
                if c == '\\' || c == '"' {
                    out.push('\\');
                }
                out.push(c);
            }
            out.push('"');
        }
    }
    out
}

/// Appends `value` to a comma-separated list header (or creates it, taking
/// `value`'s buffer as the header's without a copy).
fn append_list(headers: &mut HeaderMap, name: &HeaderName, value: String) {
    if let Ok(v) = HeaderValue::try_from(value) {
        append_value(headers, name, v);
    }
}

/// HTTP/2 may split `cookie` into several fields; HTTP/1.1 needs one, joined
/// with "; " (RFC 9113 §8.2.3).
fn join_cookies(headers: &mut HeaderMap) {
    if headers.get_all(header::COOKIE).iter().nth(1).is_none() {
        return;
    }
    let joined: Vec<u8> =
        headers.get_all(header::COOKIE).iter().map(|v| v.as_bytes()).collect::<Vec<_>>().join(&b"; "[..]);
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_listed_headers_are_removed_with_the_fixed_set() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn headers_named_only_in_connection_go_too() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("x-hop"));
        h.insert("x-hop", HeaderValue::from_static("1"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));

        let mut untouched = HeaderMap::new();
        untouched.insert("x-hop", HeaderValue::from_static("1"));
        remove_hop_by_hop(&mut untouched);
        assert!(untouched.contains_key("x-hop"), "only a Connection header makes x-hop hop-by-hop");
    }

    #[test]
    fn the_h2_pass_removes_what_h2_lets_through() {
        let mut h = HeaderMap::new();
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::TRAILER, HeaderValue::from_static("grpc-status"));
        h.insert(header::PROXY_AUTHORIZATION, HeaderValue::from_static("Basic eDp5"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        remove_hop_by_hop_h2(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn forwarded_quotes_ipv6_and_odd_hosts() {
        use crate::model::{ConnectionInfo, ListenerInfo};
        let listener =
            std::sync::Arc::new(ListenerInfo { name: "l".into(), max_body_bytes: None, limits: Default::default() });
        let v6 =
            ConnectionInfo::new(listener.clone(), "[::1]:5000".parse().unwrap(), "[::1]:80".parse().unwrap(), None);
        assert_eq!(forwarded_element(&v6.forwarded_for, None), "for=\"[::1]\";proto=http");
        let v4 = ConnectionInfo::new(listener, "10.0.0.1:5000".parse().unwrap(), "10.0.0.2:80".parse().unwrap(), None);
        let host = HeaderValue::from_static("example.com:8080");
        assert_eq!(
            forwarded_element(&v4.forwarded_for, Some(&host)),
            "for=10.0.0.1;proto=http;host=\"example.com:8080\""
        );
        let odd = HeaderValue::from_static("a\"b\\c");
        assert_eq!(forwarded_element(&v4.forwarded_for, Some(&odd)), "for=10.0.0.1;proto=http;host=\"a\\\"b\\\\c\"");
        let plain = HeaderValue::from_static("example.com");
        assert_eq!(forwarded_element(&v4.forwarded_for, Some(&plain)), "for=10.0.0.1;proto=http;host=example.com");
    }

    #[test]
    fn list_headers_are_appended_not_replaced() {
        let mut h = HeaderMap::new();
        h.insert(&X_FORWARDED_FOR, HeaderValue::from_static("203.0.113.9"));
        append_list(&mut h, &X_FORWARDED_FOR, "127.0.0.1".to_owned());
        assert_eq!(h[&X_FORWARDED_FOR], "203.0.113.9, 127.0.0.1");
    }

    #[test]
    fn split_http2_cookies_are_joined() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1"));
        h.append(header::COOKIE, HeaderValue::from_static("b=2"));
        join_cookies(&mut h);
        assert_eq!(h.get_all(header::COOKIE).iter().count(), 1);
        assert_eq!(h[header::COOKIE], "a=1; b=2");
    }
}
