//! The listener's `request_timeout` around a request's forwarding, without
//! making every request carry a timer: the timer is allocated only when the
//! listener sets a limit, and the forwarding future is the same either way
//! (two awaits, with and without `tokio::time::timeout`, would each take
//! room in the request's future).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Sleep;

use crate::error::ProxyError;

pin_project_lite::pin_project! {
    /// `inner`, failed with [`ProxyError::RequestTimeout`] once `limit` has passed.
    pub struct WithinLimit<F> {
        #[pin]
        inner: F,
        timer: Option<(Pin<Box<Sleep>>, Duration)>,
    }
}

impl<F> WithinLimit<F> {
    /// Bounds `inner` by `limit`, when there is one.
    pub fn new(inner: F, limit: Option<Duration>) -> Self {
        WithinLimit { inner, timer: limit.map(|limit| (Box::pin(tokio::time::sleep(limit)), limit)) }
    }
}

impl<F, T> Future for WithinLimit<F>
where
    F: Future<Output = Result<T, ProxyError>>,
{
    type Output = Result<T, ProxyError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.inner.poll(cx) {
            return Poll::Ready(out);
        }
        if let Some((timer, limit)) = this.timer
            && timer.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Err(ProxyError::RequestTimeout { limit: *limit }));
        }
        Poll::Pending
    }
}
