//! The opening handshake (RFC 6455 §4, RFC 8441 §4–5), checked on the
//! client's request, re-made for the HTTP/1.1 backend, checked again on the
//! backend's answer and turned into the client's answer.
//!
//! Two downstream shapes, one upstream shape:
//!
//! ```text
//! HTTP/1.1  GET + Upgrade: websocket + Sec-WebSocket-Key  ─┐
//! HTTP/2    CONNECT + :protocol = websocket (RFC 8441)    ─┴─► GET + Upgrade: websocket + fresh Sec-WebSocket-Key (HTTP/1.1)
//! 101 + Sec-WebSocket-Accept(client key)  ◄─┬── 101 + Sec-WebSocket-Accept(our key), checked
//! 200 (RFC 8441 §5)                       ◄─┘
//! ```

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode, Version};

/// `Sec-WebSocket-Key` (RFC 6455 §11.3.1).
pub static SEC_WEBSOCKET_KEY: HeaderName = header::SEC_WEBSOCKET_KEY;
/// `Sec-WebSocket-Accept` (RFC 6455 §11.3.3).
pub static SEC_WEBSOCKET_ACCEPT: HeaderName = header::SEC_WEBSOCKET_ACCEPT;
/// `Sec-WebSocket-Version` (RFC 6455 §11.3.5).
pub static SEC_WEBSOCKET_VERSION: HeaderName = header::SEC_WEBSOCKET_VERSION;
/// `Sec-WebSocket-Protocol` (RFC 6455 §11.3.4).
pub static SEC_WEBSOCKET_PROTOCOL: HeaderName = header::SEC_WEBSOCKET_PROTOCOL;
/// `Sec-WebSocket-Extensions` (RFC 6455 §11.3.2).
pub static SEC_WEBSOCKET_EXTENSIONS: HeaderName = header::SEC_WEBSOCKET_EXTENSIONS;

/// The `:protocol` value of an RFC 8441 extended CONNECT for WebSocket.
pub const PROTOCOL_WEBSOCKET: &str = "websocket";
/// The only version RFC 6455 defines.
const VERSION_13: &str = "13";

/// How the client asked for a WebSocket; decides the shape of our answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientHandshake {
    /// RFC 6455 §4.1: `GET` with `Upgrade`; answered 101 with an accept
    /// value computed from this key.
    Upgrade { key: HeaderValue },
    /// RFC 8441 §4–5: HTTP/2 `CONNECT` with `:protocol = websocket`; no
    /// key, answered 200, the stream then carries the frames.
    ExtendedConnect,
}

/// Why a client's WebSocket request is refused before any backend is contacted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeError {
    /// RFC 6455 §4.2.1 item 1: the upgrade request must be a GET.
    NotGet,
    /// RFC 6455 §4.2.1 item 1: HTTP/1.1 or later.
    OldHttpVersion,
    /// RFC 6455 §4.2.1 item 4: `Connection` must contain `Upgrade`.
    MissingConnectionUpgrade,
    /// RFC 6455 §4.2.1 item 5: `Sec-WebSocket-Key` must be 16 bytes, base64.
    BadKey,
    /// RFC 6455 §4.2.2 item 4: only version 13 exists; answered 426 with
    /// `Sec-WebSocket-Version: 13`.
    UnsupportedVersion,
    /// A handshake with a body: after the 101 its bytes would be read as
    /// frames by one side and as a body by the other.
    HasBody,
}

impl HandshakeError {
    /// The HTTP status the refusal is answered with.
    pub fn status(self) -> StatusCode {
        match self {
            HandshakeError::UnsupportedVersion => StatusCode::UPGRADE_REQUIRED,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    /// Headers the refusal must carry (RFC 6455 §4.4: the versions we speak).
    pub fn headers(self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if self == HandshakeError::UnsupportedVersion {
            headers.insert(&SEC_WEBSOCKET_VERSION, HeaderValue::from_static(VERSION_13));
        }
        headers
    }
}

impl std::fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HandshakeError::NotGet => "a WebSocket upgrade must be a GET request",
            HandshakeError::OldHttpVersion => "a WebSocket upgrade needs HTTP/1.1 or later",
            HandshakeError::MissingConnectionUpgrade => "a WebSocket upgrade needs `Connection: Upgrade`",
            HandshakeError::BadKey => "Sec-WebSocket-Key must be 16 random bytes in base64",
            HandshakeError::UnsupportedVersion => "only WebSocket version 13 is supported",
            HandshakeError::HasBody => "a WebSocket upgrade request carries no body",
        })
    }
}

