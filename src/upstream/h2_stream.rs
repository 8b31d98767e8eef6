//! The two bodies of one call on a gRPC upstream's HTTP/2 connection, driven
//! with `h2` directly: the request body sent into the stream and the
//! response body read out of it.
//!
//! Why not hyper's HTTP/2 client: it hands each request to the connection's
//! task over a channel, spawns one task per call to wait for the response,
//! and another to pipe any non-empty request body (a new stream is always
//! still "pending open" when hyper first tries the body inline, so that try
//! never succeeds). A unary call whose message has already arrived needs
//! none of that: h2 buffers a DATA frame until its stream opens and has
//! window, so the call is sent from the request's own task. Only a body
//! still arriving (client streaming, bidi) gets a task, which streams it
//! frame by frame under HTTP/2 flow control.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker, ready};

use bytes::Bytes;
use h2::{Reason, RecvStream, SendStream};
use http_body::{Body as _, Frame, SizeHint};
use tokio::sync::oneshot;

use crate::body::{Body, BoxError};

/// What the request body had ready when the call was placed.
pub enum Start {
    /// Nothing to send: HEADERS carries END_STREAM.
    Empty,
    /// The whole body, arrived in one frame: sent inline after HEADERS.
    Whole(Bytes),
    /// More is to come: a task streams the body, beginning with this frame
    /// when one was already read.
    Streaming(Option<Result<Frame<Bytes>, BoxError>>),
}

impl Start {
    /// Looks at `body` without waiting: a frame that is already here is
    /// taken, and if it ends the body the call needs no pipe task.
    pub fn peek(body: &mut Body) -> Self {
        if body.is_end_stream() {
            return Start::Empty;
        }
        let mut cx = Context::from_waker(Waker::noop());
        match Pin::new(&mut *body).poll_frame(&mut cx) {
            Poll::Pending => Start::Streaming(None),
            Poll::Ready(None) => Start::Empty,
            Poll::Ready(Some(Err(e))) => Start::Streaming(Some(Err(e))),
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) if body.is_end_stream() => Start::Whole(data),
                Ok(data) => Start::Streaming(Some(Ok(Frame::data(data)))),
                Err(frame) => Start::Streaming(Some(Ok(frame))),
            },
        }
    }

    /// True when HEADERS can end the stream.
    pub fn is_empty(&self) -> bool {
        matches!(self, Start::Empty)
    }

    /// Sends the body on the stream just opened. Returns the handle that
    /// cancels the pipe task, when one was spawned.
    pub fn send(self, body: Body, mut stream: SendStream<Bytes>) -> Result<Option<PipeCancel>, h2::Error> {
        match self {
            Start::Empty => Ok(None),
            Start::Whole(data) => stream.send_data(data, true).map(|()| None),
            Start::Streaming(first) => {
                let (cancel, cancelled) = oneshot::channel();
                tokio::spawn(Pipe { body, stream, first, held: None, cancelled: Some(cancelled) });
                Ok(Some(PipeCancel(Some(cancel))))
            }
        }
    }
}

/// Resets the backend stream if the call is abandoned (client gone,
/// deadline passed) before its response ended; dropped with a complete
/// response, it lets the request body finish as it would.
pub struct PipeCancel(Option<oneshot::Sender<()>>);

impl PipeCancel {
    /// The response ended normally: the pipe is left to finish.
    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for PipeCancel {
    fn drop(&mut self) {
        if let Some(cancel) = self.0.take() {
            let _ = cancel.send(());
        }
    }
}

/// Streams a request body into its HTTP/2 stream: one frame at a time,
/// waiting for send window before taking the next (the backpressure).
struct Pipe {
    body: Body,
    stream: SendStream<Bytes>,
    first: Option<Result<Frame<Bytes>, BoxError>>,
    /// A chunk waiting for send capacity, and whether it ends the body.
    held: Option<(Bytes, bool)>,
    cancelled: Option<oneshot::Receiver<()>>,
}

impl Future for Pipe {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if let Some(cancelled) = this.cancelled.as_mut() {
            match Pin::new(cancelled).poll(cx) {
                Poll::Ready(Ok(())) => {
                    this.stream.send_reset(Reason::CANCEL);
                    return Poll::Ready(());
                }
                // Disarmed: the response is complete, the body may finish.
                Poll::Ready(Err(_)) => this.cancelled = None,
                Poll::Pending => {}
            }
        }
        loop {
            // The backend reset the stream: nothing more to send.
            if this.stream.poll_reset(cx).is_ready() {
                return Poll::Ready(());
            }
            if let Some((_, end)) = this.held {
                while this.stream.capacity() == 0 {
                    match ready!(this.stream.poll_capacity(cx)) {
                        Some(Ok(0)) => {}
                        Some(Ok(_)) => break,
                        Some(Err(_)) | None => return Poll::Ready(()),
                    }
                }
                let (data, _) = this.held.take().expect("checked above");
                if this.stream.send_data(data, end).is_err() || end {
                    return Poll::Ready(());
                }
                continue;
            }
            let frame = match this.first.take() {
                Some(frame) => Some(frame),
                None => ready!(Pin::new(&mut this.body).poll_frame(cx)),
            };
            match frame {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        let end = this.body.is_end_stream();
                        if data.is_empty() {
                            if this.stream.send_data(data, end).is_err() || end {
                                return Poll::Ready(());
                            }
                        } else {
                            // Claim a little window, not the whole chunk: h2
                            // raises the claim to what is buffered, and a large
                            // up-front claim can starve other streams (hyper #4003).
                            this.stream.reserve_capacity(1);
                            this.held = Some((data, end));
                        }
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            this.stream.reserve_capacity(0);
                            let _ = this.stream.send_trailers(trailers);
                            return Poll::Ready(());
                        }
                    }
                },
                Some(Err(e)) => {
                    // The client's body failed (reset, malformed): so does the call.
                    tracing::debug!(error = %e, "gRPC request body failed; resetting the backend stream");
                    this.stream.send_reset(reason_in(&*e).unwrap_or(Reason::CANCEL));
                    return Poll::Ready(());
                }
                None => {
                    let _ = this.stream.send_data(Bytes::new(), true);
                    return Poll::Ready(());
                }
            }
        }
    }
}

