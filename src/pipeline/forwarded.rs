//! Proxy header semantics (RFC 9110 §7.6): hop-by-hop headers removed in both
//! directions, `X-Forwarded-*`, `Forwarded` (RFC 7239) and `Via` added, and
//! the request re-shaped for an HTTP/1.1 upstream.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, Version};

use crate::body::Body;
use crate::config::{ForwardHeader, RouteConfig};
use crate::error::ProxyError;
use crate::model::{ConnectionInfo, DownstreamProtocol, RequestContext};

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

/// The fields HTTP/2 forbids in a message (RFC 9113 §8.2.2; TE too, which
/// a response has no use for): h2 refuses to send a message carrying any.
static CONNECTION_SPECIFIC: [&HeaderName; 6] =
    [&header::CONNECTION, &KEEP_ALIVE, &PROXY_CONNECTION, &header::TE, &header::TRANSFER_ENCODING, &header::UPGRADE];

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
    let present = present_among(headers, &HOP_BY_HOP);
    remove_present(headers, &HOP_BY_HOP, present);
}

/// [`remove_hop_by_hop`] for a header map the h2 crate decoded: of the
/// fixed set only three can be there, since h2 already refused the rest.
pub fn remove_hop_by_hop_h2(headers: &mut HeaderMap) {
    let present = present_among(headers, &HOP_BY_HOP_H2);
    remove_present(headers, &HOP_BY_HOP_H2, present);
}

/// Removes what HTTP/2 forbids from a response about to be sent over it
/// (one the gateway made itself; proxied ones were cleaned already).
pub fn remove_connection_specific(headers: &mut HeaderMap) {
    let present = present_among(headers, &CONNECTION_SPECIFIC);
    remove_present(headers, &CONNECTION_SPECIFIC, present);
}

/// Bit `i` set when `names[i]` is in `headers`: one pass over the fields,
/// since most messages carry none and a hashed removal per name would cost more.
fn present_among(headers: &HeaderMap, names: &[&HeaderName]) -> u16 {
    headers.keys().fold(0, |found, name| match names.iter().position(|n| *n == name) {
        Some(i) => found | 1 << i,
        None => found,
    })
}

/// Removes the names of `names` that `present` marks (see [`present_among`])
/// and, when `Connection` is among them, the fields it lists.
fn remove_present(headers: &mut HeaderMap, names: &[&HeaderName], present: u16) {
    if present == 0 {
        return;
    }
    if names.first() == Some(&&header::CONNECTION) && present & 1 != 0 {
        let mut listed: Vec<HeaderName> = Vec::new();
        for connection in headers.get_all(header::CONNECTION) {
            let tokens = connection.to_str().unwrap_or("").split(',');
            listed.extend(tokens.filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok()));
        }
        // `Host` is end to end by definition (routing read it already) and
        // `X-Request-Id` is the gateway's own: a client listing either in
        // `Connection` does not get to make the backend see another host or no id.
        for name in listed.into_iter().filter(|n| *n != header::HOST && n.as_str() != "x-request-id") {
            headers.remove(name);
        }
    }
    for (i, name) in names.iter().enumerate() {
        if present & 1 << i != 0 {
            headers.remove(*name);
        }
    }
}

/// The forwarding fields a request gains on its way upstream
/// (`X-Forwarded-For`, `-Proto`, `-Host`, `Forwarded`, `Via`), kept apart
/// from its header map until the request is encoded. The HTTP/1.1 client
/// writes them straight after the map's fields ([`Forwarding::write`]),
/// which spares the common request that carries none of them five hashed
/// inserts; a field the client did send is merged into the map as before
/// and is not pending here. Small, as it travels inside the request's future.
#[derive(Debug, Clone)]
pub struct Forwarding {
    /// `None`: nothing pending (a message that needs none, or already applied).
    connection: Option<Arc<ConnectionInfo>>,
    protocol: DownstreamProtocol,
    host: Option<HeaderValue>,
    /// Bit `i` set: [`FORWARDING_NAMES`]`[i]` is still to be added.
    pending: u8,
    /// The client sent `TE: trailers`: the HTTP/1.1 request says so too, so
    /// that the backend sends the trailers we pass on (a backend such as
    /// hyper drops them from a chunked response otherwise).
    accepts_trailers: bool,
}

