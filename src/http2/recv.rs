//! A client's request stream on our server (DATA frames, then trailers) as
//! a body. Window is handed back as frames are taken, so flow control
//! follows the reader's pace; DATA already received is handed on joined
//! (see [`super::RecvHalf::poll_data`]).

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Frame, SizeHint};

use super::RecvHalf;
use crate::body::BoxError;

/// See the module doc. Any reset or error fails the body: a client that
/// resets its request has abandoned it, and a body cut short must never
/// pass on as complete.
pub struct RecvBody {
    recv: RecvHalf,
    data_done: bool,
    /// Bytes still to come per `Content-Length`; [`NO_LENGTH`] without one.
    remaining: u64,
}

/// `remaining` when the head gave no `Content-Length`.
const NO_LENGTH: u64 = u64::MAX;

impl RecvBody {
    /// Wraps a stream; `content_length` is the head's, if it had one.
    pub fn new(recv: RecvHalf, content_length: Option<u64>) -> Self {
        Self { recv, data_done: false, remaining: content_length.unwrap_or(NO_LENGTH) }
    }
}

impl http_body::Body for RecvBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if !this.data_done {
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    if this.remaining != NO_LENGTH {
                        // The connection has checked the length against Content-Length.
                        this.remaining = this.remaining.saturating_sub(data.len() as u64);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(Box::new(e)))),
                None => this.data_done = true,
            }
        }
        match ready!(this.recv.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(Box::new(e)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            NO_LENGTH => SizeHint::default(),
            n => SizeHint::with_exact(n),
        }
    }
}
