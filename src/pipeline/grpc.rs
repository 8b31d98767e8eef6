//! The gRPC leg of the data path: a request routed to a `protocol = "grpc"`
//! upstream is re-shaped for HTTP/2 (`te: trailers`, RFC 9113 / PROTOCOL-HTTP2.md
//! "Requests"), and a gRPC-Web request is translated both ways by the
//! `tollgate-grpc-web` bridge around the same call; an HTTP/JSON request on a
//! route with `grpc_json` is transcoded instead (`grpc_json.rs`). Policies
//! already ran on the request as it came; they see gRPC-Web and JSON exactly
//! as any other request.

use http::{HeaderValue, Request, Response, Version};
use tollgate_grpc_web::{
    ErrorSlot, GrpcKind, RequestBody, ResponseBody, TE, translate_request_head, translate_response_head,
};

use super::{Outcome, forwarded};
use crate::body::{self, Body};
use crate::config::RouteConfig;
use crate::error::ProxyError;
use crate::model::RequestContext;
use crate::upstream::Upstream;

/// Sends one call to a gRPC upstream and returns its streaming response.
///
/// An `async` block rather than an `async fn`, which would keep the request
/// head twice in this future (boxed for every call).
#[allow(clippy::manual_async_fn, reason = "an async fn keeps its arguments twice")]
pub(super) fn forward<'a>(
    upstream: &'a Upstream,
    mut parts: http::request::Parts,
    body: Body,
    ctx: &'a mut RequestContext,
    route: &'a RouteConfig,
) -> impl Future<Output = Result<Outcome, ProxyError>> + Send + 'a {
    async move {
        // An HTTP/JSON client of a transcoding route; gRPC and gRPC-Web clients pass through.
        if route.grpc_json.is_some() && GrpcKind::of(&parts.headers).is_none() {
            return Box::pin(super::grpc_json::forward(upstream, parts, body, ctx, route)).await;
        }
        // gRPC-Web: the head becomes gRPC, the body is decoded (and checked) as it streams.
        let web = translate_request_head(&mut parts.headers).map(|encoding| (encoding, ErrorSlot::default()));
        let body = match &web {
            Some((encoding, slot)) => body::boxed(RequestBody::new(body, *encoding, slot.clone())),
            None => body,
        };
        // The request is handed to the call inside this block, so that the
        // future waiting on the call does not also hold it.
        let sending = {
            let mut req: Request<Body> = forwarded::prepare_request(parts, body, ctx, route)?;
            *req.version_mut() = Version::HTTP_2;
            // `forwarded` drops TE as hop-by-hop; gRPC requires exactly this value end to end.
            req.headers_mut().insert(&TE, HeaderValue::from_static("trailers"));
            upstream.send_grpc(req, ctx.client_ip)
        };
        ctx.upstream = Some(upstream.name.clone());
        let sent = match sending.await {
            Ok(sent) => sent,
            // The call failed because the client's gRPC-Web body was malformed: say so.
            Err(e) => return Err(web.and_then(|(_, slot)| slot.get().cloned()).map_or(e, ProxyError::GrpcWeb)),
        };
        ctx.target = Some(sent.target);
        let mut response = sent.response;
        forwarded::prepare_h2_response(&mut response, ctx.protocol, route);
        if let Some((encoding, slot)) = web {
            let (mut head, body) = response.into_parts();
            let status_in_head = translate_response_head(&mut head.status, &mut head.headers, encoding);
            let body = body::boxed(ResponseBody::new(body, encoding, status_in_head, slot));
            response = Response::from_parts(head, body);
        }
        Ok(Outcome::Streamed(response, sent.guard))
    }
}
