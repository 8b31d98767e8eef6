//! The HTTP/JSON leg of a `grpc_json` route: a JSON request becomes one
//! call to the gRPC upstream (`tollgate-grpc-json` translates), and the
//! answer becomes JSON again: an object for a unary method, a JSON array,
//! streamed as messages arrive, for a server-streaming one. A failed call
//! is answered with the HTTP status of its gRPC status and a
//! `google.rpc.Status`-shaped body, `{"code": 5, "message": "..."}`.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode, Uri, Version};
use http_body::Frame;
use http_body_util::BodyExt;
use tollgate_grpc_json::{Call, MessageReader, TranscodeError, decode_grpc_message, error_body, http_status};
use tollgate_grpc_web::{GRPC_MESSAGE, GRPC_STATUS, TE};

use super::{Outcome, forwarded};
use crate::body::{self, Body, BoxError};
use crate::config::RouteConfig;
use crate::error::ProxyError;
use crate::model::RequestContext;
use crate::upstream::Upstream;

/// Largest JSON request body and largest backend message: gRPC's default
/// message limit. The route's or listener's own body limit applies first.
const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// Transcodes one HTTP/JSON request into a call to `upstream`, by the rules of `route.grpc_json`.
pub(super) async fn forward(
    upstream: &Upstream,
    mut parts: http::request::Parts,
    body: Body,
    ctx: &mut RequestContext,
    route: &RouteConfig,
) -> Result<Outcome, ProxyError> {
    let call = route
        .grpc_json
        .as_ref()
        .and_then(|transcoder| transcoder.find(&parts.method, parts.uri.path()))
        .ok_or(ProxyError::NoTranscodingRule)?;
    let json = read_whole(body).await?;
    let message = call.request_message(&json, parts.uri.query()).map_err(ProxyError::Transcode)?;

    // The call's head: gRPC's, with the client's other fields as metadata.
    parts.method = Method::POST;
    parts.uri = Uri::try_from(call.grpc_path()).map_err(|_| ProxyError::BadRequest("invalid gRPC method path"))?;
    for name in [header::CONTENT_LENGTH, header::ACCEPT, header::ACCEPT_ENCODING] {
        parts.headers.remove(name);
    }
    parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    let mut req = forwarded::prepare_request(parts, body::full(message), ctx, route)?;
    *req.version_mut() = Version::HTTP_2;
    req.headers_mut().insert(&TE, HeaderValue::from_static("trailers"));
    ctx.upstream = Some(upstream.name.clone());
    let sent = upstream.send_grpc(req, ctx.client_ip).await?;
    ctx.target = Some(sent.target);
    let mut response = sent.response;
    forwarded::prepare_h2_response(&mut response, ctx.protocol, route);
    let (head, mut body) = response.into_parts();
    if head.status != StatusCode::OK {
        return Err(failed(upstream, format!("the gRPC backend answered HTTP {}", head.status)));
    }
    // Trailers-only: the call failed before any message.
    let trailers_only = grpc_status(&head.headers);
    let headers = metadata(head.headers);
    if let Some(status) = trailers_only {
        return Ok(Outcome::Streamed(finished(&call, status, None, headers)?, sent.guard));
    }

    // A unary answer waits for its status; a stream for its first message.
    let mut reader = MessageReader::new(MAX_MESSAGE_BYTES);
    let mut answer = None;
    let status = loop {
        match reader.next_message() {
            Ok(Some(message)) if call.server_streaming() => {
                let first = opening(&call, &message).map_err(ProxyError::Transcode)?;
                let stream = JsonArray { call, inner: body, reader, pending: Some(first), done: false };
                let response = json_response(StatusCode::OK, headers, body::boxed(stream));
                return Ok(Outcome::Streamed(response, sent.guard));
            }
            Ok(Some(_)) if answer.is_some() => {
                return Err(failed(upstream, "a unary call answered with more than one message".into()));
            }
            Ok(Some(message)) => {
                answer = Some(message);
                continue;
            }
            Ok(None) => {}
            Err(e) => return Err(failed(upstream, e.to_string())),
        }
        match body.frame().await {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => reader.push(&data),
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        break grpc_status(&trailers).unwrap_or((2, "the backend sent no grpc-status".into()));
                    }
                }
            },
            Some(Err(e)) => return Err(failed(upstream, format!("the backend's answer broke off: {e}"))),
            None => return Err(failed(upstream, "the backend ended the call without a grpc-status".into())),
        }
    };
    if reader.pending() > 0 {
        return Err(failed(upstream, "the backend's last message is cut off".into()));
    }
    Ok(Outcome::Streamed(finished(&call, status, answer, headers)?, sent.guard))
}

/// The backend broke the call's protocol: a 502 naming the upstream.
fn failed(upstream: &Upstream, why: String) -> ProxyError {
    ProxyError::UpstreamProtocol { upstream: upstream.config.name.clone(), source: why.into() }
}

