//! A client's request stream (DATA frames and trailers) as a body, window handed back as
//! frames are taken (so flow control follows the reader's pace).
//!
//! Small DATA frames that have already arrived are handed on as one chunk:
//! frame boundaries mean nothing to HTTP or gRPC, and a peer streaming
//! small messages sends a frame per message, which would otherwise cost a
//! frame (and its bookkeeping in h2) each on the other side too. Nothing
//! waits to be coalesced: only what is already there is taken.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use h2::RecvStream;
use http_body::{Frame, SizeHint};

use crate::body::BoxError;

/// Small DATA frames already received are passed on together up to this
/// many bytes.
const COALESCE_LIMIT: usize = 16 * 1024;

/// See the module doc.
pub struct RecvBody {
    recv: RecvStream,
    data_done: bool,
    /// An error that came after data passed on in the same call, reported
    /// next (boxed: rare, and this body travels inside every request's future).
    failed: Option<Box<h2::Error>>,
    /// Bytes still to come per `Content-Length`; [`NO_LENGTH`] without one.
    remaining: u64,
}

/// `remaining` when the head gave no `Content-Length`.
const NO_LENGTH: u64 = u64::MAX;

impl RecvBody {
    /// Wraps a stream; `content_length` is the head's, if it had one.
    pub fn new(recv: RecvStream, content_length: Option<u64>) -> Self {
        let remaining = content_length.unwrap_or(NO_LENGTH);
        Self { recv, data_done: false, failed: None, remaining }
    }

    /// `first` and the DATA frames already received after it, up to [`COALESCE_LIMIT`].
    fn coalesce(&mut self, first: Bytes, cx: &mut Context<'_>) -> Bytes {
        if first.len() >= COALESCE_LIMIT / 4 {
            return first;
        }
        let mut joined: Option<BytesMut> = None;
        while joined.as_ref().map_or(first.len(), |j| j.len()) < COALESCE_LIMIT {
            match self.recv.poll_data(cx) {
                Poll::Ready(Some(Ok(more))) => {
                    let _ = self.recv.flow_control().release_capacity(more.len());
                    let buf = joined.get_or_insert_with(|| {
                        let mut buf = BytesMut::with_capacity(COALESCE_LIMIT);
                        buf.extend_from_slice(&first);
                        buf
                    });
                    buf.extend_from_slice(&more);
                }
                Poll::Ready(Some(Err(e))) => {
                    self.failed = Some(Box::new(e));
                    break;
                }
                Poll::Ready(None) => {
                    self.data_done = true;
                    break;
                }
                Poll::Pending => break,
            }
        }
        joined.map_or(first, BytesMut::freeze)
    }
}

impl http_body::Body for RecvBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(e) = this.failed.take() {
            return Poll::Ready(failure(*e));
        }
        if !this.data_done {
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    let data = this.coalesce(data, cx);
                    if this.remaining != NO_LENGTH {
                        // h2 has checked the length against Content-Length.
                        this.remaining = this.remaining.saturating_sub(data.len() as u64);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(failure(e)),
                None => this.data_done = true,
            }
        }
        match ready!(this.recv.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(failure(e)),
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

/// Any reset or error fails the body: a client that resets its request has
/// abandoned it, and a body cut short must never pass on as complete.
fn failure(e: h2::Error) -> Option<Result<Frame<Bytes>, BoxError>> {
    Some(Err(Box::new(e)))
}
