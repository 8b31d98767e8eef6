//! Connection and request limits a listener applies to every client before
//! any policy runs (DDoS protection), keyed by the connection's peer IP (the
//! PROXY protocol source when the listener reads one):
//!
//! - `max_connections_per_ip`: extra connections from one IP are closed at
//!   once, before TLS; the total is `max_connections` (a semaphore in `mod.rs`).
//! - `max_requests_per_ip = "N/s"`: a per-IP GCRA (burst N) checked first
//!   thing in the pipeline; over it → 429 `rate_limited` with `Retry-After`.
//! - `request_timeout`: from the request head to the response head, upstream
//!   included; over it → 504 `request_timeout`.
//! - `idle_timeout`: a connection on which no request has started for this
//!   long, and none is in progress, is shut down gracefully (GOAWAY on
//!   HTTP/2, so the client knows no stream was lost; responses still
//!   streaming finish first). See [`Drive`].
//! - `header_read_timeout`: the same for HTTP/1.1 connections (and ones no
//!   request has shown the protocol of yet), with the shorter deadline; one
//!   that is still idle a quarter of it later, a client stalled in the middle
//!   of a request head, is cut. This is the slowloris guard and the keep-alive
//!   timeout, on the connection's one timer instead of hyper's timer per
//!   request head.
//!
//! The HTTP/2 stream-flood limits are hyper settings; see `http_builder`.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use hyper_util::server::graceful::Watcher;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::clock::coarse_millis;
use crate::config::ListenerLimits;
use crate::error::ProxyError;
use crate::policy::rate_limit::local::LocalLimiter;

/// Buckets the per-IP request limiter may hold before it resets (see `local`).
const MAX_TRACKED_IPS: usize = 1_000_000;

/// The per-client limits of one listener, shared by all its connections.
pub struct ClientLimits {
    per_ip_connections: Option<PerIpConnections>,
    request_rate: Option<Arc<LocalLimiter<IpAddr>>>,
    /// `request_timeout`, applied by the pipeline around each request.
    pub request_timeout: Option<Duration>,
    /// `body_timeout`, applied by the pipeline to request bodies it proxies.
    pub body_timeout: Duration,
    /// `idle_timeout`, applied by [`Drive`] to each connection.
    pub idle_timeout: Duration,
}

impl std::fmt::Debug for ClientLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientLimits")
            .field("max_connections_per_ip", &self.per_ip_connections.as_ref().map(|p| p.max))
            .field("max_requests_per_ip", &self.request_rate.is_some())
            .field("request_timeout", &self.request_timeout)
            .field("body_timeout", &self.body_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .finish()
    }
}

/// No per-client limits (unit tests, and listeners built by hand).
impl Default for ClientLimits {
    fn default() -> Self {
        Self {
            per_ip_connections: None,
            request_rate: None,
            request_timeout: None,
            body_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(300),
        }
    }
}

impl ClientLimits {
    /// Builds the listener `name`'s limits (starting the rate limiter's janitor).
    pub fn new(name: &str, limits: &ListenerLimits) -> Self {
        Self {
            per_ip_connections: limits
                .max_connections_per_ip
                .map(|max| PerIpConnections { max, open: Arc::new(Mutex::new(HashMap::new())) }),
            request_rate: limits
                .max_requests_per_ip
                .map(|rate| LocalLimiter::new(&format!("listener {name}"), rate, rate.count, MAX_TRACKED_IPS)),
            request_timeout: limits.request_timeout,
            body_timeout: limits.body_timeout,
            idle_timeout: limits.idle_timeout,
        }
    }

    /// Counts a new connection from `ip`; `None` if `ip` is at its limit (close it).
    pub fn admit_connection(&self, ip: IpAddr) -> Option<IpConnectionGuard> {
        match &self.per_ip_connections {
            None => Some(IpConnectionGuard { ip, open: None }),
            Some(p) => p.acquire(ip),
        }
    }

    /// Keeps counting a connection from `ip` after the HTTP/1.1 server handed it over to
    /// a WebSocket (HTTP/1.1 Upgrade), when the HTTP connection task that
    /// held its first guard ends. It was admitted already, so there is no
    /// limit check; the count lasts until the WebSocket closes, so
    /// `max_connections_per_ip` covers upgraded connections too.
    pub fn hold_upgraded(&self, ip: IpAddr) -> IpConnectionGuard {
        match &self.per_ip_connections {
            None => IpConnectionGuard { ip, open: None },
            Some(p) => {
                *p.open.lock().unwrap_or_else(|e| e.into_inner()).entry(ip).or_insert(0) += 1;
                IpConnectionGuard { ip, open: Some(Arc::clone(&p.open)) }
            }
        }
    }

