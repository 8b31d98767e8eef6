//! Request heads from clients: parsed by httparse into `http` parts, with
//! the body's framing decided as RFC 9112 §6.3 orders it for requests, and
//! anything that would let two parsers disagree about where a request ends
//! (request smuggling) refused.

use std::mem::MaybeUninit;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode, Uri, Version};

use crate::http1::fields::{self, Field, TransferCoding, TransferCodings};
use crate::http1::names::NameCache;

/// Header slots on the stack; a listener allowing more parses again on the heap.
const INLINE_HEADERS: usize = 128;

/// How the request body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    /// No body.
    None,
    /// `Content-Length` bytes (more than zero).
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// A parsed request head and what the connection needs to know about it.
pub(super) struct Head {
    pub request: Request<()>,
    pub framing: Framing,
    /// The client allows another request on this connection after this one.
    pub keep_alive: bool,
    /// `Expect: 100-continue`: the client waits for a 100 before sending the body.
    pub expect_continue: bool,
    /// The client asks to switch protocols (`Upgrade`, HTTP/1.1 only) or sent a CONNECT.
    pub upgrade: bool,
}

/// Why a request head was refused; the client gets `status` and the
/// connection closes, since where the next request starts is unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum HeadError {
    /// Over `max_header_bytes` or `max_headers`: 431.
    TooLarge,
    /// The request line alone is over `max_header_bytes`: 414 (RFC 9112 §3).
    UriTooLong,
    /// Not a valid HTTP/1.x request head: 400, saying what was wrong.
    Malformed(&'static str),
    /// A transfer coding other than `chunked`, which we do not decode: 501.
    UnsupportedCoding,
}

impl HeadError {
    pub fn status(self) -> StatusCode {
        match self {
            HeadError::TooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            HeadError::UriTooLong => StatusCode::URI_TOO_LONG,
            HeadError::Malformed(_) => StatusCode::BAD_REQUEST,
            HeadError::UnsupportedCoding => StatusCode::NOT_IMPLEMENTED,
        }
    }

    /// Which limit a head of more than `max_bytes` (its start in `buf`)
    /// broke: a request line that alone does not fit is a target too long
    /// to parse, anything else a header block too large.
    pub fn too_large(buf: &[u8], max_bytes: usize) -> HeadError {
        // Empty lines before the request line are skipped (RFC 9112 §2.2).
        let start = buf.iter().position(|&b| b != b'\r' && b != b'\n').unwrap_or(buf.len());
        let line = &buf[start..buf.len().min(start + max_bytes)];
        if line.contains(&b'\n') { HeadError::TooLarge } else { HeadError::UriTooLong }
    }

    pub fn message(self) -> &'static str {
        match self {
            HeadError::TooLarge => "the request header block is too large",
            HeadError::UriTooLong => "the request target is too long",
            HeadError::Malformed(what) => what,
            HeadError::UnsupportedCoding => "transfer codings other than chunked are not supported",
        }
    }
}

/// Parses request heads for one connection, keeping what the next head can
/// reuse: the field table and the names by position (`http1::names`).
#[derive(Default)]
pub(super) struct HeadParser {
    fields: Vec<Field>,
    names: NameCache<Meaning>,
    /// Host fields are checked against the last valid one first.
    hosts: fields::HostCheck,
}

/// What a field means to the connection, worked out once per name.
#[derive(Clone, Copy)]
enum Meaning {
    Other,
    ContentLength,
    TransferEncoding,
    Connection,
    Expect,
    Upgrade,
    Host,
}

impl Meaning {
    fn of(name: &HeaderName) -> Self {
        if name == header::CONTENT_LENGTH {
            Meaning::ContentLength
        } else if name == header::TRANSFER_ENCODING {
            Meaning::TransferEncoding
        } else if name == header::CONNECTION {
            Meaning::Connection
        } else if name == header::EXPECT {
            Meaning::Expect
        } else if name == header::UPGRADE {
            Meaning::Upgrade
        } else if name == header::HOST {
            Meaning::Host
        } else {
            Meaning::Other
        }
    }
}

