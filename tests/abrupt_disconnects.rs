//! Clients that vanish at any point leave nothing behind.
//!
//! Hundreds of seeded clients each start something and then drop their
//! connection at a random moment, some with a FIN and some with a reset:
//! halfway through a request head, a request body (with or without
//! `Expect: 100-continue`), the wait for a backend connection or a response
//! head, a response (alone
//! or pipelined), a TLS handshake, an HTTP/2 connection with several streams
//! open, a WebSocket tunnel (HTTP/1.1 upgrade and RFC 8441 over HTTP/2, each
//! in clear and over TLS) or a message-mode session with its server push. Other cases have the backend die instead,
//! in the middle of a response or of a WebSocket session. A second set
//! abandons gRPC and gRPC-Web calls to a grpcio backend, which must see
//! every one of them cancelled. Afterwards the real binary must be back
//! where it started:
//!
//! - the admin status shows no open connection, request or WebSocket session;
//! - its file descriptors and threads are what they were before, apart from
//!   idle pooled backend connections the status lists;
//! - a second round of as many clients leaves its memory where the first did
//!   (within 2 MiB: what stays is pools and buffers kept for reuse, not a
//!   leak);
//! - config reloads (SIGHUP) during both rounds leave no descriptor of an old
//!   snapshot's pools behind;
//! - every backend response the clients abandoned has stopped being produced
//!   (the backend requests were cancelled, not left to run out);
//! - it never panicked, and still serves.
//!
//! `DISCONNECT_CASES=N DISCONNECT_SEED=S` explore beyond the CI defaults.

mod common;
#[path = "grpc_support/mod.rs"]
mod grpc_support;
mod ws_support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, StreamBody};
use hyper::Response;
use hyper::body::Frame;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tollgate_websocket::Message;

use common::transport::{admin_status, channel_body, count_body_bytes, trusting_client_config, write_cert};
use common::*;
use grpc_support::GrpcBackend;
use ws_support::{EchoBackend, connect_h1, extended_connect_enabled, frame, websocket_connect};

/// Counts a backend response body still being produced.
struct Producing(Arc<AtomicUsize>);

impl Producing {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(Arc::clone(count))
    }
}

