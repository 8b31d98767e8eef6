//! gRPC response body → gRPC-Web response body.
//!
//! Message frames pass through as they arrive (so a server stream reaches
//! the browser message by message); the HTTP/2 trailers become the trailer
//! frame (flag 0x80) at the end (PROTOCOL-WEB.md, "Message framing"). For
//! `-text`, every chunk is base64-encoded on its own, padded.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use http_body::{Body, Frame, SizeHint};

use crate::code::percent_encode_message;
use crate::frame::encode_trailers;
use crate::{Code, Encoding, ErrorSlot, GRPC_MESSAGE, GRPC_STATUS};

/// Translates a gRPC response body into a gRPC-Web one. Never fails: a
/// broken upstream stream ends with a trailer frame carrying a status, so a
/// browser client always learns how the call ended.
#[derive(Debug)]
pub struct ResponseBody<B> {
    inner: B,
    encoding: Encoding,
    /// The status came in the response head (trailers-only): no trailer frame.
    status_in_head: bool,
    slot: ErrorSlot,
    done: bool,
}

impl<B> ResponseBody<B> {
    /// Wraps the gRPC body `inner` for a client that asked for `encoding`.
    /// `status_in_head` is true when the head already had `grpc-status`.
    pub fn new(inner: B, encoding: Encoding, status_in_head: bool, slot: ErrorSlot) -> Self {
        Self { inner, encoding, status_in_head, slot, done: false }
    }

    fn encode(&self, bytes: Bytes) -> Bytes {
        match self.encoding {
            Encoding::Binary => bytes,
            Encoding::Text => crate::text::encode(&bytes),
        }
    }

    /// The trailer frame for a call that ended without trailers of its own.
    fn synthetic_trailers(&self, fallback: Code, message: &str) -> Bytes {
        let (code, message) = match self.slot.get() {
            Some(e) => (e.code(), e.to_string()),
            None => (fallback, message.to_string()),
        };
        self.encode(encode_trailers(&status_trailers(code, &message)))
    }
}

/// `grpc-status` and `grpc-message` as a header map.
pub fn status_trailers(code: Code, message: &str) -> HeaderMap {
    let mut map = HeaderMap::with_capacity(2);
    map.insert(&GRPC_STATUS, HeaderValue::from_static(code.as_str()));
    if let Ok(value) = HeaderValue::from_str(&percent_encode_message(message)) {
        map.insert(&GRPC_MESSAGE, value);
    }
    map
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        loop {
            if self.done {
                return Poll::Ready(None);
            }
            let frame = match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => frame,
                Poll::Ready(Some(Err(e))) => {
                    self.done = true;
                    let message = format!("upstream stream failed: {e}");
                    return Poll::Ready(Some(Ok(Frame::data(self.synthetic_trailers(Code::Unavailable, &message)))));
                }
                Poll::Ready(None) => {
                    self.done = true;
                    if self.status_in_head && self.slot.get().is_none() {
                        return Poll::Ready(None);
                    }
                    let trailers = self.synthetic_trailers(Code::Internal, "upstream ended the call without a status");
                    return Poll::Ready(Some(Ok(Frame::data(trailers))));
                }
            };
            match frame.into_data() {
                Ok(data) if data.is_empty() => continue,
                Ok(data) => return Poll::Ready(Some(Ok(Frame::data(self.encode(data))))),
                Err(frame) => {
                    let Ok(trailers) = frame.into_trailers() else { continue };
                    self.done = true;
                    return Poll::Ready(Some(Ok(Frame::data(self.encode(encode_trailers(&trailers))))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
