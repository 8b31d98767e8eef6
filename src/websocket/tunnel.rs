//! Tunnel mode: the upgrade goes to the backend as an HTTP/1.1 WebSocket
//! handshake (whatever the client spoke), and once both sides switched, the
//! bridge runs in its own task for the life of the connection: the frame
//! tunnel for a WebSocket client, the message relay for a WebTransport one.

use std::sync::Arc;

use futures_util::SinkExt;
use http::request::Parts;
use http::{Request, header};
use tollgate_websocket::close;
use tollgate_websocket::handshake::{self, BackendHandshakeError, SEC_WEBSOCKET_PROTOCOL};
use tollgate_websocket::relay::{self, RelaySettings};
use tollgate_websocket::tunnel::{self as frames, TunnelOptions};

use super::client::{ClientSide, Switched};
use super::reactor::Reactors;
use super::session::Session;
use super::stream::UpgradedStream;
use super::{Accepted, limits, switched};
use crate::body;
use crate::config::{RouteConfig, WebSocketRoute};
use crate::error::ProxyError;
use crate::model::RequestContext;
use crate::pipeline::forwarded;
use crate::upstream::Upstream;

/// Opens the backend WebSocket and, if it agrees, answers the client and
/// starts relaying.
pub(super) async fn open(
    ws: &WebSocketRoute,
    upstream: &Arc<Upstream>,
    route: &RouteConfig,
    ctx: &mut RequestContext,
    parts: Parts,
    client: ClientSide,
    mut session: Session,
) -> Result<Accepted, ProxyError> {
    let offered = parts.headers.get(&SEC_WEBSOCKET_PROTOCOL).cloned();
    // Same head as any proxied request (path rewrite, forwarding headers,
    // policy edits); hop-by-hop headers are gone and put back by the bridge.
    let (mut head, body) = forwarded::prepare_request(parts, body::empty(), ctx, route)?.into_parts();
    let key = handshake::to_backend_request(&mut head, client.carries_frames());
    ctx.upstream = Some(Arc::clone(&upstream.name));
    let sent = upstream.send_upgrade(Request::from_parts(head, body), ctx.client_ip).await?;
    ctx.target = Some(Arc::clone(&sent.target));
    let mut response = sent.response;
    let negotiated =
        match handshake::check_backend_response(response.status(), response.headers(), &key, offered.as_ref()) {
            Ok(n) => n,
            Err(BackendHandshakeError::NotSwitching(_)) => {
                forwarded::prepare_response(&mut response, ctx.protocol, route);
                return Ok(Accepted::Refused(response, sent.guard));
            }
            Err(source) => {
                return Err(ProxyError::UpstreamWebSocket { upstream: upstream.config.name.clone(), source });
            }
        };
    let backend_upgrade = hyper::upgrade::on(&mut response);
    session.upstream = ctx.upstream.clone();
    session.target = ctx.target.clone();
    let limits = limits(ws);
    let settings =
        RelaySettings { idle_timeout: ws.idle_timeout, ping_interval: ws.ping_interval, ..Default::default() };
    let guard = sent.guard;
    // End-to-end fields of the backend's 101 (Set-Cookie...) reach the client too;
    // the handshake fields are ours to set for the client's hop.
    let mut answer = client.response(&negotiated, &limits);
    let options = TunnelOptions { limits, permessage_deflate: negotiated.permessage_deflate() };
    tokio::spawn(async move {
        let (client, backend_io) = tokio::join!(client.switch(), backend_upgrade);
        let Some(client) = client else { return };
        let backend_io = match backend_io {
            Ok(io) => UpgradedStream::new(io),
            // Boxed: a rare path need not grow every tunnel's future.
            Err(e) => return Box::pin(refuse_after_101(client, e, limits)).await,
        };
        session.opened();
        let stopping = super::shutdown::stopping();
        match client {
            Switched::WebSocket(io) => {
                // Run apart from this task, which also holds the handshake's
                // state: an idle tunnel should cost as little memory as possible.
                // Boxed: the tunnel pins its own copy of this future, so a
                // box (16 bytes) is moved instead of the whole wait.
                let stopping = Box::pin(stopping);
                // The end of the tunnel (log line, target slot) is written out in
                // both arms: as one closure owning `session` and `guard`, it cost
                // about 1 KiB more per idle connection (bench/PROFILE.md, stop 22).
                // The threads start with the first plain-socket tunnel, not with a TLS one.
                let plain = matches!((&io, &backend_io), (UpgradedStream::Tcp(_), UpgradedStream::Tcp(_)));
                let reactors = if plain { Reactors::get() } else { None };
                match (io, backend_io, reactors) {
                    // Two plain sockets: on a reactor thread, off tokio's wakes.
                    (UpgradedStream::Tcp(client), UpgradedStream::Tcp(backend), Some(reactors)) => {
                        reactors.spawn(client, backend, move |client, backend| {
                            // Built outside the `async` block, which would
                            // otherwise keep a second copy of its arguments.
                            let tunnel = frames::tunnel(client, backend, options, settings, stopping);
                            async move {
                                let report = tunnel.await;
                                session.closed(&report);
                                // The target's slot (least_request, max_connections_per_target) is held until now.
                                drop(guard);
                            }
                        });
                    }
                    (io, backend_io, _) => {
                        let tunnel = frames::tunnel(io, backend_io, options, settings, stopping);
                        tokio::spawn(async move {
                            let report = tunnel.await;
                            session.closed(&report);
                            drop(guard);
                        });
                    }
                }
            }
            Switched::WebTransport(channel) => {
                Box::pin(async move {
                    let backend = tollgate_websocket::client_stream(backend_io, &limits).await;
                    let report = relay::relay(channel, backend, &settings, stopping).await;
                    session.closed(&report);
                    drop(guard);
                })
                .await
            }
        }
    });
    let mut extra = response.headers().clone();
    forwarded::remove_hop_by_hop(&mut extra);
    for (name, value) in &extra {
        if !name.as_str().starts_with("sec-websocket-") && name != header::CONTENT_LENGTH {
            answer.headers_mut().append(name, value.clone());
        }
    }
    Ok(switched(answer))
}

/// The backend said 101 but its connection could not be taken over: the
/// client, already switched, gets a close frame instead of a tunnel.
async fn refuse_after_101(client: Switched, error: hyper::Error, limits: tollgate_websocket::Limits) {
    tracing::warn!(error = %error, "backend upgrade failed after 101");
    // RFC 6455 §7.4.1: 1011, the server hit a condition it cannot recover from.
    let frame = close::frame(close::CloseCode::Error, "backend upgrade failed");
    let _ = client.into_channel(&limits).await.send(tungstenite::Message::Close(Some(frame))).await;
}