impl Drop for Producing {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// An HTTP/1.1 backend: `/slow…` streams server-sent events for several
/// seconds (a 512-byte event every 2 ms, stopping as soon as nobody reads),
/// `/die` sends three events and drops the connection, `/hold` answers after
/// 30 s, `/upload` reads the whole body and answers its length, anything else `ok`.
fn start_backend(producing: &Arc<AtomicUsize>) -> Backend {
    let producing = Arc::clone(producing);
    Backend::start(move |req| {
        let producing = Arc::clone(&producing);
        async move {
            let path = req.uri().path().to_string();
            if path.starts_with("/slow") {
                let (tx, body) = channel_body(1);
                tokio::spawn(async move {
                    let _producing = Producing::new(&producing);
                    for i in 0..4_000u32 {
                        let event = format!("data: {i:0504}\n\n");
                        if tx.send(Bytes::from(event)).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                });
                return Response::builder().header("content-type", "text/event-stream").body(body).unwrap();
            }
            if path == "/die" {
                // Three events, then the connection dies without ending the body.
                let events = (0..4).map(|i| match i {
                    3 => Err::<_, Box<dyn std::error::Error + Send + Sync>>("backend died".into()),
                    _ => Ok(Frame::data(Bytes::from(format!("data: {i}\n\n")))),
                });
                let body = StreamBody::new(StreamExt::then(futures_util::stream::iter(events), |event| async move {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    event
                }));
                return Response::builder()
                    .header("content-type", "text/event-stream")
                    .body(BodyExt::boxed(body))
                    .unwrap();
            }
            if path == "/hold" {
                // Longer than the test waits for things to settle: the
                // gateway must give up on it when its client goes.
                tokio::time::sleep(Duration::from_secs(30)).await;
                return Response::new(full("held"));
            }
            if path == "/upload" {
                let length = count_body_bytes(req.into_body()).await.unwrap_or(0);
                return Response::new(full(length.to_string()));
            }
            Response::new(full("ok"))
        }
    })
}

/// The gateway under test: a cleartext listener (HTTP/1.1 and h2c), a TLS
/// listener, an admin port; routes `/ws`, `/reset`, `/lastwords` and
/// `/silent` (tunnels; the echo backend drops `/reset` after one message,
/// `/lastwords` after one reply, and never answers on `/silent`), `/msgdie` (message mode, replies from `/die`), `/msg` (message mode,
/// replies streamed from `/slow`), `/push` (message mode with an SSE push),
/// `/stuck` (to a backend whose connects hang for 30 s) and everything else
/// proxied.
struct Rig {
    tollgate: Tollgate,
    tls: SocketAddr,
    admin: SocketAddr,
    _certs: tempfile::TempDir,
}

impl Rig {
    fn start(http: SocketAddr, ws: SocketAddr, stuck: SocketAddr) -> Rig {
        let certs = tempfile::tempdir().unwrap();
        let cert = write_cert(certs.path(), "gw", "localhost", &["localhost"]);
        let plain: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let tls: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let config = format!(
            "[admin]\nbind = \"{admin}\"\n\n\
             [[listener]]\nname = \"plain\"\nbind = \"{plain}\"\n\n\
             [[listener]]\nname = \"tls\"\nbind = \"{tls}\"\ntls = {{ cert = \"{}\", key = \"{}\" }}\n\n\
             [[upstream]]\nname = \"http\"\ntargets = [\"{http}\"]\n\n\
             [[upstream]]\nname = \"ws\"\ntargets = [\"{ws}\"]\n\n\
             [[upstream]]\nname = \"stuck\"\ntargets = [\"{stuck}\"]\nconnect_timeout = \"30s\"\n\n\
             [[route]]\nname = \"stuck\"\nmatch = {{ path = \"/stuck\" }}\nupstream = \"stuck\"\n\n\
             [[route]]\nname = \"tunnel\"\nmatch = {{ path = \"/ws\" }}\nupstream = \"ws\"\nwebsocket = \"tunnel\"\n\n\
             [[route]]\nname = \"reset\"\nmatch = {{ path = \"/reset\" }}\nupstream = \"ws\"\nwebsocket = \"tunnel\"\n\n\
             [[route]]\nname = \"lastwords\"\nmatch = {{ path = \"/lastwords\" }}\nupstream = \"ws\"\nwebsocket = \"tunnel\"\n\n\
             [[route]]\nname = \"silent\"\nmatch = {{ path = \"/silent\" }}\nupstream = \"ws\"\nwebsocket = \"tunnel\"\n\n\
             [[route]]\nname = \"messages\"\nmatch = {{ path = \"/msg\" }}\nupstream = \"http\"\n\
             websocket = \"http\"\nwebsocket_path = \"/slow\"\nwebsocket_in_flight = 2\n\n\
             [[route]]\nname = \"messages-die\"\nmatch = {{ path = \"/msgdie\" }}\nupstream = \"http\"\n\
             websocket = \"http\"\nwebsocket_path = \"/die\"\n\n\
             [[route]]\nname = \"push\"\nmatch = {{ path = \"/push\" }}\nupstream = \"http\"\n\
             websocket = \"http\"\nwebsocket_path = \"/echo\"\nwebsocket_push_path = \"/slow-push\"\n\n\
             [[route]]\nname = \"rest\"\nmatch = {{ path_prefix = \"/\" }}\nupstream = \"http\"\n",
            cert.cert.display(),
            cert.key.display(),
        );
        Rig { tollgate: Tollgate::start(&config, plain), tls, admin, _certs: certs }
    }

    fn plain(&self) -> SocketAddr {
        self.tollgate.addr
    }
}

/// A backend address whose connects hang: its listen queue (backlog 0) is
/// full and it never accepts, so the kernel drops further SYNs. Keep both
/// values alive for as long as it should stay so.
async fn stuck_backend() -> (tokio::net::TcpListener, TcpStream) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let queued = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
    let next = tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(listener.local_addr().unwrap()));
    assert!(next.await.is_err(), "a connect to the full queue hangs");
    (listener, queued)
}

/// The gateway and every backend it is configured with, kept alive together.
struct Peers {
    rig: Rig,
    backend: Backend,
    /// Response bodies `backend` is still producing.
    producing: Arc<AtomicUsize>,
    ws_backend: EchoBackend,
    _stuck: (tokio::net::TcpListener, TcpStream),
}

impl Peers {
    async fn start() -> Peers {
        let producing = Arc::new(AtomicUsize::new(0));
        let backend = start_backend(&producing);
        let ws_backend = EchoBackend::start().await;
        let stuck = stuck_backend().await;
        let rig = Rig::start(backend.addr, ws_backend.addr, stuck.0.local_addr().unwrap());
        Peers { rig, backend, producing, ws_backend, _stuck: stuck }
    }
}

