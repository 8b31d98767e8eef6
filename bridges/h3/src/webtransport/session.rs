//! A connection that carries one WebTransport session (draft-02): the 200
//! to the CONNECT, the client's unidirectional streams filed for the
//! session, its CONNECT stream watched for the close, ordinary requests
//! still served.
//!
//! One task drives the connection (the owner calling
//! [`SessionConnection::accept`]): h3 accepts every unidirectional stream
//! while it looks for requests, and this task hands the session's streams
//! to the message reader over a channel, so the reader needs no lock and
//! no wake-up of its own.

use std::collections::BTreeMap;
use std::future::poll_fn;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use h3::error::StreamError;
use h3::frame::FrameStream;
use h3::quic::RecvStream as _;
use h3::server::RequestStream;
use h3::stream::BufRecvStream;
use h3::webtransport::SessionId;
use http::{HeaderName, HeaderValue, Response};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use super::capsule::CapsuleReader;
use super::streams::{ClientStream, ReadFailure, read_message, stream_header, write_message};
use super::{Message, MessageError, MessagePipe, SessionRequest};
use crate::connection::Incoming;
use crate::error::H3Error;

/// The response header Chromium needs to take the 200 as a draft-02 session.
const DRAFT_HEADER: HeaderName = HeaderName::from_static("sec-webtransport-http3-draft");

/// WEBTRANSPORT_BUFFERED_STREAM_REJECTED (draft-02 §4.4): the code that
/// stops a stream naming a session we do not have.
const BUFFERED_STREAM_REJECTED: u64 = 0x3994_bd84;

/// How long a message stream reset by the client may wait for the close
/// that probably caused it (the client resets its streams when it closes
/// the session, draft-02 §5, and the reset can overtake the capsule).
const CLOSE_GRACE: Duration = Duration::from_millis(300);

/// A connection that carries a WebTransport session; it still serves
/// ordinary HTTP/3 requests.
pub struct SessionConnection {
    conn: h3::server::Connection<h3_quinn::Connection, Bytes>,
    /// Our server-opened streams go out on quinn directly.
    quic: quinn::Connection,
    /// The CONNECT stream's ID, which names the session on its streams.
    session_id: u64,
    /// The same as h3 reports it on accepted streams (`None` cannot happen:
    /// a stream ID always fits a varint; then no stream would match).
    session: Option<SessionId>,
    /// Our half of the CONNECT stream, open as long as the session is:
    /// finishing it would end the session (draft-02 §5).
    _connect_send: RequestStream<h3_quinn::SendStream<Bytes>, Bytes>,
    /// The client's half, until [`SessionConnection::messages`] watches it.
    connect_recv: Option<RequestStream<h3_quinn::RecvStream, Bytes>>,
    /// The session's streams, from [`SessionConnection::accept`] to the
    /// reader. Unbounded, yet bounded by QUIC: a stream held here is not
    /// done, so the client gets no credit for more (MAX_STREAMS).
    streams_tx: mpsc::UnboundedSender<ClientStream>,
    streams_rx: Option<mpsc::UnboundedReceiver<ClientStream>>,
    /// Flips when the [`MessagePipe`] is dropped: the session is over.
    pipe_done: watch::Receiver<()>,
    pipe_done_tx: Option<watch::Sender<()>>,
}

impl SessionConnection {
    /// Answers the CONNECT with 200 and takes over the connection.
    pub(crate) async fn open(
        request: SessionRequest,
        conn: h3::server::Connection<h3_quinn::Connection, Bytes>,
        quic: quinn::Connection,
    ) -> Result<Self, H3Error> {
        let mut stream = request.stream;
        let mut response = Response::new(());
        response.headers_mut().insert(DRAFT_HEADER, HeaderValue::from_static("draft02"));
        stream.send_response(response).await.map_err(H3Error::Stream)?;
        let session_id = stream.id().into_inner();
        let (send, recv) = stream.split();
        let (streams_tx, streams_rx) = mpsc::unbounded_channel();
        let (pipe_done_tx, pipe_done) = watch::channel(());
        Ok(Self {
            conn,
            quic,
            session_id,
            session: SessionId::try_from(session_id).ok(),
            _connect_send: send,
            connect_recv: Some(recv),
            streams_tx,
            streams_rx: Some(streams_rx),
            pipe_done,
            pipe_done_tx: Some(pipe_done_tx),
        })
    }

