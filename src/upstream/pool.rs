//! Keep-alive HTTP/1.1 connections to one target, reused most-recent-first.
//!
//! The gateway already knows the target, so a checkout is a short lock and
//! a `Vec::pop`, with no per-request pool key or checkout channel. A
//! connection comes back (from [`super::h1::ResponseBody`]) only when its
//! response was read to the end; one dropped mid-response is closed, which
//! is also how a client disconnect cancels the backend request.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use http::uri::Authority;

use super::h1::Connection;
use crate::clock::coarse_millis;

/// Why a new connection could not be made.
#[derive(Debug)]
pub enum ConnectError {
    /// The TCP connect (or name lookup) failed.
    Io(std::io::Error),
    /// Connecting took longer than `connect_timeout`.
    Timeout,
    /// The HTTP/1.1 handshake of an upgrade connection failed.
    Handshake(hyper::Error),
    /// The HTTP/2 handshake with a gRPC target failed.
    H2Handshake(crate::http2::client::Error),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Io(e) => write!(f, "connect failed: {e}"),
            ConnectError::Timeout => write!(f, "connect timed out"),
            ConnectError::Handshake(e) => write!(f, "HTTP handshake failed: {e}"),
            ConnectError::H2Handshake(e) => write!(f, "HTTP/2 handshake failed: {e}"),
        }
    }
}

impl std::error::Error for ConnectError {}

/// Pool sizing and lifetime.
#[derive(Debug, Clone, Copy)]
pub struct PoolSettings {
    pub max_idle: usize,
    pub idle_timeout: Duration,
    pub connect_timeout: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self { max_idle: 256, idle_timeout: Duration::from_secs(90), connect_timeout: Duration::from_secs(5) }
    }
}

struct Idle {
    conn: Box<Connection>,
    /// When it was put back ([`coarse_millis`]).
    since_ms: u64,
}

/// Idle connections to one target.
pub struct Pool {
    settings: PoolSettings,
    /// Resolved once when the target is an IP literal; otherwise looked up per connect.
    socket_addr: Option<SocketAddr>,
    idle: Mutex<Vec<Idle>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("settings", &self.settings).finish_non_exhaustive()
    }
}

impl Pool {
    pub fn new(authority: &Authority, settings: PoolSettings) -> Self {
        Self { settings, socket_addr: authority.as_str().parse().ok(), idle: Mutex::new(Vec::new()) }
    }

    /// The most recently used live connection, if any.
    pub fn checkout(&self) -> Option<Box<Connection>> {
        let now = coarse_millis();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(candidate) = idle.pop() {
            if self.is_fresh(&candidate, now) && candidate.conn.is_open() {
                return Some(candidate.conn);
            }
        }
        None
    }

    /// Returns a connection whose exchange finished cleanly.
    pub fn put(&self, conn: Box<Connection>) {
        if self.settings.max_idle == 0 {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() >= self.settings.max_idle {
            idle.remove(0);
        }
        idle.push(Idle { conn, since_ms: coarse_millis() });
    }

    /// Closes connections idle for longer than `idle_timeout`, and those the backend closed.
    pub fn evict_expired(&self) {
        let now = coarse_millis();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.retain(|c| self.is_fresh(c, now) && c.conn.is_open());
    }

    /// Idle for less than `idle_timeout` (to the coarse clock's millisecond).
    fn is_fresh(&self, idle: &Idle, now_ms: u64) -> bool {
        u128::from(now_ms.saturating_sub(idle.since_ms)) < self.settings.idle_timeout.as_millis()
    }

    /// Idle connections currently held.
    pub fn idle_count(&self) -> usize {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Opens a new connection.
    pub async fn connect(&self, authority: &Authority) -> Result<Box<Connection>, ConnectError> {
        let connecting = async {
            match self.socket_addr {
                Some(addr) => tokio::net::TcpStream::connect(addr).await,
                None => tokio::net::TcpStream::connect(authority.as_str()).await,
            }
        };
        let stream = match tokio::time::timeout(self.settings.connect_timeout, connecting).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(ConnectError::Io(e)),
            Err(_) => return Err(ConnectError::Timeout),
        };
        let _ = stream.set_nodelay(true);
        Ok(Box::new(Connection::new(stream)))
    }
}
