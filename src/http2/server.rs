//! Our HTTP/2 server (RFC 9113), for the listeners: what is particular to
//! accepting streams. Each request's head is checked as the RFC says
//! (pseudo-headers, connection-specific fields, `te`), extended CONNECT
//! (RFC 8441) is enabled, and the floods a server must survive end the
//! connection with GOAWAY ENHANCE_YOUR_CALM: streams reset before we could
//! answer them (rapid reset, CVE-2023-44487), malformed streams, header
//! blocks without end (CONTINUATION floods). Streams past our
//! SETTINGS_MAX_CONCURRENT_STREAMS are refused; a header list over the
//! limit gets 431 on its stream, the connection going on.
//!
//! [`Server`] is driven by its listener connection's task
//! (`listen::http2`), which runs the requests' answers in place.

use std::collections::VecDeque;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::BytesMut;
use h2::Reason;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, Method, Request, StatusCode, Uri, Version, header, request, response};
use tokio::io::{AsyncRead, AsyncWrite};

use super::conn::{self, Connection};
use super::state::{Role, Shared, State};
use super::stream::halves;
use super::{Error, RecvHalf, SendHalf, Settings, frame, hpack, is_connection_specific};

/// A request whose head arrived, waiting for the server to start it.
pub(super) struct Accepted {
    id: u32,
    head: request::Parts,
}

/// One client connection's HTTP/2, seen from the task that serves it.
pub struct Server<T> {
    conn: Connection<T>,
    shared: Arc<Shared>,
}

impl<T: AsyncRead + AsyncWrite + Unpin> Server<T> {
    /// Starts HTTP/2 on `io`: our SETTINGS go out with the first write.
    pub fn new(io: T, settings: Settings) -> Self {
        let mut state = State::new(Role::Server, settings.stream_window, settings.connection_window);
        frame::put_settings(
            &mut state.out,
            &[
                (frame::setting::MAX_CONCURRENT_STREAMS, settings.max_concurrent_streams),
                (frame::setting::INITIAL_WINDOW_SIZE, settings.stream_window),
                (frame::setting::MAX_HEADER_LIST_SIZE, settings.max_header_list_size),
                (frame::setting::ENABLE_CONNECT_PROTOCOL, 1),
            ],
            false,
        );
        if settings.connection_window > frame::DEFAULT_WINDOW {
            frame::put_window_update(&mut state.out, 0, settings.connection_window - frame::DEFAULT_WINDOW);
        }
        let shared = Arc::new(Shared::new(state));
        Server { conn: Connection::new(io, Arc::clone(&shared), Role::Server, settings), shared }
    }

    /// Called first in each poll of the serving task: what the task's own
    /// streams queue during the poll is written at its end, so they need
    /// not wake it (a wake-up would cost a whole extra poll).
    pub fn begin_poll(&mut self) {
        self.shared.lock().io_waker = None;
    }

    /// Sends keep-alive PINGs; fails the connection when one goes unanswered.
    pub fn poll_keep_alive(&mut self, cx: &mut Context<'_>) {
        self.conn.poll_keep_alive(cx);
    }

    /// Reads and dispatches what the client sent; new requests wait in [`Server::accept`].
    pub fn poll_read(&mut self, cx: &mut Context<'_>) {
        self.conn.poll_read(cx);
    }

    /// The next request that arrived, with its stream's handles.
    pub fn accept(&mut self) -> Option<(Request<()>, SendHalf, RecvHalf)> {
        let Accepted { id, head } = self.conn.accepted.pop_front()?;
        let (send, recv) = halves(&self.shared, id);
        Some((Request::from_parts(head, ()), send, recv))
    }

    /// Writes what is queued; `Ready` once the connection is over: the
    /// client closed it, it failed, or after [`Server::graceful_shutdown`]
    /// its last stream ended.
    pub fn poll_flush_or_end(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.conn.poll_flush_or_end(cx)
    }

    /// GOAWAY: no new streams; the open ones finish.
    pub fn graceful_shutdown(&mut self) {
        self.conn.graceful_shutdown();
    }
}