    /// The next HTTP request on this connection, or `None` once the client
    /// has said GOAWAY and its requests are done. Keep calling it: it also
    /// drives the control stream and hands the session's message streams
    /// to the reader. Cancel-safe (it only polls).
    pub async fn accept(&mut self) -> Result<Option<Incoming>, H3Error> {
        poll_fn(|cx| self.poll_accept(cx)).await
    }

    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Incoming>, H3Error>> {
        let accepted = self.conn.poll_accept_request_stream(cx);
        let filed = self.conn.inner.poll_accept_recv(cx);
        for (id, mut stream) in self.conn.inner.accepted_streams_mut().wt_uni_streams.drain(..) {
            if self.session == Some(id) {
                if let Err(mpsc::error::SendError(mut stream)) = self.streams_tx.send(stream) {
                    // The session is over; the stream will never be read.
                    stream.stop_sending(BUFFERED_STREAM_REJECTED);
                }
            } else {
                stream.stop_sending(BUFFERED_STREAM_REJECTED);
            }
        }
        if let Err(e) = filed {
            return Poll::Ready(Err(H3Error::Connection(e)));
        }
        match accepted {
            Poll::Ready(Ok(Some(stream))) => {
                // As h3's own accept does: grease goes on the first response only.
                let resolver = self.conn.create_resolver(FrameStream::new(BufRecvStream::new(stream)));
                self.conn.inner.send_grease_frame = false;
                Poll::Ready(Ok(Some(Incoming::new(resolver))))
            }
            Poll::Ready(Ok(None)) => Poll::Ready(Ok(None)),
            Poll::Ready(Err(e)) => Poll::Ready(Err(H3Error::Connection(e))),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Starts moving messages: the client's arrive on the returned receiver
    /// (an error, then nothing, when its side ends; a close of the session
    /// is [`MessageError::ClosedByClient`]); messages sent into the returned
    /// sender go to the client. The channels are bounded, so a slow reader
    /// on either side slows the other. Dropping the pipe stops both.
    ///
    /// Call once (a second pipe's `incoming` ends at once);
    /// [`SessionConnection::ended_signal`] tells when the pipe is dropped.
    pub fn messages(&mut self, max_message_bytes: usize) -> MessagePipe {
        let (incoming_tx, incoming) = mpsc::channel(8);
        let (outgoing, outgoing_rx) = mpsc::channel::<Message>(8);
        let mut tasks = JoinSet::new();
        if let (Some(streams), Some(connect)) = (self.streams_rx.take(), self.connect_recv.take()) {
            tasks.spawn(read_client(streams, connect, incoming_tx, max_message_bytes));
        }
        if let Some(header) = stream_header(self.session_id) {
            tasks.spawn(write_client(self.quic.clone(), header, outgoing_rx));
        }
        MessagePipe { incoming, outgoing, _tasks: tasks, _done: self.pipe_done_tx.take() }
    }

    /// A receiver whose `changed()` fails once the message pipe has been
    /// dropped (the relay or the message session ended): the owner then
    /// closes the connection, which is how the client learns the session is over.
    pub fn ended_signal(&self) -> watch::Receiver<()> {
        self.pipe_done.clone()
    }
}

/// The reader: the client's messages in stream-ID order, until the session
/// ends; its end (the CONNECT stream's) is watched all along.
async fn read_client(
    mut streams: mpsc::UnboundedReceiver<ClientStream>,
    connect: RequestStream<h3_quinn::RecvStream, Bytes>,
    incoming: mpsc::Sender<Result<Message, MessageError>>,
    limit: usize,
) {
    // Accepted streams not read yet, by stream ID: of the streams that are
    // there, the lowest ID is read first.
    let mut waiting = BTreeMap::new();
    let mut end = std::pin::pin!(session_end(connect));
    loop {
        while let Ok(stream) = streams.try_recv() {
            waiting.insert(stream.recv_id().into_inner(), stream);
        }
        // Biased: messages the client sent before closing still go through.
        let next = match waiting.pop_first() {
            Some((_, stream)) => tokio::select! {
                biased;
                read = read_message(stream, limit) => match read {
                    Ok(message) => Ok(message),
                    Err(ReadFailure::Message(e)) => Err(e),
                    Err(ReadFailure::Stream(why)) => {
                        Err(tokio::time::timeout(CLOSE_GRACE, &mut end).await.unwrap_or(MessageError::Closed(why)))
                    }
                },
                ended = &mut end => Err(ended),
            },
            None => tokio::select! {
                biased;
                stream = streams.recv() => match stream {
                    Some(stream) => {
                        waiting.insert(stream.recv_id().into_inner(), stream);
                        continue;
                    }
                    // The connection's owner is gone: the connection ended. A
                    // close that arrived just before it still counts.
                    None => Err(now(&mut end).await.unwrap_or_else(|| MessageError::Closed("connection closed".into()))),
                },
                ended = &mut end => Err(ended),
            },
        };
        let failed = next.is_err();
        if incoming.send(next).await.is_err() || failed {
            return;
        }
    }
}

/// Reads the client's half of the CONNECT stream until the session ends:
/// its CLOSE_WEBTRANSPORT_SESSION capsule, or the stream's FIN or reset
/// (draft-02 §5: both close the session).
async fn session_end(mut connect: RequestStream<h3_quinn::RecvStream, Bytes>) -> MessageError {
    let mut capsules = CapsuleReader::new();
    loop {
        match connect.recv_data().await {
            Ok(Some(data)) => match capsules.push(data) {
                Ok(Some(close)) => return MessageError::ClosedByClient(Some(close)),
                Ok(None) => {}
                Err(e) => return MessageError::Malformed(e.as_str()),
            },
            // FIN (or trailers, which end the stream's data all the same).
            Ok(None) => {
                return match capsules.finish() {
                    Ok(()) => MessageError::ClosedByClient(None),
                    Err(e) => MessageError::Malformed(e.as_str()),
                };
            }
            Err(StreamError::RemoteTerminate { .. }) => return MessageError::ClosedByClient(None),
            Err(e) => return MessageError::Closed(e.to_string()),
        }
    }
}

/// The writer: each message for the client on a new stream, in order.
async fn write_client(quic: quinn::Connection, header: Bytes, mut outgoing: mpsc::Receiver<Message>) {
    while let Some(message) = outgoing.recv().await {
        if write_message(&quic, &header, message).await.is_err() {
            return;
        }
    }
}

/// Polls `future` once: its output if it is ready now.
async fn now<F: Future + Unpin>(future: F) -> Option<F::Output> {
    let mut future = future;
    poll_fn(|cx| {
        Poll::Ready(match std::pin::Pin::new(&mut future).poll(cx) {
            Poll::Ready(output) => Some(output),
            Poll::Pending => None,
        })
    })
    .await
}