/// Open file descriptors and threads of the gateway process.
fn fds_and_threads(tollgate: &Tollgate) -> (usize, usize) {
    let pid = tollgate.pid();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let threads =
        status.lines().find_map(|l| l.strip_prefix("Threads:")).and_then(|v| v.trim().parse().ok()).unwrap_or(0);
    (fds, threads)
}

/// What the status page says is still open, and the idle pooled backend
/// connections (which rightly hold descriptors). A count the page lacks
/// reads as `u64::MAX`, never as zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Open {
    connections: u64,
    sessions: u64,
    requests: u64,
    idle_pooled: usize,
}

impl Open {
    fn of(status: &serde_json::Value) -> Open {
        let count = |v: &serde_json::Value| v.as_u64().unwrap_or(u64::MAX);
        let idle: u64 = status["upstreams"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|u| u["targets"].as_array().into_iter().flatten())
            .map(|t| t["idle_connections"].as_u64().unwrap_or(0))
            .sum();
        Open {
            connections: count(&status["open"]["http_connections"]),
            sessions: count(&status["open"]["websocket_sessions"]),
            requests: count(&status["requests"]["in_flight"]),
            idle_pooled: idle as usize,
        }
    }

    fn nothing(&self) -> bool {
        self.connections == 0 && self.sessions == 0 && self.requests == 0
    }
}

/// The admin status (fetched with curl, so off the runtime's threads).
async fn status_of(admin: SocketAddr) -> serde_json::Value {
    tokio::task::spawn_blocking(move || admin_status(admin)).await.unwrap()
}

/// Polls `done` until it holds; fails with `what` after `within`.
async fn eventually<F, Fut>(within: Duration, what: impl std::fmt::Display, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !done().await {
        assert!(Instant::now() < deadline, "{what}, after {within:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// How a client leaves: a FIN (a plain close) or a reset (zero linger).
fn leave(tcp: &TcpStream, reset: bool) {
    if reset {
        let _ = tcp.set_zero_linger();
    }
}

async fn connect(addr: SocketAddr, reset: bool) -> TcpStream {
    let tcp = TcpStream::connect(addr).await.unwrap();
    leave(&tcp, reset);
    tcp
}

/// Reads up to `limit` bytes (or until the gateway stops sending for 300 ms).
async fn read_some<S: AsyncRead + Unpin>(io: &mut S, limit: usize) {
    let mut buf = vec![0u8; 4096];
    let mut got = 0;
    while got < limit {
        match tokio::time::timeout(Duration::from_millis(300), io.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got += n,
            _ => return,
        }
    }
}

async fn tls_connect(addr: SocketAddr, alpn: &[u8], reset: bool) -> tokio_rustls::client::TlsStream<TcpStream> {
    let config = trusting_client_config(&[alpn]);
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    connector.connect(name, connect(addr, reset).await).await.unwrap()
}

/// An HTTP/2 client whose connection task the case can kill (dropping the socket).
async fn h2_client<T>(io: T) -> (h2::client::SendRequest<Bytes>, tokio::task::JoinHandle<()>)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (client, connection) = h2::client::handshake(io).await.unwrap();
    let task = tokio::spawn(async move {
        let _ = connection.await;
    });
    (client.ready().await.unwrap(), task)
}

/// Several `/slow` streams on one HTTP/2 connection, some data read from
/// each, then the connection dropped.
async fn h2_streams<T>(io: T, authority: &str, scheme: &str, rng: &mut fastrand::Rng)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut client, task) = h2_client(io).await;
    let mut bodies = Vec::new();
    for i in 0..rng.usize(1..6) {
        let request = http::Request::get(format!("{scheme}://{authority}/slow/{i}")).body(()).unwrap();
        let Ok((response, _)) = client.send_request(request, true) else { break };
        bodies.push(response);
    }
    let want = rng.usize(0..8192);
    for response in bodies {
        let Ok(Ok(response)) = tokio::time::timeout(Duration::from_secs(2), response).await else { continue };
        let mut body = response.into_body();
        let mut got = 0;
        while got < want {
            match tokio::time::timeout(Duration::from_millis(300), body.data()).await {
                Ok(Some(Ok(data))) => {
                    got += data.len();
                    let _ = body.flow_control().release_capacity(data.len());
                }
                _ => break,
            }
        }
    }
    task.abort();
}

