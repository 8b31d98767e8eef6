//! HTTP/1.1 server connections of our own.
//!
//! Why not hyper's server: it boxes every request's future, keeps a
//! dispatcher and a body channel between the socket and the request, and
//! refreshes its `Date` cache from the precise clock on every poll. Here
//! one task owns the socket and the request in progress: it parses the head
//! ([`request`]), runs the gateway's future in place, and writes the
//! response ([`response`]) from that future's body as it comes, so a small
//! response leaves in one write. The request body ([`body`]) is read from
//! the socket only when the gateway asks for it. Bad heads get a 400 or 431
//! and the connection closes; a client that goes away cancels its request.
//!
//! One request at a time: a pipelining client's next request waits in the
//! read buffer until the response before it has been written.

mod body;
mod request;
mod response;

use std::any::Any;
use std::future::Future;
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::{Request, Response, StatusCode, Version};
use http_body::Body as _;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

pub use body::{RequestBody, RequestBodyError};

use crate::body::{Body, BoxError, ClientBody};
use crate::http1::chunked::{Chunked, Decoded};
use crate::http1::poll_read_more;
use crate::model::Handoff;
use body::{Flow, Shared};
use request::{Framing as RequestFraming, HeadError, HeadParser};
use response::{Exchange, Framing, FramingError, Output};

/// First read of a request head; reads grow while they fill the buffer.
const MIN_READ: usize = 8 * 1024;
const MAX_READ: usize = 64 * 1024;
/// Response bytes queued before the connection stops pulling the body.
const OUTPUT_HIGH_WATER: usize = 256 * 1024;

/// A listener's limits on request heads.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Largest request head (request line and fields); over it: 431.
    pub max_head_bytes: usize,
    /// Most header fields; over it: 431.
    pub max_headers: usize,
    /// Longest a response may wait for the client to read (`send_timeout`).
    pub send_timeout: std::time::Duration,
}

/// Why a connection ended other than by a clean close.
#[derive(Debug)]
pub enum Http1Error {
    /// Reading from or writing to the client failed.
    Io(io::Error),
    /// The response body failed part-way; the client sees it cut short.
    ResponseBody(BoxError),
    /// The response body did not match its `Content-Length`.
    ResponseLength(&'static str),
    /// The client took none of the response for `send_timeout`.
    SendTimeout(std::time::Duration),
}

impl std::fmt::Display for Http1Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Http1Error::Io(e) => write!(f, "client connection failed: {e}"),
            Http1Error::ResponseBody(e) => write!(f, "response body failed: {e}"),
            Http1Error::ResponseLength(what) => write!(f, "response body {what} than its Content-Length"),
            Http1Error::SendTimeout(limit) => write!(f, "the client read none of the response for {limit:?}"),
        }
    }
}

impl std::error::Error for Http1Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Http1Error::Io(e) => Some(e),
            Http1Error::ResponseBody(e) => Some(&**e),
            Http1Error::ResponseLength(_) | Http1Error::SendTimeout(_) => None,
        }
    }
}

impl From<FramingError> for Http1Error {
    fn from(e: FramingError) -> Self {
        Http1Error::ResponseLength(match e {
            FramingError::TooLong => "longer",
            FramingError::TooShort => "shorter",
        })
    }
}

/// Any client stream an upgraded connection can be (TLS, PROXY-protocol wrapped).
pub trait UpgradeIo: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> UpgradeIo for T {}

/// A client connection handed over by an upgrade.
pub enum UpgradedIo {
    /// A plain TCP socket, unwrapped, so a tunnel can read and write it directly.
    Tcp(TcpStream),
    /// Anything else.
    Other(Box<dyn UpgradeIo>),
}

/// What an upgrade hands over: the connection, and the bytes the client
/// sent past the handshake that were read already.
pub struct Handover {
    pub io: UpgradedIo,
    pub read_ahead: Bytes,
}

/// The client's side of an HTTP/1.1 upgrade, in the request's extensions
/// when it asked for one: yields the connection once our `101` has been
/// written (`None` if the answer was anything else).
pub type PendingUpgrade = Handoff<Handover>;

