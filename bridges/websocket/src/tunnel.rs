//! Tunnel mode between two WebSocket byte streams: frames are checked and
//! passed on where they lie in the read buffer, one frame at a time.
//!
//! Every frame is still parsed and checked (masking, opcodes, fragment
//! order, sizes, UTF-8 of text, close payloads) and re-masked with a fresh
//! key toward the backend, but nothing is copied into messages and back: a
//! read lands in a buffer on the stack, frames are fixed up in place and
//! written from there. Only the bytes a peer has not taken yet, or the start
//! of a frame still arriving, are kept on the heap, and that buffer is
//! freed as soon as it empties: an idle tunnel holds no buffers at all.
//!
//! A frame is passed on only once it has arrived whole (at most
//! `max_frame_bytes`), so every failure happens between frames and the
//! other side can always be sent a proper close frame. Fragmented messages
//! pass fragment by fragment, as they came.
//!
//! Backpressure: a direction reads again only when the other side has taken
//! everything it was given; a slow reader slows its writer through TCP flow
//! control. Both directions are driven by one task.
//!
//! Because frames pass unchanged, extensions the two ends negotiate can pass
//! too: permessage-deflate (RFC 7692) is allowed, its RSV1 bit accepted on
//! the first frame of a message, and compressed text is not UTF-8-checked
//! (the endpoints inflate it). Closing and failures follow [`crate::relay`]'s
//! rules, with the same [`Report`].

use std::future::{Future, poll_fn};
use std::mem::MaybeUninit;
use std::pin::{Pin, pin};
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::Limits;
use crate::close::{BAD_GATEWAY, ReadFault};
use crate::frame::{self, Header, Utf8Check, opcode};
use crate::relay::{End, GATEWAY_PING, RelaySettings, Report, Traffic};

/// Bytes read per call: the stack buffer a read lands in.
const READ_CHUNK: usize = 16 * 1024;

/// What the handshake settled that changes how frames are checked.
#[derive(Debug, Clone, Copy, Default)]
pub struct TunnelOptions {
    pub limits: Limits,
    /// Both ends agreed on permessage-deflate: RSV1 marks compressed messages.
    pub permessage_deflate: bool,
}

/// Relays frames between the client's upgraded stream and the backend's
/// until either side closes or fails, or `shutdown` resolves, then finishes
/// the close handshake on both (bounded by `close_timeout`) and shuts both
/// streams down. Never panics; everything it needs lives in this future,
/// which is kept small (it lives as long as the connection, idle or not).
pub fn tunnel<C, B>(
    client: C,
    backend: B,
    options: TunnelOptions,
    settings: RelaySettings,
    shutdown: impl Future<Output = ()>,
) -> impl Future<Output = Report>
where
    C: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    // Built here and captured by an `async move` block rather than passed to
    // an `async fn`, whose arguments are stored twice in its future (once as
    // arguments, once as the locals they are moved into).
    let mut tunnel = Tunnel {
        client,
        backend,
        up: Pump::new(Way::Up),
        down: Pump::new(Way::Down),
        options,
        seen: Instant::now(),
        moved: false,
        echo: None,
        timer_waker: None,
    };
    async move {
        let period = settings.ping_interval.unwrap_or(settings.idle_timeout).min(settings.idle_timeout / 2);
        let period = period.max(Duration::from_millis(10));
        // One timer for the pings, the idle timeout and every closing deadline.
        let mut timer = pin!(tokio::time::sleep(period));
        let first = {
            let mut shutdown = pin!(shutdown);
            poll_fn(|cx| tunnel.poll_running(cx, &settings, period, timer.as_mut(), shutdown.as_mut())).await
        };
        let end = tunnel.begin_close(first);
        let wait = settings.close_timeout;
        if !within(timer.as_mut(), wait, |cx| tunnel.poll_closing(cx)).await {
            // The other side never answered; a client that closed gets its own
            // close frame back (RFC 6455 §5.5.1) before the connection ends.
            if let Some(echo) = tunnel.echo.take() {
                tunnel.down.stop_reading();
                tunnel.down.inject(&echo);
                within(timer.as_mut(), wait, |cx| tunnel.poll_closing(cx)).await;
            }
        }
        // The server side closes the TCP connection first (RFC 6455 §7.1.1).
        within(timer.as_mut(), wait, |cx| Pin::new(&mut tunnel.client).poll_shutdown(cx).map(drop)).await;
        within(timer.as_mut(), wait, |cx| Pin::new(&mut tunnel.backend).poll_shutdown(cx).map(drop)).await;
        Report { upstream: tunnel.up.traffic, downstream: tunnel.down.traffic, end }
    }
}

/// Polls `step` until it is ready (true) or `wait` has passed (false).
async fn within(
    mut timer: Pin<&mut Sleep>,
    wait: Duration,
    mut step: impl FnMut(&mut Context<'_>) -> Poll<()>,
) -> bool {
    timer.as_mut().reset(Instant::now() + wait);
    poll_fn(|cx| {
        if step(cx).is_ready() {
            return Poll::Ready(true);
        }
        timer.as_mut().poll(cx).map(|()| false)
    })
    .await
}

/// Which way a pump moves frames, which decides the masking rules (§5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Way {
    /// Client → backend: frames arrive masked and leave masked with our key.
    Up,
    /// Backend → client: frames arrive and leave unmasked.
    Down,
}

