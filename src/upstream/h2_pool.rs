//! A few multiplexed HTTP/2 connections to one gRPC target: cleartext (h2c,
//! prior knowledge: RFC 9113 §3.3) or TLS with ALPN `h2` (§3.2).
//!
//! gRPC calls are streams on long-lived connections, so there is no idle
//! list as for HTTP/1.1: each of a handful of slots holds one connection,
//! shared (cloned `SendRequest`) by every call placed on it. A slot whose
//! connection closed (GOAWAY, reset, backend restart) reconnects on its next
//! use; the lock held while connecting makes callers wait for one connect
//! instead of racing to open many.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::uri::Authority;

use super::ConnectError;
use super::tls::Transport;
use crate::http2::client::{self, Client, Settings};

/// HTTP/2 PINGs keep NAT and load-balancer state alive on quiet connections
/// and detect a dead peer (RFC 9113 §6.7).
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// A PING unanswered this long closes the connection (hyper's default).
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// Largest response header list accepted from a backend (hyper's default).
const MAX_HEADER_LIST_SIZE: u32 = 16 * 1024;
/// Per-call receive window towards a gRPC backend: what one call may have
/// buffered here unread (128 KiB × the backend's stream limit per connection).
const STREAM_WINDOW: u32 = 128 * 1024;
/// Connection receive window: large, so that the stream windows are what
/// stops a fast backend, each call at its own reader's pace.
const CONNECTION_WINDOW: u32 = 1 << 30;

/// One connection to a gRPC target, shared by the calls placed on it.
pub type H2Sender = Arc<Client>;

/// Multiplexed connections to one target.
pub struct H2Pool {
    authority: Authority,
    /// Resolved once when the target is an IP literal; otherwise looked up per connect.
    socket_addr: Option<SocketAddr>,
    connect_timeout: Duration,
    transport: Transport,
    slots: Box<[tokio::sync::Mutex<Option<H2Sender>>]>,
    next: AtomicUsize,
}

impl std::fmt::Debug for H2Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Pool").field("authority", &self.authority).finish_non_exhaustive()
    }
}

impl H2Pool {
    /// Connections are opened lazily, on the first call placed on each
    /// slot; calls spread over `connections` slots round robin (the default
    /// two keep one connection's flow-control windows or I/O task from
    /// serialising every call, while keeping the backend's connection count low).
    pub fn new(authority: &Authority, connect_timeout: Duration, transport: Transport, connections: usize) -> Self {
        Self {
            transport,
            socket_addr: authority.as_str().parse().ok(),
            authority: authority.clone(),
            connect_timeout,
            slots: (0..connections.max(1)).map(|_| tokio::sync::Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// A handle to a live connection, connecting first if the chosen slot has none.
    pub async fn sender(&self) -> Result<H2Sender, ConnectError> {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        // The common case, without waiting: the slot is free and its connection live.
        if let Ok(slot) = self.slots[index].try_lock()
            && let Some(sender) = slot.as_ref()
            && !sender.is_closed()
        {
            return Ok(Arc::clone(sender));
        }
        // Boxed: connecting (TCP, TLS, handshake) and waiting for the slot's
        // lock are rare, and their state would otherwise sit in every call's future.
        Box::pin(self.sender_slow(index)).await
    }

    async fn sender_slow(&self, index: usize) -> Result<H2Sender, ConnectError> {
        let mut slot = self.slots[index].lock().await;
        if let Some(sender) = slot.as_ref()
            && !sender.is_closed()
        {
            return Ok(Arc::clone(sender));
        }
        *slot = None;
        let sender = self.connect().await?;
        *slot = Some(Arc::clone(&sender));
        Ok(sender)
    }

    async fn connect(&self) -> Result<H2Sender, ConnectError> {
        let connecting = async {
            match self.socket_addr {
                Some(addr) => tokio::net::TcpStream::connect(addr).await,
                None => tokio::net::TcpStream::connect(self.authority.as_str()).await,
            }
        };
        let tls = match &self.transport {
            Transport::Cleartext => None,
            Transport::Tls(connector) => Some(connector),
            Transport::Unusable(why) => return Err(ConnectError::Io(std::io::Error::other(why.to_string()))),
        };
        let host = self.authority.host();
        // One budget for TCP, TLS and the HTTP/2 handshake, as for a backend
        // that accepts but never answers.
        let connected = tokio::time::timeout(self.connect_timeout, async {
            let stream = connecting.await.map_err(ConnectError::Io)?;
            let _ = stream.set_nodelay(true);
            match tls {
                None => handshake(Io::Plain(stream)).await,
                Some(tls) => {
                    let stream = tls.connect(host, stream).await.map_err(ConnectError::Io)?;
                    handshake(Io::Tls(Box::new(stream))).await
                }
            }
        });
        connected.await.unwrap_or(Err(ConnectError::Timeout))
    }
}

/// A connected stream, before the HTTP/2 handshake.
enum Io {
    Plain(tokio::net::TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>),
}

/// Starts HTTP/2 on `stream`, spawns its I/O task, and waits for the
/// backend's SETTINGS: a backend that does not speak HTTP/2 fails here, as
/// a connect failure, not on the first call.
async fn handshake(stream: Io) -> Result<H2Sender, ConnectError> {
    let settings = Settings {
        stream_window: STREAM_WINDOW,
        connection_window: CONNECTION_WINDOW,
        max_header_list_size: MAX_HEADER_LIST_SIZE,
        // Server-role limits: they do not apply to our client.
        max_concurrent_streams: u32::MAX,
        max_early_resets: usize::MAX,
        max_peer_faults: usize::MAX,
        keep_alive_interval: KEEP_ALIVE_INTERVAL,
        keep_alive_timeout: KEEP_ALIVE_TIMEOUT,
    };
    let client = match stream {
        Io::Plain(stream) => spawn_connection(stream, settings),
        Io::Tls(stream) => spawn_connection(*stream, settings),
    };
    std::future::poll_fn(|cx| client.poll_ready(cx)).await.map_err(ConnectError::H2Handshake)?;
    Ok(Arc::new(client))
}

fn spawn_connection<T>(stream: T, settings: Settings) -> Client
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (client, connection) = client::handshake(stream, settings);
    tokio::spawn(connection);
    client
}
