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
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::uri::Authority;

use super::ConnectError;
use super::tls::Transport;

/// HTTP/2 PINGs keep NAT and load-balancer state alive on quiet connections
/// and detect a dead peer (RFC 9113 §6.7).
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// A PING unanswered this long closes the connection (hyper's default).
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// Largest response header list accepted from a backend (hyper's default).
const MAX_HEADER_LIST_SIZE: u32 = 16 * 1024;
/// Bytes h2 buffers per stream for sending (hyper's default).
const MAX_SEND_BUFFER_SIZE: usize = 1024 * 1024;

/// Per-call receive window towards a gRPC backend: what one call may have
/// buffered here unread (128 KiB × the backend's stream limit per connection).
const STREAM_WINDOW: u32 = 128 * 1024;
/// Connection receive window: large, so h2's small-frame budget (half of it)
/// never trips before the stream windows stop the backend.
const CONNECTION_WINDOW: u32 = 1 << 30;

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
        let mut slot = self.slots[index].lock().await;
        if let Some(sender) = slot.as_ref()
            && !sender.is_closed()
        {
            return Ok(sender.clone());
        }
        *slot = None;
        // Boxed: connecting (TCP, TLS, handshake) is rare, and its large
        // state would otherwise sit inside every call's future.
        let sender = Box::pin(self.connect()).await?;
        *slot = Some(sender.clone());
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
        // One budget for TCP and TLS, as for a backend that accepts but never answers.
        let connected = tokio::time::timeout(self.connect_timeout, async {
            let stream = connecting.await?;
            let _ = stream.set_nodelay(true);
            match tls {
                None => Ok(Io::Plain(stream)),
                Some(tls) => Ok(Io::Tls(Box::new(tls.connect(host, stream).await?))),
            }
        });
        match connected.await {
            Ok(Ok(Io::Plain(stream))) => handshake(stream).await,
            Ok(Ok(Io::Tls(stream))) => handshake(*stream).await,
            Ok(Err(e)) => Err(ConnectError::Io(e)),
            Err(_) => Err(ConnectError::Timeout),
        }
    }
}

/// A connected stream, before the HTTP/2 handshake.
enum Io {
    Plain(tokio::net::TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>),
}

/// A cloneable handle to one upstream HTTP/2 connection.
#[derive(Clone)]
pub struct H2Sender {
    /// h2's own handle: calls open streams on it from their own task, with
    /// no hand-off to the connection's task.
    pub send: h2::client::SendRequest<Bytes>,
    /// Set when the connection ended or refused a new stream (GOAWAY).
    closed: Arc<AtomicBool>,
}

impl H2Sender {
    /// True once the connection can take no new calls: its slot reconnects.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// Marks the connection unusable for new calls (it refused one).
    pub fn mark_closed(&self) {
        self.closed.store(true, Ordering::Relaxed);
    }
}

/// Starts HTTP/2 on `stream` and spawns its I/O task.
async fn handshake<T>(stream: T) -> Result<H2Sender, ConnectError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (send, mut connection) = h2::client::Builder::new()
        // h2 closes a connection holding too many small unread DATA frames
        // (its budget is half the connection window): a fast backend streaming
        // small messages to a slow client got every call on the connection
        // reset with ENHANCE_YOUR_CALM. Bytes buffered are bounded by the
        // stream window × streams; the connection window only sets the budget.
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_header_list_size(MAX_HEADER_LIST_SIZE)
        .max_send_buffer_size(MAX_SEND_BUFFER_SIZE)
        // A proxy has no use for server push (RFC 9113 §8.4).
        .enable_push(false)
        .handshake::<_, Bytes>(stream)
        .await
        .map_err(ConnectError::H2Handshake)?;
    let closed = Arc::new(AtomicBool::new(false));
    let ended = Arc::clone(&closed);
    let mut ping_pong = connection.ping_pong().expect("taken once, here");
    tokio::spawn(async move {
        let keep_alive = async {
            loop {
                tokio::time::sleep(KEEP_ALIVE_INTERVAL).await;
                match tokio::time::timeout(KEEP_ALIVE_TIMEOUT, ping_pong.ping(h2::Ping::opaque())).await {
                    Ok(Ok(_pong)) => {}
                    Ok(Err(_)) => return,
                    Err(_) => {
                        tracing::debug!("gRPC upstream connection missed a keep-alive PING; closing it");
                        return;
                    }
                }
            }
        };
        tokio::select! {
            ended = &mut connection => if let Err(e) = ended {
                tracing::debug!(error = %e, "gRPC upstream connection ended with an error");
            },
            () = keep_alive => {}
        }
        ended.store(true, Ordering::Relaxed);
    });
    Ok(H2Sender { send, closed })
}