/// The HTTP/2 reason somewhere in `err`'s source chain (a client's RST_STREAM).
fn reason_in(err: &(dyn std::error::Error + 'static)) -> Option<Reason> {
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(reason) = e.downcast_ref::<h2::Error>().and_then(h2::Error::reason) {
            return Some(reason);
        }
        current = e.source();
    }
    None
}

/// Small DATA frames already received are passed on together up to this
/// many bytes.
const COALESCE_LIMIT: usize = 16 * 1024;

/// A backend's response body: DATA frames (their window handed back as
/// they are taken, so flow control follows the client's pace), then trailers.
///
/// Small DATA frames that have already arrived are handed on as one chunk:
/// a gRPC stream is a byte stream whose DATA frame boundaries mean nothing,
/// and a backend streaming small messages sends a frame per message, which
/// would otherwise cost a frame (and its bookkeeping in h2) each on the
/// client's side too. Nothing waits to be coalesced: only what is already
/// there is taken.
pub struct ResponseBody {
    recv: RecvStream,
    data_done: bool,
    /// An error that came after data passed on in the same call, reported next.
    failed: Option<h2::Error>,
    /// Cancels the request body's pipe if this body is dropped unfinished.
    pipe: Option<PipeCancel>,
}

impl ResponseBody {
    /// Wraps a response's stream; `pipe` is the request body's, if it has one.
    pub fn new(recv: RecvStream, pipe: Option<PipeCancel>) -> Self {
        Self { recv, data_done: false, failed: None, pipe }
    }

    /// `first` and the DATA frames already received after it, up to [`COALESCE_LIMIT`].
    fn coalesce(&mut self, first: Bytes, cx: &mut Context<'_>) -> Bytes {
        if first.len() >= COALESCE_LIMIT / 4 {
            return first;
        }
        let mut joined: Option<bytes::BytesMut> = None;
        while joined.as_ref().map_or(first.len(), |j| j.len()) < COALESCE_LIMIT {
            match self.recv.poll_data(cx) {
                Poll::Ready(Some(Ok(more))) => {
                    let _ = self.recv.flow_control().release_capacity(more.len());
                    let buf = joined.get_or_insert_with(|| {
                        let mut buf = bytes::BytesMut::with_capacity(COALESCE_LIMIT);
                        buf.extend_from_slice(&first);
                        buf
                    });
                    buf.extend_from_slice(&more);
                }
                Poll::Ready(Some(Err(e))) => {
                    self.failed = Some(e);
                    break;
                }
                Poll::Ready(None) => {
                    self.data_done = true;
                    break;
                }
                Poll::Pending => break,
            }
        }
        joined.map_or(first, bytes::BytesMut::freeze)
    }

    fn finished(&mut self) {
        if let Some(pipe) = self.pipe.as_mut() {
            pipe.disarm();
        }
    }
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(e) = this.failed.take() {
            return Poll::Ready(end_or_error(e));
        }
        if !this.data_done {
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    let data = this.coalesce(data, cx);
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(end_or_error(e)),
                None => this.data_done = true,
            }
        }
        let trailers = ready!(this.recv.poll_trailers(cx));
        this.finished();
        match trailers {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(end_or_error(e)),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// A reset with NO_ERROR or CANCEL ends the body rather than failing it
/// (RFC 9113 §8.1: a server may reset once its response is complete), as
/// hyper's client does.
fn end_or_error(e: h2::Error) -> Option<Result<Frame<Bytes>, BoxError>> {
    match e.reason() {
        Some(Reason::NO_ERROR | Reason::CANCEL) => None,
        _ => Some(Err(Box::new(e))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body;

    /// A body whose frames are not there yet.
    struct NotYet;

    impl http_body::Body for NotYet {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Pending
        }
    }

    #[test]
    fn a_body_that_has_arrived_whole_needs_no_pipe() {
        assert!(matches!(Start::peek(&mut body::full("message")), Start::Whole(d) if d == "message"));
        assert!(Start::peek(&mut body::empty()).is_empty());
    }

    #[test]
    fn a_body_still_arriving_is_streamed_from_what_was_read() {
        assert!(matches!(Start::peek(&mut body::boxed(NotYet)), Start::Streaming(None)));
        // Two frames: the first is kept for the pipe, which sends it before reading on.
        let two = http_body_util::StreamBody::new(futures_util::stream::iter([
            Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"a"))),
            Ok(Frame::data(Bytes::from_static(b"b"))),
        ]));
        let start = Start::peek(&mut body::boxed(two));
        assert!(matches!(start, Start::Streaming(Some(Ok(f))) if f.data_ref().is_some_and(|d| d == "a")));
    }
}
