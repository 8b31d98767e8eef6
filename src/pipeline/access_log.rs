//! One access-log line per request, written when the response body is
//! finished (or abandoned), so it carries the real byte count and duration.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body::{Frame, SizeHint};

use crate::body::BoxError;
use crate::model::RequestContext;
use crate::upstream::TargetGuard;

/// What the access log line says about a request, filled in as it goes.
pub struct AccessRecord {
    pub ctx: RequestContext,
    pub method: Method,
    pub path: String,
    pub status: StatusCode,
    /// Short code of a gateway-made error response (`no_route`, `upstream_timeout`...).
    pub error: Option<&'static str>,
    /// When the request arrived: read only when there is a line to write
    /// (a clock read per request is measurable at these rates).
    pub start: Instant,
}

impl AccessRecord {
    fn write(&self, bytes: u64, completed: bool) {
        let ctx = &self.ctx;
        let none: Arc<str> = Arc::from("-");
        tracing::info!(
            target: "access",
            request_id = ctx.id_str(),
            // The resolved client (ip_filter may have read a trusted proxy's header).
            client = %ctx.client_ip,
            listener = %ctx.connection.listener.name,
            protocol = ctx.protocol.as_str(),
            method = %self.method,
            path = %self.path,
            route = %ctx.route.as_ref().unwrap_or(&none),
            upstream = %ctx.upstream.as_ref().unwrap_or(&none),
            target = %ctx.target.as_ref().unwrap_or(&none),
            status = self.status.as_u16(),
            bytes,
            duration_ms = self.start.elapsed().as_secs_f64() * 1000.0,
            completed,
            error = self.error.unwrap_or("-"),
        );
    }
}

pin_project_lite::pin_project! {
    /// Relays a response body, counting bytes; on drop it writes the access
    /// log line and releases the upstream target slot it holds.
    pub struct Tracked<B: http_body::Body> {
        #[pin]
        inner: B,
        bytes: u64,
        // The body's exact length, when it declared one up front.
        expected: Option<u64>,
        done: bool,
        record: Option<Box<AccessRecord>>,
        guard: Option<TargetGuard>,
        active: Option<super::ActiveRequest>,
    }

    impl<B: http_body::Body> PinnedDrop for Tracked<B> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            let completed = *this.done || this.inner.is_end_stream();
            if let Some(record) = this.record.take() {
                record.write(*this.bytes, completed);
            }
            // Only now is the request over for shutdown's drain.
            this.active.take();
        }
    }
}

impl<B: http_body::Body> Tracked<B> {
    pub fn new(inner: B, record: Option<Box<AccessRecord>>, guard: Option<TargetGuard>) -> Self {
        let expected = inner.size_hint().exact();
        Self { inner, bytes: 0, expected, done: false, record, guard, active: None }
    }

    /// The length the response head declared (`Content-Length`), for bodies
    /// that do not know their own size: reaching it completes the exchange.
    pub fn expecting(mut self, length: Option<u64>) -> Self {
        self.expected = self.expected.or(length);
        self
    }

    /// Keeps the request counted as active until this body is dropped.
    pub fn with_active(mut self, active: super::ActiveRequest) -> Self {
        self.active = Some(active);
        self
    }
}

impl<B> http_body::Body for Tracked<B>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        match this.inner.as_mut().poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    *this.bytes += data.len() as u64;
                }
                if this.inner.is_end_stream() || this.expected.is_some_and(|n| *this.bytes >= n) {
                    // The servers stop polling once the size hint is met (some bodies,
                    // such as static files, never say they ended); finish here, and free
                    // the target's slot now rather than when the server drops us.
                    *this.done = true;
                    this.guard.take();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => {
                *this.done = true;
                // The upstream exchange is over: free its slot now, not when the server drops us.
                this.guard.take();
                Poll::Ready(None)
            }
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
