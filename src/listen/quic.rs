//! The HTTP/3 side of a TLS listener (`http3 = true`): QUIC on the same port
//! number over UDP, same certificates (SNI), ALPN `h3`. Requests become the
//! same `http::Request` + `ConnectionInfo` as on TCP and go to
//! [`Gateway::handle`]; the framing is `tollgate_h3`'s.
//!
//! Per connection: one task accepts request streams (and so drives the
//! control stream), each request runs in a task of its own. When the
//! connection dies (client gone, idle timeout) the request tasks are aborted,
//! which drops their upstream requests. On shutdown: GOAWAY, the requests in
//! flight finish, then CONNECTION_CLOSE with H3_NO_ERROR.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{HeaderValue, Method, Response, StatusCode, header};
use quinn::crypto::rustls::{HandshakeData, QuicServerConfig};
use rustls::pki_types::CertificateDer;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;

use crate::body::{Body, ClientBody};
use crate::config::{Http3Config, ListenerConfig};
use crate::error::ProxyError;
use crate::gauge;
use crate::model::{ConnectionInfo, ListenerInfo, TlsInfo};
use crate::pipeline::Gateway;
use crate::policy::Rejection;
use crate::websocket::client::{MaxMessageBytes, WebTransportUpgrade};
use tollgate_h3::Resolved;

/// Bytes a connection may have in flight towards us, unread, across streams:
/// bounds the memory one client can make us buffer (flow control does the rest).
const CONNECTION_RECEIVE_WINDOW: u32 = 8 * 1024 * 1024;
/// The same per stream.
const STREAM_RECEIVE_WINDOW: u32 = 1024 * 1024;
/// Unidirectional streams a client may open: HTTP/3 needs three (control,
/// QPACK encoder and decoder); WebTransport messages take one each.
const MAX_UNI_STREAMS: u32 = 32;

/// Largest UDP payload we accept (an Ethernet MTU less IP and UDP headers;
/// browsers and QUIC stacks send no more). quinn sizes its receive buffer as
/// this × 64 GRO segments × its batch size: ~130 MB of address space at the
/// default of 65527, ~3 MB at this.
const MAX_UDP_PAYLOAD: u16 = 1472;

/// The `Alt-Svc` value a TCP listener advertises its HTTP/3 twin with
/// (RFC 7838), or `None` when `alt_svc_max_age` is zero.
pub fn alt_svc(port: u16, http3: &Http3Config) -> Option<HeaderValue> {
    let max_age = http3.alt_svc_max_age.as_secs();
    (max_age > 0).then(|| {
        HeaderValue::from_str(&format!("h3=\":{port}\"; ma={max_age}")).expect("digits and quotes are a valid header")
    })
}

/// A bound QUIC endpoint serving HTTP/3 for one listener.
pub struct QuicListener {
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
    /// The listener's `max_connections`, shared with its TCP side.
    connections: Option<Arc<Semaphore>>,
}

/// What every connection task of a listener reads.
struct Shared {
    config: ListenerConfig,
    http3: Http3Config,
    info: Arc<ListenerInfo>,
    settings: tollgate_h3::Settings,
}

impl QuicListener {
    /// Binds UDP on the listener's address with a QUIC server config made
    /// from the listener's rustls config (ALPN switched to `h3`).
    pub fn bind(
        config: &ListenerConfig,
        http3: &Http3Config,
        tls: &rustls::ServerConfig,
        info: Arc<ListenerInfo>,
        connections: Option<Arc<Semaphore>>,
    ) -> std::io::Result<Self> {
        let mut tls = tls.clone();
        tls.alpn_protocols = vec![tollgate_h3::ALPN.to_vec()];
        // 0 or u32::MAX are the values QUIC allows (RFC 9001 §4.6.1).
        tls.max_early_data_size = if http3.zero_rtt { u32::MAX } else { 0 };
        let crypto = QuicServerConfig::try_from(Arc::new(tls)).map_err(std::io::Error::other)?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        server.transport_config(Arc::new(transport(config, http3)?));

        let socket = bind_udp(config.bind)?;
        let mut endpoint_config = quinn::EndpointConfig::default();
        endpoint_config.max_udp_payload_size(MAX_UDP_PAYLOAD).map_err(std::io::Error::other)?;
        let endpoint = quinn::Endpoint::new(endpoint_config, Some(server), socket, Arc::new(quinn::TokioRuntime))?;
        let settings = tollgate_h3::Settings {
            max_field_section_size: config.limits.max_header_bytes as u64,
            webtransport: http3.webtransport,
        };
        Ok(Self {
            endpoint,
            shared: Arc::new(Shared { config: config.clone(), http3: http3.clone(), info, settings }),
            connections,
        })
    }