impl std::error::Error for HandshakeError {}

/// True when the request asks for a WebSocket at all (either shape); the
/// core proxies anything else as plain HTTP. `protocol` is the HTTP/2
/// `:protocol` pseudo-header, if any (RFC 8441 §4).
pub fn is_websocket_request(method: &Method, headers: &HeaderMap, protocol: Option<&str>) -> bool {
    if method == Method::CONNECT {
        return protocol.is_some_and(|p| p.eq_ignore_ascii_case(PROTOCOL_WEBSOCKET));
    }
    has_token(headers, &header::UPGRADE, PROTOCOL_WEBSOCKET)
}

/// Checks a WebSocket request (RFC 6455 §4.2.1 or RFC 8441 §5).
pub fn validate_client(
    method: &Method,
    version: Version,
    headers: &HeaderMap,
    protocol: Option<&str>,
) -> Result<ClientHandshake, HandshakeError> {
    let extended_connect = method == Method::CONNECT && protocol.is_some();
    if !extended_connect {
        if method != Method::GET {
            return Err(HandshakeError::NotGet);
        }
        if version < Version::HTTP_11 {
            return Err(HandshakeError::OldHttpVersion);
        }
        // An HTTP/2 GET cannot upgrade (RFC 9113 §8.2.2 forbids Connection); only HTTP/1.1 gets here.
        if !has_token(headers, &header::CONNECTION, "upgrade") {
            return Err(HandshakeError::MissingConnectionUpgrade);
        }
    }
    // RFC 8441 §5 keeps Sec-WebSocket-Version; RFC 6455 §4.2.1 item 6 requires 13, once.
    match only(headers, &SEC_WEBSOCKET_VERSION) {
        Some(v) if v.as_bytes().trim_ascii() == VERSION_13.as_bytes() => {}
        _ => return Err(HandshakeError::UnsupportedVersion),
    }
    if extended_connect {
        return Ok(ClientHandshake::ExtendedConnect);
    }
    let has_body = headers.contains_key(header::TRANSFER_ENCODING)
        || headers.get(header::CONTENT_LENGTH).is_some_and(|n| n.as_bytes().trim_ascii() != b"0");
    if has_body {
        return Err(HandshakeError::HasBody);
    }
    // Exactly one key: a backend could pick another of several than we did.
    match only(headers, &SEC_WEBSOCKET_KEY) {
        Some(key) if is_valid_key(key.as_bytes()) => Ok(ClientHandshake::Upgrade { key: key.clone() }),
        _ => Err(HandshakeError::BadKey),
    }
}

/// The value of a field that must appear once; `None` if absent or repeated.
fn only<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Option<&'h HeaderValue> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    values.next().is_none().then_some(first)
}

