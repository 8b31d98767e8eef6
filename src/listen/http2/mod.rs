//! HTTP/2 server connections of our own, on the `h2` crate.
//!
//! Why not hyper's server: it spawns a task per stream, boxes the stream's
//! state behind it, and pipes each response body through a second state
//! machine; a small response then costs two task switches (the stream's
//! task, then the connection's to write) and the task's setup and teardown.
//! Here the connection's task owns the streams: it accepts them, runs each
//! request's answer in place ([`stream`]), and writes what they sent in the
//! same wake-up. Everything protocol-level (frames, HPACK, flow control,
//! stream states, the reset-flood guards) is h2's.
//!
//! The connection also sends keep-alive PINGs and closes a connection that
//! stops answering them, and shuts down gracefully (GOAWAY, open streams
//! finish) when asked. A CONNECT (RFC 8441 WebSocket) gets a
//! [`PendingConnect`] in its extensions and an empty body; a 2xx answer
//! hands the stream over as a byte stream ([`upgrade`]).

mod stream;
pub mod upgrade;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use h2::server::{Builder, Connection, Handshake, SendResponse};
use h2::{Ping, PingPong, RecvStream};
use http::{Method, Request, Response, header};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, Sleep};

use crate::body::{Body, ClientBody};
use crate::http2::RecvBody;
use stream::{Connect, StreamTask};
pub use upgrade::{PendingConnect, StreamIo};

/// How often an otherwise quiet connection is checked with a PING.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long the client has to answer one before the connection is closed.
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Flow-control windows and buffers (hyper's defaults, which the benchmarks
/// were tuned with): 1 MiB per stream and per connection, 16 KiB frames,
/// at most 400 KiB queued per stream before a sender waits.
const STREAM_WINDOW: u32 = 1024 * 1024;
const CONNECTION_WINDOW: u32 = 1024 * 1024;
const MAX_FRAME_SIZE: u32 = 16 * 1024;
const MAX_SEND_BUFFER: usize = 400 * 1024;

/// A listener's HTTP/2 limits.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// SETTINGS_MAX_HEADER_LIST_SIZE: larger heads are refused.
    pub max_header_list_bytes: u32,
    /// SETTINGS_MAX_CONCURRENT_STREAMS.
    pub max_concurrent_streams: u32,
    /// HTTP/2 Rapid Reset (CVE-2023-44487): a client that opens streams and
    /// cancels them at once never hits max_concurrent_streams yet makes us
    /// start a request per stream. Past this many streams reset before we
    /// accepted them, the connection is closed with GOAWAY ENHANCE_YOUR_CALM.
    pub max_pending_accept_reset_streams: usize,
    /// The mirror flood: frames crafted so that *we* reset streams over and
    /// over (RUSTSEC-2024-0003, CVE-2019-9514-style reset floods); past this
    /// many, GOAWAY as well.
    pub max_local_error_reset_streams: usize,
}

impl Settings {
    fn builder(&self) -> Builder {
        let mut builder = Builder::new();
        builder
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME_SIZE)
            .max_send_buffer_size(MAX_SEND_BUFFER)
            .max_header_list_size(self.max_header_list_bytes)
            .max_concurrent_streams(self.max_concurrent_streams)
            .max_pending_accept_reset_streams(self.max_pending_accept_reset_streams)
            .max_local_error_reset_streams(Some(self.max_local_error_reset_streams))
            // RFC 8441 §3: SETTINGS_ENABLE_CONNECT_PROTOCOL, so WebSocket clients
            // can open a stream with extended CONNECT (`websocket` routes answer it).
            .enable_connect_protocol();
        builder
    }
}

