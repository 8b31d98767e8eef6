//! Listeners: accept TCP (optionally TLS) connections and serve HTTP/1.1
//! ([`http1`]) and HTTP/2 ([`http2`], on the h2 crate) on them with servers
//! of our own, handing every request to the gateway.
//!
//! Cleartext ports speak HTTP/1.1 and HTTP/2 with prior knowledge (the
//! connection preface tells them apart, see [`protocol`]); TLS ports pick by
//! ALPN. `Upgrade: h2c` is not offered (deprecated by RFC 9113 §3.1).

pub mod client_cert;
mod date;
pub mod http1;
pub mod http2;
pub mod limits;
mod plain_on_tls;
pub mod protocol;
pub mod proxy_protocol;
pub mod quic;
pub mod tls;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;

use crate::body::ClientBody;
use crate::config::ListenerConfig;
use crate::model::{ConnectionInfo, ListenerInfo, TlsInfo};
use crate::pipeline::Gateway;
use proxy_protocol::{ProxyHeader, Rewind};

/// A bound listener, ready to serve once the runtime is up.
pub struct Listener {
    config: ListenerConfig,
    tcp: TcpListener,
    tls: Option<TlsAcceptor>,
    http1: http1::Settings,
    http2: http2::Settings,
    info: Arc<ListenerInfo>,
    connections: Option<Arc<Semaphore>>,
    /// The HTTP/3 twin on the same port over UDP (`http3 = true`).
    quic: Option<quic::QuicListener>,
    /// `Alt-Svc` added to TCP responses when the HTTP/3 twin runs.
    alt_svc: Option<http::HeaderValue>,
}

/// Why a listener could not start.
#[derive(Debug)]
pub enum ListenError {
    Bind { listener: String, addr: SocketAddr, source: std::io::Error },
    Tls { listener: String, source: tls::TlsError },
}

impl std::fmt::Display for ListenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenError::Bind { listener, addr, source } => {
                write!(f, "listener `{listener}`: cannot bind {addr}: {source}")
            }
            ListenError::Tls { listener, source } => write!(f, "listener `{listener}`: {source}"),
        }
    }
}

impl std::error::Error for ListenError {}

impl Listener {
    /// Binds the socket and prepares TLS and HTTP settings.
    pub fn bind(config: &ListenerConfig) -> Result<Self, ListenError> {
        let tcp = bind_tcp(config.bind).map_err(|source| ListenError::Bind {
            listener: config.name.clone(),
            addr: config.bind,
            source,
        })?;
        let tls_config = match &config.tls {
            None => None,
            Some(t) => Some(
                tls::server_config(t).map_err(|source| ListenError::Tls { listener: config.name.clone(), source })?,
            ),
        };
        let info = Arc::new(ListenerInfo {
            name: Arc::from(config.name.as_str()),
            max_body_bytes: config.limits.max_body_bytes,
            limits: limits::ClientLimits::new(&config.name, &config.limits),
            merge_slashes: config.merge_slashes,
        });
        let connections = config.limits.max_connections.map(|n| Arc::new(Semaphore::new(n)));
        let (quic, alt_svc) = match (&config.http3, &tls_config) {
            (Some(http3), Some(tls_config)) => {
                // Same port number as the TCP socket actually bound (the config may say port 0).
                let mut config = config.clone();
                config.bind = tcp.local_addr().unwrap_or(config.bind);
                let quic = quic::QuicListener::bind(&config, http3, tls_config, Arc::clone(&info), connections.clone())
                    .map_err(|source| ListenError::Bind { listener: config.name.clone(), addr: config.bind, source })?;
                (Some(quic), quic::alt_svc(config.bind.port(), http3))
            }
            _ => (None, None),
        };
        Ok(Self {
            tcp,
            tls: tls_config.map(TlsAcceptor::from),
            http1: http1::Settings {
                max_head_bytes: config.limits.max_header_bytes,
                max_headers: config.limits.max_headers,
                send_timeout: config.limits.send_timeout,
            },
            http2: http2_settings(config),
            info,
            connections,
            quic,
            alt_svc,
            config: config.clone(),
        })
    }