/// The response to a call that has ended without a stream being started:
/// the JSON of its answer (`[]` for a stream that sent nothing) when it
/// succeeded, else the error its status maps to. An answer that does not
/// decode is Tollgate's error (`transcode_bad_response`), not the call's.
fn finished(
    call: &Call,
    (code, message): (u32, String),
    answer: Option<Bytes>,
    headers: HeaderMap,
) -> Result<Response<Body>, ProxyError> {
    if code != 0 {
        return Ok(json_response(http_status(code), headers, body::full(error_body(code, &message))));
    }
    let json = match answer {
        _ if call.server_streaming() => b"[]".to_vec(),
        Some(answer) => call.response_json(&answer).map_err(ProxyError::Transcode)?,
        None => {
            let why = "a unary call answered with no message".to_owned();
            return Err(ProxyError::Transcode(TranscodeError::BadResponse(why)));
        }
    };
    Ok(json_response(StatusCode::OK, headers, body::full(json)))
}

fn json_response(status: StatusCode, mut headers: HeaderMap, body: Body) -> Response<Body> {
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// The backend's response fields a JSON client may see: its metadata, not
/// gRPC's own fields nor a length that was the gRPC body's.
fn metadata(mut headers: HeaderMap) -> HeaderMap {
    for name in [header::CONTENT_TYPE, header::CONTENT_LENGTH] {
        headers.remove(name);
    }
    for name in [&GRPC_STATUS, &GRPC_MESSAGE] {
        headers.remove(name);
    }
    for name in ["grpc-status-details-bin", "grpc-encoding", "grpc-accept-encoding"] {
        headers.remove(name);
    }
    headers
}

/// `grpc-status` and the percent-decoded `grpc-message`, when present.
fn grpc_status(fields: &HeaderMap) -> Option<(u32, String)> {
    let code = fields.get(&GRPC_STATUS)?.to_str().ok()?.trim().parse().unwrap_or(2);
    let message = fields.get(&GRPC_MESSAGE).map(|m| decode_grpc_message(m.as_bytes())).unwrap_or_default();
    Some((code, message))
}

/// The JSON request body, whole, within [`MAX_MESSAGE_BYTES`] (the
/// route's or listener's limit, when lower, has already been applied).
async fn read_whole(mut body: Body) -> Result<Bytes, ProxyError> {
    let mut whole = BytesMut::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                let Ok(data) = frame.into_data() else { continue };
                if whole.len() + data.len() > MAX_MESSAGE_BYTES {
                    return Err(ProxyError::BodyTooLarge { limit: MAX_MESSAGE_BYTES as u64 });
                }
                whole.extend_from_slice(&data);
            }
            Err(e) => {
                return Err(if let Some(limit) = crate::body::body_too_large_limit(&*e) {
                    ProxyError::BodyTooLarge { limit }
                } else if let Some(after) = crate::body::body_stalled_after(&*e) {
                    ProxyError::BodyStalled { after }
                } else {
                    ProxyError::BadRequest("the request body broke off")
                });
            }
        }
    }
    Ok(whole.freeze())
}

/// `[` and the first message of a stream.
fn opening(call: &Call, message: &[u8]) -> Result<Bytes, TranscodeError> {
    let mut out = BytesMut::from(&b"["[..]);
    out.extend_from_slice(&call.response_json(message)?);
    Ok(out.freeze())
}

/// A server stream's messages as one JSON array, each element sent as its
/// message arrives. A failure after the first element cannot change the
/// status any more: the body is cut off (no closing `]`, the response not
/// ended cleanly), so the client sees it incomplete rather than short.
struct JsonArray {
    call: Call,
    inner: Body,
    reader: MessageReader,
    pending: Option<Bytes>,
    done: bool,
}

impl http_body::Body for JsonArray {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(chunk) = this.pending.take() {
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if this.done {
            return Poll::Ready(None);
        }
        loop {
            if let Some(message) = this.reader.next_message()? {
                let mut out = BytesMut::from(&b","[..]);
                out.extend_from_slice(&this.call.response_json(&message)?);
                return Poll::Ready(Some(Ok(Frame::data(out.freeze()))));
            }
            let frame = match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(frame) => frame?,
                None => return Poll::Ready(Some(Err("the backend ended the stream without a grpc-status".into()))),
            };
            match frame.into_data() {
                Ok(data) => this.reader.push(&data),
                Err(frame) => {
                    let Ok(trailers) = frame.into_trailers() else { continue };
                    let (code, message) =
                        grpc_status(&trailers).unwrap_or((2, "the backend sent no grpc-status".into()));
                    if code != 0 {
                        return Poll::Ready(Some(Err(
                            format!("the stream failed: grpc-status {code}, {message}").into()
                        )));
                    }
                    if this.reader.pending() > 0 {
                        return Poll::Ready(Some(Err("the backend's last message is cut off".into())));
                    }
                    this.done = true;
                    return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"]")))));
                }
            }
        }
    }
}