    /// Accepts QUIC connections until `stop` flips; then tells every
    /// connection to GOAWAY and returns (connections finish on their own).
    pub async fn run(self, gateway: Arc<ArcSwap<Gateway>>, mut stop: watch::Receiver<bool>) {
        let name = &self.shared.config.name;
        tracing::info!(listener = %name, bind = %self.shared.config.bind, "listening for HTTP/3 (QUIC)");
        loop {
            let incoming = tokio::select! {
                _ = stop.changed() => break,
                incoming = self.endpoint.accept() => incoming,
            };
            let Some(incoming) = incoming else { break };
            let peer = incoming.remote_address();
            // Address validation first (RFC 9000 §8.1), so a spoofed source costs one stateless packet.
            if self.shared.http3.retry && !incoming.remote_address_validated() {
                let _ = incoming.retry();
                continue;
            }
            if !gateway.load().admits_connection(name, peer.ip()) {
                tracing::debug!(listener = %name, %peer, "QUIC connection refused: denied by ip_filter");
                incoming.refuse();
                continue;
            }
            let Ok(permit) = super::connection_slot(self.connections.as_ref()) else {
                tracing::debug!(listener = %name, %peer, "QUIC connection refused: max_connections reached");
                incoming.refuse();
                continue;
            };
            let Some(per_ip) = self.shared.info.limits.admit_connection(peer.ip()) else {
                tracing::debug!(listener = %name, %peer, "QUIC connection refused: max_connections_per_ip reached");
                incoming.refuse();
                continue;
            };
            let shared = Arc::clone(&self.shared);
            let gateway = Arc::clone(&gateway);
            let stop = stop.clone();
            tokio::spawn(async move {
                let _held = (permit, per_ip, gauge::QUIC_CONNECTIONS.enter());
                serve_connection(incoming, shared, gateway, stop).await;
            });
        }
        tracing::info!(listener = %name, "stopped accepting HTTP/3");
    }
}

/// Transport limits from the listener's config.
fn transport(config: &ListenerConfig, http3: &Http3Config) -> std::io::Result<quinn::TransportConfig> {
    let mut transport = quinn::TransportConfig::default();
    let idle = quinn::IdleTimeout::try_from(config.limits.idle_timeout).map_err(std::io::Error::other)?;
    transport
        .max_concurrent_bidi_streams(http3.max_concurrent_streams.into())
        .max_concurrent_uni_streams(MAX_UNI_STREAMS.into())
        .max_idle_timeout(Some(idle))
        .receive_window(CONNECTION_RECEIVE_WINDOW.into())
        .stream_receive_window(STREAM_RECEIVE_WINDOW.into());
    Ok(transport)
}

/// A UDP socket on `addr` (IPv6 sockets take IPv6 only, as on TCP).
fn bind_udp(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let socket =
        socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// One QUIC connection: handshake, HTTP/3 SETTINGS, then its requests.
async fn serve_connection(
    incoming: quinn::Incoming,
    shared: Arc<Shared>,
    gateway: Arc<ArcSwap<Gateway>>,
    mut stop: watch::Receiver<bool>,
) {
    let peer = incoming.remote_address();
    let Some((quic, handshake_done)) = handshake(incoming, &shared).await else { return };
    let local = SocketAddr::new(quic.local_ip().unwrap_or(shared.config.bind.ip()), shared.config.bind.port());
    let info = Arc::new(ConnectionInfo::new(Arc::clone(&shared.info), peer, local, Some(tls_info(&quic))));
    let h3 = match tokio::time::timeout(
        shared.config.limits.header_read_timeout,
        tollgate_h3::Connection::new(quic.clone(), &shared.settings),
    )
    .await
    {
        Ok(Ok(h3)) => h3,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "HTTP/3 connection setup failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "HTTP/3 connection setup timed out");
            quic.close(H3_NO_ERROR, b"setup timeout");
            return;
        }
    };

    let mut conn = Http3Conn::Plain(h3);
    // Set once a WebTransport session opens; changes when its message pipe is dropped.
    let mut session_ended: Option<watch::Receiver<()>> = None;
    let (sessions_tx, mut sessions) = mpsc::channel::<SessionOpen>(1);
    let mut requests = JoinSet::new();
    let mut stopping = *stop.borrow();
    if stopping {
        let _ = conn.goaway().await;
    }
    let graceful = loop {
        if stopping && requests.is_empty() {
            break true;
        }
        tokio::select! {
            _ = stop.changed(), if !stopping => {
                stopping = true;
                if let Err(e) = conn.goaway().await {
                    tracing::debug!(%peer, error = %e, "HTTP/3 GOAWAY failed");
                    break false;
                }
            }
            accepted = conn.accept() => match accepted {
                Ok(Some(stream)) => {
                    let request = StreamTask {
                        shared: Arc::clone(&shared),
                        info: Arc::clone(&info),
                        gateway: Arc::clone(&gateway),
                        // Read when the stream is accepted, not when its headers are:
                        // a stream that arrived as early data stays early.
                        early: !handshake_done.load(Ordering::Acquire),
                        sessions: sessions_tx.clone(),
                    };
                    requests.spawn(request.serve(stream));
                }
                // The client said GOAWAY and its requests are done.
                Ok(None) => break true,
                Err(e) => {
                    if e.is_graceful() {
                        tracing::debug!(%peer, error = %e, "HTTP/3 connection closed");
                    } else {
                        tracing::debug!(%peer, error = %e, "HTTP/3 connection failed");
                    }
                    break false;
                }
            },
            Some(open) = sessions.recv() => {
                match conn.open_session(open).await {
                    Ok(ended) => session_ended = ended.or(session_ended),
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "WebTransport session failed to open");
                        break false;
                    }
                }
            }
            // The route's relay or message session is over: closing the connection tells the client.
            _ = changed(&mut session_ended) => break true,
            Some(_) = requests.join_next(), if !requests.is_empty() => {}
        }
    };
    // Whatever is still running has lost its client: abort it, which drops
    // (and so cancels) its upstream request.
    requests.shutdown().await;
    if graceful {
        let _ = settled(&quic).await;
    }
    quic.close(H3_NO_ERROR, b"");
}