/// A nonce of 16 bytes in base64 is 22 alphabet characters and `==`
/// (RFC 6455 §4.1 item 7); checked without decoding.
fn is_valid_key(key: &[u8]) -> bool {
    key.len() == 24
        && key.ends_with(b"==")
        && key[..22].iter().all(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/')
}

/// `Sec-WebSocket-Accept` for a key: base64(SHA-1(key + GUID)) (RFC 6455 §4.2.2 item 5.4).
pub fn accept_key(key: &[u8]) -> HeaderValue {
    HeaderValue::from_str(&tungstenite::handshake::derive_accept_key(key)).expect("base64 is a valid header value")
}

/// What we sent the backend, kept to check its answer: our key and
/// whether permessage-deflate was offered.
#[derive(Debug, Clone)]
pub struct BackendKey {
    key: HeaderValue,
    offered_deflate: bool,
}

/// Re-shapes the client's request head (already cleaned of hop-by-hop
/// headers by the core) into the HTTP/1.1 upgrade request a backend
/// expects (RFC 6455 §4.1), whichever shape the client used.
///
/// A fresh key is used on this hop: the client's key belongs to the client's
/// connection (and an RFC 8441 client sent none).
///
/// Extension offers: RFC 6455 §9.1 lets a server accept only extensions its
/// peer implements, and the gateway sits between the two. With
/// `pass_deflate` (the byte-stream tunnel, which passes frames unchanged and
/// understands RSV1) the client's permessage-deflate offers (RFC 7692) go to
/// the backend and its choice comes back; every other extension is removed,
/// since its frames could not be checked. Without it (messages re-framed by
/// the gateway) no extension is offered and both hops run without one.
pub fn to_backend_request(parts: &mut http::request::Parts, pass_deflate: bool) -> BackendKey {
    parts.method = Method::GET;
    parts.version = Version::HTTP_11;
    let headers = &mut parts.headers;
    let deflate = if pass_deflate { deflate_offers(headers) } else { None };
    headers.remove(&SEC_WEBSOCKET_EXTENSIONS);
    let offered_deflate = deflate.is_some();
    if let Some(offers) = deflate {
        headers.insert(&SEC_WEBSOCKET_EXTENSIONS, offers);
    }
    headers.insert(header::UPGRADE, HeaderValue::from_static(PROTOCOL_WEBSOCKET));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(&SEC_WEBSOCKET_VERSION, HeaderValue::from_static(VERSION_13));
    let key =
        HeaderValue::from_str(&tungstenite::handshake::client::generate_key()).expect("base64 is a valid header value");
    headers.insert(&SEC_WEBSOCKET_KEY, key.clone());
    BackendKey { key, offered_deflate }
}

/// The permessage-deflate name (RFC 7692 §7).
const PERMESSAGE_DEFLATE: &str = "permessage-deflate";

/// The elements of a comma-separated extension list (name and parameters).
fn extension_elements(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(&SEC_WEBSOCKET_EXTENSIONS)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|e| !e.is_empty())
}

/// Whether an extension element names permessage-deflate.
fn is_deflate(element: &str) -> bool {
    element.split(';').next().is_some_and(|name| name.trim().eq_ignore_ascii_case(PERMESSAGE_DEFLATE))
}

/// The client's permessage-deflate offers, in its order of preference.
fn deflate_offers(headers: &HeaderMap) -> Option<HeaderValue> {
    let offers: Vec<&str> = extension_elements(headers).filter(|e| is_deflate(e)).collect();
    if offers.is_empty() { None } else { HeaderValue::from_str(&offers.join(", ")).ok() }
}

/// What the backend agreed to, passed on to the client.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Negotiated {
    /// The subprotocol the backend chose among the client's offers (RFC 6455 §1.9).
    pub protocol: Option<HeaderValue>,
    /// The permessage-deflate parameters the backend accepted (RFC 7692 §5).
    pub extensions: Option<HeaderValue>,
}

impl Negotiated {
    /// Both ends compress messages: RSV1 marks compressed ones (RFC 7692 §6).
    pub fn permessage_deflate(&self) -> bool {
        self.extensions.is_some()
    }
}

/// Why a backend's answer to the upgrade is not a valid WebSocket handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendHandshakeError {
    /// Not 101: the backend refused (401, 404...); the core relays its
    /// response to the client as plain HTTP.
    NotSwitching(StatusCode),
    /// RFC 6455 §4.1, client item 2–3: `Upgrade: websocket` and
    /// `Connection: Upgrade` are missing.
    MissingUpgrade,
    /// RFC 6455 §4.1, client item 4: the accept value does not match our key.
    BadAccept,
    /// RFC 6455 §4.1, client item 5: an extension we did not offer (or
    /// more than one permessage-deflate, RFC 7692 §5).
    UnofferedExtension,
    /// RFC 6455 §4.1, client item 6: a subprotocol the client did not offer.
    UnofferedProtocol,
}

impl std::fmt::Display for BackendHandshakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BackendHandshakeError::NotSwitching(s) => write!(f, "backend answered {s} instead of 101"),
            BackendHandshakeError::MissingUpgrade => f.write_str("backend 101 lacks Upgrade/Connection headers"),
            BackendHandshakeError::BadAccept => f.write_str("backend Sec-WebSocket-Accept does not match our key"),
            BackendHandshakeError::UnofferedExtension => f.write_str("backend accepted an extension nobody offered"),
            BackendHandshakeError::UnofferedProtocol => {
                f.write_str("backend chose a subprotocol the client did not offer")
            }
        }
    }
}

