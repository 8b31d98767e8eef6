//! WebTransport over HTTP/3 (draft-ietf-webtrans-http3-02, what Chromium
//! speaks, via h3-webtransport), carried as a stream of messages so the
//! WebSocket bridge can relay them like WebSocket messages.
//!
//! Message framing (ours; the README documents it for client authors): each
//! message travels on a unidirectional stream of its own — one type byte
//! (`0x01` UTF-8 text, `0x02` binary), then the payload, then FIN.
//! The client's streams are read one at a time in stream-ID order, so
//! messages keep the order in which the client opened their streams; ours
//! are opened one after another in the order the messages come.

use std::collections::BTreeMap;
use std::future::poll_fn;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use h3::ext::Protocol;
use h3::quic::RecvStream as _;
use h3::server::RequestStream;
use h3_webtransport::server::{AcceptedBi, WebTransportSession};
use http::{Method, Request, Response};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::connection::Incoming;
use crate::error::{H3Error, SendError};
use crate::respond::Responder;

type Session = WebTransportSession<h3_quinn::Connection, Bytes>;

/// Type byte of a text message.
pub const TEXT: u8 = 0x01;
/// Type byte of a binary message.
pub const BINARY: u8 = 0x02;

/// True for an extended CONNECT asking for a WebTransport session.
pub fn is_session_request(head: &Request<()>) -> bool {
    head.method() == Method::CONNECT && head.extensions().get::<Protocol>() == Some(&Protocol::WEB_TRANSPORT)
}

/// A WebTransport CONNECT whose answer is still to be given.
pub struct SessionRequest {
    head: Request<()>,
    stream: RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>,
}

impl SessionRequest {
    pub(crate) fn new(head: Request<()>, stream: RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>) -> Self {
        Self { head, stream }
    }

    /// The CONNECT request (`:authority`, `:path`, headers), for routing and policies.
    pub fn head(&self) -> &Request<()> {
        &self.head
    }

    /// Answers with `response` (a refusal) instead of opening the session.
    pub async fn refuse<B>(self, response: Response<B>) -> Result<(), SendError>
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (send, _recv) = self.stream.split();
        Responder::new(send).send(response).await
    }
}

/// One WebTransport message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Text (UTF-8, checked) or binary.
    pub text: bool,
    pub payload: Bytes,
}

/// Why the client's side of a session stopped yielding messages.
#[derive(Debug)]
pub enum MessageError {
    /// A message over the size limit.
    TooLarge { limit: usize },
    /// A stream without a known type byte, or text that is not UTF-8.
    Malformed(&'static str),
    /// The session or its connection ended or failed.
    Closed(String),
}

impl std::fmt::Display for MessageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MessageError::TooLarge { limit } => write!(f, "WebTransport message over {limit} bytes"),
            MessageError::Malformed(what) => write!(f, "malformed WebTransport message: {what}"),
            MessageError::Closed(why) => write!(f, "WebTransport session ended: {why}"),
        }
    }
}

impl std::error::Error for MessageError {}

/// A connection that carries a WebTransport session; it still serves
/// ordinary HTTP/3 requests (h3-webtransport hands them back to us).
pub struct SessionConnection {
    session: Arc<Session>,
    /// Flips when the [`MessagePipe`] is dropped: the session is over.
    pipe_done: tokio::sync::watch::Receiver<()>,
    pipe_done_tx: Option<tokio::sync::watch::Sender<()>>,
    /// Poked after every poll of [`SessionConnection::accept`]: see there.
    uni_polled: Arc<tokio::sync::Notify>,
}

impl SessionConnection {
    /// Answers the CONNECT with 200 and takes over the connection.
    pub(crate) async fn open(
        request: SessionRequest,
        conn: h3::server::Connection<h3_quinn::Connection, Bytes>,
    ) -> Result<Self, H3Error> {
        let session = WebTransportSession::accept(request.head, request.stream, conn).await.map_err(H3Error::Stream)?;
        let (pipe_done_tx, pipe_done) = tokio::sync::watch::channel(());
        Ok(Self {
            session: Arc::new(session),
            pipe_done,
            pipe_done_tx: Some(pipe_done_tx),
            uni_polled: Arc::new(tokio::sync::Notify::new()),
        })
    }

    /// The next HTTP request on this connection; client-opened
    /// bidirectional WebTransport streams are not part of our framing and
    /// are refused (STOP_SENDING, by dropping them).
    pub async fn accept(&self) -> Result<Option<Incoming>, H3Error> {
        loop {
            // h3 accepts unidirectional streams while it looks for requests
            // (for its control stream) and files ours where the message
            // reader takes them, waking only this task: the reader has to be
            // told to look, or a message can sit there unread.
            let mut accept_bi = std::pin::pin!(self.session.accept_bi());
            let accepted = poll_fn(|cx| {
                let poll = accept_bi.as_mut().poll(cx);
                self.uni_polled.notify_one();
                poll
            })
            .await;
            match accepted.map_err(H3Error::Stream)? {
                Some(AcceptedBi::Request(head, stream)) => return Ok(Some(Incoming::read(head, stream))),
                Some(AcceptedBi::BidiStream(_, stream)) => drop(stream),
                None => return Ok(None),
            }
        }
    }

