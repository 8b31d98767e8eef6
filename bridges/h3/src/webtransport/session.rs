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
//!
//! The writer runs in a task of its own: aborted when the message pipe is
//! dropped, unless it was asked to close the session (then it sends what
//! was queued, waits for the client's acknowledgements, sends the capsule,
//! all bounded by [`CLOSE_LINGER`], and only then lets the owner know).

use std::collections::BTreeMap;
use std::future::poll_fn;
use std::sync::{Arc, Mutex, PoisonError};
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
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;

use super::capsule::{CapsuleReader, SessionClose};
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

/// How long our close may take, from [`MessagePipe::close`] to the capsule:
/// the messages queued before it sent and acknowledged. A client that
/// stops reading must not keep the session, and its connection, open: past
/// this, what is left is dropped (streams reset) and the capsule goes anyway.
const CLOSE_LINGER: Duration = Duration::from_secs(5);

/// How long our close waits after the last message stream went out, on top
/// of its acknowledgement: acknowledged is not read. A client drops a closed
/// session's streams, Chromium even those it has received but its page has
/// not read yet, so a close right behind the last reply can cost the page
/// the replies. Bounded by [`CLOSE_LINGER`], and no wait at all when the
/// last message went out longer ago than this.
const READ_GRACE: Duration = Duration::from_millis(250);

/// How long the capsule itself may take to be handed to QUIC (it is a few
/// bytes; only a client that gives the CONNECT stream no credit delays it).
const CAPSULE_WAIT: Duration = Duration::from_secs(1);

/// Our half of the CONNECT stream, shared by the connection (which keeps it
/// open as long as the session is: finishing it would end the session,
/// draft-02 §5) and the writer (which takes it to send our close).
type ConnectSend = Arc<Mutex<Option<RequestStream<h3_quinn::SendStream<Bytes>, Bytes>>>>;

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
    /// Our half of the CONNECT stream; held here so it stays open (without
    /// a FIN) until the connection ends, unless the writer closes the session.
    connect_send: ConnectSend,
    /// The client's half, until [`SessionConnection::messages`] watches it.
    connect_recv: Option<RequestStream<h3_quinn::RecvStream, Bytes>>,
    /// The session's streams, from [`SessionConnection::accept`] to the
    /// reader. Unbounded, yet bounded by QUIC: a stream held here is not
    /// done, so the client gets no credit for more (MAX_STREAMS).
    streams_tx: mpsc::UnboundedSender<ClientStream>,
    streams_rx: Option<mpsc::UnboundedReceiver<ClientStream>>,
    /// Flips when the [`MessagePipe`] is dropped, or when our close has
    /// been sent: the session is over.
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
            connect_send: Arc::new(Mutex::new(Some(send))),
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
    /// on either side slows the other. Dropping the pipe stops both, unless
    /// [`MessagePipe::close`] was called: then the writer finishes the close.
    ///
    /// Call once (a second pipe's `incoming` ends at once);
    /// [`SessionConnection::ended_signal`] tells when the session is over.
    pub fn messages(&mut self, max_message_bytes: usize) -> MessagePipe {
        let (incoming_tx, incoming) = mpsc::channel(8);
        let (outgoing, outgoing_rx) = mpsc::channel::<Message>(8);
        let (closing, closing_rx) = oneshot::channel();
        let mut tasks = JoinSet::new();
        if let (Some(streams), Some(connect)) = (self.streams_rx.take(), self.connect_recv.take()) {
            tasks.spawn(read_client(streams, connect, incoming_tx, max_message_bytes));
        }
        let writer = stream_header(self.session_id).map(|header| {
            let quic = self.quic.clone();
            let connect = Arc::clone(&self.connect_send);
            tokio::spawn(write_client(quic, header, outgoing_rx, closing_rx, connect)).abort_handle()
        });
        MessagePipe {
            incoming,
            outgoing,
            closing: Some(closing),
            writer: Writer(writer),
            _tasks: tasks,
            done: self.pipe_done_tx.take(),
        }
    }

    /// A receiver whose `changed()` fails once the session is over: the
    /// message pipe dropped (the relay or the message session ended), or,
    /// after [`MessagePipe::close`], our capsule sent. The owner then closes
    /// the connection (H3_NO_ERROR, once it is quiet), which is how a client
    /// learns of an end without a capsule.
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

/// The writer task's handle, held by the pipe: aborts the writer when the
/// pipe is dropped, unless [`Writer::detach`] was called (the writer is
/// closing the session and ends by itself, within [`CLOSE_LINGER`]).
pub(super) struct Writer(Option<AbortHandle>);