impl std::error::Error for BackendHandshakeError {}

/// Checks the backend's answer to [`to_backend_request`] (RFC 6455 §4.1,
/// the client's checks). `offered` is the client's `Sec-WebSocket-Protocol`.
pub fn check_backend_response(
    status: StatusCode,
    headers: &HeaderMap,
    key: &BackendKey,
    offered: Option<&HeaderValue>,
) -> Result<Negotiated, BackendHandshakeError> {
    if status != StatusCode::SWITCHING_PROTOCOLS {
        return Err(BackendHandshakeError::NotSwitching(status));
    }
    if !has_token(headers, &header::UPGRADE, PROTOCOL_WEBSOCKET) || !has_token(headers, &header::CONNECTION, "upgrade")
    {
        return Err(BackendHandshakeError::MissingUpgrade);
    }
    if headers.get(&SEC_WEBSOCKET_ACCEPT) != Some(&accept_key(key.key.as_bytes())) {
        return Err(BackendHandshakeError::BadAccept);
    }
    let accepted: Vec<&str> = extension_elements(headers).collect();
    let extensions = match accepted.as_slice() {
        [] => None,
        [one] if key.offered_deflate && is_deflate(one) => HeaderValue::from_str(one).ok(),
        _ => return Err(BackendHandshakeError::UnofferedExtension),
    };
    let protocol = headers.get(&SEC_WEBSOCKET_PROTOCOL).cloned();
    if let Some(chosen) = &protocol {
        let chosen = chosen.to_str().unwrap_or("").trim();
        let listed = offered.and_then(|o| o.to_str().ok()).is_some_and(|o| o.split(',').any(|t| t.trim() == chosen));
        if !listed {
            return Err(BackendHandshakeError::UnofferedProtocol);
        }
    }
    Ok(Negotiated { protocol, extensions })
}

/// The answer to the client once the backend agreed: 101 with the accept
/// value for the client's own key (RFC 6455 §4.2.2), or 200 on an HTTP/2
/// extended CONNECT (RFC 8441 §5).
pub fn client_response(handshake: &ClientHandshake, negotiated: &Negotiated) -> Response<()> {
    let mut response = Response::new(());
    match handshake {
        ClientHandshake::Upgrade { key } => {
            *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            let headers = response.headers_mut();
            headers.insert(header::UPGRADE, HeaderValue::from_static(PROTOCOL_WEBSOCKET));
            headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
            headers.insert(&SEC_WEBSOCKET_ACCEPT, accept_key(key.as_bytes()));
        }
        ClientHandshake::ExtendedConnect => *response.status_mut() = StatusCode::OK,
    }
    if let Some(p) = &negotiated.protocol {
        response.headers_mut().insert(&SEC_WEBSOCKET_PROTOCOL, p.clone());
    }
    if let Some(e) = &negotiated.extensions {
        response.headers_mut().insert(&SEC_WEBSOCKET_EXTENSIONS, e.clone());
    }
    response
}

