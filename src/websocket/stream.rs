//! The byte stream of an upgraded connection, unwrapped down to its socket
//! where we can.
//!
//! Client connections come from our own servers: HTTP/1.1 hands over the
//! socket itself when it is plain TCP ([`Handover`]), HTTP/2 the stream of
//! an RFC 8441 CONNECT ([`StreamIo`]). Backend connections come from
//! hyper's HTTP/1.1 client as an `Upgraded`: a boxed `dyn` IO behind its
//! own read-ahead buffer, so every read and write would go through several
//! wrappers (about five polls per read, one of them dynamic). When hyper
//! was given a plain `TcpStream` (see `upstream::upgrade`), a downcast
//! gives the socket back with the bytes hyper had read past the handshake,
//! and the tunnel reads and writes the socket itself ([`Socket`]). Anything
//! else (TLS) stays behind hyper's wrappers.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::{Buf, Bytes};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

use crate::listen::http1::{Handover, UpgradeIo, UpgradedIo};
use crate::listen::http2::StreamIo;
use crate::listen::proxy_protocol::Rewind;

/// An upgraded connection: the bare socket when hyper's IO was one.
pub enum UpgradedStream {
    /// A TCP connection of ours.
    Tcp(Socket),
    /// Any other connection, through hyper's wrappers.
    Wrapped(TokioIo<Upgraded>),
    /// Any other client connection our HTTP/1.1 server handed over (TLS,
    /// PROXY protocol), after the bytes it had read past the handshake.
    Boxed(Rewind<Box<dyn UpgradeIo>>),
    /// An HTTP/2 stream our server handed over (RFC 8441 extended CONNECT).
    Http2(StreamIo),
}

impl UpgradedStream {
    /// Unwraps a backend's `io` if hyper was given a `TokioIo<TcpStream>`.
    pub fn new(io: Upgraded) -> Self {
        match io.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => UpgradedStream::Tcp(Socket::new(parts.read_buf, parts.io.into_inner())),
            Err(io) => UpgradedStream::Wrapped(TokioIo::new(io)),
        }
    }
}

impl From<Handover> for UpgradedStream {
    /// A client connection from our HTTP/1.1 server, socket and all.
    fn from(handover: Handover) -> Self {
        match handover.io {
            UpgradedIo::Tcp(tcp) => UpgradedStream::Tcp(Socket::new(handover.read_ahead, tcp)),
            UpgradedIo::Other(io) => UpgradedStream::Boxed(Rewind::new(handover.read_ahead, io)),
        }
    }
}

/// A TCP connection taken over from hyper or our HTTP/1.1 server: first the bytes read past the
/// handshake, then the socket.
///
/// A tunnel polls both of its sockets each time its task wakes, though
/// only one of them woke it. Polling a socket that has nothing to read
/// registers the task's waker again, under a lock in tokio's I/O driver,
/// although the waker from the last poll is still there. So once a read
/// has pended, and while the polls come with the same waker, a read only
/// looks at the socket's readiness (one atomic load) until the driver has
/// flagged it (and so used up the registered waker).
pub struct Socket {
    /// Read past the handshake; empty (and holding no buffer) once replayed.
    prefix: Bytes,
    tcp: TcpStream,
    /// The waker tokio holds for this socket's reads, if `armed`.
    read_waker: Option<Waker>,
    /// A read pended with `read_waker` and readiness has not come since.
    armed: bool,
}

impl Socket {
    pub(super) fn new(prefix: Bytes, tcp: TcpStream) -> Self {
        // An empty `Bytes` may still hold the whole read buffer it was cut from.
        let prefix = if prefix.is_empty() { Bytes::new() } else { prefix };
        Self { prefix, tcp, read_waker: None, armed: false }
    }

    /// The bytes read past the handshake and the socket, for a driver of
    /// its own ([`super::reactor`]).
    pub(super) fn into_parts(self) -> (Bytes, TcpStream) {
        (self.prefix, self.tcp)
    }
}

/// Moves what was read past the handshake into `buf`, if any is left;
/// true if it did. The buffer it was cut from is freed once it empties.
pub(super) fn replay(prefix: &mut Bytes, buf: &mut ReadBuf<'_>) -> bool {
    if prefix.is_empty() {
        return false;
    }
    let n = prefix.len().min(buf.remaining());
    buf.put_slice(&prefix[..n]);
    prefix.advance(n);
    if prefix.is_empty() {
        *prefix = Bytes::new();
    }
    true
}

