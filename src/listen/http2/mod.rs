//! HTTP/2 client connections, served on our own HTTP/2 server
//! ([`crate::http2::server`]).
//!
//! The connection's task owns its streams: it accepts them, runs each
//! request's answer in place ([`stream`]), and writes what they sent in
//! the same wake-up: no task per stream, no body pipe between them, and a
//! small response costs no task switch. The protocol (frames, HPACK, flow
//! control, the flood guards, keep-alive PINGs) is the server's.
//!
//! Shutting down gracefully sends GOAWAY and lets the open streams finish.
//! A CONNECT (RFC 8441 WebSocket) gets a [`PendingConnect`] in its
//! extensions and an empty body; a 2xx answer hands the stream over as a
//! byte stream ([`upgrade`]).

mod stream;
pub mod upgrade;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use http::{Method, Request, Response, header};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::body::{Body, ClientBody};
use crate::http2::server::Server;
use crate::http2::{self as h2proto, RecvBody, RecvHalf, SendHalf};
use stream::{Connect, StreamTask};
pub use upgrade::{PendingConnect, StreamIo};

/// How often an otherwise quiet connection is checked with a PING.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long the client has to answer one before the connection is closed.
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Flow-control windows (hyper's defaults, which the benchmarks were tuned
/// with): 1 MiB per stream and per connection.
const STREAM_WINDOW: u32 = 1024 * 1024;
const CONNECTION_WINDOW: u32 = 1024 * 1024;

/// A listener's HTTP/2 limits.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// SETTINGS_MAX_HEADER_LIST_SIZE: larger heads get 431.
    pub max_header_list_bytes: u32,
    /// SETTINGS_MAX_CONCURRENT_STREAMS.
    pub max_concurrent_streams: u32,
    /// `send_timeout`: a response chunk the client leaves waiting this long
    /// (its window shut) resets the stream.
    pub send_timeout: std::time::Duration,
    /// HTTP/2 Rapid Reset (CVE-2023-44487): a client that opens streams and
    /// cancels them at once never hits max_concurrent_streams yet makes us
    /// start a request per stream. Past this many streams reset before we
    /// answered them (less one per answer), the connection is closed with
    /// GOAWAY ENHANCE_YOUR_CALM.
    pub max_pending_accept_reset_streams: usize,
    /// The mirror flood: frames crafted so that *we* reset streams over and
    /// over (malformed requests, CVE-2019-9514-style reset floods); past
    /// this many, GOAWAY as well.
    pub max_local_error_reset_streams: usize,
}

impl Settings {
    fn protocol(&self) -> h2proto::Settings {
        h2proto::Settings {
            stream_window: STREAM_WINDOW,
            connection_window: CONNECTION_WINDOW,
            max_header_list_size: self.max_header_list_bytes,
            max_concurrent_streams: self.max_concurrent_streams,
            max_early_resets: self.max_pending_accept_reset_streams,
            max_peer_faults: self.max_local_error_reset_streams,
            keep_alive_interval: KEEP_ALIVE_INTERVAL,
            keep_alive_timeout: KEEP_ALIVE_TIMEOUT,
        }
    }
}

/// Why a connection ended other than by a clean close.
#[derive(Debug)]
pub enum Http2Error {
    /// A frame or the socket failed (GOAWAY was sent where it could be).
    Protocol(h2proto::Error),
    /// The client stopped answering PINGs.
    KeepAliveTimedOut,
}

impl std::fmt::Display for Http2Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Http2Error::Protocol(e) => write!(f, "HTTP/2: {e}"),
            Http2Error::KeepAliveTimedOut => {
                write!(f, "HTTP/2: no answer to a keep-alive PING within {KEEP_ALIVE_TIMEOUT:?}")
            }
        }
    }
}

impl std::error::Error for Http2Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Http2Error::Protocol(e) => Some(e),
            Http2Error::KeepAliveTimedOut => None,
        }
    }
}

/// One client connection, served until it closes (see the module doc).
/// `service` makes each request's answer, which runs in this task.
pub struct ServerConnection<I, S, F> {
    server: Server<I>,
    streams: FuturesUnordered<StreamTask<F>>,
    service: S,
    send_timeout: std::time::Duration,
}

