//! HTTP/2 beyond the listener's connection handling.
//!
//! - [`send`], [`recv`]: bodies through the streams of our HTTP/2 server
//!   (`listen::http2`, on the `h2` crate): a body streamed into a stream
//!   under flow control, and a request stream as a body.
//! - [`client`]: our own HTTP/2 client connection, for gRPC upstreams, on
//!   [`frame`] and [`hpack`].

pub mod client;
pub mod frame;
pub mod hpack;
pub mod recv;
pub mod send;

pub use recv::RecvBody;
pub use send::{BodySender, SendEnd};

/// The HTTP/2 reason somewhere in `err`'s source chain (a peer's RST_STREAM).
pub fn reason_in(err: &(dyn std::error::Error + 'static)) -> Option<h2::Reason> {
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(reason) = e.downcast_ref::<h2::Error>().and_then(h2::Error::reason) {
            return Some(reason);
        }
        if let Some(reason) = e.downcast_ref::<client::Error>().and_then(client::Error::reason) {
            return Some(reason);
        }
        current = e.source();
    }
    None
}