    /// Starts moving messages: the client's arrive on the returned receiver
    /// (an error, then nothing, when its side ends); messages sent into the
    /// returned sender go to the client. The channels are bounded, so a
    /// slow reader on either side slows the other. Dropping the pipe stops both.
    ///
    /// Call once; [`SessionConnection::ended_signal`] tells when the pipe is dropped.
    pub fn messages(&mut self, max_message_bytes: usize) -> MessagePipe {
        let (incoming_tx, incoming) = mpsc::channel(8);
        let (outgoing, mut outgoing_rx) = mpsc::channel::<Message>(8);
        let mut tasks = JoinSet::new();
        let session = Arc::clone(&self.session);
        let uni_polled = Arc::clone(&self.uni_polled);
        tasks.spawn(async move {
            // Accepted streams not read yet, by stream ID: h3-webtransport hands
            // back the streams that arrived together last-first (it pops a Vec),
            // so every stream already there is taken and the lowest ID read first.
            let mut waiting = BTreeMap::new();
            let mut end = None;
            loop {
                if waiting.is_empty() && end.is_none() {
                    let accepted = loop {
                        tokio::select! {
                            accepted = session.accept_uni() => break accepted,
                            () = uni_polled.notified() => {}
                        }
                    };
                    end = take_stream(accepted, &mut waiting);
                }
                while end.is_none() {
                    let Some(ready) = now(session.accept_uni()).await else { break };
                    end = take_stream(ready, &mut waiting);
                }
                let next = match waiting.pop_first() {
                    Some((_, stream)) => read_message(stream, max_message_bytes).await,
                    None => Err(end.take().unwrap_or_else(|| MessageError::Closed("connection closed".into()))),
                };
                let failed = next.is_err();
                if incoming_tx.send(next).await.is_err() || failed {
                    return;
                }
            }
        });
        let session = Arc::clone(&self.session);
        tasks.spawn(async move {
            let id = session.session_id();
            while let Some(message) = outgoing_rx.recv().await {
                let Ok(mut stream) = session.open_uni(id).await else { return };
                let kind = if message.text { TEXT } else { BINARY };
                let sent = async {
                    stream.write_all(&[kind]).await?;
                    stream.write_all(&message.payload).await?;
                    stream.shutdown().await
                };
                if sent.await.is_err() {
                    return;
                }
            }
        });
        MessagePipe { incoming, outgoing, _tasks: tasks, _done: self.pipe_done_tx.take() }
    }

    /// A receiver whose `changed()` fails once the message pipe has been
    /// dropped (the relay or the message session ended): the owner then
    /// closes the connection, which is how the client learns the session is over.
    pub fn ended_signal(&self) -> tokio::sync::watch::Receiver<()> {
        self.pipe_done.clone()
    }
}

/// The two directions of a session's messages (see [`SessionConnection::messages`]).
pub struct MessagePipe {
    pub incoming: mpsc::Receiver<Result<Message, MessageError>>,
    pub outgoing: mpsc::Sender<Message>,
    _tasks: JoinSet<()>,
    _done: Option<tokio::sync::watch::Sender<()>>,
}

/// A client's message stream, as h3-webtransport accepts it.
type ClientStream = h3_webtransport::stream::RecvStream<h3_quinn::RecvStream, Bytes>;

/// Files an accepted stream under its ID; returns why the session ended instead, if it did.
fn take_stream(
    accepted: Result<Option<(h3_webtransport::SessionId, ClientStream)>, h3::error::ConnectionError>,
    waiting: &mut BTreeMap<u64, ClientStream>,
) -> Option<MessageError> {
    match accepted {
        Ok(Some((_, stream))) => {
            waiting.insert(stream.recv_id().into_inner(), stream);
            None
        }
        Ok(None) => Some(MessageError::Closed("connection closed".into())),
        Err(e) => Some(MessageError::Closed(e.to_string())),
    }
}

/// Polls `future` once: its output if it is ready now.
async fn now<F: Future>(future: F) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    poll_fn(|cx| {
        std::task::Poll::Ready(match future.as_mut().poll(cx) {
            std::task::Poll::Ready(output) => Some(output),
            std::task::Poll::Pending => None,
        })
    })
    .await
}

/// Reads one message stream to its end.
async fn read_message(mut stream: ClientStream, limit: usize) -> Result<Message, MessageError> {
    let mut buf = BytesMut::new();
    loop {
        match poll_fn(|cx| stream.poll_data(cx)).await {
            Ok(Some(chunk)) => {
                if buf.len() + chunk.len() > limit + 1 {
                    stream.stop_sending(0);
                    return Err(MessageError::TooLarge { limit });
                }
                buf.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) => return Err(MessageError::Closed(e.to_string())),
        }
    }
    if buf.is_empty() {
        return Err(MessageError::Malformed("empty stream (no type byte)"));
    }
    let kind = buf[0];
    let payload = buf.split_off(1).freeze();
    match kind {
        TEXT if std::str::from_utf8(&payload).is_err() => Err(MessageError::Malformed("text message is not UTF-8")),
        TEXT => Ok(Message { text: true, payload }),
        BINARY => Ok(Message { text: false, payload }),
        _ => Err(MessageError::Malformed("unknown type byte")),
    }
}
