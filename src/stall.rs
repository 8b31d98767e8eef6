//! A count of how long something has been waiting without progress: a
//! request body that stops arriving (`body_timeout`), a response the client
//! stops reading (`send_timeout`). Without such a bound a client decides how
//! long it holds a connection and the backend request behind it (slowloris
//! on the body, "slow read" on the response).
//!
//! One timer per waiter, made on its first wait and moved forward only when
//! a wait begins after progress: the common case, no waiting at all, costs
//! nothing, and a long transfer with short waits costs one timer reset per wait.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

/// Times the current wait of one waiter against `limit`.
#[derive(Debug)]
pub struct Stall {
    limit: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The timer runs for the current wait (no progress since it was set).
    armed: bool,
}

impl Stall {
    pub fn new(limit: Duration) -> Self {
        Self { limit, timer: None, armed: false }
    }

    /// The bound this waiter is held to.
    pub fn limit(&self) -> Duration {
        self.limit
    }

    /// Something moved: the next wait is counted afresh.
    pub fn progressed(&mut self) {
        self.armed = false;
    }

    /// Still waiting: `Ready` once this wait has lasted `limit` with no
    /// progress; until then the waker is registered for that moment.
    pub fn poll_waiting(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if !self.armed {
            self.armed = true;
            let deadline = tokio::time::Instant::now() + self.limit;
            match &mut self.timer {
                Some(timer) => timer.as_mut().reset(deadline),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
        }
        self.timer.as_mut().expect("armed above").as_mut().poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_wait_is_cut_at_the_limit_and_progress_starts_the_count_again() {
        let limit = Duration::from_secs(1);
        let mut stall = Stall::new(limit);
        let started = tokio::time::Instant::now();
        std::future::poll_fn(|cx| stall.poll_waiting(cx)).await;
        assert_eq!(started.elapsed(), limit);
        // Progress half a limit into the next wait: the wait after it gets a whole limit.
        let _ = std::future::poll_fn(|cx| Poll::Ready(stall.poll_waiting(cx))).await;
        tokio::time::sleep(limit / 2).await;
        stall.progressed();
        let resumed = tokio::time::Instant::now();
        std::future::poll_fn(|cx| stall.poll_waiting(cx)).await;
        assert_eq!(resumed.elapsed(), limit);
    }
}