    /// Takes one request from `ip`'s budget; a 429 when it has none left.
    pub fn admit_request(&self, ip: IpAddr) -> Result<(), ProxyError> {
        let Some(limiter) = &self.request_rate else { return Ok(()) };
        let status = limiter.check(&ip);
        if status.allowed {
            return Ok(());
        }
        Err(ProxyError::Rejected(Box::new(status.rejection("too many requests from this address"))))
    }
}

/// Open connections per client IP. A plain mutex: it is taken once per
/// connection open and close, never per request.
struct PerIpConnections {
    max: usize,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl PerIpConnections {
    fn acquire(&self, ip: IpAddr) -> Option<IpConnectionGuard> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(ip).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(IpConnectionGuard { ip, open: Some(Arc::clone(&self.open)) })
    }
}

/// One open connection counted against its IP; released on drop. The table
/// only holds IPs with open connections, so it is bounded by them.
pub struct IpConnectionGuard {
    ip: IpAddr,
    open: Option<Arc<Mutex<HashMap<IpAddr, usize>>>>,
}

impl Drop for IpConnectionGuard {
    fn drop(&mut self) {
        let Some(open) = &self.open else { return };
        let mut open = open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Requests in progress on one connection and when the last one started or
/// ended, for the idle timeout: two atomics and two reads of the coarse
/// clock per request.
#[derive(Debug)]
pub struct Activity {
    epoch: Instant,
    /// `epoch` on the coarse clock ([`coarse_millis`]).
    epoch_ms: u64,
    in_flight: AtomicUsize,
    /// Milliseconds since `epoch` of the last request start or end (coarse:
    /// it may lag by a kernel tick, nothing next to an idle timeout).
    last_ms: AtomicU64,
    /// A request came over HTTP/2: only `idle_timeout` applies.
    http2: AtomicBool,
}

impl Default for Activity {
    fn default() -> Self {
        Self {
            epoch: Instant::now(),
            epoch_ms: coarse_millis(),
            in_flight: AtomicUsize::new(0),
            last_ms: AtomicU64::new(0),
            http2: AtomicBool::new(false),
        }
    }
}

impl Activity {
    fn touch(&self) {
        self.last_ms.store(coarse_millis().saturating_sub(self.epoch_ms), Ordering::Relaxed);
    }

    /// Marks a request as started; it counts as in progress until the guard
    /// drops (with the response body).
    pub fn request(self: &Arc<Self>, version: http::Version) -> RequestGuard {
        if version == http::Version::HTTP_2 && !self.http2.load(Ordering::Relaxed) {
            self.http2.store(true, Ordering::Relaxed);
        }
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.touch();
        RequestGuard(Arc::clone(self))
    }

    /// When the connection becomes idle, if nothing happens before then.
    fn idle_at(&self, timeout: Duration) -> Instant {
        self.epoch + Duration::from_millis(self.last_ms.load(Ordering::Relaxed)) + timeout
    }

    fn is_idle(&self, timeout: Duration) -> bool {
        self.in_flight.load(Ordering::Relaxed) == 0 && Instant::now() >= self.idle_at(timeout)
    }

    fn is_http2(&self) -> bool {
        self.http2.load(Ordering::Relaxed)
    }
}

/// A request in progress (see [`Activity::request`]).
pub struct RequestGuard(Arc<Activity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connection that can be asked to finish what is in progress and close.
pub trait Graceful: Future<Output = Result<(), Self::Error>> {
    type Error;
    fn graceful_shutdown(self: Pin<&mut Self>);
}

pin_project_lite::pin_project! {
    /// Runs a connection to its end, shutting it down gracefully when the
    /// server stops (`stop` flips) or when it has been idle for
    /// `idle_timeout` (`header_read_timeout` unless it is HTTP/2, then cut if
    /// still idle a quarter of that later). Holds the drain `watcher` so the
    /// server's drain waits for this connection. (A hand-written future
    /// rather than an `async fn`: hyper's connection bounds defeat the
    /// compiler's `Send` inference there.)
    pub struct Drive<C> {
        #[pin]
        conn: C,
        stopped: Pin<Box<dyn Future<Output = ()> + Send>>,
        // A second handle on the stop channel: `has_changed` is one atomic
        // load, where polling `stopped` takes the channel's lock.
        stop_probe: watch::Receiver<bool>,
        idle: Pin<Box<tokio::time::Sleep>>,
        // The waker `stopped` and `idle` were last polled with: while the
        // connection's polls come with it, both are already registered to
        // wake us, and are polled again only once they may be ready.
        waker: Option<Waker>,
        activity: Arc<Activity>,
        idle_timeout: Duration,
        header_timeout: Duration,
        closing: bool,
        // The header deadline closed the connection gracefully: when `idle`
        // fires again with no request in progress, the connection is dropped
        // (a graceful shutdown leaves a half-sent request head waiting).
        cut_pending: bool,
        _watcher: Watcher,
    }
}

impl<C: Graceful> Drive<C> {
    /// Wraps `conn`; see the type's doc.
    pub fn new(
        conn: C,
        watcher: Watcher,
        mut stop: watch::Receiver<bool>,
        activity: Arc<Activity>,
        idle_timeout: Duration,
        header_timeout: Duration,
    ) -> Self {
        let stop_probe = stop.clone();
        let stopped = Box::pin(async move {
            // A dropped sender also means the server is going away.
            let _ = stop.wait_for(|stopped| *stopped).await;
        });
        let idle = Box::pin(tokio::time::sleep_until(activity.idle_at(idle_timeout.min(header_timeout))));
        Self {
            conn,
            stopped,
            stop_probe,
            idle,
            waker: None,
            activity,
            idle_timeout,
            header_timeout,
            closing: false,
            cut_pending: false,
            _watcher: watcher,
        }
    }
}

impl<C: Graceful> Future for Drive<C> {
    type Output = Result<(), C::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let registered = this.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker()));
        if !registered {
            *this.waker = Some(cx.waker().clone());
        }
        let timer_due = !registered || this.idle.is_elapsed();
        if !*this.closing {
            // A dropped sender reads as changed, and `stopped` then ends.
            let may_stop = !registered || this.stop_probe.has_changed().unwrap_or(true);
            if may_stop && this.stopped.as_mut().poll(cx).is_ready() {
                *this.closing = true;
            } else if timer_due {
                while this.idle.as_mut().poll(cx).is_ready() {
                    let http2 = this.activity.is_http2();
                    let timeout =
                        if http2 { *this.idle_timeout } else { (*this.idle_timeout).min(*this.header_timeout) };
                    let now = tokio::time::Instant::now();
                    if this.activity.is_idle(timeout) {
                        tracing::debug!(?timeout, "closing idle connection");
                        *this.closing = true;
                        if !http2 {
                            *this.cut_pending = true;
                            this.idle.as_mut().reset(now + *this.header_timeout / 4);
                            let _ = this.idle.as_mut().poll(cx);
                        }
                        break;
                    }
                    // Something happened meanwhile: wait for the new deadline, or,
                    // while a request is still in progress, look again later.
                    let next = this.activity.idle_at(timeout).max(now + timeout / 4);
                    this.idle.as_mut().reset(next);
                }
            }
            if *this.closing {
                this.conn.as_mut().graceful_shutdown();
            }
        } else if *this.cut_pending && timer_due && this.idle.as_mut().poll(cx).is_ready() {
            *this.cut_pending = false;
            if this.activity.in_flight.load(Ordering::Relaxed) == 0 {
                tracing::debug!("connection cut: no complete request head within header_read_timeout");
                return Poll::Ready(Ok(()));
            }
        }
        this.conn.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_ip_connections_are_counted_and_released() {
        let limits = PerIpConnections { max: 2, open: Arc::default() };
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let a = limits.acquire(ip).unwrap();
        let _b = limits.acquire(ip).unwrap();
        assert!(limits.acquire(ip).is_none(), "third connection from one IP");
        assert!(limits.acquire(other).is_some(), "another IP is not affected");
        drop(a);
        assert!(limits.acquire(ip).is_some(), "a closed connection frees its slot");
        drop(_b);
        assert!(limits.open.lock().unwrap().len() <= 1, "IPs without connections are forgotten");
    }

    #[test]
    fn a_connection_is_idle_only_without_requests_for_the_timeout() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let _enter = runtime.enter();
        let activity = Arc::new(Activity::default());
        let timeout = Duration::from_millis(40);
        let guard = activity.request(http::Version::HTTP_11);
        std::thread::sleep(Duration::from_millis(60));
        assert!(!activity.is_idle(timeout), "a request is in progress");
        drop(guard);
        assert!(!activity.is_idle(timeout), "it just ended");
        std::thread::sleep(Duration::from_millis(60));
        assert!(activity.is_idle(timeout));
    }
}
