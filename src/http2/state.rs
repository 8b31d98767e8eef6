//! The state one connection's streams and its I/O share, under one lock:
//! the streams, the frames waiting to be written, flow-control windows
//! both ways and the peer's settings. The same for both roles: our client
//! (gRPC upstreams) and our server (the listeners' HTTP/2).
//!
//! Streams encode their own frames into [`State::out`] and wake the I/O,
//! which only writes bytes out and dispatches what it reads: no frame
//! queues, no per-stream hand-off.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Mutex, MutexGuard};
use std::task::Waker;

use bytes::{Buf, Bytes, BytesMut};
use h2::Reason;
use http::{HeaderMap, Response};

use super::Error;
use crate::http2::frame;

/// Which end of the connection we are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// We open the streams (gRPC upstreams).
    Client,
    /// The peer opens them (listeners).
    Server,
}

/// A connection's state behind its lock, shared by the I/O and every
/// stream's handles.
#[derive(Debug)]
pub(crate) struct Shared {
    state: Mutex<State>,
}

impl Shared {
    pub fn new(state: State) -> Self {
        Shared { state: Mutex::new(state) }
    }

    pub fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent-enough state for
        // failing the remaining streams; never propagate the poison.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Stream ids are distinct small odd numbers: a multiply spreads them.
#[derive(Default)]
pub(super) struct StreamIdHasher(u64);

impl Hasher for StreamIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8 | u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u32(&mut self, id: u32) {
        self.0 = u64::from(id).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// What the peer's SETTINGS allow us (RFC 9113 §6.5.2).
#[derive(Debug)]
pub(super) struct PeerSettings {
    /// Its first SETTINGS arrived: until then our client opens no stream.
    pub received: bool,
    /// Streams we may open (client role); counted as 0 until the first SETTINGS.
    pub max_concurrent: u32,
    pub initial_window: u32,
    pub max_frame: usize,
    /// It shrank SETTINGS_HEADER_TABLE_SIZE below the default, and our next
    /// header block must open with a table size update (RFC 7541 §4.2).
    /// Our encoder never indexes, so that update sets our table to 0 once and
    /// for all (`table_zeroed`): no later SETTINGS can shrink it further.
    pub shrink_table: bool,
    pub table_zeroed: bool,
}

impl PeerSettings {
    /// Writes a header block as HEADERS (and CONTINUATION) frames on stream
    /// `id`, led by the table size update the peer is owed, if any.
    pub fn put_header_block(&mut self, out: &mut BytesMut, id: u32, block: &[u8], end_stream: bool) {
        if self.shrink_table {
            self.shrink_table = false;
            self.table_zeroed = true;
            let mut led = BytesMut::with_capacity(block.len() + 1);
            led.extend_from_slice(&[super::hpack::TABLE_SIZE_ZERO]);
            led.extend_from_slice(block);
            frame::put_headers(out, id, &led, end_stream, self.max_frame);
        } else {
            frame::put_headers(out, id, block, end_stream, self.max_frame);
        }
    }
}

/// Something a stream has to send that is waiting for flow-control window.
#[derive(Debug)]
pub(super) enum Outgoing {
    Data(Bytes, bool),
    /// An encoded header block (a server's response head, or trailers),
    /// and whether it ends the stream.
    Headers(BytesMut, bool),
}

/// DATA received and not yet taken. A stream mostly holds one chunk at a
/// time: it is kept inline, and a queue is allocated only when more arrive
/// before it is taken.
#[derive(Debug, Default)]
pub(super) struct Received {
    /// The oldest chunk; `None` only when `rest` is empty too.
    first: Option<Bytes>,
    rest: VecDeque<Bytes>,
}

impl Received {
    pub fn push_back(&mut self, data: Bytes) {
        if self.first.is_none() {
            self.first = Some(data);
        } else {
            self.rest.push_back(data);
        }
    }

    pub fn pop_front(&mut self) -> Option<Bytes> {
        let first = self.first.take();
        self.first = self.rest.pop_front();
        first
    }

    pub fn front(&self) -> Option<&Bytes> {
        self.first.as_ref()
    }

