//! gRPC-Web request body → gRPC request body, frame by frame.
//!
//! Binary bodies are already gRPC frames (PROTOCOL-WEB.md: "the same as
//! gRPC"); they pass through untouched while their framing is checked.
//! `-text` bodies are base64-decoded as they stream, then checked alike.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::text::Base64Decoder;
use crate::{Encoding, ErrorSlot, FrameChecker, GrpcWebError};

/// Translates a gRPC-Web request body; on a malformed body it fails the
/// stream (so the upstream call is reset) and records why in its [`ErrorSlot`].
#[derive(Debug)]
pub struct RequestBody<B> {
    inner: B,
    base64: Option<Base64Decoder>,
    frames: FrameChecker,
    slot: ErrorSlot,
    done: bool,
}

impl<B> RequestBody<B> {
    /// Wraps `inner`, which is encoded as `encoding`.
    pub fn new(inner: B, encoding: Encoding, slot: ErrorSlot) -> Self {
        let base64 = (encoding == Encoding::Text).then(Base64Decoder::default);
        Self { inner, base64, frames: FrameChecker::default(), slot, done: false }
    }

    fn fail<E>(&mut self, error: GrpcWebError) -> Poll<Option<Result<Frame<Bytes>, E>>>
    where
        E: From<GrpcWebError>,
    {
        self.done = true;
        self.slot.set(error.clone());
        Poll::Ready(Some(Err(E::from(error))))
    }
}

/// The error a translated request body yields: the inner body's, or a framing one.
#[derive(Debug)]
pub enum RequestBodyError<E> {
    /// Reading the client's body failed.
    Body(E),
    /// The body is not valid gRPC-Web.
    Malformed(GrpcWebError),
}

impl<E> From<GrpcWebError> for RequestBodyError<E> {
    fn from(e: GrpcWebError) -> Self {
        RequestBodyError::Malformed(e)
    }
}

impl<E: std::fmt::Display> std::fmt::Display for RequestBodyError<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RequestBodyError::Body(e) => e.fmt(f),
            RequestBodyError::Malformed(e) => e.fmt(f),
        }
    }
}

// Bounds are Display + Debug, not Error: a boxed `dyn Error` body error
// (the common case) does not itself implement `Error`.
impl<E: std::fmt::Display + std::fmt::Debug> std::error::Error for RequestBodyError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RequestBodyError::Body(_) => None,
            RequestBodyError::Malformed(e) => Some(e),
        }
    }
}

impl<B> Body for RequestBody<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = RequestBodyError<B::Error>;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        loop {
            if self.done {
                return Poll::Ready(None);
            }
            let frame = match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => {
                    self.done = true;
                    return Poll::Ready(Some(Err(RequestBodyError::Body(e))));
                }
                Poll::Ready(None) => {
                    let end = match &self.base64 {
                        Some(d) => d.finish().and_then(|()| self.frames.finish()),
                        None => self.frames.finish(),
                    };
                    if let Err(e) = end {
                        return self.fail(e);
                    }
                    self.done = true;
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Ok(frame))) => frame,
            };
            // Browsers send no request trailers; any are dropped.
            let Ok(data) = frame.into_data() else { continue };
            let data = match &mut self.base64 {
                Some(decoder) => match decoder.decode(&data) {
                    Ok(decoded) => decoded,
                    Err(e) => return self.fail(e),
                },
                None => data,
            };
            if let Err(e) = self.frames.check(&data) {
                return self.fail(e);
            }
            if data.is_empty() {
                continue;
            }
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        match self.base64 {
            // Binary bodies keep their length.
            None => self.inner.size_hint(),
            Some(_) => SizeHint::default(),
        }
    }
}
