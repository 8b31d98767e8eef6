//! `kind = "ip_filter"`: allow and deny lists of CIDRs (IPv4 and IPv6), and
//! the one place the client's address is settled.
//!
//! The client is the socket peer (or the address a PROXY protocol header gave
//! the connection, see `listen::proxy_protocol`), unless that peer is one of
//! `trusted_proxies`: then the forwarding header is walked right to left,
//! skipping trusted hops, and the first untrusted address is the client (what
//! nginx's `real_ip_recursive on` does). Only entries appended by trusted
//! hops are believed, so a client cannot choose its address by sending its
//! own `X-Forwarded-For`. The result is written to `RequestContext::client_ip`
//! for rate limits, `{client_ip}` templates, balancing and the access log.
//!
//! ```toml
//! [policy.edge]
//! kind = "ip_filter"
//! allow = ["127.0.0.0/8", "::1/128"]   # empty: everyone not denied
//! deny = ["127.0.0.2/32"]              # deny wins over allow
//! trusted_proxies = ["10.0.0.0/8"]     # whose X-Forwarded-For is believed
//! client_ip_header = "x-forwarded-for" # or "forwarded" (RFC 7239)
//! on_connect = true                    # on a listener: close denied peers before TLS/HTTP
//! ```

use std::net::{IpAddr, SocketAddr};

use http::{HeaderMap, HeaderName, StatusCode};
use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

use super::{Rejection, SpecError, Verdict, env_string};
use crate::model::RequestContext;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static FORWARDED: HeaderName = HeaderName::from_static("forwarded");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIpFilter {
    #[allow(dead_code)]
    kind: String,
    #[serde(default)]
    allow: Vec<Spanned<String>>,
    #[serde(default)]
    deny: Vec<Spanned<String>>,
    #[serde(default)]
    trusted_proxies: Vec<Spanned<String>>,
    client_ip_header: Option<Spanned<String>>,
    #[serde(default)]
    on_connect: bool,
}

