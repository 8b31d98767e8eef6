//! The response head: parsed by httparse, interim 1xx responses skipped,
//! and the body's framing decided as RFC 9112 §6.3 orders it.

use std::mem::MaybeUninit;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{StatusCode, Version};

use super::{H1Error, MAX_HEAD_BYTES, MAX_HEADERS};
use crate::http1::fields::{self, Field, TransferCoding, TransferCodings};
use crate::http1::names::NameCache;
use crate::interim::Interim;

/// Fields that describe this connection and are consumed here rather than
/// passed on (RFC 9110 §7.6.1; `Transfer-Encoding` is read above first).
/// `Connection` stays only when it names other fields, so that the proxy's
/// hop-by-hop pass removes those too.
static CONNECTION_LEVEL: [HeaderName; 4] =
    [HeaderName::from_static("keep-alive"), HeaderName::from_static("proxy-connection"), header::TE, header::UPGRADE];

/// How the response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    /// No body (HEAD, 204, 304), whatever the head declares.
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the backend closes the connection.
    UntilClose,
}

/// A parsed final response head.
pub(super) struct Head {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    framing: Framing,
    /// The connection may carry another request after this response.
    pub keep_alive: bool,
}

impl Head {
    /// The head as `http` parts, with the framing the body reader needs.
    pub fn into_parts(self) -> (http::response::Parts, Framing) {
        let mut response = http::Response::new(());
        *response.status_mut() = self.status;
        *response.version_mut() = self.version;
        *response.headers_mut() = self.headers;
        (response.into_parts().0, self.framing)
    }
}

/// Parses response heads for one connection, keeping what the next head
/// can reuse: the field table, and the header names already parsed, by
/// position (see `http1::names`).
#[derive(Default)]
pub(super) struct HeadParser {
    names: NameCache<Role>,
    fields: Vec<Field>,
    /// Interim (1xx) heads before the final one of the current response.
    interim: u32,
}

/// Interim responses allowed before the final one: a backend could
/// otherwise hold a request open for ever with a stream of 100s.
const MAX_INTERIM: u32 = 32;

/// What a field means to the connection, worked out once per name.
#[derive(Clone, Copy)]
enum Role {
    /// Passed on as it is.
    EndToEnd,
    Connection,
    ContentLength,
    TransferEncoding,
    /// Consumed here (`CONNECTION_LEVEL`).
    ConnectionLevel,
}

impl Role {
    fn of(name: &HeaderName) -> Self {
        if name == header::CONNECTION {
            Role::Connection
        } else if name == header::CONTENT_LENGTH {
            Role::ContentLength
        } else if name == header::TRANSFER_ENCODING {
            Role::TransferEncoding
        } else if CONNECTION_LEVEL.contains(name) {
            Role::ConnectionLevel
        } else {
            Role::EndToEnd
        }
    }
}