/// An upload on HTTP/2 cut off part way: the stream's body never ends.
async fn h2_upload(addr: SocketAddr, reset: bool, rng: &mut fastrand::Rng) {
    let (mut client, task) = h2_client(connect(addr, reset).await).await;
    let request =
        http::Request::post(format!("http://{addr}/upload")).header("content-length", "1000000").body(()).unwrap();
    if let Ok((_, mut send)) = client.send_request(request, false) {
        let _ = send.send_data(Bytes::from(vec![b'u'; rng.usize(0..16_000)]), false);
        tokio::time::sleep(Duration::from_millis(rng.u64(0..100))).await;
    }
    task.abort();
}

/// An RFC 8441 WebSocket over HTTP/2 on `io` (h2c, or TLS with ALPN h2):
/// one masked frame sent, a little read back, then gone.
async fn h2_websocket<T>(io: T, uri: String, rng: &mut fastrand::Rng)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (client, task) = h2_client(io).await;
    let mut client = extended_connect_enabled(client).await;
    let request = websocket_connect(uri);
    if let Ok((response, mut send)) = client.send_request(request, false)
        && let Ok(Ok(response)) = tokio::time::timeout(Duration::from_secs(2), response).await
    {
        let _ = send.send_data(Bytes::from(frame(true, 1, b"hello over h2", true)), false);
        let mut body = response.into_body();
        if rng.bool() {
            let _ = tokio::time::timeout(Duration::from_millis(300), body.data()).await;
        }
    }
    task.abort();
}

