//! `Max-Forwards` on OPTIONS and TRACE (RFC 9110 §7.6.2): a client can ask
//! how far along the chain of proxies a request gets, and each hop must
//! count down. At zero the gateway is the last stop and answers itself, so
//! the backend never sees the request.
//!
//! Other methods carry the field through untouched, as the RFC says. The
//! gateway also answers `OPTIONS *` itself, whatever the count: no route
//! leads from `*` to a backend.

use bytes::{BufMut, BytesMut};
use http::{HeaderValue, Method, Response, header, request};

use crate::body::{self, Body};
use crate::error::ProxyError;

/// Fields a TRACE reflection leaves out: RFC 9110 §9.3.8 asks the final
/// recipient not to echo what is likely to hold credentials.
const SENSITIVE: [header::HeaderName; 4] =
    [header::AUTHORIZATION, header::PROXY_AUTHORIZATION, header::COOKIE, header::SET_COOKIE];

/// What becomes of a request at this hop.
#[derive(Debug)]
pub enum Hop {
    /// Forward it (with the count lowered, where it had one).
    Forward,
    /// Answer it here: the count reached zero.
    Answer(Response<Body>),
}

/// Applies the countdown to `parts`: lowers a positive count by one, or
/// returns the gateway's own answer for a count of zero. A count that is not
/// a number is refused rather than passed on for the next hop to guess at.
pub fn hop(parts: &mut request::Parts) -> Result<Hop, ProxyError> {
    if parts.method != Method::OPTIONS && parts.method != Method::TRACE {
        return Ok(Hop::Forward);
    }
    let mut values = parts.headers.get_all(header::MAX_FORWARDS).iter();
    let Some(value) = values.next() else { return Ok(Hop::Forward) };
    if values.next().is_some() {
        return Err(ProxyError::BadRequest("more than one Max-Forwards field"));
    }
    let remaining = parse(value.as_bytes()).ok_or(ProxyError::BadRequest("Max-Forwards is not a number"))?;
    if remaining > 0 {
        parts.headers.insert(header::MAX_FORWARDS, HeaderValue::from(remaining - 1));
        return Ok(Hop::Forward);
    }
    Ok(Hop::Answer(if parts.method == Method::TRACE { reflect(parts) } else { options() }))
}

/// `1*DIGIT`; values past `u32` are capped there (the RFC lets a hop lower
/// a count to the most it supports).
fn parse(value: &[u8]) -> Option<u32> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(value.iter().try_fold(0u32, |n, &d| n.checked_mul(10)?.checked_add(u32::from(d - b'0'))).unwrap_or(u32::MAX))
}

/// Whether this is `OPTIONS *`: a question about the server in general,
/// not about any resource a route leads to.
pub fn is_server_wide_options(parts: &request::Parts) -> bool {
    parts.method == Method::OPTIONS && parts.uri.path() == "*"
}

/// OPTIONS answered by the gateway: success, and nothing to add about a
/// resource it does not own.
pub fn options() -> Response<Body> {
    let mut response = Response::new(body::empty());
    response.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(0u32));
    response
}

/// TRACE answered by the gateway: the request as it arrived, as
/// `message/http` (RFC 9110 §9.3.8), credentials left out.
fn reflect(parts: &request::Parts) -> Response<Body> {
    let mut message = BytesMut::with_capacity(256);
    let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    message.put_slice(format!("TRACE {target} {:?}\r\n", parts.version).as_bytes());
    // HTTP/2 and HTTP/3 carry the host as `:authority`; a message/http reader expects `Host`.
    if let Some(authority) = parts.uri.authority().filter(|_| !parts.headers.contains_key(header::HOST)) {
        message.put_slice(format!("host: {authority}\r\n").as_bytes());
    }
    for (name, value) in &parts.headers {
        if SENSITIVE.contains(name) {
            continue;
        }
        message.put_slice(name.as_str().as_bytes());
        message.put_slice(b": ");
        message.put_slice(value.as_bytes());
        message.put_slice(b"\r\n");
    }
    message.put_slice(b"\r\n");
    let length = message.len();
    let mut response = Response::new(body::full(message.freeze()));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("message/http"));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    fn parts(method: Method, max_forwards: &[&str]) -> request::Parts {
        let mut builder = Request::builder().method(method).uri("/a?b=1");
        for value in max_forwards {
            builder = builder.header(header::MAX_FORWARDS, *value);
        }
        builder.header(header::COOKIE, "session=secret").header("x-seen", "yes").body(()).unwrap().into_parts().0
    }

    #[test]
    fn a_positive_count_is_lowered_by_one_and_forwarded() {
        for (given, left) in [("1", "0"), ("7", "6"), ("99999999999", "4294967294")] {
            let mut req = parts(Method::OPTIONS, &[given]);
            assert!(matches!(hop(&mut req), Ok(Hop::Forward)));
            assert_eq!(req.headers[header::MAX_FORWARDS], left, "{given}");
        }
    }

    #[test]
    fn only_options_and_trace_count_down() {
        for method in [Method::GET, Method::POST, Method::DELETE] {
            let mut req = parts(method.clone(), &["0"]);
            assert!(matches!(hop(&mut req), Ok(Hop::Forward)), "{method}");
            assert_eq!(req.headers[header::MAX_FORWARDS], "0");
        }
        let mut req = parts(Method::TRACE, &[]);
        assert!(matches!(hop(&mut req), Ok(Hop::Forward)));
    }

    #[test]
    fn a_zero_count_is_answered_here() {
        let Ok(Hop::Answer(options)) = hop(&mut parts(Method::OPTIONS, &["0"])) else { panic!("not answered") };
        assert_eq!(options.status(), http::StatusCode::OK);
        let Ok(Hop::Answer(trace)) = hop(&mut parts(Method::TRACE, &["0"])) else { panic!("not answered") };
        assert_eq!(trace.headers()[header::CONTENT_TYPE], "message/http");
    }

    #[test]
    fn a_count_that_is_not_one_number_is_refused() {
        for bad in [&["-1"][..], &["1.5"], &[""], &["0x1"], &["1", "2"]] {
            assert!(matches!(hop(&mut parts(Method::TRACE, bad)), Err(ProxyError::BadRequest(_))), "{bad:?}");
        }
    }
}
