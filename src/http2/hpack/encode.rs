//! The stateless HPACK encoder (see the module doc of [`super`]).

use bytes::{BufMut, BytesMut};
use http::{HeaderName, HeaderValue};

/// A pseudo-header field (`:method`, `:scheme`, `:authority`, `:path`,
/// `:status`), from the static table entirely where name and value are there.
pub fn encode_pseudo(out: &mut BytesMut, name: &'static str, value: &[u8]) {
    let full = match (name, value) {
        (":method", b"GET") => Some(2),
        (":method", b"POST") => Some(3),
        (":path", b"/") => Some(4),
        (":scheme", b"http") => Some(6),
        (":scheme", b"https") => Some(7),
        (":status", b"200") => Some(8),
        (":status", b"204") => Some(9),
        (":status", b"206") => Some(10),
        (":status", b"304") => Some(11),
        (":status", b"400") => Some(12),
        (":status", b"404") => Some(13),
        (":status", b"500") => Some(14),
        _ => None,
    };
    if let Some(index) = full {
        out.put_u8(0x80 | index);
        return;
    }
    let index = match name {
        ":authority" => 1,
        ":method" => 2,
        ":path" => 4,
        ":scheme" => 6,
        ":status" => 8,
        _ => 0,
    };
    literal(out, 0x00, index, name.as_bytes(), value);
}

/// A regular field, as a literal never added to the table (and marked
/// "never indexed", §6.2.3, when the value is sensitive).
pub fn encode_field(out: &mut BytesMut, name: &HeaderName, value: &HeaderValue) {
    let flag = if value.is_sensitive() { 0x10 } else { 0x00 };
    literal(out, flag, static_name_index(name.as_str()), name.as_str().as_bytes(), value.as_bytes());
}

/// Literal field "without indexing" / "never indexed" (§6.2.2, §6.2.3).
fn literal(out: &mut BytesMut, flag: u8, name_index: usize, name: &[u8], value: &[u8]) {
    if name_index == 0 {
        out.put_u8(flag);
        string(out, name);
    } else {
        integer(out, flag, 4, name_index);
    }
    string(out, value);
}

/// A raw (not Huffman-coded) string literal (§5.2).
fn string(out: &mut BytesMut, s: &[u8]) {
    integer(out, 0x00, 7, s.len());
    out.extend_from_slice(s);
}

/// An integer with a `prefix`-bit prefix after the `flags` bits (§5.1).
fn integer(out: &mut BytesMut, flags: u8, prefix: u8, value: usize) {
    let max = (1usize << prefix) - 1;
    if value < max {
        out.put_u8(flags | value as u8);
        return;
    }
    out.put_u8(flags | max as u8);
    let mut rest = value - max;
    while rest >= 0x80 {
        out.put_u8(0x80 | (rest & 0x7f) as u8);
        rest >>= 7;
    }
    out.put_u8(rest as u8);
}

/// The static table's index for a regular field name (0: none). Every name
/// in the table is here: an index is one or two bytes where the literal name
/// is up to 28, and responses repeat `server`, `etag`, `last-modified`, ...
fn static_name_index(name: &str) -> usize {
    match name {
        "accept-charset" => 15,
        "accept-encoding" => 16,
        "accept-language" => 17,
        "accept-ranges" => 18,
        "accept" => 19,
        "access-control-allow-origin" => 20,
        "age" => 21,
        "allow" => 22,
        "authorization" => 23,
        "cache-control" => 24,
        "content-disposition" => 25,
        "content-encoding" => 26,
        "content-language" => 27,
        "content-length" => 28,
        "content-location" => 29,
        "content-range" => 30,
        "content-type" => 31,
        "cookie" => 32,
        "date" => 33,
        "etag" => 34,
        "expect" => 35,
        "expires" => 36,
        "from" => 37,
        "host" => 38,
        "if-match" => 39,
        "if-modified-since" => 40,
        "if-none-match" => 41,
        "if-range" => 42,
        "if-unmodified-since" => 43,
        "last-modified" => 44,
        "link" => 45,
        "location" => 46,
        "max-forwards" => 47,
        "proxy-authenticate" => 48,
        "proxy-authorization" => 49,
        "range" => 50,
        "referer" => 51,
        "refresh" => 52,
        "retry-after" => 53,
        "server" => 54,
        "set-cookie" => 55,
        "strict-transport-security" => 56,
        "transfer-encoding" => 57,
        "user-agent" => 58,
        "vary" => 59,
        "via" => 60,
        "www-authenticate" => 61,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::super::table::STATIC;
    use super::super::{Decoder, Name};
    use super::*;

    #[test]
    fn every_regular_name_in_the_static_table_is_encoded_by_its_first_index() {
        for (index, (name, _)) in STATIC.iter().enumerate().filter(|(_, (n, _))| !n.starts_with(':')) {
            let first = STATIC.iter().position(|(n, _)| n == name).unwrap() + 1;
            assert_eq!(static_name_index(name), first, "{name} at {}", index + 1);
        }
        assert_eq!(static_name_index("x-forwarded-for"), 0);
    }

    #[test]
    fn what_we_encode_decodes_to_the_same_fields() {
        let mut block = BytesMut::new();
        encode_pseudo(&mut block, ":method", b"POST");
        encode_pseudo(&mut block, ":scheme", b"http");
        encode_pseudo(&mut block, ":authority", b"backend:50051");
        encode_pseudo(&mut block, ":path", &[b'/'; 300]);
        encode_field(
            &mut block,
            &HeaderName::from_static("content-type"),
            &HeaderValue::from_static("application/grpc"),
        );
        let mut secret = HeaderValue::from_static("Bearer x");
        secret.set_sensitive(true);
        encode_field(&mut block, &HeaderName::from_static("authorization"), &secret);
        encode_field(&mut block, &HeaderName::from_static("x-trace-bin"), &HeaderValue::from_static("AAEC"));
        let mut out = Vec::new();
        Decoder::new(4096)
            .decode(&block.freeze(), |f| {
                let name = match f.name {
                    Name::Pseudo(p) | Name::Malformed(p) => String::from_utf8(p.to_vec()).unwrap(),
                    Name::Header(h) => h.as_str().to_owned(),
                };
                out.push((name, String::from_utf8(f.value.to_vec()).unwrap()));
            })
            .unwrap();
        let path = "/".repeat(300);
        let expected = [
            (":method", "POST"),
            (":scheme", "http"),
            (":authority", "backend:50051"),
            (":path", path.as_str()),
            ("content-type", "application/grpc"),
            ("authorization", "Bearer x"),
            ("x-trace-bin", "AAEC"),
        ];
        let expected: Vec<_> = expected.iter().map(|(n, v)| ((*n).to_owned(), (*v).to_owned())).collect();
        assert_eq!(out, expected);
    }
}
