//! One backend address: its load (requests in flight), its connection
//! limit, and passive health (ejection after consecutive connect failures).

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::uri::Authority;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::pool::{Pool, PoolSettings};

/// Milliseconds since the process's first call, a cheap monotonic clock for atomics.
fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// A backend address and its live state.
#[derive(Debug)]
pub struct Target {
    pub authority: Authority,
    /// The address as shown in logs, shared to avoid a copy per request.
    pub label: Arc<str>,
    pub weight: u32,
    in_flight: AtomicUsize,
    consecutive_failures: AtomicU32,
    /// `now_ms()` until which the target sits out; 0 when admitted.
    ejected_until_ms: AtomicU64,
    connections: Option<Arc<Semaphore>>,
    /// Idle keep-alive connections to this target.
    pub pool: Pool,
}

impl Target {
    pub fn new(authority: Authority, weight: u32, max_connections: Option<usize>) -> Self {
        Self::with_pool(authority, weight, max_connections, PoolSettings::default())
    }

    pub fn with_pool(authority: Authority, weight: u32, max_connections: Option<usize>, pool: PoolSettings) -> Self {
        Self {
            pool: Pool::new(&authority, pool),
            label: Arc::from(authority.as_str()),
            authority,
            weight,
            in_flight: AtomicUsize::new(0),
            consecutive_failures: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            connections: max_connections.map(|n| Arc::new(Semaphore::new(n))),
        }
    }

    /// Requests currently using this target.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// False while the target is ejected; true again once its time is up.
    pub fn is_healthy(&self) -> bool {
        let until = self.ejected_until_ms.load(Ordering::Relaxed);
        until == 0 || now_ms() >= until
    }

    /// Counts a connect failure; ejects the target after `eject_after` in a row.
    /// Returns true when this failure ejected it.
    pub fn record_connect_failure(&self, eject_after: u32, eject_for: Duration) -> bool {
        let failures = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= eject_after {
            self.consecutive_failures.store(0, Ordering::Relaxed);
            self.ejected_until_ms.store(now_ms() + eject_for.as_millis() as u64, Ordering::Relaxed);
            return true;
        }
        false
    }

    /// A request reached the backend: the failure streak ends.
    pub fn record_success(&self) {
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
        if self.ejected_until_ms.load(Ordering::Relaxed) != 0 {
            self.ejected_until_ms.store(0, Ordering::Relaxed);
        }
    }

    /// Claims a connection slot (waiting up to `wait`) and counts the request
    /// in flight until the returned guard drops. `None` when no slot freed up.
    pub async fn acquire(self: &Arc<Self>, wait: Duration) -> Option<TargetGuard> {
        let permit = match &self.connections {
            None => None,
            Some(sem) => match Arc::clone(sem).try_acquire_owned() {
                Ok(p) => Some(p),
                // Boxed: waiting for a slot is rare, and its timer would
                // otherwise sit in every request's future.
                Err(_) => Some(Box::pin(tokio::time::timeout(wait, Arc::clone(sem).acquire_owned())).await.ok()?.ok()?),
            },
        };
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Some(TargetGuard { target: Arc::clone(self), _permit: permit })
    }
}

/// Holds a target's in-flight count and connection slot for one request,
/// until the response body is finished or dropped.
#[derive(Debug)]
pub struct TargetGuard {
    target: Arc<Target>,
    _permit: Option<OwnedSemaphorePermit>,
}

impl Drop for TargetGuard {
    fn drop(&mut self) {
        self.target.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_is_ejected_after_consecutive_failures_and_readmitted_later() {
        let t = Target::new("127.0.0.1:1".parse().unwrap(), 1, None);
        assert!(!t.record_connect_failure(2, Duration::from_millis(30)));
        assert!(t.is_healthy());
        assert!(t.record_connect_failure(2, Duration::from_millis(30)));
        assert!(!t.is_healthy());
        std::thread::sleep(Duration::from_millis(40));
        assert!(t.is_healthy(), "re-admitted once eject_for has passed");
    }

    #[test]
    fn a_success_resets_the_failure_streak() {
        let t = Target::new("127.0.0.1:1".parse().unwrap(), 1, None);
        t.record_connect_failure(2, Duration::from_secs(10));
        t.record_success();
        assert!(!t.record_connect_failure(2, Duration::from_secs(10)));
        assert!(t.is_healthy());
    }

    #[tokio::test]
    async fn connection_limit_makes_the_next_request_wait_then_give_up() {
        let t = Arc::new(Target::new("127.0.0.1:1".parse().unwrap(), 1, Some(1)));
        let first = t.acquire(Duration::from_millis(10)).await.expect("first slot");
        assert_eq!(t.in_flight(), 1);
        assert!(t.acquire(Duration::from_millis(10)).await.is_none());
        drop(first);
        assert_eq!(t.in_flight(), 0);
        assert!(t.acquire(Duration::from_millis(10)).await.is_some());
    }
}
