//! A body streamed into one of our HTTP/2 streams (a server's response, a
//! client's request): one frame at a time, taking the next only once the
//! last has gone out to the connection (the backpressure: at most one
//! chunk per stream waits for flow-control window), trailers last.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use h2::Reason;
use http_body::{Body as _, Frame};

use super::SendHalf;
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
    stream: SendHalf,
    /// A frame read before sending began (`upstream::h2_stream::Start`).
    first: Option<Result<Frame<Bytes>, BoxError>>,
}

impl BodySender {
    /// Sends `first` (when given), then the rest of `body`.
    pub fn new(body: Body, stream: SendHalf, first: Option<Result<Frame<Bytes>, BoxError>>) -> Self {
        Self { body, stream, first }
    }

    /// Resets the stream (the body failed, or it was abandoned).
    pub fn reset(&mut self, reason: Reason) {
        self.stream.reset(reason);
    }

    /// Drives the body into the stream until it has all gone, or failed.
    pub fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<SendEnd> {
        loop {
            match self.stream.poll_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(_)) => return Poll::Ready(SendEnd::Gone),
                Poll::Pending => return Poll::Pending,
            }
            let frame = match self.first.take() {
                Some(frame) => Some(frame),
                None => match Pin::new(&mut self.body).poll_frame(cx) {
                    Poll::Ready(frame) => frame,
                    // Waiting on the body: a reset by the peer ends the wait.
                    Poll::Pending => return self.stream.poll_reset(cx).map(|_| SendEnd::Gone),
                },
            };
            match frame {
                None => return Poll::Ready(sent(self.stream.send_data(Bytes::new(), true))),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        let end = self.body.is_end_stream();
                        if data.is_empty() && !end {
                            continue;
                        }
                        let result = self.stream.send_data(data, end);
                        if result.is_err() || end {
                            return Poll::Ready(sent(result));
                        }
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            return Poll::Ready(sent(self.stream.send_trailers(&trailers)));
                        }
                    }
                },
                Some(Err(e)) => return Poll::Ready(SendEnd::BodyFailed(e)),
            }
        }
    }
}

/// How a last send ended the body.
fn sent(result: Result<(), super::Error>) -> SendEnd {
    match result {
        Ok(()) => SendEnd::Done,
        Err(_) => SendEnd::Gone,
    }
}