pin_project_lite::pin_project! {
    /// One client connection, served until it closes (see the module doc).
    /// `service` makes each request's response future, which runs in place.
    pub struct ServerConnection<I, S, F> {
        #[pin]
        in_flight: Option<F>,
        core: Core<I, S>,
    }
}

/// Everything but the request future (which is pinned).
struct Core<I, S> {
    /// `None` once handed over by an upgrade.
    io: Option<I>,
    service: S,
    settings: Settings,
    read_buf: BytesMut,
    read_size: usize,
    parser: HeadParser,
    out: Output,
    /// Written bytes may sit in a TLS layer until flushed.
    unflushed: bool,
    phase: Phase,
    exchange: Option<Box<InFlight>>,
    /// Finish the request in progress, then close.
    graceful: bool,
    /// Closing: our side is shut down.
    write_closed: bool,
    /// Closing with a request body unread: read it away first.
    linger: Option<Linger>,
    /// How long the response has waited for the client to read.
    send_stall: crate::stall::Stall,
}

/// Most bytes read away, and for how long, when closing on a request body
/// the client is still sending (a 413, a 401 before the upload ended).
/// Closing a socket with unread bytes makes the kernel reset the
/// connection, and a client still writing could then lose the response we
/// just sent it; reading the rest lets it finish and read the answer.
const LINGER_BYTES: usize = 16 << 20;
const LINGER_TIME: std::time::Duration = std::time::Duration::from_secs(2);

/// Reads and drops what a client still sends after our last response.
struct Linger {
    deadline: Pin<Box<tokio::time::Sleep>>,
    drained: usize,
}

impl Linger {
    fn new() -> Self {
        Self { deadline: Box::pin(tokio::time::sleep(LINGER_TIME)), drained: 0 }
    }

    /// Ready at the client's end of stream, an error, the byte budget or the deadline.
    fn poll_drain<I: AsyncRead + Unpin>(&mut self, mut io: Pin<&mut I>, cx: &mut Context<'_>) -> Poll<()> {
        let mut scratch = [MaybeUninit::<u8>::uninit(); 8 * 1024];
        while self.drained < LINGER_BYTES {
            let mut buf = ReadBuf::uninit(&mut scratch);
            match io.as_mut().poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => self.drained += buf.filled().len(),
                Poll::Ready(_) => return Poll::Ready(()),
                Poll::Pending => return self.deadline.as_mut().poll(cx),
            }
        }
        Poll::Ready(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for (the rest of) a request head.
    Head,
    /// A request is in progress.
    Exchange,
    /// A 101 is written: the connection goes to whoever awaits the upgrade.
    Upgrade,
    /// Writing what is left, then closing.
    Closing,
    Done,
}

/// The request in progress: what the connection needs besides its future.
struct InFlight {
    exchange: Exchange,
    /// The request body still being read, if any.
    inbound: Option<Inbound>,
    /// Send `100 Continue` when the body is first asked for.
    expect_continue: bool,
    response: Outgoing,
    upgrade: Option<oneshot::Sender<Handover>>,
}

struct Inbound {
    shared: Shared,
    decoder: Decoder,
}

enum Decoder {
    Length(u64),
    Chunked(Chunked),
}

enum Outgoing {
    /// The response future has not resolved yet.
    Waiting,
    Streaming {
        body: Body,
        framing: Framing,
    },
    /// The body ended and its last bytes are queued.
    Done,
    /// A 101 is queued; the connection is handed over once it is written.
    Switching,
    /// The body failed: what was queued goes out, then the connection closes.
    Aborted,
}

/// The `100 Continue` interim response.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

impl<I, S, F> ServerConnection<I, S, F>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: FnMut(Request<ClientBody>) -> F,
    F: Future<Output = Response<Body>>,
{
    /// Serves `io`, whose first bytes (already read) are `read_ahead`.
    pub fn new(io: I, read_ahead: BytesMut, service: S, settings: Settings) -> Self {
        let send_stall = crate::stall::Stall::new(settings.send_timeout);
        Self {
            in_flight: None,
            core: Core {
                io: Some(io),
                service,
                settings,
                read_buf: read_ahead,
                read_size: MIN_READ,
                parser: HeadParser::default(),
                out: Output::default(),
                unflushed: false,
                phase: Phase::Head,
                exchange: None,
                graceful: false,
                write_closed: false,
                linger: None,
                send_stall,
            },
        }
    }

    /// Finishes the request in progress (its response says `connection:
    /// close` if not yet begun) and then closes; closes at once when idle.
    pub fn graceful_shutdown(self: Pin<&mut Self>) {
        self.project().core.graceful = true;
    }
}

impl<I, S, F> Future for ServerConnection<I, S, F>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: FnMut(Request<ClientBody>) -> F,
    F: Future<Output = Response<Body>>,
{
    type Output = Result<(), Http1Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let core = this.core;
        let mut in_flight = this.in_flight;
        loop {
            let step = match core.phase {
                Phase::Head => core.poll_head(cx, in_flight.as_mut()),
                Phase::Exchange => core.poll_exchange(cx, in_flight.as_mut()),
                Phase::Upgrade => {
                    core.hand_over();
                    Poll::Ready(Ok(()))
                }
                Phase::Closing => core.poll_close(cx),
                Phase::Done => return Poll::Ready(Ok(())),
            };
            match step {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => {
                    // The request (if any) is cancelled with the connection.
                    in_flight.set(None);
                    core.end_request_body(Flow::Failed(RequestBodyError::Io));
                    core.phase = Phase::Done;
                    return Poll::Ready(Err(e));
                }
            }
        }
    }
}

