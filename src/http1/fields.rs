//! Reading the fields of a head httparse has accepted, the same way for
//! client requests and backend responses: where each field sits, its value
//! shared with the head's bytes, and the framing fields (RFC 9112 §6).

use bytes::Bytes;
use http::{HeaderName, HeaderValue};

/// Where one field's name and value sit in the head's bytes, recorded
/// while httparse's borrow of the buffer lasts.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    pub name: (u32, u32),
    pub value: (u32, u32),
}

impl Field {
    /// Records `header`, which httparse found in `buf`.
    pub fn locate(buf: &[u8], header: &httparse::Header<'_>) -> Self {
        let start = buf.as_ptr() as usize;
        let offset = |s: &[u8]| (s.as_ptr() as usize - start) as u32;
        Field {
            name: (offset(header.name.as_bytes()), header.name.len() as u32),
            value: (offset(header.value), header.value.len() as u32),
        }
    }

    /// The raw name, from the head the field was located in.
    pub fn name<'h>(&self, head: &'h [u8]) -> &'h [u8] {
        &head[self.name.0 as usize..(self.name.0 + self.name.1) as usize]
    }

    /// The value, sharing the head's bytes (no copy, no second validation).
    pub fn value(&self, head: &Bytes) -> HeaderValue {
        let range = self.value.0 as usize..(self.value.0 + self.value.1) as usize;
        // SAFETY: httparse accepts in a value only HTAB, SP, visible ASCII
        // and obs-text (0x80-0xFF), exactly the bytes a `HeaderValue` allows;
        // `httparse_values_are_valid_header_values` checks that for every byte.
        unsafe { HeaderValue::from_maybe_shared_unchecked(head.slice(range)) }
    }
}

/// Adds a `Content-Length` field to what earlier ones said. A list of equal
/// values counts as one (RFC 9110 §8.6); anything else is refused, since
/// two parsers could pick different lengths.
pub fn merge_content_length(value: &[u8], length: &mut Option<u64>) -> Result<(), &'static str> {
    for item in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
        let n = parse_length(item).ok_or("invalid Content-Length")?;
        if length.is_some_and(|seen| seen != n) {
            return Err("conflicting Content-Length values");
        }
        *length = Some(n);
    }
    Ok(())
}

