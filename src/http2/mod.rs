//! HTTP/2 (RFC 9113) of our own, both ends: the listeners' server and the
//! gRPC upstreams' client.
//!
//! Why not the h2 crate: a gRPC call through the gateway cost about 20,000
//! instructions in h2 on each side (frame queues, a slab entry per frame,
//! HPACK table searches, per-message header checks), together two thirds
//! of the whole call, and h2's per-stream queues were most of the cache
//! misses. Here a stream encodes its own frames straight into the
//! connection's output buffer under one lock ([`state`]), and the
//! connection's I/O ([`conn`]) only writes bytes and dispatches what it
//! reads.
//!
//! - [`frame`], [`hpack`]: the wire format.
//! - [`state`], [`conn`], [`stream`]: what both roles share: streams, flow
//!   control both ways, RST_STREAM, GOAWAY, PING and keep-alive,
//!   CONTINUATION, padding, and the checks owed to a misbehaving peer.
//! - [`client`]: opening streams within the backend's limit, responses.
//! - [`server`]: accepting requests (extended CONNECT included), the
//!   flood guards, responses.
//! - [`send`], [`recv`]: a body streamed into a stream, and a stream as a body.

pub mod client;
mod conn;
mod error;
pub mod frame;
pub mod hpack;
pub mod recv;
pub mod send;
pub mod server;
mod state;
mod stream;
#[cfg(test)]
mod tests;

use bytes::BytesMut;
use h2::Reason;
use http::{HeaderMap, HeaderValue, header};

pub use error::Error;
pub use recv::RecvBody;
pub use send::{BodySender, SendEnd};
pub use stream::{RecvHalf, SendHalf};

/// What we announce and how we watch a connection (either role).
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Per-stream receive window: what one stream may have buffered here unread.
    pub stream_window: u32,
    /// Connection receive window.
    pub connection_window: u32,
    /// Largest header block we take (decoded size, RFC 9113 §6.5.2).
    pub max_header_list_size: u32,
    /// Server role: SETTINGS_MAX_CONCURRENT_STREAMS; streams past it are refused.
    pub max_concurrent_streams: u32,
    /// Server role: HTTP/2 rapid reset (CVE-2023-44487). Streams the client
    /// resets before we answered, less one per answer; past this, GOAWAY
    /// ENHANCE_YOUR_CALM.
    pub max_early_resets: usize,
    /// Streams we may reset for the peer's protocol errors before the
    /// connection ends with GOAWAY ENHANCE_YOUR_CALM (reset floods).
    pub max_peer_faults: usize,
    /// A PING after this long quiet; the connection fails when its answer takes `keep_alive_timeout`.
    pub keep_alive_interval: std::time::Duration,
    pub keep_alive_timeout: std::time::Duration,
}

/// The reset code to carry over to the other side's stream when a relayed
/// stream fails with `err`: only a peer's RST_STREAM that says something
/// about the stream itself (it cancelled it, refused it, asked for calm, or
/// wants a secure connection). A protocol, framing or compression error is a
/// fault of the peer's connection: passed on, it would tell the other side
/// that *it* broke the protocol. `None` then: the caller resets with its own
/// code (INTERNAL_ERROR towards a client, CANCEL towards a backend).
pub fn relayed_reason(err: &(dyn std::error::Error + 'static)) -> Option<Reason> {
    let mut current = Some(err);
    while let Some(e) = current {
        match e.downcast_ref::<Error>() {
            Some(Error::Reset(
                reason @ (Reason::CANCEL
                | Reason::REFUSED_STREAM
                | Reason::ENHANCE_YOUR_CALM
                | Reason::INADEQUATE_SECURITY),
            )) => return Some(*reason),
            Some(Error::Refused) => return Some(Reason::REFUSED_STREAM),
            Some(_) => return None,
            None => current = e.source(),
        }
    }
    None
}

/// Connection-specific fields (RFC 9113 §8.2.2): never sent, and malformed
/// in what a peer sends.
fn is_connection_specific(name: &header::HeaderName) -> bool {
    matches!(*name, header::CONNECTION | header::TRANSFER_ENCODING | header::UPGRADE)
        || matches!(name.as_str(), "keep-alive" | "proxy-connection")
}

/// Encodes trailers as an HPACK block (connection-specific fields, and
/// those unfit for a trailer section, left out).
fn encode_trailers(trailers: &HeaderMap) -> BytesMut {
    let mut block = BytesMut::with_capacity(64);
    for (name, value) in trailers {
        if crate::http1::fields::fit_for_trailers(name) {
            hpack::encode_field(&mut block, name, value);
        }
    }
    block
}

/// A field value as received: what `HeaderValue` allows (no CR, LF or NUL,
/// RFC 9113 §8.2.1), and no whitespace at either end, which an HTTP/1.1
/// hop would trim and an HTTP/2 one would keep.
fn field_value(value: bytes::Bytes) -> Result<HeaderValue, &'static str> {
    if crate::http1::fields::padded(&value) {
        return Err("whitespace around a field value");
    }
    HeaderValue::from_maybe_shared(value).map_err(|_| "invalid field value")
}

/// Trailers: END_STREAM, no pseudo-headers, nothing connection-specific (§8.1).
fn parse_trailers(fields: &mut Vec<hpack::Field>, end_stream: bool) -> Result<HeaderMap, &'static str> {
    if !end_stream {
        return Err("a second header block without END_STREAM");
    }
    let mut trailers = HeaderMap::with_capacity(fields.len());
    for field in fields.drain(..) {
        match field.name {
            hpack::Name::Header(name) if !is_connection_specific(&name) => {
                let value = field_value(field.value)?;
                // Dropped where they come in, they reach no client or backend by any protocol.
                if crate::http1::fields::fit_for_trailers(&name) {
                    trailers.append(name, value);
                }
            }
            _ => return Err("invalid field in trailers"),
        }
    }
    Ok(trailers)
}

/// The `Content-Length` of a head: `Ok(None)` without one, `Err` when its
/// fields are not digits or do not agree (RFC 9113 §8.1.1: malformed, since
/// the peer we pass the message to might read a different length).
fn content_length(headers: &HeaderMap) -> Result<Option<u64>, &'static str> {
    let mut length = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        crate::http1::fields::merge_content_length(value.as_bytes(), &mut length)?;
    }
    Ok(length)
}

/// Leaves one `Content-Length` field holding just `n` where equal values
/// came repeated or listed, so whoever reads the head after us reads `n`.
fn single_content_length(headers: &mut HeaderMap, n: u64) {
    let mut values = headers.get_all(header::CONTENT_LENGTH).iter();
    let plain = values.next().is_some_and(|v| !v.as_bytes().contains(&b',')) && values.next().is_none();
    if !plain {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }
}
