//! Reading the fields of a head httparse has accepted, the same way for
//! client requests and backend responses: where each field sits, its value
//! shared with the head's bytes, and the framing fields (RFC 9112 §6).

use bytes::Bytes;
use http::HeaderValue;

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

/// Whether a `Transfer-Encoding` field ends in `chunked`: the final coding
/// of the final field decides (RFC 9112 §6.3).
pub fn ends_chunked(value: &[u8]) -> bool {
    value.rsplit(|&b| b == b',').next().map(<[u8]>::trim_ascii).unwrap_or_default().eq_ignore_ascii_case(b"chunked")
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
    fn only_a_final_chunked_coding_counts() {
        assert!(ends_chunked(b"chunked"));
        assert!(ends_chunked(b"gzip, Chunked "));
        assert!(!ends_chunked(b"chunked, gzip"));
        assert!(!ends_chunked(b""));
    }
}