    pub fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    /// Drops everything held; returns how many bytes that was.
    pub fn discard(&mut self) -> usize {
        let n = self.first.take().map_or(0, |b| b.len()) + self.rest.iter().map(Bytes::len).sum::<usize>();
        self.rest.clear();
        n
    }
}

/// One stream.
#[derive(Debug)]
pub(super) struct Stream {
    /// Client role: the response head, from its arrival until the call takes it.
    pub response: Option<Response<()>>,
    /// The peer's head arrived (always, for a stream a client opened on our server).
    pub head_received: bool,
    /// Server role: our response head is sent or queued.
    pub head_sent: bool,
    /// DATA received and not yet taken.
    pub data: Received,
    pub trailers: Option<HeaderMap>,
    /// END_STREAM received.
    pub recv_end: bool,
    /// Bytes still expected per the response's `Content-Length`.
    pub expect_len: Option<u64>,
    /// What the backend may still send on this stream before our next WINDOW_UPDATE.
    pub recv_window: i64,
    /// Bytes taken by the call whose window has not been handed back yet.
    pub unreleased: u32,
    pub recv_waker: Option<Waker>,
    pub send_window: i64,
    /// What waits for send window, in order.
    pub pending: VecDeque<Outgoing>,
    /// END_STREAM sent or queued.
    pub send_end: bool,
    pub send_waker: Option<Waker>,
    /// Reset (by either side) or failed with the connection.
    pub error: Option<Error>,
    /// Live handles: the send half and the receive half.
    pub halves: u8,
    /// The receive half is gone: nobody will read what comes.
    pub recv_dropped: bool,
    /// Counted in [`State::active`] (an open stream, within the limit of the
    /// side that did not open it).
    pub counted: bool,
    /// HEADERS sent. Until then the stream waits in [`State::pending_open`]
    /// with its encoded head here, and nothing else of it is sent.
    pub opened: bool,
    pub head_block: Option<BytesMut>,
}

impl Stream {
    fn closed(&self) -> bool {
        self.error.is_some() || (self.recv_end && self.send_end && self.pending.is_empty())
    }

    fn wake(&mut self) {
        if let Some(w) = self.recv_waker.take() {
            w.wake();
        }
        if let Some(w) = self.send_waker.take() {
            w.wake();
        }
    }
}

/// See the module doc.
#[derive(Debug)]
pub(crate) struct State {
    pub role: Role,
    pub streams: HashMap<u32, Stream, BuildHasherDefault<StreamIdHasher>>,
    pub next_id: u32,
    /// Encoded frames for the I/O task to write.
    pub out: BytesMut,
    pub io_waker: Option<Waker>,
    pub peer: PeerSettings,
    /// Connection-level send window.
    pub send_window: i64,
    /// Connection-level: what the backend may still send.
    pub recv_window: i64,
    /// Connection-level bytes taken (or discarded) not yet handed back.
    pub unreleased: u32,
    /// Our windows, as announced.
    pub stream_window: u32,
    pub connection_window: u32,
    /// Streams with something in `pending`.
    pub blocked: Vec<u32>,
    /// Callers waiting for the backend's first SETTINGS.
    pub ready_waiters: Vec<Waker>,
    /// Open streams: for our client, within the backend's
    /// SETTINGS_MAX_CONCURRENT_STREAMS; for our server, within ours.
    pub active: u32,
    /// Streams waiting for a slot, in id order: their HEADERS go out as
    /// slots free, so ids still reach the backend in increasing order.
    pub pending_open: VecDeque<u32>,
    /// The highest stream id in use: whose HEADERS we sent (client role)
    /// or received (server role). Frames above it are on idle streams.
    pub last_stream: u32,
    /// The connection is over; every stream fails with this.
    pub failed: Option<Error>,
    /// The peer's GOAWAY: the last stream it will process.
    pub goaway: Option<u32>,
    /// Our GOAWAY (server role, graceful shutdown): streams above it are ignored.
    pub goaway_sent: Option<u32>,
    /// Live [`super::Client`] handles; none and no streams ends the connection.
    pub clients: usize,
    /// Streams we reset for the peer's protocol errors (a flood past the
    /// limit ends the connection).
    pub peer_faults: usize,
    /// Server role: streams the client reset before we answered, less one
    /// per answer sent (HTTP/2 rapid reset, CVE-2023-44487).
    pub early_resets: usize,
    /// Server role: `:authority` and `host` are checked against the last valid one first.
    pub hosts: crate::http1::fields::HostCheck,
}

/// Encodes `item` of stream `id` into `out` as far as the connection's and
/// the stream's send windows allow (HEADERS need none). True when all of
/// it went; otherwise `item` keeps what is left.
fn send_item(
    out: &mut BytesMut,
    connection_window: &mut i64,
    stream_window: &mut i64,
    id: u32,
    item: &mut Outgoing,
    peer: &mut PeerSettings,
) -> bool {
    let max_frame = peer.max_frame;
    match item {
        Outgoing::Data(data, end) => {
            if data.is_empty() {
                frame::put_data(out, id, &[], *end, max_frame);
                return true;
            }
            let allowed = (*connection_window).min(*stream_window).max(0) as usize;
            if allowed == 0 {
                return false;
            }
            let n = allowed.min(data.len());
            let last = n == data.len();
            frame::put_data(out, id, &data[..n], *end && last, max_frame);
            *connection_window -= n as i64;
            *stream_window -= n as i64;
            if !last {
                data.advance(n);
            }
            last
        }
        Outgoing::Headers(block, end) => {
            peer.put_header_block(out, id, block, *end);
            true
        }
    }
}

/// Past this much unwritten output, senders wait for the I/O task.
pub(super) const OUT_HIGH_WATER: usize = 256 * 1024;

impl State {
    /// A connection's state before the peer's SETTINGS, with our windows as announced.
    pub fn new(role: Role, stream_window: u32, connection_window: u32) -> Self {
        State {
            role,
            streams: HashMap::default(),
            next_id: 1,
            out: BytesMut::with_capacity(16 * 1024),
            io_waker: None,
            peer: PeerSettings {
                received: false,
                max_concurrent: 0,
                initial_window: frame::DEFAULT_WINDOW,
                max_frame: frame::DEFAULT_MAX_FRAME_SIZE,
                shrink_table: false,
                table_zeroed: false,
            },
            send_window: i64::from(frame::DEFAULT_WINDOW),
            recv_window: i64::from(connection_window),
            unreleased: 0,
            stream_window,
            connection_window,
            blocked: Vec::new(),
            ready_waiters: Vec::new(),
            active: 0,
            pending_open: VecDeque::new(),
            last_stream: 0,
            failed: None,
            goaway: None,
            goaway_sent: None,
            clients: 1,
            peer_faults: 0,
            early_resets: 0,
            hosts: Default::default(),
        }
    }