/// What a pump does with frames from its source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Check and pass them on.
    Relay,
    /// The gateway sent this side a close: drop everything until its answer.
    AwaitClose,
    /// Read nothing more; only write out what is pending.
    Done,
}

/// Why a pump stopped relaying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    /// A valid close frame came (passed on in `Relay` mode), with its code.
    Closed(Option<u16>),
    /// The source broke the protocol.
    Fault(ReadFault),
    /// The source ended or failed without a close frame.
    Gone,
    /// The destination would not take bytes.
    WriteFailed,
}

/// What ended the relaying phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum First {
    Up(Event),
    Down(Event),
    Idle,
    Shutdown,
}

/// A data message whose fragments are passing.
#[derive(Debug)]
struct OpenMessage {
    text: bool,
    /// RSV1 under permessage-deflate: the payload is compressed.
    compressed: bool,
    bytes: u64,
}

/// Frames from one side to the other.
struct Pump {
    way: Way,
    mode: Mode,
    /// `[..ready]`: whole frames the destination has not taken yet;
    /// `[ready..]`: the start of a frame still arriving. Empty, with no
    /// allocation, whenever the tunnel is idle.
    pending: BytesMut,
    ready: usize,
    /// Bytes went to the destination since its last flush.
    unflushed: bool,
    /// The destination failed: what would go to it is dropped.
    dst_dead: bool,
    message: Option<OpenMessage>,
    utf8: Utf8Check,
    traffic: Traffic,
}

/// Result of scanning a buffer for whole frames.
struct Scan {
    /// `[..kept]` holds the whole frames to pass on, fixed up.
    kept: usize,
    /// `[consumed..]` is the start of an unfinished frame (when no event).
    consumed: usize,
    /// Length of that unfinished frame, once its header is in.
    need: Option<usize>,
    event: Option<Event>,
}

impl Pump {
    fn new(way: Way) -> Self {
        Self {
            way,
            mode: Mode::Relay,
            pending: BytesMut::new(),
            ready: 0,
            unflushed: false,
            dst_dead: false,
            message: None,
            utf8: Utf8Check::default(),
            traffic: Traffic::default(),
        }
    }

    /// Stops reading: the unfinished frame, if any, is dropped.
    fn stop_reading(&mut self) {
        self.mode = Mode::Done;
        self.pending.truncate(self.ready);
    }

    /// The destination is gone: nothing more is written to it.
    fn kill_destination(&mut self) {
        self.dst_dead = true;
        let _ = self.pending.split_to(self.ready);
        self.ready = 0;
        self.unflushed = false;
    }

    /// Queues a frame of the gateway's own after the whole frames already
    /// queued (so never inside one).
    fn inject(&mut self, frame: &[u8]) {
        if self.dst_dead {
            return;
        }
        let tail = self.pending.split_off(self.ready);
        self.pending.extend_from_slice(frame);
        self.ready = self.pending.len();
        self.pending.unsplit(tail);
    }

    /// A gateway control frame for this pump's destination.
    fn inject_control(&mut self, opcode: u8, payload: &[u8]) {
        self.inject(&frame::control_frame(opcode, payload, self.way == Way::Up));
    }

    fn inject_close(&mut self, code: u16, reason: &'static str) {
        self.inject_control(opcode::CLOSE, &frame::close_payload(code, reason));
    }

    /// Done reading and nothing left to write.
    fn settled(&self) -> bool {
        self.mode == Mode::Done && (self.dst_dead || (self.ready == 0 && !self.unflushed))
    }

    /// Moves frames from `src` to `dst` until something happens that the
    /// tunnel must decide on, or neither side can move.
    fn poll<S, D>(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut S,
        dst: &mut D,
        options: &TunnelOptions,
        moved: &mut bool,
    ) -> Poll<Event>
    where
        S: AsyncRead + Unpin,
        D: AsyncWrite + Unpin,
    {
        loop {
            if ready!(self.poll_write_out(cx, dst)).is_err() {
                return Poll::Ready(Event::WriteFailed);
            }
            if self.mode == Mode::Done {
                return Poll::Pending;
            }
            let event = if self.pending.is_empty() {
                ready!(self.poll_read_stack(cx, src, dst, options, moved))
            } else {
                ready!(self.poll_read_pending(cx, src, options, moved))
            };
            if let Some(event) = event {
                if let Event::Closed(_) = event {
                    self.stop_reading();
                }
                return Poll::Ready(event);
            }
        }
    }

    /// Writes and flushes the whole frames pending; frees the buffer when it
    /// empties.
    fn poll_write_out<D: AsyncWrite + Unpin>(&mut self, cx: &mut Context<'_>, dst: &mut D) -> Poll<Result<(), ()>> {
        if self.dst_dead {
            return Poll::Ready(Ok(()));
        }
        while self.ready > 0 {
            match Pin::new(&mut *dst).poll_write(cx, &self.pending[..self.ready]) {
                Poll::Ready(Ok(n)) if n > 0 => {
                    self.pending.advance(n);
                    self.ready -= n;
                    self.unflushed = true;
                }
                Poll::Ready(_) => return Poll::Ready(Err(())),
                Poll::Pending => return Poll::Pending,
            }
        }
        if self.unflushed {
            if ready!(Pin::new(&mut *dst).poll_flush(cx)).is_err() {
                return Poll::Ready(Err(()));
            }
            self.unflushed = false;
        }
        if self.pending.is_empty() && self.pending.capacity() > 0 {
            self.pending = BytesMut::new();
        }
        Poll::Ready(Ok(()))
    }

