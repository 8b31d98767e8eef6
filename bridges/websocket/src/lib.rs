//! The WebSocket bridge: protocol translation only, no sockets of its own and
//! no knowledge of the gateway core (which hands us streams and an HTTP
//! client callback).
//!
//! - [`handshake`]: the opening handshake, RFC 6455 §4 (HTTP/1.1 `Upgrade`)
//!   and RFC 8441 §4–5 (HTTP/2 extended CONNECT), both mapped to the one
//!   HTTP/1.1 upgrade request a WebSocket backend understands.
//! - [`tunnel`]: tunnel mode between two WebSocket byte streams, frames
//!   checked and passed on in place (extensions such as permessage-deflate
//!   pass through), backpressure, close-code mapping and idle pings.
//! - [`relay`]: tunnel mode when the client's side is a channel of messages
//!   (a WebTransport session): messages re-framed for the backend.
//! - [`message`]: message mode, each client message becomes an HTTP request
//!   and each response (whole, per chunk or per SSE event) becomes messages.
//! - [`sse`]: the server-sent-events parser message mode needs.
//! - [`close`]: which close code (RFC 6455 §7.4) answers which failure.

pub mod close;
pub mod handshake;
pub mod message;
pub mod relay;
pub mod sse;
pub mod tunnel;

mod activity;
mod frame;

pub use tokio_tungstenite::WebSocketStream;
pub use tungstenite::Message;
pub use tungstenite::protocol::WebSocketConfig;

use tokio::io::{AsyncRead, AsyncWrite};
use tungstenite::protocol::Role;

/// Initial read buffer per WebSocket stream (see `Limits::config`).
const READ_BUFFER_BYTES: usize = 4 * 1024;

/// Frame and message size limits for both sides of a bridged connection.
/// Kept here so the core never needs tungstenite types.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest message after reassembly of fragments (RFC 6455 §5.4); over it the peer gets 1009.
    pub max_message_bytes: usize,
    /// Largest single frame payload; over it the peer gets 1009.
    pub max_frame_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_message_bytes: 1 << 20, max_frame_bytes: 1 << 20 }
    }
}

impl Limits {
    fn config(&self) -> WebSocketConfig {
        let config = WebSocketConfig::default();
        // Bounded write buffer (room for one largest message and its header):
        // `send` waits for the peer instead of queueing (backpressure).
        let max_write = config.write_buffer_size + self.max_message_bytes + 16;
        config
            // tungstenite allocates (and zero-fills) its whole read buffer per
            // stream up front: 128 KiB by default, 256 KiB per tunnel before a
            // byte moved (measured: 261 KiB per idle tunnel). It grows for
            // larger frames, so start small.
            .read_buffer_size(READ_BUFFER_BYTES)
            .max_message_size(Some(self.max_message_bytes))
            .max_frame_size(Some(self.max_frame_bytes))
            .max_write_buffer_size(max_write)
    }
}

/// Frames an upgraded downstream connection as the server side (we expect
/// masked frames from it, RFC 6455 §5.1).
pub async fn server_stream<S>(io: S, limits: &Limits) -> WebSocketStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    WebSocketStream::from_raw_socket(io, Role::Server, Some(limits.config())).await
}

/// Frames an upgraded backend connection as the client side (we mask, and
/// refuse masked frames from it, RFC 6455 §5.1).
pub async fn client_stream<S>(io: S, limits: &Limits) -> WebSocketStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    WebSocketStream::from_raw_socket(io, Role::Client, Some(limits.config())).await
}

/// A two-way channel of WebSocket messages: what the relay and the message
/// mode serve on the client's side. A `WebSocketStream` is one; the core
/// adapts WebTransport sessions into one, so both modes serve them unchanged.
pub trait MessageChannel:
    futures_util::Stream<Item = Result<tungstenite::Message, tungstenite::Error>>
    + futures_util::Sink<tungstenite::Message, Error = tungstenite::Error>
    + Unpin
{
}

impl<T> MessageChannel for T where
    T: futures_util::Stream<Item = Result<tungstenite::Message, tungstenite::Error>>
        + futures_util::Sink<tungstenite::Message, Error = tungstenite::Error>
        + Unpin
{
}
