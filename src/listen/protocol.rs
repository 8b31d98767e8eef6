//! Tells HTTP/1.1 from HTTP/2 on a new connection and serves it with the
//! right server of ours: [`super::http1`] or [`super::http2`].
//!
//! TLS connections that chose `h2` by ALPN go straight to HTTP/2. Any other
//! connection (cleartext, or TLS without ALPN) is told apart by its first
//! bytes: the HTTP/2 connection preface (RFC 9113 §3.4) or anything else,
//! which is HTTP/1.1. The bytes read to decide are not lost: HTTP/1.1 takes
//! them as its read buffer, HTTP/2 gets them replayed.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::{Request, Response};
use tokio::io::{AsyncRead, AsyncWrite};

use super::http1::{Http1Error, ServerConnection, Settings};
use super::http2::{Http2Error, ServerConnection as Http2Server};
use super::proxy_protocol::Rewind;
use crate::body::{Body, ClientBody};

/// What every HTTP/2 connection starts with.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A running HTTP/2 connection, behind a box: its type names the service
/// (a closure), which the box hides.
pub trait Http2Connection: Future<Output = Result<(), Http2Error>> + Send {
    /// Sends GOAWAY and lets the open streams finish.
    fn shutdown_gracefully(self: Pin<&mut Self>);
}

impl<I, S, F> Http2Connection for Http2Server<I, S, F>
where
    I: AsyncRead + AsyncWrite + Unpin + Send,
    S: FnMut(Request<ClientBody>) -> F + Unpin + Send,
    F: Future<Output = Response<Body>> + Unpin + Send,
{
    fn shutdown_gracefully(self: Pin<&mut Self>) {
        self.get_mut().graceful_shutdown();
    }
}

/// Starts HTTP/2 on a connection whose first bytes may have been read already.
pub type StartHttp2<I> = Box<dyn FnOnce(Rewind<I>) -> Pin<Box<dyn Http2Connection>> + Send>;

/// A connection being served, or still being told apart.
pub enum Serving<I, S, F> {
    Sniffing { io: Option<I>, read: BytesMut, start: Option<(S, Settings, StartHttp2<I>)> },
    Http1(Pin<Box<ServerConnection<I, S, F>>>),
    Http2(Pin<Box<dyn Http2Connection>>),
    Closed,
}

/// Why a connection ended badly.
#[derive(Debug)]
pub enum ServeError {
    /// Reading the first bytes failed.
    Io(io::Error),
    Http1(Http1Error),
    Http2(Http2Error),
}

impl std::fmt::Display for ServeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServeError::Io(e) => write!(f, "client connection failed: {e}"),
            ServeError::Http1(e) => e.fmt(f),
            ServeError::Http2(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for ServeError {}

impl<I, S, F> Serving<I, S, F>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: FnMut(Request<ClientBody>) -> F,
    F: Future<Output = Response<Body>>,
{
    /// Serves `io` as HTTP/2 or HTTP/1.1, whichever its first bytes say.
    pub fn detect(io: I, http1: S, settings: Settings, http2: StartHttp2<I>) -> Self {
        Serving::Sniffing { io: Some(io), read: BytesMut::new(), start: Some((http1, settings, http2)) }
    }

    /// Serves `io` as HTTP/2 (TLS chose it by ALPN).
    pub fn http2(io: I, http2: StartHttp2<I>) -> Self {
        Serving::Http2(http2(Rewind::new(Bytes::new(), io)))
    }

    /// Finishes what is in progress, then closes.
    pub fn graceful_shutdown(&mut self) {
        match self {
            // No request has begun.
            Serving::Sniffing { .. } => *self = Serving::Closed,
            Serving::Http1(conn) => conn.as_mut().graceful_shutdown(),
            Serving::Http2(conn) => conn.as_mut().shutdown_gracefully(),
            Serving::Closed => {}
        }
    }

    /// Reads until the first bytes tell the protocol, then switches to it.
    fn poll_sniff(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ServeError>> {
        let Serving::Sniffing { io, read, start } = self else { return Poll::Ready(Ok(())) };
        loop {
            let seen = read.len().min(PREFACE.len());
            let preface = read[..seen] == PREFACE[..seen];
            if !preface || seen == PREFACE.len() {
                let (Some(io), Some((http1, settings, http2))) = (io.take(), start.take()) else {
                    return Poll::Ready(Ok(()));
                };
                let read = std::mem::take(read);
                *self = if preface {
                    Serving::Http2(http2(Rewind::new(read.freeze(), io)))
                } else {
                    Serving::Http1(Box::pin(ServerConnection::new(io, read, http1, settings)))
                };
                return Poll::Ready(Ok(()));
            }
            read.reserve(8 * 1024);
            let Some(stream) = io.as_mut() else { return Poll::Ready(Ok(())) };
            match tokio_util::io::poll_read_buf(Pin::new(stream), cx, read) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) => {
                    *self = Serving::Closed;
                    return Poll::Ready(Ok(()));
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => {
                    *self = Serving::Closed;
                    return Poll::Ready(Err(ServeError::Io(e)));
                }
            }
        }
    }
}

impl<I, S, F> super::limits::Graceful for Serving<I, S, F>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: FnMut(Request<ClientBody>) -> F + Unpin,
    F: Future<Output = Response<Body>>,
{
    type Error = ServeError;

    fn graceful_shutdown(self: Pin<&mut Self>) {
        Serving::graceful_shutdown(self.get_mut());
    }
}

impl<I, S, F> Future for Serving<I, S, F>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: FnMut(Request<ClientBody>) -> F + Unpin,
    F: Future<Output = Response<Body>>,
{
    type Output = Result<(), ServeError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        loop {
            return match this {
                Serving::Sniffing { .. } => {
                    std::task::ready!(this.poll_sniff(cx))?;
                    continue;
                }
                Serving::Http1(conn) => conn.as_mut().poll(cx).map_err(ServeError::Http1),
                Serving::Http2(conn) => conn.as_mut().poll(cx).map_err(ServeError::Http2),
                Serving::Closed => Poll::Ready(Ok(())),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_preface_is_what_http2_clients_send_first() {
        // RFC 9113 §3.4, spelled out: a typo here would send every HTTP/2 client to HTTP/1.1.
        assert_eq!(
            PREFACE,
            &[
                0x50, 0x52, 0x49, 0x20, 0x2a, 0x20, 0x48, 0x54, 0x54, 0x50, 0x2f, 0x32, 0x2e, 0x30, 0x0d, 0x0a, 0x0d,
                0x0a, 0x53, 0x4d, 0x0d, 0x0a, 0x0d, 0x0a
            ]
        );
    }
}