    /// The address actually bound (useful when the config said port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    /// Accepts connections until `stop` flips, registering each with `drain`.
    pub async fn run(
        mut self,
        gateway: Arc<ArcSwap<Gateway>>,
        mut stop: watch::Receiver<bool>,
        drain: Arc<GracefulShutdown>,
    ) {
        let quic = self.quic.take().map(|q| tokio::spawn(q.run(Arc::clone(&gateway), stop.clone())));
        tracing::info!(listener = %self.config.name, bind = %self.config.bind, tls = self.tls.is_some(), "listening");
        loop {
            let accepted = tokio::select! {
                _ = stop.changed() => break,
                accepted = self.tcp.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(listener = %self.config.name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = connection_slot(self.connections.as_ref()) else {
                tracing::debug!(listener = %self.config.name, %peer, "connection refused: max_connections reached");
                continue;
            };
            let connection = Connection {
                http1: self.http1,
                http2: self.http2,
                tls: self.tls.clone(),
                listener: Arc::clone(&self.info),
                gateway: Arc::clone(&gateway),
                handshake_timeout: self.config.limits.header_read_timeout,
                proxy_protocol: self.config.proxy_protocol,
                stop: stop.clone(),
                alt_svc: self.alt_svc.clone(),
            };
            let watcher = drain.watcher();
            tokio::spawn(async move {
                let _held = (permit, crate::gauge::HTTP_CONNECTIONS.enter());
                connection.serve(stream, peer, watcher).await;
            });
        }
        if let Some(quic) = quic {
            let _ = quic.await;
        }
        tracing::info!(listener = %self.config.name, "stopped accepting");
    }
}

/// What a connection task needs, cloned from its listener.
struct Connection {
    http1: http1::Settings,
    http2: http2::Settings,
    tls: Option<TlsAcceptor>,
    listener: Arc<ListenerInfo>,
    gateway: Arc<ArcSwap<Gateway>>,
    handshake_timeout: Duration,
    /// Read a PROXY protocol header first (see `proxy_protocol`).
    proxy_protocol: bool,
    /// Flips when the server stops: connections then shut down gracefully.
    stop: watch::Receiver<bool>,
    /// Advertises the listener's HTTP/3 twin (RFC 7838), if it has one.
    alt_svc: Option<http::HeaderValue>,
}

impl Connection {
    async fn serve(self, mut stream: TcpStream, peer: SocketAddr, watcher: hyper_util::server::graceful::Watcher) {
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr().unwrap_or(peer);
        if !self.proxy_protocol {
            if self.admits(peer) {
                self.serve_io(stream, peer, local, watcher).await;
            }
            return;
        }
        // The PROXY header comes before TLS; its deadline is the header read timeout.
        let (header, rest) = match proxy_protocol::read_header(&mut stream, self.handshake_timeout).await {
            Ok(read) => read,
            Err(e) => {
                tracing::debug!(listener = %self.listener.name, %peer, error = %e, "connection closed");
                return;
            }
        };
        let (peer, local) = match header {
            ProxyHeader::Proxied { source, destination } => (source, destination),
            ProxyHeader::Unknown => (peer, local),
        };
        if self.admits(peer) {
            self.serve_io(Rewind::new(rest, stream), peer, local, watcher).await;
        }
    }

    /// The listener's `ip_filter` policies with `on_connect`, checked before
    /// any TLS or HTTP work so a denied client costs one accept and a close.
    fn admits(&self, peer: SocketAddr) -> bool {
        let admitted = self.gateway.load().admits_connection(&self.listener.name, peer.ip());
        if !admitted {
            tracing::debug!(listener = %self.listener.name, %peer, "connection closed: denied by ip_filter");
        }
        admitted
    }

    async fn serve_io<S>(
        self,
        mut stream: S,
        peer: SocketAddr,
        local: SocketAddr,
        watcher: hyper_util::server::graceful::Watcher,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        // Per-IP connection cap, before any TLS work; released when this task ends.
        let Some(_per_ip) = self.listener.limits.admit_connection(peer.ip()) else {
            tracing::debug!(listener = %self.listener.name, %peer, "connection refused: max_connections_per_ip reached");
            return;
        };
        match &self.tls {
            None => {
                let info = ConnectionInfo::new(Arc::clone(&self.listener), peer, local, None);
                self.serve_http(stream, info, watcher).await;
            }
            Some(acceptor) => {
                let handshake = async {
                    let first = match plain_on_tls::sniff(&mut stream).await {
                        plain_on_tls::Opening::Tls(first) => first,
                        plain_on_tls::Opening::PlainHttp => {
                            tracing::debug!(%peer, "plain HTTP on a TLS port: answered 400");
                            plain_on_tls::refuse(&mut stream).await;
                            return None;
                        }
                        plain_on_tls::Opening::Nothing => return None,
                    };
                    Some(acceptor.accept(Rewind::new(first, stream)).await)
                };
                let tls_stream = match tokio::time::timeout(self.handshake_timeout, handshake).await {
                    Ok(None) => return,
                    Ok(Some(Ok(s))) => s,
                    Ok(Some(Err(e))) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                };
                let (_, session) = tls_stream.get_ref();
                let tls = TlsInfo {
                    server_name: session.server_name().map(str::to_string),
                    alpn: session.alpn_protocol().map(<[u8]>::to_vec),
                    version: session.protocol_version().and_then(|v| v.as_str()),
                    // Read once here, not per request; rustls has verified it against `client_auth.ca`.
                    client_cert: session
                        .peer_certificates()
                        .and_then(|chain| chain.first())
                        .and_then(client_cert::identity)
                        .map(Arc::new),
                };
                let info = ConnectionInfo::new(Arc::clone(&self.listener), peer, local, Some(tls));
                self.serve_http(tls_stream, info, watcher).await;
            }
        }
    }

    async fn serve_http<I>(&self, io: I, info: ConnectionInfo, watcher: hyper_util::server::graceful::Watcher)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let alpn_h2 = info.tls.as_ref().and_then(|tls| tls.alpn.as_deref()) == Some(b"h2");
        let info = Arc::new(info);
        let activity = Arc::new(limits::Activity::default());
        let http2 = self.start_http2(Arc::clone(&info), Arc::clone(&activity));
        let conn = if alpn_h2 {
            protocol::Serving::http2(io, http2)
        } else {
            let gateway = Arc::clone(&self.gateway);
            let requests = Arc::clone(&activity);
            let alt_svc = self.alt_svc.clone();
            let info = Arc::clone(&info);
            // HTTP/1.1: the request's future runs inside the connection's own
            // task (see `http1`), so it is not boxed.
            let service = move |req: http::Request<ClientBody>| {
                let in_progress = requests.request(req.version());
                let handling = gateway.load_full().handle(Arc::clone(&info), req, Some(in_progress));
                with_alt_svc(handling, alt_svc.clone())
            };
            protocol::Serving::detect(io, service, self.http1, http2)
        };
        let idle_timeout = self.listener.limits.idle_timeout;
        // Ends on drain (`stop`) or after `idle_timeout` without requests, gracefully either way;
        // an HTTP/1.1 connection after `header_read_timeout` (see `limits`).
        let drive =
            limits::Drive::new(conn, watcher, self.stop.clone(), activity, idle_timeout, self.handshake_timeout);
        if let Err(e) = drive.await {
            tracing::debug!(error = %e, "connection ended with an error");
        }
    }

    /// How this connection starts HTTP/2 if it turns out to speak it.
    fn start_http2<I>(&self, info: Arc<ConnectionInfo>, activity: Arc<limits::Activity>) -> protocol::StartHttp2<I>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let gateway = Arc::clone(&self.gateway);
        let alt_svc = self.alt_svc.clone();
        let settings = self.http2;
        Box::new(move |io: Rewind<I>| {
            let service = move |req: http::Request<ClientBody>| {
                let in_progress = activity.request(req.version());
                let handling = gateway.load_full().handle(Arc::clone(&info), req, Some(in_progress));
                // Boxed: the request's state machine is several KB, and each
                // stream's state would otherwise be that large, moved whole
                // into the connection's set of streams.
                let answer: Pin<Box<dyn std::future::Future<Output = http::Response<crate::body::Body>> + Send>> =
                    Box::pin(with_alt_svc(handling, alt_svc.clone()));
                answer
            };
            Box::pin(http2::ServerConnection::new(io, service, &settings)) as Pin<Box<dyn protocol::Http2Connection>>
        })
    }
}

