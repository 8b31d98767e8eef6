//! HTTP/1.1 to backends, driven inline by the request's own task.
//!
//! Why not hyper's client: its connection lives in a task of its own, so
//! every proxied request crossed two tasks (an mpsc send, a oneshot back, two
//! wake-ups) and hyper's dispatch state on top. Here the request's task
//! writes the request and reads the response head itself, and the response
//! body reads the socket only as the client takes the bytes (that is the
//! backpressure). A finished exchange puts the connection back in its
//! target's pool; an abandoned one closes it, which is how a client
//! disconnect cancels the backend request. Parsing is httparse's; the
//! message framing (RFC 9112 §6–7) is here:
//!
//! - [`request`]: gathers a body that has already arrived, picks the framing,
//!   encodes the head, and streams the rest of a body with backpressure;
//! - [`response`]: parses the head, skips interim 1xx, decides the framing;
//! - [`body`]: the response body, which reads length-delimited, chunked or
//!   close-delimited bodies and returns the connection when it ends.

mod body;
mod request;
mod response;

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::BytesMut;
use http::Response;
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

pub use body::ResponseBody;
pub use request::Prepared;

use super::Target;
use crate::body::BoxError;
use request::PumpError;

/// Largest response head (status line and headers) accepted from a backend.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most header fields accepted in a response head.
const MAX_HEADERS: usize = 128;
/// First read size of an exchange; doubled while reads fill it.
const MIN_READ: usize = 16 * 1024;
const MAX_READ: usize = 256 * 1024;

/// A keep-alive connection to one backend, owned by the pool while idle and
/// by one exchange at a time otherwise. It is handed around boxed (pool,
/// exchange, response body, pool again): moved by value it was a 176-byte
/// copy at each of those steps, several per request.
pub struct Connection {
    io: TcpStream,
    /// Bytes read and not yet consumed; empty between exchanges.
    read_buf: BytesMut,
    /// How much the next read asks for.
    read_size: usize,
    /// Parses response heads, reusing what earlier ones on this connection parsed.
    heads: response::HeadParser,
    /// The first-byte deadline of the exchange in progress.
    deadline: Option<Instant>,
    /// The connection's one timer for that deadline, made on first use.
    /// It stays registered between exchanges and is moved only when it
    /// fires before the current deadline: most exchanges end long before,
    /// so they pay no timer registration of their own.
    timer: Option<Pin<Box<Sleep>>>,
    /// The waker `timer` was last polled with.
    timer_waker: Option<Waker>,
}

impl Connection {
    /// Wraps a connected socket.
    pub fn new(io: TcpStream) -> Self {
        Self {
            io,
            read_buf: BytesMut::new(),
            read_size: MIN_READ,
            heads: response::HeadParser::default(),
            deadline: None,
            timer: None,
            timer_waker: None,
        }
    }

    /// False when the backend closed the connection (or sent something
    /// unasked) while it sat idle. Costs no system call unless the socket
    /// became readable since its last response was read.
    pub fn is_open(&self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        match self.io.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                matches!(self.io.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    /// `Err` once the exchange's first-byte deadline has passed; otherwise
    /// makes sure the timer will wake this task by then.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Result<(), H1Error> {
        let Some(deadline) = self.deadline else { return Ok(()) };
        let timer = self.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        let registered = self.timer_waker.as_ref().is_some_and(|w| w.will_wake(cx.waker()));
        if registered && !timer.is_elapsed() {
            return Ok(());
        }
        while timer.as_mut().poll(cx).is_ready() {
            if Instant::now() >= deadline {
                return Err(H1Error::FirstByteTimeout);
            }
            // It was set for an earlier exchange's deadline.
            timer.as_mut().reset(deadline);
        }
        self.timer_waker = Some(cx.waker().clone());
        Ok(())
    }

    /// Reads more of the socket into `read_buf`; `Ok(0)` at end of stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        crate::http1::poll_read_more(Pin::new(&mut self.io), &mut self.read_buf, &mut self.read_size, MAX_READ, cx)
    }
}