/// Why a connection ended other than by a clean close.
#[derive(Debug)]
pub enum Http2Error {
    /// The handshake, a frame or the socket failed (h2 has sent GOAWAY where it could).
    Protocol(h2::Error),
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

// The connection is the large variant, inline on purpose: the whole server
// connection is boxed once, and every poll reaches h2 without another hop.
#[allow(clippy::large_enum_variant)]
enum State<I> {
    Handshaking(Pin<Box<Handshake<I, Bytes>>>),
    Serving(Connection<I, Bytes>),
    Closed,
}

/// One client connection, served until it closes (see the module doc).
/// `service` makes each request's answer, which runs in this task.
pub struct ServerConnection<I, S, F> {
    state: State<I>,
    streams: FuturesUnordered<StreamTask<F>>,
    service: S,
    keep_alive: KeepAlive,
    /// Asked to shut down gracefully (possibly before the handshake ended).
    closing: bool,
}

impl<I, S, F> ServerConnection<I, S, F>
where
    I: AsyncRead + AsyncWrite + Unpin,
    S: FnMut(Request<ClientBody>) -> F,
    F: Future<Output = Response<Body>> + Unpin,
{
    /// Starts the handshake (our SETTINGS, the client's preface) on `io`.
    pub fn new(io: I, service: S, settings: &Settings) -> Self {
        Self {
            state: State::Handshaking(Box::pin(settings.builder().handshake(io))),
            streams: FuturesUnordered::new(),
            service,
            keep_alive: KeepAlive::new(),
            closing: false,
        }
    }

    /// Sends GOAWAY and lets the open streams finish.
    pub fn graceful_shutdown(&mut self) {
        self.closing = true;
        if let State::Serving(conn) = &mut self.state {
            conn.graceful_shutdown();
        }
    }
}

/// Turns an accepted stream into a request for the gateway, whose answer
/// joins the connection's streams.
fn start<S, F>(
    service: &mut S,
    streams: &mut FuturesUnordered<StreamTask<F>>,
    request: Request<RecvStream>,
    respond: SendResponse<Bytes>,
) where
    S: FnMut(Request<ClientBody>) -> F,
{
    let (mut parts, recv) = request.into_parts();
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
    streams.push(StreamTask::new(answer, respond, connect));
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
        if let State::Handshaking(handshake) = &mut this.state {
            match handshake.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => {
                    this.state = State::Closed;
                    return Poll::Ready(Err(Http2Error::Protocol(e)));
                }
                Poll::Ready(Ok(mut conn)) => {
                    if this.closing {
                        conn.graceful_shutdown();
                    }
                    this.keep_alive.pings = conn.ping_pong();
                    this.state = State::Serving(conn);
                }
            }
        }
        let State::Serving(conn) = &mut this.state else { return Poll::Ready(Ok(())) };
        loop {
            // Streams first, so what they send goes out in the accept below.
            while let Poll::Ready(Some(())) = this.streams.poll_next_unpin(cx) {}
            match conn.poll_accept(cx) {
                Poll::Ready(Some(Ok((request, respond)))) => {
                    start(&mut this.service, &mut this.streams, request, respond);
                }
                Poll::Ready(Some(Err(e))) => {
                    this.state = State::Closed;
                    return Poll::Ready(Err(Http2Error::Protocol(e)));
                }
                Poll::Ready(None) => {
                    // The connection is done; streams left can send nothing more.
                    this.state = State::Closed;
                    return Poll::Ready(Ok(()));
                }
                Poll::Pending => {
                    return match this.keep_alive.poll(cx) {
                        Poll::Ready(()) => {
                            this.state = State::Closed;
                            Poll::Ready(Err(Http2Error::KeepAliveTimedOut))
                        }
                        Poll::Pending => Poll::Pending,
                    };
                }
            }
        }
    }
}

/// Keep-alive PINGs: one every [`KEEP_ALIVE_INTERVAL`]; an answer must come
/// within [`KEEP_ALIVE_TIMEOUT`].
struct KeepAlive {
    /// `None` before the handshake, or once h2 has no more to give.
    pings: Option<PingPong>,
    /// Next PING due, or the deadline of the one out; made on first use.
    timer: Option<Pin<Box<Sleep>>>,
    /// A PING is out, unanswered.
    waiting: bool,
    /// The waker `timer` was last polled with: while the connection's polls
    /// come with it, the timer is polled again only once it has fired.
    waker: Option<Waker>,
}

impl KeepAlive {
    fn new() -> Self {
        Self { pings: None, timer: None, waiting: false, waker: None }
    }

    /// Ready when the client has failed to answer in time.
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(pings) = self.pings.as_mut() else { return Poll::Pending };
        let timer = self.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(KEEP_ALIVE_INTERVAL)));
        if self.waiting {
            match pings.poll_pong(cx) {
                Poll::Ready(Ok(_)) => {
                    self.waiting = false;
                    timer.as_mut().reset(Instant::now() + KEEP_ALIVE_INTERVAL);
                    self.waker = None;
                }
                Poll::Ready(Err(_)) => {
                    self.pings = None;
                    return Poll::Pending;
                }
                Poll::Pending => {}
            }
        }
        let registered = self.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker()));
        if registered && !timer.is_elapsed() {
            return Poll::Pending;
        }
        self.waker = Some(cx.waker().clone());
        while timer.as_mut().poll(cx).is_ready() {
            if self.waiting {
                return Poll::Ready(());
            }
            if pings.send_ping(Ping::opaque()).is_err() {
                self.pings = None;
                return Poll::Pending;
            }
            self.waiting = true;
            timer.as_mut().reset(Instant::now() + KEEP_ALIVE_TIMEOUT);
            // Registers for the answer.
            if pings.poll_pong(cx).is_ready() {
                self.waiting = false;
                timer.as_mut().reset(Instant::now() + KEEP_ALIVE_INTERVAL);
            }
        }
        Poll::Pending
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
