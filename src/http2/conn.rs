//! A connection's I/O, for either role: writes what streams queued in
//! [`State::out`], reads frames and dispatches them to their streams,
//! answers SETTINGS and PING, sends keep-alive PINGs. Protocol violations
//! by the peer end their stream (RST_STREAM) or the connection (GOAWAY),
//! as RFC 9113 §5.4 says, never a panic. What differs by role is how a
//! header block is taken ([`super::client::on_headers`],
//! [`super::server::on_headers`]) and when the connection is done.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use h2::Reason;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, Sleep};

use super::frame::{self, Head, flag, kind, setting};
use super::hpack::{self, Decoder};
use super::server::Accepted;
use super::state::{OUT_HIGH_WATER, Role, Shared, State};
use super::{Error, Settings, client, server};

/// The largest frame we accept: our SETTINGS_MAX_FRAME_SIZE stays at its default.
const MAX_FRAME: usize = frame::DEFAULT_MAX_FRAME_SIZE;
/// HPACK table size we announce (the default).
const HEADER_TABLE_SIZE: usize = 4096;

/// Our unwritten output is past [`OUT_HIGH_WATER`]: reading waits.
struct Crowded(bool);

/// A header block that has begun (HEADERS without END_HEADERS) and waits for CONTINUATION.
struct PartialBlock {
    stream: u32,
    end_stream: bool,
    block: BytesMut,
}

enum Ping {
    /// Next PING when the timer fires.
    Idle,
    /// A PING is out; the connection fails when the timer fires first.
    Awaiting,
}

/// Empty DATA, HEADERS or CONTINUATION frames allowed in a row before the
/// connection is ended with ENHANCE_YOUR_CALM (CVE-2019-9518). A real peer
/// sends at most a few (an empty DATA before the END_STREAM one, say).
const MAX_EMPTY_FRAMES: u32 = 100;

/// See the module doc. Our client's is spawned by whoever called
/// [`super::client::handshake`]; our server's is driven by
/// [`super::server::Server`].
pub struct Connection<T> {
    io: T,
    shared: Arc<Shared>,
    role: Role,
    settings: Settings,
    read_buf: BytesMut,
    /// Bytes being written; swapped with [`State::out`] when written.
    write_buf: BytesMut,
    written: usize,
    decoder: Decoder,
    partial: Option<PartialBlock>,
    /// Server role: bytes of the client's connection preface still to check.
    magic_left: usize,
    /// The peer's first frame must be SETTINGS (§3.4).
    preface_seen: bool,
    /// DATA, HEADERS and CONTINUATION frames in a row that carried nothing
    /// and ended nothing (see [`MAX_EMPTY_FRAMES`]).
    empty_frames: u32,
    read_closed: bool,
    /// Reading waits for our output to be written (see `poll_read`).
    read_paused: bool,
    keep_alive: Pin<Box<Sleep>>,
    ping: Ping,
    /// Server role: requests whose head arrived, for the server to start.
    pub(super) accepted: VecDeque<Accepted>,
    /// The fields of the header block being taken (kept to reuse its allocation).
    fields: Vec<hpack::Field>,
}