    /// The common case, nothing pending: read into a stack buffer, fix the
    /// whole frames up in place and write them from there; only leftovers
    /// go to the heap.
    fn poll_read_stack<S, D>(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut S,
        dst: &mut D,
        options: &TunnelOptions,
        moved: &mut bool,
    ) -> Poll<Option<Event>>
    where
        S: AsyncRead + Unpin,
        D: AsyncWrite + Unpin,
    {
        let mut stack = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
        let mut read = ReadBuf::uninit(&mut stack);
        match ready!(Pin::new(&mut *src).poll_read(cx, &mut read)) {
            Ok(()) if !read.filled().is_empty() => {}
            _ => return Poll::Ready(Some(Event::Gone)),
        }
        *moved = true;
        let buf = read.filled_mut();
        let scan = self.scan(buf, options);
        let frames = &buf[..scan.kept];
        let mut written = 0;
        if self.dst_dead {
            written = frames.len();
        } else if !frames.is_empty() {
            match Pin::new(&mut *dst).poll_write(cx, frames) {
                Poll::Ready(Ok(n)) if n > 0 => {
                    written = n;
                    self.unflushed = true;
                }
                Poll::Ready(_) => return Poll::Ready(Some(Event::WriteFailed)),
                Poll::Pending => {}
            }
        }
        self.pending.extend_from_slice(&frames[written..]);
        self.ready = self.pending.len();
        if scan.event.is_some() {
            return Poll::Ready(scan.event);
        }
        let rest = &buf[scan.consumed..];
        if !rest.is_empty() {
            self.pending.reserve(scan.need.unwrap_or(READ_CHUNK).max(rest.len()));
            self.pending.extend_from_slice(rest);
        }
        Poll::Ready(None)
    }

