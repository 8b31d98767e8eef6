//! The response body: read from the backend's socket only when the client
//! side asks for more, handed on without copying (each frame is a slice of
//! the read buffer), and the connection returned to its pool the moment the
//! last byte is out.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};
use http_body::{Frame, SizeHint};

use super::request::{Pump, PumpError};
use super::response::Framing;
use super::{Connection, H1Error};
use crate::upstream::Target;

/// Longest chunk-size line (with extensions) accepted.
const MAX_CHUNK_LINE: usize = 4 * 1024;
/// Largest trailer section accepted.
const MAX_TRAILERS: usize = 16 * 1024;

/// A backend's response body, streaming from its connection.
pub struct ResponseBody {
    /// `None` once the body ended (the connection went back or was closed).
    conn: Option<Connection>,
    state: State,
    /// The rest of a request body still being sent.
    pump: Option<Box<Pump>>,
    /// The connection can carry another exchange once this body ends.
    reusable: bool,
    /// Where a reusable connection goes back to.
    home: Arc<Target>,
}

/// What the next poll does, decided before acting on the connection.
enum Step {
    Data(Bytes, bool),
    Trailers(HeaderMap),
    End,
    Fail(H1Error),
    Read,
}

enum State {
    Length(u64),
    Chunked(Chunked),
    UntilClose,
    Done,
}

impl ResponseBody {
    pub(super) fn new(
        conn: Connection,
        framing: Framing,
        pump: Option<Box<Pump>>,
        reusable: bool,
        target: &Arc<Target>,
    ) -> Self {
        let state = match framing {
            Framing::Empty | Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::Chunked(Chunked::Size),
            Framing::UntilClose => State::UntilClose,
        };
        let mut body = Self { conn: Some(conn), state, pump, reusable, home: Arc::clone(target) };
        if matches!(body.state, State::Done) {
            // Nothing to read: settle the connection now, since an empty body is never polled.
            body.finish();
        }
        body
    }

    /// The body ended: a clean connection with the request fully sent goes back to the pool.
    fn finish(&mut self) {
        self.state = State::Done;
        let Some(conn) = self.conn.take() else { return };
        if self.reusable && self.pump.is_none() && conn.read_buf.is_empty() {
            self.home.pool.put(conn);
        }
        self.pump = None;
    }

    /// Drives the rest of the request body, if any, as far as it goes.
    fn poll_pump(&mut self, cx: &mut Context<'_>) -> Result<(), H1Error> {
        let (Some(pump), Some(conn)) = (&mut self.pump, &mut self.conn) else { return Ok(()) };
        match pump.poll(cx, &mut conn.io) {
            Poll::Pending => Ok(()),
            Poll::Ready(Ok(())) => {
                self.pump = None;
                Ok(())
            }
            Poll::Ready(Err(PumpError::Write(_))) => {
                // The backend stopped reading; its response may still be whole.
                self.pump = None;
                self.reusable = false;
                Ok(())
            }
            Poll::Ready(Err(e)) => Err(e.into()),
        }
    }

    fn fail(&mut self, error: H1Error) -> Poll<Option<Result<Frame<Bytes>, H1Error>>> {
        self.state = State::Done;
        self.conn = None;
        self.pump = None;
        Poll::Ready(Some(Err(error)))
    }
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = H1Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, H1Error>>> {
        let this = &mut *self;
        if let Err(e) = this.poll_pump(cx) {
            return this.fail(e);
        }
        loop {
            let Some(conn) = &mut this.conn else { return Poll::Ready(None) };
            let step = if conn.read_buf.is_empty() {
                Step::Read
            } else {
                match &mut this.state {
                    State::Done => Step::End,
                    State::Length(left) => {
                        let take = (*left).min(conn.read_buf.len() as u64) as usize;
                        *left -= take as u64;
                        Step::Data(conn.read_buf.split_to(take).freeze(), *left == 0)
                    }
                    State::UntilClose => Step::Data(conn.read_buf.split().freeze(), false),
                    State::Chunked(chunked) => match chunked.decode(&mut conn.read_buf) {
                        Ok(Decoded::Data(data)) => Step::Data(data, false),
                        Ok(Decoded::Trailers(trailers)) => Step::Trailers(trailers),
                        Ok(Decoded::End) => Step::End,
                        Ok(Decoded::NeedMore) => Step::Read,
                        Err(e) => Step::Fail(e),
                    },
                }
            };
            match step {
                Step::Data(data, last) => {
                    if last {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Step::Trailers(trailers) => return Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
                Step::End => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Step::Fail(e) => return this.fail(e),
                Step::Read => {}
            }
            match conn.poll_fill(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) if matches!(this.state, State::UntilClose) => {
                    this.reusable = false;
                    this.finish();
                    return Poll::Ready(None);
                }
                Poll::Ready(Ok(0)) => return this.fail(H1Error::Truncated),
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return this.fail(H1Error::Io(e)),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Done => SizeHint::with_exact(0),
            State::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

/// Where a chunked body's decoder stands (RFC 9112 §7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunked {
    /// Expecting a chunk-size line.
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
enum Decoded {
    Data(Bytes),
    Trailers(HeaderMap),
    End,
    /// The buffer holds no complete step.
    NeedMore,
}

impl Chunked {
    /// Takes the next step out of `buf`.
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, H1Error> {
        loop {
            match *self {
                Chunked::Size => match httparse::parse_chunk_size(buf) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        buf.advance(used);
                        *self = if size == 0 { Chunked::Trailers } else { Chunked::Data(size) };
                    }
                    Ok(httparse::Status::Partial) if buf.len() > MAX_CHUNK_LINE => {
                        return Err(H1Error::Framing("chunk-size line too long"));
                    }
                    Ok(httparse::Status::Partial) => return Ok(Decoded::NeedMore),
                    Err(_) => return Err(H1Error::Framing("invalid chunk size")),
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
                        return Err(H1Error::Framing("chunk data longer than its size"));
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
                            return Err(H1Error::Framing("trailer section too large"));
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

/// Trailer fields as a header map (a rare path, so values are copied).
fn trailers(section: &[u8]) -> Result<HeaderMap, H1Error> {
    let mut slots = [httparse::EMPTY_HEADER; 64];
    let fields = match httparse::parse_headers(section, &mut slots) {
        Ok(httparse::Status::Complete((_, fields))) => fields,
        _ => return Err(H1Error::Framing("malformed trailer section")),
    };
    let mut map = HeaderMap::with_capacity(fields.len());
    for field in fields {
        let name = HeaderName::from_bytes(field.name.as_bytes());
        let value = HeaderValue::from_bytes(field.value);
        if let (Ok(name), Ok(value)) = (name, value) {
            map.append(name, value);
        }
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(wire: &[u8]) -> Result<(Vec<u8>, Option<HeaderMap>), H1Error> {
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
        let (data, trailers) = decode_all(b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 11\r\n\r\n").unwrap();
        assert_eq!(data, b"hello world");
        assert_eq!(trailers.unwrap()["x-sum"], "11");
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
        assert!(matches!(decode_all(b"zz\r\nhello\r\n0\r\n\r\n"), Err(H1Error::Framing(_))));
        assert!(matches!(decode_all(b"2\r\nhello\r\n0\r\n\r\n"), Err(H1Error::Framing(_))));
        let long_line = [b"1;".as_slice(), &vec![b'x'; MAX_CHUNK_LINE + 1]].concat();
        assert!(matches!(Chunked::Size.decode(&mut BytesMut::from(&long_line[..])), Err(H1Error::Framing(_))));
    }
}
