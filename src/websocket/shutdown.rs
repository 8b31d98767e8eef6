//! Process shutdown for WebSocket sessions. hyper's graceful shutdown does
//! not reach a connection once it has been upgraded, so on SIGTERM the
//! server flips this switch: every session sends close 1001 "going away"
//! (RFC 6455 §7.4.1) to both peers, and the server waits (within the grace
//! period) until the last session has finished its close handshake.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::watch;

/// Flipped once, when the process starts shutting down.
static STOPPING: LazyLock<watch::Sender<bool>> = LazyLock::new(|| watch::channel(false).0);
/// Sessions still running.
static LIVE: AtomicUsize = AtomicUsize::new(0);

/// Asks every WebSocket session to close (called by the server on SIGTERM/SIGINT).
pub fn begin() {
    STOPPING.send_replace(true);
}

/// WebSocket sessions still open.
pub fn live_sessions() -> usize {
    LIVE.load(Ordering::Relaxed)
}

/// Resolves when shutdown begins (at once if it already has).
pub(super) fn stopping() -> impl Future<Output = ()> + Send + 'static {
    let mut rx = STOPPING.subscribe();
    async move {
        let _ = rx.wait_for(|stopping| *stopping).await;
    }
}

/// Counts a running session until dropped.
pub(super) struct Live(());

impl Live {
    pub(super) fn new() -> Self {
        LIVE.fetch_add(1, Ordering::Relaxed);
        Live(())
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        LIVE.fetch_sub(1, Ordering::Relaxed);
    }
}
