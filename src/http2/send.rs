//! A body streamed into an HTTP/2 stream: one frame at a time, taking the
//! next only once the stream has send window (the backpressure), trailers
//! last.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use h2::{Reason, SendStream};
use http_body::{Body as _, Frame};

use crate::body::{Body, BoxError};

/// How sending a body ended.
#[derive(Debug)]
pub enum SendEnd {
    /// Everything was sent, END_STREAM included.
    Done,
    /// The peer reset the stream or the connection failed: nothing more can be sent.
    Gone,
    /// The body failed; the stream is left open for the caller to reset.
    BodyFailed(BoxError),
}

/// Streams `body` into `stream`; see the module doc.
pub struct BodySender {
    body: Body,
    stream: SendStream<Bytes>,
    /// A frame read before sending began (`upstream::h2_stream::Start`).
    first: Option<Result<Frame<Bytes>, BoxError>>,
    /// A chunk waiting for send capacity, and whether it ends the body.
    held: Option<(Bytes, bool)>,
}

impl BodySender {
    /// Sends `first` (when given), then the rest of `body`.
    pub fn new(body: Body, stream: SendStream<Bytes>, first: Option<Result<Frame<Bytes>, BoxError>>) -> Self {
        Self { body, stream, first, held: None }
    }

    /// Resets the stream (the body failed, or the call was abandoned).
    pub fn reset(&mut self, reason: Reason) {
        self.stream.send_reset(reason);
    }

    /// Drives the body into the stream until it has all gone, or failed.
    pub fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<SendEnd> {
        loop {
            if let Some((_, end)) = self.held {
                // Claim a little window, not the whole chunk: h2 raises the claim
                // to what is buffered, and a large up-front claim can starve
                // other streams (hyper #4003). Window the connection has is
                // assigned at once, so a stream that has some does not wait.
                if self.stream.capacity() == 0 {
                    self.stream.reserve_capacity(1);
                    while self.stream.capacity() == 0 {
                        match self.stream.poll_capacity(cx) {
                            Poll::Ready(Some(Ok(_))) => {}
                            Poll::Ready(Some(Err(_)) | None) => return Poll::Ready(SendEnd::Gone),
                            Poll::Pending => return self.pending_unless_reset(cx),
                        }
                    }
                }
                let (data, _) = self.held.take().expect("checked above");
                if self.stream.send_data(data, end).is_err() {
                    return Poll::Ready(SendEnd::Gone);
                }
                if end {
                    return Poll::Ready(SendEnd::Done);
                }
                continue;
            }
            let frame = match self.first.take() {
                Some(frame) => Some(frame),
                None => match Pin::new(&mut self.body).poll_frame(cx) {
                    Poll::Ready(frame) => frame,
                    Poll::Pending => return self.pending_unless_reset(cx),
                },
            };
            match frame {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        let end = self.body.is_end_stream();
                        if data.is_empty() && !end {
                            continue;
                        }
                        self.held = Some((data, end));
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            self.stream.reserve_capacity(0);
                            return Poll::Ready(match self.stream.send_trailers(trailers) {
                                Ok(()) => SendEnd::Done,
                                Err(_) => SendEnd::Gone,
                            });
                        }
                    }
                },
                Some(Err(e)) => return Poll::Ready(SendEnd::BodyFailed(e)),
                None => {
                    return Poll::Ready(match self.stream.send_data(Bytes::new(), true) {
                        Ok(()) => SendEnd::Done,
                        Err(_) => SendEnd::Gone,
                    });
                }
            }
        }
    }

    /// Waiting on the body or for window: a reset by the peer ends the wait.
    fn pending_unless_reset(&mut self, cx: &mut Context<'_>) -> Poll<SendEnd> {
        ready!(self.stream.poll_reset(cx)).ok();
        Poll::Ready(SendEnd::Gone)
    }
}