    /// An unfinished frame is pending (and nothing else): read its rest
    /// into the same buffer.
    fn poll_read_pending<S: AsyncRead + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut S,
        options: &TunnelOptions,
        moved: &mut bool,
    ) -> Poll<Option<Event>> {
        debug_assert_eq!(self.ready, 0);
        if self.pending.capacity() == self.pending.len() {
            self.pending.reserve(READ_CHUNK);
        }
        match ready!(tokio_util::io::poll_read_buf(Pin::new(&mut *src), cx, &mut self.pending)) {
            Ok(n) if n > 0 => {}
            _ => return Poll::Ready(Some(Event::Gone)),
        }
        *moved = true;
        let mut buf = std::mem::take(&mut self.pending);
        let scan = self.scan(&mut buf, options);
        self.pending = buf;
        if scan.event.is_some() {
            self.pending.truncate(scan.kept);
            self.ready = scan.kept;
            return Poll::Ready(scan.event);
        }
        // Close the gap left by frames that were dropped.
        let end = self.pending.len();
        self.pending.copy_within(scan.consumed..end, scan.kept);
        self.pending.truncate(scan.kept + (end - scan.consumed));
        self.ready = scan.kept;
        if let Some(need) = scan.need {
            self.pending.reserve(need.saturating_sub(self.pending.len() - self.ready));
        }
        Poll::Ready(None)
    }

    /// Finds the whole frames at the start of `buf`, checks each and fixes
    /// it up in place; frames that are not passed on are squeezed out.
    fn scan(&mut self, buf: &mut [u8], options: &TunnelOptions) -> Scan {
        let (mut read, mut kept) = (0, 0);
        let mut need = None;
        let mut event = None;
        while read < buf.len() {
            let header = match frame::parse_header(&buf[read..]) {
                Ok(Some(header)) => header,
                Ok(None) => break,
                Err(fault) => {
                    event = Some(Event::Fault(fault));
                    break;
                }
            };
            let checked = match self.mode {
                Mode::Relay => self.check_header(&header, options),
                // Still bounded: a peer we wait on cannot make us buffer without limit.
                _ if header.payload_len > options.limits.max_frame_bytes as u64 => Err(ReadFault::TooBig),
                _ => Ok(()),
            };
            let total = match checked.and_then(|()| header.frame_len().ok_or(ReadFault::TooBig)) {
                Ok(total) => total,
                Err(fault) => {
                    event = Some(Event::Fault(fault));
                    break;
                }
            };
            if buf.len() - read < total {
                need = Some(total);
                break;
            }
            let outcome = match self.mode {
                Mode::Relay => self.relay_frame(&header, &mut buf[read..read + total]),
                _ => Ok(if header.opcode == opcode::CLOSE { Pass::Stop(Event::Closed(None)) } else { Pass::Drop }),
            };
            let (keep, stop) = match outcome {
                Ok(Pass::Keep) => (true, None),
                Ok(Pass::Drop) => (false, None),
                Ok(Pass::Stop(event)) => (self.mode == Mode::Relay, Some(event)),
                Err(fault) => (false, Some(Event::Fault(fault))),
            };
            if keep {
                if kept != read {
                    buf.copy_within(read..read + total, kept);
                }
                kept += total;
            }
            read += total;
            if stop.is_some() {
                event = stop;
                break;
            }
        }
        Scan { kept, consumed: read, need, event }
    }

    /// The checks a frame header allows before its payload is in.
    fn check_header(&self, header: &Header, options: &TunnelOptions) -> Result<(), ReadFault> {
        // Clients mask every frame, servers none (RFC 6455 §5.1).
        if header.mask.is_some() != (self.way == Way::Up) {
            return Err(ReadFault::Protocol);
        }
        if header.is_control() {
            // §5.5: never fragmented, at most 125 bytes; RFC 7692 §6: no RSV1.
            if !header.fin || header.payload_len > frame::MAX_CONTROL_PAYLOAD as u64 || header.rsv1 {
                return Err(ReadFault::Protocol);
            }
            return Ok(());
        }
        let continuing = header.opcode == opcode::CONTINUATION;
        // §5.4: a continuation needs a message to continue, a new message
        // needs the last one finished. RFC 7692 §6.1: RSV1 on first frames only.
        if continuing != self.message.is_some() || (header.rsv1 && (continuing || !options.permessage_deflate)) {
            return Err(ReadFault::Protocol);
        }
        let so_far = self.message.as_ref().map_or(0, |m| m.bytes);
        if header.payload_len > options.limits.max_frame_bytes as u64
            || so_far + header.payload_len > options.limits.max_message_bytes as u64
        {
            return Err(ReadFault::TooBig);
        }
        Ok(())
    }

    /// Checks a whole frame and fixes it up for the other side.
    fn relay_frame(&mut self, header: &Header, frame: &mut [u8]) -> Result<Pass, ReadFault> {
        let (head, payload) = frame.split_at_mut(header.len);
        match header.opcode {
            opcode::PING => {
                rekey(self.way, header, head, payload, false);
                Ok(Pass::Keep)
            }
            opcode::PONG => {
                unmask(header, payload);
                if self.way == Way::Up && payload == GATEWAY_PING {
                    // The answer to our own ping: the backend never asked.
                    return Ok(Pass::Drop);
                }
                rekey(self.way, header, head, payload, true);
                Ok(Pass::Keep)
            }
            opcode::CLOSE => {
                unmask(header, payload);
                let code = frame::check_close(payload)?;
                rekey(self.way, header, head, payload, true);
                Ok(Pass::Stop(Event::Closed(code)))
            }
            _ => {
                let message = self.message.get_or_insert(OpenMessage {
                    text: header.opcode == opcode::TEXT,
                    compressed: header.rsv1,
                    bytes: 0,
                });
                message.bytes += header.payload_len;
                let check_utf8 = message.text && !message.compressed;
                if check_utf8 {
                    unmask(header, payload);
                    if !self.utf8.feed(payload, header.fin) {
                        return Err(ReadFault::InvalidUtf8);
                    }
                }
                rekey(self.way, header, head, payload, check_utf8);
                self.traffic.bytes += header.payload_len;
                if header.fin {
                    self.traffic.messages += 1;
                    self.message = None;
                }
                Ok(Pass::Keep)
            }
        }
    }
}

/// What becomes of a whole frame.
enum Pass {
    Keep,
    Drop,
    /// Passed on if relaying, then the pump stops.
    Stop(Event),
}

/// Removes the frame's own mask from its payload.
fn unmask(header: &Header, payload: &mut [u8]) {
    if let Some(key) = header.mask {
        frame::apply_mask(payload, key);
    }
}

/// Toward the backend, masks the payload with a fresh key written into the
/// header; `plain` says whether the payload is already unmasked. Toward the
/// client frames stay unmasked.
fn rekey(way: Way, header: &Header, head: &mut [u8], payload: &mut [u8], plain: bool) {
    if way == Way::Down {
        return;
    }
    let Some(old) = header.mask else { return };
    let new = frame::fresh_mask();
    head[header.len - 4..].copy_from_slice(&new);
    let key = if plain { new } else { std::array::from_fn(|i| old[i] ^ new[i]) };
    frame::apply_mask(payload, key);
}

/// Both streams and both pumps.
struct Tunnel<C, B> {
    client: C,
    backend: B,
    /// Client → backend.
    up: Pump,
    /// Backend → client.
    down: Pump,
    options: TunnelOptions,
    /// When bytes were last seen to arrive, to the timer's resolution.
    seen: Instant,
    /// Bytes arrived since the timer last looked: a flag rather than a
    /// clock read per read (the idle timeout and pings are only checked on
    /// the timer's ticks anyway).
    moved: bool,
    /// The close frame to give back to a client whose close the backend
    /// never answered.
    echo: Option<Vec<u8>>,
    /// The waker the timer holds: while polls come with it and the timer
    /// has not fired, the timer need not be polled (each poll re-registers
    /// the waker, and the task wakes once per frame).
    timer_waker: Option<Waker>,
}

