//! Our HTTP/2 client (RFC 9113), for gRPC upstreams.
//!
//! Why not the h2 crate's client: a gRPC call through the gateway cost
//! about 20,000 instructions on h2's client side alone (frame queues, a
//! slab per frame, HPACK table searches, per-message header checks),
//! a third of the whole call. Here a call encodes its own frames straight
//! into the connection's output buffer under one lock ([`state`]), and the
//! I/O task ([`conn`]) only writes bytes and dispatches what it reads.
//!
//! What it does: many concurrent streams per connection within the
//! backend's SETTINGS_MAX_CONCURRENT_STREAMS, flow control both ways
//! (window handed back as the call takes data, so a slow reader slows the
//! backend), trailers, RST_STREAM both ways, GOAWAY (calls above its last
//! stream fail as refused), PING answers and keep-alive PINGs,
//! CONTINUATION, padding, and the protocol checks a client owes a server
//! that misbehaves (malformed or oversized header blocks, window overflow,
//! frames on idle streams). Server push is disabled. HPACK: [`super::hpack`].

mod conn;
mod error;
mod state;
#[cfg(test)]
mod tests;

use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use h2::Reason;
use http::{HeaderMap, Response, header, request};

pub use conn::Connection;
pub use error::Error;
use state::{OUT_HIGH_WATER, Outgoing, State};

use super::frame;
use super::hpack;

/// Taken DATA already received is handed on in one chunk up to this size.
const COALESCE_LIMIT: usize = 16 * 1024;

/// What we announce and how we watch the connection.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Per-stream receive window: what one call may have buffered here unread.
    pub stream_window: u32,
    /// Connection receive window.
    pub connection_window: u32,
    /// Largest response header block (decoded size, RFC 9113 §6.5.2).
    pub max_header_list_size: u32,
    /// A PING after this long; the connection fails when its answer takes `keep_alive_timeout`.
    pub keep_alive_interval: std::time::Duration,
    pub keep_alive_timeout: std::time::Duration,
}

/// Starts HTTP/2 on `io`: returns the handle calls are placed with and the
/// connection's I/O future, which the caller spawns. The preface and our
/// SETTINGS are written by the I/O task; [`Client::poll_ready`] says when
/// the backend's SETTINGS have arrived.
pub fn handshake<T>(io: T, settings: Settings) -> (Client, Connection<T>) {
    let mut state = State::new(settings.stream_window, settings.connection_window);
    state.out.extend_from_slice(frame::PREFACE);
    frame::put_settings(
        &mut state.out,
        &[
            (frame::setting::ENABLE_PUSH, 0),
            (frame::setting::INITIAL_WINDOW_SIZE, settings.stream_window),
            (frame::setting::MAX_HEADER_LIST_SIZE, settings.max_header_list_size),
        ],
        false,
    );
    if settings.connection_window > frame::DEFAULT_WINDOW {
        frame::put_window_update(&mut state.out, 0, settings.connection_window - frame::DEFAULT_WINDOW);
    }
    let shared = Arc::new(Shared { state: Mutex::new(state) });
    let client = Client { shared: Arc::clone(&shared) };
    (client, Connection::new(io, shared, settings))
}

#[derive(Debug)]
pub(crate) struct Shared {
    state: Mutex<State>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent-enough state for
        // failing the remaining calls; never propagate the poison.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A handle to one connection (shared behind an `Arc` by the callers
/// placing calls on it); dropping it lets the connection close once its
/// calls are done.
pub struct Client {
    shared: Arc<Shared>,
}

impl Drop for Client {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.clients -= 1;
        if state.clients == 0 {
            state.wake_io();
        }
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").finish_non_exhaustive()
    }
}

impl Client {
    /// True once no new call can go on this connection (failed, GOAWAY,
    /// stream ids used up): the pool replaces it.
    pub fn is_closed(&self) -> bool {
        self.shared.lock().refuses_new_streams()
    }