/// One client that starts something and vanishes; which, and when, comes from `rng`.
async fn vanishing_client(rig: &RigAddrs, rng: &mut fastrand::Rng) {
    let reset = rng.bool();
    let plain = rig.plain;
    match rng.usize(0..20) {
        // Part of a request head.
        0 => {
            let mut tcp = connect(plain, reset).await;
            let head = b"GET /slow HTTP/1.1\r\nHost: gw\r\nX-Long: aaaaaaaaaaaaaaaa\r\n\r\n";
            let _ = tcp.write_all(&head[..rng.usize(1..head.len() - 1)]).await;
            tokio::time::sleep(Duration::from_millis(rng.u64(0..50))).await;
        }
        // Part of a request body.
        1 => {
            let mut tcp = connect(plain, reset).await;
            let head = "POST /upload HTTP/1.1\r\nHost: gw\r\nContent-Length: 1000000\r\n\r\n";
            let _ = tcp.write_all(head.as_bytes()).await;
            let _ = tcp.write_all(&vec![b'b'; rng.usize(0..200_000)]).await;
            tokio::time::sleep(Duration::from_millis(rng.u64(0..100))).await;
        }
        // Part of a response (HTTP/1.1).
        2 => {
            let mut tcp = connect(plain, reset).await;
            let _ = tcp.write_all(b"GET /slow HTTP/1.1\r\nHost: gw\r\n\r\n").await;
            read_some(&mut tcp, rng.usize(0..16_384)).await;
        }
        // HTTP/2 (h2c), several streams.
        3 => h2_streams(connect(plain, reset).await, &plain.to_string(), "http", rng).await,
        4 => h2_upload(plain, reset, rng).await,
        // TLS: HTTP/1.1 and HTTP/2 responses cut off.
        5 => {
            let mut tls = tls_connect(rig.tls, b"http/1.1", reset).await;
            let _ = tls.write_all(b"GET /slow HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
            read_some(&mut tls, rng.usize(0..16_384)).await;
        }
        6 => h2_streams(tls_connect(rig.tls, b"h2", reset).await, "localhost", "https", rng).await,
        // A TLS handshake abandoned: only part of the ClientHello's bytes, or none.
        7 => {
            let mut tcp = connect(rig.tls, reset).await;
            let hello = [0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03];
            let _ = tcp.write_all(&hello[..rng.usize(0..hello.len())]).await;
            tokio::time::sleep(Duration::from_millis(rng.u64(0..50))).await;
        }
        // WebSocket tunnel over an HTTP/1.1 upgrade: a message, then gone,
        // sometimes in the middle of a frame.
        8 => {
            let (_, mut ws) = connect_h1(plain, "/ws", &[]).await;
            leave(ws.get_ref(), reset);
            let _ = ws.send(Message::text("hello")).await;
            if rng.bool() {
                let _ = tokio::time::timeout(Duration::from_millis(300), ws.next()).await;
            } else {
                let partial = frame(true, 2, &[7u8; 300], true);
                let _ = ws.get_mut().write_all(&partial[..rng.usize(1..partial.len())]).await;
            }
        }
        // WebSocket tunnel over HTTP/2 (RFC 8441), in clear or over TLS.
        9 => {
            if rng.bool() {
                h2_websocket(connect(plain, reset).await, format!("http://{plain}/ws"), rng).await;
            } else {
                let tls = tls_connect(rig.tls, b"h2", reset).await;
                h2_websocket(tls, "https://localhost/ws".to_string(), rng).await;
            }
        }
        // Message mode: a request whose reply streams, cut off after a few messages.
        10 => {
            let (_, mut ws) = connect_h1(plain, "/msg", &[]).await;
            leave(ws.get_ref(), reset);
            let _ = ws.send(Message::text("start")).await;
            for _ in 0..rng.usize(0..4) {
                let _ = tokio::time::timeout(Duration::from_millis(300), ws.next()).await;
            }
        }
        // The backend dies in the middle of a response: the client reads what comes.
        12 => {
            if rng.bool() {
                let mut tcp = connect(plain, reset).await;
                let _ = tcp.write_all(b"GET /die HTTP/1.1\r\nHost: gw\r\n\r\n").await;
                read_some(&mut tcp, usize::MAX).await;
            } else {
                let (mut client, task) = h2_client(connect(plain, reset).await).await;
                let request = http::Request::get(format!("http://{plain}/die")).body(()).unwrap();
                if let Ok((response, _)) = client.send_request(request, true)
                    && let Ok(Ok(response)) = tokio::time::timeout(Duration::from_secs(2), response).await
                {
                    let mut body = response.into_body();
                    while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_millis(500), body.data()).await {}
                }
                task.abort();
            }
        }
        // The WebSocket backend drops its connection after one message.
        13 => {
            if rng.bool() {
                h2_websocket(connect(plain, reset).await, format!("http://{plain}/reset"), rng).await;
            } else {
                let (_, mut ws) = connect_h1(plain, "/reset", &[]).await;
                leave(ws.get_ref(), reset);
                let _ = ws.send(Message::text("last")).await;
                let _ = tokio::time::timeout(Duration::from_millis(500), ws.next()).await;
            }
        }
        // Waiting for a response head that is slow to come.
        14 => {
            let mut tcp = connect(plain, reset).await;
            let _ = tcp.write_all(b"GET /hold HTTP/1.1\r\nHost: gw\r\n\r\n").await;
            tokio::time::sleep(Duration::from_millis(rng.u64(0..300))).await;
        }
        // A chunked upload behind `Expect: 100-continue`, cut off.
        15 => {
            let mut tcp = connect(plain, reset).await;
            let head =
                "POST /upload HTTP/1.1\r\nHost: gw\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n";
            let _ = tcp.write_all(head.as_bytes()).await;
            if rng.bool() {
                read_some(&mut tcp, 25).await;
                for _ in 0..rng.usize(0..20) {
                    let _ = tcp.write_all(b"400\r\n").await;
                    let _ = tcp.write_all(&[b'c'; 1024]).await;
                    let _ = tcp.write_all(b"\r\n").await;
                }
                let _ = tcp.write_all(b"40").await;
            }
        }
        // Pipelined requests, the client gone in the middle of the first answer.
        16 => {
            let mut tcp = connect(plain, reset).await;
            let _ = tcp
                .write_all(b"GET /slow/1 HTTP/1.1\r\nHost: gw\r\n\r\nGET /slow/2 HTTP/1.1\r\nHost: gw\r\n\r\n")
                .await;
            read_some(&mut tcp, rng.usize(0..8192)).await;
        }
        // A WebSocket tunnel over TLS (an HTTP/1.1 upgrade), gone after a frame.
        17 => {
            let mut tls = tls_connect(rig.tls, b"http/1.1", reset).await;
            let upgrade = format!(
                "GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Key: {}\r\nSec-WebSocket-Version: 13\r\n\r\n",
                ws_support::KEY
            );
            let _ = tls.write_all(upgrade.as_bytes()).await;
            read_some(&mut tls, 100).await;
            let _ = tls.write_all(&frame(true, 1, b"over tls", true)).await;
            if rng.bool() {
                read_some(&mut tls, 10).await;
            }
        }
        // Message mode whose backend dies in the middle of a streamed reply.
        18 => {
            let (_, mut ws) = connect_h1(plain, "/msgdie", &[]).await;
            leave(ws.get_ref(), reset);
            let _ = ws.send(Message::text("go")).await;
            while let Ok(Some(Ok(message))) = tokio::time::timeout(Duration::from_millis(500), ws.next()).await {
                if message.is_close() {
                    break;
                }
            }
        }
        // Waiting while the gateway connects to a backend that does not answer.
        19 => {
            let mut tcp = connect(plain, reset).await;
            let _ = tcp.write_all(b"GET /stuck HTTP/1.1\r\nHost: gw\r\n\r\n").await;
            tokio::time::sleep(Duration::from_millis(rng.u64(0..300))).await;
        }
        // Message mode with a server push open; sometimes over HTTP/2.
        _ => {
            if rng.bool() {
                h2_websocket(connect(plain, reset).await, format!("http://{plain}/push"), rng).await;
            } else {
                let (_, mut ws) = connect_h1(plain, "/push", &[]).await;
                leave(ws.get_ref(), reset);
                let _ = tokio::time::timeout(Duration::from_millis(rng.u64(1..300)), ws.next()).await;
            }
        }
    }
}