/// A Content-Length value: digits only (no sign, no spaces), fitting in a u64.
fn parse_length(item: &[u8]) -> Option<u64> {
    if item.is_empty() || item.len() > 19 || !item.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(item.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

/// What a head's `Transfer-Encoding` fields amount to, all of them read as
/// one list (RFC 9110 §5.3). Tollgate decodes `chunked` and nothing else:
/// passing a body on without a coding it still carries (`gzip, chunked`
/// with the `gzip` dropped, as the field is hop-by-hop) would hand the
/// other side bytes it cannot read, so anything but exactly `chunked` is
/// refused rather than guessed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TransferCoding {
    /// No `Transfer-Encoding` field.
    #[default]
    Absent,
    /// Exactly `chunked`.
    Chunked,
    /// Ends in `chunked` after other codings we do not decode (a request
    /// gets 501, RFC 9112 §6.1).
    Unsupported,
    /// Not ending in `chunked`, `chunked` twice, or empty: the body cannot
    /// be delimited (RFC 9112 §6.1, §6.3).
    Invalid,
}

/// The codings seen so far in a head's `Transfer-Encoding` fields.
#[derive(Debug, Default)]
pub struct TransferCodings {
    present: bool,
    chunked: u32,
    others: bool,
    last_is_chunked: bool,
}

impl TransferCodings {
    /// Adds one `Transfer-Encoding` field (empty list elements are allowed and skipped).
    pub fn add(&mut self, value: &[u8]) {
        self.present = true;
        for coding in value.split(|&b| b == b',').map(<[u8]>::trim_ascii).filter(|c| !c.is_empty()) {
            self.last_is_chunked = coding.eq_ignore_ascii_case(b"chunked");
            if self.last_is_chunked {
                self.chunked += 1;
            } else {
                self.others = true;
            }
        }
    }

    /// What they amount to.
    pub fn outcome(&self) -> TransferCoding {
        match *self {
            TransferCodings { present: false, .. } => TransferCoding::Absent,
            TransferCodings { last_is_chunked: false, .. } | TransferCodings { chunked: 2.., .. } => {
                TransferCoding::Invalid
            }
            TransferCodings { others: true, .. } => TransferCoding::Unsupported,
            TransferCodings { .. } => TransferCoding::Chunked,
        }
    }
}

/// Whether a `Host` value is `uri-host [ ":" port ]` (RFC 9112 §3.2, RFC
/// 3986 §3.2.2): no user info, path or spaces that routing and the backend
/// could each read differently. Not empty: an `http` or `https` URI with an
/// empty host is invalid and must be rejected (RFC 9110 §4.2.1), as nginx does.
/// Checked on every request, so one pass over a table for names and addresses.
pub fn valid_host(value: &[u8]) -> bool {
    match value.first() {
        None | Some(b':') => return false,
        Some(b'[') => return valid_ip_literal(&value[1..]),
        Some(_) => {}
    }
    let mut colon = None;
    for (i, &b) in value.iter().enumerate() {
        if b == b':' {
            if colon.is_some() {
                return false;
            }
            colon = Some(i);
        } else if !HOST_BYTES[usize::from(b)] {
            return false;
        }
    }
    colon.is_none_or(|at| value[at + 1..].iter().all(u8::is_ascii_digit))
}

/// Whether a `Host` field and an `:authority` name the same server: the same
/// host, case aside, and the same port once the scheme's `default_port`
/// stands in for a missing one. RFC 9113 §8.3.1 and RFC 9114 §4.3.1 let a
/// server treat a request whose two differ as malformed; one that routed by
/// one name while a later hop read the other would be split.
pub fn same_authority(a: &[u8], b: &[u8], default_port: &[u8]) -> bool {
    let (host_a, port_a) = split_port(a);
    let (host_b, port_b) = split_port(b);
    host_a.eq_ignore_ascii_case(host_b) && port_a.unwrap_or(default_port) == port_b.unwrap_or(default_port)
}

/// A `host[:port]` value's host (an IPv6 literal kept whole, brackets and
/// all) and its port, if any (`x:` has none).
pub fn split_port(value: &[u8]) -> (&[u8], Option<&[u8]>) {
    let after_literal = match value.first() {
        Some(b'[') => value.iter().position(|&b| b == b']').map_or(value.len(), |close| close + 1),
        _ => 0,
    };
    match value[after_literal..].iter().position(|&b| b == b':') {
        Some(at) => {
            let port = &value[after_literal + at + 1..];
            (&value[..after_literal + at], (!port.is_empty()).then_some(port))
        }
        None => (value, None),
    }
}

/// [`valid_host`] for one connection: nearly every request on it repeats
/// the last host found valid, and comparing is cheaper than checking again.
#[derive(Debug, Default)]
pub struct HostCheck {
    last_valid: Vec<u8>,
}

impl HostCheck {
    /// Whether `value` is a valid host, remembering it when it is.
    pub fn valid(&mut self, value: &[u8]) -> bool {
        if !value.is_empty() && value == self.last_valid.as_slice() {
            return true;
        }
        let ok = valid_host(value);
        if ok {
            self.last_valid.clear();
            self.last_valid.extend_from_slice(value);
        }
        ok
    }
}

/// `[...]` after its `[`, then an optional `:port`.
fn valid_ip_literal(literal: &[u8]) -> bool {
    let Some(close) = literal.iter().position(|&b| b == b']') else { return false };
    let (inside, port) = (&literal[..close], &literal[close + 1..]);
    !inside.is_empty()
        && inside.iter().all(|&b| b == b':' || HOST_BYTES[usize::from(b)])
        && (port.is_empty() || (port[0] == b':' && port[1..].iter().all(u8::is_ascii_digit)))
}

/// Bytes of a reg-name or an IPv4 address: unreserved, sub-delims and the
/// `%` of an escape (RFC 3986 §3.2.2).
static HOST_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric();
        b += 1;
    }
    let extra = b"-._~%!$&'()*+,;=";
    let mut i = 0;
    while i < extra.len() {
        table[extra[i] as usize] = true;
        i += 1;
    }
    table
};

/// A field value with a space or tab at either end: an HTTP/1.1 hop trims
/// it (RFC 9110 §5.5), an HTTP/2 or HTTP/3 hop keeps it, so the two would
/// read different values (RFC 9113 §8.2.1 calls it malformed).
pub fn padded(value: &[u8]) -> bool {
    matches!(value.first(), Some(b' ' | b'\t')) || matches!(value.last(), Some(b' ' | b'\t'))
}

/// Whether a field may travel in a trailer section. RFC 9110 §6.5.1: what
/// frames, routes, authenticates or modifies a message, controls its
/// response or describes its content is settled by the header section, and
/// a recipient that merges trailers into it (some do) could be led to
/// re-read the message by a late `content-length` or `host`; such fields
/// are left out when trailers are passed on.
pub fn fit_for_trailers(name: &HeaderName) -> bool {
    !matches!(
        name.as_str(),
        "content-length"
            | "transfer-encoding"
            | "trailer"
            | "host"
            | "connection"
            | "keep-alive"
            | "proxy-connection"
            | "upgrade"
            | "te"
            | "authorization"
            | "proxy-authorization"
            | "www-authenticate"
            | "proxy-authenticate"
            | "cookie"
            | "set-cookie"
            | "expect"
            | "range"
            | "if-match"
            | "if-none-match"
            | "if-modified-since"
            | "if-unmodified-since"
            | "if-range"
            | "max-forwards"
            | "cache-control"
            | "age"
            | "expires"
            | "location"
            | "retry-after"
            | "vary"
            | "content-type"
            | "content-encoding"
            | "content-range"
    )
}

/// The options of a `Connection` field.
pub fn connection_options(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(<[u8]>::trim_ascii)
}

