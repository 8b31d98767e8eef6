//! A client's request body on an HTTP/1.1 connection of ours.
//!
//! The connection task owns the socket; the body only holds a slot the
//! connection fills. The connection reads the socket for the body only when
//! the body's reader asks for more (and one frame ahead), so a slow
//! backend slows the client down and nothing piles up in memory. The slot
//! is shared under a mutex because the reader may run on another task; on
//! the common path both sides are the same task and the lock is never
//! contended.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Frame, SizeHint};

/// Why a request body could not be read to its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestBodyError {
    /// The client closed the connection before the body ended.
    Incomplete,
    /// The chunked framing was broken; says how.
    Framing(&'static str),
    /// Reading the socket failed.
    Io,
}

impl std::fmt::Display for RequestBodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RequestBodyError::Incomplete => f.write_str("the client closed the connection before the body ended"),
            RequestBodyError::Framing(what) => write!(f, "malformed chunked request body: {what}"),
            RequestBodyError::Io => f.write_str("reading the request body failed"),
        }
    }
}

impl std::error::Error for RequestBodyError {}

/// How far the body has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Flow {
    Open,
    Ended,
    Failed(RequestBodyError),
}

/// The slot between the connection (writer) and the body (reader).
pub(super) struct Slot {
    pub data: Option<Bytes>,
    pub trailers: Option<HeaderMap>,
    pub flow: Flow,
    /// The reader wants a frame and the slot is empty.
    pub wanted: bool,
    /// The body was dropped: nobody will read the rest.
    pub abandoned: bool,
    reader: Option<Waker>,
    connection: Option<Waker>,
}

/// The connection's handle on a body in flight.
pub(super) type Shared = Arc<Mutex<Slot>>;

pub(super) fn lock(shared: &Shared) -> MutexGuard<'_, Slot> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// A new body and the connection's handle on it. `length` is the declared
/// `Content-Length`, if any (it becomes the body's exact size hint, so the
/// backend request keeps it).
pub(super) fn channel(length: Option<u64>) -> (RequestBody, Shared) {
    let shared = Arc::new(Mutex::new(Slot {
        data: None,
        trailers: None,
        flow: Flow::Open,
        wanted: false,
        abandoned: false,
        reader: None,
        connection: None,
    }));
    (RequestBody { shared: Arc::clone(&shared), remaining: length, ended: false }, shared)
}

impl Slot {
    /// Hands a frame to the reader; `waker` is the connection's own, which
    /// needs no wake-up (it polls the reader's task itself when they are one).
    pub fn deliver(&mut self, data: Bytes, waker: &Waker) {
        self.data = Some(data);
        self.wanted = false;
        self.wake_reader(waker);
    }

    /// Ends the body (`Flow::Ended` or a failure) and tells the reader.
    pub fn finish(&mut self, flow: Flow, trailers: Option<HeaderMap>, waker: &Waker) {
        if self.flow == Flow::Open {
            self.flow = flow;
            self.trailers = trailers;
        }
        self.wanted = false;
        self.wake_reader(waker);
    }

    /// Remembers the connection's waker, for a reader on another task.
    pub fn register_connection(&mut self, waker: &Waker) {
        if !self.connection.as_ref().is_some_and(|w| w.will_wake(waker)) {
            self.connection = Some(waker.clone());
        }
    }

    fn wake_reader(&mut self, own: &Waker) {
        if let Some(reader) = self.reader.take()
            && !reader.will_wake(own)
        {
            reader.wake();
        }
    }

    fn wake_connection(&mut self, own: &Waker) {
        if let Some(connection) = &self.connection
            && !connection.will_wake(own)
        {
            connection.wake_by_ref();
        }
    }
}

/// The request body handed to the pipeline (`ClientBody::Http1`).
pub struct RequestBody {
    shared: Shared,
    /// Bytes still to come of a `Content-Length` body.
    remaining: Option<u64>,
    ended: bool,
}

impl http_body::Body for RequestBody {
    type Data = Bytes;
    type Error = RequestBodyError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        let mut slot = lock(&self.shared);
        if let Some(data) = slot.data.take() {
            // Ask for the next frame now: the connection reads it while this one travels.
            slot.wanted = true;
            slot.wake_connection(cx.waker());
            drop(slot);
            if let Some(remaining) = &mut self.remaining {
                *remaining = remaining.saturating_sub(data.len() as u64);
            }
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        if let Some(trailers) = slot.trailers.take() {
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        match slot.flow {
            Flow::Ended => {
                drop(slot);
                self.ended = true;
                Poll::Ready(None)
            }
            Flow::Failed(e) => {
                drop(slot);
                self.ended = true;
                Poll::Ready(Some(Err(e)))
            }
            Flow::Open => {
                slot.wanted = true;
                if !slot.reader.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    slot.reader = Some(cx.waker().clone());
                }
                slot.wake_connection(cx.waker());
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.remaining == Some(0)
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        let mut slot = lock(&self.shared);
        slot.abandoned = true;
        slot.wanted = false;
        if let Some(connection) = slot.connection.take() {
            connection.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Body as _;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn frames_delivered_by_the_connection_reach_the_reader_in_order() {
        let (mut body, shared) = channel(Some(5));
        assert_eq!(body.size_hint().exact(), Some(5));
        let feeder = tokio::spawn(async move {
            for part in [&b"he"[..], b"llo"] {
                std::future::poll_fn(|cx| {
                    let mut slot = lock(&shared);
                    slot.register_connection(cx.waker());
                    if slot.wanted && slot.data.is_none() {
                        slot.deliver(Bytes::from_static(part), cx.waker());
                        Poll::Ready(())
                    } else {
                        Poll::Pending
                    }
                })
                .await;
            }
            lock(&shared).finish(Flow::Ended, None, Waker::noop());
        });
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&first[..], b"he");
        assert_eq!(body.size_hint().exact(), Some(3));
        let collected = body.collect().await.unwrap().to_bytes();
        assert_eq!(&collected[..], b"llo");
        feeder.await.unwrap();
    }

    #[tokio::test]
    async fn a_failed_body_reports_why_once_and_then_ends() {
        let (mut body, shared) = channel(None);
        lock(&shared).finish(Flow::Failed(RequestBodyError::Incomplete), None, Waker::noop());
        assert_eq!(body.frame().await.unwrap().unwrap_err(), RequestBodyError::Incomplete);
        assert!(body.frame().await.is_none());
    }

    #[test]
    fn dropping_the_body_tells_the_connection_nobody_reads_the_rest() {
        let (body, shared) = channel(None);
        drop(body);
        assert!(lock(&shared).abandoned);
    }
}
