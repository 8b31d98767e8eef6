//! The request half: the body that has already arrived is gathered so a
//! small request goes out in one write with a `Content-Length`; a body still
//! arriving is streamed after the head by a [`Pump`], chunked unless its
//! length is known.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker, ready};

use bytes::{Buf, Bytes};
use http::header::{self, HeaderMap, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request};
use http_body::Body as _;
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;

use crate::body::{Body, BoxError};
use crate::http1::{encode_last_chunk, fields, itoa};
use crate::pipeline::forwarded::Forwarding;

/// Most body bytes gathered before the head is written; the rest streams.
const GATHER_LIMIT: usize = 64 * 1024;

/// How the request body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body and no framing header.
    None,
    /// `Content-Length` (set by the client or by us).
    Length(u64),
    /// `Transfer-Encoding: chunked`, for bodies of unknown length or with trailers.
    Chunked,
}

/// A request ready to go out: its head fields, the body that had arrived,
/// and the body still to come.
pub struct Prepared {
    method: Method,
    /// The origin-form request target (path and query), shared with the URI it came from.
    target: PathAndQuery,
    headers: HeaderMap,
    framing: Framing,
    /// Body bytes gathered before the first write.
    gathered: Vec<Bytes>,
    /// Trailers that arrived with a gathered body.
    trailers: Option<HeaderMap>,
    /// The body still arriving (streamed by a [`Pump`] after the head).
    rest: Option<Body>,
    /// Set once the rest of the body went to a pump: no retry after that.
    rest_taken: bool,
    /// Forwarding fields written after `headers`.
    forwarding: Forwarding,
    /// Head and gathered body as written, kept for a retry.
    wire: Vec<u8>,
}

impl Prepared {
    /// Takes the body frames that have already arrived (without waiting)
    /// and decides the framing. Fails only when reading the client's body does.
    ///
    /// Not async: it never waits, and a future here would be built and moved
    /// whole (request and all) on every request. A frame not there yet is
    /// polled again, with the task's waker, by the pump that sends the rest.
    pub fn gather(req: Request<Body>, forwarding: Forwarding) -> Result<Self, super::H1Error> {
        let (parts, mut body) = req.into_parts();
        let mut cx = Context::from_waker(Waker::noop());
        let mut gathered = Vec::new();
        let mut gathered_len = 0usize;
        let mut trailers = None;
        let mut ended = body.is_end_stream();
        while !ended && gathered_len < GATHER_LIMIT {
            let next = Pin::new(&mut body).poll_frame(&mut cx);
            match next {
                Poll::Pending => break,
                Poll::Ready(None) => ended = true,
                Poll::Ready(Some(Err(e))) => return Err(super::H1Error::ClientBody(e)),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        gathered_len += data.len();
                        if !data.is_empty() {
                            gathered.push(data);
                        }
                        ended = body.is_end_stream();
                    }
                    Err(frame) => {
                        trailers = frame.into_trailers().ok();
                        ended = true;
                    }
                },
            }
        }
        let declared = declared_length(&parts.headers)?;
        let framing = if ended {
            match declared {
                _ if trailers.is_some() => Framing::Chunked,
                Some(n) if n != gathered_len as u64 => {
                    return Err(super::H1Error::RequestLength(if n > gathered_len as u64 {
                        "shorter"
                    } else {
                        "longer"
                    }));
                }
                Some(n) => Framing::Length(n),
                None if gathered_len > 0 || expects_body(&parts.method) => Framing::Length(gathered_len as u64),
                None => Framing::None,
            }
        } else {
            match declared.or_else(|| body.size_hint().exact().map(|n| n + gathered_len as u64)) {
                Some(n) if n < gathered_len as u64 => return Err(super::H1Error::RequestLength("longer")),
                Some(n) => Framing::Length(n),
                None => Framing::Chunked,
            }
        };
        let target = parts.uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
        Ok(Self {
            method: parts.method,
            target,
            headers: parts.headers,
            framing,
            gathered,
            trailers,
            rest: (!ended).then_some(body),
            rest_taken: false,
            forwarding,
            wire: Vec::new(),
        })
    }

    /// True for HEAD, whose response has no body whatever it declares.
    pub fn is_head(&self) -> bool {
        self.method == Method::HEAD
    }

    /// True while the whole request can still be sent again: its body was
    /// gathered whole, or the rest of it has not been touched.
    pub fn is_replayable(&self) -> bool {
        !self.rest_taken
    }

    /// The head and gathered body, encoded (again, if the headers changed
    /// since the last call: each attempt may set a different `Host`).
    pub fn encode(&mut self) {
        let wire = &mut self.wire;
        wire.clear();
        let body_len: usize = self.gathered.iter().map(Bytes::len).sum();
        wire.reserve(512 + self.headers.len() * 48 + body_len);
        wire.extend_from_slice(self.method.as_str().as_bytes());
        wire.push(b' ');
        wire.extend_from_slice(self.target.as_str().as_bytes());
        wire.extend_from_slice(b" HTTP/1.1\r\n");
        for (name, value) in &self.headers {
            if name == header::CONTENT_LENGTH {
                continue;
            }
            wire.extend_from_slice(name.as_str().as_bytes());
            wire.extend_from_slice(b": ");
            wire.extend_from_slice(value.as_bytes());
            wire.extend_from_slice(b"\r\n");
        }
        self.forwarding.write(wire);
        match self.framing {
            Framing::None => {}
            Framing::Length(n) => {
                wire.extend_from_slice(b"content-length: ");
                wire.extend_from_slice(itoa(n, &mut [0u8; 20]));
                wire.extend_from_slice(b"\r\n");
            }
            Framing::Chunked => wire.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        }
        wire.extend_from_slice(b"\r\n");
        if self.framing == Framing::Chunked {
            if body_len > 0 {
                wire.extend_from_slice(format!("{body_len:x}\r\n").as_bytes());
            }
            for data in &self.gathered {
                wire.extend_from_slice(data);
            }
            if body_len > 0 {
                wire.extend_from_slice(b"\r\n");
            }
            if self.rest.is_none() {
                encode_last_chunk(wire, self.trailers.as_ref());
            }
        } else {
            for data in &self.gathered {
                wire.extend_from_slice(data);
            }
        }
    }

    /// The bytes of the last [`Prepared::encode`].
    pub fn wire(&self) -> &[u8] {
        &self.wire
    }

    /// Hands the still-arriving body to a pump; after this a failure can no
    /// longer be retried elsewhere.
    pub(super) fn take_rest(&mut self) -> Option<Box<Pump>> {
        let body = self.rest.take()?;
        self.rest_taken = true;
        let sent: u64 = self.gathered.iter().map(|d| d.len() as u64).sum();
        let framing = match self.framing {
            Framing::Length(n) => PumpFraming::Length(n - sent),
            _ => PumpFraming::Chunked,
        };
        Some(Box::new(Pump { body, framing, pending: Pending::default(), finished: false }))
    }

    /// Sets `Host` to the target's address, for a request that came without
    /// one (HTTP/1.1 requires it, RFC 9112 §3.2); each attempt sets its own.
    pub fn set_host(&mut self, authority: &str) {
        let host = HeaderValue::from_str(authority).expect("an authority is a valid header value");
        self.headers.insert(header::HOST, host);
    }
}

