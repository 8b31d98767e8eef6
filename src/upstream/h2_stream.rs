//! The two bodies of one call on a gRPC upstream's HTTP/2 connection
//! (`crate::http2::client`): the request body sent into the stream and the
//! response body read out of it.
//!
//! A unary call whose message has already arrived is sent from the
//! request's own task: the client buffers a DATA frame until the stream
//! has window. Only a body still arriving (client streaming, bidi) gets a
//! task, which streams it frame by frame under HTTP/2 flow control.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use h2::Reason;
use http_body::{Body as _, Frame, SizeHint};
use tokio::sync::oneshot;

use crate::body::{Body, BoxError};
use crate::http2::client::{Error, RecvHalf, SendHalf};
use crate::http2::{BodySender, SendEnd, relayed_reason};

/// What the request body had ready when the call was placed.
pub enum Start {
    /// Nothing to send: HEADERS carries END_STREAM.
    Empty,
    /// The whole body, arrived in one frame: sent inline after HEADERS.
    Whole(Bytes),
    /// More is to come: a task streams the body, beginning with this frame
    /// when one was already read.
    Streaming(Option<Result<Frame<Bytes>, BoxError>>),
    /// Handed to a pipe task already: it cannot be sent again.
    Streamed,
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

    /// True when the request can be sent again whole, for a call the
    /// backend refused unprocessed: it never streamed.
    pub fn replayable(&self) -> bool {
        !matches!(self, Start::Streaming(_) | Start::Streamed)
    }

    /// True when HEADERS can end the stream.
    pub fn is_empty(&self) -> bool {
        matches!(self, Start::Empty)
    }

    /// Sends the body on the stream just opened. A whole body stays here
    /// (its bytes shared, not copied) to be sent again if the backend
    /// refuses the stream; one still arriving is handed, with `body`, to a
    /// pipe task, whose cancelling handle is returned.
    pub fn send(&mut self, body: &mut Option<Body>, mut stream: SendHalf) -> Result<Option<PipeCancel>, Error> {
        match self {
            Start::Empty => Ok(None),
            Start::Whole(data) => stream.send_data(data.clone(), true).map(|()| None),
            Start::Streaming(_) | Start::Streamed => {
                let Start::Streaming(first) = std::mem::replace(self, Start::Streamed) else {
                    return Err(Error::Refused);
                };
                let body = body.take().unwrap_or_else(crate::body::empty);
                let (cancel, cancelled) = oneshot::channel();
                tokio::spawn(Pipe { sender: BodySender::new(body, stream, first), cancelled: Some(cancelled) });
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

/// Streams a request body into its HTTP/2 stream ([`BodySender`]);
/// resets the stream when the call is abandoned or the body fails.
struct Pipe {
    sender: BodySender,
    cancelled: Option<oneshot::Receiver<()>>,
}

impl Future for Pipe {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if let Some(cancelled) = this.cancelled.as_mut() {
            match Pin::new(cancelled).poll(cx) {
                Poll::Ready(Ok(())) => {
                    this.sender.reset(Reason::CANCEL);
                    return Poll::Ready(());
                }
                // Disarmed: the response is complete, the body may finish.
                Poll::Ready(Err(_)) => this.cancelled = None,
                Poll::Pending => {}
            }
        }
        match std::task::ready!(this.sender.poll_send(cx)) {
            // No stall limit is set on a backend's stream: a gRPC backend may rightly hold back.
            SendEnd::Done | SendEnd::Gone | SendEnd::Stalled(_) => {}
            SendEnd::BodyFailed(e) => {
                // The client's body failed (reset, malformed): so does the call.
                tracing::debug!(error = %e, "gRPC request body failed; resetting the backend stream");
                this.sender.reset(relayed_reason(&*e).unwrap_or(Reason::CANCEL));
            }
        }
        Poll::Ready(())
    }
}

/// A backend's response body: DATA as it arrives, then the trailers. A
/// reset with NO_ERROR or CANCEL ends it (a server may reset once its
/// response is complete, RFC 9113 §8.1); any other failure is an error,
/// never a body passed on as complete. The request body's pipe is
/// cancelled if this body is dropped unfinished.
pub struct ResponseBody {
    recv: RecvHalf,
    data_done: bool,
    /// Cancels the request body's pipe if this body is dropped unfinished.
    pipe: Option<PipeCancel>,
}

impl ResponseBody {
    /// Wraps a response's stream; `pipe` is the request body's, if it has one.
    pub fn new(recv: RecvHalf, pipe: Option<PipeCancel>) -> Self {
        Self { recv, data_done: false, pipe }
    }

    fn end_or_error(&mut self, e: Error) -> Option<Result<Frame<Bytes>, BoxError>> {
        match e {
            Error::Reset(Reason::NO_ERROR | Reason::CANCEL) => {
                self.finished();
                None
            }
            e => Some(Err(Box::new(e))),
        }
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
        if !this.data_done {
            match this.recv.poll_data(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(data))) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Poll::Ready(Some(Err(e))) => return Poll::Ready(this.end_or_error(e)),
                Poll::Ready(None) => this.data_done = true,
            }
        }
        match this.recv.poll_trailers(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(trailers)) => {
                this.finished();
                Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))))
            }
            Poll::Ready(Err(e)) => Poll::Ready(this.end_or_error(e)),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
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