    /// No new stream may open on this connection.
    pub fn refuses_new_streams(&self) -> bool {
        self.failed.is_some() || self.goaway.is_some() || self.next_id > frame::MAX_WINDOW
    }

    /// Wakes the I/O task (once per registration) to write what was queued.
    pub fn wake_io(&mut self) {
        if let Some(w) = self.io_waker.take() {
            w.wake();
        }
    }

    /// A new stream's state, not yet opened.
    pub fn new_stream(&self, end_stream: bool) -> Stream {
        Stream {
            response: None,
            head_received: false,
            head_sent: false,
            data: Received::default(),
            trailers: None,
            recv_end: false,
            expect_len: None,
            recv_window: i64::from(self.stream_window),
            unreleased: 0,
            recv_waker: None,
            send_window: i64::from(self.peer.initial_window),
            pending: VecDeque::new(),
            send_end: end_stream,
            send_waker: None,
            error: None,
            halves: 2,
            recv_dropped: false,
            counted: false,
            opened: false,
            head_block: None,
        }
    }

    /// Sends what `id` has pending as far as the windows allow.
    /// Returns true when nothing is left pending.
    pub fn flush_stream(&mut self, id: u32) -> bool {
        let Some(stream) = self.streams.get_mut(&id) else { return true };
        if stream.error.is_some() {
            stream.pending.clear();
            return true;
        }
        if !stream.opened {
            return false;
        }
        while let Some(next) = stream.pending.front_mut() {
            if !send_item(&mut self.out, &mut self.send_window, &mut stream.send_window, id, next, &mut self.peer) {
                break;
            }
            stream.pending.pop_front();
        }
        let done = stream.pending.is_empty();
        if done && let Some(w) = stream.send_waker.take() {
            w.wake();
        }
        done
    }

    /// After a window grew: sends what blocked streams have pending.
    pub fn flush_blocked(&mut self) {
        let blocked = std::mem::take(&mut self.blocked);
        let mut still = Vec::new();
        for id in blocked {
            if self.flush_stream(id) {
                self.settle(id);
            } else {
                still.push(id);
            }
        }
        self.blocked = still;
        self.wake_io();
    }

    /// Queues `item` behind what `id` already has pending and sends what it can.
    pub fn enqueue(&mut self, id: u32, mut item: Outgoing) {
        let Some(stream) = self.streams.get_mut(&id) else { return };
        let was_empty = stream.pending.is_empty();
        if was_empty && stream.opened && stream.error.is_none() {
            // Nothing ahead of it: straight out if the windows allow (no queue
            // allocation for the usual small message).
            if send_item(&mut self.out, &mut self.send_window, &mut stream.send_window, id, &mut item, &mut self.peer) {
                self.settle(id);
                self.wake_io();
                return;
            }
        }
        stream.pending.push_back(item);
        if !self.flush_stream(id) && was_empty {
            self.blocked.push(id);
        }
        self.settle(id);
        self.wake_io();
    }

    /// Fails stream `id` with `error`, telling the peer with RST_STREAM when `send_reset`.
    pub fn reset_stream(&mut self, id: u32, error: Error, send_reset: Option<Reason>) {
        let Some(stream) = self.streams.get_mut(&id) else { return };
        if stream.error.is_none() {
            if matches!(error, Error::Protocol { .. }) {
                self.peer_faults += 1;
            }
            stream.error = Some(error);
            stream.pending.clear();
            stream.wake();
            // A stream still waiting to open is unknown to the peer: no RST.
            if let Some(reason) = send_reset
                && stream.opened
            {
                frame::put_reset(&mut self.out, id, reason.into());
                self.wake_io();
            }
        }
        self.settle(id);
    }

