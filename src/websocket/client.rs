//! The client's side of a WebSocket route, whatever carried it: a WebSocket
//! upgrade (HTTP/1.1 `Upgrade`, RFC 8441 extended CONNECT) or a WebTransport
//! session over HTTP/3. Message mode runs on a [`ClientChannel`] and never
//! learns which; tunnel mode passes a WebSocket's frames unchanged
//! ([`Switched::WebSocket`]) and re-frames a session's messages.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::{Sink, Stream};
use http::{Response, StatusCode};
use tokio::sync::mpsc;
use tollgate_h3::webtransport::{self as wt, MessageError, MessagePipe};
use tollgate_websocket::handshake::{ClientHandshake, Negotiated};
use tollgate_websocket::{Limits, WebSocketStream};
use tungstenite::error::{CapacityError, Error as WsError, ProtocolError};
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, Utf8Bytes};

use super::stream::UpgradedStream;
use crate::listen::http1::PendingUpgrade;
use crate::listen::http2::PendingConnect;
use crate::model::Handoff;

/// Put in a WebTransport CONNECT's extensions by the HTTP/3 listener (the
/// counterpart of `PendingUpgrade`): yields the session's messages once the
/// route has said yes and the listener has opened the session.
pub type WebTransportUpgrade = Handoff<MessagePipe>;

/// Set on a route's answer to a WebTransport CONNECT: the largest message
/// the listener may read from the client.
#[derive(Debug, Clone, Copy)]
pub struct MaxMessageBytes(pub usize);

/// The pending switch of a WebSocket client's connection (HTTP/1.1) or
/// stream (RFC 8441 over HTTP/2), from our servers.
pub enum ClientUpgrade {
    Http1(PendingUpgrade),
    Http2(PendingConnect),
}

/// How the client reached the route.
pub enum ClientSide {
    WebSocket { handshake: ClientHandshake, upgrade: ClientUpgrade },
    WebTransport(WebTransportUpgrade),
}

impl ClientSide {
    /// Our answer that switches protocols (101 or 200), given what the
    /// backend agreed to.
    pub fn response(&self, negotiated: &Negotiated, limits: &Limits) -> Response<()> {
        match self {
            ClientSide::WebSocket { handshake, .. } => {
                tollgate_websocket::handshake::client_response(handshake, negotiated)
            }
            ClientSide::WebTransport(_) => {
                let mut response = Response::new(());
                *response.status_mut() = StatusCode::OK;
                response.extensions_mut().insert(MaxMessageBytes(limits.max_message_bytes));
                response
            }
        }
    }

    /// True when the client's frames can pass to a WebSocket backend
    /// unchanged, extensions included (a WebTransport session's messages
    /// are re-framed, so nothing may be negotiated across it).
    pub fn carries_frames(&self) -> bool {
        matches!(self, ClientSide::WebSocket { .. })
    }

    /// Waits for the switch to happen.
    pub async fn switch(self) -> Option<Switched> {
        match self {
            ClientSide::WebSocket { upgrade, .. } => {
                let io = match upgrade {
                    ClientUpgrade::Http1(upgrade) => upgrade.wait().await.map(UpgradedStream::from),
                    ClientUpgrade::Http2(upgrade) => upgrade.wait().await.map(UpgradedStream::Http2),
                };
                Some(Switched::WebSocket(io?))
            }
            ClientSide::WebTransport(upgrade) => {
                let pipe = upgrade.wait().await?;
                Some(Switched::WebTransport(WebTransportChannel::new(pipe)))
            }
        }
    }

    /// Waits for the switch to happen and frames the client's side as messages.
    pub async fn open(self, limits: &Limits) -> Option<ClientChannel> {
        Some(self.switch().await?.into_channel(limits).await)
    }
}

/// The client's side once switched.
pub enum Switched {
    /// The upgraded connection (HTTP/1.1) or stream (RFC 8441), carrying frames.
    WebSocket(UpgradedStream),
    /// A WebTransport session's messages.
    WebTransport(WebTransportChannel),
}

impl Switched {
    /// The client's messages, parsed from frames if need be.
    pub async fn into_channel(self, limits: &Limits) -> ClientChannel {
        match self {
            Switched::WebSocket(io) => ClientChannel::WebSocket(tollgate_websocket::server_stream(io, limits).await),
            Switched::WebTransport(channel) => ClientChannel::WebTransport(channel),
        }
    }
}

/// The client's messages, from either carrier (one per session, made once).
#[allow(clippy::large_enum_variant)]
pub enum ClientChannel {
    WebSocket(WebSocketStream<UpgradedStream>),
    WebTransport(WebTransportChannel),
}

impl Stream for ClientChannel {
    type Item = Result<Message, WsError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.get_mut() {
            ClientChannel::WebSocket(ws) => Pin::new(ws).poll_next(cx),
            ClientChannel::WebTransport(wt) => Pin::new(wt).poll_next(cx),
        }
    }
}

