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

use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::BytesMut;
use http::{HeaderMap, Response, StatusCode, Version, header, request};

pub use super::conn::Connection;
use super::state::{Role, Shared, State};
pub use super::stream::{RecvHalf, SendHalf};
pub use super::{Error, Settings};
use super::{frame, hpack};

/// Starts HTTP/2 on `io`: returns the handle calls are placed with and the
/// connection's I/O future, which the caller spawns. The preface and our
/// SETTINGS are written by the I/O task; [`Client::poll_ready`] says when
/// the backend's SETTINGS have arrived.
pub fn handshake<T>(io: T, settings: Settings) -> (Client, Connection<T>) {
    let mut state = State::new(Role::Client, settings.stream_window, settings.connection_window);
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
    let shared = Arc::new(Shared::new(state));
    let client = Client { shared: Arc::clone(&shared) };
    (client, Connection::new(io, shared, Role::Client, settings))
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
        Ok(super::stream::halves(&self.shared, id))
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

/// Left out of a request's fields: connection-specific ones, `Host`
/// (carried as `:authority`), and `te` other than `trailers`.
fn left_out_of_request(name: &header::HeaderName, value: &header::HeaderValue) -> bool {
    match *name {
        header::HOST => true,
        header::TE => value != "trailers",
        _ => super::is_connection_specific(name),
    }
}

/// What a complete header block on one of our streams was.
pub(super) enum Parsed {
    Head(Response<()>),
    Informational,
    Trailers(HeaderMap),
}

/// A header block the backend sent on stream `id` (`fields` decoded, or
/// `None` when they were past the list limit): the response head, a 1xx
/// to skip, or the trailers.
pub(super) fn on_headers(
    state: &mut State,
    id: u32,
    fields: Option<&mut Vec<hpack::Field>>,
    end_stream: bool,
) -> Result<(), Error> {
    super::conn::check_stream(state, id)?;
    let Some(stream) = state.streams.get_mut(&id) else { return Ok(()) };
    if stream.error.is_some() || stream.recv_end {
        if stream.recv_end {
            state.reset_stream(id, Error::protocol("frame after END_STREAM"), Some(h2::Reason::STREAM_CLOSED));
        }
        return Ok(());
    }
    let Some(fields) = fields else {
        let error = Error::protocol("response header list larger than allowed");
        state.reset_stream(id, error, Some(h2::Reason::PROTOCOL_ERROR));
        return Ok(());
    };
    let parsed = if stream.head_received {
        super::parse_trailers(fields, end_stream).map(Parsed::Trailers)
    } else {
        parse_head(fields, end_stream)
    };
    let stream = state.streams.get_mut(&id).expect("checked");
    match parsed {
        Err(what) => {
            state.reset_stream(id, Error::protocol(what), Some(h2::Reason::PROTOCOL_ERROR));
            return Ok(());
        }
        Ok(Parsed::Informational) => return Ok(()),
        Ok(Parsed::Head(response)) => {
            let Ok(expect_len) = super::content_length(response.headers()) else {
                state.reset_stream(id, Error::protocol("invalid content-length"), Some(h2::Reason::PROTOCOL_ERROR));
                return Ok(());
            };
            stream.expect_len = expect_len;
            stream.response = Some(response);
            stream.head_received = true;
        }
        Ok(Parsed::Trailers(trailers)) => stream.trailers = Some(trailers),
    }
    if end_stream {
        super::conn::end_recv(state, id);
    } else if let Some(w) = stream.recv_waker.take() {
        w.wake();
    }
    Ok(())
}

/// A response head: `:status` first and only, then regular fields.
fn parse_head(fields: &mut Vec<hpack::Field>, end_stream: bool) -> Result<Parsed, &'static str> {
    let mut status = None;
    let mut headers = HeaderMap::with_capacity(fields.len());
    for field in fields.drain(..) {
        match field.name {
            hpack::Name::Pseudo(name) => {
                if name != ":status" || status.is_some() || !headers.is_empty() {
                    return Err("unexpected pseudo-header in a response");
                }
                status = Some(StatusCode::from_bytes(&field.value).map_err(|_| "invalid :status")?);
            }
            hpack::Name::Header(name) => {
                if super::is_connection_specific(&name) {
                    return Err("connection-specific field in a response");
                }
                headers.append(name, super::field_value(field.value)?);
            }
            hpack::Name::Malformed(_) => return Err("invalid field name"),
        }
    }
    let status = status.ok_or("response without :status")?;
    if status.is_informational() {
        if status == StatusCode::SWITCHING_PROTOCOLS || end_stream {
            return Err("invalid informational response");
        }
        return Ok(Parsed::Informational);
    }
    let mut response = Response::new(());
    *response.status_mut() = status;
    *response.version_mut() = Version::HTTP_2;
    *response.headers_mut() = headers;
    Ok(Parsed::Head(response))
}
