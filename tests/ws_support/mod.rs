//! WebSocket test peers written in Rust: an HTTP/1.1 client handshake over
//! a raw TCP socket, an RFC 8441 client over the `h2` crate, an echo backend
//! and a raw frame writer for conformance cases (frames tungstenite would
//! refuse to send). Framing after the handshake is the bridge's own
//! tungstenite streams, so peers speak exactly RFC 6455.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tollgate_websocket::close::{self, CloseFrame};
use tollgate_websocket::{Limits, Message, WebSocketStream};

/// The RFC 6455 §1.3 sample key and its accept value.
pub const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
pub const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// Reads an HTTP head (up to the blank line) byte by byte, so nothing after it is consumed.
pub async fn read_head(tcp: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if tcp.read(&mut byte).await.unwrap_or(0) == 0 {
            break;
        }
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// Status code of a response head.
pub fn status_of(head: &str) -> u16 {
    head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// A header's value in a head (case-insensitive name).
pub fn header_in(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
    })
}

/// Sends an HTTP/1.1 upgrade; returns the response head and the socket.
pub async fn upgrade_raw(addr: SocketAddr, path: &str, extra: &[(&str, &str)]) -> (String, TcpStream) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n"
    );
    for (n, v) in extra {
        request.push_str(&format!("{n}: {v}\r\n"));
    }
    request.push_str("\r\n");
    tcp.write_all(request.as_bytes()).await.unwrap();
    let head = read_head(&mut tcp).await;
    (head, tcp)
}

/// An HTTP/1.1 WebSocket client through the gateway; panics unless it switched.
pub async fn connect_h1(addr: SocketAddr, path: &str, extra: &[(&str, &str)]) -> (String, WebSocketStream<TcpStream>) {
    let (head, tcp) = upgrade_raw(addr, path, extra).await;
    assert_eq!(status_of(&head), 101, "{head}");
    assert_eq!(header_in(&head, "sec-websocket-accept").as_deref(), Some(ACCEPT), "{head}");
    (head, tollgate_websocket::client_stream(tcp, &Limits::default()).await)
}

/// Reads until a close frame (skipping data and pings); `None` if the stream ends without one.
pub async fn next_close<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>) -> Option<CloseFrame> {
    while let Some(item) =
        tokio::time::timeout(std::time::Duration::from_secs(10), ws.next()).await.expect("close in time")
    {
        match item {
            Ok(Message::Close(frame)) => {
                // Send tungstenite's queued answer, completing the close handshake.
                let _ = ws.flush().await;
                return frame;
            }
            Ok(_) => continue,
            Err(_) => return None,
        }
    }
    None
}

/// The next data message (pings and pongs skipped).
pub async fn next_data<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>) -> Message {
    loop {
        let item = tokio::time::timeout(std::time::Duration::from_secs(10), ws.next()).await.expect("message in time");
        match item.expect("stream open").expect("valid message") {
            Message::Ping(_) | Message::Pong(_) => continue,
            m => return m,
        }
    }
}