impl Sink<Message> for ClientChannel {
    type Error = WsError;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        match self.get_mut() {
            ClientChannel::WebSocket(ws) => Pin::new(ws).poll_ready(cx),
            ClientChannel::WebTransport(wt) => Pin::new(wt).poll_ready(cx),
        }
    }

    fn start_send(self: Pin<&mut Self>, item: Message) -> Result<(), WsError> {
        match self.get_mut() {
            ClientChannel::WebSocket(ws) => Pin::new(ws).start_send(item),
            ClientChannel::WebTransport(wt) => Pin::new(wt).start_send(item),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        match self.get_mut() {
            ClientChannel::WebSocket(ws) => Pin::new(ws).poll_flush(cx),
            ClientChannel::WebTransport(wt) => Pin::new(wt).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        match self.get_mut() {
            ClientChannel::WebSocket(ws) => Pin::new(ws).poll_close(cx),
            ClientChannel::WebTransport(wt) => Pin::new(wt).poll_close(cx),
        }
    }
}

/// Waiting for room in the outgoing channel.
type Reserving = Pin<Box<dyn Future<Output = Result<mpsc::OwnedPermit<wt::Message>, ()>> + Send>>;

/// A WebTransport session's messages as WebSocket messages. Control frames
/// have no WebTransport counterpart: pings and pongs are dropped (QUIC keeps
/// the connection alive); a close frame we send closes the session with a
/// CLOSE_WEBTRANSPORT_SESSION capsule carrying its code and reason (see
/// `session_close`), after the messages sent before it; and the client's
/// close of its session arrives as a close frame.
pub struct WebTransportChannel {
    /// The session's messages; dropping it without a close ends the
    /// session's connection (the client hears the end, without a code).
    pipe: MessagePipe,
    /// Our handle on `pipe.outgoing`; `None` once we sent a close.
    outgoing: Option<mpsc::Sender<wt::Message>>,
    /// A permit being waited for, so `poll_ready` can pend.
    reserving: Option<Reserving>,
    permit: Option<mpsc::OwnedPermit<wt::Message>>,
    ended: bool,
}

impl WebTransportChannel {
    fn new(pipe: MessagePipe) -> Self {
        let outgoing = Some(pipe.outgoing.clone());
        Self { pipe, outgoing, reserving: None, permit: None, ended: false }
    }
}

impl Stream for WebTransportChannel {
    type Item = Result<Message, WsError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.ended {
            return Poll::Ready(None);
        }
        let next = match self.pipe.incoming.poll_recv(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(next) => next,
        };
        Poll::Ready(Some(match next {
            Some(Ok(wt::Message { text: true, payload })) => match Utf8Bytes::try_from(payload) {
                Ok(text) => Ok(Message::Text(text)),
                Err(e) => Err(WsError::Utf8(e.to_string())),
            },
            Some(Ok(wt::Message { text: false, payload })) => Ok(Message::Binary(payload)),
            Some(Err(MessageError::TooLarge { limit })) => {
                self.ended = true;
                Err(WsError::Capacity(CapacityError::MessageTooLong { size: limit + 1, max_size: limit }))
            }
            Some(Err(MessageError::Malformed(_))) => {
                self.ended = true;
                Err(WsError::Protocol(ProtocolError::InvalidOpcode(0)))
            }
            // The client closed its session: to the relay and message mode,
            // the client's close frame (so the backend gets the same code).
            Some(Err(MessageError::ClosedByClient(close))) => {
                self.ended = true;
                Ok(Message::Close(close.as_ref().map(close_frame)))
            }
            // The session ended: to the relay, a client gone without a close frame.
            Some(Err(MessageError::Closed(_))) | None => {
                self.ended = true;
                Err(WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake))
            }
        }))
    }
}

impl Sink<Message> for WebTransportChannel {
    type Error = WsError;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        if self.permit.is_some() {
            return Poll::Ready(Ok(()));
        }
        if self.reserving.is_none() {
            let Some(tx) = self.outgoing.clone() else { return Poll::Ready(Err(WsError::AlreadyClosed)) };
            self.reserving = Some(Box::pin(async move { tx.reserve_owned().await.map_err(|_| ()) }));
        }
        let reserving = self.reserving.as_mut().expect("set above");
        match reserving.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(permit)) => {
                self.reserving = None;
                self.permit = Some(permit);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(())) => {
                self.reserving = None;
                Poll::Ready(Err(WsError::ConnectionClosed))
            }
        }
    }

    fn start_send(mut self: Pin<&mut Self>, item: Message) -> Result<(), WsError> {
        let message = match item {
            Message::Text(text) => wt::Message { text: true, payload: text.into() },
            Message::Binary(payload) => wt::Message { text: false, payload },
            Message::Close(frame) => {
                self.close(frame.as_ref());
                return Ok(());
            }
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => return Ok(()),
        };
        match self.permit.take() {
            Some(permit) => {
                permit.send(message);
                Ok(())
            }
            None => Err(WsError::ConnectionClosed),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        Poll::Ready(Ok(()))
    }

    /// Closes the session as a `Message::Close(None)` would, if no close
    /// was sent yet (as closing a WebSocket sink sends a close frame).
    fn poll_close(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        self.close(None);
        Poll::Ready(Ok(()))
    }
}

