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
    /// The peer took none of the body for the sender's stall limit (its
    /// window shut, or its socket full); the stream is left for the caller to reset.
    Stalled(std::time::Duration),
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
    /// How long the peer may leave a chunk waiting (`send_timeout`); none: unbounded.
    stall: Option<crate::stall::Stall>,
    /// The body has all been handed to the stream; waiting for its last chunk to leave.
    ending: bool,
}

impl BodySender {
    /// Sends `first` (when given), then the rest of `body`.
    pub fn new(body: Body, stream: SendHalf, first: Option<Result<Frame<Bytes>, BoxError>>) -> Self {
        Self { body, stream, first, stall: None, ending: false }
    }

    /// Ends the send with [`SendEnd::Stalled`] once a chunk has waited
    /// `limit` for the peer to take it (a server's `send_timeout`).
    pub fn stalling_after(mut self, limit: std::time::Duration) -> Self {
        self.stall = Some(crate::stall::Stall::new(limit));
        self
    }

    /// Resets the stream (the body failed, or it was abandoned).
    pub fn reset(&mut self, reason: Reason) {
        self.stream.reset(reason);
    }

    /// Drives the body into the stream until it has all gone, or failed.
    pub fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<SendEnd> {
        if self.ending {
            // The last chunk waits for the peer's window (only with a stall limit).
            return match self.stream.poll_drained(cx) {
                Poll::Ready(()) => Poll::Ready(SendEnd::Done),
                Poll::Pending => self.poll_stalled(cx),
            };
        }
        loop {
            match self.stream.poll_ready(cx) {
                Poll::Ready(Ok(())) => {
                    if let Some(stall) = &mut self.stall {
                        stall.progressed();
                    }
                }
                Poll::Ready(Err(_)) => return Poll::Ready(SendEnd::Gone),
                // The last chunk still waits for the peer's window or socket.
                Poll::Pending => return self.poll_stalled(cx),
            }
            let frame = match self.first.take() {
                Some(frame) => Some(frame),
                None => match Pin::new(&mut self.body).poll_frame(cx) {
                    Poll::Ready(frame) => frame,
                    // Waiting on the body: a reset by the peer ends the wait.
                    Poll::Pending => return self.stream.poll_reset(cx).map(|_| SendEnd::Gone),
                },
            };
            let last = match frame {
                None => self.stream.end_with_data(Bytes::new()),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) if self.body.is_end_stream() => self.stream.end_with_data(data),
                    Ok(data) => {
                        if !data.is_empty() && self.stream.send_data(data, false).is_err() {
                            return Poll::Ready(SendEnd::Gone);
                        }
                        continue;
                    }
                    Err(frame) => match frame.into_trailers() {
                        Ok(trailers) => self.stream.end_with_trailers(&trailers),
                        Err(_) => continue,
                    },
                },
                Some(Err(e)) => return Poll::Ready(SendEnd::BodyFailed(e)),
            };
            return match last {
                Err(_) => Poll::Ready(SendEnd::Gone),
                Ok(drained) if drained || self.stall.is_none() => Poll::Ready(SendEnd::Done),
                // With a stall limit the send lasts until the last chunk has left:
                // a peer whose window stays shut must not keep it queued for ever.
                Ok(_) => {
                    self.ending = true;
                    match self.stream.poll_drained(cx) {
                        Poll::Ready(()) => Poll::Ready(SendEnd::Done),
                        Poll::Pending => self.poll_stalled(cx),
                    }
                }
            };
        }
    }

    /// Waiting on the peer: `Stalled` once the wait has lasted the stall limit.
    fn poll_stalled(&mut self, cx: &mut Context<'_>) -> Poll<SendEnd> {
        match &mut self.stall {
            Some(stall) => stall.poll_waiting(cx).map(|()| SendEnd::Stalled(stall.limit())),
            None => Poll::Pending,
        }
    }
}