impl HeadParser {
    /// Parses the request head at the start of `buf` and removes it.
    /// `Ok(None)`: the head is not complete yet.
    /// A head longer than `max_bytes` is refused even when it arrived whole.
    pub fn parse(
        &mut self,
        buf: &mut BytesMut,
        max_bytes: usize,
        max_headers: usize,
    ) -> Result<Option<Head>, HeadError> {
        let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; INLINE_HEADERS];
        let parsed = if max_headers <= INLINE_HEADERS {
            self.scan(buf, &mut slots[..max_headers])?
        } else {
            match self.scan(buf, &mut slots) {
                Err(HeadError::TooLarge) => {
                    let mut heap: Vec<_> = (0..max_headers).map(|_| MaybeUninit::uninit()).collect();
                    self.scan(buf, &mut heap)?
                }
                other => other?,
            }
        };
        let Some(scan) = parsed else { return Ok(None) };
        if scan.len > max_bytes {
            return Err(HeadError::too_large(buf, max_bytes));
        }
        let head = buf.split_to(scan.len).freeze();
        self.build(&head, scan).map(Some)
    }

    /// Runs httparse over `buf`, recording where each field is.
    fn scan<'b>(
        &mut self,
        buf: &'b [u8],
        slots: &mut [MaybeUninit<httparse::Header<'b>>],
    ) -> Result<Option<Scan>, HeadError> {
        self.fields.clear();
        let mut request = httparse::Request::new(&mut []);
        let len = match httparse::ParserConfig::default().parse_request_with_uninit_headers(&mut request, buf, slots) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
            Err(e) => return Err(HeadError::Malformed(fields::parse_error(e))),
        };
        let start = buf.as_ptr() as usize;
        let offset = |s: &[u8]| (s.as_ptr() as usize - start) as u32;
        self.fields.extend(request.headers.iter().map(|h| Field::locate(buf, h)));
        let (Some(method), Some(path), Some(minor)) = (request.method, request.path, request.version) else {
            return Err(HeadError::Malformed("incomplete request line"));
        };
        Ok(Some(Scan {
            len,
            method: (offset(method.as_bytes()), method.len() as u32),
            target: (offset(path.as_bytes()), path.len() as u32),
            minor,
        }))
    }

    fn build(&mut self, head: &Bytes, scan: Scan) -> Result<Head, HeadError> {
        let slice = |(at, len): (u32, u32)| head.slice(at as usize..(at + len) as usize);
        let method =
            Method::from_bytes(&slice(scan.method)).map_err(|_| HeadError::Malformed("invalid request method"))?;
        let target = slice(scan.target);
        // RFC 9112 §3.2: `*` is for OPTIONS only, `host:port` for CONNECT only.
        match target.first() {
            Some(b'/') => {}
            _ if &target[..] == b"*" && method != Method::OPTIONS => {
                return Err(HeadError::Malformed("the `*` target is for OPTIONS only"));
            }
            _ if &target[..] != b"*" && !target.windows(3).any(|w| w == b"://") && method != Method::CONNECT => {
                return Err(HeadError::Malformed("a `host:port` target is for CONNECT only"));
            }
            _ => {}
        }
        // `OPTIONS http://host` (no path, no query) asks about the server as a
        // whole: it is `OPTIONS *` in absolute form (RFC 9112 §3.2.4). The
        // `http` crate would give it the path `/`, a question about one resource.
        let target =
            if method == Method::OPTIONS && is_authority_only(&target) { Bytes::from_static(b"*") } else { target };
        let uri = Uri::from_maybe_shared(target).map_err(|_| HeadError::Malformed("invalid request target"))?;
        let version = if scan.minor == 0 { Version::HTTP_10 } else { Version::HTTP_11 };
        // An absolute-form target's authority routes the request (RFC 9112 §3.2.2): no user info.
        if uri.authority().is_some_and(|a| !fields::valid_host(a.as_str().as_bytes())) {
            return Err(HeadError::Malformed("invalid authority in the request target"));
        }

        // Room for what the pipeline adds (`x-request-id`) without growing the map.
        let mut headers = HeaderMap::with_capacity(self.fields.len() + 2);
        let mut keep_alive = version == Version::HTTP_11;
        let mut length: Option<u64> = None;
        // Repeated or listed `Content-Length` (equal values): passed on as one.
        let (mut length_fields, mut length_listed) = (0usize, false);
        let mut codings = TransferCodings::default();
        let mut expect_continue = false;
        let mut upgrade = method == Method::CONNECT;
        let mut hosts = 0usize;
        for position in 0..self.fields.len() {
            let field = self.fields[position];
            let (name, meaning) = self
                .names
                .get(position, field.name(head), Meaning::of)
                .map_err(|_| HeadError::Malformed("invalid header name"))?;
            let value = field.value(head);
            match meaning {
                Meaning::Other => {}
                Meaning::ContentLength => {
                    fields::merge_content_length(value.as_bytes(), &mut length).map_err(HeadError::Malformed)?;
                    length_fields += 1;
                    length_listed |= value.as_bytes().contains(&b',');
                }
                Meaning::TransferEncoding => codings.add(value.as_bytes()),
                Meaning::Connection => {
                    for option in fields::connection_options(value.as_bytes()) {
                        if option.eq_ignore_ascii_case(b"close") {
                            keep_alive = false;
                        } else if option.eq_ignore_ascii_case(b"keep-alive") && version == Version::HTTP_10 {
                            keep_alive = true;
                        }
                    }
                }
                Meaning::Expect => expect_continue = value.as_bytes().eq_ignore_ascii_case(b"100-continue"),
                Meaning::Upgrade => upgrade |= version == Version::HTTP_11,
                Meaning::Host => {
                    if !self.hosts.valid(value.as_bytes()) {
                        return Err(HeadError::Malformed("invalid Host field"));
                    }
                    hosts += 1;
                }
            }
            headers.append(name, value);
        }

        // RFC 9112 §3.2: exactly one Host in HTTP/1.1 (at most one in 1.0), or
        // routing by host and the backend could each pick a different one.
        if hosts > 1 || (hosts == 0 && version == Version::HTTP_11) {
            return Err(HeadError::Malformed("an HTTP/1.1 request needs exactly one Host field"));
        }
        if (length_fields > 1 || length_listed)
            && let Some(n) = length
        {
            // RFC 9110 §8.6: `3, 3` is 3, and whoever reads the field after us should see just that.
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        }
        let framing = match (codings.outcome(), length) {
            // RFC 9112 §6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing.
            (TransferCoding::Absent, _) => match length {
                None | Some(0) => Framing::None,
                Some(n) => Framing::Length(n),
            },
            _ if version == Version::HTTP_10 => {
                return Err(HeadError::Malformed("Transfer-Encoding in an HTTP/1.0 request"));
            }
            // Both framings: the classic smuggling vector, refused rather than guessed (§6.3 item 3).
            (_, Some(_)) => return Err(HeadError::Malformed("both Transfer-Encoding and Content-Length")),
            // RFC 9112 §6.3: a request whose final coding is not chunked cannot be delimited.
            (TransferCoding::Invalid, None) => {
                return Err(HeadError::Malformed("the transfer codings do not end in one chunked"));
            }
            (TransferCoding::Unsupported, None) => return Err(HeadError::UnsupportedCoding),
            (TransferCoding::Chunked, None) => Framing::Chunked,
        };
        let mut request = Request::new(());
        *request.method_mut() = method;
        *request.uri_mut() = uri;
        *request.version_mut() = version;
        *request.headers_mut() = headers;
        Ok(Head { request, framing, keep_alive, expect_continue: expect_continue && framing != Framing::None, upgrade })
    }
}