/// The names of [`Forwarding`]'s fields, in the order they are written:
/// that of [`ForwardHeader::ALL`], so that a route's set masks them.
static FORWARDING_NAMES: [&HeaderName; 5] =
    [&X_FORWARDED_FOR, &X_FORWARDED_PROTO, &X_FORWARDED_HOST, &FORWARDED, &header::VIA];
const XFF: usize = 0;
const XFP: usize = 1;
const XFH: usize = 2;
const FWD: usize = 3;
const VIA: usize = 4;

/// Nothing to add.
impl Default for Forwarding {
    fn default() -> Self {
        Self { connection: None, protocol: DownstreamProtocol::Http1, host: None, pending: 0, accepts_trailers: false }
    }
}

impl Forwarding {
    fn is_pending(&self, field: usize) -> bool {
        self.pending & (1 << field) != 0
    }

    /// The value of pending field `field`, made as a header value.
    fn value(&self, field: usize) -> Option<HeaderValue> {
        if self.is_pending(field) { self.make(field) } else { None }
    }

    /// The value field `field` has for this request, pending or not.
    fn make(&self, field: usize) -> Option<HeaderValue> {
        let connection = self.connection.as_ref()?;
        match field {
            XFF => Some(connection.peer_ip_header.clone()),
            XFP => Some(HeaderValue::from_static(connection.scheme())),
            XFH => self.host.clone(),
            FWD => {
                if let Some(element) = self.cached_forwarded() {
                    return Some(element.clone());
                }
                let mut element = Vec::new();
                write_forwarded_element(&mut element, &connection.forwarded_for, self.host.as_ref());
                let element = HeaderValue::from_maybe_shared(Bytes::from(element)).ok()?;
                if let Some(host) = &self.host {
                    // The connection's first host: kept for the requests after this one.
                    let _ = connection.forwarded_cache.set((host.clone(), element.clone()));
                }
                Some(element)
            }
            VIA => Some(via(self.protocol)),
            _ => None,
        }
    }

    /// The `Forwarded` element made earlier on this connection, if it was for this host.
    fn cached_forwarded(&self) -> Option<&HeaderValue> {
        let (cached_host, element) = self.connection.as_ref()?.forwarded_cache.get()?;
        (Some(cached_host) == self.host.as_ref()).then_some(element)
    }

    /// The value `name` will have when added, if it is one of the pending fields.
    pub fn get(&self, name: &HeaderName) -> Option<HeaderValue> {
        self.value(FORWARDING_NAMES.iter().position(|n| *n == name)?)
    }

    /// Writes the pending fields as HTTP/1.1 field lines.
    pub fn write(&self, wire: &mut Vec<u8>) {
        if self.accepts_trailers {
            // A TE sender names it as a connection option (RFC 9110 §10.1.4).
            wire.extend_from_slice(b"te: trailers\r\nconnection: te\r\n");
        }
        let Some(connection) = &self.connection else { return };
        for (field, name) in FORWARDING_NAMES.iter().enumerate() {
            if !self.is_pending(field) || (field == XFH && self.host.is_none()) {
                continue;
            }
            wire.extend_from_slice(name.as_str().as_bytes());
            wire.extend_from_slice(b": ");
            match field {
                XFF => wire.extend_from_slice(connection.peer_ip_header.as_bytes()),
                XFP => wire.extend_from_slice(connection.scheme().as_bytes()),
                XFH => wire.extend_from_slice(self.host.as_ref().map_or(&b""[..], HeaderValue::as_bytes)),
                // Borrowed from the connection's cache; made (and cached) on a miss.
                FWD => match self.cached_forwarded() {
                    Some(element) => wire.extend_from_slice(element.as_bytes()),
                    None => match self.make(FWD) {
                        Some(element) => wire.extend_from_slice(element.as_bytes()),
                        None => write_forwarded_element(wire, &connection.forwarded_for, self.host.as_ref()),
                    },
                },
                _ => wire.extend_from_slice(via(self.protocol).as_bytes()),
            }
            wire.extend_from_slice(b"\r\n");
        }
    }

    /// Adds the pending fields to `headers` (for messages not encoded by the HTTP/1.1 client).
    pub fn apply(self, headers: &mut HeaderMap) {
        headers.reserve(self.pending.count_ones() as usize);
        for (field, name) in FORWARDING_NAMES.iter().enumerate() {
            if let Some(value) = self.value(field) {
                headers.append(*name, value);
            }
        }
    }
}

