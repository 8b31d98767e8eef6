//! When a connection last moved, shared by its two directions for the idle
//! timeout. An atomic rather than a `Cell` so the connection future stays
//! `Send` (the core spawns it on the multi-threaded runtime).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// Time of the last frame, as milliseconds since the connection started.
#[derive(Debug)]
pub(crate) struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    pub(crate) fn new() -> Self {
        Self { start: Instant::now(), last_ms: AtomicU64::new(0) }
    }

    /// Something moved now.
    pub(crate) fn touch(&self) {
        self.last_ms.store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// When something last moved.
    pub(crate) fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }

    /// How long nothing has moved.
    pub(crate) fn quiet(&self) -> Duration {
        self.last().elapsed()
    }
}
