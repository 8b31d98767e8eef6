//! Why a request could not be proxied, and the one place such a failure
//! becomes a response: for HTTP clients a status + small JSON body with the
//! request id; for gRPC and gRPC-Web clients a trailers-only response (HTTP
//! 200, `grpc-status` + `grpc-message` in the head, no body), since gRPC
//! clients read the call's outcome from `grpc-status`, not the HTTP status
//! (PROTOCOL-HTTP2.md "Responses"; PROTOCOL-WEB.md).

use http::{HeaderValue, Response, StatusCode, header};
use tollgate_grpc_web::{Code, GRPC_MESSAGE, GRPC_STATUS, GrpcKind, GrpcWebError, percent_encode_message};

use tollgate_grpc_json::TranscodeError;

use crate::body::{self, Body};

/// Which side of the proxy a failure came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorSource {
    /// The client sent something we refuse.
    Downstream,
    /// The backend failed or could not be reached.
    Upstream,
    /// Our own configuration or a bug.
    Internal,
}

/// Every way a proxied request can fail before a backend response is relayed.
#[derive(Debug)]
pub enum ProxyError {
    /// No route matches the request.
    NoRoute,
    /// The request is malformed in a way hyper did not catch (e.g. bad Host).
    BadRequest(&'static str),
    /// The request body is larger than the route or listener allows.
    BodyTooLarge { limit: u64 },
    /// The client stopped sending its request body for the listener's `body_timeout`.
    BodyStalled { after: std::time::Duration },
    /// Connecting to every target tried failed (refused, reset, unreachable).
    UpstreamConnect { upstream: String, source: crate::upstream::ConnectError },
    /// Connecting or waiting for the response head took too long.
    UpstreamTimeout { upstream: String, phase: &'static str },
    /// Every target is at its connection limit.
    UpstreamSaturated { upstream: String },
    /// The backend broke the exchange after the connection was made.
    UpstreamProtocol { upstream: String, source: crate::body::BoxError },
    /// Serving a static file failed.
    Static(std::io::Error),
    /// A policy refused the request.
    Rejected(Box<crate::policy::Rejection>),
    /// The listener's `request_timeout` passed before a response head was ready.
    RequestTimeout { limit: std::time::Duration },
    /// A WebSocket backend answered the upgrade with a 101 that breaks
    /// RFC 6455 §4.1 (wrong accept value, unoffered subprotocol...).
    UpstreamWebSocket { upstream: String, source: tollgate_websocket::handshake::BackendHandshakeError },
    /// A gRPC-Web request body is malformed (bad base64, bad framing).
    GrpcWeb(GrpcWebError),
    /// A `grpc_json` route has no HTTP rule for this method and path.
    NoTranscodingRule,
    /// A JSON request that does not fit its gRPC method's message, or a
    /// backend message that does not decode as the method's answer.
    Transcode(tollgate_grpc_json::TranscodeError),
}

impl ProxyError {
    /// The HTTP status this failure is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute | ProxyError::NoTranscodingRule => StatusCode::NOT_FOUND,
            ProxyError::Transcode(TranscodeError::BadRequest(_)) => StatusCode::BAD_REQUEST,
            ProxyError::Transcode(TranscodeError::BadResponse(_)) => StatusCode::BAD_GATEWAY,
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            // RFC 9110 §15.5.9: the client did not finish its request in time.
            ProxyError::BodyStalled { .. } => StatusCode::REQUEST_TIMEOUT,
            ProxyError::UpstreamConnect { .. } | ProxyError::UpstreamProtocol { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::UpstreamSaturated { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Static(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ProxyError::Rejected(r) => r.status,
            // 504, not 408: the wait is usually the upstream's, and RFC 9110
            // §15.5.9 keeps 408 for a request the client did not finish sending.
            ProxyError::RequestTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::UpstreamWebSocket { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::GrpcWeb(_) => StatusCode::BAD_REQUEST,
        }
    }

    /// The gRPC status this failure is answered with for gRPC and gRPC-Web
    /// clients. A connect timeout means the backend is not there
    /// (UNAVAILABLE); any other wait that ran out is DEADLINE_EXCEEDED.
    /// Policy refusals keep their meaning: 401 → UNAUTHENTICATED, 403 →
    /// PERMISSION_DENIED, 429 → RESOURCE_EXHAUSTED (a quota, as gRPC's own
    /// rate limiters report it, not the mapping doc's UNAVAILABLE, which
    /// would invite an immediate retry).
    pub fn grpc_code(&self) -> Code {
        match self {
            ProxyError::NoRoute | ProxyError::NoTranscodingRule => Code::Unimplemented,
            ProxyError::Transcode(TranscodeError::BadRequest(_)) => Code::InvalidArgument,
            ProxyError::Transcode(TranscodeError::BadResponse(_)) => Code::Internal,
            ProxyError::BadRequest(_) => Code::Internal,
            ProxyError::BodyTooLarge { .. } => Code::ResourceExhausted,
            ProxyError::BodyStalled { .. } => Code::DeadlineExceeded,
            ProxyError::UpstreamProtocol { source, .. } => reset_code(&**source),
            ProxyError::UpstreamConnect { .. }
            | ProxyError::UpstreamSaturated { .. }
            | ProxyError::UpstreamWebSocket { .. } => Code::Unavailable,
            ProxyError::UpstreamTimeout { phase: "connect", .. } => Code::Unavailable,
            ProxyError::UpstreamTimeout { .. } | ProxyError::RequestTimeout { .. } => Code::DeadlineExceeded,
            ProxyError::Static(_) => Code::Internal,
            ProxyError::Rejected(r) => match r.status {
                StatusCode::BAD_REQUEST => Code::InvalidArgument,
                StatusCode::TOO_MANY_REQUESTS => Code::ResourceExhausted,
                other => Code::from_http(other),
            },
            ProxyError::GrpcWeb(e) => e.code(),
        }
    }

    /// A stable machine-readable code for the JSON body and logs.
    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::NoRoute => "no_route",
            ProxyError::BadRequest(_) => "bad_request",
            ProxyError::BodyTooLarge { .. } => "body_too_large",
            ProxyError::BodyStalled { .. } => "body_timeout",
            ProxyError::UpstreamConnect { .. } => "upstream_unreachable",
            ProxyError::UpstreamTimeout { .. } => "upstream_timeout",
            ProxyError::UpstreamSaturated { .. } => "upstream_saturated",
            ProxyError::UpstreamProtocol { .. } => "upstream_error",
            ProxyError::Static(_) => "static_error",
            ProxyError::Rejected(r) => r.code,
            ProxyError::RequestTimeout { .. } => "request_timeout",
            ProxyError::UpstreamWebSocket { .. } => "upstream_websocket_handshake",
            ProxyError::GrpcWeb(_) => "grpc_web_malformed",
            ProxyError::NoTranscodingRule => "no_transcoding_rule",
            ProxyError::Transcode(TranscodeError::BadRequest(_)) => "transcode_bad_request",
            ProxyError::Transcode(TranscodeError::BadResponse(_)) => "transcode_bad_response",
        }
    }

    /// Which side is to blame.
    pub fn source_side(&self) -> ErrorSource {
        match self {
            // A policy refusal is a decision about the client, not a failure: logged
            // at debug (a 429 flood must not become a warning flood); the access log has it.
            ProxyError::NoRoute
            | ProxyError::BadRequest(_)
            | ProxyError::BodyTooLarge { .. }
            | ProxyError::BodyStalled { .. }
            | ProxyError::GrpcWeb(_)
            | ProxyError::NoTranscodingRule
            | ProxyError::Transcode(TranscodeError::BadRequest(_))
            | ProxyError::Rejected(_) => ErrorSource::Downstream,
            ProxyError::Static(_) => ErrorSource::Internal,
            _ => ErrorSource::Upstream,
        }
    }

    /// A one-line explanation safe to show the client.
    pub fn message(&self) -> String {
        match self {
            ProxyError::NoRoute => "no route matches this request".into(),
            ProxyError::BadRequest(why) => (*why).into(),
            ProxyError::BodyTooLarge { limit } => {
                format!("request body exceeds the limit of {limit} bytes")
            }
            ProxyError::BodyStalled { after } => format!("no request body bytes arrived for {after:?}"),
            ProxyError::UpstreamConnect { upstream, .. } => {
                format!("upstream `{upstream}` is unreachable")
            }
            ProxyError::UpstreamTimeout { upstream, phase } => {
                format!("upstream `{upstream}` timed out ({phase})")
            }
            ProxyError::UpstreamSaturated { upstream } => {
                format!("upstream `{upstream}` has no free connection")
            }
            ProxyError::UpstreamProtocol { upstream, source } => match answer_fault(&**source) {
                Some(fault) => format!("upstream `{upstream}` failed to answer: {fault}"),
                None => format!("upstream `{upstream}` failed to answer"),
            },
            ProxyError::Static(_) => "static file could not be read".into(),
            ProxyError::Rejected(r) => r.message.clone(),
            ProxyError::RequestTimeout { limit } => format!("no response within the request timeout of {limit:?}"),
            ProxyError::UpstreamWebSocket { upstream, source } => {
                format!("upstream `{upstream}` failed the WebSocket handshake: {source}")
            }
            ProxyError::GrpcWeb(e) => e.to_string(),
            ProxyError::NoTranscodingRule => {
                "no HTTP rule of this route's gRPC methods matches this method and path".into()
            }
            ProxyError::Transcode(e) => e.to_string(),
        }
    }

    /// Builds the client-facing response.
    pub fn into_response(&self, request_id: &str) -> Response<Body> {
        let mut response = error_response(self.status(), self.code(), &self.message(), request_id);
        if let ProxyError::Rejected(r) = self {
            for (name, value) in &r.headers {
                response.headers_mut().append(name, value.clone());
            }
        }
        response
    }

    /// Builds the response for a client speaking `grpc` (from its
    /// content-type), or the HTTP one when it is `None`.
    pub fn into_response_for(&self, request_id: &str, grpc: Option<GrpcKind>) -> Response<Body> {
        let Some(kind) = grpc else { return self.into_response(request_id) };
        let mut response = Response::new(body::empty());
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, kind.response_content_type(None));
        headers.insert(&GRPC_STATUS, HeaderValue::from_static(self.grpc_code().as_str()));
        if let Ok(message) = HeaderValue::from_str(&percent_encode_message(&self.message())) {
            headers.insert(&GRPC_MESSAGE, message);
        }
        if let ProxyError::Rejected(r) = self {
            for (name, value) in &r.headers {
                headers.append(name, value.clone());
            }
        }
        response
    }
}

impl std::fmt::Display for ProxyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message())?;
        match self {
            ProxyError::UpstreamConnect { source, .. } => write_chain(f, source),
            ProxyError::UpstreamProtocol { source, .. } => write_chain(f, &**source),
            ProxyError::Static(e) => write!(f, ": {e}"),
            _ => Ok(()),
        }
    }
}

