//! HTTP/3 for Tollgate: QUIC request streams (quinn + h3) turned into the
//! `http::Request` / `http::Response` model the core speaks, bodies streamed
//! both ways with QUIC flow control as the backpressure.
//!
//! ```text
//! quinn::Connection → Connection::accept → Incoming::resolve
//!     → (Request<RequestBody>, Responder) → core → Responder::send(Response<B>)
//! ```
//!
//! The core owns sockets, TLS settings, limits and tasks; this crate only
//! frames. It knows nothing of routes or policies.

mod body;
mod connection;
mod error;
mod respond;
pub mod webtransport;

pub use body::RequestBody;
pub use connection::{Connection, Incoming, Resolved, Settings};
pub use error::{BodyError, H3Error, SendError};
pub use respond::Responder;

/// The ALPN token of HTTP/3 (RFC 9114 §3.1).
pub const ALPN: &[u8] = b"h3";