/// The addresses a client needs (the rig itself stays on the test thread).
#[derive(Clone, Copy)]
struct RigAddrs {
    plain: SocketAddr,
    tls: SocketAddr,
}

/// Every kind of client once, to its end: the pools, the WebSocket threads
/// and the TLS state exist before the baseline is taken.
async fn warm_up(rig: RigAddrs) {
    let mut tcp = TcpStream::connect(rig.plain).await.unwrap();
    tcp.write_all(b"GET /echo HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    tcp.read_to_end(&mut answer).await.unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&answer));
    let mut tls = tls_connect(rig.tls, b"http/1.1", false).await;
    tls.write_all(b"GET /echo HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer).await;
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&answer));
    let (_, mut ws) = connect_h1(rig.plain, "/ws", &[]).await;
    ws.send(Message::text("warm")).await.unwrap();
    assert_eq!(ws_support::next_data(&mut ws).await, Message::text("warm"));
    ws.close(None).await.unwrap();
    while ws.next().await.is_some() {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_vanishing_at_any_point_leave_no_connection_task_descriptor_or_backend_request_behind() {
    let peers = Peers::start().await;
    let (rig, backend, producing) = (&peers.rig, &peers.backend, &peers.producing);
    let addrs = RigAddrs { plain: rig.plain(), tls: rig.tls };
    warm_up(addrs).await;
    // The counts count: a request held at the backend shows as one
    // connection and one request in flight.
    let mut held = TcpStream::connect(addrs.plain).await.unwrap();
    held.write_all(b"GET /hold HTTP/1.1\r\nHost: gw\r\n\r\n").await.unwrap();
    let counted = || async {
        let open = Open::of(&status_of(rig.admin).await);
        (open.connections, open.requests) == (1, 1)
    };
    eventually(Duration::from_secs(5), "a held request is not counted as one connection and one request", counted)
        .await;
    drop(held);
    let busy = || producing.load(Ordering::SeqCst);
    let settled = settle(&rig.tollgate, rig.admin, busy, None).await;

    // Two rounds of different clients: memory after the second shows whether
    // what the first left behind was a plateau (pools, buffers kept for
    // reuse) or a leak that grows with every client.
    let cases = case_count(600);
    let mut rss = Vec::new();
    for round in 0..2 {
        let first = round * cases;
        // Config reloads (SIGHUP) amid the clients: each old snapshot, its
        // pools among it, must go once its last request is done.
        let pid = rig.tollgate.pid();
        let reloads = tokio::spawn(async move {
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_millis(150)).await;
                let _ = std::process::Command::new("kill").arg("-HUP").arg(pid.to_string()).status();
            }
        });
        run_cases(first..first + cases, 24, move |mut rng| async move { vanishing_client(&addrs, &mut rng).await })
            .await;
        reloads.await.unwrap();
        settle(&rig.tollgate, rig.admin, busy, Some(settled)).await;
        rss.push(rig.tollgate.rss_kib());
    }
    eprintln!("RSS after each round of {cases} clients: {rss:?} KiB");
    assert!(backend.requests().len() >= cases as usize, "the cases reached the backend");
    assert!(rss[1] <= rss[0] + 2048, "memory grew by {} KiB with {cases} more clients", rss[1] - rss[0]);
    let log = rig.tollgate.log();
    assert!(!log.contains("panicked"), "tollgate panicked:\n{log}");
    assert_eq!(log.matches("config reloaded").count(), 10, "every SIGHUP reloaded");
    let (status, _, body) = curl_full(&[&rig.tollgate.url("/echo")]);
    assert_eq!((status, body.as_slice()), (200, &b"ok"[..]), "still serves");
}