/// Why an exchange with a backend failed.
#[derive(Debug)]
pub enum H1Error {
    /// Reading from or writing to the backend failed.
    Io(io::Error),
    /// The backend closed the connection before a response began.
    Closed,
    /// The backend closed the connection in the middle of a response.
    Truncated,
    /// The response head went over [`MAX_HEAD_BYTES`] or [`MAX_HEADERS`].
    HeadTooLarge,
    /// The response head is not HTTP/1.x.
    Malformed(&'static str),
    /// The response body's framing is broken (bad length or chunk).
    Framing(&'static str),
    /// No response began within the upstream's `first_byte_timeout`.
    FirstByteTimeout,
    /// Reading the client's request body failed (client gone, bad framing, over the limit).
    ClientBody(BoxError),
    /// The client's body did not match the length it declared.
    RequestLength(&'static str),
    /// The client's `Content-Length` fields are not one number.
    RequestLengthInvalid(&'static str),
}

impl std::fmt::Display for H1Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            H1Error::Io(e) => write!(f, "backend connection failed: {e}"),
            H1Error::Closed => f.write_str("the backend closed the connection without responding"),
            H1Error::Truncated => f.write_str("the backend closed the connection before the response ended"),
            H1Error::HeadTooLarge => {
                write!(f, "the response head is over {MAX_HEAD_BYTES} bytes or {MAX_HEADERS} fields")
            }
            H1Error::Malformed(what) => write!(f, "malformed response head: {what}"),
            H1Error::Framing(what) => write!(f, "malformed response body: {what}"),
            H1Error::FirstByteTimeout => f.write_str("no response within first_byte_timeout"),
            H1Error::ClientBody(e) => write!(f, "reading the request body failed: {e}"),
            H1Error::RequestLength(what) => write!(f, "the request body is {what} than its Content-Length"),
            H1Error::RequestLengthInvalid(what) => write!(f, "the request's Content-Length: {what}"),
        }
    }
}

impl std::error::Error for H1Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            H1Error::Io(e) => Some(e),
            H1Error::ClientBody(e) => Some(&**e),
            _ => None,
        }
    }
}

impl From<PumpError> for H1Error {
    fn from(e: PumpError) -> Self {
        match e {
            PumpError::Write(e) => H1Error::Io(e),
            PumpError::Body(e) => H1Error::ClientBody(e),
            PumpError::Length(what) => H1Error::RequestLength(what),
        }
    }
}

/// An exchange that failed, and whether the request may go out again on
/// another connection (a pooled connection the backend had closed, with
/// nothing received and the whole request still at hand).
pub struct Failed {
    pub error: H1Error,
    pub retryable: bool,
}

/// Sends `prepared` on `conn` and reads the response head, which must begin
/// by `deadline`. `reused`: the connection came from the pool, so a failure
/// before any response byte may just mean the backend closed it while idle.
pub async fn exchange(
    mut conn: Box<Connection>,
    prepared: &mut Prepared,
    reused: bool,
    target: &Arc<Target>,
    deadline: Instant,
) -> Result<Response<ResponseBody>, Failed> {
    conn.deadline = Some(deadline);
    let mut written = 0;
    let wire = prepared.wire();
    let wrote = poll_fn(|cx| {
        while written < wire.len() {
            match Pin::new(&mut conn.io).poll_write(cx, &wire[written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(H1Error::Io(io::ErrorKind::WriteZero.into()))),
                Poll::Ready(Ok(n)) => written += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(H1Error::Io(e))),
                Poll::Pending => {
                    conn.poll_deadline(cx)?;
                    return Poll::Pending;
                }
            }
        }
        Poll::Ready(Ok(()))
    })
    .await;
    if let Err(error) = wrote {
        let retryable = reused && matches!(error, H1Error::Io(_));
        return Err(Failed { error, retryable });
    }
    let head_request = prepared.is_head();
    let mut pump = prepared.take_rest();
    let mut write_failed = false;
    let head = poll_fn(|cx| {
        loop {
            if let Some(p) = &mut pump {
                match p.poll(cx, &mut conn.io) {
                    Poll::Ready(Ok(())) => pump = None,
                    // The backend may have answered and closed early: read on.
                    Poll::Ready(Err(PumpError::Write(_))) => {
                        pump = None;
                        write_failed = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(H1Error::from(e))),
                    Poll::Pending => {}
                }
            }
            if !conn.read_buf.is_empty()
                && let Some(head) = conn.heads.parse(&mut conn.read_buf, head_request)?
            {
                return Poll::Ready(Ok(head));
            }
            if conn.read_buf.len() >= MAX_HEAD_BYTES {
                return Poll::Ready(Err(H1Error::HeadTooLarge));
            }
            let filled = match conn.poll_fill(cx) {
                Poll::Ready(filled) => filled,
                Poll::Pending => {
                    conn.poll_deadline(cx)?;
                    return Poll::Pending;
                }
            };
            match filled {
                Ok(0) if conn.read_buf.is_empty() => return Poll::Ready(Err(H1Error::Closed)),
                Ok(0) => return Poll::Ready(Err(H1Error::Truncated)),
                Ok(_) => {}
                Err(e) => return Poll::Ready(Err(H1Error::Io(e))),
            }
        }
    })
    .await;
    let head = match head {
        Ok(head) => head,
        Err(error) => {
            let nothing_back =
                matches!(error, H1Error::Closed) || (matches!(error, H1Error::Io(_)) && conn.read_buf.is_empty());
            return Err(Failed { error, retryable: reused && prepared.is_replayable() && nothing_back });
        }
    };
    conn.deadline = None;
    let reusable = head.keep_alive && !write_failed;
    let (parts, framing) = head.into_parts();
    let body = ResponseBody::new(conn, framing, pump, reusable, target);
    Ok(Response::from_parts(parts, body))
}
