//! Message mode: a WebSocket in front of a service that only speaks
//! HTTP/1.1. Each client message becomes one HTTP request; the response
//! comes back as one message, or one message per chunk, or one per
//! server-sent event (`text/event-stream`). A push request (a long-lived
//! SSE `GET`) can stream events to the client between replies.
//!
//! Ordering: replies go out in the order of the messages that caused them
//! (a reply streamed in several messages is sent whole before the next
//! reply starts). Up to `in_flight` requests run at once; the next client
//! message is not read until a slot frees, so a client that outpaces its
//! backend is slowed by TCP flow control, not buffered. Every channel is
//! bounded; every task is owned by the connection and aborted with it.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, Uri};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tungstenite::Message;

use crate::close::{self, BAD_GATEWAY, CloseCode, CloseFrame, ReadFault};
use crate::relay::{End, Report, Traffic};
use crate::sse;

/// Identifies the WebSocket connection a request came from, so the backend
/// can keep per-connection state.
pub static CONNECTION_ID: HeaderName = HeaderName::from_static("x-websocket-connection-id");
/// 1, 2, 3... per connection, in the order the client sent its messages.
pub static SEQUENCE: HeaderName = HeaderName::from_static("x-websocket-sequence");
/// `text` or `binary`: the WebSocket message type of the body.
pub static MESSAGE_TYPE: HeaderName = HeaderName::from_static("x-websocket-message-type");
/// The authenticated principal of the upgrade request (set by the core).
pub static PRINCIPAL: HeaderName = HeaderName::from_static("x-websocket-principal");

/// Messages one reply may buffer ahead of the writer.
const REPLY_BUFFER: usize = 8;

/// The request every message is sent as; the core fills it from the route's
/// config and the upgrade request (with forwarding headers and principal).
#[derive(Debug, Clone)]
pub struct RequestTemplate {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
}

impl RequestTemplate {
    /// The HTTP request for message number `sequence`; `None` for control messages.
    pub fn request(&self, sequence: u64, message: &Message) -> Option<Request<Bytes>> {
        let (body, kind, content_type) = match message {
            Message::Text(t) => (Bytes::from(t.clone()), "text", "text/plain; charset=utf-8"),
            Message::Binary(b) => (b.clone(), "binary", "application/octet-stream"),
            _ => return None,
        };
        let mut request = Request::new(body);
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.headers_mut() = self.headers.clone();
        let headers = request.headers_mut();
        headers.insert(&SEQUENCE, HeaderValue::from(sequence));
        headers.insert(&MESSAGE_TYPE, HeaderValue::from_static(kind));
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        Some(request)
    }
}

/// Limits of one message-mode connection.
#[derive(Debug, Clone, Copy)]
pub struct MessageSettings {
    /// Requests to the backend running at once for one connection.
    pub in_flight: usize,
    /// No message either way for this long closes the connection with 1001.
    pub idle_timeout: Duration,
    /// Ping the client after this much silence (its pong counts as activity,
    /// so only a dead client reaches `idle_timeout`); `None` sends no pings.
    pub ping_interval: Option<Duration>,
    /// Largest reply message (a whole body, a chunk or an event).
    pub max_reply_bytes: usize,
}

/// One item for the writer.
enum Outgoing {
    Message(Message),
    /// Stop with this close frame (the backend failed).
    Fail(CloseFrame),
}

/// How the response body maps to messages.
enum Shape {
    /// `Content-Length` known: one message with the whole body.
    Whole,
    /// Streamed (chunked or close-delimited): one message per body chunk as received.
    PerChunk,
    /// `text/event-stream`: one text message per event's data.
    Events(sse::Parser),
}

fn shape(headers: &HeaderMap, max: usize) -> Shape {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if content_type.trim_start().to_ascii_lowercase().starts_with("text/event-stream") {
        Shape::Events(sse::Parser::new(max))
    } else if headers.contains_key(header::CONTENT_LENGTH) {
        Shape::Whole
    } else {
        Shape::PerChunk
    }
}

/// A reply payload as the message type of the request: text when the
/// request was text and the payload is UTF-8, binary otherwise.
fn as_message(payload: Bytes, text: bool) -> Message {
    if text && let Ok(t) = tungstenite::Utf8Bytes::try_from(payload.clone()) {
        return Message::Text(t);
    }
    Message::Binary(payload)
}

