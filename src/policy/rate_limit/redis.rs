//! The shared store: one GCRA bucket per key in Redis, so every Tollgate
//! instance pointing at the same Redis enforces one combined limit.
//!
//! Each check is one atomic Lua script (sent as EVALSHA; the `redis` crate
//! reloads it after NOSCRIPT, e.g. when Redis restarted) that reads the
//! bucket's theoretical arrival time, decides, and writes it back with an
//! expiry, so Redis drops buckets that have refilled. The script reads the
//! clock with `TIME` on the Redis server: instances never compare their own
//! clocks.
//!
//! Every call is bounded by `redis_timeout`. When a call fails the store is
//! marked down: one warning is logged for the whole outage, requests skip
//! Redis (the policy's `on_redis_error` applies) and one probe per
//! [`PROBE_EVERY`] tries again; the first success logs one info line.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::{RateKey, RateLimitStatus};

/// How often a request probes Redis while it is marked down.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);

/// GCRA on one key. KEYS[1] = bucket; ARGV[1] = emission interval T (µs);
/// ARGV[2] = burst. Returns {allowed, remaining, retry_after_µs, reset_after_µs}.
/// Allowed iff tat' - burst·T <= now, where tat' = max(tat, now) + T.
const GCRA: &str = r#"
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - burst * interval
if allow_at > now then
  return {0, 0, allow_at - now, tat - now}
end
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000))
return {1, math.floor((now - allow_at) / interval), 0, new_tat - now}
"#;

/// A Redis-backed GCRA bucket table for one policy.
pub struct RedisStore {
    client: redis::Client,
    connection: OnceLock<ConnectionManager>,
    script: redis::Script,
    timeout: Duration,
    /// `tollgate:rl:{policy}:`, so policies never share buckets.
    prefix: Vec<u8>,
    interval_us: u64,
    burst: u32,
    health: Health,
    /// The policy name and fallback, for log lines.
    policy: String,
    on_error: &'static str,
}

impl RedisStore {
    /// Prepares the store; nothing connects until the first request.
    pub fn new(policy: &str, client: redis::Client, interval: Duration, burst: u32, timeout: Duration) -> Self {
        Self {
            client,
            connection: OnceLock::new(),
            script: redis::Script::new(GCRA),
            timeout,
            prefix: format!("tollgate:rl:{policy}:").into_bytes(),
            interval_us: (interval.as_micros() as u64).max(1),
            burst,
            health: Health::new(),
            policy: policy.to_string(),
            on_error: "allow",
        }
    }

    /// Names the fallback in the outage warning.
    pub fn with_fallback_name(mut self, on_error: &'static str) -> Self {
        self.on_error = on_error;
        self
    }

    /// Takes one request from `key`'s shared bucket; `None` when Redis could
    /// not answer in time (or is marked down), so the caller's fallback applies.
    pub async fn check(&self, key: &RateKey) -> Option<RateLimitStatus> {
        if !self.health.may_try() {
            return None;
        }
        let mut connection = match self.connection() {
            Ok(c) => c,
            Err(e) => {
                self.failed(&e.to_string());
                return None;
            }
        };
        let mut bucket = self.prefix.clone();
        key.write_redis_key(&mut bucket);
        let mut invocation = self.script.key(bucket);
        invocation.arg(self.interval_us).arg(self.burst);
        let answer =
            tokio::time::timeout(self.timeout, invocation.invoke_async::<(i64, i64, i64, i64)>(&mut connection));
        match answer.await {
            Ok(Ok((allowed, remaining, retry_us, reset_us))) => {
                self.recovered();
                let micros = |v: i64| Duration::from_micros(v.max(0) as u64);
                Some(if allowed == 1 {
                    RateLimitStatus::allowed(self.burst, remaining.clamp(0, self.burst as i64) as u32, micros(reset_us))
                } else {
                    RateLimitStatus::denied(self.burst, micros(retry_us), micros(reset_us))
                })
            }
            Ok(Err(e)) => {
                self.failed(&e.to_string());
                None
            }
            Err(_) => {
                self.failed(&format!("no answer within {:?}", self.timeout));
                None
            }
        }
    }

    /// The shared connection, created (lazily connecting) on first use.
    fn connection(&self) -> redis::RedisResult<ConnectionManager> {
        if let Some(c) = self.connection.get() {
            return Ok(c.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            // One attempt per connect: while Redis is down, our probes are the retries,
            // and the error logged is the real one (refused, unreachable), not a timeout.
            .set_number_of_retries(0);
        let manager = ConnectionManager::new_lazy_with_config(self.client.clone(), config)?;
        Ok(self.connection.get_or_init(|| manager).clone())
    }

    fn failed(&self, error: &str) {
        if self.health.mark_down() {
            tracing::warn!(
                policy = %self.policy,
                error,
                on_redis_error = self.on_error,
                "rate limit store unreachable; applying on_redis_error until it recovers"
            );
        }
    }

    fn recovered(&self) {
        if self.health.mark_up() {
            tracing::info!(policy = %self.policy, "rate limit store recovered");
        }
    }
}

/// Up/down state of the store, shared by all requests without locks.
struct Health {
    down: AtomicBool,
    /// Milliseconds since `epoch` at which the next probe may go out.
    probe_at: AtomicU64,
    epoch: Instant,
}

impl Health {
    fn new() -> Self {
        Self { down: AtomicBool::new(false), probe_at: AtomicU64::new(0), epoch: Instant::now() }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Up: always. Down: only the one request that wins this period's probe.
    fn may_try(&self) -> bool {
        if !self.down.load(Ordering::Relaxed) {
            return true;
        }
        let now = self.now_ms();
        let at = self.probe_at.load(Ordering::Relaxed);
        now >= at
            && self
                .probe_at
                .compare_exchange(at, now + PROBE_EVERY.as_millis() as u64, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// Marks the store down; true if it was up (the outage starts now).
    fn mark_down(&self) -> bool {
        self.probe_at.store(self.now_ms() + PROBE_EVERY.as_millis() as u64, Ordering::Relaxed);
        !self.down.swap(true, Ordering::Relaxed)
    }

    /// Marks the store up; true if it was down (the outage ends now).
    fn mark_up(&self) -> bool {
        self.down.load(Ordering::Relaxed) && self.down.swap(false, Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_outage_is_reported_once_and_probed_once_per_period() {
        let health = Health::new();
        assert!(health.may_try());
        assert!(health.mark_down(), "first failure starts the outage");
        assert!(!health.mark_down(), "later failures are the same outage");
        assert!(!health.may_try(), "no probe before the period is over");
        health.probe_at.store(0, Ordering::Relaxed);
        assert!(health.may_try(), "one probe when it is due");
        assert!(!health.may_try(), "only one");
        assert!(health.mark_up(), "a success ends the outage");
        assert!(!health.mark_up());
        assert!(health.may_try());
    }
}
