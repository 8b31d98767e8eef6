//! Threads of our own that drive WebSocket tunnels whose two ends are both
//! plain TCP sockets (an HTTP/1.1 client, an `ws://` backend).
//!
//! Why: a tunnel does little work per frame (a header check, a re-mask, one
//! read and one write), and under tokio each frame also paid for a task wake,
//! a trip through the scheduler's queue, the coop budget and a waker
//! registered again in the I/O driver each time a socket ran dry: about a
//! third of the tunnel's instructions (`bench/PROFILE.md`). Here one
//! edge-triggered epoll (through mio) per thread watches both sockets of
//! every tunnel on it. An event flags its socket ready and polls that
//! tunnel's future at once, on this thread; both directions move in that
//! poll. Sockets read and write with plain system calls, and a socket is
//! read only while flagged readable (cleared when a read comes back short
//! or would block), so a poll never costs a wasted `read`.
//!
//! The tunnel future is the same one tokio runs for every other client
//! ([`tollgate_websocket::tunnel::tunnel`]); only its sockets differ. Its
//! timers (pings, idle, close deadlines) and the shutdown switch stay
//! tokio's: the runtime is entered on these threads, and their wakers land
//! in the thread's inbox, which wakes its epoll.
//!
//! There are as many threads as the runtime has workers, started with the
//! first tunnel; tunnels are dealt to them in turn.

use std::cell::Cell;
use std::future::Future;
use std::io::{self, Write};
use std::mem;
use std::net::Shutdown;
use std::os::fd::{AsRawFd, RawFd};
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use bytes::Bytes;
use mio::unix::SourceFd;
use mio::{Events, Interest, Token};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::stream::{Socket, replay};

/// A tunnel's future, boxed: the threads hold tunnels of any shape.
type TunnelFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The token of each thread's inbox waker (socket tokens are `slot * 2 + side`).
const INBOX: Token = Token(usize::MAX);

/// Reads one poll of a tunnel may make before it yields to the others on
/// its thread (tokio's coop budget does this for tasks): a tunnel whose
/// peers never run dry would otherwise keep the thread.
const READS_PER_POLL: u32 = 32;

thread_local! {
    /// Reads left to the tunnel being polled on this thread.
    static BUDGET: Cell<u32> = const { Cell::new(u32::MAX) };
}

/// Readiness bits of one socket, set by the thread on events and cleared by
/// the socket when a read or write shows the readiness used up.
///
/// Only the socket's thread touches them once the tunnel is there: the atomic
/// is for `Send`, so plain loads and stores do (no read-modify-write per frame).
struct Readiness(AtomicU8);

const READABLE: u8 = 1;
const WRITABLE: u8 = 2;
/// The peer closed or reset: set with the event and never cleared. The
/// bytes before a FIN and the FIN itself may come in one edge-triggered
/// event; the read of those bytes comes back short, and no later event
/// would tell of the end, so reads keep trying until they see it.
const CLOSED: u8 = 4;

impl Readiness {
    /// Ready both ways until shown otherwise: registering with epoll does
    /// not report what arrived before it.
    fn new() -> Self {
        Self(AtomicU8::new(READABLE | WRITABLE))
    }

    /// Whether any of `bits` is set.
    fn is(&self, bits: u8) -> bool {
        self.0.load(Ordering::Relaxed) & bits != 0
    }

    fn set(&self, bits: u8) {
        self.0.store(self.0.load(Ordering::Relaxed) | bits, Ordering::Relaxed);
    }

    fn clear(&self, bit: u8) {
        self.0.store(self.0.load(Ordering::Relaxed) & !bit, Ordering::Relaxed);
    }
}

/// One end of a tunnel on a reactor thread: the bytes read past the
/// handshake, then the socket.
pub struct ReactorSocket {
    prefix: Bytes,
    tcp: std::net::TcpStream,
    ready: Arc<Readiness>,
}