impl<I, S, F> ServerConnection<I, S, F>
where
    I: AsyncRead + AsyncWrite + Unpin,
    S: FnMut(Request<ClientBody>) -> F,
    F: Future<Output = Response<Body>> + Unpin,
{
    /// Serves `io`; our SETTINGS go out with the first write.
    pub fn new(io: I, service: S, settings: &Settings) -> Self {
        Self {
            server: Server::new(io, settings.protocol()),
            streams: FuturesUnordered::new(),
            service,
            send_timeout: settings.send_timeout,
        }
    }

    /// Sends GOAWAY and lets the open streams finish.
    pub fn graceful_shutdown(&mut self) {
        self.server.graceful_shutdown();
    }
}

/// Turns an accepted stream into a request for the gateway, whose answer
/// joins the connection's streams.
fn start<S, F>(
    service: &mut S,
    streams: &mut FuturesUnordered<StreamTask<F>>,
    request: Request<()>,
    send: SendHalf,
    recv: RecvHalf,
    send_timeout: std::time::Duration,
) where
    S: FnMut(Request<ClientBody>) -> F,
{
    let (mut parts, ()) = request.into_parts();
    let (body, connect) = if parts.method == Method::CONNECT {
        // The stream is the tunnel's, if the answer says so; the request has no body.
        let (pending, fulfil) = PendingConnect::new();
        parts.extensions.insert(pending);
        (ClientBody::Empty, Some(Connect { recv, fulfil }))
    } else {
        let length = parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse().ok());
        (ClientBody::Http2(RecvBody::new(recv, length)), None)
    };
    let answer = service(Request::from_parts(parts, body));
    streams.push(StreamTask::new(answer, send, connect, send_timeout));
}