impl<C, B> Tunnel<C, B>
where
    C: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    /// Relays both ways until one side closes or fails, the connection idles
    /// out or the gateway shuts down. Pings the client after silence.
    fn poll_running(
        &mut self,
        cx: &mut Context<'_>,
        settings: &RelaySettings,
        period: Duration,
        mut timer: Pin<&mut Sleep>,
        shutdown: Pin<&mut impl Future<Output = ()>>,
    ) -> Poll<First> {
        if shutdown.poll(cx).is_ready() {
            return Poll::Ready(First::Shutdown);
        }
        let armed = self.timer_waker.as_ref().is_some_and(|w| w.will_wake(cx.waker()));
        if !armed || timer.is_elapsed() {
            while timer.as_mut().poll(cx).is_ready() {
                if std::mem::take(&mut self.moved) {
                    self.seen = Instant::now();
                }
                let quiet = self.seen.elapsed();
                if quiet >= settings.idle_timeout {
                    return Poll::Ready(First::Idle);
                }
                if settings.ping_interval.is_some_and(|p| quiet >= p) {
                    self.down.inject_control(opcode::PING, GATEWAY_PING);
                }
                timer.as_mut().reset(Instant::now() + period);
            }
            // Out of coop budget, the timer pends without taking the waker.
            if !tokio::task::coop::has_budget_remaining() {
                self.timer_waker = None;
            } else if !armed {
                self.timer_waker = Some(cx.waker().clone());
            }
        }
        let Tunnel { client, backend, up, down, options, moved, .. } = self;
        if let Poll::Ready(event) = up.poll(cx, client, backend, options, moved) {
            return Poll::Ready(First::Up(event));
        }
        if let Poll::Ready(event) = down.poll(cx, backend, client, options, moved) {
            return Poll::Ready(First::Down(event));
        }
        Poll::Pending
    }

    /// Sends each side what it must hear now that the tunnel ends, and says
    /// whose answer to wait for (RFC 6455 §7; codes as in [`crate::relay`]).
    fn begin_close(&mut self, first: First) -> End {
        let (up, down) = (&mut self.up, &mut self.down);
        match first {
            First::Up(Event::Closed(code)) => {
                // Passed on; the backend's answer reaches the client the same way.
                self.echo = Some(frame::control_frame(
                    opcode::CLOSE,
                    &code.map(|c| c.to_be_bytes().to_vec()).unwrap_or_default(),
                    false,
                ));
                End::ClientClosed(code.unwrap_or(1005))
            }
            First::Down(Event::Closed(code)) => End::BackendClosed(code.unwrap_or(1005)),
            First::Up(Event::Fault(fault)) => {
                up.stop_reading();
                down.inject_close(fault_code(fault), fault.as_str());
                up.inject_close(1001, "client went away");
                down.mode = Mode::AwaitClose;
                End::ClientFault(fault)
            }
            First::Up(Event::Gone) | First::Down(Event::WriteFailed) => {
                up.stop_reading();
                down.kill_destination();
                up.inject_close(1001, "client went away");
                down.mode = Mode::AwaitClose;
                End::ClientGone
            }
            First::Up(Event::WriteFailed) | First::Down(Event::Gone) => {
                let reason = if first == First::Down(Event::Gone) {
                    "backend connection lost"
                } else {
                    "backend connection failed"
                };
                up.kill_destination();
                down.stop_reading();
                down.inject_close(1011, reason);
                up.mode = Mode::AwaitClose;
                End::BackendGone
            }
            First::Down(Event::Fault(fault)) => {
                down.stop_reading();
                up.inject_close(fault_code(fault), fault.as_str());
                down.inject_close(BAD_GATEWAY, "bad gateway: invalid frames from the backend");
                up.mode = Mode::AwaitClose;
                End::BackendFault(fault)
            }
            First::Idle => {
                // A client that let the connection idle out is not waited for.
                up.stop_reading();
                up.inject_close(1001, "idle timeout");
                down.inject_close(1001, "idle timeout");
                down.mode = Mode::AwaitClose;
                End::Idle
            }
            First::Shutdown => {
                for pump in [up, down] {
                    pump.inject_close(1001, "gateway shutting down");
                    pump.mode = Mode::AwaitClose;
                }
                End::Shutdown
            }
        }
    }

    /// Runs both pumps until each has had its answer (or cannot get one)
    /// and has written everything out.
    fn poll_closing(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Tunnel { client, backend, up, down, options, moved: arrived, .. } = self;
        loop {
            let mut moved = false;
            for (pump, from_client) in [(&mut *up, true), (&mut *down, false)] {
                let event = if from_client {
                    pump.poll(cx, client, backend, options, arrived)
                } else {
                    pump.poll(cx, backend, client, options, arrived)
                };
                if let Poll::Ready(event) = event {
                    moved = true;
                    if event == Event::WriteFailed {
                        pump.kill_destination();
                    }
                    pump.stop_reading();
                }
            }
            if up.settled() && down.settled() {
                return Poll::Ready(());
            }
            if !moved {
                return Poll::Pending;
            }
        }
    }
}

