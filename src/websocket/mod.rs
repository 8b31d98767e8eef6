//! The core's side of the WebSocket bridge (`bridges/websocket` does the
//! protocol work): after routing and the policy chain have accepted the
//! upgrade request like any other, a route with `websocket = ...` answers
//! it here instead of proxying it.
//!
//! - [`tunnel`]: `websocket = "tunnel"`, frames relayed to a WebSocket backend.
//! - [`message`]: `websocket = "http"`, messages as HTTP/1.1 requests.
//! - [`session`]: the access-log lines for connection open and close.
//! - [`shutdown`]: close 1001 to every session when the process stops.
//! - [`stream`]: upgraded connections, unwrapped to the socket where possible.
//! - [`reactor`]: threads of our own that run tunnels between two plain TCP sockets.
//!
//! Both shapes of client handshake arrive here: HTTP/1.1 `Upgrade`
//! (RFC 6455 §4) and HTTP/2 extended CONNECT (RFC 8441, enabled on every
//! listener with SETTINGS_ENABLE_CONNECT_PROTOCOL). Once our 101/200 response
//! has been written, our HTTP/1.1 server hands over the connection through
//! `PendingUpgrade`, our HTTP/2 server the stream through `PendingConnect`.

pub mod client;
mod message;
pub mod reactor;
mod session;
pub mod shutdown;
pub mod stream;
mod tunnel;

use std::sync::Arc;

use http::request::Parts;
use http::{Method, Response};
use hyper::body::Incoming;

use crate::listen::http1::PendingUpgrade;
use crate::listen::http2::PendingConnect;
use tollgate_websocket::handshake::{self, HandshakeError};

use crate::body::Body;
use crate::config::{RouteConfig, WebSocketMode, WebSocketRoute};
use crate::error::ProxyError;
use crate::model::{DownstreamProtocol, RequestContext};
use crate::policy::Rejection;
use crate::upstream::{TargetGuard, Upstream};

/// How a WebSocket request was answered.
pub enum Accepted {
    /// 101 (or 200 on HTTP/2): the connection is now served by a spawned task.
    Switched(Response<Body>),
    /// The backend refused the upgrade with an ordinary response, relayed as is.
    Refused(Response<Incoming>, TargetGuard),
}

/// The `:protocol` pseudo-header of an HTTP/2 extended CONNECT (RFC 8441 §4).
fn protocol(parts: &Parts) -> Option<&str> {
    parts.extensions.get::<h2::ext::Protocol>().map(h2::ext::Protocol::as_str)
}

/// True when the request asks for a WebSocket, in either shape, or is a
/// WebTransport CONNECT the HTTP/3 listener marked for a WebSocket route.
pub fn is_websocket(parts: &Parts) -> bool {
    parts.extensions.get::<client::WebTransportUpgrade>().is_some()
        || handshake::is_websocket_request(&parts.method, &parts.headers, protocol(parts))
}

/// True for an RFC 8441 extended CONNECT: only WebSocket routes can answer
/// one (as a plain request it would reach the backend as a bogus CONNECT).
pub fn is_extended_connect(parts: &Parts) -> bool {
    parts.method == Method::CONNECT && protocol(parts).is_some()
}

/// Answers a WebSocket request on a WebSocket route: checks the handshake
/// (RFC 6455 §4.2.1 / RFC 8441 §5), then opens the tunnel or message session.
pub async fn accept(
    ws: &WebSocketRoute,
    upstream: &Arc<Upstream>,
    route: &RouteConfig,
    ctx: &mut RequestContext,
    mut parts: Parts,
    access_log: bool,
) -> Result<Accepted, ProxyError> {
    let client = match parts.extensions.remove::<client::WebTransportUpgrade>() {
        Some(upgrade) => client::ClientSide::WebTransport(upgrade),
        None => {
            let handshake = handshake::validate_client(&parts.method, parts.version, &parts.headers, protocol(&parts))
                .map_err(|e| refusal(e, ctx.protocol))?;
            let upgrade = match parts.extensions.remove::<PendingUpgrade>() {
                Some(upgrade) => client::ClientUpgrade::Http1(upgrade),
                None => parts
                    .extensions
                    .remove::<PendingConnect>()
                    .map(client::ClientUpgrade::Http2)
                    .ok_or(ProxyError::BadRequest("this connection cannot be upgraded"))?,
            };
            client::ClientSide::WebSocket { handshake, upgrade }
        }
    };
    let mut session = session::Session::new(ctx, ws.mode, access_log);
    if ctx.protocol == DownstreamProtocol::Http1 {
        // The HTTP/1.1 connection task ends once hyper hands the socket over; the
        // session keeps it counted (an HTTP/2 connection stays open and counted).
        let peer = ctx.connection.peer.ip();
        session.held = Some(ctx.connection.listener.limits.hold_upgraded(peer));
    }
    match ws.mode {
        WebSocketMode::Tunnel => tunnel::open(ws, upstream, route, ctx, parts, client, session).await,
        WebSocketMode::Http => message::open(ws, upstream, route, ctx, parts, client, session),
    }
}

/// A bad handshake is the client's fault: 400, or 426 with the versions we
/// speak. Over HTTP/1.1 a 426 also names the protocol to upgrade to
/// (RFC 9110 §15.5.22), as a connection option (§7.8); HTTP/2 and 3 have
/// no `Upgrade`.
fn refusal(e: HandshakeError, protocol: DownstreamProtocol) -> ProxyError {
    let mut rejection = Rejection::new(e.status(), "websocket_handshake", e.to_string());
    rejection.headers = e.headers();
    if e.status() == http::StatusCode::UPGRADE_REQUIRED && protocol == DownstreamProtocol::Http1 {
        rejection.headers.insert(http::header::UPGRADE, http::HeaderValue::from_static("websocket"));
        rejection.headers.insert(http::header::CONNECTION, http::HeaderValue::from_static("upgrade"));
    }
    ProxyError::Rejected(Box::new(rejection))
}

/// Frame limits of a route, in the bridge's terms.
fn limits(ws: &WebSocketRoute) -> tollgate_websocket::Limits {
    tollgate_websocket::Limits { max_message_bytes: ws.max_message_bytes, max_frame_bytes: ws.max_frame_bytes }
}

/// Our answer to the client, with an empty body.
fn switched(response: Response<()>) -> Accepted {
    let (head, ()) = response.into_parts();
    Accepted::Switched(Response::from_parts(head, crate::body::empty()))
}
