//! HTTP/2 stream plumbing shared by both sides of the proxy, driven with
//! `h2` directly: our HTTP/2 server (`listen::http2`) and the gRPC
//! upstream client (`upstream::grpc`) move bodies through streams the same
//! way.
//!
//! - [`send`]: a body streamed into a stream under flow control.
//! - [`recv`]: a stream's DATA frames and trailers as a body.
//! - [`client`]: our own HTTP/2 client connection, for gRPC upstreams, on
//!   [`frame`] and [`hpack`].

pub mod client;
pub mod frame;
pub mod hpack;
pub mod recv;
pub mod send;

pub use recv::{RecvBody, ResetMeans};
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