/// Methods whose empty body is still sent with `Content-Length: 0`, as
/// clients do (a backend may otherwise wait for a body or answer 411).
fn expects_body(method: &Method) -> bool {
    matches!(*method, Method::POST | Method::PUT | Method::PATCH)
}

/// The client's `Content-Length`, if it sent one. The listeners refuse
/// conflicting values; equal ones, repeated or listed, count once.
fn declared_length(headers: &HeaderMap) -> Result<Option<u64>, super::H1Error> {
    let mut length = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        fields::merge_content_length(value.as_bytes(), &mut length).map_err(super::H1Error::RequestLengthInvalid)?;
    }
    Ok(length)
}

#[derive(Debug, Clone, Copy)]
enum PumpFraming {
    Length(u64),
    Chunked,
}

/// Bytes waiting for the socket: a chunk prefix, the data, a suffix.
#[derive(Default)]
struct Pending {
    parts: [Bytes; 3],
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.parts.iter().all(Bytes::is_empty)
    }

    fn advance(&mut self, mut n: usize) {
        for part in &mut self.parts {
            let step = n.min(part.len());
            part.advance(step);
            n -= step;
        }
    }
}

/// How streaming the rest of a request body failed.
#[derive(Debug)]
pub(super) enum PumpError {
    /// The backend stopped taking bytes.
    Write(io::Error),
    /// The client's body failed.
    Body(BoxError),
    /// The client's body broke its declared length.
    Length(&'static str),
}

/// Streams the rest of a request body to the backend: reads a frame from
/// the client only once the previous one is written, so a slow backend
/// slows the client and nothing queues up.
pub(super) struct Pump {
    body: Body,
    framing: PumpFraming,
    pending: Pending,
    finished: bool,
}

impl Pump {
    /// Moves the body along as far as it goes without waiting; `Ready(Ok)`
    /// once it has all been written.
    pub(super) fn poll(&mut self, cx: &mut Context<'_>, io: &mut TcpStream) -> Poll<Result<(), PumpError>> {
        loop {
            while !self.pending.is_empty() {
                let slices = self.pending.parts.each_ref().map(|p| io::IoSlice::new(&p[..]));
                let n = ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices)).map_err(PumpError::Write)?;
                if n == 0 {
                    return Poll::Ready(Err(PumpError::Write(io::ErrorKind::WriteZero.into())));
                }
                self.pending.advance(n);
            }
            if self.finished {
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) if data.is_empty() => {}
                    Ok(data) => self.queue_data(data)?,
                    Err(frame) => {
                        if let (Ok(trailers), PumpFraming::Chunked) = (frame.into_trailers(), self.framing) {
                            self.queue_end(Some(&trailers))?;
                        }
                    }
                },
                Some(Err(e)) => return Poll::Ready(Err(PumpError::Body(e))),
                None => self.queue_end(None)?,
            }
        }
    }

    fn queue_data(&mut self, data: Bytes) -> Result<(), PumpError> {
        match &mut self.framing {
            PumpFraming::Length(left) => {
                *left = left.checked_sub(data.len() as u64).ok_or(PumpError::Length("longer"))?;
                self.pending.parts[1] = data;
            }
            PumpFraming::Chunked => {
                self.pending.parts[0] = Bytes::from(format!("{:x}\r\n", data.len()));
                self.pending.parts[1] = data;
                self.pending.parts[2] = Bytes::from_static(b"\r\n");
            }
        }
        Ok(())
    }

    fn queue_end(&mut self, trailers: Option<&HeaderMap>) -> Result<(), PumpError> {
        if self.finished {
            return Ok(());
        }
        self.finished = true;
        match self.framing {
            PumpFraming::Length(0) => Ok(()),
            PumpFraming::Length(_) => Err(PumpError::Length("shorter")),
            PumpFraming::Chunked => {
                let mut last = Vec::with_capacity(5);
                encode_last_chunk(&mut last, trailers);
                self.pending.parts[0] = Bytes::from(last);
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body;

    fn request(method: Method, headers: &[(&str, &str)], body: Body) -> Request<Body> {
        let mut req = Request::builder().method(method).uri("/p?q=1");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.body(body).unwrap()
    }

    async fn encoded(req: Request<Body>) -> String {
        let mut prepared = Prepared::gather(req, Forwarding::default()).unwrap();
        prepared.set_host("backend:80");
        prepared.encode();
        String::from_utf8(prepared.wire().to_vec()).unwrap()
    }

    #[tokio::test]
    async fn a_bodiless_get_has_no_framing_header() {
        let wire = encoded(request(Method::GET, &[("x-a", "1")], body::empty())).await;
        assert_eq!(wire, "GET /p?q=1 HTTP/1.1\r\nx-a: 1\r\nhost: backend:80\r\n\r\n");
    }

    #[tokio::test]
    async fn forwarding_fields_are_written_after_the_map() {
        let (parts, body) = request(Method::GET, &[("x-a", "1")], body::empty()).into_parts();
        let (req, forwarding) = {
            let ctx = crate::policy::test_context();
            let route = crate::route::test_route("r", Default::default());
            crate::pipeline::forwarded::prepare_request_deferred(parts, body, &ctx, &route).unwrap()
        };
        let mut prepared = Prepared::gather(req, forwarding).unwrap();
        prepared.set_host("backend:80");
        prepared.encode();
        let wire = String::from_utf8(prepared.wire().to_vec()).unwrap();
        assert!(
            wire.starts_with("GET /p?q=1 HTTP/1.1\r\nx-a: 1\r\nhost: backend:80\r\nx-forwarded-for: 127.0.0.1\r\n"),
            "{wire}"
        );
        assert!(wire.ends_with("via: 1.1 tollgate\r\n\r\n"), "{wire}");
    }

    #[tokio::test]
    async fn an_empty_post_says_content_length_zero() {
        let wire = encoded(request(Method::POST, &[], body::empty())).await;
        assert!(wire.contains("content-length: 0\r\n"), "{wire}");
    }

    #[tokio::test]
    async fn an_arrived_body_goes_out_with_its_length_in_one_piece() {
        let wire = encoded(request(Method::PUT, &[], body::full("hello"))).await;
        assert!(wire.ends_with("content-length: 5\r\n\r\nhello"), "{wire}");
    }

    #[tokio::test]
    async fn a_declared_length_the_body_does_not_match_is_refused() {
        let req = request(Method::POST, &[("content-length", "9")], body::full("hello"));
        assert!(matches!(
            Prepared::gather(req, Forwarding::default()),
            Err(super::super::H1Error::RequestLength("shorter"))
        ));
    }

    #[tokio::test]
    async fn trailers_make_the_body_chunked() {
        let mut trailers = HeaderMap::new();
        trailers.insert("x-sum", HeaderValue::from_static("42"));
        let frames: Vec<Result<http_body::Frame<Bytes>, BoxError>> =
            vec![Ok(http_body::Frame::data(Bytes::from_static(b"abc"))), Ok(http_body::Frame::trailers(trailers))];
        let stream = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
        let wire = encoded(request(Method::POST, &[], body::boxed(stream))).await;
        assert!(wire.ends_with("transfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nx-sum: 42\r\n\r\n"), "{wire}");
    }
}
