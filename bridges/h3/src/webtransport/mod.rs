//! WebTransport over HTTP/3 (draft-ietf-webtrans-http3-02, what Chromium
//! speaks), carried as a stream of messages so the WebSocket bridge can
//! relay them like WebSocket messages.
//!
//! The session layer is ours, on h3's extension API (the
//! `i-implement-a-third-party-backend-and-opt-into-breaking-changes`
//! feature): we keep the CONNECT stream, so the client's close (a
//! CLOSE_WEBTRANSPORT_SESSION capsule, or a FIN or reset of that stream,
//! draft-02 §5) ends the session at once; h3-webtransport 0.1 kept that
//! stream private and never read it.
//!
//! Message framing (ours; the README documents it for client authors): each
//! message travels on a unidirectional stream of its own — one type byte
//! (`0x01` UTF-8 text, `0x02` binary), then the payload, then FIN.
//! The client's streams are read one at a time in stream-ID order, so
//! messages keep the order in which the client opened their streams; ours
//! are opened one after another in the order the messages come.
//!
//! Our close ([`MessagePipe::close`], what a WebSocket close frame for the
//! client becomes) is the client's in reverse: a CLOSE_WEBTRANSPORT_SESSION
//! capsule and FIN on the CONNECT stream, after the messages before it.

mod capsule;
mod session;
mod streams;

use bytes::Bytes;
use h3::ext::Protocol;
use h3::server::RequestStream;
use http::{Method, Request, Response};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;

use crate::error::SendError;
use crate::respond::Responder;

pub use capsule::SessionClose;
pub use session::SessionConnection;

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
    /// The message's bytes, type byte removed.
    pub payload: Bytes,
}

/// Why the client's side of a session stopped yielding messages.
#[derive(Debug)]
pub enum MessageError {
    /// A message over the size limit.
    TooLarge { limit: usize },
    /// A stream without a known type byte, text that is not UTF-8, or a
    /// malformed capsule on the CONNECT stream.
    Malformed(&'static str),
    /// The client closed the session: with its code and message when it sent
    /// a CLOSE_WEBTRANSPORT_SESSION capsule, `None` when it only finished or
    /// reset the CONNECT stream (draft-02 §5). The WebSocket side treats it
    /// as the client's close frame.
    ClosedByClient(Option<SessionClose>),
    /// The session's connection ended or failed without a close.
    Closed(String),
}

impl std::fmt::Display for MessageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MessageError::TooLarge { limit } => write!(f, "WebTransport message over {limit} bytes"),
            MessageError::Malformed(what) => write!(f, "malformed WebTransport message: {what}"),
            MessageError::ClosedByClient(Some(close)) => {
                write!(f, "client closed the WebTransport session: {} {:?}", close.code, close.reason)
            }
            MessageError::ClosedByClient(None) => f.write_str("client ended the WebTransport session's CONNECT stream"),
            MessageError::Closed(why) => write!(f, "WebTransport session ended: {why}"),
        }
    }
}

impl std::error::Error for MessageError {}

/// The two directions of a session's messages (see [`SessionConnection::messages`]).
pub struct MessagePipe {
    /// The client's messages, in the order it opened their streams; an
    /// error (a [`MessageError::ClosedByClient`] when the client closed),
    /// then nothing, when its side ends.
    pub incoming: mpsc::Receiver<Result<Message, MessageError>>,
    /// Messages for the client, each sent on a stream of its own.
    pub outgoing: mpsc::Sender<Message>,
    /// Where [`MessagePipe::close`] tells the writer to close; `None` once told.
    closing: Option<oneshot::Sender<session::CloseRequest>>,
    /// The writer: aborted with the pipe, unless it is closing the session.
    writer: session::Writer,
    /// The reader; dropped (aborted) with the pipe.
    _tasks: JoinSet<()>,
    /// Dropped with the pipe (or, once closing, by the writer when its
    /// capsule is out), which tells the connection's owner the session is over.
    done: Option<watch::Sender<()>>,
}

impl MessagePipe {
    /// Closes the session from our side, the way a WebSocket close frame
    /// closes a WebSocket (draft-02 §5): once every message already sent into
    /// [`MessagePipe::outgoing`] has been sent and acknowledged by the client,
    /// a CLOSE_WEBTRANSPORT_SESSION capsule with `close`'s code and message
    /// (cut to 1024 bytes) goes on the CONNECT stream, then its FIN. A
    /// browser's `transport.closed` then resolves with
    /// `{closeCode: code, reason}`; without this, the only end it could see
    /// was the connection's, and no code.
    ///
    /// Send nothing after this: a message sent after it may still go out
    /// before the capsule, or not at all (the channel is closed as soon as
    /// the writer takes the close). The pipe may be dropped at once: the
    /// writer finishes on its own (within a few seconds even if the client
    /// stops reading), and only then does [`SessionConnection::ended_signal`]
    /// fire, so the connection is not closed under the capsule. The client's
    /// side keeps arriving on [`MessagePipe::incoming`] meanwhile (its answer
    /// is a FIN of its own, [`MessageError::ClosedByClient`]`(None)`). A
    /// second call does nothing.
    pub fn close(&mut self, close: SessionClose) {
        let request = session::CloseRequest { close, _done: self.done.take() };
        // If the writer is gone (the connection failed), the request and the
        // end signal drop here: the owner closes the connection as before.
        if let Some(closing) = self.closing.take()
            && closing.send(request).is_ok()
        {
            self.writer.detach();
        }
    }
}