impl HeadParser {
    /// Parses the final response head at the start of `buf` and removes it
    /// (and any interim 1xx before it). `Ok(None)`: the head is not complete yet.
    pub fn parse(&mut self, buf: &mut BytesMut, head_request: bool) -> Result<Option<Head>, H1Error> {
        loop {
            self.fields.clear();
            let (len, code, minor) = {
                let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
                let mut response = httparse::Response::new(&mut []);
                let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
                    &mut response,
                    buf,
                    &mut slots,
                );
                let len = match parsed {
                    Ok(httparse::Status::Complete(len)) => len,
                    Ok(httparse::Status::Partial) => return Ok(None),
                    Err(httparse::Error::TooManyHeaders) => return Err(H1Error::HeadTooLarge),
                    Err(e) => return Err(H1Error::Malformed(fields::parse_error(e))),
                };
                self.fields.extend(response.headers.iter().map(|h| Field::locate(buf, h)));
                (len, response.code.unwrap_or(0), response.version.unwrap_or(1))
            };
            // A head that arrived whole in one read is held to the same limit as one still arriving.
            if len > MAX_HEAD_BYTES {
                return Err(H1Error::HeadTooLarge);
            }
            let status = StatusCode::from_u16(code).map_err(|_| H1Error::Malformed("status code out of range"))?;
            let head = buf.split_to(len).freeze();
            if status.is_informational() {
                if status == StatusCode::SWITCHING_PROTOCOLS {
                    return Err(H1Error::Malformed("101 Switching Protocols without an upgrade request"));
                }
                self.interim += 1;
                if self.interim > MAX_INTERIM {
                    return Err(H1Error::Malformed("too many interim responses"));
                }
                // A 100 answers an `Expect` the listener already answered the
                // client itself; 102, 103 and the rest go on (RFC 9110 §15.2).
                if status != StatusCode::CONTINUE {
                    crate::interim::forward(Interim { status, headers: self.interim_headers(&head) });
                }
                continue;
            }
            self.interim = 0;
            return self.build(status, minor, &head, head_request).map(Some);
        }
    }

    /// An interim head's end-to-end fields. Rare, so the name cache (kept
    /// for final heads, by position) is left alone.
    fn interim_headers(&self, head: &Bytes) -> HeaderMap {
        let mut headers = HeaderMap::with_capacity(self.fields.len());
        for field in &self.fields {
            let Ok(name) = HeaderName::from_bytes(field.name(head)) else { continue };
            if matches!(Role::of(&name), Role::EndToEnd) {
                headers.append(name, field.value(head));
            }
        }
        headers
    }

    fn build(&mut self, status: StatusCode, minor: u8, head: &Bytes, head_request: bool) -> Result<Head, H1Error> {
        // Room for what the pipeline adds (`via`, `x-request-id`, `alt-svc`) without growing the map.
        let mut headers = HeaderMap::with_capacity(self.fields.len() + 3);
        let mut keep_alive = minor == 1;
        let mut length: Option<u64> = None;
        let (mut length_fields, mut length_listed) = (0usize, false);
        let mut codings = TransferCodings::default();
        for position in 0..self.fields.len() {
            let field = self.fields[position];
            let (name, role) = self
                .names
                .get(position, field.name(head), Role::of)
                .map_err(|_| H1Error::Malformed("invalid header name"))?;
            let value = field.value(head);
            match role {
                Role::EndToEnd => {}
                Role::Connection => {
                    let mut names_fields = false;
                    for option in fields::connection_options(value.as_bytes()) {
                        if option.eq_ignore_ascii_case(b"close") {
                            keep_alive = false;
                        } else if option.eq_ignore_ascii_case(b"keep-alive") {
                            keep_alive = true;
                        } else {
                            names_fields = true;
                        }
                    }
                    // Kept only when it names other fields, for the proxy's hop-by-hop pass to remove.
                    if names_fields {
                        headers.append(name, value);
                    }
                    continue;
                }
                Role::ContentLength => {
                    fields::merge_content_length(value.as_bytes(), &mut length).map_err(H1Error::Framing)?;
                    length_fields += 1;
                    length_listed |= value.as_bytes().contains(&b',');
                }
                Role::TransferEncoding => {
                    codings.add(value.as_bytes());
                    continue;
                }
                Role::ConnectionLevel => continue,
            }
            headers.append(name, value);
        }
        if status == StatusCode::NO_CONTENT {
            // RFC 9110 §8.6: never on a 204, whatever the backend says.
            headers.remove(header::CONTENT_LENGTH);
        } else if (length_fields > 1 || length_listed)
            && let Some(n) = length
        {
            // `3, 3` is 3 (RFC 9110 §8.6); the client gets one field, one value.
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        }
        let framing = if head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
            Framing::Empty
        } else {
            match (codings.outcome(), length) {
                (TransferCoding::Chunked, _) => {
                    // Chunked wins over a length, which must not be passed on (RFC 9112 §6.3).
                    headers.remove(header::CONTENT_LENGTH);
                    Framing::Chunked
                }
                // The body would reach the client still carrying a coding
                // nobody tells it about (Transfer-Encoding is hop-by-hop, and
                // HTTP/2 and HTTP/3 have none): 502, as nginx answers too.
                (TransferCoding::Unsupported | TransferCoding::Invalid, _) => {
                    return Err(H1Error::Framing("a transfer coding other than chunked"));
                }
                (TransferCoding::Absent, None) => {
                    keep_alive = false;
                    Framing::UntilClose
                }
                (TransferCoding::Absent, Some(n)) => Framing::Length(n),
            }
        };
        let version = if minor == 0 { Version::HTTP_10 } else { Version::HTTP_11 };
        Ok(Head { status, version, headers, framing, keep_alive })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(wire: &str, head_request: bool) -> Result<Option<(Head, BytesMut)>, H1Error> {
        let mut buf = BytesMut::from(wire.as_bytes());
        Ok(HeadParser::default().parse(&mut buf, head_request)?.map(|h| (h, buf)))
    }

    #[test]
    fn names_remembered_from_an_earlier_head_are_reused_only_where_they_match() {
        let mut parser = HeadParser::default();
        let mut first = BytesMut::from("HTTP/1.1 200 OK\r\nX-One: 1\r\nContent-Length: 0\r\n\r\n");
        let head = parser.parse(&mut first, false).unwrap().unwrap();
        assert_eq!(head.headers["x-one"], "1");
        let mut second = BytesMut::from("HTTP/1.1 200 OK\r\nX-Two: 2\r\ncontent-length: 0\r\nX-Three: 3\r\n\r\n");
        let head = parser.parse(&mut second, false).unwrap().unwrap();
        let names: Vec<_> = head.headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["x-two", "content-length", "x-three"]);
        assert_eq!(head.framing, Framing::Length(0));
        let mut third = BytesMut::from("HTTP/1.1 200 OK\r\nX-Two: 22\r\nContent-Length: 0\r\n\r\n");
        let head = parser.parse(&mut third, false).unwrap().unwrap();
        assert_eq!(head.headers["x-two"], "22");
        assert_eq!(head.headers.len(), 2);
        // The meaning goes with the name: where Content-Length stood, a
        // Transfer-Encoding now decides the framing, and a remembered
        // consumed field's position holds an end-to-end one.
        let mut fourth =
            BytesMut::from("HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5\r\nTransfer-Encoding: chunked\r\n\r\n");
        let head = parser.parse(&mut fourth, false).unwrap().unwrap();
        assert_eq!(head.framing, Framing::Chunked);
        assert!(head.headers.is_empty());
        let mut fifth = BytesMut::from("HTTP/1.1 200 OK\r\nX-Keep: 1\r\nContent-Length: 7\r\n\r\n");
        let head = parser.parse(&mut fifth, false).unwrap().unwrap();
        assert_eq!(head.framing, Framing::Length(7));
        assert_eq!(head.headers["x-keep"], "1");
    }

    #[test]
    fn equal_content_lengths_become_one_field_and_a_204_loses_its_length() {
        for wire in [
            "HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\n\r\nabc",
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
        ] {
            let (head, rest) = parsed(wire, false).unwrap().unwrap();
            assert_eq!(head.framing, Framing::Length(3));
            let values: Vec<_> = head.headers.get_all("content-length").iter().collect();
            assert_eq!(values, ["3"], "{wire:?}");
            assert_eq!(&rest[..], b"abc");
        }
        let (head, rest) = parsed("HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello", false).unwrap().unwrap();
        assert_eq!(head.framing, Framing::Empty);
        assert!(!head.headers.contains_key("content-length"));
        assert_eq!(&rest[..], b"hello", "left for the pool's check, which will not reuse the connection");
        let (head, _) = parsed("HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n", false).unwrap().unwrap();
        assert_eq!(head.headers["content-length"], "5", "a 304 tells the length the 200 would have had");
    }

    #[test]
    fn a_length_delimited_response_leaves_its_body_in_the_buffer() {
        let (head, rest) =
            parsed("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello", false).unwrap().unwrap();
        assert_eq!(head.framing, Framing::Length(5));
        assert!(head.keep_alive);
        assert_eq!(head.headers["x-a"], "b");
        assert_eq!(&rest[..], b"hello");
    }

    #[test]
    fn connection_level_fields_are_consumed_and_named_ones_left_for_the_proxy() {
        let wire = "HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\
                    Transfer-Encoding: chunked\r\nX-A: b\r\n\r\n";
        let (head, _) = parsed(wire, false).unwrap().unwrap();
        assert_eq!(head.headers.len(), 1, "{:?}", head.headers);
        let wire = "HTTP/1.1 200 OK\r\nConnection: x-hop\r\nX-Hop: 1\r\nContent-Length: 0\r\n\r\n";
        let (head, _) = parsed(wire, false).unwrap().unwrap();
        assert_eq!(head.headers[header::CONNECTION], "x-hop");
    }

    #[test]
    fn a_partial_head_asks_for_more() {
        assert!(parsed("HTTP/1.1 200 OK\r\nContent-Len", false).unwrap().is_none());
    }

    #[test]
    fn interim_responses_are_skipped() {
        let wire = "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n";
        let (head, rest) = parsed(wire, false).unwrap().unwrap();
        assert_eq!(head.status, StatusCode::NO_CONTENT);
        assert_eq!(head.framing, Framing::Empty);
        assert!(rest.is_empty());
    }

    #[test]
    fn chunked_wins_over_content_length_and_the_length_is_dropped() {
        let wire = "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
        let (head, _) = parsed(wire, false).unwrap().unwrap();
        assert_eq!(head.framing, Framing::Chunked);
        assert!(!head.headers.contains_key(header::CONTENT_LENGTH));
    }

    #[test]
    fn a_head_over_the_limit_is_refused_even_when_it_arrived_whole() {
        let wire = format!("HTTP/1.1 200 OK\r\nX-Big: {}\r\nContent-Length: 0\r\n\r\n", "a".repeat(MAX_HEAD_BYTES));
        assert!(matches!(parsed(&wire, false), Err(H1Error::HeadTooLarge)));
    }

    #[test]
    fn an_endless_run_of_interim_responses_is_refused() {
        let wire = "HTTP/1.1 100 Continue\r\n\r\n".repeat(MAX_INTERIM as usize)
            + "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(parsed(&wire, false).unwrap().unwrap().0.status, StatusCode::OK, "up to the limit");
        let wire = "HTTP/1.1 103 Early Hints\r\n\r\n".repeat(MAX_INTERIM as usize + 1);
        assert!(matches!(parsed(&wire, false), Err(H1Error::Malformed(_))));
    }

    #[test]
    fn transfer_codings_we_cannot_take_off_are_a_framing_error() {
        for codings in ["gzip, chunked", "chunked, chunked", "gzip", "chunked\r\nTransfer-Encoding: br"] {
            let wire = format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: {codings}\r\n\r\n");
            assert!(matches!(parsed(&wire, false), Err(H1Error::Framing(_))), "{codings:?}");
        }
    }

    #[test]
    fn no_length_means_until_close_and_no_reuse() {
        let (head, _) = parsed("HTTP/1.1 200 OK\r\n\r\n", false).unwrap().unwrap();
        assert_eq!(head.framing, Framing::UntilClose);
        assert!(!head.keep_alive);
    }

    #[test]
    fn http_1_0_closes_unless_it_says_keep_alive() {
        let (head, _) = parsed("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", false).unwrap().unwrap();
        assert!(!head.keep_alive);
        let (head, _) =
            parsed("HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n", false).unwrap().unwrap();
        assert!(head.keep_alive);
        let (head, _) =
            parsed("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", false).unwrap().unwrap();
        assert!(!head.keep_alive);
    }

    #[test]
    fn a_head_response_has_no_body_whatever_it_declares() {
        let (head, _) = parsed("HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n", true).unwrap().unwrap();
        assert_eq!(head.framing, Framing::Empty);
        assert_eq!(head.headers[header::CONTENT_LENGTH], "1234");
    }

    #[test]
    fn conflicting_or_bad_lengths_are_refused() {
        for wire in [
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 3, 4\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: +3\r\n\r\n",
        ] {
            assert!(matches!(parsed(wire, false), Err(H1Error::Framing(_))), "{wire}");
        }
        let (head, _) = parsed("HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\n\r\n", false).unwrap().unwrap();
        assert_eq!(head.framing, Framing::Length(3));
    }

    #[test]
    fn garbage_and_unasked_switches_are_malformed() {
        assert!(matches!(parsed("SSH-2.0-OpenSSH\r\n\r\n", false), Err(H1Error::Malformed(_))));
        assert!(matches!(
            parsed("HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n", false),
            Err(H1Error::Malformed(_))
        ));
    }

    #[test]
    fn too_many_headers_is_too_large() {
        let mut wire = String::from("HTTP/1.1 200 OK\r\n");
        for i in 0..=MAX_HEADERS {
            wire.push_str(&format!("x-{i}: v\r\n"));
        }
        wire.push_str("\r\n");
        assert!(matches!(parsed(&wire, false), Err(H1Error::HeadTooLarge)));
    }
}
