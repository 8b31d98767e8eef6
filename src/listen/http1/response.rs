//! Responses to clients: the head encoded straight into the connection's
//! output buffer, the body framed as RFC 9112 §6 asks, small pieces copied
//! together so a small response leaves in one write, large ones queued
//! behind them without a copy.

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::{Buf, Bytes};
use http::header::{self, HeaderMap};
use http::response::Parts;
use http::{StatusCode, Version};

use crate::http1::{encode_chunk_size, encode_last_chunk, fields, itoa};
use crate::listen::date;

/// Data frames up to this size are copied into the output buffer; larger
/// ones are queued as they are and written with vectored I/O.
const COPY_LIMIT: usize = 16 * 1024;

/// How the response body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    /// No body: HEAD, 1xx, 204, 304, or an empty body.
    None,
    /// `Content-Length`; this many bytes still to send.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the connection closes (an HTTP/1.0 client, length unknown).
    UntilClose,
}

/// What the request said that shapes the response.
#[derive(Debug, Clone, Copy)]
pub(super) struct Exchange {
    pub version: Version,
    pub head_request: bool,
    /// The connection may carry another request afterwards (so far).
    pub keep_alive: bool,
}

/// Encodes `parts` into `out`. `body_length` is the body's exact size, if
/// known. Returns the body's framing and whether the connection stays open.
pub(super) fn encode_head(
    parts: &Parts,
    body_length: Option<u64>,
    exchange: Exchange,
    out: &mut Vec<u8>,
) -> (Framing, bool) {
    let status = parts.status;
    let mut keep_alive = exchange.keep_alive;
    let bodiless = exchange.head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;

    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("Unknown").as_bytes());
    out.extend_from_slice(b"\r\n");

    let mut declared: Option<u64> = None;
    let mut has_date = false;
    for (name, value) in &parts.headers {
        if name == header::CONTENT_LENGTH {
            // Written once, as a plain number, below (a repeat or a `3, 3`
            // list from a backend is one value; RFC 9110 §8.6). Unusable
            // values are dropped and the framing decides.
            let mut length = None;
            declared = fields::merge_content_length(value.as_bytes(), &mut length).ok().and(length);
            continue;
        } else if name == header::TRANSFER_ENCODING || name == header::CONNECTION {
            // Ours to decide; the pipeline removed the backend's.
            continue;
        } else if name == header::DATE {
            has_date = true;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }

    let framing = if bodiless {
        // A HEAD or 304 response may say the length a GET would have had
        // (from the backend, or the body's size when known); a 1xx or 204
        // must not (RFC 9110 §8.6).
        let says_length = exchange.head_request || status == StatusCode::NOT_MODIFIED;
        if let Some(n) = declared.or(body_length.filter(|&n| n > 0)).filter(|_| says_length) {
            write_length(out, n);
        }
        Framing::None
    } else if let Some(n) = declared {
        write_length(out, n);
        Framing::Length(n)
    } else if let Some(n) = body_length {
        write_length(out, n);
        Framing::Length(n)
    } else if exchange.version == Version::HTTP_11 {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        Framing::Chunked
    } else {
        keep_alive = false;
        Framing::UntilClose
    };
    let framing = if framing == Framing::Length(0) { Framing::None } else { framing };

    if !has_date {
        out.extend_from_slice(b"date: ");
        date::extend(out);
        out.extend_from_slice(b"\r\n");
    }
    if status == StatusCode::SWITCHING_PROTOCOLS {
        out.extend_from_slice(b"connection: upgrade\r\n");
    } else if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    } else if exchange.version == Version::HTTP_10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    (framing, keep_alive)
}