/// Which forwarding header a trusted proxy maintains. Only one is read: a
/// proxy that appends to `X-Forwarded-For` passes a client's own `Forwarded`
/// through untouched, so reading whichever is present would let the client
/// pick its address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientIpHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2` (the de facto default).
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=...`.
    Forwarded,
}

/// A set of networks, merged at load so lookups scan as few as possible.
#[derive(Debug, Clone, Default)]
struct NetList(Vec<IpNet>);

impl NetList {
    fn parse(entries: &[Spanned<String>], key: &str) -> Result<Self, SpecError> {
        let mut nets = Vec::with_capacity(entries.len());
        for entry in entries {
            let text = env_string(entry, key)?;
            let net = match text.trim().parse::<IpNet>() {
                Ok(net) => net.trunc(),
                // A bare address means just that host (/32 or /128).
                Err(_) => match text.trim().parse::<IpAddr>() {
                    Ok(ip) => IpNet::from(ip),
                    Err(_) => {
                        return Err(SpecError::at(
                            entry.span(),
                            key,
                            format!(
                                "`{text}` is not a CIDR or an IP address; write e.g. \"10.0.0.0/8\", \"::1/128\" or \"192.0.2.7\""
                            ),
                        ));
                    }
                },
            };
            nets.push(net);
        }
        Ok(Self(IpNet::aggregate(&nets)))
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(&ip))
    }
}

/// Validated `ip_filter` policy config.
#[derive(Debug, Clone)]
pub struct IpFilterSpec {
    allow: NetList,
    deny: NetList,
    trusted_proxies: NetList,
    client_ip_header: ClientIpHeader,
    on_connect: bool,
}

/// Reads and checks one `[policy.NAME]` of this kind; every bad CIDR is
/// reported with its location.
pub(super) fn parse(table: toml::de::ValueDeserializer<'_>) -> Result<IpFilterSpec, SpecError> {
    let raw = RawIpFilter::deserialize(table).map_err(SpecError::from_toml)?;
    let client_ip_header = match &raw.client_ip_header {
        None => ClientIpHeader::XForwardedFor,
        Some(h) => match h.get_ref().to_ascii_lowercase().as_str() {
            "x-forwarded-for" => ClientIpHeader::XForwardedFor,
            "forwarded" => ClientIpHeader::Forwarded,
            other => {
                return Err(SpecError::at(
                    h.span(),
                    "client_ip_header",
                    format!("`{other}` is not supported; use \"x-forwarded-for\" or \"forwarded\""),
                ));
            }
        },
    };
    Ok(IpFilterSpec {
        allow: NetList::parse(&raw.allow, "allow")?,
        deny: NetList::parse(&raw.deny, "deny")?,
        trusted_proxies: NetList::parse(&raw.trusted_proxies, "trusted_proxies")?,
        client_ip_header,
        on_connect: raw.on_connect,
    })
}

/// The running policy.
pub struct IpFilterPolicy {
    spec: IpFilterSpec,
}

impl IpFilterPolicy {
    /// Builds the running policy; the lists were parsed and merged at load.
    pub fn new(spec: &IpFilterSpec) -> Self {
        Self { spec: spec.clone() }
    }

    /// Settles the client address, then allows or rejects it (403 `ip_denied`).
    pub fn on_request(&self, parts: &http::request::Parts, ctx: &mut RequestContext) -> Verdict {
        let client = self.client_ip(ctx.connection.peer.ip(), &parts.headers);
        ctx.client_ip = client;
        if self.admits(client) {
            Verdict::Continue
        } else {
            Verdict::Reject(Rejection::new(
                StatusCode::FORBIDDEN,
                "ip_denied",
                format!("client address {client} is not allowed"),
            ))
        }
    }

    /// Whether `ip` passes the lists: not denied, and allowed (an empty
    /// allow list allows everyone not denied).
    pub fn admits(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        !self.spec.deny.contains(ip) && (self.spec.allow.is_empty() || self.spec.allow.contains(ip))
    }

    /// The accept-time check for a listener's `on_connect` filters. A trusted
    /// proxy is let in: the client behind it is only known per request.
    pub fn admits_connection(&self, peer: IpAddr) -> bool {
        if !self.spec.on_connect {
            return true;
        }
        let peer = peer.to_canonical();
        self.spec.trusted_proxies.contains(peer) || self.admits(peer)
    }

    /// The client address for a request from `peer` with these headers.
    /// IPv4-mapped IPv6 addresses (`::ffff:192.0.2.1`) are treated as IPv4.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        let trusted = &self.spec.trusted_proxies;
        if !trusted.contains(peer) {
            return peer;
        }
        let mut client = peer;
        // Each trusted hop appended the address it saw; stop at the first one
        // we do not trust, or at an entry that is not an address (then the
        // last trusted hop is the best we know).
        let mut walk = |hop: Option<IpAddr>| -> bool {
            match hop {
                Some(ip) => {
                    client = ip.to_canonical();
                    trusted.contains(client)
                }
                None => false,
            }
        };
        match self.spec.client_ip_header {
            ClientIpHeader::XForwardedFor => {
                // Several header lines form one list, in order (RFC 9110 §5.3).
                'lines: for value in headers.get_all(&X_FORWARDED_FOR).iter().rev() {
                    let Ok(text) = value.to_str() else { break };
                    for entry in text.rsplit(',') {
                        if !walk(parse_node(entry.trim())) {
                            break 'lines;
                        }
                    }
                }
            }
            ClientIpHeader::Forwarded => {
                'lines: for value in headers.get_all(&FORWARDED).iter().rev() {
                    let Ok(text) = value.to_str() else { break };
                    for element in split_unquoted(text, ',').into_iter().rev() {
                        if !walk(forwarded_for(element)) {
                            break 'lines;
                        }
                    }
                }
            }
        }
        client
    }
}

/// An address as proxies write it: `192.0.2.1`, `192.0.2.1:443`, `2001:db8::1`,
/// `[2001:db8::1]` or `[2001:db8::1]:443`. Anything else (`unknown`, an
/// obfuscated `_node`, garbage) is `None`.
fn parse_node(text: &str) -> Option<IpAddr> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Some(addr.ip());
    }
    text.strip_prefix('[')?.strip_suffix(']')?.parse::<std::net::Ipv6Addr>().ok().map(IpAddr::V6)
}

/// The `for=` node of one `Forwarded` element (RFC 7239 §4, §5.2), unquoted.
fn forwarded_for(element: &str) -> Option<IpAddr> {
    split_unquoted(element, ';').into_iter().find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("for") {
            return None;
        }
        let value = value.trim();
        let value = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(value);
        parse_node(value)
    })
}

/// Splits on `separator` outside double-quoted strings (RFC 9110 §5.6.4).
fn split_unquoted(text: &str, separator: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == separator && !quoted => {
                parts.push(text[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(text[start..].trim());
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(toml_text: &str) -> Result<IpFilterSpec, SpecError> {
        let text = format!("kind = \"ip_filter\"\n{toml_text}");
        let doc = toml::de::DeTable::parse(&text).unwrap();
        let span = doc.span();
        parse(toml::Spanned::new(span, toml::de::DeValue::Table(doc.into_inner())).into())
    }

    fn policy(toml_text: &str) -> IpFilterPolicy {
        IpFilterPolicy::new(&spec(toml_text).unwrap())
    }

    fn parse_err(toml_text: &str) -> SpecError {
        spec(toml_text).unwrap_err()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(&X_FORWARDED_FOR, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn deny_wins_and_an_empty_allow_list_allows_the_rest() {
        let p = policy("allow = [\"127.0.0.0/8\", \"::1/128\"]\ndeny = [\"127.0.0.2/32\"]");
        assert!(p.admits(ip("127.0.0.1")));
        assert!(!p.admits(ip("127.0.0.2")));
        assert!(p.admits(ip("::1")));
        assert!(!p.admits(ip("10.0.0.1")));
        assert!(!p.admits(ip("::2")));
        let open = policy("deny = [\"2001:db8::/32\", \"192.0.2.7\"]");
        assert!(open.admits(ip("198.51.100.1")));
        assert!(!open.admits(ip("192.0.2.7")));
        assert!(open.admits(ip("192.0.2.8")));
        assert!(!open.admits(ip("2001:db8:1::5")));
    }

    #[test]
    fn ipv4_mapped_ipv6_addresses_match_ipv4_rules() {
        let p = policy("deny = [\"127.0.0.2/32\"]");
        assert!(!p.admits(ip("::ffff:127.0.0.2")));
    }

    #[test]
    fn bad_cidrs_are_located_errors() {
        let e = parse_err("allow = [\"10.0.0.0/33\"]");
        assert_eq!(e.key, "allow");
        assert!(e.message.contains("10.0.0.0/33"), "{}", e.message);
        assert!(e.span.is_some());
        assert_eq!(parse_err("trusted_proxies = [\"proxy.local\"]").key, "trusted_proxies");
        assert_eq!(parse_err("client_ip_header = \"x-real-ip\"").key, "client_ip_header");
        assert!(parse_err("alow = []").message.contains("unknown field"));
    }

    #[test]
    fn forwarding_headers_are_ignored_from_untrusted_peers() {
        let p = policy("trusted_proxies = [\"10.0.0.0/8\"]");
        assert_eq!(p.client_ip(ip("127.0.0.1"), &xff(&["203.0.113.9"])), ip("127.0.0.1"));
        let none = policy("");
        assert_eq!(none.client_ip(ip("127.0.0.1"), &xff(&["203.0.113.9"])), ip("127.0.0.1"));
    }

    #[test]
    fn xff_is_walked_right_to_left_skipping_trusted_hops() {
        let p = policy("trusted_proxies = [\"10.0.0.0/8\"]");
        // The client forged the left entry; the first untrusted one from the right is the client.
        let h = xff(&["1.1.1.1, 203.0.113.9, 10.0.0.2"]);
        assert_eq!(p.client_ip(ip("10.0.0.1"), &h), ip("203.0.113.9"));
        // Several header lines are one list.
        let h = xff(&["1.1.1.1, 203.0.113.9", "10.0.0.3", "10.0.0.2"]);
        assert_eq!(p.client_ip(ip("10.0.0.1"), &h), ip("203.0.113.9"));
        // All hops trusted: the leftmost address.
        assert_eq!(p.client_ip(ip("10.0.0.1"), &xff(&["10.0.0.5, 10.0.0.2"])), ip("10.0.0.5"));
        // No header: the peer.
        assert_eq!(p.client_ip(ip("10.0.0.1"), &HeaderMap::new()), ip("10.0.0.1"));
        // Ports and brackets as some proxies write them.
        assert_eq!(p.client_ip(ip("10.0.0.1"), &xff(&["[2001:db8::7]:443"])), ip("2001:db8::7"));
        assert_eq!(p.client_ip(ip("10.0.0.1"), &xff(&["192.0.2.1:5000"])), ip("192.0.2.1"));
        // Garbage stops the walk at the last trusted hop.
        assert_eq!(p.client_ip(ip("10.0.0.1"), &xff(&["203.0.113.9, bogus, 10.0.0.2"])), ip("10.0.0.2"));
    }

    #[test]
    fn forwarded_header_is_read_when_configured() {
        let p = policy("trusted_proxies = [\"10.0.0.0/8\"]\nclient_ip_header = \"forwarded\"");
        let mut h = HeaderMap::new();
        h.insert(
            &FORWARDED,
            "for=1.1.1.1, for=\"[2001:db8::7]:4711\";proto=https;host=\"a,b\", For=10.0.0.2".parse().unwrap(),
        );
        assert_eq!(p.client_ip(ip("10.0.0.1"), &h), ip("2001:db8::7"));
        // X-Forwarded-For is not read when Forwarded is the configured header.
        assert_eq!(p.client_ip(ip("10.0.0.1"), &xff(&["203.0.113.9"])), ip("10.0.0.1"));
        // An obfuscated node stops the walk.
        let mut h = HeaderMap::new();
        h.insert(&FORWARDED, "for=_hidden, for=10.0.0.2".parse().unwrap());
        assert_eq!(p.client_ip(ip("10.0.0.1"), &h), ip("10.0.0.2"));
    }

    #[test]
    fn on_connect_checks_only_when_asked_and_lets_trusted_proxies_in() {
        let p = policy("deny = [\"127.0.0.0/8\"]\ntrusted_proxies = [\"127.0.0.3\"]\non_connect = true");
        assert!(!p.admits_connection(ip("127.0.0.2")));
        assert!(p.admits_connection(ip("127.0.0.3")));
        let q = policy("deny = [\"127.0.0.0/8\"]");
        assert!(q.admits_connection(ip("127.0.0.2")));
    }
}