    /// Ready once the backend's SETTINGS have arrived (the handshake is
    /// complete); an error if the connection failed first.
    pub fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let mut state = self.shared.lock();
        if let Some(e) = &state.failed {
            return Poll::Ready(Err(e.clone()));
        }
        if state.peer.received {
            return Poll::Ready(Ok(()));
        }
        state.ready_waiters.push(cx.waker().clone());
        Poll::Pending
    }

    /// Opens a stream with the encoded request head `block` (see
    /// [`encode_request`]). Past the backend's
    /// SETTINGS_MAX_CONCURRENT_STREAMS the stream waits, in order, for a
    /// slot: its HEADERS (and what the call sends meanwhile) go out when
    /// one frees, with no wake-up of the caller. [`Error::Refused`] when the
    /// connection takes no new streams: the call can go elsewhere, nothing
    /// was sent.
    pub fn open(&self, block: &[u8], end_stream: bool) -> Result<(SendHalf, RecvHalf), Error> {
        let mut state = self.shared.lock();
        if state.refuses_new_streams() {
            return Err(Error::Refused);
        }
        let id = state.next_id;
        state.next_id += 2;
        let mut stream = state.new_stream(end_stream);
        let can_start =
            state.pending_open.is_empty() && state.peer.received && state.active < state.peer.max_concurrent;
        if !can_start {
            stream.head_block = Some(BytesMut::from(block));
        }
        state.streams.insert(id, stream);
        if can_start {
            state.start_with(id, block);
        } else {
            state.pending_open.push_back(id);
        }
        drop(state);
        let send = SendHalf { shared: Arc::clone(&self.shared), id };
        let recv = RecvHalf { shared: Arc::clone(&self.shared), id };
        Ok((send, recv))
    }
}

/// Encodes a request head (absolute URI: `:scheme` and `:authority` come
/// from it, RFC 9113 §8.3.1) as an HPACK block. Connection-specific fields
/// (§8.2.2) and `Host` (carried as `:authority`) are left out; `te` only
/// as `trailers`.
pub fn encode_request(head: &request::Parts) -> BytesMut {
    let mut block = BytesMut::with_capacity(256);
    hpack::encode_pseudo(&mut block, ":method", head.method.as_str().as_bytes());
    let scheme = head.uri.scheme_str().unwrap_or("http");
    hpack::encode_pseudo(&mut block, ":scheme", scheme.as_bytes());
    if let Some(authority) = head.uri.authority() {
        hpack::encode_pseudo(&mut block, ":authority", authority.as_str().as_bytes());
    }
    let path = head.uri.path_and_query().map_or("/", |p| p.as_str());
    hpack::encode_pseudo(&mut block, ":path", path.as_bytes());
    for (name, value) in &head.headers {
        if !left_out_of_request(name, value) {
            hpack::encode_field(&mut block, name, value);
        }
    }
    block
}

/// Encodes trailers as an HPACK block.
fn encode_trailers(trailers: &HeaderMap) -> BytesMut {
    let mut block = BytesMut::with_capacity(64);
    for (name, value) in trailers {
        if !left_out_of_request(name, value) {
            hpack::encode_field(&mut block, name, value);
        }
    }
    block
}

/// Connection-specific fields (RFC 9113 §8.2.2): never sent, and malformed
/// in what a backend sends.
fn is_connection_specific(name: &header::HeaderName) -> bool {
    matches!(*name, header::CONNECTION | header::TRANSFER_ENCODING | header::UPGRADE)
        || matches!(name.as_str(), "keep-alive" | "proxy-connection")
}

/// Left out of a request's fields: connection-specific ones, `Host`
/// (carried as `:authority`), and `te` other than `trailers`.
fn left_out_of_request(name: &header::HeaderName, value: &header::HeaderValue) -> bool {
    match *name {
        header::HOST => true,
        header::TE => value != "trailers",
        _ => is_connection_specific(name),
    }
}

/// The request side of a call: DATA and trailers, under flow control.
#[derive(Debug)]
pub struct SendHalf {
    shared: Arc<Shared>,
    id: u32,
}

impl SendHalf {
    /// Ready when what was sent before has gone out to the connection (so
    /// at most one chunk waits per call for window), or an error if the
    /// stream failed.
    pub fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let mut state = self.shared.lock();
        let crowded = state.out.len() >= OUT_HIGH_WATER;
        let Some(stream) = state.streams.get_mut(&self.id) else { return Poll::Ready(Err(Error::Closed)) };
        if let Some(e) = &stream.error {
            return Poll::Ready(Err(e.clone()));
        }
        if stream.pending.is_empty() && !crowded {
            return Poll::Ready(Ok(()));
        }
        stream.send_waker = Some(cx.waker().clone());
        if crowded {
            // Woken when the I/O task has written the output down.
            state.wake_io();
        }
        Poll::Pending
    }

    /// Ready with the stream's error once it has failed (reset by the backend).
    pub fn poll_reset(&mut self, cx: &mut Context<'_>) -> Poll<Error> {
        let mut state = self.shared.lock();
        let Some(stream) = state.streams.get_mut(&self.id) else { return Poll::Ready(Error::Closed) };
        if let Some(e) = &stream.error {
            return Poll::Ready(e.clone());
        }
        stream.send_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Sends `data`, ending the request when `end`.
    pub fn send_data(&mut self, data: Bytes, end: bool) -> Result<(), Error> {
        self.send(Outgoing::Data(data, end))
    }

    /// Sends trailers, ending the request.
    pub fn send_trailers(&mut self, trailers: &HeaderMap) -> Result<(), Error> {
        self.send(Outgoing::Trailers(encode_trailers(trailers)))
    }

    fn send(&mut self, item: Outgoing) -> Result<(), Error> {
        let mut state = self.shared.lock();
        let Some(stream) = state.streams.get_mut(&self.id) else { return Err(Error::Closed) };
        if let Some(e) = &stream.error {
            return Err(e.clone());
        }
        if stream.send_end {
            return Ok(());
        }
        stream.send_end = matches!(item, Outgoing::Data(_, true) | Outgoing::Trailers(_));
        state.enqueue(self.id, item);
        Ok(())
    }

    /// Resets the stream (the request body failed or the call was abandoned).
    pub fn reset(&mut self, reason: Reason) {
        self.shared.lock().reset_stream(self.id, Error::Cancelled(reason), Some(reason));
    }
}