/// One raw frame; `mask` uses a fixed non-zero key (RFC 6455 §5.3).
pub fn frame(fin: bool, opcode: u8, payload: &[u8], mask: bool) -> Vec<u8> {
    let mut out = vec![(if fin { 0x80 } else { 0 }) | opcode];
    let m = if mask { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(m | n as u8),
        n if n < 65536 => {
            out.push(m | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(m | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if mask {
        let key = [0x12, 0x34, 0x56, 0x78];
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// Reads one unmasked frame from a server: (fin, opcode, payload).
pub async fn read_frame(tcp: &mut TcpStream) -> Option<(bool, u8, Vec<u8>)> {
    let mut h = [0u8; 2];
    tokio::time::timeout(std::time::Duration::from_secs(10), tcp.read_exact(&mut h)).await.ok()?.ok()?;
    let len = match h[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            tcp.read_exact(&mut b).await.ok()?;
            u16::from_be_bytes(b) as usize
        }
        127 => {
            let mut b = [0u8; 8];
            tcp.read_exact(&mut b).await.ok()?;
            u64::from_be_bytes(b) as usize
        }
        n => n as usize,
    };
    let mut payload = vec![0u8; len];
    tcp.read_exact(&mut payload).await.ok()?;
    Some((h[0] & 0x80 != 0, h[0] & 0x0f, payload))
}

/// Reads raw frames until a close; returns its code (1005 when empty).
pub async fn read_close_code(tcp: &mut TcpStream) -> Option<u16> {
    loop {
        let (_, opcode, payload) = read_frame(tcp).await?;
        if opcode == 0x8 {
            return Some(if payload.len() >= 2 { u16::from_be_bytes([payload[0], payload[1]]) } else { 1005 });
        }
    }
}

/// What the echo backend saw.
#[derive(Debug, Default)]
pub struct Seen {
    /// Request heads of every handshake.
    pub heads: Vec<String>,
    /// Data messages received, in order.
    pub messages: Vec<Message>,
    /// Close frames received (code, reason).
    pub closes: Vec<(u16, String)>,
    /// Ping payloads received.
    pub pings: Vec<Bytes>,
}

/// A WebSocket backend: echoes data messages; picks `chat` when offered;
/// on path `/close4002` closes with 4002 after the first message; on
/// `/reset` drops the TCP connection after the first message; on
/// `/lastwords` answers the first message with "last words" and drops the
/// connection at once, with no close frame; on `/silent` never answers
/// anything but keeps reading.
pub struct EchoBackend {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Seen>>,
}

impl EchoBackend {
    pub async fn start() -> EchoBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let record = Arc::clone(&seen);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(serve_echo(tcp, Arc::clone(&record)));
            }
        });
        EchoBackend { addr, seen }
    }
}

async fn serve_echo(mut tcp: TcpStream, seen: Arc<Mutex<Seen>>) {
    let head = read_head(&mut tcp).await;
    let key = header_in(&head, "sec-websocket-key").unwrap_or_default();
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
    let offered = header_in(&head, "sec-websocket-protocol").unwrap_or_default();
    seen.lock().unwrap().heads.push(head);
    let mut response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\nSet-Cookie: session=echo\r\n",
        tollgate_websocket::handshake::accept_key(key.as_bytes()).to_str().unwrap()
    );
    if offered.split(',').any(|p| p.trim() == "chat") {
        response.push_str("Sec-WebSocket-Protocol: chat\r\n");
    }
    response.push_str("\r\n");
    if tcp.write_all(response.as_bytes()).await.is_err() {
        return;
    }
    let limits = Limits { max_message_bytes: 16 << 20, max_frame_bytes: 16 << 20 };
    let mut ws = tollgate_websocket::server_stream(tcp, &limits).await;
    while let Some(Ok(message)) = ws.next().await {
        match message {
            Message::Close(frame) => {
                let f = frame.map(|f| (u16::from(f.code), f.reason.to_string())).unwrap_or((1005, String::new()));
                seen.lock().unwrap().closes.push(f);
                let _ = ws.flush().await;
                break;
            }
            Message::Ping(p) => seen.lock().unwrap().pings.push(p),
            Message::Text(_) | Message::Binary(_) => {
                seen.lock().unwrap().messages.push(message.clone());
                match path.as_str() {
                    "/close4002" => {
                        let _ = ws.send(Message::Close(Some(close::frame(4002u16, "backend done")))).await;
                    }
                    "/reset" => return,
                    // Bytes and the FIN together: a last frame, then the socket closed.
                    "/lastwords" => {
                        let _ = ws.send(Message::text("last words")).await;
                        return;
                    }
                    "/silent" => {}
                    _ => {
                        if ws.send(message).await.is_err() {
                            return;
                        }
                    }
                }
            }
            _ => {}
        }
    }
}

/// An HTTP/2 stream as a byte stream, so tungstenite can frame it (RFC 8441 §5:
/// after the 200, the stream's DATA frames carry the WebSocket bytes).
pub struct H2Io {
    send: h2::SendStream<Bytes>,
    recv: h2::RecvStream,
    pending: Bytes,
}

