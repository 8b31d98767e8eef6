//! The in-process store: a keyed GCRA limiter (`governor`), one per policy
//! (or listener), shared by every connection and worker thread.
//!
//! Memory stays bounded two ways. A janitor task calls governor's
//! `retain_recent` every [`SWEEP_EVERY`], dropping buckets that have refilled
//! completely (they are indistinguishable from a fresh key). And if more than
//! `max_keys` buckets are still live after a sweep (e.g. a flood of distinct
//! `header:` keys), the table is replaced by an empty one: every client is
//! briefly forgiven, which is logged, rather than memory growing without end.

use std::hash::Hash;
use std::num::NonZeroU32;
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

use super::RateLimitStatus;
use crate::config::Rate;

/// How often the janitor drops refilled buckets.
pub const SWEEP_EVERY: Duration = Duration::from_secs(10);

type Keyed<K> = RateLimiter<K, DefaultKeyedStateStore<K>, DefaultClock, StateInformationMiddleware>;

/// A keyed GCRA limiter with bounded memory.
pub struct LocalLimiter<K: Hash + Eq + Clone + Send + Sync + 'static> {
    current: ArcSwap<Keyed<K>>,
    quota: Quota,
    burst: u32,
    interval: Duration,
    max_keys: usize,
    /// Names the owner in the log line written when the table is reset.
    owner: Arc<str>,
}

impl<K: Hash + Eq + Clone + Send + Sync + 'static> LocalLimiter<K> {
    /// A limiter allowing `burst` requests at once, refilled at `rate`; starts
    /// its janitor on the current tokio runtime (if any), which ends when the
    /// limiter is dropped (e.g. replaced by a config reload).
    pub fn new(owner: &str, rate: Rate, burst: u32, max_keys: usize) -> Arc<Self> {
        let interval = rate.interval().max(Duration::from_nanos(1));
        let burst = burst.max(1);
        let quota = Quota::with_period(interval)
            .expect("interval is non-zero")
            .allow_burst(NonZeroU32::new(burst).expect("burst is at least 1"));
        let limiter = Arc::new(Self {
            current: ArcSwap::from_pointee(Self::fresh(quota)),
            quota,
            burst,
            interval,
            max_keys,
            owner: Arc::from(owner),
        });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(janitor(Arc::downgrade(&limiter)));
        }
        limiter
    }

    fn fresh(quota: Quota) -> Keyed<K> {
        RateLimiter::keyed(quota).with_middleware::<StateInformationMiddleware>()
    }

    /// Takes one request from `key`'s bucket if it has one.
    pub fn check(&self, key: &K) -> RateLimitStatus {
        let limiter = self.current.load();
        match limiter.check_key(key) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity().min(self.burst);
                // The bucket is full again once the cells taken have dripped back.
                let reset = self.interval * (self.burst - remaining);
                RateLimitStatus::allowed(self.burst, remaining, reset)
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(limiter.clock().now());
                // One cell frees after `wait`; the other burst-1 follow at the rate.
                let reset = wait + self.interval * (self.burst - 1);
                RateLimitStatus::denied(self.burst, wait, reset)
            }
        }
    }

    /// Buckets currently held.
    pub fn len(&self) -> usize {
        self.current.load().len()
    }

    /// Whether no bucket is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops refilled buckets; resets the table if it is still over `max_keys`.
    pub fn sweep(&self) {
        let limiter = self.current.load();
        limiter.retain_recent();
        limiter.shrink_to_fit();
        let live = limiter.len();
        if live > self.max_keys {
            tracing::warn!(
                owner = %self.owner,
                live,
                max_keys = self.max_keys,
                "rate limit table over max_keys: resetting it (clients are briefly forgiven)"
            );
            self.current.store(Arc::new(Self::fresh(self.quota)));
        }
    }
}

/// Sweeps `limiter` every [`SWEEP_EVERY`] until it is dropped.
async fn janitor<K: Hash + Eq + Clone + Send + Sync + 'static>(limiter: Weak<LocalLimiter<K>>) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the first tick is immediate
    loop {
        tick.tick().await;
        let Some(limiter) = limiter.upgrade() else { return };
        limiter.sweep();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(text: &str) -> Rate {
        crate::config::parse_rate(text).unwrap()
    }

    #[test]
    fn burst_is_allowed_then_denied_with_retry_after() {
        let limiter = LocalLimiter::<u32>::new("t", rate("1/h"), 3, 100);
        let seen: Vec<_> = (0..4).map(|_| limiter.check(&7)).collect();
        assert!(seen[..3].iter().all(|s| s.allowed));
        assert_eq!(seen.iter().map(|s| s.remaining).collect::<Vec<_>>(), [2, 1, 0, 0]);
        assert!(!seen[3].allowed);
        assert_eq!(seen[3].limit, 3);
        // One cell per hour: the next request is about an hour away.
        assert!((3590..=3600).contains(&seen[3].retry_after_secs), "{:?}", seen[3]);
        assert!(seen[3].reset_secs >= seen[3].retry_after_secs);
        // Another key has its own bucket.
        assert!(limiter.check(&8).allowed);
    }

    #[test]
    fn sweep_drops_refilled_buckets_and_caps_the_table() {
        let fast = LocalLimiter::<u32>::new("t", rate("1000000/s"), 1, 1000);
        for k in 0..50 {
            fast.check(&k);
        }
        std::thread::sleep(Duration::from_millis(5));
        fast.sweep();
        assert_eq!(fast.len(), 0, "refilled buckets are dropped");

        let slow = LocalLimiter::<u32>::new("t", rate("1/h"), 1, 10);
        for k in 0..50 {
            slow.check(&k);
        }
        assert_eq!(slow.len(), 50);
        slow.sweep();
        assert!(slow.is_empty(), "over max_keys the table is reset");
    }
}