/// A connection's HTTP/3 state: plain, or (once a WebTransport CONNECT was
/// accepted) owned by the session, which hands ordinary requests back.
/// One per connection, never moved after creation: size does not matter.
#[allow(clippy::large_enum_variant)]
enum Http3Conn {
    Plain(tollgate_h3::Connection),
    Session(tollgate_h3::webtransport::SessionConnection),
    /// Only while switching.
    Switching,
}

impl Http3Conn {
    async fn accept(&mut self) -> Result<Option<tollgate_h3::Incoming>, tollgate_h3::H3Error> {
        match self {
            Http3Conn::Plain(h3) => h3.accept().await,
            Http3Conn::Session(session) => session.accept().await,
            Http3Conn::Switching => std::future::pending().await,
        }
    }

    /// GOAWAY on a plain connection; a session connection ends with its
    /// session (the WebSocket bridge closes sessions on shutdown).
    async fn goaway(&mut self) -> Result<(), tollgate_h3::H3Error> {
        match self {
            Http3Conn::Plain(h3) => h3.goaway().await,
            _ => Ok(()),
        }
    }

    /// Opens the session the route accepted and hands its messages over;
    /// returns the signal of the session's end.
    async fn open_session(&mut self, open: SessionOpen) -> Result<Option<watch::Receiver<()>>, tollgate_h3::H3Error> {
        let h3 = match std::mem::replace(self, Http3Conn::Switching) {
            Http3Conn::Plain(h3) => h3,
            other => {
                // One session per connection (SETTINGS_WEBTRANSPORT_MAX_SESSIONS = 1).
                *self = other;
                let refusal =
                    http::Response::builder().status(StatusCode::TOO_MANY_REQUESTS).body(crate::body::empty());
                let _ = open.request.refuse(refusal.expect("a status and an empty body")).await;
                return Ok(None);
            }
        };
        let mut session = h3.into_session(open.request).await?;
        let ended = session.ended_signal();
        let _ = open.fulfil.send(session.messages(open.max_message_bytes));
        *self = Http3Conn::Session(session);
        Ok(Some(ended))
    }
}

/// Resolves when the watched sender is gone; never, when there is none.
async fn changed(signal: &mut Option<watch::Receiver<()>>) {
    match signal {
        Some(rx) => {
            let _ = rx.changed().await;
        }
        None => std::future::pending().await,
    }
}

/// A WebTransport CONNECT a route accepted, on its way to the connection task.
struct SessionOpen {
    request: tollgate_h3::webtransport::SessionRequest,
    max_message_bytes: usize,
    fulfil: tokio::sync::oneshot::Sender<tollgate_h3::webtransport::MessagePipe>,
}