/// Streams a backend response into `out` as messages.
async fn relay_response<B>(response: Response<B>, text: bool, max: usize, out: &mpsc::Sender<Outgoing>)
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Send,
{
    let mut shape = shape(response.headers(), max);
    let mut whole = BytesMut::new();
    let mut body = std::pin::pin!(response.into_body());
    let fail = |reason| Outgoing::Fail(close::frame(CloseCode::Error, reason));
    loop {
        let frame = match std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
            None => break,
            Some(Err(_)) => {
                let _ = out.send(fail("backend reply failed")).await;
                return;
            }
            Some(Ok(frame)) => frame,
        };
        let Ok(data) = frame.into_data() else { continue };
        let messages = match &mut shape {
            Shape::Whole => {
                if whole.len() + data.len() > max {
                    let _ = out.send(fail("backend reply over the message size limit")).await;
                    return;
                }
                whole.extend_from_slice(&data);
                continue;
            }
            Shape::PerChunk if data.is_empty() => continue,
            Shape::PerChunk if data.len() > max => {
                let _ = out.send(fail("backend reply over the message size limit")).await;
                return;
            }
            Shape::PerChunk => vec![as_message(data, text)],
            Shape::Events(parser) => match parser.feed(&data) {
                Ok(events) => events.into_iter().map(|e| as_message(e, true)).collect(),
                Err(_) => {
                    let _ = out.send(fail("backend event over the message size limit")).await;
                    return;
                }
            },
        };
        for m in messages {
            if out.send(Outgoing::Message(m)).await.is_err() {
                return;
            }
        }
    }
    if let Shape::Whole = shape {
        let _ = out.send(Outgoing::Message(as_message(whole.freeze(), text))).await;
    }
}

/// Runs one request and streams its reply into `out`.
async fn exchange<Fut, B, E>(request: Fut, text: bool, max: usize, out: mpsc::Sender<Outgoing>)
where
    Fut: Future<Output = Result<Response<B>, E>>,
    B: http_body::Body<Data = Bytes>,
    B::Error: Send,
{
    match request.await {
        Ok(response) => relay_response(response, text, max, &out).await,
        Err(_) => {
            let _ = out.send(Outgoing::Fail(close::frame(BAD_GATEWAY, "bad gateway: backend request failed"))).await;
        }
    }
}

