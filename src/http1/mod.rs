//! HTTP/1.1 wire pieces shared by the two sides that speak it: the
//! listener's server connection (`listen::http1`) and the backend client
//! (`upstream::h1`).

pub mod chunked;
pub mod fields;
pub mod names;

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::BytesMut;
use http::HeaderMap;
use tokio::io::AsyncRead;

/// Reads more of `io` into `read_buf`: `read_size` bytes of room, doubled
/// (up to `max`) each time a read fills it, so a body streams in large
/// reads while a head costs a small buffer. `Ok(0)` at end of stream.
pub fn poll_read_more<I: AsyncRead + ?Sized>(
    io: Pin<&mut I>,
    read_buf: &mut BytesMut,
    read_size: &mut usize,
    max: usize,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    read_buf.reserve(*read_size);
    let spare = read_buf.capacity() - read_buf.len();
    let n = ready!(tokio_util::io::poll_read_buf(io, cx, read_buf))?;
    if n == spare && *read_size < max {
        *read_size *= 2;
    }
    Poll::Ready(Ok(n))
}

/// `0\r\n`, the trailers (less the fields unfit for a trailer section,
/// [`fields::fit_for_trailers`]), and the final CRLF of a chunked body.
pub fn encode_last_chunk(wire: &mut Vec<u8>, trailers: Option<&HeaderMap>) {
    wire.extend_from_slice(b"0\r\n");
    for (name, value) in trailers.into_iter().flatten().filter(|(name, _)| fields::fit_for_trailers(name)) {
        wire.extend_from_slice(name.as_str().as_bytes());
        wire.extend_from_slice(b": ");
        wire.extend_from_slice(value.as_bytes());
        wire.extend_from_slice(b"\r\n");
    }
    wire.extend_from_slice(b"\r\n");
}

/// Decimal digits of `n` in `buf`, without going through `fmt`.
pub fn itoa(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[at..];
        }
    }
}

/// Writes the hexadecimal chunk-size line for a chunk of `len` bytes.
pub fn encode_chunk_size(wire: &mut Vec<u8>, len: usize) {
    let mut digits = [0u8; 16];
    let mut at = digits.len();
    let mut n = len;
    loop {
        at -= 1;
        digits[at] = b"0123456789abcdef"[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    wire.extend_from_slice(&digits[at..]);
    wire.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn itoa_writes_decimal() {
        assert_eq!(itoa(0, &mut [0; 20]), b"0");
        assert_eq!(itoa(1234567, &mut [0; 20]), b"1234567");
        assert_eq!(itoa(u64::MAX, &mut [0; 20]), u64::MAX.to_string().as_bytes());
    }

    #[test]
    fn chunk_sizes_are_written_in_hex() {
        for (len, line) in [(0, "0\r\n"), (10, "a\r\n"), (65536, "10000\r\n"), (usize::MAX, "ffffffffffffffff\r\n")] {
            let mut wire = Vec::new();
            encode_chunk_size(&mut wire, len);
            assert_eq!(wire, line.as_bytes());
        }
    }
}