impl Writer {
    /// Lets the writer outlive the pipe.
    pub(super) fn detach(&mut self) {
        self.0 = None;
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if let Some(writer) = self.0.take() {
            writer.abort();
        }
    }
}

/// What [`MessagePipe::close`] hands the writer.
pub(super) struct CloseRequest {
    /// The code and message of our capsule.
    pub(super) close: SessionClose,
    /// The pipe's end signal, dropped with the request once the capsule is
    /// out (or the writer gives up): the owner may close the connection then.
    pub(super) _done: Option<watch::Sender<()>>,
}

/// The writer: each message for the client on a new stream, in order; then,
/// if asked, our close: the messages queued before it, their acknowledgements,
/// [`READ_GRACE`] for the client to read them, the capsule and FIN, within
/// [`CLOSE_LINGER`].
async fn write_client(
    quic: quinn::Connection,
    header: Bytes,
    mut outgoing: mpsc::Receiver<Message>,
    mut closing: oneshot::Receiver<CloseRequest>,
    connect: ConnectSend,
) {
    // Streams sent, until the client has acknowledged them.
    let mut acks = JoinSet::new();
    // The close, once asked for, and when it must go out at the latest.
    let mut close: Option<(CloseRequest, Instant)> = None;
    // When the last message stream was finished.
    let mut last_written: Option<Instant> = None;
    loop {
        let message = if close.is_some() {
            match outgoing.try_recv() {
                Ok(message) => message,
                Err(_) => break,
            }
        } else {
            // Biased: a close is taken at once, so its deadline starts then;
            // the messages before it are still in the channel.
            tokio::select! {
                biased;
                request = &mut closing => match request {
                    Ok(request) => {
                        start_closing(&mut outgoing, &mut close, request);
                        continue;
                    }
                    // The pipe is gone without a close (the abort is on its way).
                    Err(_) => return,
                },
                message = outgoing.recv() => match message {
                    Some(message) => message,
                    // Every sender is gone: the pipe was dropped, just after its close or without one.
                    None => match (&mut closing).await {
                        Ok(request) => {
                            start_closing(&mut outgoing, &mut close, request);
                            continue;
                        }
                        Err(_) => return,
                    },
                },
            }
        };
        let mut write = std::pin::pin!(write_message(&quic, &header, message));
        let written = loop {
            tokio::select! {
                biased;
                written = &mut write => break written,
                request = &mut closing, if close.is_none() => match request {
                    Ok(request) => start_closing(&mut outgoing, &mut close, request),
                    Err(_) => return,
                },
                // Out of time: this message is dropped (its stream reset) and the rest skipped.
                () = until(close.as_ref().map(|(_, deadline)| *deadline)) => break Err(()),
            }
        };
        match written {
            Ok(acknowledged) => {
                last_written = Some(Instant::now());
                acks.spawn(acknowledged);
                while acks.try_join_next().is_some() {}
            }
            // The connection cannot take more; a close is still tried (it fails as fast).
            Err(()) if close.is_some() => break,
            Err(()) => return,
        }
    }
    let Some((request, deadline)) = close else { return };
    // A client drops a closed session's streams (draft-02 §5), so the close
    // waits until it has them all.
    let _ = tokio::time::timeout_at(deadline, async { while acks.join_next().await.is_some() {} }).await;
    if let Some(written) = last_written {
        tokio::time::sleep_until((written + READ_GRACE).min(deadline)).await;
    }
    let _ = tokio::time::timeout(CAPSULE_WAIT, send_close(&connect, &request.close)).await;
    // `request` drops here, with the end signal.
}

/// Takes the close: no message after it is taken (the channel is closed;
/// those already queued still go), and its deadline starts.
fn start_closing(
    outgoing: &mut mpsc::Receiver<Message>,
    close: &mut Option<(CloseRequest, Instant)>,
    request: CloseRequest,
) {
    outgoing.close();
    *close = Some((request, Instant::now() + CLOSE_LINGER));
}

/// Sends our CLOSE_WEBTRANSPORT_SESSION capsule in a DATA frame on the
/// CONNECT stream, then FIN (draft-02 §5: nothing may follow the capsule).
async fn send_close(connect: &ConnectSend, close: &SessionClose) -> Result<(), StreamError> {
    let taken = connect.lock().unwrap_or_else(PoisonError::into_inner).take();
    let Some(mut stream) = taken else { return Ok(()) };
    stream.send_data(close.to_capsule()).await?;
    stream.finish().await
}

/// Resolves at `deadline`; never without one.
async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
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