    /// Gives back the slot of a stream that closed, and drops the stream
    /// once no handle is left.
    pub fn settle(&mut self, id: u32) {
        let Some(stream) = self.streams.get_mut(&id) else { return };
        if self.role == Role::Server
            && stream.recv_dropped
            && !stream.recv_end
            && stream.send_end
            && stream.pending.is_empty()
            && stream.error.is_none()
        {
            // The response is complete and nobody wants the rest of the
            // request: the client may stop sending it (RFC 9113 §8.1).
            stream.error = Some(Error::Closed);
            frame::put_reset(&mut self.out, id, Reason::NO_ERROR.into());
            if let Some(w) = self.io_waker.take() {
                w.wake();
            }
        }
        let freed = stream.counted && stream.closed();
        if freed {
            stream.counted = false;
        }
        // A stream whose handles are gone may still owe the peer data that
        // waits for window: it stays until that is sent (or the stream fails).
        let unused = stream.halves == 0 && (stream.pending.is_empty() || stream.error.is_some());
        if freed {
            self.free_slot();
        }
        if unused {
            let mut stream = self.streams.remove(&id).expect("present");
            // Data nobody will read still counts against the connection window.
            let unread = stream.data.discard();
            self.release_connection(unread as u32);
            self.blocked.retain(|&b| b != id);
        }
    }

    /// A stream closed: its slot goes to the next stream waiting.
    pub fn free_slot(&mut self) {
        self.active -= 1;
        self.open_waiting();
    }

    /// Opens waiting streams, in order, while the backend's limit allows.
    pub fn open_waiting(&mut self) {
        while self.peer.received && self.active < self.peer.max_concurrent {
            let Some(id) = self.pending_open.pop_front() else { break };
            if self.streams.get(&id).is_some_and(|s| s.error.is_none()) {
                self.start(id);
            }
        }
    }

    /// Sends stream `id`'s HEADERS (and what of its body waits), taking a slot.
    pub fn start(&mut self, id: u32) {
        let block = self.streams.get_mut(&id).and_then(|s| s.head_block.take()).unwrap_or_default();
        self.start_with(id, &block);
    }

    /// [`State::start`] with the encoded head given (a stream that never waited).
    pub fn start_with(&mut self, id: u32, block: &[u8]) {
        let Some(stream) = self.streams.get_mut(&id) else { return };
        let end_stream = stream.send_end && stream.pending.is_empty();
        stream.opened = true;
        stream.counted = true;
        self.active += 1;
        self.last_stream = id;
        self.peer.put_header_block(&mut self.out, id, block, end_stream);
        if stream.pending.is_empty() || self.flush_stream(id) {
            self.blocked.retain(|&b| b != id);
        } else if !self.blocked.contains(&id) {
            self.blocked.push(id);
        }
        self.settle(id);
        self.wake_io();
    }

    /// Hands connection window back for `n` bytes taken or discarded.
    pub fn release_connection(&mut self, n: u32) {
        self.unreleased += n;
        if self.unreleased >= self.connection_window / 2 {
            frame::put_window_update(&mut self.out, 0, self.unreleased);
            self.recv_window += i64::from(self.unreleased);
            self.unreleased = 0;
            self.wake_io();
        }
    }

    /// Hands window back for `n` bytes of stream `id` that were taken.
    pub fn release(&mut self, id: u32, n: u32) {
        let half = self.stream_window / 2;
        if let Some(stream) = self.streams.get_mut(&id) {
            stream.unreleased += n;
            if stream.unreleased >= half && !stream.recv_end {
                frame::put_window_update(&mut self.out, id, stream.unreleased);
                stream.recv_window += i64::from(stream.unreleased);
                stream.unreleased = 0;
                self.wake_io();
            }
        }
        self.release_connection(n);
    }

    /// Ends the connection: every unfinished stream fails with `error`.
    pub fn fail(&mut self, error: Error) {
        if self.failed.is_some() {
            return;
        }
        self.failed = Some(error.clone());
        self.pending_open.clear();
        let ids: Vec<u32> = self.streams.keys().copied().collect();
        for id in ids {
            let stream = self.streams.get_mut(&id).expect("listed");
            if !(stream.recv_end && stream.send_end && stream.pending.is_empty()) && stream.error.is_none() {
                stream.error = Some(error.clone());
                stream.pending.clear();
            }
            stream.wake();
            self.settle(id);
        }
        for w in self.ready_waiters.drain(..) {
            w.wake();
        }
    }
}