impl<I, S, F> Core<I, S>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: FnMut(Request<ClientBody>) -> F,
    F: Future<Output = Response<Body>>,
{
    fn io(&mut self) -> Pin<&mut I> {
        Pin::new(self.io.as_mut().expect("the connection was handed over"))
    }

    /// Waits for a complete request head and starts its exchange.
    fn poll_head(&mut self, cx: &mut Context<'_>, in_flight: Pin<&mut Option<F>>) -> Poll<Result<(), Http1Error>> {
        loop {
            let parsed = if self.read_buf.is_empty() {
                Ok(None)
            } else {
                self.parser.parse(&mut self.read_buf, self.settings.max_head_bytes, self.settings.max_headers)
            };
            match parsed {
                Ok(Some(head)) => {
                    self.start_exchange(head, in_flight);
                    return Poll::Ready(Ok(()));
                }
                Ok(None) if self.read_buf.len() >= self.settings.max_head_bytes => {
                    self.refuse(HeadError::too_large(&self.read_buf, self.settings.max_head_bytes));
                    return Poll::Ready(Ok(()));
                }
                Ok(None) => {}
                Err(e) => {
                    self.refuse(e);
                    return Poll::Ready(Ok(()));
                }
            }
            if self.graceful && self.read_buf.is_empty() {
                self.phase = Phase::Closing;
                return Poll::Ready(Ok(()));
            }
            if ready!(self.poll_fill(cx)).map_err(Http1Error::Io)? == 0 {
                // The client closed: between requests that is the normal end.
                self.phase = Phase::Closing;
                return Poll::Ready(Ok(()));
            }
        }
    }

    /// Answers a head we could not accept, then closes: where the next
    /// request would start is unknown.
    fn refuse(&mut self, error: HeadError) {
        let code = match error {
            HeadError::TooLarge => "header_too_large",
            HeadError::UriTooLong => "uri_too_long",
            HeadError::Malformed(_) => "bad_request",
            HeadError::UnsupportedCoding => "not_implemented",
        };
        tracing::debug!(status = error.status().as_u16(), reason = error.message(), "request head refused");
        let response = crate::error::error_response(error.status(), code, error.message(), "");
        let (parts, body) = response.into_parts();
        let exchange = Exchange { version: Version::HTTP_11, head_request: false, keep_alive: false };
        let length = body.size_hint().exact();
        let (mut framing, _) = response::encode_head(&parts, length, exchange, &mut self.out.tail);
        // A `Full` body: its one frame is ready at once.
        let mut body = body;
        let mut cx = Context::from_waker(std::task::Waker::noop());
        while let Poll::Ready(Some(Ok(frame))) = Pin::new(&mut body).poll_frame(&mut cx) {
            if let Ok(data) = frame.into_data() {
                let _ = self.out.push_data(&mut framing, data);
            }
        }
        self.read_buf.clear();
        // The rest of an oversized head may still be on its way.
        self.linger = Some(Linger::new());
        self.phase = Phase::Closing;
    }

    fn start_exchange(&mut self, head: request::Head, mut in_flight: Pin<&mut Option<F>>) {
        let request::Head { request, framing, keep_alive, expect_continue, upgrade } = head;
        let exchange = Exchange {
            version: request.version(),
            head_request: request.method() == http::Method::HEAD,
            keep_alive: keep_alive && !self.graceful,
        };
        let (body, inbound) = match framing {
            RequestFraming::None => (ClientBody::Empty, None),
            RequestFraming::Length(n) => {
                let (body, shared) = body::channel(Some(n));
                (ClientBody::Http1(body), Some(Inbound { shared, decoder: Decoder::Length(n) }))
            }
            RequestFraming::Chunked => {
                let (body, shared) = body::channel(None);
                (ClientBody::Http1(body), Some(Inbound { shared, decoder: Decoder::Chunked(Chunked::default()) }))
            }
        };
        if let Some(inbound) = &inbound
            && !expect_continue
        {
            // Read one frame ahead of the first ask: a small body has usually arrived with the head.
            body::lock(&inbound.shared).wanted = true;
        }
        let mut request = request.map(|()| body);
        let upgrade = upgrade.then(|| {
            let (upgrade, fulfil) = PendingUpgrade::new();
            request.extensions_mut().insert(upgrade);
            fulfil
        });
        in_flight.set(Some((self.service)(request)));
        let state = InFlight { exchange, inbound, expect_continue, response: Outgoing::Waiting, upgrade };
        match &mut self.exchange {
            Some(slot) => **slot = state,
            None => self.exchange = Some(Box::new(state)),
        }
        self.phase = Phase::Exchange;
    }

    /// Drives the request in progress: its body in, its response out.
    fn poll_exchange(
        &mut self,
        cx: &mut Context<'_>,
        mut in_flight: Pin<&mut Option<F>>,
    ) -> Poll<Result<(), Http1Error>> {
        loop {
            let mut progress = self.pump_request_body(cx)?;
            let exchange = self.exchange.as_mut().expect("an exchange is in progress");
            if matches!(exchange.response, Outgoing::Waiting)
                && let Some(future) = in_flight.as_mut().as_pin_mut()
            {
                let (polled, interim) = crate::interim::collect(|| future.poll(cx));
                // RFC 9110 §15.2: never to an HTTP/1.0 client.
                if !interim.is_empty() && exchange.exchange.version == Version::HTTP_11 {
                    for head in &interim {
                        response::encode_interim(head, &mut self.out.tail);
                    }
                    progress = true;
                }
                if let Poll::Ready(response) = polled {
                    in_flight.set(None);
                    self.start_response(response);
                    progress = true;
                }
            }
            progress |= self.pull_response_body(cx)?;
            if !self.out.is_empty() || self.unflushed {
                let queued = self.out.len();
                match self.poll_write(cx) {
                    Poll::Ready(result) => {
                        result.map_err(Http1Error::Io)?;
                        progress = true;
                        self.send_stall.progressed();
                    }
                    Poll::Pending => {
                        if self.out.len() < queued {
                            self.send_stall.progressed();
                        }
                        // The client's socket is full: it has stopped reading, or reads too slowly.
                        if self.send_stall.poll_waiting(cx).is_ready() {
                            return Poll::Ready(Err(Http1Error::SendTimeout(self.send_stall.limit())));
                        }
                    }
                }
            }
            let exchange = self.exchange.as_mut().expect("an exchange is in progress");
            if self.out.is_empty() && !self.unflushed {
                match exchange.response {
                    Outgoing::Done | Outgoing::Aborted => {
                        self.finish_exchange();
                        return Poll::Ready(Ok(()));
                    }
                    Outgoing::Switching => {
                        self.phase = Phase::Upgrade;
                        return Poll::Ready(Ok(()));
                    }
                    _ => {}
                }
            }
            // Polling the response future may have asked the request body for more.
            if progress || self.pump_request_body(cx)? {
                continue;
            }
            if self.client_gone(cx)? {
                tracing::debug!("client closed the connection; request cancelled");
                in_flight.set(None);
                self.end_request_body(Flow::Failed(RequestBodyError::Incomplete));
                self.phase = Phase::Done;
                return Poll::Ready(Ok(()));
            }
            return Poll::Pending;
        }
    }

    /// Reads the request body for its reader, one frame at a time, when
    /// it asks. True if anything changed.
    fn pump_request_body(&mut self, cx: &mut Context<'_>) -> Result<bool, Http1Error> {
        let Some(exchange) = self.exchange.as_mut() else { return Ok(false) };
        let Some(mut inbound) = exchange.inbound.take() else { return Ok(false) };
        let mut slot = body::lock(&inbound.shared);
        slot.register_connection(cx.waker());
        if !slot.wanted || slot.data.is_some() || slot.flow != Flow::Open {
            drop(slot);
            exchange.inbound = Some(inbound);
            return Ok(false);
        }
        let mut progress = false;
        if exchange.expect_continue {
            exchange.expect_continue = false;
            if matches!(exchange.response, Outgoing::Waiting) {
                self.out.tail.extend_from_slice(CONTINUE);
                progress = true;
            }
        }
        loop {
            let decoded = match &mut inbound.decoder {
                Decoder::Length(_) if self.read_buf.is_empty() => Ok(Decoded::NeedMore),
                Decoder::Length(left) => {
                    let take = (*left).min(self.read_buf.len() as u64) as usize;
                    *left -= take as u64;
                    let data = self.read_buf.split_to(take).freeze();
                    if *left == 0 {
                        slot.data = Some(data);
                        Ok(Decoded::End)
                    } else {
                        Ok(Decoded::Data(data))
                    }
                }
                Decoder::Chunked(state) => state.decode(&mut self.read_buf),
            };
            match decoded {
                Ok(Decoded::Data(data)) => {
                    slot.deliver(data, cx.waker());
                    drop(slot);
                    exchange.inbound = Some(inbound);
                    return Ok(true);
                }
                Ok(Decoded::Trailers(trailers)) => slot.finish(Flow::Ended, Some(trailers), cx.waker()),
                Ok(Decoded::End) => slot.finish(Flow::Ended, None, cx.waker()),
                Err(e) => {
                    tracing::debug!(error = %e, "malformed chunked request body");
                    slot.finish(Flow::Failed(RequestBodyError::Framing(e.0)), None, cx.waker());
                    // The rest of the stream cannot be delimited.
                    exchange.exchange.keep_alive = false;
                }
                Ok(Decoded::NeedMore) => match poll_read_more(
                    Pin::new(self.io.as_mut().expect("the connection was handed over")),
                    &mut self.read_buf,
                    &mut self.read_size,
                    MAX_READ,
                    cx,
                ) {
                    Poll::Pending => {
                        drop(slot);
                        exchange.inbound = Some(inbound);
                        return Ok(progress);
                    }
                    Poll::Ready(Ok(0)) => {
                        slot.finish(Flow::Failed(RequestBodyError::Incomplete), None, cx.waker());
                        exchange.exchange.keep_alive = false;
                    }
                    Poll::Ready(Ok(_)) => continue,
                    Poll::Ready(Err(e)) => {
                        tracing::debug!(error = %e, "reading the request body failed");
                        slot.finish(Flow::Failed(RequestBodyError::Io), None, cx.waker());
                        exchange.exchange.keep_alive = false;
                    }
                },
            }
            // The body ended (or failed): the connection lets go of it.
            return Ok(true);
        }
    }

    /// Encodes the response head and sets up its body.
    fn start_response(&mut self, response: Response<Body>) {
        let exchange = self.exchange.as_mut().expect("an exchange is in progress");
        let (parts, body) = response.into_parts();
        if self.graceful {
            exchange.exchange.keep_alive = false;
        }
        if exchange.expect_continue {
            // Answered before the body was asked for: the client may not send it at all.
            exchange.expect_continue = false;
            exchange.exchange.keep_alive = false;
        }
        let switching = parts.status == StatusCode::SWITCHING_PROTOCOLS && exchange.upgrade.is_some();
        let (framing, keep_alive) =
            response::encode_head(&parts, body.size_hint().exact(), exchange.exchange, &mut self.out.tail);
        exchange.exchange.keep_alive = keep_alive;
        exchange.response = if switching {
            Outgoing::Switching
        } else if framing == Framing::None {
            Outgoing::Done
        } else {
            Outgoing::Streaming { body, framing }
        };
    }

    /// Moves response body frames into the output while it has room.
    fn pull_response_body(&mut self, cx: &mut Context<'_>) -> Result<bool, Http1Error> {
        let Some(exchange) = self.exchange.as_mut() else { return Ok(false) };
        let Outgoing::Streaming { body, framing } = &mut exchange.response else { return Ok(false) };
        let mut progress = false;
        while self.out.len() < OUTPUT_HIGH_WATER {
            match Pin::new(&mut *body).poll_frame(cx) {
                Poll::Pending => break,
                Poll::Ready(Some(Ok(frame))) => {
                    progress = true;
                    match frame.into_data() {
                        Ok(data) => {
                            self.out.push_data(framing, data)?;
                            if *framing == Framing::Length(0) {
                                // All the length promised is out: done, without waiting for the
                                // body to say so (some, like static files, never do).
                                exchange.response = Outgoing::Done;
                                return Ok(true);
                            }
                        }
                        Err(frame) => {
                            if let Ok(trailers) = frame.into_trailers() {
                                self.out.push_end(*framing, Some(&trailers))?;
                                exchange.response = Outgoing::Done;
                                break;
                            }
                        }
                    }
                }
                Poll::Ready(None) => {
                    self.out.push_end(*framing, None)?;
                    exchange.response = Outgoing::Done;
                    return Ok(true);
                }
                Poll::Ready(Some(Err(e))) => {
                    // What was sent stays sent; the missing end tells the client it is cut short.
                    tracing::debug!(error = %e, "response body failed; closing the client connection");
                    exchange.response = Outgoing::Aborted;
                    exchange.exchange.keep_alive = false;
                    return Ok(true);
                }
            }
        }
        Ok(progress)
    }

    /// Writes queued output until it is all out (and flushed) or the socket is full.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.out.is_empty() {
            let io = self.io.as_mut().expect("the connection was handed over");
            let written = if io.is_write_vectored() {
                let mut slices = [IoSlice::new(&[]); 8];
                match self.out.chunks(&mut slices) {
                    // One piece (a small response is head and body in one
                    // buffer): `send`, which costs the kernel less than a
                    // one-element `writev` (no iovec to import).
                    1 => ready!(Pin::new(io).poll_write(cx, &slices[0]))?,
                    n => ready!(Pin::new(io).poll_write_vectored(cx, &slices[..n]))?,
                }
            } else {
                ready!(Pin::new(io).poll_write(cx, self.out.first()))?
            };
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out.advance(written);
            self.unflushed = true;
        }
        if self.unflushed {
            ready!(self.io().poll_flush(cx))?;
            self.unflushed = false;
        }
        Poll::Ready(Ok(()))
    }

    /// The response is out: keep the connection for the next request, or close it.
    fn finish_exchange(&mut self) {
        let Some(exchange) = self.exchange.as_mut() else { return };
        let mut keep_alive = exchange.exchange.keep_alive && !self.graceful;
        if let Some(inbound) = exchange.inbound.take() {
            // The body was not read to its end. What has arrived of a
            // declared length nobody reads any more can be skipped;
            // otherwise the next request's start is unknown.
            let mut slot = body::lock(&inbound.shared);
            match inbound.decoder {
                Decoder::Length(left) if slot.abandoned && left <= self.read_buf.len() as u64 => {
                    self.read_buf.advance(left as usize);
                }
                _ => {
                    keep_alive = false;
                    // The client may still be sending it: read it away after the response
                    // rather than close on unread bytes, which resets the connection.
                    self.linger = Some(Linger::new());
                }
            }
            slot.finish(Flow::Failed(RequestBodyError::Incomplete), None, std::task::Waker::noop());
        }
        exchange.upgrade = None;
        // An idle connection keeps a head-sized read buffer, whatever a body grew it to.
        self.read_size = MIN_READ;
        self.phase = if keep_alive { Phase::Head } else { Phase::Closing };
    }

    /// Fails a request body still being read (the connection is going away).
    fn end_request_body(&mut self, flow: Flow) {
        if let Some(inbound) = self.exchange.as_mut().and_then(|e| e.inbound.take()) {
            body::lock(&inbound.shared).finish(flow, None, std::task::Waker::noop());
        }
    }

    /// While waiting for the response (the request body read), watches for
    /// the client closing the connection. Bytes of a pipelined request are
    /// kept, up to a head's worth.
    fn client_gone(&mut self, cx: &mut Context<'_>) -> Result<bool, Http1Error> {
        let reading_body = self.exchange.as_ref().is_some_and(|e| e.inbound.is_some());
        if reading_body || self.read_buf.len() >= self.settings.max_head_bytes {
            return Ok(false);
        }
        // A small stack buffer: no read buffer is allocated just to learn nothing arrived.
        let mut probe = [MaybeUninit::<u8>::uninit(); 1024];
        loop {
            let mut buf = ReadBuf::uninit(&mut probe);
            match self.io().poll_read(cx, &mut buf) {
                Poll::Pending => return Ok(false),
                Poll::Ready(Ok(())) if buf.filled().is_empty() => return Ok(true),
                Poll::Ready(Ok(())) => {
                    self.read_buf.extend_from_slice(buf.filled());
                    if self.read_buf.len() >= self.settings.max_head_bytes {
                        return Ok(false);
                    }
                }
                Poll::Ready(Err(e)) => {
                    tracing::debug!(error = %e, "client connection failed");
                    return Ok(true);
                }
            }
        }
    }

    /// Hands the connection to whoever awaits the upgrade, with the bytes
    /// the client sent past the handshake.
    fn hand_over(&mut self) {
        self.phase = Phase::Done;
        let (Some(io), Some(exchange)) = (self.io.take(), self.exchange.as_mut()) else { return };
        let Some(upgrade) = exchange.upgrade.take() else { return };
        let read_ahead = self.read_buf.split().freeze();
        // The socket itself when it is one (a cleartext listener without the PROXY protocol).
        let mut io = Some(io);
        let io = match (&mut io as &mut dyn Any).downcast_mut::<Option<TcpStream>>().and_then(Option::take) {
            Some(tcp) => UpgradedIo::Tcp(tcp),
            None => UpgradedIo::Other(Box::new(io.take().expect("not taken"))),
        };
        let _ = upgrade.send(Handover { io, read_ahead });
    }

    /// Writes what is queued, closes the write side, then (when a request
    /// body was left unread) reads away what the client still sends.
    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Http1Error>> {
        if self.io.is_some() && !self.write_closed {
            ready!(self.poll_write(cx)).map_err(Http1Error::Io)?;
            // A peer that reset the connection first is not our failure.
            let _ = ready!(self.io().poll_shutdown(cx));
            self.write_closed = true;
        }
        if let (Some(linger), Some(io)) = (self.linger.as_mut(), self.io.as_mut()) {
            ready!(linger.poll_drain(Pin::new(io), cx));
        }
        self.phase = Phase::Done;
        Poll::Ready(Ok(()))
    }

    /// Reads more of the socket into `read_buf`; `Ok(0)` at end of stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let io = Pin::new(self.io.as_mut().expect("the connection was handed over"));
        poll_read_more(io, &mut self.read_buf, &mut self.read_size, MAX_READ, cx)
    }
}
