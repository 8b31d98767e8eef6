//! A cheap clock for bookkeeping that needs milliseconds, not nanoseconds:
//! when a pooled connection went idle, when a client connection last
//! started or finished a request.
//!
//! `Instant::now()` reads the time stamp counter through the vDSO, tens of
//! nanoseconds in a VM; it was called eight times per proxied request and
//! took 2 % of the CPU under load. `CLOCK_MONOTONIC_COARSE` is the same clock
//! at the resolution of the kernel's tick (1–4 ms), read from memory the
//! kernel updates. Deadlines and durations that are reported keep `Instant`.

/// Milliseconds on the coarse monotonic clock, since an arbitrary point.
///
/// Only differences between two readings mean anything; a reading may lag
/// `Instant::now()` by up to one kernel tick.
pub fn coarse_millis() -> u64 {
    #[cfg(target_os = "linux")]
    {
        let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: `now` is a valid, writable timespec. (Linux has had this
        // clock since 2.6.32; should the call fail anyway, `Instant` answers.)
        let failed = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut now) } != 0;
        if !failed {
            return now.tv_sec as u64 * 1000 + now.tv_nsec as u64 / 1_000_000;
        }
    }
    fallback_millis()
}

/// Milliseconds since the first call, from `Instant` (other systems, or a
/// kernel without the coarse clock).
fn fallback_millis() -> u64 {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    EPOCH.get_or_init(std::time::Instant::now).elapsed().as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_coarse_clock_keeps_pace_with_instant() {
        // The two coarse readings are bracketed by precise ones, so a
        // descheduled thread widens the bounds instead of failing the test.
        let outer = std::time::Instant::now();
        let start = coarse_millis();
        let inner = std::time::Instant::now();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let at_least = inner.elapsed().as_millis() as u64;
        let elapsed = coarse_millis() - start;
        let at_most = outer.elapsed().as_millis() as u64 + 1;
        // Each reading may lag by a tick (at most 10 ms even at HZ=100).
        assert!(elapsed + 10 >= at_least && elapsed <= at_most + 10, "{elapsed} ms, not within {at_least}..={at_most}");
    }

    #[test]
    fn the_coarse_clock_never_goes_back() {
        let mut last = coarse_millis();
        for _ in 0..10_000 {
            let now = coarse_millis();
            assert!(now >= last);
            last = now;
        }
    }
}
