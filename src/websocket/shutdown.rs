//! Process shutdown for WebSocket sessions. hyper's graceful shutdown does
//! not reach a connection once it has been upgraded, so on SIGTERM the
//! server flips this switch: every session sends close 1001 "going away"
//! (RFC 6455 §7.4.1) to both peers, and the server waits (within the grace
//! period) until the last session has finished its close handshake (until
//! [`crate::gauge::WEBSOCKET_SESSIONS`] is back to zero).
//!
//! A session polls its [`Stopping`] every time its task wakes (once per
//! frame), so that poll is made to cost one atomic load: the waiter is
//! registered once per waker, not on every poll as a `watch` receiver's
//! `wait_for` would (which takes the channel's lock each time).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};

use tokio::sync::Notify;
use tokio::sync::futures::Notified;

/// Set once, when the process starts shutting down.
static STOPPING: AtomicBool = AtomicBool::new(false);
/// Wakes every session waiting on [`Stopping`] when `STOPPING` is set.
static STOP: Notify = Notify::const_new();

/// Asks every WebSocket session to close (called by the server on SIGTERM/SIGINT).
pub fn begin() {
    // SeqCst, paired with `Stopping::poll`: a waiter created after the
    // notification (so never woken by it) sees the flag.
    STOPPING.store(true, Ordering::SeqCst);
    STOP.notify_waiters();
}

/// Resolves when shutdown begins (at once if it already has).
pub(super) fn stopping() -> Stopping {
    Stopping { notified: STOP.notified(), waker: None }
}

pin_project_lite::pin_project! {
    /// The future [`stopping`] returns: cheap to poll again with the waker
    /// it was last polled with.
    pub(super) struct Stopping {
        // Created up front: `notify_waiters` reaches a `Notified` from its
        // creation on, polled or not.
        #[pin]
        notified: Notified<'static>,
        // The waker `notified` holds, once polled.
        waker: Option<Waker>,
    }
}

impl Future for Stopping {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if STOPPING.load(Ordering::SeqCst) {
            return Poll::Ready(());
        }
        let this = self.project();
        // Registered with this very waker: `begin` will wake it, nothing to do.
        if this.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            return Poll::Pending;
        }
        if this.notified.poll(cx).is_ready() {
            return Poll::Ready(());
        }
        *this.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One test for the whole switch: it is process-wide and flips once.
    #[tokio::test]
    async fn sessions_waiting_or_starting_after_begin_all_stop() {
        let mut waiting = Box::pin(stopping());
        let mut cx = Context::from_waker(Waker::noop());
        assert!(waiting.as_mut().poll(&mut cx).is_pending());
        assert!(waiting.as_mut().poll(&mut cx).is_pending(), "polled again with the same waker");
        let created = Box::pin(stopping());
        let woken = tokio::spawn(waiting);
        tokio::task::yield_now().await;
        begin();
        tokio::time::timeout(std::time::Duration::from_secs(5), woken).await.unwrap().unwrap();
        created.await;
        stopping().await;
    }
}