impl<T> Connection<T> {
    /// The I/O for `io`; our preface and SETTINGS are already in `shared`'s output.
    pub(super) fn new(io: T, shared: Arc<Shared>, role: Role, settings: Settings) -> Self {
        Connection {
            io,
            shared,
            role,
            magic_left: if role == Role::Server { frame::PREFACE.len() } else { 0 },
            accepted: VecDeque::new(),
            fields: Vec::with_capacity(16),
            read_buf: BytesMut::with_capacity(MAX_FRAME + frame::HEAD_LEN),
            write_buf: BytesMut::with_capacity(16 * 1024),
            written: 0,
            decoder: Decoder::new(HEADER_TABLE_SIZE),
            partial: None,
            preface_seen: false,
            empty_frames: 0,
            read_closed: false,
            read_paused: false,
            keep_alive: Box::pin(tokio::time::sleep(settings.keep_alive_interval)),
            ping: Ping::Idle,
            settings,
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> Future for Connection<T> {
    type Output = ();

    /// Our client's connection task.
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        this.poll_keep_alive(cx);
        if !this.read_closed {
            this.poll_read(cx);
        }
        this.poll_flush_or_end(cx).map(drop)
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> Connection<T> {
    /// Writes what is queued; `Ready` with how the connection ended once it
    /// is over (the socket shut down).
    pub(super) fn poll_flush_or_end(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        match self.poll_write(cx) {
            Poll::Ready(Ok(())) if self.read_paused => {
                // Written down: reading goes on, in the next poll.
                self.read_paused = false;
                cx.waker().wake_by_ref();
            }
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => {
                let error = Error::Io(Arc::new(e));
                self.shared.lock().fail(error.clone());
                return Poll::Ready(Err(error));
            }
            Poll::Pending => return Poll::Pending,
        }
        let mut state = self.shared.lock();
        let done = match self.role {
            Role::Client => state.failed.is_some() || (state.clients == 0 && state.streams.is_empty()),
            Role::Server => {
                state.failed.is_some()
                    || (state.streams.is_empty()
                        && (self.read_closed || state.goaway_sent.is_some() || state.goaway.is_some()))
            }
        };
        if !done {
            return Poll::Pending;
        }
        let ended = match &state.failed {
            None => {
                // Nothing can open any more and nothing is running: close politely.
                if self.role == Role::Client || (!self.read_closed && state.goaway_sent.is_none()) {
                    let last = if self.role == Role::Server { state.last_stream } else { 0 };
                    frame::put_goaway(&mut state.out, last, Reason::NO_ERROR.into());
                }
                state.failed = Some(Error::Closed);
                drop(state);
                let _ = self.poll_write(cx);
                Ok(())
            }
            Some(Error::Closed) => Ok(()),
            Some(e) => Err(e.clone()),
        };
        let _ = Pin::new(&mut self.io).poll_shutdown(cx);
        Poll::Ready(ended)
    }

    /// Server role: GOAWAY naming the last stream we will process; the
    /// connection ends once the open streams are done.
    pub(super) fn graceful_shutdown(&mut self) {
        let mut state = self.shared.lock();
        if state.goaway_sent.is_none() && state.failed.is_none() {
            let last = state.last_stream;
            state.goaway_sent = Some(last);
            frame::put_goaway(&mut state.out, last, Reason::NO_ERROR.into());
            state.wake_io();
        }
    }

    pub(super) fn poll_keep_alive(&mut self, cx: &mut Context<'_>) {
        while self.keep_alive.as_mut().poll(cx).is_ready() {
            let mut state = self.shared.lock();
            match self.ping {
                Ping::Idle => {
                    frame::put_ping(&mut state.out, *b"tollgate", false);
                    self.ping = Ping::Awaiting;
                    self.keep_alive.as_mut().reset(Instant::now() + self.settings.keep_alive_timeout);
                }
                Ping::Awaiting => {
                    tracing::debug!(role = ?self.role, "HTTP/2 peer missed a keep-alive PING; closing the connection");
                    state.fail(Error::KeepAliveTimedOut);
                    return;
                }
            }
        }
    }

    /// Reads and dispatches until the socket has nothing more.
    pub(super) fn poll_read(&mut self, cx: &mut Context<'_>) {
        if self.read_closed {
            return;
        }
        loop {
            match self.dispatch_buffered() {
                Err(e) => {
                    self.connection_error(e);
                    return;
                }
                Ok(Crowded(true)) => {
                    // The peer is not reading what we owe it (answers to its
                    // PINGs and SETTINGS, say: the floods of CVE-2019-9512/9515):
                    // read no more until that is written.
                    self.read_paused = true;
                    return;
                }
                Ok(Crowded(false)) => {}
            }
            if self.read_buf.capacity() - self.read_buf.len() < 4096 {
                self.read_buf.reserve(MAX_FRAME + frame::HEAD_LEN);
            }
            match tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.read_buf) {
                Poll::Pending => return,
                Poll::Ready(Ok(0)) => {
                    self.read_closed = true;
                    self.shared.lock().fail(Error::Closed);
                    return;
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => {
                    self.read_closed = true;
                    self.shared.lock().fail(Error::Io(Arc::new(e)));
                    return;
                }
            }
        }
    }

    /// A connection error of ours: GOAWAY with its code, and every stream fails.
    fn connection_error(&mut self, error: Error) {
        tracing::debug!(%error, role = ?self.role, "HTTP/2 connection error");
        self.read_closed = true;
        let mut state = self.shared.lock();
        if let Some(reason) = error.reason() {
            let last = if self.role == Role::Server { state.last_stream } else { 0 };
            frame::put_goaway(&mut state.out, last, reason.into());
        }
        state.fail(error);
    }

    /// Handles every complete frame in the read buffer, and says whether our
    /// output has grown past [`OUT_HIGH_WATER`] meanwhile.
    fn dispatch_buffered(&mut self) -> Result<Crowded, Error> {
        if self.magic_left > 0 {
            let offset = frame::PREFACE.len() - self.magic_left;
            let n = self.magic_left.min(self.read_buf.len());
            if self.read_buf[..n] != frame::PREFACE[offset..offset + n] {
                return Err(Error::protocol("not an HTTP/2 connection preface"));
            }
            self.read_buf.advance(n);
            self.magic_left -= n;
            if self.magic_left > 0 {
                return Ok(Crowded(false));
            }
        }
        if self.read_buf.len() < frame::HEAD_LEN {
            return Ok(Crowded(false));
        }
        let shared = Arc::clone(&self.shared);
        let mut state = shared.lock();
        while self.read_buf.len() >= frame::HEAD_LEN {
            let head = Head::parse(&self.read_buf);
            if head.len > MAX_FRAME {
                return Err(Error::Protocol { reason: Reason::FRAME_SIZE_ERROR, what: "frame larger than allowed" });
            }
            if self.read_buf.len() < frame::HEAD_LEN + head.len {
                break;
            }
            let mut payload = self.read_buf.split_to(frame::HEAD_LEN + head.len).freeze();
            payload.advance(frame::HEAD_LEN);
            if !self.preface_seen {
                if head.kind != kind::SETTINGS || head.has(flag::ACK) {
                    return Err(Error::protocol("the peer's preface is not SETTINGS"));
                }
                self.preface_seen = true;
            }
            if let Some(partial) = &self.partial
                && (head.kind != kind::CONTINUATION || head.stream != partial.stream)
            {
                return Err(Error::protocol("header block interrupted"));
            }
            if matches!(head.kind, kind::DATA | kind::HEADERS | kind::CONTINUATION) {
                // CVE-2019-9518: frames that carry nothing cost work and move nothing.
                let ends = head.has(if head.kind == kind::DATA { flag::END_STREAM } else { flag::END_HEADERS });
                // A DATA frame of padding alone carries nothing either.
                let padding = match payload.first() {
                    Some(&pad) if head.kind == kind::DATA && head.has(flag::PADDED) => 1 + usize::from(pad),
                    _ => 0,
                };
                if payload.len() <= padding && !ends {
                    self.empty_frames += 1;
                    if self.empty_frames > MAX_EMPTY_FRAMES {
                        return Err(Error::Protocol {
                            reason: Reason::ENHANCE_YOUR_CALM,
                            what: "a flood of empty frames",
                        });
                    }
                } else {
                    self.empty_frames = 0;
                }
            }
            self.frame(&mut state, head, payload)?;
            if state.peer_faults > self.settings.max_peer_faults {
                return Err(Error::Protocol { reason: Reason::ENHANCE_YOUR_CALM, what: "too many malformed streams" });
            }
            if state.early_resets > self.settings.max_early_resets {
                return Err(Error::Protocol {
                    reason: Reason::ENHANCE_YOUR_CALM,
                    what: "too many streams reset before an answer (rapid reset)",
                });
            }
        }
        Ok(Crowded(state.out.len() >= OUT_HIGH_WATER))
    }

    fn frame(&mut self, state: &mut State, head: Head, payload: Bytes) -> Result<(), Error> {
        match head.kind {
            kind::DATA => data(state, self.role, head, payload),
            kind::HEADERS => {
                let block = header_block_of(&head, payload)?;
                let end_stream = head.has(flag::END_STREAM);
                if head.has(flag::END_HEADERS) {
                    self.headers(state, head.stream, &block, end_stream)
                } else {
                    self.partial =
                        Some(PartialBlock { stream: head.stream, end_stream, block: BytesMut::from(&block[..]) });
                    Ok(())
                }
            }
            kind::CONTINUATION => {
                let Some(mut partial) = self.partial.take() else {
                    return Err(Error::protocol("CONTINUATION without HEADERS"));
                };
                partial.block.extend_from_slice(&payload);
                // A block far past the list limit is a flood (CVE-2024-27316), not a response.
                if partial.block.len() > 2 * self.settings.max_header_list_size as usize + MAX_FRAME {
                    return Err(Error::Protocol { reason: Reason::ENHANCE_YOUR_CALM, what: "header block too large" });
                }
                if head.has(flag::END_HEADERS) {
                    let block = partial.block.freeze();
                    self.headers(state, partial.stream, &block, partial.end_stream)
                } else {
                    self.partial = Some(partial);
                    Ok(())
                }
            }
            kind::RST_STREAM => {
                if head.len != 4 {
                    return Err(Error::Protocol { reason: Reason::FRAME_SIZE_ERROR, what: "RST_STREAM length" });
                }
                check_stream(state, head.stream)?;
                let reason = Reason::from(u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]));
                reset_by_peer(state, self.role, head.stream, reason);
                Ok(())
            }
            kind::SETTINGS => settings(state, self.role, head, &payload),
            kind::PING => {
                if head.stream != 0 {
                    return Err(Error::protocol("PING on a stream"));
                }
                if head.len != 8 {
                    return Err(Error::Protocol { reason: Reason::FRAME_SIZE_ERROR, what: "PING length" });
                }
                if head.has(flag::ACK) {
                    if matches!(self.ping, Ping::Awaiting) {
                        self.ping = Ping::Idle;
                        self.keep_alive.as_mut().reset(Instant::now() + self.settings.keep_alive_interval);
                    }
                } else {
                    let mut echo = [0u8; 8];
                    echo.copy_from_slice(&payload);
                    frame::put_ping(&mut state.out, echo, true);
                }
                Ok(())
            }
            kind::GOAWAY => {
                if head.stream != 0 || head.len < 8 {
                    return Err(Error::protocol("malformed GOAWAY"));
                }
                let last = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]) & frame::MAX_WINDOW;
                let code = Reason::from(u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]));
                goaway(state, self.role, last, code);
                Ok(())
            }
            kind::WINDOW_UPDATE => window_update(state, head, &payload),
            // Clients never push, and we disable push as a client.
            kind::PUSH_PROMISE => Err(Error::protocol("PUSH_PROMISE with push disabled")),
            kind::PRIORITY => {
                if head.len != 5 {
                    return Err(Error::Protocol { reason: Reason::FRAME_SIZE_ERROR, what: "PRIORITY length" });
                }
                Ok(())
            }
            // Unknown frame types are ignored (§4.1).
            _ => Ok(()),
        }
    }

    /// A complete header block for stream `id`, decoded whatever becomes
    /// of the stream (the table must stay in step), then taken by role.
    fn headers(&mut self, state: &mut State, id: u32, block: &Bytes, end_stream: bool) -> Result<(), Error> {
        // Fields stop being kept past the list limit: a small block of
        // indexed references can name far more than it weighs.
        let limit = self.settings.max_header_list_size as usize;
        let (fields, mut size) = (&mut self.fields, 0usize);
        fields.clear();
        self.decoder
            .decode(block, |f| {
                size += f.size();
                if size <= limit {
                    fields.push(f);
                }
            })
            .map_err(|_| Error::Protocol { reason: Reason::COMPRESSION_ERROR, what: "undecodable header block" })?;
        let fields = (size <= limit).then_some(fields);
        match self.role {
            Role::Client => client::on_headers(state, id, fields, end_stream),
            Role::Server => server::on_headers(state, &mut self.accepted, &self.settings, id, fields, end_stream),
        }
    }

    /// Writes what streams have queued; `Ready(Ok)` once all of it is out and flushed.
    pub(super) fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        loop {
            if self.written == self.write_buf.len() {
                self.write_buf.clear();
                self.written = 0;
                let mut state = self.shared.lock();
                if state.io_waker.as_ref().is_none_or(|w| !w.will_wake(cx.waker())) {
                    state.io_waker = Some(cx.waker().clone());
                }
                if state.out.is_empty() {
                    break;
                }
                std::mem::swap(&mut state.out, &mut self.write_buf);
                if self.write_buf.len() >= OUT_HIGH_WATER {
                    // Senders held back by a full buffer may go on.
                    for stream in state.streams.values_mut() {
                        if let Some(w) = stream.send_waker.take() {
                            w.wake();
                        }
                    }
                }
            }
            match Pin::new(&mut self.io).poll_write(cx, &self.write_buf[self.written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => self.written += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Pin::new(&mut self.io).poll_flush(cx)
    }
}

/// Frames on a stream never opened are a connection error (§5.1: idle streams).
pub(super) fn check_stream(state: &State, id: u32) -> Result<(), Error> {
    if id == 0 {
        return Err(Error::protocol("stream frame on stream 0"));
    }
    if id.is_multiple_of(2) || id > state.last_stream {
        return Err(Error::protocol("frame on a stream never opened"));
    }
    Ok(())
}

/// Removes a PADDED frame's padding (§6.1, §6.2) from `payload`.
fn strip_padding(head: &Head, payload: &mut Bytes) -> Result<(), Error> {
    if head.has(flag::PADDED) {
        let pad = usize::from(*payload.first().ok_or(Error::protocol("padded frame without padding length"))?);
        payload.advance(1);
        if pad > payload.len() {
            return Err(Error::protocol("padding longer than the frame"));
        }
        payload.truncate(payload.len() - pad);
    }
    Ok(())
}

/// The header block inside a HEADERS payload: padding and priority removed.
fn header_block_of(head: &Head, mut payload: Bytes) -> Result<Bytes, Error> {
    strip_padding(head, &mut payload)?;
    if head.has(flag::PRIORITY) {
        if payload.len() < 5 {
            return Err(Error::Protocol { reason: Reason::FRAME_SIZE_ERROR, what: "HEADERS priority" });
        }
        payload.advance(5);
    }
    Ok(payload)
}

fn data(state: &mut State, role: Role, head: Head, mut payload: Bytes) -> Result<(), Error> {
    check_stream(state, head.stream)?;
    let flow_len = head.len as i64;
    state.recv_window -= flow_len;
    if state.recv_window < 0 {
        return Err(Error::Protocol { reason: Reason::FLOW_CONTROL_ERROR, what: "connection window exceeded" });
    }
    strip_padding(&head, &mut payload)?;
    let padding = head.len - payload.len();
    let id = head.stream;
    let Some(stream) = state.streams.get_mut(&id) else {
        // A stream we already reset or finished: its window goes straight back.
        state.release_connection(head.len as u32);
        return Ok(());
    };
    if stream.error.is_some() {
        state.release_connection(head.len as u32);
        return Ok(());
    }
    if !stream.head_received || stream.recv_end {
        state.release_connection(head.len as u32);
        state.reset_stream(
            id,
            Error::protocol("DATA before the head or after END_STREAM"),
            Some(Reason::STREAM_CLOSED),
        );
        return Ok(());
    }
    if stream.recv_dropped && role == Role::Server {
        // Nobody reads this request any more (answered early): dropped, window handed back.
        state.release_connection(head.len as u32);
        if head.has(flag::END_STREAM) {
            end_recv(state, id);
        }
        return Ok(());
    }
    stream.recv_window -= flow_len;
    if stream.recv_window < 0 {
        state.release_connection(head.len as u32);
        state.reset_stream(
            id,
            Error::Protocol { reason: Reason::FLOW_CONTROL_ERROR, what: "stream window exceeded" },
            Some(Reason::FLOW_CONTROL_ERROR),
        );
        return Ok(());
    }
    if let Some(left) = stream.expect_len {
        match left.checked_sub(payload.len() as u64) {
            Some(left) => stream.expect_len = Some(left),
            None => {
                state.release_connection(head.len as u32);
                state.reset_stream(id, Error::protocol("more DATA than Content-Length"), Some(Reason::PROTOCOL_ERROR));
                return Ok(());
            }
        }
    }
    if !payload.is_empty() {
        stream.data.push_back(payload);
    }
    if padding > 0 {
        state.release(id, padding as u32);
    }
    if head.has(flag::END_STREAM) {
        end_recv(state, id);
    } else if let Some(stream) = state.streams.get_mut(&id)
        && let Some(w) = stream.recv_waker.take()
    {
        w.wake();
    }
    Ok(())
}

/// END_STREAM received on `id`.
pub(super) fn end_recv(state: &mut State, id: u32) {
    let Some(stream) = state.streams.get_mut(&id) else { return };
    if stream.expect_len.is_some_and(|left| left > 0) {
        state.reset_stream(id, Error::protocol("body shorter than Content-Length"), Some(Reason::PROTOCOL_ERROR));
        return;
    }
    stream.recv_end = true;
    if let Some(w) = stream.recv_waker.take() {
        w.wake();
    }
    state.settle(id);
}

fn reset_by_peer(state: &mut State, role: Role, id: u32, reason: Reason) {
    let Some(stream) = state.streams.get_mut(&id) else { return };
    if role == Role::Server && !stream.head_sent {
        state.early_resets += 1;
    }
    if role == Role::Client && stream.recv_end {
        // The response is complete; the backend wants no more of the request
        // (§8.1 says NO_ERROR, but whatever the code, nothing that arrived
        // is lost: the call's outcome is in the response already).
        stream.send_end = true;
        stream.pending.clear();
        if let Some(w) = stream.send_waker.take() {
            w.wake();
        }
        state.settle(id);
        return;
    }
    let error = if reason == Reason::REFUSED_STREAM { Error::Refused } else { Error::Reset(reason) };
    state.reset_stream(id, error, None);
}

fn goaway(state: &mut State, role: Role, last: u32, code: Reason) {
    state.goaway = Some(state.goaway.map_or(last, |before| before.min(last)));
    if role == Role::Server {
        // A client's GOAWAY concerns streams we would push: none. Its open
        // requests are still answered.
        if code != Reason::NO_ERROR {
            tracing::debug!(%code, "HTTP/2 client sent GOAWAY");
        }
        return;
    }
    let ids: Vec<u32> = state.streams.keys().copied().filter(|&id| id > last).collect();
    for id in ids {
        state.reset_stream(id, Error::Refused, None);
    }
    if code != Reason::NO_ERROR {
        tracing::debug!(%code, "gRPC upstream sent GOAWAY");
        let ids: Vec<u32> = state.streams.keys().copied().collect();
        for id in ids {
            if let Some(s) = state.streams.get(&id)
                && !s.recv_end
            {
                state.reset_stream(id, Error::GoAway(code), None);
            }
        }
    }
    state.pending_open.clear();
}

fn settings(state: &mut State, role: Role, head: Head, payload: &[u8]) -> Result<(), Error> {
    if head.stream != 0 {
        return Err(Error::protocol("SETTINGS on a stream"));
    }
    if head.has(flag::ACK) {
        if head.len != 0 {
            return Err(Error::Protocol { reason: Reason::FRAME_SIZE_ERROR, what: "SETTINGS ack with a payload" });
        }
        return Ok(());
    }
    if !head.len.is_multiple_of(6) {
        return Err(Error::Protocol { reason: Reason::FRAME_SIZE_ERROR, what: "SETTINGS length" });
    }
    let mut max_concurrent = None;
    for param in payload.chunks_exact(6) {
        let id = u16::from_be_bytes([param[0], param[1]]);
        let value = u32::from_be_bytes([param[2], param[3], param[4], param[5]]);
        match id {
            // A client's limit is on streams we would push: none.
            setting::MAX_CONCURRENT_STREAMS if role == Role::Client => max_concurrent = Some(value),
            setting::INITIAL_WINDOW_SIZE => {
                if value > frame::MAX_WINDOW {
                    return Err(Error::Protocol {
                        reason: Reason::FLOW_CONTROL_ERROR,
                        what: "initial window too large",
                    });
                }
                let delta = i64::from(value) - i64::from(state.peer.initial_window);
                state.peer.initial_window = value;
                for stream in state.streams.values_mut() {
                    stream.send_window += delta;
                    if stream.send_window > i64::from(frame::MAX_WINDOW) {
                        return Err(Error::Protocol { reason: Reason::FLOW_CONTROL_ERROR, what: "window overflow" });
                    }
                }
            }
            setting::MAX_FRAME_SIZE => {
                if !(frame::DEFAULT_MAX_FRAME_SIZE as u32..1 << 24).contains(&value) {
                    return Err(Error::protocol("invalid SETTINGS_MAX_FRAME_SIZE"));
                }
                state.peer.max_frame = value as usize;
            }
            setting::ENABLE_PUSH if value > 1 || (value == 1 && role == Role::Client) => {
                return Err(Error::protocol("invalid SETTINGS_ENABLE_PUSH"));
            }
            setting::HEADER_TABLE_SIZE if value < frame::DEFAULT_HEADER_TABLE_SIZE && !state.peer.table_zeroed => {
                state.peer.shrink_table = true;
            }
            // MAX_HEADER_LIST_SIZE: advisory.
            _ => {}
        }
    }
    frame::put_settings(&mut state.out, &[], true);
    let old = state.peer.max_concurrent;
    let new = match max_concurrent {
        Some(limit) => limit,
        // The first SETTINGS without a limit: unlimited (§6.5.2).
        None if !state.peer.received => u32::MAX,
        None => old,
    };
    state.peer.max_concurrent = new;
    if !state.peer.received {
        state.peer.received = true;
        for w in state.ready_waiters.drain(..) {
            w.wake();
        }
    }
    if new > old {
        state.open_waiting();
    }
    state.flush_blocked();
    Ok(())
}

fn window_update(state: &mut State, head: Head, payload: &[u8]) -> Result<(), Error> {
    if head.len != 4 {
        return Err(Error::Protocol { reason: Reason::FRAME_SIZE_ERROR, what: "WINDOW_UPDATE length" });
    }
    let increment = i64::from(u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]) & frame::MAX_WINDOW);
    if head.stream == 0 {
        if increment == 0 {
            return Err(Error::protocol("WINDOW_UPDATE of 0"));
        }
        state.send_window += increment;
        if state.send_window > i64::from(frame::MAX_WINDOW) {
            return Err(Error::Protocol { reason: Reason::FLOW_CONTROL_ERROR, what: "connection window overflow" });
        }
    } else {
        check_stream(state, head.stream)?;
        let id = head.stream;
        let Some(stream) = state.streams.get_mut(&id) else { return Ok(()) };
        if increment == 0 {
            state.reset_stream(id, Error::protocol("WINDOW_UPDATE of 0"), Some(Reason::PROTOCOL_ERROR));
            return Ok(());
        }
        stream.send_window += increment;
        if stream.send_window > i64::from(frame::MAX_WINDOW) {
            let error = Error::Protocol { reason: Reason::FLOW_CONTROL_ERROR, what: "stream window overflow" };
            state.reset_stream(id, error, Some(Reason::FLOW_CONTROL_ERROR));
            return Ok(());
        }
    }
    if !state.blocked.is_empty() {
        state.flush_blocked();
    }
    Ok(())
}