impl AsyncRead for H2Io {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        while self.pending.is_empty() {
            match ready!(self.recv.poll_data(cx)) {
                None => return Poll::Ready(Ok(())),
                Some(Err(e)) => return Poll::Ready(Err(std::io::Error::other(e))),
                Some(Ok(data)) => {
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    self.pending = data;
                }
            }
        }
        let n = buf.remaining().min(self.pending.len());
        buf.put_slice(&self.pending[..n]);
        self.pending.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for H2Io {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        self.send.reserve_capacity(data.len());
        let n = match ready!(self.send.poll_capacity(cx)) {
            None => return Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into())),
            Some(Err(e)) => return Poll::Ready(Err(std::io::Error::other(e))),
            Some(Ok(n)) => n.min(data.len()),
        };
        self.send.send_data(Bytes::copy_from_slice(&data[..n]), false).map_err(std::io::Error::other)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let _ = self.send.send_data(Bytes::new(), true);
        Poll::Ready(Ok(()))
    }
}

/// Opens an RFC 8441 extended CONNECT over h2c (prior knowledge) or an
/// already-made TLS stream; returns the status, response headers and, on
/// 200, the framed stream.
pub async fn connect_h2<T>(
    io: T,
    authority: &str,
    scheme: &str,
    path: &str,
    extra: &[(&str, &str)],
) -> (u16, http::HeaderMap, Option<WebSocketStream<H2Io>>)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut client = extended_connect_client(io).await;
    let mut request = websocket_connect(format!("{scheme}://{authority}{path}"));
    for (n, v) in extra {
        let name = http::HeaderName::from_bytes(n.as_bytes()).unwrap();
        request.headers_mut().append(name, http::HeaderValue::from_str(v).unwrap());
    }
    let (response, send) = client.send_request(request, false).unwrap();
    let response = response.await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    if status != 200 {
        return (status, headers, None);
    }
    let io = H2Io { send, recv: response.into_body(), pending: Bytes::new() };
    (status, headers, Some(tollgate_websocket::client_stream(io, &Limits::default()).await))
}

/// The stream of an RFC 8441 extended CONNECT over h2c as raw bytes (for
/// frames no WebSocket library would send); `None` unless it got a 200.
pub async fn connect_h2c_raw(addr: SocketAddr, path: &str) -> Option<H2Io> {
    let mut client = extended_connect_client(TcpStream::connect(addr).await.unwrap()).await;
    let request = websocket_connect(format!("http://{addr}{path}"));
    let (response, send) = client.send_request(request, false).unwrap();
    let response = response.await.ok()?;
    (response.status() == 200).then(|| H2Io { send, recv: response.into_body(), pending: Bytes::new() })
}

/// An RFC 8441 extended CONNECT for a WebSocket at `uri`, no extra fields.
pub fn websocket_connect(uri: String) -> http::Request<()> {
    http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(uri)
        .extension(h2::ext::Protocol::from("websocket"))
        .header("sec-websocket-version", "13")
        .body(())
        .unwrap()
}

/// `client` once the server's SETTINGS enabled extended CONNECT (RFC 8441 §3).
pub async fn extended_connect_enabled(mut client: h2::client::SendRequest<Bytes>) -> h2::client::SendRequest<Bytes> {
    for _ in 0..100 {
        if client.is_extended_connect_protocol_enabled() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        client = client.ready().await.unwrap();
    }
    assert!(client.is_extended_connect_protocol_enabled(), "server did not enable extended CONNECT");
    client
}

/// An HTTP/2 client on `io` once the server's SETTINGS enabled extended
/// CONNECT (RFC 8441 §3).
async fn extended_connect_client<T>(io: T) -> h2::client::SendRequest<Bytes>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (client, connection) = h2::client::handshake(io).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    extended_connect_enabled(client.ready().await.unwrap()).await
}

/// [`connect_h2`] over cleartext (h2c with prior knowledge).
pub async fn connect_h2c(
    addr: SocketAddr,
    path: &str,
    extra: &[(&str, &str)],
) -> (u16, http::HeaderMap, Option<WebSocketStream<H2Io>>) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    connect_h2(tcp, &addr.to_string(), "http", path, extra).await
}

/// TLS to `addr` offering only ALPN h2, trusting any certificate (the rigs'
/// listeners use self-signed ones); asserts h2 was chosen.
pub async fn tls_h2(addr: SocketAddr) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let config = crate::common::transport::trusting_client_config(&[b"h2"]);
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = connector.connect(rustls::pki_types::ServerName::try_from("localhost").unwrap(), tcp).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    tls
}