/// What one pass over a request's fields found, so that the common request,
/// which has none of these, costs no hashed lookup at all.
#[derive(Default)]
struct Seen {
    /// Per the hop-by-hop list scanned for (see [`present_among`]).
    hop_by_hop: u16,
    expect: bool,
    cookie: bool,
    host: Option<HeaderValue>,
    /// Per [`FORWARDING_NAMES`].
    forwarding: [bool; 5],
}

impl Seen {
    fn scan(headers: &HeaderMap, hop_by_hop: &[&HeaderName]) -> Self {
        let mut seen = Seen::default();
        for (name, value) in headers {
            if name == header::HOST {
                seen.host.get_or_insert_with(|| value.clone());
            } else if name == header::EXPECT {
                seen.expect = true;
            } else if name == header::COOKIE {
                seen.cookie = true;
            } else if let Some(i) = FORWARDING_NAMES.iter().position(|n| *n == name) {
                seen.forwarding[i] = true;
            } else if let Some(i) = hop_by_hop.iter().position(|n| *n == name) {
                seen.hop_by_hop |= 1 << i;
            }
        }
        seen
    }
}

/// Turns the client's request into the one sent upstream: path rewritten,
/// hop-by-hop headers gone, forwarding headers added, HTTP/1.1 shape.
pub fn prepare_request(
    parts: http::request::Parts,
    body: Body,
    ctx: &RequestContext,
    route: &RouteConfig,
) -> Result<Request<Body>, ProxyError> {
    let (mut req, forwarding) = prepare_request_deferred(parts, body, ctx, route)?;
    forwarding.apply(req.headers_mut());
    Ok(req)
}

/// [`prepare_request`] with the forwarding fields the client did not send
/// left out of the header map, for the HTTP/1.1 client to write (see
/// [`Forwarding`]).
pub fn prepare_request_deferred(
    mut parts: http::request::Parts,
    body: Body,
    ctx: &RequestContext,
    route: &RouteConfig,
) -> Result<(Request<Body>, Forwarding), ProxyError> {
    let headers = &mut parts.headers;
    let h2 = ctx.protocol == DownstreamProtocol::Http2;
    let hop_by_hop: &[&HeaderName] = if h2 { &HOP_BY_HOP_H2 } else { &HOP_BY_HOP };
    let seen = Seen::scan(headers, hop_by_hop);
    // HTTP/2 and HTTP/3 carry the host as `:authority`; HTTP/1.1 in `Host`.
    let authority = match parts.uri.authority() {
        Some(a) => Some(HeaderValue::from_str(a.as_str()).map_err(|_| ProxyError::BadRequest("invalid :authority"))?),
        None => None,
    };
    let host = authority.clone().or(seen.host);
    let accepts_trailers = hop_by_hop
        .iter()
        .position(|name| **name == header::TE)
        .is_some_and(|i| seen.hop_by_hop & (1 << i) != 0 && names_trailers(headers));
    remove_present(headers, hop_by_hop, seen.hop_by_hop);
    // We answered `Expect: 100-continue` ourselves when we started reading the body.
    if seen.expect {
        headers.remove(header::EXPECT);
    }
    // HTTP/2 and HTTP/3 may split `cookie` into several fields (RFC 9113 §8.2.3, RFC 9114 §4.2.1).
    if seen.cookie && ctx.protocol != DownstreamProtocol::Http1 {
        join_cookies(headers);
    }

    let mut forwarding = Forwarding {
        connection: Some(Arc::clone(&ctx.connection)),
        protocol: ctx.protocol,
        host: host.clone(),
        pending: 0,
        accepts_trailers,
    };
    let wanted = route.forward_headers.bits();
    for (field, name) in FORWARDING_NAMES.iter().enumerate() {
        // A kind the route leaves out is neither added nor changed.
        if wanted & (1 << field) == 0 {
            continue;
        }
        if !seen.forwarding[field] {
            forwarding.pending |= 1 << field;
            continue;
        }
        match field {
            // Ours replaces the client's: only this hop knows how it was reached.
            XFP => {
                headers.insert(*name, HeaderValue::from_static(ctx.connection.scheme()));
            }
            // The client's `X-Forwarded-Host` stands: it names the original host.
            XFH => {}
            // Lists: ours goes after what earlier proxies added.
            _ => {
                if let Some(value) = forwarding.make(field) {
                    append_value(headers, name, value);
                }
            }
        }
    }
    match (route.preserve_host, authority) {
        (true, Some(h)) => {
            headers.insert(header::HOST, h);
        }
        // The client's own Host is already in place.
        (true, None) => {}
        (false, _) => {
            if host.is_some() {
                headers.remove(header::HOST);
            }
        }
    }

    let path = match parts.uri.path_and_query() {
        Some(pq) => crate::route::rewrite_path(route, pq),
        None => http::uri::PathAndQuery::from_static("/"),
    };
    parts.uri = http::Uri::from(path);
    parts.version = Version::HTTP_11;
    Ok((Request::from_parts(parts, body), forwarding))
}