/// Waits until the connection has sent nothing for a few round trips (so
/// responses already finished have been delivered and acknowledged), or
/// until the client closes it. A finished response may still sit in
/// quinn's send buffer; closing at once would cut its tail off.
async fn settled(quic: &quinn::Connection) -> Option<quinn::ConnectionError> {
    loop {
        let sent = quic.stats().udp_tx.bytes;
        let quiet = quic.rtt() * 4 + Duration::from_millis(50);
        tokio::select! {
            reason = quic.closed() => return Some(reason),
            _ = tokio::time::sleep(quiet) => {}
        }
        if quic.stats().udp_tx.bytes == sent {
            return None;
        }
    }
}

/// H3_NO_ERROR (RFC 9114 §8.1), the code of a graceful close.
const H3_NO_ERROR: quinn::VarInt = quinn::VarInt::from_u32(0x100);

/// Completes the QUIC handshake within the header read timeout. With 0-RTT
/// on, the connection is usable at once and the flag flips when the
/// handshake confirms the client (until then, requests are early data).
async fn handshake(incoming: quinn::Incoming, shared: &Shared) -> Option<(quinn::Connection, Arc<AtomicBool>)> {
    let peer = incoming.remote_address();
    let connecting = match incoming.accept() {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "QUIC connection rejected");
            return None;
        }
    };
    let connecting = if shared.http3.zero_rtt {
        match connecting.into_0rtt() {
            Ok((quic, accepted)) => {
                let done = Arc::new(AtomicBool::new(false));
                let flag = Arc::clone(&done);
                tokio::spawn(async move {
                    accepted.await;
                    flag.store(true, Ordering::Release);
                });
                return Some((quic, done));
            }
            Err(connecting) => connecting,
        }
    } else {
        connecting
    };
    match tokio::time::timeout(shared.config.limits.header_read_timeout, connecting).await {
        Ok(Ok(quic)) => Some((quic, Arc::new(AtomicBool::new(true)))),
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "QUIC handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, "QUIC handshake timed out");
            None
        }
    }
}