impl<I, S, F> Future for ServerConnection<I, S, F>
where
    I: AsyncRead + AsyncWrite + Unpin,
    S: FnMut(Request<ClientBody>) -> F + Unpin,
    F: Future<Output = Response<Body>> + Unpin,
{
    type Output = Result<(), Http2Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        this.server.begin_poll();
        this.server.poll_keep_alive(cx);
        loop {
            // Streams first, so what they send goes out in the write below.
            while let Poll::Ready(Some(())) = this.streams.poll_next_unpin(cx) {}
            this.server.poll_read(cx);
            let mut accepted = false;
            while let Some((request, send, recv)) = this.server.accept() {
                start(&mut this.service, &mut this.streams, request, send, recv, this.send_timeout);
                accepted = true;
            }
            if !accepted {
                break;
            }
        }
        match ready!(this.server.poll_flush_or_end(cx)) {
            Ok(()) => Poll::Ready(Ok(())),
            Err(h2proto::Error::KeepAliveTimedOut) => Poll::Ready(Err(Http2Error::KeepAliveTimedOut)),
            Err(e) => Poll::Ready(Err(Http2Error::Protocol(e))),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;

    use bytes::Bytes;
    use http_body::Frame;
    use http_body_util::BodyExt;
    use tokio::io::{AsyncWriteExt, DuplexStream};

    use super::*;
    use crate::body::{self, BoxError};

    type Answer = Pin<Box<dyn Future<Output = Response<Body>> + Send>>;

    fn settings() -> Settings {
        Settings {
            max_header_list_bytes: 16 * 1024,
            max_concurrent_streams: 100,
            send_timeout: std::time::Duration::from_secs(60),
            max_pending_accept_reset_streams: 20,
            max_local_error_reset_streams: 1024,
        }
    }

    /// Serves `io` with `answer`, on a task of its own.
    fn serve<A>(io: DuplexStream, answer: A) -> tokio::task::JoinHandle<Result<(), Http2Error>>
    where
        A: FnMut(Request<ClientBody>) -> Answer + Send + Unpin + 'static,
    {
        tokio::spawn(ServerConnection::new(io, answer, &settings()))
    }

    /// An h2 client on `io`, its connection driven on a task of its own.
    async fn client(io: DuplexStream) -> h2::client::SendRequest<Bytes> {
        let (send, connection) = h2::client::handshake(io).await.unwrap();
        tokio::spawn(connection);
        send.ready().await.unwrap()
    }

    fn hello(_: Request<ClientBody>) -> Answer {
        Box::pin(async { Response::new(body::full("hello")) })
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_stops_answering_pings_is_disconnected() {
        let (ours, mut theirs) = tokio::io::duplex(64 * 1024);
        let server = serve(ours, hello);
        // The preface and an empty SETTINGS frame, then silence: nothing is read, so no PING is answered.
        theirs.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0").await.unwrap();
        let ended = tokio::time::timeout(KEEP_ALIVE_INTERVAL * 3, server).await.expect("closed in time").unwrap();
        assert!(matches!(ended, Err(Http2Error::KeepAliveTimedOut)), "{ended:?}");
        drop(theirs);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_answers_pings_stays_connected() {
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        let server = serve(ours, hello);
        let mut send = client(theirs).await;
        tokio::time::sleep(KEEP_ALIVE_INTERVAL * 4).await;
        assert!(!server.is_finished());
        let (response, _) = send.send_request(Request::get("http://t/").body(()).unwrap(), true).unwrap();
        let response = response.await.unwrap();
        assert_eq!(response.status(), 200);
    }

    #[tokio::test]
    async fn a_response_gets_its_length_and_a_date() {
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        let _server = serve(ours, hello);
        let mut send = client(theirs).await;
        let (response, _) = send.send_request(Request::get("http://t/").body(()).unwrap(), true).unwrap();
        let response = response.await.unwrap();
        assert_eq!(response.headers()["content-length"], "5");
        assert!(httpdate::parse_http_date(response.headers()["date"].to_str().unwrap()).is_ok());
        let mut body = response.into_body();
        assert_eq!(body.data().await.unwrap().unwrap(), "hello");
    }

    #[tokio::test]
    async fn a_request_body_the_client_resets_fails_rather_than_ending_short() {
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        let (seen_tx, seen_rx) = tokio::sync::oneshot::channel();
        let mut seen_tx = Some(seen_tx);
        let _server = serve(ours, move |req| {
            let seen = seen_tx.take();
            Box::pin(async move {
                let collected = req.into_body().collect().await;
                if let Some(seen) = seen {
                    let _ = seen.send(collected.map(|c| c.to_bytes()).map_err(|e| e.to_string()));
                }
                Response::new(body::empty())
            })
        });
        let mut send = client(theirs).await;
        let request = Request::post("http://t/").header("content-length", "10").body(()).unwrap();
        let (_response, mut body) = send.send_request(request, false).unwrap();
        body.send_data(Bytes::from_static(b"part"), false).unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        body.send_reset(h2::Reason::CANCEL);
        let seen = seen_rx.await.unwrap();
        assert!(seen.is_err(), "the gateway saw {seen:?}");
    }

    #[tokio::test]
    async fn a_response_body_that_fails_resets_the_stream() {
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        let _server = serve(ours, |_| {
            Box::pin(async {
                // The first chunk, then (once it has gone out) a failure.
                let frames = futures_util::stream::unfold(0, |sent| async move {
                    match sent {
                        0 => Some((Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"first"))), 1)),
                        1 => {
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                            Some((Err("backend died".into()), 2))
                        }
                        _ => None,
                    }
                });
                Response::new(body::boxed(http_body_util::StreamBody::new(frames)))
            })
        });
        let mut send = client(theirs).await;
        let (response, _) = send.send_request(Request::get("http://t/").body(()).unwrap(), true).unwrap();
        let mut body = response.await.unwrap().into_body();
        let mut received = Vec::new();
        let failure = loop {
            match body.data().await {
                Some(Ok(data)) => received.extend_from_slice(&data),
                Some(Err(e)) => break e,
                None => panic!("the body ended cleanly after {received:?}"),
            }
        };
        assert_eq!(received, b"first");
        assert_eq!(failure.reason(), Some(h2::Reason::INTERNAL_ERROR));
    }
}