/// Cleans a backend response for the client: hop-by-hop headers removed,
/// `Via` added unless the route leaves it out.
pub fn prepare_response<B>(response: &mut Response<B>, protocol: DownstreamProtocol, route: &RouteConfig) {
    let headers = response.headers_mut();
    remove_hop_by_hop(headers);
    if route.forward_headers.contains(ForwardHeader::Via) {
        append_value(headers, &header::VIA, via(protocol));
    }
}

/// [`prepare_response`] for a response that came over HTTP/2 (a gRPC
/// backend's), whose headers h2 has already checked.
pub fn prepare_h2_response<B>(response: &mut Response<B>, protocol: DownstreamProtocol, route: &RouteConfig) {
    let headers = response.headers_mut();
    remove_hop_by_hop_h2(headers);
    if route.forward_headers.contains(ForwardHeader::Via) {
        append_value(headers, &header::VIA, via(protocol));
    }
}

/// Writes one `Forwarded` element: the connection's `for=...;proto=...`
/// plus `;host=...`, quoted when it is not a token (RFC 7239 §4, §6).
fn write_forwarded_element(out: &mut Vec<u8>, for_and_proto: &str, host: Option<&HeaderValue>) {
    out.extend_from_slice(for_and_proto.as_bytes());
    let Some(h) = host.map(HeaderValue::as_bytes) else { return };
    if h.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'.' || *b == b'-') {
        out.extend_from_slice(b";host=");
        out.extend_from_slice(h);
    } else {
        // A quoted-string, escaping as it goes.
        out.extend_from_slice(b";host=\"");
        for &b in h {
            if b == b'\\' || b == b'"' {
                out.push(b'\\');
            }
            out.push(b);
        }
        out.push(b'"');
    }
}