/// Serves one message-mode connection until either side ends it. `call`
/// sends one request to the backend; `push`, if given, is the long-lived
/// request whose events are pushed to the client; when `shutdown`
/// resolves the client gets 1001.
pub async fn serve<S, F, Fut, B, E>(
    ws: S,
    template: RequestTemplate,
    settings: MessageSettings,
    call: F,
    push: Option<Fut>,
    shutdown: impl Future<Output = ()>,
) -> Report
where
    S: crate::MessageChannel,
    F: Fn(Request<Bytes>) -> Fut,
    Fut: Future<Output = Result<Response<B>, E>> + Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Send,
    E: Send + 'static,
{
    let (mut tx, mut rx) = ws.split();
    let in_flight = settings.in_flight.max(1);
    let slots = Arc::new(Semaphore::new(in_flight));
    let (order_tx, mut order_rx) = mpsc::channel::<mpsc::Receiver<Outgoing>>(in_flight);
    let (push_tx, mut push_rx) = mpsc::channel::<Outgoing>(REPLY_BUFFER);
    // Dropping the set aborts every request still running: nothing outlives the connection.
    let mut tasks = JoinSet::new();
    if let Some(push) = push {
        let max = settings.max_reply_bytes;
        tasks.spawn(async move {
            let end = match push.await {
                // An error page is not an event stream: none of it is pushed.
                Ok(response) if !response.status().is_success() => {
                    close::frame(CloseCode::Error, "push stream refused by the backend")
                }
                Ok(response) => {
                    relay_response(response, true, max, &push_tx).await;
                    close::frame(CloseCode::Error, "push stream ended")
                }
                Err(_) => close::frame(BAD_GATEWAY, "bad gateway: push request failed"),
            };
            let _ = push_tx.send(Outgoing::Fail(end)).await;
        });
    } else {
        drop(push_tx);
    }
    let mut up = Traffic::default();
    let mut down = Traffic::default();
    let last_seen = crate::activity::Activity::new();

    enum Stop {
        Closed(Option<CloseFrame>),
        Read(ReadFault),
        Idle,
        ClientGone,
        Fail(CloseFrame),
        Shutdown,
    }

    let stop = {
        let reader = async {
            let mut sequence = 0u64;
            loop {
                let deadline = last_seen.last() + settings.idle_timeout;
                let next = tokio::select! {
                    next = rx.next() => next,
                    _ = tokio::time::sleep_until(deadline) => {
                        if last_seen.quiet() >= settings.idle_timeout {
                            return Stop::Idle;
                        }
                        continue;
                    }
                };
                let message = match next {
                    None => return Stop::Read(ReadFault::Gone),
                    Some(Err(e)) => return Stop::Read(ReadFault::of(&e)),
                    Some(Ok(m)) => m,
                };
                last_seen.touch();
                while tasks.try_join_next().is_some() {}
                if let Message::Close(frame) = message {
                    return Stop::Closed(frame);
                }
                sequence += 1;
                let Some(request) = template.request(sequence, &message) else {
                    sequence -= 1; // pings are answered by tungstenite; pongs need nothing
                    continue;
                };
                up.count(&message);
                let permit = Arc::clone(&slots).acquire_owned().await.expect("the semaphore is never closed");
                let (out, replies) = mpsc::channel(REPLY_BUFFER);
                if order_tx.send(replies).await.is_err() {
                    return Stop::ClientGone;
                }
                let (text, max) = (message.is_text(), settings.max_reply_bytes);
                let sent = call(request);
                tasks.spawn(async move {
                    exchange(sent, text, max, out).await;
                    drop(permit);
                });
            }
        };
        let writer = async {
            let mut current: Option<mpsc::Receiver<Outgoing>> = None;
            let period = settings.ping_interval.unwrap_or(Duration::from_secs(3600)).max(Duration::from_millis(10));
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                let out = tokio::select! {
                    out = next_reply(&mut current, &mut order_rx) => match out {
                        Some(out) => out,
                        None => return Stop::ClientGone,
                    },
                    Some(out) = push_rx.recv() => out,
                    _ = tick.tick(), if settings.ping_interval.is_some() => {
                        if settings.ping_interval.is_some_and(|p| last_seen.quiet() >= p)
                            && tx.send(Message::Ping(Bytes::from_static(crate::relay::GATEWAY_PING))).await.is_err()
                        {
                            return Stop::ClientGone;
                        }
                        continue;
                    }
                };
                match out {
                    Outgoing::Message(m) => {
                        down.count(&m);
                        last_seen.touch();
                        if tx.send(m).await.is_err() {
                            return Stop::ClientGone;
                        }
                    }
                    Outgoing::Fail(frame) => return Stop::Fail(frame),
                }
            }
        };
        tokio::select! {
            stop = reader => stop,
            stop = writer => stop,
            () = shutdown => Stop::Shutdown,
        }
    };
    drop(tasks);
    let end = match stop {
        Stop::Closed(frame) => {
            let _ = tx.flush().await;
            End::ClientClosed(close::code_of(frame.as_ref()))
        }
        Stop::Read(fault) => {
            if let Some(code) = fault.code() {
                let _ = tx.send(Message::Close(Some(close::frame(code, fault.as_str())))).await;
            }
            if fault == ReadFault::Gone { End::ClientGone } else { End::ClientFault(fault) }
        }
        Stop::Idle => {
            let _ = tx.send(Message::Close(Some(close::frame(CloseCode::Away, "idle timeout")))).await;
            End::Idle
        }
        Stop::ClientGone => End::ClientGone,
        Stop::Shutdown => {
            let _ = tx.send(Message::Close(Some(close::frame(CloseCode::Away, "gateway shutting down")))).await;
            End::Shutdown
        }
        Stop::Fail(frame) => {
            let _ = tx.send(Message::Close(Some(frame))).await;
            End::BackendGone
        }
    };
    Report { upstream: up, downstream: down, end }
}

