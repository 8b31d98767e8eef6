//! Process-wide counts of what is open right now: connections, requests,
//! WebSocket sessions. The admin status page shows them, shutdown waits for
//! them to reach zero, and the leak tests check that every way a client or
//! backend can leave brings them back to zero.
//!
//! Each is one relaxed atomic, touched once when the thing opens and once
//! when its [`Live`] guard drops, so counting costs nothing measurable even
//! per request.

use std::sync::atomic::{AtomicUsize, Ordering};

/// A count of live things of one kind.
#[derive(Debug)]
pub struct Gauge(AtomicUsize);

impl Gauge {
    /// Starts at zero (usable in a `static`).
    pub const fn new() -> Self {
        Self(AtomicUsize::new(0))
    }

    /// How many are live now.
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }

    /// Counts one more until the returned guard drops.
    pub fn enter(&'static self) -> Live {
        self.0.fetch_add(1, Ordering::Relaxed);
        Live(self)
    }
}

impl Default for Gauge {
    fn default() -> Self {
        Self::new()
    }
}

/// Keeps one thing counted in its [`Gauge`] for as long as it lives.
#[derive(Debug)]
#[must_use = "the count drops with the guard"]
pub struct Live(&'static Gauge);

impl Drop for Live {
    fn drop(&mut self) {
        self.0.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// TCP connections being served as HTTP (TLS handshakes and PROXY headers
/// included). An HTTP/1.1 connection upgraded to a WebSocket leaves this
/// count for [`WEBSOCKET_SESSIONS`].
pub static HTTP_CONNECTIONS: Gauge = Gauge::new();
/// WebSocket sessions (tunnel or message mode, any downstream protocol).
pub static WEBSOCKET_SESSIONS: Gauge = Gauge::new();
/// QUIC connections.
pub static QUIC_CONNECTIONS: Gauge = Gauge::new();
/// HTTP/3 request streams being served.
pub static HTTP3_STREAMS: Gauge = Gauge::new();

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guard_counts_until_it_drops() {
        static COUNTED: Gauge = Gauge::new();
        let first = COUNTED.enter();
        let second = COUNTED.enter();
        assert_eq!(COUNTED.get(), 2);
        drop(first);
        assert_eq!(COUNTED.get(), 1);
        drop(second);
        assert_eq!(COUNTED.get(), 0);
    }
}