/// The close code a faulty peer gets (its fault is never `Gone` here).
fn fault_code(fault: ReadFault) -> u16 {
    fault.code().map_or(1002, u16::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::close::CloseCode;
    use crate::{Message, WebSocketStream, client_stream, server_stream};
    use bytes::Bytes;
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};

    const LIMITS: Limits = Limits { max_message_bytes: 64 * 1024, max_frame_bytes: 48 * 1024 };

    /// Default timings, but peers that never answer a close cost 200 ms, not 5 s.
    fn quick() -> RelaySettings {
        RelaySettings { close_timeout: Duration::from_millis(200), ..Default::default() }
    }

    /// The gateway's two raw streams and the tunnel task between them.
    fn spawn_tunnel(
        settings: RelaySettings,
        options: TunnelOptions,
    ) -> (DuplexStream, DuplexStream, tokio::task::JoinHandle<Report>) {
        let (client_end, gw_down) = duplex(4096);
        let (gw_up, backend_end) = duplex(4096);
        let task = tokio::spawn(tunnel(gw_down, gw_up, options, settings, std::future::pending()));
        (client_end, backend_end, task)
    }

    /// tungstenite peers on both ends.
    async fn rig(
        settings: RelaySettings,
    ) -> (WebSocketStream<DuplexStream>, WebSocketStream<DuplexStream>, tokio::task::JoinHandle<Report>) {
        let (client_end, backend_end, task) =
            spawn_tunnel(settings, TunnelOptions { limits: LIMITS, ..Default::default() });
        (client_stream(client_end, &LIMITS).await, server_stream(backend_end, &LIMITS).await, task)
    }

    /// A frame as a client sends it (masked) or a server does.
    fn frame(fin: bool, rsv1: bool, op: u8, payload: &[u8], masked: bool) -> Vec<u8> {
        let mut out = vec![u8::from(fin) << 7 | u8::from(rsv1) << 6 | op];
        let mask_bit = if masked { 0x80 } else { 0 };
        match payload.len() {
            n @ 0..=125 => out.push(mask_bit | n as u8),
            n @ 126..=0xFFFF => {
                out.push(mask_bit | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(mask_bit | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        let start = out.len() + if masked { 4 } else { 0 };
        if masked {
            out.extend_from_slice(&[0x37, 0xFA, 0x21, 0x3D]);
        }
        out.extend_from_slice(payload);
        if masked {
            frame::apply_mask(&mut out[start..], [0x37, 0xFA, 0x21, 0x3D]);
        }
        out
    }

    /// Reads one frame: (header, unmasked payload).
    async fn read_frame(io: &mut DuplexStream) -> Option<(Header, Vec<u8>)> {
        let mut buf = Vec::new();
        loop {
            if let Some(header) = frame::parse_header(&buf).unwrap() {
                let total = header.frame_len().unwrap();
                while buf.len() < total {
                    let mut chunk = vec![0; total - buf.len()];
                    let n = io.read(&mut chunk).await.ok()?;
                    if n == 0 {
                        return None;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let mut payload = buf[header.len..total].to_vec();
                unmask(&header, &mut payload);
                return Some((header, payload));
            }
            let mut byte = [0u8; 1];
            if io.read(&mut byte).await.ok()? == 0 {
                return None;
            }
            buf.push(byte[0]);
        }
    }

    async fn next_close(ws: &mut WebSocketStream<DuplexStream>) -> Option<crate::close::CloseFrame> {
        while let Some(Ok(m)) = ws.next().await {
            if let Message::Close(f) = m {
                return f;
            }
        }
        None
    }

    #[tokio::test]
    async fn messages_pings_and_close_codes_cross_both_ways() {
        let (mut client, mut backend, task) = rig(quick()).await;
        client.send(Message::text("hello")).await.unwrap();
        assert_eq!(backend.next().await.unwrap().unwrap(), Message::text("hello"));
        backend.send(Message::binary(vec![1, 2, 3])).await.unwrap();
        assert_eq!(client.next().await.unwrap().unwrap(), Message::binary(vec![1, 2, 3]));
        client.send(Message::Ping(Bytes::from_static(b"p1"))).await.unwrap();
        assert_eq!(backend.next().await.unwrap().unwrap(), Message::Ping(Bytes::from_static(b"p1")));
        // The backend's automatic pong (sent when it next writes) comes back end to end.
        backend.flush().await.unwrap();
        assert_eq!(client.next().await.unwrap().unwrap(), Message::Pong(Bytes::from_static(b"p1")));
        backend.send(Message::Close(Some(crate::close::frame(4001u16, "done here")))).await.unwrap();
        let got = next_close(&mut client).await.unwrap();
        assert_eq!((u16::from(got.code), got.reason.as_str()), (4001, "done here"));
        // The client's answer (sent when it next writes) reaches the backend, which ends the tunnel.
        let _ = client.flush().await;
        assert!(matches!(backend.next().await, Some(Ok(Message::Close(_))) | None));
        let report = task.await.unwrap();
        assert_eq!(report.end, End::BackendClosed(4001));
        assert_eq!(report.upstream, Traffic { messages: 1, bytes: 5 });
        assert_eq!(report.downstream, Traffic { messages: 1, bytes: 3 });
    }

    #[tokio::test]
    async fn a_client_close_gets_the_backends_answer_and_the_connection_ends() {
        let (mut client, mut backend, task) = rig(quick()).await;
        client.send(Message::Close(Some(crate::close::frame(1000u16, "bye")))).await.unwrap();
        match backend.next().await.unwrap().unwrap() {
            Message::Close(Some(f)) => assert_eq!((u16::from(f.code), f.reason.as_str()), (1000, "bye")),
            other => panic!("{other:?}"),
        }
        // tungstenite answered; the client sees the answer, then the end of the stream.
        let _ = backend.flush().await;
        assert_eq!(u16::from(next_close(&mut client).await.unwrap().code), 1000);
        assert_eq!(task.await.unwrap().end, End::ClientClosed(1000));
    }

    #[tokio::test]
    async fn fragments_pass_one_by_one_re_masked_with_control_frames_between() {
        let (mut client, mut backend, task) =
            spawn_tunnel(quick(), TunnelOptions { limits: LIMITS, ..Default::default() });
        let mut bytes = frame(false, false, opcode::TEXT, "wö".as_bytes()[..2].as_ref(), true);
        bytes.extend(frame(true, false, opcode::PING, b"mid", true));
        bytes.extend(frame(true, false, opcode::CONTINUATION, &"wö".as_bytes()[2..], true));
        client.write_all(&bytes).await.unwrap();
        let (first, payload) = read_frame(&mut backend).await.unwrap();
        assert_eq!((first.fin, first.opcode, payload.as_slice()), (false, opcode::TEXT, &b"w\xc3"[..]));
        let key = first.mask.expect("frames to the backend are masked");
        assert_ne!(key, [0x37, 0xFA, 0x21, 0x3D], "with a key of the gateway's, not the client's");
        let (ping, payload) = read_frame(&mut backend).await.unwrap();
        assert_eq!((ping.opcode, payload.as_slice()), (opcode::PING, &b"mid"[..]));
        let (last, payload) = read_frame(&mut backend).await.unwrap();
        assert_eq!((last.fin, last.opcode, payload.as_slice()), (true, opcode::CONTINUATION, &b"\xb6"[..]));
        drop(client);
        assert_eq!(task.await.unwrap().upstream, Traffic { messages: 1, bytes: 3 });
    }

    #[tokio::test]
    async fn frames_arriving_byte_by_byte_or_larger_than_a_read_pass_whole() {
        let (mut client, mut backend, task) =
            spawn_tunnel(quick(), TunnelOptions { limits: LIMITS, ..Default::default() });
        let big: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
        let mut bytes = frame(true, false, opcode::BINARY, b"tiny", true);
        bytes.extend(frame(true, false, opcode::BINARY, &big, true));
        let writer = tokio::spawn(async move {
            for byte in &bytes[..20] {
                client.write_all(std::slice::from_ref(byte)).await.unwrap();
                tokio::task::yield_now().await;
            }
            client.write_all(&bytes[20..]).await.unwrap();
            client
        });
        assert_eq!(read_frame(&mut backend).await.unwrap().1, b"tiny");
        assert_eq!(read_frame(&mut backend).await.unwrap().1, big);
        drop(writer.await.unwrap());
        assert_eq!(task.await.unwrap().upstream, Traffic { messages: 2, bytes: 40_004 });
    }

    #[tokio::test]
    async fn compressed_frames_pass_only_when_permessage_deflate_was_negotiated() {
        let options = TunnelOptions { limits: LIMITS, permessage_deflate: true };
        let (mut client, mut backend, task) = spawn_tunnel(quick(), options);
        // Compressed text is not UTF-8 until inflated: it passes unchecked.
        let mut bytes = frame(false, true, opcode::TEXT, &[0xF2, 0x48, 0xCD], true);
        bytes.extend(frame(true, false, opcode::CONTINUATION, &[0xC9, 0x07, 0x00], true));
        client.write_all(&bytes).await.unwrap();
        let (first, payload) = read_frame(&mut backend).await.unwrap();
        assert!(first.rsv1 && !first.fin);
        assert_eq!(payload, [0xF2, 0x48, 0xCD]);
        assert_eq!(read_frame(&mut backend).await.unwrap().1, [0xC9, 0x07, 0x00]);
        // RSV1 on a continuation is still a protocol error (RFC 7692 §6.1).
        let mut bad = frame(false, true, opcode::BINARY, b"a", true);
        bad.extend(frame(true, true, opcode::CONTINUATION, b"b", true));
        client.write_all(&bad).await.unwrap();
        let _ = read_frame(&mut backend).await.unwrap();
        let (close, payload) = read_frame(&mut backend).await.unwrap();
        assert_eq!((close.opcode, &payload[..2]), (opcode::CLOSE, &1001u16.to_be_bytes()[..]));
        let (to_client, payload) = read_frame(&mut client).await.unwrap();
        assert_eq!((to_client.opcode, &payload[..2]), (opcode::CLOSE, &1002u16.to_be_bytes()[..]));
        drop(backend);
        assert_eq!(task.await.unwrap().end, End::ClientFault(ReadFault::Protocol));

        let (mut client, _backend, task) =
            spawn_tunnel(quick(), TunnelOptions { limits: LIMITS, ..Default::default() });
        client.write_all(&frame(true, true, opcode::TEXT, b"x", true)).await.unwrap();
        let (close, payload) = read_frame(&mut client).await.unwrap();
        assert_eq!((close.opcode, &payload[..2]), (opcode::CLOSE, &1002u16.to_be_bytes()[..]));
        assert_eq!(task.await.unwrap().end, End::ClientFault(ReadFault::Protocol));
    }

    #[tokio::test]
    async fn invalid_utf8_is_closed_1007_before_any_of_its_frame_reaches_the_backend() {
        let (mut client, mut backend, task) =
            spawn_tunnel(quick(), TunnelOptions { limits: LIMITS, ..Default::default() });
        let mut bytes = frame(false, false, opcode::TEXT, b"ok \xe2\x82", true);
        bytes.extend(frame(true, false, opcode::CONTINUATION, b"x", true));
        client.write_all(&bytes).await.unwrap();
        let (to_client, payload) = read_frame(&mut client).await.unwrap();
        assert_eq!((to_client.opcode, &payload[..2]), (opcode::CLOSE, &1007u16.to_be_bytes()[..]));
        let (first, _) = read_frame(&mut backend).await.unwrap();
        assert_eq!(first.opcode, opcode::TEXT, "the valid first fragment passed");
        let (close, payload) = read_frame(&mut backend).await.unwrap();
        assert_eq!((close.opcode, &payload[..2]), (opcode::CLOSE, &1001u16.to_be_bytes()[..]), "then a clean close");
        drop(backend);
        assert_eq!(task.await.unwrap().end, End::ClientFault(ReadFault::InvalidUtf8));
    }

    #[tokio::test]
    async fn a_vanished_backend_gives_the_client_1011() {
        let (mut client, backend, task) = rig(quick()).await;
        drop(backend);
        assert_eq!(u16::from(next_close(&mut client).await.unwrap().code), 1011);
        assert_eq!(task.await.unwrap().end, End::BackendGone);
    }

    #[tokio::test]
    async fn a_backend_breaking_the_rules_gets_1002_and_the_client_1014() {
        let (mut client, mut backend, task) =
            spawn_tunnel(quick(), TunnelOptions { limits: LIMITS, ..Default::default() });
        // A server must not mask (RFC 6455 §5.1).
        backend.write_all(&frame(true, false, opcode::TEXT, b"hi", true)).await.unwrap();
        let (to_client, payload) = read_frame(&mut client).await.unwrap();
        assert_eq!((to_client.opcode, &payload[..2]), (opcode::CLOSE, &BAD_GATEWAY.to_be_bytes()[..]));
        let (to_backend, payload) = read_frame(&mut backend).await.unwrap();
        assert_eq!((to_backend.opcode, &payload[..2]), (opcode::CLOSE, &1002u16.to_be_bytes()[..]));
        assert!(to_backend.mask.is_some());
        drop(client);
        assert_eq!(task.await.unwrap().end, End::BackendFault(ReadFault::Protocol));
    }

    #[tokio::test]
    async fn oversize_frames_are_refused_from_their_header() {
        let (mut client, _backend, task) =
            spawn_tunnel(quick(), TunnelOptions { limits: LIMITS, ..Default::default() });
        // Only the header of a 1 MB frame is sent: the answer cannot wait for the payload.
        let header = &frame(true, false, opcode::BINARY, &vec![0; 1 << 20], true)[..14];
        client.write_all(header).await.unwrap();
        let (close, payload) = read_frame(&mut client).await.unwrap();
        assert_eq!((close.opcode, &payload[..2]), (opcode::CLOSE, &1009u16.to_be_bytes()[..]));
        assert_eq!(task.await.unwrap().end, End::ClientFault(ReadFault::TooBig));
    }

    #[tokio::test]
    async fn a_backend_that_stops_reading_stalls_the_client_instead_of_queueing() {
        let (mut client, backend, task) = spawn_tunnel(quick(), TunnelOptions { limits: LIMITS, ..Default::default() });
        let one = frame(true, false, opcode::BINARY, &[0u8; 1000], true);
        let mut sent = 0usize;
        while tokio::time::timeout(Duration::from_millis(200), client.write_all(&one)).await.is_ok() {
            sent += 1;
            assert!(sent < 1000, "1 MB accepted with nobody reading: something queues without bound");
        }
        assert!(sent > 0);
        drop(backend);
        drop(client);
        let _ = task.await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_is_pinged_and_an_unanswering_one_closed_as_idle() {
        let settings = RelaySettings {
            idle_timeout: Duration::from_secs(10),
            ping_interval: Some(Duration::from_secs(2)),
            close_timeout: Duration::from_secs(1),
        };
        let (mut client, mut backend, task) =
            spawn_tunnel(settings, TunnelOptions { limits: LIMITS, ..Default::default() });
        let (ping, payload) = read_frame(&mut client).await.unwrap();
        assert_eq!((ping.opcode, payload.as_slice()), (opcode::PING, GATEWAY_PING));
        // The answer to the gateway's ping is not the backend's business.
        client.write_all(&frame(true, false, opcode::PONG, GATEWAY_PING, true)).await.unwrap();
        // From now on the client stays silent: idle 10 s later.
        let report = task.await.unwrap();
        assert_eq!(report.end, End::Idle);
        let (close, payload) = read_frame(&mut backend).await.unwrap();
        assert_eq!((close.opcode, &payload[..2]), (opcode::CLOSE, &u16::from(CloseCode::Away).to_be_bytes()[..]));
    }
}
