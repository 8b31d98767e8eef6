//! Tollgate: an API gateway and protocol bridge.
//!
//! A request's path through the code:
//! [`listen`] (TCP/TLS; HTTP/1.1 and HTTP/2 by our own servers, [`http2`] for the latter) → [`pipeline::Gateway::handle`]
//! (request id, [`route`], listener limits, the [`policy`] chain in its fixed
//! order, body limit) → [`upstream`] (balancer, pooled HTTP/1.1
//! client, or multiplexed HTTP/2 for gRPC on our own [`http2::client`], with gRPC-Web translated around it
//! in [`pipeline::grpc`]) → back through [`pipeline::forwarded`] and the access log.
//! Failures become responses in exactly one place: [`error::ProxyError`].
//! WebSocket routes answer upgrade requests in [`websocket`], after the same
//! routing and policies, with the protocol work in the `tollgate-websocket` bridge.

pub mod admin;
pub mod alloc;
pub mod body;
pub mod clock;
pub mod config;
pub mod error;
pub mod gather;
pub mod gauge;
pub mod http1;
pub mod http2;
pub mod interim;
pub mod listen;
pub mod model;
pub mod pipeline;
pub mod policy;
pub mod route;
pub mod server;
pub mod stall;
pub mod static_files;
pub mod upstream;
pub mod websocket;