impl ReactorSocket {
    /// Reads once into `buf`'s unfilled part; `None` when the socket is dry.
    fn read_into(&mut self, buf: &mut ReadBuf<'_>) -> Option<io::Result<()>> {
        // SAFETY: `recv(2)` only writes to the unfilled part, which it is
        // given as a pointer and its length; nothing is read from it here.
        let unfilled = unsafe { buf.unfilled_mut() };
        let wanted = unfilled.len();
        loop {
            // `recv` rather than `read`: the same call on a socket, without
            // the file-system layer's checks on the way (`vfs_read`).
            // SAFETY: the fd is ours and open for as long as `self.tcp` is;
            // the pointer and length describe writable memory.
            let n = unsafe { libc::recv(self.tcp.as_raw_fd(), unfilled.as_mut_ptr().cast(), wanted, 0) };
            if let Ok(n) = usize::try_from(n) {
                // SAFETY: `recv(2)` initialized the first `n` bytes.
                unsafe { buf.assume_init(n) };
                buf.advance(n);
                // A short read emptied the socket (edge-triggered: a later
                // arrival raises a new event).
                if n > 0 && n < wanted {
                    self.ready.clear(READABLE);
                }
                return Some(Ok(()));
            }
            let error = io::Error::last_os_error();
            match error.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => {
                    self.ready.clear(READABLE);
                    return None;
                }
                _ => return Some(Err(error)),
            }
        }
    }
}

impl AsyncRead for ReactorSocket {
    fn poll_read(mut self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if replay(&mut this.prefix, buf) {
            return Poll::Ready(Ok(()));
        }
        // No waker to register: the socket's next event polls the tunnel.
        if !this.ready.is(READABLE | CLOSED) {
            return Poll::Pending;
        }
        // Out of budget: the thread polls this tunnel again after the others.
        let budget = BUDGET.get();
        if budget == 0 {
            return Poll::Pending;
        }
        BUDGET.set(budget - 1);
        match this.read_into(buf) {
            Some(result) => Poll::Ready(result),
            None => Poll::Pending,
        }
    }
}

impl AsyncWrite for ReactorSocket {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        if !self.ready.is(WRITABLE) {
            return Poll::Pending;
        }
        loop {
            match (&self.tcp).write(data) {
                Ok(n) => {
                    // A short write filled the send buffer.
                    if n < data.len() {
                        self.ready.clear(WRITABLE);
                    }
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.ready.clear(WRITABLE);
                    return Poll::Pending;
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.tcp.shutdown(Shutdown::Write) {
            Err(e) if e.kind() != io::ErrorKind::NotConnected => Poll::Ready(Err(e)),
            _ => Poll::Ready(Ok(())),
        }
    }
}

/// What other threads hand a reactor thread.
#[derive(Default)]
struct Inbox {
    tunnels: Vec<Submitted>,
    /// Slots whose wakers were called (timers, shutdown).
    woken: Vec<usize>,
    /// The thread was already told to look (one `eventfd` write per look).
    notified: bool,
}

/// Builds a tunnel's future from its two sockets.
type StartTunnel = Box<dyn FnOnce(ReactorSocket, ReactorSocket) -> TunnelFuture + Send>;

/// A new tunnel: its sockets, and what to run on them once they are watched.
struct Submitted {
    client: ReactorSocket,
    backend: ReactorSocket,
    start: StartTunnel,
}

/// The part of a reactor thread other threads reach.
struct Shared {
    inbox: Mutex<Inbox>,
    waker: mio::Waker,
}

impl Shared {
    fn deliver(&self, put: impl FnOnce(&mut Inbox)) {
        let tell = {
            let mut inbox = self.inbox.lock().unwrap_or_else(|e| e.into_inner());
            put(&mut inbox);
            !mem::replace(&mut inbox.notified, true)
        };
        if tell && let Err(e) = self.waker.wake() {
            tracing::error!(error = %e, "cannot wake a websocket reactor thread");
        }
    }
}

/// A tunnel's waker: queues its slot in the inbox.
struct SlotWaker {
    slot: usize,
    shared: Arc<Shared>,
}

impl Wake for SlotWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let slot = self.slot;
        self.shared.deliver(|inbox| inbox.woken.push(slot));
    }
}