/// The next message of the oldest unfinished reply, in order.
async fn next_reply(
    current: &mut Option<mpsc::Receiver<Outgoing>>,
    order: &mut mpsc::Receiver<mpsc::Receiver<Outgoing>>,
) -> Option<Outgoing> {
    loop {
        if let Some(replies) = current {
            if let Some(out) = replies.recv().await {
                return Some(out);
            }
            *current = None;
        }
        *current = Some(order.recv().await?);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Limits, client_stream, server_stream};
    use std::convert::Infallible;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// A body of the given chunks, one frame each.
    struct Chunks(std::collections::VecDeque<Bytes>);

    impl http_body::Body for Chunks {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
            Poll::Ready(self.0.pop_front().map(|b| Ok(http_body::Frame::data(b))))
        }
    }

    fn template() -> RequestTemplate {
        let mut headers = HeaderMap::new();
        headers.insert(&CONNECTION_ID, HeaderValue::from_static("c1"));
        RequestTemplate { method: Method::POST, uri: Uri::from_static("/rpc"), headers }
    }

    fn settings() -> MessageSettings {
        MessageSettings {
            in_flight: 4,
            idle_timeout: Duration::from_secs(60),
            ping_interval: None,
            max_reply_bytes: 1024,
        }
    }

    #[tokio::test]
    async fn replies_come_back_in_order_whatever_the_backend_latency() {
        let (peer, gw) = tokio::io::duplex(4096);
        let mut client = client_stream(peer, &Limits::default()).await;
        let server = tokio::spawn(async move {
            let ws = server_stream(gw, &Limits::default()).await;
            let call = |req: Request<Bytes>| async move {
                let seq: u64 = req.headers()[&SEQUENCE].to_str().unwrap().parse().unwrap();
                assert_eq!(req.headers()[&CONNECTION_ID], "c1");
                // Earlier messages answer later.
                tokio::time::sleep(Duration::from_millis(60 - 10 * seq)).await;
                let mut body = BytesMut::from(&b"re: "[..]);
                body.extend_from_slice(req.body());
                let mut response = Response::new(Chunks([body.freeze()].into()));
                response.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(100));
                Ok::<_, Infallible>(response)
            };
            serve(ws, template(), settings(), call, None, std::future::pending()).await
        });
        for i in 1..=4 {
            client.send(Message::text(format!("m{i}"))).await.unwrap();
        }
        for i in 1..=4 {
            assert_eq!(client.next().await.unwrap().unwrap(), Message::text(format!("re: m{i}")));
        }
        client.send(Message::Close(Some(close::frame(CloseCode::Normal, "bye")))).await.unwrap();
        let report = server.await.unwrap();
        assert_eq!(report.end, End::ClientClosed(1000));
        assert_eq!(report.upstream.messages, 4);
        assert_eq!(report.downstream.messages, 4);
    }

    #[tokio::test]
    async fn sse_replies_stream_one_message_per_event_and_chunks_one_per_chunk() {
        let (peer, gw) = tokio::io::duplex(4096);
        let mut client = client_stream(peer, &Limits::default()).await;
        tokio::spawn(async move {
            let ws = server_stream(gw, &Limits::default()).await;
            let call = |req: Request<Bytes>| async move {
                let sse = req.body().as_ref() == b"sse";
                let (chunks, content_type) = if sse {
                    (vec!["data: a\n\nda", "ta: b\n\n"], "text/event-stream")
                } else {
                    (vec!["x", "y"], "application/octet-stream")
                };
                let mut response = Response::new(Chunks(chunks.into_iter().map(Bytes::from).collect()));
                response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
                Ok::<_, Infallible>(response)
            };
            serve(ws, template(), settings(), call, None, std::future::pending()).await
        });
        client.send(Message::text("sse")).await.unwrap();
        client.send(Message::binary(&b"chunks"[..])).await.unwrap();
        let mut got = Vec::new();
        for _ in 0..4 {
            got.push(client.next().await.unwrap().unwrap());
        }
        assert_eq!(
            got,
            vec![Message::text("a"), Message::text("b"), Message::binary(&b"x"[..]), Message::binary(&b"y"[..])]
        );
    }

    #[tokio::test]
    async fn an_unreachable_backend_closes_with_1014() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // Raw bytes on the client side: tungstenite itself reports 1014 (newer than
        // RFC 6455, IANA-registered) as a protocol error, browsers accept it.
        let (mut peer, gw) = tokio::io::duplex(4096);
        let server = tokio::spawn(async move {
            let ws = server_stream(gw, &Limits::default()).await;
            let call = |_req: Request<Bytes>| async move { Err::<Response<Chunks>, _>("refused") };
            serve(ws, template(), settings(), call, None, std::future::pending()).await
        });
        // FIN + text, masked with a zero key, "hi".
        peer.write_all(&[0x81, 0x82, 0, 0, 0, 0, b'h', b'i']).await.unwrap();
        let mut buf = [0u8; 64];
        let n = peer.read(&mut buf).await.unwrap();
        assert_eq!(buf[0], 0x88, "a close frame: {:?}", &buf[..n]);
        assert_eq!(u16::from_be_bytes([buf[2], buf[3]]), 1014);
        assert_eq!(server.await.unwrap().end, End::BackendGone);
    }

    #[tokio::test]
    async fn a_push_request_the_backend_refuses_closes_with_1011_and_pushes_none_of_its_page() {
        let (peer, gw) = tokio::io::duplex(4096);
        let mut client = client_stream(peer, &Limits::default()).await;
        let server = tokio::spawn(async move {
            let ws = server_stream(gw, &Limits::default()).await;
            // Every request, the push request included, gets a 404 page.
            async fn not_found() -> Result<Response<Chunks>, &'static str> {
                let mut page = Response::new(Chunks([Bytes::from_static(b"<h1>Not Found</h1>")].into()));
                *page.status_mut() = http::StatusCode::NOT_FOUND;
                page.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(18));
                Ok(page)
            }
            let call = |_req: Request<Bytes>| not_found();
            serve(ws, template(), settings(), call, Some(not_found()), std::future::pending()).await
        });
        match client.next().await.unwrap().unwrap() {
            Message::Close(Some(frame)) => assert_eq!(u16::from(frame.code), 1011, "{frame:?}"),
            other => panic!("the error page was pushed: {other:?}"),
        }
        assert_eq!(server.await.unwrap().end, End::BackendGone);
    }
}