impl Drop for SendHalf {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        let Some(stream) = state.streams.get_mut(&self.id) else { return };
        stream.halves -= 1;
        stream.send_waker = None;
        let unfinished = !stream.send_end && stream.error.is_none();
        if unfinished {
            // Dropped mid-body without a reset (the task was cancelled): never let
            // the backend take a cut-short request as complete.
            state.reset_stream(self.id, Error::Cancelled(Reason::CANCEL), Some(Reason::CANCEL));
        } else {
            state.settle(self.id);
        }
    }
}

/// The response side of a call.
#[derive(Debug)]
pub struct RecvHalf {
    shared: Arc<Shared>,
    id: u32,
}

impl RecvHalf {
    /// The response head (informational 1xx responses are skipped).
    pub fn poll_response(&mut self, cx: &mut Context<'_>) -> Poll<Result<Response<()>, Error>> {
        let mut state = self.shared.lock();
        let Some(stream) = state.streams.get_mut(&self.id) else { return Poll::Ready(Err(Error::Closed)) };
        if let Some(response) = stream.response.take() {
            return Poll::Ready(Ok(response));
        }
        if let Some(e) = &stream.error {
            return Poll::Ready(Err(e.clone()));
        }
        stream.recv_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// The next DATA (what has arrived, joined up to 16 KiB), `None` at the
    /// end of the data. Taking data hands its window back to the backend.
    pub fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, Error>>> {
        let mut state = self.shared.lock();
        let Some(stream) = state.streams.get_mut(&self.id) else { return Poll::Ready(Some(Err(Error::Closed))) };
        if let Some(first) = stream.data.pop_front() {
            let data = if stream.data.is_empty() || first.len() >= COALESCE_LIMIT / 4 {
                first
            } else {
                let mut joined = BytesMut::with_capacity(COALESCE_LIMIT);
                joined.extend_from_slice(&first);
                while let Some(next) = stream.data.front() {
                    if joined.len() + next.len() > COALESCE_LIMIT {
                        break;
                    }
                    joined.extend_from_slice(next);
                    stream.data.pop_front();
                }
                joined.freeze()
            };
            state.release(self.id, data.len() as u32);
            return Poll::Ready(Some(Ok(data)));
        }
        if let Some(e) = &stream.error {
            return Poll::Ready(Some(Err(e.clone())));
        }
        if stream.recv_end {
            return Poll::Ready(None);
        }
        stream.recv_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// The trailers, once the data has been taken; `None` if the response ended without.
    pub fn poll_trailers(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<HeaderMap>, Error>> {
        let mut state = self.shared.lock();
        let Some(stream) = state.streams.get_mut(&self.id) else { return Poll::Ready(Err(Error::Closed)) };
        if let Some(trailers) = stream.trailers.take() {
            return Poll::Ready(Ok(Some(trailers)));
        }
        if let Some(e) = &stream.error {
            return Poll::Ready(Err(e.clone()));
        }
        if stream.recv_end {
            return Poll::Ready(Ok(None));
        }
        stream.recv_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// True when the response has ended and everything in it was taken.
    pub fn is_end_stream(&self) -> bool {
        let state = self.shared.lock();
        state.streams.get(&self.id).is_none_or(|s| {
            s.error.is_none() && s.recv_end && s.data.is_empty() && s.trailers.is_none() && s.response.is_none()
        })
    }
}

impl Drop for RecvHalf {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        let Some(stream) = state.streams.get_mut(&self.id) else { return };
        stream.halves -= 1;
        stream.recv_waker = None;
        let abandoned = !stream.recv_end && stream.error.is_none();
        if abandoned {
            // The call was abandoned (client gone, deadline): cancel it at the backend.
            state.reset_stream(self.id, Error::Cancelled(Reason::CANCEL), Some(Reason::CANCEL));
        } else {
            state.settle(self.id);
        }
    }
}