/// A running tunnel.
struct Slot {
    future: TunnelFuture,
    ready: [Arc<Readiness>; 2],
    waker: Waker,
    /// Already on this round's list to poll.
    queued: bool,
}

/// The reactor threads, started with the first tunnel.
pub struct Reactors {
    threads: Vec<Arc<Shared>>,
    next: AtomicUsize,
}

static REACTORS: OnceLock<Option<Reactors>> = OnceLock::new();

impl Reactors {
    /// The reactor threads, started on first use from within the runtime
    /// (one per worker); `None` if they could not be started, and tunnels
    /// stay on tokio's tasks.
    pub fn get() -> Option<&'static Reactors> {
        REACTORS
            .get_or_init(|| {
                let runtime = tokio::runtime::Handle::current();
                let count = runtime.metrics().num_workers().max(1);
                match (0..count).map(|i| start(i, runtime.clone())).collect::<io::Result<Vec<_>>>() {
                    Ok(threads) => Some(Reactors { threads, next: AtomicUsize::new(0) }),
                    Err(e) => {
                        tracing::error!(error = %e, "websocket reactor threads failed to start; tunnels run as tasks");
                        None
                    }
                }
            })
            .as_ref()
    }

    /// Moves both sockets off tokio's driver and runs `tunnel(client,
    /// backend)` on one of the threads until it completes.
    pub fn spawn<F, T>(&self, client: Socket, backend: Socket, tunnel: F)
    where
        F: FnOnce(ReactorSocket, ReactorSocket) -> T + Send + 'static,
        T: Future<Output = ()> + Send + 'static,
    {
        let (Some(client), Some(backend)) = (take_over(client), take_over(backend)) else { return };
        // The future is built on the thread, once both sockets are watched:
        // no descriptor can be registered after its socket was dropped.
        let start: StartTunnel = Box::new(move |client, backend| Box::pin(tunnel(client, backend)));
        let thread = &self.threads[self.next.fetch_add(1, Ordering::Relaxed) % self.threads.len()];
        thread.deliver(|inbox| inbox.tunnels.push(Submitted { client, backend, start }));
    }
}

/// Takes a socket off tokio's driver (a failure there drops the connection).
fn take_over(socket: Socket) -> Option<ReactorSocket> {
    let (prefix, tcp) = socket.into_parts();
    match tcp.into_std() {
        Ok(tcp) => Some(ReactorSocket { prefix, tcp, ready: Arc::new(Readiness::new()) }),
        Err(e) => {
            tracing::warn!(error = %e, "websocket tunnel socket could not leave the runtime; connection dropped");
            None
        }
    }
}

/// Starts reactor thread `index`.
fn start(index: usize, runtime: tokio::runtime::Handle) -> io::Result<Arc<Shared>> {
    let poll = mio::Poll::new()?;
    let waker = mio::Waker::new(poll.registry(), INBOX)?;
    let shared = Arc::new(Shared { inbox: Mutex::new(Inbox::default()), waker });
    let thread = Reactor { poll, shared: Arc::clone(&shared), slots: Vec::new(), free: Vec::new(), again: Vec::new() };
    std::thread::Builder::new().name(format!("tollgate-ws-{index}")).spawn(move || {
        let _runtime = runtime.enter();
        thread.run();
    })?;
    Ok(shared)
}

/// One reactor thread's state.
struct Reactor {
    poll: mio::Poll,
    shared: Arc<Shared>,
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    /// Tunnels that ran out of budget, to poll again next round.
    again: Vec<usize>,
}

