//! `grpc-timeout` as a deadline on the whole call.
//!
//! gRPC over HTTP/2 (PROTOCOL-HTTP2.md, "Requests"): `Timeout → "grpc-timeout"
//! TimeoutValue TimeoutUnit`, at most 8 digits, unit one of H M S m u n. When
//! it passes, the gateway answers DEADLINE_EXCEEDED itself and drops the
//! backend stream, which resets it (RST_STREAM CANCEL), so the backend stops
//! working on a call nobody waits for.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Frame, SizeHint};
use tokio::time::{Instant, Sleep};
use tollgate_grpc_web::{Code, status_trailers};

use crate::body::{Body, BoxError};

/// The `grpc-timeout` request header.
pub static GRPC_TIMEOUT: http::HeaderName = http::HeaderName::from_static("grpc-timeout");

/// The call's time budget from `grpc-timeout`; `None` when absent or malformed
/// (a malformed value is ignored, as gRPC servers do, rather than failing the call).
pub fn parse_grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let text = headers.get(&GRPC_TIMEOUT)?.to_str().ok()?;
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let value: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(value * 3600),
        "M" => Duration::from_secs(value * 60),
        "S" => Duration::from_secs(value),
        "m" => Duration::from_millis(value),
        "u" => Duration::from_micros(value),
        "n" => Duration::from_nanos(value),
        _ => return None,
    })
}

/// The trailers a call past its deadline ends with.
pub fn deadline_trailers() -> HeaderMap {
    status_trailers(Code::DeadlineExceeded, "deadline exceeded (grpc-timeout) at the gateway")
}

pin_project_lite::pin_project! {
    /// Relays a gRPC response body until the deadline; then ends it with
    /// DEADLINE_EXCEEDED trailers and drops the backend stream.
    pub struct DeadlineBody {
        inner: Option<Body>,
        #[pin]
        sleep: Sleep,
    }
}

impl DeadlineBody {
    /// Wraps `inner`, which must finish by `deadline`.
    pub fn new(inner: Body, deadline: Instant) -> Self {
        Self { inner: Some(inner), sleep: tokio::time::sleep_until(deadline) }
    }
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let Some(inner) = this.inner.as_mut() else { return Poll::Ready(None) };
        if let Poll::Ready(frame) = Pin::new(inner).poll_frame(cx) {
            if frame.is_none() {
                *this.inner = None;
            }
            return Poll::Ready(frame);
        }
        if this.sleep.poll(cx).is_ready() {
            // Dropping the backend body resets its stream.
            *this.inner = None;
            return Poll::Ready(Some(Ok(Frame::trailers(deadline_trailers()))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(http_body::Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.as_ref().map(http_body::Body::size_hint).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn timeout(value: &'static str) -> Option<Duration> {
        let mut h = HeaderMap::new();
        h.insert(&GRPC_TIMEOUT, HeaderValue::from_static(value));
        parse_grpc_timeout(&h)
    }

    #[test]
    fn grpc_timeout_units_parse_and_bad_values_are_ignored() {
        assert_eq!(timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(timeout("2M"), Some(Duration::from_secs(120)));
        assert_eq!(timeout("3S"), Some(Duration::from_secs(3)));
        assert_eq!(timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(timeout("7u"), Some(Duration::from_micros(7)));
        assert_eq!(timeout("99999999n"), Some(Duration::from_nanos(99_999_999)));
        assert_eq!(timeout("123456789S"), None, "more than 8 digits");
        assert_eq!(timeout("5s"), None);
        assert_eq!(timeout("S"), None);
        assert_eq!(timeout("-1S"), None);
    }

    /// A backend that never sends another frame.
    struct Stalled;

    impl http_body::Body for Stalled {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Pending
        }
    }

    #[tokio::test]
    async fn a_stalled_body_ends_with_deadline_exceeded_at_the_deadline() {
        use http_body_util::BodyExt;
        let start = Instant::now();
        let mut body = Box::pin(DeadlineBody::new(crate::body::boxed(Stalled), start + Duration::from_millis(100)));
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.trailers_ref().unwrap()["grpc-status"], "4");
        assert!(start.elapsed() >= Duration::from_millis(100));
        assert!(body.frame().await.is_none());
    }
}
