//! The streaming body type every stage passes along, and the wrappers that
//! enforce limits and count bytes without buffering.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::{BodyExt, Empty, Full};

/// Errors a body can yield; boxed because bodies come from many sources.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A streaming body of `Bytes` frames, trailers included.
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// A body with nothing in it.
pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// A body with all of `bytes` in one frame.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed_unsync()
}

/// Boxes any body whose error converts into [`BoxError`].
pub fn boxed<B>(body: B) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// A client's request body as a listener hands it over: our HTTP/1.1
/// server's, our HTTP/2 server's, the HTTP/3 bridge's for QUIC. An enum rather than a
/// box, so the common path costs no allocation (the HTTP/3 body, six times
/// larger, is boxed so it does not make every request's body that large).
pub enum ClientBody {
    Http1(crate::listen::http1::RequestBody),
    Http2(crate::http2::RecvBody),
    H3(Box<tollgate_h3::RequestBody>),
    /// No body (a WebTransport CONNECT, whose stream becomes the session).
    Empty,
}

impl http_body::Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ClientBody::Http1(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            ClientBody::Http2(b) => Pin::new(b).poll_frame(cx),
            ClientBody::H3(b) => Pin::new(&mut **b).poll_frame(cx).map_err(Into::into),
            ClientBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Http1(b) => b.is_end_stream(),
            ClientBody::Http2(b) => b.is_end_stream(),
            ClientBody::H3(b) => b.is_end_stream(),
            ClientBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::Http1(b) => b.size_hint(),
            ClientBody::Http2(b) => b.size_hint(),
            ClientBody::H3(b) => b.size_hint(),
            ClientBody::Empty => SizeHint::with_exact(0),
        }
    }
}

/// The request body went over the configured limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyTooLarge {
    pub limit: u64,
}

impl std::fmt::Display for BodyTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "request body exceeds the limit of {} bytes", self.limit)
    }
}

impl std::error::Error for BodyTooLarge {}

pin_project_lite::pin_project! {
    /// Passes frames through and fails with [`BodyTooLarge`] once more than
    /// `limit` data bytes have gone by (for chunked bodies, whose size is
    /// unknown up front).
    pub struct Limited<B> {
        #[pin]
        inner: B,
        remaining: u64,
        limit: u64,
    }
}

impl<B> Limited<B> {
    pub fn new(inner: B, limit: u64) -> Self {
        Self { inner, remaining: limit, limit }
    }
}

impl<B> http_body::Body for Limited<B>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let len = data.len() as u64;
                    if len > *this.remaining {
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge { limit: *this.limit }))));
                    }
                    *this.remaining -= len;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The limit of the [`BodyTooLarge`] that `err` is, or has in its source
/// chain; `None` for any other failure.
pub fn body_too_large_limit(err: &(dyn std::error::Error + 'static)) -> Option<u64> {
    find_in_chain::<BodyTooLarge>(err).map(|e| e.limit)
}

/// The wait of the [`BodyStalled`] that `err` is, or has in its source chain.
pub fn body_stalled_after(err: &(dyn std::error::Error + 'static)) -> Option<std::time::Duration> {
    find_in_chain::<BodyStalled>(err).map(|e| e.after)
}

fn find_in_chain<'a, E: std::error::Error + 'static>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a E> {
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<E>() {
            return Some(found);
        }
        current = e.source();
    }
    None
}

/// The client sent nothing more of its request body for `after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyStalled {
    pub after: std::time::Duration,
}

impl std::fmt::Display for BodyStalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "no request body bytes for {:?}", self.after)
    }
}

impl std::error::Error for BodyStalled {}

pin_project_lite::pin_project! {
    /// Passes frames through and fails with [`BodyStalled`] when the next one
    /// takes longer than `after` to come: a client that sends a head and then
    /// trickles or stops its body would otherwise hold a connection to the
    /// backend for as long as it likes (slowloris, body edition). The wait
    /// restarts with every frame, so a slow but steady upload is not cut.
    pub struct StallGuard<B> {
        #[pin]
        inner: B,
        stall: crate::stall::Stall,
    }
}

impl<B> StallGuard<B> {
    pub fn new(inner: B, after: std::time::Duration) -> Self {
        Self { inner, stall: crate::stall::Stall::new(after) }
    }
}

impl<B> http_body::Body for StallGuard<B>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.stall.progressed();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match this.stall.poll_waiting(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyStalled { after: this.stall.limit() })))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// A body that yields the given chunks one frame each.
    struct Chunks(VecDeque<Bytes>);

    impl http_body::Body for Chunks {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
        }
    }

    fn chunks(parts: &[&'static [u8]]) -> Chunks {
        Chunks(parts.iter().map(|p| Bytes::from_static(p)).collect())
    }

    #[tokio::test]
    async fn limited_body_passes_bodies_within_the_limit() {
        let body = Limited::new(chunks(&[b"hello", b" world"]), 11);
        let collected = body.collect().await.unwrap().to_bytes();
        assert_eq!(&collected[..], b"hello world");
    }

    #[tokio::test]
    async fn limited_body_fails_with_body_too_large_past_the_limit() {
        let body = Limited::new(chunks(&[b"hello", b" world"]), 10);
        let err = body.collect().await.unwrap_err();
        assert_eq!(body_too_large_limit(&*err), Some(10));
    }

    /// A body fed by a channel: the test decides when each piece comes.
    fn fed() -> (tokio::sync::mpsc::Sender<Bytes>, impl http_body::Body<Data = Bytes, Error = BoxError>) {
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|b| (Ok::<_, BoxError>(Frame::data(b)), rx))
        });
        (tx, http_body_util::StreamBody::new(stream))
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_whose_next_piece_is_late_fails_with_body_stalled() {
        let after = std::time::Duration::from_secs(1);
        let (tx, body) = fed();
        let mut body = std::pin::pin!(StallGuard::new(body, after));
        tx.send(Bytes::from_static(b"abc")).await.unwrap();
        assert!(body.frame().await.unwrap().is_ok());
        // Nothing more: the wait runs out (the paused clock jumps to the timer).
        let started = tokio::time::Instant::now();
        let err = body.frame().await.unwrap().unwrap_err();
        assert_eq!(body_stalled_after(&*err), Some(after));
        assert_eq!(started.elapsed(), after);
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_but_steady_body_is_not_cut() {
        let after = std::time::Duration::from_secs(1);
        let (tx, body) = fed();
        let feeder = tokio::spawn(async move {
            for _ in 0..5 {
                tokio::time::sleep(after * 3 / 4).await;
                tx.send(Bytes::from_static(b"x")).await.unwrap();
            }
        });
        let collected = StallGuard::new(body, after).collect().await.unwrap().to_bytes();
        assert_eq!(&collected[..], b"xxxxx", "3.75 s in all, no gap over 1 s");
        feeder.await.unwrap();
    }
}