/// `DISCONNECT_CASES`, or `default`.
fn case_count(default: u64) -> u64 {
    std::env::var("DISCONNECT_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Runs the clients numbered `cases`, `at_once` at a time, each with its own
/// generator seeded from `DISCONNECT_SEED` and its number; a client that takes over
/// 10 s fails the test as a hang.
async fn run_cases<F, Fut>(cases: std::ops::Range<u64>, at_once: usize, client: F)
where
    F: Fn(fastrand::Rng) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let seed: u64 = std::env::var("DISCONNECT_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(7);
    let mut batch = tokio::task::JoinSet::new();
    for case in cases {
        let running = client(fastrand::Rng::with_seed(seed.wrapping_mul(1_000_003).wrapping_add(case)));
        batch.spawn(async move {
            tokio::time::timeout(Duration::from_secs(10), running)
                .await
                .unwrap_or_else(|_| panic!("case {case} (seed {seed}) hung"));
        });
        if batch.len() >= at_once {
            batch.join_next().await.unwrap().unwrap();
        }
    }
    while let Some(done) = batch.join_next().await {
        done.unwrap();
    }
}

/// Waits (up to 10 s) until nothing is open and `busy()` (backend work the
/// clients left) is zero; with a `baseline`, also until descriptors (less
/// idle pooled ones) and threads are back to it. Returns the descriptors and threads.
async fn settle(
    tollgate: &Tollgate,
    admin: SocketAddr,
    busy: impl Fn() -> usize,
    baseline: Option<(usize, usize)>,
) -> (usize, usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let open = Open::of(&status_of(admin).await);
        let (fds, threads) = fds_and_threads(tollgate);
        let backend_busy = busy();
        let now = (fds - open.idle_pooled, threads);
        if open.nothing() && backend_busy == 0 && baseline.is_none_or(|b| now == b) {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "still open after 10 s: {open:?}, {backend_busy} backend requests at work; descriptors less \
             idle pooled ones and threads {now:?}, before {baseline:?}\n{}",
            tollgate.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_client_whose_last_frame_and_fin_arrive_together_is_seen_leaving() {
    let peers = Peers::start().await;
    let (rig, ws_backend) = (&peers.rig, &peers.ws_backend);
    for round in 0..20 {
        let (_, mut ws) = connect_h1(rig.plain(), "/silent", &[]).await;
        ws.send(Message::text("hello")).await.unwrap();
        let arrived = || async { count_seen(ws_backend, "hello") > round };
        eventually(
            Duration::from_secs(5),
            format!("round {round}: the first message never reached the backend"),
            arrived,
        )
        .await;
        if round == 0 {
            assert_eq!(Open::of(&status_of(rig.admin).await).sessions, 1, "the session is counted");
        }
        // The tunnel is idle (its thread asleep) when the last frame and the
        // FIN come, and nothing from the backend will wake it again.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let tcp = ws.get_mut();
        tcp.write_all(&frame(true, 1, b"bye", true)).await.unwrap();
        tcp.shutdown().await.unwrap();
        let gone = || async { Open::of(&status_of(rig.admin).await).sessions == 0 };
        eventually(Duration::from_secs(5), format!("round {round}: the session outlived its client"), gone).await;
        drop(ws);
    }
    let all = || async { count_seen(ws_backend, "bye") == 20 };
    eventually(Duration::from_secs(5), "not every last frame reached the backend", all).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_backend_whose_last_frame_and_fin_arrive_together_is_seen_leaving() {
    let peers = Peers::start().await;
    for round in 0..20 {
        let (_, mut ws) = connect_h1(peers.rig.plain(), "/lastwords", &[]).await;
        ws.send(Message::text("hi")).await.unwrap();
        // The backend's reply and its FIN reach an idle tunnel together; the
        // client must get the reply, then a close saying the backend went.
        let reply = tokio::time::timeout(Duration::from_secs(5), ws_support::next_data(&mut ws)).await;
        let reply = reply.unwrap_or_else(|_| panic!("round {round}: no reply"));
        assert_eq!(reply, Message::text("last words"), "round {round}");
        let close = tokio::time::timeout(Duration::from_secs(5), ws_support::next_close(&mut ws)).await;
        let close = close.unwrap_or_else(|_| panic!("round {round}: no close 5 s after the backend went"));
        assert_eq!(close.map(|c| u16::from(c.code)), Some(1011), "round {round}");
    }
}

/// Text messages `text` the echo backend has received.
fn count_seen(backend: &EchoBackend, text: &str) -> usize {
    backend.seen.lock().unwrap().messages.iter().filter(|m| **m == Message::text(text)).count()
}

/// A `test.Echo/Slow` call (the grpcio backend works on it for 10 s unless
/// cancelled), abandoned after a while: over h2c as gRPC (the connection
/// dropped, or the stream reset with CANCEL), or as gRPC-Web over HTTP/1.1
/// or HTTP/2.
async fn vanishing_grpc_client(addr: SocketAddr, rng: &mut fastrand::Rng) {
    let reset = rng.bool();
    let wait = Duration::from_millis(rng.u64(50..400));
    let message = grpc_support::frame(b"slow");
    if rng.usize(0..3) == 0 {
        let mut tcp = connect(addr, reset).await;
        let head = format!(
            "POST /test.Echo/Slow HTTP/1.1\r\nHost: gw\r\nContent-Type: application/grpc-web+proto\r\n\
             Content-Length: {}\r\n\r\n",
            message.len()
        );
        let _ = tcp.write_all(head.as_bytes()).await;
        let _ = tcp.write_all(&message).await;
        tokio::time::sleep(wait).await;
        return;
    }
    let web = rng.bool();
    let (mut client, task) = h2_client(connect(addr, reset).await).await;
    let request = http::Request::post(format!("http://{addr}/test.Echo/Slow"))
        .header("content-type", if web { "application/grpc-web+proto" } else { "application/grpc" })
        .header("te", "trailers")
        .body(())
        .unwrap();
    let Ok((_response, mut send)) = client.send_request(request, false) else { return };
    let _ = send.send_data(Bytes::from(message), true);
    tokio::time::sleep(wait).await;
    if rng.bool() {
        // Only the stream goes; the connection stays a moment, then closes cleanly.
        send.send_reset(h2::Reason::CANCEL);
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(client);
        let _ = tokio::time::timeout(Duration::from_secs(1), task).await;
    } else {
        task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_and_grpc_web_clients_vanishing_mid_call_cancel_every_backend_call_and_leave_nothing_behind() {
    let backend = tokio::task::spawn_blocking(|| GrpcBackend::start("b1")).await.unwrap();
    let plain: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = format!(
        "[admin]\nbind = \"{admin}\"\n\n[[listener]]\nname = \"plain\"\nbind = \"{plain}\"\n\n\
         [[upstream]]\nname = \"g\"\nprotocol = \"grpc\"\ntargets = [\"{}\"]\ngrpc_connections_per_target = 1\n\n\
         [[route]]\nname = \"grpc\"\nmatch = {{ path_prefix = \"/test.Echo/\" }}\nupstream = \"g\"\n",
        backend.addr
    );
    let tollgate = Tollgate::start(&config, plain);
    // One whole call first: the backend connection is up before the baseline.
    let (status, body) = {
        let (mut client, task) = h2_client(TcpStream::connect(plain).await.unwrap()).await;
        let request = http::Request::post(format!("http://{plain}/test.Echo/Unary"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .unwrap();
        let (response, mut send) = client.send_request(request, false).unwrap();
        send.send_data(Bytes::from(grpc_support::frame(b"hi")), true).unwrap();
        let response = response.await.unwrap();
        let status = response.status();
        let mut stream = response.into_body();
        let mut body = Vec::new();
        while let Some(data) = stream.data().await {
            body.extend_from_slice(&data.unwrap());
        }
        task.abort();
        (status, body)
    };
    assert_eq!((status, &body[5..]), (http::StatusCode::OK, &b"echo:hi"[..]));
    let calls_at_work = || {
        let [started, cancelled] = backend.counts(["START Slow", "CANCELLED Slow"]);
        started - cancelled
    };
    let settled = settle(&tollgate, admin, calls_at_work, None).await;

    // Fewer at once than the backend's 16 worker threads, so every call starts.
    let cases = case_count(480) / 10;
    run_cases(0..cases, 8, move |mut rng| async move { vanishing_grpc_client(plain, &mut rng).await }).await;
    settle(&tollgate, admin, calls_at_work, Some(settled)).await;
    assert!(backend.counts(["START Slow"])[0] as u64 >= cases / 2, "the calls reached the backend");
    assert!(!tollgate.log().contains("panicked"), "tollgate panicked:\n{}", tollgate.log());
}