/// SNI, ALPN and the verified client certificate, as for TCP TLS connections.
fn tls_info(quic: &quinn::Connection) -> TlsInfo {
    let handshake = quic.handshake_data().and_then(|d| d.downcast::<HandshakeData>().ok());
    let client_cert = quic
        .peer_identity()
        .and_then(|id| id.downcast::<Vec<CertificateDer<'static>>>().ok())
        .and_then(|chain| chain.first().and_then(super::client_cert::identity))
        .map(Arc::new);
    TlsInfo {
        server_name: handshake.as_ref().and_then(|h| h.server_name.clone()),
        alpn: handshake.and_then(|h| h.protocol),
        version: Some("TLSv1_3"),
        client_cert,
    }
}

/// What one request task needs.
struct StreamTask {
    shared: Arc<Shared>,
    info: Arc<ConnectionInfo>,
    gateway: Arc<ArcSwap<Gateway>>,
    /// The stream was accepted before the handshake confirmed the client
    /// (0-RTT): its request may be a replay.
    early: bool,
    /// Where an accepted WebTransport CONNECT goes to take over the connection.
    sessions: mpsc::Sender<SessionOpen>,
}

impl StreamTask {
    async fn serve(self, stream: tollgate_h3::Incoming) {
        let _live = gauge::HTTP3_STREAMS.enter();
        let peer = self.info.peer;
        let limits = &self.shared.config.limits;
        let (req, mut responder) = match tokio::time::timeout(limits.header_read_timeout, stream.resolve()).await {
            Ok(Ok(Resolved::Request(req, responder))) => (req, responder),
            Ok(Ok(Resolved::WebTransport(session))) => return self.serve_session(session).await,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "HTTP/3 request refused");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "HTTP/3 request headers timed out");
                return;
            }
        };
        let response = match self.precheck(&req) {
            Some(refusal) => {
                let grpc = tollgate_grpc_web::GrpcKind::of(req.headers());
                refusal.into_response_for("-", grpc)
            }
            // Boxed so this task stays small (tokio copies a task's future whole; see listen::serve_http).
            None => {
                let body = req.map(|body| ClientBody::H3(Box::new(body)));
                let handling = Box::pin(self.gateway.load_full().handle(self.info, body, None));
                answer(handling, &mut responder, peer).await
            }
        };
        if let Err(e) = responder.send(response).await {
            tracing::debug!(%peer, error = %e, "HTTP/3 response not completed");
        }
    }

    /// A WebTransport CONNECT goes through routing and the policy chain like
    /// any request; a WebSocket route answers it (see `websocket::client`),
    /// and on its yes the connection task opens the session.
    async fn serve_session(self, session: tollgate_h3::webtransport::SessionRequest) {
        let head = session.head();
        let mut req = http::Request::new(ClientBody::Empty);
        *req.method_mut() = head.method().clone();
        *req.uri_mut() = head.uri().clone();
        *req.version_mut() = http::Version::HTTP_3;
        *req.headers_mut() = head.headers().clone();
        let (upgrade, fulfil) = WebTransportUpgrade::new();
        req.extensions_mut().insert(upgrade);
        let response = match self.precheck(&req) {
            Some(refusal) => refusal.into_response_for("-", None),
            None => self.gateway.load_full().handle(Arc::clone(&self.info), req, None).await,
        };
        let accepted = response.extensions().get::<MaxMessageBytes>().copied();
        match accepted {
            Some(MaxMessageBytes(max_message_bytes)) if response.status() == StatusCode::OK => {
                let open = SessionOpen { request: session, max_message_bytes, fulfil };
                let _ = self.sessions.send(open).await;
            }
            _ => {
                if let Err(e) = session.refuse(response).await {
                    tracing::debug!(peer = %self.info.peer, error = %e, "WebTransport refusal not delivered");
                }
            }
        }
    }

    /// What the TCP listeners' HTTP servers check: the header count, and the header
    /// fields HTTP/3 forbids (RFC 9114 §4.2); plus the replay rule for
    /// early data (RFC 8470 §5.2: 425 Too Early).
    fn precheck<B>(&self, req: &http::Request<B>) -> Option<ProxyError> {
        let refuse =
            |status, code, message: &str| Some(ProxyError::Rejected(Box::new(Rejection::new(status, code, message))));
        if req.headers().len() > self.shared.config.limits.max_headers {
            return refuse(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "too_many_headers", "too many header fields");
        }
        let connection_specific = [header::CONNECTION, header::TRANSFER_ENCODING, header::UPGRADE]
            .iter()
            .any(|name| req.headers().contains_key(name))
            || req.headers().contains_key("keep-alive")
            || req.headers().contains_key("proxy-connection")
            || req.headers().get(header::TE).is_some_and(|te| te != "trailers");
        if connection_specific {
            return Some(ProxyError::BadRequest("connection-specific header field in an HTTP/3 request"));
        }
        // As for HTTP/2 (RFC 9113 §8.2.1): an HTTP/1.1 hop would trim what this one keeps.
        if req.headers().values().any(|v| crate::http1::fields::padded(v.as_bytes())) {
            return Some(ProxyError::BadRequest("whitespace around a field value in an HTTP/3 request"));
        }
        // RFC 9114 §4.3.1: no user info in `:authority`; and no `Host` that
        // routing and the backend could read differently. (A `host` that is
        // not byte for byte the `:authority` never gets here: the h3 layer
        // resets its stream with H3_MESSAGE_ERROR.)
        let authority = req.uri().authority().map(|a| a.as_str().as_bytes());
        let host = req.headers().get(header::HOST).map(|h| h.as_bytes());
        if authority.into_iter().chain(host).any(|h| !crate::http1::fields::valid_host(h)) {
            return Some(ProxyError::BadRequest("invalid :authority or host in an HTTP/3 request"));
        }
        if self.early && !is_safe(req.method()) {
            return refuse(
                StatusCode::from_u16(425).expect("425 is a status"),
                "too_early",
                "retry after the handshake",
            );
        }
        None
    }
}

/// Waits for the gateway's answer to a request, sending the backend's
/// interim (1xx) heads on as they come (RFC 9110 §15.2).
async fn answer(
    mut handling: Pin<Box<impl Future<Output = Response<Body>>>>,
    responder: &mut tollgate_h3::Responder,
    peer: SocketAddr,
) -> Response<Body> {
    loop {
        let (response, interim) =
            std::future::poll_fn(|cx| match crate::interim::collect(|| handling.as_mut().poll(cx)) {
                (Poll::Ready(response), interim) => Poll::Ready((Some(response), interim)),
                (Poll::Pending, interim) if !interim.is_empty() => Poll::Ready((None, interim)),
                (Poll::Pending, _) => Poll::Pending,
            })
            .await;
        for head in interim {
            if let Err(e) = responder.send_interim(head.status, head.headers).await {
                tracing::debug!(%peer, error = %e, "HTTP/3 interim response not sent");
            }
        }
        if let Some(response) = response {
            return response;
        }
    }
}

/// Methods that may be served from replayable early data (RFC 9110 §9.2.1).
fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Waits (bounded by the caller) until the QUIC connections have closed.
pub async fn connections_closed() {
    while gauge::QUIC_CONNECTIONS.get() > 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