impl std::error::Error for ProxyError {}

/// Writes `: error: cause: cause...` so logs show the root cause.
fn write_chain(f: &mut std::fmt::Formatter<'_>, error: &dyn std::error::Error) -> std::fmt::Result {
    write!(f, ": {error}")?;
    let mut cause = error.source();
    while let Some(c) = cause {
        write!(f, ": {c}")?;
        cause = c.source();
    }
    Ok(())
}

/// A JSON error response: `{"error": code, "message": ..., "request_id": ...}`.
pub fn error_response(status: StatusCode, code: &str, message: &str, request_id: &str) -> Response<Body> {
    let json = serde_json::json!({ "error": code, "message": message, "request_id": request_id });
    let mut response = Response::new(body::full(json.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// What the backend did wrong, when it is the backend's answer itself (a
/// malformed or oversized head, broken framing, a close before or within
/// it): safe and useful to tell the client. Socket errors and anything
/// else stay in the log only.
fn answer_fault(source: &(dyn std::error::Error + Send + Sync + 'static)) -> Option<String> {
    use crate::upstream::h1::H1Error;
    // The WebSocket upgrade's exchange is hyper's.
    if let Some(e) = source.downcast_ref::<hyper::Error>() {
        return (e.is_parse() || e.is_parse_status() || e.is_incomplete_message()).then(|| e.to_string());
    }
    match source.downcast_ref::<H1Error>()? {
        e @ (H1Error::Closed
        | H1Error::Truncated
        | H1Error::HeadTooLarge
        | H1Error::Malformed(_)
        | H1Error::Framing(_)) => Some(e.to_string()),
        _ => None,
    }
}

/// A backend's RST_STREAM before its answer as a gRPC status, per the gRPC
/// HTTP/2 mapping (PROTOCOL-HTTP2.md, "Errors"): a refused stream was never
/// processed (UNAVAILABLE, safe to retry), a cancel is CANCELLED, a calm-down
/// is RESOURCE_EXHAUSTED; any other failure of the connection is UNAVAILABLE.
fn reset_code(source: &(dyn std::error::Error + Send + Sync + 'static)) -> Code {
    use h2::Reason;
    match source.downcast_ref::<crate::http2::Error>() {
        Some(crate::http2::Error::Reset(reason)) => match *reason {
            Reason::REFUSED_STREAM => Code::Unavailable,
            Reason::CANCEL => Code::Cancelled,
            Reason::ENHANCE_YOUR_CALM => Code::ResourceExhausted,
            Reason::INADEQUATE_SECURITY => Code::PermissionDenied,
            _ => Code::Internal,
        },
        _ => Code::Unavailable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_maps_to_its_documented_status() {
        assert_eq!(ProxyError::NoRoute.status(), 404);
        assert_eq!(ProxyError::BadRequest("x").status(), 400);
        assert_eq!(ProxyError::BodyTooLarge { limit: 1 }.status(), 413);
        assert_eq!(ProxyError::BodyStalled { after: std::time::Duration::from_secs(1) }.status(), 408);
        assert_eq!(ProxyError::UpstreamTimeout { upstream: "u".into(), phase: "connect" }.status(), 504);
        assert_eq!(ProxyError::UpstreamSaturated { upstream: "u".into() }.status(), 503);
        let timeout = ProxyError::RequestTimeout { limit: std::time::Duration::from_secs(1) };
        assert_eq!((timeout.status(), timeout.code()), (StatusCode::GATEWAY_TIMEOUT, "request_timeout"));
        let refused = ProxyError::Rejected(Box::new(crate::policy::Rejection::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "slow down",
        )));
        assert_eq!(refused.source_side(), ErrorSource::Downstream, "refusals are not logged as failures");
    }

    #[test]
    fn each_error_maps_to_its_grpc_status() {
        let upstream = || "u".to_string();
        let rejected =
            |status: StatusCode| ProxyError::Rejected(Box::new(crate::policy::Rejection::new(status, "refused", "no")));
        let reset = |reason| ProxyError::UpstreamProtocol {
            upstream: upstream(),
            source: Box::new(crate::http2::Error::Reset(reason)),
        };
        let connect_refused = ProxyError::UpstreamConnect {
            upstream: upstream(),
            source: crate::upstream::ConnectError::Io(std::io::ErrorKind::ConnectionRefused.into()),
        };
        let table = [
            (ProxyError::NoRoute, Code::Unimplemented),
            (connect_refused, Code::Unavailable),
            (ProxyError::UpstreamSaturated { upstream: upstream() }, Code::Unavailable),
            (ProxyError::UpstreamTimeout { upstream: upstream(), phase: "connect" }, Code::Unavailable),
            (
                ProxyError::UpstreamTimeout { upstream: upstream(), phase: crate::upstream::DEADLINE_PHASE },
                Code::DeadlineExceeded,
            ),
            (ProxyError::RequestTimeout { limit: std::time::Duration::from_secs(1) }, Code::DeadlineExceeded),
            (ProxyError::BodyTooLarge { limit: 1 }, Code::ResourceExhausted),
            (ProxyError::BodyStalled { after: std::time::Duration::from_secs(1) }, Code::DeadlineExceeded),
            (rejected(StatusCode::UNAUTHORIZED), Code::Unauthenticated),
            (rejected(StatusCode::FORBIDDEN), Code::PermissionDenied),
            (rejected(StatusCode::TOO_MANY_REQUESTS), Code::ResourceExhausted),
            (ProxyError::GrpcWeb(GrpcWebError::InvalidBase64), Code::InvalidArgument),
            (reset(h2::Reason::REFUSED_STREAM), Code::Unavailable),
            (reset(h2::Reason::CANCEL), Code::Cancelled),
            (reset(h2::Reason::ENHANCE_YOUR_CALM), Code::ResourceExhausted),
            (reset(h2::Reason::INADEQUATE_SECURITY), Code::PermissionDenied),
            (reset(h2::Reason::INTERNAL_ERROR), Code::Internal),
            (
                ProxyError::UpstreamProtocol { upstream: upstream(), source: Box::new(crate::http2::Error::Closed) },
                Code::Unavailable,
            ),
            (ProxyError::GrpcWeb(GrpcWebError::TruncatedFrame), Code::Internal),
        ];
        for (error, code) in table {
            assert_eq!(error.grpc_code(), code, "{error}");
        }
    }

    #[test]
    fn grpc_clients_get_a_trailers_only_response() {
        let mut refused =
            crate::policy::Rejection::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "slow down, 100% over");
        refused.headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        let response = ProxyError::Rejected(Box::new(refused)).into_response_for("id", Some(GrpcKind::Grpc));
        assert_eq!(response.status(), StatusCode::OK);
        let h = response.headers();
        assert_eq!(h[header::CONTENT_TYPE], "application/grpc");
        assert_eq!(h["grpc-status"], "8");
        assert_eq!(h["grpc-message"], "slow down, 100%25 over");
        assert_eq!(h[header::RETRY_AFTER], "1");
        assert!(http_body::Body::is_end_stream(response.body()));

        let web =
            ProxyError::NoRoute.into_response_for("id", Some(GrpcKind::GrpcWeb(tollgate_grpc_web::Encoding::Text)));
        assert_eq!(web.headers()[header::CONTENT_TYPE], "application/grpc-web-text");
        assert_eq!(web.headers()["grpc-status"], "12");
        assert_eq!(ProxyError::NoRoute.into_response_for("id", None).status(), StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn error_body_is_json_with_the_request_id() {
        use http_body_util::BodyExt;
        let response = ProxyError::NoRoute.into_response("abc123");
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(value["error"], "no_route");
        assert_eq!(value["request_id"], "abc123");
    }
}