impl Reactor {
    fn run(mut self) {
        let mut events = Events::with_capacity(256);
        let mut due = Vec::new();
        let gather = crate::gather::Gather::configured();
        let mut turn_began = None;
        loop {
            // Tunnels that used up their budget go again at once, after a
            // look at what else is ready.
            let timeout = (!self.again.is_empty()).then_some(Duration::ZERO);
            if timeout.is_none() && gather.is_on() {
                gather.pause_if_busy(turn_began.take());
            }
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!(error = %e, "websocket reactor thread stopped");
                return;
            }
            if gather.is_on() && turn_began.is_none() {
                turn_began = Some(std::time::Instant::now());
            }
            for event in &events {
                if event.token() == INBOX {
                    continue;
                }
                let (slot, side) = (event.token().0 / 2, event.token().0 % 2);
                let Some(Some(tunnel)) = self.slots.get_mut(slot) else { continue };
                let mut bits = 0;
                if event.is_readable() || event.is_read_closed() || event.is_error() {
                    bits |= READABLE;
                }
                if event.is_writable() || event.is_write_closed() || event.is_error() {
                    bits |= WRITABLE;
                }
                if event.is_read_closed() || event.is_error() {
                    bits |= CLOSED;
                }
                tunnel.ready[side].set(bits);
                if !mem::replace(&mut tunnel.queued, true) {
                    due.push(slot);
                }
            }
            let (submitted, woken) = {
                let mut inbox = self.shared.inbox.lock().unwrap_or_else(|e| e.into_inner());
                inbox.notified = false;
                (mem::take(&mut inbox.tunnels), mem::take(&mut inbox.woken))
            };
            for slot in woken.into_iter().chain(self.again.drain(..)) {
                if let Some(Some(tunnel)) = self.slots.get_mut(slot)
                    && !mem::replace(&mut tunnel.queued, true)
                {
                    due.push(slot);
                }
            }
            for tunnel in submitted {
                if let Some(slot) = self.admit(tunnel) {
                    due.push(slot);
                }
            }
            for slot in due.drain(..) {
                self.poll_slot(slot);
            }
        }
    }

    /// Registers a new tunnel's sockets and gives it a slot (queued to poll).
    fn admit(&mut self, tunnel: Submitted) -> Option<usize> {
        let slot = self.free.pop().unwrap_or_else(|| {
            self.slots.push(None);
            self.slots.len() - 1
        });
        let Submitted { client, backend, start } = tunnel;
        for (side, socket) in [&client, &backend].into_iter().enumerate() {
            let token = Token(slot * 2 + side);
            let fd: RawFd = socket.tcp.as_raw_fd();
            let interest = Interest::READABLE | Interest::WRITABLE;
            if let Err(e) = self.poll.registry().register(&mut SourceFd(&fd), token, interest) {
                // Both sockets close here, which also unregisters the first.
                tracing::warn!(error = %e, "websocket tunnel sockets could not be watched; connection dropped");
                self.free.push(slot);
                return None;
            }
        }
        let ready = [Arc::clone(&client.ready), Arc::clone(&backend.ready)];
        let waker = Waker::from(Arc::new(SlotWaker { slot, shared: Arc::clone(&self.shared) }));
        self.slots[slot] = Some(Slot { future: start(client, backend), ready, waker, queued: true });
        Some(slot)
    }

    /// Polls one tunnel; a finished (or panicked) one frees its slot, and
    /// its sockets, closed, leave the epoll set.
    fn poll_slot(&mut self, slot: usize) {
        let Some(Some(tunnel)) = self.slots.get_mut(slot) else { return };
        tunnel.queued = false;
        let Slot { future, waker, .. } = tunnel;
        let mut cx = Context::from_waker(waker);
        BUDGET.set(READS_PER_POLL);
        let done = match std::panic::catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(&mut cx))) {
            Ok(poll) => poll.is_ready(),
            Err(_) => {
                tracing::error!("websocket tunnel panicked; connection dropped");
                true
            }
        };
        let exhausted = BUDGET.replace(u32::MAX) == 0;
        if done {
            self.slots[slot] = None;
            self.free.push(slot);
        } else if exhausted {
            self.again.push(slot);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;
    use std::time::Duration;

    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::oneshot;

    use super::*;

    /// A connected pair of loopback sockets: (far end, near end for the reactor).
    async fn pair() -> (TcpStream, Socket) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let far = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (near, _) = listener.accept().await.unwrap();
        (far, Socket::new(Bytes::new(), near))
    }

    /// Reads from `socket` until `want` bytes came, `chunk` at a time.
    async fn read_all(socket: &mut ReactorSocket, want: usize, chunk: usize) -> usize {
        let mut buf = vec![0u8; chunk];
        let mut total = 0;
        while total < want {
            let mut read = ReadBuf::new(&mut buf);
            poll_fn(|cx| Pin::new(&mut *socket).poll_read(cx, &mut read)).await.unwrap();
            if read.filled().is_empty() {
                break;
            }
            total += read.filled().len();
        }
        total
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_tunnel_that_uses_up_its_read_budget_is_polled_again_without_a_new_event() {
        let (mut client_far, client) = pair().await;
        let (_backend_far, backend) = pair().await;
        // All of it waiting before the tunnel starts: after the first event
        // none follows, and 128 full reads take four budgets.
        const SENT: usize = 64 * 1024;
        client_far.write_all(&[7u8; SENT]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (done, got) = oneshot::channel();
        Reactors::get().unwrap().spawn(client, backend, move |mut client, _backend| async move {
            let _ = done.send(read_all(&mut client, SENT, 512).await);
        });
        let read = tokio::time::timeout(Duration::from_secs(5), got).await.expect("polled again").unwrap();
        assert_eq!(read, SENT);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_end_of_stream_that_arrives_with_the_last_bytes_is_seen() {
        // Bytes and the FIN in one edge-triggered event: the read of the
        // bytes comes back short, and no later event tells of the FIN.
        for _ in 0..20 {
            let (mut client_far, client) = pair().await;
            let (_backend_far, backend) = pair().await;
            let (done, got) = oneshot::channel();
            Reactors::get().unwrap().spawn(client, backend, move |mut client, _backend| async move {
                let _ = done.send(read_all(&mut client, usize::MAX, 4096).await);
            });
            tokio::time::sleep(Duration::from_millis(5)).await;
            client_far.write_all(b"last words").await.unwrap();
            client_far.shutdown().await.unwrap();
            let read = tokio::time::timeout(Duration::from_secs(5), got).await.expect("the end was seen").unwrap();
            assert_eq!(read, 10);
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_tunnel_that_panics_loses_its_connection_and_the_thread_serves_the_next() {
        let (mut broken_far, broken) = pair().await;
        let (_other_far, other) = pair().await;
        Reactors::get().unwrap().spawn(broken, other, |_client, _backend| async { panic!("a bug in a tunnel") });
        // The panicked tunnel's sockets were dropped: its client sees the end.
        let mut byte = [0u8; 1];
        let end =
            tokio::time::timeout(Duration::from_secs(5), tokio::io::AsyncReadExt::read(&mut broken_far, &mut byte));
        assert!(matches!(end.await, Ok(Ok(0)) | Ok(Err(_))), "the connection is closed, not left hanging");

        let (mut client_far, client) = pair().await;
        let (_backend_far, backend) = pair().await;
        let (done, got) = oneshot::channel();
        Reactors::get().unwrap().spawn(client, backend, move |mut client, _backend| async move {
            let _ = done.send(read_all(&mut client, 5, 64).await);
        });
        client_far.write_all(b"hello").await.unwrap();
        assert_eq!(tokio::time::timeout(Duration::from_secs(5), got).await.expect("served").unwrap(), 5);
    }
}