/// What was wrong, in words, when httparse refused a head.
pub fn parse_error(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status => "invalid status",
        httparse::Error::Token => "invalid request method",
        httparse::Error::Version => "not HTTP/1.x",
        _ => "invalid message head",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn httparse_values_are_valid_header_values() {
        // What makes `from_maybe_shared_unchecked` in `Field::value` sound.
        for byte in 0..=255u8 {
            let wire = [b"HTTP/1.1 200 OK\r\nX-A: a".as_slice(), &[byte], b"a\r\n\r\n"].concat();
            let mut slots = [httparse::EMPTY_HEADER; 4];
            let mut response = httparse::Response::new(&mut slots);
            if let Ok(httparse::Status::Complete(_)) = response.parse(&wire) {
                let value = response.headers[0].value;
                assert!(HeaderValue::from_bytes(value).is_ok(), "byte {byte:#04x} passes httparse only");
            }
        }
    }

    #[test]
    fn content_lengths_merge_only_when_they_agree() {
        let mut length = None;
        assert_eq!(merge_content_length(b"5, 5", &mut length), Ok(()));
        assert_eq!(merge_content_length(b"5", &mut length), Ok(()));
        assert_eq!(length, Some(5));
        assert!(merge_content_length(b"6", &mut length).is_err());
        for bad in [&b"+5"[..], b"", b"5 5", b"0x5", b"99999999999999999999"] {
            assert!(merge_content_length(bad, &mut None).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn hosts_are_a_name_or_address_and_a_port_only() {
        for good in ["example.com", "example.com:8080", "127.0.0.1:80", "[::1]:443", "[::1]", "a-b_c~d", "x:"] {
            assert!(valid_host(good.as_bytes()), "{good:?}");
        }
        for bad in
            ["t/evil", "user@t", "t:80:80", "t:8a", "a b", "[::1", "[]", "t\\x", "t?q", "t#f", "[::1]x", "", ":80"]
        {
            assert!(!valid_host(bad.as_bytes()), "{bad:?}");
        }
    }

    #[test]
    fn framing_routing_and_credentials_are_unfit_for_trailers() {
        for unfit in ["content-length", "transfer-encoding", "host", "authorization", "cookie", "content-type"] {
            assert!(!fit_for_trailers(&HeaderName::from_static(unfit)), "{unfit}");
        }
        for fit in ["grpc-status", "grpc-message", "x-checksum", "server-timing", "digest"] {
            assert!(fit_for_trailers(&HeaderName::from_static(fit)), "{fit}");
        }
    }

    #[test]
    fn host_and_authority_match_by_name_and_effective_port() {
        for (a, b) in [("a.test", "A.TEST"), ("a.test", "a.test:443"), ("a.test:", "a.test"), ("[::1]:443", "[::1]")] {
            assert!(same_authority(a.as_bytes(), b.as_bytes(), b"443"), "{a} {b}");
        }
        for (a, b) in [("a.test", "b.test"), ("a.test", "a.test:80"), ("a.test:8443", "a.test:443"), ("[::1]", "[::2]")]
        {
            assert!(!same_authority(a.as_bytes(), b.as_bytes(), b"443"), "{a} {b}");
        }
    }

    #[test]
    fn a_host_check_remembers_only_valid_hosts() {
        let mut hosts = HostCheck::default();
        assert!(!hosts.valid(b""), "nothing remembered yet is not a match for an empty host");
        assert!(hosts.valid(b"example.com:8080"));
        assert!(hosts.valid(b"example.com:8080"), "the remembered one");
        assert!(!hosts.valid(b"user@example.com"));
        assert!(!hosts.valid(b"user@example.com"), "an invalid one is never remembered");
        assert!(hosts.valid(b"example.com:8080"));
    }

    fn coding(fields: &[&str]) -> TransferCoding {
        let mut codings = TransferCodings::default();
        for field in fields {
            codings.add(field.as_bytes());
        }
        codings.outcome()
    }

    #[test]
    fn only_exactly_chunked_is_a_coding_we_decode() {
        assert_eq!(coding(&[]), TransferCoding::Absent);
        assert_eq!(coding(&["chunked"]), TransferCoding::Chunked);
        assert_eq!(coding(&[" Chunked ,"]), TransferCoding::Chunked);
        // Codings we would have to remove before passing the body on.
        assert_eq!(coding(&["gzip, chunked"]), TransferCoding::Unsupported);
        assert_eq!(coding(&["gzip", "chunked"]), TransferCoding::Unsupported);
        // Not delimitable, or chunked applied twice.
        assert_eq!(coding(&["chunked, gzip"]), TransferCoding::Invalid);
        assert_eq!(coding(&["chunked", "gzip"]), TransferCoding::Invalid);
        assert_eq!(coding(&["chunked", "chunked"]), TransferCoding::Invalid);
        assert_eq!(coding(&["chunked, chunked"]), TransferCoding::Invalid);
        assert_eq!(coding(&["xchunked"]), TransferCoding::Invalid);
        assert_eq!(coding(&[""]), TransferCoding::Invalid);
    }
}