impl AsyncRead for Socket {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if replay(&mut this.prefix, buf) {
            return Poll::Ready(Ok(()));
        }
        if this.armed && this.read_waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            // `try_io` runs the closure only if the socket is flagged readable;
            // `Ok` leaves the flag as it is.
            if this.tcp.try_io(Interest::READABLE, || Ok(())).is_err() {
                return Poll::Pending;
            }
        }
        match Pin::new(&mut this.tcp).poll_read(cx, buf) {
            Poll::Pending => {
                if !this.read_waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    this.read_waker = Some(cx.waker().clone());
                }
                // Out of coop budget, tokio pends before registering anything
                // (and wakes the task at once): nothing is armed then.
                this.armed = tokio::task::coop::has_budget_remaining();
                Poll::Pending
            }
            ready => {
                this.armed = false;
                ready
            }
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

impl AsyncRead for UpgradedStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpgradedStream::Tcp(io) => Pin::new(io).poll_read(cx, buf),
            UpgradedStream::Wrapped(io) => Pin::new(io).poll_read(cx, buf),
            UpgradedStream::Boxed(io) => Pin::new(io).poll_read(cx, buf),
            UpgradedStream::Http2(io) => Pin::new(io).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpgradedStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpgradedStream::Tcp(io) => Pin::new(io).poll_write(cx, data),
            UpgradedStream::Wrapped(io) => Pin::new(io).poll_write(cx, data),
            UpgradedStream::Boxed(io) => Pin::new(io).poll_write(cx, data),
            UpgradedStream::Http2(io) => Pin::new(io).poll_write(cx, data),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpgradedStream::Tcp(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            UpgradedStream::Wrapped(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            UpgradedStream::Boxed(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            UpgradedStream::Http2(io) => Pin::new(io).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpgradedStream::Tcp(io) => io.is_write_vectored(),
            UpgradedStream::Wrapped(io) => io.is_write_vectored(),
            UpgradedStream::Boxed(io) => io.is_write_vectored(),
            UpgradedStream::Http2(io) => io.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpgradedStream::Tcp(io) => Pin::new(io).poll_flush(cx),
            UpgradedStream::Wrapped(io) => Pin::new(io).poll_flush(cx),
            UpgradedStream::Boxed(io) => Pin::new(io).poll_flush(cx),
            UpgradedStream::Http2(io) => Pin::new(io).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpgradedStream::Tcp(io) => Pin::new(io).poll_shutdown(cx),
            UpgradedStream::Wrapped(io) => Pin::new(io).poll_shutdown(cx),
            UpgradedStream::Boxed(io) => Pin::new(io).poll_shutdown(cx),
            UpgradedStream::Http2(io) => Pin::new(io).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let connecting = TcpStream::connect(listener.local_addr().unwrap());
        let (accepted, connected) = tokio::join!(listener.accept(), connecting);
        (accepted.unwrap().0, connected.unwrap())
    }

    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn the_bytes_read_past_the_handshake_come_first_then_the_socket() {
        let (ours, mut peer) = pair().await;
        let mut socket = Socket::new(Bytes::from_static(b"early "), ours);
        peer.write_all(b"later").await.unwrap();
        let mut got = vec![0; 11];
        socket.read_exact(&mut got).await.unwrap();
        assert_eq!(got, b"early later");
        assert!(socket.prefix.is_empty());
    }

    #[tokio::test]
    async fn a_read_polled_again_while_pending_still_wakes_when_data_comes() {
        let (ours, mut peer) = pair().await;
        let mut socket = Socket::new(Bytes::new(), ours);
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&count));
        let mut cx = Context::from_waker(&waker);
        let mut storage = [0u8; 16];
        let mut buf = ReadBuf::new(&mut storage);
        assert!(Pin::new(&mut socket).poll_read(&mut cx, &mut buf).is_pending());
        assert!(socket.armed);
        // Polled again with the same waker: pending without re-registering.
        assert!(Pin::new(&mut socket).poll_read(&mut cx, &mut buf).is_pending());
        peer.write_all(b"hello").await.unwrap();
        for _ in 0..500 {
            if count.0.load(Ordering::SeqCst) > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(count.0.load(Ordering::SeqCst) > 0, "the registered waker was woken");
        assert!(Pin::new(&mut socket).poll_read(&mut cx, &mut buf).is_ready());
        assert_eq!(buf.filled(), b"hello");
        assert!(!socket.armed);
        // Drained (a short read): the next poll pends and arms again.
        let mut buf = ReadBuf::new(&mut storage);
        assert!(Pin::new(&mut socket).poll_read(&mut cx, &mut buf).is_pending());
        assert!(socket.armed);
    }
}
