//! The request body of an HTTP/3 stream as an `http_body::Body`: DATA frames
//! as they arrive, then the trailing HEADERS frame as trailers.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use h3::server::RequestStream;
use http_body::{Frame, SizeHint};

use crate::error::BodyError;

/// The receive half of a request stream. Reading it is what grants the
/// client more QUIC flow-control credit, so a slow upstream slows the client.
/// Dropping it unread sends STOP_SENDING (quinn does so for an unfinished stream).
pub struct RequestBody {
    stream: RequestStream<h3_quinn::RecvStream, Bytes>,
    state: State,
    /// The request's `content-length`, if it sent one: the `size_hint`, and
    /// what the DATA frames must add up to.
    length: Option<u64>,
    /// Bytes of DATA so far.
    received: u64,
    /// A frame read ahead by [`RequestBody::settle`].
    first: Option<Frame<Bytes>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Data,
    Trailers,
    Done,
}

impl RequestBody {
    pub(crate) fn new(stream: RequestStream<h3_quinn::RecvStream, Bytes>, length: Option<u64>) -> Self {
        Self { stream, state: State::Data, length, received: 0, first: None }
    }

    /// Reads up to the first frame, so an empty body is known to be empty.
    ///
    /// HTTP/3 has no END_STREAM flag on HEADERS: a GET ends with the stream's
    /// FIN, usually in the same packet. Without this, a bodiless request of
    /// unknown length would reach an HTTP/1.1 backend as `Transfer-Encoding:
    /// chunked`. Not for streaming calls whose client waits for the server first.
    pub(crate) async fn settle(&mut self) -> Result<(), BodyError> {
        use http_body_util::BodyExt;
        match self.frame().await {
            None => self.state = State::Done,
            Some(Ok(frame)) => self.first = Some(frame),
            Some(Err(e)) => return Err(e),
        }
        Ok(())
    }
}

impl RequestBody {
    /// Ends the body on a length that broke `content-length`, and stops the
    /// client's stream with H3_MESSAGE_ERROR (RFC 9114 §4.1.2).
    fn fail_length(&mut self, declared: u64) -> BodyError {
        self.state = State::Done;
        self.stream.stop_sending(h3::error::Code::H3_MESSAGE_ERROR);
        BodyError::Length { declared, received: self.received }
    }
}

impl http_body::Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if let Some(frame) = self.first.take() {
            return Poll::Ready(Some(Ok(frame)));
        }
        loop {
            match self.state {
                State::Data => match ready!(self.stream.poll_recv_data(cx)) {
                    Ok(Some(mut buf)) => {
                        let bytes = buf.copy_to_bytes(buf.remaining());
                        self.received += bytes.len() as u64;
                        if let Some(declared) = self.length.filter(|&n| self.received > n) {
                            return Poll::Ready(Some(Err(self.fail_length(declared))));
                        }
                        if !bytes.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(bytes))));
                        }
                    }
                    Ok(None) => {
                        if let Some(declared) = self.length.filter(|&n| self.received != n) {
                            return Poll::Ready(Some(Err(self.fail_length(declared))));
                        }
                        self.state = State::Trailers;
                    }
                    Err(e) => {
                        self.state = State::Done;
                        return Poll::Ready(Some(Err(BodyError::Stream(e))));
                    }
                },
                State::Trailers => {
                    let polled = ready!(self.stream.poll_recv_trailers(cx));
                    self.state = State::Done;
                    return Poll::Ready(match polled {
                        Ok(Some(trailers)) => Some(Ok(Frame::trailers(trailers))),
                        Ok(None) => None,
                        Err(e) => Some(Err(BodyError::Stream(e))),
                    });
                }
                State::Done => return Poll::Ready(None),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.state == State::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.length {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}