/// Encodes an interim (1xx) head from the backend, ahead of the final one.
pub(super) fn encode_interim(interim: &crate::interim::Interim, out: &mut Vec<u8>) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(interim.status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(interim.status.canonical_reason().unwrap_or("Informational").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in &interim.headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

fn write_length(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(b"content-length: ");
    out.extend_from_slice(itoa(n, &mut [0u8; 20]));
    out.extend_from_slice(b"\r\n");
}

/// Why a response body could not be framed as its head promised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FramingError {
    /// More data than the `Content-Length` said.
    TooLong,
    /// The body ended before the `Content-Length` was reached.
    TooShort,
}

/// Bytes waiting for the socket, in order: an owned buffer that small
/// pieces are copied into, and large frames queued between copies.
#[derive(Default)]
pub(super) struct Output {
    /// Frozen pieces ahead of `tail`, in wire order.
    queue: VecDeque<Bytes>,
    /// The newest small pieces, after everything in `queue`.
    pub tail: Vec<u8>,
    /// Bytes of `tail` already written (when `queue` is empty).
    written: usize,
}

impl Output {
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty() && self.tail.len() == self.written
    }

    /// Bytes not yet written.
    pub fn len(&self) -> usize {
        self.queue.iter().map(Bytes::len).sum::<usize>() + self.tail.len() - self.written
    }

    /// Adds a data frame with the framing's prefix and suffix.
    pub fn push_data(&mut self, framing: &mut Framing, data: Bytes) -> Result<(), FramingError> {
        match framing {
            Framing::None => return Ok(()),
            Framing::Length(left) => {
                *left = left.checked_sub(data.len() as u64).ok_or(FramingError::TooLong)?;
                self.push_bytes(data);
            }
            Framing::Chunked => {
                if data.is_empty() {
                    return Ok(());
                }
                encode_chunk_size(&mut self.tail, data.len());
                self.push_bytes(data);
                self.tail.extend_from_slice(b"\r\n");
            }
            Framing::UntilClose => self.push_bytes(data),
        }
        Ok(())
    }

    /// Ends the body: the last chunk (with trailers) for chunked bodies.
    pub fn push_end(&mut self, framing: Framing, trailers: Option<&HeaderMap>) -> Result<(), FramingError> {
        match framing {
            Framing::Length(left) if left > 0 => Err(FramingError::TooShort),
            Framing::Chunked => {
                encode_last_chunk(&mut self.tail, trailers);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn push_bytes(&mut self, data: Bytes) {
        if data.len() <= COPY_LIMIT {
            self.tail.extend_from_slice(&data);
            return;
        }
        if self.tail.len() > self.written {
            let mut tail = std::mem::take(&mut self.tail);
            tail.drain(..self.written);
            self.queue.push_back(Bytes::from(tail));
        } else {
            self.tail.clear();
        }
        self.written = 0;
        self.queue.push_back(data);
    }

    /// Up to `slices.len()` pieces to write, in order; returns how many.
    pub fn chunks<'a>(&'a self, slices: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        for piece in &self.queue {
            if n == slices.len() {
                return n;
            }
            slices[n] = IoSlice::new(piece);
            n += 1;
        }
        if n < slices.len() && self.tail.len() > self.written {
            slices[n] = IoSlice::new(&self.tail[self.written..]);
            n += 1;
        }
        n
    }

    /// The first piece to write (for writers without vectored I/O).
    pub fn first(&self) -> &[u8] {
        match self.queue.front() {
            Some(piece) => piece,
            None => &self.tail[self.written..],
        }
    }

    /// Drops `n` written bytes from the front.
    pub fn advance(&mut self, mut n: usize) {
        while n > 0 {
            let Some(front) = self.queue.front_mut() else { break };
            let step = n.min(front.len());
            front.advance(step);
            n -= step;
            if front.is_empty() {
                self.queue.pop_front();
            }
        }
        self.written += n;
        if self.queue.is_empty() && self.written == self.tail.len() {
            self.tail.clear();
            self.written = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Response;

    fn head(
        response: Response<()>,
        body_length: Option<u64>,
        version: Version,
        head_request: bool,
    ) -> (String, Framing, bool) {
        let (parts, ()) = response.into_parts();
        let mut out = Vec::new();
        let exchange = Exchange { version, head_request, keep_alive: true };
        let (framing, keep_alive) = encode_head(&parts, body_length, exchange, &mut out);
        (String::from_utf8(out).unwrap(), framing, keep_alive)
    }

    fn drain(output: &mut Output) -> Vec<u8> {
        let mut wire = Vec::new();
        while !output.is_empty() {
            let piece = output.first().to_vec();
            wire.extend_from_slice(&piece);
            output.advance(piece.len());
        }
        wire
    }

    #[test]
    fn a_known_length_becomes_content_length_and_a_date_is_added() {
        let response = Response::builder().status(200).header("x-a", "1").body(()).unwrap();
        let (wire, framing, keep_alive) = head(response, Some(5), Version::HTTP_11, false);
        assert!(wire.starts_with("HTTP/1.1 200 OK\r\nx-a: 1\r\ncontent-length: 5\r\ndate: "), "{wire}");
        assert!(wire.ends_with(" GMT\r\n\r\n"), "{wire}");
        assert_eq!((framing, keep_alive), (Framing::Length(5), true));
    }

    #[test]
    fn an_unknown_length_is_chunked_for_http11_and_close_delimited_for_http10() {
        let response = || Response::builder().header("date", "x").body(()).unwrap();
        let (wire, framing, keep_alive) = head(response(), None, Version::HTTP_11, false);
        assert_eq!(wire, "HTTP/1.1 200 OK\r\ndate: x\r\ntransfer-encoding: chunked\r\n\r\n");
        assert_eq!((framing, keep_alive), (Framing::Chunked, true));
        let (wire, framing, keep_alive) = head(response(), None, Version::HTTP_10, false);
        assert_eq!(wire, "HTTP/1.1 200 OK\r\ndate: x\r\nconnection: close\r\n\r\n");
        assert_eq!((framing, keep_alive), (Framing::UntilClose, false));
    }

    #[test]
    fn head_and_304_responses_have_no_body_but_keep_their_length() {
        let response = Response::builder().header("date", "x").header("content-length", "42").body(()).unwrap();
        let (wire, framing, _) = head(response, Some(0), Version::HTTP_11, true);
        assert_eq!(wire, "HTTP/1.1 200 OK\r\ndate: x\r\ncontent-length: 42\r\n\r\n");
        assert_eq!(framing, Framing::None);
        let response = Response::builder().status(304).header("date", "x").body(()).unwrap();
        let (wire, framing, _) = head(response, None, Version::HTTP_11, false);
        assert_eq!(wire, "HTTP/1.1 304 Not Modified\r\ndate: x\r\n\r\n");
        assert_eq!(framing, Framing::None);
    }

    #[test]
    fn content_length_is_written_once_as_a_number_and_never_on_a_204() {
        let response = Response::builder()
            .header("date", "x")
            .header("content-length", "3, 3")
            .header("content-length", "3")
            .body(())
            .unwrap();
        let (wire, framing, _) = head(response, Some(3), Version::HTTP_11, false);
        assert_eq!(wire, "HTTP/1.1 200 OK\r\ndate: x\r\ncontent-length: 3\r\n\r\n");
        assert_eq!(framing, Framing::Length(3));
        let response =
            Response::builder().status(204).header("date", "x").header("content-length", "5").body(()).unwrap();
        let (wire, framing, _) = head(response, Some(0), Version::HTTP_11, false);
        assert_eq!(wire, "HTTP/1.1 204 No Content\r\ndate: x\r\n\r\n");
        assert_eq!(framing, Framing::None);
    }

    #[test]
    fn chunks_small_and_large_come_out_in_order() {
        let mut output = Output::default();
        let mut framing = Framing::Chunked;
        output.tail.extend_from_slice(b"HEAD\r\n");
        output.push_data(&mut framing, Bytes::from_static(b"abc")).unwrap();
        let big = Bytes::from(vec![b'x'; COPY_LIMIT + 1]);
        output.push_data(&mut framing, big.clone()).unwrap();
        output.push_end(framing, None).unwrap();
        let expected =
            [&b"HEAD\r\n3\r\nabc\r\n"[..], format!("{:x}\r\n", big.len()).as_bytes(), &big, b"\r\n0\r\n\r\n"].concat();
        assert_eq!(output.len(), expected.len());
        let mut slices = [IoSlice::new(&[]); 4];
        assert_eq!(output.chunks(&mut slices), 3);
        assert_eq!(drain(&mut output), expected);
    }

    #[test]
    fn a_body_that_breaks_its_content_length_is_caught() {
        let mut output = Output::default();
        let mut framing = Framing::Length(3);
        assert_eq!(output.push_data(&mut framing, Bytes::from_static(b"abcd")), Err(FramingError::TooLong));
        let mut framing = Framing::Length(3);
        output.push_data(&mut framing, Bytes::from_static(b"ab")).unwrap();
        assert_eq!(output.push_end(framing, None), Err(FramingError::TooShort));
    }
}