/// A header block the client sent on stream `id` (`fields` decoded, or
/// `None` when past the list limit): a new request, or a request's trailers.
pub(super) fn on_headers(
    state: &mut State,
    accepted: &mut VecDeque<Accepted>,
    settings: &Settings,
    id: u32,
    fields: Option<&mut Vec<hpack::Field>>,
    end_stream: bool,
) -> Result<(), Error> {
    if id == 0 || id.is_multiple_of(2) {
        return Err(Error::protocol("a client opened a stream with an even id"));
    }
    if id <= state.last_stream {
        return trailers(state, id, fields, end_stream);
    }
    state.last_stream = id;
    if state.goaway_sent.is_some() {
        // Opened after our GOAWAY: ignored, the client may retry it elsewhere (§6.8).
        return Ok(());
    }
    let Some(fields) = fields else {
        // Answered on its stream (RFC 9113 §10.5.1), the connection goes on.
        let mut block = BytesMut::new();
        encode_status(&mut block, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        state.peer.put_header_block(&mut state.out, id, &block, true);
        if !end_stream {
            frame::put_reset(&mut state.out, id, Reason::NO_ERROR.into());
        }
        return Ok(());
    };
    if state.active >= settings.max_concurrent_streams {
        frame::put_reset(&mut state.out, id, Reason::REFUSED_STREAM.into());
        return Ok(());
    }
    let mut head = match parse_request(fields, &mut state.hosts) {
        Ok(head) => head,
        Err(what) => {
            tracing::debug!(stream = id, what, "malformed HTTP/2 request");
            state.peer_faults += 1;
            frame::put_reset(&mut state.out, id, Reason::PROTOCOL_ERROR.into());
            return Ok(());
        }
    };
    let expect_len = super::content_length(&head.headers);
    if expect_len.is_err() || (end_stream && matches!(expect_len, Ok(Some(n)) if n > 0)) {
        state.peer_faults += 1;
        frame::put_reset(&mut state.out, id, Reason::PROTOCOL_ERROR.into());
        return Ok(());
    }
    if let Ok(Some(n)) = expect_len {
        super::single_content_length(&mut head.headers, n);
    }
    let mut stream = state.new_stream(false);
    stream.head_received = true;
    stream.opened = true;
    stream.counted = true;
    stream.recv_end = end_stream;
    stream.expect_len = expect_len.ok().flatten();
    state.active += 1;
    state.streams.insert(id, stream);
    accepted.push_back(Accepted { id, head });
    Ok(())
}

/// A second header block on a request: its trailers.
fn trailers(state: &mut State, id: u32, fields: Option<&mut Vec<hpack::Field>>, end_stream: bool) -> Result<(), Error> {
    let Some(stream) = state.streams.get_mut(&id) else {
        // A stream already reset or finished: nothing to do.
        return Ok(());
    };
    if stream.error.is_some() {
        return Ok(());
    }
    if stream.recv_end {
        state.reset_stream(id, Error::protocol("HEADERS after END_STREAM"), Some(Reason::STREAM_CLOSED));
        return Ok(());
    }
    let parsed = match fields {
        None => Err("trailers larger than allowed"),
        Some(fields) => super::parse_trailers(fields, end_stream),
    };
    match parsed {
        Ok(trailers) => {
            stream.trailers = Some(trailers);
            conn::end_recv(state, id);
        }
        Err(what) => state.reset_stream(id, Error::protocol(what), Some(Reason::PROTOCOL_ERROR)),
    }
    Ok(())
}

/// A request head from its fields, checked as RFC 9113 §8.3.1 says (and
/// RFC 8441 §4 for extended CONNECT, whose `:protocol` goes in the
/// extensions as `h2::ext::Protocol`).
///
/// `:authority` and `host` must be `host[:port]`: no user info (§8.3.1),
/// nothing routing and the backend could read differently.
fn parse_request(
    fields: &mut Vec<hpack::Field>,
    hosts: &mut crate::http1::fields::HostCheck,
) -> Result<request::Parts, &'static str> {
    let (mut method, mut scheme, mut authority, mut path, mut protocol) = (None, None, None, None, None);
    let mut headers = HeaderMap::with_capacity(fields.len());
    for field in fields.drain(..) {
        match field.name {
            hpack::Name::Pseudo(name) => {
                if !headers.is_empty() {
                    return Err("pseudo-header after a regular field");
                }
                let slot = match &name[..] {
                    b":method" => &mut method,
                    b":scheme" => &mut scheme,
                    b":authority" => &mut authority,
                    b":path" => &mut path,
                    b":protocol" => &mut protocol,
                    _ => return Err("unknown pseudo-header in a request"),
                };
                if slot.replace(field.value).is_some() {
                    return Err("repeated pseudo-header");
                }
            }
            hpack::Name::Header(name) => {
                if is_connection_specific(&name) {
                    return Err("connection-specific field");
                }
                if name == header::TE && field.value != "trailers" {
                    return Err("te other than trailers");
                }
                if name == header::HOST && !hosts.valid(&field.value) {
                    return Err("invalid host");
                }
                headers.append(name, super::field_value(field.value)?);
            }
            hpack::Name::Malformed(_) => return Err("invalid field name"),
        }
    }
    let method = Method::from_bytes(&method.ok_or("request without :method")?).map_err(|_| "invalid :method")?;
    let connect = method == Method::CONNECT;
    let (mut head, ()) = Request::new(()).into_parts();
    if let Some(protocol) = protocol {
        if !connect {
            return Err(":protocol on a request other than CONNECT");
        }
        let protocol = std::str::from_utf8(&protocol).map_err(|_| "invalid :protocol")?;
        head.extensions.insert(h2::ext::Protocol::from(protocol));
    }
    let plain_connect = connect && head.extensions.get::<h2::ext::Protocol>().is_none();
    let mut uri = http::uri::Parts::default();
    if let Some(authority) = authority {
        if !hosts.valid(&authority) {
            return Err("invalid :authority");
        }
        uri.authority = Some(Authority::from_maybe_shared(authority).map_err(|_| "invalid :authority")?);
    } else if connect {
        return Err("CONNECT without :authority");
    }
    match scheme {
        Some(_) if plain_connect => return Err(":scheme in CONNECT"),
        Some(scheme) => {
            let scheme = Scheme::try_from(&scheme[..]).map_err(|_| "invalid :scheme")?;
            // A URI cannot have a scheme without an authority; `Host` then names it.
            if uri.authority.is_some() {
                uri.scheme = Some(scheme);
            }
        }
        None if !plain_connect => return Err("request without :scheme"),
        None => {}
    }
    match path {
        Some(_) if plain_connect => return Err(":path in CONNECT"),
        Some(path) if path.is_empty() => return Err("empty :path"),
        // RFC 9113 §8.3.1: a path, or `*` for OPTIONS.
        Some(path) if path[0] != b'/' && !(&path[..] == b"*" && method == Method::OPTIONS) => {
            return Err(":path neither a path nor `*` on OPTIONS");
        }
        Some(path) => {
            uri.path_and_query = Some(PathAndQuery::from_maybe_shared(path).map_err(|_| "invalid :path")?);
        }
        None if !plain_connect => return Err("request without :path"),
        None => {}
    }
    head.uri = Uri::from_parts(uri).map_err(|_| "invalid request target")?;
    if let (Some(authority), Some(host)) = (head.uri.authority(), headers.get(header::HOST)) {
        let default_port: &[u8] = if head.uri.scheme() == Some(&Scheme::HTTPS) { b"443" } else { b"80" };
        if !crate::http1::fields::same_authority(authority.as_str().as_bytes(), host.as_bytes(), default_port) {
            return Err("host differs from :authority");
        }
    }
    head.method = method;
    head.version = Version::HTTP_2;
    head.headers = headers;
    Ok(head)
}

/// Encodes a response head as an HPACK block: `:status`, then the fields
/// (connection-specific ones left out, RFC 9113 §8.2.2).
pub fn encode_response(head: &response::Parts) -> BytesMut {
    encode_head(head.status, &head.headers)
}

/// Encodes an interim (1xx) head, sent ahead of the final one on the same stream.
pub fn encode_interim(interim: &crate::interim::Interim) -> BytesMut {
    encode_head(interim.status, &interim.headers)
}

fn encode_head(status: StatusCode, headers: &HeaderMap) -> BytesMut {
    let mut block = BytesMut::with_capacity(32 + headers.len() * 32);
    encode_status(&mut block, status);
    for (name, value) in headers {
        if !is_connection_specific(name) {
            hpack::encode_field(&mut block, name, value);
        }
    }
    block
}

fn encode_status(block: &mut BytesMut, status: StatusCode) {
    hpack::encode_pseudo(block, ":status", status.as_str().as_bytes());
}
