//! An HTTP/2 stream as a byte stream, for a CONNECT our server accepted
//! (RFC 8441 WebSocket): what the client sends in DATA frames is read, what
//! is written goes out in DATA frames, under the stream's flow control.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use h2::Reason;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::http2::{Error, RecvHalf, SendHalf};
use crate::model::Handoff;

/// In a CONNECT request's extensions: yields the stream once our 2xx
/// answer has been sent (`None` if the answer was anything else).
pub type PendingConnect = Handoff<StreamIo>;

/// See the module doc. The connection's task keeps driving the socket; this
/// only moves bytes in and out of the stream.
pub struct StreamIo {
    send: SendHalf,
    recv: RecvHalf,
    /// The rest of the last DATA frame read.
    unread: Bytes,
    shut_down: bool,
}

impl StreamIo {
    pub(super) fn new(send: SendHalf, recv: RecvHalf) -> Self {
        Self { send, recv, unread: Bytes::new(), shut_down: false }
    }
}

/// A reset with NO_ERROR or CANCEL is how a peer ends a tunnel stream; any
/// other reason (or connection failure) is an error.
fn ended_or_error(e: Error) -> io::Result<()> {
    match e.reason() {
        Some(Reason::NO_ERROR | Reason::CANCEL) => Ok(()),
        _ => Err(io::Error::new(io::ErrorKind::BrokenPipe, e)),
    }
}

impl AsyncRead for StreamIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        while this.unread.is_empty() {
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => this.unread = data,
                None => return Poll::Ready(Ok(())),
                Some(Err(e)) => return Poll::Ready(ended_or_error(e)),
            }
        }
        let n = this.unread.len().min(buf.remaining());
        buf.put_slice(&this.unread[..n]);
        this.unread.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for StreamIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        // At most one chunk waits for window: a slow reader slows the writer.
        if let Err(e) = ready!(this.send.poll_ready(cx)) {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::BrokenPipe, e)));
        }
        match this.send.send_data(Bytes::copy_from_slice(buf), false) {
            Ok(()) => Poll::Ready(Ok(buf.len())),
            Err(e) => Poll::Ready(Err(io::Error::new(io::ErrorKind::BrokenPipe, e))),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // DATA frames are written by the connection's task as soon as it runs.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.shut_down {
            this.shut_down = true;
            if let Err(e) = this.send.send_data(Bytes::new(), true) {
                return Poll::Ready(ended_or_error(e));
            }
        }
        Poll::Ready(Ok(()))
    }
}
