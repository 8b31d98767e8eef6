//! An HTTP/2 stream as a byte stream, for a CONNECT our server accepted
//! (RFC 8441 WebSocket): what the client sends in DATA frames is read, what
//! is written goes out in DATA frames, under the stream's flow control.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use h2::{Reason, RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::model::Handoff;

/// In a CONNECT request's extensions: yields the stream once our 2xx
/// answer has been sent (`None` if the answer was anything else).
pub type PendingConnect = Handoff<StreamIo>;

/// See the module doc. The connection's task keeps driving the socket; this
/// only moves bytes in and out of h2's buffers.
pub struct StreamIo {
    send: SendStream<Bytes>,
    recv: RecvStream,
    /// The rest of the last DATA frame read.
    unread: Bytes,
    shut_down: bool,
}

impl StreamIo {
    pub(super) fn new(send: SendStream<Bytes>, recv: RecvStream) -> Self {
        Self { send, recv, unread: Bytes::new(), shut_down: false }
    }
}

/// A reset with NO_ERROR or CANCEL is how a peer ends a tunnel stream; any
/// other reason (or connection failure) is an error.
fn ended_or_error(e: h2::Error) -> io::Result<()> {
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
                Some(Ok(data)) => {
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    this.unread = data;
                }
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
        this.send.reserve_capacity(buf.len());
        while this.send.capacity() == 0 {
            match this.send.poll_capacity(cx) {
                Poll::Ready(Some(Ok(_))) => {}
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(io::Error::new(io::ErrorKind::BrokenPipe, e))),
                Poll::Ready(None) => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
                Poll::Pending => {
                    // Waiting for window: a reset by the client ends the wait.
                    return match ready!(this.send.poll_reset(cx)) {
                        Ok(reason) => Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::BrokenPipe,
                            format!("stream reset by the client: {reason:?}"),
                        ))),
                        Err(e) => Poll::Ready(Err(io::Error::new(io::ErrorKind::BrokenPipe, e))),
                    };
                }
            }
        }
        let n = this.send.capacity().min(buf.len());
        match this.send.send_data(Bytes::copy_from_slice(&buf[..n]), false) {
            Ok(()) => Poll::Ready(Ok(n)),
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
            this.send.reserve_capacity(0);
            if let Err(e) = this.send.send_data(Bytes::new(), true) {
                return Poll::Ready(ended_or_error(e));
            }
        }
        Poll::Ready(Ok(()))
    }
}
