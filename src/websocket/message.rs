//! Message mode: the client's WebSocket is answered here, and every message
//! it sends becomes an HTTP/1.1 request to the route's plain upstream
//! through the shared pool; the bridge maps replies back to messages.
//!
//! Each request carries the upgrade request's headers (after the policy
//! chain and forwarding rewrites, minus the `Sec-WebSocket-*` handshake
//! fields), the connection id (the upgrade's request id), the message's
//! sequence number, the message type and the authenticated principal.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Request, Response, Uri};
use tollgate_websocket::handshake::{Negotiated, SEC_WEBSOCKET_EXTENSIONS, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION};
use tollgate_websocket::message::{self, CONNECTION_ID, MessageSettings, PRINCIPAL, RequestTemplate, SEQUENCE};

use super::client::ClientSide;
use super::session::Session;
use super::{Accepted, limits, switched};
use crate::body::{self, Body};
use crate::config::{RouteConfig, WebSocketRoute};
use crate::error::ProxyError;
use crate::model::RequestContext;
use crate::pipeline::access_log::Tracked;
use crate::pipeline::forwarded::{self, Forwarding};
use crate::upstream::Upstream;

/// Answers the client at once (there is no backend handshake) and starts
/// the message loop in its own task.
pub(super) fn open(
    ws: &WebSocketRoute,
    upstream: &Arc<Upstream>,
    route: &RouteConfig,
    ctx: &mut RequestContext,
    parts: Parts,
    client: ClientSide,
    mut session: Session,
) -> Result<Accepted, ProxyError> {
    let (head, _) = forwarded::prepare_request(parts, body::empty(), ctx, route)?.into_parts();
    let mut headers = head.headers;
    for name in [&SEC_WEBSOCKET_KEY, &SEC_WEBSOCKET_VERSION, &SEC_WEBSOCKET_EXTENSIONS] {
        headers.remove(name);
    }
    headers.remove(header::CONTENT_LENGTH);
    headers.insert(&CONNECTION_ID, ctx.id.clone());
    headers.remove(&PRINCIPAL);
    if let Some(principal) = ctx.principal.as_deref().and_then(|p| HeaderValue::from_str(p).ok()) {
        headers.insert(&PRINCIPAL, principal);
    }
    for (name, value) in &ws.headers {
        headers.insert(name, value.clone());
    }
    let path_uri = |path: &str| Uri::try_from(path).map_err(|_| ProxyError::BadRequest("invalid WebSocket path"));
    let uri = match &ws.path {
        Some(path) => path_uri(path)?,
        None => head.uri,
    };
    let push = match &ws.push_path {
        None => None,
        Some(path) => {
            let mut request = Request::new(body::empty());
            *request.uri_mut() = path_uri(path)?;
            *request.headers_mut() = headers.clone();
            request.headers_mut().insert(&SEQUENCE, HeaderValue::from_static("0"));
            request.headers_mut().insert(header::ACCEPT, HeaderValue::from_static("text/event-stream"));
            Some(request)
        }
    };
    let template = RequestTemplate { method: ws.method.clone(), uri, headers };
    ctx.upstream = Some(Arc::clone(&upstream.name));
    session.upstream = ctx.upstream.clone();

    let settings = MessageSettings {
        in_flight: ws.in_flight,
        idle_timeout: ws.idle_timeout,
        ping_interval: ws.ping_interval,
        max_reply_bytes: ws.max_message_bytes,
    };
    let limits = limits(ws);
    let upstream = Arc::clone(upstream);
    let client_ip = ctx.client_ip;
    let answer = client.response(&Negotiated::default(), &limits);
    tokio::spawn(async move {
        let Some(stream) = client.open(&limits).await else { return };
        session.opened();
        let call = |request: Request<Body>| send(Arc::clone(&upstream), request, client_ip);
        let push = push.map(&call);
        let report = message::serve(
            stream,
            template,
            settings,
            move |r: Request<Bytes>| call(r.map(body::full)),
            push,
            super::shutdown::stopping(),
        )
        .await;
        session.closed(&report);
    });
    Ok(switched(answer))
}

/// One request through the upstream's pool; the connection goes back to
/// the pool when the reply body has been read to the end.
async fn send(
    upstream: Arc<Upstream>,
    request: Request<Body>,
    client_ip: std::net::IpAddr,
) -> Result<Response<Tracked<crate::upstream::h1::ResponseBody>>, ProxyError> {
    let sent = upstream.send(request, Forwarding::default(), client_ip).await?;
    let (parts, incoming) = sent.response.into_parts();
    Ok(Response::from_parts(parts, Tracked::new(incoming, None, Some(sent.guard))))
}
