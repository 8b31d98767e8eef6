//! Chunked transfer coding (RFC 9112 §7.1), decoded in place from a read
//! buffer: request bodies from clients and response bodies from backends.

use bytes::{Buf, Bytes, BytesMut};
use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};

/// Longest chunk-size line (with extensions) accepted.
const MAX_CHUNK_LINE: usize = 4 * 1024;
/// Largest trailer section accepted.
const MAX_TRAILERS: usize = 16 * 1024;

/// Why a chunked body could not be decoded; says what was wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkError(pub &'static str);

impl std::fmt::Display for ChunkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for ChunkError {}

/// Where a chunked body's decoder stands (RFC 9112 §7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Chunked {
    /// Expecting a chunk-size line.
    #[default]
    Size,
    /// Inside a chunk's data, this many bytes left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer fields, then an empty line.
    Trailers,
    /// Trailers were handed out; the end is next.
    Ended,
}

/// One step of chunked decoding.
#[derive(Debug)]
pub enum Decoded {
    Data(Bytes),
    Trailers(HeaderMap),
    End,
    /// The buffer holds no complete step.
    NeedMore,
}

impl Chunked {
    /// Takes the next step out of `buf`.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, ChunkError> {
        loop {
            match *self {
                Chunked::Size => match httparse::parse_chunk_size(buf) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        buf.advance(used);
                        *self = if size == 0 { Chunked::Trailers } else { Chunked::Data(size) };
                    }
                    Ok(httparse::Status::Partial) if buf.len() > MAX_CHUNK_LINE => {
                        return Err(ChunkError("chunk-size line too long"));
                    }
                    Ok(httparse::Status::Partial) => return Ok(Decoded::NeedMore),
                    Err(_) => return Err(ChunkError("invalid chunk size")),
                },
                Chunked::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let take = left.min(buf.len() as u64) as usize;
                    let data = buf.split_to(take).freeze();
                    *self = if left == take as u64 { Chunked::DataEnd } else { Chunked::Data(left - take as u64) };
                    return Ok(Decoded::Data(data));
                }
                Chunked::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(Decoded::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(ChunkError("chunk data longer than its size"));
                    }
                    buf.advance(2);
                    *self = Chunked::Size;
                }
                Chunked::Trailers => {
                    if buf.starts_with(b"\r\n") {
                        buf.advance(2);
                        *self = Chunked::Ended;
                        return Ok(Decoded::End);
                    }
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        if buf.len() > MAX_TRAILERS {
                            return Err(ChunkError("trailer section too large"));
                        }
                        return Ok(Decoded::NeedMore);
                    };
                    let section = buf.split_to(end + 4);
                    *self = Chunked::Ended;
                    return Ok(Decoded::Trailers(trailers(&section)?));
                }
                Chunked::Ended => return Ok(Decoded::End),
            }
        }
    }
}

/// Trailer fields as a header map (a rare path, so values are copied),
/// less those unfit for a trailer section ([`super::fields::fit_for_trailers`]):
/// dropped where they come in, they reach no client or backend by any protocol.
fn trailers(section: &[u8]) -> Result<HeaderMap, ChunkError> {
    let mut slots = [httparse::EMPTY_HEADER; 64];
    let fields = match httparse::parse_headers(section, &mut slots) {
        Ok(httparse::Status::Complete((_, fields))) => fields,
        _ => return Err(ChunkError("malformed trailer section")),
    };
    let mut map = HeaderMap::with_capacity(fields.len());
    for field in fields {
        let name = HeaderName::from_bytes(field.name.as_bytes());
        let value = HeaderValue::from_bytes(field.value);
        if let (Ok(name), Ok(value)) = (name, value)
            && super::fields::fit_for_trailers(&name)
        {
            map.append(name, value);
        }
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(wire: &[u8]) -> Result<(Vec<u8>, Option<HeaderMap>), ChunkError> {
        let mut buf = BytesMut::from(wire);
        let mut state = Chunked::Size;
        let (mut data, mut trailers) = (Vec::new(), None);
        loop {
            match state.decode(&mut buf)? {
                Decoded::Data(d) => data.extend_from_slice(&d),
                Decoded::Trailers(t) => trailers = Some(t),
                Decoded::End => return Ok((data, trailers)),
                Decoded::NeedMore => panic!("incomplete: {state:?}"),
            }
        }
    }

    #[test]
    fn chunks_with_extensions_and_trailers_decode() {
        let (data, trailers) =
            decode_all(b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 11\r\nContent-Length: 9\r\n\r\n").unwrap();
        assert_eq!(data, b"hello world");
        let trailers = trailers.unwrap();
        assert_eq!(trailers["x-sum"], "11");
        assert!(!trailers.contains_key("content-length"), "unfit for a trailer section");
    }

    #[test]
    fn a_chunk_split_across_reads_comes_out_in_pieces() {
        let mut state = Chunked::Size;
        let mut buf = BytesMut::from(&b"a\r\n01234"[..]);
        assert!(matches!(state.decode(&mut buf).unwrap(), Decoded::Data(d) if &d[..] == b"01234"));
        assert!(matches!(state.decode(&mut buf).unwrap(), Decoded::NeedMore));
        buf.extend_from_slice(b"56789\r\n0\r\n\r\n");
        assert!(matches!(state.decode(&mut buf).unwrap(), Decoded::Data(d) if &d[..] == b"56789"));
        assert!(matches!(state.decode(&mut buf).unwrap(), Decoded::End));
        assert!(buf.is_empty());
    }

    #[test]
    fn broken_chunks_are_refused() {
        assert!(matches!(decode_all(b"zz\r\nhello\r\n0\r\n\r\n"), Err(ChunkError(_))));
        assert!(matches!(decode_all(b"2\r\nhello\r\n0\r\n\r\n"), Err(ChunkError(_))));
        let long_line = [b"1;".as_slice(), &vec![b'x'; MAX_CHUNK_LINE + 1]].concat();
        assert!(matches!(Chunked::Size.decode(&mut BytesMut::from(&long_line[..])), Err(ChunkError(_))));
    }
}
