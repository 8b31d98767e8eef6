//! gRPC-Web ⇄ gRPC translation, with no I/O: header rewrites and two
//! `http_body::Body` adapters a gateway wraps around the bodies it relays.
//!
//! Follows the gRPC-Web protocol doc
//! (<https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-WEB.md>) on top of
//! gRPC over HTTP/2 (<https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-HTTP2.md>).
//! Tollgate does not know the backend's protos: only framing is touched.
//!
//! ```text
//! request:  content-type grpc-web[-text][+proto] → grpc[+proto]; body: [base64 →] frames (checked)
//! response: content-type grpc[+proto] → grpc-web[-text][+proto]; body: frames [→ base64],
//!           HTTP/2 trailers → trailer frame (flag 0x80) at the end
//! ```

mod code;
mod error;
pub mod frame;
mod request;
mod response;
pub mod text;

use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

pub use code::{Code, percent_encode_message};
pub use error::{ErrorSlot, GrpcWebError};
pub use frame::FrameChecker;
pub use request::{RequestBody, RequestBodyError};
pub use response::{ResponseBody, status_trailers};

/// `grpc-status`: the call's status code.
pub static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
/// `grpc-message`: the status message, percent-encoded.
pub static GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
/// `te`: gRPC requires `te: trailers` on HTTP/2 requests.
pub static TE: HeaderName = HeaderName::from_static("te");

/// How a gRPC-Web body is written on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// `application/grpc-web[+proto]`: frames as bytes.
    Binary,
    /// `application/grpc-web-text[+proto]`: frames in base64.
    Text,
}

/// What a request's `content-type` says about its protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrpcKind {
    /// `application/grpc[+fmt]`: native gRPC.
    Grpc,
    /// `application/grpc-web[-text][+fmt]`.
    GrpcWeb(Encoding),
}

impl GrpcKind {
    /// Classifies a request by its `content-type` (media type compared
    /// case-insensitively, parameters ignored); `None` for non-gRPC.
    pub fn of(headers: &HeaderMap) -> Option<GrpcKind> {
        let value = headers.get(CONTENT_TYPE)?.as_bytes();
        let media = value.split(|&b| b == b';').next().unwrap_or_default().trim_ascii();
        let rest = strip_prefix_ignore_case(media, b"application/grpc")?;
        let (kind, rest) = if let Some(r) = strip_prefix_ignore_case(rest, b"-web-text") {
            (GrpcKind::GrpcWeb(Encoding::Text), r)
        } else if let Some(r) = strip_prefix_ignore_case(rest, b"-web") {
            (GrpcKind::GrpcWeb(Encoding::Binary), r)
        } else {
            (GrpcKind::Grpc, rest)
        };
        (rest.is_empty() || rest.starts_with(b"+")).then_some(kind)
    }

    /// The `content-type` of a response to this kind of request (the message format suffix kept).
    pub fn response_content_type(self, upstream: Option<&HeaderValue>) -> HeaderValue {
        let suffix = upstream.and_then(|v| format_suffix(v.as_bytes())).unwrap_or_default();
        let base: &[u8] = match self {
            GrpcKind::Grpc => b"application/grpc",
            GrpcKind::GrpcWeb(Encoding::Binary) => b"application/grpc-web",
            GrpcKind::GrpcWeb(Encoding::Text) => b"application/grpc-web-text",
        };
        HeaderValue::from_bytes(&[base, suffix].concat()).unwrap_or(HeaderValue::from_static("application/grpc"))
    }
}

fn strip_prefix_ignore_case<'a>(value: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    (value.len() >= prefix.len() && value[..prefix.len()].eq_ignore_ascii_case(prefix)).then(|| &value[prefix.len()..])
}

/// `+proto` in `application/grpc-web-text+proto; charset=...`.
fn format_suffix(content_type: &[u8]) -> Option<&[u8]> {
    let media = content_type.split(|&b| b == b';').next()?.trim_ascii();
    let plus = media.iter().position(|&b| b == b'+')?;
    Some(&media[plus..])
}

/// Rewrites a gRPC-Web request head into a gRPC one, returning the
/// encoding its body uses; `None` (head untouched) if it is not gRPC-Web.
pub fn translate_request_head(headers: &mut HeaderMap) -> Option<Encoding> {
    let GrpcKind::GrpcWeb(encoding) = GrpcKind::of(headers)? else { return None };
    let grpc = GrpcKind::Grpc.response_content_type(headers.get(CONTENT_TYPE));
    headers.insert(CONTENT_TYPE, grpc);
    // base64 changes the length; gRPC over HTTP/2 does not need one.
    headers.remove(CONTENT_LENGTH);
    headers.insert(&TE, HeaderValue::from_static("trailers"));
    Some(encoding)
}

/// Rewrites a gRPC response head for a gRPC-Web client. Returns true when
/// the head already carries the status (a trailers-only response, which
/// gRPC-Web clients read from the headers). A non-200 answer without a
/// status (a proxy's or a non-gRPC server's) becomes 200 with the status
/// the gRPC mapping gives its HTTP code, so the browser sees a gRPC error.
pub fn translate_response_head(status: &mut StatusCode, headers: &mut HeaderMap, encoding: Encoding) -> bool {
    let kind = GrpcKind::GrpcWeb(encoding);
    if *status != StatusCode::OK && !headers.contains_key(&GRPC_STATUS) {
        let code = Code::from_http(*status);
        let message = format!("upstream answered HTTP {}", status.as_u16());
        headers.extend(status_trailers(code, &message));
        *status = StatusCode::OK;
    }
    let content_type = kind.response_content_type(headers.get(CONTENT_TYPE));
    headers.insert(CONTENT_TYPE, content_type);
    headers.remove(CONTENT_LENGTH);
    headers.contains_key(&GRPC_STATUS)
}