impl WebTransportChannel {
    /// Our close of the session: the pipe sends the capsule once the
    /// messages already sent are through; nothing is sent after it.
    fn close(&mut self, frame: Option<&CloseFrame>) {
        if self.outgoing.take().is_some() {
            self.reserving = None;
            self.permit = None;
            self.pipe.close(session_close(frame));
        }
    }
}

/// The CLOSE_WEBTRANSPORT_SESSION standing for a close frame we send the
/// client (the backend's close, or ours: 1011, 1014, 1001...): its code as
/// the 32-bit application error code and its reason as the message, so a
/// page's `transport.closed` resolves with `{closeCode: 4002, reason:
/// 'backend done'}` when the backend closed with 4002 "backend done".
///
/// A close frame without a code (`Message::Close(None)`, a backend's empty
/// close) becomes a capsule with code 0 and an empty message: what a
/// WebTransport close carries by default (`transport.close()` sends the
/// same), and what Chromium reports for it, `{closeCode: 0, reason: ''}`.
/// A capsule rather than a bare FIN, which Chromium reports the same way,
/// so every close we send takes one path and one form.
fn session_close(frame: Option<&CloseFrame>) -> wt::SessionClose {
    match frame {
        Some(frame) => wt::SessionClose { code: u32::from(u16::from(frame.code)), reason: frame.reason.to_string() },
        None => wt::SessionClose { code: 0, reason: String::new() },
    }
}

/// The WebSocket close frame standing for a client's CLOSE_WEBTRANSPORT_SESSION
/// capsule: its code if it is one a WebSocket close frame may carry, its
/// message cut to what fits one (RFC 6455 §5.5: 123 bytes).
fn close_frame(close: &wt::SessionClose) -> CloseFrame {
    CloseFrame {
        code: CloseCode::from(websocket_close_code(close.code)),
        reason: Utf8Bytes::from(close_reason(&close.reason)),
    }
}

/// Largest close reason a WebSocket close frame carries (125-byte control
/// payload less the 2-byte code, RFC 6455 §5.5).
const MAX_CLOSE_REASON: usize = 123;

/// A WebTransport application error code (32 bits) as a WebSocket close
/// code: codes a close frame may carry (RFC 6455 §7.4: 1000–1003, 1007–1014
/// as registered with IANA, 3000–4999 for libraries and applications) pass
/// unchanged, so a page's `close({closeCode: 4000})` reaches the backend as
/// 4000; anything else (0, the WebTransport default, reserved codes, codes
/// past 4999) becomes 1000, a normal close.
fn websocket_close_code(code: u32) -> u16 {
    let sendable = |code: &u16| matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
    u16::try_from(code).ok().filter(sendable).unwrap_or(1000)
}

/// `reason` cut at a character boundary to fit a close frame.
fn close_reason(reason: &str) -> String {
    let mut end = reason.len().min(MAX_CLOSE_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webtransport_close_codes_map_to_websocket_close_codes() {
        for code in [1000, 1001, 1003, 1007, 1011, 1014, 3000, 4000, 4999] {
            assert_eq!(u32::from(websocket_close_code(code)), code);
        }
        for code in [0, 1, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65_535, 65_536, u32::MAX] {
            assert_eq!(websocket_close_code(code), 1000, "{code}");
        }
    }

    #[test]
    fn our_close_frames_become_session_closes_with_the_same_code() {
        let frame = CloseFrame { code: CloseCode::from(4002), reason: Utf8Bytes::from_static("backend done") };
        assert_eq!(session_close(Some(&frame)), wt::SessionClose { code: 4002, reason: "backend done".into() });
        for code in [1001u16, 1011, 1014] {
            let frame = CloseFrame { code: CloseCode::from(code), reason: Utf8Bytes::from_static("") };
            assert_eq!(session_close(Some(&frame)).code, u32::from(code));
        }
        assert_eq!(session_close(None), wt::SessionClose { code: 0, reason: String::new() });
    }

    #[test]
    fn close_reasons_are_cut_to_a_close_frame_at_a_character_boundary() {
        assert_eq!(close_reason("bye"), "bye");
        let long = "é".repeat(100); // 200 bytes, 2 per character
        let cut = close_reason(&long);
        assert_eq!(cut.len(), 122);
        assert!(long.starts_with(&cut));
        let frame = close_frame(&wt::SessionClose { code: 4000, reason: "x".repeat(500) });
        assert_eq!((u16::from(frame.code), frame.reason.len()), (4000, MAX_CLOSE_REASON));
    }
}