/// Whether a comma-separated header contains `token`, case-insensitively
/// (`Connection: keep-alive, Upgrade`).
fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h1_headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("example.com"));
        h.insert(header::UPGRADE, HeaderValue::from_static("WebSocket"));
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, Upgrade"));
        h.insert(&SEC_WEBSOCKET_KEY, HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="));
        h.insert(&SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        h
    }

    #[test]
    fn rfc6455_sample_accept_value() {
        // RFC 6455 §1.3's worked example.
        assert_eq!(accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn a_valid_http1_upgrade_is_accepted_case_insensitively() {
        let h = h1_headers();
        assert!(is_websocket_request(&Method::GET, &h, None));
        let hs = validate_client(&Method::GET, Version::HTTP_11, &h, None).unwrap();
        assert_eq!(hs, ClientHandshake::Upgrade { key: HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ==") });
        let response = client_response(&hs, &Negotiated::default());
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(response.headers()[&SEC_WEBSOCKET_ACCEPT], "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(response.headers()[header::UPGRADE], "websocket");
    }

    #[test]
    fn bad_upgrades_are_refused_with_the_rfc_reason() {
        let mut h = h1_headers();
        assert_eq!(validate_client(&Method::POST, Version::HTTP_11, &h, None), Err(HandshakeError::NotGet));
        assert_eq!(validate_client(&Method::GET, Version::HTTP_10, &h, None), Err(HandshakeError::OldHttpVersion));
        let mut twice = h.clone();
        twice.append(&SEC_WEBSOCKET_KEY, HeaderValue::from_static("AAAAAAAAAAAAAAAAAAAAAA=="));
        assert_eq!(validate_client(&Method::GET, Version::HTTP_11, &twice, None), Err(HandshakeError::BadKey));
        let mut with_body = h.clone();
        with_body.insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        assert_eq!(validate_client(&Method::GET, Version::HTTP_11, &with_body, None), Err(HandshakeError::HasBody));
        with_body.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        assert!(validate_client(&Method::GET, Version::HTTP_11, &with_body, None).is_ok());
        h.insert(&SEC_WEBSOCKET_KEY, HeaderValue::from_static("c2hvcnQ="));
        assert_eq!(validate_client(&Method::GET, Version::HTTP_11, &h, None), Err(HandshakeError::BadKey));
        h.insert(&SEC_WEBSOCKET_VERSION, HeaderValue::from_static("8"));
        let err = validate_client(&Method::GET, Version::HTTP_11, &h, None).unwrap_err();
        assert_eq!(err, HandshakeError::UnsupportedVersion);
        assert_eq!(err.status(), StatusCode::UPGRADE_REQUIRED);
        assert_eq!(err.headers()[&SEC_WEBSOCKET_VERSION], "13");
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        assert_eq!(
            validate_client(&Method::GET, Version::HTTP_11, &h, None),
            Err(HandshakeError::MissingConnectionUpgrade)
        );
    }

    #[test]
    fn an_rfc8441_connect_maps_to_an_http1_upgrade_and_answers_200() {
        let mut h = HeaderMap::new();
        h.insert(&SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        h.insert(&SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static("chat, superchat"));
        h.insert(&SEC_WEBSOCKET_EXTENSIONS, HeaderValue::from_static("permessage-deflate"));
        assert!(is_websocket_request(&Method::CONNECT, &h, Some("websocket")));
        assert!(!is_websocket_request(&Method::CONNECT, &h, None));
        let hs = validate_client(&Method::CONNECT, Version::HTTP_2, &h, Some("websocket")).unwrap();
        assert_eq!(hs, ClientHandshake::ExtendedConnect);

        let mut parts = http::Request::builder()
            .method(Method::CONNECT)
            .version(Version::HTTP_2)
            .uri("/chat")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        parts.headers = h.clone();
        let key = to_backend_request(&mut parts, false);
        assert_eq!(parts.method, Method::GET);
        assert_eq!(parts.version, Version::HTTP_11);
        assert_eq!(parts.headers[header::UPGRADE], "websocket");
        assert!(is_valid_key(parts.headers[&SEC_WEBSOCKET_KEY].as_bytes()));
        assert!(!parts.headers.contains_key(&SEC_WEBSOCKET_EXTENSIONS));
        assert_eq!(parts.headers[&SEC_WEBSOCKET_PROTOCOL], "chat, superchat");

        // The backend's answer, checked as a client would.
        let mut answer = HeaderMap::new();
        answer.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        answer.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        answer.insert(&SEC_WEBSOCKET_ACCEPT, accept_key(key.key.as_bytes()));
        answer.insert(&SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static("superchat"));
        let offered = h.get(&SEC_WEBSOCKET_PROTOCOL);
        let negotiated = check_backend_response(StatusCode::SWITCHING_PROTOCOLS, &answer, &key, offered).unwrap();
        let response = client_response(&hs, &negotiated);
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[&SEC_WEBSOCKET_PROTOCOL], "superchat");
        assert!(!response.headers().contains_key(&SEC_WEBSOCKET_ACCEPT));
    }

    #[test]
    fn backend_answers_are_checked_like_a_client_would() {
        let mut parts = http::Request::new(()).into_parts().0;
        let key = to_backend_request(&mut parts, true);
        let mut ok = HeaderMap::new();
        ok.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        ok.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        ok.insert(&SEC_WEBSOCKET_ACCEPT, accept_key(key.key.as_bytes()));
        assert!(check_backend_response(StatusCode::SWITCHING_PROTOCOLS, &ok, &key, None).is_ok());
        assert_eq!(
            check_backend_response(StatusCode::FORBIDDEN, &ok, &key, None),
            Err(BackendHandshakeError::NotSwitching(StatusCode::FORBIDDEN))
        );
        let mut bad = ok.clone();
        bad.insert(&SEC_WEBSOCKET_ACCEPT, HeaderValue::from_static("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
        assert_eq!(
            check_backend_response(StatusCode::SWITCHING_PROTOCOLS, &bad, &key, None),
            Err(BackendHandshakeError::BadAccept)
        );
        let mut proto = ok.clone();
        proto.insert(&SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static("evil"));
        let offered = HeaderValue::from_static("chat");
        assert_eq!(
            check_backend_response(StatusCode::SWITCHING_PROTOCOLS, &proto, &key, Some(&offered)),
            Err(BackendHandshakeError::UnofferedProtocol)
        );
        let mut ext = ok;
        ext.insert(&SEC_WEBSOCKET_EXTENSIONS, HeaderValue::from_static("permessage-deflate"));
        assert_eq!(
            check_backend_response(StatusCode::SWITCHING_PROTOCOLS, &ext, &key, None),
            Err(BackendHandshakeError::UnofferedExtension)
        );
    }

    #[test]
    fn permessage_deflate_offers_pass_to_the_backend_and_its_choice_back() {
        let mut parts = http::Request::new(()).into_parts().0;
        parts.headers.append(
            &SEC_WEBSOCKET_EXTENSIONS,
            HeaderValue::from_static("x-webkit-deflate-frame, permessage-deflate; client_max_window_bits"),
        );
        parts.headers.append(&SEC_WEBSOCKET_EXTENSIONS, HeaderValue::from_static("permessage-deflate"));
        let key = to_backend_request(&mut parts, true);
        assert_eq!(
            parts.headers[&SEC_WEBSOCKET_EXTENSIONS], "permessage-deflate; client_max_window_bits, permessage-deflate",
            "only the extension whose frames we can check is offered"
        );
        let mut answer = HeaderMap::new();
        answer.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        answer.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        answer.insert(&SEC_WEBSOCKET_ACCEPT, accept_key(key.key.as_bytes()));
        answer.insert(
            &SEC_WEBSOCKET_EXTENSIONS,
            HeaderValue::from_static("permessage-deflate; server_no_context_takeover"),
        );
        let negotiated = check_backend_response(StatusCode::SWITCHING_PROTOCOLS, &answer, &key, None).unwrap();
        assert!(negotiated.permessage_deflate());
        let hs = ClientHandshake::Upgrade { key: HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ==") };
        let response = client_response(&hs, &negotiated);
        assert_eq!(response.headers()[&SEC_WEBSOCKET_EXTENSIONS], "permessage-deflate; server_no_context_takeover");

        let mut twice = answer.clone();
        twice.insert(&SEC_WEBSOCKET_EXTENSIONS, HeaderValue::from_static("permessage-deflate, permessage-deflate"));
        assert_eq!(
            check_backend_response(StatusCode::SWITCHING_PROTOCOLS, &twice, &key, None),
            Err(BackendHandshakeError::UnofferedExtension)
        );

        // Re-framing hops offer nothing, so an acceptance is refused.
        let mut parts = http::Request::new(()).into_parts().0;
        parts.headers.insert(&SEC_WEBSOCKET_EXTENSIONS, HeaderValue::from_static("permessage-deflate"));
        let key = to_backend_request(&mut parts, false);
        assert!(!parts.headers.contains_key(&SEC_WEBSOCKET_EXTENSIONS));
        answer.insert(&SEC_WEBSOCKET_ACCEPT, accept_key(key.key.as_bytes()));
        assert_eq!(
            check_backend_response(StatusCode::SWITCHING_PROTOCOLS, &answer, &key, None),
            Err(BackendHandshakeError::UnofferedExtension)
        );
    }
}
