//! Event gathering: under load, a runtime thread that runs out of work
//! pauses for a few microseconds before it asks the kernel for more events,
//! so that its next wake handles the events of many connections together.
//!
//! Why: a proxy that is faster than its peers finishes each wake with few
//! events handled, goes back to `epoll_wait`, and is woken again for the
//! next few. Its writes then reach clients and backends a few at a time, and
//! they wake as often as it does. Behind Tollgate, `wrk` and the origin of
//! the benchmark woke about twice as often per request as behind HAProxy,
//! whose longer loop gathers more events per wake, and served 6–8 % fewer
//! requests per second on the same core (`bench/PROFILE.md`, stop 23).
//! A 20 µs pause after a busy turn closed that gap and lowered Tollgate's
//! own CPU per request (fewer wakes, more events per `epoll_wait`).
//!
//! The pause follows only a *busy* turn, one that ran for at least
//! [`Gather::after_busy`]: that is what a loaded gateway does. An idle or
//! lightly used one, whose turns handle one request, never pauses, so its
//! latency is unchanged. A saturated one never runs out of work and never
//! parks, so it never pauses either. This is interrupt moderation, done in
//! the event loop: a bounded delay traded for fewer wakes under load.

use std::cell::Cell;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// `[runtime] gather_events` and `gather_after_busy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gather {
    /// How long a thread pauses before it waits for events; zero turns
    /// gathering off.
    pub wait: Duration,
    /// The pause follows only a turn (from waking to running out of work)
    /// at least this long.
    pub after_busy: Duration,
}

impl Gather {
    /// The defaults: the best of 10, 20 and 40 µs in the benchmark (h1 and
    /// h2c), after turns of two requests' work or more on this hardware.
    pub const DEFAULT: Gather = Gather { wait: Duration::from_micros(20), after_busy: Duration::from_micros(15) };

    /// The longest pause the config accepts: beyond this it would add
    /// latency a user notices and gather nothing more.
    pub const MAX: Duration = Duration::from_millis(1);

    /// No gathering.
    pub const OFF: Gather = Gather { wait: Duration::ZERO, after_busy: Duration::ZERO };

    /// What the process was configured with ([`Gather::install`]), for
    /// event loops of our own (the WebSocket tunnel threads); off before.
    pub fn configured() -> Gather {
        CONFIGURED.get().copied().unwrap_or(Gather::OFF)
    }

    /// Whether gathering is on at all.
    pub fn is_on(&self) -> bool {
        !self.wait.is_zero()
    }

    /// Installs the park and unpark hooks on the runtime's threads, and
    /// records the settings for [`Gather::configured`].
    pub fn install(self, builder: &mut tokio::runtime::Builder) {
        let _ = CONFIGURED.set(self);
        self.hook(builder);
    }

    /// The park and unpark hooks alone (tests use this: [`Gather::install`]
    /// also sets process-wide state the tunnel threads read).
    fn hook(self, builder: &mut tokio::runtime::Builder) {
        if !self.is_on() {
            return;
        }
        builder
            .on_thread_unpark(|| TURN_BEGAN.with(|t| t.set(Some(Instant::now()))))
            .on_thread_park(move || self.pause_if_busy(TURN_BEGAN.with(Cell::take)));
    }

    /// The pause itself, for an event loop about to wait for events after
    /// a turn that began at `began`: taken only if that turn was busy.
    pub fn pause_if_busy(&self, began: Option<Instant>) {
        if let Some(pause) = self.pause_after(began, Instant::now()) {
            precise_sleep(pause);
        }
    }

    /// How long to pause before parking, for a turn that began at `began`
    /// (none: the thread has not woken since it last paused, or ever).
    fn pause_after(&self, began: Option<Instant>, now: Instant) -> Option<Duration> {
        let busy = now.saturating_duration_since(began?);
        (busy >= self.after_busy).then_some(self.wait)
    }
}

/// The settings [`Gather::install`] was called with.
static CONFIGURED: OnceLock<Gather> = OnceLock::new();

thread_local! {
    /// When this runtime thread last woke from a park.
    static TURN_BEGAN: Cell<Option<Instant>> = const { Cell::new(None) };
    /// Whether this thread's timer slack is already lowered.
    static SLACK_SET: Cell<bool> = const { Cell::new(false) };
}

/// Sleeps for `pause`, with the thread's timer slack lowered to 1 µs on
/// first use: Linux lets a 20 µs sleep run 50 µs over by default.
fn precise_sleep(pause: Duration) {
    #[cfg(target_os = "linux")]
    if !SLACK_SET.with(|s| s.replace(true)) {
        // SAFETY: PR_SET_TIMERSLACK takes a nanosecond count and touches
        // only the calling thread; a failure leaves the default slack.
        unsafe {
            libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong);
        }
    }
    std::thread::sleep(pause);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_turn_is_followed_by_the_pause() {
        let gather = Gather::DEFAULT;
        let began = Instant::now();
        let now = began + Duration::from_micros(40);
        assert_eq!(gather.pause_after(Some(began), now), Some(Duration::from_micros(20)));
    }

    #[test]
    fn a_short_turn_or_a_first_park_is_not() {
        let gather = Gather::DEFAULT;
        let began = Instant::now();
        assert_eq!(gather.pause_after(Some(began), began + Duration::from_micros(5)), None);
        assert_eq!(gather.pause_after(None, began), None);
    }

    #[test]
    fn a_runtime_with_gathering_runs_tasks_and_timers_as_before() {
        let mut builder = tokio::runtime::Builder::new_current_thread();
        Gather { wait: Duration::from_micros(50), after_busy: Duration::ZERO }.hook(&mut builder);
        let runtime = builder.enable_all().build().unwrap();
        let sum = runtime.block_on(async {
            let mut total = 0;
            for i in 0..100u64 {
                total += tokio::spawn(async move {
                    tokio::task::yield_now().await;
                    i
                })
                .await
                .unwrap();
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
            total
        });
        assert_eq!(sum, 4950);
        // block_on ran the runtime on this thread, and it paused after a turn.
        assert!(SLACK_SET.with(Cell::get), "the park hook never paused");
    }
}