/// A slot under the listener's `max_connections` (TCP and QUIC share it):
/// `Ok(None)` when there is no limit, `Err` when every slot is taken.
pub(crate) fn connection_slot(
    limit: Option<&Arc<Semaphore>>,
) -> Result<Option<tokio::sync::OwnedSemaphorePermit>, tokio::sync::TryAcquireError> {
    limit.map(|sem| Arc::clone(sem).try_acquire_owned()).transpose()
}

/// Our HTTP/2 server's settings from the listener's limits.
fn http2_settings(config: &ListenerConfig) -> http2::Settings {
    let limits = &config.limits;
    http2::Settings {
        max_header_list_bytes: u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX),
        max_concurrent_streams: limits.h2_max_concurrent_streams,
        send_timeout: limits.send_timeout,
        max_pending_accept_reset_streams: limits.h2_max_pending_accept_reset_streams,
        max_local_error_reset_streams: limits.h2_max_local_error_reset_streams,
    }
}

/// A listening socket with a deep backlog and address reuse, so restarts
/// don't wait out TIME_WAIT.
fn bind_tcp(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket =
        socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    TcpListener::from_std(socket.into())
}

/// `handling`'s response with `Alt-Svc` added when the listener advertises
/// HTTP/3. A combinator, not an `async` block: a block would keep the
/// request's future twice in its state (as captured, and as awaited), and
/// every HTTP/2 stream boxes this future whole.
fn with_alt_svc<F>(
    handling: F,
    alt_svc: Option<http::HeaderValue>,
) -> impl std::future::Future<Output = http::Response<crate::body::Body>> + Send
where
    F: std::future::Future<Output = http::Response<crate::body::Body>> + Send,
{
    use futures_util::FutureExt;
    handling.map(move |mut response| {
        if let Some(alt_svc) = alt_svc {
            response.headers_mut().entry(http::header::ALT_SVC).or_insert(alt_svc);
        }
        response
    })
}