/// What the request line said, as offsets into the head.
struct Scan {
    len: usize,
    method: (u32, u32),
    target: (u32, u32),
    minor: u8,
}

/// Whether an absolute-form target (`scheme://authority…`) has neither a
/// path nor a query.
fn is_authority_only(target: &[u8]) -> bool {
    let Some(at) = target.windows(3).position(|w| w == b"://") else { return false };
    !target[at + 3..].iter().any(|&b| b == b'/' || b == b'?')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(wire: &str) -> Result<Option<(Head, BytesMut)>, HeadError> {
        let mut buf = BytesMut::from(wire.as_bytes());
        Ok(HeadParser::default().parse(&mut buf, 16 * 1024, 100)?.map(|h| (h, buf)))
    }

    #[test]
    fn a_get_parses_into_parts_and_leaves_the_next_request_in_the_buffer() {
        let (head, rest) = parse("GET /a?b=1 HTTP/1.1\r\nHost: example.com\r\nX-Two: 1\r\nx-two: 2\r\n\r\nGET /next")
            .unwrap()
            .unwrap();
        assert_eq!(head.request.method(), Method::GET);
        assert_eq!(head.request.uri(), "/a?b=1");
        assert_eq!(head.request.version(), Version::HTTP_11);
        assert_eq!(head.request.headers()["host"], "example.com");
        assert_eq!(head.request.headers().get_all("x-two").iter().count(), 2);
        assert_eq!(head.framing, Framing::None);
        assert!(head.keep_alive && !head.expect_continue && !head.upgrade);
        assert_eq!(&rest[..], b"GET /next");
    }

    #[test]
    fn an_incomplete_head_waits_for_more() {
        assert!(parse("GET / HTTP/1.1\r\nHost: t\r\n").unwrap().is_none());
        assert!(parse("GE").unwrap().is_none());
    }

    #[test]
    fn body_framing_follows_rfc_9112() {
        let framing = |wire: &str| parse(&wire.replacen("\r\n", "\r\nHost: t\r\n", 1)).map(|h| h.unwrap().0.framing);
        assert_eq!(framing("POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n"), Ok(Framing::Length(5)));
        assert_eq!(framing("POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n"), Ok(Framing::Length(5)));
        assert_eq!(framing("POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n"), Ok(Framing::None));
        assert_eq!(framing("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"), Ok(Framing::Chunked));
        // We would have to take the gzip off before passing the body on.
        assert_eq!(
            framing("POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Err(HeadError::UnsupportedCoding)
        );
        for smuggling in [
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert!(matches!(framing(smuggling), Err(HeadError::Malformed(_))), "{smuggling:?}");
        }
    }

    #[test]
    fn http11_requests_need_exactly_one_host() {
        assert!(parse("GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap().is_some());
        assert!(parse("GET / HTTP/1.0\r\n\r\n").unwrap().is_some(), "HTTP/1.0 may leave it out");
        for wire in [
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n",
        ] {
            assert!(matches!(parse(wire), Err(HeadError::Malformed(_))), "{wire:?}");
        }
    }

    #[test]
    fn keep_alive_defaults_by_version_and_follows_connection() {
        let keep_alive = |wire: &str| parse(wire).unwrap().unwrap().0.keep_alive;
        assert!(keep_alive("GET / HTTP/1.1\r\nHost: t\r\n\r\n"));
        assert!(!keep_alive("GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"));
        assert!(!keep_alive("GET / HTTP/1.0\r\n\r\n"));
        assert!(keep_alive("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"));
    }

    #[test]
    fn expect_continue_and_upgrade_are_noticed() {
        let (head, _) =
            parse("PUT / HTTP/1.1\r\nHost: t\r\nExpect: 100-Continue\r\nContent-Length: 3\r\n\r\n").unwrap().unwrap();
        assert!(head.expect_continue);
        let (head, _) = parse("GET / HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n\r\n").unwrap().unwrap();
        assert!(!head.expect_continue, "no body, nothing to wait for");
        let (head, _) =
            parse("GET /ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n").unwrap().unwrap();
        assert!(head.upgrade);
        let (head, _) = parse("GET /ws HTTP/1.0\r\nUpgrade: websocket\r\n\r\n").unwrap().unwrap();
        assert!(!head.upgrade, "HTTP/1.0 has no Upgrade");
    }

    #[test]
    fn asterisk_and_authority_targets_belong_to_options_and_connect() {
        assert!(parse("OPTIONS * HTTP/1.1\r\nHost: t\r\n\r\n").is_ok());
        assert!(parse("CONNECT t:443 HTTP/1.1\r\nHost: t:443\r\n\r\n").is_ok());
        assert!(parse("GET http://t/a HTTP/1.1\r\nHost: t\r\n\r\n").is_ok());
        // OPTIONS for a whole server, in absolute form, is `OPTIONS *`.
        let (head, _) = parse("OPTIONS http://t:8080 HTTP/1.1\r\nHost: t:8080\r\n\r\n").unwrap().unwrap();
        assert_eq!(head.request.uri(), "*");
        for wire in ["OPTIONS http://t/ HTTP/1.1", "OPTIONS http://t?q HTTP/1.1", "GET http://t HTTP/1.1"] {
            let (head, _) = parse(&format!("{wire}\r\nHost: t\r\n\r\n")).unwrap().unwrap();
            assert_eq!(head.request.uri().host(), Some("t"), "{wire}: about a resource");
        }
        for wire in ["GET * HTTP/1.1\r\nHost: t\r\n\r\n", "GET t:443 HTTP/1.1\r\nHost: t\r\n\r\n"] {
            assert!(matches!(parse(wire), Err(HeadError::Malformed(_))), "{wire:?}");
        }
    }

    #[test]
    fn equal_content_lengths_repeated_or_listed_become_one_field() {
        for wire in [
            "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3, 3\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\ncontent-length: 3\r\n\r\n",
        ] {
            let (head, _) = parse(wire).unwrap().unwrap();
            assert_eq!(head.framing, Framing::Length(3), "{wire:?}");
            let values: Vec<_> = head.request.headers().get_all("content-length").iter().collect();
            assert_eq!(values, ["3"], "{wire:?}");
        }
        let (head, _) = parse("POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\n").unwrap().unwrap();
        assert_eq!(head.request.headers()["content-length"], "3");
        assert!(matches!(
            parse("POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3, 4\r\n\r\n"),
            Err(HeadError::Malformed("conflicting Content-Length values"))
        ));
    }

    #[test]
    fn too_many_headers_is_too_large_and_garbage_is_malformed() {
        let many: String = (0..101).map(|i| format!("X-{i}: v\r\n")).collect();
        assert!(matches!(parse(&format!("GET / HTTP/1.1\r\n{many}\r\n")), Err(HeadError::TooLarge)));
        let mut buf = BytesMut::from(format!("GET / HTTP/1.1\r\nHost: t\r\n{many}\r\n").as_bytes());
        assert!(
            HeadParser::default().parse(&mut buf, 16 * 1024, 200).unwrap().is_some(),
            "a higher limit parses on the heap"
        );
        let long = format!("GET / HTTP/1.1\r\nHost: t\r\nX-Long: {}\r\n\r\n", "a".repeat(9000));
        let mut buf = BytesMut::from(long.as_bytes());
        assert!(
            matches!(HeadParser::default().parse(&mut buf, 8192, 100), Err(HeadError::TooLarge)),
            "whole but too long"
        );
        let long = format!("\r\nGET /{} HTTP/1.1\r\nHost: t\r\n\r\n", "a".repeat(9000));
        let mut buf = BytesMut::from(long.as_bytes());
        assert!(
            matches!(HeadParser::default().parse(&mut buf, 8192, 100), Err(HeadError::UriTooLong)),
            "a request line that alone is over the limit"
        );
        assert_eq!(HeadError::too_large(&long.as_bytes()[..8192], 8192), HeadError::UriTooLong, "arriving");
        for garbage in [
            "GET / HTTP/1.1\r\nHost: t/evil\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: user@t\r\n\r\n",
            "GET http://user@t/ HTTP/1.1\r\nHost: t\r\n\r\n",
            "GARBAGE\r\n\r\n",
            "GET / HTTP/9.9\r\n\r\n",
            "GET /a b HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nBad Name: v\r\n\r\n",
        ] {
            assert!(matches!(parse(garbage), Err(HeadError::Malformed(_))), "{garbage:?}");
        }
    }
}