/// Whether the request's `TE` lists `trailers` (RFC 9110 §10.1.4).
fn names_trailers(headers: &HeaderMap) -> bool {
    headers.get_all(header::TE).iter().any(|value| {
        value.as_bytes().split(|b| *b == b',').any(|member| {
            let coding = member.split(|b| *b == b';').next().unwrap_or_default();
            coding.trim_ascii().eq_ignore_ascii_case(b"trailers")
        })
    })
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
    fn a_response_for_http2_loses_what_http2_forbids_and_keeps_the_rest() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("close, x-hop"));
        h.insert("x-hop", HeaderValue::from_static("1"));
        h.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(&KEEP_ALIVE, HeaderValue::from_static("timeout=5"));
        h.insert(&PROXY_CONNECTION, HeaderValue::from_static("keep-alive"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::TRAILER, HeaderValue::from_static("grpc-status"));
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        remove_connection_specific(&mut h);
        let left: Vec<_> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["trailer", "content-type"]);
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

    fn forwarded_element(for_and_proto: &str, host: Option<&HeaderValue>) -> String {
        let mut out = Vec::new();
        write_forwarded_element(&mut out, for_and_proto, host);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn forwarded_quotes_ipv6_and_odd_hosts() {
        use crate::model::{ConnectionInfo, ListenerInfo};
        let listener = std::sync::Arc::new(ListenerInfo {
            name: "l".into(),
            max_body_bytes: None,
            limits: Default::default(),
            merge_slashes: true,
        });
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
        append_value(&mut h, &X_FORWARDED_FOR, HeaderValue::from_static("127.0.0.1"));
        assert_eq!(h[&X_FORWARDED_FOR], "203.0.113.9, 127.0.0.1");
    }

    fn proxy_route() -> RouteConfig {
        crate::route::test_route("r", Default::default())
    }

    fn client_request(headers: &[(&str, &str)]) -> http::request::Parts {
        let mut req = Request::builder().uri("/p");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.body(()).unwrap().into_parts().0
    }

    fn written(forwarding: &Forwarding) -> Vec<(String, String)> {
        let mut wire = Vec::new();
        forwarding.write(&mut wire);
        let lines = String::from_utf8(wire).unwrap();
        let mut applied = HeaderMap::new();
        forwarding.clone().apply(&mut applied);
        let fields: Vec<(String, String)> = lines
            .split_terminator("\r\n")
            .map(|l| l.split_once(": ").map(|(n, v)| (n.to_owned(), v.to_owned())).unwrap())
            .collect();
        let from_map: Vec<(String, String)> =
            applied.iter().map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned())).collect();
        // `TE` (and its connection option) is the HTTP/1.1 hop's own: wire only.
        let forwarding_fields: Vec<_> =
            fields.iter().filter(|(n, _)| n != "te" && n != "connection").cloned().collect();
        assert_eq!(forwarding_fields, from_map, "the wire and the map get the same forwarding fields");
        fields
    }

    #[test]
    fn forwarding_fields_the_client_did_not_send_are_left_for_the_encoder() {
        let ctx = crate::policy::test_context();
        let parts = client_request(&[("host", "example.com"), ("expect", "100-continue"), ("x-a", "1")]);
        let (req, forwarding) = prepare_request_deferred(parts, crate::body::empty(), &ctx, &proxy_route()).unwrap();
        let names: Vec<_> = req.headers().keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["host", "x-a"], "Expect answered here; nothing added to the map");
        assert_eq!(
            written(&forwarding),
            [
                ("x-forwarded-for", "127.0.0.1"),
                ("x-forwarded-proto", "http"),
                ("x-forwarded-host", "example.com"),
                ("forwarded", "for=127.0.0.1;proto=http;host=example.com"),
                ("via", "1.1 tollgate"),
            ]
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
        );
    }

    #[test]
    fn the_forwarded_element_made_once_per_connection_follows_the_host() {
        let ctx = crate::policy::test_context();
        let forwarded = |host: &str| {
            let parts = client_request(&[("host", host)]);
            let req = prepare_request(parts, crate::body::empty(), &ctx, &proxy_route()).unwrap();
            req.headers()["forwarded"].to_str().unwrap().to_owned()
        };
        assert_eq!(forwarded("a.example"), "for=127.0.0.1;proto=http;host=a.example");
        assert_eq!(forwarded("a.example"), "for=127.0.0.1;proto=http;host=a.example");
        assert_eq!(forwarded("b.example"), "for=127.0.0.1;proto=http;host=b.example");
        assert_eq!(forwarded("a.example"), "for=127.0.0.1;proto=http;host=a.example");
    }

    #[test]
    fn te_is_said_again_upstream_only_when_it_names_trailers() {
        let ctx = crate::policy::test_context();
        for (te, expected) in [("trailers", true), ("gzip, Trailers;q=1", true), ("gzip", false), ("trailersx", false)]
        {
            let parts = client_request(&[("host", "example.com"), ("te", te)]);
            let (req, forwarding) =
                prepare_request_deferred(parts, crate::body::empty(), &ctx, &proxy_route()).unwrap();
            assert!(!req.headers().contains_key("te"));
            let said = written(&forwarding).iter().any(|(n, v)| n == "te" && v == "trailers");
            assert_eq!(said, expected, "{te}");
        }
    }

    #[test]
    fn forwarding_fields_the_client_sent_are_merged_in_the_map() {
        let ctx = crate::policy::test_context();
        let parts = client_request(&[
            ("host", "example.com"),
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "original.example"),
            ("via", "1.1 edge"),
            ("te", "trailers"),
        ]);
        let (req, forwarding) = prepare_request_deferred(parts, crate::body::empty(), &ctx, &proxy_route()).unwrap();
        let h = req.headers();
        assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http", "only this hop knows how it was reached");
        assert_eq!(h["x-forwarded-host"], "original.example");
        assert_eq!(h["via"], "1.1 edge, 1.1 tollgate");
        assert!(!h.contains_key("te"), "hop-by-hop");
        // `TE: trailers` is this hop's to say again, with its connection option.
        let pair = |n: &str, v: &str| (n.to_owned(), v.to_owned());
        assert_eq!(
            written(&forwarding),
            [
                pair("te", "trailers"),
                pair("connection", "te"),
                pair("forwarded", "for=127.0.0.1;proto=http;host=example.com")
            ]
        );

        // The map-only form ends with the same fields in the map.
        let mut applied = h.clone();
        forwarding.apply(&mut applied);
        assert_eq!(applied["forwarded"], "for=127.0.0.1;proto=http;host=example.com");
        assert_eq!(applied.len(), 6);
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
